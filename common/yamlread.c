#include "yamlread.h"

#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "error.h"
#include "util.h"

void td_yaml_errf(char *err, size_t errlen, int line, const char *fmt, ...) {
  va_list ap;
  int n = 0;

  if (err == NULL || errlen == 0)
    return;
  if (line > 0)
    n = snprintf(err, errlen, "line %d: ", line);
  if (n < 0 || (size_t)n >= errlen)
    return;
  va_start(ap, fmt);
  vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
  va_end(ap);
}

void td_yaml_excerpt(char *dst, size_t cap, const char *s) {
  size_t max = cap - 4, n = strlen(s), i;

  if (cap < 8) {
    if (cap > 0)
      dst[0] = '\0';
    return;
  }
  if (n > max) {
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
      n--; /* do not cut a UTF-8 sequence */
  }
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    dst[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
  }
  if (n < strlen(s))
    memcpy(dst + i, "...", 3), i += 3;
  dst[i] = '\0';
}

int td_yaml_read_file(const char *path, const char *what, size_t max, char **text,
                      size_t *len, char *err, size_t errlen) {
  char ex[1100], lim[32];
  int rc;

  errno = 0;
  rc = td_read_file(path, max, text, len);
  if (rc == 0)
    return 0;
  td_yaml_excerpt(ex, sizeof(ex), path);
  if (rc == TD_ETOOBIG) {
    td_format_size(max, lim, sizeof(lim));
    td_yaml_errf(err, errlen, 0, "%s '%s' is larger than %s", what, ex, lim);
  } else if (rc == TD_ENOENT) {
    td_yaml_errf(err, errlen, 0, "cannot read %s '%s': No such file", what, ex);
  } else if (rc == TD_EIO) {
    td_yaml_errf(err, errlen, 0, "cannot read %s '%s': %s", what, ex,
                 errno ? strerror(errno) : "not a regular file");
  } else {
    td_yaml_errf(err, errlen, 0, "cannot read %s '%s': %s", what, ex, td_strerror(rc));
  }
  return rc;
}

static int utf8_valid(const unsigned char *s, size_t len) {
  size_t i = 0;

  while (i < len) {
    unsigned char c = s[i];
    uint32_t cp;
    size_t need;

    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xC2 && c <= 0xDF)
      need = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
      need = 2, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
      need = 3, cp = c & 0x07;
    else
      return 0;
    if (len - i <= need)
      return 0;
    for (size_t k = 1; k <= need; k++) {
      if ((s[i + k] & 0xC0) != 0x80)
        return 0;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += need + 1;
  }
  return 1;
}

void td_yaml_free(td_ynode *n) {
  if (n == NULL)
    return;
  for (size_t i = 0; n->kind != TD_YAML_SCALAR && i < n->len; i++)
    td_yaml_free(n->kids[i]);
  free(n->kids);
  free(n->text);
  free(n->key);
  free(n);
}

const td_ynode *td_yaml_get(const td_ynode *map, const char *key) {
  if (map == NULL || map->kind != TD_YAML_MAP)
    return NULL;
  for (size_t i = 0; i < map->len; i++)
    if (strcmp(map->kids[i]->key, key) == 0)
      return map->kids[i];
  return NULL;
}

int td_yaml_is_null(const td_ynode *n) {
  static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};

  if (n == NULL || n->kind != TD_YAML_SCALAR || !n->plain)
    return 0;
  for (size_t i = 0; i < TD_ARRAY_SIZE(nulls); i++)
    if (strcmp(n->text, nulls[i]) == 0)
      return 1;
  return 0;
}

typedef struct build_frame {
  td_ynode *node;
  size_t cap;
  char *key; /* map: the key waiting for its value */
  int key_line;
} build_frame;

typedef struct builder {
  const char *text;
  size_t len;
  td_ynode *root;
  build_frame stack[TD_YAML_MAX_DEPTH];
  int depth;
  size_t nodes;
  char *err;
  size_t errlen;
} builder;

static int line_at_offset(const builder *b, size_t off) {
  int line = 1;

  if (off > b->len)
    off = b->len;
  for (const char *p = b->text; (p = memchr(p, '\n', off - (size_t)(p - b->text))) != NULL; p++)
    line++;
  return line;
}

