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
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <nanomsg/nn.h>

#include "client.h"
#include "error.h"
#include "util.h"

#define BAR_WIDTH 18
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
  uint64_t epoch, epochs, step, steps;
  double loss, sps, eta;
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

static void append(char *buf, size_t cap, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...) {
  size_t len = strlen(buf);
  va_list ap;

  if (len + 1 >= cap)
    return;
  va_start(ap, fmt);
  vsnprintf(buf + len, cap - len, fmt, ap);
  va_end(ap);
}

static void progress_text(const watch *w, int bar, char *buf, size_t cap) {
  char num[32];

  buf[0] = '\0';
  if (bar)
    append(buf, cap, "[epoch %" PRIu64 "/%" PRIu64 "]", w->epoch, w->epochs);
  else
    append(buf, cap, "epoch %" PRIu64 "/%" PRIu64, w->epoch, w->epochs);
  if (w->steps > 0) {
    uint64_t step = w->step < w->steps ? w->step : w->steps;
    unsigned pct = (unsigned)(step * 100 / w->steps);

    if (bar) {
      size_t fill = (size_t)(step * BAR_WIDTH / w->steps), i;

      append(buf, cap, " [");
      for (i = 0; i < BAR_WIDTH; i++)
        append(buf, cap, "%c", i < fill ? '#' : '-');
      append(buf, cap, "] %3u%%  step %" PRIu64 "/%" PRIu64, pct, w->step, w->steps);
    } else {
      append(buf, cap, "  step %" PRIu64 "/%" PRIu64 " (%u%%)", w->step, w->steps, pct);
    }
  }
  if (isfinite(w->loss) && w->loss >= 0)
    append(buf, cap, "  loss %.4f", w->loss);
  if (w->sps > 0 && w->sps < 1e15) {
    cli_fmt_count((uint64_t)(w->sps + 0.5), num, sizeof(num));
    append(buf, cap, "  %s samples/s", num);
  }
  if (w->eta >= 0 && w->eta < 1e9) {
    cli_fmt_clock(w->eta, num, sizeof(num));
    append(buf, cap, "  ETA %s", num);
  }
}

static int showing_progress(const watch *w) {
  return w->have_progress && strcmp(w->state, "running") == 0;
}

static void state_text(const watch *w, char *buf, size_t cap) {
  buf[0] = '\0';
  append(buf, cap, "job %" PRIu64 " %s", w->id, w->state[0] ? w->state : "?");
  if (w->device[0] != '\0')
    append(buf, cap, " on %s", w->device);
}

static void draw_line(watch *w) {
  char line[512];
  struct winsize ws;

  if (showing_progress(w))
    progress_text(w, 1, line, sizeof(line));
  else
    state_text(w, line, sizeof(line));
  /* a line longer than the terminal wraps and \r no longer rewrites it */
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 &&
      strlen(line) >= ws.ws_col)
    line[ws.ws_col - 1] = '\0';
  printf("\r%s\033[K", line);
  fflush(stdout);
  w->line_open = 1;
}

/* A line of its own that must not be overwritten (an eval, a warning). */
static void print_above(watch *w, const char *text) {
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
    progress_text(w, 0, line, sizeof(line));
    puts(line);
    w->last_line = now;
  }
  fflush(stdout);
}

static const struct {
  const char *key;
  size_t offset;
} counters[] = {
  {"epoch", offsetof(watch, epoch)},
  {"epochs", offsetof(watch, epochs)},
  {"step", offsetof(watch, step)},
  {"steps", offsetof(watch, steps)},
};

