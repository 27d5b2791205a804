/* The scheduler's decisions without the loop: queue order (priority, fair
 * share, submission), max_running_per_user, backfill, the reasons a job
 * waits, the fair-share decay and retention's choice.  The pure decision
 * (td_sched_decide) is tested with a table of cases over views; the
 * daemon's side of it with sched.c, ledger.c, fairshare.c and retain.c
 * linked with stand-ins for the effects they call (starting a run, the
 * database, publishing). */
#include <check.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "error.h"
#include "fairshare.h"
#include "ledger.h"
#include "metrics.h"
#include "plan.h"
#include "retain.h"
#include "server.h"
#include "supervise.h"
#include "td_sched.h"
#include "traind.h"
#include "util.h"

/* Stand-ins for the edges: a started job just runs. */
static uint64_t g_started[32];
static size_t g_nstarted;

int td_run_start(td_daemon *d, td_job *j, char *err, size_t errlen) {
  (void)d, (void)err, (void)errlen;
  j->state = TD_JOB_RUNNING;
  if (g_nstarted < TD_ARRAY_SIZE(g_started))
    g_started[g_nstarted++] = j->id;
  return 0;
}
void td_publish_device(td_daemon *d, const td_device *dev) { (void)d, (void)dev; }
void td_metrics_admitted(const td_job *j, const td_device *dev, unsigned remedies) {
  (void)j, (void)dev, (void)remedies;
}
void td_job_transition(td_daemon *d, td_job *j, td_job_state s, const char *detail) {
  (void)d, (void)detail;
  j->state = s;
}
void td_job_set(char **field, const char *s) { (void)field, (void)s; }
int td_run_set_budget(td_daemon *d, td_job *j, uint64_t budget) {
  (void)d, (void)j, (void)budget;
  return 0;
}
td_job *td_daemon_find(td_daemon *d, uint64_t id) {
  for (size_t i = 0; i < d->njobs; i++)
    if (d->jobs[i]->id == id)
      return d->jobs[i];
  return NULL;
}
void td_job_free(td_job *j) { free(j); }
int td_db_delete_jobs(td_db *db, const uint64_t *ids, size_t n) {
  (void)db, (void)ids, (void)n;
  return 0;
}
int td_db_usage_load(td_db *db,
                     int (*fn)(void *arg, uint32_t uid, const char *name, double usage,
                               int64_t at_ms),
                     void *arg) {
  (void)db, (void)fn, (void)arg;
  return 0;
}
int td_db_usage_save(td_db *db, td_user *users, size_t n, int64_t at_ms) {
  (void)db, (void)users, (void)n, (void)at_ms;
  return 0;
}

/* A dense network on 28x28 inputs: hidden units and batch set its size. */
static void spec(td_jobspec *s, int hidden, uint32_t batch) {
  memset(s, 0, sizeof(*s));
  snprintf(s->name, sizeof(s->name), "t");
  s->input_dims[0] = s->input_dims[1] = 28;
  s->input_rank = 2;
  s->layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = hidden};
  s->layers[1] = (td_layer){.type = TD_LAYER_RELU};
  s->layers[2] = (td_layer){.type = TD_LAYER_DENSE, .units = 10};
  s->nlayers = 3;
  s->batch_size = batch;
  s->epochs = 1;
  s->opt = (td_optimizer){.kind = TD_OPT_SGD, .lr = 0.01f};
  s->precision = TD_PREC_FP32;
}

static td_daemon g_d;
static td_jobspec g_small, g_big;
static uint64_t g_small_total, g_big_total;

static void setup(void) {
  td_plan p;

  memset(&g_d, 0, sizeof(g_d));
  g_nstarted = 0;
  g_d.cfg.fairshare_halflife_s = 3600;
  g_d.usage_ms = td_now_unix_ms();
  g_d.ndevices = 1;
  snprintf(g_d.devices[0].name, sizeof(g_d.devices[0].name), "cpu0");
  spec(&g_small, 16, 8);
  spec(&g_big, 512, 128);
  ck_assert_int_eq(td_plan_compute(&g_small, 8, TD_PREC_FP32, 0, &p), 0);
  g_small_total = p.total;
  ck_assert_int_eq(td_plan_compute(&g_big, 128, TD_PREC_FP32, 0, &p), 0);
  g_big_total = p.total;
  ck_assert_uint_gt(g_big_total, 4 * g_small_total);
}

static void teardown(void) {
  for (size_t i = 0; i < g_d.njobs; i++)
    free(g_d.jobs[i]);
  free(g_d.jobs);
  free(g_d.users);
}

/* A queued job of a user; jobs get ids in the order they are added. */
static td_job *add(uint32_t uid, const char *owner, int32_t priority, int big) {
  td_job *j = calloc(1, sizeof(*j));

  ck_assert_ptr_nonnull(j);
  if (g_d.njobs == g_d.cap) {
    g_d.cap = g_d.cap ? 2 * g_d.cap : 16;
    g_d.jobs = realloc(g_d.jobs, g_d.cap * sizeof(*g_d.jobs));
    ck_assert_ptr_nonnull(g_d.jobs);
  }
  j->id = g_d.njobs + 1;
  j->uid = uid;
  snprintf(j->owner, sizeof(j->owner), "%s", owner);
  j->priority = priority;
  j->state = TD_JOB_QUEUED;
  j->spec = big ? &g_big : &g_small;
  g_d.jobs[g_d.njobs++] = j;
  return j;
}

static void usage(uint32_t uid, const char *name, double bytes_s) {
  td_user *u = td_user_get(&g_d, uid, name);

  ck_assert_ptr_nonnull(u);
  u->usage = bytes_s;
}

static void budget(uint64_t bytes) {
  g_d.devices[0].budget = bytes;
}

