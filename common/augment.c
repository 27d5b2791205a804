#include "augment.h"

#include <stdio.h>
#include <string.h>

#include "dropout_mask.h"
#include "error.h"
#include "half.h"

td_dtype td_aug_out_dtype(const td_jobspec *spec, td_dtype in) {
  return spec->augment.nmean > 0 ? TD_DTYPE_F32 : in;
}

int td_aug_init(td_aug *a, const td_jobspec *spec, td_dtype in, char *err, size_t errlen) {
  const td_augment *cfg = &spec->augment;
  uint64_t elems = td_jobspec_input_elems(spec);

  memset(a, 0, sizeof(*a));
  a->cfg = *cfg;
  a->seed = spec->seed;
  a->in = in;
  a->out = td_aug_out_dtype(spec, in);
  a->c = spec->input_rank == 3 ? spec->input_dims[0] : 1;
  a->h = spec->input_rank >= 2 ? spec->input_dims[spec->input_rank - 2] : 1;
  a->w = spec->input_rank >= 2 ? spec->input_dims[spec->input_rank - 1] : (uint32_t)elems;
  a->in_bytes = (uint32_t)(elems * td_dtype_size(in));
  a->out_bytes = (uint32_t)(elems * td_dtype_size(a->out));
  a->active = cfg->crop || cfg->hflip || cfg->nmean > 0;
  if (!a->active)
    return 0;
  if ((uint64_t)a->c * a->h * a->w != elems || (cfg->nmean > 0 && cfg->nmean != (int)a->c)) {
    snprintf(err, errlen, "data.augment does not fit model.input (%llu elements in %u "
             "channels; %d means)", (unsigned long long)elems, a->c, cfg->nmean);
    return TD_EINVAL;
  }
  if (cfg->nmean > 0 && in != TD_DTYPE_U8 && in != TD_DTYPE_F32 && in != TD_DTYPE_F16 &&
      in != TD_DTYPE_I32) {
    snprintf(err, errlen, "data.augment.normalize cannot read %s samples", td_dtype_name(in));
    return TD_EINVAL;
  }
  return 0;
}

static float element(const td_aug *a, const uint8_t *src, size_t i) {
  switch (a->in) {
  case TD_DTYPE_U8: return src[i] * (1.0f / 255.0f);
  case TD_DTYPE_F16: {
    uint16_t h;
    memcpy(&h, src + 2 * i, sizeof(h));
    return td_f16_to_f32(h);
  }
  case TD_DTYPE_I32: {
    int32_t v;
    memcpy(&v, src + 4 * i, sizeof(v));
    return (float)v;
  }
  default: {
    float f;
    memcpy(&f, src + 4 * i, sizeof(f));
    return f;
  }
  }
}

void td_aug_apply(const td_aug *a, const void *src, void *dst, uint32_t epoch, uint64_t index,
                  int train) {
  const uint8_t *in = src;
  uint8_t *out = dst;
  size_t es = td_dtype_size(a->in), os = td_dtype_size(a->out);
  uint32_t pad = a->cfg.crop ? a->cfg.crop_padding : 0;
  int64_t dy = 0, dx = 0;
  int flip = 0;

  if (!a->active) {
    memcpy(dst, src, a->in_bytes);
    return;
  }
  if (train && (a->cfg.crop || a->cfg.hflip)) {
    /* One draw per sample, keyed as dropout is: never by call order. */
    uint64_t key = td__mix64(td__mix64(a->seed + TD__GOLDEN) ^ 0x6175676d656e74ull);
    uint64_t r = td__mix64(td__mix64(key + epoch) + (index + 1) * TD__GOLDEN);
    uint32_t span = 2 * pad + 1;

    dy = (int64_t)((r & 0xffffffu) % span) - pad;
    dx = (int64_t)(((r >> 24) & 0xffffffu) % span) - pad;
    flip = a->cfg.hflip && (r >> 63) != 0;
  } else if (a->cfg.nmean == 0) {
    memcpy(dst, src, a->in_bytes);
    return;
  }
  for (uint32_t c = 0; c < a->c; c++) {
    float mean = a->cfg.nmean > 0 ? a->cfg.mean[c] : 0, std = a->cfg.nmean > 0 ? a->cfg.std[c] : 1;
    for (uint32_t y = 0; y < a->h; y++) {
      int64_t sy = (int64_t)y + dy;
      for (uint32_t x = 0; x < a->w; x++) {
        /* crop, then flip the crop: x of the output is w-1-x of the crop */
        int64_t sx = (int64_t)(flip ? a->w - 1 - x : x) + dx;
        size_t o = ((size_t)c * a->h + y) * a->w + x;
        int inside = sy >= 0 && sy < (int64_t)a->h && sx >= 0 && sx < (int64_t)a->w;
        size_t s = inside ? ((size_t)c * a->h + (size_t)sy) * a->w + (size_t)sx : 0;

        if (a->cfg.nmean > 0) {
          float v = ((inside ? element(a, in, s) : 0.0f) - mean) / std;
          memcpy(out + o * os, &v, sizeof(v));
        } else if (inside) {
          memcpy(out + o * es, in + s * es, es);
        } else {
          memset(out + o * es, 0, es);
        }
      }
    }
  }
}
