/* The layer ops of the CPU backend: against naive double-precision loops,
 * finite-difference gradients for every layer, dropout's keying, batchnorm's
 * running statistics, bad geometry, and PyTorch's own results on the
 * committed reference vectors (tests/reference, see its README.md).
 *
 * The CPU backend's buffers are host memory: after td_backend_sync the tests
 * read and perturb them in place. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "util.h"

static uint64_t rng_state = 20240611;

static float frand(void) { /* [-1, 1) */
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (float)((double)(rng_state >> 40) / 8388608.0 - 1.0);
}

static void fill_rand(float *x, size_t n, float scale, float offset) {
  for (size_t i = 0; i < n; i++)
    x[i] = frand() * scale + offset;
}

/* A shuffled ramp with steps of `step`: no ties, so every max is unique and
 * a perturbation below step / 2 never moves an arg-max. */
static void fill_distinct(float *x, size_t n, float step) {
  for (size_t i = 0; i < n; i++)
    x[i] = ((float)i - (float)n / 2) * step;
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)((frand() + 1.0f) * 0.5f * (float)i) % i;
    float t = x[i - 1];
    x[i - 1] = x[j];
    x[j] = t;
  }
}

/* The device buffers of one test, freed together. */
typedef struct bufs {
  td_backend *be;
  td_buf b[64];
  int n;
} bufs;

static void bufs_open(bufs *p) {
  char err[256];

  memset(p, 0, sizeof(*p));
  ck_assert_int_eq(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &p->be, err, sizeof(err)), 0);
}

/* n floats (at least one), a copy of src or zeroed. */
static float *dalloc(bufs *p, const float *src, size_t n) {
  td_buf *b;

  ck_assert_int_lt(p->n, (int)TD_ARRAY_SIZE(p->b));
  b = &p->b[p->n++];
  ck_assert_int_eq(td_backend_alloc(p->be, (n > 0 ? n : 1) * sizeof(float), b), 0);
  if (src != NULL)
    td_backend_upload(p->be, b->ptr, src, n * sizeof(float));
  return b->ptr;
}

static float *drand(bufs *p, size_t n, float scale, float offset) {
  float *x = dalloc(p, NULL, n);

  fill_rand(x, n, scale, offset);
  return x;
}

static void bufs_close(bufs *p) {
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  for (int i = 0; i < p->n; i++)
    td_backend_free(p->be, &p->b[i]);
  td_backend_destroy(p->be);
}

static double rms(const double *x, size_t n) {
  double s = 0.0;

  for (size_t i = 0; i < n; i++)
    s += x[i] * x[i];
  return n > 0 ? sqrt(s / (double)n) : 0.0;
}

/* |got - want| <= tol (|want| + rms(want)): relative, with the tensor's own
 * scale standing in for elements near 0. */
static void expect_close(const char *what, const float *got, const double *want, size_t n,
                         double tol) {
  double scale = rms(want, n) + 1e-30;

  for (size_t i = 0; i < n; i++)
    ck_assert_msg(fabs(got[i] - want[i]) <= tol * (fabs(want[i]) + scale),
                  "%s[%zu]: got %.8g, want %.8g", what, i, (double)got[i], want[i]);
}

/* The next sync reports code, with needle in the message. */
static void expect_failure(td_backend *be, int code, const char *needle) {
  ck_assert_int_eq(td_backend_sync(be), code);
  ck_assert_msg(strstr(td_backend_error(be), needle) != NULL, "'%s' lacks '%s'",
                td_backend_error(be), needle);
}

static double *dvec(size_t n) {
  double *v = calloc(n > 0 ? n : 1, sizeof(double));

  ck_assert_ptr_nonnull(v);
  return v;
}

/* ---- conv2d and pooling against direct loops ---- */

static size_t in_elems(const td_conv2d_desc *d) { return (size_t)d->n * d->c * d->h * d->w; }
static size_t w_elems(const td_conv2d_desc *d) { return (size_t)d->k * d->c * d->kh * d->kw; }

/* y = conv(x, w) + b; with dy: dx, dw, db. */
static void naive_conv(const td_conv2d_desc *d, int oh, int ow, const float *x, const float *w,
                       const float *b, const float *dy, double *y, double *dx, double *dw,
                       double *db) {
  for (int n = 0; n < d->n; n++) {
    for (int k = 0; k < d->k; k++) {
      for (int oy = 0; oy < oh; oy++) {
        for (int ox = 0; ox < ow; ox++) {
          size_t o = (((size_t)n * d->k + k) * oh + oy) * ow + ox;
          double s = b != NULL ? b[k] : 0.0;
          for (int c = 0; c < d->c; c++) {
            for (int i = 0; i < d->kh; i++) {
              for (int j = 0; j < d->kw; j++) {
                int iy = oy * d->sh - d->ph + i, ix = ox * d->sw - d->pw + j;
                size_t wi = (((size_t)k * d->c + c) * d->kh + i) * d->kw + j, xi;
                if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w)
                  continue;
                xi = (((size_t)n * d->c + c) * d->h + iy) * d->w + ix;
                s += (double)w[wi] * x[xi];
                dx[xi] += (double)w[wi] * dy[o];
                dw[wi] += (double)x[xi] * dy[o];
              }
            }
          }
          y[o] = s;
          db[k] += dy[o];
        }
      }
    }
  }
}

static const td_conv2d_desc conv_cases[] = {
    /* n  c  h  w  k  kh kw sh sw ph pw */
    {2, 3, 7, 6, 4, 3, 3, 1, 1, 1, 1},
    {2, 2, 9, 8, 3, 3, 2, 2, 1, 0, 1},  /* non-square window and stride */
    {1, 3, 8, 8, 2, 5, 5, 2, 2, 2, 2},
    {3, 4, 5, 5, 5, 1, 1, 1, 1, 0, 0},  /* pointwise: no im2col */
    {2, 2, 6, 7, 3, 2, 4, 3, 2, 1, 0},
    {1, 1, 4, 4, 2, 4, 4, 1, 1, 0, 0},  /* the window is the input: 1x1 output */
    {2, 3, 5, 9, 2, 1, 3, 1, 3, 0, 1},
    {1, 2, 3, 3, 1, 3, 3, 2, 2, 2, 2},  /* padding as large as the window */
    {2, 2, 4, 4, 3, 1, 1, 2, 2, 0, 0},  /* strided 1x1 */
    /* large enough to be cut into lanes and blocks of output positions */
    {4, 3, 16, 16, 5, 3, 3, 1, 1, 1, 1}, /* same padding: the shifted-run path */
    {3, 4, 14, 13, 6, 3, 3, 1, 1, 0, 0}, /* valid: narrower output */
    {5, 2, 20, 12, 4, 3, 5, 2, 1, 1, 2},
    {3, 6, 12, 12, 4, 1, 1, 1, 1, 0, 0}, /* pointwise, split by samples */
};

START_TEST(test_conv2d_matches_direct) {
  const td_conv2d_desc *d = &conv_cases[_i];
  bufs p;
  int oh, ow;
  uint64_t ws;

  bufs_open(&p);
  ck_assert_int_eq(td_conv2d_out(d, false, &oh, &ow, NULL, 0), 0);
  size_t xn = in_elems(d), wn = w_elems(d), yn = (size_t)d->n * d->k * oh * ow;
  float *x = drand(&p, xn, 1, 0), *w = drand(&p, wn, 0.5f, 0), *b = drand(&p, d->k, 1, 0);
  float *dy = drand(&p, yn, 1, 0), *y = dalloc(&p, NULL, yn), *dx = dalloc(&p, NULL, xn);
  float *dw = dalloc(&p, NULL, wn), *db = dalloc(&p, NULL, d->k);
  double *wy = dvec(yn), *wdx = dvec(xn), *wdw = dvec(wn), *wdb = dvec(d->k);

  ck_assert_int_eq(td_backend_conv2d_workspace(p.be, d, &ws), 0);
  ck_assert_uint_eq(ws, td_conv2d_workspace_cpu(d));
  /* one sample's columns and two partial gradients (dw, db) */
  ck_assert_uint_eq(ws, ((uint64_t)d->c * d->kh * d->kw * oh * ow +
                         2 * ((uint64_t)d->k * d->c * d->kh * d->kw + d->k)) * 4);
  float *work = dalloc(&p, NULL, ws / 4);
  naive_conv(d, oh, ow, x, w, b, dy, wy, wdx, wdw, wdb);

  td_backend_conv2d_fwd(p.be, d, x, w, b, y, work, ws);
  td_backend_fill(p.be, dw, wn, NAN); /* beta 0 ignores the old contents */
  td_backend_fill(p.be, db, d->k, NAN);
  td_backend_conv2d_bwd(p.be, d, x, w, dy, dx, dw, db, 0.0f, work, ws);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("y", y, wy, yn, 1e-5);
  expect_close("dx", dx, wdx, xn, 1e-5);
  expect_close("dw", dw, wdw, wn, 1e-5);
  expect_close("db", db, wdb, d->k, 1e-5);

  /* without bias: y loses it; beta 1 adds a second micro-batch's gradients */
  td_backend_conv2d_fwd(p.be, d, x, w, NULL, y, work, ws);
  td_backend_conv2d_bwd(p.be, d, x, w, dy, NULL, dw, db, 1.0f, work, ws);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  for (size_t i = 0; i < yn; i++)
    wy[i] -= b[(i / ((size_t)oh * ow)) % d->k];
  for (size_t i = 0; i < wn; i++)
    wdw[i] *= 2;
  for (int i = 0; i < d->k; i++)
    wdb[i] *= 2;
  expect_close("y without bias", y, wy, yn, 1e-5);
  expect_close("dw accumulated", dw, wdw, wn, 1e-5);
  expect_close("db accumulated", db, wdb, d->k, 1e-5);
  free(wy), free(wdx), free(wdw), free(wdb);
  bufs_close(&p);
}
END_TEST

static void naive_pool(td_pool_mode mode, const td_conv2d_desc *d, int oh, int ow,
                       const float *x, const float *dy, double *y, double *dx) {
  for (size_t pl = 0; pl < (size_t)d->n * d->c; pl++) {
    const float *xp = x + pl * d->h * d->w;
    double *dxp = dx + pl * d->h * d->w;
    for (int oy = 0; oy < oh; oy++) {
      for (int ox = 0; ox < ow; ox++) {
        size_t o = (pl * oh + oy) * ow + ox;
        double s = 0.0;
        long best = -1;
        int count = 0;
        for (int i = 0; i < d->kh; i++) {
          for (int j = 0; j < d->kw; j++) {
            int iy = oy * d->sh - d->ph + i, ix = ox * d->sw - d->pw + j;
            if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w)
              continue;
            long at = (long)iy * d->w + ix;
            if (best < 0 || xp[at] > xp[best])
              best = at;
            s += xp[at];
            count++;
          }
        }
        if (mode == TD_POOL_MAX) {
          y[o] = xp[best];
          dxp[best] += dy[o];
          continue;
        }
        int div = mode == TD_POOL_AVG ? d->kh * d->kw : count;
        y[o] = s / div;
        for (int i = 0; i < d->kh; i++) {
          for (int j = 0; j < d->kw; j++) {
            int iy = oy * d->sh - d->ph + i, ix = ox * d->sw - d->pw + j;
            if (iy >= 0 && iy < d->h && ix >= 0 && ix < d->w)
              dxp[(size_t)iy * d->w + ix] += dy[o] / div;
          }
        }
      }
    }
  }
}

