/* traind-worker: trains one job on one device.
 *
 * It reads the job's description (--job, proto/jobdesc.h: traind parsed the
 * job file at submit; --base-dir is accepted and unused, its paths are
 * absolute), builds the model on the device's backend inside the memory
 * plan's arenas, then drains the loader's shared-memory ring: a TRAIN batch
 * is one optimiser step, TEST batches are evaluated, END writes the model.
 * It reports to traind with one framed message per event on the events fd
 * (proto/imsg.h, catalogued in proto/INTERNAL.md) and logs to stderr (the
 * job log).  A description of another format version is a usage error
 * (exit 2), said so in the log.
 *
 * Memory: the model re-plans itself when a step runs out of memory (events
 * "oom" and "replan").  traind may lower the budget through stdin, with a
 * "budget" command (this job's budget, then the device's, which the log
 * quotes: a job traind wants off the device gets a token budget), applied
 * at the next step boundary.
 *
 * The model goes to --output.  If that cannot be written (its directory
 * removed or closed to the user since the submit), it goes to
 * --fallback-output (the job's directory) instead, and the job still
 * succeeds: event "warning" says where, then "done" names the model's path.
 *
 * Checkpoints (--checkpoint PATH): the model's whole state (tensor "state",
 * td_model_state_floats fp32 values) and its data position, written
 * atomically when the job's policy says one is due, at the end of an epoch
 * (at most one a second), before exiting 4, and when traind sends SIGUSR1
 * (at the next batch, or once the ring is shut down and empty; then it
 * exits 5).  Each one is an event "checkpoint" (step, epoch, batch,
 * bytes): epoch is the one in progress (0-based), batch its train batches
 * already done.  --resume PATH starts from a checkpoint: event "resumed"
 * with the same fields (the loader must start there), or, if the file
 * cannot be used, a warning naming why, the event "resume_failed" and
 * training from scratch (the loader at 0, 0).  --continue PATH is --resume
 * for a job made by `submit --continue`: PATH is the final state of the job
 * it continues, and a file that cannot be used fails the job.  At the end
 * the worker writes a last checkpoint (the final state), if the last one
 * is not already that: traind keeps it when the job succeeds.
 *
 * init: (the job file's key) loads the model's initial parameters and
 * buffers from a safetensors model (common/modelfile.h) when the job starts
 * from the beginning (not when it resumes: the checkpoint holds the state
 * past it); a file that does not match fails the job with EDATA naming the
 * first tensor at fault.
 *
 * Callbacks (the job's callbacks section, common/callbacks.h) judge each
 * epoch's validation numbers: keep_best writes the model to
 * <output stem>.best.safetensors; reduce_lr_on_plateau scales the rate
 * (td_model_progress.lr_factor); early stopping ends the job after that
 * epoch's test pass exactly as END would (the model written, "done", exit
 * 0).  Their state is in every checkpoint, the last epoch judged with it,
 * so that a resumed job judges each epoch once.
 *
 * --tensorboard DIR: TensorBoard event files go to DIR (the job's
 * directory), a new file each run (tfevents.h); see tb_train for the tags.
 * The job file's tensorboard.every_steps sets how often (0: none).  A write
 * that fails is a warning in the job log, never the job's failure.
 *
 * --overhead BYTES is the device's per-process overhead from traind's probe
 * (counted in every plan, as admission counted it).  --probe DEVICE alone
 * measures a device for traind and exits: see probe_main.
 *
 * --as-user NAME:UID:GID makes the worker that user (privdrop.h) before it
 * opens anything: the job file, the dataset's headers, the ring, the
 * checkpoint and the model are all the user's business.  A failure there
 * is an "error" event and exit 2.
 *
 * Exit status: 0 done (with or without a warning), 1 job error, 2 usage (or --as-user failed), 3 sticky CUDA error, 4 needs
 * more memory than it has (even its smallest micro-batch does not fit: traind
 * queues it again), 5 stopped by SIGUSR1 after a checkpoint (queued again,
 * resumes from it), 143 SIGTERM (cancelled: no checkpoint).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "checkpoint.h"
#include "dataset.h"
#include "error.h"
#include "imsg.h"
#include "jobdesc.h"
#include "jobspec.h"
#include "log.h"
#include "model.h"
#include "modelfile.h"
#include "plan.h"
#include "privdrop.h"
#include "ring.h"
#include "schedule.h"
#include "tfevents.h"
#include "util.h"

enum { EXIT_JOB = 1, EXIT_USAGE = 2, EXIT_CUDA = 3, EXIT_NEEDMEM = 4, EXIT_STOPPED = 5 };

#define PROGRESS_INTERVAL 0.25 /* seconds between progress events */
/* Tiny epochs would otherwise turn into an fsync each. */
#define EPOCH_CKPT_MIN_INTERVAL 1.0

typedef struct args {
  const char *job, *base_dir, *ring, *device, *output;
  const char *fallback; /* --fallback-output: where the model goes if output fails; or NULL */
  const char *checkpoint, *resume; /* NULL: none */
  int resume_required;  /* --continue: resume from it or fail, never from scratch */
  const char *probe; /* --probe DEVICE: measure it and exit */
  const char *as_user; /* --as-user NAME:UID:GID: become it first; NULL: stay */
  const char *tb_dir;  /* --tensorboard DIR: event files there; NULL: none */
  uint64_t budget, overhead;
  uint32_t micro_batch;
  /* the remedies admission chose (td_plan_choose): -1 / 0 / 1 when absent */
  int precision;       /* a td_precision, or -1: the job's */
  int recompute;       /* 1: recompute activations, whatever the job says */
  uint32_t shrink;     /* optimiser updates per batch; 1 without the shrink remedy */
  int events_fd;
} args;

/* Running sums of a pass (an epoch's training or its test set). */
typedef struct pass {
  double loss_sum, abs_sum;
  uint64_t correct, topk, count;
  uint32_t batches;
} pass;

/* A pass's numbers; -1 for a metric the job's loss does not measure:
 * accuracy for mse and mae, top_k without train.top_k, mae for a
 * classification. */
typedef struct metrics {
  double loss, accuracy, top_k, mae;
} metrics;

static metrics pass_metrics(const td_jobspec *spec, const pass *p) {
  double n = p->count > 0 ? (double)p->count : 1.0;
  int regression = spec->loss == TD_LOSS_MSE || spec->loss == TD_LOSS_MAE;

  return (metrics){.loss = p->loss_sum / n,
                   .accuracy = regression ? -1.0 : (double)p->correct / n,
                   .top_k = spec->top_k > 0 ? (double)p->topk / n : -1.0,
                   .mae = regression ? p->abs_sum / n : -1.0};
}

static void pass_add(pass *p, const td_step_stats *st) {
  p->loss_sum += st->loss_sum;
  p->abs_sum += st->abs_sum;
  p->correct += st->correct;
  p->topk += st->topk;
  p->count += st->count;
}

/* "accuracy 0.9100" or "top-5 accuracy 0.9800" or "MAE 0.1200", for logs. */
static void metrics_str(const td_jobspec *spec, const metrics *m, char *buf, size_t cap) {
  int n = 0;

  if (m->accuracy >= 0)
    n = snprintf(buf, cap, "accuracy %.4f, ", m->accuracy);
  if (n >= 0 && (size_t)n < cap && m->top_k >= 0)
    n += snprintf(buf + n, cap - (size_t)n, "top-%u accuracy %.4f, ", spec->top_k, m->top_k);
  if (n >= 0 && (size_t)n < cap && m->mae >= 0)
    n += snprintf(buf + n, cap - (size_t)n, "MAE %.4f, ", m->mae);
  if (n >= 0 && (size_t)n < cap)
    snprintf(buf + n, cap - (size_t)n, "loss %.4f", m->loss);
}

static int events_fd = -1;

/* Liveness for traind's heartbeat check.  The training loop bumps `beats`
 * once per batch and sets `waiting` while it is blocked on the loader; a
 * thread says "heartbeat" each second only if one of them shows the loop is
 * alive, so a hung step (or a stopped process) goes silent. */
static atomic_uint beats;
static atomic_int waiting;

static void usage(FILE *f) {
  fprintf(f, "usage: traind-worker --job FILE.tdj --ring NAME --device NAME [--base-dir DIR]\n"
             "                     --budget BYTES --micro-batch N --output PATH "
             "[--events-fd N]\n"
             "                     [--checkpoint PATH] [--resume PATH] [--overhead BYTES]\n"
             "                     [--as-user NAME:UID:GID] [--fallback-output PATH]\n"
             "                     [--precision bf16|fp16] [--recompute] [--shrink K]\n"
             "                     [--tensorboard DIR] [--continue PATH]\n"
             "       traind-worker --probe DEVICE\n");
}

