#include "plan.h"

#include <limits.h>
#include <string.h>

#include "error.h"
#include "util.h"

#define F32 ((uint64_t)sizeof(float))

static int mul(uint64_t a, uint64_t b, uint64_t *out) {
  if (td_mul_u64(a, b, out) < 0 || *out > TD_PLAN_LIMIT)
    return TD_ETOOBIG;
  return 0;
}

static int add(uint64_t a, uint64_t b, uint64_t *out) {
  if (td_add_u64(a, b, out) < 0 || *out > TD_PLAN_LIMIT)
    return TD_ETOOBIG;
  return 0;
}

/* Reserve rows x cols x elem bytes at the end of an arena, starting at a
 * multiple of align; *off gets where. */
static int take(uint64_t *end, uint64_t rows, uint64_t cols, uint64_t elem, uint64_t align,
                uint64_t *off) {
  uint64_t bytes, start;
  int rc;

  if ((rc = mul(rows, cols, &bytes)) < 0 || (rc = mul(bytes, elem, &bytes)) < 0 ||
      (rc = add(*end, align - 1, &start)) < 0)
    return rc;
  start -= start % align;
  if ((rc = add(start, bytes, end)) < 0)
    return rc;
  *off = start;
  return 0;
}

static uint32_t optim_slots(const td_optimizer *opt) {
  if (opt->kind == TD_OPT_ADAM)
    return 2;
  return opt->momentum != 0.0f ? 1 : 0;
}

/* BLAS takes int dimensions. */
static int check_features(uint64_t n) {
  if (n == 0)
    return TD_EINVAL;
  return n > INT_MAX ? TD_ETOOBIG : 0;
}

int td_plan_layout(const td_jobspec *spec, uint32_t micro_batch, td_layout *out) {
  td_layout l = {.micro_batch = micro_batch, .nlayers = spec->nlayers, .first_dense = -1};
  uint64_t in_elems = 1, params_end = 0, act_end = 0, cur, width, gw = 0;
  int rc;

  if (spec->nlayers < 1 || spec->nlayers > TD_MAX_LAYERS || spec->input_rank < 1 ||
      spec->input_rank > TD_MAX_RANK || spec->batch_size == 0 || micro_batch == 0 ||
      micro_batch > spec->batch_size || micro_batch > INT_MAX ||
      (spec->opt.kind != TD_OPT_SGD && spec->opt.kind != TD_OPT_ADAM) ||
      (unsigned)spec->precision >= TD_PREC__COUNT)
    return TD_EINVAL;
  for (int i = 0; i < spec->input_rank; i++) {
    if (spec->input_dims[i] == 0)
      return TD_EINVAL;
    if ((rc = mul(in_elems, spec->input_dims[i], &in_elems)) < 0)
      return rc;
  }
  if ((rc = check_features(in_elems)) < 0)
    return rc;
  l.in_elems = (uint32_t)in_elems;
  if ((rc = take(&act_end, micro_batch, in_elems, F32, TD_PLAN_ALIGN, &l.input)) < 0)
    return rc;
  cur = l.input;
  width = in_elems;

  for (int i = 0; i < spec->nlayers; i++) {
    td_layer_layout *ly = &l.layers[i];

    ly->type = spec->layers[i].type;
    ly->in = ly->out = (uint32_t)width;
    ly->x = ly->y = cur;
    switch (spec->layers[i].type) {
    case TD_LAYER_DENSE:
      if ((rc = check_features(spec->layers[i].units)) < 0)
        return rc;
      ly->out = spec->layers[i].units;
      /* Parameters are packed so the optimiser updates them in one sweep. */
      if ((rc = take(&params_end, ly->out, ly->in, F32, F32, &ly->weight)) < 0 ||
          (rc = take(&params_end, ly->out, 1, F32, F32, &ly->bias)) < 0 ||
          (rc = take(&act_end, micro_batch, ly->out, F32, TD_PLAN_ALIGN, &ly->y)) < 0)
        return rc;
      ly->needs_dx = l.first_dense >= 0;
      if (l.first_dense < 0)
        l.first_dense = i;
      if (ly->out > gw)
        gw = ly->out;
      if (ly->needs_dx && ly->in > gw)
        gw = ly->in;
      cur = ly->y;
      width = ly->out;
      break;
    case TD_LAYER_RELU:
      break;
    default:
      return TD_EINVAL;
    }
  }
  if (l.first_dense < 0)
    return TD_EINVAL;

  l.classes = (uint32_t)width;
  l.logits = cur;
  l.nparams = params_end / F32;
  l.optim_slots = optim_slots(&spec->opt);
  l.grad_width = (uint32_t)gw;
  if ((rc = take(&act_end, micro_batch, gw, F32, TD_PLAN_ALIGN, &l.grad[0])) < 0 ||
      (rc = take(&act_end, micro_batch, gw, F32, TD_PLAN_ALIGN, &l.grad[1])) < 0 ||
      (rc = take(&act_end, 2, 1, F32, TD_PLAN_ALIGN, &l.stats)) < 0 ||
      /* the arena's size: where an empty tensor after the last would start */
      (rc = take(&act_end, 0, 0, 1, TD_PLAN_ALIGN, &l.act_bytes)) < 0)
    return rc;

  l.stage_bytes = 0;
  if ((rc = take(&l.stage_bytes, micro_batch, in_elems, 1, 1, &cur)) < 0 ||
      (rc = take(&l.stage_bytes, micro_batch, 1, 1, TD_PLAN_ALIGN, &l.stage_labels)) < 0)
    return rc;

  memcpy(out, &l, sizeof(l));
  return 0;
}

