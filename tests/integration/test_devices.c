/* Integration: the device probe at traind's start.  A device whose probe
 * fails (a CUDA device on a machine without one) is unusable: traind runs
 * on, `devices` says so, and a job pinned to it is refused with the reason.
 * A budget larger than the memory free is capped to it.  An admin's
 * changes (`device`) survive a restart and a reload; a job the budget
 * squeezes off the device says why in its log. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#include <nanomsg/nn.h>

static th_daemon g_d;
static int g_sock = -1;

static void start(const char *budget, const char *extra) {
  ck_assert_int_eq(th_daemon_init(&g_d, budget, extra, 0), 0);
  ck_assert_msg(th_daemon_start(&g_d, 20000) == 0, "traind did not start: %s",
                th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);
}

static void stop(void) {
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly: %s",
                th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}

/* The `devices` entry named name: its budget. */
static uint64_t device_budget(const char *name) {
  const msgpack_object *devs;
  td_msg *m = NULL;
  char err[512];
  int code = -1;
  uint64_t budget = 0;
  int found = 0;

  ck_assert_int_eq(th_rpc_simple(g_sock, "devices", NULL, 0, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "devices refused: %s", err);
  ck_assert_int_eq(td_obj_array(td_msg_root(m), "devices", &devs), 0);
  for (uint32_t i = 0; i < devs->via.array.size; i++) {
    char n[32];

    if (td_obj_cstr(&devs->via.array.ptr[i], "name", n, sizeof(n)) == 0 &&
        strcmp(n, name) == 0) {
      ck_assert_int_eq(td_obj_u64(&devs->via.array.ptr[i], "budget", &budget), 0);
      found = 1;
    }
  }
  td_msg_free(m);
  ck_assert_msg(found, "no device %s in `devices`", name);
  return budget;
}

START_TEST(test_probe_failure_unusable) {
  char yaml[4096], err[512];
  uint64_t id;
  int rc;

  start("1GiB", "  - {name: cuda0, budget: 1GiB}\n");
  if (strstr(th_log_tail(&g_d), "device cuda0 is unusable") == NULL) {
    /* a machine with a GPU: its probe answered */
    ck_assert_msg(strstr(th_log_tail(&g_d), "device cuda0: ") != NULL, "%s",
                  th_log_tail(&g_d));
    ck_assert_uint_gt(device_budget("cuda0"), 0);
    stop();
    return;
  }
  ck_assert_msg(strstr(th_log_tail(&g_d), "the device probe failed: ") != NULL, "%s",
                th_log_tail(&g_d));
  /* the reason is the worker's own (its probe_failed report, decoded), not
   * a report traind could not read */
  ck_assert_msg(strstr(th_log_tail(&g_d), "the device probe failed: cuda0: ") != NULL, "%s",
                th_log_tail(&g_d));
  ck_assert_uint_eq(device_budget("cuda0"), 0);
  {
    char out[4096], errs[4096], *row;

    ck_assert_int_eq(th_client(g_d.sock, out, sizeof(out), errs, sizeof(errs), "devices", NULL),
                     0);
    row = strstr(out, "cuda0");
    ck_assert_msg(row != NULL, "%s", out);
    ck_assert_msg(strstr(row, "unusable") != NULL && strstr(row, "active") == NULL,
                  "an unusable device is not shown as one:\n%s", out);
  }
  /* the job pinned to it is refused with the reason */
  th_job_yaml(yaml, sizeof(yaml) - 32, "pinned", 32, 1, 256, 64);
  strcat(yaml, "device: cuda0\n");
  rc = th_submit(g_sock, yaml, "k-pinned", &id, err, sizeof(err));
  ck_assert_int_ne(rc, 0);
  ck_assert_msg(strstr(err, "device cuda0 is unusable: the device probe failed") != NULL,
                "%s", err);
  /* the other device works */
  th_job_yaml(yaml, sizeof(yaml), "cpu", 32, 1, 256, 64);
  ck_assert_int_eq(th_submit(g_sock, yaml, "k-cpu", &id, err, sizeof(err)), 0);
  ck_assert_int_eq(th_wait_state(g_sock, id, "succeeded", 60000, err, sizeof(err)), 0);
  stop();
}
END_TEST

START_TEST(test_budget_capped_by_free) {
  const uint64_t huge = (uint64_t)1 << 50; /* 1 PiB: more than any host has free */
  uint64_t budget;

  start("1048576GiB", NULL);
  budget = device_budget("cpu0");
  ck_assert_uint_gt(budget, 0);
  ck_assert_uint_lt(budget, huge);
  ck_assert_msg(strstr(th_log_tail(&g_d), "device cpu0: the configured budget") != NULL,
                "%s", th_log_tail(&g_d));
  stop();
}
END_TEST

/* The `devices` entry named name (a copy, to be td_msg_free'd via *m). */
static const msgpack_object *device_entry(const char *name, td_msg **m) {
  const msgpack_object *devs;
  char err[512];
  int code = -1;

  *m = NULL;
  ck_assert_int_eq(th_rpc_simple(g_sock, "devices", NULL, 0, m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "devices refused: %s", err);
  ck_assert_int_eq(td_obj_array(td_msg_root(*m), "devices", &devs), 0);
  for (uint32_t i = 0; i < devs->via.array.size; i++) {
    char n[32];

    if (td_obj_cstr(&devs->via.array.ptr[i], "name", n, sizeof(n)) == 0 && strcmp(n, name) == 0)
      return &devs->via.array.ptr[i];
  }
  ck_abort_msg("no device %s in `devices`", name);
  return NULL;
}

/* A `device` request: budget 0 leaves it, drain -1 leaves it.  Its code. */
static int device_change(uint64_t budget, int drain, char *err, size_t errlen) {
  td_pack p;
  int code = -1;

  td_pack_init(&p);
  td_pack_request(&p, "device", 1 + (budget > 0) + (drain >= 0));
  td_pack_kv_str(&p, "name", "cpu0");
  if (budget > 0)
    td_pack_kv_u64(&p, "budget", budget);
  if (drain >= 0)
    td_pack_kv_bool(&p, "drain", drain);
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, NULL, &code, err, errlen), 0);
  td_pack_free(&p);
  return code;
}

