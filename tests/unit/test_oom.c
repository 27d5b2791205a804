/* Out of memory at run time: a step that fails anywhere (forward, backward,
 * optimiser, arena allocation) is discarded and redone after a re-plan, and
 * the run ends with the weights of an undisturbed one. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "jobspec.h"
#include "model.h"
#include "plan.h"
#include "util.h"

#define STEPS 4

static void small_spec(td_jobspec *s, td_opt_kind opt) {
  memset(s, 0, sizeof(*s));
  s->input_dims[0] = 13;
  s->input_dims[1] = 3;
  s->input_rank = 2;
  s->layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = 33};
  s->layers[1] = (td_layer){.type = TD_LAYER_RELU};
  s->layers[2] = (td_layer){.type = TD_LAYER_DENSE, .units = 17};
  s->layers[3] = (td_layer){.type = TD_LAYER_RELU};
  s->layers[4] = (td_layer){.type = TD_LAYER_DENSE, .units = 7};
  s->nlayers = 5;
  s->batch_size = 24;
  s->epochs = 1;
  s->seed = 3;
  s->norm_mean = 0.3f;
  s->norm_std = 0.4f;
  s->opt = opt == TD_OPT_ADAM
               ? (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-2f, .beta1 = 0.9f,
                                .beta2 = 0.999f, .eps = 1e-8f}
               : (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.1f, .momentum = 0.9f};
  s->precision = TD_PREC_FP32;
  s->min_micro_batch = 1;
  s->remedies[0] = TD_REMEDY_ACCUMULATE;
  s->nremedies = 1;
}

/* Step k's samples: the same whatever happened before. */
static void batch(int k, uint8_t *px, uint8_t *lb, uint32_t n, uint32_t in) {
  for (uint32_t i = 0; i < n * in; i++)
    px[i] = (uint8_t)((i + 977u * (uint32_t)k) * 2654435761u >> 11);
  for (uint32_t i = 0; i < n; i++)
    lb[i] = (uint8_t)((i * 5 + (uint32_t)k) % 7);
}

typedef struct seen {
  int ooms, replans;
  int phases[4]; /* forward, backward, optimizer, workspace */
  uint32_t last_micro;
} seen;

static const char *const phase_names[] = {"forward", "backward", "optimizer", "workspace"};

static void hook_oom(void *arg, const td_model_oom *o) {
  seen *s = arg;
  int known = 0;

  s->ooms++;
  for (int i = 0; i < 4; i++)
    if (strcmp(o->phase, phase_names[i]) == 0)
      s->phases[i]++, known = 1;
  ck_assert_msg(known, "unknown phase %s", o->phase);
}

static void hook_replan(void *arg, const td_plan *p) {
  seen *s = arg;

  s->replans++;
  s->last_micro = p->micro_batch;
}

typedef struct run_opts {
  uint64_t inject_at;   /* 0: none */
  int inject_step;      /* armed before this step */
  uint64_t lower_to;    /* 0: none; budget set before step lower_step */
  int lower_step;
} run_opts;

/* STEPS steps at the whole batch in a budget of exactly its plan; the
 * parameters at the end go to params (nparams floats, malloc'd). */
static void run(const td_jobspec *s, const run_opts *o, seen *sn, float **params,
                uint64_t *nparams) {
  uint32_t in = s->input_dims[0] * s->input_dims[1];
  const td_model_hooks hooks = {.oom = hook_oom, .replan = hook_replan, .arg = sn};
  uint8_t px[24 * 39], lb[24];
  td_backend *be;
  td_model *m;
  td_plan plan;
  td_step_stats st;
  char err[256];

  memset(sn, 0, sizeof(*sn));
  ck_assert_int_eq(td_plan_compute(s, s->batch_size, TD_PREC_FP32, 0, &plan), 0);
  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, s, s->batch_size, &m, err, sizeof(err)), 0);
  for (int k = 0; k < STEPS; k++) {
    if (o->inject_at && k == o->inject_step)
      td_backend_inject_oom(be, o->inject_at);
    if (o->lower_to && k == o->lower_step) {
      bool replanned;
      ck_assert_int_eq(td_model_set_budget(m, o->lower_to, &replanned), 0);
      ck_assert(replanned);
    }
    batch(k, px, lb, s->batch_size, in);
    ck_assert_msg(td_model_train_step_recover(m, px, lb, s->batch_size, &hooks, &st) == 0,
                  "step %d: %s", k, td_model_error(m));
    ck_assert_uint_eq(st.count, s->batch_size);
  }
  ck_assert_uint_eq(td_model_steps(m), STEPS);
  *nparams = td_model_nparams(m);
  *params = malloc(*nparams * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m, *params), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
}

