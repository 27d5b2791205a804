/* The CPU backend's ops against naive references, the allocator's budget,
 * backend selection, the model's gradients (finite differences and
 * micro-batch accumulation) and its safetensors output. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "backend_impl.h"
#include "cpu/cpu_ops.h"
#include "error.h"
#include "model.h"
#include "safetensors.h"
#include "td_config.h"
#include "util.h"

static uint64_t rng_state = 12345;

static float frand(void) { /* [-1, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rng_state >> 40) / 8388608.0 - 1.0);
}

static void fill_rand(float *x, size_t n) {
  for (size_t i = 0; i < n; i++)
    x[i] = frand();
}

static td_backend *cpu(void) {
  td_backend *be = NULL;
  char err[256];

  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)), 0);
  return be;
}

/* A device buffer holding a copy of host data. */
static float *dev_copy(td_backend *be, td_buf *b, const void *src, size_t bytes) {
  ck_assert_int_eq(td_backend_alloc(be, bytes, b), 0);
  if (src != NULL)
    td_backend_upload(be, b->ptr, src, bytes);
  return b->ptr;
}

static void assert_close(const float *got, const double *want, size_t n, double tol) {
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(fabs(got[i] - want[i]) <= tol * (1.0 + fabs(want[i])),
                  "element %zu: got %.7g, want %.7g", i, got[i], want[i]);
}

START_TEST(test_sgemm_transposes) {
  const int m = 7, n = 5, k = 9, lda_pad = 3, ldb_pad = 2, ldc_pad = 4;
  bool ta = _i & 1, tb = _i & 2;
  int lda = (ta ? m : k) + lda_pad, ldb = (tb ? k : n) + ldb_pad, ldc = n + ldc_pad;
  size_t asz = (size_t)(ta ? k : m) * lda, bsz = (size_t)(tb ? n : k) * ldb, csz = (size_t)m * ldc;
  float *a = malloc(asz * 4), *b = malloc(bsz * 4), *c = malloc(csz * 4), *got = malloc(csz * 4);
  double *want = malloc(csz * 8);
  const float alpha = 0.75f, beta = -0.5f;
  td_backend *be = cpu();
  td_buf da, db, dc;

  fill_rand(a, asz);
  fill_rand(b, bsz);
  fill_rand(c, csz);
  for (int i = 0; i < m; i++) {
    for (int j = 0; j < ldc; j++) {
      double s = 0;
      if (j >= n) { /* padding is left alone */
        want[i * ldc + j] = c[i * ldc + j];
        continue;
      }
      for (int p = 0; p < k; p++)
        s += (double)(ta ? a[p * lda + i] : a[i * lda + p]) *
             (tb ? b[j * ldb + p] : b[p * ldb + j]);
      want[i * ldc + j] = alpha * s + beta * c[i * ldc + j];
    }
  }
  td_backend_sgemm(be, ta, tb, m, n, k, alpha, dev_copy(be, &da, a, asz * 4), lda,
                   dev_copy(be, &db, b, bsz * 4), ldb, beta, dev_copy(be, &dc, c, csz * 4), ldc);
  td_backend_download(be, got, dc.ptr, csz * 4);
  ck_assert_int_eq(td_backend_sync(be), 0);
  assert_close(got, want, csz, 1e-5);
  td_backend_free(be, &da);
  td_backend_free(be, &db);
  td_backend_free(be, &dc);
  td_backend_destroy(be);
  free(a), free(b), free(c), free(got), free(want);
}
END_TEST

