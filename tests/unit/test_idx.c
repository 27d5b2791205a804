#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"
#include "idx.h"
#include "ring.h"

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

/* The real traind-loader against a small generated dataset. */

#define L_TRAIN 103
#define L_TEST 25
#define L_BATCH 10
#define L_SIDE 4
#define L_ELEMS (L_SIDE * L_SIDE)

/* Sample i of a split: its id in the first two pixels, a pattern after. */
static uint8_t sample_pixel(uint32_t split, uint32_t i, size_t k) {
  if (k == 0)
    return (uint8_t)i;
  if (k == 1)
    return (uint8_t)(i >> 8);
  return (uint8_t)(i * 7u + k * 3u + split * 101u);
}

static uint8_t sample_label(uint32_t i) { return (uint8_t)(i % 10u); }

static void write_split(const char *name, uint32_t split, uint32_t n, int gzip, int bad_label_at) {
  uint32_t idims[] = {n, L_SIDE, L_SIDE}, ldims[] = {n};
  struct blob im = make_idx(TD_IDX_UINT8, 3, idims, (size_t)n * L_ELEMS);
  struct blob lb = make_idx(TD_IDX_UINT8, 1, ldims, n);
  char path[PATH_MAX];

  for (uint32_t i = 0; i < n; i++) {
    for (size_t k = 0; k < L_ELEMS; k++)
      im.p[16 + (size_t)i * L_ELEMS + k] = sample_pixel(split, i, k);
    lb.p[8 + i] = sample_label(i);
  }
  if (bad_label_at >= 0)
    lb.p[8 + bad_label_at] = 12;
  snprintf(path, sizeof(path), "%s/%s-images.idx%s", tmpdir, name, gzip ? ".gz" : "");
  if (gzip)
    write_gzip_parts(path, im.p, im.n, 1);
  else
    write_plain(path, im.p, im.n);
  snprintf(path, sizeof(path), "%s/%s-labels.idx", tmpdir, name);
  write_plain(path, lb.p, lb.n);
  free(im.p);
  free(lb.p);
}

static void write_job(const char *path, int epochs, int seed) {
  char text[2048];

  /* Relative data paths: the loader resolves them against --base-dir. */
  snprintf(text, sizeof(text),
           "name: loader-test\n"
           "model:\n"
           "  input: [%d, %d]\n"
           "  layers:\n"
           "    - {type: dense, units: 8}\n"
           "    - {type: relu}\n"
           "    - {type: dense, units: 10}\n"
           "data:\n"
           "  format: idx\n"
           "  train:\n"
           "    images: train-images.idx.gz\n"
           "    labels: train-labels.idx\n"
           "  test:\n"
           "    images: test-images.idx\n"
           "    labels: test-labels.idx\n"
           "train:\n"
           "  batch_size: %d\n"
           "  epochs: %d\n"
           "  seed: %d\n"
           "  optimizer: {type: sgd, lr: 0.1}\n",
           L_SIDE, L_SIDE, L_BATCH, epochs, seed);
  write_plain(path, text, strlen(text));
}

static void loader_exe(char *buf, size_t cap) {
  const char *root = getenv("TD_BUILD_ROOT");
  char self[PATH_MAX];
  ssize_t n;

  if (root != NULL) {
    snprintf(buf, cap, "%s/daemon/traind-loader", root);
    return;
  }
  /* Run by hand: the binary is BUILD/tests/test_idx. */
  n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  ck_assert_int_gt(n, 0);
  self[n] = '\0';
  *strrchr(self, '/') = '\0';
  *strrchr(self, '/') = '\0';
  snprintf(buf, cap, "%s/daemon/traind-loader", self);
}

struct run {
  uint32_t nrec;
  uint32_t rec[4096]; /* kind<<24 | epoch<<16 | sample id, in delivery order */
  int ended;
  int error;
  char message[1024];
  int exit_code;
};

/* Create the ring `name` and start the loader on tmpdir/job.yaml, from a
 * start position if start_epoch is not NULL; *r is the consumer's end. */
