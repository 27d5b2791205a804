/* The CPU backend: OpenBLAS for sgemm and convolutions, products of its own
 * for dense layers (dense.c: a fixed order of additions), plain loops for
 * the rest.  It is the reference the other backends are checked against,
 * and it simulates a device's memory budget for machines without a GPU. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_ops.h"
#include "error.h"
#include "hostmem.h"

#define CPU_ALIGN 64
#define CPU_MAX_LANES 16

/* The lanes' threads (lane 0 is the caller's).  A task is published with a
 * new generation; each worker runs its lane once per generation.  Workers
 * and the caller spin a little before sleeping: ops come microseconds apart
 * in a training step, and a futex wake-up costs more than most of them. */
typedef struct cpu_pool cpu_pool;

typedef struct cpu_worker {
  cpu_pool *pool;
  int lane;
} cpu_worker;

struct cpu_pool {
  pthread_mutex_t mu;
  pthread_cond_t go, done;
  pthread_t threads[CPU_MAX_LANES - 1];
  cpu_worker workers[CPU_MAX_LANES - 1];
  int nthreads, lanes;
  atomic_uint gen;
  atomic_int pending;
  atomic_bool stop;
  td__cpu_task *fn;
  void *arg;
  pid_t owner; /* a child forked after pool_create has no workers */
};

#define POOL_SPINS 200 /* pause instructions: some microseconds */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static void *pool_main(void *arg) {
  cpu_pool *p = ((cpu_worker *)arg)->pool;
  int lane = ((cpu_worker *)arg)->lane;
  unsigned seen = 0;

  for (;;) {
    for (int i = 0; i < POOL_SPINS && atomic_load(&p->gen) == seen && !atomic_load(&p->stop);
         i++)
      cpu_relax();
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
      pthread_cond_wait(&p->go, &p->mu);
    pthread_mutex_unlock(&p->mu);
    if (atomic_load(&p->stop))
      return NULL;
    seen = atomic_load(&p->gen);
    if (lane < p->lanes)
      p->fn(p->arg, lane);
    if (atomic_fetch_sub(&p->pending, 1) == 1) {
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->done);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

static void pool_destroy(cpu_pool *p) {
  if (p == NULL)
    return;
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->stop, true);
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nthreads; i++)
    pthread_join(p->threads[i], NULL);
  pthread_cond_destroy(&p->go);
  pthread_cond_destroy(&p->done);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

/* As many lanes as cores this process may run on (or TRAIND_CPU_LANES);
 * NULL (one lane) when that is one or the threads cannot be made. */
static cpu_pool *pool_create(void) {
  const char *env = getenv("TRAIND_CPU_LANES");
  cpu_set_t set;
  int cores = 1;
  cpu_pool *p;

  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    cores = CPU_COUNT(&set);
  /* testing: results must not depend on it, and tests check that they do not */
  if (env != NULL && atoi(env) > 0)
    cores = atoi(env);
  cores = cores > CPU_MAX_LANES ? CPU_MAX_LANES : cores;
  if (cores <= 1 || (p = calloc(1, sizeof(*p))) == NULL)
    return NULL;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->go, NULL);
  pthread_cond_init(&p->done, NULL);
  p->owner = getpid();
  for (int i = 0; i < cores - 1; i++) {
    p->workers[i] = (cpu_worker){.pool = p, .lane = i + 1};
    if (pthread_create(&p->threads[i], NULL, pool_main, &p->workers[i]) != 0)
      break;
    p->nthreads++;
  }
  if (p->nthreads == 0) {
    pool_destroy(p);
    return NULL;
  }
  return p;
}

int td__cpu_lanes(const td_backend *be) {
  const cpu_pool *p = be->impl;

  return p == NULL ? 1 : p->nthreads + 1;
}

