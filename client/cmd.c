/* One function per command: build the request, print the reply. */
#include <errno.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client.h"
#include "error.h"
#include "jobspec.h"
#include "td_config.h"
#include "util.h"

#define LABEL_WIDTH 15

int cli_malformed(const char *op, const char *field) {
  cli_fail("unexpected reply from traind to '%s': no valid '%s'", op, field);
  return CLI_EXIT_REFUSED;
}

int cli_arg_id(const char *s, uint64_t *id) {
  if (cli_parse_uint(s, 1, (double)UINT64_MAX, id) == 0)
    return 0;
  cli_fail("invalid job id '%s' (expected a number such as 7, see `traind-client ls`)", s);
  return CLI_EXIT_USAGE;
}

/* The user name of getuid(), or NULL if the system does not know it or it
 * is longer than the protocol's owner field allows. */
static const char *user_name(void) {
  const struct passwd *pw = getpwuid(getuid());
  size_t max;

  if (pw == NULL || pw->pw_name == NULL ||
      cli_check_str("list", "owner", pw->pw_name, &max) != 0)
    return NULL;
  return pw->pw_name;
}

int cli_request_id(cli *c, const char *op, const uint64_t *id, td_msg **reply) {
  td_pack p;
  int rc;

  td_pack_init(&p);
  td_pack_request(&p, op, id != NULL ? 1 : 0);
  if (id != NULL)
    td_pack_kv_u64(&p, "id", *id);
  rc = cli_call(c, &p, reply, NULL);
  td_pack_free(&p);
  return rc;
}

static void print_json(const td_msg *reply) {
  cli_json_print_reply(stdout, td_msg_root(reply));
}

/* For the table commands: 1 when there are rows to print; otherwise the
 * reply was JSON, empty or malformed, handled, and *rc is the exit code. */
static int table_rows(const cli *c, const td_msg *reply, const char *op, const char *key,
                      const char *empty, const msgpack_object **rows, int *rc) {
  *rc = 0;
  if (c->json) {
    print_json(reply);
    return 0;
  }
  if (td_obj_array(td_msg_root(reply), key, rows) != 0) {
    *rc = cli_malformed(op, key);
    return 0;
  }
  if ((*rows)->via.array.size == 0) {
    puts(empty);
    return 0;
  }
  return 1;
}

int cli_show_job(cli *c, uint64_t id, td_msg **reply, const msgpack_object **job) {
  td_msg *m = NULL;
  int rc = cli_request_id(c, "show", &id, &m);

  if (rc != 0)
    return rc;
  if (td_obj_map(td_msg_root(m), "job", job) != 0) {
    td_msg_free(m);
    return cli_malformed("show", "job");
  }
  *reply = m;
  return 0;
}

static int read_job(const char *path, char **text, size_t *len) {
  struct stat st;
  int rc = td_read_file(path, TD_JOBFILE_MAX, text, len);

  if (rc == 0) {
    if (memchr(*text, '\0', *len) == NULL)
      return 0;
    free(*text);
    cli_fail("job file '%s' contains a NUL byte; a job file is YAML text", path);
    return CLI_EXIT_USAGE;
  }
  if (rc == TD_ENOENT)
    cli_fail("cannot read job file '%s': no such file", path);
  else if (rc == TD_ETOOBIG)
    cli_fail("job file %s is larger than 1 MiB", path);
  else if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    cli_fail("cannot read job file '%s': it is a directory", path);
  else if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    cli_fail("cannot read job file '%s': not a regular file", path);
  else if (access(path, R_OK) != 0)
    cli_fail("cannot read job file '%s': %s", path, strerror(errno));
  else
    cli_fail("cannot read job file '%s': %s", path, td_strerror(rc));
  return rc == TD_ENOMEM ? CLI_EXIT_JOB : CLI_EXIT_USAGE;
}

/* The absolute directory of the job file as named (a symlinked job file
 * resolves its relative paths beside the link, as a shell user expects). */
