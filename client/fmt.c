/* Human output: fields read defensively, numbers, times, tables.  Strings
 * from the daemon are other users' job names and paths, so nothing reaches
 * the terminal before control bytes are replaced. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "client.h"
#include "error.h"
#include "util.h"

void cli_fail(const char *fmt, ...) {
  va_list ap;

  fflush(stdout); /* keep our output in order when both go to a terminal */
  fputs("traind-client: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static int is_control(uint32_t cp) {
  return cp < 0x20 || (cp >= 0x7f && cp < 0xa0);
}

void cli_sanitize(char *s) {
  unsigned char *p = (unsigned char *)s;
  size_t n = strlen(s), i = 0;

  while (i < n) {
    uint32_t cp = 0;
    size_t k;

    if (p[i] >= 0x20 && p[i] < 0x7f) { /* printable ASCII, nearly all of it */
      i++;
      continue;
    }
    k = cli_utf8_next(p + i, n - i, &cp);
    if (k == 0) {
      p[i++] = '?';
    } else if (is_control(cp)) {
      memset(p + i, '?', k);
      i += k;
    } else {
      i += k;
    }
  }
}

size_t cli_sanitize_log(char *s, size_t n, int final) {
  unsigned char *p = (unsigned char *)s;
  size_t i = 0;

  while (i < n) {
    uint32_t cp = 0;
    size_t k = cli_utf8_next(p + i, n - i, &cp), need, j;

    if (k == 0 && !final) {
      /* a sequence cut by the end of the piece: its lead byte and what
       * follows of it, all continuation bytes */
      need = p[i] >= 0xf0 ? 4 : p[i] >= 0xe0 ? 3 : p[i] >= 0xc2 ? 2 : 0;
      for (j = i + 1; j < n && (p[j] & 0xc0) == 0x80; j++)
        ;
      if (need > n - i && j == n && p[i] <= 0xf4)
        return i;
    }
    if (k == 0) {
      p[i++] = '?';
    } else if (is_control(cp) && cp != '\n' && cp != '\t') {
      memset(p + i, '?', k);
      i += k;
    } else {
      i += k;
    }
  }
  return n;
}

size_t cli_fit_width(const char *s, size_t len, size_t cols) {
  size_t i, w = 0;

  for (i = 0; i < len; i++)
    if (((unsigned char)s[i] & 0xc0) != 0x80 && w++ == cols)
      return i;
  return len;
}

char *cli_field_dup(const msgpack_object *map, const char *key) {
  const char *s;
  size_t len;
  char *out;

  if (td_obj_str(map, key, &s, &len) != 0)
    return NULL;
  out = malloc(len + 1);
  if (out == NULL)
    return NULL;
  memcpy(out, s, len);
  out[len] = '\0';
  /* an embedded NUL ends the text; what follows it is not shown */
  cli_sanitize(out);
  return out;
}

void cli_put_field(FILE *f, const msgpack_object *map, const char *key, const char *dflt) {
  char *s = cli_field_dup(map, key);

  fputs(s != NULL && s[0] != '\0' ? s : dflt, f);
  free(s);
}

void cli_fmt_count(uint64_t n, char *buf, size_t cap) {
  char digits[24];
  char out[32];
  size_t nd, i, o = 0;

  nd = (size_t)snprintf(digits, sizeof(digits), "%" PRIu64, n);
  for (i = 0; i < nd; i++) {
    if (i > 0 && (nd - i) % 3 == 0)
      out[o++] = ',';
    out[o++] = digits[i];
  }
  out[o] = '\0';
  snprintf(buf, cap, "%s", out);
}

/* 42 -> "0:42", 3723 -> "1:02:03" */
void cli_fmt_clock(double seconds, char *buf, size_t cap) {
  uint64_t s;

  if (!(seconds >= 0) || seconds > 1e9) {
    snprintf(buf, cap, "?");
    return;
  }
  s = (uint64_t)(seconds + 0.5);
  if (s >= 3600)
    snprintf(buf, cap, "%" PRIu64 ":%02u:%02u", s / 3600, (unsigned)(s / 60 % 60),
             (unsigned)(s % 60));
  else
    snprintf(buf, cap, "%u:%02u", (unsigned)(s / 60), (unsigned)(s % 60));
}

