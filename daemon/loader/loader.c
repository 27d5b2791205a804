/* traind-loader: reads a job's dataset and feeds its worker's ring.
 *
 *   traind-loader --job FILE.tdj --ring NAME [--base-dir DIR] [--parent-pid PID]
 *                 [--start-epoch E [--start-batch B]] [--memory-budget BYTES]
 *                 [--threads N] [--no-cache] [--as-user NAME:UID:GID]
 *
 * For each epoch: the train samples (less the validation split) as
 * TD_BATCH_TRAIN batches, in an order that depends only on (seed, epoch)
 * and the shuffle window (dataset.h, td_order); then the validation split
 * as TD_BATCH_VAL and the test set as TD_BATCH_TEST, in file order; after
 * the last epoch one TD_BATCH_END.  Batches are whole (the last of a pass
 * may be short): how the worker splits them into micro-batches changes
 * nothing here.  A bad dataset becomes one TD_BATCH_ERROR slot with the
 * code and the message (also on stderr) and exit 1.  The consumer closing
 * the ring, or SIGTERM, ends it quietly with 0; usage errors exit 2.
 *
 * Memory: when the decoded splits fit --memory-budget (default a quarter
 * of the RAM, at most 4 GiB) they are decoded once, with --threads
 * threads, into the shared cache (shmcache.h), where other jobs reading the
 * same files map the same copy; --no-cache decodes into the loader's own
 * memory.  Larger datasets stream: a thread decodes the next window of
 * chunks while the current one is sent, so at most two windows are in
 * memory, and shuffling happens within a window.
 *
 * data.augment (augment.h) is applied as each sample is copied into its
 * batch, from the decoded copy, so the shared copy stays as decoded: the
 * random crop and flip to train samples only, keyed by (seed, epoch,
 * sample number), normalize to all (the ring then carries float32).
 *
 * --job is the job's description (proto/jobdesc.h), made by traind at
 * submit; one of another format version is a usage error (exit 2).
 * --base-dir is accepted and unused: the description's paths are
 * absolute.  --parent-pid names traind: it becomes the ring's peer
 * and the loader exits if it is already gone.  --start-epoch/--start-batch
 * resume at a train batch of an epoch (from a checkpoint's data position).
 * --as-user makes the loader that user (privdrop.h) before it opens
 * anything; a failure there exits 2.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "augment.h"
#include "dataset.h"
#include "error.h"
#include "jobdesc.h"
#include "jobspec.h"
#include "layers.h"
#include "log.h"
#include "privdrop.h"
#include "ring.h"
#include "shmcache.h"
#include "util.h"

#define LOADER_ERRLEN 1024
#define CHUNK_BYTES ((uint64_t)256 << 10) /* decoded bytes per chunk */
#define BUDGET_MAX ((uint64_t)4 << 30)
#define OVERHEAD_BYTES ((uint64_t)4 << 20) /* the loader's own, besides the data */
#define THREAD_BYTES ((uint64_t)3 << 19)   /* a decoding thread's buffers */
#define NBUF 2                             /* windows in memory when streaming */

/* One stream of samples within an epoch: the train samples, the
 * validation split (the train file's last samples) or the test set. */
struct pass {
  uint32_t kind;
  td_split *split;
  uint64_t base; /* the pass's first sample in the split */
  uint64_t n;
  int shuffle;
  uint32_t wchunks;
};

/* A window ready to send: count samples, sample i at ids[i] in samples
 * (sample_bytes each) and targets (target_bytes each). */
struct window {
  const struct pass *pass;
  uint32_t epoch;
  uint64_t count;
  uint64_t skip; /* samples already sent before a resume */
  uint64_t pos;  /* the pass position of sample 0 */
  const uint8_t *samples, *targets;
  uint32_t *ids;
  const uint32_t *nums; /* streaming: the split's sample number at each buffer position */
  int buf; /* streaming buffer, or -1 */
  int end; /* no more windows */
  int rc;  /* the producer failed: message in the loader's err */
};

struct buffer {
  uint8_t *samples, *targets;
  uint32_t *ids, *perm;
};

