/* The training engine: micro-batch invariance with conv and dropout,
 * recomputation that changes no bit, the fp16 loss scaler skipping an
 * overflowing step, clipping and schedules, exact resumption from the
 * state, the job's remedies in order, the saved file's names, freezing and
 * loading a model file as the initial weights. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "backend_impl.h"
#include "error.h"
#include "jobspec.h"
#include "model.h"
#include "plan.h"
#include "safetensors.h"
#include "util.h"

#define B 16

/* 1x8x8 -> conv 4 -> relu -> maxpool -> flatten 64 -> dense 16 -> gelu ->
 * dropout -> dense 4, SGD with momentum (Adam would magnify rounding). */
static void conv_spec(td_jobspec *s) {
  static const td_layer layers[] = {
      {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_MAXPOOL2D, .kernel = 2, .stride = 2},
      {.type = TD_LAYER_FLATTEN},
      {.type = TD_LAYER_DENSE, .units = 16},
      {.type = TD_LAYER_GELU},
      {.type = TD_LAYER_DROPOUT, .p = 0.3f},
      {.type = TD_LAYER_DENSE, .units = 4},
  };

  memset(s, 0, sizeof(*s));
  snprintf(s->name, sizeof(s->name), "model-test");
  s->input_rank = 3;
  s->input_dims[0] = 1;
  s->input_dims[1] = s->input_dims[2] = 8;
  memcpy(s->layers, layers, sizeof(layers));
  s->nlayers = (int)TD_ARRAY_SIZE(layers);
  s->batch_size = B;
  s->epochs = 1;
  s->seed = 11;
  s->norm_mean = 0.4f;
  s->norm_std = 0.3f;
  s->opt = (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.05f, .momentum = 0.9f};
  s->schedule = (td_schedule){.kind = TD_SCHED_CONSTANT};
  s->precision = TD_PREC_FP32;
  s->loss_scale = td_lossscale_defaults();
  s->loss_scale.enabled = false;
  s->min_micro_batch = 1;
  s->remedies[0] = TD_REMEDY_ACCUMULATE;
  s->nremedies = 1;
}

/* conv_spec with BatchNorm after the conv and LayerNorm in the head. */
static void norm_spec(td_jobspec *s) {
  conv_spec(s);
  memmove(&s->layers[2], &s->layers[1], sizeof(td_layer) * 7);
  s->layers[1] = (td_layer){.type = TD_LAYER_BATCHNORM2D, .eps = 1e-5f, .momentum = 0.1f};
  s->nlayers++;
  memmove(&s->layers[7], &s->layers[6], sizeof(td_layer) * 3);
  s->layers[6] = (td_layer){.type = TD_LAYER_LAYERNORM, .eps = 1e-5f};
  s->nlayers++;
  s->opt = (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f,
                          .eps = 1e-8f};
}

/* A graph: a residual conv block (conv bn relu conv bn, added to the
 * block's input), and a head that concatenates the flattened map with a
 * dense layer of it.  Some layers named, the rest by index. */
static void graph_spec(td_jobspec *s) {
  static const td_layer layers[] = {
      {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1,
       .name = "stem"},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_BATCHNORM2D, .eps = 1e-5f, .momentum = 0.1f, .name = "bn"},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_ADD, .inputs = {2, 6}, .ninputs = 2, .name = "res"},
      {.type = TD_LAYER_MAXPOOL2D, .kernel = 2, .stride = 2},
      {.type = TD_LAYER_FLATTEN, .name = "flat"},
      {.type = TD_LAYER_DENSE, .units = 16, .name = "hidden"},
      {.type = TD_LAYER_GELU},
      {.type = TD_LAYER_CONCAT, .inputs = {9, 11}, .ninputs = 2},
      {.type = TD_LAYER_DENSE, .units = 4, .name = "head"},
  };

  conv_spec(s);
  memcpy(s->layers, layers, sizeof(layers));
  s->nlayers = (int)TD_ARRAY_SIZE(layers);
}

/* Step k's samples: the same whatever happened before. */
static void batch(int k, uint8_t *px, int32_t *lb, const td_jobspec *s) {
  uint32_t in = (uint32_t)td_jobspec_input_elems(s), classes = td_jobspec_classes(s);

  for (uint32_t i = 0; i < s->batch_size * in; i++)
    px[i] = (uint8_t)((i + 977u * (uint32_t)k) * 2654435761u >> 13);
  for (uint32_t i = 0; i < s->batch_size; i++)
    lb[i] = (uint8_t)((i * 5 + (uint32_t)k) % classes);
}

static td_model *make(const td_jobspec *s, uint32_t micro, td_backend **be) {
  char err[256];
  td_model *m = NULL;

  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, be, NULL, 0), 0);
  ck_assert_msg(td_model_create(*be, s, micro, &m, err, sizeof(err)) == 0, "%s", err);
  return m;
}

static void drop(td_model *m, td_backend *be) {
  td_model_destroy(m);
  td_backend_destroy(be);
}

/* steps training steps at micro-batch micro; the weights, malloc'd. */
static float *train(const td_jobspec *s, uint32_t micro, int steps, uint64_t *n) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_backend *be;
  td_model *m = make(s, micro, &be);
  td_step_stats st;
  float *w;

  for (int k = 0; k < steps; k++) {
    batch(k, px, lb, s);
    ck_assert_msg(td_model_train_step(m, px, lb, B, &st) == 0, "%s", td_model_error(m));
  }
  *n = td_model_nparams(m);
  w = malloc(*n * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m, w), 0);
  drop(m, be);
  return w;
}

static void assert_close(const float *a, const float *b, uint64_t n, double rel) {
  for (uint64_t i = 0; i < n; i++)
    ck_assert_msg(fabs((double)a[i] - b[i]) <= rel * fabs((double)b[i]) + 1e-7,
                  "param %llu: %.9g vs %.9g", (unsigned long long)i, a[i], b[i]);
}

