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
static void batch(int k, uint8_t *px, int32_t *lb, uint32_t n, uint32_t in) {
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
  uint8_t px[24 * 39];
  int32_t lb[24];
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
  uint8_t px[24 * 39];
  int32_t lb[24];
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
  uint8_t px[24 * 39];
  int32_t lb[24];
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
  uint8_t px[24 * 39];
  int32_t lb[24];
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
  uint8_t px[24 * 39];
  int32_t lb[24];
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

/* The shrink remedy: a job of batch 24 that may not accumulate below its
 * whole batch (min_micro_batch 24), with or without shrink. */
static void shrink_spec(td_jobspec *s, td_opt_kind opt, bool shrink) {
  small_spec(s, opt);
  s->min_micro_batch = s->batch_size;
  s->remedies[1] = TD_REMEDY_SHRINK;
  s->nremedies = shrink ? 2 : 1;
}

static uint64_t plan_at(const td_jobspec *s, uint32_t micro) {
  td_plan p;

  ck_assert_int_eq(td_plan_compute(s, micro, TD_PREC_FP32, 0, &p), 0);
  return p.total;
}

/* A model of s admitted at its whole batch on a device of exactly that. */
static td_model *admitted(const td_jobspec *s, td_backend **be) {
  char err[256];
  td_model *m;

  ck_assert_int_eq(td_backend_create("cpu0", plan_at(s, s->batch_size), be, err, sizeof(err)),
                   0);
  ck_assert_msg(td_model_create(*be, s, s->batch_size, &m, err, sizeof(err)) == 0, "%s", err);
  return m;
}

/* What shrinking to k updates should give, trained by hand: batches 0..n-1
 * of 24, each as k steps of its consecutive 24/k samples at lr/k. */
static float *by_hand(td_opt_kind opt, int k, int n) {
  uint32_t part = 24 / (uint32_t)k;
  uint8_t px[24 * 39];
  int32_t lb[24];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  char err[256];
  float *params;

  small_spec(&s, opt);
  s.opt.lr /= (float)k;
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, part, &m, err, sizeof(err)), 0);
  for (int b = 0; b < n; b++) {
    batch(b, px, lb, 24, 39);
    for (int j = 0; j < k; j++)
      ck_assert_int_eq(td_model_train_step(m, px + (size_t)j * part * 39, lb + j * part, part,
                                           &st), 0);
  }
  ck_assert_uint_eq(td_model_steps(m), (uint64_t)k * (uint64_t)n);
  params = malloc(td_model_nparams(m) * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m, params), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
  return params;
}

/* STEPS batches through td_model_train_step_recover on a device shrunk to
 * budget; the first step is armed with an OOM at inject_at, the second at
 * again_at (0: none).  Returns the parameters (malloc'd); the model and
 * its backend go to keep and keep_be, or are destroyed if keep is NULL. */
static float *run_shrink(const td_jobspec *s, uint64_t budget, uint64_t inject_at,
                         uint64_t again_at, seen *sn, td_model **keep, td_backend **keep_be) {
  const td_model_hooks hooks = {.oom = hook_oom, .replan = hook_replan, .arg = sn};
  uint8_t px[24 * 39];
  int32_t lb[24];
  td_backend *be;
  td_model *m = admitted(s, &be);
  td_step_stats st;
  float *params;

  memset(sn, 0, sizeof(*sn));
  td_backend_set_budget(be, budget);
  for (int k = 0; k < STEPS; k++) {
    if (k < 2)
      td_backend_inject_oom(be, k == 0 ? inject_at : again_at);
    batch(k, px, lb, 24, 39);
    ck_assert_msg(td_model_train_step_recover(m, px, lb, 24, &hooks, &st) == 0, "step %d: %s",
                  k, td_model_error(m));
    ck_assert_uint_eq(st.count, 24);
  }
  params = malloc(td_model_nparams(m) * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m, params), 0);
  if (keep != NULL) {
    *keep = m;
    *keep_be = be;
  } else {
    td_model_destroy(m);
    td_backend_destroy(be);
  }
  return params;
}

/* Out of memory at the step with room for half the batch only: accumulation
 * may not go below 24, so each batch becomes 2 updates of 12 at lr/2,
 * exactly the steps a hand-made run of the halves takes. */
