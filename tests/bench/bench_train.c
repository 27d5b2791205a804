/* Training speed on the CPU backend beside its peer and its ceiling, all
 * measured in this run on the same cores:
 *
 *   traind    samples/s of the job's model trained in-process through the
 *             worker's td_model_* API (default: the Fashion-MNIST MLP,
 *             784-512-256-10, ReLU, Adam 1e-3, batch 128, fp32)
 *   PyTorch   the same model, batch, optimiser and uint8 input in PyTorch
 *             (bench_train.py under /usr/bin/python3), in three thread
 *             settings; the fastest is the peer the ratio is taken against
 *   ceiling   OpenBLAS SGEMM alone, the step's products in its shapes and
 *             order: the speed if everything else took no time
 *
 * and each one's GFLOP/s in FLOP terms (a dense layer costs 2 in out per
 * sample forward, as much again for its weight gradient, and as much for its
 * input gradient where a layer before it needs one).  A program that prints
 * numbers, not a test: nothing here asserts a time.
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
#include <unistd.h>

#include "backend.h"
#include "error.h"
#include "jobspec.h"
#include "model.h"
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

/* One dense layer's shapes. */
typedef struct dense {
  int in, out;
  bool needs_dx;
} dense;

typedef struct model_shape {
  dense d[TD_MAX_LAYERS];
  int n;
  char widths[256]; /* "784,512,256,10" */
} model_shape;

/* The dense layers of a model of dense and ReLU layers; -1 for any other. */
static int shape_of(const td_jobspec *spec, model_shape *s) {
  int in = (int)td_jobspec_input_elems(spec);
  size_t len;

  memset(s, 0, sizeof(*s));
  len = (size_t)snprintf(s->widths, sizeof(s->widths), "%d", in);
  for (int i = 0; i < spec->nlayers; i++) {
    const td_layer *l = &spec->layers[i];

    if (l->type == TD_LAYER_RELU)
      continue;
    if (l->type != TD_LAYER_DENSE)
      return -1;
    s->d[s->n] = (dense){.in = in, .out = (int)l->units, .needs_dx = s->n > 0};
    in = (int)l->units;
    s->n++;
    if (len < sizeof(s->widths))
      len += (size_t)snprintf(s->widths + len, sizeof(s->widths) - len, ",%d", in);
  }
  return s->n > 0 ? 0 : -1;
}

static double flops_per_sample(const model_shape *s) {
  double f = 0.0;

  for (int i = 0; i < s->n; i++)
    f += 2.0 * s->d[i].in * s->d[i].out * (s->d[i].needs_dx ? 3 : 2);
  return f;
}

static uint64_t rng = 0x853c49e6748fea9bull;

static uint32_t rand32(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 33);
}

/* Best samples/s of runs runs of steps updates, after warmup ones. */
static int bench_ours(const td_jobspec *spec, const opts *o, uint32_t runs, double *out) {
  uint32_t in = (uint32_t)td_jobspec_input_elems(spec), bs = spec->batch_size;
  uint32_t classes = td_jobspec_classes(spec);
  uint8_t *px = malloc((size_t)NBATCH * bs * in), *lb = malloc((size_t)NBATCH * bs);
  td_backend *be = NULL;
  td_model *m = NULL;
  char err[512];
  double best = 0.0;
  int rc = TD_ENOMEM;

  if (px == NULL || lb == NULL)
    goto out;
  for (size_t i = 0; i < (size_t)NBATCH * bs * in; i++)
    px[i] = (uint8_t)rand32();
  for (size_t i = 0; i < (size_t)NBATCH * bs; i++)
    lb[i] = (uint8_t)(rand32() % classes);
  if ((rc = td_backend_create(o->device, TD_BUDGET_UNLIMITED, &be, err, sizeof(err))) < 0 ||
      (rc = td_model_create(be, spec, bs, &m, err, sizeof(err))) < 0) {
    fprintf(stderr, "bench_train: %s\n", err);
    goto out;
  }
  for (uint32_t r = 0; r <= runs; r++) {
    uint32_t n = r == 0 ? o->warmup : o->steps;
    double t0 = td_now_mono(), dt;

    for (uint32_t s = 0; s < n; s++) {
      td_step_stats st;
      size_t b = s % NBATCH;

      if ((rc = td_model_train_step(m, px + b * bs * in, lb + b * bs, bs, &st)) < 0) {
        fprintf(stderr, "bench_train: %s\n", td_model_error(m));
        goto out;
      }
    }
    dt = td_now_mono() - t0;
    if (r > 0 && (double)n * bs / dt > best)
      best = (double)n * bs / dt;
  }
  *out = best;
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

typedef struct gemm {
  bool ta, tb;
  int m, n, k;
} gemm;

static void run_gemm(const gemm *g, const float *a, const float *b, float *c) {
  cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
              g->tb ? CblasTrans : CblasNoTrans, g->m, g->n, g->k, 1.0f, a,
              g->ta ? g->m : g->k, b, g->tb ? g->k : g->n, 0.0f, c, g->n);
}

/* Seconds of SGEMM per training step of batch bs: the model's products in
 * the shapes and order a step runs them (model.c: y = x W^T forward; dW =
 * dY^T x and dX = dY W backward), timed like the model, over warmup then
 * steps steps.  *peak gets a large square product's GFLOP/s. */
