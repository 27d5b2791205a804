/* Checkpoints and resume with the real traind, worker and loader: a job
 * interrupted by a SIGTERM of traind (it checkpoints and stops), or by a
 * SIGKILL of traind after a checkpoint, finishes after a restart from where
 * it stopped, with the same weights as the same job run without a break;
 * a damaged checkpoint makes the job start over (saying why), not fail. */
#include <check.h>
#include <math.h>
#include <nanomsg/nn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "safetensors.h"
#include "util.h"

#define WAIT_MS 60000
/* Weights may differ by this much (relative) only if OpenBLAS sums in
 * another order; on one machine they come out bit for bit the same. */
#define REL_TOL 1e-6

static th_daemon g_d;
static int g_sock = -1;

/* Adam, so that the optimiser's state must come back too; about two
 * seconds of training on two cores, checkpoints every few steps. */
static void job_yaml(char *buf, size_t cap) {
  snprintf(buf, cap,
           "name: resume\n"
           "model:\n"
           "  input: [28, 28]\n"
           "  layers:\n"
           "    - {type: dense, units: 64}\n"
           "    - {type: relu}\n"
           "    - {type: dense, units: 10}\n"
           "data:\n"
           "  format: idx\n"
           "  train:\n"
           "    images: " TH_FMNIST "/train-images-idx3-ubyte.gz\n"
           "    labels: " TH_FMNIST "/train-labels-idx1-ubyte.gz\n"
           "    limit: 6000\n"
           "  test:\n"
           "    images: " TH_FMNIST "/t10k-images-idx3-ubyte.gz\n"
           "    labels: " TH_FMNIST "/t10k-labels-idx1-ubyte.gz\n"
           "    limit: 500\n"
           "train:\n"
           "  batch_size: 32\n"
           "  epochs: 4\n"
           "  seed: 11\n"
           "  optimizer: {type: adam, lr: 0.001}\n"
           "checkpoint:\n"
           "  every_steps: 25\n"
           "  every_seconds: 0\n");
}

static void start(void) {
  int rc;

  if (g_d.dir[0] == '\0')
    ck_assert(th_daemon_init(&g_d, "1GiB", NULL, 0) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert(g_sock >= 0);
}

static void disconnect(void) {
  if (g_sock >= 0)
    nn_close(g_sock);
  g_sock = -1;
}

static void setup(void) { memset(&g_d, 0, sizeof(g_d)); }

/* Only reached when the test passed: a failure keeps the directory. */
static void teardown(void) {
  disconnect();
  if (g_d.pid > 0)
    ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly:\n%s",
                  th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}

static uint64_t submit(const char *yaml, const char *key) {
  uint64_t id = 0;
  char err[512] = "";
  int rc = th_submit(g_sock, yaml, key, &id, err, sizeof(err));

  ck_assert_msg(rc == 0, "submit: %s %s", td_err_name(rc), err);
  return id;
}

static void wait_state(uint64_t id, const char *want) {
  char last[32] = "";
  int rc = th_wait_state(g_sock, id, want, WAIT_MS, last, sizeof(last));

  ck_assert_msg(rc == 0, "job %llu is %s, not %s (%s); traind's log ends:\n%s",
                (unsigned long long)id, last, want, td_strerror(rc), th_log_tail(&g_d));
}

static void job_file(uint64_t id, const char *name, char *out, size_t cap) {
  snprintf(out, cap, "%s/jobs/%llu/%s", g_d.state, (unsigned long long)id, name);
}

/* The job's log (the worker's and loader's stderr), malloc'd. */
static char *job_log(uint64_t id) {
  char path[300], *log = NULL;
  size_t len;

  job_file(id, "log", path, sizeof(path));
  ck_assert_msg(td_read_file(path, 4 << 20, &log, &len) == 0, "cannot read %s", path);
  return log;
}

/* The step the job's log says its run resumed at; 0 if it never did. */
static unsigned long long resumed_step(uint64_t id) {
  char *log = job_log(id), *p;
  unsigned long long step = 0;

  if ((p = strstr(log, "resumed from ")) != NULL && (p = strstr(p, " at step ")) != NULL)
    ck_assert_int_eq(sscanf(p, " at step %llu", &step), 1);
  free(log);
  return step;
}

/* A field of what `show` says of the job's checkpoints. */
static uint64_t shown_ckpt(uint64_t id, const char *key) {
  const msgpack_object *job, *ckpt;
  char err[256];
  uint64_t v = 0;
  td_msg *m = NULL;
  int code = 0;

  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, err, sizeof(err)), 0);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &job), 0);
  ck_assert_int_eq(td_obj_map(job, "checkpoint", &ckpt), 0);
  ck_assert_int_eq(td_obj_u64(ckpt, key, &v), 0);
  td_msg_free(m);
  return v;
}

