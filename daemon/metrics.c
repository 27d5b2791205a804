/* Prometheus metrics: counters and histograms kept by the loop thread,
 * gauges read from the daemon's tables, rendered in the text exposition
 * format (version 0.0.4) once a second for the HTTP thread to serve.
 *
 * Label values are what traind knows: device and op names, error codes,
 * and, for people's jobs, the job's id, name and owner.  Under
 * private_data the endpoint leaves names and owners out (empty), as the
 * status socket leaves out names: whoever can reach it is not asked who
 * they are, and on loopback that is every local user. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "td_config.h"
#include "util.h"

/* Every family, once: the page's HELP and TYPE lines and td_metrics_names. */
#define TD_METRICS_FAMILIES(X)                                                                 \
  X(BUILD_INFO, "traind_build_info", "gauge",                                                  \
    "traind's version and the compute backends it was built with (always 1)")                 \
  X(START_TIME, "traind_start_time_seconds", "gauge",                                          \
    "When traind started, in seconds since the Unix epoch")                                   \
  X(DEV_BUDGET, "traind_device_budget_bytes", "gauge",                                         \
    "Device memory traind may hand to jobs: the configured budget, an admin's lower one, "     \
    "capped by what the probe found free")                                                    \
  X(DEV_RESERVED, "traind_device_reserved_bytes", "gauge",                                     \
    "Device memory reserved by the plans of the jobs admitted to the device")                 \
  X(DEV_FREE, "traind_device_free_bytes", "gauge",                                             \
    "Budget not reserved: what a job admitted now could have")                                \
  X(DEV_USED, "traind_device_used_bytes", "gauge",                                             \
    "Device memory the device's workers report in use (their arenas and context)")            \
  X(DEV_TOTAL, "traind_device_total_bytes", "gauge",                                           \
    "The device's memory as its probe measured it at start")                                  \
  X(DEV_RUNNING, "traind_device_running_jobs", "gauge",                                        \
    "Jobs holding a reservation on the device")                                               \
  X(DEV_DRAINING, "traind_device_draining", "gauge",                                           \
    "1 while the device admits no new job (drained by an admin, or gone from the config)")    \
  X(JOBS, "traind_jobs", "gauge",                                                              \
    "Jobs traind knows by state and owner (ended ones until retention removes them)")         \
  X(JOBS_ENDED, "traind_jobs_ended_total", "counter",                                          \
    "Jobs that ended since traind started, by outcome and owner")                             \
  X(QUEUE_WAIT, "traind_queue_wait_seconds", "histogram",                                      \
    "Time a job waited in the queue before it was admitted to a device: from submit, or "     \
    "from going back to the queue")                                                           \
  X(ADMISSIONS, "traind_admissions_total", "counter", "Jobs admitted to a device")             \
  X(ADMIT_REMEDY, "traind_admission_remedies_total", "counter",                                \
    "Admissions by what the plan chooser used to fit the budget (whole_batch: nothing; an "    \
    "admission with several remedies counts under each)")                                     \
  X(OOM, "traind_oom_events_total", "counter",                                                 \
    "Run-time out-of-memory events reported by workers")                                      \
  X(REPLANS, "traind_replans_total", "counter",                                                \
    "Run-time re-plans of a running job (after an OOM or a budget change)")                   \
  X(OOM_RECOVERY, "traind_oom_recovery_seconds", "histogram",                                  \
    "Time from a worker's out-of-memory event to its next progress report (a completed "       \
    "step; progress comes at most every 0.25 s)")                                             \
  X(JOB_SPS, "traind_job_samples_per_second", "gauge",                                         \
    "A running job's training throughput in its current epoch")                               \
  X(JOB_LOSS, "traind_job_loss", "gauge",                                                      \
    "A running job's mean training loss in its current epoch")                                \
  X(JOB_STEP, "traind_job_step", "gauge",                                                      \
    "A running job's training steps done, over all epochs")                                   \
  X(JOB_DATA_WAIT, "traind_job_data_wait_ratio", "gauge",                                      \
    "The fraction of a running job's time its worker waited for data")                        \
  X(JOB_PLANNED, "traind_job_planned_bytes", "gauge",                                          \
    "A running job's memory plan: the bytes reserved for it on its device")                   \
  X(JOB_USED, "traind_job_used_bytes", "gauge",                                                \
    "Device memory a running job's worker reports in use")                                    \
  X(REQUESTS, "traind_requests_total", "counter",                                              \
    "Requests answered on the job socket, by op and reply code (OK or the error)")            \
  X(REQUEST_DUR, "traind_request_duration_seconds", "histogram",                               \
    "Time from a request's arrival to its reply (with a credential check by munged)")         \
  X(DB_COMMIT, "traind_db_commit_duration_seconds", "histogram",                               \
    "Time a database transaction's COMMIT took (the WAL's fsync)")                            \
  X(RENDER, "traind_metrics_render_duration_seconds", "gauge",                                 \
    "Time the loop took to render the previous page of these metrics")

