/* The dataset readers (npy, CSV, raw, IDX through one front), random
 * access into gzip files, the submit-time check, the training order, the
 * shared cache, and the real traind-loader streaming, validating and
 * sharing. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "datafile.h"
#include "dataset.h"
#include "error.h"
#include "jobdesc.h"
#include "jobspec.h"
#include "ring.h"
#include "shmcache.h"

#define FMNIST "/usr/share/datasets/fashion-mnist"

static char basedir[PATH_MAX];
static char tmpdir[PATH_MAX];
static char errbuf[1024];

static void remove_tree(const char *dir) {
  char cmd[PATH_MAX + 16];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", dir);
}

static void tmp_setup(void) {
  snprintf(tmpdir, sizeof(tmpdir), "%s/test-XXXXXX", basedir);
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void tmp_teardown(void) { remove_tree(tmpdir); }

static const char *tmp_path(const char *name) {
  static char bufs[4][PATH_MAX];
  static int next;
  char *b = bufs[next++ % 4];

  snprintf(b, PATH_MAX, "%s/%s", tmpdir, name);
  return b;
}

static void write_file(const char *name, const void *p, size_t n) {
  FILE *f = fopen(tmp_path(name), "wb");

  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(p, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
}

/* parts gzip members, appended. */
static void write_gz(const char *name, const void *p, size_t n, int parts) {
  const char *path = tmp_path(name);
  size_t per = n / (size_t)parts + 1, off = 0;

  unlink(path);
  for (int i = 0; i < parts && off < n; i++) {
    gzFile g = gzopen(path, "ab1");
    size_t k = n - off < per ? n - off : per;
    ck_assert_ptr_nonnull(g);
    ck_assert_int_eq(gzwrite(g, (const uint8_t *)p + off, (unsigned)k), (int)k);
    ck_assert_int_eq(gzclose(g), Z_OK);
    off += k;
  }
}

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);

  ck_assert_ptr_nonnull(p);
  return p;
}

/* A .npy file: header dict for descr and shape, then data. */
static void write_npy(const char *name, const char *descr, const char *fortran,
                      const uint64_t *shape, int rank, const void *data, size_t bytes) {
  char dict[256], shp[128] = "";
  size_t n = 0, hlen, total;
  uint8_t *buf;

  for (int i = 0; i < rank; i++)
    n += (size_t)snprintf(shp + n, sizeof(shp) - n, "%s%llu", i ? ", " : "",
                          (unsigned long long)shape[i]);
  snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': %s, 'shape': (%s%s), }", descr,
           fortran, shp, rank == 1 ? "," : "");
  hlen = strlen(dict) + 1;
  hlen = (hlen + 10 + 63) / 64 * 64 - 10; /* numpy pads to 64 */
  total = 10 + hlen + bytes;
  buf = xmalloc(total);
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  buf[8] = (uint8_t)hlen;
  buf[9] = (uint8_t)(hlen >> 8);
  memset(buf + 10, ' ', hlen);
  memcpy(buf + 10, dict, strlen(dict));
  buf[10 + hlen - 1] = '\n';
  memcpy(buf + 10 + hlen, data, bytes);
  write_file(name, buf, total);
  free(buf);
}

static unsigned job_seed = 7;

/* A job over the files in tmpdir, with data section `data` (YAML lines
 * indented by 2) and a model of `input` and `classes`. */
static char *job_text(const char *input, uint32_t classes, const char *data, uint32_t batch,
                      uint32_t epochs) {
  static char text[4096];

  snprintf(text, sizeof(text),
           "model:\n"
           "  input: %s\n"
           "  layers:\n"
           "    - {type: dense, units: %u}\n"
           "data:\n%s"
           "train:\n"
           "  batch_size: %u\n"
           "  epochs: %u\n"
           "  seed: %u\n"
           "  optimizer: {type: sgd, lr: 0.1}\n",
           input, classes, data, batch, epochs, job_seed);
  return text;
}

static void parse_job(const char *text, td_jobspec *spec) {
  int rc = td_jobspec_parse(text, strlen(text), tmpdir, spec, errbuf, sizeof(errbuf));

  ck_assert_msg(rc == 0, "job: %s", errbuf);
}

/* The loader reads a job's description, as traind writes it (job.tdj). */
static void write_job(const char *text) {
  td_jobspec spec;

  parse_job(text, &spec);
  ck_assert_msg(td_jobdesc_save(tmp_path("job.tdj"), &spec, errbuf, sizeof(errbuf)) == 0, "%s",
                errbuf);
}

/* The check fails with code, naming the file and each fragment. */
static void expect_check_fail(const td_jobspec *spec, int code, const char *file, const char *f1,
                              const char *f2) {
  int rc = td_dataset_check(spec, errbuf, sizeof(errbuf));

  ck_assert_msg(rc == code, "rc %s (%s)", td_err_name(rc), errbuf);
  if (file != NULL)
    ck_assert_msg(strstr(errbuf, tmp_path(file)) == errbuf, "no '%s' first: %s", file, errbuf);
  ck_assert_msg(f1 == NULL || strstr(errbuf, f1) != NULL, "no '%s' in: %s", f1, errbuf);
  ck_assert_msg(f2 == NULL || strstr(errbuf, f2) != NULL, "no '%s' in: %s", f2, errbuf);
}

/* Load a split whole, expecting success. */
static void load_all(const td_jobspec *spec, td_split_which w, int threads, uint8_t **samples,
                     int32_t **labels, uint64_t *count) {
  uint32_t classes = td_jobspec_classes(spec);
  td_split *s;
  int rc;

  ck_assert_msg(td_split_open(spec, w, &s, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  if (td_split_count(s) == UINT64_MAX)
    ck_assert_msg(td_split_scan(s, 0, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  *count = td_split_count(s);
  *samples = xmalloc(*count * td_split_sample_bytes(s));
  *labels = xmalloc(*count * sizeof(**labels));
  rc = td_split_load(s, *samples, *labels, classes, threads, errbuf, sizeof(errbuf));
  ck_assert_msg(rc == 0, "load: %s", errbuf);
  td_split_close(s);
}

static int load_fails(const td_jobspec *spec, const char *f1, const char *f2) {
  td_split *s;
  uint8_t *x;
  int32_t *y;
  int rc;

  errbuf[0] = '\0';
  if ((rc = td_split_open(spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf))) == 0) {
    if (td_split_count(s) == UINT64_MAX)
      rc = td_split_scan(s, 0, errbuf, sizeof(errbuf));
    if (rc == 0) {
      x = xmalloc(td_split_count(s) * td_split_sample_bytes(s));
      y = xmalloc(td_split_count(s) * td_target_bytes(td_split_target(s)));
      rc = td_split_load(s, x, y, td_jobspec_classes(spec), 2, errbuf, sizeof(errbuf));
      free(x);
      free(y);
    }
    td_split_close(s);
  }
  ck_assert_msg(rc < 0, "no failure");
  ck_assert_msg(f1 == NULL || strstr(errbuf, f1) != NULL, "no '%s' in: %s", f1, errbuf);
  ck_assert_msg(f2 == NULL || strstr(errbuf, f2) != NULL, "no '%s' in: %s", f2, errbuf);
  return rc;
}

#define NPY_N 50

static const char *NPY_DATA =
    "  format: npy\n"
    "  train: {images: x.npy, labels: y.npy}\n"
    "  test: {images: x.npy, labels: y.npy}\n";

START_TEST(test_npy_formats) {
  static const struct {
    const char *descr;
    td_dtype dtype;
  } kinds[] = {{"|u1", TD_DTYPE_U8}, {"<i4", TD_DTYPE_I32}, {"<f2", TD_DTYPE_F16},
               {"<f4", TD_DTYPE_F32}};
  static const char *label_descr[] = {"|u1", "<i4", "<i8"};
  uint64_t shape[] = {NPY_N, 4, 4}, lshape[] = {NPY_N}, count;
  td_jobspec spec;
  uint8_t *x;
  int32_t *y;

  parse_job(job_text("[4, 4]", 10, NPY_DATA, 8, 1), &spec);
  for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
    size_t es = td_dtype_size(kinds[k].dtype), sb = 16 * es;
    uint8_t *data = xmalloc(NPY_N * sb), *lab = xmalloc(NPY_N * 8);
    size_t ls = k % 3 == 0 ? 1 : k % 3 == 1 ? 4 : 8;

    for (size_t i = 0; i < NPY_N * sb; i++)
      data[i] = (uint8_t)(i * 7 + k);
    if (kinds[k].dtype == TD_DTYPE_F32)
      for (size_t i = 0; i < NPY_N * 16; i++) {
        float v = (float)i * 0.5f - 3.0f;
        memcpy(data + 4 * i, &v, 4);
      }
    if (kinds[k].dtype == TD_DTYPE_F16)
      for (size_t i = 0; i < NPY_N * 16; i++) /* small finite halfs */
        data[2 * i + 1] = (uint8_t)(data[2 * i + 1] & 0x3f);
    memset(lab, 0, NPY_N * 8);
    for (size_t i = 0; i < NPY_N; i++)
      lab[i * ls] = (uint8_t)(i % 10);
    write_npy("x.npy", kinds[k].descr, "False", shape, 3, data, NPY_N * sb);
    write_npy("y.npy", label_descr[k % 3], "False", lshape, 1, lab, NPY_N * ls);
    ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
    load_all(&spec, TD_SPLIT_TRAIN, 3, &x, &y, &count);
    ck_assert_uint_eq(count, NPY_N);
    ck_assert_mem_eq(x, data, NPY_N * sb);
    for (size_t i = 0; i < NPY_N; i++)
      ck_assert_uint_eq(y[i], i % 10);
    {
      td_dataset_info info;
      ck_assert_int_eq(td_dataset_probe(&spec, &info, errbuf, sizeof(errbuf)), 0);
      ck_assert_int_eq(info.dtype, kinds[k].dtype);
      ck_assert_uint_eq(info.sample_bytes, sb);
    }
    free(x);
    free(y);
    free(data);
    free(lab);
  }
  /* (N, 16) is the same sample as (N, 4, 4). */
  {
    uint64_t flat[] = {NPY_N, 16};
    uint8_t data[NPY_N * 16] = {0}, lab[NPY_N] = {0};
    write_npy("x.npy", "|u1", "False", flat, 2, data, sizeof(data));
    write_npy("y.npy", "|u1", "False", lshape, 1, lab, sizeof(lab));
    ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  }
}
END_TEST

START_TEST(test_npy_errors) {
  uint64_t shape[] = {NPY_N, 4, 4}, lshape[] = {NPY_N}, bad[] = {NPY_N, 5, 5},
           short_l[] = {NPY_N - 1};
  static float data[NPY_N * 32];
  static uint8_t lab[NPY_N * 8];
  td_jobspec spec;

  parse_job(job_text("[4, 4]", 10, NPY_DATA, 8, 1), &spec);
  write_npy("y.npy", "|u1", "False", lshape, 1, lab, NPY_N);

  write_npy("x.npy", "<f4", "True", shape, 3, data, NPY_N * 64);
  expect_check_fail(&spec, TD_EDATA, "x.npy", "Fortran", "offset");
  write_npy("x.npy", ">f4", "False", shape, 3, data, NPY_N * 64);
  expect_check_fail(&spec, TD_EDATA, "x.npy", "big-endian", "'>f4'");
  write_npy("x.npy", "<c8", "False", shape, 3, data, NPY_N * 128);
  expect_check_fail(&spec, TD_EDATA, "x.npy", "unsupported dtype", "'<c8'");
  write_npy("x.npy", "<f4", "False", bad, 3, data, NPY_N * 100);
  expect_check_fail(&spec, TD_EDATA, "x.npy", "expected (N, 4 x 4)", "got (50, 5, 5)");
  write_npy("x.npy", "<f4", "False", shape, 3, data, NPY_N * 64 - 3); /* truncated */
  expect_check_fail(&spec, TD_EDATA, "x.npy", "truncated at offset", "expected");
  write_npy("x.npy", "<f4", "False", shape, 3, data, NPY_N * 64 + 2);
  expect_check_fail(&spec, TD_EDATA, "x.npy", "trailing data", NULL);
  write_file("x.npy", "\x93NUMPX\x01\x00", 8);
  expect_check_fail(&spec, TD_EDATA, "x.npy", "bad magic at offset 0", NULL);
  write_file("x.npy", "\x93NUMPY\x01\x00\x40\x00{'descr':", 19);
  expect_check_fail(&spec, TD_EDATA, "x.npy", "truncated", "header");
  /* Hostile headers: never a crash, always a message. */
  {
    static const char *dicts[] = {
        "{'descr': '<f4', 'fortran_order': False}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (50, 4, 4), 'x': 1}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': ()}",
        "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (50, 16)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (50, 4, 0)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 4, 5, 6, 7, 8, 9)}",
        "['descr']",
        "",
        /* Quoted in the message: shown as one printable line. */
        "{'descr': '<f\x01\x1b[31m\n\xff', 'fortran_order': False, 'shape': (50, 16)}",
    };
    for (size_t i = 0; i < sizeof(dicts) / sizeof(dicts[0]); i++) {
      uint8_t buf[256] = "\x93NUMPY\x01\x00";
      size_t n = strlen(dicts[i]);
      buf[8] = (uint8_t)n;
      memcpy(buf + 10, dicts[i], n);
      write_file("x.npy", buf, 10 + n);
      ck_assert_int_eq(td_dataset_check(&spec, errbuf, sizeof(errbuf)), TD_EDATA);
      ck_assert_msg(strstr(errbuf, "x.npy: ") != NULL, "%s", errbuf);
      for (const char *p = errbuf; *p != '\0'; p++)
        ck_assert_msg(*p >= 0x20 && *p < 0x7f, "byte %02x in: %s", (unsigned char)*p, errbuf);
    }
  }
  /* Labels: their count, type and range. */
  write_npy("x.npy", "<f4", "False", shape, 3, data, NPY_N * 64);
  write_npy("y.npy", "|u1", "False", short_l, 1, lab, NPY_N - 1);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "expected 50 labels", "got (49,)");
  write_npy("y.npy", "<f4", "False", lshape, 1, data, NPY_N * 4);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "cross_entropy takes class integers",
                    "holds float targets");
  lab[3 * 8] = 12;
  write_npy("y.npy", "<i8", "False", lshape, 1, lab, NPY_N * 8);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "label at index 3 is 12", "10 classes");
  memset(lab, 0xff, 8);
  write_npy("y.npy", "<i8", "False", lshape, 1, lab, NPY_N * 8);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "label at index 0 is -1", NULL);
  memset(lab, 0, sizeof(lab));
  write_npy("y.npy", "|u1", "False", lshape, 1, lab, NPY_N);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);

  /* A NaN is caught when the data is decoded. */
  data[5 * 16 + 3] = NAN;
  write_npy("x.npy", "<f4", "False", shape, 3, data, NPY_N * 64);
  load_fails(&spec, "sample 5 element 3", "NaN");
  data[5 * 16 + 3] = 0;
  data[7 * 16] = INFINITY;
  write_npy("x.npy", "<f4", "False", shape, 3, data, NPY_N * 64);
  load_fails(&spec, "sample 7 element 0", "infinity");

  /* A missing file. */
  unlink(tmp_path("y.npy"));
  expect_check_fail(&spec, TD_EDATA, "y.npy", "No such file", NULL);
}
END_TEST

