/* submit --wait and wait: follow one job until it ends.
 *
 * Events come from the status socket, but PUB/SUB drops messages (a slow
 * joiner misses the first ones, and the job may end before we subscribe),
 * so the job is also read with "show" once after subscribing and whenever
 * a second passes without news of it. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nanomsg/nn.h>

#include "client.h"
#include "error.h"
#include "util.h"

#define LINE_EVERY_S 2.0 /* plain output: at most one progress line per period */
#define DRAW_EVERY_S 0.1 /* terminal: redraws per second are for eyes, not for logs */
#define QUIET_S 1.0      /* "show" after this long without news */

volatile sig_atomic_t cli_interrupted;

typedef struct watch {
  cli *c;
  uint64_t id;
  int tty;          /* progress redrawn in place on stdout */
  int quiet;        /* --json: nothing but the final job map */
  int line_open;    /* a progress line is on the terminal, without its newline */
  double last_line; /* when the last progress line was printed or drawn */
  double last_news; /* last event or show about this job */
  char state[16];
  char device[64];
  char reason[256];    /* why it waits, while queued ("" if traind did not say) */
  cli_progress p;      /* p.eta is shown only once cli_eta_due */
  double eta;          /* the daemon's estimate */
  int64_t started_ms;  /* this run's start, from show; 0 if unknown */
  double seen_running; /* td_now_mono() when we saw it running, if started_ms is not known */
  int plan_running;    /* p's plan is the one it runs at, not a queued job's */
  double val_acc;      /* show's val_accuracy, -1 if none */
  uint64_t top_k;      /* show's top_k, 0 if none */
  int have_progress;
} watch;

static void on_sigint(int sig) {
  (void)sig;
  cli_interrupted = 1;
}

void cli_catch_sigint(struct sigaction *old) {
  struct sigaction sa;

  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_sigint; /* no SA_RESTART: a blocked nn_recv returns EINTR */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, old);
}

void cli_nap(double seconds) {
  struct timespec ts;

  ts.tv_sec = (time_t)seconds;
  ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
  nanosleep(&ts, NULL); /* EINTR ends it early, as it should */
}

static int running(const watch *w) {
  return strcmp(w->state, "running") == 0;
}

/* The daemon's ETA from its first steps extrapolates start-up (loading,
 * warm-up): e.g. "ETA 13:56" for a job that takes seconds. */
static double eta_shown(const watch *w) {
  uint64_t done = (w->p.epoch > 0 ? w->p.epoch - 1 : 0) * w->p.steps + w->p.step;
  double ran;

  if (w->started_ms > 0)
    ran = (double)(td_now_unix_ms() - w->started_ms) / 1000.0;
  else
    ran = w->seen_running > 0 ? td_now_mono() - w->seen_running : 0;
  return cli_eta_due(ran, done, w->p.epochs * w->p.steps) ? w->eta : -1;
}

static void progress_text(const watch *w, int bar, size_t cols, char *buf, size_t cap) {
  cli_progress p = w->p;

  p.eta = eta_shown(w);
  cli_fmt_progress_line(&p, bar, cols, buf, cap);
}

static int showing_progress(const watch *w) {
  return w->have_progress && running(w);
}

/* "job 4 running on cpu0 at micro-batch 16x4", "job 4 queued: behind job 3" */
static void state_text(const watch *w, char *buf, size_t cap) {
  char micro[48];
  int n;

  n = snprintf(buf, cap, "job %" PRIu64 " %s", w->id, w->state[0] ? w->state : "?");
  if (n < 0 || (size_t)n >= cap)
    return;
  if (strcmp(w->state, "queued") == 0 && w->reason[0] != '\0') {
    snprintf(buf + n, cap - (size_t)n, ": %s", w->reason);
    return;
  }
  micro[0] = '\0';
  if (running(w) && w->p.accumulation > 1)
    snprintf(micro, sizeof(micro), " at micro-batch %" PRIu64 "x%" PRIu64, w->p.micro_batch,
             w->p.accumulation);
  if (w->device[0] != '\0')
    snprintf(buf + n, cap - (size_t)n, " on %s%s", w->device, micro);
}

static void draw_line(watch *w) {
  /* a line as wide as the terminal wraps and \r no longer rewrites it */
  size_t cols = cli_term_columns(STDOUT_FILENO) - 1;
  char line[512];

  if (showing_progress(w))
    progress_text(w, 1, cols, line, sizeof(line));
  else
    state_text(w, line, sizeof(line));
  line[cli_fit_width(line, strlen(line), cols)] = '\0';
  printf("\r%s\033[K", line);
  fflush(stdout);
  w->line_open = 1;
}

