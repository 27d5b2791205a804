/* A job's model file (common/modelfile.c): the tensors a spec's model
 * holds, the check of a file against them with the message naming the
 * first mismatch, the conversion of F16, BF16 and F64 values, and the
 * header read alone (common/safetensors.c) that the client checks at
 * submit. */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "half.h"
#include "jobspec.h"
#include "modelfile.h"
#include "safetensors.h"
#include "util.h"

/* [4] -> dense 3 -> relu -> layernorm -> dense 2 */
static void spec(td_jobspec *s) {
  static const td_layer layers[] = {
      {.type = TD_LAYER_DENSE, .units = 3},
      {.type = TD_LAYER_RELU},
      {.type = TD_LAYER_LAYERNORM, .eps = 1e-5f},
      {.type = TD_LAYER_DENSE, .units = 2},
  };

  memset(s, 0, sizeof(*s));
  s->input_rank = 1;
  s->input_dims[0] = 4;
  memcpy(s->layers, layers, sizeof(layers));
  s->nlayers = (int)TD_ARRAY_SIZE(layers);
}

static float g_data[64];

/* The model's tensors as F32, with name k renamed or reshaped as asked. */
static td_st_file *file_of(const td_mf_tensor *t, size_t n, const char *rename,
                           const char *dtype, uint64_t dim0, int extra) {
  td_st_tensor st[TD_MF_MAX + 1];
  char path[] = "/tmp/td-mf-XXXXXX", err[256];
  td_st_file *f;
  size_t k = 0;
  int fd;

  for (size_t i = 0; i < n; i++) {
    st[k] = (td_st_tensor){.name = t[i].name, .dtype = "F32", .rank = (uint32_t)t[i].t.rank,
                           .data = g_data, .bytes = t[i].elems * 4};
    memcpy(st[k].shape, t[i].t.shape, sizeof(t[i].t.shape));
    if (i == 2 && rename != NULL)
      st[k].name = rename;
    if (i == 2 && dtype != NULL) {
      st[k].dtype = dtype;
      st[k].bytes = t[i].elems * (strcmp(dtype, "F64") == 0 ? 8 : 2);
    }
    if (i == 2 && dim0 != 0) {
      st[k].shape[0] = dim0;
      st[k].bytes = dim0 * 4;
    }
    k++;
  }
  if (extra)
    st[k++] = (td_st_tensor){.name = "9.weight", .dtype = "F32", .rank = 1, .shape = {1},
                             .data = g_data, .bytes = 4};
  ck_assert_int_ge(fd = mkstemp(path), 0);
  close(fd);
  ck_assert_int_eq(td_safetensors_write(path, st, k, NULL, 0), 0);
  ck_assert_int_eq(td_safetensors_load(path, 1 << 20, &f, err, sizeof(err)), 0);
  unlink(path);
  return f;
}

START_TEST(test_tensors) {
  td_mf_tensor t[TD_MF_MAX];
  td_jobspec s;
  char err[256];
  size_t n;

  spec(&s);
  ck_assert_int_eq(td_modelfile_tensors(&s, t, &n, err, sizeof(err)), 0);
  ck_assert_uint_eq(n, 6);
  ck_assert_str_eq(t[0].name, "0.weight");
  ck_assert_int_eq(t[0].t.rank, 2);
  ck_assert_uint_eq(t[0].t.shape[0], 3);
  ck_assert_uint_eq(t[0].t.shape[1], 4);
  ck_assert_uint_eq(t[0].elems, 12);
  ck_assert_str_eq(t[1].name, "0.bias");
  ck_assert_str_eq(t[2].name, "2.weight");
  ck_assert_int_eq(t[2].layer, 2);
  ck_assert_uint_eq(t[2].elems, 3);
  ck_assert_str_eq(t[5].name, "3.bias");
  s.layers[1].type = TD_LAYER_CONV2D; /* needs [C, H, W]: the spec does not chain */
  ck_assert_int_eq(td_modelfile_tensors(&s, t, &n, err, sizeof(err)), TD_EJOBSPEC);
}
END_TEST

/* Exactly the model's tensors, each of its shape and a float dtype; the
 * message names the first that is not. */
