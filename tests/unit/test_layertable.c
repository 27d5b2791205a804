/* The layer table (common/layers.c) and the model's functions for it: every
 * row complete and consistent, names unique, and each type through the
 * whole path: a job file naming it parses, plans, builds on the CPU
 * backend inside exactly its plan, trains, evaluates and saves the tensors
 * its row names.  A new row is tested here without a line added. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "layers.h"
#include "model.h"
#include "plan.h"
#include "safetensors.h"

/* A value for each key a type needs, valid for a [2, 6, 6] input (or a
 * sequence [6, 4] of ids below 7). */
static const char *const needed_value[TD_LK__COUNT] = {
    [TD_LK_UNITS] = "5", [TD_LK_FILTERS] = "3", [TD_LK_KERNEL] = "2",
    [TD_LK_STRIDE] = "1", [TD_LK_PADDING] = "0", [TD_LK_APPROXIMATE] = "tanh",
    [TD_LK_P] = "0.25", [TD_LK_EPS] = "0.001", [TD_LK_MOMENTUM] = "0.2",
    [TD_LK_VOCAB] = "7", [TD_LK_DIM] = "4", [TD_LK_HEADS] = "2", [TD_LK_CAUSAL] = "true",
};

/* What a type is tested on: token ids [6] (an embedding), a sequence [6, 4]
 * (a type whose shape refuses [C, H, W]), else [2, 6, 6]. */
typedef enum { IN_IMAGE, IN_IDS, IN_SEQ } input_kind;

static input_kind input_of(int t) {
  const td_layer_def *d = td_layer_def_of((td_layer_type)t);
  td_layer l = {.type = (td_layer_type)t, .units = 5, .filters = 3, .kernel = 2, .heads = 2};
  td_shape in = {2, 6, 6, 1, 0}, out;
  uint64_t big = 0;
  char msg[128];

  if (d->ids)
    return IN_IDS;
  if (d->shape != NULL && d->shape(&l, &in, &out, &big, msg, sizeof(msg)) < 0)
    return IN_SEQ;
  return IN_IMAGE;
}

START_TEST(test_names_unique) {
  for (int t = 0; t < TD_LAYER__COUNT; t++) {
    ck_assert_ptr_nonnull(td_layer_names[t]);
    ck_assert_str_eq(td_layer_type_name((td_layer_type)t), td_layer_names[t]);
    for (int u = 0; u < t; u++)
      ck_assert_str_ne(td_layer_names[t], td_layer_names[u]);
  }
  ck_assert_ptr_null(td_layer_names[TD_LAYER__COUNT]);
  for (int k = 0; k < TD_LK__COUNT; k++) {
    ck_assert_ptr_nonnull(td_layer_key_names[k]);
    ck_assert_ptr_nonnull(needed_value[k]);
    /* the parser binds every key */
    ck_assert_ptr_nonnull(td_yaml_field(td_layer_yfield.sub, td_layer_key_names[k]));
  }
}
END_TEST

START_TEST(test_rows_complete) {
  const td_layer_def *d = td_layer_def_of((td_layer_type)_i);
  td_layer l = {.type = (td_layer_type)_i, .units = 5, .filters = 3, .kernel = 2,
                .vocab = 7, .dim = 4, .heads = 2};
  input_kind kind = input_of(_i);
  td_shape in = kind == IN_IDS   ? (td_shape){6, 1, 1, 0, 0}
                : kind == IN_SEQ ? (td_shape){6, 4, 1, 0, 1}
                                 : (td_shape){2, 6, 6, 1, 0},
           out = in;
  td_layer_sizes sz = {0};
  td_layer_tensor t[TD_LAYER_MAX_TENSORS];
  uint64_t big = 0;
  char msg[128];

  /* what runs: a forward and a backward function, unless nothing runs */
  ck_assert_msg(d->view || td_model_layer_runs(l.type), "%s has no model functions",
                td_layer_names[_i]);
  ck_assert(!d->view || (d->in_place && d->grad_in_place && d->shape != NULL));
  ck_assert_uint_eq(d->needs & ~d->takes, 0);
  ck_assert(!d->stride_is_kernel || (d->takes & TD_LK(STRIDE)));
  if (d->shape != NULL)
    ck_assert_msg(d->shape(&l, &in, &out, &big, msg, sizeof(msg)) == 0, "%s", msg);
  if (d->sizes != NULL)
    d->sizes(&l, &in, &out, &sz);
  /* parameters: trainable ones, an init and the names they are saved by */
  ck_assert_int_eq(d->trainable, sz.nweight > 0);
  ck_assert_int_eq(d->trainable, d->init != TD_INIT_NONE);
  ck_assert_int_eq(d->trainable, d->tensors != NULL);
  ck_assert(!d->half_weights || d->trainable);
  ck_assert(!d->batch_dependent || d->stats == TD_STATS_CHANNEL);
  if (d->tensors != NULL) {
    int n = d->tensors(&l, &in, &out, &sz, t);
    uint64_t floats[3] = {0};

    ck_assert_int_ge(n, 1);
    ck_assert_int_le(n, TD_LAYER_MAX_TENSORS);
    for (int k = 0; k < n; k++) {
      uint64_t e = 1;

      ck_assert_ptr_nonnull(t[k].name);
      for (int r = 0; r < t[k].rank; r++)
        e *= t[k].shape[r];
      if (t[k].src != TD_LT_TRACKED)
        floats[t[k].src] += e;
    }
    /* the saved tensors hold every value, once */
    ck_assert_uint_eq(floats[TD_LT_WEIGHT], sz.nweight);
    ck_assert_uint_eq(floats[TD_LT_BIAS], sz.nbias);
    ck_assert_uint_eq(floats[TD_LT_RUNNING], sz.nrunning);
  }
}
END_TEST

