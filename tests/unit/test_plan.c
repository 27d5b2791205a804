/* The memory plan: hand-computed numbers, refusals, and the worker's real
 * allocations matching it to the byte on the CPU backend. */
#include <check.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "jobspec.h"
#include "lossscale.h"
#include "model.h"
#include "plan.h"
#include "util.h"

/* The example job: 784-512-256-10 with ReLUs, Adam, batch 128. */
static void example_spec(td_jobspec *s) {
  static const td_layer layers[] = {
      {.type = TD_LAYER_DENSE, .units = 512}, {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_DENSE, .units = 256}, {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_DENSE, .units = 10},
  };

  memset(s, 0, sizeof(*s));
  snprintf(s->name, sizeof(s->name), "example");
  s->input_dims[0] = s->input_dims[1] = 28;
  s->input_rank = 2;
  memcpy(s->layers, layers, sizeof(layers));
  s->nlayers = (int)TD_ARRAY_SIZE(layers);
  s->batch_size = 128;
  s->epochs = 1;
  s->seed = 1;
  s->norm_mean = 0.286f;
  s->norm_std = 0.353f;
  s->opt = (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f,
                          .eps = 1e-8f};
  s->precision = TD_PREC_FP32;
}

START_TEST(test_example_by_hand) {
  const uint64_t nparams = 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10; /* 535818 */
  td_jobspec s;
  td_plan p;

  example_spec(&s);
  ck_assert_int_eq(td_plan_compute(&s, 128, TD_PREC_FP32, 0, &p), 0);
  ck_assert_uint_eq(p.micro_batch, 128);
  ck_assert_uint_eq(p.params, nparams * 4);
  ck_assert_uint_eq(p.params, 2143272);
  ck_assert_uint_eq(p.grads, 2143272);
  ck_assert_uint_eq(p.optim, 2 * 2143272); /* Adam: two moments */
  /* The liveness plan's peak is the first dense layer's backward: the
   * input and its ReLU'd output (both read by backward ops still to come),
   * the gradient of the second layer's output it reads and the input
   * gradient it writes, and the 32-byte statistics in a 64-byte slot.  The
   * logits and the second hidden layer are dead by then and share bytes. */
  ck_assert_uint_eq(p.activations, (128 * 784 + 128 * 512 + 128 * 256 + 128 * 512) * 4 + 64);
  ck_assert_uint_eq(p.activations, 1056832);
  ck_assert_uint_eq(p.workspace, 0);
  ck_assert_uint_eq(p.staging, 128 * 784 + 128 * 4); /* uint8 pixels, then int32 labels */
  ck_assert_uint_eq(p.overhead, 0);
  ck_assert_uint_eq(p.total, 4 * 2143272 + 1056832 + 100864);
  ck_assert(!p.batch_dependent && !p.recompute);
  ck_assert_int_eq(p.precision, TD_PREC_FP32);

  /* micro-batch 32 shrinks only the activations and staging */
  ck_assert_int_eq(td_plan_compute(&s, 32, TD_PREC_FP32, 300 << 20, &p), 0);
  ck_assert_uint_eq(p.params, 2143272);
  ck_assert_uint_eq(p.activations, (32 * 784 + 32 * 512 + 32 * 256 + 32 * 512) * 4 + 64);
  ck_assert_uint_eq(p.staging, 32 * 784 + 32 * 4);
  ck_assert_uint_eq(p.overhead, 300 << 20);
  ck_assert_uint_eq(p.total, 4 * 2143272 + 264256 + 25216 + (300 << 20));
}
END_TEST

START_TEST(test_example_layout) {
  td_jobspec s;
  td_layout l;

  example_spec(&s);
  ck_assert_int_eq(td_plan_layout(&s, 128, &l), 0);
  ck_assert_uint_eq(l.in_elems, 784);
  ck_assert_uint_eq(l.classes, 10);
  ck_assert_int_eq(l.first_dense, 0);
  ck_assert_uint_eq(l.nparams, 535818);
  ck_assert_uint_eq(l.optim_slots, 2);
  /* parameters packed in layer order: weight then bias */
  ck_assert_uint_eq(l.layers[0].weight, 0);
  ck_assert_uint_eq(l.layers[0].bias, 784 * 512 * 4);
  ck_assert_uint_eq(l.layers[2].weight, (784 * 512 + 512) * 4);
  ck_assert_uint_eq(l.layers[4].bias, (535818 - 10) * 4);
  ck_assert(!l.layers[0].needs_dx);
  ck_assert(l.layers[2].needs_dx && l.layers[4].needs_dx);
  /* ReLU in place on the dense output before it, and on its gradient */
  ck_assert_uint_eq(l.layers[1].x, l.layers[0].y);
  ck_assert_uint_eq(l.layers[1].y, l.layers[0].y);
  ck_assert_uint_eq(l.layers[2].x, l.layers[0].y);
  ck_assert_uint_eq(l.layers[1].dx, l.layers[1].dy);
  ck_assert_uint_eq(l.layers[0].dy, l.layers[1].dx);
  ck_assert_uint_eq(l.layers[0].x, l.input);
  ck_assert_uint_eq(l.logits, l.layers[4].y);
  ck_assert_uint_eq(l.dlogits, l.layers[4].dy);
  ck_assert_uint_eq(l.layers[0].dx, TD_PLAN_NONE);
  ck_assert_uint_eq(l.grad_width, 512);
  /* the greedy placement, largest first: input, then the first hidden
   * output, then its gradient (which the second hidden layer's output,
   * dead by then, shares) */
  ck_assert_uint_eq(l.input, 0);
  ck_assert_uint_eq(l.layers[0].y, 128 * 784 * 4);
  ck_assert_uint_eq(l.layers[0].dy, (128 * 784 + 128 * 512) * 4);
  ck_assert_uint_eq(l.layers[2].y, l.layers[0].dy);
  ck_assert_uint_eq(l.act_peak, l.act_bytes);
  ck_assert_uint_eq(l.workspace, 0);
  ck_assert_uint_eq(l.half_params, TD_PLAN_NONE);
  for (int i = 0; i < l.nlayers; i++)
    ck_assert_uint_eq(l.layers[i].y % TD_PLAN_ALIGN, 0);
  ck_assert_uint_eq(l.stage_labels, 128 * 784);
  ck_assert_uint_eq(l.stage_bytes, 128 * 784 + 128 * 4);
}
END_TEST

START_TEST(test_optimizer_state) {
  td_jobspec s;
  td_plan p;

  example_spec(&s);
  s.opt.kind = TD_OPT_SGD;
  ck_assert_int_eq(td_plan_compute(&s, 128, TD_PREC_FP32, 0, &p), 0);
  ck_assert_uint_eq(p.optim, 0);
  s.opt.momentum = 0.9f;
  ck_assert_int_eq(td_plan_compute(&s, 128, TD_PREC_FP32, 0, &p), 0);
  ck_assert_uint_eq(p.optim, p.params);
}
END_TEST

static void assert_refused(const td_jobspec *s, uint32_t micro, uint64_t overhead, int want) {
  td_plan p;
  td_layout l;

  memset(&p, 0xAB, sizeof(p));
  ck_assert_int_eq(td_plan_compute(s, micro, TD_PREC_FP32, overhead, &p), want);
  for (size_t i = 0; i < sizeof(p); i++) /* nothing written */
    ck_assert_uint_eq(((const uint8_t *)&p)[i], 0xAB);
  if (overhead == 0) {
    memset(&l, 0xAB, sizeof(l));
    ck_assert_int_eq(td_plan_layout(s, micro, &l), want);
    ck_assert_uint_eq(((const uint8_t *)&l)[0], 0xAB);
  }
}

