/* Conv2d on the CPU: the input is unrolled into column matrices (im2col)
 * that OpenBLAS sgemm multiplies with the weights.  The workspace holds one
 * sample's columns and two partial gradients (what the planner counts); the
 * backend's lanes each take a slice of it and work through their samples a
 * piece of output positions at a time, so the lanes share nothing but the
 * weights.  The pieces and the blocks of samples whose gradients are summed
 * together are fixed by the geometry, never by the lane count, so the bits
 * are the same on any machine (kernels/backend.h: determinism). */
#include <cblas.h>
#include <string.h>

#include "cpu_ops.h"
#include "error.h"

/* The outputs o in [*lo, *hi) of one axis whose input o*s - pad + i is in [0, size). */
static void valid_span(int out, int size, int s, int pad, int i, int *lo, int *hi) {
  int a = pad - i, b = size - 1 + pad - i;
  int l = a <= 0 ? 0 : (a + s - 1) / s, h = b < 0 ? 0 : b / s + 1;

  h = h < out ? h : out;
  *lo = l < h ? l : h;
  *hi = h;
}

static inline void copy_run(float *restrict dst, const float *restrict src, int n, int s) {
  if (s == 1) {
    memcpy(dst, src, (size_t)n * sizeof(float));
    return;
  }
  for (int q = 0; q < n; q++)
    dst[q] = src[(size_t)q * s];
}

static inline void add_run(float *restrict dst, const float *restrict src, int n, int s) {
  if (s == 1) {
    for (int q = 0; q < n; q++)
      dst[q] += src[q];
    return;
  }
  for (int q = 0; q < n; q++)
    dst[(size_t)q * s] += src[q];
}

/* Positions in [q0, q1) whose column is outside [xlo, xhi): as many as the
 * padding, a row; a loop, as a memset call costs more. */
static void zero_columns(float *c, int ow, int q0, int q1, int xlo, int xhi) {
  for (int q = q0 - q0 % ow; q < q1; q += ow) {
    int lo = q > q0 ? q : q0, hi = q + ow < q1 ? q + ow : q1;

    for (int i = lo; i < hi && i < q + xlo; i++)
      c[i] = 0.0f;
    for (int i = q + xhi > lo ? q + xhi : lo; i < hi; i++)
      c[i] = 0.0f;
  }
}

/* One row of unroll when both strides are 1 and the output is as wide as
 * the input: then position q reads input element q + off of the plane, so
 * the valid rows are one run, the columns that wrap into a neighbouring
 * row being zeroed after the copy (before the add in the adjoint).  c[0] is
 * position p0. */
static void shifted(const td_conv2d_desc *d, const float *x, float *dx, int p0, int p1,
                    float *c, long off, int ylo, int yhi, int xlo, int xhi) {
  const int ow = d->w;
  int q0 = ylo * ow > p0 ? ylo * ow : p0, q1 = yhi * ow < p1 ? yhi * ow : p1;
  long r0 = -off > q0 ? -off : q0, r1 = (long)d->h * d->w - off < q1 ? (long)d->h * d->w - off : q1;

  c -= p0;
  r1 = r1 > r0 ? r1 : r0;
  if (q0 >= q1) {
    if (dx == NULL)
      memset(c + p0, 0, (size_t)(p1 - p0) * sizeof(float));
    return;
  }
  if (dx != NULL) {
    zero_columns(c, ow, q0, q1, xlo, xhi);
    add_run(dx + r0 + off, c + r0, (int)(r1 - r0), 1);
    return;
  }
  memset(c + p0, 0, (size_t)(q0 - p0) * sizeof(float));
  memset(c + q0, 0, (size_t)(r0 - q0) * sizeof(float));
  memcpy(c + r0, x + r0 + off, (size_t)(r1 - r0) * sizeof(float));
  memset(c + r1, 0, (size_t)(q1 - r1) * sizeof(float));
  zero_columns(c, ow, q0, q1, xlo, xhi);
  memset(c + q1, 0, (size_t)(p1 - q1) * sizeof(float));
}

