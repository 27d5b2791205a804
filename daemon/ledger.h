/* The device ledger: the one place where a device's reserved bytes, its
 * count of jobs, its budget and its draining flag change, and where a job
 * takes and gives back its reservation.  The scheduler (sched.c) and
 * supervision (supervise.c) call it; everything else only reads those
 * fields.
 *
 * The invariant it keeps: a device's reserved bytes are the sum of `held`
 * over the jobs whose device it is, and njobs counts those with held > 0.
 * Every function here runs on the loop thread. */
#ifndef TD_LEDGER_H
#define TD_LEDGER_H

#include <stdint.h>

#include "traind.h"

/* The devices of the configuration, nothing reserved. */
void td_ledger_init(td_daemon *d);
/* The device named name; NULL if there is none. */
td_device *td_ledger_device(td_daemon *d, const char *name);
/* j starts on dev at plan: plan->total bytes are reserved for it, and its
 * user's fair share counts them from now. */
void td_ledger_reserve(td_daemon *d, td_device *dev, td_job *j, const td_plan *plan);
/* j's processes ended: its reservation goes back to the device (charged to
 * its user's fair share).  Nothing happens for a job that holds none. */
void td_ledger_release(td_daemon *d, td_job *j);
/* j's worker runs at a new plan (a re-plan report): j->plan becomes plan,
 * and its reservation becomes plan->total, smaller or larger. */
void td_ledger_replan(td_daemon *d, td_job *j, const td_plan *plan);
/* A (new) configured limit: budget = min(limit, free at the probe); 0
 * while the device is being probed or unusable. */
void td_device_set_limit(td_device *dev, uint64_t limit);
/* A draining device admits no new job; those on it run to their end. */
void td_ledger_drain(td_device *dev, int drain);

#endif
