#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "error.h"
#include "layers.h"
#include "lossscale.h"
#include "modelfile.h"
#include "schedule.h"
#include "util.h"

/* The stats slot of the activation arena, in floats. */
enum { ST_LOSS, ST_CORRECT, ST_NORM, ST_COEF, ST_INF, ST_TOPK, ST_ABS };

struct td_model {
  td_backend *be;
  td_jobspec spec;        /* for re-planning; a remedy may change its precision and
                             recompute */
  td_target target;       /* what a sample's target is (td_jobspec_target) */
  td_layout lay;
  td_plan plan;
  td_model_oom oom;       /* the last out-of-memory failure */
  bool ready;             /* the per-micro-batch arenas are allocated */
  td_schedule sched;
  td_lossscale ls;
  uint32_t batch_size;
  uint32_t admitted_mb;   /* the micro-batch it was created at: a raised budget re-plans
                             back up to it */
  uint32_t shrink;        /* optimiser updates per batch: 1, or k with the shrink remedy */
  /* shrink: the state before a batch's first update, restored if a later one
   * fails, so a failed step can be redone */
  float *snap;            /* parameters and buffers, then the optimiser's; NULL when the
                             job does not list shrink */
  uint64_t snap_steps, snap_bn;
  td_lossscale snap_ls;
  uint64_t steps;         /* training steps taken, skipped ones included */
  double lr_factor;       /* reduce-on-plateau's, on the schedule's rate; 0 means 1 */
  uint64_t bn_batches;    /* BatchNorm's num_batches_tracked: training micro-batches */
  int nbn;                /* layers with running statistics (batchnorm2d) */
  /* freezing (trainable: false): the optimiser sees only these spans of the
   * parameter arena, in floats; the backward pass stops at first_trained,
   * the first layer with parameters that are not frozen */
  size_t span_off[TD_MAX_LAYERS], span_n[TD_MAX_LAYERS];
  int nspans;
  int first_trained;
  td_buf params, grads, optim, act, work, stage;
  char err[256];
};

static int fail(td_model *m, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(td_model *m, int rc, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(m->err, sizeof(m->err), fmt, ap);
  va_end(ap);
  return rc;
}

static float *at(const td_buf *b, uint64_t off) {
  return off == TD_PLAN_NONE ? NULL : (float *)((char *)b->ptr + off);
}

static float *act(const td_model *m, uint64_t off) { return at(&m->act, off); }

static bool half(const td_model *m) { return m->lay.precision != TD_PREC_FP32; }

static td_half_kind half_kind(const td_model *m) {
  return m->lay.precision == TD_PREC_BF16 ? TD_HALF_BF16 : TD_HALF_F16;
}

/* splitmix64: a small, well-mixed generator that a seed fully determines. */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s, float bound) {
  double u = (double)(rng_next(s) >> 40) * (1.0 / 16777216.0); /* [0, 1) */
  return (float)((2.0 * u - 1.0) * bound);
}

/* N(0, 1) by Box-Muller, one draw per value. */
static float rng_normal(uint64_t *s) {
  double u1 = ((double)(rng_next(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0); /* (0, 1] */
  double u2 = (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);

  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* PyTorch's defaults: nn.Linear and nn.Conv2d U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 * for weight and bias, the norms gamma 1 and beta 0, running var 1,
 * nn.Embedding N(0, 1), nn.MultiheadAttention's (the row's init says which). */
static int init_weights(td_model *m, uint64_t seed) {
  const td_layout *l = &m->lay;
  uint64_t count = l->nparams + l->nbuffers, s = seed;
  float *host = calloc(count ? count : 1, sizeof(float));
  int rc;

  if (host == NULL)
    return fail(m, TD_ENOMEM, "no host memory to initialise %llu parameters",
                (unsigned long long)count);
  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];
    float *w = (float *)((char *)host + (ly->weight == TD_PLAN_NONE ? 0 : ly->weight));
    float *b = (float *)((char *)host + (ly->bias == TD_PLAN_NONE ? 0 : ly->bias));

    switch (td_layer_def_of(ly->type)->init) {
    case TD_INIT_FAN_IN: {
      float bound = 1.0f / sqrtf((float)(ly->nweight / ly->nbias));

      for (uint64_t j = 0; j < ly->nweight; j++)
        w[j] = rng_uniform(&s, bound);
      for (uint64_t j = 0; j < ly->nbias; j++)
        b[j] = rng_uniform(&s, bound);
      break;
    }
    case TD_INIT_ONES:
      for (uint64_t j = 0; j < ly->nweight; j++)
        w[j] = 1.0f;
      if (ly->running != TD_PLAN_NONE) {
        float *var = (float *)((char *)host + ly->running) + ly->nweight;

        for (uint64_t j = 0; j < ly->nweight; j++)
          var[j] = 1.0f;
      }
      break;
    case TD_INIT_NORMAL:
      for (uint64_t j = 0; j < ly->nweight; j++)
        w[j] = rng_normal(&s);
      break;
    case TD_INIT_ATTENTION: {
      /* in_proj [3D, D]: xavier_uniform; out_proj [D, D]: nn.Linear's;
       * the biases stay 0 */
      uint64_t d = ly->in_shape.h;
      float xavier = sqrtf(6.0f / (float)(4 * d)), linear = 1.0f / sqrtf((float)d);

      for (uint64_t j = 0; j < 3 * d * d; j++)
        w[j] = rng_uniform(&s, xavier);
      for (uint64_t j = 3 * d * d; j < ly->nweight; j++)
        w[j] = rng_uniform(&s, linear);
      break;
    }
    case TD_INIT_ZEROS:
    case TD_INIT_NONE:
      break;
    }
  }
  td_backend_upload(m->be, m->params.ptr, host, count * sizeof(float));
  rc = td_backend_sync(m->be);
  free(host);
  return rc < 0 ? fail(m, rc, "%s", td_backend_error(m->be)) : 0;
}

/* The spans of the parameter arena that train: each layer's parameters
 * run up to the next layer's (the padding between them, zeros, goes with
 * them); frozen layers' are left out, neighbours merged.  Without a frozen
 * layer that is one span, the whole arena, as the optimiser always swept. */
static void find_spans(td_model *m) {
  const td_layout *l = &m->lay;

  m->nspans = 0;
  m->first_trained = -1;
  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];
    uint64_t start, end = l->nparams * sizeof(float);

    if (ly->weight == TD_PLAN_NONE || m->spec.layers[i].frozen)
      continue;
    if (m->first_trained < 0)
      m->first_trained = i;
    start = ly->weight;
    for (int k = i + 1; k < l->nlayers; k++) {
      if (l->layers[k].weight != TD_PLAN_NONE) {
        end = l->layers[k].weight;
        break;
      }
    }
    start /= sizeof(float);
    end /= sizeof(float);
    if (m->nspans > 0 && m->span_off[m->nspans - 1] + m->span_n[m->nspans - 1] == start) {
      m->span_n[m->nspans - 1] += end - start;
    } else {
      m->span_off[m->nspans] = start;
      m->span_n[m->nspans++] = end - start;
    }
  }
}

/* The plan's arenas, in allocation order; the first three do not depend on
 * the micro-batch and live as long as the model. */
#define PERSISTENT_ARENAS 3
typedef struct arena {
  const char *name;
  td_buf *buf;
  uint64_t bytes;
} arena;

static void arenas_of(td_model *m, arena out[6]) {
  const arena a[6] = {
      {"parameters", &m->params, m->plan.params},
      {"gradients", &m->grads, m->plan.grads},
      {"optimiser state", &m->optim, m->plan.optim},
      {"activations", &m->act, m->plan.activations},
      {"workspace", &m->work, m->plan.workspace},
      {"input staging", &m->stage, m->plan.staging},
  };
  memcpy(out, a, sizeof(a));
}

static void note_oom(td_model *m, const char *phase) {
  td_mem_stats mem;

  td_backend_mem(m->be, &mem);
  m->oom = (td_model_oom){.phase = phase, .asked = mem.oom_asked, .free = mem.oom_free,
                          .micro_batch = m->lay.micro_batch};
}

/* Allocate arenas [from, 6); on failure frees none (the caller does). */
static int alloc_arenas(td_model *m, size_t from) {
  arena a[6];
  int rc;

  arenas_of(m, a);
  for (size_t i = from; i < TD_ARRAY_SIZE(a); i++) {
    if ((rc = td_backend_alloc(m->be, a[i].bytes, a[i].buf)) == 0)
      continue;
    if (rc == TD_EOOM) {
      note_oom(m, "workspace");
      return fail(m, rc, "%s: out of memory for the %s arena: %llu bytes asked, %llu free "
                  "(the plan needs %llu bytes at micro-batch %u)", td_backend_device(m->be),
                  a[i].name, (unsigned long long)m->oom.asked,
                  (unsigned long long)m->oom.free, (unsigned long long)m->plan.total,
                  m->plan.micro_batch);
    }
    return fail(m, rc, "%s: cannot allocate the %s arena: %s", td_backend_device(m->be),
                a[i].name, td_backend_error(m->be));
  }
  return 0;
}

static void free_step_arenas(td_model *m) {
  td_backend_free(m->be, &m->stage);
  td_backend_free(m->be, &m->work);
  td_backend_free(m->be, &m->act);
  m->ready = false;
}

