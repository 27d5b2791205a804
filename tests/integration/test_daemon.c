/* Integration: the real traind, traind-loader, traind-worker and
 * traind-client, on a temporary socket and state directory per test. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
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

/* traind must stop cleanly on SIGTERM: exit status 0 (under the
 * sanitizers, also no leak and no error on the way out). */
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

static uint64_t device_reserved(void) {
  td_msg *m = request("devices", 0);
  const msgpack_object *devs;
  uint64_t v = 1;
  ck_assert(td_obj_array(td_msg_root(m), "devices", &devs) == 0);
  ck_assert_uint_eq(devs->via.array.size, 1);
  ck_assert(td_obj_u64(&devs->via.array.ptr[0], "reserved", &v) == 0);
  td_msg_free(m);
  return v;
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

/* A job file with a small MLP on a slice of Fashion-MNIST. */
static void write_job(const char *path, const char *name, int hidden, int epochs, int limit,
                      int batch) {
  char text[2048];
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
           "    limit: 1000\n"
           "  normalize: {mean: 0.2860, std: 0.3530}\n"
           "train:\n"
           "  batch_size: %d\n"
           "  epochs: %d\n"
           "  seed: 7\n"
           "  optimizer: {type: adam, lr: 0.001}\n"
           "output: %s.safetensors\n",
           name, hidden, limit, batch, epochs, name);
  write_text(path, text);
}

static uint64_t submit(const char *file) {
  char out[4096], err[4096];
  unsigned long long id = 0;
  int rc = client(out, sizeof(out), err, sizeof(err), "--json", "submit", file, NULL);
  const char *p;

  ck_assert_msg(rc == 0, "submit %s exited %d: %s", file, rc, err);
  p = strstr(out, "\"id\":");
  ck_assert_msg(p != NULL, "no id in %s", out);
  ck_assert(sscanf(p + 5, " %llu", &id) == 1);
  return id;
}

