#include "layers.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "plan.h"

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
    [TD_LK_VOCAB] = "vocab",     [TD_LK_DIM] = "dim",
    [TD_LK_HEADS] = "heads",     [TD_LK_CAUSAL] = "causal",
};

static const char *const gelu_names[] = {"none", "tanh", NULL};
static const char *const bool_names[] = {"false", "true", NULL};
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
  /* on a sequence it acts per position: [T, D] -> [T, units] */
  if (in->seq)
    *out = (td_shape){in->c, l->units, 1, 0, 1};
  else
    *out = (td_shape){l->units, 1, 1, 0, 0};
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
  *out = (td_shape){l->filters, oh, ow, 1, 0};
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
  *out = (td_shape){in->c, oh, ow, 1, 0};
  return 0;
}

static int flatten_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                         char *msg, size_t cap) {
  *out = (td_shape){(uint32_t)td_shape_elems(in), 1, 1, 0, 0};
  return 0;
}

/* [C] for a flat shape, [T, D] for a sequence, [C, H, W] otherwise. */
static void shape_text(const td_shape *s, char *buf, size_t cap) {
  if (s->seq)
    snprintf(buf, cap, "a sequence [%u, %u]", s->c, s->h);
  else if (s->spatial)
    snprintf(buf, cap, "[%u, %u, %u]", s->c, s->h, s->w);
  else
    snprintf(buf, cap, "[%u] flat", s->c);
}

/* spatial [C, H, W] -> [C] (the mean of each plane), sequence [T, D] -> [D]
 * (the mean over positions) */
static int global_avg_pool_shape(const td_layer *l, const td_shape *in, td_shape *out,
                                 uint64_t *big, char *msg, size_t cap) {
  char got[64];

  if (!in->spatial && !in->seq) {
    shape_text(in, got, sizeof(got));
    snprintf(msg, cap, "global_avg_pool needs a [C, H, W] or a sequence [T, D] input; got %s",
             got);
    return TD_EJOBSPEC;
  }
  *out = (td_shape){in->seq ? in->h : in->c, 1, 1, 0, 0};
  return 0;
}

/* A sequence [L, C_in] (channels last) -> [L', filters]. */
static int conv1d_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                        char *msg, size_t cap) {
  uint64_t k = l->kernel, pad = l->padding, st = td_layer_stride(l), lp = in->c + 2 * pad;
  uint64_t ol, ck = (uint64_t)in->h * k;
  char got[64];

  if (!in->seq) {
    shape_text(in, got, sizeof(got));
    snprintf(msg, cap, "conv1d needs a sequence [T, D] input; got %s", got);
    return TD_EJOBSPEC;
  }
  if (l->filters == 0) {
    snprintf(msg, cap, "a conv1d layer needs 'filters'");
    return TD_EJOBSPEC;
  }
  if (k == 0 || st == 0) {
    snprintf(msg, cap, "conv1d needs a kernel and a stride of at least 1");
    return TD_EJOBSPEC;
  }
  if (k > lp) {
    snprintf(msg, cap, "conv1d kernel %llu is longer than its sequence of %u (padding %llu)",
             (unsigned long long)k, in->c, (unsigned long long)pad);
    return TD_EJOBSPEC;
  }
  ol = (lp - k) / st + 1;
  /* its products take a block of samples' columns at once, indexed by int */
  if (TD_PLAN_BLOCK_ROWS * ol * ck > INT_MAX) {
    snprintf(msg, cap, "conv1d's columns for a block of %d samples would hold %llu values, "
             "more than %d (use a shorter sequence, fewer channels or a smaller kernel)",
             TD_PLAN_BLOCK_ROWS, (unsigned long long)(TD_PLAN_BLOCK_ROWS * ol * ck), INT_MAX);
    return TD_ETOOBIG;
  }
  *out = (td_shape){(uint32_t)ol, l->filters, 1, 0, 1};
  /* one sample's columns, and the weight */
  *big = ol * ck;
  if ((uint64_t)l->filters * ck > *big)
    *big = (uint64_t)l->filters * ck;
  return 0;
}

/* Joins */

static int join_kind(const td_shape *s) { return s->spatial ? 2 : s->seq ? 1 : 0; }

static const char *const kind_names[] = {"flat features", "a sequence [T, D]", "[C, H, W]"};

