/* Learning-rate schedules (common/schedule.h): hand-computed values, the
 * parameter checks, and torch.optim.lr_scheduler's rates over 300 steps
 * (tests/reference/optim.bin, made by gen_optim.py). */
#include <check.h>
#include <math.h>
#include <string.h>

#include "error.h"
#include "refbin.h"
#include "schedule.h"

static void expect_lrs(const td_schedule *s, const double *want, size_t n) {
  char err[128];

  ck_assert_msg(td_schedule_check(s, err, sizeof(err)) == 0, "%s", err);
  for (size_t t = 0; t < n; t++)
    ck_assert_msg(fabs(td_schedule_lr(s, t) - want[t]) <= 1e-12,
                  "%s: lr(%zu) = %.15g, want %.15g", td_sched_kind_name(s->kind), t,
                  td_schedule_lr(s, t), want[t]);
}

START_TEST(test_by_hand) {
  const td_schedule constant = {.kind = TD_SCHED_CONSTANT, .lr = 0.3};
  const td_schedule step = {.kind = TD_SCHED_STEP, .lr = 1.0, .step_size = 2, .gamma = 0.5};
  const td_schedule cosine = {.kind = TD_SCHED_COSINE, .lr = 1.0, .t_max = 4};
  const td_schedule floor = {.kind = TD_SCHED_COSINE, .lr = 1.0, .t_max = 2, .eta_min = 0.2};
  const td_schedule warm = {.kind = TD_SCHED_CONSTANT, .lr = 1.0, .warmup_steps = 4,
                            .warmup_start = 0.25};
  const td_schedule warm_step = {.kind = TD_SCHED_STEP, .lr = 2.0, .step_size = 3,
                                 .gamma = 0.1, .warmup_steps = 2, .warmup_start = 0.5};
  const double c = (1.0 + cos(M_PI / 4)) / 2, c3 = (1.0 + cos(3 * M_PI / 4)) / 2;

  expect_lrs(&constant, (const double[]){0.3, 0.3, 0.3}, 3);
  expect_lrs(&step, (const double[]){1, 1, 0.5, 0.5, 0.25, 0.25, 0.125}, 7);
  /* periodic past T_max, as PyTorch's CosineAnnealingLR is */
  expect_lrs(&cosine, (const double[]){1, c, 0.5, c3, 0, c3, 0.5, c, 1}, 9);
  expect_lrs(&floor, (const double[]){1, 0.6, 0.2, 0.6, 1}, 5);
  /* warm-up from 0.25 lr over 4 steps, then the schedule from its start */
  expect_lrs(&warm, (const double[]){0.25, 0.4375, 0.625, 0.8125, 1, 1}, 6);
  expect_lrs(&warm_step, (const double[]){1, 1.5, 2, 2, 2, 0.2, 0.2, 0.2, 0.02}, 9);
}
END_TEST

START_TEST(test_check_refuses) {
  static const struct {
    td_schedule s;
    const char *says;
  } bad[] = {
      {{.kind = TD_SCHED_STEP, .lr = 0.1, .step_size = 0, .gamma = 0.5}, "step_size"},
      {{.kind = TD_SCHED_STEP, .lr = 0.1, .step_size = 3, .gamma = 0.0}, "gamma"},
      {{.kind = TD_SCHED_STEP, .lr = 0.1, .step_size = 3, .gamma = NAN}, "gamma"},
      {{.kind = TD_SCHED_COSINE, .lr = 0.1, .t_max = 0}, "t_max"},
      {{.kind = TD_SCHED_COSINE, .lr = 0.1, .t_max = 5, .eta_min = -1}, "eta_min"},
      {{.kind = TD_SCHED_CONSTANT, .lr = NAN}, "lr"},
      {{.kind = TD_SCHED_CONSTANT, .lr = -0.1}, "lr"},
      {{.kind = TD_SCHED_CONSTANT, .lr = INFINITY}, "lr"},
      {{.kind = TD_SCHED_CONSTANT, .lr = 0.1, .warmup_steps = 5, .warmup_start = 0}, "warmup"},
      {{.kind = TD_SCHED_CONSTANT, .lr = 0.1, .warmup_steps = 5, .warmup_start = 1.5},
       "warmup"},
      {{.kind = TD_SCHED__COUNT, .lr = 0.1}, "unknown schedule"},
  };
  char err[128];

  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    err[0] = '\0';
    ck_assert_int_eq(td_schedule_check(&bad[i].s, err, sizeof(err)), TD_EINVAL);
    ck_assert_msg(strstr(err, bad[i].says) != NULL, "case %zu: '%s' does not name %s", i, err,
                  bad[i].says);
  }
  /* a warm-up start factor is only read with warm-up steps */
  ck_assert_int_eq(td_schedule_check(&(td_schedule){.kind = TD_SCHED_CONSTANT, .lr = 0.1},
                                     NULL, 0), 0);
}
END_TEST

START_TEST(test_names) {
  td_sched_kind k;

  for (int i = 0; i < TD_SCHED__COUNT; i++) {
    ck_assert_int_eq(td_sched_kind_parse(td_sched_kind_name((td_sched_kind)i), &k), 0);
    ck_assert_int_eq(k, i);
  }
  ck_assert_str_eq(td_sched_kind_name(TD_SCHED_COSINE), "cosine");
  ck_assert_int_eq(td_sched_kind_parse("exponential", &k), TD_EINVAL);
  ck_assert_str_eq(td_sched_kind_name(TD_SCHED__COUNT), "?");
}
END_TEST

START_TEST(test_pytorch) {
  char names[16][32];
  size_t ncases;
  ref_file f;

  ref_open(&f, "optim.bin");
  ncases = ref_cases(&f, "sched/", names, 16);
  ck_assert_uint_ge(ncases, 8);
  for (size_t c = 0; c < ncases; c++) {
    char pre[48], err[128];
    const ref_tensor *p, *lr;
    td_schedule s;

    snprintf(pre, sizeof(pre), "sched/%s/", names[c]);
    p = ref_get(&f, pre, "params"); /* kind, lr, step_size, gamma, t_max, eta_min, warm-up */
    lr = ref_get(&f, pre, "lr");
    ck_assert_uint_eq(p->n, 8);
    ck_assert_uint_ge(lr->n, 300);
    /* the parameters are float32s exactly; the rates PyTorch's doubles, rounded once */
    s = (td_schedule){.kind = (td_sched_kind)p->data[0], .lr = p->data[1],
                      .step_size = (uint64_t)p->data[2], .gamma = p->data[3],
                      .t_max = (uint64_t)p->data[4], .eta_min = p->data[5],
                      .warmup_steps = (uint64_t)p->data[6], .warmup_start = p->data[7]};
    ck_assert_msg(td_schedule_check(&s, err, sizeof(err)) == 0, "%s: %s", names[c], err);
    for (size_t t = 0; t < lr->n; t++) {
      double got = td_schedule_lr(&s, t), want = lr->data[t];
      ck_assert_msg(fabs(got - want) <= 1e-6 * fabs(want) + 1e-12,
                    "%s: lr(%zu) = %.9g, PyTorch %.9g", names[c], t, got, want);
    }
  }
  ref_close(&f);
}
END_TEST

int main(void) {
  Suite *s = suite_create("schedule");
  TCase *tc = tcase_create("schedule");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_by_hand);
  tcase_add_test(tc, test_check_refuses);
  tcase_add_test(tc, test_names);
  tcase_add_test(tc, test_pytorch);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
