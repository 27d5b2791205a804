/* The backend's optimiser ops on the CPU backend: SGD with momentum,
 * dampening and Nesterov, AdamW (and the L2 Adam), the global-norm clip, the
 * scale and finite-check ops of the loss scaler, and half-precision storage.
 * Against hand-computed values, and against PyTorch's own updates
 * (tests/reference/optim.bin, made by gen_optim.py). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "half.h"
#include "refbin.h"
#include "util.h"

/* A CPU backend and the buffers a test allocated, freed together. */
typedef struct bench {
  td_backend *be;
  td_buf b[32];
  int nb;
} bench;

static void open_cpu(bench *t) {
  char err[256];

  memset(t, 0, sizeof(*t));
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &t->be, err, sizeof(err)),
                   0);
}

static void close_cpu(bench *t) {
  for (int i = 0; i < t->nb; i++)
    td_backend_free(t->be, &t->b[i]);
  td_backend_destroy(t->be);
}

/* n floats on the device, a copy of src (zeros if src is NULL). */
static float *dev(bench *t, const float *src, size_t n) {
  td_buf *b = &t->b[t->nb++];

  ck_assert_int_lt(t->nb, 32);
  ck_assert_int_eq(td_backend_alloc(t->be, n * sizeof(float), b), 0);
  if (src != NULL)
    td_backend_upload(t->be, b->ptr, src, n * sizeof(float));
  return b->ptr;
}

static void get(bench *t, float *dst, const float *src, size_t n) {
  td_backend_download(t->be, dst, src, n * sizeof(float));
  ck_assert_int_eq(td_backend_sync(t->be), 0);
}

/* |got - want| <= tol (|want| + rms(want)): float rounding in a different
 * order, measured against the tensor's scale (a small element may be the
 * difference of large ones). */
static void expect_near(const char *what, const float *got, const float *want, size_t n,
                        double tol) {
  double rms = 0.0;

  for (size_t i = 0; i < n; i++)
    rms += (double)want[i] * want[i];
  rms = sqrt(rms / (double)(n > 0 ? n : 1));
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(fabs((double)got[i] - want[i]) <= tol * (fabs((double)want[i]) + rms),
                  "%s[%zu]: got %.9g, want %.9g", what, i, (double)got[i], (double)want[i]);
}

START_TEST(test_sgd_momentum_by_hand) {
  /* p 1, g 0.5, lr 0.1, momentum 0.9.
   * Nesterov: step 1 buf 0.5, d 0.5 + 0.45 -> p 0.905; step 2 buf 0.95,
   * d 0.5 + 0.855 -> p 0.7695.  Dampening 0.5: step 1 buf is d itself (0.5,
   * p 0.95); step 2 buf 0.45 + 0.25 = 0.7 -> p 0.88. */
  const float one = 1.0f, half = 0.5f;
  td_sgdm_hparams nest = {.lr = 0.1f, .momentum = 0.9f, .nesterov = true, .step = 1};
  td_sgdm_hparams damp = {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.5f, .step = 1};
  float got[2];
  bench t;

  open_cpu(&t);
  float *p = dev(&t, &one, 1), *q = dev(&t, &one, 1), *g = dev(&t, &half, 1);
  float *bp = dev(&t, NULL, 1), *bq = dev(&t, NULL, 1);
  td_backend_fill(t.be, bq, 1, 123.0f); /* step 1 ignores the old buffer */
  td_backend_sgd_momentum(t.be, p, g, bp, 1, &nest);
  td_backend_sgd_momentum(t.be, q, g, bq, 1, &damp);
  get(&t, &got[0], p, 1);
  get(&t, &got[1], q, 1);
  ck_assert_float_eq_tol(got[0], 0.905f, 1e-6f);
  ck_assert_float_eq_tol(got[1], 0.95f, 1e-6f);
  nest.step = damp.step = 2;
  td_backend_sgd_momentum(t.be, p, g, bp, 1, &nest);
  td_backend_sgd_momentum(t.be, q, g, bq, 1, &damp);
  get(&t, &got[0], p, 1);
  get(&t, &got[1], q, 1);
  ck_assert_float_eq_tol(got[0], 0.7695f, 1e-6f);
  ck_assert_float_eq_tol(got[1], 0.88f, 1e-6f);
  get(&t, &got[1], bq, 1);
  ck_assert_float_eq_tol(got[1], 0.7f, 1e-6f);
  close_cpu(&t);
}
END_TEST

