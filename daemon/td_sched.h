/* The scheduler: which waiting job starts on which device with which plan,
 * and why each of the others waits.  The decision (td_sched_decide) is a
 * pure function over a view of the queue and the devices: no clock, no
 * I/O, nothing of the daemon changes, so tables of cases test it
 * (tests/unit/test_sched.c).  td_sched_run and td_sched_submitted build
 * the view from the daemon and apply what it decides: the ledger reserves
 * (ledger.c), supervision starts the processes (td_run_start).
 * (td_sched.h: the daemon's directory is on the include path, where a
 * sched.h would hide the C library's.) */
#ifndef TD_SCHED_H
#define TD_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "jobspec.h"
#include "plan.h"
#include "traind.h"

/* How long the head of the queue may be passed by smaller jobs
 * (backfill) before everything waits for it. */
#define TD_BACKFILL_WINDOW_S 300.0
/* An index that names nothing: a job without a user in the view, or no
 * head. */
#define TD_SCHED_NONE SIZE_MAX

/* A waiting job, as admission sees it. */
typedef struct td_sched_job {
  uint64_t id;             /* submission order */
  int32_t priority;
  double usage;            /* its user's fair-share usage; all decayed to one instant */
  size_t user;             /* index in the view's users; TD_SCHED_NONE: none */
  const char *pin;         /* the only device it may use; "" any */
  const td_jobspec *spec;  /* what the plan chooser plans */
} td_sched_job;

typedef struct td_sched_user {
  uint32_t uid;
  const char *name;        /* "" when not known */
  uint32_t running;        /* jobs holding a reservation now */
} td_sched_user;

typedef struct td_sched_dev {
  const char *name;
  uint64_t budget, reserved, overhead;
  int draining, probing;   /* either: admits no new job */
  const char *unusable;    /* why its probe failed; "" if it did not */
} td_sched_dev;

typedef struct td_sched_view {
  const td_sched_job *jobs; /* the waiting jobs, in submission order */
  size_t njobs;
  const td_sched_dev *devs;
  int ndevs;
  const td_sched_user *users;
  size_t nusers;
  uint32_t max_running_per_user; /* 0: no limit */
  double now;              /* td_now_mono() of the pass */
  double head_wait_since;  /* when the head began to wait for memory; 0: it did not */
  double backfill_window_s; /* TD_BACKFILL_WINDOW_S */
} td_sched_view;

typedef struct td_sched_start {
  size_t job;              /* index in the view's jobs */
  int dev;                 /* index in the view's devices */
  td_plan_choice plan;     /* what is reserved, and what the worker runs */
} td_sched_start;

/* What a decision says; the caller gives the arrays, njobs entries each. */
typedef struct td_sched_out {
  td_sched_start *starts;  /* the jobs that start, in the order they start */
  size_t nstarts;
  char (*reasons)[TD_REASON_MAX]; /* why each job waits ("" for one that starts) */
  size_t head;             /* the queue's head: the first job in queue order that
                              is not held; TD_SCHED_NONE: none */
  double head_wait_since;  /* the view's, as the pass leaves it */
} td_sched_out;

/* Queue order: 1 if a comes before b.  Higher priority first, then among
 * equal priorities the job whose user has the smaller decayed usage (fair
 * share), then submission order. */
int td_sched_before(const td_sched_job *a, const td_sched_job *b);

/* A scheduling pass.  While the head fits somewhere it starts; when it
 * waits for memory, the first job in queue order that fits starts ahead
 * of it (backfill), for backfill_window_s after the head began to wait,
 * and then nothing passes it.  A job goes to the device that needs the
 * fewest remedies beyond accumulation (shrink last), then the largest
 * micro-batch, then the least room left (best fit), at the plan
 * td_plan_choose gives for that device's free bytes.  A user with
 * max_running_per_user jobs running is held.  Every job that does not
 * start gets its reason.  0, or TD_ENOMEM. */
int td_sched_decide(const td_sched_view *v, td_sched_out *out);

/* A job was submitted (jobs[job]) while the head (jobs[head]) waits for
 * memory and nothing else changed: only the new job may start (or be the
 * new head); only reasons[job] is written. */
void td_sched_decide_submitted(const td_sched_view *v, size_t job, size_t head,
                               td_sched_out *out);

/* Squeezing a device whose budget fell below what it holds by excess
 * bytes: jobs n, largest plan first, with their plans' totals and their
 * smallest plans (0: none smaller).  The largest re-plan smaller first;
 * if that is not enough, the largest go back to the queue.  budget[i]:
 * the budget to tell job i, 0 to leave it, 1 to send it back. */
void td_sched_squeeze_plan(const uint64_t *total, const uint64_t *smallest, size_t n,
                           uint64_t excess, uint64_t *budget);

/* The daemon's side. */
/* Admit queued jobs that fit, highest priority first; start them. */
void td_sched_run(td_daemon *d);
/* Admission after a submit: only the new job is tried, unless it heads
 * the queue. */
void td_sched_submitted(td_daemon *d, td_job *j);
/* 0 if the job fits some device it may use when that is empty, at its
 * smallest allowed micro-batch or more; j->plan becomes the plan on the
 * largest such device.  TD_ENOFIT with a message naming the numbers (and
 * j->plan the smallest plan) otherwise. */
int td_sched_check_fit(td_daemon *d, td_job *j, char *err, size_t errlen);
/* The device's budget went below what its jobs hold: tell running jobs
 * lower budgets (largest first) so that they re-plan to fit. */
void td_sched_squeeze(td_daemon *d, td_device *dev);

#endif
