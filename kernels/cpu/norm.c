/* BatchNorm2d and LayerNorm on the CPU.  Statistics are summed in double
 * (two passes: mean, then squared deviations), as befits the reference.
 * The lanes share out whole sums, never parts of one: batchnorm's channels,
 * layernorm's rows (and for its dgamma/dbeta, its columns, each summed over
 * the rows in order), so every output has the same additions in the same
 * order whatever the lane count. */
#include <math.h>

#include "cpu_ops.h"

#define NORM_MIN_PARALLEL (1 << 13) /* elements below which one lane is faster */

static int norm_lanes(td_backend *be, size_t elems, size_t items) {
  int lanes = elems < NORM_MIN_PARALLEL ? 1 : td__cpu_lanes(be);

  return (size_t)lanes > items ? (int)items : lanes;
}

/* Mean and biased variance of count values spaced stride apart in runs of
 * run (batchnorm: hw values per sample, c*hw apart; layernorm: one run). */
static void moments(const float *x, size_t runs, size_t run, size_t stride, double *mean,
                    double *var) {
  double s = 0.0, q = 0.0, m;

  for (size_t r = 0; r < runs; r++)
    for (size_t i = 0; i < run; i++)
      s += x[r * stride + i];
  m = s / (double)(runs * run);
  for (size_t r = 0; r < runs; r++) {
    for (size_t i = 0; i < run; i++) {
      double dv = x[r * stride + i] - m;
      q += dv * dv;
    }
  }
  *mean = m;
  *var = q / (double)(runs * run);
}

/* sum(dy) and sum(dy * xhat) over the same layout, times the optional scale g[i]. */
static void grad_sums(const float *x, const float *dy, const float *g, size_t runs, size_t run,
                      size_t stride, float mean, float invstd, double *sum_dy,
                      double *sum_dy_xhat) {
  double a = 0.0, b = 0.0;

  for (size_t r = 0; r < runs; r++) {
    for (size_t i = 0; i < run; i++) {
      size_t at = r * stride + i;
      double gdy = g != NULL ? (double)dy[at] * g[i] : dy[at];
      a += gdy;
      b += gdy * ((x[at] - mean) * invstd);
    }
  }
  *sum_dy = a;
  *sum_dy_xhat = b;
}

static float accumulate(float old, float beta, double add) {
  return (float)(beta == 0.0f ? add : (double)beta * old + add);
}

typedef struct norm_args {
  const td_batchnorm_desc *d;
  bool training;
  const float *x, *dy, *gamma, *beta, *save_mean, *save_invstd;
  float *y, *dx, *running_mean, *running_var, *out_mean, *out_invstd, *dgamma, *dbeta;
  float acc; /* bwd: beta, how much of the old dgamma/dbeta stays */
  size_t rows, cols;
  float eps;
  int lanes;
} norm_args;

static void bn_fwd_lane(void *arg, int lane) {
  const norm_args *a = arg;
  const td_batchnorm_desc *d = a->d;
  const size_t hw = (size_t)d->hw, stride = (size_t)d->c * hw, count = (size_t)d->n * hw;
  const double mom = d->momentum;
  size_t c0, c1;

  td__cpu_share((size_t)d->c, 1, lane, a->lanes, &c0, &c1);
  for (size_t ch = c0; ch < c1; ch++) {
    const float *xc = a->x + ch * hw;
    float *yc = a->y + ch * hw;
    double mean, var;
    float m, inv, g, b;

    if (a->training) {
      moments(xc, (size_t)d->n, hw, stride, &mean, &var);
      a->out_mean[ch] = (float)mean;
      a->out_invstd[ch] = (float)(1.0 / sqrt(var + d->eps));
      a->running_mean[ch] = (float)((1.0 - mom) * a->running_mean[ch] + mom * mean);
      a->running_var[ch] = (float)((1.0 - mom) * a->running_var[ch] +
                                   mom * var * (double)count / (double)(count - 1));
      m = a->out_mean[ch];
      inv = a->out_invstd[ch];
    } else {
      m = a->running_mean[ch];
      inv = (float)(1.0 / sqrt((double)a->running_var[ch] + d->eps));
    }
    g = a->gamma[ch] * inv;
    b = a->beta[ch];
    for (int n = 0; n < d->n; n++)
      for (size_t i = 0; i < hw; i++)
        yc[n * stride + i] = (xc[n * stride + i] - m) * g + b;
  }
}

void td__cpu_batchnorm2d_fwd(td_backend *be, const td_batchnorm_desc *d, bool training,
                             const float *x, float *y, const float *gamma, const float *beta,
                             float *running_mean, float *running_var, float *save_mean,
                             float *save_invstd) {
  norm_args a = {.d = d, .training = training, .x = x, .y = y, .gamma = gamma, .beta = beta,
                 .running_mean = running_mean, .running_var = running_var,
                 .out_mean = save_mean, .out_invstd = save_invstd,
                 .lanes = norm_lanes(be, (size_t)d->n * d->c * d->hw, (size_t)d->c)};

  td__cpu_parallel(be, a.lanes, bn_fwd_lane, &a);
}

