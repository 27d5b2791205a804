/* The device ledger (daemon/ledger.c): after any sequence of reservations,
 * releases, re-plans, limits and draining, a device's reserved bytes are
 * the sum of what its jobs hold and njobs counts them.  ledger.c and
 * fairshare.c (a release charges the user) are linked with stand-ins for
 * publishing and the database. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "fairshare.h"
#include "ledger.h"
#include "log.h"
#include "server.h"
#include "traind.h"
#include "util.h"

static int g_published;

void td_publish_device(td_daemon *d, const td_device *dev) {
  (void)d, (void)dev;
  g_published++;
}
int td_db_usage_load(td_db *db,
                     int (*fn)(void *arg, uint32_t uid, const char *name, double usage,
                               int64_t at_ms),
                     void *arg) {
  (void)db, (void)fn, (void)arg;
  return 0;
}
int td_db_usage_save(td_db *db, td_user *users, size_t n, int64_t at_ms) {
  (void)db, (void)users, (void)n, (void)at_ms;
  return 0;
}

enum { NDEV = 3, NJOBS = 24 };
static td_daemon g_d;
static td_job g_jobs[NJOBS];

static void setup(void) {
  td_log_init("test_ledger", TD_LOG_ERROR); /* a limit above the free bytes warns */
  memset(&g_d, 0, sizeof(g_d));
  memset(g_jobs, 0, sizeof(g_jobs));
  g_d.cfg.ndevices = NDEV;
  g_d.cfg.fairshare_halflife_s = 3600;
  g_d.usage_ms = td_now_unix_ms();
  for (int i = 0; i < NDEV; i++) {
    snprintf(g_d.cfg.devices[i].name, sizeof(g_d.cfg.devices[i].name), "cpu%d", i);
    g_d.cfg.devices[i].budget = 1000000;
  }
  td_ledger_init(&g_d);
  for (int i = 0; i < NJOBS; i++) {
    g_jobs[i].id = (uint64_t)i + 1;
    g_jobs[i].uid = 1000 + (uint32_t)(i % 3);
    g_jobs[i].state = TD_JOB_RUNNING;
  }
}

static void teardown(void) {
  free(g_d.users);
}

/* The invariant, on every device. */
static void check_books(const char *after) {
  for (int k = 0; k < g_d.ndevices; k++) {
    const td_device *dev = &g_d.devices[k];
    uint64_t sum = 0;
    uint32_t n = 0;

    for (int i = 0; i < NJOBS; i++)
      if (g_jobs[i].held > 0 && strcmp(g_jobs[i].device, dev->name) == 0) {
        sum += g_jobs[i].held;
        n++;
      }
    ck_assert_msg(dev->reserved == sum, "after %s: %s reserves %llu, its jobs hold %llu", after,
                  dev->name, (unsigned long long)dev->reserved, (unsigned long long)sum);
    ck_assert_msg(dev->njobs == n, "after %s: %s counts %u jobs, %u hold bytes", after,
                  dev->name, dev->njobs, n);
  }
}

static uint64_t g_rng = 88172645463325252ull;

static uint64_t rnd(uint64_t n) {
  g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
  return g_rng % n;
}

START_TEST(test_init) {
  ck_assert_int_eq(g_d.ndevices, NDEV);
  ck_assert_str_eq(g_d.devices[2].name, "cpu2");
  ck_assert_uint_eq(g_d.devices[2].budget, 1000000);
  ck_assert_ptr_eq(td_ledger_device(&g_d, "cpu1"), &g_d.devices[1]);
  ck_assert_ptr_null(td_ledger_device(&g_d, "cpu9"));
  check_books("init");
}
END_TEST

