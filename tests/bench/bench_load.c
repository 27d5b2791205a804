/* Load on traind's control plane, each number printed beside its target:
 * submit latency over ipc (each submit waits for its SQLite commit and
 * fsync), status requests per second from 16 concurrent clients, `ls` of
 * 10,000 queued jobs, traind's resident memory holding them, and how long
 * a restart over them takes to answer.  The peer
 * measured in the same run is SQLite itself on the same disk: single-row
 * INSERT transactions, WAL, synchronous=FULL, so the fsync's share of a
 * submit is visible.
 *
 *   bench_load [JOBS]        (default 10000; the state lives under $TMPDIR or /tmp)
 *   TD_BENCH_METRICS=PORT bench_load   also serve metrics on 127.0.0.1:PORT
 *
 * traind runs with stand-in workers and a device budget for one job: one
 * job "runs", the rest stay queued, and nothing trains. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <nanomsg/nn.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define LATENCY_SUBMITS 2000
#define STATUS_CLIENTS 16
#define STATUS_SECONDS 3.0
#define LS_RUNS 10

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_load: %s: %s\n", what, td_strerror(rc));
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The q-quantile of n sorted values (nearest rank). */
static double quantile(const double *v, size_t n, double q) {
  size_t k = (size_t)ceil(q * (double)n);
  return n == 0 ? 0 : v[k == 0 ? 0 : k - 1];
}

typedef struct lat {
  double p50, p99, max, mean;
} lat;

/* Sorts a copy: v keeps the submission order. */
static lat summarize(const double *in, size_t n) {
  lat l = {0};
  double sum = 0, *v = malloc((n ? n : 1) * sizeof(*v));

  if (v == NULL)
    return l;
  memcpy(v, in, n * sizeof(*v));
  qsort(v, n, sizeof(*v), cmp_double);
  for (size_t i = 0; i < n; i++)
    sum += v[i];
  l.p50 = quantile(v, n, 0.50);
  l.p99 = quantile(v, n, 0.99);
  l.max = n ? v[n - 1] : 0;
  l.mean = n ? sum / (double)n : 0;
  free(v);
  return l;
}

/* One line of the results: what, its value, its target and whether the
 * value meets it (no target: a peer's number). */
static void row(const char *what, const char *value, const char *target, int ok) {
  if (target)
    printf("%-60s %-24s %s: %s\n", what, value, target, ok ? "meets" : "MISSES");
  else
    printf("%-60s %s\n", what, value);
}

/* Submits [from, to) on one socket; seconds per submit into v. */
static void submit_range(int s, const char *yaml, int from, int to, double *v) {
  for (int i = from; i < to; i++) {
    char key[32], err[512];
    td_pack p;
    int code = -1, rc;
    double t0;

    snprintf(key, sizeof(key), "bench-%d", i);
    td_pack_init(&p);
    th_pack_submit(&p, yaml, "/tmp", key, NULL);
    t0 = td_now_mono();
    rc = th_rpc_pack(s, &p, NULL, &code, err, sizeof(err));
    v[i - from] = td_now_mono() - t0;
    td_pack_free(&p);
    if (rc < 0)
      die("submit", rc);
    if (code != 0) {
      fprintf(stderr, "bench_load: submit %d refused: %s %s\n", i, td_err_name(code), err);
      exit(1);
    }
  }
}

typedef struct status_client {
  pthread_t thread;
  const char *sock;
  const char *op;
  uint64_t max_id;
  atomic_int *go;
  double until;
  long done, failed;
} status_client;

static void *status_run(void *arg) {
  status_client *c = arg;
  int s = th_connect(c->sock, 10000);
  unsigned seed = (unsigned)(uintptr_t)c;

  if (s < 0)
    return NULL;
  while (!atomic_load(c->go))
    ;
  while (td_now_mono() < c->until) {
    int code = -1, rc;
    if (c->max_id > 0)
      rc = th_rpc_simple(s, c->op, "id", 1 + (uint64_t)rand_r(&seed) % c->max_id, NULL, &code,
                         NULL, 0);
    else
      rc = th_rpc_simple(s, c->op, NULL, 0, NULL, &code, NULL, 0);
    if (rc == 0 && code == 0)
      c->done++;
    else
      c->failed++;
  }
  nn_close(s);
  return NULL;
}

/* Requests per second from STATUS_CLIENTS clients, each on its own
 * socket, asking op (with a random job id when max_id > 0). */
