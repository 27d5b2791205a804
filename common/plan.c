#include "plan.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devprobe.h"
#include "error.h"
#include "layers.h"
#include "util.h"

#define F32 ((uint64_t)sizeof(float))
#define F16 ((uint64_t)sizeof(uint16_t))

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
  if (opt->kind == TD_OPT_ADAM || opt->kind == TD_OPT_ADAMW)
    return 2;
  return opt->momentum != 0.0f ? 1 : 0;
}

/* The liveness planner.  A logical tensor is used by ops at integer times;
 * ops of the forward pass (and the loss) are phase 0, the recomputation and
 * the backward pass phase 1.  A tensor whose first phase-1 use writes it
 * (it is recomputed) lives twice, once in each phase; any other lives from
 * its first use to its last. */
#define MAX_TENSORS (TD_MAX_LAYERS * 24 + 8)

typedef struct tensor {
  uint64_t bytes, off;
  int lo[2], hi[2];
  bool used[2], split;
  bool half; /* 16-bit storage */
  int alias; /* -1, or the tensor whose bytes this one shares */
} tensor;

typedef struct planner {
  tensor t[MAX_TENSORS];
  int n;
  int time;
} planner;

static int root(const planner *p, int id) {
  while (id >= 0 && p->t[id].alias >= 0)
    id = p->t[id].alias;
  return id;
}

/* rows x cols x elem bytes, rounded up to the alignment */
static int sized(uint64_t rows, uint64_t cols, uint64_t elem, uint64_t *out) {
  uint64_t bytes;
  int rc;

  if ((rc = mul(rows, cols, &bytes)) < 0 || (rc = mul(bytes, elem, &bytes)) < 0 ||
      (rc = add(bytes, TD_PLAN_ALIGN - 1, &bytes)) < 0)
    return rc;
  *out = bytes - bytes % TD_PLAN_ALIGN;
  return 0;
}

static int new_tensor(planner *p, uint64_t rows, uint64_t cols, uint64_t elem, int *id) {
  uint64_t bytes;
  int rc;

  if ((rc = sized(rows, cols, elem, &bytes)) < 0)
    return rc;
  if (p->n >= MAX_TENSORS)
    return TD_EINVAL;
  p->t[p->n] = (tensor){.bytes = bytes, .half = elem == F16, .alias = -1};
  *id = p->n++;
  return 0;
}

static void use(planner *p, int id, int phase, bool write) {
  tensor *t;

  if ((id = root(p, id)) < 0)
    return;
  t = &p->t[id];
  if (!t->used[phase]) {
    t->used[phase] = true;
    t->lo[phase] = p->time;
    if (phase == 1 && write)
      t->split = true;
  }
  t->hi[phase] = p->time;
}

static bool overlap(const tensor *a, const tensor *b) {
  int alo[2], ahi[2], blo[2], bhi[2], na = 0, nb = 0;
  const tensor *src[2] = {a, b};

  for (int k = 0; k < 2; k++) {
    const tensor *t = src[k];
    int *lo = k == 0 ? alo : blo, *hi = k == 0 ? ahi : bhi, *n = k == 0 ? &na : &nb;

    if (t->split || !t->used[0] || !t->used[1]) {
      for (int ph = 0; ph < 2; ph++)
        if (t->used[ph])
          lo[*n] = t->lo[ph], hi[*n] = t->hi[ph], (*n)++;
    } else {
      lo[0] = t->lo[0];
      hi[0] = t->hi[1];
      *n = 1;
    }
  }
  for (int i = 0; i < na; i++)
    for (int j = 0; j < nb; j++)
      if (alo[i] <= bhi[j] && blo[j] <= ahi[i])
        return true;
  return false;
}

static bool live_at(const tensor *t, int time) {
  tensor probe = {.used = {true, false}, .lo = {time, 0}, .hi = {time, 0}};

  return overlap(t, &probe);
}

static int by_size_desc(const void *a, const void *b, void *arg) {
  const tensor *t = arg;
  int x = *(const int *)a, y = *(const int *)b;

  if (t[x].bytes != t[y].bytes)
    return t[x].bytes > t[y].bytes ? -1 : 1;
  return x - y;
}

static int by_off(const void *a, const void *b, void *arg) {
  const tensor *t = arg;
  int x = *(const int *)a, y = *(const int *)b;

  return t[x].off < t[y].off ? -1 : t[x].off > t[y].off;
}

static int first_use(const tensor *t) { return t->used[0] ? t->lo[0] : t->lo[1]; }

/* The first born first, then the largest. */
static int by_birth(const void *a, const void *b, void *arg) {
  const tensor *t = arg;
  int x = *(const int *)a, y = *(const int *)b;

  if (first_use(&t[x]) != first_use(&t[y]))
    return first_use(&t[x]) < first_use(&t[y]) ? -1 : 1;
  return by_size_desc(a, b, arg);
}

/* Greedy: each tensor, in order, goes to the lowest offset where it
 * overlaps no tensor placed before it that is live at the same time;
 * *end gets the arena's size. */