enum {
#define TD__FAM_ENUM(id, name, type, help) TD__FAM_##id,
  TD_METRICS_FAMILIES(TD__FAM_ENUM)
#undef TD__FAM_ENUM
  TD__FAM_COUNT
};

static const struct {
  const char *name, *type, *help;
} td__families[] = {
#define TD__FAM_ROW(id, name, type, help) {name, type, help},
    TD_METRICS_FAMILIES(TD__FAM_ROW)
#undef TD__FAM_ROW
};

static const char *const td__names[] = {
#define TD__FAM_NAME(id, name, type, help) name,
    TD_METRICS_FAMILIES(TD__FAM_NAME)
#undef TD__FAM_NAME
    NULL,
};

const char *const *td_metrics_names(void) {
  return td__names;
}

#define TD__MAX_BUCKETS 16

typedef struct td__hist {
  const double *le;        /* upper bounds, ascending; +Inf is implied */
  size_t n;
  uint64_t count[TD__MAX_BUCKETS]; /* per bucket, not cumulative; [n] is +Inf */
  double sum;
} td__hist;

static const double td__wait_le[] = {1, 5, 15, 60, 300, 900, 3600, 14400, 86400};
static const double td__req_le[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                    0.01,   0.025,   0.05,   0.1,   0.25,   1};
static const double td__commit_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                       0.025,  0.05,  0.1,    0.25,  1};
static const double td__oom_le[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

#define TD__HIST(b) {.le = (b), .n = TD_ARRAY_SIZE(b)}

static void td__observe(td__hist *h, double v) {
  size_t i = 0;

  if (!(v >= 0)) /* NaN or a clock that went back */
    v = 0;
  while (i < h->n && v > h->le[i])
    i++;
  h->count[i]++;
  h->sum += v;
}

/* Codes: 0 is OK, then the TD_E* list in order. */
#define TD__NCODES (TD__ERR_END - TD__ERR_BASE)
#define TD__MAX_OPS 32
#define TD__NOUTCOMES 3

static int td__code_index(int code) {
  return code > TD__ERR_BASE && code < TD__ERR_END ? code - TD__ERR_BASE : 0;
}

static const char *td__code_name(int i) {
  return td_err_name(i == 0 ? 0 : TD__ERR_BASE + i);
}

typedef struct td__op {
  char name[24];
  uint64_t codes[TD__NCODES];
  td__hist dur;
} td__op;

typedef struct td__owner {
  char name[33];
  uint64_t ended[TD__NOUTCOMES]; /* succeeded, failed, cancelled */
} td__owner;

typedef struct td__since {
  uint64_t id;
  double at;               /* td_now_mono */
} td__since;

/* Everything below is the loop thread's, except the page and its lock. */
static struct {
  td__op ops[TD__MAX_OPS];
  size_t nops;
  td__hist queue_wait, db_commit, oom_recovery;
  uint64_t admissions[TD_MAX_DEVICES], oom[TD_MAX_DEVICES], replans[TD_MAX_DEVICES];
  char devnames[TD_MAX_DEVICES][32]; /* the devices counted so far, in first-seen order */
  int ndev;
  uint64_t remedies[TD_REMEDY__COUNT + 1]; /* [TD_REMEDY__COUNT]: whole batch */
  td__owner *owners;
  size_t nowners, owners_cap;
  /* Jobs sent back to the queue (their wait starts there, not at submit),
   * and jobs whose OOM has not been followed by progress yet: a few. */
  td__since *requeued, *ooms;
  size_t nrequeued, requeued_cap, nooms, ooms_cap;
  double render_s;

  uv_timer_t timer;
  int started;

  pthread_mutex_t lock;    /* guards page and page_len */
  char *page;
  size_t page_len;
} td__m = {
    .queue_wait = TD__HIST(td__wait_le),
    .db_commit = TD__HIST(td__commit_le),
    .oom_recovery = TD__HIST(td__oom_le),
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

static int td__dev_index(const char *name) {
  for (int i = 0; i < td__m.ndev; i++)
    if (strcmp(td__m.devnames[i], name) == 0)
      return i;
  if (td__m.ndev == TD_MAX_DEVICES || name[0] == '\0')
    return -1;
  td_strlcpy(td__m.devnames[td__m.ndev], name, sizeof(td__m.devnames[0]));
  return td__m.ndev++;
}

static td__op *td__op_get(const char *name) {
  td__op *o;

  for (size_t i = 0; i < td__m.nops; i++)
    if (strcmp(td__m.ops[i].name, name) == 0)
      return &td__m.ops[i];
  if (td__m.nops == TD__MAX_OPS) /* the catalogue has a dozen */
    return NULL;
  o = &td__m.ops[td__m.nops++];
  td_strlcpy(o->name, name, sizeof(o->name));
  o->dur = (td__hist)TD__HIST(td__req_le);
  return o;
}

/* A slot in a growing array of n elements of size sz; NULL if out of memory. */
static void *td__push(void **arr, size_t *n, size_t *cap, size_t sz) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, c * sz);
    if (p == NULL)
      return NULL;
    *arr = p;
    *cap = c;
  }
  return (char *)*arr + (*n)++ * sz;
}

