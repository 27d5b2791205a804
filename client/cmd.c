/* One function per command: build the request, print the reply. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
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

static int malformed(const char *op, const char *field) {
  cli_fail("unexpected reply from traind to '%s': no valid '%s'", op, field);
  return CLI_EXIT_REFUSED;
}

static int parse_id(const char *s, uint64_t *id) {
  char *end;
  unsigned long long v;

  if (*s < '0' || *s > '9')
    goto bad;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v == 0)
    goto bad;
  *id = v;
  return 0;

bad:
  cli_fail("invalid job id '%s' (expected a number such as 7, see `traind-client ls`)", s);
  return CLI_EXIT_USAGE;
}

/* Requests with no field or only "id". */
static int request_id(cli *c, const char *op, const uint64_t *id, td_msg **reply) {
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
    *rc = malformed(op, key);
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
  int rc = request_id(c, "show", &id, &m);

  if (rc != 0)
    return rc;
  if (td_obj_map(td_msg_root(m), "job", job) != 0) {
    td_msg_free(m);
    return malformed("show", "job");
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

int cli_cmd_submit(cli *c, const cli_args *a) {
  const char *path = a->pos[0];
  char key[33];
  char *text = NULL, *dir = NULL;
  td_msg *reply = NULL, *refusal = NULL;
  const msgpack_object *plan;
  uint64_t id;
  size_t len;
  td_pack p;
  int rc;

  rc = read_job(path, &text, &len);
  if (rc != 0)
    return rc;
  dir = job_dir(path);
  if (dir == NULL) {
    cli_fail("cannot resolve the directory of job file '%s': %s", path, strerror(errno));
    rc = CLI_EXIT_USAGE;
    goto free_text;
  }
  if (make_key(key) != 0) {
    cli_fail("cannot make a submission key: getrandom: %s", strerror(errno));
    rc = CLI_EXIT_JOB;
    goto free_dir;
  }
  td_pack_init(&p);
  td_pack_request(&p, "submit", a->name != NULL ? 4 : 3);
  td_pack_str(&p, "job");
  td_pack_strn(&p, text, len);
  td_pack_kv_str(&p, "base_dir", dir);
  td_pack_kv_str(&p, "key", key);
  if (a->name != NULL)
    td_pack_kv_str(&p, "name", a->name);
  rc = cli_call(c, &p, &reply, &refusal);
  td_pack_free(&p);
  if (rc != 0) {
    /* ENOFIT carries the plan that shows why */
    if (refusal != NULL && td_obj_map(td_msg_root(refusal), "plan", &plan) == 0) {
      fputs("  memory plan: ", stderr);
      cli_print_plan_line(stderr, plan);
    }
    td_msg_free(refusal);
    goto free_dir;
  }

  if (td_obj_u64(td_msg_root(reply), "id", &id) != 0) {
    rc = malformed("submit", "id");
    goto free_reply;
  }
  if (c->json && !a->wait)
    print_json(reply);
  else if (!c->json)
    print_submitted(a, td_msg_root(reply), id);
  if (a->wait) {
    fflush(stdout);
    rc = cli_wait(c, id);
  }

free_reply:
  td_msg_free(reply);
free_dir:
  free(dir);
free_text:
  free(text);
  return rc;
}

/* Before its first step a job's loss is a placeholder, not a measurement. */
static int job_started(const msgpack_object *job) {
  uint64_t e = 0, s = 0;

  td_obj_u64(job, "epoch", &e);
  td_obj_u64(job, "step", &s);
  return e > 0 || s > 0;
}

static void fmt_metric(const msgpack_object *job, const char *key, char *buf, size_t cap) {
  double v;

  if (td_obj_f64(job, key, &v) == 0 && isfinite(v) && v >= 0 &&
      (strcmp(key, "loss") != 0 || job_started(job)))
    snprintf(buf, cap, "%.4f", v);
  else
    snprintf(buf, cap, "-");
}

/* "2/5 173/469" while running, "5/5" after, "-" before the first step. */
static void fmt_progress(const msgpack_object *job, int with_word, char *buf, size_t cap) {
  uint64_t e, ne, s, ns;
  char state[16] = "";
  int have_steps;

  if (td_obj_cstr(job, "state", state, sizeof(state)) != 0)
    state[0] = '\0';
  if (td_obj_u64(job, "epoch", &e) != 0 || td_obj_u64(job, "epochs", &ne) != 0 || ne == 0) {
    snprintf(buf, cap, "-");
    return;
  }
  have_steps = td_obj_u64(job, "step", &s) == 0 && td_obj_u64(job, "steps", &ns) == 0 &&
               ns > 0;
  if (strcmp(state, "queued") == 0 && e == 0 && (!have_steps || s == 0)) {
    snprintf(buf, cap, "-");
    return;
  }
  if (have_steps && strcmp(state, "running") == 0)
    snprintf(buf, cap, with_word ? "epoch %" PRIu64 "/%" PRIu64 ", step %" PRIu64 "/%" PRIu64
                                 : "%" PRIu64 "/%" PRIu64 " %" PRIu64 "/%" PRIu64,
             e, ne, s, ns);
  else
    snprintf(buf, cap, with_word ? "epoch %" PRIu64 "/%" PRIu64 : "%" PRIu64 "/%" PRIu64, e,
             ne);
}

static const char *const job_states[] = {"queued", "running", "succeeded", "failed",
                                         "cancelled"};

static const char *const ls_columns[] = {"ID",       "NAME", "STATE", "DEVICE",
                                         "PROGRESS", "LOSS", "ACC",   "SUBMITTED"};

int cli_cmd_ls(cli *c, const cli_args *a) {
  const msgpack_object *jobs;
  td_msg *reply = NULL;
  cli_table t;
  td_pack p;
  uint32_t i;
  size_t k;
  int rc;

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
  td_pack_init(&p);
  td_pack_request(&p, "list", (a->state != NULL) + (a->has_limit != 0));
  if (a->state != NULL)
    td_pack_kv_str(&p, "state", a->state);
  if (a->has_limit)
    td_pack_kv_u64(&p, "limit", a->limit);
  rc = cli_call(c, &p, &reply, NULL);
  td_pack_free(&p);
  if (rc != 0)
    return rc;
  if (!table_rows(c, reply, "list", "jobs", a->state != NULL ? "no jobs in that state" : "no jobs",
                  &jobs, &rc))
    goto free_reply;
  cli_table_init(&t, ls_columns, TD_ARRAY_SIZE(ls_columns), "rllllrrl");
  for (i = 0; i < jobs->via.array.size; i++) {
    const msgpack_object *job = &jobs->via.array.ptr[i];
    char *name, *state, *device, prog[96], loss[32], acc[32], when[32];
    uint64_t id;
    int64_t ms;

    if (job->type != MSGPACK_OBJECT_MAP)
      continue;
    name = cli_field_dup(job, "name");
    state = cli_field_dup(job, "state");
    device = cli_field_dup(job, "device");
    fmt_progress(job, 0, prog, sizeof(prog));
    fmt_metric(job, "loss", loss, sizeof(loss));
    fmt_metric(job, "accuracy", acc, sizeof(acc));
    if (td_obj_i64(job, "submitted_ms", &ms) == 0)
      cli_fmt_time(ms, 1, when, sizeof(when));
    else
      snprintf(when, sizeof(when), "-");
    if (td_obj_u64(job, "id", &id) == 0)
      cli_table_cell(&t, "%" PRIu64, id);
    else
      cli_table_cell(&t, "?");
    cli_table_cell(&t, "%s", name != NULL && name[0] != '\0' ? name : "-");
    cli_table_cell(&t, "%s", state != NULL ? state : "?");
    cli_table_cell(&t, "%s", device != NULL && device[0] != '\0' ? device : "-");
    cli_table_cell(&t, "%s", prog);
    cli_table_cell(&t, "%s", loss);
    cli_table_cell(&t, "%s", acc);
    cli_table_cell(&t, "%s", when);
    free(name);
    free(state);
    free(device);
  }
  rc = cli_table_print(&t, stdout);
  cli_table_free(&t);

free_reply:
  td_msg_free(reply);
  return rc;
}

static void label(const char *l) {
  printf("%s:%*s", l, (int)(LABEL_WIDTH - 1 - strlen(l)), "");
}

enum show_kind { SHOW_STR, SHOW_U64, SHOW_I64, SHOW_TIME, SHOW_METRIC, SHOW_PROGRESS };

static const struct show_row {
  const char *label, *key;
  enum show_kind kind;
} show_rows[] = {
  {"id", "id", SHOW_U64},
  {"name", "name", SHOW_STR},
  {"state", "state", SHOW_STR},
  {"device", "device", SHOW_STR},
  {"priority", "priority", SHOW_I64},
  {"submitted", "submitted_ms", SHOW_TIME},
  {"started", "started_ms", SHOW_TIME},
  {"finished", "finished_ms", SHOW_TIME},
  {"progress", NULL, SHOW_PROGRESS},
  {"loss", "loss", SHOW_METRIC},
  {"test accuracy", "accuracy", SHOW_METRIC},
  {"model", "model", SHOW_STR},
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
    fmt_metric(job, r->key, buf, sizeof(buf));
    fputs(buf, stdout);
    return;
  case SHOW_PROGRESS:
    fmt_progress(job, 1, buf, sizeof(buf));
    fputs(buf, stdout);
    return;
  }
  fputs("-", stdout);
}

static void show_job(const msgpack_object *job) {
  const msgpack_object *plan;
  char buf[96], state[16] = "?", *err;
  uint64_t u;
  int64_t i;
  double v;
  size_t k;

  if (td_obj_cstr(job, "state", state, sizeof(state)) != 0)
    snprintf(state, sizeof(state), "?");
  for (k = 0; k < TD_ARRAY_SIZE(show_rows); k++) {
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
  if (cli_state_is_final(state) && td_obj_i64(job, "exit_status", &i) == 0) {
    label("exit status");
    printf("%" PRId64 "\n", i);
  }
  if (td_obj_map(job, "plan", &plan) == 0) {
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

  rc = parse_id(a->pos[0], &id);
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

  rc = parse_id(a->pos[0], &id);
  if (rc != 0)
    return rc;
  rc = request_id(c, "cancel", &id, &reply);
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

  rc = request_id(c, "info", NULL, &reply);
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

static void size_cell(cli_table *t, int have, uint64_t v) {
  char buf[32];

  if (!have) {
    cli_table_cell(t, "?");
    return;
  }
  td_format_size(v, buf, sizeof(buf));
  cli_table_cell(t, "%s", buf);
}

static const char *const devices_columns[] = {"NAME", "BUDGET", "RESERVED", "FREE", "JOBS"};

int cli_cmd_devices(cli *c, const cli_args *a) {
  const msgpack_object *devs;
  td_msg *reply = NULL;
  cli_table t;
  uint32_t i;
  int rc;

  rc = request_id(c, "devices", NULL, &reply);
  if (rc != 0)
    return rc;
  if (!table_rows(c, reply, "devices", "devices", "no devices", &devs, &rc))
    goto free_reply;
  cli_table_init(&t, devices_columns, TD_ARRAY_SIZE(devices_columns), "lrrrl");
  for (i = 0; i < devs->via.array.size; i++) {
    const msgpack_object *dev = &devs->via.array.ptr[i];
    uint64_t budget = 0, reserved = 0, njobs;
    int hb, hr;
    char *name;

    if (dev->type != MSGPACK_OBJECT_MAP)
      continue;
    name = cli_field_dup(dev, "name");
    hb = td_obj_u64(dev, "budget", &budget) == 0;
    hr = td_obj_u64(dev, "reserved", &reserved) == 0;
    cli_table_cell(&t, "%s", name != NULL ? name : "?");
    size_cell(&t, hb, budget);
    size_cell(&t, hr, reserved);
    size_cell(&t, hb && hr, budget > reserved ? budget - reserved : 0);
    if (td_obj_u64(dev, "jobs", &njobs) == 0)
      cli_table_cell(&t, "%" PRIu64, njobs);
    else
      cli_table_cell(&t, "?");
    free(name);
  }
  rc = cli_table_print(&t, stdout);
  cli_table_free(&t);

free_reply:
  td_msg_free(reply);
  return rc;
}
