/* The CPU backend: OpenBLAS for sgemm, plain loops for the rest.  It is the
 * reference the other backends are checked against, and it simulates a
 * device's memory budget for machines without a GPU. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_ops.h"
#include "error.h"

#define CPU_ALIGN 64

static void cpu_destroy(td_backend *be) {}

static int cpu_alloc(td_backend *be, uint64_t bytes, void **out, uint64_t *avail) {
  void *p;

  if (bytes > SIZE_MAX || posix_memalign(&p, CPU_ALIGN, (size_t)bytes) != 0)
    return TD_EOOM;
  memset(p, 0, (size_t)bytes);
  *out = p;
  return 0;
}

static void cpu_free(td_backend *be, void *ptr) { free(ptr); }

static void cpu_copy(td_backend *be, void *dst, const void *src, size_t bytes) {
  memcpy(dst, src, bytes);
}

static void cpu_sync(td_backend *be) {}

static void cpu_sgemm(td_backend *be, bool trans_a, bool trans_b, int m, int n, int k,
                      float alpha, const float *a, int lda, const float *b, int ldb,
                      float beta, float *c, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta,
              c, ldc);
}

CPU_CLONES
static void cpu_fill(td_backend *be, float *x, size_t n, float value) {
  for (size_t i = 0; i < n; i++)
    x[i] = value;
}

CPU_CLONES
static void cpu_bias_add(td_backend *be, float *restrict y, const float *restrict bias,
                         size_t rows, size_t cols) {
  for (size_t r = 0; r < rows; r++) {
    float *restrict row = y + r * cols;
    for (size_t c = 0; c < cols; c++)
      row[c] += bias[c];
  }
}

CPU_CLONES
static void cpu_bias_grad(td_backend *be, const float *restrict dy, size_t rows,
                          size_t cols, float beta, float *restrict db) {
  for (size_t c = 0; c < cols; c++)
    db[c] = beta == 0.0f ? 0.0f : beta * db[c];
  for (size_t r = 0; r < rows; r++) {
    const float *restrict row = dy + r * cols;
    for (size_t c = 0; c < cols; c++)
      db[c] += row[c];
  }
}

CPU_CLONES
static void cpu_relu_fwd(td_backend *be, const float *x, float *y, size_t n) {
  for (size_t i = 0; i < n; i++)
    y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

CPU_CLONES
static void cpu_relu_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t n) {
  for (size_t i = 0; i < n; i++)
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* With smoothing s the target is (1 - s) onehot + s / classes: the loss is
 * lse - (1 - s) z[label] - s mean(z). */
static void cpu_softmax_xent(td_backend *be, const float *logits, const uint8_t *labels,
                             size_t rows, size_t classes, float smoothing, float grad_scale,
                             float *dlogits, float *stats) {
  const float off = smoothing / (float)classes, on = 1.0f - smoothing + off;
  double loss = 0.0;
  size_t correct = 0;

  for (size_t r = 0; r < rows; r++) {
    const float *z = logits + r * classes;
    size_t label = labels[r], best = 0;
    float max = z[0], sum = 0.0f, zsum = 0.0f;

    for (size_t c = 1; c < classes; c++) {
      if (z[c] > max) {
        max = z[c];
        best = c;
      }
    }
    for (size_t c = 0; c < classes; c++) {
      sum += expf(z[c] - max);
      zsum += z[c];
    }
    if (label >= classes) { /* the caller checks labels; never read out of bounds */
      if (dlogits != NULL)
        memset(dlogits + r * classes, 0, classes * sizeof(float));
      continue;
    }
    loss += (double)(logf(sum) + max - (1.0f - smoothing) * z[label] -
                     smoothing * zsum / (float)classes);
    correct += best == label;
    if (dlogits != NULL) {
      float *d = dlogits + r * classes;
      float inv = grad_scale / sum;
      for (size_t c = 0; c < classes; c++)
        d[c] = expf(z[c] - max) * inv - off * grad_scale;
      d[label] -= (on - off) * grad_scale;
    }
  }
  stats[0] += (float)loss;
  stats[1] += (float)correct;
}

CPU_CLONES
static void cpu_adam(td_backend *be, float *restrict p, const float *restrict g,
                     float *restrict m, float *restrict v, size_t n, float beta1,
                     float beta2, float eps, float weight_decay, float step_size,
                     float inv_bc2) {
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] + weight_decay * p[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step_size * mi / (sqrtf(vi * inv_bc2) + eps);
  }
}

