/* Global average pooling and conv1d's column ops on the CUDA backend
 * (seq1d.cu). */
#ifndef TD_CUDA_SEQ1D_CUH
#define TD_CUDA_SEQ1D_CUH

#include "backend_cuda.cuh"

void td__cuda_mean_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t count,
                       size_t inner);
void td__cuda_mean_bwd(td_backend *be, const float *dy, float *dx, size_t outer, size_t count,
                       size_t inner);
void td__cuda_im2col1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *x,
                       int rows, float *col);
void td__cuda_col2im1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *col,
                       int rows, float *dx);

#endif
