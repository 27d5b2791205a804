/* Supervision: each running job is one traind-loader and one traind-worker,
 * joined by a shared-memory ring that traind creates and removes.  Both read
 * the job's description (job.tdj, proto/jobdesc.h), which traind writes into
 * the job's directory.  The worker reports on a pipe (fd 3), one framed
 * message per event (proto/imsg.h: a message the catalogue refuses fails the
 * job), and takes commands on its stdin.  Whatever happens to either
 * process, the job ends with a state and a reason, the ring is unlinked and
 * the job's reservation is released; traind itself goes on.
 * This file owns the run's handles and watches the processes; spawn.c
 * builds their command lines, starts them and creates the ring, and the
 * ledger (ledger.c) holds and releases the reservation.
 *
 * A job whose directory holds a checkpoint resumes from it: the worker
 * starts first with --resume and says where its data continues ("resumed"
 * or, if the file is unusable, "resume_failed": from the start), and only
 * then is the loader started there, so the two never disagree.  A job made
 * by `submit --continue` without a checkpoint of its own starts the same
 * way from the final state of the job it continues (TD_FINAL_STATE_FILE in
 * that job's directory), which a job that succeeds keeps.
 *
 * traind as root runs both processes as the job's submitter (--as-user,
 * privdrop.h) and gives them what they need: the job directory (mode 0700)
 * and the ring.  That directory is then the user's, who may put links,
 * FIFOs or hard links to other files there: whatever traind itself does in
 * it goes through the directory's descriptor, never follows a link, never
 * blocks on a FIFO, and uses only regular files with one link. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "db.h"
#include "error.h"
#include "imsg.h"
#include "jobdesc.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "ring.h"
#include "server.h"
#include "shmcache.h"
#include "spawn.h"
#include "supervise.h"
#include "td_sched.h"
#include "traind.h"
#include "util.h"

struct td_run {
  td_daemon *d;
  td_job *job;
  uv_process_t worker, loader;
  uv_pipe_t events;
  uv_pipe_t control;          /* the worker's stdin: commands (proto/imsg.h) */
  int control_open;
  int loader_pending;         /* started when the worker says where (resuming) */
  int stop_sent;              /* the worker was told to checkpoint and stop */
  char job_path[TD_PATH_MAX + 32]; /* the job file the processes read */
  uint64_t budget_sent;       /* the last budget told to the worker; 0 = none */
  uv_timer_t kill_timer;
  int nhandles;               /* open handles; the run is freed at zero */
  int worker_running, loader_running;
  int64_t worker_status;
  int worker_signal, loader_signal;
  int64_t loader_status;
  char ring_name[64];
  td_ring *ring;
  int dir_fd;                 /* the job directory, open */
  char as_user[64];           /* --as-user NAME:UID:GID; "" when traind is not root */
  int log_fd;
  td_imsg_frames frames;      /* the worker's reports, cut into messages */
  int bad_report;             /* it sent one the catalogue refuses */
  int done_seen;
  int hung;                   /* killed for missing heartbeats */
  double last_event;          /* td_now_mono() of the worker's last report */
  char error_event[512];
  char continue_from[TD_PATH_MAX + 32]; /* spawn.h; "" when none */
};

static void td__run_finish(td_run *r);
static int td__spawn_loader(td_run *r, uint64_t epoch, uint64_t batch);

static void td__handle_closed(uv_handle_t *h) {
  td_run *r = h->data;

  if (--r->nhandles == 0)
    td__run_finish(r);
}

static void td__close(td_run *r, uv_handle_t *h) {
  (void)r;
  if (!uv_is_closing(h))
    uv_close(h, td__handle_closed);
}

/* The kill timer lives as long as a process does. */
static void td__maybe_close_timer(td_run *r) {
  if (!r->worker_running && !r->loader_running)
    td__close(r, (uv_handle_t *)&r->kill_timer);
}

/* The worker's reports (proto/imsg.h), one handler per kind.  The worker
 * runs as the job's user, so a report is outside input: td_imsg_parse has
 * checked every field's type and bounds against the catalogue before a
 * handler sees it, and each field a kind declares is there. */
typedef void (*td__report_fn)(td_run *r, const msgpack_object *m);

static uint64_t td__u64(const msgpack_object *m, const char *key) {
  uint64_t v = 0;

  td_obj_u64(m, key, &v);
  return v;
}

static double td__f64(const msgpack_object *m, const char *key) {
  double v = 0;

  td_obj_f64(m, key, &v);
  return v;
}

/* A metric the worker may leave out: -1, not measured. */
static double td__metric(const msgpack_object *m, const char *key) {
  double v = -1;

  td_obj_f64(m, key, &v);
  return v;
}

static int td__bool(const msgpack_object *m, const char *key) {
  int v = 0;

  td_obj_bool(m, key, &v);
  return v;
}

/* A string field, cut to fit out (the catalogue bounds it; out may be smaller). */
static void td__str(const msgpack_object *m, const char *key, char *out, size_t cap) {
  const char *s = "";
  size_t n = 0;

  td_obj_str(m, key, &s, &n);
  if (n >= cap)
    n = cap - 1;
  memcpy(out, s, n);
  out[n] = '\0';
}

/* The worker runs at a new plan: its reservation follows (a budget
 * lowered by traind is given back here, once the worker has let go). */