static pid_t spawn_loader(const char *ring, const char *start_epoch, const char *start_batch,
                          td_ring **r) {
  char exe[PATH_MAX], job[PATH_MAX], stderr_path[PATH_MAX];
  pid_t pid;

  loader_exe(exe, sizeof(exe));
  ck_assert_msg(access(exe, X_OK) == 0, "%s is not built", exe);
  tmp_path(job, sizeof(job), "job.yaml");
  tmp_path(stderr_path, sizeof(stderr_path), "loader.err");
  td_ring_unlink(ring);
  ck_assert_int_eq(td_ring_create(ring, 4, td_batch_bytes(L_BATCH, L_ELEMS)), 0);
  ck_assert_int_eq(td_ring_open(ring, r), 0);

  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    char ppid[32];
    char *argv[] = {exe, "--job", job, "--base-dir", tmpdir, "--ring", (char *)ring,
                    "--parent-pid", ppid, "--start-epoch", (char *)start_epoch,
                    "--start-batch", (char *)start_batch, NULL};
    int fd = open(stderr_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0)
      dup2(fd, 2);
    snprintf(ppid, sizeof(ppid), "%d", (int)getppid());
    if (start_epoch == NULL)
      argv[9] = NULL;
    execv(exe, argv);
    _exit(127);
  }
  td_ring_set_peer(*r, pid);
  return pid;
}

/* Named after the runner too, so that main() can find what a failed test
 * left. */
static void ring_name(char *buf, size_t cap) {
  snprintf(buf, cap, "/traind-test-idx-%d-%d", (int)getppid(), (int)getpid());
}

static void remove_rings(void) {
  char prefix[64], name[300];
  struct dirent *de;
  DIR *d = opendir("/dev/shm");

  if (d == NULL)
    return;
  snprintf(prefix, sizeof(prefix), "traind-test-idx-%d-", (int)getpid());
  while ((de = readdir(d)) != NULL) {
    if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
      continue;
    snprintf(name, sizeof(name), "/%s", de->d_name);
    td_ring_unlink(name);
  }
  closedir(d);
}

/* Run the loader to its end and check every batch as it comes. */
static void run_loader_from(struct run *out, const char *start_epoch, const char *start_batch) {
  char ring[64];
  td_ring *r;
  pid_t pid;
  int status;

  memset(out, 0, sizeof(*out));
  ring_name(ring, sizeof(ring));
  pid = spawn_loader(ring, start_epoch, start_batch, &r);

  for (;;) {
    const td_batch_hdr *h;
    const void *slot;
    size_t len;
    int rc = td_ring_read_begin(r, &slot, &len);

    ck_assert_msg(rc == 0, "ring closed before END or ERROR: %s", td_err_name(rc));
    h = slot;
    ck_assert_int_eq(td_batch_check(h, len), 0);
    if (h->kind == TD_BATCH_END || h->kind == TD_BATCH_ERROR) {
      out->ended = h->kind == TD_BATCH_END;
      out->error = h->error;
      if (h->kind == TD_BATCH_ERROR)
        td_batch_error_text(h, len, out->message, sizeof(out->message));
      else
        out->rec[out->nrec++] = (uint32_t)TD_BATCH_END << 24 | h->epoch << 16;
      td_ring_read_end(r);
      break;
    }
    ck_assert_uint_eq(h->sample_bytes, L_ELEMS);
    ck_assert_uint_eq(h->first_sample, (uint64_t)h->index * L_BATCH);
    for (uint32_t j = 0; j < h->count; j++) {
      const uint8_t *px = td_batch_pixels(h) + (size_t)j * L_ELEMS;
      uint32_t id = px[0] | (uint32_t)px[1] << 8, split = h->kind == TD_BATCH_TRAIN ? 0 : 1;
      for (size_t k = 0; k < L_ELEMS; k++)
        ck_assert_uint_eq(px[k], sample_pixel(split, id, k));
      ck_assert_uint_eq(td_batch_labels(h)[j], sample_label(id));
      ck_assert_uint_lt(out->nrec, sizeof(out->rec) / sizeof(out->rec[0]));
      out->rec[out->nrec++] = h->kind << 24 | h->epoch << 16 | id;
    }
    /* Short only at the end of a pass. */
    ck_assert_uint_eq(h->count, h->index + 1 < h->nbatches
                                    ? L_BATCH
                                    : (h->kind == TD_BATCH_TRAIN ? L_TRAIN : L_TEST) -
                                          h->index * L_BATCH);
    td_ring_read_end(r);
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status), "loader died (status %d)", status);
  out->exit_code = WEXITSTATUS(status);
  td_ring_close(r);
  ck_assert_int_eq(td_ring_unlink(ring), 0);
}

static void run_loader(struct run *out) {
  run_loader_from(out, NULL, NULL);
}

