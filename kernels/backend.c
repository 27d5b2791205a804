#include "backend_impl.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dropout_mask.h"
#include "error.h"
#include "util.h"

#ifndef TD_WITH_CUDA
static int no_cuda(const char *device, char *err, size_t errlen) {
  snprintf(err, errlen, "%s: this traind was built without the CUDA backend "
           "(rebuild with -Dcuda=enabled on a machine with the CUDA toolkit)", device);
  return TD_EBACKEND;
}

static int cuda_missing(td_backend *be, int ordinal, char *err, size_t errlen) {
  return no_cuda(be->device, err, errlen);
}

static int cuda_missing_probe(const char *device, int ordinal, td_device_probe *out, char *err,
                              size_t errlen) {
  return no_cuda(device, err, errlen);
}
#endif

static const struct {
  const char *prefix;
  int (*init)(td_backend *be, int ordinal, char *err, size_t errlen);
  int (*probe)(const char *device, int ordinal, td_device_probe *out, char *err,
               size_t errlen);
} devices[] = {
    {"cpu", td__backend_cpu_init, td__backend_cpu_probe},
#ifdef TD_WITH_CUDA
    {"cuda", td__backend_cuda_init, td__backend_cuda_probe},
#else
    {"cuda", cuda_missing, cuda_missing_probe},
#endif
};

/* "cpu12" -> its table row and 12; -1 if the name is not prefix + 1..3 digits. */
static int parse_device(const char *name, size_t *row, int *ordinal) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(devices); i++) {
    size_t plen = strlen(devices[i].prefix), ndig = 0;
    int v = 0;

    if (strncmp(name, devices[i].prefix, plen) != 0)
      continue;
    for (const char *p = name + plen; *p != '\0'; p++, ndig++) {
      if (*p < '0' || *p > '9' || ndig == 3)
        return -1;
      v = v * 10 + (*p - '0');
    }
    if (ndig == 0)
      return -1;
    *row = i;
    *ordinal = v;
    return 0;
  }
  return -1;
}

/* parse_device with the error message; err is made usable (never NULL). */
static int find_device(const char *device, size_t *row, int *ordinal, char **err,
                       size_t *errlen, char *scratch) {
  if (*err == NULL || *errlen == 0) {
    *err = scratch;
    *errlen = 1;
  }
  (*err)[0] = '\0';
  if (device != NULL && parse_device(device, row, ordinal) == 0)
    return 0;
  snprintf(*err, *errlen, "unknown device '%s' (expected cpuN or cudaN)",
           device != NULL ? device : "(null)");
  return TD_EINVAL;
}

int td_backend_create(const char *device, uint64_t budget, td_backend **out,
                      char *err, size_t errlen) {
  char scratch[1];
  td_backend *be;
  size_t row;
  int ordinal, rc;

  if ((rc = find_device(device, &row, &ordinal, &err, &errlen, scratch)) < 0)
    return rc;
  be = calloc(1, sizeof(*be));
  if (be == NULL)
    return TD_ENOMEM;
  td_strlcpy(be->device, device, sizeof(be->device));
  be->mem.budget = budget;
  rc = devices[row].init(be, ordinal, err, errlen);
  if (rc < 0) {
    free(be);
    return rc;
  }
  *out = be;
  return 0;
}

void td_backend_destroy(td_backend *be) {
  if (be == NULL)
    return;
  while (be->nhosts > 0)
    td_backend_host_unregister(be, (void *)be->hosts[be->nhosts - 1].ptr);
  be->ops->destroy(be);
  free(be);
}

td_backend_kind td_backend_get_kind(const td_backend *be) { return be->ops->kind; }

const char *td_backend_device(const td_backend *be) { return be->device; }

void td__backend_fail(td_backend *be, int code, const char *fmt, ...) {
  va_list ap;

  /* The first failure wins, except that a sticky error (the context is
   * gone) wins over anything before it: an earlier out-of-memory must not
   * hide it until the next step. */
  if (be->status != 0 && (code != TD_ECUDA || be->status == TD_ECUDA))
    return;
  be->status = code;
  va_start(ap, fmt);
  vsnprintf(be->errmsg, sizeof(be->errmsg), fmt, ap);
  va_end(ap);
}

/* Counts a memory request; 0 if it is the one to fail. */
static int fault_due(td_backend *be) {
  return ++be->requests != be->fault_at;
}

/* Whether an op should run: not after a latched failure (its inputs are
 * garbage), and not if it is the injected fault. */
static int op_live(td_backend *be, const char *op) {
  if (be->status != 0)
    return 0;
  if (fault_due(be))
    return 1;
  be->mem.oom_asked = 0;
  be->mem.oom_free = be->mem.budget > be->mem.used ? be->mem.budget - be->mem.used : 0;
  td__backend_fail(be, TD_EOOM, "%s: injected out-of-memory failure in %s (memory.fail_alloc)",
                   be->device, op);
  return 0;
}

int td_backend_alloc(td_backend *be, uint64_t bytes, td_buf *out) {
  uint64_t avail = be->mem.budget > be->mem.used ? be->mem.budget - be->mem.used : 0;
  void *ptr = NULL;
  int rc;

  if (bytes == 0) {
    *out = (td_buf){0};
    return 0;
  }
  if (!fault_due(be)) {
    rc = TD_EOOM;
  } else if (bytes > avail) {
    rc = TD_EOOM;
  } else {
    rc = be->ops->alloc(be, bytes, &ptr, &avail);
  }
  if (rc == TD_EOOM) {
    be->mem.oom_asked = bytes;
    be->mem.oom_free = avail;
  }
  if (rc < 0)
    return rc;
  be->mem.used += bytes;
  if (be->mem.used > be->mem.peak)
    be->mem.peak = be->mem.used;
  *out = (td_buf){.ptr = ptr, .bytes = bytes};
  return 0;
}

