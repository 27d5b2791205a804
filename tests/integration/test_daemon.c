/* Integration: the real traind, traind-loader, traind-worker and
 * traind-client, on a temporary socket and state directory per test. */
#include <check.h>
#include <errno.h>
#include <nanomsg/nn.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
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
    th_msleep(50);
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
  stop_daemon();
  /* Only reached when traind stopped cleanly: a failure keeps the logs. */
  th_daemon_remove(&g_before);
  th_daemon_remove(&g_d);
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
  th_daemon_signal_wait(&g_d, SIGKILL);
  /* Same directory, new daemon. */
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not restart (%s); see %s", td_strerror(rc), g_d.log);
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

/* A full disk without root: traind's file size limit lowered to 1 byte
 * (prlimit on its pid) makes every write to its files fail with EFBIG, as
 * ENOSPC would; it inherits an ignored SIGXFSZ, so it is not killed.  The
 * running worker was started before and keeps its own limit. */
START_TEST(full_disk_refuses_submits_running_job_finishes) {
  const struct rlimit full = {1, RLIM_INFINITY}, room = {RLIM_INFINITY, RLIM_INFINITY};
  char job[512], small[512], out[4096], err[4096], state[32], model[1024], want[600];
  struct stat st;
  uint64_t id;
  int rc;

  signal(SIGXFSZ, SIG_IGN);
  start_daemon("2GiB");
  snprintf(job, sizeof(job), "%s/long.yaml", g_dir);
  snprintf(small, sizeof(small), "%s/small.yaml", g_dir);
  write_job(job, "long", 128, 12, 6000, 64); /* a few seconds */
  write_job(small, "small", 32, 1, 500, 50);
  id = submit(job);
  wait_state(id, "running", 30);
  for (int i = 0; i < 600 && job_i64(id, "step") == 0; i++)
    th_msleep(50);

  ck_assert_msg(prlimit(g_d.pid, RLIMIT_FSIZE, &full, NULL) == 0, "prlimit: %s",
                strerror(errno));
  rc = client(out, sizeof(out), err, sizeof(err), "submit", small, NULL);
  ck_assert_msg(rc == 3, "submit on a full disk exited %d: %s%s", rc, out, err);
  snprintf(want, sizeof(want), "state directory %s/state", g_dir);
  ck_assert_msg(strstr(err, "no room left") != NULL && strstr(err, want) != NULL &&
                    strstr(err, "free space") != NULL,
                "%s", err);
  job_field(id, "state", state, sizeof(state));
  ck_assert_msg(strcmp(state, "running") == 0, "the job ended before the disk filled: %s",
                state);
  rc = client(out, sizeof(out), err, sizeof(err), "ls", NULL);
  ck_assert_msg(rc == 0 && strstr(out, "small") == NULL, "%d %s%s", rc, out, err);

  wait_state(id, "succeeded", 120);
  job_field(id, "model", model, sizeof(model));
  ck_assert_msg(stat(model, &st) == 0 && st.st_size > 0, "model %s missing", model);

  ck_assert(prlimit(g_d.pid, RLIMIT_FSIZE, &room, NULL) == 0);
  wait_state(submit(small), "succeeded", 60);
  ck_assert_uint_eq(device_reserved(), 0);
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
  tcase_add_test(tc, full_disk_refuses_submits_running_job_finishes);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(daemon_suite(), 1); }