/* Send a report begun with td_imsg_begin (and free it): one frame, one
 * write() of at most PIPE_BUF bytes, so the heartbeat thread's frames and
 * the main loop's never interleave. */
static void emit(td_imsg *b) {
  const void *frame;
  size_t len;
  int rc;

  if (events_fd < 0) {
    td_imsg_free(b);
    return;
  }
  if ((rc = td_imsg_end(b, &frame, &len)) < 0)
    td_warn("cannot report to traind: %s", b->p.why[0] ? b->p.why : td_strerror(rc));
  else
    while (write(events_fd, frame, len) < 0 && errno == EINTR) {
    }
  td_imsg_free(b);
}

/* A report with no fields, or with one string field key. */
static void emit_msg(const char *op, const char *key, const char *msg) {
  td_imsg b;

  td_imsg_begin(&b, TD_IMSG_REPORT, op);
  if (key != NULL)
    td_imsg_str(&b, key, msg);
  emit(&b);
}

static void *heartbeat_main(void *arg) {
  unsigned last = atomic_load(&beats);

  (void)arg;
  for (;;) {
    unsigned now;

    sleep(1);
    now = atomic_load(&beats);
    if (now != last || atomic_load(&waiting))
      emit_msg("heartbeat", NULL, NULL);
    last = now;
  }
  return NULL;
}

/* td_strerror's ENOENT text speaks of jobs; here it is always a file. */
static const char *why(int rc) { return rc == TD_ENOENT ? "no such file" : td_strerror(rc); }

/* Report a failure (job log and error event); returns the exit status. */
static int fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int rc, const char *fmt, ...) {
  char msg[768];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  td_error("%s", msg);
  {
    td_imsg b;

    td_imsg_begin(&b, TD_IMSG_REPORT, "error");
    td_imsg_str(&b, "code", td_err_name(rc));
    td_imsg_str(&b, "msg", msg);
    emit(&b);
  }
  if (rc == TD_ENOFIT)
    return EXIT_NEEDMEM;
  return rc == TD_ECUDA ? EXIT_CUDA : EXIT_JOB;
}

/* A log line as td_log writes it, from a signal handler: no stdio. */
static void on_term(int sig) {
  static const char msg[] = "] info: cancelled by a signal\n";
  char line[TD_LOG_STAMP_MAX + 64], pid[16];
  size_t n = td_log_stamp(line, sizeof(line)), k = sizeof(pid);
  unsigned v = (unsigned)getpid();

  do
    pid[--k] = (char)('0' + v % 10);
  while ((v /= 10) != 0 && k > 0);
  memcpy(line + n, " traind-worker[", 15);
  n += 15;
  memcpy(line + n, pid + k, sizeof(pid) - k);
  n += sizeof(pid) - k;
  memcpy(line + n, msg, sizeof(msg) - 1);
  n += sizeof(msg) - 1;
  (void)!write(STDERR_FILENO, line, n);
  _exit(128 + sig);
}

static int parse_u32(const char *s, uint32_t *out) {
  char *end;
  unsigned long long v;

  errno = 0;
  v = strtoull(s, &end, 10);
  if (*s < '0' || *s > '9' || *end != '\0' || errno != 0 || v > UINT32_MAX)
    return TD_EINVAL;
  *out = (uint32_t)v;
  return 0;
}

static int parse_args(int argc, char **argv, args *a) {
  static const struct option opts[] = {
      {"job", required_argument, NULL, 'j'},       {"base-dir", required_argument, NULL, 'b'},
      {"ring", required_argument, NULL, 'r'},      {"device", required_argument, NULL, 'd'},
      {"budget", required_argument, NULL, 'B'},    {"micro-batch", required_argument, NULL, 'm'},
      {"output", required_argument, NULL, 'o'},    {"events-fd", required_argument, NULL, 'e'},
      {"checkpoint", required_argument, NULL, 'c'}, {"resume", required_argument, NULL, 'R'},
      {"overhead", required_argument, NULL, 'O'}, {"probe", required_argument, NULL, 'P'},
      {"as-user", required_argument, NULL, 'u'},   {"help", no_argument, NULL, 'h'},
      {"fallback-output", required_argument, NULL, 'F'},
      {"precision", required_argument, NULL, 'p'}, {"recompute", no_argument, NULL, 'C'},
      {"shrink", required_argument, NULL, 'S'},  {"tensorboard", required_argument, NULL, 'T'},
      {"continue", required_argument, NULL, 'N'},
      {NULL, 0, NULL, 0},
  };
  uint32_t fd;
  int c;

  *a = (args){.events_fd = -1, .precision = -1, .shrink = 1};
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'j': a->job = optarg; break;
    case 'b': a->base_dir = optarg; break;
    case 'r': a->ring = optarg; break;
    case 'd': a->device = optarg; break;
    case 'o': a->output = optarg; break;
    case 'c': a->checkpoint = optarg; break;
    case 'R': a->resume = optarg; break;
    case 'N': a->resume = optarg, a->resume_required = 1; break;
    case 'P': a->probe = optarg; break;
    case 'u': a->as_user = optarg; break;
    case 'F': a->fallback = optarg; break;
    case 'T': a->tb_dir = optarg; break;
    case 'C': a->recompute = 1; break;
    case 'p':
      for (int k = 0; k < TD_PREC__COUNT; k++)
        if (strcmp(optarg, td_precision_name((td_precision)k)) == 0)
          a->precision = k;
      if (a->precision < 0) {
        td_error("--precision '%s' is not fp32, bf16 or fp16", optarg);
        return -1;
      }
      break;
    case 'S':
      if (parse_u32(optarg, &a->shrink) < 0 || a->shrink == 0) {
        td_error("--shrink '%s' is not a positive integer", optarg);
        return -1;
      }
      break;
    case 'O':
      if (td_parse_size(optarg, &a->overhead) < 0) {
        td_error("--overhead '%s' is not a byte count", optarg);
        return -1;
      }
      break;
    case 'B':
      if (td_parse_size(optarg, &a->budget) < 0) {
        td_error("--budget '%s' is not a byte count", optarg);
        return -1;
      }
      break;
    case 'm':
      if (parse_u32(optarg, &a->micro_batch) < 0 || a->micro_batch == 0) {
        td_error("--micro-batch '%s' is not a positive integer",
                optarg);
        return -1;
      }
      break;
    case 'e':
      if (parse_u32(optarg, &fd) < 0 || fd > INT32_MAX) {
        td_error("--events-fd '%s' is not a file descriptor", optarg);
        return -1;
      }
      a->events_fd = (int)fd;
      break;
    case 'h': usage(stdout); exit(0);
    default: return -1;
    }
  }
  if (a->probe != NULL && optind == argc)
    return 0;
  if (optind < argc || !a->job || !a->ring || !a->device || !a->output ||
      a->budget == 0 || a->micro_batch == 0) {
    td_error("missing or extra arguments");
    return -1;
  }
  return 0;
}

/* OpenBLAS reads OPENBLAS_CORETYPE only when it loads, so a process whose
 * CPU it misdetects restarts itself once with the right kernels named. */
static void tune_blas(char **argv) {
  const char *core = td_cpu_blas_coretype_hint();

  if (core == NULL || getenv("OPENBLAS_CORETYPE") != NULL)
    return;
  setenv("OPENBLAS_CORETYPE", core, 1);
  /* argv[0] as traind gave it (an absolute path), so the process keeps
   * its name in ps and systemd. */
  execv(argv[0][0] == '/' ? argv[0] : "/proc/self/exe", argv);
  td_warn("cannot restart with OPENBLAS_CORETYPE=%s (%s); using slower BLAS kernels", core,
          strerror(errno));
}

