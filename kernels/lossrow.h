/* One row of a loss: its value, metrics and gradient, written once for
 * both backends (kernels/cpu/loss.c calls it in a loop over rows,
 * kernels/cuda/loss.cu from a thread per row), so that the two compute the
 * same operations in the same order and agree bit for bit (--fmad=false,
 * -ffp-contract=off).
 *
 * A row is `width` logits z and its target: a class id y (cross_entropy) or
 * width floats t.  The per-sample loss is PyTorch's with reduction 'mean'
 * over the row's elements (CrossEntropyLoss sums over classes; BCEWithLogits,
 * MSE and L1 average over them), so that the batch's mean over samples is
 * PyTorch's default reduction.
 */
#ifndef TD_LOSSROW_H
#define TD_LOSSROW_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "loss.h"

#ifdef __CUDACC__
#define TD_LOSS_FN __host__ __device__ static inline
#else
#define TD_LOSS_FN static inline
#endif

/* What a row adds to a pass's sums. */
typedef struct td_loss_row {
  float loss;
  float correct; /* 1 if right: the first arg-max is the class (the target's first
                    arg-max for soft targets); for binary_cross_entropy every output's
                    sign agrees with its target >= 0.5 (exact match) */
  float topk;    /* 1 if the class is among the k largest logits (ties: lower index first) */
  float abserr;  /* mean |z - t| over the row (mse, mae) */
} td_loss_row;

typedef struct td_loss_cfg {
  td_loss_kind kind;
  int soft;          /* cross_entropy: targets are floats [rows, width] */
  float smoothing;   /* cross_entropy over class ids: PyTorch's label_smoothing */
  float grad_scale;  /* the gradient is d loss / d z times it */
  uint32_t top_k;    /* 0: topk stays 0 */
} td_loss_cfg;

/* The first arg-max of x[0..n). */
TD_LOSS_FN size_t td__argmax(const float *x, size_t n) {
  size_t best = 0;

  for (size_t c = 1; c < n; c++)
    if (x[c] > x[best])
      best = c;
  return best;
}

/* Whether class y is among the k largest of z (a logit equal to z[y] at a
 * lower index ranks before it, as the first arg-max does). */
TD_LOSS_FN float td__in_top_k(const float *z, size_t n, size_t y, uint32_t k) {
  size_t above = 0;

  for (size_t c = 0; c < n; c++)
    above += z[c] > z[y] || (z[c] == z[y] && c < y);
  return above < k ? 1.0f : 0.0f;
}

/* Row r; d (may be NULL) gets the gradient.  A class id out of range
 * (which the caller checks against) adds nothing and gets a zero gradient,
 * so nothing is read out of bounds. */
TD_LOSS_FN td_loss_row td__loss_row(const td_loss_cfg *cfg, const float *z, size_t w,
                                    const void *targets, size_t r, float *d) {
  td_loss_row out = {0.0f, 0.0f, 0.0f, 0.0f};
  const float g = cfg->grad_scale, inv_w = 1.0f / (float)w;

  if (cfg->kind == TD_LOSS_CROSS_ENTROPY) {
    const float *t = cfg->soft ? (const float *)targets + r * w : NULL;
    size_t best = td__argmax(z, w), y;
    float max = z[best], sum = 0.0f, zsum = 0.0f, tsum = 0.0f, tz = 0.0f;

    for (size_t c = 0; c < w; c++) {
      sum += expf(z[c] - max);
      zsum += z[c];
    }
    if (t != NULL) {
      /* -sum t log softmax = sum t (lse - z) */
      for (size_t c = 0; c < w; c++) {
        tsum += t[c];
        tz += t[c] * z[c];
      }
      y = td__argmax(t, w);
      out.loss = (logf(sum) + max) * tsum - tz;
      if (d != NULL)
        for (size_t c = 0; c < w; c++)
          d[c] = (expf(z[c] - max) / sum * tsum - t[c]) * g;
    } else {
      const float s = cfg->smoothing, off = s / (float)w, on = 1.0f - s + off;
      int32_t label = ((const int32_t *)targets)[r];

      if (label < 0 || (size_t)label >= w) {
        if (d != NULL)
          for (size_t c = 0; c < w; c++)
            d[c] = 0.0f;
        return out;
      }
      y = (size_t)label;
      out.loss = logf(sum) + max - (1.0f - s) * z[y] - s * zsum / (float)w;
      if (d != NULL) {
        float inv = g / sum;

        for (size_t c = 0; c < w; c++)
          d[c] = expf(z[c] - max) * inv - off * g;
        d[y] -= (on - off) * g;
      }
    }
    out.correct = best == y ? 1.0f : 0.0f;
    if (cfg->top_k > 0)
      out.topk = td__in_top_k(z, w, y, cfg->top_k);
    return out;
  }

  {
    const float *t = (const float *)targets + r * w;
    float loss = 0.0f, abserr = 0.0f, right = 1.0f;

    for (size_t c = 0; c < w; c++) {
      float x = z[c], diff = x - t[c];

      abserr += fabsf(diff);
      switch (cfg->kind) {
      case TD_LOSS_BCE: {
        /* max(x, 0) - x t + log(1 + exp(-|x|)): no overflow for any x */
        float e = expf(-fabsf(x));

        loss += (x > 0.0f ? x : 0.0f) - x * t[c] + log1pf(e);
        if ((x > 0.0f) != (t[c] >= 0.5f))
          right = 0.0f;
        if (d != NULL)
          d[c] = ((x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e)) - t[c]) * inv_w * g;
        break;
      }
      case TD_LOSS_MSE:
        loss += diff * diff;
        if (d != NULL)
          d[c] = 2.0f * diff * inv_w * g;
        break;
      default: /* TD_LOSS_MAE; sign(0) = 0, as torch.sign */
        loss += fabsf(diff);
        if (d != NULL)
          d[c] = (diff > 0.0f ? 1.0f : diff < 0.0f ? -1.0f : 0.0f) * inv_w * g;
        break;
      }
    }
    out.loss = loss * inv_w;
    out.abserr = abserr * inv_w;
    out.correct = cfg->kind == TD_LOSS_BCE ? right : 0.0f;
  }
  return out;
}

#endif