struct loader {
  td_jobspec spec;
  td_ring *ring;
  uint32_t batch;
  uint32_t classes;
  uint32_t vocab;       /* an embedding first: its ids, which the samples must hold; else 0 */
  uint32_t elems;       /* values per sample */
  uint32_t sample_bytes; /* as decoded (and cached) */
  uint32_t target_bytes; /* td_jobspec_target's */
  td_dtype dtype;
  td_aug aug;            /* what a sample becomes in the ring: aug.out_bytes, aug.out */
  uint64_t budget;
  int threads;
  int no_cache;
  td_split *split[2];
  struct pass passes[3];
  int npasses;
  uint32_t chunk;
  int streaming;
  /* in memory: each split's samples, then their targets */
  uint8_t *data[2];
  uint8_t *own[2];
  td_shmcache *cache[2];
  /* the schedule */
  uint32_t start_epoch, start_batch;
  uint32_t *chunk_perm;
  uint64_t chunk_perm_cap;
  struct buffer bufs[NBUF];
  uint64_t window_cap; /* samples a buffer holds */
  /* streaming: producer thread and its queue */
  pthread_t producer;
  int producer_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct window queue[NBUF + 1];
  int qhead, qlen;
  int buf_busy[NBUF];
  int stop;
  char err[LOADER_ERRLEN];
};

static struct loader *the_loader; /* for the SIGTERM handler */

__attribute__((format(printf, 3, 4)))
static int loader_fail(struct loader *L, int code, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(L->err, sizeof(L->err), fmt, ap);
  va_end(ap);
  return code;
}

static uint64_t default_budget(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  uint64_t quarter;

  if (pages <= 0 || page <= 0)
    return BUDGET_MAX / 4;
  quarter = (uint64_t)pages * (uint64_t)page / 4;
  return quarter < BUDGET_MAX ? quarter : BUDGET_MAX;
}

/* Decode one whole split into memory: the shared cache's, or our own.
 * Both splits load at once, so each has its own err. */
static int load_split(struct loader *L, int i, char *err, size_t errlen) {
  td_split *s = L->split[i];
  uint64_t count = td_split_count(s),
           bytes = count * ((uint64_t)L->sample_bytes + L->target_bytes);
  char key[TD_SHMCACHE_KEY_MAX];
  uint8_t *data;
  int rc = TD_ETOOBIG, ready = 0;

  if (!L->no_cache && td_split_cache_key(s, key, sizeof(key)) == 0 &&
      (rc = td_shmcache_open(key, bytes, &L->cache[i], &ready)) == 0) {
    data = td_shmcache_data(L->cache[i]);
    if (ready) {
      td_info("%s set: mapped the shared copy %s", td_split_name(s),
              td_shmcache_name(L->cache[i]));
    } else {
      if ((rc = td_split_load(s, data, data + count * L->sample_bytes, L->classes, L->threads,
                              err, errlen)) < 0) {
        td_shmcache_release(L->cache[i]);
        L->cache[i] = NULL;
        return rc;
      }
      td_shmcache_publish(L->cache[i]);
      td_info("%s set: decoded into the shared copy %s", td_split_name(s),
              td_shmcache_name(L->cache[i]));
    }
  } else {
    if (!L->no_cache)
      td_warn("%s set: no shared copy (%s); decoding into the loader's memory",
              td_split_name(s), td_strerror(rc));
    data = L->own[i] = malloc(bytes > 0 ? bytes : 1);
    if (data == NULL) {
      snprintf(err, errlen, "out of memory for the %s set (%llu bytes)", td_split_name(s),
               (unsigned long long)bytes);
      return TD_ENOMEM;
    }
    if ((rc = td_split_load(s, data, data + count * L->sample_bytes, L->classes, L->threads,
                            err, errlen)) < 0)
      return rc;
  }
  L->data[i] = data;
  /* A shared copy was decoded for a model with maybe more classes, or
   * without an embedding (its key holds the targets' layout, so float
   * targets are the job's). */
  if (L->vocab > 0 && (rc = td_ids_check(data, L->dtype, count, L->elems, 0, L->vocab,
                                         td_split_path(s), err, errlen)) < 0)
    return rc;
  if (td_split_target(s).dtype != TD_DTYPE_I32)
    return 0;
  return td_labels_check((const int32_t *)(data + count * L->sample_bytes), count, 0,
                         L->classes, td_split_path(s), err, errlen);
}

