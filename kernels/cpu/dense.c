/* Dense layers on the CPU: the three products of nn.Linear with one fixed
 * order of additions, written here rather than asked of OpenBLAS.
 *
 * OpenBLAS picks its kernels and its blocking of a sum by the shape of the
 * call, so a row's bits would depend on the rows that came with it, and
 * the dense ops used to call it 16 rows at a time, repacking the weights
 * for every block.  These products define their order instead:
 *
 *   y[r, o]  = (x[r, 0] w[o, 0] + x[r, 1] w[o, 1] + ...) + b[o]
 *   dx[r, i] =  dy[r, 0] w[0, i] + dy[r, 1] w[1, i] + ...
 *   dw[o, i] = beta dw[o, i] + p_0 + p_1 + ...,   p_j = dy[r, o] x[r, i]
 *              added over block j's rows in order (TD_BLOCK_ROWS rows)
 *
 * each sum a chain from left to right, each product and each addition
 * rounded on its own (no fused multiply-add, as everywhere in the CPU
 * backend: -ffp-contract=off).  Every element follows its chain whatever
 * tile, vector width or lane computes it, so a row's y and dx do not depend
 * on the call at all, dw only on where the blocks start (kernels/backend.h:
 * determinism), and a machine with AVX-512, AVX2 or SSE2 gets the same bits.
 *
 * y and dx are one product, C = A B along 16 columns of C at a time: a
 * strip of B's 16 columns is packed (w's rows for dx, gathered from w's
 * columns for y) and each element of A's rows is broadcast against it.  dw
 * runs along 16 of its columns, from strips of x and dy packed per task.
 * The lanes share the tasks out in fixed ranges; none of it allocates. */
#include <stdatomic.h>
#include <string.h>

#include "cpu_ops.h"

/* The products' tiles are pairs of 8-float vectors, dw's 16-float vectors
 * where the CPU has AVX-512: on Zen 4 each was the faster for its loop. */
typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));

#define KC 512            /* rows of B a packed strip has at a time (32 KiB) */
#define PR 6              /* rows of C a tile of a product has */
#define PROD_ROWS_TASK 128
#define PROD_COLS_TASK 32 /* a multiple of 16 */
#define DW_ROWS_TASK 64   /* a multiple of the tiles' rows (dense_dw.h) */
#define DW_COLS_TASK 128  /* a multiple of 16 */
#define DW_RC 128         /* rows of x and dy packed at a time: whole blocks */
#define MIN_PARALLEL (1 << 18) /* multiply-adds below which one lane is faster */

/* The tiles are inlined into each clone of the lane functions, so that
 * they are compiled for its instruction set. */
#define TILE_INLINE __attribute__((always_inline))

/* Unaligned loads and stores of a vector (macros: a v8 argument or result
 * would be passed differently in the clones with and without AVX). */
#define LOAD8(v, p) memcpy(&(v), (p), sizeof(v8))
#define STORE8(p, v) memcpy((p), &(v), sizeof(v8))

#define DW_CAT2(a, b) a##b
#define DW_CAT(a, b) DW_CAT2(a, b)

/* The lanes for m n k multiply-adds cut into tasks: one below
 * MIN_PARALLEL, where the hand-over costs more than it saves. */
static int lanes_for(td_backend *be, double madds, int tasks) {
  int lanes = madds < MIN_PARALLEL ? 1 : td__cpu_lanes(be);

  return lanes < tasks ? lanes : tasks;
}

/* C = A B (+ bias), along 16 columns of C at a time: a strip of B's 16
 * columns is packed, KC rows at a time, and each A[r, k] is broadcast
 * against it, PR rows of C a tile.  B(k, j) = bm[k sk + j sj]: w for dx
 * (sk = in, sj = 1: a row of the strip is a copy), w^T for y (sk = 1,
 * sj = in: the strip is gathered from 16 rows of w). */
typedef struct prod_args {
  const float *a, *bm, *bias;
  float *c;
  int n, kd, nc; /* A is n x kd, C is n x nc */
  size_t sk, sj;
  int row_tasks, tasks, lanes;
} prod_args;

#define PROD_TILE(NAME, NRR)                                                                \
  static inline TILE_INLINE void NAME(const float *restrict pk, int kn,                      \
                                     const float *restrict ar, size_t ld, v8 acc[NRR][2]) { \
    v8 s[NRR][2];                                                                           \
    _Pragma("GCC unroll 8") for (int j = 0; j < NRR; j++) {                                 \
      s[j][0] = acc[j][0];                                                                  \
      s[j][1] = acc[j][1];                                                                  \
    }                                                                                       \
    for (int k = 0; k < kn; k++, pk += 16, ar++) {                                          \
      v8 p0, p1;                                                                            \
      LOAD8(p0, pk);                                                                        \
      LOAD8(p1, pk + 8);                                                                    \
      _Pragma("GCC unroll 8") for (int j = 0; j < NRR; j++) {                               \
        float v = ar[j * ld];                                                               \
        s[j][0] += v * p0;                                                                  \
        s[j][1] += v * p1;                                                                  \
      }                                                                                     \
    }                                                                                       \
    _Pragma("GCC unroll 8") for (int j = 0; j < NRR; j++) {                                 \
      acc[j][0] = s[j][0];                                                                  \
      acc[j][1] = s[j][1];                                                                  \
    }                                                                                       \
  }