/* The train ids of one epoch, in order, from a run's records. */
static void epoch_order(const struct run *run, uint32_t epoch, uint32_t *ids) {
  uint32_t n = 0;

  for (uint32_t i = 0; i < run->nrec; i++)
    if (run->rec[i] >> 24 == TD_BATCH_TRAIN && (run->rec[i] >> 16 & 0xff) == epoch)
      ids[n++] = run->rec[i] & 0xffff;
  ck_assert_uint_eq(n, L_TRAIN);
}

START_TEST(test_loader_epochs) {
  static struct run a, b, c;
  uint32_t order[3][L_TRAIN], other[L_TRAIN];
  char job[PATH_MAX];
  uint32_t pos = 0;

  write_split("train", 0, L_TRAIN, 1, -1);
  write_split("test", 1, L_TEST, 0, -1);
  tmp_path(job, sizeof(job), "job.yaml");
  write_job(job, 3, 42);
  run_loader(&a);
  ck_assert_msg(a.ended, "no END; error %d: %s", a.error, a.message);
  ck_assert_int_eq(a.exit_code, 0);

  /* Per epoch: every train sample once, then the test set in order; END last. */
  for (uint32_t e = 0; e < 3; e++) {
    uint8_t seen[L_TRAIN] = {0};
    for (uint32_t i = 0; i < L_TRAIN; i++, pos++) {
      uint32_t rec = a.rec[pos], id = rec & 0xffff;
      ck_assert_uint_eq(rec >> 24, TD_BATCH_TRAIN);
      ck_assert_uint_eq(rec >> 16 & 0xff, e);
      ck_assert_uint_lt(id, L_TRAIN);
      ck_assert_msg(!seen[id], "epoch %u: sample %u twice", e, id);
      seen[id] = 1;
    }
    for (uint32_t i = 0; i < L_TEST; i++, pos++)
      ck_assert_uint_eq(a.rec[pos], (uint32_t)TD_BATCH_TEST << 24 | e << 16 | i);
  }
  ck_assert_uint_eq(a.rec[pos++], (uint32_t)TD_BATCH_END << 24 | 3u << 16);
  ck_assert_uint_eq(pos, a.nrec);

  for (uint32_t e = 0; e < 3; e++)
    epoch_order(&a, e, order[e]);
  ck_assert_msg(memcmp(order[0], order[1], sizeof(order[0])) != 0, "epochs 0 and 1 alike");
  ck_assert_msg(memcmp(order[1], order[2], sizeof(order[0])) != 0, "epochs 1 and 2 alike");

  /* Same seed: the very same stream; another seed: another order. */
  run_loader(&b);
  ck_assert_int_eq(b.exit_code, 0);
  ck_assert_uint_eq(b.nrec, a.nrec);
  ck_assert_mem_eq(b.rec, a.rec, a.nrec * sizeof(a.rec[0]));
  write_job(job, 3, 43);
  run_loader(&c);
  ck_assert_int_eq(c.exit_code, 0);
  epoch_order(&c, 0, other);
  ck_assert_msg(memcmp(order[0], other, sizeof(other)) != 0, "seeds 42 and 43 alike");

  /* Resuming at epoch 1, batch 3 gives exactly the rest of the first run. */
  write_job(job, 3, 42);
  run_loader_from(&c, "1", "3");
  ck_assert_int_eq(c.exit_code, 0);
  pos = L_TRAIN + L_TEST + 3 * L_BATCH;
  ck_assert_uint_eq(c.nrec, a.nrec - pos);
  ck_assert_mem_eq(c.rec, a.rec + pos, c.nrec * sizeof(c.rec[0]));
  run_loader_from(&c, "3", "0"); /* the end: only END */
  ck_assert_int_eq(c.exit_code, 0);
  ck_assert_uint_eq(c.nrec, 1);
  run_loader_from(&c, "1", "12"); /* past the 11 batches of an epoch */
  ck_assert_int_eq(c.exit_code, 1);
  ck_assert_msg(strstr(c.message, "start position") != NULL, "%s", c.message);
}
END_TEST

