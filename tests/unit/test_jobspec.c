#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "jobspec.h"

/* Line numbers below refer to this text. */
#define MIN_JOB                                 \
  "model:\n"                                    \
  "  input: [4]\n"                              \
  "  layers:\n"                                 \
  "    - {type: dense, units: 3}\n"             \
  "data:\n"                                     \
  "  train: {images: tr-i, labels: tr-l}\n"     \
  "  test: {images: /abs/te-i, labels: te-l}\n" \
  "train:\n"                                    \
  "  batch_size: 8\n"                           \
  "  epochs: 1\n"                               \
  "  optimizer: {type: sgd, lr: 0.1}\n"

static char buf[1 << 16];

/* base with the first occurrence of from replaced by to. */
static const char *replaced(const char *base, const char *from, const char *to) {
  const char *at = strstr(base, from);

  ck_assert_msg(at != NULL, "'%s' not in the job", from);
  snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
  return buf;
}

static const char *job_with(const char *from, const char *to) {
  return replaced(MIN_JOB, from, to);
}

static int parse_len(const char *text, size_t len, const char *base, td_jobspec *s, char *err,
                     size_t cap) {
  return td_jobspec_parse(text, len, base, s, err, cap);
}

/* Fails with TD_EJOBSPEC, err holds each needle, out is left alone. */
static void expect_err_len(const char *text, size_t len, const char *n1, const char *n2) {
  td_jobspec *s = malloc(sizeof(*s)), *copy = malloc(sizeof(*copy));
  char err[512] = "";
  int rc;

  ck_assert_ptr_nonnull(s);
  ck_assert_ptr_nonnull(copy);
  memset(s, 0x5A, sizeof(*s));
  memcpy(copy, s, sizeof(*s));
  rc = parse_len(text, len, "/base", s, err, sizeof(err));
  ck_assert_msg(rc == TD_EJOBSPEC, "rc %s, err '%s'", td_err_name(rc), err);
  if (n1 != NULL && strncmp(n1, "line ", 5) == 0) {
    size_t k = strlen(n1); /* "line 1" must not match "line 10:" */
    ck_assert_msg(strncmp(err, n1, k) == 0 && (err[k] == ':' || n1[k - 1] == ' '),
                  "'%s' does not start with '%s:'", err, n1);
  } else {
    ck_assert_msg(n1 == NULL || strstr(err, n1) != NULL, "'%s' not in '%s'", n1, err);
  }
  ck_assert_msg(n2 == NULL || strstr(err, n2) != NULL, "'%s' not in '%s'", n2, err);
  ck_assert_msg(memcmp(s, copy, sizeof(*s)) == 0, "out written on failure");
  free(s);
  free(copy);
}

static void expect_err(const char *text, const char *n1, const char *n2) {
  expect_err_len(text, strlen(text), n1, n2);
}

static void expect_exact(const char *text, const char *msg) {
  td_jobspec s;
  char err[512] = "";

  ck_assert_int_eq(td_jobspec_parse(text, strlen(text), NULL, &s, err, sizeof(err)), TD_EJOBSPEC);
  ck_assert_str_eq(err, msg);
}

static void expect_ok(const char *text, const char *base, td_jobspec *s) {
  char err[512] = "";
  int rc = td_jobspec_parse(text, strlen(text), base, s, err, sizeof(err));

  ck_assert_msg(rc == 0, "rc %s, err '%s'", td_err_name(rc), err);
}

