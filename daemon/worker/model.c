#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"

struct td_model {
  td_backend *be;
  td_jobspec spec;        /* for re-planning */
  td_layout lay;
  td_plan plan;
  td_model_oom oom;       /* the last out-of-memory failure */
  bool ready;             /* the per-micro-batch arenas are allocated */
  td_optimizer opt;
  float norm_mean, norm_std;
  uint32_t batch_size;
  uint64_t steps;
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
  return (float *)((char *)b->ptr + off);
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

static int init_weights(td_model *m, uint64_t seed) {
  const td_layout *l = &m->lay;
  float *host = malloc(l->nparams * sizeof(float));
  uint64_t s = seed;
  int rc;

  if (host == NULL)
    return fail(m, TD_ENOMEM, "no host memory to initialise %llu parameters",
                (unsigned long long)l->nparams);
  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];
    float bound = 1.0f / sqrtf((float)ly->in);
    float *w = (float *)((char *)host + ly->weight), *b = (float *)((char *)host + ly->bias);

    if (ly->type != TD_LAYER_DENSE)
      continue;
    for (uint64_t j = 0; j < (uint64_t)ly->out * ly->in; j++)
      w[j] = rng_uniform(&s, bound);
    for (uint32_t j = 0; j < ly->out; j++)
      b[j] = rng_uniform(&s, bound);
  }
  rc = td_model_set_params(m, host);
  free(host);
  return rc;
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

int td_model_create(td_backend *be, const td_jobspec *spec, uint32_t micro_batch,
                    td_model **out, char *err, size_t errlen) {
  td_mem_stats mem;
  td_model *m;
  int rc;

  if ((m = calloc(1, sizeof(*m))) == NULL)
    return TD_ENOMEM;
  m->be = be;
  m->spec = *spec;
  m->opt = spec->opt;
  m->norm_mean = spec->norm_mean;
  m->norm_std = spec->norm_std;
  m->batch_size = spec->batch_size;
  td_backend_mem(be, &mem);
  if ((rc = td_plan_layout(spec, micro_batch, &m->lay)) < 0 ||
      (rc = td_plan_compute(spec, micro_batch, spec->precision, mem.overhead, &m->plan)) < 0) {
    fail(m, rc, "cannot plan the model at micro-batch %u: %s", micro_batch, td_strerror(rc));
    goto destroy;
  }

  if ((rc = alloc_arenas(m, 0)) < 0)
    goto destroy;
  m->ready = true;
  if ((rc = init_weights(m, spec->seed)) < 0)
    goto destroy;
  *out = m;
  return 0;

destroy:
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
  free(m);
}

const td_plan *td_model_plan(const td_model *m) { return &m->plan; }
const td_layout *td_model_layout(const td_model *m) { return &m->lay; }
uint64_t td_model_nparams(const td_model *m) { return m->lay.nparams; }
uint64_t td_model_steps(const td_model *m) { return m->steps; }
const char *td_model_error(const td_model *m) { return m->err; }
const td_model_oom *td_model_last_oom(const td_model *m) { return &m->oom; }

int td_model_replan(td_model *m, uint32_t micro_batch) {
  td_mem_stats mem;
  td_layout lay;
  td_plan plan;
  int rc;

  td_backend_mem(m->be, &mem);
  if ((rc = td_plan_layout(&m->spec, micro_batch, &lay)) < 0 ||
      (rc = td_plan_compute(&m->spec, micro_batch, m->spec.precision, mem.overhead, &plan)) < 0)
    return fail(m, rc, "cannot plan the model at micro-batch %u: %s", micro_batch,
                td_strerror(rc));
  /* Free first: the old and new arenas need not fit side by side. */
  free_step_arenas(m);
  m->lay = lay;
  m->plan = plan;
  if ((rc = alloc_arenas(m, PERSISTENT_ARENAS)) < 0) {
    free_step_arenas(m);
    return rc;
  }
  m->ready = true;
  return 0;
}

