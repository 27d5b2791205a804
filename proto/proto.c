#include "proto.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"

#define U64_LIMIT 0x1p64 /* a max at or above this means "no upper bound" */

static const td_field submit_fields[] = {
    {"job", TD_FT_STR, 1, 1, 1 << 20},
    {"base_dir", TD_FT_STR, 1, 1, 1023},
    {"key", TD_FT_STR, 1, 1, 64},
    {"name", TD_FT_STR, 0, 1, 63},
    {"sample_dtype", TD_FT_STR, 0, 1, 15},
};
static const td_field list_fields[] = {
    {"state", TD_FT_STR, 0, 1, 16},
    {"limit", TD_FT_UINT, 0, 1, 5000},
    {"owner", TD_FT_STR, 0, 1, 32},
    {"device", TD_FT_STR, 0, 1, 31},
    {"after", TD_FT_UINT, 0, 0, U64_LIMIT},
};
static const td_field logs_fields[] = {
    {"id", TD_FT_UINT, 1, 1, U64_LIMIT},
    {"offset", TD_FT_INT, 0, -1, 0x1p62},
    {"max", TD_FT_UINT, 0, 1, 1 << 20},
};
static const td_field priority_fields[] = {
    {"id", TD_FT_UINT, 1, 1, U64_LIMIT},
    {"priority", TD_FT_INT, 1, -1000, 1000},
};
static const td_field device_fields[] = {
    {"name", TD_FT_STR, 1, 1, 31},
    {"budget", TD_FT_UINT, 0, 1 << 20, U64_LIMIT},
    {"drain", TD_FT_BOOL, 0, 0, 1},
};
static const td_field plan_fields[] = {
    {"job", TD_FT_STR, 1, 1, 1 << 20},
    {"base_dir", TD_FT_STR, 1, 1, 1023},
    {"device", TD_FT_STR, 0, 1, 31},
    {"sample_dtype", TD_FT_STR, 0, 1, 15},
};
static const td_field continue_fields[] = {
    {"id", TD_FT_UINT, 1, 1, U64_LIMIT},
    {"epochs", TD_FT_UINT, 1, 1, 10000},
    {"key", TD_FT_STR, 1, 1, 64},
    {"name", TD_FT_STR, 0, 1, 63},
};
static const td_field id_fields[] = {
    {"id", TD_FT_UINT, 1, 1, U64_LIMIT},
};

/* Every request may carry it: a MUNGE credential (traind.h: auth). */
static const td_field td__cred_field = {"cred", TD_FT_STR, 0, 1, TD_PROTO_MAX_CRED};

static const td_msgdef defs[] = {
    {"submit", submit_fields, TD_ARRAY_SIZE(submit_fields),
     "validate, plan and queue a job; idempotent by key"},
    {"list", list_fields, TD_ARRAY_SIZE(list_fields), "jobs, optionally only those in one state"},
    {"show", id_fields, TD_ARRAY_SIZE(id_fields), "everything about one job"},
    {"cancel", id_fields, TD_ARRAY_SIZE(id_fields), "cancel a queued or running job"},
    {"info", NULL, 0, "daemon version, protocol, uptime, status socket"},
    {"devices", NULL, 0, "devices with their budget and reservations"},
    {"logs", logs_fields, TD_ARRAY_SIZE(logs_fields), "a job's log, from an offset or its tail"},
    {"set-priority", priority_fields, TD_ARRAY_SIZE(priority_fields),
     "change a job's place in the queue"},
    {"device", device_fields, TD_ARRAY_SIZE(device_fields),
     "change a device's budget, drain it or resume it"},
    {"plan", plan_fields, TD_ARRAY_SIZE(plan_fields),
     "a job file's memory plan on each device, without submitting it"},
    {"continue", continue_fields, TD_ARRAY_SIZE(continue_fields),
     "a new job that trains a finished job's final state for more epochs; idempotent by key"},
};

/* ---- the reply and event catalogue (PROTOCOL.md's tables) ---- */

#define RF(name, type, sub) {name, TD_FT_##type, 1, sub}
#define RF_OPT(name, type, sub) {name, TD_FT_##type, 0, sub}
#define RDEF(name, fields, base, section, table) \
  {name, fields, TD_ARRAY_SIZE(fields), base, section, table}

static const td_replyfield plan_map_fields[] = {
    RF("micro_batch", UINT, NULL), RF("accumulation", UINT, NULL), RF("params", UINT, NULL),
    RF("grads", UINT, NULL),       RF("optim", UINT, NULL),        RF("activations", UINT, NULL),
    RF("workspace", UINT, NULL),   RF("staging", UINT, NULL),      RF("overhead", UINT, NULL),
    RF("total", UINT, NULL),       RF("precision", STR, NULL),     RF("recompute", BOOL, NULL),
    RF("shrink", UINT, NULL),      RF("bit_identical", BOOL, NULL),
};
static const td_replydef plan_map =
    RDEF("memory plan", plan_map_fields, NULL, "### submit", "`plan`, the memory plan:");

static const td_replyfield job_row_fields[] = {
    RF("id", UINT, NULL),        RF("name", STR, NULL),         RF("owner", STR, NULL),
    RF("state", STR, NULL),      RF("device", STR, NULL),       RF("priority", INT, NULL),
    RF("submitted_ms", INT, NULL), RF("epoch", UINT, NULL),     RF("epochs", UINT, NULL),
    RF("step", UINT, NULL),      RF("steps", UINT, NULL),       RF("loss", FLOAT, NULL),
    RF("accuracy", FLOAT, NULL), RF("wait_reason", STR, NULL),
};
static const td_replydef job_row =
    RDEF("job row", job_row_fields, NULL, "### list", "Each element of `jobs`:");

static const td_replyfield checkpoint_fields[] = {
    RF("step", UINT, NULL),  RF("epoch", UINT, NULL),        RF("batch", UINT, NULL),
    RF("bytes", UINT, NULL), RF("resumed_step", UINT, NULL),
};
static const td_replydef checkpoint =
    RDEF("checkpoint", checkpoint_fields, NULL, "### show", "`checkpoint`:");

static const td_replyfield job_full_fields[] = {
    RF("retries", UINT, NULL),          RF("mem", UINT, NULL),
    RF("started_ms", INT, NULL),        RF("finished_ms", INT, NULL),
    RF("samples_per_sec", FLOAT, NULL), RF("data_wait", FLOAT, NULL),
    RF("val_accuracy", FLOAT, NULL),    RF("val_loss", FLOAT, NULL),
    RF("train_accuracy", FLOAT, NULL),  RF("top_k", UINT, NULL),
    RF("top_k_accuracy", FLOAT, NULL),  RF("val_top_k_accuracy", FLOAT, NULL),
    RF("mae", FLOAT, NULL),             RF("val_mae", FLOAT, NULL),
    RF("train_mae", FLOAT, NULL),       RF("model", STR, NULL),
    RF("error", STR, NULL),             RF("warning", STR, NULL),
    RF("plan", MAP, &plan_map),         RF("exit_status", INT, NULL),
    RF("checkpoint", MAP, &checkpoint), RF("loss_curve", ARRAY, NULL),
};
static const td_replydef job_full =
    RDEF("job", job_full_fields, &job_row, "### show", "`job`: the fields of a `list` row, then:");

static const td_replyfield device_entry_fields[] = {
    RF("name", STR, NULL),           RF("budget", UINT, NULL),       RF("limit", UINT, NULL),
    RF("free", UINT, NULL),          RF("overhead", UINT, NULL),     RF("unusable", STR, NULL),
    RF("reserved", UINT, NULL),      RF("jobs", UINT, NULL),         RF("draining", BOOL, NULL),
    RF("config_budget", UINT, NULL), RF("override_budget", UINT, NULL),
    RF("override_drain", BOOL, NULL),
};
static const td_replydef device_entry =
    RDEF("device entry", device_entry_fields, NULL, "### devices", "Each element of `devices`:");