struct load_both {
  struct loader *L;
  int rc[2];
  char err[2][LOADER_ERRLEN];
};

static int load_task(void *ctx, uint64_t i, char *err, size_t errlen) {
  struct load_both *lb = ctx;

  (void)err;
  (void)errlen;
  lb->rc[i] = load_split(lb->L, (int)i, lb->err[i], sizeof(lb->err[i]));
  return 0;
}

/* Sizes the windows: in memory, the job's shuffle window (or everything);
 * streaming, what two windows in the budget hold. */
static int plan_memory(struct loader *L) {
  uint64_t per_sample = (uint64_t)L->sample_bytes + L->target_bytes + 2 * sizeof(uint32_t);
  uint64_t need = 0;
  uint64_t fixed, avail, max_window, want;
  uint32_t wchunks;

  for (int i = 0; i < 2; i++)
    if (L->split[i] != NULL)
      need += td_split_count(L->split[i]) * per_sample;
  L->streaming = need + OVERHEAD_BYTES > L->budget;
  /* Sized as when a target was one byte, whatever it is now: the chunks
   * decide the sample order, which a resumed checkpoint relies on. */
  L->chunk = (uint32_t)(CHUNK_BYTES / ((uint64_t)L->sample_bytes + 1));
  if (L->chunk < 1)
    L->chunk = 1;
  want = L->spec.shuffle_window;
  if (!L->streaming) {
    wchunks = want == 0 ? 0 : (uint32_t)((want + L->chunk - 1) / L->chunk);
    for (int p = 0; p < L->npasses; p++)
      L->passes[p].wchunks = L->passes[p].shuffle ? wchunks : 0;
    return 0;
  }
  /* Reading from anywhere: gzip access points, CSV line offsets. */
  for (int i = 0; i < 2; i++) {
    int err;
    if (L->split[i] != NULL && td_split_needs_scan(L->split[i], 1) &&
        (err = td_split_scan(L->split[i], L->budget / 16, L->err, sizeof(L->err))) < 0)
      return err;
    if (L->split[i] != NULL && td_split_min_read(L->split[i]) > L->chunk)
      L->chunk = (uint32_t)(td_split_min_read(L->split[i]) < UINT32_MAX
                                ? td_split_min_read(L->split[i]) : UINT32_MAX);
  }
  /* Besides the windows: its own, each thread's, the access points. */
  fixed = OVERHEAD_BYTES + (uint64_t)L->threads * THREAD_BYTES + L->budget / 8;
  avail = L->budget > fixed ? L->budget - fixed : 0;
  max_window = avail / NBUF / per_sample;
  if (max_window < 1)
    return loader_fail(L, TD_ENOMEM, "the loader's memory budget of %llu bytes is too small "
                       "to stream this dataset: it needs more than %llu (--memory-budget)",
                       (unsigned long long)L->budget,
                       (unsigned long long)(fixed + NBUF * per_sample));
  if (L->chunk > max_window) /* fewer samples per read than is efficient, but in budget */
    L->chunk = (uint32_t)max_window;
  max_window = max_window / L->chunk * L->chunk;
  if (want > max_window)
    td_warn("data.shuffle_window %llu is more than the %llu samples two windows in the "
            "loader's memory budget hold: using %llu", (unsigned long long)want,
            (unsigned long long)max_window, (unsigned long long)max_window);
  if (want == 0 || want > max_window)
    want = max_window;
  wchunks = (uint32_t)((want + L->chunk - 1) / L->chunk);
  for (int p = 0; p < L->npasses; p++)
    L->passes[p].wchunks = wchunks;
  L->window_cap = (uint64_t)wchunks * L->chunk;
  td_info("streaming: %llu bytes of data over a %llu-byte budget; windows of %u chunks of %u "
          "samples (%llu samples shuffled together)", (unsigned long long)need,
          (unsigned long long)L->budget, wchunks, L->chunk, (unsigned long long)L->window_cap);
  return 0;
}

