/* traind's internal interfaces: the job table, the journal (SQLite), the
 * scheduler, supervision of worker and loader processes, and the sockets.
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

  /* progress, from the worker's events */
  uint32_t epoch, epochs, step, steps;
  double loss, accuracy, samples_per_sec;
  double val_accuracy;     /* on the validation split; -1 if none */
  double val_loss;         /* likewise */
  double train_accuracy;   /* on the training batches of this epoch so far; -1: none */
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
  char wait_reason[192];
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

/* db.c: the durable job table (WAL, synchronous=FULL). */
int td_db_open(const char *path, td_db **out, char *err, size_t errlen);
void td_db_close(td_db *db);
/* Insert a new job and its idempotency key in one durable transaction;
 * assigns j->id.  TD_ENOSPC when the disk is full. */
int td_db_insert(td_db *db, td_job *j, const char *key);
/* The job id recorded for an idempotency key: 0 or TD_ENOENT. */
int td_db_find_key(td_db *db, const char *key, uint64_t *id);
/* The job file text recorded at submit, malloc'd into *out (the daemon
 * does not keep it in memory: 10,000 queued jobs would hold 10,000 copies).
 * TD_ENOENT for an unknown id. */
int td_db_job_yaml(td_db *db, uint64_t id, char **out);
/* Record, in one transaction, the descriptions made for jobs from before
 * descriptions (those of jobs[] whose desc is set: made from their YAML as
 * they were loaded), then free them. */
int td_db_job_desc_record(td_db *db, td_job **jobs, size_t n);
/* Persist the job's state, device, times and results, with a history row. */
int td_db_update(td_db *db, const td_job *j, const char *detail);
/* Call fn for every job in id order; fn takes ownership of the job.  A
 * queued or running job comes with its description (desc), or with its
 * YAML (yaml) if it has none yet. */
int td_db_load(td_db *db, int (*fn)(void *arg, td_job *j), void *arg);

/* db.c: fair share and retention. */
/* Call fn for every user's recorded usage (decayed to at_ms). */
int td_db_usage_load(td_db *db,
                     int (*fn)(void *arg, uint32_t uid, const char *name, double usage,
                               int64_t at_ms),
                     void *arg);
/* Write the users marked dirty, as of at_ms, in one transaction; they are
 * marked clean only if it commits. */
int td_db_usage_save(td_db *db, td_user *users, size_t n, int64_t at_ms);
/* Remove the jobs, their history and their idempotency keys in one
 * transaction. */
int td_db_delete_jobs(td_db *db, const uint64_t *ids, size_t n);

/* db.c: admins' device overrides, durable before the `device` reply says
 * ok.  budget 0 and drain 0 remove the device's row. */
int td_db_override_save(td_db *db, const char *name, uint64_t budget, int drain);
/* Call fn for every recorded override. */
int td_db_override_load(td_db *db,
                        int (*fn)(void *arg, const char *name, uint64_t budget, int drain),
                        void *arg);

/* sched.c */
void td_sched_init(td_daemon *d);
/* Queue order: 1 if a comes before b.  Higher priority first, then among
 * equal priorities the job whose user has the smaller decayed usage
 * (usage_a, usage_b: fair share), then submission order. */
int td_sched_before(const td_job *a, double usage_a, const td_job *b, double usage_b);
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
void td_sched_release(td_daemon *d, td_job *j);
td_device *td_sched_device(td_daemon *d, const char *name);
/* The device's budget went below what its jobs hold: tell running jobs
 * lower budgets (largest first) so that they re-plan to fit. */
void td_sched_squeeze(td_daemon *d, td_device *dev);

/* fairshare.c: per-user usage, as Slurm's fair share: device bytes
 * reserved x seconds held, decayed with half-life fairshare_halflife_s. */
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

/* retain.c: ended jobs past retention_days or beyond the newest
 * retention_jobs are removed (rows, directory, table entry). */
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

/* supervise.c */
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
int td_run_start(td_daemon *d, td_job *j, char *err, size_t errlen);
/* Where traind-worker and traind-loader are. */
const char *td_run_libexec(const td_daemon *d);
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
void td_run_cleanup_stale(void);
void td_run_check_heartbeats(td_daemon *d);

/* probe.c */
/* Measure every configured device once, before traind serves: CPU devices
 * in-process, CUDA devices each in a `traind-worker --probe` child (traind
 * holds no CUDA context).  Runs the loop until the probes end (each has a
 * time limit).  A device whose probe fails is unusable, with the reason. */
void td_probe_devices(td_daemon *d);
/* Probe one device (added by SIGHUP) in the background: it admits nothing
 * until the answer comes. */
void td_probe_start(td_daemon *d, td_device *dev);
/* Apply a (new) configured limit: budget = min(limit, free at the probe). */
void td_device_set_limit(td_device *dev, uint64_t limit);

/* auth.c.  td_auth_lookup runs on the loop: 0 with *out (a credential
 * decoded before and not expired, or anyone at all for a traind of one
 * person), TD_ENOENT when cred must be decoded first (td_auth_decode, which
 * blocks on munged: call it on a worker thread, one at a time, then
 * td_auth_remember on the loop), TD_EAUTH with the reason in err. */
int td_auth_open(const td_config *cfg, td_auth **out, char *err, size_t errlen);
void td_auth_close(td_auth *a);
int td_auth_multi_user(const td_auth *a);
int td_auth_lookup(td_auth *a, const char *cred, size_t len, td_ident *out, char *err,
                   size_t errlen);
int td_auth_decode(td_auth *a, const char *cred, td_ident *out, time_t *expires, char *err,
                   size_t errlen);
void td_auth_remember(td_auth *a, const char *cred, size_t len, const td_ident *id,
                      time_t expires);
/* Whether who may see the details of, cancel and re-prioritise j. */
static inline int td_ident_owns(const td_ident *who, const td_job *j) {
  return who->admin || who->uid == j->uid;
}

/* server.c */
int td_server_start(td_daemon *d, char *err, size_t errlen);
void td_server_stop(td_daemon *d);
void td_publish_state(td_daemon *d, const td_job *j);
void td_publish_progress(td_daemon *d, const td_job *j, double eta_s);
void td_publish_device(td_daemon *d, const td_device *dev);
void td_publish_oom(td_daemon *d, const td_job *j, const char *phase, uint64_t requested,
                    uint64_t free_bytes, uint32_t micro_batch);
void td_publish_replan(td_daemon *d, const td_job *j);
void td_publish_eval(td_daemon *d, const td_job *j, uint32_t epoch, double acc, double loss);

/* main.c: a job changed state: persist it and publish it. */
void td_job_transition(td_daemon *d, td_job *j, td_job_state s, const char *detail);

#endif