START_TEST(test_bias_ops) {
  enum { R = 6, C = 11 };
  float y[R * C], bias[C], dy[R * C], db[C], got[R * C];
  double want[R * C], want_db[C];
  td_backend *be = cpu();
  td_buf by, bb, bdy, bdb;

  fill_rand(y, R * C);
  fill_rand(bias, C);
  fill_rand(dy, R * C);
  fill_rand(db, C);
  for (int i = 0; i < R * C; i++)
    want[i] = (double)y[i] + bias[i % C];
  td_backend_bias_add(be, dev_copy(be, &by, y, sizeof(y)), dev_copy(be, &bb, bias, sizeof(bias)),
                      R, C);
  td_backend_download(be, got, by.ptr, sizeof(got));
  assert_close(got, want, R * C, 1e-6);

  /* beta 0 ignores the old contents (even NaN), beta 1 adds */
  for (int c = 0; c < C; c++) {
    want_db[c] = 0;
    for (int r = 0; r < R; r++)
      want_db[c] += dy[r * C + c];
  }
  dev_copy(be, &bdy, dy, sizeof(dy));
  dev_copy(be, &bdb, NULL, sizeof(db));
  td_backend_fill(be, bdb.ptr, C, NAN);
  td_backend_bias_grad(be, bdy.ptr, R, C, 0.0f, bdb.ptr);
  td_backend_download(be, got, bdb.ptr, sizeof(db));
  assert_close(got, want_db, C, 1e-6);
  td_backend_upload(be, bdb.ptr, db, sizeof(db));
  td_backend_bias_grad(be, bdy.ptr, R, C, 1.0f, bdb.ptr);
  td_backend_download(be, got, bdb.ptr, sizeof(db));
  for (int c = 0; c < C; c++)
    want_db[c] += db[c];
  assert_close(got, want_db, C, 1e-6);
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_free(be, &by), td_backend_free(be, &bb), td_backend_free(be, &bdy);
  td_backend_free(be, &bdb);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_relu) {
  enum { N = 37 };
  float x[N], dy[N], got[N];
  double want[N];
  td_backend *be = cpu();
  td_buf bx, by, bdy;

  fill_rand(x, N);
  fill_rand(dy, N);
  x[3] = 0.0f;
  for (int i = 0; i < N; i++)
    want[i] = x[i] > 0 ? x[i] : 0;
  dev_copy(be, &bx, x, sizeof(x));
  dev_copy(be, &by, NULL, sizeof(x));
  td_backend_relu_fwd(be, bx.ptr, by.ptr, N);
  td_backend_download(be, got, by.ptr, sizeof(got));
  assert_close(got, want, N, 0);
  td_backend_relu_fwd(be, bx.ptr, bx.ptr, N); /* in place */
  td_backend_download(be, got, bx.ptr, sizeof(got));
  assert_close(got, want, N, 0);

  for (int i = 0; i < N; i++)
    want[i] = x[i] > 0 ? dy[i] : 0;
  dev_copy(be, &bdy, dy, sizeof(dy));
  td_backend_relu_bwd(be, by.ptr, bdy.ptr, bdy.ptr, N);
  td_backend_download(be, got, bdy.ptr, sizeof(got));
  assert_close(got, want, N, 0);
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_free(be, &bx), td_backend_free(be, &by), td_backend_free(be, &bdy);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_normalize_u8) {
  uint8_t x[256];
  float got[256];
  double want[256];
  td_backend *be = cpu();
  td_buf bx, by;

  for (int i = 0; i < 256; i++) {
    x[i] = (uint8_t)(255 - i);
    want[i] = (x[i] / 255.0 - 0.2860) / 0.3530;
  }
  ck_assert_int_eq(td_backend_alloc(be, sizeof(x), &bx), 0);
  td_backend_upload(be, bx.ptr, x, sizeof(x));
  dev_copy(be, &by, NULL, sizeof(got));
  td_backend_normalize_u8(be, bx.ptr, by.ptr, 256, 0.2860f, 0.3530f);
  td_backend_download(be, got, by.ptr, sizeof(got));
  ck_assert_int_eq(td_backend_sync(be), 0);
  assert_close(got, want, 256, 1e-6);
  ck_assert_float_eq_tol(got[255], -0.2860 / 0.3530, 1e-6); /* pixel 0 */
  td_backend_free(be, &bx), td_backend_free(be, &by);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_softmax_xent) {
  enum { R = 5, C = 7 };
  float z[R * C], got[R * C], stats[2] = {1.5f, 2.0f};
  int32_t labels[R] = {0, 6, 3, 3, 1};
  double want[R * C], loss = 0;
  const float scale = 0.125f;
  unsigned correct = 0;
  td_backend *be = cpu();
  td_buf bz, bl, bd, bs;

  fill_rand(z, R * C);
  for (int c = 0; c < C; c++) /* row 2: a clear winner that is its label */
    z[2 * C + c] = c == 3 ? 5.0f : 0.1f * c;
  z[4 * C + 1] = 1e4f; /* large logits must not overflow */
  for (int r = 0; r < R; r++) {
    double max = -INFINITY, sum = 0;
    int best = 0;
    for (int c = 0; c < C; c++)
      if (z[r * C + c] > max)
        max = z[r * C + c], best = c;
    for (int c = 0; c < C; c++)
      sum += exp(z[r * C + c] - max);
    for (int c = 0; c < C; c++)
      want[r * C + c] = (exp(z[r * C + c] - max) / sum - (c == labels[r])) * scale;
    loss += log(sum) + max - z[r * C + labels[r]];
    correct += best == labels[r];
  }
  ck_assert_uint_ge(correct, 2);
  dev_copy(be, &bz, z, sizeof(z));
  ck_assert_int_eq(td_backend_alloc(be, sizeof(labels), &bl), 0);
  td_backend_upload(be, bl.ptr, labels, sizeof(labels));
  dev_copy(be, &bd, NULL, sizeof(z));
  dev_copy(be, &bs, stats, sizeof(stats));
  td_backend_softmax_xent(be, bz.ptr, bl.ptr, R, C, scale, bd.ptr, bs.ptr);
  td_backend_download(be, got, bd.ptr, sizeof(got));
  assert_close(got, want, R * C, 1e-6);
  td_backend_download(be, stats, bs.ptr, sizeof(stats));
  ck_assert_double_eq_tol(stats[0], 1.5 + loss, 1e-4);
  ck_assert_double_eq(stats[1], 2.0 + correct);

  /* without a gradient: only the statistics, added again */
  td_backend_softmax_xent(be, bz.ptr, bl.ptr, R, C, scale, NULL, bs.ptr);
  td_backend_download(be, stats, bs.ptr, sizeof(stats));
  ck_assert_double_eq_tol(stats[0], 1.5 + 2 * loss, 1e-4);
  ck_assert_double_eq(stats[1], 2.0 + 2 * correct);
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_free(be, &bz), td_backend_free(be, &bl), td_backend_free(be, &bd);
  td_backend_free(be, &bs);
  td_backend_destroy(be);
}
END_TEST

/* One parameter through two updates; the expected values were worked out
 * by hand from PyTorch's update rules. */
