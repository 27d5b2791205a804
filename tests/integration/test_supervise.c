/* Supervision with the real worker and loader: a worker killed with
 * SIGKILL, a hung (stopped) worker, cancel of a queued, a just-admitted
 * and a training job, and what is left when traind itself is killed.
 * Every test runs on a device budget that holds one job, so a second job
 * waits and shows when the first one's reservation is released.  Then what
 * a job leaves behind: a model whose output cannot be written is kept in
 * the job's directory (a success with a warning), a job's log lines carry
 * the time even under systemd, and a cancelled job names no checkpoint. */
#include <check.h>
#include <errno.h>
#include <nanomsg/nn.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define WAIT_MS 60000

static th_daemon g_d;
static int g_sock = -1;
static char g_budget[32];
static char g_long[2048]; /* a job that trains for a long time */


static void start(const char *extra) {
  uint64_t total = 0;
  int rc;

  th_job_yaml(g_long, sizeof(g_long), "long", 128, 10000, 2000, 32);
  rc = th_plan_total(g_long, &total);
  ck_assert_msg(rc == 0, "cannot learn the job's plan: %s", td_strerror(rc));
  snprintf(g_budget, sizeof(g_budget), "%llu",
           (unsigned long long)(total < (1u << 20) ? (1u << 20) : total + total / 2));
  ck_assert(th_daemon_init(&g_d, g_budget, extra, 0) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert(g_sock >= 0);
}

/* Only reached when the test passed: a failure keeps the directory. */
static void teardown(void) {
  if (g_sock >= 0)
    nn_close(g_sock);
  g_sock = -1;
  if (g_d.pid > 0)
    ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly:\n%s",
                  th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}

static uint64_t submit(const char *yaml, const char *key) {
  td_msg *m = NULL;
  td_pack p;
  uint64_t id = 0;
  char err[512];
  int code = -1, rc;

  td_pack_init(&p);
  th_pack_submit(&p, yaml, "/tmp", key, NULL);
  rc = th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err));
  td_pack_free(&p);
  ck_assert_msg(rc == 0 && code == 0, "submit: %s %s %s", td_strerror(rc), td_err_name(code),
                err);
  ck_assert(td_obj_u64(td_msg_root(m), "id", &id) == 0);
  td_msg_free(m);
  return id;
}

/* cancel's reply state, or the error code's name. */
static void cancel(uint64_t id, char *state, size_t cap) {
  td_msg *m = NULL;
  char err[512];
  int code = -1, rc = th_rpc_simple(g_sock, "cancel", "id", id, &m, &code, err, sizeof(err));

  ck_assert_msg(rc == 0, "cancel: %s", td_strerror(rc));
  if (code != 0) {
    ck_assert_msg(err[0] != '\0', "cancel refused with %s and no message", td_err_name(code));
    snprintf(state, cap, "%s", td_err_name(code));
  } else {
    ck_assert(td_obj_cstr(td_msg_root(m), "state", state, cap) == 0);
  }
  td_msg_free(m);
}

static void wait_state(uint64_t id, const char *want) {
  char last[32] = "";
  int rc = th_wait_state(g_sock, id, want, WAIT_MS, last, sizeof(last));

  ck_assert_msg(rc == 0, "job %llu is %s, not %s (%s); traind's log ends:\n%s",
                (unsigned long long)id, last, want, td_strerror(rc), th_log_tail(&g_d));
}

/* Wait until the job's worker reports training steps. */
static void wait_training(uint64_t id) {
  for (int i = 0; i < WAIT_MS / 20; i++) {
    uint64_t step = 0, epoch = 0;
    ck_assert(th_show_u64(g_sock, id, "step", &step) == 0);
    ck_assert(th_show_u64(g_sock, id, "epoch", &epoch) == 0);
    if (step > 0 || epoch > 1)
      return;
    th_msleep(20);
  }
  ck_abort_msg("job %llu reported no training step; traind's log ends:\n%s",
               (unsigned long long)id, th_log_tail(&g_d));
}