/* numpy's default types: float64 and int64 samples are read as float32 and
 * int32 (as C's casts convert), whole, in ranges and from gzip; what the
 * narrower type cannot hold is refused naming the sample. */
START_TEST(test_npy_wide) {
  uint64_t shape[] = {NPY_N, 4, 4}, lshape[] = {NPY_N};
  static double d[NPY_N * 16];
  static int64_t q[NPY_N * 16], lab[NPY_N];
  static float wantf[NPY_N * 16];
  static int32_t wanti[NPY_N * 16];
  /* exact in float32, then ones the cast rounds (ties to even) */
  static const double special[] = {0.5, -3.0, 0x1p-149, FLT_MAX, -FLT_MAX, 0.1, -0.1,
                                   1.0 + 0x1p-24, 1.0 + 0x1p-23 + 0x1p-24, 1e-300,
                                   0x1.fffffefffffffp127, 16777217.0, 3.141592653589793};
  td_jobspec spec;
  td_dataset_info info;
  uint8_t *x;
  int32_t *y;
  uint64_t count;

  parse_job(job_text("[4, 4]", 10, NPY_DATA, 8, 1), &spec);
  for (size_t i = 0; i < NPY_N * 16; i++) {
    d[i] = i < sizeof(special) / sizeof(special[0]) ? special[i] : (double)i * 0.37 - 50.0;
    wantf[i] = (float)d[i];
    q[i] = i < 4 ? (int64_t[]){INT32_MIN, INT32_MAX, -1, 0}[i] : (int64_t)i * 1000003 - 7;
    wanti[i] = (int32_t)q[i];
  }
  ck_assert(wantf[0] == 0.5f && wantf[3] == FLT_MAX && wantf[7] == 1.0f);
  ck_assert(wantf[8] == 1.0f + 0x1p-22f && wantf[10] == FLT_MAX && wantf[11] == 16777216.0f);
  for (size_t i = 0; i < NPY_N; i++)
    lab[i] = (int64_t)(i % 10);
  write_npy("y.npy", "<i8", "False", lshape, 1, lab, sizeof(lab));

  for (int k = 0; k < 2; k++) {
    const void *want = k == 0 ? (const void *)wantf : (const void *)wanti;
    td_split *s;

    write_npy("x.npy", k == 0 ? "<f8" : "<i8", "False", shape, 3, k == 0 ? (void *)d : (void *)q,
              sizeof(d));
    ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
    ck_assert_int_eq(td_dataset_probe(&spec, &info, errbuf, sizeof(errbuf)), 0);
    ck_assert_int_eq(info.dtype, k == 0 ? TD_DTYPE_F32 : TD_DTYPE_I32);
    ck_assert_uint_eq(info.sample_bytes, 16 * 4);
    load_all(&spec, TD_SPLIT_TRAIN, 3, &x, &y, &count);
    ck_assert_uint_eq(count, NPY_N);
    ck_assert_mem_eq(x, want, NPY_N * 64);
    for (size_t i = 0; i < NPY_N; i++)
      ck_assert_uint_eq(y[i], i % 10);
    /* A range, as the loader streams. */
    ck_assert_int_eq(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)), 0);
    ck_assert_msg(td_split_read(s, 7, 11, x, y, 10, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
    ck_assert_mem_eq(x, (const uint8_t *)want + 7 * 64, 11 * 64);
    ck_assert_uint_eq(y[0], 7);
    td_split_close(s);
    free(x);
    free(y);
  }

  /* gzip: the whole-file load decodes front to back, converting as it goes. */
  {
    static uint8_t buf[128 + sizeof(d)];
    struct stat st;
    FILE *f;
    size_t n;

    write_npy("x.npy", "<f8", "False", shape, 3, d, sizeof(d));
    ck_assert_int_eq(stat(tmp_path("x.npy"), &st), 0);
    ck_assert_uint_le((size_t)st.st_size, sizeof(buf));
    f = fopen(tmp_path("x.npy"), "rb");
    ck_assert_ptr_nonnull(f);
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    write_gz("x.npy", buf, n, 2);
    load_all(&spec, TD_SPLIT_TRAIN, 2, &x, &y, &count);
    ck_assert_mem_eq(x, wantf, NPY_N * 64);
    free(x);
    free(y);
  }

  /* What float32 or int32 cannot hold, named by sample, element and offset
   * (the data starts at 128: the header is padded to 64). */
  d[5 * 16 + 3] = NAN;
  write_npy("x.npy", "<f8", "False", shape, 3, d, sizeof(d));
  load_fails(&spec, "sample 5 element 3 at offset 792", "finite number, got NaN");
  d[5 * 16 + 3] = -INFINITY;
  write_npy("x.npy", "<f8", "False", shape, 3, d, sizeof(d));
  load_fails(&spec, "sample 5 element 3", "got infinity");
  d[5 * 16 + 3] = 1e39;
  write_npy("x.npy", "<f8", "False", shape, 3, d, sizeof(d));
  load_fails(&spec, "sample 5 element 3", "fits float32");
  load_fails(&spec, "x.npy", "got 1e+39");
  d[5 * 16 + 3] = -0x1.ffffffp127; /* rounds to -infinity */
  write_npy("x.npy", "<f8", "False", shape, 3, d, sizeof(d));
  load_fails(&spec, "sample 5 element 3", "fits float32");
  q[9 * 16 + 15] = (int64_t)INT32_MAX + 1;
  write_npy("x.npy", "<i8", "False", shape, 3, q, sizeof(q));
  load_fails(&spec, "sample 9 element 15 at offset 1400", "got 2147483648");
  q[9 * 16 + 15] = INT64_MIN;
  write_npy("x.npy", "<i8", "False", shape, 3, q, sizeof(q));
  load_fails(&spec, "sample 9 element 15", "fits int32");

  /* Big-endian is refused with the fix; float labels are not classes. */
  write_npy("x.npy", ">f8", "False", shape, 3, d, sizeof(d));
  expect_check_fail(&spec, TD_EDATA, "x.npy", "big-endian", "astype('<f8')");
  write_npy("x.npy", "<f4", "False", shape, 3, wantf, sizeof(wantf));
  write_npy("y.npy", "<f8", "False", lshape, 1, d, NPY_N * 8);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "cross_entropy takes class integers",
                    "holds float targets");
  /* int64 labels: out of the classes, negative, or beyond a long long's sign. */
  lab[17] = 10;
  write_npy("y.npy", "<i8", "False", lshape, 1, lab, sizeof(lab));
  expect_check_fail(&spec, TD_EDATA, "y.npy", "label at index 17 is 10", "10 classes");
  lab[17] = INT64_MIN;
  write_npy("y.npy", "<i8", "False", lshape, 1, lab, sizeof(lab));
  expect_check_fail(&spec, TD_EDATA, "y.npy", "label at index 17 is -9223372036854775808",
                    NULL);
}
END_TEST

/* CSV text of n rows of 4 values, label in column lc, pattern by row. */
static char *make_csv(uint32_t n, uint32_t lc, int header, int crlf, int ints) {
  size_t cap = 64 + (size_t)n * 80, len = 0;
  char *t = xmalloc(cap);

  if (header)
    len += (size_t)snprintf(t + len, cap - len, "%s%s", lc == 0 ? "label,a,b,c,d" : "a,b,c,d,label",
                            crlf ? "\r\n" : "\n");
  for (uint32_t i = 0; i < n; i++) {
    for (uint32_t c = 0; c < 5; c++) {
      const char *sep = c == 4 ? (crlf ? "\r\n" : "\n") : ",";
      if (c == lc)
        len += (size_t)snprintf(t + len, cap - len, "%u%s", i % 7, sep);
      else if (ints)
        len += (size_t)snprintf(t + len, cap - len, "%u%s", (i * 3 + c) % 256, sep);
      else
        len += (size_t)snprintf(t + len, cap - len, " %.3f%s", (double)i * 0.25 - (double)c, sep);
    }
  }
  return t;
}

static const char *csv_data(char *buf, size_t cap, uint32_t lc, int header, const char *dtype) {
  snprintf(buf, cap,
           "  format: csv\n"
           "  train: {images: d.csv}\n"
           "  test: {images: d.csv}\n"
           "  csv: {label_column: %u, header: %s, dtype: %s}\n",
           lc, header ? "true" : "false", dtype);
  return buf;
}