START_TEST(example_parses) {
  const char *root = getenv("TD_SOURCE_ROOT");
  char path[PATH_MAX], dir[PATH_MAX], want[PATH_MAX + 64], err[512] = "";
  td_jobspec s;
  int rc;

  snprintf(path, sizeof(path), "%s/examples/fashion-mnist-mlp.yaml", root ? root : ".");
  snprintf(dir, sizeof(dir), "%s/examples", root ? root : ".");
  ck_assert_ptr_nonnull(realpath(dir, want));
  strcat(want, "/fashion-mnist-mlp.safetensors");

  rc = td_jobspec_load(path, &s, err, sizeof(err));
  ck_assert_msg(rc == 0, "%s: %s", td_err_name(rc), err);
  ck_assert_str_eq(s.name, "fashion-mnist-mlp");
  ck_assert_int_eq(s.input_rank, 2);
  ck_assert_uint_eq(s.input_dims[0], 28);
  ck_assert_uint_eq(s.input_dims[1], 28);
  ck_assert_uint_eq(td_jobspec_input_elems(&s), 784);
  ck_assert_int_eq(s.nlayers, 5);
  ck_assert_int_eq(s.layers[0].type, TD_LAYER_DENSE);
  ck_assert_uint_eq(s.layers[0].units, 512);
  ck_assert_int_eq(s.layers[0].line, 8);
  ck_assert_int_eq(s.layers[1].type, TD_LAYER_RELU);
  ck_assert_uint_eq(s.layers[1].units, 0);
  ck_assert_uint_eq(s.layers[2].units, 256);
  ck_assert_int_eq(s.layers[3].type, TD_LAYER_RELU);
  ck_assert_int_eq(s.layers[4].type, TD_LAYER_DENSE);
  ck_assert_uint_eq(s.layers[4].units, 10);
  ck_assert_uint_eq(td_jobspec_classes(&s), 10);
  ck_assert_int_eq(s.format, TD_DATA_IDX);
  ck_assert_str_eq(s.train.images, "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
  ck_assert_str_eq(s.train.labels, "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz");
  ck_assert_uint_eq(s.train.limit, 0);
  ck_assert_str_eq(s.test.images, "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
  ck_assert_str_eq(s.test.labels, "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz");
  ck_assert_float_eq(s.norm_mean, 0.2860f);
  ck_assert_float_eq(s.norm_std, 0.3530f);
  ck_assert_uint_eq(s.batch_size, 128);
  ck_assert_uint_eq(s.epochs, 5);
  ck_assert_uint_eq(s.seed, 42);
  ck_assert_int_eq(s.opt.kind, TD_OPT_ADAM);
  ck_assert_float_eq(s.opt.lr, 0.001f);
  ck_assert_float_eq(s.opt.beta1, 0.9f);
  ck_assert_float_eq(s.opt.beta2, 0.999f);
  ck_assert_float_eq(s.opt.eps, 1e-8f);
  ck_assert_float_eq(s.opt.momentum, 0.0f);
  ck_assert_float_eq(s.opt.weight_decay, 0.0f);
  ck_assert_int_eq(s.precision, TD_PREC_FP32);
  ck_assert_uint_eq(s.min_micro_batch, 1);
  ck_assert_int_eq(s.priority, 0);
  ck_assert_str_eq(s.device, "");
  ck_assert_str_eq(s.output, want);
}
END_TEST

START_TEST(defaults) {
  td_jobspec s;

  expect_ok(MIN_JOB, NULL, &s);
  ck_assert_str_eq(s.name, "job");
  ck_assert_int_eq(s.input_rank, 1);
  ck_assert_uint_eq(s.input_dims[0], 4);
  ck_assert_int_eq(s.nlayers, 1);
  ck_assert_int_eq(s.layers[0].line, 4);
  ck_assert_str_eq(s.train.images, "tr-i"); /* no base dir: kept as written */
  ck_assert_float_eq(s.norm_mean, 0.0f);
  ck_assert_float_eq(s.norm_std, 1.0f);
  ck_assert_uint_eq(s.seed, 0);
  ck_assert_int_eq(s.opt.kind, TD_OPT_SGD);
  ck_assert_float_eq(s.opt.lr, 0.1f);
  ck_assert_float_eq(s.opt.beta1, 0.9f);
  ck_assert_float_eq(s.opt.beta2, 0.999f);
  ck_assert_float_eq(s.opt.eps, 1e-8f);
  ck_assert_float_eq(s.opt.momentum, 0.0f);
  ck_assert_int_eq(s.precision, TD_PREC_FP32);
  ck_assert_uint_eq(s.min_micro_batch, 1);
  ck_assert_int_eq(s.priority, 0);
  ck_assert_str_eq(s.device, "");
  ck_assert_str_eq(s.output, "");
  ck_assert_uint_eq(s.tb_every_steps, 10);
  ck_assert_uint_eq(td_jobspec_classes(&s), 3);
}
END_TEST

START_TEST(other_values) {
  td_jobspec s;

  expect_ok(job_with("train:\n", "name: run-2.b_c\npriority: -1000\ndevice: cuda12\n"
                                 "memory:\n  min_micro_batch: 8\ntrain:\n  seed: 18446744073709551615\n"),
            NULL, &s);
  ck_assert_str_eq(s.name, "run-2.b_c");
  ck_assert_int_eq(s.priority, -1000);
  ck_assert_str_eq(s.device, "cuda12");
  ck_assert_uint_eq(s.min_micro_batch, 8);
  ck_assert_uint_eq(s.seed, UINT64_MAX);

  expect_ok(job_with("    - {type: dense, units: 3}\n",
                     "    - type: dense\n      units: 65536\n    - {type: relu}\n"
                     "    - {type: relu}\n    - {type: dense, units: 2}\n"),
            NULL, &s);
  ck_assert_int_eq(s.nlayers, 4);
  ck_assert_uint_eq(s.layers[0].units, 65536);
  ck_assert_int_eq(s.layers[3].line, 8);
  ck_assert_uint_eq(td_jobspec_classes(&s), 2);

  expect_ok(job_with("{type: sgd, lr: 0.1}", "{type: sgd, lr: 10, momentum: 0.9, beta1: 0.9}"),
            NULL, &s);
  ck_assert_float_eq(s.opt.lr, 10.0f);
  ck_assert_float_eq(s.opt.momentum, 0.9f);

  expect_ok(job_with("[4]", "[1, 16777216]"), NULL, &s);
  ck_assert_uint_eq(td_jobspec_input_elems(&s), 1u << 24);

  /* TensorBoard's scalars every step, or no event files at all */
  expect_ok(job_with("train:\n", "tensorboard: {every_steps: 1}\ntrain:\n"), NULL, &s);
  ck_assert_uint_eq(s.tb_every_steps, 1);
  expect_ok(job_with("train:\n", "tensorboard:\n  every_steps: 0\ntrain:\n"), NULL, &s);
  ck_assert_uint_eq(s.tb_every_steps, 0);

  /* an empty optional section means its defaults */
  expect_ok(job_with("train:\n", "memory:\ntrain:\n"), NULL, &s);
  ck_assert_uint_eq(s.min_micro_batch, 1);
}
END_TEST

START_TEST(relative_paths) {
  td_jobspec s;

  expect_ok(job_with("train:\n", "output: out/m.safetensors\ntrain:\n"), "/base/dir", &s);
  ck_assert_str_eq(s.train.images, "/base/dir/tr-i");
  ck_assert_str_eq(s.train.labels, "/base/dir/tr-l");
  ck_assert_str_eq(s.test.images, "/abs/te-i");
  ck_assert_str_eq(s.test.labels, "/base/dir/te-l");
  ck_assert_str_eq(s.output, "/base/dir/out/m.safetensors");

  expect_ok(MIN_JOB, "/", &s);
  ck_assert_str_eq(s.train.images, "/tr-i");
}
END_TEST

/* Weights in: init resolves beside the job file; trainable: false only on
 * layers with parameters, and not on all of them. */
START_TEST(weights_keys) {
  td_jobspec s;

  expect_ok(job_with("train:\n", "init: m/first.safetensors\ntrain:\n"), "/base", &s);
  ck_assert_str_eq(s.init, "/base/m/first.safetensors");
  ck_assert_int_eq(s.layers[0].frozen, 0);
  expect_ok(job_with("units: 3}", "units: 3, trainable: false}\n    - {type: relu}\n"
                     "    - {type: dense, units: 2, trainable: true}"), "/", &s);
  ck_assert_int_eq(s.layers[0].frozen, 1);
  ck_assert_int_eq(s.layers[2].frozen, 0);
  expect_err(job_with("units: 3}", "units: 3}\n    - {type: relu, trainable: false}\n"
                      "    - {type: dense, units: 2}"), "line 5",
             "'model.layers[1]': a relu layer has no parameters to freeze; 'trainable' "
             "applies to layers that have them");
  expect_err(job_with("units: 3}", "units: 3, trainable: false}"), "line 3",
             "'model.layers': every layer with parameters has trainable: false");
  expect_err(job_with("train:\n", "init: ''\ntrain:\n"), "line 8", "'init': must not be empty");
}
END_TEST

START_TEST(relative_path_too_long) {
  char base[TD_PATH_MAX];

  memset(base, 'd', sizeof(base) - 4); /* 1020 bytes + "/tr-i" > 1023 */
  base[0] = '/';
  base[sizeof(base) - 4] = '\0';
  td_jobspec s;
  char err[512];
  ck_assert_int_eq(td_jobspec_parse(MIN_JOB, strlen(MIN_JOB), base, &s, err, sizeof(err)),
                   TD_EJOBSPEC);
  ck_assert_str_eq(err, "line 6: key 'data.train.images': the path is longer than 1023 bytes "
                        "once made absolute");
}
END_TEST

START_TEST(unknown_key) {
  expect_exact(job_with("batch_size", "bach_size"),
               "line 9: unknown key 'train.bach_size' (did you mean 'batch_size'?)");
  expect_exact(job_with("train:\n", "colour: blue\ntrain:\n"), "line 8: unknown key 'colour'");
  expect_err(job_with("units: 3}", "units: 3, bias: true}"), "line 4",
             "unknown key 'model.layers[0].bias'");
}
END_TEST

START_TEST(wrong_type) {
  expect_exact(job_with("epochs: 1", "epochs: five"),
               "line 10: key 'train.epochs': expected an integer, got 'five'");
  expect_err(job_with("epochs: 1", "epochs: 1.5"), "line 10", "expected an integer, got '1.5'");
  expect_err(job_with("epochs: 1", "epochs: 1e3"), "line 10", "'train.epochs': expected an integer");
  expect_err(job_with("epochs: 1", "epochs: 12abc"), "line 10", "'train.epochs': expected an integer");
  expect_err(job_with("epochs: 1", "epochs: 0x10"), "line 10", "'train.epochs': expected an integer");
  expect_err(job_with("epochs: 1", "epochs: \"5\""), "line 10", "(a quoted string)");
  expect_err(job_with("epochs: 1", "epochs:"), "line 10", "expected an integer, got nothing");
  expect_err(job_with("epochs: 1", "epochs: [1]"), "line 10", "expected an integer, got a sequence");
  expect_err(job_with("lr: 0.1", "lr: fast"), "line 11", "'train.optimizer.lr': expected a number");
  expect_err(job_with("lr: 0.1", "lr: .inf"), "line 11", "'train.optimizer.lr': expected a number");
  expect_err(job_with("lr: 0.1", "lr: nan"), "line 11", "'train.optimizer.lr': expected a number");
  expect_err(job_with("lr: 0.1", "lr: 1e999"), "line 11", "'train.optimizer.lr': must be in (0, 10]");
  expect_err(job_with("images: tr-i", "images: {a: 1}"), "line 6",
             "key 'data.train.images': expected a string, got a map");
  expect_err(job_with("[4]", "4"), "line 2", "key 'model.input': expected a sequence, got '4'");
  expect_err(job_with("[4]", "[-4]"), "line 2", "key 'model.input[0]': must be between 1 and");
}
END_TEST

START_TEST(out_of_range) {
  expect_exact(job_with("batch_size: 8", "batch_size: 0"),
               "line 9: key 'train.batch_size': must be between 1 and 65536, got 0");
  expect_err(job_with("batch_size: 8", "batch_size: 65537"), "line 9", "'train.batch_size'");
  expect_err(job_with("epochs: 1", "epochs: 10001"), "line 10", "between 1 and 10000");
  expect_exact(job_with("lr: 0.1", "lr: 0"),
               "line 11: key 'train.optimizer.lr': must be in (0, 10], got 0");
  expect_err(job_with("lr: 0.1", "lr: 10.5"), "line 11", "(0, 10]");
  expect_err(job_with("lr: 0.1", "lr: 0.1, momentum: 1"), "line 11", "'train.optimizer.momentum'");
  expect_err(job_with("lr: 0.1", "lr: 0.1, weight_decay: -0.1"), "line 11", "[0, 1]");
  expect_err(job_with("units: 3", "units: 65537"), "line 4", "'model.layers[0].units'");
  expect_err(job_with("train:\n", "priority: 1001\ntrain:\n"), "line 8", "'priority'");
  expect_err(job_with("train:\n", "data2: 1\ntrain:\n"), "line 8", "unknown key 'data2'");
  expect_err(job_with("labels: tr-l}", "labels: tr-l, limit: -1}"), "line 6",
             "'data.train.limit'");
  expect_err(job_with("train:\n", "memory: {min_micro_batch: 0}\ntrain:\n"), "line 8",
             "'memory.min_micro_batch'");
  expect_err(job_with("data:\n", "data:\n  normalize: {std: 0}\n"), "line 6",
             "'data.normalize.std': must be in (0, ");
  expect_err(job_with("[4]", "[1, 1, 1, 1, 1]"), "line 2",
             "key 'model.input': must have between 1 and 4 entries, got 5");
  expect_err(job_with("[4]", "[]"), "line 2", "between 1 and 4 entries, got 0");
  expect_err(job_with("[4]", "[4096, 4097]"), "line 2",
             "key 'model.input': a sample of 16781312 elements is more than");
  expect_err(job_with("train:\n", "name: a/b\ntrain:\n"), "line 8", "'name': may hold only");
  expect_err(job_with("train:\n", "name: ..\ntrain:\n"), "line 8", "'name'");
  expect_err(job_with("train:\n", "name: \"\"\ntrain:\n"), "line 8", "'name': must not be empty");
  expect_err(job_with("train:\n",
                      "name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
                      "train:\n"),
             "line 8", "'name': must be at most 63 bytes");
  expect_err(job_with("train:\n", "device: gpu0\ntrain:\n"), "line 8", "'device'");
  expect_err(job_with("train:\n", "device: cuda123\ntrain:\n"), "line 8", "'device'");
  expect_err(job_with("train:\n", "memory: {precision: fp8}\ntrain:\n"), "line 8",
             "'memory.precision': must be one of fp32, bf16, fp16; got 'fp8'");
  expect_err(job_with("data:\n", "data:\n  format: parquet\n"), "line 6", "'data.format'");
  expect_err(job_with("train:\n", "tensorboard: {every_steps: -1}\ntrain:\n"), "line 8",
             "'tensorboard.every_steps'");
  expect_exact(job_with("train:\n", "tensorboard: {every_steps: 1000001}\ntrain:\n"),
               "line 8: key 'tensorboard.every_steps': must be between 0 and 1000000, got 1000001");
  expect_err(job_with("train:\n", "tensorboard: {every: 5}\ntrain:\n"), "line 8",
             "unknown key 'tensorboard.every'");
}
END_TEST

START_TEST(integer_overflow) {
  expect_err(job_with("train:\n", "train:\n  seed: 18446744073709551616\n"), "line 9",
             "'train.seed': must be between 0 and 18446744073709551615, got 18446744073709551616");
  expect_err(job_with("batch_size: 8", "batch_size: 99999999999999999999999999"), "line 9",
             "'train.batch_size': must be between 1 and 65536, got 9999");
  expect_err(job_with("train:\n", "priority: -9223372036854775809\ntrain:\n"), "line 8",
             "'priority': must be between -1000 and 1000");
  expect_err(job_with("train:\n", "priority: -9223372036854775808\ntrain:\n"), "line 8",
             "'priority': must be between -1000 and 1000");
  expect_err(job_with("train:\n", "train:\n  seed: -1\n"), "line 9", "'train.seed': expected an integer");
  expect_err(job_with("labels: tr-l}", "labels: tr-l, limit: 4294967296}"), "line 6",
             "'data.train.limit': must be between 0 and 4294967295");
}
END_TEST

START_TEST(missing_required) {
  expect_exact(job_with("images: tr-i, ", ""),
               "line 6: key 'data.train.images' is required (the samples' file; 'features' is "
               "its other name)");
  expect_err(job_with("  test: {images: /abs/te-i, labels: te-l}\n", ""), "line 5",
             "key 'data.test' is required");
  expect_err(job_with("  batch_size: 8\n", ""), "line 8", "key 'train.batch_size' is required");
  expect_err(job_with("{type: sgd, lr: 0.1}", "{lr: 0.1}"), "line 11",
             "key 'train.optimizer.type' is required");
  expect_err(job_with("type: dense, ", ""), "line 4", "key 'model.layers[0].type' is required");
  expect_err(job_with("model:\n  input: [4]\n  layers:\n    - {type: dense, units: 3}\n", ""),
             "line 1", "key 'model' is required");
  expect_err(job_with("dense, units: 3", "dense"), "line 4",
             "key 'model.layers[0]': a dense layer needs 'units'");
  expect_err(job_with("images: tr-i", "images: \"\""), "line 6",
             "'data.train.images': must not be empty");
}
END_TEST

START_TEST(layer_rules) {
  expect_exact(job_with("units: 3}", "units: 3}\n    - {type: conv}"),
               "line 5: key 'model.layers[1].type': must be one of dense, relu, conv2d, "
               "maxpool2d, avgpool2d, gelu, dropout, flatten, batchnorm2d, layernorm, sigmoid, "
               "tanh, softmax, global_avg_pool, conv1d, add, concat, embedding, pos_embedding, "
               "attention; got 'conv'");
  expect_exact(job_with("units: 3}", "units: 3}\n    - {type: relu}"),
               "line 5: key 'model.layers[1]': the last layer must be dense (it gives the class "
               "scores), got relu");
  expect_err(job_with("    - {type: dense", "    - {type: relu}\n    - {type: dense"), "line 4",
             "'model.layers[0]': the first layer must not be relu");
  expect_err(job_with("units: 3}", "units: 3}\n    - {type: relu, units: 4}\n    - {type: dense, units: 2}"),
             "line 5", "'model.layers[1]': a relu layer has no 'units'");
  expect_err(job_with("layers:\n    - {type: dense, units: 3}\n", "layers: []\n"), "line 3",
             "'model.layers': must have between 1 and 64 entries, got 0");
  expect_err(job_with("layers:\n    - {type: dense, units: 3}\n", "layers:\n"), "line 3",
             "'model.layers': must have between 1 and 64 entries, got 0");
  expect_err(job_with("    - {type: dense, units: 3}", "    - dense"), "line 4",
             "key 'model.layers[0]': expected a map, got 'dense'");
}
END_TEST

START_TEST(too_many_layers) {
  char text[8192];
  size_t n = 0;

  n += (size_t)snprintf(text + n, sizeof(text) - n, "model:\n  input: [4]\n  layers:\n");
  for (int i = 0; i < 65; i++)
    n += (size_t)snprintf(text + n, sizeof(text) - n, "    - {type: dense, units: 3}\n");
  snprintf(text + n, sizeof(text) - n, "%s", strstr(MIN_JOB, "data:"));
  expect_err(text, "line 3", "'model.layers': must have between 1 and 64 entries, got 65");
}
END_TEST

START_TEST(cross_key_rules) {
  expect_exact(job_with("train:\n", "memory: {min_micro_batch: 9}\ntrain:\n"),
               "line 8: key 'memory.min_micro_batch': must not exceed train.batch_size (8), got 9");
  expect_err(job_with("{type: sgd, lr: 0.1}", "{type: sgd, lr: 0.1, beta2: 0.5}"), "line 11",
             "key 'train.optimizer': 'beta2' applies only to adam");
  expect_err(job_with("{type: sgd, lr: 0.1}", "{type: adam, lr: 0.1, momentum: 0.5}"), "line 11",
             "'momentum' applies only to sgd");
}
END_TEST

START_TEST(aliases_anchors) {
  expect_exact(job_with("[4]", "&dims [4]"), "line 2: YAML aliases/anchors are not allowed");
  expect_exact(job_with("epochs: 1", "epochs: *n"), "line 10: YAML aliases/anchors are not allowed");
  expect_err(job_with("epochs: 1", "epochs: &n 1"), "line 10", "anchors are not allowed");
  expect_err(job_with("epochs: 1", "epochs: !!int 1"), "line 10", "YAML tags are not allowed");
  expect_err(job_with("epochs: 1", "epochs: !custom 1"), "line 10", "YAML tags are not allowed");
}
END_TEST

START_TEST(deep_nesting) {
  char text[1100];

  memset(text, '[', 1000);
  text[1000] = '\0';
  expect_err(text, "line 1", "nested deeper than 32 levels");
  /* a legal but deep shape inside a key */
  expect_err(job_with("epochs: 1", "epochs: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"),
             "line 10", "nested deeper than 32 levels");
}
END_TEST

START_TEST(duplicate_keys) {
  expect_exact(job_with("  epochs: 1\n", "  epochs: 1\n  epochs: 2\n"),
               "line 11: duplicate key 'epochs' (first at line 10)");
  expect_err(job_with("units: 3}", "units: 3, type: relu}"), "line 4", "duplicate key 'type'");
}
END_TEST

START_TEST(bad_utf8) {
  expect_err(job_with("train:\n", "name: caf\xc3\x28\ntrain:\n"), "line 8: ", "UTF-8");
  expect_err(job_with("train:\n", "name: \xff\xfe\ntrain:\n"), "line 8: ", "UTF-8");
  /* a surrogate escape would decode to invalid UTF-8 */
  expect_err(job_with("train:\n", "name: \"\\ud800\"\ntrain:\n"), "line 8: ", "Unicode");
}
END_TEST

START_TEST(embedded_nul) {
  const char *t = job_with("train:\n", "name: \"a\\0b\"\ntrain:\n");

  expect_err(t, "line 8", "NUL character in a value");
  t = job_with("train:\n", "name: aXb\ntrain:\n");
  char raw[1024];
  size_t len = strlen(t);
  memcpy(raw, t, len + 1);
  *strchr(raw, 'X') = '\0';
  expect_err_len(raw, len, "line 8", "NUL byte in the input");
}
END_TEST

START_TEST(empty_and_not_a_map) {
  expect_exact("", "line 1: the job file is empty (see examples/README.md)");
  expect_err("# only a comment\n\n", "line 1", "the job file is empty");
  expect_err("---\n...\n", "line 1", "the job file is empty");
  expect_exact("- model\n- data\n", "line 1: the job file must be a map of keys, got a sequence");
  expect_err("just text\n", "line 1", "must be a map of keys, got 'just text'");
  expect_exact(job_with("data:\n  train: {images: tr-i, labels: tr-l}\n"
                        "  test: {images: /abs/te-i, labels: te-l}\n",
                        "data: [1, 2]\n"),
               "line 5: key 'data': expected a map, got a sequence");
  expect_err(job_with("  train: {images: tr-i, labels: tr-l}", "  train: [tr-i, tr-l]"), "line 6",
             "key 'data.train': expected a map, got a sequence");
}
END_TEST

START_TEST(yaml_syntax) {
  expect_exact(job_with("  epochs: 1\n", "  epochs: 1\n   oops: [\n"),
               "line 11: mapping values are not allowed in this context");
  expect_exact(job_with("  epochs: 1\n", "  epochs: [1, 2\n"),
               "line 11: did not find expected ',' or ']' (while parsing a flow sequence at line 10)");
  expect_exact(job_with("  epochs: 1\n", "  {a: 1}: 2\n"),
               "line 10: a key must be a plain string, not a map or sequence");
  expect_exact("a: 1\n---\nb: 2\n", "line 2: only one YAML document is allowed");
  expect_err(job_with("  epochs: 1\n", "\tepochs: 1\n"), "line 10: ", "tab");
}
END_TEST

START_TEST(limits) {
  static char big[TD_JOBFILE_MAX + 16];
  char err[256];
  td_jobspec s;
  size_t n;

  /* node count: a flat sequence of 100001 items */
  n = (size_t)snprintf(big, sizeof(big), "model:\n  input: [");
  for (int i = 0; i < 100001; i++)
    big[n++] = '1', big[n++] = ',';
  memcpy(big + n - 1, "]\n", 3);
  expect_err(big, "line 2", "more than 100000 YAML nodes");

  /* one value over the scalar limit */
  n = (size_t)snprintf(big, sizeof(big), "name: ");
  memset(big + n, 'a', 5000);
  strcpy(big + n + 5000, "\n");
  expect_err(big, "line 1", "longer than 4096 bytes");

  /* the whole input over 1 MiB */
  memset(big, ' ', TD_JOBFILE_MAX + 1);
  ck_assert_int_eq(td_jobspec_parse(big, TD_JOBFILE_MAX + 1, NULL, &s, err, sizeof(err)),
                   TD_ETOOBIG);
  ck_assert_ptr_nonnull(strstr(err, "more than the limit"));
}
END_TEST

START_TEST(load_errors) {
  char err[512];
  td_jobspec s;

  ck_assert_int_eq(td_jobspec_load("/nonexistent/job.yaml", &s, err, sizeof(err)), TD_ENOENT);
  ck_assert_str_eq(err, "cannot read job file '/nonexistent/job.yaml': No such file");
  ck_assert_int_eq(td_jobspec_load("/", &s, err, sizeof(err)), TD_EIO);
  ck_assert_ptr_nonnull(strstr(err, "cannot read job file '/'"));
}
END_TEST

START_TEST(load_resolves_against_file_dir) {
  char dir[] = "/tmp/td_jobspec_XXXXXX", path[128], real[PATH_MAX], want[PATH_MAX + 16], err[512];
  td_jobspec s;
  FILE *f;

  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/job.yaml", dir);
  f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(MIN_JOB, f);
  fclose(f);
  ck_assert_ptr_nonnull(realpath(dir, real));
  ck_assert_int_eq(td_jobspec_load(path, &s, err, sizeof(err)), 0);
  snprintf(want, sizeof(want), "%s/tr-i", real);
  ck_assert_str_eq(s.train.images, want);
  ck_assert_str_eq(s.test.images, "/abs/te-i");
  unlink(path);
  rmdir(dir);
}
END_TEST

START_TEST(names) {
  ck_assert_str_eq(td_precision_name(TD_PREC_FP32), "fp32");
  ck_assert_str_eq(td_layer_type_name(TD_LAYER_DENSE), "dense");
  ck_assert_str_eq(td_layer_type_name(TD_LAYER_RELU), "relu");
  ck_assert_str_eq(td_layer_type_name((td_layer_type)99), "unknown");
}
END_TEST

START_TEST(memory_remedies) {
  td_jobspec s;

  /* absent: accumulate; min micro-batch as written */
  expect_ok(MIN_JOB, NULL, &s);
  ck_assert_int_eq(s.nremedies, 1);
  ck_assert(td_jobspec_allows(&s, TD_REMEDY_ACCUMULATE));
  ck_assert_uint_eq(td_jobspec_min_micro_batch(&s), 1);
  ck_assert_uint_eq(s.fail_alloc, 0);
  /* empty: nothing allowed, the whole batch is the minimum */
  expect_ok(job_with("train:\n", "memory: {remedies: [], min_micro_batch: 2}\ntrain:\n"), NULL,
            &s);
  ck_assert_int_eq(s.nremedies, 0);
  ck_assert(!td_jobspec_allows(&s, TD_REMEDY_ACCUMULATE));
  ck_assert_uint_eq(td_jobspec_min_micro_batch(&s), 8);
  expect_ok(job_with("train:\n", "memory: {remedies: [accumulate], fail_alloc: 7}\ntrain:\n"),
            NULL, &s);
  ck_assert_uint_eq(s.fail_alloc, 7);
  ck_assert_str_eq(td_remedy_name(TD_REMEDY_BF16), "bf16");
  expect_ok(job_with("train:\n", "memory: {remedies: [accumulate, recompute, bf16]}\ntrain:\n"),
            NULL, &s);
  ck_assert_int_eq(s.nremedies, 3);
  ck_assert_int_eq(s.remedies[2], TD_REMEDY_BF16);
  ck_assert(td_jobspec_allows(&s, TD_REMEDY_RECOMPUTE));
  expect_ok(job_with("train:\n", "memory: {remedies: [fp16], loss_scale: {init_scale: 1024}}\n"
                     "train:\n"), NULL, &s);
  ck_assert(!s.loss_scale.enabled); /* fp32 until the remedy applies */
  ck_assert_float_eq(s.loss_scale.init_scale, 1024.0f);
  expect_ok(job_with("train:\n", "memory: {remedies: [shrink, accumulate]}\ntrain:\n"),
            NULL, &s);
  ck_assert_int_eq(s.remedies[0], TD_REMEDY_SHRINK);
  ck_assert(td_jobspec_allows(&s, TD_REMEDY_ACCUMULATE));
  expect_err(job_with("train:\n", "memory: {remedies: [accumulate, accumulate]}\ntrain:\n"),
             "'memory.remedies'", "listed twice");
  expect_err(job_with("train:\n", "memory: {remedies: [halve]}\ntrain:\n"),
             "'memory.remedies", "accumulate");
}
END_TEST


/* A CNN: every layer type, its keys and defaults. */
#define CNN_JOB                                                        \
  "model:\n"                                                           \
  "  input: [3, 16, 16]\n"                                             \
  "  layers:\n"                                                        \
  "    - {type: conv2d, filters: 8, kernel: 3, padding: 1}\n"          \
  "    - {type: batchnorm2d}\n"                                        \
  "    - {type: relu}\n"                                               \
  "    - {type: maxpool2d, kernel: 2}\n"                               \
  "    - {type: conv2d, filters: 4, kernel: 3, stride: 2}\n"           \
  "    - {type: avgpool2d, kernel: 3, stride: 1, padding: 1}\n"        \
  "    - {type: gelu, approximate: tanh}\n"                            \
  "    - {type: flatten}\n"                                            \
  "    - {type: layernorm, eps: 0.001}\n"                              \
  "    - {type: dropout, p: 0.25}\n"                                   \
  "    - {type: dense, units: 10}\n"                                   \
  "data:\n"                                                            \
  "  train: {images: tr-i, labels: tr-l}\n"                            \
  "  test: {images: te-i, labels: te-l}\n"                             \
  "train:\n"                                                           \
  "  batch_size: 8\n"                                                  \
  "  epochs: 1\n"                                                      \
  "  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, nesterov: true}\n"

static const char *cnn_with(const char *from, const char *to) {
  return replaced(CNN_JOB, from, to);
}

START_TEST(cnn_layers) {
  td_jobspec s;
  td_shape sh[TD_MAX_LAYERS + 1];
  char why[200];
  int bad;

  expect_ok(CNN_JOB, NULL, &s);
  ck_assert_int_eq(s.nlayers, 11);
  ck_assert_int_eq(s.input_rank, 3);
  ck_assert_int_eq(s.layers[0].type, TD_LAYER_CONV2D);
  ck_assert_uint_eq(s.layers[0].filters, 8);
  ck_assert_uint_eq(s.layers[0].stride, 1); /* conv2d's default */
  ck_assert_uint_eq(s.layers[0].padding, 1);
  ck_assert_float_eq(s.layers[1].eps, 1e-5f);
  ck_assert_float_eq(s.layers[1].momentum, 0.1f);
  ck_assert_uint_eq(s.layers[3].stride, 2); /* pooling's default: the kernel */
  ck_assert_int_eq(s.layers[6].approximate, 1);
  ck_assert_float_eq(s.layers[8].eps, 0.001f);
  ck_assert_float_eq(s.layers[9].p, 0.25f);
  ck_assert_int_eq(s.opt.nesterov, 1);
  ck_assert_int_eq(s.layers[4].line, 8);
  ck_assert(td_jobspec_batch_dependent(&s));
  ck_assert_uint_eq(td_jobspec_classes(&s), 10);
  ck_assert_int_eq(td_jobspec_shapes(&s, sh, &bad, why, sizeof(why)), 0);
  /* 3x16x16 -> 8x16x16 -> pool 8x8x8 -> conv s2 4x3x3 -> avg 4x3x3 -> 36 */
  ck_assert_uint_eq(sh[4].c, 8);
  ck_assert_uint_eq(sh[4].h, 8);
  ck_assert_uint_eq(sh[5].c, 4);
  ck_assert_uint_eq(sh[5].h, 3);
  ck_assert_uint_eq(sh[6].w, 3);
  ck_assert_uint_eq(td_shape_elems(&sh[8]), 36);
  ck_assert(!sh[8].spatial);
  ck_assert_uint_eq(sh[11].c, 10);
  ck_assert_str_eq(td_layer_type_name(TD_LAYER_BATCHNORM2D), "batchnorm2d");
}
END_TEST

/* The shape chain is checked at parse time; each error names the layer's
 * line and what was expected. */
START_TEST(cnn_shape_errors) {
  expect_exact(cnn_with("{type: conv2d, filters: 4, kernel: 3, stride: 2}",
                        "{type: conv2d, filters: 4, kernel: 9}"),
               "line 8: key 'model.layers[4]': conv2d kernel 9 is larger than its 8x8 input "
               "(padding 0)");
  expect_exact(cnn_with("input: [3, 16, 16]", "input: [768]"),
               "line 4: key 'model.layers[0]': conv2d needs a [C, H, W] input, and model.input "
               "is flat (give it as [H, W] or [C, H, W])");
  expect_err(cnn_with("    - {type: flatten}\n", "    - {type: flatten}\n    - {type: batchnorm2d}\n"),
             "line 12", "batchnorm2d needs a [C, H, W] input, and layer 7 (flatten) gives 36 flat "
             "features");
  expect_err(cnn_with("{type: avgpool2d, kernel: 3, stride: 1, padding: 1}",
                      "{type: avgpool2d, kernel: 3, padding: 2}"),
             "line 9", "avgpool2d padding 2 is more than half its 3x3 window");
  expect_err(cnn_with("{type: conv2d, filters: 8, kernel: 3, padding: 1}",
                      "{type: conv2d, filters: 65536, kernel: 1, padding: 4096}"),
             "line 4", "more than 2147483647");
  expect_err(cnn_with("{type: conv2d, filters: 8, kernel: 3, padding: 1}",
                      "{type: conv2d, kernel: 3}"),
             "line 4", "a conv2d layer needs 'filters'");
  expect_err(cnn_with("{type: dropout, p: 0.25}", "{type: dropout}"), "line 13",
             "a dropout layer needs 'p'");
  expect_err(cnn_with("{type: dropout, p: 0.25}", "{type: dropout, p: 1}"), "line 13",
             "'model.layers[9].p'");
  expect_err(cnn_with("{type: flatten}", "{type: flatten, kernel: 2}"), "line 11",
             "a flatten layer has no 'kernel'");
  expect_err(cnn_with("{type: gelu, approximate: tanh}", "{type: gelu, approximate: fast}"),
             "line 10", "must be one of none, tanh");
  /* a 2-D input is one channel */
  expect_ok(cnn_with("input: [3, 16, 16]", "input: [16, 16]"), NULL, &(td_jobspec){0});
}
END_TEST

START_TEST(training_keys) {
  td_jobspec s;

  expect_ok(job_with("  optimizer: {type: sgd, lr: 0.1}\n",
                     "  optimizer: {type: adamw, lr: 0.01, weight_decay: 0.05}\n"
                     "  clip_grad_norm: 1.5\n"
                     "  schedule: {type: cosine, t_max: 100, eta_min: 0.001, warmup_steps: 10,"
                     " warmup_start: 0.1}\n"
                     "  loss: {label_smoothing: 0.1}\n"),
            NULL, &s);
  ck_assert_int_eq(s.opt.kind, TD_OPT_ADAMW);
  ck_assert_float_eq(s.clip_grad_norm, 1.5f);
  ck_assert_int_eq(s.schedule.kind, TD_SCHED_COSINE);
  ck_assert_uint_eq(s.schedule.t_max, 100);
  ck_assert_uint_eq(s.schedule.warmup_steps, 10);
  ck_assert_double_eq_tol(s.schedule.lr, 0.01, 1e-9);
  ck_assert_float_eq(s.label_smoothing, 0.1f);
  /* defaults: constant schedule, no clipping, no smoothing */
  expect_ok(MIN_JOB, NULL, &s);
  ck_assert_int_eq(s.schedule.kind, TD_SCHED_CONSTANT);
  ck_assert_float_eq(s.clip_grad_norm, 0.0f);
  ck_assert_float_eq(s.label_smoothing, 0.0f);
  ck_assert_int_eq(s.recompute, 0);
  ck_assert(!s.loss_scale.enabled);
  expect_err(job_with("  optimizer: {type: sgd, lr: 0.1}\n",
                      "  optimizer: {type: sgd, lr: 0.1}\n  schedule: {type: cosine}\n"),
             "line 12", "key 'train.schedule': schedule cosine: t_max must be > 0");
  expect_err(job_with("  optimizer: {type: sgd, lr: 0.1}\n",
                      "  optimizer: {type: sgd, lr: 0.1}\n"
                      "  schedule: {type: cosine, t_max: 5, gamma: 0.5}\n"),
             "line 12", "'gamma' applies only to type step, and the type is cosine");
  expect_err(job_with("{type: sgd, lr: 0.1}", "{type: sgd, lr: 0.1, nesterov: true}"), "line 11",
             "'nesterov' needs momentum > 0 and dampening 0");
  expect_err(job_with("{type: sgd, lr: 0.1}", "{type: adamw, lr: 0.1, dampening: 0.5}"),
             "line 11", "'dampening' applies only to sgd");
  expect_err(job_with("  optimizer: {type: sgd, lr: 0.1}\n",
                      "  optimizer: {type: sgd, lr: 0.1}\n  loss: {label_smoothing: 1}\n"),
             "line 12", "'train.loss.label_smoothing'");
}
END_TEST

/* MIN_JOB with a validation split (line 12) and callbacks (lines 13 on). */
static const char *cb_job(const char *callbacks) {
  static char text[4096];

  snprintf(text, sizeof(text), "%s", job_with("  test: {images: /abs/te-i, labels: te-l}\n",
                                            "  test: {images: /abs/te-i, labels: te-l}\n"
                                            "  validation: {fraction: 0.1}\n"));
  strcat(text, callbacks);
  return text;
}

START_TEST(callbacks_keys) {
  td_jobspec s;

  /* off unless named; Keras' defaults */
  expect_ok(cb_job(""), NULL, &s);
  ck_assert(!td_callbacks_any(&s.callbacks));
  expect_ok(cb_job("callbacks:\n"
                   "  early_stopping: {monitor: val_accuracy, patience: 3, min_delta: 0.01}\n"
                   "  keep_best: val_accuracy\n"
                   "  reduce_lr_on_plateau: {factor: 0.5, patience: 2, cooldown: 1, "
                   "min_lr: 0.0001}\n"),
            NULL, &s);
  ck_assert(s.callbacks.early_stop.enabled);
  ck_assert_int_eq(s.callbacks.early_stop.monitor, TD_MONITOR_VAL_ACCURACY);
  ck_assert_uint_eq(s.callbacks.early_stop.patience, 3);
  ck_assert_float_eq(s.callbacks.early_stop.min_delta, 0.01f);
  ck_assert(s.callbacks.keep_best.enabled);
  ck_assert_int_eq(s.callbacks.keep_best.monitor, TD_MONITOR_VAL_ACCURACY);
  ck_assert(s.callbacks.plateau.enabled);
  ck_assert_int_eq(s.callbacks.plateau.monitor, TD_MONITOR_VAL_LOSS);
  ck_assert_float_eq(s.callbacks.plateau.factor, 0.5f);
  ck_assert_uint_eq(s.callbacks.plateau.patience, 2);
  ck_assert_uint_eq(s.callbacks.plateau.cooldown, 1);
  ck_assert_float_eq(s.callbacks.plateau.min_lr, 0.0001f);
  ck_assert_float_eq(s.callbacks.plateau.min_delta, 1e-4f);
  /* a key with nothing under it is on, with its defaults */
  expect_ok(cb_job("callbacks:\n  early_stopping:\n  reduce_lr_on_plateau: {}\n"), NULL, &s);
  ck_assert(s.callbacks.early_stop.enabled);
  ck_assert_int_eq(s.callbacks.early_stop.monitor, TD_MONITOR_VAL_LOSS);
  ck_assert_uint_eq(s.callbacks.early_stop.patience, 0);
  ck_assert(!s.callbacks.keep_best.enabled);
  ck_assert(s.callbacks.plateau.enabled);
  ck_assert_float_eq(s.callbacks.plateau.factor, 0.1f);
  ck_assert_uint_eq(s.callbacks.plateau.patience, 10);

  expect_err(cb_job("callbacks:\n  early_stopping: {monitor: loss}\n"), "line 14",
             "'callbacks.early_stopping.monitor'");
  expect_err(cb_job("callbacks:\n  early_stopping: {patience: -1}\n"), "line 14",
             "'callbacks.early_stopping.patience'");
  expect_err(cb_job("callbacks:\n  reduce_lr_on_plateau: {factor: 1}\n"), "line 14",
             "'callbacks.reduce_lr_on_plateau.factor'");
  expect_err(cb_job("callbacks:\n  reduce_lr_on_plateau: {factor: 0}\n"), "line 14",
             "'callbacks.reduce_lr_on_plateau.factor'");
  expect_err(cb_job("callbacks:\n  keep_best: {monitor: val_loss, every: 2}\n"), "line 14",
             "every");
  expect_err(cb_job("callbacks:\n  early_stop: {}\n"), "line 14", "early_stop");
  /* every callback watches the validation split */
  expect_exact(MIN_JOB "callbacks:\n  keep_best: {monitor: val_accuracy}\n",
               "line 13: key 'callbacks.keep_best' monitors val_accuracy, and the job has no "
               "validation split (add data.validation, e.g. {fraction: 0.1})");
  expect_err(MIN_JOB "callbacks:\n  reduce_lr_on_plateau: {}\n", "line 13",
             "'callbacks.reduce_lr_on_plateau' monitors val_loss");
  expect_ok(replaced(cb_job("callbacks:\n  early_stopping: {patience: 1}\n"), "{fraction: 0.1}",
                     "{count: 5}"),
            NULL, &s);
  ck_assert(s.callbacks.early_stop.enabled);
}
END_TEST

START_TEST(precision_keys) {
  td_jobspec s;

  expect_ok(job_with("train:\n", "memory: {precision: fp16, recompute: true, loss_scale: "
                     "{init_scale: 256, growth_interval: 10}}\ntrain:\n"), NULL, &s);
  ck_assert_int_eq(s.precision, TD_PREC_FP16);
  ck_assert_int_eq(s.recompute, 1);
  ck_assert(s.loss_scale.enabled);
  ck_assert_float_eq(s.loss_scale.init_scale, 256.0f);
  ck_assert_float_eq(s.loss_scale.growth_factor, 2.0f); /* GradScaler's default */
  ck_assert_uint_eq(s.loss_scale.growth_interval, 10);
  expect_ok(job_with("train:\n", "memory: {precision: bf16}\ntrain:\n"), NULL, &s);
  ck_assert_int_eq(s.precision, TD_PREC_BF16);
  ck_assert(!s.loss_scale.enabled);
  ck_assert_str_eq(td_precision_name(TD_PREC_FP16), "fp16");
  expect_err(job_with("train:\n", "memory: {loss_scale: {init_scale: 8}}\ntrain:\n"), "line 8",
             "'memory.loss_scale' applies only to fp16");
  expect_err(job_with("train:\n", "memory: {precision: fp16, loss_scale: {growth_factor: 1}}\n"
                      "train:\n"), "line 8", "'memory.loss_scale.growth_factor'");
}
END_TEST

/* MIN_JOB with a csv file: data.train is line 7, data.test line 8. */
static const char *csv_job(const char *train, const char *test) {
  static char text[4096];
  const char *split = strstr(MIN_JOB, "  train: {"), *rest = strstr(MIN_JOB, "train:\n  batch");

  snprintf(text, sizeof(text), "%.*s  format: csv\n  train: {%s}\n  test: {%s}\n%s",
           (int)(split - MIN_JOB), MIN_JOB, train, test, rest);
  return text;
}

START_TEST(features_key) {
  td_jobspec s;

  expect_ok(csv_job("features: t.csv", "images: u.csv"), "/base", &s);
  ck_assert_int_eq(s.format, TD_DATA_CSV);
  ck_assert_str_eq(s.train.images, "/base/t.csv");
  ck_assert_str_eq(s.test.images, "/base/u.csv");
  expect_ok(job_with("images: tr-i", "features: tr-i"), "/base", &s);
  ck_assert_str_eq(s.train.images, "/base/tr-i");
  expect_exact(csv_job("features: t.csv", "limit: 5"),
               "line 8: key 'data.test.features' is required (the samples' file; 'images' is its "
               "other name)");
  expect_exact(csv_job("features: t.csv, images: t.csv", "features: t.csv"),
               "line 7: key 'data.train': 'features' and 'images' are two names of one key; give "
               "one of them");
  expect_err(csv_job("features: \"\"", "features: t.csv"), "line 7",
             "key 'data.train.features': must not be empty");
  expect_err(csv_job("features: t.csv, labels: l", "features: t.csv"), "line 7",
             "a csv file holds its own labels (data.csv.label_column); remove this key");
}
END_TEST

/* A format's own key in the wrong place names the format it belongs to. */
START_TEST(format_key_hints) {
  static const struct {
    const char *from, *to, *msg;
  } cases[] = {
      {"data:\n", "data:\n  label_column: 0\n",
       "line 6: unknown key 'data.label_column': it belongs to format csv (as "
       "data.csv.label_column); this job's data.format is idx"},
      {"labels: tr-l}", "labels: tr-l, record_bytes: 9}",
       "line 6: unknown key 'data.train.record_bytes': it belongs to format raw (as "
       "data.raw.record_bytes); this job's data.format is idx"},
      {"data:\n", "data:\n  format: npy\n  dtype: uint8\n",
       "line 7: unknown key 'data.dtype': it belongs to formats csv and raw (as "
       "data.csv.dtype, data.raw.dtype); this job's data.format is npy"},
      {"data:\n", "data:\n  format: csv\n  csv: {record_shape: [4]}\n",
       "line 7: unknown key 'data.csv.record_shape': it belongs to format raw (as "
       "data.raw.record_shape); this job's data.format is csv"},
      {"data:\n", "data:\n  validation: {label_offset: 1}\n",
       "line 6: unknown key 'data.validation.label_offset': it belongs to format raw (as "
       "data.raw.label_offset); this job's data.format is idx"},
      /* a format that is not one says nothing of it */
      {"data:\n", "data:\n  header_bytes: 0\n  format: parquet\n",
       "line 6: unknown key 'data.header_bytes': it belongs to format raw (as "
       "data.raw.header_bytes)"},
      /* typos still get "did you mean", other keys nothing */
      {"labels: tr-l}", "lables: tr-l}",
       "line 6: unknown key 'data.train.lables' (did you mean 'labels'?)"},
      {"data:\n", "data:\n  delimiter: ';'\n", "line 6: unknown key 'data.delimiter'"},
  };

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    expect_exact(job_with(cases[i].from, cases[i].to), cases[i].msg);
  /* where the format has the key: the section to write it under */
  expect_exact(csv_job("features: t.csv, header: true", "features: t.csv"),
               "line 7: unknown key 'data.train.header': it belongs under data.csv, as "
               "data.csv.header");
}
END_TEST

START_TEST(optimizer_defaults) {
  static const struct {
    const char *opt;
    td_opt_kind kind;
    float lr;
  } cases[] = {
      {"adam", TD_OPT_ADAM, 1e-3f},          {"adamw", TD_OPT_ADAMW, 1e-3f},
      {"sgd", TD_OPT_SGD, 0.01f},            {"{type: adam}", TD_OPT_ADAM, 1e-3f},
      {"{type: sgd}", TD_OPT_SGD, 0.01f},    {"{type: adamw, lr: 0.5}", TD_OPT_ADAMW, 0.5f},
      {"\"adam\"", TD_OPT_ADAM, 1e-3f},
  };
  td_jobspec s;

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    expect_ok(job_with("{type: sgd, lr: 0.1}", cases[i].opt), NULL, &s);
    ck_assert_int_eq(s.opt.kind, cases[i].kind);
    ck_assert_float_eq(s.opt.lr, cases[i].lr);
    ck_assert_double_eq(s.schedule.lr, (double)cases[i].lr);
    ck_assert_float_eq(s.opt.beta1, 0.9f);
    ck_assert_float_eq(s.opt.beta2, 0.999f);
    ck_assert_float_eq(s.opt.eps, 1e-8f);
    ck_assert_float_eq(s.opt.momentum, 0.0f);
    ck_assert_float_eq(s.opt.weight_decay, 0.0f);
  }
  expect_exact(job_with("{type: sgd, lr: 0.1}", "adan"),
               "line 11: key 'train.optimizer': must be one of sgd, adam, adamw; got 'adan'");
  expect_exact(job_with("{type: sgd, lr: 0.1}", "[adam]"),
               "line 11: key 'train.optimizer': expected a map, or its 'type' alone, got a "
               "sequence");
  expect_err(job_with("{type: sgd, lr: 0.1}", ""), "line 11",
             "key 'train.optimizer.type' is required");
}
END_TEST

/* MIN_JOB with the sequence input [6, 4] and its dense layer preceded by
 * layers (each "    - {...}\n"). */
static const char *seq_job(const char *layers) {
  static char text[1024];
  char lines[512];

  snprintf(lines, sizeof(lines), "%s    - {type: dense", layers);
  snprintf(text, sizeof(text), "%s", job_with("    - {type: dense", lines));
  return replaced(text, "  input: [4]\n", "  input: [6, 4]\n  sequence: true\n");
}

/* model.sequence, and the layers that need a sequence or a spatial input */
START_TEST(sequence_layers) {
  td_shape sh[TD_MAX_LAYERS + 1];
  char text[1024], msg[200];
  td_jobspec s;
  int bad;

  expect_ok(seq_job("    - {type: conv1d, filters: 3, kernel: 3}\n"
                    "    - {type: global_avg_pool}\n"), NULL, &s);
  ck_assert_int_eq(s.input_seq, 1);
  ck_assert_int_eq(s.layers[0].stride, 1);
  ck_assert_int_eq(td_jobspec_shapes(&s, sh, &bad, msg, sizeof(msg)), 0);
  ck_assert(sh[0].seq && sh[0].c == 6 && sh[0].h == 4 && sh[0].w == 1 && !sh[0].spatial);
  ck_assert(sh[1].seq && sh[1].c == 4 && sh[1].h == 3); /* [L', filters] */
  ck_assert(!sh[2].seq && !sh[2].spatial && sh[2].c == 3 && sh[2].h == 1);

  expect_exact(job_with("    - {type: dense", "    - {type: conv1d, filters: 2, kernel: 2}\n"
                        "    - {type: dense"),
               "line 4: key 'model.layers[0]': conv1d needs a sequence [T, D] input; got [4] "
               "flat");
  expect_exact(job_with("units: 3}", "units: 3}\n    - {type: global_avg_pool}\n"
                        "    - {type: dense, units: 2}"),
               "line 5: key 'model.layers[1]': global_avg_pool needs a [C, H, W] or a sequence "
               "[T, D] input; got [3] flat");
  expect_err(job_with("  input: [4]\n", "  input: [4]\n  sequence: true\n"), "line 2",
             "key 'model.input': a sequence input is [T, D] (positions, features): 2 "
             "dimensions, not 1");
  expect_err(seq_job("    - {type: conv1d, filters: 3, kernel: 9, padding: 1}\n"), "line 5",
             "conv1d kernel 9 is longer than its sequence of 6 (padding 1)");
  expect_err(seq_job("    - {type: conv2d, filters: 3, kernel: 2}\n"), "line 5",
             "conv2d needs a [C, H, W] input, and gets a sequence [6, 4]");
  /* a block of columns past what a product indexes */
  snprintf(text, sizeof(text), "%s",
           seq_job("    - {type: conv1d, filters: 1, kernel: 4096, padding: 4096}\n"));
  expect_err(replaced(text, "[6, 4]", "[4096, 4096]"), "line 5",
             "conv1d's columns for a block of 16 samples would hold 2199291691008 values, more "
             "than 2147483647");
  /* [C, H, W] pools to [C] */
  snprintf(text, sizeof(text), "%s",
           job_with("    - {type: dense", "    - {type: conv2d, filters: 3, kernel: 2}\n"
                    "    - {type: global_avg_pool}\n    - {type: dense"));
  expect_ok(replaced(text, "  input: [4]\n", "  input: [2, 5, 5]\n"), NULL, &s);
  ck_assert_int_eq(td_jobspec_shapes(&s, sh, &bad, msg, sizeof(msg)), 0);
  ck_assert(!sh[2].seq && !sh[2].spatial && sh[2].c == 3 && sh[2].h == 1);
}
END_TEST

START_TEST(softmax_layer) {
  td_jobspec s;

  /* softmax and sigmoid are layers, but the scores the loss reads come from
   * a dense layer: the loss applies softmax itself */
  expect_exact(job_with("units: 3}", "units: 3}\n    - {type: softmax}"),
               "line 5: key 'model.layers[1]': the last layer must be dense (it gives the class "
               "scores), got softmax (the loss, softmax cross-entropy, turns the scores into "
               "probabilities itself: remove it)");
  expect_err(job_with("units: 3}", "units: 3}\n    - {type: sigmoid}"), "line 5",
             "got sigmoid (the loss, softmax cross-entropy, turns the scores into");
  expect_err(job_with("units: 3}", "units: 3}\n    - {type: log_softmax}"), "line 5",
             "there is no log_softmax layer: the loss (softmax cross-entropy) already applies "
             "log-softmax");
  expect_err(job_with("units: 3}", "units: 3}\n    - {type: LogSoftmax}"), "line 5",
             "there is no LogSoftmax layer");
  /* between layers they are fine */
  expect_ok(job_with("units: 3}", "units: 3}\n    - {type: softmax}\n    - {type: sigmoid}\n"
                     "    - {type: tanh}\n    - {type: dense, units: 2}"), NULL, &s);
  /* anything else still lists the layer types */
  expect_err(job_with("units: 3}", "units: 3}\n    - {type: sofmax}"), "line 5",
             "must be one of dense, relu,");
}
END_TEST

START_TEST(tilde_paths) {
  static const char *const why =
      "write the path in full (e.g. /home/alice/data.csv) or relative to the job file; '~' is "
      "not expanded";
  char want[512];
  td_jobspec s;

  snprintf(want, sizeof(want), "line 6: key 'data.train.images': %s", why);
  expect_exact(job_with("images: tr-i", "images: ~/tr-i"), want); /* base dir NULL */
  expect_err(job_with("images: tr-i", "images: ~/tr-i"), "line 6", why); /* base dir /base */
  expect_err(job_with("labels: tr-l", "labels: ~alice/tr-l"), "line 6",
             "key 'data.train.labels': write the path in full");
  snprintf(want, sizeof(want), "line 8: key 'output': %s", why);
  expect_exact(job_with("train:\n", "output: ~/m.safetensors\ntrain:\n"), want);
  /* a file named ~x is reachable, and a lone ~ is YAML's null */
  expect_ok(job_with("images: tr-i", "images: ./~x"), "/base", &s);
  ck_assert_str_eq(s.train.images, "/base/./~x");
  expect_ok(job_with("images: tr-i", "images: a/~x"), "/base", &s);
  ck_assert_str_eq(s.train.images, "/base/a/~x");
  expect_err(job_with("images: tr-i", "images: ~"), "line 6", "must not be empty");
}
END_TEST

/* A model as a graph: names, inputs, add and concat. */
#define GRAPH_LAYERS                                       \
  "    - {type: dense, units: 6, name: stem}\n"           \
  "    - {type: relu}\n"                                   \
  "    - {type: dense, units: 6}\n"                        \
  "    - {type: add, inputs: [2, stem], name: sum}\n"      \
  "    - {type: dense, units: 2, inputs: [sum]}\n"         \
  "    - {type: concat, inputs: [sum, 4]}\n"               \
  "    - {type: dense, units: 3}\n"

static const char *graph_job(const char *layers) {
  static char text[4096];

  snprintf(text, sizeof(text), "%s", replaced(MIN_JOB, "    - {type: dense, units: 3}\n", layers));
  return text;
}

START_TEST(graph_parses) {
  td_jobspec s;
  td_shape shapes[TD_MAX_LAYERS + 1];
  char err[512], msg[200], name[TD_LAYER_NAME_MAX];
  uint8_t src[TD_MAX_INPUTS];
  int bad;

  ck_assert_msg(td_jobspec_parse(graph_job(GRAPH_LAYERS), strlen(graph_job(GRAPH_LAYERS)), NULL,
                                 &s, err, sizeof(err)) == 0, "%s", err);
  ck_assert_int_eq(s.nlayers, 7);
  ck_assert_str_eq(s.layers[0].name, "stem");
  ck_assert_str_eq(s.layers[1].name, "");
  ck_assert_int_eq(s.layers[1].ninputs, 0); /* the default: the previous layer */
  ck_assert_int_eq(td_layer_inputs(&s, 1, src), 1);
  ck_assert_int_eq(src[0], 1);
  ck_assert_int_eq(s.layers[3].type, TD_LAYER_ADD);
  ck_assert_int_eq(s.layers[3].ninputs, 2);
  ck_assert_int_eq(s.layers[3].inputs[0], 3); /* layer 2's output */
  ck_assert_int_eq(s.layers[3].inputs[1], 1); /* stem's */
  ck_assert_int_eq(s.layers[5].type, TD_LAYER_CONCAT);
  ck_assert_str_eq(td_jobspec_node_name(&s, 2, name), "1");
  ck_assert_str_eq(td_jobspec_node_name(&s, 4, name), "sum");
  ck_assert_str_eq(td_jobspec_node_name(&s, 0, name), "input");
  ck_assert(!td_jobspec_is_chain(&s));
  ck_assert_int_eq(td_jobspec_shapes(&s, shapes, &bad, msg, sizeof(msg)), 0);
  ck_assert_uint_eq(shapes[6].c, 8); /* 6 + 2 */
  /* a plain list is a chain, and so is one that names the previous layer */
  ck_assert_int_eq(td_jobspec_parse(MIN_JOB, strlen(MIN_JOB), NULL, &s, err, sizeof(err)), 0);
  ck_assert(td_jobspec_is_chain(&s));
  job_with("units: 3}", "units: 3, inputs: [input]}");
  ck_assert_int_eq(td_jobspec_parse(buf, strlen(buf), NULL, &s, err, sizeof(err)), 0);
  ck_assert(td_jobspec_is_chain(&s));
}
END_TEST

START_TEST(graph_errors) {
  /* the first layer is line 4, the add line 7 */
  static const struct {
    const char *from, *to, *line, *msg;
  } cases[] = {
      {"[2, stem]", "[2, stme]", "line 7",
       "key 'model.layers[3].inputs[1]': 'stme' names no layer before this one (those are: "
       "input, stem, 1, 2)"},
      {"inputs: [sum]", "inputs: [sum, 6]", "line 8",
       "key 'model.layers[4].inputs[1]': '6' is model.layers[6], which comes after this one: "
       "list the layers so that each comes after its inputs"},
      {"[2, stem], name: sum", "[2, sum], name: sum", "line 7",
       "key 'model.layers[3].inputs[1]': 'sum' is this layer itself: a layer cannot read its "
       "own output (that would be a cycle)"},
      {"[2, stem]", "[0, stem]", "line 7",
       "key 'model.layers[3].inputs[0]': layer 0 is named 'stem': name it so"},
      {"    - {type: dense, units: 6}\n    - {type: add",
       "    - {type: dense, units: 5}\n    - {type: add", "line 7",
       "key 'model.layers[3]': add needs inputs of one shape, and '2' gives [5] while 'stem' "
       "gives [6]"},
      {"[sum, 4]", "[sum, 1]", "line 8",
       "key 'model.layers[4]': nothing reads this layer's output ('4'), and only the last layer "
       "is the model's output"},
      {"inputs: [2, stem]", "inputs: [2]", "line 7",
       "key 'model.layers[3]': add joins two or more inputs"},
      {"inputs: [sum]", "inputs: [sum, stem]", "line 8",
       "key 'model.layers[4]': a dense layer takes one input, and 2 are listed"},
      {"name: stem", "name: 2x", "line 4",
       "key 'model.layers[0].name': a layer's name is a letter or '_' then letters"},
      {"name: stem", "name: input", "line 4", "'input' names the model's input"},
      {"{type: relu}", "{type: relu, name: stem}", "line 5",
       "key 'model.layers[1]': the name 'stem' is model.layers[0]'s already"},
      {"inputs: [sum]", "inputs: sum", "line 8", "key 'model.layers[4].inputs' must be a list"},
      {"inputs: [sum]", "inputs: [[sum]]", "line 8",
       "key 'model.layers[4].inputs[0]' must be a layer's name"},
      {"{type: relu}", "{type: relu, inputs: []}", "line 5",
       "key 'model.layers[1].inputs' must be a list of 1 to 8"},
      {"{type: relu}", "{type: relu, inputs: [a, b, c, d, e, f, g, h, i]}", "line 5",
       "1 to 8 layer names"},
      {"{type: dense, units: 6, name: stem}", "{type: add, inputs: [input, input], name: stem}",
       "line 4", "key 'model.layers[0]': the first layer must not be add"},
  };

  for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
    char layers[1024];

    snprintf(layers, sizeof(layers), "%s", replaced(GRAPH_LAYERS, cases[k].from, cases[k].to));
    expect_err(graph_job(layers), cases[k].line, cases[k].msg);
  }
}
END_TEST