static int build_fail(builder *b, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int build_fail(builder *b, int line, const char *fmt, ...) {
  char msg[256];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  td_yaml_errf(b->err, b->errlen, line, "%s", msg);
  return TD_EINVAL;
}

static int check_props(builder *b, int line, const yaml_char_t *anchor,
                       const yaml_char_t *tag) {
  char ex[64];

  if (anchor != NULL)
    return build_fail(b, line, "YAML aliases/anchors are not allowed");
  if (tag != NULL) {
    td_yaml_excerpt(ex, sizeof(ex), (const char *)tag);
    return build_fail(b, line, "YAML tags are not allowed ('%s'); write the plain value", ex);
  }
  return 0;
}

static int node_new(builder *b, td_yaml_kind kind, int line, td_ynode **out) {
  td_ynode *n = NULL;

  if (++b->nodes > TD_YAML_MAX_NODES)
    return build_fail(b, line, "more than %d YAML nodes", TD_YAML_MAX_NODES);
  n = calloc(1, sizeof(*n));
  if (n == NULL)
    return TD_ENOMEM;
  n->kind = kind;
  n->line = line;
  *out = n;
  return 0;
}

/* Hands n to its parent (or makes it the root); frees it on failure. */
static int attach(builder *b, td_ynode *n) {
  build_frame *f;

  if (b->depth == 0) {
    b->root = n;
    return 0;
  }
  f = &b->stack[b->depth - 1];
  if (f->node->kind == TD_YAML_MAP && f->key == NULL) {
    if (n->kind != TD_YAML_SCALAR) {
      int line = n->line;
      td_yaml_free(n);
      return build_fail(b, line, "a key must be a plain string, not a map or sequence");
    }
    f->key = n->text;
    f->key_line = n->line;
    n->text = NULL;
    td_yaml_free(n);
    return 0;
  }
  if (f->node->len == f->cap) {
    size_t cap = f->cap ? f->cap * 2 : 4;
    td_ynode **kids = realloc(f->node->kids, cap * sizeof(*kids));
    if (kids == NULL) {
      td_yaml_free(n);
      return TD_ENOMEM;
    }
    f->node->kids = kids;
    f->cap = cap;
  }
  if (f->node->kind == TD_YAML_MAP) {
    n->key = f->key;
    n->key_line = f->key_line;
    f->key = NULL;
  }
  f->node->kids[f->node->len++] = n;
  return 0;
}

static int key_cmp(const void *a, const void *b) {
  const td_ynode *x = *(td_ynode *const *)a, *y = *(td_ynode *const *)b;
  int c = strcmp(x->key, y->key);

  return c != 0 ? c : (x->key_line > y->key_line) - (x->key_line < y->key_line);
}

/* Sorting keeps a 50000-key map from costing n^2 comparisons. */
static int check_duplicates(builder *b, const td_ynode *map) {
  const td_ynode *first = NULL, *dup = NULL;
  td_ynode **sorted;
  char ex[64];

  if (map->len < 2)
    return 0;
  sorted = malloc(map->len * sizeof(*sorted));
  if (sorted == NULL)
    return TD_ENOMEM;
  memcpy(sorted, map->kids, map->len * sizeof(*sorted));
  qsort(sorted, map->len, sizeof(*sorted), key_cmp);
  for (size_t i = 1; i < map->len; i++) {
    if (strcmp(sorted[i - 1]->key, sorted[i]->key) != 0)
      continue;
    if (dup == NULL || sorted[i]->key_line < dup->key_line) {
      size_t j = i - 1;
      while (j > 0 && strcmp(sorted[j - 1]->key, sorted[i]->key) == 0)
        j--;
      first = sorted[j];
      dup = sorted[i];
    }
  }
  free(sorted);
  if (dup == NULL)
    return 0;
  td_yaml_excerpt(ex, sizeof(ex), dup->key);
  return build_fail(b, dup->key_line, "duplicate key '%s' (first at line %d)", ex,
                    first->key_line);
}

static int on_scalar(builder *b, const yaml_event_t *ev, int line) {
  const char *v = (const char *)ev->data.scalar.value;
  size_t len = ev->data.scalar.length;
  td_ynode *n = NULL;
  int rc;

  if ((rc = check_props(b, line, ev->data.scalar.anchor, ev->data.scalar.tag)) < 0)
    return rc;
  if (len > TD_YAML_MAX_SCALAR)
    return build_fail(b, line, "a key or value is longer than %d bytes", TD_YAML_MAX_SCALAR);
  if (memchr(v, '\0', len) != NULL)
    return build_fail(b, line, "NUL character in a value");
  if (!utf8_valid((const unsigned char *)v, len))
    return build_fail(b, line, "invalid UTF-8 in a value");
  if ((rc = node_new(b, TD_YAML_SCALAR, line, &n)) < 0)
    return rc;
  n->text = malloc(len + 1);
  if (n->text == NULL) {
    free(n);
    return TD_ENOMEM;
  }
  memcpy(n->text, v, len);
  n->text[len] = '\0';
  n->len = len;
  n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
  return attach(b, n);
}

static int on_open(builder *b, td_yaml_kind kind, int line, const yaml_char_t *anchor,
                   const yaml_char_t *tag) {
  td_ynode *n = NULL;
  int rc;

  if ((rc = check_props(b, line, anchor, tag)) < 0)
    return rc;
  if (b->depth == TD_YAML_MAX_DEPTH)
    return build_fail(b, line, "maps and sequences nested deeper than %d levels",
                      TD_YAML_MAX_DEPTH);
  if ((rc = node_new(b, kind, line, &n)) < 0)
    return rc;
  if ((rc = attach(b, n)) < 0)
    return rc;
  b->stack[b->depth++] = (build_frame){.node = n};
  return 0;
}

static int on_close(builder *b) {
  build_frame *f = &b->stack[--b->depth];

  return f->node->kind == TD_YAML_MAP ? check_duplicates(b, f->node) : 0;
}

static int libyaml_error(builder *b, const yaml_parser_t *p) {
  char ctx[128] = "";

  switch (p->error) {
  case YAML_MEMORY_ERROR:
    return TD_ENOMEM;
  case YAML_READER_ERROR:
    return build_fail(b, line_at_offset(b, p->problem_offset), "%s",
                      p->problem ? p->problem : "cannot read the input");
  default:
    if (p->context != NULL)
      snprintf(ctx, sizeof(ctx), " (%s at line %d)", p->context,
               (int)p->context_mark.line + 1);
    return build_fail(b, (int)p->problem_mark.line + 1, "%s%s",
                      p->problem ? p->problem : "invalid YAML", ctx);
  }
}

int td_yaml_parse(const char *text, size_t len, size_t max_len, td_ynode **root,
                  char *err, size_t errlen) {
  builder b = {.text = text, .len = len, .err = err, .errlen = errlen};
  yaml_parser_t parser;
  yaml_event_t ev;
  const char *nul;
  int docs = 0, done = 0, rc = 0;

  if (text == NULL)
    text = b.text = "", len = b.len = 0;
  if (len > max_len) {
    td_yaml_errf(err, errlen, 0, "the file is %zu bytes, more than the limit of %zu", len,
                 max_len);
    return TD_ETOOBIG;
  }
  /* libyaml would stop at a NUL and call the rest the end of the stream. */
  if ((nul = memchr(text, '\0', len)) != NULL)
    return build_fail(&b, line_at_offset(&b, (size_t)(nul - text)), "NUL byte in the input");
  if (!yaml_parser_initialize(&parser))
    return TD_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);

  while (!done && rc == 0) {
    int line;

    if (!yaml_parser_parse(&parser, &ev)) {
      rc = libyaml_error(&b, &parser);
      break;
    }
    line = (int)ev.start_mark.line + 1;
    switch (ev.type) {
    case YAML_DOCUMENT_START_EVENT:
      if (++docs > 1)
        rc = build_fail(&b, line, "only one YAML document is allowed");
      break;
    case YAML_ALIAS_EVENT:
      rc = build_fail(&b, line, "YAML aliases/anchors are not allowed");
      break;
    case YAML_SCALAR_EVENT:
      rc = on_scalar(&b, &ev, line);
      break;
    case YAML_SEQUENCE_START_EVENT:
      rc = on_open(&b, TD_YAML_SEQ, line, ev.data.sequence_start.anchor,
                   ev.data.sequence_start.tag);
      break;
    case YAML_MAPPING_START_EVENT:
      rc = on_open(&b, TD_YAML_MAP, line, ev.data.mapping_start.anchor,
                   ev.data.mapping_start.tag);
      break;
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
      rc = on_close(&b);
      break;
    case YAML_STREAM_END_EVENT:
      done = 1;
      break;
    default:
      break;
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&parser);

  if (rc == 0 && b.root == NULL) {
    if ((rc = node_new(&b, TD_YAML_SCALAR, 1, &b.root)) == 0) {
      b.root->plain = 1;
      b.root->text = calloc(1, 1);
      if (b.root->text == NULL)
        rc = TD_ENOMEM;
    }
  }
  if (rc < 0)
    goto free_tree;
  *root = b.root;
  return 0;

free_tree:
  for (int i = 0; i < b.depth; i++)
    free(b.stack[i].key);
  td_yaml_free(b.root);
  return rc;
}

typedef struct bind_ctx {
  void *user;
  char *err;
  size_t errlen;
  char path[2048];
  size_t plen;
} bind_ctx;

static size_t push_key(bind_ctx *c, const char *key) {
  size_t old = c->plen;
  char ex[64];
  int n;

  td_yaml_excerpt(ex, sizeof(ex), key);
  n = snprintf(c->path + old, sizeof(c->path) - old, "%s%s", old ? "." : "", ex);
  if (n > 0)
    c->plen = old + (size_t)n < sizeof(c->path) ? old + (size_t)n : sizeof(c->path) - 1;
  return old;
}

static size_t push_index(bind_ctx *c, size_t i) {
  size_t old = c->plen;
  int n = snprintf(c->path + old, sizeof(c->path) - old, "[%zu]", i);

  if (n > 0)
    c->plen = old + (size_t)n < sizeof(c->path) ? old + (size_t)n : sizeof(c->path) - 1;
  return old;
}

static void pop_to(bind_ctx *c, size_t len) {
  c->plen = len;
  c->path[len] = '\0';
}

/* A value's problems point at its key's line, where there is a key. */
static int value_line(const td_ynode *n) {
  return n->key != NULL ? n->key_line : n->line;
}

static int key_fail(bind_ctx *c, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int key_fail(bind_ctx *c, int line, const char *fmt, ...) {
  char msg[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  td_yaml_errf(c->err, c->errlen, line, "key '%s': %s", c->path, msg);
  return TD_EINVAL;
}

/* "'five'", "a map", "nothing": what the file holds, for messages. */
static const char *describe(const td_ynode *n, char *buf, size_t cap) {
  char ex[64];

  if (n->kind == TD_YAML_MAP)
    return "a map";
  if (n->kind == TD_YAML_SEQ)
    return "a sequence";
  if (td_yaml_is_null(n))
    return "nothing";
  td_yaml_excerpt(ex, sizeof(ex), n->text);
  snprintf(buf, cap, n->plain ? "'%s'" : "'%s' (a quoted string)", ex);
  return buf;
}

static int type_fail(bind_ctx *c, const td_ynode *n, const char *expected) {
  char buf[96];

  return key_fail(c, value_line(n), "expected %s, got %s", expected, describe(n, buf, sizeof(buf)));
}

/* Decimal digits and nothing else, at most lim: 0 ok, 1 not a number,
 * 2 too large. */
static int parse_digits(const char *s, uint64_t lim, uint64_t *out) {
  uint64_t v = 0;

  if (*s == '\0')
    return 1;
  for (; *s; s++) {
    if (*s < '0' || *s > '9')
      return 1;
    if (v > (lim - (uint64_t)(*s - '0')) / 10) {
      while (*s >= '0' && *s <= '9')
        s++;
      return *s ? 1 : 2;
    }
    v = v * 10 + (uint64_t)(*s - '0');
  }
  *out = v;
  return 0;
}

static int parse_i64(const char *s, int64_t *out) {
  int neg = *s == '-';
  uint64_t mag;
  int r;

  if (*s == '-' || *s == '+')
    s++;
  r = parse_digits(s, neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, &mag);
  if (r == 0)
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
  return r;
}

static int parse_u64(const char *s, uint64_t *out) {
  return parse_digits(*s == '+' ? s + 1 : s, UINT64_MAX, out);
}

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void c_locale_init(void) {
  c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

/* [-+]digits[.digits][e[-+]digits]: no hex, inf or nan, whatever the
 * process locale says a decimal point is. */
static int parse_double(const char *s, double *out) {
  const char *p = s;
  size_t digits = 0;
  char *end;
  double v;

  if (*p == '-' || *p == '+')
    p++;
  for (; *p >= '0' && *p <= '9'; p++)
    digits++;
  if (*p == '.')
    for (p++; *p >= '0' && *p <= '9'; p++)
      digits++;
  if (digits == 0)
    return 1;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '-' || *p == '+')
      p++;
    if (*p < '0' || *p > '9')
      return 1;
    while (*p >= '0' && *p <= '9')
      p++;
  }
  if (*p != '\0')
    return 1;
  pthread_once(&c_locale_once, c_locale_init);
  errno = 0;
  v = c_locale != (locale_t)0 ? strtod_l(s, &end, c_locale) : strtod(s, &end);
  if (*end != '\0')
    return 1;
  if (!isfinite(v))
    return 2;
  *out = v;
  return 0;
}

static void store_int(void *p, size_t size, int64_t v) {
  switch (size) {
  case 1: { int8_t x = (int8_t)v; memcpy(p, &x, 1); break; }
  case 2: { int16_t x = (int16_t)v; memcpy(p, &x, 2); break; }
  case 4: { uint32_t x = (uint32_t)v; memcpy(p, &x, 4); break; } /* int32 or uint32 */
  default: memcpy(p, &v, 8); break;
  }
}

static int bind_map(bind_ctx *c, const td_yfield *owner, const td_ynode *n, void *base);
static int bind_value(bind_ctx *c, const td_yfield *f, const td_ynode *n, void *base);

static int bind_str(bind_ctx *c, const td_yfield *f, const td_ynode *n, char *p) {
  const char *s;

  if (n->kind != TD_YAML_SCALAR)
    return type_fail(c, n, "a string");
  s = td_yaml_is_null(n) ? "" : n->text;
  if (strlen(s) >= f->size)
    return key_fail(c, value_line(n), "must be at most %zu bytes long, got %zu", f->size - 1,
                    strlen(s));
  if (*s == '\0' && (f->flags & TD_YF_NONEMPTY))
    return key_fail(c, value_line(n), "must not be empty");
  memcpy(p, s, strlen(s) + 1);
  return 0;
}

static int bind_int(bind_ctx *c, const td_yfield *f, const td_ynode *n, void *p) {
  int64_t v = 0;
  int r;

  if (n->kind != TD_YAML_SCALAR || !n->plain)
    return type_fail(c, n, "an integer");
  if ((r = parse_i64(n->text, &v)) == 1)
    return type_fail(c, n, "an integer");
  if (r == 2 || v < f->min || v > f->max)
    return key_fail(c, value_line(n), "must be between %" PRId64 " and %" PRId64 ", got %s", f->min,
                    f->max, n->text);
  store_int(p, f->size, v);
  return 0;
}

static int bind_u64(bind_ctx *c, const td_ynode *n, void *p) {
  uint64_t v = 0;
  int r;

  if (n->kind != TD_YAML_SCALAR || !n->plain)
    return type_fail(c, n, "an integer");
  if ((r = parse_u64(n->text, &v)) == 1)
    return type_fail(c, n, "an integer from 0 to 18446744073709551615");
  if (r == 2)
    return key_fail(c, value_line(n), "must be between 0 and 18446744073709551615, got %s", n->text);
  memcpy(p, &v, sizeof(v));
  return 0;
}

static int bind_float(bind_ctx *c, const td_yfield *f, const td_ynode *n, void *p) {
  int lo_open = !!(f->flags & TD_YF_LO_OPEN), hi_open = !!(f->flags & TD_YF_HI_OPEN);
  double v = 0;
  int r;

  if (n->kind != TD_YAML_SCALAR || !n->plain)
    return type_fail(c, n, "a number");
  if ((r = parse_double(n->text, &v)) == 1)
    return type_fail(c, n, "a number");
  if (r == 2 || v < f->lo || v > f->hi || (lo_open && v == f->lo) || (hi_open && v == f->hi))
    return key_fail(c, value_line(n), "must be in %c%g, %g%c, got %s", lo_open ? '(' : '[', f->lo,
                    f->hi, hi_open ? ')' : ']', n->text);
  if (f->size == sizeof(float)) {
    float x = (float)v;
    memcpy(p, &x, sizeof(x));
  } else {
    memcpy(p, &v, sizeof(v));
  }
  return 0;
}

static int bind_enum(bind_ctx *c, const td_yfield *f, const td_ynode *n, void *p) {
  char list[256] = "", buf[96], hint[400];
  size_t used = 0;

  if (n->kind == TD_YAML_SCALAR) {
    for (size_t i = 0; f->names[i] != NULL; i++) {
      if (strcmp(n->text, f->names[i]) == 0) {
        store_int(p, f->size, f->values ? f->values[i] : (int64_t)i);
        return 0;
      }
    }
    if (f->hint != NULL && f->hint(f, n->text, c->user, hint, sizeof(hint)) != 0)
      return key_fail(c, value_line(n), "%s", hint);
  }
  for (size_t i = 0; f->names[i] != NULL && used < sizeof(list); i++) {
    int k = snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "", f->names[i]);
    if (k > 0)
      used += (size_t)k;
  }
  return key_fail(c, value_line(n), "must be one of %s; got %s", list, describe(n, buf, sizeof(buf)));
}

static int bind_size(bind_ctx *c, const td_yfield *f, const td_ynode *n, void *p) {
  char min[32], got[32];
  uint64_t v;
  int r;

  if (n->kind != TD_YAML_SCALAR || td_yaml_is_null(n))
    return type_fail(c, n, "a size such as 512MiB or 2GiB");
  if ((r = td_parse_size(n->text, &v)) == TD_ETOOBIG)
    return key_fail(c, value_line(n), "size %s is too large", n->text);
  if (r < 0)
    return type_fail(c, n, "a size such as 512MiB or 2GiB");
  if (v < (uint64_t)f->min) {
    td_format_size((uint64_t)f->min, min, sizeof(min));
    td_format_size(v, got, sizeof(got));
    return key_fail(c, value_line(n), "must be at least %s, got %s", min, got);
  }
  memcpy(p, &v, sizeof(v));
  return 0;
}

static int bind_seq(bind_ctx *c, const td_yfield *f, const td_ynode *n, void *base) {
  char *arr = (char *)base + f->offset;
  int64_t max = f->max < (int64_t)f->cap ? f->max : (int64_t)f->cap;
  size_t count = 0;
  int count_i;
  int rc;

  if (n->kind == TD_YAML_SEQ)
    count = n->len;
  else if (!td_yaml_is_null(n))
    return type_fail(c, n, "a sequence");
  if ((int64_t)count < f->min || (int64_t)count > max) {
    if (f->min == max)
      return key_fail(c, value_line(n), "must have exactly %" PRId64 " entries, got %zu", max, count);
    return key_fail(c, value_line(n), "must have between %" PRId64 " and %" PRId64 " entries, got %zu",
                    f->min, max, count);
  }
  for (size_t i = 0; i < count; i++) {
    size_t old = push_index(c, i);
    char *item = arr + i * f->size;

    memset(item, 0, f->size);
    rc = bind_value(c, f->sub, n->kids[i], item);
    pop_to(c, old);
    if (rc < 0)
      return rc;
  }
  count_i = (int)count;
  memcpy((char *)base + f->count_offset, &count_i, sizeof(count_i));
  return 0;
}

static int bind_value(bind_ctx *c, const td_yfield *f, const td_ynode *n, void *base) {
  char *p = (char *)base + f->offset;
  char msg[512] = "";
  int rc;

  switch (f->type) {
  case TD_YT_STR:   rc = bind_str(c, f, n, p); break;
  case TD_YT_INT:   rc = bind_int(c, f, n, p); break;
  case TD_YT_U64:   rc = bind_u64(c, n, p); break;
  case TD_YT_FLOAT: rc = bind_float(c, f, n, p); break;
  case TD_YT_ENUM:  rc = bind_enum(c, f, n, p); break;
  case TD_YT_SIZE:  rc = bind_size(c, f, n, p); break;
  case TD_YT_MAP:   rc = bind_map(c, f, n, p); break;
  case TD_YT_SEQ:   rc = bind_seq(c, f, n, base); break;
  case TD_YT_NODE:  rc = 0; break;
  default:
    return key_fail(c, value_line(n), "internal error: field type %d", (int)f->type);
  }
  if (rc == 0 && f->check != NULL && f->check(f, p, n, c->user, msg, sizeof(msg)) != 0)
    return key_fail(c, value_line(n), "%s", msg[0] ? msg : "invalid value");
  return rc;
}

/* Edit distance, for "did you mean"; keys are short. */
static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b), row[65];

  if (la > 64 || lb > 64)
    return SIZE_MAX;
  for (size_t j = 0; j <= lb; j++)
    row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best)
        best = up + 1;
      if (row[j - 1] + 1 < best)
        best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

