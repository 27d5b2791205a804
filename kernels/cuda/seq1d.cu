/* Global average pooling (a mean over planes or positions) and conv1d's
 * columns, whose products are cuBLAS's (kernels/backend.c composes them).
 * Every output is one thread's sum in the CPU backend's order
 * (kernels/cpu/pool.c, seq1d.c): no atomics, so the bits do not depend on
 * scheduling. */
#include "seq1d.cuh"

namespace {

__global__ void mean_fwd_kernel(const float *x, float *y, size_t outer, size_t count,
                                size_t inner) {
  TD_GRID_STRIDE(e, outer * inner) {
    const float *xo = x + (e / inner) * count * inner + e % inner;
    float s = xo[0];

    for (size_t r = 1; r < count; r++)
      s += xo[r * inner];
    y[e] = s / (float)count;
  }
}

__global__ void mean_bwd_kernel(const float *dy, float *dx, size_t outer, size_t count,
                                size_t inner) {
  TD_GRID_STRIDE(e, outer * count * inner)
  dx[e] = dy[(e / (count * inner)) * inner + e % inner] / (float)count;
}

/* col[s*ol + o, ci*kw + j] = x[s, o*stride - pad + j, ci], 0 outside */
__global__ void im2col1d_kernel(td_conv1d_desc d, int ol, const float *x, int rows,
                                float *col) {
  const size_t ck = (size_t)d.c * d.kw;

  TD_GRID_STRIDE(e, (size_t)rows * ol * ck) {
    size_t row = e / ck, s = row / ol;
    int o = (int)(row % ol), ci = (int)(e % ck) / d.kw, j = (int)(e % ck) % d.kw;
    int p = o * d.stride - d.pad + j;

    col[e] = p >= 0 && p < d.l ? x[(s * d.l + p) * d.c + ci] : 0.0f;
  }
}

/* dx[s, p, ci]: the windows that hold p, in the order of their offset j */
__global__ void col2im1d_kernel(td_conv1d_desc d, int ol, const float *col, int rows,
                                float *dx) {
  const size_t ck = (size_t)d.c * d.kw;

  TD_GRID_STRIDE(e, (size_t)rows * d.l * d.c) {
    size_t s = e / ((size_t)d.l * d.c);
    int p = (int)(e / d.c % d.l), ci = (int)(e % d.c);
    float v = 0.0f;

    for (int j = 0; j < d.kw; j++) {
      int q = p + d.pad - j, o = q / d.stride;

      if (q < 0 || q % d.stride != 0 || o >= ol)
        continue;
      v += col[(s * ol + o) * ck + (size_t)ci * d.kw + j];
    }
    dx[e] = v;
  }
}

} // namespace

void td__cuda_mean_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t count,
                       size_t inner) {
  mean_fwd_kernel<<<td_cuda_blocks(outer * inner), kTdThreads, 0, td_cuda_stream(be)>>>(
      x, y, outer, count, inner);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_mean_bwd(td_backend *be, const float *dy, float *dx, size_t outer, size_t count,
                       size_t inner) {
  mean_bwd_kernel<<<td_cuda_blocks(outer * count * inner), kTdThreads, 0,
                    td_cuda_stream(be)>>>(dy, dx, outer, count, inner);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_im2col1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *x,
                       int rows, float *col) {
  size_t n = (size_t)rows * ol * d->c * d->kw;

  im2col1d_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda_stream(be)>>>(*d, ol, x, rows,
                                                                          col);
  TD_CU_CHECK_LAUNCH(be);
}

void td__cuda_col2im1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *col,
                       int rows, float *dx) {
  size_t n = (size_t)rows * d->l * d->c;

  col2im1d_kernel<<<td_cuda_blocks(n), kTdThreads, 0, td_cuda_stream(be)>>>(*d, ol, col, rows,
                                                                           dx);
  TD_CU_CHECK_LAUNCH(be);
}