/* L->spec is the job's description, read. */
static int loader_prepare(struct loader *L) {
  uint64_t elems, need, nval = 0, ntrain, train_batches;
  int err, have_test;

  elems = td_jobspec_input_elems(&L->spec);
  L->classes = td_jobspec_classes(&L->spec);
  L->elems = (uint32_t)elems;
  if (L->spec.nlayers > 0 && (unsigned)L->spec.layers[0].type < TD_LAYER__COUNT &&
      td_layer_def_of(L->spec.layers[0].type)->ids)
    L->vocab = L->spec.layers[0].vocab;
  if (elems < 1 || elems > UINT32_MAX / 8 || L->spec.batch_size < 1)
    return loader_fail(L, TD_EJOBSPEC, "the model's input size (%llu elements) or the batch "
                       "size (%u) is out of range", (unsigned long long)elems,
                       L->spec.batch_size);
  if (L->classes < 1 || L->classes > TD_DATASET_MAX_CLASSES)
    return loader_fail(L, TD_EJOBSPEC, "the model has %u outputs: expected 1..%u",
                       L->classes, TD_DATASET_MAX_CLASSES);
  L->target_bytes = (uint32_t)td_target_bytes(td_jobspec_target(&L->spec));
  L->batch = L->spec.batch_size;

  have_test = L->spec.test.images[0] != '\0';
  for (int i = 0; i < 1 + have_test; i++) {
    if ((err = td_split_open(&L->spec, (td_split_which)i, &L->split[i], L->err,
                             sizeof(L->err))) < 0)
      return err;
    /* CSV line counts and compressed raw sizes come from a first pass. */
    if (td_split_count(L->split[i]) == UINT64_MAX &&
        (err = td_split_scan(L->split[i], L->budget / 16, L->err, sizeof(L->err))) < 0)
      return err;
  }
  L->dtype = td_split_dtype(L->split[0]);
  L->sample_bytes = td_split_sample_bytes(L->split[0]);
  if (L->split[1] != NULL && (td_split_dtype(L->split[1]) != L->dtype))
    return loader_fail(L, TD_EDATA, "%s: the test samples are %s, but the train samples are %s",
                       td_split_path(L->split[1]), td_dtype_name(td_split_dtype(L->split[1])),
                       td_dtype_name(L->dtype));
  if ((err = td_aug_init(&L->aug, &L->spec, L->dtype, L->err, sizeof(L->err))) < 0)
    return err;
  if (td_mul_u64(L->batch, (uint64_t)L->aug.out_bytes + L->target_bytes, &need) < 0 ||
      td_add_u64(need, sizeof(td_batch_hdr), &need) < 0 || need > td_ring_slot_bytes(L->ring))
    return loader_fail(L, TD_EINVAL, "a batch of %u samples of %u bytes (%s) does not fit the "
                       "ring's %zu-byte slots", L->batch, L->aug.out_bytes,
                       td_dtype_name(L->aug.out), td_ring_slot_bytes(L->ring));

  ntrain = td_split_count(L->split[0]);
  if (L->spec.val_fraction > 0 || L->spec.val_count > 0) {
    nval = td_dataset_validation_count(&L->spec, ntrain);
    if (nval >= ntrain)
      return loader_fail(L, TD_EDATA, "%s: a validation split of %llu samples leaves no "
                         "training samples: expected fewer than %llu",
                         td_split_path(L->split[0]), (unsigned long long)nval,
                         (unsigned long long)ntrain);
  }
  ntrain -= nval;
  L->passes[L->npasses++] = (struct pass){TD_BATCH_TRAIN, L->split[0], 0, ntrain, 1, 0};
  if (nval > 0)
    L->passes[L->npasses++] = (struct pass){TD_BATCH_VAL, L->split[0], ntrain, nval, 0, 0};
  if (have_test)
    L->passes[L->npasses++] = (struct pass){TD_BATCH_TEST, L->split[1], 0,
                                            td_split_count(L->split[1]), 0, 0};

  train_batches = (ntrain + L->batch - 1) / L->batch;
  if (L->start_epoch > L->spec.epochs ||
      (L->start_batch > 0 &&
       (L->start_epoch == L->spec.epochs || L->start_batch > train_batches)))
    return loader_fail(L, TD_EINVAL, "start position epoch %u batch %u is past the job's end "
                       "(%u epochs of %llu batches)", L->start_epoch, L->start_batch,
                       L->spec.epochs, (unsigned long long)train_batches);
  if ((err = plan_memory(L)) < 0)
    return err;

  if (!L->streaming) {
    struct load_both lb = {.L = L};
    /* Both splits at once: each also decodes with several threads. */
    td_parallel(1 + have_test, 1 + (uint64_t)have_test, load_task, &lb, NULL, 0);
    for (int i = 0; i < 1 + have_test; i++)
      if (lb.rc[i] < 0)
        return loader_fail(L, lb.rc[i], "%s", lb.err[i]);
    L->window_cap = 0;
    for (int p = 0; p < L->npasses; p++) {
      uint64_t span = L->passes[p].wchunks ? (uint64_t)L->passes[p].wchunks * L->chunk
                                           : L->passes[p].n;
      if (span > L->window_cap)
        L->window_cap = span;
    }
  }
  for (int b = 0; b < (L->streaming ? NBUF : 1); b++) {
    struct buffer *B = &L->bufs[b];
    B->ids = malloc(L->window_cap * sizeof(uint32_t) + 1);
    B->perm = malloc(L->window_cap * sizeof(uint32_t) + 1);
    if (L->streaming) {
      B->samples = malloc(L->window_cap * L->sample_bytes + 1);
      B->targets = malloc(L->window_cap * L->target_bytes + 1);
    }
    if (B->ids == NULL || B->perm == NULL ||
        (L->streaming && (B->samples == NULL || B->targets == NULL)))
      return loader_fail(L, TD_ENOMEM, "out of memory for windows of %llu samples",
                         (unsigned long long)L->window_cap);
  }
  return 0;
}

