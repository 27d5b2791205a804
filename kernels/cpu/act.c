/* GELU, sigmoid, tanh, softmax over a feature axis, dropout, and the small
 * vector loops the other CPU ops share. */
#include <math.h>

#include "cpu_ops.h"
#include "dropout_mask.h"

#define GELU_RSQRT2 0.70710678118654752f      /* 1 / sqrt(2) */
#define GELU_RSQRT2PI 0.39894228040143268f    /* 1 / sqrt(2 pi) */
#define GELU_SQRT2_PI 0.79788456080286536f    /* sqrt(2 / pi) */
#define GELU_CUBIC 0.044715f

/* GELU calls libm's erff/expf (or tanhf) per element, the transformer's
 * costliest element-wise op: the lanes share the elements out, each
 * element's arithmetic its own, so the lane count changes no bit. */
#define GELU_MIN_PARALLEL (1 << 12) /* elements below which one lane is faster */

typedef struct gelu_args {
  td_gelu_kind kind;
  const float *x, *dy;
  float *y; /* fwd: y; bwd: dx */
  size_t n;
  int lanes;
} gelu_args;

static void gelu_fwd_lane(void *arg, int lane) {
  const gelu_args *a = arg;
  const float *x = a->x;
  float *y = a->y;
  size_t i0, i1;

  td__cpu_share(a->n, 16, lane, a->lanes, &i0, &i1);
  if (a->kind == TD_GELU_TANH) {
    for (size_t i = i0; i < i1; i++) {
      float v = x[i];
      y[i] = 0.5f * v * (1.0f + tanhf(GELU_SQRT2_PI * (v + GELU_CUBIC * v * v * v)));
    }
    return;
  }
  for (size_t i = i0; i < i1; i++)
    y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * GELU_RSQRT2));
}

static void gelu_bwd_lane(void *arg, int lane) {
  const gelu_args *a = arg;
  const float *x = a->x, *dy = a->dy;
  float *dx = a->y;
  size_t i0, i1;

  td__cpu_share(a->n, 16, lane, a->lanes, &i0, &i1);
  if (a->kind == TD_GELU_TANH) {
    for (size_t i = i0; i < i1; i++) {
      float v = x[i], t = tanhf(GELU_SQRT2_PI * (v + GELU_CUBIC * v * v * v));
      float du = GELU_SQRT2_PI * (1.0f + 3.0f * GELU_CUBIC * v * v);
      dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
    return;
  }
  for (size_t i = i0; i < i1; i++) {
    float v = x[i];
    float cdf = 0.5f * (1.0f + erff(v * GELU_RSQRT2)), pdf = GELU_RSQRT2PI * expf(-0.5f * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
}

void td__cpu_gelu_fwd(td_backend *be, td_gelu_kind kind, const float *x, float *y, size_t n) {
  gelu_args a = {.kind = kind, .x = x, .y = y, .n = n,
                 .lanes = n < GELU_MIN_PARALLEL ? 1 : td__cpu_lanes(be)};

  td__cpu_parallel(be, a.lanes, gelu_fwd_lane, &a);
}

void td__cpu_gelu_bwd(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                      float *dx, size_t n) {
  gelu_args a = {.kind = kind, .x = x, .dy = dy, .y = dx, .n = n,
                 .lanes = n < GELU_MIN_PARALLEL ? 1 : td__cpu_lanes(be)};

  td__cpu_parallel(be, a.lanes, gelu_bwd_lane, &a);
}

void td__cpu_dropout(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                     uint64_t key, uint64_t sample, uint32_t threshold, float scale) {
  for (size_t r = 0; r < rows; r++) {
    uint64_t row = td__dropout_row(key, sample + r);
    for (size_t c = 0; c < cols; c++) {
      size_t i = r * cols + c;
      y[i] = td__dropout_keep(row, c, threshold) ? x[i] * scale : 0.0f;
    }
  }
}

CPU_CLONES
void td__cpu_add_scalar(float *restrict x, float v, size_t n) {
  for (size_t i = 0; i < n; i++)
    x[i] += v;
}

CPU_CLONES
void td__cpu_add(float *restrict x, const float *restrict y, size_t n) {
  for (size_t i = 0; i < n; i++)
    x[i] += y[i];
}

/* Sixteen running sums, so the loop vectorises without reassociating. */
CPU_CLONES
float td__cpu_sum(const float *restrict x, size_t n) {
  float acc[16] = {0}, s = 0.0f;
  size_t i = 0;

  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; j++)
      acc[j] += x[i + j];
  for (; i < n; i++)
    acc[i % 16] += x[i];
  for (int j = 0; j < 16; j++)
    s += acc[j];
  return s;
}

void td__cpu_act_fwd(td_backend *be, td_act_kind kind, const float *x, float *y, size_t n) {
  if (kind == TD_ACT_TANH) {
    for (size_t i = 0; i < n; i++)
      y[i] = tanhf(x[i]);
    return;
  }
  for (size_t i = 0; i < n; i++)
    y[i] = 1.0f / (1.0f + expf(-x[i]));
}

CPU_CLONES
void td__cpu_act_bwd(td_backend *be, td_act_kind kind, const float *y, const float *dy,
                     float *dx, size_t n) {
  if (kind == TD_ACT_TANH) {
    for (size_t i = 0; i < n; i++)
      dx[i] = dy[i] * (1.0f - y[i] * y[i]);
    return;
  }
  for (size_t i = 0; i < n; i++)
    dx[i] = dy[i] * y[i] * (1.0f - y[i]);
}

/* One (outer, inner) line at a time, dim elements `inner` apart: the max,
 * the exponentials (written to y, so x == y works), their sum in order. */
void td__cpu_softmax_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t dim,
                         size_t inner) {
  for (size_t o = 0; o < outer; o++) {
    for (size_t i = 0; i < inner; i++) {
      const float *xl = x + o * dim * inner + i;
      float *yl = y + o * dim * inner + i;
      float max = xl[0], sum = 0.0f;

      for (size_t d = 1; d < dim; d++)
        max = xl[d * inner] > max ? xl[d * inner] : max;
      for (size_t d = 0; d < dim; d++) {
        float e = expf(xl[d * inner] - max);
        yl[d * inner] = e;
        sum += e;
      }
      for (size_t d = 0; d < dim; d++)
        yl[d * inner] /= sum;
    }
  }
}

/* The dot product of the line first, so dy == dx works. */
void td__cpu_softmax_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t outer, size_t dim, size_t inner) {
  for (size_t o = 0; o < outer; o++) {
    for (size_t i = 0; i < inner; i++) {
      size_t base = o * dim * inner + i;
      float dot = 0.0f;

      for (size_t d = 0; d < dim; d++)
        dot += dy[base + d * inner] * y[base + d * inner];
      for (size_t d = 0; d < dim; d++)
        dx[base + d * inner] = y[base + d * inner] * (dy[base + d * inner] - dot);
    }
  }
}
