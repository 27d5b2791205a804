/* Every backend op on the CPU backend (the reference) and on the CUDA
 * backend, from the same inputs, compared with a tolerance per precision;
 * the device facts (memory, probe, pinned uploads, out of memory); and the
 * plan's exactness: a model's measured peak against its memory plan.
 *
 * Exits 77 (skipped) where the build has no CUDA backend or no CUDA device
 * answers.  It runs on one GPU (written for an H100): `meson test -C BUILD
 * --suite gpu`, or tests/gpu/run.sh.  The device facts run first, each in
 * a Check child that makes its own CUDA context (the probe forks, and a
 * context does not survive fork); then the ops of all three precision
 * passes in this process, one context for them all (CK_FORK=yes: a child
 * per test).
 *
 * The ops run once per precision.  bf16 and fp16 are storage formats over
 * fp32 maths (td_backend_round_half): each input is rounded to the format
 * on both backends before the op, and each output after it, then compared
 * with that format's tolerance.
 *
 * Environment: TD_SOURCE_ROOT (the repository, for the example job),
 * TD_GPU_OUT (a directory: plan-exact.txt, the plan check's numbers, goes
 * there), TD_GPU_SELFTEST=1 (the "device" is cpu1: checks this program on
 * a machine without a GPU; the plan must then match exactly). */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "error.h"
#include "model.h"
#include "plan.h"
#include "td_config.h"
#include "util.h"

/* |dev - cpu| <= tol (|cpu| + rms(cpu)), per precision. */
static const struct {
  const char *name;
  double tol;
  bool half;
  td_half_kind kind;
} precisions[] = {
    {"fp32", 1e-4, false, TD_HALF_F16},
    {"bf16", 1e-2, true, TD_HALF_BF16},
    /* one fp16 ulp (2^-10 relative) can flip on top of the fp32 difference */
    {"fp16", 2e-3, true, TD_HALF_F16},
};
static size_t prec; /* this pass's row: main sets it, Check's children inherit it */

enum { NB = 2 }; /* backends: [0] cpu0, the reference; [1] cuda0 (cpu1 in the selftest) */
static const char *devices[NB] = {"cpu0", "cuda0"};
static bool selftest;

/* One tensor on both backends. */
typedef struct twin {
  td_buf b[NB];
  size_t n; /* elements (bytes for uint8 and workspaces) */
} twin;

typedef struct gpu {
  td_backend *be[NB];
  twin t[32];
  int nt;
  double tol;
} gpu;

#define P(t, b) ((float *)(t)->b[b].ptr)

static uint64_t rng_state = 777;

static float frand(void) { /* [-1, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rng_state >> 40) / 8388608.0 - 1.0);
}

static void gpu_open(gpu *g) {
  char err[256];

  memset(g, 0, sizeof(*g));
  g->tol = precisions[prec].tol;
  for (int b = 0; b < NB; b++)
    ck_assert_msg(td_backend_create(devices[b], TD_BUDGET_UNLIMITED, &g->be[b], err,
                                    sizeof(err)) == 0, "%s", err);
}

static void gpu_close(gpu *g) {
  for (int b = 0; b < NB; b++) {
    ck_assert_msg(td_backend_sync(g->be[b]) == 0, "%s", td_backend_error(g->be[b]));
    for (int i = 0; i < g->nt; i++)
      td_backend_free(g->be[b], &g->t[i].b[b]);
    td_backend_destroy(g->be[b]);
  }
}

/* bytes on each backend (bytes[b]), a copy of host where it is given. */
static twin *tw_alloc(gpu *g, const void *host, const uint64_t bytes[NB], size_t n) {
  twin *t;

  ck_assert_int_lt(g->nt, (int)TD_ARRAY_SIZE(g->t));
  t = &g->t[g->nt++];
  t->n = n;
  for (int b = 0; b < NB; b++) {
    ck_assert_int_eq(td_backend_alloc(g->be[b], bytes[b] > 0 ? bytes[b] : 4, &t->b[b]), 0);
    if (host != NULL)
      td_backend_upload(g->be[b], t->b[b].ptr, host, bytes[b]);
  }
  return t;
}

/* In a half-precision pass: t rounded to the format in place, on both. */
static void tw_round(gpu *g, twin *t) {
  if (!precisions[prec].half)
    return;
  for (int b = 0; b < NB; b++)
    td_backend_round_half(g->be[b], precisions[prec].kind, t->b[b].ptr, t->n);
}

/* Floats from host (zeros if NULL), as this pass's precision holds them. */
static twin *tw_floats(gpu *g, const float *host, size_t n) {
  const uint64_t bytes[NB] = {n * sizeof(float), n * sizeof(float)};
  twin *t = tw_alloc(g, host, bytes, n);

  if (host != NULL)
    tw_round(g, t);
  return t;
}

static twin *tw_rand(gpu *g, size_t n, float scale, float offset) {
  float *h = malloc((n > 0 ? n : 1) * sizeof(float));
  twin *t;

  ck_assert_ptr_nonnull(h);
  for (size_t i = 0; i < n; i++)
    h[i] = frand() * scale + offset;
  t = tw_floats(g, h, n);
  free(h);
  return t;
}

/* A shuffled ramp: no ties, so both backends pick the same max.  Kept
 * exact in every pass: rounding it to half precision would make ties. */
static twin *tw_distinct(gpu *g, size_t n) {
  float *h = malloc((n > 0 ? n : 1) * sizeof(float));
  twin *t;

  ck_assert_ptr_nonnull(h);
  for (size_t i = 0; i < n; i++)
    h[i] = ((float)i - (float)n / 2) / 64.0f;
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)(rng_state = rng_state * 6364136223846793005ull + 1) % i;
    float v = h[i - 1];
    h[i - 1] = h[j];
    h[j] = v;
  }
  const uint64_t bytes[NB] = {n * sizeof(float), n * sizeof(float)};
  t = tw_alloc(g, h, bytes, n);
  free(h);
  return t;
}

static twin *tw_zero(gpu *g, size_t n) { return tw_floats(g, NULL, n); }

/* The conv workspace each backend asks for d. */
static twin *tw_conv_work(gpu *g, const td_conv2d_desc *d) {
  uint64_t bytes[NB];

  for (int b = 0; b < NB; b++)
    ck_assert_msg(td_backend_conv2d_workspace(g->be[b], d, &bytes[b]) == 0, "%s: %s",
                  devices[b], td_backend_error(g->be[b]));
  ck_assert_uint_eq(bytes[0], td_conv2d_workspace_cpu(d)); /* the planner's CPU figure */
  return tw_alloc(g, NULL, bytes, 0);
}

/* Both backends' copies of t agree within the tolerance (in a half pass
 * after rounding t to the format, in place); equal values (infinities) and
 * NaNs on both sides agree. */
