/* Integration: the example jobs in examples/, cut to a few hundred
 * samples and one epoch, trained by the real traind, worker and loader end
 * with a model file identical to the byte to an undisturbed run's, however
 * memory ran short while they trained: the device budget cut under their
 * plan mid-run (a re-plan to whole 16-sample blocks), an allocation that
 * fails (memory.fail_alloc), a budget so small that the micro-batch cannot
 * be whole blocks (then show says the run is no longer bit-identical). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

static th_daemon g_d;
static int g_sock = -1;
static char g_dir[64];

static void start(void) {
  snprintf(g_dir, sizeof(g_dir), "/tmp/td-bitid-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(g_dir));
  ck_assert_int_eq(th_daemon_init(&g_d, "1GiB", NULL, 0), 0);
  ck_assert_msg(th_daemon_start(&g_d, 10000) == 0, "traind did not start; see %s", g_d.log);
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);
}

static void stop(void) {
  char cmd[128];

  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly; see %s", g_d.log);
  th_daemon_remove(&g_d);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
  ck_assert_int_eq(system(cmd), 0);
}

/* Replace the first `from` in s (cap bytes) by `to`. */
static void replace(char *s, size_t cap, const char *from, const char *to) {
  char *at = strstr(s, from);
  size_t fl = strlen(from), tl = strlen(to), rest;

  ck_assert_msg(at != NULL, "the example has no '%s'", from);
  rest = strlen(at + fl) + 1;
  ck_assert_uint_lt((size_t)(at - s) + tl + rest, cap);
  memmove(at + tl, at + fl, rest);
  memcpy(at, to, tl);
}

/* examples/NAME.yaml for one epoch of `limit` samples, the model written to
 * g_dir/OUT, and extra lines appended to its memory section. */
static void example(char *buf, size_t cap, const char *name, int limit, const char *out,
                    const char *memory) {
  const char *root = getenv("TD_SOURCE_ROOT");
  char path[512], line[160], *text = NULL;
  size_t len;

  /* TD_BITID_LIMIT=60000 runs the whole epoch (by hand: minutes, not CI) */
  if (getenv("TD_BITID_LIMIT") != NULL && atoi(getenv("TD_BITID_LIMIT")) > 0)
    limit = atoi(getenv("TD_BITID_LIMIT"));
  snprintf(path, sizeof(path), "%s/examples/%s.yaml", root ? root : ".", name);
  ck_assert_int_eq(td_read_file(path, 1 << 16, &text, &len), 0);
  ck_assert_uint_lt(len + 512, cap);
  memcpy(buf, text, len + 1);
  free(text);
  replace(buf, cap, "epochs: 5", "epochs: 1");
  if (strstr(buf, "    limit: 0") != NULL) {
    snprintf(line, sizeof(line), "    limit: %d", limit);
    replace(buf, cap, "    limit: 0", line);
  } else {
    snprintf(line, sizeof(line), "train-labels-idx1-ubyte.gz\n    limit: %d\n", limit);
    replace(buf, cap, "train-labels-idx1-ubyte.gz\n", line);
  }
  snprintf(line, sizeof(line), "memory:\n%s", memory);
  replace(buf, cap, "memory:\n", line);
  /* the rest of the old output line stays behind as a comment */
  snprintf(line, sizeof(line), "\noutput: %s/%s\n# ", g_dir, out);
  replace(buf, cap, "\noutput: ", line);
}

static uint64_t submit(const char *yaml, const char *key) {
  char err[512];
  uint64_t id = 0;

  ck_assert_msg(th_submit(g_sock, yaml, key, &id, err, sizeof(err)) == 0, "submit: %s", err);
  return id;
}

static void wait_state(uint64_t id, const char *want, int ms) {
  char last[32] = "", error[512] = "";
  int rc = th_wait_state(g_sock, id, want, ms, last, sizeof(last));

  if (rc != 0)
    th_show_str(g_sock, id, "error", error, sizeof(error));
  ck_assert_msg(rc == 0, "job %llu is %s, not %s (%s); see %s", (unsigned long long)id, last,
                want, error, g_d.log);
}

