/* Queue order with the real traind: priority first (all jobs come from one
 * user here, so fair share between users is the unit test's, test_sched),
 * the usage table a restart keeps, and the reason a queued job gives. */
#include <check.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

static th_daemon g_d;
static int g_sock = -1;

static void wait_state(uint64_t id, const char *want) {
  char last[32] = "";

  ck_assert_msg(th_wait_state(g_sock, id, want, 30000, last, sizeof(last)) == 0,
                "job %llu is %s, not %s; see %s", (unsigned long long)id, last, want, g_d.log);
}

static uint64_t submit(const char *yaml, const char *key) {
  char err[256];
  uint64_t id = 0;

  ck_assert_msg(th_submit(g_sock, yaml, key, &id, err, sizeof(err)) == 0, "%s", err);
  return id;
}

/* The recorded usage of every user (one here), from the database. */
static double db_usage(void) {
  sqlite3 *h;
  sqlite3_stmt *st;
  double u = -1;

  ck_assert_int_eq(sqlite3_open_v2(g_d.db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  sqlite3_busy_timeout(h, 5000);
  ck_assert_int_eq(sqlite3_prepare_v2(h, "SELECT sum(usage) FROM user_usage", -1, &st, NULL),
                   SQLITE_OK);
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
    u = sqlite3_column_double(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(h);
  return u;
}

START_TEST(test_priority_and_reason) {
  char low[4096], high[4096], budget[32], reason[192];
  uint64_t first, a, b, total = 0;
  size_t n;
  int rc;

  th_job_yaml(low, sizeof(low), "low", 512, 1, 500, 128);
  n = (size_t)snprintf(high, sizeof(high), "priority: 5\n");
  th_job_yaml(high + n, sizeof(high) - n, "high", 512, 1, 500, 128);
  ck_assert_int_eq(th_plan_total(low, &total), 0);
  snprintf(budget, sizeof(budget), "%llu", (unsigned long long)(total + total / 2));
  ck_assert_int_eq(th_daemon_init(&g_d, budget, NULL, 1), 0);
  ck_assert_msg(th_daemon_start(&g_d, 30000) == 0, "traind did not start; see %s", g_d.log);
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);

  first = submit(low, "first");
  wait_state(first, "running");
  a = submit(low, "a");
  b = submit(high, "b");
  /* b has the higher priority: it runs next although a came first. */
  ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", first, NULL, &rc, NULL, 0), 0);
  ck_assert_int_eq(rc, 0);
  wait_state(b, "running");
  {
    char s[32];
    ck_assert_int_eq(th_show_str(g_sock, a, "state", s, sizeof(s)), 0);
    ck_assert_str_eq(s, "queued");
  }
  /* The reason it waits, once `show` sends it (the server's part). */
  rc = th_show_str(g_sock, a, "wait_reason", reason, sizeof(reason));
  if (rc == 0) {
    ck_assert_msg(strncmp(reason, "waiting for ", 12) == 0 && strstr(reason, "on cpu0"),
                  "wait_reason: %s", reason);
    ck_assert_int_eq(th_show_str(g_sock, b, "wait_reason", reason, sizeof(reason)), 0);
    ck_assert_str_eq(reason, "");
  } else {
    printf("note: `show` has no wait_reason yet; that check is skipped\n");
  }

  /* The usage the first two runs made reaches the database by the stop. */
  ck_assert_int_eq(th_daemon_stop(&g_d), 0);
  ck_assert_double_gt(db_usage(), 0);
  th_daemon_remove(&g_d);
}
END_TEST

static Suite *fairshare_suite(void) {
  Suite *s = suite_create("fairshare");
  TCase *tc = tcase_create("fairshare");

  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_priority_and_reason);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(fairshare_suite(), 1); }