/* "3d 04h 05m", "2h 03m 04s", "5m 06s", "7s" */
void cli_fmt_uptime(double seconds, char *buf, size_t cap) {
  uint64_t s;

  if (!(seconds >= 0) || seconds > 1e12) {
    snprintf(buf, cap, "?");
    return;
  }
  s = (uint64_t)seconds;
  if (s >= 86400)
    snprintf(buf, cap, "%" PRIu64 "d %02uh %02um", s / 86400, (unsigned)(s / 3600 % 24),
             (unsigned)(s / 60 % 60));
  else if (s >= 3600)
    snprintf(buf, cap, "%uh %02um %02us", (unsigned)(s / 3600), (unsigned)(s / 60 % 60),
             (unsigned)(s % 60));
  else if (s >= 60)
    snprintf(buf, cap, "%um %02us", (unsigned)(s / 60), (unsigned)(s % 60));
  else
    snprintf(buf, cap, "%us", (unsigned)s);
}

/* relative: "12s ago" within a day, else local "2024-05-01 13:45". */
void cli_fmt_time(int64_t unix_ms, int relative, char *buf, size_t cap) {
  int64_t age = td_now_unix_ms() - unix_ms;
  time_t t = (time_t)(unix_ms / 1000);
  struct tm tm;

  if (unix_ms <= 0) {
    snprintf(buf, cap, "-");
    return;
  }
  if (relative && age >= -5000 && age < 86400 * 1000LL) {
    age = age < 0 ? 0 : age / 1000;
    if (age < 60)
      snprintf(buf, cap, "%us ago", (unsigned)age);
    else if (age < 3600)
      snprintf(buf, cap, "%um ago", (unsigned)(age / 60));
    else
      snprintf(buf, cap, "%uh ago", (unsigned)(age / 3600));
    return;
  }
  if (localtime_r(&t, &tm) == NULL ||
      strftime(buf, cap, relative ? "%Y-%m-%d %H:%M" : "%Y-%m-%d %H:%M:%S", &tm) == 0)
    snprintf(buf, cap, "?");
}

int cli_state_is_final(const char *state) {
  return strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
         strcmp(state, "cancelled") == 0;
}

/* Before its first step a job's loss is a placeholder, not a measurement. */
static int job_started(const msgpack_object *job) {
  uint64_t e = 0, s = 0;

  td_obj_u64(job, "epoch", &e);
  td_obj_u64(job, "step", &s);
  return e > 0 || s > 0;
}

void cli_fmt_metric(const msgpack_object *job, const char *key, char *buf, size_t cap) {
  double v;

  if (td_obj_f64(job, key, &v) == 0 && isfinite(v) && v >= 0 &&
      (strcmp(key, "loss") != 0 || job_started(job)))
    snprintf(buf, cap, "%.4f", v);
  else
    snprintf(buf, cap, "-");
}

void cli_fmt_progress(const msgpack_object *job, int with_word, char *buf, size_t cap) {
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

static const struct {
  const char *key, *label;
} plan_parts[] = {
  {"params", "params"},     {"grads", "grads"},         {"optim", "optimizer"},
  {"activations", "activations"}, {"workspace", "workspace"}, {"staging", "staging"},
  {"overhead", "overhead"},
};

static void put_size(FILE *f, const msgpack_object *map, const char *key) {
  char buf[32];
  uint64_t v;

  if (td_obj_u64(map, key, &v) == 0) {
    td_format_size(v, buf, sizeof(buf));
    fputs(buf, f);
  } else {
    fputs("?", f);
  }
}

void cli_print_plan_line(FILE *f, const msgpack_object *plan) {
  uint64_t mb;
  size_t i;

  for (i = 0; i < TD_ARRAY_SIZE(plan_parts); i++) {
    put_size(f, plan, plan_parts[i].key);
    fprintf(f, " %s, ", plan_parts[i].label);
  }
  fputs("total ", f);
  put_size(f, plan, "total");
  if (td_obj_u64(plan, "micro_batch", &mb) == 0)
    fprintf(f, " at micro-batch %" PRIu64, mb);
  fputc('\n', f);
}

void cli_print_plan_table(FILE *f, const msgpack_object *plan, const char *indent) {
  size_t i;

  for (i = 0; i < TD_ARRAY_SIZE(plan_parts); i++) {
    fprintf(f, "%s%-13s", indent, plan_parts[i].label);
    put_size(f, plan, plan_parts[i].key);
    fputc('\n', f);
  }
}

void cli_table_init(cli_table *t, const char *const *headers, size_t ncols, const char *align) {
  size_t i;

  memset(t, 0, sizeof(*t));
  if (ncols > CLI_TABLE_MAX_COLS) {
    t->oom = 1; /* a bug, not a user's mistake; reported as a failure to print */
    return;
  }
  t->ncols = ncols;
  memcpy(t->align, align, ncols);
  for (i = 0; i < ncols; i++)
    cli_table_text(t, headers[i], strlen(headers[i]));
}

/* Columns are counted in code points, so UTF-8 names line up. */
static size_t text_width(const char *s) {
  size_t w = 0;

  for (; *s != '\0'; s++)
    w += ((unsigned char)*s & 0xc0) != 0x80;
  return w;
}

/* Room for one more cell of need bytes (its NUL included). */
static int table_reserve(cli_table *t, size_t need) {
  if (t->oom || t->ncols == 0)
    return -1;
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    size_t *off = realloc(t->off, cap * sizeof(*off));
    uint32_t *cw;

    if (off == NULL)
      goto oom;
    t->off = off;
    if ((cw = realloc(t->cw, cap * sizeof(*cw))) == NULL)
      goto oom;
    t->cw = cw;
    t->cap = cap;
  }
  if (need > t->textcap - t->len) {
    size_t cap = t->textcap ? t->textcap : 4096;
    char *text;

    while (need > cap - t->len)
      cap *= 2;
    if ((text = realloc(t->text, cap)) == NULL)
      goto oom;
    t->text = text;
    t->textcap = cap;
  }
  return 0;

oom:
  t->oom = 1;
  return -1;
}

