/* The backend's input staging on the CPU backend: normalisation of every
 * stored sample type against a plain C reference, pinned host ranges and
 * asynchronous uploads, the device's memory and the probe. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "error.h"
#include "td_config.h"
#include "util.h"

static td_backend *cpu(void) {
  td_backend *be = NULL;
  char err[256];

  ck_assert_msg(td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)) == 0,
                "%s", err);
  return be;
}

/* IEEE binary16 bits to double, written from the format's definition. */
static double ref_f16(uint16_t h) {
  int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  double v;

  if (exp == 0x1f)
    v = man != 0 ? NAN : INFINITY;
  else if (exp == 0)
    v = ldexp(man, -24);
  else
    v = ldexp(1024 + man, exp - 25);
  return sign ? -v : v;
}

/* Normalise n elements of dtype on the CPU backend; y gets n floats. */
static void run_normalize(td_dtype dtype, const void *x, size_t n, float scale, float mean,
                          float std, float *y) {
  td_backend *be = cpu();
  td_buf bx, by;

  ck_assert_int_eq(td_backend_alloc(be, n * td_dtype_size(dtype), &bx), 0);
  ck_assert_int_eq(td_backend_alloc(be, n * sizeof(float), &by), 0);
  td_backend_upload(be, bx.ptr, x, n * td_dtype_size(dtype));
  td_backend_normalize(be, dtype, bx.ptr, by.ptr, n, scale, mean, std);
  td_backend_download(be, y, by.ptr, n * sizeof(float));
  ck_assert_msg(td_backend_sync(be) == 0, "%s", td_backend_error(be));
  td_backend_free(be, &bx);
  td_backend_free(be, &by);
  td_backend_destroy(be);
}

/* y[i] against (ref[i] * scale - mean) / std in double: the fold into one
 * multiply and add costs a few ulps of the terms. */
static void expect_normalized(const float *y, const double *ref, size_t n, float scale,
                              float mean, float std, const char *what) {
  for (size_t i = 0; i < n; i++) {
    double want = (ref[i] * scale - mean) / std;
    double bound = 4 * FLT_EPSILON * (fabs(ref[i] * scale / std) + fabs(mean / std)) + 1e-45;

    if (isnan(want)) {
      ck_assert_msg(isnan(y[i]), "%s [%zu]: want NaN, got %g", what, i, (double)y[i]);
      continue;
    }
    if (isinf(want) || isinf(y[i])) {
      ck_assert_msg(y[i] == want, "%s [%zu]: want %g, got %g", what, i, want, (double)y[i]);
      continue;
    }
    ck_assert_msg(fabs(y[i] - want) <= bound, "%s [%zu]: want %.9g, got %.9g", what, i, want,
                  (double)y[i]);
  }
}

START_TEST(test_normalize_u8_all) {
  uint8_t x[256];
  float y[256];
  double ref[256];

  for (int i = 0; i < 256; i++) {
    x[i] = (uint8_t)i;
    ref[i] = i;
  }
  run_normalize(TD_DTYPE_U8, x, 256, 1.0f / 255.0f, 0.2860f, 0.3530f, y);
  expect_normalized(y, ref, 256, 1.0f / 255.0f, 0.2860f, 0.3530f, "uint8");
}
END_TEST

/* The u8 wrapper is the general op with scale 1/255. */
START_TEST(test_normalize_u8_wrapper) {
  uint8_t x[256];
  float a[256], b[256];
  td_backend *be = cpu();
  td_buf bx, by;

  for (int i = 0; i < 256; i++)
    x[i] = (uint8_t)(i * 7);
  ck_assert_int_eq(td_backend_alloc(be, sizeof(x), &bx), 0);
  ck_assert_int_eq(td_backend_alloc(be, sizeof(a), &by), 0);
  td_backend_upload(be, bx.ptr, x, sizeof(x));
  td_backend_normalize_u8(be, bx.ptr, by.ptr, 256, 0.5f, 0.25f);
  td_backend_download(be, a, by.ptr, sizeof(a));
  td_backend_normalize(be, TD_DTYPE_U8, bx.ptr, by.ptr, 256, 1.0f / 255.0f, 0.5f, 0.25f);
  td_backend_download(be, b, by.ptr, sizeof(b));
  ck_assert_int_eq(td_backend_sync(be), 0);
  for (int i = 0; i < 256; i++)
    ck_assert_msg(fabsf(a[i] - b[i]) <= 2e-7f * (1 + fabsf(a[i])), "[%d] %g %g", i,
                  (double)a[i], (double)b[i]);
  td_backend_free(be, &bx);
  td_backend_free(be, &by);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_normalize_i32) {
  enum { N = 4096 };
  int32_t *x = malloc(N * sizeof(*x));
  float *y = malloc(N * sizeof(*y));
  double *ref = malloc(N * sizeof(*ref));
  uint32_t s = 1;

  ck_assert(x != NULL && y != NULL && ref != NULL);
  for (int i = 0; i < N; i++) {
    s = s * 1664525u + 1013904223u;
    x[i] = (int32_t)s >> (i % 31); /* every magnitude */
  }
  x[0] = INT32_MIN, x[1] = INT32_MAX, x[2] = 0, x[3] = -1, x[4] = 16777217; /* 2^24 + 1 */
  for (int i = 0; i < N; i++)
    ref[i] = (float)x[i]; /* int32 to float rounds first, on every backend */
  run_normalize(TD_DTYPE_I32, x, N, 1e-3f, -2.0f, 3.0f, y);
  expect_normalized(y, ref, N, 1e-3f, -2.0f, 3.0f, "int32");
  free(x), free(y), free(ref);
}
END_TEST