static void forward(td_model *m, uint32_t n) {
  const td_layout *l = &m->lay;
  td_backend *be = m->be;

  td_backend_normalize_u8(be, m->stage.ptr, at(&m->act, l->input), (size_t)n * l->in_elems,
                          m->norm_mean, m->norm_std);
  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];
    float *x = at(&m->act, ly->x), *y = at(&m->act, ly->y);

    if (ly->type == TD_LAYER_RELU) {
      td_backend_relu_fwd(be, x, y, (size_t)n * ly->out);
      continue;
    }
    /* y = x W^T + b */
    td_backend_sgemm(be, false, true, (int)n, (int)ly->out, (int)ly->in, 1.0f, x, (int)ly->in,
                     at(&m->params, ly->weight), (int)ly->in, 0.0f, y, (int)ly->out);
    td_backend_bias_add(be, y, at(&m->params, ly->bias), n, ly->out);
  }
}

/* Gradients of n rows whose dlogits are in grad[0]; beta 1 adds them to
 * the previous slices' gradients. */
static void backward(td_model *m, uint32_t n, float beta) {
  const td_layout *l = &m->lay;
  td_backend *be = m->be;
  float *g = at(&m->act, l->grad[0]), *other = at(&m->act, l->grad[1]);

  for (int i = l->nlayers - 1; i >= l->first_dense; i--) {
    const td_layer_layout *ly = &l->layers[i];
    float *tmp;

    if (ly->type == TD_LAYER_RELU) {
      td_backend_relu_bwd(be, at(&m->act, ly->y), g, g, (size_t)n * ly->out);
      continue;
    }
    /* dW = dY^T x, db = colsum(dY), dx = dY W */
    td_backend_sgemm(be, true, false, (int)ly->out, (int)ly->in, (int)n, 1.0f, g,
                     (int)ly->out, at(&m->act, ly->x), (int)ly->in, beta,
                     at(&m->grads, ly->weight), (int)ly->in);
    td_backend_bias_grad(be, g, n, ly->out, beta, at(&m->grads, ly->bias));
    if (!ly->needs_dx)
      continue;
    td_backend_sgemm(be, false, false, (int)n, (int)ly->in, (int)ly->out, 1.0f, g,
                     (int)ly->out, at(&m->params, ly->weight), (int)ly->in, 0.0f, other,
                     (int)ly->in);
    tmp = g;
    g = other;
    other = tmp;
  }
}

/* A failure latched while queuing phase: collect it (the partial step is
 * discarded: the next attempt overwrites the gradients from its first
 * slice). */
static int step_failed(td_model *m, const char *phase) {
  int rc = td_backend_status(m->be);

  if (rc == TD_EOOM)
    note_oom(m, phase);
  td_backend_sync(m->be);
  return fail(m, rc, "%s (in the %s pass)", td_backend_error(m->be), phase);
}

/* Queue the forward (and, with grads, backward) passes of count samples in
 * micro-batch slices; the loss statistics collect in the stats slot. */
static int run_slices(td_model *m, const uint8_t *pixels, const uint8_t *labels,
                      uint32_t count, bool grads) {
  const td_layout *l = &m->lay;
  td_backend *be = m->be;
  float *stats = at(&m->act, l->stats);
  uint8_t *stage_px = m->stage.ptr, *stage_lb = stage_px + l->stage_labels;

  m->err[0] = '\0';
  if (!m->ready)
    return fail(m, TD_ESTATE, "the model has no activation arena (a re-plan failed)");
  if (count == 0 || (grads && count > m->batch_size))
    return fail(m, TD_EINVAL, "a step takes 1 to %u samples, not %u", m->batch_size, count);
  for (uint32_t i = 0; i < count; i++)
    if (labels[i] >= l->classes)
      return fail(m, TD_EDATA, "label %u of sample %u is out of range for %u classes",
                  labels[i], i, l->classes);

  td_backend_fill(be, stats, 2, 0.0f);
  for (uint32_t off = 0; off < count; off += l->micro_batch) {
    uint32_t n = count - off < l->micro_batch ? count - off : l->micro_batch;

    td_backend_upload(be, stage_px, pixels + (size_t)off * l->in_elems,
                      (size_t)n * l->in_elems);
    td_backend_upload(be, stage_lb, labels + off, n);
    forward(m, n);
    /* The loss is the mean over the whole batch, so every slice scales by 1/count. */
    td_backend_softmax_xent(be, at(&m->act, l->logits), stage_lb, n, l->classes,
                            1.0f / (float)count, grads ? at(&m->act, l->grad[0]) : NULL,
                            stats);
    if (td_backend_status(be) != 0)
      return step_failed(m, "forward");
    if (grads)
      backward(m, n, off == 0 ? 0.0f : 1.0f);
    if (td_backend_status(be) != 0)
      return step_failed(m, "backward");
  }
  return 0;
}