/* concat: inputs of one kind, the dimensions other than the features equal. */
START_TEST(graph_concat_errors) {
  static const struct {
    const char *layers, *msg;
  } cases[] = {
      {"    - {type: conv2d, filters: 2, kernel: 3, padding: 1, name: a}\n"
       "    - {type: conv2d, filters: 3, kernel: 3, inputs: [input], name: b}\n"
       "    - {type: concat, inputs: [a, b]}\n"
       "    - {type: dense, units: 3}\n",
       "line 6: key 'model.layers[2]': concat joins along the channels, and the rest must "
       "agree: 'a' gives [2, 6, 6] while 'b' gives [3, 4, 4]"},
      {"    - {type: conv2d, filters: 2, kernel: 3, padding: 1, name: a}\n"
       "    - {type: flatten}\n"
       "    - {type: concat, inputs: [a, 1]}\n"
       "    - {type: dense, units: 3}\n",
       "line 6: key 'model.layers[2]': concat joins inputs of one kind, and 'a' gives "
       "[C, H, W] while '1' gives flat features"},
  };

  for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
    char text[4096];

    /* replaced() reuses one buffer: one replacement at a time */
    snprintf(text, sizeof(text), "%s", replaced(MIN_JOB, "input: [4]", "input: [1, 6, 6]"));
    expect_exact(replaced(text, "    - {type: dense, units: 3}\n", cases[k].layers),
                 cases[k].msg);
  }
}
END_TEST