/* Every half bit pattern: zeros, subnormals, normals, infinities, NaNs. */
START_TEST(test_normalize_f16) {
  enum { N = 65536 };
  uint16_t *x = malloc(N * sizeof(*x));
  float *y = malloc(N * sizeof(*y));
  double *ref = malloc(N * sizeof(*ref));

  ck_assert(x != NULL && y != NULL && ref != NULL);
  for (int i = 0; i < N; i++) {
    x[i] = (uint16_t)i;
    ref[i] = ref_f16((uint16_t)i);
  }
  ck_assert(ref[1] == ldexp(1, -24) && isinf(ref[0x7c00]) && isnan(ref[0x7e00]));
  run_normalize(TD_DTYPE_F16, x, N, 2.0f, 0.5f, 0.25f, y);
  expect_normalized(y, ref, N, 2.0f, 0.5f, 0.25f, "float16");
  /* scale 1, mean 0, std 1: the values themselves, subnormals exact */
  run_normalize(TD_DTYPE_F16, x, N, 1.0f, 0.0f, 1.0f, y);
  for (int i = 0; i < N; i++)
    ck_assert_msg(isnan(ref[i]) ? isnan(y[i]) : y[i] == ref[i], "half %#06x: %g vs %g", i,
                  (double)y[i], ref[i]);
  ck_assert(signbit(y[0x8000]) && y[0x8000] == 0.0f);
  free(x), free(y), free(ref);
}
END_TEST

START_TEST(test_normalize_f32) {
  const float x[] = {0.0f, -0.0f, 1.0f, -1.5f, 1e-40f, -1e-45f, FLT_MAX, -FLT_MAX, FLT_MIN,
                     INFINITY, -INFINITY, NAN, 3.14159f, 255.0f, 1e30f};
  enum { N = TD_ARRAY_SIZE(x) };
  float y[N];
  double ref[N];

  for (size_t i = 0; i < N; i++)
    ref[i] = x[i];
  run_normalize(TD_DTYPE_F32, x, N, 1.0f, 0.1f, 2.0f, y);
  expect_normalized(y, ref, N, 1.0f, 0.1f, 2.0f, "float32");
}
END_TEST

/* A dtype the op cannot read, or factors that are not finite, latch
 * TD_EINVAL and write nothing. */
