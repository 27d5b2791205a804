/* Admission: a job runs only where its whole memory plan fits what the
 * device has left, and its plan stays reserved until it ends, so two
 * admissions can never count on the same bytes.  A job whose batch does
 * not fit is planned by the plan chooser (td_plan_choose), as its worker
 * re-plans: the largest micro-batch that fits (gradient accumulation keeps
 * the effective batch), then the job's other remedies in its order. */
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "metrics.h"
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

/* The job's plan on a budget, as its worker would choose it
 * (td_plan_choose), so admission never tries a size on the device to find
 * out. */
static int td__fit(const td_job *j, const td_device *dev, uint64_t budget, td_plan_choice *out) {
  return td_plan_choose(j->spec, budget, dev->overhead, UINT32_MAX, out);
}

/* The smallest plan the job may run at: with every remedy it allows. */
static int td__smallest(const td_job *j, uint64_t overhead, td_plan *out) {
  td_plan_choice c = {0};
  int rc = td_plan_smallest(j->spec, overhead, &c);

  *out = c.plan;
  return rc;
}

/* Remedies other than accumulation change what is computed: fewer is
 * better, and shrink (another effective batch) is worst. */
static int td__remedy_cost(unsigned remedies) {
  int n = 0;

  if (remedies & (1u << TD_REMEDY_SHRINK))
    return TD_REMEDY__COUNT;
  for (int r = 0; r < TD_REMEDY__COUNT; r++)
    n += r != TD_REMEDY_ACCUMULATE && (remedies & (1u << r)) != 0;
  return n;
}

int td_sched_check_fit(td_daemon *d, td_job *j, char *err, size_t errlen) {
  uint64_t best = 0;
  const char *best_name = NULL;
  const td_device *best_dev = NULL, *broken = NULL;
  char need[32], have[32], remedies[64];
  td_plan_choice c;
  td_plan min;
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
  if ((rc = td__fit(j, best_dev, best, &c)) == 0) {
    j->plan = c.plan;
    return 0;
  }
  if (rc != TD_ENOFIT || td__smallest(j, best_dev->overhead, &min) < 0) {
    snprintf(err, errlen, "the job's memory plan overflows (the model or batch is absurdly "
             "large); reduce layer sizes or train.batch_size");
    return TD_ETOOBIG;
  }
  j->plan = min;
  td_format_size(min.total, need, sizeof(need));
  td_format_size(best, have, sizeof(have));
  td_plan_remedies_text(td_plan_remedies(j->spec, &min), remedies, sizeof(remedies));
  snprintf(err, errlen,
           "job needs %s (%llu bytes) even at its smallest micro-batch %u (remedies: %s) but "
           "the largest device it may use (%s) has a budget of %s (%llu bytes); reduce the "
           "model or memory.min_micro_batch, allow more in memory.remedies ('accumulate', "
           "'recompute', 'bf16', 'shrink'), or raise the device budget (`traind-client plan "
           "FILE` shows where the bytes go)",
           need, (unsigned long long)min.total, min.micro_batch, remedies, best_name, have,
           (unsigned long long)best);
  return TD_ENOFIT;
}

/* Why the job cannot start on any device now, for a person: a device it
 * could use that is short of memory (the one closest to enough), else a
 * device that admits nothing (draining, being probed, unusable). */