static int check_batch(const td_batch_hdr *h, size_t len, const td_jobspec *spec,
                       const td_layout *l, char *why, size_t cap) {
  uint64_t need;

  if (h->dtype != (uint32_t)l->in_dtype) {
    snprintf(why, cap, "the loader sends %s samples but the dataset's header said %s",
             h->dtype < TD_DTYPE__COUNT ? td_dtype_name((td_dtype)h->dtype) : "unknown",
             td_dtype_name(l->in_dtype));
    return TD_EDATA;
  }
  if (h->sample_bytes != (uint64_t)l->in_elems * td_dtype_size(l->in_dtype)) {
    snprintf(why, cap, "the loader sends %u-byte samples but the model's input is %u %s "
             "values", h->sample_bytes, l->in_elems, td_dtype_name(l->in_dtype));
    return TD_EDATA;
  }
  if (h->count == 0 || (h->kind == TD_BATCH_TRAIN && h->count > spec->batch_size)) {
    snprintf(why, cap, "a batch of %u samples (the batch size is %u)", h->count,
             spec->batch_size);
    return TD_EDATA;
  }
  if (h->target_bytes != td_target_bytes(td_jobspec_target(spec))) {
    snprintf(why, cap, "the loader sends %u-byte targets but loss %s takes %zu bytes a sample",
             h->target_bytes, td_loss_name(spec->loss),
             td_target_bytes(td_jobspec_target(spec)));
    return TD_EDATA;
  }
  if (td_mul_u64(h->count, (uint64_t)h->sample_bytes + h->target_bytes, &need) < 0 ||
      td_add_u64(need, sizeof(*h), &need) < 0 || need > len) {
    snprintf(why, cap, "a batch of %u samples does not fit its %zu-byte slot", h->count, len);
    return TD_EDATA;
  }
  if (h->epoch >= spec->epochs || h->nbatches == 0 || h->index >= h->nbatches) {
    snprintf(why, cap, "batch %u of %u in epoch %u is out of range (%u epochs)", h->index,
             h->nbatches, h->epoch, spec->epochs);
    return TD_EDATA;
  }
  return 0;
}

/* TensorBoard.  Every scalar's step is the global train batch, epoch x
 * batches per epoch + batch (1-based), as progress events count and
 * `show`'s loss curve plots, so a resumed run continues the same axis. */
static struct {
  td_tfevents *w;  /* NULL: no event file */
  uint32_t every;  /* train scalars every this many batches */
  uint64_t step;   /* the train batch in progress, or the last one done */
  int warned;      /* the job log has said a write failed */
} tb;

static void tb_write(const td_tfscalar *v, size_t n) {
  struct timespec ts;
  int rc;

  if (tb.w == NULL)
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  rc = td_tfevents_scalars(tb.w, (int64_t)tb.step, (double)ts.tv_sec + ts.tv_nsec * 1e-9, v, n);
  if (rc < 0 && !tb.warned) {
    /* A full disk must not cost the training: the curves get a gap. */
    td_warn("cannot write TensorBoard events to %s: %s; training goes on, later events are "
            "tried again", td_tfevents_path(tb.w),
            rc == TD_ENOSPC ? "no space left on the disk"
            : rc == TD_EIO  ? strerror(errno)
                            : td_strerror(rc));
    tb.warned = 1;
  }
}

static void tb_open(const args *a, const td_jobspec *spec) {
  char err[512];
  int rc;

  if (a->tb_dir == NULL || spec->tb_every_steps == 0)
    return;
  tb.every = spec->tb_every_steps;
  if ((rc = td_tfevents_open(a->tb_dir, (double)td_now_unix_ms() / 1000.0, &tb.w, err,
                             sizeof(err))) < 0)
    td_warn("no TensorBoard events: %s", err);
}

static void tb_close(void) {
  if (tb.w != NULL && td_tfevents_close(tb.w) < 0 && !tb.warned)
    td_warn("cannot write the last TensorBoard events: %s", strerror(errno));
  tb.w = NULL;
}

/* "test" or "val": once an epoch, at its last train batch; only the
 * metrics the job measures. */
static void tb_eval(const char *split, const metrics *m) {
  char tags[4][16];
  td_tfscalar sc[4];
  size_t n = 0;

  if (m->accuracy >= 0) {
    snprintf(tags[n], sizeof(tags[n]), "%s/accuracy", split);
    sc[n] = (td_tfscalar){tags[n], m->accuracy}, n++;
  }
  snprintf(tags[n], sizeof(tags[n]), "%s/loss", split);
  sc[n] = (td_tfscalar){tags[n], m->loss}, n++;
  if (m->top_k >= 0) {
    snprintf(tags[n], sizeof(tags[n]), "%s/top_k", split);
    sc[n] = (td_tfscalar){tags[n], m->top_k}, n++;
  }
  if (m->mae >= 0) {
    snprintf(tags[n], sizeof(tags[n]), "%s/mae", split);
    sc[n] = (td_tfscalar){tags[n], m->mae}, n++;
  }
  tb_write(sc, n);
}

/* "eval" (the test set) or "val" (the validation split) of an epoch. */
static void emit_pass(const char *op, uint32_t epoch, const metrics *m) {
  td_imsg b;

  td_imsg_begin(&b, TD_IMSG_REPORT, op);
  td_imsg_u64(&b, "epoch", epoch);
  td_imsg_f64(&b, "accuracy", m->accuracy);
  td_imsg_f64(&b, "loss", m->loss);
  td_imsg_f64(&b, "top_k", m->top_k);
  td_imsg_f64(&b, "mae", m->mae);
  emit(&b);
}

static void emit_eval(const td_jobspec *spec, uint32_t epoch, pass *test, metrics *out) {
  char line[160];

  *out = pass_metrics(spec, test);
  emit_pass("eval", epoch + 1, out);
  tb_eval("test", out);
  metrics_str(spec, out, line, sizeof(line));
  td_info("epoch %u: test %s", epoch + 1, line);
  *test = (pass){0};
}

/* Seconds blocked in td_ring_read_begin since the first batch arrived. */
static double data_wait, first_batch;

typedef struct trainer {
  const args *a;
  const td_jobspec *spec;
  const td_jobspec *job;   /* as the job file says, before admission's remedies */
  td_backend *be;
  td_model *model;
  td_ring *ring;
  pass train, test, val;
  uint32_t epoch, test_epoch;
  double epoch_start, last_progress, train_time;
  uint64_t train_samples;
  metrics last;            /* of the last test pass, else the last epoch's training */
  int ctl_fd;            /* traind's commands; -1 if none */
  void *ring_map;        /* the ring's mapping, registered with the backend; or NULL */

  /* checkpoints */
  td_ckpt_policy policy;
  float *state;            /* host copy of the model's state; NULL without --checkpoint */
  uint64_t state_floats;
  uint64_t pos_epoch, pos_batch; /* data position: the epoch in progress, its batches done */
  uint64_t ckpt_step;      /* the last checkpoint's step and time */
  double ckpt_time;
  int ckpt_current;        /* the last checkpoint holds exactly the model's state now */
  int check_resume;        /* the first train batch must be at the resumed position */

  /* callbacks (callbacks.h), on the validation split at each epoch's end */
  int cb_on;               /* the job has callbacks and a validation split */
  td_cb_state cb;          /* what they keep; in every checkpoint */
  uint32_t stop_pending;   /* early stopping: the epoch (1-based) to end after, once its
                              test pass is done; 0 none */
  int finished;            /* the model is written: train() returns */
  char best_path[TD_PATH_MAX]; /* keep_best's file, beside --output */
} trainer;

static int finish_early(trainer *t);
static int run_callbacks(trainer *t, uint32_t epoch, const metrics *m);

/* The training scalars after train batch h, every tb.every batches and at
 * each epoch's end: loss, accuracy and samples/s are the epoch's so far, as
 * in progress events; data_wait the fraction of the time since the first
 * batch spent waiting for the loader; the learning rate the last update's
 * (the schedule's, scaled as the shrink remedy scales it); memory the
 * device bytes in use (with the process overhead) and the plan's total. */
static void tb_train(const trainer *t, const td_batch_hdr *h, double now) {
  td_schedule sched = t->spec->schedule;
  uint64_t steps = td_model_steps(t->model);
  td_mem_stats mem;
  metrics m;

  if (tb.w == NULL || (tb.step % tb.every != 0 && h->index + 1 != h->nbatches))
    return;
  sched.lr = t->spec->opt.lr;
  td_backend_mem(t->be, &mem);
  m = pass_metrics(t->spec, &t->train);
  tb_write((const td_tfscalar[]){
               {"train/loss", m.loss},
               /* a regression's: its MAE, under its own name */
               {m.mae >= 0 ? "train/mae" : "train/accuracy", m.mae >= 0 ? m.mae : m.accuracy},
               {"train/samples_per_sec",
                (double)t->train.count / (now - t->epoch_start > 0 ? now - t->epoch_start : 1e-9)},
               {"train/data_wait", now > first_batch ? data_wait / (now - first_batch) : 0.0},
               {"train/learning_rate", td_schedule_lr(&sched, steps > 0 ? steps - 1 : 0) *
                                           td_model_effective_batch(t->model) /
                                           t->spec->batch_size * t->cb.lr_factor},
               {"memory/used_bytes", (double)(mem.used + mem.overhead)},
               {"memory/planned_bytes", (double)td_model_plan(t->model)->total},
           },
           7);
}

/* Whether every plan the run has trained at so far gives the whole batch's
 * bits (td_plan_bit_identical against the job file's spec): once one did
 * not, the weights differ from an undisturbed run's for good. */
static bool run_bit_identical = true;

