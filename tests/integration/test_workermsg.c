/* What traind and a job's processes exchange, with the real traind: a
 * worker that sends traind what the catalogue (proto/imsg.h) does not
 * describe fails its job with the reason while traind goes on; a job is
 * handed to its processes as its description (job.tdj, proto/jobdesc.h);
 * and a queued job from a traind that stored only YAML gets its
 * description from it once, and runs. */
#include <check.h>
#include <nanomsg/nn.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "jobdesc.h"
#include "util.h"

#define WAIT_MS 30000

static th_daemon g_d;
static int g_sock = -1;

/* A worker that says "hello" in a frame (not a msgpack map), then holds
 * on like the stand-in workers; and a loader that only holds on. */
static void hostile_libexec(char *dir, size_t cap) {
  static const char worker[] =
      "#!/bin/sh\n"
      "printf '\\000\\000\\000\\005hello' >&3\n"
      "while kill -0 \"$PPID\" 2>/dev/null; do sleep 0.2; done\n";
  FILE *f;
  char path[300];

  snprintf(dir, cap, "%s/hostile", g_d.dir);
  ck_assert_int_eq(th_stub_libexec(dir), 0);
  snprintf(path, sizeof(path), "%s/traind-worker", dir);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fputs(worker, f) >= 0, 1);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(chmod(path, 0755), 0);
}

static void start(void) {
  int rc;

  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert(g_sock >= 0);
}

static void disconnect(void) {
  if (g_sock >= 0)
    nn_close(g_sock);
  g_sock = -1;
}

static void setup(void) { memset(&g_d, 0, sizeof(g_d)); }

static void teardown(void) {
  disconnect();
  if (g_d.pid > 0)
    ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly:\n%s",
                  th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}

static uint64_t submit(const char *name) {
  char yaml[4096], err[512] = "";
  uint64_t id = 0;
  int rc;

  th_job_yaml(yaml, sizeof(yaml), name, 16, 1, 100, 32);
  rc = th_submit(g_sock, yaml, name, &id, err, sizeof(err));
  ck_assert_msg(rc == 0, "submit: %s %s", td_err_name(rc), err);
  return id;
}

static void wait_state(uint64_t id, const char *want) {
  char last[32] = "";
  int rc = th_wait_state(g_sock, id, want, WAIT_MS, last, sizeof(last));

  ck_assert_msg(rc == 0, "job %llu is %s, not %s (%s); traind's log ends:\n%s",
                (unsigned long long)id, last, want, td_strerror(rc), th_log_tail(&g_d));
}

START_TEST(a_malformed_report_fails_the_job_not_traind) {
  char dir[256], extra[300], error[512] = "";
  uint64_t id, other;
  td_msg *m = NULL;
  int code = 0;

  ck_assert(th_daemon_init(&g_d, "1GiB", NULL, 0) == 0);
  hostile_libexec(dir, sizeof(dir));
  snprintf(extra, sizeof(extra), "libexec_dir: %s\n", dir);
  ck_assert(th_daemon_config(&g_d, "1GiB", extra, 0) == 0);
  start();
  id = submit("hostile");
  wait_state(id, "failed");
  ck_assert_int_eq(th_show_str(g_sock, id, "error", error, sizeof(error)), 0);
  ck_assert_msg(strstr(error, "the worker sent traind a malformed message") != NULL, "%s",
                error);
  /* traind answers, and runs the next job as it would */
  ck_assert_int_eq(th_rpc_simple(g_sock, "info", NULL, 0, &m, &code, error, sizeof(error)), 0);
  ck_assert_int_eq(code, 0);
  td_msg_free(m);
  other = submit("next");
  wait_state(other, "failed");
  teardown();
}
END_TEST

static void job_desc(uint64_t id, td_jobspec *spec) {
  char path[300], err[512];

  snprintf(path, sizeof(path), "%s/jobs/%llu/" TD_JOBDESC_FILE, g_d.state,
           (unsigned long long)id);
  ck_assert_msg(td_jobdesc_load(path, spec, err, sizeof(err)) == 0, "%s", err);
}

/* The length of a job's stored description; -1 when it has none. */
static int stored_desc(uint64_t id) {
  sqlite3 *h;
  sqlite3_stmt *st;
  int n = -2;

  ck_assert_int_eq(sqlite3_open_v2(g_d.db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  ck_assert_int_eq(sqlite3_prepare_v2(h, "SELECT job_desc FROM jobs WHERE id=?", -1, &st, NULL),
                   SQLITE_OK);
  sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
  if (sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_type(st, 0) == SQLITE_NULL ? -1 : sqlite3_column_bytes(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(h);
  ck_assert_int_ne(n, -2);
  return n;
}

START_TEST(an_old_row_gets_its_description_once) {
  char *errmsg = NULL;
  td_jobspec spec;
  sqlite3 *h;
  uint64_t id;

  ck_assert(th_daemon_init(&g_d, "1GiB", NULL, 1) == 0);
  start();
  id = submit("olden");
  wait_state(id, "running");
  ck_assert_int_gt(stored_desc(id), 0);
  /* the processes get the description, not the job file */
  job_desc(id, &spec);
  ck_assert_str_eq(spec.name, "olden");
  ck_assert_uint_eq(spec.batch_size, 32);
  disconnect();
  ck_assert(th_daemon_stop(&g_d) == 0);
  /* as a traind from before descriptions left it */
  ck_assert_int_eq(sqlite3_open(g_d.db, &h), SQLITE_OK);
  ck_assert_msg(sqlite3_exec(h, "UPDATE jobs SET job_desc=NULL", NULL, NULL, &errmsg) == SQLITE_OK,
                "%s", errmsg ? errmsg : "");
  sqlite3_close(h);
  ck_assert_int_eq(stored_desc(id), -1);
  start();
  wait_state(id, "running");
  ck_assert_int_gt(stored_desc(id), 0);
  job_desc(id, &spec);
  ck_assert_str_eq(spec.name, "olden");
  teardown();
}
END_TEST

int main(void) {
  Suite *s = suite_create("workermsg");
  TCase *tc = tcase_create("workermsg");

  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, a_malformed_report_fails_the_job_not_traind);
  tcase_add_test(tc, an_old_row_gets_its_description_once);
  suite_add_tcase(s, tc);
  return th_run(s, 0);
}
