/* Sequence ops on the CPU: the embedding's lookup and scatter, the
 * positional embedding's broadcast add, and the core of multi-head
 * self-attention (the projections around it are dense ops, backend.c).
 *
 * Attention runs a (sample, head) at a time, each product one OpenBLAS call
 * on one thread; the lanes share out whole samples.  Nothing is summed
 * across samples here, and a sample's products have the same shapes in any
 * call, so its bits depend neither on the lane count nor on the batch's
 * split (kernels/backend.h: determinism). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "cpu_ops.h"

/* The row of w an id names, or -1 when it names none. */
static long id_row(float id, size_t vocab) {
  if (!(id >= 0.0f && id < (float)vocab) || id != floorf(id))
    return -1;
  return (long)id;
}

void td__cpu_embedding_fwd(td_backend *be, const float *ids, const float *w, float *y,
                              size_t rows, size_t vocab, size_t dim) {
  for (size_t r = 0; r < rows; r++) {
    long id = id_row(ids[r], vocab);

    if (id < 0)
      memset(y + r * dim, 0, dim * sizeof(float));
    else
      memcpy(y + r * dim, w + (size_t)id * dim, dim * sizeof(float));
  }
}

/* A chain over the rows in order: the same bits however they were cut. */
void td__cpu_embedding_bwd(td_backend *be, const float *ids, const float *dy, float *dw,
                              size_t rows, size_t vocab, size_t dim, float beta) {
  if (beta == 0.0f)
    memset(dw, 0, vocab * dim * sizeof(float));
  else if (beta != 1.0f)
    td__cpu_scale(be, dw, vocab * dim, beta, NULL);
  for (size_t r = 0; r < rows; r++) {
    long id = id_row(ids[r], vocab);

    if (id >= 0)
      td__cpu_add(dw + (size_t)id * dim, dy + r * dim, dim);
  }
}

CPU_CLONES
void td__cpu_add_rows(td_backend *be, const float *x, const float *b, float *y, size_t rows,
                         size_t cols) {
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++)
      y[r * cols + c] = x[r * cols + c] + b[c];
}

typedef struct attn_args {
  const td_attention_desc *a;
  const float *qkv, *p, *dout;
  float *pw, *o, *dqkv, *dp;
  int lanes;
} attn_args;

/* Row i of s as probabilities: softmax over the positions a query sees
 * (all, or with a causal mask those up to its own), 0 past them. */
static void softmax_rows(float *s, int t, bool causal) {
  for (int i = 0; i < t; i++) {
    float *row = s + (size_t)i * t, max, sum = 0.0f;
    int seen = causal ? i + 1 : t;

    max = row[0];
    for (int j = 1; j < seen; j++)
      max = row[j] > max ? row[j] : max;
    for (int j = 0; j < seen; j++) {
      row[j] = expf(row[j] - max);
      sum += row[j];
    }
    for (int j = 0; j < seen; j++)
      row[j] /= sum;
    for (int j = seen; j < t; j++)
      row[j] = 0.0f;
  }
}

static void attn_fwd_lane(void *arg, int lane) {
  const attn_args *g = arg;
  const td_attention_desc *a = g->a;
  const int t = a->t, d = a->d, dh = d / a->heads, ld = 3 * d;
  const float scale = 1.0f / sqrtf((float)dh);

  for (int s = a->n * lane / g->lanes; s < a->n * (lane + 1) / g->lanes; s++) {
    for (int h = 0; h < a->heads; h++) {
      const float *q = g->qkv + (size_t)s * t * ld + h * dh, *k = q + d, *v = q + 2 * d;
      float *p = g->pw + ((size_t)s * a->heads + h) * t * t;

      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, t, dh, scale, q, ld, k, ld, 0.0f,
                  p, t);
      softmax_rows(p, t, a->causal);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t, dh, t, 1.0f, p, t, v, ld, 0.0f,
                  g->o + (size_t)s * t * d + h * dh, d);
    }
  }
}

static void attn_bwd_lane(void *arg, int lane) {
  const attn_args *g = arg;
  const td_attention_desc *a = g->a;
  const int t = a->t, d = a->d, dh = d / a->heads, ld = 3 * d;
  const float scale = 1.0f / sqrtf((float)dh);

  for (int s = a->n * lane / g->lanes; s < a->n * (lane + 1) / g->lanes; s++) {
    float *dp = g->dp + (size_t)s * t * t;

    for (int h = 0; h < a->heads; h++) {
      const size_t at = (size_t)s * t * ld + h * dh;
      const float *q = g->qkv + at, *k = q + d, *v = q + 2 * d;
      const float *p = g->p + ((size_t)s * a->heads + h) * t * t;
      const float *dout = g->dout + (size_t)s * t * d + h * dh;
      float *dq = g->dqkv + at, *dk = dq + d, *dv = dq + 2 * d;

      /* dP = dO V^T, dV = P^T dO */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, t, dh, 1.0f, dout, d, v, ld,
                  0.0f, dp, t);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t, dh, t, 1.0f, p, t, dout, d, 0.0f,
                  dv, ld);
      /* through the softmax: dS = P (dP - rowsum(P dP)); masked entries have P 0 */
      for (int i = 0; i < t; i++) {
        const float *pr = p + (size_t)i * t;
        float *dr = dp + (size_t)i * t, dot = 0.0f;

        for (int j = 0; j < t; j++)
          dot += pr[j] * dr[j];
        for (int j = 0; j < t; j++)
          dr[j] = pr[j] * (dr[j] - dot);
      }
      /* dQ = scale dS K, dK = scale dS^T Q */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t, dh, t, scale, dp, t, k, ld,
                  0.0f, dq, ld);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t, dh, t, scale, dp, t, q, ld, 0.0f,
                  dk, ld);
    }
  }
}

static int sample_lanes(td_backend *be, int n) {
  int lanes = td__cpu_lanes(be);

  return lanes < n ? lanes : n;
}

void td__cpu_attn_fwd(td_backend *be, const td_attention_desc *a, const float *qkv, float *p,
                         float *o) {
  attn_args g = {.a = a, .qkv = qkv, .pw = p, .o = o, .lanes = sample_lanes(be, a->n)};

  td__cpu_parallel(be, g.lanes, attn_fwd_lane, &g);
}

void td__cpu_attn_bwd(td_backend *be, const td_attention_desc *a, const float *qkv,
                         const float *p, const float *dout, float *dqkv, float *dp) {
  attn_args g = {.a = a, .qkv = qkv, .p = p, .dout = dout, .dqkv = dqkv, .dp = dp,
                 .lanes = sample_lanes(be, a->n)};

  td__cpu_parallel(be, g.lanes, attn_bwd_lane, &g);
}
