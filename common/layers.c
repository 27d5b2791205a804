#include "layers.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "error.h"

#define F32 ((uint64_t)sizeof(float))

const char *const td_layer_names[TD_LAYER__COUNT + 1] = {
#define TD_LAYER_NAME(id, name) [TD_LAYER_##id] = name,
    TD_LAYER_TYPES(TD_LAYER_NAME)
#undef TD_LAYER_NAME
};

const char *const td_layer_key_names[TD_LK__COUNT] = {
    [TD_LK_UNITS] = "units",     [TD_LK_FILTERS] = "filters",
    [TD_LK_KERNEL] = "kernel",   [TD_LK_STRIDE] = "stride",
    [TD_LK_PADDING] = "padding", [TD_LK_APPROXIMATE] = "approximate",
    [TD_LK_P] = "p",             [TD_LK_EPS] = "eps",
    [TD_LK_MOMENTUM] = "momentum",
};

static const char *const gelu_names[] = {"none", "tanh", NULL};
/* trainable: false sets frozen (the index of the name) */
static const char *const trainable_names[] = {"true", "false", NULL};

/* Shapes */

/* The output of a window (conv2d or pooling) over in, or why it does not
 * fit.  Pooling refuses padding beyond half its window, as PyTorch does. */
static int window_out(const td_layer *l, const td_shape *in, bool pooling, uint32_t *oh,
                      uint32_t *ow, char *msg, size_t cap) {
  const char *what = td_layer_names[l->type];
  uint64_t k = l->kernel, pad = l->padding, st = td_layer_stride(l);
  uint64_t hp = in->h + 2 * pad, wp = in->w + 2 * pad;

  if (k == 0 || st == 0) {
    snprintf(msg, cap, "%s needs a kernel and a stride of at least 1", what);
    return TD_EJOBSPEC;
  }
  if (pooling && 2 * pad > k) {
    snprintf(msg, cap, "%s padding %llu is more than half its %llux%llu window", what,
             (unsigned long long)pad, (unsigned long long)k, (unsigned long long)k);
    return TD_EJOBSPEC;
  }
  if (k > hp || k > wp) {
    snprintf(msg, cap, "%s kernel %llu is larger than its %ux%u input (padding %llu)", what,
             (unsigned long long)k, in->h, in->w, (unsigned long long)pad);
    return TD_EJOBSPEC;
  }
  *oh = (uint32_t)((hp - k) / st + 1);
  *ow = (uint32_t)((wp - k) / st + 1);
  return 0;
}

static int dense_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                       char *msg, size_t cap) {
  if (l->units == 0) {
    snprintf(msg, cap, "a dense layer needs 'units'");
    return TD_EJOBSPEC;
  }
  *out = (td_shape){l->units, 1, 1, 0};
  return 0;
}

static int conv2d_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                        char *msg, size_t cap) {
  uint64_t weight = (uint64_t)l->filters * in->c * l->kernel * l->kernel;
  uint32_t oh, ow;
  int rc;

  if (l->filters == 0) {
    snprintf(msg, cap, "a conv2d layer needs 'filters'");
    return TD_EJOBSPEC;
  }
  if ((rc = window_out(l, in, false, &oh, &ow, msg, cap)) < 0)
    return rc;
  *out = (td_shape){l->filters, oh, ow, 1};
  /* the im2col matrix of one sample, and the weight */
  *big = (uint64_t)in->c * l->kernel * l->kernel * oh * ow;
  if (weight > *big)
    *big = weight;
  return 0;
}

static int pool2d_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                        char *msg, size_t cap) {
  uint32_t oh, ow;
  int rc;

  if ((rc = window_out(l, in, true, &oh, &ow, msg, cap)) < 0)
    return rc;
  *out = (td_shape){in->c, oh, ow, 1};
  return 0;
}

static int flatten_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                         char *msg, size_t cap) {
  *out = (td_shape){(uint32_t)td_shape_elems(in), 1, 1, 0};
  return 0;
}

/* What each holds */

static void dense_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                        td_layer_sizes *s) {
  s->nweight = td_shape_elems(out) * td_shape_elems(in);
  s->nbias = td_shape_elems(out);
}

static void conv2d_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                         td_layer_sizes *s) {
  s->nweight = (uint64_t)l->filters * in->c * l->kernel * l->kernel;
  s->nbias = l->filters;
  /* td_conv2d_workspace_cpu: one sample's columns and two partial weight
   * gradients (the blocks' sums, kernels/backend.h) */
  s->workspace = ((uint64_t)in->c * l->kernel * l->kernel * out->h * out->w +
                  2 * (s->nweight + s->nbias)) * F32;
}

static void batchnorm2d_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                              td_layer_sizes *s) {
  s->nweight = s->nbias = in->c;
  s->nrunning = 2 * (uint64_t)in->c;
}