/* The conv2d geometry of layer i for n rows (pooling ignores k). */
static td_conv2d_desc window_of(const td_model *m, int i, uint32_t n) {
  const td_layer *sl = &m->spec.layers[i];
  const td_shape *in = &m->lay.layers[i].in_shape;
  int stride = (int)td_layer_stride(sl);

  return (td_conv2d_desc){.n = (int)n, .c = (int)in->c, .h = (int)in->h, .w = (int)in->w,
                          .k = (int)sl->filters, .kh = (int)sl->kernel, .kw = (int)sl->kernel,
                          .sh = stride, .sw = stride, .ph = (int)sl->padding,
                          .pw = (int)sl->padding};
}

static td_batchnorm_desc bn_desc(const td_model *m, int i, uint32_t n) {
  const td_layer *sl = &m->spec.layers[i];
  const td_shape *in = &m->lay.layers[i].in_shape;

  return (td_batchnorm_desc){.n = (int)n, .c = (int)in->c, .hw = (int)(in->h * in->w),
                             .eps = td_layer_eps(sl), .momentum = td_layer_momentum(sl)};
}

static uint64_t conv_workspace(const td_layout *l) {
  return l->half_params != TD_PLAN_NONE ? l->half_params : l->workspace;
}

static int layer_workspace(td_model *m, int i, uint64_t *bytes);

/* The plan counts the CPU backend's conv2d workspace, which does not depend
 * on the rows; another backend's (cuDNN's) may, and not only upwards.  So
 * the workspace arena grows to the most any layer's op needs (and the
 * model's plan says so), the 16-bit weights moving up behind it. */
static int size_workspace(td_model *m) {
  uint64_t have = conv_workspace(&m->lay), need = have, grow;

  for (int i = 0; i < m->lay.nlayers; i++) {
    uint64_t bytes = 0;
    int rc;

    if ((rc = layer_workspace(m, i, &bytes)) < 0)
      return rc;
    if (bytes > need)
      need = bytes;
  }
  if (need <= have)
    return 0;
  if (m->lay.half_params != TD_PLAN_NONE) /* the 16-bit copy stays aligned */
    need = (need + TD_PLAN_ALIGN - 1) / TD_PLAN_ALIGN * TD_PLAN_ALIGN;
  grow = need - have;
  if (m->lay.half_params != TD_PLAN_NONE)
    m->lay.half_params += grow;
  m->lay.workspace += grow;
  m->plan.workspace += grow;
  m->plan.total += grow;
  return 0;
}

/* Loss scaling follows the precision the model runs at. */
static void set_precision(td_model *m, td_precision prec) {
  td_lossscale_cfg cfg = m->spec.loss_scale;

  cfg.enabled = prec == TD_PREC_FP16;
  if (cfg.enabled != m->ls.cfg.enabled || m->ls.scale == 0.0f)
    td_lossscale_init(&m->ls, &cfg);
  m->spec.precision = prec;
  m->spec.loss_scale.enabled = cfg.enabled;
}

int td_model_create(td_backend *be, const td_jobspec *spec, uint32_t micro_batch,
                    td_model **out, char *err, size_t errlen) {
  return td_model_create_as(be, spec, micro_batch, 1, out, err, errlen);
}

int td_model_create_as(td_backend *be, const td_jobspec *spec, uint32_t micro_batch,
                       uint32_t shrink, td_model **out, char *err, size_t errlen) {
  td_jobspec *s = NULL;
  td_mem_stats mem;
  td_model *m;
  int rc;

  if ((m = calloc(1, sizeof(*m))) == NULL)
    return TD_ENOMEM;
  m->be = be;
  m->spec = *spec;
  m->target = td_jobspec_target(spec);
  m->batch_size = spec->batch_size;
  m->admitted_mb = micro_batch;
  m->shrink = shrink;
  if (shrink == 0 || spec->batch_size % shrink != 0 ||
      (shrink > 1 && !td_jobspec_allows(spec, TD_REMEDY_SHRINK))) {
    rc = fail(m, TD_EINVAL, "cannot train a batch of %u as %u updates", spec->batch_size,
              shrink);
    goto destroy;
  }
  m->sched = spec->schedule;
  m->sched.lr = spec->opt.lr; /* a spec built in code may leave the schedule zeroed */
  if (td_schedule_check(&m->sched, NULL, 0) < 0) {
    rc = fail(m, TD_EINVAL, "the learning-rate schedule is invalid");
    goto destroy;
  }
  set_precision(m, spec->precision);
  td_backend_mem(be, &mem);
  /* shrunk, the layout is that of a batch of batch_size / shrink */
  if ((s = malloc(sizeof(*s))) == NULL) {
    rc = fail(m, TD_ENOMEM, "no host memory to plan the model");
    goto destroy;
  }
  *s = *spec;
  s->batch_size = spec->batch_size / shrink;
  if ((rc = td_plan_layout(s, micro_batch, &m->lay)) < 0 ||
      (rc = td_plan_at(spec, micro_batch, spec->precision, spec->recompute != 0, shrink,
                       mem.overhead, &m->plan)) < 0) {
    fail(m, rc, "cannot plan the model at micro-batch %u: %s", micro_batch, td_strerror(rc));
    goto destroy;
  }
  free(s);
  s = NULL;
  for (int i = 0; i < m->lay.nlayers; i++)
    m->nbn += m->lay.layers[i].running != TD_PLAN_NONE;
  find_spans(m);
  if (m->nspans == 0) {
    rc = fail(m, TD_EINVAL, "every layer with parameters is frozen: nothing to train");
    goto destroy;
  }
  if ((rc = size_workspace(m)) < 0 || (rc = alloc_arenas(m, 0)) < 0)
    goto destroy;
  m->ready = true;
  if (td_jobspec_allows(spec, TD_REMEDY_SHRINK) &&
      (m->snap = malloc(m->params.bytes + m->optim.bytes + 1)) == NULL) {
    rc = fail(m, TD_ENOMEM, "no host memory for the state the shrink remedy keeps (%llu bytes)",
              (unsigned long long)(m->params.bytes + m->optim.bytes));
    goto destroy;
  }
  if ((rc = init_weights(m, spec->seed)) < 0)
    goto destroy;
  *out = m;
  return 0;

destroy:
  free(s);
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, "%s", m->err);
  td_model_destroy(m);
  return rc;
}

void td_model_destroy(td_model *m) {
  if (m == NULL)
    return;
  free_step_arenas(m);
  td_backend_free(m->be, &m->optim);
  td_backend_free(m->be, &m->grads);
  td_backend_free(m->be, &m->params);
  free(m->snap);
  free(m);
}

const td_plan *td_model_plan(const td_model *m) { return &m->plan; }
const td_layout *td_model_layout(const td_model *m) { return &m->lay; }
uint64_t td_model_nparams(const td_model *m) { return m->lay.nparams; }
uint64_t td_model_steps(const td_model *m) { return m->steps; }
const char *td_model_error(const td_model *m) { return m->err; }
const td_model_oom *td_model_last_oom(const td_model *m) { return &m->oom; }
uint32_t td_model_effective_batch(const td_model *m) { return m->batch_size / m->shrink; }

/* Re-plan at micro_batch with spec's precision and recompute, training each
 * batch as `shrink` updates (the plan is that of a batch of batch/shrink). */
static int replan_as(td_model *m, const td_jobspec *spec, uint32_t micro_batch,
                     uint32_t shrink) {
  td_jobspec s = *spec;
  td_mem_stats mem;
  td_layout lay;
  td_plan plan;
  int rc;

  s.batch_size = m->batch_size / shrink;
  td_backend_mem(m->be, &mem);
  if ((rc = td_plan_layout(&s, micro_batch, &lay)) < 0 ||
      (rc = td_plan_at(spec, micro_batch, spec->precision, spec->recompute != 0, shrink,
                       mem.overhead, &plan)) < 0)
    return fail(m, rc, "cannot plan the model at micro-batch %u: %s", micro_batch,
                td_strerror(rc));
  /* Free first: the old and new arenas need not fit side by side. */
  free_step_arenas(m);
  m->lay = lay;
  m->plan = plan;
  m->shrink = shrink;
  m->spec.recompute = spec->recompute;
  set_precision(m, spec->precision);
  if ((rc = size_workspace(m)) < 0 || (rc = alloc_arenas(m, PERSISTENT_ARENAS)) < 0) {
    free_step_arenas(m);
    return rc;
  }
  m->ready = true;
  return 0;
}

int td_model_replan(td_model *m, uint32_t micro_batch) {
  return replan_as(m, &m->spec, micro_batch, m->shrink);
}

/* Rows [r, r + rows) of a stored activation of width cols, as fp32: in
 * place, or widened into the scratch tensor. */
static float *load(td_model *m, uint64_t off, bool is_half, uint64_t scratch, size_t r,
                   size_t rows, size_t cols) {
  if (!is_half)
    return act(m, off) + r * cols;
  td_backend_from_half(m->be, half_kind(m), (const uint16_t *)act(m, off) + r * cols,
                       act(m, scratch), rows * cols);
  return act(m, scratch);
}

/* Layer i's weight and bias as the op reads them: 16-bit values widened
 * into scratch in mixed precision (dense and conv2d), else the master copy. */
static const float *weights(td_model *m, int i, uint64_t scratch) {
  const td_layer_layout *ly = &m->lay.layers[i];

  if (scratch == TD_PLAN_NONE)
    return at(&m->params, ly->weight);
  td_backend_from_half(m->be, half_kind(m),
                       (const uint16_t *)((char *)m->work.ptr + m->lay.half_params) +
                           ly->weight / sizeof(float),
                       act(m, scratch), ly->nweight + ly->nbias);
  return act(m, scratch);
}

/* Rows per op call: in mixed precision the spatial ops run a sample at a
 * time, so their fp32 scratch holds one sample (the plan's chunk). */
