/* bench_images: images decoded per second by the images format's reader
 * (the loader's decoding: read, decode, convert, resize, on td_parallel's
 * threads), beside Pillow or torchvision doing the same work on the same
 * files in the same run (bench_images.py; skipped when neither is
 * installed).
 *
 *   bench_images [COUNT] [THREADS]
 *
 * Two sets, written to a temporary folder first: Fashion-MNIST's first
 * COUNT images as 28 x 28 gray PNG (a model input of [1, 28, 28], no
 * resizing), and COUNT / 10 synthetic 320 x 240 RGB JPEG photos resized to
 * [3, 224, 224] (an ImageNet-like input). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dataset.h"
#include "error.h"
#include "imgwrite.h"
#include "jobspec.h"

#define FMNIST "/usr/share/datasets/fashion-mnist"

static double clock_s(clockid_t id) {
  struct timespec ts;

  clock_gettime(id, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Wall time, and the process's CPU time: steadier where other work shares
 * the cores (the images per CPU second of one thread are what a core
 * would give alone). */
static double cpu_spent;

/* Seconds to decode the whole train folder of dir with threads. */
static double load_seconds(const char *dir, const char *input, int threads, uint64_t *count) {
  char text[1024], err[512];
  td_jobspec spec;
  td_split *s;
  uint8_t *x, *y;
  double t0, c0, t;

  snprintf(text, sizeof(text),
           "model: {input: %s, layers: [{type: flatten}, {type: dense, units: 10}]}\n"
           "data: {format: images, train: {images: %s/train}, test: {images: %s/train}}\n"
           "train: {batch_size: 1, epochs: 1, optimizer: sgd}\n", input, dir, dir);
  if (td_jobspec_parse(text, strlen(text), "/", &spec, err, sizeof(err)) < 0 ||
      td_split_open(&spec, TD_SPLIT_TRAIN, &s, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_images: %s\n", err);
    exit(1);
  }
  *count = td_split_count(s);
  x = malloc(*count * td_split_sample_bytes(s));
  y = malloc(*count);
  if (x == NULL || y == NULL)
    exit(1);
  t0 = clock_s(CLOCK_MONOTONIC);
  c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
  if (td_split_load(s, x, y, 10, threads, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_images: %s\n", err);
    exit(1);
  }
  t = clock_s(CLOCK_MONOTONIC) - t0;
  cpu_spent = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
  free(x);
  free(y);
  td_split_close(s);
  return t;
}

static void row(const char *name, const char *dir, const char *input, int c, int h, int w,
                int threads) {
  char cmd[2048];
  uint64_t n;
  double t1, c1, tn;

  load_seconds(dir, input, 1, &n); /* the files in the page cache for everyone */
  t1 = load_seconds(dir, input, 1, &n);
  c1 = cpu_spent;
  tn = load_seconds(dir, input, threads, &n);
  printf("%-34s traind 1 thread: %8.0f images/s (%8.0f per CPU second); %d threads: %8.0f "
         "images/s\n", name, n / t1, n / c1, threads, n / tn);
  fflush(stdout);
  snprintf(cmd, sizeof(cmd), "/usr/bin/python3 '%s/tests/bench/bench_images.py' '%s/train' %d %d %d",
           getenv("TD_SOURCE_ROOT") ? getenv("TD_SOURCE_ROOT") : ".", dir, c, h, w);
  if (system(cmd) != 0)
    printf("%-34s peer: failed\n", name);
  fflush(stdout);
}

int main(int argc, char **argv) {
  uint32_t count = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 10000;
  int threads = argc > 2 ? atoi(argv[2]) : 4;
  char dir[] = "/tmp/bench-images-XXXXXX", sub[256], cmd[300];
  uint8_t *px = malloc(320 * 240 * 3);

  if (px == NULL || mkdtemp(dir) == NULL) {
    perror("bench_images");
    return 1;
  }
  snprintf(cmd, sizeof(cmd), "%s/png", dir);
  mkdir(cmd, 0755);
  snprintf(sub, sizeof(sub), "%s/png/train", dir);
  if (imgw_fmnist(FMNIST "/train-images-idx3-ubyte.gz", FMNIST "/train-labels-idx1-ubyte.gz",
                  sub, count, 0, 0) < 0)
    return 1;
  /* photos: smooth gradients and a little texture, as JPEG at quality 90 */
  snprintf(cmd, sizeof(cmd), "%s/jpeg", dir);
  mkdir(cmd, 0755);
  snprintf(cmd, sizeof(cmd), "%s/jpeg/train", dir);
  mkdir(cmd, 0755);
  for (uint32_t i = 0; i < count / 10; i++) {
    char path[400];
    if (i < 10) {
      snprintf(path, sizeof(path), "%s/jpeg/train/c%u", dir, i);
      mkdir(path, 0755);
    }
    for (int k = 0; k < 320 * 240; k++) {
      int x = k % 320, y = k / 320;
      px[3 * k] = (uint8_t)(x * 255 / 320 + i);
      px[3 * k + 1] = (uint8_t)(y * 255 / 240);
      px[3 * k + 2] = (uint8_t)((x ^ y) * 7 + i * 3);
    }
    snprintf(path, sizeof(path), "%s/jpeg/train/c%u/%05u.jpg", dir, i % 10, i);
    if (imgw_jpeg(path, px, 320, 240, 3, 90) < 0)
      return 1;
  }
  printf("bench_images: %u PNG and %u JPEG files in %s, on %ld cores\n", count, count / 10, dir,
         sysconf(_SC_NPROCESSORS_ONLN));
  snprintf(sub, sizeof(sub), "%s/png", dir);
  row("28x28 gray PNG -> [1, 28, 28]", sub, "[1, 28, 28]", 1, 28, 28, threads);
  snprintf(sub, sizeof(sub), "%s/jpeg", dir);
  row("320x240 RGB JPEG -> [3, 224, 224]", sub, "[3, 224, 224]", 3, 224, 224, threads);
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    return 1;
  free(px);
  return 0;
}
