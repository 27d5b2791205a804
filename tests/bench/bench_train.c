/* Training speed on the CPU backend beside its peer and its ceiling, all
 * measured in this run on the same cores:
 *
 *   traind    samples/s of the job's model trained in-process through the
 *             worker's td_model_* API
 *   PyTorch   the same model (built from the same job file by
 *             tests/torch/jobmodel.py), batch, optimiser and uint8 input in
 *             PyTorch (bench_train.py under /usr/bin/python3), in three thread
 *             settings; the fastest is the peer the ratio is taken against
 *   ceiling   OpenBLAS SGEMM alone, the step's products in the shapes, counts
 *             and order the CPU backend runs them (dense layers once per
 *             batch, conv2d once per sample on its im2col columns, conv1d
 *             once per block of 16 samples): the speed if everything else
 *             took no time
 *
 * and each one's GFLOP/s in FLOP terms (a dense layer costs 2 in out per
 * sample forward, a conv2d 2 k c kh kw oh ow, a conv1d 2 k c kw ol, as much
 * again for the weight gradient, and as much for the input gradient where a
 * layer before it has parameters), and traind's CPU time a sample (all its
 * threads: on shared cores steadier than samples/s).  With no job it measures examples/fashion-mnist-mlp.yaml and
 * examples/fashion-mnist-cnn.yaml, a table each, and notes the issue's
 * targets.  A program that prints numbers, not a test: nothing here asserts
 * a time.
 *
 *   bench_train [--steps N] [--warmup N] [--repeats N] [--device cpu0]
 *               [--python PATH] [--no-torch] [JOB.yaml]
 *
 * Like traind-worker it restarts itself with the OPENBLAS_CORETYPE this CPU
 * needs (td_cpu_blas_coretype_hint), and says which core OpenBLAS runs. */
#include <cblas.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "error.h"
#include "jobspec.h"
#include "model.h"
#include "plan.h"
#include "util.h"

#ifndef TD_SOURCE_ROOT
#define TD_SOURCE_ROOT "."
#endif

#define NBATCH 16 /* distinct batches cycled through, as bench_train.py does */

typedef struct opts {
  uint32_t steps, warmup, repeats;
  const char *device, *python, *job;
  bool torch;
} opts;

/* One SGEMM of the step: C[m, n] = op(A)[m, k] op(B)[k, n]. */
typedef struct gemm {
  bool ta, tb;
  int m, n, k;
} gemm;

/* What a layer runs in one pass: its products (conv2d backward: the weight
 * gradient, then the input gradient), each repeated count times in turn
 * (the CPU backend's conv2d runs per sample). */
typedef struct gemm_op {
  gemm g[2];
  int ng, count;
} gemm_op;

typedef struct model_shape {
  gemm_op op[8 * TD_MAX_LAYERS]; /* forward ops in layer order, then backward ones */
  int nop;
  double flops; /* per sample, all products of a step */
  bool conv;    /* has a conv2d: the CNN target applies */
} model_shape;

static void add_op(model_shape *s, int count, int ng, gemm a, gemm b) {
  gemm_op *o = &s->op[s->nop++];

  *o = (gemm_op){.g = {a, b}, .ng = ng, .count = count};
  for (int i = 0; i < ng; i++)
    s->flops += 2.0 * o->g[i].m * o->g[i].n * o->g[i].k * count;
}

/* "1x28x28: conv16(3x3) relu maxpool2d ..." */
static void describe(const td_jobspec *spec, char *buf, size_t cap) {
  size_t len = 0;

  buf[0] = '\0';
  for (int i = 0; i < spec->input_rank && len < cap; i++)
    len += (size_t)snprintf(buf + len, cap - len, "%s%u", i > 0 ? "x" : "",
                            spec->input_dims[i]);
  for (int i = 0; i < spec->nlayers && len < cap; i++) {
    const td_layer *l = &spec->layers[i];

    if (l->type == TD_LAYER_DENSE)
      len += (size_t)snprintf(buf + len, cap - len, "%s dense%u", i > 0 ? "" : ":", l->units);
    else if (l->type == TD_LAYER_CONV2D)
      len += (size_t)snprintf(buf + len, cap - len, "%s conv%u(%ux%u)", i > 0 ? "" : ":",
                              l->filters, l->kernel, l->kernel);
    else
      len += (size_t)snprintf(buf + len, cap - len, "%s %s", i > 0 ? "" : ":",
                              td_layer_type_name(l->type));
  }
}