/* 1 x B, 2 x B/2 and 8 x B/8: the same weights after 100 steps. */
START_TEST(test_micro_batch_invariance) {
  td_jobspec s;
  uint64_t n, n2, n8;
  float *w1, *w2, *w8;

  conv_spec(&s);
  w1 = train(&s, B, 100, &n);
  w2 = train(&s, B / 2, 100, &n2);
  w8 = train(&s, B / 8, 100, &n8);
  ck_assert_uint_eq(n, n2);
  ck_assert_uint_eq(n, n8);
  assert_close(w2, w1, n, 1e-5);
  assert_close(w8, w1, n, 1e-5);
  /* and training moved them: the comparison means something */
  {
    td_backend *be;
    td_model *m = make(&s, B, &be);
    float *w0 = malloc(n * sizeof(float));
    double moved = 0;

    ck_assert_int_eq(td_model_get_params(m, w0), 0);
    for (uint64_t i = 0; i < n; i++)
      moved += fabs((double)w0[i] - w1[i]);
    ck_assert_msg(moved > 0.1 * (double)n / 100, "moved %g", moved);
    free(w0);
    drop(m, be);
  }
  free(w1);
  free(w2);
  free(w8);
}
END_TEST

/* BatchNorm cannot be invariant: each micro-batch has its own statistics,
 * and the plan says so. */
/* Samples of another stored type: float32 values x/255 with scale 1 train
 * to the weights of the uint8 pixels x with scale 1/255. */
START_TEST(test_float32_samples) {
  enum { STEPS = 20 };
  uint8_t px[B * 64];
  int32_t lb[B];
  float fx[B * 64];
  td_jobspec s;
  td_backend *be[2];
  td_model *m[2];
  td_step_stats st[2];
  float *w[2];
  uint64_t n;

  conv_spec(&s);
  m[0] = make(&s, B / 2, &be[0]);
  s.sample_dtype = TD_DTYPE_F32;
  m[1] = make(&s, B / 2, &be[1]);
  ck_assert_uint_eq(td_model_plan(m[1])->staging - td_model_plan(m[0])->staging,
                    (uint64_t)3 * (B / 2) * 64);
  for (int k = 0; k < STEPS; k++) {
    batch(k, px, lb, &s);
    for (int i = 0; i < B * 64; i++)
      fx[i] = (float)px[i] / 255.0f;
    ck_assert_msg(td_model_train_step(m[0], px, lb, B, &st[0]) == 0, "%s",
                  td_model_error(m[0]));
    ck_assert_msg(td_model_train_step(m[1], fx, lb, B, &st[1]) == 0, "%s",
                  td_model_error(m[1]));
    ck_assert_double_eq_tol(st[0].loss_sum, st[1].loss_sum, 1e-4);
  }
  n = td_model_nparams(m[0]);
  w[0] = malloc(n * sizeof(float));
  w[1] = malloc(n * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m[0], w[0]), 0);
  ck_assert_int_eq(td_model_get_params(m[1], w[1]), 0);
  for (uint64_t i = 0; i < n; i++)
    ck_assert_msg(fabs((double)w[0][i] - w[1][i]) <= 1e-6, "param %llu: %.9g vs %.9g",
                  (unsigned long long)i, w[0][i], w[1][i]);
  free(w[0]);
  free(w[1]);
  drop(m[0], be[0]);
  drop(m[1], be[1]);
}
END_TEST

START_TEST(test_batchnorm_flagged) {
  td_jobspec s;
  td_plan p;
  uint64_t n;
  float *w1, *w4;
  double diff = 0;

  norm_spec(&s);
  ck_assert_int_eq(td_plan_compute(&s, 4, TD_PREC_FP32, 0, &p), 0);
  ck_assert(p.batch_dependent);
  conv_spec(&s);
  ck_assert_int_eq(td_plan_compute(&s, 4, TD_PREC_FP32, 0, &p), 0);
  ck_assert(!p.batch_dependent);
  norm_spec(&s);
  w1 = train(&s, B, 3, &n);
  w4 = train(&s, 4, 3, &n);
  for (uint64_t i = 0; i < n; i++)
    diff += fabs((double)w1[i] - w4[i]);
  ck_assert_msg(diff > 1e-4, "diff %g", diff);
  free(w1);
  free(w4);
}
END_TEST

/* Gradients with and without recomputation: the same bits, at several
 * micro-batches and precisions; and BatchNorm's running statistics are
 * moved once per micro-batch, not again by the recomputation. */
START_TEST(test_recompute_bitwise) {
  static const td_precision precs[] = {TD_PREC_FP32, TD_PREC_BF16};
  uint8_t px[B * 64];
  int32_t lb[B];

  for (size_t pi = 0; pi < TD_ARRAY_SIZE(precs); pi++) {
    for (uint32_t micro = B; micro >= 4; micro /= 2) {
      td_jobspec s;
      float *g[2], *st[2];
      uint64_t ng = 0, ns = 0;

      norm_spec(&s);
      s.precision = precs[pi];
      batch(3, px, lb, &s);
      for (int rec = 0; rec < 2; rec++) {
        td_backend *be;
        td_model *m;
        td_step_stats stats;

        s.recompute = rec;
        m = make(&s, micro, &be);
        ck_assert_int_eq(td_model_plan(m)->recompute, rec);
        ng = td_model_nparams(m);
        ns = td_model_state_floats(m);
        g[rec] = malloc(ng * sizeof(float));
        st[rec] = malloc(ns * sizeof(float));
        ck_assert_int_eq(td_model_train_step(m, px, lb, B, &stats), 0);
        ck_assert_int_eq(td_model_backward(m, px, lb, B, &stats), 0);
        ck_assert_int_eq(td_model_get_grads(m, g[rec]), 0);
        ck_assert_int_eq(td_model_get_state(m, st[rec]), 0);
        drop(m, be);
      }
      ck_assert_msg(memcmp(g[0], g[1], ng * sizeof(float)) == 0,
                    "gradients differ with recomputation (precision %d, micro-batch %u)",
                    precs[pi], micro);
      ck_assert_msg(memcmp(st[0], st[1], ns * sizeof(float)) == 0,
                    "state differs with recomputation (precision %d, micro-batch %u)",
                    precs[pi], micro);
      for (int k = 0; k < 2; k++) {
        free(g[k]);
        free(st[k]);
      }
    }
  }
}
END_TEST

