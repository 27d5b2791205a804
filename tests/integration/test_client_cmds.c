/* Integration: traind-client's logs, wait, set-priority, device, ls --mine
 * and top against the real traind, worker and loader, on a temporary socket
 * and state directory per test. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <nanomsg/nn.h>
#include <pty.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "proto.h"

#define FMNIST "/usr/share/datasets/fashion-mnist"

static th_daemon g_d = {.pid = -1}, g_before = {.pid = -1}; /* g_before: a restart's first */
static char g_dir[256];
static char g_sock[320];

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_msg(f != NULL, "cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

/* A traind on a new temporary directory, with real workers. */
static void start_daemon(const char *budget) {
  int rc;

  if (g_d.dir[0] != '\0') { /* a test that starts again with another budget */
    th_daemon_remove(&g_before);
    g_before = g_d;
  }
  ck_assert(th_daemon_init(&g_d, budget, NULL, 0) == 0);
  snprintf(g_dir, sizeof(g_dir), "%s", g_d.dir);
  snprintf(g_sock, sizeof(g_sock), "%s", g_d.sock);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start (%s); see %s", td_strerror(rc), g_d.log);
}

/* traind must stop cleanly on SIGTERM: exit status 0 (under the
 * sanitizers, also no leak and no error on the way out). */
static void stop_daemon(void) {
  if (g_d.pid <= 0)
    return;
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly; see %s", g_d.log);
}

/* Run traind-client with the test's socket; capture stdout and stderr. */
static int client(char *out, size_t outcap, char *err, size_t errcap, ...) {
  va_list ap;
  int rc;

  va_start(ap, errcap);
  rc = th_client_v(g_sock, out, outcap, err, errcap, ap);
  va_end(ap);
  ck_assert_msg(rc >= 0, "cannot run traind-client: %s", td_strerror(rc));
  return rc;
}

/* A client command that must succeed; its stdout in out. */
#define CLIENT_OK(out, ...)                                                                  \
  do {                                                                                       \
    char err_[4096];                                                                         \
    int rc_ = client(out, sizeof(out), err_, sizeof(err_), __VA_ARGS__, NULL);               \
    ck_assert_msg(rc_ == 0, "traind-client exited %d\nstdout: %s\nstderr: %s", rc_, out,     \
                  err_);                                                                     \
  } while (0)

/* A request straight over the protocol, for checks the client's human
 * output would make awkward. */
static td_msg *request(const char *op, uint64_t id) {
  td_msg *reply = NULL;
  char err[512] = "";
  int s = th_connect(g_sock, 10000), code = -1, rc;

  ck_assert(s >= 0);
  rc = th_rpc_simple(s, op, id ? "id" : NULL, id, &reply, &code, err, sizeof(err));
  nn_close(s);
  ck_assert_msg(rc == 0 && code == 0, "%s failed: %s", op, rc < 0 ? td_strerror(rc) : err);
  return reply;
}

static void job_field(uint64_t id, const char *key, char *out, size_t cap) {
  td_msg *m = request("show", id);
  const msgpack_object *job;
  ck_assert(td_obj_map(td_msg_root(m), "job", &job) == 0);
  ck_assert(td_obj_cstr(job, key, out, cap) == 0);
  td_msg_free(m);
}

static int64_t job_i64(uint64_t id, const char *key) {
  td_msg *m = request("show", id);
  const msgpack_object *job;
  int64_t v = 0;
  ck_assert(td_obj_map(td_msg_root(m), "job", &job) == 0);
  ck_assert(td_obj_i64(job, key, &v) == 0);
  td_msg_free(m);
  return v;
}

static uint64_t plan_part(uint64_t id, const char *key) {
  td_msg *m = request("show", id);
  const msgpack_object *job, *plan;
  uint64_t v = 0;
  ck_assert(td_obj_map(td_msg_root(m), "job", &job) == 0);
  ck_assert(td_obj_map(job, "plan", &plan) == 0);
  ck_assert(td_obj_u64(plan, key, &v) == 0);
  td_msg_free(m);
  return v;
}

static uint64_t plan_total(uint64_t id) {
  return plan_part(id, "total");
}

/* The state now.  Every request is followed by a scheduling pass in
 * traind, so a job still queued after this was held back, not just late. */
static void expect_state(uint64_t id, const char *want) {
  char state[32] = "";
  job_field(id, "state", state, sizeof(state));
  ck_assert_msg(strcmp(state, want) == 0, "job %llu is %s, not %s", (unsigned long long)id,
                state, want);
}

static void wait_state(uint64_t id, const char *want, int timeout_s) {
  char state[32] = "";
  for (int i = 0; i < timeout_s * 20; i++) {
    job_field(id, "state", state, sizeof(state));
    if (strcmp(state, want) == 0)
      return;
    th_msleep(50);
  }
  ck_abort_msg("job %llu is %s, not %s, after %d s", (unsigned long long)id, state, want,
               timeout_s);
}

/* A job file with a small MLP on a slice of Fashion-MNIST (limit 0: all
 * 60000 samples, for a job that runs until cancelled). */
static void write_job(const char *file, const char *name, int hidden, int epochs, int limit) {
  char path[512], text[2048];

  snprintf(path, sizeof(path), "%s/%s", g_dir, file);
  snprintf(text, sizeof(text),
           "name: %s\n"
           "model:\n"
           "  input: [28, 28]\n"
           "  layers:\n"
           "    - {type: dense, units: %d}\n"
           "    - {type: relu}\n"
           "    - {type: dense, units: 10}\n"
           "data:\n"
           "  format: idx\n"
           "  train:\n"
           "    images: " FMNIST "/train-images-idx3-ubyte.gz\n"
           "    labels: " FMNIST "/train-labels-idx1-ubyte.gz\n"
           "    limit: %d\n"
           "  test:\n"
           "    images: " FMNIST "/t10k-images-idx3-ubyte.gz\n"
           "    labels: " FMNIST "/t10k-labels-idx1-ubyte.gz\n"
           "    limit: 500\n"
           "  normalize: {mean: 0.2860, std: 0.3530}\n"
           "train:\n"
           "  batch_size: 64\n"
           "  epochs: %d\n"
           "  seed: 7\n"
           "  optimizer: {type: adam, lr: 0.001}\n"
           "output: %s.safetensors\n",
           name, hidden, limit, epochs, name);
  write_text(path, text);
}

static uint64_t submit(const char *name, int hidden, int epochs, int limit) {
  char file[128], path[512], out[4096];
  unsigned long long id = 0;
  const char *p;

  snprintf(file, sizeof(file), "%s.yaml", name);
  write_job(file, name, hidden, epochs, limit);
  snprintf(path, sizeof(path), "%s/%s", g_dir, file);
  CLIENT_OK(out, "--json", "submit", path);
  p = strstr(out, "\"id\":");
  ck_assert_msg(p != NULL, "no id in %s", out);
  ck_assert(sscanf(p + 5, " %llu", &id) == 1);
  return id;
}

/* traind-client in the background (for what must run while the test acts:
 * watch, wait), its stdout and stderr into the file out.  With pty_cols,
 * on a pseudo-terminal that wide instead: a reader process copies what the
 * terminal shows into the file, and exits with the client's status. */
static pid_t spawn_client(const char *out, unsigned short pty_cols, ...) {
  char exe[512];
  const char *argv[32], *root = getenv("TD_BUILD_ROOT");
  int argc = 0, fd;
  va_list ap;
  pid_t pid;

  snprintf(exe, sizeof(exe), "%s/client/traind-client", root != NULL ? root : "build");
  argv[argc++] = exe;
  argv[argc++] = "--socket";
  argv[argc++] = g_sock;
  va_start(ap, pty_cols);
  for (const char *a; (a = va_arg(ap, const char *)) != NULL && argc < 31;)
    argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;
  fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ck_assert_msg(fd >= 0, "cannot write %s", out);
  pid = fork();
  ck_assert(pid >= 0);
  if (pid > 0) {
    close(fd);
    return pid;
  }
  if (pty_cols == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    execv(exe, (char *const *)argv);
    _exit(127);
  } else {
    struct winsize ws = {.ws_row = 24, .ws_col = pty_cols};
    char buf[4096];
    int master, status;
    ssize_t n;
    pid_t child = forkpty(&master, NULL, NULL, &ws);

    if (child < 0)
      _exit(126);
    if (child == 0) {
      execv(exe, (char *const *)argv);
      _exit(127);
    }
    /* EIO once the client has exited and closed the terminal */
    while ((n = read(master, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
      if (n > 0 && write(fd, buf, (size_t)n) != n)
        break;
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status))
      _exit(125);
    _exit(WEXITSTATUS(status));
  }
  return -1;
}

/* The exit status of a spawned client; killed and failed after timeout_s. */
static int client_exit(pid_t pid, int timeout_s) {
  int status;

  for (int i = 0; i < timeout_s * 20; i++) {
    pid_t r = waitpid(pid, &status, WNOHANG);

    ck_assert(r >= 0);
    if (r == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    th_msleep(50);
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  ck_abort_msg("traind-client was still running after %d s", timeout_s);
  return -1;
}

static void read_text(const char *path, char *out, size_t cap) {
  FILE *f = fopen(path, "r");
  size_t n;

  ck_assert_msg(f != NULL, "cannot read %s", path);
  n = fread(out, 1, cap - 1, f);
  out[n] = '\0';
  fclose(f);
}

/* Every line of text at most cols columns (the text is ASCII). */
static void expect_width(const char *text, size_t cols) {
  for (const char *p = text, *nl; *p != '\0'; p = nl + 1) {
    nl = strchr(p, '\n');
    if (nl == NULL)
      nl = p + strlen(p);
    ck_assert_msg((size_t)(nl - p) <= cols, "a line of %zu columns, over %zu:\n%.*s\nin:\n%s",
                  (size_t)(nl - p), cols, (int)(nl - p), p, text);
    if (*nl == '\0')
      break;
  }
}

static const char *me(void) {
  const struct passwd *pw = getpwuid(getuid());
  ck_assert_msg(pw != NULL, "uid %u has no passwd entry", (unsigned)getuid());
  return pw->pw_name;
}

static void teardown(void) {
  stop_daemon();
  /* Only reached when traind stopped cleanly: a failure keeps the logs. */
  th_daemon_remove(&g_before);
  th_daemon_remove(&g_d);
}

START_TEST(logs_of_finished_job) {
  char out[16384], tail[256], err[4096], id_s[24];
  uint64_t id;
  size_t n;
  int rc;

  start_daemon("2GiB");
  id = submit("small", 32, 1, 500);
  snprintf(id_s, sizeof(id_s), "%llu", (unsigned long long)id);
  wait_state(id, "succeeded", 60);
  CLIENT_OK(out, "logs", id_s);
  ck_assert_msg(strstr(out, "training small on cpu0") != NULL, "%s", out);
  /* the tail is the end of the whole log, byte for byte */
  CLIENT_OK(tail, "logs", id_s, "--tail", "40");
  n = strlen(out);
  ck_assert_uint_eq(strlen(tail), 40);
  ck_assert_str_eq(tail, out + n - 40);
  /* following a job that has ended prints its log and stops */
  CLIENT_OK(out, "logs", "-f", id_s);
  ck_assert_msg(strstr(out, "training small") != NULL, "%s", out);
  CLIENT_OK(out, "--json", "logs", id_s, "--tail", "8");
  ck_assert_msg(strstr(out, "\"done\":true") != NULL, "%s", out);

  rc = client(out, sizeof(out), err, sizeof(err), "logs", "99", NULL);
  ck_assert_int_eq(rc, 3);
  ck_assert_msg(strstr(err, "99") != NULL, "%s", err);
  rc = client(out, sizeof(out), err, sizeof(err), "logs", id_s, "--tail", "lots", NULL);
  ck_assert_int_eq(rc, 2);
}
END_TEST

/* plan answers "why does my job not fit" for any model: per layer with
 * shapes, and what each remedy would save, worked out by the daemon. */
START_TEST(plan_of_a_cnn) {
  const char *src = getenv("TD_SOURCE_ROOT");
  char out[16384], job[512];

  ck_assert_msg(src != NULL, "TD_SOURCE_ROOT is not set (meson test sets it)");
  start_daemon("64MiB");
  snprintf(job, sizeof(job), "%s/examples/fashion-mnist-cnn.yaml", src);
  CLIENT_OK(out, "plan", job);
  ck_assert_msg(strstr(out, "conv2d") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "1x28x28 -> 16x28x28") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "32x7x7 -> 1568") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "bf16: saves") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "micro_batch: saves") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "not available") == NULL, "%s", out);
  CLIENT_OK(out, "--json", "plan", job);
  ck_assert_msg(strstr(out, "\"storage\":\"view\"") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "\"batch_dependent\":false") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "\"precision\":\"fp32\"") != NULL, "%s", out);
  /* a sequence is positions x features */
  snprintf(job, sizeof(job), "%s/examples/fashion-mnist-conv1d.yaml", src);
  CLIENT_OK(out, "plan", job);
  ck_assert_msg(strstr(out, "28x28 -> 28x64") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "13x128 -> 128") != NULL, "%s", out);
}
END_TEST

