/* traind-loader: reads a job's dataset and feeds its worker's ring.
 *
 *   traind-loader --job FILE --ring NAME [--base-dir DIR] [--parent-pid PID]
 *                 [--start-epoch E [--start-batch B]]
 *
 * For each epoch: the train set in an order that depends only on (seed,
 * epoch), as TD_BATCH_TRAIN batches (the last may be short), then the whole
 * test set in file order as TD_BATCH_TEST; after the last epoch one
 * TD_BATCH_END.  A bad dataset becomes one TD_BATCH_ERROR slot with the code
 * and the message (also on stderr) and exit 1.  The consumer closing the
 * ring, or SIGTERM, ends it quietly with 0; usage errors exit 2.
 *
 * --base-dir resolves the job's relative data paths (default: the job
 * file's directory).  --parent-pid names traind: it becomes the ring's peer
 * and the loader exits if it is already gone.  --start-epoch/--start-batch
 * resume at a train batch of an epoch (from a checkpoint's data position).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "error.h"
#include "idx.h"
#include "jobspec.h"
#include "log.h"
#include "ring.h"
#include "util.h"

#define LOADER_ERRLEN 1024

struct split {
  const char *what; /* "train" or "test" */
  td_idx images;
  td_idx labels;
};

struct loader {
  td_jobspec spec;
  td_ring *ring;
  uint32_t batch;
  uint32_t sample_bytes;
  struct split train;
  struct split test;
  int have_test;
  uint32_t *perm;
  uint32_t start_epoch;
  uint32_t start_batch;
  char err[LOADER_ERRLEN];
};

__attribute__((format(printf, 3, 4)))
static int loader_fail(struct loader *L, int code, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(L->err, sizeof(L->err), fmt, ap);
  va_end(ap);
  return code;
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);

  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [0, bound): rejects the 2^64 mod bound lowest draws. */
static uint64_t rand_below(uint64_t *state, uint64_t bound) {
  uint64_t threshold = (0 - bound) % bound, r;

  do
    r = splitmix64(state);
  while (r < threshold);
  return r % bound;
}

/* The train order of an epoch: a function of (seed, epoch, n) only, so a
 * resumed or re-run job sees exactly the same batches. */
static void epoch_permutation(uint32_t *perm, uint32_t n, uint64_t seed, uint32_t epoch) {
  uint64_t state = seed ^ ((uint64_t)epoch * 0x9E3779B97F4A7C15ull);

  for (uint32_t i = 0; i < n; i++)
    perm[i] = i;
  for (uint32_t i = n; i > 1; i--) {
    uint32_t j = (uint32_t)rand_below(&state, i), t = perm[i - 1];
    perm[i - 1] = perm[j];
    perm[j] = t;
  }
}

static int load_split(struct loader *L, struct split *sp, const td_data_split *ds) {
  uint32_t classes = td_jobspec_classes(&L->spec);
  const td_idx *x = &sp->images, *y = &sp->labels;
  char dims[96] = "";
  size_t n = 0;
  int err;

  if ((err = td_idx_load(ds->images, ds->limit, 0, &sp->images, L->err, sizeof(L->err))) < 0 ||
      (err = td_idx_load(ds->labels, ds->limit, 0, &sp->labels, L->err, sizeof(L->err))) < 0)
    return err;
  if (x->dims[0] != y->dims[0])
    return loader_fail(L, TD_EDATA, "%s: %u labels, but the %s images file %s holds %u images",
                       ds->labels, y->dims[0], sp->what, ds->images, x->dims[0]);
  if (y->item_bytes != 1)
    return loader_fail(L, TD_EDATA, "%s: expected one label byte per sample (rank 1), got "
                       "rank %d with %llu bytes per sample", ds->labels, y->rank,
                       (unsigned long long)y->item_bytes);
  if (x->item_bytes != L->sample_bytes) {
    for (int i = 0; i < L->spec.input_rank && n < sizeof(dims); i++)
      n += (size_t)snprintf(dims + n, sizeof(dims) - n, "%s%u", i ? " x " : "",
                            L->spec.input_dims[i]);
    return loader_fail(L, TD_EDATA, "%s: each image has %llu bytes, but the model's input "
                       "has %u elements (%s)", ds->images,
                       (unsigned long long)x->item_bytes, L->sample_bytes, dims);
  }
  for (uint64_t i = 0; i < y->count; i++)
    if (y->data[i] >= classes)
      return loader_fail(L, TD_EDATA, "%s: label at index %llu is %u, but the model has %u "
                         "classes (labels 0..%u)", ds->labels, (unsigned long long)i,
                         y->data[i], classes, classes - 1);
  return 0;
}