static void tw_expect(gpu *g, twin *t, const char *what) {
  float *h[NB];
  double s = 0.0, scale;
  size_t bad = 0, first = 0, finite = 0;

  tw_round(g, t);
  for (int b = 0; b < NB; b++) {
    h[b] = malloc((t->n > 0 ? t->n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(h[b]);
    td_backend_download(g->be[b], h[b], t->b[b].ptr, t->n * sizeof(float));
    ck_assert_msg(td_backend_sync(g->be[b]) == 0, "%s: %s: %s", what, devices[b],
                  td_backend_error(g->be[b]));
  }
  for (size_t i = 0; i < t->n; i++) {
    if (isfinite(h[0][i])) {
      s += (double)h[0][i] * h[0][i];
      finite++;
    }
  }
  scale = finite > 0 ? sqrt(s / (double)finite) + 1e-30 : 1.0;
  for (size_t i = 0; i < t->n; i++) {
    if (h[1][i] == h[0][i] || (isnan(h[0][i]) && isnan(h[1][i])))
      continue;
    if (fabs((double)h[1][i] - h[0][i]) <= g->tol * (fabs(h[0][i]) + scale))
      continue;
    if (bad++ == 0)
      first = i;
  }
  ck_assert_msg(bad == 0, "%s (%s): %zu of %zu elements differ; [%zu]: %s %.8g, %s %.8g", what,
                precisions[prec].name, bad, t->n, first, devices[0], (double)h[0][first],
                devices[1], (double)h[1][first]);
  free(h[0]);
  free(h[1]);
}

/* tw_expect, and in the fp32 pass the same bits: element-wise kernels
 * built with --fmad=false in the CPU backend's order of operations round
 * each step as the CPU does (meson.build), so an optimiser step does not
 * drift from the reference. */
static void tw_expect_exact(gpu *g, twin *t, const char *what) {
  float *h[NB];
  size_t first = t->n;

  tw_expect(g, t, what);
  if (precisions[prec].half)
    return;
  for (int b = 0; b < NB; b++) {
    h[b] = malloc((t->n > 0 ? t->n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(h[b]);
    td_backend_download(g->be[b], h[b], t->b[b].ptr, t->n * sizeof(float));
    ck_assert_int_eq(td_backend_sync(g->be[b]), 0);
  }
  for (size_t i = 0; i < t->n && first == t->n; i++)
    if (memcmp(&h[0][i], &h[1][i], sizeof(float)) != 0)
      first = i;
  ck_assert_msg(first == t->n, "%s: not the CPU's bits (fused multiply-adds?); [%zu]: %s %a, "
                "%s %a", what, first, devices[0], (double)h[0][first], devices[1],
                (double)h[1][first]);
  free(h[0]);
  free(h[1]);
}

START_TEST(test_sgemm) {
  const int m = 67, n = 45, k = 129;
  bool ta = _i & 1, tb = _i & 2;
  int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
  gpu g;

  gpu_open(&g);
  twin *a = tw_rand(&g, (size_t)(ta ? k : m) * lda, 1, 0);
  twin *bm = tw_rand(&g, (size_t)(tb ? n : k) * ldb, 1, 0);
  twin *c = tw_rand(&g, (size_t)m * ldc, 1, 0);
  for (int b = 0; b < NB; b++)
    td_backend_sgemm(g.be[b], ta, tb, m, n, k, 0.75f, P(a, b), lda, P(bm, b), ldb, -0.5f,
                     P(c, b), ldc);
  tw_expect(&g, c, "sgemm");
  gpu_close(&g);
}
END_TEST

/* More elements than one grid covers (65535 blocks of 256 threads), so the
 * grid-stride loops go round. */
enum { BIG = (1 << 24) + 4099 };

START_TEST(test_elementwise) {
  enum { R = 300, C = 70 };
  uint8_t *px = malloc(BIG);
  const uint64_t pxb[NB] = {BIG, BIG};
  gpu g;

  ck_assert_ptr_nonnull(px);
  for (size_t i = 0; i < BIG; i++)
    px[i] = (uint8_t)(i * 2654435761u >> 24);
  gpu_open(&g);
  twin *u8 = tw_alloc(&g, px, pxb, BIG), *x = tw_zero(&g, BIG), *y = tw_zero(&g, BIG);
  twin *dy = tw_rand(&g, BIG, 1, 0), *dx = tw_zero(&g, BIG);
  twin *m = tw_rand(&g, (size_t)R * C, 1, 0), *bias = tw_rand(&g, C, 1, 0);
  twin *db = tw_rand(&g, C, 1, 0), *f = tw_zero(&g, 1000);
  for (int b = 0; b < NB; b++) {
    td_backend_normalize_u8(g.be[b], u8->b[b].ptr, P(x, b), BIG, 0.286f, 0.353f);
    td_backend_relu_fwd(g.be[b], P(x, b), P(y, b), BIG);
    td_backend_relu_bwd(g.be[b], P(y, b), P(dy, b), P(dx, b), BIG);
    td_backend_bias_add(g.be[b], P(m, b), P(bias, b), R, C);
    td_backend_bias_grad(g.be[b], P(m, b), R, C, 1.0f, P(db, b));
    td_backend_fill(g.be[b], P(f, b), 1000, -3.25f);
  }
  tw_expect(&g, x, "normalize_u8");
  tw_expect(&g, y, "relu_fwd");
  tw_expect(&g, dx, "relu_bwd");
  tw_expect(&g, m, "bias_add");
  tw_expect(&g, db, "bias_grad");
  tw_expect(&g, f, "fill");
  gpu_close(&g);
  free(px);
}
END_TEST

START_TEST(test_gelu) {
  td_gelu_kind kind = _i ? TD_GELU_TANH : TD_GELU_ERF;
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, BIG, 5, 0), *y = tw_zero(&g, BIG), *dy = tw_rand(&g, BIG, 1, 0);
  twin *dx = tw_zero(&g, BIG);
  for (int b = 0; b < NB; b++) {
    td_backend_gelu_fwd(g.be[b], kind, P(x, b), P(y, b), BIG);
    td_backend_gelu_bwd(g.be[b], kind, P(x, b), P(dy, b), P(dx, b), BIG);
  }
  tw_expect(&g, y, "gelu_fwd");
  tw_expect(&g, dx, "gelu_bwd");
  gpu_close(&g);
}
END_TEST

/* The graph's joins: add, and copy2d's copy (a strided cudaMemcpy2D) and
 * sum (a kernel), each the CPU's bits. */
START_TEST(test_graph_ops) {
  const size_t rows = 4099, src_ld = 4103, dst_ld = 4111, cols = 4097;
  gpu g;

  gpu_open(&g);
  twin *a = tw_rand(&g, BIG, 1, 0), *bb = tw_rand(&g, BIG, 1, 0), *y = tw_zero(&g, BIG);
  twin *src = tw_rand(&g, rows * src_ld, 1, 0), *dst = tw_rand(&g, rows * dst_ld, 1, 0);
  twin *acc = tw_rand(&g, rows * dst_ld, 1, 0);
  for (int b = 0; b < NB; b++) {
    td_backend_add(g.be[b], P(a, b), P(bb, b), P(y, b), BIG);
    td_backend_add(g.be[b], P(y, b), P(a, b), P(a, b), BIG); /* in place */
    td_backend_copy2d(g.be[b], P(src, b), src_ld, P(dst, b), dst_ld, rows, cols, 0.0f);
    td_backend_copy2d(g.be[b], P(src, b), src_ld, P(acc, b), dst_ld, rows, cols, 1.0f);
  }
  tw_expect_exact(&g, y, "add");
  tw_expect_exact(&g, a, "add in place");
  tw_expect_exact(&g, dst, "copy2d");
  tw_expect_exact(&g, acc, "copy2d beta 1");
  gpu_close(&g);
}
END_TEST

START_TEST(test_dropout) {
  const size_t rows = 4099, cols = 4097; /* both past one grid */
  const td_dropout_key key = {.seed = 11, .layer = 2, .step = 1234567, .sample = 96};
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, rows * cols, 1, 2), *y = tw_zero(&g, rows * cols);
  for (int b = 0; b < NB; b++)
    td_backend_dropout(g.be[b], P(x, b), P(y, b), rows, cols, 0.25f, &key);
  g.tol = 0.0; /* the same hash drops the same elements, and x * scale is exact */
  tw_expect(&g, y, "dropout");
  gpu_close(&g);
}
END_TEST

START_TEST(test_softmax_xent) {
  enum { R = 3000, C = 10 };
  static const float smoothing[] = {0.0f, 0.1f};
  int32_t lab[R];
  const uint64_t lb[NB] = {sizeof(lab), sizeof(lab)};
  gpu g;

  for (int i = 0; i < R; i++)
    lab[i] = (int32_t)((unsigned)(frand() * 1000 + 1000) % C);
  gpu_open(&g);
  twin *z = tw_rand(&g, (size_t)R * C, 4, 0), *l = tw_alloc(&g, lab, lb, R);
  twin *dz = tw_zero(&g, (size_t)R * C), *st = tw_zero(&g, 2);
  for (size_t s = 0; s <= TD_ARRAY_SIZE(smoothing); s++) {
    for (int b = 0; b < NB; b++) {
      td_backend_fill(g.be[b], P(st, b), 2, 0.0f);
      if (s == TD_ARRAY_SIZE(smoothing)) /* the plain op */
        td_backend_softmax_xent(g.be[b], P(z, b), l->b[b].ptr, R, C, 0.5f, P(dz, b), P(st, b));
      else
        td_backend_softmax_xent_smooth(g.be[b], P(z, b), l->b[b].ptr, R, C, smoothing[s],
                                       1.0f / R, P(dz, b), P(st, b));
    }
    tw_expect(&g, dz, "softmax_xent dlogits");
    tw_expect(&g, st, "softmax_xent stats");
  }
  gpu_close(&g);
}
END_TEST

/* Every loss (kernels/lossrow.h) with its metrics: the float targets'
 * losses, soft cross-entropy and top-k, on the CUDA backend as on the CPU. */
START_TEST(test_losses) {
  enum { R = 3000, C = 10 };
  static const td_loss_cfg cfgs[] = {
      {.kind = TD_LOSS_BCE, .grad_scale = 1.0f / R},
      {.kind = TD_LOSS_MSE, .grad_scale = 1.0f / R},
      {.kind = TD_LOSS_MAE, .grad_scale = 1.0f / R},
      {.kind = TD_LOSS_CROSS_ENTROPY, .soft = 1, .grad_scale = 1.0f / R, .top_k = 3},
      {.kind = TD_LOSS_CROSS_ENTROPY, .grad_scale = 1.0f / R, .top_k = 5},
  };
  static const char *const names[] = {"bce dlogits", "mse dlogits", "mae dlogits",
                                      "soft xent dlogits", "xent top-5 dlogits"};
  static float t[R * C];
  static int32_t lab[R];
  const uint64_t tb[NB] = {sizeof(t), sizeof(t)}, lb[NB] = {sizeof(lab), sizeof(lab)};
  gpu g;

  for (int i = 0; i < R; i++) {
    lab[i] = (int32_t)((unsigned)(frand() * 1000 + 1000) % C);
    for (int c = 0; c < C; c++)
      t[i * C + c] = frand() * 0.5f + 0.5f;
  }
  gpu_open(&g);
  twin *z = tw_rand(&g, (size_t)R * C, 4, 0), *ft = tw_alloc(&g, t, tb, R * C);
  twin *ct = tw_alloc(&g, lab, lb, R);
  twin *dz = tw_zero(&g, (size_t)R * C), *st = tw_zero(&g, 4);
  for (size_t k = 0; k < TD_ARRAY_SIZE(cfgs); k++) {
    const int ids = cfgs[k].kind == TD_LOSS_CROSS_ENTROPY && !cfgs[k].soft;

    for (int b = 0; b < NB; b++) {
      td_backend_fill(g.be[b], P(st, b), 4, 0.0f);
      td_backend_loss(g.be[b], &cfgs[k], P(z, b), ids ? ct->b[b].ptr : ft->b[b].ptr, R, C,
                      P(dz, b), P(st, b), P(st, b) + 2);
    }
    tw_expect(&g, dz, names[k]);
    tw_expect(&g, st, "loss stats");
  }
  gpu_close(&g);
}
END_TEST

START_TEST(test_optimisers) {
  enum { N = 100003 };
  const td_adam_hparams ah = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                              .weight_decay = 0.01f, .step = 3};
  const td_sgd_hparams sh = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 1e-4f};
  gpu g;

  gpu_open(&g);
  twin *p = tw_rand(&g, N, 1, 0), *gr = tw_rand(&g, N, 1, 0), *m = tw_rand(&g, N, 0.1f, 0);
  twin *v = tw_rand(&g, N, 0.01f, 0.011f), *q = tw_rand(&g, N, 1, 0), *buf = tw_rand(&g, N, 1, 0);
  for (int b = 0; b < NB; b++) {
    td_backend_adam(g.be[b], P(p, b), P(gr, b), P(m, b), P(v, b), N, &ah);
    td_backend_sgd(g.be[b], P(q, b), P(gr, b), P(buf, b), N, &sh);
  }
  tw_expect_exact(&g, p, "adam param");
  tw_expect_exact(&g, m, "adam m");
  tw_expect_exact(&g, v, "adam v");
  tw_expect_exact(&g, q, "sgd param");
  tw_expect_exact(&g, buf, "sgd momentum");
  gpu_close(&g);
}
END_TEST

