/* Integration: samples of any stored type (issue #6).  A job on a float32
 * .npy dataset runs through traind, loader and worker end to end, and
 * trains as the same values stored as uint8 pixels do (float32 x / 255
 * with normalisation's scale 1 against uint8 x with scale 1/255).  The
 * same values saved as numpy's defaults, float64 samples and int64 labels,
 * are read as float32 and class bytes and train to the same bits. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define N 512   /* samples */
#define SIDE 8  /* 8x8 inputs */
#define CLASSES 4

static th_daemon g_d;
static int g_sock = -1;

/* A .npy file (format 1.0) of rank 1 or 2 + [SIDE, SIDE]. */
static void write_npy(const char *path, const char *descr, int images, const void *data,
                      size_t bytes) {
  char dict[160];
  uint8_t head[10 + 128];
  size_t hlen;
  FILE *f;

  snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (%d%s), }",
           descr, N, images ? ", 8, 8" : ",");
  hlen = (strlen(dict) + 1 + 10 + 63) / 64 * 64 - 10; /* numpy pads the header to 64 */
  ck_assert_uint_le(hlen, 128);
  memcpy(head, "\x93NUMPY\x01\x00", 8);
  head[8] = (uint8_t)hlen;
  head[9] = 0;
  memset(head + 10, ' ', hlen);
  memcpy(head + 10, dict, strlen(dict));
  head[10 + hlen - 1] = '\n';
  f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(head, 1, 10 + hlen, f), 10 + hlen);
  ck_assert_uint_eq(fwrite(data, 1, bytes, f), bytes);
  ck_assert_int_eq(fclose(f), 0);
}

/* Class c lights the c-th quarter of the rows; the rest is noise. */
static void make_data(uint8_t *px, float *fx, uint8_t *labels) {
  uint32_t h = 12345;

  for (int i = 0; i < N; i++) {
    int c = (i * 7) % CLASSES;

    labels[i] = (uint8_t)c;
    for (int e = 0; e < SIDE * SIDE; e++) {
      int row = e / SIDE;

      h = h * 1103515245u + 12345u;
      px[i * SIDE * SIDE + e] =
          (uint8_t)(row / (SIDE / CLASSES) == c ? 160 + (h >> 26) : (h >> 25));
      fx[i * SIDE * SIDE + e] = (float)px[i * SIDE * SIDE + e] / 255.0f;
    }
  }
}

static void job_yaml(char *buf, size_t cap, const char *name, const char *x, const char *y) {
  snprintf(buf, cap,
           "name: %s\n"
           "model:\n"
           "  input: [8, 8]\n"
           "  layers:\n"
           "    - {type: dense, units: 16}\n"
           "    - {type: relu}\n"
           "    - {type: dense, units: 4}\n"
           "data:\n"
           "  format: npy\n"
           "  train: {images: %s/%s, labels: %s/%s}\n"
           "  test: {images: %s/%s, labels: %s/%s}\n"
           "  normalize: {mean: 0.3, std: 0.3}\n"
           "train:\n"
           "  batch_size: 32\n"
           "  epochs: 3\n"
           "  seed: 5\n"
           "  optimizer: {type: sgd, lr: 0.1}\n",
           name, g_d.dir, x, g_d.dir, y, g_d.dir, x, g_d.dir, y);
}

/* Run a job to success; its accuracy and loss from `show`. */
static void run_job(const char *yaml, const char *key, double *acc, double *loss) {
  const msgpack_object *j;
  td_msg *m = NULL;
  char err[512];
  uint64_t id = 0;
  int code = -1;

  ck_assert_msg(th_submit(g_sock, yaml, key, &id, err, sizeof(err)) == 0, "submit: %s", err);
  ck_assert_msg(th_wait_state(g_sock, id, "succeeded", 120000, err, sizeof(err)) == 0,
                "job %s ended %s: %s", key, err, th_log_tail(&g_d));
  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "show: %s", err);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &j), 0);
  ck_assert_int_eq(td_obj_f64(j, "accuracy", acc), 0);
  ck_assert_int_eq(td_obj_f64(j, "loss", loss), 0);
  td_msg_free(m);
}

START_TEST(test_float32_npy) {
  static uint8_t px[N * SIDE * SIDE], labels[N];
  static float fx[N * SIDE * SIDE];
  static double dx[N * SIDE * SIDE];
  static int64_t labels64[N];
  char path[256], yaml[2048];
  double acc8, loss8, acc32, loss32, acc64, loss64;

  ck_assert_int_eq(th_daemon_init(&g_d, "1GiB", NULL, 0), 0);
  make_data(px, fx, labels);
  snprintf(path, sizeof(path), "%s/x8.npy", g_d.dir);
  write_npy(path, "|u1", 1, px, sizeof(px));
  snprintf(path, sizeof(path), "%s/x32.npy", g_d.dir);
  write_npy(path, "<f4", 1, fx, sizeof(fx));
  snprintf(path, sizeof(path), "%s/y.npy", g_d.dir);
  write_npy(path, "|u1", 0, labels, sizeof(labels));
  for (int i = 0; i < N * SIDE * SIDE; i++) {
    dx[i] = (double)px[i] / 255.0;
    ck_assert((float)dx[i] == fx[i]); /* the loader's conversion gives x32.npy's values */
  }
  for (int i = 0; i < N; i++)
    labels64[i] = labels[i];
  snprintf(path, sizeof(path), "%s/x64.npy", g_d.dir);
  write_npy(path, "<f8", 1, dx, sizeof(dx));
  snprintf(path, sizeof(path), "%s/y64.npy", g_d.dir);
  write_npy(path, "<i8", 0, labels64, sizeof(labels64));
  ck_assert_msg(th_daemon_start(&g_d, 10000) == 0, "traind did not start: %s",
                th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);

  job_yaml(yaml, sizeof(yaml), "f32", "x32.npy", "y.npy");
  run_job(yaml, "k-f32", &acc32, &loss32);
  job_yaml(yaml, sizeof(yaml), "u8", "x8.npy", "y.npy");
  run_job(yaml, "k-u8", &acc8, &loss8);
  job_yaml(yaml, sizeof(yaml), "f64", "x64.npy", "y64.npy");
  run_job(yaml, "k-f64", &acc64, &loss64);
  ck_assert_msg(acc32 > 0.9, "float32 accuracy %f", acc32);
  ck_assert_double_eq_tol(acc32, acc8, 1e-6);
  ck_assert_double_eq_tol(loss32, loss8, 1e-4);
  /* The same float32 samples and labels after conversion: the same run. */
  ck_assert_msg(acc64 == acc32 && loss64 == loss32, "float64: accuracy %.9g loss %.9g, "
                "float32: %.9g %.9g", acc64, loss64, acc32, loss32);

  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly: %s",
                th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}
END_TEST

static Suite *dtypes_suite(void) {
  Suite *s = suite_create("dtypes");
  TCase *tc = tcase_create("dtypes");

  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_float32_npy);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(dtypes_suite(), 0); }
