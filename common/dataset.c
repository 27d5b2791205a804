#include "dataset.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "csvdata.h"
#include "datafile.h"
#include "error.h"
#include "idx.h"
#include "npy.h"
#include "util.h"

#define CSV_STRIDE 1024u               /* lines between two noted offsets */
#define CSV_MAX_LINE ((size_t)16 << 20)
#define CSV_FIRST_BUF ((size_t)256 << 10)
#define READ_BLOCK ((uint64_t)1 << 20) /* bytes of records read at once */
#define CHECK_CSV_BYTES ((uint64_t)64 << 10)
#define CHECK_LABEL_BYTES ((uint64_t)1 << 20)
#define SCAN_SPACING ((uint64_t)1 << 20)
#define LOAD_TASK_BYTES ((uint64_t)4 << 20)
#define ERRLEN 512

/* One fixed-size field (the sample, or the label) of fixed-size records. */
struct field {
  td_dfile *f;
  uint64_t off;   /* the first record's offset in the data */
  uint64_t rec;   /* bytes per record */
  uint64_t at;    /* the field's offset in a record */
  uint64_t bytes; /* the field's size */
};

struct td_split {
  td_split_which which;
  td_data_format format;
  uint64_t limit;   /* 0 = all */
  uint32_t elems;
  td_dtype dtype;
  uint32_t sample_bytes;
  uint64_t records; /* in the file; UINT64_MAX until known */
  uint64_t count;
  td_dfile *sf, *lf; /* samples; a separate labels file (idx, npy) */
  struct field samp, lab;
  td_dtype label_dtype;
  td_csv_fmt csv;
  int header;
  uint64_t *line_off; /* data offset of record k * CSV_STRIDE */
  uint64_t nline_off;
  int scanned;        /* gzip access points made, sizes checked */
  char params[128];   /* the format's keys, for the cache key */
};

static const char *const split_names[] = {"train", "test"};

const char *td_split_name(const td_split *s) { return split_names[s->which]; }
const char *td_split_path(const td_split *s) { return td_dfile_path(s->sf); }
td_dtype td_split_dtype(const td_split *s) { return s->dtype; }
uint32_t td_split_sample_bytes(const td_split *s) { return s->sample_bytes; }
uint64_t td_split_count(const td_split *s) { return s->count; }

static void set_records(td_split *s, uint64_t records) {
  s->records = records;
  s->count = s->limit > 0 && s->limit < records ? s->limit : records;
}

