/* Callbacks with the real traind, worker and loader: a job of 20 epochs
 * whose early stopping cannot see an improvement (min_delta larger than
 * any loss) stops after its second epoch and succeeds, without a warning;
 * `show` says the epoch it reached, the job log says why it stopped and
 * that the plateau halved the rate, and keep_best's model lies beside the
 * last one and loads with the same tensors.  And a job stopped by traind's
 * shutdown in its second epoch or later, resumed after a restart, makes
 * the same decisions as one that never stopped: the same reductions, the
 * same last epoch, the same weights in the last and the best model. */
#include <check.h>
#include <math.h>
#include <nanomsg/nn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "safetensors.h"
#include "util.h"

#define WAIT_MS 60000

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

START_TEST(early_stopping_ends_the_job_with_the_best_model) {
  char base[4096], yaml[8192], err[512] = "", last[32] = "", model[1024], best[1100];
  char path[300], *log = NULL;
  const char *train;
  td_st_file *fm = NULL, *fb = NULL;
  uint64_t id = 0, epoch = 0, epochs = 0;
  size_t len;
  int rc;

  /* 500 samples, 100 of them held out: a fraction of a second an epoch */
  th_job_yaml(base, sizeof(base), "stops", 32, 20, 500, 50);
  train = strstr(base, "train:\n  batch_size");
  ck_assert_ptr_nonnull(train);
  snprintf(yaml, sizeof(yaml),
           "%.*s  validation: {count: 100}\n%s"
           "callbacks:\n"
           "  early_stopping: {monitor: val_loss, patience: 1, min_delta: 100}\n"
           "  keep_best: {monitor: val_accuracy}\n"
           "  reduce_lr_on_plateau: {factor: 0.5, patience: 1, min_delta: 100}\n",
           (int)(train - base), base, train);

  ck_assert(th_daemon_init(&g_d, "1GiB", NULL, 0) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert(g_sock >= 0);
  rc = th_submit(g_sock, yaml, "stops", &id, err, sizeof(err));
  ck_assert_msg(rc == 0, "submit: %s %s", td_err_name(rc), err);
  rc = th_wait_state(g_sock, id, "succeeded", WAIT_MS, last, sizeof(last));
  ck_assert_msg(rc == 0, "job is %s, not succeeded (%s); traind's log ends:\n%s", last,
                td_strerror(rc), th_log_tail(&g_d));

  /* show: the epoch it got to, of the 20 it had */
  ck_assert_int_eq(th_show_u64(g_sock, id, "epoch", &epoch), 0);
  ck_assert_int_eq(th_show_u64(g_sock, id, "epochs", &epochs), 0);
  ck_assert_uint_eq(epoch, 2);
  ck_assert_uint_eq(epochs, 20);
  err[0] = '\0';
  th_show_str(g_sock, id, "warning", err, sizeof(err)); /* "" or absent */
  ck_assert_msg(err[0] == '\0', "warning: %s", err);

  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_msg(td_read_file(path, 4 << 20, &log, &len) == 0, "cannot read %s", path);
  ck_assert_msg(strstr(log, "early stopping: val_loss has not improved") != NULL &&
                    strstr(log, "training ends after epoch 2 of 20") != NULL,
                "%s", log);
  ck_assert_msg(strstr(log, "reduce_lr_on_plateau: val_loss has not improved for 1 epoch: "
                            "the learning rate is now 0.5 times") != NULL,
                "%s", log);
  ck_assert_msg(strstr(log, "keep_best: epoch 1 has the best val_accuracy") != NULL, "%s", log);
  ck_assert_msg(strstr(log, "warning") == NULL, "%s", log);
  ck_assert_msg(strstr(log, "epoch 3:") == NULL, "trained on after stopping:\n%s", log);

  /* the last model and the best one beside it, the same tensors */
  ck_assert_int_eq(th_show_str(g_sock, id, "model", model, sizeof(model)), 0);
  ck_assert_msg(strlen(model) > 12 && strcmp(model + strlen(model) - 12, ".safetensors") == 0,
                "%s", model);
  snprintf(best, sizeof(best), "%.*s.best.safetensors", (int)strlen(model) - 12, model);
  ck_assert_msg(td_safetensors_load(model, 64 << 20, &fm, err, sizeof(err)) == 0, "%s: %s",
                model, err);
  ck_assert_msg(td_safetensors_load(best, 64 << 20, &fb, err, sizeof(err)) == 0, "%s: %s", best,
                err);
  ck_assert_uint_eq(td_safetensors_count(fb), td_safetensors_count(fm));
  ck_assert_uint_eq(td_safetensors_count(fb), 4);
  for (size_t i = 0; i < td_safetensors_count(fm); i++) {
    td_st_tensor a, b;

    td_safetensors_get(fm, i, &a);
    ck_assert_msg(td_safetensors_find(fb, a.name, &b) == 0, "no %s in %s", a.name, best);
    ck_assert_str_eq(a.dtype, b.dtype);
    ck_assert_uint_eq(a.bytes, b.bytes);
  }
  ck_assert_ptr_nonnull(td_safetensors_meta(fb, "traind.epoch"));
  ck_assert_str_eq(td_safetensors_meta(fb, "traind.monitor"), "val_accuracy");
  ck_assert_str_eq(td_safetensors_meta(fm, "traind.epochs"), "2");
  td_safetensors_free(fm);
  td_safetensors_free(fb);
  free(log);
}
END_TEST

static void start(void) {
  int rc;

  if (g_d.dir[0] == '\0')
    ck_assert(th_daemon_init(&g_d, "1GiB", NULL, 0) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert(g_sock >= 0);
}

static uint64_t submit(const char *yaml, const char *key) {
  char err[512] = "";
  uint64_t id = 0;
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

static char *job_log(uint64_t id) {
  char path[300], *log = NULL;
  size_t len;

  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert_msg(td_read_file(path, 4 << 20, &log, &len) == 0, "cannot read %s", path);
  return log;
}

static int count(const char *text, const char *needle) {
  int n = 0;

  for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
    n++;
  return n;
}

/* Every tensor of b equals a's (within 1e-6 relative: OpenBLAS may sum in
 * another order elsewhere; on one machine the bits are the same). */
static void same_file(const char *a, const char *b) {
  td_st_file *fa = NULL, *fb = NULL;
  char err[256];

  ck_assert_msg(td_safetensors_load(a, 64 << 20, &fa, err, sizeof(err)) == 0, "%s: %s", a, err);
  ck_assert_msg(td_safetensors_load(b, 64 << 20, &fb, err, sizeof(err)) == 0, "%s: %s", b, err);
  ck_assert_uint_eq(td_safetensors_count(fa), td_safetensors_count(fb));
  for (size_t i = 0; i < td_safetensors_count(fa); i++) {
    td_st_tensor ta, tb;
    const float *x, *y;

    td_safetensors_get(fa, i, &ta);
    ck_assert_msg(td_safetensors_find(fb, ta.name, &tb) == 0, "no %s in %s", ta.name, b);
    ck_assert_uint_eq(ta.bytes, tb.bytes);
    x = ta.data;
    y = tb.data;
    for (uint64_t k = 0; k < ta.bytes / sizeof(float); k++)
      ck_assert_msg(fabs((double)x[k] - y[k]) <= 1e-6 * fmax(fabs((double)x[k]), 1e-3),
                    "%s: %s[%llu] is %g in %s, %g in %s", b, ta.name, (unsigned long long)k,
                    (double)x[k], a, (double)y[k], b);
  }
  td_safetensors_free(fa);
  td_safetensors_free(fb);
}

START_TEST(resumed_job_decides_the_same) {
  char base[4096], yaml[8192], ma[1024], mb[1024], ba[1100], bb[1100];
  const char *train;
  uint64_t ref, id, epoch = 0, ea = 0, eb = 0;
  char *la, *lb;

  /* stops after epoch 4 of 20; the rate halves at epochs 2, 3 and 4 */
  th_job_yaml(base, sizeof(base), "resumes", 128, 20, 12000, 32);
  train = strstr(base, "train:\n  batch_size");
  ck_assert_ptr_nonnull(train);
  snprintf(yaml, sizeof(yaml),
           "%.*s  validation: {fraction: 0.1}\n%s"
           "callbacks:\n"
           "  early_stopping: {patience: 3, min_delta: 100}\n"
           "  keep_best: val_accuracy\n"
           "  reduce_lr_on_plateau: {factor: 0.5, patience: 1, min_delta: 100}\n"
           "checkpoint: {every_steps: 20, every_seconds: 0}\n",
           (int)(train - base), base, train);
  start();
  ref = submit(yaml, "reference");
  wait_state(ref, "succeeded");
  id = submit(yaml, "interrupted");
  wait_state(id, "running");
  /* into the second epoch: a reduction made, a best kept */
  for (int i = 0; i < WAIT_MS / 5 && epoch < 2; i++) {
    th_show_u64(g_sock, id, "epoch", &epoch);
    if (epoch < 2)
      th_msleep(5);
  }
  ck_assert_uint_ge(epoch, 2);
  nn_close(g_sock);
  g_sock = -1;
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not exit 0 on SIGTERM:\n%s",
                th_log_tail(&g_d));
  start();
  wait_state(id, "succeeded");

  la = job_log(ref);
  lb = job_log(id);
  ck_assert_msg(strstr(lb, "resumed from ") != NULL, "the job did not resume:\n%s", lb);
  ck_assert_msg(strstr(lb, "no callback state") == NULL, "%s", lb);
  ck_assert_msg(strstr(la, "training ends after epoch 4 of 20") != NULL, "%s", la);
  ck_assert_msg(strstr(lb, "training ends after epoch 4 of 20") != NULL, "%s", lb);
  ck_assert_int_eq(count(la, "reduce_lr_on_plateau: "), 3);
  ck_assert_int_eq(count(lb, "reduce_lr_on_plateau: "), 3);
  ck_assert_int_eq(count(lb, "keep_best: "), count(la, "keep_best: "));
  ck_assert_int_eq(th_show_u64(g_sock, ref, "epoch", &ea), 0);
  ck_assert_int_eq(th_show_u64(g_sock, id, "epoch", &eb), 0);
  ck_assert_uint_eq(ea, 4);
  ck_assert_uint_eq(eb, 4);
  ck_assert_int_eq(th_show_str(g_sock, ref, "model", ma, sizeof(ma)), 0);
  ck_assert_int_eq(th_show_str(g_sock, id, "model", mb, sizeof(mb)), 0);
  same_file(ma, mb);
  snprintf(ba, sizeof(ba), "%.*s.best.safetensors", (int)strlen(ma) - 12, ma);
  snprintf(bb, sizeof(bb), "%.*s.best.safetensors", (int)strlen(mb) - 12, mb);
  same_file(ba, bb);
  free(la);
  free(lb);
}
END_TEST

static Suite *callbacks_suite(void) {
  Suite *s = suite_create("callbacks");
  TCase *tc = tcase_create("jobs");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, early_stopping_ends_the_job_with_the_best_model);
  tcase_add_test(tc, resumed_job_decides_the_same);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(callbacks_suite(), 1); }