static uint32_t chunk_of(const td_model *m, const td_layer_layout *ly, uint32_t n) {
  return half(m) && ly->chunk < n ? ly->chunk : n;
}

/* One op call of layer i on rows [r, r + rows) of a micro-batch, as the
 * layer's functions see it: fp32 tensors, the 16-bit ones widened. */
typedef struct layer_call {
  td_model *m;
  int i;
  const td_layer_layout *ly;
  const td_layer *sl;
  uint32_t r, rows;
  const float *w;           /* weight then bias as the op reads them (half_weights) */
  float *x, *y;             /* the input and output rows (backward: those it needs) */
  float *dy, *dx, *dw, *db; /* backward: gradients; dx NULL when nothing needs it */
  float beta;               /* backward: 1 adds the parameter gradients to the arena's */
  bool training;            /* forward: dropout drops, BatchNorm uses the batch's stats */
  bool again;               /* forward: the backward pass recomputing it */
  uint64_t sample;          /* row 0's index in the step's batch */
  /* joins (add, concat): every input's rows (xs[0] is x) and, backward,
   * each input's gradient rows (NULL when nothing needs it; add's may be dy
   * itself), with bit k of dxs_sum set where the share is added to what
   * dxs[k] holds instead of written */
  int nx;
  float *xs[TD_MAX_INPUTS];
  float *dxs[TD_MAX_INPUTS];
  uint8_t dxs_sum;
} layer_call;

typedef void (*layer_fn)(const layer_call *c);

/* What runs for one layer type: its forward op (also its recomputation)
 * and backward op, each calling the backend's ops, so they run on every
 * backend; workspace: the bytes this backend's op needs beyond the plan's
 * (NULL: none).  The rest of what a type is lives in common/layers.c. */
typedef struct layer_ops {
  layer_fn fwd, bwd;
  int (*workspace)(td_model *m, int i, uint64_t *bytes);
} layer_ops;

/* The rows an op acting per position sees for c's samples: T each in a
 * sequence, else one. */
static size_t positions(const layer_call *c) {
  return (size_t)c->rows * td_shape_rows(&c->ly->in_shape);
}

/* On a sequence, per position: the blocks of TD_BLOCK_ROWS rows are then
 * positions, and a micro-batch of whole sample blocks still starts each
 * on a block boundary (T * 16k rows in). */
static void dense_fwd(const layer_call *c) {
  td_backend_dense_fwd(c->m->be, c->x, c->w, c->w + c->ly->nweight, c->y, (int)positions(c),
                       (int)td_shape_width(&c->ly->in_shape),
                       (int)td_shape_width(&c->ly->out_shape));
}

static void dense_bwd(const layer_call *c) {
  td_backend_dense_bwd(c->m->be, c->x, c->w, c->dy, c->dx, c->dw, c->db, (int)positions(c),
                       (int)td_shape_width(&c->ly->in_shape),
                       (int)td_shape_width(&c->ly->out_shape), c->beta);
}

static void conv2d_fwd(const layer_call *c) {
  td_conv2d_desc d = window_of(c->m, c->i, c->rows);

  td_backend_conv2d_fwd(c->m->be, &d, c->x, c->w, c->w + c->ly->nweight, c->y, c->m->work.ptr,
                        conv_workspace(&c->m->lay));
}

static void conv2d_bwd(const layer_call *c) {
  td_conv2d_desc d = window_of(c->m, c->i, c->rows);

  td_backend_conv2d_bwd(c->m->be, &d, c->x, c->w, c->dy, c->dx, c->dw, c->db, c->beta,
                        c->m->work.ptr, conv_workspace(&c->m->lay));
}

/* A conv layer runs at every row count up to its step: the micro-batch, a
 * last slice of any size (a batch or an evaluation of any count), one
 * sample at a time in mixed precision; cuDNN's workspace may differ at
 * each, so the most of them.  One query per row count: cuDNN answers from
 * its heuristics on the host, and this runs only when the model is
 * (re-)planned. */
static int conv2d_workspace(td_model *m, int i, uint64_t *bytes) {
  uint32_t top = chunk_of(m, &m->lay.layers[i], m->lay.micro_batch);

  for (uint32_t n = 1; n <= top; n++) {
    td_conv2d_desc d = window_of(m, i, n);
    uint64_t need;
    int rc;

    if ((rc = td_backend_conv2d_workspace(m->be, &d, &need)) < 0)
      return fail(m, rc, "%s: no conv2d workspace size for layer %d at %u rows: %s",
                  td_backend_device(m->be), i, n, td_backend_error(m->be));
    if (need > *bytes)
      *bytes = need;
  }
  return 0;
}

static void pool2d_fwd(const layer_call *c, td_pool_mode mode) {
  td_conv2d_desc d = window_of(c->m, c->i, c->rows);

  td_backend_pool2d_fwd(c->m->be, mode, &d, c->x, c->y);
}

static void pool2d_bwd(const layer_call *c, td_pool_mode mode) {
  td_conv2d_desc d = window_of(c->m, c->i, c->rows);

  td_backend_pool2d_bwd(c->m->be, mode, &d, c->x, c->y, c->dy, c->dx);
}

static void maxpool2d_fwd(const layer_call *c) { pool2d_fwd(c, TD_POOL_MAX); }
static void maxpool2d_bwd(const layer_call *c) { pool2d_bwd(c, TD_POOL_MAX); }
static void avgpool2d_fwd(const layer_call *c) { pool2d_fwd(c, TD_POOL_AVG); }
static void avgpool2d_bwd(const layer_call *c) { pool2d_bwd(c, TD_POOL_AVG); }

static void relu_fwd(const layer_call *c) {
  td_backend_relu_fwd(c->m->be, c->x, c->y, (size_t)c->rows * c->ly->out);
}

static void relu_bwd(const layer_call *c) {
  td_backend_relu_bwd(c->m->be, c->y, c->dy, c->dx, (size_t)c->rows * c->ly->out);
}

static td_gelu_kind gelu_kind(const td_layer *l) {
  return l->approximate ? TD_GELU_TANH : TD_GELU_ERF;
}

static void gelu_fwd(const layer_call *c) {
  td_backend_gelu_fwd(c->m->be, gelu_kind(c->sl), c->x, c->y, (size_t)c->rows * c->ly->out);
}

static void gelu_bwd(const layer_call *c) {
  td_backend_gelu_bwd(c->m->be, gelu_kind(c->sl), c->x, c->dy, c->dx,
                      (size_t)c->rows * c->ly->out);
}

/* The mask is keyed by the sample and the step, so forward, recomputation
 * and backward draw the same one however the batch is cut. */
static td_dropout_key dropout_key(const layer_call *c) {
  return (td_dropout_key){.seed = c->m->spec.seed, .layer = (uint32_t)c->i,
                          .step = c->m->steps, .sample = c->sample + c->r};
}

static void dropout_fwd(const layer_call *c) {
  td_dropout_key key = dropout_key(c);

  /* evaluation: the identity (p 0 copies when not in place) */
  td_backend_dropout(c->m->be, c->x, c->y, c->rows, c->ly->out, c->training ? c->sl->p : 0.0f,
                     &key);
}

static void dropout_bwd(const layer_call *c) {
  td_dropout_key key = dropout_key(c);

  td_backend_dropout(c->m->be, c->dy, c->dx, c->rows, c->ly->out, c->sl->p, &key);
}

/* never cut: the statistics are the micro-batch's */
static void batchnorm2d_fwd(const layer_call *c) {
  td_model *m = c->m;
  const td_layer_layout *ly = c->ly;
  td_batchnorm_desc d = bn_desc(m, c->i, c->rows);
  float *run = c->again ? act(m, ly->junk) : at(&m->params, ly->running);
  float *st = act(m, ly->stats);

  td_backend_batchnorm2d_fwd(m->be, &d, c->training, c->x, c->y, at(&m->params, ly->weight),
                             at(&m->params, ly->bias), run, run + d.c, st, st + d.c);
}

static void batchnorm2d_bwd(const layer_call *c) {
  td_model *m = c->m;
  td_batchnorm_desc d = bn_desc(m, c->i, c->rows);
  float *st = act(m, c->ly->stats);

  td_backend_batchnorm2d_bwd(m->be, &d, c->x, c->dy, c->dx, at(&m->params, c->ly->weight), st,
                             st + d.c, c->beta, c->dw, c->db);
}

/* On a sequence, per position over D (nn.LayerNorm(D) on [n, T, D]): a
 * mean and inverse std per position. */
static void layernorm_fwd(const layer_call *c) {
  td_model *m = c->m;
  const td_layer_layout *ly = c->ly;
  size_t t = td_shape_rows(&ly->in_shape);
  float *st = act(m, ly->stats) + c->r * t;

  td_backend_layernorm_fwd(m->be, c->x, c->y, positions(c), td_shape_width(&ly->in_shape),
                           at(&m->params, ly->weight), at(&m->params, ly->bias),
                           td_layer_eps(c->sl), st, st + m->lay.micro_batch * t);
}

static void layernorm_bwd(const layer_call *c) {
  td_model *m = c->m;
  const td_layer_layout *ly = c->ly;
  size_t t = td_shape_rows(&ly->in_shape);
  float *st = act(m, ly->stats) + c->r * t;

  td_backend_layernorm_bwd(m->be, c->x, c->dy, c->dx, positions(c),
                           td_shape_width(&ly->in_shape), at(&m->params, ly->weight), st,
                           st + m->lay.micro_batch * t, c->beta, c->dw, c->db);
}

/* The ids are the input as it came (fp32, exact): T a sample, one per
 * position of the output. */
