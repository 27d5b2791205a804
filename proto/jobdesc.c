#include "jobdesc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "layers.h"
#include "util.h"

/* What a C member is.  Integers and floats are stored by their size. */
typedef enum { JD_UINT, JD_INT, JD_FLOAT, JD_BOOL, JD_STR, JD_MAP, JD_LIST } jd_kind;

enum { JD_LO_OPEN = 1, JD_HI_OPEN = 2 };

/* One member of a struct: its key, where it is, and its bounds (numbers:
 * values; STR: the least length, the most being its array's size - 1;
 * LIST: the count).  A MAP's sub is the struct's table; a LIST's item
 * describes one element (at offset 0 of it) and count where its number
 * of elements (an int) is. */
typedef struct jd_field {
  const char *name;
  jd_kind kind;
  size_t off, size;
  double min, max;
  unsigned flags;
  const struct jd_field *sub; /* MAP: {NULL}-ended fields; LIST: the item */
  size_t count, item_size;
} jd_field;

#define MEMBER_SIZE(st, m) sizeof(((st *)0)->m)
#define NUM(k, kind, st, m, lo, hi, fl) \
  {k, JD_##kind, offsetof(st, m), MEMBER_SIZE(st, m), lo, hi, fl, NULL, 0, 0}
#define U(k, st, m, ...) NUM(k, UINT, st, m, __VA_ARGS__, 0)
#define I(k, st, m, lo, hi) NUM(k, INT, st, m, lo, hi, 0)
#define FL(k, st, m, lo, hi, fl) NUM(k, FLOAT, st, m, lo, hi, fl)
#define B(k, st, m) NUM(k, BOOL, st, m, 0, 1, 0)
#define S(k, st, m, least) {k, JD_STR, offsetof(st, m), MEMBER_SIZE(st, m), least, 0, 0, NULL, 0, 0}
#define MAP(k, st, m, tbl) {k, JD_MAP, offsetof(st, m), MEMBER_SIZE(st, m), 0, 0, 0, tbl, 0, 0}
#define LIST(k, st, m, n, lo, hi, item)                                                    \
  {k, JD_LIST, offsetof(st, m), MEMBER_SIZE(st, m), lo, hi, 0, item, offsetof(st, n), \
   sizeof(((st *)0)->m[0])}
#define ANY_U64 0, 0x1p64
#define ANY_U32 0, UINT32_MAX
#define ELEMS_MAX (1u << 24) /* a dimension, as the job file's */
#define OFFSET_MAX (ELEMS_MAX * 8u)

static const jd_field dim_item = {"", JD_UINT, 0, sizeof(uint32_t), 1, ELEMS_MAX, 0, NULL, 0, 0};
static const jd_field remedy_item = {"", JD_INT, 0, sizeof(td_remedy), 0, TD_REMEDY__COUNT - 1,
                                     0, NULL, 0, 0};

/* An input of a layer: a shapes[] index (td_jobspec_shapes checks it is
 * earlier than the layer). */
static const jd_field input_item = {"", JD_UINT, 0, sizeof(uint8_t), 0, TD_MAX_LAYERS, 0, NULL,
                                    0, 0};

/* A field a layer type does not use is 0, so every bound takes 0. */
static const jd_field layer_fields[] = {
    I("type", td_layer, type, 0, TD_LAYER__COUNT - 1),
    U("units", td_layer, units, 0, 65536),
    U("filters", td_layer, filters, 0, 65536),
    U("kernel", td_layer, kernel, 0, 4096),
    U("stride", td_layer, stride, 0, 4096),
    U("padding", td_layer, padding, 0, 4096),
    U("approximate", td_layer, approximate, 0, 1),
    FL("p", td_layer, p, 0, 1, JD_HI_OPEN),
    FL("eps", td_layer, eps, 0, 1, 0),
    FL("momentum", td_layer, momentum, 0, 1, 0),
    U("vocab", td_layer, vocab, 0, 1u << 24),
    U("dim", td_layer, dim, 0, 65536),
    U("heads", td_layer, heads, 0, 4096),
    U("causal", td_layer, causal, 0, 1),
    U("frozen", td_layer, frozen, 0, 1),
    I("line", td_layer, line, 0, INT_MAX),
    S("name", td_layer, name, 0),
    LIST("inputs", td_layer, inputs, ninputs, 0, TD_MAX_INPUTS, &input_item),
    {0},
};
static const jd_field layer_item = {"", JD_MAP, 0, sizeof(td_layer), 0, 0, 0, layer_fields, 0, 0};

static const jd_field split_fields[] = {
    S("images", td_data_split, images, 0),
    S("labels", td_data_split, labels, 0),
    U("limit", td_data_split, limit, ANY_U32),
    {0},
};
static const jd_field column_item = {"", JD_UINT, 0, sizeof(uint32_t), 0, 65535, 0, NULL, 0, 0};
static const jd_field csv_fields[] = {
    U("label_column", td_data_csv, label_column, 0, 65535),
    I("header", td_data_csv, header, 0, 1),
    I("dtype", td_data_csv, dtype, 0, TD_DTYPE_F32),
    LIST("target_columns", td_data_csv, target_columns, ntarget_columns, 0,
         TD_MAX_TARGET_COLUMNS, &column_item),
    {0},
};
/* Unused (another format): rank 0 and sample_offset UINT32_MAX. */
static const jd_field raw_fields[] = {
    LIST("shape", td_data_raw, shape, rank, 0, TD_MAX_RANK, &dim_item),
    I("dtype", td_data_raw, dtype, 0, TD_DTYPE_F32),
    I("label_dtype", td_data_raw, label_dtype, 0, TD_DTYPE_F32),
    U("label_offset", td_data_raw, label_offset, 0, OFFSET_MAX),
    U("sample_offset", td_data_raw, sample_offset, ANY_U32),
    U("record_bytes", td_data_raw, record_bytes, 0, OFFSET_MAX),
    U("header_bytes", td_data_raw, header_bytes, ANY_U64),
    {0},
};
static const jd_field mean_item = {"", JD_FLOAT, 0, sizeof(float), -1e6, 1e6, 0, NULL, 0, 0};
static const jd_field std_item = {"", JD_FLOAT, 0, sizeof(float), 0, 1e6, JD_LO_OPEN, NULL, 0, 0};
static const jd_field augment_fields[] = {
    I("crop", td_augment, crop, 0, 1),
    U("crop_padding", td_augment, crop_padding, 0, 1024),
    I("hflip", td_augment, hflip, 0, 1),
    LIST("mean", td_augment, mean, nmean, 0, TD_AUGMENT_MAX_CHANNELS, &mean_item),
    LIST("std", td_augment, std, nstd, 0, TD_AUGMENT_MAX_CHANNELS, &std_item),
    {0},
};
static const jd_field optimizer_fields[] = {
    I("kind", td_optimizer, kind, 0, TD_OPT_ADAMW),
    FL("lr", td_optimizer, lr, 0, 10, JD_LO_OPEN),
    FL("beta1", td_optimizer, beta1, 0, 1, JD_HI_OPEN),
    FL("beta2", td_optimizer, beta2, 0, 1, JD_HI_OPEN),
    FL("eps", td_optimizer, eps, 0, 1, JD_LO_OPEN),
    FL("momentum", td_optimizer, momentum, 0, 1, JD_HI_OPEN),
    FL("dampening", td_optimizer, dampening, 0, 1, 0),
    I("nesterov", td_optimizer, nesterov, 0, 1),
    FL("weight_decay", td_optimizer, weight_decay, 0, 1, 0),
    {0},
};
static const jd_field schedule_fields[] = {
    I("kind", td_schedule, kind, 0, TD_SCHED__COUNT - 1),
    FL("lr", td_schedule, lr, 0, 10, JD_LO_OPEN),
    U("step_size", td_schedule, step_size, ANY_U64),
    FL("gamma", td_schedule, gamma, 0, 1e6, JD_LO_OPEN),
    U("t_max", td_schedule, t_max, ANY_U64),
    FL("eta_min", td_schedule, eta_min, 0, 10, 0),
    U("warmup_steps", td_schedule, warmup_steps, ANY_U64),
    FL("warmup_start", td_schedule, warmup_start, 0, 1, JD_LO_OPEN),
    {0},
};
static const jd_field loss_scale_fields[] = {
    B("enabled", td_lossscale_cfg, enabled),
    FL("init_scale", td_lossscale_cfg, init_scale, 0, 1e30, JD_LO_OPEN),
    FL("growth_factor", td_lossscale_cfg, growth_factor, 1, 1e6, JD_LO_OPEN),
    FL("backoff_factor", td_lossscale_cfg, backoff_factor, 0, 1, JD_LO_OPEN | JD_HI_OPEN),
    U("growth_interval", td_lossscale_cfg, growth_interval, 1, UINT32_MAX),
    {0},
};

static const jd_field early_stop_fields[] = {
    I("enabled", td_cb_early_stop, enabled, 0, 1),
    I("monitor", td_cb_early_stop, monitor, 0, TD_MONITOR__COUNT - 1),
    U("patience", td_cb_early_stop, patience, 0, 10000),
    FL("min_delta", td_cb_early_stop, min_delta, 0, 1e6, 0),
    {0},
};
static const jd_field keep_best_fields[] = {
    I("enabled", td_cb_keep_best, enabled, 0, 1),
    I("monitor", td_cb_keep_best, monitor, 0, TD_MONITOR__COUNT - 1),
    {0},
};
/* factor may be 0 in a spec built in code, with the callback off */
static const jd_field plateau_fields[] = {
    I("enabled", td_cb_plateau, enabled, 0, 1),
    I("monitor", td_cb_plateau, monitor, 0, TD_MONITOR__COUNT - 1),
    FL("factor", td_cb_plateau, factor, 0, 1, JD_HI_OPEN),
    U("patience", td_cb_plateau, patience, 0, 10000),
    FL("min_delta", td_cb_plateau, min_delta, 0, 1e6, 0),
    U("cooldown", td_cb_plateau, cooldown, 0, 10000),
    FL("min_lr", td_cb_plateau, min_lr, 0, 10, 0),
    {0},
};
static const jd_field callbacks_fields[] = {
    MAP("early_stop", td_callbacks, early_stop, early_stop_fields),
    MAP("keep_best", td_callbacks, keep_best, keep_best_fields),
    MAP("plateau", td_callbacks, plateau, plateau_fields),
    {0},
};

/* td_jobspec, member by member, in its order. */
static const jd_field job_fields[] = {
    S("name", td_jobspec, name, 1),
    LIST("input_dims", td_jobspec, input_dims, input_rank, 1, TD_MAX_RANK, &dim_item),
    I("input_seq", td_jobspec, input_seq, 0, 1),
    LIST("layers", td_jobspec, layers, nlayers, 1, TD_MAX_LAYERS, &layer_item),
    I("format", td_jobspec, format, 0, TD_DATA_IMAGES),
    MAP("train", td_jobspec, train, split_fields),
    MAP("test", td_jobspec, test, split_fields),
    FL("norm_mean", td_jobspec, norm_mean, -1e6, 1e6, 0),
    FL("norm_std", td_jobspec, norm_std, 0, 1e6, JD_LO_OPEN),
    I("sample_dtype", td_jobspec, sample_dtype, 0, TD_DTYPE_F32),
    MAP("csv", td_jobspec, csv, csv_fields),
    MAP("raw", td_jobspec, raw, raw_fields),
    MAP("augment", td_jobspec, augment, augment_fields),
    FL("val_fraction", td_jobspec, val_fraction, 0, 1, JD_HI_OPEN),
    U("val_count", td_jobspec, val_count, ANY_U32),
    U("shuffle_window", td_jobspec, shuffle_window, ANY_U32),
    U("batch_size", td_jobspec, batch_size, 1, 65536),
    U("epochs", td_jobspec, epochs, 1, 10000),
    U("seed", td_jobspec, seed, ANY_U64),
    MAP("opt", td_jobspec, opt, optimizer_fields),
    FL("clip_grad_norm", td_jobspec, clip_grad_norm, 0, 1e6, 0),
    MAP("schedule", td_jobspec, schedule, schedule_fields),
    FL("label_smoothing", td_jobspec, label_smoothing, 0, 1, JD_HI_OPEN),
    I("loss", td_jobspec, loss, 0, TD_LOSS__COUNT - 1),
    I("soft_targets", td_jobspec, soft_targets, 0, 1),
    U("top_k", td_jobspec, top_k, 0, 1000),
    I("precision", td_jobspec, precision, 0, TD_PREC__COUNT - 1),
    MAP("loss_scale", td_jobspec, loss_scale, loss_scale_fields),
    I("recompute", td_jobspec, recompute, 0, 1),
    U("min_micro_batch", td_jobspec, min_micro_batch, 1, 65536),
    LIST("remedies", td_jobspec, remedies, nremedies, 0, TD_MAX_REMEDIES, &remedy_item),
    U("fail_alloc", td_jobspec, fail_alloc, ANY_U32),
    I("priority", td_jobspec, priority, -1000, 1000),
    U("max_retries", td_jobspec, max_retries, 0, 100),
    S("device", td_jobspec, device, 0),
    U("ckpt_every_steps", td_jobspec, ckpt_every_steps, ANY_U64),
    FL("ckpt_every_seconds", td_jobspec, ckpt_every_seconds, 0, 1e7, 0),

    U("tb_every_steps", td_jobspec, tb_every_steps, 0, 1000000),
    MAP("callbacks", td_jobspec, callbacks, callbacks_fields),
    S("output", td_jobspec, output, 0),
    S("init", td_jobspec, init, 0),
    U("continues", td_jobspec, continues, ANY_U64),
    {0},
};

static const td_msgdef desc_def = {"job description", NULL, 0, NULL};

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

/* ---- numbers in members of any size ---- */

static uint64_t get_uint(const void *p, size_t size) {
  switch (size) {
  case 1: return *(const uint8_t *)p;
  case 2: return *(const uint16_t *)p;
  case 4: return *(const uint32_t *)p;
  default: return *(const uint64_t *)p;
  }
}

static void set_uint(void *p, size_t size, uint64_t v) {
  switch (size) {
  case 1: *(uint8_t *)p = (uint8_t)v; break;
  case 2: *(uint16_t *)p = (uint16_t)v; break;
  case 4: *(uint32_t *)p = (uint32_t)v; break;
  default: *(uint64_t *)p = v; break;
  }
}

/* Signed members are int-sized (int, int32_t, enums). */
static int64_t get_int(const void *p) { return *(const int *)p; }
static void set_int(void *p, int64_t v) { *(int *)p = (int)v; }

static double get_float(const void *p, size_t size) {
  return size == sizeof(float) ? *(const float *)p : *(const double *)p;
}

static void set_float(void *p, size_t size, double v) {
  if (size == sizeof(float))
    *(float *)p = (float)v;
  else
    *(double *)p = v;
}

static int get_bool(const void *p, size_t size) {
  return size == sizeof(bool) ? *(const bool *)p : *(const int *)p != 0;
}

static void set_bool(void *p, size_t size, int v) {
  if (size == sizeof(bool))
    *(bool *)p = v != 0;
  else
    *(int *)p = v != 0;
}

/* ---- encoding ---- */

static void pack_struct(td_map *m, const jd_field *fields, const char *base);

static int list_count(const jd_field *f, const char *at) {
  int n = *(const int *)(at - f->off + f->count);
  size_t cap = f->size / f->item_size;

  return n < 0 ? 0 : (size_t)n > cap ? (int)cap : n;
}

/* Whether a member is zero (a map: all of its members), so that it can be
 * left out: a description holds what differs from zero, and a reader takes
 * a field that is not there for 0 (descriptions of a queue of 10,000 jobs
 * stay small). */
static int is_zero(const jd_field *f, const char *at) {
  switch (f->kind) {
  case JD_UINT: return get_uint(at, f->size) == 0;
  case JD_INT: return get_int(at) == 0;
  case JD_FLOAT: return get_float(at, f->size) == 0 && !signbit(get_float(at, f->size));
  case JD_BOOL: return !get_bool(at, f->size);
  case JD_STR: return at[0] == '\0';
  case JD_LIST: return list_count(f, at) == 0;
  case JD_MAP:
    for (const jd_field *s = f->sub; s->name != NULL; s++)
      if (!is_zero(s, at + s->off))
        return 0;
    return 1;
  }
  return 0;
}

static void pack_value(td_pack *p, const jd_field *f, const char *at) {
  switch (f->kind) {
  case JD_UINT: td_pack_u64(p, get_uint(at, f->size)); break;
  case JD_INT: td_pack_i64(p, get_int(at)); break;
  case JD_FLOAT:
    /* a float member as a msgpack float32: exact, and 5 bytes, not 9 */
    if (f->size == sizeof(float)) {
      if (p->err == 0 && msgpack_pack_float(&p->pk, *(const float *)at) != 0)
        p->err = TD_ENOMEM;
    } else {
      td_pack_f64(p, get_float(at, f->size));
    }
    break;
  case JD_BOOL: td_pack_bool(p, get_bool(at, f->size)); break;
  case JD_STR: td_pack_strn(p, at, strnlen(at, f->size - 1)); break;
  case JD_MAP: {
    td_map sub;

    td_map_begin(&sub, p, NULL);
    pack_struct(&sub, f->sub, at);
    td_map_end(&sub);
    break;
  }
  case JD_LIST: {
    int n = list_count(f, at);

    td_pack_array(p, (uint32_t)n);
    for (int i = 0; i < n; i++)
      pack_value(p, f->sub, at + (size_t)i * f->item_size);
    break;
  }
  }
}

static void pack_struct(td_map *m, const jd_field *fields, const char *base) {
  for (const jd_field *f = fields; f->name != NULL; f++) {
    if (is_zero(f, base + f->off))
      continue;
    td_pack_str(m->p, f->name);
    m->n++;
    pack_value(m->p, f, base + f->off);
  }
}

int td_jobdesc_encode(const td_jobspec *spec, td_pack *p) {
  td_map m;

  td_map_begin(&m, p, NULL);
  td_map_kv_u64(&m, "v", TD_JOBDESC_VERSION);
  pack_struct(&m, job_fields, (const char *)spec);
  td_map_end(&m);
  return td_pack_error(p);
}

int td_jobdesc_encode_alloc(const td_jobspec *spec, unsigned char **out, size_t *len) {
  unsigned char *buf = NULL;
  td_pack p;
  int rc;

  td_pack_init(&p);
  if ((rc = td_jobdesc_encode(spec, &p)) == 0 && (buf = malloc(td_pack_len(&p))) == NULL)
    rc = TD_ENOMEM;
  if (rc == 0) {
    memcpy(buf, td_pack_data(&p), td_pack_len(&p));
    *out = buf;
    *len = td_pack_len(&p);
  }
  td_pack_free(&p);
  return rc;
}

/* ---- decoding ---- */

/* Where a value is, for messages: "layers[3].units".  Built as the
 * decoder descends (no formatting per field: a restore decodes 10,000). */
typedef struct jd_path {
  char s[128];
  size_t n;
} jd_path;

static size_t path_push(jd_path *p, const char *name, uint32_t index, int is_index) {
  size_t was = p->n, len;
  char num[16];

  if (is_index) {
    int k = (int)sizeof(num);

    num[--k] = ']';
    do
      num[--k] = (char)('0' + index % 10);
    while ((index /= 10) != 0);
    num[--k] = '[';
    name = num + k;
    len = sizeof(num) - (size_t)k;
  } else {
    len = strlen(name);
    if (p->n > 0 && p->n + 1 < sizeof(p->s))
      p->s[p->n++] = '.';
  }
  if (p->n + len >= sizeof(p->s))
    len = sizeof(p->s) - 1 - p->n;
  memcpy(p->s + p->n, name, len);
  p->n += len;
  p->s[p->n] = '\0';
  return was;
}

static void path_pop(jd_path *p, size_t was) {
  p->n = was;
  p->s[was] = '\0';
}

static int read_struct(const jd_field *fields, const msgpack_object *map, char *base,
                       jd_path *path, char *err, size_t errlen);

/* One value into the member at `at`. */
static int read_value(const jd_field *f, const msgpack_object *o, char *at, jd_path *path,
                      char *err, size_t errlen) {
  static const td_ftype ftype[] = {[JD_UINT] = TD_FT_UINT, [JD_INT] = TD_FT_INT,
                                   [JD_FLOAT] = TD_FT_FLOAT, [JD_BOOL] = TD_FT_BOOL,
                                   [JD_STR] = TD_FT_STR, [JD_MAP] = TD_FT_MAP,
                                   [JD_LIST] = TD_FT_ARRAY};
  td_field tf = {path->s, ftype[f->kind], 1, f->min, f->max};
  int rc;

  if (f->kind == JD_STR)
    tf.max = (double)(f->size - 1);
  else if (f->kind == JD_MAP)
    tf.min = 0, tf.max = TD_PROTO_MAX_ITEMS;
  if (td_proto_check_field(&desc_def, &tf, o, err, errlen) < 0)
    return TD_EJOBSPEC;
  switch (f->kind) {
  case JD_UINT: set_uint(at, f->size, o->via.u64); return 0;
  case JD_INT:
    set_int(at, o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64 : o->via.i64);
    return 0;
  case JD_FLOAT: {
    double v = o->type == MSGPACK_OBJECT_POSITIVE_INTEGER   ? (double)o->via.u64
               : o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? (double)o->via.i64
                                                            : o->via.f64;

    if (f->size == sizeof(float))
      v = (float)v; /* the bounds hold for what is stored: 1e-50 is a float 0 */
    if (((f->flags & JD_LO_OPEN) && v == f->min) || ((f->flags & JD_HI_OPEN) && v == f->max)) {
      seterr(err, errlen, "field '%s' in the job description is %g; it must be %s %g", path->s,
             v, v == f->min ? "more than" : "less than", v);
      return TD_EJOBSPEC;
    }
    set_float(at, f->size, v);
    return 0;
  }
  case JD_BOOL: set_bool(at, f->size, o->via.boolean); return 0;
  case JD_STR:
    memcpy(at, o->via.str.ptr, o->via.str.size);
    at[o->via.str.size] = '\0';
    return 0;
  case JD_MAP: return read_struct(f->sub, o, at, path, err, errlen);
  case JD_LIST:
    for (uint32_t i = 0; i < o->via.array.size; i++) {
      size_t was = path_push(path, NULL, i, 1);

      rc = read_value(f->sub, &o->via.array.ptr[i], at + i * f->item_size, path, err, errlen);
      path_pop(path, was);
      if (rc < 0)
        return rc;
    }
    *(int *)(at - f->off + f->count) = (int)o->via.array.size;
    return 0;
  }
  return TD_EINTERNAL;
}

/* Every key known, every field present (check_tree made keys unique). */
static int read_struct(const jd_field *fields, const msgpack_object *map, char *base,
                       jd_path *path, char *err, size_t errlen) {
  uint64_t seen = 0;
  size_t next = 0; /* the encoder writes the fields in order: try that first */
  int rc;

  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object_str *k = &map->via.map.ptr[i].key.via.str;
    size_t f = next, was;

#define JD_IS(f) \
  (strnlen(fields[f].name, k->size + 1) == k->size && memcmp(fields[f].name, k->ptr, k->size) == 0)
    if (fields[f].name == NULL || !JD_IS(f))
      for (f = 0; fields[f].name != NULL && !JD_IS(f); f++) {
      }
#undef JD_IS
    if (fields[f].name == NULL) {
      if (path->n == 0 && k->size == 1 && k->ptr[0] == 'v')
        continue;
      seterr(err, errlen, "unknown field '%s%s%.*s' in the job description", path->s,
             path->n ? "." : "", (int)(k->size > 32 ? 32 : k->size), k->ptr);
      return TD_EJOBSPEC;
    }
    seen |= 1ull << f;
    next = f + 1;
    was = path_push(path, fields[f].name, 0, 0);
    rc = read_value(&fields[f], &map->via.map.ptr[i].val, base + fields[f].off, path, err,
                    errlen);
    path_pop(path, was);
    if (rc < 0)
      return rc;
  }
  /* A field left out is zero, which must be within its bounds too. */
  for (size_t f = 0; fields[f].name != NULL; f++) {
    static const msgpack_object zero[] = {
        [JD_UINT] = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER},
        [JD_INT] = {.type = MSGPACK_OBJECT_POSITIVE_INTEGER},
        [JD_FLOAT] = {.type = MSGPACK_OBJECT_FLOAT64},
        [JD_BOOL] = {.type = MSGPACK_OBJECT_BOOLEAN},
        [JD_STR] = {.type = MSGPACK_OBJECT_STR, .via.str = {0, ""}},
        [JD_MAP] = {.type = MSGPACK_OBJECT_MAP},
        [JD_LIST] = {.type = MSGPACK_OBJECT_ARRAY},
    };
    size_t was;

    if (seen >> f & 1)
      continue;
    was = path_push(path, fields[f].name, 0, 0);
    rc = read_value(&fields[f], &zero[fields[f].kind], base + fields[f].off, path, err, errlen);
    if (rc < 0 && fields[f].kind != JD_MAP) /* a map's says which of its fields */
      seterr(err, errlen, "the job description lacks field '%s' (it may not be 0)", path->s);
    path_pop(path, was);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* The rules across fields that the job file's parser holds to. */
static int check_rules(td_jobspec *s, char *err, size_t errlen) {
  td_shape shapes[TD_MAX_LAYERS + 1];
  td_lossscale_cfg ls = s->loss_scale;
  char why[200];
  int bad;

  if (td_jobspec_input_elems(s) > ELEMS_MAX) {
    seterr(err, errlen, "field 'input_dims' in the job description: a sample of more than %u "
           "elements", ELEMS_MAX);
    return TD_EJOBSPEC;
  }
  if (td_layer_def_of(s->layers[0].type)->not_first ||
      s->layers[s->nlayers - 1].type != TD_LAYER_DENSE) {
    seterr(err, errlen, "field 'layers' in the job description: the first layer must not be "
           "%s and the last must be dense", td_layer_type_name(s->layers[0].type));
    return TD_EJOBSPEC;
  }
  if (td_jobspec_shapes(s, shapes, &bad, why, sizeof(why)) < 0) {
    if (bad < 0)
      seterr(err, errlen, "field 'input_dims' in the job description: %s", why);
    else
      seterr(err, errlen, "field 'layers[%d]' in the job description: %s", bad, why);
    return TD_EJOBSPEC;
  }
  if (td_schedule_check(&s->schedule, why, sizeof(why)) < 0) {
    seterr(err, errlen, "field 'schedule' in the job description: %s", why);
    return TD_EJOBSPEC;
  }
  ls.enabled = true;
  if (td_lossscale_check(&ls, why, sizeof(why)) < 0) {
    seterr(err, errlen, "field 'loss_scale' in the job description: %s", why);
    return TD_EJOBSPEC;
  }
  if ((s->soft_targets && s->loss != TD_LOSS_CROSS_ENTROPY) ||
      (s->label_smoothing > 0 && td_jobspec_target(s).dtype != TD_DTYPE_I32) ||
      s->top_k > td_jobspec_classes(s) || (s->top_k > 0 && !td_jobspec_classifies(s))) {
    seterr(err, errlen, "field 'loss' in the job description: loss %s with its targets, "
           "label smoothing and top_k do not go together", td_loss_name(s->loss));
    return TD_EJOBSPEC;
  }
  if (s->min_micro_batch > s->batch_size) {
    seterr(err, errlen, "field 'min_micro_batch' in the job description is %u, more than "
           "batch_size (%u)", s->min_micro_batch, s->batch_size);
    return TD_EJOBSPEC;
  }
  for (int i = 0; i < s->nremedies; i++)
    for (int k = 0; k < i; k++)
      if (s->remedies[k] == s->remedies[i]) {
        seterr(err, errlen, "field 'remedies' in the job description lists %s twice",
               td_remedy_name(s->remedies[i]));
        return TD_EJOBSPEC;
      }
  if (s->callbacks.plateau.enabled && s->callbacks.plateau.factor == 0.0f) {
    seterr(err, errlen, "field 'callbacks.plateau.factor' in the job description is 0");
    return TD_EJOBSPEC;
  }
  if (s->device[0] != '\0' && !td_device_name_valid(s->device)) {
    seterr(err, errlen, "field 'device' in the job description is not a device name");
    return TD_EJOBSPEC;
  }
  if (s->train.images[0] == '\0') {
    seterr(err, errlen, "field 'train.images' in the job description is empty");
    return TD_EJOBSPEC;
  }
  return 0;
}

int td_jobdesc_decode(const void *buf, size_t len, td_jobspec *out, char *err, size_t errlen) {
  const msgpack_object *root, *v;
  jd_path path = {"", 0};
  td_jobspec *s = NULL;
  td_msg *m = NULL;
  char why[256];
  int rc;

  if (len > TD_JOBDESC_MAX) {
    seterr(err, errlen, "a job description of %zu bytes is more than the limit of %u", len,
           TD_JOBDESC_MAX);
    return TD_ETOOBIG;
  }
  if ((rc = td_msg_decode_as(buf, len, 0, &m, why, sizeof(why))) < 0) {
    seterr(err, errlen, "not a job description: %s", why);
    return rc == TD_ENOMEM ? rc : TD_EJOBSPEC;
  }
  root = td_msg_root(m);
  if (td_obj_get(root, "v", &v) < 0 || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
    seterr(err, errlen, "not a job description: it has no format version 'v'");
    rc = TD_EJOBSPEC;
    goto free_msg;
  }
  if (v->via.u64 != TD_JOBDESC_VERSION) {
    seterr(err, errlen, "the job description is format version %" PRIu64 ", %s than this "
           "program reads (%d): run a traind, worker and loader of one version",
           v->via.u64, v->via.u64 > TD_JOBDESC_VERSION ? "newer" : "older", TD_JOBDESC_VERSION);
    rc = TD_EVERSION;
    goto free_msg;
  }
  if ((s = calloc(1, sizeof(*s))) == NULL) {
    rc = TD_ENOMEM;
    goto free_msg;
  }
  if ((rc = read_struct(job_fields, root, (char *)s, &path, err, errlen)) < 0 ||
      (rc = check_rules(s, err, errlen)) < 0)
    goto free_spec;
  *out = *s;

free_spec:
  free(s);
free_msg:
  td_msg_free(m);
  return rc;
}

int td_jobdesc_load(const char *path, td_jobspec *out, char *err, size_t errlen) {
  char why[512];
  char *data;
  size_t len;
  int rc;

  if ((rc = td_read_file(path, TD_JOBDESC_MAX, &data, &len)) < 0) {
    seterr(err, errlen, "cannot read the job description %s: %s", path,
           rc == TD_ENOENT ? "no such file" : td_strerror(rc));
    return rc;
  }
  rc = td_jobdesc_decode(data, len, out, why, sizeof(why));
  free(data);
  if (rc < 0)
    seterr(err, errlen, "%s: %s", path, why);
  return rc;
}

int td_jobdesc_save(const char *path, const td_jobspec *spec, char *err, size_t errlen) {
  td_pack p;
  int fd, rc;

  td_pack_init(&p);
  if ((rc = td_jobdesc_encode(spec, &p)) < 0) {
    seterr(err, errlen, "cannot encode the job description: %s", td_strerror(rc));
    goto free_pack;
  }
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, td_pack_data(&p), td_pack_len(&p)) != (ssize_t)td_pack_len(&p)) {
    seterr(err, errlen, "cannot write %s: %s", path, strerror(errno));
    rc = TD_EIO;
  }
  if (fd >= 0 && close(fd) < 0 && rc == 0) {
    seterr(err, errlen, "cannot write %s: %s", path, strerror(errno));
    rc = TD_EIO;
  }

free_pack:
  td_pack_free(&p);
  return rc;
}
