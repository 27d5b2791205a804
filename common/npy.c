#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset_impl.h"
#include "datafile.h"
#include "error.h"
#include "util.h"

#define NPY_PREFIX 8 /* magic (6) and version (2) */

static const struct {
  const char *code; /* descr without the byte-order character */
  td_dtype dtype;
} npy_types[] = {
    {"u1", TD_DTYPE_U8}, {"i4", TD_DTYPE_I32}, {"f2", TD_DTYPE_F16},
    {"f4", TD_DTYPE_F32}, {"i8", TD_DTYPE_I64}, {"f8", TD_DTYPE_F64},
};

/* The header text being parsed, with where it starts in the file. */
struct lex {
  const char *p, *end, *start;
  uint64_t base;
  const char *path;
  char *err;
  size_t errlen;
};

static uint64_t lex_off(const struct lex *l) {
  return l->base + (uint64_t)(l->p - l->start);
}

static void skip_space(struct lex *l) {
  while (l->p < l->end && (*l->p == ' ' || *l->p == '\t' || *l->p == '\n' || *l->p == '\r'))
    l->p++;
}

static int lex_fail(struct lex *l, const char *expected) {
  char got[24];
  size_t n = 0;

  while (l->p + n < l->end && n < 16 && l->p[n] >= 0x20 && l->p[n] < 0x7f)
    n++;
  snprintf(got, sizeof(got), "%.*s%s", (int)n, l->p, l->p + n < l->end && n == 16 ? "..." : "");
  return td_data_errf(l->err, l->errlen, l->path, "bad .npy header at offset %llu: expected "
                      "%s, got '%s'", (unsigned long long)lex_off(l), expected,
                      l->p < l->end ? got : "the end of the header");
}

static int expect_char(struct lex *l, char ch, const char *what) {
  skip_space(l);
  if (l->p >= l->end || *l->p != ch)
    return lex_fail(l, what);
  l->p++;
  return 0;
}

/* A quoted string without escapes (all the header's strings are plain). */
static int lex_string(struct lex *l, char *buf, size_t cap) {
  char q;
  size_t n = 0;

  skip_space(l);
  if (l->p >= l->end || (*l->p != '\'' && *l->p != '"'))
    return lex_fail(l, "a quoted string");
  q = *l->p++;
  while (l->p < l->end && *l->p != q) {
    if (*l->p == '\\' || n + 1 >= cap)
      return lex_fail(l, "a short string without escapes");
    buf[n++] = *l->p++;
  }
  if (l->p >= l->end)
    return lex_fail(l, "the string's closing quote");
  l->p++;
  buf[n] = '\0';
  return 0;
}

static int lex_word(struct lex *l, const char *w) {
  size_t n = strlen(w);

  skip_space(l);
  if ((size_t)(l->end - l->p) >= n && memcmp(l->p, w, n) == 0) {
    l->p += n;
    return 1;
  }
  return 0;
}

/* After an item: 1 for a ',' (consumed), 0 for the closing character
 * (left), or an error. */
static int lex_next(struct lex *l, char close) {
  static const char expected[][12] = {"',' or ')'", "',' or '}'"};

  skip_space(l);
  if (l->p < l->end && *l->p == ',') {
    l->p++;
    return 1;
  }
  if (l->p >= l->end || *l->p != close)
    return lex_fail(l, expected[close == '}']);
  return 0;
}