static void assert_started(const uint64_t *ids, size_t n) {
  char got[256] = "";

  for (size_t i = 0; i < g_nstarted; i++)
    snprintf(got + strlen(got), sizeof(got) - strlen(got), " %llu",
             (unsigned long long)g_started[i]);
  ck_assert_msg(g_nstarted == n, "started:%s", got);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(g_started[i] == ids[i], "started:%s", got);
}

START_TEST(test_order_table) {
  static const struct {
    int32_t pa;
    double ua;
    uint64_t ida;
    int32_t pb;
    double ub;
    uint64_t idb;
    int a_first;
  } cases[] = {
      {5, 0, 2, 1, 0, 1, 1},     /* higher priority first, whatever the id */
      {1, 0, 1, 5, 0, 2, 0},
      {5, 1e12, 2, 1, 0, 1, 1},  /* priority beats usage */
      {1, 10, 1, 1, 20, 2, 1},   /* equal priority: less usage first */
      {1, 20, 1, 1, 10, 2, 0},
      {1, 7, 3, 1, 7, 9, 1},     /* equal usage (one user): submission order */
      {1, 7, 9, 1, 7, 3, 0},
      {-3, 0, 1, -2, 50, 2, 0},  /* negative priorities order the same way */
      {0, 0, 4, 0, 0, 4, 0},     /* a job is not before itself */
  };

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_sched_job a = {.id = cases[i].ida, .priority = cases[i].pa, .usage = cases[i].ua};
    td_sched_job b = {.id = cases[i].idb, .priority = cases[i].pb, .usage = cases[i].ub};

    ck_assert_msg(td_sched_before(&a, &b) == cases[i].a_first, "case %zu", i);
  }
}
END_TEST

START_TEST(test_decay_table) {
  static const struct {
    double usage;
    int64_t elapsed_ms;
    uint32_t halflife_s;
    double want;
  } cases[] = {
      {100, 0, 60, 100},
      {100, -5000, 60, 100},          /* the clock went back: no decay */
      {100, 60000, 60, 50},           /* one half-life */
      {100, 120000, 60, 25},
      {100, 30000, 60, 100 / M_SQRT2},
      {0, 1000000, 60, 0},
      {1e15, 604800000, 604800, 5e14},
  };

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    double got = td_fairshare_decay(cases[i].usage, cases[i].elapsed_ms, cases[i].halflife_s);

    ck_assert_msg(fabs(got - cases[i].want) <= 1e-9 * (cases[i].want + 1), "case %zu: %g", i,
                  got);
  }
}
END_TEST

/* Charging adds bytes x seconds on top of the decayed usage. */
START_TEST(test_charge) {
  td_job *j = add(1000, "alice", 0, 0);
  td_user *u;

  j->plan.total = 1000;
  j->acct_mono = td_now_mono() - 2.0;
  usage(1000, "alice", 500);
  td_fairshare_charge(&g_d, j);
  u = td_user_get(&g_d, 1000, NULL);
  ck_assert_double_ge(u->usage, 500 + 1999);
  ck_assert_double_le(u->usage, 500 + 2100);
  ck_assert_int_eq(u->dirty, 1);
}
END_TEST

START_TEST(test_retain_table) {
  enum { DAY = 86400000 };
  static const struct {
    const char *desc;
    size_t n;
    td_retain_entry e[8];
    int64_t now;
    uint32_t days, keep;
    size_t cap;
    size_t want_total, want_n;
    uint64_t want[8];
  } cases[] = {
      {"no limits", 3, {{1, 10}, {2, 20}, {3, 30}}, 100, 0, 0, 10, 0, 0, {0}},
      {"keep 2 of 3", 3, {{1, 10}, {2, 20}, {3, 30}}, 100, 0, 2, 10, 1, 1, {1}},
      {"keep 3 of 3", 3, {{1, 10}, {2, 20}, {3, 30}}, 100, 0, 3, 10, 0, 0, {0}},
      {"keep more than there are", 2, {{1, 10}, {2, 20}}, 100, 0, 50, 10, 0, 0, {0}},
      {"newest by finish, not id", 4, {{1, 40}, {2, 10}, {3, 30}, {4, 20}}, 100, 0, 2, 10, 2,
       2, {2, 4}},
      {"equal finish: higher id is newer", 3, {{5, 10}, {6, 10}, {7, 10}}, 100, 0, 1, 10, 2, 2,
       {5, 6}},
      {"age: older than 1 day", 3, {{1, 0}, {2, 2 * DAY}, {3, 3 * DAY}}, 3 * DAY + 5, 1, 0, 10,
       2, 2, {1, 2}},
      {"age exactly 1 day is kept", 2, {{1, 2 * DAY}, {2, 3 * DAY}}, 3 * DAY, 1, 0, 10, 0, 0,
       {0}},
      {"both limits: the stricter wins", 4, {{1, 0}, {2, 5 * DAY}, {3, 6 * DAY}, {4, 7 * DAY}},
       7 * DAY, 3, 3, 10, 1, 1, {1}},
      {"both limits: age stricter", 4, {{1, 0}, {2, 1 * DAY}, {3, 6 * DAY}, {4, 7 * DAY}},
       7 * DAY, 3, 3, 10, 2, 2, {1, 2}},
      {"batch cap: the oldest first, ids ascending", 6,
       {{9, 60}, {3, 10}, {8, 20}, {1, 30}, {7, 40}, {2, 50}}, 100, 0, 1, 3, 5, 3, {1, 3, 8}},
      {"nothing ended", 0, {{0, 0}}, 100, 1, 1, 10, 0, 0, {0}},
  };

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_retain_entry e[8];
    uint64_t out[8] = {0};
    size_t total = 99, n;

    memcpy(e, cases[i].e, sizeof(e));
    n = td_retain_select(e, cases[i].n, cases[i].now, cases[i].days, cases[i].keep, out,
                         cases[i].cap, &total);
    ck_assert_msg(total == cases[i].want_total, "%s: total %zu", cases[i].desc, total);
    ck_assert_msg(n == cases[i].want_n, "%s: n %zu", cases[i].desc, n);
    for (size_t k = 0; k < n; k++)
      ck_assert_msg(out[k] == cases[i].want[k], "%s: out[%zu] = %llu", cases[i].desc, k,
                    (unsigned long long)out[k]);
  }
}
END_TEST

