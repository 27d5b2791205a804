/* The CUDA backend: cuBLAS for sgemm, cuDNN for convolution and pooling
 * (conv.cu), small kernels for the rest (here, act.cu, norm.cu, seq1d.cu, graph.cu, seq.cu,
 * loss.cu), all on one
 * stream.  Each op matches the CPU backend's (kernels/cpu/backend_cpu.c);
 * the element-wise ones bit for bit, in its order of operations with no
 * fused multiply-adds (--fmad=false, meson.build). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "act.cuh"
#include "backend_cuda.cuh"
#include "conv.cuh"
#include "graph.cuh"
#include "input.cuh"
#include "loss.cuh"
#include "norm.cuh"
#include "optim.cuh"
#include "seq1d.cuh"
#include "seq.cuh"

namespace {

__global__ void fill_kernel(float *x, size_t n, float value) {
  TD_GRID_STRIDE(i, n) x[i] = value;
}

__global__ void bias_add_kernel(float *y, const float *bias, size_t rows, size_t cols) {
  TD_GRID_STRIDE(i, rows * cols) y[i] += bias[i % cols];
}

/* One thread per column: a warp reads consecutive columns of a row. */
__global__ void bias_grad_kernel(const float *dy, size_t rows, size_t cols, float beta,
                                 float *db) {
  TD_GRID_STRIDE(c, cols) {
    float s = beta == 0.0f ? 0.0f : beta * db[c];
    for (size_t r = 0; r < rows; r++)
      s += dy[r * cols + c];
    db[c] = s;
  }
}

