/* Reading the committed PyTorch reference vectors (tests/reference/NAME.bin,
 * the format of tests/reference/README.md) in a Check test.  The file is
 * found under $TD_SOURCE_ROOT, which meson sets for unit tests. */
#ifndef TD_TEST_REFBIN_H
#define TD_TEST_REFBIN_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define REF_MAX_RANK 4

typedef struct ref_tensor {
  char name[64];
  int rank;
  uint32_t dims[REF_MAX_RANK];
  size_t n;
  float *data; /* a copy, aligned */
} ref_tensor;

typedef struct ref_file {
  ref_tensor *t;
  uint32_t count;
} ref_file;

/* The little-endian integer of `bytes` bytes at *at, advancing it; -1 past the end. */
static inline int64_t ref_uint(const char *raw, size_t len, size_t *at, int bytes) {
  uint64_t v = 0;

  if (len - *at < (size_t)bytes)
    return -1;
  for (int i = 0; i < bytes; i++)
    v |= (uint64_t)(uint8_t)raw[*at + i] << (8 * i);
  *at += (size_t)bytes;
  return (int64_t)v;
}

static inline void ref_open(ref_file *f, const char *file) {
  static const char magic[8] = "TDREF1\n";
  const char *root = getenv("TD_SOURCE_ROOT");
  char path[512], *raw;
  size_t len, at = sizeof(magic);
  int64_t count;

  snprintf(path, sizeof(path), "%s/tests/reference/%s", root != NULL ? root : ".", file);
  ck_assert_msg(td_read_file(path, 4u << 20, &raw, &len) == 0,
                "%s: cannot read the reference vectors (set TD_SOURCE_ROOT)", path);
  ck_assert_msg(len > sizeof(magic) && memcmp(raw, magic, sizeof(magic)) == 0,
                "%s: not a reference file", path);
  count = ref_uint(raw, len, &at, 4);
  ck_assert_msg(count > 0 && count < 100000, "%s: bad tensor count", path);
  f->count = (uint32_t)count;
  f->t = calloc(f->count, sizeof(*f->t));
  ck_assert_ptr_nonnull(f->t);
  for (uint32_t i = 0; i < f->count; i++) {
    ref_tensor *t = &f->t[i];
    int64_t nl = ref_uint(raw, len, &at, 2), rank;

    ck_assert_msg(nl > 0 && nl < (int64_t)sizeof(t->name) && len - at >= (size_t)nl,
                  "%s: tensor %u: bad name", path, i);
    memcpy(t->name, raw + at, (size_t)nl);
    at += (size_t)nl;
    rank = ref_uint(raw, len, &at, 1);
    ck_assert_msg(rank >= 0 && rank <= REF_MAX_RANK, "%s: %s: bad rank", path, t->name);
    t->rank = (int)rank;
    t->n = 1;
    for (int d = 0; d < t->rank; d++) {
      int64_t v = ref_uint(raw, len, &at, 4);
      ck_assert_msg(v > 0 && v < (1 << 20), "%s: %s: bad dimension", path, t->name);
      t->dims[d] = (uint32_t)v;
      t->n *= (size_t)v;
    }
    ck_assert_msg(t->n <= (len - at) / 4, "%s: %s: truncated", path, t->name);
    t->data = malloc(t->n * sizeof(float));
    ck_assert_ptr_nonnull(t->data);
    memcpy(t->data, raw + at, t->n * sizeof(float));
    at += t->n * 4;
  }
  ck_assert_msg(at == len, "%s: %zu trailing bytes", path, len - at);
  free(raw);
}

static inline void ref_close(ref_file *f) {
  for (uint32_t i = 0; i < f->count; i++)
    free(f->t[i].data);
  free(f->t);
}

/* The tensor prefix + name, or NULL. */
static inline const ref_tensor *ref_find(const ref_file *f, const char *prefix,
                                         const char *name) {
  char full[128];

  snprintf(full, sizeof(full), "%s%s", prefix, name);
  for (uint32_t i = 0; i < f->count; i++)
    if (strcmp(f->t[i].name, full) == 0)
      return &f->t[i];
  return NULL;
}

static inline const ref_tensor *ref_get(const ref_file *f, const char *prefix,
                                        const char *name) {
  const ref_tensor *t = ref_find(f, prefix, name);

  ck_assert_msg(t != NULL, "reference tensor %s%s is missing", prefix, name);
  return t;
}

/* The case names under a prefix ("optim/" -> "sgd", "adam", ...), each
 * once, in file order; returns how many (at most max). */
static inline size_t ref_cases(const ref_file *f, const char *prefix, char names[][32],
                               size_t max) {
  size_t n = 0, plen = strlen(prefix);

  for (uint32_t i = 0; i < f->count; i++) {
    const char *rest = f->t[i].name + plen, *slash;
    size_t len;
    bool seen = false;

    if (strncmp(f->t[i].name, prefix, plen) != 0 || (slash = strchr(rest, '/')) == NULL)
      continue;
    len = (size_t)(slash - rest);
    for (size_t j = 0; j < n && !seen; j++)
      seen = strlen(names[j]) == len && strncmp(names[j], rest, len) == 0;
    if (seen || n == max || len >= 32)
      continue;
    memcpy(names[n], rest, len);
    names[n++][len] = '\0';
  }
  return n;
}

#endif
