/* Values on the command line: ids, counts, priorities, sizes, seconds.
 * Bounds that the protocol sets come from its catalogue, so the client
 * refuses, with a usage error, exactly what traind would refuse. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "error.h"
#include "util.h"

int cli_field_bounds(const char *op, const char *field, double *min, double *max) {
  const td_msgdef *def = td_proto_find(op, strlen(op));
  size_t i;

  for (i = 0; def != NULL && i < def->nfields; i++)
    if (strcmp(def->fields[i].name, field) == 0) {
      *min = def->fields[i].min;
      *max = def->fields[i].max;
      return 0;
    }
  return TD_ENOENT;
}

static int in_bounds(double v, double min, double max) {
  return v >= min && v <= max;
}

int cli_check_str(const char *op, const char *field, const char *s, size_t *max) {
  double lo = 1, hi = 0;
  size_t n = strlen(s);

  cli_field_bounds(op, field, &lo, &hi);
  *max = (size_t)hi;
  if (n == 0 || (double)n < lo)
    return TD_EINVAL;
  return (double)n > hi ? TD_ETOOBIG : 0;
}

int cli_parse_uint(const char *s, double min, double max, uint64_t *out) {
  unsigned long long v;
  char *end;

  if (*s < '0' || *s > '9') /* strtoull takes "-1" and " 1" */
    return TD_EINVAL;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (*end != '\0')
    return TD_EINVAL;
  if (errno != 0 || !in_bounds((double)v, min, max))
    return TD_ETOOBIG;
  *out = v;
  return 0;
}

int cli_parse_int(const char *s, double min, double max, int64_t *out) {
  const char *digits = s + (*s == '-' || (*s == '+' && min < 0));
  long long v;
  char *end;

  if (*digits < '0' || *digits > '9' || (*s == '-' && min >= 0))
    return TD_EINVAL;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (*end != '\0')
    return TD_EINVAL;
  if (errno != 0 || !in_bounds((double)v, min, max))
    return TD_ETOOBIG;
  *out = v;
  return 0;
}

int cli_parse_size(const char *s, double min, double max, uint64_t *out) {
  uint64_t v;
  int rc = td_parse_size(s, &v);

  if (rc != 0)
    return rc;
  if (!in_bounds((double)v, min, max))
    return TD_ETOOBIG;
  *out = v;
  return 0;
}

int cli_parse_seconds(const char *s, double *out) {
  char *end;
  double v;

  if ((*s < '0' || *s > '9') && *s != '.')
    return TD_EINVAL;
  errno = 0;
  v = strtod(s, &end);
  if (errno != 0 || end == s || *end != '\0' || !isfinite(v))
    return TD_EINVAL;
  if (v * 1000.0 > (double)INT_MAX)
    return TD_ETOOBIG;
  *out = v;
  return 0;
}