PROD_TILE(prod_tile_pr, PR)
PROD_TILE(prod_tile_1, 1)

/* Rows [r, r + nr) of C's columns [j, j + cols) into acc (zero: zeros). */
static inline TILE_INLINE void prod_load(const prod_args *a, int r, int nr, int j, int cols, bool zero,
                      v8 acc[][2]) {
  float t[16] = {0};

  for (int l = 0; l < nr; l++) {
    if (zero) {
      acc[l][0] = acc[l][1] = (v8){0};
      continue;
    }
    for (int q = 0; q < cols; q++)
      t[q] = a->c[(size_t)(r + l) * a->nc + j + q];
    LOAD8(acc[l][0], t);
    LOAD8(acc[l][1], t + 8);
  }
}

/* acc into rows [r, r + nr) of C's columns [j, j + cols), plus the bias on
 * the last pass: y = (the chain) + b. */
static inline TILE_INLINE void prod_store(const prod_args *a, int r, int nr, int j, int cols, bool last,
                       v8 acc[][2]) {
  float t[16];

  for (int l = 0; l < nr; l++) {
    float *dst = a->c + (size_t)(r + l) * a->nc + j;

    if (cols == 16 && (!last || a->bias == NULL)) {
      STORE8(dst, acc[l][0]);
      STORE8(dst + 8, acc[l][1]);
      continue;
    }
    STORE8(t, acc[l][0]);
    STORE8(t + 8, acc[l][1]);
    for (int q = 0; q < cols; q++)
      dst[q] = last && a->bias != NULL ? t[q] + a->bias[j + q] : t[q];
  }
}

/* B's columns [j, j + 16) (cols of them real, zeros after), rows [k0, k0 + kn) */
static inline TILE_INLINE void prod_pack(const prod_args *a, float *restrict pk, int j, int cols, int k0,
                      int kn) {
  const float *src = a->bm + (size_t)k0 * a->sk + (size_t)j * a->sj;

  if (a->sj == 1) {
    for (int k = 0; k < kn; k++, src += a->sk) {
      v8 h0, h1;

      if (cols < 16) {
        for (int q = 0; q < 16; q++)
          pk[k * 16 + q] = q < cols ? src[q] : 0.0f;
        continue;
      }
      LOAD8(h0, src);
      LOAD8(h1, src + 8);
      STORE8(pk + k * 16, h0);
      STORE8(pk + k * 16 + 8, h1);
    }
    return;
  }
  /* a transpose: sk is 1 here, w's rows are read in order */
  for (int q = 0; q < 16; q++, src += a->sj) {
    for (int k = 0; k < kn; k++)
      pk[k * 16 + q] = q < cols ? src[k] : 0.0f;
  }
}

CPU_CLONES
static void prod_lane(void *arg, int lane) {
  const prod_args *a = arg;
  float pk[KC * 16] __attribute__((aligned(32)));

  for (int t = a->tasks * lane / a->lanes; t < a->tasks * (lane + 1) / a->lanes; t++) {
    int r0 = t % a->row_tasks * PROD_ROWS_TASK, j0 = t / a->row_tasks * PROD_COLS_TASK;
    int r1 = a->n - r0 < PROD_ROWS_TASK ? a->n : r0 + PROD_ROWS_TASK;
    int j1 = a->nc - j0 < PROD_COLS_TASK ? a->nc : j0 + PROD_COLS_TASK;

    for (int j = j0; j < j1; j += 16) {
      int cols = j1 - j < 16 ? j1 - j : 16, k0 = 0;

      do { /* once at least: a product over no k is 0 (+ b) */
        int kn = a->kd - k0 < KC ? a->kd - k0 : KC;
        bool last = k0 + kn >= a->kd;

        prod_pack(a, pk, j, cols, k0, kn);
        for (int r = r0; r < r1;) {
          const float *ar = a->a + (size_t)r * a->kd + k0;
          int nr = r1 - r >= PR ? PR : 1;
          v8 acc[PR][2];

          prod_load(a, r, nr, j, cols, k0 == 0, acc);
          if (nr == PR)
            prod_tile_pr(pk, kn, ar, (size_t)a->kd, acc);
          else
            prod_tile_1(pk, kn, ar, (size_t)a->kd, acc);
          prod_store(a, r, nr, j, cols, last, acc);
          r += nr;
        }
        k0 += kn;
      } while (k0 < a->kd);
    }
  }
}