static double status_rate(const char *sock, const char *op, uint64_t max_id, long *failed) {
  status_client c[STATUS_CLIENTS];
  atomic_int go = 0;
  double t0, until;
  long done = 0;

  *failed = 0;
  until = td_now_mono() + 3600;
  for (int i = 0; i < STATUS_CLIENTS; i++) {
    c[i] = (status_client){.sock = sock, .op = op, .max_id = max_id, .go = &go, .until = until};
    if (pthread_create(&c[i].thread, NULL, status_run, &c[i]) != 0)
      die("pthread_create", TD_ENOMEM);
  }
  th_msleep(200); /* every client connected */
  t0 = td_now_mono();
  for (int i = 0; i < STATUS_CLIENTS; i++)
    c[i].until = t0 + STATUS_SECONDS;
  atomic_store(&go, 1);
  for (int i = 0; i < STATUS_CLIENTS; i++) {
    pthread_join(c[i].thread, NULL);
    done += c[i].done;
    *failed += c[i].failed;
  }
  return (double)done / (td_now_mono() - t0);
}

/* Seconds for `list` of every job over the socket, page by page as
 * traind-client's ls reads them; *n the rows. */
static double list_once(int s, size_t *n) {
  double t0 = td_now_mono();
  uint64_t after = 0;
  int more = 1;

  *n = 0;
  while (more) {
    const msgpack_object *jobs;
    td_msg *m = NULL;
    td_pack p;
    int code = -1, rc;

    td_pack_init(&p);
    td_pack_request(&p, "list", 2);
    td_pack_kv_u64(&p, "after", after);
    td_pack_kv_u64(&p, "limit", 1000);
    rc = th_rpc_pack(s, &p, &m, &code, NULL, 0);
    td_pack_free(&p);
    if (rc < 0 || code != 0)
      die("list", rc < 0 ? rc : code);
    if (td_obj_array(td_msg_root(m), "jobs", &jobs) != 0 || jobs->via.array.size == 0 ||
        td_obj_u64(&jobs->via.array.ptr[jobs->via.array.size - 1], "id", &after) != 0 ||
        td_obj_bool(td_msg_root(m), "more", &more) != 0)
      more = 0;
    else
      *n += jobs->via.array.size;
    td_msg_free(m);
  }
  return td_now_mono() - t0;
}

/* Seconds for `traind-client ls`, output to /dev/null. */
static double client_ls_once(const char *sock) {
  char exe[PATH_MAX];
  const char *root = getenv("TD_BUILD_ROOT");
  double t0 = td_now_mono();
  int status = -1;
  pid_t pid;

  snprintf(exe, sizeof(exe), "%s/client/traind-client", root ? root : "build");
  fflush(stdout);
  pid = fork();
  if (pid == 0) {
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0 || dup2(fd, 1) < 0)
      _exit(126);
    alarm(20); /* a client that never gets its reply */
    execl(exe, exe, "--socket", sock, "ls", (char *)NULL);
    _exit(127);
  }
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench_load: `%s ls` failed (%s %d)\n", exe,
            WIFSIGNALED(status) ? "killed by signal" : "exit status",
            WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    return -1;
  }
  return td_now_mono() - t0;
}

/* The peer: what SQLite needs for one durable single-row transaction on
 * the same disk, with a row of the size a submit writes. */
