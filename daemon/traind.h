/* traind's core: the job, device, user and daemon types that every module
 * shares, and the job table (main.c).  Each module's functions are in its
 * own header: db.h (the database), td_sched.h (admission), ledger.h (the
 * devices' books), supervise.h and spawn.h (a job's processes), probe.h,
 * fairshare.h, retain.h, auth.h, server.h (the sockets), serialize.h,
 * planreport.h and logs.h (replies).
 *
 * Ownership: the daemon (td_daemon) owns every td_job; a job owns its spec
 * while it can still run, and its td_run while its processes live.  Every
 * function here runs on the one libuv loop thread.
 */
#ifndef TD_DAEMON_H
#define TD_DAEMON_H

#include <stdint.h>
#include <time.h>
#include <uv.h>

#include "config.h"
#include "jobspec.h"
#include "losscurve.h"
#include "plan.h"

typedef enum {
  TD_JOB_QUEUED = 0,
  TD_JOB_RUNNING,
  TD_JOB_SUCCEEDED,
  TD_JOB_FAILED,
  TD_JOB_CANCELLED,
  TD_JOB__NSTATES
} td_job_state;

const char *td_job_state_name(td_job_state s);
int td_job_state_parse(const char *s, td_job_state *out);

/* A queued job's wait_reason, with its NUL. */
#define TD_REASON_MAX 192

typedef struct td_run td_run;
typedef struct td_db td_db;
typedef struct td_auth td_auth;

/* Who sent a request: from a MUNGE credential (auth.c), never from a field
 * the client fills in. */
typedef struct td_ident {
  uint32_t uid, gid;
  char name[33];
  int admin;               /* root, traind's own user, or a member of admin_group */
} td_ident;

typedef struct td_job {
  uint64_t id;
  char name[TD_NAME_MAX];
  char owner[33];          /* the submitter's user name, from uid at submit */
  uint32_t uid, gid;       /* the submitter, from a verified credential (auth.c);
                              its loader and worker run as this user */
  int sample_dtype;        /* td_dtype of the train split, probed by the client
                              with the submitter's rights; -1: not known */
  td_job_state state;
  int32_t priority;
  char device[32];         /* where it runs or ran; "" while queued */
  char pin[32];            /* the job file's device: "" = any */
  int64_t submitted_ms, started_ms, finished_ms;

  char *yaml;              /* job file text while it is being parsed; the database
                              keeps it (td_db_job_yaml) */
  unsigned char *desc;     /* its description (proto/jobdesc.h) while it is being
                              stored or restored; the database keeps it */
  size_t desc_len;
  char *base_dir;          /* the job file's directory, where relative paths resolve */
  td_jobspec *spec;        /* parsed; NULL once the job has ended */
  td_plan plan;            /* at the micro-batch it will run with */
  uint64_t held;           /* bytes reserved for it on device (ledger.c); 0: none */

  /* progress, from the worker's events */
  uint32_t epoch, epochs, step, steps;
  double loss, accuracy, samples_per_sec;
  double val_accuracy;     /* on the validation split; -1 if none */
  double val_loss;         /* likewise */
  double train_accuracy;   /* on the training batches of this epoch so far; -1: none */
  /* the metrics beyond accuracy, -1 where the job's loss measures none (as
   * the val_ ones, not kept across restarts) */
  uint32_t top_k;          /* train.top_k; 0: none */
  double top_k_accuracy, val_top_k_accuracy;
  double mae, val_mae, train_mae; /* loss mse and mae */
  double data_wait;        /* fraction of the worker's time spent waiting for data */
  double started_mono;

  char *model;             /* path of the trained model; NULL until written */
  char *error;             /* why it failed or was cancelled; NULL if it did not */
  int exit_status;
  uint32_t retries;        /* runs that ended in a crash or hang so far */
  uint64_t mem;            /* device bytes in use, from the worker */

  td_run *run;             /* non-NULL while its processes live */
  int cancel_requested;

  /* checkpoints, from the worker's events (not persisted: the file is) */
  uint64_t ckpt_step;      /* the last one written: step, data position, size; */
  uint64_t ckpt_epoch, ckpt_batch, ckpt_bytes; /* ckpt_bytes 0 = none this run */
  uint64_t resumed_step;   /* where this run resumed; 0: from scratch */

  /* Why it is still queued, for a person (squeue's REASON): filled by the
   * scheduler for each queued job it could not start; "" when it is not
   * waiting. */
  char wait_reason[TD_REASON_MAX];
  double acct_mono;        /* fair share: its usage is counted up to here
                              (td_now_mono) while it holds a reservation */
  char *warning;           /* what went wrong in a job that still succeeded (its
                              model kept elsewhere); NULL if nothing did */
  td_losscurve loss_curve; /* the loss at each progress report, bounded (`show`) */
} td_job;

