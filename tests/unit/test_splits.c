/* Bit-identical training under any split (kernels/backend.h: determinism):
 * a batch cut into micro-batches of whole 16-row blocks, a different cut
 * at every step chosen at random, gives the whole batch's gradients and
 * weights to the bit, for every layer type (BatchNorm excepted; the
 * sequence layers on a model of their own) and optimiser, in fp32 and
 * mixed precision; and neither the number of the CPU backend's lanes nor
 * OpenBLAS's thread count changes a bit. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "lossscale.h"
#include "model.h"
#include "plan.h"
#include "util.h"

#define BATCH 48 /* three blocks */
#define STEPS 6

typedef enum { NET_MLP, NET_CNN, NET_LN, NET_SEQ, NET_GRAPH, NET_TF } net_kind;

/* MLP: dense relu dense relu dense.  CNN (with dropout): conv relu maxpool
 * conv relu avgpool flatten dense gelu dropout dense.  LN: dense layernorm
 * gelu dense.  SEQ, on a sequence [12, 12]: conv1d tanh conv1d (strided)
 * sigmoid softmax global_avg_pool dense.  GRAPH: two residual conv blocks
 * (the second's input feeds a conv and the add), and a head that
 * concatenates the flattened map with a dense layer of it.  TF, a
 * transformer block on the 144 bytes as token ids: embedding pos_embedding
 * layernorm attention (causal) dense gelu dropout dense flatten dense. */
