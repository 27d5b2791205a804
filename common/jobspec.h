/* A training job as its YAML job file describes it.
 *
 * The parser (jobspec.c) checks every key, type and bound and reports the
 * first problem as "line N: key 'a.b': what is wrong"; nothing outside this
 * struct is read by the daemon, the loader or the worker.
 */
#ifndef TD_JOBSPEC_H
#define TD_JOBSPEC_H

#include <stddef.h>
#include <stdint.h>

#include "callbacks.h"
#include "dtype.h"
#include "loss.h"
#include "lossscale.h"
#include "schedule.h"

#define TD_PATH_MAX      1024
#define TD_NAME_MAX      64
#define TD_MAX_LAYERS    64
#define TD_MAX_RANK      4
#define TD_JOBFILE_MAX   (1u << 20) /* bytes of YAML a job file may hold */
#define TD_LAYER_NAME_MAX 32       /* a layer's name, its NUL included */
#define TD_MAX_INPUTS    8         /* inputs of one layer (add, concat) */

/* The layer types, in the order of their values, with their names in job
 * files; everything else about each is its row in common/layers.c. */
#define TD_LAYER_TYPES(X)                                                                   \
  X(DENSE, "dense") X(RELU, "relu") X(CONV2D, "conv2d") X(MAXPOOL2D, "maxpool2d")          \
  X(AVGPOOL2D, "avgpool2d") X(GELU, "gelu") X(DROPOUT, "dropout") X(FLATTEN, "flatten")    \
  X(BATCHNORM2D, "batchnorm2d") X(LAYERNORM, "layernorm")                                \
  X(SIGMOID, "sigmoid") X(TANH, "tanh") X(SOFTMAX, "softmax")                              \
  X(GLOBAL_AVG_POOL, "global_avg_pool") X(CONV1D, "conv1d")                                \
  X(ADD, "add") X(CONCAT, "concat")                                                        \
  X(EMBEDDING, "embedding") X(POS_EMBEDDING, "pos_embedding") X(ATTENTION, "attention")

typedef enum {
#define TD_LAYER_ENUM(id, name) TD_LAYER_##id,
  TD_LAYER_TYPES(TD_LAYER_ENUM)
#undef TD_LAYER_ENUM
  TD_LAYER__COUNT
} td_layer_type;

/* One layer as the job file gives it.  A field a type does not use is 0;
 * the parser fills each used one (its default when the file omits it). */
/* Kept small: traind holds a spec, TD_MAX_LAYERS of these, per queued job. */
typedef struct td_layer {
  td_layer_type type;
  uint32_t units;      /* dense: output features */
  uint32_t filters;    /* conv2d, conv1d: output channels */
  uint16_t kernel;     /* conv2d, pooling: square window side; conv1d: its width (<= 4096) */
  uint16_t stride;     /* conv2d, conv1d: 1; pooling: kernel (0 in a spec built in code: the
                          same) */
  uint16_t padding;    /* conv2d, conv1d, pooling: zeros on each side */
  uint8_t approximate; /* gelu: 0 exact (erf), 1 tanh */
  float p;             /* dropout: probability of dropping */
  float eps;           /* batchnorm2d, layernorm: 1e-5 (0 in code: the same) */
  float momentum;      /* batchnorm2d: running statistics' rate, 0.1 (0 in code: the same) */
  uint32_t vocab;      /* embedding: number of token ids */
  uint32_t dim;        /* embedding: features per position */
  uint16_t heads;      /* attention: heads, dividing the features */
  uint8_t causal;      /* attention: 1 masks the positions after each query */
  uint8_t frozen;      /* layers with parameters: `trainable: false`, never updated */
  int line;            /* line in the job file, for messages */
  /* The model as a graph.  name: "" is the layer's index ("3"); a given one
   * is an identifier, so the two never meet.  inputs: where each input
   * comes from as an index of td_jobspec_shapes' shapes (0 the model's
   * input, j + 1 layer j's output), always earlier in the file; ninputs 0
   * is the previous layer (the model's input for the first): a chain. */
  char name[TD_LAYER_NAME_MAX];
  uint8_t inputs[TD_MAX_INPUTS];
  int ninputs;
} td_layer;

