/* Training throughput of the worker's model, and its accuracy.
 *
 *   bench_mlp [--device cpu0] [--epochs N] [--micro-batch N] [JOB.yaml]
 *       trains in-process on the job's IDX data (random data if the files are
 *       missing) and prints samples/s per epoch and the test accuracy.
 *   bench_mlp --pipeline BUILD_DIR [--output MODEL] [JOB.yaml]
 *       runs the real traind-loader and traind-worker joined by a ring, as
 *       traind does, and prints the worker's events; the model is kept only
 *       if --output names where.
 *
 * JOB.yaml defaults to examples/fashion-mnist-mlp.yaml.  For comparison,
 * PyTorch 2 (CPU, same model, batch 128, Adam) trains about 6,400 samples/s
 * on the 2-core machine this was written on.
 */
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "dataset.h"
#include "error.h"
#include "idx.h"
#include "imsg.h"
#include "jobdesc.h"
#include "jobspec.h"
#include "model.h"
#include "ring.h"
#include "util.h"

typedef struct dataset {
  uint8_t *pixels, *labels;
  uint32_t count, sample_bytes;
  td_idx img, lbl;
} dataset;

static int load_split(const td_data_split *s, uint32_t in_elems, uint32_t synthetic,
                      uint32_t classes, dataset *d) {
  char err[512];

  if (td_idx_load(s->images, s->limit, 0, &d->img, err, sizeof(err)) == 0 &&
      td_idx_load(s->labels, s->limit, 0, &d->lbl, err, sizeof(err)) == 0 &&
      d->img.item_bytes == in_elems && d->img.count == d->lbl.count) {
    d->pixels = d->img.data;
    d->labels = d->lbl.data;
    d->count = (uint32_t)d->img.count;
    d->sample_bytes = in_elems;
    return 0;
  }
  fprintf(stderr, "bench_mlp: %s: using %u random samples instead\n", s->images, synthetic);
  td_idx_free(&d->img);
  td_idx_free(&d->lbl);
  d->count = synthetic;
  d->sample_bytes = in_elems;
  d->pixels = malloc((size_t)synthetic * in_elems);
  d->labels = malloc(synthetic);
  if (d->pixels == NULL || d->labels == NULL)
    return TD_ENOMEM;
  for (size_t i = 0; i < (size_t)synthetic * in_elems; i++)
    d->pixels[i] = (uint8_t)rand();
  for (uint32_t i = 0; i < synthetic; i++)
    d->labels[i] = (uint8_t)(rand() % (int)classes);
  return 0;
}

static void free_split(dataset *d) {
  if (d->img.data == NULL) {
    free(d->pixels);
    free(d->labels);
  }
  td_idx_free(&d->img);
  td_idx_free(&d->lbl);
}

static int in_process(const td_jobspec *spec, const char *device, uint32_t epochs,
                      uint32_t micro) {
  uint32_t in_elems = (uint32_t)td_jobspec_input_elems(spec), bs = spec->batch_size;
  uint32_t classes = td_jobspec_classes(spec);
  dataset train = {0}, test = {0};
  uint8_t *bx = NULL, *by = NULL;
  uint32_t *order = NULL;
  td_backend *be = NULL;
  td_model *m = NULL;
  char err[512];
  int rc;

  if ((rc = load_split(&spec->train, in_elems, 60000, classes, &train)) < 0 ||
      (rc = load_split(&spec->test, in_elems, 10000, classes, &test)) < 0)
    goto out;
  bx = malloc((size_t)bs * in_elems);
  by = malloc(bs);
  order = malloc(train.count * sizeof(*order));
  if (bx == NULL || by == NULL || order == NULL) {
    rc = TD_ENOMEM;
    goto out;
  }
  if ((rc = td_backend_create(device, TD_BUDGET_UNLIMITED, &be, err, sizeof(err))) < 0 ||
      (rc = td_model_create(be, spec, micro, &m, err, sizeof(err))) < 0) {
    fprintf(stderr, "bench_mlp: %s\n", err);
    goto out;
  }
  printf("model %s on %s: %llu parameters, batch %u, micro-batch %u, plan %llu bytes\n",
         spec->name, device, (unsigned long long)td_model_nparams(m), bs, micro,
         (unsigned long long)td_model_plan(m)->total);
  for (uint32_t i = 0; i < train.count; i++)
    order[i] = i;
  srand((unsigned)spec->seed);
  for (uint32_t e = 0; e < epochs; e++) {
    td_step_stats st, sum = {0};
    double t0, dt;

    for (uint32_t i = train.count - 1; i > 0; i--) {
      uint32_t j = (uint32_t)rand() % (i + 1), tmp = order[i];
      order[i] = order[j];
      order[j] = tmp;
    }
    t0 = td_now_mono();
    for (uint32_t b = 0; b < train.count; b += bs) {
      uint32_t n = train.count - b < bs ? train.count - b : bs;
      for (uint32_t k = 0; k < n; k++) {
        memcpy(bx + (size_t)k * in_elems, train.pixels + (size_t)order[b + k] * in_elems,
               in_elems);
        by[k] = train.labels[order[b + k]];
      }
      if ((rc = td_model_train_step(m, bx, by, n, &st)) < 0) {
        fprintf(stderr, "bench_mlp: %s\n", td_model_error(m));
        goto out;
      }
      sum.loss_sum += st.loss_sum;
      sum.count += st.count;
    }
    dt = td_now_mono() - t0;
    printf("epoch %u: %.0f samples/s, train loss %.4f", e + 1, sum.count / dt,
           sum.loss_sum / sum.count);
    if ((rc = td_model_eval(m, test.pixels, test.labels, test.count, &st)) < 0) {
      fprintf(stderr, "bench_mlp: %s\n", td_model_error(m));
      goto out;
    }
    printf(", test accuracy %.4f, loss %.4f\n", (double)st.correct / st.count,
           st.loss_sum / st.count);
  }
out:
  td_model_destroy(m);
  td_backend_destroy(be);
  free(order);
  free(bx);
  free(by);
  free_split(&train);
  free_split(&test);
  return rc < 0 ? 1 : 0;
}

