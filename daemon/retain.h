/* Retention (retain.c): ended jobs past retention_days or beyond the
 * newest retention_jobs are removed (rows, directory, table entry). */
#ifndef TD_RETAIN_H
#define TD_RETAIN_H

#include <stddef.h>
#include <stdint.h>

#include "traind.h"

typedef struct td_retain_entry {
  uint64_t id;
  int64_t finished_ms;
} td_retain_entry;
/* Pure: which of the ended jobs e[0..n) to remove at now_ms: those that
 * finished more than days ago (0: no age limit) and all but the newest
 * keep (0: no count limit), newest by finished_ms then id.  Sorts e; writes
 * the ids of at most cap of them, the oldest first chosen, in ascending
 * id order into out; returns how many it wrote and *total how many are
 * due in all. */
size_t td_retain_select(td_retain_entry *e, size_t n, int64_t now_ms, uint32_t days,
                        uint32_t keep, uint64_t *out, size_t cap, size_t *total);
/* Remove what is due now, at most a bounded batch (the rest on the next
 * tick, soon); returns how many were removed, or a negative code. */
int td_retain_run(td_daemon *d);
/* Run now, then every 10 minutes (the timer is d->retain_timer). */
void td_retain_start(td_daemon *d);
/* Remove STATE/jobs/ID without following any link the directory's owner
 * put there; 0, or a negative code (logged by the caller). */
int td_retain_remove_dir(int parent_fd, const char *name);

#endif
