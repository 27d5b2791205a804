/* The dense ops of the CPU backend alone, at a model's shapes, beside
 * OpenBLAS SGEMM at the same shapes measured in the same run:
 *
 *   dense      td_backend_dense_fwd and _bwd (kernels/cpu/dense.c: the
 *              fixed order of additions), on the backend's lanes
 *   blocked    the same products as sgemm calls of TD_BLOCK_ROWS rows on the
 *              backend's lanes (what the dense ops were before dense.c, and
 *              what a backend without dense ops of its own still runs)
 *   openblas   one cblas_sgemm a product, whole batch, OpenBLAS's own
 *              threads (its default count): the speed with no fixed order
 *
 * Wall time and the process's CPU time per call, GFLOP/s of each (2 m n k a
 * product).  On shared cores the CPU time is the steadier figure.  A
 * program that prints numbers, not a test.
 *
 *   bench_dense [BATCH [IN OUT]...]   default: 128, the MLP example's layers
 *                                     784 512, 512 256, 256 10
 *
 * TRAIND_CPU_LANES sets the backend's lanes (default: the cores). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend.h"
#include "util.h"

#define REPEATS 5

typedef struct layer {
  int in, out;
} layer;

static double cpu_now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static float *rand_buf(size_t n, unsigned *seed) {
  float *p = malloc(n * sizeof(float));

  for (size_t i = 0; p != NULL && i < n; i++)
    p[i] = (float)rand_r(seed) / (float)RAND_MAX - 0.5f;
  return p;
}

typedef enum { WAY_DENSE, WAY_BLOCKED, WAY_OPENBLAS } way;

/* One forward and one backward (dx too) of a layer, one of three ways. */
static void run(td_backend *be, way how, int n, const layer *l, const float *x,
                const float *w, const float *b, float *y, const float *dy, float *dx,
                float *dw, float *db) {
  int in = l->in, out = l->out;

  if (how == WAY_DENSE) {
    td_backend_dense_fwd(be, x, w, b, y, n, in, out);
    td_backend_dense_bwd(be, x, w, dy, dx, dw, db, n, in, out, 0.0f);
    return;
  }
  if (how == WAY_OPENBLAS) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, 0.0f,
                y, out);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in,
                0.0f, dw, in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w, in,
                0.0f, dx, in);
    return;
  }
  for (int r = 0; r < n; r += TD_BLOCK_ROWS) {
    int rows = n - r < TD_BLOCK_ROWS ? n - r : TD_BLOCK_ROWS;

    td_backend_sgemm(be, false, true, rows, out, in, 1.0f, x + (size_t)r * in, in, w, in, 0.0f,
                     y + (size_t)r * out, out);
  }
  td_backend_bias_add(be, y, b, (size_t)n, (size_t)out);
  for (int r = 0; r < n; r += TD_BLOCK_ROWS) {
    int rows = n - r < TD_BLOCK_ROWS ? n - r : TD_BLOCK_ROWS;

    td_backend_sgemm(be, true, false, out, in, rows, 1.0f, dy + (size_t)r * out, out,
                     x + (size_t)r * in, in, r == 0 ? 0.0f : 1.0f, dw, in);
    td_backend_sgemm(be, false, false, rows, in, out, 1.0f, dy + (size_t)r * out, out, w, in,
                     0.0f, dx + (size_t)r * in, in);
  }
  td_backend_bias_grad(be, dy, (size_t)n, (size_t)out, 0.0f, db);
}

int main(int argc, char **argv) {
  static const char *const names[] = {"dense", "blocked", "openblas"};
  layer layers[16] = {{784, 512}, {512, 256}, {256, 10}};
  int nl = 3, n = argc > 1 ? atoi(argv[1]) : 128;
  unsigned seed = 7;
  td_backend *be;
  char err[256];

  if (argc > 2) {
    for (nl = 0; 2 + 2 * nl + 1 < argc && nl < 16; nl++)
      layers[nl] = (layer){atoi(argv[2 + 2 * nl]), atoi(argv[3 + 2 * nl])};
  }
  if (n <= 0 || nl == 0 || td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err,
                                                sizeof(err)) < 0) {
    fprintf(stderr, "usage: bench_dense [BATCH [IN OUT]...]\n");
    return 2;
  }
  printf("batch %d; a forward and a backward (dx, dw, db) a call; best of %d runs of "
         "about 0.2 s\n", n, REPEATS);
  printf("%-12s %-9s %10s %10s %9s %9s\n", "layer", "way", "wall us", "cpu us", "GFLOP/s",
         "per core");
  for (int i = 0; i < nl; i++) {
    const layer *l = &layers[i];
    size_t xin = (size_t)n * l->in, yout = (size_t)n * l->out, wn = (size_t)l->in * l->out;
    float *x = rand_buf(xin, &seed), *w = rand_buf(wn, &seed), *b = rand_buf(l->out, &seed);
    float *dy = rand_buf(yout, &seed), *y = rand_buf(yout, &seed), *dx = rand_buf(xin, &seed);
    float *dw = rand_buf(wn, &seed), *db = rand_buf(l->out, &seed);
    double flops = 6.0 * n * l->in * l->out;
    char what[32];

    if (x == NULL || w == NULL || b == NULL || dy == NULL || y == NULL || dx == NULL ||
        dw == NULL || db == NULL) {
      fprintf(stderr, "bench_dense: out of memory\n");
      return 1;
    }
    snprintf(what, sizeof(what), "%dx%d", l->in, l->out);
    for (int h = 0; h < 3; h++) {
      double best_wall = 1e30, best_cpu = 1e30;
      int calls = (int)(0.2 * 50e9 / flops) + 1;

      for (int r = 0; r <= REPEATS; r++) {
        double t0 = td_now_mono(), c0 = cpu_now();

        for (int c = 0; c < calls; c++)
          run(be, (way)h, n, l, x, w, b, y, dy, dx, dw, db);
        if (r > 0) { /* the first is a warm-up */
          double wall = (td_now_mono() - t0) / calls, cpu = (cpu_now() - c0) / calls;
          best_wall = wall < best_wall ? wall : best_wall;
          best_cpu = cpu < best_cpu ? cpu : best_cpu;
        }
      }
      if (td_backend_sync(be) != 0) {
        fprintf(stderr, "bench_dense: %s\n", td_backend_error(be));
        return 1;
      }
      printf("%-12s %-9s %10.1f %10.1f %9.1f %9.1f\n", h == 0 ? what : "", names[h],
             best_wall * 1e6, best_cpu * 1e6, flops / best_wall * 1e-9, flops / best_cpu * 1e-9);
    }
    free(x), free(w), free(b), free(dy), free(y), free(dx), free(dw), free(db);
  }
  td_backend_destroy(be);
  return 0;
}
