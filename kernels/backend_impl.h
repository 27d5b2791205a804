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
  /* every loss (lossrow.h); extra may be NULL */
  void (*loss)(td_backend *be, const td_loss_cfg *cfg, const float *logits,
               const void *targets, size_t rows, size_t width, float *dlogits, float *stats,
               float *extra);
  /* Adam with the bias corrections folded in by the wrapper:
   * p -= step_size * m / (sqrt(v * inv_bc2) + eps). */
  void (*adam)(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
               float beta1, float beta2, float eps, float weight_decay, float step_size,
               float inv_bc2);
  void (*sgd)(td_backend *be, float *p, const float *g, float *buf, size_t n, float lr,
              float momentum, float weight_decay);
  /* Dense products with a fixed order of additions of the backend's own
   * (kernels/cpu/dense.c), or NULL: backend.c then composes them of sgemm
   * calls TD_BLOCK_ROWS rows at a time.  dense_fwd adds b unless it is
   * NULL; dense_bwd leaves db to bias_grad and skips dx when it is NULL. */
  void (*dense_fwd)(td_backend *be, const float *x, const float *w, const float *b, float *y,
                    int n, int in, int out);
  void (*dense_bwd)(td_backend *be, const float *x, const float *w, const float *dy, float *dx,
                    float *dw, int n, int in, int out, float beta);

  /* Layers.  The geometry is checked; oh, ow are the output's. */
  int (*conv2d_workspace)(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                          uint64_t *bytes);
  void (*conv2d_fwd)(td_backend *be, const td_conv2d_desc *d, int oh, int ow, const float *x,
                     const float *w, const float *b, float *y, void *work,
                     uint64_t work_bytes);
  void (*conv2d_bwd)(td_backend *be, const td_conv2d_desc *d, int oh, int ow, const float *x,
                     const float *w, const float *dy, float *dx, float *dw, float *db,
                     float beta, void *work, uint64_t work_bytes);
  void (*pool2d_fwd)(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                     int ow, const float *x, float *y);
  void (*pool2d_bwd)(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                     int ow, const float *x, const float *y, const float *dy, float *dx);
  void (*gelu_fwd)(td_backend *be, td_gelu_kind kind, const float *x, float *y, size_t n);
  void (*gelu_bwd)(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                   float *dx, size_t n);
  /* y = x * scale where td__dropout_keep(key, sample + row, col, threshold),
   * else 0 (kernels/dropout_mask.h) */
  void (*dropout)(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                  uint64_t key, uint64_t sample, uint32_t threshold, float scale);
  void (*batchnorm2d_fwd)(td_backend *be, const td_batchnorm_desc *d, bool training,
                          const float *x, float *y, const float *gamma, const float *beta,
                          float *running_mean, float *running_var, float *save_mean,
                          float *save_invstd);
  void (*batchnorm2d_bwd)(td_backend *be, const td_batchnorm_desc *d, const float *x,
                          const float *dy, float *dx, const float *gamma,
                          const float *save_mean, const float *save_invstd, float beta,
                          float *dgamma, float *dbeta);
  void (*layernorm_fwd)(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                        const float *gamma, const float *beta, float eps, float *save_mean,
                        float *save_invstd);
  void (*layernorm_bwd)(td_backend *be, const float *x, const float *dy, float *dx,
                        size_t rows, size_t cols, const float *gamma,
                        const float *save_mean, const float *save_invstd, float beta,
                        float *dgamma, float *dbeta);
  void (*act_fwd)(td_backend *be, td_act_kind kind, const float *x, float *y, size_t n);
  void (*act_bwd)(td_backend *be, td_act_kind kind, const float *y, const float *dy,
                  float *dx, size_t n);
  void (*softmax_fwd)(td_backend *be, const float *x, float *y, size_t outer, size_t dim,
                      size_t inner);
  void (*softmax_bwd)(td_backend *be, const float *y, const float *dy, float *dx,
                      size_t outer, size_t dim, size_t inner);
  void (*mean_fwd)(td_backend *be, const float *x, float *y, size_t outer, size_t count,
                   size_t inner);
  void (*mean_bwd)(td_backend *be, const float *dy, float *dx, size_t outer, size_t count,
                   size_t inner);
  /* conv1d's columns of samples [0, rows) of x (d's geometry, ol outputs):
   * col[s*ol + o, ci*kw + j] = x[s, o*stride - pad + j, ci], 0 outside; and
   * the adjoint, dx[s, p, ci] = the sum over j in order of col at the
   * (o, j) with o*stride - pad + j = p (dx overwritten). */
  void (*im2col1d)(td_backend *be, const td_conv1d_desc *d, int ol, const float *x, int rows,
                   float *col);
  void (*col2im1d)(td_backend *be, const td_conv1d_desc *d, int ol, const float *col,
                   int rows, float *dx);

  /* Graphs: y = a + b; dst = src (beta 0) or dst += src (beta 1), row by row */
  void (*add)(td_backend *be, const float *a, const float *b, float *y, size_t n);
  void (*copy2d)(td_backend *be, const float *src, size_t src_ld, float *dst, size_t dst_ld,
                 size_t rows, size_t cols, float beta);

  /* Sequences.  attn_fwd: from qkv, p and o; attn_bwd: from qkv, p and dout,
   * dqkv, with dp [n, t, t] as scratch (the projections are the wrapper's). */
  void (*embedding_fwd)(td_backend *be, const float *ids, const float *w, float *y,
                        size_t rows, size_t vocab, size_t dim);
  void (*embedding_bwd)(td_backend *be, const float *ids, const float *dy, float *dw,
                        size_t rows, size_t vocab, size_t dim, float beta);
  void (*add_rows)(td_backend *be, const float *x, const float *b, float *y, size_t rows,
                   size_t cols);
  void (*attn_fwd)(td_backend *be, const td_attention_desc *a, const float *qkv, float *p,
                   float *o);
  void (*attn_bwd)(td_backend *be, const td_attention_desc *a, const float *qkv,
                   const float *p, const float *dout, float *dqkv, float *dp);

  /* Optimisers.  sgd_momentum: first is step 1 (the buffer starts as d).
   * adamw: decay = 1 - lr weight_decay, step_size = lr / bc1, and
   * bc2_sqrt = sqrt(1 - beta2^step): p = p decay - step_size m / (sqrt(v) /
   * bc2_sqrt + eps), PyTorch's order of operations. */
  void (*sgd_momentum)(td_backend *be, float *p, const float *g, float *buf, size_t n,
                       float lr, float momentum, float dampening, float weight_decay,
                       bool nesterov, bool first);
  void (*adamw)(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                float beta1, float beta2, float eps, float decay, float step_size,
                float bc2_sqrt);
  void (*sumsq)(td_backend *be, const float *x, size_t n, float *acc);
  void (*clip_coef)(td_backend *be, float *norm, float max_norm);
  void (*scale)(td_backend *be, float *x, size_t n, float alpha, const float *coef);
  void (*check_finite)(td_backend *be, const float *x, size_t n, float *flag);
  void (*to_half)(td_backend *be, td_half_kind kind, const float *x, uint16_t *y, size_t n);
  void (*from_half)(td_backend *be, td_half_kind kind, const uint16_t *x, float *y,
                    size_t n);
  void (*round_half)(td_backend *be, td_half_kind kind, float *x, size_t n);

  /* Input staging.  normalize: y = x * scale + shift, dtype checked.
   * host_register: pin the range (CPU: nothing), a reason in err on failure;
   * the range is new and does not overlap another.  upload_pinned: the
   * asynchronous copy from a registered range. */
  void (*normalize)(td_backend *be, td_dtype dtype, const void *x, float *y, size_t n,
                    float scale, float shift);
  int (*host_register)(td_backend *be, void *ptr, size_t bytes, char *err, size_t errlen);
  void (*host_unregister)(td_backend *be, void *ptr);
  void (*upload_pinned)(td_backend *be, void *dst, const void *src, size_t bytes);
  int (*device_mem)(td_backend *be, uint64_t *total, uint64_t *free_bytes);
} td_backend_ops;