static void embedding_fwd(const layer_call *c) {
  td_backend_embedding_fwd(c->m->be, c->x, at(&c->m->params, c->ly->weight), c->y,
                           (size_t)c->rows * c->ly->in, c->sl->vocab, c->sl->dim);
}

static void embedding_bwd(const layer_call *c) {
  td_backend_embedding_bwd(c->m->be, c->x, c->dy, c->dw, (size_t)c->rows * c->ly->in,
                           c->sl->vocab, c->sl->dim, c->beta);
}

/* [T, D] added to each sample; the gradient flows through unchanged (dx is
 * dy's bytes: grad_in_place) */
static void pos_embedding_fwd(const layer_call *c) {
  td_backend_add_rows(c->m->be, c->x, at(&c->m->params, c->ly->weight), c->y, c->rows,
                      c->ly->in);
}

static void pos_embedding_bwd(const layer_call *c) {
  td_backend_bias_grad(c->m->be, c->dy, c->rows, c->ly->in, c->beta, c->dw);
}

/* What attention keeps, for micro_batch samples: qkv [mb T, 3D], o [mb T,
 * D], p [mb, heads, T, T] (common/layers.c: attention_sizes); its
 * backward scratch: dqkv, dout, then dp [mb, T, T].  Rows from c->r on. */
typedef struct attn_bufs {
  td_attention_desc a;
  float *qkv, *o, *p, *dqkv, *dout, *dp;
} attn_bufs;

static attn_bufs attn_bufs_of(const layer_call *c) {
  const td_layer_layout *ly = c->ly;
  size_t mb = c->m->lay.micro_batch, t = ly->in_shape.c, d = ly->in_shape.h, h = c->sl->heads;
  float *sv = act(c->m, ly->saved), *sc = act(c->m, ly->scratch);
  attn_bufs b = {.a = {.n = (int)c->rows, .t = (int)t, .d = (int)d, .heads = (int)h,
                       .causal = c->sl->causal != 0}};

  b.qkv = sv + c->r * t * 3 * d;
  b.o = sv + mb * t * 3 * d + c->r * t * d;
  b.p = sv + mb * t * 4 * d + c->r * h * t * t;
  if (sc != NULL) {
    b.dqkv = sc + c->r * t * 3 * d;
    b.dout = sc + mb * t * 3 * d + c->r * t * d;
    b.dp = sc + mb * t * 4 * d + c->r * t * t;
  }
  return b;
}

static void attention_fwd(const layer_call *c) {
  attn_bufs b = attn_bufs_of(c);

  td_backend_attention_fwd(c->m->be, &b.a, c->x, c->w, c->w + c->ly->nweight, b.qkv, b.p, b.o,
                           c->y);
}

static void attention_bwd(const layer_call *c) {
  attn_bufs b = attn_bufs_of(c);

  td_backend_attention_bwd(c->m->be, &b.a, c->x, c->w, b.qkv, b.p, b.o, c->dy, c->dx, c->dw,
                           c->db, c->beta, b.dqkv, b.dout, b.dp);
}

static td_act_kind act_kind(const layer_call *c) {
  return c->ly->type == TD_LAYER_TANH ? TD_ACT_TANH : TD_ACT_SIGMOID;
}

static void act_fwd(const layer_call *c) {
  td_backend_act_fwd(c->m->be, act_kind(c), c->x, c->y, (size_t)c->rows * c->ly->out);
}

static void act_bwd(const layer_call *c) {
  td_backend_act_bwd(c->m->be, act_kind(c), c->y, c->dy, c->dx, (size_t)c->rows * c->ly->out);
}

/* A tensor of rows seen as [outer, mid, inner], for an op along mid. */
typedef struct axes3 {
  size_t outer, mid, inner;
} axes3;

/* softmax's feature axis: C of a flat row, D of each position of a
 * sequence, C of each pixel of [C, H, W]. */
static axes3 softmax_axes(const layer_call *c) {
  const td_shape *in = &c->ly->in_shape;

  if (in->seq)
    return (axes3){(size_t)c->rows * in->c, in->h, 1};
  return (axes3){c->rows, in->c, (size_t)in->h * in->w};
}

static void softmax_fwd(const layer_call *c) {
  axes3 a = softmax_axes(c);

  td_backend_softmax_fwd(c->m->be, c->x, c->y, a.outer, a.mid, a.inner);
}

static void softmax_bwd(const layer_call *c) {
  axes3 a = softmax_axes(c);

  td_backend_softmax_bwd(c->m->be, c->y, c->dy, c->dx, a.outer, a.mid, a.inner);
}

/* What global average pooling averages: each plane of [C, H, W], the
 * positions of a sequence [T, D]. */
static axes3 pooled_axes(const layer_call *c) {
  const td_shape *in = &c->ly->in_shape;

  if (in->seq)
    return (axes3){c->rows, in->c, in->h};
  return (axes3){(size_t)c->rows * in->c, (size_t)in->h * in->w, 1};
}

static void global_avg_pool_fwd(const layer_call *c) {
  axes3 a = pooled_axes(c);

  td_backend_mean_fwd(c->m->be, c->x, c->y, a.outer, a.mid, a.inner);
}

static void global_avg_pool_bwd(const layer_call *c) {
  axes3 a = pooled_axes(c);

  td_backend_mean_bwd(c->m->be, c->dy, c->dx, a.outer, a.mid, a.inner);
}

/* A sequence [L, C_in] (c = L, h = C_in) for n rows. */
static td_conv1d_desc conv1d_of(const layer_call *c) {
  const td_shape *in = &c->ly->in_shape;

  return (td_conv1d_desc){.n = (int)c->rows, .l = (int)in->c, .c = (int)in->h,
                          .k = (int)c->sl->filters, .kw = (int)c->sl->kernel,
                          .stride = (int)td_layer_stride(c->sl), .pad = (int)c->sl->padding};
}

static void conv1d_fwd(const layer_call *c) {
  td_conv1d_desc d = conv1d_of(c);

  td_backend_conv1d_fwd(c->m->be, &d, c->x, c->w, c->w + c->ly->nweight, c->y, c->m->work.ptr,
                        conv_workspace(&c->m->lay));
}

static void conv1d_bwd(const layer_call *c) {
  td_conv1d_desc d = conv1d_of(c);

  td_backend_conv1d_bwd(c->m->be, &d, c->x, c->w, c->dy, c->dx, c->dw, c->db, c->beta,
                        c->m->work.ptr, conv_workspace(&c->m->lay));
}

/* add: the sum in input order, as PyTorch's a + b + c; backward, each input
 * gets dy (the one the plan handed dy itself to gets nothing to do). */
static void add_fwd(const layer_call *c) {
  size_t n = (size_t)c->rows * c->ly->out;

  td_backend_add(c->m->be, c->xs[0], c->xs[1], c->y, n);
  for (int k = 2; k < c->nx; k++)
    td_backend_add(c->m->be, c->y, c->xs[k], c->y, n);
}

static void add_bwd(const layer_call *c) {
  size_t n = (size_t)c->rows * c->ly->out;

  for (int k = 0; k < c->nx; k++) {
    bool sum = c->dxs_sum & (1u << k);

    if (c->dxs[k] != NULL && (c->dxs[k] != c->dy || sum))
      td_backend_copy2d(c->m->be, c->dy, n, c->dxs[k], n, 1, n, sum ? 1.0f : 0.0f);
  }
}

/* concat: along C of [C, H, W] and flat rows (each sample's block of each
 * input is contiguous), along D of [T, D] (each position's). */
static void concat_geometry(const layer_call *c, size_t *outer, size_t *width) {
  const td_shape *o = &c->ly->out_shape;

  *outer = o->seq ? o->c : 1;
  *width = c->ly->out / *outer;
}

static void concat_fwd(const layer_call *c) {
  size_t outer, width, off = 0;

  concat_geometry(c, &outer, &width);
  for (int k = 0; k < c->nx; k++) {
    size_t w = c->ly->ins[k] / outer;

    td_backend_copy2d(c->m->be, c->xs[k], w, c->y + off, width, c->rows * outer, w, 0.0f);
    off += w;
  }
}

static void concat_bwd(const layer_call *c) {
  size_t outer, width, off = 0;

  concat_geometry(c, &outer, &width);
  for (int k = 0; k < c->nx; k++) {
    size_t w = c->ly->ins[k] / outer;

    if (c->dxs[k] != NULL)
      td_backend_copy2d(c->m->be, c->dy + off, width, c->dxs[k], w, c->rows * outer, w,
                        c->dxs_sum & (1u << k) ? 1.0f : 0.0f);
    off += w;
  }
}

