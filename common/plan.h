/* The memory plan: the bytes a job's worker allocates, as a pure function of
 * the job spec, the micro-batch and the precision.  traind admits jobs by it;
 * the worker allocates exactly the arenas it names and lays its tensors out
 * with td_plan_layout, so the two cannot disagree.
 *
 * Arenas (one allocation each): parameters, gradients, optimiser state,
 * activations (forward outputs kept for the backward pass, two ping-pong
 * gradient buffers and the loss statistics), workspace (none yet) and input
 * staging (one micro-batch of uint8 pixels and labels).
 */
#ifndef TD_PLAN_H
#define TD_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "jobspec.h"

#define TD_PLAN_ALIGN 64                    /* bytes; every tensor starts aligned */
#define TD_PLAN_LIMIT ((uint64_t)1 << 62)   /* larger totals are TD_ETOOBIG */

typedef struct td_plan {
  uint32_t micro_batch;
  uint32_t accumulation;  /* micro-batches per step: ceil(batch_size / micro_batch) */
  uint64_t params, grads, optim, activations, workspace, staging, overhead, total;
} td_plan;

/* Where one layer's tensors live.  Parameter offsets are bytes into the
 * parameter arena; the gradient arena and each optimiser moment use the same
 * offsets.  Activation offsets are bytes into the activation arena, for
 * micro_batch rows. */
typedef struct td_layer_layout {
  td_layer_type type;
  uint32_t in, out;       /* features per sample */
  uint64_t weight, bias;  /* dense: weight [out, in] row-major, bias [out] */
  uint64_t x, y;          /* input and output (ReLU works in place: x == y) */
  bool needs_dx;          /* dense: a layer before it has parameters */
} td_layer_layout;

typedef struct td_layout {
  uint32_t micro_batch;
  uint32_t in_elems;      /* features of one input sample (uint8 pixels) */
  uint32_t classes;       /* width of the logits */
  int nlayers;
  td_layer_layout layers[TD_MAX_LAYERS];
  int first_dense;        /* the backward pass stops here */
  uint64_t nparams;       /* fp32 parameters */
  uint32_t optim_slots;   /* fp32 optimiser values per parameter: Adam 2, SGD+momentum 1 */
  /* activation arena */
  uint64_t input;         /* normalised input [micro_batch, in_elems] */
  uint64_t logits;        /* [micro_batch, classes] */
  uint64_t grad[2];       /* ping-pong activation gradients, grad_width floats per row */
  uint32_t grad_width;
  uint64_t stats;         /* 2 floats: summed loss, correct count */
  uint64_t act_bytes;
  /* staging arena: pixels at 0 */
  uint64_t stage_labels;
  uint64_t stage_bytes;
} td_layout;

/* Lay out the model of spec for micro_batch rows.  TD_EINVAL for an invalid
 * spec (no dense layer, zero units or dims, micro_batch 0 or above the batch
 * size, unknown optimiser or precision); TD_ETOOBIG if a size overflows or
 * exceeds TD_PLAN_LIMIT.  Nothing is written on failure. */
int td_plan_layout(const td_jobspec *spec, uint32_t micro_batch, td_layout *out);

/* Bytes the worker will allocate for this job at this micro-batch and
 * precision.  overhead: per-process bytes measured by a probe (0 on the CPU
 * backend).  Returns TD_ETOOBIG (with no output written) if any product
 * overflows or exceeds 2^62, TD_EINVAL for an invalid spec. */
int td_plan_compute(const td_jobspec *spec, uint32_t micro_batch, td_precision prec,
                    uint64_t overhead, td_plan *out);

/* The largest micro-batch in [td_jobspec_min_micro_batch(spec), batch_size]
 * whose plan fits budget bytes, found by binary search (the plan grows with
 * the micro-batch), and its plan in *out.  TD_ENOFIT (nothing written) if
 * even the smallest does not fit; TD_EINVAL or TD_ETOOBIG if the spec cannot
 * be planned at its smallest micro-batch.  No device is touched. */
int td_plan_fit(const td_jobspec *spec, td_precision prec, uint64_t overhead, uint64_t budget,
                td_plan *out);

#endif