static pid_t the_child(const char *comm) {
  pid_t pids[4];
  int n = 0;

  for (int i = 0; i < WAIT_MS / 20 && (n = th_children(g_d.pid, comm, pids, 4)) == 0; i++)
    th_msleep(20);
  ck_assert_msg(n == 1, "traind has %d %s processes, expected 1", n, comm);
  return pids[0];
}

/* No worker or loader is left under traind (they take a moment to be
 * reaped after the job's state changes). */
static void no_children(void) {
  pid_t pids[4];
  int w = 0, l = 0;

  for (int i = 0; i < 500; i++) {
    w = th_children(g_d.pid, "traind-worker", pids, 4);
    l = th_children(g_d.pid, "traind-loader", pids, 4);
    if (w == 0 && l == 0)
      return;
    th_msleep(20);
  }
  ck_abort_msg("%d worker and %d loader processes are left", w, l);
}

static uint64_t reserved(void) {
  const msgpack_object *devs;
  td_msg *m = NULL;
  uint64_t v = UINT64_MAX;
  int code = -1;

  ck_assert(th_rpc_simple(g_sock, "devices", NULL, 0, &m, &code, NULL, 0) == 0 && code == 0);
  ck_assert(td_obj_array(td_msg_root(m), "devices", &devs) == 0);
  ck_assert_uint_eq(devs->via.array.size, 1);
  ck_assert(td_obj_u64(&devs->via.array.ptr[0], "reserved", &v) == 0);
  td_msg_free(m);
  return v;
}

static void still_serving(void) {
  int code = -1;
  ck_assert(th_rpc_simple(g_sock, "info", NULL, 0, NULL, &code, NULL, 0) == 0);
  ck_assert_int_eq(code, 0);
}

START_TEST(worker_sigkill_fails_job) {
  char error[512];
  uint64_t a, b, status = 0;
  pid_t w;

  start(NULL);
  a = submit(g_long, "a");
  b = submit(g_long, "b");
  wait_state(a, "running");
  wait_training(a);
  wait_state(b, "queued");
  w = the_child("traind-worker");
  ck_assert(kill(w, SIGKILL) == 0);
  wait_state(a, "failed");
  ck_assert(th_show_str(g_sock, a, "error", error, sizeof(error)) == 0);
  ck_assert_msg(strstr(error, "worker") != NULL &&
                    (strstr(error, "signal 9") != NULL || strstr(error, "SIGKILL") != NULL),
                "the reason does not name the worker and its signal: %s", error);
  ck_assert(th_show_u64(g_sock, a, "exit_status", &status) == 0);
  ck_assert_uint_eq(status, 128 + SIGKILL);
  still_serving();
  /* The reservation was released: the waiting job runs. */
  wait_state(b, "running");
  cancel(b, error, sizeof(error));
  wait_state(b, "cancelled");
  ck_assert_uint_eq(reserved(), 0);
  no_children();
}
END_TEST

START_TEST(worker_sigkill_retries_when_allowed) {
  char yaml[2100], error[512];
  uint64_t a, retries = 0;
  pid_t w, again;

  start(NULL);
  snprintf(yaml, sizeof(yaml), "%smax_retries: 1\n", g_long);
  a = submit(yaml, "a");
  wait_state(a, "running");
  wait_training(a);
  w = the_child("traind-worker");
  ck_assert(kill(w, SIGKILL) == 0);
  /* Back in the queue and admitted again, by a new worker. */
  for (int i = 0; i < WAIT_MS / 20; i++) {
    ck_assert(th_show_u64(g_sock, a, "retries", &retries) == 0);
    if (retries == 1)
      break;
    th_msleep(20);
  }
  ck_assert_uint_eq(retries, 1);
  wait_state(a, "running");
  again = the_child("traind-worker");
  ck_assert_int_ne(again, w);
  ck_assert(kill(again, SIGKILL) == 0);
  wait_state(a, "failed");
  ck_assert(th_show_str(g_sock, a, "error", error, sizeof(error)) == 0);
  ck_assert_msg(strstr(error, "signal 9") != NULL, "%s", error);
  ck_assert_uint_eq(reserved(), 0);
  no_children();
}
END_TEST

