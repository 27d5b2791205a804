/* The CPU backend's ops that live outside backend_cpu.c (one file per op
 * family), for its ops table.  Same contracts as the td_backend_ops members. */
#ifndef TD_CPU_OPS_H
#define TD_CPU_OPS_H

#include "backend_impl.h"

/* The element-wise loops are memory-bound and auto-vectorised (kernels are
 * built with -fno-math-errno and the dynamic cost model); cloning them lets
 * one binary use AVX-512 or AVX2 where the CPU has it. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef CPU_CLONES
#define CPU_CLONES
#endif

/* backend_cpu.c: the lanes (threads, the caller's included) parallel work
 * is cut into, fixed for the backend's life so results do not depend on
 * timing.  td__cpu_parallel runs fn(arg, lane) for lane in [0, lanes), lane
 * 0 on the caller, and returns when all are done; OpenBLAS runs one thread
 * inside each lane. */
typedef void td__cpu_task(void *arg, int lane);
int td__cpu_lanes(const td_backend *be);
void td__cpu_parallel(td_backend *be, int lanes, td__cpu_task *fn, void *arg);

/* Lane `lane` of `lanes`'s share [*lo, *hi) of n items cut on multiples of
 * unit (16 floats: the vector loops' blocks stay whole).  Work whose items
 * are independent (elements, a norm's rows or channels) keeps its bits
 * whatever the lane count. */
static inline void td__cpu_share(size_t n, size_t unit, int lane, int lanes, size_t *lo,
                                 size_t *hi) {
  size_t units = (n + unit - 1) / unit;
  size_t a = units * (size_t)lane / (size_t)lanes * unit;
  size_t b = units * (size_t)(lane + 1) / (size_t)lanes * unit;

  *lo = a < n ? a : n;
  *hi = b < n ? b : n;
}

/* conv.c */
int td__cpu_conv2d_workspace(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                             uint64_t *bytes);
void td__cpu_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *b, float *y, void *work,
                        uint64_t work_bytes);
void td__cpu_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *dy, float *dx, float *dw,
                        float *db, float beta, void *work, uint64_t work_bytes);

/* dense.c */
void td__cpu_dense_fwd(td_backend *be, const float *x, const float *w, const float *b,
                       float *y, int n, int in, int out);
void td__cpu_dense_bwd(td_backend *be, const float *x, const float *w, const float *dy,
                       float *dx, float *dw, int n, int in, int out, float beta);
/* testing: true keeps the dense ops off their AVX-512 tiles (the bits are
 * the same; tests check that they are) */
void td__cpu_dense_portable(bool on);

/* pool.c */
void td__cpu_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, float *y);
void td__cpu_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, const float *y, const float *dy, float *dx);

/* pool.c: global average pooling */
void td__cpu_mean_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t count,
                      size_t inner);
void td__cpu_mean_bwd(td_backend *be, const float *dy, float *dx, size_t outer, size_t count,
                      size_t inner);

/* seq1d.c */
void td__cpu_im2col1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *x,
                      int rows, float *col);
void td__cpu_col2im1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *col,
                      int rows, float *dx);

/* act.c */
void td__cpu_gelu_fwd(td_backend *be, td_gelu_kind kind, const float *x, float *y, size_t n);
void td__cpu_gelu_bwd(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                      float *dx, size_t n);
void td__cpu_dropout(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                     uint64_t key, uint64_t sample, uint32_t threshold, float scale);
void td__cpu_act_fwd(td_backend *be, td_act_kind kind, const float *x, float *y, size_t n);
void td__cpu_act_bwd(td_backend *be, td_act_kind kind, const float *y, const float *dy,
                     float *dx, size_t n);
void td__cpu_softmax_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t dim,
                         size_t inner);
void td__cpu_softmax_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t outer, size_t dim, size_t inner);
/* x += v; x += y; the sum of x in a fixed order */
void td__cpu_add_scalar(float *x, float v, size_t n);
void td__cpu_add(float *x, const float *y, size_t n);
float td__cpu_sum(const float *x, size_t n);

/* norm.c */
void td__cpu_batchnorm2d_fwd(td_backend *be, const td_batchnorm_desc *d, bool training,
                             const float *x, float *y, const float *gamma, const float *beta,
                             float *running_mean, float *running_var, float *save_mean,
                             float *save_invstd);
void td__cpu_batchnorm2d_bwd(td_backend *be, const td_batchnorm_desc *d, const float *x,
                             const float *dy, float *dx, const float *gamma,
                             const float *save_mean, const float *save_invstd, float beta,
                             float *dgamma, float *dbeta);
void td__cpu_layernorm_fwd(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                           const float *gamma, const float *beta, float eps, float *save_mean,
                           float *save_invstd);
void td__cpu_layernorm_bwd(td_backend *be, const float *x, const float *dy, float *dx,
                           size_t rows, size_t cols, const float *gamma,
                           const float *save_mean, const float *save_invstd, float beta,
                           float *dgamma, float *dbeta);

/* seq.c */
void td__cpu_embedding_fwd(td_backend *be, const float *ids, const float *w, float *y,
                           size_t rows, size_t vocab, size_t dim);
void td__cpu_embedding_bwd(td_backend *be, const float *ids, const float *dy, float *dw,
                           size_t rows, size_t vocab, size_t dim, float beta);
void td__cpu_add_rows(td_backend *be, const float *x, const float *b, float *y, size_t rows,
                      size_t cols);
void td__cpu_attn_fwd(td_backend *be, const td_attention_desc *a, const float *qkv, float *p,
                      float *o);
void td__cpu_attn_bwd(td_backend *be, const td_attention_desc *a, const float *qkv,
                      const float *p, const float *dout, float *dqkv, float *dp);

/* optim.c */
void td__cpu_sgd_momentum(td_backend *be, float *p, const float *g, float *buf, size_t n,
                          float lr, float momentum, float dampening, float weight_decay,
                          bool nesterov, bool first);
void td__cpu_adamw(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                   float beta1, float beta2, float eps, float decay, float step_size,
                   float bc2_sqrt);
void td__cpu_sumsq(td_backend *be, const float *x, size_t n, float *acc);
void td__cpu_clip_coef(td_backend *be, float *norm, float max_norm);
void td__cpu_scale(td_backend *be, float *x, size_t n, float alpha, const float *coef);
void td__cpu_check_finite(td_backend *be, const float *x, size_t n, float *flag);
void td__cpu_to_half(td_backend *be, td_half_kind kind, const float *x, uint16_t *y, size_t n);
void td__cpu_from_half(td_backend *be, td_half_kind kind, const uint16_t *x, float *y,
                       size_t n);
void td__cpu_round_half(td_backend *be, td_half_kind kind, float *x, size_t n);

/* graph.c */
void td__cpu_sum2(td_backend *be, const float *a, const float *b, float *y, size_t n);
void td__cpu_copy2d(td_backend *be, const float *src, size_t src_ld, float *dst, size_t dst_ld,
                    size_t rows, size_t cols, float beta);

/* input.c */
void td__cpu_normalize(td_backend *be, td_dtype dtype, const void *x, float *y, size_t n,
                       float mul, float add);

#endif