static const td_conv2d_desc pool_cases[] = {
    /* n  c  h  w  k  kh kw sh sw ph pw */
    {2, 3, 8, 8, 0, 2, 2, 2, 2, 0, 0},
    {2, 2, 7, 9, 0, 3, 3, 2, 2, 1, 1},  /* overlapping, padded */
    {1, 3, 6, 5, 0, 3, 2, 1, 2, 1, 0},  /* non-square */
    {1, 2, 5, 5, 0, 5, 5, 1, 1, 2, 2},
    {2, 1, 4, 6, 0, 1, 1, 1, 1, 0, 0},
    {1, 2, 6, 6, 0, 3, 3, 1, 1, 1, 1},
    {1, 2, 7, 7, 0, 7, 7, 7, 7, 0, 0},  /* global pooling */
    {2, 3, 7, 9, 0, 2, 2, 2, 2, 0, 0},  /* tiles leaving the last row and column out */
    {1, 2, 9, 10, 0, 3, 3, 3, 3, 0, 0}, /* 3x3 tiles */
    {4, 8, 16, 16, 0, 2, 2, 2, 2, 0, 0}, /* enough planes for several lanes */
};

START_TEST(test_pool2d_matches_direct) {
  static const td_pool_mode modes[] = {TD_POOL_MAX, TD_POOL_AVG, TD_POOL_AVG_EXCL_PAD};
  const td_conv2d_desc *d = &pool_cases[_i / 3];
  td_pool_mode mode = modes[_i % 3];
  bufs p;
  int oh, ow;
  char what[64];

  bufs_open(&p);
  ck_assert_int_eq(td_conv2d_out(d, true, &oh, &ow, NULL, 0), 0);
  size_t xn = in_elems(d), yn = (size_t)d->n * d->c * oh * ow;
  float *x = dalloc(&p, NULL, xn), *dy = drand(&p, yn, 1, 0), *y = dalloc(&p, NULL, yn);
  float *dx = dalloc(&p, NULL, xn);
  double *wy = dvec(yn), *wdx = dvec(xn);

  fill_distinct(x, xn, 0.1f);
  naive_pool(mode, d, oh, ow, x, dy, wy, wdx);
  td_backend_pool2d_fwd(p.be, mode, d, x, y);
  td_backend_fill(p.be, dx, xn, NAN); /* every element is written */
  td_backend_pool2d_bwd(p.be, mode, d, x, y, dy, dx);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  snprintf(what, sizeof(what), "mode %d case %d y", (int)mode, _i / 3);
  expect_close(what, y, wy, yn, 1e-6);
  snprintf(what, sizeof(what), "mode %d case %d dx", (int)mode, _i / 3);
  expect_close(what, dx, wdx, xn, 1e-6);
  free(wy), free(wdx);
  bufs_close(&p);
}
END_TEST

/* Ties go to the window's first largest element in row-major order, as in
 * naive_pool, on the fast tiling paths and the general one alike. */
START_TEST(test_pool2d_max_ties) {
  static const td_conv2d_desc cases[] = {
      {2, 3, 8, 9, 0, 2, 2, 2, 2, 0, 0},
      {1, 2, 9, 9, 0, 3, 3, 3, 3, 0, 0},
      {1, 2, 9, 9, 0, 3, 3, 2, 2, 1, 1},
  };
  const td_conv2d_desc *d = &cases[_i];
  bufs p;
  int oh, ow;

  bufs_open(&p);
  ck_assert_int_eq(td_conv2d_out(d, true, &oh, &ow, NULL, 0), 0);
  size_t xn = in_elems(d), yn = (size_t)d->n * d->c * oh * ow;
  float *x = dalloc(&p, NULL, xn), *dy = drand(&p, yn, 1, 2), *y = dalloc(&p, NULL, yn);
  float *dx = dalloc(&p, NULL, xn);
  double *wy = dvec(yn), *wdx = dvec(xn);

  for (size_t i = 0; i < xn; i++) /* few values: most windows tie */
    x[i] = (float)(((uint32_t)i * 2654435761u >> 13) % 2);
  naive_pool(TD_POOL_MAX, d, oh, ow, x, dy, wy, wdx);
  td_backend_pool2d_fwd(p.be, TD_POOL_MAX, d, x, y);
  td_backend_fill(p.be, dx, xn, NAN);
  td_backend_pool2d_bwd(p.be, TD_POOL_MAX, d, x, y, dy, dx);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("y", y, wy, yn, 0);
  expect_close("dx", dx, wdx, xn, 1e-6);
  free(wy), free(wdx);
  bufs_close(&p);
}
END_TEST

/* The lanes' partition is fixed: the same inputs give the same bits, run
 * after run, whatever the workspace held before. */
START_TEST(test_conv2d_deterministic) {
  const td_conv2d_desc d = {6, 8, 14, 14, 16, 3, 3, 1, 1, 1, 1};
  bufs p;
  int oh, ow;
  uint64_t ws;

  bufs_open(&p);
  ck_assert_int_eq(td_conv2d_out(&d, false, &oh, &ow, NULL, 0), 0);
  ck_assert_int_eq(td_backend_conv2d_workspace(p.be, &d, &ws), 0);
  size_t xn = in_elems(&d), wn = w_elems(&d), yn = (size_t)d.n * d.k * oh * ow;
  float *x = drand(&p, xn, 1, 0), *w = drand(&p, wn, 0.5f, 0), *b = drand(&p, d.k, 1, 0);
  float *dy = drand(&p, yn, 1, 0), *work = dalloc(&p, NULL, ws / 4);
  float *out[2][4];

  for (int r = 0; r < 2; r++) {
    out[r][0] = dalloc(&p, NULL, yn);
    out[r][1] = dalloc(&p, NULL, xn);
    out[r][2] = dalloc(&p, NULL, wn);
    out[r][3] = dalloc(&p, NULL, d.k);
    td_backend_fill(p.be, work, ws / 4, r == 0 ? NAN : 1e30f);
    td_backend_conv2d_fwd(p.be, &d, x, w, b, out[r][0], work, ws);
    td_backend_conv2d_bwd(p.be, &d, x, w, dy, out[r][1], out[r][2], out[r][3], 0.0f, work, ws);
  }
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  ck_assert(memcmp(out[0][0], out[1][0], yn * 4) == 0);
  ck_assert(memcmp(out[0][1], out[1][1], xn * 4) == 0);
  ck_assert(memcmp(out[0][2], out[1][2], wn * 4) == 0);
  ck_assert(memcmp(out[0][3], out[1][3], (size_t)d.k * 4) == 0);
  for (size_t i = 0; i < xn; i++)
    ck_assert(isfinite(out[0][1][i]));
  bufs_close(&p);
}
END_TEST

/* ---- conv1d against direct loops ---- */

/* y = conv1d(x, w) + b on channels-last sequences; with dy: dx, dw, db. */
static void naive_conv1d(const td_conv1d_desc *d, int ol, const float *x, const float *w,
                         const float *b, const float *dy, double *y, double *dx, double *dw,
                         double *db) {
  for (int n = 0; n < d->n; n++) {
    for (int o = 0; o < ol; o++) {
      for (int k = 0; k < d->k; k++) {
        size_t yi = ((size_t)n * ol + o) * d->k + k;
        double acc = b[k];

        for (int c = 0; c < d->c; c++) {
          for (int j = 0; j < d->kw; j++) {
            int pos = o * d->stride - d->pad + j;
            size_t wi = ((size_t)k * d->c + c) * d->kw + j, xi;

            if (pos < 0 || pos >= d->l)
              continue;
            xi = ((size_t)n * d->l + pos) * d->c + c;
            acc += (double)w[wi] * x[xi];
            dx[xi] += (double)w[wi] * dy[yi];
            dw[wi] += (double)x[xi] * dy[yi];
          }
        }
        y[yi] = acc;
        db[k] += dy[yi];
      }
    }
  }
}

static const td_conv1d_desc conv1d_cases[] = {
    /* n  l  c  k kw stride pad */
    {2, 9, 3, 4, 3, 1, 1},
    {3, 10, 2, 3, 4, 2, 0},
    {1, 7, 4, 2, 5, 3, 2},
    {2, 6, 3, 5, 1, 1, 0},   /* pointwise */
    {1, 4, 2, 3, 4, 1, 0},   /* the window is the input: one output */
    {2, 3, 2, 2, 3, 2, 3},   /* padding as large as the window */
    {40, 12, 5, 6, 3, 1, 1}, /* three blocks, the last short */
    {33, 20, 8, 16, 5, 2, 2},
};

START_TEST(test_conv1d_matches_direct) {
  const td_conv1d_desc *d = &conv1d_cases[_i];
  bufs p;
  int ol;

  bufs_open(&p);
  ck_assert_int_eq(td_conv1d_out(d, &ol, NULL, 0), 0);
  size_t xn = (size_t)d->n * d->l * d->c, wn = (size_t)d->k * d->c * d->kw;
  size_t yn = (size_t)d->n * ol * d->k;
  uint64_t ws = td_conv1d_workspace(d);
  float *x = drand(&p, xn, 1, 0), *w = drand(&p, wn, 0.5f, 0), *b = drand(&p, d->k, 1, 0);
  float *dy = drand(&p, yn, 1, 0), *y = dalloc(&p, NULL, yn), *dx = dalloc(&p, NULL, xn);
  float *dw = dalloc(&p, NULL, wn), *db = dalloc(&p, NULL, d->k);
  float *work = dalloc(&p, NULL, ws / 4);
  double *wy = dvec(yn), *wdx = dvec(xn), *wdw = dvec(wn), *wdb = dvec(d->k);

  /* a block of samples' columns */
  ck_assert_uint_eq(ws, (uint64_t)(d->n < 16 ? d->n : 16) * ol * d->c * d->kw * 4);
  naive_conv1d(d, ol, x, w, b, dy, wy, wdx, wdw, wdb);
  td_backend_fill(p.be, work, ws / 4, NAN); /* whatever the workspace held */
  td_backend_fill(p.be, dx, xn, NAN);       /* dx is overwritten */
  td_backend_conv1d_fwd(p.be, d, x, w, b, y, work, ws);
  td_backend_fill(p.be, dw, wn, NAN); /* beta 0 ignores the old contents */
  td_backend_fill(p.be, db, d->k, NAN);
  td_backend_conv1d_bwd(p.be, d, x, w, dy, dx, dw, db, 0.0f, work, ws);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("y", y, wy, yn, 1e-5);
  expect_close("dx", dx, wdx, xn, 1e-5);
  expect_close("dw", dw, wdw, wn, 1e-5);
  expect_close("db", db, wdb, d->k, 1e-5);
  free(wy), free(wdx), free(wdw), free(wdb);
  bufs_close(&p);
}
END_TEST

/* A batch cut into calls that start on block boundaries (16 samples) gives
 * the whole batch's outputs and gradients to the bit: the gradient
 * accumulation of a split micro-batch. */