static void spec_of(td_jobspec *s, net_kind net, td_opt_kind opt, td_precision prec) {
  static const td_layer mlp[] = {
      {.type = TD_LAYER_DENSE, .units = 40}, {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_DENSE, .units = 24}, {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_DENSE, .units = 10},
  };
  static const td_layer cnn[] = {
      {.type = TD_LAYER_CONV2D, .filters = 6, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_MAXPOOL2D, .kernel = 2, .stride = 2},
      {.type = TD_LAYER_CONV2D, .filters = 8, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_AVGPOOL2D, .kernel = 2, .stride = 2},
      {.type = TD_LAYER_FLATTEN},
      {.type = TD_LAYER_DENSE, .units = 20},
      {.type = TD_LAYER_GELU},
      {.type = TD_LAYER_DROPOUT, .p = 0.25f},
      {.type = TD_LAYER_DENSE, .units = 10},
  };
  static const td_layer ln[] = {
      {.type = TD_LAYER_DENSE, .units = 32}, {.type = TD_LAYER_LAYERNORM},
      {.type = TD_LAYER_GELU},               {.type = TD_LAYER_DENSE, .units = 10},
  };
  static const td_layer seq[] = {
      {.type = TD_LAYER_CONV1D, .filters = 8, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_TANH},
      {.type = TD_LAYER_CONV1D, .filters = 6, .kernel = 3, .stride = 2},
      {.type = TD_LAYER_SIGMOID},
      {.type = TD_LAYER_SOFTMAX},
      {.type = TD_LAYER_GLOBAL_AVG_POOL},
      {.type = TD_LAYER_DENSE, .units = 10},
  };
  static const td_layer graph[] = {
      {.type = TD_LAYER_CONV2D, .filters = 6, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_CONV2D, .filters = 6, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_ADD, .inputs = {2, 4}, .ninputs = 2},
      {.type = TD_LAYER_CONV2D, .filters = 6, .kernel = 3, .stride = 1, .padding = 1},
      {.type = TD_LAYER_ADD, .inputs = {5, 6}, .ninputs = 2},
      {.type = TD_LAYER_MAXPOOL2D, .kernel = 2, .stride = 2},
      {.type = TD_LAYER_FLATTEN},
      {.type = TD_LAYER_DENSE, .units = 20},
      {.type = TD_LAYER_GELU},
      {.type = TD_LAYER_CONCAT, .inputs = {9, 11}, .ninputs = 2},
      {.type = TD_LAYER_DROPOUT, .p = 0.25f},
      {.type = TD_LAYER_DENSE, .units = 10},
  };
  static const td_layer tf[] = {
      {.type = TD_LAYER_EMBEDDING, .vocab = 256, .dim = 8},
      {.type = TD_LAYER_POS_EMBEDDING},
      {.type = TD_LAYER_LAYERNORM},
      {.type = TD_LAYER_ATTENTION, .heads = 2, .causal = 1},
      {.type = TD_LAYER_DENSE, .units = 16},
      {.type = TD_LAYER_GELU},
      {.type = TD_LAYER_DROPOUT, .p = 0.25f},
      {.type = TD_LAYER_DENSE, .units = 8},
      {.type = TD_LAYER_FLATTEN},
      {.type = TD_LAYER_DENSE, .units = 10},
  };
  const td_layer *l = net == NET_MLP     ? mlp
                       : net == NET_CNN   ? cnn
                       : net == NET_LN    ? ln
                       : net == NET_SEQ   ? seq
                       : net == NET_GRAPH ? graph
                                          : tf;
  int n = net == NET_MLP     ? (int)TD_ARRAY_SIZE(mlp)
          : net == NET_CNN   ? (int)TD_ARRAY_SIZE(cnn)
          : net == NET_LN    ? (int)TD_ARRAY_SIZE(ln)
          : net == NET_SEQ   ? (int)TD_ARRAY_SIZE(seq)
          : net == NET_GRAPH ? (int)TD_ARRAY_SIZE(graph)
                             : (int)TD_ARRAY_SIZE(tf);

  memset(s, 0, sizeof(*s));
  snprintf(s->name, sizeof(s->name), "bitid");
  s->input_rank = 3;
  s->input_dims[0] = 1;
  s->input_dims[1] = s->input_dims[2] = 12;
  if (net == NET_SEQ) { /* [12, 12]: 12 positions of 12 features */
    s->input_rank = 2;
    s->input_seq = 1;
    s->input_dims[0] = s->input_dims[1] = 12;
  }
  memcpy(s->layers, l, (size_t)n * sizeof(*l));
  s->nlayers = n;
  s->batch_size = BATCH;
  s->epochs = 1;
  s->seed = 5;
  s->norm_mean = 0.3f;
  s->norm_std = 0.35f;
  s->opt = opt == TD_OPT_ADAM ? (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-3f, .beta1 = 0.9f,
                                               .beta2 = 0.999f, .eps = 1e-8f}
           : opt == TD_OPT_ADAMW
               ? (td_optimizer){.kind = TD_OPT_ADAMW, .lr = 1e-3f, .beta1 = 0.9f,
                                .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f}
               : (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.05f, .momentum = 0.9f,
                                .nesterov = 1};
  s->schedule = (td_schedule){.kind = TD_SCHED_CONSTANT};
  s->precision = prec;
  s->loss_scale = td_lossscale_defaults();
  s->loss_scale.enabled = prec == TD_PREC_FP16;
  s->clip_grad_norm = 1.0f;
  if (net == NET_TF) { /* a sequence of 144 ids, taken as they are */
    s->input_rank = 1;
    s->input_dims[0] = 144;
    s->sample_dtype = TD_DTYPE_U8;
    s->norm_mean = 0.0f;
    s->norm_std = 1.0f;
  }
  s->min_micro_batch = 1;
  s->remedies[0] = TD_REMEDY_ACCUMULATE;
  s->nremedies = 1;
}

/* Step k's samples; the last step's batch is short (a tail block of 8). */
static uint32_t batch(int k, uint8_t *px, int32_t *lb) {
  uint32_t n = k == STEPS - 1 ? BATCH - 8 : BATCH;

  for (uint32_t i = 0; i < n * 144; i++)
    px[i] = (uint8_t)((i + 977u * (uint32_t)k) * 2654435761u >> 13);
  for (uint32_t i = 0; i < n; i++)
    lb[i] = (uint8_t)((i * 7 + (uint32_t)k) % 10);
  return n;
}