START_TEST(test_adam) {
  float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, 0.0f}, got[2];
  td_adam_hparams h = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                       .weight_decay = 0.0f, .step = 1};
  td_backend *be = cpu();
  td_buf bp, bg, bm, bv;

  dev_copy(be, &bp, p, sizeof(p));
  dev_copy(be, &bg, g, sizeof(g));
  dev_copy(be, &bm, NULL, sizeof(p));
  dev_copy(be, &bv, NULL, sizeof(p));
  /* m = 0.05, v = 0.00025; m^ = 0.5, v^ = 0.25: p = 1 - 0.1 * 0.5 / 0.5 */
  td_backend_adam(be, bp.ptr, bg.ptr, bm.ptr, bv.ptr, 2, &h);
  td_backend_download(be, got, bp.ptr, sizeof(got));
  ck_assert_float_eq_tol(got[0], 0.9f, 1e-6);
  ck_assert_float_eq(got[1], -2.0f); /* zero gradient: no move */
  /* g = 0.25: m = 0.07, v = 0.00031225; m^ = 0.07 / 0.19, v^ = 0.00031225 / 0.001999
   * p = 0.9 - 0.1 * 0.3684211 / 0.3952250 = 0.8067819 */
  g[0] = 0.25f;
  td_backend_upload(be, bg.ptr, g, sizeof(g));
  h.step = 2;
  td_backend_adam(be, bp.ptr, bg.ptr, bm.ptr, bv.ptr, 2, &h);
  td_backend_download(be, got, bp.ptr, sizeof(got));
  ck_assert_float_eq_tol(got[0], 0.8067819f, 2e-6);

  /* weight decay joins the gradient: g = 0 + 0.5 * -2 = -1, first step moves by +lr */
  float p2[1] = {-2.0f}, g2[1] = {0.0f}, z[1] = {0.0f};
  h = (td_adam_hparams){.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                        .weight_decay = 0.5f, .step = 1};
  td_backend_upload(be, bp.ptr, p2, 4);
  td_backend_upload(be, bg.ptr, g2, 4);
  td_backend_upload(be, bm.ptr, z, 4);
  td_backend_upload(be, bv.ptr, z, 4);
  td_backend_adam(be, bp.ptr, bg.ptr, bm.ptr, bv.ptr, 1, &h);
  td_backend_download(be, got, bp.ptr, 4);
  ck_assert_float_eq_tol(got[0], -1.99f, 1e-6);
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_free(be, &bp), td_backend_free(be, &bg), td_backend_free(be, &bm);
  td_backend_free(be, &bv);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_sgd) {
  float p = 1.0f, g = 0.5f, got;
  td_sgd_hparams h = {.lr = 0.1f, .momentum = 0.0f, .weight_decay = 0.0f};
  td_backend *be = cpu();
  td_buf bp, bg, bb;

  dev_copy(be, &bp, &p, 4);
  dev_copy(be, &bg, &g, 4);
  dev_copy(be, &bb, NULL, 4);
  td_backend_sgd(be, bp.ptr, bg.ptr, NULL, 1, &h); /* plain: 1 - 0.1 * 0.5 */
  td_backend_download(be, &got, bp.ptr, 4);
  ck_assert_float_eq_tol(got, 0.95f, 1e-7);

  /* momentum 0.9, weight decay 0.01 from p = 1:
   * step 1: buf = 0.5 + 0.01 = 0.51, p = 1 - 0.051 = 0.949
   * step 2: d = 0.5 + 0.00949 = 0.50949, buf = 0.459 + 0.50949 = 0.96849,
   *         p = 0.949 - 0.096849 = 0.852151 */
  h = (td_sgd_hparams){.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
  td_backend_upload(be, bp.ptr, &p, 4);
  td_backend_sgd(be, bp.ptr, bg.ptr, bb.ptr, 1, &h);
  td_backend_download(be, &got, bp.ptr, 4);
  ck_assert_float_eq_tol(got, 0.949f, 1e-6);
  td_backend_sgd(be, bp.ptr, bg.ptr, bb.ptr, 1, &h);
  td_backend_download(be, &got, bp.ptr, 4);
  ck_assert_float_eq_tol(got, 0.852151f, 1e-6);
  td_backend_download(be, &got, bb.ptr, 4);
  ck_assert_float_eq_tol(got, 0.96849f, 1e-6);
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_free(be, &bp), td_backend_free(be, &bg), td_backend_free(be, &bb);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_fill) {
  float got[19];
  td_backend *be = cpu();
  td_buf b;

  dev_copy(be, &b, NULL, sizeof(got));
  td_backend_fill(be, b.ptr, 19, 2.5f);
  td_backend_download(be, got, b.ptr, sizeof(got));
  for (int i = 0; i < 19; i++)
    ck_assert_float_eq(got[i], 2.5f);
  td_backend_free(be, &b);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_alloc_budget) {
  td_backend *be = NULL;
  td_mem_stats mem;
  td_buf a, b, c, empty;

  ck_assert_int_eq(td_backend_create("cpu1", 1000, &be, NULL, 0), 0);
  ck_assert_int_eq(td_backend_alloc(be, 600, &a), 0);
  ck_assert_ptr_nonnull(a.ptr);
  ck_assert_uint_eq(((const uint8_t *)a.ptr)[599], 0); /* zeroed */
  ck_assert_int_eq(td_backend_alloc(be, 401, &b), TD_EOOM);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.budget, 1000);
  ck_assert_uint_eq(mem.used, 600);
  ck_assert_uint_eq(mem.oom_asked, 401);
  ck_assert_uint_eq(mem.oom_free, 400);
  ck_assert_int_eq(td_backend_alloc(be, 400, &b), 0);
  ck_assert_int_eq(td_backend_alloc(be, 0, &empty), 0);
  ck_assert_ptr_null(empty.ptr);
  td_backend_free(be, &empty);
  ck_assert_int_eq(td_backend_alloc(be, 1, &c), TD_EOOM);
  td_backend_free(be, &a);
  ck_assert_ptr_null(a.ptr);
  td_backend_free(be, &a); /* twice is harmless */
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.used, 400);
  ck_assert_uint_eq(mem.peak, 1000);
  td_backend_free(be, &b);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.used, 0);
  ck_assert_uint_eq(mem.peak, 1000);
  ck_assert_uint_eq(mem.overhead, 0);
  td_backend_destroy(be);
  td_backend_destroy(NULL);
}
END_TEST

START_TEST(test_select) {
  static const char *bad[] = {"bogus", "cpu", "cpux", "cpu-1", "cpu1234", "cuda", "CPU0", ""};
  td_backend *be = NULL;
  char err[256];
  int rc;

  ck_assert_int_eq(td_backend_create("cpu0", 1, &be, err, sizeof(err)), 0);
  ck_assert_int_eq(td_backend_get_kind(be), TD_BACKEND_CPU);
  ck_assert_str_eq(td_backend_device(be), "cpu0");
  td_backend_destroy(be);
  ck_assert_int_eq(td_backend_create("cpu12", 1, &be, err, sizeof(err)), 0);
  td_backend_destroy(be);
  for (size_t i = 0; i < TD_ARRAY_SIZE(bad); i++) {
    be = NULL;
    ck_assert_int_eq(td_backend_create(bad[i], 1, &be, err, sizeof(err)), TD_EINVAL);
    ck_assert_ptr_null(be);
    ck_assert_msg(strstr(err, "unknown device") != NULL, "%s: %s", bad[i], err);
  }
  be = NULL;
  rc = td_backend_create("cuda0", 1 << 20, &be, err, sizeof(err));
#if TD_HAVE_CUDA
  /* fine where a GPU is present; a clear refusal where none is */
  ck_assert_msg(rc == 0 || rc == TD_EBACKEND, "cuda0: %d %s", rc, err);
  if (rc == 0)
    ck_assert_int_eq(td_backend_get_kind(be), TD_BACKEND_CUDA);
  else
    ck_assert_msg(strstr(err, "cuda0") != NULL, "%s", err);
#else
  ck_assert_int_eq(rc, TD_EBACKEND);
  ck_assert_msg(strstr(err, "built without the CUDA backend") != NULL, "%s", err);
#endif
  td_backend_destroy(be);
}
END_TEST

/* A device whose stream dies: its sync finds a sticky error, as CUDA's
 * cudaStreamSynchronize does after a kernel faulted. */
static const td_backend_ops *real_ops;

static void dying_sync(td_backend *be) {
  real_ops->sync(be);
  td__backend_fail(be, TD_ECUDA, "%s: an illegal memory access was encountered", be->device);
}

/* An out-of-memory failure latched first must not hide a sticky error
 * latched after it: the step would report TD_EOOM, re-plan and run on a dead
 * context until the next sync. */
START_TEST(test_sticky_error_wins) {
  td_backend *be = cpu();
  td_backend_ops fake;
  td_buf b;

  ck_assert_int_eq(td_backend_alloc(be, 64, &b), 0);
  real_ops = be->ops;
  fake = *be->ops;
  fake.sync = dying_sync;
  be->ops = &fake;
  td_backend_inject_oom(be, 1);
  td_backend_fill(be, b.ptr, 16, 1.0f);
  ck_assert_int_eq(td_backend_status(be), TD_EOOM);
  ck_assert_int_eq(td_backend_sync(be), TD_ECUDA);
  ck_assert_msg(strstr(td_backend_error(be), "illegal memory access") != NULL, "%s",
                td_backend_error(be));
  /* sticky: it stays, and nothing after it takes its place */
  td__backend_fail(be, TD_EOOM, "%s: out of memory", be->device);
  ck_assert_int_eq(td_backend_sync(be), TD_ECUDA);
  ck_assert_int_eq(td_backend_status(be), TD_ECUDA);
  be->ops = real_ops;
  td_backend_free(be, &b);
  td_backend_destroy(be);
}
END_TEST

