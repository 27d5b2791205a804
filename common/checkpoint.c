#include "checkpoint.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "error.h"
#include "util.h"

typedef enum { FIELD_STR, FIELD_U64, FIELD_U32, FIELD_F32, FIELD_F64 } field_type;

#define CB(k, t, m) {"cb." k, t, offsetof(td_ckpt_state, cb) + offsetof(td_cb_state, m), true}

/* The state's metadata keys, in the order the checksum covers them.  The
 * optional ones are all there or all absent (has_callbacks); the checksum
 * covers those there, so a checkpoint from before them still checks. */
static const struct {
  const char *key;
  field_type type;
  size_t off;
  bool optional;
} fields[] = {
    {"job", FIELD_STR, offsetof(td_ckpt_state, job), false},
    {"step", FIELD_U64, offsetof(td_ckpt_state, step), false},
    {"epoch", FIELD_U64, offsetof(td_ckpt_state, epoch), false},
    {"batch", FIELD_U64, offsetof(td_ckpt_state, batch), false},
    {"seed", FIELD_U64, offsetof(td_ckpt_state, seed), false},
    {"rng", FIELD_U64, offsetof(td_ckpt_state, rng), false},
    {"loss_scale", FIELD_F32, offsetof(td_ckpt_state, loss_scale), false},
    {"good_steps", FIELD_U32, offsetof(td_ckpt_state, good_steps), false},
    {"skipped", FIELD_U64, offsetof(td_ckpt_state, skipped), false},
    CB("epoch", FIELD_U32, epoch),
    CB("es_best", FIELD_F64, es_best),
    CB("es_wait", FIELD_U32, es_wait),
    CB("kb_best", FIELD_F64, kb_best),
    CB("kb_epoch", FIELD_U32, kb_epoch),
    CB("rp_best", FIELD_F64, rp_best),
    CB("rp_wait", FIELD_U32, rp_wait),
    CB("rp_cooldown", FIELD_U32, rp_cooldown),
    CB("lr_factor", FIELD_F64, lr_factor),
};

enum { NFIELDS = TD_ARRAY_SIZE(fields), VALUE_MAX = 80 };