START_TEST(test_conv1d_split_bits) {
  const td_conv1d_desc whole = {48, 11, 3, 4, 3, 2, 1};
  static const int cuts[][4] = {{16, 32, 48, 48}, {32, 48, 48, 48}, {16, 48, 48, 48}};
  bufs p;
  int ol;

  bufs_open(&p);
  ck_assert_int_eq(td_conv1d_out(&whole, &ol, NULL, 0), 0);
  size_t in_sz = (size_t)whole.l * whole.c, out_sz = (size_t)ol * whole.k;
  size_t wn = (size_t)whole.k * whole.c * whole.kw;
  uint64_t ws = td_conv1d_workspace(&whole);
  float *x = drand(&p, whole.n * in_sz, 1, 0), *w = drand(&p, wn, 0.5f, 0);
  float *b = drand(&p, whole.k, 1, 0), *dy = drand(&p, whole.n * out_sz, 1, 0);
  float *work = dalloc(&p, NULL, ws / 4), *ref[4], *got[4];

  for (int r = 0; r < 2; r++) {
    float **o = r == 0 ? ref : got;

    o[0] = dalloc(&p, NULL, whole.n * out_sz);
    o[1] = dalloc(&p, NULL, whole.n * in_sz);
    o[2] = dalloc(&p, NULL, wn);
    o[3] = dalloc(&p, NULL, whole.k);
  }
  td_backend_conv1d_fwd(p.be, &whole, x, w, b, ref[0], work, ws);
  td_backend_conv1d_bwd(p.be, &whole, x, w, dy, ref[1], ref[2], ref[3], 0.0f, work, ws);
  for (size_t c = 0; c < TD_ARRAY_SIZE(cuts); c++) {
    int from = 0;

    for (int k = 0; k < 4 && from < whole.n; k++) {
      td_conv1d_desc d = whole;

      d.n = cuts[c][k] - from;
      td_backend_conv1d_fwd(p.be, &d, x + from * in_sz, w, b, got[0] + from * out_sz, work,
                            ws);
      td_backend_conv1d_bwd(p.be, &d, x + from * in_sz, w, dy + from * out_sz,
                            got[1] + from * in_sz, got[2], got[3], from == 0 ? 0.0f : 1.0f,
                            work, ws);
      from = cuts[c][k];
    }
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    ck_assert(memcmp(ref[0], got[0], whole.n * out_sz * 4) == 0);
    ck_assert(memcmp(ref[1], got[1], whole.n * in_sz * 4) == 0);
    ck_assert_msg(memcmp(ref[2], got[2], wn * 4) == 0, "cut %zu: dw differs", c);
    ck_assert_msg(memcmp(ref[3], got[3], (size_t)whole.k * 4) == 0, "cut %zu: db differs", c);
  }
  bufs_close(&p);
}
END_TEST

START_TEST(test_conv1d_geometry) {
  td_conv1d_desc d = {2, 10, 3, 4, 3, 2, 1};
  char err[160];
  bufs p;
  int ol = -1;
  float *x;

  ck_assert_int_eq(td_conv1d_out(&d, &ol, err, sizeof(err)), 0);
  ck_assert_int_eq(ol, 5); /* (10 + 2 - 3) / 2 + 1, PyTorch's floor */
  d.kw = 13;
  ck_assert_int_eq(td_conv1d_out(&d, &ol, err, sizeof(err)), TD_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "window 13 is longer than the padded input 12"));
  ck_assert_int_eq(ol, 5); /* untouched */
  ck_assert_uint_eq(td_conv1d_workspace(&d), 0);
  d = (td_conv1d_desc){2, 10, 3, 4, 3, 0, 1};
  ck_assert_int_eq(td_conv1d_out(&d, &ol, err, sizeof(err)), TD_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "sizes must be positive"));
  d = (td_conv1d_desc){16, 1 << 20, 64, 4, 64, 1, 0}; /* a block's columns past INT_MAX */
  ck_assert_int_eq(td_conv1d_out(&d, &ol, err, sizeof(err)), TD_EINVAL);
  ck_assert_ptr_nonnull(strstr(err, "more than"));

  /* a bad geometry or a short workspace latches TD_EINVAL and runs nothing */
  bufs_open(&p);
  d = (td_conv1d_desc){2, 10, 3, 4, 3, 2, 1};
  x = dalloc(&p, NULL, 256);
  td_backend_conv1d_fwd(p.be, &d, x, x, NULL, x, x, 8);
  expect_failure(p.be, TD_EINVAL, "conv1d_fwd: workspace of 8 bytes");
  d.stride = 0;
  td_backend_conv1d_bwd(p.be, &d, x, x, x, x, x, NULL, 0.0f, x, 1024);
  expect_failure(p.be, TD_EINVAL, "conv1d_bwd: conv1d: sizes must be positive");
  bufs_close(&p);
}
END_TEST

/* Softmax along a strided axis and the means against double loops. */
START_TEST(test_softmax_and_mean_direct) {
  const size_t outer = 3, dim = 5, inner = 4, n = outer * dim * inner;
  bufs p;

  bufs_open(&p);
  float *x = drand(&p, n, 3, 0), *dy = drand(&p, n, 1, 0), *y = dalloc(&p, NULL, n);
  float *dx = dalloc(&p, NULL, n), *m = dalloc(&p, NULL, outer * inner);
  float *dm = drand(&p, outer * inner, 1, 0), *dmx = dalloc(&p, NULL, n), *xi = dalloc(&p, x, n);
  double *wy = dvec(n), *wdx = dvec(n), *wm = dvec(outer * inner), *wdm = dvec(n);

  for (size_t o = 0; o < outer; o++) {
    for (size_t i = 0; i < inner; i++) {
      double max = -INFINITY, sum = 0.0, dot = 0.0;

      for (size_t d = 0; d < dim; d++)
        max = fmax(max, x[(o * dim + d) * inner + i]);
      for (size_t d = 0; d < dim; d++)
        sum += exp(x[(o * dim + d) * inner + i] - max);
      for (size_t d = 0; d < dim; d++) {
        size_t e = (o * dim + d) * inner + i;
        wy[e] = exp(x[e] - max) / sum;
        dot += wy[e] * dy[e];
        wm[o * inner + i] += x[e] / (double)dim;
        wdm[e] = dm[o * inner + i] / (double)dim;
      }
      for (size_t d = 0; d < dim; d++) {
        size_t e = (o * dim + d) * inner + i;
        wdx[e] = wy[e] * (dy[e] - dot);
      }
    }
  }
  td_backend_softmax_fwd(p.be, x, y, outer, dim, inner);
  td_backend_softmax_bwd(p.be, y, dy, dx, outer, dim, inner);
  td_backend_mean_fwd(p.be, x, m, outer, dim, inner);
  td_backend_mean_bwd(p.be, dm, dmx, outer, dim, inner);
  /* in place: y over x, dx over dy, as the plan runs them */
  td_backend_softmax_fwd(p.be, xi, xi, outer, dim, inner);
  td_backend_softmax_bwd(p.be, xi, dy, dy, outer, dim, inner);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("softmax y", y, wy, n, 1e-6);
  expect_close("softmax dx", dx, wdx, n, 1e-5);
  expect_close("mean y", m, wm, outer * inner, 1e-6);
  expect_close("mean dx", dmx, wdm, n, 1e-6);
  ck_assert(memcmp(xi, y, n * 4) == 0);
  ck_assert(memcmp(dy, dx, n * 4) == 0);
  free(wy), free(wdx), free(wm), free(wdm);
  bufs_close(&p);
}
END_TEST

/* ---- element-wise ops, the loss and the norms against double loops ---- */

static double gelu_ref(td_gelu_kind kind, double v, double *grad) {
  if (kind == TD_GELU_TANH) {
    double k = sqrt(2.0 / M_PI), u = k * (v + 0.044715 * v * v * v), t = tanh(u);
    *grad = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v);
    return 0.5 * v * (1 + t);
  }
  *grad = 0.5 * (1 + erf(v / sqrt(2.0))) + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
  return 0.5 * v * (1 + erf(v / sqrt(2.0)));
}

START_TEST(test_gelu) {
  enum { N = 121 };
  td_gelu_kind kind = _i ? TD_GELU_TANH : TD_GELU_ERF;
  bufs p;
  float *x, *y, *dy, *dx;
  double wy[N], wdx[N];

  bufs_open(&p);
  x = dalloc(&p, NULL, N);
  dy = drand(&p, N, 1, 0);
  y = dalloc(&p, NULL, N);
  dx = dalloc(&p, NULL, N);
  for (int i = 0; i < N; i++) {
    double g;
    x[i] = (float)(i - 60) * 0.1f; /* -6 .. 6, 0 included */
    wy[i] = gelu_ref(kind, x[i], &g);
    wdx[i] = g * dy[i];
  }
  td_backend_gelu_fwd(p.be, kind, x, y, N);
  td_backend_gelu_bwd(p.be, kind, x, dy, dx, N);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("y", y, wy, N, 1e-6);
  expect_close("dx", dx, wdx, N, 1e-5);
  td_backend_gelu_bwd(p.be, kind, x, dy, dy, N); /* in place */
  td_backend_gelu_fwd(p.be, kind, x, x, N);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("dx in place", dy, wdx, N, 1e-5);
  expect_close("y in place", x, wy, N, 1e-6);
  bufs_close(&p);
}
END_TEST

START_TEST(test_softmax_xent_smoothing) {
  enum { R = 5, C = 6 };
  const float s = 0.2f, scale = 0.5f;
  int32_t lab[R] = {0, 5, 2, 2, 9}; /* row 4: out of range, skipped */
  bufs p;
  td_buf bl;
  float *z, *dz, *st;
  double want[R * C], loss = 0;

  bufs_open(&p);
  z = drand(&p, R * C, 3, 0);
  dz = dalloc(&p, NULL, R * C);
  st = dalloc(&p, NULL, 2);
  ck_assert_int_eq(td_backend_alloc(p.be, sizeof(lab), &bl), 0);
  td_backend_upload(p.be, bl.ptr, lab, sizeof(lab));
  for (int r = 0; r < R; r++) {
    double max = -INFINITY, sum = 0;
    for (int c = 0; c < C; c++)
      max = fmax(max, z[r * C + c]);
    for (int c = 0; c < C; c++)
      sum += exp(z[r * C + c] - max);
    for (int c = 0; c < C; c++) {
      double target = lab[r] < C ? s / C + (c == lab[r] ? 1 - s : 0) : 0;
      double logp = z[r * C + c] - max - log(sum);
      want[r * C + c] = lab[r] < C ? (exp(logp) - target) * scale : 0;
      loss -= target * logp;
    }
  }
  td_backend_softmax_xent_smooth(p.be, z, bl.ptr, R, C, s, scale, dz, st);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("dlogits", dz, want, R * C, 1e-5);
  ck_assert_double_eq_tol(st[0], loss, 1e-4 * loss);

  /* smoothing 0 is the plain op, bit for bit */
  float st2[2] = {0, 0};
  float *st0 = dalloc(&p, st2, 2), *dz0 = dalloc(&p, NULL, R * C);
  td_backend_softmax_xent_smooth(p.be, z, bl.ptr, R, C, 0.0f, scale, dz, st);
  td_backend_softmax_xent(p.be, z, bl.ptr, R, C, scale, dz0, st0);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  ck_assert_mem_eq(dz, dz0, R * C * sizeof(float));
  ck_assert_float_eq(st[1], 2 * st0[1]); /* the statistics add up over calls */

  td_backend_softmax_xent_smooth(p.be, z, bl.ptr, R, C, 1.0f, scale, dz, st);
  expect_failure(p.be, TD_EINVAL, "label smoothing");
  td_backend_free(p.be, &bl);
  bufs_close(&p);
}
END_TEST

/* Mean and biased variance of channel ch of x[n, c, hw]. */
static void channel_moments(const float *x, int n, int c, int hw, int ch, double *mean,
                            double *var) {
  double s = 0, q = 0;

  for (int i = 0; i < n; i++)
    for (int j = 0; j < hw; j++)
      s += x[((size_t)i * c + ch) * hw + j];
  *mean = s / ((double)n * hw);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < hw; j++)
      q += pow(x[((size_t)i * c + ch) * hw + j] - *mean, 2);
  *var = q / ((double)n * hw);
}