/* Equal priority: the user who used less starts first, then submission
 * order; the one left says what it waits for. */
START_TEST(test_fair_share_order) {
  td_job *a1 = add(1000, "alice", 0, 0), *b1 = add(1001, "bob", 0, 0);
  td_job *a2 = add(1000, "alice", 0, 0);
  static const uint64_t want[] = {2, 1};

  usage(1000, "alice", 1e9);
  usage(1001, "bob", 1e6);
  budget(2 * g_small_total + g_small_total / 2);
  td_sched_run(&g_d);
  assert_started(want, 2);
  ck_assert_str_eq(b1->wait_reason, "");
  ck_assert_str_eq(a1->wait_reason, "");
  ck_assert_msg(strncmp(a2->wait_reason, "waiting for ", 12) == 0 &&
                    strstr(a2->wait_reason, " on cpu0 (") != NULL,
                "%s", a2->wait_reason);
}
END_TEST

/* Priority beats usage. */
START_TEST(test_priority_first) {
  add(1001, "bob", 0, 0);
  add(1000, "alice", 3, 0);
  static const uint64_t want[] = {2};

  usage(1000, "alice", 1e12);
  budget(g_small_total);
  td_sched_run(&g_d);
  assert_started(want, 1);
}
END_TEST

/* A user at max_running_per_user: their next job is held, others pass. */
START_TEST(test_max_running) {
  td_job *a3;
  static const uint64_t want[] = {1, 2, 4};

  g_d.cfg.max_running_per_user = 2;
  add(1000, "alice", 0, 0);
  add(1000, "alice", 0, 0);
  a3 = add(1000, "alice", 0, 0);
  add(1001, "bob", 0, 0);
  budget(10 * g_small_total);
  td_sched_run(&g_d);
  assert_started(want, 3);
  ck_assert_str_eq(a3->wait_reason,
                   "held: alice has 2 running jobs, the max_running_per_user limit");

  /* a submit while held: held at once */
  g_nstarted = 0;
  g_d.head_wait_since = td_now_mono();
  g_d.head_id = a3->id;
  {
    td_job *a5 = add(1000, "alice", 0, 0);
    td_sched_submitted(&g_d, a5);
    ck_assert_uint_eq(g_nstarted, 0);
    ck_assert_str_eq(a5->wait_reason,
                     "held: alice has 2 running jobs, the max_running_per_user limit");
  }

  /* one of alice's ends: the held one runs */
  g_d.jobs[0]->state = TD_JOB_SUCCEEDED;
  g_nstarted = 0;
  td_sched_run(&g_d);
  ck_assert_uint_eq(g_nstarted, 1);
  ck_assert_uint_eq(g_started[0], a3->id);
}
END_TEST

/* A big head waiting for memory: a small job backfills inside the window,
 * and waits behind it after. */
START_TEST(test_backfill_and_reasons) {
  td_job *big, *small1, *small2;
  static const uint64_t want[] = {2};

  big = add(1000, "alice", 5, 1);
  small1 = add(1001, "bob", 0, 0);
  budget(g_big_total - 1);
  td_sched_run(&g_d);
  assert_started(want, 1);
  ck_assert_msg(strncmp(big->wait_reason, "waiting for ", 12) == 0, "%s", big->wait_reason);
  ck_assert_str_eq(small1->wait_reason, "");

  /* past the window: nothing passes the head any more */
  g_d.head_wait_since = td_now_mono() - 400;
  small2 = add(1001, "bob", 0, 0);
  g_nstarted = 0;
  td_sched_run(&g_d);
  ck_assert_uint_eq(g_nstarted, 0);
  ck_assert_str_eq(small2->wait_reason, "behind job 1 (higher priority)");
  ck_assert_uint_eq(g_d.head_id, 1);

  /* a submit then also waits behind it */
  {
    td_job *small3 = add(1002, "carol", 0, 0);
    td_sched_submitted(&g_d, small3);
    ck_assert_uint_eq(g_nstarted, 0);
    ck_assert_str_eq(small3->wait_reason, "behind job 1 (higher priority)");
  }
}
END_TEST

/* Inside the window, a job that does not fit says so and whom it is behind. */
START_TEST(test_reason_memory_behind) {
  td_job *big2;

  add(1000, "alice", 5, 1);
  big2 = add(1001, "bob", 0, 1);
  budget(g_big_total - 1);
  td_sched_run(&g_d);
  ck_assert_uint_eq(g_nstarted, 0);
  ck_assert_msg(strncmp(big2->wait_reason, "waiting for ", 12) == 0 &&
                    strstr(big2->wait_reason, "; behind job 1") != NULL,
                "%s", big2->wait_reason);
}
END_TEST

/* Devices that admit nothing say so. */
START_TEST(test_reason_device) {
  static const struct {
    int draining, probing;
    const char *unusable, *want;
  } cases[] = {
      {1, 0, "", "device cpu0 is draining"},
      {0, 1, "", "device cpu0 is being probed"},
      {0, 0, "no such GPU", "device cpu0 is unusable: no such GPU"},
  };

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_job *j;

    teardown();
    setup();
    j = add(1000, "alice", 0, 0);
    budget(10 * g_small_total);
    g_d.devices[0].draining = cases[i].draining;
    g_d.devices[0].probing = cases[i].probing;
    snprintf(g_d.devices[0].unusable, sizeof(g_d.devices[0].unusable), "%s", cases[i].unusable);
    td_sched_run(&g_d);
    ck_assert_uint_eq(g_nstarted, 0);
    ck_assert_str_eq(j->wait_reason, cases[i].want);
  }
}
END_TEST