/* Step k's float targets (every loss but cross_entropy over class ids),
 * 10 a sample: 0 or 1 for binary_cross_entropy, a probability row for soft
 * cross_entropy, values around the outputs' scale for mse and mae. */
static void float_targets(int k, const td_jobspec *s, uint32_t n, float *t) {
  for (uint32_t i = 0; i < n; i++) {
    float sum = 0.0f;

    for (uint32_t c = 0; c < 10; c++) {
      uint32_t h = (i * 31u + c * 7u + (uint32_t)k) * 2654435761u >> 16;

      t[i * 10 + c] = s->loss == TD_LOSS_BCE ? (float)(h & 1) : (float)(h % 1000) / 1000.0f;
      sum += t[i * 10 + c];
    }
    if (s->soft_targets)
      for (uint32_t c = 0; c < 10; c++)
        t[i * 10 + c] /= sum;
  }
}

typedef struct trace {
  float *grads[STEPS], *params;
  double loss[STEPS];
  double metric[STEPS]; /* the metrics' sums together */
  uint64_t n;
} trace;

static void trace_free(trace *t) {
  for (int k = 0; k < STEPS; k++)
    free(t->grads[k]);
  free(t->params);
}

/* STEPS steps; before each, the micro-batch is the whole batch (seed 0) or
 * a random whole number of blocks (another seed).  The gradients of each
 * step and the final weights go to t. */
static void run(const td_jobspec *s, unsigned seed, trace *t) {
  uint8_t px[BATCH * 144];
  int32_t lb[BATCH];
  float tf[BATCH * 10];
  const void *tg = td_jobspec_target(s).dtype == TD_DTYPE_F32 ? (const void *)tf : lb;
  td_backend *be;
  td_model *m;
  char err[256];

  memset(t, 0, sizeof(*t));
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)), 0);
  ck_assert_msg(td_model_create(be, s, BATCH, &m, err, sizeof(err)) == 0, "%s", err);
  t->n = td_model_nparams(m);
  for (int k = 0; k < STEPS; k++) {
    uint32_t n = batch(k, px, lb);
    td_step_stats st;

    float_targets(k, s, n, tf);
    if (seed != 0) {
      uint32_t blocks = 1 + (uint32_t)(rand_r(&seed) % (BATCH / TD_BLOCK_ROWS));

      ck_assert_int_eq(td_model_replan(m, blocks * TD_BLOCK_ROWS), 0);
    }
    /* the gradients alone first, then the step (which rebuilds them) */
    ck_assert_msg(td_model_backward(m, px, tg, n, &st) == 0, "%s", td_model_error(m));
    t->grads[k] = malloc(t->n * sizeof(float));
    ck_assert_int_eq(td_model_get_grads(m, t->grads[k]), 0);
    t->loss[k] = st.loss_sum;
    t->metric[k] = st.abs_sum + st.correct + st.topk;
    ck_assert_msg(td_model_train_step(m, px, tg, n, &st) == 0, "%s", td_model_error(m));
  }
  t->params = malloc(t->n * sizeof(float));
  ck_assert_int_eq(td_model_get_params(m, t->params), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
}

static void assert_same(const trace *a, const trace *b, const char *what) {
  ck_assert_uint_eq(a->n, b->n);
  for (int k = 0; k < STEPS; k++) {
    ck_assert_msg(memcmp(a->grads[k], b->grads[k], a->n * sizeof(float)) == 0,
                  "%s: the gradients of step %d differ", what, k);
    ck_assert_msg(a->loss[k] == b->loss[k], "%s: the loss of step %d differs (%.9g, %.9g)",
                  what, k, a->loss[k], b->loss[k]);
    ck_assert_msg(a->metric[k] == b->metric[k], "%s: the metrics of step %d differ", what, k);
  }
  ck_assert_msg(memcmp(a->params, b->params, a->n * sizeof(float)) == 0,
                "%s: the weights differ", what);
}