/* A view (flatten) has no row: nothing runs. */
static const layer_ops layer_table[TD_LAYER__COUNT] = {
    [TD_LAYER_DENSE] = {dense_fwd, dense_bwd, NULL},
    [TD_LAYER_RELU] = {relu_fwd, relu_bwd, NULL},
    [TD_LAYER_CONV2D] = {conv2d_fwd, conv2d_bwd, conv2d_workspace},
    [TD_LAYER_MAXPOOL2D] = {maxpool2d_fwd, maxpool2d_bwd, NULL},
    [TD_LAYER_AVGPOOL2D] = {avgpool2d_fwd, avgpool2d_bwd, NULL},
    [TD_LAYER_GELU] = {gelu_fwd, gelu_bwd, NULL},
    [TD_LAYER_DROPOUT] = {dropout_fwd, dropout_bwd, NULL},
    [TD_LAYER_BATCHNORM2D] = {batchnorm2d_fwd, batchnorm2d_bwd, NULL},
    [TD_LAYER_LAYERNORM] = {layernorm_fwd, layernorm_bwd, NULL},
    [TD_LAYER_SIGMOID] = {act_fwd, act_bwd, NULL},
    [TD_LAYER_TANH] = {act_fwd, act_bwd, NULL},
    [TD_LAYER_SOFTMAX] = {softmax_fwd, softmax_bwd, NULL},
    [TD_LAYER_GLOBAL_AVG_POOL] = {global_avg_pool_fwd, global_avg_pool_bwd, NULL},
    /* its workspace, one block's columns, is the same on every backend: the plan's */
    [TD_LAYER_CONV1D] = {conv1d_fwd, conv1d_bwd, NULL},
    [TD_LAYER_ADD] = {add_fwd, add_bwd, NULL},
    [TD_LAYER_CONCAT] = {concat_fwd, concat_bwd, NULL},
    [TD_LAYER_EMBEDDING] = {embedding_fwd, embedding_bwd, NULL},
    [TD_LAYER_POS_EMBEDDING] = {pos_embedding_fwd, pos_embedding_bwd, NULL},
    [TD_LAYER_ATTENTION] = {attention_fwd, attention_bwd, NULL},
};

int td_model_layer_runs(td_layer_type t) {
  return (unsigned)t < TD_LAYER__COUNT && layer_table[t].fwd != NULL &&
         layer_table[t].bwd != NULL;
}

static int layer_workspace(td_model *m, int i, uint64_t *bytes) {
  const layer_ops *ops = &layer_table[m->lay.layers[i].type];

  *bytes = 0;
  return ops->workspace != NULL ? ops->workspace(m, i, bytes) : 0;
}

/* Layer i's forward op on n rows whose first is sample `sample` of the
 * step's batch.  again: the backward pass recomputing it (BatchNorm then
 * leaves its running statistics alone). */
static void layer_fwd(td_model *m, int i, uint32_t n, bool training, bool again,
                      uint64_t sample) {
  const td_layer_layout *ly = &m->lay.layers[i];
  const td_layer_def *def = td_layer_def_of(ly->type);
  td_backend *be = m->be;
  bool in_place = ly->x == ly->y;
  uint32_t step = chunk_of(m, ly, n);
  layer_call c = {.m = m, .i = i, .ly = ly, .sl = &m->spec.layers[i], .training = training,
                  .again = again, .sample = sample};

  if (def->view)
    return;
  if (def->half_weights)
    c.w = weights(m, i, ly->tw);
  c.nx = ly->ninputs;
  for (uint32_t r = 0; r < n; r += step) {
    uint32_t rows = n - r < step ? n - r : step;
    size_t nout = (size_t)rows * ly->out;
    float *x, *y;

    if (def->join != NULL) {
      /* each input widened on its own; the result in ty (mixed precision) */
      for (int k = 0; k < ly->ninputs; k++)
        c.xs[k] = load(m, ly->xs[k], ly->half_xs & (1u << k), ly->txs[k], r, rows, ly->ins[k]);
      x = c.xs[0];
      y = !ly->half_y ? act(m, ly->y) + (size_t)r * ly->out : act(m, ly->ty);
    } else {
      x = load(m, ly->x, ly->half_x, ly->tx, r, rows, ly->in);
      y = !ly->half_y ? act(m, ly->y) + (size_t)r * ly->out : in_place ? x : act(m, ly->ty);
    }
    c.r = r;
    c.rows = rows;
    c.x = x;
    c.y = y;
    layer_table[ly->type].fwd(&c);
    if (!half(m))
      continue;
    if (ly->half_y)
      td_backend_to_half(be, half_kind(m), y, (uint16_t *)act(m, ly->y) + (size_t)r * ly->out,
                         nout);
    else
      td_backend_round_half(be, half_kind(m), y, nout);
  }
}

/* A tensor several layers read: their gradients' shares summed into the
 * first's, in the order the backward pass meets them. */
static void sum_grad(td_model *m, float *sum, const float *share, size_t n) {
  td_backend_add(m->be, sum, share, sum, n);
  if (half(m))
    td_backend_round_half(m->be, half_kind(m), sum, n);
}

/* Layer i's backward op; beta 1 adds its parameter gradients to the
 * previous micro-batches'. */
static void layer_bwd(td_model *m, int i, uint32_t n, float beta, uint64_t sample) {
  const td_layer_layout *ly = &m->lay.layers[i];
  const td_layer_def *def = td_layer_def_of(ly->type);
  td_backend *be = m->be;
  uint32_t step = chunk_of(m, ly, n);
  layer_call c = {.m = m, .i = i, .ly = ly, .sl = &m->spec.layers[i],
                  .dw = at(&m->grads, ly->weight), .db = at(&m->grads, ly->bias),
                  .sample = sample, .nx = ly->ninputs, .dxs_sum = ly->dxs_sum};

  if (!ly->has_dy)
    return;
  if (def->view) {
    size_t nin = (size_t)n * ly->in;

    /* its gradient is dy: moved only where another reader's share is there */
    if (ly->needs_dx && ly->dx != ly->dy)
      td_backend_copy2d(be, act(m, ly->dy), nin, act(m, ly->dx), nin, 1, nin, 0.0f);
    if (ly->needs_dx && ly->dx_sum != TD_PLAN_NONE)
      sum_grad(m, act(m, ly->dx_sum), act(m, ly->dx), nin);
    return;
  }
  if (def->half_weights)
    c.w = weights(m, i, ly->bw);
  for (uint32_t r = 0; r < n; r += step) {
    uint32_t rows = n - r < step ? n - r : step;
    size_t nin = (size_t)rows * ly->in;

    c.r = r;
    c.rows = rows;
    c.dy = act(m, ly->dy) + (size_t)r * ly->out;
    /* below the first layer that trains, nothing needs the gradient */
    c.dx = ly->needs_dx && i > m->first_trained ? act(m, ly->dx) + (size_t)r * ly->in : NULL;
    c.x = ly->needs_x ? load(m, ly->x, ly->half_x, ly->bx, r, rows, ly->in) : NULL;
    c.y = ly->needs_y ? load(m, ly->y, ly->half_y, ly->by, r, rows, ly->out) : NULL;
    for (int k = 0; def->join != NULL && k < ly->ninputs; k++)
      c.dxs[k] = ly->dxs[k] != TD_PLAN_NONE ? act(m, ly->dxs[k]) + (size_t)r * ly->ins[k] : NULL;
    c.beta = r == 0 ? beta : 1.0f; /* later rows add to the first's */
    layer_table[ly->type].bwd(&c);
    /* activation gradients are what a 16-bit one would hold: an fp16
     * overflow shows as inf, for the loss scaler to find */
    if (half(m) && def->join == NULL && c.dx != NULL)
      td_backend_round_half(be, half_kind(m), c.dx, nin);
    for (int k = 0; half(m) && def->join != NULL && k < ly->ninputs; k++)
      if (c.dxs[k] != NULL)
        td_backend_round_half(be, half_kind(m), c.dxs[k], (size_t)rows * ly->ins[k]);
    if (def->join == NULL && c.dx != NULL && ly->dx_sum != TD_PLAN_NONE)
      sum_grad(m, act(m, ly->dx_sum) + (size_t)r * ly->in, c.dx, nin);
  }
}

/* Backward from the logits' gradient to the first layer with parameters
 * that trains (frozen layers below it need no gradient), segment by
 * segment; a recomputed segment runs its forward again first. */
static void backward(td_model *m, uint32_t n, float beta, uint64_t sample) {
  const td_layout *l = &m->lay;
  int end = l->nlayers;

  while (end > m->first_trained) {
    int a = end - 1;

    while (a > m->first_trained && l->layers[a].nweight == 0)
      a--;
    if (l->layers[a].recomputed)
      for (int i = a; i < end; i++)
        layer_fwd(m, i, n, true, true, sample);
    for (int i = end - 1; i >= a; i--)
      layer_bwd(m, i, n, beta, sample);
    end = a;
  }
}

/* A failure latched while queuing phase: collect it (the partial step is
 * discarded: the next attempt overwrites the gradients from its first
 * slice). */
static int step_failed(td_model *m, const char *phase) {
  int rc = td_backend_status(m->be);

  if (rc == TD_EOOM)
    note_oom(m, phase);
  /* the wait may find the context dead behind an out-of-memory failure:
   * that wins, or the caller would re-plan on a dead context */
  if (td_backend_sync(m->be) == TD_ECUDA)
    rc = TD_ECUDA;
  return fail(m, rc, "%s (in the %s pass)", td_backend_error(m->be), phase);
}

/* (x * scale - mean) / std: uint8 pixels are scaled to [0, 1] as
 * torchvision's ToTensor does, the other types taken as they are; token
 * ids of any type are taken exactly (scale 1, mean 0, std 1). */
static void input_norm(const td_model *m, float *scale, float *mean, float *std) {
  bool ids = td_layer_def_of(m->spec.layers[0].type)->ids;

  *scale = !ids && m->lay.in_dtype == TD_DTYPE_U8 ? 1.0f / 255.0f : 1.0f;
  *mean = ids ? 0.0f : m->spec.norm_mean;
  *std = ids ? 1.0f : m->spec.norm_std;
}

/* Token ids for an embedding: whole numbers below its vocabulary.  Checked
 * here, on the host, so a bad one names its sample instead of reaching the
 * device (whose op would make it a row of zeros). */