/* MIN_JOB (3 outputs) with a loss (train.loss is line 12). */
static const char *loss_job(const char *loss) {
  static char text[4096];

  snprintf(text, sizeof(text), "%s  loss: %s\n", MIN_JOB, loss);
  return text;
}

/* A csv job with data.csv (line 7) and a loss (line 14). */
static const char *csv_loss_job(const char *csv, const char *loss) {
  static char text[4096];

  snprintf(text, sizeof(text), "%s", replaced(csv_job("features: t.csv", "features: u.csv"),
                                               "  format: csv\n", ""));
  snprintf(text + strlen(text), sizeof(text) - strlen(text), "  loss: %s\n", loss);
  return replaced(text, "data:\n", csv[0] ? csv : "data:\n  format: csv\n");
}

START_TEST(loss_kinds) {
  td_jobspec s;

  expect_ok(MIN_JOB, NULL, &s);
  ck_assert_int_eq(s.loss, TD_LOSS_CROSS_ENTROPY);
  ck_assert_int_eq(td_jobspec_target(&s).dtype, TD_DTYPE_I32);
  ck_assert_uint_eq(td_jobspec_target(&s).width, 1);
  expect_ok(loss_job("{kind: binary_cross_entropy}"), NULL, &s);
  ck_assert_int_eq(s.loss, TD_LOSS_BCE);
  ck_assert_int_eq(td_jobspec_target(&s).dtype, TD_DTYPE_F32);
  ck_assert_uint_eq(td_jobspec_target(&s).width, 3);
  expect_ok(loss_job("{kind: cross_entropy, targets: soft}"), NULL, &s);
  ck_assert_int_eq(s.soft_targets, 1);
  ck_assert_uint_eq(td_target_bytes(td_jobspec_target(&s)), 12);
  expect_ok(job_with("  epochs: 1\n", "  epochs: 1\n  top_k: 2\n"), NULL, &s);
  ck_assert_uint_eq(s.top_k, 2);
  expect_ok(csv_loss_job("data:\n  format: csv\n  csv: {target_columns: [4, 0, 6]}\n",
                         "{kind: mse}"), NULL, &s);
  ck_assert_int_eq(s.loss, TD_LOSS_MSE);
  ck_assert_uint_eq(s.csv.ntarget_columns, 3);
  ck_assert_uint_eq(s.csv.target_columns[0], 4);
  ck_assert_uint_eq(s.csv.target_columns[2], 6);
  expect_ok(csv_loss_job("", "{kind: cross_entropy}"), NULL, &s);
  ck_assert_uint_eq(s.csv.ntarget_columns, 0);
  ck_assert_str_eq(td_loss_name(TD_LOSS_MAE), "mae");
}
END_TEST