START_TEST(test_sgd_momentum_matches_sgd) {
  /* Without dampening or Nesterov it is the existing SGD op, up to rounding. */
  enum { N = 101 };
  float p0[N], g[N], a[N], b[N], ba[N], bb[N];
  const td_sgd_hparams h = {.lr = 0.03f, .momentum = 0.7f, .weight_decay = 0.02f};
  bench t;

  for (int i = 0; i < N; i++) {
    p0[i] = sinf((float)i);
    g[i] = cosf(0.7f * (float)i);
  }
  open_cpu(&t);
  float *p = dev(&t, p0, N), *q = dev(&t, p0, N), *dg = dev(&t, g, N);
  float *bp = dev(&t, NULL, N), *bq = dev(&t, NULL, N);
  for (uint64_t s = 1; s <= 3; s++) {
    td_sgdm_hparams hm = {.lr = h.lr, .momentum = h.momentum, .weight_decay = h.weight_decay,
                          .step = s};
    td_backend_sgd(t.be, p, dg, bp, N, &h);
    td_backend_sgd_momentum(t.be, q, dg, bq, N, &hm);
  }
  get(&t, a, p, N);
  get(&t, b, q, N);
  get(&t, ba, bp, N);
  get(&t, bb, bq, N);
  /* the same sums, added in PyTorch's order: (g + wd p) first */
  expect_near("sgd param", b, a, N, 1e-6);
  expect_near("sgd momentum buffer", bb, ba, N, 1e-6);
  close_cpu(&t);
}
END_TEST

START_TEST(test_nesterov_refused) {
  const float one = 1.0f;
  const td_sgdm_hparams bad[] = {
      {.lr = 0.1f, .momentum = 0.9f, .dampening = 0.1f, .nesterov = true, .step = 1},
      {.lr = 0.1f, .momentum = 0.0f, .nesterov = true, .step = 1},
  };
  float got;
  bench t;

  open_cpu(&t);
  float *p = dev(&t, &one, 1), *g = dev(&t, &one, 1), *b = dev(&t, NULL, 1);
  for (size_t i = 0; i < TD_ARRAY_SIZE(bad); i++) {
    td_backend_sgd_momentum(t.be, p, g, b, 1, &bad[i]);
    ck_assert_int_eq(td_backend_sync(t.be), TD_EINVAL);
    ck_assert_ptr_nonnull(strstr(td_backend_error(t.be), "Nesterov"));
  }
  get(&t, &got, p, 1);
  ck_assert_float_eq(got, 1.0f);
  close_cpu(&t);
}
END_TEST

START_TEST(test_adamw_by_hand) {
  /* p 1, g 0.5, lr 0.1, weight decay 0.1: p = 0.99 first; m 0.05, v 0.00025,
   * bias-corrected 0.5 and 0.25, so the step is 0.1 * 0.5 / (0.5 + 1e-8). */
  const float one = 1.0f, half = 0.5f;
  const td_adam_hparams h = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                             .weight_decay = 0.1f, .step = 1};
  float got[3];
  bench t;

  open_cpu(&t);
  float *p = dev(&t, &one, 1), *g = dev(&t, &half, 1), *m = dev(&t, NULL, 1);
  float *v = dev(&t, NULL, 1);
  td_backend_adamw(t.be, p, g, m, v, 1, &h);
  get(&t, &got[0], p, 1);
  get(&t, &got[1], m, 1);
  get(&t, &got[2], v, 1);
  ck_assert_float_eq_tol(got[0], 0.89f, 1e-6f);
  ck_assert_float_eq_tol(got[1], 0.05f, 1e-7f);
  ck_assert_float_eq_tol(got[2], 0.00025f, 1e-8f); /* 1 - 0.999f is not 0.001 */
  close_cpu(&t);
}
END_TEST

START_TEST(test_failed_update_does_nothing) {
  /* An injected out-of-memory failure: the update runs not at all. */
  const float p0[4] = {1, 2, 3, 4}, g0[4] = {1, 1, 1, 1};
  const td_adam_hparams h = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                             .step = 1};
  float got[4];
  bench t;

  open_cpu(&t);
  float *p = dev(&t, p0, 4), *g = dev(&t, g0, 4), *m = dev(&t, NULL, 4), *v = dev(&t, NULL, 4);
  td_backend_inject_oom(t.be, 1);
  td_backend_adamw(t.be, p, g, m, v, 4, &h);
  ck_assert_int_eq(td_backend_sync(t.be), TD_EOOM);
  get(&t, got, p, 4);
  ck_assert_mem_eq(got, p0, sizeof(p0));
  close_cpu(&t);
}
END_TEST

