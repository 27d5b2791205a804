/* Retention with the real traind: ended jobs beyond the newest
 * retention_jobs are removed from `list`, the database and the state
 * directory, and what their owner planted in a job's directory (links to
 * files and directories outside it) is removed without being followed. */
#include <check.h>
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define NJOBS 7
#define KEEP 3

static th_daemon g_d;
static int g_sock = -1;

static void connect_daemon(void) {
  ck_assert_msg(th_daemon_start(&g_d, 30000) == 0, "traind did not start; see %s", g_d.log);
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);
}

static void wait_state(uint64_t id, const char *want) {
  char last[32] = "";

  ck_assert_msg(th_wait_state(g_sock, id, want, 30000, last, sizeof(last)) == 0,
                "job %llu is %s, not %s; see %s", (unsigned long long)id, last, want, g_d.log);
}

static void cancel(uint64_t id) {
  int code = -1;
  char err[256];

  ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", id, NULL, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "cancel %llu: %s", (unsigned long long)id, err);
}

/* Rows for the job in jobs and in job_history. */
static int db_rows(uint64_t id) {
  static const char *const sql[] = {"SELECT count(*) FROM jobs WHERE id=?",
                                    "SELECT count(*) FROM job_history WHERE job_id=?"};
  sqlite3 *h;
  int n = 0;

  ck_assert_int_eq(sqlite3_open_v2(g_d.db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_busy_timeout(h, 5000);
  for (size_t i = 0; i < TD_ARRAY_SIZE(sql); i++) {
    sqlite3_stmt *st;

    ck_assert_int_eq(sqlite3_prepare_v2(h, sql[i], -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    n += sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_close(h);
  return n;
}

static int job_dir_exists(uint64_t id) {
  char path[256];
  struct stat st;

  snprintf(path, sizeof(path), "%s/jobs/%llu", g_d.state, (unsigned long long)id);
  return lstat(path, &st) == 0;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");

  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  ck_assert_int_eq(fclose(f), 0);
}

/* Seven jobs run one at a time on stand-in workers; six are cancelled
 * while they run (so each has a directory); retention_jobs: 3 keeps the
 * newest three ended ones and the running one, across a restart. */
START_TEST(test_keep_newest) {
  char yaml[4096], key[16], budget[32], path[512], target[512], outside[256];
  uint64_t id[NJOBS], total = 0;
  th_row *rows = NULL;
  size_t n = 0;
  struct stat st;

  th_job_yaml(yaml, sizeof(yaml), "keep", 512, 1, 500, 128);
  ck_assert_int_eq(th_plan_total(yaml, &total), 0);
  snprintf(budget, sizeof(budget), "%llu", (unsigned long long)(total + total / 2));
  ck_assert_int_eq(th_daemon_init(&g_d, budget, "retention_jobs: 3\n", 1), 0);
  connect_daemon();
  for (int i = 0; i < NJOBS; i++) {
    char err[256];

    snprintf(key, sizeof(key), "k%d", i);
    ck_assert_msg(th_submit(g_sock, yaml, key, &id[i], err, sizeof(err)) == 0, "%s", err);
  }
  for (int i = 0; i < NJOBS - 1; i++) {
    wait_state(id[i], "running");
    cancel(id[i]);
    wait_state(id[i], "cancelled");
    ck_assert_msg(job_dir_exists(id[i]), "job %llu has no directory",
                  (unsigned long long)id[i]);
  }
  wait_state(id[NJOBS - 1], "running");

  /* What the job's user could leave in its directory: a link to a file
   * and one to a directory outside, and a subdirectory with a link. */
  snprintf(outside, sizeof(outside), "%s/outside", g_d.dir);
  ck_assert_int_eq(mkdir(outside, 0755), 0);
  snprintf(target, sizeof(target), "%s/precious", outside);
  write_file(target, "keep me\n");
  snprintf(path, sizeof(path), "%s/jobs/%llu/link", g_d.state, (unsigned long long)id[0]);
  ck_assert_int_eq(symlink(target, path), 0);
  snprintf(path, sizeof(path), "%s/jobs/%llu/dirlink", g_d.state, (unsigned long long)id[0]);
  ck_assert_int_eq(symlink(outside, path), 0);
  snprintf(path, sizeof(path), "%s/jobs/%llu/sub", g_d.state, (unsigned long long)id[1]);
  ck_assert_int_eq(mkdir(path, 0700), 0);
  snprintf(path, sizeof(path), "%s/jobs/%llu/sub/deeper", g_d.state, (unsigned long long)id[1]);
  ck_assert_int_eq(mkdir(path, 0700), 0);
  snprintf(path, sizeof(path), "%s/jobs/%llu/sub/deeper/up", g_d.state,
           (unsigned long long)id[1]);
  ck_assert_int_eq(symlink(outside, path), 0);

  /* Retention runs when traind starts. */
  ck_assert_int_eq(th_daemon_stop(&g_d), 0);
  connect_daemon();

  ck_assert_int_eq(th_list(g_sock, &rows, &n, NULL, 0), 0);
  ck_assert_msg(n == KEEP + 1, "list has %zu jobs; see %s", n, g_d.log);
  for (size_t i = 0; i < KEEP; i++) {
    ck_assert_uint_eq(rows[i].id, id[NJOBS - 1 - KEEP + i]);
    ck_assert_str_eq(rows[i].state, "cancelled");
  }
  ck_assert_uint_eq(rows[KEEP].id, id[NJOBS - 1]);
  free(rows);

  for (int i = 0; i < NJOBS - 1 - KEEP; i++) {
    char state[32];

    ck_assert_int_eq(db_rows(id[i]), 0);
    ck_assert_msg(!job_dir_exists(id[i]), "job %llu's directory is still there",
                  (unsigned long long)id[i]);
    ck_assert_int_lt(th_show_str(g_sock, id[i], "state", state, sizeof(state)), 0);
  }
  for (int i = NJOBS - 1 - KEEP; i < NJOBS; i++) {
    ck_assert_int_gt(db_rows(id[i]), 0);
    ck_assert(job_dir_exists(id[i]));
  }
  /* The links were removed, not followed. */
  ck_assert_int_eq(stat(target, &st), 0);
  ck_assert_int_eq(stat(outside, &st), 0);
  ck_assert(S_ISDIR(st.st_mode));
  {
    char buf[32] = "";
    FILE *f = fopen(target, "r");

    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(buf, sizeof(buf), f));
    fclose(f);
    ck_assert_str_eq(buf, "keep me\n");
  }

  /* A pruned job's key is free again; the kept ones still answer. */
  {
    uint64_t again = 0;
    char err[256];

    ck_assert_int_eq(th_submit(g_sock, yaml, "k6", &again, err, sizeof(err)), 0);
    ck_assert_uint_eq(again, id[NJOBS - 1]);
  }
  ck_assert_int_eq(th_daemon_stop(&g_d), 0);
  th_daemon_remove(&g_d);
}
END_TEST

static Suite *retain_suite(void) {
  Suite *s = suite_create("retain");
  TCase *tc = tcase_create("retain");

  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, test_keep_newest);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(retain_suite(), 1); }