/* fp16: a loss scale that overflows skips the step (weights and optimiser
 * state untouched) and halves the scale; good steps grow it again. */
START_TEST(test_fp16_overflow_skips) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_model_progress pr;
  td_step_stats st;
  float *before, *after;
  uint64_t ns;

  conv_spec(&s);
  s.opt = (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f,
                         .eps = 1e-8f};
  s.precision = TD_PREC_FP16;
  s.loss_scale.enabled = true;
  s.loss_scale.init_scale = 1e30f; /* the scaled gradients are past fp16's 65504 */
  s.loss_scale.growth_interval = 2;
  m = make(&s, B, &be);
  ns = td_model_state_floats(m);
  before = malloc(ns * sizeof(float));
  after = malloc(ns * sizeof(float));
  ck_assert_int_eq(td_model_get_state(m, before), 0);
  batch(0, px, lb, &s);
  ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  ck_assert(isfinite(st.loss_sum));
  ck_assert_int_eq(td_model_get_state(m, after), 0);
  ck_assert_msg(memcmp(before, after, ns * sizeof(float)) == 0, "a skipped step moved the state");
  td_model_get_progress(m, &pr);
  ck_assert_uint_eq(pr.steps, 1);
  ck_assert_uint_eq(pr.skipped, 1);
  ck_assert_float_eq(pr.loss_scale, 5e29f);
  /* until the scale fits fp16, every step is skipped; then they are taken */
  for (int k = 1; k < 120; k++) {
    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  }
  td_model_get_progress(m, &pr);
  ck_assert_uint_eq(pr.steps, 120);
  ck_assert_uint_gt(pr.skipped, 50);
  ck_assert_uint_lt(pr.skipped, 119);
  ck_assert_float_lt(pr.loss_scale, 1e7f);
  ck_assert_int_eq(td_model_get_state(m, after), 0);
  ck_assert_msg(memcmp(before, after, ns * sizeof(float)) != 0, "no step was taken");
  free(before);
  free(after);
  drop(m, be);
}
END_TEST

/* Clipping bounds the update: one plain SGD step moves the weights by lr
 * times the clipped norm.  A step schedule halves the rate each step. */
START_TEST(test_clip_and_schedule) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  float *p0, *p1, *g;
  uint64_t n;

  conv_spec(&s);
  s.layers[6].p = 0.0f; /* the gradients of backward and of the step must match */
  s.opt = (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.5f};
  s.clip_grad_norm = 0.01f;
  s.schedule = (td_schedule){.kind = TD_SCHED_STEP, .step_size = 1, .gamma = 0.5};
  m = make(&s, B, &be);
  n = td_model_nparams(m);
  p0 = malloc(n * sizeof(float));
  p1 = malloc(n * sizeof(float));
  g = malloc(n * sizeof(float));
  for (int k = 0; k < 2; k++) {
    double norm = 0, moved = 0, gnorm = 0;

    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_get_params(m, p0), 0);
    ck_assert_int_eq(td_model_backward(m, px, lb, B, &st), 0);
    ck_assert_int_eq(td_model_get_grads(m, g), 0);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
    ck_assert_int_eq(td_model_get_params(m, p1), 0);
    for (uint64_t i = 0; i < n; i++) {
      moved += ((double)p1[i] - p0[i]) * ((double)p1[i] - p0[i]);
      gnorm += (double)g[i] * g[i];
    }
    norm = sqrt(moved);
    ck_assert_msg(sqrt(gnorm) > 0.1, "gradient norm %g: clipping would not show", sqrt(gnorm));
    /* lr(k) = 0.5 * 0.5^k, times the clipped norm 0.01 */
    ck_assert_double_eq_tol(norm, 0.5 * pow(0.5, k) * 0.01, 1e-5);
  }
  free(p0);
  free(p1);
  free(g);
  drop(m, be);
}
END_TEST

/* Stop after some steps, resume a new model from the state and progress:
 * the next steps give exactly what an unstopped run gives (BatchNorm,
 * LayerNorm, dropout, Adam, fp16 loss scaling). */