static char *job_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir, *abs;

  if (slash == NULL)
    return realpath(".", NULL);
  if (slash == path)
    return realpath("/", NULL);
  dir = strndup(path, (size_t)(slash - path));
  if (dir == NULL)
    return NULL;
  abs = realpath(dir, NULL);
  free(dir);
  return abs;
}

/* 32 hex chars: REQ resends a request whose reply was lost, and the daemon
 * answers a resent submit with the job it already made. */
static int make_key(char key[33]) {
  static const char hex[] = "0123456789abcdef";
  unsigned char r[16];
  size_t got = 0, i;

  while (got < sizeof(r)) {
    ssize_t n = getrandom(r + got, sizeof(r) - got, 0);

    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    got += (size_t)n;
  }
  for (i = 0; i < sizeof(r); i++) {
    key[2 * i] = hex[r[i] >> 4];
    key[2 * i + 1] = hex[r[i] & 15];
  }
  key[32] = '\0';
  return 0;
}

static void print_submitted(const cli_args *a, const msgpack_object *root, uint64_t id) {
  const msgpack_object *plan;
  char *name = cli_field_dup(root, "name");
  char *device = cli_field_dup(root, "device");
  int dup = 0;

  if (name == NULL && a->name != NULL && (name = strdup(a->name)) != NULL)
    cli_sanitize(name);
  td_obj_bool(root, "duplicate", &dup);
  if (dup)
    printf("job %" PRIu64 " was already submitted", id);
  else
    printf("submitted job %" PRIu64, id);
  if (name != NULL && name[0] != '\0')
    printf(" (%s)", name);
  fputs(": ", stdout);
  cli_put_field(stdout, root, "state", "?");
  if (device != NULL && device[0] != '\0')
    printf(" (device %s)", device);
  fputc('\n', stdout);
  if (td_obj_map(root, "plan", &plan) == 0) {
    fputs("  memory plan: ", stdout);
    cli_print_plan_line(stdout, plan);
  }
  free(name);
  free(device);
}

/* The answer to a submission (op: submit or continue; rc cli_call's):
 * the job made, or why not (ENOFIT's plan with it), then --wait. */
static int submitted(cli *c, const cli_args *a, const char *op, int rc, td_msg *reply,
                     td_msg *refusal) {
  const msgpack_object *plan;
  uint64_t id;

  if (rc != 0) {
    if (refusal != NULL && td_obj_map(td_msg_root(refusal), "plan", &plan) == 0) {
      fputs("  memory plan: ", stderr);
      cli_print_plan_line(stderr, plan);
    }
    td_msg_free(refusal);
    return rc;
  }
  if (td_obj_u64(td_msg_root(reply), "id", &id) != 0) {
    rc = cli_malformed(op, "id");
  } else {
    if (c->json && !a->wait)
      print_json(reply);
    else if (!c->json)
      print_submitted(a, td_msg_root(reply), id);
    if (a->wait) {
      fflush(stdout);
      rc = cli_wait(c, id);
    }
  }
  td_msg_free(reply);
  return rc;
}

/* submit --continue ID --epochs N: traind makes the job from job ID's
 * stored description and final state; there is no file to read here. */
static int submit_continue(cli *c, const cli_args *a) {
  td_msg *reply = NULL, *refusal = NULL;
  char key[33];
  td_pack p;
  int rc;

  if (make_key(key) != 0) {
    cli_fail("cannot make a submission key: getrandom: %s", strerror(errno));
    return CLI_EXIT_JOB;
  }
  td_pack_init(&p);
  td_pack_request(&p, "continue", 3 + (a->name != NULL));
  td_pack_kv_u64(&p, "id", a->cont);
  td_pack_kv_u64(&p, "epochs", a->epochs);
  td_pack_kv_str(&p, "key", key);
  if (a->name != NULL)
    td_pack_kv_str(&p, "name", a->name);
  rc = cli_call(c, &p, &reply, &refusal);
  td_pack_free(&p);
  return submitted(c, a, "continue", rc, reply, refusal);
}