/* Random splits per step, several sequences: each matches the whole batch. */
static void random_splits_loss(net_kind net, td_opt_kind opt, td_precision prec,
                               td_loss_kind loss, int soft) {
  td_jobspec s;
  trace ref, got;
  char what[64];

  spec_of(&s, net, opt, prec);
  s.loss = loss;
  s.soft_targets = soft;
  s.top_k = loss == TD_LOSS_CROSS_ENTROPY ? 3 : 0;
  run(&s, 0, &ref);
  for (unsigned seed = 1; seed <= 4; seed++) {
    snprintf(what, sizeof(what), "net %d opt %d prec %d seed %u", net, opt, prec, seed);
    run(&s, seed * 7919u, &got);
    assert_same(&got, &ref, what);
    trace_free(&got);
  }
  trace_free(&ref);
}

static void random_splits(net_kind net, td_opt_kind opt, td_precision prec) {
  random_splits_loss(net, opt, prec, TD_LOSS_CROSS_ENTROPY, 0);
}

START_TEST(test_mlp_adam) { random_splits(NET_MLP, TD_OPT_ADAM, TD_PREC_FP32); }
END_TEST
START_TEST(test_mlp_sgd) { random_splits(NET_MLP, TD_OPT_SGD, TD_PREC_FP32); }
END_TEST
START_TEST(test_cnn_adam) { random_splits(NET_CNN, TD_OPT_ADAM, TD_PREC_FP32); }
END_TEST
START_TEST(test_cnn_adamw_bf16) { random_splits(NET_CNN, TD_OPT_ADAMW, TD_PREC_BF16); }
END_TEST
START_TEST(test_cnn_sgd_fp16) { random_splits(NET_CNN, TD_OPT_SGD, TD_PREC_FP16); }
END_TEST
START_TEST(test_layernorm_adam) { random_splits(NET_LN, TD_OPT_ADAM, TD_PREC_FP32); }
END_TEST
START_TEST(test_seq_adam) { random_splits(NET_SEQ, TD_OPT_ADAM, TD_PREC_FP32); }
END_TEST
START_TEST(test_seq_sgd_bf16) { random_splits(NET_SEQ, TD_OPT_SGD, TD_PREC_BF16); }
END_TEST
START_TEST(test_graph_adam) { random_splits(NET_GRAPH, TD_OPT_ADAM, TD_PREC_FP32); }
END_TEST
START_TEST(test_graph_sgd_bf16) { random_splits(NET_GRAPH, TD_OPT_SGD, TD_PREC_BF16); }
END_TEST
START_TEST(test_transformer_adam) { random_splits(NET_TF, TD_OPT_ADAM, TD_PREC_FP32); }
END_TEST
START_TEST(test_transformer_adamw_bf16) { random_splits(NET_TF, TD_OPT_ADAMW, TD_PREC_BF16); }
END_TEST

/* The transformer's ops cut their work by samples across the lanes: the
 * lane count changes no bit. */
START_TEST(test_transformer_lanes) {
  static const char *const lanes[] = {"2", "3"};
  td_jobspec s;
  trace ref, got;

  spec_of(&s, NET_TF, TD_OPT_ADAM, TD_PREC_FP32);
  setenv("TRAIND_CPU_LANES", "1", 1);
  run(&s, 0, &ref);
  for (size_t i = 0; i < TD_ARRAY_SIZE(lanes); i++) {
    setenv("TRAIND_CPU_LANES", lanes[i], 1);
    run(&s, 5u + (unsigned)i, &got);
    assert_same(&got, &ref, lanes[i]);
    trace_free(&got);
  }
  trace_free(&ref);
  unsetenv("TRAIND_CPU_LANES");
}
END_TEST