START_TEST(test_batchnorm_forward_and_running_stats) {
  const td_batchnorm_desc d = {.n = 4, .c = 3, .hw = 10, .eps = 1e-5f, .momentum = 0.1f};
  const size_t N = 4 * 3 * 10;
  bufs p;
  double rm[3] = {0, 0, 0}, rv[3] = {1, 1, 1}, want[4 * 3 * 10], wmean[3], winv[3];

  bufs_open(&p);
  float *x = drand(&p, N, 2, 0.7f), *y = dalloc(&p, NULL, N);
  float *g = drand(&p, 3, 0.5f, 1), *b = drand(&p, 3, 1, 0);
  float *run_m = dalloc(&p, NULL, 3), *run_v = dalloc(&p, NULL, 3);
  float *sm = dalloc(&p, NULL, 3), *si = dalloc(&p, NULL, 3);

  td_backend_fill(p.be, run_v, 3, 1.0f); /* PyTorch's initial running variance */
  for (int step = 0; step < 2; step++) {
    if (step == 1) /* a second batch moves the running statistics again */
      fill_rand(x, N, 1.5f, -0.4f);
    for (int ch = 0; ch < 3; ch++) {
      double mean, var;
      channel_moments(x, d.n, d.c, d.hw, ch, &mean, &var);
      rm[ch] = 0.9 * rm[ch] + 0.1 * mean;
      rv[ch] = 0.9 * rv[ch] + 0.1 * var * 40.0 / 39.0; /* unbiased */
      wmean[ch] = mean;
      winv[ch] = 1 / sqrt(var + 1e-5);
      for (int i = 0; i < d.n; i++)
        for (int j = 0; j < d.hw; j++) {
          size_t at = ((size_t)i * 3 + ch) * d.hw + j;
          want[at] = (x[at] - mean) * winv[ch] * g[ch] + b[ch];
        }
    }
    td_backend_batchnorm2d_fwd(p.be, &d, true, x, y, g, b, run_m, run_v, sm, si);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    expect_close("y", y, want, N, 1e-5);
    expect_close("running_mean", run_m, rm, 3, 1e-6);
    expect_close("running_var", run_v, rv, 3, 1e-6);
    expect_close("save_mean", sm, wmean, 3, 1e-6);
    expect_close("save_invstd", si, winv, 3, 1e-6);
  }

  /* evaluation: the running statistics, which it leaves alone */
  for (size_t i = 0; i < N; i++) {
    int ch = (int)((i / d.hw) % 3);
    want[i] = (x[i] - rm[ch]) / sqrt(rv[ch] + 1e-5) * g[ch] + b[ch];
  }
  td_backend_batchnorm2d_fwd(p.be, &d, false, x, y, g, b, run_m, run_v, NULL, NULL);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("y eval", y, want, N, 1e-5);
  expect_close("running_mean after eval", run_m, rm, 3, 1e-6);

  /* one value per channel has no variance */
  td_batchnorm_desc one = {.n = 1, .c = 3, .hw = 1, .eps = 1e-5f, .momentum = 0.1f};
  td_backend_batchnorm2d_fwd(p.be, &one, true, x, y, g, b, run_m, run_v, sm, si);
  expect_failure(p.be, TD_EINVAL, "more than one value");
  bufs_close(&p);
}
END_TEST

START_TEST(test_layernorm_forward) {
  enum { R = 5, C = 12 };
  bufs p;
  double want[R * C], wmean[R], winv[R];

  bufs_open(&p);
  float *x = drand(&p, R * C, 2, 0.5f), *y = dalloc(&p, NULL, R * C);
  float *g = drand(&p, C, 0.5f, 1), *b = drand(&p, C, 1, 0);
  float *sm = dalloc(&p, NULL, R), *si = dalloc(&p, NULL, R);

  for (int r = 0; r < R; r++) {
    double s = 0, q = 0;
    for (int c = 0; c < C; c++)
      s += x[r * C + c];
    wmean[r] = s / C;
    for (int c = 0; c < C; c++)
      q += pow(x[r * C + c] - wmean[r], 2);
    winv[r] = 1 / sqrt(q / C + 1e-5);
    for (int c = 0; c < C; c++)
      want[r * C + c] = (x[r * C + c] - wmean[r]) * winv[r] * g[c] + b[c];
  }
  td_backend_layernorm_fwd(p.be, x, y, R, C, g, b, 1e-5f, sm, si);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  expect_close("y", y, want, R * C, 1e-5);
  expect_close("save_mean", sm, wmean, R, 1e-6);
  expect_close("save_invstd", si, winv, R, 1e-6);
  bufs_close(&p);
}
END_TEST

/* ---- dropout ---- */

START_TEST(test_dropout_rate_and_scale) {
  enum { R = 64, C = 1000 };
  const float p_drop = 0.3f;
  td_dropout_key key = {.seed = 7, .layer = 2, .step = 11, .sample = 0};
  bufs p;
  size_t dropped = 0;

  bufs_open(&p);
  float *x = drand(&p, (size_t)R * C, 1, 2), *y = dalloc(&p, NULL, (size_t)R * C);
  td_backend_dropout(p.be, x, y, R, C, p_drop, &key);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  for (size_t i = 0; i < (size_t)R * C; i++) {
    if (y[i] == 0.0f) {
      dropped++;
      continue;
    }
    ck_assert_float_eq(y[i], x[i] * (1.0f / 0.7f));
  }
  /* 64000 Bernoulli(0.3) draws: 3 standard deviations are about 0.0054 */
  ck_assert_msg(fabs((double)dropped / (R * C) - 0.3) < 0.006, "dropped %zu", dropped);

  /* p 0 keeps everything as it is; p 1 drops everything */
  td_backend_dropout(p.be, x, y, R, C, 0.0f, &key);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  ck_assert_mem_eq(x, y, (size_t)R * C * sizeof(float));
  td_backend_dropout(p.be, x, y, R, C, 1.0f, &key);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  for (size_t i = 0; i < (size_t)R * C; i++)
    ck_assert_float_eq(y[i], 0.0f);

  td_backend_dropout(p.be, x, y, R, C, 1.5f, &key);
  expect_failure(p.be, TD_EINVAL, "dropout probability");
  td_backend_dropout(p.be, x, y, R, C, NAN, &key);
  expect_failure(p.be, TD_EINVAL, "dropout probability");
  bufs_close(&p);
}
END_TEST

/* A sample's mask depends on (seed, layer, step, sample, element) only: the
 * same however the batch is split, different when any key part changes. */
START_TEST(test_dropout_mask_keyed_by_sample) {
  enum { R = 12, C = 37 };
  static const size_t splits[][4] = {{5, 7, 0, 0}, {1, 1, 10, 0}, {4, 4, 4, 0}, {11, 1, 0, 0}};
  td_dropout_key key = {.seed = 42, .layer = 3, .step = 5, .sample = 0};
  bufs p;

  bufs_open(&p);
  float *x = drand(&p, (size_t)R * C, 1, 3), *whole = dalloc(&p, NULL, (size_t)R * C);
  float *part = dalloc(&p, NULL, (size_t)R * C), *other = dalloc(&p, NULL, (size_t)R * C);

  td_backend_dropout(p.be, x, whole, R, C, 0.5f, &key);
  for (size_t s = 0; s < TD_ARRAY_SIZE(splits); s++) {
    size_t row = 0;
    td_backend_fill(p.be, part, (size_t)R * C, -1.0f);
    for (int k = 0; k < 4 && splits[s][k] > 0; k++) {
      td_dropout_key kk = key;
      kk.sample = row;
      td_backend_dropout(p.be, x + row * C, part + row * C, splits[s][k], C, 0.5f, &kk);
      row += splits[s][k];
    }
    ck_assert_uint_eq(row, R);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    ck_assert_mem_eq(whole, part, (size_t)R * C * sizeof(float));
  }

  /* in place, and as its own backward: the same elements survive */
  memcpy(part, x, (size_t)R * C * sizeof(float));
  td_backend_dropout(p.be, part, part, R, C, 0.5f, &key);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  ck_assert_mem_eq(whole, part, (size_t)R * C * sizeof(float));

  /* each key part changes the mask */
  for (int which = 0; which < 4; which++) {
    td_dropout_key kk = key;
    size_t differ = 0;
    if (which == 0)
      kk.seed++;
    else if (which == 1)
      kk.layer++;
    else if (which == 2)
      kk.step++;
    else
      kk.sample = 1; /* the rows are other samples now */
    td_backend_dropout(p.be, x, other, R, C, 0.5f, &kk);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    for (size_t i = 0; i < (size_t)R * C; i++)
      differ += (whole[i] == 0.0f) != (other[i] == 0.0f);
    ck_assert_msg(differ > (size_t)R * C / 4, "key part %d: only %zu elements differ", which,
                  differ);
  }
  bufs_close(&p);
}
END_TEST

/* ---- geometry checks ---- */

START_TEST(test_conv2d_geometry) {
  static const struct {
    td_conv2d_desc d;
    bool pool;
    const char *why; /* NULL: valid */
    int oh, ow;
  } cases[] = {
      {{1, 1, 5, 5, 1, 3, 3, 1, 1, 0, 0}, false, NULL, 3, 3},
      {{1, 1, 5, 7, 1, 3, 2, 2, 3, 1, 0}, false, NULL, 3, 2},
      {{1, 1, 2, 2, 1, 3, 3, 1, 1, 1, 1}, false, NULL, 2, 2},
      {{1, 1, 4, 4, 0, 2, 2, 2, 2, 1, 1}, true, NULL, 3, 3}, /* pooling ignores k */
      {{0, 1, 5, 5, 1, 3, 3, 1, 1, 0, 0}, false, "must be positive", 0, 0},
      {{1, 1, 5, 5, 0, 3, 3, 1, 1, 0, 0}, false, "must be positive", 0, 0},
      {{1, 1, 5, 5, 1, 3, 3, 0, 1, 0, 0}, false, "must be positive", 0, 0},
      {{1, 1, 5, 5, 1, 3, 3, 1, 1, -1, 0}, false, "non-negative", 0, 0},
      {{1, 1, 5, 5, 1, 3, 3, 1, 1, 2, 0}, true, "at most half the window", 0, 0},
      {{1, 1, 2, 5, 1, 3, 3, 1, 1, 0, 0}, false, "larger than the padded input", 0, 0},
      {{4096, 1024, 1024, 1024, 1, 1, 1, 1, 1, 0, 0}, false, "elements is more than", 0, 0},
      {{1, 65536, 64, 64, 65536, 1, 1, 1, 1, 0, 0}, false, "elements is more than", 0, 0},
  };
  char err[192];

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    int oh = -7, ow = -7, rc = td_conv2d_out(&cases[i].d, cases[i].pool, &oh, &ow, err,
                                             sizeof(err));
    if (cases[i].why == NULL) {
      ck_assert_msg(rc == 0, "case %zu: %s", i, err);
      ck_assert_int_eq(oh, cases[i].oh);
      ck_assert_int_eq(ow, cases[i].ow);
      continue;
    }
    ck_assert_int_eq(rc, TD_EINVAL);
    ck_assert_int_eq(oh, -7); /* nothing written on failure */
    ck_assert_msg(strstr(err, cases[i].why) != NULL, "case %zu: %s", i, err);
  }
  ck_assert_uint_eq(td_conv2d_workspace_cpu(&cases[4].d), 0);
}
END_TEST

START_TEST(test_conv2d_bad_calls_latch_einval) {
  td_conv2d_desc d = {1, 2, 6, 6, 3, 3, 3, 1, 1, 1, 1}, bad = d;
  bufs p;
  uint64_t ws = 0;

  bufs_open(&p);
  float *x = drand(&p, 72, 1, 0), *w = drand(&p, 54, 1, 0), *y = dalloc(&p, NULL, 108);
  float *work = dalloc(&p, NULL, 2 * 9 * 36 + 2 * (54 + 3));

  bad.kh = 9;
  ck_assert_int_eq(td_backend_conv2d_workspace(p.be, &bad, &ws), TD_EINVAL);
  td_backend_fill(p.be, y, 108, 5.0f);
  td_backend_conv2d_fwd(p.be, &bad, x, w, NULL, y, work, (2 * 9 * 36 + 2 * (54 + 3)) * 4);
  expect_failure(p.be, TD_EINVAL, "conv2d_fwd");
  ck_assert_float_eq(y[0], 5.0f); /* nothing ran */

  td_backend_conv2d_fwd(p.be, &d, x, w, NULL, y, work, (2 * 9 * 36 + 2 * (54 + 3)) * 4 - 4);
  expect_failure(p.be, TD_EINVAL, "workspace of 3044 bytes, 3048 needed");
  td_backend_pool2d_fwd(p.be, TD_POOL_MAX, &bad, x, y);
  expect_failure(p.be, TD_EINVAL, "pool2d_fwd");
  ck_assert_float_eq(y[0], 5.0f);
  bufs_close(&p);
}
END_TEST

