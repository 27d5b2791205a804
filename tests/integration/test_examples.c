/* Integration: the examples of issue #15 as a user runs them, small.  Each
 * example's own data script (or, for the image folder, the writer behind
 * build/tests/fmnist_images) makes a small version of its dataset in the
 * test's directory; the example's job file, read from examples/ with its
 * relative paths pointed there and two epochs, trains through traind,
 * loader and worker: the job succeeds, its loss falls, and a classifier's
 * test accuracy is above chance.  Catches an example that no longer runs
 * (a key renamed, a data script that writes what the job does not read). */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "error.h"
#include "harness.h"
#include "imgwrite.h"
#include "proto.h"
#include "util.h"

static th_daemon g_d;
static int g_sock = -1;

static const char *src_root(void) {
  const char *s = getenv("TD_SOURCE_ROOT");
  return s ? s : ".";
}

/* Run an examples/ data script with Debian's python (not pyenv's) into
 * the test's directory. */
static void run_script(const char *script, const char *args) {
  char cmd[1024];
  int st;

  snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s/examples/%s %s %s >/dev/null", src_root(),
           script, g_d.dir, args);
  st = system(cmd);
  ck_assert_msg(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s failed (%d)", cmd, st);
}

/* examples/NAME.yaml with "epochs: N" set to 2 and the paths it names
 * relative to itself ({features: X}, {images: X}, output: X) made relative
 * to the test's directory, since a submitted text's base is /tmp. */
static void example_yaml(const char *name, char *out, size_t cap) {
  static const char *const keys[] = {"{features: ", "{images: ", "output: "};
  char path[512], line[1024];
  size_t len = 0;
  FILE *f;

  snprintf(path, sizeof(path), "%s/examples/%s.yaml", src_root(), name);
  f = fopen(path, "r");
  ck_assert_msg(f != NULL, "%s: cannot open", path);
  out[0] = '\0';
  while (fgets(line, sizeof(line), f) != NULL) {
    char *at = NULL, *epochs = strstr(line, "epochs: ");
    size_t k;

    if (epochs != NULL && line[0] == ' ') {
      len += (size_t)snprintf(out + len, cap - len, "%.*sepochs: 2\n", (int)(epochs - line),
                              line);
      ck_assert_uint_lt(len, cap);
      continue;
    }
    for (k = 0; k < TD_ARRAY_SIZE(keys) && at == NULL; k++)
      if ((at = strstr(line, keys[k])) != NULL)
        at += strlen(keys[k]);
    if (at != NULL && *at != '/')
      len += (size_t)snprintf(out + len, cap - len, "%.*s%s/%s", (int)(at - line), line,
                              g_d.dir, at);
    else
      len += (size_t)snprintf(out + len, cap - len, "%s", line);
    ck_assert_uint_lt(len, cap);
  }
  fclose(f);
}

/* Submit the example, wait for it to succeed; its accuracy (or -1) and the
 * first and last points of its loss curve. */
static void train(const char *name, double *acc, double *first, double *last) {
  const msgpack_object *j, *curve;
  char yaml[8192], err[512];
  td_msg *m = NULL;
  uint64_t id = 0;
  int code = -1;

  example_yaml(name, yaml, sizeof(yaml));
  ck_assert_msg(th_submit(g_sock, yaml, name, &id, err, sizeof(err)) == 0, "%s: submit: %s",
                name, err);
  ck_assert_msg(th_wait_state(g_sock, id, "succeeded", 240000, err, sizeof(err)) == 0,
                "%s ended %s: %s", name, err, th_log_tail(&g_d));
  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "show: %s", err);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &j), 0);
  ck_assert_int_eq(td_obj_f64(j, "accuracy", acc), 0);
  ck_assert_int_eq(td_obj_array(j, "loss_curve", &curve), 0);
  ck_assert_uint_ge(curve->via.array.size, 2);
  *first = curve->via.array.ptr[0].via.array.ptr[1].via.f64;
  *last = curve->via.array.ptr[curve->via.array.size - 1].via.array.ptr[1].via.f64;
  printf("%s: loss %.4f -> %.4f over %u points, test accuracy %.4f\n", name, *first, *last,
         curve->via.array.size, *acc);
  td_msg_free(m);
}

static void start(void) {
  ck_assert_int_eq(th_daemon_init(&g_d, "1GiB", NULL, 0), 0);
  ck_assert_msg(th_daemon_start(&g_d, 10000) == 0, "traind did not start: %s",
                th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);
}

static void stop(void) {
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly: %s",
                th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}

START_TEST(resnet_on_a_small_image_folder) {
  char dir[256], dir2[256];
  double acc, first, last;

  start();
  snprintf(dir, sizeof(dir), "%s/fmnist-images/train", g_d.dir);
  snprintf(dir2, sizeof(dir2), "%s/fmnist-images/test", g_d.dir);
  ck_assert_int_eq(imgw_fmnist(TH_FMNIST "/train-images-idx3-ubyte.gz",
                               TH_FMNIST "/train-labels-idx1-ubyte.gz", dir, 2000, 10, 0), 0);
  ck_assert_int_eq(imgw_fmnist(TH_FMNIST "/t10k-images-idx3-ubyte.gz",
                               TH_FMNIST "/t10k-labels-idx1-ubyte.gz", dir2, 500, 10, 0), 0);
  train("fashion-mnist-resnet", &acc, &first, &last);
  ck_assert_msg(last < first, "the loss went from %g to %g", first, last);
  ck_assert_msg(acc > 0.3, "test accuracy %g (10 classes)", acc);
  stop();
}
END_TEST

START_TEST(transformer_on_licence_bytes) {
  double acc, first, last;

  start();
  run_script("make_text_bytes.py", "150 40"); /* 1,200 train, 320 test windows */
  train("text-transformer", &acc, &first, &last);
  ck_assert_msg(last < first, "the loss went from %g to %g", first, last);
  ck_assert_msg(acc > 0.2, "test accuracy %g (8 classes)", acc);
  stop();
}
END_TEST

START_TEST(regression_on_csv) {
  double acc, first, last;

  start();
  run_script("make_regression_csv.py", "");
  train("csv-regression", &acc, &first, &last);
  ck_assert_msg(last < first, "the loss went from %g to %g", first, last);
  ck_assert_double_eq(acc, -1); /* a regression has no accuracy */
  stop();
}
END_TEST

static Suite *examples_suite(void) {
  Suite *s = suite_create("examples");
  TCase *tc = tcase_create("examples");

  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, resnet_on_a_small_image_folder);
  tcase_add_test(tc, transformer_on_licence_bytes);
  tcase_add_test(tc, regression_on_csv);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(examples_suite(), 1); }
