#include "backend_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"

#ifndef TD_WITH_CUDA
static int cuda_missing(td_backend *be, int ordinal, char *err, size_t errlen) {
  snprintf(err, errlen, "%s: this traind was built without the CUDA backend "
           "(rebuild with -Dcuda=enabled on a machine with the CUDA toolkit)", be->device);
  return TD_EBACKEND;
}
#endif

static const struct {
  const char *prefix;
  int (*init)(td_backend *be, int ordinal, char *err, size_t errlen);
} devices[] = {
    {"cpu", td__backend_cpu_init},
#ifdef TD_WITH_CUDA
    {"cuda", td__backend_cuda_init},
#else
    {"cuda", cuda_missing},
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

int td_backend_create(const char *device, uint64_t budget, td_backend **out,
                      char *err, size_t errlen) {
  char scratch[1];
  td_backend *be;
  size_t row;
  int ordinal, rc;

  if (err == NULL || errlen == 0) {
    err = scratch;
    errlen = sizeof(scratch);
  }
  err[0] = '\0';
  if (device == NULL || parse_device(device, &row, &ordinal) < 0) {
    snprintf(err, errlen, "unknown device '%s' (expected cpuN or cudaN)",
             device != NULL ? device : "(null)");
    return TD_EINVAL;
  }
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
  be->ops->destroy(be);
  free(be);
}

td_backend_kind td_backend_get_kind(const td_backend *be) { return be->ops->kind; }

const char *td_backend_device(const td_backend *be) { return be->device; }

void td__backend_fail(td_backend *be, int code, const char *fmt, ...) {
  va_list ap;

  if (be->status != 0)
    return;
  be->status = code;
  va_start(ap, fmt);
  vsnprintf(be->errmsg, sizeof(be->errmsg), fmt, ap);
  va_end(ap);
}

int td_backend_alloc(td_backend *be, uint64_t bytes, td_buf *out) {
  uint64_t avail = be->mem.budget - be->mem.used;
  void *ptr = NULL;
  int rc;

  if (bytes == 0) {
    *out = (td_buf){0};
    return 0;
  }
  if (bytes > avail) {
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
  if (m > 0 && n > 0)
    be->ops->sgemm(be, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void td_backend_fill(td_backend *be, float *x, size_t n, float value) {
  if (n > 0)
    be->ops->fill(be, x, n, value);
}

void td_backend_bias_add(td_backend *be, float *y, const float *bias, size_t rows,
                         size_t cols) {
  if (rows > 0 && cols > 0)
    be->ops->bias_add(be, y, bias, rows, cols);
}

void td_backend_bias_grad(td_backend *be, const float *dy, size_t rows, size_t cols,
                          float beta, float *db) {
  if (cols > 0)
    be->ops->bias_grad(be, dy, rows, cols, beta, db);
}

void td_backend_relu_fwd(td_backend *be, const float *x, float *y, size_t n) {
  if (n > 0)
    be->ops->relu_fwd(be, x, y, n);
}

void td_backend_relu_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t n) {
  if (n > 0)
    be->ops->relu_bwd(be, y, dy, dx, n);
}

void td_backend_normalize_u8(td_backend *be, const uint8_t *x, float *y, size_t n,
                             float mean, float std) {
  if (n > 0)
    be->ops->normalize_u8(be, x, y, n, 1.0f / (255.0f * std), -mean / std);
}

void td_backend_softmax_xent(td_backend *be, const float *logits, const uint8_t *labels,
                             size_t rows, size_t classes, float grad_scale,
                             float *dlogits, float *stats) {
  if (rows > 0 && classes > 0)
    be->ops->softmax_xent(be, logits, labels, rows, classes, grad_scale, dlogits, stats);
}

void td_backend_adam(td_backend *be, float *param, const float *grad, float *m, float *v,
                     size_t n, const td_adam_hparams *h) {
  double t = (double)(h->step > 0 ? h->step : 1);
  double bc1 = 1.0 - pow((double)h->beta1, t);
  double bc2 = 1.0 - pow((double)h->beta2, t);

  if (n > 0)
    be->ops->adam(be, param, grad, m, v, n, h->beta1, h->beta2, h->eps, h->weight_decay,
                  (float)(h->lr / bc1), (float)(1.0 / bc2));
}

void td_backend_sgd(td_backend *be, float *param, const float *grad, float *buf, size_t n,
                    const td_sgd_hparams *h) {
  if (n > 0)
    be->ops->sgd(be, param, grad, buf, n, h->lr, h->momentum, h->weight_decay);
}