static const td_replyfield plan_device_fields[] = {
    RF("name", STR, NULL),          RF("budget", UINT, NULL),      RF("free", UINT, NULL),
    RF("fits", BOOL, NULL),         RF("fits_now", BOOL, NULL),    RF("micro_batch", UINT, NULL),
    RF("accumulation", UINT, NULL), RF("remedies", ARRAY, NULL),  RF("plan", MAP, &plan_map),
};
static const td_replyfield plan_layer_fields[] = {
    RF("index", UINT, NULL),  RF("type", STR, NULL),         RF("in", STR, NULL),
    RF("out", STR, NULL),     RF("params", UINT, NULL),      RF("activations", UINT, NULL),
    RF("storage", STR, NULL),
};
static const td_replyfield plan_tensor_fields[] = {RF("name", STR, NULL), RF("bytes", UINT, NULL)};
static const td_replyfield plan_saving_fields[] = {
    RF("remedy", STR, NULL), RF("available", BOOL, NULL), RF("saves", UINT, NULL),
    RF("costs", UINT, NULL), RF("note", STR, NULL),
};
static const td_replydef plan_device =
    RDEF("plan device", plan_device_fields, NULL, "### plan", "Each element of `devices`:");
static const td_replydef plan_layer =
    RDEF("layer", plan_layer_fields, NULL, "### plan", "Each element of `layers`:");
static const td_replydef plan_tensor =
    RDEF("tensor", plan_tensor_fields, NULL, "### plan", "Each element of `largest`:");
static const td_replydef plan_saving =
    RDEF("saving", plan_saving_fields, NULL, "### plan", "Each element of `savings`:");

static const td_replyfield error_reply_fields[] = {
    RF("error", STR, NULL), RF("message", STR, NULL), RF_OPT("plan", MAP, &plan_map),
};
static const td_replyfield submit_reply_fields[] = {
    RF("id", UINT, NULL),        RF("name", STR, NULL),      RF("state", STR, NULL),
    RF("duplicate", BOOL, NULL), RF("plan", MAP, &plan_map), RF_OPT("device", STR, NULL),
};
static const td_replyfield list_reply_fields[] = {
    RF("more", BOOL, NULL), RF("jobs", ARRAY, &job_row),
};
static const td_replyfield show_reply_fields[] = {RF("job", MAP, &job_full)};
static const td_replyfield cancel_reply_fields[] = {RF("id", UINT, NULL), RF("state", STR, NULL)};
static const td_replyfield info_reply_fields[] = {
    RF("version", STR, NULL),       RF("protocol", UINT, NULL), RF("uptime_s", FLOAT, NULL),
    RF("status_socket", STR, NULL), RF("jobs", UINT, NULL),
};
static const td_replyfield devices_reply_fields[] = {RF("devices", ARRAY, &device_entry)};
static const td_replyfield logs_reply_fields[] = {
    RF("data", STR, NULL), RF("offset", UINT, NULL), RF("size", UINT, NULL), RF("done", BOOL, NULL),
};
static const td_replyfield priority_reply_fields[] = {
    RF("id", UINT, NULL), RF("priority", INT, NULL),
};
static const td_replyfield device_reply_fields[] = {RF("device", MAP, &device_entry)};
static const td_replyfield plan_reply_fields[] = {
    RF("name", STR, NULL),              RF("batch_size", UINT, NULL),
    RF("min_micro_batch", UINT, NULL),  RF("precision", STR, NULL),
    RF("recompute", BOOL, NULL),        RF("batch_dependent", BOOL, NULL),
    RF("plan", MAP, &plan_map),         RF("devices", ARRAY, &plan_device),
    RF("layers", ARRAY, &plan_layer),   RF("largest", ARRAY, &plan_tensor),
    RF("savings", ARRAY, &plan_saving),
};

static const td_replydef replies[] = {
    RDEF("error", error_reply_fields, NULL, "## Framing", "An error reply:"),
    RDEF("submit", submit_reply_fields, NULL, "### submit", "Reply:"),
    RDEF("list", list_reply_fields, NULL, "### list", "Reply:"),
    RDEF("show", show_reply_fields, NULL, "### show", "Reply:"),
    RDEF("cancel", cancel_reply_fields, NULL, "### cancel", "Reply:"),
    RDEF("info", info_reply_fields, NULL, "### info", "Reply:"),
    RDEF("devices", devices_reply_fields, NULL, "### devices", "Reply:"),
    RDEF("logs", logs_reply_fields, NULL, "### logs", "Reply:"),
    RDEF("set-priority", priority_reply_fields, NULL, "### set-priority", "Reply:"),
    RDEF("device", device_reply_fields, NULL, "### device", "Reply:"),
    RDEF("plan", plan_reply_fields, NULL, "### plan", "Reply:"),
    RDEF("continue", submit_reply_fields, NULL, "### continue", "Reply:"),
};

static const td_replyfield state_event_fields[] = {
    RF("id", UINT, NULL),   RF("name", STR, NULL), RF("state", STR, NULL),
    RF("device", STR, NULL), RF("error", STR, NULL),
};
static const td_replyfield progress_event_fields[] = {
    RF("id", UINT, NULL),                RF("epoch", UINT, NULL),
    RF("epochs", UINT, NULL),            RF("step", UINT, NULL),
    RF("steps", UINT, NULL),             RF("loss", FLOAT, NULL),
    RF("samples_per_sec", FLOAT, NULL),  RF("eta_s", FLOAT, NULL),
    RF("accuracy", FLOAT, NULL),         RF("train_accuracy", FLOAT, NULL),
    RF("train_mae", FLOAT, NULL),
    RF("data_wait", FLOAT, NULL),        RF("mem", UINT, NULL),
};
static const td_replyfield eval_event_fields[] = {
    RF("id", UINT, NULL),            RF("epoch", UINT, NULL),     RF("accuracy", FLOAT, NULL),
    RF("loss", FLOAT, NULL),         RF("val_accuracy", FLOAT, NULL),
    RF("val_loss", FLOAT, NULL),     RF("top_k_accuracy", FLOAT, NULL),
    RF("val_top_k_accuracy", FLOAT, NULL), RF("mae", FLOAT, NULL),
    RF("val_mae", FLOAT, NULL),
};
static const td_replyfield oom_event_fields[] = {
    RF("id", UINT, NULL),        RF("device", STR, NULL), RF("phase", STR, NULL),
    RF("requested", UINT, NULL), RF("free", UINT, NULL),  RF("micro_batch", UINT, NULL),
};
static const td_replyfield replan_event_fields[] = {
    RF("id", UINT, NULL), RF("device", STR, NULL), RF("plan", MAP, &plan_map),
};
static const td_replyfield device_event_fields[] = {
    RF("name", STR, NULL), RF("budget", UINT, NULL), RF("reserved", UINT, NULL),
    RF("jobs", UINT, NULL),
};

/* Events are documented after "## Status socket"; the table is the
 * section's only one. */
static const td_replydef events[] = {
    RDEF(TD_TOPIC_JOB_STATE, state_event_fields, NULL, "### " TD_TOPIC_JOB_STATE, NULL),
    RDEF(TD_TOPIC_JOB_PROGRESS, progress_event_fields, NULL, "### " TD_TOPIC_JOB_PROGRESS, NULL),
    RDEF(TD_TOPIC_JOB_EVAL, eval_event_fields, NULL, "### " TD_TOPIC_JOB_EVAL, NULL),
    RDEF(TD_TOPIC_JOB_OOM, oom_event_fields, NULL, "### " TD_TOPIC_JOB_OOM, NULL),
    RDEF(TD_TOPIC_JOB_REPLAN, replan_event_fields, NULL, "### " TD_TOPIC_JOB_REPLAN, NULL),
    RDEF(TD_TOPIC_DEVICE, device_event_fields, NULL, "### " TD_TOPIC_DEVICE, NULL),
};

static const char *const ftype_names[] = {
    [TD_FT_STR] = "str",   [TD_FT_INT] = "int",  [TD_FT_UINT] = "uint",  [TD_FT_FLOAT] = "float",
    [TD_FT_BOOL] = "bool", [TD_FT_MAP] = "map",  [TD_FT_ARRAY] = "array",
};

struct td_msg {
  msgpack_unpacked up;
  char data[]; /* the unpacked strings point into this copy */
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* A printable, bounded copy of untrusted bytes for an error message. */
static const char *quote(const char *s, size_t n, char *buf, size_t cap) {
  size_t max = cap - 4, i;
  for (i = 0; i < n && i < max; i++)
    buf[i] = isprint((unsigned char)s[i]) ? s[i] : '?';
  if (i < n)
    memcpy(buf + i, "...", 3), i += 3;
  buf[i] = '\0';
  return buf;
}

static const char *obj_type_name(const msgpack_object *o) {
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return "nil";
  case MSGPACK_OBJECT_BOOLEAN: return "bool";
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return "uint";
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative int";
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return "float";
  case MSGPACK_OBJECT_STR: return "str";
  case MSGPACK_OBJECT_ARRAY: return "array";
  case MSGPACK_OBJECT_MAP: return "map";
  case MSGPACK_OBJECT_BIN: return "bin";
  case MSGPACK_OBJECT_EXT: return "ext";
  }
  return "unknown";
}