START_TEST(test_norm_scale_finite) {
  const float x0[5] = {3, 4, 0, 0, 0}, y0[2] = {12, 0}, acc0 = 1.0f;
  float norm[2], got[5], flag;
  bench t;

  open_cpu(&t);
  float *x = dev(&t, x0, 5), *y = dev(&t, y0, 2), *acc = dev(&t, &acc0, 1);
  float *nb = dev(&t, NULL, 2), *fl = dev(&t, NULL, 1);

  /* sum of squares accumulates */
  td_backend_sumsq(t.be, x, 5, acc);
  get(&t, got, acc, 1);
  ck_assert_float_eq(got[0], 26.0f);

  /* clip: |(3, 4, 12)| = 13, so max_norm 6.5 halves (nearly) */
  float *xs[2] = {x, y};
  size_t ns[2] = {5, 2};
  td_backend_clip_grad_norm(t.be, xs, ns, 2, 6.5f, nb);
  get(&t, norm, nb, 2);
  ck_assert_float_eq(norm[0], 169.0f);
  ck_assert_float_eq_tol(norm[1], 6.5f / (13.0f + 1e-6f), 1e-7f);
  get(&t, got, x, 5);
  ck_assert_float_eq_tol(got[0], 1.5f, 1e-6f);
  ck_assert_float_eq_tol(got[1], 2.0f, 1e-6f);
  get(&t, got, y, 2);
  ck_assert_float_eq_tol(got[0], 6.0f, 1e-5f);

  /* a norm under max_norm leaves the values alone (factor exactly 1) */
  td_backend_clip_grad_norm(t.be, xs, ns, 2, 100.0f, nb);
  get(&t, norm, nb, 2);
  ck_assert_float_eq(norm[1], 1.0f);

  /* a NaN norm gives a NaN factor, as clip_grad_norm_ does */
  td_backend_fill(t.be, nb, 1, NAN);
  td_backend_clip_coef(t.be, nb, 1.0f);
  get(&t, norm, nb, 2);
  ck_assert(isnan(norm[1]));

  /* scale: alpha alone, then alpha times a device factor */
  td_backend_upload(t.be, x, x0, sizeof(x0));
  td_backend_scale(t.be, x, 5, 0.25f, NULL);
  get(&t, got, x, 5);
  ck_assert_float_eq(got[1], 1.0f);
  td_backend_fill(t.be, nb + 1, 1, 4.0f);
  td_backend_scale(t.be, x, 5, 0.5f, nb + 1);
  get(&t, got, x, 5);
  ck_assert_float_eq(got[1], 2.0f);

  /* check_finite: sets the flag for inf or NaN anywhere, never clears it */
  td_backend_check_finite(t.be, x, 5, fl);
  get(&t, &flag, fl, 1);
  ck_assert_float_eq(flag, 0.0f);
  close_cpu(&t);
}
END_TEST

START_TEST(test_check_finite_positions) {
  enum { N = 67 };
  static const float bad[] = {INFINITY, -INFINITY, NAN, -NAN};
  float x0[N], flag;
  bench t;

  open_cpu(&t);
  float *x = dev(&t, NULL, N), *fl = dev(&t, NULL, 1);
  for (int i = 0; i < N; i++)
    x0[i] = 1e38f * (i % 2 ? 1.0f : -1.0f); /* large but finite */
  td_backend_upload(t.be, x, x0, sizeof(x0));
  td_backend_check_finite(t.be, x, N, fl);
  get(&t, &flag, fl, 1);
  ck_assert_float_eq(flag, 0.0f);
  for (int pos = 0; pos < N; pos += 11) {
    for (size_t k = 0; k < TD_ARRAY_SIZE(bad); k++) {
      float y[N];
      memcpy(y, x0, sizeof(y));
      y[pos] = bad[k];
      td_backend_upload(t.be, x, y, sizeof(y));
      td_backend_fill(t.be, fl, 1, 0.0f);
      td_backend_check_finite(t.be, x, N, fl);
      get(&t, &flag, fl, 1);
      ck_assert_msg(flag == 1.0f, "%g at %d not found", (double)bad[k], pos);
      /* the flag stays set over a finite tensor */
      td_backend_upload(t.be, x, x0, sizeof(x0));
      td_backend_check_finite(t.be, x, N, fl);
      get(&t, &flag, fl, 1);
      ck_assert_float_eq(flag, 1.0f);
    }
  }
  close_cpu(&t);
}
END_TEST