/* The chunks of a window, decoded into a buffer. */
struct decode {
  struct loader *L;
  const struct pass *p;
  const uint32_t *chunks;
  const uint64_t *at; /* buffer position of each chunk */
  struct buffer *B;
};

static int decode_task(void *ctx, uint64_t i, char *err, size_t errlen) {
  struct decode *d = ctx;
  struct loader *L = d->L;
  uint64_t k = d->chunks[i], first = k * L->chunk;
  uint64_t n = d->p->n - first < L->chunk ? d->p->n - first : L->chunk;

  uint8_t *samples = d->B->samples + d->at[i] * L->sample_bytes;
  int rc = td_split_read(d->p->split, d->p->base + first, n, samples,
                         d->B->targets + d->at[i] * L->target_bytes, L->classes, err, errlen);

  if (rc == 0 && L->vocab > 0)
    rc = td_ids_check(samples, L->dtype, n, L->elems, d->p->base + first, L->vocab,
                      td_split_path(d->p->split), err, errlen);
  return rc;
}

/* Window w of a pass into buffer B: the order its samples are sent in
 * (streaming: decoded into B, ids index B; in memory: ids are sample
 * numbers in the split). */
static int fill_window(struct loader *L, const td_order *o, uint64_t w, struct buffer *B,
                       struct window *win) {
  const struct pass *p = win->pass;
  uint64_t span = td_order_window_span(o), nk = td_order_chunks(o), first = w * span;
  uint64_t nw = nk - first < span ? nk - first : span, count = 0, at_small[64], *at = at_small;
  const uint32_t *chunks = L->chunk_perm + first;
  int rc = 0;

  if (nw > TD_ARRAY_SIZE(at_small) && (at = malloc(nw * sizeof(*at))) == NULL)
    return loader_fail(L, TD_ENOMEM, "out of memory for a window's chunk list");
  for (uint64_t i = 0; i < nw; i++) {
    at[i] = count;
    count += td_order_chunk_size(o, chunks[i]);
  }
  td_order_window_perm(o, w, B->perm, (uint32_t)count);
  if (L->streaming) {
    struct decode d = {L, p, chunks, at, B};
    rc = td_parallel(L->threads, nw, decode_task, &d, L->err, sizeof(L->err));
    for (uint64_t i = 0, c = 0; i < nw; i++) {
      uint32_t size = td_order_chunk_size(o, chunks[i]);
      uint64_t s0 = p->base + (uint64_t)chunks[i] * L->chunk;
      for (uint32_t j = 0; j < size; j++)
        B->ids[c++] = (uint32_t)(s0 + j);
    }
    win->samples = B->samples;
    win->targets = B->targets;
    win->ids = B->perm;
    win->nums = B->ids;
  } else {
    int i_split = p->split == L->split[0] ? 0 : 1;
    uint64_t split_n = td_split_count(p->split);

    /* ids = concatenation position -> sample number, then permuted. */
    for (uint64_t i = 0, c = 0; i < nw; i++) {
      uint32_t size = td_order_chunk_size(o, chunks[i]);
      uint64_t s0 = p->base + (uint64_t)chunks[i] * L->chunk;
      for (uint32_t j = 0; j < size; j++)
        B->ids[c++] = (uint32_t)(s0 + j);
    }
    for (uint64_t i = 0; i < count; i++)
      B->perm[i] = B->ids[B->perm[i]];
    win->samples = L->data[i_split];
    win->targets = L->data[i_split] + split_n * L->sample_bytes;
    win->ids = B->perm;
  }
  if (at != at_small)
    free(at);
  win->count = count;
  return rc;
}

