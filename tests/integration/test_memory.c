/* Integration: memory admission and run-time re-planning with the real
 * traind, worker and loader on Fashion-MNIST. */
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

static void start(const char *budget) {
  ck_assert_int_eq(th_daemon_init(&g_d, budget, NULL, 0), 0);
  ck_assert_msg(th_daemon_start(&g_d, 10000) == 0, "traind did not start; see %s", g_d.log);
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);
}

static void stop(void) {
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly; see %s", g_d.log);
  th_daemon_remove(&g_d);
}

/* A job file: hidden units, batch, samples, epochs, then extra memory keys. */
static void job(char *buf, size_t cap, const char *name, int hidden, int batch, int limit,
                int epochs, const char *memory) {
  char base[4096];
  size_t n;

  th_job_yaml(base, sizeof(base), name, hidden, epochs, limit, batch);
  n = (size_t)snprintf(buf, cap, "%s", base);
  if (memory != NULL)
    snprintf(buf + n, cap - n, "memory:\n%s", memory);
}

static uint64_t submit(const char *yaml, const char *key) {
  td_pack p;
  td_msg *m = NULL;
  char err[512];
  int code = -1;
  uint64_t id = 0;

  td_pack_init(&p);
  th_pack_submit(&p, yaml, "/tmp", key, NULL);
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "submit refused: %s", err);
  ck_assert_int_eq(td_obj_u64(td_msg_root(m), "id", &id), 0);
  td_msg_free(m);
  td_pack_free(&p);
  return id;
}

/* The `plan` request's reply for a job file (the caller frees it). */
static td_msg *plan_request(const char *yaml) {
  td_pack p;
  td_msg *m = NULL;
  char err[512];
  int code = -1;

  td_pack_init(&p);
  td_pack_request(&p, "plan", 3);
  td_pack_kv_str(&p, "job", yaml);
  td_pack_kv_str(&p, "base_dir", "/tmp");
  td_pack_kv_str(&p, "sample_dtype", th_sample_dtype(yaml, "/tmp"));
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "plan refused: %s", err);
  td_pack_free(&p);
  return m;
}

/* plan.total of a job file on the whole batch, from the `plan` request. */
static uint64_t plan_total(const char *yaml, uint32_t *micro_on_cpu0) {
  const msgpack_object *plan, *devs;
  td_msg *m = plan_request(yaml);
  uint64_t total = 0, mb = 0;

  ck_assert_int_eq(td_obj_map(td_msg_root(m), "plan", &plan), 0);
  ck_assert_int_eq(td_obj_u64(plan, "total", &total), 0);
  ck_assert_int_eq(td_obj_array(td_msg_root(m), "devices", &devs), 0);
  ck_assert_uint_eq(devs->via.array.size, 1);
  ck_assert_int_eq(td_obj_u64(&devs->via.array.ptr[0], "micro_batch", &mb), 0);
  if (micro_on_cpu0 != NULL)
    *micro_on_cpu0 = (uint32_t)mb;
  td_msg_free(m);
  return total;
}

static void set_budget(uint64_t bytes) {
  td_pack p;
  char err[512];
  int code = -1;

  td_pack_init(&p);
  td_pack_request(&p, "device", 2);
  td_pack_kv_str(&p, "name", "cpu0");
  td_pack_kv_u64(&p, "budget", bytes);
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, NULL, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "device refused: %s", err);
  td_pack_free(&p);
}

static uint64_t show_plan(uint64_t id, const char *key) {
  const msgpack_object *job, *plan;
  td_msg *m = NULL;
  int code = -1;
  uint64_t v = 0;

  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, NULL, 0), 0);
  ck_assert_int_eq(code, 0);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &job), 0);
  ck_assert_int_eq(td_obj_map(job, "plan", &plan), 0);
  ck_assert_int_eq(td_obj_u64(plan, key, &v), 0);
  td_msg_free(m);
  return v;
}

static uint64_t reserved(void) {
  const msgpack_object *devs;
  td_msg *m = NULL;
  int code = -1;
  uint64_t v = 0;

  ck_assert_int_eq(th_rpc_simple(g_sock, "devices", NULL, 0, &m, &code, NULL, 0), 0);
  ck_assert_int_eq(td_obj_array(td_msg_root(m), "devices", &devs), 0);
  ck_assert_int_eq(td_obj_u64(&devs->via.array.ptr[0], "reserved", &v), 0);
  td_msg_free(m);
  return v;
}

