/* Input normalisation on the CPU backend: samples in their stored type to
 * fp32, one loop per type so each vectorises. */
#include "cpu_ops.h"

CPU_CLONES
static void norm_u8(const uint8_t *restrict x, float *restrict y, size_t n, float mul,
                    float add) {
  for (size_t i = 0; i < n; i++)
    y[i] = (float)x[i] * mul + add;
}

CPU_CLONES
static void norm_i32(const int32_t *restrict x, float *restrict y, size_t n, float mul,
                     float add) {
  for (size_t i = 0; i < n; i++)
    y[i] = (float)x[i] * mul + add;
}

CPU_CLONES
static void norm_f16(const uint16_t *restrict x, float *restrict y, size_t n, float mul,
                     float add) {
  for (size_t i = 0; i < n; i++)
    y[i] = td_f16_to_f32(x[i]) * mul + add;
}

CPU_CLONES
static void norm_f32(const float *restrict x, float *restrict y, size_t n, float mul,
                     float add) {
  for (size_t i = 0; i < n; i++)
    y[i] = x[i] * mul + add;
}

void td__cpu_normalize(td_backend *be, td_dtype dtype, const void *x, float *y, size_t n,
                       float mul, float add) {
  switch (dtype) {
  case TD_DTYPE_U8: norm_u8(x, y, n, mul, add); break;
  case TD_DTYPE_I32: norm_i32(x, y, n, mul, add); break;
  case TD_DTYPE_F16: norm_f16(x, y, n, mul, add); break;
  case TD_DTYPE_F32: norm_f32(x, y, n, mul, add); break;
  default: break; /* the wrapper let no other through */
  }
}
