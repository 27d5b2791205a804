/* "key=value" fields of a worker's event lines, as traind reads them:
 *
 *   progress epoch=1 step=3 loss=0.5 msg=out of memory at step 3
 *
 * A key matches at the start of the line or after a space, followed by
 * '='; the first match counts.  A value ends at the next space, except
 * msg's, which runs to the end of the line.
 */
#ifndef TD_KVLINE_H
#define TD_KVLINE_H

#include <stddef.h>
#include <stdint.h>

/* Copy key's value into out (cap bytes, NUL-terminated, cut to fit).
 * key is a word without spaces or '='.  TD_ENOENT when the line has no
 * such key (an empty key included), TD_EINVAL for cap 0; out is written
 * only on success. */
int td_kv_get(const char *line, const char *key, char *out, size_t cap);

/* key's value as a decimal integer (what strtoull takes, all of it), or
 * dflt when it is missing, empty, not a number or out of range. */
uint64_t td_kv_u64(const char *line, const char *key, uint64_t dflt);

/* key's value as a number (what strtod takes at its start: "nan" and
 * "inf" too), or dflt when it is missing or does not start with one. */
double td_kv_f64(const char *line, const char *key, double dflt);

#endif