/* The SGEMMs of one training step at batch bs, in the shapes, counts and
 * order the CPU backend runs them (the layout says which layers need an
 * input gradient):
 *   dense   y = x W^T;  dW = dY^T x;  dX = dY W                 (once)
 *   conv2d  y_n = W col_n;  dW += dY_n col_n^T;  dcol = W^T dY_n (per sample;
 *           col_n: im2col of sample n, [c kh kw, oh ow], kernels/cpu/conv.c)
 *   conv1d  y_b = col_b W^T;  dW += dY_b^T col_b;  dcol = dY_b W (per block b
 *           of 16 samples; col_b: [rows ol, c kw], kernels/backend.c)
 * On a sequence [T, D] dense runs on bs T rows of D; attention is dense's
 * projections (3D and D outputs) around S = Q K^T, O = P V and, backward,
 * dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q, per sample and head
 * (kernels/cpu/seq.c). */
static int shape_of(const td_jobspec *spec, uint32_t bs, model_shape *s) {
  td_layout *l = malloc(sizeof(*l));
  int rc;

  if (l == NULL)
    return TD_ENOMEM;
  if ((rc = td_plan_layout(spec, bs, l)) < 0) {
    free(l);
    return rc;
  }
  memset(s, 0, sizeof(*s));
  for (int pass = 0; pass < 2; pass++) {
    for (int j = 0; j < l->nlayers; j++) {
      int i = pass == 0 ? j : l->nlayers - 1 - j;
      const td_layer_layout *ly = &l->layers[i];
      const td_layer *sl = &spec->layers[i];
      int in = (int)td_shape_width(&ly->in_shape), out = (int)td_shape_width(&ly->out_shape);
      int n = (int)(bs * td_shape_rows(&ly->in_shape));

      if (sl->type == TD_LAYER_ATTENTION) {
        int t = (int)ly->in_shape.c, d = (int)ly->in_shape.h, dh = d / (int)sl->heads;
        int pairs = (int)bs * (int)sl->heads;

        if (pass == 0) {
          add_op(s, 1, 1, (gemm){false, true, n, 3 * d, d}, (gemm){0});
          add_op(s, pairs, 2, (gemm){false, true, t, t, dh}, (gemm){false, false, t, dh, t});
          add_op(s, 1, 1, (gemm){false, true, n, d, d}, (gemm){0});
        } else {
          add_op(s, 1, 2, (gemm){true, false, d, d, n}, (gemm){false, false, n, d, d});
          add_op(s, pairs, 2, (gemm){false, true, t, t, dh}, (gemm){true, false, t, dh, t});
          add_op(s, pairs, 2, (gemm){false, false, t, dh, t}, (gemm){true, false, t, dh, t});
          add_op(s, 1, ly->needs_dx ? 2 : 1, (gemm){true, false, 3 * d, d, n},
                 (gemm){false, false, n, d, 3 * d});
        }
      } else if (sl->type == TD_LAYER_DENSE) {
        if (pass == 0)
          add_op(s, 1, 1, (gemm){false, true, n, out, in}, (gemm){0});
        else
          add_op(s, 1, ly->needs_dx ? 2 : 1, (gemm){true, false, out, in, n},
                 (gemm){false, false, n, in, out});
      } else if (sl->type == TD_LAYER_CONV2D) {
        int k = (int)ly->out_shape.c, ohw = (int)(ly->out_shape.h * ly->out_shape.w);
        int ckk = (int)(ly->in_shape.c * sl->kernel * sl->kernel);

        s->conv = true;
        if (pass == 0)
          add_op(s, n, 1, (gemm){false, false, k, ohw, ckk}, (gemm){0});
        else
          add_op(s, n, ly->needs_dx ? 2 : 1, (gemm){false, true, k, ckk, ohw},
                 (gemm){true, false, ckk, ohw, k});
      } else if (sl->type == TD_LAYER_CONV1D) {
        int k = (int)ly->out_shape.h, ol = (int)ly->out_shape.c;
        int ck = (int)(ly->in_shape.h * sl->kernel);

        /* the whole blocks, then the short last one */
        for (int b = 0; b < 2; b++) {
          int count = b == 0 ? n / TD_BLOCK_ROWS : n % TD_BLOCK_ROWS > 0;
          int m = (b == 0 ? TD_BLOCK_ROWS : n % TD_BLOCK_ROWS) * ol;

          if (count == 0)
            continue;
          if (pass == 0)
            add_op(s, count, 1, (gemm){false, true, m, k, ck}, (gemm){0});
          else
            add_op(s, count, ly->needs_dx ? 2 : 1, (gemm){true, false, k, ck, m},
                   (gemm){false, false, m, ck, k});
        }
      }
    }
  }
  s->flops /= bs;
  free(l);
  return s->nop > 0 ? 0 : TD_EINVAL;
}