START_TEST(test_check) {
  static const struct {
    const char *rename, *dtype;
    uint64_t dim0;
    int extra, rc;
    const char *msg;
  } cases[] = {
      {NULL, NULL, 0, 0, 0, ""},
      {NULL, "F16", 0, 0, 0, ""},
      {NULL, "BF16", 0, 0, 0, ""},
      {NULL, "F64", 0, 0, 0, ""},
      {NULL, NULL, 5, 0, TD_EDATA, "tensor '2.weight' has shape [5], the model's is [3]"},
      {NULL, "I16", 0, 0, TD_EDATA, "tensor '2.weight' is I16; init takes F32, F16, BF16 or F64"},
      {"2.gamma", NULL, 0, 0, TD_EDATA,
       "the model's tensor '2.weight' is not in the file (is it the model of another job "
       "file?)"},
      {NULL, NULL, 0, 1, TD_EDATA,
       "tensor '9.weight' is not one of the model's (is it the model of another job file?)"},
  };
  td_mf_tensor t[TD_MF_MAX];
  td_jobspec s;
  char err[256];
  size_t n;

  spec(&s);
  ck_assert_int_eq(td_modelfile_tensors(&s, t, &n, err, sizeof(err)), 0);
  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_st_file *f = file_of(t, n, cases[i].rename, cases[i].dtype, cases[i].dim0,
                            cases[i].extra);

    err[0] = '\0';
    ck_assert_int_eq(td_modelfile_check(f, t, n, err, sizeof(err)), cases[i].rc);
    ck_assert_str_eq(err, cases[i].msg);
    td_safetensors_free(f);
  }
}
END_TEST

/* F16, BF16 and F64 to fp32 (F64 rounded to nearest); counts. */
START_TEST(test_convert) {
  const uint16_t f16[] = {td_f32_to_f16(1.5f), td_f32_to_f16(-0.25f)};
  const uint16_t bf16[] = {td_f32_to_bf16(3.0f), td_f32_to_bf16(-2.5f)};
  const double f64[] = {0.1, -1e-3};
  const int64_t i64 = 12345;
  const int32_t i32 = -3;
  float out[2];
  td_st_tensor t = {.rank = 1, .shape = {2}};

  t.dtype = "F16", t.data = f16;
  td_modelfile_f32(&t, out, 2);
  ck_assert(out[0] == 1.5f && out[1] == -0.25f);
  t.dtype = "BF16", t.data = bf16;
  td_modelfile_f32(&t, out, 2);
  ck_assert(out[0] == 3.0f && out[1] == -2.5f);
  t.dtype = "F64", t.data = f64;
  td_modelfile_f32(&t, out, 2);
  ck_assert(out[0] == (float)0.1 && out[1] == (float)-1e-3);
  t = (td_st_tensor){.dtype = "I64", .data = &i64};
  ck_assert_uint_eq(td_modelfile_count(&t), 12345);
  t = (td_st_tensor){.dtype = "I32", .data = &i32};
  ck_assert_uint_eq(td_modelfile_count(&t), 0);
}
END_TEST

/* The header alone: tensors without data, every range checked against the
 * file's size; a truncated file, a FIFO (no wait) and no file refused. */
START_TEST(test_header_only) {
  const td_st_tensor st[] = {
      {.name = "0.weight", .dtype = "F32", .rank = 2, .shape = {4, 4}, .data = g_data,
       .bytes = 64},
      {.name = "0.bias", .dtype = "F32", .rank = 1, .shape = {4}, .data = g_data, .bytes = 16},
  };
  char dir[] = "/tmp/td-mfh-XXXXXX", path[64], fifo[64], err[256];
  struct stat sb;
  td_st_file *f;
  td_st_tensor t;

  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof(path), "%s/m.safetensors", dir);
  snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
  ck_assert_int_eq(td_safetensors_write(path, st, 2, NULL, 0), 0);
  ck_assert_int_eq(td_safetensors_load_header(path, &f, err, sizeof(err)), 0);
  ck_assert_uint_eq(td_safetensors_count(f), 2);
  ck_assert_int_eq(td_safetensors_find(f, "0.bias", &t), 0);
  ck_assert_ptr_null(t.data);
  ck_assert_uint_eq(t.bytes, 16);
  td_safetensors_free(f);

  ck_assert_int_eq(stat(path, &sb), 0);
  ck_assert_int_eq(truncate(path, sb.st_size - 8), 0);
  ck_assert_int_eq(td_safetensors_load_header(path, &f, err, sizeof(err)), TD_EDATA);
  ck_assert_msg(strstr(err, "outside the 72 data bytes") != NULL, "%s", err);
  ck_assert_int_eq(truncate(path, 5), 0);
  ck_assert_int_eq(td_safetensors_load_header(path, &f, err, sizeof(err)), TD_EDATA);
  ck_assert_str_eq(err, "5 bytes: too short for a safetensors file");

  ck_assert_int_eq(mkfifo(fifo, 0600), 0);
  ck_assert_int_eq(td_safetensors_load_header(fifo, &f, err, sizeof(err)), TD_EIO);
  ck_assert_str_eq(err, "not a regular file");
  unlink(path);
  ck_assert_int_eq(td_safetensors_load_header(path, &f, err, sizeof(err)), TD_ENOENT);
  unlink(fifo);
  rmdir(dir);
}
END_TEST

int main(void) {
  Suite *s = suite_create("modelfile");
  TCase *tc = tcase_create("modelfile");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_tensors);
  tcase_add_test(tc, test_check);
  tcase_add_test(tc, test_convert);
  tcase_add_test(tc, test_header_only);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
