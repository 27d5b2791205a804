/* The worker's model: a sequential network (dense, conv2d, pooling, relu,
 * gelu, dropout, flatten, batchnorm2d, layernorm, sigmoid, tanh, softmax,
 * global_avg_pool, conv1d, add, concat; on sequences of token ids
 * embedding, pos_embedding, attention, and dense and layernorm per
 * position) trained with the job's loss (train.loss.kind: softmax
 * cross-entropy, label smoothing optional, over class ids or soft targets;
 * binary cross-entropy with logits; MSE; MAE) on one compute backend.
 *
 * td_model_create allocates exactly the arenas of the job's memory plan
 * (common/plan.h) and lays the tensors out with td_plan_layout; nothing is
 * allocated after that.  A step takes a whole batch and runs it in
 * micro-batch slices, accumulating gradients, so the update does not depend
 * on the micro-batch (bit for bit when it is a whole number of
 * TD_BLOCK_ROWS-sample blocks, kernels/backend.h; dropout masks are keyed by the
 * sample's index in the batch) - except with batchnorm2d, whose statistics
 * are each micro-batch's own (td_plan.batch_dependent).  The shrink
 * remedy alone changes that: a batch becomes k smaller updates (see
 * td_model_train_step_recover).
 *
 * The update: in fp16, unscale the gradients, and skip the step (halving the
 * loss scale) if one is inf or NaN; clip by the global norm; the optimiser
 * (SGD with momentum, dampening, Nesterov; Adam; AdamW) at the schedule's
 * rate for this step.  bf16 and fp16 keep fp32 master weights and compute on
 * values rounded as a GPU's 16-bit tensors would hold them.  A frozen layer
 * (trainable: false) takes no part in it: its gradients are not checked,
 * not in the norm, and its parameters and optimiser state are not touched;
 * the backward pass stops at the first layer that trains.
 */
#ifndef TD_MODEL_H
#define TD_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "jobspec.h"
#include "plan.h"
#include "safetensors.h"

typedef struct td_model td_model;

typedef struct td_step_stats {
  double loss_sum;  /* the loss summed over the samples */
  uint32_t correct; /* samples whose arg-max is the label (binary_cross_entropy: whose
                       outputs all agree with their targets) */
  uint32_t topk;    /* samples whose label is among the train.top_k largest logits */
  double abs_sum;   /* mse, mae: each sample's mean absolute error, summed */
  uint32_t count;
} td_step_stats;

/* Build spec's model on be at micro_batch (1..batch_size) and initialise the
 * weights from spec->seed like PyTorch: nn.Linear and nn.Conv2d
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, the norms'
 * gamma 1 and beta 0, BatchNorm's running variance 1; nn.Embedding N(0, 1),
 * nn.MultiheadAttention's (in_proj xavier-uniform, out_proj as nn.Linear,
 * biases 0), a positional embedding 0.  TD_EOOM (be's td_mem_stats say what was asked and
 * free), TD_EINVAL/TD_ETOOBIG for a spec the planner refuses, TD_ENOMEM, or a
 * backend failure; a one-line reason goes to err. */
int td_model_create(td_backend *be, const td_jobspec *spec, uint32_t micro_batch,
                    td_model **out, char *err, size_t errlen);
/* td_model_create at a plan the chooser made (td_plan_choose): spec with
 * the chosen precision and recompute, micro_batch, and each batch trained
 * as shrink updates (1: none; else a divisor of the batch size, which the
 * job must allow: see td_model_train_step_recover).  TD_EINVAL for another
 * shrink. */
int td_model_create_as(td_backend *be, const td_jobspec *spec, uint32_t micro_batch,
                       uint32_t shrink, td_model **out, char *err, size_t errlen);
/* Frees the arenas.  Accepts NULL. */
void td_model_destroy(td_model *m);

/* Whether the model has forward and backward functions for layer type t
 * (a view, which runs nothing, has none). */
int td_model_layer_runs(td_layer_type t);

const td_plan *td_model_plan(const td_model *m);
const td_layout *td_model_layout(const td_model *m);
uint64_t td_model_nparams(const td_model *m);
/* Optimiser steps taken so far: every update, so k per batch under shrink. */
uint64_t td_model_steps(const td_model *m);
/* Samples per optimiser update for a whole batch: the job's batch size, or
 * batch_size / k while the shrink remedy trains each batch as k updates. */
