/* Integration: token ids through traind, loader and worker (issue #15).  A
 * transformer block (embedding, positional embedding, layernorm, causal
 * attention, dense per position) learns to classify byte-level text stored
 * as raw records, the bytes reaching the embedding as ids, unscaled; the
 * same ids saved as numpy's int64 train to the same bits; and a sample
 * holding an id beyond the vocabulary fails the job with EDATA naming the
 * file, the sample and the position. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define N 512 /* samples */
#define T 16  /* bytes a sample */
#define CLASSES 4

static th_daemon g_d;
static int g_sock = -1;

/* Class c is text over its own four letters ('a' + 4c ...), with some
 * bytes of any letter between. */
static void make_text(uint8_t *ids, uint8_t *labels) {
  uint32_t h = 777;

  for (int i = 0; i < N; i++) {
    int c = (i * 5) % CLASSES;

    labels[i] = (uint8_t)c;
    for (int t = 0; t < T; t++) {
      h = h * 1103515245u + 12345u;
      ids[i * T + t] = (uint8_t)('a' + ((h >> 28) < 11 ? 4 * c + (h >> 24) % 4 : (h >> 20) % 16));
    }
  }
}

static void write_file(const char *name, const void *data, size_t bytes) {
  char path[512];
  FILE *f;

  snprintf(path, sizeof(path), "%s/%s", g_d.dir, name);
  f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(data, 1, bytes, f), bytes);
  ck_assert_int_eq(fclose(f), 0);
}

/* A .npy file (format 1.0): int64 [N, T] samples or uint8 [N] labels. */
static void write_npy(const char *name, const char *descr, int samples, const void *data,
                      size_t bytes) {
  char dict[160];
  uint8_t head[10 + 128], *all;
  size_t hlen;

  snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (%d%s), }",
           descr, N, samples ? ", 16" : ",");
  hlen = (strlen(dict) + 1 + 10 + 63) / 64 * 64 - 10; /* numpy pads the header to 64 */
  ck_assert_uint_le(hlen, 128);
  memcpy(head, "\x93NUMPY\x01\x00", 8);
  head[8] = (uint8_t)hlen;
  head[9] = 0;
  memset(head + 10, ' ', hlen);
  memcpy(head + 10, dict, strlen(dict));
  head[10 + hlen - 1] = '\n';
  all = malloc(10 + hlen + bytes);
  ck_assert_ptr_nonnull(all);
  memcpy(all, head, 10 + hlen);
  memcpy(all + 10 + hlen, data, bytes);
  write_file(name, all, 10 + hlen + bytes);
  free(all);
}

static const char *const model_yaml =
    "model:\n"
    "  input: [16]\n"
    "  layers:\n"
    "    - {type: embedding, vocab: 128, dim: 16}\n"
    "    - {type: pos_embedding}\n"
    "    - {type: layernorm}\n"
    "    - {type: attention, heads: 2, causal: true}\n"
    "    - {type: dense, units: 16}\n"
    "    - {type: gelu}\n"
    "    - {type: flatten}\n"
    "    - {type: dense, units: 4}\n"
    "train:\n"
    "  batch_size: 32\n"
    "  epochs: 4\n"
    "  seed: 3\n"
    "  optimizer: {type: adam, lr: 0.003}\n";

/* Run a job to its end; its accuracy and loss from `show` when it
 * succeeded, its error when it failed. */
static void run_job(const char *data, const char *key, const char *want, double *acc,
                    double *loss, char *error, size_t cap) {
  const msgpack_object *j;
  td_msg *m = NULL;
  char yaml[2048], err[512];
  uint64_t id = 0;
  int code = -1;

  snprintf(yaml, sizeof(yaml), "name: %s\n%s%s", key, model_yaml, data);
  ck_assert_msg(th_submit(g_sock, yaml, key, &id, err, sizeof(err)) == 0, "submit: %s", err);
  ck_assert_msg(th_wait_state(g_sock, id, want, 120000, err, sizeof(err)) == 0,
                "job %s ended %s: %s", key, err, th_log_tail(&g_d));
  if (error != NULL) {
    ck_assert_int_eq(th_show_str(g_sock, id, "error", error, cap), 0);
    return;
  }
  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", id, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "show: %s", err);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &j), 0);
  ck_assert_int_eq(td_obj_f64(j, "accuracy", acc), 0);
  ck_assert_int_eq(td_obj_f64(j, "loss", loss), 0);
  td_msg_free(m);
}

START_TEST(test_text_classes) {
  static uint8_t ids[N * T], labels[N], records[N * (T + 1)];
  static int64_t ids64[N * T];
  char data[1024], error[512];
  double acc8, loss8, acc64, loss64;

  ck_assert_int_eq(th_daemon_init(&g_d, "1GiB", NULL, 0), 0);
  make_text(ids, labels);
  for (int i = 0; i < N; i++) {
    records[i * (T + 1)] = labels[i];
    memcpy(records + i * (T + 1) + 1, ids + i * T, T);
  }
  for (int i = 0; i < N * T; i++)
    ids64[i] = ids[i];
  write_file("text.bin", records, sizeof(records));
  write_npy("ids64.npy", "<i8", 1, ids64, sizeof(ids64));
  write_npy("labels.npy", "|u1", 0, labels, sizeof(labels));
  ids64[37 * T + 9] = 128; /* one past the vocabulary */
  write_npy("bad64.npy", "<i8", 1, ids64, sizeof(ids64));
  ck_assert_msg(th_daemon_start(&g_d, 10000) == 0, "traind did not start: %s",
                th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);

  snprintf(data, sizeof(data),
           "data:\n"
           "  format: raw\n"
           "  train: {features: %s/text.bin}\n"
           "  test: {features: %s/text.bin}\n"
           "  raw: {record_shape: [16], dtype: uint8, label_dtype: uint8, label_offset: 0,\n"
           "        record_bytes: 17}\n",
           g_d.dir, g_d.dir);
  run_job(data, "k-raw", "succeeded", &acc8, &loss8, NULL, 0);
  ck_assert_msg(acc8 > 0.9, "byte-level text: accuracy %f", acc8);

  /* int64 ids become int32 as they are read: the same values, the same run */
  snprintf(data, sizeof(data),
           "data:\n"
           "  format: npy\n"
           "  train: {features: %s/ids64.npy, labels: %s/labels.npy}\n"
           "  test: {features: %s/ids64.npy, labels: %s/labels.npy}\n",
           g_d.dir, g_d.dir, g_d.dir, g_d.dir);
  run_job(data, "k-npy", "succeeded", &acc64, &loss64, NULL, 0);
  ck_assert_msg(acc64 == acc8 && loss64 == loss8, "int64 ids: accuracy %.9g loss %.9g, bytes: "
                "%.9g %.9g", acc64, loss64, acc8, loss8);

  snprintf(data, sizeof(data),
           "data:\n"
           "  format: npy\n"
           "  train: {features: %s/bad64.npy, labels: %s/labels.npy}\n"
           "  test: {features: %s/ids64.npy, labels: %s/labels.npy}\n",
           g_d.dir, g_d.dir, g_d.dir, g_d.dir);
  run_job(data, "k-bad", "failed", NULL, NULL, error, sizeof(error));
  ck_assert_msg(strstr(error, "bad64.npy") != NULL &&
                    strstr(error, "sample at index 37, position 9: token id 128") != NULL,
                "%s", error);

  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly: %s",
                th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}
END_TEST

static Suite *tokens_suite(void) {
  Suite *s = suite_create("tokens");
  TCase *tc = tcase_create("tokens");

  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_text_classes);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(tokens_suite(), 0); }