/* The open batch: a slot being filled, possibly across windows. */
static td_batch_hdr *open_batch;
static uint32_t open_filled;

static int emit_window(struct loader *L, const struct window *win) {
  const struct pass *p = win->pass;
  uint32_t nbatches = (uint32_t)((p->n + L->batch - 1) / L->batch);
  size_t sb = L->sample_bytes, ob = L->aug.out_bytes, tb = L->target_bytes;
  int train = p->kind == TD_BATCH_TRAIN;
  uint64_t i = win->skip;
  int rc;

  while (i < win->count) {
    td_batch_hdr *h = open_batch;
    uint8_t *pix, *lab;
    uint64_t k;

    if (h == NULL) {
      uint64_t b = (win->pos + i) / L->batch;
      void *slot;
      if ((rc = td_ring_write_begin(L->ring, &slot)) < 0)
        return rc;
      h = open_batch = slot;
      memset(h, 0, sizeof(*h));
      h->kind = p->kind;
      h->epoch = win->epoch;
      h->index = (uint32_t)b;
      h->nbatches = nbatches;
      h->count = (uint32_t)(p->n - b * L->batch < L->batch ? p->n - b * L->batch : L->batch);
      h->sample_bytes = L->aug.out_bytes;
      h->dtype = (uint32_t)L->aug.out;
      h->target_bytes = L->target_bytes;
      h->first_sample = b * L->batch;
      open_filled = 0;
    }
    pix = (uint8_t *)(h + 1);
    lab = pix + (size_t)h->count * ob;
    k = h->count - open_filled < win->count - i ? h->count - open_filled : win->count - i;
    for (uint64_t j = 0; j < k; j++) {
      uint32_t s = win->ids[i + j];
      td_aug_apply(&L->aug, win->samples + (size_t)s * sb, pix + (open_filled + j) * ob,
                   win->epoch, win->nums != NULL ? win->nums[s] : s, train);
      memcpy(lab + (open_filled + j) * tb, win->targets + (size_t)s * tb, tb);
    }
    open_filled += (uint32_t)k;
    i += k;
    if (open_filled == h->count) {
      td_ring_write_end(L->ring, td_batch_bytes(h->count, L->aug.out_bytes, L->target_bytes));
      open_batch = NULL;
    }
  }
  return 0;
}

/* Every window of the run, in order, from the start position. */
typedef int (*window_fn)(struct loader *L, const td_order *o, uint64_t w, struct window *win);

