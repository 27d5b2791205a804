/* The memory plan: the bytes a job's worker allocates, as a pure function of
 * the job spec, the micro-batch and the precision.  traind admits jobs by it;
 * the worker allocates exactly the arenas it names and lays its tensors out
 * with td_plan_layout, so the two cannot disagree.
 *
 * Arenas (one allocation each): parameters (the fp32 master copy and
 * BatchNorm's running statistics), gradients, optimiser state, activations,
 * workspace (the largest conv2d's im2col matrix or conv1d's block of
 * columns, then in mixed precision the 16-bit copy of the parameters the
 * forward and backward passes read) and input staging (one micro-batch of
 * samples in their stored type, spec->sample_dtype, and their targets:
 * td_jobspec_target).
 *
 * The activation arena is laid out by a liveness plan over one micro-batch's
 * schedule: normalise, each layer's forward, the loss, then (with activation
 * recomputation, each segment's forward again) each layer's backward.  Every
 * tensor lives from the op that writes it to the last op that reads it;
 * tensors whose lives do not overlap share bytes.  What the backward pass
 * keeps (each type's row in common/layers.c says it): dense, conv2d and
 * conv1d their input, relu, sigmoid, tanh and softmax their output, pooling
 * both, gelu its input, batchnorm2d and layernorm their input and
 * statistics, attention its input and what its row names
 * (td_layer_sizes.saved); dropout nothing (its mask is recomputed from its
 * key), nor global_avg_pool.  relu, sigmoid, tanh, softmax and dropout work
 * in place when nothing needs their input; flatten is a view.  In bf16/fp16
 * the activations are stored as 16-bit and widened into short-lived fp32
 * scratch tensors for the op that reads them; token ids (an embedding's
 * input) stay fp32, exact.
 *
 * A model may be a graph (td_layer.inputs): file order is a topological
 * order, the forward pass runs in it and the backward pass in reverse.
 * Liveness is the same rule over the graph: an output lives until its last
 * reader, forward or backward.  An op works in place only over an input
 * that it alone reads (through views too) and, with recomputation, that
 * its own segment makes; add may take its first or second input's bytes.
 * A tensor read by one layer gets its gradient from that layer's backward
 * op (in place where the op allows; add hands its own gradient, uncopied,
 * to one input read nowhere else, and copies it to the others).  A tensor
 * read by several gets one gradient tensor: the reader the backward pass
 * meets first (the last in the file) writes it, each later one writes its
 * share into scratch (or over its own output's gradient) and adds it, a
 * fixed order whatever the micro-batch or the threads.  Recomputation runs
 * by segments of the file's order, each from a layer with parameters to the
 * next; what a segment reads from an earlier one stays stored until then.
 */
#ifndef TD_PLAN_H
#define TD_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jobspec.h"

#define TD_PLAN_ALIGN 64                    /* bytes; every tensor starts aligned */
/* Each layer's weight (and so its gradient and optimiser moments) starts at
 * this many bytes into its arena: cuBLAS and cuDNN pick their fastest
 * kernels for 256-byte aligned operands, and cudaMalloc's arenas start so.
 * The CPU backend gets the same layout: its plan stays its peak. */
#define TD_PLAN_PARAM_ALIGN 256
#define TD_PLAN_LIMIT ((uint64_t)1 << 62)   /* larger totals are TD_ETOOBIG */

typedef struct td_plan {
  uint32_t micro_batch;
  uint32_t accumulation;  /* micro-batches per step: ceil(batch_size / micro_batch) */
  uint64_t params, grads, optim, activations, workspace, staging, overhead, total;
  td_precision precision;
  bool recompute;         /* activation recomputation */
  uint32_t shrink;        /* optimiser updates per batch: 1, or k under the shrink remedy
                             (the plan is then that of a batch of batch_size / k) */
  /* the model holds batchnorm2d: cutting a batch into micro-batches
   * changes its statistics, so accumulation is not exact */
  bool batch_dependent;
  /* the micro-batch is the whole batch or a whole number of blocks of
   * TD_PLAN_BLOCK_ROWS samples (and no BatchNorm statistics are cut, no
   * shrink): the gradients are those of the whole batch to the bit */
  bool bit_identical;
} td_plan;

/* The rows the backends run and sum a batch in (kernels/backend.h:
 * TD_BLOCK_ROWS, which must agree): a micro-batch that is a whole number of
 * blocks gives the whole batch's bits. */
#define TD_PLAN_BLOCK_ROWS 16

