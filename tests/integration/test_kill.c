/* The durable queue under SIGKILL: rounds of a storm of submits from
 * several clients, traind killed at a random moment, restarted on the same
 * state directory, then checked: every acknowledged job is there exactly
 * once, nothing that was never sent appeared, a submit whose reply was lost
 * is there at most once, and resubmitting any key returns the same job.
 * Also: a damaged job database makes traind refuse to start, saying which
 * file and what to do.
 *
 * TD_KILL_ROUNDS (default 100) sets the rounds, TD_KILL_SEED the random
 * seed (printed at the start); tests/soak/kill_soak.sh runs many more. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <nanomsg/nn.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define STORM_THREADS 4
#define STORM_MAX_DELAY_MS 50
/* Rounds share a state directory, so the database grows; a fresh one every
 * this many rounds keeps `list` under the protocol's 2 MiB reply. */
#define ROUNDS_PER_DIR 100
#define START_TIMEOUT_MS 30000

enum { SUB_SENT, SUB_ACKED, SUB_REFUSED, SUB_MALFORMED };

typedef struct sub {
  char key[48];
  uint64_t id;
  int state;
  int code;
} sub;

typedef struct subs {
  sub *v;
  size_t n, cap;
} subs;

typedef struct storm {
  pthread_t thread;
  const char *sock;
  const char *yaml;
  const char *nonce;
  int round, index;
  unsigned seed;
  atomic_int *stop;
  subs out;
} storm;

static uint64_t g_rng;

static uint32_t rnd(uint32_t n) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return n ? (uint32_t)(g_rng % n) : 0;
}

static sub *subs_push(subs *s) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    sub *v = realloc(s->v, cap * sizeof(*v));
    ck_assert(v != NULL);
    s->v = v;
    s->cap = cap;
  }
  memset(&s->v[s->n], 0, sizeof(s->v[0]));
  return &s->v[s->n++];
}

static void start_or_fail(th_daemon *d) {
  int rc = th_daemon_start(d, START_TIMEOUT_MS);
  ck_assert_msg(rc == 0, "traind did not come up (%s); its log ends:\n%s", td_strerror(rc),
                th_log_tail(d));
}

/* One client: submit with fresh keys until told to stop.  A submit is
 * recorded before it is sent, so one whose reply never came stays SENT. */
static void *storm_run(void *arg) {
  storm *st = arg;
  int s = th_connect(st->sock, 20), seq = 0;
  char *cred = th_cred_current(NULL); /* NULL when traind wants none */

  if (s < 0) {
    free(cred);
    return NULL;
  }
  while (!atomic_load(st->stop)) {
    sub *e = subs_push(&st->out);
    td_pack p, signed_req;
    void *buf = NULL;
    int n = -1, sent;

    snprintf(e->key, sizeof(e->key), "k%s-r%d-t%d-%d", st->nonce, st->round, st->index, seq++);
    td_pack_init(&p);
    th_pack_submit(&p, st->yaml, "/tmp", e->key, e->key);
    if (cred != NULL) {
      td_pack_request_add(&signed_req, td_pack_data(&p), td_pack_len(&p), "cred", cred);
      sent = nn_send(s, td_pack_data(&signed_req), td_pack_len(&signed_req), 0);
      td_pack_free(&signed_req);
    } else {
      sent = nn_send(s, td_pack_data(&p), td_pack_len(&p), 0);
    }
    td_pack_free(&p);
    if (sent < 0) {
      /* Never handed to nanomsg: not in flight either. */
      st->out.n--;
      continue;
    }
    /* Short receive timeouts, so a stop is noticed while a reply is due. */
    while (!atomic_load(st->stop) && (n = nn_recv(s, &buf, NN_MSG, 0)) < 0 && errno == ETIMEDOUT)
      ;
    if (n < 0)
      break;
    {
      td_msg *m = NULL;
      int code = 0, dup = 0;
      char err[256];

      e->state = SUB_MALFORMED;
      if (td_proto_decode_reply(buf, (size_t)n, &m, &code, err, sizeof(err)) == 0) {
        if (code != 0) {
          e->state = SUB_REFUSED;
          e->code = code;
        } else if (td_obj_u64(td_msg_root(m), "id", &e->id) == 0 &&
                   td_obj_bool(td_msg_root(m), "duplicate", &dup) == 0) {
          e->state = SUB_ACKED;
        }
        td_msg_free(m);
      }
      nn_freemsg(buf);
    }
    /* Paced, so the storm spans the kill window without flooding the
     * queue: about 40 submits a round. */
    th_msleep(rand_r(&st->seed) % 5);
  }
  nn_close(s);
  free(cred);
  return NULL;
}

