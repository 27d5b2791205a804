/* Status checks for CUDA runtime and cuBLAS calls (cuDNN: add its pair of
 * overloads here).  One macro for every library: it maps the status to a
 * TD_E* code, latches the first failure in the backend with the call's text
 * and place, and evaluates to the code, so callers return it instead of
 * exiting:
 *   out of memory (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED) -> TD_EOOM
 *   sticky errors that poison the context                              -> TD_ECUDA
 *   anything else                                                      -> TD_EBACKEND */
#ifndef TD_BACKEND_CUDA_CUH
#define TD_BACKEND_CUDA_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>

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

#endif
