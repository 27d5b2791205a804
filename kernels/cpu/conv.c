/* Conv2d on the CPU: each sample's input is unrolled into a column matrix
 * (im2col) that one OpenBLAS sgemm multiplies with the weights.  The
 * workspace holds one sample's columns, so it does not grow with the batch. */
#include <cblas.h>
#include <string.h>

#include "cpu_ops.h"
#include "error.h"

/* col[(ci*kh + i)*kw + j][oy*ow + ox] = x[ci][oy*sh - ph + i][ox*sw - pw + j],
 * 0 in the padding.  With dx given, the adjoint instead: col is added back
 * onto dx (x unused). */
static void unroll(const td_conv2d_desc *d, int oh, int ow, const float *x, float *dx,
                   float *col) {
  for (int ci = 0; ci < d->c; ci++) {
    size_t plane = (size_t)ci * d->h * d->w;
    for (int i = 0; i < d->kh; i++) {
      for (int j = 0; j < d->kw; j++) {
        float *row = col + ((size_t)(ci * d->kh + i) * d->kw + j) * oh * ow;
        for (int oy = 0; oy < oh; oy++) {
          int iy = oy * d->sh - d->ph + i;
          float *c = row + (size_t)oy * ow;
          size_t line;
          if (iy < 0 || iy >= d->h) {
            if (dx == NULL)
              memset(c, 0, (size_t)ow * sizeof(float));
            continue;
          }
          line = plane + (size_t)iy * d->w;
          for (int ox = 0; ox < ow; ox++) {
            int ix = ox * d->sw - d->pw + j;
            bool in = ix >= 0 && ix < d->w;
            if (dx == NULL)
              c[ox] = in ? x[line + ix] : 0.0f;
            else if (in)
              dx[line + ix] += c[ox];
          }
        }
      }
    }
  }
}

/* 1x1, stride 1, no padding: the input already is its column matrix. */
static bool is_pointwise(const td_conv2d_desc *d) {
  return d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 && d->ph == 0 && d->pw == 0;
}

int td__cpu_conv2d_workspace(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                             uint64_t *bytes) {
  *bytes = td_conv2d_workspace_cpu(d);
  return 0;
}

static bool workspace_ok(td_backend *be, const char *op, const td_conv2d_desc *d,
                         uint64_t have) {
  uint64_t need = td_conv2d_workspace_cpu(d);

  if (have >= need)
    return true;
  td__backend_fail(be, TD_EINVAL, "%s: %s: workspace of %llu bytes, %llu needed", be->device,
                   op, (unsigned long long)have, (unsigned long long)need);
  return false;
}

void td__cpu_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *b, float *y, void *work,
                        uint64_t work_bytes) {
  const int ckk = d->c * d->kh * d->kw, ohw = oh * ow;
  const size_t in_sz = (size_t)d->c * d->h * d->w, out_sz = (size_t)d->k * ohw;
  bool direct = is_pointwise(d);

  if (!workspace_ok(be, "conv2d_fwd", d, work_bytes))
    return;
  for (int n = 0; n < d->n; n++) {
    const float *col = x + n * in_sz;
    float *yn = y + n * out_sz;

    if (!direct) {
      unroll(d, oh, ow, col, NULL, work);
      col = work;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->k, ohw, ckk, 1.0f, w, ckk, col,
                ohw, 0.0f, yn, ohw);
    for (int k = 0; b != NULL && k < d->k; k++)
      for (int i = 0; i < ohw; i++)
        yn[(size_t)k * ohw + i] += b[k];
  }
}

void td__cpu_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *dy, float *dx, float *dw,
                        float *db, float beta, void *work, uint64_t work_bytes) {
  const int ckk = d->c * d->kh * d->kw, ohw = oh * ow;
  const size_t in_sz = (size_t)d->c * d->h * d->w, out_sz = (size_t)d->k * ohw;
  bool direct = is_pointwise(d);

  if (!workspace_ok(be, "conv2d_bwd", d, work_bytes))
    return;
  for (int n = 0; n < d->n; n++) {
    const float *col = x + n * in_sz, *dyn = dy + n * out_sz;

    /* dw += dy_n col^T, the first sample applying beta */
    if (!direct) {
      unroll(d, oh, ow, col, NULL, work);
      col = work;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d->k, ckk, ohw, 1.0f, dyn, ohw, col,
                ohw, n == 0 ? beta : 1.0f, dw, ckk);
    if (dx == NULL)
      continue;
    /* dx_n = col2im(w^T dy_n) */
    if (direct) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ckk, ohw, d->k, 1.0f, w, ckk, dyn,
                  ohw, 0.0f, dx + n * in_sz, ohw);
      continue;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, ckk, ohw, d->k, 1.0f, w, ckk, dyn,
                ohw, 0.0f, work, ohw);
    memset(dx + n * in_sz, 0, in_sz * sizeof(float));
    unroll(d, oh, ow, NULL, dx + n * in_sz, work);
  }
  for (int k = 0; db != NULL && k < d->k; k++) {
    double s = beta == 0.0f ? 0.0 : (double)beta * db[k];
    for (int n = 0; n < d->n; n++) {
      const float *p = dy + n * out_sz + (size_t)k * ohw;
      for (int i = 0; i < ohw; i++)
        s += p[i];
    }
    db[k] = (float)s;
  }
}