static void layernorm_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                            td_layer_sizes *s) {
  s->nweight = s->nbias = td_shape_elems(in);
}

/* The tensors of a saved model, as nn.Sequential names them */

static int weight_bias(td_layer_tensor *t, int rank, const uint64_t *wshape, uint64_t nbias) {
  t[0] = (td_layer_tensor){.name = "weight", .src = TD_LT_WEIGHT, .rank = rank};
  memcpy(t[0].shape, wshape, (size_t)rank * sizeof(*wshape));
  t[1] = (td_layer_tensor){.name = "bias", .src = TD_LT_BIAS, .rank = 1, .shape = {nbias}};
  return 2;
}

static int dense_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                         const td_layer_sizes *s, td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  const uint64_t w[] = {td_shape_elems(out), td_shape_elems(in)};

  return weight_bias(t, 2, w, s->nbias);
}

static int conv2d_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                          const td_layer_sizes *s, td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  const uint64_t w[] = {s->nbias, in->c, l->kernel, l->kernel};

  return weight_bias(t, 4, w, s->nbias);
}

static int batchnorm2d_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                               const td_layer_sizes *s,
                               td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  const uint64_t c[] = {in->c};
  int n = weight_bias(t, 1, c, s->nbias);

  t[n++] = (td_layer_tensor){.name = "running_mean", .src = TD_LT_RUNNING, .rank = 1,
                             .shape = {in->c}};
  t[n++] = (td_layer_tensor){.name = "running_var", .src = TD_LT_RUNNING, .at = in->c,
                             .rank = 1, .shape = {in->c}};
  t[n++] = (td_layer_tensor){.name = "num_batches_tracked", .src = TD_LT_TRACKED};
  return n;
}

/* normalized_shape: the input's */
static int layernorm_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                             const td_layer_sizes *s, td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  const uint64_t chw[] = {in->c, in->h, in->w};
  int n;

  if (!in->spatial)
    return weight_bias(t, 1, chw, s->nbias);
  n = weight_bias(t, 3, chw, s->nbias);
  t[1].rank = 3;
  memcpy(t[1].shape, chw, sizeof(chw));
  return n;
}

#define WINDOW_KEYS (TD_LK(KERNEL) | TD_LK(STRIDE) | TD_LK(PADDING))

static const td_layer_def defs[TD_LAYER__COUNT] = {
    [TD_LAYER_DENSE] = {
        .takes = TD_LK(UNITS), .needs = TD_LK(UNITS),
        .shape = dense_shape, .sizes = dense_sizes, .trainable = true,
        .init = TD_INIT_FAN_IN, .tensors = dense_tensors,
        .needs_x = true, .chunk = TD_CHUNK_BATCH, .half_weights = true},
    [TD_LAYER_RELU] = {
        .not_first = true,
        .needs_y = true, .in_place = true, .grad_in_place = true, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_CONV2D] = {
        .takes = TD_LK(FILTERS) | WINDOW_KEYS, .needs = TD_LK(FILTERS) | TD_LK(KERNEL),
        .spatial = true, .shape = conv2d_shape, .sizes = conv2d_sizes, .trainable = true,
        .init = TD_INIT_FAN_IN, .tensors = conv2d_tensors,
        .needs_x = true, .chunk = TD_CHUNK_SAMPLE, .half_weights = true},
    [TD_LAYER_MAXPOOL2D] = {
        .takes = WINDOW_KEYS, .needs = TD_LK(KERNEL), .stride_is_kernel = true,
        .spatial = true, .shape = pool2d_shape,
        .needs_x = true, .needs_y = true, .chunk = TD_CHUNK_SAMPLE},
    [TD_LAYER_AVGPOOL2D] = {
        .takes = WINDOW_KEYS, .needs = TD_LK(KERNEL), .stride_is_kernel = true,
        .spatial = true, .shape = pool2d_shape,
        .needs_x = true, .needs_y = true, .chunk = TD_CHUNK_SAMPLE},
    [TD_LAYER_GELU] = {
        .takes = TD_LK(APPROXIMATE),
        .needs_x = true, .grad_in_place = true, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_DROPOUT] = { /* its mask is recomputed from its key: nothing kept */
        .takes = TD_LK(P), .needs = TD_LK(P),
        .in_place = true, .grad_in_place = true, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_FLATTEN] = {
        .shape = flatten_shape,
        .in_place = true, .grad_in_place = true, .view = true},
    [TD_LAYER_BATCHNORM2D] = { /* never cut: the statistics are the micro-batch's */
        .takes = TD_LK(EPS) | TD_LK(MOMENTUM),
        .spatial = true, .sizes = batchnorm2d_sizes, .trainable = true,
        .init = TD_INIT_ONES, .tensors = batchnorm2d_tensors,
        .needs_x = true, .stats = TD_STATS_CHANNEL, .chunk = TD_CHUNK_BATCH,
        .batch_dependent = true},
    [TD_LAYER_LAYERNORM] = {
        .takes = TD_LK(EPS),
        .sizes = layernorm_sizes, .trainable = true,
        .init = TD_INIT_ONES, .tensors = layernorm_tensors,
        .needs_x = true, .stats = TD_STATS_ROW, .chunk = TD_CHUNK_BATCH},
};