/* ---- finite differences: every layer's input and parameter gradients ---- */

/* One layer under test: up to three differentiable inputs (x and its
 * parameters), one output.  L = sum(out * dout), so backward from dout gives
 * dL/d(input), which central differences of L must match. */
typedef struct fd_ctx {
  bufs *p;
  int nin;
  float *in[3], *gin[3];
  size_t in_n[3];
  float *out, *dout;
  size_t out_n;
  float *aux[4];
  uint64_t work_bytes;
  td_conv2d_desc d;
  td_pool_mode pool;
  td_gelu_kind gelu;
  td_act_kind act;
  td_conv1d_desc c1;
  td_batchnorm_desc bn;
  int rows, cols;
  td_buf labels;
} fd_ctx;

typedef struct fd_case {
  const char *name;
  void (*setup)(fd_ctx *c);
  void (*fwd)(fd_ctx *c);
  void (*bwd)(fd_ctx *c);
} fd_case;

static float *fd_input(fd_ctx *c, size_t n, float scale, float offset) {
  int i = c->nin++;

  c->in_n[i] = n;
  c->in[i] = drand(c->p, n, scale, offset);
  c->gin[i] = dalloc(c->p, NULL, n);
  return c->in[i];
}

static void fd_output(fd_ctx *c, size_t n) {
  c->out_n = n;
  c->out = dalloc(c->p, NULL, n);
  c->dout = drand(c->p, n, 1, 0);
}

static void dense_setup(fd_ctx *c) {
  c->rows = 3, c->cols = 5; /* n, in; out = 4 */
  fd_input(c, 15, 1, 0);
  fd_input(c, 20, 1, 0);
  fd_input(c, 4, 1, 0);
  fd_output(c, 12);
}
static void dense_fwd(fd_ctx *c) {
  td_backend_dense_fwd(c->p->be, c->in[0], c->in[1], c->in[2], c->out, 3, 5, 4);
}
static void dense_bwd(fd_ctx *c) {
  td_backend_dense_bwd(c->p->be, c->in[0], c->in[1], c->dout, c->gin[0], c->gin[1], c->gin[2],
                       3, 5, 4, 0.0f);
}

static void conv_setup_desc(fd_ctx *c, td_conv2d_desc d) {
  int oh, ow;

  c->d = d;
  ck_assert_int_eq(td_conv2d_out(&d, false, &oh, &ow, NULL, 0), 0);
  fd_input(c, in_elems(&d), 1, 0);
  fd_input(c, w_elems(&d), 0.5f, 0);
  fd_input(c, (size_t)d.k, 1, 0);
  fd_output(c, (size_t)d.n * d.k * oh * ow);
  ck_assert_int_eq(td_backend_conv2d_workspace(c->p->be, &d, &c->work_bytes), 0);
  c->aux[0] = dalloc(c->p, NULL, c->work_bytes / 4);
}
static void conv_setup(fd_ctx *c) { conv_setup_desc(c, (td_conv2d_desc){2, 2, 5, 6, 3, 3, 3, 1, 1, 1, 1}); }
static void conv_setup_strided(fd_ctx *c) { conv_setup_desc(c, (td_conv2d_desc){1, 2, 7, 6, 2, 3, 2, 2, 1, 0, 1}); }
static void conv_setup_pointwise(fd_ctx *c) { conv_setup_desc(c, (td_conv2d_desc){2, 3, 3, 3, 2, 1, 1, 1, 1, 0, 0}); }
static void conv_fwd(fd_ctx *c) {
  td_backend_conv2d_fwd(c->p->be, &c->d, c->in[0], c->in[1], c->in[2], c->out, c->aux[0],
                        c->work_bytes);
}
static void conv_bwd(fd_ctx *c) {
  td_backend_conv2d_bwd(c->p->be, &c->d, c->in[0], c->in[1], c->dout, c->gin[0], c->gin[1],
                        c->gin[2], 0.0f, c->aux[0], c->work_bytes);
}

static void pool_setup_mode(fd_ctx *c, td_pool_mode mode) {
  int oh, ow;

  c->d = (td_conv2d_desc){1, 2, 6, 7, 0, 3, 3, 2, 2, 1, 1};
  c->pool = mode;
  ck_assert_int_eq(td_conv2d_out(&c->d, true, &oh, &ow, NULL, 0), 0);
  /* steps of 0.1 against perturbations of 0.01: no arg-max moves */
  fill_distinct(fd_input(c, in_elems(&c->d), 1, 0), in_elems(&c->d), 0.1f);
  fd_output(c, (size_t)2 * oh * ow);
}
static void maxpool_setup(fd_ctx *c) { pool_setup_mode(c, TD_POOL_MAX); }
static void avgpool_setup(fd_ctx *c) { pool_setup_mode(c, TD_POOL_AVG); }
static void avgpool_excl_setup(fd_ctx *c) { pool_setup_mode(c, TD_POOL_AVG_EXCL_PAD); }
static void pool_fwd(fd_ctx *c) {
  td_backend_pool2d_fwd(c->p->be, c->pool, &c->d, c->in[0], c->out);
}
static void pool_bwd(fd_ctx *c) {
  td_backend_pool2d_bwd(c->p->be, c->pool, &c->d, c->in[0], c->out, c->dout, c->gin[0]);
}

static void relu_setup(fd_ctx *c) {
  float *x = fd_input(c, 30, 1, 0);

  for (int i = 0; i < 30; i++) /* away from the kink, half of them live */
    x[i] = (i % 2 ? 1.0f : -1.0f) * (fabsf(x[i]) + 0.05f);
  fd_output(c, 30);
}
static void relu_fwd(fd_ctx *c) { td_backend_relu_fwd(c->p->be, c->in[0], c->out, 30); }
static void relu_bwd(fd_ctx *c) {
  td_backend_relu_bwd(c->p->be, c->out, c->dout, c->gin[0], 30);
}

static void gelu_setup(fd_ctx *c) {
  fd_input(c, 40, 3, 0);
  fd_output(c, 40);
}
static void gelu_tanh_setup(fd_ctx *c) {
  gelu_setup(c);
  c->gelu = TD_GELU_TANH;
}
static void gelu_fwd(fd_ctx *c) { td_backend_gelu_fwd(c->p->be, c->gelu, c->in[0], c->out, 40); }
static void gelu_bwd(fd_ctx *c) {
  td_backend_gelu_bwd(c->p->be, c->gelu, c->in[0], c->dout, c->gin[0], 40);
}

static const td_dropout_key fd_key = {.seed = 1, .layer = 4, .step = 9, .sample = 6};
static void dropout_setup(fd_ctx *c) {
  c->rows = 4, c->cols = 9;
  fd_input(c, 36, 1, 0);
  fd_output(c, 36);
}
static void dropout_fwd(fd_ctx *c) {
  td_backend_dropout(c->p->be, c->in[0], c->out, 4, 9, 0.4f, &fd_key);
}
static void dropout_bwd(fd_ctx *c) {
  td_backend_dropout(c->p->be, c->dout, c->gin[0], 4, 9, 0.4f, &fd_key);
}

static void bn_setup(fd_ctx *c) {
  c->bn = (td_batchnorm_desc){.n = 3, .c = 2, .hw = 4, .eps = 1e-5f, .momentum = 0.1f};
  fd_input(c, 24, 2, 0.3f);
  fd_input(c, 2, 0.5f, 1);
  fd_input(c, 2, 1, 0);
  fd_output(c, 24);
  for (int i = 0; i < 4; i++)
    c->aux[i] = dalloc(c->p, NULL, 2); /* running mean, var; saved mean, invstd */
}
static void bn_fwd(fd_ctx *c) {
  td_backend_batchnorm2d_fwd(c->p->be, &c->bn, true, c->in[0], c->out, c->in[1], c->in[2],
                             c->aux[0], c->aux[1], c->aux[2], c->aux[3]);
}
static void bn_bwd(fd_ctx *c) {
  td_backend_batchnorm2d_bwd(c->p->be, &c->bn, c->in[0], c->dout, c->gin[0], c->in[1],
                             c->aux[2], c->aux[3], 0.0f, c->gin[1], c->gin[2]);
}

static void ln_setup(fd_ctx *c) {
  c->rows = 4, c->cols = 6;
  fd_input(c, 24, 2, 0.3f);
  fd_input(c, 6, 0.5f, 1);
  fd_input(c, 6, 1, 0);
  fd_output(c, 24);
  c->aux[0] = dalloc(c->p, NULL, 4);
  c->aux[1] = dalloc(c->p, NULL, 4);
}
static void ln_fwd(fd_ctx *c) {
  td_backend_layernorm_fwd(c->p->be, c->in[0], c->out, 4, 6, c->in[1], c->in[2], 1e-5f,
                           c->aux[0], c->aux[1]);
}
static void ln_bwd(fd_ctx *c) {
  td_backend_layernorm_bwd(c->p->be, c->in[0], c->dout, c->gin[0], 4, 6, c->in[1], c->aux[0],
                           c->aux[1], 0.0f, c->gin[1], c->gin[2]);
}

/* The loss is the output: out[0] = summed loss (out[1] the correct count,
 * its dout ignored). */
static void xent_setup(fd_ctx *c) {
  static const int32_t lab[4] = {1, 4, 0, 4};

  fd_input(c, 20, 2, 0);
  fd_output(c, 2);
  c->dout[1] = 0.0f;
  c->aux[0] = dalloc(c->p, NULL, 2);
  ck_assert_int_eq(td_backend_alloc(c->p->be, sizeof(lab), &c->labels), 0);
  td_backend_upload(c->p->be, c->labels.ptr, lab, sizeof(lab));
}
static void xent_fwd(fd_ctx *c) {
  td_backend_fill(c->p->be, c->out, 2, 0.0f);
  td_backend_softmax_xent_smooth(c->p->be, c->in[0], c->labels.ptr, 4, 5, 0.15f, 1.0f, NULL,
                                 c->out);
}
static void xent_bwd(fd_ctx *c) {
  td_backend_softmax_xent_smooth(c->p->be, c->in[0], c->labels.ptr, 4, 5, 0.15f, c->dout[0],
                                 c->gin[0], c->aux[0]);
}

static void act_setup(fd_ctx *c) {
  fd_input(c, 30, 2, 0);
  fd_output(c, 30);
}
static void tanh_setup(fd_ctx *c) {
  act_setup(c);
  c->act = TD_ACT_TANH;
}
static void act_fwd(fd_ctx *c) { td_backend_act_fwd(c->p->be, c->act, c->in[0], c->out, 30); }
static void act_bwd(fd_ctx *c) {
  td_backend_act_bwd(c->p->be, c->act, c->out, c->dout, c->gin[0], 30);
}

/* [outer, dim, inner] in rows, cols, d.h (inner) */
static void softmax_setup_axes(fd_ctx *c, int outer, int dim, int inner) {
  c->rows = outer, c->cols = dim, c->d.h = inner;
  fd_input(c, (size_t)outer * dim * inner, 2, 0);
  fd_output(c, (size_t)outer * dim * inner);
}
static void softmax_setup(fd_ctx *c) { softmax_setup_axes(c, 4, 6, 1); }
static void softmax_pixels_setup(fd_ctx *c) { softmax_setup_axes(c, 2, 3, 5); }
static void softmax_fwd(fd_ctx *c) {
  td_backend_softmax_fwd(c->p->be, c->in[0], c->out, c->rows, c->cols, c->d.h);
}
static void softmax_bwd(fd_ctx *c) {
  td_backend_softmax_bwd(c->p->be, c->out, c->dout, c->gin[0], c->rows, c->cols, c->d.h);
}