__global__ void relu_fwd_kernel(const float *x, float *y, size_t n) {
  TD_GRID_STRIDE(i, n) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__global__ void relu_bwd_kernel(const float *y, const float *dy, float *dx, size_t n) {
  TD_GRID_STRIDE(i, n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

__global__ void adam_kernel(float *p, const float *g, float *m, float *v, size_t n,
                            float beta1, float beta2, float eps, float weight_decay,
                            float step_size, float inv_bc2) {
  TD_GRID_STRIDE(i, n) {
    float gi = g[i] + weight_decay * p[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step_size * mi / (sqrtf(vi * inv_bc2) + eps);
  }
}

__global__ void sgd_kernel(float *p, const float *g, float *buf, size_t n, float lr,
                           float momentum, float weight_decay) {
  /* the CPU backend's order of operations, so the bits are its */
  TD_GRID_STRIDE(i, n) {
    float d;
    if (momentum != 0.0f) {
      d = momentum * buf[i] + g[i] + weight_decay * p[i];
      buf[i] = d;
    } else {
      d = g[i] + weight_decay * p[i];
    }
    p[i] -= lr * d;
  }
}

void cuda_destroy(td_backend *be) {
  td_cuda_impl *c = td_cuda(be);

  if (c == nullptr)
    return;
  td__cuda_dnn_destroy(c);
  if (c->blas != nullptr)
    cublasDestroy(c->blas);
  if (c->blas_ws != nullptr)
    cudaFree(c->blas_ws);
  if (c->stream != nullptr)
    cudaStreamDestroy(c->stream);
  free(c);
  be->impl = nullptr;
}

int cuda_alloc(td_backend *be, uint64_t bytes, void **out, uint64_t *avail) {
  td_cuda_impl *c = td_cuda(be);
  size_t dev_free = 0, dev_total = 0;
  void *p = nullptr;
  cudaError_t e = cudaMalloc(&p, (size_t)bytes);

  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError(); /* not sticky: clear it */
    if (cudaMemGetInfo(&dev_free, &dev_total) == cudaSuccess && dev_free < *avail)
      *avail = dev_free;
    return TD_EOOM;
  }
  if (e != cudaSuccess)
    return TD_CU_CHECK(be, e);
  int rc = TD_CU_CHECK(be, cudaMemsetAsync(p, 0, (size_t)bytes, c->stream));
  if (rc < 0) {
    cudaFree(p);
    return rc;
  }
  *out = p;
  return 0;
}

void cuda_free(td_backend *be, void *ptr) { TD_CU_CHECK(be, cudaFree(ptr)); }

void cuda_upload(td_backend *be, void *dst, const void *src, size_t bytes) {
  TD_CU_CHECK(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice,
                                  td_cuda(be)->stream));
}

void cuda_download(td_backend *be, void *dst, const void *src, size_t bytes) {
  cudaStream_t s = td_cuda(be)->stream;

  if (TD_CU_CHECK(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s)) == 0)
    TD_CU_CHECK(be, cudaStreamSynchronize(s));
}

void cuda_sync(td_backend *be) { TD_CU_CHECK(be, cudaStreamSynchronize(td_cuda(be)->stream)); }

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the
 * operands and keep each one's transpose flag. */
void cuda_sgemm(td_backend *be, bool trans_a, bool trans_b, int m, int n, int k,
                float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                float *c, int ldc) {
  TD_CU_CHECK(be, cublasSgemm(td_cuda(be)->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                              trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b, ldb,
                              a, lda, &beta, c, ldc));
}

void cuda_fill(td_backend *be, float *x, size_t n, float value) {
  fill_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda(be)->stream>>>(x, n, value);
  TD_CU_CHECK_LAUNCH(be);
}

void cuda_bias_add(td_backend *be, float *y, const float *bias, size_t rows, size_t cols) {
  bias_add_kernel<<<td_cuda_blocks(rows * cols), kTdThreads, 0, td_cuda(be)->stream>>>(y, bias, rows,
                                                                               cols);
  TD_CU_CHECK_LAUNCH(be);
}

void cuda_bias_grad(td_backend *be, const float *dy, size_t rows, size_t cols, float beta,
                    float *db) {
  bias_grad_kernel<<<td_cuda_blocks(cols), kTdThreads, 0, td_cuda(be)->stream>>>(dy, rows, cols,
                                                                          beta, db);
  TD_CU_CHECK_LAUNCH(be);
}

void cuda_relu_fwd(td_backend *be, const float *x, float *y, size_t n) {
  relu_fwd_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda(be)->stream>>>(x, y, n);
  TD_CU_CHECK_LAUNCH(be);
}

void cuda_relu_bwd(td_backend *be, const float *y, const float *dy, float *dx, size_t n) {
  relu_bwd_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda(be)->stream>>>(y, dy, dx, n);
  TD_CU_CHECK_LAUNCH(be);
}

void cuda_adam(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
               float beta1, float beta2, float eps, float weight_decay, float step_size,
               float inv_bc2) {
  adam_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda(be)->stream>>>(
      p, g, m, v, n, beta1, beta2, eps, weight_decay, step_size, inv_bc2);
  TD_CU_CHECK_LAUNCH(be);
}

void cuda_sgd(td_backend *be, float *p, const float *g, float *buf, size_t n, float lr,
              float momentum, float weight_decay) {
  sgd_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda(be)->stream>>>(p, g, buf, n, lr, momentum,
                                                                 weight_decay);
  TD_CU_CHECK_LAUNCH(be);
}

/* cuBLAS's workspace, given to it once: left to itself, cuBLAS allocates
 * its own when a GEMM first needs one, outside the allocator and maybe
 * after the probe measured the overhead.  Made with the backend, it is part
 * of the overhead the probe measures, so the plan counts it.  The size is
 * NVIDIA's suggestion (cuBLAS docs, cublasSetWorkspace): 32 MiB on Hopper
 * and later, 4 MiB before.  The sum of squares' partials ride behind it in
 * the same allocation (cudaMalloc rounds each one up to 2 MiB). */
int blas_workspace(td_backend *be, td_cuda_impl *c) {
  int major = 0, rc;
  size_t bytes;

  if ((rc = TD_CU_CHECK(be, cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                                   c->ordinal))) < 0)
    return rc;
  bytes = (size_t)(major >= 9 ? 32 : 4) << 20;
  if ((rc = TD_CU_CHECK(be, cudaMalloc(&c->blas_ws, bytes + kTdSumsqBlocks * sizeof(double)))) <
      0)
    return rc;
  c->sumsq_part = reinterpret_cast<double *>(static_cast<char *>(c->blas_ws) + bytes);
  return TD_CU_CHECK(be, cublasSetWorkspace(c->blas, c->blas_ws, bytes));
}