void td_backend_free(td_backend *be, td_buf *buf) {
  if (buf == NULL || buf->ptr == NULL)
    return;
  be->ops->free(be, buf->ptr);
  be->mem.used -= buf->bytes;
  *buf = (td_buf){0};
}

void td_backend_mem(const td_backend *be, td_mem_stats *out) { *out = be->mem; }

void td_backend_set_budget(td_backend *be, uint64_t budget) { be->mem.budget = budget; }

void td_backend_inject_oom(td_backend *be, uint64_t nth) {
  be->fault_at = nth == 0 ? 0 : be->requests + nth;
}

int td_backend_status(const td_backend *be) { return be->status; }

void td_backend_upload(td_backend *be, void *dst, const void *src, size_t bytes) {
  if (bytes > 0)
    be->ops->upload(be, dst, src, bytes);
}

void td_backend_download(td_backend *be, void *dst, const void *src, size_t bytes) {
  if (bytes > 0)
    be->ops->download(be, dst, src, bytes);
}

int td_backend_sync(td_backend *be) {
  int rc;

  be->ops->sync(be);
  rc = be->status;
  /* A sticky CUDA error poisons the context: keep reporting it. */
  if (rc != TD_ECUDA)
    be->status = 0;
  return rc;
}

const char *td_backend_error(const td_backend *be) { return be->errmsg; }