/* format, version, the fields, crc32 */
#define NMETA (NFIELDS + 3)

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...) {
  va_list ap;

  if (err != NULL && errlen > 0) {
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return rc;
}

static void format_field(const td_ckpt_state *st, size_t i, char out[VALUE_MAX]) {
  const char *p = (const char *)st + fields[i].off;

  switch (fields[i].type) {
  case FIELD_STR:
    snprintf(out, VALUE_MAX, "%s", p);
    break;
  case FIELD_U64:
    snprintf(out, VALUE_MAX, "%" PRIu64, *(const uint64_t *)(const void *)p);
    break;
  case FIELD_U32:
    snprintf(out, VALUE_MAX, "%" PRIu32, *(const uint32_t *)(const void *)p);
    break;
  case FIELD_F32: /* 9 significant digits give the float back exactly */
    snprintf(out, VALUE_MAX, "%.9g", (double)*(const float *)(const void *)p);
    break;
  case FIELD_F64: /* and 17 the double; a best not seen yet is inf or -inf */
    snprintf(out, VALUE_MAX, "%.17g", *(const double *)(const void *)p);
    break;
  }
}

static bool parse_u64(const char *s, uint64_t *out) {
  uint64_t v = 0;

  if (*s == '\0')
    return false;
  for (; *s != '\0'; s++) {
    if (*s < '0' || *s > '9' || td_mul_u64(v, 10, &v) < 0 ||
        td_add_u64(v, (uint64_t)(*s - '0'), &v) < 0)
      return false;
  }
  *out = v;
  return true;
}

static bool parse_field(const char *s, size_t i, td_ckpt_state *st) {
  char *p = (char *)st + fields[i].off, *end;
  uint64_t v;
  float f;

  switch (fields[i].type) {
  case FIELD_STR:
    return td_strlcpy(p, s, TD_CKPT_NAME_MAX) == 0;
  case FIELD_U64:
    if (!parse_u64(s, &v))
      return false;
    memcpy(p, &v, sizeof(v));
    return true;
  case FIELD_U32: {
    uint32_t u;
    if (!parse_u64(s, &v) || v > UINT32_MAX)
      return false;
    u = (uint32_t)v;
    memcpy(p, &u, sizeof(u));
    return true;
  }
  case FIELD_F32:
    errno = 0;
    f = strtof(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !(f > 0.0f && isfinite(f)))
      return false;
    memcpy(p, &f, sizeof(f));
    return true;
  case FIELD_F64: {
    double d;

    errno = 0;
    d = strtod(s, &end);
    if (end == s || *end != '\0' || isnan(d) || (errno != 0 && !isinf(d)))
      return false;
    memcpy(p, &d, sizeof(d));
    return true;
  }
  }
  return false;
}

static uLong crc_bytes(uLong crc, const void *p, uint64_t n) {
  const Bytef *b = p;

  /* zlib takes uInt lengths */
  while (n > 0) {
    uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
    crc = crc32(crc, b, chunk);
    b += chunk;
    n -= chunk;
  }
  return crc;
}

static uLong crc_str(uLong crc, const char *s) { return crc_bytes(crc, s, strlen(s) + 1); }

static uLong crc_u64(uLong crc, uint64_t v) {
  uint8_t le[8];

  for (int i = 0; i < 8; i++)
    le[i] = (uint8_t)(v >> (8 * i));
  return crc_bytes(crc, le, sizeof(le));
}

/* The checksum of the metadata (key, value pairs in meta's order, the crc
 * itself left out) and of the tensors: name, dtype, rank, shape, data. */
static void checksum(const td_st_meta *meta, size_t nmeta, const td_st_tensor *t, size_t n,
                     char out[9]) {
  uLong crc = crc32(0L, Z_NULL, 0);

  for (size_t i = 0; i < nmeta; i++) {
    crc = crc_str(crc, meta[i].key);
    crc = crc_str(crc, meta[i].value);
  }
  for (size_t i = 0; i < n; i++) {
    crc = crc_str(crc, t[i].name);
    crc = crc_str(crc, t[i].dtype);
    crc = crc_u64(crc, t[i].rank);
    for (uint32_t d = 0; d < t[i].rank; d++)
      crc = crc_u64(crc, t[i].shape[d]);
    crc = crc_bytes(crc, t[i].data, t[i].bytes);
  }
  snprintf(out, 9, "%08lx", (unsigned long)(crc & 0xffffffffu));
}

static void version_string(char out[24]) { snprintf(out, 24, "%d", TD_CKPT_VERSION); }

int td_checkpoint_write(const char *path, const td_ckpt_state *st, const td_ckpt_tensor *t,
                        size_t n, char *err, size_t errlen) {
  char values[NFIELDS][VALUE_MAX], version[24], crc[9];
  td_st_meta meta[NMETA];
  td_st_tensor *st_t;
  size_t nmeta = 2;
  int rc;

  if (memchr(st->job, '\0', sizeof(st->job)) == NULL)
    return fail(err, errlen, TD_EINVAL, "checkpoint: the job name is not terminated");
  if (!(st->loss_scale > 0.0f && isfinite(st->loss_scale)))
    return fail(err, errlen, TD_EINVAL, "checkpoint: loss scale %g is not a finite number > 0",
                (double)st->loss_scale);
  for (size_t i = 0; i < n; i++) {
    if (t[i].name == NULL || t[i].name[0] == '\0')
      return fail(err, errlen, TD_EINVAL, "checkpoint: tensor %zu has no name", i);
    for (size_t j = 0; j < i; j++)
      if (strcmp(t[i].name, t[j].name) == 0)
        return fail(err, errlen, TD_EINVAL, "checkpoint: tensor '%s' appears twice",
                    t[i].name);
  }
  if ((st_t = calloc(n > 0 ? n : 1, sizeof(*st_t))) == NULL)
    return fail(err, errlen, TD_ENOMEM, "checkpoint: out of memory");
  for (size_t i = 0; i < n; i++)
    st_t[i] = (td_st_tensor){.name = t[i].name, .dtype = t[i].dtype, .rank = t[i].rank,
                             .data = t[i].data, .bytes = t[i].bytes};
  for (size_t i = 0; i < n; i++)
    memcpy(st_t[i].shape, t[i].shape, sizeof(st_t[i].shape));

  version_string(version);
  meta[0] = (td_st_meta){"format", TD_CKPT_FORMAT};
  meta[1] = (td_st_meta){"version", version};
  for (size_t i = 0; i < NFIELDS; i++) {
    if (fields[i].optional && !st->has_callbacks)
      continue;
    format_field(st, i, values[i]);
    meta[nmeta++] = (td_st_meta){fields[i].key, values[i]};
  }
  checksum(meta, nmeta, st_t, n, crc);
  meta[nmeta++] = (td_st_meta){"crc32", crc};

  rc = td_safetensors_write(path, st_t, n, meta, nmeta);
  if (rc == TD_EINVAL)
    fail(err, errlen, rc, "checkpoint: a tensor has an unknown dtype, a rank over %d or a "
         "byte count that does not match its shape", TD_ST_MAX_RANK);
  else if (rc < 0)
    fail(err, errlen, rc, "cannot write the checkpoint %s: %s", path, td_strerror(rc));
  free(st_t);
  return rc;
}

static void shape_text(const uint64_t *shape, uint32_t rank, char *out, size_t cap) {
  size_t len = 0;

  out[0] = '\0';
  len += (size_t)snprintf(out, cap, "[");
  for (uint32_t d = 0; d < rank && len < cap; d++)
    len += (size_t)snprintf(out + len, cap - len, d > 0 ? ", %" PRIu64 : "%" PRIu64, shape[d]);
  if (len < cap)
    snprintf(out + len, cap - len, "]");
}

/* That the file holds exactly the n expected tensors, as expected. */
static int check_tensors(const td_st_file *f, const td_ckpt_tensor *t, size_t n, char *err,
                         size_t errlen) {
  size_t have = td_safetensors_count(f);

  for (size_t i = 0; i < n; i++) {
    char want_s[160], got_s[160];
    td_st_tensor got;

    if (td_safetensors_find(f, t[i].name, &got) < 0)
      return fail(err, errlen, TD_EDATA, "checkpoint has no tensor '%s' (a different model "
                  "or optimiser?)", t[i].name);
    if (strcmp(got.dtype, t[i].dtype) != 0)
      return fail(err, errlen, TD_EDATA, "checkpoint tensor '%s' is %s, expected %s",
                  t[i].name, got.dtype, t[i].dtype);
    if (got.rank != t[i].rank || got.bytes != t[i].bytes ||
        memcmp(got.shape, t[i].shape, t[i].rank * sizeof(uint64_t)) != 0) {
      shape_text(got.shape, got.rank, got_s, sizeof(got_s));
      shape_text(t[i].shape, t[i].rank, want_s, sizeof(want_s));
      return fail(err, errlen, TD_EDATA, "checkpoint tensor '%s' has shape %s, expected %s",
                  t[i].name, got_s, want_s);
    }
  }
  /* The names are distinct in the file, so n of them found means no more
   * unless the file has others. */
  if (have != n) {
    for (size_t i = 0; i < have; i++) {
      td_st_tensor got;
      bool known = false;

      td_safetensors_get(f, i, &got);
      for (size_t j = 0; j < n && !known; j++)
        known = strcmp(got.name, t[j].name) == 0;
      if (!known)
        return fail(err, errlen, TD_EDATA, "checkpoint has an unexpected tensor '%s' (a "
                    "different model or optimiser?)", got.name);
    }
  }
  return 0;
}

int td_checkpoint_parse(const void *buf, size_t len, td_ckpt_state *st,
                        const td_ckpt_tensor *t, size_t n, char *err, size_t errlen) {
  const char *values[NFIELDS], *fmt, *ver, *crc_file;
  char crc[9], why[256];
  td_st_meta meta[NMETA];
  td_st_tensor *all = NULL;
  uint64_t hlen = 0, data_len, sum = 0, v;
  td_ckpt_state out = {0};
  td_st_file *f;
  size_t have, nmeta = 2, noptional = 0, optional_there = 0;
  int rc;

  if ((rc = td_safetensors_parse(buf, len, &f, why, sizeof(why))) < 0)
    return rc == TD_ENOMEM ? fail(err, errlen, rc, "checkpoint: out of memory")
                           : fail(err, errlen, TD_EDATA, "checkpoint is damaged: %s", why);
  rc = TD_EDATA;
  fmt = td_safetensors_meta(f, "format");
  ver = td_safetensors_meta(f, "version");
  if (fmt == NULL || strcmp(fmt, TD_CKPT_FORMAT) != 0) {
    fail(err, errlen, rc, "not a traind checkpoint (a safetensors file without the '%s' "
         "format tag)", TD_CKPT_FORMAT);
    goto free_file;
  }
  if (ver == NULL || !parse_u64(ver, &v)) {
    fail(err, errlen, rc, "checkpoint is damaged: its format version is missing or not a "
         "number");
    goto free_file;
  }
  if (v != TD_CKPT_VERSION) {
    rc = fail(err, errlen, TD_EVERSION, "checkpoint format version %" PRIu64 " cannot be "
              "read: this traind reads version %d", v, TD_CKPT_VERSION);
    goto free_file;
  }
  for (size_t i = 0; i < NFIELDS; i++) {
    values[i] = td_safetensors_meta(f, fields[i].key);
    noptional += fields[i].optional;
    optional_there += fields[i].optional && values[i] != NULL;
    if (values[i] == NULL && !fields[i].optional) {
      fail(err, errlen, rc, "checkpoint is damaged: metadata '%s' is missing", fields[i].key);
      goto free_file;
    }
  }
  if (optional_there > 0 && optional_there < noptional) {
    fail(err, errlen, rc, "checkpoint is damaged: it holds %zu of the %zu callback values",
         optional_there, noptional);
    goto free_file;
  }
  if ((crc_file = td_safetensors_meta(f, "crc32")) == NULL) {
    fail(err, errlen, rc, "checkpoint is damaged: it has no checksum");
    goto free_file;
  }

  /* The checksum, over what the writer covered, before any value is used. */
  have = td_safetensors_count(f);
  if ((all = calloc(have > 0 ? have : 1, sizeof(*all))) == NULL) {
    rc = fail(err, errlen, TD_ENOMEM, "checkpoint: out of memory");
    goto free_file;
  }
  for (size_t i = 0; i < have; i++) {
    td_safetensors_get(f, i, &all[i]);
    sum += all[i].bytes; /* no overflow: each lies within the file */
  }
  meta[0] = (td_st_meta){"format", fmt};
  meta[1] = (td_st_meta){"version", ver};
  for (size_t i = 0; i < NFIELDS; i++)
    if (values[i] != NULL)
      meta[nmeta++] = (td_st_meta){fields[i].key, values[i]};
  checksum(meta, nmeta, all, have, crc);
  if (strcmp(crc, crc_file) != 0) {
    fail(err, errlen, rc, "checkpoint is damaged: checksum %s, the contents give %s",
         crc_file, crc);
    goto free_all;
  }
  /* The tensors fill the data section: no byte outside the checksum. */
  for (int i = 0; i < 8; i++)
    hlen |= (uint64_t)((const uint8_t *)buf)[i] << (8 * i);
  data_len = len - 8 - hlen; /* the parser checked hlen <= len - 8 */
  if (sum != data_len) {
    fail(err, errlen, rc, "checkpoint is damaged: %" PRIu64 " data bytes, its tensors "
         "account for %" PRIu64, data_len, sum);
    goto free_all;
  }

  out.has_callbacks = optional_there > 0;
  for (size_t i = 0; i < NFIELDS; i++) {
    if (values[i] != NULL && !parse_field(values[i], i, &out)) {
      fail(err, errlen, rc, "checkpoint is damaged: metadata '%s' has a bad value '%.40s'",
           fields[i].key, values[i]);
      goto free_all;
    }
  }
  if (out.has_callbacks && !(out.cb.lr_factor > 0.0 && out.cb.lr_factor <= 1.0)) {
    fail(err, errlen, rc, "checkpoint is damaged: learning-rate factor %g is not in (0, 1]",
         out.cb.lr_factor);
    goto free_all;
  }
  if ((rc = check_tensors(f, t, n, err, errlen)) < 0)
    goto free_all;
  for (size_t i = 0; i < n; i++) {
    td_st_tensor got;

    td_safetensors_find(f, t[i].name, &got);
    if (got.bytes > 0)
      memcpy(t[i].data, got.data, got.bytes);
  }
  *st = out;
  rc = 0;
free_all:
  free(all);
free_file:
  td_safetensors_free(f);
  return rc;
}

int td_checkpoint_read(const char *path, td_ckpt_state *st, const td_ckpt_tensor *t,
                       size_t n, char *err, size_t errlen) {
  uint64_t max = 8 + TD_ST_MAX_HEADER;
  char *buf;
  size_t len;
  int rc;

  for (size_t i = 0; i < n; i++)
    if (td_add_u64(max, t[i].bytes, &max) < 0)
      return fail(err, errlen, TD_ETOOBIG, "checkpoint: the expected tensors are too large");
  if ((rc = td_read_file(path, max > SIZE_MAX ? SIZE_MAX : (size_t)max, &buf, &len)) < 0)
    return fail(err, errlen, rc, "cannot read the checkpoint %s: %s", path,
                rc == TD_ENOENT ? "no such file" : td_strerror(rc));
  rc = td_checkpoint_parse(buf, len, st, t, n, err, errlen);
  free(buf);
  if (rc < 0 && err != NULL && errlen > 0) {
    char msg[512];
    snprintf(msg, sizeof(msg), "%s: %s", path, err);
    td_strlcpy(err, msg, errlen);
  }
  return rc;
}

bool td_checkpoint_due(const td_ckpt_policy *p, uint64_t step, double now, uint64_t last_step,
                       double last_time) {
  if (step <= last_step)
    return false;
  return (p->every_steps > 0 && step - last_step >= p->every_steps) ||
         (p->every_seconds > 0.0 && now - last_time >= p->every_seconds);
}
