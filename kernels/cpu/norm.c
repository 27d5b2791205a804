/* BatchNorm2d and LayerNorm on the CPU.  Statistics are summed in double
 * (two passes: mean, then squared deviations), as befits the reference. */
#include <math.h>

#include "cpu_ops.h"

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

void td__cpu_batchnorm2d_fwd(td_backend *be, const td_batchnorm_desc *d, bool training,
                             const float *x, float *y, const float *gamma, const float *beta,
                             float *running_mean, float *running_var, float *save_mean,
                             float *save_invstd) {
  const size_t hw = (size_t)d->hw, stride = (size_t)d->c * hw, count = (size_t)d->n * hw;
  const double mom = d->momentum;

  for (int ch = 0; ch < d->c; ch++) {
    const float *xc = x + ch * hw;
    float *yc = y + ch * hw;
    double mean, var;
    float m, inv, g, b;

    if (training) {
      moments(xc, (size_t)d->n, hw, stride, &mean, &var);
      save_mean[ch] = (float)mean;
      save_invstd[ch] = (float)(1.0 / sqrt(var + d->eps));
      running_mean[ch] = (float)((1.0 - mom) * running_mean[ch] + mom * mean);
      running_var[ch] = (float)((1.0 - mom) * running_var[ch] +
                                mom * var * (double)count / (double)(count - 1));
      m = save_mean[ch];
      inv = save_invstd[ch];
    } else {
      m = running_mean[ch];
      inv = (float)(1.0 / sqrt((double)running_var[ch] + d->eps));
    }
    g = gamma[ch] * inv;
    b = beta[ch];
    for (int n = 0; n < d->n; n++)
      for (size_t i = 0; i < hw; i++)
        yc[n * stride + i] = (xc[n * stride + i] - m) * g + b;
  }
}

void td__cpu_batchnorm2d_bwd(td_backend *be, const td_batchnorm_desc *d, const float *x,
                             const float *dy, float *dx, const float *gamma,
                             const float *save_mean, const float *save_invstd, float beta,
                             float *dgamma, float *dbeta) {
  const size_t hw = (size_t)d->hw, stride = (size_t)d->c * hw;
  const double count = (double)d->n * d->hw;

  for (int ch = 0; ch < d->c; ch++) {
    const float *xc = x + ch * hw, *dyc = dy + ch * hw;
    float m = save_mean[ch], inv = save_invstd[ch];
    double sdy, sdyx;
    float k, a, b;

    grad_sums(xc, dyc, NULL, (size_t)d->n, hw, stride, m, inv, &sdy, &sdyx);
    dgamma[ch] = accumulate(dgamma[ch], beta, sdyx);
    dbeta[ch] = accumulate(dbeta[ch], beta, sdy);
    if (dx == NULL)
      continue;
    /* dx = g inv (dy - mean(dy) - xhat mean(dy xhat)) */
    k = gamma[ch] * inv;
    a = (float)(sdy / count);
    b = (float)(sdyx / count);
    for (int n = 0; n < d->n; n++) {
      for (size_t i = 0; i < hw; i++) {
        size_t at = n * stride + i;
        dx[ch * hw + at] = k * (dyc[at] - a - (xc[at] - m) * inv * b);
      }
    }
  }
}

void td__cpu_layernorm_fwd(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                           const float *gamma, const float *beta, float eps, float *save_mean,
                           float *save_invstd) {
  for (size_t r = 0; r < rows; r++) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    double mean, var;
    float m, inv;

    moments(xr, 1, cols, cols, &mean, &var);
    m = save_mean[r] = (float)mean;
    inv = save_invstd[r] = (float)(1.0 / sqrt(var + eps));
    for (size_t c = 0; c < cols; c++)
      yr[c] = (xr[c] - m) * inv * gamma[c] + beta[c];
  }
}

void td__cpu_layernorm_bwd(td_backend *be, const float *x, const float *dy, float *dx,
                           size_t rows, size_t cols, const float *gamma,
                           const float *save_mean, const float *save_invstd, float beta,
                           float *dgamma, float *dbeta) {
  for (size_t c = 0; c < cols; c++) {
    dgamma[c] = beta == 0.0f ? 0.0f : beta * dgamma[c];
    dbeta[c] = beta == 0.0f ? 0.0f : beta * dbeta[c];
  }
  for (size_t r = 0; r < rows; r++) {
    const float *xr = x + r * cols, *dyr = dy + r * cols;
    float m = save_mean[r], inv = save_invstd[r], a, b;
    double sdy, sdyx;

    for (size_t c = 0; c < cols; c++) {
      dgamma[c] += dyr[c] * (xr[c] - m) * inv;
      dbeta[c] += dyr[c];
    }
    if (dx == NULL)
      continue;
    /* with gdy = dy g: dx = inv (gdy - mean(gdy) - xhat mean(gdy xhat)) */
    grad_sums(xr, dyr, gamma, 1, cols, cols, m, inv, &sdy, &sdyx);
    a = (float)(sdy / (double)cols);
    b = (float)(sdyx / (double)cols);
    for (size_t c = 0; c < cols; c++)
      dx[r * cols + c] = inv * (dyr[c] * gamma[c] - a - (xr[c] - m) * inv * b);
  }
}
