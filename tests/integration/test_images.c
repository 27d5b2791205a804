/* Integration: a job on an image folder (issue #15).  Fashion-MNIST written
 * out as PNG and JPEG class folders (tests/data/imgwrite.c) trains a small
 * CNN through traind, loader and worker with random crops, flips and
 * per-channel normalisation on the loader: the loss falls and the test
 * accuracy is far above chance. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "imgwrite.h"
#include "proto.h"

static th_daemon g_d;

START_TEST(test_cnn_on_image_folder) {
  const msgpack_object *j, *curve;
  char dir[256], dir2[256], yaml[2048], err[512];
  double acc, first, last;
  td_msg *m = NULL;
  uint64_t id = 0;
  int sock, code = -1;

  ck_assert_int_eq(th_daemon_init(&g_d, "1GiB", NULL, 0), 0);
  snprintf(dir, sizeof(dir), "%s/train", g_d.dir);
  snprintf(dir2, sizeof(dir2), "%s/test", g_d.dir);
  ck_assert_int_eq(imgw_fmnist(TH_FMNIST "/train-images-idx3-ubyte.gz",
                               TH_FMNIST "/train-labels-idx1-ubyte.gz", dir, 3000, 7, 0), 0);
  ck_assert_int_eq(imgw_fmnist(TH_FMNIST "/t10k-images-idx3-ubyte.gz",
                               TH_FMNIST "/t10k-labels-idx1-ubyte.gz", dir2, 1000, 7, 0), 0);
  snprintf(yaml, sizeof(yaml),
           "name: images\n"
           "model:\n"
           "  input: [1, 28, 28]\n"
           "  layers:\n"
           "    - {type: conv2d, filters: 8, kernel: 3, padding: 1}\n"
           "    - {type: relu}\n"
           "    - {type: maxpool2d, kernel: 2}\n"
           "    - {type: flatten}\n"
           "    - {type: dense, units: 10}\n"
           "data:\n"
           "  format: images\n"
           "  train: {images: %s}\n"
           "  test: {images: %s}\n"
           "  augment:\n"
           "    random_crop: {padding: 2}\n"
           "    horizontal_flip: true\n"
           "    normalize: {mean: [0.286], std: [0.353]}\n"
           "train:\n"
           "  batch_size: 32\n"
           "  epochs: 3\n"
           "  seed: 3\n"
           "  optimizer: {type: adam, lr: 0.003}\n",
           dir, dir2);
  ck_assert_msg(strcmp(th_sample_dtype(yaml, "/tmp"), "float32") == 0,
                "normalised samples travel as float32");
  ck_assert_msg(th_daemon_start(&g_d, 10000) == 0, "traind did not start: %s",
                th_log_tail(&g_d));
  sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(sock, 0);
  ck_assert_msg(th_submit(sock, yaml, "k-images", &id, err, sizeof(err)) == 0, "submit: %s",
                err);
  ck_assert_msg(th_wait_state(sock, id, "succeeded", 240000, err, sizeof(err)) == 0,
                "job ended %s: %s", err, th_log_tail(&g_d));
  ck_assert_int_eq(th_rpc_simple(sock, "show", "id", id, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "show: %s", err);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &j), 0);
  ck_assert_int_eq(td_obj_f64(j, "accuracy", &acc), 0);
  ck_assert_int_eq(td_obj_array(j, "loss_curve", &curve), 0);
  ck_assert_uint_ge(curve->via.array.size, 2);
  first = curve->via.array.ptr[0].via.array.ptr[1].via.f64;
  last = curve->via.array.ptr[curve->via.array.size - 1].via.array.ptr[1].via.f64;
  printf("image folder CNN: loss %.4f -> %.4f over %u points, test accuracy %.4f\n", first,
         last, curve->via.array.size, acc);
  /* ten classes: chance is 0.1 and a loss of ln 10 = 2.30 */
  ck_assert_msg(last < 0.7 * first, "the loss went from %g to %g", first, last);
  ck_assert_msg(acc > 0.6, "test accuracy %g", acc);
  td_msg_free(m);
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly: %s",
                th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}
END_TEST

static Suite *images_suite(void) {
  Suite *s = suite_create("images");
  TCase *tc = tcase_create("images");

  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_cnn_on_image_folder);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(images_suite(), 1); }