const td_backend_ops cuda_ops = {
    .kind = TD_BACKEND_CUDA,
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .sgemm = cuda_sgemm,
    .fill = cuda_fill,
    .bias_add = cuda_bias_add,
    .bias_grad = cuda_bias_grad,
    .relu_fwd = cuda_relu_fwd,
    .relu_bwd = cuda_relu_bwd,
    .loss = td__cuda_loss,
    .adam = cuda_adam,
    .sgd = cuda_sgd,
    /* none of its own: backend.c's cuBLAS calls, 16 rows at a time */
    .dense_fwd = nullptr,
    .dense_bwd = nullptr,
    .conv2d_workspace = td__cuda_conv2d_workspace,
    .conv2d_fwd = td__cuda_conv2d_fwd,
    .conv2d_bwd = td__cuda_conv2d_bwd,
    .pool2d_fwd = td__cuda_pool2d_fwd,
    .pool2d_bwd = td__cuda_pool2d_bwd,
    .gelu_fwd = td__cuda_gelu_fwd,
    .gelu_bwd = td__cuda_gelu_bwd,
    .dropout = td__cuda_dropout,
    .batchnorm2d_fwd = td__cuda_batchnorm2d_fwd,
    .batchnorm2d_bwd = td__cuda_batchnorm2d_bwd,
    .layernorm_fwd = td__cuda_layernorm_fwd,
    .layernorm_bwd = td__cuda_layernorm_bwd,
    .act_fwd = td__cuda_act_fwd,
    .act_bwd = td__cuda_act_bwd,
    .softmax_fwd = td__cuda_softmax_fwd,
    .softmax_bwd = td__cuda_softmax_bwd,
    .mean_fwd = td__cuda_mean_fwd,
    .mean_bwd = td__cuda_mean_bwd,
    .im2col1d = td__cuda_im2col1d,
    .col2im1d = td__cuda_col2im1d,
    .add = td__cuda_add,
    .copy2d = td__cuda_copy2d,
    .embedding_fwd = td__cuda_embedding_fwd,
    .embedding_bwd = td__cuda_embedding_bwd,
    .add_rows = td__cuda_add_rows,
    .attn_fwd = td__cuda_attn_fwd,
    .attn_bwd = td__cuda_attn_bwd,
    .sgd_momentum = td__cuda_sgd_momentum,
    .adamw = td__cuda_adamw,
    .sumsq = td__cuda_sumsq,
    .clip_coef = td__cuda_clip_coef,
    .scale = td__cuda_scale,
    .check_finite = td__cuda_check_finite,
    .to_half = td__cuda_to_half,
    .from_half = td__cuda_from_half,
    .round_half = td__cuda_round_half,
    .normalize = td__cuda_normalize,
    .host_register = td__cuda_host_register,
    .host_unregister = td__cuda_host_unregister,
    .upload_pinned = td__cuda_upload_pinned,
    .device_mem = td__cuda_device_mem,
};

} // namespace

extern "C" int td__backend_cuda_init(td_backend *be, int ordinal, char *err, size_t errlen) {
  td_cuda_impl *c;
  int count = 0, rc;
  cudaError_t e = cudaGetDeviceCount(&count);

  if (e != cudaSuccess || ordinal >= count) {
    (void)cudaGetLastError();
    snprintf(err, errlen, "%s: no such CUDA device (%d found%s%s)", be->device,
             e == cudaSuccess ? count : 0, e == cudaSuccess ? "" : ": ",
             e == cudaSuccess ? "" : cudaGetErrorString(e));
    return TD_EBACKEND;
  }
  c = static_cast<td_cuda_impl *>(calloc(1, sizeof(*c)));
  if (c == nullptr)
    return TD_ENOMEM;
  c->ordinal = ordinal;
  be->ops = &cuda_ops;
  be->impl = c;
  be->mem.overhead = 0; /* until td_backend_set_overhead gives the probe's figure */
  if ((rc = TD_CU_CHECK(be, cudaSetDevice(ordinal))) < 0 ||
      (rc = TD_CU_CHECK(be, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking))) < 0 ||
      (rc = TD_CU_CHECK(be, cublasCreate(&c->blas))) < 0 ||
      (rc = TD_CU_CHECK(be, cublasSetStream(c->blas, c->stream))) < 0 ||
      (rc = blas_workspace(be, c)) < 0 || /* after cublasSetStream, which resets it */
      (rc = td__cuda_dnn_init(be)) < 0) {
    snprintf(err, errlen, "%s", be->errmsg);
    cuda_destroy(be);
    return rc;
  }
  return 0;
}