/* The remedy a plan applies shows in its precision and recompute. */
static void emit_replan(const trainer *t) {
  const td_model *m = t->model;
  const td_plan *p = td_model_plan(m);
  bool split = p->batch_dependent && p->accumulation > 1, was = run_bit_identical;
  td_imsg b;

  run_bit_identical = was && td_plan_bit_identical(t->job, p);
  td_imsg_begin(&b, TD_IMSG_REPORT, "replan");
  td_imsg_u64(&b, "micro_batch", p->micro_batch);
  td_imsg_u64(&b, "accumulation", p->accumulation);
  td_imsg_u64(&b, "total", p->total);
  td_imsg_str(&b, "precision", td_precision_name(p->precision));
  td_imsg_bool(&b, "recompute", p->recompute);
  td_imsg_bool(&b, "batch_dependent", p->batch_dependent);
  td_imsg_u64(&b, "effective_batch", td_model_effective_batch(m));
  emit(&b);
  tb_write((const td_tfscalar[]){{"replan/micro_batch", p->micro_batch},
                                 {"replan/accumulation", p->accumulation},
                                 {"replan/planned_bytes", (double)p->total}},
           3);
  if (was && !run_bit_identical)
    td_warn("from here on the weights are no longer bit for bit those of an undisturbed run: "
            "micro-batch %u is not a whole number of %d-sample blocks%s", p->micro_batch,
            TD_PLAN_BLOCK_ROWS, p->precision != t->job->precision || p->shrink > 1
                                    ? ", or a remedy changed the precision or the batch"
                                    : "");
  td_info("re-planned: micro-batch %u x %u, %s%s, %llu bytes", p->micro_batch,
          p->accumulation, td_precision_name(p->precision),
          p->recompute ? " with activation recomputation" : "", (unsigned long long)p->total);
  if (split)
    td_warn("the model has BatchNorm and its batch is now split in %u micro-batches: each "
            "normalises with its own statistics, so training is no longer exactly what the "
            "whole batch would give", p->accumulation);
}

static void on_oom(void *arg, const td_model_oom *o) {
  td_imsg b;

  (void)arg;
  td_imsg_begin(&b, TD_IMSG_REPORT, "oom");
  td_imsg_u64(&b, "requested", o->asked);
  td_imsg_u64(&b, "free", o->free);
  td_imsg_str(&b, "phase", o->phase);
  td_imsg_u64(&b, "micro_batch", o->micro_batch);
  emit(&b);
  tb_write((const td_tfscalar[]){{"oom/requested_bytes", (double)o->asked},
                                 {"oom/free_bytes", (double)o->free}},
           2);
  td_warn("out of memory in the %s phase at micro-batch %u (%llu bytes asked, %llu free): "
          "discarding the step and re-planning", o->phase, o->micro_batch,
          (unsigned long long)o->asked, (unsigned long long)o->free);
}

static void on_replan(void *arg, const td_plan *p) {
  (void)p;
  emit_replan(arg);
}

static void state_tensor(trainer *t, td_ckpt_tensor *out) {
  *out = (td_ckpt_tensor){.name = "state", .dtype = "F32", .rank = 1,
                          .shape = {t->state_floats}, .data = t->state,
                          .bytes = t->state_floats * sizeof(float)};
}

/* "checkpoint" (written) or "resumed" (read): where the data stands. */
static void emit_position(const char *op, const td_ckpt_state *st, uint64_t bytes) {
  td_imsg b;

  td_imsg_begin(&b, TD_IMSG_REPORT, op);
  td_imsg_u64(&b, "step", st->step);
  td_imsg_u64(&b, "epoch", st->epoch);
  td_imsg_u64(&b, "batch", st->batch);
  td_imsg_u64(&b, "bytes", bytes);
  emit(&b);
}

/* Write a checkpoint of the model now.  A failure is logged and training
 * goes on: the previous checkpoint, if any, is still whole. */
static int checkpoint_write(trainer *t) {
  td_ckpt_state st = {.epoch = t->pos_epoch, .batch = t->pos_batch, .seed = t->spec->seed};
  td_model_progress p;
  td_ckpt_tensor ten;
  struct stat sb;
  char err[512];
  int rc;

  if (t->state == NULL)
    return 0;
  /* A failed attempt also waits for the next one that is due. */
  t->ckpt_step = td_model_steps(t->model);
  t->ckpt_time = td_now_mono();
  if ((rc = td_model_get_state(t->model, t->state)) < 0) {
    td_warn("no checkpoint: cannot read the model's state: %s", td_model_error(t->model));
    return rc;
  }
  td_model_get_progress(t->model, &p);
  td_strlcpy(st.job, t->spec->name, sizeof(st.job));
  st.step = p.steps;
  st.loss_scale = p.loss_scale;
  st.good_steps = p.good_steps;
  st.skipped = p.skipped;
  st.has_callbacks = t->cb_on;
  st.cb = t->cb;
  state_tensor(t, &ten);
  if ((rc = td_checkpoint_write(t->a->checkpoint, &st, &ten, 1, err, sizeof(err))) < 0) {
    td_warn("no checkpoint at step %llu: %s", (unsigned long long)st.step, err);
    return rc;
  }
  t->ckpt_current = 1;
  emit_position("checkpoint", &st, stat(t->a->checkpoint, &sb) == 0 ? (uint64_t)sb.st_size : 0);
  td_info("checkpoint at step %llu (epoch %llu, %llu batches into it) written to %s",
          (unsigned long long)st.step, (unsigned long long)st.epoch + 1,
          (unsigned long long)st.batch, t->a->checkpoint);
  return 0;
}

/* Before the worker exits with a job still to finish: keep what it has
 * trained since the last checkpoint. */
static void checkpoint_final(trainer *t) {
  if (!t->ckpt_current && td_model_steps(t->model) > 0)
    checkpoint_write(t);
}

/* SIGUSR1: traind asks for a checkpoint and an exit.  Only the main
 * thread takes it, so it is seen as soon as a blocking read returns. */
static volatile sig_atomic_t stop_requested;

static void on_stop(int sig) {
  (void)sig;
  stop_requested = 1;
}

/* traind asked for a stop. */
static int stop_now(trainer *t) {
  td_info("traind asked the job to stop: checkpointing and exiting");
  checkpoint_final(t);
  return EXIT_STOPPED;
}

/* --resume: load the checkpoint into the model, or say why not and start
 * from scratch.  Only a failing device fails the job. */
static int resume(trainer *t, const char *path) {
  td_ckpt_state st;
  td_ckpt_tensor ten;
  td_model_progress p;
  struct stat sb;
  char err[512] = "";
  int rc;

  state_tensor(t, &ten);
  rc = t->state == NULL ? TD_ENOMEM : td_checkpoint_read(path, &st, &ten, 1, err, sizeof(err));
  if (rc == TD_ENOMEM)
    snprintf(err, sizeof(err), "out of host memory for the model's state");
  else if (rc == 0 && strcmp(st.job, t->spec->name) != 0)
    snprintf(err, sizeof(err), "%s belongs to job '%s', not '%s'", path, st.job, t->spec->name);
  else if (rc == 0 && st.seed != t->spec->seed)
    snprintf(err, sizeof(err), "%s was trained with seed %llu, the job has seed %llu", path,
             (unsigned long long)st.seed, (unsigned long long)t->spec->seed);
  else if (rc == 0 && st.epoch >= t->spec->epochs)
    snprintf(err, sizeof(err), "%s is at epoch %llu, past the job's %u epochs", path,
             (unsigned long long)st.epoch + 1, t->spec->epochs);
  if ((rc < 0 || err[0] != '\0') && t->a->resume_required)
    return fail(rc == TD_ENOMEM ? rc : TD_EDATA, "cannot continue from the final state %s: %s",
                path, err);
  if (rc < 0 || err[0] != '\0') {
    td_warn("cannot resume from the checkpoint: %s; training from scratch", err);
    emit_msg("resume_failed", "msg", err);
    return 0;
  }
  td_model_get_progress(t->model, &p);
  p.steps = st.step;
  p.loss_scale = st.loss_scale;
  p.good_steps = st.good_steps;
  p.skipped = st.skipped;
  if (t->cb_on && st.has_callbacks) {
    t->cb = st.cb;
    p.lr_factor = st.cb.lr_factor;
  } else if (t->cb_on) {
    td_info("the checkpoint holds no callback state (written before callbacks, or by a job "
            "without them): early stopping, keep_best and reduce_lr_on_plateau start afresh");
  }
  if ((rc = td_model_set_state(t->model, t->state, t->state_floats)) < 0 ||
      (rc = td_model_set_progress(t->model, &p)) < 0)
    return fail(rc, "cannot load the checkpoint %s into the model: %s", path,
                td_model_error(t->model));
  t->pos_epoch = st.epoch;
  t->pos_batch = st.batch;
  t->ckpt_step = st.step;
  t->ckpt_current = 1;
  t->check_resume = 1;
  emit_position("resumed", &st, stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0);
  td_info("resumed from %s at step %llu (epoch %llu, %llu batches into it)", path,
          (unsigned long long)st.step, (unsigned long long)st.epoch + 1,
          (unsigned long long)st.batch);
  return 0;
}

