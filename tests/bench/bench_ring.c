/* Throughput of the data path, beside this machine's memcpy bandwidth
 * measured in the same run.
 *
 *   bench_ring [--loader PATH] [--job FILE] [--seconds S]
 *
 * 1. memcpy: one thread copying a 256 MiB buffer (bytes copied per second).
 * 2. ring: a producer process copies batches into the shared-memory ring
 *    and a consumer process reads each in place (as the CPU backend's first
 *    layer, or a GPU's copy engine from a pinned slot, does) or copies it out
 *    (as a worker copying to pageable memory would), for several slot sizes;
 *    bytes delivered per second.  The target is at least half of memcpy.
 * 3. loader: the real traind-loader on JOB (default: the Fashion-MNIST
 *    example), drained as fast as the ring allows: in memory, decoding the
 *    files; in memory, mapping the shared copy another loader holds; and
 *    streaming with a 32 MiB budget.  Samples per second, to set beside what
 *    a trainer consumes, and how long the first batch took.
 *
 * Each memcpy and ring figure is the best of three runs: on a shared
 * machine the others' load only ever makes a run slower.  The worker's share
 * of time spent waiting for data is in its progress events (data_wait=).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "jobdesc.h"
#include "jobspec.h"
#include "ring.h"
#include "util.h"

#define BIG ((size_t)256 << 20)

static double now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint8_t *big_buffer(void) {
  uint8_t *p = malloc(BIG);

  if (p == NULL) {
    fprintf(stderr, "bench_ring: out of memory\n");
    exit(1);
  }
  memset(p, 1, BIG); /* fault every page in before timing */
  return p;
}

static double bench_memcpy(double seconds) {
  uint8_t *src = big_buffer(), *dst = big_buffer();
  double t0 = now(), t;
  size_t bytes = 0;

  do {
    memcpy(dst, src, BIG);
    bytes += BIG;
    src[bytes % 4096]++; /* keep the copies from being optimised away */
    t = now() - t0;
  } while (t < seconds);
  free(src);
  free(dst);
  return (double)bytes / t / 1e9;
}

/* Every byte read. */
static uint64_t read_all(const void *p, size_t len) {
  const uint64_t *w = p;
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i, n = len / 8;

  for (i = 0; i + 4 <= n; i += 4) {
    a += w[i];
    b ^= w[i + 1];
    c += w[i + 2];
    d ^= w[i + 3];
  }
  for (; i < n; i++)
    a += w[i];
  return a + b + c + d;
}

/* One size: the producer copies batches in; the consumer (a child) reads
 * each in place or copies it out. */
static double bench_ring(size_t slot, int copy_out, double seconds) {
  char name[64];
  uint64_t n = (uint64_t)(seconds * 8e9 / (double)slot) + 16, i;
  td_ring *r;
  pid_t pid;
  double t0, t;
  int status;

  snprintf(name, sizeof(name), "/traind-bench-ring-%d", (int)getpid());
  td_ring_unlink(name);
  if (td_ring_create(name, 4, slot) < 0 || td_ring_open(name, &r) < 0) {
    fprintf(stderr, "bench_ring: cannot create the ring %s\n", name);
    exit(1);
  }
  pid = fork();
  if (pid == 0) {
    uint8_t *dst = copy_out ? big_buffer() : NULL;
    size_t off = 0;
    uint64_t sum = 0;
    td_ring_set_peer(r, getppid());
    for (;;) {
      const void *p;
      size_t len;
      if (td_ring_read_begin(r, &p, &len) < 0)
        break;
      if (copy_out)
        memcpy(dst + off, p, len);
      else
        sum += read_all(p, len);
      off = off + 2 * slot <= BIG ? off + slot : 0;
      td_ring_read_end(r);
    }
    _exit(sum == 42 ? 1 : 0);
  }
  {
    uint8_t *src = big_buffer();
    size_t off = 0;
    td_ring_set_peer(r, pid);
    t0 = now();
    for (i = 0; i < n; i++) {
      void *p;
      if (td_ring_write_begin(r, &p) < 0)
        break;
      memcpy(p, src + off, slot);
      off = off + 2 * slot <= BIG ? off + slot : 0;
      td_ring_write_end(r, slot);
      if ((i & 15) == 0 && now() - t0 > seconds) {
        i++;
        break;
      }
    }
    td_ring_shutdown(r, 0);
    waitpid(pid, &status, 0); /* the consumer drains the rest, then exits */
    t = now() - t0;
    free(src);
  }
  td_ring_close(r);
  td_ring_unlink(name);
  return (double)i * (double)slot / t / 1e9;
}

struct loader_run {
  char ring[64];
  char desc[64];
  td_ring *r;
  pid_t pid;
};