/* What a layer's input or output is per sample: [c, h, w] (spatial), a
 * sequence [T, D] of T positions with D features each (seq: c = T, h = D,
 * w = 1; layers that act per position see T * n rows of D), or flat [c]
 * features (h = w = 1, neither). */
typedef struct td_shape {
  uint32_t c, h, w;
  int spatial;
  int seq;
} td_shape;

typedef enum { TD_OPT_SGD = 0, TD_OPT_ADAM, TD_OPT_ADAMW } td_opt_kind;

typedef enum { TD_PREC_FP32 = 0, TD_PREC_BF16, TD_PREC_FP16, TD_PREC__COUNT } td_precision;

typedef enum { TD_DATA_IDX = 0, TD_DATA_NPY, TD_DATA_CSV, TD_DATA_RAW, TD_DATA_IMAGES } td_data_format;


/* What one sample's target is as it travels (ring, staging arena): a class
 * id (int32, width 1) or width float32 values. */
typedef struct td_target {
  td_dtype dtype; /* TD_DTYPE_I32 or TD_DTYPE_F32 */
  uint32_t width;
} td_target;

#define TD_MAX_TARGET_COLUMNS 64

/* What the worker may do, in the job's order, when memory runs short. */
typedef enum {
  TD_REMEDY_ACCUMULATE = 0, /* smaller micro-batches, same effective batch */
  TD_REMEDY_RECOMPUTE,      /* activation recomputation */
  TD_REMEDY_SHRINK,         /* smaller effective batch, lr scaled: the last resort */
  TD_REMEDY_BF16,           /* mixed precision: bf16, or fp16 with loss scaling */
  TD_REMEDY_FP16,
  TD_REMEDY__COUNT
} td_remedy;

#define TD_MAX_REMEDIES TD_REMEDY__COUNT

typedef struct td_data_split {
  char images[TD_PATH_MAX]; /* the samples, data.*.features or .images (csv, raw: the one
                               file, labels inside; images: the folder of class folders);
                               absolute once parsed with a base dir */
  char labels[TD_PATH_MAX]; /* idx, npy: the labels; "" for csv and raw */
  uint32_t limit;           /* use only the first N samples; 0 = all */
} td_data_split;

typedef struct td_data_csv {
  uint32_t label_column; /* 0-based column holding the class */
  int header;            /* 1: the first line names the columns */
  td_dtype dtype;        /* the other columns as decoded: float32 or uint8 */
  /* float targets (loss mse, mae, binary_cross_entropy, soft cross_entropy):
   * their 0-based columns, in the order of the model's outputs, instead of
   * label_column */
  uint32_t target_columns[TD_MAX_TARGET_COLUMNS];
  uint32_t ntarget_columns;
} td_data_csv;

/* Fixed-size records: [header_bytes] then records of record_bytes, each
 * holding a label at label_offset and a sample at sample_offset. */
typedef struct td_data_raw {
  uint32_t shape[TD_MAX_RANK]; /* one sample; the product is model.input's */
  int rank;
  td_dtype dtype;              /* the sample's elements, little-endian */
  td_dtype label_dtype;        /* uint8 or int32 (little-endian); float32: a float target
                                  per model output, one after another */
  uint32_t label_offset;
  uint32_t sample_offset;
  uint32_t record_bytes;
  uint64_t header_bytes;
} td_data_raw;

#define TD_AUGMENT_MAX_CHANNELS 4 /* normalize's mean and std: one per input channel */

/* data.augment: what the loader does to a sample after decoding it
 * (common/augment.h).  The random ones touch train samples only, keyed by
 * (seed, epoch, sample); normalize applies to every split and makes the
 * samples float32. */