/* init: the model's initial parameters and buffers from a model file
 * (common/modelfile.h), read as the job's user, instead of the random
 * init.  Its header is read first: a FIFO is refused without a wait, and a
 * file cannot make the worker read more than the model's tensors in F64. */
static int init_from(trainer *t, const char *path) {
  const td_layout *l = td_model_layout(t->model);
  uint64_t max = 8 + TD_ST_MAX_HEADER + 8 * (l->nparams + l->nbuffers + TD_MF_MAX);
  td_st_file *f = NULL;
  char err[512], *buf;
  size_t len;
  int rc;

  if ((rc = td_safetensors_load_header(path, &f, err, sizeof(err))) == 0) {
    td_safetensors_free(f);
    f = NULL;
    rc = td_read_file(path, max > SIZE_MAX ? SIZE_MAX : (size_t)max, &buf, &len);
    if (rc == TD_ETOOBIG)
      snprintf(err, sizeof(err), "larger than a model of this job's tensors can be (%llu "
               "bytes at most)", (unsigned long long)max);
    else if (rc < 0)
      snprintf(err, sizeof(err), "%s", why(rc));
    else
      rc = td_safetensors_parse(buf, len, &f, err, sizeof(err)), free(buf);
  }
  if (rc < 0)
    return fail(rc == TD_ENOMEM ? rc : TD_EDATA, "init %s: %s", path, err);
  rc = td_model_load(t->model, f);
  td_safetensors_free(f);
  if (rc < 0)
    return fail(rc, "init %s: %s", path, td_model_error(t->model));
  td_info("initial weights from %s", path);
  return 0;
}

/* The budget line of the log: this job's budget, and the device's when
 * traind said it ("" otherwise). */
static void budget_text(unsigned long long bytes, uint64_t device_budget, const char *device,
                        char *out, size_t cap) {
  char job[32], dev[32];

  td_format_size(bytes, job, sizeof(job));
  if (device_budget == 0) {
    snprintf(out, cap, "%s (%llu bytes)", job, bytes);
    return;
  }
  td_format_size(device_budget, dev, sizeof(dev));
  snprintf(out, cap, "%s (%llu bytes; the budget of %s for all its jobs is now %s)", job, bytes,
           device, dev);
}

/* traind's "budget" command (proto/imsg.h): run within bytes from the
 * next step on; device is the device's budget, which the log quotes. */
static int apply_budget(trainer *t, uint64_t bytes, uint64_t dev_budget) {
  char what[192];
  bool replanned;
  int rc;

  rc = td_model_set_budget(t->model, bytes, &replanned);
  if (rc == TD_ENOFIT) {
    char dev[32];

    /* traind wants the job off the device for now: the budget it
     * sent is a token, and only the device's says why. */
    td_format_size(dev_budget, dev, sizeof(dev));
    if (dev_budget > 0)
      snprintf(what, sizeof(what), "the budget of %s was lowered to %s, which leaves this "
               "job too little for its smallest allowed micro-batch (%u)", t->a->device, dev,
               td_jobspec_min_micro_batch(t->spec));
    else
      snprintf(what, sizeof(what), "traind lowered this job's budget below what its "
               "smallest allowed micro-batch (%u) needs", td_jobspec_min_micro_batch(t->spec));
    td_warn("%s: checkpointing; the job waits in the queue for memory", what);
    /* the weights are intact: it resumes from here */
    checkpoint_final(t);
    return fail(rc, "%s", what);
  }
  budget_text(bytes, dev_budget, t->a->device, what, sizeof(what));
  td_info("traind set this job's budget to %s", what);
  if (rc == TD_EOOM) /* the next step re-plans again */
    on_oom(NULL, td_model_last_oom(t->model));
  else if (rc < 0)
    return fail(rc, "the budget was set to %s: %s", what, td_model_error(t->model));
  else
    emit_replan(t);
  return 0;
}

/* Commands from traind on stdin (a pipe), read without blocking at step
 * boundaries, as framed messages (proto/imsg.h). */
static td_imsg_frames ctl_frames;

static int apply_control(trainer *t) {
  unsigned char chunk[1024];
  ssize_t n = 0;

  while (t->ctl_fd >= 0) {
    const void *body;
    size_t len, used = 0;
    char why[256];
    int rc;

    if ((n = read(t->ctl_fd, chunk, sizeof(chunk))) <= 0)
      break;
    while (used < (size_t)n) {
      used += td_imsg_frames_put(&ctl_frames, chunk + used, (size_t)n - used);
      while ((rc = td_imsg_frames_next(&ctl_frames, &body, &len, why, sizeof(why))) != 0) {
        const td_msgdef *def;
        td_msg *m;
        uint64_t bytes = 0, dev = 0;

        if (rc < 0) {
          /* Nothing after a bad frame can be trusted to start a frame. */
          td_warn("ignoring traind's commands from here on: %s", why);
          t->ctl_fd = -1;
          return 0;
        }
        if (td_imsg_parse(TD_IMSG_CONTROL, body, len, &m, &def, why, sizeof(why)) < 0) {
          td_warn("ignoring a command from traind: %s", why);
          continue;
        }
        td_obj_u64(td_msg_root(m), "bytes", &bytes);
        td_obj_u64(td_msg_root(m), "device", &dev);
        td_msg_free(m);
        if (strcmp(def->op, "budget") == 0 && (rc = apply_budget(t, bytes, dev)) != 0)
          return rc;
      }
    }
  }
  if (n == 0)
    t->ctl_fd = -1; /* traind closed it */
  return 0;
}

static int on_train(trainer *t, const td_batch_hdr *h, const uint8_t *px, const uint8_t *lb) {
  const td_model_hooks hooks = {.oom = on_oom, .replan = on_replan, .arg = t};
  td_step_stats st;
  td_mem_stats mem;
  double now;
  int rc;

  if (t->stop_pending) /* the epoch had no test pass to wait for */
    return finish_early(t);
  tb.step = (uint64_t)h->epoch * h->nbatches + h->index + 1;
  if ((rc = apply_control(t)) != 0)
    return rc;
  if (stop_requested)
    return stop_now(t);
  if (t->check_resume) {
    uint64_t e = h->epoch, b = h->index;

    /* A checkpoint at the end of an epoch resumes at the next one's start. */
    if (t->pos_batch == h->nbatches && e == t->pos_epoch + 1 && b == 0)
      e = t->pos_epoch, b = t->pos_batch;
    if (e != t->pos_epoch || b != t->pos_batch)
      return fail(TD_EDATA, "the loader resumed at epoch %u batch %u but the checkpoint is "
                  "at epoch %llu after %llu batches", h->epoch + 1, h->index + 1,
                  (unsigned long long)t->pos_epoch + 1, (unsigned long long)t->pos_batch);
    t->check_resume = 0;
  }

  if (t->test.count > 0)
    emit_eval(t->spec, t->test_epoch, &t->test, &t->last);
  if (t->train.batches == 0 || h->epoch != t->epoch) {
    t->epoch = h->epoch;
    t->train = (pass){0};
    t->epoch_start = td_now_mono();
  }
  if ((rc = td_model_train_step_recover(t->model, px, lb, h->count, &hooks, &st)) < 0) {
    if (rc == TD_ENOFIT) /* the weights are as before the step */
      checkpoint_final(t);
    return fail(rc, "epoch %u step %u: %s", h->epoch + 1, h->index + 1,
                td_model_error(t->model));
  }
  t->pos_epoch = h->epoch;
  t->pos_batch = (uint64_t)h->index + 1;
  t->ckpt_current = 0;
  pass_add(&t->train, &st);
  t->train.batches++;
  t->train_samples += st.count;

  now = td_now_mono();
  if (td_checkpoint_due(&t->policy, td_model_steps(t->model), now, t->ckpt_step, t->ckpt_time) ||
      (h->index + 1 == h->nbatches && now - t->ckpt_time >= EPOCH_CKPT_MIN_INTERVAL))
    checkpoint_write(t);
  tb_train(t, h, now);
  if (now - t->last_progress < PROGRESS_INTERVAL && h->index + 1 != h->nbatches)
    return 0;
  t->last_progress = now;
  td_backend_mem(t->be, &mem);
  {
    td_imsg b;

    td_imsg_begin(&b, TD_IMSG_REPORT, "progress");
    td_imsg_u64(&b, "epoch", h->epoch + 1);
    td_imsg_u64(&b, "epochs", t->spec->epochs);
    td_imsg_u64(&b, "step", h->index + 1);
    td_imsg_u64(&b, "steps", h->nbatches);
    metrics m = pass_metrics(t->spec, &t->train);

    td_imsg_f64(&b, "loss", m.loss);
    td_imsg_f64(&b, "train_accuracy", m.accuracy);
    td_imsg_f64(&b, "train_mae", m.mae);
    td_imsg_f64(&b, "samples_per_sec", (double)t->train.count /
                (now - t->epoch_start > 0 ? now - t->epoch_start : 1e-9));
    td_imsg_u64(&b, "mem", mem.used + mem.overhead);
    td_imsg_f64(&b, "data_wait", now > first_batch ? data_wait / (now - first_batch) : 0.0);
    emit(&b);
  }
  if (h->index + 1 == h->nbatches) {
    t->train_time += now - t->epoch_start;
    t->last = pass_metrics(t->spec, &t->train);
    td_info("epoch %u: training loss %.4f, %.0f samples/s", h->epoch + 1, t->last.loss,
            (double)t->train.count / (now - t->epoch_start));
  }
  return 0;
}