static pid_t spawn(char *const argv[], int events_fd) {
  pid_t pid = fork();

  if (pid == 0) {
    if (events_fd >= 0 && dup2(events_fd, 3) < 0)
      _exit(127);
    execv(argv[0], argv);
    perror(argv[0]);
    _exit(127);
  }
  return pid;
}

/* A worker's report as one line: "kind key=value ...". */
static void print_report(double t, const msgpack_object *m) {
  const char *op = "";
  size_t oplen = 0;

  td_obj_str(m, "op", &op, &oplen);
  printf("%6.1fs %.*s", t, (int)oplen, op);
  for (uint32_t i = 0; i < m->via.map.size; i++) {
    const msgpack_object_kv *kv = &m->via.map.ptr[i];
    const msgpack_object *v = &kv->val;
    int k = (int)kv->key.via.str.size;

    if ((k == 1 && kv->key.via.str.ptr[0] == 'v') || (k == 2 && !memcmp(kv->key.via.str.ptr, "op", 2)))
      continue;
    printf(" %.*s=", k, kv->key.via.str.ptr);
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      printf("%llu", (unsigned long long)v->via.u64);
    else if (v->type == MSGPACK_OBJECT_FLOAT64 || v->type == MSGPACK_OBJECT_FLOAT32)
      printf("%.6g", v->via.f64);
    else if (v->type == MSGPACK_OBJECT_BOOLEAN)
      printf("%d", v->via.boolean);
    else if (v->type == MSGPACK_OBJECT_STR)
      printf("%.*s", (int)v->via.str.size, v->via.str.ptr);
  }
  printf("\n");
  fflush(stdout);
}

