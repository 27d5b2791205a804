/* Fixed-size records: what the formats whose samples and labels sit at
 * fixed places (idx, npy, raw) share.  A split's samples and labels are
 * fields of records, in one file or in two.  Samples stored as int64 or
 * float64 (npy) are converted to int32 or float32 as each block of records
 * is read, whether the reader streams ranges or loads a whole file, so the
 * loader, its cache and the worker only ever see the narrower type; so are
 * labels, to the job's targets (convert_labels).
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset_impl.h"
#include "error.h"

#define READ_BLOCK ((uint64_t)1 << 20) /* bytes of records read at once */
#define CHECK_LABEL_BYTES ((uint64_t)1 << 20)

/* A plain file must be exactly as long as its header says. */
int td__records_check_plain_size(const td__field *fd, uint64_t records, const char *what,
                                 char *err, size_t errlen) {
  uint64_t want = fd->off + records * fd->rec, have;

  if (td_dfile_is_gzip(fd->f))
    return 0;
  have = (uint64_t)td_dfile_stat(fd->f)->st_size;
  if (have < want)
    return td_data_errf(err, errlen, td_dfile_path(fd->f), "truncated at offset %llu: "
                        "expected %llu bytes (%llu %s of %llu bytes after a %llu-byte header), "
                        "got %llu", (unsigned long long)have, (unsigned long long)want,
                        (unsigned long long)records, what, (unsigned long long)fd->rec,
                        (unsigned long long)fd->off, (unsigned long long)have);
  if (have > want)
    return td_data_errf(err, errlen, td_dfile_path(fd->f), "trailing data at offset %llu: "
                        "expected the end of the file after %llu %s, got %llu more bytes",
                        (unsigned long long)want, (unsigned long long)records, what,
                        (unsigned long long)(have - want));
  return 0;
}

int td__records_open_file(const char *path, td_dfile **f, td_dcur **c, char *err,
                          size_t errlen) {
  int rc;

  if ((rc = td_dfile_open(path, f, err, errlen)) < 0)
    return rc;
  return td_dcur_open(*f, 0, c, err, errlen);
}

int td__records_needs_scan(const td_split *s, int random_access) {
  return random_access && !s->scanned &&
         (td_dfile_is_gzip(s->sf) || (s->lf != NULL && td_dfile_is_gzip(s->lf)));
}

/* A gzip file's size, learnt by the scan, must match its header. */
static int check_scanned_size(const td__field *fd, uint64_t records, char *err,
                              size_t errlen) {
  uint64_t want = fd->off + records * fd->rec, have = td_dfile_size(fd->f);

  if (have == want)
    return 0;
  return td_data_errf(err, errlen, td_dfile_path(fd->f), "%s at offset %llu: expected %llu "
                      "bytes of data (%llu records of %llu bytes after %llu header bytes), "
                      "got %llu", have < want ? "truncated" : "trailing data",
                      (unsigned long long)(have < want ? have : want),
                      (unsigned long long)want, (unsigned long long)records,
                      (unsigned long long)fd->rec, (unsigned long long)fd->off,
                      (unsigned long long)have);
}

int td__records_scan(td_split *s, uint32_t max_points, char *err, size_t errlen) {
  int rc;

  if (td_dfile_is_gzip(s->sf)) {
    if (s->lf != NULL && td_dfile_is_gzip(s->lf))
      max_points /= 2;
    if ((rc = td_dfile_scan(s->sf, max_points > 0 ? TD__SCAN_SPACING : 0, max_points, NULL,
                            NULL, err, errlen)) < 0)
      return rc;
    if ((rc = check_scanned_size(&s->samp, s->records, err, errlen)) < 0)
      return rc;
  }
  if (s->lf != NULL && td_dfile_is_gzip(s->lf)) {
    if ((rc = td_dfile_scan(s->lf, max_points > 0 ? TD__SCAN_SPACING : 0, max_points, NULL,
                            NULL, err, errlen)) < 0)
      return rc;
    return check_scanned_size(&s->lab, s->records, err, errlen);
  }
  return 0;
}

void td__records_read_cost(const td_split *s, uint64_t *gap, uint64_t *per) {
  const td__field *fds[] = {&s->samp, &s->lab};

  *gap = *per = 0;
  for (int i = 0; i < 2; i++) {
    uint64_t g;

    if (i == 1 && s->lab.f == s->samp.f)
      break;
    g = td_dfile_max_gap(fds[i]->f);
    *gap += g == UINT64_MAX ? 0 : g;
    *per += fds[i]->rec;
  }
}