int td_plan_compute(const td_jobspec *spec, uint32_t micro_batch, td_precision prec,
                    uint64_t overhead, td_plan *out) {
  td_layout l;
  td_plan p = {.micro_batch = micro_batch, .workspace = 0, .overhead = overhead};
  int rc;

  if ((unsigned)prec >= TD_PREC__COUNT)
    return TD_EINVAL;
  if ((rc = td_plan_layout(spec, micro_batch, &l)) < 0)
    return rc;
  p.accumulation = (uint32_t)(((uint64_t)spec->batch_size + micro_batch - 1) / micro_batch);
  p.activations = l.act_bytes;
  p.staging = l.stage_bytes;
  if ((rc = mul(l.nparams, F32, &p.params)) < 0 || (rc = mul(l.nparams, F32, &p.grads)) < 0 ||
      (rc = mul(p.params, l.optim_slots, &p.optim)) < 0)
    return rc;
  const uint64_t parts[] = {p.params, p.grads, p.optim, p.activations,
                            p.workspace, p.staging, p.overhead};
  for (size_t i = 0; i < TD_ARRAY_SIZE(parts); i++)
    if ((rc = add(p.total, parts[i], &p.total)) < 0)
      return rc;
  *out = p;
  return 0;
}

int td_plan_fit(const td_jobspec *spec, td_precision prec, uint64_t overhead, uint64_t budget,
                td_plan *out) {
  uint32_t lo = td_jobspec_min_micro_batch(spec), hi = spec->batch_size;
  td_plan best, p;
  int rc;

  if (hi > INT_MAX) /* BLAS takes int rows */
    hi = INT_MAX;

  if ((rc = td_plan_compute(spec, lo, prec, overhead, &best)) < 0)
    return rc;
  if (best.total > budget)
    return TD_ENOFIT;
  /* lo fits; find the largest that does.  A micro-batch whose plan
   * overflows does not fit. */
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo + 1) / 2;

    rc = td_plan_compute(spec, mid, prec, overhead, &p);
    if (rc == 0 && p.total <= budget) {
      lo = mid;
      best = p;
    } else if (rc == 0 || rc == TD_ETOOBIG) {
      hi = mid - 1;
    } else {
      return rc;
    }
  }
  *out = best;
  return 0;
}