static int pipeline(const char *build_dir, const char *job, const char *base_dir,
                    td_jobspec *spec, const char *keep) {
  char ring[64], loader[1024], worker[1024], budget[32], micro[16], out[1024], desc[64],
      err[512];
  uint32_t in_elems = (uint32_t)td_jobspec_input_elems(spec);
  int fds[2], status, rc;
  pid_t lp, wp;
  static td_imsg_frames frames;
  unsigned char chunk[4096];
  ssize_t n;
  td_dataset_info info;
  double t0 = td_now_mono();

  (void)job;
  /* The worker and loader read a description, with the samples' type
   * filled in as traind fills it in at submit. */
  snprintf(desc, sizeof(desc), "/tmp/bench-mlp-%d.tdj", (int)getpid());
  if (td_dataset_probe(spec, &info, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_mlp: %s\n", err);
    return 1;
  }
  spec->sample_dtype = info.dtype;
  if (td_jobdesc_save(desc, spec, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_mlp: %s\n", err);
    return 1;
  }

  snprintf(ring, sizeof(ring), "/traind-bench-%d", (int)getpid());
  snprintf(loader, sizeof(loader), "%s/daemon/traind-loader", build_dir);
  snprintf(worker, sizeof(worker), "%s/daemon/traind-worker", build_dir);
  snprintf(budget, sizeof(budget), "%llu", 1ull << 40);
  snprintf(micro, sizeof(micro), "%u", spec->batch_size);
  if (keep != NULL)
    snprintf(out, sizeof(out), "%s", keep);
  else
    snprintf(out, sizeof(out), "/tmp/bench-mlp-%d.safetensors", (int)getpid());
  if ((rc = td_ring_create(ring, 8, td_batch_bytes(spec->batch_size, in_elems, 4))) < 0) {
    fprintf(stderr, "bench_mlp: cannot create ring %s: %s\n", ring, td_strerror(rc));
    return 1;
  }
  if (pipe(fds) < 0)
    return 1;
  char *largv[] = {loader, "--job", desc, "--base-dir", (char *)base_dir, "--ring",
                   ring, NULL};
  char *wargv[] = {worker, "--job", desc, "--base-dir", (char *)base_dir, "--ring",
                   ring, "--device", "cpu0", "--budget", budget, "--micro-batch", micro,
                   "--output", out, "--events-fd", "3", NULL};
  lp = spawn(largv, -1);
  wp = spawn(wargv, fds[1]);
  close(fds[1]);
  while ((n = read(fds[0], chunk, sizeof(chunk))) > 0) {
    size_t used = 0;

    while (used < (size_t)n) {
      const void *body;
      size_t len;

      used += td_imsg_frames_put(&frames, chunk + used, (size_t)n - used);
      while ((rc = td_imsg_frames_next(&frames, &body, &len, err, sizeof(err))) == 1) {
        const td_msgdef *def;
        td_msg *m;
        uint64_t step = 0, steps = 0;

        if (td_imsg_parse(TD_IMSG_REPORT, body, len, &m, &def, err, sizeof(err)) < 0) {
          fprintf(stderr, "bench_mlp: a report of the worker: %s\n", err);
          continue;
        }
        td_obj_u64(td_msg_root(m), "step", &step);
        td_obj_u64(td_msg_root(m), "steps", &steps);
        /* of the progress events, only each epoch's last */
        if (strcmp(def->op, "heartbeat") != 0 &&
            (strcmp(def->op, "progress") != 0 || step == steps))
          print_report(td_now_mono() - t0, td_msg_root(m));
        td_msg_free(m);
      }
      if (rc < 0) {
        fprintf(stderr, "bench_mlp: the worker's reports: %s\n", err);
        break;
      }
    }
  }
  close(fds[0]);
  unlink(desc);
  waitpid(wp, &status, 0);
  printf("worker exit %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  kill(lp, SIGTERM);
  waitpid(lp, NULL, 0);
  td_ring_unlink(ring);
  if (keep == NULL)
    unlink(out);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"device", required_argument, NULL, 'd'}, {"epochs", required_argument, NULL, 'e'},
      {"micro-batch", required_argument, NULL, 'm'}, {"pipeline", required_argument, NULL, 'p'},
      {"output", required_argument, NULL, 'o'},     {NULL, 0, NULL, 0},
  };
  const char *device = "cpu0", *pipeline_dir = NULL, *output = NULL;
  const char *root = getenv("TD_SOURCE_ROOT");
  char job[1024], base[1024], err[512];
  uint32_t epochs = 0, micro = 0;
  td_jobspec spec;
  int c;

  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'd': device = optarg; break;
    case 'e': epochs = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'm': micro = (uint32_t)strtoul(optarg, NULL, 10); break;
    case 'p': pipeline_dir = optarg; break;
    case 'o': output = optarg; break;
    default: return 2;
    }
  }
  if (optind < argc)
    snprintf(job, sizeof(job), "%s", argv[optind]);
  else
    snprintf(job, sizeof(job), "%s/examples/fashion-mnist-mlp.yaml", root ? root : ".");
  if (td_jobspec_load(job, &spec, err, sizeof(err)) < 0) {
    fprintf(stderr, "bench_mlp: %s\n", err);
    return 1;
  }
  snprintf(base, sizeof(base), "%s", job);
  if (strrchr(base, '/') != NULL)
    *strrchr(base, '/') = '\0';
  else
    snprintf(base, sizeof(base), ".");
  if (pipeline_dir != NULL)
    return pipeline(pipeline_dir, job, base, &spec, output);
  if (getenv("OPENBLAS_CORETYPE") == NULL && td_cpu_blas_coretype_hint() != NULL) {
    /* as traind-worker does: OpenBLAS reads this only when it loads */
    setenv("OPENBLAS_CORETYPE", td_cpu_blas_coretype_hint(), 1);
    execv("/proc/self/exe", argv);
  }
  return in_process(&spec, device, epochs ? epochs : spec.epochs,
                    micro ? micro : spec.batch_size);
}
