/* add and copy2d: one thread an element, each element one addition of its
 * own (no atomics), so the bits are the CPU backend's (kernels/cpu/graph.c). */
#include "graph.cuh"

namespace {

__global__ void add_kernel(const float *a, const float *b, float *y, size_t n) {
  TD_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

__global__ void accumulate2d_kernel(const float *src, size_t src_ld, float *dst, size_t dst_ld,
                                    size_t rows, size_t cols) {
  TD_GRID_STRIDE(i, rows * cols) {
    size_t r = i / cols, c = i % cols;
    dst[r * dst_ld + c] += src[r * src_ld + c];
  }
}

} // namespace

void td__cuda_add(td_backend *be, const float *a, const float *b, float *y, size_t n) {
  add_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda(be)->stream>>>(a, b, y, n);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_copy2d(td_backend *be, const float *src, size_t src_ld, float *dst,
                     size_t dst_ld, size_t rows, size_t cols, float beta) {
  cudaStream_t s = td_cuda(be)->stream;

  if (beta == 0.0f) {
    TD_CU_CHECK(be, cudaMemcpy2DAsync(dst, dst_ld * sizeof(float), src, src_ld * sizeof(float),
                                      cols * sizeof(float), rows, cudaMemcpyDeviceToDevice, s));
    return;
  }
  accumulate2d_kernel<<<td_cuda_blocks(rows * cols), kTdThreads, 0, s>>>(src, src_ld, dst,
                                                                         dst_ld, rows, cols);
  TD_CU_CHECK_LAUNCH(be);
}
