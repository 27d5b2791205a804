/* Samples in their stored type to fp32 on the device, and the pinned host
 * ranges the loader's ring is uploaded from. */
#include <cuda_fp16.h>
#include <stdio.h>

#include "input.cuh"

namespace {

/* float16 travels as its bits (td_dtype F16), widened exactly. */
template <typename T> __device__ inline float widen(T v) { return (float)v; }
template <> __device__ inline float widen<uint16_t>(uint16_t v) {
  return __half2float(__ushort_as_half(v));
}

/* Rounded multiply, then add: no fused multiply-add, so the result is the
 * CPU backend's bit for bit (the C side is built with -ffp-contract=off;
 * the intrinsics say it even where --fmad=false, meson.build, is dropped). */
template <typename T>
__global__ void normalize_kernel(const T *x, float *y, size_t n, float mul, float add) {
  TD_GRID_STRIDE(i, n) y[i] = __fadd_rn(__fmul_rn(widen(x[i]), mul), add);
}

template <typename T>
void launch(td_backend *be, const void *x, float *y, size_t n, float mul, float add) {
  normalize_kernel<T><<<td_cuda_blocks(n), kTdThreads, 0, td_cuda_stream(be)>>>(
      static_cast<const T *>(x), y, n, mul, add);
  TD_CU_CHECK_LAUNCH(be);
}

} // namespace

void td__cuda_normalize(td_backend *be, td_dtype dtype, const void *x, float *y, size_t n,
                        float mul, float add) {
  switch (dtype) {
  case TD_DTYPE_U8: launch<uint8_t>(be, x, y, n, mul, add); break;
  case TD_DTYPE_I32: launch<int32_t>(be, x, y, n, mul, add); break;
  case TD_DTYPE_F16: launch<uint16_t>(be, x, y, n, mul, add); break;
  case TD_DTYPE_F32: launch<float>(be, x, y, n, mul, add); break;
  default: break; /* the wrapper let no other through */
  }
}

int td__cuda_host_register(td_backend *be, void *ptr, size_t bytes, char *err, size_t errlen) {
  cudaError_t e = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable);

  if (e == cudaSuccess)
    return 0;
  (void)cudaGetLastError(); /* a refused registration is not sticky */
  snprintf(err, errlen, "%s: cannot pin %zu bytes of host memory at %p: %s", be->device, bytes,
           ptr, cudaGetErrorString(e));
  return td_cu_code(e);
}

/* Copies from the range may still be queued: they finish first. */
void td__cuda_host_unregister(td_backend *be, void *ptr) {
  TD_CU_CHECK(be, cudaStreamSynchronize(td_cuda_stream(be)));
  TD_CU_CHECK(be, cudaHostUnregister(ptr));
}

void td__cuda_upload_pinned(td_backend *be, void *dst, const void *src, size_t bytes) {
  TD_CU_CHECK(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice,
                                  td_cuda_stream(be)));
}

/* The device set at init is current: one device per worker process. */
int td__cuda_device_mem(td_backend *, uint64_t *total, uint64_t *free_bytes) {
  size_t f = 0, t = 0;
  cudaError_t e = cudaMemGetInfo(&f, &t);

  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return td_cu_code(e) == TD_ECUDA ? TD_ECUDA : TD_EBACKEND;
  }
  *total = t;
  *free_bytes = f;
  return 0;
}