void td__cpu_parallel(td_backend *be, int lanes, td__cpu_task *fn, void *arg) {
  cpu_pool *p = be->impl;
  int blas;

  if (p == NULL || p->owner != getpid()) {
    for (int l = 0; l < lanes; l++)
      fn(arg, l);
    return;
  }
  if (lanes <= 1) {
    fn(arg, 0);
    return;
  }
  /* sgemm calls on several threads at once must not each start OpenBLAS's
   * (the backend sets one thread; a caller may have changed it since) */
  blas = openblas_get_num_threads();
  if (blas != 1)
    openblas_set_num_threads(1);
  p->fn = fn;
  p->arg = arg;
  p->lanes = lanes;
  atomic_store(&p->pending, p->nthreads);
  pthread_mutex_lock(&p->mu);
  atomic_fetch_add(&p->gen, 1);
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);
  fn(arg, 0);
  for (int i = 0; i < POOL_SPINS && atomic_load(&p->pending) > 0; i++)
    cpu_relax();
  pthread_mutex_lock(&p->mu);
  while (atomic_load(&p->pending) > 0)
    pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
  if (blas != 1)
    openblas_set_num_threads(blas);
}

static void cpu_destroy(td_backend *be) { pool_destroy(be->impl); }

static int cpu_alloc(td_backend *be, uint64_t bytes, void **out, uint64_t *avail) {
  void *p;

  if (bytes > SIZE_MAX || posix_memalign(&p, CPU_ALIGN, (size_t)bytes) != 0)
    return TD_EOOM;
  memset(p, 0, (size_t)bytes);
  *out = p;
  return 0;
}

static void cpu_free(td_backend *be, void *ptr) { free(ptr); }

static void cpu_copy(td_backend *be, void *dst, const void *src, size_t bytes) {
  memcpy(dst, src, bytes);
}

static void cpu_sync(td_backend *be) {}

/* A product is cut into tiles of C of a fixed size, each one OpenBLAS call
 * on one thread, and the lanes share the tiles out.  OpenBLAS's own
 * threads would make the bits depend on the core count (it picks kernels
 * and splits by its thread count); fixed tiles give each element the same
 * arithmetic on any machine. */
#define GEMM_TILE 256
#define GEMM_MIN_PARALLEL (1 << 18) /* multiply-adds below which one lane is faster */

typedef struct gemm_args {
  bool ta, tb;
  int m, n, k, tm, tn;
  float alpha, beta;
  const float *a, *b;
  float *c;
  int lda, ldb, ldc, lanes;
} gemm_args;

static void gemm_lane(void *arg, int lane) {
  const gemm_args *g = arg;
  long tiles = (long)g->tm * g->tn;

  for (long t = tiles * lane / g->lanes; t < tiles * (lane + 1) / g->lanes; t++) {
    int i = (int)(t / g->tn) * GEMM_TILE, j = (int)(t % g->tn) * GEMM_TILE;
    int m = g->m - i < GEMM_TILE ? g->m - i : GEMM_TILE;
    int n = g->n - j < GEMM_TILE ? g->n - j : GEMM_TILE;
    const float *a = g->ta ? g->a + i : g->a + (size_t)i * g->lda;
    const float *b = g->tb ? g->b + (size_t)j * g->ldb : g->b + j;

    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                g->tb ? CblasTrans : CblasNoTrans, m, n, g->k, g->alpha, a, g->lda, b, g->ldb,
                g->beta, g->c + (size_t)i * g->ldc + j, g->ldc);
  }
}

static void cpu_sgemm(td_backend *be, bool trans_a, bool trans_b, int m, int n, int k,
                      float alpha, const float *a, int lda, const float *b, int ldb,
                      float beta, float *c, int ldc) {
  gemm_args g = {.ta = trans_a, .tb = trans_b, .m = m, .n = n, .k = k,
                 .tm = (m + GEMM_TILE - 1) / GEMM_TILE, .tn = (n + GEMM_TILE - 1) / GEMM_TILE,
                 .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c, .lda = lda,
                 .ldb = ldb, .ldc = ldc};
  int lanes = td__cpu_lanes(be);

  if ((double)m * n * k < GEMM_MIN_PARALLEL)
    lanes = 1;
  g.lanes = lanes < g.tm * g.tn ? lanes : g.tm * g.tn;
  td__cpu_parallel(be, g.lanes, gemm_lane, &g);
}

CPU_CLONES
static void cpu_fill(td_backend *be, float *x, size_t n, float value) {
  for (size_t i = 0; i < n; i++)
    x[i] = value;
}

CPU_CLONES
static void cpu_bias_add(td_backend *be, float *restrict y, const float *restrict bias,
                         size_t rows, size_t cols) {
  for (size_t r = 0; r < rows; r++) {
    float *restrict row = y + r * cols;
    for (size_t c = 0; c < cols; c++)
      row[c] += bias[c];
  }
}