/* A plain file must be exactly as long as its header says. */
static int check_plain_size(const struct field *fd, uint64_t records, const char *what,
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

static int open_file(const char *path, td_dfile **f, td_dcur **c, char *err, size_t errlen) {
  int rc;

  if ((rc = td_dfile_open(path, f, err, errlen)) < 0)
    return rc;
  return td_dcur_open(*f, 0, c, err, errlen);
}

static int open_idx(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                    size_t errlen) {
  char want[64], got[64];
  td_dcur *c = NULL;
  td_idx_hdr h, hl;
  int rc;

  if ((rc = open_file(ds->images, &s->sf, &c, err, errlen)) < 0 ||
      (rc = td_idx_read_header(c, ds->images, 0, &h, err, errlen)) < 0)
    goto close_cur;
  td_dcur_close(c);
  c = NULL;
  if (h.item_bytes != s->elems) {
    td_dims_str(spec->input_dims, spec->input_rank, want, sizeof(want));
    td_dims_str(h.dims + 1, h.rank - 1, got, sizeof(got));
    rc = td_data_errf(err, errlen, ds->images, "each image has %llu bytes at offset 8, but "
                      "the model's input has %u elements: expected %s, got %s",
                      (unsigned long long)h.item_bytes, s->elems, want,
                      h.rank > 1 ? got : "scalars");
    goto close_cur;
  }
  if ((rc = open_file(ds->labels, &s->lf, &c, err, errlen)) < 0 ||
      (rc = td_idx_read_header(c, ds->labels, 0, &hl, err, errlen)) < 0)
    goto close_cur;
  if (hl.item_bytes != 1) {
    td_dims_str(hl.dims, hl.rank, got, sizeof(got));
    rc = td_data_errf(err, errlen, ds->labels, "label shape at offset 4: expected one label "
                      "byte per sample (rank 1), got %s", got);
    goto close_cur;
  }
  if (hl.dims[0] != h.dims[0]) {
    rc = td_data_errf(err, errlen, ds->labels, "%u labels at offset 4, but %u images: "
                      "expected one label per image of %s", hl.dims[0], h.dims[0], ds->images);
    goto close_cur;
  }
  s->dtype = TD_DTYPE_U8;
  s->label_dtype = TD_DTYPE_U8;
  s->samp = (struct field){s->sf, h.data_off, h.item_bytes, 0, h.item_bytes};
  s->lab = (struct field){s->lf, hl.data_off, 1, 0, 1};
  set_records(s, h.dims[0]);
  if ((rc = check_plain_size(&s->samp, s->records, "images", err, errlen)) < 0)
    goto close_cur;
  rc = check_plain_size(&s->lab, s->records, "labels", err, errlen);

close_cur:
  td_dcur_close(c);
  return rc;
}

static int open_npy(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                    size_t errlen) {
  char want[64], shape[160], lshape[160];
  td_dcur *c = NULL;
  td_npy_hdr h, hl;
  size_t lsize;
  int rc;

  if ((rc = open_file(ds->images, &s->sf, &c, err, errlen)) < 0 ||
      (rc = td_npy_read_header(c, ds->images, &h, err, errlen)) < 0)
    goto close_cur;
  td_dcur_close(c);
  c = NULL;
  td_npy_shape_str(&h, shape, sizeof(shape));
  td_dims_str(spec->input_dims, spec->input_rank, want, sizeof(want));
  if (h.item_elems != s->elems || h.rank < 2) {
    rc = td_data_errf(err, errlen, ds->images, "shape at offset 10: expected (N, %s) or another "
                      "shape with %u elements per sample (model.input), got %s", want,
                      s->elems, shape);
    goto close_cur;
  }
  if (h.dtype == TD_DTYPE_I64) {
    rc = td_data_errf(err, errlen, ds->images, "dtype at offset 10: expected uint8, int32, "
                      "float16 or float32 samples, got int64");
    goto close_cur;
  }
  if ((rc = open_file(ds->labels, &s->lf, &c, err, errlen)) < 0 ||
      (rc = td_npy_read_header(c, ds->labels, &hl, err, errlen)) < 0)
    goto close_cur;
  td_npy_shape_str(&hl, lshape, sizeof(lshape));
  if (hl.item_elems != 1 || hl.rank > 2) {
    rc = td_data_errf(err, errlen, ds->labels, "shape at offset 10: expected (N,), one label "
                      "per sample, got %s", lshape);
    goto close_cur;
  }
  if (hl.dtype != TD_DTYPE_U8 && hl.dtype != TD_DTYPE_I32 && hl.dtype != TD_DTYPE_I64) {
    rc = td_data_errf(err, errlen, ds->labels, "dtype at offset 10: expected integer labels "
                      "(uint8, int32 or int64), got %s", td_dtype_name(hl.dtype));
    goto close_cur;
  }
  if (hl.shape[0] != h.shape[0]) {
    rc = td_data_errf(err, errlen, ds->labels, "shape at offset 10: expected %llu labels, one "
                      "per sample of %s %s, got %s", (unsigned long long)h.shape[0],
                      ds->images, shape, lshape);
    goto close_cur;
  }
  if (h.shape[0] > TD_DATASET_MAX_SAMPLES) {
    rc = td_data_errf(err, errlen, ds->images, "shape at offset 10: expected at most %u "
                      "samples, got %s", TD_DATASET_MAX_SAMPLES, shape);
    goto close_cur;
  }
  lsize = td_dtype_size(hl.dtype);
  s->dtype = h.dtype;
  s->label_dtype = hl.dtype;
  s->samp = (struct field){s->sf, h.data_off, h.item_elems * td_dtype_size(h.dtype), 0,
                           h.item_elems * td_dtype_size(h.dtype)};
  s->lab = (struct field){s->lf, hl.data_off, lsize, 0, lsize};
  set_records(s, h.shape[0]);
  if ((rc = check_plain_size(&s->samp, s->records, "samples", err, errlen)) < 0)
    goto close_cur;
  rc = check_plain_size(&s->lab, s->records, "labels", err, errlen);

close_cur:
  td_dcur_close(c);
  return rc;
}

/* raw: record count from the size; a partial record is an error. */
static int raw_records(td_split *s, uint64_t size, char *err, size_t errlen) {
  uint64_t hdr = s->samp.off, rec = s->samp.rec, n;

  if (size < hdr)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "truncated at offset %llu: expected "
                        "at least the %llu header bytes (data.raw.header_bytes), got %llu",
                        (unsigned long long)size, (unsigned long long)hdr,
                        (unsigned long long)size);
  n = (size - hdr) / rec;
  if ((size - hdr) % rec != 0)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "truncated record at offset %llu: "
                        "expected whole %llu-byte records (data.raw.record_bytes) after %llu "
                        "header bytes, got %llu records and %llu bytes more",
                        (unsigned long long)(hdr + n * rec), (unsigned long long)rec,
                        (unsigned long long)hdr, (unsigned long long)n,
                        (unsigned long long)((size - hdr) % rec));
  if (n > TD_DATASET_MAX_SAMPLES)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "too many records at offset %llu: "
                        "expected at most %u, got %llu", (unsigned long long)hdr,
                        TD_DATASET_MAX_SAMPLES, (unsigned long long)n);
  set_records(s, n);
  return 0;
}

static int open_raw(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                    size_t errlen) {
  const td_data_raw *r = &spec->raw;
  int rc;

  if ((rc = td_dfile_open(ds->images, &s->sf, err, errlen)) < 0)
    return rc;
  s->dtype = r->dtype;
  s->label_dtype = r->label_dtype;
  s->samp = (struct field){s->sf, r->header_bytes, r->record_bytes, r->sample_offset,
                           (uint64_t)s->elems * td_dtype_size(r->dtype)};
  s->lab = (struct field){s->sf, r->header_bytes, r->record_bytes, r->label_offset,
                          td_dtype_size(r->label_dtype)};
  snprintf(s->params, sizeof(s->params), "raw=%d,%d,%u,%u,%u,%llu", (int)r->dtype,
           (int)r->label_dtype, r->label_offset, r->sample_offset, r->record_bytes,
           (unsigned long long)r->header_bytes);
  if (td_dfile_is_gzip(s->sf))
    return 0; /* the count comes with td_split_scan */
  return raw_records(s, (uint64_t)td_dfile_stat(s->sf)->st_size, err, errlen);
}