void td_backend_sgemm(td_backend *be, bool trans_a, bool trans_b, int m, int n, int k,
                      float alpha, const float *a, int lda, const float *b, int ldb,
                      float beta, float *c, int ldc) {
  if (m > 0 && n > 0 && op_live(be, "sgemm"))
    be->ops->sgemm(be, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void td_backend_fill(td_backend *be, float *x, size_t n, float value) {
  if (n > 0 && op_live(be, "fill"))
    be->ops->fill(be, x, n, value);
}

void td_backend_bias_add(td_backend *be, float *y, const float *bias, size_t rows,
                         size_t cols) {
  if (rows > 0 && cols > 0 && op_live(be, "bias_add"))
    be->ops->bias_add(be, y, bias, rows, cols);
}

void td_backend_bias_grad(td_backend *be, const float *dy, size_t rows, size_t cols,
                          float beta, float *db) {
  if (cols > 0 && op_live(be, "bias_grad"))
    be->ops->bias_grad(be, dy, rows, cols, beta, db);
}

void td_backend_relu_fwd(td_backend *be, const float *x, float *y, size_t n) {
  if (n > 0 && op_live(be, "relu_fwd"))
    be->ops->relu_fwd(be, x, y, n);
}

void td_backend_relu_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t n) {
  if (n > 0 && op_live(be, "relu_bwd"))
    be->ops->relu_bwd(be, y, dy, dx, n);
}

/* y = x * (scale / std) - mean / std, the factors folded in double. */
static void normalize(td_backend *be, const char *op, td_dtype dtype, const void *x, float *y,
                      size_t n, double scale, double mean, double std) {
  float mul = (float)(scale / std), add = (float)(-mean / std);

  if (dtype != TD_DTYPE_U8 && dtype != TD_DTYPE_I32 && dtype != TD_DTYPE_F16 &&
      dtype != TD_DTYPE_F32) {
    td__backend_fail(be, TD_EINVAL, "%s: %s: samples of dtype %d cannot be normalised (uint8, "
                     "int32, float16 or float32)", be->device, op, (int)dtype);
    return;
  }
  if (!isfinite(std) || std == 0.0 || !isfinite(mul) || !isfinite(add)) {
    td__backend_fail(be, TD_EINVAL, "%s: %s: scale %g, mean %g, std %g do not give finite "
                     "factors (std must be finite and non-zero)", be->device, op, scale, mean,
                     std);
    return;
  }
  if (n > 0 && op_live(be, op))
    be->ops->normalize(be, dtype, x, y, n, mul, add);
}

void td_backend_normalize_u8(td_backend *be, const uint8_t *x, float *y, size_t n,
                             float mean, float std) {
  normalize(be, "normalize_u8", TD_DTYPE_U8, x, y, n, 1.0 / 255.0, mean, std);
}

void td_backend_normalize(td_backend *be, td_dtype dtype, const void *x, float *y, size_t n,
                          float scale, float mean, float std) {
  normalize(be, "normalize", dtype, x, y, n, scale, mean, std);
}

void td_backend_softmax_xent(td_backend *be, const float *logits, const int32_t *labels,
                             size_t rows, size_t classes, float grad_scale,
                             float *dlogits, float *stats) {
  td_backend_softmax_xent_smooth(be, logits, labels, rows, classes, 0.0f, grad_scale, dlogits,
                                 stats);
}

void td_backend_loss(td_backend *be, const td_loss_cfg *cfg, const float *logits,
                     const void *targets, size_t rows, size_t width, float *dlogits,
                     float *stats, float *extra) {
  if ((unsigned)cfg->kind >= TD_LOSS__COUNT ||
      !(cfg->smoothing >= 0.0f && cfg->smoothing < 1.0f)) {
    td__backend_fail(be, TD_EINVAL, "%s: loss %d with label smoothing %g is not one it has",
                     be->device, (int)cfg->kind, (double)cfg->smoothing);
    return;
  }
  if (rows > 0 && width > 0 && op_live(be, "loss"))
    be->ops->loss(be, cfg, logits, targets, rows, width, dlogits, stats, extra);
}

void td_backend_adam(td_backend *be, float *param, const float *grad, float *m, float *v,
                     size_t n, const td_adam_hparams *h) {
  double t = (double)(h->step > 0 ? h->step : 1);
  double bc1 = 1.0 - pow((double)h->beta1, t);
  double bc2 = 1.0 - pow((double)h->beta2, t);

  if (n > 0 && op_live(be, "adam"))
    be->ops->adam(be, param, grad, m, v, n, h->beta1, h->beta2, h->eps, h->weight_decay,
                  (float)(h->lr / bc1), (float)(1.0 / bc2));
}

void td_backend_sgd(td_backend *be, float *param, const float *grad, float *buf, size_t n,
                    const td_sgd_hparams *h) {
  if (n > 0 && op_live(be, "sgd"))
    be->ops->sgd(be, param, grad, buf, n, h->lr, h->momentum, h->weight_decay);
}

void td_backend_softmax_xent_smooth(td_backend *be, const float *logits,
                                    const int32_t *labels, size_t rows, size_t classes,
                                    float smoothing, float grad_scale, float *dlogits,
                                    float *stats) {
  td_loss_cfg cfg = {.kind = TD_LOSS_CROSS_ENTROPY, .smoothing = smoothing,
                     .grad_scale = grad_scale};

  if (!(smoothing >= 0.0f && smoothing < 1.0f)) {
    td__backend_fail(be, TD_EINVAL, "%s: label smoothing %g is not in [0, 1)", be->device,
                     (double)smoothing);
    return;
  }
  td_backend_loss(be, &cfg, logits, labels, rows, classes, dlogits, stats, NULL);
}

/* A backend with dense ops of its own fixes their order of additions
 * itself (the CPU's).  Otherwise they are sgemm calls, whose bits depend
 * on the shape (BLAS picks kernels and blocking by it), TD_BLOCK_ROWS rows
 * at a time: a row gets the same bits in any call that starts on a block
 * boundary. */
void td_backend_dense_fwd(td_backend *be, const float *x, const float *w, const float *b,
                          float *y, int n, int in, int out) {
  if (be->ops->dense_fwd != NULL) {
    if (n > 0 && out > 0 && op_live(be, "dense_fwd"))
      be->ops->dense_fwd(be, x, w, b, y, n, in, out);
    return;
  }
  for (int r = 0; r < n; r += TD_BLOCK_ROWS) {
    int rows = n - r < TD_BLOCK_ROWS ? n - r : TD_BLOCK_ROWS;

    td_backend_sgemm(be, false, true, rows, out, in, 1.0f, x + (size_t)r * in, in, w, in,
                     0.0f, y + (size_t)r * out, out);
  }
  if (b != NULL)
    td_backend_bias_add(be, y, b, (size_t)(n > 0 ? n : 0), (size_t)(out > 0 ? out : 0));
}

void td_backend_dense_bwd(td_backend *be, const float *x, const float *w, const float *dy,
                          float *dx, float *dw, float *db, int n, int in, int out, float beta) {
  if (be->ops->dense_bwd != NULL) {
    if (n > 0 && in > 0 && out > 0 && op_live(be, "dense_bwd"))
      be->ops->dense_bwd(be, x, w, dy, dx, dw, n, in, out, beta);
    goto bias;
  }
  /* dw: each block's dy^T x added to the sum so far, in block order */
  for (int r = 0; r < n; r += TD_BLOCK_ROWS) {
    int rows = n - r < TD_BLOCK_ROWS ? n - r : TD_BLOCK_ROWS;

    td_backend_sgemm(be, true, false, out, in, rows, 1.0f, dy + (size_t)r * out, out,
                     x + (size_t)r * in, in, r == 0 ? beta : 1.0f, dw, in);
    if (dx != NULL)
      td_backend_sgemm(be, false, false, rows, in, out, 1.0f, dy + (size_t)r * out, out, w, in,
                       0.0f, dx + (size_t)r * in, in);
  }
bias:
  if (db != NULL)
    td_backend_bias_grad(be, dy, (size_t)(n > 0 ? n : 0), (size_t)(out > 0 ? out : 0), beta,
                         db);
}

int td_conv2d_out(const td_conv2d_desc *d, bool pool, int *oh, int *ow, char *err,
                  size_t errlen) {
  const char *what = pool ? "pooling" : "conv2d";
  char scratch[1];
  int k = pool ? d->c : d->k;
  long long hp = (long long)d->h + 2LL * d->ph, wp = (long long)d->w + 2LL * d->pw;
  long long o_h, o_w;

  if (err == NULL || errlen == 0) {
    err = scratch;
    errlen = sizeof(scratch);
  }
  if (d->n <= 0 || d->c <= 0 || d->h <= 0 || d->w <= 0 || k <= 0 || d->kh <= 0 ||
      d->kw <= 0 || d->sh <= 0 || d->sw <= 0) {
    snprintf(err, errlen, "%s: sizes must be positive (input %dx%dx%dx%d, %d outputs, window "
             "%dx%d, stride %dx%d)", what, d->n, d->c, d->h, d->w, k, d->kh, d->kw, d->sh,
             d->sw);
    return TD_EINVAL;
  }
  if (d->ph < 0 || d->pw < 0 || (pool && (2LL * d->ph > d->kh || 2LL * d->pw > d->kw))) {
    snprintf(err, errlen, "%s: padding %dx%d must be %s", what, d->ph, d->pw,
             pool ? "at most half the window" : "non-negative");
    return TD_EINVAL;
  }
  if (hp < d->kh || wp < d->kw) {
    snprintf(err, errlen, "%s: window %dx%d is larger than the padded input %lldx%lld", what,
             d->kh, d->kw, hp, wp);
    return TD_EINVAL;
  }
  o_h = (hp - d->kh) / d->sh + 1;
  o_w = (wp - d->kw) / d->sw + 1;
  /* Every tensor the op touches stays indexable by int (BLAS, cuDNN). */
  const double sizes[] = {
      (double)d->n * d->c * d->h * d->w,
      (double)d->n * k * o_h * o_w,
      pool ? 0.0 : (double)k * d->c * d->kh * d->kw,
      pool ? 0.0 : (double)d->c * d->kh * d->kw * o_h * o_w, /* im2col */
  };
  for (size_t i = 0; i < TD_ARRAY_SIZE(sizes); i++) {
    if (sizes[i] > (double)INT_MAX) {
      snprintf(err, errlen, "%s: a tensor of %.0f elements is more than %d", what, sizes[i],
               INT_MAX);
      return TD_EINVAL;
    }
  }
  *oh = (int)o_h;
  *ow = (int)o_w;
  return 0;
}

/* Checks the geometry; a bad one latches TD_EINVAL (the op then runs nothing). */
static bool window_ok(td_backend *be, const char *op, const td_conv2d_desc *d, bool pool,
                      int *oh, int *ow) {
  char why[192];

  if (td_conv2d_out(d, pool, oh, ow, why, sizeof(why)) == 0)
    return true;
  td__backend_fail(be, TD_EINVAL, "%s: %s: %s", be->device, op, why);
  return false;
}

int td_backend_conv2d_workspace(td_backend *be, const td_conv2d_desc *d, uint64_t *bytes) {
  int oh, ow;

  if (td_conv2d_out(d, false, &oh, &ow, NULL, 0) < 0)
    return TD_EINVAL;
  return be->ops->conv2d_workspace(be, d, oh, ow, bytes);
}

uint64_t td_conv2d_workspace_cpu(const td_conv2d_desc *d) {
  int oh, ow;

  if (td_conv2d_out(d, false, &oh, &ow, NULL, 0) < 0)
    return 0;
  /* one sample's columns, and room for two partial gradients (dw and db)
   * that the backward pass sums a block of samples into */
  return ((uint64_t)d->c * d->kh * d->kw * oh * ow +
          2 * ((uint64_t)d->k * d->c * d->kh * d->kw + d->k)) * sizeof(float);
}

void td_backend_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, const float *x,
                           const float *w, const float *b, float *y, void *work,
                           uint64_t work_bytes) {
  int oh, ow;

  if (window_ok(be, "conv2d_fwd", d, false, &oh, &ow) && op_live(be, "conv2d_fwd"))
    be->ops->conv2d_fwd(be, d, oh, ow, x, w, b, y, work, work_bytes);
}