START_TEST(test_overflow) {
  td_jobspec s;

  /* 64 layers of 65536 units at batch 65536: big, but within 2^62 */
  example_spec(&s);
  s.nlayers = TD_MAX_LAYERS;
  for (int i = 0; i < TD_MAX_LAYERS; i++)
    s.layers[i] = (td_layer){.type = TD_LAYER_DENSE, .units = 65536};
  s.batch_size = 65536;
  {
    td_plan p;
    ck_assert_int_eq(td_plan_compute(&s, 65536, TD_PREC_FP32, 0, &p), 0);
    ck_assert_uint_gt(p.total, (uint64_t)1 << 40);
  }
  /* ... and an overhead that takes it past 2^62 */
  assert_refused(&s, 65536, (uint64_t)1 << 62, TD_ETOOBIG);
  assert_refused(&s, 65536, UINT64_MAX, TD_ETOOBIG);

  /* units near INT_MAX: each weight matrix is 2^62 bytes or more */
  for (int i = 0; i < TD_MAX_LAYERS; i++)
    s.layers[i].units = 0x7fffffff;
  assert_refused(&s, 65536, 0, TD_ETOOBIG);

  /* input elements overflow 64 bits */
  example_spec(&s);
  s.input_rank = 4;
  for (int i = 0; i < 4; i++)
    s.input_dims[i] = UINT32_MAX;
  assert_refused(&s, 1, 0, TD_ETOOBIG);
  /* features beyond what BLAS can index */
  s.input_rank = 1;
  s.input_dims[0] = 0x80000000u;
  assert_refused(&s, 1, 0, TD_ETOOBIG);
  example_spec(&s);
  s.layers[0].units = UINT32_MAX;
  assert_refused(&s, 1, 0, TD_ETOOBIG);
  /* activations: micro-batch x input features past 2^62 */
  example_spec(&s);
  s.batch_size = UINT32_MAX;
  s.input_rank = 1;
  s.input_dims[0] = 1u << 30;
  assert_refused(&s, 0x7fffffff, 0, TD_ETOOBIG);
  {
    td_plan p;
    ck_assert_int_eq(td_plan_compute(&s, 1, TD_PREC_FP32, 0, &p), 0);
  }
}
END_TEST

START_TEST(test_invalid) {
  td_jobspec s;

  example_spec(&s);
  assert_refused(&s, 0, 0, TD_EINVAL);     /* micro-batch 0 */
  assert_refused(&s, 129, 0, TD_EINVAL);   /* above the batch size */
  s.layers[2].units = 0;
  assert_refused(&s, 64, 0, TD_EINVAL);
  example_spec(&s);
  s.nlayers = 0;
  assert_refused(&s, 64, 0, TD_EINVAL);
  s.nlayers = TD_MAX_LAYERS + 1;
  assert_refused(&s, 64, 0, TD_EINVAL);
  example_spec(&s); /* ReLUs only: nothing to train */
  s.layers[0] = (td_layer){.type = TD_LAYER_RELU};
  s.nlayers = 1;
  assert_refused(&s, 64, 0, TD_EINVAL);
  example_spec(&s);
  s.layers[1].type = TD_LAYER__COUNT;
  assert_refused(&s, 64, 0, TD_EINVAL);
  example_spec(&s);
  s.input_dims[1] = 0;
  assert_refused(&s, 64, 0, TD_EINVAL);
  example_spec(&s);
  s.input_rank = 0;
  assert_refused(&s, 64, 0, TD_EINVAL);
  example_spec(&s);
  s.opt.kind = (td_opt_kind)7;
  assert_refused(&s, 64, 0, TD_EINVAL);
  example_spec(&s);
  {
    td_plan p;
    ck_assert_int_eq(td_plan_compute(&s, 64, TD_PREC__COUNT, 0, &p), TD_EINVAL);
  }
}
END_TEST

START_TEST(test_monotonic) {
  td_jobspec s;
  td_plan prev, p;

  example_spec(&s);
  ck_assert_int_eq(td_plan_compute(&s, 1, TD_PREC_FP32, 0, &prev), 0);
  for (uint32_t mb = 2; mb <= s.batch_size; mb++) {
    ck_assert_int_eq(td_plan_compute(&s, mb, TD_PREC_FP32, 0, &p), 0);
    ck_assert_uint_gt(p.total, prev.total);
    ck_assert_uint_ge(p.activations, prev.activations);
    ck_assert_uint_gt(p.staging, prev.staging);
    ck_assert_uint_eq(p.params, prev.params);
    prev = p;
  }
}
END_TEST

/* The search finds the largest micro-batch that fits, by the plan alone,
 * and agrees with a linear scan everywhere. */
START_TEST(test_fit) {
  td_jobspec s;
  td_plan whole, p, q;

  example_spec(&s);
  s.min_micro_batch = 1;
  s.remedies[0] = TD_REMEDY_ACCUMULATE;
  s.nremedies = 1;
  ck_assert_int_eq(td_plan_compute(&s, 128, TD_PREC_FP32, 0, &whole), 0);
  ck_assert_uint_eq(whole.accumulation, 1);
  /* the whole batch fits: it runs whole */
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, whole.total, &p), 0);
  ck_assert_uint_eq(p.micro_batch, 128);
  ck_assert_uint_eq(p.total, whole.total);
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, UINT64_MAX, &p), 0);
  ck_assert_uint_eq(p.micro_batch, 128);
  /* one byte short: 127, with 2 micro-batches per step */
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, whole.total - 1, &p), 0);
  ck_assert_uint_eq(p.micro_batch, 127);
  ck_assert_uint_eq(p.accumulation, 2);
  /* every budget between plans: the scan's answer */
  for (uint32_t mb = 1; mb < 128; mb += 7) {
    ck_assert_int_eq(td_plan_compute(&s, mb, TD_PREC_FP32, 4096, &q), 0);
    ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 4096, q.total, &p), 0);
    ck_assert_uint_eq(p.micro_batch, mb);
    ck_assert_uint_eq(p.total, q.total);
    ck_assert_uint_eq(p.overhead, 4096);
    ck_assert_uint_eq(p.accumulation, (128 + mb - 1) / mb);
    ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 4096, q.total + 1, &p), 0);
    ck_assert_uint_eq(p.micro_batch, mb); /* the next one needs more than a byte */
  }
  /* below the smallest micro-batch: ENOFIT, nothing written */
  ck_assert_int_eq(td_plan_compute(&s, 1, TD_PREC_FP32, 0, &q), 0);
  memset(&p, 0xAB, sizeof(p));
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, q.total - 1, &p), TD_ENOFIT);
  ck_assert_uint_eq(p.micro_batch, 0xABABABABu);
  s.min_micro_batch = 64;
  ck_assert_int_eq(td_plan_compute(&s, 64, TD_PREC_FP32, 0, &q), 0);
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, q.total - 1, &p), TD_ENOFIT);
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, q.total, &p), 0);
  ck_assert_uint_eq(p.micro_batch, 64);
  /* no accumulation allowed: the whole batch or nothing */
  s.nremedies = 0;
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, whole.total - 1, &p), TD_ENOFIT);
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, whole.total, &p), 0);
  ck_assert_uint_eq(p.micro_batch, 128);
}
END_TEST

/* Absurd specs: refused with TD_ETOOBIG, not a wrapped number; a batch
 * whose whole plan overflows still fits at a smaller micro-batch. */
