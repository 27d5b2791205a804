/* Input staging on the CUDA backend: normalisation of stored samples,
 * pinned host ranges and the device's memory (input.cu); the probe
 * (probe.cu). */
#ifndef TD_CUDA_INPUT_CUH
#define TD_CUDA_INPUT_CUH

#include "backend_cuda.cuh"

void td__cuda_normalize(td_backend *be, td_dtype dtype, const void *x, float *y, size_t n,
                        float mul, float add);
int td__cuda_host_register(td_backend *be, void *ptr, size_t bytes, char *err, size_t errlen);
void td__cuda_host_unregister(td_backend *be, void *ptr);
void td__cuda_upload_pinned(td_backend *be, void *dst, const void *src, size_t bytes);
int td__cuda_device_mem(td_backend *be, uint64_t *total, uint64_t *free_bytes);

#endif
