/* Fair share (fairshare.c): per-user usage, as Slurm's: device bytes
 * reserved x seconds held, decayed with half-life fairshare_halflife_s. */
#ifndef TD_FAIRSHARE_H
#define TD_FAIRSHARE_H

#include <stdint.h>

#include "traind.h"

/* usage x 2^(-elapsed_ms / (halflife_s * 1000)); no decay for elapsed <= 0. */
double td_fairshare_decay(double usage, int64_t elapsed_ms, uint32_t halflife_s);
/* The user's record, made (usage 0) if it is new; NULL only when out of memory. */
td_user *td_user_get(td_daemon *d, uint32_t uid, const char *name);
/* Decay every user's usage to now_ms (all share one instant, so they compare). */
void td_fairshare_decay_all(td_daemon *d, int64_t now_ms);
/* Add what the job has held since it was last counted (its plan's bytes x
 * seconds) to its user's usage. */
void td_fairshare_charge(td_daemon *d, td_job *j);
/* On the heartbeat: charge every running job; write the usage to the
 * database now and then (at most once a minute). */
void td_fairshare_tick(td_daemon *d);
/* Read the recorded usage (at start) / write what changed (at stop). */
int td_fairshare_load(td_daemon *d);
int td_fairshare_save(td_daemon *d);

#endif