/* _i 1: no bias, and a backward that skips dx and db and overwrites dw. */
START_TEST(test_dense) {
  const int n = 64, in = 300, out = 37;
  bool part = _i == 1;
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, (size_t)n * in, 1, 0), *w = tw_rand(&g, (size_t)out * in, 0.1f, 0);
  twin *bi = tw_rand(&g, out, 1, 0), *y = tw_zero(&g, (size_t)n * out);
  twin *dy = tw_rand(&g, (size_t)n * out, 1, 0), *dx = tw_zero(&g, (size_t)n * in);
  twin *dw = tw_rand(&g, (size_t)out * in, 1, 0), *db = tw_rand(&g, out, 1, 0);
  for (int b = 0; b < NB; b++) {
    td_backend_dense_fwd(g.be[b], P(x, b), P(w, b), part ? NULL : P(bi, b), P(y, b), n, in,
                         out);
    td_backend_dense_bwd(g.be[b], P(x, b), P(w, b), P(dy, b), part ? NULL : P(dx, b), P(dw, b),
                         part ? NULL : P(db, b), n, in, out, part ? 0.0f : 1.0f);
  }
  tw_expect_exact(&g, y, "dense y");
  tw_expect_exact(&g, dx, "dense dx");
  tw_expect_exact(&g, dw, "dense dw");
  tw_expect_exact(&g, db, "dense db");
  gpu_close(&g);
}
END_TEST

/* _i 0 sigmoid, 1 tanh; the backward op reads the forward's output */
START_TEST(test_act) {
  td_act_kind kind = _i ? TD_ACT_TANH : TD_ACT_SIGMOID;
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, BIG, 8, 0), *y = tw_zero(&g, BIG), *dy = tw_rand(&g, BIG, 1, 0);
  twin *dx = tw_zero(&g, BIG);
  for (int b = 0; b < NB; b++) {
    td_backend_act_fwd(g.be[b], kind, P(x, b), P(y, b), BIG);
    td_backend_act_bwd(g.be[b], kind, P(y, b), P(dy, b), P(dx, b), BIG);
  }
  tw_expect(&g, y, "act_fwd");
  tw_expect(&g, dx, "act_bwd");
  gpu_close(&g);
}
END_TEST

/* softmax over [outer, dim, inner]: rows of features, the channels of each
 * pixel, a few wide rows; the last one in place as the model runs it.
 * Global average pooling over planes and over positions: one sum in order
 * per output, the same bits as the CPU in fp32. */
START_TEST(test_softmax_and_mean) {
  static const size_t shapes[][3] = {{3000, 10, 1}, {17, 64, 300}, {5, 4096, 1}};
  gpu g;

  gpu_open(&g);
  for (size_t i = 0; i < TD_ARRAY_SIZE(shapes); i++) {
    size_t o = shapes[i][0], d = shapes[i][1], in = shapes[i][2], n = o * d * in;
    twin *x = tw_rand(&g, n, 6, 0), *y = tw_zero(&g, n), *dy = tw_rand(&g, n, 1, 0);
    twin *dx = tw_zero(&g, n), *m = tw_zero(&g, o * in), *dm = tw_rand(&g, o * in, 1, 0);
    twin *dmx = tw_zero(&g, n);

    for (int b = 0; b < NB; b++) {
      td_backend_softmax_fwd(g.be[b], P(x, b), P(y, b), o, d, in);
      td_backend_softmax_bwd(g.be[b], P(y, b), P(dy, b), P(dx, b), o, d, in);
      td_backend_mean_fwd(g.be[b], P(x, b), P(m, b), o, d, in);
      td_backend_mean_bwd(g.be[b], P(dm, b), P(dmx, b), o, d, in);
      if (i == TD_ARRAY_SIZE(shapes) - 1) {
        td_backend_softmax_fwd(g.be[b], P(x, b), P(x, b), o, d, in);
        td_backend_softmax_bwd(g.be[b], P(x, b), P(dy, b), P(dy, b), o, d, in);
      }
    }
    tw_expect(&g, y, "softmax_fwd");
    tw_expect(&g, dx, "softmax_bwd");
    tw_expect_exact(&g, m, "mean_fwd");
    tw_expect_exact(&g, dmx, "mean_bwd");
  }
  gpu_close(&g);
}
END_TEST

/* conv1d: cuBLAS's products against OpenBLAS's on the same columns (the
 * column ops are copies and sums in one order, so only the products
 * differ). */
static const td_conv1d_desc conv1d_cases[] = {
    /* n   l   c   k  kw stride pad */
    {40, 28, 28, 64, 3, 1, 1}, /* three blocks, the last short */
    {16, 50, 64, 128, 5, 2, 2},
    {3, 9, 3, 4, 4, 3, 0},
    {7, 12, 5, 6, 1, 1, 0},
};

START_TEST(test_conv1d) {
  const td_conv1d_desc *d = &conv1d_cases[_i];
  const uint64_t ws = td_conv1d_workspace(d), wsb[NB] = {ws, ws};
  int ol;
  gpu g;

  ck_assert_int_eq(td_conv1d_out(d, &ol, NULL, 0), 0);
  size_t xn = (size_t)d->n * d->l * d->c, wn = (size_t)d->k * d->c * d->kw;
  size_t yn = (size_t)d->n * ol * d->k;
  gpu_open(&g);
  twin *x = tw_rand(&g, xn, 1, 0), *w = tw_rand(&g, wn, 0.3f, 0), *bi = tw_rand(&g, d->k, 1, 0);
  twin *y = tw_zero(&g, yn), *dy = tw_rand(&g, yn, 1, 0), *dx = tw_zero(&g, xn);
  twin *dw = tw_rand(&g, wn, 1, 0), *db = tw_rand(&g, d->k, 1, 0);
  twin *work = tw_alloc(&g, NULL, wsb, 0);
  for (int b = 0; b < NB; b++) {
    td_backend_conv1d_fwd(g.be[b], d, P(x, b), P(w, b), P(bi, b), P(y, b), work->b[b].ptr, ws);
    /* beta 1 on top of the random old gradients, then dx */
    td_backend_conv1d_bwd(g.be[b], d, P(x, b), P(w, b), P(dy, b), P(dx, b), P(dw, b), P(db, b),
                          1.0f, work->b[b].ptr, ws);
  }
  tw_expect(&g, y, "conv1d y");
  tw_expect(&g, dx, "conv1d dx");
  tw_expect(&g, dw, "conv1d dw");
  tw_expect_exact(&g, db, "conv1d db");
  gpu_close(&g);
}
END_TEST