static int greedy(planner *p, const int *order, int nord, uint64_t *end) {
  int busy[MAX_TENSORS];
  int rc;

  *end = 0;
  for (int k = 0; k < nord; k++) {
    tensor *t = &p->t[order[k]];
    uint64_t off = 0;
    int nbusy = 0;

    for (int j = 0; j < k; j++)
      if (overlap(t, &p->t[order[j]]))
        busy[nbusy++] = order[j];
    qsort_r(busy, (size_t)nbusy, sizeof(int), by_off, p->t);
    for (int j = 0; j < nbusy; j++) {
      const tensor *b = &p->t[busy[j]];

      if (b->off >= off + t->bytes)
        break;
      if (b->off + b->bytes > off)
        off = b->off + b->bytes;
    }
    t->off = off;
    if ((rc = add(off, t->bytes, &off)) < 0)
      return rc;
    if (off > *end)
      *end = off;
  }
  return 0;
}

/* Greedy by size (largest first), and by birth; the smaller arena wins (a
 * tie: by size).  A graph's short-lived tensors between long-lived ones
 * can fragment the first, which is exact for a chain.  *size gets the
 * arena's size, *peak the most bytes live at once. */
static int place(planner *p, uint64_t *size, uint64_t *peak) {
  int order[MAX_TENSORS], nord = 0;
  uint64_t end, end2, top = 0, offs[MAX_TENSORS];
  int rc;

  for (int i = 0; i < p->n; i++)
    if (p->t[i].alias < 0 && p->t[i].bytes > 0 && (p->t[i].used[0] || p->t[i].used[1]))
      order[nord++] = i;
  qsort_r(order, (size_t)nord, sizeof(int), by_birth, p->t);
  if ((rc = greedy(p, order, nord, &end2)) < 0)
    return rc;
  for (int k = 0; k < nord; k++)
    offs[k] = p->t[order[k]].off;
  qsort_r(order, (size_t)nord, sizeof(int), by_size_desc, p->t);
  if ((rc = greedy(p, order, nord, &end)) < 0)
    return rc;
  if (end2 < end) {
    qsort_r(order, (size_t)nord, sizeof(int), by_birth, p->t);
    for (int k = 0; k < nord; k++)
      p->t[order[k]].off = offs[k];
    end = end2;
  }
  for (int time = 0; time <= p->time; time++) {
    uint64_t live = 0;

    for (int k = 0; k < nord; k++)
      if (live_at(&p->t[order[k]], time))
        live += p->t[order[k]].bytes;
    if (live > top)
      top = live;
  }
  *size = end;
  *peak = top;
  return 0;
}

static uint64_t offset_of(const planner *p, int id) {
  return (id = root(p, id)) < 0 ? TD_PLAN_NONE : p->t[id].off;
}

/* The ids of one layer's tensors while the schedule is built. */
typedef struct layer_ids {
  int stats, junk, tx, ty, tw, bx, by, bw, saved, scratch;
  int txs[TD_MAX_INPUTS]; /* a join's widened inputs (mixed precision) */
  int dx, dx_sum;         /* where its backward op writes dx, and the gradient it then
                             adds dx to (-1: dx is that gradient itself) */
  int dxs[TD_MAX_INPUTS]; /* a join's inputs' gradients */
  uint8_t dxs_sum;        /* bit k: its share is added to dxs[k] */
} layer_ids;

typedef struct build {
  const td_jobspec *spec;
  td_layout *l;
  planner *p;
  int act[TD_MAX_LAYERS + 1];  /* the model's input (0) and each layer's output (i + 1) */
  int grad[TD_MAX_LAYERS + 1]; /* their gradients */
  layer_ids ids[TD_MAX_LAYERS];
  uint8_t src[TD_MAX_LAYERS][TD_MAX_INPUTS]; /* each layer's inputs, act indices */
  int nsrc[TD_MAX_LAYERS];
  int readers[TD_MAX_LAYERS + 1]; /* inputs (edges) that read act t */
  bool wants[TD_MAX_LAYERS + 1];  /* act t needs a gradient: a layer with parameters
                                     made it or one before it */
  int seg[TD_MAX_LAYERS];         /* the recomputation segment (its first layer) layer
                                     i is in; -1 before the first with parameters */
  bool half;
} build;

/* The events of layer i's forward op (phase 1: its recomputation). */
static void forward_uses(build *b, int i, int phase) {
  const td_layer_layout *ly = &b->l->layers[i];
  const layer_ids *id = &b->ids[i];
  planner *p = b->p;

  if (td_layer_def_of(ly->type)->view)
    return;
  for (int k = 0; k < b->nsrc[i]; k++) {
    use(p, b->act[b->src[i][k]], phase, false);
    use(p, id->txs[k], phase, true);
  }
  use(p, id->tx, phase, true);
  use(p, id->tw, phase, true);
  use(p, id->ty, phase, true);
  use(p, id->stats, phase, true);
  use(p, id->saved, phase, true);
  if (phase == 1)
    use(p, id->junk, phase, true);
  use(p, b->act[i + 1], phase, true);
  p->time++;
}