/* Otherwise the first failure wins. */
START_TEST(test_first_failure_wins) {
  td_backend *be = cpu();

  td__backend_fail(be, TD_EOOM, "first");
  td__backend_fail(be, TD_EINVAL, "second");
  ck_assert_str_eq(td_backend_error(be), "first");
  ck_assert_int_eq(td_backend_sync(be), TD_EOOM);
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_destroy(be);
}
END_TEST

/* An MLP of dense layers (ReLU between them) on in_elems inputs. */
static void mlp_spec(td_jobspec *s, uint32_t in_elems, const uint32_t *units, int n,
                     uint32_t batch, td_opt_kind opt) {
  memset(s, 0, sizeof(*s));
  snprintf(s->name, sizeof(s->name), "test-mlp");
  s->input_dims[0] = in_elems;
  s->input_rank = 1;
  for (int i = 0; i < n; i++) {
    if (i > 0)
      s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_RELU};
    s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = units[i]};
  }
  s->batch_size = batch;
  s->epochs = 1;
  s->seed = 7;
  s->norm_mean = 0.5f;
  s->norm_std = 0.25f;
  s->opt = (td_optimizer){.kind = opt, .lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f,
                          .eps = 1e-8f, .momentum = opt == TD_OPT_SGD ? 0.9f : 0.0f,
                          .weight_decay = 0.001f};
}

static void rand_batch(uint8_t *px, int32_t *lb, uint32_t n, uint32_t in, uint32_t classes) {
  for (size_t i = 0; i < (size_t)n * in; i++)
    px[i] = (uint8_t)((frand() + 1.0f) * 127.5f);
  for (uint32_t i = 0; i < n; i++)
    lb[i] = (uint8_t)((uint32_t)((frand() + 1.0f) * 1000.0f) % classes);
}

START_TEST(test_gradient_finite_differences) {
  enum { IN = 6, B = 4 };
  const uint32_t units[] = {5, 4, 3};
  uint8_t px[B * IN];
  int32_t lb[B];
  td_jobspec spec;
  td_backend *be = cpu();
  td_model *m = NULL;
  td_step_stats st;
  float *p, *grad;
  uint64_t n;
  const float eps = 1e-3f; /* small enough not to cross a ReLU kink here */
  int checked = 0;

  mlp_spec(&spec, IN, units, 3, B, TD_OPT_ADAM);
  ck_assert_int_eq(td_model_create(be, &spec, B, &m, NULL, 0), 0);
  n = td_model_nparams(m);
  /* each weight at a multiple of 64 floats (TD_PLAN_PARAM_ALIGN), the
   * zeros between them checked like the rest: their gradient is 0 */
  ck_assert_uint_eq(n, 128 + 4 * 3 + 3);
  p = malloc(n * 4);
  grad = malloc(n * 4);
  rand_batch(px, lb, B, IN, 3);
  ck_assert_int_eq(td_model_backward(m, px, lb, B, &st), 0);
  ck_assert_int_eq(td_model_get_grads(m, grad), 0);
  ck_assert_int_eq(td_model_get_params(m, p), 0);
  for (uint64_t i = 0; i < n; i++) {
    float keep = p[i];
    double up, down, fd;

    p[i] = keep + eps;
    ck_assert_int_eq(td_model_set_params(m, p), 0);
    ck_assert_int_eq(td_model_eval(m, px, lb, B, &st), 0);
    up = st.loss_sum / B;
    p[i] = keep - eps;
    ck_assert_int_eq(td_model_set_params(m, p), 0);
    ck_assert_int_eq(td_model_eval(m, px, lb, B, &st), 0);
    down = st.loss_sum / B;
    p[i] = keep;
    fd = (up - down) / (2.0 * eps);
    ck_assert_msg(fabs(fd - grad[i]) <= 2e-4 + 1e-2 * fabs(fd),
                  "parameter %llu: backprop %.6f, finite difference %.6f",
                  (unsigned long long)i, grad[i], fd);
    checked += fabs(fd) > 1e-3;
  }
  ck_assert_int_gt(checked, (int)n / 3); /* the check saw real gradients */
  free(p);
  free(grad);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* Weights after steps at micro-batch `micro`, from the same data. */
static float *train_weights(const td_jobspec *spec, uint32_t micro, const uint8_t *px,
                            const int32_t *lb, uint32_t count, int steps) {
  td_backend *be = cpu();
  td_model *m = NULL;
  td_step_stats st;
  float *w;

  ck_assert_int_eq(td_model_create(be, spec, micro, &m, NULL, 0), 0);
  for (int s = 0; s < steps; s++) {
    ck_assert_int_eq(td_model_train_step(m, px, lb, count, &st), 0);
    ck_assert_uint_eq(st.count, count);
  }
  ck_assert_uint_eq(td_model_steps(m), (uint64_t)steps);
  w = malloc(td_model_nparams(m) * 4);
  ck_assert_int_eq(td_model_get_params(m, w), 0);
  td_model_destroy(m);
  td_backend_destroy(be);
  return w;
}

static void accumulation_case(td_opt_kind opt, uint32_t count, uint32_t micro) {
  enum { IN = 20, B = 32 };
  const uint32_t units[] = {16, 12, 5};
  uint8_t px[B * IN];
  int32_t lb[B];
  td_jobspec spec;
  float *whole, *sliced;
  uint64_t n = IN * 16 + 16 + 16 * 12 + 12 + 12 * 5 + 5;

  mlp_spec(&spec, IN, units, 3, B, opt);
  rand_batch(px, lb, B, IN, 5);
  whole = train_weights(&spec, B, px, lb, count, 3);
  sliced = train_weights(&spec, micro, px, lb, count, 3);
  for (uint64_t i = 0; i < n; i++)
    ck_assert_msg(fabsf(whole[i] - sliced[i]) <= 1e-5f * fmaxf(1.0f, fabsf(whole[i])),
                  "parameter %llu: %.8f at micro-batch %u, %.8f at %u", (unsigned long long)i,
                  whole[i], B, sliced[i], micro);
  free(whole);
  free(sliced);
}

START_TEST(test_accumulation_adam) { accumulation_case(TD_OPT_ADAM, 32, 8); }
END_TEST

START_TEST(test_accumulation_sgd) { accumulation_case(TD_OPT_SGD, 32, 8); }
END_TEST

/* Uneven slices (12, 12, 8) and a short last batch (27 of 32 samples). */
START_TEST(test_accumulation_uneven) {
  accumulation_case(TD_OPT_ADAM, 32, 12);
  accumulation_case(TD_OPT_ADAM, 27, 5);
}
END_TEST

START_TEST(test_step_rejects_bad_input) {
  enum { IN = 4, B = 8 };
  const uint32_t units[] = {3};
  uint8_t px[B * IN] = {0};
  int32_t lb[B] = {0};
  td_jobspec spec;
  td_backend *be = cpu();
  td_model *m = NULL;
  td_step_stats st = {0};

  mlp_spec(&spec, IN, units, 1, B, TD_OPT_SGD);
  ck_assert_int_eq(td_model_create(be, &spec, 4, &m, NULL, 0), 0);
  lb[5] = 3;
  ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), TD_EDATA);
  ck_assert_msg(strstr(td_model_error(m), "label 3 of sample 5") != NULL, "%s",
                td_model_error(m));
  ck_assert_uint_eq(td_model_steps(m), 0);
  lb[5] = 2;
  ck_assert_int_eq(td_model_train_step(m, px, lb, 0, &st), TD_EINVAL);
  ck_assert_int_eq(td_model_train_step(m, px, lb, B + 1, &st), TD_EINVAL);
  ck_assert_int_eq(td_model_train_step(m, px, lb, B, &st), 0);
  ck_assert_str_eq(td_model_error(m), "");
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