static void gap_setup_axes(fd_ctx *c, int outer, int count, int inner) {
  c->rows = outer, c->cols = count, c->d.h = inner;
  fd_input(c, (size_t)outer * count * inner, 1, 0);
  fd_output(c, (size_t)outer * inner);
}
static void gap_planes_setup(fd_ctx *c) { gap_setup_axes(c, 6, 9, 1); }
static void gap_seq_setup(fd_ctx *c) { gap_setup_axes(c, 2, 5, 4); }
static void gap_fwd(fd_ctx *c) {
  td_backend_mean_fwd(c->p->be, c->in[0], c->out, c->rows, c->cols, c->d.h);
}
static void gap_bwd(fd_ctx *c) {
  td_backend_mean_bwd(c->p->be, c->dout, c->gin[0], c->rows, c->cols, c->d.h);
}

static void conv1d_setup_desc(fd_ctx *c, td_conv1d_desc d) {
  int ol;

  c->c1 = d;
  ck_assert_int_eq(td_conv1d_out(&d, &ol, NULL, 0), 0);
  fd_input(c, (size_t)d.n * d.l * d.c, 1, 0);
  fd_input(c, (size_t)d.k * d.c * d.kw, 0.5f, 0);
  fd_input(c, (size_t)d.k, 1, 0);
  fd_output(c, (size_t)d.n * ol * d.k);
  c->work_bytes = td_conv1d_workspace(&d);
  c->aux[0] = dalloc(c->p, NULL, c->work_bytes / 4);
}
static void conv1d_setup(fd_ctx *c) { conv1d_setup_desc(c, (td_conv1d_desc){2, 7, 3, 2, 3, 1, 1}); }
static void conv1d_setup_strided(fd_ctx *c) { conv1d_setup_desc(c, (td_conv1d_desc){2, 9, 2, 3, 4, 2, 2}); }
static void conv1d_fwd(fd_ctx *c) {
  td_backend_conv1d_fwd(c->p->be, &c->c1, c->in[0], c->in[1], c->in[2], c->out, c->aux[0],
                        c->work_bytes);
}
static void conv1d_bwd(fd_ctx *c) {
  td_backend_conv1d_bwd(c->p->be, &c->c1, c->in[0], c->in[1], c->dout, c->gin[0], c->gin[1],
                        c->gin[2], 0.0f, c->aux[0], c->work_bytes);
}

static const fd_case fd_cases[] = {
    {"dense", dense_setup, dense_fwd, dense_bwd},
    {"conv2d", conv_setup, conv_fwd, conv_bwd},
    {"conv2d strided", conv_setup_strided, conv_fwd, conv_bwd},
    {"conv2d pointwise", conv_setup_pointwise, conv_fwd, conv_bwd},
    {"maxpool2d", maxpool_setup, pool_fwd, pool_bwd},
    {"avgpool2d", avgpool_setup, pool_fwd, pool_bwd},
    {"avgpool2d excluding padding", avgpool_excl_setup, pool_fwd, pool_bwd},
    {"relu", relu_setup, relu_fwd, relu_bwd},
    {"gelu", gelu_setup, gelu_fwd, gelu_bwd},
    {"gelu tanh", gelu_tanh_setup, gelu_fwd, gelu_bwd},
    {"dropout", dropout_setup, dropout_fwd, dropout_bwd},
    {"batchnorm2d", bn_setup, bn_fwd, bn_bwd},
    {"layernorm", ln_setup, ln_fwd, ln_bwd},
    {"softmax cross-entropy, smoothed", xent_setup, xent_fwd, xent_bwd},
    {"sigmoid", act_setup, act_fwd, act_bwd},
    {"tanh", tanh_setup, act_fwd, act_bwd},
    {"softmax", softmax_setup, softmax_fwd, softmax_bwd},
    {"softmax over channels", softmax_pixels_setup, softmax_fwd, softmax_bwd},
    {"global_avg_pool, planes", gap_planes_setup, gap_fwd, gap_bwd},
    {"global_avg_pool, sequences", gap_seq_setup, gap_fwd, gap_bwd},
    {"conv1d", conv1d_setup, conv1d_fwd, conv1d_bwd},
    {"conv1d strided", conv1d_setup_strided, conv1d_fwd, conv1d_bwd},
};

static double fd_loss(fd_ctx *c, const fd_case *k) {
  double s = 0.0;

  k->fwd(c);
  ck_assert_int_eq(td_backend_sync(c->p->be), 0);
  for (size_t i = 0; i < c->out_n; i++)
    s += (double)c->out[i] * c->dout[i];
  return s;
}

START_TEST(test_finite_differences) {
  const fd_case *k = &fd_cases[_i];
  const float h = 1e-2f;
  fd_ctx c;
  bufs p;

  memset(&c, 0, sizeof(c));
  bufs_open(&p);
  c.p = &p;
  k->setup(&c);
  k->fwd(&c);
  k->bwd(&c);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  for (int t = 0; t < c.nin; t++) {
    double gscale = 0.0;
    int live = 0;

    for (size_t e = 0; e < c.in_n[t]; e++)
      gscale = fmax(gscale, fabs(c.gin[t][e]));
    for (size_t e = 0; e < c.in_n[t]; e++) {
      float keep = c.in[t][e], up = keep + h, down = keep - h;
      double lu, ld, fd, g = c.gin[t][e];

      c.in[t][e] = up;
      lu = fd_loss(&c, k);
      c.in[t][e] = down;
      ld = fd_loss(&c, k);
      c.in[t][e] = keep;
      fd = (lu - ld) / ((double)up - down);
      ck_assert_msg(fabs(fd - g) <= 1e-2 * fabs(fd) + 2e-3 * (1.0 + gscale),
                    "%s: input %d element %zu: backward %.6g, finite difference %.6g", k->name,
                    t, e, g, fd);
      live += fabs(g) > 1e-3;
    }
    /* the check saw real gradients (max pooling has one per window) */
    size_t need = k->setup == maxpool_setup ? c.out_n / 2 : c.in_n[t] / 3;
    ck_assert_msg(live >= (int)need, "%s: input %d: only %d live gradients", k->name, t, live);
  }
  td_backend_free(p.be, &c.labels);
  bufs_close(&p);
}
END_TEST

/* beta 1 adds a second micro-batch's parameter gradients to the first's,
 * for every op that has parameters. */
START_TEST(test_param_grads_accumulate) {
  /* dense, conv2d, batchnorm2d, layernorm, conv1d */
  static const int with_params[] = {0, 1, 11, 12, 20};
  const fd_case *k = &fd_cases[with_params[_i]];
  fd_ctx c;
  bufs p;
  float *first[3];

  memset(&c, 0, sizeof(c));
  bufs_open(&p);
  c.p = &p;
  k->setup(&c);
  k->fwd(&c);
  k->bwd(&c);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  for (int t = 1; t < c.nin; t++)
    first[t] = dalloc(&p, c.gin[t], c.in_n[t]);
  /* the same micro-batch again, beta 1: twice the gradients */
  if (k->bwd == dense_bwd)
    td_backend_dense_bwd(p.be, c.in[0], c.in[1], c.dout, NULL, c.gin[1], c.gin[2], 3, 5, 4,
                         1.0f);
  else if (k->bwd == conv_bwd)
    td_backend_conv2d_bwd(p.be, &c.d, c.in[0], c.in[1], c.dout, NULL, c.gin[1], c.gin[2], 1.0f,
                          c.aux[0], c.work_bytes);
  else if (k->bwd == conv1d_bwd)
    td_backend_conv1d_bwd(p.be, &c.c1, c.in[0], c.in[1], c.dout, NULL, c.gin[1], c.gin[2], 1.0f,
                          c.aux[0], c.work_bytes);
  else if (k->bwd == bn_bwd)
    td_backend_batchnorm2d_bwd(p.be, &c.bn, c.in[0], c.dout, NULL, c.in[1], c.aux[2], c.aux[3],
                               1.0f, c.gin[1], c.gin[2]);
  else
    td_backend_layernorm_bwd(p.be, c.in[0], c.dout, NULL, 4, 6, c.in[1], c.aux[0], c.aux[1],
                             1.0f, c.gin[1], c.gin[2]);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  for (int t = 1; t < c.nin; t++)
    for (size_t e = 0; e < c.in_n[t]; e++)
      ck_assert_msg(fabsf(c.gin[t][e] - 2 * first[t][e]) <= 1e-5f * (1 + fabsf(first[t][e])),
                    "%s: parameter %d element %zu: %g after two, %g after one", k->name, t, e,
                    c.gin[t][e], first[t][e]);
  bufs_close(&p);
}
END_TEST

/* ---- PyTorch's results (tests/reference/layers.bin) ---- */

typedef struct ref_tensor {
  char name[64];
  int rank;
  uint32_t dims[4];
  size_t n;
  const char *data; /* float32s in the file's bytes, maybe unaligned: memcpy them */
} ref_tensor;

typedef struct ref_file {
  char *raw;
  ref_tensor *t;
  uint32_t count;
} ref_file;

static const char ref_magic[8] = "TDREF1\n";

/* Reads the little-endian integer of `bytes` bytes at *at, advancing it; -1
 * past the end. */
static int64_t ref_uint(const char *raw, size_t len, size_t *at, int bytes) {
  uint64_t v = 0;

  if (len - *at < (size_t)bytes)
    return -1;
  for (int i = 0; i < bytes; i++)
    v |= (uint64_t)(uint8_t)raw[*at + i] << (8 * i);
  *at += (size_t)bytes;
  return (int64_t)v;
}

static void ref_load_file(ref_file *f, const char *file) {
  const char *root = getenv("TD_SOURCE_ROOT");
  char path[512];
  size_t len, at = sizeof(ref_magic);
  int64_t count;

  snprintf(path, sizeof(path), "%s/tests/reference/%s", root != NULL ? root : ".", file);
  ck_assert_msg(td_read_file(path, 4u << 20, &f->raw, &len) == 0,
                "%s: cannot read the reference vectors (set TD_SOURCE_ROOT)", path);
  ck_assert_msg(len > sizeof(ref_magic) && memcmp(f->raw, ref_magic, sizeof(ref_magic)) == 0,
                "%s: not a reference file", path);
  count = ref_uint(f->raw, len, &at, 4);
  ck_assert_msg(count > 0 && count < 10000, "%s: bad tensor count", path);
  f->count = (uint32_t)count;
  f->t = calloc(f->count, sizeof(*f->t));
  ck_assert_ptr_nonnull(f->t);
  for (uint32_t i = 0; i < f->count; i++) {
    ref_tensor *t = &f->t[i];
    int64_t nl = ref_uint(f->raw, len, &at, 2), rank;

    ck_assert_msg(nl > 0 && nl < (int64_t)sizeof(t->name) && len - at >= (size_t)nl,
                  "%s: tensor %u: bad name", path, i);
    memcpy(t->name, f->raw + at, (size_t)nl);
    at += (size_t)nl;
    rank = ref_uint(f->raw, len, &at, 1);
    ck_assert_msg(rank >= 0 && rank <= 4, "%s: %s: bad rank", path, t->name);
    t->rank = (int)rank;
    t->n = 1;
    for (int d = 0; d < t->rank; d++) {
      int64_t v = ref_uint(f->raw, len, &at, 4);
      ck_assert_msg(v > 0 && v < (1 << 20), "%s: %s: bad dimension", path, t->name);
      t->dims[d] = (uint32_t)v;
      t->n *= (size_t)v;
    }
    ck_assert_msg(t->n <= (len - at) / 4, "%s: %s: truncated", path, t->name);
    t->data = f->raw + at;
    at += t->n * 4;
  }
  ck_assert_msg(at == len, "%s: %zu trailing bytes", path, len - at);
}