/* Remove id's entry; its time into *at.  0 if there was none. */
static int td__since_take(td__since *a, size_t *n, uint64_t id, double *at) {
  for (size_t i = 0; i < *n; i++) {
    if (a[i].id == id) {
      if (at != NULL)
        *at = a[i].at;
      a[i] = a[--*n];
      return 1;
    }
  }
  return 0;
}

static void td__since_put(td__since **a, size_t *n, size_t *cap, uint64_t id) {
  td__since *s;

  td__since_take(*a, n, id, NULL);
  if ((s = td__push((void **)a, n, cap, sizeof(**a))) != NULL)
    *s = (td__since){.id = id, .at = td_now_mono()};
}

void td_metrics_request(const char *op, int code, double seconds) {
  td__op *o = td__op_get(op != NULL ? op : "invalid");

  if (o == NULL)
    return;
  o->codes[td__code_index(code)]++;
  td__observe(&o->dur, seconds);
}

void td_metrics_db_commit(double seconds) {
  td__observe(&td__m.db_commit, seconds);
}

void td_metrics_admitted(const td_job *j, const td_device *dev, unsigned remedies) {
  int i = td__dev_index(dev->name);
  double since;

  if (i >= 0)
    td__m.admissions[i]++;
  if (remedies == 0)
    td__m.remedies[TD_REMEDY__COUNT]++;
  for (int r = 0; r < TD_REMEDY__COUNT; r++)
    if (remedies & (1u << r))
      td__m.remedies[r]++;
  /* From submit to a first start; from going back to the queue to a
   * later one.  A job that ran before this traind started went back to
   * the queue at a time no one kept: it is left out. */
  if (td__since_take(td__m.requeued, &td__m.nrequeued, j->id, &since))
    td__observe(&td__m.queue_wait, td_now_mono() - since);
  else if (j->started_ms == 0)
    td__observe(&td__m.queue_wait, (double)(td_now_unix_ms() - j->submitted_ms) / 1000.0);
}

static td__owner *td__owner_get(const char *name) {
  td__owner *o;

  for (size_t i = 0; i < td__m.nowners; i++)
    if (strcmp(td__m.owners[i].name, name) == 0)
      return &td__m.owners[i];
  o = td__push((void **)&td__m.owners, &td__m.nowners, &td__m.owners_cap, sizeof(*o));
  if (o != NULL) {
    memset(o, 0, sizeof(*o));
    td_strlcpy(o->name, name, sizeof(o->name));
  }
  return o;
}