static void wait_state(uint64_t id, const char *want, int ms) {
  char last[32] = "";
  int rc = th_wait_state(g_sock, id, want, ms, last, sizeof(last));
  char error[512] = "";

  if (rc != 0)
    th_show_str(g_sock, id, "error", error, sizeof(error));
  ck_assert_msg(rc == 0, "job %llu is %s, not %s (%s); see %s", (unsigned long long)id, last,
                want, error, g_d.log);
}

static void wait_steps(uint64_t id, uint64_t steps, int ms) {
  double end = td_now_mono() + ms / 1000.0;
  uint64_t step = 0, epoch = 0;

  while (td_now_mono() < end) {
    th_show_u64(g_sock, id, "step", &step);
    th_show_u64(g_sock, id, "epoch", &epoch);
    if (epoch >= 1 && step >= steps)
      return;
    th_msleep(20);
  }
  ck_abort_msg("job %llu made no progress", (unsigned long long)id);
}

/* Three jobs whose plans together exceed the budget: two run at once, the
 * third only after one of them has ended, and none runs out of memory. */
START_TEST(test_three_jobs_two_at_a_time) {
  char yaml[3][8192], key[16];
  uint64_t id[3], total;
  int64_t begin[3], end[3];

  start("1GiB");
  for (int i = 0; i < 3; i++) {
    char name[16];
    snprintf(name, sizeof(name), "pack%d", i);
    /* no accumulation: a job runs whole or waits */
    job(yaml[i], sizeof(yaml[i]), name, 256, 64, 6000, 1, "  remedies: []\n");
  }
  total = plan_total(yaml[0], NULL);
  set_budget(total * 5 / 2);
  for (int i = 0; i < 3; i++) {
    snprintf(key, sizeof(key), "k%d", i);
    id[i] = submit(yaml[i], key);
  }
  {
    char s2[16];
    ck_assert_int_eq(th_show_str(g_sock, id[2], "state", s2, sizeof(s2)), 0);
    ck_assert_str_eq(s2, "queued");
    ck_assert_uint_eq(reserved(), 2 * total);
  }
  for (int i = 0; i < 3; i++) {
    uint64_t v;
    wait_state(id[i], "succeeded", 120000);
    ck_assert_int_eq(th_show_u64(g_sock, id[i], "retries", &v), 0);
    ck_assert_uint_eq(v, 0);
    ck_assert_uint_eq(show_plan(id[i], "micro_batch"), 64);
  }
  for (int i = 0; i < 3; i++) {
    td_msg *m = NULL;
    const msgpack_object *j;
    int code;
    ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id[i], &m, &code, NULL, 0), 0);
    ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &j), 0);
    td_obj_i64(j, "started_ms", &begin[i]);
    td_obj_i64(j, "finished_ms", &end[i]);
    td_msg_free(m);
  }
  /* the third started only once the first or second had finished */
  ck_assert_int_ge(begin[2], end[0] < end[1] ? end[0] : end[1]);
  ck_assert_uint_eq(reserved(), 0);
  stop();
}
END_TEST

/* The device budget drops while a job runs: the worker re-plans to a
 * smaller micro-batch (accumulating), the reservation follows, the job
 * finishes. */
START_TEST(test_budget_lowered_mid_run) {
  char yaml[8192];
  uint64_t id, total, small, mb;

  start("1GiB");
  job(yaml, sizeof(yaml), "squeezed", 1024, 64, 60000, 2, "  min_micro_batch: 4\n");
  total = plan_total(yaml, NULL);
  {
    /* the plan at micro-batch 16: what the budget drops to */
    char y16[8192];
    job(y16, sizeof(y16), "probe", 1024, 16, 100, 1, NULL);
    small = plan_total(y16, NULL);
  }
  id = submit(yaml, "squeeze");
  wait_state(id, "running", 10000);
  ck_assert_uint_eq(show_plan(id, "total"), total);
  wait_steps(id, 5, 60000);
  set_budget(small);
  wait_state(id, "succeeded", 180000);
  mb = show_plan(id, "micro_batch");
  ck_assert_uint_eq(mb, 16);
  ck_assert_uint_eq(show_plan(id, "accumulation"), 4);
  ck_assert_uint_eq(show_plan(id, "total"), small);
  ck_assert_uint_eq(reserved(), 0);
  stop();
}
END_TEST

/* Squeezed below its smallest micro-batch, a job goes back to the queue (it
 * does not fail), waits without spinning, and finishes once memory frees. */
