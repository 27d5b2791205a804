/* Element types of samples as stored, and as they travel to the worker
 * (td_batch_hdr.dtype).  A header of its own so that the compute backends
 * (kernels/) can name a type without including the job parser.
 */
#ifndef TD_DTYPE_H
#define TD_DTYPE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* int64 and float64 occur only in .npy files: int64 labels become class
 * bytes, and int64 and float64 samples become int32 and float32 as they are
 * read (records.c), so samples travel as uint8..float32 only.  Values are
 * kept: they are on the wire and in the job database. */
typedef enum {
  TD_DTYPE_U8 = 0, TD_DTYPE_I32, TD_DTYPE_F16, TD_DTYPE_F32, TD_DTYPE_I64, TD_DTYPE_F64,
  TD_DTYPE__COUNT
} td_dtype;

/* Bytes of one element; 0 for a value outside the enum. */
static inline size_t td_dtype_size(td_dtype t) {
  switch (t) {
  case TD_DTYPE_U8: return 1;
  case TD_DTYPE_F16: return 2;
  case TD_DTYPE_I32: case TD_DTYPE_F32: return 4;
  case TD_DTYPE_I64: case TD_DTYPE_F64: return 8;
  default: return 0;
  }
}

/* "uint8", "int32", "float16", "float32", "int64", "float64"; "unknown" outside
 * the enum. */
const char *td_dtype_name(td_dtype t);

#ifdef __cplusplus
}
#endif

#endif