static const td_conv2d_desc conv_cases[] = {
    /* n   c   h   w   k  kh kw sh sw ph pw */
    {8, 16, 28, 28, 32, 3, 3, 1, 1, 1, 1},
    {4, 3, 32, 32, 8, 5, 5, 2, 2, 2, 2},
    {2, 2, 9, 8, 3, 3, 2, 2, 1, 0, 1},
    {3, 4, 5, 5, 5, 1, 1, 1, 1, 0, 0},
    {2, 2, 6, 7, 3, 2, 4, 3, 2, 1, 0},
    {1, 1, 4, 4, 2, 4, 4, 1, 1, 0, 0},
    {16, 64, 7, 7, 64, 3, 3, 1, 1, 1, 1},
};

START_TEST(test_conv2d) {
  const td_conv2d_desc *d = &conv_cases[_i];
  int oh, ow;
  gpu g;

  ck_assert_int_eq(td_conv2d_out(d, false, &oh, &ow, NULL, 0), 0);
  size_t xn = (size_t)d->n * d->c * d->h * d->w, wn = (size_t)d->k * d->c * d->kh * d->kw;
  size_t yn = (size_t)d->n * d->k * oh * ow;
  gpu_open(&g);
  twin *x = tw_rand(&g, xn, 1, 0), *w = tw_rand(&g, wn, 0.3f, 0), *bi = tw_rand(&g, d->k, 1, 0);
  twin *y = tw_zero(&g, yn), *dy = tw_rand(&g, yn, 1, 0), *dx = tw_zero(&g, xn);
  twin *dw = tw_rand(&g, wn, 1, 0), *db = tw_rand(&g, d->k, 1, 0);
  twin *work = tw_conv_work(&g, d);
  for (int b = 0; b < NB; b++) {
    uint64_t ws = work->b[b].bytes;
    td_backend_conv2d_fwd(g.be[b], d, P(x, b), P(w, b), P(bi, b), P(y, b), work->b[b].ptr, ws);
    /* beta 1 on top of the random old gradients, then dx */
    td_backend_conv2d_bwd(g.be[b], d, P(x, b), P(w, b), P(dy, b), P(dx, b), P(dw, b), P(db, b),
                          1.0f, work->b[b].ptr, ws);
  }
  tw_expect_exact(&g, y, "conv2d y");
  tw_expect_exact(&g, dx, "conv2d dx");
  tw_expect_exact(&g, dw, "conv2d dw");
  tw_expect_exact(&g, db, "conv2d db");
  /* the weight gradient alone, overwritten (the first layer's backward) */
  for (int b = 0; b < NB; b++)
    td_backend_conv2d_bwd(g.be[b], d, P(x, b), P(w, b), P(dy, b), NULL, P(dw, b), NULL, 0.0f,
                          work->b[b].ptr, work->b[b].bytes);
  tw_expect_exact(&g, dw, "conv2d dw alone");
  gpu_close(&g);
}
END_TEST

START_TEST(test_conv2d_short_workspace) {
  const td_conv2d_desc d = {4, 3, 32, 32, 8, 5, 5, 2, 2, 2, 2};
  td_backend *be;
  uint64_t need = 0;
  td_buf x, w, y;

  ck_assert_int_eq(td_backend_create(devices[1], TD_BUDGET_UNLIMITED, &be, NULL, 0), 0);
  ck_assert_int_eq(td_backend_conv2d_workspace(be, &d, &need), 0);
  ck_assert_int_eq(td_backend_alloc(be, 4 * 3 * 32 * 32 * 4, &x), 0);
  ck_assert_int_eq(td_backend_alloc(be, 8 * 3 * 25 * 4, &w), 0);
  ck_assert_int_eq(td_backend_alloc(be, 4 * 8 * 16 * 16 * 4, &y), 0);
  /* backend.h's contract: one figure, the most any of the three algorithms
   * needs; a byte short of it is refused by the forward op and by the
   * backward op with and without dx, whatever each needs alone */
  if (need > 0) { /* an algorithm without a workspace has nothing to shorten */
    for (int op = 0; op < 3; op++) {
      if (op == 0)
        td_backend_conv2d_fwd(be, &d, x.ptr, w.ptr, NULL, y.ptr, NULL, need - 1);
      else
        td_backend_conv2d_bwd(be, &d, x.ptr, w.ptr, y.ptr, op == 1 ? x.ptr : NULL, w.ptr,
                              NULL, 0.0f, NULL, need - 1);
      ck_assert_msg(td_backend_sync(be) == TD_EINVAL, "op %d ran with %llu of %llu bytes", op,
                    (unsigned long long)(need - 1), (unsigned long long)need);
      ck_assert_msg(strstr(td_backend_error(be), "workspace") != NULL, "%s",
                    td_backend_error(be));
    }
  }
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_free(be, &x);
  td_backend_free(be, &w);
  td_backend_free(be, &y);
  td_backend_destroy(be);
}
END_TEST

static const td_conv2d_desc pool_cases[] = {
    /* n   c   h   w  k kh kw sh sw ph pw */
    {8, 16, 28, 28, 0, 2, 2, 2, 2, 0, 0},
    {2, 2, 7, 9, 0, 3, 3, 2, 2, 1, 1},
    {1, 3, 6, 5, 0, 3, 2, 1, 2, 1, 0},
    {4, 8, 14, 14, 0, 3, 3, 1, 1, 1, 1},
    {2, 5, 7, 7, 0, 7, 7, 7, 7, 0, 0},
};

START_TEST(test_pool2d) {
  static const td_pool_mode modes[] = {TD_POOL_MAX, TD_POOL_AVG, TD_POOL_AVG_EXCL_PAD};
  const td_conv2d_desc *d = &pool_cases[_i / 3];
  td_pool_mode mode = modes[_i % 3];
  int oh, ow;
  gpu g;

  ck_assert_int_eq(td_conv2d_out(d, true, &oh, &ow, NULL, 0), 0);
  size_t xn = (size_t)d->n * d->c * d->h * d->w, yn = (size_t)d->n * d->c * oh * ow;
  gpu_open(&g);
  twin *x = tw_distinct(&g, xn), *y = tw_zero(&g, yn), *dy = tw_rand(&g, yn, 1, 0);
  twin *dx = tw_zero(&g, xn);
  for (int b = 0; b < NB; b++) {
    td_backend_pool2d_fwd(g.be[b], mode, d, P(x, b), P(y, b));
    td_backend_pool2d_bwd(g.be[b], mode, d, P(x, b), P(y, b), P(dy, b), P(dx, b));
  }
  tw_expect_exact(&g, y, "pool2d y");
  tw_expect_exact(&g, dx, "pool2d dx");
  gpu_close(&g);
}
END_TEST

static const td_batchnorm_desc bn_cases[] = {
    {32, 16, 14 * 14, 1e-5f, 0.1f},
    {2, 3, 1, 1e-5f, 0.1f},
    {64, 1, 1024, 1e-3f, 0.01f},
    {5, 300, 7, 1e-5f, 0.1f},
};

START_TEST(test_batchnorm) {
  const td_batchnorm_desc *d = &bn_cases[_i];
  size_t n = (size_t)d->n * d->c * d->hw;
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, n, 2, 0.5f), *y = tw_zero(&g, n), *ga = tw_rand(&g, d->c, 0.5f, 1);
  twin *be = tw_rand(&g, d->c, 1, 0), *rm = tw_rand(&g, d->c, 0.1f, 0);
  twin *rv = tw_rand(&g, d->c, 0.1f, 1), *sm = tw_zero(&g, d->c), *si = tw_zero(&g, d->c);
  twin *dy = tw_rand(&g, n, 1, 0), *dx = tw_zero(&g, n), *dg = tw_rand(&g, d->c, 1, 0);
  twin *dbt = tw_rand(&g, d->c, 1, 0), *ye = tw_zero(&g, n);
  for (int b = 0; b < NB; b++) {
    td_backend_batchnorm2d_fwd(g.be[b], d, true, P(x, b), P(y, b), P(ga, b), P(be, b),
                               P(rm, b), P(rv, b), P(sm, b), P(si, b));
    td_backend_batchnorm2d_bwd(g.be[b], d, P(x, b), P(dy, b), P(dx, b), P(ga, b), P(sm, b),
                               P(si, b), 1.0f, P(dg, b), P(dbt, b));
    td_backend_batchnorm2d_fwd(g.be[b], d, false, P(x, b), P(ye, b), P(ga, b), P(be, b),
                               P(rm, b), P(rv, b), NULL, NULL);
  }
  tw_expect_exact(&g, y, "batchnorm y");
  tw_expect_exact(&g, sm, "batchnorm save_mean");
  tw_expect_exact(&g, si, "batchnorm save_invstd");
  tw_expect_exact(&g, rm, "batchnorm running_mean");
  tw_expect_exact(&g, rv, "batchnorm running_var");
  tw_expect_exact(&g, dx, "batchnorm dx");
  tw_expect_exact(&g, dg, "batchnorm dgamma");
  tw_expect_exact(&g, dbt, "batchnorm dbeta");
  tw_expect_exact(&g, ye, "batchnorm y (evaluation)");
  for (int b = 0; b < NB; b++) /* without dx, parameter gradients overwritten */
    td_backend_batchnorm2d_bwd(g.be[b], d, P(x, b), P(dy, b), NULL, P(ga, b), P(sm, b),
                               P(si, b), 0.0f, P(dg, b), P(dbt, b));
  tw_expect_exact(&g, dg, "batchnorm dgamma alone");
  tw_expect_exact(&g, dbt, "batchnorm dbeta alone");
  gpu_close(&g);
}
END_TEST

