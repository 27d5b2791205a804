/* Prometheus metrics: the counters and histograms traind keeps, and the
 * text exposition format they are served in (metrics_listen).
 *
 * Threads: the td_metrics_* hooks and td_metrics_render run on the loop
 * thread only, which owns every counter and reads the daemon's tables.
 * Once a second the loop renders the whole page into a new buffer and
 * swaps it in under a mutex (td_metrics_snapshot); the HTTP thread
 * (metrics_http.c) only ever copies that buffer out, so a slow or hostile
 * client costs the loop nothing.
 *
 * Every family is listed once in metrics.c's table, which the page's
 * HELP and TYPE lines and td_metrics_names come from. */
#ifndef TD_METRICS_H
#define TD_METRICS_H

#include <stddef.h>

#include "traind.h"

/* Serve d->cfg.metrics_listen (nothing when it is ""): render the first
 * page, start the HTTP thread and the loop's once-a-second render.  A
 * listener that cannot be opened (port taken, no network in a sandbox) is
 * logged and metrics stay off: monitoring never stops training. */
void td_metrics_start(td_daemon *d);
/* Stop the HTTP thread (after the loop has ended) and free the page. */
void td_metrics_stop(void);

/* Hooks, one line at the place each event happens. */
/* A request answered: its op (NULL: it did not decode), the reply's code
 * (0 or TD_E*), and the seconds from its arrival to the reply. */
void td_metrics_request(const char *op, int code, double seconds);
/* A database transaction committed (or failed to) in this many seconds. */
void td_metrics_db_commit(double seconds);
/* A job admitted to dev with the plan chooser's remedies (bits 1u << td_remedy). */
void td_metrics_admitted(const td_job *j, const td_device *dev, unsigned remedies);
/* A job is about to change state from j->state to to (td_job_transition). */
void td_metrics_job_state(const td_job *j, td_job_state to);
/* The job's worker ran out of memory / re-planned / reported progress. */
void td_metrics_oom(const td_job *j);
void td_metrics_replan(const td_job *j);
void td_metrics_progress(const td_job *j);

/* The page as it stands now, malloc'd and NUL-terminated, into *out
 * (*len bytes).  TD_ENOMEM. */
int td_metrics_render(const td_daemon *d, char **out, size_t *len);
/* A copy of the last page rendered (for the HTTP thread); NULL if none yet
 * or out of memory.  Thread-safe. */
char *td_metrics_snapshot(size_t *len);
/* The names of every family traind exports, NULL-terminated (histograms
 * by their base name). */
const char *const *td_metrics_names(void);

/* metrics_http.c: the HTTP server on its own thread, GET /metrics only.
 * TD_EPERM when the address family is not allowed (a sandbox without the
 * network), TD_EIO when the address cannot be bound, with err saying why. */
int td_metrics_http_start(const char *listen, char *err, size_t errlen);
void td_metrics_http_stop(void);

#endif
