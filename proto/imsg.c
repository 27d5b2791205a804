#include "imsg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "util.h"

#define ANY_U64 0, 0x1p64         /* a max at 2^64: no upper bound */
#define ANY_F64 -HUGE_VAL, HUGE_VAL /* no bounds: NaN and the infinities too */
#define MSG_MAX 2047              /* bytes of a message a person reads */
#define F(name, type, ...) {name, TD_FT_##type, 1, __VA_ARGS__}
/* optional: a reader takes its absence as -1, "not measured" */
#define FO(name, type, ...) {name, TD_FT_##type, 0, __VA_ARGS__}
#define KIND(op, fields, summary) {op, fields, TD_ARRAY_SIZE(fields), summary}

/* ---- the catalogue (proto/INTERNAL.md's tables) ---- */

static const td_field error_fields[] = {
    F("code", STR, 1, 31),
    F("msg", STR, 0, MSG_MAX),
};
static const td_field plan_fields[] = {
    F("micro_batch", UINT, 1, 65536), F("params", UINT, ANY_U64),
    F("grads", UINT, ANY_U64),        F("optim", UINT, ANY_U64),
    F("activations", UINT, ANY_U64),  F("workspace", UINT, ANY_U64),
    F("staging", UINT, ANY_U64),      F("overhead", UINT, ANY_U64),
    F("total", UINT, ANY_U64),
};
static const td_field progress_fields[] = {
    F("epoch", UINT, 1, 10000),          F("epochs", UINT, 1, 10000),
    F("step", UINT, 1, UINT32_MAX),      F("steps", UINT, 1, UINT32_MAX),
    F("loss", FLOAT, ANY_F64),           F("train_accuracy", FLOAT, -1, 1),
    F("samples_per_sec", FLOAT, 0, HUGE_VAL), F("mem", UINT, ANY_U64),
    F("data_wait", FLOAT, 0, HUGE_VAL),  FO("train_mae", FLOAT, -1, HUGE_VAL),
};
/* -1: a metric the job's loss does not measure (an accuracy for mse, a
 * MAE for cross_entropy, top-k without train.top_k) */
static const td_field eval_fields[] = {
    F("epoch", UINT, 1, 10000),
    F("accuracy", FLOAT, -1, 1),
    F("loss", FLOAT, ANY_F64),
    FO("top_k", FLOAT, -1, 1),
    FO("mae", FLOAT, -1, HUGE_VAL),
};
static const td_field replan_fields[] = {
    F("micro_batch", UINT, 1, 65536),     F("accumulation", UINT, 1, 65536),
    F("total", UINT, ANY_U64),            F("precision", STR, 1, 15),
    F("recompute", BOOL, 0, 1),           F("batch_dependent", BOOL, 0, 1),
    F("effective_batch", UINT, 1, 65536),
};
static const td_field oom_fields[] = {
    F("requested", UINT, ANY_U64), F("free", UINT, ANY_U64),
    F("phase", STR, 1, 15),        F("micro_batch", UINT, 0, 65536),
};
static const td_field position_fields[] = {
    F("step", UINT, ANY_U64),  F("epoch", UINT, ANY_U64),
    F("batch", UINT, ANY_U64), F("bytes", UINT, ANY_U64),
};
static const td_field msg_fields[] = {
    F("msg", STR, 0, MSG_MAX),
};
static const td_field done_fields[] = {
    F("accuracy", FLOAT, -1, 1), /* -1: no pass measured one */
    F("loss", FLOAT, ANY_F64),
    FO("top_k", FLOAT, -1, 1),
    FO("mae", FLOAT, -1, HUGE_VAL),
    F("samples_per_sec", FLOAT, 0, HUGE_VAL),
    F("model", STR, 1, 1023),
};

static const td_field probe_fields[] = {
    F("total", UINT, ANY_U64), F("free", UINT, ANY_U64), F("overhead", UINT, ANY_U64),
};