static void td__on_replan(td_run *r, const msgpack_object *m) {
  td_job *j = r->job;
  uint64_t total = td__u64(m, "total"), eb = td__u64(m, "effective_batch");
  uint32_t micro = (uint32_t)td__u64(m, "micro_batch");
  td_precision prec = j->plan.precision;
  uint32_t shrink = 1;
  char name[16];
  td_plan p;

  td__str(m, "precision", name, sizeof(name));
  /* The log line operators (and tests) know from before the catalogue. */
  td_info("job %llu: re-planned: replan micro_batch=%u accumulation=%llu total=%llu "
          "precision=%s recompute=%d batch_dependent=%d effective_batch=%llu",
          (unsigned long long)j->id, micro, (unsigned long long)td__u64(m, "accumulation"),
          (unsigned long long)total, name, td__bool(m, "recompute"),
          td__bool(m, "batch_dependent"), (unsigned long long)eb);
  if (j->spec == NULL || micro > j->spec->batch_size)
    goto publish;
  /* A remedy may have changed the precision, turned on recomputation or
   * cut the batch into updates (shrink): plan what the worker now runs,
   * not what the job file said, as the plan chooser plans it. */
  for (int k = 0; k < TD_PREC__COUNT; k++)
    if (strcmp(name, td_precision_name((td_precision)k)) == 0)
      prec = (td_precision)k;
  if (eb <= j->spec->batch_size && j->spec->batch_size % eb == 0)
    shrink = (uint32_t)(j->spec->batch_size / eb);
  if (td_plan_at(j->spec, micro, prec, td__bool(m, "recompute"), shrink, j->plan.overhead,
                 &p) < 0)
    goto publish;
  if (p.total != total)
    td_warn("job %llu: the worker's plan (%llu bytes) differs from traind's (%llu)",
            (unsigned long long)j->id, (unsigned long long)total,
            (unsigned long long)p.total);
  {
    /* A plan may grow only into a budget traind raised (and so had the
     * room for): the reservation grows with it.  Else the larger
     * reservation stays: bytes are never counted on twice. */
    int grew = total > j->plan.total && r->budget_sent >= total;

    if (total <= j->plan.total || grew) {
      /* once a re-plan has changed the maths, the run stays changed */
      p.bit_identical = td_plan_bit_identical(j->spec, &p) && j->plan.bit_identical;
      p.total = total;
      td_ledger_replan(r->d, j, &p);
    }
  }
publish:
  td_metrics_replan(j);
  td_publish_replan(r->d, j);
  /* Room given back: a queued job may fit now. */
  td_sched_run(r->d);
}

static void td__on_progress(td_run *r, const msgpack_object *m) {
  td_job *j = r->job;
  double elapsed, eta = -1;
  uint64_t done, total;

  /* The catalogue bounds the counters to 32 bits. */
  j->epoch = (uint32_t)td__u64(m, "epoch");
  j->epochs = (uint32_t)td__u64(m, "epochs");
  j->step = (uint32_t)td__u64(m, "step");
  j->steps = (uint32_t)td__u64(m, "steps");
  j->loss = td__f64(m, "loss");
  j->train_accuracy = td__f64(m, "train_accuracy");
  j->train_mae = td__metric(m, "train_mae");
  j->samples_per_sec = td__f64(m, "samples_per_sec");
  j->data_wait = td__f64(m, "data_wait");
  j->mem = td__u64(m, "mem");
  td_losscurve_add(&j->loss_curve, (uint64_t)(j->epoch > 0 ? j->epoch - 1 : 0) * j->steps +
                   j->step, j->loss);
  done = (uint64_t)(j->epoch > 0 ? j->epoch - 1 : 0) * j->steps + j->step;
  total = (uint64_t)j->epochs * j->steps;
  elapsed = td_now_mono() - j->started_mono;
  if (done > 0 && total >= done)
    eta = elapsed * (double)(total - done) / (double)done;
  td_metrics_progress(j);
  td_publish_progress(r->d, j, eta);
}

static void td__on_eval(td_run *r, const msgpack_object *m) {
  r->job->accuracy = td__f64(m, "accuracy");
  r->job->top_k_accuracy = td__metric(m, "top_k");
  r->job->mae = td__metric(m, "mae");
  td_publish_eval(r->d, r->job, (uint32_t)td__u64(m, "epoch"), r->job->accuracy,
                  td__f64(m, "loss"));
}

static void td__on_val(td_run *r, const msgpack_object *m) {
  r->job->val_accuracy = td__f64(m, "accuracy");
  r->job->val_loss = td__f64(m, "loss");
  r->job->val_top_k_accuracy = td__metric(m, "top_k");
  r->job->val_mae = td__metric(m, "mae");
}

static void td__on_done(td_run *r, const msgpack_object *m) {
  char model[TD_PATH_MAX];

  r->done_seen = 1;
  r->job->accuracy = td__f64(m, "accuracy");
  r->job->top_k_accuracy = td__metric(m, "top_k");
  r->job->mae = td__metric(m, "mae");
  r->job->samples_per_sec = td__f64(m, "samples_per_sec");
  td__str(m, "model", model, sizeof(model));
  td_job_set(&r->job->model, model);
}

/* The job still succeeds, but its owner must hear of it. */
static void td__on_warning(td_run *r, const msgpack_object *m) {
  char msg[512];

  td__str(m, "msg", msg, sizeof(msg));
  td_job_set(&r->job->warning, msg);
  td_warn("job %llu: %s", (unsigned long long)r->job->id, msg);
}