int cli_cmd_submit(cli *c, const cli_args *a) {
  const char *path = a->pos[0];
  const char *dtype;
  char key[33];
  char *text = NULL, *dir = NULL;
  td_msg *reply = NULL, *refusal = NULL;
  size_t len;
  td_pack p;
  int rc;

  if (a->cont != 0)
    return submit_continue(c, a);
  rc = read_job(path, &text, &len);
  if (rc != 0)
    return rc;
  dir = job_dir(path);
  if (dir == NULL) {
    cli_fail("cannot resolve the directory of job file '%s': %s", path, strerror(errno));
    rc = CLI_EXIT_USAGE;
    goto free_text;
  }
  if ((rc = cli_check_job(text, len, dir, 1, &dtype)) != 0)
    goto free_dir;
  if (make_key(key) != 0) {
    cli_fail("cannot make a submission key: getrandom: %s", strerror(errno));
    rc = CLI_EXIT_JOB;
    goto free_dir;
  }
  td_pack_init(&p);
  td_pack_request(&p, "submit", 4 + (a->name != NULL));
  td_pack_str(&p, "job");
  td_pack_strn(&p, text, len);
  td_pack_kv_str(&p, "base_dir", dir);
  td_pack_kv_str(&p, "key", key);
  td_pack_kv_str(&p, "sample_dtype", dtype);
  if (a->name != NULL)
    td_pack_kv_str(&p, "name", a->name);
  rc = cli_call(c, &p, &reply, &refusal);
  td_pack_free(&p);
  rc = submitted(c, a, "submit", rc, reply, refusal);

free_dir:
  free(dir);
free_text:
  free(text);
  return rc;
}

int cli_cmd_wait(cli *c, const cli_args *a) {
  uint64_t id;
  int rc = cli_arg_id(a->pos[0], &id);

  return rc != 0 ? rc : cli_wait(c, id);
}

static const char *const job_states[] = {"queued", "running", "succeeded", "failed",
                                         "cancelled"};

/* REASON last: it is long, and empty but for queued jobs. */
static const cli_job_col ls_columns[] = {
  CLI_COL_ID,       CLI_COL_NAME, CLI_COL_OWNER, CLI_COL_STATE,     CLI_COL_DEVICE,
  CLI_COL_PROGRESS, CLI_COL_LOSS, CLI_COL_ACC,   CLI_COL_SUBMITTED, CLI_COL_REASON,
};

int cli_list(cli *c, const char *state, uint64_t limit, const char *owner, const char *device,
             uint64_t after, td_msg **reply) {
  td_pack p;
  int rc;

  td_pack_init(&p);
  td_pack_request(&p, "list", (state != NULL) + (limit > 0) + (owner != NULL) +
                              (device != NULL) + (after > 0));
  if (after > 0)
    td_pack_kv_u64(&p, "after", after);
  if (state != NULL)
    td_pack_kv_str(&p, "state", state);
  if (limit > 0)
    td_pack_kv_u64(&p, "limit", limit);
  if (owner != NULL)
    td_pack_kv_str(&p, "owner", owner);
  if (device != NULL)
    td_pack_kv_str(&p, "device", device);
  rc = cli_call(c, &p, reply, NULL);
  td_pack_free(&p);
  return rc;
}

#define CLI_LS_PAGE 1000