static int loader_prepare(struct loader *L, const char *job_path, const char *base_dir) {
  uint64_t elems, need;
  char *text;
  size_t len;
  int err;

  err = td_read_file(job_path, TD_JOBFILE_MAX, &text, &len);
  if (err < 0)
    return loader_fail(L, err, "%s: cannot read the job file: %s", job_path, td_strerror(err));
  err = td_jobspec_parse(text, len, base_dir, &L->spec, L->err, sizeof(L->err));
  free(text);
  if (err < 0)
    return err;
  if (L->spec.format != TD_DATA_IDX)
    return loader_fail(L, TD_EJOBSPEC, "data format %d is not supported by this loader",
                       (int)L->spec.format);
  elems = td_jobspec_input_elems(&L->spec);
  if (elems < 1 || elems > UINT32_MAX - 1 || L->spec.batch_size < 1)
    return loader_fail(L, TD_EJOBSPEC, "the model's input size (%llu elements) or the batch "
                       "size (%u) is out of range", (unsigned long long)elems,
                       L->spec.batch_size);
  if (td_jobspec_classes(&L->spec) < 1)
    return loader_fail(L, TD_EJOBSPEC, "the model has no output layer to give the classes");
  L->batch = L->spec.batch_size;
  L->sample_bytes = (uint32_t)elems;
  if (td_mul_u64(L->batch, elems + 1, &need) < 0 ||
      td_add_u64(need, sizeof(td_batch_hdr), &need) < 0 || need > td_ring_slot_bytes(L->ring))
    return loader_fail(L, TD_EINVAL, "a batch of %u samples of %u bytes does not fit the ring's "
                       "%zu-byte slots", L->batch, L->sample_bytes, td_ring_slot_bytes(L->ring));

  L->train.what = "train";
  L->test.what = "test";
  if ((err = load_split(L, &L->train, &L->spec.train)) < 0)
    return err;
  L->have_test = L->spec.test.images[0] != '\0';
  if (L->have_test && (err = load_split(L, &L->test, &L->spec.test)) < 0)
    return err;

  if (L->start_epoch > L->spec.epochs ||
      (L->start_batch > 0 &&
       (L->start_epoch == L->spec.epochs ||
        L->start_batch > (L->train.images.count + L->batch - 1) / L->batch)))
    return loader_fail(L, TD_EINVAL, "start position epoch %u batch %u is past the job's end "
                       "(%u epochs)", L->start_epoch, L->start_batch, L->spec.epochs);
  L->perm = malloc(L->train.images.count * sizeof(*L->perm));
  if (L->perm == NULL)
    return loader_fail(L, TD_ENOMEM, "out of memory for the train order");
  return 0;
}

/* One batch: samples first..first+count-1 of the pass, through order
 * (NULL = file order). */
static int put_batch(struct loader *L, uint32_t kind, uint32_t epoch, uint32_t index,
                     const struct split *sp, const uint32_t *order) {
  uint64_t n = sp->images.count, first = (uint64_t)index * L->batch;
  uint32_t count = (uint32_t)(n - first < L->batch ? n - first : L->batch);
  size_t sb = L->sample_bytes;
  td_batch_hdr *h;
  uint8_t *pix, *lab;
  void *slot;
  int err;

  if ((err = td_ring_write_begin(L->ring, &slot)) < 0)
    return err;
  h = slot;
  memset(h, 0, sizeof(*h));
  h->kind = kind;
  h->epoch = epoch;
  h->index = index;
  h->nbatches = (uint32_t)((n + L->batch - 1) / L->batch);
  h->count = count;
  h->sample_bytes = L->sample_bytes;
  h->first_sample = first;
  pix = (uint8_t *)(h + 1);
  lab = pix + (size_t)count * sb;
  for (uint32_t j = 0; j < count; j++) {
    uint64_t s = order != NULL ? order[first + j] : first + j;
    memcpy(pix + j * sb, sp->images.data + s * sb, sb);
    lab[j] = sp->labels.data[s];
  }
  td_ring_write_end(L->ring, td_batch_bytes(count, L->sample_bytes));
  return 0;
}

static int put_marker(td_ring *ring, uint32_t kind, uint32_t epoch, int code, const char *msg) {
  size_t slot_bytes = td_ring_slot_bytes(ring), room, n = 0;
  td_batch_hdr *h;
  void *slot;
  int err;

  if (slot_bytes < sizeof(*h))
    return TD_EINVAL;
  room = slot_bytes - sizeof(*h);
  if ((err = td_ring_write_begin(ring, &slot)) < 0)
    return err;
  h = slot;
  memset(h, 0, sizeof(*h));
  h->kind = kind;
  h->epoch = epoch;
  h->error = code;
  if (msg != NULL && room > 0) {
    n = strlen(msg);
    if (n >= room)
      n = room - 1;
    memcpy(h + 1, msg, n);
    ((char *)(h + 1))[n++] = '\0';
  }
  td_ring_write_end(ring, sizeof(*h) + n);
  return 0;
}