static int on_test(trainer *t, const td_batch_hdr *h, const uint8_t *px, const uint8_t *lb) {
  td_step_stats st;
  int rc;

  if (t->test.count > 0 && h->epoch != t->test_epoch)
    emit_eval(t->spec, t->test_epoch, &t->test, &t->last);
  t->test_epoch = h->epoch;
  /* Evaluation changes no weight: after an OOM it is simply run again. */
  for (int tries = 0; (rc = td_model_eval(t->model, px, lb, h->count, &st)) == TD_EOOM &&
                      tries < 3; tries++)
    on_oom(NULL, td_model_last_oom(t->model));
  if (rc < 0)
    return fail(rc, "epoch %u test batch %u: %s", h->epoch + 1, h->index + 1,
                td_model_error(t->model));
  pass_add(&t->test, &st);
  if (h->index + 1 == h->nbatches) {
    emit_eval(t->spec, t->test_epoch, &t->test, &t->last);
    if (t->stop_pending)
      return finish_early(t);
  }
  return 0;
}

/* Validation batches (held out of the train set) are evaluated like test
 * batches and reported on their own, once per epoch. */
static int on_val(trainer *t, const td_batch_hdr *h, const uint8_t *px, const uint8_t *lb) {
  td_step_stats st;
  int rc;

  for (int tries = 0; (rc = td_model_eval(t->model, px, lb, h->count, &st)) == TD_EOOM &&
                      tries < 3; tries++)
    on_oom(NULL, td_model_last_oom(t->model));
  if (rc < 0)
    return fail(rc, "epoch %u validation batch %u: %s", h->epoch + 1, h->index + 1,
                td_model_error(t->model));
  pass_add(&t->val, &st);
  if (h->index + 1 == h->nbatches && t->val.count > 0) {
    metrics m = pass_metrics(t->spec, &t->val);
    char line[160];

    emit_pass("val", h->epoch + 1, &m);
    tb_eval("val", &m);
    metrics_str(t->spec, &m, line, sizeof(line));
    td_info("epoch %u: validation %s", h->epoch + 1, line);
    t->val = (pass){0};
    if (t->cb_on)
      return run_callbacks(t, h->epoch + 1, &m);
  }
  return 0;
}

/* Why path could not be written, and the code for it: what its directory
 * shows (the writer keeps only "input/output error" for a directory that is
 * gone or closed to the job's user), else the errno the write left. */
static int write_cause(const char *path, int rc, int saved, char *out, size_t cap) {
  char dir[TD_PATH_MAX];
  const char *slash = strrchr(path, '/');
  struct stat st;
  int e = 0;

  if (slash == NULL)
    td_strlcpy(dir, ".", sizeof(dir));
  else
    snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 : (int)(slash - path), path);
  if (stat(dir, &st) < 0)
    e = errno;
  else if (!S_ISDIR(st.st_mode))
    e = ENOTDIR;
  else if (faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) < 0)
    e = errno;
  if (e == ENOENT) {
    snprintf(out, cap, "no such directory: %s", dir);
    return TD_ENOENT;
  }
  if (e == ENOTDIR) {
    snprintf(out, cap, "not a directory: %s", dir);
    return TD_ENOENT;
  }
  if (e == EACCES || e == EPERM) {
    struct passwd pw, *res = NULL;
    char buf[1024];

    if (getpwuid_r(geteuid(), &pw, buf, sizeof(buf), &res) == 0 && res != NULL)
      snprintf(out, cap, "permission denied: %s may not write in %s", pw.pw_name, dir);
    else
      snprintf(out, cap, "permission denied: uid %u may not write in %s", (unsigned)geteuid(),
               dir);
    return TD_EPERM;
  }
  if (e == 0 && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    snprintf(out, cap, "%s is a directory", path);
    return TD_EINVAL;
  }
  if (e == 0 && rc == TD_EIO && saved != 0)
    e = saved;
  if (e != 0) {
    snprintf(out, cap, "%s", strerror(e));
    if (out[0] >= 'A' && out[0] <= 'Z' && out[1] >= 'a' && out[1] <= 'z')
      out[0] = (char)(out[0] - 'A' + 'a'); /* "Read-only file system": mid-sentence */
    return e == ENOSPC || e == EDQUOT || e == EFBIG ? TD_ENOSPC : TD_EIO;
  }
  snprintf(out, cap, "%s", td_strerror(rc));
  return rc;
}

/* A failure of the model's file itself, not of the device or of memory:
 * another place may still take the model. */
static int is_write_error(int rc) { return rc == TD_EIO || rc == TD_ENOSPC || rc == TD_ETOOBIG; }

/* <output without .safetensors>.best.safetensors */
static void best_path(const char *output, char *out, size_t cap) {
  static const char ext[] = ".safetensors";
  size_t n = strlen(output);

  if (n >= sizeof(ext) - 1 && strcmp(output + n - (sizeof(ext) - 1), ext) == 0)
    n -= sizeof(ext) - 1;
  snprintf(out, cap, "%.*s.best%s", (int)n, output, ext);
}

/* keep_best: this epoch's model beside the last one.  A failure is logged
 * and training goes on: the job's model is still written at the end. */
static void save_best(trainer *t, uint32_t epoch, double value) {
  const td_cb_keep_best *k = &t->spec->callbacks.keep_best;
  char ep[16], val[32], seed[32];
  const td_st_meta meta[] = {
      {"format", "pt"},        {"traind.job", t->spec->name}, {"traind.epoch", ep},
      {"traind.seed", seed},   {"traind.monitor", td_monitor_name(k->monitor)},
      {"traind.value", val},
  };
  int rc;

  snprintf(ep, sizeof(ep), "%u", epoch);
  snprintf(seed, sizeof(seed), "%llu", (unsigned long long)t->spec->seed);
  snprintf(val, sizeof(val), "%.6f", value);
  if ((rc = td_model_save(t->model, t->best_path, meta, TD_ARRAY_SIZE(meta))) < 0) {
    td_warn("keep_best: cannot write the best model to %s: %s", t->best_path,
            td_model_error(t->model));
    return;
  }
  td_info("keep_best: epoch %u has the best %s so far (%.4f): model written to %s", epoch,
          td_monitor_name(k->monitor), value, t->best_path);
}

/* The callbacks' decisions on an epoch's validation numbers.  A checkpoint
 * needs no rewrite for them: one from before the judgement resumes before
 * the validation pass (the loader sends an epoch's validation again when it
 * resumes at its end), one from after it holds the epoch as judged. */