/* The inputs of a join are all of one kind. */
static int join_kinds(const td_layer *l, const td_shape *in, const char *const *names, int nin,
                      char *msg, size_t cap) {
  for (int k = 1; k < nin; k++) {
    if (join_kind(&in[k]) != join_kind(&in[0])) {
      snprintf(msg, cap, "%s joins inputs of one kind, and '%s' gives %s while '%s' gives %s",
               td_layer_names[l->type], names[0], kind_names[join_kind(&in[0])], names[k],
               kind_names[join_kind(&in[k])]);
      return TD_EJOBSPEC;
    }
  }
  return 0;
}

static int add_shape(const td_layer *l, const td_shape *in, const char *const *names, int nin,
                     td_shape *out, char *msg, size_t cap) {
  int rc;

  if ((rc = join_kinds(l, in, names, nin, msg, cap)) < 0)
    return rc;
  for (int k = 1; k < nin; k++) {
    if (in[k].c != in[0].c || in[k].h != in[0].h || in[k].w != in[0].w) {
      char a[48], b[48];

      td_shape_text(&in[0], a, sizeof(a));
      td_shape_text(&in[k], b, sizeof(b));
      snprintf(msg, cap, "add needs inputs of one shape, and '%s' gives %s while '%s' gives %s",
               names[0], a, names[k], b);
      return TD_EJOBSPEC;
    }
  }
  *out = in[0];
  return 0;
}

/* Along the features: C of [C, H, W] and of flat inputs, D of [T, D]; the
 * other dimensions agree. */
static int concat_shape(const td_layer *l, const td_shape *in, const char *const *names,
                        int nin, td_shape *out, char *msg, size_t cap) {
  uint64_t sum = 0;
  int rc;

  if ((rc = join_kinds(l, in, names, nin, msg, cap)) < 0)
    return rc;
  for (int k = 0; k < nin; k++) {
    bool same = in[0].seq ? in[k].c == in[0].c : in[k].h == in[0].h && in[k].w == in[0].w;

    if (!same) {
      char a[48], b[48];

      td_shape_text(&in[0], a, sizeof(a));
      td_shape_text(&in[k], b, sizeof(b));
      snprintf(msg, cap, "concat joins along the %s, and the rest must agree: '%s' gives %s "
               "while '%s' gives %s", in[0].seq ? "features (D of [T, D])" : "channels",
               names[0], a, names[k], b);
      return TD_EJOBSPEC;
    }
    sum += in[0].seq ? in[k].h : in[k].c;
  }
  if (sum > INT32_MAX) {
    snprintf(msg, cap, "concat gives %llu features, more than %d", (unsigned long long)sum,
             INT32_MAX);
    return TD_ETOOBIG;
  }
  *out = in[0];
  if (in[0].seq)
    out->h = (uint32_t)sum;
  else
    out->c = (uint32_t)sum;
  return 0;
}

/* Token ids [T] -> [T, dim]. */
static int embedding_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                           char *msg, size_t cap) {
  if (l->vocab == 0 || l->dim == 0) {
    snprintf(msg, cap, "an embedding layer needs 'vocab' and 'dim'");
    return TD_EJOBSPEC;
  }
  if (in->spatial || in->seq) {
    snprintf(msg, cap, "embedding reads token ids: model.input must be [T], one id per "
             "position");
    return TD_EJOBSPEC;
  }
  *out = (td_shape){in->c, l->dim, 1, 0, 1};
  *big = (uint64_t)l->vocab * l->dim;
  return 0;
}

static int need_seq(const td_layer *l, const td_shape *in, char *msg, size_t cap) {
  if (in->seq)
    return 0;
  snprintf(msg, cap, "%s needs a sequence [T, D] input (start the model with an embedding); "
           "it gets %s", td_layer_names[l->type],
           in->spatial ? "a [C, H, W] input" : "flat features");
  return TD_EJOBSPEC;
}

static int pos_embedding_shape(const td_layer *l, const td_shape *in, td_shape *out,
                               uint64_t *big, char *msg, size_t cap) {
  int rc = need_seq(l, in, msg, cap);

  if (rc == 0)
    *out = *in;
  return rc;
}

static int attention_shape(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
                           char *msg, size_t cap) {
  int rc;

  if ((rc = need_seq(l, in, msg, cap)) < 0)
    return rc;
  if (l->heads == 0 || in->h % l->heads != 0) {
    snprintf(msg, cap, "attention's %u heads must divide its %u features", l->heads, in->h);
    return TD_EJOBSPEC;
  }
  *out = *in;
  /* the probabilities of one sample, and the input projection's weight */
  *big = (uint64_t)l->heads * in->c * in->c;
  if (3 * (uint64_t)in->h * in->h > *big)
    *big = 3 * (uint64_t)in->h * in->h;
  return 0;
}

