#include "kvline.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

int td_kv_get(const char *line, const char *key, char *out, size_t cap) {
  size_t klen = strlen(key);
  const char *p = line;

  if (cap == 0)
    return TD_EINVAL;
  if (klen == 0) /* strstr would find it everywhere and never move on */
    return TD_ENOENT;
  while ((p = strstr(p, key)) != NULL) {
    if ((p == line || p[-1] == ' ') && p[klen] == '=') {
      const char *v = p + klen + 1;
      size_t n = strcmp(key, "msg") == 0 ? strlen(v) : strcspn(v, " ");
      if (n >= cap)
        n = cap - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return 0;
    }
    p += klen;
  }
  return TD_ENOENT;
}

uint64_t td_kv_u64(const char *line, const char *key, uint64_t dflt) {
  char v[32];
  char *end;
  unsigned long long x;

  if (td_kv_get(line, key, v, sizeof(v)) < 0)
    return dflt;
  errno = 0;
  x = strtoull(v, &end, 10);
  return end == v || *end != '\0' || errno != 0 ? dflt : (uint64_t)x;
}

double td_kv_f64(const char *line, const char *key, double dflt) {
  char v[64];
  char *end;
  double x;

  if (td_kv_get(line, key, v, sizeof(v)) < 0)
    return dflt;
  x = strtod(v, &end);
  return end == v ? dflt : x;
}
