#include "modelfile.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "half.h"

int td_modelfile_tensors(const td_jobspec *spec, td_mf_tensor *out, size_t *n, char *msg,
                         size_t cap) {
  td_shape shapes[TD_MAX_LAYERS + 1];
  size_t k = 0;
  int bad, rc;

  if ((rc = td_jobspec_shapes(spec, shapes, &bad, msg, cap)) < 0)
    return rc;
  for (int i = 0; i < spec->nlayers; i++) {
    const td_layer *l = &spec->layers[i];
    const td_layer_def *def = td_layer_def_of(l->type);
    td_layer_tensor lt[TD_LAYER_MAX_TENSORS];
    td_layer_sizes sz = {0};
    uint8_t src[TD_MAX_INPUTS];
    char node[TD_LAYER_NAME_MAX];
    const td_shape *in;
    int nt;

    if (def->tensors == NULL)
      continue;
    td_layer_inputs(spec, i, src);
    in = &shapes[src[0]];
    if (def->sizes != NULL)
      def->sizes(l, in, &shapes[i + 1], &sz);
    nt = def->tensors(l, in, &shapes[i + 1], &sz, lt);
    for (int t = 0; t < nt && k < TD_MF_MAX; t++, k++) {
      td_mf_tensor *o = &out[k];

      *o = (td_mf_tensor){.layer = i, .t = lt[t], .elems = 1};
      /* the one place a saved tensor's name is made: the layer's name, or
       * its index (nn.Sequential's) */
      snprintf(o->name, sizeof(o->name), "%s.%s", td_jobspec_node_name(spec, i + 1, node),
               lt[t].name);
      for (int d = 0; d < lt[t].rank; d++)
        o->elems *= lt[t].shape[d];
    }
  }
  *n = k;
  return 0;
}

static void shape_text(const uint64_t *shape, uint32_t rank, char *out, size_t cap) {
  size_t len = (size_t)snprintf(out, cap, "[");

  for (uint32_t d = 0; d < rank && len < cap; d++)
    len += (size_t)snprintf(out + len, cap - len, d > 0 ? ", %" PRIu64 : "%" PRIu64, shape[d]);
  if (len < cap)
    snprintf(out + len, cap - len, "]");
}

static int is_float(const char *dtype) {
  return strcmp(dtype, "F32") == 0 || strcmp(dtype, "F16") == 0 || strcmp(dtype, "BF16") == 0 ||
         strcmp(dtype, "F64") == 0;
}

int td_modelfile_check(const td_st_file *f, const td_mf_tensor *want, size_t n, char *err,
                       size_t errlen) {
  size_t have = td_safetensors_count(f);

  for (size_t i = 0; i < n; i++) {
    const td_mf_tensor *w = &want[i];
    int counter = w->t.src == TD_LT_TRACKED;
    char got_s[160], want_s[160];
    td_st_tensor got;

    if (td_safetensors_find(f, w->name, &got) < 0) {
      snprintf(err, errlen, "the model's tensor '%s' is not in the file (is it the model of "
               "another job file?)", w->name);
      return TD_EDATA;
    }
    if (counter ? strcmp(got.dtype, "I64") != 0 && strcmp(got.dtype, "I32") != 0
                : !is_float(got.dtype)) {
      snprintf(err, errlen, "tensor '%s' is %s; init takes %s", w->name, got.dtype,
               counter ? "I64 or I32 (a count)" : "F32, F16, BF16 or F64");
      return TD_EDATA;
    }
    if (got.rank != (uint32_t)w->t.rank ||
        memcmp(got.shape, w->t.shape, (size_t)w->t.rank * sizeof(uint64_t)) != 0) {
      shape_text(got.shape, got.rank, got_s, sizeof(got_s));
      shape_text(w->t.shape, (uint32_t)w->t.rank, want_s, sizeof(want_s));
      snprintf(err, errlen, "tensor '%s' has shape %s, the model's is %s", w->name, got_s,
               want_s);
      return TD_EDATA;
    }
  }
  /* every wanted name was found and names are distinct in a file: any
   * further tensor is one the model does not have */
  for (size_t i = 0; have > n && i < have; i++) {
    td_st_tensor got;
    size_t j = 0;

    td_safetensors_get(f, i, &got);
    while (j < n && strcmp(got.name, want[j].name) != 0)
      j++;
    if (j == n) {
      snprintf(err, errlen, "tensor '%s' is not one of the model's (is it the model of another "
               "job file?)", got.name);
      return TD_EDATA;
    }
  }
  return 0;
}

void td_modelfile_f32(const td_st_tensor *t, float *dst, uint64_t n) {
  const uint8_t *p = t->data;

  /* little-endian on disk, as on the hosts traind runs on */
  if (strcmp(t->dtype, "F32") == 0) {
    memcpy(dst, p, n * sizeof(float));
  } else if (strcmp(t->dtype, "F64") == 0) {
    for (uint64_t i = 0; i < n; i++) {
      double d;

      memcpy(&d, p + 8 * i, 8);
      dst[i] = (float)d;
    }
  } else {
    td_half_kind k = strcmp(t->dtype, "BF16") == 0 ? TD_HALF_BF16 : TD_HALF_F16;

    for (uint64_t i = 0; i < n; i++) {
      uint16_t h;

      memcpy(&h, p + 2 * i, 2);
      dst[i] = td_half_to_f32(k, h);
    }
  }
}

uint64_t td_modelfile_count(const td_st_tensor *t) {
  int64_t v64;
  int32_t v32;

  if (strcmp(t->dtype, "I32") == 0) {
    memcpy(&v32, t->data, 4);
    return v32 > 0 ? (uint64_t)v32 : 0;
  }
  memcpy(&v64, t->data, 8);
  return v64 > 0 ? (uint64_t)v64 : 0;
}
