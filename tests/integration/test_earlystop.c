/* Callbacks with the real traind, worker and loader: a job of 20 epochs
 * whose early stopping cannot see an improvement (min_delta larger than
 * any loss) stops after its second epoch and succeeds, without a warning;
 * `show` says the epoch it reached, the job log says why it stopped and
 * that the plateau halved the rate, and keep_best's model lies beside the
 * last one and loads with the same tensors. */
#include <check.h>
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

static Suite *callbacks_suite(void) {
  Suite *s = suite_create("callbacks");
  TCase *tc = tcase_create("jobs");

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, early_stopping_ends_the_job_with_the_best_model);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(callbacks_suite(), 1); }