static int run_callbacks(trainer *t, uint32_t epoch, const metrics *m) {
  const td_callbacks *c = &t->spec->callbacks;
  const double v[TD_MONITOR__COUNT] = {
      [TD_MONITOR_VAL_LOSS] = m->loss, [TD_MONITOR_VAL_ACCURACY] = m->accuracy,
      [TD_MONITOR_VAL_TOP_K] = m->top_k, [TD_MONITOR_VAL_MAE] = m->mae};
  td_cb_decision d;

  td_callbacks_epoch_end_all(c, &t->cb, epoch, v, t->spec->opt.lr, &d);
  if (d.save_best)
    save_best(t, epoch, t->cb.kb_best);
  if (d.lr_reduced) {
    td_model_progress p;

    td_model_get_progress(t->model, &p);
    p.lr_factor = t->cb.lr_factor;
    if (td_model_set_progress(t->model, &p) < 0)
      return fail(TD_EINVAL, "reduce_lr_on_plateau: %s", td_model_error(t->model));
    td_info("reduce_lr_on_plateau: %s has not improved for %u epoch%s: the learning rate is "
            "now %g times the schedule's (%g at its base)", td_monitor_name(c->plateau.monitor),
            c->plateau.patience, c->plateau.patience == 1 ? "" : "s", t->cb.lr_factor,
            t->spec->opt.lr * t->cb.lr_factor);
  }
  if (d.stop && epoch < t->spec->epochs) {
    t->stop_pending = epoch;
    td_info("early stopping: %s has not improved by more than %g for %u epoch%s (best %.4f): "
            "training ends after epoch %u of %u", td_monitor_name(c->early_stop.monitor),
            (double)c->early_stop.min_delta, t->cb.es_wait, t->cb.es_wait == 1 ? "" : "s",
            t->cb.es_best, epoch, t->spec->epochs);
  }
  return 0;
}

static int on_end(trainer *t) {
  char epochs[16], acc[32], seed[32];
  const td_st_meta meta[] = {
      {"format", "pt"},       {"traind.job", t->spec->name}, {"traind.epochs", epochs},
      {"traind.seed", seed},  {"traind.accuracy", acc},
  };
  const char *model = t->a->output, *fallback = t->a->fallback;
  sigset_t term;
  int rc;

  if (t->test.count > 0)
    emit_eval(t->spec, t->test_epoch, &t->test, &t->last);
  /* The final state: traind keeps it when the job succeeds, for `submit
   * --continue` (a job that goes on from here). */
  checkpoint_final(t);
  snprintf(epochs, sizeof(epochs), "%u", t->stop_pending ? t->stop_pending : t->spec->epochs);
  snprintf(seed, sizeof(seed), "%llu", (unsigned long long)t->spec->seed);
  snprintf(acc, sizeof(acc), "%.6f", t->last.accuracy);
  /* Past this point the job finishes: a cancel must not leave half a file. */
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigaddset(&term, SIGINT);
  sigprocmask(SIG_BLOCK, &term, NULL);
  errno = 0;
  if ((rc = td_model_save(t->model, model, meta, TD_ARRAY_SIZE(meta))) < 0) {
    int saved = errno, code;
    char cause[384], cause2[384], warning[1024];

    if (!is_write_error(rc))
      return fail(rc, "%s", td_model_error(t->model));
    code = write_cause(model, rc, saved, cause, sizeof(cause));
    if (fallback == NULL || strcmp(fallback, model) == 0)
      return fail(code, "cannot write the model to %s: %s", model, cause);
    /* The training is done: losing it for a path would waste all of it. */
    td_error("cannot write the model to %s: %s; writing it to the job's directory instead",
             model, cause);
    errno = 0;
    if ((rc = td_model_save(t->model, fallback, meta, TD_ARRAY_SIZE(meta))) < 0) {
      saved = errno;
      if (!is_write_error(rc))
        return fail(rc, "cannot write the model to %s: %s; nor to %s: %s", model, cause,
                    fallback, td_model_error(t->model));
      write_cause(fallback, rc, saved, cause2, sizeof(cause2));
      return fail(code, "cannot write the model to %s: %s; nor to %s: %s", model, cause,
                  fallback, cause2);
    }
    snprintf(warning, sizeof(warning), "the model could not be written to %s (%s), so it was "
             "kept in the job's directory: %s; copy it from there, since traind removes it "
             "with the job (retention)", model, cause, fallback);
    td_warn("%s", warning);
    emit_msg("warning", "msg", warning);
    model = fallback;
  }
  {
    td_imsg b;

    td_imsg_begin(&b, TD_IMSG_REPORT, "done");
    td_imsg_f64(&b, "accuracy", t->last.accuracy);
    td_imsg_f64(&b, "loss", t->last.loss);
    td_imsg_f64(&b, "top_k", t->last.top_k);
    td_imsg_f64(&b, "mae", t->last.mae);
    td_imsg_f64(&b, "samples_per_sec",
                t->train_time > 0 ? (double)t->train_samples / t->train_time : 0.0);
    td_imsg_str(&b, "model", model);
    emit(&b);
  }
  td_info("done: model written to %s", model);
  return 0;
}

/* Early stopping: the job ends here, as succeeded, with the model as it is. */
static int finish_early(trainer *t) {
  int rc = on_end(t);

  t->finished = 1;
  return rc;
}

/* Drain the ring until END (0) or a failure (the exit status). */
static int train(trainer *t) {
  const td_layout *l = td_model_layout(t->model);
  char why[512];
  int rc;

  for (;;) {
    const void *slot;
    const td_batch_hdr *h;
    size_t len;
    int reason = 0;
    double wait_from;

    atomic_fetch_add(&beats, 1);
    atomic_store(&waiting, 1);
    wait_from = td_now_mono();
    rc = td_ring_read_begin(t->ring, &slot, &len);
    atomic_store(&waiting, 0);
    if (first_batch > 0) /* the wait for the first batch is start-up, not step time */
      data_wait += td_now_mono() - wait_from;
    else
      first_batch = td_now_mono();
    if (rc < 0) {
      /* traind shuts the ring down after it asks for a stop. */
      if (stop_requested)
        return stop_now(t);
      if (rc == TD_ECLOSED && td_ring_is_shutdown(t->ring, &reason) && reason < 0)
        return fail(reason, "the data loader failed: %s (see the job log)", td_strerror(reason));
      return fail(rc == TD_ECLOSED ? TD_EDATA : rc,
                  "the data stream ended before the end of training: %s", td_strerror(rc));
    }
    if (len < sizeof(*h))
      return fail(TD_EDATA, "a %zu-byte batch is shorter than its header", len);
    h = slot;
    switch (h->kind) {
    case TD_BATCH_TRAIN:
    case TD_BATCH_TEST:
    case TD_BATCH_VAL:
      if ((rc = check_batch(h, len, t->spec, l, why, sizeof(why))) < 0)
        return fail(rc, "bad batch from the loader: %s", why);
      rc = (h->kind == TD_BATCH_TRAIN  ? on_train
            : h->kind == TD_BATCH_TEST ? on_test
                                       : on_val)(t, h, td_batch_pixels(h), td_batch_targets(h));
      if (rc != 0 || t->finished)
        return rc;
      break;
    case TD_BATCH_END:
      return on_end(t);
    case TD_BATCH_ERROR:
      td_batch_error_text(h, len, why, sizeof(why));
      return fail(h->error > TD__ERR_BASE && h->error < TD__ERR_END ? h->error : TD_EDATA,
                  "data loader: %s", why);
    default:
      return fail(TD_EDATA, "the loader sent a batch of unknown kind %u", h->kind);
    }
    td_ring_read_end(t->ring);
  }
}

/* --probe: one report on stdout for traind, "probe" (exit 0) or
 * "probe_failed" (exit 1), framed as the events are (proto/INTERNAL.md).
 * A process of its own: the probe leaves a CUDA context behind. */
static int probe_main(const char *device) {
  td_device_probe p;
  td_imsg b;
  const void *frame;
  size_t len;
  char err[512] = "";
  int rc = td_backend_probe(device, &p, err, sizeof(err)), sent;

  if (rc < 0) {
    td_imsg_begin(&b, TD_IMSG_REPORT, "probe_failed");
    td_imsg_str(&b, "code", td_err_name(rc));
    td_imsg_str(&b, "msg", err[0] ? err : td_strerror(rc));
  } else {
    td_imsg_begin(&b, TD_IMSG_REPORT, "probe");
    td_imsg_u64(&b, "total", p.total);
    td_imsg_u64(&b, "free", p.free);
    td_imsg_u64(&b, "overhead", p.overhead);
  }
  sent = td_imsg_end(&b, &frame, &len) == 0 && write(STDOUT_FILENO, frame, len) == (ssize_t)len;
  if (!sent)
    td_error("cannot send the probe's report: %s", b.p.why[0] ? b.p.why : strerror(errno));
  td_imsg_free(&b);
  return rc == 0 && sent ? 0 : EXIT_JOB;
}

