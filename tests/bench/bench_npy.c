/* What reading numpy's default float64 costs beside float32: the same
 * 60000 x 784 samples saved as '<f8' and as '<f4' (with int64 labels), each
 * loaded whole by the dataset reader (td_split_load, as the loader decodes a
 * dataset that fits its memory), beside one thread's memcpy of the float64
 * file's bytes, measured in the same run.
 *
 *   bench_npy [N] [THREADS]   (defaults 60000 and 1; files under $TMPDIR or /tmp)
 *
 * MB/s are of the file's bytes (a float64 file has twice a float32 one's)
 * read from the page cache; each figure is the best of three runs, since
 * on a shared machine others' load only ever makes a run slower.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dataset.h"
#include "error.h"
#include "jobspec.h"

#define ELEMS 784
#define RUNS 3

static double now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);

  if (p == NULL) {
    fprintf(stderr, "bench_npy: out of memory (%zu bytes)\n", n);
    exit(1);
  }
  memset(p, 0, n); /* fault every page in before timing */
  return p;
}

/* A .npy file (format 1.0): the header padded to 64 bytes, then data. */
static void write_npy(const char *path, const char *descr, uint64_t n, int rank,
                      const void *data, size_t bytes) {
  char dict[160], head[128];
  size_t hlen;
  FILE *f;

  snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (%llu%s), }",
           descr, (unsigned long long)n, rank == 2 ? ", 784" : ",");
  hlen = (strlen(dict) + 1 + 10 + 63) / 64 * 64 - 10;
  memcpy(head, "\x93NUMPY\x01\x00", 8);
  head[8] = (char)hlen;
  head[9] = 0;
  memset(head + 10, ' ', hlen);
  memcpy(head + 10, dict, strlen(dict));
  head[10 + hlen - 1] = '\n';
  f = fopen(path, "wb");
  if (f == NULL || fwrite(head, 1, 10 + hlen, f) != 10 + hlen ||
      fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
    fprintf(stderr, "bench_npy: cannot write %s\n", path);
    exit(1);
  }
}

/* Seconds of the best of RUNS whole loads of the train split. */
static double time_load(const char *dir, const char *x, uint64_t n, int threads,
                        uint8_t *samples, int32_t *labels, td_dtype *dtype) {
  char text[1024], err[1024];
  td_jobspec spec;
  double best = 1e30;
  td_split *s;
  int rc;

  snprintf(text, sizeof(text),
           "model:\n  input: [784]\n  layers:\n    - {type: dense, units: 10}\n"
           "data:\n  format: npy\n  train: {images: %s, labels: y.npy}\n"
           "  test: {images: %s, labels: y.npy}\n"
           "train:\n  batch_size: 64\n  epochs: 1\n  optimizer: {type: sgd, lr: 0.1}\n", x, x);
  if ((rc = td_jobspec_parse(text, strlen(text), dir, &spec, err, sizeof(err))) < 0 ||
      (rc = td_split_open(&spec, TD_SPLIT_TRAIN, &s, err, sizeof(err))) < 0) {
    fprintf(stderr, "bench_npy: %s\n", err);
    exit(1);
  }
  *dtype = td_split_dtype(s);
  for (int r = 0; r < RUNS; r++) {
    double t0 = now(), t;
    if ((rc = td_split_load(s, samples, labels, 10, threads, err, sizeof(err))) < 0) {
      fprintf(stderr, "bench_npy: %s\n", err);
      exit(1);
    }
    t = now() - t0;
    best = t < best ? t : best;
  }
  if (td_split_count(s) != n) {
    fprintf(stderr, "bench_npy: %llu samples, expected %llu\n",
            (unsigned long long)td_split_count(s), (unsigned long long)n);
    exit(1);
  }
  td_split_close(s);
  return best;
}

int main(int argc, char **argv) {
  uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 60000;
  int threads = argc > 2 ? atoi(argv[2]) : 1;
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char dir[512], path[600];
  size_t elems = (size_t)n * ELEMS;
  double *d, tmc = 1e30, t64, t32;
  float *f, *out;
  int64_t *lab;
  int32_t *labels;
  td_dtype dt64, dt32;

  if (n == 0 || threads < 1) {
    fprintf(stderr, "usage: bench_npy [N] [THREADS]\n");
    return 2;
  }
  snprintf(dir, sizeof(dir), "%s/bench_npy-XXXXXX", tmp);
  if (mkdtemp(dir) == NULL) {
    perror("bench_npy: mkdtemp");
    return 1;
  }
  d = xmalloc(elems * 8);
  f = xmalloc(elems * 4);
  out = xmalloc(elems * 4);
  lab = xmalloc(n * 8);
  labels = xmalloc(n * sizeof(*labels));
  for (size_t i = 0; i < elems; i++) {
    d[i] = (double)(i % 65521) / 65521.0 - 0.5;
    f[i] = (float)d[i];
  }
  for (uint64_t i = 0; i < n; i++)
    lab[i] = (int64_t)(i % 10);
  snprintf(path, sizeof(path), "%s/x64.npy", dir);
  write_npy(path, "<f8", n, 2, d, elems * 8);
  snprintf(path, sizeof(path), "%s/x32.npy", dir);
  write_npy(path, "<f4", n, 2, f, elems * 4);
  snprintf(path, sizeof(path), "%s/y.npy", dir);
  write_npy(path, "<i8", n, 1, lab, n * 8);

  for (int r = 0; r < RUNS; r++) {
    double t0 = now(), t;
    memcpy(d, d + elems / 2, elems / 2 * 8); /* elems * 8 bytes in two halves */
    memcpy(d + elems / 2, d, elems / 2 * 8);
    t = now() - t0;
    tmc = t < tmc ? t : tmc;
  }
  t64 = time_load(dir, "x64.npy", n, threads, (uint8_t *)out, labels, &dt64);
  if (memcmp(out, f, elems * 4) != 0) {
    fprintf(stderr, "bench_npy: the float64 file did not load as its float32 cast\n");
    return 1;
  }
  t32 = time_load(dir, "x32.npy", n, threads, (uint8_t *)out, labels, &dt32);

  printf("%llu x %d samples, %d thread%s, best of %d (file bytes per second)\n",
         (unsigned long long)n, ELEMS, threads, threads == 1 ? "" : "s", RUNS);
  printf("memcpy of %zu MB (1 thread):           %8.0f MB/s\n", elems * 8 / 1000000,
         (double)(elems * 8) / tmc / 1e6);
  printf("load '<f8' -> %s (%zu MB file):     %8.0f MB/s  %.3f s\n", td_dtype_name(dt64),
         elems * 8 / 1000000, (double)(elems * 8) / t64 / 1e6, t64);
  printf("load '<f4' -> %s (%zu MB file):     %8.0f MB/s  %.3f s\n", td_dtype_name(dt32),
         elems * 4 / 1000000, (double)(elems * 4) / t32 / 1e6, t32);

  snprintf(path, sizeof(path), "%s/x64.npy", dir);
  unlink(path);
  snprintf(path, sizeof(path), "%s/x32.npy", dir);
  unlink(path);
  snprintf(path, sizeof(path), "%s/y.npy", dir);
  unlink(path);
  rmdir(dir);
  free(d);
  free(f);
  free(out);
  free(lab);
  free(labels);
  return 0;
}