START_TEST(regression_example_parses) {
  const char *root = getenv("TD_SOURCE_ROOT");
  char path[PATH_MAX], err[512] = "";
  td_jobspec s;

  snprintf(path, sizeof(path), "%s/examples/csv-regression.yaml", root ? root : ".");
  ck_assert_msg(td_jobspec_load(path, &s, err, sizeof(err)) == 0, "%s", err);
  ck_assert_int_eq(s.loss, TD_LOSS_MSE);
  ck_assert_uint_eq(s.csv.ntarget_columns, td_jobspec_classes(&s));
  ck_assert_int_eq(s.callbacks.keep_best.monitor, TD_MONITOR_VAL_MAE);
}
END_TEST

/* Every combination that cannot work, refused with what to do. */
START_TEST(loss_errors) {
  expect_err(loss_job("{kind: hinge}"), "line 12", "'train.loss.kind'");
  expect_err(loss_job("{kind: mse, targets: soft}"), "line 12",
             "'train.loss.targets' applies only to cross_entropy");
  expect_err(loss_job("{kind: mae, label_smoothing: 0.1}"), "line 12",
             "'train.loss.label_smoothing' applies only to cross_entropy over class integers");
  expect_err(loss_job("{targets: soft, label_smoothing: 0.1}"), "line 12",
             "over soft targets");
  expect_err(job_with("  epochs: 1\n", "  epochs: 1\n  top_k: 4\n"), "line 11",
             "expected at most the model's 3 classes, got 4");
  expect_err(job_with("  epochs: 1\n", "  epochs: 1\n  top_k: 2\n  loss: {kind: mse}\n"),
             "line 11", "'train.top_k' applies only to cross_entropy");
  /* monitors the job does not measure */
  expect_err(cb_job("callbacks:\n  keep_best: val_mae\n"), "line 14",
             "measures no mean absolute error");
  expect_err(cb_job("callbacks:\n  early_stopping: {monitor: val_top_k}\n"), "line 14",
             "set train.top_k");
  expect_err(replaced(cb_job("callbacks:\n  keep_best: val_accuracy\n"), "  epochs: 1\n",
                      "  epochs: 1\n  loss: {kind: mse}\n"),
             "callbacks.keep_best", "measures no accuracy (monitor val_loss or val_mae)");
  /* csv: float targets come from target_columns, class ids from label_column */
  expect_err(csv_loss_job("", "{kind: mse}"), "line 6",
             "loss mse needs float targets: name their columns in data.csv.target_columns "
             "(one per model output, 3)");
  expect_err(csv_loss_job("data:\n  format: csv\n  csv: {target_columns: [0, 1, 2]}\n",
                          "{kind: cross_entropy}"),
             "line 7", "'data.csv.target_columns' gives float targets, and loss cross_entropy "
             "takes class integers");
  expect_err(csv_loss_job("data:\n  format: csv\n  csv: {target_columns: [0, 1]}\n",
                          "{kind: mae}"),
             "line 7", "expected one column per model output (3), got 2");
  expect_err(csv_loss_job("data:\n  format: csv\n  csv: {target_columns: [0, 1, 0]}\n",
                          "{kind: binary_cross_entropy}"), "line 7", "column 0 is named twice");
  expect_err(csv_loss_job("data:\n  format: csv\n  csv: {label_column: 2, target_columns: "
                          "[0, 1, 3]}\n", "{kind: mse}"), "line 7",
             "remove label_column");
  /* raw: float32 labels are float targets */
  expect_err(job_with("data:\n", "data:\n  format: raw\n  raw: {record_shape: [4], dtype: "
                      "float32, label_dtype: float32}\n"),
             NULL, "'data.raw.label_dtype': loss cross_entropy takes class integers");
}
END_TEST