const char *td_ftype_name(td_ftype t) {
  return (unsigned)t < TD_ARRAY_SIZE(ftype_names) ? ftype_names[t] : "unknown";
}

/* ---- structure check, no allocation ---- */

static uint64_t be(const uint8_t *p, size_t n) {
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++)
    v = v << 8 | p[i];
  return v;
}

enum { K_SCALAR, K_BYTES, K_ARRAY, K_MAP };

/* How a type byte is followed: hdr bytes of length/count (or fixed payload
 * for scalars), then for K_BYTES that many bytes plus extra. */
struct tinfo {
  int kind;
  size_t hdr;     /* bytes of the big-endian length/count field */
  size_t fixed;   /* payload bytes known from the type byte alone */
  size_t extra;   /* bytes after the length field besides the data (ext type) */
  uint32_t count; /* fix* length or count */
  const char *name;
};

static int type_info(uint8_t t, struct tinfo *ti) {
  memset(ti, 0, sizeof *ti);
  ti->kind = K_SCALAR;
  if (t <= 0x7f || t >= 0xe0) {
    ti->name = "int";
  } else if (t <= 0x8f) {
    ti->kind = K_MAP, ti->count = t & 0x0f, ti->name = "map";
  } else if (t <= 0x9f) {
    ti->kind = K_ARRAY, ti->count = t & 0x0f, ti->name = "array";
  } else if (t <= 0xbf) {
    ti->kind = K_BYTES, ti->count = t & 0x1f, ti->name = "str";
  } else {
    static const struct {
      uint8_t t;
      int kind;
      uint8_t hdr, fixed, extra;
      const char *name;
    } rows[] = {
        {0xc0, K_SCALAR, 0, 0, 0, "nil"},    {0xc2, K_SCALAR, 0, 0, 0, "bool"},
        {0xc3, K_SCALAR, 0, 0, 0, "bool"},   {0xc4, K_BYTES, 1, 0, 0, "bin"},
        {0xc5, K_BYTES, 2, 0, 0, "bin"},     {0xc6, K_BYTES, 4, 0, 0, "bin"},
        {0xc7, K_BYTES, 1, 0, 1, "ext"},     {0xc8, K_BYTES, 2, 0, 1, "ext"},
        {0xc9, K_BYTES, 4, 0, 1, "ext"},     {0xca, K_SCALAR, 0, 4, 0, "float"},
        {0xcb, K_SCALAR, 0, 8, 0, "float"},  {0xcc, K_SCALAR, 0, 1, 0, "int"},
        {0xcd, K_SCALAR, 0, 2, 0, "int"},    {0xce, K_SCALAR, 0, 4, 0, "int"},
        {0xcf, K_SCALAR, 0, 8, 0, "int"},    {0xd0, K_SCALAR, 0, 1, 0, "int"},
        {0xd1, K_SCALAR, 0, 2, 0, "int"},    {0xd2, K_SCALAR, 0, 4, 0, "int"},
        {0xd3, K_SCALAR, 0, 8, 0, "int"},    {0xd4, K_SCALAR, 0, 2, 0, "ext"},
        {0xd5, K_SCALAR, 0, 3, 0, "ext"},    {0xd6, K_SCALAR, 0, 5, 0, "ext"},
        {0xd7, K_SCALAR, 0, 9, 0, "ext"},    {0xd8, K_SCALAR, 0, 17, 0, "ext"},
        {0xd9, K_BYTES, 1, 0, 0, "str"},     {0xda, K_BYTES, 2, 0, 0, "str"},
        {0xdb, K_BYTES, 4, 0, 0, "str"},     {0xdc, K_ARRAY, 2, 0, 0, "array"},
        {0xdd, K_ARRAY, 4, 0, 0, "array"},   {0xde, K_MAP, 2, 0, 0, "map"},
        {0xdf, K_MAP, 4, 0, 0, "map"},
    };
    /* rows are in type order with 0xc1 (never used) left out */
    size_t i = (size_t)(t - 0xc0) - (t > 0xc1);
    if (t == 0xc1 || rows[i].t != t)
      return TD_EPROTO;
    ti->kind = rows[i].kind, ti->hdr = rows[i].hdr, ti->fixed = rows[i].fixed;
    ti->extra = rows[i].extra, ti->name = rows[i].name;
  }
  return 0;
}

int td_proto_check(const void *buf, size_t len, char *err, size_t errlen) {
  const uint8_t *b = buf;
  uint32_t left[TD_PROTO_MAX_DEPTH]; /* elements not yet started, per open container */
  int depth = 0;
  size_t off = 0;
  /* Elements announced by open containers and not yet started: each needs at
   * least one byte, so outstanding <= len - off always holds. */
  uint64_t outstanding = 0;

  if (!b || len == 0) {
    seterr(err, errlen, "empty message");
    return TD_EPROTO;
  }
  if (len > TD_PROTO_MAX_MSG) {
    seterr(err, errlen, "message is %zu bytes, the limit is %u", len, TD_PROTO_MAX_MSG);
    return TD_ETOOBIG;
  }
  for (;;) {
    size_t start = off;
    struct tinfo ti;
    uint64_t n;

    if (off >= len) { /* unreachable while the invariant holds */
      seterr(err, errlen, "message ends at offset %zu inside a container", off);
      return TD_EPROTO;
    }
    if (type_info(b[off++], &ti) != 0) {
      seterr(err, errlen, "reserved type byte 0xc1 at offset %zu", start);
      return TD_EPROTO;
    }
    size_t avail = len - off - (size_t)outstanding;
    if (ti.hdr + ti.fixed + ti.extra > avail) {
      seterr(err, errlen, "%s at offset %zu needs %zu more bytes but %zu remain", ti.name,
             start, ti.hdr + ti.fixed + ti.extra, avail);
      return TD_EPROTO;
    }
    n = ti.hdr ? be(b + off, ti.hdr) : ti.count;
    off += ti.hdr + ti.fixed + ti.extra;
    avail -= ti.hdr + ti.fixed + ti.extra;

    if (ti.kind == K_BYTES) {
      if (n > avail) {
        seterr(err, errlen, "%s at offset %zu claims %" PRIu64 " bytes but %zu remain", ti.name,
               start, n, avail);
        return TD_EPROTO;
      }
      off += (size_t)n;
    } else if (ti.kind == K_ARRAY || ti.kind == K_MAP) {
      uint64_t elems = ti.kind == K_MAP ? 2 * n : n;
      if (elems > avail) {
        seterr(err, errlen, "%s at offset %zu claims %" PRIu64 " %s but %zu bytes remain",
               ti.name, start, n, ti.kind == K_MAP ? "pairs" : "elements", avail);
        return TD_EPROTO;
      }
      if (n > TD_PROTO_MAX_ITEMS) {
        seterr(err, errlen, "%s at offset %zu has %" PRIu64 " %s, the limit is %d", ti.name,
               start, n, ti.kind == K_MAP ? "pairs" : "elements", TD_PROTO_MAX_ITEMS);
        return TD_ETOOBIG;
      }
      if (depth == TD_PROTO_MAX_DEPTH) {
        seterr(err, errlen, "%s at offset %zu is nested deeper than %d levels", ti.name, start,
               TD_PROTO_MAX_DEPTH);
        return TD_ETOOBIG;
      }
      if (elems > 0) {
        left[depth++] = (uint32_t)elems;
        outstanding += elems;
      }
    }
    while (depth > 0 && left[depth - 1] == 0)
      depth--;
    if (depth == 0)
      break;
    left[depth - 1]--;
    outstanding--;
  }
  if (off != len) {
    seterr(err, errlen, "%zu trailing bytes after the message, which ends at offset %zu",
           len - off, off);
    return TD_EPROTO;
  }
  return 0;
}

/* ---- decoding ---- */

static int key_cmp(const void *a, const void *b) {
  const msgpack_object_str *x = &(*(const msgpack_object_kv *const *)a)->key.via.str;
  const msgpack_object_str *y = &(*(const msgpack_object_kv *const *)b)->key.via.str;
  if (x->size != y->size)
    return x->size < y->size ? -1 : 1;
  return x->size == 0 ? 0 : memcmp(x->ptr, y->ptr, x->size);
}