CPU_CLONES
static void cpu_sgd(td_backend *be, float *restrict p, const float *restrict g,
                    float *restrict buf, size_t n, float lr, float momentum,
                    float weight_decay) {
  if (momentum == 0.0f) {
    for (size_t i = 0; i < n; i++)
      p[i] -= lr * (g[i] + weight_decay * p[i]);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    float b = momentum * buf[i] + g[i] + weight_decay * p[i];
    buf[i] = b;
    p[i] -= lr * b;
  }
}

/* Host memory needs no pinning. */
static int cpu_host_register(td_backend *be, void *ptr, size_t bytes, char *err,
                             size_t errlen) {
  return 0;
}

static void cpu_host_unregister(td_backend *be, void *ptr) {}

/* The host's RAM and MemAvailable: the CPU devices' memory. */
static int host_mem(uint64_t *total, uint64_t *avail) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  unsigned long long kib = 0;
  bool found = false;
  char line[128];
  FILE *f;

  if (pages <= 0 || page <= 0)
    return TD_EIO;
  f = fopen("/proc/meminfo", "r");
  while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL)
    found = sscanf(line, "MemAvailable: %llu kB", &kib) == 1;
  if (f != NULL)
    fclose(f);
  if (!found) { /* no /proc, or a kernel before 3.14: free pages, a lower figure */
    long avphys = sysconf(_SC_AVPHYS_PAGES);
    if (avphys < 0)
      return TD_EIO;
    kib = (unsigned long long)avphys * (unsigned long long)page / 1024;
  }
  *total = (uint64_t)pages * (uint64_t)page;
  *avail = kib * 1024 < *total ? kib * 1024 : *total;
  return 0;
}

static int cpu_device_mem(td_backend *be, uint64_t *total, uint64_t *free_bytes) {
  return host_mem(total, free_bytes);
}

int td__backend_cpu_probe(const char *device, int ordinal, td_device_probe *out, char *err,
                          size_t errlen) {
  uint64_t total, avail;

  if (host_mem(&total, &avail) < 0) {
    snprintf(err, errlen, "%s: cannot read the host's memory size (sysconf)", device);
    return TD_EIO;
  }
  *out = (td_device_probe){.total = total, .free = avail, .overhead = 0};
  return 0;
}

static const td_backend_ops cpu_ops = {
    .kind = TD_BACKEND_CPU,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .sgemm = cpu_sgemm,
    .fill = cpu_fill,
    .bias_add = cpu_bias_add,
    .bias_grad = cpu_bias_grad,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .softmax_xent = cpu_softmax_xent,
    .adam = cpu_adam,
    .sgd = cpu_sgd,
    .conv2d_workspace = td__cpu_conv2d_workspace,
    .conv2d_fwd = td__cpu_conv2d_fwd,
    .conv2d_bwd = td__cpu_conv2d_bwd,
    .pool2d_fwd = td__cpu_pool2d_fwd,
    .pool2d_bwd = td__cpu_pool2d_bwd,
    .gelu_fwd = td__cpu_gelu_fwd,
    .gelu_bwd = td__cpu_gelu_bwd,
    .dropout = td__cpu_dropout,
    .batchnorm2d_fwd = td__cpu_batchnorm2d_fwd,
    .batchnorm2d_bwd = td__cpu_batchnorm2d_bwd,
    .layernorm_fwd = td__cpu_layernorm_fwd,
    .layernorm_bwd = td__cpu_layernorm_bwd,
    .sgd_momentum = td__cpu_sgd_momentum,
    .adamw = td__cpu_adamw,
    .sumsq = td__cpu_sumsq,
    .clip_coef = td__cpu_clip_coef,
    .scale = td__cpu_scale,
    .check_finite = td__cpu_check_finite,
    .to_half = td__cpu_to_half,
    .from_half = td__cpu_from_half,
    .round_half = td__cpu_round_half,
    .normalize = td__cpu_normalize,
    .host_register = cpu_host_register,
    .host_unregister = cpu_host_unregister,
    .upload_pinned = cpu_copy,
    .device_mem = cpu_device_mem,
};

int td__backend_cpu_init(td_backend *be, int ordinal, char *err, size_t errlen) {
  be->ops = &cpu_ops;
  be->impl = NULL;
  be->mem.overhead = 0;
  return 0;
}

const char *td_cpu_blas_coretype_hint(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const char *const weak[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                     "Atom", "Katmai", "Coppermine", "Northwood", "Banias",
                                     "Sandybridge"};
  const char *name = openblas_get_corename();
  const char *want = NULL;
  bool is_weak = false;

  for (size_t i = 0; name != NULL && i < sizeof(weak) / sizeof(weak[0]); i++)
    is_weak |= strcmp(name, weak[i]) == 0;
  if (!is_weak)
    return NULL;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    want = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    want = "Haswell";
  return want != NULL && strcmp(want, name) != 0 ? want : NULL;
#else
  return NULL;
#endif
}
