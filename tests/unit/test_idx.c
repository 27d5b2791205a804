#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"
#include "idx.h"

#define FMNIST "/usr/share/datasets/fashion-mnist"

/* main() makes basedir and removes it at the end, so a failed test (whose
 * process exits before its teardown) leaves nothing behind; each test has
 * its own tmpdir inside. */
static char basedir[PATH_MAX];
static char tmpdir[PATH_MAX];
static char errbuf[1024];

static void tmp_setup(void) {
  snprintf(tmpdir, sizeof(tmpdir), "%s/test-XXXXXX", basedir);
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tree(const char *dir) {
  char cmd[PATH_MAX + 16];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
}

static void tmp_teardown(void) {
  remove_tree(tmpdir);
}

static void tmp_path(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", tmpdir, name);
}

/* An IDX image of the given header; the data bytes follow a pattern that
 * depends on their position. */
struct blob {
  uint8_t *p;
  size_t n;
};

static uint8_t data_byte(size_t k) { return (uint8_t)(k * 13u + 5u); }

static struct blob make_idx(uint8_t dtype, int rank, const uint32_t *dims, size_t data_bytes) {
  struct blob b;

  b.n = 4 + 4 * (size_t)rank + data_bytes;
  b.p = malloc(b.n);
  ck_assert_ptr_nonnull(b.p);
  b.p[0] = 0;
  b.p[1] = 0;
  b.p[2] = dtype;
  b.p[3] = (uint8_t)rank;
  for (int i = 0; i < rank; i++) {
    uint8_t *d = b.p + 4 + 4 * i;
    d[0] = (uint8_t)(dims[i] >> 24);
    d[1] = (uint8_t)(dims[i] >> 16);
    d[2] = (uint8_t)(dims[i] >> 8);
    d[3] = (uint8_t)dims[i];
  }
  for (size_t k = 0; k < data_bytes; k++)
    b.p[4 + 4 * (size_t)rank + k] = data_byte(k);
  return b;
}

static void write_plain(const char *path, const void *p, size_t n) {
  FILE *f = fopen(path, "wb");

  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(p, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
}

/* One gzip member per part, appended (as `cat a.gz b.gz` would). */
static void write_gzip_parts(const char *path, const uint8_t *p, size_t n, int parts) {
  size_t per = n / (size_t)parts + 1, off = 0;

  unlink(path);
  for (int i = 0; i < parts && off < n; i++) {
    gzFile g = gzopen(path, "ab");
    size_t k = n - off < per ? n - off : per;
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(gzwrite(g, p + off, (unsigned)k), (int)k);
    ck_assert_int_eq(gzclose(g), Z_OK);
    off += k;
  }
}

static struct blob read_all(const char *path) {
  struct blob b = {NULL, 0};
  struct stat st;
  FILE *f = fopen(path, "rb");

  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fstat(fileno(f), &st), 0);
  b.n = (size_t)st.st_size;
  b.p = malloc(b.n + 1);
  ck_assert_ptr_nonnull(b.p);
  ck_assert_uint_eq(fread(b.p, 1, b.n, f), b.n);
  fclose(f);
  return b;
}

/* The load must fail with code and a message naming the file and holding
 * each of the given fragments. */
static void expect_fail(const char *path, uint64_t limit, uint64_t max_bytes, int code,
                        const char *frag1, const char *frag2) {
  td_idx x;

  memset(&x, 0xab, sizeof(x));
  errbuf[0] = '\0';
  ck_assert_int_eq(td_idx_load(path, limit, max_bytes, &x, errbuf, sizeof(errbuf)), code);
  ck_assert_msg(strstr(errbuf, path) == errbuf, "message does not name %s: %s", path, errbuf);
  if (frag1 != NULL)
    ck_assert_msg(strstr(errbuf, frag1) != NULL, "no '%s' in: %s", frag1, errbuf);
  if (frag2 != NULL)
    ck_assert_msg(strstr(errbuf, frag2) != NULL, "no '%s' in: %s", frag2, errbuf);
  ck_assert_uint_eq(x.count, 0xababababababababull); /* untouched on failure */
}

static void expect_blob_fail(const char *name, struct blob b, int code, const char *frag1,
                             const char *frag2) {
  char path[PATH_MAX];

  tmp_path(path, sizeof(path), name);
  write_plain(path, b.p, b.n);
  expect_fail(path, 0, 0, code, frag1, frag2);
}

START_TEST(test_fashion_mnist) {
  static const struct {
    const char *file;
    int rank;
    uint32_t n;
  } files[] = {
      {FMNIST "/train-images-idx3-ubyte.gz", 3, 60000},
      {FMNIST "/train-labels-idx1-ubyte.gz", 1, 60000},
      {FMNIST "/t10k-images-idx3-ubyte.gz", 3, 10000},
      {FMNIST "/t10k-labels-idx1-ubyte.gz", 1, 10000},
  };
  td_idx x, lim;

  if (access(FMNIST, R_OK) != 0) {
    fprintf(stderr, "test_idx: %s is missing (install dataset-fashion-mnist); "
                    "skipping the real-data test\n", FMNIST);
    return;
  }
  for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    ck_assert_msg(td_idx_load(files[i].file, 0, 0, &x, errbuf, sizeof(errbuf)) == 0, "%s",
                  errbuf);
    ck_assert_uint_eq(x.dtype, TD_IDX_UINT8);
    ck_assert_int_eq(x.rank, files[i].rank);
    ck_assert_uint_eq(x.dims[0], files[i].n);
    ck_assert_uint_eq(x.count, files[i].n);
    if (files[i].rank == 3) {
      ck_assert_uint_eq(x.dims[1], 28);
      ck_assert_uint_eq(x.dims[2], 28);
      ck_assert_uint_eq(x.item_bytes, 784);
    } else {
      uint32_t hist[10] = {0};
      ck_assert_uint_eq(x.item_bytes, 1);
      for (uint32_t k = 0; k < x.count; k++) {
        ck_assert_uint_lt(x.data[k], 10);
        hist[x.data[k]]++;
      }
      for (int c = 0; c < 10; c++) /* Fashion-MNIST is balanced */
        ck_assert_uint_eq(hist[c], files[i].n / 10);
    }
    ck_assert_uint_eq(x.bytes, (size_t)x.count * x.item_bytes);

    ck_assert_int_eq(td_idx_load(files[i].file, 123, 0, &lim, errbuf, sizeof(errbuf)), 0);
    ck_assert_uint_eq(lim.count, 123);
    ck_assert_uint_eq(lim.dims[0], files[i].n);
    ck_assert_uint_eq(lim.bytes, 123 * x.item_bytes);
    ck_assert_mem_eq(lim.data, x.data, lim.bytes);
    td_idx_free(&lim);
    td_idx_free(&x);
    ck_assert_ptr_null(x.data);
  }
  /* A bound below the file's size refuses it. */
  expect_fail(files[0].file, 0, 47040000 - 1, TD_EDATA, "at most 47039999 bytes", "47040000");
}
END_TEST

