/* Admission: a job runs only where its whole memory plan fits what the
 * device has left, and its plan stays reserved until it ends, so two
 * admissions can never count on the same bytes. */
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

int td_sched_check_fit(td_daemon *d, const td_job *j, char *err, size_t errlen) {
  uint64_t best = 0;
  const char *best_name = NULL;
  char need[32], have[32];

  for (int i = 0; i < d->ndevices; i++) {
    const td_device *dev = &d->devices[i];
    if (!td__may_use(j, dev))
      continue;
    if (j->plan.total <= dev->budget)
      return 0;
    if (best_name == NULL || dev->budget > best) {
      best = dev->budget;
      best_name = dev->name;
    }
  }
  if (best_name == NULL) {
    snprintf(err, errlen, "the job asks for device '%s', which this traind does not have; "
             "see `traind-client devices`", j->pin);
    return TD_EINVAL;
  }
  td_format_size(j->plan.total, need, sizeof(need));
  td_format_size(best, have, sizeof(have));
  snprintf(err, errlen,
           "job needs %s (%llu bytes) at micro-batch %u but the largest device it may use "
           "(%s) has a budget of %s (%llu bytes); reduce train.batch_size or the model, "
           "or raise the device budget",
           need, (unsigned long long)j->plan.total, j->plan.micro_batch, best_name, have,
           (unsigned long long)best);
  return TD_ENOFIT;
}

/* Best fit: the device with the least room left after the job. */
static td_device *td__pick(td_daemon *d, const td_job *j) {
  td_device *best = NULL;
  uint64_t best_left = 0;

  for (int i = 0; i < d->ndevices; i++) {
    td_device *dev = &d->devices[i];
    uint64_t free_bytes = dev->budget > dev->reserved ? dev->budget - dev->reserved : 0;

    if (!td__may_use(j, dev) || dev->draining || j->plan.total > free_bytes)
      continue;
    if (best == NULL || free_bytes - j->plan.total < best_left) {
      best = dev;
      best_left = free_bytes - j->plan.total;
    }
  }
  return best;
}

td_device *td_sched_device(td_daemon *d, const char *name) {
  for (int i = 0; i < d->ndevices; i++)
    if (strcmp(d->devices[i].name, name) == 0)
      return &d->devices[i];
  return NULL;
}

static int td__admit(td_daemon *d, td_job *j, td_device *dev) {
  char err[512];
  int rc;

  td_strlcpy(j->device, dev->name, sizeof(j->device));
  dev->reserved += j->plan.total;
  dev->njobs++;
  td_publish_device(d, dev);
  rc = td_run_start(d, j, err, sizeof(err));
  if (rc < 0) {
    td_sched_release(d, j);
    td_strlcpy(j->error, err, sizeof(j->error));
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
static td_job *td__first_queued(td_daemon *d, int fitting, td_device **dev) {
  td_job *best = NULL;
  td_device *best_dev = NULL;

  for (size_t i = 0; i < d->njobs; i++) {
    td_job *j = d->jobs[i];
    td_device *fit = NULL;

    if (j->state != TD_JOB_QUEUED || j->run != NULL)
      continue;
    if (best != NULL && !td__before(j, best))
      continue;
    if (fitting && (fit = td__pick(d, j)) == NULL)
      continue;
    best = j;
    best_dev = fit;
  }
  *dev = best_dev;
  return best;
}

void td_sched_run(td_daemon *d) {
  td_job *j;
  td_device *dev;

  if (d->stopping)
    return;
  for (;;) {
    j = td__first_queued(d, 0, &dev);
    if (j == NULL) {
      d->head_wait_since = 0;
      return;
    }
    dev = td__pick(d, j);
    if (dev != NULL) {
      d->head_wait_since = 0;
    } else {
      /* The head waits for memory.  Smaller jobs may start ahead of it
       * (backfill), but only for a bounded time, so it is never starved. */
      if (d->head_wait_since == 0)
        d->head_wait_since = td_now_mono();
      if (td_now_mono() - d->head_wait_since > TD_BACKFILL_WINDOW_S)
        return;
      j = td__first_queued(d, 1, &dev);
      if (j == NULL)
        return;
    }
    td_info("job %llu admitted to %s: plan %llu bytes, %llu of %llu bytes reserved before",
            (unsigned long long)j->id, dev->name, (unsigned long long)j->plan.total,
            (unsigned long long)dev->reserved, (unsigned long long)dev->budget);
    td__admit(d, j, dev);
  }
}