START_TEST(test_csv) {
  char data[512], *t;
  td_jobspec spec;
  uint8_t *x;
  int32_t *y;
  uint64_t count;

  for (int variant = 0; variant < 6; variant++) {
    uint32_t lc = variant % 2 ? 4 : 0, n = variant >= 4 ? 5000 : 40;
    int header = variant == 1 || variant == 2, crlf = variant == 2, ints = variant == 3;

    t = make_csv(n, lc, header, crlf, ints);
    if (variant == 5)
      write_gz("d.csv", t, strlen(t), 3);
    else
      write_file("d.csv", t, strlen(t));
    parse_job(job_text("[4]", 7, csv_data(data, sizeof(data), lc, header,
                                           ints ? "uint8" : "float32"), 8, 1), &spec);
    ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%d: %s", variant,
                  errbuf);
    load_all(&spec, TD_SPLIT_TRAIN, 4, &x, &y, &count);
    ck_assert_uint_eq(count, n);
    for (uint32_t i = 0; i < n; i++) {
      ck_assert_uint_eq(y[i], i % 7);
      for (uint32_t c = 0, k = 0; c < 5; c++) {
        if (c == lc)
          continue;
        if (ints) {
          ck_assert_uint_eq(x[i * 4 + k], (i * 3 + c) % 256);
        } else {
          float v;
          memcpy(&v, x + (i * 4 + k) * 4, 4);
          ck_assert_msg(v == (float)((double)i * 0.25 - (double)c), "row %u col %u: %g", i, c,
                        (double)v);
        }
        k++;
      }
    }
    free(x);
    free(y);
    free(t);
  }
  /* A limit keeps the first lines. */
  t = make_csv(3000, 0, 0, 0, 0);
  write_file("d.csv", t, strlen(t));
  free(t);
  parse_job(job_text("[4]", 7,
                     "  format: csv\n  train: {images: d.csv, limit: 2100}\n"
                     "  test: {images: d.csv}\n", 8, 1), &spec);
  load_all(&spec, TD_SPLIT_TRAIN, 2, &x, &y, &count);
  ck_assert_uint_eq(count, 2100);
  ck_assert_uint_eq(y[2099], 2099 % 7);
  free(x);
  free(y);
}
END_TEST

START_TEST(test_csv_errors) {
  static const struct {
    const char *text;
    const char *f1, *f2;
    int at_check; /* found by the submit check (else by the load) */
  } cases[] = {
      {"label,a,b,c,d\n1,2,3,4,5\n", "line 1 at offset 0: expected numbers", "header: true", 1},
      {"1,2,3,4,5\n2,3,4,5\n", "line 2 at offset 10: expected 5 columns, got 4", NULL, 1},
      {"1,2,3,4,5\n2,3,x,5,6\n", "line 2 column 3 at offset 14", "got 'x'", 1},
      {"1,2,3,4,5\n2,3,,5,6\n", "line 2 column 3", "expected a number, got ''", 1},
      {"1,2,3,4,5\n9,3,4,5,6\n", "label is 9", "7 classes", 1},
      {"1.5,2,3,4,5\n", "line 1 column 1", "class label", 1},
      {"1,2,3,4,5,6\n", "expected 5 columns", "got 6", 1},
      {"1,2,3,4,1e99\n", "column 5", "finite float32", 1},
      {"1,2,3,4,5\n1,2,3,4,\"5\"\n", "line 2 column 5", "'\"5\"'", 1},
      {"", "no samples", NULL, 1},
  };
  char data[512];
  td_jobspec spec;

  parse_job(job_text("[4]", 7, csv_data(data, sizeof(data), 0, 0, "float32"), 8, 1), &spec);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    write_file("d.csv", cases[i].text, strlen(cases[i].text));
    expect_check_fail(&spec, TD_EDATA, "d.csv", cases[i].f1, cases[i].f2);
  }
  /* Past the check's first 64 KiB: found when loading, with the line. */
  {
    char *t = make_csv(5000, 0, 0, 0, 0), *bad = t;
    for (int i = 0; i < 4321; i++)
      bad = strchr(bad, '\n') + 1;
    bad[0] = '8'; /* label 8 in the line of row 4321 */
    write_file("d.csv", t, strlen(t));
    ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
    load_fails(&spec, "line 4322: label at index 4321 is 8", "7 classes");
    free(t);
  }
  /* uint8 values must be integers 0..255. */
  parse_job(job_text("[4]", 7, csv_data(data, sizeof(data), 0, 0, "uint8"), 8, 1), &spec);
  write_file("d.csv", "1,2,3,4,256\n", 12);
  expect_check_fail(&spec, TD_EDATA, "d.csv", "0..255", "'256'");
  write_file("d.csv", "1,2,3,4,2.5\n", 12);
  expect_check_fail(&spec, TD_EDATA, "d.csv", "0..255", "'2.5'");
}
END_TEST

START_TEST(test_raw) {
  /* Records: [pad 2][sample 4x4 uint8 ... as float32][label int32] with a
   * 16-byte header; and a CIFAR-like label-first layout. */
  const uint32_t n = 300;
  const size_t rec = 2 + 64 + 4;
  uint8_t *buf = xmalloc(16 + n * rec), *x;
  int32_t *y;
  td_jobspec spec;
  uint64_t count;

  memset(buf, 0xee, 16);
  for (uint32_t i = 0; i < n; i++) {
    uint8_t *r = buf + 16 + i * rec;
    int32_t label = (int32_t)(i % 5);
    r[0] = r[1] = 0xaa;
    for (int k = 0; k < 16; k++) {
      float v = (float)(i + (uint32_t)k);
      memcpy(r + 2 + 4 * k, &v, 4);
    }
    memcpy(r + 66, &label, 4);
  }
  write_file("d.raw", buf, 16 + n * rec);
  parse_job(job_text("[16]", 5,
                     "  format: raw\n  train: {images: d.raw}\n  test: {images: d.raw}\n"
                     "  raw: {record_shape: [4, 4], dtype: float32, label_dtype: int32,\n"
                     "        label_offset: 66, sample_offset: 2, record_bytes: 70,\n"
                     "        header_bytes: 16}\n", 8, 1), &spec);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  for (int gz = 0; gz < 2; gz++) {
    if (gz)
      write_gz("d.raw", buf, 16 + n * rec, 2);
    load_all(&spec, TD_SPLIT_TEST, 2, &x, &y, &count);
    ck_assert_uint_eq(count, n);
    for (uint32_t i = 0; i < n; i++) {
      float v;
      memcpy(&v, x + i * 64 + 4 * 3, 4);
      ck_assert(v == (float)(i + 3));
      ck_assert_uint_eq(y[i], i % 5);
    }
    free(x);
    free(y);
  }

  /* A cut record is refused at submit, with where and why. */
  write_file("d.raw", buf, 16 + n * rec - 7);
  expect_check_fail(&spec, TD_EDATA, "d.raw", "truncated record at offset 20946",
                    "expected whole 70-byte records");
  /* A label out of range is found by the check (first MiB). */
  buf[16 + 10 * rec + 66] = 9;
  write_file("d.raw", buf, 16 + n * rec);
  expect_check_fail(&spec, TD_EDATA, "d.raw", "label at index 10 is 9", "5 classes");
  free(buf);

  /* Label first, packed, uint8 (CIFAR-10's layout). */
  {
    uint8_t cifar[3 * 17];
    for (int i = 0; i < 3; i++) {
      cifar[i * 17] = (uint8_t)(2 - i);
      for (int k = 0; k < 16; k++)
        cifar[i * 17 + 1 + k] = (uint8_t)(i * 16 + k);
    }
    write_file("c.raw", cifar, sizeof(cifar));
    parse_job(job_text("[16]", 3,
                       "  format: raw\n  train: {images: c.raw}\n  test: {images: c.raw}\n"
                       "  raw: {record_shape: [16], dtype: uint8}\n", 8, 1), &spec);
    ck_assert_uint_eq(spec.raw.sample_offset, 1);
    ck_assert_uint_eq(spec.raw.record_bytes, 17);
    load_all(&spec, TD_SPLIT_TRAIN, 1, &x, &y, &count);
    ck_assert_uint_eq(count, 3);
    ck_assert_uint_eq(y[0], 2);
    ck_assert_uint_eq(x[2 * 16 + 5], 37);
    free(x);
    free(y);
  }
}
END_TEST

START_TEST(test_jobspec_data_keys) {
  static const struct {
    const char *data, *frag;
  } bad[] = {
      {"  format: npy\n  train: {images: a}\n  test: {images: a, labels: b}\n",
       "'data.train.labels' is required (format npy)"},
      {"  format: csv\n  train: {images: a, labels: b}\n  test: {images: a}\n",
       "'data.train.labels': a csv file holds its own labels"},
      {"  format: idx\n  train: {images: a, labels: b}\n  test: {images: a, labels: b}\n"
       "  csv: {header: true}\n", "'data.csv' applies only to format csv"},
      {"  format: raw\n  train: {images: a}\n  test: {images: a}\n",
       "'data.raw' is required with format raw"},
      {"  format: raw\n  train: {images: a}\n  test: {images: a}\n"
       "  raw: {record_shape: [3, 3], dtype: uint8}\n", "a record holds 9 elements"},
      {"  format: raw\n  train: {images: a}\n  test: {images: a}\n"
       "  raw: {record_shape: [4], dtype: uint8, label_offset: 2, sample_offset: 0}\n",
       "overlaps the sample"},
      {"  format: raw\n  train: {images: a}\n  test: {images: a}\n"
       "  raw: {record_shape: [4], dtype: float16, record_bytes: 8}\n",
       "cannot hold the label"},
      {"  format: idx\n  train: {images: a, labels: b}\n  test: {images: a, labels: b}\n"
       "  validation: {fraction: 0.1, count: 5}\n", "fraction or count, not both"},
      {"  format: idx\n  train: {images: a, labels: b}\n  test: {images: a, labels: b}\n"
       "  validation: {fraction: 1.0}\n", "'data.validation.fraction'"},
      {"  format: csv\n  train: {images: a}\n  test: {images: a}\n  csv: {dtype: int32}\n",
       "must be one of float32, uint8"},
      {"  format: csv\n  train: {images: a}\n  test: {images: a}\n  csv: {header: yes}\n",
       "must be one of false, true"},
  };
  td_jobspec spec;

  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    const char *text = job_text("[4]", 3, bad[i].data, 8, 1);
    int rc = td_jobspec_parse(text, strlen(text), "/b", &spec, errbuf, sizeof(errbuf));
    ck_assert_msg(rc == TD_EJOBSPEC, "case %zu accepted", i);
    ck_assert_msg(strstr(errbuf, bad[i].frag) != NULL, "case %zu: '%s' not in '%s'", i,
                  bad[i].frag, errbuf);
    ck_assert_msg(strncmp(errbuf, "line ", 5) == 0, "no line: %s", errbuf);
  }
  parse_job(job_text("[4]", 3,
                     "  format: csv\n  train: {images: a}\n  test: {images: a}\n"
                     "  validation: {count: 500}\n  shuffle_window: 4096\n", 8, 1), &spec);
  ck_assert_int_eq(spec.format, TD_DATA_CSV);
  ck_assert_uint_eq(spec.val_count, 500);
  ck_assert_uint_eq(spec.shuffle_window, 4096);
  ck_assert_int_eq(spec.csv.dtype, TD_DTYPE_F32);
  ck_assert_int_eq(spec.csv.header, 0);
}
END_TEST