/* Each loss, with its metrics, keeps the bits too. */
START_TEST(test_loss_soft) {
  random_splits_loss(NET_MLP, TD_OPT_ADAM, TD_PREC_FP32, TD_LOSS_CROSS_ENTROPY, 1);
}
END_TEST
START_TEST(test_loss_bce) {
  random_splits_loss(NET_MLP, TD_OPT_SGD, TD_PREC_FP32, TD_LOSS_BCE, 0);
}
END_TEST
START_TEST(test_loss_mse) {
  random_splits_loss(NET_CNN, TD_OPT_ADAM, TD_PREC_FP32, TD_LOSS_MSE, 0);
}
END_TEST
START_TEST(test_loss_mae_bf16) {
  random_splits_loss(NET_MLP, TD_OPT_ADAMW, TD_PREC_BF16, TD_LOSS_MAE, 0);
}
END_TEST

/* A split that is not whole blocks is not promised: the test above is not
 * vacuous, since such a split does change bits (here, on the MLP and the
 * sequence model). */
START_TEST(test_other_split_differs) {
  uint8_t px[BATCH * 144];
  int32_t lb[BATCH];
  float *a, *b;
  td_jobspec s;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  char err[256];
  uint64_t n;

  spec_of(&s, _i == 0 ? NET_MLP : NET_SEQ, TD_OPT_ADAM, TD_PREC_FP32);
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_model_create(be, &s, BATCH, &m, err, sizeof(err)), 0);
  n = td_model_nparams(m);
  a = malloc(n * sizeof(float));
  b = malloc(n * sizeof(float));
  batch(0, px, lb);
  ck_assert_int_eq(td_model_backward(m, px, lb, BATCH, &st), 0);
  ck_assert_int_eq(td_model_get_grads(m, a), 0);
  ck_assert_int_eq(td_model_replan(m, 7), 0);
  ck_assert_int_eq(td_model_backward(m, px, lb, BATCH, &st), 0);
  ck_assert_int_eq(td_model_get_grads(m, b), 0);
  ck_assert_msg(memcmp(a, b, n * sizeof(float)) != 0, "7-row micro-batches gave the same bits");
  free(a);
  free(b);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* The CPU backend's lane count (TRAIND_CPU_LANES) and OpenBLAS's thread
 * count (which the backend overrides) do not change a bit. */
