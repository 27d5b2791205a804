/* Integration: the device probe at traind's start.  A device whose probe
 * fails (a CUDA device on a machine without one) is unusable: traind runs
 * on, and a job pinned to it is refused with the reason.  A budget larger
 * than the memory free is capped to it. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

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
  ck_assert_uint_eq(device_budget("cuda0"), 0);
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

static Suite *devices_suite(void) {
  Suite *s = suite_create("devices");
  TCase *tc = tcase_create("devices");

  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_probe_failure_unusable);
  tcase_add_test(tc, test_budget_capped_by_free);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(devices_suite(), 1); }