static void td__explain_nofit(const td_daemon *d, td_job *j) {
  const td_device *short_dev = NULL, *blocked = NULL;
  uint64_t short_need = 0, short_free = 0, short_gap = UINT64_MAX;
  char need[32], have[32];

  for (int i = 0; i < d->ndevices; i++) {
    const td_device *dev = &d->devices[i];
    uint64_t free_bytes = dev->budget > dev->reserved ? dev->budget - dev->reserved : 0;
    td_plan min;

    if (!td__may_use(j, dev))
      continue;
    if (dev->unusable[0] != '\0' || dev->probing || dev->draining) {
      if (blocked == NULL)
        blocked = dev;
      continue;
    }
    if (td__smallest(j, dev->overhead, &min) < 0 || min.total <= free_bytes)
      continue;
    if (min.total - free_bytes < short_gap) {
      short_gap = min.total - free_bytes;
      short_dev = dev;
      short_need = min.total;
      short_free = free_bytes;
    }
  }
  if (short_dev != NULL) {
    td_format_size(short_need, need, sizeof(need));
    td_format_size(short_free, have, sizeof(have));
    snprintf(j->wait_reason, sizeof(j->wait_reason), "waiting for %s on %s (%s free)", need,
             short_dev->name, have);
  } else if (blocked != NULL && blocked->unusable[0] != '\0') {
    snprintf(j->wait_reason, sizeof(j->wait_reason), "device %s is unusable: %s", blocked->name,
             blocked->unusable);
  } else if (blocked != NULL) {
    snprintf(j->wait_reason, sizeof(j->wait_reason), "device %s is %s", blocked->name,
             blocked->probing ? "being probed" : "draining");
  } else {
    snprintf(j->wait_reason, sizeof(j->wait_reason), "no device it may use (%s) can take it",
             j->pin[0] ? j->pin : "any");
  }
}

/* Where the job goes now, and at what plan.  A device that needs fewer
 * remedies beyond accumulation beats one that needs more (shrink last);
 * then one that takes the whole batch beats one that needs accumulation;
 * among equals, best fit (the least room left after the job), so big holes
 * stay for big jobs.  Policy: a job that fits only at a smaller micro-batch
 * or with a remedy is admitted with the plan the chooser gives for the
 * free bytes now, rather than waiting for room for its whole batch: the
 * worker would re-plan so anyway.  NULL, with the job's wait_reason saying
 * why, when it fits nowhere now. */