START_TEST(set_priority_orders_the_queue) {
  char out[8192], err[4096], budget[32], ids[3][24];
  uint64_t a, b, c, total;
  int rc;

  start_daemon("2GiB");
  CLIENT_OK(out, "device", "cpu0", "--drain");
  a = submit("first", 128, 1000, 0);
  b = submit("second", 128, 1, 1000);
  c = submit("third", 128, 1, 1000);
  snprintf(ids[0], sizeof(ids[0]), "%llu", (unsigned long long)a);
  snprintf(ids[1], sizeof(ids[1]), "%llu", (unsigned long long)b);
  snprintf(ids[2], sizeof(ids[2]), "%llu", (unsigned long long)c);
  /* Room for one job at a time, even at a smaller micro-batch (traind
   * re-plans to fit what is free): the weights alone do not fit twice. */
  total = plan_total(a);
  ck_assert_uint_eq(plan_total(b), total);
  ck_assert_uint_eq(plan_total(c), total);
  ck_assert(plan_part(b, "params") + plan_part(b, "grads") + plan_part(b, "optim") > total / 2);
  snprintf(budget, sizeof(budget), "%llu", (unsigned long long)(total + total / 2));
  CLIENT_OK(out, "device", "cpu0", "--budget", budget, "--resume");
  ck_assert_msg(strstr(out, "active") != NULL, "%s", out);
  wait_state(a, "running", 30);
  expect_state(b, "queued");
  expect_state(c, "queued");

  rc = client(out, sizeof(out), err, sizeof(err), "set-priority", ids[2], "1001", NULL);
  ck_assert_int_eq(rc, 2);
  ck_assert_msg(strstr(err, "-1000 to 1000") != NULL, "%s", err);
  CLIENT_OK(out, "set-priority", ids[2], "10");
  ck_assert_msg(strstr(out, "priority 10") != NULL, "%s", out);
  CLIENT_OK(out, "set-priority", ids[1], "-5");
  ck_assert_int_eq(job_i64(c, "priority"), 10);
  ck_assert_int_eq(job_i64(b, "priority"), -5);

  CLIENT_OK(out, "cancel", ids[0]);
  wait_state(c, "succeeded", 60);
  wait_state(b, "succeeded", 60);
  ck_assert_msg(job_i64(b, "started_ms") >= job_i64(c, "finished_ms"),
                "the lower priority job started at %lld, before the higher one ended at %lld",
                (long long)job_i64(b, "started_ms"), (long long)job_i64(c, "finished_ms"));

  /* an ended job's priority is refused */
  rc = client(out, sizeof(out), err, sizeof(err), "set-priority", ids[1], "1", NULL);
  ck_assert_int_eq(rc, 3);
  rc = client(out, sizeof(out), err, sizeof(err), "set-priority", "99", "1", NULL);
  ck_assert_int_eq(rc, 3);
}
END_TEST

