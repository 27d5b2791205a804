#include "csvdata.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset_impl.h"
#include "datafile.h"
#include "error.h"

#define CSV_MAX_DIGITS 19 /* that a uint64 mantissa holds exactly */

static const double pow10_tab[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

uint32_t td_csv_columns(const char *p, size_t n) {
  uint32_t c = 1;

  for (const char *q = p; (q = memchr(q, ',', n - (size_t)(q - p))) != NULL; q++)
    c++;
  return c;
}

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r'; }

/* A decimal number from p to end (spaces around it allowed): *v and 0, or
 * -1 when it is not one.  *integer says it had no '.' or exponent. */
static int parse_number(const char *p, const char *end, double *v, int *integer) {
  uint64_t mant = 0;
  int neg = 0, digits = 0, sig = 0, exp10 = 0, frac = 0;

  while (p < end && is_space(*p))
    p++;
  while (end > p && is_space(end[-1]))
    end--;
  if (p < end && (*p == '-' || *p == '+'))
    neg = *p++ == '-';
  *integer = 1;
  for (; p < end; p++) {
    if (*p >= '0' && *p <= '9') {
      digits++;
      if (sig < CSV_MAX_DIGITS) {
        if (mant > 0 || *p != '0')
          sig++;
        mant = mant * 10 + (uint64_t)(*p - '0');
        exp10 -= frac;
      } else {
        exp10 += !frac; /* dropped digits: before the point they scale */
      }
    } else if (*p == '.' && !frac) {
      frac = 1;
      *integer = 0;
    } else {
      break;
    }
  }
  if (digits == 0)
    return -1;
  if (p < end && (*p == 'e' || *p == 'E')) {
    int eneg = 0, e = 0, edig = 0;
    p++;
    *integer = 0;
    if (p < end && (*p == '-' || *p == '+'))
      eneg = *p++ == '-';
    for (; p < end && *p >= '0' && *p <= '9'; p++, edig++)
      if (e < 100000)
        e = e * 10 + (*p - '0');
    if (edig == 0)
      return -1;
    exp10 += eneg ? -e : e;
  }
  if (p != end)
    return -1;
  if (mant == 0)
    *v = 0.0;
  else if (exp10 >= 0 && exp10 <= 22 && mant < ((uint64_t)1 << 53))
    *v = (double)mant * pow10_tab[exp10];
  else if (exp10 < 0 && exp10 >= -22 && mant < ((uint64_t)1 << 53))
    *v = (double)mant / pow10_tab[-exp10];
  else
    *v = (double)mant * pow(10.0, exp10); /* rare: long or extreme numbers */
  if (neg)
    *v = -*v;
  return 0;
}

int td_csv_numeric(const char *p, size_t n) {
  const char *end = p + n, *q;
  double v;
  int integer;

  for (;;) {
    q = memchr(p, ',', (size_t)(end - p));
    if (parse_number(p, q != NULL ? q : end, &v, &integer) < 0)
      return 0;
    if (q == NULL)
      return 1;
    p = q + 1;
  }
}

static int field_fail(const td_csv_where *w, uint32_t col, uint64_t off, const char *expected,
                      const char *f, size_t n, char *err, size_t errlen) {
  char shown[40];
  size_t k = n < 32 ? n : 32;

  snprintf(shown, sizeof(shown), "%.*s%s", (int)k, f, n > k ? "..." : "");
  for (char *s = shown; *s; s++)
    if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
      *s = '?';
  return td_data_errf(err, errlen, w->path, "line %llu column %u at offset %llu: expected %s, "
                      "got '%s'", (unsigned long long)w->line, col + 1,
                      (unsigned long long)off, expected, shown);
}

/* Which target column col is, or -1. */
static int target_of(const td_csv_fmt *fmt, uint32_t col) {
  for (uint32_t k = 0; k < fmt->ntargets; k++)
    if (fmt->target_columns[k] == col)
      return (int)k;
  return -1;
}

int td_csv_parse_line(const td_csv_fmt *fmt, const char *p, size_t n, void *values,
                      uint64_t *label, float *targets, const td_csv_where *where, char *err,
                      size_t errlen) {
  const char *line = p, *end = p + n, *q;
  float *f32 = values;
  uint8_t *u8 = values;
  uint32_t col = 0, k = 0;
  int integer, t;
  double v;

  for (;; col++) {
    q = memchr(p, ',', (size_t)(end - p));
    if (q == NULL)
      q = end;
    if (col >= fmt->columns) {
      char what[64];
      snprintf(what, sizeof(what), "%u columns", fmt->columns);
      return field_fail(where, col, where->offset + (uint64_t)(p - line), what, p,
                        (size_t)(end - p), err, errlen);
    }
    t = fmt->ntargets > 0 ? target_of(fmt, col) : -1;
    if (parse_number(p, q, &v, &integer) < 0)
      return field_fail(where, col, where->offset + (uint64_t)(p - line),
                        fmt->ntargets == 0 && col == fmt->label_column ? "an integer class label"
                                                                       : "a number",
                        p, (size_t)(q - p), err, errlen);
    if (t >= 0) {
      float x = (float)v;
      if (!isfinite(x))
        return field_fail(where, col, where->offset + (uint64_t)(p - line),
                          "a finite float32 target", p, (size_t)(q - p), err, errlen);
      targets[t] = x;
    } else if (fmt->ntargets == 0 && col == fmt->label_column) {
      if (!integer || v < 0 || v > 4294967295.0)
        return field_fail(where, col, where->offset + (uint64_t)(p - line),
                          "a class label (an integer >= 0)", p, (size_t)(q - p), err, errlen);
      *label = (uint64_t)v;
    } else if (fmt->dtype == TD_DTYPE_U8) {
      if (!integer || v < 0 || v > 255)
        return field_fail(where, col, where->offset + (uint64_t)(p - line),
                          "an integer 0..255 (data.csv.dtype uint8)", p, (size_t)(q - p), err,
                          errlen);
      u8[k++] = (uint8_t)v;
    } else {
      float x = (float)v;
      if (!isfinite(x))
        return field_fail(where, col, where->offset + (uint64_t)(p - line),
                          "a finite float32 number", p, (size_t)(q - p), err, errlen);
      f32[k++] = x;
    }
    if (q == end)
      break;
    p = q + 1;
  }
  if (col + 1 != fmt->columns)
    return td_data_errf(err, errlen, where->path, "line %llu at offset %llu: expected %u "
                        "columns, got %u", (unsigned long long)where->line,
                        (unsigned long long)where->offset, fmt->columns, col + 1);
  return 0;
}

/* The CSV format of a job's data: one file, a sample per line with its
 * label in a column.  Lines have no fixed size, so a scan notes where
 * every CSV_STRIDE-th one starts, and a read decodes from the noted line
 * at or before its first. */

#define CSV_STRIDE 1024u /* lines between two noted offsets */
#define CSV_MAX_LINE ((size_t)16 << 20)
#define CSV_FIRST_BUF ((size_t)256 << 10)
#define CHECK_CSV_BYTES ((uint64_t)64 << 10)

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
  uint64_t off, hash = 0xcbf29ce484222325ull;
  uint32_t cols, nt;
  int rc, k, line = 1;

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
  nt = spec->csv.ntarget_columns;
  /* the job file's check, again: a read writes nt floats per target */
  if (nt != (s->target.dtype == TD_DTYPE_F32 ? s->target.width : 0) ||
      nt > TD_MAX_TARGET_COLUMNS) {
    rc = td_data_errf(err, errlen, ds->images, "line %d: loss %s takes %u float targets a "
                      "sample, and data.csv.target_columns names %u", line,
                      td_loss_name(s->loss),
                      s->target.dtype == TD_DTYPE_F32 ? s->target.width : 0, nt);
    goto free_lines;
  }
  if (cols != s->elems + (nt > 0 ? nt : 1)) {
    if (nt > 0)
      rc = td_data_errf(err, errlen, ds->images, "line %d at offset %llu: expected %u columns "
                        "(the %u targets and model.input's %u values), got %u", line,
                        (unsigned long long)off, s->elems + nt, nt, s->elems, cols);
    else
      rc = td_data_errf(err, errlen, ds->images, "line %d at offset %llu: expected %u columns "
                        "(the label and model.input's %u values), got %u", line,
                        (unsigned long long)off, s->elems + 1, s->elems, cols);
    goto free_lines;
  }
  if (nt == 0 && spec->csv.label_column >= cols) {
    rc = td_data_errf(err, errlen, ds->images, "line %d at offset %llu: expected a label in "
                      "column %u (data.csv.label_column, from 0), got %u columns", line,
                      (unsigned long long)off, spec->csv.label_column, cols);
    goto free_lines;
  }
  for (uint32_t i = 0; i < nt; i++)
    if (spec->csv.target_columns[i] >= cols) {
      rc = td_data_errf(err, errlen, ds->images, "line %d at offset %llu: expected a target in "
                        "column %u (data.csv.target_columns, from 0), got %u columns", line,
                        (unsigned long long)off, spec->csv.target_columns[i], cols);
      goto free_lines;
    }
  s->csv = (td_csv_fmt){.columns = cols, .label_column = spec->csv.label_column,
                        .dtype = spec->csv.dtype, .ntargets = nt};
  memcpy(s->csv.target_columns, spec->csv.target_columns, nt * sizeof(uint32_t));
  s->header = spec->csv.header;
  s->dtype = spec->csv.dtype;
  k = snprintf(s->params, sizeof(s->params), "csv=%u,%d,%d,%u", s->csv.label_column, s->header,
               (int)s->dtype, nt);
  /* the target columns too, hashed: 64 of them do not fit in params */
  for (uint32_t i = 0; i < nt; i++)
    hash = (hash ^ s->csv.target_columns[i]) * 0x100000001b3ull;
  if (nt > 0 && k > 0 && (size_t)k < sizeof(s->params))
    snprintf(s->params + k, sizeof(s->params) - (size_t)k, ",t%016llx",
             (unsigned long long)hash);
  rc = 0;

free_lines:
  lines_free(&L);
  return rc;
}