START_TEST(test_below_minimum_waits) {
  char yaml[8192], state[16];
  uint64_t id, total, retries = 9;

  start("1GiB");
  job(yaml, sizeof(yaml), "waiter", 1024, 64, 60000, 2, "  min_micro_batch: 64\n");
  total = plan_total(yaml, NULL);
  id = submit(yaml, "wait");
  wait_state(id, "running", 10000);
  wait_steps(id, 3, 60000);
  set_budget(total / 2);
  wait_state(id, "queued", 30000);
  th_msleep(500);
  ck_assert_int_eq(th_show_str(g_sock, id, "state", state, sizeof(state)), 0);
  ck_assert_str_eq(state, "queued");
  ck_assert_uint_eq(reserved(), 0);
  set_budget(total);
  wait_state(id, "succeeded", 180000);
  ck_assert_int_eq(th_show_u64(g_sock, id, "retries", &retries), 0);
  ck_assert_uint_eq(retries, 0);
  stop();
}
END_TEST

/* A job whose whole batch does not fit is admitted at the largest
 * micro-batch that does, chosen from the plan (whole 16-sample blocks:
 * td_plan.bit_identical). */
START_TEST(test_admitted_at_smaller_micro_batch) {
  char yaml[8192], y[8192];
  uint64_t id, small;
  uint32_t mb = 0;

  start("1GiB");
  job(yaml, sizeof(yaml), "accum", 256, 64, 3000, 1, NULL);
  job(y, sizeof(y), "probe", 256, 32, 100, 1, NULL);
  small = plan_total(y, NULL);
  set_budget(small);
  plan_total(yaml, &mb);
  ck_assert_uint_eq(mb, 32);
  id = submit(yaml, "acc");
  wait_state(id, "succeeded", 120000);
  ck_assert_uint_eq(show_plan(id, "micro_batch"), 32);
  ck_assert_uint_eq(show_plan(id, "accumulation"), 2);
  stop();
}
END_TEST

/* memory.fail_alloc: the worker's Nth memory request fails; it re-plans,
 * redoes the step and the job succeeds. */
START_TEST(test_injected_oom_recovers) {
  char yaml[8192], path[300], *log = NULL;
  size_t len;
  uint64_t id;

  start("1GiB");
  job(yaml, sizeof(yaml), "faulty", 128, 32, 2000, 1, "  fail_alloc: 100\n");
  id = submit(yaml, "fault");
  wait_state(id, "succeeded", 120000);
  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_int_eq(td_read_file(path, 1 << 20, &log, &len), 0);
  ck_assert_msg(strstr(log, "out of memory in the") != NULL, "%s", log);
  ck_assert_ptr_nonnull(strstr(log, "re-planned: micro-batch 32 x 1, fp32,"));
  free(log);
  /* the event names the remedy applied: none here but the re-plan */
  ck_assert_int_eq(td_read_file(g_d.log, 1 << 22, &log, &len), 0);
  ck_assert_msg(strstr(log, "replan micro_batch=32 accumulation=1 total=") != NULL, "%s", log);
  ck_assert_msg(strstr(log, " precision=fp32 recompute=0 batch_dependent=0") != NULL, "%s",
                log);
  free(log);
  stop();
}
END_TEST


/* A deep MLP whose recomputed activations take less memory at its whole
 * batch (batch 256, 1024 samples, one epoch), with the memory keys given:
 * th_job_yaml's job with four dense+gelu layers for its hidden one. */
static void deep_job(char *buf, size_t cap, const char *name, const char *memory) {
  static const char deep[] = "    - {type: dense, units: 256}\n    - {type: gelu}\n"
                             "    - {type: dense, units: 256}\n    - {type: gelu}\n"
                             "    - {type: dense, units: 256}\n    - {type: gelu}\n"
                             "    - {type: dense, units: 256}\n    - {type: gelu}\n";
  char base[4096];
  const char *from, *to;

  th_job_yaml(base, sizeof(base), name, 256, 1, 1024, 256);
  from = strstr(base, "  layers:\n");
  to = strstr(base, "    - {type: dense, units: 10}\n");
  ck_assert(from != NULL && to != NULL);
  from += strlen("  layers:\n");
  snprintf(buf, cap, "%.*s%s%smemory:\n%s", (int)(from - base), base, deep, to, memory);
}

