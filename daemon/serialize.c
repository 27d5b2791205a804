/* Jobs, devices and plans as msgpack maps (serialize.h): the fields the
 * replies and events carry, written once for all of them.  Replies and
 * events are built as td_maps: proto.c counts the entries and checks each
 * against the catalogue (PROTOCOL.md) as it is packed. */
#include "serialize.h"

void td_ser_plan_fields(td_map *m, const td_plan *pl) {
  td_map_kv_u64(m, "micro_batch", pl->micro_batch);
  td_map_kv_u64(m, "accumulation", pl->accumulation);
  td_map_kv_u64(m, "params", pl->params);
  td_map_kv_u64(m, "grads", pl->grads);
  td_map_kv_u64(m, "optim", pl->optim);
  td_map_kv_u64(m, "activations", pl->activations);
  td_map_kv_u64(m, "workspace", pl->workspace);
  td_map_kv_u64(m, "staging", pl->staging);
  td_map_kv_u64(m, "overhead", pl->overhead);
  td_map_kv_u64(m, "total", pl->total);
  td_map_kv_str(m, "precision", td_precision_name(pl->precision));
  td_map_kv_bool(m, "recompute", pl->recompute);
  td_map_kv_u64(m, "shrink", pl->shrink);
  td_map_kv_bool(m, "bit_identical", pl->bit_identical);
}

/* "plan": the memory plan, into the map m. */
void td_ser_plan(td_map *m, const td_plan *pl) {
  td_map sub;

  td_map_kv_map(m, "plan", &sub);
  td_ser_plan_fields(&sub, pl);
  td_map_end(&sub);
}

/* The fields of a `list` row; `show` sends these and more. */
void td_ser_job_fields(td_map *m, const td_job *j) {
  td_map_kv_u64(m, "id", j->id);
  td_map_kv_str(m, "name", j->name);
  td_map_kv_str(m, "owner", j->owner);
  td_map_kv_str(m, "state", td_job_state_name(j->state));
  td_map_kv_str(m, "device", j->device);
  td_map_kv_i64(m, "priority", j->priority);
  td_map_kv_i64(m, "submitted_ms", j->submitted_ms);
  td_map_kv_u64(m, "epoch", j->epoch);
  td_map_kv_u64(m, "epochs", j->epochs);
  td_map_kv_u64(m, "step", j->step);
  td_map_kv_u64(m, "steps", j->steps);
  td_map_kv_f64(m, "loss", j->loss);
  td_map_kv_f64(m, "accuracy", j->accuracy);
  td_map_kv_str(m, "wait_reason", j->wait_reason);
}

/* One item of the array "jobs" just begun in list. */
void td_ser_job_row(td_map *list, const td_job *j) {
  td_map row;

  td_map_item(list, &row);
  td_ser_job_fields(&row, j);
  td_map_end(&row);
}

/* "job": everything about j, into the map m. */
void td_ser_job(td_map *m, const td_job *j) {
  td_map job, ck;

  td_map_kv_map(m, "job", &job);
  td_ser_job_fields(&job, j);
  td_map_kv_u64(&job, "retries", j->retries);
  td_map_kv_u64(&job, "mem", j->mem);
  td_map_kv_i64(&job, "started_ms", j->started_ms);
  td_map_kv_i64(&job, "finished_ms", j->finished_ms);
  td_map_kv_f64(&job, "samples_per_sec", j->samples_per_sec);
  td_map_kv_f64(&job, "data_wait", j->data_wait);
  td_map_kv_f64(&job, "val_accuracy", j->val_accuracy);
  td_map_kv_f64(&job, "val_loss", j->val_loss);
  td_map_kv_f64(&job, "train_accuracy", j->train_accuracy);
  td_map_kv_u64(&job, "top_k", j->top_k);
  td_map_kv_f64(&job, "top_k_accuracy", j->top_k_accuracy);
  td_map_kv_f64(&job, "val_top_k_accuracy", j->val_top_k_accuracy);
  td_map_kv_f64(&job, "mae", j->mae);
  td_map_kv_f64(&job, "val_mae", j->val_mae);
  td_map_kv_f64(&job, "train_mae", j->train_mae);
  td_map_kv_str(&job, "model", TD_JOB_STR(j->model));
  td_map_kv_str(&job, "error", TD_JOB_STR(j->error));
  td_map_kv_str(&job, "warning", TD_JOB_STR(j->warning));
  td_ser_plan(&job, &j->plan);
  td_map_kv_i64(&job, "exit_status", j->exit_status);
  td_map_kv_map(&job, "checkpoint", &ck);
  td_map_kv_u64(&ck, "step", j->ckpt_step);
  td_map_kv_u64(&ck, "epoch", j->ckpt_epoch);
  td_map_kv_u64(&ck, "batch", j->ckpt_batch);
  td_map_kv_u64(&ck, "bytes", j->ckpt_bytes);
  td_map_kv_u64(&ck, "resumed_step", j->resumed_step);
  td_map_end(&ck);
  /* [step, loss] pairs: a map each would double the reply's size */
  td_map_kv_array(&job, "loss_curve", (uint32_t)td_losscurve_len(&j->loss_curve));
  for (size_t i = 0; i < td_losscurve_len(&j->loss_curve); i++) {
    td_pack_array(job.p, 2);
    td_pack_u64(job.p, j->loss_curve.pts[i].step);
    td_pack_f64(job.p, j->loss_curve.pts[i].loss);
  }
  td_map_end(&job);
}

/* A device's entry, into the map e just begun and ended here. */
void td_ser_device(td_map *e, const td_device *dev) {
  td_map_kv_str(e, "name", dev->name);
  td_map_kv_u64(e, "budget", dev->budget);
  td_map_kv_u64(e, "limit", dev->limit);
  td_map_kv_u64(e, "free", dev->free);
  td_map_kv_u64(e, "overhead", dev->overhead);
  td_map_kv_str(e, "unusable", dev->unusable);
  td_map_kv_u64(e, "reserved", dev->reserved);
  td_map_kv_u64(e, "jobs", dev->njobs);
  td_map_kv_bool(e, "draining", dev->draining);
  td_map_kv_u64(e, "config_budget", dev->cfg_limit);
  td_map_kv_u64(e, "override_budget", dev->override_budget);
  td_map_kv_bool(e, "override_drain", dev->override_drain);
  td_map_end(e);
}