static int loader_run(struct loader *L) {
  uint32_t ntrain = (uint32_t)L->train.images.count;
  uint32_t train_batches = (ntrain + L->batch - 1) / L->batch;
  uint32_t test_batches = L->have_test
      ? (uint32_t)((L->test.images.count + L->batch - 1) / L->batch) : 0;
  int err;

  for (uint32_t e = L->start_epoch; e < L->spec.epochs; e++) {
    epoch_permutation(L->perm, ntrain, L->spec.seed, e);
    for (uint32_t b = e == L->start_epoch ? L->start_batch : 0; b < train_batches; b++)
      if ((err = put_batch(L, TD_BATCH_TRAIN, e, b, &L->train, L->perm)) < 0)
        return err;
    for (uint32_t b = 0; b < test_batches; b++)
      if ((err = put_batch(L, TD_BATCH_TEST, e, b, &L->test, NULL)) < 0)
        return err;
  }
  return put_marker(L->ring, TD_BATCH_END, L->spec.epochs, 0, NULL);
}

static void loader_free(struct loader *L) {
  td_idx_free(&L->train.images);
  td_idx_free(&L->train.labels);
  td_idx_free(&L->test.images);
  td_idx_free(&L->test.labels);
  free(L->perm);
  td_ring_close(L->ring);
}

static void on_sigterm(int sig) {
  (void)sig;
  _exit(0);
}

static void usage(FILE *f) {
  fprintf(f, "usage: traind-loader --job FILE --ring NAME [--base-dir DIR] [--parent-pid PID]\n"
             "                     [--start-epoch E [--start-batch B]]\n"
             "Feeds a job's dataset, as batches, into the shared-memory ring NAME.\n");
}

static int parse_u32(const char *s, uint32_t *out) {
  unsigned long v;
  char *end;

  errno = 0;
  v = strtoul(s, &end, 10);
  if (*s < '0' || *s > '9' || *end != '\0' || errno != 0 || v > UINT32_MAX)
    return TD_EINVAL;
  *out = (uint32_t)v;
  return 0;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"job", required_argument, NULL, 'j'},
      {"base-dir", required_argument, NULL, 'b'},
      {"ring", required_argument, NULL, 'r'},
      {"parent-pid", required_argument, NULL, 'p'},
      {"start-epoch", required_argument, NULL, 'e'},
      {"start-batch", required_argument, NULL, 'B'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  static struct loader L;
  const char *job = NULL, *ring_name = NULL, *base_dir = NULL;
  char dir[TD_PATH_MAX], *slash;
  uint32_t parent = 0;
  struct sigaction sa;
  int c, err;

  td_log_init("traind-loader", TD_LOG_INFO);
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'j': job = optarg; break;
    case 'b': base_dir = optarg; break;
    case 'r': ring_name = optarg; break;
    case 'p':
      if (parse_u32(optarg, &parent) < 0 || parent < 1 || parent > INT_MAX)
        goto bad_usage;
      break;
    case 'e':
      if (parse_u32(optarg, &L.start_epoch) < 0)
        goto bad_usage;
      break;
    case 'B':
      if (parse_u32(optarg, &L.start_batch) < 0)
        goto bad_usage;
      break;
    case 'h': usage(stdout); return 0;
    default: goto bad_usage;
    }
  }
  if (optind != argc || job == NULL || ring_name == NULL)
    goto bad_usage;
  if (base_dir == NULL) {
    if (td_strlcpy(dir, job, sizeof(dir)) < 0)
      goto bad_usage;
    slash = strrchr(dir, '/');
    if (slash == NULL)
      strcpy(dir, ".");
    else
      *(slash == dir ? slash + 1 : slash) = '\0'; /* "/job.yaml" -> "/" */
    base_dir = dir;
  }

  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  /* Die with the process that started us (traind), so a loader is never
   * left behind; --parent-pid also closes the race of it dying first. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (parent > 0 && getppid() != (pid_t)parent)
    return 0;

  err = td_ring_open(ring_name, &L.ring);
  if (err < 0) {
    td_error("cannot open the ring %s: %s", ring_name,
             err == TD_ENOENT ? "it does not exist (traind creates it first)" : td_strerror(err));
    return 1;
  }
  if (parent > 0)
    td_ring_set_peer(L.ring, (pid_t)parent);

  err = loader_prepare(&L, job, base_dir);
  if (err == 0)
    err = loader_run(&L);
  if (err == TD_ECLOSED) {
    loader_free(&L);
    return 0;
  }
  if (err < 0) {
    if (L.err[0] == '\0')
      snprintf(L.err, sizeof(L.err), "%s", td_strerror(err));
    td_error("%s", L.err);
    put_marker(L.ring, TD_BATCH_ERROR, 0, err, L.err);
    loader_free(&L);
    return 1;
  }
  loader_free(&L);
  return 0;

bad_usage:
  usage(stderr);
  return 2;
}