static int check_ids(td_model *m, const void *samples, uint32_t count) {
  const td_layer *first = &m->spec.layers[0];
  size_t n = (size_t)count * m->lay.in_elems, i;
  double id;

  if (!td_layer_def_of(first->type)->ids ||
      (i = td_ids_find(samples, m->lay.in_dtype, n, first->vocab, &id)) == n)
    return 0;
  return fail(m, TD_EDATA, "sample %zu of the batch: token id %g at position %zu is not an id "
              "of the embedding's vocabulary (0 to %u)", i / m->lay.in_elems, id,
              i % m->lay.in_elems, first->vocab - 1);
}

/* Whether the model can take these samples now. */
static int check_batch(td_model *m, const void *targets, uint32_t count, bool grads) {
  const int32_t *labels = targets;

  m->err[0] = '\0';
  if (!m->ready)
    return fail(m, TD_ESTATE, "the model has no activation arena (a re-plan failed)");
  if (count == 0 || (grads && count > m->batch_size))
    return fail(m, TD_EINVAL, "a step takes 1 to %u samples, not %u", m->batch_size, count);
  if (m->target.dtype != TD_DTYPE_I32)
    return 0;
  for (uint32_t i = 0; i < count; i++)
    if (labels[i] < 0 || (uint32_t)labels[i] >= m->lay.classes)
      return fail(m, TD_EDATA, "label %d of sample %u is out of range for %u classes",
                  labels[i], i, m->lay.classes);
  return 0;
}

/* Queue the forward (and, with grads, backward) passes of count samples in
 * micro-batch slices; the loss statistics collect in the stats slot. */
static int run_slices(td_model *m, const void *samples, const void *targets,
                      uint32_t count, bool grads) {
  const td_layout *l = &m->lay;
  td_backend *be = m->be;
  float *stats = act(m, l->stats);
  uint8_t *stage_px = m->stage.ptr, *stage_lb = stage_px + l->stage_labels;
  size_t esize = td_dtype_size(l->in_dtype);
  float scale, mean, std;
  size_t tbytes = td_target_bytes(m->target);
  td_loss_cfg loss = {.kind = m->spec.loss, .soft = m->spec.soft_targets,
                      .smoothing = m->spec.label_smoothing, .top_k = m->spec.top_k,
                      .grad_scale = td_lossscale_scale(&m->ls) / (float)count};
  int rc;

  if ((rc = check_batch(m, targets, count, grads)) < 0 ||
      (rc = check_ids(m, samples, count)) < 0)
    return rc;
  input_norm(m, &scale, &mean, &std);
  td_backend_fill(be, stats, 2, 0.0f);
  td_backend_fill(be, stats + ST_TOPK, 2, 0.0f);
  if (half(m))
    td_backend_to_half(be, half_kind(m), m->params.ptr,
                       (uint16_t *)((char *)m->work.ptr + l->half_params), l->nparams);
  for (uint32_t off = 0; off < count; off += l->micro_batch) {
    uint32_t n = count - off < l->micro_batch ? count - off : l->micro_batch;
    size_t nin = (size_t)n * l->in_elems;

    /* Asynchronous when the caller's memory is registered (the worker's
     * ring): the caller keeps it until this step's sync. */
    td_backend_upload_async(be, stage_px, (const char *)samples + (size_t)off * l->in_elems *
                            esize, nin * esize);
    td_backend_upload_async(be, stage_lb, (const char *)targets + (size_t)off * tbytes,
                            (size_t)n * tbytes);
    if (l->layers[0].half_x) {
      td_backend_normalize(be, l->in_dtype, stage_px, act(m, l->input_tmp), nin, scale, mean,
                           std);
      td_backend_to_half(be, half_kind(m), act(m, l->input_tmp),
                         (uint16_t *)act(m, l->input), nin);
    } else {
      td_backend_normalize(be, l->in_dtype, stage_px, act(m, l->input), nin, scale, mean,
                           std);
    }
    for (int i = 0; i < l->nlayers; i++)
      layer_fwd(m, i, n, grads, false, off);
    /* The loss is the mean over the whole batch, so every slice scales by
     * 1/count (and by the loss scale). */
    td_backend_loss(be, &loss, act(m, l->logits), stage_lb, n, l->classes,
                    grads ? act(m, l->dlogits) : NULL, stats, stats + ST_TOPK);
    if (grads && half(m))
      td_backend_round_half(be, half_kind(m), act(m, l->dlogits), (size_t)n * l->classes);
    if (td_backend_status(be) != 0)
      return step_failed(m, "forward");
    if (grads)
      backward(m, n, off == 0 ? 0.0f : 1.0f, off);
    if (td_backend_status(be) != 0)
      return step_failed(m, "backward");
  }
  return 0;
}

/* The update: (fp16) unscale and look for inf/NaN, skipping the step if
 * there is one; clip by the global norm; the optimiser at the schedule's
 * rate times lr_scale.  *took says whether the weights moved. */
static int update(td_model *m, double lr_scale, bool *took) {
  td_backend *be = m->be;
  float *p = m->params.ptr, *g = m->grads.ptr, *state = m->optim.ptr;
  float *stats = act(m, m->lay.stats);
  const td_optimizer *o = &m->spec.opt;
  size_t n = m->lay.nparams;
  float *gs[TD_MAX_LAYERS];
  uint64_t taken;
  float lr;

  *took = false;
  /* frozen layers' gradients (computed above the first layer that trains)
   * count for nothing: not in the check, the norm or the update */
  for (int k = 0; k < m->nspans; k++)
    gs[k] = g + m->span_off[k];
  if (m->ls.cfg.enabled) {
    float flag = 0.0f;

    td_backend_scale(be, g, n, td_lossscale_inv(&m->ls), NULL);
    td_backend_fill(be, stats + ST_INF, 1, 0.0f);
    for (int k = 0; k < m->nspans; k++)
      td_backend_check_finite(be, gs[k], m->span_n[k], stats + ST_INF);
    td_backend_download(be, &flag, stats + ST_INF, sizeof(flag));
    if (td_backend_status(be) != 0)
      return TD_EOOM;
    if (!td_lossscale_update(&m->ls, flag != 0.0f))
      return 0;
  }
  if (m->spec.clip_grad_norm > 0.0f)
    td_backend_clip_grad_norm(be, gs, m->span_n, (size_t)m->nspans, m->spec.clip_grad_norm,
                              stats + ST_NORM);
  /* times 1.0 without a reduction: exact, the same bits as ever */
  lr = (float)(td_schedule_lr(&m->sched, m->steps) * lr_scale *
               (m->lr_factor > 0.0 ? m->lr_factor : 1.0));
  taken = m->steps - m->ls.skipped + 1; /* this update's 1-based count */
  /* Each span on its own: the ops are elementwise, so a parameter gets the
   * bits the whole sweep gives it; frozen ones get no update, no weight
   * decay and no optimiser state. */
  for (int k = 0; k < m->nspans; k++) {
    size_t off = m->span_off[k], len = m->span_n[k];
    float *sp = p + off, *sg = g + off, *s1 = state != NULL ? state + off : NULL;

    switch (o->kind) {
    case TD_OPT_ADAM:
    case TD_OPT_ADAMW: {
      td_adam_hparams h = {.lr = lr, .beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps,
                           .weight_decay = o->weight_decay, .step = taken};

      if (o->kind == TD_OPT_ADAM)
        td_backend_adam(be, sp, sg, s1, s1 + n, len, &h);
      else
        td_backend_adamw(be, sp, sg, s1, s1 + n, len, &h);
      break;
    }
    default:
      if (o->dampening == 0.0f && !o->nesterov) {
        td_sgd_hparams h = {.lr = lr, .momentum = o->momentum, .weight_decay = o->weight_decay};

        td_backend_sgd(be, sp, sg, s1, len, &h);
      } else {
        td_sgdm_hparams h = {.lr = lr, .momentum = o->momentum, .dampening = o->dampening,
                             .weight_decay = o->weight_decay, .nesterov = o->nesterov != 0,
                             .step = taken};

        td_backend_sgd_momentum(be, sp, sg, s1, len, &h);
      }
      break;
    }
  }
  *took = true;
  return 0;
}

/* Wait for the queued work and collect the loss statistics. */
static int finish(td_model *m, uint32_t count, td_step_stats *out) {
  float stats[ST_ABS + 1];
  int rc;

  td_backend_download(m->be, stats, act(m, m->lay.stats), sizeof(stats));
  if ((rc = td_backend_sync(m->be)) < 0)
    return fail(m, rc, "%s", td_backend_error(m->be));
  out->loss_sum = stats[0];
  out->correct = (uint32_t)stats[ST_CORRECT];
  out->topk = (uint32_t)stats[ST_TOPK];
  out->abs_sum = stats[ST_ABS];
  out->count = count;
  return 0;
}

int td_model_backward(td_model *m, const void *samples, const void *targets,
                      uint32_t count, td_step_stats *out) {
  int rc = run_slices(m, samples, targets, count, true);

  return rc < 0 ? rc : finish(m, count, out);
}

/* One optimiser update from count samples, at the schedule's rate times
 * lr_scale. */
static int train_once(td_model *m, const void *samples, const void *targets,
                      uint32_t count, double lr_scale, td_step_stats *out) {
  const td_lossscale ls = m->ls;
  int rc = run_slices(m, samples, targets, count, true);
  bool took;

  if (rc < 0)
    return rc;
  update(m, lr_scale, &took);
  /* The optimiser op either ran whole or not at all; a failure before it
   * leaves only the gradients (which the next attempt rebuilds) touched. */
  if (td_backend_status(m->be) != 0) {
    m->ls = ls;
    return step_failed(m, "optimizer");
  }
  m->steps++;
  if (m->nbn > 0)
    m->bn_batches += (count + m->lay.micro_batch - 1) / m->lay.micro_batch;
  return finish(m, count, out);
}