static void teardown(void) {
  char cmd[300];

  stop_daemon();
  /* Only reached when traind stopped cleanly: a failure keeps the logs. */
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (g_dir[0] != '\0' && system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", g_dir);
}

START_TEST(small_job_succeeds) {
  char job[512], out[16384], err[8192], model[1024];
  struct stat st;
  int rc;

  start_daemon("2GiB");
  snprintf(job, sizeof(job), "%s/small.yaml", g_dir);
  write_job(job, "small", 64, 1, 3000, 64);
  rc = client(out, sizeof(out), err, sizeof(err), "submit", job, "--wait", NULL);
  ck_assert_msg(rc == 0, "submit --wait exited %d\nstdout: %s\nstderr: %s", rc, out, err);
  ck_assert_msg(strstr(out, "succeeded") != NULL, "%s", out);
  ck_assert_msg(strstr(out, "accuracy") != NULL, "%s", out);
  job_field(1, "model", model, sizeof(model));
  ck_assert_msg(stat(model, &st) == 0 && st.st_size > 50000, "model %s missing", model);
  /* 3000 samples of 10 classes, one epoch: far better than chance. */
  {
    td_msg *m = request("show", 1);
    const msgpack_object *j;
    double acc = 0;
    ck_assert(td_obj_map(td_msg_root(m), "job", &j) == 0);
    ck_assert(td_obj_f64(j, "accuracy", &acc) == 0);
    ck_assert_msg(acc > 0.5 && acc <= 1.0, "accuracy %f", acc);
    td_msg_free(m);
  }
  ck_assert_uint_eq(device_reserved(), 0);
}
END_TEST

START_TEST(too_big_is_refused) {
  char job[512], out[4096], err[4096];
  int rc;

  start_daemon("64MiB");
  snprintf(job, sizeof(job), "%s/big.yaml", g_dir);
  write_job(job, "big", 60000, 1, 100, 128);
  rc = client(out, sizeof(out), err, sizeof(err), "submit", job, NULL);
  ck_assert_int_eq(rc, 3);
  ck_assert_msg(strstr(err, "budget") != NULL && strstr(err, "bytes") != NULL, "%s", err);
  ck_assert_msg(strstr(err, "67108864") != NULL, "the budget's bytes are named: %s", err);
  /* Nothing was queued. */
  rc = client(out, sizeof(out), err, sizeof(err), "ls", NULL);
  ck_assert_int_eq(rc, 0);
  ck_assert_msg(strstr(out, "big") == NULL, "%s", out);
}
END_TEST

START_TEST(jobs_over_budget_run_one_after_another) {
  char a[512], b[512];
  td_msg *m;
  uint64_t ia, ib, total;
  const msgpack_object *plan;
  char budget[32];

  /* Find one job's plan on a roomy daemon, then size the budget to hold
   * one of them but not two. */
  start_daemon("2GiB");
  snprintf(a, sizeof(a), "%s/a.yaml", g_dir);
  snprintf(b, sizeof(b), "%s/b.yaml", g_dir);
  write_job(a, "a", 256, 1, 2000, 100);
  write_job(b, "b", 256, 1, 2000, 100);
  ia = submit(a);
  m = request("show", ia);
  {
    const msgpack_object *j;
    ck_assert(td_obj_map(td_msg_root(m), "job", &j) == 0);
    ck_assert(td_obj_map(j, "plan", &plan) == 0);
    ck_assert(td_obj_u64(plan, "total", &total) == 0);
  }
  td_msg_free(m);
  wait_state(ia, "succeeded", 120);
  stop_daemon();

  snprintf(budget, sizeof(budget), "%llu", (unsigned long long)(total + total / 2));
  start_daemon(budget);
  write_job(a, "a", 256, 1, 2000, 100);
  write_job(b, "b", 256, 1, 2000, 100);
  ia = submit(a);
  ib = submit(b);
  wait_state(ia, "succeeded", 120);
  wait_state(ib, "succeeded", 120);
  ck_assert_msg(job_i64(ib, "started_ms") >= job_i64(ia, "finished_ms"),
                "b started at %lld before a finished at %lld", (long long)job_i64(ib, "started_ms"),
                (long long)job_i64(ia, "finished_ms"));
  ck_assert_uint_eq(device_reserved(), 0);
}
END_TEST

START_TEST(cancel_stops_running_job) {
  char job[512], out[4096], err[4096], state[32];
  uint64_t id;
  int rc;

  start_daemon("2GiB");
  snprintf(job, sizeof(job), "%s/long.yaml", g_dir);
  write_job(job, "long", 128, 1000, 0, 64);
  id = submit(job);
  wait_state(id, "running", 30);
  ck_assert(device_reserved() > 0);
  rc = client(out, sizeof(out), err, sizeof(err), "cancel", "1", NULL);
  ck_assert_msg(rc == 0, "cancel exited %d: %s", rc, err);
  wait_state(id, "cancelled", 30);
  ck_assert_uint_eq(device_reserved(), 0);
  /* Cancelling again is refused with a reason. */
  rc = client(out, sizeof(out), err, sizeof(err), "cancel", "1", NULL);
  ck_assert_int_eq(rc, 3);
  ck_assert_msg(strstr(err, "cancelled") != NULL, "%s", err);
  /* The ring is gone. */
  job_field(id, "state", state, sizeof(state));
  ck_assert_str_eq(state, "cancelled");
}
END_TEST

START_TEST(bad_job_file_is_refused_and_daemon_serves) {
  char job[512], out[4096], err[4096];
  int rc;

  start_daemon("2GiB");
  snprintf(job, sizeof(job), "%s/bad.yaml", g_dir);
  write_text(job, "name: bad\nmodel:\n  input: [28, 28]\n  layers:\n    - {type: dense, units: 10}\n"
                  "train:\n  bach_size: 12\n");
  rc = client(out, sizeof(out), err, sizeof(err), "submit", job, NULL);
  ck_assert_int_eq(rc, 3);
  ck_assert_msg(strstr(err, "bach_size") != NULL && strstr(err, "line 7") != NULL, "%s", err);

  write_text(job, "{{{{ not yaml\n");
  rc = client(out, sizeof(out), err, sizeof(err), "submit", job, NULL);
  ck_assert_int_eq(rc, 3);
  ck_assert_msg(strstr(err, "line") != NULL, "%s", err);

  rc = client(out, sizeof(out), err, sizeof(err), "info", NULL);
  ck_assert_msg(rc == 0, "info after bad submits: %d %s", rc, err);
  rc = client(out, sizeof(out), err, sizeof(err), "show", "99", NULL);
  ck_assert_int_eq(rc, 3);
  ck_assert_msg(strstr(err, "99") != NULL, "%s", err);
}
END_TEST

START_TEST(restart_keeps_jobs) {
  char job[512], out[4096], err[4096];
  uint64_t id;
  int rc;

  start_daemon("2GiB");
  snprintf(job, sizeof(job), "%s/r.yaml", g_dir);
  write_job(job, "keepme", 32, 1, 500, 50);
  id = submit(job);
  wait_state(id, "succeeded", 60);
  kill(g_daemon, SIGKILL);
  waitpid(g_daemon, NULL, 0);
  {
    /* Same directory, new daemon. */
    char cfg[512], exe[512], sockpath[320];
    snprintf(cfg, sizeof(cfg), "%s/traind.yaml", g_dir);
    snprintf(exe, sizeof(exe), "%s/daemon/traind", build_root());
    snprintf(sockpath, sizeof(sockpath), "%s/traind.sock", g_dir);
    unlink(sockpath);
    g_daemon = fork();
    if (g_daemon == 0) {
      int fd = open("/dev/null", O_WRONLY);
      dup2(fd, 2);
      execl(exe, exe, "--config", cfg, (char *)NULL);
      _exit(127);
    }
    for (int i = 0; i < 200; i++) {
      struct stat st;
      if (stat(sockpath, &st) == 0)
        break;
      msleep(50);
    }
  }
  rc = client(out, sizeof(out), err, sizeof(err), "ls", NULL);
  ck_assert_msg(rc == 0, "%s", err);
  ck_assert_msg(strstr(out, "keepme") != NULL && strstr(out, "succeeded") != NULL, "%s", out);
}
END_TEST

START_TEST(validation_split_is_evaluated) {
  char job[512], text[4096];
  double val = -1;
  uint64_t id;
  td_msg *m;
  const msgpack_object *j;

  start_daemon("2GiB");
  snprintf(job, sizeof(job), "%s/val.yaml", g_dir);
  write_job(job, "val", 32, 1, 2000, 100);
  /* The same job with 400 of its 2000 train samples held out. */
  {
    FILE *f = fopen(job, "r");
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    char *at;
    fclose(f);
    text[n] = '\0';
    at = strstr(text, "  normalize:");
    ck_assert(at != NULL);
    memmove(at + 30, at, strlen(at) + 1);
    memcpy(at, "  validation: {count: 400}   \n", 30);
    write_text(job, text);
  }
  id = submit(job);
  wait_state(id, "succeeded", 60);
  m = request("show", id);
  ck_assert(td_obj_map(td_msg_root(m), "job", &j) == 0);
  ck_assert(td_obj_f64(j, "val_accuracy", &val) == 0);
  ck_assert_msg(val > 0.3 && val <= 1.0, "validation accuracy %f", val);
  td_msg_free(m);
}
END_TEST

static Suite *daemon_suite(void) {
  Suite *s = suite_create("daemon");
  TCase *tc = tcase_create("jobs");

  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, small_job_succeeds);
  tcase_add_test(tc, too_big_is_refused);
  tcase_add_test(tc, jobs_over_budget_run_one_after_another);
  tcase_add_test(tc, cancel_stops_running_job);
  tcase_add_test(tc, bad_job_file_is_refused_and_daemon_serves);
  tcase_add_test(tc, restart_keeps_jobs);
  tcase_add_test(tc, validation_split_is_evaluated);
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
  sr = srunner_create(daemon_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
