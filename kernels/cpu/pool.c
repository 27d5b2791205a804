/* Max and average pooling on the CPU, one (sample, channel) plane at a time.
 * The backward pass finds each max window's arg-max again from x, so the
 * forward keeps no index tensor. */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"

/* Window (oy, ox) clipped to the input: rows [y0, y1), columns [x0, x1). */
typedef struct window {
  int y0, y1, x0, x1;
  float inv_count; /* the average's divisor */
} window;

static window window_at(td_pool_mode mode, const td_conv2d_desc *d, int oy, int ox) {
  int ys = oy * d->sh - d->ph, xs = ox * d->sw - d->pw;
  window r = {.y0 = ys < 0 ? 0 : ys, .y1 = ys + d->kh < d->h ? ys + d->kh : d->h,
              .x0 = xs < 0 ? 0 : xs, .x1 = xs + d->kw < d->w ? xs + d->kw : d->w};

  /* floor mode keeps every window inside the padded input: kh * kw with padding */
  r.inv_count = 1.0f / (float)(mode == TD_POOL_AVG ? d->kh * d->kw
                                                   : (r.y1 - r.y0) * (r.x1 - r.x0));
  return r;
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

void td__cpu_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, float *y) {
  const size_t in_sz = (size_t)d->h * d->w, out_sz = (size_t)oh * ow;

  for (size_t p = 0; p < (size_t)d->n * d->c; p++) {
    const float *plane = x + p * in_sz;
    float *out = y + p * out_sz;

    for (int oy = 0; oy < oh; oy++) {
      for (int ox = 0; ox < ow; ox++) {
        window r = window_at(mode, d, oy, ox);
        float s = 0.0f;

        if (mode == TD_POOL_MAX) {
          out[(size_t)oy * ow + ox] = plane[window_argmax(d, plane, r)];
          continue;
        }
        for (int iy = r.y0; iy < r.y1; iy++)
          for (int ix = r.x0; ix < r.x1; ix++)
            s += plane[(size_t)iy * d->w + ix];
        out[(size_t)oy * ow + ox] = s * r.inv_count;
      }
    }
  }
}

void td__cpu_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                        int ow, const float *x, const float *y, const float *dy, float *dx) {
  const size_t in_sz = (size_t)d->h * d->w, out_sz = (size_t)oh * ow;

  memset(dx, 0, (size_t)d->n * d->c * in_sz * sizeof(float));
  for (size_t p = 0; p < (size_t)d->n * d->c; p++) {
    const float *plane = x + p * in_sz, *g = dy + p * out_sz;
    float *dplane = dx + p * in_sz;

    for (int oy = 0; oy < oh; oy++) {
      for (int ox = 0; ox < ow; ox++) {
        window r = window_at(mode, d, oy, ox);
        float v = g[(size_t)oy * ow + ox];

        if (mode == TD_POOL_MAX) {
          dplane[window_argmax(d, plane, r)] += v;
          continue;
        }
        v *= r.inv_count;
        for (int iy = r.y0; iy < r.y1; iy++)
          for (int ix = r.x0; ix < r.x1; ix++)
            dplane[(size_t)iy * d->w + ix] += v;
      }
    }
  }
}