START_TEST(test_resume_exact) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_jobspec s;
  td_backend *be, *be2;
  td_model *m, *r;
  td_model_progress pr, pr2;
  td_step_stats st;
  float *state, *a, *b;
  uint64_t ns;

  norm_spec(&s);
  s.precision = TD_PREC_FP16;
  s.loss_scale.enabled = true;
  s.loss_scale.init_scale = 1e6f; /* a few skips, then growth */
  s.loss_scale.growth_interval = 3;
  m = make(&s, 8, &be);
  ns = td_model_state_floats(m);
  state = malloc(ns * sizeof(float));
  a = malloc(ns * sizeof(float));
  b = malloc(ns * sizeof(float));
  for (int k = 0; k < 6; k++) {
    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  }
  ck_assert_int_eq(td_model_get_state(m, state), 0);
  td_model_get_progress(m, &pr);
  ck_assert_uint_gt(pr.skipped, 0);
  r = make(&s, 8, &be2);
  ck_assert_uint_eq(td_model_state_floats(r), ns);
  ck_assert_int_eq(td_model_set_state(r, state, ns), 0);
  ck_assert_int_eq(td_model_set_progress(r, &pr), 0);
  ck_assert_int_eq(td_model_set_state(r, state, ns - 1), TD_EINVAL);
  for (int k = 6; k < 12; k++) {
    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
    ck_assert_int_eq(td_model_train_step(r, px, lb, B, &st), 0);
  }
  td_model_get_progress(m, &pr);
  td_model_get_progress(r, &pr2);
  ck_assert_uint_eq(pr.steps, pr2.steps);
  ck_assert_uint_eq(pr.skipped, pr2.skipped);
  ck_assert_float_eq(pr.loss_scale, pr2.loss_scale);
  ck_assert_uint_eq(pr.good_steps, pr2.good_steps);
  ck_assert_int_eq(td_model_get_state(m, a), 0);
  ck_assert_int_eq(td_model_get_state(r, b), 0);
  ck_assert_msg(memcmp(a, b, ns * sizeof(float)) == 0, "the resumed run differs");
  drop(r, be2);
  drop(m, be);

  /* the state does not depend on the micro-batch (AdamW, no BatchNorm) */
  conv_spec(&s);
  s.opt.kind = TD_OPT_ADAMW;
  s.opt.lr = 1e-2f;
  s.opt.beta1 = 0.9f;
  s.opt.beta2 = 0.999f;
  s.opt.eps = 1e-8f;
  s.opt.momentum = 0.0f;
  s.opt.weight_decay = 0.01f;
  m = make(&s, 8, &be);
  ns = td_model_state_floats(m);
  for (int k = 0; k < 5; k++) {
    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  }
  ck_assert_int_eq(td_model_get_state(m, state), 0);
  td_model_get_progress(m, &pr);
  r = make(&s, 4, &be2);
  ck_assert_uint_eq(td_model_state_floats(r), ns);
  ck_assert_int_eq(td_model_set_state(r, state, ns), 0);
  ck_assert_int_eq(td_model_set_progress(r, &pr), 0);
  for (int k = 5; k < 10; k++) {
    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
    ck_assert_int_eq(td_model_train_step(r, px, lb, B, &st), 0);
  }
  ck_assert_int_eq(td_model_get_state(m, a), 0);
  ck_assert_int_eq(td_model_get_state(r, b), 0);
  assert_close(b, a, ns, 1e-5);
  free(state);
  free(a);
  free(b);
  drop(r, be2);
  drop(m, be);
}
END_TEST

/* Evaluation: dropout is the identity and BatchNorm uses its running
 * statistics, so two evaluations agree and do not move the state. */
START_TEST(test_eval_mode) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats e1, e2, st;
  float *before, *after;
  uint64_t ns;

  norm_spec(&s);
  s.layers[8].p = 0.9f;
  m = make(&s, 8, &be);
  batch(0, px, lb, &s);
  ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  ns = td_model_state_floats(m);
  before = malloc(ns * sizeof(float));
  after = malloc(ns * sizeof(float));
  ck_assert_int_eq(td_model_get_state(m, before), 0);
  ck_assert_int_eq(td_model_eval(m, px, lb, B, &e1), 0);
  ck_assert_int_eq(td_model_eval(m, px, lb, 5, &e2), 0); /* any count, sliced */
  ck_assert_int_eq(td_model_eval(m, px, lb, B, &e2), 0);
  ck_assert_double_eq(e1.loss_sum, e2.loss_sum);
  ck_assert_uint_eq(e1.correct, e2.correct);
  ck_assert_int_eq(td_model_get_state(m, after), 0);
  ck_assert(memcmp(before, after, ns * sizeof(float)) == 0);
  free(before);
  free(after);
  drop(m, be);
}
END_TEST

/* The job's remedies in its order: without accumulation, recompute first,
 * then bf16; the re-plan says which it took. */
START_TEST(test_remedies_in_order) {
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_plan whole, rec, half;
  bool replanned;
  uint8_t *px;
  int32_t *lb;
  td_step_stats st;

  memset(&s, 0, sizeof(s));
  conv_spec(&s);
  s.input_rank = 1;
  s.input_dims[0] = 64;
  s.nlayers = 0;
  for (int i = 0; i < 6; i++) {
    s.layers[s.nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 128};
    s.layers[s.nlayers++] = (td_layer){.type = TD_LAYER_GELU};
  }
  s.layers[s.nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 4};
  s.batch_size = 1024;
  s.remedies[0] = TD_REMEDY_RECOMPUTE;
  s.remedies[1] = TD_REMEDY_BF16;
  s.nremedies = 2;
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_FP32, 0, &whole), 0);
  s.recompute = 1;
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_FP32, 0, &rec), 0);
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_BF16, 0, &half), 0);
  s.recompute = 0;
  ck_assert_uint_lt(rec.total, whole.total);
  ck_assert_uint_lt(half.total, rec.total);

  ck_assert_int_eq(td_backend_create("cpu0", whole.total, &be, NULL, 0), 0);
  m = NULL;
  ck_assert_int_eq(td_model_create(be, &s, 1024, &m, NULL, 0), 0);
  ck_assert_int_eq(td_model_set_budget(m, rec.total, &replanned), 0);
  ck_assert(replanned);
  ck_assert(td_model_plan(m)->recompute);
  ck_assert_int_eq(td_model_plan(m)->precision, TD_PREC_FP32);
  ck_assert_uint_eq(td_model_plan(m)->micro_batch, 1024); /* no accumulation allowed */
  ck_assert_int_eq(td_model_set_budget(m, half.total, &replanned), 0);
  ck_assert(replanned);
  ck_assert(td_model_plan(m)->recompute);
  ck_assert_int_eq(td_model_plan(m)->precision, TD_PREC_BF16);
  px = calloc(1024, 64);
  lb = calloc(1024, sizeof(*lb));
  ck_assert_int_eq(td_model_train_step(m, px, lb, 1024, &st), 0);
  ck_assert_int_eq(td_model_set_budget(m, half.total - 1, &replanned), TD_ENOFIT);
  free(px);
  free(lb);
  drop(m, be);
}
END_TEST