static int sgemm_ceiling(const model_shape *s, int bs, const opts *o, double *step_s,
                         double *peak) {
  const gemm sq = {false, false, 1024, 1024, 1024};
  gemm step[3 * TD_MAX_LAYERS];
  size_t most = (size_t)1024 * 1024, n = 0;
  float *a, *b, *c;
  double t0;

  for (int i = 0; i < s->n; i++) {
    size_t in = (size_t)s->d[i].in, out = (size_t)s->d[i].out;
    size_t sizes[] = {bs * in, bs * out, in * out};
    for (size_t j = 0; j < TD_ARRAY_SIZE(sizes); j++)
      most = sizes[j] > most ? sizes[j] : most;
    step[n++] = (gemm){false, true, bs, (int)out, (int)in};
  }
  for (int i = s->n - 1; i >= 0; i--) {
    const dense *d = &s->d[i];
    step[n++] = (gemm){true, false, d->out, d->in, bs};
    if (d->needs_dx)
      step[n++] = (gemm){false, false, bs, d->in, d->out};
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
    for (size_t i = 0; i < n; i++)
      run_gemm(&step[i], a, b, c);
  t0 = td_now_mono();
  for (uint32_t k = 0; k < o->steps; k++)
    for (size_t i = 0; i < n; i++)
      run_gemm(&step[i], a, b, c);
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

int main(int argc, char **argv) {
  static const struct option lopts[] = {
      {"steps", required_argument, NULL, 's'},  {"warmup", required_argument, NULL, 'w'},
      {"repeats", required_argument, NULL, 'r'}, {"device", required_argument, NULL, 'd'},
      {"python", required_argument, NULL, 'p'}, {"no-torch", no_argument, NULL, 'n'},
      {NULL, 0, NULL, 0},
  };
  opts o = {.steps = 200, .warmup = 20, .repeats = 3, .device = "cpu0",
            .python = "/usr/bin/python3", .torch = true};
  char job[1024], err[512], version[32] = "?";
  double ours = 0, torch_sps[TD_ARRAY_SIZE(torch_cfgs)] = {0}, best_torch = 0, step_s = 0;
  double peak = 0, ceiling, fps;
  const char *core = td_cpu_blas_coretype_hint();
  model_shape shape;
  td_jobspec spec;
  int c, threads, trc = 0;

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
  snprintf(job, sizeof(job), "%s", optind < argc ? argv[optind]
                                                 : TD_SOURCE_ROOT "/examples/fashion-mnist-mlp.yaml");
  o.job = job;
  if (td_jobspec_load(job, &spec, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_train: %s\n", err);
    return 1;
  }
  if (shape_of(&spec, &shape) < 0) {
    fprintf(stderr, "bench_train: %s: only models of dense and ReLU layers are measured\n",
            job);
    return 1;
  }
  fps = flops_per_sample(&shape);
  threads = openblas_get_num_threads();

  printf("MLP %s, batch %u, %s lr %g, fp32, on %s\n", shape.widths, spec.batch_size,
         spec.opt.kind == TD_OPT_ADAM ? "Adam" : "SGD", (double)spec.opt.lr, o.device);
  printf("OpenBLAS core %s (OPENBLAS_CORETYPE=%s), %d threads; %.2f MFLOP per sample\n",
         openblas_get_corename(), getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE")
                                                             : "unset",
         threads, fps / 1e6);
  printf("each run: %u steps after %u warm-up steps; traind and the ceiling: the best of %u\n"
         "alternating runs; PyTorch: the best of %u, run after half of those\n\n", o.steps,
         o.warmup, 2 * o.repeats, o.repeats);
  fflush(stdout);

  /* Rounds of ours and the ceiling, interleaved, half of them after the
   * peer: a slow spell of the machine hits every side, and each keeps its
   * best. */
  for (uint32_t r = 0; r < 2 * o.repeats; r++) {
    double sps, s_step, pk;

    for (size_t i = 0; r == o.repeats && o.torch && i < TD_ARRAY_SIZE(torch_cfgs); i++) {
      if ((trc = bench_torch(&o, threads, &torch_cfgs[i], &torch_sps[i],
                             version)) != 0)
        break;
      best_torch = torch_sps[i] > best_torch ? torch_sps[i] : best_torch;
    }
    if (bench_ours(&spec, &o, 1, &sps) < 0 ||
        sgemm_ceiling(&shape, (int)spec.batch_size, &o, &s_step, &pk) < 0)
      return 1;
    ours = sps > ours ? sps : ours;
    step_s = r == 0 || s_step < step_s ? s_step : step_s;
    peak = pk > peak ? pk : peak;
  }
  if (trc != 0)
    best_torch = 0; /* a peer measured only in part is no peer */
  ceiling = spec.batch_size / step_s;

  printf("  %-30s %11s %9s %11s %10s\n", "", "samples/s", "GFLOP/s", "vs PyTorch",
         "of ceiling");
  row("traind (td_model, cpu)", ours, fps, best_torch, ceiling);
  if (o.torch && trc == 0) {
    printf("  PyTorch %s (the best of these is the peer):\n", version);
    for (size_t i = 0; i < TD_ARRAY_SIZE(torch_cfgs); i++)
      row(torch_cfgs[i].name, torch_sps[i], fps, best_torch, ceiling);
  }
  row("SGEMM ceiling (OpenBLAS)", ceiling, fps, 0, ceiling);
  printf("  %-30s %11s %9.1f\n", "SGEMM 1024x1024x1024", "-", peak);
  if (!o.torch)
    printf("\nPyTorch: not measured (--no-torch)\n");
  else if (trc == 1)
    printf("\nPyTorch: not installed for %s, so no peer figure (apt-get install "
           "python3-torch)\n", o.python);
  else if (trc < 0)
    printf("\nPyTorch: the run failed (see above)\n");
  printf("\nCNN: not yet available (layers not wired into the model)\n");
  return 0;
}
