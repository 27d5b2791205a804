/* The worker's event lines as traind reads them (common/kvline.h): where a
 * key matches, where a value ends, what a number must look like, and the
 * lines a confused or hostile worker could send. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "kvline.h"

START_TEST(test_get) {
  const char *line = "progress epoch=1 step=3 loss=0.5 msg=out of memory at step=4";
  char v[64];

  ck_assert_int_eq(td_kv_get(line, "epoch", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "1");
  ck_assert_int_eq(td_kv_get(line, "loss", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "0.5");
  /* msg runs to the end of the line; the first step= counts, not msg's. */
  ck_assert_int_eq(td_kv_get(line, "msg", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "out of memory at step=4");
  ck_assert_int_eq(td_kv_get(line, "step", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "3");
  /* At the start of the line too; an empty value is a value. */
  ck_assert_int_eq(td_kv_get("a=x b=", "a", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "x");
  ck_assert_int_eq(td_kv_get("a=x b=", "b", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "");
}
END_TEST

START_TEST(test_not_found) {
  char v[8];

  strcpy(v, "keep");
  /* A key is a whole word: not the tail of another, not without '='. */
  ck_assert_int_eq(td_kv_get("substep=3 step", "step", v, sizeof(v)), TD_ENOENT);
  ck_assert_int_eq(td_kv_get("steps=3", "step", v, sizeof(v)), TD_ENOENT);
  ck_assert_int_eq(td_kv_get("", "step", v, sizeof(v)), TD_ENOENT);
  ck_assert_int_eq(td_kv_get("step", "step", v, sizeof(v)), TD_ENOENT);
  /* An empty key matches nothing (and must not loop forever). */
  ck_assert_int_eq(td_kv_get("=1 x", "", v, sizeof(v)), TD_ENOENT);
  ck_assert_int_eq(td_kv_get("a=1", "a", v, 0), TD_EINVAL);
  ck_assert_str_eq(v, "keep");
  /* The match after a failed one is found. */
  ck_assert_int_eq(td_kv_get("xstep=1 step=2", "step", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "2");
}
END_TEST

START_TEST(test_cut_to_fit) {
  char v[4];

  ck_assert_int_eq(td_kv_get("name=abcdefgh", "name", v, sizeof(v)), 0);
  ck_assert_str_eq(v, "abc");
  ck_assert_int_eq(td_kv_get("name=abcdefgh", "name", v, 1), 0);
  ck_assert_str_eq(v, "");
}
END_TEST

START_TEST(test_u64) {
  ck_assert_uint_eq(td_kv_u64("step=42", "step", 7), 42);
  ck_assert_uint_eq(td_kv_u64("step=18446744073709551615", "step", 7), UINT64_MAX);
  ck_assert_uint_eq(td_kv_u64("step=18446744073709551616", "step", 7), 7); /* range */
  ck_assert_uint_eq(td_kv_u64("step=4x", "step", 7), 7);
  ck_assert_uint_eq(td_kv_u64("step=", "step", 7), 7);
  ck_assert_uint_eq(td_kv_u64("step=0.5", "step", 7), 7);
  ck_assert_uint_eq(td_kv_u64("other=1", "step", 7), 7);
  /* Longer than the 31 characters a number may have: cut, so refused
   * only if the cut text is not a number. */
  ck_assert_uint_eq(td_kv_u64("step=00000000000000000000000000000000000001", "step", 7), 0);
}
END_TEST

START_TEST(test_f64) {
  ck_assert(td_kv_f64("loss=0.25", "loss", 1) == 0.25);
  ck_assert(td_kv_f64("loss=1e3 x", "loss", 1) == 1000.0);
  ck_assert(td_kv_f64("loss=2.5abc", "loss", 1) == 2.5); /* its start is a number */
  ck_assert(td_kv_f64("loss=abc", "loss", 1) == 1.0);
  ck_assert(td_kv_f64("loss=", "loss", 1) == 1.0);
  /* A diverged run reports its loss as nan: that is kept, not defaulted. */
  ck_assert(isnan(td_kv_f64("loss=nan", "loss", 1)));
  ck_assert(isinf(td_kv_f64("loss=inf", "loss", 1)));
}
END_TEST

int main(void) {
  Suite *s = suite_create("kvline");
  TCase *tc = tcase_create("kvline");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_get);
  tcase_add_test(tc, test_not_found);
  tcase_add_test(tc, test_cut_to_fit);
  tcase_add_test(tc, test_u64);
  tcase_add_test(tc, test_f64);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