/* A line of its own that must not be overwritten (an eval, a re-plan). */
static void print_above(watch *w, const char *text) {
  if (w->quiet)
    return;
  if (w->line_open)
    fputs("\r\033[K", stdout);
  puts(text);
  if (w->line_open)
    draw_line(w);
  else
    fflush(stdout);
}

static void render(watch *w, int state_changed) {
  char line[512];
  double now = td_now_mono();

  if (w->quiet || cli_state_is_final(w->state))
    return; /* the outcome is printed once, at the end */
  if (w->tty) {
    if (state_changed || now - w->last_line >= DRAW_EVERY_S) {
      draw_line(w);
      w->last_line = now;
    }
    return;
  }
  if (state_changed) {
    state_text(w, line, sizeof(line));
    puts(line);
  }
  if (showing_progress(w) && (state_changed || now - w->last_line >= LINE_EVERY_S)) {
    progress_text(w, 0, 0, line, sizeof(line));
    puts(line);
    w->last_line = now;
  }
  fflush(stdout);
}

/* A plan from show or job.replan.  A change while it runs is a re-plan
 * (a lower budget, an out-of-memory failure) and gets its own line; the
 * plan of a queued job is only what admission starts from. */
static void note_plan(watch *w, const msgpack_object *plan, int replan_event) {
  char line[256], size[32] = "?", was[48] = "";
  uint64_t mb, acc = 1, total;
  int changed;

  if (td_obj_u64(plan, "micro_batch", &mb) != 0 || mb == 0)
    return;
  td_obj_u64(plan, "accumulation", &acc);
  changed = mb != w->p.micro_batch || acc != w->p.accumulation;
  if (changed && (replan_event || (w->plan_running && running(w)))) {
    if (td_obj_u64(plan, "total", &total) == 0)
      td_format_size(total, size, sizeof(size));
    if (w->plan_running && w->p.micro_batch > 0)
      snprintf(was, sizeof(was), " (was %" PRIu64 "x%" PRIu64 ")", w->p.micro_batch,
               w->p.accumulation);
    snprintf(line, sizeof(line),
             "job %" PRIu64 " re-planned%s%s: micro-batch %" PRIu64 "x%" PRIu64 "%s, "
             "reserving %s", w->id, w->device[0] ? " on " : "", w->device, mb, acc, was, size);
    w->p.micro_batch = mb;
    w->p.accumulation = acc;
    print_above(w, line);
  }
  w->p.micro_batch = mb;
  w->p.accumulation = acc;
  w->plan_running = running(w) || replan_event;
}

static const struct {
  const char *key;
  size_t offset;
} counters[] = {
  {"epoch", offsetof(watch, p.epoch)},
  {"epochs", offsetof(watch, p.epochs)},
  {"step", offsetof(watch, p.step)},
  {"steps", offsetof(watch, p.steps)},
};

/* Takes whatever fields the map has: a progress event or a show job map. */
static void update(watch *w, const msgpack_object *m) {
  char state[sizeof(w->state)], device[sizeof(w->device)], *reason;
  const msgpack_object *plan;
  int changed = 0, progressed = 0;
  uint64_t u;
  size_t k;
  double v;
  int64_t i;

  if (td_obj_cstr(m, "state", state, sizeof(state)) == 0) {
    cli_sanitize(state);
    if (strcmp(state, w->state) != 0) {
      memcpy(w->state, state, sizeof(state));
      changed = 1;
      if (!running(w))
        w->plan_running = 0;
      else if (w->seen_running == 0)
        w->seen_running = td_now_mono();
    }
  }
  if (td_obj_cstr(m, "device", device, sizeof(device)) == 0) {
    cli_sanitize(device);
    memcpy(w->device, device, sizeof(device));
  }
  if ((reason = cli_field_dup(m, "wait_reason")) != NULL) {
    /* a new reason is news worth a line of a log, as a new state is */
    if (strcmp(reason, w->reason) != 0 && strcmp(w->state, "queued") == 0)
      changed = 1;
    snprintf(w->reason, sizeof(w->reason), "%s", reason);
    free(reason);
  }
  if (td_obj_i64(m, "started_ms", &i) == 0)
    w->started_ms = i;
  if (td_obj_f64(m, "val_accuracy", &v) == 0)
    w->val_acc = v;
  if (td_obj_u64(m, "top_k", &u) == 0)
    w->top_k = u;
  for (k = 0; k < TD_ARRAY_SIZE(counters); k++) {
    uint64_t *dst = (uint64_t *)((char *)w + counters[k].offset);

    if (td_obj_u64(m, counters[k].key, &u) == 0 && u != *dst) {
      *dst = u;
      progressed = 1;
    }
  }
  if (td_obj_f64(m, "loss", &v) == 0)
    w->p.loss = v;
  if (td_obj_f64(m, "train_accuracy", &v) == 0)
    w->p.train_acc = v;
  if (td_obj_f64(m, "train_mae", &v) == 0)
    w->p.train_mae = v;
  if (td_obj_f64(m, "samples_per_sec", &v) == 0)
    w->p.sps = v;
  if (td_obj_f64(m, "eta_s", &v) == 0)
    w->eta = v;
  if (w->p.epochs > 0 && (w->p.step > 0 || w->p.epoch > 0))
    w->have_progress = 1;
  if (td_obj_map(m, "plan", &plan) == 0)
    note_plan(w, plan, 0);
  if (changed || progressed)
    render(w, changed);
}