/* Takes whatever fields the map has: a progress event or a show job map. */
static void update(watch *w, const msgpack_object *m) {
  char state[sizeof(w->state)], device[sizeof(w->device)];
  int changed = 0, progressed = 0;
  uint64_t u;
  size_t k;
  double v;

  if (td_obj_cstr(m, "state", state, sizeof(state)) == 0) {
    cli_sanitize(state);
    if (strcmp(state, w->state) != 0) {
      memcpy(w->state, state, sizeof(state));
      changed = 1;
    }
  }
  if (td_obj_cstr(m, "device", device, sizeof(device)) == 0) {
    cli_sanitize(device);
    memcpy(w->device, device, sizeof(device));
  }
  for (k = 0; k < TD_ARRAY_SIZE(counters); k++) {
    uint64_t *dst = (uint64_t *)((char *)w + counters[k].offset);

    if (td_obj_u64(m, counters[k].key, &u) == 0 && u != *dst) {
      *dst = u;
      progressed = 1;
    }
  }
  if (td_obj_f64(m, "loss", &v) == 0)
    w->loss = v;
  if (td_obj_f64(m, "samples_per_sec", &v) == 0)
    w->sps = v;
  if (td_obj_f64(m, "eta_s", &v) == 0)
    w->eta = v;
  if (w->epochs > 0 && (w->step > 0 || w->epoch > 0))
    w->have_progress = 1;
  if (changed || progressed)
    render(w, changed);
}

static void on_eval(watch *w, const msgpack_object *m) {
  char line[128] = "";
  uint64_t epoch;
  double acc;

  if (w->quiet || td_obj_u64(m, "epoch", &epoch) != 0 || td_obj_f64(m, "accuracy", &acc) != 0)
    return;
  if (w->epochs > 0)
    append(line, sizeof(line), "epoch %" PRIu64 "/%" PRIu64 ": test accuracy %.4f", epoch,
           w->epochs, acc);
  else
    append(line, sizeof(line), "epoch %" PRIu64 ": test accuracy %.4f", epoch, acc);
  print_above(w, line);
}

static void on_event(watch *w, const void *buf, size_t len) {
  char err[256];
  const char *topic;
  const void *body;
  size_t body_len;
  const msgpack_object *m;
  td_msg *msg = NULL;
  uint64_t id;

  if (td_event_split(buf, len, &topic, &body, &body_len) != 0 ||
      td_msg_decode(body, body_len, &msg, err, sizeof(err)) != 0)
    return; /* not ours to judge: a newer daemon may publish more */
  m = td_msg_root(msg);
  if (m->type != MSGPACK_OBJECT_MAP || td_obj_u64(m, "id", &id) != 0 || id != w->id)
    goto free_msg;
  w->last_news = td_now_mono();
  if (strcmp(topic, "job.eval") == 0)
    on_eval(w, m);
  else if (strcmp(topic, "job.progress") == 0 || strcmp(topic, "job.state") == 0)
    update(w, m);

free_msg:
  td_msg_free(msg);
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

static int status_address(cli *c, char **addr) {
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

/* One message, or a timeout: then the caller polls "show". */
static void receive(watch *w, int *sub) {
  void *buf = NULL;
  int n;

  if (*sub < 0) {
    cli_nap(1.0); /* no status socket: "show" is all we have */
    return;
  }
  n = nn_recv(*sub, &buf, NN_MSG, 0);
  if (n >= 0) {
    on_event(w, buf, (size_t)n);
    nn_freemsg(buf);
    return;
  }
  if (nn_errno() != ETIMEDOUT && nn_errno() != EAGAIN && nn_errno() != EINTR) {
    nn_close(*sub);
    *sub = -1;
  }
}

int cli_wait(cli *c, uint64_t id) {
  watch w = {.c = c, .id = id, .loss = NAN, .sps = -1, .eta = -1};
  struct sigaction old_int;
  char *status_addr = NULL;
  int sub = -1, rc;

  w.quiet = c->json;
  w.tty = !c->json && isatty(STDOUT_FILENO);
  rc = status_address(c, &status_addr);
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
    receive(&w, &sub);
    if (!cli_state_is_final(w.state) && td_now_mono() - w.last_news >= QUIET_S)
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