static uint64_t rng = 0x853c49e6748fea9bull;

static uint32_t rand32(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 33);
}

/* This process's CPU time, all threads, in seconds. */
static double cpu_now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best samples/s of runs runs of steps updates, after warmup ones; *cpu_us
 * gets the least CPU time a sample of those runs took, in microseconds. */
static int bench_ours(const td_jobspec *spec, const opts *o, uint32_t runs, double *out,
                      double *cpu_us) {
  uint32_t in = (uint32_t)td_jobspec_input_elems(spec), bs = spec->batch_size;
  uint32_t classes = td_jobspec_classes(spec);
  uint8_t *px = malloc((size_t)NBATCH * bs * in);
  int32_t *lb = malloc((size_t)NBATCH * bs * sizeof(*lb));
  td_backend *be = NULL;
  td_model *m = NULL;
  char err[512];
  double best = 0.0, best_cpu = 0.0;
  int rc = TD_ENOMEM;

  if (px == NULL || lb == NULL)
    goto out;
  for (size_t i = 0; i < (size_t)NBATCH * bs * in; i++)
    px[i] = (uint8_t)rand32();
  for (size_t i = 0; i < (size_t)NBATCH * bs; i++)
    lb[i] = (int32_t)(rand32() % classes);
  if ((rc = td_backend_create(o->device, TD_BUDGET_UNLIMITED, &be, err, sizeof(err))) < 0 ||
      (rc = td_model_create(be, spec, bs, &m, err, sizeof(err))) < 0) {
    fprintf(stderr, "bench_train: %s\n", err);
    goto out;
  }
  for (uint32_t r = 0; r <= runs; r++) {
    uint32_t n = r == 0 ? o->warmup : o->steps;
    double t0 = td_now_mono(), c0 = cpu_now(), dt, dc;

    for (uint32_t s = 0; s < n; s++) {
      td_step_stats st;
      size_t b = s % NBATCH;

      if ((rc = td_model_train_step(m, px + b * bs * in, lb + b * bs, bs, &st)) < 0) {
        fprintf(stderr, "bench_train: %s\n", td_model_error(m));
        goto out;
      }
    }
    dt = td_now_mono() - t0;
    dc = cpu_now() - c0;
    if (r > 0 && (double)n * bs / dt > best)
      best = (double)n * bs / dt;
    if (r > 0 && (best_cpu == 0.0 || dc / ((double)n * bs) < best_cpu))
      best_cpu = dc / ((double)n * bs);
  }
  *out = best;
  *cpu_us = best_cpu * 1e6;
out:
  td_model_destroy(m);
  td_backend_destroy(be);
  free(px);
  free(lb);
  return rc;
}

/* The PyTorch configurations measured; the peer is the fastest.  Debian's
 * PyTorch runs its own OpenMP threads and OpenBLAS's pthreads side by side:
 * with both at the core count they fight over the cores, so the settings a
 * user would try to avoid that are measured too. */
typedef struct torch_cfg {
  const char *name;
  bool one_thread;      /* torch.set_num_threads(1) instead of the core count */
  bool blas_one_thread; /* OPENBLAS_NUM_THREADS=1 */
} torch_cfg;

static const torch_cfg torch_cfgs[] = {
    {"PyTorch, set_num_threads(N)", false, false},
    {"  + OPENBLAS_NUM_THREADS=1", false, true},
    {"PyTorch, set_num_threads(1)", true, false},
};

