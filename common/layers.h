/* Layer types: one table row each, holding what is the same on every
 * backend.
 *
 * A row says how the job file spells the layer (the keys it takes, their
 * defaults), what it makes of its input (the output shape, or the message
 * the parser gives), what it holds (parameters, buffers, the tensors a
 * saved model names), and what the memory plan needs to know about it
 * (what its backward op reads, whether it may work in place, the
 * statistics it keeps, how mixed precision cuts it, whether it makes the
 * result depend on the micro-batch).  The parser (jobspec.c), the plan
 * (plan.c) and the worker's model read the row instead of switching on
 * the type; what runs is one function per type in the worker's model
 * (daemon/worker/model.c), which calls the backend's ops.
 *
 * Adding a layer type: its TD_LAYER_TYPES entry (jobspec.h), its row here,
 * its forward and backward functions in model.c; tests/unit/test_layertable.c
 * checks that every row is complete.
 */
#ifndef TD_LAYERS_H
#define TD_LAYERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobspec.h"
#include "yamlread.h"

/* The keys a layer may have in the job file, as bits of takes and needs. */
typedef enum {
  TD_LK_UNITS = 0,
  TD_LK_FILTERS,
  TD_LK_KERNEL,
  TD_LK_STRIDE,
  TD_LK_PADDING,
  TD_LK_APPROXIMATE,
  TD_LK_P,
  TD_LK_EPS,
  TD_LK_MOMENTUM,
  TD_LK_VOCAB,
  TD_LK_DIM,
  TD_LK_HEADS,
  TD_LK_CAUSAL,
  TD_LK__COUNT
} td_layer_key;

#define TD_LK(k) (1u << TD_LK_##k)

/* What a layer holds, for one input shape. */
typedef struct td_layer_sizes {
  uint64_t nweight, nbias; /* trainable floats: weight (the norms' gamma), bias (beta) */
  uint64_t nrunning;       /* non-trainable fp32 buffers (BatchNorm's running mean, var) */
  uint64_t workspace;      /* bytes of the CPU backend's scratch for one op call */
  uint64_t saved;          /* fp32 values per sample the forward op keeps for the backward
                              op, in the activation arena (attention: Q, K, V, the
                              probabilities and the heads' output) */
  uint64_t scratch;        /* fp32 values per sample the backward op alone uses */
} td_layer_sizes;

/* Where a saved tensor's values come from. */
typedef enum {
  TD_LT_WEIGHT = 0, /* the layer's weight, from float `at` on */
  TD_LT_BIAS,       /* its bias */
  TD_LT_RUNNING,    /* its buffers */
  TD_LT_TRACKED,    /* BatchNorm's num_batches_tracked: an I64 scalar the model counts */
} td_layer_src;

#define TD_LAYER_MAX_TENSORS 5

/* One tensor of a saved model: "<layer index>.<name>" as PyTorch's
 * nn.Sequential names it. */
typedef struct td_layer_tensor {
  const char *name;
  td_layer_src src;
  uint64_t at; /* floats into src */
  int rank;
  uint64_t shape[4];
} td_layer_tensor;

/* How the worker cuts an op into calls in mixed precision, where each call
 * widens its rows into fp32 scratch (the plan sizes the scratch). */
typedef enum {
  TD_CHUNK_BATCH = 0, /* the whole micro-batch at once */
  TD_CHUNK_SAMPLE,    /* a sample at a time */
  TD_CHUNK_SPATIAL,   /* a sample at a time on [C, H, W] inputs, else the micro-batch */
} td_layer_chunk;

/* What statistics the forward op keeps for the backward op: two floats
 * (mean, inverse std) per channel, or per row of the micro-batch. */
typedef enum { TD_STATS_NONE = 0, TD_STATS_CHANNEL, TD_STATS_ROW } td_layer_stats;

