#include "csvdata.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int td_csv_parse_line(const td_csv_fmt *fmt, const char *p, size_t n, void *values,
                      uint64_t *label, const td_csv_where *where, char *err, size_t errlen) {
  const char *line = p, *end = p + n, *q;
  float *f32 = values;
  uint8_t *u8 = values;
  uint32_t col = 0, k = 0;
  int integer;
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
    if (parse_number(p, q, &v, &integer) < 0)
      return field_fail(where, col, where->offset + (uint64_t)(p - line),
                        col == fmt->label_column ? "an integer class label" : "a number", p,
                        (size_t)(q - p), err, errlen);
    if (col == fmt->label_column) {
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