/* Random access into a gzip stream (several members) matches the data. */
START_TEST(test_gzip_random_access) {
  const size_t n = 3u << 20;
  uint8_t *data = xmalloc(n), *got = xmalloc(70000);
  uint64_t seed = 12345;
  td_dfile *f;
  td_dcur *c;
  size_t k;

  for (size_t i = 0; i < n; i++) { /* compressible, never constant */
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    data[i] = (uint8_t)((i / 97) ^ (seed >> 60));
  }
  write_gz("r.gz", data, n, 3);
  ck_assert_int_eq(td_dfile_open(tmp_path("r.gz"), &f, errbuf, sizeof(errbuf)), 0);
  ck_assert(td_dfile_is_gzip(f));
  ck_assert_uint_eq(td_dfile_size(f), UINT64_MAX);
  ck_assert_msg(td_dfile_scan(f, 256 << 10, 100, NULL, NULL, errbuf, sizeof(errbuf)) == 0, "%s",
                errbuf);
  ck_assert_uint_eq(td_dfile_size(f), n);
  ck_assert_uint_gt(td_dfile_index_bytes(f), 4 * TD_DFILE_WINDOW); /* several points */
  ck_assert_uint_lt(td_dfile_index_bytes(f), 20 * (TD_DFILE_WINDOW + 64));
  for (int t = 0; t < 40; t++) {
    uint64_t off = (uint64_t)t * 78901 % n, len = 1 + (uint64_t)t * 1733 % 70000;
    ck_assert_int_eq(td_dcur_open(f, off, &c, errbuf, sizeof(errbuf)), 0);
    ck_assert_int_eq(td_dcur_read(c, got, len, &k), 0);
    ck_assert_uint_eq(k, off + len <= n ? len : n - off);
    ck_assert_mem_eq(got, data + off, k);
    ck_assert_int_eq(td_dcur_expect_end(c), off + len >= n ? 0 : TD_EDATA);
    td_dcur_close(c);
  }
  td_dfile_close(f);

  /* A cut or corrupt stream fails the scan. */
  {
    FILE *fp = fopen(tmp_path("r.gz"), "rb");
    uint8_t *gz = xmalloc(n);
    size_t gn = fread(gz, 1, n, fp);
    fclose(fp);
    write_file("cut.gz", gz, gn / 2);
    ck_assert_int_eq(td_dfile_open(tmp_path("cut.gz"), &f, errbuf, sizeof(errbuf)), 0);
    ck_assert_int_eq(td_dfile_scan(f, 1 << 20, 10, NULL, NULL, errbuf, sizeof(errbuf)),
                     TD_EDATA);
    ck_assert_msg(strstr(errbuf, "truncated gzip stream") != NULL, "%s", errbuf);
    td_dfile_close(f);
    gz[gn - 6] ^= 1; /* the last member's CRC */
    write_file("crc.gz", gz, gn);
    ck_assert_int_eq(td_dfile_open(tmp_path("crc.gz"), &f, errbuf, sizeof(errbuf)), 0);
    ck_assert_int_eq(td_dfile_scan(f, 1 << 20, 10, NULL, NULL, errbuf, sizeof(errbuf)),
                     TD_EDATA);
    ck_assert_msg(strstr(errbuf, "corrupt gzip stream") != NULL, "%s", errbuf);
    td_dfile_close(f);
    free(gz);
  }
  free(data);
  free(got);
}
END_TEST

/* An IDX split read from anywhere after a scan equals the whole load. */
START_TEST(test_idx_split_random) {
  const uint32_t n = 6000, side = 16;
  size_t sb = side * side;
  uint8_t *im = xmalloc(16 + n * sb), lb[8 + 6000], *x, *part = xmalloc(500 * sb);
  int32_t *y, plb[500];
  td_jobspec spec;
  uint64_t count;
  td_split *s;

  memcpy(im, "\0\0\x08\x03\0\0\x17\x70\0\0\0\x10\0\0\0\x10", 16);
  memcpy(lb, "\0\0\x08\x01\0\0\x17\x70", 8);
  for (size_t i = 0; i < n * sb; i++)
    im[16 + i] = (uint8_t)(i / 61 + i % 13);
  for (uint32_t i = 0; i < n; i++)
    lb[8 + i] = (uint8_t)(i % 3);
  write_gz("i.gz", im, 16 + n * sb, 1);
  write_gz("l.gz", lb, 8 + n, 1);
  parse_job(job_text("[16, 16]", 3,
                     "  train: {images: i.gz, labels: l.gz}\n  test: {images: i.gz, labels: l.gz}\n",
                     8, 1), &spec);
  load_all(&spec, TD_SPLIT_TRAIN, 2, &x, &y, &count);
  ck_assert_uint_eq(count, n);
  ck_assert_mem_eq(x, im + 16, n * sb);
  ck_assert_int_eq(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)), 0);
  ck_assert(td_split_needs_scan(s, 1));
  ck_assert_msg(td_split_scan(s, 8 << 20, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  ck_assert(!td_split_needs_scan(s, 1));
  for (uint32_t first = 0; first < n; first += 1237) {
    uint32_t k = n - first < 500 ? n - first : 500;
    ck_assert_int_eq(td_split_read(s, first, k, part, plb, 3, errbuf, sizeof(errbuf)), 0);
    ck_assert_mem_eq(part, x + (size_t)first * sb, k * sb);
    ck_assert_mem_eq(plb, y + first, k * sizeof(*y));
  }
  ck_assert_int_eq(td_split_read(s, n - 1, 2, part, plb, 3, errbuf, sizeof(errbuf)), TD_EINVAL);
  td_split_close(s);
  free(x);
  free(y);
  free(im);
  free(part);
}
END_TEST

START_TEST(test_check_fashion_mnist) {
  struct timespec t0, t1;
  td_jobspec spec;
  char data[1024];

  if (access(FMNIST, R_OK) != 0) {
    fprintf(stderr, "test_dataset: %s is missing; skipping\n", FMNIST);
    return;
  }
  snprintf(data, sizeof(data),
           "  format: idx\n"
           "  train: {images: %s/train-images-idx3-ubyte.gz, labels: %s/train-labels-idx1-ubyte.gz}\n"
           "  test: {images: %s/t10k-images-idx3-ubyte.gz, labels: %s/t10k-labels-idx1-ubyte.gz}\n"
           "  validation: {fraction: 0.1}\n",
           FMNIST, FMNIST, FMNIST, FMNIST);
  parse_job(job_text("[28, 28]", 10, data, 128, 1), &spec);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  /* Printed, not asserted: tests never assert a time. */
  fprintf(stderr, "test_dataset: td_dataset_check(Fashion-MNIST) took %.1f ms\n",
          (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);

  parse_job(job_text("[32, 32]", 10, data, 128, 1), &spec);
  expect_check_fail(&spec, TD_EDATA, NULL, "train-images-idx3-ubyte.gz: each image has 784 "
                    "bytes at offset 8", "expected 32 x 32, got 28 x 28");
  parse_job(job_text("[28, 28]", 9, data, 128, 1), &spec);
  expect_check_fail(&spec, TD_EDATA, NULL, "train-labels-idx1-ubyte.gz: label at index", "is 9, "
                    "but the model has 9 classes");
  /* class ids travel as int32: more than 256 classes are fine */
  parse_job(job_text("[28, 28]", 300, data, 128, 1), &spec);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  strcpy(strstr(data, "fraction: 0.1"), "count: 60000}\n");
  parse_job(job_text("[28, 28]", 10, data, 128, 1), &spec);
  expect_check_fail(&spec, TD_EDATA, NULL, "validation split", "fewer than the 60000");
}
END_TEST

START_TEST(test_order) {
  enum { N = 1000, CHUNK = 37 };
  static uint32_t a[N], b[N], seen[N];
  td_order o = {N, CHUNK, 4, 99, 3, 1};
  uint32_t chunks[64], perm[4 * CHUNK];
  uint64_t k = td_order_chunks(&o), pos = 0;

  td_shuffle(a, N, 5, 1, 0);
  td_shuffle(b, N, 5, 1, 0);
  ck_assert_mem_eq(a, b, sizeof(a));
  memset(seen, 0, sizeof(seen));
  for (int i = 0; i < N; i++)
    seen[a[i]]++;
  for (int i = 0; i < N; i++)
    ck_assert_uint_eq(seen[i], 1);
  td_shuffle(b, N, 5, 2, 0);
  ck_assert(memcmp(a, b, sizeof(a)) != 0);
  td_shuffle(b, N, 5, 1, 7);
  ck_assert(memcmp(a, b, sizeof(a)) != 0);

  /* Windows: every sample once per epoch, each only beside its window's. */
  ck_assert_uint_eq(k, 28);
  ck_assert_uint_eq(td_order_windows(&o), 7);
  ck_assert_uint_eq(td_order_chunk_size(&o, 27), N - 27 * CHUNK);
  td_order_chunk_perm(&o, chunks);
  memset(seen, 0, sizeof(seen));
  for (uint64_t w = 0; w < td_order_windows(&o); w++) {
    uint32_t count = 0, lo_chunk[4 * CHUNK];
    for (uint64_t i = w * 4; i < k && i < w * 4 + 4; i++)
      for (uint32_t j = 0; j < td_order_chunk_size(&o, chunks[i]); j++)
        lo_chunk[count++] = chunks[i];
    td_order_window_perm(&o, w, perm, count);
    for (uint32_t i = 0; i < count; i++) {
      uint32_t ch = lo_chunk[perm[i]];
      int in_window = 0;
      for (uint64_t c = w * 4; c < k && c < w * 4 + 4; c++)
        in_window |= chunks[c] == ch;
      ck_assert(in_window);
    }
    pos += count;
  }
  ck_assert_uint_eq(pos, N);
  /* The chunk order depends on the epoch; file order when not shuffling. */
  {
    uint32_t other[64];
    o.epoch = 4;
    td_order_chunk_perm(&o, other);
    ck_assert(memcmp(chunks, other, k * sizeof(uint32_t)) != 0);
    o.shuffle = 0;
    td_order_chunk_perm(&o, other);
    for (uint32_t i = 0; i < k; i++)
      ck_assert_uint_eq(other[i], i);
    td_order_window_perm(&o, 1, perm, 50);
    for (uint32_t i = 0; i < 50; i++)
      ck_assert_uint_eq(perm[i], i);
  }
  /* wchunks 0: one window, the full shuffle of td_shuffle(stream 0). */
  o = (td_order){N, CHUNK, 0, 5, 1, 1};
  ck_assert_uint_eq(td_order_windows(&o), 1);
  td_order_window_perm(&o, 0, b, N);
  ck_assert_mem_eq(a, b, sizeof(a));
}
END_TEST

static int cache_segments(const char *name) {
  char path[128];

  snprintf(path, sizeof(path), "/dev/shm%s", name);
  return access(path, F_OK) == 0;
}

/* A segment's header as shmcache.c lays it out: magic, version, data
 * bytes, key; the data at 4096. */
START_TEST(test_shmcache_header_check) {
  static uint64_t seg[(4096 + 64) / 8];
  uint8_t *p = (uint8_t *)seg;
  uint32_t magic = 0x48435254u, version = 1;
  uint64_t bytes = 64;

  memcpy(p, &magic, 4);
  memcpy(p + 4, &version, 4);
  memcpy(p + 8, &bytes, 8);
  strcpy((char *)p + 16, "the key");
  ck_assert_int_eq(td_shmcache_header_check(seg, sizeof(seg), "the key", 64), 0);
  ck_assert_int_eq(td_shmcache_header_check(seg, sizeof(seg), "other key", 64), TD_EAGAIN);
  ck_assert_int_eq(td_shmcache_header_check(seg, sizeof(seg), "the key", 32), TD_EAGAIN);
  ck_assert_int_eq(td_shmcache_header_check(seg, sizeof(seg) - 1, "the key", 64), TD_EAGAIN);
  ck_assert_int_eq(td_shmcache_header_check(seg, 100, "the key", 64), TD_EDATA);
  /* A size whose end wraps past 2^64 is not inside the segment. */
  bytes = UINT64_MAX - 4095;
  memcpy(p + 8, &bytes, 8);
  ck_assert_int_eq(td_shmcache_header_check(seg, sizeof(seg), "the key", bytes), TD_EAGAIN);
  /* Unpublished (its builder died) or another version: not usable. */
  p[0] = 0;
  ck_assert_int_eq(td_shmcache_header_check(seg, sizeof(seg), "the key", 64), TD_EDATA);
  memcpy(p, &magic, 4);
  p[4] = 2;
  ck_assert_int_eq(td_shmcache_header_check(seg, sizeof(seg), "the key", 64), TD_EDATA);
}
END_TEST

START_TEST(test_shmcache) {
  char key[128];
  td_shmcache *a, *b;
  int ready, fds[2];
  uint64_t bytes;
  uint32_t segs;
  pid_t pid;
  char name[64];

  snprintf(key, sizeof(key), "test-key %d %ld", (int)getpid(), (long)time(NULL));
  ck_assert_int_eq(td_shmcache_open(key, 100000, &a, &ready), 0);
  ck_assert_int_eq(ready, 0);
  for (int i = 0; i < 100000; i++)
    td_shmcache_data(a)[i] = (uint8_t)(i * 7);
  td_shmcache_publish(a);
  snprintf(name, sizeof(name), "%s", td_shmcache_name(a));
  ck_assert(cache_segments(name));

  /* A second user maps the same copy. */
  ck_assert_int_eq(td_shmcache_open(key, 100000, &b, &ready), 0);
  ck_assert_int_eq(ready, 1);
  ck_assert_str_eq(td_shmcache_name(b), name);
  ck_assert_uint_eq(td_shmcache_data(b)[99999], (uint8_t)(99999 * 7));
  td_shmcache_usage(&bytes, &segs);
  ck_assert_uint_ge(segs, 1);
  ck_assert_uint_ge(bytes, 100000);
  ck_assert_int_eq(td_shmcache_sweep() >= 0, 1);
  ck_assert(cache_segments(name)); /* in use: the sweep leaves it */
  td_shmcache_release(a);
  ck_assert(cache_segments(name)); /* b still maps it */
  td_shmcache_release(b);
  ck_assert(!cache_segments(name)); /* the last user removed it */

  /* A user killed while mapping it: the sweep removes what it left. */
  ck_assert_int_eq(pipe(fds), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    td_shmcache *c;
    int r;
    if (td_shmcache_open(key, 4096, &c, &r) == 0 && r == 0) {
      td_shmcache_publish(c);
      (void)!write(fds[1], "x", 1);
    }
    pause();
    _exit(0);
  }
  {
    char ch;
    ck_assert_int_eq(read(fds[0], &ch, 1), 1);
  }
  ck_assert(cache_segments(name));
  ck_assert_int_eq(td_shmcache_sweep(), 0);
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  ck_assert(cache_segments(name));
  ck_assert_int_ge(td_shmcache_sweep(), 1);
  ck_assert(!cache_segments(name));

  /* An unpublished entry is removed by its release; a key too long is refused. */
  ck_assert_int_eq(td_shmcache_open(key, 10, &a, &ready), 0);
  ck_assert_int_eq(ready, 0);
  td_shmcache_release(a);
  ck_assert(!cache_segments(name));
  {
    char longkey[TD_SHMCACHE_KEY_MAX + 10];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    ck_assert_int_eq(td_shmcache_open(longkey, 10, &a, &ready), TD_EINVAL);
  }
}
END_TEST

/* A FIFO named as the dataset would block an open without O_NONBLOCK until
 * a writer came: it (and a directory, a device) is refused at once.  The
 * alarm turns a regression into a failure instead of a hung test. */
START_TEST(test_nonregular_files) {
  static const struct {
    const char *what;
    int fifo;
  } kinds[] = {{"a FIFO", 1}, {"a directory", 0}};
  uint64_t lshape[] = {NPY_N};
  static uint8_t lab[NPY_N];
  td_jobspec spec;
  td_dfile *f;

  parse_job(job_text("[4, 4]", 10, NPY_DATA, 8, 1), &spec);
  write_npy("y.npy", "|u1", "False", lshape, 1, lab, NPY_N);
  alarm(5);
  for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
    char want[128];

    unlink(tmp_path("x.npy"));
    rmdir(tmp_path("x.npy"));
    if (kinds[i].fifo)
      ck_assert_int_eq(mkfifo(tmp_path("x.npy"), 0600), 0);
    else
      ck_assert_int_eq(mkdir(tmp_path("x.npy"), 0700), 0);
    snprintf(want, sizeof(want), "is %s, not a regular file; datasets must be regular files",
             kinds[i].what);
    errbuf[0] = '\0';
    ck_assert_int_eq(td_dfile_open(tmp_path("x.npy"), &f, errbuf, sizeof(errbuf)), TD_EDATA);
    ck_assert_msg(strstr(errbuf, want) != NULL, "%s", errbuf);
    expect_check_fail(&spec, TD_EDATA, "x.npy", want, NULL);
    load_fails(&spec, want, NULL);
  }
  ck_assert_int_eq(td_dfile_open("/dev/null", &f, errbuf, sizeof(errbuf)), TD_EDATA);
  ck_assert_msg(strstr(errbuf, "is a character device") != NULL, "%s", errbuf);
  alarm(0);
}
END_TEST

/* Drop to a uid that is not ours (nobody's) for good, in a child. */
static void become_other(void) {
  gid_t g = 65534;

  if (setgroups(1, &g) < 0 || setresgid(65534, 65534, 65534) < 0 ||
      setresuid(65534, 65534, 65534) < 0)
    _exit(99);
}

/* Plant, as another user, a published-looking entry for key at name,
 * mode 0666, whose data are all 0xEE.  The planter stays, holding a shared
 * flock as a user of a copy does, so that no sweep takes the segment away:
 * kill the pid returned. */
static pid_t plant_entry(const char *name, const char *key, uint64_t bytes) {
  int fds[2];
  char ok = 0;
  pid_t pid;

  ck_assert_int_eq(pipe(fds), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    /* cache_hdr in shmcache.c: magic, version, data_bytes, key, data at 4096 */
    struct {
      uint32_t magic, version;
      uint64_t data_bytes;
      char key[TD_SHMCACHE_KEY_MAX];
    } h = {0x48435254u, 1, bytes, ""};
    size_t total = 4096 + (size_t)bytes;
    uint8_t *buf = malloc(total);
    int fd;

    become_other();
    umask(0);
    fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0666);
    if (buf == NULL || fd < 0 || flock(fd, LOCK_SH) < 0)
      _exit(1);
    snprintf(h.key, sizeof(h.key), "%s", key);
    memset(buf, 0xEE, total);
    memcpy(buf, &h, sizeof(h));
    if (write(fd, buf, total) != (ssize_t)total || write(fds[1], "y", 1) != 1)
      _exit(2);
    pause();
    _exit(0);
  }
  close(fds[1]);
  ck_assert_msg(read(fds[0], &ok, 1) == 1 && ok == 'y', "planting %s failed", name);
  close(fds[0]);
  return pid;
}

