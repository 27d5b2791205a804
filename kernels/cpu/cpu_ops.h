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

/* conv.c */
int td__cpu_conv2d_workspace(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                             uint64_t *bytes);
void td__cpu_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *b, float *y, void *work,
                        uint64_t work_bytes);
void td__cpu_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *dy, float *dx, float *dw,
                        float *db, float beta, void *work, uint64_t work_bytes);

/* pool.c */
void td__cpu_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, float *y);
void td__cpu_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, const float *y, const float *dy, float *dx);

/* act.c */
void td__cpu_gelu_fwd(td_backend *be, td_gelu_kind kind, const float *x, float *y, size_t n);
void td__cpu_gelu_bwd(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                      float *dx, size_t n);
void td__cpu_dropout(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                     uint64_t key, uint64_t sample, uint32_t threshold, float scale);

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

#endif