/* PyTorch's samples/s from bench_train.py; version gets its version.
 * 1 if PyTorch (or the python) is not there, -1 if the run failed. */
static int bench_torch(const opts *o, int threads, const torch_cfg *cfg, double *out,
                       char version[32]) {
  char cmd[2048], line[512];
  const char *p;
  int status, found = 0;
  FILE *f;

  if (access(o->python, X_OK) != 0)
    return 1;
  snprintf(cmd, sizeof(cmd),
           "%s'%s' '%s/tests/bench/bench_train.py' --job '%s' --steps %u --warmup %u "
           "--repeats %u --threads %d 2>&1",
           cfg->blas_one_thread ? "OPENBLAS_NUM_THREADS=1 " : "", o->python, TD_SOURCE_ROOT,
           o->job, o->steps, o->warmup, o->repeats, cfg->one_thread ? 1 : threads);
  if ((f = popen(cmd, "r")) == NULL)
    return -1;
  while (fgets(line, sizeof(line), f) != NULL) {
    if ((p = strstr(line, "samples_per_s=")) != NULL) {
      *out = strtod(p + 14, NULL);
      found = 1;
      if ((p = strstr(line, "torch=")) != NULL)
        sscanf(p + 6, "%31s", version);
    } else if (strstr(line, "not installed") == NULL) {
      fprintf(stderr, "bench_train.py: %s", line);
    }
  }
  status = pclose(f);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
    return 1;
  return found && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void run_gemm(const gemm *g, const float *a, const float *b, float *c) {
  cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
              g->tb ? CblasTrans : CblasNoTrans, g->m, g->n, g->k, 1.0f, a,
              g->ta ? g->m : g->k, b, g->tb ? g->k : g->n, 0.0f, c, g->n);
}

static void run_step(const model_shape *s, const float *a, const float *b, float *c) {
  for (int i = 0; i < s->nop; i++)
    for (int r = 0; r < s->op[i].count; r++)
      for (int j = 0; j < s->op[i].ng; j++)
        run_gemm(&s->op[i].g[j], a, b, c);
}

/* Seconds of SGEMM per training step: the step's products (shape_of),
 * timed like the model, over warmup then steps steps.  *peak gets a large
 * square product's GFLOP/s. */
static int sgemm_ceiling(const model_shape *s, const opts *o, double *step_s, double *peak) {
  const gemm sq = {false, false, 1024, 1024, 1024};
  size_t most = (size_t)1024 * 1024;
  float *a, *b, *c;
  double t0;

  for (int i = 0; i < s->nop; i++) {
    for (int j = 0; j < s->op[i].ng; j++) {
      const gemm *g = &s->op[i].g[j];
      size_t sizes[] = {(size_t)g->m * g->k, (size_t)g->k * g->n, (size_t)g->m * g->n};

      for (size_t k = 0; k < TD_ARRAY_SIZE(sizes); k++)
        most = sizes[k] > most ? sizes[k] : most;
    }
  }
  a = malloc(most * sizeof(float));
  b = malloc(most * sizeof(float));
  c = malloc(most * sizeof(float));
  if (a == NULL || b == NULL || c == NULL) {
    free(a), free(b), free(c);
    return TD_ENOMEM;
  }
  for (size_t i = 0; i < most; i++) {
    a[i] = (float)(rand32() % 2001) / 1000.0f - 1.0f;
    b[i] = (float)(rand32() % 2001) / 1000.0f - 1.0f;
  }
  for (uint32_t k = 0; k < o->warmup; k++)
    run_step(s, a, b, c);
  t0 = td_now_mono();
  for (uint32_t k = 0; k < o->steps; k++)
    run_step(s, a, b, c);
  *step_s = (td_now_mono() - t0) / o->steps;
  run_gemm(&sq, a, b, c);
  t0 = td_now_mono();
  for (int k = 0; k < 10; k++)
    run_gemm(&sq, a, b, c);
  *peak = 10 * 2.0 * 1024 * 1024 * 1024 / (td_now_mono() - t0) / 1e9;
  free(a), free(b), free(c);
  return 0;
}