START_TEST(hung_worker_is_killed) {
  static const char extra[] = "heartbeat_timeout_ms: 2000\n";
  char error[512], state[32];
  uint64_t a, b;
  pid_t w;

  /* The key arrived with the heartbeat; an older traind refuses it. */
  {
    th_daemon probe;
    char cmd[600];
    ck_assert(th_daemon_init(&probe, "1GiB", extra, 0) == 0);
    snprintf(cmd, sizeof(cmd), "'%s/daemon/traind' --check-config '%s' >/dev/null 2>&1",
             getenv("TD_BUILD_ROOT") ? getenv("TD_BUILD_ROOT") : "build", probe.cfg);
    if (system(cmd) != 0) {
      th_daemon_remove(&probe);
      printf("SKIP hung_worker_is_killed: this traind does not accept heartbeat_timeout_ms\n");
      return;
    }
    th_daemon_remove(&probe);
  }
  start(extra);
  a = submit(g_long, "a");
  b = submit(g_long, "b");
  wait_state(a, "running");
  wait_training(a);
  w = the_child("traind-worker");
  ck_assert(kill(w, SIGSTOP) == 0);
  wait_state(a, "failed");
  ck_assert(th_show_str(g_sock, a, "error", error, sizeof(error)) == 0);
  ck_assert_msg(strstr(error, "heartbeat") != NULL || strstr(error, "not responding") != NULL ||
                    strstr(error, "stopped responding") != NULL,
                "the reason does not say the worker hung: %s", error);
  /* A stopped process still dies of SIGKILL: nothing is left behind. */
  ck_assert_int_ne(the_child("traind-worker"), w);
  wait_state(b, "running");
  cancel(b, state, sizeof(state));
  wait_state(b, "cancelled");
  ck_assert_uint_eq(reserved(), 0);
  no_children();
  ck_assert_msg(kill(w, 0) < 0 && errno == ESRCH, "the hung worker %d is still there", (int)w);
}
END_TEST

START_TEST(cancel_queued_job) {
  char state[32], error[512];
  uint64_t a, b, started = 1;

  start(NULL);
  a = submit(g_long, "a");
  b = submit(g_long, "b");
  wait_state(a, "running");
  wait_state(b, "queued");
  cancel(b, state, sizeof(state));
  ck_assert_str_eq(state, "cancelled");
  ck_assert(th_show_str(g_sock, b, "state", state, sizeof(state)) == 0);
  ck_assert_str_eq(state, "cancelled");
  ck_assert(th_show_str(g_sock, b, "error", error, sizeof(error)) == 0);
  ck_assert_msg(strstr(error, "cancel") != NULL, "%s", error);
  ck_assert(th_show_u64(g_sock, b, "started_ms", &started) == 0);
  ck_assert_uint_eq(started, 0);
  /* The running job is untouched, and a second cancel is refused. */
  ck_assert(th_show_str(g_sock, a, "state", state, sizeof(state)) == 0);
  ck_assert_str_eq(state, "running");
  cancel(b, state, sizeof(state));
  ck_assert_str_eq(state, "ESTATE");
  cancel(a, state, sizeof(state));
  ck_assert_str_eq(state, "cancelling");
  wait_state(a, "cancelled");
  ck_assert_uint_eq(reserved(), 0);
  no_children();
}
END_TEST

/* Cancelled in the request right after its submit: admitted, its
 * processes just spawned, none of them ready. */
START_TEST(cancel_admitted_job) {
  char state[32];
  uint64_t a;

  start(NULL);
  a = submit(g_long, "a");
  cancel(a, state, sizeof(state));
  ck_assert_msg(strcmp(state, "cancelling") == 0 || strcmp(state, "cancelled") == 0, "%s",
                state);
  wait_state(a, "cancelled");
  ck_assert_uint_eq(reserved(), 0);
  no_children();
  still_serving();
}
END_TEST

