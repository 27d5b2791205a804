#include "dtype.h"

static const char *const dtype_names[TD_DTYPE__COUNT] = {
    [TD_DTYPE_U8] = "uint8", [TD_DTYPE_I32] = "int32", [TD_DTYPE_F16] = "float16",
    [TD_DTYPE_F32] = "float32", [TD_DTYPE_I64] = "int64",
    [TD_DTYPE_F64] = "float64",
};

const char *td_dtype_name(td_dtype t) {
  return (unsigned)t < TD_DTYPE__COUNT ? dtype_names[t] : "unknown";
}