static void td__on_error(td_run *r, const msgpack_object *m) {
  td__str(m, "msg", r->error_event, sizeof(r->error_event));
}

static void td__on_plan(td_run *r, const msgpack_object *m) {
  td_debug("job %llu: worker plan: micro_batch=%llu total=%llu", (unsigned long long)r->job->id,
           (unsigned long long)td__u64(m, "micro_batch"), (unsigned long long)td__u64(m, "total"));
}

static void td__on_oom(td_run *r, const msgpack_object *m) {
  char phase[16];

  td__str(m, "phase", phase, sizeof(phase));
  td_warn("job %llu: out of memory: oom requested=%llu free=%llu phase=%s micro_batch=%llu",
          (unsigned long long)r->job->id, (unsigned long long)td__u64(m, "requested"),
          (unsigned long long)td__u64(m, "free"), phase,
          (unsigned long long)td__u64(m, "micro_batch"));
  td_metrics_oom(r->job);
  td_publish_oom(r->d, r->job, phase, td__u64(m, "requested"), td__u64(m, "free"),
                 (uint32_t)td__u64(m, "micro_batch"));
}

static void td__on_checkpoint(td_run *r, const msgpack_object *m) {
  td_job *j = r->job;

  j->ckpt_step = td__u64(m, "step");
  j->ckpt_epoch = td__u64(m, "epoch");
  j->ckpt_batch = td__u64(m, "batch");
  j->ckpt_bytes = td__u64(m, "bytes");
  td_info("job %llu: checkpoint at step %llu (epoch %llu, %llu batches into it, %llu bytes)",
          (unsigned long long)j->id, (unsigned long long)j->ckpt_step,
          (unsigned long long)j->ckpt_epoch + 1, (unsigned long long)j->ckpt_batch,
          (unsigned long long)j->ckpt_bytes);
}

/* The worker knows where its data continues: the loader starts there,
 * once per run, and not once the job is being stopped. */
static void td__resume_loader(td_run *r, uint64_t epoch, uint64_t batch) {
  if (r->loader_pending && r->worker_running && !r->stop_sent &&
      td__spawn_loader(r, epoch, batch) < 0) {
    td_ring_shutdown(r->ring, TD_EIO);
    uv_process_kill(&r->worker, SIGTERM);
  }
  r->loader_pending = 0;
}

static void td__on_resumed(td_run *r, const msgpack_object *m) {
  td_job *j = r->job;

  j->resumed_step = j->ckpt_step = td__u64(m, "step");
  j->ckpt_epoch = td__u64(m, "epoch");
  j->ckpt_batch = td__u64(m, "batch");
  j->ckpt_bytes = td__u64(m, "bytes");
  td_info("job %llu: resumes from its checkpoint at step %llu (epoch %llu, %llu batches "
          "into it)", (unsigned long long)j->id, (unsigned long long)j->resumed_step,
          (unsigned long long)j->ckpt_epoch + 1, (unsigned long long)j->ckpt_batch);
  td__resume_loader(r, j->ckpt_epoch, j->ckpt_batch);
}

static void td__on_resume_failed(td_run *r, const msgpack_object *m) {
  char msg[512];

  td__str(m, "msg", msg, sizeof(msg));
  td_warn("job %llu: cannot resume from its checkpoint (%s): training from scratch",
          (unsigned long long)r->job->id, msg);
  td__resume_loader(r, 0, 0);
}

/* Every kind of td_imsg_defs(TD_IMSG_REPORT); NULL: nothing to do but
 * note the sign of life, which every report is. */
static const struct {
  const char *op;
  td__report_fn fn;
} td__reports[] = {
    {"heartbeat", NULL},
    {"error", td__on_error},
    {"plan", td__on_plan},
    {"progress", td__on_progress},
    {"eval", td__on_eval},
    {"val", td__on_val},
    {"replan", td__on_replan},
    {"oom", td__on_oom},
    {"checkpoint", td__on_checkpoint},
    {"resumed", td__on_resumed},
    {"resume_failed", td__on_resume_failed},
    {"warning", td__on_warning},
    {"done", td__on_done},
};

/* A worker that sends what the catalogue does not describe is broken or
 * hostile: its job fails with the reason, and nothing more it says is
 * read. */
static void td__bad_report(td_run *r, const char *why) {
  td_error("job %llu: its worker sent a malformed message (%s): stopping it",
           (unsigned long long)r->job->id, why);
  snprintf(r->error_event, sizeof(r->error_event), "the worker sent traind a malformed "
           "message (%s)", why);
  r->bad_report = 1;
  td__close(r, (uv_handle_t *)&r->events);
  if (r->worker_running)
    uv_process_kill(&r->worker, SIGKILL);
  if (r->loader_running)
    uv_process_kill(&r->loader, SIGKILL);
}

static void td__on_report(td_run *r, const void *body, size_t len) {
  const td_msgdef *def;
  td_msg *m;
  char why[256];
  int rc;

  if ((rc = td_imsg_parse(TD_IMSG_REPORT, body, len, &m, &def, why, sizeof(why))) < 0) {
    if (rc == TD_ENOMEM)
      td_error("job %llu: out of memory reading a report of its worker",
               (unsigned long long)r->job->id);
    else
      td__bad_report(r, why);
    return;
  }
  r->last_event = td_now_mono();
  for (size_t i = 0; i < TD_ARRAY_SIZE(td__reports); i++) {
    if (strcmp(td__reports[i].op, def->op) == 0) {
      if (td__reports[i].fn != NULL)
        td__reports[i].fn(r, td_msg_root(m));
      break;
    }
  }
  td_msg_free(m);
}

