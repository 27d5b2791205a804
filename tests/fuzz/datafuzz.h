/* Shared by the dataset fuzz targets (fuzz_idx, fuzz_npy, fuzz_csv,
 * fuzz_raw): the input becomes a job's data files and runs through what
 * traind's submit check and the loader call, in their order.
 *
 * Input: a mode byte, the model (input elements: 2 bytes little-endian,
 * classes - 1, the train split's limit), the target's own configuration
 * bytes, then the samples' file and, for formats with a labels file, the
 * separator FD_SEP and the labels' file.  Mode bits 0-1 say how the
 * samples' file is stored: 0 and 3 as given (which may itself be gzip),
 * 1 gzip, 2 gzip in two members; bits 2-3 the same for the labels; bit 4
 * reads as the loader streams (a scan with access points first, then
 * ranges, compared with the whole load), and reads a gzip samples' file
 * from access points far closer together than the loader's; bits 5-7 are
 * the target's.
 *
 * Files are memfds, made once per process and rewritten for each input,
 * named by /proc/self/fd/N as a job file names its data. */
#ifndef TD_FUZZ_DATAFUZZ_H
#define TD_FUZZ_DATAFUZZ_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include "datafile.h"
#include "dataset.h"
#include "error.h"
#include "hostile.h"
#include "jobspec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FD_SEP "@@LABELS@@"
#define FD_HEAD 5                           /* mode, elements, classes, limit */
#define FD_BUDGET ((uint64_t)64 << 20)      /* decoded bytes a run may hold */
#define FD_INDEX_BYTES ((uint64_t)64 << 20) /* for the scan: the loader's budget / 16 */
#define FD_BLOCK 1000                       /* bytes per deflate block we write */
#define FD_SPACING 256                      /* access points, where the loader has 1 MiB */

/* What a target says about its format. */
typedef struct fd_format {
  const char *name;   /* data.format */
  int has_labels;     /* a separate labels file (idx, npy) */
  size_t ncfg;        /* configuration bytes after the head */
  /* The format's own keys of the data section ("  csv: {...}\n"), from
   * the mode's bits 5-7 and the configuration bytes; "" for none. */
  void (*keys)(char *buf, size_t cap, unsigned choice, const uint8_t *cfg, uint32_t elems);
  /* The loss, from the same bits (", loss: {kind: mse}"), so that float
   * targets are read too; NULL: the default, class integers. */
  const char *(*loss)(unsigned choice);
  /* Anything else the format's own reader offers (idx: td_idx_load). */
  void (*extra)(const char *images, const char *labels, uint64_t limit);
} fd_format;

typedef struct fd_file {
  int fd;
  char path[64];
  uint64_t data_bytes; /* its data once decompressed; UINT64_MAX: not known */
  uint64_t lines;      /* newlines + 1 in that data */
} fd_file;

static uint8_t fd_zbuf[1 << 20];

static void fd_fail(const char *what, int rc, const char *err) {
  fprintf(stderr, "datafuzz: %s: rc %d (%s): %s\n", what, rc, td_err_name(rc), err);
  abort();
}

/* TD_FUZZ_VERBOSE=1 says what became of each input: to check that seeds
 * get as far as they should. */
static int fd_verbose(void) {
  static int v = -1;

  if (v < 0)
    v = getenv("TD_FUZZ_VERBOSE") != NULL;
  return v;
}

/* A refusal is bad data or no memory, with one printable line saying why. */
static void fd_check_refusal(const char *what, int rc, const char *err) {
  if ((rc != TD_EDATA && rc != TD_ENOMEM) || err[0] == '\0' || !th_printable_line(err))
    fd_fail(what, rc, err);
  if (fd_verbose())
    fprintf(stderr, "datafuzz: %s refused: %s\n", what, err);
}

static void fd_open(fd_file *f, const char *name) {
  if (f->fd > 0)
    return;
  f->fd = memfd_create(name, MFD_CLOEXEC);
  if (f->fd < 0)
    abort();
  snprintf(f->path, sizeof(f->path), "/proc/self/fd/%d", f->fd);
}

