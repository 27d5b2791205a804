/* Integration: traind-client's logs, wait, set-priority, device, ls --mine
 * and top against the real traind, worker and loader, on a temporary socket
 * and state directory per test. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "proto.h"

#define FMNIST "/usr/share/datasets/fashion-mnist"

static char g_dir[256];
static char g_sock[320];
static pid_t g_daemon = -1;

static const char *build_root(void) {
  const char *b = getenv("TD_BUILD_ROOT");
  return b ? b : "build";
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  ck_assert_msg(f != NULL, "cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

static void start_daemon(const char *budget) {
  char cfg[512], text[2048], exe[512], log[512], sockpath[320];

  snprintf(g_dir, sizeof(g_dir), "/tmp/traind-test.XXXXXX");
  ck_assert(mkdtemp(g_dir) != NULL);
  snprintf(cfg, sizeof(cfg), "%s/traind.yaml", g_dir);
  snprintf(text, sizeof(text),
           "socket: ipc://%s/traind.sock\n"
           "status_socket: ipc://%s/status.sock\n"
           "state_dir: %s/state\n"
           "cancel_grace_ms: 2000\n"
           "devices:\n"
           "  - {name: cpu0, budget: %s}\n",
           g_dir, g_dir, g_dir, budget);
  write_text(cfg, text);
  snprintf(g_sock, sizeof(g_sock), "ipc://%s/traind.sock", g_dir);
  snprintf(sockpath, sizeof(sockpath), "%s/traind.sock", g_dir);
  snprintf(exe, sizeof(exe), "%s/daemon/traind", build_root());
  snprintf(log, sizeof(log), "%s/traind.log", g_dir);

  g_daemon = fork();
  ck_assert(g_daemon >= 0);
  if (g_daemon == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    execl(exe, exe, "--config", cfg, (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 200; i++) {
    struct stat st;
    int status;
    if (stat(sockpath, &st) == 0)
      return;
    ck_assert_msg(waitpid(g_daemon, &status, WNOHANG) == 0, "traind exited at start; see %s",
                  log);
    msleep(50);
  }
  ck_abort_msg("traind did not bind %s within 10 s", sockpath);
}

static void stop_daemon(void) {
  int status;
  if (g_daemon <= 0)
    return;
  kill(g_daemon, SIGTERM);
  waitpid(g_daemon, &status, 0);
  g_daemon = -1;
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "traind did not stop cleanly (status 0x%x); see %s/traind.log", status, g_dir);
}

/* Run traind-client with the test's socket; capture stdout and stderr. */
static int client(char *out, size_t outcap, char *err, size_t errcap, ...) {
  char exe[512];
  const char *argv[32];
  int po[2], pe[2], argc = 0, status;
  va_list ap;
  pid_t pid;
  size_t no = 0, ne = 0;

  snprintf(exe, sizeof(exe), "%s/client/traind-client", build_root());
  argv[argc++] = exe;
  argv[argc++] = "--socket";
  argv[argc++] = g_sock;
  va_start(ap, errcap);
  for (const char *a; (a = va_arg(ap, const char *)) != NULL && argc < 30;)
    argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;

  ck_assert(pipe(po) == 0 && pipe(pe) == 0);
  pid = fork();
  ck_assert(pid >= 0);
  if (pid == 0) {
    dup2(po[1], 1);
    dup2(pe[1], 2);
    close(po[0]);
    close(pe[0]);
    execv(exe, (char *const *)argv);
    _exit(127);
  }
  close(po[1]);
  close(pe[1]);
  /* Small outputs: read stderr after stdout is closed. */
  for (ssize_t n; (n = read(po[0], out + no, outcap - 1 - no)) > 0;)
    no += (size_t)n;
  for (ssize_t n; (n = read(pe[0], err + ne, errcap - 1 - ne)) > 0;)
    ne += (size_t)n;
  out[no] = '\0';
  err[ne] = '\0';
  close(po[0]);
  close(pe[0]);
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
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
  td_pack p;
  td_msg *reply = NULL;
  char err[512];
  void *buf = NULL;
  int s, n, tmo = 10000;

  s = nn_socket(AF_SP, NN_REQ);
  ck_assert(s >= 0);
  nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &tmo, sizeof(tmo));
  ck_assert(nn_connect(s, g_sock) >= 0);
  td_pack_init(&p);
  td_pack_request(&p, op, id ? 1 : 0);
  if (id)
    td_pack_kv_u64(&p, "id", id);
  ck_assert(nn_send(s, td_pack_data(&p), td_pack_len(&p), 0) >= 0);
  td_pack_free(&p);
  n = nn_recv(s, &buf, NN_MSG, 0);
  ck_assert_msg(n >= 0, "no reply to %s: %s", op, nn_strerror(errno));
  ck_assert_msg(td_proto_parse_reply(buf, (size_t)n, &reply, err, sizeof(err)) == 0,
                "%s failed: %s", op, err);
  nn_freemsg(buf);
  nn_close(s);
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
    msleep(50);
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

static const char *me(void) {
  const struct passwd *pw = getpwuid(getuid());
  ck_assert_msg(pw != NULL, "uid %u has no passwd entry", (unsigned)getuid());
  return pw->pw_name;
}

static void teardown(void) {
  char cmd[300];

  stop_daemon();
  /* Only reached when traind stopped cleanly: a failure keeps the logs. */
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (g_dir[0] != '\0' && system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
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

static Suite *client_cmds_suite(void) {
  Suite *s = suite_create("client_cmds");
  TCase *tc = tcase_create("commands");

  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, logs_of_finished_job);
  tcase_add_test(tc, set_priority_orders_the_queue);
  tcase_add_test(tc, drain_holds_jobs_and_resume_runs_them);
  tcase_add_test(tc, budget_below_plan_holds_jobs);
  tcase_add_test(tc, wait_exit_codes);
  tcase_add_test(tc, ls_mine_lists_own_jobs);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr;
  struct stat st;
  int failed;

  if (stat(FMNIST "/train-images-idx3-ubyte.gz", &st) != 0) {
    fprintf(stderr, "skipped: Fashion-MNIST is not installed "
                    "(apt-get install dataset-fashion-mnist)\n");
    return 77; /* meson: skipped */
  }
  sr = srunner_create(client_cmds_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