static lat sqlite_peer(const char *dir, const char *yaml, int n) {
  char path[300];
  sqlite3 *h = NULL;
  sqlite3_stmt *st = NULL;
  double *v = calloc((size_t)n, sizeof(*v));
  lat l;

  snprintf(path, sizeof(path), "%s/peer.db", dir);
  if (v == NULL || sqlite3_open(path, &h) != SQLITE_OK ||
      sqlite3_exec(h, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                      "CREATE TABLE t(id INTEGER PRIMARY KEY, key TEXT UNIQUE, yaml TEXT)",
                   NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_prepare_v2(h, "INSERT INTO t(key, yaml) VALUES(?, ?)", -1, &st, NULL) != SQLITE_OK)
    die("sqlite peer", TD_EDB);
  for (int i = 0; i < n; i++) {
    char key[32];
    double t0 = td_now_mono();

    snprintf(key, sizeof(key), "peer-%d", i);
    sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, yaml, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE ||
        sqlite3_exec(h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
      die("sqlite peer insert", TD_EDB);
    v[i] = td_now_mono() - t0;
  }
  sqlite3_finalize(st);
  sqlite3_close(h);
  l = summarize(v, (size_t)n);
  free(v);
  return l;
}

/* traind is found through TD_BUILD_ROOT; by default the build directory
 * this program was built in (it lives in BUILD/tests/). */
static void default_build_root(void) {
  char exe[PATH_MAX];
  ssize_t n;
  char *slash;

  if (getenv("TD_BUILD_ROOT") != NULL)
    return;
  n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0)
    return;
  exe[n] = '\0';
  for (int i = 0; i < 2 && (slash = strrchr(exe, '/')) != NULL; i++)
    *slash = '\0';
  setenv("TD_BUILD_ROOT", exe, 1);
}

static const char *fs_name(const char *dir) {
  struct statfs sf;
  if (statfs(dir, &sf) != 0)
    return "unknown";
  switch ((unsigned long)sf.f_type) {
  case 0xEF53: return "ext4";
  case 0x58465342: return "xfs";
  case 0x9123683E: return "btrfs";
  case 0x01021994: return "tmpfs (no real fsync: the numbers flatter)";
  case 0x794c7630: return "overlayfs";
  default: return "other";
  }
}

int main(int argc, char **argv) {
  int jobs = argc > 1 ? atoi(argv[1]) : 10000;
  char yaml[2048], budget[32], extra[256], what[128], value[64];
  double *v, ls[LS_RUNS], cls[5];
  uint64_t total = 0, rss0 = 0, rss = 0;
  lat first, last, peer;
  double info0, info1, show1, t0;
  long fail0, fail1, fail2;
  size_t rows = 0;
  th_daemon d;
  int s, rc, ncls = 0;

  if (jobs < LATENCY_SUBMITS + 1000) {
    fprintf(stderr, "usage: bench_load [JOBS >= %d]\n", LATENCY_SUBMITS + 1000);
    return 2;
  }
  default_build_root();
  th_job_yaml(yaml, sizeof(yaml), "bench", 128, 1, 1000, 32);
  if ((rc = th_plan_total(yaml, &total)) < 0)
    die("learning the job's plan", rc);
  snprintf(budget, sizeof(budget), "%llu",
           (unsigned long long)(total < (1u << 20) ? (1u << 20) : total + total / 2));
  /* TD_BENCH_METRICS=PORT serves Prometheus' endpoint there, to measure
   * the loop with a scraper hammering it (README, "Monitoring"). */
  snprintf(extra, sizeof(extra), "max_jobs: %d\nmax_jobs_per_user: %d\n"
           "heartbeat_timeout_ms: 3600000\n%s%s%s", jobs + 100, jobs + 100,
           getenv("TD_BENCH_METRICS") ? "metrics_listen: 127.0.0.1:" : "",
           getenv("TD_BENCH_METRICS") ? getenv("TD_BENCH_METRICS") : "",
           getenv("TD_BENCH_METRICS") ? "\n" : "");
  if ((rc = th_daemon_init(&d, budget, extra, 1)) < 0)
    die("making the state directory", rc);
  if ((rc = th_daemon_start(&d, 30000)) < 0) {
    fprintf(stderr, "bench_load: traind did not start; see %s\n", d.log);
    return 1;
  }
  printf("traind load benchmark: state in %s (%s), %ld CPUs online\n", d.state,
         fs_name(d.dir), sysconf(_SC_NPROCESSORS_ONLN));
  th_rss(d.pid, &rss0);
  s = th_connect(d.sock, 30000);
  if (s < 0)
    die("connect", TD_ECONN);

  info0 = status_rate(d.sock, "info", 0, &fail0);

  v = calloc((size_t)jobs, sizeof(*v));
  if (v == NULL)
    die("calloc", TD_ENOMEM);
  submit_range(s, yaml, 0, LATENCY_SUBMITS, v);
  first = summarize(v, LATENCY_SUBMITS);
  t0 = td_now_mono();
  submit_range(s, yaml, LATENCY_SUBMITS, jobs, v + LATENCY_SUBMITS);
  printf("(the other %d submits took %.1f s)\n", jobs - LATENCY_SUBMITS, td_now_mono() - t0);
  last = summarize(v + (jobs - 1000), 1000);
  /* Growth with the queue, or noise from the machine: the median by
   * thousands of jobs already queued. */
  printf("submit p50 by jobs already queued:");
  for (int k = 0; k + 1000 <= jobs; k += 1000)
    printf(" %dk: %.2f ms%s", k / 1000, summarize(v + k, 1000).p50 * 1e3,
           k + 2000 <= jobs ? "," : "\n");
  peer = sqlite_peer(d.dir, yaml, LATENCY_SUBMITS);

  info1 = status_rate(d.sock, "info", 0, &fail1);
  show1 = status_rate(d.sock, "show", (uint64_t)jobs, &fail2);

  for (int i = 0; i < LS_RUNS; i++)
    ls[i] = list_once(s, &rows);
  for (int i = 0; i < 5; i++) {
    double t = client_ls_once(d.sock);
    if (t < 0)
      break;
    cls[ncls++] = t;
  }
  qsort(ls, LS_RUNS, sizeof(ls[0]), cmp_double);
  qsort(cls, (size_t)ncls, sizeof(cls[0]), cmp_double);
  th_rss(d.pid, &rss);

  printf("\n%-60s %-24s %s\n", "measure", "value", "target");
  snprintf(what, sizeof(what), "submit latency, first %d submits: p50 / p99 (max)",
           LATENCY_SUBMITS);
  snprintf(value, sizeof(value), "%.2f / %.2f ms (%.1f)", first.p50 * 1e3, first.p99 * 1e3,
           first.max * 1e3);
  row(what, value, "p99 < 2 ms", first.p99 < 0.002);
  snprintf(what, sizeof(what), "submit latency, last 1000 (to %d queued): p50 / p99 (max)",
           jobs);
  snprintf(value, sizeof(value), "%.2f / %.2f ms (%.1f)", last.p50 * 1e3, last.p99 * 1e3,
           last.max * 1e3);
  row(what, value, "p99 < 2 ms", last.p99 < 0.002);
  snprintf(value, sizeof(value), "%.2f / %.2f ms (%.1f)", peer.p50 * 1e3, peer.p99 * 1e3,
           peer.max * 1e3);
  row("  peer: SQLite INSERT+COMMIT, WAL, synchronous=FULL", value, NULL, 1);
  for (int i = 0; i < 3; i++) {
    static const char *const whats[] = {"info, empty queue", "info, jobs queued",
                                        "show of a random job"};
    double rate = i == 0 ? info0 : i == 1 ? info1 : show1;
    long failed = i == 0 ? fail0 : i == 1 ? fail1 : fail2;

    snprintf(what, sizeof(what), "status requests/s, %d clients: %s", STATUS_CLIENTS, whats[i]);
    snprintf(value, sizeof(value), "%.0f /s%s", rate, failed ? " (some failed)" : "");
    row(what, value, "20000 /s", rate >= 20000 && !failed);
  }
  snprintf(what, sizeof(what), "ls of %zu jobs: list request over ipc, median (max)", rows);
  snprintf(value, sizeof(value), "%.1f ms (%.1f)", quantile(ls, LS_RUNS, 0.5) * 1e3,
           ls[LS_RUNS - 1] * 1e3);
  row(what, value, "< 50 ms", quantile(ls, LS_RUNS, 0.5) < 0.050);
  snprintf(what, sizeof(what), "ls of %zu jobs: `traind-client ls`, median (max)", rows);
  if (ncls > 0)
    snprintf(value, sizeof(value), "%.1f ms (%.1f)", quantile(cls, (size_t)ncls, 0.5) * 1e3,
             cls[ncls - 1] * 1e3);
  else
    snprintf(value, sizeof(value), "failed, see above");
  row(what, value, "< 50 ms", ncls > 0 && quantile(cls, (size_t)ncls, 0.5) < 0.050);
  snprintf(what, sizeof(what), "traind resident memory with %d jobs (at start)", jobs);
  snprintf(value, sizeof(value), "%.1f MB (%.1f)", (double)rss / 1e6, (double)rss0 / 1e6);
  row(what, value, "< 100 MB", rss < 100000000ull);

  free(v);
  nn_close(s);
  /* Restore: traind started again over the same state, until it answers
   * (every queued job read back and planned). */
  if ((rc = th_daemon_stop(&d)) == 0) {
    t0 = td_now_mono();
    rc = th_daemon_start(&d, 600000);
    snprintf(what, sizeof(what), "restart with %d jobs: start to first answer", jobs);
    snprintf(value, sizeof(value), "%.0f ms%s", (td_now_mono() - t0) * 1e3,
             rc == 0 ? "" : " (failed)");
    row(what, value, NULL, 1);
  }
  rc = th_daemon_stop(&d);
  if (rc < 0)
    fprintf(stderr, "bench_load: traind did not stop cleanly; see %s\n", d.log);
  else
    th_daemon_remove(&d);
  return rc < 0 ? 1 : 0;
}