/* What each holds */

static void dense_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                        td_layer_sizes *s) {
  s->nweight = (uint64_t)td_shape_width(out) * td_shape_width(in);
  s->nbias = td_shape_width(out);
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
  s->nweight = s->nbias = td_shape_width(in); /* a sequence: per position, over D */
}

static void embedding_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                            td_layer_sizes *s) {
  s->nweight = (uint64_t)l->vocab * l->dim;
}

static void pos_embedding_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                                td_layer_sizes *s) {
  s->nweight = td_shape_elems(in);
}

/* in_proj [3D, D] then out_proj [D, D]; their biases [3D] then [D].  The
 * forward op keeps Q, K, V [T, 3D], each head's probabilities [T, T] and the
 * heads' output [T, D] for the backward op, which needs [T, 3D] and [T, D]
 * of gradients and one head's [T, T] at a time (kernels/backend.h). */
static void attention_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                            td_layer_sizes *s) {
  uint64_t t = in->c, d = in->h;

  s->nweight = 4 * d * d;
  s->nbias = 4 * d;
  s->saved = 4 * t * d + (uint64_t)l->heads * t * t;
  s->scratch = 4 * t * d + t * t;
}

static void conv1d_sizes(const td_layer *l, const td_shape *in, const td_shape *out,
                         td_layer_sizes *s) {
  s->nweight = (uint64_t)l->filters * in->h * l->kernel;
  s->nbias = l->filters;
  /* td_conv1d_workspace: the columns of a block of samples */
  s->workspace = TD_PLAN_BLOCK_ROWS * (uint64_t)out->c * in->h * l->kernel * F32;
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
  const uint64_t w[] = {td_shape_width(out), td_shape_width(in)};

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

  if (in->seq) {
    const uint64_t d[] = {in->h};

    return weight_bias(t, 1, d, s->nbias);
  }
  if (!in->spatial)
    return weight_bias(t, 1, chw, s->nbias);
  n = weight_bias(t, 3, chw, s->nbias);
  t[1].rank = 3;
  memcpy(t[1].shape, chw, sizeof(chw));
  return n;
}

/* nn.Conv1d's weight [out, in, k] */
static int conv1d_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                          const td_layer_sizes *s, td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  const uint64_t w[] = {s->nbias, in->h, l->kernel};

  return weight_bias(t, 3, w, s->nbias);
}

/* nn.Embedding's weight [vocab, dim] */
static int embedding_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                             const td_layer_sizes *s, td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  t[0] = (td_layer_tensor){.name = "weight", .src = TD_LT_WEIGHT, .rank = 2,
                           .shape = {l->vocab, l->dim}};
  return 1;
}

/* a Parameter [T, D], named as tests/torch/jobmodel.py's module has it */
static int pos_embedding_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                                 const td_layer_sizes *s,
                                 td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  t[0] = (td_layer_tensor){.name = "weight", .src = TD_LT_WEIGHT, .rank = 2,
                           .shape = {in->c, in->h}};
  return 1;
}