static void update(td_model *m) {
  float *p = m->params.ptr, *g = m->grads.ptr, *state = m->optim.ptr;
  size_t n = m->lay.nparams;

  m->steps++;
  if (m->opt.kind == TD_OPT_ADAM) {
    td_adam_hparams h = {.lr = m->opt.lr, .beta1 = m->opt.beta1, .beta2 = m->opt.beta2,
                         .eps = m->opt.eps, .weight_decay = m->opt.weight_decay,
                         .step = m->steps};
    td_backend_adam(m->be, p, g, state, state + n, n, &h);
  } else {
    td_sgd_hparams h = {.lr = m->opt.lr, .momentum = m->opt.momentum,
                        .weight_decay = m->opt.weight_decay};
    td_backend_sgd(m->be, p, g, state, n, &h);
  }
}

/* Wait for the queued work and collect the loss statistics. */
static int finish(td_model *m, uint32_t count, td_step_stats *out) {
  float stats[2];
  int rc;

  td_backend_download(m->be, stats, at(&m->act, m->lay.stats), sizeof(stats));
  if ((rc = td_backend_sync(m->be)) < 0)
    return fail(m, rc, "%s", td_backend_error(m->be));
  out->loss_sum = stats[0];
  out->correct = (uint32_t)stats[1];
  out->count = count;
  return 0;
}

int td_model_backward(td_model *m, const uint8_t *pixels, const uint8_t *labels,
                      uint32_t count, td_step_stats *out) {
  int rc = run_slices(m, pixels, labels, count, true);

  return rc < 0 ? rc : finish(m, count, out);
}

int td_model_train_step(td_model *m, const uint8_t *pixels, const uint8_t *labels,
                        uint32_t count, td_step_stats *out) {
  int rc = run_slices(m, pixels, labels, count, true);

  if (rc < 0)
    return rc;
  update(m);
  /* The update is one op: it either ran whole or not at all. */
  if (td_backend_status(m->be) != 0) {
    m->steps--;
    return step_failed(m, "optimizer");
  }
  return finish(m, count, out);
}

/* The largest plan that fits budget, at most cap rows per micro-batch. */
static int fit_plan(td_model *m, uint64_t budget, uint32_t cap, td_plan *out) {
  td_mem_stats mem;
  int rc;

  td_backend_mem(m->be, &mem);
  rc = td_plan_fit(&m->spec, m->spec.precision, mem.overhead, budget, out);
  if (rc == 0 && out->micro_batch > cap)
    rc = cap >= td_jobspec_min_micro_batch(&m->spec)
             ? td_plan_compute(&m->spec, cap, m->spec.precision, mem.overhead, out)
             : TD_ENOFIT;
  if (rc == TD_ENOFIT)
    return fail(m, rc, "%s: even the smallest allowed micro-batch (%u) does not fit in %llu "
                "bytes", td_backend_device(m->be), td_jobspec_min_micro_batch(&m->spec),
                (unsigned long long)budget);
  return rc < 0 ? fail(m, rc, "cannot plan the model: %s", td_strerror(rc)) : 0;
}

#define MAX_RECOVERIES 64

int td_model_train_step_recover(td_model *m, const uint8_t *pixels, const uint8_t *labels,
                                uint32_t count, const td_model_hooks *hooks,
                                td_step_stats *out) {
  uint32_t cap = UINT32_MAX;
  /* Not ready: the last re-plan could not allocate (its oom is noted). */
  int rc = m->ready ? td_model_train_step(m, pixels, labels, count, out) : TD_EOOM;

  for (int attempt = 0; rc == TD_EOOM && attempt < MAX_RECOVERIES; attempt++) {
    const td_model_oom oom = m->oom;
    uint64_t shortfall = oom.asked > oom.free ? oom.asked - oom.free : 0;
    td_mem_stats mem;
    td_plan p;

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
    if ((rc = fit_plan(m, mem.budget, cap, &p)) < 0)
      return rc;
    if ((rc = td_model_replan(m, p.micro_batch)) < 0)
      continue;
    if (hooks != NULL && hooks->replan != NULL)
      hooks->replan(hooks->arg, &m->plan);
    rc = td_model_train_step(m, pixels, labels, count, out);
  }
  return rc;
}

