/* Targets beyond one class id, with the real traind, loader and worker on
 * CSV files the test writes: a regression (two float targets, loss mse)
 * whose test MSE falls over its epochs, shows its MAE in show and in the
 * job.eval events, no accuracy (-1), and keeps its best model by val_mae;
 * a multi-label job (binary_cross_entropy, three 0/1 targets) whose loss
 * falls and whose exact-match accuracy rises; and a classification with
 * top_k: 2, whose top-2 accuracy is at least its accuracy. */
#include <check.h>
#include <math.h>
#include <nanomsg/nn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define WAIT_MS 120000

static th_daemon g_d;
static int g_sock = -1;

static void setup(void) { memset(&g_d, 0, sizeof(g_d)); }

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

static void start(void) {
  int rc;

  ck_assert(th_daemon_init(&g_d, "1GiB", NULL, 0) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert(g_sock >= 0);
}

/* n lines of 8 features in [-1, 1] then the targets kind asks for:
 * 'r' two regression values, 'm' three 0/1 labels, 'c' a class 0..4. */
static void write_csv(const char *path, int n, char kind, uint32_t seed) {
  FILE *f = fopen(path, "w");

  ck_assert_ptr_nonnull(f);
  fprintf(f, "%s\n", kind == 'r' ? "x0,x1,x2,x3,x4,x5,x6,x7,y0,y1"
                     : kind == 'm' ? "x0,x1,x2,x3,x4,x5,x6,x7,a,b,c"
                                   : "x0,x1,x2,x3,x4,x5,x6,x7,class");
  for (int i = 0; i < n; i++) {
    float x[8];

    for (int j = 0; j < 8; j++) {
      seed = seed * 1103515245u + 12345u;
      x[j] = (float)((seed >> 8) % 2001) / 1000.0f - 1.0f;
      fprintf(f, "%.3f,", (double)x[j]);
    }
    if (kind == 'r')
      fprintf(f, "%.4f,%.4f\n", (double)(x[0] - 0.5f * x[3] + 0.2f),
              (double)(0.7f * x[1] * x[2] + x[5]));
    else if (kind == 'm')
      fprintf(f, "%d,%d,%d\n", x[0] + x[1] > 0, x[2] > 0.3f, x[4] - x[6] < 0);
    else
      fprintf(f, "%d\n", (int)((x[0] + 1.0f) * 2.5f) % 5);
  }
  ck_assert_int_eq(fclose(f), 0);
}

/* The job file: model input 8 -> 32 -> outputs, the CSV data, and extra
 * keys under train (loss, top_k) and at the top (callbacks). */
static void job_yaml(char *buf, size_t cap, const char *name, int outputs, const char *csv,
                     const char *train_extra, const char *extra) {
  snprintf(buf, cap,
           "name: %s\n"
           "model:\n"
           "  input: [8]\n"
           "  layers:\n"
           "    - {type: dense, units: 32}\n"
           "    - {type: relu}\n"
           "    - {type: dense, units: %d}\n"
           "data:\n"
           "  format: csv\n"
           "  csv: {header: true%s}\n"
           "  train: {features: %s/%s-train.csv}\n"
           "  test: {features: %s/%s-test.csv}\n"
           "  validation: {count: 100}\n"
           "train:\n"
           "  batch_size: 32\n"
           "  epochs: 4\n"
           "  seed: 11\n"
           "  optimizer: {type: adam, lr: 0.01}\n"
           "%s"
           "%s",
           name, outputs, csv, g_d.dir, name, g_d.dir, name, train_extra, extra);
}

static uint64_t run_job(const char *yaml, const char *key) {
  char err[512] = "", last[32] = "";
  uint64_t id = 0;
  int rc = th_submit(g_sock, yaml, key, &id, err, sizeof(err));

  ck_assert_msg(rc == 0, "submit: %s %s", td_err_name(rc), err);
  rc = th_wait_state(g_sock, id, "succeeded", WAIT_MS, last, sizeof(last));
  ck_assert_msg(rc == 0, "job is %s, not succeeded (%s); traind's log ends:\n%s", last,
                td_strerror(rc), th_log_tail(&g_d));
  return id;
}

static double show_f64(uint64_t id, const char *key) {
  const msgpack_object *job;
  td_msg *m;
  double v = NAN;
  int code = 0;

  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, NULL, 0), 0);
  ck_assert_int_eq(code, 0);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &job), 0);
  ck_assert_msg(td_obj_f64(job, key, &v) == 0, "show has no %s", key);
  td_msg_free(m);
  return v;
}

static char *job_log(uint64_t id) {
  char path[300], *log = NULL;
  size_t len;

  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_msg(td_read_file(path, 4 << 20, &log, &len) == 0, "cannot read %s", path);
  return log;
}