START_TEST(test_thread_count) {
  static const char *const lanes[] = {"1", "2", "3", "5"};
  const td_precision precs[] = {TD_PREC_FP32, TD_PREC_BF16, TD_PREC_FP32};
  td_jobspec s;
  trace ref, got;

  for (size_t p = 0; p < TD_ARRAY_SIZE(precs); p++) {
    spec_of(&s, p < 2 ? NET_CNN : NET_SEQ, TD_OPT_ADAM, precs[p]);
    setenv("TRAIND_CPU_LANES", "1", 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    run(&s, 0, &ref);
    for (size_t i = 0; i < TD_ARRAY_SIZE(lanes); i++) {
      setenv("TRAIND_CPU_LANES", lanes[i], 1);
      run(&s, 3u + (unsigned)i, &got);
      assert_same(&got, &ref, lanes[i]);
      trace_free(&got);
    }
    trace_free(&ref);
  }
  unsetenv("TRAIND_CPU_LANES");
}
END_TEST

/* The plan chooser keeps a split micro-batch whole blocks where the job
 * allows it, and says when it cannot. */
START_TEST(test_plan_whole_blocks) {
  /* the planner's block is the backends' (common/ cannot include kernels/) */
  ck_assert_int_eq(TD_PLAN_BLOCK_ROWS, TD_BLOCK_ROWS);

  td_jobspec s;
  td_plan_choice c;
  td_plan at40, at20, at8, at5;

  spec_of(&s, NET_MLP, TD_OPT_ADAM, TD_PREC_FP32);
  s.batch_size = 128;
  ck_assert_int_eq(td_plan_compute(&s, 40, TD_PREC_FP32, 0, &at40), 0);
  ck_assert_int_eq(td_plan_compute(&s, 20, TD_PREC_FP32, 0, &at20), 0);
  ck_assert_int_eq(td_plan_compute(&s, 8, TD_PREC_FP32, 0, &at8), 0);
  ck_assert_int_eq(td_plan_compute(&s, 5, TD_PREC_FP32, 0, &at5), 0);
  ck_assert(!at40.bit_identical);
  ck_assert(!at20.bit_identical);
  /* room for 40: it takes 32 */
  ck_assert_int_eq(td_plan_choose(&s, at40.total, 0, UINT32_MAX, &c), 0);
  ck_assert_uint_eq(c.plan.micro_batch, 32);
  ck_assert(c.plan.bit_identical);
  ck_assert(td_plan_bit_identical(&s, &c.plan));
  /* room for 20: 16 */
  ck_assert_int_eq(td_plan_choose(&s, at20.total, 0, UINT32_MAX, &c), 0);
  ck_assert_uint_eq(c.plan.micro_batch, 16);
  ck_assert(c.plan.bit_identical);
  /* room for 8 only: it runs at 8, and says the bits change */
  ck_assert_int_eq(td_plan_choose(&s, at8.total, 0, UINT32_MAX, &c), 0);
  ck_assert_uint_eq(c.plan.micro_batch, 8);
  ck_assert(!c.plan.bit_identical);
  /* a job whose smallest micro-batch is 20 keeps 20 rather than refuse */
  s.min_micro_batch = 20;
  ck_assert_int_eq(td_plan_choose(&s, at40.total, 0, UINT32_MAX, &c), 0);
  ck_assert_uint_eq(c.plan.micro_batch, 32);
  ck_assert_int_eq(td_plan_choose(&s, at20.total + (at40.total - at20.total) / 4, 0,
                                  UINT32_MAX, &c), 0);
  ck_assert_uint_ge(c.plan.micro_batch, 20);
  ck_assert_uint_lt(c.plan.micro_batch, 32);
  ck_assert(!c.plan.bit_identical);
  /* the whole batch is always bit-identical, whatever its size */
  s.min_micro_batch = 1;
  s.batch_size = 100;
  ck_assert_int_eq(td_plan_compute(&s, 100, TD_PREC_FP32, 0, &at5), 0);
  ck_assert(at5.bit_identical);
  /* another precision than the job's is other maths */
  ck_assert_int_eq(td_plan_compute(&s, 100, TD_PREC_BF16, 0, &at5), 0);
  ck_assert(!td_plan_bit_identical(&s, &at5));
}
END_TEST

static Suite *bitid_suite(void) {
  Suite *s = suite_create("splits");
  TCase *tc = tcase_create("splits");

  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_mlp_adam);
  tcase_add_test(tc, test_mlp_sgd);
  tcase_add_test(tc, test_cnn_adam);
  tcase_add_test(tc, test_loss_soft);
  tcase_add_test(tc, test_loss_bce);
  tcase_add_test(tc, test_loss_mse);
  tcase_add_test(tc, test_loss_mae_bf16);
  tcase_add_test(tc, test_cnn_adamw_bf16);
  tcase_add_test(tc, test_cnn_sgd_fp16);
  tcase_add_test(tc, test_layernorm_adam);
  tcase_add_test(tc, test_seq_adam);
  tcase_add_test(tc, test_seq_sgd_bf16);
  tcase_add_test(tc, test_graph_adam);
  tcase_add_test(tc, test_graph_sgd_bf16);
  tcase_add_test(tc, test_transformer_adam);
  tcase_add_test(tc, test_transformer_adamw_bf16);
  tcase_add_test(tc, test_transformer_lanes);
  tcase_add_loop_test(tc, test_other_split_differs, 0, 2);
  tcase_add_test(tc, test_thread_count);
  tcase_add_test(tc, test_plan_whole_blocks);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(bitid_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