START_TEST(test_fit_overflow) {
  td_jobspec s;
  td_plan p;

  example_spec(&s);
  s.min_micro_batch = 1;
  s.remedies[0] = TD_REMEDY_ACCUMULATE;
  s.nremedies = 1;
  s.batch_size = UINT32_MAX;
  s.input_rank = 1;
  s.input_dims[0] = 1u << 30;
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, (uint64_t)1 << 40, &p), TD_ENOFIT);
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, (uint64_t)1 << 44, &p), 0);
  ck_assert_uint_ge(p.micro_batch, 1);
  ck_assert_uint_le(p.total, (uint64_t)1 << 44);
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, UINT64_MAX, &p), 0);
  ck_assert_uint_le(p.total, TD_PLAN_LIMIT);
  for (int i = 0; i < TD_MAX_LAYERS; i++)
    s.layers[i] = (td_layer){.type = TD_LAYER_DENSE, .units = 0x7fffffff};
  s.nlayers = TD_MAX_LAYERS;
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, UINT64_MAX, &p), TD_ETOOBIG);
}
END_TEST

/* Build the model inside a budget of exactly plan.total, run real training
 * steps and an evaluation, and compare the backend's measured peak. */
static void exact_case(const td_jobspec *s, uint32_t micro) {
  uint32_t in = 1, classes;
  td_backend *be = NULL;
  td_model *m = NULL;
  td_mem_stats mem;
  td_step_stats st;
  td_plan plan;
  uint8_t *px;
  int32_t *lb;
  size_t tbytes;
  char err[256];

  for (int i = 0; i < s->input_rank; i++)
    in *= s->input_dims[i];
  ck_assert_int_eq(td_plan_compute(s, micro, s->precision, 0, &plan), 0);

  /* one byte less does not fit */
  ck_assert_int_eq(td_backend_create("cpu0", plan.total - 1, &be, NULL, 0), 0);
  ck_assert_int_eq(td_model_create(be, s, micro, &m, err, sizeof(err)), TD_EOOM);
  ck_assert_ptr_null(m);
  ck_assert_msg(strstr(err, "out of memory for the") != NULL, "%s", err);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.used, 0); /* what was allocated was given back */
  /* the last arena, staging, is the one that did not fit */
  ck_assert_uint_eq(mem.oom_asked, plan.staging);
  ck_assert_uint_eq(mem.oom_free, plan.staging - 1);
  ck_assert_uint_eq(mem.peak, plan.total - plan.staging);
  td_backend_destroy(be);

  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, NULL, 0), 0);
  ck_assert_int_eq(td_model_create(be, s, micro, &m, err, sizeof(err)), 0);
  ck_assert_uint_eq(td_model_plan(m)->total, plan.total);
  classes = td_model_layout(m)->classes;
  /* other stored types get zeros: a valid value of each */
  px = calloc((size_t)s->batch_size * in, td_dtype_size(s->sample_dtype));
  /* the targets at their width: class ids, or (regression, soft or
   * multi-label) floats, zeros then */
  tbytes = td_target_bytes(td_jobspec_target(s));
  lb = calloc(s->batch_size, tbytes);
  for (size_t i = 0; s->sample_dtype == TD_DTYPE_U8 && i < (size_t)s->batch_size * in; i++)
    px[i] = (uint8_t)(i * 2654435761u >> 7);
  for (uint32_t i = 0; td_jobspec_target(s).dtype == TD_DTYPE_I32 && i < s->batch_size; i++)
    lb[i] = (int32_t)(i * 7 % classes);
  for (int step = 0; step < 3; step++) {
    ck_assert_int_eq(td_model_train_step(m, px, lb, s->batch_size, &st), 0);
    ck_assert_uint_eq(st.count, s->batch_size);
  }
  ck_assert_int_eq(td_model_train_step(m, px, lb, s->batch_size / 2 + 1, &st), 0);
  ck_assert_int_eq(td_model_eval(m, px, lb, s->batch_size, &st), 0);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.peak, plan.total);
  ck_assert_uint_eq(mem.used, plan.total);
  td_model_destroy(m);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.used, 0);
  td_backend_destroy(be);
  free(px);
  free(lb);
}

START_TEST(test_exact_example) {
  td_jobspec s;

  example_spec(&s);
  exact_case(&s, 128);
  exact_case(&s, 37);
  exact_case(&s, 1);
}
END_TEST

/* Samples travel in their stored type: the staging arena holds a
 * micro-batch of them, then the labels at the next aligned offset. */
START_TEST(test_sample_dtypes) {
  static const struct {
    td_dtype t;
    uint64_t samples;
  } cases[] = {
      {TD_DTYPE_U8, 37 * 784}, {TD_DTYPE_I32, 37 * 784 * 4},
      {TD_DTYPE_F16, 37 * 784 * 2}, {TD_DTYPE_F32, 37 * 784 * 4},
  };
  td_jobspec s;
  td_layout l;
  td_plan p;

  example_spec(&s);
  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    s.sample_dtype = cases[i].t;
    ck_assert_int_eq(td_plan_layout(&s, 37, &l), 0);
    ck_assert_int_eq(l.in_dtype, cases[i].t);
    ck_assert_uint_eq(l.stage_labels, (cases[i].samples + 63) / 64 * 64);
    ck_assert_int_eq(td_plan_compute(&s, 37, TD_PREC_FP32, 0, &p), 0);
    ck_assert_uint_eq(p.staging, l.stage_labels + 37 * 4);
  }
  s.sample_dtype = TD_DTYPE_F32;
  exact_case(&s, 37);
  s.sample_dtype = TD_DTYPE_I64; /* labels only */
  assert_refused(&s, 37, 0, TD_EINVAL);
  s.sample_dtype = (td_dtype)99;
  assert_refused(&s, 37, 0, TD_EINVAL);
}
END_TEST

START_TEST(test_exact_shapes) {
  td_jobspec s;

  /* SGD without momentum (no optimiser arena), odd widths, a ReLU first and
   * two in a row, a ReLU last */
  example_spec(&s);
  s.input_dims[0] = 13;
  s.input_dims[1] = 3;
  s.layers[0] = (td_layer){.type = TD_LAYER_RELU};
  s.layers[1] = (td_layer){.type = TD_LAYER_DENSE, .units = 33};
  s.layers[2] = (td_layer){.type = TD_LAYER_RELU};
  s.layers[3] = (td_layer){.type = TD_LAYER_RELU};
  s.layers[4] = (td_layer){.type = TD_LAYER_DENSE, .units = 7};
  s.layers[5] = (td_layer){.type = TD_LAYER_RELU};
  s.nlayers = 6;
  s.batch_size = 24;
  s.opt = (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.1f};
  exact_case(&s, 24);
  exact_case(&s, 5);
  /* SGD with momentum, one dense layer wider than its input */
  example_spec(&s);
  s.input_rank = 1;
  s.input_dims[0] = 3;
  s.layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = 300};
  s.nlayers = 1;
  s.batch_size = 9;
  s.opt = (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.1f, .momentum = 0.5f};
  exact_case(&s, 9);
  exact_case(&s, 2);
}
END_TEST


/* Every example job file, at every precision, with and without
 * recomputation, at several micro-batches, and with its first layer
 * frozen: the allocator's peak after training steps and an evaluation is
 * the plan, to the byte. */