START_TEST(test_plain_gzip_and_limit) {
  static const uint32_t dims[] = {5, 3, 2};
  struct blob b = make_idx(TD_IDX_UINT8, 3, dims, 30);
  char path[PATH_MAX];
  td_idx x;

  for (int variant = 0; variant < 3; variant++) {
    tmp_path(path, sizeof(path), variant == 0 ? "plain.idx" : "data.idx.gz");
    if (variant == 0)
      write_plain(path, b.p, b.n);
    else
      write_gzip_parts(path, b.p, b.n, variant == 1 ? 1 : 3); /* 3: concatenated members */
    ck_assert_msg(td_idx_load(path, 0, 0, &x, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
    ck_assert_int_eq(x.rank, 3);
    ck_assert_uint_eq(x.dims[0], 5);
    ck_assert_uint_eq(x.dims[1], 3);
    ck_assert_uint_eq(x.dims[2], 2);
    ck_assert_uint_eq(x.count, 5);
    ck_assert_uint_eq(x.item_bytes, 6);
    ck_assert_uint_eq(x.bytes, 30);
    ck_assert_mem_eq(x.data, b.p + 16, 30);
    td_idx_free(&x);

    ck_assert_int_eq(td_idx_load(path, 2, 0, &x, errbuf, sizeof(errbuf)), 0);
    ck_assert_uint_eq(x.count, 2);
    ck_assert_uint_eq(x.bytes, 12);
    ck_assert_mem_eq(x.data, b.p + 16, 12);
    td_idx_free(&x);
    ck_assert_int_eq(td_idx_load(path, 1000, 0, &x, errbuf, sizeof(errbuf)), 0);
    ck_assert_uint_eq(x.count, 5);
    td_idx_free(&x);
  }
  td_idx_free(NULL);
  td_idx_free(&x);
  free(b.p);
}
END_TEST

START_TEST(test_truncated) {
  static const uint32_t dims[] = {4, 10};
  static const size_t cuts[] = {1, 3, 4, 5, 11, 12, 13, 20, 51};
  struct blob b = make_idx(TD_IDX_UINT8, 2, dims, 40); /* 52 bytes */
  char path[PATH_MAX], want[64];
  struct blob gz;

  tmp_path(path, sizeof(path), "cut.idx");
  for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
    write_plain(path, b.p, cuts[i]);
    snprintf(want, sizeof(want), "got %zu", cuts[i]);
    expect_fail(path, 0, 0, TD_EDATA, "truncated", want);
    /* Even when the limit needs only what is there. */
    expect_fail(path, 1, 0, TD_EDATA, "truncated", NULL);
  }
  /* Data truncation gives both counts. */
  write_plain(path, b.p, 30);
  expect_fail(path, 0, 0, TD_EDATA, "expected 52 bytes", "got 30");
  write_plain(path, b.p, 0);
  expect_fail(path, 0, 0, TD_EDATA, "empty file", NULL);

  /* A gzip stream cut anywhere: never a success, never a crash. */
  tmp_path(path, sizeof(path), "cut.idx.gz");
  write_gzip_parts(path, b.p, b.n, 1);
  gz = read_all(path);
  for (size_t cut = 2; cut < gz.n; cut++) {
    write_plain(path, gz.p, cut);
    expect_fail(path, 0, 0, TD_EDATA, NULL, NULL);
  }
  free(gz.p);
  free(b.p);
}
END_TEST

START_TEST(test_bad_headers) {
  static const uint32_t dims[] = {2, 3};
  static const uint32_t huge[] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 9};
  static const uint32_t zero[] = {2, 0};
  static const uint32_t big[] = {1000, 1000};
  static const struct {
    const char *name;
    uint8_t magic0, dtype;
    int rank;
    const uint32_t *dims;
    size_t data;
    const char *frag1, *frag2;
  } cases[] = {
      {"magic.idx", 1, TD_IDX_UINT8, 2, dims, 6, "bad magic at offset 0", "got 01 00"},
      {"dtype.idx", 0, 0x0D, 2, dims, 24, "data type at offset 2", "0x0d (float32)"},
      {"dtype2.idx", 0, 0x42, 2, dims, 6, "expected 0x08 (uint8)", "got 0x42"},
      {"rank0.idx", 0, TD_IDX_UINT8, 0, dims, 0, "rank at offset 3", "got 0"},
      {"rank5.idx", 0, TD_IDX_UINT8, 5, huge, 0, "rank at offset 3", "got 5"},
      {"zerodim.idx", 0, TD_IDX_UINT8, 2, zero, 0, "dimension 1 at offset 8", "got 0"},
      {"overflow.idx", 0, TD_IDX_UINT8, 4, huge, 0, "overflows", "4294967295"},
      /* fits 64 bits, not the default bound */
      {"toobig.idx", 0, TD_IDX_UINT8, 2, huge, 0, "too large", "18446744065119617025"},
  };
  struct blob b;
  char path[PATH_MAX];

  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    b = make_idx(cases[i].dtype, cases[i].rank, cases[i].dims, cases[i].data);
    b.p[0] = cases[i].magic0;
    expect_blob_fail(cases[i].name, b, TD_EDATA, cases[i].frag1, cases[i].frag2);
    free(b.p);
  }

  /* A header claiming more than max_bytes is refused before any data. */
  b = make_idx(TD_IDX_UINT8, 2, big, 0);
  tmp_path(path, sizeof(path), "claims.idx");
  write_plain(path, b.p, b.n);
  expect_fail(path, 0, 999999, TD_EDATA, "at most 999999 bytes", "got 1000000");
  expect_fail(path, 0, 1000000, TD_EDATA, "truncated", "expected 1000012 bytes");
  free(b.p);
}
END_TEST