static char tmp_path[64];

static void tmp_setup(void) {
  snprintf(tmp_path, sizeof(tmp_path), "/tmp/test-backend-%d.safetensors", (int)getpid());
}

static void tmp_teardown(void) { unlink(tmp_path); }

START_TEST(test_save_safetensors) {
  const uint32_t units[] = {6, 2};
  td_jobspec spec;
  td_backend *be = cpu();
  td_model *m = NULL;
  td_st_file *f = NULL;
  td_st_tensor t;
  const td_st_meta meta[] = {{"format", "pt"}, {"note", "a \"quoted\"\nline"}};
  char err[256];
  float *w;

  mlp_spec(&spec, 5, units, 2, 4, TD_OPT_ADAM);
  ck_assert_int_eq(td_model_create(be, &spec, 4, &m, NULL, 0), 0);
  /* the parameter arena, alignment padding included */
  w = malloc(td_model_nparams(m) * sizeof(float));
  ck_assert_ptr_nonnull(w);
  ck_assert_int_eq(td_model_get_params(m, w), 0);
  for (int i = 0; i < 5 * 6 + 6; i++) /* nn.Linear's init bound: 1/sqrt(5) */
    ck_assert_float_le(fabsf(w[i]), 1.0f / sqrtf(5.0f));
  ck_assert_int_eq(td_model_save(m, tmp_path, meta, 2), 0);
  ck_assert_int_eq(access(tmp_path, F_OK), 0);
  ck_assert_int_eq(td_safetensors_load(tmp_path, 1 << 20, &f, err, sizeof(err)), 0);
  ck_assert_uint_eq(td_safetensors_count(f), 4);
  ck_assert_str_eq(td_safetensors_meta(f, "format"), "pt");
  ck_assert_str_eq(td_safetensors_meta(f, "note"), "a \"quoted\"\nline");
  ck_assert_ptr_null(td_safetensors_meta(f, "missing"));

  /* nn.Sequential(Linear(5, 6), ReLU(), Linear(6, 2)): the ReLU holds index 1 */
  ck_assert_int_eq(td_safetensors_find(f, "0.weight", &t), 0);
  ck_assert_str_eq(t.dtype, "F32");
  ck_assert_uint_eq(t.rank, 2);
  ck_assert_uint_eq(t.shape[0], 6);
  ck_assert_uint_eq(t.shape[1], 5);
  ck_assert_mem_eq(t.data, w, sizeof(float) * 30);
  ck_assert_int_eq(td_safetensors_find(f, "0.bias", &t), 0);
  ck_assert_uint_eq(t.rank, 1);
  ck_assert_mem_eq(t.data, w + 30, sizeof(float) * 6);
  ck_assert_int_eq(td_safetensors_find(f, "2.weight", &t), 0);
  ck_assert_uint_eq(t.shape[0], 2);
  ck_assert_uint_eq(t.shape[1], 6);
  ck_assert_mem_eq(t.data, w + 64, sizeof(float) * 12); /* TD_PLAN_PARAM_ALIGN */
  ck_assert_int_eq(td_safetensors_find(f, "2.bias", &t), 0);
  ck_assert_mem_eq(t.data, w + 76, sizeof(float) * 2);
  ck_assert_int_eq(td_safetensors_find(f, "1.weight", &t), TD_ENOENT);
  td_safetensors_free(f);
  free(w);
  td_model_destroy(m);
  td_backend_destroy(be);
}
END_TEST

/* The exact bytes of a small file, as the format describes them. */
START_TEST(test_safetensors_layout) {
  const float v[3] = {1.0f, -2.0f, 0.5f};
  const td_st_tensor t = {.name = "x", .dtype = "F32", .rank = 1, .shape = {3}, .data = v,
                          .bytes = 12};
  const char *json = "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
  char *buf = NULL;
  size_t len, hlen = strlen(json);

  ck_assert_int_eq(td_safetensors_write(tmp_path, &t, 1, NULL, 0), 0);
  ck_assert_int_eq(td_read_file(tmp_path, 4096, &buf, &len), 0);
  while (hlen % 8 != 0)
    hlen++;
  ck_assert_uint_eq(len, 8 + hlen + 12);
  ck_assert_uint_eq((uint8_t)buf[0], hlen);
  for (int i = 1; i < 8; i++)
    ck_assert_uint_eq((uint8_t)buf[i], 0);
  ck_assert_mem_eq(buf + 8, json, strlen(json));
  for (size_t i = 8 + strlen(json); i < 8 + hlen; i++)
    ck_assert_int_eq(buf[i], ' ');
  ck_assert_mem_eq(buf + 8 + hlen, v, 12);
  free(buf);
}
END_TEST

START_TEST(test_safetensors_write_rejects) {
  const float v[2] = {0};
  td_st_tensor t[2] = {
      {.name = "a", .dtype = "F32", .rank = 1, .shape = {2}, .data = v, .bytes = 8},
      {.name = "a", .dtype = "F32", .rank = 1, .shape = {2}, .data = v, .bytes = 8},
  };

  ck_assert_int_eq(td_safetensors_write(tmp_path, t, 2, NULL, 0), TD_EINVAL); /* repeated */
  t[1].name = "b";
  t[1].bytes = 4;
  ck_assert_int_eq(td_safetensors_write(tmp_path, t, 2, NULL, 0), TD_EINVAL); /* size */
  t[1].bytes = 8;
  t[1].dtype = "F31";
  ck_assert_int_eq(td_safetensors_write(tmp_path, t, 2, NULL, 0), TD_EINVAL); /* dtype */
  t[1].dtype = "BF16";
  t[1].bytes = 4;
  ck_assert_int_eq(td_safetensors_write(tmp_path, t, 2, NULL, 0), 0);
  ck_assert_int_eq(access(tmp_path, F_OK), 0);
}
END_TEST