static void backward_uses(build *b, int i) {
  const td_layer_layout *ly = &b->l->layers[i];
  const layer_ids *id = &b->ids[i];
  planner *p = b->p;

  if (!ly->has_dy)
    return;
  /* a view passes its gradient on: nothing runs unless another tensor
   * holds its input's (a fan-out) */
  if (td_layer_def_of(ly->type)->view &&
      (!ly->needs_dx || (root(p, id->dx) == root(p, b->grad[i + 1]) && id->dx_sum < 0)))
    return;
  use(p, b->grad[i + 1], 1, false);
  if (ly->needs_x)
    use(p, b->act[b->src[i][0]], 1, false);
  if (ly->needs_y)
    use(p, b->act[i + 1], 1, false);
  use(p, id->stats, 1, false);
  use(p, id->saved, 1, false);
  use(p, id->scratch, 1, true);
  use(p, id->bx, 1, true);
  use(p, id->by, 1, true);
  use(p, id->bw, 1, true);
  if (ly->needs_dx)
    use(p, id->dx, 1, true);
  use(p, id->dx_sum, 1, false);
  for (int k = 0; k < b->nsrc[i]; k++)
    use(p, id->dxs[k], 1, !(id->dxs_sum & (1u << k)));
  p->time++;
}

/* Whether the layer c may overwrite act t in place: c alone reads it (and,
 * through a view, the view's input), the op that made it does not read
 * its output backward, and with recomputation both are recomputed together
 * (a segment's recomputation must find its inputs from before it as they
 * were). */
static bool may_overwrite(const build *b, int t, int c) {
  bool rec = b->spec->recompute != 0;

  for (;;) {
    int p;

    if (b->readers[t] != 1)
      return false;
    if (t == 0)
      return !rec || b->seg[c] < 0;
    p = t - 1;
    if (!td_layer_def_of(b->spec->layers[p].type)->view)
      return !b->l->layers[p].needs_y && (!rec || b->seg[p] == b->seg[c]);
    t = b->src[p][0];
  }
}

/* The graph: inputs, readers, who needs a gradient, segments. */
static void lay_graph(build *b) {
  const td_jobspec *spec = b->spec;
  int seg = -1;

  memset(b->readers, 0, sizeof(b->readers));
  b->wants[0] = false;
  for (int i = 0; i < spec->nlayers; i++) {
    const td_layer_def *d = td_layer_def_of(spec->layers[i].type);

    b->nsrc[i] = td_layer_inputs(spec, i, b->src[i]);
    b->wants[i + 1] = d->trainable;
    for (int k = 0; k < b->nsrc[i]; k++) {
      b->readers[b->src[i][k]]++;
      b->wants[i + 1] = b->wants[i + 1] || b->wants[b->src[i][k]];
    }
    if (d->trainable)
      seg = i;
    b->seg[i] = seg;
  }
}

