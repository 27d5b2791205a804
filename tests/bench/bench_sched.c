/* A scheduling pass over a long queue, beside the planner it is made of,
 * measured in the same run.
 *
 *   bench_sched [JOBS]        (default 10000)
 *
 * The device is full, so a pass plans every queued job and starts none:
 * the most a pass costs.  The peer is the plan chooser alone
 * (td_plan_choose and td_plan_smallest once per job, what admission calls
 * for a job that does not fit): the pure decision over a view
 * (td_sched_decide) should add little to it.  sched.c, ledger.c and
 * fairshare.c are linked with stand-ins for the effects (nothing starts).
 * Each figure is the best of ten: on a shared machine the others' load only
 * ever makes a run slower. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "fairshare.h"
#include "metrics.h"
#include "plan.h"
#include "server.h"
#include "supervise.h"
#include "td_sched.h"
#include "traind.h"
#include "util.h"

#define RUNS 10

/* Stand-ins for the effects: in a full device nothing starts. */
int td_run_start(td_daemon *d, td_job *j, char *err, size_t errlen) {
  (void)d, (void)err, (void)errlen;
  j->state = TD_JOB_RUNNING;
  return 0;
}
void td_publish_device(td_daemon *d, const td_device *dev) { (void)d, (void)dev; }
void td_metrics_admitted(const td_job *j, const td_device *dev, unsigned remedies) {
  (void)j, (void)dev, (void)remedies;
}
void td_job_transition(td_daemon *d, td_job *j, td_job_state s, const char *detail) {
  (void)d, (void)detail;
  j->state = s;
}
void td_job_set(char **field, const char *s) { (void)field, (void)s; }
int td_run_set_budget(td_daemon *d, td_job *j, uint64_t budget) {
  (void)d, (void)j, (void)budget;
  return 0;
}
td_job *td_daemon_find(td_daemon *d, uint64_t id) {
  for (size_t i = 0; i < d->njobs; i++)
    if (d->jobs[i]->id == id)
      return d->jobs[i];
  return NULL;
}
int td_db_usage_load(td_db *db,
                     int (*fn)(void *arg, uint32_t uid, const char *name, double usage,
                               int64_t at_ms),
                     void *arg) {
  (void)db, (void)fn, (void)arg;
  return 0;
}
int td_db_usage_save(td_db *db, td_user *users, size_t n, int64_t at_ms) {
  (void)db, (void)users, (void)n, (void)at_ms;
  return 0;
}

int main(int argc, char **argv) {
  static td_daemon d;
  static td_jobspec spec;
  size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
  double pass = 1e30, peer = 1e30;
  td_plan p;

  if (n == 0) {
    fprintf(stderr, "usage: bench_sched [JOBS]\n");
    return 2;
  }
  spec.input_dims[0] = spec.input_dims[1] = 28;
  spec.input_rank = 2;
  spec.layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = 64};
  spec.layers[1] = (td_layer){.type = TD_LAYER_RELU};
  spec.layers[2] = (td_layer){.type = TD_LAYER_DENSE, .units = 10};
  spec.nlayers = 3;
  spec.batch_size = 64;
  spec.epochs = 1;
  spec.opt = (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.01f};
  spec.remedies[0] = TD_REMEDY_ACCUMULATE;
  spec.nremedies = 1;
  if (td_plan_compute(&spec, 64, TD_PREC_FP32, 0, &p) < 0) {
    fprintf(stderr, "bench_sched: the job cannot be planned\n");
    return 1;
  }
  d.cfg.fairshare_halflife_s = 3600;
  d.usage_ms = td_now_unix_ms();
  d.ndevices = 1;
  snprintf(d.devices[0].name, sizeof(d.devices[0].name), "cpu0");
  d.devices[0].budget = d.devices[0].reserved = p.total; /* full */
  if ((d.jobs = calloc(n, sizeof(*d.jobs))) == NULL)
    return 1;
  d.njobs = d.cap = d.nactive = n;
  for (size_t i = 0; i < n; i++) {
    td_job *j = calloc(1, sizeof(*j));

    if (j == NULL)
      return 1;
    j->id = i + 1;
    j->uid = 1000 + (uint32_t)(i % 7); /* seven users share the queue */
    snprintf(j->owner, sizeof(j->owner), "user%zu", i % 7);
    j->state = TD_JOB_QUEUED;
    j->spec = &spec;
    d.jobs[i] = j;
  }
  for (int r = 0; r < RUNS; r++) {
    double t0 = td_now_mono(), t;
    td_plan_choice c;

    td_sched_run(&d);
    t = td_now_mono() - t0;
    pass = t < pass ? t : pass;
    t0 = td_now_mono();
    for (size_t i = 0; i < n; i++)
      if (td_plan_choose(&spec, 0, 0, UINT32_MAX, &c) == 0 || td_plan_smallest(&spec, 0, &c) < 0)
        return 1;
    t = td_now_mono() - t0;
    peer = t < peer ? t : peer;
  }
  printf("scheduling pass over %zu queued jobs on a full device (best of %d)\n", n, RUNS);
  printf("  pass (td_sched_run: view, td_sched_decide, reasons)   %8.2f ms\n", pass * 1e3);
  printf("  peer: the plan chooser alone, once per job            %8.2f ms\n", peer * 1e3);
  printf("  job %llu waits: %s\n", (unsigned long long)d.jobs[n - 1]->id,
         d.jobs[n - 1]->wait_reason);
  for (size_t i = 0; i < n; i++)
    free(d.jobs[i]);
  free(d.jobs);
  free(d.users);
  return 0;
}