START_TEST(test_exact_examples) {
  const char *root = getenv("TD_SOURCE_ROOT");
  char pattern[4096], err[512];
  glob_t g;

  snprintf(pattern, sizeof(pattern), "%s/examples/*.yaml", root ? root : "..");
  ck_assert_int_eq(glob(pattern, 0, NULL, &g), 0);
  ck_assert_uint_ge(g.gl_pathc, 3);
  for (size_t f = 0; f < g.gl_pathc; f++) {
    td_jobspec s;

    ck_assert_msg(td_jobspec_load(g.gl_pathv[f], &s, err, sizeof(err)) == 0, "%s: %s",
                  g.gl_pathv[f], err);
    /* a few steps' worth of the example's model, at a small batch */
    s.batch_size = 12;
    s.min_micro_batch = 1;
    for (int prec = 0; prec < TD_PREC__COUNT; prec++) {
      for (int rec = 0; rec < 2; rec++) {
        const uint32_t micros[] = {12, 5, 1};

        s.precision = (td_precision)prec;
        s.recompute = rec;
        s.loss_scale.enabled = prec == TD_PREC_FP16;
        for (size_t k = 0; k < TD_ARRAY_SIZE(micros); k++)
          exact_case(&s, micros[k]);
      }
    }
    /* the first layer frozen: the backward pass stops above it, within
     * the same plan */
    s.precision = TD_PREC_FP32;
    s.recompute = 0;
    s.loss_scale.enabled = false;
    s.layers[0].frozen = 1;
    exact_case(&s, 12);
    exact_case(&s, 5);
  }
  globfree(&g);
}
END_TEST

/* Graphs: inputs are shapes[] indices (0 the model's input, j + 1 layer
 * j's output). */
#define IN2(a, b) .inputs = {a, b}, .ninputs = 2
static const td_layer residual_mlp[] = {
    {.type = TD_LAYER_DENSE, .units = 16}, {.type = TD_LAYER_RELU},
    {.type = TD_LAYER_DENSE, .units = 16}, {.type = TD_LAYER_RELU},
    {.type = TD_LAYER_ADD, IN2(2, 4)},     /* relu 1 feeds dense 2 and this */
    {.type = TD_LAYER_DENSE, .units = 16},
    {.type = TD_LAYER_ADD, IN2(6, 5)},     /* add 4's output feeds two too */
    {.type = TD_LAYER_DENSE, .units = 5},
};
static const td_layer residual_cnn[] = {
    {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1},
    {.type = TD_LAYER_BATCHNORM2D}, {.type = TD_LAYER_RELU},
    {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1},
    {.type = TD_LAYER_BATCHNORM2D},
    {.type = TD_LAYER_ADD, IN2(3, 5)}, {.type = TD_LAYER_RELU}, {.type = TD_LAYER_FLATTEN},
    {.type = TD_LAYER_DENSE, .units = 5},
};
static const td_layer concat_head[] = {
    {.type = TD_LAYER_CONV2D, .filters = 3, .kernel = 3, .stride = 1, .padding = 1},
    {.type = TD_LAYER_RELU},
    {.type = TD_LAYER_CONV2D, .filters = 2, .kernel = 1, .stride = 1},
    {.type = TD_LAYER_CONV2D, .filters = 3, .kernel = 3, .stride = 1, .padding = 1,
     .inputs = {2}, .ninputs = 1},
    {.type = TD_LAYER_CONCAT, IN2(3, 4)}, /* [5, 6, 6] */
    {.type = TD_LAYER_FLATTEN},           /* a view that feeds two layers */
    {.type = TD_LAYER_DENSE, .units = 8}, {.type = TD_LAYER_GELU},
    {.type = TD_LAYER_CONCAT, IN2(6, 8)}, /* 180 + 8 */
    {.type = TD_LAYER_DENSE, .units = 5},
};
/* a branch without parameters before it: no gradient flows there */
static const td_layer skip_input[] = {
    {.type = TD_LAYER_DENSE, .units = 8}, {.type = TD_LAYER_FLATTEN, .inputs = {0}, .ninputs = 1},
    {.type = TD_LAYER_CONCAT, IN2(1, 2)}, {.type = TD_LAYER_DROPOUT, .p = 0.25f},
    {.type = TD_LAYER_DENSE, .units = 5},
};

static void graph_spec(td_jobspec *s, const td_layer *layers, int n, bool spatial) {
  example_spec(s);
  if (spatial) {
    s->input_rank = 3;
    s->input_dims[0] = 2;
    s->input_dims[1] = s->input_dims[2] = 6;
  } else {
    s->input_rank = 1;
    s->input_dims[0] = 12;
  }
  memcpy(s->layers, layers, (size_t)n * sizeof(*layers));
  s->nlayers = n;
  s->batch_size = 12;
  s->min_micro_batch = 1;
}

/* Residual and multi-branch models: the CPU backend's peak is the plan, to
 * the byte, at every precision, with and without recomputation. */
START_TEST(test_exact_graphs) {
  static const struct {
    const td_layer *layers;
    int n;
    bool spatial;
  } models[] = {
      {residual_mlp, (int)TD_ARRAY_SIZE(residual_mlp), false},
      {residual_cnn, (int)TD_ARRAY_SIZE(residual_cnn), true},
      {concat_head, (int)TD_ARRAY_SIZE(concat_head), true},
      {skip_input, (int)TD_ARRAY_SIZE(skip_input), false},
  };
  td_jobspec s;
  td_shape shapes[TD_MAX_LAYERS + 1];
  char msg[200];
  int bad;

  graph_spec(&s, models[_i].layers, models[_i].n, models[_i].spatial);
  ck_assert_msg(td_jobspec_shapes(&s, shapes, &bad, msg, sizeof(msg)) == 0, "layer %d: %s", bad,
                msg);
  ck_assert(!td_jobspec_is_chain(&s));
  for (int prec = 0; prec < TD_PREC__COUNT; prec++) {
    for (int rec = 0; rec < 2; rec++) {
      const uint32_t micros[] = {12, 5, 1};

      s.precision = (td_precision)prec;
      s.recompute = rec;
      s.loss_scale = td_lossscale_defaults();
      s.loss_scale.enabled = prec == TD_PREC_FP16;
      for (size_t k = 0; k < TD_ARRAY_SIZE(micros); k++)
        exact_case(&s, micros[k]);
    }
  }
}
END_TEST

/* What the plan does for a residual MLP: the add that reads a tensor read
 * nowhere else gives it its own gradient (no copy), and the tensor two
 * layers read gets its own gradient that the second share is added to. */