/* How the model initialises the parameters (PyTorch's defaults). */
typedef enum {
  TD_INIT_NONE = 0,
  TD_INIT_FAN_IN, /* weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = nweight/nbias */
  TD_INIT_ONES,   /* gamma 1, beta 0; running variance 1 */
  TD_INIT_NORMAL, /* weight N(0, 1) (nn.Embedding) */
  TD_INIT_ZEROS,  /* all 0 (a Parameter made with torch.zeros) */
  TD_INIT_ATTENTION, /* nn.MultiheadAttention: in_proj xavier_uniform, out_proj
                        U(-1/sqrt(D), 1/sqrt(D)), biases 0 */
} td_layer_init;

typedef struct td_layer_def {
  /* the job file: keys taken, keys needed; stride's default is the
   * kernel (pooling) or 1 */
  unsigned takes, needs;
  bool stride_is_kernel;
  bool not_first;           /* refused as the model's first layer */
  bool ids;                 /* its input is token ids (model.input [T]): only as the first
                               layer, and the input is taken exactly (no scaling, no
                               normalisation, never stored in 16 bits) */

  /* shapes: spatial layers need a [C, H, W] input (and their ops index
   * the whole micro-batch with int); a layer that needs a sequence [T, D]
   * says so from its shape function.  shape: the output for in, and the
   * most values per sample any of its tensors holds (*big, 0: the
   * output's); a message without the key on error.  NULL: out = in. */
  bool spatial;
  int (*shape)(const td_layer *l, const td_shape *in, td_shape *out, uint64_t *big,
               char *msg, size_t cap);
  /* joins (add, concat): two or more inputs (in[nin], named names[k] in
   * messages) make the output, or a message without the key; NULL: the
   * layer takes one input */
  int (*join)(const td_layer *l, const td_shape *in, const char *const *names, int nin,
              td_shape *out, char *msg, size_t cap);
  /* NULL: no parameters, buffers or workspace */
  void (*sizes)(const td_layer *l, const td_shape *in, const td_shape *out,
                td_layer_sizes *s);
  bool trainable;           /* has parameters: backward stops at the first such layer,
                               and recomputation segments start at each */
  td_layer_init init;
  /* the tensors a saved model holds, in order; returns how many */
  int (*tensors)(const td_layer *l, const td_shape *in, const td_shape *out,
                 const td_layer_sizes *s, td_layer_tensor t[TD_LAYER_MAX_TENSORS]);

  /* the plan */
  bool needs_x, needs_y;    /* what the backward op reads: the stored input, output */
  bool in_place;            /* the forward op may overwrite its input (when nothing
                               else reads it; a join: its first or second) */
  bool grad_in_place;       /* the backward op may overwrite the output's gradient */
  bool view;                /* no op at all: the output is the input's bytes (flatten) */
  td_layer_stats stats;
  td_layer_chunk chunk;
  bool half_weights;        /* in mixed precision it computes with the 16-bit copy of
                               its weights (widened into scratch); else the fp32 master */
  bool batch_dependent;     /* its result depends on how a batch is cut into
                               micro-batches (statistics per micro-batch) */
} td_layer_def;

/* The row of type t; t must be < TD_LAYER__COUNT. */
const td_layer_def *td_layer_def_of(td_layer_type t);

/* The table's names, NULL-terminated, indexed by type. */
extern const char *const td_layer_names[TD_LAYER__COUNT + 1];
/* Names of the keys, indexed by td_layer_key. */
extern const char *const td_layer_key_names[TD_LK__COUNT];

/* One layer of a job file's model.layers, for td_yaml_bind: the keys with
 * their bounds, each type's keys checked and defaults filled. */
extern const td_yfield td_layer_yfield;

/* 0, or TD_EJOBSPEC with why s cannot name a layer in msg. */
int td_layer_name_check(const char *s, char *msg, size_t cap);

/* The values a spec built in code may leave 0, as the layer uses them. */
uint16_t td_layer_stride(const td_layer *l);
float td_layer_eps(const td_layer *l);
float td_layer_momentum(const td_layer *l);

#endif
