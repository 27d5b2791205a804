/* conv1d's column ops on the CPU (the products are sgemm's: kernels/backend.c
 * composes them).  Sequences are channels last, [l, c] per sample, so a
 * column row gathers a window's positions channel by channel, as nn.Conv1d's
 * weight [k, c, kw] reads them.  The lanes take whole samples: what a sample
 * gets never depends on the lane count. */
#include <string.h>

#include "cpu_ops.h"

typedef struct col1d_args {
  const td_conv1d_desc *d;
  int ol, rows, lanes;
  const float *src;
  float *dst;
} col1d_args;

static void im2col1d_lane(void *arg, int lane) {
  const col1d_args *a = arg;
  const td_conv1d_desc *d = a->d;
  const size_t ck = (size_t)d->c * d->kw, in_sz = (size_t)d->l * d->c;

  for (int s = a->rows * lane / a->lanes; s < a->rows * (lane + 1) / a->lanes; s++) {
    const float *xs = a->src + s * in_sz;

    for (int o = 0; o < a->ol; o++) {
      float *row = a->dst + ((size_t)s * a->ol + o) * ck;
      int p0 = o * d->stride - d->pad;

      for (int ci = 0; ci < d->c; ci++)
        for (int j = 0; j < d->kw; j++)
          row[ci * d->kw + j] =
              p0 + j >= 0 && p0 + j < d->l ? xs[(size_t)(p0 + j) * d->c + ci] : 0.0f;
    }
  }
}

/* dx[s, p, ci]: the windows o that hold p, in the order of their offset j */
static void col2im1d_lane(void *arg, int lane) {
  const col1d_args *a = arg;
  const td_conv1d_desc *d = a->d;
  const size_t ck = (size_t)d->c * d->kw, in_sz = (size_t)d->l * d->c;

  for (int s = a->rows * lane / a->lanes; s < a->rows * (lane + 1) / a->lanes; s++) {
    float *dxs = a->dst + s * in_sz;
    const float *cs = a->src + (size_t)s * a->ol * ck;

    memset(dxs, 0, in_sz * sizeof(float));
    for (int p = 0; p < d->l; p++) {
      for (int j = 0; j < d->kw; j++) {
        int q = p + d->pad - j, o = q / d->stride;

        if (q < 0 || q % d->stride != 0 || o >= a->ol)
          continue;
        for (int ci = 0; ci < d->c; ci++)
          dxs[(size_t)p * d->c + ci] += cs[(size_t)o * ck + (size_t)ci * d->kw + j];
      }
    }
  }
}

static void run(td_backend *be, td__cpu_task *fn, col1d_args *a) {
  int lanes = td__cpu_lanes(be);

  a->lanes = lanes < a->rows ? lanes : a->rows;
  td__cpu_parallel(be, a->lanes, fn, a);
}

void td__cpu_im2col1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *x,
                      int rows, float *col) {
  col1d_args a = {.d = d, .ol = ol, .rows = rows, .src = x, .dst = col};

  run(be, im2col1d_lane, &a);
}

void td__cpu_col2im1d(td_backend *be, const td_conv1d_desc *d, int ol, const float *col,
                      int rows, float *dx) {
  col1d_args a = {.d = d, .ol = ol, .rows = rows, .src = col, .dst = dx};

  run(be, col2im1d_lane, &a);
}