START_TEST(test_graph_layout) {
  td_jobspec s;
  td_layout l;

  graph_spec(&s, residual_mlp, (int)TD_ARRAY_SIZE(residual_mlp), false);
  ck_assert_int_eq(td_plan_layout(&s, 12, &l), 0);
  /* add 4: relu 3's output (read once) takes dy as its gradient; relu 1's
   * (read by dense 2 and the add) is written by the add's copy, then dense
   * 2's share is added to it */
  ck_assert_uint_eq(l.layers[4].dxs[1], l.layers[4].dy);
  ck_assert_uint_ne(l.layers[4].dxs[0], l.layers[4].dy);
  ck_assert_uint_eq(l.layers[4].dxs_sum, 0);
  ck_assert_uint_eq(l.layers[2].dx_sum, l.layers[4].dxs[0]);
  ck_assert_uint_ne(l.layers[2].dx, l.layers[2].dx_sum);
  /* add 4's output feeds dense 5 and add 6: the add (last) writes its
   * gradient, dense 5 adds its share; dense 5's output takes add 6's dy */
  ck_assert_uint_eq(l.layers[5].dx_sum, l.layers[6].dxs[1]);
  ck_assert_uint_eq(l.layers[6].dxs[0], l.layers[6].dy);
  ck_assert(l.layers[4].has_dy && l.layers[0].has_dy);
  ck_assert(!l.layers[0].needs_dx);
  ck_assert_uint_le(l.act_peak, l.act_bytes);
  /* in place: relu over the dense layers' outputs, nothing over a tensor
   * two layers read */
  ck_assert_uint_eq(l.layers[1].act_bytes, 0);
  ck_assert_uint_ne(l.layers[4].act_bytes, 0);

  /* add works in place over an input read nowhere else; with
   * recomputation only over one its own segment makes (dense 1's, not
   * dense 0's: the segment from dense 1 reruns the add from dense 0's) */
  {
    static const td_layer two[] = {
        {.type = TD_LAYER_DENSE, .units = 8},
        {.type = TD_LAYER_DENSE, .units = 8, .inputs = {0}, .ninputs = 1},
        {.type = TD_LAYER_ADD, IN2(1, 2)},
        {.type = TD_LAYER_DENSE, .units = 5},
    };

    graph_spec(&s, two, (int)TD_ARRAY_SIZE(two), false);
    ck_assert_int_eq(td_plan_layout(&s, 12, &l), 0);
    ck_assert_uint_eq(l.layers[2].act_bytes, 0);
    ck_assert_uint_eq(l.layers[2].y, l.layers[2].xs[0]);
    s.recompute = 1;
    ck_assert_int_eq(td_plan_layout(&s, 12, &l), 0);
    ck_assert_uint_eq(l.layers[2].act_bytes, 0);
    ck_assert_uint_eq(l.layers[2].y, l.layers[2].xs[1]);
    exact_case(&s, 5);
  }

  /* the branch from the input has no gradient */
  graph_spec(&s, skip_input, (int)TD_ARRAY_SIZE(skip_input), false);
  ck_assert_int_eq(td_plan_layout(&s, 12, &l), 0);
  ck_assert(!l.layers[1].has_dy);
  ck_assert_uint_eq(l.layers[2].dxs[1], TD_PLAN_NONE);
  ck_assert_uint_ne(l.layers[2].dxs[0], TD_PLAN_NONE);
}
END_TEST

/* A transformer block on token ids (embedding, positional embedding,
 * layernorm and dense per position, attention with the Q, K, V and
 * probabilities it keeps and its backward scratch), at every precision,
 * with and without recomputation: the peak is the plan, to the byte; and
 * the ids stay fp32 where the activations are 16-bit. */
START_TEST(test_exact_transformer) {
  static const td_layer layers[] = {
      {.type = TD_LAYER_EMBEDDING, .vocab = 256, .dim = 12},
      {.type = TD_LAYER_POS_EMBEDDING},
      {.type = TD_LAYER_LAYERNORM},
      {.type = TD_LAYER_ATTENTION, .heads = 3, .causal = 1},
      {.type = TD_LAYER_DENSE, .units = 20},
      {.type = TD_LAYER_GELU},
      {.type = TD_LAYER_DENSE, .units = 12},
      {.type = TD_LAYER_FLATTEN},
      {.type = TD_LAYER_DENSE, .units = 5},
  };
  td_jobspec s;
  td_layout l;

  example_spec(&s);
  s.input_rank = 1;
  s.input_dims[0] = 10;
  memcpy(s.layers, layers, sizeof(layers));
  s.nlayers = (int)TD_ARRAY_SIZE(layers);
  s.norm_mean = 0.0f;
  s.norm_std = 1.0f;
  s.batch_size = 12;
  s.min_micro_batch = 1;
  for (int prec = 0; prec < TD_PREC__COUNT; prec++) {
    for (int rec = 0; rec < 2; rec++) {
      const uint32_t micros[] = {12, 5, 1};

      s.precision = (td_precision)prec;
      s.recompute = rec;
      s.loss_scale.enabled = prec == TD_PREC_FP16;
      for (size_t k = 0; k < TD_ARRAY_SIZE(micros); k++)
        exact_case(&s, micros[k]);
      ck_assert_int_eq(td_plan_layout(&s, 5, &l), 0);
      ck_assert(!l.layers[0].half_x);
      ck_assert_uint_eq(l.input_tmp, TD_PLAN_NONE);
      ck_assert(l.layers[3].saved != TD_PLAN_NONE && l.layers[3].scratch != TD_PLAN_NONE);
    }
  }
}
END_TEST

/* A convolutional model by hand: parameters, BatchNorm's buffers, the conv
 * workspace (the CPU backend's figure), and the batch-dependence flag. */
START_TEST(test_conv_model) {
  static const td_layer layers[] = {
      {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_BATCHNORM2D},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_MAXPOOL2D, .kernel = 2},
      {.type = TD_LAYER_CONV2D, .filters = 6, .kernel = 3, .stride = 2},
      {.type = TD_LAYER_FLATTEN},
      {.type = TD_LAYER_LAYERNORM},
      {.type = TD_LAYER_DENSE, .units = 5},
  };
  td_conv2d_desc c1 = {.n = 8, .c = 2, .h = 10, .w = 10, .k = 4, .kh = 3, .kw = 3,
                       .sh = 1, .sw = 1, .ph = 1, .pw = 1};
  td_jobspec s;
  td_layout l;
  td_plan p;

  example_spec(&s);
  s.input_rank = 3;
  s.input_dims[0] = 2;
  s.input_dims[1] = s.input_dims[2] = 10;
  memcpy(s.layers, layers, sizeof(layers));
  s.nlayers = (int)TD_ARRAY_SIZE(layers);
  s.batch_size = 8;
  ck_assert_int_eq(td_plan_layout(&s, 8, &l), 0);
  /* 2x10x10 -> 4x10x10 -> pool 4x5x5 -> conv 6x2x2 = 24 -> 5 */
  ck_assert_uint_eq(l.layers[3].out_shape.h, 5);
  ck_assert_uint_eq(l.layers[4].out_shape.c, 6);
  ck_assert_uint_eq(l.layers[4].out_shape.h, 2);
  ck_assert_uint_eq(l.layers[5].out, 24);
  ck_assert(!l.layers[5].out_shape.spatial);
  ck_assert_uint_eq(l.classes, 5);
  /* each weight starts at a multiple of 256 bytes (64 floats), its bias
   * right behind it: 0 (72 + 4), 128 (4 + 4), 192 (216 + 6), 448 (24 + 24),
   * 512 (120 + 5) */
  ck_assert_uint_eq(l.nparams, 512 + 5 * 24 + 5);
  for (int i = 0; i < l.nlayers; i++) {
    if (l.layers[i].weight == TD_PLAN_NONE)
      continue;
    ck_assert_uint_eq(l.layers[i].weight % TD_PLAN_PARAM_ALIGN, 0);
    ck_assert_uint_eq(l.layers[i].bias, l.layers[i].weight + l.layers[i].nweight * 4);
  }
  ck_assert_uint_eq(l.layers[7].weight, 512 * 4);
  ck_assert_uint_eq(l.nbuffers, 2 * 4);
  ck_assert_uint_eq(l.layers[1].running, l.nparams * 4);
  ck_assert_int_eq(l.first_dense, 0);
  /* flatten is a view of its input and of its gradient */
  ck_assert_uint_eq(l.layers[5].y, l.layers[5].x);
  ck_assert_uint_eq(l.layers[5].dx, l.layers[5].dy);
  /* ReLU after BatchNorm works in place; pooling keeps its own output */
  ck_assert_uint_eq(l.layers[2].y, l.layers[2].x);
  ck_assert_uint_ne(l.layers[3].y, l.layers[3].x);
  {
    td_conv2d_desc c2 = {.n = 8, .c = 4, .h = 5, .w = 5, .k = 6, .kh = 3, .kw = 3,
                         .sh = 2, .sw = 2};
    uint64_t a = td_conv2d_workspace_cpu(&c1), b = td_conv2d_workspace_cpu(&c2);

    ck_assert_uint_eq(l.workspace, a > b ? a : b);
  }
  ck_assert_uint_le(l.act_peak, l.act_bytes);
  ck_assert_int_eq(td_plan_compute(&s, 8, TD_PREC_FP32, 0, &p), 0);
  ck_assert(p.batch_dependent);
  ck_assert_uint_eq(p.params, (l.nparams + l.nbuffers) * 4);
  ck_assert_uint_eq(p.grads, l.nparams * 4);
  ck_assert_uint_eq(p.workspace, l.workspace);
  /* mixed precision: the 16-bit weights follow the conv workspace */
  ck_assert_int_eq(td_plan_compute(&s, 8, TD_PREC_BF16, 0, &p), 0);
  ck_assert_uint_ge(p.workspace, l.workspace + l.nparams * 2);
  exact_case(&s, 8);
  exact_case(&s, 3);
  s.precision = TD_PREC_BF16;
  s.recompute = 1;
  exact_case(&s, 3);
}
END_TEST