static const struct {
  size_t rows, cols;
} ln_cases[] = {{4096, 768}, {70000, 5}, {3, 2000}, {1, 1}};

START_TEST(test_layernorm) {
  size_t rows = ln_cases[_i].rows, cols = ln_cases[_i].cols, n = rows * cols;
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, n, 2, 0.5f), *y = tw_zero(&g, n), *ga = tw_rand(&g, cols, 0.5f, 1);
  twin *be = tw_rand(&g, cols, 1, 0), *sm = tw_zero(&g, rows), *si = tw_zero(&g, rows);
  twin *dy = tw_rand(&g, n, 1, 0), *dx = tw_zero(&g, n), *dg = tw_rand(&g, cols, 1, 0);
  twin *dbt = tw_rand(&g, cols, 1, 0);
  for (int b = 0; b < NB; b++) {
    td_backend_layernorm_fwd(g.be[b], P(x, b), P(y, b), rows, cols, P(ga, b), P(be, b), 1e-5f,
                             P(sm, b), P(si, b));
    td_backend_layernorm_bwd(g.be[b], P(x, b), P(dy, b), P(dx, b), rows, cols, P(ga, b),
                             P(sm, b), P(si, b), 1.0f, P(dg, b), P(dbt, b));
  }
  tw_expect_exact(&g, y, "layernorm y");
  tw_expect_exact(&g, sm, "layernorm save_mean");
  if (cols > 1) /* one column: no variance, and invstd is 1/sqrt(eps) on both */
    tw_expect_exact(&g, si, "layernorm save_invstd");
  tw_expect_exact(&g, dx, "layernorm dx");
  tw_expect_exact(&g, dg, "layernorm dgamma");
  tw_expect_exact(&g, dbt, "layernorm dbeta");
  for (int b = 0; b < NB; b++) /* without dx, parameter gradients overwritten */
    td_backend_layernorm_bwd(g.be[b], P(x, b), P(dy, b), NULL, rows, cols, P(ga, b), P(sm, b),
                             P(si, b), 0.0f, P(dg, b), P(dbt, b));
  tw_expect_exact(&g, dg, "layernorm dgamma alone");
  tw_expect_exact(&g, dbt, "layernorm dbeta alone");
  gpu_close(&g);
}
END_TEST

/* The embedding's lookup and scatter and the positional embedding's add:
 * element-wise and chains in row order, so the CPU's bits.  Ids exact in
 * every pass (small integers), one outside the vocabulary. */
START_TEST(test_embedding) {
  enum { ROWS = 3000, VOCAB = 200, DIM = 96 };
  float *ids = malloc(ROWS * sizeof(float));
  const uint64_t id_bytes[NB] = {ROWS * sizeof(float), ROWS * sizeof(float)};
  gpu g;

  ck_assert_ptr_nonnull(ids);
  for (int r = 0; r < ROWS; r++)
    ids[r] = (float)((r * 37 + r / 7) % VOCAB);
  ids[17] = VOCAB; /* a row of zeros, and no gradient */
  gpu_open(&g);
  twin *id = tw_alloc(&g, ids, id_bytes, ROWS), *w = tw_rand(&g, VOCAB * DIM, 1, 0);
  twin *y = tw_zero(&g, ROWS * DIM), *dy = tw_rand(&g, ROWS * DIM, 1, 0);
  twin *dw = tw_rand(&g, VOCAB * DIM, 1, 0), *pos = tw_rand(&g, 10 * DIM, 1, 0);
  twin *z = tw_zero(&g, ROWS * DIM);
  for (int b = 0; b < NB; b++) {
    td_backend_embedding_fwd(g.be[b], P(id, b), P(w, b), P(y, b), ROWS, VOCAB, DIM);
    td_backend_embedding_bwd(g.be[b], P(id, b), P(dy, b), P(dw, b), ROWS, VOCAB, DIM, 1.0f);
    td_backend_add_rows(g.be[b], P(y, b), P(pos, b), P(z, b), ROWS / 10, 10 * DIM);
  }
  tw_expect_exact(&g, y, "embedding y");
  tw_expect_exact(&g, dw, "embedding dw, added");
  tw_expect_exact(&g, z, "pos_embedding y");
  for (int b = 0; b < NB; b++)
    td_backend_embedding_bwd(g.be[b], P(id, b), P(dy, b), P(dw, b), ROWS, VOCAB, DIM, 0.0f);
  tw_expect_exact(&g, dw, "embedding dw");
  gpu_close(&g);
  free(ids);
}
END_TEST

static const td_attention_desc attn_cases[] = {
    {.n = 37, .t = 64, .d = 128, .heads = 4, .causal = true},
    {.n = 5, .t = 200, .d = 96, .heads = 3, .causal = false},
    {.n = 16, .t = 7, .d = 8, .heads = 8, .causal = true},
};

/* Attention against the CPU; and on the device, a batch cut after a block
 * of TD_BLOCK_ROWS samples gives the whole batch's bits (the GEMMs run a
 * block at a time). */
START_TEST(test_attention) {
  const td_attention_desc a = attn_cases[_i];
  const size_t d = (size_t)a.d, rows = (size_t)a.n * a.t, pp = (size_t)a.heads * a.t * a.t;
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, rows * d, 1, 0), *w = tw_rand(&g, 4 * d * d, 0.3f, 0);
  twin *bias = tw_rand(&g, 4 * d, 0.2f, 0), *qkv = tw_zero(&g, rows * 3 * d);
  twin *p = tw_zero(&g, (size_t)a.n * pp), *o = tw_zero(&g, rows * d);
  twin *y = tw_zero(&g, rows * d), *dy = tw_rand(&g, rows * d, 1, 0);
  twin *dx = tw_zero(&g, rows * d), *dw = tw_zero(&g, 4 * d * d), *db = tw_zero(&g, 4 * d);
  twin *dqkv = tw_zero(&g, rows * 3 * d), *dout = tw_zero(&g, rows * d);
  twin *dp = tw_zero(&g, (size_t)a.n * a.t * a.t);
  for (int b = 0; b < NB; b++) {
    td_backend_attention_fwd(g.be[b], &a, P(x, b), P(w, b), P(bias, b), P(qkv, b), P(p, b),
                             P(o, b), P(y, b));
    td_backend_attention_bwd(g.be[b], &a, P(x, b), P(w, b), P(qkv, b), P(p, b), P(o, b),
                             P(dy, b), P(dx, b), P(dw, b), P(db, b), 0.0f, P(dqkv, b),
                             P(dout, b), P(dp, b));
  }
  /* before tw_expect rounds the outputs in a half pass */
  if (a.n > TD_BLOCK_ROWS) {
    const int cut = TD_BLOCK_ROWS;
    const size_t r = (size_t)cut * a.t, n2 = rows * d;
    const int b = 1; /* the device */
    td_backend *be = g.be[b];
    float *whole[3], *got;
    float *const outs[3] = {P(y, b), P(dx, b), P(dw, b)};
    const size_t lens[3] = {n2, n2, 4 * d * d};

    for (int k = 0; k < 3; k++) {
      whole[k] = malloc(lens[k] * sizeof(float));
      td_backend_download(be, whole[k], outs[k], lens[k] * sizeof(float));
    }
    for (int part = 0; part < 2; part++) {
      td_attention_desc h = a;
      size_t at = part == 0 ? 0 : r;

      h.n = part == 0 ? cut : a.n - cut;
      td_backend_attention_fwd(be, &h, P(x, b) + at * d, P(w, b), P(bias, b),
                               P(qkv, b) + at * 3 * d, P(p, b) + (at / a.t) * pp,
                               P(o, b) + at * d, P(y, b) + at * d);
      td_backend_attention_bwd(be, &h, P(x, b) + at * d, P(w, b), P(qkv, b) + at * 3 * d,
                               P(p, b) + (at / a.t) * pp, P(o, b) + at * d, P(dy, b) + at * d,
                               P(dx, b) + at * d, P(dw, b), P(db, b), part == 0 ? 0.0f : 1.0f,
                               P(dqkv, b) + at * 3 * d, P(dout, b) + at * d,
                               P(dp, b) + (at / a.t) * a.t * a.t);
    }
    for (int k = 0; k < 3; k++) {
      got = malloc(lens[k] * sizeof(float));
      td_backend_download(be, got, outs[k], lens[k] * sizeof(float));
      ck_assert_int_eq(td_backend_sync(be), 0);
      ck_assert_msg(memcmp(got, whole[k], lens[k] * sizeof(float)) == 0,
                    "attention cut after %d samples: output %d has other bits", cut, k);
      free(got);
      free(whole[k]);
    }
  }
  tw_expect(&g, p, "attention probabilities");
  tw_expect(&g, y, "attention y");
  tw_expect(&g, dx, "attention dx");
  tw_expect(&g, dw, "attention dw");
  tw_expect(&g, db, "attention db");
  gpu_close(&g);
}
END_TEST

