/* Fair share, as Slurm's: a user's usage is the device bytes their jobs
 * reserved times the seconds they held them, decayed with a half-life, so
 * among jobs of equal priority the user who has used the devices least
 * lately goes first.  All users are decayed to one instant (usage_ms), so
 * any two compare directly.  The records live in the database's
 * user_usage table; a restart keeps them. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "error.h"
#include "fairshare.h"
#include "log.h"
#include "traind.h"
#include "util.h"

/* How often the usage reaches the database: a crash loses at most this
 * much accounting, and the disk sees one small transaction a minute. */
#define TD_USAGE_SAVE_S 60.0

double td_fairshare_decay(double usage, int64_t elapsed_ms, uint32_t halflife_s) {
  if (elapsed_ms <= 0 || halflife_s == 0)
    return usage;
  return usage * exp2(-(double)elapsed_ms / (1000.0 * halflife_s));
}

td_user *td_user_get(td_daemon *d, uint32_t uid, const char *name) {
  td_user *u;

  for (size_t i = 0; i < d->nusers; i++) {
    if (d->users[i].uid != uid)
      continue;
    u = &d->users[i];
    if (name != NULL && name[0] != '\0' && strcmp(u->name, name) != 0) {
      td_strlcpy(u->name, name, sizeof(u->name));
      u->dirty = 1;
    }
    return u;
  }
  if (d->nusers == d->users_cap) {
    size_t cap = d->users_cap ? d->users_cap * 2 : 16;
    td_user *users = realloc(d->users, cap * sizeof(*users));

    if (users == NULL)
      return NULL;
    d->users = users;
    d->users_cap = cap;
  }
  u = &d->users[d->nusers++];
  memset(u, 0, sizeof(*u));
  u->uid = uid;
  td_strlcpy(u->name, name != NULL ? name : "", sizeof(u->name));
  return u;
}

void td_fairshare_decay_all(td_daemon *d, int64_t now_ms) {
  int64_t elapsed = now_ms - d->usage_ms;

  /* A clock stepped back decays nothing and moves the instant back. */
  if (elapsed > 0)
    for (size_t i = 0; i < d->nusers; i++)
      if (d->users[i].usage != 0) {
        d->users[i].usage = td_fairshare_decay(d->users[i].usage, elapsed,
                                               d->cfg.fairshare_halflife_s);
        d->users[i].dirty = 1;
      }
  d->usage_ms = now_ms;
}

void td_fairshare_charge(td_daemon *d, td_job *j) {
  double now = td_now_mono(), held = now - j->acct_mono;
  td_user *u;

  if (j->acct_mono == 0 || held <= 0 || j->plan.total == 0) {
    j->acct_mono = now;
    return;
  }
  j->acct_mono = now;
  if ((u = td_user_get(d, j->uid, j->owner)) == NULL)
    return; /* out of memory: this slice goes uncounted */
  td_fairshare_decay_all(d, td_now_unix_ms());
  u->usage += (double)j->plan.total * held;
  u->dirty = 1;
}

void td_fairshare_tick(td_daemon *d) {
  double now = td_now_mono();

  for (size_t i = 0; i < d->njobs; i++)
    if (d->jobs[i]->run != NULL)
      td_fairshare_charge(d, d->jobs[i]);
  if (now - d->usage_saved_mono >= TD_USAGE_SAVE_S)
    td_fairshare_save(d);
}

static int td__usage_row(void *arg, uint32_t uid, const char *name, double usage,
                         int64_t at_ms) {
  td_daemon *d = arg;
  td_user *u = td_user_get(d, uid, name);

  if (u == NULL)
    return TD_ENOMEM;
  /* Every row is decayed from its own instant to the shared one. */
  u->usage = td_fairshare_decay(usage, d->usage_ms - at_ms, d->cfg.fairshare_halflife_s);
  u->dirty = 0;
  return 0;
}

int td_fairshare_load(td_daemon *d) {
  d->usage_ms = td_now_unix_ms();
  d->usage_saved_mono = td_now_mono();
  return td_db_usage_load(d->db, td__usage_row, d);
}

int td_fairshare_save(td_daemon *d) {
  int rc;

  d->usage_saved_mono = td_now_mono();
  for (size_t i = 0; i < d->nusers; i++)
    if (d->users[i].dirty)
      goto write;
  return 0;

write:
  rc = td_db_usage_save(d->db, d->users, d->nusers, d->usage_ms);
  if (rc < 0)
    td_warn("cannot record the users' fair-share usage: %s; it is kept in memory and "
            "written again in a minute", td_strerror(rc));
  return rc;
}