static int csv_needs_scan(const td_split *s, int random_access) {
  return s->line_off == NULL;
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
  rc = td_dfile_scan(s->sf, td_dfile_is_gzip(s->sf) ? TD__SCAN_SPACING : 0, max_points,
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
  td__split_set_records(s, records);
  return 0;
}

/* Bytes per line, from the noted offsets (the scan may have stopped at
 * the limit, before the file's end). */
static void csv_read_cost(const td_split *s, uint64_t *gap, uint64_t *per) {
  uint64_t line = s->nline_off > 1
      ? s->line_off[s->nline_off - 1] / ((s->nline_off - 1) * (uint64_t)CSV_STRIDE) + 1
      : 1024;
  uint64_t g = td_dfile_max_gap(s->sf);

  *gap = (g == UINT64_MAX ? 0 : g) + (uint64_t)CSV_STRIDE * line;
  *per = line;
}

static int read_csv(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, void *targets,
                    uint32_t classes, char *err, size_t errlen) {
  uint64_t k = first / CSV_STRIDE, skip = first % CSV_STRIDE, label = 0, off;
  float tbuf[TD_MAX_TARGET_COLUMNS];
  uint32_t nt = s->csv.ntargets;
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
                           targets != NULL ? (float *)targets + (j - skip) * nt : tbuf, &where,
                           err, errlen);
    if (rc < 0)
      goto free_lines;
    if (nt > 0)
      continue;
    if (label >= classes) {
      rc = td_data_errf(err, errlen, where.path, "line %llu: label at index %llu is %llu, but "
                        "the model has %u classes (labels 0..%u)",
                        (unsigned long long)where.line, (unsigned long long)(first + j - skip),
                        (unsigned long long)label, classes, classes - 1);
      goto free_lines;
    }
    if (targets != NULL)
      ((int32_t *)targets)[j - skip] = (int32_t)label;
  }
  rc = 0;

