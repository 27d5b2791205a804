/* Admission: a job runs only where its whole memory plan fits what the
 * device has left, and its plan stays reserved until it ends, so two
 * admissions can never count on the same bytes.  A job whose batch does
 * not fit is planned at the largest micro-batch that does (gradient
 * accumulation keeps the effective batch). */
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "traind.h"
#include "util.h"

/* How long the head of the queue may be passed by smaller jobs
 * (backfill) before everything waits for it. */
#define TD_BACKFILL_WINDOW_S 300.0

void td_sched_init(td_daemon *d) {
  d->ndevices = d->cfg.ndevices;
  for (int i = 0; i < d->ndevices; i++) {
    memset(&d->devices[i], 0, sizeof(d->devices[i]));
    td_strlcpy(d->devices[i].name, d->cfg.devices[i].name, sizeof(d->devices[i].name));
    d->devices[i].budget = d->cfg.devices[i].budget;
  }
}

static int td__may_use(const td_job *j, const td_device *dev) {
  return j->pin[0] == '\0' || strcmp(j->pin, dev->name) == 0;
}

/* The job's plan on a budget: its whole batch if that fits, else the
 * largest micro-batch that does (td_plan_fit), so admission never tries a
 * size on the device to find out. */
static int td__fit(const td_job *j, const td_device *dev, uint64_t budget, td_plan *out) {
  return td_plan_fit(j->spec, j->spec->precision, dev->overhead, budget, out);
}

int td_sched_check_fit(td_daemon *d, td_job *j, char *err, size_t errlen) {
  uint64_t best = 0;
  const char *best_name = NULL;
  const td_device *best_dev = NULL, *broken = NULL;
  char need[32], have[32];
  td_plan p, min;
  int rc;

  for (int i = 0; i < d->ndevices; i++) {
    const td_device *dev = &d->devices[i];
    if (!td__may_use(j, dev))
      continue;
    if (dev->unusable[0] != '\0') { /* its probe failed */
      broken = dev;
      continue;
    }
    if (best_name == NULL || dev->budget > best) {
      best = dev->budget;
      best_name = dev->name;
      best_dev = dev;
    }
  }
  if (best_name == NULL && broken != NULL) {
    snprintf(err, errlen, "device %s is unusable: %s", broken->name, broken->unusable);
    return TD_EBACKEND;
  }
  if (best_name == NULL) {
    snprintf(err, errlen, "the job asks for device '%s', which this traind does not have; "
             "see `traind-client devices`", j->pin[0] ? j->pin : j->spec->device);
    return TD_EINVAL;
  }
  /* The plan shown until admission: what the largest device would run. */
  if ((rc = td__fit(j, best_dev, best, &p)) == 0) {
    j->plan = p;
    return 0;
  }
  if (rc != TD_ENOFIT ||
      td_plan_compute(j->spec, td_jobspec_min_micro_batch(j->spec), j->spec->precision,
                      best_dev->overhead, &min) < 0) {
    snprintf(err, errlen, "the job's memory plan overflows (the model or batch is absurdly "
             "large); reduce layer sizes or train.batch_size");
    return TD_ETOOBIG;
  }
  j->plan = min;
  td_format_size(min.total, need, sizeof(need));
  td_format_size(best, have, sizeof(have));
  snprintf(err, errlen,
           "job needs %s (%llu bytes) even at its smallest micro-batch %u but the largest "
           "device it may use (%s) has a budget of %s (%llu bytes); reduce the model or "
           "memory.min_micro_batch, allow 'accumulate' in memory.remedies, or raise the "
           "device budget (`traind-client plan FILE` shows where the bytes go)",
           need, (unsigned long long)min.total, min.micro_batch, best_name, have,
           (unsigned long long)best);
  return TD_ENOFIT;
}

/* Where the job goes now, and at what micro-batch.  A device that takes
 * the whole batch beats one that needs accumulation; among equals, best fit
 * (the least room left after the job), so big holes stay for big jobs.
 * Policy: a job that fits only at a smaller micro-batch is admitted at the
 * largest one that fits the free bytes now, rather than waiting for room
 * for its whole batch: accumulation keeps its maths the same. */
