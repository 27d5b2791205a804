/* Optimisers, gradient clipping, the finite check and half-precision
 * storage: element-wise kernels in the CPU backend's order of operations
 * (kernels/cpu/optim.c), each multiply and add rounded as there (built with
 * --fmad=false: see meson.build), so an update gives the CPU's bits. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "optim.cuh"

namespace {

/* The sum of squares in two passes: up to kTdSumsqBlocks blocks each sum a
 * fixed grid-stride share into their slot of the backend's partials, then
 * one block adds the slots in order.  The split depends on n alone, never
 * on the GPU, so a clipped step is the same on every run (a resumed job
 * must match an undisturbed one); one block for all of it used one SM. */
constexpr int kSumsqThreads = 256;

__global__ void sgd_momentum_kernel(float *p, const float *g, float *buf, size_t n, float lr,
                                    float momentum, float dampening, float weight_decay,
                                    bool nesterov, bool first) {
  const float keep = 1.0f - dampening;

  TD_GRID_STRIDE(i, n) {
    float d = g[i] + weight_decay * p[i];
    if (momentum != 0.0f) {
      float b = first ? d : momentum * buf[i] + keep * d;
      buf[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    p[i] -= lr * d;
  }
}

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n,
                             float beta1, float beta2, float eps, float decay, float step_size,
                             float bc2_sqrt) {
  const float one_b1 = 1.0f - beta1, one_b2 = 1.0f - beta2;

  TD_GRID_STRIDE(i, n) {
    float gi = g[i];
    float mi = beta1 * m[i] + one_b1 * gi;
    float vi = beta2 * v[i] + one_b2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
  }
}

/* The block's sum of s, in thread 0 (blockDim.x a multiple of 32). */
__device__ double block_sum(double s) {
  __shared__ double warps[32];
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  for (int o = 16; o > 0; o >>= 1)
    s += __shfl_down_sync(0xffffffffu, s, o);
  if (lane == 0)
    warps[warp] = s;
  __syncthreads();
  s = 0.0;
  if (warp == 0) {
    s = lane < (blockDim.x >> 5) ? warps[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1)
      s += __shfl_down_sync(0xffffffffu, s, o);
  }
  return s;
}

__global__ void sumsq_part_kernel(const float *x, size_t n, double *part) {
  double s = 0.0;

  TD_GRID_STRIDE(i, n) s += (double)x[i] * x[i];
  s = block_sum(s);
  if (threadIdx.x == 0)
    part[blockIdx.x] = s;
}

/* One block of kTdSumsqBlocks threads: slot i is thread i's. */
__global__ void sumsq_total_kernel(const double *part, unsigned nparts, float *acc) {
  double s = block_sum(threadIdx.x < nparts ? part[threadIdx.x] : 0.0);

  if (threadIdx.x == 0)
    acc[0] = (float)((double)acc[0] + s);
}

__global__ void clip_coef_kernel(float *norm, float max_norm) {
  float c = max_norm / (sqrtf(norm[0]) + 1e-6f);

  norm[1] = c > 1.0f ? 1.0f : c;
}

__global__ void scale_kernel(float *x, size_t n, float alpha, const float *coef) {
  const float c = coef != nullptr ? alpha * coef[0] : alpha;

  TD_GRID_STRIDE(i, n) x[i] *= c;
}

__global__ void check_finite_kernel(const float *x, size_t n, float *flag) {
  TD_GRID_STRIDE(i, n) {
    if (!isfinite(x[i]))
      flag[0] = 1.0f; /* every writer stores the same value */
  }
}

__global__ void to_f16_kernel(const float *x, uint16_t *y, size_t n) {
  TD_GRID_STRIDE(i, n) y[i] = __half_as_ushort(__float2half_rn(x[i]));
}

__global__ void to_bf16_kernel(const float *x, uint16_t *y, size_t n) {
  TD_GRID_STRIDE(i, n) y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

__global__ void from_f16_kernel(const uint16_t *x, float *y, size_t n) {
  TD_GRID_STRIDE(i, n) y[i] = __half2float(__ushort_as_half(x[i]));
}

__global__ void from_bf16_kernel(const uint16_t *x, float *y, size_t n) {
  TD_GRID_STRIDE(i, n) y[i] = __bfloat162float(__ushort_as_bfloat16(x[i]));
}

__global__ void round_f16_kernel(float *x, size_t n) {
  TD_GRID_STRIDE(i, n) x[i] = __half2float(__float2half_rn(x[i]));
}

__global__ void round_bf16_kernel(float *x, size_t n) {
  TD_GRID_STRIDE(i, n) x[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
}

} // namespace

void td__cuda_sgd_momentum(td_backend *be, float *p, const float *g, float *buf, size_t n,
                           float lr, float momentum, float dampening, float weight_decay,
                           bool nesterov, bool first) {
  sgd_momentum_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda_stream(be)>>>(
      p, g, buf, n, lr, momentum, dampening, weight_decay, nesterov, first);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_adamw(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                    float beta1, float beta2, float eps, float decay, float step_size,
                    float bc2_sqrt) {
  adamw_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda_stream(be)>>>(
      p, g, m, v, n, beta1, beta2, eps, decay, step_size, bc2_sqrt);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_sumsq(td_backend *be, const float *x, size_t n, float *acc) {
  size_t want = (n + kSumsqThreads - 1) / kSumsqThreads;
  unsigned blocks = (unsigned)(want < (size_t)kTdSumsqBlocks ? want : kTdSumsqBlocks);
  double *part = td_cuda(be)->sumsq_part;

  sumsq_part_kernel<<<blocks, kSumsqThreads, 0, td_cuda_stream(be)>>>(x, n, part);
  if (TD_CU_CHECK_LAUNCH(be) < 0)
    return;
  sumsq_total_kernel<<<1, kTdSumsqBlocks, 0, td_cuda_stream(be)>>>(part, blocks, acc);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_clip_coef(td_backend *be, float *norm, float max_norm) {
  clip_coef_kernel<<<1, 1, 0, td_cuda_stream(be)>>>(norm, max_norm);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_scale(td_backend *be, float *x, size_t n, float alpha, const float *coef) {
  scale_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda_stream(be)>>>(x, n, alpha, coef);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_check_finite(td_backend *be, const float *x, size_t n, float *flag) {
  check_finite_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda_stream(be)>>>(x, n, flag);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_to_half(td_backend *be, td_half_kind kind, const float *x, uint16_t *y,
                      size_t n) {
  cudaStream_t s = td_cuda_stream(be);

  if (kind == TD_HALF_BF16)
    to_bf16_kernel<<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  else
    to_f16_kernel<<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_from_half(td_backend *be, td_half_kind kind, const uint16_t *x, float *y,
                        size_t n) {
  cudaStream_t s = td_cuda_stream(be);

  if (kind == TD_HALF_BF16)
    from_bf16_kernel<<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  else
    from_f16_kernel<<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, y, n);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_round_half(td_backend *be, td_half_kind kind, float *x, size_t n) {
  cudaStream_t s = td_cuda_stream(be);

  if (kind == TD_HALF_BF16)
    round_bf16_kernel<<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, n);
  else
    round_f16_kernel<<<td_cuda_blocks(n), kTdThreads, 0, s>>>(x, n);
  TD_CU_CHECK_LAUNCH(be);
}
