/* The joins of a model graph on the CUDA backend: add and the strided copy
 * of concat and of summed gradients (graph.cu). */
#ifndef TD_CUDA_GRAPH_CUH
#define TD_CUDA_GRAPH_CUH

#include "backend_cuda.cuh"

void td__cuda_add(td_backend *be, const float *a, const float *b, float *y, size_t n);
void td__cuda_copy2d(td_backend *be, const float *src, size_t src_ld, float *dst,
                     size_t dst_ld, size_t rows, size_t cols, float beta);

#endif