const td_layer_def *td_layer_def_of(td_layer_type t) { return &defs[t]; }

uint16_t td_layer_stride(const td_layer *l) {
  if (l->stride != 0)
    return l->stride;
  return defs[l->type].stride_is_kernel ? l->kernel : 1;
}

float td_layer_eps(const td_layer *l) { return l->eps > 0.0f ? l->eps : 1e-5f; }

float td_layer_momentum(const td_layer *l) { return l->momentum > 0.0f ? l->momentum : 0.1f; }

/* The job file */

/* Each type's keys: one it does not take is refused, one it needs must be
 * there, one it takes that is left out gets its default. */
static int check_layer(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                       size_t cap) {
  td_layer *l = p;
  const td_layer_def *d = &defs[l->type];

  l->line = n->line;
  for (int k = 0; k < TD_LK__COUNT; k++) {
    int given = td_yaml_get(n, td_layer_key_names[k]) != NULL;

    if (given && !(d->takes & (1u << k))) {
      snprintf(msg, cap, "a %s layer has no '%s'", td_layer_names[l->type],
               td_layer_key_names[k]);
      return 1;
    }
    if (!given && (d->needs & (1u << k))) {
      snprintf(msg, cap, "a %s layer needs '%s'", td_layer_names[l->type],
               td_layer_key_names[k]);
      return 1;
    }
  }
  if (l->frozen && !d->trainable) {
    snprintf(msg, cap, "a %s layer has no parameters to freeze; 'trainable' applies to "
             "layers that have them", td_layer_names[l->type]);
    return 1;
  }
  /* left out: 0, which the helpers read as the default */
  if ((d->takes & TD_LK(STRIDE)) && td_yaml_get(n, "stride") == NULL)
    l->stride = td_layer_stride(l);
  if ((d->takes & TD_LK(EPS)) && td_yaml_get(n, "eps") == NULL)
    l->eps = td_layer_eps(l);
  if ((d->takes & TD_LK(MOMENTUM)) && td_yaml_get(n, "momentum") == NULL)
    l->momentum = td_layer_momentum(l);
  return 0;
}

/* Layers people add from habit that the model must not have. */
static int layer_type_hint(const td_yfield *f, const char *text, void *user, char *msg,
                           size_t cap) {
  if (strcasecmp(text, "softmax") == 0 || strcasecmp(text, "log_softmax") == 0 ||
      strcasecmp(text, "logsoftmax") == 0) {
    snprintf(msg, cap, "there is no %s layer: the loss (softmax cross-entropy) already applies "
             "softmax to the last dense layer's scores; remove this layer", text);
    return 1;
  }
  if (strcasecmp(text, "sigmoid") == 0) {
    snprintf(msg, cap, "there is no sigmoid layer: the loss (softmax cross-entropy) turns the "
             "last dense layer's scores into probabilities (for two classes, end with a dense "
             "layer of 2 units); between layers, use relu or gelu");
    return 1;
  }
  return 0;
}

/* The keys in file order of td_layer_key, after type. */
static const td_yfield layer_fields[] = {
    {.key = "type", .type = TD_YT_ENUM, .flags = TD_YF_REQUIRED, TD_YF_OFF(td_layer, type),
     .names = td_layer_names, .hint = layer_type_hint},
    TD_YF_INT("units", td_layer, units, 1, 65536, 0),
    TD_YF_INT("filters", td_layer, filters, 1, 65536, 0),
    TD_YF_INT("kernel", td_layer, kernel, 1, 4096, 0),
    TD_YF_INT("stride", td_layer, stride, 1, 4096, 0),
    TD_YF_INT("padding", td_layer, padding, 0, 4096, 0),
    TD_YF_ENUM("approximate", td_layer, approximate, gelu_names, NULL, 0),
    TD_YF_FLOAT("p", td_layer, p, 0, 1, TD_YF_HI_OPEN),
    TD_YF_FLOAT("eps", td_layer, eps, 0, 1, TD_YF_LO_OPEN),
    TD_YF_FLOAT("momentum", td_layer, momentum, 0, 1, 0),
    TD_YF_ENUM("trainable", td_layer, frozen, trainable_names, NULL, 0),
    {0},
};

const td_yfield td_layer_yfield = {
    .type = TD_YT_MAP, .sub = layer_fields, .size = sizeof(td_layer), .check = check_layer,
};
