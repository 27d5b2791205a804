/* top: a live view of the devices and of the running and queued jobs.
 * traind has no one request for it, so each refresh asks `devices`, `list`
 * for each state and `show` for each running job (memory in use and the
 * plan are only in `show`): a handful of requests a second.
 *
 * It fits the terminal's width: columns that matter least go first, then
 * lines are cut (a queued job's reason, last, is what gets cut). */
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "util.h"

#define TOP_EVERY_S 1.0
#define TOP_JOBS 50 /* of each state */

/* Each table's columns, and which to leave out first when it is too wide
 * (lowest drop first; 0 never). */
typedef struct top_col {
  cli_job_col col;
  int drop;
} top_col;

static const top_col running_cols[] = {
  {CLI_COL_ID, 0},       {CLI_COL_NAME, 0},  {CLI_COL_OWNER, 3}, {CLI_COL_DEVICE, 6},
  {CLI_COL_PROGRESS, 0}, {CLI_COL_LOSS, 7},  {CLI_COL_TREND, 1}, {CLI_COL_ACC, 2},
  {CLI_COL_MICRO, 8},    {CLI_COL_MEM, 5},   {CLI_COL_SPEED, 4},
};

static const top_col queued_cols[] = {
  {CLI_COL_ID, 0}, {CLI_COL_NAME, 0}, {CLI_COL_OWNER, 2}, {CLI_COL_SUBMITTED, 1},
  {CLI_COL_REASON, 0},
};

typedef struct view {
  td_msg *devices, *running, *queued;
  const msgpack_object *devs, *queue;      /* arrays of maps */
  td_msg *shows[TOP_JOBS];
  const msgpack_object *jobs[TOP_JOBS];    /* running: show's job map */
  size_t njobs;
} view;

static void view_free(view *v) {
  size_t i;

  td_msg_free(v->devices);
  td_msg_free(v->running);
  td_msg_free(v->queued);
  for (i = 0; i < v->njobs; i++)
    td_msg_free(v->shows[i]);
}

static int list_array(cli *c, const char *state, td_msg **reply, const msgpack_object **jobs) {
  int rc = cli_list(c, state, TOP_JOBS, NULL, NULL, 0, reply);

  if (rc != 0)
    return rc;
  if (td_obj_array(td_msg_root(*reply), "jobs", jobs) != 0)
    return cli_malformed("list", "jobs");
  return 0;
}

/* On failure, what was fetched is still in v for view_free. */
static int view_fetch(cli *c, view *v) {
  const msgpack_object *run;
  uint32_t i;
  uint64_t id;
  int rc;

  rc = cli_request_id(c, "devices", NULL, &v->devices);
  if (rc != 0)
    return rc;
  if (td_obj_array(td_msg_root(v->devices), "devices", &v->devs) != 0)
    return cli_malformed("devices", "devices");
  rc = list_array(c, "running", &v->running, &run);
  if (rc == 0)
    rc = list_array(c, "queued", &v->queued, &v->queue);
  for (i = 0; rc == 0 && i < run->via.array.size && v->njobs < TOP_JOBS; i++) {
    if (td_obj_u64(&run->via.array.ptr[i], "id", &id) != 0)
      continue;
    rc = cli_show_job(c, id, &v->shows[v->njobs], &v->jobs[v->njobs]);
    if (rc == 0)
      v->njobs++;
  }
  return rc;
}

static void print_json_view(const view *v) {
  size_t i;

  fputs("{\"devices\":", stdout);
  cli_json_print(stdout, v->devs);
  fputs(",\"running\":[", stdout);
  for (i = 0; i < v->njobs; i++) {
    if (i > 0)
      fputc(',', stdout);
    cli_json_print(stdout, v->jobs[i]);
  }
  fputs("],\"queued\":", stdout);
  cli_json_print(stdout, v->queue);
  fputs("}\n", stdout);
}

/* One table of jobs in at most cols columns of text, leaving out columns
 * by their drop order until it fits. */