typedef struct known {
  uint64_t id;
  char key[48];
} known;

typedef struct expect {
  known *v;
  size_t n, cap;
} expect;

static void expect_add(expect *x, uint64_t id, const char *key) {
  if (x->n == x->cap) {
    size_t cap = x->cap ? x->cap * 2 : 256;
    known *v = realloc(x->v, cap * sizeof(*v));
    ck_assert(v != NULL);
    x->v = v;
    x->cap = cap;
  }
  x->v[x->n].id = id;
  td_strlcpy(x->v[x->n].key, key, sizeof(x->v[0].key));
  x->n++;
}

static int cmp_known(const void *a, const void *b) {
  const known *x = a, *y = b;
  return x->id < y->id ? -1 : x->id > y->id;
}

static const th_row *row_by_id(const th_row *rows, size_t n, uint64_t id) {
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (rows[mid].id == id)
      return &rows[mid];
    if (rows[mid].id < id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

/* The budget that holds one test job but not two: with stand-in workers,
 * one job "runs" and every other one stays queued, which keeps rounds fast
 * and the queue growing. */
static char g_budget[32];

static void find_budget(const char *yaml) {
  uint64_t total = 0;
  int rc;

  if (g_budget[0])
    return;
  rc = th_plan_total(yaml, &total);
  ck_assert_msg(rc == 0, "cannot learn the test job's plan: %s", td_strerror(rc));
  /* The config's smallest budget is 1 MiB. */
  ck_assert_msg(total >= (1u << 20), "the test job's plan is only %llu bytes",
                (unsigned long long)total);
  snprintf(g_budget, sizeof(g_budget), "%llu", (unsigned long long)(total + total / 2));
}

static int env_int(const char *name, int dflt) {
  const char *v = getenv(name);
  return v && atoi(v) > 0 ? atoi(v) : dflt;
}

typedef struct round_stats {
  size_t acked, lost_present, lost_absent, refused, startup_kills;
} round_stats;

static int cmp_sub_key(const void *a, const void *b) {
  return strcmp((*(const sub *const *)a)->key, (*(const sub *const *)b)->key);
}

/* After a restart: every job acknowledged in an earlier round (x) or in
 * this one is listed once with its id; every other row is one of this
 * round's submits whose reply was lost, at most once; nothing else.  Then
 * every key of the round is resubmitted: the same id with duplicate=true
 * where the job exists, a new job where it does not. */
static void check_round(int s, expect *x, storm *storms, int round, round_stats *rs) {
  th_row *rows = NULL;
  sub **byname, probe, *pp = &probe;
  size_t n = 0, nsubs = 0, running = 0, earlier = 0, acked = 0, lost = 0;
  char err[512];
  int rc = th_list(s, &rows, &n, err, sizeof(err));

  ck_assert_msg(rc == 0, "round %d: list failed: %s %s", round, td_strerror(rc), err);
  for (int t = 0; t < STORM_THREADS; t++)
    nsubs += storms[t].out.n;
  byname = malloc((nsubs ? nsubs : 1) * sizeof(*byname));
  ck_assert(byname != NULL);
  nsubs = 0;
  for (int t = 0; t < STORM_THREADS; t++)
    for (size_t k = 0; k < storms[t].out.n; k++)
      byname[nsubs++] = &storms[t].out.v[k];
  qsort(byname, nsubs, sizeof(*byname), cmp_sub_key);
  for (size_t k = 0; k < nsubs; k++)
    ck_assert_msg(byname[k]->state != SUB_MALFORMED, "round %d: the reply to submit %s was "
                  "not a well-formed submit reply", round, byname[k]->key);

  for (size_t i = 0; i < n; i++) {
    known key = {.id = rows[i].id};
    const known *k;
    sub **e;

    ck_assert_msg(i == 0 || rows[i].id > rows[i - 1].id,
                  "round %d: list not in id order or an id twice: %llu after %llu", round,
                  (unsigned long long)rows[i].id, (unsigned long long)rows[i - 1].id);
    ck_assert_msg(strcmp(rows[i].state, "queued") == 0 || strcmp(rows[i].state, "running") == 0,
                  "round %d: job %llu is %s; these jobs only queue or run", round,
                  (unsigned long long)rows[i].id, rows[i].state);
    running += strcmp(rows[i].state, "running") == 0;
    k = x->n ? bsearch(&key, x->v, x->n, sizeof(key), cmp_known) : NULL;
    if (k != NULL) {
      ck_assert_msg(strcmp(rows[i].name, k->key) == 0, "round %d: job %llu should be %s, is %s",
                    round, (unsigned long long)rows[i].id, k->key, rows[i].name);
      earlier++;
      continue;
    }
    td_strlcpy(probe.key, rows[i].name, sizeof(probe.key));
    e = nsubs ? bsearch(&pp, byname, nsubs, sizeof(*byname), cmp_sub_key) : NULL;
    ck_assert_msg(e != NULL, "round %d: job %llu (%s) was never submitted, yet it is listed",
                  round, (unsigned long long)rows[i].id, rows[i].name);
    ck_assert_msg((*e)->state != SUB_REFUSED, "round %d: job %llu (%s) is listed, but its "
                  "submit was refused with %s", round, (unsigned long long)rows[i].id,
                  rows[i].name, td_err_name((*e)->code));
    if ((*e)->state == SUB_ACKED) {
      ck_assert_msg((*e)->id == rows[i].id, "round %d: %s was acknowledged as job %llu but is "
                    "listed as %llu", round, rows[i].name, (unsigned long long)(*e)->id,
                    (unsigned long long)rows[i].id);
      acked++;
    } else {
      /* Never twice: the id order check above makes the ids unique, and
       * this key can only be found again under another id. */
      ck_assert_msg((*e)->id == 0, "round %d: lost submit %s is listed twice", round,
                    rows[i].name);
      (*e)->id = rows[i].id;
      lost++;
    }
  }
  ck_assert_msg(running <= 1, "round %d: %zu jobs run on a budget for one", round, running);
  ck_assert_msg(earlier == x->n, "round %d: only %zu of the %zu jobs acknowledged in earlier "
                "rounds are listed after the restart", round, earlier, x->n);
  for (size_t k = 0; k < nsubs; k++)
    ck_assert_msg(byname[k]->state != SUB_ACKED || row_by_id(rows, n, byname[k]->id) != NULL,
                  "round %d: acknowledged job %llu (key %s) is missing after the restart",
                  round, (unsigned long long)byname[k]->id, byname[k]->key);
  {
    size_t want_acked = 0;
    for (size_t k = 0; k < nsubs; k++)
      want_acked += byname[k]->state == SUB_ACKED;
    ck_assert_msg(acked == want_acked, "round %d: %zu of %zu submits acknowledged this round "
                  "are listed", round, acked, want_acked);
  }

  /* The idempotency key: a retry finds the job, wherever it exists. */
  for (size_t k = 0; k < nsubs; k++) {
    sub *e = byname[k];
    td_msg *m = NULL;
    td_pack p;
    uint64_t id = 0;
    int code = -1, dup = -1;

    if (e->state == SUB_REFUSED) {
      rs->refused++;
      continue;
    }
    td_pack_init(&p);
    th_pack_submit(&p, storms[0].yaml, "/tmp", e->key, e->key);
    rc = th_rpc_pack(s, &p, &m, &code, err, sizeof(err));
    td_pack_free(&p);
    ck_assert_msg(rc == 0 && code == 0, "round %d: resubmitting %s: %s %s %s", round, e->key,
                  td_strerror(rc), td_err_name(code), err);
    ck_assert(td_obj_u64(td_msg_root(m), "id", &id) == 0);
    ck_assert(td_obj_bool(td_msg_root(m), "duplicate", &dup) == 0);
    td_msg_free(m);
    if (e->id != 0) {
      ck_assert_msg(id == e->id && dup == 1,
                    "round %d: resubmitting %s (%s) gave id %llu duplicate=%d, expected job "
                    "%llu duplicate=1", round, e->key,
                    e->state == SUB_ACKED ? "acknowledged" : "reply lost, job listed",
                    (unsigned long long)id, dup, (unsigned long long)e->id);
      if (e->state == SUB_ACKED)
        rs->acked++;
      else
        rs->lost_present++;
    } else {
      ck_assert_msg(dup == 0, "round %d: retry of lost %s, which is not listed, says "
                    "duplicate (job %llu)", round, e->key, (unsigned long long)id);
      ck_assert_msg(row_by_id(rows, n, id) == NULL,
                    "round %d: new job for %s got id %llu, already taken", round, e->key,
                    (unsigned long long)id);
      rs->lost_absent++;
    }
    expect_add(x, id, e->key);
  }
  qsort(x->v, x->n, sizeof(x->v[0]), cmp_known);
  for (size_t i = 1; i < x->n; i++)
    ck_assert_msg(x->v[i].id != x->v[i - 1].id, "round %d: id %llu given to %s and %s", round,
                  (unsigned long long)x->v[i].id, x->v[i].key, x->v[i - 1].key);
  free(byname);
  free(rows);
}

/* The database itself agrees, read with SQLite (read-only). */
static void check_db(const th_daemon *d, size_t expected) {
  sqlite3 *h = NULL;
  sqlite3_stmt *st = NULL;
  char uri[300];

  snprintf(uri, sizeof(uri), "file:%s?mode=ro", d->db);
  ck_assert(sqlite3_open_v2(uri, &h, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) == SQLITE_OK);
  ck_assert(sqlite3_prepare_v2(h, "SELECT count(*), count(DISTINCT key), count(DISTINCT id) "
                                  "FROM jobs", -1, &st, NULL) == SQLITE_OK);
  ck_assert(sqlite3_step(st) == SQLITE_ROW);
  ck_assert_int_eq(sqlite3_column_int64(st, 0), (int64_t)expected);
  ck_assert_int_eq(sqlite3_column_int64(st, 1), (int64_t)expected);
  ck_assert_int_eq(sqlite3_column_int64(st, 2), (int64_t)expected);
  sqlite3_finalize(st);
  ck_assert(sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK);
  ck_assert(sqlite3_step(st) == SQLITE_ROW);
  ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "ok");
  sqlite3_finalize(st);
  sqlite3_close(h);
}

START_TEST(sigkill_during_submit_storm) {
  int rounds = env_int("TD_KILL_ROUNDS", 100);
  uint64_t seed = (uint64_t)env_int("TD_KILL_SEED", 0);
  char yaml[2048], nonce[16];
  round_stats rs = {0};
  double t0 = td_now_mono();
  int done = 0;

  if (seed == 0)
    seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
  g_rng = seed | 1;
  printf("kill test: %d rounds, seed %llu (TD_KILL_SEED to repeat the choices)\n", rounds,
         (unsigned long long)seed);
  th_job_yaml(yaml, sizeof(yaml), "kill", 256, 1, 100, 1);
  find_budget(yaml);

  while (done < rounds) {
    th_daemon d;
    expect x = {0};
    int in_dir = rounds - done < ROUNDS_PER_DIR ? rounds - done : ROUNDS_PER_DIR;
    int s;

    /* The storms are one user's thousands of jobs. */
    ck_assert(th_daemon_init(&d, g_budget, "max_jobs_per_user: 1000000\n", 1) == 0);
    start_or_fail(&d);
    for (int r = 0; r < in_dir; r++, done++) {
      storm storms[STORM_THREADS];
      atomic_int stop = 0;
      int delay = (int)rnd(STORM_MAX_DELAY_MS + 1);

      snprintf(nonce, sizeof(nonce), "%x", (unsigned)rnd(0xffffff));
      for (int t = 0; t < STORM_THREADS; t++) {
        storms[t] = (storm){.sock = d.sock, .yaml = yaml, .nonce = nonce, .round = done,
                            .index = t, .seed = rnd(UINT32_MAX), .stop = &stop};
        ck_assert(pthread_create(&storms[t].thread, NULL, storm_run, &storms[t]) == 0);
      }
      th_msleep(delay);
      {
        int status = th_daemon_signal_wait(&d, SIGKILL);
        ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                      "traind was not running when killed (status 0x%x); its log ends:\n%s",
                      status, th_log_tail(&d));
      }
      /* The clients are gone before the next traind binds, so no REQ
       * socket resends a request to it behind the test's back. */
      atomic_store(&stop, 1);
      for (int t = 0; t < STORM_THREADS; t++)
        pthread_join(storms[t].thread, NULL);

      /* Some rounds also kill the next traind while it loads and
       * re-queues the jobs. */
      if (rnd(4) == 0) {
        ck_assert(th_daemon_spawn(&d) == 0);
        th_msleep((int)rnd(30));
        th_daemon_signal_wait(&d, SIGKILL);
        rs.startup_kills++;
      }
      start_or_fail(&d);
      s = th_connect(d.sock, 10000);
      ck_assert(s >= 0);
      check_round(s, &x, storms, done, &rs);
      nn_close(s);
      for (int t = 0; t < STORM_THREADS; t++)
        free(storms[t].out.v);
    }
    ck_assert_msg(th_daemon_stop(&d) == 0, "traind did not stop cleanly; its log ends:\n%s",
                  th_log_tail(&d));
    check_db(&d, x.n);
    printf("kill test: %zu jobs in %s after %d rounds\n", x.n, d.dir, in_dir);
    free(x.v);
    th_daemon_remove(&d);
  }
  printf("kill test: %d rounds in %.1f s: %zu acknowledged, %zu lost replies whose job was "
         "there, %zu not there, %zu refused, %zu kills during startup\n",
         rounds, td_now_mono() - t0, rs.acked, rs.lost_present, rs.lost_absent, rs.refused,
         rs.startup_kills);
  ck_assert_msg(rs.acked > (size_t)rounds, "only %zu submits were acknowledged in %d rounds",
                rs.acked, rounds);
}
END_TEST