static int walk(struct loader *L, window_fn fn) {
  int rc;

  for (uint32_t e = L->start_epoch; e < L->spec.epochs; e++) {
    for (int pi = 0; pi < L->npasses; pi++) {
      const struct pass *p = &L->passes[pi];
      td_order o = {p->n, L->chunk, p->wchunks, L->spec.seed, e, p->shuffle};
      uint64_t nk = td_order_chunks(&o), span = td_order_window_span(&o), pos = 0;
      uint64_t skip = e == L->start_epoch && p->kind == TD_BATCH_TRAIN
                          ? (uint64_t)L->start_batch * L->batch : 0;

      if (nk > L->chunk_perm_cap) {
        free(L->chunk_perm);
        L->chunk_perm = malloc(nk * sizeof(uint32_t));
        if (L->chunk_perm == NULL)
          return loader_fail(L, TD_ENOMEM, "out of memory for the chunk order");
        L->chunk_perm_cap = nk;
      }
      td_order_chunk_perm(&o, L->chunk_perm);
      for (uint64_t w = 0; w < td_order_windows(&o); w++) {
        struct window win = {.pass = p, .epoch = e, .pos = pos};
        uint64_t wcount = 0;

        for (uint64_t i = w * span; i < nk && i < (w + 1) * span; i++)
          wcount += td_order_chunk_size(&o, L->chunk_perm[i]);
        if (pos + wcount > skip) { /* windows sent before a resume are not even read */
          win.skip = skip > pos ? skip - pos : 0;
          if ((rc = fn(L, &o, w, &win)) < 0)
            return rc;
        }
        pos += wcount;
      }
    }
  }
  return 0;
}

static int emit_in_memory(struct loader *L, const td_order *o, uint64_t w, struct window *win) {
  int rc = fill_window(L, o, w, &L->bufs[0], win);

  return rc < 0 ? rc : emit_window(L, win);
}

/* Streaming: the producer thread walks the run, decoding each window into
 * a free buffer and queueing it; the main thread sends them. */
static void queue_push(struct loader *L, const struct window *win) {
  pthread_mutex_lock(&L->mu);
  L->queue[(L->qhead + L->qlen++) % (NBUF + 1)] = *win;
  pthread_cond_broadcast(&L->cv);
  pthread_mutex_unlock(&L->mu);
}

static int produce(struct loader *L, const td_order *o, uint64_t w, struct window *win) {
  int b = -1;

  pthread_mutex_lock(&L->mu);
  while (!L->stop) {
    for (int i = 0; i < NBUF && b < 0; i++)
      if (!L->buf_busy[i])
        b = i;
    if (b >= 0)
      break;
    pthread_cond_wait(&L->cv, &L->mu);
  }
  if (b >= 0)
    L->buf_busy[b] = 1;
  pthread_mutex_unlock(&L->mu);
  if (b < 0)
    return TD_ECLOSED;
  win->buf = b;
  win->rc = fill_window(L, o, w, &L->bufs[b], win);
  queue_push(L, win);
  return win->rc;
}

static void *producer_main(void *arg) {
  struct loader *L = arg;
  struct window end = {.end = 1, .buf = -1};

  end.rc = walk(L, produce);
  if (end.rc != TD_ECLOSED)
    queue_push(L, &end);
  return NULL;
}

static int consume(struct loader *L) {
  for (;;) {
    struct window win;
    int rc;

    pthread_mutex_lock(&L->mu);
    while (L->qlen == 0)
      pthread_cond_wait(&L->cv, &L->mu);
    win = L->queue[L->qhead];
    L->qhead = (L->qhead + 1) % (NBUF + 1);
    L->qlen--;
    pthread_mutex_unlock(&L->mu);
    if (win.end || win.rc < 0)
      return win.rc;
    rc = emit_window(L, &win);
    pthread_mutex_lock(&L->mu);
    L->buf_busy[win.buf] = 0;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    if (rc < 0)
      return rc;
  }
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
  int rc;

  if (!L->streaming) {
    rc = walk(L, emit_in_memory);
  } else {
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv, NULL);
    if (pthread_create(&L->producer, NULL, producer_main, L) != 0)
      return loader_fail(L, TD_ENOMEM, "cannot start the decoding thread");
    L->producer_started = 1;
    rc = consume(L);
  }
  if (rc < 0)
    return rc;
  return put_marker(L->ring, TD_BATCH_END, L->spec.epochs, 0, NULL);
}

static void loader_free(struct loader *L) {
  if (L->producer_started) {
    pthread_mutex_lock(&L->mu);
    L->stop = 1;
    pthread_cond_broadcast(&L->cv);
    pthread_mutex_unlock(&L->mu);
    pthread_join(L->producer, NULL);
  }
  for (int i = 0; i < 2; i++) {
    td_shmcache_release(L->cache[i]);
    L->cache[i] = NULL;
    free(L->own[i]);
    td_split_close(L->split[i]);
  }
  for (int b = 0; b < NBUF; b++) {
    free(L->bufs[b].samples);
    free(L->bufs[b].targets);
    free(L->bufs[b].ids);
    free(L->bufs[b].perm);
  }
  free(L->chunk_perm);
  td_ring_close(L->ring);
}