/* Lines of a cursor's data, each without its '\n'. */
struct lines {
  td_dcur *c;
  const char *path;
  char *buf;
  size_t cap, len, pos;
  uint64_t base; /* data offset of buf[0] */
  int eof;
};

static int lines_init(struct lines *L, td_dfile *f, uint64_t off, char *err, size_t errlen) {
  memset(L, 0, sizeof(*L));
  L->path = td_dfile_path(f);
  L->base = off;
  L->cap = CSV_FIRST_BUF;
  L->buf = malloc(L->cap);
  if (L->buf == NULL)
    return TD_ENOMEM;
  return td_dcur_open(f, off, &L->c, err, errlen);
}

static void lines_free(struct lines *L) {
  td_dcur_close(L->c);
  free(L->buf);
}

/* The next line: 1, or 0 at the end of the data. */
static int lines_next(struct lines *L, const char **p, size_t *n, uint64_t *off, char *err,
                      size_t errlen) {
  size_t got;
  int rc;

  for (;;) {
    char *start = L->buf + L->pos, *nl = memchr(start, '\n', L->len - L->pos);

    if (nl != NULL || (L->eof && L->pos < L->len)) {
      *p = start;
      *n = nl != NULL ? (size_t)(nl - start) : L->len - L->pos;
      *off = L->base + L->pos;
      L->pos = nl != NULL ? (size_t)(nl + 1 - L->buf) : L->len;
      return 1;
    }
    if (L->eof)
      return 0;
    memmove(L->buf, start, L->len - L->pos);
    L->base += L->pos;
    L->len -= L->pos;
    L->pos = 0;
    if (L->len == L->cap) {
      char *grown;
      if (L->cap >= CSV_MAX_LINE)
        return td_data_errf(err, errlen, L->path, "line at offset %llu too long: expected "
                            "at most %zu bytes, got more", (unsigned long long)L->base,
                            CSV_MAX_LINE);
      grown = realloc(L->buf, 2 * L->cap);
      if (grown == NULL)
        return TD_ENOMEM;
      L->buf = grown;
      L->cap *= 2;
    }
    if ((rc = td_dcur_read(L->c, L->buf + L->len, L->cap - L->len, &got)) < 0)
      return rc;
    L->eof = got < L->cap - L->len;
    L->len += got;
  }
}

static void excerpt(char *dst, size_t cap, const char *p, size_t n) {
  size_t k = n < cap - 4 ? n : cap - 4;

  snprintf(dst, cap, "%.*s%s", (int)k, p, n > k ? "..." : "");
  for (char *q = dst; *q; q++)
    if ((unsigned char)*q < 0x20 || (unsigned char)*q == 0x7f)
      *q = '?';
}

static int open_csv(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                    size_t errlen) {
  struct lines L;
  const char *p;
  char shown[48];
  size_t n;
  uint64_t off;
  uint32_t cols;
  int rc, line = 1;

  if ((rc = td_dfile_open(ds->images, &s->sf, err, errlen)) < 0)
    return rc;
  if ((rc = lines_init(&L, s->sf, 0, err, errlen)) < 0)
    goto free_lines;
  if ((rc = lines_next(&L, &p, &n, &off, err, errlen)) < 0)
    goto free_lines;
  if (rc == 1 && spec->csv.header) {
    line++;
    if ((rc = lines_next(&L, &p, &n, &off, err, errlen)) < 0)
      goto free_lines;
  }
  if (rc == 0) {
    rc = td_data_errf(err, errlen, ds->images, "no samples at offset %llu: expected a line of "
                      "numbers%s, got the end of the file", (unsigned long long)L.base,
                      spec->csv.header ? " after the header line" : "");
    goto free_lines;
  }
  excerpt(shown, sizeof(shown), p, n);
  if (!td_csv_numeric(p, n)) {
    rc = td_data_errf(err, errlen, ds->images, "line %d at offset %llu: expected numbers, "
                      "got '%s'%s", line, (unsigned long long)off, shown,
                      spec->csv.header ? "" : " (if it names the columns, set data.csv.header:"
                                              " true)");
    goto free_lines;
  }
  cols = td_csv_columns(p, n);
  if (cols != s->elems + 1) {
    rc = td_data_errf(err, errlen, ds->images, "line %d at offset %llu: expected %u columns "
                      "(the label and model.input's %u values), got %u", line,
                      (unsigned long long)off, s->elems + 1, s->elems, cols);
    goto free_lines;
  }
  if (spec->csv.label_column >= cols) {
    rc = td_data_errf(err, errlen, ds->images, "line %d at offset %llu: expected a label in "
                      "column %u (data.csv.label_column, from 0), got %u columns", line,
                      (unsigned long long)off, spec->csv.label_column, cols);
    goto free_lines;
  }
  s->csv = (td_csv_fmt){.columns = cols, .label_column = spec->csv.label_column,
                        .dtype = spec->csv.dtype};
  s->header = spec->csv.header;
  s->dtype = spec->csv.dtype;
  snprintf(s->params, sizeof(s->params), "csv=%u,%d,%d", s->csv.label_column, s->header,
           (int)s->dtype);
  rc = 0;

free_lines:
  lines_free(&L);
  return rc;
}

