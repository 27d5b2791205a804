/* The losses (kernels/lossrow.h through td_backend_loss) against PyTorch's
 * (tests/reference/losses.bin, made by gen_losses.py), the metrics they
 * count on hand-made rows (top-k with ties, binary cross-entropy's exact
 * match, the mean absolute error), and a model trained with each float
 * loss: a regression's MSE and a multi-label job's loss fall. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "model.h"
#include "refbin.h"
#include "util.h"

static td_backend *cpu(void) {
  td_backend *be;
  char err[256];

  ck_assert_msg(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)) == 0,
                "%s", err);
  return be;
}

/* The loss over rows x width logits on the CPU backend: stats[0..1] and
 * extra[0..1] as td_backend_loss adds them, the gradient into d (may be
 * NULL). */
static void run_loss(td_backend *be, const td_loss_cfg *cfg, const float *z, const void *t,
                     size_t tbytes, size_t rows, size_t width, float *d, float out[4]) {
  td_buf bz, bt, bd, bs;

  ck_assert_int_eq(td_backend_alloc(be, rows * width * 4, &bz), 0);
  ck_assert_int_eq(td_backend_alloc(be, rows * tbytes, &bt), 0);
  ck_assert_int_eq(td_backend_alloc(be, rows * width * 4, &bd), 0);
  ck_assert_int_eq(td_backend_alloc(be, 4 * sizeof(float), &bs), 0);
  td_backend_upload(be, bz.ptr, z, rows * width * 4);
  td_backend_upload(be, bt.ptr, t, rows * tbytes);
  td_backend_fill(be, bs.ptr, 4, 0.0f);
  td_backend_loss(be, cfg, bz.ptr, bt.ptr, rows, width, d != NULL ? bd.ptr : NULL, bs.ptr,
                  (float *)bs.ptr + 2);
  if (d != NULL)
    td_backend_download(be, d, bd.ptr, rows * width * 4);
  td_backend_download(be, out, bs.ptr, 4 * sizeof(float));
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_free(be, &bz);
  td_backend_free(be, &bt);
  td_backend_free(be, &bd);
  td_backend_free(be, &bs);
}

static double rms(const float *x, size_t n) {
  double s = 0;

  for (size_t i = 0; i < n; i++)
    s += (double)x[i] * x[i];
  return sqrt(s / (double)(n > 0 ? n : 1));
}

static void close_to(const char *what, const float *got, const float *want, size_t n) {
  double r = rms(want, n);

  for (size_t i = 0; i < n; i++)
    ck_assert_msg(fabs((double)got[i] - want[i]) <= 1e-5 * (fabs(want[i]) + r),
                  "%s[%zu]: got %.9g, want %.9g", what, i, (double)got[i], (double)want[i]);
}

/* One case of losses.bin: PyTorch's reduction 'sum' is our per-sample
 * loss (a mean over the row for bce, mse and mae) times the width; the
 * gradient of that sum is ours at grad_scale = width. */
static void check_case(td_backend *be, const ref_file *f, const char *kind, const char *name,
                       const td_loss_cfg *base) {
  char prefix[64];
  const ref_tensor *z, *t, *loss, *dz;
  td_loss_cfg cfg = *base;
  size_t rows, width;
  float *d, out[4], scaled;
  int32_t ids[64];
  const void *targets;
  size_t tbytes;

  snprintf(prefix, sizeof(prefix), "%s/%s/", kind, name);
  z = ref_get(f, prefix, "logits");
  t = ref_get(f, prefix, "targets");
  loss = ref_get(f, prefix, "loss");
  dz = ref_get(f, prefix, "dlogits");
  rows = z->dims[0];
  width = z->dims[1];
  if (cfg.kind == TD_LOSS_CROSS_ENTROPY && !cfg.soft) {
    ck_assert_uint_le(rows, TD_ARRAY_SIZE(ids));
    for (size_t r = 0; r < rows; r++)
      ids[r] = (int32_t)t->data[r];
    targets = ids, tbytes = sizeof(ids[0]);
  } else {
    ck_assert_uint_eq(t->n, rows * width);
    targets = t->data, tbytes = width * sizeof(float);
  }
  scaled = cfg.kind == TD_LOSS_CROSS_ENTROPY ? 1.0f : (float)width;
  cfg.grad_scale = scaled;
  d = malloc(rows * width * sizeof(float));
  ck_assert_ptr_nonnull(d);
  run_loss(be, &cfg, z->data, targets, tbytes, rows, width, d, out);
  out[0] *= scaled;
  close_to(prefix, out, loss->data, 1);
  close_to(prefix, d, dz->data, rows * width);
  free(d);
}