static td_device *td__pick(td_daemon *d, td_job *j, td_plan_choice *plan) {
  td_device *best = NULL;
  td_plan_choice best_plan = {0};
  uint64_t best_left = 0;

  for (int i = 0; i < d->ndevices; i++) {
    td_device *dev = &d->devices[i];
    uint64_t free_bytes = dev->budget > dev->reserved ? dev->budget - dev->reserved : 0;
    td_plan_choice c;
    int cost, best_cost;

    if (!td__may_use(j, dev) || dev->draining || dev->probing || dev->unusable[0] != '\0' ||
        td__fit(j, dev, free_bytes, &c) < 0)
      continue;
    cost = td__remedy_cost(c.remedies);
    best_cost = td__remedy_cost(best_plan.remedies);
    if (best == NULL || cost < best_cost ||
        (cost == best_cost && c.plan.micro_batch > best_plan.plan.micro_batch) ||
        (cost == best_cost && c.plan.micro_batch == best_plan.plan.micro_batch &&
         free_bytes - c.plan.total < best_left)) {
      best = dev;
      best_plan = c;
      best_left = free_bytes - c.plan.total;
    }
  }
  if (best == NULL)
    td__explain_nofit(d, j);
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

static int td__admit(td_daemon *d, td_job *j, td_device *dev, const td_plan_choice *plan) {
  char err[512], remedies[64];
  td_user *u;
  int rc;

  td_plan_remedies_text(plan->remedies, remedies, sizeof(remedies));
  td_info("job %llu admitted to %s: plan %llu bytes at micro-batch %u x %u, remedies %s, "
          "%llu of %llu bytes reserved before", (unsigned long long)j->id, dev->name,
          (unsigned long long)plan->plan.total, plan->plan.micro_batch,
          plan->plan.accumulation, remedies, (unsigned long long)dev->reserved,
          (unsigned long long)dev->budget);
  /* The chosen plan is what is reserved and what the worker is given. */
  j->plan = plan->plan;
  j->wait_reason[0] = '\0';
  j->acct_mono = td_now_mono();
  if ((u = td_user_get(d, j->uid, j->owner)) != NULL)
    u->running++;
  td_strlcpy(j->device, dev->name, sizeof(j->device));
  dev->reserved += j->plan.total;
  dev->njobs++;
  td_metrics_admitted(j, dev, plan->remedies);
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
  td_fairshare_charge(d, j); /* the last slice it held */
  j->acct_mono = 0;
  dev->reserved -= j->plan.total <= dev->reserved ? j->plan.total : dev->reserved;
  if (dev->njobs > 0)
    dev->njobs--;
  td_publish_device(d, dev);
}

int td_sched_before(const td_job *a, double usage_a, const td_job *b, double usage_b) {
  if (a->priority != b->priority)
    return a->priority > b->priority;
  if (usage_a != usage_b)
    return usage_a < usage_b;
  return a->id < b->id;
}

static double td__usage(td_daemon *d, const td_job *j) {
  td_user *u = td_user_get(d, j->uid, j->owner);

  return u != NULL ? u->usage : 0;
}

static int td__before(td_daemon *d, const td_job *a, const td_job *b) {
  return td_sched_before(a, td__usage(d, a), b, td__usage(d, b));
}

/* The user is at max_running_per_user: their further jobs are held and
 * others' pass them. */
static td_user *td__held(td_daemon *d, const td_job *j) {
  td_user *u;

  if (d->cfg.max_running_per_user == 0 || (u = td_user_get(d, j->uid, j->owner)) == NULL)
    return NULL;
  return u->running >= d->cfg.max_running_per_user ? u : NULL;
}

static int td__waiting(const td_job *j) {
  return j->state == TD_JOB_QUEUED && j->run == NULL;
}

/* A scheduling pass starts: every user's usage as of now, and how many
 * jobs each holds a reservation for. */
static void td__pass_begin(td_daemon *d) {
  td_fairshare_decay_all(d, td_now_unix_ms());
  for (size_t i = 0; i < d->nusers; i++)
    d->users[i].running = 0;
  for (size_t i = 0; i < d->njobs; i++) {
    td_job *j = d->jobs[i];
    td_user *u;

    if ((j->run != NULL || j->state == TD_JOB_RUNNING) &&
        (u = td_user_get(d, j->uid, j->owner)) != NULL)
      u->running++;
  }
}

/* The queued job that comes first in queue order (held ones aside), or
 * with fitting, the first that fits somewhere now (skip aside: it is known
 * not to); the jobs tried and not fitting get their wait_reason. */
static td_job *td__first_queued(td_daemon *d, int fitting, const td_job *skip, td_device **dev,
                                td_plan_choice *plan) {
  td_job *best = NULL;
  td_device *best_dev = NULL;
  double best_usage = 0;
  td_plan_choice p;

  for (size_t i = 0; i < d->njobs; i++) {
    td_job *j = d->jobs[i];
    td_device *fit = NULL;
    double usage;

    if (!td__waiting(j) || j == skip || td__held(d, j) != NULL)
      continue;
    usage = td__usage(d, j);
    if (best != NULL && !td_sched_before(j, usage, best, best_usage))
      continue;
    if (fitting && (fit = td__pick(d, j, &p)) == NULL)
      continue;
    best = j;
    best_usage = usage;
    best_dev = fit;
    if (fitting)
      *plan = p;
  }
  *dev = best_dev;
  return best;
}

/* Why head comes before j, for "behind job N (...)". */
static const char *td__why_behind(td_daemon *d, const td_job *head, const td_job *j) {
  if (head->priority != j->priority)
    return "higher priority";
  if (td__usage(d, head) != td__usage(d, j))
    return "its user has used less lately (fair share)";
  return "submitted earlier";
}

static void td__set_held(td_job *j, const td_user *u) {
  if (u->name[0] != '\0')
    snprintf(j->wait_reason, sizeof(j->wait_reason),
             "held: %s has %u running jobs, the max_running_per_user limit", u->name,
             u->running);
  else
    snprintf(j->wait_reason, sizeof(j->wait_reason),
             "held: uid %u has %u running jobs, the max_running_per_user limit", u->uid,
             u->running);
}

static void td__set_behind(td_daemon *d, td_job *j, const td_job *head) {
  snprintf(j->wait_reason, sizeof(j->wait_reason), "behind job %llu (%s)",
           (unsigned long long)head->id, td__why_behind(d, head, j));
}

/* Append "; behind job N" to a memory reason. */
static void td__add_behind(td_job *j, const td_job *head) {
  size_t n = strnlen(j->wait_reason, sizeof(j->wait_reason));

  if (head != NULL && head != j && n < sizeof(j->wait_reason))
    snprintf(j->wait_reason + n, sizeof(j->wait_reason) - n, "; behind job %llu",
             (unsigned long long)head->id);
}

/* After a pass: every job still waiting says why.  The head's reason is
 * its own (memory, a device); the others' is the memory they wait for,
 * found by the backfill search just made, or once backfill has stopped,
 * the head they wait behind. */
static void td__explain(td_daemon *d, const td_job *head, int backfill) {
  for (size_t i = 0; i < d->njobs; i++) {
    td_job *j = d->jobs[i];
    td_user *u;

    if (!td__waiting(j) || j == head)
      continue;
    if ((u = td__held(d, j)) != NULL)
      td__set_held(j, u);
    else if (head != NULL && !backfill)
      td__set_behind(d, j, head);
    else
      td__add_behind(j, head);
  }
}

void td_sched_run(td_daemon *d) {
  td_job *j, *head;
  td_device *dev;
  td_plan_choice plan;
  int backfill = 1;

  if (d->stopping)
    return;
  td__pass_begin(d);
  for (;;) {
    head = td__first_queued(d, 0, NULL, &dev, &plan);
    if (head == NULL) {
      d->head_wait_since = 0;
      break;
    }
    j = head;
    dev = td__pick(d, j, &plan);
    if (dev != NULL) {
      d->head_wait_since = 0;
    } else {
      /* The head waits for memory.  Smaller jobs may start ahead of it
       * (backfill), but only for a bounded time, so it is never starved. */
      if (d->head_wait_since == 0)
        d->head_wait_since = td_now_mono();
      if (td_now_mono() - d->head_wait_since > TD_BACKFILL_WINDOW_S) {
        backfill = 0;
        break;
      }
      j = td__first_queued(d, 1, head, &dev, &plan);
      if (j == NULL)
        break;
    }
    td__admit(d, j, dev, &plan);
  }
  d->head_id = head != NULL ? head->id : 0;
  td__explain(d, head, backfill);
}

/* A new job arrived and nothing else changed since the last pass, which
 * left no queued job that fits: only the new one can start now, so try it
 * alone instead of walking the queue (a scan of every job, and a plan of
 * every queued one when the head is blocked).  Whether it heads the queue
 * matters only once backfill has stopped, when only the head may start. */
void td_sched_submitted(td_daemon *d, td_job *j) {
  td_job *head;
  td_device *dev;
  td_plan_choice plan;
  td_user *u;

  if (d->stopping)
    return;
  head = td_daemon_find(d, d->head_id);
  if (d->head_wait_since == 0 || head == NULL || !td__waiting(head)) {
    td_sched_run(d);
    return;
  }
  if ((u = td__held(d, j)) != NULL) {
    td__set_held(j, u);
    return;
  }
  if (td__before(d, j, head)) {
    d->head_id = j->id; /* it waits, if it does, at the head */
    head = j;
  } else if (td_now_mono() - d->head_wait_since > TD_BACKFILL_WINDOW_S) {
    td__set_behind(d, j, head);
    return;
  }
  dev = td__pick(d, j, &plan);
  if (dev != NULL)
    td__admit(d, j, dev, &plan);
  else
    td__add_behind(j, head);
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
  /* First the largest jobs re-plan smaller, down to their smallest plan
   * (td_plan_smallest: every remedy they allow, shrink too); if that is
   * not enough, the largest go back to the queue (their budget drops below
   * their smallest plan) until the rest fit. */
  for (size_t i = 0; i < n && excess > 0; i++) {
    td_plan min;
    uint64_t room;

    if (td__smallest(jobs[i], jobs[i]->plan.overhead, &min) < 0 ||
        min.total >= jobs[i]->plan.total)
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
