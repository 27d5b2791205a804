/* Training checkpoints: everything a job needs to go on exactly where it
 * stopped, in one safetensors file written atomically (tmp, fsync, rename,
 * fsync of the directory).
 *
 * Tensors: the caller's (weights under PyTorch's names, so the file also
 * loads as a model; optimiser state; fp32 master weights), each with its
 * dtype and shape.  "__metadata__" strings: the format and its version,
 * the job, the step, the data position (epoch and batch within it), the
 * RNG, the loss scaler's state, the callbacks' state ("cb.*", only in a job
 * that has callbacks; a checkpoint without them, as those written before
 * callbacks existed, still reads), and a CRC-32 over all of it (metadata,
 * names, shapes and data), so a damaged file is refused, not resumed from.
 *
 * Reading checks everything before it writes anything: the file's
 * structure, the format and version, the checksum, and that it holds
 * exactly the tensors the caller expects, with the same dtypes and shapes.
 */
#ifndef TD_CHECKPOINT_H
#define TD_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "callbacks.h"
#include "safetensors.h"

#define TD_CKPT_FORMAT "traind-checkpoint"
#define TD_CKPT_VERSION 1
#define TD_CKPT_NAME_MAX 64

typedef struct td_ckpt_state {
  char job[TD_CKPT_NAME_MAX]; /* the job's name */
  uint64_t step;              /* optimiser updates done */
  uint64_t epoch;             /* data position: the epoch in progress, */
  uint64_t batch;             /* and its batches already trained */
  uint64_t seed;              /* the job's seed */
  uint64_t rng;               /* generator state beyond the seed (0: keyed by seed only) */
  float loss_scale;           /* 1 without loss scaling; a finite number > 0 */
  uint32_t good_steps;        /* the loss scaler's growth tracker */
  uint64_t skipped;           /* steps the loss scaler skipped */
  bool has_callbacks;         /* cb holds the callbacks' state; else none was written */
  td_cb_state cb;
} td_ckpt_state;

/* One tensor: host memory the writer reads and the reader fills. */
typedef struct td_ckpt_tensor {
  const char *name;
  const char *dtype; /* a safetensors dtype: "F32", "BF16", "F16", ... */
  uint32_t rank;
  uint64_t shape[TD_ST_MAX_RANK];
  void *data;
  uint64_t bytes; /* product(shape) * dtype size */
} td_ckpt_tensor;

/* Write st and the n tensors to path atomically.  TD_EINVAL (err says which
 * tensor or field) for a bad tensor, a repeated name or a job name that does
 * not fit; TD_EIO, TD_ENOSPC, TD_ENOMEM. */
int td_checkpoint_write(const char *path, const td_ckpt_state *st, const td_ckpt_tensor *t,
                        size_t n, char *err, size_t errlen);

/* Read a checkpoint into st and the data of the n tensors the caller
 * expects (names, dtypes, shapes and bytes set).  On any failure nothing
 * is written and err says what is wrong:
 *   TD_ENOENT, TD_EIO   the file cannot be read
 *   TD_ETOOBIG          larger than the expected tensors could make it
 *   TD_EVERSION         another version of the format
 *   TD_EDATA            damaged, truncated, not a checkpoint, or not the
 *                       expected tensors (a different model or optimiser) */
int td_checkpoint_read(const char *path, td_ckpt_state *st, const td_ckpt_tensor *t,
                       size_t n, char *err, size_t errlen);
/* The same, from a file's bytes in memory. */
int td_checkpoint_parse(const void *buf, size_t len, td_ckpt_state *st,
                        const td_ckpt_tensor *t, size_t n, char *err, size_t errlen);

/* When to write one: every every_steps updates and every every_seconds
 * seconds of training (0 turns either off), whichever comes first. */
typedef struct td_ckpt_policy {
  uint64_t every_steps;
  double every_seconds;
} td_ckpt_policy;

/* Whether a checkpoint is due now that step updates are done at time now
 * (td_now_mono), the last one written at last_step, last_time. */
bool td_checkpoint_due(const td_ckpt_policy *p, uint64_t step, double now, uint64_t last_step,
                       double last_time);

#endif