static void unplant(pid_t pid, const char *name) {
  kill(pid, SIGKILL);
  ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
  shm_unlink(name);
}

/* Someone else's segment at our entry's name is never mapped: the cache
 * says whose it is and the caller decodes its own copy. */
START_TEST(test_shmcache_foreign) {
  char key[128], name[64], lock[80];
  td_shmcache *c;
  int ready;
  pid_t pid;

  if (geteuid() != 0)
    return; /* making another user's segment needs root */
  snprintf(key, sizeof(key), "test-foreign %d %ld", (int)getpid(), (long)time(NULL));
  ck_assert_int_eq(td_shmcache_entry_name(key, name, sizeof(name)), 0);
  {
    char want[32];
    snprintf(want, sizeof(want), "/traind-cache-%u-", (unsigned)geteuid());
    ck_assert_msg(strncmp(name, want, strlen(want)) == 0, "%s", name);
  }
  pid = plant_entry(name, key, 4096);
  ck_assert_int_eq(td_shmcache_open(key, 4096, &c, &ready), TD_EAGAIN);
  ck_assert_msg(cache_segments(name), "the planted %s was removed", name);
  unplant(pid, name);

  /* A planted lock object must not be waited on either. */
  snprintf(lock, sizeof(lock), "%s.lock", name);
  shm_unlink(lock); /* the one the open above made */
  {
    int status;
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      int fd;
      become_other();
      umask(0);
      fd = shm_open(lock, O_RDWR | O_CREAT | O_EXCL, 0666);
      if (fd < 0 || flock(fd, LOCK_EX) < 0)
        _exit(1);
      pause();
      _exit(0);
    }
    for (int i = 0; i < 5000 && !cache_segments(lock); i++)
      usleep(1000);
    ck_assert(cache_segments(lock));
    alarm(5);
    ck_assert_int_eq(td_shmcache_open(key, 4096, &c, &ready), TD_EAGAIN);
    alarm(0);
    kill(pid, SIGKILL);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    shm_unlink(lock);
  }

  /* With the intruders gone the entry is ours again, made mode 0600. */
  ck_assert_int_eq(td_shmcache_open(key, 4096, &c, &ready), 0);
  ck_assert_int_eq(ready, 0);
  {
    char path[128];
    struct stat st;
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_uid, geteuid());
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
  }
  td_shmcache_release(c);
  ck_assert(!cache_segments(name));
}
END_TEST

/* The real traind-loader. */

struct rec {
  uint8_t kind, epoch;
  uint16_t zero; /* no padding: records are compared with memcmp */
  uint32_t id;
};

struct run {
  struct rec *recs;
  size_t n, cap;
  int ended, error, exit_code;
  uint32_t dtype, sample_bytes;
  char message[1024];
  long maxrss_kb;
};

static void loader_exe(char *buf, size_t cap) {
  const char *root = getenv("TD_BUILD_ROOT");
  char self[PATH_MAX];
  ssize_t n;

  if (root != NULL) {
    snprintf(buf, cap, "%s/daemon/traind-loader", root);
    return;
  }
  n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  ck_assert_int_gt(n, 0);
  self[n] = '\0';
  *strrchr(self, '/') = '\0';
  *strrchr(self, '/') = '\0';
  snprintf(buf, cap, "%s/daemon/traind-loader", self);
}

static void ring_name(char *buf, size_t cap, int which) {
  snprintf(buf, cap, "/traind-test-data-%d-%d-%d", (int)getppid(), (int)getpid(), which);
}

/* Start the loader on tmpdir/job.tdj with extra arguments (NULL-ended). */
static pid_t spawn_loader(const char *ring, size_t slot_bytes, td_ring **r, const char **extra) {
  char exe[PATH_MAX];
  pid_t pid;

  loader_exe(exe, sizeof(exe));
  ck_assert_msg(access(exe, X_OK) == 0, "%s is not built", exe);
  td_ring_unlink(ring);
  ck_assert_int_eq(td_ring_create(ring, 4, slot_bytes), 0);
  ck_assert_int_eq(td_ring_open(ring, r), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    char ppid[32];
    const char *argv[32] = {exe, "--job", tmp_path("job.tdj"), "--ring", ring, "--parent-pid",
                            ppid};
    int n = 7, fd = open(tmp_path("loader.err"), O_WRONLY | O_CREAT | O_APPEND, 0644);
    snprintf(ppid, sizeof(ppid), "%d", (int)getppid());
    for (int i = 0; extra != NULL && extra[i] != NULL && n < 30; i++)
      argv[n++] = extra[i];
    argv[n] = NULL;
    if (fd >= 0)
      dup2(fd, 2);
    execv(exe, (char **)argv);
    _exit(127);
  }
  td_ring_set_peer(*r, pid);
  return pid;
}

/* The loaders' stderr (all runs of this test) must hold frag. */
static void expect_log(const char *frag) {
  static char text[1 << 16];
  FILE *f = fopen(tmp_path("loader.err"), "r");
  size_t n = 0;

  if (f != NULL) {
    n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
  }
  text[n] = '\0';
  ck_assert_msg(strstr(text, frag) != NULL, "no '%s' in the loader's log:\n%s", frag, text);
}

/* uint8 samples made by sample_bytes(): checked byte by byte when set,
 * with the salt of the file each kind of batch comes from. */
static int check_bytes;
static uint8_t salt_of_kind[6];

static void sample_fill(uint8_t *p, uint32_t sb, uint32_t id, uint8_t salt) {
  for (uint32_t k = 0; k < sb; k++)
    p[k] = (uint8_t)(k * 31 + id + salt);
  memcpy(p, &id, 4);
}

/* Sample ids: uint8 samples carry theirs in bytes 0..3, float32 ones as
 * element 0. */