int td_split_open(const td_jobspec *spec, td_split_which which, td_split **out, char *err,
                  size_t errlen) {
  const td_data_split *ds = which == TD_SPLIT_TRAIN ? &spec->train : &spec->test;
  uint64_t elems = td_jobspec_input_elems(spec);
  td_split *s;
  int rc;

  if (elems < 1 || elems > UINT32_MAX / 8) {
    snprintf(err, errlen, "the model's input of %llu elements is out of range",
             (unsigned long long)elems);
    return TD_EINVAL;
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL)
    return TD_ENOMEM;
  s->which = which;
  s->format = spec->format;
  s->limit = ds->limit;
  s->elems = (uint32_t)elems;
  s->records = s->count = UINT64_MAX;
  switch (spec->format) {
  case TD_DATA_IDX: rc = open_idx(s, spec, ds, err, errlen); break;
  case TD_DATA_NPY: rc = open_npy(s, spec, ds, err, errlen); break;
  case TD_DATA_CSV: rc = open_csv(s, spec, ds, err, errlen); break;
  case TD_DATA_RAW: rc = open_raw(s, spec, ds, err, errlen); break;
  default:
    snprintf(err, errlen, "data format %d is unknown", (int)spec->format);
    rc = TD_EINVAL;
  }
  if (rc < 0) {
    td_split_close(s);
    return rc;
  }
  s->sample_bytes = (uint32_t)(s->elems * td_dtype_size(s->dtype));
  if (s->count == 0) {
    td_split_close(s);
    return td_data_errf(err, errlen, ds->images, "no samples at offset 0: expected at least "
                        "one, got none");
  }
  *out = s;
  return 0;
}

void td_split_close(td_split *s) {
  if (s == NULL)
    return;
  td_dfile_close(s->sf);
  td_dfile_close(s->lf);
  free(s->line_off);
  free(s);
}

int td_split_needs_scan(const td_split *s, int random_access) {
  if (s->count == UINT64_MAX)
    return 1;
  if (s->format == TD_DATA_CSV)
    return s->line_off == NULL;
  return random_access && !s->scanned &&
         (td_dfile_is_gzip(s->sf) || (s->lf != NULL && td_dfile_is_gzip(s->lf)));
}

/* CSV scan: count lines and note where every CSV_STRIDE-th record starts. */
struct csv_scan {
  td_split *s;
  uint64_t off;        /* data offset of the next byte */
  uint64_t line_start; /* of the line being read */
  uint64_t lines;      /* complete lines so far, the header included */
  uint64_t want;       /* records to find */
  uint64_t cap;
  char *err;
  size_t errlen;
};

static int csv_note_line(struct csv_scan *cs) {
  td_split *s = cs->s;
  uint64_t rec = cs->lines - (uint64_t)s->header;

  if (cs->lines >= (uint64_t)s->header && rec % CSV_STRIDE == 0) {
    if (s->nline_off == cs->cap) {
      uint64_t cap = cs->cap ? 2 * cs->cap : 64;
      uint64_t *grown = realloc(s->line_off, cap * sizeof(*grown));
      if (grown == NULL)
        return TD_ENOMEM;
      s->line_off = grown;
      cs->cap = cap;
    }
    s->line_off[s->nline_off++] = cs->line_start;
  }
  return 0;
}

static int csv_scan_fn(void *ctx, const uint8_t *data, size_t n) {
  struct csv_scan *cs = ctx;
  const uint8_t *p = data, *end = data + n, *nl;
  int rc;

  while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
    if ((rc = csv_note_line(cs)) < 0)
      return rc;
    cs->lines++;
    p = nl + 1;
    cs->line_start = cs->off + (uint64_t)(p - data);
    if (cs->lines - (uint64_t)cs->s->header >= cs->want && cs->lines >= (uint64_t)cs->s->header)
      return 1;
  }
  cs->off += n;
  if (cs->off - cs->line_start > CSV_MAX_LINE)
    return td_data_errf(cs->err, cs->errlen, td_dfile_path(cs->s->sf), "line %llu at offset "
                        "%llu too long: expected at most %zu bytes, got more",
                        (unsigned long long)cs->lines + 1, (unsigned long long)cs->line_start,
                        CSV_MAX_LINE);
  return 0;
}

static int scan_csv(td_split *s, uint32_t max_points, char *err, size_t errlen) {
  struct csv_scan cs = {.s = s, .want = s->limit > 0 ? s->limit : UINT64_MAX, .err = err,
                        .errlen = errlen};
  uint64_t records;
  int rc;

  free(s->line_off);
  s->line_off = NULL;
  s->nline_off = 0;
  rc = td_dfile_scan(s->sf, td_dfile_is_gzip(s->sf) ? SCAN_SPACING : 0, max_points,
                     csv_scan_fn, &cs, err, errlen);
  if (rc < 0)
    return rc;
  /* An unterminated last line is a line too, unless the scan stopped. */
  if (cs.off > cs.line_start && cs.lines - (uint64_t)s->header < cs.want) {
    if ((rc = csv_note_line(&cs)) < 0)
      return rc;
    cs.lines++;
  }
  records = cs.lines > (uint64_t)s->header ? cs.lines - (uint64_t)s->header : 0;
  if (records == 0)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "no samples at offset %llu: "
                        "expected a line of numbers, got the end of the file",
                        (unsigned long long)cs.off);
  if (records > TD_DATASET_MAX_SAMPLES)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "too many lines: expected at most "
                        "%u samples, got more", TD_DATASET_MAX_SAMPLES);
  set_records(s, records);
  return 0;
}