/* What the events and show carry at an epoch's end. */
static void on_eval(watch *w, const msgpack_object *m) {
  cli_epoch_end e = {.epochs = w->p.epochs, .train_loss = w->p.loss,
                     .train_acc = w->p.train_acc, .val_loss = -1, .val_acc = w->val_acc,
                     .test_loss = -1, .test_acc = -1, .more = 1, .top_k = w->top_k,
                     .train_mae = w->p.train_mae, .val_mae = -1, .test_mae = -1,
                     .val_top_k = -1, .test_top_k = -1};
  char line[256];

  if (w->quiet || td_obj_u64(m, "epoch", &e.epoch) != 0)
    return;
  td_obj_f64(m, "loss", &e.test_loss);
  td_obj_f64(m, "accuracy", &e.test_acc);
  td_obj_f64(m, "val_loss", &e.val_loss);
  td_obj_f64(m, "val_accuracy", &e.val_acc); /* when traind sends it; else show's */
  td_obj_f64(m, "mae", &e.test_mae);
  td_obj_f64(m, "val_mae", &e.val_mae);
  td_obj_f64(m, "top_k_accuracy", &e.test_top_k);
  td_obj_f64(m, "val_top_k_accuracy", &e.val_top_k);
  cli_fmt_epoch_end(&e, line, sizeof(line));
  print_above(w, line);
}

static int poll_show(watch *w);

static int on_event(watch *w, const void *buf, size_t len) {
  char err[256], state[16];
  const char *topic;
  const void *body;
  size_t body_len;
  const msgpack_object *m, *plan;
  td_msg *msg = NULL;
  uint64_t id;
  int rc = 0;

  if (td_event_split(buf, len, &topic, &body, &body_len) != 0 ||
      td_msg_decode(body, body_len, &msg, err, sizeof(err)) != 0)
    return 0; /* not ours to judge: a newer daemon may publish more */
  m = td_msg_root(msg);
  if (m->type != MSGPACK_OBJECT_MAP || td_obj_u64(m, "id", &id) != 0 || id != w->id)
    goto free_msg;
  w->last_news = td_now_mono();
  if (strcmp(topic, TD_TOPIC_JOB_EVAL) == 0) {
    /* val_accuracy is only in show, until job.eval carries it */
    if (td_obj_get(m, "val_accuracy", &plan) != 0)
      rc = poll_show(w);
    on_eval(w, m);
  } else if (strcmp(topic, TD_TOPIC_JOB_REPLAN) == 0) {
    if (td_obj_map(m, "plan", &plan) == 0)
      note_plan(w, plan, 1);
  } else if (strcmp(topic, TD_TOPIC_JOB_STATE) == 0 &&
             td_obj_cstr(m, "state", state, sizeof(state)) == 0 &&
             strcmp(state, w->state) != 0 && !cli_state_is_final(state)) {
    /* admitted or sent back: show says why it waits, its plan, its start */
    rc = poll_show(w);
  } else if (strcmp(topic, TD_TOPIC_JOB_PROGRESS) == 0 ||
             strcmp(topic, TD_TOPIC_JOB_STATE) == 0) {
    update(w, m);
  }

free_msg:
  td_msg_free(msg);
  return rc;
}

static int poll_show(watch *w) {
  const msgpack_object *job;
  td_msg *reply = NULL;
  int rc = cli_show_job(w->c, w->id, &reply, &job);

  if (rc != 0)
    return rc;
  update(w, job);
  w->last_news = td_now_mono();
  td_msg_free(reply);
  return 0;
}

int cli_status_address(cli *c, char **addr) {
  td_pack p;
  td_msg *reply = NULL;
  int rc;

  td_pack_init(&p);
  td_pack_request(&p, "info", 0);
  rc = cli_call(c, &p, &reply, NULL);
  td_pack_free(&p);
  if (rc != 0)
    return rc;
  *addr = cli_field_dup(td_msg_root(reply), "status_socket");
  td_msg_free(reply);
  return 0;
}