START_TEST(test_normalize_rejects) {
  static const struct {
    td_dtype dtype;
    float scale, mean, std;
    const char *says;
  } bad[] = {
      {TD_DTYPE_I64, 1, 0, 1, "dtype"},
      {TD_DTYPE__COUNT, 1, 0, 1, "dtype"},
      {TD_DTYPE_U8, 1, 0, 0, "std"},
      {TD_DTYPE_F32, 1, 0, NAN, "std"},
      {TD_DTYPE_F32, 1, 0, INFINITY, "std"},
      {TD_DTYPE_F32, INFINITY, 0, 1, "finite"},
      {TD_DTYPE_F32, 1, NAN, 1, "finite"},
      {TD_DTYPE_F32, FLT_MAX, 0, 1e-30f, "finite"},
  };
  const float x[4] = {1, 2, 3, 4};
  float y[4] = {-7, -7, -7, -7};
  td_backend *be = cpu();
  td_buf bx, by;

  ck_assert_int_eq(td_backend_alloc(be, sizeof(x), &bx), 0);
  ck_assert_int_eq(td_backend_alloc(be, sizeof(y), &by), 0);
  td_backend_upload(be, bx.ptr, x, sizeof(x));
  td_backend_upload(be, by.ptr, y, sizeof(y));
  for (size_t i = 0; i < TD_ARRAY_SIZE(bad); i++) {
    td_backend_normalize(be, bad[i].dtype, bx.ptr, by.ptr, 4, bad[i].scale, bad[i].mean,
                         bad[i].std);
    ck_assert_int_eq(td_backend_sync(be), TD_EINVAL);
    ck_assert_msg(strstr(td_backend_error(be), bad[i].says) != NULL, "case %zu: %s", i,
                  td_backend_error(be));
  }
  td_backend_download(be, y, by.ptr, sizeof(y));
  ck_assert_int_eq(td_backend_sync(be), 0);
  for (int i = 0; i < 4; i++)
    ck_assert_float_eq(y[i], -7.0f);
  /* n 0 does nothing, and the op counts as a memory request */
  td_backend_normalize(be, TD_DTYPE_F32, bx.ptr, by.ptr, 0, 1, 0, 1);
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_inject_oom(be, 1);
  td_backend_normalize(be, TD_DTYPE_F32, bx.ptr, by.ptr, 4, 1, 0, 1);
  ck_assert_int_eq(td_backend_sync(be), TD_EOOM);
  td_backend_free(be, &bx);
  td_backend_free(be, &by);
  td_backend_destroy(be);
}
END_TEST

START_TEST(test_host_register) {
  enum { PAGE = 4096 };
  char *ring = malloc(PAGE * (TD_HOST_REGIONS_MAX + 2));
  td_backend *be = cpu();

  ck_assert_ptr_nonnull(ring);
  ck_assert_int_eq(td_backend_host_register(be, ring, PAGE), 0);
  /* overlapping it in any way is refused, with the reason */
  ck_assert_int_eq(td_backend_host_register(be, ring + 100, 10), TD_EINVAL);
  ck_assert_msg(strstr(td_backend_error(be), "overlaps") != NULL, "%s", td_backend_error(be));
  ck_assert_int_eq(td_backend_host_register(be, ring + PAGE - 1, 10), TD_EINVAL);
  ck_assert_int_eq(td_backend_host_register(be, ring, PAGE), TD_EINVAL);
  ck_assert_int_eq(td_backend_host_register(be, NULL, 10), TD_EINVAL);
  ck_assert_int_eq(td_backend_host_register(be, ring + PAGE, 0), TD_EINVAL);
  /* a refusal is an answer, not a latched failure */
  ck_assert_int_eq(td_backend_status(be), 0);
  ck_assert_int_eq(td_backend_sync(be), 0);
  /* adjacent ranges are fine, up to the limit */
  for (int i = 1; i < TD_HOST_REGIONS_MAX; i++)
    ck_assert_int_eq(td_backend_host_register(be, ring + (size_t)i * PAGE, PAGE), 0);
  ck_assert_int_eq(td_backend_host_register(be, ring + (size_t)TD_HOST_REGIONS_MAX * PAGE, PAGE),
                   TD_ETOOBIG);
  ck_assert_int_eq(td_backend_host_unregister(be, ring + 1), TD_EINVAL);
  ck_assert_msg(strstr(td_backend_error(be), "registered") != NULL, "%s", td_backend_error(be));
  ck_assert_int_eq(td_backend_host_unregister(be, ring + PAGE), 0);
  ck_assert_int_eq(td_backend_host_unregister(be, ring + PAGE), TD_EINVAL);
  ck_assert_int_eq(td_backend_host_register(be, ring + (size_t)TD_HOST_REGIONS_MAX * PAGE, PAGE),
                   0);
  /* destroy unregisters the rest */
  td_backend_destroy(be);
  free(ring);
}
END_TEST