int cli_cmd_ls(cli *c, const cli_args *a) {
  const msgpack_object *jobs;
  const char *owner = a->owner;
  uint64_t after = 0, left = a->has_limit ? a->limit : UINT64_MAX, nrows = 0;
  td_msg *reply = NULL;
  cli_table t;
  uint32_t i;
  size_t k;
  int rc = 0;

  if (a->state != NULL) {
    for (k = 0; k < TD_ARRAY_SIZE(job_states); k++)
      if (strcmp(a->state, job_states[k]) == 0)
        break;
    if (k == TD_ARRAY_SIZE(job_states)) {
      cli_fail("unknown state '%s' (expected queued, running, succeeded, failed or "
               "cancelled)", a->state);
      return CLI_EXIT_USAGE;
    }
  }
  if (a->mine && (owner = user_name()) == NULL) {
    cli_fail("cannot tell your user name (uid %u has no usable passwd entry); use --owner "
             "NAME", (unsigned)getuid());
    return CLI_EXIT_JOB;
  }
  /* Page by page, so that any number of jobs is listed with replies far
   * below the protocol's limit. */
  cli_job_table_init(&t, ls_columns, TD_ARRAY_SIZE(ls_columns));
  if (c->json)
    fputs("{\"jobs\": [", stdout);
  for (int more = 1; more && left > 0;) {
    rc = cli_list(c, a->state, left < CLI_LS_PAGE ? left : CLI_LS_PAGE, owner, a->device, after,
                  &reply);
    if (rc != 0)
      goto free_table;
    if (td_obj_array(td_msg_root(reply), "jobs", &jobs) != 0) {
      rc = cli_malformed("list", "jobs");
      goto free_reply;
    }
    for (i = 0; i < jobs->via.array.size; i++) {
      const msgpack_object *row = &jobs->via.array.ptr[i];

      if (row->type != MSGPACK_OBJECT_MAP || td_obj_u64(row, "id", &after) != 0) {
        rc = cli_malformed("list", "jobs[].id");
        goto free_reply;
      }
      if (c->json) {
        fputs(nrows > 0 ? ", " : "", stdout);
        cli_json_print(stdout, row);
      } else {
        cli_job_row(&t, ls_columns, TD_ARRAY_SIZE(ls_columns), row);
      }
      nrows++;
    }
    left -= jobs->via.array.size;
    if (td_obj_bool(td_msg_root(reply), "more", &more) != 0 || jobs->via.array.size == 0)
      more = 0;
    td_msg_free(reply);
    reply = NULL;
  }
  if (c->json)
    fputs("]}\n", stdout);
  else if (nrows == 0)
    puts(a->state != NULL || owner != NULL || a->device != NULL ? "no matching jobs" : "no jobs");
  else
    rc = cli_table_print(&t, stdout);

free_reply:
  td_msg_free(reply);
free_table:
  cli_table_free(&t);
  return rc;
}

static void label(const char *l) {
  printf("%s:%*s", l, (int)(LABEL_WIDTH - 1 - strlen(l)), "");
}

enum show_kind { SHOW_STR, SHOW_U64, SHOW_I64, SHOW_TIME, SHOW_METRIC, SHOW_PROGRESS };

static const struct show_row {
  const char *label, *key;
  enum show_kind kind;
  int optional; /* 1: not shown when missing or empty; 2: a metric, not shown when missing
                   or below 0 (not measured) */
} show_rows[] = {
  {"id", "id", SHOW_U64, 0},
  {"name", "name", SHOW_STR, 0},
  {"owner", "owner", SHOW_STR, 0},
  {"state", "state", SHOW_STR, 0},
  {"waiting", "wait_reason", SHOW_STR, 1},
  {"device", "device", SHOW_STR, 0},
  {"priority", "priority", SHOW_I64, 0},
  {"submitted", "submitted_ms", SHOW_TIME, 0},
  {"started", "started_ms", SHOW_TIME, 0},
  {"finished", "finished_ms", SHOW_TIME, 0},
  {"progress", NULL, SHOW_PROGRESS, 0},
  {"loss", "loss", SHOW_METRIC, 0},
  {"train accuracy", "train_accuracy", SHOW_METRIC, 0},
  {"test accuracy", "accuracy", SHOW_METRIC, 0},
  {"val accuracy", "val_accuracy", SHOW_METRIC, 0},
  /* only for the jobs that measure them (top_k; loss mse, mae) */
  {"test top-k", "top_k_accuracy", SHOW_METRIC, 2},
  {"val top-k", "val_top_k_accuracy", SHOW_METRIC, 2},
  {"train MAE", "train_mae", SHOW_METRIC, 2},
  {"test MAE", "mae", SHOW_METRIC, 2},
  {"val MAE", "val_mae", SHOW_METRIC, 2},
  {"model", "model", SHOW_STR, 0},
  {"warning", "warning", SHOW_STR, 1},
};