static void td__alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char slab[8192];
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(slab, sizeof(slab));
}

static void td__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  td_run *r = s->data;
  size_t used = 0;

  if (nread < 0) {
    td__close(r, (uv_handle_t *)s);
    return;
  }
  /* Whole frames are handled as they complete; a frame is at most
   * TD_IMSG_HDR + TD_IMSG_MAX bytes, so once those are taken out there is
   * always room for more. */
  while (used < (size_t)nread && !r->bad_report) {
    const void *body;
    size_t len;
    char why[160];
    int rc;

    used += td_imsg_frames_put(&r->frames, buf->base + used, (size_t)nread - used);
    while (!r->bad_report &&
           (rc = td_imsg_frames_next(&r->frames, &body, &len, why, sizeof(why))) != 0) {
      if (rc < 0)
        td__bad_report(r, why);
      else
        td__on_report(r, body, len);
    }
  }
}

static void td__on_worker_exit(uv_process_t *p, int64_t status, int sig) {
  td_run *r = p->data;

  r->worker_running = 0;
  r->loader_pending = 0;
  r->worker_status = status;
  r->worker_signal = sig;
  if (r->control_open) {
    r->control_open = 0;
    td__close(r, (uv_handle_t *)&r->control);
  }
  /* The loader has nothing left to feed; a loader blocked on a full ring
   * wakes up on the shutdown. */
  td_ring_shutdown(r->ring, 0);
  if (r->loader_running)
    uv_process_kill(&r->loader, SIGTERM);
  td__close(r, (uv_handle_t *)p);
  td__maybe_close_timer(r);
}

static void td__on_loader_exit(uv_process_t *p, int64_t status, int sig) {
  td_run *r = p->data;

  r->loader_running = 0;
  r->loader_status = status;
  r->loader_signal = sig;
  /* The worker drains what is in the ring, then sees the end. */
  td_ring_shutdown(r->ring, status == 0 && sig == 0 ? 0 : TD_EDATA);
  /* A killed loader cannot drop its hold on a shared decoded dataset. */
  if (sig != 0)
    td_shmcache_sweep();
  td__close(r, (uv_handle_t *)p);
  td__maybe_close_timer(r);
}

static void td__on_kill_timer(uv_timer_t *t) {
  td_run *r = t->data;

  if (r->worker_running)
    uv_process_kill(&r->worker, SIGKILL);
  if (r->loader_running)
    uv_process_kill(&r->loader, SIGKILL);
}

static void td__describe_exit(const char *who, int64_t status, int sig, char *out, size_t cap) {
  if (sig != 0)
    snprintf(out, cap, "%s was killed by signal %d (%s)", who, sig, strsignal(sig));
  else
    snprintf(out, cap, "%s exited with status %lld", who, (long long)status);
}

/* The last line of the job's log, where a crashing worker usually says
 * why. */
static void td__log_tail(int fd, char *out, size_t cap) {
  char buf[512];
  off_t size = lseek(fd, 0, SEEK_END);
  off_t from = size > (off_t)sizeof(buf) - 1 ? size - (off_t)sizeof(buf) + 1 : 0;
  ssize_t n = size > 0 ? pread(fd, buf, sizeof(buf) - 1, from) : 0;
  char *line;

  out[0] = '\0';
  if (n <= 0)
    return;
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
    n--;
  buf[n] = '\0';
  line = strrchr(buf, '\n');
  line = line ? line + 1 : buf;
  for (char *c = line; *c; c++)
    if ((unsigned char)*c < 0x20)
      *c = ' ';
  snprintf(out, cap, "%s", line);
}

static int td__job_dir(const td_daemon *d, const td_job *j, char *out, size_t cap) {
  if (snprintf(out, cap, "%s/jobs/%llu", d->cfg.state_dir, (unsigned long long)j->id) >= (int)cap)
    return TD_ETOOBIG;
  return 0;
}

static int td__ckpt_path(const td_daemon *d, const td_job *j, char *out, size_t cap) {
  char dir[TD_PATH_MAX];

  if (td__job_dir(d, j, dir, sizeof(dir)) < 0 ||
      snprintf(out, cap, "%s/" TD_CHECKPOINT_FILE, dir) >= (int)cap)
    return TD_ETOOBIG;
  return 0;
}

/* A job that ended has nothing to resume: its checkpoint only takes room.
 * One that succeeded keeps it as its final state, for `submit --continue`
 * (the worker wrote it at the end); the rename moves whatever stands at
 * the name, which only the job's user reads. */
static void td__ckpt_remove(int dir_fd, int keep_final) {
  if (!keep_final || renameat(dir_fd, TD_CHECKPOINT_FILE, dir_fd, TD_FINAL_STATE_FILE) < 0)
    unlinkat(dir_fd, TD_CHECKPOINT_FILE, 0);
  unlinkat(dir_fd, TD_CHECKPOINT_FILE ".tmp", 0);
}

/* A POSIX ACL (the system.posix_acl_access xattr: a version, then
 * entries sorted by tag and id, little-endian) of owner rwx, the job's user
 * rwx, nobody else. */