/* conv2d, the type, dense (an embedding and a sequence type: embedding,
 * the type, flatten, dense; an embedding alone first): a job file for type
 * t with the keys it needs (less those in omit) and extra after them. */
static void job_text(int t, unsigned omit, const char *extra, char *buf, size_t cap) {
  const td_layer_def *d = td_layer_def_of((td_layer_type)t);
  input_kind kind = input_of(t);
  char keys[256] = "";
  size_t n = 0;

  for (int k = 0; k < TD_LK__COUNT; k++)
    if ((d->needs & ~omit) & (1u << k))
      n += (size_t)snprintf(keys + n, sizeof(keys) - n, ", %s: %s", td_layer_key_names[k],
                            needed_value[k]);
  /* a join takes the conv2d's output twice */
  if (d->join != NULL)
    snprintf(keys + n, sizeof(keys) - n, ", inputs: [0, 0]");
  if (kind != IN_IMAGE) {
    snprintf(buf, cap,
             "model:\n"
             "  input: [6]\n"
             "  layers:\n"
             "%s"
             "    - {type: %s%s%s}\n"
             "    - {type: flatten}\n"
             "    - {type: dense, units: 4}\n"
             "data:\n"
             "  train: {images: a, labels: b}\n"
             "  test: {images: c, labels: d}\n"
             "train:\n"
             "  batch_size: 6\n"
             "  epochs: 1\n"
             "  optimizer: adam\n",
             kind == IN_SEQ ? "    - {type: embedding, vocab: 7, dim: 4}\n" : "",
             td_layer_names[t], keys, extra);
    return;
  }
  snprintf(buf, cap,
           "model:\n"
           "  input: [2, 6, 6]\n"
           "  layers:\n"
           "    - {type: conv2d, filters: 2, kernel: 3, padding: 1}\n"
           "    - {type: %s%s%s}\n"
           "    - {type: dense, units: 4}\n"
           "data:\n"
           "  train: {images: a, labels: b}\n"
           "  test: {images: c, labels: d}\n"
           "train:\n"
           "  batch_size: 6\n"
           "  epochs: 1\n"
           "  optimizer: adam\n",
           td_layer_names[t], keys, extra);
}