static int sync_or_fail(td_model *m) {
  int rc = td_backend_sync(m->be);

  return rc < 0 ? fail(m, rc, "%s", td_backend_error(m->be)) : 0;
}

/* shrink: what a batch's updates change, kept on the host before the first. */
static int snapshot(td_model *m) {
  td_backend_download(m->be, m->snap, m->params.ptr, m->params.bytes);
  td_backend_download(m->be, (char *)m->snap + m->params.bytes, m->optim.ptr, m->optim.bytes);
  m->snap_steps = m->steps;
  m->snap_bn = m->bn_batches;
  m->snap_ls = m->ls;
  return sync_or_fail(m);
}

/* Back to the snapshot after a failed update; m->err keeps why it failed. */
static int restore(td_model *m) {
  char why[sizeof(m->err)];
  int rc;

  memcpy(why, m->err, sizeof(why));
  td_backend_upload(m->be, m->params.ptr, m->snap, m->params.bytes);
  td_backend_upload(m->be, m->optim.ptr, (char *)m->snap + m->params.bytes, m->optim.bytes);
  m->steps = m->snap_steps;
  m->bn_batches = m->snap_bn;
  m->ls = m->snap_ls;
  if ((rc = td_backend_sync(m->be)) < 0)
    return fail(m, rc, "%s; restoring the weights then failed: %s", why,
                td_backend_error(m->be));
  return 0;
}

/* shrink: the batch as m->shrink updates of consecutive, near-equal slices,
 * each at the rate times its share of the batch (1/k when k divides it), so
 * every sample weighs in as it would in the whole batch's update. */
static int train_shrunk(td_model *m, const void *samples, const void *targets,
                        uint32_t count, td_step_stats *out) {
  size_t sample_bytes = (size_t)m->lay.in_elems * td_dtype_size(m->lay.in_dtype);
  td_step_stats sum = {0};
  int rc;

  if ((rc = check_batch(m, targets, count, true)) < 0 || (rc = snapshot(m)) < 0)
    return rc;
  for (uint32_t k = 0; k < m->shrink; k++) {
    uint32_t lo = (uint32_t)((uint64_t)count * k / m->shrink);
    uint32_t n = (uint32_t)((uint64_t)count * (k + 1) / m->shrink) - lo;
    td_step_stats st;

    if (n == 0)
      continue;
    if ((rc = train_once(m, (const char *)samples + lo * sample_bytes,
                         (const char *)targets + lo * td_target_bytes(m->target), n,
                         (double)n / count, &st)) < 0) {
      int rrc = restore(m);

      return rrc < 0 ? rrc : rc;
    }
    sum.loss_sum += st.loss_sum;
    sum.correct += st.correct;
    sum.topk += st.topk;
    sum.abs_sum += st.abs_sum;
  }
  sum.count = count;
  *out = sum;
  return 0;
}

int td_model_train_step(td_model *m, const void *samples, const void *targets,
                        uint32_t count, td_step_stats *out) {
  return m->shrink > 1 ? train_shrunk(m, samples, targets, count, out)
                       : train_once(m, samples, targets, count, 1.0, out);
}

/* The plan chooser's configuration for budget, from the spec the model
 * runs with now (common/plan.h: td_plan_choose), with the reason it fails
 * in m->err.  *to gets the spec to re-plan with, *shrink the updates per
 * batch. */
static int fit_plan(td_model *m, uint64_t budget, uint32_t cap, td_plan *out, td_jobspec *to,
                    uint32_t *shrink) {
  td_mem_stats mem;
  td_plan_choice c;
  int rc;

  td_backend_mem(m->be, &mem);
  rc = td_plan_choose(&m->spec, budget, mem.overhead, cap, &c);
  if (rc == TD_ENOFIT && td_jobspec_allows(&m->spec, TD_REMEDY_SHRINK))
    return fail(m, rc, "%s: even the smallest allowed micro-batch (1, shrunk) does not fit in "
                "%llu bytes", td_backend_device(m->be), (unsigned long long)budget);
  if (rc == TD_ENOFIT)
    return fail(m, rc, "%s: even the smallest allowed micro-batch (%u) does not fit in %llu "
                "bytes", td_backend_device(m->be), td_jobspec_min_micro_batch(&m->spec),
                (unsigned long long)budget);
  if (rc < 0)
    return fail(m, rc, "cannot plan the model: %s", td_strerror(rc));
  *to = m->spec;
  to->precision = c.plan.precision;
  to->recompute = c.plan.recompute;
  *out = c.plan;
  *shrink = c.plan.shrink;
  return 0;
}

#define MAX_RECOVERIES 64

int td_model_train_step_recover(td_model *m, const void *samples, const void *targets,
                                uint32_t count, const td_model_hooks *hooks,
                                td_step_stats *out) {
  uint32_t cap = UINT32_MAX;
  /* Not ready: the last re-plan could not allocate (its oom is noted). */
  int rc = m->ready ? td_model_train_step(m, samples, targets, count, out) : TD_EOOM;

  for (int attempt = 0; rc == TD_EOOM && attempt < MAX_RECOVERIES; attempt++) {
    const td_model_oom oom = m->oom;
    uint64_t shortfall = oom.asked > oom.free ? oom.asked - oom.free : 0;
    td_mem_stats mem;
    td_jobspec to;
    td_plan p;
    uint32_t shrink;

    if (hooks != NULL && hooks->oom != NULL)
      hooks->oom(hooks->arg, &oom);
    /* What is free now: the budget, less what the failed request lacked
     * (on a GPU other processes may hold memory the budget counts on).
     * The plan may be wrong about the world: a second failure in the same
     * step halves the micro-batch, so recovery always ends. */
    td_backend_mem(m->be, &mem);
    if (shortfall > 0 && m->plan.total > shortfall && m->plan.total - shortfall < mem.budget)
      mem.budget = m->plan.total - shortfall;
    if (attempt > 0 && oom.micro_batch / 2 < cap)
      cap = oom.micro_batch / 2;
    if ((rc = fit_plan(m, mem.budget, cap, &p, &to, &shrink)) < 0)
      return rc;
    if ((rc = replan_as(m, &to, p.micro_batch, shrink)) < 0)
      continue;
    if (hooks != NULL && hooks->replan != NULL)
      hooks->replan(hooks->arg, &m->plan);
    rc = td_model_train_step(m, samples, targets, count, out);
  }
  return rc;
}

int td_model_set_budget(td_model *m, uint64_t budget, bool *replanned) {
  const td_jobspec was = m->spec;
  const uint32_t was_mb = m->lay.micro_batch, was_shrink = m->shrink;
  bool fits = m->ready && m->plan.total <= budget;
  td_jobspec to;
  td_plan p;
  uint32_t shrink;
  int rc;

  td_backend_set_budget(m->be, budget);
  *replanned = false;
  if (fits && was_mb >= m->admitted_mb)
    return 0;
  /* Shrinking takes what fits; growing goes back up to the admitted
   * micro-batch at most, with the remedies applied so far kept. */
  rc = fit_plan(m, budget, fits ? m->admitted_mb : UINT32_MAX, &p, &to, &shrink);
  if (fits && (rc < 0 || p.micro_batch <= was_mb)) {
    m->err[0] = '\0';
    return 0;
  }
  if (rc < 0)
    return rc;
  if ((rc = replan_as(m, &to, p.micro_batch, shrink)) < 0) {
    /* Growing failed (the device has less than the budget says): the
     * old plan fitted, so go back to it. */
    if (!fits || replan_as(m, &was, was_mb, was_shrink) < 0)
      return rc;
  }
  *replanned = true;
  return 0;
}

int td_model_eval(td_model *m, const void *samples, const void *targets, uint32_t count,
                  td_step_stats *out) {
  int rc = run_slices(m, samples, targets, count, false);

  return rc < 0 ? rc : finish(m, count, out);
}

int td_model_get_params(td_model *m, float *dst) {
  td_backend_download(m->be, dst, m->params.ptr, m->lay.nparams * sizeof(float));
  return sync_or_fail(m);
}

int td_model_set_params(td_model *m, const float *src) {
  td_backend_upload(m->be, m->params.ptr, src, m->lay.nparams * sizeof(float));
  return sync_or_fail(m);
}

int td_model_get_grads(td_model *m, float *dst) {
  td_backend_download(m->be, dst, m->grads.ptr, m->grads.bytes);
  return sync_or_fail(m);
}

/* Where tensor t's values live in a host copy of the parameter arena
 * (parameters, then buffers); NULL for num_batches_tracked, a count. */
static float *tensor_at(const td_model *m, float *host, const td_mf_tensor *t) {
  const td_layer_layout *ly = &m->lay.layers[t->layer];
  char *base = (char *)host;

  switch (t->t.src) {
  case TD_LT_WEIGHT: return (float *)(base + ly->weight) + t->t.at;
  case TD_LT_BIAS: return (float *)(base + ly->bias) + t->t.at;
  case TD_LT_RUNNING: return (float *)(base + ly->running) + t->t.at;
  case TD_LT_TRACKED: break;
  }
  return NULL;
}

/* The model's tensors (modelfile.h) and a host buffer for the parameter
 * arena; NULL buffers and TD_ENOMEM if there is no room. */
static int file_tensors(td_model *m, td_mf_tensor **t, size_t *n, float **host) {
  uint64_t bytes = (m->lay.nparams + m->lay.nbuffers) * sizeof(float);
  char why[200];
  int rc;

  *t = calloc(TD_MF_MAX, sizeof(**t));
  *host = calloc(1, bytes ? bytes : 1); /* the padding stays 0 */
  if (*t == NULL || *host == NULL)
    return fail(m, TD_ENOMEM, "no host memory for %llu parameters",
                (unsigned long long)m->lay.nparams);
  if ((rc = td_modelfile_tensors(&m->spec, *t, n, why, sizeof(why))) < 0)
    return fail(m, rc, "%s", why);
  return 0;
}