static int td__acl_grant(int fd, uint32_t uid) {
  static const struct { uint16_t tag, perm; } entries[] = {
      {0x01, 7}, /* ACL_USER_OBJ: traind */
      {0x02, 7}, /* ACL_USER: the job's user */
      {0x04, 0}, /* ACL_GROUP_OBJ */
      {0x10, 7}, /* ACL_MASK */
      {0x20, 0}, /* ACL_OTHER */
  };
  unsigned char buf[4 + 8 * TD_ARRAY_SIZE(entries)];

  buf[0] = 2, buf[1] = buf[2] = buf[3] = 0;
  for (size_t i = 0; i < TD_ARRAY_SIZE(entries); i++) {
    unsigned char *e = buf + 4 + 8 * i;
    uint32_t id = entries[i].tag == 0x02 ? uid : 0xffffffffu;

    e[0] = (unsigned char)entries[i].tag, e[1] = (unsigned char)(entries[i].tag >> 8);
    e[2] = (unsigned char)entries[i].perm, e[3] = 0;
    for (int b = 0; b < 4; b++)
      e[4 + b] = (unsigned char)(id >> (8 * b));
  }
  return fsetxattr(fd, "system.posix_acl_access", buf, sizeof(buf), 0);
}

/* A job directory that both traind and the job's user write in, without
 * either overriding the other's permissions (the unit grants traind no
 * CAP_DAC_OVERRIDE).  It stays traind's, sticky, with an ACL entry that
 * lets the user in: the user's processes write checkpoints and the model
 * there, and cannot remove or replace traind's own files (the log).  On a
 * file system without ACLs it goes to the user (mode 0700), and traind then
 * needs to override permissions to keep using it.  0 or -errno. */
static int td__job_dir_share(int fd, const td_job *j) {
  struct stat st;

  if (fstat(fd, &st) < 0)
    return -errno;
  /* given to its user by an earlier traind: take it back first */
  if (st.st_uid != 0 && fchown(fd, 0, 0) < 0)
    return -errno;
  if (fchmod(fd, 01770) < 0)
    return -errno;
  if (td__acl_grant(fd, j->uid) == 0)
    return 0;
  if (errno != EOPNOTSUPP && errno != ENOTSUP)
    return -errno;
  td_warn("job %llu: the state directory's file system has no ACLs, so the job directory "
          "goes to uid %u and traind needs CAP_DAC_OVERRIDE to use it",
          (unsigned long long)j->id, j->uid);
  if (fchmod(fd, 0700) < 0 || fchown(fd, (uid_t)j->uid, (gid_t)j->gid) < 0)
    return -errno;
  return 0;
}

/* The job's directory, created if missing and opened (never through a
 * link); as root it is given to the job's user, mode 0700, since the
 * user's processes write checkpoints and the model there.  A descriptor, or
 * a negative code with err set. */
static int td__job_dir_open(const td_daemon *d, const td_job *j, const char *dir, int as_root,
                            char *err, size_t errlen) {
  char jobs[TD_PATH_MAX];
  struct stat st;
  int fd, rc;

  snprintf(jobs, sizeof(jobs), "%s/jobs", d->cfg.state_dir); /* shorter than dir */
  if (td_mkdir_p(jobs, as_root ? 0711 : 0750) < 0 ||
      (mkdir(dir, as_root ? 0700 : 0750) < 0 && errno != EEXIST)) {
    snprintf(err, errlen, "cannot create the job directory %s: %s", dir, strerror(errno));
    return TD_EIO;
  }
  if (as_root) {
    /* The users' processes pass through jobs/ to their own directories;
     * without read permission it lists nothing to them. */
    fd = open(jobs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & 0111) != 0111)
      fchmod(fd, (st.st_mode & 07777) | 0111);
    if (fd >= 0)
      close(fd);
  }
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open the job directory %s: %s", dir, strerror(errno));
    return TD_EIO;
  }
  if (as_root && (rc = td__job_dir_share(fd, j)) < 0) {
    snprintf(err, errlen, "cannot give the job directory %s to uid %u: %s", dir, j->uid,
             strerror(-rc));
    close(fd);
    return TD_EIO;
  }
  return fd;
}

/* Open name in the job's directory for writing (append: keep what is
 * there, and read it too: a failed job's reason quotes the log's last
 * line).  The directory may be the user's: no link is followed, a FIFO
 * cannot block the open, and only a regular file with a single link (not a
 * hard link to someone else's file) is used.  A file traind creates there
 * as root goes to the user.  A descriptor, or TD_EIO with err set. */
static int td__job_file_open(int dir_fd, const char *dir, const char *name, int append,
                             const td_job *j, int give, char *err, size_t errlen) {
  int flags = (append ? O_RDWR | O_APPEND : O_WRONLY) | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
              O_CLOEXEC;
  int fd = openat(dir_fd, name, flags | O_CREAT | O_EXCL, 0640), created = fd >= 0;
  struct stat st;

  if (fd < 0 && errno == EEXIST && append)
    fd = openat(dir_fd, name, flags);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open %s/%s: %s%s", dir, name, strerror(errno),
             errno == ELOOP ? " (a symbolic link: remove it)" : "");
    return TD_EIO;
  }
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
    snprintf(err, errlen, "%s/%s is not a regular file with a single link: traind will not "
             "write to it; remove it", dir, name);
    goto close_fd;
  }
  if (give && created && fchown(fd, (uid_t)j->uid, (gid_t)j->gid) < 0) {
    snprintf(err, errlen, "cannot give %s/%s to uid %u: %s", dir, name, j->uid, strerror(errno));
    goto close_fd;
  }
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
    snprintf(err, errlen, "%s/%s: fcntl: %s", dir, name, strerror(errno));
    goto close_fd;
  }
  return fd;

