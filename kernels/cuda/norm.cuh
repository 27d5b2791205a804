/* BatchNorm2d and LayerNorm on the CUDA backend (norm.cu). */
#ifndef TD_CUDA_NORM_CUH
#define TD_CUDA_NORM_CUH

#include "backend_cuda.cuh"

void td__cuda_batchnorm2d_fwd(td_backend *be, const td_batchnorm_desc *d, bool training,
                              const float *x, float *y, const float *gamma, const float *beta,
                              float *running_mean, float *running_var, float *save_mean,
                              float *save_invstd);
void td__cuda_batchnorm2d_bwd(td_backend *be, const td_batchnorm_desc *d, const float *x,
                              const float *dy, float *dx, const float *gamma,
                              const float *save_mean, const float *save_invstd, float beta,
                              float *dgamma, float *dbeta);
void td__cuda_layernorm_fwd(td_backend *be, const float *x, float *y, size_t rows,
                            size_t cols, const float *gamma, const float *beta, float eps,
                            float *save_mean, float *save_invstd);
void td__cuda_layernorm_bwd(td_backend *be, const float *x, const float *dy, float *dx,
                            size_t rows, size_t cols, const float *gamma,
                            const float *save_mean, const float *save_invstd, float beta,
                            float *dgamma, float *dbeta);

#endif