static int print_jobs(FILE *f, const top_col *tc, size_t ntc, const msgpack_object *const *jobs,
                      size_t njobs, size_t width) {
  cli_job_col cols[CLI_TABLE_MAX_COLS];
  int dropped = 0, rc;
  cli_table t;

  for (;;) {
    size_t n = 0, i;
    int next = 0;

    for (i = 0; i < ntc && n < CLI_TABLE_MAX_COLS; i++) {
      if (tc[i].drop > 0 && tc[i].drop <= dropped)
        continue;
      cols[n++] = tc[i].col;
      if (tc[i].drop > dropped && (next == 0 || tc[i].drop < next))
        next = tc[i].drop;
    }
    cli_job_table_init(&t, cols, n);
    for (i = 0; i < njobs; i++)
      cli_job_row(&t, cols, n, jobs[i]);
    if (cli_table_width(&t) <= width || next == 0)
      break;
    cli_table_free(&t);
    dropped = next;
  }
  rc = cli_table_print(&t, f);
  cli_table_free(&t);
  return rc;
}

static int render(FILE *f, const cli *c, const view *v, int live, size_t width) {
  const msgpack_object *queued[TOP_JOBS];
  char clock[16] = "";
  time_t now = time(NULL);
  size_t nq = 0;
  struct tm tm;
  uint32_t i;
  int rc;

  if (localtime_r(&now, &tm) != NULL)
    strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
  fprintf(f, "%s  %zu running, %u queued  traind at %s%s\n\n", clock, v->njobs,
          (unsigned)v->queue->via.array.size, c->addr, live ? "  (Ctrl-C quits)" : "");
  rc = cli_print_devices(f, v->devs);
  if (rc != 0)
    return rc;
  if (v->njobs == 0 && v->queue->via.array.size == 0) {
    fputs("\nno running or queued jobs\n", f);
    return 0;
  }
  if (v->njobs > 0) {
    fputc('\n', f);
    rc = print_jobs(f, running_cols, TD_ARRAY_SIZE(running_cols), v->jobs, v->njobs, width);
    if (rc != 0)
      return rc;
  }
  for (i = 0; i < v->queue->via.array.size && nq < TOP_JOBS; i++)
    if (v->queue->via.array.ptr[i].type == MSGPACK_OBJECT_MAP)
      queued[nq++] = &v->queue->via.array.ptr[i];
  if (nq > 0) {
    fputc('\n', f);
    rc = print_jobs(f, queued_cols, TD_ARRAY_SIZE(queued_cols), queued, nq, width);
  }
  return rc;
}

/* The frame, every line fitted to the width; live, over the last one and
 * cut to the terminal's height, so nothing wraps or scrolls. */
static void draw(const char *frame, size_t len, size_t cols, int live) {
  size_t rows = 0, line = 0;
  const char *p = frame, *nl;
  struct winsize ws;

  if (live) {
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0)
      rows = ws.ws_row;
    fputs("\033[H\033[2J", stdout);
  }
  for (; p < frame + len && (rows < 2 || line < rows - 1); p = nl + 1, line++) {
    nl = memchr(p, '\n', (size_t)(frame + len - p));
    if (nl == NULL)
      nl = frame + len;
    cli_put_fitted(stdout, p, (size_t)(nl - p), cols);
  }
  fflush(stdout);
}

static int show(const cli *c, const view *v, int live) {
  size_t len = 0, width = cli_term_columns(STDOUT_FILENO);
  char *frame = NULL;
  FILE *f;
  int rc;

  if (c->json) {
    print_json_view(v);
    fflush(stdout);
    return 0;
  }
  f = open_memstream(&frame, &len);
  if (f == NULL) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  rc = render(f, c, v, live, width);
  if (fclose(f) != 0 && rc == 0) {
    cli_fail("out of memory");
    rc = CLI_EXIT_JOB;
  }
  if (rc == 0)
    draw(frame, len, width, live);
  free(frame);
  return rc;
}

int cli_cmd_top(cli *c, const cli_args *a) {
  int live = !a->once && isatty(STDOUT_FILENO), rc;
  struct sigaction old_int;

  if (live)
    cli_catch_sigint(&old_int);
  for (;;) {
    view v = {0};

    rc = view_fetch(c, &v);
    if (rc == 0)
      rc = show(c, &v, live);
    view_free(&v);
    if (rc != 0 || !live)
      break;
    cli_nap(TOP_EVERY_S);
    if (cli_interrupted)
      break;
  }
  if (live) {
    sigaction(SIGINT, &old_int, NULL);
    if (cli_interrupted && (rc == 0 || rc == CLI_EXIT_INTERRUPTED))
      rc = 0; /* Ctrl-C is how a live view ends */
  }
  return rc;
}
