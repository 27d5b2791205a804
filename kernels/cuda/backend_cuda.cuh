/* Status checks for CUDA runtime, cuBLAS and cuDNN calls.  One macro for
 * every library: it maps the status to a TD_E* code, latches the first
 * failure in the backend with the call's text and place, and evaluates to
 * the code, so callers return it instead of exiting:
 *   out of memory (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED,
 *                  cuDNN's host or device allocation failures)          -> TD_EOOM
 *   sticky errors that poison the context, kernels that died            -> TD_ECUDA
 *   anything else                                                      -> TD_EBACKEND
 *
 * Also the backend's state and the launch helpers every .cu file shares. */
#ifndef TD_BACKEND_CUDA_CUH
#define TD_BACKEND_CUDA_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "backend_impl.h"
#include "error.h"

static inline int td_cu_code(cudaError_t e) {
  switch (e) {
  case cudaSuccess:
    return 0;
  case cudaErrorMemoryAllocation:
    return TD_EOOM;
  case cudaErrorIllegalAddress:
  case cudaErrorLaunchFailure:
  case cudaErrorLaunchTimeout:
  case cudaErrorHardwareStackError:
  case cudaErrorIllegalInstruction:
  case cudaErrorMisalignedAddress:
  case cudaErrorInvalidAddressSpace:
  case cudaErrorInvalidPc:
  case cudaErrorAssert:
  case cudaErrorECCUncorrectable:
  case cudaErrorContextIsDestroyed:
  case cudaErrorUnknown:
  case cudaErrorMpsClientTerminated:
#if CUDART_VERSION >= 13000 /* driver_types.h: "the process must be terminated and relaunched" */
  case cudaErrorContained:
  case cudaErrorTensorMemoryLeak:
  case cudaErrorExternalDevice:
#endif
    return TD_ECUDA;
  default:
    return TD_EBACKEND;
  }
}

static inline const char *td_cu_str(cudaError_t e) { return cudaGetErrorString(e); }

static inline int td_cu_code(cublasStatus_t s) {
  switch (s) {
  case CUBLAS_STATUS_SUCCESS:
    return 0;
  case CUBLAS_STATUS_ALLOC_FAILED:
    return TD_EOOM;
  case CUBLAS_STATUS_EXECUTION_FAILED: /* a kernel died: the context is gone */
    return TD_ECUDA;
  default:
    return TD_EBACKEND;
  }
}

static inline const char *td_cu_str(cublasStatus_t s) { return cublasGetStatusString(s); }

static inline int td_cu_code(cudnnStatus_t s) {
  if (s == CUDNN_STATUS_SUCCESS)
    return 0;
  if (s == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED || /* CUDNN_STATUS_ALLOC_FAILED */
      s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    return TD_EOOM;
  if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_EXECUTION_FAILED) /* a kernel died */
    return TD_ECUDA;
  return TD_EBACKEND;
}

static inline const char *td_cu_str(cudnnStatus_t s) { return cudnnGetErrorString(s); }

template <typename Status>
static inline int td_cu_check(td_backend *be, Status st, const char *expr, const char *file,
                              int line) {
  int rc = td_cu_code(st);

  if (rc < 0)
    td__backend_fail(be, rc, "%s: %s (%s at %s:%d)", be->device, td_cu_str(st), expr, file,
                     line);
  return rc;
}

#define TD_CU_CHECK(be, expr) td_cu_check((be), (expr), #expr, __FILE__, __LINE__)

/* After a kernel launch: a bad configuration shows here, a fault at sync. */
#define TD_CU_CHECK_LAUNCH(be) TD_CU_CHECK((be), cudaGetLastError())

/* cuDNN's algorithms for one convolution geometry, found once. */
struct td_cuda_conv_algos {
  td_conv2d_desc d;
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
  size_t ws_fwd, ws_bwd_data, ws_bwd_filter;
};

/* Geometries whose algorithms are kept: a conv layer runs at its
 * micro-batch, at a smaller last one and (mixed precision) a sample at a
 * time, and the model asks for the workspace of every row count it may run,
 * so 32 thrashed beyond about ten layers; the linear search is nothing next
 * to a cuDNN call. */
#define TD_CUDA_ALGO_CACHE 256

struct td_cuda_impl {
  int ordinal;
  cudaStream_t stream;
  cublasHandle_t blas;
  void *blas_ws;      /* cuBLAS's workspace, ours, then the sumsq partials: see
                         blas_workspace in backend_cuda.cu */
  double *sumsq_part; /* kTdSumsqBlocks per-block sums of td__cuda_sumsq */
  /* cuDNN, with descriptors made once and set per call (ops are serial) */
  cudnnHandle_t dnn;
  cudnnTensorDescriptor_t xdesc, ydesc, bdesc;
  cudnnFilterDescriptor_t wdesc;
  cudnnConvolutionDescriptor_t conv;
  cudnnPoolingDescriptor_t pool;
  td_cuda_conv_algos algos[TD_CUDA_ALGO_CACHE];
  unsigned nalgos; /* entries filled; then the oldest is replaced */
};

static inline td_cuda_impl *td_cuda(td_backend *be) {
  return static_cast<td_cuda_impl *>(be->impl);
}

static inline cudaStream_t td_cuda_stream(td_backend *be) { return td_cuda(be)->stream; }

constexpr int kTdThreads = 256;
/* Blocks of td__cuda_sumsq's first pass (optim.cu): at most one block of
 * the second adds them. */
constexpr int kTdSumsqBlocks = 256;
constexpr size_t kTdMaxBlocks = 65535;

/* Blocks for a grid-stride loop over n elements. */
static inline unsigned td_cuda_blocks(size_t n) {
  size_t b = (n + kTdThreads - 1) / kTdThreads;
  return (unsigned)(b == 0 ? 1 : b < kTdMaxBlocks ? b : kTdMaxBlocks);
}

#define TD_GRID_STRIDE(i, n)                                                     \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);        \
       i += (size_t)blockDim.x * gridDim.x)

/* Storage types: the kernels compute in float and are templates over what
 * they load and store, so bf16 / fp16 variants are one overload each. */
template <typename T> __device__ inline float td_ld(const T *p, size_t i) { return (float)p[i]; }
template <typename T> __device__ inline void td_st(T *p, size_t i, float v) { p[i] = (T)v; }

#endif