/* SGD with Nesterov and with dampening, AdamW, over three steps; the
 * global-norm clip, the finite check and half-precision storage. */
START_TEST(test_optimisers_full) {
  enum { N = 100003 };
  const td_sgdm_hparams nest = {.lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-3f,
                                .nesterov = true};
  const td_sgdm_hparams damp = {.lr = 0.05f, .momentum = 0.8f, .dampening = 0.3f};
  gpu g;

  gpu_open(&g);
  twin *p = tw_rand(&g, N, 1, 0), *q = tw_rand(&g, N, 1, 0), *r = tw_rand(&g, N, 1, 0);
  twin *gr = tw_rand(&g, N, 1, 0), *bp = tw_zero(&g, N), *bq = tw_zero(&g, N);
  twin *m = tw_zero(&g, N), *v = tw_zero(&g, N);
  for (uint64_t step = 1; step <= 3; step++) {
    const td_adam_hparams ah = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                .weight_decay = 0.01f, .step = step};
    td_sgdm_hparams hn = nest, hd = damp;
    hn.step = hd.step = step;
    for (int b = 0; b < NB; b++) {
      td_backend_sgd_momentum(g.be[b], P(p, b), P(gr, b), P(bp, b), N, &hn);
      td_backend_sgd_momentum(g.be[b], P(q, b), P(gr, b), P(bq, b), N, &hd);
      td_backend_adamw(g.be[b], P(r, b), P(gr, b), P(m, b), P(v, b), N, &ah);
    }
  }
  tw_expect_exact(&g, p, "nesterov param");
  tw_expect_exact(&g, bp, "nesterov buffer");
  tw_expect_exact(&g, q, "dampened param");
  tw_expect_exact(&g, r, "adamw param");
  tw_expect_exact(&g, m, "adamw m");
  tw_expect_exact(&g, v, "adamw v");
  gpu_close(&g);
}
END_TEST

START_TEST(test_clip_finite_half) {
  enum { N = 70001, M = 513 };
  const uint64_t hbytes[NB] = {N * sizeof(uint16_t), N * sizeof(uint16_t)};
  const float inf = INFINITY;
  uint16_t *h[NB];
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, N, 3, 0), *y = tw_rand(&g, M, 0.5f, 0.1f), *norm = tw_zero(&g, 2);
  twin *clean = tw_zero(&g, 1), *dirty = tw_zero(&g, 1), *hx = tw_alloc(&g, NULL, hbytes, N);
  twin *back = tw_zero(&g, N), *rounded = tw_rand(&g, N, 3e4f, 0);
  for (int b = 0; b < NB; b++) {
    float *xs[2] = {P(x, b), P(y, b)};
    const size_t ns[2] = {N, M};

    td_backend_clip_grad_norm(g.be[b], xs, ns, 2, 10.0f, P(norm, b));
    td_backend_check_finite(g.be[b], P(x, b), N, P(clean, b));
    td_backend_to_half(g.be[b], _i ? TD_HALF_BF16 : TD_HALF_F16, P(x, b), hx->b[b].ptr, N);
    td_backend_from_half(g.be[b], _i ? TD_HALF_BF16 : TD_HALF_F16, hx->b[b].ptr, P(back, b),
                         N);
    td_backend_round_half(g.be[b], _i ? TD_HALF_BF16 : TD_HALF_F16, P(rounded, b), N);
    td_backend_upload(g.be[b], P(y, b) + M - 1, &inf, sizeof(inf));
    td_backend_check_finite(g.be[b], P(y, b), M, P(dirty, b));
  }
  tw_expect(&g, norm, "clip norm and factor");
  tw_expect(&g, x, "clipped x");
  tw_expect(&g, clean, "finite flag, clean");
  tw_expect(&g, dirty, "finite flag, inf");
  tw_expect(&g, back, "half widened");
  tw_expect(&g, rounded, "rounded in place");
  /* the rounding is the GPU's, bit for bit */
  for (int b = 0; b < NB; b++) {
    h[b] = malloc(N * sizeof(uint16_t));
    ck_assert_ptr_nonnull(h[b]);
    td_backend_download(g.be[b], h[b], hx->b[b].ptr, N * sizeof(uint16_t));
    ck_assert_int_eq(td_backend_sync(g.be[b]), 0);
  }
  ck_assert_msg(memcmp(h[0], h[1], N * sizeof(uint16_t)) == 0, "%s bits differ",
                _i ? "bf16" : "fp16");
  free(h[0]);
  free(h[1]);
  gpu_close(&g);
}
END_TEST

/* The clipping pieces one by one: the sum of squares into an accumulator,
 * the factor, and the scale with and without it. */
START_TEST(test_scale_ops) {
  enum { N = 300007 };
  gpu g;

  gpu_open(&g);
  twin *x = tw_rand(&g, N, 2, 0), *acc = tw_rand(&g, 2, 1, 3), *norm = tw_zero(&g, 2);
  twin *y = tw_rand(&g, N, 1, 0);
  for (int b = 0; b < NB; b++) {
    td_backend_sumsq(g.be[b], P(x, b), N, P(acc, b)); /* adds to acc[0] */
    td_backend_sumsq(g.be[b], P(x, b), N, P(norm, b));
    td_backend_clip_coef(g.be[b], P(norm, b), 50.0f);
    td_backend_scale(g.be[b], P(x, b), N, 0.5f, P(norm, b) + 1);
    td_backend_scale(g.be[b], P(y, b), N, -3.0f, NULL);
  }
  tw_expect(&g, acc, "sumsq into acc");
  tw_expect(&g, norm, "sumsq and clip_coef");
  tw_expect(&g, x, "scale by coef");
  tw_expect(&g, y, "scale by alpha");
  gpu_close(&g);
}
END_TEST

/* Every stored sample type; the same bits in, the same bits out (neither
 * backend fuses the multiply and the add). */
START_TEST(test_normalize) {
  static const td_dtype types[] = {TD_DTYPE_U8, TD_DTYPE_I32, TD_DTYPE_F16, TD_DTYPE_F32};
  td_dtype dt = types[_i];
  size_t n = dt == TD_DTYPE_U8 ? BIG : dt == TD_DTYPE_F16 ? 4 * 65536 : 1000003;
  size_t es = td_dtype_size(dt);
  unsigned char *h = malloc(n * es);
  const uint64_t bytes[NB] = {n * es, n * es};
  uint32_t r = 99;
  gpu g;

  ck_assert_ptr_nonnull(h);
  for (size_t i = 0; i < n; i++) {
    r = r * 1664525u + 1013904223u;
    switch (dt) {
    case TD_DTYPE_U8: h[i] = (uint8_t)(r >> 24); break;
    case TD_DTYPE_I32: ((int32_t *)(void *)h)[i] = (int32_t)r >> (i % 31); break;
    case TD_DTYPE_F16: ((uint16_t *)(void *)h)[i] = (uint16_t)i; break; /* every pattern */
    default: ((float *)(void *)h)[i] = frand() * (float)(1 << (i % 20)); break;
    }
  }
  gpu_open(&g);
  twin *x = tw_alloc(&g, h, bytes, n), *y = tw_zero(&g, n);
  for (int b = 0; b < NB; b++)
    td_backend_normalize(g.be[b], dt, x->b[b].ptr, P(y, b), n, 1.0f / 255.0f, 0.2860f, 0.3530f);
  g.tol = 0.0;
  tw_expect(&g, y, "normalize");
  gpu_close(&g);
  free(h);
}
END_TEST