typedef struct td_augment {
  int crop;              /* random_crop: pad, then crop back to the input's size */
  uint32_t crop_padding; /* random_crop.padding: zeros on each side */
  int hflip;             /* horizontal_flip: mirror half the samples */
  int nmean, nstd;       /* normalize: (x * scale - mean[c]) / std[c]; 0 = off */
  float mean[TD_AUGMENT_MAX_CHANNELS];
  float std[TD_AUGMENT_MAX_CHANNELS];
} td_augment;

typedef struct td_optimizer {
  td_opt_kind kind;
  float lr;
  float beta1, beta2, eps; /* adam */
  float momentum;          /* sgd */
  float dampening;         /* sgd */
  int nesterov;            /* sgd: needs momentum > 0 and dampening 0 */
  float weight_decay;      /* adamw: decoupled */
} td_optimizer;

typedef struct td_jobspec {
  char name[TD_NAME_MAX];

  /* model */
  uint32_t input_dims[TD_MAX_RANK]; /* e.g. {28, 28} */
  int input_rank;
  int input_seq;                    /* model.sequence: an input [T, D] is a sequence of T
                                       positions (conv1d...), not a one-channel image */
  td_layer layers[TD_MAX_LAYERS];
  int nlayers;

  /* data */
  td_data_format format;
  td_data_split train;
  td_data_split test;
  float norm_mean, norm_std; /* on the device: (x * scale - mean) / std, scale 1/255 for
                                uint8 samples and 1 for the other types */
  td_dtype sample_dtype;     /* samples as stored: not in the job file, set from the
                                dataset (td_dataset_probe); sizes the staging arena */
  td_data_csv csv;           /* format csv */
  td_data_raw raw;           /* format raw */
  td_augment augment;        /* data.augment */
  float val_fraction;        /* validation: the last fraction (or count) of the */
  uint32_t val_count;        /* train samples, held out of training; 0 = none */
  uint32_t shuffle_window;   /* samples shuffled together; 0 = all in memory, or
                                as many as the loader's memory budget holds */

  /* training */
  uint32_t batch_size;
  uint32_t epochs;
  uint64_t seed;
  td_optimizer opt;
  float clip_grad_norm;      /* max global gradient norm; 0 = no clipping */
  td_schedule schedule;      /* schedule.lr is opt.lr */
  float label_smoothing;     /* train.loss.label_smoothing, [0, 1) */
  td_loss_kind loss;         /* train.loss.kind */
  int soft_targets;          /* train.loss.targets: soft (cross_entropy over float targets) */
  uint32_t top_k;            /* train.top_k: also count top-k hits; 0 = off */

  /* memory */
  td_precision precision;
  td_lossscale_cfg loss_scale; /* fp16's dynamic loss scaling; enabled iff precision fp16 */
  int recompute;               /* keep only segment inputs; recompute in the backward pass */
  uint32_t min_micro_batch;
  td_remedy remedies[TD_MAX_REMEDIES]; /* default: {accumulate} */
  int nremedies;
  uint32_t fail_alloc;   /* testing: the worker's Nth memory request fails; 0 = never */

  /* scheduling */
  int32_t priority;      /* higher runs first */
  uint32_t max_retries;  /* runs again after a crash or hang, this many times */
  char device[32];       /* "" = any device */

  /* checkpoints: written every ckpt_every_steps optimiser steps and every
   * ckpt_every_seconds (0 turns either off), at the end of each epoch and
   * when traind stops; a requeued or restarted job resumes from the last */
  uint64_t ckpt_every_steps;
  double ckpt_every_seconds;

  /* TensorBoard event files in the job's directory: the training scalars
   * every tb_every_steps train batches and at each epoch's end (the rest:
   * once an epoch, and at each re-plan); 0 writes no event file */
  uint32_t tb_every_steps;

  /* callbacks at each epoch's end, on the validation split (callbacks.h) */
  td_callbacks callbacks;

  char output[TD_PATH_MAX]; /* safetensors path; "" = the job's state dir */

  /* weights in: the initial parameters and buffers from a safetensors
   * model (common/modelfile.h) instead of the random init; "" = random */
  char init[TD_PATH_MAX];
  /* not a job-file key: traind sets it on a job made by `submit
   * --continue`, which starts from that job's final state; 0 = none */
  uint64_t continues;
} td_jobspec;