/* A gzip file's size, learnt by the scan, must match its header. */
static int check_scanned_size(const struct field *fd, uint64_t records, char *err,
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

static int scan_files(td_split *s, uint64_t index_bytes, char *err, size_t errlen);

int td_split_scan(td_split *s, uint64_t index_bytes, char *err, size_t errlen) {
  int rc = scan_files(s, index_bytes, err, errlen);

  s->scanned = rc == 0 && index_bytes > 0;
  return rc;
}

static int scan_files(td_split *s, uint64_t index_bytes, char *err, size_t errlen) {
  uint32_t max_points = (uint32_t)(index_bytes / (TD_DFILE_WINDOW + 64));
  int rc;

  if (s->format == TD_DATA_CSV)
    return scan_csv(s, max_points, err, errlen);
  if (td_dfile_is_gzip(s->sf)) {
    if (s->lf != NULL && td_dfile_is_gzip(s->lf))
      max_points /= 2;
    if ((rc = td_dfile_scan(s->sf, max_points > 0 ? SCAN_SPACING : 0, max_points, NULL, NULL,
                            err, errlen)) < 0)
      return rc;
    if (s->format == TD_DATA_RAW)
      return raw_records(s, td_dfile_size(s->sf), err, errlen);
    if ((rc = check_scanned_size(&s->samp, s->records, err, errlen)) < 0)
      return rc;
  }
  if (s->lf != NULL && td_dfile_is_gzip(s->lf)) {
    if ((rc = td_dfile_scan(s->lf, max_points > 0 ? SCAN_SPACING : 0, max_points, NULL, NULL,
                            err, errlen)) < 0)
      return rc;
    return check_scanned_size(&s->lab, s->records, err, errlen);
  }
  return 0;
}

uint64_t td_split_min_read(const td_split *s) {
  uint64_t gap = 0, per = 0, g;

  if (s->format == TD_DATA_CSV) {
    /* Bytes per line, from the noted offsets (the scan may have stopped at
     * the limit, before the file's end). */
    uint64_t line = s->nline_off > 1
        ? s->line_off[s->nline_off - 1] / ((s->nline_off - 1) * (uint64_t)CSV_STRIDE) + 1
        : 1024;
    g = td_dfile_max_gap(s->sf);
    gap = (g == UINT64_MAX ? 0 : g) + (uint64_t)CSV_STRIDE * line;
    per = line;
  } else {
    const struct field *fds[] = {&s->samp, &s->lab};
    for (int i = 0; i < 2; i++) {
      if (i == 1 && s->lab.f == s->samp.f)
        break;
      g = td_dfile_max_gap(fds[i]->f);
      gap += g == UINT64_MAX ? 0 : g;
      per += fds[i]->rec;
    }
  }
  /* Half a gap wasted on average: n * per >= 4 * gap / 2. */
  return gap == 0 ? 1 : (2 * gap + per - 1) / per;
}

static int label_fail(const char *path, uint64_t index, long long v, uint32_t classes, char *err,
                      size_t errlen) {
  return td_data_errf(err, errlen, path, "label at index %llu is %lld, but the model has %u "
                      "classes (labels 0..%u)", (unsigned long long)index, v, classes,
                      classes - 1);
}

int td_labels_check(const uint8_t *labels, uint64_t n, uint64_t first, uint32_t classes,
                    const char *path, char *err, size_t errlen) {
  if (classes >= 256)
    return 0;
  for (uint64_t i = 0; i < n; i++)
    if (labels[i] >= classes)
      return label_fail(path, first + i, labels[i], classes, err, errlen);
  return 0;
}

/* Stored labels (u8, i32 or i64, little-endian) to bytes below classes. */
static int convert_labels(const td_split *s, const uint8_t *raw, uint64_t n, uint64_t first,
                          uint8_t *out, uint32_t classes, char *err, size_t errlen) {
  const char *path = td_dfile_path(s->lab.f);

  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *p = raw + i * s->lab.bytes;
    long long v;

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
      return label_fail(path, first + i, v, classes, err, errlen);
    out[i] = (uint8_t)v;
  }
  return 0;
}

/* Floats must be finite: a NaN would train nothing and say nothing. */
static int check_finite(const td_split *s, const uint8_t *samples, uint64_t n, uint64_t first,
                        char *err, size_t errlen) {
  uint64_t elems = n * s->elems, size = td_dtype_size(s->dtype), i;
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
                      (unsigned long long)(s->samp.off + (first + i / s->elems) * s->samp.rec +
                                           s->samp.at + (i % s->elems) * size), bad);
}

/* Records [first, first + n) of one file, each wanted field copied out
 * (dst NULL: not wanted).  The file must hold them. */
struct want {
  const struct field *fd;
  uint8_t *dst;
};

/* total > 0: the file holds total records, and after reading these the
 * rest is read too, to its end (a gzip stream's CRC is checked there). */
