/* Optimisers, gradient clipping, the finite check and half-precision
 * storage on the CUDA backend (optim.cu). */
#ifndef TD_CUDA_OPTIM_CUH
#define TD_CUDA_OPTIM_CUH

#include "backend_cuda.cuh"

void td__cuda_sgd_momentum(td_backend *be, float *p, const float *g, float *buf, size_t n,
                           float lr, float momentum, float dampening, float weight_decay,
                           bool nesterov, bool first);
void td__cuda_adamw(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                    float beta1, float beta2, float eps, float decay, float step_size,
                    float bc2_sqrt);
void td__cuda_sumsq(td_backend *be, const float *x, size_t n, float *acc);
void td__cuda_clip_coef(td_backend *be, float *norm, float max_norm);
void td__cuda_scale(td_backend *be, float *x, size_t n, float alpha, const float *coef);
void td__cuda_check_finite(td_backend *be, const float *x, size_t n, float *flag);
void td__cuda_to_half(td_backend *be, td_half_kind kind, const float *x, uint16_t *y,
                      size_t n);
void td__cuda_from_half(td_backend *be, td_half_kind kind, const uint16_t *x, float *y,
                        size_t n);
void td__cuda_round_half(td_backend *be, td_half_kind kind, float *x, size_t n);

#endif