static int dup_key(const msgpack_object_kv *a, const msgpack_object_kv *b, char *err,
                   size_t errlen) {
  char q[48];
  if (a->key.via.str.size != b->key.via.str.size ||
      (a->key.via.str.size > 0 && (a->key.via.str.ptr[0] != b->key.via.str.ptr[0] ||
       memcmp(a->key.via.str.ptr, b->key.via.str.ptr, a->key.via.str.size) != 0)))
    return 0;
  seterr(err, errlen, "duplicate key '%s' in a map",
         quote(a->key.via.str.ptr, a->key.via.str.size, q, sizeof q));
  return TD_EPROTO;
}

/* Keys unique in O(n log n): a hostile map of 100000 keys must stay cheap. */
static int check_unique(const msgpack_object_map *m, char *err, size_t errlen) {
  const msgpack_object_kv **v;
  int rc = 0;

  if (m->size <= 16) {
    /* A 64-bit filter on (length, first and last byte): only a key whose
     * bit is already set is compared with the keys before it. */
    uint64_t seen = 0;
    for (uint32_t i = 0; i < m->size && rc == 0; i++) {
      const msgpack_object_str *k = &m->ptr[i].key.via.str;
      unsigned h = k->size == 0 ? 0
                                : (k->size * 7u + (unsigned char)k->ptr[0] * 3u +
                                   (unsigned char)k->ptr[k->size - 1]) & 63u;
      if (seen >> h & 1)
        for (uint32_t j = 0; j < i && rc == 0; j++)
          rc = dup_key(&m->ptr[j], &m->ptr[i], err, errlen);
      seen |= (uint64_t)1 << h;
    }
    return rc;
  }
  v = malloc(m->size * sizeof *v);
  if (!v) {
    seterr(err, errlen, "out of memory checking a map of %" PRIu32 " keys", m->size);
    return TD_ENOMEM;
  }
  for (uint32_t i = 0; i < m->size; i++)
    v[i] = &m->ptr[i];
  qsort(v, m->size, sizeof *v, key_cmp);
  for (uint32_t i = 1; i < m->size && rc == 0; i++)
    rc = dup_key(v[i - 1], v[i], err, errlen);
  free(v);
  return rc;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;

  while (i < n) {
    unsigned c = s[i], need, min;
    uint32_t cp;

    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf) {
      need = 1, min = 0x80, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      need = 2, min = 0x800, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      need = 3, min = 0x10000, cp = c & 0x07;
    } else {
      return 0;
    }
    if (n - i <= need)
      return 0;
    for (unsigned k = 1; k <= need; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        return 0;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
    i += need + 1;
  }
  return 1;
}

/* Requests carry text only as UTF-8 (keys and values alike). */
static int check_utf8(const msgpack_object *o, char *err, size_t errlen) {
  int rc;

  switch (o->type) {
  case MSGPACK_OBJECT_STR:
    if (o->via.str.size > 0 && !utf8_valid((const unsigned char *)o->via.str.ptr, o->via.str.size)) {
      seterr(err, errlen, "a string in the request is not valid UTF-8");
      return TD_EPROTO;
    }
    return 0;
  case MSGPACK_OBJECT_ARRAY:
    for (uint32_t i = 0; i < o->via.array.size; i++)
      if ((rc = check_utf8(&o->via.array.ptr[i], err, errlen)) != 0)
        return rc;
    return 0;
  case MSGPACK_OBJECT_MAP:
    for (uint32_t i = 0; i < o->via.map.size; i++)
      if ((rc = check_utf8(&o->via.map.ptr[i].key, err, errlen)) != 0 ||
          (rc = check_utf8(&o->via.map.ptr[i].val, err, errlen)) != 0)
        return rc;
    return 0;
  default:
    return 0;
  }
}

/* msgpack-c leaves the pointer of an empty str/bin/ext NULL when no string
 * came before it, e.g. an empty first key; mem*() on NULL is undefined even
 * for 0 bytes, so every reader would have to special-case it: such pointers
 * become "".  In the same walk, every map key must be a string and unique. */
static int check_tree(msgpack_object *o, char *err, size_t errlen) {
  int rc;

  switch (o->type) {
  case MSGPACK_OBJECT_STR:
    if (!o->via.str.ptr)
      o->via.str.ptr = "";
    return 0;
  case MSGPACK_OBJECT_BIN:
    if (!o->via.bin.ptr)
      o->via.bin.ptr = "";
    return 0;
  case MSGPACK_OBJECT_EXT:
    if (!o->via.ext.ptr)
      o->via.ext.ptr = "";
    return 0;
  case MSGPACK_OBJECT_ARRAY:
    for (uint32_t i = 0; i < o->via.array.size; i++)
      if ((rc = check_tree(&o->via.array.ptr[i], err, errlen)) != 0)
        return rc;
    return 0;
  case MSGPACK_OBJECT_MAP:
    for (uint32_t i = 0; i < o->via.map.size; i++) {
      msgpack_object_kv *kv = &o->via.map.ptr[i];
      if (kv->key.type != MSGPACK_OBJECT_STR) {
        seterr(err, errlen, "a map key is a %s; keys must be strings", obj_type_name(&kv->key));
        return TD_EPROTO;
      }
      if (!kv->key.via.str.ptr)
        kv->key.via.str.ptr = "";
      if ((rc = check_tree(&kv->val, err, errlen)) != 0)
        return rc;
    }
    return check_unique(&o->via.map, err, errlen);
  default:
    return 0;
  }
}

static int check_version(const msgpack_object *root, uint64_t version, char *err,
                         size_t errlen) {
  const msgpack_object *v;
  if (version == 0)
    return 0;
  if (td_obj_get(root, "v", &v) != 0) {
    seterr(err, errlen, "message has no protocol version 'v'");
    return TD_EPROTO;
  }
  if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 == version)
    return 0;
  if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
    seterr(err, errlen,
           "message has protocol version %" PRIu64 " but this side speaks version %" PRIu64
           "; run a client and daemon of matching versions",
           v->via.u64, version);
    return TD_EVERSION;
  }
  if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    seterr(err, errlen,
           "message has protocol version %" PRId64 " but this side speaks version %" PRIu64,
           v->via.i64, version);
    return TD_EVERSION;
  }
  seterr(err, errlen, "protocol version 'v' must be an integer, got %s", obj_type_name(v));
  return TD_EPROTO;
}

int td_msg_decode(const void *buf, size_t len, td_msg **out, char *err, size_t errlen) {
  return td_msg_decode_as(buf, len, TD_PROTO_VERSION, out, err, errlen);
}

int td_msg_decode_as(const void *buf, size_t len, uint64_t version, td_msg **out, char *err,
                     size_t errlen) {
  td_msg *m;
  size_t off = 0;
  int rc = td_proto_check(buf, len, err, errlen);
  if (rc != 0)
    return rc;

  m = malloc(sizeof *m + len);
  if (!m) {
    seterr(err, errlen, "out of memory decoding a %zu-byte message", len);
    return TD_ENOMEM;
  }
  memcpy(m->data, buf, len);
  msgpack_unpacked_init(&m->up);
  switch (msgpack_unpack_next(&m->up, m->data, len, &off)) {
  case MSGPACK_UNPACK_SUCCESS:
    break;
  case MSGPACK_UNPACK_NOMEM_ERROR:
    seterr(err, errlen, "out of memory decoding a %zu-byte message", len);
    rc = TD_ENOMEM;
    goto fail;
  default:
    seterr(err, errlen, "msgpack could not decode the message");
    rc = TD_EPROTO;
    goto fail;
  }
  if (off != len) {
    seterr(err, errlen, "%zu trailing bytes after the message", len - off);
    rc = TD_EPROTO;
    goto fail;
  }
  if (m->up.data.type != MSGPACK_OBJECT_MAP) {
    seterr(err, errlen, "a message must be a map, got %s", obj_type_name(&m->up.data));
    rc = TD_EPROTO;
    goto fail;
  }
  if ((rc = check_tree(&m->up.data, err, errlen)) != 0 ||
      (rc = check_version(&m->up.data, version, err, errlen)) != 0)
    goto fail;
  *out = m;
  return 0;

fail:
  td_msg_free(m);
  return rc;
}

void td_msg_free(td_msg *m) {
  if (!m)
    return;
  msgpack_unpacked_destroy(&m->up);
  free(m);
}