/* A model built at a chosen plan (td_model_create_as): the shrink it may
 * start with, case by case, and its plan is the chooser's to the byte. */
START_TEST(test_create_as) {
  static const struct {
    uint32_t micro_batch, shrink;
    bool allows;
    int rc;
  } cases[] = {
      {B, 1, false, 0},      {B / 2, 2, true, 0},      {B / 4, 4, true, 0},
      {1, B, true, 0},       {B / 2, 2, false, TD_EINVAL}, {4, 3, true, TD_EINVAL},
      {B, 0, true, TD_EINVAL}, {B, 2, true, TD_EINVAL},
  };
  td_jobspec s;

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_backend *be;
    td_model *m = NULL;
    td_plan want;

    conv_spec(&s);
    if (cases[i].allows)
      s.remedies[s.nremedies++] = TD_REMEDY_SHRINK;
    ck_assert_int_eq(td_backend_create("cpu0", (uint64_t)1 << 30, &be, NULL, 0), 0);
    ck_assert_msg(td_model_create_as(be, &s, cases[i].micro_batch, cases[i].shrink, &m, NULL,
                                     0) == cases[i].rc, "case %zu", i);
    if (cases[i].rc == 0) {
      ck_assert_int_eq(td_plan_at(&s, cases[i].micro_batch, s.precision, false,
                                  cases[i].shrink, 0, &want), 0);
      ck_assert_uint_eq(td_model_plan(m)->total, want.total);
      ck_assert_uint_eq(td_model_plan(m)->activations, want.activations);
      ck_assert_uint_eq(td_model_plan(m)->micro_batch, want.micro_batch);
      ck_assert_uint_eq(td_model_plan(m)->accumulation, 1);
      ck_assert_uint_eq(td_model_plan(m)->shrink, cases[i].shrink);
      ck_assert_uint_eq(td_model_effective_batch(m), B / cases[i].shrink);
    }
    drop(m, be);
  }
}
END_TEST

/* The saved file has nn.Sequential's names and PyTorch's shapes. */
START_TEST(test_save_names) {
  uint8_t px[B * 64];
  int32_t lb[B];
  char path[] = "/tmp/td-model-XXXXXX";
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  td_st_file *f;
  td_st_tensor t;
  char *buf, err[256];
  size_t len;
  int fd;

  norm_spec(&s);
  m = make(&s, 4, &be);
  batch(0, px, lb, &s);
  ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  ck_assert_int_eq(td_model_train_step(m, px, lb, 7, &st), 0);
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  ck_assert_int_eq(td_model_save(m, path, NULL, 0), 0);
  ck_assert_int_eq(td_read_file(path, 1 << 24, &buf, &len), 0);
  ck_assert_int_eq(td_safetensors_parse(buf, len, &f, err, sizeof(err)), 0);
  ck_assert_int_eq(td_safetensors_find(f, "0.weight", &t), 0);
  ck_assert_uint_eq(t.rank, 4);
  ck_assert_uint_eq(t.shape[0], 4);
  ck_assert_uint_eq(t.shape[1], 1);
  ck_assert_uint_eq(t.shape[2], 3);
  ck_assert_int_eq(td_safetensors_find(f, "1.running_var", &t), 0);
  ck_assert_uint_eq(t.shape[0], 4);
  ck_assert_int_eq(td_safetensors_find(f, "1.num_batches_tracked", &t), 0);
  ck_assert_str_eq(t.dtype, "I64");
  ck_assert_uint_eq(t.rank, 0);
  {
    int64_t v;

    memcpy(&v, t.data, sizeof(v));
    ck_assert_int_eq(v, 4 + 2); /* micro-batches trained: 16 / 4, then 7 / 4 */
  }
  ck_assert_int_eq(td_safetensors_find(f, "6.weight", &t), 0); /* layernorm over 16 */
  ck_assert_uint_eq(t.rank, 1);
  ck_assert_uint_eq(t.shape[0], 16);
  ck_assert_int_eq(td_safetensors_find(f, "9.bias", &t), 0);
  ck_assert_uint_eq(t.shape[0], 4);
  ck_assert_int_ne(td_safetensors_find(f, "2.weight", &t), 0); /* relu has none */
  td_safetensors_free(f);
  free(buf);
  unlink(path);
  drop(m, be);
}
END_TEST

/* A residual model learns: the loss on a batch it trains on falls. */
START_TEST(test_graph_trains) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  double first = 0.0;

  graph_spec(&s);
  m = make(&s, 8, &be);
  batch(0, px, lb, &s);
  for (int k = 0; k < 60; k++) {
    ck_assert_msg(td_model_train_step(m, px, lb, B, &st) == 0, "%s", td_model_error(m));
    ck_assert(isfinite(st.loss_sum));
    if (k == 0)
      first = st.loss_sum;
  }
  ck_assert_msg(st.loss_sum < 0.5 * first, "loss %g after 60 steps, %g at first", st.loss_sum,
                first);
  drop(m, be);
}
END_TEST

/* Recomputing a graph's segments changes no bit, in fp32 and bf16. */
START_TEST(test_graph_recompute_bitwise) {
  static const td_precision precs[] = {TD_PREC_FP32, TD_PREC_BF16};
  uint8_t px[B * 64];
  int32_t lb[B];

  for (size_t pi = 0; pi < TD_ARRAY_SIZE(precs); pi++) {
    td_jobspec s;
    float *st[2];
    uint64_t ns = 0;

    graph_spec(&s);
    s.precision = precs[pi];
    batch(2, px, lb, &s);
    for (int rec = 0; rec < 2; rec++) {
      td_backend *be;
      td_model *m;
      td_step_stats stats;

      s.recompute = rec;
      m = make(&s, 8, &be);
      ns = td_model_state_floats(m);
      st[rec] = malloc(ns * sizeof(float));
      for (int k = 0; k < 3; k++)
        ck_assert_int_eq(td_model_train_step(m, px, lb, B, &stats), 0);
      ck_assert_int_eq(td_model_get_state(m, st[rec]), 0);
      drop(m, be);
    }
    ck_assert_msg(memcmp(st[0], st[1], ns * sizeof(float)) == 0,
                  "state differs with recomputation (precision %d)", precs[pi]);
    free(st[0]);
    free(st[1]);
  }
}
END_TEST