static void bn_bwd_lane(void *arg, int lane) {
  const norm_args *a = arg;
  const td_batchnorm_desc *d = a->d;
  const size_t hw = (size_t)d->hw, stride = (size_t)d->c * hw;
  const double count = (double)d->n * d->hw;
  size_t c0, c1;

  td__cpu_share((size_t)d->c, 1, lane, a->lanes, &c0, &c1);
  for (size_t ch = c0; ch < c1; ch++) {
    const float *xc = a->x + ch * hw, *dyc = a->dy + ch * hw;
    float m = a->save_mean[ch], inv = a->save_invstd[ch];
    double sdy, sdyx;
    float k, ka, kb;

    grad_sums(xc, dyc, NULL, (size_t)d->n, hw, stride, m, inv, &sdy, &sdyx);
    a->dgamma[ch] = accumulate(a->dgamma[ch], a->acc, sdyx);
    a->dbeta[ch] = accumulate(a->dbeta[ch], a->acc, sdy);
    if (a->dx == NULL)
      continue;
    /* dx = g inv (dy - mean(dy) - xhat mean(dy xhat)) */
    k = a->gamma[ch] * inv;
    ka = (float)(sdy / count);
    kb = (float)(sdyx / count);
    for (int n = 0; n < d->n; n++) {
      for (size_t i = 0; i < hw; i++) {
        size_t at = n * stride + i;
        a->dx[ch * hw + at] = k * (dyc[at] - ka - (xc[at] - m) * inv * kb);
      }
    }
  }
}

void td__cpu_batchnorm2d_bwd(td_backend *be, const td_batchnorm_desc *d, const float *x,
                             const float *dy, float *dx, const float *gamma,
                             const float *save_mean, const float *save_invstd, float beta,
                             float *dgamma, float *dbeta) {
  norm_args a = {.d = d, .x = x, .dy = dy, .dx = dx, .gamma = gamma, .save_mean = save_mean,
                 .save_invstd = save_invstd, .acc = beta, .dgamma = dgamma, .dbeta = dbeta,
                 .lanes = norm_lanes(be, (size_t)d->n * d->c * d->hw, (size_t)d->c)};

  td__cpu_parallel(be, a.lanes, bn_bwd_lane, &a);
}

static void ln_fwd_lane(void *arg, int lane) {
  const norm_args *a = arg;
  const size_t cols = a->cols;
  size_t r0, r1;

  td__cpu_share(a->rows, 1, lane, a->lanes, &r0, &r1);
  for (size_t r = r0; r < r1; r++) {
    const float *xr = a->x + r * cols;
    float *yr = a->y + r * cols;
    double mean, var;
    float m, inv;

    moments(xr, 1, cols, cols, &mean, &var);
    m = a->out_mean[r] = (float)mean;
    inv = a->out_invstd[r] = (float)(1.0 / sqrt(var + a->eps));
    for (size_t c = 0; c < cols; c++)
      yr[c] = (xr[c] - m) * inv * a->gamma[c] + a->beta[c];
  }
}

void td__cpu_layernorm_fwd(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                           const float *gamma, const float *beta, float eps, float *save_mean,
                           float *save_invstd) {
  norm_args a = {.x = x, .y = y, .rows = rows, .cols = cols, .gamma = gamma, .beta = beta,
                 .eps = eps, .out_mean = save_mean, .out_invstd = save_invstd,
                 .lanes = norm_lanes(be, rows * cols, rows)};

  td__cpu_parallel(be, a.lanes, ln_fwd_lane, &a);
}

/* A lane sums dgamma/dbeta for its columns over all rows in row order, and
 * writes dx for its rows: the two shares touch different outputs. */
static void ln_bwd_lane(void *arg, int lane) {
  const norm_args *a = arg;
  const size_t rows = a->rows, cols = a->cols;
  const float *x = a->x, *dy = a->dy;
  float *dgamma = a->dgamma, *dbeta = a->dbeta;
  size_t c0, c1, r0, r1;

  td__cpu_share(cols, 16, lane, a->lanes, &c0, &c1);
  for (size_t c = c0; c < c1; c++) {
    dgamma[c] = a->acc == 0.0f ? 0.0f : a->acc * dgamma[c];
    dbeta[c] = a->acc == 0.0f ? 0.0f : a->acc * dbeta[c];
  }
  for (size_t r = 0; r < rows; r++) {
    const float *xr = x + r * cols, *dyr = dy + r * cols;
    float m = a->save_mean[r], inv = a->save_invstd[r];

    for (size_t c = c0; c < c1; c++) {
      dgamma[c] += dyr[c] * (xr[c] - m) * inv;
      dbeta[c] += dyr[c];
    }
  }
  if (a->dx == NULL)
    return;
  td__cpu_share(rows, 1, lane, a->lanes, &r0, &r1);
  for (size_t r = r0; r < r1; r++) {
    const float *xr = x + r * cols, *dyr = dy + r * cols;
    float m = a->save_mean[r], inv = a->save_invstd[r], ka, kb;
    double sdy, sdyx;

    /* with gdy = dy g: dx = inv (gdy - mean(gdy) - xhat mean(gdy xhat)) */
    grad_sums(xr, dyr, a->gamma, 1, cols, cols, m, inv, &sdy, &sdyx);
    ka = (float)(sdy / (double)cols);
    kb = (float)(sdyx / (double)cols);
    for (size_t c = 0; c < cols; c++)
      a->dx[r * cols + c] = inv * (dyr[c] * a->gamma[c] - ka - (xr[c] - m) * inv * kb);
  }
}

void td__cpu_layernorm_bwd(td_backend *be, const float *x, const float *dy, float *dx,
                           size_t rows, size_t cols, const float *gamma,
                           const float *save_mean, const float *save_invstd, float beta,
                           float *dgamma, float *dbeta) {
  norm_args a = {.x = x, .dy = dy, .dx = dx, .rows = rows, .cols = cols, .gamma = gamma,
                 .save_mean = save_mean, .save_invstd = save_invstd, .acc = beta,
                 .dgamma = dgamma, .dbeta = dbeta,
                 .lanes = norm_lanes(be, rows * cols, rows < cols ? rows : cols)};

  td__cpu_parallel(be, a.lanes, ln_bwd_lane, &a);
}