static uint32_t sample_id(const uint8_t *p, uint32_t dtype) {
  if (dtype == TD_DTYPE_F32) {
    float v;
    memcpy(&v, p, 4);
    return (uint32_t)v;
  }
  return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void drain(td_ring *r, struct run *out, uint32_t batch, size_t max_batches) {
  size_t batches = 0;

  while (max_batches == 0 || batches < max_batches) {
    const td_batch_hdr *h;
    const void *slot;
    size_t len;
    int rc = td_ring_read_begin(r, &slot, &len);

    ck_assert_msg(rc == 0, "ring closed before END or ERROR: %s", td_err_name(rc));
    h = slot;
    ck_assert_int_eq(td_batch_check(h, len), 0);
    batches++;
    if (h->kind == TD_BATCH_END || h->kind == TD_BATCH_ERROR) {
      out->ended = h->kind == TD_BATCH_END;
      out->error = h->error;
      if (h->kind == TD_BATCH_ERROR)
        td_batch_error_text(h, len, out->message, sizeof(out->message));
      td_ring_read_end(r);
      return;
    }
    out->dtype = h->dtype;
    out->sample_bytes = h->sample_bytes;
    ck_assert_uint_eq(h->first_sample, (uint64_t)h->index * batch);
    for (uint32_t j = 0; j < h->count; j++) {
      const uint8_t *px = td_batch_pixels(h) + (size_t)j * h->sample_bytes;
      uint32_t id = sample_id(px, h->dtype);
      for (uint32_t k = 4; check_bytes && k < h->sample_bytes; k++)
        if (px[k] != (uint8_t)(k * 31 + id + salt_of_kind[h->kind]))
          ck_abort_msg("sample %u byte %u is %u", id, k, px[k]);
      if (out->n == out->cap) {
        out->cap = out->cap ? 2 * out->cap : 4096;
        out->recs = realloc(out->recs, out->cap * sizeof(*out->recs));
        ck_assert_ptr_nonnull(out->recs);
      }
      ck_assert_int_eq(((const int32_t *)td_batch_targets(h))[j], id % 10);
      out->recs[out->n++] = (struct rec){(uint8_t)h->kind, (uint8_t)h->epoch, 0, id};
    }
    td_ring_read_end(r);
  }
}

static void finish(pid_t pid, td_ring *r, const char *ring, struct run *out) {
  struct rusage ru;
  int status;

  ck_assert_int_eq(wait4(pid, &status, 0, &ru), pid);
  ck_assert_msg(WIFEXITED(status), "loader died (status %d)", status);
  out->exit_code = WEXITSTATUS(status);
  out->maxrss_kb = ru.ru_maxrss;
  td_ring_close(r);
  ck_assert_int_eq(td_ring_unlink(ring), 0);
}

static void run_loader(struct run *out, uint32_t batch, size_t slot, const char **extra) {
  char ring[64];
  td_ring *r;
  pid_t pid;

  memset(out, 0, sizeof(*out));
  ring_name(ring, sizeof(ring), 0);
  pid = spawn_loader(ring, slot, &r, extra);
  drain(r, out, batch, 0);
  finish(pid, r, ring, out);
}

/* n samples of sb bytes (uint8), id in bytes 0..3, label id % 10. */
static void write_u8_npy(const char *x, const char *y, uint32_t n, uint32_t sb) {
  uint64_t shape[] = {n, sb}, lshape[] = {n};
  uint8_t *data = xmalloc((size_t)n * sb), *lab = xmalloc(n);

  for (uint32_t i = 0; i < n; i++) {
    sample_fill(data + (size_t)i * sb, sb, i, 0);
    lab[i] = (uint8_t)(i % 10);
  }
  write_npy(x, "|u1", "False", shape, 2, data, (size_t)n * sb);
  write_npy(y, "|u1", "False", lshape, 1, lab, n);
  free(data);
  free(lab);
}

/* Per epoch and kind, the ids must be each of 0..n-1 (plus base) once. */
static void expect_pass(const struct run *r, uint8_t kind, uint8_t epoch, uint32_t base,
                        uint32_t n, int in_order) {
  uint8_t *seen = calloc(n, 1);
  uint32_t got = 0;

  ck_assert_ptr_nonnull(seen);
  for (size_t i = 0; i < r->n; i++) {
    if (r->recs[i].kind != kind || r->recs[i].epoch != epoch)
      continue;
    ck_assert_msg(r->recs[i].id >= base && r->recs[i].id < base + n, "id %u outside", r->recs[i].id);
    ck_assert_msg(!seen[r->recs[i].id - base], "id %u twice", r->recs[i].id);
    if (in_order)
      ck_assert_uint_eq(r->recs[i].id, base + got);
    seen[r->recs[i].id - base] = 1;
    got++;
  }
  ck_assert_uint_eq(got, n);
  free(seen);
}

START_TEST(test_loader_npy_float_and_validation) {
  enum { N = 230, B = 16 };
  uint64_t shape[] = {N, 8}, lshape[] = {N};
  float data[N * 8];
  uint8_t lab[N];
  static struct run a;

  for (uint32_t i = 0; i < N; i++) {
    for (int k = 0; k < 8; k++)
      data[i * 8 + k] = (float)i + (float)k * 0.125f;
    lab[i] = (uint8_t)(i % 10);
  }
  write_npy("x.npy", "<f4", "False", shape, 2, data, sizeof(data));
  write_npy("y.npy", "|u1", "False", lshape, 1, lab, N);
  write_job(job_text("[8]", 10,
                     "  format: npy\n  train: {images: x.npy, labels: y.npy}\n"
                     "  test: {images: x.npy, labels: y.npy, limit: 40}\n"
                     "  validation: {count: 30}\n", B, 2));
  run_loader(&a, B, td_batch_bytes(B, 32, 4), NULL);
  ck_assert_msg(a.ended, "error %d: %s", a.error, a.message);
  ck_assert_int_eq(a.exit_code, 0);
  ck_assert_uint_eq(a.dtype, TD_DTYPE_F32);
  ck_assert_uint_eq(a.sample_bytes, 32);
  for (uint8_t e = 0; e < 2; e++) {
    expect_pass(&a, TD_BATCH_TRAIN, e, 0, N - 30, 0); /* the last 30 held out */
    expect_pass(&a, TD_BATCH_VAL, e, N - 30, 30, 1);
    expect_pass(&a, TD_BATCH_TEST, e, 0, 40, 1);
  }
  ck_assert_uint_eq(a.n, 2 * (N + 40));
  /* Per epoch: train, then validation, then test. */
  ck_assert_uint_eq(a.recs[N - 30].kind, TD_BATCH_VAL);
  ck_assert_uint_eq(a.recs[N].kind, TD_BATCH_TEST);
  free(a.recs);

  /* The slot is sized for float32 samples: a uint8-sized ring is refused. */
  run_loader(&a, B, td_batch_bytes(B, 8, 4), NULL);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_msg(strstr(a.message, "does not fit") != NULL, "%s", a.message);
  free(a.recs);
}
END_TEST

/* A dataset 4x the loader's budget streams with bounded memory, in the same
 * order every run, and resumes mid-epoch. */
START_TEST(test_loader_streams) {
  enum { N = 48000, SB = 1024, B = 100 };
  static const char *budget[] = {"--memory-budget", "12MiB", "--threads", "2", NULL};
  static const char *resume[] = {"--memory-budget", "12MiB", "--threads", "2",
                                 "--start-epoch", "1", "--start-batch", "7", NULL};
  static const char *tiny[] = {"--memory-budget", "3MiB", NULL};
  static struct run a, b, c;
  size_t pos;

  check_bytes = 1;
  write_u8_npy("x.npy", "y.npy", N, SB); /* 47 MiB */
  write_job(job_text("[1024]", 10,
                     "  format: npy\n  train: {images: x.npy, labels: y.npy}\n"
                     "  test: {images: x.npy, labels: y.npy, limit: 3000}\n", B, 2));
  run_loader(&a, B, td_batch_bytes(B, SB, 4), budget);
  ck_assert_msg(a.ended, "error %d: %s", a.error, a.message);
  for (uint8_t e = 0; e < 2; e++) {
    expect_pass(&a, TD_BATCH_TRAIN, e, 0, N, 0);
    expect_pass(&a, TD_BATCH_TEST, e, 0, 3000, 1);
  }
  /* Peak resident memory: the budget and the loader's own few MiB (the
   * ring's mapping included), far below the 47 MiB of data. */
  fprintf(stderr, "test_dataset: streaming loader peak RSS %ld KiB (budget 12 MiB, data %d "
                  "MiB)\n", a.maxrss_kb, N * SB >> 20);
#ifndef __SANITIZE_ADDRESS__ /* ASan's shadow memory is resident too */
  ck_assert_int_lt(a.maxrss_kb, 20 * 1024);
#endif
  expect_log("streaming: 52");
  /* Shuffled: not the file order, and each epoch differently. */
  ck_assert_uint_ne(a.recs[0].id + a.recs[1].id * 7, 0 + 1 * 7);
  ck_assert_msg(memcmp(&a.recs[0], &a.recs[N + 3000], 64 * sizeof(struct rec)) != 0 ||
                a.recs[0].epoch != a.recs[N + 3000].epoch, "epochs alike");

  run_loader(&b, B, td_batch_bytes(B, SB, 4), budget);
  ck_assert_uint_eq(b.n, a.n);
  ck_assert_mem_eq(b.recs, a.recs, a.n * sizeof(struct rec));

  run_loader(&c, B, td_batch_bytes(B, SB, 4), resume);
  pos = N + 3000 + 7 * B;
  ck_assert_uint_eq(c.n, a.n - pos);
  ck_assert_mem_eq(c.recs, a.recs + pos, c.n * sizeof(struct rec));
  free(c.recs);

  /* A budget that cannot hold the loader's own buffers is an error. */
  run_loader(&c, B, td_batch_bytes(B, SB, 4), tiny);
  ck_assert_int_eq(c.exit_code, 1);
  ck_assert_int_eq(c.error, TD_ENOMEM);
  ck_assert_msg(strstr(c.message, "budget of 3145728 bytes is too small") != NULL, "%s",
                c.message);
  free(a.recs);
  free(b.recs);
  free(c.recs);
}
END_TEST

/* Streaming from gzip (access points) and CSV gives every sample once. */
START_TEST(test_loader_streams_gzip_csv) {
  enum { N = 60000, B = 64 };
  static const char *stream[] = {"--memory-budget", "7MiB", "--threads", "1", NULL};
  static struct run a;
  char *t = xmalloc((size_t)N * 300);
  size_t len = 0;

  /* Label first, then 64 values, the id spread over the first three. */
  for (uint32_t i = 0; i < N; i++) {
    len += (size_t)sprintf(t + len, "%u,%u,%u,%u,0", i % 10, i & 255, (i >> 8) & 255, i >> 16);
    for (int k = 4; k < 64; k++)
      len += (size_t)sprintf(t + len, ",%u", (i + (uint32_t)k) % 200);
    t[len++] = '\n';
  }
  write_gz("d.csv.gz", t, len, 2);
  free(t);
  write_job(job_text("[64]", 10,
                     "  format: csv\n  train: {images: d.csv.gz}\n  test: {images: d.csv.gz, "
                     "limit: 100}\n  csv: {dtype: uint8}\n  shuffle_window: 3000\n", B, 1));
  run_loader(&a, B, td_batch_bytes(B, 64, 4), stream);
  ck_assert_msg(a.ended, "error %d: %s", a.error, a.message);
  expect_pass(&a, TD_BATCH_TRAIN, 0, 0, N, 0);
  expect_pass(&a, TD_BATCH_TEST, 0, 0, 100, 1);
  expect_log("streaming: ");
  expect_log("samples shuffled together)");
  free(a.recs);
}
END_TEST

/* The mappings of pid that are cache segments: their names, joined. */
static void cache_maps(pid_t pid, char *out, size_t cap) {
  char path[64], line[512];
  FILE *f;
  size_t n = 0;

  out[0] = '\0';
  snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
  f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  while (fgets(line, sizeof(line), f) != NULL) {
    char *p = strstr(line, "/dev/shm/" TD_SHMCACHE_PREFIX);
    if (p != NULL && n + strlen(p) < cap)
      n += (size_t)snprintf(out + n, cap - n, "%s", p);
  }
  fclose(f);
}

/* Two loaders of the same files map one decoded copy; it goes when the
 * last ends, and when one is killed the sweep removes what it left. */
START_TEST(test_loader_shared_cache) {
  enum { N = 2000, SB = 64, B = 50 };
  static struct run a, b;
  char ring_a[64], ring_b[64], maps_a[1024], maps_b[1024], seg[256], *nl;
  td_ring *ra, *rb;
  pid_t pa, pb;

  write_u8_npy("x.npy", "y.npy", N, SB);
  write_job(job_text("[64]", 10,
                     "  format: npy\n  train: {images: x.npy, labels: y.npy}\n"
                     "  test: {images: x.npy, labels: y.npy}\n", B, 3));
  check_bytes = 1;
  ring_name(ring_a, sizeof(ring_a), 1);
  ring_name(ring_b, sizeof(ring_b), 2);
  memset(&a, 0, sizeof(a));
  memset(&b, 0, sizeof(b));
  pa = spawn_loader(ring_a, td_batch_bytes(B, SB, 4), &ra, NULL);
  drain(ra, &a, B, 1); /* A has decoded and mapped its copy */
  pb = spawn_loader(ring_b, td_batch_bytes(B, SB, 4), &rb, NULL);
  drain(rb, &b, B, 1);
  cache_maps(pa, maps_a, sizeof(maps_a));
  cache_maps(pb, maps_b, sizeof(maps_b));
  ck_assert_msg(maps_a[0] != '\0', "loader A maps no cache segment");
  ck_assert_str_eq(maps_a, maps_b); /* the same segments (train and test: the same files) */
  expect_log("decoded into the shared copy");
  expect_log("mapped the shared copy");
  snprintf(seg, sizeof(seg), "%s", maps_a);
  if ((nl = strchr(seg, '\n')) != NULL)
    *nl = '\0';
  ck_assert_msg(access(seg, F_OK) == 0, "%s", seg);
  drain(ra, &a, B, 0);
  finish(pa, ra, ring_a, &a);
  ck_assert_msg(a.ended, "%s", a.message);
  ck_assert_msg(access(seg, F_OK) == 0, "B still maps %s", seg);
  drain(rb, &b, B, 0);
  finish(pb, rb, ring_b, &b);
  ck_assert_msg(b.ended, "%s", b.message);
  ck_assert_uint_eq(a.n, b.n);
  ck_assert_mem_eq(a.recs, b.recs, a.n * sizeof(struct rec));
  ck_assert_msg(access(seg, F_OK) != 0, "%s outlived its last loader", seg);
  free(a.recs);
  free(b.recs);

  /* SIGKILL: the segment stays until a sweep; SIGTERM: removed at once. */
  for (int sig = 0; sig < 2; sig++) {
    memset(&a, 0, sizeof(a));
    pa = spawn_loader(ring_a, td_batch_bytes(B, SB, 4), &ra, NULL);
    drain(ra, &a, B, 1);
    ck_assert_int_eq(access(seg, F_OK), 0);
    kill(pa, sig == 0 ? SIGKILL : SIGTERM);
    waitpid(pa, NULL, 0);
    td_ring_close(ra);
    td_ring_unlink(ring_a);
    if (sig == 0) {
      ck_assert_int_eq(access(seg, F_OK), 0);
      ck_assert_int_ge(td_shmcache_sweep(), 1);
    }
    ck_assert_msg(access(seg, F_OK) != 0, "%s left after signal %d", seg, sig);
    free(a.recs);
  }
}
END_TEST

/* A segment another user planted at the name of this job's shared copy,
 * with a header that matches in every field: the loader says whose it is,
 * decodes its own copy, and not one planted byte reaches the ring. */
START_TEST(test_loader_foreign_cache) {
  enum { N = 500, SB = 64, B = 50 };
  static struct run a;
  char key[TD_SHMCACHE_KEY_MAX], name[64], want[128];
  td_jobspec spec;
  td_split *s;
  uint64_t bytes;
  pid_t pid;

  if (geteuid() != 0)
    return; /* making another user's segment needs root */
  write_u8_npy("x.npy", "y.npy", N, SB);
  write_job(job_text("[64]", 10,
                     "  format: npy\n  train: {images: x.npy, labels: y.npy}\n"
                     "  test: {images: x.npy, labels: y.npy}\n", B, 1));
  parse_job(job_text("[64]", 10,
                     "  format: npy\n  train: {images: x.npy, labels: y.npy}\n"
                     "  test: {images: x.npy, labels: y.npy}\n", B, 1), &spec);
  ck_assert_msg(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)) == 0, "%s",
                errbuf);
  ck_assert_int_eq(td_split_cache_key(s, key, sizeof(key)), 0);
  bytes = td_split_count(s) * ((uint64_t)td_split_sample_bytes(s) + 1);
  td_split_close(s);
  ck_assert_int_eq(td_shmcache_entry_name(key, name, sizeof(name)), 0);
  pid = plant_entry(name, key, bytes);

  check_bytes = 1;
  run_loader(&a, B, td_batch_bytes(B, SB, 4), NULL);
  ck_assert_msg(a.ended, "%s", a.message);
  expect_pass(&a, TD_BATCH_TRAIN, 0, 0, N, 0);
  expect_pass(&a, TD_BATCH_TEST, 0, 0, N, 1);
  snprintf(want, sizeof(want), "%s belongs to uid 65534 (mode 0666)", name);
  expect_log(want);
  expect_log("decoding into the loader's memory");
  ck_assert_msg(cache_segments(name), "the planted %s was removed", name);
  unplant(pid, name);
  free(a.recs);
}
END_TEST