static void assert_close(const float *a, const float *b, uint64_t n, double rel) {
  for (uint64_t i = 0; i < n; i++)
    ck_assert_msg(fabs((double)a[i] - b[i]) <= rel * fabs((double)b[i]) + 1e-7,
                  "param %llu: %.9g vs undisturbed %.9g", (unsigned long long)i, a[i], b[i]);
}

/* Every request of a step, in turn, fails once: each phase is hit, each
 * run recovers and ends with the undisturbed weights. */
static void inject_everywhere(td_opt_kind opt) {
  const run_opts none = {0};
  td_jobspec s;
  seen sn, total = {0};
  float *ref, *got;
  uint64_t n, n2;
  int recovered = 0;

  small_spec(&s, opt);
  run(&s, &none, &sn, &ref, &n);
  ck_assert_int_eq(sn.ooms, 0);
  for (uint64_t at = 1; at <= 40; at++) {
    run_opts o = {.inject_at = at, .inject_step = 2};
    run(&s, &o, &sn, &got, &n2);
    ck_assert_uint_eq(n, n2);
    assert_close(got, ref, n, 1e-5);
    ck_assert_int_le(sn.ooms, 1);
    ck_assert_int_eq(sn.replans, sn.ooms);
    if (sn.ooms == 1) {
      recovered++;
      /* one failure: the plan still fits, so the same micro-batch again */
      ck_assert_uint_eq(sn.last_micro, s.batch_size);
    }
    for (int i = 0; i < 4; i++)
      total.phases[i] += sn.phases[i];
    free(got);
  }
  ck_assert_int_gt(recovered, 10);
  ck_assert_int_gt(total.phases[0], 0);
  ck_assert_int_gt(total.phases[1], 0);
  ck_assert_int_gt(total.phases[2], 0);
  free(ref);
}

START_TEST(test_inject_each_phase_adam) { inject_everywhere(TD_OPT_ADAM); }
END_TEST

START_TEST(test_inject_each_phase_sgd) { inject_everywhere(TD_OPT_SGD); }
END_TEST

/* A failed optimiser update leaves the weights and the step count alone. */
START_TEST(test_failed_step_changes_nothing) {
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_plan plan;
  td_step_stats st;
  uint8_t px[24 * 39], lb[24];
  float before[4096], after[4096];
  char err[256];
  int failed = 0;

  small_spec(&s, TD_OPT_ADAM);
  ck_assert_int_eq(td_plan_compute(&s, 24, TD_PREC_FP32, 0, &plan), 0);
  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, 24, &m, err, sizeof(err)), 0);
  ck_assert_uint_le(td_model_nparams(m), 4096);
  batch(0, px, lb, 24, 39);
  for (uint64_t at = 1; at <= 40; at++) {
    ck_assert_int_eq(td_model_get_params(m, before), 0);
    td_backend_inject_oom(be, at);
    int rc = td_model_train_step(m, px, lb, 24, &st);
    td_backend_inject_oom(be, 0);
    if (rc == 0)
      continue;
    failed++;
    ck_assert_int_eq(rc, TD_EOOM);
    ck_assert_uint_eq(td_model_steps(m), at - failed);
    ck_assert_int_eq(td_model_get_params(m, after), 0);
    ck_assert_int_eq(memcmp(before, after, td_model_nparams(m) * sizeof(float)), 0);
    ck_assert_ptr_nonnull(strstr(td_model_error(m), "injected"));
  }
  ck_assert_int_gt(failed, 10);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* A budget lowered between steps: the model re-plans to a smaller
 * micro-batch (accumulating), fits the new budget to the byte, and ends
 * with the undisturbed weights within 1e-5. */
