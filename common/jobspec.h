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

#define TD_PATH_MAX      1024
#define TD_NAME_MAX      64
#define TD_MAX_LAYERS    64
#define TD_MAX_RANK      4
#define TD_JOBFILE_MAX   (1u << 20) /* bytes of YAML a job file may hold */

typedef enum {
  TD_LAYER_DENSE = 0,
  TD_LAYER_RELU,
  TD_LAYER__COUNT
} td_layer_type;

typedef struct td_layer {
  td_layer_type type;
  uint32_t units; /* dense: output features */
  int line;       /* line in the job file, for messages */
} td_layer;

typedef enum { TD_OPT_SGD = 0, TD_OPT_ADAM } td_opt_kind;

typedef enum { TD_PREC_FP32 = 0, TD_PREC__COUNT } td_precision;

typedef enum { TD_DATA_IDX = 0 } td_data_format;

typedef struct td_data_split {
  char images[TD_PATH_MAX]; /* absolute once parsed with a base dir */
  char labels[TD_PATH_MAX];
  uint32_t limit;           /* use only the first N samples; 0 = all */
} td_data_split;

typedef struct td_optimizer {
  td_opt_kind kind;
  float lr;
  float beta1, beta2, eps; /* adam */
  float momentum;          /* sgd */
  float weight_decay;
} td_optimizer;

typedef struct td_jobspec {
  char name[TD_NAME_MAX];

  /* model */
  uint32_t input_dims[TD_MAX_RANK]; /* e.g. {28, 28} */
  int input_rank;
  td_layer layers[TD_MAX_LAYERS];
  int nlayers;

  /* data */
  td_data_format format;
  td_data_split train;
  td_data_split test;
  float norm_mean, norm_std; /* applied on the device: (x/255 - mean)/std */

  /* training */
  uint32_t batch_size;
  uint32_t epochs;
  uint64_t seed;
  td_optimizer opt;

  /* memory */
  td_precision precision;
  uint32_t min_micro_batch;

  /* scheduling */
  int32_t priority;      /* higher runs first */
  uint32_t max_retries;  /* runs again after a crash or hang, this many times */
  char device[32];       /* "" = any device */

  char output[TD_PATH_MAX]; /* safetensors path; "" = the job's state dir */
} td_jobspec;

/* Parse YAML text.  Relative paths are resolved against base_dir (which
 * may be NULL to leave them as written).  On failure returns TD_EJOBSPEC
 * (or TD_ETOOBIG, TD_ENOMEM) and writes a one-line message to err. */
int td_jobspec_parse(const char *text, size_t len, const char *base_dir,
                     td_jobspec *out, char *err, size_t errlen);

/* Read and parse a file; base_dir is the file's directory. */
int td_jobspec_load(const char *path, td_jobspec *out, char *err, size_t errlen);

/* Elements of one input sample (product of input_dims). */
uint64_t td_jobspec_input_elems(const td_jobspec *spec);

/* Output features of the last layer that has them (the class count). */
uint32_t td_jobspec_classes(const td_jobspec *spec);

const char *td_precision_name(td_precision p);
const char *td_layer_type_name(td_layer_type t);

#endif