static int unknown_key(bind_ctx *c, const td_yfield *owner, const td_ynode *kid) {
  const char *best = NULL;
  size_t best_d = 3;
  size_t old = push_key(c, kid->key);
  char hint[400];

  for (const td_yfield *f = owner->sub; f->key != NULL; f++) {
    size_t d = edit_distance(kid->key, f->key);
    if (d < best_d)
      best_d = d, best = f->key;
  }
  if (owner->hint != NULL && owner->hint(owner, kid->key, c->user, hint, sizeof(hint)) != 0)
    td_yaml_errf(c->err, c->errlen, kid->key_line, "unknown key '%s': %s", c->path, hint);
  else if (best != NULL)
    td_yaml_errf(c->err, c->errlen, kid->key_line, "unknown key '%s' (did you mean '%s'?)",
                 c->path, best);
  else
    td_yaml_errf(c->err, c->errlen, kid->key_line, "unknown key '%s'", c->path);
  pop_to(c, old);
  return TD_EINVAL;
}

const td_yfield *td_yaml_field(const td_yfield *fields, const char *key) {
  while (fields->key != NULL && strcmp(fields->key, key) != 0)
    fields++;
  return fields->key != NULL ? fields : NULL;
}

/* owner is the MAP field whose table (owner->sub) n is bound with. */
static int bind_map(bind_ctx *c, const td_yfield *owner, const td_ynode *n, void *base) {
  const td_yfield *fields = owner->sub, *alone = NULL;
  size_t nkids = 0;
  int rc;

  if (n->kind == TD_YAML_MAP) {
    nkids = n->len;
  } else if (owner->shorthand != NULL && n->kind == TD_YAML_SCALAR && !td_yaml_is_null(n)) {
    alone = td_yaml_field(fields, owner->shorthand);
    if (alone == NULL)
      return key_fail(c, value_line(n), "internal error: no key '%s'", owner->shorthand);
    if ((rc = bind_value(c, alone, n, base)) < 0)
      return rc;
  } else if (!td_yaml_is_null(n)) {
    char what[96];

    if (owner->shorthand == NULL)
      return type_fail(c, n, "a map");
    snprintf(what, sizeof(what), "a map, or its '%s' alone", owner->shorthand);
    return type_fail(c, n, what);
  }
  for (size_t i = 0; i < nkids; i++) {
    const td_ynode *kid = n->kids[i];
    const td_yfield *f = td_yaml_field(fields, kid->key);
    size_t old;

    if (f == NULL)
      return unknown_key(c, owner, kid);
    old = push_key(c, kid->key);
    rc = bind_value(c, f, kid, base);
    pop_to(c, old);
    if (rc < 0)
      return rc;
  }
  for (const td_yfield *f = fields; f->key != NULL; f++) {
    if ((f->flags & TD_YF_REQUIRED) && f != alone && td_yaml_get(n, f->key) == NULL) {
      size_t old = push_key(c, f->key);
      td_yaml_errf(c->err, c->errlen, value_line(n), "key '%s' is required", c->path);
      pop_to(c, old);
      return TD_EINVAL;
    }
  }
  return 0;
}

int td_yaml_bind(const td_ynode *root, const td_yfield *fields, void *base, void *user,
                 const char *what, char *err, size_t errlen) {
  bind_ctx c = {.user = user, .err = err, .errlen = errlen};
  const td_yfield top = {.type = TD_YT_MAP, .sub = fields};
  char buf[96];

  if (root == NULL) {
    td_yaml_errf(err, errlen, 0, "no %s to read", what);
    return TD_EINVAL;
  }
  if (root->kind != TD_YAML_MAP && !td_yaml_is_null(root)) {
    td_yaml_errf(err, errlen, root->line, "the %s must be a map of keys, got %s", what,
                 describe(root, buf, sizeof(buf)));
    return TD_EINVAL;
  }
  return bind_map(&c, &top, root, base);
}