free_lines:
  lines_free(&L);
  free(row);
  return rc;
}


/* The labels of the first 64 KiB of lines. */
static int csv_check_labels(td_split *s, uint32_t classes, char *err, size_t errlen) {
  struct lines L;
  td_csv_where where = {.path = td_dfile_path(s->sf)};
  uint8_t *row = malloc(s->sample_bytes);
  float tbuf[TD_MAX_TARGET_COLUMNS];
  const char *p;
  size_t len;
  uint64_t label = 0;
  int rc;

  if (row == NULL)
    return TD_ENOMEM;
  if ((rc = lines_init(&L, s->sf, 0, err, errlen)) < 0)
    goto free_csv;
  while ((rc = lines_next(&L, &p, &len, &where.offset, err, errlen)) == 1 &&
         where.offset < CHECK_CSV_BYTES) {
    if (++where.line == 1 && s->header)
      continue;
    if ((rc = td_csv_parse_line(&s->csv, p, len, row, &label, tbuf, &where, err, errlen)) < 0)
      goto free_csv;
    if (s->csv.ntargets == 0 && label >= classes) {
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

const td__format td__format_csv = {
    .open = open_csv,
    .needs_scan = csv_needs_scan,
    .scan = scan_csv,
    .read_cost = csv_read_cost,
    .read = read_csv,
    .check_labels = csv_check_labels,
    .load_align = CSV_STRIDE,
};
