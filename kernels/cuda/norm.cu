/* BatchNorm2d and LayerNorm.  One block per channel (batchnorm) or row
 * (layernorm) reduces its statistics with two passes (mean, then squared
 * deviations) like the CPU backend (kernels/cpu/norm.c), in float. */
#include "norm.cuh"

namespace {

/* The block's sum, returned to every thread.  blockDim.x: a multiple of 32,
 * at most 1024; every thread of the block must call it. */
__device__ float block_sum(float v) {
  __shared__ float part[32];
  const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_down_sync(0xffffffffu, v, o);
  __syncthreads(); /* the last call's readers are done with part */
  if (lane == 0)
    part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
      v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0)
      part[0] = v;
  }
  __syncthreads();
  return part[0];
}

__device__ inline float accumulate(float old, float beta, float add) {
  return beta == 0.0f ? add : beta * old + add;
}

/* Element j of a channel's n * hw values. */
__device__ inline size_t bn_at(size_t j, int hw, size_t stride) {
  return (j / hw) * stride + j % hw;
}

template <typename T>
__global__ void bn_fwd_train_kernel(const T *x, T *y, td_batchnorm_desc d, const float *gamma,
                                    const float *beta, float *running_mean, float *running_var,
                                    float *save_mean, float *save_invstd) {
  const size_t count = (size_t)d.n * d.hw, stride = (size_t)d.c * d.hw;

  for (int ch = blockIdx.x; ch < d.c; ch += gridDim.x) {
    const T *xc = x + (size_t)ch * d.hw;
    T *yc = y + (size_t)ch * d.hw;
    float s = 0.0f, q = 0.0f, mean, var, inv, g, b;

    for (size_t j = threadIdx.x; j < count; j += blockDim.x)
      s += td_ld(xc, bn_at(j, d.hw, stride));
    mean = block_sum(s) / (float)count;
    for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
      float dv = td_ld(xc, bn_at(j, d.hw, stride)) - mean;
      q += dv * dv;
    }
    var = block_sum(q) / (float)count;
    inv = 1.0f / sqrtf(var + d.eps);
    if (threadIdx.x == 0) {
      save_mean[ch] = mean;
      save_invstd[ch] = inv;
      running_mean[ch] = (1.0f - d.momentum) * running_mean[ch] + d.momentum * mean;
      running_var[ch] = (1.0f - d.momentum) * running_var[ch] +
                        d.momentum * var * ((float)count / (float)(count - 1));
    }
    g = gamma[ch] * inv;
    b = beta[ch];
    for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
      size_t at = bn_at(j, d.hw, stride);
      td_st(yc, at, (td_ld(xc, at) - mean) * g + b);
    }
  }
}

template <typename T>
__global__ void bn_fwd_eval_kernel(const T *x, T *y, td_batchnorm_desc d, const float *gamma,
                                   const float *beta, const float *running_mean,
                                   const float *running_var) {
  TD_GRID_STRIDE(i, (size_t)d.n * d.c * d.hw) {
    size_t ch = (i / d.hw) % d.c;
    float inv = 1.0f / sqrtf(running_var[ch] + d.eps);
    td_st(y, i, (td_ld(x, i) - running_mean[ch]) * gamma[ch] * inv + beta[ch]);
  }
}

template <typename T>
__global__ void bn_bwd_kernel(const T *x, const T *dy, T *dx, td_batchnorm_desc d,
                              const float *gamma, const float *save_mean,
                              const float *save_invstd, float beta, float *dgamma,
                              float *dbeta) {
  const size_t count = (size_t)d.n * d.hw, stride = (size_t)d.c * d.hw;

  for (int ch = blockIdx.x; ch < d.c; ch += gridDim.x) {
    const size_t base = (size_t)ch * d.hw;
    const float mean = save_mean[ch], inv = save_invstd[ch];
    float a = 0.0f, b = 0.0f, k;

    for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
      size_t at = base + bn_at(j, d.hw, stride);
      float g = td_ld(dy, at);
      a += g;
      b += g * (td_ld(x, at) - mean) * inv;
    }
    a = block_sum(a);
    b = block_sum(b);
    if (threadIdx.x == 0) {
      dgamma[ch] = accumulate(dgamma[ch], beta, b);
      dbeta[ch] = accumulate(dbeta[ch], beta, a);
    }
    if (dx == nullptr)
      continue;
    /* dx = g inv (dy - mean(dy) - xhat mean(dy xhat)) */
    k = gamma[ch] * inv;
    a /= (float)count;
    b /= (float)count;
    for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
      size_t at = base + bn_at(j, d.hw, stride);
      td_st(dx, at, k * (td_ld(dy, at) - a - (td_ld(x, at) - mean) * inv * b));
    }
  }
}

template <typename T>
__global__ void ln_fwd_kernel(const T *x, T *y, size_t rows, size_t cols, const float *gamma,
                              const float *beta, float eps, float *save_mean,
                              float *save_invstd) {
  for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * cols;
    T *yr = y + r * cols;
    float s = 0.0f, q = 0.0f, mean, inv;

    for (size_t c = threadIdx.x; c < cols; c += blockDim.x)
      s += td_ld(xr, c);
    mean = block_sum(s) / (float)cols;
    for (size_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float dv = td_ld(xr, c) - mean;
      q += dv * dv;
    }
    inv = 1.0f / sqrtf(block_sum(q) / (float)cols + eps);
    if (threadIdx.x == 0) {
      save_mean[r] = mean;
      save_invstd[r] = inv;
    }
    for (size_t c = threadIdx.x; c < cols; c += blockDim.x)
      td_st(yr, c, (td_ld(xr, c) - mean) * inv * gamma[c] + beta[c]);
  }
}