void td_metrics_job_state(const td_job *j, td_job_state to) {
  int ended = to == TD_JOB_SUCCEEDED || to == TD_JOB_FAILED || to == TD_JOB_CANCELLED;
  td__owner *o;

  if (to == TD_JOB_QUEUED && j->state == TD_JOB_RUNNING)
    td__since_put(&td__m.requeued, &td__m.nrequeued, &td__m.requeued_cap, j->id);
  if (to != TD_JOB_RUNNING)
    td__since_take(td__m.ooms, &td__m.nooms, j->id, NULL);
  if (!ended || j->state == to)
    return;
  td__since_take(td__m.requeued, &td__m.nrequeued, j->id, NULL);
  if ((o = td__owner_get(j->owner)) != NULL)
    o->ended[to - TD_JOB_SUCCEEDED]++;
}

void td_metrics_oom(const td_job *j) {
  int i = td__dev_index(j->device);

  if (i >= 0)
    td__m.oom[i]++;
  td__since_put(&td__m.ooms, &td__m.nooms, &td__m.ooms_cap, j->id);
}

void td_metrics_replan(const td_job *j) {
  int i = td__dev_index(j->device);

  if (i >= 0)
    td__m.replans[i]++;
}

void td_metrics_progress(const td_job *j) {
  double at;

  if (td__m.nooms > 0 && td__since_take(td__m.ooms, &td__m.nooms, j->id, &at))
    td__observe(&td__m.oom_recovery, td_now_mono() - at);
}

/* The page under construction; oom once an allocation failed. */
typedef struct td__buf {
  char *p;
  size_t len, cap;
  int oom;
} td__buf;

static int td__reserve(td__buf *b, size_t more) {
  size_t cap;
  char *p;

  if (b->oom)
    return -1;
  if (b->len + more < b->cap)
    return 0;
  cap = b->cap ? b->cap : 4096;
  while (cap <= b->len + more)
    cap *= 2;
  if ((p = realloc(b->p, cap)) == NULL) {
    b->oom = 1;
    return -1;
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

static void td__put(td__buf *b, const char *s, size_t n) {
  if (td__reserve(b, n) < 0)
    return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void td__puts(td__buf *b, const char *s) {
  td__put(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void td__printf(td__buf *b, const char *fmt, ...) {
  va_list ap;
  int n;

  if (td__reserve(b, 256) < 0)
    return;
  va_start(ap, fmt);
  n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n >= b->cap - b->len) {
    if (td__reserve(b, (size_t)n + 1) < 0)
      return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
  }
  b->len += (size_t)n;
}

/* The length of the valid UTF-8 sequence at s (at most n bytes), 0 if
 * there is none there. */
static size_t td__utf8_len(const unsigned char *s, size_t n) {
  size_t len;
  uint32_t c;

  if (s[0] < 0x80)
    return 1;
  if (s[0] >= 0xc2 && s[0] <= 0xdf)
    len = 2, c = s[0] & 0x1f;
  else if (s[0] >= 0xe0 && s[0] <= 0xef)
    len = 3, c = s[0] & 0x0f;
  else if (s[0] >= 0xf0 && s[0] <= 0xf4)
    len = 4, c = s[0] & 0x07;
  else
    return 0;
  if (len > n)
    return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    c = c << 6 | (s[i] & 0x3f);
  }
  if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff))) ||
      (len == 4 && (c < 0x10000 || c > 0x10ffff)))
    return 0;
  return len;
}

/* A label value as the format wants it: \\, \" and \n escaped; the page is
 * UTF-8, so a byte that is not is written as U+FFFD, and other control
 * characters as spaces. */
static void td__label_value(td__buf *b, const char *v) {
  const unsigned char *s = (const unsigned char *)v;
  size_t n = strlen(v);

  while (n > 0) {
    size_t k = td__utf8_len(s, n);

    if (k == 0) {
      td__puts(b, "\xef\xbf\xbd");
      k = 1;
    } else if (*s == '\\') {
      td__puts(b, "\\\\");
    } else if (*s == '"') {
      td__puts(b, "\\\"");
    } else if (*s == '\n') {
      td__puts(b, "\\n");
    } else if (*s < 0x20 || *s == 0x7f) {
      td__puts(b, " ");
    } else {
      td__put(b, (const char *)s, k);
    }
    s += k;
    n -= k;
  }
}