/* Stored labels (little-endian) to the job's targets: class ids (u8, i32
 * or i64) to int32 below classes, float targets (f32 or f64, width per
 * record) to finite float32.  raw and out may be the same memory when the
 * stored label is as wide as the target. */
static int convert_labels(const td_split *s, const uint8_t *raw, uint64_t n, uint64_t first,
                          void *out, uint32_t classes, char *err, size_t errlen) {
  const char *path = td_dfile_path(s->lab.f);
  uint32_t w = s->target.width;

  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *p = raw + i * s->lab.bytes;
    long long v;

    if (s->target.dtype == TD_DTYPE_F32) {
      for (uint32_t k = 0; k < w; k++) {
        float f;

        if (s->label_dtype == TD_DTYPE_F64) {
          double d;

          memcpy(&d, p + (size_t)k * 8, sizeof(d));
          f = (float)d;
        } else {
          memcpy(&f, p + (size_t)k * 4, sizeof(f));
        }
        if (!isfinite(f))
          return td_data_errf(err, errlen, path, "target %u of sample %llu at offset %llu: "
                              "expected a finite float32, got %g", k,
                              (unsigned long long)(first + i),
                              (unsigned long long)(s->lab.off + (first + i) * s->lab.rec +
                                                   s->lab.at),
                              (double)f);
        ((float *)out)[i * w + k] = f;
      }
      continue;
    }
    switch (s->label_dtype) {
    case TD_DTYPE_U8: v = p[0]; break;
    case TD_DTYPE_I32:
      v = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                    (uint32_t)p[3] << 24);
      break;
    default: {
      uint64_t u = 0;
      for (int k = 7; k >= 0; k--)
        u = u << 8 | p[k];
      v = (long long)u;
    }
    }
    if (v < 0 || v >= (long long)classes)
      return td__label_fail(path, first + i, v, classes, err, errlen);
    ((int32_t *)out)[i] = (int32_t)v;
  }
  return 0;
}

/* Where a value of sample `first + i / elems` element `i % elems` sits. */
static uint64_t sample_offset(const td_split *s, uint64_t first, uint64_t i) {
  return s->samp.off + (first + i / s->elems) * s->samp.rec + s->samp.at +
         (i % s->elems) * td_dtype_size(s->stored);
}

/* Floats must be finite: a NaN would train nothing and say nothing. */
static int check_finite(const td_split *s, const uint8_t *samples, uint64_t n, uint64_t first,
                        char *err, size_t errlen) {
  uint64_t elems = n * s->elems, i;
  const char *bad = NULL;

  if (s->dtype == TD_DTYPE_F32) {
    for (i = 0; i < elems && bad == NULL; i++) {
      float v;
      memcpy(&v, samples + 4 * i, 4);
      if (!isfinite(v))
        bad = isnan(v) ? "NaN" : "infinity";
    }
  } else if (s->dtype == TD_DTYPE_F16) {
    for (i = 0; i < elems && bad == NULL; i++) {
      unsigned h = samples[2 * i] | (unsigned)samples[2 * i + 1] << 8;
      if ((h & 0x7c00) == 0x7c00)
        bad = (h & 0x3ff) ? "NaN" : "infinity";
    }
  }
  if (bad == NULL)
    return 0;
  i--;
  return td_data_errf(err, errlen, td_dfile_path(s->sf), "sample %llu element %llu at offset "
                      "%llu: expected a finite number, got %s",
                      (unsigned long long)(first + i / s->elems),
                      (unsigned long long)(i % s->elems),
                      (unsigned long long)sample_offset(s, first, i), bad);
}

/* float64 to float32 as C's cast rounds (to nearest); what float32 cannot
 * hold (NaN, infinity, beyond FLT_MAX once rounded) makes bad, which the
 * caller turns into an error: one loop without a branch, so it vectorises. */
static int f64_to_f32(const uint8_t *src, uint8_t *dst, uint32_t n) {
  int bad = 0;

  for (uint32_t i = 0; i < n; i++) {
    double d;
    float f;
    memcpy(&d, src + 8 * (size_t)i, 8);
    f = (float)d;
    bad |= !(fabsf(f) <= FLT_MAX);
    memcpy(dst + 4 * (size_t)i, &f, 4);
  }
  return bad;
}