typedef struct td_device {
  char name[32];
  uint64_t budget;         /* effective: the configured limit, capped by what the
                              probe found free */
  uint64_t reserved;       /* sum of admitted jobs' plans */
  uint32_t njobs;
  int draining;            /* admits no new job */
  /* the probe at start (probe.c) */
  uint64_t limit;          /* the configured limit */
  uint64_t total, free;    /* device memory, and what was free then */
  uint64_t overhead;       /* bytes each worker holds outside its plan's arenas */
  int probing;             /* not measured yet: admits nothing */
  char unusable[192];      /* why the probe failed; "" if it did not */
  /* An admin's changes (the `device` request), kept in the database
   * across restarts and reloads; limit = min(cfg_limit, override_budget). */
  uint64_t cfg_limit;      /* the config file's budget */
  uint64_t override_budget; /* 0: none */
  int override_drain;      /* drained by an admin (draining also when the
                              device left the config) */
} td_device;

/* One user: the per-user limits and the fair-share record (fairshare.c). */
typedef struct td_user {
  uint32_t uid;
  char name[33];           /* as the last job seen for it says; may be "" */
  uint32_t active;         /* queued + running jobs, for max_jobs_per_user */
  double usage;            /* device byte-seconds, decayed to td_daemon.usage_ms */
  uint32_t running;        /* jobs holding a reservation, as of the last
                              scheduling pass and the admissions since */
  int dirty;               /* changed since it was last written to the database */
} td_user;

typedef struct td_daemon {
  uv_loop_t *loop;
  td_config cfg;
  const char *config_path; /* NULL: the embedded default */
  char exe_dir[TD_PATH_MAX];
  td_db *db;
  td_auth *auth;
  double start_mono;

  td_job **jobs;           /* by submission order; ids ascending */
  size_t njobs, cap;
  size_t nactive;          /* queued + running */

  td_device devices[TD_MAX_DEVICES];
  int ndevices;

  int rep_sock, pub_sock;
  uv_poll_t rep_poll;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t heartbeat;
  int stopping;
  double head_wait_since;  /* when the queue's head job started waiting for memory */

  uint64_t head_id;        /* the queue's head at the last scheduling pass; 0: none */
  td_user *users;          /* fair share: every user seen, unordered */
  size_t nusers, users_cap;
  int64_t usage_ms;        /* the instant (unix ms) every user's usage is decayed to */
  double usage_saved_mono; /* when the usage was last written to the database */
  uv_timer_t retain_timer; /* retention: prunes ended jobs (retain.c) */
} td_daemon;

/* main.c */
td_job *td_daemon_find(td_daemon *d, uint64_t id);
/* The index of the first job whose id is above id (njobs if none). */
size_t td_daemon_first_after(const td_daemon *d, uint64_t id);
void td_job_free(td_job *j);
/* Set spec->sample_dtype from the train split's header (td_dataset_probe:
 * headers only), before any plan is made for it. */
int td_job_learn_dtype(td_jobspec *spec, char *err, size_t errlen);
/* A device's limit: the config's budget, or an admin's lower override. */
uint64_t td_device_limit(const td_device *dev);
/* Replace a job's optional string (model, error) with a copy of s. */
void td_job_set(char **field, const char *s);
#define TD_JOB_STR(s) ((s) != NULL ? (s) : "")

/* main.c: a job changed state: persist it and publish it. */
void td_job_transition(td_daemon *d, td_job *j, td_job_state s, const char *detail);

#endif