int td_model_save(td_model *m, const char *path, const td_st_meta *meta, size_t nmeta) {
  const td_layout *l = &m->lay;
  td_st_tensor *st = calloc(TD_MF_MAX, sizeof(*st));
  int64_t tracked = (int64_t)m->bn_batches;
  td_mf_tensor *t = NULL;
  float *host = NULL;
  size_t n = 0;
  int rc;

  if ((rc = file_tensors(m, &t, &n, &host)) < 0)
    goto free_all;
  if (st == NULL) {
    rc = fail(m, TD_ENOMEM, "no host memory to save %llu parameters",
              (unsigned long long)l->nparams);
    goto free_all;
  }
  td_backend_download(m->be, host, m->params.ptr, (l->nparams + l->nbuffers) * sizeof(float));
  if ((rc = sync_or_fail(m)) < 0)
    goto free_all;
  for (size_t k = 0; k < n; k++) {
    st[k] = (td_st_tensor){.name = t[k].name, .dtype = "F32", .rank = (uint32_t)t[k].t.rank,
                           .data = tensor_at(m, host, &t[k]),
                           .bytes = t[k].elems * sizeof(float)};
    memcpy(st[k].shape, t[k].t.shape, (size_t)t[k].t.rank * sizeof(t[k].t.shape[0]));
    if (t[k].t.src == TD_LT_TRACKED) {
      st[k].dtype = "I64";
      st[k].data = &tracked;
      st[k].bytes = sizeof(tracked);
    }
  }
  if ((rc = td_safetensors_write(path, st, n, meta, nmeta)) < 0)
    fail(m, rc, "cannot write the model to %s: %s", path, td_strerror(rc));
free_all:
  free(host);
  free(t);
  free(st);
  return rc;
}

int td_model_load(td_model *m, const td_st_file *f) {
  const td_layout *l = &m->lay;
  td_mf_tensor *t = NULL;
  float *host = NULL;
  bool counted = false;
  uint64_t tracked = 0;
  size_t n = 0;
  int rc;

  if ((rc = file_tensors(m, &t, &n, &host)) < 0)
    goto free_all;
  if ((rc = td_modelfile_check(f, t, n, m->err, sizeof(m->err))) < 0)
    goto free_all;
  for (size_t k = 0; k < n; k++) {
    td_st_tensor got;

    td_safetensors_find(f, t[k].name, &got);
    if (t[k].t.src != TD_LT_TRACKED)
      td_modelfile_f32(&got, tensor_at(m, host, &t[k]), t[k].elems);
    else if (!counted) /* one count for all the model's BatchNorm layers: the first's */
      tracked = td_modelfile_count(&got), counted = true;
  }
  td_backend_upload(m->be, m->params.ptr, host, (l->nparams + l->nbuffers) * sizeof(float));
  if ((rc = sync_or_fail(m)) == 0)
    m->bn_batches = tracked;
free_all:
  free(host);
  free(t);
  return rc;
}

/* The state: parameters and buffers, the optimiser's, then (with
 * BatchNorm) num_batches_tracked as two exact floats, low 24 bits first.
 * The tensors are packed end to end, each layer's weight then its bias, in
 * the parameters and in every optimiser slot: the arenas' alignment padding
 * (TD_PLAN_PARAM_ALIGN) is not in it, so a checkpoint does not depend on
 * the layout (one written before weights were aligned still resumes). */
static uint64_t packed_params(const td_layout *l) {
  uint64_t n = 0;

  for (int i = 0; i < l->nlayers; i++)
    n += l->layers[i].nweight + l->layers[i].nbias;
  return n;
}

/* Copy one region laid out as the parameter arena (padded) to its packed
 * form, or back; returns the floats of the packed form. */
static uint64_t pack_params(const td_layout *l, float *packed, float *padded, bool pack) {
  uint64_t k = 0;

  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];
    const uint64_t at[2] = {ly->weight / sizeof(float), ly->bias / sizeof(float)};
    const uint64_t count[2] = {ly->nweight, ly->nbias};

    for (int t = 0; t < 2; t++) {
      if (count[t] == 0)
        continue;
      if (pack)
        memcpy(packed + k, padded + at[t], count[t] * sizeof(float));
      else
        memcpy(padded + at[t], packed + k, count[t] * sizeof(float));
      k += count[t];
    }
  }
  return k;
}

static uint32_t optim_slots(const td_model *m) {
  return m->lay.nparams == 0 ? 0
                             : (uint32_t)(m->optim.bytes / (m->lay.nparams * sizeof(float)));
}

uint64_t td_model_state_floats(const td_model *m) {
  return packed_params(&m->lay) * (1 + optim_slots(m)) + m->lay.nbuffers +
         (m->nbn > 0 ? 2 : 0);
}

/* The arenas (parameters and buffers, then the optimiser's) as one host
 * buffer and the state's packed form, one way or the other. */
static void pack_state(const td_model *m, float *state, float *arenas, bool pack) {
  const td_layout *l = &m->lay;
  const uint64_t packed = packed_params(l);
  float *optim = arenas + l->nparams + l->nbuffers;

  pack_params(l, state, arenas, pack);
  if (pack)
    memcpy(state + packed, arenas + l->nparams, l->nbuffers * sizeof(float));
  else
    memcpy(arenas + l->nparams, state + packed, l->nbuffers * sizeof(float));
  for (uint32_t s = 0; s < optim_slots(m); s++)
    pack_params(l, state + packed + l->nbuffers + s * packed, optim + s * l->nparams, pack);
}

int td_model_get_state(td_model *m, float *dst) {
  uint64_t pb = (m->lay.nparams + m->lay.nbuffers) * sizeof(float);
  float *tail = dst + td_model_state_floats(m) - (m->nbn > 0 ? 2 : 0);
  float *host = malloc(pb + m->optim.bytes + 1);
  int rc;

  if (host == NULL)
    return fail(m, TD_ENOMEM, "no host memory for the model's state (%llu bytes)",
                (unsigned long long)(pb + m->optim.bytes));
  td_backend_download(m->be, host, m->params.ptr, pb);
  td_backend_download(m->be, (char *)host + pb, m->optim.ptr, m->optim.bytes);
  if ((rc = sync_or_fail(m)) == 0) {
    pack_state(m, dst, host, true);
    if (m->nbn > 0) {
      tail[0] = (float)(m->bn_batches & 0xffffff);
      tail[1] = (float)(m->bn_batches >> 24);
    }
  }
  free(host);
  return rc;
}

int td_model_set_state(td_model *m, const float *src, uint64_t n) {
  uint64_t pb = (m->lay.nparams + m->lay.nbuffers) * sizeof(float);
  const float *tail = src + n - (m->nbn > 0 ? 2 : 0);
  float *host;
  int rc;

  if (n != td_model_state_floats(m))
    return fail(m, TD_EINVAL, "the state holds %llu values, the model %llu",
                (unsigned long long)n, (unsigned long long)td_model_state_floats(m));
  if (m->nbn > 0) {
    if (!(tail[0] >= 0 && tail[0] < 16777216.0f && tail[1] >= 0 && tail[1] < 16777216.0f))
      return fail(m, TD_EINVAL, "the state's BatchNorm batch count is not valid");
  }
  if ((host = calloc(1, pb + m->optim.bytes + 1)) == NULL) /* the padding stays 0 */
    return fail(m, TD_ENOMEM, "no host memory for the model's state (%llu bytes)",
                (unsigned long long)(pb + m->optim.bytes));
  pack_state(m, (float *)src, host, false);
  td_backend_upload(m->be, m->params.ptr, host, pb);
  td_backend_upload(m->be, m->optim.ptr, (char *)host + pb, m->optim.bytes);
  rc = sync_or_fail(m);
  free(host);
  if (rc == 0 && m->nbn > 0)
    m->bn_batches = (uint64_t)tail[0] | (uint64_t)tail[1] << 24;
  return rc;
}

void td_model_get_progress(const td_model *m, td_model_progress *out) {
  *out = (td_model_progress){.steps = m->steps, .loss_scale = m->ls.scale,
                             .good_steps = m->ls.good_steps, .skipped = m->ls.skipped,
                             .lr_factor = m->lr_factor};
}

int td_model_set_progress(td_model *m, const td_model_progress *p) {
  if (!(p->loss_scale > 0.0f) || isinf(p->loss_scale))
    return fail(m, TD_EINVAL, "loss scale %g is not a finite positive number",
                (double)p->loss_scale);
  if (p->skipped > p->steps)
    return fail(m, TD_EINVAL, "%llu skipped steps of %llu", (unsigned long long)p->skipped,
                (unsigned long long)p->steps);
  if (m->ls.cfg.enabled && td_lossscale_restore(&m->ls, p->loss_scale, p->good_steps) < 0)
    return fail(m, TD_EINVAL, "loss scale %g with %u good steps does not fit the job's "
                "loss_scale settings", (double)p->loss_scale, p->good_steps);
  if (!(p->lr_factor >= 0.0 && p->lr_factor <= 1.0))
    return fail(m, TD_EINVAL, "learning-rate factor %g is not in (0, 1]", p->lr_factor);
  m->ls.skipped = p->skipped;
  m->steps = p->steps;
  m->lr_factor = p->lr_factor;
  return 0;
}
