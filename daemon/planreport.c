/* The `plan` request's report (planreport.h): "why does my job not fit".
 * The plan of a job file on each device as admission would choose it
 * (td_plan_choose), per layer, its largest tensors and what each remedy
 * would save.  Nothing is submitted or reserved. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "layers.h"
#include "planreport.h"
#include "serialize.h"
#include "util.h"

/* One tensor of the plan, for "largest tensors". */
typedef struct td__tensor {
  char name[48];
  uint64_t bytes;
} td__tensor;

/* name: layer < 0 ? what : "<layer>.<what>" */
static void td__add_tensor(td__tensor *t, size_t *n, size_t cap, uint64_t bytes, int layer,
                           const char *what) {
  size_t k;

  if (bytes == 0)
    return;
  /* kept sorted, largest first; the smallest falls off */
  for (k = *n; k > 0 && t[k - 1].bytes < bytes; k--)
    if (k < cap)
      t[k] = t[k - 1];
  if (k >= cap)
    return;
  if (layer < 0)
    snprintf(t[k].name, sizeof(t[k].name), "%s", what);
  else
    snprintf(t[k].name, sizeof(t[k].name), "%d.%s", layer, what);
  t[k].bytes = bytes;
  if (*n < cap)
    (*n)++;
}

#define TD_PLAN_TOP 8

/* The largest tensors the worker allocates at the layout's micro-batch. */
static size_t td__largest(const td_layout *l, td__tensor *t) {
  static const char *const moments[2][2] = {{"weight.momentum", "weight.exp_avg"},
                                            {"", "weight.exp_avg_sq"}};
  uint64_t mb = l->micro_batch;
  size_t n = 0;

  td__add_tensor(t, &n, TD_PLAN_TOP, mb * l->in_elems * 4, -1, "input (normalised)");
  td__add_tensor(t, &n, TD_PLAN_TOP, mb * l->classes * 4, -1, "logits");
  td__add_tensor(t, &n, TD_PLAN_TOP, l->workspace, -1, "workspace");
  td__add_tensor(t, &n, TD_PLAN_TOP, l->stage_bytes, -1, "input staging");
  for (int i = 0; i < l->nlayers; i++) {
    const td_layer_layout *ly = &l->layers[i];
    uint64_t w = ly->nweight * 4;

    td__add_tensor(t, &n, TD_PLAN_TOP, w, i, "weight");
    td__add_tensor(t, &n, TD_PLAN_TOP, w, i, "weight.grad");
    for (uint32_t k = 0; w > 0 && k < l->optim_slots && k < 2; k++)
      td__add_tensor(t, &n, TD_PLAN_TOP, w, i, moments[k][l->optim_slots - 1]);
    td__add_tensor(t, &n, TD_PLAN_TOP, ly->act_bytes, i, "output");
    td__add_tensor(t, &n, TD_PLAN_TOP, ly->saved_bytes, i, "saved");
  }
  return n;
}

static void td__shape_str(const td_shape *sh, char *buf, size_t cap) {
  if (sh->spatial)
    snprintf(buf, cap, "%ux%ux%u", sh->c, sh->h, sh->w);
  else if (sh->seq)
    snprintf(buf, cap, "%ux%u", sh->c, sh->h);
  else
    snprintf(buf, cap, "%u", sh->c);
}

static void td__map_layers(td_map *m, const td_layout *lay) {
  td_map_kv_array(m, "layers", (uint32_t)lay->nlayers);
  for (int i = 0; i < lay->nlayers; i++) {
    const td_layer_layout *ly = &lay->layers[i];
    uint64_t params = (ly->nweight + ly->nbias) * 4;
    char in[48], out[48];
    td_map item;

    if (ly->running != TD_PLAN_NONE)
      params += 2 * (uint64_t)ly->in_shape.c * 4; /* running mean and variance */
    td__shape_str(&ly->in_shape, in, sizeof(in));
    td__shape_str(&ly->out_shape, out, sizeof(out));
    td_map_item(m, &item);
    td_map_kv_u64(&item, "index", (uint64_t)i);
    td_map_kv_str(&item, "type", td_layer_type_name(ly->type));
    td_map_kv_str(&item, "in", in);
    td_map_kv_str(&item, "out", out);
    td_map_kv_u64(&item, "params", params);
    td_map_kv_u64(&item, "activations", ly->act_bytes);
    td_map_kv_str(&item, "storage", ly->act_bytes > 0                 ? "stored"
                                    : td_layer_def_of(ly->type)->view ? "view"
                                                                   : "in place");
    td_map_end(&item);
  }
}

/* What each remedy would change at the whole batch: a smaller micro-batch,
 * recomputation, 16-bit precision.  available: the job file allows it. */
static void td__map_saving(td_map *m, const char *remedy, int available, uint64_t saves,
                           uint64_t costs, const char *note) {
  td_map item;

  td_map_item(m, &item);
  td_map_kv_str(&item, "remedy", remedy);
  td_map_kv_bool(&item, "available", available);
  td_map_kv_u64(&item, "saves", saves);
  td_map_kv_u64(&item, "costs", costs);
  td_map_kv_str(&item, "note", note);
  td_map_end(&item);
}