/* A sequence model and a softmax over channels: conv1d's workspace (a block
 * of samples' columns), the activations in place, and the plan exact in
 * every precision, with and without recomputation. */
START_TEST(test_sequence_model) {
  static const td_layer seq[] = {
      {.type = TD_LAYER_CONV1D, .filters = 8, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_SIGMOID},
      {.type = TD_LAYER_CONV1D, .filters = 5, .kernel = 5, .stride = 2},
      {.type = TD_LAYER_TANH},
      {.type = TD_LAYER_SOFTMAX},
      {.type = TD_LAYER_GLOBAL_AVG_POOL},
      {.type = TD_LAYER_DENSE, .units = 4},
  };
  static const td_layer img[] = {
      {.type = TD_LAYER_CONV2D, .filters = 4, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_SOFTMAX},
      {.type = TD_LAYER_GLOBAL_AVG_POOL},
      {.type = TD_LAYER_DENSE, .units = 3},
  };
  /* [20, 6] -> conv1d [20, 8] -> conv1d [8, 5] */
  td_conv1d_desc c1 = {.n = 16, .l = 20, .c = 6, .k = 8, .kw = 3, .stride = 1, .pad = 1};
  td_conv1d_desc c2 = {.n = 16, .l = 20, .c = 8, .k = 5, .kw = 5, .stride = 2};
  td_jobspec s;
  td_layout l;

  example_spec(&s);
  s.input_dims[0] = 20;
  s.input_dims[1] = 6;
  s.input_seq = 1;
  memcpy(s.layers, seq, sizeof(seq));
  s.nlayers = (int)TD_ARRAY_SIZE(seq);
  s.batch_size = 20;
  ck_assert_int_eq(td_plan_layout(&s, 20, &l), 0);
  ck_assert(l.layers[0].in_shape.seq && l.layers[2].out_shape.seq);
  ck_assert_uint_eq(l.layers[2].out_shape.c, 8);
  ck_assert_uint_eq(l.layers[2].out_shape.h, 5);
  ck_assert_uint_eq(l.layers[5].out, 5);
  /* conv1d's weight [filters, in, kernel] and bias */
  ck_assert_uint_eq(l.layers[0].nweight, 8 * 6 * 3);
  ck_assert_uint_eq(l.layers[2].nweight, 5 * 8 * 5);
  ck_assert_uint_eq(l.layers[2].nbias, 5);
  {
    uint64_t a = td_conv1d_workspace(&c1), b = td_conv1d_workspace(&c2);

    ck_assert_uint_eq(l.workspace, a > b ? a : b);
  }
  /* sigmoid, tanh and softmax work in place, with their gradients */
  ck_assert_uint_eq(l.layers[1].y, l.layers[1].x);
  ck_assert_uint_eq(l.layers[3].y, l.layers[3].x);
  ck_assert_uint_ne(l.layers[4].y, l.layers[4].x); /* tanh keeps its output */
  ck_assert_uint_eq(l.layers[4].dx, l.layers[4].dy);
  ck_assert_uint_ne(l.layers[5].dx, l.layers[5].dy);
  for (int prec = 0; prec < TD_PREC__COUNT; prec++) {
    for (int rec = 0; rec < 2; rec++) {
      s.precision = (td_precision)prec;
      s.recompute = rec;
      s.loss_scale = td_lossscale_defaults();
      s.loss_scale.enabled = prec == TD_PREC_FP16;
      exact_case(&s, 20);
      exact_case(&s, 7);
      exact_case(&s, 1);
    }
  }

  example_spec(&s);
  s.input_rank = 3;
  s.input_dims[0] = 2;
  s.input_dims[1] = s.input_dims[2] = 6;
  memcpy(s.layers, img, sizeof(img));
  s.nlayers = (int)TD_ARRAY_SIZE(img);
  s.batch_size = 10;
  exact_case(&s, 10);
  exact_case(&s, 3);
  s.precision = TD_PREC_BF16;
  s.recompute = 1;
  exact_case(&s, 3);
}
END_TEST

/* A deep GELU MLP keeps every block's dense output and GELU output for the
 * backward pass: 16-bit storage and recomputation both shrink the
 * activation arena, and the plan shows by how much. */
START_TEST(test_savings) {
  td_jobspec s;
  td_plan fp32, bf16, rec;

  example_spec(&s);
  s.nlayers = 0;
  for (int i = 0; i < 8; i++) {
    s.layers[s.nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 512};
    s.layers[s.nlayers++] = (td_layer){.type = TD_LAYER_GELU};
  }
  s.layers[s.nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 10};
  s.batch_size = 1024;
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_FP32, 0, &fp32), 0);
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_BF16, 0, &bf16), 0);
  /* the saved activations halve; one op's fp32 scratch comes on top */
  ck_assert_uint_lt(bf16.activations, fp32.activations * 2 / 3);
  ck_assert_uint_lt(bf16.total, fp32.total);
  ck_assert_int_eq(bf16.precision, TD_PREC_BF16);
  s.recompute = 1;
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_FP32, 0, &rec), 0);
  ck_assert(rec.recompute);
  ck_assert_uint_lt(rec.activations, fp32.activations * 2 / 3);
  ck_assert_uint_eq(rec.params, fp32.params);
  s.batch_size = 32;
  exact_case(&s, 16);
}
END_TEST

/* Absurd convolutional specs are refused with TD_ETOOBIG, not a wrapped
 * number; a micro-batch whose tensors are past int indexing does not fit,
 * a smaller one does. */