/* Damage to jobs.db, each applied to a copy of a good one.  traind must
 * refuse to start, name the file and say what to do, and leave it as it
 * is for the operator. */
typedef enum { DMG_OVERWRITE, DMG_TRUNCATE } dmg_kind;
static const struct damage {
  const char *what;
  dmg_kind kind;
  double at;       /* fraction of the file */
  size_t len;      /* bytes of garbage */
} damages[] = {
    {"garbage over the header", DMG_OVERWRITE, 0.0, 100},
    {"garbage in the middle", DMG_OVERWRITE, 0.5, 4096},
    {"garbage at three quarters", DMG_OVERWRITE, 0.75, 512},
    {"truncated to half", DMG_TRUNCATE, 0.5, 0},
};

static void copy_file(const char *from, const char *to) {
  char *data;
  size_t len;
  int fd;

  ck_assert(td_read_file(from, 1u << 30, &data, &len) == 0);
  fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ck_assert(fd >= 0);
  ck_assert(write(fd, data, len) == (ssize_t)len);
  close(fd);
  free(data);
}

static void damage_file(const char *path, const struct damage *dm) {
  struct stat st;
  int fd = open(path, O_RDWR);
  off_t at;

  ck_assert(fd >= 0 && fstat(fd, &st) == 0);
  /* On a page boundary, past the header page when in the middle. */
  at = (off_t)(st.st_size * dm->at) / 4096 * 4096;
  if (dm->kind == DMG_TRUNCATE) {
    ck_assert(ftruncate(fd, at) == 0);
  } else {
    char junk[4096];
    for (size_t i = 0; i < sizeof(junk); i++)
      junk[i] = (char)rnd(256);
    ck_assert(pwrite(fd, junk, dm->len, at) == (ssize_t)dm->len);
  }
  close(fd);
}