void td_backend_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, const float *x,
                           const float *w, const float *dy, float *dx, float *dw, float *db,
                           float beta, void *work, uint64_t work_bytes) {
  int oh, ow;

  if (window_ok(be, "conv2d_bwd", d, false, &oh, &ow) && op_live(be, "conv2d_bwd"))
    be->ops->conv2d_bwd(be, d, oh, ow, x, w, dy, dx, dw, db, beta, work, work_bytes);
}

void td_backend_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d,
                           const float *x, float *y) {
  int oh, ow;

  if (window_ok(be, "pool2d_fwd", d, true, &oh, &ow) && op_live(be, "pool2d_fwd"))
    be->ops->pool2d_fwd(be, mode, d, oh, ow, x, y);
}

void td_backend_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d,
                           const float *x, const float *y, const float *dy, float *dx) {
  int oh, ow;

  if (window_ok(be, "pool2d_bwd", d, true, &oh, &ow) && op_live(be, "pool2d_bwd"))
    be->ops->pool2d_bwd(be, mode, d, oh, ow, x, y, dy, dx);
}

void td_backend_add(td_backend *be, const float *a, const float *b, float *y, size_t n) {
  if (n > 0 && op_live(be, "add"))
    be->ops->add(be, a, b, y, n);
}

void td_backend_copy2d(td_backend *be, const float *src, size_t src_ld, float *dst,
                       size_t dst_ld, size_t rows, size_t cols, float beta) {
  if (rows == 0 || cols == 0 || !op_live(be, "copy2d"))
    return;
  if (src_ld < cols || dst_ld < cols || (beta != 0.0f && beta != 1.0f)) {
    td__backend_fail(be, TD_EINVAL, "%s: copy2d of %zu columns with strides %zu and %zu, "
                     "beta %g", be->device, cols, src_ld, dst_ld, (double)beta);
    return;
  }
  be->ops->copy2d(be, src, src_ld, dst, dst_ld, rows, cols, beta);
}