static void ref_load(ref_file *f) { ref_load_file(f, "layers.bin"); }

static void ref_close(ref_file *f) {
  free(f->t);
  free(f->raw);
}

static const ref_tensor *ref_find(const ref_file *f, const char *prefix, const char *name) {
  char full[96];

  snprintf(full, sizeof(full), "%s%s", prefix, name);
  for (uint32_t i = 0; i < f->count; i++)
    if (strcmp(f->t[i].name, full) == 0)
      return &f->t[i];
  return NULL;
}

static const ref_tensor *ref_get(const ref_file *f, const char *prefix, const char *name) {
  const ref_tensor *t = ref_find(f, prefix, name);

  ck_assert_msg(t != NULL, "reference tensor %s%s is missing", prefix, name);
  return t;
}

/* A device copy of a reference tensor. */
static float *ref_dev(bufs *p, const ref_file *f, const char *prefix, const char *name) {
  const ref_tensor *t = ref_get(f, prefix, name);
  float *d = dalloc(p, NULL, t->n);

  memcpy(d, t->data, t->n * sizeof(float));
  return d;
}

/* PyTorch's answers are within 1e-4, relative (expect_close's sense). */
static void ref_expect(const ref_file *f, const char *prefix, const char *name,
                       const float *got) {
  const ref_tensor *t = ref_get(f, prefix, name);
  double *want = dvec(t->n);
  float v;
  char what[96];

  for (size_t i = 0; i < t->n; i++) {
    memcpy(&v, t->data + i * 4, 4);
    want[i] = v;
  }
  snprintf(what, sizeof(what), "%s%s (PyTorch)", prefix, name);
  expect_close(what, got, want, t->n, 1e-4);
  free(want);
}

static float ref_param(const ref_file *f, const char *prefix, size_t i) {
  const ref_tensor *t = ref_get(f, prefix, "params");
  float v;

  ck_assert_uint_gt(t->n, i);
  memcpy(&v, t->data + i * 4, 4);
  return v;
}

static void ref_dense(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x"), *w = ref_get(f, c, "w");
  int n = (int)x->dims[0], in = (int)x->dims[1], out = (int)w->dims[0];
  float *y = dalloc(p, NULL, (size_t)n * out), *dx = dalloc(p, NULL, x->n);
  float *dw = dalloc(p, NULL, w->n), *db = dalloc(p, NULL, (size_t)out);
  float *xd = ref_dev(p, f, c, "x"), *wd = ref_dev(p, f, c, "w");

  td_backend_dense_fwd(p->be, xd, wd, ref_dev(p, f, c, "b"), y, n, in, out);
  td_backend_dense_bwd(p->be, xd, wd, ref_dev(p, f, c, "dy"), dx, dw, db, n, in, out, 0.0f);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", y);
  ref_expect(f, c, "dx", dx);
  ref_expect(f, c, "dw", dw);
  ref_expect(f, c, "db", db);
}

static void ref_conv2d(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x"), *w = ref_get(f, c, "w"), *y = ref_get(f, c, "y");
  td_conv2d_desc d = {(int)x->dims[0], (int)x->dims[1], (int)x->dims[2], (int)x->dims[3],
                      (int)w->dims[0], (int)w->dims[2], (int)w->dims[3],
                      (int)ref_param(f, c, 0), (int)ref_param(f, c, 1),
                      (int)ref_param(f, c, 2), (int)ref_param(f, c, 3)};
  uint64_t ws;
  float *gy = dalloc(p, NULL, y->n), *dx = dalloc(p, NULL, x->n), *dw = dalloc(p, NULL, w->n);
  float *db = dalloc(p, NULL, w->dims[0]), *xd = ref_dev(p, f, c, "x");
  float *wd = ref_dev(p, f, c, "w"), *work;

  ck_assert_int_eq(td_backend_conv2d_workspace(p->be, &d, &ws), 0);
  work = dalloc(p, NULL, ws / 4);
  td_backend_conv2d_fwd(p->be, &d, xd, wd, ref_dev(p, f, c, "b"), gy, work, ws);
  td_backend_conv2d_bwd(p->be, &d, xd, wd, ref_dev(p, f, c, "dy"), dx, dw, db, 0.0f, work, ws);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", gy);
  ref_expect(f, c, "dx", dx);
  ref_expect(f, c, "dw", dw);
  ref_expect(f, c, "db", db);
}

static void ref_pool(bufs *p, const ref_file *f, const char *c, bool max) {
  const ref_tensor *x = ref_get(f, c, "x"), *y = ref_get(f, c, "y");
  td_conv2d_desc d = {(int)x->dims[0], (int)x->dims[1], (int)x->dims[2], (int)x->dims[3], 0,
                      (int)ref_param(f, c, 0), (int)ref_param(f, c, 1),
                      (int)ref_param(f, c, 2), (int)ref_param(f, c, 3),
                      (int)ref_param(f, c, 4), (int)ref_param(f, c, 5)};
  td_pool_mode mode = max ? TD_POOL_MAX
                          : ref_param(f, c, 6) != 0.0f ? TD_POOL_AVG : TD_POOL_AVG_EXCL_PAD;
  float *gy = dalloc(p, NULL, y->n), *dx = dalloc(p, NULL, x->n), *xd = ref_dev(p, f, c, "x");

  td_backend_pool2d_fwd(p->be, mode, &d, xd, gy);
  td_backend_pool2d_bwd(p->be, mode, &d, xd, gy, ref_dev(p, f, c, "dy"), dx);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", gy);
  ref_expect(f, c, "dx", dx);
}

static void ref_maxpool(bufs *p, const ref_file *f, const char *c) { ref_pool(p, f, c, true); }
static void ref_avgpool(bufs *p, const ref_file *f, const char *c) { ref_pool(p, f, c, false); }

static void ref_relu(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x");
  float *y = dalloc(p, NULL, x->n), *dx = dalloc(p, NULL, x->n);

  td_backend_relu_fwd(p->be, ref_dev(p, f, c, "x"), y, x->n);
  td_backend_relu_bwd(p->be, y, ref_dev(p, f, c, "dy"), dx, x->n);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", y);
  ref_expect(f, c, "dx", dx);
}

static void ref_gelu(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x");
  td_gelu_kind kind = strstr(c, "/tanh/") != NULL ? TD_GELU_TANH : TD_GELU_ERF;
  float *y = dalloc(p, NULL, x->n), *dx = dalloc(p, NULL, x->n), *xd = ref_dev(p, f, c, "x");

  td_backend_gelu_fwd(p->be, kind, xd, y, x->n);
  td_backend_gelu_bwd(p->be, kind, xd, ref_dev(p, f, c, "dy"), dx, x->n);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", y);
  ref_expect(f, c, "dx", dx);
}

static void ref_batchnorm(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x");
  td_batchnorm_desc d = {(int)x->dims[0], (int)x->dims[1], (int)(x->dims[2] * x->dims[3]),
                         ref_param(f, c, 0), ref_param(f, c, 1)};
  float *xd = ref_dev(p, f, c, "x"), *g = ref_dev(p, f, c, "gamma");
  float *b = ref_dev(p, f, c, "beta");
  float *rm = ref_dev(p, f, c, "running_mean"), *rv = ref_dev(p, f, c, "running_var");
  float *y = dalloc(p, NULL, x->n), *dx = dalloc(p, NULL, x->n), *sm = dalloc(p, NULL, d.c);
  float *si = dalloc(p, NULL, d.c), *dg = dalloc(p, NULL, d.c), *dbt = dalloc(p, NULL, d.c);

  td_backend_batchnorm2d_fwd(p->be, &d, true, xd, y, g, b, rm, rv, sm, si);
  td_backend_batchnorm2d_bwd(p->be, &d, xd, ref_dev(p, f, c, "dy"), dx, g, sm, si, 0.0f, dg, dbt);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", y);
  ref_expect(f, c, "running_mean_out", rm);
  ref_expect(f, c, "running_var_out", rv);
  ref_expect(f, c, "dx", dx);
  ref_expect(f, c, "dgamma", dg);
  ref_expect(f, c, "dbeta", dbt);
  td_backend_batchnorm2d_fwd(p->be, &d, false, xd, y, g, b, rm, rv, NULL, NULL);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y_eval", y);
}

static void ref_layernorm(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x"), *g = ref_get(f, c, "gamma");
  size_t cols = g->n, rows = x->n / cols;
  float *xd = ref_dev(p, f, c, "x"), *gd = ref_dev(p, f, c, "gamma");
  float *y = dalloc(p, NULL, x->n), *dx = dalloc(p, NULL, x->n), *sm = dalloc(p, NULL, rows);
  float *si = dalloc(p, NULL, rows), *dg = dalloc(p, NULL, cols), *dbt = dalloc(p, NULL, cols);

  td_backend_layernorm_fwd(p->be, xd, y, rows, cols, gd, ref_dev(p, f, c, "beta"),
                           ref_param(f, c, 0), sm, si);
  td_backend_layernorm_bwd(p->be, xd, ref_dev(p, f, c, "dy"), dx, rows, cols, gd, sm, si, 0.0f,
                           dg, dbt);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", y);
  ref_expect(f, c, "dx", dx);
  ref_expect(f, c, "dgamma", dg);
  ref_expect(f, c, "dbeta", dbt);
}

static void ref_xent(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *z = ref_get(f, c, "logits"), *lt = ref_get(f, c, "labels");
  size_t rows = z->dims[0], classes = z->dims[1];
  int32_t lab[64];
  td_buf bl;
  float *dz = dalloc(p, NULL, z->n), *st = dalloc(p, NULL, 2), v;

  ck_assert_uint_le(rows, sizeof(lab) / sizeof(lab[0]));
  for (size_t r = 0; r < rows; r++) {
    memcpy(&v, lt->data + r * 4, 4);
    lab[r] = (uint8_t)v;
  }
  ck_assert_int_eq(td_backend_alloc(p->be, rows * sizeof(lab[0]), &bl), 0);
  td_backend_upload(p->be, bl.ptr, lab, rows * sizeof(lab[0]));
  td_backend_softmax_xent_smooth(p->be, ref_dev(p, f, c, "logits"), bl.ptr, rows, classes,
                                 ref_param(f, c, 0), 1.0f, dz, st);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "loss", st);
  ref_expect(f, c, "dlogits", dz);
  td_backend_free(p->be, &bl);
}

static void ref_act(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x");
  td_act_kind kind = strncmp(c, "tanh/", 5) == 0 ? TD_ACT_TANH : TD_ACT_SIGMOID;
  float *y = dalloc(p, NULL, x->n), *dx = dalloc(p, NULL, x->n);

  td_backend_act_fwd(p->be, kind, ref_dev(p, f, c, "x"), y, x->n);
  td_backend_act_bwd(p->be, kind, y, ref_dev(p, f, c, "dy"), dx, x->n);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", y);
  ref_expect(f, c, "dx", dx);
}

/* params: [outer, dim, inner] of the softmax's axis */
static void ref_softmax(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x");
  size_t outer = (size_t)ref_param(f, c, 0), dim = (size_t)ref_param(f, c, 1);
  size_t inner = (size_t)ref_param(f, c, 2);
  float *y = dalloc(p, NULL, x->n), *dx = dalloc(p, NULL, x->n);

  ck_assert_uint_eq(outer * dim * inner, x->n);
  td_backend_softmax_fwd(p->be, ref_dev(p, f, c, "x"), y, outer, dim, inner);
  td_backend_softmax_bwd(p->be, y, ref_dev(p, f, c, "dy"), dx, outer, dim, inner);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", y);
  ref_expect(f, c, "dx", dx);
}