close_fd:
  close(fd);
  return TD_EIO;
}

/* Crashes and hangs may be the machine's fault, not the job's: those are
 * retried when the job allows it; an error the job reported is not. */
static int td__retryable(const td_run *r) {
  if (r->bad_report)
    return 0;
  return r->hung || r->worker_signal != 0 ||
         (r->worker_status >= 3 && r->worker_status != TD_WORKER_EXIT_NEEDMEM &&
          r->worker_status != TD_WORKER_EXIT_STOPPED);
}

static void td__run_finish(td_run *r) {
  td_daemon *d = r->d;
  td_job *j = r->job;
  td_job_state s;
  char why[512], tail[256] = "";

  td_ring_close(r->ring);
  td_ring_unlink(r->ring_name);
  if (r->log_fd >= 0) {
    td__log_tail(r->log_fd, tail, sizeof(tail));
    close(r->log_fd);
  }
  j->run = NULL;
  j->exit_status = r->worker_signal ? 128 + r->worker_signal : (int)r->worker_status;
  td_ledger_release(d, j);

  if (j->cancel_requested) {
    s = TD_JOB_CANCELLED;
    snprintf(why, sizeof(why), "cancelled");
  } else if (r->worker_status == 0 && r->worker_signal == 0 && r->done_seen &&
             !r->bad_report) {
    s = TD_JOB_SUCCEEDED;
    snprintf(why, sizeof(why), "finished%s%s", j->warning ? ", with a warning: " : "",
             TD_JOB_STR(j->warning));
  } else if (r->worker_signal == 0 && r->worker_status == TD_WORKER_EXIT_STOPPED) {
    s = TD_JOB_QUEUED;
    if (j->ckpt_bytes > 0)
      snprintf(why, sizeof(why), "stopped%s after a checkpoint at step %llu; resumes from it",
               d->stopping ? " for traind's shutdown" : "", (unsigned long long)j->ckpt_step);
    else
      snprintf(why, sizeof(why), "stopped%s before its first checkpoint; starts over",
               d->stopping ? " for traind's shutdown" : "");
  } else if (d->stopping) {
    /* traind is shutting down: the job runs again when it comes back. */
    s = TD_JOB_QUEUED;
    snprintf(why, sizeof(why), "interrupted by traind shutdown; resumes from its last "
             "checkpoint, if any");
  } else if (r->worker_signal == 0 && r->worker_status == TD_WORKER_EXIT_NEEDMEM) {
    /* Even its smallest micro-batch did not fit what it had: it waits for
     * memory, and resumes from the checkpoint the worker wrote. */
    s = TD_JOB_QUEUED;
    snprintf(why, sizeof(why), "out of memory below its smallest micro-batch (%s); "
             "queued to wait for memory, resumes from its last checkpoint",
             r->error_event[0] ? r->error_event : "no detail");
  } else {
    s = TD_JOB_FAILED;
    if (r->hung)
      snprintf(why, sizeof(why), "the worker stopped responding (no heartbeat for %.1f s) "
               "and was killed", d->cfg.heartbeat_timeout_ms / 1000.0);
    else if (r->error_event[0] != '\0')
      snprintf(why, sizeof(why), "%s", r->error_event);
    else if (r->loader_status != 0 || r->loader_signal != 0)
      td__describe_exit("the data loader", r->loader_status, r->loader_signal, why, sizeof(why));
    else
      td__describe_exit("the worker", r->worker_status, r->worker_signal, why, sizeof(why));
    if (r->error_event[0] == '\0' && tail[0] != '\0') {
      size_t n = strlen(why);
      snprintf(why + n, sizeof(why) - n, "; its last log line: %s", tail);
    }
    if (td__retryable(r) && j->spec != NULL && j->retries < j->spec->max_retries) {
      size_t n = strlen(why);
      j->retries++;
      snprintf(why + n, sizeof(why) - n, " (retry %u of %u)", j->retries, j->spec->max_retries);
      s = TD_JOB_QUEUED;
    }
  }
  if (s == TD_JOB_SUCCEEDED || s == TD_JOB_CANCELLED) {
    td__ckpt_remove(r->dir_fd, s == TD_JOB_SUCCEEDED);
    /* `show` must not name a checkpoint that is gone */
    j->ckpt_step = j->ckpt_epoch = j->ckpt_batch = j->ckpt_bytes = 0;
  }
  close(r->dir_fd);
  if (s == TD_JOB_QUEUED) {
    j->device[0] = '\0';
  } else {
    j->finished_ms = td_now_unix_ms();
    if (s != TD_JOB_SUCCEEDED)
      td_job_set(&j->error, why);
  }
  free(r);
  td_job_transition(d, j, s, why);
  td_sched_run(d);
}

/* Called every second: a running worker silent for longer than the
 * heartbeat timeout is taken as hung and killed. */
void td_run_check_heartbeats(td_daemon *d) {
  double now = td_now_mono(), limit = d->cfg.heartbeat_timeout_ms / 1000.0;

  for (size_t i = 0; i < d->njobs; i++) {
    td_run *r = d->jobs[i]->run;

    if (r == NULL || !r->worker_running || r->hung || now - r->last_event <= limit)
      continue;
    td_warn("job %llu: no heartbeat from its worker for %.1f s: killing it",
            (unsigned long long)d->jobs[i]->id, now - r->last_event);
    r->hung = 1;
    uv_process_kill(&r->worker, SIGKILL);
    if (r->loader_running)
      uv_process_kill(&r->loader, SIGKILL);
  }
}

