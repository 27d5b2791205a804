/* Max and average pooling on the CPU, (sample, channel) planes split over
 * the backend's lanes, and global average pooling (a mean per plane or per
 * sequence feature).  The backward pass finds each max window's arg-max
 * again from x, so the forward keeps no index tensor.  On a tie the first
 * largest element in row-major order of the window wins (padding never). */
#include <string.h>

#include "cpu_ops.h"

/* Window (oy, ox) clipped to the input: rows [y0, y1), columns [x0, x1). */
typedef struct window {
  int y0, y1, x0, x1;
} window;

static window window_at(const td_conv2d_desc *d, int oy, int ox) {
  int ys = oy * d->sh - d->ph, xs = ox * d->sw - d->pw;

  return (window){.y0 = ys < 0 ? 0 : ys, .y1 = ys + d->kh < d->h ? ys + d->kh : d->h,
                  .x0 = xs < 0 ? 0 : xs, .x1 = xs + d->kw < d->w ? xs + d->kw : d->w};
}

/* Index in the plane of the window's first largest element. */
static size_t window_argmax(const td_conv2d_desc *d, const float *plane, window r) {
  size_t best = (size_t)r.y0 * d->w + r.x0;

  for (int iy = r.y0; iy < r.y1; iy++)
    for (int ix = r.x0; ix < r.x1; ix++)
      if (plane[(size_t)iy * d->w + ix] > plane[best])
        best = (size_t)iy * d->w + ix;
  return best;
}

/* Windows that tile the input without padding or overlap (the usual 2x2/2):
 * each input cell is in at most one window. */
static bool is_tiling(const td_conv2d_desc *d) {
  return d->kh == d->sh && d->kw == d->sw && d->ph == 0 && d->pw == 0;
}

typedef struct pool_args {
  td_pool_mode mode;
  const td_conv2d_desc *d;
  int oh, ow, lanes;
  const float *x, *dy;
  float *y, *dx;
} pool_args;

/* The max of the window at (oy, ox) when windows tile: its first row's
 * first element, replaced by each later one only when larger. */
CPU_CLONES
static void max_tiles_fwd(const td_conv2d_desc *d, int oh, int ow, const float *plane,
                          float *out) {
  for (int oy = 0; oy < oh; oy++) {
    float *o = out + (size_t)oy * ow;

    for (int ox = 0; ox < ow; ox++)
      o[ox] = plane[(size_t)oy * d->sh * d->w + (size_t)ox * d->sw];
    for (int i = 0; i < d->kh; i++) {
      const float *row = plane + ((size_t)oy * d->sh + i) * d->w;

      for (int j = i == 0 ? 1 : 0; j < d->kw; j++)
        for (int ox = 0; ox < ow; ox++) {
          float v = row[(size_t)ox * d->sw + j];
          o[ox] = v > o[ox] ? v : o[ox];
        }
    }
  }
}

/* max_tiles_bwd for 2x2 windows without a branch on the data (a window's
 * arg-max is as likely at any corner; outputs are too narrow to vectorise). */
static void max_2x2_bwd(const td_conv2d_desc *d, int oh, int ow, const float *plane,
                        const float *g, float *dplane) {
  for (int oy = 0; oy < oh; oy++) {
    const float *r0 = plane + (size_t)2 * oy * d->w, *r1 = r0 + d->w;
    const float *go = g + (size_t)oy * ow;
    float *d0 = dplane + (size_t)2 * oy * d->w;

    memset(d0, 0, (size_t)2 * d->w * sizeof(float));
    for (int ox = 0; ox < ow; ox++) {
      float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], e = r1[2 * ox + 1];
      float m1 = b > a ? b : a, m2 = c > m1 ? c : m1;
      int at = b > a;

      at = c > m1 ? d->w : at;
      at = e > m2 ? d->w + 1 : at;
      d0[2 * ox + at] = go[ox];
    }
  }
  memset(dplane + (size_t)2 * oh * d->w, 0, (size_t)(d->h - 2 * oh) * d->w * sizeof(float));
}

/* Each input cell written once: the window's gradient at its arg-max, 0
 * elsewhere and outside every window. */
static void max_tiles_bwd(const td_conv2d_desc *d, int oh, int ow, const float *plane,
                          const float *g, float *dplane) {
  for (int oy = 0; oy < oh; oy++) {
    const float *top = plane + (size_t)oy * d->sh * d->w;
    float *dtop = dplane + (size_t)oy * d->sh * d->w;

    for (int i = 0; i < d->kh; i++)
      memset(dtop + (size_t)i * d->w, 0, (size_t)d->w * sizeof(float));
    for (int ox = 0; ox < ow; ox++) {
      size_t best = (size_t)ox * d->sw;
      float max = top[best];

      for (int i = 0; i < d->kh; i++)
        for (int j = 0; j < d->kw; j++) {
          size_t at = (size_t)i * d->w + (size_t)ox * d->sw + j;
          if (top[at] > max) {
            max = top[at];
            best = at;
          }
        }
      dtop[best] = g[(size_t)oy * ow + ox];
    }
  }
  memset(dplane + (size_t)oh * d->sh * d->w, 0,
         (size_t)(d->h - oh * d->sh) * d->w * sizeof(float));
}

/* 1 / the average's divisor for window r.  Floor mode keeps every window
 * inside the padded input, so with padding counted it is kh * kw; the
 * count without changes only at the edges, so c keeps the last reciprocal. */
typedef struct scale_cache {
  int count;
  float inv;
} scale_cache;