START_TEST(drain_holds_jobs_and_resume_runs_them) {
  char out[8192], err[4096], id_s[24];
  uint64_t id;
  int rc;

  start_daemon("2GiB");
  CLIENT_OK(out, "device", "cpu0", "--drain");
  ck_assert_msg(strstr(out, "draining") != NULL, "%s", out);
  CLIENT_OK(out, "devices");
  ck_assert_msg(strstr(out, "STATE") != NULL && strstr(out, "draining") != NULL, "%s", out);
  id = submit("held", 32, 1, 500);
  snprintf(id_s, sizeof(id_s), "%llu", (unsigned long long)id);
  expect_state(id, "queued");

  /* a queued job has no log yet; that is said, and is no error */
  rc = client(out, sizeof(out), err, sizeof(err), "logs", id_s, NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_str_eq(out, "");
  ck_assert_msg(strstr(err, "no log yet") != NULL, "%s", err);

  CLIENT_OK(out, "device", "cpu0", "--resume");
  ck_assert_msg(strstr(out, "active") != NULL, "%s", out);
  wait_state(id, "succeeded", 60);

  rc = client(out, sizeof(out), err, sizeof(err), "device", "gpu7", "--drain", NULL);
  ck_assert_int_eq(rc, 3);
  ck_assert_msg(strstr(err, "gpu7") != NULL, "%s", err);
  rc = client(out, sizeof(out), err, sizeof(err), "device", "cpu0", "--drain", "--resume",
              NULL);
  ck_assert_int_eq(rc, 2);
}
END_TEST

START_TEST(budget_below_plan_holds_jobs) {
  char out[8192], err[4096];
  uint64_t id, fixed;
  int rc;

  start_daemon("2GiB");
  CLIENT_OK(out, "device", "cpu0", "--drain");
  id = submit("wide", 128, 1, 500);
  /* traind re-plans a job at a smaller micro-batch to fit what is free, so
   * the budget must be below what no micro-batch changes */
  fixed = plan_part(id, "params") + plan_part(id, "grads") + plan_part(id, "optim");
  ck_assert_msg(fixed > (1u << 20), "the test needs weights and optimiser state over 1 MiB, "
                "not %llu bytes", (unsigned long long)fixed);
  CLIENT_OK(out, "device", "cpu0", "--budget", "1MiB", "--resume");
  expect_state(id, "queued");
  CLIENT_OK(out, "device", "cpu0");
  ck_assert_msg(strstr(out, "active") != NULL, "%s", out);
  expect_state(id, "queued");

  rc = client(out, sizeof(out), err, sizeof(err), "device", "cpu0", "--budget", "512KiB", NULL);
  ck_assert_int_eq(rc, 2);
  ck_assert_msg(strstr(err, "1MiB") != NULL, "%s", err);
  rc = client(out, sizeof(out), err, sizeof(err), "device", "cpu0", "--budget", "big", NULL);
  ck_assert_int_eq(rc, 2);

  CLIENT_OK(out, "device", "cpu0", "--budget", "1.5GiB");
  ck_assert_msg(strstr(out, "1.50 GiB") != NULL, "%s", out);
  wait_state(id, "succeeded", 60);
}
END_TEST

START_TEST(wait_exit_codes) {
  char out[16384], err[4096], ok_s[24], long_s[24];
  uint64_t ok, cancelled;
  int rc;

  start_daemon("2GiB");
  ok = submit("quick", 32, 1, 500);
  snprintf(ok_s, sizeof(ok_s), "%llu", (unsigned long long)ok);
  rc = client(out, sizeof(out), err, sizeof(err), "wait", ok_s, NULL);
  ck_assert_msg(rc == 0, "wait exited %d: %s %s", rc, out, err);
  ck_assert_msg(strstr(out, "succeeded") != NULL, "%s", out);
  CLIENT_OK(out, "--json", "wait", ok_s);
  ck_assert_msg(out[0] == '{' && strstr(out, "\"state\":\"succeeded\"") != NULL, "%s", out);

  cancelled = submit("endless", 64, 1000, 0);
  snprintf(long_s, sizeof(long_s), "%llu", (unsigned long long)cancelled);
  wait_state(cancelled, "running", 30);
  /* top, not on a terminal: one view, then exit */
  CLIENT_OK(out, "top");
  ck_assert_msg(strstr(out, "FREE") != NULL && strstr(out, "MEM/PLAN") != NULL &&
                strstr(out, "endless") != NULL && strstr(out, "running") != NULL, "%s", out);
  CLIENT_OK(out, "--json", "top", "--once");
  ck_assert_msg(strstr(out, "\"running\":[{") != NULL && strstr(out, "\"mem\":") != NULL, "%s",
                out);
  CLIENT_OK(out, "cancel", long_s);
  rc = client(out, sizeof(out), err, sizeof(err), "wait", long_s, NULL);
  ck_assert_msg(rc == 1, "wait of a cancelled job exited %d: %s %s", rc, out, err);
  ck_assert_msg(strstr(out, "cancelled") != NULL, "%s", out);

  rc = client(out, sizeof(out), err, sizeof(err), "wait", "99", NULL);
  ck_assert_int_eq(rc, 3);
  rc = client(out, sizeof(out), err, sizeof(err), "wait", "x", NULL);
  ck_assert_int_eq(rc, 2);
}
END_TEST

START_TEST(ls_mine_lists_own_jobs) {
  char out[8192], want[128];
  uint64_t id;

  start_daemon("2GiB");
  id = submit("mine", 32, 1, 500);
  wait_state(id, "succeeded", 60);
  CLIENT_OK(out, "ls", "--mine");
  ck_assert_msg(strstr(out, "OWNER") != NULL && strstr(out, "mine") != NULL &&
                strstr(out, me()) != NULL, "%s", out);
  CLIENT_OK(out, "ls", "--owner", "nobody-at-all");
  ck_assert_msg(strstr(out, "no matching jobs") != NULL, "%s", out);
  CLIENT_OK(out, "ls", "--device", "cpu0", "--state", "succeeded");
  ck_assert_msg(strstr(out, "mine") != NULL, "%s", out);
  snprintf(want, sizeof(want), "\"owner\":\"%s\"", me());
  CLIENT_OK(out, "--json", "ls", "--mine");
  ck_assert_msg(strstr(out, want) != NULL, "%s", out);
  CLIENT_OK(out, "show", "1");
  ck_assert_msg(strstr(out, "owner:") != NULL && strstr(out, "in use of") != NULL, "%s", out);
}
END_TEST

/* watch tails the status socket: the state events of a job, as JSON lines
 * with their topic. */
START_TEST(watch_prints_state_events) {
  char path[512], out[8192], err[4096], want[64];
  uint64_t id;
  pid_t pid;
  int rc, lines = 0;

  start_daemon("2GiB");
  snprintf(path, sizeof(path), "%s/watch.out", g_dir);
  pid = spawn_client(path, 0, "--json", "watch", "--topic", "job.state", "--count", "2", NULL);
  th_msleep(500); /* a SUB socket joins late: give it time to subscribe */
  id = submit("watched", 32, 1, 500);
  rc = client_exit(pid, 60);
  read_text(path, out, sizeof(out));
  ck_assert_msg(rc == 0, "watch exited %d: %s", rc, out);
  snprintf(want, sizeof(want), "\"id\":%llu,", (unsigned long long)id);
  for (const char *p = out; *p != '\0'; lines++) {
    ck_assert_msg(strncmp(p, "{\"topic\":\"job.state\",", 21) == 0, "%s", out);
    p = strchr(p, '\n');
    ck_assert_msg(p != NULL, "%s", out);
    p++;
  }
  ck_assert_msg(lines == 2 && strstr(out, want) != NULL && strstr(out, "\"v\":") == NULL,
                "%s", out);
  ck_assert_msg(strstr(out, "\"state\":\"running\"") != NULL, "%s", out);
  wait_state(id, "succeeded", 60);

  /* the human form: time, topic, job, fields */
  pid = spawn_client(path, 0, "watch", "--count", "1", NULL);
  th_msleep(500);
  CLIENT_OK(out, "device", "cpu0", "--drain");
  rc = client_exit(pid, 30);
  read_text(path, out, sizeof(out));
  ck_assert_msg(rc == 0 && strstr(out, " device ") != NULL && strstr(out, "device=cpu0") != NULL,
                "%s", out);
  rc = client(out, sizeof(out), err, sizeof(err), "watch", "--count", "0", NULL);
  ck_assert_int_eq(rc, 2);
  rc = client(out, sizeof(out), err, sizeof(err), "watch", "--topic", "", NULL);
  ck_assert_int_eq(rc, 2);
}
END_TEST

/* top fits the width it is given, and says why a queued job waits. */
START_TEST(top_fits_the_width_and_says_why_jobs_wait) {
  char out[16384], budget[32];
  uint64_t a, b, total;

  start_daemon("2GiB");
  CLIENT_OK(out, "device", "cpu0", "--drain");
  a = submit("endless", 128, 1000, 0);
  b = submit("waiting-for-its-turn", 128, 1, 1000);
  total = plan_total(a);
  snprintf(budget, sizeof(budget), "%llu", (unsigned long long)(total + total / 2));
  CLIENT_OK(out, "device", "cpu0", "--budget", budget, "--resume");
  wait_state(a, "running", 30);
  expect_state(b, "queued");

  setenv("COLUMNS", "160", 1);
  CLIENT_OK(out, "top", "--once");
  expect_width(out, 160);
  ck_assert_msg(strstr(out, "MICRO") != NULL && strstr(out, "REASON") != NULL &&
                strstr(out, "SAMPLES/S") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "waiting-for-its-turn") != NULL && strstr(out, "waiting for ") != NULL &&
                strstr(out, " on cpu0 (") != NULL, "%s", out);

  setenv("COLUMNS", "80", 1);
  CLIENT_OK(out, "top", "--once");
  expect_width(out, 80);
  ck_assert_msg(strstr(out, "endless") != NULL && strstr(out, "REASON") != NULL &&
                strstr(out, "waiting for ") != NULL, "%s", out);
  unsetenv("COLUMNS");
  /* ls says it too, as squeue's REASON column does */
  CLIENT_OK(out, "ls");
  ck_assert_msg(strstr(out, "REASON") != NULL && strstr(out, "waiting for ") != NULL, "%s", out);
  snprintf(budget, sizeof(budget), "%llu", (unsigned long long)a);
  CLIENT_OK(out, "cancel", budget);
}
END_TEST