START_TEST(test_pytorch_reference) {
  td_backend *be = cpu();
  ref_file f;

  ref_open(&f, "losses.bin");
  check_case(be, &f, "bce", "labels", &(td_loss_cfg){.kind = TD_LOSS_BCE});
  check_case(be, &f, "bce", "soft", &(td_loss_cfg){.kind = TD_LOSS_BCE});
  check_case(be, &f, "mse", "a", &(td_loss_cfg){.kind = TD_LOSS_MSE});
  check_case(be, &f, "mse", "one", &(td_loss_cfg){.kind = TD_LOSS_MSE});
  check_case(be, &f, "mae", "a", &(td_loss_cfg){.kind = TD_LOSS_MAE});
  check_case(be, &f, "xent_soft", "probs",
             &(td_loss_cfg){.kind = TD_LOSS_CROSS_ENTROPY, .soft = 1});
  check_case(be, &f, "xent_soft", "onehot",
             &(td_loss_cfg){.kind = TD_LOSS_CROSS_ENTROPY, .soft = 1});
  check_case(be, &f, "xent", "ids", &(td_loss_cfg){.kind = TD_LOSS_CROSS_ENTROPY});
  ref_close(&f);
  td_backend_destroy(be);
}
END_TEST

/* One-hot soft targets are class ids: the same loss, gradient and counts. */
START_TEST(test_onehot_is_class_ids) {
  enum { R = 4, C = 5 };
  static const float z[R * C] = {0.1f, 2.0f, -1.0f, 0.5f, 0.0f,  3.0f, 3.0f, 1.0f, 0.0f, -2.0f,
                                 -1.0f, -1.0f, -1.0f, -1.0f, 4.0f, 0.3f, 0.2f, 0.1f, 0.0f, 0.4f};
  static const int32_t ids[R] = {1, 2, 4, 0};
  float onehot[R * C] = {0}, da[R * C], db[R * C], a[4], b[4];
  td_backend *be = cpu();

  for (int r = 0; r < R; r++)
    onehot[r * C + ids[r]] = 1.0f;
  run_loss(be, &(td_loss_cfg){.kind = TD_LOSS_CROSS_ENTROPY, .grad_scale = 0.25f, .top_k = 2},
           z, ids, 4, R, C, da, a);
  run_loss(be, &(td_loss_cfg){.kind = TD_LOSS_CROSS_ENTROPY, .soft = 1, .grad_scale = 0.25f,
                              .top_k = 2},
           z, onehot, C * 4, R, C, db, b);
  close_to("loss", &b[0], &a[0], 1);
  close_to("dlogits", db, da, R * C);
  ck_assert_float_eq(a[1], b[1]);
  ck_assert_float_eq(a[2], b[2]);
  td_backend_destroy(be);
}
END_TEST

/* Top-k by hand.  Row 0: the label is the largest; row 1: third largest;
 * row 2: tied with a lower index for the largest (which ranks first, as
 * the first arg-max does), so it is second; row 3: tied with a higher
 * index, so it stays first; row 4: the smallest of 5. */
START_TEST(test_top_k_by_hand) {
  enum { R = 5, C = 5 };
  static const float z[R * C] = {
      9, 1, 2, 3, 4,  /* label 0: rank 1 */
      5, 4, 3, 2, 1,  /* label 2: rank 3 */
      7, 7, 0, 0, 0,  /* label 1: rank 2 (tie with 0 before it) */
      7, 7, 0, 0, 0,  /* label 0: rank 1 (tie with 1 after it) */
      1, 2, 3, 4, 0,  /* label 4: rank 5 */
  };
  static const int32_t ids[R] = {0, 2, 1, 0, 4};
  static const float want_topk[] = {0, 2, 3, 4, 4, 5}; /* hits at k = 0..5 */
  td_backend *be = cpu();
  float out[4];

  for (uint32_t k = 1; k <= C; k++) {
    run_loss(be, &(td_loss_cfg){.kind = TD_LOSS_CROSS_ENTROPY, .grad_scale = 1, .top_k = k},
             z, ids, 4, R, C, NULL, out);
    ck_assert_msg(out[2] == want_topk[k], "top-%u: %g hits, want %g", k, (double)out[2],
                  (double)want_topk[k]);
    ck_assert_float_eq(out[1], 2.0f); /* top-1 is the accuracy: rows 0 and 3 */
  }
  run_loss(be, &(td_loss_cfg){.kind = TD_LOSS_CROSS_ENTROPY, .grad_scale = 1}, z, ids, 4, R, C,
           NULL, out);
  ck_assert_float_eq(out[2], 0.0f); /* top_k 0: not counted */
  td_backend_destroy(be);
}
END_TEST