/* Parameters, shapes and the tensors of each layer. */
static int lay_layers(build *b, const td_shape *shapes) {
  const td_jobspec *spec = b->spec;
  td_layout *l = b->l;
  planner *p = b->p;
  uint64_t n = l->micro_batch, params_end = 0, buf_floats = 0, elem = b->half ? F16 : F32;
  int rc;

  lay_graph(b);
  /* token ids stay fp32: exact up to 2^24, where 16 bits would round them */
  if ((rc = new_tensor(p, n, shapes[0].c * (uint64_t)shapes[0].h * shapes[0].w,
                       td_layer_def_of(spec->layers[0].type)->ids ? F32 : elem,
                       &b->act[0])) < 0)
    return rc;
  for (int i = 0; i < spec->nlayers; i++) {
    const td_layer *sl = &spec->layers[i];
    const td_layer_def *d = td_layer_def_of(sl->type);
    td_layer_layout *ly = &l->layers[i];
    layer_ids *id = &b->ids[i];
    const uint8_t *src = b->src[i];
    const td_shape *in = &shapes[src[0]], *out = &shapes[i + 1];
    uint64_t fin = td_shape_elems(in), fout = td_shape_elems(out);
    td_layer_sizes sz = {0};
    bool last = i == spec->nlayers - 1;
    int over = -1; /* the input it overwrites in place */

    memset(id, 0xff, sizeof(*id)); /* every id -1 */
    id->dxs_sum = 0;
    ly->type = sl->type;
    ly->in_shape = *in;
    ly->out_shape = *out;
    ly->in = (uint32_t)fin;
    ly->out = (uint32_t)fout;
    ly->needs_x = d->needs_x;
    ly->needs_y = d->needs_y;
    ly->weight = ly->bias = ly->running = TD_PLAN_NONE;
    ly->ninputs = b->nsrc[i];
    ly->has_dy = b->wants[i + 1];
    for (int k = 0; k < b->nsrc[i]; k++)
      ly->ins[k] = (uint32_t)td_shape_elems(&shapes[src[k]]);
    /* spatial ops index the whole micro-batch with int */
    if (d->spatial && (n * fin > INT_MAX || n * fout > INT_MAX))
      return TD_ETOOBIG;

    if (d->sizes != NULL)
      d->sizes(sl, in, out, &sz);
    ly->nweight = sz.nweight;
    ly->nbias = sz.nbias;
    if (sz.workspace > l->workspace)
      l->workspace = sz.workspace;
    if (d->trainable) {
      /* one region, so the optimiser updates them all in one sweep; each
       * weight starts TD_PLAN_PARAM_ALIGN-aligned for cuBLAS and cuDNN, its
       * bias right behind it (the ops read it there) */
      if ((rc = take(&params_end, ly->nweight, 1, F32, TD_PLAN_PARAM_ALIGN, &ly->weight)) < 0 ||
          (rc = take(&params_end, ly->nbias, 1, F32, F32, &ly->bias)) < 0)
        return rc;
      if (l->first_dense < 0)
        l->first_dense = i;
    }
    ly->needs_dx = false;
    for (int k = 0; k < b->nsrc[i]; k++)
      ly->needs_dx = ly->needs_dx || b->wants[src[k]];
    if (sz.nrunning > 0) {
      ly->running = buf_floats; /* floats after the trainable ones, made bytes below */
      buf_floats += sz.nrunning;
    }

    /* the stored output: in place when nothing else reads the input (a
     * view always); a join may take its first or second input's bytes */
    if (d->in_place && d->view)
      over = 0;
    for (int k = 0; d->in_place && over < 0 && k < (d->join != NULL ? 2 : 1); k++)
      if (may_overwrite(b, src[k], i))
        over = k;
    if (over >= 0) {
      b->act[i + 1] = b->act[src[over]];
      ly->act_bytes = 0;
    } else {
      uint64_t oelem = last ? F32 : elem;

      if ((rc = new_tensor(p, n, fout, oelem, &b->act[i + 1])) < 0)
        return rc;
      ly->act_bytes = p->t[b->act[i + 1]].bytes;
    }
    if (d->stats != TD_STATS_NONE) {
      uint64_t count = d->stats == TD_STATS_CHANNEL ? in->c : n * td_shape_rows(in);

      if ((rc = new_tensor(p, 2, count, F32, &id->stats)) < 0)
        return rc;
    }
    if (sz.saved > 0 && (rc = new_tensor(p, n, sz.saved, F32, &id->saved)) < 0)
      return rc;
    if (sz.scratch > 0 && (rc = new_tensor(p, n, sz.scratch, F32, &id->scratch)) < 0)
      return rc;
    /* recomputed, the forward op must not move the running statistics
     * again: they go to scratch */
    if (sz.nrunning > 0 && spec->recompute &&
        (rc = new_tensor(p, sz.nrunning, 1, F32, &id->junk)) < 0)
      return rc;
    /* mixed precision: the spatial ops (BatchNorm aside: its statistics
     * span the micro-batch) widen and run a sample at a time, so their
     * fp32 scratch is one sample's */
    ly->chunk = (uint32_t)n;
    if (d->chunk == TD_CHUNK_SAMPLE || (d->chunk == TD_CHUNK_SPATIAL && in->spatial))
      ly->chunk = 1;
    if (b->half && d->join != NULL) {
      /* each input widened, the result made in fp32 and narrowed */
      for (int k = 0; k < b->nsrc[i]; k++)
        if ((rc = new_tensor(p, ly->chunk, ly->ins[k], F32, &id->txs[k])) < 0)
          return rc;
      if ((rc = new_tensor(p, ly->chunk, fout, F32, &id->ty)) < 0)
        return rc;
    } else if (b->half && !d->view) {
      bool same = over >= 0;
      uint64_t rows = ly->chunk;

      if ((rc = new_tensor(p, rows, fin, F32, &id->tx)) < 0)
        return rc;
      if (!same && !last && (rc = new_tensor(p, rows, fout, F32, &id->ty)) < 0)
        return rc;
      if (ly->needs_x && (rc = new_tensor(p, rows, fin, F32, &id->bx)) < 0)
        return rc;
      if (ly->needs_y && !last && (rc = new_tensor(p, rows, fout, F32, &id->by)) < 0)
        return rc;
      /* dense and conv2d compute with 16-bit weights; the norms keep fp32 */
      if (d->half_weights) {
        if ((rc = new_tensor(p, ly->nweight + ly->nbias, 1, F32, &id->tw)) < 0 ||
            (rc = new_tensor(p, ly->nweight + ly->nbias, 1, F32, &id->bw)) < 0)
          return rc;
      }
    }
  }
  if (l->first_dense < 0)
    return TD_EINVAL;
  {
    /* the loss reads fp32 logits, even when layers after the last dense
     * one work in place on its output */
    tensor *t = &p->t[root(p, b->act[spec->nlayers])];

    if (t->half && (rc = sized(n, td_shape_elems(&shapes[spec->nlayers]), F32, &t->bytes)) < 0)
      return rc;
    t->half = false;
  }
  l->nparams = params_end / F32;
  l->nbuffers = buf_floats;
  for (int i = 0; i < spec->nlayers; i++)
    if (l->layers[i].running != TD_PLAN_NONE)
      l->layers[i].running = params_end + l->layers[i].running * F32;
  return 0;
}