uint32_t td_model_effective_batch(const td_model *m);
/* Why the last call failed ("" if it did not). */
const char *td_model_error(const td_model *m);

/* The last TD_EOOM: where it happened (forward, backward, optimizer, or
 * workspace: allocating the arenas), the bytes asked for and free then,
 * and the micro-batch it ran at. */
typedef struct td_model_oom {
  const char *phase;
  uint64_t asked, free;
  uint32_t micro_batch;
} td_model_oom;
const td_model_oom *td_model_last_oom(const td_model *m);

/* Run at another micro-batch, at most the effective batch (at the
 * precision, recompute setting and effective batch the model runs with
 * now): frees the activation, workspace and staging arenas and allocates
 * them at the new size (parameters, gradients and optimiser state stay).  On failure (TD_EOOM: phase workspace) the model
 * keeps its weights but cannot step until a re-plan succeeds. */
int td_model_replan(td_model *m, uint32_t micro_batch);

/* count samples: [count, in_elems] elements of spec->sample_dtype (uint8,
 * int32, float16 or float32, little-endian, as the loader delivers them)
 * and their targets as td_jobspec_target says: int32 class ids [count],
 * each < the class count (TD_EDATA otherwise), or floats [count, outputs].
 * count is 1..batch_size for the training calls, any positive number for
 * eval.  The model's input is (x * scale - norm_mean) / norm_std with
 * scale 1/255 for uint8 (pixels to [0, 1], like torchvision's ToTensor)
 * and 1 for the other types, which are taken as they are stored.
 * Uploads are asynchronous from memory registered with
 * td_backend_host_register: the samples stay unchanged until the call
 * returns, which syncs. */

/* Gradients of the mean loss into the gradient arena; no update. */
int td_model_backward(td_model *m, const void *samples, const void *targets,
                      uint32_t count, td_step_stats *out);
/* td_model_backward, then one optimiser update (k of them under shrink,
 * see td_model_train_step_recover).  A step that fails (TD_EOOM in any
 * phase, in any of its updates) leaves the weights, the optimiser state
 * and the counters as they were: it can be redone. */
int td_model_train_step(td_model *m, const void *samples, const void *targets,
                        uint32_t count, td_step_stats *out);
/* What td_model_train_step_recover tells as it recovers (each may be NULL). */
typedef struct td_model_hooks {
  void (*oom)(void *arg, const td_model_oom *oom);
  void (*replan)(void *arg, const td_plan *plan);
  void *arg;
} td_model_hooks;

/* td_model_train_step that survives running out of memory: on TD_EOOM in
 * any phase the partial step is discarded, the model is re-planned by the
 * plan chooser for what is free (td_plan_choose, common/plan.h: no trial on
 * the device) and the same step is redone from the same samples, so the
 * effective batch and the result do not change (bit for bit while the
 * micro-batch is whole blocks: td_plan.bit_identical).
 * The job's remedies apply in its order: the whole batch as it runs now
 * first, then each listed remedy added to those before it (accumulate:
 * smaller micro-batches; recompute; bf16 or fp16 from fp32).
 *
 * shrink, wherever the job lists it, comes last: only when none of the
 * others fits at the job's smallest allowed micro-batch.  Each batch of B
 * samples is then trained as k optimiser updates, k the smallest divisor
 * of B above 1 whose plan at micro-batch B/k fits (so a prime B goes
 * straight to k = B): update j takes the j-th of k consecutive slices
 * (B/k samples each; a shorter batch is cut into near-equal slices) at the
 * schedule's rate times slice / batch (1/k: the linear scaling rule, so the
 * k small steps sum to about the one step of the whole batch; exactly so
 * to first order for plain SGD).  The samples and their order do not
 * change, the effective batch is B/k (td_model_effective_batch), and the
 * plan is that of a batch of B/k (micro-batch B/k, accumulation 1).  Every
 * update counts as a step: the checkpoint's step, the schedule's position
 * (which so advances k per batch: its positions are optimiser updates),
 * Adam's bias correction, fp16's loss scaler and the dropout keys (whose
 * sample index is the sample's place in its update's slice); each update
 * clips its own gradient.  Shrink goes below memory.min_micro_batch, down
 * to an effective batch of 1; a later td_model_set_budget that leaves room
 * goes back up.  The state before a batch's first update is copied to the
 * host (a buffer allocated at create when the job lists shrink; a device
 * to host copy of the parameters and optimiser state per batch while
 * shrunk), so a failure in a later update still leaves the weights as
 * before the step.  Without shrink in the remedies nothing of this
 * applies.
 *
 * TD_ENOFIT when even the job's smallest allowed micro-batch does not fit
 * (with shrink: not even micro-batch 1); the weights are then as before the
 * step. */
