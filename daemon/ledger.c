/* The device ledger (ledger.h): reservations, budgets and draining.  A
 * job's reservation is its `held` bytes, so a release or a re-plan moves
 * exactly what the job took, whatever its plan says by then, and a second
 * release gives back nothing. */
#include <string.h>

#include "fairshare.h"
#include "ledger.h"
#include "log.h"
#include "server.h"
#include "util.h"

void td_ledger_init(td_daemon *d) {
  d->ndevices = d->cfg.ndevices;
  for (int i = 0; i < d->ndevices; i++) {
    memset(&d->devices[i], 0, sizeof(d->devices[i]));
    td_strlcpy(d->devices[i].name, d->cfg.devices[i].name, sizeof(d->devices[i].name));
    d->devices[i].budget = d->cfg.devices[i].budget;
  }
}

td_device *td_ledger_device(td_daemon *d, const char *name) {
  for (int i = 0; i < d->ndevices; i++)
    if (strcmp(d->devices[i].name, name) == 0)
      return &d->devices[i];
  return NULL;
}

void td_ledger_reserve(td_daemon *d, td_device *dev, td_job *j, const td_plan *plan) {
  /* The chosen plan is what is reserved and what the worker is given. */
  j->plan = *plan;
  j->acct_mono = td_now_mono();
  td_strlcpy(j->device, dev->name, sizeof(j->device));
  j->held = plan->total;
  dev->reserved += j->held;
  dev->njobs++;
  td_publish_device(d, dev);
}

void td_ledger_release(td_daemon *d, td_job *j) {
  td_device *dev = td_ledger_device(d, j->device);

  if (dev == NULL || j->held == 0)
    return;
  td_fairshare_charge(d, j); /* the last slice it held */
  j->acct_mono = 0;
  dev->reserved -= j->held <= dev->reserved ? j->held : dev->reserved;
  j->held = 0;
  if (dev->njobs > 0)
    dev->njobs--;
  td_publish_device(d, dev);
}

void td_ledger_replan(td_daemon *d, td_job *j, const td_plan *plan) {
  td_device *dev = td_ledger_device(d, j->device);

  j->plan = *plan;
  if (dev == NULL || j->held == 0)
    return;
  if (plan->total <= j->held)
    dev->reserved -= j->held - plan->total <= dev->reserved ? j->held - plan->total
                                                              : dev->reserved;
  else
    dev->reserved += plan->total - j->held;
  j->held = plan->total;
  td_publish_device(d, dev);
}

void td_device_set_limit(td_device *dev, uint64_t limit) {
  dev->limit = limit;
  if (dev->probing || dev->unusable[0] != '\0') {
    dev->budget = 0;
    return;
  }
  dev->budget = limit;
  if (dev->free < limit) {
    char lim[32], fr[32];

    dev->budget = dev->free;
    td_format_size(limit, lim, sizeof(lim));
    td_format_size(dev->free, fr, sizeof(fr));
    td_warn("device %s: the configured budget %s is more than the %s free when traind "
            "started: its budget is %s", dev->name, lim, fr, fr);
  }
}

void td_ledger_drain(td_device *dev, int drain) {
  dev->draining = drain != 0;
}