/* binary_cross_entropy's accuracy is the exact match of every output's
 * sign with its target >= 0.5; mse and mae count the mean absolute error
 * and no accuracy. */
START_TEST(test_metrics_by_hand) {
  enum { R = 3, C = 2 };
  static const float z[R * C] = {2.0f, -1.0f, 0.5f, 0.5f, -3.0f, -0.25f};
  static const float labels[R * C] = {1, 0, 1, 0, 0, 0};
  static const float t[R * C] = {1.5f, -1.0f, 0.0f, 1.5f, -3.0f, 0.75f};
  td_backend *be = cpu();
  float out[4];

  run_loss(be, &(td_loss_cfg){.kind = TD_LOSS_BCE, .grad_scale = 1}, z, labels, C * 4, R, C,
           NULL, out);
  ck_assert_float_eq(out[1], 2.0f); /* rows 0 and 2; row 1's second output is wrong */
  run_loss(be, &(td_loss_cfg){.kind = TD_LOSS_MSE, .grad_scale = 1}, z, t, C * 4, R, C, NULL,
           out);
  /* |d| per row: (0.5 + 0) / 2, (0.5 + 1) / 2, (0 + 1) / 2 */
  ck_assert_float_eq_tol(out[3], 0.25f + 0.75f + 0.5f, 1e-6f);
  /* squared: (0.25 + 0) / 2 + (0.25 + 1) / 2 + (0 + 1) / 2 */
  ck_assert_float_eq_tol(out[0], 0.125f + 0.625f + 0.5f, 1e-6f);
  ck_assert_float_eq(out[1], 0.0f);
  run_loss(be, &(td_loss_cfg){.kind = TD_LOSS_MAE, .grad_scale = 1}, z, t, C * 4, R, C, NULL,
           out);
  ck_assert_float_eq_tol(out[0], 1.5f, 1e-6f);
  ck_assert_float_eq_tol(out[3], 1.5f, 1e-6f);
  td_backend_destroy(be);
}
END_TEST

/* A model trained with a float loss: y = a few linear functions of x
 * (regression, three outputs), or x's thresholds (multi-label). */
static void train_falls(td_loss_kind loss, double *first, double *last, double *metric) {
  enum { B = 32, IN = 8, OUT = 3, STEPS = 300 };
  td_jobspec s;
  td_backend *be = cpu();
  td_model *m;
  float x[B * IN], y[B * OUT];
  char err[256];
  uint32_t seed = 7;

  memset(&s, 0, sizeof(s));
  snprintf(s.name, sizeof(s.name), "losses");
  s.input_rank = 1;
  s.input_dims[0] = IN;
  s.layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = 16};
  s.layers[1] = (td_layer){.type = TD_LAYER_RELU};
  s.layers[2] = (td_layer){.type = TD_LAYER_DENSE, .units = OUT};
  s.nlayers = 3;
  s.batch_size = B;
  s.epochs = 1;
  s.seed = 3;
  s.norm_std = 1.0f;
  s.sample_dtype = TD_DTYPE_F32;
  s.opt = (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f,
                         .eps = 1e-8f};
  s.schedule = (td_schedule){.kind = TD_SCHED_CONSTANT};
  s.loss_scale = td_lossscale_defaults();
  s.min_micro_batch = 1;
  s.remedies[0] = TD_REMEDY_ACCUMULATE;
  s.nremedies = 1;
  s.loss = loss;
  ck_assert_msg(td_model_create(be, &s, B, &m, err, sizeof(err)) == 0, "%s", err);
  for (int step = 0; step < STEPS; step++) {
    td_step_stats st;

    for (int i = 0; i < B; i++) {
      for (int j = 0; j < IN; j++) {
        seed = seed * 1103515245u + 12345u;
        x[i * IN + j] = (float)((seed >> 8) % 2000) / 1000.0f - 1.0f;
      }
      for (int o = 0; o < OUT; o++) {
        float v = x[i * IN + o] - 0.5f * x[i * IN + o + 3] + 0.25f;

        y[i * OUT + o] = loss == TD_LOSS_BCE ? (v > 0.0f ? 1.0f : 0.0f) : v;
      }
    }
    ck_assert_msg(td_model_train_step(m, x, y, B, &st) == 0, "%s", td_model_error(m));
    if (step < 10)
      *first += st.loss_sum / B / 10;
    if (step >= STEPS - 10) {
      *last += st.loss_sum / B / 10;
      *metric += (loss == TD_LOSS_BCE ? st.correct : st.abs_sum) / (double)B / 10;
    }
  }
  td_model_destroy(m);
  td_backend_destroy(be);
}