/* The cell just written at text + len becomes cell n. */
static void table_commit(cli_table *t) {
  char *cell = t->text + t->len;
  const unsigned char *p = (const unsigned char *)cell;
  size_t w, len = 0, col = t->n % t->ncols;

  while (p[len] >= 0x20 && p[len] < 0x7f) /* printable ASCII: one column a byte */
    len++;
  if (p[len] == '\0') {
    w = len;
  } else {
    cli_sanitize(cell);
    len = strlen(cell);
    w = text_width(cell);
  }
  if (w > t->width[col])
    t->width[col] = w;
  t->off[t->n] = t->len;
  t->cw[t->n] = (uint32_t)w;
  t->len += len + 1;
  t->n++;
}

void cli_table_text(cli_table *t, const char *s, size_t len) {
  if (len >= UINT32_MAX || table_reserve(t, len + 1) < 0)
    return;
  memcpy(t->text + t->len, s, len);
  t->text[t->len + len] = '\0';
  table_commit(t);
}

void cli_table_cell(cli_table *t, const char *fmt, ...) {
  va_list ap;
  int n;

  if (table_reserve(t, 64) < 0)
    return;
  va_start(ap, fmt);
  n = vsnprintf(t->text + t->len, t->textcap - t->len, fmt, ap);
  va_end(ap);
  if (n < 0) {
    t->oom = 1;
    return;
  }
  if ((size_t)n >= t->textcap - t->len) {
    if (table_reserve(t, (size_t)n + 1) < 0)
      return;
    va_start(ap, fmt);
    vsnprintf(t->text + t->len, t->textcap - t->len, fmt, ap);
    va_end(ap);
  }
  table_commit(t);
}

/* Each line is built in one buffer and written at once: stdio per cell
 * costs more than the formatting of a 10,000-row table. */
int cli_table_print(const cli_table *t, FILE *f) {
  size_t linecap = 0, i, c;
  char *line;

  if (t->oom) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  for (c = 0; c < t->ncols; c++)
    linecap += t->width[c] + 2;
  /* a cell's bytes may exceed its width (UTF-8): grown below if so */
  line = malloc(linecap + 1);
  if (line == NULL) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  for (i = 0; i < t->n; i += t->ncols) {
    size_t len = 0;

    for (c = 0; c < t->ncols && i + c < t->n; c++) {
      const char *s = t->text + t->off[i + c];
      size_t end = i + c + 1 < t->n ? t->off[i + c + 1] : t->len;
      size_t bytes = end - t->off[i + c] - 1, pad = t->width[c] - t->cw[i + c];
      int last = c + 1 == t->ncols;

      if (last && t->align[c] != 'r')
        pad = 0;
      if (len + bytes + pad + 2 > linecap) {
        char *bigger = realloc(line, 2 * (len + bytes + pad + 2) + 1);

        if (bigger == NULL) {
          free(line);
          cli_fail("out of memory");
          return CLI_EXIT_JOB;
        }
        line = bigger;
        linecap = 2 * (len + bytes + pad + 2);
      }
      if (t->align[c] == 'r') {
        memset(line + len, ' ', pad);
        memcpy(line + len + pad, s, bytes);
      } else {
        memcpy(line + len, s, bytes);
        memset(line + len + bytes, ' ', pad);
      }
      len += bytes + pad;
      if (!last) {
        memcpy(line + len, "  ", 2);
        len += 2;
      }
    }
    line[len++] = '\n';
    fwrite(line, 1, len, f);
  }
  free(line);
  return 0;
}

size_t cli_table_width(const cli_table *t) {
  size_t c, w = 0;

  for (c = 0; c < t->ncols; c++)
    w += t->width[c] + (c > 0 ? 2 : 0);
  return w;
}