static void td__map_savings(td_map *m, const td_jobspec *spec, const td_plan *whole,
                            const td_plan *small) {
  static const struct {
    const char *name;
    td_remedy remedy;
    td_precision prec; /* TD_PREC__COUNT: the job's */
    bool recompute;
  } alts[] = {{"recompute", TD_REMEDY_RECOMPUTE, TD_PREC__COUNT, true},
              {"bf16", TD_REMEDY_BF16, TD_PREC_BF16, false},
              {"fp16", TD_REMEDY_FP16, TD_PREC_FP16, false}};
  char note[160], size[32];

  td_map_kv_array(m, "savings", 1 + TD_ARRAY_SIZE(alts));
  snprintf(note, sizeof(note), "micro-batch %u with %u accumulation steps (same effective "
           "batch)%s", small->micro_batch, small->accumulation,
           td_jobspec_allows(spec, TD_REMEDY_ACCUMULATE) ? "" : "; not in memory.remedies");
  td__map_saving(m, "micro_batch", td_jobspec_allows(spec, TD_REMEDY_ACCUMULATE),
                 whole->total - small->total, 0, note);
  for (size_t i = 0; i < TD_ARRAY_SIZE(alts); i++) {
    td_precision prec = alts[i].prec == TD_PREC__COUNT ? spec->precision : alts[i].prec;
    bool same = prec == spec->precision && (spec->recompute || !alts[i].recompute);
    td_plan alt = *whole;

    if (!same && td_plan_at(spec, spec->batch_size, prec, spec->recompute || alts[i].recompute,
                            1, 0, &alt) < 0)
      alt = *whole;
    td_format_size(alt.total, size, sizeof(size));
    if (same)
      snprintf(note, sizeof(note), "the job already runs this way");
    else
      snprintf(note, sizeof(note), "%s at the whole batch%s", size,
               td_jobspec_allows(spec, alts[i].remedy) ? "" : "; not in memory.remedies");
    td__map_saving(m, alts[i].name, !same && td_jobspec_allows(spec, alts[i].remedy),
                   alt.total < whole->total ? whole->total - alt.total : 0,
                   alt.total > whole->total ? alt.total - whole->total : 0, note);
  }
}

int td_planreport(const td_daemon *d, const td_jobspec *spec, const char *only, td_pack *rep,
                  char *err, size_t errlen) {
  size_t ntop;
  td_plan whole, small;
  td_layout lay;
  td__tensor top[TD_PLAN_TOP];
  uint32_t ndev = 0, min_mb;
  td_map m;
  int rc;

  min_mb = td_jobspec_min_micro_batch(spec);
  if ((rc = td_plan_at(spec, spec->batch_size, spec->precision, spec->recompute, 1, 0,
                       &whole)) < 0 ||
      (rc = td_plan_at(spec, min_mb, spec->precision, spec->recompute, 1, 0, &small)) < 0 ||
      (rc = td_plan_layout(spec, spec->batch_size, &lay)) < 0) {
    snprintf(err, errlen, "the job's memory plan overflows (the model or batch is absurdly "
             "large); reduce layer sizes or train.batch_size");
    return rc;
  }
  for (int i = 0; i < d->ndevices; i++)
    ndev += only[0] == '\0' || strcmp(only, d->devices[i].name) == 0;
  ntop = td__largest(&lay, top);

  td_map_reply_ok(&m, rep, "plan");
  td_map_kv_str(&m, "name", spec->name);
  td_map_kv_u64(&m, "batch_size", spec->batch_size);
  td_map_kv_u64(&m, "min_micro_batch", min_mb);
  td_map_kv_str(&m, "precision", td_precision_name(spec->precision));
  td_map_kv_bool(&m, "recompute", spec->recompute);
  td_map_kv_bool(&m, "batch_dependent", whole.batch_dependent);
  td_ser_plan(&m, &whole);
  td_map_kv_array(&m, "devices", ndev);
  for (int i = 0; i < d->ndevices; i++) {
    const td_device *dev = &d->devices[i];
    uint64_t free_now = dev->budget > dev->reserved ? dev->budget - dev->reserved : 0;
    td_plan_choice c, now, least;
    uint32_t nrem = 0;
    int fits, fits_now;
    td_map e;

    if (only[0] != '\0' && strcmp(only, dev->name) != 0)
      continue;
    /* what admission would choose (td_plan_choose), remedies and all */
    fits = td_plan_choose(spec, dev->budget, dev->overhead, UINT32_MAX, &c) == 0;
    fits_now = td_plan_choose(spec, free_now, dev->overhead, UINT32_MAX, &now) == 0;
    if (!fits && td_plan_smallest(spec, dev->overhead, &least) < 0)
      least = (td_plan_choice){.plan = small};
    for (int r = 0; fits && r < TD_REMEDY__COUNT; r++)
      nrem += (c.remedies & (1u << r)) != 0;
    td_map_item(&m, &e);
    td_map_kv_str(&e, "name", dev->name);
    td_map_kv_u64(&e, "budget", dev->budget);
    td_map_kv_u64(&e, "free", free_now);
    td_map_kv_bool(&e, "fits", fits);
    td_map_kv_bool(&e, "fits_now", fits_now);
    td_map_kv_u64(&e, "micro_batch", fits ? c.plan.micro_batch : 0);
    td_map_kv_u64(&e, "accumulation", fits ? c.plan.accumulation : 0);
    td_map_kv_array(&e, "remedies", nrem); /* of strings */
    for (int r = 0; fits && r < TD_REMEDY__COUNT; r++)
      if (c.remedies & (1u << r))
        td_pack_str(rep, td_remedy_name((td_remedy)r));
    td_ser_plan(&e, fits ? &c.plan : &least.plan);
    td_map_end(&e);
  }
  td__map_layers(&m, &lay);
  td_map_kv_array(&m, "largest", (uint32_t)ntop);
  for (size_t i = 0; i < ntop; i++) {
    td_map item;

    td_map_item(&m, &item);
    td_map_kv_str(&item, "name", top[i].name);
    td_map_kv_u64(&item, "bytes", top[i].bytes);
    td_map_end(&item);
  }
  td__map_savings(&m, spec, &whole, &small);
  td_map_end(&m);
  return 0;
}
