/* Element-wise activations on the CUDA backend: GELU, dropout, sigmoid, tanh,
 * and softmax over a feature axis (act.cu). */
#ifndef TD_CUDA_ACT_CUH
#define TD_CUDA_ACT_CUH

#include "backend_cuda.cuh"

void td__cuda_gelu_fwd(td_backend *be, td_gelu_kind kind, const float *x, float *y, size_t n);
void td__cuda_gelu_bwd(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                       float *dx, size_t n);
void td__cuda_dropout(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                      uint64_t key, uint64_t sample, uint32_t threshold, float scale);
void td__cuda_act_fwd(td_backend *be, td_act_kind kind, const float *x, float *y, size_t n);
void td__cuda_act_bwd(td_backend *be, td_act_kind kind, const float *y, const float *dy,
                      float *dx, size_t n);
void td__cuda_softmax_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t dim,
                          size_t inner);
void td__cuda_softmax_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                          size_t outer, size_t dim, size_t inner);

#endif
