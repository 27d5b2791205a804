/* Starting a job's processes: traind-loader and traind-worker, their
 * command lines and environment, the identity they take, and the
 * shared-memory ring between them.  Supervision (supervise.c) owns the
 * handles these start and watches the processes; nothing here keeps
 * state.  Every function runs on the loop thread. */
#ifndef TD_SPAWN_H
#define TD_SPAWN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ring.h"
#include "traind.h"

/* What both of a run's processes are told. */
typedef struct td_spawn_ctx {
  uv_loop_t *loop;
  const td_daemon *d;
  const td_job *job;
  const char *job_path;    /* the job file they read */
  const char *ring_name;
  const char *as_user;     /* "NAME:UID:GID" (td_spawn_identity); "" when not root */
  int log_fd;              /* their stdout and stderr */
  const char *continue_from; /* the final state a `submit --continue` job starts from, when
                                it has no checkpoint of its own; NULL otherwise */
} td_spawn_ctx;

/* Where traind-worker and traind-loader are. */
const char *td_run_libexec(const td_daemon *d);
/* The identity the job's processes take, "NAME:UID:GID" (out[0] = '\0'
 * when traind is not root: they run as traind).  0, or a negative code
 * with err set. */
int td_spawn_identity(const td_job *j, char *out, size_t cap, char *err, size_t errlen);
/* Create the job's ring (its name into name), owned by the job's user
 * when as_root.  0, or a negative code with err set. */
int td_spawn_ring(const td_daemon *d, const td_job *j, int as_root, char *name, size_t cap,
                  td_ring **out, char *err, size_t errlen);
/* Start the loader at a data position (0, 0: the beginning) into p (its
 * data set by the caller).  On failure p must still be closed; err says
 * why. */
int td_spawn_loader(const td_spawn_ctx *c, uint64_t epoch, uint64_t batch, uv_process_t *p,
                    uv_exit_cb exit_cb, char *err, size_t errlen);
/* Start the worker into p at the job's plan (device, budget, micro-batch,
 * the remedies admission chose), in dir, with its checkpoint path (resume:
 * from it; else from c->continue_from, if set).  control (an initialised pipe) becomes its stdin, events (an
 * initialised pipe) its fd 3.  On failure p must still be closed. */
int td_spawn_worker(const td_spawn_ctx *c, const char *dir, const char *ckpt, int resume,
                    uv_pipe_t *control, uv_pipe_t *events, uv_process_t *p, uv_exit_cb exit_cb,
                    char *err, size_t errlen);
/* Rings whose traind is gone are left over from a crash: remove them. */
void td_run_cleanup_stale(void);

#endif
