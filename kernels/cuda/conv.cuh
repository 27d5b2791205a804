/* Convolution and pooling on the CUDA backend, through cuDNN (conv.cu). */
#ifndef TD_CUDA_CONV_CUH
#define TD_CUDA_CONV_CUH

#include "backend_cuda.cuh"

/* The cuDNN handle and descriptors of a backend whose stream exists; the
 * destroy accepts a partly made one. */
int td__cuda_dnn_init(td_backend *be);
void td__cuda_dnn_destroy(td_cuda_impl *c);

int td__cuda_conv2d_workspace(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                              uint64_t *bytes);
void td__cuda_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                         const float *x, const float *w, const float *b, float *y, void *work,
                         uint64_t work_bytes);
void td__cuda_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                         const float *x, const float *w, const float *dy, float *dx, float *dw,
                         float *db, float beta, void *work, uint64_t work_bytes);
void td__cuda_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                         int ow, const float *x, float *y);
void td__cuda_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                         int ow, const float *x, const float *y, const float *dy, float *dx);

#endif