static const td_msgdef reports[] = {
    {"heartbeat", NULL, 0, "alive, with nothing else to say (each second)"},
    KIND("error", error_fields, "why the worker is failing; it exits next"),
    KIND("plan", plan_fields, "the memory plan it starts with"),
    KIND("progress", progress_fields, "a training step's numbers"),
    KIND("eval", eval_fields, "the test set at an epoch's end"),
    KIND("val", eval_fields, "the validation set at an epoch's end"),
    KIND("replan", replan_fields, "it runs at a new plan now (memory ran short, or a budget)"),
    KIND("oom", oom_fields, "an allocation failed; the step is discarded and re-planned"),
    KIND("checkpoint", position_fields, "a checkpoint was written"),
    KIND("resumed", position_fields, "it resumed from the checkpoint; data continues there"),
    KIND("resume_failed", msg_fields, "the checkpoint cannot be used; it starts from scratch"),
    KIND("warning", msg_fields, "the job still succeeds, but its owner must hear of this"),
    KIND("done", done_fields, "the model is written; it exits 0 next"),
    KIND("probe", probe_fields, "traind-worker --probe: what the device offers a job"),
    KIND("probe_failed", error_fields, "traind-worker --probe: the device cannot be used"),
};

static const td_field budget_fields[] = {
    F("bytes", UINT, 1, 0x1p64),
    F("device", UINT, ANY_U64), /* the device's budget, for the log; 0: unknown */
};

static const td_msgdef controls[] = {
    KIND("budget", budget_fields, "run within this many bytes from the next step on"),
};

static const struct {
  const char *name;
  const td_msgdef *defs;
  size_t n;
} dirs[TD_IMSG__DIRS] = {
    [TD_IMSG_REPORT] = {"worker report", reports, TD_ARRAY_SIZE(reports)},
    [TD_IMSG_CONTROL] = {"traind command", controls, TD_ARRAY_SIZE(controls)},
};

const td_msgdef *td_imsg_defs(td_imsg_dir dir, size_t *n) {
  *n = dirs[dir].n;
  return dirs[dir].defs;
}

const char *td_imsg_dir_name(td_imsg_dir dir) { return dirs[dir].name; }

const td_msgdef *td_imsg_find(td_imsg_dir dir, const char *op, size_t len) {
  for (size_t i = 0; op != NULL && i < dirs[dir].n; i++)
    if (strlen(dirs[dir].defs[i].op) == len && memcmp(dirs[dir].defs[i].op, op, len) == 0)
      return &dirs[dir].defs[i];
  return NULL;
}