static int i64_to_i32(const uint8_t *src, uint8_t *dst, uint32_t n) {
  int bad = 0;

  for (uint32_t i = 0; i < n; i++) {
    int64_t v;
    int32_t o;
    memcpy(&v, src + 8 * (size_t)i, 8);
    bad |= v < INT32_MIN || v > INT32_MAX;
    o = (int32_t)v;
    memcpy(dst + 4 * (size_t)i, &o, 4);
  }
  return bad;
}

typedef int (*convert_fn)(const uint8_t *src, uint8_t *dst, uint32_t n);

/* The first value of a sample that its conversion refused. */
static int convert_fail(const td_split *s, convert_fn conv, const uint8_t *src, uint64_t index,
                        char *err, size_t errlen) {
  const char *path = td_dfile_path(s->sf);
  uint32_t e;

  for (e = 0; e + 1 < s->elems; e++) {
    uint8_t one[4];
    if (conv(src + 8 * (size_t)e, one, 1))
      break;
  }
  if (s->stored == TD_DTYPE_I64) {
    int64_t v;
    memcpy(&v, src + 8 * (size_t)e, 8);
    return td_data_errf(err, errlen, path, "sample %llu element %u at offset %llu: expected an "
                        "int64 value that fits int32 (int64 samples are read as int32), got "
                        "%lld (save the features with .astype('<f4') if they are not indices)",
                        (unsigned long long)index, e,
                        (unsigned long long)sample_offset(s, index, e), (long long)v);
  } else {
    double d;
    memcpy(&d, src + 8 * (size_t)e, 8);
    if (isnan(d) || isinf(d))
      return td_data_errf(err, errlen, path, "sample %llu element %u at offset %llu: expected "
                          "a finite number, got %s", (unsigned long long)index, e,
                          (unsigned long long)sample_offset(s, index, e),
                          isnan(d) ? "NaN" : "infinity");
    return td_data_errf(err, errlen, path, "sample %llu element %u at offset %llu: expected a "
                        "float64 value that fits float32 (float64 samples are read as float32, "
                        "|x| <= %g), got %g", (unsigned long long)index, e,
                        (unsigned long long)sample_offset(s, index, e), (double)FLT_MAX, d);
  }
}

/* k records' samples, stride apart in src, converted from s->stored to
 * s->dtype into dst, sample_bytes apart: the first is sample `first`. */
static int convert_samples(const td_split *s, const uint8_t *src, uint64_t stride, uint64_t k,
                           uint64_t first, uint8_t *dst, char *err, size_t errlen) {
  convert_fn conv = s->stored == TD_DTYPE_F64 ? f64_to_f32 : i64_to_i32;

  for (uint64_t j = 0; j < k; j++)
    if (conv(src + j * stride, dst + j * s->sample_bytes, s->elems))
      return convert_fail(s, conv, src + j * stride, first + j, err, errlen);
  return 0;
}

/* Records [first, first + n) of one file, each wanted field copied out
 * (dst NULL: not wanted), or converted where conv names the split (its
 * samples, stored as int64 or float64).  The file must hold them. */
struct want {
  const td__field *fd;
  uint8_t *dst;
  const td_split *conv;
};

/* total > 0: the file holds total records, and after reading these the
 * rest is read too, to its end (a gzip stream's CRC is checked there). */