static void shrink_halves(td_opt_kind opt) {
  td_jobspec s;
  seen sn;
  td_model *m;
  td_backend *be;
  td_mem_stats mem;
  float *ref = by_hand(opt, 2, STEPS), *got;

  shrink_spec(&s, opt, true);
  got = run_shrink(&s, plan_at(&s, 12), 3, 0, &sn, &m, &be);
  ck_assert_int_eq(sn.ooms, 1);
  ck_assert_int_eq(sn.replans, 1);
  ck_assert_uint_eq(sn.last_micro, 12);
  ck_assert_uint_eq(td_model_plan(m)->accumulation, 1);
  ck_assert_uint_eq(td_model_effective_batch(m), 12);
  ck_assert_uint_eq(td_model_steps(m), 2 * STEPS);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.used, plan_at(&s, 12));
  assert_close(got, ref, td_model_nparams(m), 1e-6);
  free(got);
  free(ref);
  td_model_destroy(m);
  td_backend_destroy(be);
}

START_TEST(test_shrink_halves_sgd) { shrink_halves(TD_OPT_SGD); }
END_TEST

START_TEST(test_shrink_halves_adam) { shrink_halves(TD_OPT_ADAM); }
END_TEST

/* Without shrink the same job cannot go on: TD_ENOFIT, the weights and the
 * step count as before. */
START_TEST(test_no_shrink_enofit) {
  const td_model_hooks hooks = {0};
  uint8_t px[24 * 39];
  int32_t lb[24];
  float before[4096], after[4096];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  bool replanned;

  shrink_spec(&s, TD_OPT_SGD, false);
  m = admitted(&s, &be);
  ck_assert_int_le(td_model_nparams(m), 4096);
  ck_assert_int_eq(td_model_set_budget(m, plan_at(&s, 12), &replanned), TD_ENOFIT);
  ck_assert_ptr_nonnull(strstr(td_model_error(m), "smallest allowed micro-batch (24)"));
  ck_assert_uint_eq(td_model_effective_batch(m), 24);
  ck_assert_int_eq(td_model_get_params(m, before), 0);
  td_backend_inject_oom(be, 3);
  batch(0, px, lb, 24, 39);
  ck_assert_int_eq(td_model_train_step_recover(m, px, lb, 24, &hooks, &st), TD_ENOFIT);
  ck_assert_uint_eq(td_model_steps(m), 0);
  ck_assert_int_eq(td_model_get_params(m, after), 0);
  ck_assert_int_eq(memcmp(before, after, td_model_nparams(m) * sizeof(float)), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* Failed requests of one update at micro-batch 12, counted by failing each. */
static int requests_per_update(void) {
  uint8_t px[24 * 39];
  int32_t lb[24];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  char err[256];
  int n = 0;

  small_spec(&s, TD_OPT_SGD);
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, 12, &m, err, sizeof(err)), 0);
  batch(0, px, lb, 24, 39);
  for (uint64_t at = 1; at <= 200; at++) {
    td_backend_inject_oom(be, at);
    n += td_model_train_step(m, px, lb, 12, &st) == TD_EOOM;
    td_backend_inject_oom(be, 0);
  }
  td_model_destroy(m);
  td_backend_destroy(be);
  return n;
}

/* A shrunk step that fails in any request of either update leaves the
 * whole state and the step count as they were. */
START_TEST(test_shrink_step_atomic) {
  const uint32_t floats_max = 16384;
  uint8_t px[24 * 39];
  int32_t lb[24];
  float *before = malloc(floats_max * sizeof(float)), *after = malloc(floats_max * sizeof(float));
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  bool replanned;
  int failed = 0, per_update = requests_per_update();

  ck_assert_int_gt(per_update, 10);
  shrink_spec(&s, TD_OPT_ADAM, true);
  m = admitted(&s, &be);
  ck_assert_uint_le(td_model_state_floats(m), floats_max);
  ck_assert_int_eq(td_model_set_budget(m, plan_at(&s, 12), &replanned), 0);
  ck_assert(replanned);
  ck_assert_uint_eq(td_model_effective_batch(m), 12);
  batch(0, px, lb, 24, 39);
  for (uint64_t at = 1; at <= 3 * (uint64_t)per_update; at++) {
    uint64_t steps = td_model_steps(m);
    int rc;

    ck_assert_int_eq(td_model_get_state(m, before), 0);
    td_backend_inject_oom(be, at);
    rc = td_model_train_step(m, px, lb, 24, &st);
    td_backend_inject_oom(be, 0);
    if (rc == 0) {
      ck_assert_uint_eq(td_model_steps(m), steps + 2);
      continue;
    }
    failed++;
    ck_assert_int_eq(rc, TD_EOOM);
    ck_assert_uint_eq(td_model_steps(m), steps);
    ck_assert_int_eq(td_model_get_state(m, after), 0);
    ck_assert_int_eq(memcmp(before, after, td_model_state_floats(m) * sizeof(float)), 0);
  }
  /* each request of both updates failed once */
  ck_assert_int_eq(failed, 2 * per_update);
  td_model_destroy(m);
  td_backend_destroy(be);
  free(before);
  free(after);
}
END_TEST

