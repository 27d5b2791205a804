#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "util.h"

#define ST_MAX_DEPTH 16 /* nesting a reader skips through in unknown values */

static const struct {
  const char *name;
  uint32_t size;
} dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
    {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
    {"U16", 2}, {"U8", 1},  {"BOOL", 1},
};

/* The table's own spelling of name, and its element size; NULL if unknown. */
static const char *dtype_lookup(const char *name, size_t len, uint32_t *size) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(dtypes); i++) {
    if (strlen(dtypes[i].name) == len && memcmp(dtypes[i].name, name, len) == 0) {
      *size = dtypes[i].size;
      return dtypes[i].name;
    }
  }
  return NULL;
}

static int shape_bytes(uint32_t rank, const uint64_t *shape, uint32_t elem, uint64_t *out) {
  uint64_t n = elem;

  for (uint32_t d = 0; d < rank; d++)
    if (td_mul_u64(n, shape[d], &n) < 0)
      return TD_ETOOBIG;
  *out = n;
  return 0;
}

/* A growable text buffer for the header. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
  int err;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->err != 0)
    return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    char *p;
    while (cap < b->len + n + 1)
      cap *= 2;
    if ((p = realloc(b->p, cap)) == NULL) {
      b->err = TD_ENOMEM;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void sb_json_string(sbuf *b, const char *s) {
  sb_put(b, "\"", 1);
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      sb_put(b, esc, 2);
    } else if (c < 0x20) {
      sb_printf(b, "\\u%04x", c);
    } else {
      sb_put(b, s, 1);
    }
  }
  sb_put(b, "\"", 1);
}

int td_safetensors_write(const char *path, const td_st_tensor *tensors, size_t n,
                         const td_st_meta *meta, size_t nmeta) {
  sbuf h = {0};
  uint64_t off = 0, hlen, total;
  uint8_t *file;
  int rc;

  sb_put(&h, "{", 1);
  if (nmeta > 0) {
    sb_put(&h, "\"__metadata__\":{", 16);
    for (size_t i = 0; i < nmeta; i++) {
      if (i > 0)
        sb_put(&h, ",", 1);
      sb_json_string(&h, meta[i].key);
      sb_put(&h, ":", 1);
      sb_json_string(&h, meta[i].value);
    }
    sb_put(&h, "}", 1);
  }
  for (size_t i = 0; i < n; i++) {
    const td_st_tensor *t = &tensors[i];
    uint64_t bytes;
    uint32_t elem;

    rc = TD_EINVAL;
    if (t->name == NULL || t->name[0] == '\0' || strcmp(t->name, "__metadata__") == 0 ||
        t->dtype == NULL || t->rank > TD_ST_MAX_RANK ||
        dtype_lookup(t->dtype, strlen(t->dtype), &elem) == NULL ||
        shape_bytes(t->rank, t->shape, elem, &bytes) < 0 || bytes != t->bytes)
      goto free_header;
    for (size_t j = 0; j < i; j++)
      if (strcmp(tensors[j].name, t->name) == 0)
        goto free_header;
    if (i > 0 || nmeta > 0)
      sb_put(&h, ",", 1);
    sb_json_string(&h, t->name);
    sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", t->dtype);
    for (uint32_t d = 0; d < t->rank; d++)
      sb_printf(&h, d > 0 ? ",%llu" : "%llu", (unsigned long long)t->shape[d]);
    sb_printf(&h, "],\"data_offsets\":[%llu,", (unsigned long long)off);
    if ((rc = td_add_u64(off, bytes, &off)) < 0)
      goto free_header;
    sb_printf(&h, "%llu]}", (unsigned long long)off);
  }
  sb_put(&h, "}", 1);
  while (h.err == 0 && h.len % 8 != 0)
    sb_put(&h, " ", 1);
  if ((rc = h.err) < 0)
    goto free_header;

  hlen = h.len;
  if ((rc = td_add_u64(8 + hlen, off, &total)) < 0)
    goto free_header;
  if (total > SIZE_MAX || (file = malloc((size_t)total)) == NULL) {
    rc = TD_ENOMEM;
    goto free_header;
  }
  for (int i = 0; i < 8; i++)
    file[i] = (uint8_t)(hlen >> (8 * i));
  memcpy(file + 8, h.p, h.len);
  off = 8 + hlen;
  for (size_t i = 0; i < n; i++) {
    if (tensors[i].bytes > 0)
      memcpy(file + off, tensors[i].data, tensors[i].bytes);
    off += tensors[i].bytes;
  }
  rc = td_write_file_atomic(path, file, (size_t)total);
  free(file);
free_header:
  free(h.p);
  return rc;
}

/* Reader */