static td_device *td__pick(td_daemon *d, const td_job *j, td_plan *plan) {
  td_device *best = NULL;
  td_plan best_plan = {0};
  uint64_t best_left = 0;

  for (int i = 0; i < d->ndevices; i++) {
    td_device *dev = &d->devices[i];
    uint64_t free_bytes = dev->budget > dev->reserved ? dev->budget - dev->reserved : 0;
    td_plan p;

    if (!td__may_use(j, dev) || dev->draining || td__fit(j, dev, free_bytes, &p) < 0)
      continue;
    if (best == NULL || p.micro_batch > best_plan.micro_batch ||
        (p.micro_batch == best_plan.micro_batch && free_bytes - p.total < best_left)) {
      best = dev;
      best_plan = p;
      best_left = free_bytes - p.total;
    }
  }
  if (best != NULL && plan != NULL)
    *plan = best_plan;
  return best;
}

td_device *td_sched_device(td_daemon *d, const char *name) {
  for (int i = 0; i < d->ndevices; i++)
    if (strcmp(d->devices[i].name, name) == 0)
      return &d->devices[i];
  return NULL;
}

static int td__admit(td_daemon *d, td_job *j, td_device *dev, const td_plan *plan) {
  char err[512];
  int rc;

  /* The chosen plan is what is reserved and what the worker is given. */
  j->plan = *plan;
  td_strlcpy(j->device, dev->name, sizeof(j->device));
  dev->reserved += j->plan.total;
  dev->njobs++;
  td_publish_device(d, dev);
  rc = td_run_start(d, j, err, sizeof(err));
  if (rc < 0) {
    td_sched_release(d, j);
    td_job_set(&j->error, err);
    j->finished_ms = td_now_unix_ms();
    td_job_transition(d, j, TD_JOB_FAILED, err);
    return rc;
  }
  return 0;
}

void td_sched_release(td_daemon *d, td_job *j) {
  td_device *dev = td_sched_device(d, j->device);

  if (dev == NULL || j->plan.total == 0)
    return;
  dev->reserved -= j->plan.total <= dev->reserved ? j->plan.total : dev->reserved;
  if (dev->njobs > 0)
    dev->njobs--;
  td_publish_device(d, dev);
}

static int td__before(const td_job *a, const td_job *b) {
  if (a->priority != b->priority)
    return a->priority > b->priority;
  return a->id < b->id;
}

/* The queued job that comes first in priority order, among those that
 * fit somewhere now if fitting is asked for. */
static td_job *td__first_queued(td_daemon *d, int fitting, td_device **dev, td_plan *plan) {
  td_job *best = NULL;
  td_device *best_dev = NULL;
  td_plan p;

  for (size_t i = 0; i < d->njobs; i++) {
    td_job *j = d->jobs[i];
    td_device *fit = NULL;

    if (j->state != TD_JOB_QUEUED || j->run != NULL)
      continue;
    if (best != NULL && !td__before(j, best))
      continue;
    if (fitting && (fit = td__pick(d, j, &p)) == NULL)
      continue;
    best = j;
    best_dev = fit;
    if (fitting)
      *plan = p;
  }
  *dev = best_dev;
  return best;
}