int td_model_train_step_recover(td_model *m, const void *samples, const void *targets,
                                uint32_t count, const td_model_hooks *hooks,
                                td_step_stats *out);

/* The device budget changed: if the plan no longer fits, re-plan at the
 * largest micro-batch that does, with the remedies as
 * td_model_train_step_recover applies them (*replanned says so).  If it
 * fits but runs below the micro-batch the model was created at (after an
 * OOM or a lower budget, or shrunk), re-plan up to the largest micro-batch,
 * at most that one, that the budget allows (the whole effective batch
 * first), keeping the precision and recomputation it runs with;
 * should those arenas not allocate, it goes back to the plan it had.
 * TD_ENOFIT when nothing fits; TD_EOOM if the re-plan's arenas could not
 * be allocated. */
int td_model_set_budget(td_model *m, uint64_t budget, bool *replanned);

/* Forward pass only: the loss and the metrics. */
int td_model_eval(td_model *m, const void *samples, const void *targets,
                  uint32_t count, td_step_stats *out);

/* Copy the trainable parameters (or their gradients) to or from host
 * memory: nparams floats in the plan's layout (per layer with parameters:
 * weight then bias; the norms: gamma then beta; zeros up to the next
 * weight's TD_PLAN_PARAM_ALIGN boundary). */
int td_model_get_params(td_model *m, float *dst);
int td_model_set_params(td_model *m, const float *src);
int td_model_get_grads(td_model *m, float *dst);

/* Everything a checkpoint must hold to resume the model exactly, beyond
 * the data position: the persistent state as one flat fp32 vector
 * (parameters, then non-trainable buffers such as BatchNorm's running
 * statistics, then optimiser state; gradients are not state: a step
 * rebuilds them), and the counters.  state_floats is fixed for a job spec:
 * it does not depend on the micro-batch. */
uint64_t td_model_state_floats(const td_model *m);
int td_model_get_state(td_model *m, float *dst);
/* TD_EINVAL if n is not td_model_state_floats(m). */
int td_model_set_state(td_model *m, const float *src, uint64_t n);

typedef struct td_model_progress {
  uint64_t steps;      /* training steps taken (td_model_steps), skipped ones included */
  float loss_scale;    /* 1 without dynamic loss scaling */
  uint32_t good_steps; /* the loss scaler's growth tracker */
  uint64_t skipped;    /* steps the loss scaler skipped */
  double lr_factor;    /* times the schedule's rate (reduce-on-plateau); 0: none, as 1 */
} td_model_progress;
void td_model_get_progress(const td_model *m, td_model_progress *out);
/* TD_EINVAL for a loss scale that is not finite and positive. */
int td_model_set_progress(td_model *m, const td_model_progress *p);

/* Write the weights as safetensors with PyTorch's nn.Sequential names:
 * "<layer index>.weight" (dense [out, in], conv2d [k, c, kh, kw], the norms
 * gamma) and "<layer index>.bias"; batchnorm2d also "<i>.running_mean",
 * "<i>.running_var" and "<i>.num_batches_tracked" (an I64 scalar); the
 * embeddings "<i>.weight" alone; attention nn.MultiheadAttention's
 * "<i>.in_proj_weight", "<i>.in_proj_bias", "<i>.out_proj.weight",
 * "<i>.out_proj.bias" (common/layers.c names each type's). */
int td_model_save(td_model *m, const char *path, const td_st_meta *meta, size_t nmeta);
/* The parameters and buffers from a model file read whole (the job file's
 * init:), in place of the random init; strict as common/modelfile.h says.
 * TD_EDATA (td_model_error names the first tensor that does not match),
 * TD_ENOMEM, or the backend's failure; the model is unchanged on failure. */
int td_model_load(td_model *m, const td_st_file *f);

#endif
