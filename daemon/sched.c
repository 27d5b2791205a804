/* Admission: a job runs only where its whole memory plan fits what the
 * device has left, and its plan stays reserved until it ends, so two
 * admissions can never count on the same bytes.  A job whose batch does
 * not fit is planned by the plan chooser (td_plan_choose), as its worker
 * re-plans: the largest micro-batch that fits (gradient accumulation keeps
 * the effective batch), then the job's other remedies in its order.
 *
 * The decision is pure (td_sched_decide, over a td_sched_view); the
 * daemon's side below it builds the view and applies the result. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fairshare.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "supervise.h"
#include "td_sched.h"
#include "traind.h"
#include "util.h"

static int td__may_use(const char *pin, const char *dev) {
  return pin[0] == '\0' || strcmp(pin, dev) == 0;
}

/* The smallest plan the job may run at: with every remedy it allows. */
static int td__smallest(const td_jobspec *spec, uint64_t overhead, td_plan *out) {
  td_plan_choice c = {0};
  int rc = td_plan_smallest(spec, overhead, &c);

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

int td_sched_before(const td_sched_job *a, const td_sched_job *b) {
  if (a->priority != b->priority)
    return a->priority > b->priority;
  if (a->usage != b->usage)
    return a->usage < b->usage;
  return a->id < b->id;
}

/* A pass's working state: the view, and what the starts so far changed. */
typedef struct td__pass {
  const td_sched_view *v;
  td_sched_out *out;
  uint64_t *reserved;      /* per device */
  uint32_t *running;       /* per user */
  unsigned char *started;  /* per job */
} td__pass;

static uint64_t td__free(const td__pass *p, int k) {
  const td_sched_dev *dev = &p->v->devs[k];

  return dev->budget > p->reserved[k] ? dev->budget - p->reserved[k] : 0;
}

/* Why the job cannot start on any device now, for a person: a device it
 * could use that is short of memory (the one closest to enough), else a
 * device that admits nothing (draining, being probed, unusable). */
static void td__explain_nofit(const td__pass *p, size_t i) {
  const td_sched_job *j = &p->v->jobs[i];
  const td_sched_dev *short_dev = NULL, *blocked = NULL;
  uint64_t short_need = 0, short_free = 0, short_gap = UINT64_MAX;
  char need[32], have[32], *reason = p->out->reasons[i];

  for (int k = 0; k < p->v->ndevs; k++) {
    const td_sched_dev *dev = &p->v->devs[k];
    uint64_t free_bytes = td__free(p, k);
    td_plan min;

    if (!td__may_use(j->pin, dev->name))
      continue;
    if (dev->unusable[0] != '\0' || dev->probing || dev->draining) {
      if (blocked == NULL)
        blocked = dev;
      continue;
    }
    if (td__smallest(j->spec, dev->overhead, &min) < 0 || min.total <= free_bytes)
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
    snprintf(reason, TD_REASON_MAX, "waiting for %s on %s (%s free)", need, short_dev->name,
             have);
  } else if (blocked != NULL && blocked->unusable[0] != '\0') {
    snprintf(reason, TD_REASON_MAX, "device %s is unusable: %s", blocked->name,
             blocked->unusable);
  } else if (blocked != NULL) {
    snprintf(reason, TD_REASON_MAX, "device %s is %s", blocked->name,
             blocked->probing ? "being probed" : "draining");
  } else {
    snprintf(reason, TD_REASON_MAX, "no device it may use (%s) can take it",
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
 * worker would re-plan so anyway.  -1, with the job's reason saying why,
 * when it fits nowhere now. */
static int td__pick(const td__pass *p, size_t i, td_plan_choice *plan) {
  const td_sched_job *j = &p->v->jobs[i];
  int best = -1;
  td_plan_choice best_plan = {0};
  uint64_t best_left = 0;

  for (int k = 0; k < p->v->ndevs; k++) {
    const td_sched_dev *dev = &p->v->devs[k];
    uint64_t free_bytes = td__free(p, k);
    td_plan_choice c;
    int cost, best_cost;

    if (!td__may_use(j->pin, dev->name) || dev->draining || dev->probing ||
        dev->unusable[0] != '\0' ||
        td_plan_choose(j->spec, free_bytes, dev->overhead, UINT32_MAX, &c) < 0)
      continue;
    cost = td__remedy_cost(c.remedies);
    best_cost = td__remedy_cost(best_plan.remedies);
    if (best < 0 || cost < best_cost ||
        (cost == best_cost && c.plan.micro_batch > best_plan.plan.micro_batch) ||
        (cost == best_cost && c.plan.micro_batch == best_plan.plan.micro_batch &&
         free_bytes - c.plan.total < best_left)) {
      best = k;
      best_plan = c;
      best_left = free_bytes - c.plan.total;
    }
  }
  if (best < 0)
    td__explain_nofit(p, i);
  if (best >= 0 && plan != NULL)
    *plan = best_plan;
  return best;
}

/* The job's user is at max_running_per_user: their further jobs are held
 * and others' pass them. */
static int td__held(const td__pass *p, size_t i) {
  size_t u = p->v->jobs[i].user;

  return p->v->max_running_per_user != 0 && u != TD_SCHED_NONE &&
         p->running[u] >= p->v->max_running_per_user;
}

static void td__start(td__pass *p, size_t i, int dev, const td_plan_choice *plan) {
  td_sched_start *s = &p->out->starts[p->out->nstarts++];
  size_t u = p->v->jobs[i].user;

  s->job = i;
  s->dev = dev;
  s->plan = *plan;
  p->started[i] = 1;
  p->reserved[dev] += plan->plan.total;
  if (u != TD_SCHED_NONE)
    p->running[u]++;
  p->out->reasons[i][0] = '\0';
}

/* The waiting job that comes first in queue order (held ones aside), or
 * with fitting, the first that fits somewhere now (skip aside: it is known
 * not to); the jobs tried and not fitting get their reason. */
static size_t td__first_queued(const td__pass *p, int fitting, size_t skip, int *dev,
                               td_plan_choice *plan) {
  size_t best = TD_SCHED_NONE;
  int best_dev = -1;
  td_plan_choice c;

  for (size_t i = 0; i < p->v->njobs; i++) {
    int fit = -1;

    if (p->started[i] || i == skip || td__held(p, i))
      continue;
    if (best != TD_SCHED_NONE && !td_sched_before(&p->v->jobs[i], &p->v->jobs[best]))
      continue;
    if (fitting && (fit = td__pick(p, i, &c)) < 0)
      continue;
    best = i;
    best_dev = fit;
    if (fitting)
      *plan = c;
  }
  *dev = best_dev;
  return best;
}

/* Why head comes before j, for "behind job N (...)". */
static const char *td__why_behind(const td_sched_job *head, const td_sched_job *j) {
  if (head->priority != j->priority)
    return "higher priority";
  if (head->usage != j->usage)
    return "its user has used less lately (fair share)";
  return "submitted earlier";
}

static void td__set_held(const td__pass *p, size_t i) {
  const td_sched_user *u = &p->v->users[p->v->jobs[i].user];
  uint32_t running = p->running[p->v->jobs[i].user];

  if (u->name[0] != '\0')
    snprintf(p->out->reasons[i], TD_REASON_MAX,
             "held: %s has %u running jobs, the max_running_per_user limit", u->name, running);
  else
    snprintf(p->out->reasons[i], TD_REASON_MAX,
             "held: uid %u has %u running jobs, the max_running_per_user limit", u->uid,
             running);
}

static void td__set_behind(const td__pass *p, size_t i, size_t head) {
  snprintf(p->out->reasons[i], TD_REASON_MAX, "behind job %llu (%s)",
           (unsigned long long)p->v->jobs[head].id,
           td__why_behind(&p->v->jobs[head], &p->v->jobs[i]));
}

/* Append "; behind job N" to a memory reason. */
static void td__add_behind(const td__pass *p, size_t i, size_t head) {
  char *reason = p->out->reasons[i];
  size_t n = strnlen(reason, TD_REASON_MAX);

  if (head != TD_SCHED_NONE && head != i && n < TD_REASON_MAX)
    snprintf(reason + n, TD_REASON_MAX - n, "; behind job %llu",
             (unsigned long long)p->v->jobs[head].id);
}

/* After a pass: every job still waiting says why.  The head's reason is
 * its own (memory, a device); the others' is the memory they wait for,
 * found by the backfill search just made, or once backfill has stopped,
 * the head they wait behind. */
static void td__explain(const td__pass *p, size_t head, int backfill) {
  for (size_t i = 0; i < p->v->njobs; i++) {
    if (p->started[i] || i == head)
      continue;
    if (td__held(p, i))
      td__set_held(p, i);
    else if (head != TD_SCHED_NONE && !backfill)
      td__set_behind(p, i, head);
    else
      td__add_behind(p, i, head);
  }
}

static int td__pass_init(td__pass *p, const td_sched_view *v, td_sched_out *out) {
  memset(p, 0, sizeof(*p));
  p->v = v;
  p->out = out;
  out->nstarts = 0;
  out->head = TD_SCHED_NONE;
  out->head_wait_since = v->head_wait_since;
  p->reserved = calloc((size_t)v->ndevs + 1, sizeof(*p->reserved));
  p->running = calloc(v->nusers + 1, sizeof(*p->running));
  p->started = calloc(v->njobs + 1, 1);
  if (p->reserved == NULL || p->running == NULL || p->started == NULL)
    return TD_ENOMEM;
  for (int k = 0; k < v->ndevs; k++)
    p->reserved[k] = v->devs[k].reserved;
  for (size_t u = 0; u < v->nusers; u++)
    p->running[u] = v->users[u].running;
  return 0;
}

static void td__pass_free(td__pass *p) {
  free(p->reserved);
  free(p->running);
  free(p->started);
}

int td_sched_decide(const td_sched_view *v, td_sched_out *out) {
  td__pass p;
  size_t i, head;
  int dev, backfill = 1, rc;
  td_plan_choice plan;

  if ((rc = td__pass_init(&p, v, out)) < 0)
    goto free_pass;
  for (i = 0; i < v->njobs; i++)
    out->reasons[i][0] = '\0';
  for (;;) {
    head = td__first_queued(&p, 0, TD_SCHED_NONE, &dev, &plan);
    if (head == TD_SCHED_NONE) {
      out->head_wait_since = 0;
      break;
    }
    i = head;
    dev = td__pick(&p, i, &plan);
    if (dev >= 0) {
      out->head_wait_since = 0;
    } else {
      /* The head waits for memory.  Smaller jobs may start ahead of it
       * (backfill), but only for a bounded time, so it is never starved. */
      if (out->head_wait_since == 0)
        out->head_wait_since = v->now;
      if (v->now - out->head_wait_since > v->backfill_window_s) {
        backfill = 0;
        break;
      }
      i = td__first_queued(&p, 1, head, &dev, &plan);
      if (i == TD_SCHED_NONE)
        break;
    }
    td__start(&p, i, dev, &plan);
  }
  out->head = head;
  td__explain(&p, head, backfill);
free_pass:
  td__pass_free(&p);
  return rc;
}

void td_sched_decide_submitted(const td_sched_view *v, size_t job, size_t head,
                               td_sched_out *out) {
  td__pass p;
  td_plan_choice plan;
  int dev;

  out->reasons[job][0] = '\0';
  if (td__pass_init(&p, v, out) < 0) {
    out->head = head;
    snprintf(out->reasons[job], TD_REASON_MAX, "waiting: traind is out of memory");
    goto free_pass;
  }
  out->head = head;
  if (td__held(&p, job)) {
    td__set_held(&p, job);
    goto free_pass;
  }
  if (td_sched_before(&v->jobs[job], &v->jobs[head])) {
    out->head = head = job; /* it waits, if it does, at the head */
  } else if (v->now - v->head_wait_since > v->backfill_window_s) {
    td__set_behind(&p, job, head);
    goto free_pass;
  }
  dev = td__pick(&p, job, &plan);
  if (dev >= 0)
    td__start(&p, job, dev, &plan);
  else
    td__add_behind(&p, job, head);
free_pass:
  td__pass_free(&p);
}

void td_sched_squeeze_plan(const uint64_t *total, const uint64_t *smallest, size_t n,
                           uint64_t excess, uint64_t *budget) {
  uint64_t give;

  /* First the largest jobs re-plan smaller, down to their smallest plan
   * (td_plan_smallest: every remedy they allow, shrink too); if that is
   * not enough, the largest go back to the queue (their budget drops below
   * their smallest plan) until the rest fit.  budget holds what each gives
   * until the end. */
  for (size_t i = 0; i < n; i++)
    budget[i] = 0;
  for (size_t i = 0; i < n && excess > 0; i++) {
    uint64_t room;

    if (smallest[i] == 0 || smallest[i] >= total[i])
      continue;
    room = total[i] - smallest[i];
    budget[i] = room < excess ? room : excess;
    excess -= budget[i];
  }
  for (size_t i = 0; i < n && excess > 0; i++) {
    uint64_t left = total[i] - budget[i];

    excess -= left < excess ? left : excess;
    budget[i] = total[i]; /* below its smallest: it re-queues */
  }
  for (size_t i = 0; i < n; i++) {
    give = budget[i];
    if (give != 0)
      budget[i] = give >= total[i] ? 1 : total[i] - give;
  }
}

/* The daemon's side: the view of the daemon, and what a decision does. */

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
    if (!td__may_use(j->pin, dev->name))
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
  if ((rc = td_plan_choose(j->spec, best, best_dev->overhead, UINT32_MAX, &c)) == 0) {
    j->plan = c.plan;
    return 0;
  }
  if (rc != TD_ENOFIT || td__smallest(j->spec, best_dev->overhead, &min) < 0) {
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

/* A decision applied: the ledger reserves the plan, the processes start.
 * A job whose processes cannot start fails, and its bytes go back. */
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
  j->wait_reason[0] = '\0';
  if ((u = td_user_get(d, j->uid, j->owner)) != NULL)
    u->running++;
  td_ledger_reserve(d, dev, j, &plan->plan);
  td_metrics_admitted(j, dev, plan->remedies);
  rc = td_run_start(d, j, err, sizeof(err));
  if (rc < 0) {
    td_ledger_release(d, j);
    td_job_set(&j->error, err);
    j->finished_ms = td_now_unix_ms();
    td_job_transition(d, j, TD_JOB_FAILED, err);
    return rc;
  }
  return 0;
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

/* The daemon as a scheduler sees it; the arrays are malloc'd, for n jobs
 * (td__view_free). */
typedef struct td__view {
  td_sched_view v;
  td_job **jobs;           /* the daemon's job behind each view job */
  td_sched_job *sjobs;
  td_sched_user *users;
  td_sched_dev devs[TD_MAX_DEVICES];
  td_sched_start *starts;
  char (*reasons)[TD_REASON_MAX];
  td_sched_out out;
} td__view;

static void td__view_free(td__view *w) {
  free(w->jobs);
  free(w->sjobs);
  free(w->users);
  free(w->starts);
  free(w->reasons);
}

static void td__view_job(td_daemon *d, td__view *w, td_job *j) {
  td_sched_job *s = &w->sjobs[w->v.njobs];
  td_user *u = td_user_get(d, j->uid, j->owner);

  w->jobs[w->v.njobs++] = j;
  s->id = j->id;
  s->priority = j->priority;
  s->usage = u != NULL ? u->usage : 0;
  /* an index: td_user_get may move the users while the view is built */
  s->user = u != NULL ? (size_t)(u - d->users) : TD_SCHED_NONE;
  s->pin = j->pin;
  s->spec = j->spec;
}

/* Room for n jobs; the devices and the users as they are now.  0 or
 * TD_ENOMEM. */
static int td__view_open(td_daemon *d, td__view *w, size_t n) {
  memset(w, 0, sizeof(*w));
  w->jobs = malloc((n + 1) * sizeof(*w->jobs));
  w->sjobs = malloc((n + 1) * sizeof(*w->sjobs));
  w->starts = malloc((n + 1) * sizeof(*w->starts));
  w->reasons = malloc((n + 1) * sizeof(*w->reasons));
  if (w->jobs == NULL || w->sjobs == NULL || w->starts == NULL || w->reasons == NULL)
    return TD_ENOMEM;
  for (int k = 0; k < d->ndevices; k++) {
    const td_device *dev = &d->devices[k];

    w->devs[k] = (td_sched_dev){.name = dev->name, .budget = dev->budget,
                                .reserved = dev->reserved, .overhead = dev->overhead,
                                .draining = dev->draining, .probing = dev->probing,
                                .unusable = dev->unusable};
  }
  w->v.devs = w->devs;
  w->v.ndevs = d->ndevices;
  w->v.max_running_per_user = d->cfg.max_running_per_user;
  w->v.now = td_now_mono();
  w->v.head_wait_since = d->head_wait_since;
  w->v.backfill_window_s = TD_BACKFILL_WINDOW_S;
  w->out.starts = w->starts;
  w->out.reasons = w->reasons;
  return 0;
}

/* The users, once every job of the view has looked its own up. */
static int td__view_users(td_daemon *d, td__view *w) {
  if ((w->users = malloc((d->nusers + 1) * sizeof(*w->users))) == NULL)
    return TD_ENOMEM;
  for (size_t u = 0; u < d->nusers; u++)
    w->users[u] = (td_sched_user){.uid = d->users[u].uid, .name = d->users[u].name,
                                  .running = d->users[u].running};
  w->v.jobs = w->sjobs;
  w->v.users = w->users;
  w->v.nusers = d->nusers;
  return 0;
}

/* Start what the decision says, in its order; 1 if a start failed (the
 * room it was given back may admit another job), else 0. */
static int td__apply_starts(td_daemon *d, const td__view *w) {
  for (size_t i = 0; i < w->out.nstarts; i++) {
    const td_sched_start *s = &w->out.starts[i];

    if (td__admit(d, w->jobs[s->job], &d->devices[s->dev], &s->plan) < 0)
      return 1;
  }
  return 0;
}

void td_sched_run(td_daemon *d) {
  td__view w;
  size_t n;
  int again;

  do {
    again = 0;
    if (d->stopping)
      return;
    td__pass_begin(d);
    n = 0;
    for (size_t i = 0; i < d->njobs; i++)
      n += td__waiting(d->jobs[i]);
    if (td__view_open(d, &w, n) < 0)
      goto nomem;
    for (size_t i = 0; i < d->njobs && w.v.njobs < n; i++)
      if (td__waiting(d->jobs[i]))
        td__view_job(d, &w, d->jobs[i]);
    if (td__view_users(d, &w) < 0 || td_sched_decide(&w.v, &w.out) < 0)
      goto nomem;
    d->head_wait_since = w.out.head_wait_since;
    d->head_id = w.out.head != TD_SCHED_NONE ? w.sjobs[w.out.head].id : 0;
    if ((again = td__apply_starts(d, &w)) == 0)
      for (size_t i = 0; i < w.v.njobs; i++)
        if (td__waiting(w.jobs[i]))
          memcpy(w.jobs[i]->wait_reason, w.reasons[i], TD_REASON_MAX);
    td__view_free(&w);
  } while (again);
  return;

nomem:
  /* The next pass (a job's end, a submit, the heartbeat) tries again. */
  td_error("scheduling pass: out of memory");
  td__view_free(&w);
}

/* A new job arrived and nothing else changed since the last pass, which
 * left no queued job that fits: only the new one can start now, so try it
 * alone instead of walking the queue (a scan of every job, and a plan of
 * every queued one when the head is blocked).  Whether it heads the queue
 * matters only once backfill has stopped, when only the head may start. */
void td_sched_submitted(td_daemon *d, td_job *j) {
  td_job *head;
  td__view w;

  if (d->stopping)
    return;
  head = td_daemon_find(d, d->head_id);
  if (d->head_wait_since == 0 || head == NULL || !td__waiting(head)) {
    td_sched_run(d);
    return;
  }
  if (td__view_open(d, &w, 2) < 0)
    goto nomem;
  td__view_job(d, &w, head);
  td__view_job(d, &w, j);
  if (td__view_users(d, &w) < 0)
    goto nomem;
  td_sched_decide_submitted(&w.v, 1, 0, &w.out);
  d->head_id = w.sjobs[w.out.head].id;
  memcpy(j->wait_reason, w.reasons[1], TD_REASON_MAX);
  td__apply_starts(d, &w);
  td__view_free(&w);
  return;

nomem:
  td_error("job %llu: scheduling: out of memory", (unsigned long long)j->id);
  td__view_free(&w);
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
  uint64_t total[256] = {0}, smallest[256] = {0}, budget[256];
  size_t n;

  if (dev->reserved <= dev->budget)
    return;
  n = td__running_on(d, dev, jobs, TD_ARRAY_SIZE(jobs));
  for (size_t i = 0; i < n; i++) {
    td_plan min;

    total[i] = jobs[i]->plan.total;
    smallest[i] = td__smallest(jobs[i]->spec, jobs[i]->plan.overhead, &min) < 0 ? 0 : min.total;
  }
  td_sched_squeeze_plan(total, smallest, n, dev->reserved - dev->budget, budget);
  for (size_t i = 0; i < n; i++)
    if (budget[i] != 0 && td_run_set_budget(d, jobs[i], budget[i]) < 0)
      td_warn("job %llu: cannot tell its worker the lower budget",
              (unsigned long long)jobs[i]->id);
}