static int read_records(td_dfile *f, const struct want *w, int nw, uint64_t first, uint64_t n,
                        uint64_t total, char *err, size_t errlen) {
  const struct field *fd = w[0].fd;
  uint64_t rec = fd->rec, at = fd->off + first * rec, per;
  uint8_t *bounce = NULL;
  td_dcur *c;
  size_t got;
  int rc;

  if ((rc = td_dcur_open(f, at, &c, err, errlen)) < 0)
    return rc;
  if (nw == 1 && fd->at == 0 && fd->bytes == rec) {
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
    for (int i = 0; i < nw; i++)
      for (uint64_t j = 0; j < k; j++)
        memcpy(w[i].dst + (done + j) * w[i].fd->bytes, bounce + j * rec + w[i].fd->at,
               (size_t)w[i].fd->bytes);
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
static int read_fixed(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, uint8_t *labels,
                      uint32_t classes, int whole, char *err, size_t errlen) {
  uint64_t total = whole ? s->records : 0;
  uint8_t *lraw = NULL;
  struct want w[2];
  int nw = 0, rc = 0;

  if (labels != NULL) {
    lraw = s->lab.bytes == 1 ? labels : malloc((size_t)(n * s->lab.bytes));
    if (lraw == NULL)
      return TD_ENOMEM;
  }
  if (samples != NULL)
    w[nw++] = (struct want){&s->samp, samples};
  if (lraw != NULL && s->lab.f == s->sf)
    w[nw++] = (struct want){&s->lab, lraw};
  if (nw > 0)
    rc = read_records(s->sf, w, nw, first, n, total, err, errlen);
  if (rc == 0 && lraw != NULL && s->lab.f != s->sf) {
    w[0] = (struct want){&s->lab, lraw};
    rc = read_records(s->lab.f, w, 1, first, n, total, err, errlen);
  }
  if (rc == 0 && lraw != NULL)
    rc = convert_labels(s, lraw, n, first, labels, classes, err, errlen);
  if (rc == 0 && samples != NULL)
    rc = check_finite(s, samples, n, first, err, errlen);
  if (lraw != labels)
    free(lraw);
  return rc;
}

static int read_csv(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, uint8_t *labels,
                    uint32_t classes, char *err, size_t errlen) {
  uint64_t k = first / CSV_STRIDE, skip = first % CSV_STRIDE, label, off;
  uint8_t *row = NULL;
  struct lines L;
  td_csv_where where = {.path = td_dfile_path(s->sf)};
  const char *p;
  size_t len;
  int rc;

  if (k >= s->nline_off)
    return td_data_errf(err, errlen, where.path, "internal error: no offset for line %llu",
                        (unsigned long long)first);
  if (samples == NULL && (row = malloc(s->sample_bytes)) == NULL)
    return TD_ENOMEM;
  if ((rc = lines_init(&L, s->sf, s->line_off[k], err, errlen)) < 0)
    goto free_lines;
  where.line = (uint64_t)s->header + k * CSV_STRIDE;
  for (uint64_t j = 0; j < skip + n; j++) {
    if ((rc = lines_next(&L, &p, &len, &off, err, errlen)) < 0)
      goto free_lines;
    where.line++;
    if (rc == 0) {
      rc = td_data_errf(err, errlen, where.path, "truncated at offset %llu: expected line "
                        "%llu, got the end of the file (did it change?)",
                        (unsigned long long)L.base + L.len, (unsigned long long)where.line);
      goto free_lines;
    }
    if (j < skip)
      continue;
    where.offset = off;
    rc = td_csv_parse_line(&s->csv, p, len,
                           samples != NULL ? samples + (j - skip) * s->sample_bytes : row, &label,
                           &where, err, errlen);
    if (rc < 0)
      goto free_lines;
    if (label >= classes) {
      rc = td_data_errf(err, errlen, where.path, "line %llu: label at index %llu is %llu, but "
                        "the model has %u classes (labels 0..%u)",
                        (unsigned long long)where.line, (unsigned long long)(first + j - skip),
                        (unsigned long long)label, classes, classes - 1);
      goto free_lines;
    }
    if (labels != NULL)
      labels[j - skip] = (uint8_t)label;
  }
  rc = 0;

free_lines:
  lines_free(&L);
  free(row);
  return rc;
}

int td_split_read(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, uint8_t *labels,
                  uint32_t classes, char *err, size_t errlen) {
  if (s->count == UINT64_MAX || first > s->count || n > s->count - first) {
    snprintf(err, errlen, "%s: samples %llu..+%llu are outside the %s set", td_dfile_path(s->sf),
             (unsigned long long)first, (unsigned long long)n, td_split_name(s));
    return TD_EINVAL;
  }
  if (n == 0)
    return 0;
  if (classes > TD_DATASET_MAX_CLASSES)
    classes = TD_DATASET_MAX_CLASSES;
  if (s->format == TD_DATA_CSV)
    return read_csv(s, first, n, samples, labels, classes, err, errlen);
  return read_fixed(s, first, n, samples, labels, classes, 0, err, errlen);
}

struct load {
  td_split *s;
  uint8_t *samples, *labels;
  uint32_t classes;
  uint64_t per; /* samples per task; 0: the gzip tasks below */
};

static int load_task(void *ctx, uint64_t t, char *err, size_t errlen) {
  struct load *ld = ctx;
  td_split *s = ld->s;
  uint64_t first, n;

  if (ld->per > 0) {
    first = t * ld->per;
    n = s->count - first < ld->per ? s->count - first : ld->per;
    return td_split_read(s, first, n, ld->samples + first * s->sample_bytes, ld->labels + first,
                         ld->classes, err, errlen);
  }
  /* gzip: one task per file, each decoding it front to back and checking
   * it to its end. */
  return read_fixed(s, 0, s->count, t == 0 ? ld->samples : NULL,
                    t == 1 || s->lab.f == s->sf ? ld->labels : NULL, ld->classes,
                    s->format != TD_DATA_RAW, err, errlen);
}

int td_split_load(td_split *s, uint8_t *samples, uint8_t *labels, uint32_t classes,
                  int nthreads, char *err, size_t errlen) {
  struct load ld = {.s = s, .samples = samples, .labels = labels, .classes = classes};
  int gz = td_dfile_is_gzip(s->sf) || (s->lf != NULL && td_dfile_is_gzip(s->lf)), rc;
  uint64_t ntasks;

  if (td_split_needs_scan(s, 0) && (rc = td_split_scan(s, 0, err, errlen)) < 0)
    return rc;
  if (s->format == TD_DATA_CSV || !gz || !td_split_needs_scan(s, 1)) {
    ld.per = LOAD_TASK_BYTES / s->sample_bytes;
    if (s->format == TD_DATA_CSV)
      ld.per = (ld.per / CSV_STRIDE + 1) * CSV_STRIDE;
    if (ld.per < 1)
      ld.per = 1;
    ntasks = (s->count + ld.per - 1) / ld.per;
  } else {
    ntasks = s->lab.f == s->sf ? 1 : 2;
  }
  return td_parallel(nthreads, ntasks, load_task, &ld, err, errlen);
}

int td_split_cache_key(const td_split *s, char *buf, size_t cap) {
  const td_dfile *files[] = {s->sf, s->lf};
  size_t n;
  int k;

  k = snprintf(buf, cap, "v1 fmt=%d elems=%u dtype=%d limit=%llu %s", (int)s->format, s->elems,
               (int)s->dtype, (unsigned long long)s->limit, s->params);
  if (k < 0 || (size_t)k >= cap)
    return TD_ETOOBIG;
  n = (size_t)k;
  for (size_t i = 0; i < TD_ARRAY_SIZE(files) && files[i] != NULL; i++) {
    const struct stat *st = td_dfile_stat(files[i]);
    k = snprintf(buf + n, cap - n, " file=%llx:%llx:%lld:%lld.%09ld",
                 (unsigned long long)st->st_dev, (unsigned long long)st->st_ino,
                 (long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
    if (k < 0 || (size_t)k >= cap - n)
      return TD_ETOOBIG;
    n += (size_t)k;
  }
  return 0;
}

/* The submit-time label check: what is cheap to read. */
static int quick_labels(td_split *s, uint32_t classes, char *err, size_t errlen) {
  uint64_t n;
  uint8_t *labels;
  int rc;

  if (s->format == TD_DATA_CSV) {
    struct lines L;
    td_csv_where where = {.path = td_dfile_path(s->sf)};
    uint8_t *row = malloc(s->sample_bytes);
    const char *p;
    size_t len;
    uint64_t label;

    if (row == NULL)
      return TD_ENOMEM;
    if ((rc = lines_init(&L, s->sf, 0, err, errlen)) < 0)
      goto free_csv;
    while ((rc = lines_next(&L, &p, &len, &where.offset, err, errlen)) == 1 &&
           where.offset < CHECK_CSV_BYTES) {
      if (++where.line == 1 && s->header)
        continue;
      if ((rc = td_csv_parse_line(&s->csv, p, len, row, &label, &where, err, errlen)) < 0)
        goto free_csv;
      if (label >= classes) {
        rc = td_data_errf(err, errlen, where.path, "line %llu at offset %llu: label is %llu, "
                          "but the model has %u classes (labels 0..%u)",
                          (unsigned long long)where.line, (unsigned long long)where.offset,
                          (unsigned long long)label, classes, classes - 1);
        goto free_csv;
      }
    }
  free_csv:
    lines_free(&L);
    free(row);
    return rc < 0 ? rc : 0;
  }
  if (s->count == UINT64_MAX)
    return 0; /* compressed raw: its size is unknown until decoded */
  n = CHECK_LABEL_BYTES / s->lab.rec;
  n = n < 1 ? 1 : n > s->count ? s->count : n;
  labels = malloc((size_t)n);
  if (labels == NULL)
    return TD_ENOMEM;
  rc = td_split_read(s, 0, n, NULL, labels, classes, err, errlen);
  free(labels);
  return rc;
}

uint64_t td_dataset_validation_count(const td_jobspec *spec, uint64_t count) {
  uint64_t v = spec->val_count;

  if (spec->val_fraction > 0) {
    v = (uint64_t)llround((double)spec->val_fraction * (double)count);
    if (v == 0)
      v = 1;
  }
  return v;
}

int td_dataset_check(const td_jobspec *spec, char *err, size_t errlen) {
  uint32_t classes = td_jobspec_classes(spec);
  td_split *s[2] = {NULL, NULL};
  uint64_t v;
  int rc = 0;

  if (errlen > 0)
    err[0] = '\0';
  if (classes < 1 || classes > TD_DATASET_MAX_CLASSES) {
    snprintf(err, errlen, "the model has %u classes, but labels travel as one byte: expected "
             "1..%u", classes, TD_DATASET_MAX_CLASSES);
    return TD_EDATA;
  }
  for (int i = 0; i < 2 && rc == 0; i++)
    if ((rc = td_split_open(spec, (td_split_which)i, &s[i], err, errlen)) == 0)
      rc = quick_labels(s[i], classes, err, errlen);
  if (rc == 0 && s[1]->dtype != s[0]->dtype)
    rc = td_data_errf(err, errlen, td_split_path(s[1]), "samples at offset 0: expected %s like "
                      "the train set's, got %s", td_dtype_name(s[0]->dtype),
                      td_dtype_name(s[1]->dtype));
  if (rc == 0 && s[0]->count != UINT64_MAX &&
      (v = td_dataset_validation_count(spec, s[0]->count)) >= s[0]->count && v > 0)
    rc = td_data_errf(err, errlen, td_split_path(s[0]), "validation split: expected fewer "
                      "than the %llu samples of the train set, got %llu",
                      (unsigned long long)s[0]->count, (unsigned long long)v);
  td_split_close(s[0]);
  td_split_close(s[1]);
  /* A missing file is bad data here, not a missing job. */
  return rc == TD_ENOENT ? TD_EDATA : rc;
}

int td_dataset_probe(const td_jobspec *spec, td_dataset_info *out, char *err, size_t errlen) {
  td_split *s;
  int rc;

  if ((rc = td_split_open(spec, TD_SPLIT_TRAIN, &s, err, errlen)) < 0)
    return rc;
  out->dtype = s->dtype;
  out->sample_bytes = s->sample_bytes;
  td_split_close(s);
  return 0;
}

/* Uniform in [0, bound): rejects the 2^64 mod bound lowest draws. */
static uint64_t rand_below(uint64_t *state, uint64_t bound) {
  uint64_t threshold = (0 - bound) % bound, r;

  do
    r = td_splitmix64(state);
  while (r < threshold);
  return r % bound;
}

void td_shuffle(uint32_t *perm, uint32_t n, uint64_t seed, uint32_t epoch, uint64_t stream) {
  uint64_t state = seed ^ ((uint64_t)epoch * 0x9E3779B97F4A7C15ull);

  if (stream != 0) {
    uint64_t t = stream * 0xD1B54A32D192ED03ull;
    state ^= td_splitmix64(&t);
  }
  for (uint32_t i = 0; i < n; i++)
    perm[i] = i;
  for (uint32_t i = n; i > 1; i--) {
    uint32_t j = (uint32_t)rand_below(&state, i), t = perm[i - 1];
    perm[i - 1] = perm[j];
    perm[j] = t;
  }
}

uint64_t td_order_chunks(const td_order *o) {
  return (o->n + o->chunk - 1) / o->chunk;
}

uint64_t td_order_window_span(const td_order *o) {
  uint64_t k = td_order_chunks(o);

  return o->wchunks == 0 || o->wchunks > k ? k : o->wchunks;
}

uint64_t td_order_windows(const td_order *o) {
  uint64_t k = td_order_chunks(o), span = td_order_window_span(o);

  return span == 0 ? 0 : (k + span - 1) / span;
}

uint32_t td_order_chunk_size(const td_order *o, uint64_t k) {
  uint64_t first = k * o->chunk;

  return (uint32_t)(o->n - first < o->chunk ? o->n - first : o->chunk);
}

void td_order_chunk_perm(const td_order *o, uint32_t *perm) {
  uint64_t k = td_order_chunks(o);

  if (o->shuffle && o->wchunks > 0)
    td_shuffle(perm, (uint32_t)k, o->seed, o->epoch, 1);
  else
    for (uint64_t i = 0; i < k; i++)
      perm[i] = (uint32_t)i;
}

void td_order_window_perm(const td_order *o, uint64_t w, uint32_t *perm, uint32_t count) {
  if (!o->shuffle) {
    for (uint32_t i = 0; i < count; i++)
      perm[i] = i;
    return;
  }
  /* Stream 0 for the full shuffle keeps the order of earlier versions. */
  td_shuffle(perm, count, o->seed, o->epoch, o->wchunks == 0 ? 0 : 2 + w);
}

struct par {
  td_task_fn fn;
  void *ctx;
  uint64_t ntasks;
  uint64_t next;
  int failed;
  int rc;
  char *err;
  size_t errlen;
  pthread_mutex_t mu;
};

static void *par_worker(void *arg) {
  struct par *p = arg;
  char err[ERRLEN];

  for (;;) {
    uint64_t t = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
    int rc;

    if (t >= p->ntasks || __atomic_load_n(&p->failed, __ATOMIC_RELAXED))
      break;
    err[0] = '\0';
    rc = p->fn(p->ctx, t, err, sizeof(err));
    if (rc < 0) {
      pthread_mutex_lock(&p->mu);
      if (!p->failed) {
        p->failed = 1;
        p->rc = rc;
        snprintf(p->err, p->errlen, "%s", err);
      }
      pthread_mutex_unlock(&p->mu);
      break;
    }
  }
  return NULL;
}

int td_parallel(int nthreads, uint64_t ntasks, td_task_fn fn, void *ctx, char *err,
                size_t errlen) {
  struct par p = {.fn = fn, .ctx = ctx, .ntasks = ntasks, .err = err, .errlen = errlen};
  pthread_t tids[64];
  int started = 0;

  if (nthreads < 1)
    nthreads = 1;
  if ((uint64_t)nthreads > ntasks)
    nthreads = ntasks > 0 ? (int)ntasks : 1;
  if (nthreads > (int)TD_ARRAY_SIZE(tids) + 1)
    nthreads = (int)TD_ARRAY_SIZE(tids) + 1;
  pthread_mutex_init(&p.mu, NULL);
  for (int i = 0; i < nthreads - 1; i++)
    if (pthread_create(&tids[started], NULL, par_worker, &p) == 0)
      started++;
  par_worker(&p); /* fewer threads than asked only makes it slower */
  for (int i = 0; i < started; i++)
    pthread_join(tids[i], NULL);
  pthread_mutex_destroy(&p.mu);
  return p.rc;
}