/* The life of one job: reserve, shrink, grow, release, release again. */
START_TEST(test_one_job) {
  td_job *j = &g_jobs[0];
  td_plan p = {.total = 5000, .micro_batch = 8};
  td_device *dev = &g_d.devices[1];

  td_ledger_reserve(&g_d, dev, j, &p);
  ck_assert_str_eq(j->device, "cpu1");
  ck_assert_uint_eq(j->plan.total, 5000);
  ck_assert_uint_eq(dev->reserved, 5000);
  ck_assert_double_gt(j->acct_mono, 0);
  p.total = 3000;
  td_ledger_replan(&g_d, j, &p);
  ck_assert_uint_eq(dev->reserved, 3000);
  p.total = 7000;
  td_ledger_replan(&g_d, j, &p);
  ck_assert_uint_eq(dev->reserved, 7000);
  ck_assert_uint_eq(j->plan.total, 7000);
  td_ledger_release(&g_d, j);
  ck_assert_uint_eq(dev->reserved, 0);
  ck_assert_uint_eq(dev->njobs, 0);
  ck_assert_double_eq(j->acct_mono, 0);
  /* its user was charged for what it held */
  ck_assert_ptr_nonnull(td_user_get(&g_d, j->uid, NULL));
  /* a second release gives back nothing: the books do not go below */
  td_ledger_reserve(&g_d, dev, &g_jobs[1], &p);
  td_ledger_release(&g_d, j);
  ck_assert_uint_eq(dev->reserved, 7000);
  ck_assert_uint_eq(dev->njobs, 1);
  /* a re-plan of a job that holds nothing only changes its plan */
  p.total = 123;
  td_ledger_replan(&g_d, j, &p);
  ck_assert_uint_eq(dev->reserved, 7000);
  ck_assert_uint_eq(j->plan.total, 123);
  check_books("one job");
}
END_TEST

/* Any sequence keeps the books. */
START_TEST(test_random_sequences) {
  for (int step = 0; step < 20000; step++) {
    td_job *j = &g_jobs[rnd(NJOBS)];
    td_device *dev = &g_d.devices[rnd(NDEV)];
    td_plan p = {.total = 1 + rnd(200000), .micro_batch = 1};
    const char *op;

    switch (rnd(6)) {
    case 0:
    case 1:
      op = "reserve";
      if (j->held == 0) /* the scheduler reserves only for a waiting job */
        td_ledger_reserve(&g_d, dev, j, &p);
      break;
    case 2:
      op = "release";
      td_ledger_release(&g_d, j);
      break;
    case 3:
      op = "replan";
      td_ledger_replan(&g_d, j, &p);
      break;
    case 4:
      op = "limit";
      dev->free = rnd(2000000);
      td_device_set_limit(dev, rnd(2000000));
      ck_assert_uint_le(dev->budget, dev->limit);
      break;
    default:
      op = "drain";
      td_ledger_drain(dev, (int)rnd(2));
      break;
    }
    check_books(op);
  }
  for (int i = 0; i < NJOBS; i++)
    td_ledger_release(&g_d, &g_jobs[i]);
  check_books("the end");
  for (int k = 0; k < NDEV; k++)
    ck_assert_uint_eq(g_d.devices[k].reserved, 0);
}
END_TEST

START_TEST(test_limit_table) {
  static const struct {
    int probing;
    const char *unusable;
    uint64_t free, limit, want;
  } cases[] = {
      {0, "", 1000, 800, 800},  /* the configured limit */
      {0, "", 500, 800, 500},   /* capped by what the probe found free */
      {1, "", 1000, 800, 0},    /* not measured yet: admits nothing */
      {0, "no GPU", 1000, 800, 0},
  };

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_device *dev = &g_d.devices[0];

    dev->probing = cases[i].probing;
    snprintf(dev->unusable, sizeof(dev->unusable), "%s", cases[i].unusable);
    dev->free = cases[i].free;
    td_device_set_limit(dev, cases[i].limit);
    ck_assert_msg(dev->budget == cases[i].want, "case %zu: %llu", i,
                  (unsigned long long)dev->budget);
    ck_assert_uint_eq(dev->limit, cases[i].limit);
  }
  td_ledger_drain(&g_d.devices[1], 5);
  ck_assert_int_eq(g_d.devices[1].draining, 1);
  td_ledger_drain(&g_d.devices[1], 0);
  ck_assert_int_eq(g_d.devices[1].draining, 0);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("ledger");
  TCase *tc = tcase_create("core");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_init);
  tcase_add_test(tc, test_one_job);
  tcase_add_test(tc, test_random_sequences);
  tcase_add_test(tc, test_limit_table);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