/* Out of memory on both backends: the budget, the device itself, and an
 * injected failure in an op. */
START_TEST(test_oom) {
  for (int b = 0; b < NB; b++) {
    td_backend *be;
    td_mem_stats mem;
    uint64_t total = 0, avail = 0;
    td_buf a, c;

    ck_assert_int_eq(td_backend_create(devices[b], 64 << 20, &be, NULL, 0), 0);
    ck_assert_int_eq(td_backend_alloc(be, 48 << 20, &a), 0);
    ck_assert_int_eq(td_backend_alloc(be, 32 << 20, &c), TD_EOOM);
    td_backend_mem(be, &mem);
    ck_assert_uint_eq(mem.oom_asked, 32 << 20);
    ck_assert_uint_eq(mem.oom_free, 16 << 20);
    td_backend_set_budget(be, TD_BUDGET_UNLIMITED);
    ck_assert_int_eq(td_backend_device_mem(be, &total, &avail), 0);
    if (td_backend_get_kind(be) == TD_BACKEND_CUDA) { /* more than the GPU has */
      ck_assert_int_eq(td_backend_alloc(be, total + (1 << 30), &c), TD_EOOM);
      td_backend_mem(be, &mem);
      ck_assert_uint_le(mem.oom_free, total);
    }
    td_backend_inject_oom(be, 1);
    td_backend_fill(be, a.ptr, 16, 1.0f);
    ck_assert_int_eq(td_backend_status(be), TD_EOOM); /* seen before the sync */
    ck_assert_int_eq(td_backend_sync(be), TD_EOOM);
    ck_assert_msg(strstr(td_backend_error(be), "injected") != NULL, "%s", td_backend_error(be));
    td_backend_fill(be, a.ptr, 16, 1.0f); /* the next op runs */
    ck_assert_int_eq(td_backend_sync(be), 0);
    td_backend_free(be, &a);
    td_backend_destroy(be);
  }
}
END_TEST

START_TEST(test_device_mem) {
  uint64_t total = 0, before = 0, after = 0, gone;
  td_backend *be;
  td_buf a;

  ck_assert_int_eq(td_backend_create(devices[1], TD_BUDGET_UNLIMITED, &be, NULL, 0), 0);
  ck_assert_int_eq(td_backend_device_mem(be, &total, &before), 0);
  ck_assert(total > 0 && before <= total);
  ck_assert_int_eq(td_backend_alloc(be, 256 << 20, &a), 0);
  ck_assert_int_eq(td_backend_sync(be), 0);
  ck_assert_int_eq(td_backend_device_mem(be, &total, &after), 0);
  gone = before > after ? before - after : 0;
  printf("%s: %llu bytes, %llu free; a 256 MiB allocation took %llu\n", devices[1],
         (unsigned long long)total, (unsigned long long)before, (unsigned long long)gone);
  if (td_backend_get_kind(be) == TD_BACKEND_CUDA) /* the host's figure moves with others */
    ck_assert_msg(gone >= (256u << 20) && gone <= (256u + 8) << 20, "took %llu",
                  (unsigned long long)gone);
  td_backend_free(be, &a);
  td_backend_destroy(be);
}
END_TEST

/* Uploads from a registered shared mapping (as the loader's ring is) are
 * asynchronous: the data is there after the sync, and the mapping may
 * change after it.  Unregistered, the same call is a plain copy. */
START_TEST(test_upload_async) {
  enum { N = 1 << 20 };
  const size_t bytes = 2 * N * sizeof(float);
  float *ring = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  float *want = malloc(bytes), *got = malloc(N * sizeof(float));
  gpu g;

  ck_assert(ring != MAP_FAILED && want != NULL && got != NULL);
  for (size_t i = 0; i < 2 * N; i++)
    want[i] = ring[i] = frand();
  gpu_open(&g);
  twin *y = tw_zero(&g, N), *z = tw_zero(&g, N);
  for (int b = 0; b < NB; b++) {
    ck_assert_msg(td_backend_host_register(g.be[b], ring, bytes) == 0, "%s: %s", devices[b],
                  td_backend_error(g.be[b]));
    ck_assert_int_eq(td_backend_host_register(g.be[b], ring + 1, 4), TD_EINVAL);
    td_backend_upload_async(g.be[b], P(y, b), ring, N * sizeof(float));
    td_backend_upload_async(g.be[b], P(z, b), ring + N, N * sizeof(float));
    ck_assert_int_eq(td_backend_sync(g.be[b]), 0);
  }
  memset(ring, 0, bytes); /* the slots are free again after the sync */
  for (int b = 0; b < NB; b++) {
    td_backend_download(g.be[b], got, P(y, b), N * sizeof(float));
    ck_assert_int_eq(td_backend_sync(g.be[b]), 0);
    ck_assert_msg(memcmp(got, want, N * sizeof(float)) == 0, "%s: first slot", devices[b]);
    td_backend_download(g.be[b], got, P(z, b), N * sizeof(float));
    ck_assert_int_eq(td_backend_sync(g.be[b]), 0);
    ck_assert_msg(memcmp(got, want + N, N * sizeof(float)) == 0, "%s: second slot", devices[b]);
    ck_assert_int_eq(td_backend_host_unregister(g.be[b], ring), 0);
    td_backend_upload_async(g.be[b], P(y, b), want + N, N * sizeof(float)); /* plain copy */
    td_backend_download(g.be[b], got, P(y, b), N * sizeof(float));
    ck_assert_int_eq(td_backend_sync(g.be[b]), 0);
    ck_assert_msg(memcmp(got, want + N, N * sizeof(float)) == 0, "%s: plain", devices[b]);
  }
  /* registered again, then left for td_backend_destroy to unregister */
  for (int b = 0; b < NB; b++)
    ck_assert_int_eq(td_backend_host_register(g.be[b], ring, bytes), 0);
  gpu_close(&g);
  munmap(ring, bytes);
  free(want);
  free(got);
}
END_TEST

/* td_backend_probe in a child, as the daemon calls it; 0 or the probe's
 * error (its message printed). */
static int probe_in_child(const char *device, td_device_probe *out) {
  struct {
    int rc;
    td_device_probe p;
    char err[256];
  } m = {0};
  int fds[2], status;
  pid_t pid;

  ck_assert_int_eq(pipe(fds), 0);
  fflush(stdout);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    m.rc = td_backend_probe(device, &m.p, m.err, sizeof(m.err));
    _exit(write(fds[1], &m, sizeof(m)) == (ssize_t)sizeof(m) ? 0 : 1);
  }
  close(fds[1]);
  ck_assert_int_eq(read(fds[0], &m, sizeof(m)), (ssize_t)sizeof(m));
  close(fds[0]);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  if (m.rc < 0)
    printf("probe %s: %s\n", device, m.err);
  *out = m.p;
  return m.rc;
}