/* A host range registered with td_backend_host_register. */
typedef struct td_host_region {
  const char *ptr;
  size_t bytes;
} td_host_region;

struct td_backend {
  const td_backend_ops *ops;
  void *impl;           /* the backend's own state */
  char device[16];
  td_mem_stats mem;
  int status;           /* first failure since the last sync */
  char errmsg[256];
  uint64_t requests;    /* memory requests so far (allocations and ops) */
  uint64_t fault_at;    /* testing: this request fails with TD_EOOM; 0 = never */
  td_host_region hosts[TD_HOST_REGIONS_MAX];
  unsigned nhosts;
};

/* Latch a failure (the first one since the last sync wins, but TD_ECUDA,
 * sticky, replaces any other). */
void td__backend_fail(td_backend *be, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Each fills be->ops, be->impl and be->mem.overhead; be->device is set. */
int td__backend_cpu_init(td_backend *be, int ordinal, char *err, size_t errlen);
/* Defined only in builds with TD_WITH_CUDA. */
int td__backend_cuda_init(td_backend *be, int ordinal, char *err, size_t errlen);

/* td_backend_probe for one kind of device; device is its whole name. */
int td__backend_cpu_probe(const char *device, int ordinal, td_device_probe *out, char *err,
                          size_t errlen);
int td__backend_cuda_probe(const char *device, int ordinal, td_device_probe *out, char *err,
                           size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