/* A second device that is short of memory is the one named. */
START_TEST(test_reason_prefers_memory) {
  td_job *j;

  g_d.ndevices = 2;
  snprintf(g_d.devices[1].name, sizeof(g_d.devices[1].name), "cpu1");
  g_d.devices[0].draining = 1;
  g_d.devices[0].budget = 10 * g_small_total;
  g_d.devices[1].budget = g_small_total / 2;
  j = add(1000, "alice", 0, 0);
  td_sched_run(&g_d);
  ck_assert_msg(strstr(j->wait_reason, " on cpu1 (") != NULL, "%s", j->wait_reason);
}
END_TEST

/* The pure decision, case by case.  Sizes are in units of plans computed
 * at setup, so the cases hold whatever the planner's numbers are. */
enum { SZ_SMALL, SZ_BIG, SZ_BIG_RECOMPUTE, SZ_BIG_BF16, SZ_BIG_SHRINK2, SZ_BIG_ACC512, SZ__N };
enum { K_SMALL, K_BIG, K_RECOMPUTE, K_BF16, K_SHRINK, K_ACCUMULATE, K__N };

typedef struct {
  int sz;
  double mult;
  int64_t plus;
} bytes_expr;

typedef struct {
  int kind, user;
  int32_t priority;
  const char *pin;
} job_case;

typedef struct {
  const char *name;
  bytes_expr budget, reserved;
  uint64_t overhead;
  int draining, probing;
  const char *unusable;
} dev_case;

typedef struct {
  const char *name;
  uint32_t running;
  double usage;
} user_case;

static td_jobspec g_kinds[K__N];
static uint64_t g_sizes[SZ__N];

static uint64_t bytes(bytes_expr e) {
  return e.mult == 0 ? (uint64_t)e.plus : (uint64_t)(e.mult * (double)g_sizes[e.sz]) + e.plus;
}

static void kinds_setup(void) {
  static const td_remedy only[K__N] = {
      [K_RECOMPUTE] = TD_REMEDY_RECOMPUTE, [K_BF16] = TD_REMEDY_BF16,
      [K_SHRINK] = TD_REMEDY_SHRINK, [K_ACCUMULATE] = TD_REMEDY_ACCUMULATE};
  td_plan p;

  spec(&g_kinds[K_SMALL], 16, 8);
  for (int k = K_BIG; k < K__N; k++) {
    td_jobspec *s = &g_kinds[k];

    /* deep enough that recomputation saves activations (test_plan's
     * chooser_spec) */
    spec(s, 512, 1024);
    s->nlayers = 0;
    for (int l = 0; l < 8; l++) {
      s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 512};
      s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_GELU};
    }
    s->layers[s->nlayers++] = (td_layer){.type = TD_LAYER_DENSE, .units = 10};
    if (k != K_BIG) {
      g_kinds[k].remedies[0] = only[k];
      g_kinds[k].nremedies = 1;
    }
  }
  ck_assert_int_eq(td_plan_at(&g_kinds[K_SMALL], 8, TD_PREC_FP32, 0, 1, 0, &p), 0);
  g_sizes[SZ_SMALL] = p.total;
  ck_assert_int_eq(td_plan_at(&g_kinds[K_BIG], 1024, TD_PREC_FP32, 0, 1, 0, &p), 0);
  g_sizes[SZ_BIG] = p.total;
  ck_assert_int_eq(td_plan_at(&g_kinds[K_BIG], 1024, TD_PREC_FP32, 1, 1, 0, &p), 0);
  g_sizes[SZ_BIG_RECOMPUTE] = p.total;
  ck_assert_int_eq(td_plan_at(&g_kinds[K_BIG], 1024, TD_PREC_BF16, 0, 1, 0, &p), 0);
  g_sizes[SZ_BIG_BF16] = p.total;
  ck_assert_int_eq(td_plan_at(&g_kinds[K_BIG], 512, TD_PREC_FP32, 0, 2, 0, &p), 0);
  g_sizes[SZ_BIG_SHRINK2] = p.total;
  ck_assert_int_eq(td_plan_at(&g_kinds[K_BIG], 512, TD_PREC_FP32, 0, 1, 0, &p), 0);
  g_sizes[SZ_BIG_ACC512] = p.total;
  /* each remedy alone makes the big job fit where it does not as it is */
  for (int z = SZ_BIG_RECOMPUTE; z < SZ__N; z++)
    ck_assert_uint_lt(g_sizes[z], g_sizes[SZ_BIG]);
  ck_assert_uint_gt(g_sizes[SZ_BIG], 4 * g_sizes[SZ_SMALL]);
}

#define S(m) {SZ_SMALL, m, 0}
#define B(m) {SZ_BIG, m, 0}
#define NOW 1000.0

