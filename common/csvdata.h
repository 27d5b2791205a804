/* CSV datasets: one sample per line, numeric columns separated by ',',
 * one column the class label (a non-negative integer), or several columns
 * the float targets (data.csv.target_columns), the others the sample's
 * values.  Spaces around a value and a '\r' before the '\n' are
 * allowed; quotes, empty fields and non-finite numbers are not.
 */
#ifndef TD_CSVDATA_H
#define TD_CSVDATA_H

#include <stddef.h>
#include <stdint.h>

#include "jobspec.h"

typedef struct td_csv_fmt {
  uint32_t columns;      /* per line: the sample's values and the label (or targets) */
  uint32_t label_column; /* 0-based, < columns; unused with targets */
  td_dtype dtype;        /* the values as decoded: TD_DTYPE_F32 or TD_DTYPE_U8 */
  uint32_t ntargets;     /* float targets instead of a label: 0 = none */
  uint32_t target_columns[TD_MAX_TARGET_COLUMNS]; /* each < columns, target k's */
} td_csv_fmt;

/* Where a line is, for messages. */
typedef struct td_csv_where {
  const char *path;
  uint64_t line;   /* 1-based, in the file */
  uint64_t offset; /* of the line's first byte (in the decompressed data) */
} td_csv_where;

/* Columns of a line (commas + 1). */
uint32_t td_csv_columns(const char *p, size_t n);

/* 1 when every field of the line is a number (so it is not a header). */
int td_csv_numeric(const char *p, size_t n);

/* Parse one line of n bytes (without its '\n'): the sample's values of
 * fmt->dtype into values, the label into *label (without targets) or the
 * ntargets floats into targets.  TD_EDATA with
 * "<path>: line L column C at offset N: expected ..., got '...'". */
int td_csv_parse_line(const td_csv_fmt *fmt, const char *p, size_t n, void *values,
                      uint64_t *label, float *targets, const td_csv_where *where, char *err,
                      size_t errlen);

#endif