/* Start the real loader on job with a memory budget, on its own ring. */
static int loader_start(struct loader_run *lr, const char *loader, const char *job,
                        const char *budget, int which) {
  char err[512];
  td_jobspec spec;
  size_t slot;

  /* The loader reads a description, as traind writes it. */
  snprintf(lr->desc, sizeof(lr->desc), "/tmp/bench-ring-%d-%d.tdj", (int)getpid(), which);
  if (td_jobspec_load(job, &spec, err, sizeof(err)) < 0 ||
      td_jobdesc_save(lr->desc, &spec, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_ring: %s\n", err);
    return -1;
  }
  /* Room for samples of up to 4 bytes per element. */
  slot = td_batch_bytes(spec.batch_size, (uint32_t)td_jobspec_input_elems(&spec) * 4, 4);
  snprintf(lr->ring, sizeof(lr->ring), "/traind-bench-loader-%d-%d", (int)getpid(), which);
  td_ring_unlink(lr->ring);
  if (td_ring_create(lr->ring, 4, slot) < 0 || td_ring_open(lr->ring, &lr->r) < 0)
    return -1;
  lr->pid = fork();
  if (lr->pid == 0) {
    const char *argv[] = {loader, "--job", lr->desc, "--ring", lr->ring, "--memory-budget", budget,
                          NULL};
    execv(loader, (char **)argv);
    fprintf(stderr, "bench_ring: cannot run %s: %s\n", loader, strerror(errno));
    _exit(127);
  }
  td_ring_set_peer(lr->r, lr->pid);
  return 0;
}

static void loader_stop(struct loader_run *lr) {
  td_ring_shutdown(lr->r, 0);
  waitpid(lr->pid, NULL, 0);
  td_ring_close(lr->r);
  td_ring_unlink(lr->ring);
  unlink(lr->desc);
}

/* Drain a loader: samples/s and GB/s from its first batch on. */
static void bench_loader(const char *loader, const char *job, const char *budget,
                         const char *what) {
  struct loader_run lr;
  uint64_t samples = 0, bytes = 0;
  double start = now(), first = 0, t0 = 0, t;
  char err[512];

  if (loader_start(&lr, loader, job, budget, 0) < 0)
    return;
  for (;;) {
    const td_batch_hdr *h;
    const void *p;
    size_t len;
    if (td_ring_read_begin(lr.r, &p, &len) < 0)
      break;
    h = p;
    if (samples == 0) {
      t0 = now(); /* from the first batch: decoding the files is not the ring's */
      first = t0 - start;
    }
    if (h->kind == TD_BATCH_END || h->kind == TD_BATCH_ERROR) {
      if (h->kind == TD_BATCH_ERROR) {
        td_batch_error_text(h, len, err, sizeof(err));
        fprintf(stderr, "bench_ring: loader: %s\n", err);
      }
      td_ring_read_end(lr.r);
      break;
    }
    samples += h->count;
    bytes += len;
    td_ring_read_end(lr.r);
  }
  t = now() - t0;
  loader_stop(&lr);
  printf("loader, %-27s %9.0f samples/s %6.2f GB/s, first batch after %4.0f ms\n", what,
         (double)samples / t, (double)bytes / t / 1e9, first * 1e3);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"loader", required_argument, NULL, 'l'},
      {"job", required_argument, NULL, 'j'},
      {"seconds", required_argument, NULL, 's'},
      {NULL, 0, NULL, 0},
  };
  static const size_t sizes[] = {128 * 785 + 40, (size_t)1 << 20, (size_t)16 << 20};
  char loader[1024] = "", self[1024];
  const char *job = TD_SOURCE_ROOT "/examples/fashion-mnist-mlp.yaml";
  double seconds = 1.0, mc = 0;
  ssize_t n;
  int c;

  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'l': td_strlcpy(loader, optarg, sizeof(loader)); break;
    case 'j': job = optarg; break;
    case 's': seconds = atof(optarg); break;
    default:
      fprintf(stderr, "usage: bench_ring [--loader PATH] [--job FILE] [--seconds S]\n");
      return 2;
    }
  }
  if (loader[0] == '\0' && (n = readlink("/proc/self/exe", self, sizeof(self) - 1)) > 0) {
    self[n] = '\0';
    *strrchr(self, '/') = '\0'; /* BUILD/tests/bench_ring -> BUILD/daemon/traind-loader */
    *strrchr(self, '/') = '\0';
    snprintf(loader, sizeof(loader), "%.1000s/daemon/traind-loader", self);
  }
  signal(SIGPIPE, SIG_IGN);

  for (int k = 0; k < 3; k++) {
    double g = bench_memcpy(seconds);
    mc = g > mc ? g : mc;
  }
  printf("memcpy (1 thread, 256 MiB):                         %6.2f GB/s\n", mc);
  for (int copy_out = 0; copy_out < 2; copy_out++)
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
      double g = 0;
      for (int k = 0; k < 3; k++) {
        double one = bench_ring(sizes[i], copy_out, seconds);
        g = one > g ? one : g;
      }
      printf("ring, consumer %s (4 slots of %8zu bytes): %6.2f GB/s = %.2f x memcpy%s\n",
             copy_out ? "copies out" : "reads     ", sizes[i], g, g / mc,
             i == 0 ? "  (an MLP batch: 128 x 785)" : "");
    }
  if (access(job, R_OK) == 0 && access(loader, X_OK) == 0) {
    struct loader_run holder;
    printf("loader: %s\n", job);
    bench_loader(loader, job, "4GiB", "in memory, decoding:");
    /* Another job holding the shared copy: this one maps it. */
    if (loader_start(&holder, loader, job, "4GiB", 1) == 0) {
      const void *p;
      size_t len;
      if (td_ring_read_begin(holder.r, &p, &len) == 0) /* its copy is ready */
        bench_loader(loader, job, "4GiB", "in memory, shared copy:");
      loader_stop(&holder);
    }
    bench_loader(loader, job, "32MiB", "streaming (32 MiB budget):");
  } else {
    printf("loader: skipped (%s or %s missing)\n", loader, job);
  }
  return 0;
}