void td_sched_run(td_daemon *d) {
  td_job *j;
  td_device *dev;
  td_plan plan;

  if (d->stopping)
    return;
  for (;;) {
    j = td__first_queued(d, 0, &dev, &plan);
    if (j == NULL) {
      d->head_wait_since = 0;
      return;
    }
    dev = td__pick(d, j, &plan);
    if (dev != NULL) {
      d->head_wait_since = 0;
    } else {
      /* The head waits for memory.  Smaller jobs may start ahead of it
       * (backfill), but only for a bounded time, so it is never starved. */
      if (d->head_wait_since == 0)
        d->head_wait_since = td_now_mono();
      if (td_now_mono() - d->head_wait_since > TD_BACKFILL_WINDOW_S)
        return;
      j = td__first_queued(d, 1, &dev, &plan);
      if (j == NULL)
        return;
    }
    td_info("job %llu admitted to %s: plan %llu bytes at micro-batch %u x %u, %llu of %llu "
            "bytes reserved before", (unsigned long long)j->id, dev->name,
            (unsigned long long)plan.total, plan.micro_batch, plan.accumulation,
            (unsigned long long)dev->reserved, (unsigned long long)dev->budget);
    td__admit(d, j, dev, &plan);
  }
}

/* A new job arrived and nothing else changed since the last pass, which
 * left no queued job that fits: only the new one can start now, so try it
 * alone instead of walking the queue (a scan of every job, and a plan of
 * every queued one when the head is blocked).  Whether it heads the queue
 * matters only once backfill has stopped, when only the head may start. */
void td_sched_submitted(td_daemon *d, td_job *j) {
  td_device *dev;
  td_plan plan;

  if (d->stopping)
    return;
  if (d->head_wait_since == 0) {
    td_sched_run(d);
    return;
  }
  if (td_now_mono() - d->head_wait_since > TD_BACKFILL_WINDOW_S &&
      td__first_queued(d, 0, &dev, &plan) != j)
    return;
  dev = td__pick(d, j, &plan);
  if (dev != NULL)
    td__admit(d, j, dev, &plan);
}

/* The smallest plan the job may run at. */
static int td__min_plan(const td_job *j, td_plan *out) {
  return td_plan_compute(j->spec, td_jobspec_min_micro_batch(j->spec), j->spec->precision,
                         j->plan.overhead, out);
}

/* Running jobs on dev, largest plan first, at most cap. */
static size_t td__running_on(td_daemon *d, const td_device *dev, td_job **out, size_t cap) {
  size_t n = 0;

  for (size_t i = 0; i < d->njobs && n < cap; i++) {
    td_job *j = d->jobs[i];
    size_t k;

    if (j->state != TD_JOB_RUNNING || j->run == NULL || j->spec == NULL ||
        strcmp(j->device, dev->name) != 0)
      continue;
    for (k = n; k > 0 && out[k - 1]->plan.total < j->plan.total; k--)
      out[k] = out[k - 1];
    out[k] = j;
    n++;
  }
  return n;
}

void td_sched_squeeze(td_daemon *d, td_device *dev) {
  td_job *jobs[256];
  uint64_t excess, give[256] = {0};
  size_t n;

  if (dev->reserved <= dev->budget)
    return;
  excess = dev->reserved - dev->budget;
  n = td__running_on(d, dev, jobs, TD_ARRAY_SIZE(jobs));
  /* First the largest jobs shrink their micro-batches, down to their
   * smallest; if that is not enough, the largest go back to the queue
   * (their budget drops below their smallest plan) until the rest fit. */
  for (size_t i = 0; i < n && excess > 0; i++) {
    td_plan min;
    uint64_t room;

    if (td__min_plan(jobs[i], &min) < 0 || min.total >= jobs[i]->plan.total)
      continue;
    room = jobs[i]->plan.total - min.total;
    give[i] = room < excess ? room : excess;
    excess -= give[i];
  }
  for (size_t i = 0; i < n && excess > 0; i++) {
    uint64_t left = jobs[i]->plan.total - give[i];

    excess -= left < excess ? left : excess;
    give[i] = jobs[i]->plan.total; /* below its smallest: it re-queues */
  }
  for (size_t i = 0; i < n; i++) {
    uint64_t budget;

    if (give[i] == 0)
      continue;
    budget = give[i] >= jobs[i]->plan.total ? 1 : jobs[i]->plan.total - give[i];
    if (td_run_set_budget(d, jobs[i], budget) < 0)
      td_warn("job %llu: cannot tell its worker the lower budget",
              (unsigned long long)jobs[i]->id);
  }
}