/* The columns of output positions [p0, p1) of one sample:
 * col[(ci*kh + i)*kw + j][p - p0] = x[ci][oy*sh - ph + i][ox*sw - pw + j]
 * for p = oy*ow + ox, 0 in the padding.  With dx given, the adjoint
 * instead: col is added onto dx (x unused).  Each row's valid span is
 * computed once, so the inner loops are plain copies or adds. */
static void unroll(const td_conv2d_desc *d, int oh, int ow, const float *x, float *dx,
                   int p0, int p1, float *col) {
  const int len = p1 - p0;

  for (int ci = 0; ci < d->c; ci++) {
    size_t plane = (size_t)ci * d->h * d->w;
    for (int i = 0; i < d->kh; i++) {
      int ylo, yhi;

      valid_span(oh, d->h, d->sh, d->ph, i, &ylo, &yhi);
      for (int j = 0; j < d->kw; j++) {
        float *row = col + ((size_t)(ci * d->kh + i) * d->kw + j) * len;
        int xlo, xhi, oy = p0 / ow, ox = p0 % ow;

        valid_span(ow, d->w, d->sw, d->pw, j, &xlo, &xhi);
        if (d->sh == 1 && d->sw == 1 && ow == d->w) {
          shifted(d, x == NULL ? NULL : x + plane, dx == NULL ? NULL : dx + plane, p0, p1, row,
                  (long)(i - d->ph) * d->w + (j - d->pw), ylo, yhi, xlo, xhi);
          continue;
        }
        for (int p = p0; p < p1; oy++, ox = 0) {
          int end = ow - ox < p1 - p ? ow : ox + (p1 - p);
          int a = xlo > ox ? xlo : ox, b = xhi < end ? xhi : end;
          float *c = row + (p - p0) - ox; /* c[ox] is position (oy, ox) */
          const size_t line = plane + (size_t)(oy * d->sh - d->ph + i) * d->w;
          const long first = (long)a * d->sw - d->pw + j;

          if (oy < ylo || oy >= yhi || a >= b) {
            if (dx == NULL)
              memset(c + ox, 0, (size_t)(end - ox) * sizeof(float));
          } else if (dx != NULL) {
            add_run(dx + line + first, c + a, b - a, d->sw);
          } else {
            memset(c + ox, 0, (size_t)(a - ox) * sizeof(float));
            copy_run(c + a, x + line + first, b - a, d->sw);
            memset(c + b, 0, (size_t)(end - b) * sizeof(float));
          }
          p += end - ox;
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

/* How the work is cut.  A sample's output positions go in pieces of blk,
 * fixed by the geometry alone (never by the lane count), so a product's
 * shape, and so its bits, is the same on any machine.  The lanes then take
 * what fits the workspace: a slice of columns each (one piece), and in the
 * backward pass a partial gradient each ("extra" floats). */
typedef struct conv_split {
  const td_conv2d_desc *d;
  int oh, ow, ckk, ohw;
  int lanes, blk, nblk;
  size_t slice; /* floats of workspace per lane: columns, then extra */
  bool direct;
} conv_split;

/* Pieces narrower than this make sgemm slow. */
#define CONV_MIN_BLOCK 16
/* Pieces per sample at most: the forward pass can use as many lanes, the
 * backward pass two (one block each); more pieces measured slower (smaller
 * products). */
#define CONV_PIECES 2

static conv_split split_of(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                           size_t extra, int items) {
  conv_split s = {.d = d, .oh = oh, .ow = ow, .ckk = d->c * d->kh * d->kw, .ohw = oh * ow,
                  .direct = is_pointwise(d)};
  uint64_t work = td_conv2d_workspace_cpu(d) / sizeof(float);
  int pieces = s.ohw / CONV_MIN_BLOCK < CONV_PIECES ? s.ohw / CONV_MIN_BLOCK : CONV_PIECES;
  size_t lanes;

  pieces = s.direct || pieces < 1 ? 1 : pieces;
  s.blk = (s.ohw + pieces - 1) / pieces;
  s.nblk = (s.ohw + s.blk - 1) / s.blk;
  s.slice = (s.direct ? 0 : (size_t)s.ckk * s.blk) + extra;
  lanes = s.slice == 0 ? (size_t)td__cpu_lanes(be) : work / s.slice;
  lanes = lanes < (size_t)td__cpu_lanes(be) ? lanes : (size_t)td__cpu_lanes(be);
  lanes = lanes < (size_t)items ? lanes : (size_t)items;
  s.lanes = lanes < 1 ? 1 : (int)lanes;
  return s;
}

/* Block [p0, p1) of sample xn's columns and their row stride: the input
 * itself for a pointwise conv, else unrolled into col. */
static const float *block_cols(const conv_split *s, const float *xn, int p0, int p1,
                               float *col, int *ld) {
  if (s->direct) {
    *ld = s->ohw;
    return xn + p0;
  }
  unroll(s->d, s->oh, s->ow, xn, NULL, p0, p1, col);
  *ld = p1 - p0;
  return col;
}

typedef struct conv_fwd_args {
  conv_split s;
  const float *x, *w, *b;
  float *y, *work;
} conv_fwd_args;

static void conv_fwd_lane(void *arg, int lane) {
  const conv_fwd_args *a = arg;
  const conv_split *s = &a->s;
  const td_conv2d_desc *d = s->d;
  const size_t in_sz = (size_t)d->c * d->h * d->w, out_sz = (size_t)d->k * s->ohw;
  const long items = (long)d->n * s->nblk;
  float *col = a->work + (size_t)lane * s->slice;

  for (long it = items * lane / s->lanes; it < items * (lane + 1) / s->lanes; it++) {
    int n = (int)(it / s->nblk), p0 = (int)(it % s->nblk) * s->blk;
    int p1 = p0 + s->blk < s->ohw ? p0 + s->blk : s->ohw, len = p1 - p0;
    float *yn = a->y + n * out_sz + p0;
    int ldb;
    const float *b = block_cols(s, a->x + n * in_sz, p0, p1, col, &ldb);

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, d->k, len, s->ckk, 1.0f, a->w,
                s->ckk, b, ldb, 0.0f, yn, s->ohw);
    for (int k = 0; a->b != NULL && k < d->k; k++)
      td__cpu_add_scalar(yn + (size_t)k * s->ohw, a->b[k], (size_t)len);
  }
}

void td__cpu_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *b, float *y, void *work,
                        uint64_t work_bytes) {
  conv_fwd_args a = {.x = x, .w = w, .b = b, .y = y, .work = work};

  if (!workspace_ok(be, "conv2d_fwd", d, work_bytes))
    return;
  a.s = split_of(be, d, oh, ow, 0, d->n * 4);
  a.s.lanes = a.s.lanes < d->n * a.s.nblk ? a.s.lanes : d->n * a.s.nblk;
  td__cpu_parallel(be, a.s.lanes, conv_fwd_lane, &a);
}

typedef struct conv_bwd_args {
  conv_split s;
  const float *x, *w, *dy;
  float *dx, *work;
  bool db;
  int first; /* the round's first block */
} conv_bwd_args;

/* Block first + lane (TD_BLOCK_ROWS samples): its dx, and its dw and db
 * summed from zero into the lane's partial, which the caller adds to the
 * total in block order. */
static void conv_bwd_lane(void *arg, int lane) {
  const conv_bwd_args *a = arg;
  const conv_split *s = &a->s;
  const td_conv2d_desc *d = s->d;
  const size_t in_sz = (size_t)d->c * d->h * d->w, out_sz = (size_t)d->k * s->ohw;
  float *col = a->work + (size_t)lane * s->slice;
  float *dw = col + (s->direct ? 0 : (size_t)s->ckk * s->blk);
  float *db = a->db ? dw + (size_t)d->k * s->ckk : NULL;
  int n0 = (a->first + lane) * TD_BLOCK_ROWS;
  int n1 = n0 + TD_BLOCK_ROWS < d->n ? n0 + TD_BLOCK_ROWS : d->n;
  float beta = 0.0f;

  for (int k = 0; db != NULL && k < d->k; k++)
    db[k] = 0.0f;
  for (int n = n0; n < n1; n++) {
    const float *xn = a->x + n * in_sz, *dyn = a->dy + n * out_sz;
    float *dxn = a->dx == NULL ? NULL : a->dx + n * in_sz;

    if (dxn != NULL && !s->direct)
      memset(dxn, 0, in_sz * sizeof(float));
    for (int p0 = 0; p0 < s->ohw; p0 += s->blk) {
      int p1 = p0 + s->blk < s->ohw ? p0 + s->blk : s->ohw, len = p1 - p0, ldb;
      const float *cb = block_cols(s, xn, p0, p1, col, &ldb);

      /* dw += dy_n col^T, the block's first product starting it */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, d->k, s->ckk, len, 1.0f, dyn + p0,
                  s->ohw, cb, ldb, beta, dw, s->ckk);
      beta = 1.0f;
      if (dxn == NULL)
        continue;
      /* dx_n = col2im(w^T dy_n) */
      if (s->direct) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->ckk, len, d->k, 1.0f, a->w,
                    s->ckk, dyn + p0, s->ohw, 0.0f, dxn + p0, s->ohw);
        continue;
      }
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->ckk, len, d->k, 1.0f, a->w,
                  s->ckk, dyn + p0, s->ohw, 0.0f, col, len);
      unroll(d, s->oh, s->ow, NULL, dxn, p0, p1, col);
    }
    for (int k = 0; db != NULL && k < d->k; k++)
      db[k] += td__cpu_sum(dyn + (size_t)k * s->ohw, (size_t)s->ohw);
  }
}