/* A graph's tensors are named by its layers' names, an index where a
 * layer has none. */
START_TEST(test_graph_save_names) {
  static const char *const present[] = {"stem.weight", "2.bias", "bn.running_mean",
                                        "bn.num_batches_tracked", "5.weight", "hidden.weight",
                                        "head.bias"};
  uint8_t px[B * 64];
  int32_t lb[B];
  char path[] = "/tmp/td-model-XXXXXX";
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  td_st_file *f;
  td_st_tensor t;
  char *buf, err[256];
  size_t len;
  int fd;

  graph_spec(&s);
  m = make(&s, 16, &be);
  batch(0, px, lb, &s);
  ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  ck_assert_int_eq(td_model_save(m, path, NULL, 0), 0);
  ck_assert_int_eq(td_read_file(path, 1 << 24, &buf, &len), 0);
  ck_assert_int_eq(td_safetensors_parse(buf, len, &f, err, sizeof(err)), 0);
  for (size_t k = 0; k < TD_ARRAY_SIZE(present); k++)
    ck_assert_msg(td_safetensors_find(f, present[k], &t) == 0, "%s missing", present[k]);
  ck_assert_int_eq(td_safetensors_find(f, "head.weight", &t), 0);
  ck_assert_uint_eq(t.shape[1], 16 + 64); /* the concatenation */
  ck_assert_int_ne(td_safetensors_find(f, "0.weight", &t), 0);
  ck_assert_uint_eq(td_safetensors_count(f), 2 + 2 + 5 + 2 + 2 + 2);
  td_safetensors_free(f);
  free(buf);
  unlink(path);
  drop(m, be);
}
END_TEST

/* A device whose conv2d workspace depends on the rows, and not only
 * upwards (as cuDNN's may: another kernel for few rows): the CPU backend
 * with the contract's check against its own figure.  It needs most at 1 row
 * and at n % 5 == 2 (2, 7, 12), less at the micro-batch. */
static const td_backend_ops *cpu_ops;

static uint64_t rows_need(const td_conv2d_desc *d) {
  return td_conv2d_workspace_cpu(d) + 64u * (uint64_t)d->n +
         (d->n == 1 || d->n % 5 == 2 ? 4096u : 0u);
}

static int rows_workspace(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                          uint64_t *bytes) {
  (void)be, (void)oh, (void)ow;
  *bytes = rows_need(d);
  return 0;
}

static bool rows_ok(td_backend *be, const char *op, const td_conv2d_desc *d, uint64_t have) {
  if (have >= rows_need(d))
    return true;
  td__backend_fail(be, TD_EINVAL, "%s: %s: workspace of %llu bytes, %llu needed at %d rows",
                   be->device, op, (unsigned long long)have,
                   (unsigned long long)rows_need(d), d->n);
  return false;
}

static void rows_fwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow, const float *x,
                     const float *w, const float *b, float *y, void *work, uint64_t bytes) {
  if (rows_ok(be, "conv2d_fwd", d, bytes))
    cpu_ops->conv2d_fwd(be, d, oh, ow, x, w, b, y, work, bytes);
}

static void rows_bwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow, const float *x,
                     const float *w, const float *dy, float *dx, float *dw, float *db,
                     float beta, void *work, uint64_t bytes) {
  if (rows_ok(be, "conv2d_bwd", d, bytes))
    cpu_ops->conv2d_bwd(be, d, oh, ow, x, w, dy, dx, dw, db, beta, work, bytes);
}

/* The workspace covers every row count a conv layer runs at: the
 * micro-batch, a smaller last slice (a short batch, an evaluation), one
 * sample at a time in mixed precision; the plan says what was allocated. */
START_TEST(test_workspace_every_row_count) {
  static const td_precision precs[] = {TD_PREC_FP32, TD_PREC_BF16};
  uint8_t px[B * 64];
  int32_t lb[B];

  for (size_t p = 0; p < TD_ARRAY_SIZE(precs); p++) {
    td_backend *be;
    td_backend_ops fake;
    td_model *m = NULL;
    td_jobspec s;
    td_step_stats st;
    td_mem_stats mem;
    char err[256];
    uint64_t most = 0;

    conv_spec(&s);
    s.precision = precs[p];
    ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, NULL, 0), 0);
    cpu_ops = be->ops;
    fake = *be->ops;
    fake.conv2d_workspace = rows_workspace;
    fake.conv2d_fwd = rows_fwd;
    fake.conv2d_bwd = rows_bwd;
    be->ops = &fake;
    ck_assert_msg(td_model_create(be, &s, B, &m, err, sizeof(err)) == 0, "%s", err);
    for (int n = 1; n <= (precs[p] == TD_PREC_FP32 ? B : 1); n++) {
      td_conv2d_desc d = {.n = n, .c = 1, .h = 8, .w = 8, .k = 4, .kh = 3, .kw = 3,
                          .sh = 1, .sw = 1, .ph = 1, .pw = 1};
      if (rows_need(&d) > most)
        most = rows_need(&d);
    }
    if (precs[p] == TD_PREC_FP32)
      ck_assert_uint_eq(td_model_plan(m)->workspace, most);
    else
      ck_assert_uint_ge(td_model_plan(m)->workspace, most);
    batch(0, px, lb, &s);
    ck_assert_msg(td_model_train_step(m, px, lb, B, &st) == 0, "%s", td_model_error(m));
    ck_assert_msg(td_model_train_step(m, px, lb, 7, &st) == 0, "%s", td_model_error(m));
    ck_assert_msg(td_model_eval(m, px, lb, 12, &st) == 0, "%s", td_model_error(m));
    ck_assert_msg(td_model_replan(m, 6) == 0, "%s", td_model_error(m));
    ck_assert_msg(td_model_train_step(m, px, lb, B, &st) == 0, "%s", td_model_error(m));
    /* the CPU allocator counts what the plan says, to the byte */
    td_backend_mem(be, &mem);
    ck_assert_uint_eq(mem.used, td_model_plan(m)->total);
    td_model_destroy(m);
    be->ops = cpu_ops;
    td_backend_destroy(be);
  }
}
END_TEST