/* Gradient tensors, from the logits back to the first layer with
 * parameters.  The gradient of a tensor that one layer reads is what that
 * layer's backward op writes, in place where the op allows (relu, dropout,
 * a view; add hands it to one of its inputs as it is).  One that several
 * read is the sum of their shares, added in the order the backward pass
 * meets them (the last reader first): the first writes it, each later one
 * writes its share to scratch (or in place over its own output's gradient)
 * and adds it, so the bits never depend on the micro-batch or the threads. */
static int lay_grads(build *b) {
  td_layout *l = b->l;
  planner *p = b->p;
  uint64_t n = l->micro_batch, widest = l->classes;
  bool handed[TD_MAX_LAYERS] = {false}; /* add gave its gradient to an input */
  int L = l->nlayers, rc;

  for (int i = 0; i <= L; i++)
    b->grad[i] = -1;
  if ((rc = new_tensor(p, n, l->classes, F32, &b->grad[L])) < 0)
    return rc;
  for (int t = L - 1; t >= 1; t--) {
    uint64_t width = td_shape_elems(&l->layers[t - 1].out_shape);
    int q = 0;

    if (!b->wants[t])
      continue;
    for (int c = L - 1; c >= t; c--) {
      const td_layer_def *d = td_layer_def_of(l->layers[c].type);
      layer_ids *id = &b->ids[c];

      for (int k = 0; k < b->nsrc[c]; k++) {
        if (b->src[c][k] != t)
          continue;
        if (q == 0 && b->readers[t] == 1 && d->join == NULL && d->grad_in_place) {
          b->grad[t] = b->grad[c + 1];
        } else if (q == 0 && b->readers[t] == 1 && l->layers[c].type == TD_LAYER_ADD &&
                   !handed[c]) {
          b->grad[t] = b->grad[c + 1];
          handed[c] = true;
        } else if (q == 0) {
          if ((rc = new_tensor(p, n, width, F32, &b->grad[t])) < 0)
            return rc;
          if (width > widest)
            widest = width;
        }
        if (d->join != NULL) {
          id->dxs[k] = b->grad[t];
          if (q > 0)
            id->dxs_sum |= (uint8_t)(1u << k);
        } else if (q == 0) {
          id->dx = b->grad[t];
        } else {
          id->dx_sum = b->grad[t];
          if (d->grad_in_place)
            id->dx = b->grad[c + 1];
          else if ((rc = new_tensor(p, n, width, F32, &id->dx)) < 0)
            return rc;
        }
        q++;
      }
    }
  }
  l->grad_width = (uint32_t)widest;
  return 0;
}

/* The schedule of one training micro-batch, as uses of the tensors. */
static void schedule(build *b, int stats, int input_tmp) {
  td_layout *l = b->l;
  planner *p = b->p;
  int L = l->nlayers, end, seg_start[TD_MAX_LAYERS + 1], nseg = 0;

  p->time = 0;
  use(p, stats, 0, false);
  use(p, input_tmp, 0, true);
  use(p, b->act[0], 0, true);
  p->time++;
  for (int i = 0; i < L; i++)
    forward_uses(b, i, 0);
  use(p, b->act[L], 0, false); /* the loss */
  use(p, stats, 0, false);
  use(p, b->grad[L], 0, true);
  p->time++;

  /* segments start at each layer with parameters */
  for (int i = l->first_dense; i < L; i++)
    if (td_layer_def_of(l->layers[i].type)->trainable)
      seg_start[nseg++] = i;
  seg_start[nseg] = L;
  end = L;
  for (int s = nseg - 1; s >= 0; s--) {
    int a = seg_start[s];

    if (l->recompute && s < nseg - 1)
      for (int i = a; i < end; i++) {
        l->layers[i].recomputed = true;
        forward_uses(b, i, 1);
      }
    for (int i = end - 1; i >= a; i--)
      backward_uses(b, i);
    end = a;
  }
  use(p, stats, 1, false); /* the update reads the norm and the flag */
}