const msgpack_object *td_msg_root(const td_msg *m) {
  return m ? &m->up.data : NULL;
}

/* ---- typed access ---- */

int td_obj_get(const msgpack_object *map, const char *key, const msgpack_object **out) {
  size_t klen;
  if (!map || map->type != MSGPACK_OBJECT_MAP || !key)
    return TD_EPROTO;
  klen = strlen(key);
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object_kv *kv = &map->via.map.ptr[i];
    if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == klen &&
        (klen == 0 || (kv->key.via.str.ptr[0] == key[0] &&
                       memcmp(kv->key.via.str.ptr, key, klen) == 0))) {
      *out = &kv->val;
      return 0;
    }
  }
  return TD_ENOENT;
}

static int get_typed(const msgpack_object *map, const char *key, msgpack_object_type t,
                     const msgpack_object **out) {
  const msgpack_object *o;
  int rc = td_obj_get(map, key, &o);
  if (rc != 0)
    return rc;
  if (o->type != t)
    return TD_EPROTO;
  *out = o;
  return 0;
}

int td_obj_str(const msgpack_object *map, const char *key, const char **s, size_t *len) {
  const msgpack_object *o;
  int rc = get_typed(map, key, MSGPACK_OBJECT_STR, &o);
  if (rc != 0)
    return rc;
  *s = o->via.str.ptr;
  *len = o->via.str.size;
  return 0;
}

int td_obj_cstr(const msgpack_object *map, const char *key, char *dst, size_t cap) {
  const char *s;
  size_t n;
  int rc = td_obj_str(map, key, &s, &n);
  if (rc != 0)
    return rc;
  if (memchr(s, '\0', n))
    return TD_EPROTO;
  if (n >= cap)
    return TD_ETOOBIG;
  memcpy(dst, s, n);
  dst[n] = '\0';
  return 0;
}

static int as_i64(const msgpack_object *o, int64_t *v) {
  if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
    *v = (int64_t)o->via.u64;
    return 0;
  }
  if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
    *v = o->via.i64;
    return 0;
  }
  return TD_EPROTO;
}

static int as_f64(const msgpack_object *o, double *v) {
  switch (o->type) {
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: *v = o->via.f64; return 0;
  case MSGPACK_OBJECT_POSITIVE_INTEGER: *v = (double)o->via.u64; return 0;
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: *v = (double)o->via.i64; return 0;
  default: return TD_EPROTO;
  }
}

int td_obj_i64(const msgpack_object *map, const char *key, int64_t *v) {
  const msgpack_object *o;
  int rc = td_obj_get(map, key, &o);
  return rc != 0 ? rc : as_i64(o, v);
}

int td_obj_u64(const msgpack_object *map, const char *key, uint64_t *v) {
  const msgpack_object *o;
  int rc = get_typed(map, key, MSGPACK_OBJECT_POSITIVE_INTEGER, &o);
  if (rc == 0)
    *v = o->via.u64;
  return rc;
}

int td_obj_f64(const msgpack_object *map, const char *key, double *v) {
  const msgpack_object *o;
  int rc = td_obj_get(map, key, &o);
  return rc != 0 ? rc : as_f64(o, v);
}

int td_obj_bool(const msgpack_object *map, const char *key, int *v) {
  const msgpack_object *o;
  int rc = get_typed(map, key, MSGPACK_OBJECT_BOOLEAN, &o);
  if (rc == 0)
    *v = o->via.boolean ? 1 : 0;
  return rc;
}

int td_obj_map(const msgpack_object *map, const char *key, const msgpack_object **v) {
  return get_typed(map, key, MSGPACK_OBJECT_MAP, v);
}

int td_obj_array(const msgpack_object *map, const char *key, const msgpack_object **v) {
  return get_typed(map, key, MSGPACK_OBJECT_ARRAY, v);
}

/* ---- requests ---- */

const td_msgdef *td_proto_defs(size_t *n) {
  *n = TD_ARRAY_SIZE(defs);
  return defs;
}

const td_msgdef *td_proto_find(const char *op, size_t oplen) {
  if (!op)
    return NULL;
  for (size_t i = 0; i < TD_ARRAY_SIZE(defs); i++)
    if (strlen(defs[i].op) == oplen && memcmp(defs[i].op, op, oplen) == 0)
      return &defs[i];
  return NULL;
}

/* Exact for integral bounds, whatever the magnitude of v. */
static int u64_in(uint64_t v, double min, double max) {
  if (min > 0 && (min >= U64_LIMIT || v < (uint64_t)min))
    return 0;
  return max >= U64_LIMIT || (max >= 0 && v <= (uint64_t)max);
}

static int i64_in(int64_t v, double min, double max) {
  if (v >= 0)
    return u64_in((uint64_t)v, min, max);
  if (max < 0 && (max < -0x1p63 || v > (int64_t)max))
    return 0;
  return min <= -0x1p63 || (min < 0 && v >= (int64_t)min);
}

static int range_err(const td_msgdef *d, const td_field *f, const char *val, char *err,
                     size_t errlen) {
  int lo = f->type == TD_FT_UINT ? f->min > 0 : f->min > -0x1p63;
  int hi = f->max < (f->type == TD_FT_INT ? 0x1p63 : U64_LIMIT);
  if (f->type == TD_FT_FLOAT)
    lo = f->min > -HUGE_VAL, hi = f->max < HUGE_VAL;
  if (lo && hi)
    seterr(err, errlen, "field '%s' in '%s' is %s; it must be between %.17g and %.17g", f->name,
           d->op, val, f->min, f->max);
  else if (lo)
    seterr(err, errlen, "field '%s' in '%s' is %s; it must be at least %.17g", f->name, d->op,
           val, f->min);
  else
    seterr(err, errlen, "field '%s' in '%s' is %s; it must be at most %.17g", f->name, d->op, val,
           f->max);
  return TD_EPROTO;
}

static int size_err(const td_msgdef *d, const td_field *f, uint32_t n, const char *unit,
                    char *err, size_t errlen) {
  if (n > f->max) {
    seterr(err, errlen, "field '%s' in '%s' is %" PRIu32 " %s long; the limit is %.0f", f->name,
           d->op, n, unit, f->max);
    return TD_ETOOBIG;
  }
  if (n < f->min) {
    if (n == 0)
      seterr(err, errlen, "field '%s' in '%s' must not be empty", f->name, d->op);
    else
      seterr(err, errlen, "field '%s' in '%s' is %" PRIu32 " %s long; it must be at least %.0f",
             f->name, d->op, n, unit, f->min);
    return TD_EPROTO;
  }
  return 0;
}

static int check_field(const td_msgdef *d, const td_field *f, const msgpack_object *o, char *err,
                       size_t errlen) {
  char val[32];
  int ok_type;
  switch (f->type) {
  case TD_FT_STR: ok_type = o->type == MSGPACK_OBJECT_STR; break;
  case TD_FT_INT: ok_type = o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                            o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER; break;
  case TD_FT_UINT: ok_type = o->type == MSGPACK_OBJECT_POSITIVE_INTEGER; break;
  case TD_FT_FLOAT: ok_type = o->type == MSGPACK_OBJECT_FLOAT32 ||
                              o->type == MSGPACK_OBJECT_FLOAT64 ||
                              o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                              o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER; break;
  case TD_FT_BOOL: ok_type = o->type == MSGPACK_OBJECT_BOOLEAN; break;
  case TD_FT_MAP: ok_type = o->type == MSGPACK_OBJECT_MAP; break;
  case TD_FT_ARRAY: ok_type = o->type == MSGPACK_OBJECT_ARRAY; break;
  default: ok_type = 0; break;
  }
  if (!ok_type) {
    seterr(err, errlen, "field '%s' in '%s' must be %s, got %s", f->name, d->op,
           td_ftype_name(f->type), obj_type_name(o));
    return TD_EPROTO;
  }

  switch (f->type) {
  case TD_FT_STR:
    if (memchr(o->via.str.ptr, '\0', o->via.str.size)) {
      seterr(err, errlen, "field '%s' in '%s' contains a NUL byte", f->name, d->op);
      return TD_EPROTO;
    }
    return size_err(d, f, o->via.str.size, "bytes", err, errlen);
  case TD_FT_MAP: return size_err(d, f, o->via.map.size, "pairs", err, errlen);
  case TD_FT_ARRAY: return size_err(d, f, o->via.array.size, "elements", err, errlen);
  case TD_FT_INT:
  case TD_FT_UINT:
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
      if (!u64_in(o->via.u64, f->min, f->max)) {
        snprintf(val, sizeof val, "%" PRIu64, o->via.u64);
        return range_err(d, f, val, err, errlen);
      }
    } else if (!i64_in(o->via.i64, f->min, f->max)) {
      snprintf(val, sizeof val, "%" PRId64, o->via.i64);
      return range_err(d, f, val, err, errlen);
    }
    return 0;
  case TD_FT_FLOAT: {
    double v = 0;
    as_f64(o, &v);
    if (!(v >= f->min && v <= f->max)) { /* NaN fails too */
      snprintf(val, sizeof val, "%.17g", v);
      return range_err(d, f, val, err, errlen);
    }
    return 0;
  }
  default:
    return 0;
  }
}