/* Appends a line to $TD_GPU_OUT/plan-exact.txt (and prints it). */
static void report(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void report(const char *fmt, ...) {
  const char *dir = getenv("TD_GPU_OUT");
  char path[1024], line[512];
  va_list ap;
  FILE *f;

  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  printf("%s\n", line);
  fflush(stdout);
  if (dir == NULL || dir[0] == '\0')
    return;
  snprintf(path, sizeof(path), "%s/plan-exact.txt", dir);
  if ((f = fopen(path, "a")) != NULL) {
    fprintf(f, "%s\n", line);
    fclose(f);
  }
}

START_TEST(test_probe) {
  td_device_probe p;

  ck_assert_int_eq(probe_in_child(devices[1], &p), 0);
  report("probe %s: total %llu free %llu overhead %llu", devices[1],
         (unsigned long long)p.total, (unsigned long long)p.free,
         (unsigned long long)p.overhead);
  ck_assert(p.total > 0 && p.free > 0 && p.free <= p.total);
  if (!selftest) /* a context and handles cost something, but not gigabytes */
    ck_assert(p.overhead > 0 && p.overhead < (8ull << 30));
  else
    ck_assert_uint_eq(p.overhead, 0);
}
END_TEST

/* Example models at a few micro-batches: the device memory a step really
 * took (the probe's free memory less cudaMemGetInfo's after the step: this
 * process alone on the GPU) against td_plan_compute's total with the
 * probe's overhead, what traind admits by; within 2% or 16 MiB, whichever
 * is larger.  The CNNs also run cuDNN's convolutions, whose workspace the
 * model sizes for every row count (the seconds td_model_create takes are
 * reported).  The CPU backend (selftest) must match exactly. */
static const struct {
  const char *example;
  uint32_t micro_batch;
} plan_cases[] = {
    {"fashion-mnist-mlp", 1},  {"fashion-mnist-mlp", 16},      {"fashion-mnist-mlp", 64},
    {"fashion-mnist-mlp", 128}, {"fashion-mnist-cnn", 1},      {"fashion-mnist-cnn", 32},
    {"fashion-mnist-cnn-bf16", 32},
};

START_TEST(test_plan_exact) {
  const char *root = getenv("TD_SOURCE_ROOT"), *ex = plan_cases[_i].example;
  uint32_t mb = plan_cases[_i].micro_batch;
  uint64_t total = 0, f1 = 0, f2 = 0, measured, planned, tol, diff;
  td_jobspec *spec = calloc(1, sizeof(*spec));
  struct timespec t0, t1;
  td_device_probe p;
  td_step_stats st;
  td_mem_stats mem;
  td_backend *be;
  td_model *m;
  td_plan plan;
  char path[1024], err[256];

  ck_assert_ptr_nonnull(spec);
  snprintf(path, sizeof(path), "%s/examples/%s.yaml", root ? root : ".", ex);
  ck_assert_msg(td_jobspec_load(path, spec, err, sizeof(err)) == 0, "%s: %s", path, err);
  ck_assert_int_eq(probe_in_child(devices[1], &p), 0);
  ck_assert_int_eq(td_backend_create(devices[1], TD_BUDGET_UNLIMITED, &be, err, sizeof(err)), 0);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ck_assert_msg(td_model_create(be, spec, mb, &m, err, sizeof(err)) == 0, "%s", err);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ck_assert_int_eq(td_backend_device_mem(be, &total, &f1), 0);

  const td_layout *l = td_model_layout(m);
  uint32_t n = spec->batch_size;
  uint8_t *px = malloc((size_t)n * l->in_elems);
  int32_t *lb = malloc(n * sizeof(*lb));
  ck_assert(px != NULL && lb != NULL);
  for (size_t i = 0; i < (size_t)n * l->in_elems; i++)
    px[i] = (uint8_t)(i * 2654435761u >> 24);
  for (uint32_t i = 0; i < n; i++)
    lb[i] = (int32_t)(i % l->classes);
  ck_assert_msg(td_model_train_step(m, px, lb, n, &st) == 0, "%s", td_model_error(m));
  ck_assert_int_eq(td_backend_sync(be), 0);
  ck_assert_int_eq(td_backend_device_mem(be, &total, &f2), 0);

  ck_assert_int_eq(td_plan_compute(spec, mb, spec->precision, p.overhead, &plan), 0);
  planned = plan.total;
  td_backend_mem(be, &mem);
  if (selftest) { /* the host's free memory moves with everything else on it */
    measured = mem.peak + p.overhead;
    tol = 0;
  } else {
    uint64_t low = f1 < f2 ? f1 : f2;
    measured = p.free > low ? p.free - low : 0;
    tol = planned / 50 > (16u << 20) ? planned / 50 : (16u << 20);
  }
  diff = measured > planned ? measured - planned : planned - measured;
  report("plan %s %s micro_batch %u: planned %llu (arenas %llu + overhead %llu; the model's "
         "%llu, created in %.3f s) measured %llu diff %lld tolerance %llu %s", devices[1], ex, mb,
         (unsigned long long)planned, (unsigned long long)(planned - p.overhead),
         (unsigned long long)p.overhead,
         (unsigned long long)(td_model_plan(m)->total - td_model_plan(m)->overhead),
         (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
         (unsigned long long)measured, (long long)measured - (long long)planned,
         (unsigned long long)tol, diff <= tol ? "ok" : "FAIL");
  ck_assert_msg(diff <= tol, "%s, micro-batch %u: measured %llu, planned %llu", ex, mb,
                (unsigned long long)measured, (unsigned long long)planned);
  td_model_destroy(m);
  td_backend_destroy(be);
  free(px);
  free(lb);
  free(spec);
}
END_TEST

/* The ops, run in every precision pass. */
static Suite *ops_suite(void) {
  Suite *s = suite_create(precisions[prec].name);
  TCase *tc = tcase_create("cpu_vs_device");

  tcase_set_timeout(tc, 120);
  tcase_add_loop_test(tc, test_sgemm, 0, 4);
  tcase_add_test(tc, test_elementwise);
  tcase_add_loop_test(tc, test_normalize, 0, 4);
  tcase_add_loop_test(tc, test_gelu, 0, 2);
  tcase_add_test(tc, test_dropout);
  tcase_add_test(tc, test_graph_ops);
  tcase_add_test(tc, test_softmax_xent);
  tcase_add_test(tc, test_losses);
  tcase_add_test(tc, test_optimisers);
  tcase_add_test(tc, test_optimisers_full);
  tcase_add_test(tc, test_scale_ops);
  tcase_add_loop_test(tc, test_clip_finite_half, 0, 2);
  tcase_add_loop_test(tc, test_dense, 0, 2);
  tcase_add_loop_test(tc, test_conv2d, 0, (int)TD_ARRAY_SIZE(conv_cases));
  tcase_add_loop_test(tc, test_pool2d, 0, 3 * (int)TD_ARRAY_SIZE(pool_cases));
  tcase_add_loop_test(tc, test_batchnorm, 0, (int)TD_ARRAY_SIZE(bn_cases));
  tcase_add_loop_test(tc, test_layernorm, 0, (int)TD_ARRAY_SIZE(ln_cases));
  tcase_add_loop_test(tc, test_act, 0, 2);
  tcase_add_test(tc, test_softmax_and_mean);
  tcase_add_loop_test(tc, test_conv1d, 0, (int)TD_ARRAY_SIZE(conv1d_cases));
  tcase_add_test(tc, test_embedding);
  tcase_add_loop_test(tc, test_attention, 0, (int)TD_ARRAY_SIZE(attn_cases));
  suite_add_tcase(s, tc);
  return s;
}

/* The device facts, once (fp32). */
static Suite *device_suite(void) {
  Suite *s = suite_create("device");
  TCase *dev = tcase_create("device");

  tcase_set_timeout(dev, 120);
  tcase_add_test(dev, test_conv2d_short_workspace);
  tcase_add_test(dev, test_oom);
  tcase_add_test(dev, test_device_mem);
  tcase_add_test(dev, test_upload_async);
  tcase_add_test(dev, test_probe);
  tcase_add_loop_test(dev, test_plan_exact, 0, (int)TD_ARRAY_SIZE(plan_cases));
  suite_add_tcase(s, dev);
  return s;
}

/* 0 if the device opens, in a child so this process never touches CUDA. */
static int probe_device(void) {
  pid_t pid;
  int status;

  fflush(stdout); /* or the child prints it again */
  if ((pid = fork()) < 0)
    return -1;
  if (pid == 0) {
    td_backend *be = NULL;
    char err[256];
    int rc = td_backend_create(devices[1], TD_BUDGET_UNLIMITED, &be, err, sizeof(err));
    if (rc < 0)
      printf("skipped: %s\n", err);
    td_backend_destroy(be);
    fflush(stdout);
    _exit(rc == 0 ? 0 : 77);
  }
  if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
    return -1;
  return WEXITSTATUS(status);
}

/* Runs suite s, printing "== name: what" and Check's "N%: Checks" line;
 * the failures. */
static int run_suite(Suite *s, const char *name, enum fork_status fork, const char *what) {
  SRunner *sr = srunner_create(s);
  int failed;

  printf("== %s: %s\n", name, what);
  fflush(stdout);
  srunner_set_fork_status(sr, fork);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed;
}

int main(void) {
  const char *self = getenv("TD_GPU_SELFTEST");
  int failed = 0, rc;

  selftest = self != NULL && strcmp(self, "1") == 0;
  if (selftest) {
    devices[1] = "cpu1";
    printf("SELFTEST: %s against %s (no GPU involved)\n", devices[1], devices[0]);
  } else if (!TD_HAVE_CUDA) {
    printf("skipped: built without the CUDA backend\n");
    return 77;
  }
  if ((rc = probe_device()) != 0)
    return rc == 77 ? 77 : EXIT_FAILURE;
  /* The device facts first, each test in a child of its own: the probe
   * forks, and a process that has used CUDA cannot hand it to a child. */
  failed += run_suite(device_suite(), "device", CK_FORK, "out of memory, device memory, pinned "
                      "uploads, probe, plan check");
  /* Then every op, three precision passes in this one process: forked, each
   * of about 150 tests made a process with its own CUDA context and cuBLAS
   * and cuDNN handles, minutes of the device run's budget.  CK_FORK=yes in
   * the environment forks per test again, to isolate a crash. */
  for (prec = 0; prec < TD_ARRAY_SIZE(precisions); prec++) {
    char what[64];

    snprintf(what, sizeof(what), "tolerance %g", precisions[prec].tol);
    failed += run_suite(ops_suite(), precisions[prec].name,
                        getenv("CK_FORK") != NULL ? CK_FORK_GETENV : CK_NOFORK, what);
  }
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