START_TEST(test_budget_lowered) {
  const run_opts none = {0};
  td_jobspec s;
  td_plan p5, p4;
  seen sn;
  float *ref, *got;
  uint64_t n, n2;

  small_spec(&s, TD_OPT_ADAM);
  run(&s, &none, &sn, &ref, &n);
  ck_assert_int_eq(td_plan_compute(&s, 5, TD_PREC_FP32, 0, &p5), 0);
  ck_assert_int_eq(td_plan_compute(&s, 6, TD_PREC_FP32, 0, &p4), 0);
  {
    /* between the plans at 5 and 6: re-plans to 5 (5 micro-batches) */
    run_opts o = {.lower_to = p5.total + (p4.total - p5.total) / 2, .lower_step = 1};
    run(&s, &o, &sn, &got, &n2);
    assert_close(got, ref, n, 1e-5);
    free(got);
  }
  free(ref);
}
END_TEST

/* A budget lowered, then raised: the model re-plans down, then back up to
 * the largest micro-batch the budget allows, never past the one it was
 * created at; the weights are those of an undisturbed run. */
START_TEST(test_budget_raised) {
  const run_opts none = {0};
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_plan plan, p8, p12, p13;
  td_step_stats st;
  td_mem_stats mem;
  uint8_t px[24 * 39], lb[24];
  char err[256];
  seen sn;
  float *ref, *got;
  uint64_t n;
  bool replanned;
  /* the budgets below: as created, lowered, raised to between the plans at
   * 12 and 13, raised far (back to the admitted 24 only) */
  const struct {
    bool replanned;
    uint32_t micro;
  } steps[STEPS] = {{false, 24}, {true, 8}, {true, 12}, {true, 24}};
  uint64_t budgets[STEPS];

  small_spec(&s, TD_OPT_ADAM);
  run(&s, &none, &sn, &ref, &n);
  ck_assert_int_eq(td_plan_compute(&s, 24, TD_PREC_FP32, 0, &plan), 0);
  ck_assert_int_eq(td_plan_compute(&s, 8, TD_PREC_FP32, 0, &p8), 0);
  ck_assert_int_eq(td_plan_compute(&s, 12, TD_PREC_FP32, 0, &p12), 0);
  ck_assert_int_eq(td_plan_compute(&s, 13, TD_PREC_FP32, 0, &p13), 0);
  budgets[0] = plan.total;
  budgets[1] = p8.total;
  budgets[2] = p12.total + (p13.total - p12.total) / 2;
  budgets[3] = plan.total * 4;
  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, 24, &m, err, sizeof(err)), 0);
  for (int k = 0; k < STEPS; k++) {
    ck_assert_int_eq(td_model_set_budget(m, budgets[k], &replanned), 0);
    ck_assert_msg(replanned == steps[k].replanned, "step %d", k);
    ck_assert_uint_eq(td_model_plan(m)->micro_batch, steps[k].micro);
    td_backend_mem(be, &mem);
    ck_assert_uint_eq(mem.used, td_model_plan(m)->total);
    batch(k, px, lb, 24, 39);
    ck_assert_msg(td_model_train_step(m, px, lb, 24, &st) == 0, "step %d: %s", k,
                  td_model_error(m));
  }
  /* at the admitted micro-batch a higher budget changes nothing */
  ck_assert_int_eq(td_model_set_budget(m, plan.total * 8, &replanned), 0);
  ck_assert(!replanned);
  got = malloc(n * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m, got), 0);
  assert_close(got, ref, n, 1e-5);
  free(got);
  free(ref);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

static int ooms_seen;

/* The first OOM arms another one in the redone step. */
static void hook_fail_again(void *arg, const td_model_oom *o) {
  (void)o;
  if (ooms_seen++ == 0)
    td_backend_inject_oom(*(td_backend **)arg, 10);
}

/* Raising the budget after an OOM re-planned the step: back up, and a
 * growth whose arenas do not allocate keeps the plan it had. */