static float avg_scale(td_pool_mode mode, const td_conv2d_desc *d, window r, scale_cache *c) {
  int count = mode == TD_POOL_AVG ? d->kh * d->kw : (r.y1 - r.y0) * (r.x1 - r.x0);

  if (count != c->count) {
    c->count = count;
    c->inv = 1.0f / (float)count;
  }
  return c->inv;
}

static void plane_fwd(const pool_args *a, const float *plane, float *out, scale_cache *cache) {
  const td_conv2d_desc *d = a->d;

  if (a->mode == TD_POOL_MAX && is_tiling(d)) {
    max_tiles_fwd(d, a->oh, a->ow, plane, out);
    return;
  }
  for (int oy = 0; oy < a->oh; oy++) {
    for (int ox = 0; ox < a->ow; ox++) {
      window r = window_at(d, oy, ox);
      float s = 0.0f;

      if (a->mode == TD_POOL_MAX) {
        out[(size_t)oy * a->ow + ox] = plane[window_argmax(d, plane, r)];
        continue;
      }
      for (int iy = r.y0; iy < r.y1; iy++)
        for (int ix = r.x0; ix < r.x1; ix++)
          s += plane[(size_t)iy * d->w + ix];
      out[(size_t)oy * a->ow + ox] = s * avg_scale(a->mode, d, r, cache);
    }
  }
}

static void plane_bwd(const pool_args *a, const float *plane, const float *g, float *dplane,
                      scale_cache *cache) {
  const td_conv2d_desc *d = a->d;

  if (a->mode == TD_POOL_MAX && is_tiling(d) && d->kh == 2 && d->kw == 2) {
    max_2x2_bwd(d, a->oh, a->ow, plane, g, dplane);
    return;
  }
  if (a->mode == TD_POOL_MAX && is_tiling(d)) {
    max_tiles_bwd(d, a->oh, a->ow, plane, g, dplane);
    return;
  }
  memset(dplane, 0, (size_t)d->h * d->w * sizeof(float));
  for (int oy = 0; oy < a->oh; oy++) {
    for (int ox = 0; ox < a->ow; ox++) {
      window r = window_at(d, oy, ox);
      float v = g[(size_t)oy * a->ow + ox];

      if (a->mode == TD_POOL_MAX) {
        dplane[window_argmax(d, plane, r)] += v;
        continue;
      }
      v *= avg_scale(a->mode, d, r, cache);
      for (int iy = r.y0; iy < r.y1; iy++)
        for (int ix = r.x0; ix < r.x1; ix++)
          dplane[(size_t)iy * d->w + ix] += v;
    }
  }
}

/* The forward, or with dx the backward, of lane `lane`'s planes. */
static void pool_lane(void *arg, int lane) {
  const pool_args *a = arg;
  const size_t in_sz = (size_t)a->d->h * a->d->w, out_sz = (size_t)a->oh * a->ow;
  size_t planes = (size_t)a->d->n * a->d->c;
  scale_cache cache = {0, 0.0f};

  for (size_t p = planes * lane / a->lanes; p < planes * (lane + 1) / a->lanes; p++) {
    if (a->dx != NULL)
      plane_bwd(a, a->x + p * in_sz, a->dy + p * out_sz, a->dx + p * in_sz, &cache);
    else
      plane_fwd(a, a->x + p * in_sz, a->y + p * out_sz, &cache);
  }
}

/* Small tensors are not worth waking the other lanes for. */
#define POOL_MIN_PER_LANE 4096

static int pool_lanes(td_backend *be, const td_conv2d_desc *d) {
  size_t elems = (size_t)d->n * d->c * d->h * d->w, planes = (size_t)d->n * d->c;
  size_t lanes = (size_t)td__cpu_lanes(be);

  lanes = elems / POOL_MIN_PER_LANE < lanes ? elems / POOL_MIN_PER_LANE : lanes;
  lanes = planes < lanes ? planes : lanes;
  return lanes < 1 ? 1 : (int)lanes;
}

void td__cpu_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, float *y) {
  pool_args a = {.mode = mode, .d = d, .oh = oh, .ow = ow, .lanes = pool_lanes(be, d),
                 .x = x, .y = y};

  td__cpu_parallel(be, a.lanes, pool_lane, &a);
}

void td__cpu_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, const float *y, const float *dy, float *dx) {
  pool_args a = {.mode = mode, .d = d, .oh = oh, .ow = ow, .lanes = pool_lanes(be, d),
                 .x = x, .dy = dy, .dx = dx};

  td__cpu_parallel(be, a.lanes, pool_lane, &a);
}

/* Global average pooling: each output a sum over count in order, the rows
 * of a line added one after another (so inner sums vectorise across the
 * line without changing any element's order), then divided by count. */
CPU_CLONES
void td__cpu_mean_fwd(td_backend *be, const float *restrict x, float *restrict y, size_t outer,
                      size_t count, size_t inner) {
  for (size_t o = 0; o < outer; o++) {
    float *restrict yo = y + o * inner;
    const float *xo = x + o * count * inner;

    for (size_t i = 0; i < inner; i++)
      yo[i] = xo[i];
    for (size_t r = 1; r < count; r++)
      for (size_t i = 0; i < inner; i++)
        yo[i] += xo[r * inner + i];
    for (size_t i = 0; i < inner; i++)
      yo[i] /= (float)count;
  }
}

CPU_CLONES
void td__cpu_mean_bwd(td_backend *be, const float *restrict dy, float *restrict dx,
                      size_t outer, size_t count, size_t inner) {
  for (size_t o = 0; o < outer; o++)
    for (size_t r = 0; r < count; r++)
      for (size_t i = 0; i < inner; i++)
        dx[(o * count + r) * inner + i] = dy[o * inner + i] / (float)count;
}