/* A header in a file with `data` bytes of data after it. */
static int parse_header(const char *json, size_t data, char *err, size_t errlen) {
  size_t hlen = strlen(json), len = 8 + hlen + data;
  uint8_t *buf = calloc(1, len);
  td_st_file *f = NULL;
  int rc;

  for (int i = 0; i < 8; i++)
    buf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
  memcpy(buf + 8, json, hlen);
  rc = td_safetensors_parse(buf, len, &f, err, errlen);
  if (rc == 0)
    ck_assert_ptr_nonnull(f);
  else
    ck_assert_ptr_null(f);
  td_safetensors_free(f);
  free(buf);
  return rc;
}

START_TEST(test_safetensors_parse_rejects) {
  static const struct {
    const char *json;
    size_t data;
    const char *why;
  } bad[] = {
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", 8, "outside"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", 12, "do not match"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[12,0]}}", 12, "outside"},
      {"{\"x\":{\"dtype\":\"Q4\",\"shape\":[3],\"data_offsets\":[0,12]}}", 12, "unknown dtype"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[3]}}", 12, "needs dtype"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}",
       4, "too large"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
       4, "do not match"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
       "more than"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
       "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "twice"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "expected"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative"},
      {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "after"},
      {"{\"__metadata__\":{\"a\":1}}", 0, "expected a string"},
      {"{\"x\\q\":{}}", 0, "bad escape"},
      {"{\"x\":{\"y\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}}", 0, "too deeply"},
      {"[1]", 0, "not a JSON object"},
      {"", 0, ""},
  };
  char err[256];

  for (size_t i = 0; i < TD_ARRAY_SIZE(bad); i++) {
    ck_assert_msg(parse_header(bad[i].json, bad[i].data, err, sizeof(err)) == TD_EDATA,
                  "accepted: %s", bad[i].json);
    ck_assert_msg(strstr(err, bad[i].why) != NULL, "%s: message '%s'", bad[i].json, err);
  }
  /* unknown keys are skipped; an escaped name is decoded; an empty header is fine */
  ck_assert_int_eq(parse_header("{\"a\\u00e9\":{\"dtype\":\"U8\",\"shape\":[],\"x\":{\"k\":"
                                "[true,null,-1.5e3]},\"data_offsets\":[0,1]}}", 1, err,
                                sizeof(err)), 0);
  ck_assert_int_eq(parse_header("{}", 0, err, sizeof(err)), 0);
}
END_TEST

START_TEST(test_safetensors_parse_truncated) {
  uint8_t buf[16] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
  td_st_file *f = NULL;
  char err[256];

  ck_assert_int_eq(td_safetensors_parse(buf, 5, &f, err, sizeof(err)), TD_EDATA);
  ck_assert_msg(strstr(err, "too short") != NULL, "%s", err);
  ck_assert_int_eq(td_safetensors_parse(buf, sizeof(buf), &f, err, sizeof(err)), TD_EDATA);
  ck_assert_msg(strstr(err, "exceeds the file") != NULL, "%s", err);
  buf[7] = 0x80; /* 2^63 */
  ck_assert_int_eq(td_safetensors_parse(buf, sizeof(buf), &f, err, sizeof(err)), TD_EDATA);
  ck_assert_ptr_null(f);
  ck_assert_int_eq(td_safetensors_load("/nonexistent/x.safetensors", 1 << 20, &f, err,
                                       sizeof(err)), TD_ENOENT);
}
END_TEST

/* Adam over more elements than one lane takes (its lanes share them out):
 * each element the bits of the one-element reference, on 1 and 3 lanes,
 * with a tail that is no multiple of 16. */
START_TEST(test_adam_lanes) {
  const size_t n = 200003;
  static const char *const lanes[] = {"1", "3"};
  td_adam_hparams h = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                       .weight_decay = 0.01f, .step = 3};
  float *p0 = malloc(n * 4), *g = malloc(n * 4), *m0 = malloc(n * 4), *v0 = malloc(n * 4);
  float *p = malloc(n * 4), *m = malloc(n * 4), *v = malloc(n * 4);
  float rp[1], rm[1], rv[1];

  ck_assert(p0 && g && m0 && v0 && p && m && v);
  fill_rand(p0, n);
  fill_rand(g, n);
  fill_rand(m0, n);
  fill_rand(v0, n);
  for (size_t i = 0; i < n; i++)
    v0[i] = v0[i] * v0[i];
  for (size_t l = 0; l < TD_ARRAY_SIZE(lanes); l++) {
    td_backend *be;

    setenv("TRAIND_CPU_LANES", lanes[l], 1);
    be = cpu();
    memcpy(p, p0, n * 4), memcpy(m, m0, n * 4), memcpy(v, v0, n * 4);
    td_backend_adam(be, p, g, m, v, n, &h);
    for (size_t i = 0; i < n; i += i < 64 || i > n - 64 ? 1 : 997) {
      rp[0] = p0[i], rm[0] = m0[i], rv[0] = v0[i];
      td_backend_adam(be, rp, g + i, rm, rv, 1, &h);
      ck_assert_msg(memcmp(&p[i], rp, 4) == 0 && memcmp(&m[i], rm, 4) == 0 &&
                    memcmp(&v[i], rv, 4) == 0, "%s lanes: element %zu", lanes[l], i);
    }
    ck_assert_int_eq(td_backend_sync(be), 0);
    td_backend_destroy(be);
  }
  unsetenv("TRAIND_CPU_LANES");
  free(p0), free(g), free(m0), free(v0), free(p), free(m), free(v);
}
END_TEST

/* The documented order of the CPU dense ops (kernels/cpu/dense.c), one
 * multiply and one add at a time: y = (chain over k) + b, dx = chain over
 * o, dw = beta dw + each TD_BLOCK_ROWS block's chain, in block order. */