static int read_records(td_dfile *f, const struct want *w, int nw, uint64_t first, uint64_t n,
                        uint64_t total, char *err, size_t errlen) {
  const td__field *fd = w[0].fd;
  uint64_t rec = fd->rec, at = fd->off + first * rec, per;
  uint8_t *bounce = NULL;
  td_dcur *c;
  size_t got;
  int rc;

  if ((rc = td_dcur_open(f, at, &c, err, errlen)) < 0)
    return rc;
  if (nw == 1 && fd->at == 0 && fd->bytes == rec && w[0].conv == NULL) {
    if ((rc = td_dcur_read(c, w[0].dst, (size_t)(n * rec), &got)) < 0)
      goto close_cur;
    if (got < n * rec)
      goto truncated;
    goto check_rest;
  }
  per = READ_BLOCK / rec > 0 ? READ_BLOCK / rec : 1;
  if (per > n)
    per = n;
  bounce = malloc((size_t)(per * rec));
  if (bounce == NULL) {
    rc = TD_ENOMEM;
    goto close_cur;
  }
  for (uint64_t done = 0; done < n; done += per) {
    uint64_t k = n - done < per ? n - done : per;
    if ((rc = td_dcur_read(c, bounce, (size_t)(k * rec), &got)) < 0)
      goto close_cur;
    if (got < k * rec)
      goto truncated;
    for (int i = 0; i < nw; i++) {
      if (w[i].conv != NULL) {
        if ((rc = convert_samples(w[i].conv, bounce + w[i].fd->at, rec, k, first + done,
                                  w[i].dst + done * w[i].conv->sample_bytes, err, errlen)) < 0)
          goto close_cur;
        continue;
      }
      for (uint64_t j = 0; j < k; j++)
        memcpy(w[i].dst + (done + j) * w[i].fd->bytes, bounce + j * rec + w[i].fd->at,
               (size_t)w[i].fd->bytes);
    }
  }

check_rest:
  if (total > 0) {
    /* The other records must be there, and nothing after them. */
    uint64_t skip = (total - first - n) * rec, skipped;
    if ((rc = td_dcur_skip(c, skip, &skipped)) < 0)
      goto close_cur;
    if (skipped < skip)
      goto truncated;
    rc = td_dcur_expect_end(c);
  }
  goto close_cur;

truncated:
  rc = td_data_errf(err, errlen, td_dfile_path(f), "truncated at offset %llu: expected %llu "
                    "records of %llu bytes from offset %llu, got the end of the file",
                    (unsigned long long)td_dcur_offset(c),
                    (unsigned long long)(total > 0 ? total : first + n), (unsigned long long)rec,
                    (unsigned long long)fd->off);
close_cur:
  free(bounce);
  td_dcur_close(c);
  return rc;
}

/* whole: read from the start to the end of the files, checking them. */
static int read_fixed(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, void *labels,
                      uint32_t classes, int whole, char *err, size_t errlen) {
  uint64_t total = whole ? s->records : 0;
  uint8_t *lraw = NULL;
  struct want w[2];
  int nw = 0, rc = 0;

  if (labels != NULL) {
    /* converted in place when the stored label is as wide as the target */
    lraw = s->lab.bytes == td_target_bytes(s->target) ? labels
                                                      : malloc((size_t)(n * s->lab.bytes));
    if (lraw == NULL)
      return TD_ENOMEM;
  }
  if (samples != NULL)
    w[nw++] = (struct want){&s->samp, samples, s->stored != s->dtype ? s : NULL};
  if (lraw != NULL && s->lab.f == s->sf)
    w[nw++] = (struct want){&s->lab, lraw, NULL};
  if (nw > 0)
    rc = read_records(s->sf, w, nw, first, n, total, err, errlen);
  if (rc == 0 && lraw != NULL && s->lab.f != s->sf) {
    w[0] = (struct want){&s->lab, lraw, NULL};
    rc = read_records(s->lab.f, w, 1, first, n, total, err, errlen);
  }
  if (rc == 0 && lraw != NULL)
    rc = convert_labels(s, lraw, n, first, labels, classes, err, errlen);
  if (rc == 0 && samples != NULL && s->stored == s->dtype) /* converted: checked then */
    rc = check_finite(s, samples, n, first, err, errlen);
  if ((void *)lraw != labels)
    free(lraw);
  return rc;
}

int td__records_read(td_split *s, uint64_t first, uint64_t n, uint8_t *samples,
                     void *labels, uint32_t classes, char *err, size_t errlen) {
  return read_fixed(s, first, n, samples, labels, classes, 0, err, errlen);
}

/* gzip: one task per file, each decoding it front to back (and checking
 * it to its end). */
int td__records_load_file(td_split *s, int k, uint8_t *samples, void *labels,
                          uint32_t classes, char *err, size_t errlen) {
  return read_fixed(s, 0, s->count, k == 0 ? samples : NULL,
                    k == 1 || s->lab.f == s->sf ? labels : NULL, classes, s->fmt->load_to_end,
                    err, errlen);
}

/* The labels of the first MiB of records. */
int td__records_check_labels(td_split *s, uint32_t classes, char *err, size_t errlen) {
  uint64_t n;
  void *labels;
  int rc;

  if (s->count == UINT64_MAX)
    return 0; /* compressed raw: its size is unknown until decoded */
  n = CHECK_LABEL_BYTES / s->lab.rec;
  n = n < 1 ? 1 : n > s->count ? s->count : n;
  labels = malloc((size_t)n * td_target_bytes(s->target));
  if (labels == NULL)
    return TD_ENOMEM;
  rc = td_split_read(s, 0, n, NULL, labels, classes, err, errlen);
  free(labels);
  return rc;
}