/* A lower budget re-plans a running job; wait, on a terminal, says so on
 * a line of its own above the progress line, which then shows the
 * micro-batch. */
START_TEST(wait_shows_a_replan) {
  char yaml[4096], path[512], probe[512], out[65536], id_s[24], budget[32], want[64];
  const char *p;
  uint64_t id = 0, small;
  pid_t pid;
  int rc;

  /* the budget of the same job at batch 16 makes it micro-batch 16x4
   * (from a throwaway traind with its own munged, so before ours) */
  th_job_yaml(yaml, sizeof(yaml), "probe", 1024, 1, 100, 16);
  ck_assert_int_eq(th_plan_total(yaml, &small), 0);
  start_daemon("1GiB");
  snprintf(probe, sizeof(probe), "%s/squeezed.yaml", g_dir);
  th_job_yaml(yaml, sizeof(yaml), "squeezed", 1024, 20, 0, 64);
  strncat(yaml, "memory:\n  min_micro_batch: 4\n", sizeof(yaml) - strlen(yaml) - 1);
  write_text(probe, yaml);
  CLIENT_OK(out, "--json", "submit", probe);
  p = strstr(out, "\"id\":");
  ck_assert_msg(p != NULL && sscanf(p + 5, " %" SCNu64, &id) == 1, "%s", out);
  snprintf(id_s, sizeof(id_s), "%" PRIu64, id);

  snprintf(path, sizeof(path), "%s/wait.out", g_dir);
  pid = spawn_client(path, 80, "wait", id_s, NULL);
  wait_state(id, "running", 30);
  {
    int s = th_connect(g_sock, 10000);
    ck_assert(s >= 0);
    ck_assert_int_eq(th_wait_training(s, id, 60000), 0);
    nn_close(s);
  }
  snprintf(budget, sizeof(budget), "%" PRIu64, small);
  CLIENT_OK(out, "device", "cpu0", "--budget", budget);
  for (int i = 0; i < 600 && plan_part(id, "micro_batch") != 16; i++)
    th_msleep(100);
  ck_assert_uint_eq(plan_part(id, "micro_batch"), 16);
  ck_assert_uint_eq(plan_part(id, "accumulation"), 4);
  th_msleep(1500); /* a progress line or two at the new plan */
  CLIENT_OK(out, "cancel", id_s);
  rc = client_exit(pid, 60);
  read_text(path, out, sizeof(out));
  ck_assert_msg(rc == 1, "wait exited %d: %s", rc, out);
  p = strstr(out, "re-planned on cpu0: micro-batch 16x4 (was 64x1), reserving ");
  ck_assert_msg(p != NULL, "%s", out);
  /* the re-plan line replaced the progress line, and the progress line
   * came back under it with the micro-batch */
  snprintf(want, sizeof(want), "\r\033[Kjob %s re-planned", id_s);
  ck_assert_msg(strstr(out, want) != NULL, "%s", out);
  ck_assert_msg(strstr(p, "micro-batch 16x4") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "was cancelled") != NULL, "%s", out);
}
END_TEST

static Suite *client_cmds_suite(void) {
  Suite *s = suite_create("client_cmds");
  TCase *tc = tcase_create("commands");

  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, logs_of_finished_job);
  tcase_add_test(tc, plan_of_a_cnn);
  tcase_add_test(tc, set_priority_orders_the_queue);
  tcase_add_test(tc, drain_holds_jobs_and_resume_runs_them);
  tcase_add_test(tc, budget_below_plan_holds_jobs);
  tcase_add_test(tc, wait_exit_codes);
  tcase_add_test(tc, ls_mine_lists_own_jobs);
  tcase_add_test(tc, watch_prints_state_events);
  tcase_add_test(tc, top_fits_the_width_and_says_why_jobs_wait);
  tcase_add_test(tc, wait_shows_a_replan);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(client_cmds_suite(), 1); }