/* The GPU probe adds one allocation granule per arena to the overhead
 * (cudaMalloc rounds each allocation up): that bound holds only while a
 * model makes exactly TD_WORKER_ARENAS allocations and nothing else. */
static int allocs;

static int counting_alloc(td_backend *be, uint64_t bytes, void **out, uint64_t *avail) {
  allocs++;
  return cpu_ops->alloc(be, bytes, out, avail);
}

START_TEST(test_arenas_the_probe_counts) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_backend *be;
  td_backend_ops fake;
  td_model *m = NULL;
  td_step_stats st;
  td_jobspec s;
  char err[256];

  norm_spec(&s); /* Adam, a conv workspace: no arena is empty */
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, NULL, 0), 0);
  cpu_ops = be->ops;
  fake = *be->ops;
  fake.alloc = counting_alloc;
  be->ops = &fake;
  allocs = 0;
  ck_assert_msg(td_model_create(be, &s, B, &m, err, sizeof(err)) == 0, "%s", err);
  batch(0, px, lb, &s);
  ck_assert_msg(td_model_train_step(m, px, lb, B, &st) == 0, "%s", td_model_error(m));
  ck_assert_msg(td_model_eval(m, px, lb, B, &st) == 0, "%s", td_model_error(m));
  ck_assert_int_eq(allocs, TD_WORKER_ARENAS);
  /* a re-plan allocates the per-micro-batch arenas again, after freeing them */
  ck_assert_msg(td_model_replan(m, B / 2) == 0, "%s", td_model_error(m));
  ck_assert_int_eq(allocs, TD_WORKER_ARENAS + 3);
  td_model_destroy(m);
  be->ops = cpu_ops;
  td_backend_destroy(be);
}
END_TEST

/* A device whose stream dies once armed: its sync finds a sticky error. */
static bool dying;

static void dying_sync(td_backend *be) {
  cpu_ops->sync(be);
  if (dying)
    td__backend_fail(be, TD_ECUDA, "%s: an illegal memory access was encountered", be->device);
}

/* An out-of-memory failure in a step whose wait then finds the context
 * dead reports the sticky error: re-planning would run on a dead context. */
START_TEST(test_sticky_error_after_oom) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_backend *be;
  td_backend_ops fake;
  td_model *m = NULL;
  td_step_stats st;
  td_jobspec s;
  char err[256];

  conv_spec(&s);
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, NULL, 0), 0);
  cpu_ops = be->ops;
  fake = *be->ops;
  fake.sync = dying_sync;
  be->ops = &fake;
  dying = false;
  ck_assert_msg(td_model_create(be, &s, B, &m, err, sizeof(err)) == 0, "%s", err);
  batch(0, px, lb, &s);
  dying = true;
  td_backend_inject_oom(be, 2);
  ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), TD_ECUDA);
  ck_assert_msg(strstr(td_model_error(m), "illegal memory access") != NULL, "%s",
                td_model_error(m));
  ck_assert_int_eq(td_model_train_step_recover(m, px, lb, B, NULL, &st), TD_ECUDA);
  td_model_destroy(m);
  be->ops = cpu_ops;
  td_backend_destroy(be);
}
END_TEST

/* reduce_lr_on_plateau's factor: a model at lr 0.1 with factor 0.5 takes
 * exactly the steps of one at lr 0.05 (halving is exact), and the factor
 * comes back from its progress; one out of (0, 1] is refused. */
START_TEST(test_lr_factor) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_jobspec s, h;
  td_backend *be, *be2;
  td_model *m, *r;
  td_model_progress pr;
  td_step_stats st;
  float *a, *b;
  uint64_t ns;

  conv_spec(&s);
  s.opt.lr = 0.1f;
  h = s;
  h.opt.lr = 0.05f;
  m = make(&s, 8, &be);
  r = make(&h, 8, &be2);
  td_model_get_progress(m, &pr);
  ck_assert(pr.lr_factor == 0.0); /* none: as 1 */
  pr.lr_factor = 0.5;
  ck_assert_int_eq(td_model_set_progress(m, &pr), 0);
  for (int k = 0; k < 4; k++) {
    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
    ck_assert_int_eq(td_model_train_step(r, px, lb, B, &st), 0);
  }
  ns = td_model_state_floats(m);
  a = malloc(ns * sizeof(float));
  b = malloc(ns * sizeof(float));
  ck_assert_int_eq(td_model_get_state(m, a), 0);
  ck_assert_int_eq(td_model_get_state(r, b), 0);
  ck_assert_msg(memcmp(a, b, ns * sizeof(float)) == 0, "factor 0.5 is not half the rate");
  td_model_get_progress(m, &pr);
  ck_assert(pr.lr_factor == 0.5);
  pr.lr_factor = 1.5;
  ck_assert_int_eq(td_model_set_progress(m, &pr), TD_EINVAL);
  free(a);
  free(b);
  drop(r, be2);
  drop(m, be);
}
END_TEST