/* name{k1="v1",k2="v2"} with labels as NULL-terminated key, value pairs. */
static void td__series(td__buf *b, const char *name, const char *const *labels) {
  td__puts(b, name);
  if (labels == NULL || labels[0] == NULL)
    return;
  td__puts(b, "{");
  for (size_t i = 0; labels[i] != NULL; i += 2) {
    td__printf(b, "%s%s=\"", i ? "," : "", labels[i]);
    td__label_value(b, labels[i + 1]);
    td__puts(b, "\"");
  }
  td__puts(b, "}");
}

/* A sample's value: integers exactly, others in the fewest digits that
 * read back as the same double (0.546376, not 0.54637599999999997); NaN
 * and the infinities as the format spells them. */
static void td__value(td__buf *b, double v) {
  char s[32];

  if (isnan(v)) {
    td__puts(b, " NaN\n");
  } else if (isinf(v)) {
    td__puts(b, v > 0 ? " +Inf\n" : " -Inf\n");
  } else if (v == floor(v) && fabs(v) < 9e15) {
    td__printf(b, " %.0f\n", v);
  } else {
    for (int digits = 15; digits <= 17; digits++) {
      snprintf(s, sizeof(s), "%.*g", digits, v);
      if (strtod(s, NULL) == v)
        break;
    }
    td__printf(b, " %s\n", s);
  }
}

static void td__sample(td__buf *b, int fam, const char *const *labels, double v) {
  td__series(b, td__families[fam].name, labels);
  td__value(b, v);
}

static void td__header(td__buf *b, int fam) {
  td__printf(b, "# HELP %s %s\n# TYPE %s %s\n", td__families[fam].name, td__families[fam].help,
             td__families[fam].name, td__families[fam].type);
}

/* A histogram's _bucket, _sum and _count lines, with one optional label. */
static void td__histogram(td__buf *b, int fam, const td__hist *h, const char *key,
                          const char *val) {
  const char *name = td__families[fam].name;
  char series[96], le[32];
  uint64_t cum = 0;

  for (size_t i = 0; i <= h->n; i++) {
    const char *labels[] = {key ? key : "le", key ? val : le, key ? "le" : NULL, le, NULL};

    cum += h->count[i];
    if (i < h->n)
      snprintf(le, sizeof(le), "%g", h->le[i]);
    else
      strcpy(le, "+Inf");
    snprintf(series, sizeof(series), "%s_bucket", name);
    td__series(b, series, labels);
    td__value(b, (double)cum);
  }
  {
    const char *labels[] = {key, val, NULL};

    snprintf(series, sizeof(series), "%s_sum", name);
    td__series(b, series, key ? labels : NULL);
    td__value(b, h->sum);
    snprintf(series, sizeof(series), "%s_count", name);
    td__series(b, series, key ? labels : NULL);
    td__value(b, (double)cum);
  }
}

/* Jobs by owner and state, counted over the job table. */
typedef struct td__tally {
  const char *owner;
  uint32_t uid;
  uint64_t n[TD_JOB__NSTATES];
} td__tally;

static int td__tally_jobs(const td_daemon *d, td__tally **out, size_t *nout) {
  td__tally *t = NULL;
  uint32_t *slot = NULL; /* open addressing by uid: index + 1, 0 = empty */
  size_t n = 0, cap = 0, mask = 0;
  int priv = d->cfg.private_data;

  for (size_t i = 0; i < d->njobs; i++) {
    const td_job *j = d->jobs[i];
    uint32_t uid = priv ? 0 : j->uid;
    size_t h;

    if (n * 2 >= mask) { /* grow and rehash */
      size_t m = mask ? (mask + 1) * 2 : 64;
      uint32_t *s = calloc(m, sizeof(*s));
      if (s == NULL)
        goto oom;
      for (size_t k = 0; k < n; k++) {
        for (h = (t[k].uid * 2654435761u) & (m - 1); s[h] != 0; h = (h + 1) & (m - 1))
          ;
        s[h] = (uint32_t)k + 1;
      }
      free(slot);
      slot = s;
      mask = m - 1;
    }
    for (h = (uid * 2654435761u) & mask; slot[h] != 0 && t[slot[h] - 1].uid != uid;
         h = (h + 1) & mask)
      ;
    if (slot[h] == 0) {
      td__tally *e = td__push((void **)&t, &n, &cap, sizeof(*t));
      if (e == NULL)
        goto oom;
      memset(e, 0, sizeof(*e));
      e->uid = uid;
      e->owner = priv ? "" : j->owner;
      slot[h] = (uint32_t)n;
    }
    if ((unsigned)j->state < TD_JOB__NSTATES)
      t[slot[h] - 1].n[j->state]++;
  }
  free(slot);
  *out = t;
  *nout = n;
  return 0;
oom:
  free(slot);
  free(t);
  return TD_ENOMEM;
}

