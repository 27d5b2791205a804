/* Compute backends: the only way the training code allocates device memory
 * and runs maths.
 *
 * A backend is a vtable of ops behind an opaque handle (kernels/backend_impl.h
 * holds the table; kernels/cpu is the reference every other backend is
 * checked against).  Pointers passed to ops are device addresses from
 * td_backend_alloc (host memory on the CPU backend); matrices are row-major
 * fp32.  Ops are asynchronous and return nothing: a backend latches its first
 * failure and td_backend_sync() reports it, so the training step checks once
 * per step instead of after every launch.
 *
 * Memory: every allocation goes through td_backend_alloc, which enforces the
 * byte budget the backend was created with (the device's VRAM budget given to
 * the worker) and tracks current and peak bytes.
 */
#ifndef TD_BACKEND_H
#define TD_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TD_BUDGET_UNLIMITED UINT64_MAX

typedef struct td_backend td_backend;

typedef enum { TD_BACKEND_CPU = 0, TD_BACKEND_CUDA } td_backend_kind;

/* One device allocation.  An empty buffer (bytes 0, ptr NULL) is valid. */
typedef struct td_buf {
  void *ptr;
  uint64_t bytes;
} td_buf;

typedef struct td_mem_stats {
  uint64_t budget;    /* bytes td_backend_alloc may hand out */
  uint64_t used;      /* bytes allocated now */
  uint64_t peak;      /* most bytes allocated at once */
  uint64_t overhead;  /* per-process bytes outside the allocator (0 on the CPU) */
  uint64_t oom_asked; /* the last TD_EOOM: bytes asked for ... */
  uint64_t oom_free;  /* ... and bytes that were free then */
} td_mem_stats;

/* Open a backend for a device name: "cpu0".."cpuN" (simulated devices on the
 * host) or "cudaN".  TD_EINVAL for a name that is neither; TD_EBACKEND if the
 * device cannot be used (no such GPU, or a traind built without the CUDA
 * backend); TD_ENOMEM.  On failure a one-line reason goes to err (may be
 * NULL).  budget: TD_BUDGET_UNLIMITED for no limit. */
int td_backend_create(const char *device, uint64_t budget, td_backend **out,
                      char *err, size_t errlen);
/* Frees the backend; buffers must have been freed before.  Accepts NULL. */
void td_backend_destroy(td_backend *be);

td_backend_kind td_backend_get_kind(const td_backend *be);
const char *td_backend_device(const td_backend *be); /* "cpu0" */

/* Allocate bytes (zeroed).  TD_EOOM when the budget (or the device) has not
 * enough free: td_backend_mem() then says what was asked and what was free.
 * Allocating 0 bytes gives an empty buffer. */
int td_backend_alloc(td_backend *be, uint64_t bytes, td_buf *out);
/* Free and empty a buffer; an empty one is fine. */
void td_backend_free(td_backend *be, td_buf *buf);
void td_backend_mem(const td_backend *be, td_mem_stats *out);

/* Host <-> device copies; download waits for the ops queued before it. */
void td_backend_upload(td_backend *be, void *dst, const void *src, size_t bytes);
void td_backend_download(td_backend *be, void *dst, const void *src, size_t bytes);
/* Wait for queued ops; return the first failure latched since the last sync
 * (TD_EOOM, TD_EBACKEND; TD_ECUDA stays latched for good) or 0. */
int td_backend_sync(td_backend *be);
/* The message of the last latched failure ("" if none). */
const char *td_backend_error(const td_backend *be);

/* C[m,n] = alpha * op(A)[m,k] op(B)[k,n] + beta * C; lda/ldb/ldc are the row
 * strides of A, B, C as stored.  beta 0 ignores C's old contents. */
void td_backend_sgemm(td_backend *be, bool trans_a, bool trans_b, int m, int n, int k,
                      float alpha, const float *a, int lda, const float *b, int ldb,
                      float beta, float *c, int ldc);

void td_backend_fill(td_backend *be, float *x, size_t n, float value);
/* y[r, c] += bias[c] */
void td_backend_bias_add(td_backend *be, float *y, const float *bias, size_t rows,
                         size_t cols);
/* db[c] = beta * db[c] + sum_r dy[r, c]  (beta 0 ignores db's old contents) */
void td_backend_bias_grad(td_backend *be, const float *dy, size_t rows, size_t cols,
                          float beta, float *db);
/* y = max(x, 0); x == y is fine. */
void td_backend_relu_fwd(td_backend *be, const float *x, float *y, size_t n);
/* dx = y > 0 ? dy : 0, with y the ReLU's output; dy == dx is fine. */
void td_backend_relu_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t n);
/* y = (x / 255 - mean) / std */
void td_backend_normalize_u8(td_backend *be, const uint8_t *x, float *y, size_t n,
                             float mean, float std);
/* Softmax cross-entropy over rows of logits[rows, classes] with uint8 labels
 * (each < classes; the caller checks).  Adds the summed loss to stats[0] and
 * the number of rows whose first arg-max is the label to stats[1].  If
 * dlogits is not NULL it gets (softmax - onehot) * grad_scale. */
void td_backend_softmax_xent(td_backend *be, const float *logits, const uint8_t *labels,
                             size_t rows, size_t classes, float grad_scale,
                             float *dlogits, float *stats);

/* PyTorch's Adam (weight decay added to the gradient, not AdamW); step is the
 * 1-based update count, for the bias corrections. */
typedef struct td_adam_hparams {
  float lr, beta1, beta2, eps, weight_decay;
  uint64_t step;
} td_adam_hparams;
void td_backend_adam(td_backend *be, float *param, const float *grad, float *m, float *v,
                     size_t n, const td_adam_hparams *h);

/* PyTorch's SGD without dampening or Nesterov.  buf (the momentum buffer)
 * starts zeroed and is unused (may be NULL) when momentum is 0. */
typedef struct td_sgd_hparams {
  float lr, momentum, weight_decay;
} td_sgd_hparams;
void td_backend_sgd(td_backend *be, float *param, const float *grad, float *buf, size_t n,
                    const td_sgd_hparams *h);

/* OpenBLAS 0.3.21 does not recognise some newer x86 CPUs (Sapphire Rapids)
 * and falls back to its Prescott kernels, about 3x slower.  This names the
 * OPENBLAS_CORETYPE this CPU should use, or NULL if the detection is fine.
 * The value only takes effect in a process started with it in the
 * environment (OpenBLAS reads it when it loads). */
const char *td_cpu_blas_coretype_hint(void);

#ifdef __cplusplus
}
#endif

#endif