/* trainable: false.  Frozen layers' parameters keep their bits (AdamW's
 * decay included, with clipping on) and the others train: layer 0 frozen,
 * so the backward pass stops at layer 1, and layer 5 between layers that
 * train.  Without BatchNorm the result does not depend on the
 * micro-batch, frozen layers or not. */
START_TEST(test_freeze) {
  uint8_t px[B * 64];
  int32_t lb[B];
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  const td_layout *l;
  float *w0, *w1, *w4;
  uint64_t n, n4;

  norm_spec(&s);
  s.opt.kind = TD_OPT_ADAMW;
  s.opt.weight_decay = 0.1f;
  s.clip_grad_norm = 0.5f;
  s.layers[0].frozen = 1;
  s.layers[5].frozen = 1;
  m = make(&s, B, &be);
  l = td_model_layout(m);
  n = td_model_nparams(m);
  w0 = malloc(n * sizeof(float));
  w1 = malloc(n * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m, w0), 0);
  for (int k = 0; k < 5; k++) {
    batch(k, px, lb, &s);
    ck_assert_msg(td_model_train_step(m, px, lb, B, &st) == 0, "%s", td_model_error(m));
  }
  ck_assert_int_eq(td_model_get_params(m, w1), 0);
  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];
    uint64_t at = ly->weight / sizeof(float), count = ly->bias / sizeof(float) + ly->nbias - at;
    int same;

    if (ly->weight == TD_PLAN_NONE)
      continue;
    same = memcmp(w0 + at, w1 + at, count * sizeof(float)) == 0;
    ck_assert_msg(same == (s.layers[i].frozen != 0), "layer %d: %s", i,
                  same ? "trainable but unchanged" : "frozen but changed");
  }
  free(w0);
  free(w1);
  drop(m, be);

  conv_spec(&s);
  s.layers[0].frozen = 1;
  w1 = train(&s, B, 20, &n);
  w4 = train(&s, B / 4, 20, &n4);
  ck_assert_uint_eq(n, n4);
  assert_close(w4, w1, n, 1e-5);
  free(w1);
  free(w4);
}
END_TEST

/* init: a model's file loads into a model of the same spec (another seed)
 * to the bit, BatchNorm's statistics and count included; a model of
 * another shape is refused naming the first tensor that differs. */
START_TEST(test_init_load) {
  uint8_t px[B * 64];
  int32_t lb[B];
  char path[] = "/tmp/td-init-XXXXXX", path2[] = "/tmp/td-init2-XXXXXX", err[256];
  td_jobspec s, s2;
  td_backend *be, *be2;
  td_model *m, *r;
  td_step_stats st;
  td_st_file *f, *g;
  int fd;

  norm_spec(&s);
  m = make(&s, 4, &be);
  for (int k = 0; k < 2; k++) {
    batch(k, px, lb, &s);
    ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  }
  ck_assert_int_ge(fd = mkstemp(path), 0);
  close(fd);
  ck_assert_int_ge(fd = mkstemp(path2), 0);
  close(fd);
  ck_assert_int_eq(td_model_save(m, path, NULL, 0), 0);
  ck_assert_int_eq(td_safetensors_load(path, 1 << 24, &f, err, sizeof(err)), 0);
  s2 = s;
  s2.seed = 99;
  r = make(&s2, B, &be2);
  ck_assert_msg(td_model_load(r, f) == 0, "%s", td_model_error(r));
  ck_assert_int_eq(td_model_save(r, path2, NULL, 0), 0);
  ck_assert_int_eq(td_safetensors_load(path2, 1 << 24, &g, err, sizeof(err)), 0);
  ck_assert_uint_eq(td_safetensors_count(g), td_safetensors_count(f));
  for (size_t i = 0; i < td_safetensors_count(f); i++) {
    td_st_tensor a, b;

    td_safetensors_get(f, i, &a);
    ck_assert_int_eq(td_safetensors_find(g, a.name, &b), 0);
    ck_assert_uint_eq(a.bytes, b.bytes);
    ck_assert_msg(memcmp(a.data, b.data, a.bytes) == 0, "tensor %s differs", a.name);
  }
  td_safetensors_free(g);
  drop(r, be2);

  /* dense 16 -> 8: its weight, then the layernorm after it, differ */
  s2 = s;
  s2.layers[5].units = 8;
  r = make(&s2, B, &be2);
  ck_assert_int_eq(td_model_load(r, f), TD_EDATA);
  ck_assert_str_eq(td_model_error(r), "tensor '5.weight' has shape [16, 64], the model's is "
                   "[8, 64]");
  drop(r, be2);
  td_safetensors_free(f);
  unlink(path);
  unlink(path2);
  drop(m, be);
}
END_TEST

static Suite *model_suite(void) {
  Suite *s = suite_create("model");
  TCase *tc = tcase_create("model");

  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_micro_batch_invariance);
  tcase_add_test(tc, test_float32_samples);
  tcase_add_test(tc, test_batchnorm_flagged);
  tcase_add_test(tc, test_recompute_bitwise);
  tcase_add_test(tc, test_fp16_overflow_skips);
  tcase_add_test(tc, test_clip_and_schedule);
  tcase_add_test(tc, test_resume_exact);
  tcase_add_test(tc, test_lr_factor);
  tcase_add_test(tc, test_eval_mode);
  tcase_add_test(tc, test_remedies_in_order);
  tcase_add_test(tc, test_create_as);
  tcase_add_test(tc, test_save_names);
  tcase_add_test(tc, test_workspace_every_row_count);
  tcase_add_test(tc, test_arenas_the_probe_counts);
  tcase_add_test(tc, test_sticky_error_after_oom);
  tcase_add_test(tc, test_graph_trains);
  tcase_add_test(tc, test_graph_recompute_bitwise);
  tcase_add_test(tc, test_graph_save_names);
  tcase_add_test(tc, test_freeze);
  tcase_add_test(tc, test_init_load);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(model_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