/* dx only; the parameter gradients sum over rows in ln_param_grad_kernel. */
template <typename T>
__global__ void ln_bwd_kernel(const T *x, const T *dy, T *dx, size_t rows, size_t cols,
                              const float *gamma, const float *save_mean,
                              const float *save_invstd) {
  for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *xr = x + r * cols, *dyr = dy + r * cols;
    T *dxr = dx + r * cols;
    const float mean = save_mean[r], inv = save_invstd[r];
    float a = 0.0f, b = 0.0f;

    for (size_t c = threadIdx.x; c < cols; c += blockDim.x) {
      float g = td_ld(dyr, c) * gamma[c];
      a += g;
      b += g * (td_ld(xr, c) - mean) * inv;
    }
    a = block_sum(a) / (float)cols;
    b = block_sum(b) / (float)cols;
    /* with gdy = dy g: dx = inv (gdy - mean(gdy) - xhat mean(gdy xhat)) */
    for (size_t c = threadIdx.x; c < cols; c += blockDim.x)
      td_st(dxr, c, inv * (td_ld(dyr, c) * gamma[c] - a - (td_ld(xr, c) - mean) * inv * b));
  }
}

/* One thread per column: a warp reads consecutive columns of a row.  The
 * rows go onto the sums so far one after another (a chain, as on the CPU),
 * so a batch cut into calls gives the same bits (kernels/backend.h). */
template <typename T>
__global__ void ln_param_grad_kernel(const T *x, const T *dy, size_t rows, size_t cols,
                                     const float *save_mean, const float *save_invstd,
                                     float beta, float *dgamma, float *dbeta) {
  TD_GRID_STRIDE(c, cols) {
    float g = beta == 0.0f ? 0.0f : beta * dgamma[c];
    float b = beta == 0.0f ? 0.0f : beta * dbeta[c];

    for (size_t r = 0; r < rows; r++) {
      float v = td_ld(dy, r * cols + c);
      g += v * (td_ld(x, r * cols + c) - save_mean[r]) * save_invstd[r];
      b += v;
    }
    dgamma[c] = g;
    dbeta[c] = b;
  }
}

/* Blocks for a block-per-item loop over n items. */
unsigned item_blocks(size_t n) { return (unsigned)(n < kTdMaxBlocks ? n : kTdMaxBlocks); }

} // namespace

void td__cuda_batchnorm2d_fwd(td_backend *be, const td_batchnorm_desc *d, bool training,
                              const float *x, float *y, const float *gamma, const float *beta,
                              float *running_mean, float *running_var, float *save_mean,
                              float *save_invstd) {
  cudaStream_t s = td_cuda_stream(be);

  if (training)
    bn_fwd_train_kernel<float><<<item_blocks((size_t)d->c), kTdThreads, 0, s>>>(
        x, y, *d, gamma, beta, running_mean, running_var, save_mean, save_invstd);
  else
    bn_fwd_eval_kernel<float><<<td_cuda_blocks((size_t)d->n * d->c * d->hw), kTdThreads, 0,
                                s>>>(x, y, *d, gamma, beta, running_mean, running_var);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_batchnorm2d_bwd(td_backend *be, const td_batchnorm_desc *d, const float *x,
                              const float *dy, float *dx, const float *gamma,
                              const float *save_mean, const float *save_invstd, float beta,
                              float *dgamma, float *dbeta) {
  bn_bwd_kernel<float><<<item_blocks((size_t)d->c), kTdThreads, 0, td_cuda_stream(be)>>>(
      x, dy, dx, *d, gamma, save_mean, save_invstd, beta, dgamma, dbeta);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_layernorm_fwd(td_backend *be, const float *x, float *y, size_t rows,
                            size_t cols, const float *gamma, const float *beta, float eps,
                            float *save_mean, float *save_invstd) {
  ln_fwd_kernel<float><<<item_blocks(rows), kTdThreads, 0, td_cuda_stream(be)>>>(
      x, y, rows, cols, gamma, beta, eps, save_mean, save_invstd);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_layernorm_bwd(td_backend *be, const float *x, const float *dy, float *dx,
                            size_t rows, size_t cols, const float *gamma,
                            const float *save_mean, const float *save_invstd, float beta,
                            float *dgamma, float *dbeta) {
  cudaStream_t s = td_cuda_stream(be);

  ln_param_grad_kernel<float><<<td_cuda_blocks(cols), kTdThreads, 0, s>>>(
      x, dy, rows, cols, save_mean, save_invstd, beta, dgamma, dbeta);
  if (TD_CU_CHECK_LAUNCH(be) < 0 || dx == nullptr)
    return;
  ln_bwd_kernel<float><<<item_blocks(rows), kTdThreads, 0, s>>>(x, dy, dx, rows, cols, gamma,
                                                               save_mean, save_invstd);
  TD_CU_CHECK_LAUNCH(be);
}