int td_plan_layout(const td_jobspec *spec, uint32_t micro_batch, td_layout *out) {
  td_shape shapes[TD_MAX_LAYERS + 1];
  td_layout *l;
  planner *p;
  build b = {.spec = spec};
  int stats, input_tmp = -1, bad, rc;
  char why[8];

  if (spec->nlayers < 1 || spec->nlayers > TD_MAX_LAYERS || spec->input_rank < 1 ||
      spec->input_rank > TD_MAX_RANK || spec->batch_size == 0 || micro_batch == 0 ||
      micro_batch > spec->batch_size || micro_batch > INT_MAX ||
      (unsigned)spec->opt.kind > TD_OPT_ADAMW || (unsigned)spec->precision >= TD_PREC__COUNT ||
      (unsigned)spec->sample_dtype >= TD_DTYPE_I64) /* samples: uint8..float32 */
    return TD_EINVAL;
  for (int i = 0; i < spec->input_rank; i++)
    if (spec->input_dims[i] == 0)
      return TD_EINVAL;
  rc = td_jobspec_shapes(spec, shapes, &bad, why, sizeof(why));
  if (rc < 0)
    return rc == TD_ETOOBIG ? rc : TD_EINVAL;

  l = calloc(1, sizeof(*l));
  p = calloc(1, sizeof(*p));
  if (l == NULL || p == NULL) {
    rc = TD_ENOMEM;
    goto free_all;
  }
  b.l = l;
  b.p = p;
  b.half = spec->precision != TD_PREC_FP32;
  l->micro_batch = micro_batch;
  l->nlayers = spec->nlayers;
  l->first_dense = -1;
  l->precision = spec->precision;
  l->recompute = spec->recompute != 0;
  l->in_elems = (uint32_t)td_shape_elems(&shapes[0]);
  l->in_dtype = spec->sample_dtype;
  l->classes = (uint32_t)td_shape_elems(&shapes[spec->nlayers]);
  l->optim_slots = optim_slots(&spec->opt);

  if ((rc = new_tensor(p, 8, 1, F32, &stats)) < 0 || (rc = lay_layers(&b, shapes)) < 0 ||
      (rc = lay_grads(&b)) < 0)
    goto free_all;
  if (b.half && !p->t[b.act[0]].half) /* token ids: normalised straight into it */
    input_tmp = -1;
  else if (b.half && (rc = new_tensor(p, micro_batch, l->in_elems, F32, &input_tmp)) < 0)
    goto free_all;
  schedule(&b, stats, input_tmp);
  if ((rc = place(p, &l->act_bytes, &l->act_peak)) < 0)
    goto free_all;

  l->stats = offset_of(p, stats);
  l->input = offset_of(p, b.act[0]);
  l->input_tmp = offset_of(p, input_tmp);
  l->logits = offset_of(p, b.act[l->nlayers]);
  l->dlogits = offset_of(p, b.grad[l->nlayers]);
  for (int i = 0; i < l->nlayers; i++) {
    td_layer_layout *ly = &l->layers[i];
    const layer_ids *id = &b.ids[i];

    ly->x = offset_of(p, b.act[b.src[i][0]]);
    ly->y = offset_of(p, b.act[i + 1]);
    ly->half_x = p->t[root(p, b.act[b.src[i][0]])].half;
    ly->half_y = p->t[root(p, b.act[i + 1])].half;
    ly->stats = offset_of(p, id->stats);
    ly->junk = offset_of(p, id->junk);
    ly->saved = offset_of(p, id->saved);
    ly->saved_bytes = id->saved >= 0 ? p->t[id->saved].bytes : 0;
    ly->scratch = offset_of(p, id->scratch);
    ly->dy = offset_of(p, b.grad[i + 1]);
    ly->dx = ly->needs_dx ? offset_of(p, id->dx) : TD_PLAN_NONE;
    ly->dx_sum = offset_of(p, id->dx_sum);
    ly->half_xs = 0;
    ly->dxs_sum = id->dxs_sum;
    for (int k = 0; k < TD_MAX_INPUTS; k++) {
      bool is = k < b.nsrc[i];

      ly->xs[k] = is ? offset_of(p, b.act[b.src[i][k]]) : TD_PLAN_NONE;
      if (is && p->t[root(p, b.act[b.src[i][k]])].half)
        ly->half_xs |= (uint8_t)(1u << k);
      ly->txs[k] = is ? offset_of(p, id->txs[k]) : TD_PLAN_NONE;
      ly->dxs[k] = is && b.wants[b.src[i][k]] ? offset_of(p, id->dxs[k]) : TD_PLAN_NONE;
    }
    ly->tx = offset_of(p, id->tx);
    ly->ty = offset_of(p, id->ty);
    ly->tw = offset_of(p, id->tw);
    ly->bx = offset_of(p, id->bx);
    ly->by = offset_of(p, id->by);
    ly->bw = offset_of(p, id->bw);
  }

  /* the 16-bit weights go with the workspace: a re-plan to another
   * precision reallocates them, the master copy stays */
  l->half_params = TD_PLAN_NONE;
  if (b.half && (rc = take(&l->workspace, l->nparams, 1, F16, TD_PLAN_ALIGN,
                           &l->half_params)) < 0)
    goto free_all;
  l->stage_bytes = 0;
  {
    uint64_t px;

    if ((rc = take(&l->stage_bytes, micro_batch, l->in_elems,
                   td_dtype_size(spec->sample_dtype), 1, &px)) < 0 ||
        (rc = take(&l->stage_bytes, micro_batch, td_target_bytes(td_jobspec_target(spec)), 1,
                    TD_PLAN_ALIGN, &l->stage_labels)) < 0)
      goto free_all;
  }
  memcpy(out, l, sizeof(*l));
  rc = 0;
free_all:
  free(p);
  free(l);
  return rc;
}