START_TEST(test_loader_bad_label) {
  static struct run a;
  char job[PATH_MAX], labels[PATH_MAX];

  write_split("train", 0, L_TRAIN, 1, 57);
  write_split("test", 1, L_TEST, 0, -1);
  tmp_path(job, sizeof(job), "job.yaml");
  write_job(job, 2, 1);
  run_loader(&a);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert(!a.ended);
  ck_assert_int_eq(a.error, TD_EDATA);
  tmp_path(labels, sizeof(labels), "train-labels.idx");
  ck_assert_msg(strstr(a.message, labels) != NULL, "%s", a.message);
  ck_assert_msg(strstr(a.message, "index 57 is 12") != NULL, "%s", a.message);
  ck_assert_msg(strstr(a.message, "10 classes") != NULL, "%s", a.message);
  ck_assert_uint_eq(a.nrec, 0); /* nothing before the error */
}
END_TEST

START_TEST(test_loader_bad_file) {
  static struct run a;
  char job[PATH_MAX], images[PATH_MAX];
  uint32_t dims[] = {L_TEST, 5, 5};
  struct blob b = make_idx(TD_IDX_UINT8, 3, dims, L_TEST * 25);

  write_split("train", 0, L_TRAIN, 1, -1);
  write_split("test", 1, L_TEST, 0, -1);
  tmp_path(images, sizeof(images), "test-images.idx");
  write_plain(images, b.p, b.n); /* 5x5 images for a 4x4 model */
  free(b.p);
  tmp_path(job, sizeof(job), "job.yaml");
  write_job(job, 1, 1);
  run_loader(&a);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, images) != NULL, "%s", a.message);
  ck_assert_msg(strstr(a.message, "25 bytes") != NULL && strstr(a.message, "16 elements"),
                "%s", a.message);

  write_plain(images, "\0\0\x08", 3);
  run_loader(&a);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, images) == a.message, "%s", a.message);
  ck_assert_msg(strstr(a.message, "truncated header") != NULL, "%s", a.message);

  /* Fewer labels than images. */
  write_split("test", 1, L_TEST, 0, -1);
  write_split("short", 1, L_TEST - 1, 0, -1);
  tmp_path(images, sizeof(images), "short-labels.idx");
  tmp_path(job, sizeof(job), "test-labels.idx");
  ck_assert_int_eq(rename(images, job), 0);
  tmp_path(job, sizeof(job), "job.yaml");
  run_loader(&a);
  ck_assert_int_eq(a.exit_code, 1);
  ck_assert_int_eq(a.error, TD_EDATA);
  ck_assert_msg(strstr(a.message, "24 labels") != NULL && strstr(a.message, "25 images"),
                "%s", a.message);
}
END_TEST

/* The consumer closing the ring, or SIGTERM, ends the loader quietly. */
START_TEST(test_loader_stops) {
  char job[PATH_MAX], ring[64];
  const void *slot;
  td_ring *r;
  size_t len;
  pid_t pid;
  int status;

  write_split("train", 0, L_TRAIN, 1, -1);
  write_split("test", 1, L_TEST, 0, -1);
  tmp_path(job, sizeof(job), "job.yaml");
  write_job(job, 50, 1);
  ring_name(ring, sizeof(ring));
  for (int how = 0; how < 2; how++) {
    pid = spawn_loader(ring, NULL, NULL, &r);
    ck_assert_int_eq(td_ring_read_begin(r, &slot, &len), 0);
    ck_assert_uint_eq(((const td_batch_hdr *)slot)->kind, TD_BATCH_TRAIN);
    td_ring_read_end(r);
    if (how == 0)
      td_ring_shutdown(r, 0);
    else
      ck_assert_int_eq(kill(pid, SIGTERM), 0);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "loader status %d", status);
    td_ring_close(r);
    ck_assert_int_eq(td_ring_unlink(ring), 0);
  }
}
END_TEST

static Suite *idx_suite(void) {
  Suite *s = suite_create("idx");
  TCase *tc = tcase_create("idx");
  TCase *tl = tcase_create("loader");

  tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_fashion_mnist);
  tcase_add_test(tc, test_plain_gzip_and_limit);
  tcase_add_test(tc, test_truncated);
  tcase_add_test(tc, test_bad_headers);
  tcase_add_test(tc, test_trailing_and_corrupt);
  tcase_add_test(tc, test_missing_and_unreadable);
  suite_add_tcase(s, tc);

  tcase_add_checked_fixture(tl, tmp_setup, tmp_teardown);
  tcase_set_timeout(tl, 60);
  tcase_add_test(tl, test_loader_epochs);
  tcase_add_test(tl, test_loader_bad_label);
  tcase_add_test(tl, test_loader_bad_file);
  tcase_add_test(tl, test_loader_stops);
  suite_add_tcase(s, tl);
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
  remove_rings();
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