static void dense_reference(const float *x, const float *w, const float *b, const float *dy,
                            float *y, float *dx, float *dw, int n, int in, int out,
                            float beta) {
  for (int r = 0; r < n; r++) {
    for (int o = 0; o < out; o++) {
      float acc = 0.0f;

      for (int k = 0; k < in; k++) {
        float p = x[(size_t)r * in + k] * w[(size_t)o * in + k];
        acc = acc + p;
      }
      y[(size_t)r * out + o] = acc + b[o];
    }
    for (int i = 0; i < in; i++) {
      float acc = 0.0f;

      for (int o = 0; o < out; o++) {
        float p = dy[(size_t)r * out + o] * w[(size_t)o * in + i];
        acc = acc + p;
      }
      dx[(size_t)r * in + i] = acc;
    }
  }
  for (int o = 0; o < out; o++) {
    for (int i = 0; i < in; i++) {
      float acc = beta == 0.0f ? 0.0f : beta * dw[(size_t)o * in + i];

      for (int r0 = 0; r0 < n; r0 += TD_BLOCK_ROWS) {
        float part = 0.0f;

        for (int r = r0; r < n && r < r0 + TD_BLOCK_ROWS; r++) {
          float p = dy[(size_t)r * out + o] * x[(size_t)r * in + i];
          part = part + p;
        }
        acc = acc + part;
      }
      dw[(size_t)o * in + i] = acc;
    }
  }
}

/* The CPU's dense ops give exactly the reference's bits, on the AVX-512
 * tiles and the portable ones, on 1 and 3 lanes, in one call or with the
 * rows cut anywhere (y, dx) or on a block boundary (dw, beta 1 going on);
 * shapes with tails everywhere and sums longer than a packed strip. */
START_TEST(test_dense_order) {
  static const struct {
    int n, in, out;
    float beta;
  } cases[] = {{37, 45, 21, 0.0f}, {48, 144, 40, 1.0f}, {130, 300, 70, 0.5f},
               {40, 600, 530, 1.0f}, {3, 1, 1, 0.0f}};
  static const char *const lanes[] = {"1", "3"};

  for (size_t c = 0; c < TD_ARRAY_SIZE(cases); c++) {
    int n = cases[c].n, in = cases[c].in, out = cases[c].out, cut = n / 2 / 16 * 16;
    size_t xn = (size_t)n * in, yn = (size_t)n * out, wn = (size_t)in * out;
    float *x = malloc(xn * 4), *w = malloc(wn * 4), *b = malloc((size_t)out * 4);
    float *dy = malloc(yn * 4), *dw0 = malloc(wn * 4), *ry = malloc(yn * 4);
    float *rdx = malloc(xn * 4), *rdw = malloc(wn * 4), *y = malloc(yn * 4);
    float *dx = malloc(xn * 4), *dw = malloc(wn * 4), *db = malloc((size_t)out * 4);
    float *scratch = malloc(wn * 4);

    ck_assert(x && w && b && dy && dw0 && ry && rdx && rdw && y && dx && dw && db && scratch);
    fill_rand(x, xn);
    fill_rand(w, wn);
    fill_rand(b, (size_t)out);
    fill_rand(dy, yn);
    fill_rand(dw0, wn);
    memcpy(rdw, dw0, wn * 4);
    dense_reference(x, w, b, dy, ry, rdx, rdw, n, in, out, cases[c].beta);
    for (int v = 0; v < 2 * (int)TD_ARRAY_SIZE(lanes); v++) {
      td_backend *be;

      setenv("TRAIND_CPU_LANES", lanes[v / 2], 1);
      be = cpu();
      td__cpu_dense_portable(v % 2 == 1);
      /* whole */
      memcpy(dw, dw0, wn * 4);
      td_backend_dense_fwd(be, x, w, b, y, n, in, out);
      td_backend_dense_bwd(be, x, w, dy, dx, dw, db, n, in, out, cases[c].beta);
      ck_assert_int_eq(td_backend_sync(be), 0);
      ck_assert_msg(memcmp(y, ry, yn * 4) == 0, "case %zu, variant %d: y", c, v);
      ck_assert_msg(memcmp(dx, rdx, xn * 4) == 0, "case %zu, variant %d: dx", c, v);
      ck_assert_msg(memcmp(dw, rdw, wn * 4) == 0, "case %zu, variant %d: dw", c, v);
      /* y and dx cut after 7 rows (dw into scratch); dw after the blocks before cut */
      memset(y, 0, yn * 4);
      memset(dx, 0, xn * 4);
      memcpy(dw, dw0, wn * 4);
      td_backend_dense_fwd(be, x, w, b, y, n < 7 ? n : 7, in, out);
      if (n > 7)
        td_backend_dense_fwd(be, x + 7 * in, w, b, y + 7 * out, n - 7, in, out);
      if (cut > 0)
        td_backend_dense_bwd(be, x, w, dy, NULL, dw, NULL, cut, in, out, cases[c].beta);
      td_backend_dense_bwd(be, x + (size_t)cut * in, w, dy + (size_t)cut * out, NULL, dw, NULL,
                           n - cut, in, out, cut > 0 ? 1.0f : cases[c].beta);
      td_backend_dense_bwd(be, x, w, dy, dx, scratch, NULL, n < 7 ? n : 7, in, out, 0.0f);
      if (n > 7)
        td_backend_dense_bwd(be, x + 7 * in, w, dy + 7 * out, dx + 7 * in, scratch, NULL,
                             n - 7, in, out, 0.0f);
      ck_assert_int_eq(td_backend_sync(be), 0);
      ck_assert_msg(memcmp(y, ry, yn * 4) == 0, "case %zu, variant %d: y cut", c, v);
      ck_assert_msg(memcmp(dx, rdx, xn * 4) == 0, "case %zu, variant %d: dx cut", c, v);
      ck_assert_msg(memcmp(dw, rdw, wn * 4) == 0, "case %zu, variant %d: dw cut", c, v);
      td_backend_destroy(be);
    }
    td__cpu_dense_portable(false);
    free(x), free(w), free(b), free(dy), free(dw0), free(ry), free(rdx), free(rdw);
    free(y), free(dx), free(dw), free(db), free(scratch);
  }
  unsetenv("TRAIND_CPU_LANES");
}
END_TEST

/* The ops the CPU lanes share out by element, channel, row or column
 * (gelu, batchnorm2d, layernorm) give the same bits on 1, 2 and 3 lanes:
 * sizes over the one-lane thresholds, tails no multiple of 16 or of the
 * lane count, dgamma/dbeta both fresh (beta 0) and accumulated (beta 1). */
enum { NL_GELU = 40003, NL_N = 32, NL_C = 13, NL_HW = 97, NL_ROWS = 301, NL_COLS = 67 };
#define NL_BN ((size_t)NL_N * NL_C * NL_HW)
#define NL_LN ((size_t)NL_ROWS * NL_COLS)
/* gelu fwd+bwd per kind; bn y, running stats, save, dx, dgamma/dbeta twice;
 * eval y; ln y, save, dx, dgamma/dbeta twice */
#define NL_OUT (4 * (size_t)NL_GELU + 2 * NL_BN + 4 * NL_C + 2 * NL_C + NL_BN + 4 * NL_C + \
                NL_LN + 2 * NL_ROWS + NL_LN + 4 * NL_COLS)