static Suite *jobspec_suite(void) {
  Suite *s = suite_create("jobspec");
  TCase *tc = tcase_create("core");

  tcase_add_test(tc, example_parses);
  tcase_add_test(tc, memory_remedies);
  tcase_add_test(tc, defaults);
  tcase_add_test(tc, other_values);
  tcase_add_test(tc, relative_paths);
  tcase_add_test(tc, relative_path_too_long);
  tcase_add_test(tc, unknown_key);
  tcase_add_test(tc, wrong_type);
  tcase_add_test(tc, out_of_range);
  tcase_add_test(tc, integer_overflow);
  tcase_add_test(tc, missing_required);
  tcase_add_test(tc, layer_rules);
  tcase_add_test(tc, too_many_layers);
  tcase_add_test(tc, cross_key_rules);
  tcase_add_test(tc, aliases_anchors);
  tcase_add_test(tc, deep_nesting);
  tcase_add_test(tc, duplicate_keys);
  tcase_add_test(tc, bad_utf8);
  tcase_add_test(tc, embedded_nul);
  tcase_add_test(tc, empty_and_not_a_map);
  tcase_add_test(tc, yaml_syntax);
  tcase_add_test(tc, limits);
  tcase_add_test(tc, load_errors);
  tcase_add_test(tc, load_resolves_against_file_dir);
  tcase_add_test(tc, names);
  tcase_add_test(tc, cnn_layers);
  tcase_add_test(tc, cnn_shape_errors);
  tcase_add_test(tc, training_keys);
  tcase_add_test(tc, precision_keys);
  tcase_add_test(tc, callbacks_keys);
  tcase_add_test(tc, weights_keys);
  tcase_add_test(tc, features_key);
  tcase_add_test(tc, format_key_hints);
  tcase_add_test(tc, optimizer_defaults);
  tcase_add_test(tc, softmax_layer);
  tcase_add_test(tc, sequence_layers);
  tcase_add_test(tc, tilde_paths);
  tcase_add_test(tc, graph_parses);
  tcase_add_test(tc, graph_errors);
  tcase_add_test(tc, graph_concat_errors);
  tcase_add_test(tc, loss_kinds);
  tcase_add_test(tc, loss_errors);
  tcase_add_test(tc, regression_example_parses);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(jobspec_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