static void expect_override(uint64_t budget, uint64_t limit, int draining) {
  const msgpack_object *dev;
  td_msg *m;
  uint64_t b = 0, l = 0, ob = 1;
  int dr = -1, od = -1;

  dev = device_entry("cpu0", &m);
  ck_assert_int_eq(td_obj_u64(dev, "budget", &b), 0);
  ck_assert_int_eq(td_obj_u64(dev, "limit", &l), 0);
  ck_assert_int_eq(td_obj_u64(dev, "override_budget", &ob), 0);
  ck_assert_int_eq(td_obj_bool(dev, "draining", &dr), 0);
  ck_assert_int_eq(td_obj_bool(dev, "override_drain", &od), 0);
  td_msg_free(m);
  ck_assert_uint_eq(l, limit);
  ck_assert_uint_eq(b, limit);
  ck_assert_uint_eq(ob, budget);
  ck_assert_int_eq(dr, draining);
  ck_assert_int_eq(od, draining);
}

static void restart(void) {
  nn_close(g_sock);
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly: %s", th_log_tail(&g_d));
  ck_assert_msg(th_daemon_start(&g_d, 20000) == 0, "traind did not start again: %s",
                th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);
}

/* An admin's lower budget and drain are kept across a restart and a
 * reload, said in the log and in `devices`; the config's budget is the
 * most a device gets, and setting it again ends the override. */