int td_proto_check_field(const td_msgdef *d, const td_field *f, const msgpack_object *o,
                         char *err, size_t errlen) {
  return check_field(d, f, o, err, errlen);
}

static int validate(const td_msgdef *d, const msgpack_object *root, char *err, size_t errlen) {
  char q[48];
  int rc;
  for (uint32_t i = 0; i < root->via.map.size; i++) {
    const msgpack_object_kv *kv = &root->via.map.ptr[i];
    const msgpack_object_str *k = &kv->key.via.str;
    const td_field *f = NULL;
    if ((k->size == 1 && k->ptr[0] == 'v') || (k->size == 2 && memcmp(k->ptr, "op", 2) == 0))
      continue;
    if (k->size == 4 && memcmp(k->ptr, "cred", 4) == 0) {
      if ((rc = check_field(d, &td__cred_field, &kv->val, err, errlen)) != 0)
        return rc;
      continue;
    }
    for (size_t j = 0; j < d->nfields && !f; j++)
      if (strlen(d->fields[j].name) == k->size && memcmp(d->fields[j].name, k->ptr, k->size) == 0)
        f = &d->fields[j];
    if (!f) {
      seterr(err, errlen, "unknown field '%s' in '%s'", quote(k->ptr, k->size, q, sizeof q),
             d->op);
      return TD_EPROTO;
    }
    if ((rc = check_field(d, f, &kv->val, err, errlen)) != 0)
      return rc;
  }
  for (size_t j = 0; j < d->nfields; j++) {
    const msgpack_object *o;
    if (d->fields[j].required && td_obj_get(root, d->fields[j].name, &o) != 0) {
      seterr(err, errlen, "missing required field '%s' in '%s'", d->fields[j].name, d->op);
      return TD_EPROTO;
    }
  }
  return 0;
}

int td_proto_parse_request(const void *buf, size_t len, td_msg **out, const td_msgdef **def,
                           char *err, size_t errlen) {
  td_msg *m;
  const msgpack_object *root, *op;
  const td_msgdef *d;
  char q[48];
  int rc = td_msg_decode(buf, len, &m, err, errlen);
  if (rc != 0)
    return rc;
  root = td_msg_root(m);
  /* The job file's text is left to the job parser, which names the line
   * of a bad byte; everything else is checked here. */
  for (uint32_t i = 0; i < root->via.map.size; i++) {
    const msgpack_object_kv *kv = &root->via.map.ptr[i];
    if ((rc = check_utf8(&kv->key, err, errlen)) != 0)
      goto fail;
    if (kv->key.via.str.size == 3 && memcmp(kv->key.via.str.ptr, "job", 3) == 0)
      continue;
    if ((rc = check_utf8(&kv->val, err, errlen)) != 0)
      goto fail;
  }
  rc = td_obj_get(root, "op", &op);
  if (rc != 0) {
    seterr(err, errlen, "request has no 'op'");
    rc = TD_EPROTO;
    goto fail;
  }
  if (op->type != MSGPACK_OBJECT_STR) {
    seterr(err, errlen, "'op' must be a string, got %s", obj_type_name(op));
    rc = TD_EPROTO;
    goto fail;
  }
  d = td_proto_find(op->via.str.ptr, op->via.str.size);
  if (!d) {
    seterr(err, errlen, "unknown op '%s'", quote(op->via.str.ptr, op->via.str.size, q, sizeof q));
    rc = TD_EPROTO;
    goto fail;
  }
  if ((rc = validate(d, root, err, errlen)) != 0)
    goto fail;
  *out = m;
  *def = d;
  return 0;

fail:
  td_msg_free(m);
  return rc;
}

/* ---- the reply and event catalogue ---- */

const td_replydef *td_proto_replies(size_t *n) {
  *n = TD_ARRAY_SIZE(replies);
  return replies;
}

const td_replydef *td_proto_events(size_t *n) {
  *n = TD_ARRAY_SIZE(events);
  return events;
}

static const td_replydef *def_find(const td_replydef *tab, size_t n, const char *name) {
  for (size_t i = 0; name && i < n; i++)
    if (strcmp(tab[i].name, name) == 0)
      return &tab[i];
  return NULL;
}

const td_replydef *td_proto_reply_find(const char *name) {
  return def_find(replies, TD_ARRAY_SIZE(replies), name);
}

const td_replydef *td_proto_event_find(const char *topic) {
  return def_find(events, TD_ARRAY_SIZE(events), topic);
}

static size_t def_count(const td_replydef *def) {
  return (def->base ? def->base->nfields : 0) + def->nfields;
}

/* Field i of def counting base's first. */
static const td_replyfield *def_at(const td_replydef *def, size_t i) {
  size_t nb = def->base ? def->base->nfields : 0;
  return i < nb ? &def->base->fields[i] : &def->fields[i - nb];
}

static int field_is(const td_replyfield *f, const char *name, size_t len) {
  return strlen(f->name) == len && memcmp(f->name, name, len) == 0;
}

/* The index of field name in def, or -1; start is where to look first. */
static long def_index(const td_replydef *def, const char *name, size_t len, size_t start) {
  size_t n = def_count(def);
  if (start < n && field_is(def_at(def, start), name, len))
    return (long)start;
  for (size_t i = 0; i < n; i++)
    if (field_is(def_at(def, i), name, len))
      return (long)i;
  return -1;
}

const td_replyfield *td_replydef_field(const td_replydef *def, const char *name, size_t len) {
  long i = def ? def_index(def, name, len, 0) : -1;
  return i < 0 ? NULL : def_at(def, (size_t)i);
}

static int obj_has_type(const msgpack_object *o, td_ftype t) {
  switch (t) {
  case TD_FT_STR: return o->type == MSGPACK_OBJECT_STR;
  case TD_FT_INT: return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                         o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
  case TD_FT_UINT: return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER;
  case TD_FT_FLOAT: return o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64;
  case TD_FT_BOOL: return o->type == MSGPACK_OBJECT_BOOLEAN;
  case TD_FT_MAP: return o->type == MSGPACK_OBJECT_MAP;
  case TD_FT_ARRAY: return o->type == MSGPACK_OBJECT_ARRAY;
  }
  return 0;
}

static int check_map(const td_replydef *def, const msgpack_object *o, int top, const char *path,
                     char *err, size_t errlen) {
  char q[48], sub[160];
  int rc;
  if (o->type != MSGPACK_OBJECT_MAP) {
    seterr(err, errlen, "%s must be a map ('%s'), got %s", path, def->name, obj_type_name(o));
    return TD_EPROTO;
  }
  for (uint32_t i = 0; i < o->via.map.size; i++) {
    const msgpack_object_kv *kv = &o->via.map.ptr[i];
    const msgpack_object_str *k = &kv->key.via.str;
    const td_replyfield *f;
    if (kv->key.type != MSGPACK_OBJECT_STR) {
      seterr(err, errlen, "%s has a key that is not a string", path);
      return TD_EPROTO;
    }
    if (top >= 1 && k->size == 1 && k->ptr[0] == 'v')
      continue;
    if (top >= 2 && k->size == 2 && memcmp(k->ptr, "ok", 2) == 0)
      continue;
    f = td_replydef_field(def, k->ptr, k->size);
    quote(k->ptr, k->size, q, sizeof q);
    if (!f) {
      seterr(err, errlen, "%s has field '%s', which '%s' in the catalogue lacks", path, q,
             def->name);
      return TD_EPROTO;
    }
    snprintf(sub, sizeof sub, "%s.%s", path, q);
    if (!obj_has_type(&kv->val, f->type)) {
      seterr(err, errlen, "%s must be %s, got %s", sub, td_ftype_name(f->type),
             obj_type_name(&kv->val));
      return TD_EPROTO;
    }
    if (f->sub && f->type == TD_FT_MAP && (rc = check_map(f->sub, &kv->val, 0, sub, err,
                                                          errlen)) != 0)
      return rc;
    for (uint32_t j = 0; f->sub && f->type == TD_FT_ARRAY && j < kv->val.via.array.size; j++) {
      char item[176];
      snprintf(item, sizeof item, "%s[%" PRIu32 "]", sub, j);
      if ((rc = check_map(f->sub, &kv->val.via.array.ptr[j], 0, item, err, errlen)) != 0)
        return rc;
    }
  }
  for (size_t i = 0; i < def_count(def); i++) {
    const td_replyfield *f = def_at(def, i);
    const msgpack_object *v;
    if (f->required && td_obj_get(o, f->name, &v) != 0) {
      seterr(err, errlen, "%s lacks the required field '%s' of '%s'", path, f->name, def->name);
      return TD_EPROTO;
    }
  }
  return 0;
}