/* The step this run resumed at. */
static uint64_t shown_resumed_step(uint64_t id) { return shown_ckpt(id, "resumed_step"); }

/* traind and the reference: the job run from start to end without a
 * break.  Then the same job again, running: *id. */
static uint64_t reference_then_run(const char *key, uint64_t *id) {
  char yaml[4096];
  uint64_t ref;
  int rc;

  job_yaml(yaml, sizeof(yaml));
  start();
  ref = submit(yaml, "reference");
  wait_state(ref, "succeeded");
  *id = submit(yaml, key);
  wait_state(*id, "running");
  rc = th_wait_training(g_sock, *id, WAIT_MS);
  ck_assert_msg(rc == 0, "job %llu trains no step (%s); traind's log ends:\n%s",
                (unsigned long long)*id, td_strerror(rc), th_log_tail(&g_d));
  return ref;
}

/* SIGTERM to traind under the running job: it must exit 0. */
static void stop_traind(void) {
  disconnect();
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not exit 0 on SIGTERM:\n%s",
                th_log_tail(&g_d));
}

/* Every tensor of job b's model equals job a's (within REL_TOL). */
static void same_weights(uint64_t a, uint64_t b) {
  char pa[300], pb[300], err[256];
  td_st_file *fa = NULL, *fb = NULL;
  double worst = 0;

  job_file(a, "model.safetensors", pa, sizeof(pa));
  job_file(b, "model.safetensors", pb, sizeof(pb));
  ck_assert_msg(td_safetensors_load(pa, 64 << 20, &fa, err, sizeof(err)) == 0, "%s: %s", pa,
                err);
  ck_assert_msg(td_safetensors_load(pb, 64 << 20, &fb, err, sizeof(err)) == 0, "%s: %s", pb,
                err);
  ck_assert_uint_eq(td_safetensors_count(fa), td_safetensors_count(fb));
  ck_assert_uint_eq(td_safetensors_count(fa), 4);
  for (size_t i = 0; i < td_safetensors_count(fa); i++) {
    td_st_tensor ta, tb;
    const float *x, *y;

    td_safetensors_get(fa, i, &ta);
    ck_assert_msg(td_safetensors_find(fb, ta.name, &tb) == 0, "no tensor %s in %s", ta.name,
                  pb);
    ck_assert_str_eq(ta.dtype, "F32");
    ck_assert_str_eq(tb.dtype, "F32");
    ck_assert_uint_eq(ta.bytes, tb.bytes);
    x = ta.data;
    y = tb.data;
    for (uint64_t k = 0; k < ta.bytes / sizeof(float); k++) {
      double d = fabs((double)x[k] - (double)y[k]);
      double scale = fmax(fabs((double)x[k]), 1e-3);
      if (!(d / scale <= worst)) /* also catches NaN */
        worst = isnan(d) ? INFINITY : d / scale;
    }
  }
  ck_assert_msg(worst <= REL_TOL, "the weights differ: largest relative difference %g", worst);
  td_safetensors_free(fa);
  td_safetensors_free(fb);
}

static int contains(const char *path, const char *text) {
  char *buf = NULL;
  size_t len;
  int found;

  if (td_read_file(path, 16 << 20, &buf, &len) < 0)
    return 0;
  found = strstr(buf, text) != NULL;
  free(buf);
  return found;
}

/* traind stopped by SIGTERM under a running job: the worker checkpoints,
 * the job is left queued, traind exits 0, and after a restart the job
 * resumes (at a step > 0) and ends with the reference's weights.  `show`
 * still says when it first started, and names no checkpoint once the job
 * has succeeded (the file is gone). */