START_TEST(test_override_survives_restart) {
  const uint64_t gib = (uint64_t)1 << 30, small = (uint64_t)256 << 20;
  char err[512], out[4096], errs[1024];

  start("1GiB", NULL);
  expect_override(0, gib, 0);
  ck_assert_int_eq(device_change(small, 1, err, sizeof(err)), 0);
  expect_override(small, small, 1);
  ck_assert_int_eq(device_change(2 * gib, -1, err, sizeof(err)), TD_EINVAL);
  ck_assert_msg(strstr(err, "not raise") != NULL, "%s", err);
  expect_override(small, small, 1);

  restart();
  expect_override(small, small, 1);
  ck_assert_msg(strstr(th_log_tail(&g_d), "an admin's budget of 256.00 MiB is in force") != NULL &&
                    strstr(th_log_tail(&g_d), "drained by an admin") != NULL,
                "the log does not say an override is in force:\n%s", th_log_tail(&g_d));
  ck_assert_int_eq(th_client(g_d.sock, out, sizeof(out), errs, sizeof(errs), "devices", NULL), 0);
  ck_assert_msg(strstr(out, "draining (budget set by an admin)") != NULL, "%s", out);

  ck_assert_int_eq(kill(g_d.pid, SIGHUP), 0);
  for (int i = 0; i < 500 && strstr(th_log_tail(&g_d), "configuration reloaded") == NULL; i++)
    th_msleep(10);
  ck_assert_msg(strstr(th_log_tail(&g_d), "after SIGHUP, an admin's budget") != NULL, "%s",
                th_log_tail(&g_d));
  expect_override(small, small, 1);

  /* back to the config's: nothing left to keep */
  ck_assert_int_eq(device_change(gib, 0, err, sizeof(err)), 0);
  expect_override(0, gib, 0);
  restart();
  expect_override(0, gib, 0);
  stop();
}
END_TEST

/* A job squeezed off its device by a lower budget says in its log what
 * the device's budget became, not the token budget traind sent it. */
START_TEST(test_budget_line_in_job_log) {
  char yaml[4096], err[512], path[400], *log = NULL;
  uint64_t id, total = 0, step = 0;
  size_t len;

  th_job_yaml(yaml, sizeof(yaml) - 64, "squeezed", 1024, 50, 6000, 64);
  strcat(yaml, "memory:\n  min_micro_batch: 64\n");
  /* its throwaway traind first: it has a munged of its own */
  ck_assert_int_eq(th_plan_total(yaml, &total), 0);
  start("1GiB", NULL);
  ck_assert_int_eq(th_submit(g_sock, yaml, "k-squeeze", &id, err, sizeof(err)), 0);
  ck_assert_int_eq(th_wait_state(g_sock, id, "running", 30000, err, sizeof(err)), 0);
  for (int i = 0; i < 3000 && step == 0; i++) {
    th_show_u64(g_sock, id, "step", &step);
    th_msleep(10);
  }
  ck_assert_uint_gt(step, 0);
  ck_assert_int_eq(device_change(total / 2, -1, err, sizeof(err)), 0);
  ck_assert_msg(th_wait_state(g_sock, id, "queued", 30000, err, sizeof(err)) == 0, "%s\n%s", err,
                th_log_tail(&g_d));
  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_int_eq(td_read_file(path, 1 << 20, &log, &len), 0);
  {
    char want[96], size[32];

    td_format_size(total / 2, size, sizeof(size));
    snprintf(want, sizeof(want), "the budget of cpu0 was lowered to %s", size);
    ck_assert_msg(strstr(log, want) != NULL, "the log does not say '%s':\n%s", want, log);
  }
  ck_assert_msg(strstr(log, "budget to 1 bytes") == NULL && strstr(log, " 1 B") == NULL &&
                    strstr(log, "in 1 bytes") == NULL, "%s", log);
  free(log);
  {
    int code = -1;

    ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", id, NULL, &code, err, sizeof(err)),
                     0);
    ck_assert_msg(code == 0, "cancel: %s", err);
  }
  stop();
}
END_TEST

static Suite *devices_suite(void) {
  Suite *s = suite_create("devices");
  TCase *tc = tcase_create("devices");

  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_probe_failure_unusable);
  tcase_add_test(tc, test_budget_capped_by_free);
  tcase_add_test(tc, test_override_survives_restart);
  tcase_add_test(tc, test_budget_line_in_job_log);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(devices_suite(), 1); }