static void td__render_devices(td__buf *b, const td_daemon *d, td_job *const *run,
                               size_t nrun) {
  static const int fams[] = {TD__FAM_DEV_BUDGET, TD__FAM_DEV_RESERVED, TD__FAM_DEV_FREE,
                             TD__FAM_DEV_USED,   TD__FAM_DEV_TOTAL,    TD__FAM_DEV_RUNNING,
                             TD__FAM_DEV_DRAINING};
  uint64_t used[TD_MAX_DEVICES] = {0};

  for (size_t i = 0; i < nrun; i++)
    for (int k = 0; k < d->ndevices; k++)
      if (strcmp(d->devices[k].name, run[i]->device) == 0)
        used[k] += run[i]->mem;
  for (size_t f = 0; f < TD_ARRAY_SIZE(fams); f++) {
    td__header(b, fams[f]);
    for (int k = 0; k < d->ndevices; k++) {
      const td_device *dev = &d->devices[k];
      const char *labels[] = {"device", dev->name, NULL};
      double v = 0;

      switch (fams[f]) {
      case TD__FAM_DEV_BUDGET: v = (double)dev->budget; break;
      case TD__FAM_DEV_RESERVED: v = (double)dev->reserved; break;
      case TD__FAM_DEV_FREE:
        v = dev->budget > dev->reserved ? (double)(dev->budget - dev->reserved) : 0;
        break;
      case TD__FAM_DEV_USED: v = (double)used[k]; break;
      case TD__FAM_DEV_TOTAL: v = (double)dev->total; break;
      case TD__FAM_DEV_RUNNING: v = dev->njobs; break;
      case TD__FAM_DEV_DRAINING: v = dev->draining != 0; break;
      }
      td__sample(b, fams[f], labels, v);
    }
  }
}

static void td__render_jobs(td__buf *b, const td_daemon *d, td_job *const *run, size_t nrun) {
  static const int fams[] = {TD__FAM_JOB_SPS, TD__FAM_JOB_LOSS, TD__FAM_JOB_STEP,
                             TD__FAM_JOB_DATA_WAIT, TD__FAM_JOB_PLANNED, TD__FAM_JOB_USED};
  int priv = d->cfg.private_data;

  for (size_t f = 0; f < TD_ARRAY_SIZE(fams); f++) {
    td__header(b, fams[f]);
    for (size_t i = 0; i < nrun; i++) {
      const td_job *j = run[i];
      char id[24];
      const char *labels[] = {"id", id, "name", priv ? "" : j->name,
                              "owner", priv ? "" : j->owner, "device", j->device, NULL};
      double v = 0;

      snprintf(id, sizeof(id), "%llu", (unsigned long long)j->id);
      switch (fams[f]) {
      case TD__FAM_JOB_SPS: v = j->samples_per_sec; break;
      case TD__FAM_JOB_LOSS: v = j->loss; break;
      case TD__FAM_JOB_STEP:
        v = (double)((uint64_t)(j->epoch > 0 ? j->epoch - 1 : 0) * j->steps + j->step);
        break;
      case TD__FAM_JOB_DATA_WAIT: v = j->data_wait; break;
      case TD__FAM_JOB_PLANNED: v = (double)j->plan.total; break;
      case TD__FAM_JOB_USED: v = (double)j->mem; break;
      }
      td__sample(b, fams[f], labels, v);
    }
  }
}

static const char *const td__outcomes[TD__NOUTCOMES] = {"succeeded", "failed", "cancelled"};