void td_backend_gelu_fwd(td_backend *be, td_gelu_kind kind, const float *x, float *y,
                         size_t n) {
  if (n > 0 && op_live(be, "gelu_fwd"))
    be->ops->gelu_fwd(be, kind, x, y, n);
}

void td_backend_gelu_bwd(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                         float *dx, size_t n) {
  if (n > 0 && op_live(be, "gelu_bwd"))
    be->ops->gelu_bwd(be, kind, x, dy, dx, n);
}

void td_backend_dropout(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                        float p, const td_dropout_key *key) {
  if (!(p >= 0.0f && p <= 1.0f)) {
    td__backend_fail(be, TD_EINVAL, "%s: dropout probability %g is not in [0, 1]",
                     be->device, (double)p);
    return;
  }
  if (rows > 0 && cols > 0 && op_live(be, "dropout"))
    be->ops->dropout(be, x, y, rows, cols, td__dropout_key(key->seed, key->layer, key->step),
                     key->sample, (uint32_t)ceil((double)p * 16777216.0),
                     p < 1.0f ? 1.0f / (1.0f - p) : 0.0f);
}

static bool batchnorm_ok(td_backend *be, const char *op, const td_batchnorm_desc *d,
                         bool training) {
  if (d->n < 0 || d->c < 0 || d->hw < 0 ||
      (double)d->n * d->c * d->hw > (double)INT_MAX) {
    td__backend_fail(be, TD_EINVAL, "%s: %s: bad size %dx%dx%d", be->device, op, d->n, d->c,
                     d->hw);
    return false;
  }
  /* One value per channel has no variance (PyTorch refuses it too). */
  if (training && (long long)d->n * d->hw == 1) {
    td__backend_fail(be, TD_EINVAL, "%s: %s: training needs more than one value per channel",
                     be->device, op);
    return false;
  }
  return (long long)d->n * d->c * d->hw > 0 && op_live(be, op);
}

void td_backend_batchnorm2d_fwd(td_backend *be, const td_batchnorm_desc *d, bool training,
                                const float *x, float *y, const float *gamma,
                                const float *beta, float *running_mean, float *running_var,
                                float *save_mean, float *save_invstd) {
  if (batchnorm_ok(be, "batchnorm2d_fwd", d, training))
    be->ops->batchnorm2d_fwd(be, d, training, x, y, gamma, beta, running_mean, running_var,
                             save_mean, save_invstd);
}

void td_backend_batchnorm2d_bwd(td_backend *be, const td_batchnorm_desc *d, const float *x,
                                const float *dy, float *dx, const float *gamma,
                                const float *save_mean, const float *save_invstd, float beta,
                                float *dgamma, float *dbeta) {
  if (batchnorm_ok(be, "batchnorm2d_bwd", d, true))
    be->ops->batchnorm2d_bwd(be, d, x, dy, dx, gamma, save_mean, save_invstd, beta, dgamma,
                             dbeta);
}

void td_backend_layernorm_fwd(td_backend *be, const float *x, float *y, size_t rows,
                              size_t cols, const float *gamma, const float *beta, float eps,
                              float *save_mean, float *save_invstd) {
  if (rows > 0 && cols > 0 && op_live(be, "layernorm_fwd"))
    be->ops->layernorm_fwd(be, x, y, rows, cols, gamma, beta, eps, save_mean, save_invstd);
}

void td_backend_layernorm_bwd(td_backend *be, const float *x, const float *dy, float *dx,
                              size_t rows, size_t cols, const float *gamma,
                              const float *save_mean, const float *save_invstd, float beta,
                              float *dgamma, float *dbeta) {
  if (rows > 0 && cols > 0 && op_live(be, "layernorm_bwd"))
    be->ops->layernorm_bwd(be, x, dy, dx, rows, cols, gamma, save_mean, save_invstd, beta,
                           dgamma, dbeta);
}

void td_backend_act_fwd(td_backend *be, td_act_kind kind, const float *x, float *y, size_t n) {
  if (n > 0 && op_live(be, "act_fwd"))
    be->ops->act_fwd(be, kind, x, y, n);
}

void td_backend_act_bwd(td_backend *be, td_act_kind kind, const float *y, const float *dy,
                        float *dx, size_t n) {
  if (n > 0 && op_live(be, "act_bwd"))
    be->ops->act_bwd(be, kind, y, dy, dx, n);
}

void td_backend_softmax_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t dim,
                            size_t inner) {
  if (outer > 0 && dim > 0 && inner > 0 && op_live(be, "softmax_fwd"))
    be->ops->softmax_fwd(be, x, y, outer, dim, inner);
}

void td_backend_softmax_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                            size_t outer, size_t dim, size_t inner) {
  if (outer > 0 && dim > 0 && inner > 0 && op_live(be, "softmax_bwd"))
    be->ops->softmax_bwd(be, y, dy, dx, outer, dim, inner);
}

void td_backend_mean_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t count,
                         size_t inner) {
  if (outer > 0 && count > 0 && inner > 0 && op_live(be, "mean_fwd"))
    be->ops->mean_fwd(be, x, y, outer, count, inner);
}

void td_backend_mean_bwd(td_backend *be, const float *dy, float *dx, size_t outer,
                         size_t count, size_t inner) {
  if (outer > 0 && count > 0 && inner > 0 && op_live(be, "mean_bwd"))
    be->ops->mean_bwd(be, dy, dx, outer, count, inner);
}