static void norm_lanes_run(const float *in, float *out) {
  const td_batchnorm_desc d = {.n = NL_N, .c = NL_C, .hw = NL_HW, .eps = 1e-5f,
                               .momentum = 0.1f};
  const float *x = in, *dy = in + NL_BN, *gamma = in + 2 * NL_BN, *beta = gamma + NL_COLS;
  td_backend *be = cpu();
  float *o = out;

  for (int k = 0; k < 2; k++) {
    td_gelu_kind kind = k == 0 ? TD_GELU_ERF : TD_GELU_TANH;

    td_backend_gelu_fwd(be, kind, x, o, NL_GELU);
    td_backend_gelu_bwd(be, kind, x, dy, o + NL_GELU, NL_GELU);
    o += 2 * NL_GELU;
  }
  /* batchnorm: y, running mean/var (from gamma's values), save mean/invstd */
  memcpy(o + NL_BN, gamma, 2 * NL_C * 4);
  td_backend_batchnorm2d_fwd(be, &d, true, x, o, gamma, beta, o + NL_BN, o + NL_BN + NL_C,
                             o + NL_BN + 2 * NL_C, o + NL_BN + 3 * NL_C);
  td_backend_batchnorm2d_bwd(be, &d, x, dy, o + NL_BN + 4 * NL_C, gamma,
                             o + NL_BN + 2 * NL_C, o + NL_BN + 3 * NL_C, 0.0f,
                             o + 2 * NL_BN + 4 * NL_C, o + 2 * NL_BN + 5 * NL_C);
  td_backend_batchnorm2d_bwd(be, &d, x, dy, NULL, gamma, o + NL_BN + 2 * NL_C,
                             o + NL_BN + 3 * NL_C, 1.0f, o + 2 * NL_BN + 4 * NL_C,
                             o + 2 * NL_BN + 5 * NL_C);
  o += 2 * NL_BN + 6 * NL_C;
  td_backend_batchnorm2d_fwd(be, &d, false, x, o, gamma, beta, o - NL_BN - 6 * NL_C,
                             o - NL_BN - 5 * NL_C, NULL, NULL);
  o += NL_BN;
  /* layernorm: y, save mean/invstd, dx, dgamma/dbeta fresh then accumulated */
  td_backend_layernorm_fwd(be, x, o, NL_ROWS, NL_COLS, gamma, beta, 1e-5f, o + NL_LN,
                           o + NL_LN + NL_ROWS);
  td_backend_layernorm_bwd(be, x, dy, o + NL_LN + 2 * NL_ROWS, NL_ROWS, NL_COLS, gamma,
                           o + NL_LN, o + NL_LN + NL_ROWS, 0.0f,
                           o + 2 * NL_LN + 2 * NL_ROWS, o + 2 * NL_LN + 2 * NL_ROWS + NL_COLS);
  td_backend_layernorm_bwd(be, x, dy, NULL, NL_ROWS, NL_COLS, gamma, o + NL_LN,
                           o + NL_LN + NL_ROWS, 1.0f, o + 2 * NL_LN + 2 * NL_ROWS,
                           o + 2 * NL_LN + 2 * NL_ROWS + NL_COLS);
  o += 2 * NL_LN + 2 * NL_ROWS + 2 * NL_COLS;
  ck_assert_int_eq(td_backend_sync(be), 0);
  ck_assert_uint_le((size_t)(o - out), NL_OUT);
  td_backend_destroy(be);
}

START_TEST(test_norm_gelu_lanes) {
  static const char *const lanes[] = {"1", "2", "3"};
  size_t in_n = 2 * NL_BN + 2 * NL_COLS;
  float *in = malloc(in_n * 4), *want = calloc(NL_OUT, 4), *got = calloc(NL_OUT, 4);

  ck_assert(in && want && got);
  ck_assert_uint_ge(NL_BN, (size_t)NL_GELU);
  ck_assert_uint_ge(NL_BN, NL_LN);
  fill_rand(in, in_n);
  for (size_t i = 0; i < 2 * NL_COLS; i++) /* gamma around 1, beta small */
    in[2 * NL_BN + i] = i < NL_COLS ? 1.0f + 0.5f * in[2 * NL_BN + i] : in[2 * NL_BN + i];
  for (size_t l = 0; l < TD_ARRAY_SIZE(lanes); l++) {
    setenv("TRAIND_CPU_LANES", lanes[l], 1);
    norm_lanes_run(in, l == 0 ? want : got);
    for (size_t i = 0; l > 0 && i < NL_OUT; i++)
      ck_assert_msg(memcmp(&got[i], &want[i], 4) == 0, "%s lanes: output %zu: %.9g, want %.9g",
                    lanes[l], i, got[i], want[i]);
  }
  unsetenv("TRAIND_CPU_LANES");
  free(in), free(want), free(got);
}
END_TEST

static Suite *backend_suite(void) {
  Suite *s = suite_create("backend");
  TCase *ops = tcase_create("cpu_ops"), *mem = tcase_create("memory"),
        *model = tcase_create("model"), *st = tcase_create("safetensors");

  tcase_add_loop_test(ops, test_sgemm_transposes, 0, 4);
  tcase_add_test(ops, test_bias_ops);
  tcase_add_test(ops, test_relu);
  tcase_add_test(ops, test_normalize_u8);
  tcase_add_test(ops, test_softmax_xent);
  tcase_add_test(ops, test_adam);
  tcase_add_test(ops, test_sgd);
  tcase_add_test(ops, test_fill);
  tcase_add_test(ops, test_dense_order);
  tcase_add_test(ops, test_adam_lanes);
  tcase_add_test(ops, test_norm_gelu_lanes);
  suite_add_tcase(s, ops);

  tcase_add_test(mem, test_alloc_budget);
  tcase_add_test(mem, test_select);
  tcase_add_test(mem, test_sticky_error_wins);
  tcase_add_test(mem, test_first_failure_wins);
  suite_add_tcase(s, mem);

  tcase_add_test(model, test_gradient_finite_differences);
  tcase_add_test(model, test_accumulation_adam);
  tcase_add_test(model, test_accumulation_sgd);
  tcase_add_test(model, test_accumulation_uneven);
  tcase_add_test(model, test_step_rejects_bad_input);
  suite_add_tcase(s, model);

  tcase_add_checked_fixture(st, tmp_setup, tmp_teardown);
  tcase_add_test(st, test_save_safetensors);
  tcase_add_test(st, test_safetensors_layout);
  tcase_add_test(st, test_safetensors_write_rejects);
  tcase_add_test(st, test_safetensors_parse_rejects);
  tcase_add_test(st, test_safetensors_parse_truncated);
  suite_add_tcase(s, st);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(backend_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