static void td__render_counts(td__buf *b, const td_daemon *d) {
  td__tally *t = NULL;
  size_t nt = 0;

  td__header(b, TD__FAM_JOBS);
  if (td__tally_jobs(d, &t, &nt) < 0)
    b->oom = 1;
  for (size_t k = 0; k < nt; k++) {
    for (int s = 0; s < TD_JOB__NSTATES; s++) {
      const char *labels[] = {"state", td_job_state_name((td_job_state)s), "owner", t[k].owner,
                              NULL};
      td__sample(b, TD__FAM_JOBS, labels, (double)t[k].n[s]);
    }
  }
  free(t);

  td__header(b, TD__FAM_JOBS_ENDED);
  if (d->cfg.private_data) {
    uint64_t sum[TD__NOUTCOMES] = {0};

    for (size_t k = 0; k < td__m.nowners; k++)
      for (int o = 0; o < TD__NOUTCOMES; o++)
        sum[o] += td__m.owners[k].ended[o];
    for (int o = 0; o < TD__NOUTCOMES && td__m.nowners > 0; o++) {
      const char *labels[] = {"outcome", td__outcomes[o], "owner", "", NULL};
      td__sample(b, TD__FAM_JOBS_ENDED, labels, (double)sum[o]);
    }
  } else {
    for (size_t k = 0; k < td__m.nowners; k++) {
      for (int o = 0; o < TD__NOUTCOMES; o++) {
        const char *labels[] = {"outcome", td__outcomes[o], "owner", td__m.owners[k].name, NULL};
        td__sample(b, TD__FAM_JOBS_ENDED, labels, (double)td__m.owners[k].ended[o]);
      }
    }
  }

  td__header(b, TD__FAM_QUEUE_WAIT);
  td__histogram(b, TD__FAM_QUEUE_WAIT, &td__m.queue_wait, NULL, NULL);

  /* Every configured device, and any counted before a reload removed it. */
  for (int k = 0; k < d->ndevices; k++)
    td__dev_index(d->devices[k].name);
  {
    static const int fams[] = {TD__FAM_ADMISSIONS, TD__FAM_OOM, TD__FAM_REPLANS};
    const uint64_t *vals[] = {td__m.admissions, td__m.oom, td__m.replans};

    for (size_t f = 0; f < TD_ARRAY_SIZE(fams); f++) {
      td__header(b, fams[f]);
      for (int k = 0; k < td__m.ndev; k++) {
        const char *labels[] = {"device", td__m.devnames[k], NULL};
        td__sample(b, fams[f], labels, (double)vals[f][k]);
      }
    }
  }

  td__header(b, TD__FAM_ADMIT_REMEDY);
  for (int r = 0; r <= TD_REMEDY__COUNT; r++) {
    const char *labels[] = {
        "remedy", r < TD_REMEDY__COUNT ? td_remedy_name((td_remedy)r) : "whole_batch", NULL};
    td__sample(b, TD__FAM_ADMIT_REMEDY, labels, (double)td__m.remedies[r]);
  }

  td__header(b, TD__FAM_OOM_RECOVERY);
  td__histogram(b, TD__FAM_OOM_RECOVERY, &td__m.oom_recovery, NULL, NULL);

  td__header(b, TD__FAM_REQUESTS);
  for (size_t i = 0; i < td__m.nops; i++) {
    for (int c = 0; c < TD__NCODES; c++) {
      const char *labels[] = {"op", td__m.ops[i].name, "code", td__code_name(c), NULL};

      if (td__m.ops[i].codes[c] != 0)
        td__sample(b, TD__FAM_REQUESTS, labels, (double)td__m.ops[i].codes[c]);
    }
  }
  td__header(b, TD__FAM_REQUEST_DUR);
  for (size_t i = 0; i < td__m.nops; i++)
    td__histogram(b, TD__FAM_REQUEST_DUR, &td__m.ops[i].dur, "op", td__m.ops[i].name);

  td__header(b, TD__FAM_DB_COMMIT);
  td__histogram(b, TD__FAM_DB_COMMIT, &td__m.db_commit, NULL, NULL);
}