START_TEST(cancel_running_job) {
  char state[32];
  uint64_t a, b;

  start(NULL);
  a = submit(g_long, "a");
  b = submit(g_long, "b");
  wait_state(a, "running");
  wait_training(a);
  cancel(a, state, sizeof(state));
  ck_assert_str_eq(state, "cancelling");
  wait_state(a, "cancelled");
  /* Its reservation goes to the next job. */
  wait_state(b, "running");
  cancel(b, state, sizeof(state));
  wait_state(b, "cancelled");
  ck_assert_uint_eq(reserved(), 0);
  no_children();
}
END_TEST

/* traind killed with SIGKILL under a training job: its worker and loader
 * must not train on (a restarted traind runs the job again, and two copies
 * would hold the device's memory twice). */
START_TEST(job_processes_end_with_traind) {
  pid_t w, l;
  uint64_t a;
  int alive = 0;

  start(NULL);
  a = submit(g_long, "a");
  wait_state(a, "running");
  wait_training(a);
  w = the_child("traind-worker");
  l = the_child("traind-loader");
  nn_close(g_sock);
  g_sock = -1;
  th_daemon_signal_wait(&g_d, SIGKILL);
  for (int i = 0; i < 1000; i++) {
    alive = (kill(w, 0) == 0) + (kill(l, 0) == 0);
    if (alive == 0)
      break;
    th_msleep(20);
  }
  if (alive) {
    int wl = kill(w, 0) == 0, ll = kill(l, 0) == 0;
    /* Not left behind for the next test. */
    kill(w, SIGKILL);
    kill(l, SIGKILL);
    ck_abort_msg("20 s after traind was killed its worker (pid %d) is %s and its loader "
                 "(pid %d) is %s", (int)w, wl ? "still running" : "gone", (int)l,
                 ll ? "still running" : "gone");
  }
}
END_TEST

/* The field of show's checkpoint map. */
static uint64_t show_ckpt(uint64_t id, const char *key) {
  const msgpack_object *job, *ck;
  td_msg *m = NULL;
  uint64_t v = UINT64_MAX;
  int code = -1;

  ck_assert(th_rpc_simple(g_sock, "show", "id", id, &m, &code, NULL, 0) == 0 && code == 0);
  ck_assert(td_obj_map(td_msg_root(m), "job", &job) == 0);
  ck_assert(td_obj_map(job, "checkpoint", &ck) == 0);
  ck_assert(td_obj_u64(ck, key, &v) == 0);
  td_msg_free(m);
  return v;
}

/* The job's log file, malloc'd. */
static char *job_log(uint64_t id) {
  char path[300], *log = NULL;
  size_t len;

  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_msg(td_read_file(path, 4 << 20, &log, &len) == 0, "cannot read %s", path);
  return log;
}

/* A small job that writes its model to DIR/rel, run to success. */
static uint64_t run_with_output(const char *name, const char *rel) {
  char yaml[2600];
  uint64_t id;

  th_job_yaml(yaml, sizeof(yaml) - 300, name, 32, 1, 256, 64);
  snprintf(yaml + strlen(yaml), 300, "output: %s/%s\n", g_d.dir, rel);
  id = submit(yaml, name);
  wait_state(id, "succeeded");
  return id;
}

/* The output's directory is gone by the end of training (the client
 * checks it at submit; the raw request here does not): the model is kept
 * in the job's directory, the job succeeds, and says so and why. */
START_TEST(unwritable_output_keeps_model) {
  char model[512], want[512], warning[1024], *log;
  struct stat st;
  uint64_t a;

  start(NULL);
  a = run_with_output("lost", "gone/fm.safetensors");
  ck_assert(th_show_str(g_sock, a, "model", model, sizeof(model)) == 0);
  snprintf(want, sizeof(want), "%s/jobs/%llu/model.safetensors", g_d.state,
           (unsigned long long)a);
  ck_assert_str_eq(model, want);
  ck_assert_msg(stat(model, &st) == 0 && st.st_size > 0, "no model at %s", model);
  ck_assert(th_show_str(g_sock, a, "warning", warning, sizeof(warning)) == 0);
  ck_assert_msg(strstr(warning, "gone/fm.safetensors") != NULL &&
                    strstr(warning, "no such directory") != NULL && strstr(warning, want) != NULL,
                "the warning does not say what failed, why and where the model is: %s", warning);
  ck_assert_msg(strstr(warning, "input/output error") == NULL, "%s", warning);
  log = job_log(a);
  ck_assert_msg(strstr(log, want) != NULL, "the job's log does not say where the model is:\n%s",
                log);
  free(log);
  /* A job whose output works has no warning. */
  a = run_with_output("kept", "fm.safetensors");
  ck_assert(th_show_str(g_sock, a, "warning", warning, sizeof(warning)) == 0);
  ck_assert_str_eq(warning, "");
}
END_TEST