static size_t fd_gzip(const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  z_stream zs;
  size_t got;

  memset(&zs, 0, sizeof(zs));
  if (deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    abort();
  zs.next_in = (Bytef *)(uintptr_t)in;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  /* A deflate block per FD_BLOCK bytes: access points go at block ends. */
  for (size_t done = 0;; done += FD_BLOCK) {
    size_t k = n - done < FD_BLOCK ? n - done : FD_BLOCK;
    int last = done + k == n;
    zs.avail_in = (uInt)k;
    if (deflate(&zs, last ? Z_FINISH : Z_BLOCK) != (last ? Z_STREAM_END : Z_OK))
      abort();
    if (last)
      break;
  }
  got = cap - zs.avail_out;
  deflateEnd(&zs);
  return got;
}

/* Write the file's data, stored as enc says. */
static void fd_write(fd_file *f, const uint8_t *p, size_t n, unsigned enc) {
  const uint8_t *out = p;
  size_t len = n;

  f->data_bytes = n;
  f->lines = 1;
  for (size_t i = 0; i < n; i++)
    f->lines += p[i] == '\n';
  if (enc == 1 || enc == 2) {
    size_t half = enc == 2 ? n / 2 : n;
    len = fd_gzip(p, half, fd_zbuf, sizeof(fd_zbuf));
    if (enc == 2)
      len += fd_gzip(p + half, n - half, fd_zbuf + len, sizeof(fd_zbuf) - len);
    out = fd_zbuf;
  } else if (n >= 2 && p[0] == 0x1f && p[1] == 0x8b) {
    f->data_bytes = UINT64_MAX; /* gzip already: its size is the reader's to find */
    f->lines = UINT64_MAX;
  }
  if (ftruncate(f->fd, 0) < 0 || (len > 0 && pwrite(f->fd, out, len, 0) != (ssize_t)len))
    abort();
}

/* Decode the train split as the loader does; in streaming mode read
 * ranges after a scan and compare them with the whole load. */
static void fd_load(const td_jobspec *spec, const fd_file *images, int streaming) {
  uint32_t classes = td_jobspec_classes(spec);
  uint8_t *samples = NULL, *labels = NULL, *x = NULL, *y = NULL;
  size_t tb = 4;
  uint64_t count, sb;
  int scanned = 0, rc;
  char err[512] = "";
  td_split *s;

  if ((rc = td_split_open(spec, TD_SPLIT_TRAIN, &s, err, sizeof(err))) < 0) {
    fd_check_refusal("td_split_open", rc, err);
    return;
  }
  sb = td_split_sample_bytes(s);
  if (td_split_count(s) == UINT64_MAX || streaming) {
    if ((rc = td_split_scan(s, streaming ? FD_INDEX_BYTES : 0, err, sizeof(err))) < 0) {
      fd_check_refusal("td_split_scan", rc, err);
      goto close_split;
    }
    scanned = 1;
  }
  count = td_split_count(s);
  /* More than the budget: the loader streams, so it scans first. */
  if (!scanned && count * (sb + 1) > FD_BUDGET) {
    if ((rc = td_split_scan(s, FD_INDEX_BYTES, err, sizeof(err))) < 0) {
      fd_check_refusal("td_split_scan", rc, err);
      goto close_split;
    }
    scanned = 1;
    count = td_split_count(s);
  }
  /* A count the reader accepted after checking the file is one the data
   * holds: a size is refused, never trusted and allocated. */
  if (scanned || !td_split_needs_scan(s, 1)) {
    if (count > images->data_bytes || (spec->format == TD_DATA_CSV && count > images->lines))
      fd_fail("accepted more samples than the data holds", 0, "");
    if (spec->format != TD_DATA_CSV && images->data_bytes != UINT64_MAX &&
        count * sb > images->data_bytes)
      fd_fail("accepted more sample bytes than the data holds", 0, "");
  }
  if (count * (sb + 1) > FD_BUDGET)
    goto close_split; /* a gzip bomb of the size fuzzing makes: not worth decoding */
  samples = malloc(count * sb + 1);
  tb = td_target_bytes(td_split_target(s));
  labels = malloc(count * tb + 1);
  if (samples == NULL || labels == NULL)
    abort();
  if ((rc = td_split_load(s, samples, labels, classes, 1, err, sizeof(err))) < 0) {
    fd_check_refusal("td_split_load", rc, err);
    goto close_split;
  }
  if (count > images->data_bytes)
    fd_fail("loaded more samples than the data holds", 0, "");
  if (fd_verbose())
    fprintf(stderr, "datafuzz: loaded %llu samples of %llu bytes\n", (unsigned long long)count,
            (unsigned long long)sb);
  for (uint64_t i = 0; i < count && td_split_target(s).dtype == TD_DTYPE_I32; i++) {
    int32_t v;
    memcpy(&v, labels + 4 * i, 4);
    if (v < 0 || (uint32_t)v >= classes)
      fd_fail("loaded a label the model does not have", 0, "");
  }
  if (td_split_dtype(s) == TD_DTYPE_F32)
    for (uint64_t i = 0; i < count * sb / 4; i++) {
      float v;
      memcpy(&v, samples + 4 * i, 4);
      if (!isfinite(v))
        fd_fail("loaded a non-finite float", 0, "");
    }
  if (streaming && count > 0) {
    const uint64_t firsts[] = {0, count / 2, count - 1};
    uint64_t min = td_split_min_read(s);

    if (min < 1)
      fd_fail("td_split_min_read is 0", 0, "");
    x = malloc(3 * sb + 1);
    y = malloc(3 * tb);
    if (x == NULL || y == NULL)
      abort();
    for (size_t k = 0; k < sizeof(firsts) / sizeof(firsts[0]); k++) {
      uint64_t first = firsts[k], n = count - first < 3 ? count - first : 3;
      if ((rc = td_split_read(s, first, n, x, y, classes, err, sizeof(err))) < 0)
        fd_fail("td_split_read after a good load", rc, err);
      if (memcmp(x, samples + first * sb, n * sb) != 0 || memcmp(y, labels + first * tb, n * tb) != 0)
        fd_fail("td_split_read differs from td_split_load", 0, "");
    }
  }
  {
    char key[1024];
    (void)td_split_cache_key(s, key, sizeof(key));
  }

close_split:
  free(x);
  free(y);
  free(samples);
  free(labels);
  td_split_close(s);
}

/* Random access into a gzip file: with access points every FD_SPACING
 * bytes (at most 8, so they thin out), a cursor from anywhere reads what a
 * cursor from the start reads. */
static void fd_access_points(const char *path) {
  static const uint64_t at[] = {1, 255, 256, 1000, 1001, 3000, 9999};
  uint8_t *whole = NULL, part[512];
  char err[512] = "";
  td_dfile *f;
  td_dcur *c;
  uint64_t size;
  int rc;

  if (td_dfile_open(path, &f, err, sizeof(err)) < 0)
    abort();
  if (!td_dfile_is_gzip(f))
    goto close_file;
  if ((rc = td_dfile_scan(f, FD_SPACING, 8, NULL, NULL, err, sizeof(err))) < 0) {
    fd_check_refusal("td_dfile_scan", rc, err);
    goto close_file;
  }
  size = td_dfile_size(f);
  if (fd_verbose())
    fprintf(stderr, "datafuzz: %llu bytes of gzip data, %llu bytes of access points\n",
            (unsigned long long)size, (unsigned long long)td_dfile_index_bytes(f));
  if (size > FD_BUDGET || (whole = malloc(size + 1)) == NULL)
    goto close_file;
  if ((rc = td_dcur_open(f, 0, &c, err, sizeof(err))) < 0 ||
      (rc = td_dcur_read_full(c, whole, (size_t)size, "the data")) < 0)
    fd_fail("reading a gzip file from its start after a good scan", rc, err);
  td_dcur_close(c);
  for (size_t i = 0; i < sizeof(at) / sizeof(at[0]) + 1; i++) {
    uint64_t off = i < sizeof(at) / sizeof(at[0]) ? at[i] : size - 1;
    size_t n = size - off < sizeof(part) ? (size_t)(size - off) : sizeof(part);
    if (off >= size)
      continue;
    if ((rc = td_dcur_open(f, off, &c, err, sizeof(err))) < 0 ||
        (rc = td_dcur_read_full(c, part, n, "the data")) < 0)
      fd_fail("reading a gzip file from an offset after a good scan", rc, err);
    if (memcmp(part, whole + off, n) != 0)
      fd_fail("a read from an access point differs", 0, "");
    td_dcur_close(c);
  }

close_file:
  free(whole);
  td_dfile_close(f);
}

static int fd_run(const fd_format *fmt, const uint8_t *data, size_t size) {
  static fd_file images, labels;
  char keys[512], job[4096], err[512] = "";
  const uint8_t *cfg, *payload, *sep = NULL;
  size_t plen, nimages;
  unsigned mode;
  uint32_t elems, classes, limit;
  td_jobspec spec;
  td_dataset_info info;
  int rc, n;

  if (size < FD_HEAD + fmt->ncfg)
    return 0;
  fd_open(&images, "images");
  fd_open(&labels, "labels");
  mode = data[0];
  elems = (uint32_t)data[1] | (uint32_t)data[2] << 8;
  elems = elems == 0 ? 1 : elems;
  classes = (uint32_t)data[3] + 1;
  limit = data[4];
  cfg = data + FD_HEAD;
  payload = cfg + fmt->ncfg;
  plen = size - FD_HEAD - fmt->ncfg;
  if (fmt->has_labels)
    sep = memmem(payload, plen, FD_SEP, strlen(FD_SEP));
  nimages = sep != NULL ? (size_t)(sep - payload) : plen;
  fd_write(&images, payload, nimages, mode & 3);
  if (fmt->has_labels) {
    size_t skip = sep != NULL ? nimages + strlen(FD_SEP) : plen;
    fd_write(&labels, payload + skip, plen - skip, (mode >> 2) & 3);
  }

  fmt->keys(keys, sizeof(keys), (mode >> 5) & 7, cfg, elems);
  n = snprintf(job, sizeof(job),
               "name: fuzz\n"
               "model: {input: [%u], layers: [{type: dense, units: %u}]}\n"
               "data:\n"
               "  format: %s\n"
               "  train: {images: %s%s%s, limit: %u}\n"
               "  test: {images: %s%s%s}\n"
               "%s"
               "train: {batch_size: 1, epochs: 1, optimizer: {type: sgd, lr: 0.1}%s}\n",
               elems, classes, fmt->name, images.path, fmt->has_labels ? ", labels: " : "",
               fmt->has_labels ? labels.path : "", limit, images.path,
               fmt->has_labels ? ", labels: " : "", fmt->has_labels ? labels.path : "", keys,
               fmt->loss != NULL ? fmt->loss((mode >> 5) & 7) : "");
  if (n < 0 || (size_t)n >= sizeof(job))
    abort();
  if (td_jobspec_parse(job, (size_t)n, NULL, &spec, err, sizeof(err)) < 0) {
    if (fd_verbose())
      fprintf(stderr, "datafuzz: job refused: %s\n", err);
    return 0; /* a configuration traind would refuse at submit */
  }

  /* Submit: the check and the probe, as traind runs them. */
  if ((rc = td_dataset_check(&spec, err, sizeof(err))) < 0)
    fd_check_refusal("td_dataset_check", rc, err);
  if ((rc = td_dataset_probe(&spec, &info, err, sizeof(err))) < 0) {
    fd_check_refusal("td_dataset_probe", rc, err);
  } else if (info.sample_bytes != elems * td_dtype_size(info.dtype)) {
    fd_fail("td_dataset_probe's sample_bytes", 0, "");
  }
  /* The loader: decode it all. */
  fd_load(&spec, &images, (mode >> 4) & 1);
  if ((mode >> 4) & 1)
    fd_access_points(images.path);
  if (fmt->extra != NULL)
    fmt->extra(images.path, labels.path, limit);
  return 0;
}

#endif