START_TEST(test_decide_table) {
  static const struct {
    const char *desc;
    job_case jobs[6];
    dev_case devs[3];
    user_case users[3];
    uint32_t max_running;
    double head_wait_since;
    const char *want_starts;     /* "J@D" per start, in order; [remedies] when any */
    const char *want_reasons[6]; /* fnmatch patterns, one per job */
    int want_head;               /* -1: none */
    double want_wait_since;
  } cases[] = {
      {"packing: the tighter of two devices (best fit)", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10)}, {.name = "cpu1", .budget = S(2)}}, {{.name = "alice"}},
       0, 0, "0@1", {""}, -1, 0},
      {"packing by bytes: two of three fit",
       {{K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(2.5)}}, {{.name = "alice"}}, 0, 0, "0@0 1@0",
       {"", "", "waiting for * on cpu0 (* free)"}, 2, NOW},
      {"packing: reserved bytes are not free", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(3), .reserved = S(2.5)}}, {{.name = "alice"}}, 0, 0, "",
       {"waiting for * on cpu0 (* free)"}, 0, NOW},
      {"packing: each device full, the third job waits",
       {{K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(1.5)}, {.name = "cpu1", .budget = S(1.2)}},
       {{.name = "alice"}}, 0, 0, "0@1 1@0", {"", "", "waiting for * on cpu0 (* free)"}, 2, NOW},
      {"fair share: the user who used less starts first",
       {{K_SMALL, 0, 0, ""}, {K_SMALL, 1, 0, ""}}, {{.name = "cpu0", .budget = S(1.5)}},
       {{"alice", 0, 1e9}, {"bob", 0, 1e6}}, 0, 0, "1@0", {"waiting for * on cpu0 (* free)", ""}, 0,
       NOW},
      {"priority beats usage", {{K_SMALL, 1, 0, ""}, {K_SMALL, 0, 3, ""}},
       {{.name = "cpu0", .budget = S(1.5)}}, {{"alice", 0, 1e12}, {"bob", 0, 0}}, 0, 0, "1@0",
       {"waiting for * on cpu0 (* free)", ""}, 0, NOW},
      {"negative priorities order the same way", {{K_SMALL, 0, -3, ""}, {K_SMALL, 0, -2, ""}},
       {{.name = "cpu0", .budget = S(1.5)}}, {{.name = "alice"}}, 0, 0, "1@0",
       {"waiting for * on cpu0 (* free)", ""}, 0, NOW},
      {"ties: one user, equal priority, submission order",
       {{K_SMALL, 0, 1, ""}, {K_SMALL, 0, 1, ""}}, {{.name = "cpu0", .budget = S(1.5)}},
       {{.name = "alice"}}, 0, 0, "0@0", {"", "waiting for * on cpu0 (* free)"}, 1, NOW},
      {"ties: two users of equal usage, submission order",
       {{K_SMALL, 1, 0, ""}, {K_SMALL, 0, 0, ""}}, {{.name = "cpu0", .budget = S(1.5)}},
       {{"alice", 0, 5}, {"bob", 0, 5}}, 0, 0, "0@0", {"", "waiting for * on cpu0 (* free)"}, 1,
       NOW},
      {"ties: two devices of equal room, the first", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(2)}, {.name = "cpu1", .budget = S(2)}}, {{.name = "alice"}}, 0,
       0, "0@0", {""}, -1, 0},
      {"max_running_per_user: the user's third is held, another's passes",
       {{K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}, {K_SMALL, 1, 0, ""}},
       {{.name = "cpu0", .budget = S(10)}}, {{.name = "alice", .running = 1}, {.name = "bob"}}, 2,
       0, "0@0 3@0", {"", "held: alice has 2 running jobs, the max_running_per_user limit",
       "held: alice has 2 running jobs, the max_running_per_user limit", ""}, -1, 0},
      {"max_running_per_user: a user without a name is named by uid", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10)}}, {{.name = "", .running = 1}}, 1, 0, "",
       {"held: uid 1000 has 1 running jobs, the max_running_per_user limit"}, -1, 0},
      {"max_running_per_user 0: no limit", {{K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10)}}, {{.name = "alice", .running = 50}}, 0, 0, "0@0 1@0",
       {"", ""}, -1, 0},
      {"a draining device takes nothing; the other does", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10), .draining = 1}, {.name = "cpu1", .budget = S(5)}},
       {{.name = "alice"}}, 0, 0, "0@1", {""}, -1, 0},
      {"only a draining device: it says so", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10), .draining = 1}}, {{.name = "alice"}}, 0, 0, "",
       {"device cpu0 is draining"}, 0, NOW},
      {"a device being probed", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10), .probing = 1}}, {{.name = "alice"}}, 0, 0, "",
       {"device cpu0 is being probed"}, 0, NOW},
      {"an unusable device", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10), .unusable = "no such GPU"}}, {{.name = "alice"}}, 0, 0,
       "", {"device cpu0 is unusable: no such GPU"}, 0, NOW},
      {"a device short of memory is named before a draining one", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(10), .draining = 1}, {.name = "cpu1", .budget = S(0.5)}},
       {{.name = "alice"}}, 0, 0, "", {"waiting for * on cpu1 (* free)"}, 0, NOW},
      {"pinned: only its device, though another has room", {{K_SMALL, 0, 0, "cpu1"}},
       {{.name = "cpu0", .budget = S(10)}, {.name = "cpu1", .budget = S(0.5)}}, {{.name = "alice"}},
       0, 0, "", {"waiting for * on cpu1 (* free)"}, 0, NOW},
      {"pinned to a device traind does not have", {{K_SMALL, 0, 0, "gpu9"}},
       {{.name = "cpu0", .budget = S(10)}}, {{.name = "alice"}}, 0, 0, "",
       {"no device it may use (gpu9) can take it"}, 0, NOW},
      {"remedy: fits only with recomputation", {{K_RECOMPUTE, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG_RECOMPUTE, 1, 0}}}, {{.name = "alice"}}, 0, 0,
       "0@0[recompute]", {""}, -1, 0},
      {"remedy: fits only in bf16", {{K_BF16, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG_BF16, 1, 0}}}, {{.name = "alice"}}, 0, 0, "0@0[bf16]",
       {""}, -1, 0},
      {"remedy: fits only as two updates per batch (shrink)", {{K_SHRINK, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG_SHRINK2, 1, 0}}}, {{.name = "alice"}}, 0, 0,
       "0@0[shrink]", {""}, -1, 0},
      {"remedy: accumulation at half the batch", {{K_ACCUMULATE, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG_ACC512, 1, 0}}}, {{.name = "alice"}}, 0, 0,
       "0@0[accumulate]", {""}, -1, 0},
      {"no remedy allowed: the same budget does not do", {{K_BIG, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG_RECOMPUTE, 1, 0}}}, {{.name = "alice"}}, 0, 0, "",
       {"waiting for * on cpu0 (* free)"}, 0, NOW},
      {"a device that needs no remedy beats a tighter one that does", {{K_RECOMPUTE, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG_RECOMPUTE, 1, 0}}, {.name = "cpu1", .budget = B(3)}},
       {{.name = "alice"}}, 0, 0, "0@1", {""}, -1, 0},
      {"the whole batch beats accumulation", {{K_ACCUMULATE, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG_ACC512, 1, 0}}, {.name = "cpu1", .budget = B(3)}},
       {{.name = "alice"}}, 0, 0, "0@1", {""}, -1, 0},
      {"overhead: the plan holds it, so the device with none takes the job", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_SMALL, 1, 4096}, .overhead = 1 << 20},
       {.name = "cpu1", .budget = {SZ_SMALL, 1, 4096}}}, {{.name = "alice"}}, 0, 0, "0@1", {""}, -1,
       0},
      {"overhead: alone, the device is short", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_SMALL, 1, 4096}, .overhead = 1 << 20}}, {{.name = "alice"}},
       0, 0, "", {"waiting for * on cpu0 (* free)"}, 0, NOW},
      {"too big for every device: the closest is named", {{K_BIG, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(1)}, {.name = "cpu1", .budget = S(3)}}, {{.name = "alice"}}, 0,
       0, "", {"waiting for * on cpu1 (* free)"}, 0, NOW},
      {"backfill: a small job passes the big head that waits",
       {{K_BIG, 0, 5, ""}, {K_SMALL, 1, 0, ""}}, {{.name = "cpu0", .budget = {SZ_BIG, 1, -1}}},
       {{.name = "alice"}, {.name = "bob"}}, 0, 0, "1@0", {"waiting for * on cpu0 (* free)", ""}, 0,
       NOW},
      {"backfill inside the window: the head has waited 100 s",
       {{K_BIG, 0, 5, ""}, {K_SMALL, 1, 0, ""}}, {{.name = "cpu0", .budget = {SZ_BIG, 1, -1}}},
       {{.name = "alice"}, {.name = "bob"}}, 0, NOW - 100, "1@0",
       {"waiting for * on cpu0 (* free)", ""}, 0, NOW - 100},
      {"past the window nothing passes the head", {{K_BIG, 0, 5, ""}, {K_SMALL, 1, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG, 1, -1}}}, {{.name = "alice"}, {.name = "bob"}}, 0,
       NOW - 400, "", {"waiting for * on cpu0 (* free)", "behind job 1 (higher priority)"}, 0,
       NOW - 400},
      {"behind the head by fair share", {{K_BIG, 0, 0, ""}, {K_SMALL, 1, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG, 1, -1}}}, {{"alice", 0, 1}, {"bob", 0, 2}}, 0,
       NOW - 400, "", {"*", "behind job 1 (its user has used less lately (fair share))"}, 0,
       NOW - 400},
      {"behind the head by submission", {{K_BIG, 0, 0, ""}, {K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG, 1, -1}}}, {{.name = "alice"}}, 0, NOW - 400, "",
       {"*", "behind job 1 (submitted earlier)"}, 0, NOW - 400},
      {"waiting for memory, and behind the head", {{K_BIG, 0, 5, ""}, {K_BIG, 1, 0, ""}},
       {{.name = "cpu0", .budget = {SZ_BIG, 1, -1}}}, {{.name = "alice"}, {.name = "bob"}}, 0, 0,
       "", {"waiting for * on cpu0 (* free)", "waiting for * on cpu0 (* free); behind job 1"}, 0,
       NOW},
      {"a head that starts ends the wait", {{K_SMALL, 0, 0, ""}},
       {{.name = "cpu0", .budget = S(2)}}, {{.name = "alice"}}, 0, NOW - 50, "0@0", {""}, -1, 0},
      {"a held head is passed over: the next is the head", {{K_SMALL, 0, 9, ""}, {K_BIG, 1, 0, ""}},
       {{.name = "cpu0", .budget = S(2)}}, {{.name = "alice", .running = 1}, {.name = "bob"}}, 1, 0,
       "", {"held: alice has 1 running jobs, the max_running_per_user limit",
       "waiting for * on cpu0 (* free)"}, 1, NOW},
      {"a start that brings its user to the limit holds the user's next",
       {{K_SMALL, 0, 0, ""}, {K_SMALL, 0, 0, ""}, {K_SMALL, 1, 0, ""}},
       {{.name = "cpu0", .budget = S(10)}}, {{.name = "alice"}, {.name = "bob"}}, 1, 0, "0@0 2@0",
       {"", "held: alice has 1 running jobs, the max_running_per_user limit", ""}, -1, 0},
      {"nothing queued", {{-1, 0, 0, NULL}}, {{.name = "cpu0", .budget = S(2)}},
       {{.name = "alice"}}, 0, NOW - 9, "", {""}, -1, 0},
  };

  for (size_t c = 0; c < TD_ARRAY_SIZE(cases); c++) {
    td_sched_job jobs[6];
    td_sched_dev devs[3];
    td_sched_user users[3];
    td_sched_start starts[6];
    char reasons[6][TD_REASON_MAX], got[256] = "";
    td_sched_view v = {.jobs = jobs, .devs = devs, .users = users, .now = NOW,
                       .max_running_per_user = cases[c].max_running,
                       .head_wait_since = cases[c].head_wait_since,
                       .backfill_window_s = TD_BACKFILL_WINDOW_S};
    td_sched_out out = {.starts = starts, .reasons = reasons};

    for (size_t i = 0; i < 3 && cases[c].users[i].name != NULL; i++, v.nusers++)
      users[i] = (td_sched_user){.uid = 1000 + (uint32_t)i, .name = cases[c].users[i].name,
                                 .running = cases[c].users[i].running};
    for (int k = 0; k < 3 && cases[c].devs[k].name != NULL; k++, v.ndevs++) {
      const dev_case *dc = &cases[c].devs[k];

      devs[k] = (td_sched_dev){.name = dc->name, .budget = bytes(dc->budget),
                               .reserved = bytes(dc->reserved), .overhead = dc->overhead,
                               .draining = dc->draining, .probing = dc->probing,
                               .unusable = dc->unusable ? dc->unusable : ""};
    }
    for (size_t i = 0; i < 6 && cases[c].jobs[i].kind >= 0 && cases[c].jobs[i].pin != NULL;
         i++, v.njobs++) {
      const job_case *jc = &cases[c].jobs[i];

      jobs[i] = (td_sched_job){.id = i + 1, .priority = jc->priority,
                               .usage = cases[c].users[jc->user].usage,
                               .user = (size_t)jc->user, .pin = jc->pin,
                               .spec = &g_kinds[jc->kind]};
    }
    memset(reasons, 'x', sizeof(reasons));
    ck_assert_int_eq(td_sched_decide(&v, &out), 0);
    for (size_t i = 0; i < out.nstarts; i++) {
      char rem[64] = "";

      if (out.starts[i].plan.remedies != 0) {
        rem[0] = '[';
        td_plan_remedies_text(out.starts[i].plan.remedies, rem + 1, sizeof(rem) - 2);
        strcat(rem, "]");
      }
      snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%zu@%d%s", i ? " " : "",
               out.starts[i].job, out.starts[i].dev, rem);
      /* what is reserved is what the chooser gives for that device's room */
      ck_assert_uint_le(out.starts[i].plan.plan.total, devs[out.starts[i].dev].budget);
    }
    ck_assert_msg(strcmp(got, cases[c].want_starts) == 0, "%s: started '%s', want '%s'",
                  cases[c].desc, got, cases[c].want_starts);
    for (size_t i = 0; i < v.njobs; i++)
      ck_assert_msg(fnmatch(cases[c].want_reasons[i] ? cases[c].want_reasons[i] : "",
                            reasons[i], 0) == 0,
                    "%s: job %zu waits for '%s', want '%s'", cases[c].desc, i, reasons[i],
                    cases[c].want_reasons[i]);
    ck_assert_msg(out.head == (cases[c].want_head < 0 ? TD_SCHED_NONE
                                                     : (size_t)cases[c].want_head),
                  "%s: head %zu", cases[c].desc, out.head);
    ck_assert_msg(out.head_wait_since == cases[c].want_wait_since, "%s: waits since %g",
                  cases[c].desc, out.head_wait_since);
  }
}
END_TEST