/* Under systemd traind's own lines are the journal's ("<6>..."), but the
 * job's worker and loader write to the job's log file: every line there
 * starts with the time, none with a syslog prefix. */
START_TEST(job_log_lines_carry_time) {
  static const char stamp[] =
      "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z traind-(worker|loader)"
      "\\[[0-9]+\\] (info|warning|error|debug): ";
  char yaml[2100], *log, *line, *save = NULL;
  regex_t re;
  uint64_t a;
  int lines = 0;

  setenv("JOURNAL_STREAM", "8:4242", 1); /* as systemd sets it */
  start(NULL);
  th_job_yaml(yaml, sizeof(yaml), "stamped", 32, 1, 256, 64);
  a = submit(yaml, "stamped");
  wait_state(a, "succeeded");
  ck_assert_msg(strstr(th_log_tail(&g_d), "<6>") != NULL,
                "traind's own lines are not in the journal's form:\n%s", th_log_tail(&g_d));
  ck_assert(regcomp(&re, stamp, REG_EXTENDED | REG_NOSUB) == 0);
  log = job_log(a);
  for (line = strtok_r(log, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
    ck_assert_msg(regexec(&re, line, 0, NULL, 0) == 0, "a job log line without its time: %s",
                  line);
    lines++;
  }
  ck_assert_int_gt(lines, 2);
  regfree(&re);
  free(log);
}
END_TEST

/* Cancelled, a job's checkpoint file is removed: show must not name it. */
START_TEST(cancel_clears_checkpoint) {
  char yaml[2200], state[32], path[300];
  struct stat st;
  uint64_t a;
  int i;

  start(NULL);
  snprintf(yaml, sizeof(yaml), "%scheckpoint:\n  every_steps: 5\n  every_seconds: 0\n", g_long);
  a = submit(yaml, "ckpt");
  wait_state(a, "running");
  for (i = 0; i < WAIT_MS / 20 && show_ckpt(a, "bytes") == 0; i++)
    th_msleep(20);
  ck_assert_msg(show_ckpt(a, "bytes") > 0, "no checkpoint reported:\n%s", th_log_tail(&g_d));
  ck_assert_uint_gt(show_ckpt(a, "step"), 0);
  cancel(a, state, sizeof(state));
  wait_state(a, "cancelled");
  snprintf(path, sizeof(path), "%s/jobs/%llu/checkpoint.tdck", g_d.state, (unsigned long long)a);
  ck_assert_msg(stat(path, &st) < 0, "%s is still there", path);
  ck_assert_uint_eq(show_ckpt(a, "bytes"), 0);
  ck_assert_uint_eq(show_ckpt(a, "step"), 0);
  ck_assert_uint_eq(show_ckpt(a, "epoch"), 0);
  ck_assert_uint_eq(show_ckpt(a, "batch"), 0);
}
END_TEST

static Suite *supervise_suite(void) {
  Suite *s = suite_create("supervise");
  TCase *tc = tcase_create("jobs");

  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 180);
  tcase_add_test(tc, worker_sigkill_fails_job);
  tcase_add_test(tc, worker_sigkill_retries_when_allowed);
  tcase_add_test(tc, hung_worker_is_killed);
  tcase_add_test(tc, cancel_queued_job);
  tcase_add_test(tc, cancel_admitted_job);
  tcase_add_test(tc, cancel_running_job);
  tcase_add_test(tc, job_processes_end_with_traind);
  tcase_add_test(tc, unwritable_output_keeps_model);
  tcase_add_test(tc, job_log_lines_carry_time);
  tcase_add_test(tc, cancel_clears_checkpoint);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(supervise_suite(), 1); }