static int td__write_all(int fd, const void *buf, size_t n) {
  const char *s = buf;

  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return TD_EIO;
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

/* What the run's processes are told (spawn.h). */
static void td__spawn_ctx(td_run *r, td_spawn_ctx *c) {
  *c = (td_spawn_ctx){.loop = r->d->loop, .d = r->d, .job = r->job, .job_path = r->job_path,
                      .ring_name = r->ring_name, .as_user = r->as_user, .log_fd = r->log_fd,
                      .continue_from = r->continue_from[0] ? r->continue_from : NULL};
}

/* Start the loader at a data position (0, 0: the beginning); on failure
 * the reason is the run's error and the handle is closed. */
static int td__spawn_loader(td_run *r, uint64_t epoch, uint64_t batch) {
  td_spawn_ctx c;

  td__spawn_ctx(r, &c);
  r->loader.data = r;
  r->nhandles++;
  if (td_spawn_loader(&c, epoch, batch, &r->loader, td__on_loader_exit, r->error_event,
                      sizeof(r->error_event)) < 0) {
    td__close(r, (uv_handle_t *)&r->loader);
    return TD_EIO;
  }
  r->loader_running = 1;
  return 0;
}

/* Start the worker, its stdin the control pipe; on failure as above. */
static int td__spawn_worker(td_run *r, const char *dir, const char *ckpt, int resume) {
  td_spawn_ctx c;

  td__spawn_ctx(r, &c);
  r->worker.data = r;
  r->nhandles++;
  if (td_spawn_worker(&c, dir, ckpt, resume, &r->control, &r->events, &r->worker,
                      td__on_worker_exit, r->error_event, sizeof(r->error_event)) < 0) {
    td__close(r, (uv_handle_t *)&r->worker);
    return TD_EIO;
  }
  return 0;
}

int td_run_start(td_daemon *d, td_job *j, char *err, size_t errlen) {
  char dir[TD_PATH_MAX], ckpt[TD_PATH_MAX + 32], as_user[sizeof(((td_run *)0)->as_user)];
  td_pack desc;
  td_run *r;
  int fd, dir_fd, rc, resume, as_root = geteuid() == 0;
  struct stat st;

  if ((rc = td_spawn_identity(j, as_user, sizeof(as_user), err, errlen)) < 0)
    return rc;
  if ((rc = td__job_dir(d, j, dir, sizeof(dir))) < 0) {
    snprintf(err, errlen, "the job directory's name under %s is too long", d->cfg.state_dir);
    return rc;
  }
  if ((dir_fd = td__job_dir_open(d, j, dir, as_root, err, errlen)) < 0)
    return dir_fd;
  /* The job's description, as traind holds it (restored from the
   * database): the processes decode it, nobody parses the job file again.
   * A fresh file each run: whatever stands at the name (the user's link,
   * FIFO or file) goes, and O_EXCL refuses anything put back meanwhile. */
  td_pack_init(&desc);
  if ((rc = td_jobdesc_encode(j->spec, &desc)) < 0) {
    snprintf(err, errlen, "cannot encode the job's description: %s", td_strerror(rc));
    td_pack_free(&desc);
    goto close_dir;
  }
  if (unlinkat(dir_fd, TD_JOBDESC_FILE, 0) < 0 && errno != ENOENT)
    td_debug("job %llu: removing the old %s/" TD_JOBDESC_FILE ": %s", (unsigned long long)j->id,
             dir, strerror(errno));
  fd = td__job_file_open(dir_fd, dir, TD_JOBDESC_FILE, 0, j, as_root, err, errlen);
  if (fd >= 0 && td__write_all(fd, td_pack_data(&desc), td_pack_len(&desc)) < 0) {
    snprintf(err, errlen, "cannot write %s/" TD_JOBDESC_FILE ": %s", dir, strerror(errno));
    close(fd);
    fd = TD_EIO;
  }
  td_pack_free(&desc);
  if (fd < 0) {
    rc = TD_EIO;
    goto close_dir;
  }
  close(fd);

  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    rc = TD_ENOMEM;
    goto close_dir;
  }
  r->d = d;
  r->job = j;
  r->dir_fd = dir_fd;
  td_strlcpy(r->as_user, as_user, sizeof(r->as_user));
  /* traind keeps the log open: it is the processes' stdout and stderr.  It
   * stays traind's (the user reads it with `logs`), so that in the sticky
   * directory the user can neither remove nor replace it. */
  r->log_fd = td__job_file_open(dir_fd, dir, "log", 1, j, 0, err, errlen);
  if (r->log_fd < 0) {
    rc = TD_EIO;
    goto free_run;
  }

  if ((rc = td_spawn_ring(d, j, as_root, r->ring_name, sizeof(r->ring_name), &r->ring, err,
                          errlen)) < 0)
    goto close_log;

  snprintf(r->job_path, sizeof(r->job_path), "%s/" TD_JOBDESC_FILE, dir);
  td__ckpt_path(d, j, ckpt, sizeof(ckpt));
  /* The worker, as the user, reads it; traind only looks whether it is there. */
  resume = fstatat(dir_fd, TD_CHECKPOINT_FILE, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
           S_ISREG(st.st_mode);
  /* Its own checkpoint first: it holds the state past the one it continues. */
  if (!resume && j->spec->continues != 0)
    snprintf(r->continue_from, sizeof(r->continue_from), "%s/jobs/%llu/" TD_FINAL_STATE_FILE,
             d->cfg.state_dir, (unsigned long long)j->spec->continues);

  /* From here on every failure ends the job through td__run_finish, once
   * all handles are closed, so there is one way a job ends. */
  j->run = r;
  uv_timer_init(d->loop, &r->kill_timer);
  r->kill_timer.data = r;
  uv_pipe_init(d->loop, &r->events, 0);
  r->events.data = r;
  r->nhandles = 2;

  /* Resuming, the loader waits for the worker to read the checkpoint. */
  if (resume || r->continue_from[0] != '\0')
    r->loader_pending = 1;
  else
    td__spawn_loader(r, 0, 0);
  if (r->loader_running || r->loader_pending) {
    uv_pipe_init(d->loop, &r->control, 0);
    r->control.data = r;
    r->nhandles++;
    r->control_open = 1;
    if (td__spawn_worker(r, dir, ckpt, resume) < 0) {
      r->control_open = 0;
      td__close(r, (uv_handle_t *)&r->control);
      td_ring_shutdown(r->ring, TD_EIO);
      r->loader_pending = 0;
      if (r->loader_running)
        uv_process_kill(&r->loader, SIGTERM);
    } else {
      r->worker_running = 1;
    }
  }
  r->last_event = td_now_mono();
  if (r->worker_running)
    uv_read_start((uv_stream_t *)&r->events, td__alloc_cb, td__on_read);
  else
    td__close(r, (uv_handle_t *)&r->events);

  /* When it first started: a run after a restart or a retry goes on with
   * the same job.  The ETA counts from this run's start. */
  if (j->started_ms == 0)
    j->started_ms = td_now_unix_ms();
  j->started_mono = td_now_mono();
  td_job_set(&j->warning, NULL);
  j->epoch = j->step = j->steps = 0;
  j->resumed_step = 0;
  j->epochs = j->spec->epochs;
  td_job_transition(d, j, TD_JOB_RUNNING, "admitted");
  td__maybe_close_timer(r);
  return 0;

close_log:
  close(r->log_fd);
free_run:
  free(r);
close_dir:
  close(dir_fd);
  return rc;
}

int td_run_set_budget(td_daemon *d, td_job *j, uint64_t budget) {
  td_run *r = j->run;
  const td_device *dev = td_ledger_device(d, j->device);
  const void *frame;
  size_t len;
  td_imsg b;
  uv_buf_t buf;
  int rc;

  if (r == NULL || !r->worker_running || !r->control_open)
    return TD_ESTATE;
  /* The device's budget too: a job that must leave the device is sent a
   * token budget, and its log should say what really changed. */
  td_imsg_begin(&b, TD_IMSG_CONTROL, "budget");
  td_imsg_u64(&b, "bytes", budget);
  td_imsg_u64(&b, "device", dev != NULL ? dev->budget : 0);
  if ((rc = td_imsg_end(&b, &frame, &len)) < 0) {
    td_error("job %llu: cannot pack a budget command: %s", (unsigned long long)j->id,
             b.p.why[0] ? b.p.why : td_strerror(rc));
    td_imsg_free(&b);
    return rc;
  }
  buf = uv_buf_init((char *)frame, (unsigned)len);
  /* A frame is at most PIPE_BUF bytes: it goes whole or not at all, and
   * the loop never waits on it. */
  rc = uv_try_write((uv_stream_t *)&r->control, &buf, 1) == (int)len ? 0 : TD_EIO;
  td_imsg_free(&b);
  if (rc < 0)
    return rc;
  r->budget_sent = budget;
  td_info("job %llu: budget %s to %llu bytes", (unsigned long long)j->id,
          budget < j->plan.total ? "lowered" : "raised", (unsigned long long)budget);
  return 0;
}

void td_run_stop(td_daemon *d, td_job *j) {
  td_run *r = j->run;

  if (r == NULL)
    return;
  if (r->worker_running)
    uv_process_kill(&r->worker, SIGTERM);
  if (r->loader_running)
    uv_process_kill(&r->loader, SIGTERM);
  td_ring_shutdown(r->ring, TD_ECLOSED);
  if (!uv_is_closing((uv_handle_t *)&r->kill_timer))
    uv_timer_start(&r->kill_timer, td__on_kill_timer, d->cfg.cancel_grace_ms, 0);
}

void td_run_checkpoint_stop(td_daemon *d, td_job *j) {
  td_run *r = j->run;

  if (r == NULL)
    return;
  if (!r->worker_running || uv_process_kill(&r->worker, SIGUSR1) < 0) {
    td_run_stop(d, j);
    return;
  }
  r->stop_sent = 1;
  r->loader_pending = 0;
  td_info("job %llu: asked its worker to checkpoint and stop", (unsigned long long)j->id);
  /* The worker stops at its next batch, or once the ring is empty (the
   * signal came first), so the loader has nothing left to do. */
  td_ring_shutdown(r->ring, TD_ECLOSED);
  if (r->loader_running)
    uv_process_kill(&r->loader, SIGTERM);
  if (!uv_is_closing((uv_handle_t *)&r->kill_timer))
    uv_timer_start(&r->kill_timer, td__on_kill_timer, TD_STOP_GRACE_MS, 0);
}