int td_metrics_render(const td_daemon *d, char **out, size_t *len) {
  static const char *const build[] = {"version", TD_VERSION, "backend",
                                      TD_HAVE_CUDA ? "cpu,cuda" : "cpu", NULL};
  td__buf b = {0};
  td_job **run = NULL;
  size_t nrun = 0, cap = 0;

  /* The running jobs, once: the queue may hold thousands of others. */
  for (size_t i = 0; i < d->njobs; i++) {
    td_job **slot;

    if (d->jobs[i]->state != TD_JOB_RUNNING)
      continue;
    if ((slot = td__push((void **)&run, &nrun, &cap, sizeof(*run))) == NULL) {
      b.oom = 1;
      break;
    }
    *slot = d->jobs[i];
  }
  td__header(&b, TD__FAM_BUILD_INFO);
  td__sample(&b, TD__FAM_BUILD_INFO, build, 1);
  td__header(&b, TD__FAM_START_TIME);
  td__sample(&b, TD__FAM_START_TIME, NULL,
             (double)td_now_unix_ms() / 1000.0 - (td_now_mono() - d->start_mono));
  td__render_devices(&b, d, run, nrun);
  td__render_counts(&b, d);
  td__render_jobs(&b, d, run, nrun);
  free(run);
  td__header(&b, TD__FAM_RENDER);
  td__sample(&b, TD__FAM_RENDER, NULL, td__m.render_s);
  if (b.oom || b.p == NULL) {
    free(b.p);
    return TD_ENOMEM;
  }
  *out = b.p;
  *len = b.len;
  return 0;
}

char *td_metrics_snapshot(size_t *len) {
  char *copy = NULL;

  pthread_mutex_lock(&td__m.lock);
  if (td__m.page != NULL && (copy = malloc(td__m.page_len + 1)) != NULL) {
    memcpy(copy, td__m.page, td__m.page_len + 1);
    *len = td__m.page_len;
  }
  pthread_mutex_unlock(&td__m.lock);
  return copy;
}

/* Render on the loop and swap the page in; the old one is freed outside
 * the lock, so the HTTP thread waits at most for a pointer swap. */
static void td__publish(td_daemon *d) {
  double t0 = td_now_mono();
  char *page, *old;
  size_t len;

  if (td_metrics_render(d, &page, &len) < 0) {
    td_warn("metrics: out of memory rendering the page; serving the previous one");
    return;
  }
  td__m.render_s = td_now_mono() - t0;
  pthread_mutex_lock(&td__m.lock);
  old = td__m.page;
  td__m.page = page;
  td__m.page_len = len;
  pthread_mutex_unlock(&td__m.lock);
  free(old);
}

static void td__on_timer(uv_timer_t *t) {
  td__publish(t->data);
}

void td_metrics_start(td_daemon *d) {
  char err[512];
  int rc;

  if (d->cfg.metrics_listen[0] == '\0') {
    td_info("metrics: off (metrics_listen is \"\")");
    return;
  }
  td__publish(d);
  if ((rc = td_metrics_http_start(d->cfg.metrics_listen, err, sizeof(err))) < 0) {
    /* The unit's sandbox without the network is how traind ships: said,
     * not warned about.  A port taken is a fault. */
    td_log(rc == TD_EPERM ? TD_LOG_INFO : TD_LOG_WARN, "metrics: not served: %s", err);
    return;
  }
  uv_timer_init(d->loop, &td__m.timer);
  td__m.timer.data = d;
  uv_timer_start(&td__m.timer, td__on_timer, 1000, 1000);
  uv_unref((uv_handle_t *)&td__m.timer); /* the loop ends without waiting for it */
  td__m.started = 1;
  td_info("metrics: Prometheus endpoint on http://%s/metrics", d->cfg.metrics_listen);
}

void td_metrics_stop(void) {
  if (td__m.started)
    td_metrics_http_stop();
  td__m.started = 0;
  pthread_mutex_lock(&td__m.lock);
  free(td__m.page);
  td__m.page = NULL;
  pthread_mutex_unlock(&td__m.lock);
  free(td__m.owners);
  free(td__m.requeued);
  free(td__m.ooms);
  td__m.owners = NULL;
  td__m.requeued = td__m.ooms = NULL;
  td__m.nowners = td__m.nrequeued = td__m.nooms = 0;
  td__m.owners_cap = td__m.requeued_cap = td__m.ooms_cap = 0;
}