/* A file that is cut or corrupt fails the job with a message, never
 * garbage. */
START_TEST(test_loader_bad_files) {
  enum { N = 500, SB = 64, B = 50 };
  static struct run a;
  FILE *f;

  write_u8_npy("x.npy", "y.npy", N, SB);
  write_job(job_text("[64]", 10,
                     "  format: npy\n  train: {images: x.npy.gz, labels: y.npy}\n"
                     "  test: {images: x.npy.gz, labels: y.npy}\n", B, 1));
  {
    struct stat st;
    uint8_t *buf;
    size_t n;
    ck_assert_int_eq(stat(tmp_path("x.npy"), &st), 0);
    buf = xmalloc((size_t)st.st_size);
    f = fopen(tmp_path("x.npy"), "rb");
    n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    write_gz("x.npy.gz", buf, n, 1);
    free(buf);
  }
  run_loader(&a, B, td_batch_bytes(B, SB, 4), NULL);
  ck_assert_msg(a.ended, "%s", a.message);
  free(a.recs);
  /* Cut the compressed file in half. */
  {
    struct stat st;
    ck_assert_int_eq(stat(tmp_path("x.npy.gz"), &st), 0);
    ck_assert_int_eq(truncate(tmp_path("x.npy.gz"), st.st_size / 2), 0);
  }
  run_loader(&a, B, td_batch_bytes(B, SB, 4), NULL);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, "x.npy.gz: truncated gzip stream at compressed offset") != NULL,
                "%s", a.message);
  ck_assert_uint_eq(a.n, 0); /* nothing before the error */
  free(a.recs);
}
END_TEST

/* An IDX split: n 4x4 images made by sample_fill with salt, labels id % 10
 * (12 at bad_label_at). */
#define L_TRAIN 103
#define L_TEST 25
#define L_BATCH 10

static void write_idx_split(const char *name, uint8_t salt, uint32_t n, int gzip,
                            int bad_label_at) {
  uint8_t *im = xmalloc(16 + (size_t)n * 16), *lb = xmalloc(8 + n);
  char path[64];

  memcpy(im, "\0\0\x08\x03\0\0\0\0\0\0\0\x04\0\0\0\x04", 16);
  memcpy(lb, "\0\0\x08\x01\0\0\0\0", 8);
  im[6] = lb[6] = (uint8_t)(n >> 8);
  im[7] = lb[7] = (uint8_t)n;
  for (uint32_t i = 0; i < n; i++) {
    sample_fill(im + 16 + (size_t)i * 16, 16, i, salt);
    lb[8 + i] = (uint8_t)(i % 10);
  }
  if (bad_label_at >= 0)
    lb[8 + bad_label_at] = 12;
  snprintf(path, sizeof(path), "%s-images.idx%s", name, gzip ? ".gz" : "");
  if (gzip)
    write_gz(path, im, 16 + (size_t)n * 16, 1);
  else
    write_file(path, im, 16 + (size_t)n * 16);
  snprintf(path, sizeof(path), "%s-labels.idx", name);
  write_file(path, lb, 8 + n);
  free(im);
  free(lb);
}

static void write_idx_job(int epochs, unsigned seed) {
  job_seed = seed;
  write_job(job_text("[4, 4]", 10,
                     "  format: idx\n"
                     "  train: {images: train-images.idx.gz, labels: train-labels.idx}\n"
                     "  test: {images: test-images.idx, labels: test-labels.idx}\n",
                     L_BATCH, (uint32_t)epochs));
}

static void idx_fixture(void) {
  check_bytes = 1;
  salt_of_kind[TD_BATCH_TRAIN] = 0;
  salt_of_kind[TD_BATCH_TEST] = 101;
  write_idx_split("train", 0, L_TRAIN, 1, -1);
  write_idx_split("test", 101, L_TEST, 0, -1);
}

/* The train ids of one epoch, in order. */
static void epoch_order(const struct run *r, uint8_t epoch, uint32_t *ids) {
  uint32_t n = 0;

  for (size_t i = 0; i < r->n; i++)
    if (r->recs[i].kind == TD_BATCH_TRAIN && r->recs[i].epoch == epoch)
      ids[n++] = r->recs[i].id;
  ck_assert_uint_eq(n, L_TRAIN);
}

START_TEST(test_loader_epochs) {
  static const char *from_1_3[] = {"--start-epoch", "1", "--start-batch", "3", NULL};
  static const char *from_3_0[] = {"--start-epoch", "3", "--start-batch", "0", NULL};
  static const char *from_1_12[] = {"--start-epoch", "1", "--start-batch", "12", NULL};
  static struct run a, b, c;
  uint32_t order[3][L_TRAIN], other[L_TRAIN];
  size_t slot = td_batch_bytes(L_BATCH, 16, 4), pos = 0;

  idx_fixture();
  write_idx_job(3, 42);
  run_loader(&a, L_BATCH, slot, NULL);
  ck_assert_msg(a.ended, "no END; error %d: %s", a.error, a.message);
  ck_assert_int_eq(a.exit_code, 0);
  /* Per epoch: every train sample once, then the test set in order. */
  for (uint8_t e = 0; e < 3; e++) {
    expect_pass(&a, TD_BATCH_TRAIN, e, 0, L_TRAIN, 0);
    expect_pass(&a, TD_BATCH_TEST, e, 0, L_TEST, 1);
    for (uint32_t i = 0; i < L_TRAIN + L_TEST; i++, pos++)
      ck_assert_uint_eq(a.recs[pos].kind, i < L_TRAIN ? TD_BATCH_TRAIN : TD_BATCH_TEST);
  }
  ck_assert_uint_eq(pos, a.n);
  for (uint8_t e = 0; e < 3; e++)
    epoch_order(&a, e, order[e]);
  ck_assert_msg(memcmp(order[0], order[1], sizeof(order[0])) != 0, "epochs 0 and 1 alike");
  ck_assert_msg(memcmp(order[1], order[2], sizeof(order[0])) != 0, "epochs 1 and 2 alike");

  /* Same seed: the very same stream; another seed: another order. */
  run_loader(&b, L_BATCH, slot, NULL);
  ck_assert_uint_eq(b.n, a.n);
  ck_assert_mem_eq(b.recs, a.recs, a.n * sizeof(struct rec));
  write_idx_job(3, 43);
  run_loader(&c, L_BATCH, slot, NULL);
  epoch_order(&c, 0, other);
  ck_assert_msg(memcmp(order[0], other, sizeof(other)) != 0, "seeds 42 and 43 alike");
  free(c.recs);

  /* Resuming at epoch 1, batch 3 gives exactly the rest of the first run. */
  write_idx_job(3, 42);
  run_loader(&c, L_BATCH, slot, from_1_3);
  pos = L_TRAIN + L_TEST + 3 * L_BATCH;
  ck_assert_int_eq(c.exit_code, 0);
  ck_assert_uint_eq(c.n, a.n - pos);
  ck_assert_mem_eq(c.recs, a.recs + pos, c.n * sizeof(struct rec));
  free(c.recs);
  run_loader(&c, L_BATCH, slot, from_3_0); /* the end: only END */
  ck_assert_int_eq(c.exit_code, 0);
  ck_assert(c.ended);
  ck_assert_uint_eq(c.n, 0);
  run_loader(&c, L_BATCH, slot, from_1_12); /* past the 11 batches of an epoch */
  ck_assert_int_eq(c.exit_code, 1);
  ck_assert_msg(strstr(c.message, "start position") != NULL, "%s", c.message);
  free(a.recs);
  free(b.recs);
}
END_TEST

START_TEST(test_loader_bad_label) {
  static struct run a;

  idx_fixture();
  write_idx_split("train", 0, L_TRAIN, 1, 57);
  write_idx_job(2, 1);
  run_loader(&a, L_BATCH, td_batch_bytes(L_BATCH, 16, 4), NULL);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert(!a.ended);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, tmp_path("train-labels.idx")) != NULL, "%s", a.message);
  ck_assert_msg(strstr(a.message, "index 57 is 12") != NULL, "%s", a.message);
  ck_assert_msg(strstr(a.message, "10 classes") != NULL, "%s", a.message);
  ck_assert_uint_eq(a.n, 0); /* nothing before the error */
}
END_TEST