/* Rows of a block: TD_BLOCK_ROWS samples, fewer when the call has fewer. */
static int conv1d_block(const td_conv1d_desc *d) {
  return d->n < TD_BLOCK_ROWS ? d->n : TD_BLOCK_ROWS;
}

int td_conv1d_out(const td_conv1d_desc *d, int *ol, char *err, size_t errlen) {
  char scratch[1];
  long long lp = (long long)d->l + 2LL * d->pad, o;

  if (err == NULL || errlen == 0) {
    err = scratch;
    errlen = sizeof(scratch);
  }
  if (d->n <= 0 || d->l <= 0 || d->c <= 0 || d->k <= 0 || d->kw <= 0 || d->stride <= 0 ||
      d->pad < 0) {
    snprintf(err, errlen, "conv1d: sizes must be positive (input %dx%dx%d, %d outputs, window "
             "%d, stride %d, padding %d)", d->n, d->l, d->c, d->k, d->kw, d->stride, d->pad);
    return TD_EINVAL;
  }
  if (lp < d->kw) {
    snprintf(err, errlen, "conv1d: window %d is longer than the padded input %lld", d->kw, lp);
    return TD_EINVAL;
  }
  o = (lp - d->kw) / d->stride + 1;
  /* every matrix the products see stays indexable by int (BLAS, cuBLAS);
   * the whole call's x and y are addressed a block at a time */
  const double sizes[] = {
      (double)d->k * d->c * d->kw,
      (double)conv1d_block(d) * o * d->c * d->kw, /* a block's columns */
      (double)conv1d_block(d) * o * d->k,
      (double)conv1d_block(d) * d->l * d->c,
  };
  for (size_t i = 0; i < TD_ARRAY_SIZE(sizes); i++) {
    if (sizes[i] > (double)INT_MAX) {
      snprintf(err, errlen, "conv1d: a tensor of %.0f elements is more than %d", sizes[i],
               INT_MAX);
      return TD_EINVAL;
    }
  }
  *ol = (int)o;
  return 0;
}

uint64_t td_conv1d_workspace(const td_conv1d_desc *d) {
  int ol;

  if (td_conv1d_out(d, &ol, NULL, 0) < 0)
    return 0;
  return (uint64_t)conv1d_block(d) * ol * d->c * d->kw * sizeof(float);
}

/* Checks the geometry and the workspace; a bad one latches TD_EINVAL. */
static bool conv1d_ok(td_backend *be, const char *op, const td_conv1d_desc *d,
                      uint64_t work_bytes, int *ol) {
  char why[192];

  if (td_conv1d_out(d, ol, why, sizeof(why)) < 0) {
    td__backend_fail(be, TD_EINVAL, "%s: %s: %s", be->device, op, why);
    return false;
  }
  if (work_bytes < td_conv1d_workspace(d)) {
    td__backend_fail(be, TD_EINVAL, "%s: %s: workspace of %llu bytes, %llu needed", be->device,
                     op, (unsigned long long)work_bytes,
                     (unsigned long long)td_conv1d_workspace(d));
    return false;
  }
  return true;
}

static void im2col1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *x, int rows,
                     float *col) {
  if (op_live(be, "im2col1d"))
    be->ops->im2col1d(be, d, ol, x, rows, col);
}

static void col2im1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *col,
                     int rows, float *dx) {
  if (op_live(be, "col2im1d"))
    be->ops->col2im1d(be, d, ol, col, rows, dx);
}

void td_backend_conv1d_fwd(td_backend *be, const td_conv1d_desc *d, const float *x,
                           const float *w, const float *b, float *y, void *work,
                           uint64_t work_bytes) {
  const size_t in_sz = (size_t)d->l * d->c;
  int ol, ck = d->c * d->kw;

  if (!conv1d_ok(be, "conv1d_fwd", d, work_bytes, &ol))
    return;
  for (int r = 0; r < d->n; r += TD_BLOCK_ROWS) {
    int rows = d->n - r < TD_BLOCK_ROWS ? d->n - r : TD_BLOCK_ROWS;

    im2col1d(be, d, ol, x + (size_t)r * in_sz, rows, work);
    td_backend_sgemm(be, false, true, rows * ol, d->k, ck, 1.0f, work, ck, w, ck, 0.0f,
                     y + (size_t)r * ol * d->k, d->k);
  }
  if (b != NULL)
    td_backend_bias_add(be, y, b, (size_t)d->n * ol, (size_t)d->k);
}

void td_backend_conv1d_bwd(td_backend *be, const td_conv1d_desc *d, const float *x,
                           const float *w, const float *dy, float *dx, float *dw, float *db,
                           float beta, void *work, uint64_t work_bytes) {
  const size_t in_sz = (size_t)d->l * d->c;
  int ol, ck = d->c * d->kw;

  if (!conv1d_ok(be, "conv1d_bwd", d, work_bytes, &ol))
    return;
  for (int r = 0; r < d->n; r += TD_BLOCK_ROWS) {
    int rows = d->n - r < TD_BLOCK_ROWS ? d->n - r : TD_BLOCK_ROWS;
    const float *dyb = dy + (size_t)r * ol * d->k;

    /* dw += dy_block^T cols, then the same workspace takes the columns'
     * gradient dy_block w, folded back onto dx */
    im2col1d(be, d, ol, x + (size_t)r * in_sz, rows, work);
    td_backend_sgemm(be, true, false, d->k, ck, rows * ol, 1.0f, dyb, d->k, work, ck,
                     r == 0 ? beta : 1.0f, dw, ck);
    if (dx == NULL)
      continue;
    td_backend_sgemm(be, false, false, rows * ol, ck, d->k, 1.0f, dyb, d->k, w, ck, 0.0f, work,
                     ck);
    col2im1d(be, d, ol, work, rows, dx + (size_t)r * in_sz);
  }
  if (db != NULL)
    td_backend_bias_grad(be, dy, (size_t)d->n * ol, (size_t)d->k, beta, db);
}