START_TEST(sigterm_then_restart) {
  char ckpt[300];
  uint64_t ref, id, started = 0, started_again = 0;

  ref = reference_then_run("interrupted", &id);
  ck_assert_int_eq(th_show_u64(g_sock, id, "started_ms", &started), 0);
  ck_assert_uint_gt(started, 0);
  stop_traind();
  job_file(id, "checkpoint.tdck", ckpt, sizeof(ckpt));
  ck_assert_msg(access(ckpt, F_OK) == 0, "no checkpoint %s after the stop:\n%s", ckpt,
                th_log_tail(&g_d));
  ck_assert_msg(contains(g_d.log, "stopped for traind's shutdown after a checkpoint"),
                "the job was not stopped after a checkpoint:\n%s", th_log_tail(&g_d));

  start();
  wait_state(id, "succeeded");
  ck_assert_msg(resumed_step(id) > 0, "the job did not resume from its checkpoint");
  ck_assert_uint_eq(shown_resumed_step(id), resumed_step(id));
  same_weights(ref, id);
  /* A finished job's checkpoint is gone. */
  ck_assert_int_ne(access(ckpt, F_OK), 0);
  ck_assert_int_eq(th_show_u64(g_sock, id, "started_ms", &started_again), 0);
  ck_assert_uint_eq(started_again, started);
  ck_assert_uint_eq(shown_ckpt(id, "bytes"), 0);
  ck_assert_uint_eq(shown_ckpt(id, "step"), 0);
}
END_TEST

/* traind killed with SIGKILL once the job has written a checkpoint: after a
 * restart the job resumes from it and ends with the reference's weights. */
START_TEST(sigkill_after_checkpoint) {
  char ckpt[300];
  uint64_t ref, id;
  pid_t pids[4];
  int n = 0;

  ref = reference_then_run("killed", &id);
  job_file(id, "checkpoint.tdck", ckpt, sizeof(ckpt));
  for (int i = 0; i < WAIT_MS / 10 && access(ckpt, F_OK) != 0; i++)
    th_msleep(10);
  ck_assert_msg(access(ckpt, F_OK) == 0, "no checkpoint written:\n%s", th_log_tail(&g_d));
  n = th_children(g_d.pid, "traind-worker", pids, 4);
  disconnect();
  th_daemon_signal_wait(&g_d, SIGKILL);
  /* Its worker dies with it (and must not write on while the next runs). */
  for (int i = 0; i < n; i++)
    for (int k = 0; k < 1000 && kill(pids[i], 0) == 0; k++)
      th_msleep(10);

  start();
  wait_state(id, "succeeded");
  ck_assert_msg(resumed_step(id) > 0, "the job did not resume from its checkpoint");
  same_weights(ref, id);
}
END_TEST

/* A damaged checkpoint: the job starts over, says why in its log, and
 * still ends with the reference's weights. */
START_TEST(corrupt_checkpoint_starts_over) {
  char ckpt[300], *log, *buf = NULL;
  uint64_t ref, id;
  size_t len;

  ref = reference_then_run("damaged", &id);
  stop_traind();
  job_file(id, "checkpoint.tdck", ckpt, sizeof(ckpt));
  ck_assert_int_eq(td_read_file(ckpt, 64 << 20, &buf, &len), 0);
  ck_assert_uint_gt(len, 1000);
  buf[len - 100] ^= 0x40; /* a weight's bit: only the checksum can tell */
  ck_assert_int_eq(td_write_file_atomic(ckpt, buf, len), 0);
  free(buf);

  start();
  wait_state(id, "succeeded");
  log = job_log(id);
  ck_assert_msg(strstr(log, "cannot resume from the checkpoint") != NULL, "%s", log);
  ck_assert_msg(strstr(log, "checksum") != NULL, "%s", log);
  ck_assert_msg(strstr(log, "resumed from ") == NULL, "%s", log);
  free(log);
  same_weights(ref, id);
}
END_TEST

static Suite *resume_suite(void) {
  Suite *s = suite_create("resume");
  TCase *tc = tcase_create("resume");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 180);
  tcase_add_test(tc, sigterm_then_restart);
  tcase_add_test(tc, sigkill_after_checkpoint);
  tcase_add_test(tc, corrupt_checkpoint_starts_over);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(resume_suite(), 1); }