typedef struct st_entry {
  char *name;
  const char *dtype; /* from the table */
  uint32_t elem;
  uint32_t rank;
  uint64_t shape[TD_ST_MAX_RANK];
  uint64_t begin, end;
} st_entry;

typedef struct st_meta {
  char *key, *value;
} st_meta;

struct td_st_file {
  uint8_t *buf;
  size_t len;
  const uint8_t *data; /* after the header */
  uint64_t data_len;
  st_entry *ents;
  size_t nents, cap_ents;
  st_meta *meta;
  size_t nmeta, cap_meta;
};

typedef struct jcur {
  const char *p, *end;
  char *err;
  size_t errlen;
} jcur;

static int jfail(jcur *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int jfail(jcur *c, const char *fmt, ...) {
  va_list ap;

  if (c->err != NULL && c->errlen > 0) {
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
  }
  return TD_EDATA;
}

static void jws(jcur *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
    c->p++;
}

static bool jeat(jcur *c, char ch) {
  jws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return true;
  }
  return false;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

static int jhex4(jcur *c, unsigned *out) {
  unsigned v = 0;

  if (c->end - c->p < 4)
    return jfail(c, "truncated \\u escape in the header");
  for (int i = 0; i < 4; i++) {
    int h = hexval(c->p[i]);
    if (h < 0)
      return jfail(c, "bad \\u escape in the header");
    v = v * 16 + (unsigned)h;
  }
  c->p += 4;
  *out = v;
  return 0;
}

static size_t utf8_put(char *dst, unsigned cp) {
  if (cp < 0x80) {
    dst[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    dst[0] = (char)(0xC0 | (cp >> 6));
    dst[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    dst[0] = (char)(0xE0 | (cp >> 12));
    dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  dst[0] = (char)(0xF0 | (cp >> 18));
  dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  dst[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* A JSON string, decoded into a malloc'd copy (or just skipped if out is
 * NULL).  Decoded text is never longer than its escaped form. */
static int jstring(jcur *c, char **out) {
  const char *start;
  char *s = NULL;
  size_t n = 0;
  int rc;

  if (!jeat(c, '"'))
    return jfail(c, "expected a string in the header");
  start = c->p;
  while (c->p < c->end && *c->p != '"')
    c->p += *c->p == '\\' && c->p + 1 < c->end ? 2 : 1;
  if (c->p >= c->end)
    return jfail(c, "unterminated string in the header");
  if (out == NULL) {
    c->p++;
    return 0;
  }
  if ((s = malloc((size_t)(c->p - start) + 1)) == NULL)
    return TD_ENOMEM;
  c->p = start;
  while (*c->p != '"') {
    char ch = *c->p++;
    unsigned cp, lo;

    if ((unsigned char)ch < 0x20) {
      rc = jfail(c, "control character in a header string");
      goto free_s;
    }
    if (ch != '\\') {
      s[n++] = ch;
      continue;
    }
    ch = *c->p++;
    switch (ch) {
    case '"': case '\\': case '/': s[n++] = ch; break;
    case 'b': s[n++] = '\b'; break;
    case 'f': s[n++] = '\f'; break;
    case 'n': s[n++] = '\n'; break;
    case 'r': s[n++] = '\r'; break;
    case 't': s[n++] = '\t'; break;
    case 'u':
      if ((rc = jhex4(c, &cp)) < 0)
        goto free_s;
      /* A surrogate pair is 12 escaped bytes for 4 decoded ones. */
      if (cp >= 0xD800 && cp < 0xDC00 && c->end - c->p >= 6 && c->p[0] == '\\' &&
          c->p[1] == 'u') {
        c->p += 2;
        if ((rc = jhex4(c, &lo)) < 0)
          goto free_s;
        if (lo < 0xDC00 || lo > 0xDFFF) {
          rc = jfail(c, "bad surrogate pair in a header string");
          goto free_s;
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xD800 && cp < 0xE000) {
        rc = jfail(c, "lone surrogate in a header string");
        goto free_s;
      }
      if (cp == 0) {
        rc = jfail(c, "NUL in a header string");
        goto free_s;
      }
      n += utf8_put(s + n, cp);
      break;
    default:
      rc = jfail(c, "bad escape '\\%c' in a header string", ch);
      goto free_s;
    }
  }
  c->p++;
  s[n] = '\0';
  *out = s;
  return 0;

free_s:
  free(s);
  return rc;
}

/* A member's name (decoded into *out, or skipped if out is NULL) and its ':'. */
static int jkey(jcur *c, char **out) {
  int rc = jstring(c, out);

  if (rc < 0)
    return rc;
  if (!jeat(c, ':')) {
    if (out != NULL)
      free(*out);
    return jfail(c, "expected ':' after a name in the header");
  }
  return 0;
}

/* arr with room for element n: itself, a larger copy, or NULL (arr kept). */
static void *grow(void *arr, size_t *cap, size_t n, size_t elem) {
  size_t ncap = *cap ? *cap * 2 : 16;
  void *p;

  if (n < *cap)
    return arr;
  if ((p = realloc(arr, ncap * elem)) != NULL)
    *cap = ncap;
  return p;
}

static int ju64(jcur *c, uint64_t *out) {
  uint64_t v = 0;
  const char *start;

  jws(c);
  start = c->p;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    if (td_mul_u64(v, 10, &v) < 0 || td_add_u64(v, (uint64_t)(*c->p - '0'), &v) < 0)
      return jfail(c, "number too large in the header");
    c->p++;
  }
  if (c->p == start)
    return jfail(c, "expected a non-negative integer in the header");
  *out = v;
  return 0;
}

/* Any JSON value, skipped. */
static int jskip(jcur *c, int depth) {
  int rc;

  if (depth > ST_MAX_DEPTH)
    return jfail(c, "header nested too deeply");
  jws(c);
  if (c->p >= c->end)
    return jfail(c, "truncated header");
  if (*c->p == '"')
    return jstring(c, NULL);
  if (*c->p == '{' || *c->p == '[') {
    char close = *c->p == '{' ? '}' : ']';
    c->p++;
    if (jeat(c, close))
      return 0;
    do {
      if (close == '}' && (rc = jkey(c, NULL)) < 0)
        return rc;
      if ((rc = jskip(c, depth + 1)) < 0)
        return rc;
    } while (jeat(c, ','));
    return jeat(c, close) ? 0 : jfail(c, "expected '%c' in the header", close);
  }
  {
    /* a number, true, false or null */
    const char *start = c->p;
    while (c->p < c->end && ((*c->p >= '0' && *c->p <= '9') || (*c->p >= 'a' && *c->p <= 'z') ||
                             *c->p == '+' || *c->p == '-' || *c->p == '.' || *c->p == 'E'))
      c->p++;
    return c->p > start ? 0 : jfail(c, "unexpected '%c' in the header", *c->p);
  }
}

/* [n, n, ...] into v (at most max); *count gets how many. */
static int ju64_array(jcur *c, uint64_t *v, uint32_t max, uint32_t *count) {
  uint32_t n = 0;
  int rc;

  if (!jeat(c, '['))
    return jfail(c, "expected '[' in the header");
  if (!jeat(c, ']')) {
    do {
      if (n == max)
        return jfail(c, "more than %u numbers in a header array", max);
      if ((rc = ju64(c, &v[n++])) < 0)
        return rc;
    } while (jeat(c, ','));
    if (!jeat(c, ']'))
      return jfail(c, "expected ']' in the header");
  }
  *count = n;
  return 0;
}

static int parse_tensor(jcur *c, td_st_file *f, st_entry *e) {
  bool have_dtype = false, have_shape = false, have_offsets = false;
  uint64_t offs[2] = {0, 0}, bytes;
  uint32_t n = 0;
  char *key, *dt;
  int rc;

  if (!jeat(c, '{'))
    return jfail(c, "tensor '%s': expected an object", e->name);
  if (!jeat(c, '}')) {
    do {
      if ((rc = jkey(c, &key)) < 0)
        return rc;
      if (strcmp(key, "dtype") == 0) {
        free(key);
        if ((rc = jstring(c, &dt)) < 0)
          return rc;
        e->dtype = dtype_lookup(dt, strlen(dt), &e->elem);
        rc = e->dtype == NULL ? jfail(c, "tensor '%s': unknown dtype '%.16s'", e->name, dt) : 0;
        free(dt);
        have_dtype = true;
      } else if (strcmp(key, "shape") == 0) {
        free(key);
        rc = ju64_array(c, e->shape, TD_ST_MAX_RANK, &e->rank);
        have_shape = true;
      } else if (strcmp(key, "data_offsets") == 0) {
        free(key);
        rc = ju64_array(c, offs, 2, &n);
        if (rc == 0 && n != 2)
          rc = jfail(c, "tensor '%s': data_offsets needs 2 numbers", e->name);
        have_offsets = true;
      } else {
        free(key);
        rc = jskip(c, 1);
      }
      if (rc < 0)
        return rc;
    } while (jeat(c, ','));
    if (!jeat(c, '}'))
      return jfail(c, "tensor '%s': expected '}'", e->name);
  }
  if (!have_dtype || !have_shape || !have_offsets)
    return jfail(c, "tensor '%s': needs dtype, shape and data_offsets", e->name);
  e->begin = offs[0];
  e->end = offs[1];
  if (e->begin > e->end || e->end > f->data_len)
    return jfail(c, "tensor '%s': data_offsets [%llu, %llu] outside the %llu data bytes",
                 e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                 (unsigned long long)f->data_len);
  if (shape_bytes(e->rank, e->shape, e->elem, &bytes) < 0 || bytes != e->end - e->begin)
    return jfail(c, "tensor '%s': %llu data bytes do not match its shape and dtype", e->name,
                 (unsigned long long)(e->end - e->begin));
  return 0;
}

static int parse_meta(jcur *c, td_st_file *f) {
  int rc;

  if (!jeat(c, '{'))
    return jfail(c, "__metadata__ must be an object of strings");
  if (jeat(c, '}'))
    return 0;
  do {
    st_meta m = {0}, *more = grow(f->meta, &f->cap_meta, f->nmeta, sizeof(m));

    if (more == NULL)
      return TD_ENOMEM;
    f->meta = more;
    if ((rc = jkey(c, &m.key)) < 0)
      return rc;
    if ((rc = jstring(c, &m.value)) < 0) {
      free(m.key);
      return rc;
    }
    f->meta[f->nmeta++] = m;
  } while (jeat(c, ','));
  return jeat(c, '}') ? 0 : jfail(c, "expected '}' after __metadata__");
}

static int parse_header(jcur *c, td_st_file *f) {
  int rc;

  if (!jeat(c, '{'))
    return jfail(c, "the header is not a JSON object");
  if (jeat(c, '}'))
    goto tail;
  do {
    st_entry *more;
    char *name;

    if ((rc = jkey(c, &name)) < 0)
      return rc;
    if (strcmp(name, "__metadata__") == 0) {
      free(name);
      if ((rc = parse_meta(c, f)) < 0)
        return rc;
      continue;
    }
    for (size_t i = 0; i < f->nents; i++) {
      if (strcmp(f->ents[i].name, name) == 0) {
        rc = jfail(c, "tensor '%s' appears twice", name);
        free(name);
        return rc;
      }
    }
    more = grow(f->ents, &f->cap_ents, f->nents, sizeof(*more));
    if (more == NULL) {
      free(name);
      return TD_ENOMEM;
    }
    f->ents = more;
    f->ents[f->nents] = (st_entry){.name = name};
    /* Counted now so that free releases the name even if the entry is bad. */
    if ((rc = parse_tensor(c, f, &f->ents[f->nents++])) < 0)
      return rc;
  } while (jeat(c, ','));
  if (!jeat(c, '}'))
    return jfail(c, "expected '}' at the end of the header");
tail:
  jws(c);
  return c->p == c->end ? 0 : jfail(c, "bytes after the header's JSON object");
}

/* buf holds the file's first len bytes of file_len: all of it, or (len <
 * file_len) its header alone, whose tensors then have no data. */
static int parse_file(const void *buf, size_t len, uint64_t file_len, td_st_file **out,
                      char *err, size_t errlen) {
  jcur c = {.err = err, .errlen = errlen};
  const uint8_t *b = buf;
  td_st_file *f;
  uint64_t hlen = 0;
  int rc;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (file_len < 8 || len < 8)
    return jfail(&c, "%llu bytes: too short for a safetensors file",
                 (unsigned long long)file_len);
  for (int i = 0; i < 8; i++)
    hlen |= (uint64_t)b[i] << (8 * i);
  if (hlen > TD_ST_MAX_HEADER || hlen > file_len - 8 || hlen > len - 8)
    return jfail(&c, "header length %llu exceeds the file (%llu bytes) or the %llu-byte limit",
                 (unsigned long long)hlen, (unsigned long long)file_len,
                 (unsigned long long)TD_ST_MAX_HEADER);
  if ((f = calloc(1, sizeof(*f))) == NULL)
    return TD_ENOMEM;
  if ((f->buf = malloc(len)) == NULL) {
    rc = TD_ENOMEM;
    goto free_file;
  }
  memcpy(f->buf, buf, len);
  f->len = len;
  f->data = len == file_len ? f->buf + 8 + hlen : NULL;
  f->data_len = file_len - 8 - hlen;
  c.p = (const char *)f->buf + 8;
  c.end = c.p + hlen;
  if ((rc = parse_header(&c, f)) < 0)
    goto free_file;
  *out = f;
  return 0;

free_file:
  td_safetensors_free(f);
  return rc;
}

int td_safetensors_parse(const void *buf, size_t len, td_st_file **out, char *err,
                         size_t errlen) {
  return parse_file(buf, len, len, out, err, errlen);
}

int td_safetensors_load(const char *path, size_t max_bytes, td_st_file **out, char *err,
                        size_t errlen) {
  char *buf;
  size_t len;
  int rc;

  if ((rc = td_read_file(path, max_bytes, &buf, &len)) < 0) {
    if (err != NULL && errlen > 0)
      snprintf(err, errlen, "%s: %s", path, td_strerror(rc));
    return rc;
  }
  rc = td_safetensors_parse(buf, len, out, err, errlen);
  free(buf);
  return rc;
}

/* read() until n bytes or the end; the bytes read, or -1. */
static ssize_t read_full(int fd, void *buf, size_t n) {
  size_t got = 0;

  while (got < n) {
    ssize_t r = read(fd, (char *)buf + got, n - got);

    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -1;
    if (r == 0)
      break;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

int td_safetensors_load_header(const char *path, td_st_file **out, char *err, size_t errlen) {
  uint8_t len8[8];
  uint64_t hlen = 0;
  struct stat st;
  char *buf = NULL;
  ssize_t got;
  int fd, rc;

  /* Non-blocking: a FIFO at the name is refused, not waited on. */
  if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0) {
    rc = errno == ENOENT ? TD_ENOENT : TD_EIO;
    snprintf(err, errlen, "%s", rc == TD_ENOENT ? "no such file" : strerror(errno));
    return rc;
  }
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "not a regular file");
    rc = TD_EIO;
    goto close_fd;
  }
  if ((got = read_full(fd, len8, sizeof(len8))) < 0) {
    snprintf(err, errlen, "%s", strerror(errno));
    rc = TD_EIO;
    goto close_fd;
  }
  for (int i = 0; i < got; i++)
    hlen |= (uint64_t)len8[i] << (8 * i);
  /* parse_file says what is wrong with a short file or a bad length */
  if (got < 8 || hlen > TD_ST_MAX_HEADER || hlen > (uint64_t)st.st_size - 8) {
    rc = parse_file(len8, (size_t)got, (uint64_t)st.st_size, out, err, errlen);
    goto close_fd;
  }
  if ((buf = malloc(8 + (size_t)hlen)) == NULL) {
    rc = TD_ENOMEM;
    goto close_fd;
  }
  memcpy(buf, len8, 8);
  if ((got = read_full(fd, buf + 8, (size_t)hlen)) != (ssize_t)hlen) {
    snprintf(err, errlen, "%s", got < 0 ? strerror(errno) : "the file shrank while read");
    rc = TD_EIO;
    goto free_buf;
  }
  rc = parse_file(buf, 8 + (size_t)hlen, (uint64_t)st.st_size, out, err, errlen);
free_buf:
  free(buf);
close_fd:
  close(fd);
  return rc;
}

void td_safetensors_free(td_st_file *f) {
  if (f == NULL)
    return;
  for (size_t i = 0; i < f->nents; i++)
    free(f->ents[i].name);
  for (size_t i = 0; i < f->nmeta; i++) {
    free(f->meta[i].key);
    free(f->meta[i].value);
  }
  free(f->ents);
  free(f->meta);
  free(f->buf);
  free(f);
}

size_t td_safetensors_count(const td_st_file *f) { return f->nents; }

void td_safetensors_get(const td_st_file *f, size_t i, td_st_tensor *out) {
  const st_entry *e = &f->ents[i];

  *out = (td_st_tensor){.name = e->name, .dtype = e->dtype, .rank = e->rank,
                        .data = f->data != NULL ? f->data + e->begin : NULL,
                        .bytes = e->end - e->begin};
  memcpy(out->shape, e->shape, sizeof(out->shape));
}

int td_safetensors_find(const td_st_file *f, const char *name, td_st_tensor *out) {
  for (size_t i = 0; i < f->nents; i++) {
    if (strcmp(f->ents[i].name, name) == 0) {
      td_safetensors_get(f, i, out);
      return 0;
    }
  }
  return TD_ENOENT;
}

const char *td_safetensors_meta(const td_st_file *f, const char *key) {
  for (size_t i = 0; i < f->nmeta; i++)
    if (strcmp(f->meta[i].key, key) == 0)
      return f->meta[i].value;
  return NULL;
}