void td_backend_embedding_fwd(td_backend *be, const float *ids, const float *w, float *y,
                              size_t rows, size_t vocab, size_t dim) {
  if (rows > 0 && dim > 0 && op_live(be, "embedding_fwd"))
    be->ops->embedding_fwd(be, ids, w, y, rows, vocab, dim);
}

void td_backend_embedding_bwd(td_backend *be, const float *ids, const float *dy, float *dw,
                              size_t rows, size_t vocab, size_t dim, float beta) {
  if (vocab > 0 && dim > 0 && op_live(be, "embedding_bwd"))
    be->ops->embedding_bwd(be, ids, dy, dw, rows, vocab, dim, beta);
}

void td_backend_add_rows(td_backend *be, const float *x, const float *b, float *y, size_t rows,
                         size_t cols) {
  if (rows > 0 && cols > 0 && op_live(be, "add_rows"))
    be->ops->add_rows(be, x, b, y, rows, cols);
}

/* Sizes the ops index with int (BLAS, cuBLAS); a bad one latches TD_EINVAL. */
static bool attention_ok(td_backend *be, const char *op, const td_attention_desc *a) {
  if (a->n < 0 || a->t <= 0 || a->d <= 0 || a->heads <= 0 || a->d % a->heads != 0 ||
      (double)a->n * a->t * 3 * a->d > (double)INT_MAX ||
      (double)a->n * a->heads * a->t * a->t > (double)INT_MAX) {
    td__backend_fail(be, TD_EINVAL, "%s: %s: bad size (%d sequences of %dx%d, %d heads)",
                     be->device, op, a->n, a->t, a->d, a->heads);
    return false;
  }
  return a->n > 0;
}

void td_backend_attention_fwd(td_backend *be, const td_attention_desc *a, const float *x,
                              const float *w, const float *b, float *qkv, float *p, float *o,
                              float *y) {
  int rows = a->n * a->t, d = a->d;

  if (!attention_ok(be, "attention_fwd", a))
    return;
  td_backend_dense_fwd(be, x, w, b, qkv, rows, d, 3 * d);
  if (op_live(be, "attention_fwd"))
    be->ops->attn_fwd(be, a, qkv, p, o);
  td_backend_dense_fwd(be, o, w + (size_t)3 * d * d, b + (size_t)3 * d, y, rows, d, d);
}

void td_backend_attention_bwd(td_backend *be, const td_attention_desc *a, const float *x,
                              const float *w, const float *qkv, const float *p,
                              const float *o, const float *dy, float *dx, float *dw, float *db,
                              float beta, float *dqkv, float *dout, float *dp) {
  int rows = a->n * a->t, d = a->d;
  size_t in_w = (size_t)3 * d * d;

  if (!attention_ok(be, "attention_bwd", a))
    return;
  td_backend_dense_bwd(be, o, w + in_w, dy, dout, dw + in_w, db + (size_t)3 * d, rows, d, d,
                       beta);
  if (op_live(be, "attention_bwd"))
    be->ops->attn_bwd(be, a, qkv, p, dout, dqkv, dp);
  td_backend_dense_bwd(be, x, w, dqkv, dx, dw, db, rows, d, 3 * d, beta);
}

void td_backend_sgd_momentum(td_backend *be, float *param, const float *grad, float *buf,
                             size_t n, const td_sgdm_hparams *h) {
  if (h->nesterov && (h->momentum <= 0.0f || h->dampening != 0.0f)) {
    td__backend_fail(be, TD_EINVAL, "%s: Nesterov momentum needs momentum > 0 and dampening "
                     "0 (momentum %g, dampening %g)", be->device, (double)h->momentum,
                     (double)h->dampening);
    return;
  }
  if (n > 0 && op_live(be, "sgd_momentum"))
    be->ops->sgd_momentum(be, param, grad, buf, n, h->lr, h->momentum, h->dampening,
                          h->weight_decay, h->nesterov, h->step <= 1);
}

void td_backend_adamw(td_backend *be, float *param, const float *grad, float *m, float *v,
                      size_t n, const td_adam_hparams *h) {
  double t = (double)(h->step > 0 ? h->step : 1);
  double bc1 = 1.0 - pow((double)h->beta1, t);
  double bc2 = 1.0 - pow((double)h->beta2, t);

  if (n > 0 && op_live(be, "adamw"))
    be->ops->adamw(be, param, grad, m, v, n, h->beta1, h->beta2, h->eps,
                   (float)(1.0 - (double)h->lr * h->weight_decay), (float)(h->lr / bc1),
                   (float)sqrt(bc2));
}

void td_backend_sumsq(td_backend *be, const float *x, size_t n, float *acc) {
  if (n > 0 && op_live(be, "sumsq"))
    be->ops->sumsq(be, x, n, acc);
}

void td_backend_clip_coef(td_backend *be, float *norm, float max_norm) {
  if (op_live(be, "clip_coef"))
    be->ops->clip_coef(be, norm, max_norm);
}

