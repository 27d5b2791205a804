/* The loss curve as text: a plot a few lines high for `show`, a sparkline
 * for `top`.  In a UTF-8 locale the plot draws with Braille dots (2 x 4 a
 * character) and the sparkline with block elements; otherwise, and where
 * LANG is C, with ASCII (1 x 2 a character: ' . : and eight levels). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "client.h"
#include "util.h"

int cli_utf8_from(const char *lc_all, const char *lc_ctype, const char *lang) {
  /* POSIX's order: the first of these that is set and not empty decides */
  const char *v = lc_all != NULL && *lc_all ? lc_all
                  : lc_ctype != NULL && *lc_ctype ? lc_ctype
                                                  : lang;

  if (v == NULL)
    return 0;
  for (; *v; v++)
    if (strncasecmp(v, "utf-8", 5) == 0 || strncasecmp(v, "utf8", 4) == 0)
      return 1;
  return 0;
}

int cli_term_utf8(void) {
  return cli_utf8_from(getenv("LC_ALL"), getenv("LC_CTYPE"), getenv("LANG"));
}

size_t cli_loss_curve(const msgpack_object *job, double *x, double *y, size_t cap) {
  const msgpack_object *arr;
  size_t n = 0;

  if (td_obj_array(job, "loss_curve", &arr) != 0)
    return 0;
  for (uint32_t i = arr->via.array.size > cap ? arr->via.array.size - (uint32_t)cap : 0;
       i < arr->via.array.size && n < cap; i++) {
    const msgpack_object *p = &arr->via.array.ptr[i];
    const msgpack_object *s, *l;

    if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 2)
      continue;
    s = &p->via.array.ptr[0];
    l = &p->via.array.ptr[1];
    if (s->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
      continue;
    if (l->type == MSGPACK_OBJECT_FLOAT32 || l->type == MSGPACK_OBJECT_FLOAT64)
      y[n] = l->via.f64;
    else if (l->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
      y[n] = (double)l->via.u64;
    else
      continue;
    x[n++] = (double)s->via.u64;
  }
  return n;
}

/* UTF-8 of a code point below 0x10000. */
static void put_cp(FILE *f, uint32_t cp) {
  if (cp < 0x80) {
    fputc((int)cp, f);
  } else if (cp < 0x800) {
    fputc(0xc0 | (int)(cp >> 6), f);
    fputc(0x80 | (int)(cp & 0x3f), f);
  } else {
    fputc(0xe0 | (int)(cp >> 12), f);
    fputc(0x80 | (int)((cp >> 6) & 0x3f), f);
    fputc(0x80 | (int)(cp & 0x3f), f);
  }
}

/* The finite range of v[0..n): 0 if there is no finite value. */
static int range(const double *v, size_t n, double *lo, double *hi) {
  int any = 0;

  for (size_t i = 0; i < n; i++) {
    if (!isfinite(v[i]))
      continue;
    if (!any || v[i] < *lo)
      *lo = v[i];
    if (!any || v[i] > *hi)
      *hi = v[i];
    any = 1;
  }
  return any;
}

#define PLOT_MAX_COLS 256
#define PLOT_MAX_ROWS 32

/* Braille's dot bits by (column, row) within a character */
static const uint8_t braille_bit[2][4] = {{0x01, 0x02, 0x04, 0x40}, {0x08, 0x10, 0x20, 0x80}};

int cli_plot(FILE *f, const double *x, const double *y, size_t n, size_t rows, size_t cols,
             int utf8, const char *indent) {
  uint8_t cell[PLOT_MAX_ROWS][PLOT_MAX_COLS];
  double col_sum[2 * PLOT_MAX_COLS], ylo = 0, yhi = 0, xlo = 0, xhi = 0;
  uint32_t col_n[2 * PLOT_MAX_COLS];
  size_t dw, dh, sub_w = utf8 ? 2 : 1, sub_h = utf8 ? 4 : 2;
  char top[32], bottom[32], left[32], right[32];
  int labw, prev = -1;

  if (rows < 2 || cols < 4)
    return 0;
  if (rows > PLOT_MAX_ROWS)
    rows = PLOT_MAX_ROWS;
  if (cols > PLOT_MAX_COLS)
    cols = PLOT_MAX_COLS;
  /* only the points with a finite loss are drawn */
  {
    double fx[2] = {0, 0};
    int any = 0;

    for (size_t i = 0; i < n; i++) {
      if (!isfinite(y[i]))
        continue;
      if (!any || x[i] < fx[0])
        fx[0] = x[i];
      if (!any || x[i] > fx[1])
        fx[1] = x[i];
      any = 1;
    }
    if (!any || !range(y, n, &ylo, &yhi))
      return 0;
    xlo = fx[0], xhi = fx[1];
  }
  dw = cols * sub_w;
  dh = rows * sub_h;
  memset(cell, 0, sizeof(cell));
  memset(col_sum, 0, sizeof(col_sum));
  memset(col_n, 0, sizeof(col_n));
  /* each dot column: the mean loss of the points that fall in it */
  for (size_t i = 0; i < n; i++) {
    size_t c;

    if (!isfinite(y[i]))
      continue;
    c = xhi > xlo ? (size_t)lround((x[i] - xlo) / (xhi - xlo) * (double)(dw - 1)) : 0;
    col_sum[c] += y[i];
    col_n[c]++;
  }
  /* a line: every column from the first point to the last gets a value
   * (interpolated between columns that have one), and each joins the one
   * before it with a vertical run of dots */
  for (size_t c = 0, last = 0; c < dw; c++) {
    double v;
    int r, lo, hi;

    if (col_n[c] > 0) {
      v = col_sum[c] / col_n[c];
      last = c;
    } else {
      size_t next = c + 1;

      while (next < dw && col_n[next] == 0)
        next++;
      if (prev < 0 || next == dw)
        continue;
      double a = col_sum[last] / col_n[last], b = col_sum[next] / col_n[next];

      v = a + (b - a) * (double)(c - last) / (double)(next - last);
    }
    r = yhi > ylo ? (int)lround((yhi - v) / (yhi - ylo) * (double)(dh - 1)) : (int)(dh - 1) / 2;
    /* this column's dots: from next to the previous column's row to r */
    lo = prev < 0 || prev == r ? r : prev < r ? prev + 1 : r;
    hi = prev < 0 || prev == r ? r : prev < r ? r : prev - 1;
    for (int k = lo; k <= hi; k++)
      cell[(size_t)k / sub_h][c / sub_w] |=
          utf8 ? braille_bit[c % sub_w][(size_t)k % sub_h] : (uint8_t)(1u << ((size_t)k % sub_h));
    prev = r;
  }
  snprintf(top, sizeof(top), "%.4g", yhi);
  snprintf(bottom, sizeof(bottom), "%.4g", ylo);
  labw = (int)(strlen(top) > strlen(bottom) ? strlen(top) : strlen(bottom));
  for (size_t row = 0; row < rows; row++) {
    size_t end = cols;
    const char *lab = row == 0 ? top : row == rows - 1 ? bottom : "";

    while (end > 0 && cell[row][end - 1] == 0)
      end--;
    fprintf(f, "%s%*s ", indent, labw, lab);
    put_cp(f, *lab ? (utf8 ? 0x2524 : '+') : (utf8 ? 0x2502 : '|')); /* ┤ │ */
    for (size_t c = 0; c < end; c++) {
      uint8_t b = cell[row][c];

      if (b == 0)
        fputc(' ', f);
      else if (utf8)
        put_cp(f, 0x2800u + b);
      else
        fputc(b == 1 ? '\'' : b == 2 ? '.' : ':', f); /* the top, bottom or both halves */
    }
    fputc('\n', f);
  }
  fprintf(f, "%s%*s ", indent, labw, "");
  put_cp(f, utf8 ? 0x2514 : '+'); /* └ */
  for (size_t c = 0; c < cols; c++)
    put_cp(f, utf8 ? 0x2500 : '-'); /* ─ */
  fputc('\n', f);
  snprintf(left, sizeof(left), "%.0f", xlo);
  snprintf(right, sizeof(right), "step %.0f", xhi);
  if (strlen(left) + 1 + strlen(right) <= cols)
    fprintf(f, "%s%*s  %s%*s\n", indent, labw, "", left,
            (int)(cols - strlen(left)), right);
  else
    fprintf(f, "%s%*s  %s\n", indent, labw, "", right);
  return (int)rows + 2;
}

void cli_sparkline(const double *y, size_t n, int utf8, char *buf, size_t cap) {
  static const char ascii[] = "_.-:=+*#";
  double lo = 0, hi = 0;
  size_t len = 0;

  if (cap == 0)
    return;
  buf[0] = '\0';
  if (!range(y, n, &lo, &hi)) {
    lo = hi = 0;
  }
  for (size_t i = 0; i < n; i++) {
    int level = !isfinite(y[i]) ? -1 : hi > lo ? (int)lround((y[i] - lo) / (hi - lo) * 7) : 3;
    size_t need = utf8 && level >= 0 ? 3 : 1;

    if (len + need + 1 > cap)
      break;
    if (level < 0) {
      buf[len++] = '!'; /* not a number: the run diverged there */
    } else if (utf8) {
      uint32_t cp = 0x2581u + (uint32_t)level; /* ▁ .. █ */

      buf[len++] = (char)(0xe0 | (cp >> 12));
      buf[len++] = (char)(0x80 | ((cp >> 6) & 0x3f));
      buf[len++] = (char)(0x80 | (cp & 0x3f));
    } else {
      buf[len++] = ascii[level];
    }
  }
  buf[len] = '\0';
}