START_TEST(damaged_database_refuses_start) {
  char yaml[2048], good[300], before[300], key[32], log[8192];
  th_daemon d;
  int s;

  g_rng = 0x9e3779b97f4a7c15ull;
  th_job_yaml(yaml, sizeof(yaml), "dmg", 256, 1, 100, 1);
  find_budget(yaml);
  ck_assert(th_daemon_init(&d, g_budget, NULL, 1) == 0);
  start_or_fail(&d);
  s = th_connect(d.sock, 10000);
  /* Enough jobs for a database of many pages. */
  for (int i = 0; i < 300; i++) {
    td_pack p;
    int code = -1;
    snprintf(key, sizeof(key), "dmg-%d", i);
    td_pack_init(&p);
    th_pack_submit(&p, yaml, "/tmp", key, key);
    ck_assert(th_rpc_pack(s, &p, NULL, &code, NULL, 0) == 0 && code == 0);
    td_pack_free(&p);
  }
  nn_close(s);
  /* A clean stop folds the WAL into jobs.db, so the damage is not
   * hidden behind newer copies of the pages in the WAL. */
  ck_assert(th_daemon_stop(&d) == 0);
  snprintf(good, sizeof(good), "%s/good.db", d.dir);
  snprintf(before, sizeof(before), "%s/damaged.db", d.dir);
  copy_file(d.db, good);

  for (size_t i = 0; i < TD_ARRAY_SIZE(damages); i++) {
    char *after, *expected, *text;
    size_t alen, elen, tlen;
    int status = 0, rc;

    copy_file(good, d.db);
    damage_file(d.db, &damages[i]);
    copy_file(d.db, before);
    ck_assert(truncate(d.log, 0) == 0);
    rc = th_daemon_run_to_exit(&d, 20000, &status);
    ck_assert_msg(rc == 0, "%s: traind is still running with a damaged database",
                  damages[i].what);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) != 0,
                  "%s: traind exited with status 0x%x", damages[i].what, status);
    ck_assert(td_read_file(d.log, sizeof(log), &text, &tlen) == 0);
    snprintf(log, sizeof(log), "%s", text);
    free(text);
    ck_assert_msg(strstr(log, d.db) != NULL, "%s: the message does not name %s:\n%s",
                  damages[i].what, d.db, log);
    ck_assert_msg(strstr(log, "integrity") != NULL && strstr(log, "sqlite3") != NULL &&
                      strstr(log, "backup") != NULL,
                  "%s: the message does not say what is wrong and what to do:\n%s",
                  damages[i].what, log);
    {
      const char *line = strstr(log, "job database");
      printf("%s: traind said: %.*s\n", damages[i].what,
             line ? (int)strcspn(line, "\n") : 0, line ? line : "");
    }
    /* Left as it was, for the operator to inspect. */
    ck_assert(td_read_file(d.db, 1u << 30, &after, &alen) == 0);
    ck_assert(td_read_file(before, 1u << 30, &expected, &elen) == 0);
    ck_assert_msg(alen == elen && memcmp(after, expected, alen) == 0,
                  "%s: traind changed the damaged database", damages[i].what);
    free(after);
    free(expected);
    unlink(before);
  }

  /* The good copy still starts, with every job. */
  copy_file(good, d.db);
  {
    char wal[320], shm[320];
    snprintf(wal, sizeof(wal), "%s-wal", d.db);
    snprintf(shm, sizeof(shm), "%s-shm", d.db);
    unlink(wal);
    unlink(shm);
  }
  start_or_fail(&d);
  {
    th_row *rows = NULL;
    size_t n = 0;
    s = th_connect(d.sock, 10000);
    ck_assert(th_list(s, &rows, &n, NULL, 0) == 0);
    ck_assert_uint_eq(n, 300);
    free(rows);
    nn_close(s);
  }
  ck_assert(th_daemon_stop(&d) == 0);
  th_daemon_remove(&d);
}
END_TEST

static Suite *kill_suite(void) {
  Suite *s = suite_create("kill");
  TCase *tc = tcase_create("durable"), *integrity = tcase_create("integrity");
  int rounds = env_int("TD_KILL_ROUNDS", 100);

  /* Generous: under the sanitizers a round takes several times longer. */
  tcase_set_timeout(tc, 120 + rounds * 3);
  tcase_add_test(tc, sigkill_during_submit_storm);
  tcase_set_timeout(integrity, 120);
  tcase_add_test(integrity, damaged_database_refuses_start);
  suite_add_tcase(s, tc);
  suite_add_tcase(s, integrity);
  return s;
}

int main(void) { return th_run(kill_suite(), 1); }