void cli_table_free(cli_table *t) {
  if (t == NULL)
    return;
  free(t->text);
  free(t->off);
  free(t->cw);
  t->text = NULL;
  t->off = NULL;
  t->cw = NULL;
  t->n = t->cap = t->len = t->textcap = 0;
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

static void str_cell(cli_table *t, const msgpack_object *map, const char *key,
                     const char *dflt) {
  const char *s;
  size_t len;

  if (td_obj_str(map, key, &s, &len) != 0 || len == 0 || s[0] == '\0')
    s = dflt, len = strlen(dflt);
  cli_table_text(t, s, len);
}

enum col_kind {
  COL_U64, COL_STR, COL_PROGRESS, COL_METRIC, COL_AGE, COL_MEM, COL_SPEED, COL_MICRO,
  COL_TREND,
};

#define TREND_POINTS 12 /* of the loss curve, the most recent */

static const struct job_col {
  const char *head, *key, *dflt;
  char align;
  enum col_kind kind;
} job_cols[] = {
  [CLI_COL_ID] = {"ID", "id", "?", 'r', COL_U64},
  [CLI_COL_NAME] = {"NAME", "name", "-", 'l', COL_STR},
  [CLI_COL_OWNER] = {"OWNER", "owner", "-", 'l', COL_STR},
  [CLI_COL_STATE] = {"STATE", "state", "?", 'l', COL_STR},
  [CLI_COL_DEVICE] = {"DEVICE", "device", "-", 'l', COL_STR},
  [CLI_COL_PROGRESS] = {"PROGRESS", NULL, "-", 'l', COL_PROGRESS},
  [CLI_COL_LOSS] = {"LOSS", "loss", "-", 'r', COL_METRIC},
  [CLI_COL_ACC] = {"ACC", "accuracy", "-", 'r', COL_METRIC},
  [CLI_COL_SUBMITTED] = {"SUBMITTED", "submitted_ms", "-", 'l', COL_AGE},
  [CLI_COL_MEM] = {"MEM/PLAN", "mem", "-", 'r', COL_MEM},
  [CLI_COL_SPEED] = {"SAMPLES/S", "samples_per_sec", "-", 'r', COL_SPEED},
  [CLI_COL_MICRO] = {"MICRO", "plan", "-", 'r', COL_MICRO},
  [CLI_COL_REASON] = {"REASON", "wait_reason", "-", 'l', COL_STR},
  [CLI_COL_TREND] = {"TREND", "loss_curve", "-", 'l', COL_TREND},
};

void cli_job_table_init(cli_table *t, const cli_job_col *cols, size_t ncols) {
  const char *heads[CLI_TABLE_MAX_COLS];
  char align[CLI_TABLE_MAX_COLS];
  size_t i;

  for (i = 0; i < ncols && i < CLI_TABLE_MAX_COLS; i++) {
    heads[i] = job_cols[cols[i]].head;
    align[i] = job_cols[cols[i]].align;
  }
  cli_table_init(t, heads, ncols, align);
}

/* "9.50 MiB / 9.50 MiB": in use (at the last report) of planned. */
static void mem_cell(cli_table *t, const msgpack_object *job) {
  const msgpack_object *plan;
  char used[32] = "-", planned[32] = "-";
  uint64_t v;

  if (td_obj_u64(job, "mem", &v) == 0 && v > 0)
    td_format_size(v, used, sizeof(used));
  if (td_obj_map(job, "plan", &plan) == 0 && td_obj_u64(plan, "total", &v) == 0)
    td_format_size(v, planned, sizeof(planned));
  if (strcmp(used, "-") == 0 && strcmp(planned, "-") == 0)
    cli_table_cell(t, "-");
  else
    cli_table_cell(t, "%s / %s", used, planned);
}

static void job_cell(cli_table *t, const struct job_col *col, const msgpack_object *job) {
  const msgpack_object *plan;
  char buf[96];
  uint64_t u, acc;
  int64_t i;
  double v;

  switch (col->kind) {
  case COL_U64:
    if (td_obj_u64(job, col->key, &u) != 0)
      break;
    cli_table_cell(t, "%" PRIu64, u);
    return;
  case COL_STR:
    str_cell(t, job, col->key, col->dflt);
    return;
  case COL_PROGRESS:
    cli_fmt_progress(job, 0, buf, sizeof(buf));
    cli_table_text(t, buf, strlen(buf));
    return;
  case COL_METRIC:
    cli_fmt_metric(job, col->key, buf, sizeof(buf));
    cli_table_text(t, buf, strlen(buf));
    return;
  case COL_AGE:
    if (td_obj_i64(job, col->key, &i) != 0)
      break;
    cli_fmt_time(i, 1, buf, sizeof(buf));
    cli_table_text(t, buf, strlen(buf));
    return;
  case COL_MEM:
    mem_cell(t, job);
    return;
  case COL_MICRO:
    if (td_obj_map(job, col->key, &plan) != 0 || td_obj_u64(plan, "micro_batch", &u) != 0 ||
        td_obj_u64(plan, "accumulation", &acc) != 0)
      break;
    cli_fmt_micro(u, acc, buf, sizeof(buf));
    cli_table_text(t, buf, strlen(buf));
    return;
  case COL_SPEED:
    if (td_obj_f64(job, col->key, &v) != 0 || !(v > 0 && v < 1e15))
      break;
    cli_fmt_count((uint64_t)(v + 0.5), buf, sizeof(buf));
    cli_table_text(t, buf, strlen(buf));
    return;
  case COL_TREND: {
    double xs[TREND_POINTS], ys[TREND_POINTS];
    size_t n = cli_loss_curve(job, xs, ys, TREND_POINTS);

    if (n < 2)
      break;
    cli_sparkline(ys, n, cli_term_utf8(), buf, sizeof(buf));
    cli_table_text(t, buf, strlen(buf));
    return;
  }
  }
  cli_table_text(t, col->dflt, strlen(col->dflt));
}

void cli_job_row(cli_table *t, const cli_job_col *cols, size_t ncols, const msgpack_object *job) {
  size_t i;

  for (i = 0; i < ncols; i++)
    job_cell(t, &job_cols[cols[i]], job);
}

static const char *const device_heads[] = {"NAME", "BUDGET", "RESERVED", "FREE", "JOBS", "STATE"};

static void device_row(cli_table *t, const msgpack_object *dev) {
  uint64_t budget = 0, reserved = 0, njobs;
  int hb = td_obj_u64(dev, "budget", &budget) == 0;
  int hr = td_obj_u64(dev, "reserved", &reserved) == 0;
  int draining;

  str_cell(t, dev, "name", "?");
  size_cell(t, hb, budget);
  size_cell(t, hr, reserved);
  size_cell(t, hb && hr, budget > reserved ? budget - reserved : 0);
  if (td_obj_u64(dev, "jobs", &njobs) == 0)
    cli_table_cell(t, "%" PRIu64, njobs);
  else
    cli_table_cell(t, "?");
  {
    const char *why;
    size_t whylen = 0;
    uint64_t over = 0;

    /* unusable (a failed probe) outranks draining: nothing runs there */
    if (td_obj_str(dev, "unusable", &why, &whylen) != 0)
      whylen = 0;
    td_obj_u64(dev, "override_budget", &over);
    if (whylen > 0)
      cli_table_cell(t, "unusable");
    else if (td_obj_bool(dev, "draining", &draining) == 0)
      cli_table_cell(t, "%s%s", draining ? "draining" : "active",
                     over > 0 ? " (budget set by an admin)" : "");
    else
      cli_table_cell(t, "?");
  }
}

int cli_print_devices(FILE *f, const msgpack_object *devs) {
  cli_table t;
  uint32_t i;
  int rc;

  cli_table_init(&t, device_heads, TD_ARRAY_SIZE(device_heads), "lrrrrl");
  if (devs->type == MSGPACK_OBJECT_MAP)
    device_row(&t, devs);
  for (i = 0; devs->type == MSGPACK_OBJECT_ARRAY && i < devs->via.array.size; i++)
    if (devs->via.array.ptr[i].type == MSGPACK_OBJECT_MAP)
      device_row(&t, &devs->via.array.ptr[i]);
  rc = cli_table_print(&t, f);
  cli_table_free(&t);
  return rc;
}

size_t cli_columns_from(unsigned ws_col, const char *env) {
  uint64_t n;

  if (ws_col > 0)
    return ws_col;
  if (env != NULL && cli_parse_uint(env, 1, 10000, &n) == 0)
    return (size_t)n;
  return 80;
}

size_t cli_term_columns(int fd) {
  struct winsize ws;

  if (ioctl(fd, TIOCGWINSZ, &ws) != 0)
    ws.ws_col = 0;
  return cli_columns_from(ws.ws_col, getenv("COLUMNS"));
}

void cli_put_fitted(FILE *f, const char *s, size_t len, size_t cols) {
  size_t n = cli_fit_width(s, len, cols);

  if (n < len && cols > 3) { /* cut: say so, within the width */
    fwrite(s, 1, cli_fit_width(s, len, cols - 3), f);
    fputs("...", f);
  } else {
    fwrite(s, 1, n, f);
  }
  fputc('\n', f);
}

void cli_fmt_micro(uint64_t micro_batch, uint64_t accumulation, char *buf, size_t cap) {
  if (micro_batch > 0 && accumulation > 1)
    snprintf(buf, cap, "%" PRIu64 "x%" PRIu64, micro_batch, accumulation);
  else
    snprintf(buf, cap, "-");
}

int cli_eta_due(double ran_s, uint64_t done, uint64_t total) {
  return total > 0 && ran_s >= CLI_ETA_AFTER_S && done * 100 >= total * CLI_ETA_AFTER_PCT;
}

/* printf at the end of what buf holds, cut to fit. */
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

static int known(double v) {
  return isfinite(v) && v >= 0;
}

#define BAR_WIDTH 18

/* Parts of the progress line that give way (in give_way's order) to a narrow
 * terminal. */
enum { PL_BAR = 1, PL_SPEED = 2, PL_ACC = 4 };

static void progress_parts(const cli_progress *p, unsigned parts, char *buf, size_t cap) {
  char num[32];

  buf[0] = '\0';
  if (parts & PL_BAR)
    append(buf, cap, "[epoch %" PRIu64 "/%" PRIu64 "]", p->epoch, p->epochs);
  else
    append(buf, cap, "epoch %" PRIu64 "/%" PRIu64, p->epoch, p->epochs);
  if (p->steps > 0) {
    uint64_t step = p->step < p->steps ? p->step : p->steps;
    unsigned pct = (unsigned)(step * 100 / p->steps);

    if (parts & PL_BAR) {
      size_t fill = (size_t)(step * BAR_WIDTH / p->steps), i;

      append(buf, cap, " [");
      for (i = 0; i < BAR_WIDTH; i++)
        append(buf, cap, "%c", i < fill ? '#' : '-');
      append(buf, cap, "] %3u%%  step %" PRIu64 "/%" PRIu64, pct, p->step, p->steps);
    } else {
      append(buf, cap, "  step %" PRIu64 "/%" PRIu64 " (%u%%)", p->step, p->steps, pct);
    }
  }
  if (known(p->loss))
    append(buf, cap, "  loss %.4f", p->loss);
  if (known(p->train_acc) && (parts & PL_ACC))
    append(buf, cap, "  acc %.4f", p->train_acc);
  if (p->more && known(p->train_mae) && (parts & PL_ACC))
    append(buf, cap, "  mae %.4f", p->train_mae);
  if (p->sps > 0 && p->sps < 1e15 && (parts & PL_SPEED)) {
    cli_fmt_count((uint64_t)(p->sps + 0.5), num, sizeof(num));
    append(buf, cap, "  %s samples/s", num);
  }
  if (p->accumulation > 1 && p->micro_batch > 0)
    append(buf, cap, "  micro-batch %" PRIu64 "x%" PRIu64, p->micro_batch, p->accumulation);
  if (p->eta >= 0 && p->eta < 1e9) {
    cli_fmt_clock(p->eta, num, sizeof(num));
    append(buf, cap, "  ETA %s", num);
  }
}

void cli_fmt_progress_line(const cli_progress *p, int bar, size_t cols, char *buf, size_t cap) {
  static const unsigned give_way[] = {PL_SPEED, PL_BAR, PL_ACC};
  unsigned parts = (bar ? PL_BAR : 0) | PL_SPEED | PL_ACC;
  size_t i;

  progress_parts(p, parts, buf, cap);
  for (i = 0; cols > 0 && i < TD_ARRAY_SIZE(give_way) && text_width(buf) > cols; i++) {
    if (!(parts & give_way[i]))
      continue;
    parts &= ~give_way[i];
    progress_parts(p, parts, buf, cap);
  }
}

/* " loss 0.4100, acc 0.8600, top-5 0.9800" (or ", mae 0.1200") of a split,
 * as far as it is known. */
static void split_text(char *buf, size_t cap, const char *sep, const char *split, double loss,
                       double acc, uint64_t k, double top_k, double mae) {
  const char *comma = "";

  if (!known(loss) && !known(acc) && !known(top_k) && !known(mae))
    return;
  append(buf, cap, "%s%s", sep, split);
  if (known(loss))
    append(buf, cap, " loss %.4f", loss), comma = ",";
  if (known(acc))
    append(buf, cap, "%s acc %.4f", comma, acc), comma = ",";
  if (known(top_k))
    append(buf, cap, "%s top-%" PRIu64 " %.4f", comma, k, top_k), comma = ",";
  if (known(mae))
    append(buf, cap, "%s mae %.4f", comma, mae);
}

void cli_fmt_epoch_end(const cli_epoch_end *e, char *buf, size_t cap) {
  buf[0] = '\0';
  append(buf, cap, "epoch %" PRIu64, e->epoch);
  if (e->epochs > 0)
    append(buf, cap, "/%" PRIu64, e->epochs);
  append(buf, cap, " done");
  double none = -1;

  split_text(buf, cap, ": ", "train", e->train_loss, e->train_acc, 0, none,
             e->more ? e->train_mae : none);
  split_text(buf, cap, strchr(buf, ':') ? "; " : ": ", "val", e->val_loss, e->val_acc, e->top_k,
             e->more ? e->val_top_k : none, e->more ? e->val_mae : none);
  split_text(buf, cap, strchr(buf, ':') ? "; " : ": ", "test", e->test_loss, e->test_acc,
             e->top_k, e->more ? e->test_top_k : none, e->more ? e->test_mae : none);
}

/* Events for the terminal: per topic, the fields that matter, as
 * key=value; a topic not listed shows all its plain fields. */
enum ev_kind { EV_STR, EV_UINT, EV_OF, EV_REAL, EV_SIZE, EV_COUNT, EV_CLOCK, EV_MICRO };

static const struct ev_field {
  const char *topic, *label, *key, *key2; /* key2: EV_OF's whole, EV_MICRO's accumulation */
  enum ev_kind kind;
} ev_fields[] = {
  {"job.state", "state", "state", NULL, EV_STR},
  {"job.state", "device", "device", NULL, EV_STR},
  {"job.state", "name", "name", NULL, EV_STR},
  {"job.state", "error", "error", NULL, EV_STR},
  {"job.progress", "epoch", "epoch", "epochs", EV_OF},
  {"job.progress", "step", "step", "steps", EV_OF},
  {"job.progress", "loss", "loss", NULL, EV_REAL},
  {"job.progress", "acc", "train_accuracy", NULL, EV_REAL},
  {"job.progress", "mae", "train_mae", NULL, EV_REAL},
  {"job.progress", "test_acc", "accuracy", NULL, EV_REAL},
  {"job.progress", "samples/s", "samples_per_sec", NULL, EV_COUNT},
  {"job.progress", "eta", "eta_s", NULL, EV_CLOCK},
  {"job.progress", "mem", "mem", NULL, EV_SIZE},
  {"job.eval", "epoch", "epoch", NULL, EV_UINT},
  {"job.eval", "test_acc", "accuracy", NULL, EV_REAL},
  {"job.eval", "test_loss", "loss", NULL, EV_REAL},
  {"job.eval", "val_acc", "val_accuracy", NULL, EV_REAL},
  {"job.eval", "val_loss", "val_loss", NULL, EV_REAL},
  {"job.eval", "test_top_k", "top_k_accuracy", NULL, EV_REAL},
  {"job.eval", "val_top_k", "val_top_k_accuracy", NULL, EV_REAL},
  {"job.eval", "test_mae", "mae", NULL, EV_REAL},
  {"job.eval", "val_mae", "val_mae", NULL, EV_REAL},
  {"job.replan", "device", "device", NULL, EV_STR},
  {"job.replan", "micro-batch", "plan.micro_batch", "plan.accumulation", EV_MICRO},
  {"job.replan", "reserves", "plan.total", NULL, EV_SIZE},
  {"job.oom", "device", "device", NULL, EV_STR},
  {"job.oom", "phase", "phase", NULL, EV_STR},
  {"job.oom", "requested", "requested", NULL, EV_SIZE},
  {"job.oom", "free", "free", NULL, EV_SIZE},
  {"job.oom", "micro-batch", "micro_batch", NULL, EV_UINT},
  {"device", "device", "name", NULL, EV_STR},
  {"device", "budget", "budget", NULL, EV_SIZE},
  {"device", "reserved", "reserved", NULL, EV_SIZE},
  {"device", "jobs", "jobs", NULL, EV_UINT},
};

/* "plan.total": a key of a map inside the map. */
static const msgpack_object *ev_value(const msgpack_object *m, const char *key) {
  const char *dot = strchr(key, '.');
  const msgpack_object *o;
  char outer[32];

  if (dot == NULL)
    return td_obj_get(m, key, &o) == 0 ? o : NULL;
  snprintf(outer, sizeof(outer), "%.*s", (int)(dot - key), key);
  if (td_obj_map(m, outer, &m) != 0)
    return NULL;
  return td_obj_get(m, dot + 1, &o) == 0 ? o : NULL;
}

static int ev_uint(const msgpack_object *o, uint64_t *v) {
  if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return -1;
  *v = o->via.u64;
  return 0;
}

static int ev_real(const msgpack_object *o, double *v) {
  if (o == NULL)
    return -1;
  if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
    *v = o->via.f64;
  else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
    *v = (double)o->via.u64;
  else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
    *v = (double)o->via.i64;
  else
    return -1;
  return 0;
}

/* A string field, sanitized and quoted when it has spaces; "" is left out. */
static void ev_str(char *buf, size_t cap, const char *label, const msgpack_object *o) {
  char text[256];
  size_t n;

  if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0)
    return;
  n = o->via.str.size < sizeof(text) - 1 ? o->via.str.size : sizeof(text) - 1;
  memcpy(text, o->via.str.ptr, n);
  text[n] = '\0';
  cli_sanitize(text);
  if (text[0] == '\0')
    return;
  if (strpbrk(text, " \"") != NULL)
    append(buf, cap, " %s=\"%s\"", label, text);
  else
    append(buf, cap, " %s=%s", label, text);
}