/* Two starts on one device in one pass never count on the same bytes:
 * a pass over many small jobs fills the device and no more. */
START_TEST(test_decide_never_overbooks) {
  enum { N = 64 };
  td_sched_job jobs[N];
  td_sched_dev dev = {.name = "cpu0", .unusable = ""};
  td_sched_user user = {.uid = 1000, .name = "alice"};
  td_sched_start starts[N];
  char reasons[N][TD_REASON_MAX];
  td_sched_view v = {.jobs = jobs, .njobs = N, .devs = &dev, .ndevs = 1, .users = &user,
                     .nusers = 1, .now = NOW, .backfill_window_s = TD_BACKFILL_WINDOW_S};
  td_sched_out out = {.starts = starts, .reasons = reasons};

  for (uint64_t budget = 0; budget < 12 * g_sizes[SZ_SMALL]; budget += g_sizes[SZ_SMALL] / 3) {
    uint64_t sum = 0;

    for (size_t i = 0; i < N; i++)
      jobs[i] = (td_sched_job){.id = i + 1, .user = 0, .pin = "", .spec = &g_kinds[K_SMALL]};
    dev.budget = budget;
    ck_assert_int_eq(td_sched_decide(&v, &out), 0);
    for (size_t i = 0; i < out.nstarts; i++)
      sum += out.starts[i].plan.plan.total;
    ck_assert_uint_le(sum, budget);
    ck_assert_uint_eq(out.nstarts, budget / g_sizes[SZ_SMALL]);
  }
}
END_TEST