START_TEST(test_half_storage) {
  enum { N = 4099 };
  float *x0 = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
  uint16_t *h = malloc(N * sizeof(uint16_t));
  td_half_kind kind = _i ? TD_HALF_BF16 : TD_HALF_F16;
  td_buf hb;
  bench t;

  ck_assert(x0 != NULL && back != NULL && h != NULL);
  for (int i = 0; i < N; i++)
    x0[i] = ldexpf(sinf((float)i * 0.37f), (i % 61) - 30);
  x0[0] = NAN;
  x0[1] = INFINITY;
  x0[2] = -0.0f;
  x0[3] = 70000.0f;
  open_cpu(&t);
  float *x = dev(&t, x0, N), *y = dev(&t, NULL, N);
  ck_assert_int_eq(td_backend_alloc(t.be, N * sizeof(uint16_t), &hb), 0);
  td_backend_to_half(t.be, kind, x, hb.ptr, N);
  td_backend_download(t.be, h, hb.ptr, N * sizeof(uint16_t));
  td_backend_from_half(t.be, kind, hb.ptr, y, N);
  get(&t, back, y, N);
  td_backend_round_half(t.be, kind, x, N); /* in place: the same values */
  for (int i = 0; i < N; i++) {
    uint16_t want = td_f32_to_half(kind, x0[i]);
    float wb = td_half_to_f32(kind, want);
    ck_assert_msg(h[i] == want, "%s(%a): %04x, want %04x", td_half_name(kind),
                  (double)x0[i], h[i], want);
    ck_assert_msg(memcmp(&back[i], &wb, sizeof(wb)) == 0, "%s %04x widened to %a",
                  td_half_name(kind), want, (double)back[i]);
  }
  get(&t, x0, x, N);
  ck_assert_mem_eq(x0 + 1, back + 1, (N - 1) * sizeof(float)); /* [0] is NaN */
  ck_assert(isnan(x0[0]));
  ck_assert((isinf(x0[3]) != 0) == (kind == TD_HALF_F16)); /* 70000 overflows fp16 only */
  ck_assert_uint_eq(h[0], TD_HALF_NAN);
  td_backend_free(t.be, &hb);
  close_cpu(&t);
  free(x0), free(back), free(h);
}
END_TEST

/* PyTorch's updates */

typedef enum { RUN_SGD, RUN_ADAM, RUN_ADAMW } run_kind;

/* The reference case names by the optimiser that made them. */
static run_kind kind_of(const char *name) {
  if (strncmp(name, "adamw", 5) == 0)
    return RUN_ADAMW;
  return strncmp(name, "adam", 4) == 0 ? RUN_ADAM : RUN_SGD;
}

static void run_case(const ref_file *f, const char *name) {
  char pre[64];
  const ref_tensor *prm, *p0, *grads, *traj;
  run_kind kind = kind_of(name);
  float *got;
  size_t n;
  bench t;

  snprintf(pre, sizeof(pre), "optim/%s/", name);
  prm = ref_get(f, pre, "params");
  p0 = ref_get(f, pre, "p0");
  grads = ref_get(f, pre, "grads");
  traj = ref_get(f, pre, "traj");
  n = p0->n;
  ck_assert_uint_eq(prm->n, 8);
  ck_assert_uint_eq(grads->n, traj->n);
  got = malloc(n * sizeof(float));
  ck_assert_ptr_nonnull(got);
  open_cpu(&t);
  float *p = dev(&t, p0->data, n), *g = dev(&t, NULL, n), *s1 = dev(&t, NULL, n);
  float *s2 = dev(&t, NULL, n);
  const float *v = prm->data; /* lr, momentum, dampening, wd, nesterov, beta1, beta2, eps */

  for (uint32_t step = 0; step < traj->dims[0]; step++) {
    const td_adam_hparams ah = {.lr = v[0], .beta1 = v[5], .beta2 = v[6], .eps = v[7],
                                .weight_decay = v[3], .step = step + 1};
    const td_sgdm_hparams sh = {.lr = v[0], .momentum = v[1], .dampening = v[2],
                                .weight_decay = v[3], .nesterov = v[4] != 0.0f,
                                .step = step + 1};
    char what[96];

    td_backend_upload(t.be, g, grads->data + step * n, n * sizeof(float));
    if (kind == RUN_SGD)
      td_backend_sgd_momentum(t.be, p, g, s1, n, &sh);
    else if (kind == RUN_ADAM)
      td_backend_adam(t.be, p, g, s1, s2, n, &ah);
    else
      td_backend_adamw(t.be, p, g, s1, s2, n, &ah);
    get(&t, got, p, n);
    snprintf(what, sizeof(what), "%s step %u param", name, step + 1);
    expect_near(what, got, traj->data + step * n, n, 1e-6);
  }
  /* the state PyTorch ends with */
  static const char *const state[][2] = {{"momentum_buffer", NULL}, {"exp_avg", "exp_avg_sq"}};
  for (int k = 0; k < 2; k++) {
    const char *sname = state[kind == RUN_SGD ? 0 : 1][k];
    const ref_tensor *want;
    char what[96];

    if (sname == NULL || (want = ref_find(f, pre, sname)) == NULL)
      continue;
    get(&t, got, k == 0 ? s1 : s2, n);
    snprintf(what, sizeof(what), "%s %s", name, sname);
    expect_near(what, got, want->data, n, 1e-6);
  }
  close_cpu(&t);
  free(got);
}

