/* Optimisers, gradient clipping, the loss scaler's finite check and
 * half-precision storage on the CPU.  The update loops follow torch.optim's
 * order of operations, so the rounding matches PyTorch's closely. */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"
#include "half.h"

CPU_CLONES
void td__cpu_sgd_momentum(td_backend *be, float *restrict p, const float *restrict g,
                          float *restrict buf, size_t n, float lr, float momentum,
                          float dampening, float weight_decay, bool nesterov, bool first) {
  const float keep = 1.0f - dampening;

  if (momentum == 0.0f) {
    for (size_t i = 0; i < n; i++)
      p[i] -= lr * (g[i] + weight_decay * p[i]);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    float d = g[i] + weight_decay * p[i];
    float b = first ? d : momentum * buf[i] + keep * d;
    buf[i] = b;
    p[i] -= lr * (nesterov ? d + momentum * b : b);
  }
}

CPU_CLONES
void td__cpu_adamw(td_backend *be, float *restrict p, const float *restrict g,
                   float *restrict m, float *restrict v, size_t n, float beta1, float beta2,
                   float eps, float decay, float step_size, float bc2_sqrt) {
  const float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;

  for (size_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = beta1 * m[i] + one_b1 * gi;
    float vi = beta2 * v[i] + one_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
  }
}

/* Eight double lanes: vectorised, and the same sum on every run. */
#define SUMSQ_LANES 8

CPU_CLONES
void td__cpu_sumsq(td_backend *be, const float *restrict x, size_t n, float *restrict acc) {
  double lane[SUMSQ_LANES] = {0}, s = 0.0;
  size_t i = 0;

  for (; i + SUMSQ_LANES <= n; i += SUMSQ_LANES)
    for (size_t l = 0; l < SUMSQ_LANES; l++)
      lane[l] += (double)x[i + l] * x[i + l];
  for (; i < n; i++)
    s += (double)x[i] * x[i];
  for (size_t l = 0; l < SUMSQ_LANES; l++)
    s += lane[l];
  acc[0] = (float)((double)acc[0] + s);
}

void td__cpu_clip_coef(td_backend *be, float *norm, float max_norm) {
  float c = max_norm / (sqrtf(norm[0]) + 1e-6f);

  norm[1] = c > 1.0f ? 1.0f : c; /* a NaN norm stays NaN, as in PyTorch */
}

CPU_CLONES
void td__cpu_scale(td_backend *be, float *restrict x, size_t n, float alpha,
                   const float *restrict coef) {
  const float c = coef != NULL ? alpha * coef[0] : alpha;

  for (size_t i = 0; i < n; i++)
    x[i] *= c;
}

CPU_CLONES
void td__cpu_check_finite(td_backend *be, const float *restrict x, size_t n,
                          float *restrict flag) {
  uint32_t bad = 0;

  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], sizeof(u));
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  if (bad)
    flag[0] = 1.0f;
}

CPU_CLONES
void td__cpu_to_half(td_backend *be, td_half_kind kind, const float *restrict x,
                     uint16_t *restrict y, size_t n) {
  if (kind == TD_HALF_BF16) {
    for (size_t i = 0; i < n; i++)
      y[i] = td_f32_to_bf16(x[i]);
    return;
  }
  for (size_t i = 0; i < n; i++)
    y[i] = td_f32_to_f16(x[i]);
}

CPU_CLONES
void td__cpu_from_half(td_backend *be, td_half_kind kind, const uint16_t *restrict x,
                       float *restrict y, size_t n) {
  if (kind == TD_HALF_BF16) {
    for (size_t i = 0; i < n; i++)
      y[i] = td_bf16_to_f32(x[i]);
    return;
  }
  for (size_t i = 0; i < n; i++)
    y[i] = td_f16_to_f32(x[i]);
}

CPU_CLONES
void td__cpu_round_half(td_backend *be, td_half_kind kind, float *x, size_t n) {
  if (kind == TD_HALF_BF16) {
    for (size_t i = 0; i < n; i++)
      x[i] = td_bf16_to_f32(td_f32_to_bf16(x[i]));
    return;
  }
  for (size_t i = 0; i < n; i++)
    x[i] = td_f16_to_f32(td_f32_to_f16(x[i]));
}
