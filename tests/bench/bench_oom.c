/* Benchmark (not a test): out-of-memory recovery on the CPU backend.
 *
 * 1. Time from an injected out-of-memory failure (the hook that reports it)
 *    to the end of the redone step, beside an undisturbed step.
 * 2. Device trials needed to find a micro-batch that fits a budget: traind
 *    searches its plan (zero trials); halving from the job's batch, as users
 *    do after a crash, builds the model on the device until it fits.
 *
 * usage: bench_oom [hidden units, default 1024] [batch, default 256]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "model.h"
#include "plan.h"
#include "util.h"

static double g_oom_at;

static void on_oom(void *arg, const td_model_oom *o) {
  (void)arg;
  (void)o;
  g_oom_at = td_now_mono();
}

static void make_spec(td_jobspec *s, uint32_t hidden, uint32_t batch) {
  memset(s, 0, sizeof(*s));
  snprintf(s->name, sizeof(s->name), "bench");
  s->input_dims[0] = s->input_dims[1] = 28;
  s->input_rank = 2;
  s->layers[0] = (td_layer){.type = TD_LAYER_DENSE, .units = hidden};
  s->layers[1] = (td_layer){.type = TD_LAYER_RELU};
  s->layers[2] = (td_layer){.type = TD_LAYER_DENSE, .units = 10};
  s->nlayers = 3;
  s->batch_size = batch;
  s->epochs = 1;
  s->norm_std = 1.0f;
  s->opt = (td_optimizer){.kind = TD_OPT_ADAM, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f,
                          .eps = 1e-8f};
  s->min_micro_batch = 1;
  s->remedies[0] = TD_REMEDY_ACCUMULATE;
  s->nremedies = 1;
}

int main(int argc, char **argv) {
  uint32_t hidden = argc > 1 ? (uint32_t)atoi(argv[1]) : 1024;
  uint32_t batch = argc > 2 ? (uint32_t)atoi(argv[2]) : 256;
  const td_model_hooks hooks = {.oom = on_oom};
  const int rounds = 20;
  td_jobspec spec;
  td_plan whole, target, found;
  td_backend *be;
  td_model *m;
  td_step_stats st;
  uint8_t *px;
  int32_t *lb;
  char err[256];
  double t0, undisturbed = 0, recovery = 0, redo_step = 0;

  if (hidden == 0 || batch == 0)
    return fprintf(stderr, "usage: bench_oom [hidden] [batch]\n"), 2;
  make_spec(&spec, hidden, batch);
  if (td_plan_compute(&spec, batch, TD_PREC_FP32, 0, &whole) < 0)
    return fprintf(stderr, "cannot plan\n"), 1;
  px = malloc((size_t)batch * 784);
  lb = malloc(batch * sizeof(*lb));
  for (size_t i = 0; i < (size_t)batch * 784; i++)
    px[i] = (uint8_t)(i * 2654435761u >> 13);
  for (uint32_t i = 0; i < batch; i++)
    lb[i] = (uint8_t)(i % 10);

  /* 1. recovery time */
  if (td_backend_create("cpu0", whole.total, &be, err, sizeof(err)) < 0 ||
      td_model_create(be, &spec, batch, &m, err, sizeof(err)) < 0)
    return fprintf(stderr, "%s\n", err), 1;
  td_model_train_step(m, px, lb, batch, &st); /* warm up */
  for (int r = 0; r < rounds; r++) {
    t0 = td_now_mono();
    td_model_train_step(m, px, lb, batch, &st);
    undisturbed += td_now_mono() - t0;
  }
  for (int r = 0; r < rounds; r++) {
    double end;

    /* fails inside the backward pass of the step */
    td_backend_inject_oom(be, 9);
    t0 = td_now_mono();
    if (td_model_train_step_recover(m, px, lb, batch, &hooks, &st) < 0)
      return fprintf(stderr, "%s\n", td_model_error(m)), 1;
    end = td_now_mono();
    recovery += end - g_oom_at;
    redo_step += end - t0;
  }
  printf("model 784-%u-10, batch %u, plan %.2f MiB, cpu0\n", hidden, batch,
         whole.total / 1048576.0);
  printf("undisturbed step:                    %8.3f ms\n", 1e3 * undisturbed / rounds);
  printf("injected OOM -> next completed step: %8.3f ms (re-plan, re-allocate, redo)\n",
         1e3 * recovery / rounds);
  printf("step with an OOM in it, in all:      %8.3f ms\n", 1e3 * redo_step / rounds);
  td_model_destroy(m);
  m = NULL;
  td_backend_destroy(be);

  /* 2. finding a micro-batch for a budget: the plan at batch/3 + 1 byte */
  if (td_plan_compute(&spec, batch / 3 > 0 ? batch / 3 : 1, TD_PREC_FP32, 0, &target) < 0)
    return 1;
  t0 = td_now_mono();
  if (td_plan_fit(&spec, TD_PREC_FP32, 0, target.total, &found) < 0)
    return 1;
  printf("\nbudget %.2f MiB\n", target.total / 1048576.0);
  printf("traind:  micro-batch %u x %u accumulation (same effective batch), 0 device trials, "
         "%.1f us of planning\n", found.micro_batch, found.accumulation,
         1e6 * (td_now_mono() - t0));
  {
    uint32_t mb = batch;
    int trials = 0;

    t0 = td_now_mono();
    for (;;) {
      int rc;

      trials++;
      if (td_backend_create("cpu0", target.total, &be, err, sizeof(err)) < 0)
        return 1;
      rc = td_model_create(be, &spec, mb, &m, err, sizeof(err));
      td_model_destroy(m);
      m = NULL;
      td_backend_destroy(be);
      if (rc == 0 || mb == 1)
        break;
      mb /= 2;
    }
    printf("halving: batch %u (effective batch changed from %u), %d device trials, %.1f ms\n",
           mb, batch, trials, 1e3 * (td_now_mono() - t0));
  }
  free(px);
  free(lb);
  return 0;
}