/* total = beta total + part (beta 0: part alone) */
static void fold(float *total, const float *part, size_t n, float beta) {
  if (beta == 1.0f) {
    td__cpu_add(total, part, n);
    return;
  }
  for (size_t i = 0; i < n; i++)
    total[i] = (beta == 0.0f ? 0.0f : beta * total[i]) + part[i];
}

/* Rounds of as many blocks as there are lanes; after each, the blocks'
 * partial sums go onto dw and db in block order, so neither the lane count
 * nor where a micro-batch starts (on a block boundary) changes a bit. */
void td__cpu_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                        const float *x, const float *w, const float *dy, float *dx, float *dw,
                        float *db, float beta, void *work, uint64_t work_bytes) {
  conv_bwd_args a = {.x = x, .w = w, .dy = dy, .dx = dx, .work = work, .db = db != NULL};
  int blocks = (d->n + TD_BLOCK_ROWS - 1) / TD_BLOCK_ROWS;
  size_t nw;

  if (!workspace_ok(be, "conv2d_bwd", d, work_bytes))
    return;
  nw = (size_t)d->k * d->c * d->kh * d->kw;
  a.s = split_of(be, d, oh, ow, nw + d->k, blocks);
  for (a.first = 0; a.first < blocks; a.first += a.s.lanes) {
    int lanes = blocks - a.first < a.s.lanes ? blocks - a.first : a.s.lanes;

    td__cpu_parallel(be, lanes, conv_bwd_lane, &a);
    for (int l = 0; l < lanes; l++) {
      const float *pw = a.work + (size_t)l * a.s.slice +
                        (a.s.direct ? 0 : (size_t)a.s.ckk * a.s.blk);

      fold(dw, pw, nw, beta);
      if (db != NULL)
        fold(db, pw + nw, (size_t)d->k, beta);
      beta = 1.0f;
    }
  }
}