static int lex_shape(struct lex *l, td_npy_hdr *h) {
  int err;

  if ((err = expect_char(l, '(', "a tuple such as (60000, 28, 28)")) < 0)
    return err;
  h->rank = 0;
  for (;;) {
    uint64_t v = 0;
    int digits = 0;

    skip_space(l);
    if (l->p < l->end && *l->p == ')')
      break;
    if (h->rank == TD_NPY_MAX_RANK)
      return lex_fail(l, "at most 8 dimensions");
    while (l->p < l->end && *l->p >= '0' && *l->p <= '9') {
      if (v > (UINT64_MAX - 9) / 10)
        return lex_fail(l, "a dimension below 2^64");
      v = v * 10 + (uint64_t)(*l->p++ - '0');
      digits++;
    }
    if (digits == 0)
      return lex_fail(l, "a dimension (an integer)");
    h->shape[h->rank++] = v;
    if ((err = lex_next(l, ')')) <= 0) {
      if (err < 0)
        return err;
      break;
    }
  }
  l->p++;
  return 0;
}

static int parse_descr(struct lex *l, const char *descr, uint64_t at, td_npy_hdr *h) {
  char order = descr[0];
  const char *code = descr + (order == '<' || order == '>' || order == '|' || order == '=');

  for (size_t i = 0; i < TD_ARRAY_SIZE(npy_types); i++) {
    if (strcmp(code, npy_types[i].code) != 0)
      continue;
    if (order == '>' && td_dtype_size(npy_types[i].dtype) > 1)
      return td_data_errf(l->err, l->errlen, l->path, "big-endian data at offset %llu: "
                          "expected little-endian ('<%s'), got '%s' (convert with "
                          ".astype('<%s'))", (unsigned long long)at, code, descr, code);
    h->dtype = npy_types[i].dtype;
    return 0;
  }
  return td_data_errf(l->err, l->errlen, l->path, "unsupported dtype at offset %llu: expected "
                      "uint8 ('|u1'), int32 ('<i4'), int64 ('<i8'), float16 ('<f2'), float32 "
                      "('<f4') or float64 ('<f8'), got '%s'", (unsigned long long)at, descr);
}

/* {'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), } */
static int parse_dict(struct lex *l, td_npy_hdr *h) {
  char key[32], descr[32];
  int have = 0, err;
  uint64_t at;

  if ((err = expect_char(l, '{', "'{'")) < 0)
    return err;
  for (;;) {
    skip_space(l);
    if (l->p < l->end && *l->p == '}')
      break;
    if ((err = lex_string(l, key, sizeof(key))) < 0 || (err = expect_char(l, ':', "':'")) < 0)
      return err;
    skip_space(l);
    at = lex_off(l);
    if (strcmp(key, "descr") == 0) {
      if ((err = lex_string(l, descr, sizeof(descr))) < 0 ||
          (err = parse_descr(l, descr, at, h)) < 0)
        return err;
      have |= 1;
    } else if (strcmp(key, "fortran_order") == 0) {
      if (lex_word(l, "True"))
        return td_data_errf(l->err, l->errlen, l->path, "Fortran-ordered array at offset "
                            "%llu: expected C order (fortran_order False), got True (save "
                            "np.ascontiguousarray(a))", (unsigned long long)at);
      if (!lex_word(l, "False"))
        return lex_fail(l, "True or False");
      have |= 2;
    } else if (strcmp(key, "shape") == 0) {
      if ((err = lex_shape(l, h)) < 0)
        return err;
      have |= 4;
    } else {
      return lex_fail(l, "only the keys 'descr', 'fortran_order' and 'shape'");
    }
    if ((err = lex_next(l, '}')) <= 0) {
      if (err < 0)
        return err;
      break;
    }
  }
  if (have != 7)
    return td_data_errf(l->err, l->errlen, l->path, "incomplete .npy header at offset %llu: "
                        "expected 'descr', 'fortran_order' and 'shape', got no '%s'",
                        (unsigned long long)l->base,
                        !(have & 1) ? "descr" : !(have & 2) ? "fortran_order" : "shape");
  return 0;
}