/* Parse YAML text.  Relative paths are resolved against base_dir (which
 * may be NULL to leave them as written).  On failure returns TD_EJOBSPEC
 * (or TD_ETOOBIG, TD_ENOMEM) and writes a one-line message to err. */
int td_jobspec_parse(const char *text, size_t len, const char *base_dir,
                     td_jobspec *out, char *err, size_t errlen);

/* Read and parse a file; base_dir is the file's directory. */
int td_jobspec_load(const char *path, td_jobspec *out, char *err, size_t errlen);

/* The shape of every layer's output: shapes[0] is the model's input,
 * shapes[i + 1] layer i's output.  TD_EJOBSPEC with what was expected in
 * msg (and *bad = i, -1 for the input) when the model does not hold
 * together: a layer's inputs of the wrong count, kind or shape, one not
 * earlier in the file, a name that is not an identifier or is given
 * twice, a layer that nothing reads and that is not the last; TD_ETOOBIG
 * for a layer of more than 2^31 - 1 values per sample. */
int td_jobspec_shapes(const td_jobspec *spec, td_shape shapes[TD_MAX_LAYERS + 1], int *bad,
                      char *msg, size_t cap);
/* Values per sample of a shape. */
uint64_t td_shape_elems(const td_shape *s);
/* "[8, 14, 14]", "[10, 64]" (a sequence) or "[64]". */
void td_shape_text(const td_shape *s, char *buf, size_t cap);

/* The inputs of layer i as shapes[] indices into src; returns how many
 * (the previous layer's output, or the model's input, when it names none). */
int td_layer_inputs(const td_jobspec *spec, int i, uint8_t src[TD_MAX_INPUTS]);
/* Whether every layer reads the one before it: a plain list. */
int td_jobspec_is_chain(const td_jobspec *spec);
/* What a model names shapes[] index t by: "input", a layer's name, or its
 * index.  buf holds TD_LAYER_NAME_MAX bytes. */
const char *td_jobspec_node_name(const td_jobspec *spec, int t, char *buf);
/* Rows per sample an op that acts per position sees (a sequence's T, else
 * 1), and the features of each row (D, else every value). */
uint32_t td_shape_rows(const td_shape *s);
uint32_t td_shape_width(const td_shape *s);
/* Whether the model holds a layer whose result depends on how a batch is
 * cut into micro-batches (batchnorm2d: statistics per micro-batch). */
int td_jobspec_batch_dependent(const td_jobspec *spec);

/* Elements of one input sample (product of input_dims). */
uint64_t td_jobspec_input_elems(const td_jobspec *spec);

/* Output features of the last layer that has them (the class count). */
uint32_t td_jobspec_classes(const td_jobspec *spec);

/* Values per sample of the model's output: the width of the logits (and of
 * float targets). */
uint32_t td_jobspec_outputs(const td_jobspec *spec);
/* The job's target per sample, from its loss (and the model's outputs). */
td_target td_jobspec_target(const td_jobspec *spec);
static inline size_t td_target_bytes(td_target t) { return (size_t)t.width * 4u; }
/* Whether the loss is a classification one: an accuracy is measured. */
int td_jobspec_classifies(const td_jobspec *spec);
const char *td_loss_name(td_loss_kind k);

/* Whether the job file lists remedy r. */
int td_jobspec_allows(const td_jobspec *spec, td_remedy r);
/* The smallest micro-batch the job may run at: min_micro_batch, or the
 * whole batch when it does not allow accumulation. */
uint32_t td_jobspec_min_micro_batch(const td_jobspec *spec);

const char *td_precision_name(td_precision p);
const char *td_remedy_name(td_remedy r);
const char *td_layer_type_name(td_layer_type t);

#endif
