/* The writer's own cost: the worker's seven training scalars as one event
 * (td_tfevents_scalars: protobuf-c packing, two CRC-32Cs, the buffer and its
 * flushes to a file in $TMPDIR), per event, beside the CRC's throughput.
 * The CPU time is the steadier figure on shared cores.  The end-to-end
 * figure is tests/bench/bench_tfevents.sh's.
 *
 *   bench_tfevents [EVENTS]     (default 1000000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "tfevents.h"
#include "util.h"

/* This thread's CPU seconds: on shared cores, steadier than the wall's. */
static double cpu_now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  long events = argc > 1 ? atol(argv[1]) : 1000000;
  const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
  char dir[256], path[512], err[512];
  static unsigned char buf[1 << 20];
  td_tfevents *w;
  double t0, t1, c0, c1;
  uint32_t crc = 0;

  snprintf(dir, sizeof(dir), "%s/bench_tfevents.XXXXXX", tmp);
  if (events <= 0 || mkdtemp(dir) == NULL || td_tfevents_open(dir, 1.0, &w, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_tfevents: cannot start: %s\n", err);
    return 1;
  }
  t0 = td_now_mono();
  c0 = cpu_now();
  for (long i = 1; i <= events; i++) {
    const td_tfscalar v[] = {
        {"train/loss", 1.0 / (double)i},      {"train/accuracy", 0.5},
        {"train/samples_per_sec", 12000.0},   {"train/data_wait", 0.001},
        {"train/learning_rate", 0.001},       {"memory/used_bytes", 2e6},
        {"memory/planned_bytes", 2e6},
    };
    if (td_tfevents_scalars(w, i, 1.7e9 + (double)i, v, 7) < 0) {
      fprintf(stderr, "bench_tfevents: a write failed\n");
      return 1;
    }
  }
  snprintf(path, sizeof(path), "%s", td_tfevents_path(w));
  td_tfevents_close(w);
  t1 = td_now_mono();
  c1 = cpu_now();
  printf("%ld events of 7 scalars: %.0f ns an event (%.0f ns of CPU), written to a file in %s\n",
         events, (t1 - t0) / (double)events * 1e9, (c1 - c0) / (double)events * 1e9, tmp);
  unlink(path);
  rmdir(dir);
  memset(buf, 0x5a, sizeof(buf));
  t0 = td_now_mono();
  for (int i = 0; i < 1000; i++)
    crc = td_crc32c(crc, buf, sizeof(buf));
  t1 = td_now_mono();
  printf("crc32c: %.0f MB/s (%08x)\n", 1000.0 * sizeof(buf) / (t1 - t0) / 1e6, crc);
  return 0;
}