/* params: [outer, count, inner] of the mean */
static void ref_gap(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x"), *y = ref_get(f, c, "y");
  size_t outer = (size_t)ref_param(f, c, 0), count = (size_t)ref_param(f, c, 1);
  size_t inner = (size_t)ref_param(f, c, 2);
  float *gy = dalloc(p, NULL, y->n), *dx = dalloc(p, NULL, x->n);

  ck_assert_uint_eq(outer * count * inner, x->n);
  ck_assert_uint_eq(outer * inner, y->n);
  td_backend_mean_fwd(p->be, ref_dev(p, f, c, "x"), gy, outer, count, inner);
  td_backend_mean_bwd(p->be, ref_dev(p, f, c, "dy"), dx, outer, count, inner);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", gy);
  ref_expect(f, c, "dx", dx);
}

/* x [n, l, c] channels last, w [k, c, kw]; params: stride, padding */
static void ref_conv1d(bufs *p, const ref_file *f, const char *c) {
  const ref_tensor *x = ref_get(f, c, "x"), *w = ref_get(f, c, "w"), *y = ref_get(f, c, "y");
  td_conv1d_desc d = {(int)x->dims[0], (int)x->dims[1], (int)x->dims[2], (int)w->dims[0],
                      (int)w->dims[2], (int)ref_param(f, c, 0), (int)ref_param(f, c, 1)};
  uint64_t ws = td_conv1d_workspace(&d);
  float *gy = dalloc(p, NULL, y->n), *dx = dalloc(p, NULL, x->n), *dw = dalloc(p, NULL, w->n);
  float *db = dalloc(p, NULL, w->dims[0]), *xd = ref_dev(p, f, c, "x");
  float *wd = ref_dev(p, f, c, "w"), *work = dalloc(p, NULL, ws / 4);

  ck_assert_uint_gt(ws, 0);
  td_backend_conv1d_fwd(p->be, &d, xd, wd, ref_dev(p, f, c, "b"), gy, work, ws);
  td_backend_conv1d_bwd(p->be, &d, xd, wd, ref_dev(p, f, c, "dy"), dx, dw, db, 0.0f, work, ws);
  ck_assert_int_eq(td_backend_sync(p->be), 0);
  ref_expect(f, c, "y", gy);
  ref_expect(f, c, "dx", dx);
  ref_expect(f, c, "dw", dw);
  ref_expect(f, c, "db", db);
}

static const struct {
  const char *op;
  const char *marker; /* the tensor every case of the op has */
  int min_cases;
  void (*run)(bufs *p, const ref_file *f, const char *prefix);
} ref_ops[] = {
    {"dense", "x", 1, ref_dense},
    {"conv2d", "x", 5, ref_conv2d},
    {"maxpool2d", "x", 3, ref_maxpool},
    {"avgpool2d", "x", 4, ref_avgpool},
    {"relu", "x", 1, ref_relu},
    {"gelu", "x", 2, ref_gelu},
    {"batchnorm2d", "x", 1, ref_batchnorm},
    {"layernorm", "x", 2, ref_layernorm},
    {"xent", "logits", 3, ref_xent},
    {"sigmoid", "x", 1, ref_act},
    {"tanh", "x", 1, ref_act},
    {"softmax", "x", 3, ref_softmax},
    {"global_avg_pool", "x", 2, ref_gap},
    {"conv1d", "x", 5, ref_conv1d},
};

START_TEST(test_matches_pytorch) {
  ref_file f;
  size_t oplen = strlen(ref_ops[_i].op), mlen = strlen(ref_ops[_i].marker);
  int cases = 0;

  ref_load(&f);
  for (uint32_t i = 0; i < f.count; i++) {
    const char *name = f.t[i].name;
    size_t nl = strlen(name);
    char prefix[64];
    bufs p;

    /* "<op>/<case>/<marker>" */
    if (strncmp(name, ref_ops[_i].op, oplen) != 0 || name[oplen] != '/' || nl < mlen + 1 ||
        strcmp(name + nl - mlen, ref_ops[_i].marker) != 0 || name[nl - mlen - 1] != '/')
      continue;
    snprintf(prefix, sizeof(prefix), "%.*s", (int)(nl - mlen), name);
    bufs_open(&p);
    ref_ops[_i].run(&p, &f, prefix);
    bufs_close(&p);
    cases++;
  }
  ck_assert_msg(cases >= ref_ops[_i].min_cases, "%s: %d reference cases, expected %d",
                ref_ops[_i].op, cases, ref_ops[_i].min_cases);
  ref_close(&f);
}
END_TEST

/* ---- The joins of a graph (tests/reference/graph.bin) ---- */

/* One add or concat case: its inputs x0.. joined as PyTorch's a + b + c
 * or torch.cat along dim 1 ([n, f], [n, C, H, W]) or 2 ([n, T, D]). */
static void ref_join(const ref_file *f, const char *prefix, bool concat) {
  const ref_tensor *t[8], *yt = ref_get(f, prefix, "y");
  float *x[8], *dx[8], *y, *dy;
  size_t rows = yt->dims[0] * (yt->rank == 3 ? yt->dims[1] : 1), width = yt->n / rows, off = 0;
  char name[8];
  bufs p;
  int nx = 0;

  bufs_open(&p);
  for (; nx < 8; nx++) {
    snprintf(name, sizeof(name), "x%d", nx);
    if ((t[nx] = ref_find(f, prefix, name)) == NULL)
      break;
    x[nx] = ref_dev(&p, f, prefix, name);
    dx[nx] = dalloc(&p, NULL, t[nx]->n);
  }
  ck_assert_int_ge(nx, 2);
  y = dalloc(&p, NULL, yt->n);
  dy = ref_dev(&p, f, prefix, "dy");
  for (int k = 0; k < nx; k++) {
    size_t w = t[k]->n / rows;

    if (concat) {
      td_backend_copy2d(p.be, x[k], w, y + off, width, rows, w, 0.0f);
      td_backend_copy2d(p.be, dy + off, width, dx[k], w, rows, w, 0.0f);
    } else {
      if (k > 0)
        td_backend_add(p.be, k == 1 ? x[0] : y, x[k], y, yt->n);
      td_backend_copy2d(p.be, dy, yt->n, dx[k], yt->n, 1, yt->n, 0.0f);
    }
    off += w;
  }
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  ref_expect(f, prefix, "y", y);
  for (int k = 0; k < nx; k++) {
    snprintf(name, sizeof(name), "dx%d", k);
    ref_expect(f, prefix, name, dx[k]);
  }
  /* beta 1 adds: a second share doubles each gradient */
  for (int k = 0; concat && k < nx; k++) {
    size_t w = t[k]->n / rows;
    double *want = dvec(t[k]->n);

    for (size_t i = 0; i < t[k]->n; i++)
      want[i] = 2.0 * dx[k][i];
    td_backend_copy2d(p.be, dx[k], w, dx[k], w, rows, w, 1.0f);
    ck_assert_int_eq(td_backend_sync(p.be), 0);
    expect_close("concat beta 1", dx[k], want, t[k]->n, 0.0);
    free(want);
  }
  bufs_close(&p);
}

START_TEST(test_joins_match_pytorch) {
  static const char *const ops[] = {"add/", "concat/"};
  ref_file f;
  int cases[2] = {0, 0};

  ref_load_file(&f, "graph.bin");
  for (uint32_t i = 0; i < f.count; i++) {
    const char *name = f.t[i].name;
    size_t nl = strlen(name);
    char prefix[64];

    for (int o = 0; o < 2; o++) {
      if (strncmp(name, ops[o], strlen(ops[o])) != 0 || nl < 2 || strcmp(name + nl - 2, "/y") != 0)
        continue;
      snprintf(prefix, sizeof(prefix), "%.*s", (int)(nl - 1), name);
      ref_join(&f, prefix, o == 1);
      cases[o]++;
    }
  }
  ck_assert_int_ge(cases[0], 2);
  ck_assert_int_ge(cases[1], 3);
  ref_close(&f);
}
END_TEST

/* y = relu(x w^T + b) + x: x's gradient is the dense layer's share plus
 * the add's, summed as the model sums a fan-out. */
START_TEST(test_residual_matches_pytorch) {
  const char *pre = "residual/0/";
  ref_file f;
  bufs p;
  float *x, *w, *b, *dy, *h, *y, *g, *dx, *dw, *db;

  ref_load_file(&f, "graph.bin");
  bufs_open(&p);
  x = ref_dev(&p, &f, pre, "x");
  w = ref_dev(&p, &f, pre, "w");
  b = ref_dev(&p, &f, pre, "b");
  dy = ref_dev(&p, &f, pre, "dy");
  h = dalloc(&p, NULL, 24);
  y = dalloc(&p, NULL, 24);
  g = dalloc(&p, NULL, 24);
  dx = dalloc(&p, NULL, 24);
  dw = dalloc(&p, NULL, 36);
  db = dalloc(&p, NULL, 6);
  td_backend_dense_fwd(p.be, x, w, b, h, 4, 6, 6);
  td_backend_relu_fwd(p.be, h, h, 24);
  td_backend_add(p.be, h, x, y, 24);
  td_backend_relu_bwd(p.be, h, dy, g, 24);
  td_backend_dense_bwd(p.be, x, w, g, dx, dw, db, 4, 6, 6, 0.0f);
  td_backend_add(p.be, dx, dy, dx, 24);
  ck_assert_int_eq(td_backend_sync(p.be), 0);
  ref_expect(&f, pre, "y", y);
  ref_expect(&f, pre, "dx", dx);
  ref_expect(&f, pre, "dw", dw);
  ref_expect(&f, pre, "db", db);
  bufs_close(&p);
  ref_close(&f);
}
END_TEST

static Suite *layers_suite(void) {
  Suite *s = suite_create("layers");
  TCase *tc = tcase_create("ops");

  tcase_add_loop_test(tc, test_conv2d_matches_direct, 0, (int)TD_ARRAY_SIZE(conv_cases));
  tcase_add_loop_test(tc, test_pool2d_matches_direct, 0, 3 * (int)TD_ARRAY_SIZE(pool_cases));
  tcase_add_loop_test(tc, test_pool2d_max_ties, 0, 3);
  tcase_add_test(tc, test_conv2d_deterministic);
  tcase_add_loop_test(tc, test_gelu, 0, 2);
  tcase_add_test(tc, test_softmax_xent_smoothing);
  tcase_add_test(tc, test_batchnorm_forward_and_running_stats);
  tcase_add_test(tc, test_layernorm_forward);
  tcase_add_test(tc, test_dropout_rate_and_scale);
  tcase_add_test(tc, test_dropout_mask_keyed_by_sample);
  tcase_add_test(tc, test_conv2d_geometry);
  tcase_add_test(tc, test_conv2d_bad_calls_latch_einval);
  tcase_add_loop_test(tc, test_conv1d_matches_direct, 0, (int)TD_ARRAY_SIZE(conv1d_cases));
  tcase_add_test(tc, test_conv1d_split_bits);
  tcase_add_test(tc, test_conv1d_geometry);
  tcase_add_test(tc, test_softmax_and_mean_direct);
  suite_add_tcase(s, tc);

  tc = tcase_create("gradients");
  tcase_add_loop_test(tc, test_finite_differences, 0, (int)TD_ARRAY_SIZE(fd_cases));
  tcase_add_loop_test(tc, test_param_grads_accumulate, 0, 5);
  suite_add_tcase(s, tc);

  tc = tcase_create("pytorch");
  tcase_add_loop_test(tc, test_matches_pytorch, 0, (int)TD_ARRAY_SIZE(ref_ops));
  tcase_add_test(tc, test_joins_match_pytorch);
  tcase_add_test(tc, test_residual_matches_pytorch);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(layers_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