/* The submit shortcut: held, a new head, behind, or a backfill start. */
START_TEST(test_decide_submitted_table) {
  static const struct {
    const char *desc;
    int32_t head_prio, job_prio;
    int job_big;
    uint32_t running, max_running;
    double waited;
    const char *want_reason;
    int want_start, want_head_is_job;
  } cases[] = {
      {"backfills inside the window", 5, 0, 0, 0, 0, 100, "", 1, 0},
      {"past the window: behind the head", 5, 0, 0, 0, 0, 400,
       "behind job 1 (higher priority)", 0, 0},
      {"a higher priority: the new head, and it starts", 0, 9, 0, 0, 0, 400, "", 1, 1},
      {"a higher priority that does not fit: the new head, waiting", 0, 9, 1, 0, 0, 400,
       "waiting for * on cpu0 (* free)", 0, 1},
      {"does not fit inside the window", 5, 0, 1, 0, 0, 100,
       "waiting for * on cpu0 (* free); behind job 1", 0, 0},
      {"held", 5, 0, 0, 2, 2, 100,
       "held: bob has 2 running jobs, the max_running_per_user limit", 0, 0},
  };

  for (size_t c = 0; c < TD_ARRAY_SIZE(cases); c++) {
    td_sched_job jobs[2] = {
        {.id = 1, .priority = cases[c].head_prio, .user = 0, .pin = "",
         .spec = &g_kinds[K_BIG]},
        {.id = 2, .priority = cases[c].job_prio, .user = 1, .pin = "",
         .spec = &g_kinds[cases[c].job_big ? K_BIG : K_SMALL]}};
    td_sched_dev dev = {.name = "cpu0", .budget = g_sizes[SZ_BIG] - 1, .unusable = ""};
    td_sched_user users[2] = {{.uid = 1000, .name = "alice"},
                              {.uid = 1001, .name = "bob", .running = cases[c].running}};
    td_sched_start starts[2];
    char reasons[2][TD_REASON_MAX] = {"the head's own", ""};
    td_sched_view v = {.jobs = jobs, .njobs = 2, .devs = &dev, .ndevs = 1, .users = users,
                       .nusers = 2, .now = NOW, .head_wait_since = NOW - cases[c].waited,
                       .max_running_per_user = cases[c].max_running,
                       .backfill_window_s = TD_BACKFILL_WINDOW_S};
    td_sched_out out = {.starts = starts, .reasons = reasons};

    td_sched_decide_submitted(&v, 1, 0, &out);
    ck_assert_msg(fnmatch(cases[c].want_reason, reasons[1], 0) == 0, "%s: '%s'",
                  cases[c].desc, reasons[1]);
    ck_assert_str_eq(reasons[0], "the head's own");
    ck_assert_msg(out.nstarts == (size_t)cases[c].want_start, "%s", cases[c].desc);
    ck_assert_msg(out.head == (cases[c].want_head_is_job ? 1u : 0u), "%s", cases[c].desc);
  }
}
END_TEST

