/* msgpack -> JSON for --json.  The output is strict JSON whatever arrives:
 * invalid UTF-8 becomes U+FFFD, NaN and infinities become null. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

#define JSON_MAX_DEPTH 64 /* the decoder bounds nesting too; never recurse blindly */

/* Length of the valid UTF-8 sequence at s (code point in *cp), or 0. */
size_t cli_utf8_next(const unsigned char *s, size_t n, uint32_t *cp) {
  uint32_t c;
  size_t len, i;

  if (n == 0)
    return 0;
  c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    c &= 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    c &= 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    c &= 0x07;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    c = (c << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10ffff)) ||
      (c >= 0xd800 && c <= 0xdfff))
    return 0;
  *cp = c;
  return len;
}

static void json_string(FILE *f, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;

  putc('"', f);
  while (i < n) {
    uint32_t cp = 0;
    size_t k = cli_utf8_next(s + i, n - i, &cp);

    if (k == 0) {
      fputs("\\ufffd", f);
      i++;
      continue;
    }
    if (k > 1) {
      fwrite(s + i, 1, k, f);
      i += k;
      continue;
    }
    switch (cp) {
    case '"':  fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    case '\b': fputs("\\b", f); break;
    case '\f': fputs("\\f", f); break;
    default:
      if (cp < 0x20 || cp == 0x7f)
        fprintf(f, "\\u%04x", (unsigned)cp);
      else
        putc((int)cp, f);
    }
    i++;
  }
  putc('"', f);
}

/* Shortest decimal that reads back as the same value. */
static void json_double(FILE *f, double v, int single) {
  char buf[64];
  int prec;

  if (!isfinite(v)) {
    fputs("null", f);
    return;
  }
  for (prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (single ? strtof(buf, NULL) == (float)v : strtod(buf, NULL) == v)
      break;
  }
  fputs(buf, f);
  if (strpbrk(buf, ".e") == NULL)
    fputs(".0", f); /* keep it recognisably a float */
}

static void json_value(FILE *f, const msgpack_object *o, int depth);

/* JSON keys must be strings; numbers and booleans are written as their text. */
static void json_key(FILE *f, const msgpack_object *k) {
  switch (k->type) {
  case MSGPACK_OBJECT_STR:
  case MSGPACK_OBJECT_BIN:
    json_value(f, k, 0);
    break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
  case MSGPACK_OBJECT_BOOLEAN:
    putc('"', f);
    json_value(f, k, 0);
    putc('"', f);
    break;
  default:
    fputs("\"?\"", f);
  }
}

static void json_map(FILE *f, const msgpack_object *o, int depth, int skip_envelope) {
  uint32_t i;
  int first = 1;

  putc('{', f);
  for (i = 0; i < o->via.map.size; i++) {
    const msgpack_object_kv *kv = &o->via.map.ptr[i];

    if (skip_envelope && kv->key.type == MSGPACK_OBJECT_STR &&
        ((kv->key.via.str.size == 1 && memcmp(kv->key.via.str.ptr, "v", 1) == 0) ||
         (kv->key.via.str.size == 2 && memcmp(kv->key.via.str.ptr, "ok", 2) == 0)))
      continue;
    if (!first)
      putc(',', f);
    first = 0;
    json_key(f, &kv->key);
    putc(':', f);
    json_value(f, &kv->val, depth + 1);
  }
  putc('}', f);
}

static void json_value(FILE *f, const msgpack_object *o, int depth) {
  uint32_t i;

  if (depth > JSON_MAX_DEPTH) {
    fputs("null", f);
    return;
  }
  switch (o->type) {
  case MSGPACK_OBJECT_NIL:
    fputs("null", f);
    break;
  case MSGPACK_OBJECT_BOOLEAN:
    fputs(o->via.boolean ? "true" : "false", f);
    break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    fprintf(f, "%llu", (unsigned long long)o->via.u64);
    break;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    fprintf(f, "%lld", (long long)o->via.i64);
    break;
  case MSGPACK_OBJECT_FLOAT32:
    json_double(f, o->via.f64, 1);
    break;
  case MSGPACK_OBJECT_FLOAT64:
    json_double(f, o->via.f64, 0);
    break;
  case MSGPACK_OBJECT_STR:
    json_string(f, o->via.str.ptr, o->via.str.size);
    break;
  case MSGPACK_OBJECT_BIN:
    json_string(f, o->via.bin.ptr, o->via.bin.size);
    break;
  case MSGPACK_OBJECT_ARRAY:
    putc('[', f);
    for (i = 0; i < o->via.array.size; i++) {
      if (i > 0)
        putc(',', f);
      json_value(f, &o->via.array.ptr[i], depth + 1);
    }
    putc(']', f);
    break;
  case MSGPACK_OBJECT_MAP:
    json_map(f, o, depth, 0);
    break;
  default: /* ext: no JSON meaning */
    fputs("null", f);
  }
}

void cli_json_print(FILE *f, const msgpack_object *o) {
  json_value(f, o, 0);
}

void cli_json_print_reply(FILE *f, const msgpack_object *map) {
  if (map->type == MSGPACK_OBJECT_MAP)
    json_map(f, map, 0, 1);
  else
    json_value(f, map, 0);
  putc('\n', f);
}