START_TEST(test_conv_overflow) {
  td_jobspec s;
  td_plan p;

  example_spec(&s);
  s.input_rank = 3;
  s.input_dims[0] = 1;
  s.input_dims[1] = s.input_dims[2] = 16384;
  s.layers[0] = (td_layer){.type = TD_LAYER_CONV2D, .filters = 65536, .kernel = 3};
  s.layers[1] = (td_layer){.type = TD_LAYER_DENSE, .units = 10};
  s.nlayers = 2;
  assert_refused(&s, 1, 0, TD_ETOOBIG);
  /* 1x128x128 -> 1024 channels: 16M values per sample; 128 samples pass 2^31 */
  s.input_dims[1] = s.input_dims[2] = 128;
  s.layers[0].filters = 1024;
  s.layers[0].padding = 1;
  assert_refused(&s, 128, 0, TD_ETOOBIG);
  ck_assert_int_eq(td_plan_compute(&s, 127, TD_PREC_FP32, 0, &p), 0);
  s.min_micro_batch = 1;
  s.remedies[0] = TD_REMEDY_ACCUMULATE;
  s.nremedies = 1;
  ck_assert_int_eq(td_plan_fit(&s, TD_PREC_FP32, 0, UINT64_MAX, &p), 0);
  ck_assert_uint_eq(p.micro_batch, 127);
  /* a window larger than its input: invalid, not a crash */
  s.layers[0].kernel = 200;
  assert_refused(&s, 1, 0, TD_EINVAL);
}
END_TEST


/* The deep MLP where recompute and bf16 each save memory at the whole
 * batch (test_savings), batch 1024, with the job's remedies. */
static void chooser_spec(td_jobspec *s, const td_remedy *remedies, int n) {
  example_spec(s);
  s->nlayers = 0;
  for (int i = 0; i < 8; i++) {
    s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 512};
    s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_GELU};
  }
  s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 10};
  s->batch_size = 1024;
  s->nremedies = n;
  for (int i = 0; i < n; i++)
    s->remedies[i] = remedies[i];
}

#define RM(r) (1u << TD_REMEDY_##r)
#define RA TD_REMEDY_ACCUMULATE
#define RR TD_REMEDY_RECOMPUTE
#define RS TD_REMEDY_SHRINK
#define RH TD_REMEDY_BF16
#define RF TD_REMEDY_FP16
/* budgets, as the total of a reference plan plus a delta */
enum { B_WHOLE, B_RECOMPUTE, B_BF16, B_HALF_BATCH, B_QUARTER_BATCH, B_ONE, B_NONE };

/* The chooser, case by case: the first configuration that fits, in the
 * job's order, and never a remedy the job does not list. */
START_TEST(test_choose_table) {
  static const struct {
    const char *what;
    td_remedy remedies[TD_MAX_REMEDIES];
    int nremedies;
    uint32_t min_mb, cap;
    int budget;
    int64_t delta;
    int rc;
    uint32_t micro_batch, accumulation, shrink; /* 0: below the batch, not checked */
    td_precision prec;
    bool recompute;
    unsigned applied;
  } cases[] = {
      {"fits whole", {RA}, 1, 1, 0, B_WHOLE, 0, 0, 1024, 1, 1, TD_PREC_FP32, false, 0},
      {"fits whole, no remedy listed", {0}, 0, 0, 0, B_WHOLE, 0, 0, 1024, 1, 1, TD_PREC_FP32,
       false, 0},
      /* 1023 fits, but 1008 is whole 16-row blocks (td_plan.bit_identical) */
      {"a byte short: accumulate", {RA, RR, RH}, 3, 1, 0, B_WHOLE, -1, 0, 1008, 2, 1, TD_PREC_FP32,
       false, RM(ACCUMULATE)},
      {"recompute fits whole", {RR}, 1, 0, 0, B_RECOMPUTE, 0, 0, 1024, 1, 1, TD_PREC_FP32, true,
       RM(RECOMPUTE)},
      {"recompute first in the job's order", {RR, RA}, 2, 1, 0, B_RECOMPUTE, 0, 0, 1024, 1, 1,
       TD_PREC_FP32, true, RM(RECOMPUTE)},
      {"accumulate first in the job's order", {RA, RR}, 2, 1, 0, B_RECOMPUTE, 0, 0, 0, 0, 1,
       TD_PREC_FP32, false, RM(ACCUMULATE)},
      {"bf16 fits whole", {RH}, 1, 0, 0, B_BF16, 0, 0, 1024, 1, 1, TD_PREC_BF16, false, RM(BF16)},
      {"fp16 fits whole", {RF}, 1, 0, 0, B_BF16, 0, 0, 1024, 1, 1, TD_PREC_FP16, false, RM(FP16)},
      {"the first 16-bit remedy listed", {RH, RF}, 2, 0, 0, B_BF16, 0, 0, 1024, 1, 1, TD_PREC_BF16,
       false, RM(BF16)},
      {"shrink: two updates of half", {RS}, 1, 0, 0, B_HALF_BATCH, 0, 0, 512, 1, 2, TD_PREC_FP32,
       false, RM(SHRINK)},
      {"shrink after all else, below min_micro_batch", {RS, RA}, 2, 512, 0, B_QUARTER_BATCH, 0, 0,
       256, 1, 4, TD_PREC_FP32, false, RM(SHRINK)},
      {"shrink with recompute applied", {RS, RR}, 2, 0, 0, B_ONE, 0, 0, 0, 1, 0, TD_PREC_FP32,
       true, RM(SHRINK) | RM(RECOMPUTE)},
      {"capped", {RA}, 1, 1, 10, B_WHOLE, 0, 0, 10, 103, 1, TD_PREC_FP32, false, RM(ACCUMULATE)},
      {"cap below min_micro_batch", {RA}, 1, 16, 10, B_WHOLE, 0,
       TD_ENOFIT, 0, 0, 0, TD_PREC_FP32, false, 0},
      {"nothing allowed, a byte short", {0}, 0, 0, 0, B_WHOLE, -1,
       TD_ENOFIT, 0, 0, 0, TD_PREC_FP32, false, 0},
      {"recompute not listed", {RA}, 1, 1024, 0, B_RECOMPUTE, 0,
       TD_ENOFIT, 0, 0, 0, TD_PREC_FP32, false, 0},
      {"bf16 not listed", {RA}, 1, 1024, 0, B_BF16, 0,
       TD_ENOFIT, 0, 0, 0, TD_PREC_FP32, false, 0},
      {"shrink not listed", {RA, RR, RH}, 3, 1024, 0, B_HALF_BATCH, 0,
       TD_ENOFIT, 0, 0, 0, TD_PREC_FP32, false, 0},
      {"nothing fits", {RA, RR, RH, RS}, 4, 1, 0, B_NONE, 0,
       TD_ENOFIT, 0, 0, 0, TD_PREC_FP32, false, 0},
  };
  td_jobspec s;
  td_plan ref[B_NONE + 1];

  chooser_spec(&s, NULL, 0);
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_FP32, 0, &ref[B_WHOLE]), 0);
  s.recompute = 1;
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_FP32, 0, &ref[B_RECOMPUTE]), 0);
  s.recompute = 0;
  ck_assert_int_eq(td_plan_compute(&s, 1024, TD_PREC_BF16, 0, &ref[B_BF16]), 0);
  ck_assert_int_eq(td_plan_compute(&s, 512, TD_PREC_FP32, 0, &ref[B_HALF_BATCH]), 0);
  ck_assert_int_eq(td_plan_compute(&s, 256, TD_PREC_FP32, 0, &ref[B_QUARTER_BATCH]), 0);
  ck_assert_int_eq(td_plan_compute(&s, 1, TD_PREC_FP32, 0, &ref[B_ONE]), 0);
  ref[B_NONE] = ref[B_ONE];
  ref[B_NONE].total = 4096;
  /* what the cases rely on */
  ck_assert_uint_lt(ref[B_RECOMPUTE].total, ref[B_WHOLE].total);
  ck_assert_uint_lt(ref[B_BF16].total, ref[B_WHOLE].total);

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_plan_choice c, want;
    unsigned allowed = 0;

    chooser_spec(&s, cases[i].remedies, cases[i].nremedies);
    s.min_micro_batch = cases[i].min_mb;
    memset(&c, 0xAB, sizeof(c));
    ck_assert_msg(td_plan_choose(&s, ref[cases[i].budget].total + (uint64_t)cases[i].delta, 0,
                                 cases[i].cap ? cases[i].cap : UINT32_MAX, &c) == cases[i].rc,
                  "%s", cases[i].what);
    if (cases[i].rc < 0) {
      ck_assert_msg(c.plan.micro_batch == 0xABABABABu, "%s: written on failure", cases[i].what);
      continue;
    }
    for (int k = 0; k < s.nremedies; k++)
      allowed |= 1u << s.remedies[k];
    ck_assert_msg((c.remedies & ~allowed) == 0, "%s: a remedy the job does not list",
                  cases[i].what);
    ck_assert_msg(c.remedies == cases[i].applied, "%s: remedies %#x", cases[i].what,
                  c.remedies);
    ck_assert_msg(c.plan.total <= ref[cases[i].budget].total + (uint64_t)cases[i].delta, "%s",
                  cases[i].what);
    if (cases[i].micro_batch != 0)
      ck_assert_msg(c.plan.micro_batch == cases[i].micro_batch, "%s: micro-batch %u",
                    cases[i].what, c.plan.micro_batch);
    else
      ck_assert_msg(c.plan.micro_batch < 1024, "%s", cases[i].what);
    if (cases[i].accumulation != 0)
      ck_assert_msg(c.plan.accumulation == cases[i].accumulation, "%s: accumulation %u",
                    cases[i].what, c.plan.accumulation);
    if (cases[i].shrink != 0)
      ck_assert_msg(c.plan.shrink == cases[i].shrink, "%s: shrink %u", cases[i].what,
                    c.plan.shrink);
    else
      ck_assert_msg(c.plan.shrink > 1 && 1024 % c.plan.shrink == 0 &&
                    c.plan.micro_batch == 1024 / c.plan.shrink, "%s", cases[i].what);
    ck_assert_int_eq(c.plan.precision, cases[i].prec);
    ck_assert_int_eq(c.plan.recompute, cases[i].recompute);
    /* the plan is that of its settings, byte for byte */
    ck_assert_int_eq(td_plan_at(&s, c.plan.micro_batch, c.plan.precision, c.plan.recompute,
                                c.plan.shrink, 0, &want.plan), 0);
    ck_assert_msg(want.plan.total == c.plan.total && want.plan.activations == c.plan.activations &&
                  want.plan.workspace == c.plan.workspace &&
                  want.plan.accumulation == c.plan.accumulation, "%s", cases[i].what);
    ck_assert_uint_eq(td_plan_remedies(&s, &c.plan), c.remedies);
  }
}
END_TEST