/* A cancelled job must not leave its shared copy behind: release it with
 * system calls only, then go. */
static void on_sigterm(int sig) {
  (void)sig;
  if (the_loader != NULL)
    for (int i = 0; i < 2; i++)
      td_shmcache_release_on_signal(the_loader->cache[i]);
  _exit(0);
}

static void usage(FILE *f) {
  fprintf(f, "usage: traind-loader --job FILE.tdj --ring NAME [--base-dir DIR] [--parent-pid PID]\n"
             "                     [--start-epoch E [--start-batch B]] [--memory-budget BYTES]\n"
             "                     [--threads N] [--no-cache] [--as-user NAME:UID:GID]\n"
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
      {"memory-budget", required_argument, NULL, 'm'},
      {"threads", required_argument, NULL, 't'},
      {"no-cache", no_argument, NULL, 'n'},
      {"as-user", required_argument, NULL, 'u'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  static struct loader L;
  const char *job = NULL, *ring_name = NULL, *as_user = NULL;
  char why[512];
  uint32_t parent = 0, threads = 0;
  int desc_err;
  struct sigaction sa;
  long cpus;
  int c, err;

  td_log_init("traind-loader", TD_LOG_INFO);
  L.budget = default_budget();
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'j': job = optarg; break;
    case 'b': break; /* accepted, unused: a description's paths are absolute */
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
    case 'm':
      if (td_parse_size(optarg, &L.budget) < 0 || L.budget == 0)
        goto bad_usage;
      break;
    case 't':
      if (parse_u32(optarg, &threads) < 0 || threads < 1 || threads > 64)
        goto bad_usage;
      break;
    case 'n': L.no_cache = 1; break;
    case 'u': as_user = optarg; break;
    case 'h': usage(stdout); return 0;
    default: goto bad_usage;
    }
  }
  if (optind != argc || job == NULL || ring_name == NULL)
    goto bad_usage;
  /* Before any file or segment is opened: the dataset is read, and the
   * shared copy made, with the job's user's rights. */
  if (as_user != NULL) {
    td_identity id;

    if (td_identity_parse(as_user, &id) < 0) {
      td_error("--as-user '%s' is not NAME:UID:GID", as_user);
      return 2;
    }
    if (td_privdrop_become(&id, why, sizeof(why)) < 0) {
      td_error("%s", why);
      return 2;
    }
  }
  /* The job's description (proto/jobdesc.h), as traind made it at submit.
   * One of another version is a usage error, said before anything is
   * opened; any other problem goes to the worker through the ring. */
  desc_err = td_jobdesc_load(job, &L.spec, L.err, sizeof(L.err));
  if (desc_err == TD_EVERSION) {
    td_error("%s", L.err);
    return 2;
  }
  cpus = sysconf(_SC_NPROCESSORS_ONLN);
  L.threads = threads > 0 ? (int)threads : cpus < 1 ? 1 : cpus > 4 ? 4 : (int)cpus;

  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  /* Die with the process that started us (traind), so a loader is never
   * left behind; --parent-pid also closes the race of it dying first. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (parent > 0 && getppid() != (pid_t)parent)
    return 0;

  why[0] = '\0';
  err = td_ring_open_owned(ring_name, geteuid(), &L.ring, why, sizeof(why));
  if (err < 0) {
    td_error("cannot open the ring %s: %s", ring_name,
             err == TD_ENOENT ? "it does not exist (traind creates it first)"
             : why[0]         ? why
                              : td_strerror(err));
    return 1;
  }
  if (parent > 0)
    td_ring_set_peer(L.ring, (pid_t)parent);
  /* Shared copies whose loaders were killed go now. */
  td_shmcache_sweep();
  the_loader = &L;

  err = desc_err < 0 ? desc_err : loader_prepare(&L);
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
    return err == TD_EVERSION ? 2 : 1;
  }
  loader_free(&L);
  return 0;

bad_usage:
  usage(stderr);
  return 2;
}