START_TEST(test_raise_after_oom) {
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_plan plan;
  td_step_stats st;
  uint8_t px[24 * 39], lb[24];
  char err[256];
  const td_model_hooks hooks = {.oom = hook_fail_again, .arg = &be};
  bool replanned;

  small_spec(&s, TD_OPT_SGD);
  ck_assert_int_eq(td_plan_compute(&s, 24, TD_PREC_FP32, 0, &plan), 0);
  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, 24, &m, err, sizeof(err)), 0);
  /* fails twice in the step: the second re-plan halves the micro-batch */
  td_backend_inject_oom(be, 5);
  batch(0, px, lb, 24, 39);
  ck_assert_int_eq(td_model_train_step_recover(m, px, lb, 24, &hooks, &st), 0);
  ck_assert_int_eq(ooms_seen, 2);
  ck_assert_uint_eq(td_model_plan(m)->micro_batch, 12);
  /* the growth's first allocation fails: the old plan comes back */
  td_backend_inject_oom(be, 1);
  ck_assert_int_eq(td_model_set_budget(m, plan.total, &replanned), 0);
  ck_assert_uint_eq(td_model_plan(m)->micro_batch, 12);
  ck_assert_int_eq(td_model_train_step(m, px, lb, 24, &st), 0);
  /* then it grows */
  ck_assert_int_eq(td_model_set_budget(m, plan.total, &replanned), 0);
  ck_assert(replanned);
  ck_assert_uint_eq(td_model_plan(m)->micro_batch, 24);
  ck_assert_int_eq(td_model_train_step(m, px, lb, 24, &st), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* Re-planning itself runs out of memory (the workspace phase): the next
 * step re-plans again and goes on. */
START_TEST(test_replan_alloc_fails) {
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_plan plan, p8;
  td_step_stats st;
  uint8_t px[24 * 39], lb[24];
  char err[256];
  seen sn = {0};
  const td_model_hooks hooks = {.oom = hook_oom, .replan = hook_replan, .arg = &sn};
  td_mem_stats mem;
  bool replanned;

  small_spec(&s, TD_OPT_SGD);
  ck_assert_int_eq(td_plan_compute(&s, 24, TD_PREC_FP32, 0, &plan), 0);
  ck_assert_int_eq(td_plan_compute(&s, 8, TD_PREC_FP32, 0, &p8), 0);
  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, 24, &m, err, sizeof(err)), 0);
  td_backend_inject_oom(be, 1);
  ck_assert_int_eq(td_model_set_budget(m, p8.total, &replanned), TD_EOOM);
  ck_assert_str_eq(td_model_last_oom(m)->phase, "workspace");
  batch(0, px, lb, 24, 39);
  ck_assert_int_eq(td_model_train_step_recover(m, px, lb, 24, &hooks, &st), 0);
  ck_assert_int_eq(sn.phases[3], 1);
  ck_assert_uint_eq(sn.last_micro, 8);
  ck_assert_uint_eq(td_model_plan(m)->accumulation, 3);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.used, p8.total); /* exactly the new plan */
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* Below the smallest allowed micro-batch: TD_ENOFIT, weights untouched. */
START_TEST(test_below_minimum) {
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_plan plan, p8;
  char err[256];
  bool replanned;

  small_spec(&s, TD_OPT_SGD);
  s.min_micro_batch = 12;
  ck_assert_int_eq(td_plan_compute(&s, 24, TD_PREC_FP32, 0, &plan), 0);
  ck_assert_int_eq(td_plan_compute(&s, 8, TD_PREC_FP32, 0, &p8), 0);
  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, 24, &m, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_set_budget(m, p8.total, &replanned), TD_ENOFIT);
  ck_assert_ptr_nonnull(strstr(td_model_error(m), "smallest allowed micro-batch (12)"));
  /* without accumulation the whole batch is the minimum */
  s.remedies[0] = TD_REMEDY_SHRINK;
  ck_assert_uint_eq(td_jobspec_min_micro_batch(&s), 24);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

static Suite *oom_suite(void) {
  Suite *s = suite_create("oom");
  TCase *tc = tcase_create("oom");

  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_inject_each_phase_adam);
  tcase_add_test(tc, test_inject_each_phase_sgd);
  tcase_add_test(tc, test_failed_step_changes_nothing);
  tcase_add_test(tc, test_budget_lowered);
  tcase_add_test(tc, test_budget_raised);
  tcase_add_test(tc, test_raise_after_oom);
  tcase_add_test(tc, test_replan_alloc_fails);
  tcase_add_test(tc, test_below_minimum);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(oom_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