CPU_CLONES
static void cpu_bias_grad(td_backend *be, const float *restrict dy, size_t rows,
                          size_t cols, float beta, float *restrict db) {
  for (size_t c = 0; c < cols; c++)
    db[c] = beta == 0.0f ? 0.0f : beta * db[c];
  for (size_t r = 0; r < rows; r++) {
    const float *restrict row = dy + r * cols;
    for (size_t c = 0; c < cols; c++)
      db[c] += row[c];
  }
}

CPU_CLONES
static void cpu_relu_fwd(td_backend *be, const float *x, float *y, size_t n) {
  for (size_t i = 0; i < n; i++)
    y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

CPU_CLONES
static void cpu_relu_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t n) {
  for (size_t i = 0; i < n; i++)
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

/* Row after row (lossrow.h), each row's sums added in turn, so the sums do
 * not depend on how a batch was split. */
static void cpu_loss(td_backend *be, const td_loss_cfg *cfg, const float *logits,
                     const void *targets, size_t rows, size_t width, float *dlogits,
                     float *stats, float *extra) {
  for (size_t r = 0; r < rows; r++) {
    td_loss_row row = td__loss_row(cfg, logits + r * width, width, targets, r,
                                   dlogits != NULL ? dlogits + r * width : NULL);

    stats[0] += row.loss;
    stats[1] += row.correct;
    if (extra != NULL) {
      extra[0] += row.topk;
      extra[1] += row.abserr;
    }
  }
}

typedef struct adam_args {
  float *p, *m, *v;
  const float *g;
  size_t n;
  float beta1, beta2, eps, weight_decay, step_size, inv_bc2;
  int lanes;
} adam_args;

/* Each lane its share of the elements, cut on 16-float boundaries: an
 * element's arithmetic is its own, so the cut changes no bit. */
CPU_CLONES
static void adam_lane(void *arg, int lane) {
  const adam_args *a = arg;
  size_t blocks = (a->n + 15) / 16;
  size_t i0 = blocks * (size_t)lane / (size_t)a->lanes * 16;
  size_t i1 = blocks * (size_t)(lane + 1) / (size_t)a->lanes * 16;
  float *restrict p = a->p, *restrict m = a->m, *restrict v = a->v;
  const float *restrict g = a->g;
  const float beta1 = a->beta1, beta2 = a->beta2, eps = a->eps;
  const float weight_decay = a->weight_decay, step_size = a->step_size, inv_bc2 = a->inv_bc2;

  i1 = i1 < a->n ? i1 : a->n;
  for (size_t i = i0; i < i1; i++) {
    float gi = g[i] + weight_decay * p[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step_size * mi / (sqrtf(vi * inv_bc2) + eps);
  }
}

#define ADAM_MIN_PARALLEL (1 << 16) /* elements below which one lane is faster */

static void cpu_adam(td_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                     float beta1, float beta2, float eps, float weight_decay, float step_size,
                     float inv_bc2) {
  adam_args a = {.p = p, .m = m, .v = v, .g = g, .n = n, .beta1 = beta1, .beta2 = beta2,
                 .eps = eps, .weight_decay = weight_decay, .step_size = step_size,
                 .inv_bc2 = inv_bc2, .lanes = n < ADAM_MIN_PARALLEL ? 1 : td__cpu_lanes(be)};

  td__cpu_parallel(be, a.lanes, adam_lane, &a);
}

CPU_CLONES
static void cpu_sgd(td_backend *be, float *restrict p, const float *restrict g,
                    float *restrict buf, size_t n, float lr, float momentum,
                    float weight_decay) {
  if (momentum == 0.0f) {
    for (size_t i = 0; i < n; i++)
      p[i] -= lr * (g[i] + weight_decay * p[i]);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    float b = momentum * buf[i] + g[i] + weight_decay * p[i];
    buf[i] = b;
    p[i] -= lr * b;
  }
}

/* Host memory needs no pinning. */
static int cpu_host_register(td_backend *be, void *ptr, size_t bytes, char *err,
                             size_t errlen) {
  return 0;
}

static void cpu_host_unregister(td_backend *be, void *ptr) {}

static int cpu_device_mem(td_backend *be, uint64_t *total, uint64_t *free_bytes) {
  return td_host_mem(total, free_bytes);
}

int td__backend_cpu_probe(const char *device, int ordinal, td_device_probe *out, char *err,
                          size_t errlen) {
  uint64_t total, avail;

  if (td_host_mem(&total, &avail) < 0) {
    snprintf(err, errlen, "%s: cannot read the host's memory size (/proc/meminfo, sysconf)",
             device);
    return TD_EIO;
  }
  *out = (td_device_probe){.total = total, .free = avail, .overhead = 0};
  return 0;
}

static const td_backend_ops cpu_ops = {
    .kind = TD_BACKEND_CPU,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .sgemm = cpu_sgemm,
    .fill = cpu_fill,
    .bias_add = cpu_bias_add,
    .bias_grad = cpu_bias_grad,
    .relu_fwd = cpu_relu_fwd,
    .relu_bwd = cpu_relu_bwd,
    .loss = cpu_loss,
    .adam = cpu_adam,
    .sgd = cpu_sgd,
    .dense_fwd = td__cpu_dense_fwd,
    .dense_bwd = td__cpu_dense_bwd,
    .conv2d_workspace = td__cpu_conv2d_workspace,
    .conv2d_fwd = td__cpu_conv2d_fwd,
    .conv2d_bwd = td__cpu_conv2d_bwd,
    .pool2d_fwd = td__cpu_pool2d_fwd,
    .pool2d_bwd = td__cpu_pool2d_bwd,
    .gelu_fwd = td__cpu_gelu_fwd,
    .gelu_bwd = td__cpu_gelu_bwd,
    .dropout = td__cpu_dropout,
    .batchnorm2d_fwd = td__cpu_batchnorm2d_fwd,
    .batchnorm2d_bwd = td__cpu_batchnorm2d_bwd,
    .layernorm_fwd = td__cpu_layernorm_fwd,
    .layernorm_bwd = td__cpu_layernorm_bwd,
    .act_fwd = td__cpu_act_fwd,
    .act_bwd = td__cpu_act_bwd,
    .softmax_fwd = td__cpu_softmax_fwd,
    .softmax_bwd = td__cpu_softmax_bwd,
    .mean_fwd = td__cpu_mean_fwd,
    .mean_bwd = td__cpu_mean_bwd,
    .im2col1d = td__cpu_im2col1d,
    .col2im1d = td__cpu_col2im1d,
    .add = td__cpu_sum2,
    .copy2d = td__cpu_copy2d,
    .embedding_fwd = td__cpu_embedding_fwd,
    .embedding_bwd = td__cpu_embedding_bwd,
    .add_rows = td__cpu_add_rows,
    .attn_fwd = td__cpu_attn_fwd,
    .attn_bwd = td__cpu_attn_bwd,
    .sgd_momentum = td__cpu_sgd_momentum,
    .adamw = td__cpu_adamw,
    .sumsq = td__cpu_sumsq,
    .clip_coef = td__cpu_clip_coef,
    .scale = td__cpu_scale,
    .check_finite = td__cpu_check_finite,
    .to_half = td__cpu_to_half,
    .from_half = td__cpu_from_half,
    .round_half = td__cpu_round_half,
    .normalize = td__cpu_normalize,
    .host_register = cpu_host_register,
    .host_unregister = cpu_host_unregister,
    .upload_pinned = cpu_copy,
    .device_mem = cpu_device_mem,
};

int td__backend_cpu_init(td_backend *be, int ordinal, char *err, size_t errlen) {
  be->ops = &cpu_ops;
  /* one OpenBLAS thread per call: the lanes are the parallelism (cpu_sgemm) */
  openblas_set_num_threads(1);
  be->impl = pool_create();
  be->mem.overhead = 0;
  return 0;
}

const char *td_cpu_blas_coretype_hint(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const char *const weak[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                     "Atom", "Katmai", "Coppermine", "Northwood", "Banias",
                                     "Sandybridge"};
  const char *name = openblas_get_corename();
  const char *want = NULL;
  bool is_weak = false;

  for (size_t i = 0; name != NULL && i < sizeof(weak) / sizeof(weak[0]); i++)
    is_weak |= strcmp(name, weak[i]) == 0;
  if (!is_weak)
    return NULL;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    want = "SkylakeX";
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    want = "Haswell";
  return want != NULL && strcmp(want, name) != 0 ? want : NULL;
#else
  return NULL;
#endif
}
