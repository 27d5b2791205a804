/* The losses on the CUDA backend (loss.cu): lossrow.h's rows. */
#ifndef TD_CUDA_LOSS_CUH
#define TD_CUDA_LOSS_CUH

#include "backend_cuda.cuh"

void td__cuda_loss(td_backend *be, const td_loss_cfg *cfg, const float *logits,
                   const void *targets, size_t rows, size_t width, float *dlogits,
                   float *stats, float *extra);

#endif