/* Parse, plan, build in exactly the plan's bytes, train, evaluate, save. */
static void round_trip(int t, td_precision prec, bool recompute) {
  const td_layer_def *d = td_layer_def_of((td_layer_type)t);
  char text[1024], err[256], path[] = "/tmp/td_layertable_XXXXXX";
  uint8_t px[6 * 72];
  int32_t lb[6];
  td_jobspec s;
  td_plan plan;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  td_mem_stats mem;
  td_st_file *f;
  td_layer_tensor lt[TD_LAYER_MAX_TENSORS];
  const td_layout *lay;
  int fd, nt;

  /* the layer under test, and what the model holds besides */
  int at = input_of(t) == IN_IDS ? 0 : 1, others = input_of(t) == IN_IMAGE ? 4
                                                   : input_of(t) == IN_SEQ  ? 3
                                                                            : 2;

  job_text(t, 0, "", text, sizeof(text));
  ck_assert_msg(td_jobspec_parse(text, strlen(text), NULL, &s, err, sizeof(err)) == 0, "%s: %s",
                td_layer_names[t], err);
  ck_assert_int_eq(s.layers[at].type, t);
  s.sample_dtype = TD_DTYPE_U8;
  s.precision = prec;
  s.recompute = recompute;
  ck_assert_int_eq(td_jobspec_batch_dependent(&s), d->batch_dependent);
  ck_assert_int_eq(td_plan_compute(&s, 3, prec, 0, &plan), 0);

  ck_assert_int_eq(td_backend_create("cpu0", plan.total, &be, NULL, 0), 0);
  ck_assert_msg(td_model_create(be, &s, 3, &m, err, sizeof(err)) == 0, "%s: %s",
                td_layer_names[t], err);
  for (size_t i = 0; i < sizeof(px); i++) /* ids below the vocabulary, 7 */
    px[i] = (uint8_t)((i * 2654435761u >> 9) % (input_of(t) == IN_IMAGE ? 256 : 7));
  for (int i = 0; i < 6; i++)
    lb[i] = (uint8_t)(i % 4);
  for (int step = 0; step < 2; step++)
    ck_assert_int_eq(td_model_train_step(m, px, lb, 6, &st), 0);
  ck_assert_int_eq(td_model_eval(m, px, lb, 6, &st), 0);
  ck_assert_uint_eq(st.count, 6);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.peak, plan.total); /* the plan is exact, to the byte */

  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  close(fd);
  ck_assert_int_eq(td_model_save(m, path, NULL, 0), 0);
  ck_assert_int_eq(td_safetensors_load(path, 1u << 24, &f, err, sizeof(err)), 0);
  lay = td_model_layout(m);
  nt = 0;
  if (d->tensors != NULL) {
    td_layer_sizes sz = {.nweight = lay->layers[at].nweight, .nbias = lay->layers[at].nbias};

    nt = d->tensors(&s.layers[at], &lay->layers[at].in_shape, &lay->layers[at].out_shape, &sz,
                    lt);
  }
  /* the other layers' (conv2d's and dense's weight and bias; the
   * embedding's weight and dense's), and the type's own */
  ck_assert_uint_eq(td_safetensors_count(f), (size_t)others + (size_t)nt);
  for (int k = 0; k < nt; k++) {
    td_st_tensor x;
    char name[64];

    snprintf(name, sizeof(name), "%d.%s", at, lt[k].name);
    ck_assert_msg(td_safetensors_find(f, name, &x) == 0, "%s missing", name);
    ck_assert_int_eq(x.rank, lt[k].rank);
  }
  td_safetensors_free(f);
  unlink(path);
  td_model_destroy(m);
  td_backend_destroy(be);
}

START_TEST(test_round_trip) { round_trip(_i, TD_PREC_FP32, false); }
END_TEST

START_TEST(test_round_trip_bf16_recompute) { round_trip(_i, TD_PREC_BF16, true); }
END_TEST

/* The parser's key rules come from the row: a key a type does not take is
 * refused, one it needs must be there. */
START_TEST(test_keys_from_row) {
  const td_layer_def *d = td_layer_def_of((td_layer_type)_i);
  char text[1024], err[256], extra[64], want[96];
  td_jobspec s;

  for (int k = 0; k < TD_LK__COUNT; k++) {
    if (d->takes & (1u << k) && !(d->needs & (1u << k)))
      continue;
    if (d->needs & (1u << k)) {
      job_text(_i, 1u << k, "", text, sizeof(text));
      snprintf(want, sizeof(want), "a %s layer needs '%s'", td_layer_names[_i],
               td_layer_key_names[k]);
    } else {
      snprintf(extra, sizeof(extra), ", %s: %s", td_layer_key_names[k], needed_value[k]);
      job_text(_i, 0, extra, text, sizeof(text));
      snprintf(want, sizeof(want), "a %s layer has no '%s'", td_layer_names[_i],
               td_layer_key_names[k]);
    }
    ck_assert_int_eq(td_jobspec_parse(text, strlen(text), NULL, &s, err, sizeof(err)),
                     TD_EJOBSPEC);
    ck_assert_msg(strstr(err, want) != NULL, "%s", err);
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("layertable");
  TCase *tc = tcase_create("core");

  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_names_unique);
  tcase_add_loop_test(tc, test_rows_complete, 0, TD_LAYER__COUNT);
  tcase_add_loop_test(tc, test_round_trip, 0, TD_LAYER__COUNT);
  tcase_add_loop_test(tc, test_round_trip_bf16_recompute, 0, TD_LAYER__COUNT);
  tcase_add_loop_test(tc, test_keys_from_row, 0, TD_LAYER__COUNT);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