/* The squeeze's arithmetic: re-plan smaller first, then send back. */
START_TEST(test_squeeze_table) {
  static const struct {
    const char *desc;
    size_t n;
    uint64_t total[4], smallest[4], excess, want[4];
  } cases[] = {
      {"one job re-plans smaller", 1, {100}, {40}, 30, {70}},
      {"the largest gives first", 2, {100, 50}, {40, 10}, 70, {40, 40}},
      {"not enough room in re-plans: the largest goes back", 2, {100, 50}, {90, 45}, 20,
       {1, 45}},
      {"no smaller plan: it goes back", 1, {100}, {0}, 1, {1}},
      {"nothing to give", 2, {100, 50}, {40, 10}, 0, {0, 0}},
  };

  for (size_t c = 0; c < TD_ARRAY_SIZE(cases); c++) {
    uint64_t budget[4];

    td_sched_squeeze_plan(cases[c].total, cases[c].smallest, cases[c].n, cases[c].excess,
                          budget);
    for (size_t i = 0; i < cases[c].n; i++)
      ck_assert_msg(budget[i] == cases[c].want[i], "%s: job %zu gets %llu", cases[c].desc, i,
                    (unsigned long long)budget[i]);
  }
}
END_TEST

static void mk(const char *root, const char *rel, int dir) {
  char path[512];
  int fd;

  snprintf(path, sizeof(path), "%s/%s", root, rel);
  if (dir) {
    ck_assert_int_eq(mkdir(path, 0700), 0);
    return;
  }
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, "x", 1), 1);
  close(fd);
}

static void link_to(const char *root, const char *rel, const char *target) {
  char path[512];

  snprintf(path, sizeof(path), "%s/%s", root, rel);
  ck_assert_int_eq(symlink(target, path), 0);
}

static int exists(const char *root, const char *rel) {
  char path[512];
  struct stat st;

  snprintf(path, sizeof(path), "%s/%s", root, rel);
  return lstat(path, &st) == 0;
}

/* A job directory its user filled with files, subdirectories, a fifo and
 * links out: all of it goes, and nothing a link points at. */
START_TEST(test_remove_dir) {
  char root[] = "/tmp/td-retain.XXXXXX", outside[600], deep[64] = "deep/7";
  int fd;

  ck_assert_ptr_nonnull(mkdtemp(root));
  mk(root, "outside", 1);
  mk(root, "outside/precious", 0);
  snprintf(outside, sizeof(outside), "%s/outside", root);
  mk(root, "7", 1);
  mk(root, "7/log", 0);
  mk(root, "7/a", 1);
  mk(root, "7/a/b", 1);
  mk(root, "7/a/b/file", 0);
  link_to(root, "7/a/b/up", outside);
  link_to(root, "7/tofile", "../outside/precious");
  link_to(root, "7/dangling", "/nonexistent/x");
  {
    char fifo[600];
    snprintf(fifo, sizeof(fifo), "%s/7/fifo", root);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  }
  /* a link in place of the job directory itself is removed, not followed */
  link_to(root, "8", outside);

  fd = open(root, O_RDONLY | O_DIRECTORY);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(td_retain_remove_dir(fd, "7"), 0);
  ck_assert_int_eq(td_retain_remove_dir(fd, "8"), 0);
  ck_assert_int_eq(td_retain_remove_dir(fd, "9"), 0); /* never had one */
  ck_assert(!exists(root, "7"));
  ck_assert(!exists(root, "8"));
  ck_assert(exists(root, "outside/precious"));

  /* deeper than traind walks: what it can reach goes, the rest stays */
  mk(root, "deep", 1);
  mk(root, deep, 1);
  for (int i = 0; i < 20; i++) {
    strcat(deep, "/d");
    mk(root, deep, 1);
  }
  ck_assert_int_eq(td_retain_remove_dir(fd, "deep"), TD_ETOOBIG);
  ck_assert(exists(root, "deep/7"));
  ck_assert_int_eq(td_retain_remove_dir(fd, "outside"), 0);
  close(fd);
  {
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    ck_assert_int_eq(system(cmd), 0);
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("sched");
  TCase *tc = tcase_create("core");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_order_table);
  tcase_add_test(tc, test_decay_table);
  tcase_add_test(tc, test_charge);
  tcase_add_test(tc, test_retain_table);
  tcase_add_test(tc, test_remove_dir);
  tcase_add_test(tc, test_fair_share_order);
  tcase_add_test(tc, test_priority_first);
  tcase_add_test(tc, test_max_running);
  tcase_add_test(tc, test_backfill_and_reasons);
  tcase_add_test(tc, test_reason_memory_behind);
  tcase_add_test(tc, test_reason_device);
  tcase_add_test(tc, test_reason_prefers_memory);
  suite_add_tcase(s, tc);
  tc = tcase_create("decide");
  tcase_add_checked_fixture(tc, kinds_setup, NULL);
  tcase_add_test(tc, test_decide_table);
  tcase_add_test(tc, test_decide_never_overbooks);
  tcase_add_test(tc, test_decide_submitted_table);
  tcase_add_test(tc, test_squeeze_table);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
