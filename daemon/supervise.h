/* Supervision (supervise.c): a running job's worker and loader, from
 * their start to the job's end, and what traind tells them meanwhile. */
#ifndef TD_SUPERVISE_H
#define TD_SUPERVISE_H

#include <stddef.h>
#include <stdint.h>

#include "traind.h"

/* traind-worker's exit status when even its smallest micro-batch does not
 * fit the memory it has: the job is queued again, not failed. */
#define TD_WORKER_EXIT_NEEDMEM 4
/* ... and when it stopped on td_run_checkpoint_stop's request. */
#define TD_WORKER_EXIT_STOPPED 5
/* How long td_run_checkpoint_stop waits before it kills; with traind's own
 * exit it stays inside deploy/traind.service's TimeoutStopSec (60 s). */
#define TD_STOP_GRACE_MS 45000
/* A job's checkpoint, in its directory beside its log. */
#define TD_CHECKPOINT_FILE "checkpoint.tdck"
/* A succeeded job's last checkpoint, kept for `submit --continue`. */
#define TD_FINAL_STATE_FILE "final.tdck"
int td_run_start(td_daemon *d, td_job *j, char *err, size_t errlen);
/* Tell a running job's worker its new budget (it re-plans at its next step
 * and answers with a "replan" event, which lowers the reservation; a
 * budget raised above its plan lets a worker that runs below its admitted
 * micro-batch re-plan back up, and its reservation grows to the new plan:
 * raise only into room the device has).
 * TD_ESTATE if it has no running worker, TD_EIO if the line was not sent. */
int td_run_set_budget(td_daemon *d, td_job *j, uint64_t budget);
/* SIGTERM now, SIGKILL after the grace period. */
void td_run_stop(td_daemon *d, td_job *j);
/* Ask the worker (SIGUSR1) to write a checkpoint and exit 5: the job goes
 * back to the queue and resumes from it.  SIGKILL after TD_STOP_GRACE_MS.
 * Falls back to td_run_stop if the worker cannot be told. */
void td_run_checkpoint_stop(td_daemon *d, td_job *j);
void td_run_check_heartbeats(td_daemon *d);

#endif