void td_backend_scale(td_backend *be, float *x, size_t n, float alpha, const float *coef) {
  if (n > 0 && op_live(be, "scale"))
    be->ops->scale(be, x, n, alpha, coef);
}

void td_backend_check_finite(td_backend *be, const float *x, size_t n, float *flag) {
  if (n > 0 && op_live(be, "check_finite"))
    be->ops->check_finite(be, x, n, flag);
}

void td_backend_clip_grad_norm(td_backend *be, float *const *xs, const size_t *ns,
                               size_t count, float max_norm, float *norm) {
  td_backend_fill(be, norm, 2, 0.0f);
  for (size_t i = 0; i < count; i++)
    td_backend_sumsq(be, xs[i], ns[i], norm);
  td_backend_clip_coef(be, norm, max_norm);
  for (size_t i = 0; i < count; i++)
    td_backend_scale(be, xs[i], ns[i], 1.0f, norm + 1);
}

void td_backend_to_half(td_backend *be, td_half_kind kind, const float *x, uint16_t *y,
                        size_t n) {
  if (n > 0 && op_live(be, "to_half"))
    be->ops->to_half(be, kind, x, y, n);
}

void td_backend_from_half(td_backend *be, td_half_kind kind, const uint16_t *x, float *y,
                          size_t n) {
  if (n > 0 && op_live(be, "from_half"))
    be->ops->from_half(be, kind, x, y, n);
}

void td_backend_round_half(td_backend *be, td_half_kind kind, float *x, size_t n) {
  if (n > 0 && op_live(be, "round_half"))
    be->ops->round_half(be, kind, x, n);
}

/* The registered range that holds [p, p + bytes), or NULL. */
static const td_host_region *host_region(const td_backend *be, const void *p, size_t bytes) {
  uintptr_t a = (uintptr_t)p;

  for (unsigned i = 0; i < be->nhosts; i++) {
    uintptr_t s = (uintptr_t)be->hosts[i].ptr;
    if (a >= s && a - s <= be->hosts[i].bytes && bytes <= be->hosts[i].bytes - (a - s))
      return &be->hosts[i];
  }
  return NULL;
}

/* A failure reported by return value, not latched: its message goes to
 * td_backend_error() unless a latched one is waiting there. */
static int refuse(td_backend *be, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(td_backend *be, int code, const char *fmt, ...) {
  va_list ap;

  if (be->status == 0) {
    va_start(ap, fmt);
    vsnprintf(be->errmsg, sizeof(be->errmsg), fmt, ap);
    va_end(ap);
  }
  return code;
}

int td_backend_host_register(td_backend *be, void *ptr, size_t bytes) {
  uintptr_t a = (uintptr_t)ptr;
  char why[sizeof(be->errmsg)];
  int rc;

  if (ptr == NULL || bytes == 0 || bytes > UINTPTR_MAX - a)
    return refuse(be, TD_EINVAL, "%s: host_register: empty or wrapping range (%p, %zu bytes)",
                  be->device, ptr, bytes);
  for (unsigned i = 0; i < be->nhosts; i++) {
    uintptr_t s = (uintptr_t)be->hosts[i].ptr;
    if (a < s + be->hosts[i].bytes && s < a + bytes)
      return refuse(be, TD_EINVAL, "%s: host_register: %p (%zu bytes) overlaps the registered "
                    "range %p (%zu bytes)", be->device, ptr, bytes,
                    (const void *)be->hosts[i].ptr, be->hosts[i].bytes);
  }
  if (be->nhosts == TD_HOST_REGIONS_MAX)
    return refuse(be, TD_ETOOBIG, "%s: host_register: %d ranges are registered already, the "
                  "most a backend keeps", be->device, TD_HOST_REGIONS_MAX);
  why[0] = '\0';
  if ((rc = be->ops->host_register(be, ptr, bytes, why, sizeof(why))) < 0)
    return refuse(be, rc, "%s", why);
  be->hosts[be->nhosts++] = (td_host_region){.ptr = ptr, .bytes = bytes};
  return 0;
}

int td_backend_host_unregister(td_backend *be, void *ptr) {
  for (unsigned i = 0; i < be->nhosts; i++) {
    if (be->hosts[i].ptr != ptr)
      continue;
    be->ops->host_unregister(be, ptr);
    be->hosts[i] = be->hosts[--be->nhosts];
    return 0;
  }
  return refuse(be, TD_EINVAL, "%s: host_unregister: %p does not start a registered range",
                be->device, ptr);
}

void td_backend_upload_async(td_backend *be, void *dst, const void *src, size_t bytes) {
  if (bytes == 0)
    return;
  if (host_region(be, src, bytes) != NULL)
    be->ops->upload_pinned(be, dst, src, bytes);
  else
    be->ops->upload(be, dst, src, bytes);
}

int td_backend_device_mem(td_backend *be, uint64_t *total, uint64_t *free_bytes) {
  return be->ops->device_mem(be, total, free_bytes);
}

int td_backend_probe(const char *device, td_device_probe *out, char *err, size_t errlen) {
  char scratch[1];
  size_t row;
  int ordinal, rc;

  if ((rc = find_device(device, &row, &ordinal, &err, &errlen, scratch)) < 0)
    return rc;
  return devices[row].probe(device, ordinal, out, err, errlen);
}

void td_backend_set_overhead(td_backend *be, uint64_t bytes) { be->mem.overhead = bytes; }