int main(int argc, char **argv) {
  struct sigaction sa = {.sa_handler = on_term};
  struct sigaction sa_stop = {.sa_handler = on_stop, .sa_flags = SA_RESTART};
  char err[512];
  static td_jobspec spec, job; /* job: as its file says */
  td_plan plan;
  trainer t = {0};
  args a;
  int rc, status;

  td_log_init("traind-worker", TD_LOG_INFO);
  if (parse_args(argc, argv, &a) < 0) {
    usage(stderr);
    return EXIT_USAGE;
  }
  if (a.events_fd >= 0)
    events_fd = a.events_fd;
  else if (fcntl(3, F_GETFD) >= 0)
    events_fd = 3;
  /* Before any file or segment is opened: everything the job touches, it
   * touches with its user's rights. */
  if (a.as_user != NULL) {
    td_identity id;

    if (td_identity_parse(a.as_user, &id) < 0) {
      fail(TD_EINVAL, "--as-user '%s' is not NAME:UID:GID", a.as_user);
      return EXIT_USAGE;
    }
    if ((rc = td_privdrop_become(&id, err, sizeof(err))) < 0) {
      fail(rc, "%s", err);
      return EXIT_USAGE;
    }
  }
  if (a.probe != NULL)
    return probe_main(a.probe);
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigemptyset(&sa_stop.sa_mask);
  sigaction(SIGUSR1, &sa_stop, NULL);
  signal(SIGPIPE, SIG_IGN);
  /* A worker never outlives traind: with traind gone, nobody would read
   * its events or release its memory. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (strncmp(a.device, "cpu", 3) == 0)
    tune_blas(argv);

  /* The job's description, with the samples' stored type (which sizes
   * the staging arena) as traind learnt it at submit. */
  if ((rc = td_jobdesc_load(a.job, &spec, err, sizeof(err))) < 0) {
    status = fail(rc, "%s", err);
    return rc == TD_EVERSION ? EXIT_USAGE : status;
  }
  if (a.micro_batch > spec.batch_size)
    return fail(TD_EINVAL, "--micro-batch %u is larger than the batch size %u", a.micro_batch,
                spec.batch_size);
  job = spec;
  /* Admission's remedies, which the job must allow: the model runs as
   * they say from the start, as if it had re-planned to them. */
  if (a.precision >= 0 && (td_precision)a.precision != spec.precision) {
    td_remedy r = a.precision == TD_PREC_BF16 ? TD_REMEDY_BF16 : TD_REMEDY_FP16;

    if (spec.precision != TD_PREC_FP32 || a.precision == TD_PREC_FP32 ||
        !td_jobspec_allows(&spec, r))
      return fail(TD_EINVAL, "--precision %s: the job runs %s and does not allow it",
                  td_precision_name((td_precision)a.precision),
                  td_precision_name(spec.precision));
    spec.precision = (td_precision)a.precision;
  }
  if (a.recompute && !spec.recompute) {
    if (!td_jobspec_allows(&spec, TD_REMEDY_RECOMPUTE))
      return fail(TD_EINVAL, "--recompute: the job does not allow the recompute remedy");
    spec.recompute = 1;
  }
  if (a.shrink > 1 && (!td_jobspec_allows(&spec, TD_REMEDY_SHRINK) ||
                       spec.batch_size % a.shrink != 0 ||
                       a.micro_batch > spec.batch_size / a.shrink))
    return fail(TD_EINVAL, "--shrink %u: the job does not allow it, or it does not divide the "
                "batch of %u into updates of at least --micro-batch %u", a.shrink,
                spec.batch_size, a.micro_batch);

  if ((rc = td_backend_create(a.device, a.budget, &t.be, err, sizeof(err))) < 0)
    return fail(rc, "%s", err);
  /* traind's probe of the device: every plan here counts it, as admission did */
  td_backend_set_overhead(t.be, a.overhead);
  t.a = &a;
  t.spec = &spec;
  t.job = &job;
  status = EXIT_JOB;
  {
    td_mem_stats mem;
    td_backend_mem(t.be, &mem);
    if ((rc = td_plan_at(&spec, a.micro_batch, spec.precision, spec.recompute != 0, a.shrink,
                         mem.overhead, &plan)) < 0) {
      status = fail(rc, "cannot plan the job at micro-batch %u: %s", a.micro_batch,
                    td_strerror(rc));
      goto destroy_backend;
    }
  }
  run_bit_identical = td_plan_bit_identical(&job, &plan);
  {
    td_imsg b;

    td_imsg_begin(&b, TD_IMSG_REPORT, "plan");
    td_imsg_u64(&b, "micro_batch", plan.micro_batch);
    td_imsg_u64(&b, "params", plan.params);
    td_imsg_u64(&b, "grads", plan.grads);
    td_imsg_u64(&b, "optim", plan.optim);
    td_imsg_u64(&b, "activations", plan.activations);
    td_imsg_u64(&b, "workspace", plan.workspace);
    td_imsg_u64(&b, "staging", plan.staging);
    td_imsg_u64(&b, "overhead", plan.overhead);
    td_imsg_u64(&b, "total", plan.total);
    emit(&b);
  }
  if ((rc = td_model_create_as(t.be, &spec, a.micro_batch, a.shrink, &t.model, err,
                               sizeof(err))) < 0) {
    status = fail(rc, "%s", err);
    goto destroy_backend;
  }
  /* Testing: counted from here, so the fault lands in training.  traind
   * gives the worker a pipe (a socket under libuv) on stdin. */
  td_backend_inject_oom(t.be, spec.fail_alloc);
  t.ctl_fd = -1;
  {
    struct stat st;
    if (fstat(STDIN_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) &&
        fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK) == 0)
      t.ctl_fd = STDIN_FILENO;
  }
  t.policy = (td_ckpt_policy){.every_steps = spec.ckpt_every_steps,
                              .every_seconds = spec.ckpt_every_seconds};
  t.state_floats = td_model_state_floats(t.model);
  if (a.checkpoint != NULL || a.resume != NULL) {
    size_t bytes = (size_t)t.state_floats * sizeof(float);

    t.state = malloc(bytes > 0 ? bytes : 1);
    if (t.state == NULL && a.checkpoint != NULL)
      td_warn("no checkpoints: out of host memory for the model's %llu-value state",
              (unsigned long long)t.state_floats);
  }
  t.cb_on = td_callbacks_any(&spec.callbacks) && (spec.val_fraction > 0 || spec.val_count > 0);
  td_callbacks_init(&spec.callbacks, &t.cb);
  if (spec.callbacks.keep_best.enabled)
    best_path(a.output, t.best_path, sizeof(t.best_path));
  if (a.resume != NULL && (status = resume(&t, a.resume)) != 0)
    goto destroy_model;
  /* A checkpoint holds the state past init: the file is read only when the
   * job starts from the beginning (and may be gone by the time it resumes,
   * or is continued). */
  if (spec.init[0] != '\0' && !t.check_resume && (status = init_from(&t, spec.init)) != 0)
    goto destroy_model;
  if (a.checkpoint == NULL) {
    free(t.state);
    t.state = NULL;
  }
  status = EXIT_JOB;
  err[0] = '\0';
  if ((rc = td_ring_open_owned(a.ring, geteuid(), &t.ring, err, sizeof(err))) < 0) {
    status = fail(rc, "cannot open the data ring %s: %s", a.ring, err[0] ? err : why(rc));
    goto destroy_model;
  }
  {
    size_t bytes;
    void *map = td_ring_mapping(t.ring, &bytes);

    /* Pinned, the slots upload asynchronously (CUDA); a slot is released
     * only after its step's sync, which every model call ends with. */
    if ((rc = td_backend_host_register(t.be, map, bytes)) == 0)
      t.ring_map = map;
    else
      td_warn("uploads from the data ring stay synchronous: cannot pin it: %s",
              td_backend_error(t.be));
  }
  if (plan.precision != TD_PREC_FP32 || plan.recompute || plan.shrink > 1)
    td_info("training %s on %s: micro-batch %u x %u, %s%s, %u update%s per batch, plan %llu "
            "bytes", spec.name, a.device, a.micro_batch, plan.accumulation,
            td_precision_name(plan.precision),
            plan.recompute ? " with activation recomputation" : "", plan.shrink,
            plan.shrink == 1 ? "" : "s", (unsigned long long)plan.total);
  else
    td_info("training %s on %s: micro-batch %u, plan %llu bytes", spec.name, a.device,
            a.micro_batch, (unsigned long long)plan.total);
  {
    pthread_t hb;
    pthread_attr_t attr;
    sigset_t usr1, old;

    /* The thread starts with SIGUSR1 blocked: only the main loop takes it. */
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&hb, &attr, heartbeat_main, NULL) != 0)
      td_warn("no heartbeat thread: traind may take a long step for a hang");
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  t.ckpt_time = td_now_mono();
  tb_open(&a, &spec);
  status = train(&t);
  tb_close();

  if (t.ring_map != NULL)
    td_backend_host_unregister(t.be, t.ring_map);
  td_ring_close(t.ring);
destroy_model:
  free(t.state);
  td_model_destroy(t.model);
destroy_backend:
  td_backend_destroy(t.be);
  return status;
}