static void print_outcome(uint64_t id, const char *state, const msgpack_object *job) {
  char *model = cli_field_dup(job, "model");
  char *error = cli_field_dup(job, "error");
  const char *sep = ":";
  int64_t status;
  double acc;

  printf("job %" PRIu64 " ", id);
  if (strcmp(state, "succeeded") == 0) {
    fputs("succeeded", stdout);
    if (td_obj_f64(job, "accuracy", &acc) == 0 && acc >= 0) {
      printf(": test accuracy %.4f", acc);
      sep = ",";
    }
    if (model != NULL && model[0] != '\0')
      printf("%s model written to %s", sep, model);
  } else if (strcmp(state, "failed") == 0) {
    fputs("failed", stdout);
    if (error != NULL && error[0] != '\0')
      printf(": %s", error);
    else if (td_obj_i64(job, "exit_status", &status) == 0)
      printf(" (exit status %" PRId64 ")", status);
  } else if (strcmp(state, "cancelled") == 0) {
    fputs("was cancelled", stdout);
    if (error != NULL && error[0] != '\0')
      printf(": %s", error);
  } else {
    printf("is %s", state);
  }
  fputc('\n', stdout);
  free(model);
  free(error);
}

static int finish(watch *w) {
  const msgpack_object *job;
  td_msg *reply = NULL;
  char state[16];
  int rc = cli_show_job(w->c, w->id, &reply, &job);

  if (rc != 0)
    return rc;
  if (td_obj_cstr(job, "state", state, sizeof(state)) != 0)
    snprintf(state, sizeof(state), "%s", w->state);
  cli_sanitize(state);
  if (w->c->json) {
    cli_json_print(stdout, job);
    fputc('\n', stdout);
  } else {
    print_outcome(w->id, state, job);
  }
  td_msg_free(reply);
  return strcmp(state, "succeeded") == 0 ? CLI_EXIT_OK : CLI_EXIT_JOB;
}

static void end_line(watch *w) {
  if (!w->line_open)
    return;
  fputs(w->have_progress ? "\n" : "\r\033[K", stdout);
  fflush(stdout);
  w->line_open = 0;
}

/* One message, or a timeout: then the caller polls "show".  0, or an exit
 * code from a "show" that an event called for. */
static int receive(watch *w, int *sub) {
  void *buf = NULL;
  int n, rc;

  if (*sub < 0) {
    cli_nap(1.0); /* no status socket: "show" is all we have */
    return 0;
  }
  n = nn_recv(*sub, &buf, NN_MSG, 0);
  if (n >= 0) {
    rc = on_event(w, buf, (size_t)n);
    nn_freemsg(buf);
    return rc;
  }
  if (nn_errno() != ETIMEDOUT && nn_errno() != EAGAIN && nn_errno() != EINTR) {
    nn_close(*sub);
    *sub = -1;
  }
  return 0;
}

int cli_wait(cli *c, uint64_t id) {
  watch w = {.c = c, .id = id, .eta = -1, .val_acc = -1,
             .p = {.loss = NAN, .train_acc = NAN, .sps = -1, .eta = -1, .more = 1,
                   .train_mae = -1}};
  struct sigaction old_int;
  char *status_addr = NULL;
  int sub = -1, rc;

  w.quiet = c->json;
  w.tty = !c->json && isatty(STDOUT_FILENO);
  rc = cli_status_address(c, &status_addr);
  if (rc != 0)
    return rc;
  if (status_addr == NULL || status_addr[0] == '\0' ||
      cli_subscribe(c, status_addr, &sub) != 0)
    cli_fail("following job %" PRIu64 " by asking traind every second instead", id);
  free(status_addr);

  cli_catch_sigint(&old_int);

  rc = poll_show(&w);
  while (rc == 0 && !cli_state_is_final(w.state)) {
    if (cli_interrupted) {
      rc = CLI_EXIT_INTERRUPTED;
      break;
    }
    rc = receive(&w, &sub);
    if (rc == 0 && !cli_state_is_final(w.state) && td_now_mono() - w.last_news >= QUIET_S)
      rc = poll_show(&w);
  }
  end_line(&w);
  if (rc == 0)
    rc = finish(&w);
  else if (rc == CLI_EXIT_INTERRUPTED)
    cli_fail("stopped waiting; job %" PRIu64 " is still %s (stop it with `traind-client "
             "cancel %" PRIu64 "`)", id, w.state[0] ? w.state : "queued", id);

  sigaction(SIGINT, &old_int, NULL);
  if (sub >= 0)
    nn_close(sub);
  return rc;
}