/* The number after `what` on the log line of epoch e's test pass. */
static double test_value(const char *log, int e, const char *what) {
  char head[48];
  const char *p, *q;

  snprintf(head, sizeof(head), "epoch %d: test ", e);
  p = strstr(log, head);
  ck_assert_msg(p != NULL, "no '%s' in the log:\n%s", head, log);
  q = strstr(p, what);
  ck_assert_msg(q != NULL && q < strchr(p, '\n'), "no %s on the line: %.120s", what, p);
  return strtod(q + strlen(what), NULL);
}

START_TEST(regression_mse_falls_and_shows_mae) {
  char yaml[4096], path[300], *log;
  double first, last, mae, val_mae;
  uint64_t id;

  start();
  snprintf(path, sizeof(path), "%s/reg-train.csv", g_d.dir);
  write_csv(path, 900, 'r', 1);
  snprintf(path, sizeof(path), "%s/reg-test.csv", g_d.dir);
  write_csv(path, 200, 'r', 2);
  job_yaml(yaml, sizeof(yaml), "reg", 2, ", target_columns: [8, 9]", "  loss: {kind: mse}\n",
           "callbacks:\n  keep_best: {monitor: val_mae}\n");
  id = run_job(yaml, "reg");

  log = job_log(id);
  first = test_value(log, 1, "loss ");
  last = test_value(log, 4, "loss ");
  ck_assert_msg(last < first * 0.7, "the test MSE went from %g to %g:\n%s", first, last, log);
  ck_assert_msg(test_value(log, 4, "MAE ") > 0, "%s", log);
  ck_assert_msg(strstr(log, "test accuracy") == NULL, "a regression has no accuracy:\n%s", log);
  ck_assert_msg(strstr(log, "has the best val_mae") != NULL, "%s", log);

  mae = show_f64(id, "mae");
  val_mae = show_f64(id, "val_mae");
  ck_assert_msg(mae > 0 && mae < 1, "show's mae %g", mae);
  ck_assert_msg(val_mae > 0 && val_mae < 1, "show's val_mae %g", val_mae);
  ck_assert_double_eq(show_f64(id, "accuracy"), -1);
  ck_assert_double_eq(show_f64(id, "top_k_accuracy"), -1);
  free(log);
}
END_TEST

START_TEST(multilabel_bce_learns) {
  char yaml[4096], path[300], *log;
  double first, last, acc;
  uint64_t id;

  start();
  snprintf(path, sizeof(path), "%s/ml-train.csv", g_d.dir);
  write_csv(path, 900, 'm', 3);
  snprintf(path, sizeof(path), "%s/ml-test.csv", g_d.dir);
  write_csv(path, 200, 'm', 4);
  job_yaml(yaml, sizeof(yaml), "ml", 3, ", target_columns: [8, 9, 10]",
           "  loss: {kind: binary_cross_entropy}\n", "");
  id = run_job(yaml, "ml");

  log = job_log(id);
  first = test_value(log, 1, "loss ");
  last = test_value(log, 4, "loss ");
  ck_assert_msg(last < first, "the test loss went from %g to %g:\n%s", first, last, log);
  acc = show_f64(id, "accuracy");
  ck_assert_msg(acc > 0.6 && acc <= 1, "exact-match accuracy %g:\n%s", acc, log);
  ck_assert_double_eq(show_f64(id, "mae"), -1);
  free(log);
}
END_TEST

START_TEST(top_k_is_at_least_the_accuracy) {
  char yaml[4096], path[300], *log;
  double acc, top2, val_top2;
  uint64_t id, k = 0;

  start();
  snprintf(path, sizeof(path), "%s/cls-train.csv", g_d.dir);
  write_csv(path, 900, 'c', 5);
  snprintf(path, sizeof(path), "%s/cls-test.csv", g_d.dir);
  write_csv(path, 200, 'c', 6);
  job_yaml(yaml, sizeof(yaml), "cls", 5, ", label_column: 8", "  top_k: 2\n",
           "callbacks:\n  early_stopping: {monitor: val_top_k, patience: 10}\n");
  id = run_job(yaml, "cls");

  ck_assert_int_eq(th_show_u64(g_sock, id, "top_k", &k), 0);
  ck_assert_uint_eq(k, 2);
  acc = show_f64(id, "accuracy");
  top2 = show_f64(id, "top_k_accuracy");
  val_top2 = show_f64(id, "val_top_k_accuracy");
  ck_assert_msg(acc >= 0 && top2 >= acc && top2 <= 1, "accuracy %g, top-2 %g", acc, top2);
  ck_assert_msg(val_top2 >= 0 && val_top2 <= 1, "val top-2 %g", val_top2);
  log = job_log(id);
  ck_assert_msg(strstr(log, "top-2 accuracy") != NULL, "%s", log);
  free(log);
}
END_TEST

int main(void) {
  Suite *s = suite_create("targets");
  TCase *tc = tcase_create("targets");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 240);
  tcase_add_test(tc, regression_mse_falls_and_shows_mae);
  tcase_add_test(tc, multilabel_bce_learns);
  tcase_add_test(tc, top_k_is_at_least_the_accuracy);
  suite_add_tcase(s, tc);
  return th_run(s, 0);
}