int td_plan_compute(const td_jobspec *spec, uint32_t micro_batch, td_precision prec,
                    uint64_t overhead, td_plan *out) {
  td_jobspec *s;
  td_layout *l;
  td_plan p = {.micro_batch = micro_batch, .overhead = overhead, .precision = prec, .shrink = 1};
  int rc;

  if ((unsigned)prec >= TD_PREC__COUNT)
    return TD_EINVAL;
  s = malloc(sizeof(*s));
  l = malloc(sizeof(*l));
  if (s == NULL || l == NULL) {
    rc = TD_ENOMEM;
    goto free_all;
  }
  memcpy(s, spec, sizeof(*s));
  s->precision = prec;
  if ((rc = td_plan_layout(s, micro_batch, l)) < 0)
    goto free_all;
  p.accumulation = (uint32_t)(((uint64_t)spec->batch_size + micro_batch - 1) / micro_batch);
  p.activations = l->act_bytes;
  p.workspace = l->workspace;
  p.staging = l->stage_bytes;
  p.recompute = l->recompute;
  p.batch_dependent = td_jobspec_batch_dependent(spec) != 0;
  p.bit_identical = p.accumulation == 1 ||
                    (micro_batch % TD_PLAN_BLOCK_ROWS == 0 && !p.batch_dependent);
  p.params = (l->nparams + l->nbuffers) * F32;
  if ((rc = mul(l->nparams, F32, &p.grads)) < 0 ||
      (rc = mul(p.grads, l->optim_slots, &p.optim)) < 0)
    goto free_all;
  {
    const uint64_t parts[] = {p.params, p.grads, p.optim, p.activations,
                              p.workspace, p.staging, p.overhead};

    /* the probe's overhead bounds the rounding of this many allocations */
    _Static_assert(TD_ARRAY_SIZE(parts) == TD_WORKER_ARENAS + 1, "arenas and the probe agree");

    for (size_t i = 0; i < TD_ARRAY_SIZE(parts); i++)
      if ((rc = add(p.total, parts[i], &p.total)) < 0)
        goto free_all;
  }
  *out = p;
free_all:
  free(l);
  free(s);
  return rc;
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

int td_plan_at(const td_jobspec *spec, uint32_t micro_batch, td_precision prec, bool recompute,
               uint32_t shrink, uint64_t overhead, td_plan *out) {
  td_jobspec *s;
  td_plan p;
  int rc;

  if (shrink == 0 || spec->batch_size % shrink != 0)
    return TD_EINVAL;
  if ((s = malloc(sizeof(*s))) == NULL)
    return TD_ENOMEM;
  memcpy(s, spec, sizeof(*s));
  s->recompute = recompute;
  s->batch_size = spec->batch_size / shrink;
  rc = td_plan_compute(s, micro_batch, prec, overhead, &p);
  free(s);
  if (rc < 0)
    return rc;
  p.shrink = shrink;
  p.bit_identical = p.bit_identical && shrink == 1; /* k updates are other maths */
  *out = p;
  return 0;
}

unsigned td_plan_remedies(const td_jobspec *spec, const td_plan *plan) {
  unsigned r = 0;

  if (plan->shrink > 1)
    r |= 1u << TD_REMEDY_SHRINK;
  else if (plan->micro_batch < spec->batch_size)
    r |= 1u << TD_REMEDY_ACCUMULATE;
  if (plan->recompute && !spec->recompute)
    r |= 1u << TD_REMEDY_RECOMPUTE;
  if (plan->precision != spec->precision && plan->precision == TD_PREC_BF16)
    r |= 1u << TD_REMEDY_BF16;
  if (plan->precision != spec->precision && plan->precision == TD_PREC_FP16)
    r |= 1u << TD_REMEDY_FP16;
  return r;
}

bool td_plan_bit_identical(const td_jobspec *spec, const td_plan *plan) {
  return plan->bit_identical && plan->shrink <= 1 && plan->precision == spec->precision;
}

void td_plan_remedies_text(unsigned remedies, char *buf, size_t cap) {
  size_t n = 0;

  if (cap == 0)
    return;
  buf[0] = '\0';
  for (int r = 0; r < TD_REMEDY__COUNT; r++) {
    if (!(remedies & (1u << r)))
      continue;
    n += (size_t)snprintf(buf + (n < cap ? n : cap - 1), n < cap ? cap - n : 1, "%s%s",
                          n > 0 ? ", " : "", td_remedy_name((td_remedy)r));
  }
  if (n == 0)
    snprintf(buf, cap, "none");
}

/* The chooser's configurations: stage -1 is spec as it is (its whole
 * batch: no remedy allowed yet); stage k adds the job's k-th remedy to
 * those before it (shrink aside: it comes after all of them). */
static void stage_add(td_jobspec *s, td_remedy r) {
  s->remedies[s->nremedies++] = r;
  if (r == TD_REMEDY_RECOMPUTE)
    s->recompute = 1;
  else if (r == TD_REMEDY_BF16 && s->precision == TD_PREC_FP32)
    s->precision = TD_PREC_BF16;
  else if (r == TD_REMEDY_FP16 && s->precision == TD_PREC_FP32)
    s->precision = TD_PREC_FP16;
}

/* The largest plan for s that fits budget, at most cap rows per
 * micro-batch. */
static int fit_capped(const td_jobspec *s, uint64_t budget, uint64_t overhead, uint32_t cap,
                      td_plan *out) {
  int rc = td_plan_fit(s, s->precision, overhead, budget, out);
  uint32_t mb;

  if (rc == 0 && out->micro_batch > cap)
    rc = cap >= td_jobspec_min_micro_batch(s)
             ? td_plan_compute(s, cap, s->precision, overhead, out)
             : TD_ENOFIT;
  /* Whole blocks keep the whole batch's bits (td_plan.bit_identical): a
   * split micro-batch goes down to a multiple of the block where the job
   * allows one; below a block it runs as it is, and says so. */
  mb = out->micro_batch / TD_PLAN_BLOCK_ROWS * TD_PLAN_BLOCK_ROWS;
  if (rc == 0 && out->micro_batch < s->batch_size && mb != out->micro_batch && mb > 0 &&
      mb >= td_jobspec_min_micro_batch(s))
    rc = td_plan_compute(s, mb, s->precision, overhead, out);
  return rc;
}

/* shrink: the fewest updates k per batch (a divisor of it, so every
 * update takes batch/k samples) whose plan at micro-batch batch/k, at most
 * cap, fits budget; s has every other remedy applied. */
static int fit_shrunk(td_jobspec *s, uint64_t budget, uint64_t overhead, uint32_t cap,
                      td_plan *out) {
  uint32_t b = s->batch_size, k = 2;
  td_plan p;
  int rc;

  if (b < 2)
    return TD_ENOFIT;
  /* the largest micro-batch that fits, below the job's minimum too */
  s->min_micro_batch = 1;
  s->remedies[0] = TD_REMEDY_ACCUMULATE;
  s->nremedies = 1;
  if ((rc = td_plan_fit(s, s->precision, overhead, budget, &p)) < 0)
    return rc;
  if (p.micro_batch < cap)
    cap = p.micro_batch;
  while (k < b && (b % k != 0 || b / k > cap))
    k++;
  if (b / k > cap)
    return TD_ENOFIT;
  return td_plan_at(s, b / k, s->precision, s->recompute, k, overhead, out);
}

int td_plan_choose(const td_jobspec *spec, uint64_t budget, uint64_t overhead, uint32_t cap,
                   td_plan_choice *out) {
  td_jobspec *s = malloc(sizeof(*s));
  td_plan p;
  int rc = TD_ENOFIT;

  if (s == NULL)
    return TD_ENOMEM;
  memcpy(s, spec, sizeof(*s));
  s->nremedies = 0; /* what the stages so far allow */
  for (int k = -1; k < spec->nremedies && k < TD_MAX_REMEDIES && rc == TD_ENOFIT; k++) {
    if (k >= 0 && spec->remedies[k] == TD_REMEDY_SHRINK)
      continue;
    if (k >= 0)
      stage_add(s, spec->remedies[k]);
    rc = fit_capped(s, budget, overhead, cap, &p);
  }
  if (rc == TD_ENOFIT && td_jobspec_allows(spec, TD_REMEDY_SHRINK))
    rc = fit_shrunk(s, budget, overhead, cap, &p);
  free(s);
  if (rc < 0)
    return rc;
  p.bit_identical = td_plan_bit_identical(spec, &p);
  out->plan = p;
  out->remedies = td_plan_remedies(spec, &p);
  return 0;
}

int td_plan_smallest(const td_jobspec *spec, uint64_t overhead, td_plan_choice *out) {
  td_jobspec *s = malloc(sizeof(*s));
  td_plan best = {0}, p;
  int first_rc = 0, found = 0, rc;

  if (s == NULL)
    return TD_ENOMEM;
  memcpy(s, spec, sizeof(*s));
  s->nremedies = 0;
  for (int k = -1; k < spec->nremedies && k < TD_MAX_REMEDIES; k++) {
    if (k >= 0 && spec->remedies[k] == TD_REMEDY_SHRINK)
      continue;
    if (k >= 0)
      stage_add(s, spec->remedies[k]);
    rc = td_plan_compute(s, td_jobspec_min_micro_batch(s), s->precision, overhead, &p);
    if (rc < 0 && first_rc == 0)
      first_rc = rc;
    if (rc == 0 && (!found || p.total < best.total))
      best = p, found = 1;
  }
  /* shrunk as far as it goes: updates of one sample */
  if (td_jobspec_allows(spec, TD_REMEDY_SHRINK) && spec->batch_size >= 2 &&
      (rc = td_plan_at(s, 1, s->precision, s->recompute, spec->batch_size, overhead, &p)) == 0 &&
      (!found || p.total < best.total))
    best = p, found = 1;
  free(s);
  if (!found)
    return first_rc < 0 ? first_rc : TD_EINVAL;
  out->plan = best;
  out->remedies = td_plan_remedies(spec, &best);
  return 0;
}