START_TEST(test_pytorch_optimisers) {
  char names[32][32];
  size_t ncases, seen[3] = {0};
  ref_file f;

  ref_open(&f, "optim.bin");
  ncases = ref_cases(&f, "optim/", names, 32);
  ck_assert_uint_ge(ncases, 9);
  for (size_t i = 0; i < ncases; i++) {
    run_case(&f, names[i]);
    seen[kind_of(names[i])]++;
  }
  ck_assert(seen[RUN_SGD] >= 5 && seen[RUN_ADAM] >= 2 && seen[RUN_ADAMW] >= 2);
  ref_close(&f);
}
END_TEST

START_TEST(test_pytorch_clip) {
  ref_file f;
  char names[8][32];
  size_t ncases;

  ref_open(&f, "optim.bin");
  ncases = ref_cases(&f, "clip/", names, 8);
  ck_assert_uint_ge(ncases, 3);
  for (size_t c = 0; c < ncases; c++) {
    char pre[48], gname[16], what[64];
    const ref_tensor *prm;
    float *xs[8], norm[2];
    size_t ns[8], count = 0;
    bench t;

    snprintf(pre, sizeof(pre), "clip/%s/", names[c]);
    prm = ref_get(&f, pre, "params"); /* max_norm, PyTorch's total norm */
    open_cpu(&t);
    float *nb = dev(&t, NULL, 2);
    for (; count < 8; count++) {
      const ref_tensor *g;
      snprintf(gname, sizeof(gname), "g%zu", count);
      if ((g = ref_find(&f, pre, gname)) == NULL)
        break;
      xs[count] = dev(&t, g->data, g->n);
      ns[count] = g->n;
    }
    ck_assert_uint_ge(count, 2);
    td_backend_clip_grad_norm(t.be, xs, ns, count, prm->data[0], nb);
    get(&t, norm, nb, 2);
    ck_assert_msg(fabs(sqrt(norm[0]) - prm->data[1]) <= 1e-6 * prm->data[1],
                  "case %s: total norm %.9g, PyTorch %.9g", names[c], sqrt(norm[0]),
                  (double)prm->data[1]);
    for (size_t j = 0; j < count; j++) {
      const ref_tensor *want;
      float *got = malloc(ns[j] * sizeof(float));
      ck_assert_ptr_nonnull(got);
      snprintf(gname, sizeof(gname), "out%zu", j);
      want = ref_get(&f, pre, gname);
      get(&t, got, xs[j], ns[j]);
      snprintf(what, sizeof(what), "clip %s %s", names[c], gname);
      expect_near(what, got, want->data, ns[j], 1e-6);
      free(got);
    }
    close_cpu(&t);
  }
  ref_close(&f);
}
END_TEST

int main(void) {
  Suite *s = suite_create("optim");
  TCase *hand = tcase_create("by_hand"), *torch = tcase_create("pytorch");
  SRunner *sr;
  int failed;

  tcase_add_test(hand, test_sgd_momentum_by_hand);
  tcase_add_test(hand, test_sgd_momentum_matches_sgd);
  tcase_add_test(hand, test_nesterov_refused);
  tcase_add_test(hand, test_adamw_by_hand);
  tcase_add_test(hand, test_failed_update_does_nothing);
  tcase_add_test(hand, test_norm_scale_finite);
  tcase_add_test(hand, test_check_finite_positions);
  tcase_add_loop_test(hand, test_half_storage, 0, 2);
  tcase_add_test(torch, test_pytorch_optimisers);
  tcase_add_test(torch, test_pytorch_clip);
  suite_add_tcase(s, hand);
  suite_add_tcase(s, torch);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