int td_proto_check_map(const td_replydef *def, const msgpack_object *map, int top, char *err,
                       size_t errlen) {
  return check_map(def, map, top, def->name, err, errlen);
}

int td_proto_check_reply(const char *op, const msgpack_object *root, char *err, size_t errlen) {
  const td_replydef *def;
  int ok;
  if (td_obj_bool(root, "ok", &ok) != 0) {
    seterr(err, errlen, "reply has no boolean 'ok'");
    return TD_EPROTO;
  }
  def = td_proto_reply_find(ok ? op : "error");
  if (!def) {
    seterr(err, errlen, "no reply '%s' in the catalogue", op ? op : "(null)");
    return TD_EPROTO;
  }
  return check_map(def, root, 2, def->name, err, errlen);
}

int td_proto_check_event(const char *topic, const msgpack_object *root, char *err,
                         size_t errlen) {
  const td_replydef *def = td_proto_event_find(topic);
  if (!def) {
    seterr(err, errlen, "no event '%s' in the catalogue", topic ? topic : "(null)");
    return TD_EPROTO;
  }
  return check_map(def, root, 1, def->name, err, errlen);
}

/* ---- packing ---- */

static void pk(td_pack *p, int rc) {
  if (rc != 0 && p->err == 0)
    p->err = TD_ENOMEM;
}

void td_pack_init(td_pack *p) {
  memset(p, 0, sizeof *p);
  msgpack_sbuffer_init(&p->sb);
  msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
}

void td_pack_free(td_pack *p) {
  if (!p)
    return;
  msgpack_sbuffer_destroy(&p->sb);
  msgpack_sbuffer_init(&p->sb);
}

/* Every writer goes through here, so nothing is written after a failure. */
#define PACK(p, call)                                                                         \
  do {                                                                                        \
    if ((p)->err == 0)                                                                        \
      pk((p), (call));                                                                        \
  } while (0)

void td_pack_map(td_pack *p, uint32_t n) { PACK(p, msgpack_pack_map(&p->pk, n)); }
void td_pack_array(td_pack *p, uint32_t n) { PACK(p, msgpack_pack_array(&p->pk, n)); }
void td_pack_i64(td_pack *p, int64_t v) { PACK(p, msgpack_pack_int64(&p->pk, v)); }
void td_pack_u64(td_pack *p, uint64_t v) { PACK(p, msgpack_pack_uint64(&p->pk, v)); }
void td_pack_f64(td_pack *p, double v) { PACK(p, msgpack_pack_double(&p->pk, v)); }
void td_pack_nil(td_pack *p) { PACK(p, msgpack_pack_nil(&p->pk)); }

void td_pack_bool(td_pack *p, int v) {
  PACK(p, v ? msgpack_pack_true(&p->pk) : msgpack_pack_false(&p->pk));
}

void td_pack_strn(td_pack *p, const char *s, size_t n) {
  if (!s)
    s = "", n = 0;
  if (n > UINT32_MAX) {
    if (p->err == 0)
      p->err = TD_ETOOBIG;
    return;
  }
  PACK(p, msgpack_pack_str(&p->pk, n));
  PACK(p, msgpack_pack_str_body(&p->pk, s, n));
}

void td_pack_str(td_pack *p, const char *s) { td_pack_strn(p, s, s ? strlen(s) : 0); }

void td_pack_kv_str(td_pack *p, const char *k, const char *v) { td_pack_str(p, k), td_pack_str(p, v); }
void td_pack_kv_i64(td_pack *p, const char *k, int64_t v) { td_pack_str(p, k), td_pack_i64(p, v); }
void td_pack_kv_u64(td_pack *p, const char *k, uint64_t v) { td_pack_str(p, k), td_pack_u64(p, v); }
void td_pack_kv_f64(td_pack *p, const char *k, double v) { td_pack_str(p, k), td_pack_f64(p, v); }
void td_pack_kv_bool(td_pack *p, const char *k, int v) { td_pack_str(p, k), td_pack_bool(p, v); }

void td_pack_request(td_pack *p, const char *op, uint32_t nfields) {
  td_pack_map(p, 2 + nfields);
  td_pack_kv_u64(p, "v", TD_PROTO_VERSION);
  td_pack_kv_str(p, "op", op);
}

int td_pack_request_add(td_pack *out, const void *req, size_t len, const char *key,
                        const char *val) {
  const unsigned char *b = req;
  uint32_t n;
  size_t head;

  td_pack_init(out);
  if (len >= 1 && (b[0] & 0xf0) == 0x80) {
    n = b[0] & 0x0f;
    head = 1;
  } else if (len >= 3 && b[0] == 0xde) {
    n = (uint32_t)b[1] << 8 | b[2];
    head = 3;
  } else if (len >= 5 && b[0] == 0xdf) {
    n = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
    head = 5;
  } else {
    return TD_EPROTO;
  }
  if (n == UINT32_MAX)
    return TD_ETOOBIG;
  /* A map's pairs need no order: the new one goes last. */
  td_pack_map(out, n + 1);
  if (!out->err && msgpack_sbuffer_write(&out->sb, (const char *)b + head, len - head) != 0)
    out->err = TD_ENOMEM;
  td_pack_kv_str(out, key, val);
  return td_pack_error(out);
}

void td_pack_reply_ok(td_pack *p, uint32_t nfields) {
  td_pack_map(p, 2 + nfields);
  td_pack_kv_u64(p, "v", TD_PROTO_VERSION);
  td_pack_kv_bool(p, "ok", 1);
}

void td_pack_reply_err_begin(td_pack *p, int code, const char *msg, uint32_t nextra) {
  td_pack_map(p, 4 + nextra);
  td_pack_kv_u64(p, "v", TD_PROTO_VERSION);
  td_pack_kv_bool(p, "ok", 0);
  td_pack_kv_str(p, "error", td_err_name(code));
  td_pack_kv_str(p, "message", msg && *msg ? msg : td_strerror(code));
}

void td_pack_reply_err(td_pack *p, int code, const char *msg) {
  td_pack_reply_err_begin(p, code, msg, 0);
}

int td_pack_error(const td_pack *p) {
  if (p->err != 0)
    return p->err;
  return p->sb.size > TD_PROTO_MAX_MSG ? TD_ETOOBIG : 0;
}

const void *td_pack_data(const td_pack *p) { return td_pack_error(p) ? NULL : p->sb.data; }
size_t td_pack_len(const td_pack *p) { return td_pack_error(p) ? 0 : p->sb.size; }

/* ---- maps under construction ---- */

