/* GELU and dropout: element-wise kernels over any storage type (td_ld /
 * td_st), computing in float like the CPU backend (kernels/cpu/act.c);
 * then sigmoid, tanh and softmax over a feature axis, on fp32. */
#include "act.cuh"
#include "dropout_mask.h"

namespace {

constexpr float kRsqrt2 = 0.70710678118654752f;   /* 1 / sqrt(2) */
constexpr float kRsqrt2Pi = 0.39894228040143268f; /* 1 / sqrt(2 pi) */
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kCubic = 0.044715f;

template <td_gelu_kind K> __device__ inline float gelu(float v) {
  if (K == TD_GELU_TANH)
    return 0.5f * v * (1.0f + tanhf(kSqrt2OverPi * (v + kCubic * v * v * v)));
  return 0.5f * v * (1.0f + erff(v * kRsqrt2));
}

template <td_gelu_kind K> __device__ inline float gelu_grad(float v) {
  if (K == TD_GELU_TANH) {
    float t = tanhf(kSqrt2OverPi * (v + kCubic * v * v * v));
    float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * v * v);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du;
  }
  return 0.5f * (1.0f + erff(v * kRsqrt2)) + v * kRsqrt2Pi * expf(-0.5f * v * v);
}

template <typename T, td_gelu_kind K>
__global__ void gelu_fwd_kernel(const T *x, T *y, size_t n) {
  TD_GRID_STRIDE(i, n) td_st(y, i, gelu<K>(td_ld(x, i)));
}

template <typename T, td_gelu_kind K>
__global__ void gelu_bwd_kernel(const T *x, const T *dy, T *dx, size_t n) {
  TD_GRID_STRIDE(i, n) td_st(dx, i, td_ld(dy, i) * gelu_grad<K>(td_ld(x, i)));
}

template <typename T>
__global__ void dropout_kernel(const T *x, T *y, size_t rows, size_t cols, uint64_t key,
                               uint64_t sample, uint32_t threshold, float scale) {
  TD_GRID_STRIDE(i, rows * cols) {
    size_t r = i / cols, c = i % cols;
    bool keep = td__dropout_keep(td__dropout_row(key, sample + r), c, threshold);
    td_st(y, i, keep ? td_ld(x, i) * scale : 0.0f);
  }
}

} // namespace

void td__cuda_gelu_fwd(td_backend *be, td_gelu_kind kind, const float *x, float *y, size_t n) {
  cudaStream_t s = td_cuda_stream(be);

  if (kind == TD_GELU_TANH)
    gelu_fwd_kernel<float, TD_GELU_TANH><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  else
    gelu_fwd_kernel<float, TD_GELU_ERF><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_gelu_bwd(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                       float *dx, size_t n) {
  cudaStream_t s = td_cuda_stream(be);

  if (kind == TD_GELU_TANH)
    gelu_bwd_kernel<float, TD_GELU_TANH><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, dy, dx, n);
  else
    gelu_bwd_kernel<float, TD_GELU_ERF><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, dy, dx, n);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_dropout(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                      uint64_t key, uint64_t sample, uint32_t threshold, float scale) {
  dropout_kernel<float><<<td_cuda_blocks(rows * cols), kTdThreads, 0, td_cuda_stream(be)>>>(
      x, y, rows, cols, key, sample, threshold, scale);
  TD_CU_CHECK_LAUNCH(be);
}

/* Sigmoid, tanh and softmax over a feature axis, in the CPU backend's
 * order of operations (kernels/cpu/act.c). */
namespace {

template <td_act_kind K> __global__ void act_fwd_kernel(const float *x, float *y, size_t n) {
  TD_GRID_STRIDE(i, n) y[i] = K == TD_ACT_TANH ? tanhf(x[i]) : 1.0f / (1.0f + expf(-x[i]));
}

template <td_act_kind K>
__global__ void act_bwd_kernel(const float *y, const float *dy, float *dx, size_t n) {
  TD_GRID_STRIDE(i, n) {
    float v = y[i];
    dx[i] = K == TD_ACT_TANH ? dy[i] * (1.0f - v * v) : dy[i] * v * (1.0f - v);
  }
}

/* One thread per (outer, inner) line: its max, exponentials and their sum
 * in order, as the CPU does.  cuDNN's softmax does not promise that the
 * backward pass may write dx over dy, which the plan does (in place). */
__global__ void softmax_fwd_kernel(const float *x, float *y, size_t outer, size_t dim,
                                   size_t inner) {
  TD_GRID_STRIDE(line, outer * inner) {
    size_t base = (line / inner) * dim * inner + line % inner;
    float max = x[base], sum = 0.0f;

    for (size_t d = 1; d < dim; d++)
      max = x[base + d * inner] > max ? x[base + d * inner] : max;
    for (size_t d = 0; d < dim; d++) {
      float e = expf(x[base + d * inner] - max);
      y[base + d * inner] = e;
      sum += e;
    }
    for (size_t d = 0; d < dim; d++)
      y[base + d * inner] /= sum;
  }
}

__global__ void softmax_bwd_kernel(const float *y, const float *dy, float *dx, size_t outer,
                                   size_t dim, size_t inner) {
  TD_GRID_STRIDE(line, outer * inner) {
    size_t base = (line / inner) * dim * inner + line % inner;
    float dot = 0.0f;

    for (size_t d = 0; d < dim; d++)
      dot += dy[base + d * inner] * y[base + d * inner];
    for (size_t d = 0; d < dim; d++)
      dx[base + d * inner] = y[base + d * inner] * (dy[base + d * inner] - dot);
  }
}

} // namespace

void td__cuda_act_fwd(td_backend *be, td_act_kind kind, const float *x, float *y, size_t n) {
  cudaStream_t s = td_cuda_stream(be);

  if (kind == TD_ACT_TANH)
    act_fwd_kernel<TD_ACT_TANH><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  else
    act_fwd_kernel<TD_ACT_SIGMOID><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_act_bwd(td_backend *be, td_act_kind kind, const float *y, const float *dy,
                      float *dx, size_t n) {
  cudaStream_t s = td_cuda_stream(be);

  if (kind == TD_ACT_TANH)
    act_bwd_kernel<TD_ACT_TANH><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(y, dy, dx, n);
  else
    act_bwd_kernel<TD_ACT_SIGMOID><<<td_cuda_blocks(n), kTdThreads, 0, s>>>(y, dy, dx, n);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_softmax_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t dim,
                          size_t inner) {
  softmax_fwd_kernel<<<td_cuda_blocks(outer * inner), kTdThreads, 0, td_cuda_stream(be)>>>(
      x, y, outer, dim, inner);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_softmax_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                          size_t outer, size_t dim, size_t inner) {
  softmax_bwd_kernel<<<td_cuda_blocks(outer * inner), kTdThreads, 0, td_cuda_stream(be)>>>(
      y, dy, dx, outer, dim, inner);
  TD_CU_CHECK_LAUNCH(be);
}