static void wait_step(uint64_t id, uint64_t steps) {
  double end = td_now_mono() + 60;
  uint64_t step = 0;

  while (td_now_mono() < end) {
    char state[32] = "";

    if (th_show_u64(g_sock, id, "step", &step) == 0 && step >= steps)
      return;
    th_show_str(g_sock, id, "state", state, sizeof(state));
    ck_assert_msg(strcmp(state, "failed") != 0 && strcmp(state, "succeeded") != 0,
                  "job %llu is %s before step %llu", (unsigned long long)id, state,
                  (unsigned long long)steps);
    th_msleep(5);
  }
  ck_abort_msg("job %llu made no progress", (unsigned long long)id);
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

/* plan.total of a job file on its whole batch, from the `plan` request. */
static uint64_t plan_total(const char *yaml) {
  const msgpack_object *plan;
  td_pack p;
  td_msg *m = NULL;
  char err[512];
  int code = -1;
  uint64_t total = 0;

  td_pack_init(&p);
  td_pack_request(&p, "plan", 3);
  td_pack_kv_str(&p, "job", yaml);
  td_pack_kv_str(&p, "base_dir", "/tmp");
  td_pack_kv_str(&p, "sample_dtype", th_sample_dtype(yaml, "/tmp"));
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "plan refused: %s", err);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "plan", &plan), 0);
  ck_assert_int_eq(td_obj_u64(plan, "total", &total), 0);
  td_msg_free(m);
  td_pack_free(&p);
  return total;
}

/* A field of the running or finished job's plan (show). */
static uint64_t show_plan(uint64_t id, const char *key, bool *flag) {
  const msgpack_object *job, *plan;
  td_msg *m = NULL;
  int code = -1, b = 0;
  uint64_t v = 0;

  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, NULL, 0), 0);
  ck_assert_int_eq(code, 0);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &job), 0);
  ck_assert_int_eq(td_obj_map(job, "plan", &plan), 0);
  if (flag != NULL) {
    ck_assert_int_eq(td_obj_bool(plan, key, &b), 0);
    *flag = b != 0;
  } else {
    ck_assert_int_eq(td_obj_u64(plan, key, &v), 0);
  }
  td_msg_free(m);
  return v;
}

/* The job's log holds needle. */
static void assert_logged(uint64_t id, const char *needle) {
  char path[512], *log = NULL;
  size_t len;

  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_int_eq(td_read_file(path, 16 << 20, &log, &len), 0);
  ck_assert_msg(strstr(log, needle) != NULL, "job %llu's log lacks '%s'", (unsigned long long)id,
                needle);
  free(log);
}

static void assert_same_file(const char *a, const char *b) {
  char pa[256], pb[256], *ta = NULL, *tb = NULL;
  size_t la, lb;

  snprintf(pa, sizeof(pa), "%s/%s", g_dir, a);
  snprintf(pb, sizeof(pb), "%s/%s", g_dir, b);
  ck_assert_int_eq(td_read_file(pa, 64 << 20, &ta, &la), 0);
  ck_assert_int_eq(td_read_file(pb, 64 << 20, &tb, &lb), 0);
  ck_assert_uint_eq(la, lb);
  ck_assert_msg(memcmp(ta, tb, la) == 0, "%s and %s differ", a, b);
  free(ta);
  free(tb);
}

/* One example: undisturbed; the budget cut to 90% of the plan after `cut`
 * steps; the budget cut twice (two re-plans); memory.fail_alloc; the device
 * taken away (the job checkpoints and waits in the queue) and given back
 * smaller (it resumes at a smaller micro-batch).  Each ends with the
 * undisturbed run's file, and show says bit_identical. */