static void map_fail(td_map *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void map_fail(td_map *m, const char *fmt, ...) {
  va_list ap;
  if (m->p->err != 0)
    return;
  m->p->err = TD_EINTERNAL;
  va_start(ap, fmt);
  vsnprintf(m->p->why, sizeof m->p->why, fmt, ap);
  va_end(ap);
}

void td_map_begin(td_map *m, td_pack *p, const td_replydef *def) {
  memset(m, 0, sizeof *m);
  m->p = p;
  m->def = def;
  m->at = p->sb.size;
  PACK(p, msgpack_sbuffer_write(&p->sb, "\xdf\0\0\0\0", 5));
}

void td_map_end(td_map *m) {
  td_pack *p = m->p;
  unsigned char *h;
  for (size_t i = 0; m->def && i < def_count(m->def); i++)
    if (def_at(m->def, i)->required && !(m->seen >> i & 1))
      map_fail(m, "'%s' lacks its required field '%s'", m->def->name, def_at(m->def, i)->name);
  if (p->err != 0)
    return;
  h = (unsigned char *)p->sb.data + m->at + 1;
  h[0] = (unsigned char)(m->n >> 24), h[1] = (unsigned char)(m->n >> 16);
  h[2] = (unsigned char)(m->n >> 8), h[3] = (unsigned char)m->n;
}

/* Packs key k as the next entry; returns its field (NULL when unchecked
 * or refused). */
static const td_replyfield *map_key(td_map *m, const char *k, td_ftype t) {
  const td_replyfield *f;
  long i;
  td_pack_str(m->p, k);
  m->n++;
  if (!m->def || m->p->err)
    return NULL;
  i = def_index(m->def, k, strlen(k), m->next);
  if (i < 0) {
    map_fail(m, "field '%s' is not in '%s' in the catalogue (proto/proto.c, PROTOCOL.md)", k,
             m->def->name);
    return NULL;
  }
  f = def_at(m->def, (size_t)i);
  if (f->type != t)
    map_fail(m, "field '%s' of '%s' is %s in the catalogue, packed as %s", k, m->def->name,
             td_ftype_name(f->type), td_ftype_name(t));
  else if (m->seen >> i & 1)
    map_fail(m, "field '%s' of '%s' packed twice", k, m->def->name);
  m->seen |= (uint64_t)1 << i;
  m->next = (size_t)i + 1;
  return f;
}

void td_map_kv_str(td_map *m, const char *k, const char *v) {
  map_key(m, k, TD_FT_STR);
  td_pack_str(m->p, v);
}

void td_map_kv_strn(td_map *m, const char *k, const char *v, size_t n) {
  map_key(m, k, TD_FT_STR);
  td_pack_strn(m->p, v, n);
}

void td_map_kv_i64(td_map *m, const char *k, int64_t v) {
  map_key(m, k, TD_FT_INT);
  td_pack_i64(m->p, v);
}

void td_map_kv_u64(td_map *m, const char *k, uint64_t v) {
  map_key(m, k, TD_FT_UINT);
  td_pack_u64(m->p, v);
}

void td_map_kv_f64(td_map *m, const char *k, double v) {
  map_key(m, k, TD_FT_FLOAT);
  td_pack_f64(m->p, v);
}

void td_map_kv_bool(td_map *m, const char *k, int v) {
  map_key(m, k, TD_FT_BOOL);
  td_pack_bool(m->p, v);
}

void td_map_kv_map(td_map *m, const char *k, td_map *sub) {
  const td_replyfield *f = map_key(m, k, TD_FT_MAP);
  td_map_begin(sub, m->p, f ? f->sub : NULL);
}

void td_map_kv_array(td_map *m, const char *k, uint32_t n) {
  m->array = map_key(m, k, TD_FT_ARRAY);
  td_pack_array(m->p, n);
}

void td_map_item(td_map *m, td_map *item) {
  td_map_begin(item, m->p, m->array ? m->array->sub : NULL);
}

/* The entries every reply or event starts with: not catalogue fields. */
static void map_header(td_map *m, int ok) {
  td_pack_kv_u64(m->p, "v", TD_PROTO_VERSION);
  m->n++;
  if (ok >= 0) {
    td_pack_kv_bool(m->p, "ok", ok);
    m->n++;
  }
}

void td_map_reply_ok(td_map *m, td_pack *p, const char *op) {
  const td_replydef *def = td_proto_reply_find(op);
  td_map_begin(m, p, def);
  map_header(m, 1);
  if (!def)
    map_fail(m, "no reply to '%s' in the catalogue (proto/proto.c)", op ? op : "(null)");
}

void td_map_reply_err(td_map *m, td_pack *p, int code, const char *msg) {
  td_map_begin(m, p, td_proto_reply_find("error"));
  map_header(m, 0);
  td_map_kv_str(m, "error", td_err_name(code));
  td_map_kv_str(m, "message", msg && *msg ? msg : td_strerror(code));
}

int td_map_event(td_map *m, td_pack *p, const char *topic) {
  size_t n = topic ? strlen(topic) : 0;
  const td_replydef *def = td_proto_event_find(topic);
  if (n == 0 || n > TD_PROTO_MAX_TOPIC) {
    memset(m, 0, sizeof *m); /* td_map_end is harmless on it */
    m->p = p;
    if (p->err == 0)
      p->err = TD_EINVAL;
    return TD_EINVAL;
  }
  PACK(p, msgpack_sbuffer_write(&p->sb, topic, n + 1));
  td_map_begin(m, p, def);
  map_header(m, -1);
  if (!def)
    map_fail(m, "no event '%s' in the catalogue (proto/proto.c)", topic);
  return p->err;
}

/* ---- replies ---- */

/* Copy a message for a person; control characters other than newline and
 * tab become '?' so a hostile peer cannot drive the terminal. */
static void copy_text(char *dst, size_t cap, const char *s, size_t n) {
  size_t i;
  if (!dst || cap == 0)
    return;
  for (i = 0; i < n && i + 1 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    dst[i] = (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f ? '?' : (char)c;
  }
  dst[i] = '\0';
}

int td_proto_decode_reply(const void *buf, size_t len, td_msg **out, int *code, char *err,
                          size_t errlen) {
  td_msg *m;
  const msgpack_object *root;
  const char *name, *msg;
  size_t nlen, mlen;
  char cname[32], q[48];
  int ok, c, rc = td_msg_decode(buf, len, &m, err, errlen);
  if (rc != 0)
    return rc;
  root = td_msg_root(m);
  if (td_obj_bool(root, "ok", &ok) != 0) {
    seterr(err, errlen, "reply has no boolean 'ok'");
    rc = TD_EPROTO;
    goto fail;
  }
  if (ok) {
    *out = m;
    *code = 0;
    return 0;
  }
  if (td_obj_str(root, "error", &name, &nlen) != 0) {
    seterr(err, errlen, "error reply has no string 'error' code");
    rc = TD_EPROTO;
    goto fail;
  }
  c = TD_EINTERNAL;
  if (nlen < sizeof cname && !memchr(name, '\0', nlen)) {
    memcpy(cname, name, nlen);
    cname[nlen] = '\0';
    c = td_err_from_name(cname);
  }
  rc = td_obj_str(root, "message", &msg, &mlen);
  if (rc == TD_EPROTO) {
    seterr(err, errlen, "error reply's 'message' is not a string");
    goto fail;
  }
  if (rc == 0)
    copy_text(err, errlen, msg, mlen);
  else
    copy_text(err, errlen, td_strerror(c), strlen(td_strerror(c)));
  if (c == TD_EINTERNAL && !(nlen == 9 && memcmp(name, "EINTERNAL", 9) == 0) && err) {
    size_t used = strlen(err);
    if (used < errlen)
      snprintf(err + used, errlen - used, " (error code '%s' is unknown to this client)",
               quote(name, nlen, q, sizeof q));
  }
  *out = m;
  *code = c;
  return 0;

fail:
  td_msg_free(m);
  return rc;
}

int td_proto_parse_reply(const void *buf, size_t len, td_msg **out, char *err, size_t errlen) {
  td_msg *m;
  int code, rc = td_proto_decode_reply(buf, len, &m, &code, err, errlen);
  if (rc != 0)
    return rc;
  if (code != 0) {
    td_msg_free(m);
    return code;
  }
  *out = m;
  return 0;
}

/* ---- status events ---- */

int td_pack_event_begin(td_pack *p, const char *topic, uint32_t nfields) {
  size_t n = topic ? strlen(topic) : 0;
  if (n == 0 || n > TD_PROTO_MAX_TOPIC)
    return TD_EINVAL;
  PACK(p, msgpack_sbuffer_write(&p->sb, topic, n + 1));
  td_pack_map(p, 1 + nfields);
  td_pack_kv_u64(p, "v", TD_PROTO_VERSION);
  return p->err;
}

int td_event_split(const void *buf, size_t len, const char **topic, const void **body,
                   size_t *body_len) {
  const char *b = buf, *nul;
  if (!b || len == 0)
    return TD_EPROTO;
  nul = memchr(b, '\0', len < TD_PROTO_MAX_TOPIC + 1 ? len : TD_PROTO_MAX_TOPIC + 1);
  if (!nul || nul == b || (size_t)(nul - b) + 1 == len)
    return TD_EPROTO;
  *topic = b;
  *body = nul + 1;
  *body_len = len - (size_t)(nul - b) - 1;
  return 0;
}