static void ev_field_text(char *buf, size_t cap, const struct ev_field *e,
                          const msgpack_object *m) {
  const msgpack_object *o = ev_value(m, e->key);
  char num[32];
  uint64_t u, u2;
  double v;

  switch (e->kind) {
  case EV_STR:
    ev_str(buf, cap, e->label, o);
    return;
  case EV_UINT:
    if (ev_uint(o, &u) == 0)
      append(buf, cap, " %s=%" PRIu64, e->label, u);
    return;
  case EV_OF:
    if (ev_uint(o, &u) == 0 && ev_uint(ev_value(m, e->key2), &u2) == 0)
      append(buf, cap, " %s=%" PRIu64 "/%" PRIu64, e->label, u, u2);
    else if (ev_uint(o, &u) == 0)
      append(buf, cap, " %s=%" PRIu64, e->label, u);
    return;
  case EV_MICRO:
    if (ev_uint(o, &u) != 0)
      return;
    if (ev_uint(ev_value(m, e->key2), &u2) != 0)
      u2 = 1;
    append(buf, cap, " %s=%" PRIu64 "x%" PRIu64, e->label, u, u2);
    return;
  case EV_REAL:
    if (ev_real(o, &v) == 0 && known(v))
      append(buf, cap, " %s=%.4f", e->label, v);
    return;
  case EV_SIZE:
    if (ev_uint(o, &u) != 0)
      return;
    td_format_size(u, num, sizeof(num));
    append(buf, cap, " %s=\"%s\"", e->label, num);
    return;
  case EV_COUNT:
    if (ev_real(o, &v) != 0 || !(v > 0 && v < 1e15))
      return;
    cli_fmt_count((uint64_t)(v + 0.5), num, sizeof(num));
    append(buf, cap, " %s=%s", e->label, num);
    return;
  case EV_CLOCK:
    if (ev_real(o, &v) != 0 || !known(v))
      return;
    cli_fmt_clock(v, num, sizeof(num));
    append(buf, cap, " %s=%s", e->label, num);
    return;
  }
}