/* From a registered range and from plain memory, whole and straddling. */
START_TEST(test_upload_async) {
  enum { N = 1000 };
  float *ring = malloc(2 * N * sizeof(float)), *plain = malloc(N * sizeof(float));
  float got[N];
  td_backend *be = cpu();
  td_buf d;

  ck_assert(ring != NULL && plain != NULL);
  for (int i = 0; i < 2 * N; i++)
    ring[i] = (float)i;
  for (int i = 0; i < N; i++)
    plain[i] = -(float)i;
  ck_assert_int_eq(td_backend_alloc(be, sizeof(got), &d), 0);
  ck_assert_int_eq(td_backend_host_register(be, ring, N * sizeof(float)), 0);
  td_backend_upload_async(be, d.ptr, ring, N * sizeof(float));
  ck_assert_int_eq(td_backend_sync(be), 0);
  td_backend_download(be, got, d.ptr, sizeof(got));
  for (int i = 0; i < N; i++)
    ck_assert_float_eq(got[i], (float)i);
  td_backend_upload_async(be, d.ptr, plain, N * sizeof(float));
  td_backend_download(be, got, d.ptr, sizeof(got));
  for (int i = 0; i < N; i++)
    ck_assert_float_eq(got[i], -(float)i);
  /* half in the range, half past it: a plain copy */
  td_backend_upload_async(be, d.ptr, ring + N / 2, N * sizeof(float));
  td_backend_download(be, got, d.ptr, sizeof(got));
  for (int i = 0; i < N; i++)
    ck_assert_float_eq(got[i], (float)(i + N / 2));
  td_backend_upload_async(be, d.ptr, ring, 0); /* nothing */
  ck_assert_int_eq(td_backend_sync(be), 0);
  ck_assert_int_eq(td_backend_host_unregister(be, ring), 0);
  td_backend_free(be, &d);
  td_backend_destroy(be);
  free(ring);
  free(plain);
}
END_TEST

START_TEST(test_device_mem_and_probe) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t total = 0, avail = 0;
  td_device_probe p;
  td_mem_stats mem;
  td_backend *be = cpu();
  char err[256];

  ck_assert_int_eq(td_backend_device_mem(be, &total, &avail), 0);
  ck_assert_uint_eq(total, (uint64_t)pages * (uint64_t)page);
  ck_assert(avail > 0 && avail <= total);
  td_backend_set_overhead(be, 300 << 20);
  td_backend_mem(be, &mem);
  ck_assert_uint_eq(mem.overhead, 300 << 20);
  ck_assert_uint_eq(mem.budget, TD_BUDGET_UNLIMITED);
  td_backend_destroy(be);

  memset(&p, 0xab, sizeof(p));
  ck_assert_msg(td_backend_probe("cpu3", &p, err, sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(p.total, total);
  ck_assert(p.free > 0 && p.free <= p.total);
  ck_assert_uint_eq(p.overhead, 0);
}
END_TEST

START_TEST(test_probe_rejects) {
  static const char *bad[] = {"gpu0", "cpu", "cpu1234", "", "cuda-1"};
  td_device_probe p = {.total = 7, .free = 7, .overhead = 7};
  char err[256];
  int rc;

  for (size_t i = 0; i < TD_ARRAY_SIZE(bad); i++) {
    ck_assert_int_eq(td_backend_probe(bad[i], &p, err, sizeof(err)), TD_EINVAL);
    ck_assert_msg(strstr(err, "unknown device") != NULL, "%s: %s", bad[i], err);
  }
  ck_assert_int_eq(td_backend_probe(NULL, &p, NULL, 0), TD_EINVAL);
  ck_assert(p.total == 7 && p.free == 7 && p.overhead == 7); /* untouched */
  /* This test runs in its own process (Check's fork mode), as the probe asks. */
  rc = td_backend_probe("cuda0", &p, err, sizeof(err));
#if TD_HAVE_CUDA
  if (rc == 0) /* a GPU: a context and handles cost something */
    ck_assert(p.total > 0 && p.free <= p.total && p.overhead > 0);
  else
    ck_assert_msg(rc == TD_EBACKEND && strstr(err, "cuda0") != NULL, "%d: %s", rc, err);
#else
  ck_assert_int_eq(rc, TD_EBACKEND);
  ck_assert_msg(strstr(err, "built without the CUDA backend") != NULL, "%s", err);
#endif
}
END_TEST

static Suite *input_suite(void) {
  Suite *s = suite_create("input");
  TCase *norm = tcase_create("normalize"), *stage = tcase_create("staging"),
        *probe = tcase_create("probe");

  tcase_add_test(norm, test_normalize_u8_all);
  tcase_add_test(norm, test_normalize_u8_wrapper);
  tcase_add_test(norm, test_normalize_i32);
  tcase_add_test(norm, test_normalize_f16);
  tcase_add_test(norm, test_normalize_f32);
  tcase_add_test(norm, test_normalize_rejects);
  suite_add_tcase(s, norm);

  tcase_add_test(stage, test_host_register);
  tcase_add_test(stage, test_upload_async);
  suite_add_tcase(s, stage);

  tcase_set_timeout(probe, 60); /* a GPU's probe makes two CUDA contexts */
  tcase_add_test(probe, test_device_mem_and_probe);
  tcase_add_test(probe, test_probe_rejects);
  suite_add_tcase(s, probe);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(input_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