static long field_index(const td_msgdef *d, const char *k, size_t len) {
  for (size_t i = 0; i < d->nfields; i++)
    if (strlen(d->fields[i].name) == len && memcmp(d->fields[i].name, k, len) == 0)
      return (long)i;
  return -1;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;

  if (err == NULL || errlen == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* A float field without bounds takes any float; the rest as the catalogue says. */
static int check_value(const td_msgdef *d, const td_field *f, const msgpack_object *o,
                       char *err, size_t errlen) {
  if (f->type == TD_FT_FLOAT && f->min == -HUGE_VAL && f->max == HUGE_VAL &&
      (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64))
    return 0;
  return td_proto_check_field(d, f, o, err, errlen);
}

/* ---- building ---- */

static void imsg_fail(td_imsg *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void imsg_fail(td_imsg *b, const char *fmt, ...) {
  va_list ap;

  if (b->p.err != 0)
    return;
  b->p.err = TD_EINTERNAL;
  va_start(ap, fmt);
  vsnprintf(b->p.why, sizeof(b->p.why), fmt, ap);
  va_end(ap);
}

void td_imsg_begin(td_imsg *b, td_imsg_dir dir, const char *op) {
  memset(b, 0, sizeof(*b));
  td_pack_init(&b->p);
  if (msgpack_sbuffer_write(&b->p.sb, "\0\0\0\0", TD_IMSG_HDR) != 0)
    b->p.err = TD_ENOMEM;
  td_map_begin(&b->m, &b->p, NULL);
  td_map_kv_u64(&b->m, "v", TD_IMSG_VERSION);
  td_map_kv_str(&b->m, "op", op);
  b->def = td_imsg_find(dir, op, strlen(op));
  if (b->def == NULL)
    imsg_fail(b, "no %s '%s' in the catalogue (proto/imsg.c)", dirs[dir].name, op);
}

/* The field k, checked with o as its value; NULL when refused. */
static const td_field *imsg_field(td_imsg *b, const char *k, const msgpack_object *o) {
  char why[160];
  long i;

  if (b->p.err != 0)
    return NULL;
  if ((i = field_index(b->def, k, strlen(k))) < 0) {
    imsg_fail(b, "'%s' has no field '%s' in the catalogue (proto/imsg.c)", b->def->op, k);
    return NULL;
  }
  if (b->seen >> i & 1) {
    imsg_fail(b, "'%s' of '%s' packed twice", k, b->def->op);
    return NULL;
  }
  if (o != NULL && check_value(b->def, &b->def->fields[i], o, why, sizeof(why)) < 0) {
    imsg_fail(b, "%s", why);
    return NULL;
  }
  b->seen |= 1ull << i;
  return &b->def->fields[i];
}

void td_imsg_u64(td_imsg *b, const char *k, uint64_t v) {
  msgpack_object o = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = v};

  if (imsg_field(b, k, &o) != NULL)
    td_map_kv_u64(&b->m, k, v);
}

void td_imsg_f64(td_imsg *b, const char *k, double v) {
  msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT64, .via.f64 = v};

  if (imsg_field(b, k, &o) != NULL)
    td_map_kv_f64(&b->m, k, v);
}

void td_imsg_bool(td_imsg *b, const char *k, int v) {
  msgpack_object o = {.type = MSGPACK_OBJECT_BOOLEAN, .via.boolean = v != 0};

  if (imsg_field(b, k, &o) != NULL)
    td_map_kv_bool(&b->m, k, v != 0);
}

void td_imsg_str(td_imsg *b, const char *k, const char *v) {
  size_t n = v != NULL ? strlen(v) : 0;
  const td_field *f = imsg_field(b, k, NULL);
  char why[160];

  if (f == NULL)
    return;
  if (f->type != TD_FT_STR) {
    imsg_fail(b, "'%s' of '%s' is a %s, not a str", k, b->def->op, td_ftype_name(f->type));
    return;
  }
  if (n > f->max)
    n = (size_t)f->max;
  {
    msgpack_object o = {.type = MSGPACK_OBJECT_STR, .via.str = {(uint32_t)n, n ? v : ""}};

    if (check_value(b->def, f, &o, why, sizeof(why)) < 0) {
      imsg_fail(b, "%s", why);
      return;
    }
  }
  td_map_kv_strn(&b->m, k, v, n);
}

int td_imsg_end(td_imsg *b, const void **frame, size_t *len) {
  size_t body;
  unsigned char *h;

  for (size_t i = 0; b->def != NULL && i < b->def->nfields; i++)
    if (b->def->fields[i].required && !(b->seen >> i & 1))
      imsg_fail(b, "'%s' lacks its field '%s'", b->def->op, b->def->fields[i].name);
  td_map_end(&b->m);
  if (b->p.err != 0)
    return b->p.err;
  body = b->p.sb.size - TD_IMSG_HDR;
  if (body > TD_IMSG_MAX) {
    imsg_fail(b, "a '%s' of %zu bytes is longer than a message may be (%d)", b->def->op, body,
              TD_IMSG_MAX);
    return b->p.err;
  }
  h = (unsigned char *)b->p.sb.data;
  h[0] = (unsigned char)(body >> 24), h[1] = (unsigned char)(body >> 16);
  h[2] = (unsigned char)(body >> 8), h[3] = (unsigned char)body;
  *frame = b->p.sb.data;
  *len = b->p.sb.size;
  return 0;
}

void td_imsg_free(td_imsg *b) {
  if (b != NULL)
    td_pack_free(&b->p);
}

/* ---- decoding ---- */

int td_imsg_parse(td_imsg_dir dir, const void *buf, size_t len, td_msg **out,
                  const td_msgdef **def, char *err, size_t errlen) {
  const msgpack_object *root, *op;
  const td_msgdef *d;
  td_msg *m;
  int rc;

  if (len > TD_IMSG_MAX) {
    seterr(err, errlen, "a %zu-byte %s is longer than a message may be (%d)", len,
           dirs[dir].name, TD_IMSG_MAX);
    return TD_ETOOBIG;
  }
  if ((rc = td_msg_decode_as(buf, len, TD_IMSG_VERSION, &m, err, errlen)) < 0)
    return rc;
  root = td_msg_root(m);
  if (td_obj_get(root, "op", &op) < 0 || op->type != MSGPACK_OBJECT_STR) {
    seterr(err, errlen, "a %s without a string 'op'", dirs[dir].name);
    rc = TD_EPROTO;
    goto free_msg;
  }
  if ((d = td_imsg_find(dir, op->via.str.ptr, op->via.str.size)) == NULL) {
    seterr(err, errlen, "unknown %s '%.*s'", dirs[dir].name,
           (int)(op->via.str.size > 32 ? 32 : op->via.str.size), op->via.str.ptr);
    rc = TD_EPROTO;
    goto free_msg;
  }
  for (uint32_t i = 0; i < root->via.map.size; i++) {
    const msgpack_object_kv *kv = &root->via.map.ptr[i];
    const msgpack_object_str *k = &kv->key.via.str;
    long f;

    if ((k->size == 1 && k->ptr[0] == 'v') || (k->size == 2 && memcmp(k->ptr, "op", 2) == 0))
      continue;
    if ((f = field_index(d, k->ptr, k->size)) < 0) {
      seterr(err, errlen, "unknown field '%.*s' in '%s'", (int)(k->size > 32 ? 32 : k->size),
             k->ptr, d->op);
      rc = TD_EPROTO;
      goto free_msg;
    }
    if ((rc = check_value(d, &d->fields[f], &kv->val, err, errlen)) < 0)
      goto free_msg;
  }
  for (size_t i = 0; i < d->nfields; i++) {
    const msgpack_object *o;

    if (d->fields[i].required && td_obj_get(root, d->fields[i].name, &o) < 0) {
      seterr(err, errlen, "missing field '%s' in '%s'", d->fields[i].name, d->op);
      rc = TD_EPROTO;
      goto free_msg;
    }
  }
  *out = m;
  *def = d;
  return 0;

free_msg:
  td_msg_free(m);
  return rc;
}

/* ---- framing ---- */

size_t td_imsg_frames_put(td_imsg_frames *f, const void *data, size_t n) {
  size_t room;

  if (f->start > 0) { /* what next has returned is no longer needed */
    memmove(f->buf, f->buf + f->start, f->len - f->start);
    f->len -= f->start;
    f->start = 0;
  }
  room = sizeof(f->buf) - f->len;
  if (n > room)
    n = room;
  memcpy(f->buf + f->len, data, n);
  f->len += n;
  return n;
}

int td_imsg_frames_next(td_imsg_frames *f, const void **body, size_t *len, char *err,
                        size_t errlen) {
  const unsigned char *h = f->buf + f->start;
  size_t have = f->len - f->start, n;

  if (have < TD_IMSG_HDR)
    return 0;
  n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  if (n == 0 || n > TD_IMSG_MAX) {
    seterr(err, errlen, "a frame announces %zu bytes; a message is 1 to %d", n, TD_IMSG_MAX);
    return TD_EPROTO;
  }
  if (have < TD_IMSG_HDR + n)
    return 0;
  *body = h + TD_IMSG_HDR;
  *len = n;
  f->start += TD_IMSG_HDR + n;
  return 1;
}