static void row(const char *name, double sps, double fps, double torch_sps, double ceil_sps) {
  char vs[16] = "-", of[16] = "-";

  if (torch_sps > 0)
    snprintf(vs, sizeof(vs), "%.2fx", sps / torch_sps);
  if (ceil_sps > 0)
    snprintf(of, sizeof(of), "%.0f%%", 100.0 * sps / ceil_sps);
  printf("  %-30s %11.0f %9.1f %11s %10s\n", name, sps, sps * fps / 1e9, vs, of);
}

/* "met (2.612x)", "NOT met (45.0%)", or that there is no figure. */
static const char *verdict(double have, double want, const char *unit, char *buf, size_t cap) {
  if (have <= 0)
    return "no figure";
  snprintf(buf, cap, "%s (%.*f%s)", have >= want ? "met" : "NOT met", unit[0] == '%' ? 1 : 3,
           have, unit);
  return buf;
}

/* The targets (#3), printed as a note: a benchmark asserts nothing. */
static void targets(const model_shape *s, double vs_torch, double of_ceiling) {
  char a[48], b[48];

  if (s->conv)
    printf("target (issue #3, CNN): traind >= 1.50x PyTorch: %s\n",
           verdict(vs_torch, 1.5, "x", a, sizeof(a)));
  else
    printf("targets (issue #3, MLP): traind >= 2.50x PyTorch: %s; >= 50%% of the SGEMM "
           "ceiling: %s\n", verdict(vs_torch, 2.5, "x", a, sizeof(a)),
           verdict(100.0 * of_ceiling, 50.0, "%", b, sizeof(b)));
}

