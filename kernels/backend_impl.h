/* For backend implementations only: the ops table and the handle they share.
 *
 * backend.c owns the budget accounting and the latched error; a backend only
 * moves bytes and runs maths.  Arguments reach an op already checked by the
 * td_backend_* wrapper. */
#ifndef TD_BACKEND_IMPL_H
#define TD_BACKEND_IMPL_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct td_backend_ops {
  td_backend_kind kind;
  void (*destroy)(td_backend *be);
  /* Zeroed memory.  On TD_EOOM *avail may be lowered to what the device
   * itself has free. */
  int (*alloc)(td_backend *be, uint64_t bytes, void **out, uint64_t *avail);
  void (*free)(td_backend *be, void *ptr);
  void (*upload)(td_backend *be, void *dst, const void *src, size_t bytes);
  void (*download)(td_backend *be, void *dst, const void *src, size_t bytes);
  void (*sync)(td_backend *be);

  void (*sgemm)(td_backend *be, bool trans_a, bool trans_b, int m, int n, int k,
                float alpha, const float *a, int lda, const float *b, int ldb, float beta,
                float *c, int ldc);
  void (*fill)(td_backend *be, float *x, size_t n, float value);
  void (*bias_add)(td_backend *be, float *y, const float *bias, size_t rows, size_t cols);
  void (*bias_grad)(td_backend *be, const float *dy, size_t rows, size_t cols, float beta,
                    float *db);
  void (*relu_fwd)(td_backend *be, const float *x, float *y, size_t n);
  void (*relu_bwd)(td_backend *be, const float *y, const float *dy, float *dx, size_t n);
  /* y = x * scale + shift */
  void (*normalize_u8)(td_backend *be, const uint8_t *x, float *y, size_t n, float scale,
                       float shift);
  void (*softmax_xent)(td_backend *be, const float *logits, const uint8_t *labels,
                       size_t rows, size_t classes, float grad_scale, float *dlogits,
                       float *stats);
  /* Adam with the bias corrections folded in by the wrapper:
   * p -= step_size * m / (sqrt(v * inv_bc2) + eps). */
  void (*adam)(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
               float beta1, float beta2, float eps, float weight_decay, float step_size,
               float inv_bc2);
  void (*sgd)(td_backend *be, float *p, const float *g, float *buf, size_t n, float lr,
              float momentum, float weight_decay);
} td_backend_ops;

struct td_backend {
  const td_backend_ops *ops;
  void *impl;           /* the backend's own state */
  char device[16];
  td_mem_stats mem;
  int status;           /* first failure since the last sync */
  char errmsg[256];
};

/* Latch a failure (the first one since the last sync wins). */
void td__backend_fail(td_backend *be, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Each fills be->ops, be->impl and be->mem.overhead; be->device is set. */
int td__backend_cpu_init(td_backend *be, int ordinal, char *err, size_t errlen);
/* Defined only in builds with TD_WITH_CUDA. */
int td__backend_cuda_init(td_backend *be, int ordinal, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