int td_model_set_budget(td_model *m, uint64_t budget, bool *replanned) {
  td_plan p;
  int rc;

  td_backend_set_budget(m->be, budget);
  *replanned = false;
  if (m->ready && m->plan.total <= budget)
    return 0;
  if ((rc = fit_plan(m, budget, UINT32_MAX, &p)) < 0 ||
      (rc = td_model_replan(m, p.micro_batch)) < 0)
    return rc;
  *replanned = true;
  return 0;
}

int td_model_eval(td_model *m, const uint8_t *pixels, const uint8_t *labels, uint32_t count,
                  td_step_stats *out) {
  int rc = run_slices(m, pixels, labels, count, false);

  return rc < 0 ? rc : finish(m, count, out);
}

static int sync_or_fail(td_model *m) {
  int rc = td_backend_sync(m->be);

  return rc < 0 ? fail(m, rc, "%s", td_backend_error(m->be)) : 0;
}

int td_model_get_params(td_model *m, float *dst) {
  td_backend_download(m->be, dst, m->params.ptr, m->params.bytes);
  return sync_or_fail(m);
}

int td_model_set_params(td_model *m, const float *src) {
  td_backend_upload(m->be, m->params.ptr, src, m->params.bytes);
  return sync_or_fail(m);
}

int td_model_get_grads(td_model *m, float *dst) {
  td_backend_download(m->be, dst, m->grads.ptr, m->grads.bytes);
  return sync_or_fail(m);
}

int td_model_save(td_model *m, const char *path, const td_st_meta *meta, size_t nmeta) {
  const td_layout *l = &m->lay;
  td_st_tensor t[2 * TD_MAX_LAYERS];
  char names[2 * TD_MAX_LAYERS][16];
  size_t n = 0;
  float *host;
  int rc;

  if ((host = malloc(m->params.bytes)) == NULL)
    return fail(m, TD_ENOMEM, "no host memory to save %llu parameters",
                (unsigned long long)l->nparams);
  if ((rc = td_model_get_params(m, host)) < 0)
    goto free_host;
  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];

    if (ly->type != TD_LAYER_DENSE)
      continue;
    snprintf(names[n], sizeof(names[n]), "%d.weight", i);
    t[n] = (td_st_tensor){.name = names[n], .dtype = "F32", .rank = 2,
                          .shape = {ly->out, ly->in},
                          .data = (char *)host + ly->weight,
                          .bytes = (uint64_t)ly->out * ly->in * sizeof(float)};
    n++;
    snprintf(names[n], sizeof(names[n]), "%d.bias", i);
    t[n] = (td_st_tensor){.name = names[n], .dtype = "F32", .rank = 1, .shape = {ly->out},
                          .data = (char *)host + ly->bias,
                          .bytes = (uint64_t)ly->out * sizeof(float)};
    n++;
  }
  if ((rc = td_safetensors_write(path, t, n, meta, nmeta)) < 0)
    fail(m, rc, "cannot write the model to %s: %s", path, td_strerror(rc));
free_host:
  free(host);
  return rc;
}

uint64_t td_model_state_floats(const td_model *m) {
  return (m->params.bytes + m->optim.bytes) / sizeof(float);
}

int td_model_get_state(td_model *m, float *dst) {
  td_backend_download(m->be, dst, m->params.ptr, m->params.bytes);
  td_backend_download(m->be, (char *)dst + m->params.bytes, m->optim.ptr, m->optim.bytes);
  return sync_or_fail(m);
}

int td_model_set_state(td_model *m, const float *src, uint64_t n) {
  if (n != td_model_state_floats(m))
    return fail(m, TD_EINVAL, "the state holds %llu values, the model %llu",
                (unsigned long long)n, (unsigned long long)td_model_state_floats(m));
  td_backend_upload(m->be, m->params.ptr, src, m->params.bytes);
  td_backend_upload(m->be, m->optim.ptr, (const char *)src + m->params.bytes, m->optim.bytes);
  return sync_or_fail(m);
}

void td_model_get_progress(const td_model *m, td_model_progress *out) {
  *out = (td_model_progress){.steps = m->steps, .loss_scale = 1.0f};
}

int td_model_set_progress(td_model *m, const td_model_progress *p) {
  if (!(p->loss_scale > 0.0f) || isinf(p->loss_scale))
    return fail(m, TD_EINVAL, "loss scale %g is not a finite positive number",
                (double)p->loss_scale);
  m->steps = p->steps;
  return 0;
}