/* Where one layer's tensors live.  Parameter offsets are bytes into the
 * parameter arena; the gradient arena and each optimiser moment use the same
 * offsets for the trainable ones.  Activation offsets are bytes into the
 * activation arena, for micro_batch rows; TD_PLAN_NONE where a tensor does
 * not exist. */
#define TD_PLAN_NONE UINT64_MAX

typedef struct td_layer_layout {
  td_layer_type type;
  uint32_t in, out;          /* features per sample */
  td_shape in_shape, out_shape;
  uint64_t weight, bias;     /* dense [out, in], conv2d [k, c, kh, kw] and [k];
                                batchnorm2d, layernorm: gamma and beta */
  uint64_t nweight, nbias;   /* floats */
  uint64_t running;          /* batchnorm2d: running mean then var [2c], params arena */
  uint64_t x, y;             /* stored input and output (in place: x == y) */
  bool half_x, half_y;       /* stored as 16-bit (bf16/fp16 runs) */
  uint64_t stats;            /* batchnorm2d [2c], layernorm [2 rows] (a sequence: [2 rows
                                T]): mean, invstd */
  uint64_t junk;             /* batchnorm2d recomputed: where its running stats go */
  uint64_t saved;            /* what the forward op keeps for the backward op beyond x and
                                y, fp32 (attention: td_layer_sizes.saved per sample) */
  uint64_t scratch;          /* the backward op's own fp32 scratch (td_layer_sizes.scratch) */
  uint64_t saved_bytes;      /* the saved tensor's bytes at micro_batch (0: none) */
  uint64_t dy, dx;           /* fp32 gradients of the output and input */
  uint64_t tx, ty, tw;       /* mixed precision forward scratch: fp32 input, output
                                (tx for an in-place op), widened weight and bias */
  uint64_t bx, by, bw;       /* the same for the backward op */
  bool needs_x, needs_y;     /* what the backward op reads */
  bool needs_dx;             /* a layer before it has parameters */
  bool recomputed;           /* run again in the backward pass */
  uint32_t chunk;            /* mixed precision: rows per op call (the scratch tensors'
                                rows): 1 for conv2d, pooling and element-wise ops on
                                [C, H, W] tensors, else micro_batch */
  uint64_t act_bytes;        /* stored output bytes (0: in place or a view) */
  /* the graph: x and in above are the first input's */
  int ninputs;               /* 1, or a join's (add, concat) */
  uint64_t xs[TD_MAX_INPUTS];  /* each input's stored rows */
  uint32_t ins[TD_MAX_INPUTS]; /* and its features per sample */
  uint8_t half_xs;           /* bit k: input k is stored 16-bit */
  uint64_t txs[TD_MAX_INPUTS]; /* a join in mixed precision: each input widened (ty: the
                                  fp32 result) */
  bool has_dy;               /* its output has a gradient: its backward op runs */
  uint64_t dx_sum;           /* TD_PLAN_NONE, or the gradient its dx is then added to: the
                                input feeds several layers, and a later one's share came
                                first (dx is then scratch, or dy's bytes) */
  uint64_t dxs[TD_MAX_INPUTS]; /* a join: each input's gradient (TD_PLAN_NONE: none
                                  needed; add's may be dy itself) */
  uint8_t dxs_sum;           /* bit k: add the share to dxs[k] rather than write it */
} td_layer_layout;

typedef struct td_layout {
  uint32_t micro_batch;
  uint32_t in_elems;      /* features of one input sample */
  td_dtype in_dtype;      /* their type as stored (spec->sample_dtype) */
  uint32_t classes;       /* width of the logits */
  int nlayers;
  td_layer_layout layers[TD_MAX_LAYERS];
  int first_dense;        /* the first layer with parameters: the backward pass stops here */
  uint64_t nparams;       /* floats of trainable fp32 parameters, with the zeros that
                             pad each weight to TD_PLAN_PARAM_ALIGN (they stay 0: no
                             op writes a gradient there) */
  uint64_t nbuffers;      /* fp32 non-trainable buffers after them (BN running stats) */
  uint64_t half_params;   /* mixed precision: the 16-bit copy of the parameters, bytes
                             into the workspace arena; TD_PLAN_NONE in fp32 */
  uint32_t optim_slots;   /* fp32 optimiser values per parameter: Adam 2, SGD+momentum 1 */
  td_precision precision;
  bool recompute;
  /* activation arena */
  uint64_t input;         /* normalised input [micro_batch, in_elems], 16-bit if half_x
                             of layer 0 */
  uint64_t input_tmp;     /* mixed precision: fp32 scratch the input is normalised into */
  uint64_t logits;        /* [micro_batch, classes], always fp32 */
  uint64_t dlogits;       /* its gradient */
  uint32_t grad_width;    /* widest activation gradient, features */
  uint64_t stats;         /* 8 floats: summed loss, correct count, clip norm (2), inf flag,
                             top-k hits, summed absolute error */
  uint64_t act_bytes;     /* the arena */
  uint64_t act_peak;      /* the most bytes live at once (<= act_bytes) */
  uint64_t workspace;     /* bytes: the largest conv2d's at 0, then the 16-bit copy */
  /* staging arena: samples at 0, then the targets */
  uint64_t stage_labels;
  uint64_t stage_bytes;
} td_layout;