static void example_runs(const char *name, int limit, int cut, int fail_at,
                         const char *memory) {
  char yaml[16384], fail[256];
  uint64_t id, total, mb;
  bool bit;

  start();
  example(yaml, sizeof(yaml), name, limit, "ref.st", memory);
  id = submit(yaml, "ref");
  wait_state(id, "succeeded", 300000);
  total = show_plan(id, "total", NULL);
  mb = show_plan(id, "micro_batch", NULL);

  example(yaml, sizeof(yaml), name, limit, "cut.st", memory);
  id = submit(yaml, "cut");
  wait_step(id, (uint64_t)cut);
  set_budget(total * 9 / 10);
  wait_state(id, "succeeded", 300000);
  ck_assert_uint_lt(show_plan(id, "micro_batch", NULL), mb);
  ck_assert_uint_eq(show_plan(id, "micro_batch", NULL) % 16, 0);
  show_plan(id, "bit_identical", &bit);
  ck_assert(bit);
  assert_same_file("ref.st", "cut.st");
  set_budget(1ull << 30);

  example(yaml, sizeof(yaml), name, limit, "twice.st", memory);
  id = submit(yaml, "twice");
  wait_step(id, (uint64_t)cut / 2);
  set_budget(total * 95 / 100);
  wait_step(id, (uint64_t)cut * 2);
  set_budget(total * 9 / 10);
  wait_state(id, "succeeded", 300000);
  assert_same_file("ref.st", "twice.st");
  set_budget(1ull << 30);

  snprintf(fail, sizeof(fail), "%s  fail_alloc: %d\n", memory, fail_at);
  example(yaml, sizeof(yaml), name, limit, "fail.st", fail);
  id = submit(yaml, "fail");
  wait_state(id, "succeeded", 300000);
  assert_logged(id, "out of memory");
  assert_same_file("ref.st", "fail.st");

  example(yaml, sizeof(yaml), name, limit, "requeue.st", memory);
  id = submit(yaml, "requeue");
  wait_step(id, (uint64_t)cut);
  set_budget(total / 8 > (1u << 20) ? total / 8 : 1u << 20); /* below its smallest plan */
  wait_state(id, "queued", 60000);
  set_budget(total * 9 / 10);
  wait_state(id, "succeeded", 300000);
  assert_logged(id, "resumed from");
  ck_assert_uint_lt(show_plan(id, "micro_batch", NULL), mb);
  assert_same_file("ref.st", "requeue.st");
  stop();
}

START_TEST(test_mlp) { example_runs("fashion-mnist-mlp", 25600, 6, 300, ""); }
END_TEST

START_TEST(test_cnn) { example_runs("fashion-mnist-cnn", 6400, 20, 400, "  min_micro_batch: 8\n"); }
END_TEST

START_TEST(test_cnn_bf16) {
  example_runs("fashion-mnist-cnn-bf16", 6400, 20, 400, "  min_micro_batch: 8\n");
}
END_TEST

/* A small model: at 8 rows its plan is under the 1 MiB the requeue step
 * leaves, so it may not go below a block. */
START_TEST(test_conv1d) {
  example_runs("fashion-mnist-conv1d", 25600, 6, 400, "  min_micro_batch: 16\n");
}
END_TEST

/* A budget below the plan at one block: the job still runs, at a micro-batch
 * that is not whole blocks, and show says it is no longer bit-identical. */
START_TEST(test_tiny_budget_says_so) {
  char yaml[16384], y16[16384];
  uint64_t id, at16, at8;
  bool bit = true;

  start();
  example(yaml, sizeof(yaml), "fashion-mnist-mlp", 60000, "tiny.st", "");
  /* the plans at 16 and 8 rows: the budget goes between them */
  example(y16, sizeof(y16), "fashion-mnist-mlp", 6400, "x.st", "");
  replace(y16, sizeof(y16), "batch_size: 128", "batch_size: 16");
  at16 = plan_total(y16);
  replace(y16, sizeof(y16), "batch_size: 16", "batch_size: 12");
  at8 = plan_total(y16);
  id = submit(yaml, "tiny");
  wait_step(id, 3);
  show_plan(id, "bit_identical", &bit);
  ck_assert(bit);
  set_budget(at8 + (at16 - at8) / 2);
  wait_state(id, "succeeded", 300000);
  ck_assert_uint_lt(show_plan(id, "micro_batch", NULL), 16);
  show_plan(id, "bit_identical", &bit);
  ck_assert(!bit);
  stop();
}
END_TEST

static Suite *bitid_suite(void) {
  Suite *s = suite_create("bitid");
  TCase *tc = tcase_create("examples");

  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_mlp);
  tcase_add_test(tc, test_cnn);
  tcase_add_test(tc, test_cnn_bf16);
  tcase_add_test(tc, test_conv1d);
  tcase_add_test(tc, test_tiny_budget_says_so);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(bitid_suite(), 1); }