/* The lanes share the tasks (PROD_ROWS_TASK rows by PROD_COLS_TASK columns
 * of C) in fixed ranges. */
static void product(td_backend *be, const float *a, int n, int kd, const float *bm,
                    size_t sk, size_t sj, const float *bias, float *c, int nc) {
  prod_args g = {.a = a, .bm = bm, .bias = bias, .c = c, .n = n, .kd = kd, .nc = nc,
                 .sk = sk, .sj = sj, .row_tasks = (n + PROD_ROWS_TASK - 1) / PROD_ROWS_TASK};

  g.tasks = (nc + PROD_COLS_TASK - 1) / PROD_COLS_TASK * g.row_tasks;
  g.lanes = lanes_for(be, (double)n * kd * nc, g.tasks);
  td__cpu_parallel(be, g.lanes, prod_lane, &g);
}

/* dw = beta dw + the block sums of dy^T x. */
typedef struct dw_args {
  const float *x, *dy;
  float *dw;
  int n, in, out;
  float beta;
  int col_tasks, tasks, lanes;
} dw_args;

/* Rows [r0, r0 + rn) of x and dy packed into strips the tiles read in
 * order: xp holds 16 columns of x a row for each 16 of [i0, i1), dp nw
 * columns of dy a row for each nw of [o0, o1); zeros past the edges. */
static inline TILE_INLINE void dw_pack(const dw_args *a, float *restrict xp,
                                       float *restrict dp, int nw, int r0, int rn, int o0,
                                       int o1, int i0, int i1) {
  for (int r = 0; r < rn; r++) {
    const float *xr = a->x + (size_t)(r0 + r) * a->in, *dr = a->dy + (size_t)(r0 + r) * a->out;

    for (int i = i0; i < i1; i += 16) {
      float *q = xp + ((size_t)(i - i0) / 16 * DW_RC + r) * 16;
      v8 h0, h1;

      if (i + 16 > i1) {
        for (int c = 0; c < 16; c++)
          q[c] = i + c < i1 ? xr[i + c] : 0.0f;
        continue;
      }
      LOAD8(h0, xr + i);
      LOAD8(h1, xr + i + 8);
      STORE8(q, h0);
      STORE8(q + 8, h1);
    }
    for (int o = o0; o < o1; o += nw) {
      float *q = dp + ((size_t)(o - o0) / nw * DW_RC + r) * nw;

      for (int j = 0; j < nw; j++)
        q[j] = o + j < o1 ? dr[o + j] : 0.0f;
    }
  }
}

/* The lane function twice over (dense_dw.h): with 16-float vectors and
 * tiles of 8 rows of dw where the CPU has AVX-512 (32 registers), with
 * pairs of 8-float vectors and 4 rows elsewhere (16 registers; 16-float
 * vectors without AVX-512 are split by the compiler, and slowly).  Each
 * element follows the same chains in both, so they give the same bits. */
#define DW_NAME dw_lane_wide
#define DW_ATTR __attribute__((target("arch=x86-64-v4")))
#define DW_VEC v16
#define DW_NVEC 1
#define DW_NW 8
#include "dense_dw.h"

#define DW_NAME dw_lane
#define DW_ATTR CPU_CLONES
#define DW_VEC v8
#define DW_NVEC 2
#define DW_NW 4
#include "dense_dw.h"

static atomic_bool portable_only;

void td__cpu_dense_portable(bool on) { atomic_store(&portable_only, on); }

static bool have_wide(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return !atomic_load(&portable_only) && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

void td__cpu_dense_fwd(td_backend *be, const float *x, const float *w, const float *b,
                       float *y, int n, int in, int out) {
  /* B(k, j) = w[j, k] */
  product(be, x, n, in, w, 1, (size_t)in, b, y, out);
}

void td__cpu_dense_bwd(td_backend *be, const float *x, const float *w, const float *dy,
                       float *dx, float *dw, int n, int in, int out, float beta) {
  dw_args g = {.x = x, .dy = dy, .dw = dw, .n = n, .in = in, .out = out, .beta = beta,
               .col_tasks = (in + DW_COLS_TASK - 1) / DW_COLS_TASK};

  g.tasks = (out + DW_ROWS_TASK - 1) / DW_ROWS_TASK * g.col_tasks;
  g.lanes = lanes_for(be, (double)n * in * out, g.tasks);
  td__cpu_parallel(be, g.lanes, have_wide() ? dw_lane_wide : dw_lane, &g);
  /* B(k, j) = w[k, j] */
  if (dx != NULL)
    product(be, dy, n, out, w, (size_t)in, 1, NULL, dx, in);
}
