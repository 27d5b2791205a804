/* Sequence ops.  The embedding's gradient is a chain over the rows per
 * element, one thread per feature walking the rows in order (no atomics),
 * as on the CPU (kernels/cpu/seq.c).  Attention's products are cuBLAS
 * strided-batched GEMMs, one call per head over a block of TD_BLOCK_ROWS
 * samples at most, so every call a split micro-batch makes is one the
 * whole batch makes too (its bits do not depend on the split); the softmax
 * and its backward take a warp per row, reduced in a fixed order. */
#include <math.h>

#include "seq.cuh"

namespace {

__device__ inline long id_row(float id, size_t vocab) {
  if (!(id >= 0.0f && id < (float)vocab) || id != floorf(id))
    return -1;
  return (long)id;
}

__global__ void embedding_fwd_kernel(const float *ids, const float *w, float *y, size_t rows,
                                     size_t vocab, size_t dim) {
  TD_GRID_STRIDE(i, rows * dim) {
    long id = id_row(ids[i / dim], vocab);

    y[i] = id < 0 ? 0.0f : w[(size_t)id * dim + i % dim];
  }
}

/* One thread per feature c: dw[:, c] scaled by beta, then each row added
 * in order. */
__global__ void embedding_bwd_kernel(const float *ids, const float *dy, float *dw, size_t rows,
                                     size_t vocab, size_t dim, float beta) {
  TD_GRID_STRIDE(c, dim) {
    for (size_t v = 0; v < vocab; v++)
      dw[v * dim + c] = beta == 0.0f ? 0.0f : beta * dw[v * dim + c];
    for (size_t r = 0; r < rows; r++) {
      long id = id_row(ids[r], vocab);

      if (id >= 0)
        dw[(size_t)id * dim + c] += dy[r * dim + c];
    }
  }
}

__global__ void add_rows_kernel(const float *x, const float *b, float *y, size_t rows,
                                size_t cols) {
  TD_GRID_STRIDE(i, rows * cols) { y[i] = x[i] + b[i % cols]; }
}

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

constexpr int kWarpsPerBlock = kTdThreads / 32;

/* One head's rows of t scores, a warp each, into probabilities: t rows a
 * sample, `stride` floats apart per sample (heads * t * t).  A query (row
 * r % t) sees all positions, or (causal) those up to its own, 0 beyond. */
__global__ void softmax_rows_kernel(float *s, size_t stride, size_t rows, int t, bool causal) {
  const unsigned lane = threadIdx.x & 31;

  for (size_t r = (size_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5); r < rows;
       r += (size_t)gridDim.x * kWarpsPerBlock) {
    float *row = s + (r / t) * stride + (r % t) * t, max = -INFINITY, sum = 0.0f;
    int seen = causal ? (int)(r % t) + 1 : t;

    for (int j = lane; j < seen; j += 32)
      max = fmaxf(max, row[j]);
    max = warp_max(max);
    for (int j = lane; j < seen; j += 32) {
      float e = expf(row[j] - max);
      row[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    __syncwarp();
    for (int j = lane; j < t; j += 32)
      row[j] = j < seen ? row[j] / sum : 0.0f;
  }
}

/* Through the softmax, in place: dS = P (dP - rowsum(P dP)).  p rows of
 * one head, `stride` floats apart per sample (heads * t * t), t rows each. */
__global__ void softmax_bwd_kernel(const float *p, size_t stride, float *dp, size_t rows,
                                   int t) {
  const unsigned lane = threadIdx.x & 31;

  for (size_t r = (size_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5); r < rows;
       r += (size_t)gridDim.x * kWarpsPerBlock) {
    const float *pr = p + (r / t) * stride + (r % t) * t;
    float *dr = dp + r * t, dot = 0.0f;

    for (int j = lane; j < t; j += 32)
      dot += pr[j] * dr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < t; j += 32)
      dr[j] = pr[j] * (dr[j] - dot);
  }
}

unsigned warp_blocks(size_t rows) {
  size_t b = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return (unsigned)(b == 0 ? 1 : b < kTdMaxBlocks ? b : kTdMaxBlocks);
}

/* Row-major C_i = alpha op(A_i) op(B_i) + beta C_i for `batch` matrices
 * sa, sb, sc floats apart: column-major with the operands swapped, as
 * cuda_sgemm does. */
int batched(td_backend *be, bool ta, bool tb, int m, int n, int k, float alpha, const float *a,
            int lda, long long sa, const float *b, int ldb, long long sb, float beta, float *c,
            int ldc, long long sc, int batch) {
  return TD_CU_CHECK(be, cublasSgemmStridedBatched(
                             td_cuda(be)->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                             ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb, sb, a, lda,
                             sa, &beta, c, ldc, sc, batch));
}

} // namespace

void td__cuda_embedding_fwd(td_backend *be, const float *ids, const float *w, float *y,
                            size_t rows, size_t vocab, size_t dim) {
  embedding_fwd_kernel<<<td_cuda_blocks(rows * dim), kTdThreads, 0, td_cuda_stream(be)>>>(
      ids, w, y, rows, vocab, dim);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_embedding_bwd(td_backend *be, const float *ids, const float *dy, float *dw,
                            size_t rows, size_t vocab, size_t dim, float beta) {
  embedding_bwd_kernel<<<td_cuda_blocks(dim), kTdThreads, 0, td_cuda_stream(be)>>>(
      ids, dy, dw, rows, vocab, dim, beta);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_add_rows(td_backend *be, const float *x, const float *b, float *y, size_t rows,
                       size_t cols) {
  add_rows_kernel<<<td_cuda_blocks(rows * cols), kTdThreads, 0, td_cuda_stream(be)>>>(
      x, b, y, rows, cols);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_attn_fwd(td_backend *be, const td_attention_desc *a, const float *qkv, float *p,
                       float *o) {
  const int t = a->t, d = a->d, heads = a->heads, dh = d / heads, ld = 3 * d;
  const long long sx = (long long)t * ld, sp = (long long)heads * t * t, so = (long long)t * d;
  const float scale = 1.0f / sqrtf((float)dh);

  for (int s0 = 0; s0 < a->n; s0 += TD_BLOCK_ROWS) {
    int bn = a->n - s0 < TD_BLOCK_ROWS ? a->n - s0 : TD_BLOCK_ROWS;
    const float *q0 = qkv + s0 * sx;
    float *p0 = p + s0 * sp, *o0 = o + s0 * so;

    for (int h = 0; h < heads; h++) {
      const float *q = q0 + h * dh, *k = q + d, *v = q + 2 * d;
      float *ph = p0 + (size_t)h * t * t;

      if (batched(be, false, true, t, t, dh, scale, q, ld, sx, k, ld, sx, 0.0f, ph, t, sp, bn) <
          0)
        return;
      softmax_rows_kernel<<<warp_blocks((size_t)bn * t), kTdThreads, 0, td_cuda_stream(be)>>>(
          ph, (size_t)sp, (size_t)bn * t, t, a->causal);
      if (TD_CU_CHECK_LAUNCH(be) < 0 ||
          batched(be, false, false, t, dh, t, 1.0f, ph, t, sp, v, ld, sx, 0.0f, o0 + h * dh, d,
                  so, bn) < 0)
        return;
    }
  }
}

void td__cuda_attn_bwd(td_backend *be, const td_attention_desc *a, const float *qkv,
                       const float *p, const float *dout, float *dqkv, float *dp) {
  const int t = a->t, d = a->d, heads = a->heads, dh = d / heads, ld = 3 * d;
  const long long sx = (long long)t * ld, sp = (long long)heads * t * t, so = (long long)t * d,
                  sd = (long long)t * t;
  const float scale = 1.0f / sqrtf((float)dh);

  for (int s0 = 0; s0 < a->n; s0 += TD_BLOCK_ROWS) {
    int bn = a->n - s0 < TD_BLOCK_ROWS ? a->n - s0 : TD_BLOCK_ROWS;
    const float *q0 = qkv + s0 * sx, *p0 = p + s0 * sp, *do0 = dout + s0 * so;
    float *dq0 = dqkv + s0 * sx, *dp0 = dp + s0 * sd;

    for (int h = 0; h < heads; h++) {
      const float *q = q0 + h * dh, *k = q + d, *v = q + 2 * d, *ph = p0 + (size_t)h * t * t;
      const float *doh = do0 + h * dh;
      float *dq = dq0 + h * dh, *dk = dq + d, *dv = dq + 2 * d;

      /* dP = dO V^T, dV = P^T dO */
      if (batched(be, false, true, t, t, dh, 1.0f, doh, d, so, v, ld, sx, 0.0f, dp0, t, sd, bn) <
              0 ||
          batched(be, true, false, t, dh, t, 1.0f, ph, t, sp, doh, d, so, 0.0f, dv, ld, sx, bn) <
              0)
        return;
      softmax_bwd_kernel<<<warp_blocks((size_t)bn * t), kTdThreads, 0, td_cuda_stream(be)>>>(
          ph, (size_t)sp, dp0, (size_t)bn * t, t);
      if (TD_CU_CHECK_LAUNCH(be) < 0)
        return;
      /* dQ = scale dS K, dK = scale dS^T Q */
      if (batched(be, false, false, t, dh, t, scale, dp0, t, sd, k, ld, sx, 0.0f, dq, ld, sx,
                  bn) < 0 ||
          batched(be, true, false, t, dh, t, scale, dp0, t, sd, q, ld, sx, 0.0f, dk, ld, sx,
                  bn) < 0)
        return;
    }
  }
}