/* A topic no table row names: its plain fields, as they come. */
static void ev_any(char *buf, size_t cap, const msgpack_object *m) {
  char label[64];
  uint32_t i;
  double v;

  for (i = 0; i < m->via.map.size; i++) {
    const msgpack_object *k = &m->via.map.ptr[i].key, *o = &m->via.map.ptr[i].val;
    size_t n;

    if (k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0)
      continue;
    n = k->via.str.size < sizeof(label) - 1 ? k->via.str.size : sizeof(label) - 1;
    memcpy(label, k->via.str.ptr, n);
    label[n] = '\0';
    cli_sanitize(label);
    if (strcmp(label, "v") == 0 || strcmp(label, "id") == 0)
      continue;
    if (o->type == MSGPACK_OBJECT_STR)
      ev_str(buf, cap, label, o);
    else if (o->type == MSGPACK_OBJECT_BOOLEAN)
      append(buf, cap, " %s=%s", label, o->via.boolean ? "true" : "false");
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      append(buf, cap, " %s=%" PRIu64, label, (uint64_t)o->via.u64);
    else if (ev_real(o, &v) == 0)
      append(buf, cap, " %s=%.6g", label, v);
  }
}

void cli_fmt_event(const char *topic, const msgpack_object *m, char *buf, size_t cap) {
  char name[64];
  uint64_t id;
  size_t i;
  int listed = 0;

  snprintf(name, sizeof(name), "%s", topic);
  cli_sanitize(name);
  buf[0] = '\0';
  append(buf, cap, "%-12s", name);
  if (m->type != MSGPACK_OBJECT_MAP)
    return;
  if (td_obj_u64(m, "id", &id) == 0)
    append(buf, cap, " job %" PRIu64 ":", id);
  for (i = 0; i < TD_ARRAY_SIZE(ev_fields); i++) {
    if (strcmp(ev_fields[i].topic, topic) != 0)
      continue;
    listed = 1;
    ev_field_text(buf, cap, &ev_fields[i], m);
  }
  if (!listed)
    ev_any(buf, cap, m);
}