/* The `plan` request's remedies for cpu0, comma-joined ("" for none). */
static void plan_remedies(const char *yaml, char *out, size_t cap) {
  const msgpack_object *devs, *rem;
  td_msg *m = plan_request(yaml);
  size_t n = 0;

  ck_assert_int_eq(td_obj_array(td_msg_root(m), "devices", &devs), 0);
  ck_assert_int_eq(td_obj_array(&devs->via.array.ptr[0], "remedies", &rem), 0);
  out[0] = '\0';
  for (uint32_t i = 0; i < rem->via.array.size; i++) {
    const msgpack_object *o = &rem->via.array.ptr[i];

    ck_assert_int_eq(o->type, MSGPACK_OBJECT_STR);
    n += (size_t)snprintf(out + n, cap - n, "%s%.*s", i ? "," : "", (int)o->via.str.size,
                          o->via.str.ptr);
  }
  td_msg_free(m);
}

/* A job that fits the device only with activation recomputation, which it
 * allows (and not accumulation): admitted with recomputation, its worker
 * runs that plan to the byte, and it succeeds.  Before, admission planned
 * the job file's own settings only and refused it. */
START_TEST(test_admitted_with_recompute) {
  char yaml[8192], y[8192], remedies[64], path[300], *log = NULL;
  uint64_t id, whole, rec;
  size_t len;

  start("1GiB");
  deep_job(yaml, sizeof(yaml), "recomputed", "  remedies: [recompute]\n");
  deep_job(y, sizeof(y), "probe", "  recompute: true\n  remedies: []\n");
  whole = plan_total(yaml, NULL);
  rec = plan_total(y, NULL);
  ck_assert_uint_lt(rec, whole);
  set_budget(rec);
  plan_remedies(yaml, remedies, sizeof(remedies));
  ck_assert_str_eq(remedies, "recompute");
  id = submit(yaml, "rec");
  wait_state(id, "succeeded", 180000);
  ck_assert_uint_eq(show_plan(id, "total"), rec);
  ck_assert_uint_eq(show_plan(id, "micro_batch"), 256);
  ck_assert_uint_eq(show_plan(id, "accumulation"), 1);
  ck_assert_uint_eq(reserved(), 0);
  /* the worker started with recomputation, never ran out of memory */
  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_int_eq(td_read_file(path, 1 << 20, &log, &len), 0);
  ck_assert_msg(strstr(log, "with activation recomputation") != NULL, "%s", log);
  ck_assert_msg(strstr(log, "out of memory") == NULL, "%s", log);
  free(log);
  /* admission says which remedy it chose */
  ck_assert_int_eq(td_read_file(g_d.log, 1 << 22, &log, &len), 0);
  ck_assert_msg(strstr(log, "remedies recompute,") != NULL, "%s", log);
  free(log);
  stop();
}
END_TEST

/* The same job on the same budget, not allowing recomputation: refused at
 * submit, the message naming its smallest plan. */
START_TEST(test_refused_without_the_remedy) {
  char yaml[8192], y[8192], remedies[64], err[512];
  uint64_t rec;
  td_pack p;
  td_msg *m = NULL;
  int code = 0;

  start("1GiB");
  deep_job(yaml, sizeof(yaml), "whole", "  remedies: [bf16]\n");
  deep_job(y, sizeof(y), "probe", "  recompute: true\n  remedies: []\n");
  rec = plan_total(y, NULL);
  set_budget(rec);
  plan_remedies(yaml, remedies, sizeof(remedies));
  ck_assert_str_eq(remedies, "");
  td_pack_init(&p);
  th_pack_submit(&p, yaml, "/tmp", "whole", NULL);
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err)), 0);
  ck_assert_int_eq(code, TD_ENOFIT);
  ck_assert_msg(strstr(err, "even at its smallest micro-batch 256") != NULL, "%s", err);
  td_msg_free(m);
  td_pack_free(&p);
  ck_assert_uint_eq(reserved(), 0);
  stop();
}
END_TEST

static Suite *memory_suite(void) {
  Suite *s = suite_create("memory");
  TCase *tc = tcase_create("memory");

  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_three_jobs_two_at_a_time);
  tcase_add_test(tc, test_budget_lowered_mid_run);
  tcase_add_test(tc, test_below_minimum_waits);
  tcase_add_test(tc, test_admitted_at_smaller_micro_batch);
  tcase_add_test(tc, test_injected_oom_recovers);
  tcase_add_test(tc, test_admitted_with_recompute);
  tcase_add_test(tc, test_refused_without_the_remedy);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(memory_suite(), 0); }