/* An OOM in the second update of a shrunk step: the step is redone from
 * its start, and the run ends as the hand-made one. */
START_TEST(test_shrink_redo) {
  const int per_update = requests_per_update();
  float *ref = by_hand(TD_OPT_ADAM, 2, STEPS), *got;
  td_jobspec s;
  td_layout lay;
  seen sn;

  shrink_spec(&s, TD_OPT_ADAM, true);
  ck_assert_int_eq(td_plan_layout(&s, 24, &lay), 0);
  for (int at = per_update + 1; at <= 2 * per_update; at += 3) {
    got = run_shrink(&s, plan_at(&s, 12), 1, (uint64_t)at, &sn, NULL, NULL);
    ck_assert_int_eq(sn.ooms, 2);
    ck_assert_int_eq(sn.replans, 2);
    ck_assert_uint_eq(sn.last_micro, 12);
    assert_close(got, ref, lay.nparams, 1e-6);
    free(got);
  }
  free(ref);
}
END_TEST

/* The effective batch follows the budget: the fewest updates whose
 * micro-batch (a divisor of 24) fits, nothing below micro-batch 1, and back
 * to the whole batch when the budget comes back. */
START_TEST(test_shrink_follows_budget) {
  td_jobspec s;
  td_backend *be;
  td_model *m;
  bool replanned;

  shrink_spec(&s, TD_OPT_SGD, true);
  {
    const struct {
      uint64_t budget;
      int rc;
      uint32_t effective;
    } steps[] = {
        {plan_at(&s, 10), 0, 8},            /* 24 / 3 */
        {plan_at(&s, 7), 0, 6},             /* 24 / 4 */
        {plan_at(&s, 5), 0, 4},             /* 24 / 6, not 24 / 5 */
        {plan_at(&s, 1) - 1, TD_ENOFIT, 4}, /* as it was */
        {plan_at(&s, 24), 0, 24},
    };
    uint8_t px[24 * 39];
  int32_t lb[24];
    td_step_stats st;

    m = admitted(&s, &be);
    batch(0, px, lb, 24, 39);
    for (size_t k = 0; k < TD_ARRAY_SIZE(steps); k++) {
      uint64_t steps_before = td_model_steps(m);

      ck_assert_int_eq(td_model_set_budget(m, steps[k].budget, &replanned), steps[k].rc);
      ck_assert_uint_eq(td_model_effective_batch(m), steps[k].effective);
      ck_assert_uint_eq(td_model_plan(m)->micro_batch, steps[k].effective);
      ck_assert_uint_eq(td_model_plan(m)->accumulation, 1);
      if (steps[k].rc == TD_ENOFIT) {
        ck_assert_ptr_nonnull(strstr(td_model_error(m), "micro-batch (1, shrunk)"));
        continue;
      }
      /* a batch is 24 / effective updates */
      ck_assert_int_eq(td_model_train_step(m, px, lb, 24, &st), 0);
      ck_assert_uint_eq(td_model_steps(m) - steps_before, 24 / steps[k].effective);
    }
  }
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
  tcase_add_test(tc, test_shrink_halves_sgd);
  tcase_add_test(tc, test_shrink_halves_adam);
  tcase_add_test(tc, test_no_shrink_enofit);
  tcase_add_test(tc, test_shrink_step_atomic);
  tcase_add_test(tc, test_shrink_redo);
  tcase_add_test(tc, test_shrink_follows_budget);
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