START_TEST(test_regression_mse_falls) {
  double first = 0, last = 0, mae = 0;

  train_falls(TD_LOSS_MSE, &first, &last, &mae);
  ck_assert_msg(last < first / 10, "MSE went from %g to %g", first, last);
  ck_assert_msg(mae > 0 && mae < 0.2, "MAE at the end %g", mae);
}
END_TEST

START_TEST(test_regression_mae_falls) {
  double first = 0, last = 0, mae = 0;

  train_falls(TD_LOSS_MAE, &first, &last, &mae);
  ck_assert_msg(last < first / 3, "MAE went from %g to %g", first, last);
  ck_assert_double_eq_tol(mae, last, 1e-4); /* MAE's loss is its metric */
}
END_TEST

START_TEST(test_multilabel_bce_falls) {
  double first = 0, last = 0, exact = 0;

  train_falls(TD_LOSS_BCE, &first, &last, &exact);
  ck_assert_msg(last < first / 2, "BCE went from %g to %g", first, last);
  ck_assert_msg(exact > 0.8, "exact-match accuracy at the end %g", exact);
}
END_TEST

/* A float target that is not finite never reaches the model: the loader
 * refuses it; the model refuses a class id out of range. */
START_TEST(test_class_id_out_of_range) {
  td_jobspec s;
  td_backend *be = cpu();
  td_model *m;
  td_step_stats st;
  float x[2 * 4] = {0};
  int32_t ids[2] = {1, 300};
  char err[256];

  memset(&s, 0, sizeof(s));
  s.input_rank = 1;
  s.input_dims[0] = 4;
  s.layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = 300};
  s.nlayers = 1;
  s.batch_size = 2;
  s.epochs = 1;
  s.norm_std = 1.0f;
  s.sample_dtype = TD_DTYPE_F32;
  s.opt = (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.1f};
  s.schedule = (td_schedule){.kind = TD_SCHED_CONSTANT};
  s.loss_scale = td_lossscale_defaults();
  s.min_micro_batch = 1;
  ck_assert_msg(td_model_create(be, &s, 2, &m, err, sizeof(err)) == 0, "%s", err);
  ck_assert_int_eq(td_model_eval(m, x, ids, 2, &st), TD_EDATA);
  ck_assert_msg(strstr(td_model_error(m), "label 300 of sample 1") != NULL, "%s",
                td_model_error(m));
  ids[1] = 299; /* more than 256 classes */
  ck_assert_int_eq(td_model_eval(m, x, ids, 2, &st), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

int main(void) {
  Suite *s = suite_create("losses");
  TCase *tc = tcase_create("losses");
  SRunner *sr;
  int failed;

  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_pytorch_reference);
  tcase_add_test(tc, test_onehot_is_class_ids);
  tcase_add_test(tc, test_top_k_by_hand);
  tcase_add_test(tc, test_metrics_by_hand);
  tcase_add_test(tc, test_regression_mse_falls);
  tcase_add_test(tc, test_regression_mae_falls);
  tcase_add_test(tc, test_multilabel_bce_falls);
  tcase_add_test(tc, test_class_id_out_of_range);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