void td_npy_shape_str(const td_npy_hdr *h, char *buf, size_t cap) {
  size_t n = 0;
  int k;

  if (cap == 0)
    return;
  buf[0] = '\0';
  k = snprintf(buf, cap, "(");
  n = k > 0 ? (size_t)k : 0;
  for (int i = 0; i < h->rank && n < cap; i++) {
    k = snprintf(buf + n, cap - n, "%s%llu", i ? ", " : "", (unsigned long long)h->shape[i]);
    if (k < 0)
      return;
    n += (size_t)k;
  }
  if (n < cap)
    snprintf(buf + n, cap - n, h->rank == 1 ? ",)" : ")");
}

int td_npy_read_header(struct td_dcur *c, const char *path, td_npy_hdr *out, char *err,
                       size_t errlen) {
  uint8_t pre[NPY_PREFIX + 4];
  td_npy_hdr h;
  struct lex l;
  char shape[160];
  uint64_t hlen, elems = 1, bytes;
  size_t lenbytes, got;
  char *text;
  int rc;

  memset(&h, 0, sizeof(h));
  if ((rc = td_dcur_read(c, pre, NPY_PREFIX, &got)) < 0)
    return rc;
  if (got < 6 || memcmp(pre, "\x93NUMPY", 6) != 0)
    return td_data_errf(err, errlen, path, "bad magic at offset 0: expected \\x93NUMPY (a .npy "
                        "file), got %s", got == 0 ? "an empty file" : "other bytes");
  if (got < NPY_PREFIX)
    return td_data_errf(err, errlen, path, "truncated header at offset %zu: expected the "
                        "version (2 bytes), got the end of the file", got);
  if (pre[6] < 1 || pre[6] > 3)
    return td_data_errf(err, errlen, path, "unsupported version at offset 6: expected 1, 2 or "
                        "3, got %u.%u", pre[6], pre[7]);
  lenbytes = pre[6] == 1 ? 2 : 4;
  if ((rc = td_dcur_read_full(c, pre + NPY_PREFIX, lenbytes, "the header length")) < 0)
    return rc;
  hlen = pre[8] | (uint64_t)pre[9] << 8;
  if (lenbytes == 4)
    hlen |= (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24;
  if (hlen > TD_NPY_MAX_HEADER)
    return td_data_errf(err, errlen, path, "header too long at offset 8: expected at most %u "
                        "bytes, got %llu", TD_NPY_MAX_HEADER, (unsigned long long)hlen);
  text = malloc(hlen + 1);
  if (text == NULL)
    return TD_ENOMEM;
  if ((rc = td_dcur_read_full(c, text, (size_t)hlen, "the header")) < 0)
    goto free_text;
  l = (struct lex){.p = text, .end = text + hlen, .start = text, .base = NPY_PREFIX + lenbytes,
                   .path = path, .err = err, .errlen = errlen};
  if ((rc = parse_dict(&l, &h)) < 0)
    goto free_text;
  td_npy_shape_str(&h, shape, sizeof(shape));
  if (h.rank < 1) {
    rc = td_data_errf(err, errlen, path, "scalar array at offset %llu: expected a shape with "
                      "the sample count first, got ()", (unsigned long long)l.base);
    goto free_text;
  }
  for (int i = 1; i < h.rank; i++)
    if (h.shape[i] == 0) {
      rc = td_data_errf(err, errlen, path, "empty sample at offset %llu: expected every "
                        "dimension after the first >= 1, got shape %s",
                        (unsigned long long)l.base, shape);
      goto free_text;
    }
  /* item = product of shape[1..]; bytes = shape[0] * item * size, checked. */
  rc = 0;
  for (int i = 1; i < h.rank && rc == 0; i++)
    rc = td_mul_u64(elems, h.shape[i], &elems);
  h.item_elems = elems;
  if (rc < 0 || td_mul_u64(elems, h.shape[0], &elems) < 0 ||
      td_mul_u64(elems, td_dtype_size(h.dtype), &bytes) < 0 || bytes > ((uint64_t)1 << 50)) {
    rc = td_data_errf(err, errlen, path, "array too large at offset %llu: expected at most "
                      "2^50 bytes, got shape %s", (unsigned long long)l.base, shape);
    goto free_text;
  }
  h.data_off = l.base + hlen;
  h.data_bytes = bytes;
  *out = h;
  rc = 0;

free_text:
  free(text);
  return rc;
}

/* The npy format of a job's data: features and labels in two files. */

static int open_npy(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                    size_t errlen) {
  char want[64], shape[160], lshape[160];
  td_dcur *c = NULL;
  td_npy_hdr h, hl;
  size_t lsize;
  int rc;

  if ((rc = td__records_open_file(ds->images, &s->sf, &c, err, errlen)) < 0 ||
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
  if ((rc = td__records_open_file(ds->labels, &s->lf, &c, err, errlen)) < 0 ||
      (rc = td_npy_read_header(c, ds->labels, &hl, err, errlen)) < 0)
    goto close_cur;
  td_npy_shape_str(&hl, lshape, sizeof(lshape));
  if (hl.dtype == TD_DTYPE_F32 || hl.dtype == TD_DTYPE_F64) {
    /* float targets: (N,) for one output, (N, K) for K */
    if (s->target.dtype != TD_DTYPE_F32) {
      rc = td__target_kind_fail(s, ds->labels, 1, err, errlen);
      goto close_cur;
    }
    if (hl.item_elems != s->target.width || hl.rank > 2) {
      rc = td_data_errf(err, errlen, ds->labels, "shape at offset 10: expected (N, %u), a "
                        "float target per model output, got %s", s->target.width, lshape);
      goto close_cur;
    }
  } else if (hl.dtype != TD_DTYPE_U8 && hl.dtype != TD_DTYPE_I32 && hl.dtype != TD_DTYPE_I64) {
    rc = td_data_errf(err, errlen, ds->labels, "dtype at offset 10: expected integer labels "
                      "(uint8, int32 or int64) or float targets (float32, float64), got %s",
                      td_dtype_name(hl.dtype));
    goto close_cur;
  } else if (s->target.dtype != TD_DTYPE_I32) {
    rc = td__target_kind_fail(s, ds->labels, 0, err, errlen);
    goto close_cur;
  } else if (hl.item_elems != 1 || hl.rank > 2) {
    rc = td_data_errf(err, errlen, ds->labels, "shape at offset 10: expected (N,), one label "
                      "per sample, got %s", lshape);
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
  lsize = hl.item_elems * td_dtype_size(hl.dtype);
  /* numpy's default types: int64 and float64 samples are read as int32 and
   * float32 (records.c), which is what the worker takes; int32 rather than
   * float32 for int64 so that integer inputs (indices) stay exact. */
  s->stored = h.dtype;
  s->dtype = h.dtype == TD_DTYPE_I64 ? TD_DTYPE_I32 : h.dtype == TD_DTYPE_F64 ? TD_DTYPE_F32 :
             h.dtype;
  s->label_dtype = hl.dtype;
  s->samp = (td__field){s->sf, h.data_off, h.item_elems * td_dtype_size(h.dtype), 0,
                           h.item_elems * td_dtype_size(h.dtype)};
  s->lab = (td__field){s->lf, hl.data_off, lsize, 0, lsize};
  td__split_set_records(s, h.shape[0]);
  if ((rc = td__records_check_plain_size(&s->samp, s->records, "samples", err, errlen)) < 0)
    goto close_cur;
  rc = td__records_check_plain_size(&s->lab, s->records, "labels", err, errlen);

close_cur:
  td_dcur_close(c);
  return rc;
}

const td__format td__format_npy = {
    .open = open_npy,
    .needs_scan = td__records_needs_scan,
    .scan = td__records_scan,
    .read_cost = td__records_read_cost,
    .read = td__records_read,
    .check_labels = td__records_check_labels,
    .load_file = td__records_load_file,
    .load_align = 1,
    .load_to_end = 1,
};
