/* td_model_probe: train a job's model for a few steps on synthetic data with
 * the worker's td_model_* API, save it as traind does, and write a fixed
 * evaluation set with traind's loss on it, so that load_check.py can show
 * PyTorch loads the file into the equivalent nn.Sequential and computes the
 * same loss.
 *
 *   td_model_probe JOB.yaml OUTDIR [STEPS [INIT]]
 *
 * INIT: a model file loaded as the initial weights (the job file's init:),
 * before the STEPS steps; init_check.py writes it from PyTorch.
 *
 * Writes OUTDIR/model.safetensors and OUTDIR/eval.bin (u32 count, u32
 * features, then count*features uint8 pixels and count targets: int32
 * labels, or the job's float targets, td_jobspec_target) and
 * prints "loss_sum=X correct=N count=N plan=BYTES peak=BYTES": the memory
 * plan beside the allocator's measured peak. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "error.h"
#include "jobspec.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"

#define EVAL_COUNT 64

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint32_t rand32(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}

/* Pixels with some structure (a per-class bias), so training moves the loss. */
static void fill(uint8_t *px, int32_t *lb, uint32_t count, uint32_t in, uint32_t classes) {
  for (uint32_t i = 0; i < count; i++) {
    lb[i] = (int32_t)(rand32() % classes);
    for (uint32_t j = 0; j < in; j++)
      px[(size_t)i * in + j] =
          (uint8_t)((rand32() & 127) + ((int32_t)(j % classes) == lb[i] ? 24 : 0));
  }
}

/* Float targets for the losses that take them: 0/1 labels (binary
 * cross-entropy), probability rows (soft cross-entropy), values in [-1, 1]
 * (mse, mae). */
static void fill_float(const td_jobspec *s, float *t, uint32_t count, uint32_t width) {
  for (uint32_t i = 0; i < count; i++) {
    float sum = 0.0f;

    for (uint32_t c = 0; c < width; c++) {
      float u = (float)(rand32() % 2001) / 1000.0f - 1.0f;

      t[(size_t)i * width + c] = s->loss == TD_LOSS_BCE ? (u > 0.0f ? 1.0f : 0.0f)
                                 : s->soft_targets      ? u + 1.0f
                                                        : u;
      sum += t[(size_t)i * width + c];
    }
    for (uint32_t c = 0; s->soft_targets && c < width; c++)
      t[(size_t)i * width + c] /= sum > 0.0f ? sum : 1.0f;
  }
}

static int write_eval(const char *path, const uint8_t *px, const void *lb, size_t tbytes,
                      uint32_t count, uint32_t in) {
  FILE *f = fopen(path, "wb");
  uint32_t hdr[2] = {count, in};
  int ok;

  if (f == NULL)
    return TD_EIO;
  ok = fwrite(hdr, sizeof(hdr), 1, f) == 1 && fwrite(px, (size_t)count * in, 1, f) == 1 &&
       fwrite(lb, count * tbytes, 1, f) == 1;
  return fclose(f) == 0 && ok ? 0 : TD_EIO;
}

int main(int argc, char **argv) {
  char err[512], path[TD_PATH_MAX + 32];
  uint32_t steps = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 5;
  uint8_t *px = NULL;
  int32_t *lb = NULL;
  td_backend *be = NULL;
  td_model *m = NULL;
  td_step_stats st;
  td_mem_stats mem;
  td_jobspec spec;
  uint32_t in, classes, bs, n;
  td_target target;
  size_t tbytes;
  float *tf = NULL;
  int rc = 1;

  if (argc < 3) {
    fprintf(stderr, "usage: td_model_probe JOB.yaml OUTDIR [STEPS [INIT]]\n");
    return 2;
  }
  if (td_jobspec_load(argv[1], &spec, err, sizeof(err)) < 0) {
    fprintf(stderr, "td_model_probe: %s\n", err);
    return 1;
  }
  in = (uint32_t)td_jobspec_input_elems(&spec);
  classes = td_jobspec_classes(&spec);
  bs = spec.batch_size;
  n = bs > EVAL_COUNT ? bs : EVAL_COUNT;
  target = td_jobspec_target(&spec);
  tbytes = td_target_bytes(target);
  if ((px = malloc((size_t)n * in)) == NULL || (lb = malloc(n * sizeof(*lb))) == NULL ||
      (tf = malloc((size_t)n * tbytes)) == NULL)
    goto out;
  if (td_backend_create("cpu0", TD_BUDGET_UNLIMITED, &be, err, sizeof(err)) < 0 ||
      td_model_create(be, &spec, bs, &m, err, sizeof(err)) < 0) {
    fprintf(stderr, "td_model_probe: %s\n", err);
    goto out;
  }
  if (argc > 4) {
    td_st_file *f = NULL;

    if (td_safetensors_load(argv[4], (size_t)1 << 30, &f, err, sizeof(err)) < 0) {
      fprintf(stderr, "td_model_probe: %s\n", err);
      goto out;
    }
    rc = td_model_load(m, f);
    td_safetensors_free(f);
    if (rc < 0) {
      fprintf(stderr, "td_model_probe: init %s: %s\n", argv[4], td_model_error(m));
      rc = 1;
      goto out;
    }
    rc = 1;
  }
  for (uint32_t s = 0; s < steps; s++) {
    fill(px, lb, bs, in, classes);
    fill_float(&spec, tf, bs, target.width);
    if (td_model_train_step(m, px, target.dtype == TD_DTYPE_F32 ? (void *)tf : lb, bs, &st) <
        0) {
      fprintf(stderr, "td_model_probe: step %u: %s\n", s, td_model_error(m));
      goto out;
    }
  }
  fill(px, lb, EVAL_COUNT, in, classes);
  fill_float(&spec, tf, EVAL_COUNT, target.width);
  if (td_model_eval(m, px, target.dtype == TD_DTYPE_F32 ? (void *)tf : lb, EVAL_COUNT, &st) <
      0) {
    fprintf(stderr, "td_model_probe: eval: %s\n", td_model_error(m));
    goto out;
  }
  snprintf(path, sizeof(path), "%s/model.safetensors", argv[2]);
  if (td_model_save(m, path, NULL, 0) < 0) {
    fprintf(stderr, "td_model_probe: %s\n", td_model_error(m));
    goto out;
  }
  snprintf(path, sizeof(path), "%s/eval.bin", argv[2]);
  if (write_eval(path, px, target.dtype == TD_DTYPE_F32 ? (void *)tf : lb, tbytes, EVAL_COUNT,
                 in) < 0) {
    fprintf(stderr, "td_model_probe: cannot write %s\n", path);
    goto out;
  }
  td_backend_mem(be, &mem);
  printf("loss_sum=%.9g correct=%u count=%u plan=%llu peak=%llu\n", st.loss_sum, st.correct,
         st.count, (unsigned long long)td_model_plan(m)->total,
         (unsigned long long)mem.peak);
  rc = 0;
out:
  td_model_destroy(m);
  td_backend_destroy(be);
  free(px);
  free(lb);
  free(tf);
  return rc;
}