/* td_plan_smallest is the least budget the chooser takes: it fits there
 * and nothing fits a byte below. */
START_TEST(test_choose_smallest) {
  static const struct {
    td_remedy remedies[TD_MAX_REMEDIES];
    int nremedies;
    uint32_t min_mb;
  } cases[] = {
      {{0}, 0, 0}, {{RA}, 1, 1}, {{RA}, 1, 8}, {{RR}, 1, 0}, {{RH}, 1, 0}, {{RA, RH}, 2, 1},
      {{RS}, 1, 0}, {{RA, RR, RH, RS}, 4, 4}, {{RF, RR}, 2, 0},
  };
  td_jobspec s;

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_plan_choice least, c;

    chooser_spec(&s, cases[i].remedies, cases[i].nremedies);
    s.min_micro_batch = cases[i].min_mb;
    ck_assert_int_eq(td_plan_smallest(&s, 4096, &least), 0);
    ck_assert_int_eq(td_plan_choose(&s, least.plan.total, 4096, UINT32_MAX, &c), 0);
    ck_assert_msg(c.plan.total == least.plan.total, "case %zu", i);
    ck_assert_msg(td_plan_choose(&s, least.plan.total - 1, 4096, UINT32_MAX, &c) == TD_ENOFIT,
                  "case %zu", i);
  }
  /* with no remedy but accumulation it is the smallest micro-batch's plan */
  {
    td_plan_choice least;
    td_plan p;

    chooser_spec(&s, (const td_remedy[]){RA}, 1);
    s.min_micro_batch = 8;
    ck_assert_int_eq(td_plan_smallest(&s, 0, &least), 0);
    ck_assert_int_eq(td_plan_compute(&s, 8, TD_PREC_FP32, 0, &p), 0);
    ck_assert_uint_eq(least.plan.total, p.total);
    ck_assert_uint_eq(least.remedies, RM(ACCUMULATE));
  }
}
END_TEST

/* The worker re-plans through the same chooser: the model it builds for a
 * choice allocates exactly the chosen plan. */
START_TEST(test_choose_exact) {
  static const td_remedy remedies[] = {RR, RH, RS};
  td_jobspec s;
  td_plan half;
  td_plan_choice c;
  td_backend *be;
  td_model *m;
  td_mem_stats st;
  char err[256];

  chooser_spec(&s, remedies, 3);
  /* room for half the batch with every other remedy: shrunk in two */
  ck_assert_int_eq(td_plan_at(&s, 512, TD_PREC_BF16, true, 2, 0, &half), 0);
  ck_assert_int_eq(td_plan_choose(&s, half.total, 0, UINT32_MAX, &c), 0);
  ck_assert_uint_eq(c.plan.shrink, 2);
  ck_assert_int_eq(c.plan.precision, TD_PREC_BF16);
  ck_assert(c.plan.recompute);
  s.precision = c.plan.precision;
  s.recompute = c.plan.recompute;
  ck_assert_int_eq(td_backend_create("cpu0", c.plan.total, &be, err, sizeof(err)), 0);
  ck_assert_msg(td_model_create_as(be, &s, c.plan.micro_batch, c.plan.shrink, &m, err,
                                   sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(td_model_plan(m)->total, c.plan.total);
  ck_assert_uint_eq(td_model_effective_batch(m), 512);
  td_backend_mem(be, &st);
  ck_assert_uint_eq(st.peak, c.plan.total);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

static Suite *plan_suite(void) {
  Suite *s = suite_create("plan");
  TCase *tc = tcase_create("plan"), *exact = tcase_create("exact");

  tcase_add_test(tc, test_example_by_hand);
  tcase_add_test(tc, test_example_layout);
  tcase_add_test(tc, test_optimizer_state);
  tcase_add_test(tc, test_overflow);
  tcase_add_test(tc, test_invalid);
  tcase_add_test(tc, test_monotonic);
  tcase_add_test(tc, test_fit);
  tcase_add_test(tc, test_fit_overflow);
  tcase_add_test(tc, test_conv_overflow);
  tcase_add_test(tc, test_savings);
  tcase_add_test(tc, test_choose_table);
  tcase_add_test(tc, test_choose_smallest);
  suite_add_tcase(s, tc);
  tcase_add_test(exact, test_exact_example);
  tcase_add_test(exact, test_exact_shapes);
  tcase_add_test(exact, test_sample_dtypes);
  tcase_add_test(exact, test_conv_model);
  tcase_add_test(exact, test_sequence_model);
  tcase_add_test(exact, test_exact_examples);
  tcase_add_test(exact, test_exact_transformer);
  tcase_add_test(exact, test_choose_exact);
  tcase_add_loop_test(exact, test_exact_graphs, 0, 4);
  tcase_add_test(tc, test_graph_layout);
  tcase_set_timeout(exact, 120);
  suite_add_tcase(s, exact);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(plan_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