static void show_value(const msgpack_object *job, const struct show_row *r) {
  char buf[96];
  uint64_t u;
  int64_t i;

  switch (r->kind) {
  case SHOW_STR:
    cli_put_field(stdout, job, r->key, "-");
    return;
  case SHOW_U64:
    if (td_obj_u64(job, r->key, &u) != 0)
      break;
    printf("%" PRIu64, u);
    return;
  case SHOW_I64:
    if (td_obj_i64(job, r->key, &i) != 0)
      break;
    printf("%" PRId64, i);
    return;
  case SHOW_TIME:
    if (td_obj_i64(job, r->key, &i) != 0 || i <= 0)
      break;
    cli_fmt_time(i, 0, buf, sizeof(buf));
    fputs(buf, stdout);
    cli_fmt_time(i, 1, buf, sizeof(buf));
    if (strstr(buf, "ago") != NULL)
      printf(" (%s)", buf);
    return;
  case SHOW_METRIC:
    cli_fmt_metric(job, r->key, buf, sizeof(buf));
    fputs(buf, stdout);
    return;
  case SHOW_PROGRESS:
    cli_fmt_progress(job, 1, buf, sizeof(buf));
    fputs(buf, stdout);
    return;
  }
  fputs("-", stdout);
}

/* "memory:  9.50 MiB in use of 9.50 MiB planned", once the worker reported. */
static void show_mem(const msgpack_object *job, const msgpack_object *plan) {
  char used[32], planned[32];
  uint64_t mem, total;

  if (td_obj_u64(job, "mem", &mem) != 0 || mem == 0)
    return;
  td_format_size(mem, used, sizeof(used));
  label("memory");
  if (plan != NULL && td_obj_u64(plan, "total", &total) == 0) {
    td_format_size(total, planned, sizeof(planned));
    printf("%s in use of %s planned\n", used, planned);
  } else {
    printf("%s in use\n", used);
  }
}

/* "checkpoint:  step 1200 (epoch 3, batch 40), 2.31 MiB; resumed from step 600" */
static void show_checkpoint(const msgpack_object *job) {
  const msgpack_object *c;
  uint64_t step = 0, epoch = 0, batch = 0, bytes = 0, resumed = 0;
  char size[32];

  if (td_obj_map(job, "checkpoint", &c) != 0)
    return;
  td_obj_u64(c, "step", &step);
  td_obj_u64(c, "epoch", &epoch);
  td_obj_u64(c, "batch", &batch);
  td_obj_u64(c, "bytes", &bytes);
  td_obj_u64(c, "resumed_step", &resumed);
  if (bytes == 0 && resumed == 0)
    return;
  label("checkpoint");
  if (bytes > 0) {
    td_format_size(bytes, size, sizeof(size));
    printf("step %" PRIu64 " (epoch %" PRIu64 ", batch %" PRIu64 "), %s", step, epoch + 1,
           batch, size);
  } else {
    fputs("none yet this run", stdout);
  }
  if (resumed > 0)
    printf("; resumed from step %" PRIu64, resumed);
  fputc('\n', stdout);
}

/* The loss so far, a plot 6 lines high as wide as the terminal allows. */
static void show_curve(const msgpack_object *job) {
  static double x[CLI_LOSS_CURVE_MAX], y[CLI_LOSS_CURVE_MAX];
  size_t n = cli_loss_curve(job, x, y, CLI_LOSS_CURVE_MAX);
  size_t width = cli_term_columns(STDOUT_FILENO);

  if (n < 2)
    return;
  puts("loss curve:");
  /* the indent and the axis' labels take about 14 columns */
  cli_plot(stdout, x, y, n, 6, width > 14 + 16 ? (width - 14 < 72 ? width - 14 : 72) : 16,
           cli_term_utf8(), "  ");
}