/* Lay out the model of spec for micro_batch rows, at spec->precision and
 * spec->recompute.  TD_EINVAL for an invalid spec (no layer with parameters,
 * a shape chain that does not hold, zero units or dims, micro_batch 0 or
 * above the batch size, unknown optimiser or precision, a sample_dtype other
 * than uint8, int32, float16 or float32); TD_ETOOBIG if a
 * size overflows or exceeds TD_PLAN_LIMIT.  Nothing is written on failure. */
int td_plan_layout(const td_jobspec *spec, uint32_t micro_batch, td_layout *out);

/* Bytes the worker will allocate for this job at this micro-batch and
 * precision (with spec->recompute).  overhead: per-process bytes measured by a probe (0 on the CPU
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

/* The plan of running spec at micro_batch with this precision and
 * recomputation, each batch trained as shrink updates (1: the whole batch;
 * k > 1, a divisor of the batch size: the plan of a batch of batch_size / k,
 * micro_batch at most that).  td_plan_compute's errors; TD_EINVAL for a
 * shrink that does not divide the batch. */
int td_plan_at(const td_jobspec *spec, uint32_t micro_batch, td_precision prec, bool recompute,
               uint32_t shrink, uint64_t overhead, td_plan *out);

/* What the plan chooser decided: the plan (its micro_batch, accumulation,
 * precision, recompute and shrink are the settings to run with) and which
 * of the job's remedies it uses, as bits (1u << td_remedy): accumulate when
 * the micro-batch is below the batch, recompute, bf16 or fp16 when they
 * change what spec says, shrink when it trains a batch as several updates. */
typedef struct td_plan_choice {
  td_plan plan;
  unsigned remedies;
} td_plan_choice;

/* The one plan chooser: admission, the `plan` request, the worker's re-plan
 * and traind's books all call it.  The first configuration that fits
 * budget bytes, at most cap rows per micro-batch (UINT32_MAX: no cap):
 * spec as it is at its whole batch, then with the job's remedies
 * (spec->remedies) added one by one in its order (accumulate: the largest
 * micro-batch down to td_jobspec_min_micro_batch; recompute; bf16 or fp16
 * from fp32, the first listed), and shrink last of all wherever the job
 * lists it: the fewest updates k per batch, k a divisor of it, whose
 * micro-batch batch/k fits (below memory.min_micro_batch too, down to 1).
 * spec is the job as it runs now: a worker that already applied a remedy
 * passes its spec with that precision or recompute.
 * TD_ENOFIT (nothing written) when nothing fits; TD_EINVAL or TD_ETOOBIG
 * for a spec that cannot be planned.  Pure: no device is touched. */
int td_plan_choose(const td_jobspec *spec, uint64_t budget, uint64_t overhead, uint32_t cap,
                   td_plan_choice *out);

/* The smallest plan the chooser can choose (the least budget it admits
 * anything in): over each of its configurations at its smallest
 * micro-batch, the least total; the first of equals. */
int td_plan_smallest(const td_jobspec *spec, uint64_t overhead, td_plan_choice *out);

/* The remedies (bits 1u << td_remedy) plan applies to spec. */
unsigned td_plan_remedies(const td_jobspec *spec, const td_plan *plan);
/* Whether training at plan gives bit for bit what spec trained on its whole
 * batch gives: plan.bit_identical at spec's own precision. */
bool td_plan_bit_identical(const td_jobspec *spec, const td_plan *plan);

/* "recompute, bf16" for those bits, in td_remedy order; "none" for 0. */
void td_plan_remedies_text(unsigned remedies, char *buf, size_t cap);

#endif