/* One job's table.  1 for a job that cannot be measured. */
static int bench_job(const char *job, opts o, int threads) {
  char err[512], desc[512], version[32] = "?";
  double ours = 0, ours_cpu = 0, torch_sps[TD_ARRAY_SIZE(torch_cfgs)] = {0}, best_torch = 0;
  double step_s = 0;
  double peak = 0, ceiling;
  model_shape *shape = malloc(sizeof(*shape));
  td_jobspec *spec = malloc(sizeof(*spec));
  int rc = 1, trc = 0;

  o.job = job;
  if (shape == NULL || spec == NULL) {
    fprintf(stderr, "bench_train: out of memory\n");
    goto out;
  }
  if (td_jobspec_load(job, spec, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_train: %s\n", err);
    goto out;
  }
  if (shape_of(spec, spec->batch_size, shape) < 0) {
    fprintf(stderr, "bench_train: %s: the model cannot be laid out (td_plan_layout)\n", job);
    goto out;
  }
  describe(spec, desc, sizeof(desc));
  printf("== %s\n%s\nbatch %u, %s lr %g, %s, on %s; %.2f MFLOP per sample\n", job, desc,
         spec->batch_size, spec->opt.kind == TD_OPT_SGD ? "SGD" : "Adam",
         (double)spec->opt.lr, td_precision_name(spec->precision), o.device,
         shape->flops / 1e6);
  fflush(stdout);

  /* Rounds of ours and the ceiling, interleaved, half of them after the
   * peer: a slow spell of the machine hits every side, and each keeps its
   * best. */
  for (uint32_t r = 0; r < 2 * o.repeats; r++) {
    double sps, s_step, pk, cpu_us;

    for (size_t i = 0; r == o.repeats && o.torch && i < TD_ARRAY_SIZE(torch_cfgs); i++) {
      if ((trc = bench_torch(&o, threads, &torch_cfgs[i], &torch_sps[i], version)) != 0)
        break;
      best_torch = torch_sps[i] > best_torch ? torch_sps[i] : best_torch;
    }
    if (bench_ours(spec, &o, 1, &sps, &cpu_us) < 0)
      goto out;
    /* the CPU backend left OpenBLAS on one thread (its lanes are the
     * parallelism); the ceiling is OpenBLAS on its own threads */
    openblas_set_num_threads(threads);
    if (sgemm_ceiling(shape, &o, &s_step, &pk) < 0)
      goto out;
    ours = sps > ours ? sps : ours;
    ours_cpu = r == 0 || cpu_us < ours_cpu ? cpu_us : ours_cpu;
    step_s = r == 0 || s_step < step_s ? s_step : step_s;
    peak = pk > peak ? pk : peak;
  }
  if (trc != 0)
    best_torch = 0; /* a peer measured only in part is no peer */
  ceiling = spec->batch_size / step_s;

  printf("  %-30s %11s %9s %11s %10s\n", "", "samples/s", "GFLOP/s", "vs PyTorch",
         "of ceiling");
  row("traind (td_model, cpu)", ours, shape->flops, best_torch, ceiling);
  if (o.torch && trc == 0) {
    printf("  PyTorch %s (the best of these is the peer):\n", version);
    for (size_t i = 0; i < TD_ARRAY_SIZE(torch_cfgs); i++)
      row(torch_cfgs[i].name, torch_sps[i], shape->flops, best_torch, ceiling);
  }
  row("SGEMM ceiling (OpenBLAS)", ceiling, shape->flops, 0, ceiling);
  printf("  %-30s %11s %9.1f\n", "SGEMM 1024x1024x1024", "-", peak);
  /* CPU time is the steadier figure on shared cores: another process
   * slows the wall clock, not the work */
  printf("  traind: %.2f us of CPU time a sample (all threads; the least of the runs)\n",
         ours_cpu);
  if (!o.torch)
    printf("PyTorch: not measured (--no-torch)\n");
  else if (trc == 1)
    printf("PyTorch: not installed for %s, so no peer figure (apt-get install "
           "python3-torch)\n", o.python);
  else if (trc < 0)
    printf("PyTorch: the run failed (see above)\n");
  targets(shape, best_torch > 0 ? ours / best_torch : 0, ours / ceiling);
  printf("\n");
  fflush(stdout);
  rc = 0;
out:
  free(shape);
  free(spec);
  return rc;
}

int main(int argc, char **argv) {
  static const struct option lopts[] = {
      {"steps", required_argument, NULL, 's'},  {"warmup", required_argument, NULL, 'w'},
      {"repeats", required_argument, NULL, 'r'}, {"device", required_argument, NULL, 'd'},
      {"python", required_argument, NULL, 'p'}, {"no-torch", no_argument, NULL, 'n'},
      {NULL, 0, NULL, 0},
  };
  static const char *const examples[] = {
      TD_SOURCE_ROOT "/examples/fashion-mnist-mlp.yaml",
      TD_SOURCE_ROOT "/examples/fashion-mnist-cnn.yaml",
  };
  opts o = {.steps = 200, .warmup = 20, .repeats = 3, .device = "cpu0",
            .python = "/usr/bin/python3", .torch = true};
  const char *core = td_cpu_blas_coretype_hint();
  int c, threads, rc = 0;

  while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
    switch (c) {
    case 's': o.steps = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'w': o.warmup = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'r': o.repeats = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'd': o.device = optarg; break;
    case 'p': o.python = optarg; break;
    case 'n': o.torch = false; break;
    default:
      fprintf(stderr, "usage: bench_train [--steps N] [--warmup N] [--repeats N] "
                      "[--device cpu0] [--python PATH] [--no-torch] [JOB.yaml]\n");
      return 2;
    }
  }
  if (o.steps == 0 || o.repeats == 0) {
    fprintf(stderr, "bench_train: --steps and --repeats must be positive\n");
    return 2;
  }
  /* as traind-worker does: OpenBLAS reads this only when it loads */
  if (core != NULL && getenv("OPENBLAS_CORETYPE") == NULL) {
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "bench_train: cannot restart with OPENBLAS_CORETYPE=%s\n", core);
  }
  threads = openblas_get_num_threads();
  printf("OpenBLAS core %s (OPENBLAS_CORETYPE=%s), %d threads\n", openblas_get_corename(),
         getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset", threads);
  printf("each run: %u steps after %u warm-up steps; traind and the ceiling: the best of %u\n"
         "alternating runs; PyTorch: the best of %u, run after half of those\n\n", o.steps,
         o.warmup, 2 * o.repeats, o.repeats);
  if (optind < argc)
    return bench_job(argv[optind], o, threads);
  for (size_t i = 0; i < TD_ARRAY_SIZE(examples); i++)
    rc |= bench_job(examples[i], o, threads);
  return rc;
}