static void show_job(const msgpack_object *job) {
  const msgpack_object *plan = NULL;
  char buf[96], state[16] = "?", *err;
  uint64_t u;
  int64_t i;
  double v;
  size_t k;

  if (td_obj_cstr(job, "state", state, sizeof(state)) != 0)
    snprintf(state, sizeof(state), "?");
  for (k = 0; k < TD_ARRAY_SIZE(show_rows); k++) {
    const char *text;
    size_t n;

    if (show_rows[k].optional == 1 &&
        (td_obj_str(job, show_rows[k].key, &text, &n) != 0 || n == 0))
      continue;
    if (show_rows[k].optional == 2 && (td_obj_f64(job, show_rows[k].key, &v) != 0 || v < 0))
      continue;
    label(show_rows[k].label);
    show_value(job, &show_rows[k]);
    fputc('\n', stdout);
  }
  if (strcmp(state, "running") == 0 && td_obj_f64(job, "samples_per_sec", &v) == 0 &&
      v > 0 && v < 1e15) {
    label("speed");
    cli_fmt_count((uint64_t)(v + 0.5), buf, sizeof(buf));
    printf("%s samples/s\n", buf);
  }
  if (td_obj_u64(job, "retries", &u) == 0 && u > 0) {
    label("retries");
    printf("%" PRIu64 " (runs that crashed or hung)\n", u);
  }
  if (cli_state_is_final(state) && td_obj_i64(job, "exit_status", &i) == 0) {
    label("exit status");
    printf("%" PRId64 "\n", i);
  }
  show_checkpoint(job);
  show_curve(job);
  if (td_obj_map(job, "plan", &plan) != 0)
    plan = NULL;
  show_mem(job, plan);
  if (plan != NULL) {
    label("memory plan");
    if (td_obj_u64(plan, "total", &u) == 0) {
      td_format_size(u, buf, sizeof(buf));
      fputs(buf, stdout);
    } else {
      fputs("?", stdout);
    }
    if (td_obj_u64(plan, "micro_batch", &u) == 0)
      printf(" at micro-batch %" PRIu64, u);
    fputc('\n', stdout);
    cli_print_plan_table(stdout, plan, "  ");
  }
  err = cli_field_dup(job, "error");
  if (err != NULL && err[0] != '\0') {
    label("error");
    puts(err);
  }
  free(err);
}

int cli_cmd_show(cli *c, const cli_args *a) {
  const msgpack_object *job;
  td_msg *reply = NULL;
  uint64_t id;
  int rc;

  rc = cli_arg_id(a->pos[0], &id);
  if (rc != 0)
    return rc;
  rc = cli_show_job(c, id, &reply, &job);
  if (rc != 0)
    return rc;
  if (c->json)
    print_json(reply);
  else
    show_job(job);
  td_msg_free(reply);
  return 0;
}

int cli_cmd_cancel(cli *c, const cli_args *a) {
  td_msg *reply = NULL;
  uint64_t id, rid;
  const char *st;
  size_t len;
  int rc;

  rc = cli_arg_id(a->pos[0], &id);
  if (rc != 0)
    return rc;
  rc = cli_request_id(c, "cancel", &id, &reply);
  if (rc != 0)
    return rc;
  if (c->json) {
    print_json(reply);
  } else {
    if (td_obj_u64(td_msg_root(reply), "id", &rid) != 0)
      rid = id;
    printf("job %" PRIu64 ": ", rid);
    cli_put_field(stdout, td_msg_root(reply), "state", "?");
    if (td_obj_str(td_msg_root(reply), "state", &st, &len) == 0 && len == 10 &&
        memcmp(st, "cancelling", 10) == 0)
      fputs(" (its processes are being stopped)", stdout);
    fputc('\n', stdout);
  }
  td_msg_free(reply);
  return 0;
}

