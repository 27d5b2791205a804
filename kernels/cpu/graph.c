/* The joins of a model graph on the CPU backend: add's element-wise sum and
 * the strided copies of concat and of gradients summed over a fan-out.
 * Each element is one addition of its own, so neither the threads nor how a
 * batch is cut change a bit. */
#include "cpu_ops.h"

CPU_CLONES
void td__cpu_sum2(td_backend *be, const float *a, const float *b, float *y, size_t n) {
  for (size_t i = 0; i < n; i++)
    y[i] = a[i] + b[i];
}

CPU_CLONES
void td__cpu_copy2d(td_backend *be, const float *src, size_t src_ld, float *dst, size_t dst_ld,
                    size_t rows, size_t cols, float beta) {
  for (size_t r = 0; r < rows; r++) {
    const float *s = src + r * src_ld;
    float *d = dst + r * dst_ld;

    if (beta == 0.0f) {
      for (size_t c = 0; c < cols; c++)
        d[c] = s[c];
    } else {
      for (size_t c = 0; c < cols; c++)
        d[c] += s[c];
    }
  }
}