START_TEST(test_loader_bad_idx) {
  static struct run a;
  size_t slot = td_batch_bytes(L_BATCH, 16, 4);
  uint8_t five[16 + L_TEST * 25] = "\0\0\x08\x03\0\0\0\x19\0\0\0\x05\0\0\0\x05";

  idx_fixture();
  write_idx_job(1, 1);
  write_file("test-images.idx", five, sizeof(five)); /* 5x5 images for a 4x4 model */
  run_loader(&a, L_BATCH, slot, NULL);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, tmp_path("test-images.idx")) == a.message, "%s", a.message);
  ck_assert_msg(strstr(a.message, "25 bytes") != NULL && strstr(a.message, "16 elements"),
                "%s", a.message);

  write_file("test-images.idx", "\0\0\x08", 3);
  run_loader(&a, L_BATCH, slot, NULL);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, "truncated header") != NULL, "%s", a.message);

  /* Fewer labels than images. */
  write_idx_split("test", 101, L_TEST, 0, -1);
  write_idx_split("short", 101, L_TEST - 1, 0, -1);
  ck_assert_int_eq(rename(tmp_path("short-labels.idx"), tmp_path("test-labels.idx")), 0);
  run_loader(&a, L_BATCH, slot, NULL);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, "24 labels") != NULL && strstr(a.message, "25 images"),
                "%s", a.message);
}
END_TEST

/* The consumer closing the ring, or SIGTERM, ends the loader quietly. */
START_TEST(test_loader_stops) {
  static struct run a;
  char ring[64];
  td_ring *r;
  pid_t pid;

  idx_fixture();
  write_idx_job(50, 1);
  ring_name(ring, sizeof(ring), 0);
  for (int how = 0; how < 2; how++) {
    memset(&a, 0, sizeof(a));
    pid = spawn_loader(ring, td_batch_bytes(L_BATCH, 16, 4), &r, NULL);
    drain(r, &a, L_BATCH, 1);
    ck_assert_uint_eq(a.recs[0].kind, TD_BATCH_TRAIN);
    if (how == 0)
      td_ring_shutdown(r, 0);
    else
      ck_assert_int_eq(kill(pid, SIGTERM), 0);
    finish(pid, r, ring, &a);
    ck_assert_int_eq(a.exit_code, 0);
    free(a.recs);
  }
}
END_TEST

/* Float targets: npy labels of float32 or float64, (N,) or (N, K); CSV
 * target columns; each checked against the loss and the model's outputs. */
static const char *loss_job(const char *input, uint32_t outputs, const char *data,
                            const char *loss) {
  static char text[4096];

  snprintf(text, sizeof(text), "%s  loss: %s\n", job_text(input, outputs, data, 8, 1), loss);
  return text;
}

static void read_targets(const td_jobspec *spec, uint64_t n, float *t) {
  td_split *s;
  uint8_t *x;

  ck_assert_msg(td_split_open(spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)) == 0, "%s",
                errbuf);
  if (td_split_count(s) == UINT64_MAX)
    ck_assert_msg(td_split_scan(s, 0, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  ck_assert_uint_eq(td_split_count(s), n);
  ck_assert_int_eq(td_split_target(s).dtype, TD_DTYPE_F32);
  x = xmalloc(n * td_split_sample_bytes(s));
  ck_assert_msg(td_split_read(s, 0, n, x, t, 1, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  free(x);
  td_split_close(s);
}

START_TEST(test_npy_float_targets) {
  enum { N = 20, K = 3 };
  static const char data[] =
      "  format: npy\n  train: {features: x.npy, labels: y.npy}\n"
      "  test: {features: x.npy, labels: y.npy}\n";
  const uint64_t xs[] = {N, 4}, ys[] = {N, K}, y1[] = {N}, y2[] = {N, 2};
  float x[N * 4] = {0}, y[N * K], got[N * K];
  double y64[N * K];
  uint8_t ids[N] = {0};
  td_jobspec spec;

  for (int i = 0; i < N * K; i++)
    y[i] = (float)i / 8.0f - 1.0f, y64[i] = y[i];
  write_npy("x.npy", "<f4", "False", xs, 2, x, sizeof(x));
  write_npy("y.npy", "<f4", "False", ys, 2, y, sizeof(y));
  parse_job(loss_job("[4]", K, data, "{kind: mse}"), &spec);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  read_targets(&spec, N, got);
  ck_assert_mem_eq(got, y, sizeof(y));
  /* float64, numpy's default, is read as float32 */
  write_npy("y.npy", "<f8", "False", ys, 2, y64, sizeof(y64));
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  memset(got, 0, sizeof(got));
  read_targets(&spec, N, got);
  ck_assert_mem_eq(got, y, sizeof(y));
  /* soft cross-entropy and binary cross-entropy take them too */
  parse_job(loss_job("[4]", K, data, "{targets: soft}"), &spec);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  parse_job(loss_job("[4]", K, data, "{kind: binary_cross_entropy}"), &spec);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  /* one output: (N,) */
  write_npy("y.npy", "<f4", "False", y1, 1, y, N * 4);
  parse_job(loss_job("[4]", 1, data, "{kind: mae}"), &spec);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  /* the wrong width, the wrong kind */
  write_npy("y.npy", "<f4", "False", y2, 2, y, N * 2 * 4);
  parse_job(loss_job("[4]", K, data, "{kind: mse}"), &spec);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "expected (N, 3), a float target per model output",
                    "got (20, 2)");
  write_npy("y.npy", "|u1", "False", y1, 1, ids, sizeof(ids));
  expect_check_fail(&spec, TD_EDATA, "y.npy", "loss mse needs float targets (3 per sample",
                    "holds class integers");
  parse_job(loss_job("[4]", K, data, "{targets: soft}"), &spec);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "loss cross_entropy over soft targets needs float "
                    "targets", NULL);
  /* a target that is not finite is refused, naming the sample */
  y[2 * K + 1] = NAN;
  write_npy("y.npy", "<f4", "False", ys, 2, y, sizeof(y));
  parse_job(loss_job("[4]", K, data, "{kind: mse}"), &spec);
  expect_check_fail(&spec, TD_EDATA, "y.npy", "target 1 of sample 2", "a finite float32");
}
END_TEST

START_TEST(test_csv_target_columns) {
  enum { N = 30 };
  char text[N * 64], data[256];
  size_t n = 0;
  float got[N * 2];
  td_jobspec spec;

  /* columns: t1, x0, x1, x2, t0, x3 */
  for (int i = 0; i < N; i++)
    n += (size_t)snprintf(text + n, sizeof(text) - n, "%d.5,%d,%d,%d,-%d.25,%d\n", i, i, i + 1,
                          i + 2, i, i + 3);
  write_file("d.csv", text, n);
  snprintf(data, sizeof(data), "  format: csv\n  csv: {target_columns: [4, 0]}\n"
           "  train: {features: d.csv}\n  test: {features: d.csv}\n");
  parse_job(loss_job("[4]", 2, data, "{kind: mse}"), &spec);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  read_targets(&spec, N, got);
  for (int i = 0; i < N; i++) {
    ck_assert_float_eq(got[i * 2], -(float)i - 0.25f);
    ck_assert_float_eq(got[i * 2 + 1], (float)i + 0.5f);
  }
  /* a line with a column too few */
  write_file("d.csv", "1,2,3,4,5\n", 10);
  expect_check_fail(&spec, TD_EDATA, "d.csv", "expected 6 columns (the 2 targets and "
                    "model.input's 4 values), got 5", NULL);
  write_file("d.csv", "1,2,3,4,5,6\n1,2,3,4,1e39,6\n", 25);
  expect_check_fail(&spec, TD_EDATA, "d.csv", "line 2 column 5", "a finite float32 target");
}
END_TEST

/* Raw records with float targets: label_dtype float32, one per output at
 * label_offset, the sample after them. */
START_TEST(test_raw_float_targets) {
  enum { N = 12, K = 2 };
  uint8_t rec[N * (K * 4 + 4)];
  float got[N * K];
  char data[256];
  td_jobspec spec;

  for (int i = 0; i < N; i++) {
    float t[K] = {(float)i * 0.5f, -(float)i};

    memcpy(rec + i * 12, t, sizeof(t));
    for (int j = 0; j < 4; j++)
      rec[i * 12 + 8 + j] = (uint8_t)(i + j);
  }
  write_file("r.bin", rec, sizeof(rec));
  snprintf(data, sizeof(data), "  format: raw\n  raw: {record_shape: [4], dtype: uint8, "
           "label_dtype: float32}\n  train: {features: r.bin}\n  test: {features: r.bin}\n");
  parse_job(loss_job("[4]", K, data, "{kind: mae}"), &spec);
  ck_assert_uint_eq(spec.raw.sample_offset, 8);
  ck_assert_uint_eq(spec.raw.record_bytes, 12);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  read_targets(&spec, N, got);
  for (int i = 0; i < N; i++) {
    ck_assert_float_eq(got[i * K], (float)i * 0.5f);
    ck_assert_float_eq(got[i * K + 1], -(float)i);
  }
}
END_TEST

static Suite *dataset_suite(void) {
  Suite *s = suite_create("dataset");
  TCase *tr = tcase_create("readers");
  TCase *tl = tcase_create("loader");

  tcase_add_checked_fixture(tr, tmp_setup, tmp_teardown);
  tcase_set_timeout(tr, 60);
  tcase_add_test(tr, test_npy_formats);
  tcase_add_test(tr, test_npy_errors);
  tcase_add_test(tr, test_npy_wide);
  tcase_add_test(tr, test_csv);
  tcase_add_test(tr, test_csv_errors);
  tcase_add_test(tr, test_raw);
  tcase_add_test(tr, test_npy_float_targets);
  tcase_add_test(tr, test_csv_target_columns);
  tcase_add_test(tr, test_raw_float_targets);
  tcase_add_test(tr, test_jobspec_data_keys);
  tcase_add_test(tr, test_gzip_random_access);
  tcase_add_test(tr, test_idx_split_random);
  tcase_add_test(tr, test_check_fashion_mnist);
  tcase_add_test(tr, test_order);
  tcase_add_test(tr, test_shmcache_header_check);
  tcase_add_test(tr, test_shmcache);
  tcase_add_test(tr, test_shmcache_foreign);
  tcase_add_test(tr, test_nonregular_files);
  suite_add_tcase(s, tr);

  tcase_add_checked_fixture(tl, tmp_setup, tmp_teardown);
  tcase_set_timeout(tl, 60);
  tcase_add_test(tl, test_loader_epochs);
  tcase_add_test(tl, test_loader_bad_label);
  tcase_add_test(tl, test_loader_bad_idx);
  tcase_add_test(tl, test_loader_stops);
  tcase_add_test(tl, test_loader_npy_float_and_validation);
  tcase_add_test(tl, test_loader_streams);
  tcase_add_test(tl, test_loader_streams_gzip_csv);
  tcase_add_test(tl, test_loader_shared_cache);
  tcase_add_test(tl, test_loader_foreign_cache);
  tcase_add_test(tl, test_loader_bad_files);
  suite_add_tcase(s, tl);
  return s;
}

/* Rings a failed test left (named after this runner). */
static void remove_rings(void) {
  char prefix[64], name[300];
  struct dirent *de;
  DIR *d = opendir("/dev/shm");

  if (d == NULL)
    return;
  snprintf(prefix, sizeof(prefix), "traind-test-data-%d-", (int)getpid());
  while ((de = readdir(d)) != NULL) {
    if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
      continue;
    snprintf(name, sizeof(name), "/%s", de->d_name);
    td_ring_unlink(name);
  }
  closedir(d);
}

int main(void) {
  SRunner *sr = srunner_create(dataset_suite());
  int failed;

  snprintf(basedir, sizeof(basedir), "/tmp/traind-test-data-XXXXXX");
  if (mkdtemp(basedir) == NULL) {
    perror("mkdtemp");
    return EXIT_FAILURE;
  }
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  remove_tree(basedir);
  remove_rings();
  td_shmcache_sweep(); /* what a killed test's loaders left */
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