int cli_cmd_info(cli *c, const cli_args *a) {
  const msgpack_object *root;
  td_msg *reply = NULL;
  char buf[64];
  uint64_t u;
  double up;
  int rc;

  rc = cli_request_id(c, "info", NULL, &reply);
  if (rc != 0)
    return rc;
  if (c->json) {
    print_json(reply);
    goto free_reply;
  }
  root = td_msg_root(reply);
  label("traind");
  cli_put_field(stdout, root, "version", "?");
  if (td_obj_u64(root, "protocol", &u) == 0)
    printf(", protocol %" PRIu64, u);
  fputc('\n', stdout);
  label("client");
  printf("traind-client %s, protocol %d\n", TD_VERSION, TD_PROTO_VERSION);
  label("uptime");
  if (td_obj_f64(root, "uptime_s", &up) == 0) {
    cli_fmt_uptime(up, buf, sizeof(buf));
    puts(buf);
  } else {
    puts("?");
  }
  label("job socket");
  printf("%s\n", c->addr);
  label("status socket");
  cli_put_field(stdout, root, "status_socket", "-");
  fputc('\n', stdout);
  label("jobs");
  if (td_obj_u64(root, "jobs", &u) == 0)
    printf("%" PRIu64 "\n", u);
  else
    puts("?");

free_reply:
  td_msg_free(reply);
  return 0;
}

int cli_cmd_set_priority(cli *c, const cli_args *a) {
  const msgpack_object *root;
  double min = -1000, max = 1000;
  td_msg *reply = NULL;
  uint64_t id, rid;
  int64_t prio, rprio;
  td_pack p;
  int rc;

  rc = cli_arg_id(a->pos[0], &id);
  if (rc != 0)
    return rc;
  cli_field_bounds("set-priority", "priority", &min, &max);
  if (cli_parse_int(a->pos[1], min, max, &prio) != 0) {
    cli_fail("invalid priority '%s' (an integer from %.0f to %.0f; higher runs first, the "
             "default is 0)", a->pos[1], min, max);
    return CLI_EXIT_USAGE;
  }
  td_pack_init(&p);
  td_pack_request(&p, "set-priority", 2);
  td_pack_kv_u64(&p, "id", id);
  td_pack_kv_i64(&p, "priority", prio);
  rc = cli_call(c, &p, &reply, NULL);
  td_pack_free(&p);
  if (rc != 0)
    return rc;
  root = td_msg_root(reply);
  if (c->json) {
    print_json(reply);
  } else {
    if (td_obj_u64(root, "id", &rid) != 0)
      rid = id;
    if (td_obj_i64(root, "priority", &rprio) != 0)
      rprio = prio;
    printf("job %" PRIu64 ": priority %" PRId64 "\n", rid, rprio);
  }
  td_msg_free(reply);
  return 0;
}

int cli_cmd_devices(cli *c, const cli_args *a) {
  const msgpack_object *devs;
  td_msg *reply = NULL;
  int rc;

  rc = cli_request_id(c, "devices", NULL, &reply);
  if (rc != 0)
    return rc;
  if (table_rows(c, reply, "devices", "devices", "no devices", &devs, &rc))
    rc = cli_print_devices(stdout, devs);
  td_msg_free(reply);
  return rc;
}

int cli_cmd_device(cli *c, const cli_args *a) {
  const msgpack_object *dev;
  td_msg *reply = NULL;
  size_t max;
  td_pack p;
  int rc;

  if (cli_check_str("device", "name", a->pos[0], &max) != 0) {
    cli_fail("invalid device name '%s' (1 to %zu bytes; `traind-client devices` lists them)",
             a->pos[0], max);
    return CLI_EXIT_USAGE;
  }
  td_pack_init(&p);
  td_pack_request(&p, "device", 1 + (a->budget > 0) + (a->drain >= 0));
  td_pack_kv_str(&p, "name", a->pos[0]);
  if (a->budget > 0)
    td_pack_kv_u64(&p, "budget", a->budget);
  if (a->drain >= 0)
    td_pack_kv_bool(&p, "drain", a->drain);
  rc = cli_call(c, &p, &reply, NULL);
  td_pack_free(&p);
  if (rc != 0)
    return rc;
  if (c->json) {
    print_json(reply);
  } else if (td_obj_map(td_msg_root(reply), "device", &dev) != 0) {
    rc = cli_malformed("device", "device");
  } else {
    rc = cli_print_devices(stdout, dev);
  }
  td_msg_free(reply);
  return rc;
}