/* nn.MultiheadAttention's names */
static int attention_tensors(const td_layer *l, const td_shape *in, const td_shape *out,
                             const td_layer_sizes *s, td_layer_tensor t[TD_LAYER_MAX_TENSORS]) {
  uint64_t d = in->h;

  t[0] = (td_layer_tensor){.name = "in_proj_weight", .src = TD_LT_WEIGHT, .rank = 2,
                           .shape = {3 * d, d}};
  t[1] = (td_layer_tensor){.name = "in_proj_bias", .src = TD_LT_BIAS, .rank = 1,
                           .shape = {3 * d}};
  t[2] = (td_layer_tensor){.name = "out_proj.weight", .src = TD_LT_WEIGHT, .at = 3 * d * d,
                           .rank = 2, .shape = {d, d}};
  t[3] = (td_layer_tensor){.name = "out_proj.bias", .src = TD_LT_BIAS, .at = 3 * d, .rank = 1,
                           .shape = {d}};
  return 4;
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
    [TD_LAYER_SIGMOID] = {
        .not_first = true,
        .needs_y = true, .in_place = true, .grad_in_place = true, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_TANH] = {
        .not_first = true,
        .needs_y = true, .in_place = true, .grad_in_place = true, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_SOFTMAX] = { /* over the features: C of [C], D of [T, D], C per pixel */
        .not_first = true,
        .needs_y = true, .in_place = true, .grad_in_place = true, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_GLOBAL_AVG_POOL] = {
        .shape = global_avg_pool_shape, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_CONV1D] = {
        .takes = TD_LK(FILTERS) | WINDOW_KEYS, .needs = TD_LK(FILTERS) | TD_LK(KERNEL),
        .shape = conv1d_shape, .sizes = conv1d_sizes, .trainable = true,
        .init = TD_INIT_FAN_IN, .tensors = conv1d_tensors,
        .needs_x = true, .chunk = TD_CHUNK_BATCH, .half_weights = true},
    /* joins: the sum in input order; the inputs side by side.  Neither reads
     * an activation backward: add passes its gradient on (the plan lets
     * one input share it), concat hands each input its slice. */
    [TD_LAYER_ADD] = {
        .not_first = true, .join = add_shape,
        .in_place = true, .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_CONCAT] = {
        .not_first = true, .join = concat_shape,
        .chunk = TD_CHUNK_SPATIAL},
    [TD_LAYER_EMBEDDING] = { /* its backward op reads the ids; no gradient before it */
        .takes = TD_LK(VOCAB) | TD_LK(DIM), .needs = TD_LK(VOCAB) | TD_LK(DIM), .ids = true,
        .shape = embedding_shape, .sizes = embedding_sizes, .trainable = true,
        .init = TD_INIT_NORMAL, .tensors = embedding_tensors,
        .needs_x = true, .chunk = TD_CHUNK_BATCH},
    [TD_LAYER_POS_EMBEDDING] = { /* starts at zero, as a Parameter of torch.zeros */
        .not_first = true,
        .shape = pos_embedding_shape, .sizes = pos_embedding_sizes,
        .trainable = true, .init = TD_INIT_ZEROS, .tensors = pos_embedding_tensors,
        .in_place = true, .grad_in_place = true, .chunk = TD_CHUNK_BATCH},
    [TD_LAYER_ATTENTION] = {
        .takes = TD_LK(HEADS) | TD_LK(CAUSAL), .needs = TD_LK(HEADS), .not_first = true,
        .shape = attention_shape, .sizes = attention_sizes, .trainable = true,
        .init = TD_INIT_ATTENTION, .tensors = attention_tensors,
        .needs_x = true, .chunk = TD_CHUNK_BATCH, .half_weights = true},
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

/* A name is an identifier (PyTorch's module names, and never an index, so
 * given and default names cannot meet); "input" is the model's input. */
int td_layer_name_check(const char *s, char *msg, size_t cap) {
  if (strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789") != strlen(s) ||
      s[0] == '\0' || (s[0] >= '0' && s[0] <= '9')) {
    snprintf(msg, cap, "a layer's name is a letter or '_' then letters, digits and '_' "
             "(e.g. block1_conv)");
    return TD_EJOBSPEC;
  }
  if (strcmp(s, "input") == 0) {
    snprintf(msg, cap, "'input' names the model's input; give the layer another name");
    return TD_EJOBSPEC;
  }
  return 0;
}

static int check_layer_name(const td_yfield *f, void *p, const td_ynode *n, void *user,
                            char *msg, size_t cap) {
  return td_layer_name_check(p, msg, cap) < 0;
}

/* Layers people add from habit that the model must not have. */
static int layer_type_hint(const td_yfield *f, const char *text, void *user, char *msg,
                           size_t cap) {
  if (strcasecmp(text, "log_softmax") == 0 || strcasecmp(text, "logsoftmax") == 0) {
    snprintf(msg, cap, "there is no %s layer: the loss (softmax cross-entropy) already applies "
             "log-softmax to the last dense layer's scores; remove this layer", text);
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
    /* any type: the graph (the parser resolves the names once every
     * layer's is known) */
    TD_YF_STR("name", td_layer, name, TD_YF_NONEMPTY, check_layer_name),
    {.key = "inputs", .type = TD_YT_NODE},
    TD_YF_INT("vocab", td_layer, vocab, 1, 1 << 24, 0),
    TD_YF_INT("dim", td_layer, dim, 1, 65536, 0),
    TD_YF_INT("heads", td_layer, heads, 1, 4096, 0),
    TD_YF_ENUM("causal", td_layer, causal, bool_names, NULL, 0),
    TD_YF_ENUM("trainable", td_layer, frozen, trainable_names, NULL, 0),
    {0},
};

const td_yfield td_layer_yfield = {
    .type = TD_YT_MAP, .sub = layer_fields, .size = sizeof(td_layer), .check = check_layer,
};
