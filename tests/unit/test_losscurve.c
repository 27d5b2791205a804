/* The loss curve traind keeps per job (daemon/losscurve.h): bounded,
 * evenly spread, pairs merged exactly, and cut back when a job resumes
 * from an earlier step. */
#include <check.h>
#include <math.h>
#include <stdint.h>

#include "error.h"
#include "losscurve.h"

START_TEST(test_small) {
  td_losscurve c = {0};

  ck_assert_uint_eq(td_losscurve_len(&c), 0);
  for (uint64_t s = 1; s <= 100; s++)
    ck_assert_int_eq(td_losscurve_add(&c, s * 10, 1.0 / (double)s), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), 100);
  for (uint32_t i = 0; i < 100; i++) {
    ck_assert_uint_eq(c.pts[i].step, (i + 1) * 10);
    ck_assert(c.pts[i].loss == 1.0 / (double)(i + 1));
  }
  td_losscurve_clear(&c);
  ck_assert_uint_eq(td_losscurve_len(&c), 0);
  td_losscurve_clear(&c);
}
END_TEST

/* With loss = step, a point's loss is the mean of the steps it stands for. */
START_TEST(test_merge_exact) {
  td_losscurve c = {0};

  for (uint64_t s = 1; s <= TD_LOSSCURVE_POINTS + 1; s++)
    ck_assert_int_eq(td_losscurve_add(&c, s, (double)s), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), TD_LOSSCURVE_POINTS / 2 + 1);
  for (uint32_t i = 0; i < TD_LOSSCURVE_POINTS / 2; i++) {
    ck_assert_uint_eq(c.pts[i].step, 2 * i + 2);
    ck_assert(c.pts[i].loss == 2.0 * i + 1.5);
  }
  ck_assert_uint_eq(c.pts[TD_LOSSCURVE_POINTS / 2].step, TD_LOSSCURVE_POINTS + 1);
  /* the next report fills the last point (two per point now) */
  ck_assert_int_eq(td_losscurve_add(&c, TD_LOSSCURVE_POINTS + 2, TD_LOSSCURVE_POINTS + 2), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), TD_LOSSCURVE_POINTS / 2 + 1);
  ck_assert_uint_eq(c.pts[TD_LOSSCURVE_POINTS / 2].step, TD_LOSSCURVE_POINTS + 2);
  ck_assert(c.pts[TD_LOSSCURVE_POINTS / 2].loss == TD_LOSSCURVE_POINTS + 1.5);
  /* and the one after starts a new point */
  ck_assert_int_eq(td_losscurve_add(&c, TD_LOSSCURVE_POINTS + 3, 7.0), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), TD_LOSSCURVE_POINTS / 2 + 2);
  td_losscurve_clear(&c);
}
END_TEST

/* 200,000 reports: never more than the bound, steps increasing, the
 * first and last steps kept close, and the mean of all losses kept. */
START_TEST(test_bounded) {
  td_losscurve c = {0};
  const uint64_t n = 200000;
  double mean = 0;
  size_t most = 0;
  int rc = 0;

  for (uint64_t s = 1; s <= n && rc == 0; s++) {
    rc = td_losscurve_add(&c, s, (double)(s % 1000));
    if (td_losscurve_len(&c) > most)
      most = td_losscurve_len(&c);
  }
  ck_assert_int_eq(rc, 0);
  ck_assert_uint_eq(most, TD_LOSSCURVE_POINTS);
  ck_assert_uint_le(c.cap, TD_LOSSCURVE_POINTS);
  ck_assert_uint_ge(td_losscurve_len(&c), TD_LOSSCURVE_POINTS / 2);
  ck_assert_uint_eq(c.pts[c.n - 1].step, n);
  ck_assert_uint_le(c.pts[0].step, n / (TD_LOSSCURVE_POINTS / 2));
  for (uint32_t i = 0; i < c.n; i++) {
    if (i > 0)
      ck_assert_uint_gt(c.pts[i].step, c.pts[i - 1].step);
    mean += c.pts[i].loss;
  }
  /* the last point may stand for fewer reports: close, not exact */
  ck_assert(fabs(mean / c.n - 499.5) < 5.0);
  td_losscurve_clear(&c);
}
END_TEST

/* A job resumed from a checkpoint at step 60 reports from step 61 again:
 * what it had reported past 60 belongs to a run that no longer counts. */
START_TEST(test_resume_cuts) {
  td_losscurve c = {0};

  for (uint64_t s = 1; s <= 100; s++)
    ck_assert_int_eq(td_losscurve_add(&c, s, 5.0), 0);
  ck_assert_int_eq(td_losscurve_add(&c, 61, 1.0), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), 61);
  ck_assert_uint_eq(c.pts[59].step, 60);
  ck_assert_uint_eq(c.pts[60].step, 61);
  ck_assert(c.pts[60].loss == 1.0);
  /* from scratch */
  ck_assert_int_eq(td_losscurve_add(&c, 1, 2.0), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), 1);
  ck_assert(c.pts[0].loss == 2.0);
  /* the same step again replaces it */
  ck_assert_int_eq(td_losscurve_add(&c, 1, 3.0), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), 1);
  ck_assert(c.pts[0].loss == 3.0);
  td_losscurve_clear(&c);
}
END_TEST

/* A diverged run's NaN is kept: the plot shows where it went. */
START_TEST(test_nan) {
  td_losscurve c = {0};

  ck_assert_int_eq(td_losscurve_add(&c, 1, 1.0), 0);
  ck_assert_int_eq(td_losscurve_add(&c, 2, NAN), 0);
  ck_assert_uint_eq(td_losscurve_len(&c), 2);
  ck_assert(isnan(c.pts[1].loss));
  td_losscurve_clear(&c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("losscurve");
  TCase *tc = tcase_create("losscurve");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_small);
  tcase_add_test(tc, test_merge_exact);
  tcase_add_test(tc, test_bounded);
  tcase_add_test(tc, test_resume_cuts);
  tcase_add_test(tc, test_nan);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