START_TEST(test_trailing_and_corrupt) {
  static const uint32_t dims[] = {3, 4};
  struct blob b = make_idx(TD_IDX_UINT8, 2, dims, 12 + 3); /* 3 bytes too many */
  char path[PATH_MAX];
  struct blob gz;
  int failures = 0;

  expect_blob_fail("trail.idx", b, TD_EDATA, "trailing data at offset 24", "got 3 more bytes");
  tmp_path(path, sizeof(path), "trail.idx.gz");
  write_gzip_parts(path, b.p, b.n, 1);
  expect_fail(path, 0, 0, TD_EDATA, "trailing data at offset 24", "got 3 more bytes");
  b.n -= 3;

  /* Garbage after a valid gzip member. */
  write_gzip_parts(path, b.p, b.n, 1);
  gz = read_all(path);
  memcpy(gz.p + gz.n, "X", 1);
  write_plain(path, gz.p, gz.n + 1);
  expect_fail(path, 0, 0, TD_EDATA, "trailing garbage after the gzip stream", NULL);

  /* Flipped bits inside the deflate data or the trailer's CRC. */
  for (size_t k = 10; k < gz.n; k++) {
    td_idx x;
    gz.p[k] ^= 0x55;
    write_plain(path, gz.p, gz.n);
    if (td_idx_load(path, 0, 0, &x, errbuf, sizeof(errbuf)) == 0) {
      /* A flip may still decode to a valid IDX file only if the CRC
       * matched, which it cannot for changed output. */
      ck_assert_mem_eq(x.data, b.p + 12, 12);
      td_idx_free(&x);
    } else {
      ck_assert_msg(strstr(errbuf, path) == errbuf, "%s", errbuf);
      failures++;
    }
    gz.p[k] ^= 0x55;
  }
  ck_assert_int_gt(failures, 0);
  write_plain(path, gz.p, gz.n);
  gz.p[gz.n - 6] ^= 1; /* the CRC */
  write_plain(path, gz.p, gz.n);
  expect_fail(path, 0, 0, TD_EDATA, "corrupt gzip stream", "check");
  free(gz.p);
  free(b.p);
}
END_TEST

START_TEST(test_missing_and_unreadable) {
  char path[PATH_MAX];

  tmp_path(path, sizeof(path), "nope.idx");
  expect_fail(path, 0, 0, TD_ENOENT, "No such file", NULL);
  expect_fail(tmpdir, 0, 0, TD_EDATA, "directory", NULL);
}
END_TEST

static Suite *idx_suite(void) {
  Suite *s = suite_create("idx");
  TCase *tc = tcase_create("idx");

  tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_fashion_mnist);
  tcase_add_test(tc, test_plain_gzip_and_limit);
  tcase_add_test(tc, test_truncated);
  tcase_add_test(tc, test_bad_headers);
  tcase_add_test(tc, test_trailing_and_corrupt);
  tcase_add_test(tc, test_missing_and_unreadable);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(idx_suite());
  int failed;

  snprintf(basedir, sizeof(basedir), "/tmp/traind-test-idx-XXXXXX");
  if (mkdtemp(basedir) == NULL) {
    perror("mkdtemp");
    return EXIT_FAILURE;
  }
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  remove_tree(basedir);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
