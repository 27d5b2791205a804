#include "jobspec.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "error.h"
#include "layers.h"
#include "util.h"
#include "yamlread.h"

#define INPUT_ELEMS_MAX (1u << 24)

/* What the table's hooks see as their user pointer. */
typedef struct parse_ctx {
  const char *base_dir; /* relative paths are joined to it; NULL leaves them */
  const td_ynode *root;
} parse_ctx;

static const char *const precision_names[TD_PREC__COUNT + 1] = {
    [TD_PREC_FP32] = "fp32", [TD_PREC_BF16] = "bf16", [TD_PREC_FP16] = "fp16"};
static const char *const remedy_names[TD_REMEDY__COUNT + 1] = {
    [TD_REMEDY_ACCUMULATE] = "accumulate", [TD_REMEDY_RECOMPUTE] = "recompute",
    [TD_REMEDY_SHRINK] = "shrink",         [TD_REMEDY_BF16] = "bf16",
    [TD_REMEDY_FP16] = "fp16",
};
static const char *const format_names[] = {
    [TD_DATA_IDX] = "idx", [TD_DATA_NPY] = "npy", [TD_DATA_CSV] = "csv", [TD_DATA_RAW] = "raw",
    [TD_DATA_IMAGES] = "images", NULL};
static const char *const dtype_names[] = {"uint8", "int32", "float16", "float32", NULL};
static const char *const csv_dtype_names[] = {"float32", "uint8", NULL};
static const int csv_dtype_values[] = {TD_DTYPE_F32, TD_DTYPE_U8};
static const char *const label_dtype_names[] = {"uint8", "int32", "float32", NULL};
static const int label_dtype_values[] = {TD_DTYPE_U8, TD_DTYPE_I32, TD_DTYPE_F32};
static const char *const loss_names[TD_LOSS__COUNT + 1] = {
    [TD_LOSS_CROSS_ENTROPY] = "cross_entropy", [TD_LOSS_BCE] = "binary_cross_entropy",
    [TD_LOSS_MSE] = "mse", [TD_LOSS_MAE] = "mae", NULL};
static const char *const target_names[] = {"classes", "soft", NULL};
static const char *const bool_names[] = {"false", "true", NULL};
static const char *const opt_names[] = {
    [TD_OPT_SGD] = "sgd", [TD_OPT_ADAM] = "adam", [TD_OPT_ADAMW] = "adamw", NULL};
static const char *const sched_names[] = {
    [TD_SCHED_CONSTANT] = "constant", [TD_SCHED_STEP] = "step", [TD_SCHED_COSINE] = "cosine",
    NULL};

#define OPT_BIT(k) (1u << (k))
#define OPT_ADAMS (OPT_BIT(TD_OPT_ADAM) | OPT_BIT(TD_OPT_ADAMW))

/* Keys that mean something to some optimisers only; the others accept them
 * at their neutral value, so one file can list them all. */
static const struct {
  const char *key;
  unsigned kinds;
  size_t offset;
  float neutral;
} opt_only[] = {
    {"beta1", OPT_ADAMS, offsetof(td_optimizer, beta1), 0.9f},
    {"beta2", OPT_ADAMS, offsetof(td_optimizer, beta2), 0.999f},
    {"eps", OPT_ADAMS, offsetof(td_optimizer, eps), 1e-8f},
    {"momentum", OPT_BIT(TD_OPT_SGD), offsetof(td_optimizer, momentum), 0.0f},
    {"dampening", OPT_BIT(TD_OPT_SGD), offsetof(td_optimizer, dampening), 0.0f},
};

static int check_name(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                      size_t cap) {
  const char *s = p;

  if (strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") !=
          strlen(s) ||
      strcmp(s, ".") == 0 || strcmp(s, "..") == 0) {
    snprintf(msg, cap, "may hold only letters, digits, '.', '_' and '-' (and is not . or ..)");
    return 1;
  }
  return 0;
}

static int check_device(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                        size_t cap) {
  const char *s = p;

  if (s[0] == '\0' || td_device_name_valid(s))
    return 0;
  snprintf(msg, cap, "must be a device name such as cpu0 or cuda1, or \"\" for any device");
  return 1;
}

/* Relative paths become absolute against the base directory.  '~' is
 * refused rather than expanded: traind parses the same text as root and
 * must not read a home directory, and client and daemon must agree. */
static int resolve_path(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                        size_t cap) {
  const char *base = ((const parse_ctx *)user)->base_dir;
  char *s = p, joined[TD_PATH_MAX];
  int len;

  if (s[0] == '~') {
    snprintf(msg, cap, "write the path in full (e.g. /home/alice/data.csv) or relative to the "
             "job file; '~' is not expanded");
    return 1;
  }
  if (base == NULL || s[0] == '\0' || s[0] == '/')
    return 0;
  len = snprintf(joined, sizeof(joined), "%s%s%s", base,
                 base[0] && base[strlen(base) - 1] == '/' ? "" : "/", s);
  if (len < 0 || (size_t)len >= f->size || (size_t)len >= sizeof(joined)) {
    snprintf(msg, cap, "the path is longer than %zu bytes once made absolute", f->size - 1);
    return 1;
  }
  memcpy(s, joined, (size_t)len + 1);
  return 0;
}

/* lr when the file gives none: PyTorch's for Adam and AdamW; PyTorch's SGD
 * has none, so Keras's. */
static const float opt_default_lr[] = {
    [TD_OPT_SGD] = 0.01f, [TD_OPT_ADAM] = 1e-3f, [TD_OPT_ADAMW] = 1e-3f};

/* n is the optimizer's map, or its type alone ("optimizer: adam"). */
static int check_optimizer(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                           size_t cap) {
  td_optimizer *o = p;

  if (td_yaml_get(n, "lr") == NULL)
    o->lr = opt_default_lr[o->kind];

  for (size_t i = 0; i < TD_ARRAY_SIZE(opt_only); i++) {
    float v;

    memcpy(&v, (const char *)o + opt_only[i].offset, sizeof(v));
    if (!(opt_only[i].kinds & OPT_BIT(o->kind)) && v != opt_only[i].neutral) {
      snprintf(msg, cap, "'%s' applies only to %s, and the type is %s (remove it or set it to %g)",
               opt_only[i].key, opt_only[i].kinds == OPT_ADAMS ? "adam and adamw" : "sgd",
               opt_names[o->kind], (double)opt_only[i].neutral);
      return 1;
    }
  }
  if (o->nesterov && o->kind != TD_OPT_SGD) {
    snprintf(msg, cap, "'nesterov' applies only to sgd, and the type is %s (remove it)",
             opt_names[o->kind]);
    return 1;
  }
  if (o->nesterov && (o->momentum == 0.0f || o->dampening != 0.0f)) {
    snprintf(msg, cap, "'nesterov' needs momentum > 0 and dampening 0 (as PyTorch's SGD)");
    return 1;
  }
  return 0;
}

/* A schedule key that its type does not use is refused rather than ignored. */
static int check_schedule(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                          size_t cap) {
  static const struct {
    const char *key;
    td_sched_kind kind;
  } only[] = {{"step_size", TD_SCHED_STEP}, {"gamma", TD_SCHED_STEP},
              {"t_max", TD_SCHED_COSINE}, {"eta_min", TD_SCHED_COSINE}};
  const td_schedule *s = p;

  for (size_t i = 0; i < TD_ARRAY_SIZE(only); i++) {
    if (only[i].kind != s->kind && td_yaml_get(n, only[i].key) != NULL) {
      snprintf(msg, cap, "'%s' applies only to type %s, and the type is %s", only[i].key,
               sched_names[only[i].kind], sched_names[s->kind]);
      return 1;
    }
  }
  return 0;
}

static const td_yfield dim_item = {
    .type = TD_YT_INT, .size = sizeof(uint32_t), .min = 1, .max = INPUT_ELEMS_MAX,
};

static const td_yfield column_item = {
    .type = TD_YT_INT, .size = sizeof(uint32_t), .min = 0, .max = 65535,
};

static const td_yfield model_fields[] = {
    TD_YF_SEQ("input", td_jobspec, input_dims, input_rank, 1, TD_MAX_RANK, &dim_item,
              TD_YF_REQUIRED, NULL),
    TD_YF_ENUM("sequence", td_jobspec, input_seq, bool_names, NULL, 0),
    TD_YF_SEQ("layers", td_jobspec, layers, nlayers, 1, TD_MAX_LAYERS, &td_layer_yfield,
              TD_YF_REQUIRED, NULL),
    {0},
};

/* features and images are one key with two names (a table's columns, an
 * image file); check_data says which is missing. */
static const td_yfield split_fields[] = {
    TD_YF_STR("features", td_data_split, images, TD_YF_NONEMPTY, resolve_path),
    TD_YF_STR("images", td_data_split, images, TD_YF_NONEMPTY, resolve_path),
    TD_YF_STR("labels", td_data_split, labels, TD_YF_NONEMPTY, resolve_path),
    TD_YF_INT("limit", td_data_split, limit, 0, UINT32_MAX, 0),
    {0},
};

static int check_split(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                       size_t cap) {
  if (td_yaml_get(n, "features") != NULL && td_yaml_get(n, "images") != NULL) {
    snprintf(msg, cap, "'features' and 'images' are two names of one key; give one of them");
    return 1;
  }
  return 0;
}

static const td_yfield normalize_fields[] = {
    TD_YF_FLOAT("mean", td_jobspec, norm_mean, -1e6, 1e6, 0),
    TD_YF_FLOAT("std", td_jobspec, norm_std, 0, 1e6, TD_YF_LO_OPEN),
    {0},
};

static const td_yfield csv_fields[] = {
    TD_YF_INT("label_column", td_data_csv, label_column, 0, 65535, 0),
    TD_YF_ENUM("header", td_data_csv, header, bool_names, NULL, 0),
    TD_YF_ENUM("dtype", td_data_csv, dtype, csv_dtype_names, csv_dtype_values, 0),
    TD_YF_SEQ("target_columns", td_data_csv, target_columns, ntarget_columns, 1,
              TD_MAX_TARGET_COLUMNS, &column_item, 0, NULL),
    {0},
};

static const td_yfield raw_fields[] = {
    TD_YF_SEQ("record_shape", td_data_raw, shape, rank, 1, TD_MAX_RANK, &dim_item,
              TD_YF_REQUIRED, NULL),
    TD_YF_ENUM("dtype", td_data_raw, dtype, dtype_names, NULL, TD_YF_REQUIRED),
    TD_YF_ENUM("label_dtype", td_data_raw, label_dtype, label_dtype_names, label_dtype_values, 0),
    TD_YF_INT("label_offset", td_data_raw, label_offset, 0, INPUT_ELEMS_MAX * 8, 0),
    TD_YF_INT("sample_offset", td_data_raw, sample_offset, 0, INPUT_ELEMS_MAX * 8, 0),
    TD_YF_INT("record_bytes", td_data_raw, record_bytes, 0, INPUT_ELEMS_MAX * 8, 0),
    TD_YF_U64("header_bytes", td_data_raw, header_bytes, 0),
    {0},
};

static const td_yfield crop_fields[] = {
    TD_YF_INT("padding", td_augment, crop_padding, 0, 1024, 0),
    {0},
};

/* random_crop: {} turns it on with padding 0 (a crop of the input's own
 * size, which moves nothing: it is there for the padding). */
static int check_crop(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                      size_t cap) {
  ((td_augment *)p)->crop = 1;
  return 0;
}

static const td_yfield channel_item = {
    .type = TD_YT_FLOAT, .size = sizeof(float), .lo = -1e6, .hi = 1e6,
};
static const td_yfield std_item = {
    .type = TD_YT_FLOAT, .size = sizeof(float), .lo = 0, .hi = 1e6, .flags = TD_YF_LO_OPEN,
};

static const td_yfield channel_norm_fields[] = {
    TD_YF_SEQ("mean", td_augment, mean, nmean, 1, TD_AUGMENT_MAX_CHANNELS, &channel_item,
              TD_YF_REQUIRED, NULL),
    TD_YF_SEQ("std", td_augment, std, nstd, 1, TD_AUGMENT_MAX_CHANNELS, &std_item,
              TD_YF_REQUIRED, NULL),
    {0},
};

static const td_yfield augment_fields[] = {
    {.key = "random_crop", .type = TD_YT_MAP, .offset = 0, .size = sizeof(td_augment),
     .sub = crop_fields, .check = check_crop},
    TD_YF_ENUM("horizontal_flip", td_augment, hflip, bool_names, NULL, 0),
    {.key = "normalize", .type = TD_YT_MAP, .offset = 0, .size = sizeof(td_augment),
     .sub = channel_norm_fields},
    {0},
};

static const td_yfield validation_fields[] = {
    TD_YF_FLOAT("fraction", td_jobspec, val_fraction, 0, 1, TD_YF_HI_OPEN),
    TD_YF_INT("count", td_jobspec, val_count, 0, UINT32_MAX, 0),
    {0},
};

/* The keys of one format's own section. */
static const struct {
  td_data_format format;
  const td_yfield *fields;
} format_keys[] = {{TD_DATA_CSV, csv_fields}, {TD_DATA_RAW, raw_fields}};

/* The job's data.format as the file says it, before it is bound (keys are
 * bound in file order); -1 when it names no format. */
static int format_of(const td_ynode *root) {
  const td_ynode *n = td_yaml_get(td_yaml_get(root, "data"), "format");

  if (n == NULL)
    return TD_DATA_IDX;
  for (int i = 0; n->kind == TD_YAML_SCALAR && format_names[i] != NULL; i++)
    if (strcmp(n->text, format_names[i]) == 0)
      return i;
  return -1;
}

/* An unknown key under data that is a format's own key: say where it goes. */
static int data_key_hint(const td_yfield *f, const char *key, void *user, char *msg,
                         size_t cap) {
  int fmt = format_of(((const parse_ctx *)user)->root), owners = 0;
  char names[64] = "", where[256] = "", ex[64];
  size_t nused = 0, wused = 0;

  td_yaml_excerpt(ex, sizeof(ex), key);
  for (size_t i = 0; i < TD_ARRAY_SIZE(format_keys); i++) {
    const char *name = format_names[format_keys[i].format];
    int w;

    if (td_yaml_field(format_keys[i].fields, key) == NULL)
      continue;
    if ((int)format_keys[i].format == fmt) {
      snprintf(msg, cap, "it belongs under data.%s, as data.%s.%s", name, name, ex);
      return 1;
    }
    w = snprintf(names + nused, sizeof(names) - nused, "%s%s", owners ? " and " : "", name);
    nused += w > 0 && (size_t)w < sizeof(names) - nused ? (size_t)w : 0;
    w = snprintf(where + wused, sizeof(where) - wused, "%sdata.%s.%s", owners ? ", " : "", name,
                 ex);
    wused += w > 0 && (size_t)w < sizeof(where) - wused ? (size_t)w : 0;
    owners++;
  }
  if (owners == 0)
    return 0;
  snprintf(msg, cap, "it belongs to format%s %s (as %s)%s%s", owners > 1 ? "s" : "", names, where,
           fmt >= 0 ? "; this job's data.format is " : "", fmt >= 0 ? format_names[fmt] : "");
  return 1;
}

/* A map under data: a format's key in the wrong one gets data_key_hint. */
#define DATA_MAP(k, m, tbl, fl, chk)                                                    \
  {.key = (k), .type = TD_YT_MAP, .flags = (fl), TD_YF_OFF(td_jobspec, m), .sub = (tbl), \
   .check = (chk), .hint = data_key_hint}
#define DATA_SECTION(k, tbl) {.key = (k), .type = TD_YT_MAP, .sub = (tbl), .hint = data_key_hint}

static const td_yfield data_fields[] = {
    TD_YF_ENUM("format", td_jobspec, format, format_names, NULL, 0),
    DATA_MAP("train", train, split_fields, TD_YF_REQUIRED, check_split),
    DATA_MAP("test", test, split_fields, TD_YF_REQUIRED, check_split),
    DATA_SECTION("normalize", normalize_fields),
    DATA_MAP("csv", csv, csv_fields, 0, NULL),
    DATA_MAP("raw", raw, raw_fields, 0, NULL),
    DATA_SECTION("validation", validation_fields),
    TD_YF_MAP("augment", td_jobspec, augment, augment_fields, 0, NULL),
    TD_YF_INT("shuffle_window", td_jobspec, shuffle_window, 0, UINT32_MAX, 0),
    {0},
};

static const td_yfield optimizer_fields[] = {
    TD_YF_ENUM("type", td_optimizer, kind, opt_names, NULL, TD_YF_REQUIRED),
    TD_YF_FLOAT("lr", td_optimizer, lr, 0, 10, TD_YF_LO_OPEN), /* default: check_optimizer */
    TD_YF_FLOAT("beta1", td_optimizer, beta1, 0, 1, TD_YF_HI_OPEN),
    TD_YF_FLOAT("beta2", td_optimizer, beta2, 0, 1, TD_YF_HI_OPEN),
    TD_YF_FLOAT("eps", td_optimizer, eps, 0, 1, TD_YF_LO_OPEN),
    TD_YF_FLOAT("momentum", td_optimizer, momentum, 0, 1, TD_YF_HI_OPEN),
    TD_YF_FLOAT("dampening", td_optimizer, dampening, 0, 1, 0),
    TD_YF_ENUM("nesterov", td_optimizer, nesterov, bool_names, NULL, 0),
    TD_YF_FLOAT("weight_decay", td_optimizer, weight_decay, 0, 1, 0),
    {0},
};

static const td_yfield schedule_fields[] = {
    TD_YF_ENUM("type", td_schedule, kind, sched_names, NULL, 0),
    TD_YF_U64("step_size", td_schedule, step_size, 0),
    TD_YF_FLOAT("gamma", td_schedule, gamma, 0, 1e6, TD_YF_LO_OPEN),
    TD_YF_U64("t_max", td_schedule, t_max, 0),
    TD_YF_FLOAT("eta_min", td_schedule, eta_min, 0, 10, 0),
    TD_YF_U64("warmup_steps", td_schedule, warmup_steps, 0),
    TD_YF_FLOAT("warmup_start", td_schedule, warmup_start, 0, 1, TD_YF_LO_OPEN),
    {0},
};

static const td_yfield loss_fields[] = {
    TD_YF_FLOAT("label_smoothing", td_jobspec, label_smoothing, 0, 1, TD_YF_HI_OPEN),
    TD_YF_ENUM("kind", td_jobspec, loss, loss_names, NULL, 0),
    TD_YF_ENUM("targets", td_jobspec, soft_targets, target_names, NULL, 0),
    {0},
};

static const td_yfield train_fields[] = {
    TD_YF_INT("batch_size", td_jobspec, batch_size, 1, 65536, TD_YF_REQUIRED),
    TD_YF_INT("epochs", td_jobspec, epochs, 1, 10000, TD_YF_REQUIRED),
    TD_YF_U64("seed", td_jobspec, seed, 0),
    {.key = "optimizer", .type = TD_YT_MAP, .flags = TD_YF_REQUIRED, TD_YF_OFF(td_jobspec, opt),
     .sub = optimizer_fields, .check = check_optimizer, .shorthand = "type"},
    TD_YF_FLOAT("clip_grad_norm", td_jobspec, clip_grad_norm, 0, 1e6, 0),
    TD_YF_MAP("schedule", td_jobspec, schedule, schedule_fields, 0, check_schedule),
    TD_YF_SECTION("loss", loss_fields, 0),
    TD_YF_INT("top_k", td_jobspec, top_k, 0, 1000, 0),
    {0},
};

/* Each remedy at most once.  shrink may stand anywhere: the worker tries
 * it last (daemon/worker/model.h). */
static int check_remedies(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                          size_t cap) {
  const td_remedy *r = p;
  size_t count = n->kind == TD_YAML_SEQ ? n->len : 0;

  for (size_t i = 0; i < count; i++) {
    for (size_t k = 0; k < i; k++) {
      if (r[k] == r[i]) {
        snprintf(msg, cap, "'%s' is listed twice", remedy_names[r[i]]);
        return 1;
      }
    }
  }
  return 0;
}

static const td_yfield remedy_item = {
    .type = TD_YT_ENUM, .size = sizeof(td_remedy), .names = remedy_names,
};

static const td_yfield loss_scale_fields[] = {
    TD_YF_FLOAT("init_scale", td_lossscale_cfg, init_scale, 0, 1e30, TD_YF_LO_OPEN),
    TD_YF_FLOAT("growth_factor", td_lossscale_cfg, growth_factor, 1, 1e6, TD_YF_LO_OPEN),
    TD_YF_FLOAT("backoff_factor", td_lossscale_cfg, backoff_factor, 0, 1,
                TD_YF_LO_OPEN | TD_YF_HI_OPEN),
    TD_YF_INT("growth_interval", td_lossscale_cfg, growth_interval, 1, UINT32_MAX, 0),
    {0},
};

static const td_yfield memory_fields[] = {
    TD_YF_ENUM("precision", td_jobspec, precision, precision_names, NULL, 0),
    TD_YF_MAP("loss_scale", td_jobspec, loss_scale, loss_scale_fields, 0, NULL),
    TD_YF_ENUM("recompute", td_jobspec, recompute, bool_names, NULL, 0),
    TD_YF_INT("min_micro_batch", td_jobspec, min_micro_batch, 1, 65536, 0),
    TD_YF_SEQ("remedies", td_jobspec, remedies, nremedies, 0, TD_MAX_REMEDIES, &remedy_item, 0,
              check_remedies),
    TD_YF_INT("fail_alloc", td_jobspec, fail_alloc, 0, UINT32_MAX, 0),
    {0},
};

static const td_yfield checkpoint_fields[] = {
    TD_YF_U64("every_steps", td_jobspec, ckpt_every_steps, 0),
    TD_YF_FLOAT("every_seconds", td_jobspec, ckpt_every_seconds, 0, 1e7, 0),
    {0},
};

static const td_yfield tensorboard_fields[] = {
    TD_YF_INT("every_steps", td_jobspec, tb_every_steps, 0, 1000000, 0),
    {0},
};

static const char *const monitor_names[] = {
    [TD_MONITOR_VAL_LOSS] = "val_loss", [TD_MONITOR_VAL_ACCURACY] = "val_accuracy",
    [TD_MONITOR_VAL_TOP_K] = "val_top_k", [TD_MONITOR_VAL_MAE] = "val_mae", NULL};

/* A callback is on when its key is there, even with no key of its own. */
static int enable_callback(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                           size_t cap) {
  *(int *)p = 1; /* enabled is each callback struct's first member */
  return 0;
}

static const td_yfield early_stop_fields[] = {
    TD_YF_ENUM("monitor", td_cb_early_stop, monitor, monitor_names, NULL, 0),
    TD_YF_INT("patience", td_cb_early_stop, patience, 0, 10000, 0),
    TD_YF_FLOAT("min_delta", td_cb_early_stop, min_delta, 0, 1e6, 0),
    {0},
};

static const td_yfield keep_best_fields[] = {
    TD_YF_ENUM("monitor", td_cb_keep_best, monitor, monitor_names, NULL, 0),
    {0},
};

static const td_yfield plateau_fields[] = {
    TD_YF_ENUM("monitor", td_cb_plateau, monitor, monitor_names, NULL, 0),
    TD_YF_FLOAT("factor", td_cb_plateau, factor, 0, 1, TD_YF_LO_OPEN | TD_YF_HI_OPEN),
    TD_YF_INT("patience", td_cb_plateau, patience, 0, 10000, 0),
    TD_YF_FLOAT("min_delta", td_cb_plateau, min_delta, 0, 1e6, 0),
    TD_YF_INT("cooldown", td_cb_plateau, cooldown, 0, 10000, 0),
    TD_YF_FLOAT("min_lr", td_cb_plateau, min_lr, 0, 10, 0),
    {0},
};

#define CALLBACK_MAP(k, m, tbl)                                                          \
  {.key = (k), .type = TD_YT_MAP, TD_YF_OFF(td_callbacks, m), .sub = (tbl),              \
   .check = enable_callback, .shorthand = "monitor"}

static const td_yfield callbacks_fields[] = {
    CALLBACK_MAP("early_stopping", early_stop, early_stop_fields),
    CALLBACK_MAP("keep_best", keep_best, keep_best_fields),
    CALLBACK_MAP("reduce_lr_on_plateau", plateau, plateau_fields),
    {0},
};

static const td_yfield job_fields[] = {
    TD_YF_STR("name", td_jobspec, name, TD_YF_NONEMPTY, check_name),
    TD_YF_SECTION("model", model_fields, TD_YF_REQUIRED),
    {.key = "data", .type = TD_YT_MAP, .flags = TD_YF_REQUIRED, .sub = data_fields,
     .hint = data_key_hint},
    TD_YF_SECTION("train", train_fields, TD_YF_REQUIRED),
    TD_YF_SECTION("memory", memory_fields, 0),
    TD_YF_SECTION("checkpoint", checkpoint_fields, 0),
    TD_YF_SECTION("tensorboard", tensorboard_fields, 0),
    TD_YF_MAP("callbacks", td_jobspec, callbacks, callbacks_fields, 0, NULL),
    TD_YF_INT("priority", td_jobspec, priority, -1000, 1000, 0),
    TD_YF_INT("max_retries", td_jobspec, max_retries, 0, 100, 0),
    TD_YF_STR("device", td_jobspec, device, 0, check_device),
    TD_YF_STR("output", td_jobspec, output, 0, resolve_path),
    TD_YF_STR("init", td_jobspec, init, TD_YF_NONEMPTY, resolve_path),
    {0},
};

static void jobspec_defaults(td_jobspec *s) {
  memset(s, 0, sizeof(*s));
  strcpy(s->name, "job");
  s->format = TD_DATA_IDX;
  s->csv.dtype = TD_DTYPE_F32;
  s->raw.sample_offset = UINT32_MAX; /* unset: right after the label, or 0 */
  s->norm_mean = 0.0f;
  s->norm_std = 1.0f;
  for (size_t i = 0; i < TD_ARRAY_SIZE(opt_only); i++)
    memcpy((char *)&s->opt + opt_only[i].offset, &opt_only[i].neutral, sizeof(float));
  s->schedule = (td_schedule){.kind = TD_SCHED_CONSTANT, .gamma = 0.1, .warmup_start = 1.0 / 3};
  s->precision = TD_PREC_FP32;
  s->loss_scale = td_lossscale_defaults();
  s->min_micro_batch = 1;
  s->ckpt_every_seconds = 300;
  s->tb_every_steps = 10;
  /* Keras' defaults */
  s->callbacks.plateau.factor = 0.1f;
  s->callbacks.plateau.patience = 10;
  s->callbacks.plateau.min_delta = 1e-4f;
}

static int node_line(const td_ynode *root, const char *section, const char *key) {
  const td_ynode *n = td_yaml_get(td_yaml_get(root, section), key);

  return n != NULL ? n->key_line : 0;
}

/* data.augment against the model's input: crop and flip need an image,
 * normalize one mean and std per channel, and the device's scalar
 * data.normalize would normalise a second time. */
static int check_augment(const td_jobspec *s, const td_ynode *root, char *err, size_t errlen) {
  const td_ynode *data = td_yaml_get(root, "data");
  const td_augment *a = &s->augment;
  int channels = s->input_rank == 3 ? (int)s->input_dims[0] : 1;

  if ((a->crop || a->hflip) && s->input_rank != 2 && s->input_rank != 3) {
    td_yaml_errf(err, errlen, node_line(data, "augment", a->crop ? "random_crop" : "horizontal_flip"),
                 "key 'data.augment.%s' needs an image input, model.input [H, W] or "
                 "[C, H, W]; got %d dimensions", a->crop ? "random_crop" : "horizontal_flip",
                 s->input_rank);
    return TD_EJOBSPEC;
  }
  if (a->nmean == 0)
    return 0;
  if (a->nmean != channels || a->nstd != channels) {
    td_yaml_errf(err, errlen, node_line(data, "augment", "normalize"),
                 "key 'data.augment.normalize': expected one mean and one std per channel of "
                 "model.input (%d), got %d and %d", channels, a->nmean, a->nstd);
    return TD_EJOBSPEC;
  }
  if (td_yaml_get(data, "normalize") != NULL) {
    td_yaml_errf(err, errlen, node_line(root, "data", "normalize"),
                 "key 'data.normalize': the job also has data.augment.normalize; give one "
                 "(per channel on the loader, or one mean and std on the device)");
    return TD_EJOBSPEC;
  }
  return 0;
}

/* The data keys that depend on the format. */
static int check_data(td_jobspec *s, const td_ynode *root, char *err, size_t errlen) {
  static const char *const splits[] = {"train", "test"};
  /* data.*.features by the name that fits the format: an idx file holds images. */
  static const char *const samples_key[] = {
      [TD_DATA_IDX] = "images", [TD_DATA_NPY] = "features", [TD_DATA_CSV] = "features",
      [TD_DATA_RAW] = "features", [TD_DATA_IMAGES] = "images"};
  const td_ynode *data = td_yaml_get(root, "data");
  int has_labels = s->format == TD_DATA_IDX || s->format == TD_DATA_NPY;
  td_data_raw *r = &s->raw;
  uint64_t elems = td_jobspec_input_elems(s), shape = 1, label_end, sample_end, sample_bytes;
  uint64_t label_bytes;

  for (int i = 0; i < 2; i++) {
    const td_data_split *sp = i == 0 ? &s->train : &s->test;
    const td_ynode *n = td_yaml_get(data, splits[i]);
    int line = n != NULL ? n->key_line : 0;

    if (sp->images[0] == '\0') {
      td_yaml_errf(err, errlen, line, "key 'data.%s.%s' is required (the samples' file; '%s' "
                   "is its other name)", splits[i], samples_key[s->format],
                   s->format == TD_DATA_IDX ? "features" : "images");
      return TD_EJOBSPEC;
    }
    if (has_labels && sp->labels[0] == '\0') {
      td_yaml_errf(err, errlen, line, "key 'data.%s.labels' is required (format %s)", splits[i],
                   format_names[s->format]);
      return TD_EJOBSPEC;
    }
    if (!has_labels && sp->labels[0] != '\0') {
      td_yaml_errf(err, errlen, node_line(data, splits[i], "labels"),
                   "key 'data.%s.labels': %s hold%s its own labels (%s); remove this key",
                   splits[i], s->format == TD_DATA_IMAGES ? "an image folder" : s->format ==
                   TD_DATA_CSV ? "a csv file" : "a raw file", "s",
                   s->format == TD_DATA_CSV   ? "data.csv.label_column"
                   : s->format == TD_DATA_RAW ? "data.raw.label_offset"
                                              : "one class folder per label");
      return TD_EJOBSPEC;
    }
  }
  if (td_yaml_get(data, "csv") != NULL && s->format != TD_DATA_CSV) {
    td_yaml_errf(err, errlen, node_line(root, "data", "csv"),
                 "key 'data.csv' applies only to format csv, and the format is %s",
                 format_names[s->format]);
    return TD_EJOBSPEC;
  }
  if ((td_yaml_get(data, "raw") != NULL) != (s->format == TD_DATA_RAW)) {
    td_yaml_errf(err, errlen, node_line(root, "data", s->format == TD_DATA_RAW ? "format" : "raw"),
                 s->format == TD_DATA_RAW
                     ? "key 'data.raw' is required with format raw (record_shape and dtype)"
                     : "key 'data.raw' applies only to format raw, and the format is %s",
                 format_names[s->format]);
    return TD_EJOBSPEC;
  }
  if (s->val_fraction > 0 && s->val_count > 0) {
    td_yaml_errf(err, errlen, node_line(root, "data", "validation"),
                 "key 'data.validation': give fraction or count, not both");
    return TD_EJOBSPEC;
  }
  if (s->format == TD_DATA_IMAGES &&
      !(s->input_rank == 2 ||
        (s->input_rank == 3 && (s->input_dims[0] == 1 || s->input_dims[0] == 3)))) {
    td_yaml_errf(err, errlen, node_line(root, "model", "input"),
                 "key 'model.input': format images decodes to [H, W] or [1, H, W] (gray) or "
                 "[3, H, W] (RGB); got %d dimensions%s", s->input_rank,
                 s->input_rank == 3 ? " with another channel count" : "");
    return TD_EJOBSPEC;
  }
  if (check_augment(s, root, err, errlen) < 0)
    return TD_EJOBSPEC;
  if (s->format != TD_DATA_RAW)
    return 0;

  for (int i = 0; i < r->rank; i++)
    shape *= r->shape[i]; /* each <= 2^24, rank <= 4: no overflow */
  if (shape != elems) {
    td_yaml_errf(err, errlen, node_line(data, "raw", "record_shape"),
                 "key 'data.raw.record_shape': a record holds %llu elements, but model.input "
                 "has %llu", (unsigned long long)shape, (unsigned long long)elems);
    return TD_EJOBSPEC;
  }
  /* float32 labels are a float target per output, one after another */
  label_bytes = r->label_dtype == TD_DTYPE_F32 ? td_target_bytes(td_jobspec_target(s))
                                               : td_dtype_size(r->label_dtype);
  if (r->sample_offset == UINT32_MAX)
    r->sample_offset = r->label_offset == 0 ? (uint32_t)label_bytes : 0;
  sample_bytes = shape * td_dtype_size(r->dtype);
  label_end = (uint64_t)r->label_offset + label_bytes;
  sample_end = (uint64_t)r->sample_offset + sample_bytes;
  if (r->label_offset < sample_end && r->sample_offset < label_end) {
    td_yaml_errf(err, errlen, node_line(data, "raw", "label_offset"),
                 "key 'data.raw': the label (bytes %u..%llu) overlaps the sample (bytes "
                 "%u..%llu)", r->label_offset, (unsigned long long)label_end - 1,
                 r->sample_offset, (unsigned long long)sample_end - 1);
    return TD_EJOBSPEC;
  }
  if (r->record_bytes == 0)
    r->record_bytes = (uint32_t)(label_end > sample_end ? label_end : sample_end);
  else if (r->record_bytes < label_end || r->record_bytes < sample_end) {
    td_yaml_errf(err, errlen, node_line(data, "raw", "record_bytes"),
                 "key 'data.raw.record_bytes': a record of %u bytes cannot hold the label "
                 "(ends at byte %llu) and the sample (ends at byte %llu)", r->record_bytes,
                 (unsigned long long)label_end, (unsigned long long)sample_end);
    return TD_EJOBSPEC;
  }
  return 0;
}

/* Every callback watches the validation split: a job without one has
 * nothing for them to see. */
static int check_callbacks(const td_jobspec *s, const td_ynode *root, char *err, size_t errlen) {
  static const char *const keys[] = {"early_stopping", "keep_best", "reduce_lr_on_plateau"};
  const td_callbacks *c = &s->callbacks;
  const td_monitor monitors[] = {c->early_stop.monitor, c->keep_best.monitor, c->plateau.monitor};
  const int on[] = {c->early_stop.enabled, c->keep_best.enabled, c->plateau.enabled};

  if (s->val_fraction > 0 || s->val_count > 0)
    return 0;
  for (size_t i = 0; i < TD_ARRAY_SIZE(keys); i++) {
    if (!on[i])
      continue;
    td_yaml_errf(err, errlen, node_line(root, "callbacks", keys[i]),
                 "key 'callbacks.%s' monitors %s, and the job has no validation split (add "
                 "data.validation, e.g. {fraction: 0.1})", keys[i], td_monitor_name(monitors[i]));
    return TD_EJOBSPEC;
  }
  return 0;
}

/* The layer a name in model.layers[i].inputs means, as a shapes[] index
 * (0 the model's input), or -1 with why in msg. */
static int input_of(const td_jobspec *s, int i, const char *name, char *msg, size_t cap) {
  char ex[48], list[200] = "input", buf[TD_LAYER_NAME_MAX];
  size_t used = strlen(list);
  int t = -1;

  td_yaml_excerpt(ex, sizeof(ex), name);
  if (strcmp(name, "input") == 0)
    return 0;
  for (int j = 0; j < s->nlayers && t < 0; j++) {
    const char *nm = td_jobspec_node_name(s, j + 1, buf);

    if (strcmp(nm, name) == 0)
      t = j + 1;
  }
  if (t < 0 && name[0] >= '0' && name[0] <= '9') {
    char *end;
    long j = strtol(name, &end, 10);

    if (*end == '\0' && j >= 0 && j < s->nlayers && s->layers[j].name[0] != '\0') {
      snprintf(msg, cap, "layer %ld is named '%s': name it so", j, s->layers[j].name);
      return -1;
    }
  }
  if (t == i + 1) {
    snprintf(msg, cap, "'%s' is this layer itself: a layer cannot read its own output (that "
             "would be a cycle)", ex);
    return -1;
  }
  if (t > i + 1) {
    snprintf(msg, cap, "'%s' is model.layers[%d], which comes after this one: list the layers "
             "so that each comes after its inputs (a graph without cycles, in order)", ex,
             t - 1);
    return -1;
  }
  if (t >= 0)
    return t;
  for (int j = 0; j < i && used < sizeof(list); j++) {
    int w = snprintf(list + used, sizeof(list) - used, ", %s",
                     td_jobspec_node_name(s, j + 1, buf));

    used += w > 0 ? (size_t)w : 0;
  }
  if (used >= sizeof(list))
    memcpy(list + sizeof(list) - 5, " ...", 5);
  snprintf(msg, cap, "'%s' names no layer before this one (those are: %s)", ex, list);
  return -1;
}

/* model.layers[i].inputs: names made indices, now that every name is known. */
static int resolve_inputs(td_jobspec *s, const td_ynode *root, char *err, size_t errlen) {
  const td_ynode *layers = td_yaml_get(td_yaml_get(root, "model"), "layers");

  for (int i = 0; layers != NULL && i < s->nlayers && (size_t)i < layers->len; i++) {
    const td_ynode *n = td_yaml_get(layers->kids[i], "inputs");
    char why[300];

    s->layers[i].ninputs = 0;
    if (n == NULL)
      continue;
    if (n->kind != TD_YAML_SEQ || n->len < 1 || n->len > TD_MAX_INPUTS) {
      td_yaml_errf(err, errlen, n->key_line, "key 'model.layers[%d].inputs' must be a list of "
                   "1 to %d layer names (or 'input'), e.g. [a, b]", i, TD_MAX_INPUTS);
      return TD_EJOBSPEC;
    }
    for (size_t k = 0; k < n->len; k++) {
      const td_ynode *x = n->kids[k];
      int t;

      if (x->kind != TD_YAML_SCALAR || td_yaml_is_null(x)) {
        td_yaml_errf(err, errlen, x->line, "key 'model.layers[%d].inputs[%zu]' must be a "
                     "layer's name, its index, or 'input'", i, k);
        return TD_EJOBSPEC;
      }
      if ((t = input_of(s, i, x->text, why, sizeof(why))) < 0) {
        td_yaml_errf(err, errlen, x->line, "key 'model.layers[%d].inputs[%zu]': %s", i, k,
                     why);
        return TD_EJOBSPEC;
      }
      s->layers[i].inputs[k] = (uint8_t)t;
    }
    s->layers[i].ninputs = (int)n->len;
  }
  return 0;
}

/* The loss, its targets and the metrics agree with each other, with the
 * model's outputs and with where the data's targets come from. */
static int check_targets(const td_jobspec *s, const td_ynode *root, char *err, size_t errlen) {
  static const char *const cb_keys[] = {"early_stopping", "keep_best", "reduce_lr_on_plateau"};
  const td_ynode *loss = td_yaml_get(td_yaml_get(root, "train"), "loss");
  const td_ynode *csv = td_yaml_get(td_yaml_get(root, "data"), "csv");
  const td_callbacks *c = &s->callbacks;
  const td_monitor monitors[] = {c->early_stop.monitor, c->keep_best.monitor, c->plateau.monitor};
  const int on[] = {c->early_stop.enabled, c->keep_best.enabled, c->plateau.enabled};
  td_target t = td_jobspec_target(s);
  uint32_t outputs = td_jobspec_outputs(s);
  const char *lname = loss_names[s->loss];
  int line = loss != NULL ? loss->key_line : node_line(root, "train", "top_k");

  if (s->soft_targets && s->loss != TD_LOSS_CROSS_ENTROPY) {
    td_yaml_errf(err, errlen, line, "key 'train.loss.targets' applies only to cross_entropy "
                 "(loss %s always takes float targets)", lname);
    return TD_EJOBSPEC;
  }
  if (s->label_smoothing > 0 && t.dtype != TD_DTYPE_I32) {
    td_yaml_errf(err, errlen, line, "key 'train.loss.label_smoothing' applies only to "
                 "cross_entropy over class integers, and the loss is %s%s", lname,
                 s->soft_targets ? " over soft targets" : "");
    return TD_EJOBSPEC;
  }
  if (s->top_k > 0 && !td_jobspec_classifies(s)) {
    td_yaml_errf(err, errlen, node_line(root, "train", "top_k"), "key 'train.top_k' applies "
                 "only to cross_entropy (a class per sample), and the loss is %s", lname);
    return TD_EJOBSPEC;
  }
  if (s->top_k > outputs) {
    td_yaml_errf(err, errlen, node_line(root, "train", "top_k"), "key 'train.top_k': expected "
                 "at most the model's %u classes, got %u", outputs, s->top_k);
    return TD_EJOBSPEC;
  }
  for (size_t i = 0; i < TD_ARRAY_SIZE(cb_keys); i++) {
    const char *why = NULL;

    if (!on[i])
      continue;
    if (monitors[i] == TD_MONITOR_VAL_ACCURACY && !td_jobspec_classifies(s) &&
        s->loss != TD_LOSS_BCE)
      why = "measures no accuracy (monitor val_loss or val_mae)";
    else if (monitors[i] == TD_MONITOR_VAL_TOP_K && s->top_k == 0)
      why = "measures no top-k accuracy (set train.top_k)";
    else if (monitors[i] == TD_MONITOR_VAL_MAE && s->loss != TD_LOSS_MSE && s->loss != TD_LOSS_MAE)
      why = "measures no mean absolute error (only loss mse and mae do)";
    if (why != NULL) {
      td_yaml_errf(err, errlen, node_line(root, "callbacks", cb_keys[i]), "key 'callbacks.%s' "
                   "monitors %s, and a job with loss %s %s", cb_keys[i],
                   td_monitor_name(monitors[i]), lname, why);
      return TD_EJOBSPEC;
    }
  }
  if (s->format == TD_DATA_RAW &&
      (s->raw.label_dtype == TD_DTYPE_F32) != (t.dtype == TD_DTYPE_F32)) {
    td_yaml_errf(err, errlen, node_line(td_yaml_get(root, "data"), "raw", "label_dtype"),
                 t.dtype == TD_DTYPE_F32
                     ? "key 'data.raw.label_dtype': loss %s needs float targets (label_dtype "
                       "float32, one per model output), got a class integer type"
                     : "key 'data.raw.label_dtype': loss %s takes class integers (uint8 or "
                       "int32), got float32", lname);
    return TD_EJOBSPEC;
  }
  if (s->format != TD_DATA_CSV)
    return 0;
  if (t.dtype == TD_DTYPE_I32 && s->csv.ntarget_columns > 0) {
    td_yaml_errf(err, errlen, csv->key_line, "key 'data.csv.target_columns' gives float "
                 "targets, and loss %s takes class integers (data.csv.label_column; or "
                 "train.loss.targets: soft)", lname);
    return TD_EJOBSPEC;
  }
  if (t.dtype == TD_DTYPE_F32 && s->csv.ntarget_columns == 0) {
    td_yaml_errf(err, errlen, csv != NULL ? csv->key_line : node_line(root, "data", "format"),
                 "loss %s%s needs float targets: name their columns in "
                 "data.csv.target_columns (one per model output, %u)", lname,
                 s->soft_targets ? " over soft targets" : "", outputs);
    return TD_EJOBSPEC;
  }
  if (t.dtype == TD_DTYPE_F32 && s->csv.ntarget_columns != outputs) {
    td_yaml_errf(err, errlen, csv->key_line, "key 'data.csv.target_columns': expected one "
                 "column per model output (%u), got %u", outputs, s->csv.ntarget_columns);
    return TD_EJOBSPEC;
  }
  if (t.dtype == TD_DTYPE_F32 && td_yaml_get(csv, "label_column") != NULL) {
    td_yaml_errf(err, errlen, csv->key_line, "key 'data.csv.label_column': the targets are "
                 "data.csv.target_columns (loss %s); remove label_column", lname);
    return TD_EJOBSPEC;
  }
  for (uint32_t i = 0; i < s->csv.ntarget_columns; i++)
    for (uint32_t j = 0; j < i; j++)
      if (s->csv.target_columns[i] == s->csv.target_columns[j]) {
        td_yaml_errf(err, errlen, csv->key_line, "key 'data.csv.target_columns': column %u "
                     "is named twice", s->csv.target_columns[i]);
        return TD_EJOBSPEC;
      }
  return 0;
}

/* What one key's table cannot say: rules across keys. */
static int check_job(td_jobspec *s, const td_ynode *root, char *err, size_t errlen) {
  const td_layer *first = &s->layers[0], *last = &s->layers[s->nlayers - 1];
  uint64_t elems = td_jobspec_input_elems(s);
  int rc;

  if (elems > INPUT_ELEMS_MAX) {
    td_yaml_errf(err, errlen, node_line(root, "model", "input"),
                 "key 'model.input': a sample of %llu elements is more than the limit of %u",
                 (unsigned long long)elems, INPUT_ELEMS_MAX);
    return TD_EJOBSPEC;
  }
  if (td_layer_def_of(first->type)->not_first) {
    td_yaml_errf(err, errlen, first->line,
                 "key 'model.layers[0]': the first layer must not be %s (start with dense)",
                 td_layer_names[first->type]);
    return TD_EJOBSPEC;
  }
  {
    int trained = 0;

    for (int i = 0; i < s->nlayers; i++)
      trained += td_layer_def_of(s->layers[i].type)->trainable && !s->layers[i].frozen;
    if (trained == 0) {
      td_yaml_errf(err, errlen, node_line(root, "model", "layers"),
                   "key 'model.layers': every layer with parameters has trainable: false, so "
                   "there is nothing to train");
      return TD_EJOBSPEC;
    }
  }
  if (last->type != TD_LAYER_DENSE) {
    td_yaml_errf(err, errlen, last->line,
                 "key 'model.layers[%d]': the last layer must be dense (it gives the class "
                 "scores), got %s%s", s->nlayers - 1, td_layer_names[last->type],
                 last->type == TD_LAYER_SOFTMAX || last->type == TD_LAYER_SIGMOID
                     ? " (the loss, softmax cross-entropy, turns the scores into "
                       "probabilities itself: remove it)"
                     : "");
    return TD_EJOBSPEC;
  }
  if ((rc = resolve_inputs(s, root, err, errlen)) < 0)
    return rc;
  {
    td_shape shapes[TD_MAX_LAYERS + 1];
    char why[300];
    int bad;

    if (td_jobspec_shapes(s, shapes, &bad, why, sizeof(why)) < 0) {
      if (bad < 0)
        td_yaml_errf(err, errlen, node_line(root, "model", "input"), "key 'model.input': %s",
                     why);
      else
        td_yaml_errf(err, errlen, s->layers[bad].line, "key 'model.layers[%d]': %s", bad, why);
      return TD_EJOBSPEC;
    }
    /* the loss takes one row of class scores per sample */
    if (shapes[s->nlayers].seq) {
      td_yaml_errf(err, errlen, last->line,
                   "key 'model.layers[%d]': the last layer gives a sequence [%u, %u], not "
                   "class scores: put a flatten before it", s->nlayers - 1,
                   shapes[s->nlayers].c, shapes[s->nlayers].h);
      return TD_EJOBSPEC;
    }
  }
  if (td_layer_def_of(first->type)->ids && (s->norm_mean != 0.0f || s->norm_std != 1.0f)) {
    td_yaml_errf(err, errlen, node_line(root, "data", "normalize"),
                 "key 'data.normalize': the first layer (%s) reads token ids, which are "
                 "taken as they are; remove data.normalize", td_layer_names[first->type]);
    return TD_EJOBSPEC;
  }
  s->schedule.lr = s->opt.lr;
  {
    char why[160];
    td_lossscale_cfg ls = s->loss_scale;

    if (td_schedule_check(&s->schedule, why, sizeof(why)) < 0) {
      td_yaml_errf(err, errlen, node_line(root, "train", "schedule"), "key 'train.schedule': %s",
                   why);
      return TD_EJOBSPEC;
    }
    ls.enabled = true; /* checked even when off: the fp16 remedy may turn it on */
    if (td_lossscale_check(&ls, why, sizeof(why)) < 0) {
      td_yaml_errf(err, errlen, node_line(root, "memory", "loss_scale"),
                   "key 'memory.loss_scale': %s", why);
      return TD_EJOBSPEC;
    }
    s->loss_scale.enabled = s->precision == TD_PREC_FP16;
    if (node_line(root, "memory", "loss_scale") > 0 && s->precision != TD_PREC_FP16 &&
        !td_jobspec_allows(s, TD_REMEDY_FP16)) {
      td_yaml_errf(err, errlen, node_line(root, "memory", "loss_scale"),
                   "key 'memory.loss_scale' applies only to fp16 (precision fp16, or the fp16 "
                   "remedy), and the precision is %s", precision_names[s->precision]);
      return TD_EJOBSPEC;
    }
  }
  if (s->min_micro_batch > s->batch_size) {
    td_yaml_errf(err, errlen, node_line(root, "memory", "min_micro_batch"),
                 "key 'memory.min_micro_batch': must not exceed train.batch_size (%u), got %u",
                 s->batch_size, s->min_micro_batch);
    return TD_EJOBSPEC;
  }
  if ((rc = check_callbacks(s, root, err, errlen)) < 0 ||
      (rc = check_targets(s, root, err, errlen)) < 0)
    return rc;
  return check_data(s, root, err, errlen);
}

int td_jobspec_parse(const char *text, size_t len, const char *base_dir, td_jobspec *out,
                     char *err, size_t errlen) {
  td_ynode *root = NULL;
  td_jobspec *spec;
  parse_ctx ctx = {.base_dir = base_dir};
  int rc;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  rc = td_yaml_parse(text, len, TD_JOBFILE_MAX, &root, err, errlen);
  if (rc < 0)
    return rc == TD_EINVAL ? TD_EJOBSPEC : rc;
  ctx.root = root;
  spec = malloc(sizeof(*spec));
  if (spec == NULL) {
    rc = TD_ENOMEM;
    goto free_root;
  }
  if (td_yaml_is_null(root)) {
    td_yaml_errf(err, errlen, 1, "the job file is empty (see examples/README.md)");
    rc = TD_EJOBSPEC;
    goto free_spec;
  }
  jobspec_defaults(spec);
  rc = td_yaml_bind(root, job_fields, spec, &ctx, "job file", err, errlen);
  if (rc < 0) {
    rc = TD_EJOBSPEC;
    goto free_spec;
  }
  /* Absent means the default; an empty list means no remedy at all. */
  if (td_yaml_get(td_yaml_get(root, "memory"), "remedies") == NULL) {
    spec->remedies[0] = TD_REMEDY_ACCUMULATE;
    spec->nremedies = 1;
  }
  if ((rc = check_job(spec, root, err, errlen)) < 0)
    goto free_spec;
  *out = *spec;
free_spec:
  free(spec);
free_root:
  td_yaml_free(root);
  return rc;
}

int td_jobspec_load(const char *path, td_jobspec *out, char *err, size_t errlen) {
  char dir[PATH_MAX], base[PATH_MAX], ex[64];
  const char *slash = strrchr(path, '/');
  char *text;
  size_t len;
  int rc;

  if (slash == NULL)
    strcpy(dir, ".");
  else if (slash == path)
    strcpy(dir, "/");
  else if ((size_t)(slash - path) < sizeof(dir))
    memcpy(dir, path, (size_t)(slash - path)), dir[slash - path] = '\0';
  else
    return td_yaml_errf(err, errlen, 0, "job file path is too long"), TD_ETOOBIG;
  td_yaml_excerpt(ex, sizeof(ex), path);
  rc = td_yaml_read_file(path, "job file", TD_JOBFILE_MAX, &text, &len, err, errlen);
  if (rc < 0)
    return rc;
  if (realpath(dir, base) == NULL) {
    td_yaml_errf(err, errlen, 0, "cannot resolve the directory of job file '%s'", ex);
    rc = TD_EIO;
    goto free_text;
  }
  rc = td_jobspec_parse(text, len, base, out, err, errlen);
free_text:
  free(text);
  return rc;
}

uint64_t td_jobspec_input_elems(const td_jobspec *spec) {
  uint64_t n = 1;

  for (int i = 0; i < spec->input_rank && i < TD_MAX_RANK; i++)
    if (td_mul_u64(n, spec->input_dims[i], &n) < 0)
      return UINT64_MAX;
  return n;
}

uint64_t td_shape_elems(const td_shape *s) {
  return (uint64_t)s->c * s->h * s->w;
}

void td_shape_text(const td_shape *s, char *buf, size_t cap) {
  if (s->spatial)
    snprintf(buf, cap, "[%u, %u, %u]", s->c, s->h, s->w);
  else if (s->seq)
    snprintf(buf, cap, "[%u, %u]", s->c, s->h);
  else
    snprintf(buf, cap, "[%u]", s->c);
}

int td_layer_inputs(const td_jobspec *spec, int i, uint8_t src[TD_MAX_INPUTS]) {
  const td_layer *l = &spec->layers[i];

  if (l->ninputs <= 0 || l->ninputs > TD_MAX_INPUTS) {
    src[0] = (uint8_t)i;
    return 1;
  }
  memcpy(src, l->inputs, (size_t)l->ninputs);
  return l->ninputs;
}

int td_jobspec_is_chain(const td_jobspec *spec) {
  for (int i = 0; i < spec->nlayers && i < TD_MAX_LAYERS; i++) {
    uint8_t src[TD_MAX_INPUTS];

    if (td_layer_inputs(spec, i, src) != 1 || src[0] != i)
      return 0;
  }
  return 1;
}

const char *td_jobspec_node_name(const td_jobspec *spec, int t, char *buf) {
  if (t <= 0)
    return "input";
  if (spec->layers[t - 1].name[0] != '\0')
    return spec->layers[t - 1].name;
  snprintf(buf, TD_LAYER_NAME_MAX, "%d", t - 1);
  return buf;
}

/* The graph's own rules: names, and inputs that come before the layer in
 * the right number. */
static int check_graph(const td_jobspec *spec, int *bad, char *msg, size_t cap) {
  for (int i = 0; i < spec->nlayers; i++) {
    const td_layer *l = &spec->layers[i];
    bool join = (unsigned)l->type < TD_LAYER__COUNT && td_layer_def_of(l->type)->join != NULL;
    uint8_t src[TD_MAX_INPUTS];
    int n;

    *bad = i;
    if (memchr(l->name, '\0', sizeof(l->name)) == NULL) {
      snprintf(msg, cap, "its name is not terminated");
      return TD_EJOBSPEC;
    }
    if (l->name[0] != '\0' && td_layer_name_check(l->name, msg, cap) < 0)
      return TD_EJOBSPEC;
    for (int j = 0; j < i && l->name[0] != '\0'; j++) {
      if (strcmp(spec->layers[j].name, l->name) == 0) {
        snprintf(msg, cap, "the name '%s' is model.layers[%d]'s already: names are unique",
                 l->name, j);
        return TD_EJOBSPEC;
      }
    }
    if (l->ninputs < 0 || l->ninputs > TD_MAX_INPUTS) {
      snprintf(msg, cap, "a layer has at most %d inputs", TD_MAX_INPUTS);
      return TD_EJOBSPEC;
    }
    n = td_layer_inputs(spec, i, src);
    for (int k = 0; k < n; k++) {
      if (src[k] > i) {
        snprintf(msg, cap, "input %d is layer %d, which is not before this one: the layers "
                 "are listed so that each comes after its inputs (a graph without cycles)", k,
                 src[k] - 1);
        return TD_EJOBSPEC;
      }
    }
    if (join && n < 2) {
      snprintf(msg, cap, "%s joins two or more inputs: list them, as inputs: [a, b]",
               td_layer_names[l->type]);
      return TD_EJOBSPEC;
    }
    if (!join && n != 1) {
      snprintf(msg, cap, "a %s layer takes one input, and %d are listed (add or concat join "
               "several)", td_layer_type_name(l->type), n);
      return TD_EJOBSPEC;
    }
  }
  return 0;
}

/* A layer whose output nothing reads and that is not the last is surely a
 * mistake: its work would be lost. */
static int check_unused(const td_jobspec *spec, int *bad, char *msg, size_t cap) {
  bool read[TD_MAX_LAYERS + 1] = {false};
  char buf[TD_LAYER_NAME_MAX];

  for (int i = 0; i < spec->nlayers; i++) {
    uint8_t src[TD_MAX_INPUTS];
    int n = td_layer_inputs(spec, i, src);

    for (int k = 0; k < n; k++)
      read[src[k]] = true;
  }
  for (int i = 0; i < spec->nlayers - 1; i++) {
    if (!read[i + 1]) {
      *bad = i;
      snprintf(msg, cap, "nothing reads this layer's output ('%s'), and only the last layer "
               "is the model's output: list it in a later layer's inputs, or remove it",
               td_jobspec_node_name(spec, i + 1, buf));
      return TD_EJOBSPEC;
    }
  }
  return 0;
}

uint32_t td_shape_rows(const td_shape *s) { return s->seq ? s->c : 1; }

uint32_t td_shape_width(const td_shape *s) {
  return s->seq ? s->h : (uint32_t)td_shape_elems(s);
}

int td_jobspec_shapes(const td_jobspec *spec, td_shape shapes[TD_MAX_LAYERS + 1], int *bad,
                      char *msg, size_t cap) {
  uint64_t elems = td_jobspec_input_elems(spec);
  td_shape cur;
  int rc;

  *bad = -1;
  if (spec->input_rank < 1 || spec->input_rank > TD_MAX_RANK || elems == 0) {
    snprintf(msg, cap, "needs 1 to %d dimensions, each at least 1", TD_MAX_RANK);
    return TD_EJOBSPEC;
  }
  if (elems > INT_MAX) {
    snprintf(msg, cap, "a sample of %llu values is more than %d", (unsigned long long)elems,
             INT_MAX);
    return TD_ETOOBIG;
  }
  if (spec->input_seq && spec->input_rank != 2) {
    snprintf(msg, cap, "a sequence input is [T, D] (positions, features): 2 dimensions, not "
             "%d", spec->input_rank);
    return TD_EJOBSPEC;
  }
  if (spec->input_seq)
    cur = (td_shape){spec->input_dims[0], spec->input_dims[1], 1, 0, 1};
  else if (spec->input_rank == 2)
    cur = (td_shape){1, spec->input_dims[0], spec->input_dims[1], 1, 0};
  else if (spec->input_rank == 3)
    cur = (td_shape){spec->input_dims[0], spec->input_dims[1], spec->input_dims[2], 1, 0};
  else
    cur = (td_shape){(uint32_t)elems, 1, 1, 0, 0};
  shapes[0] = cur;
  if (spec->nlayers < 1 || spec->nlayers > TD_MAX_LAYERS) {
    snprintf(msg, cap, "a model has 1 to %d layers", TD_MAX_LAYERS);
    return TD_EJOBSPEC;
  }
  if ((rc = check_graph(spec, bad, msg, cap)) < 0)
    return rc;
  for (int i = 0; i < spec->nlayers; i++) {
    const td_layer *l = &spec->layers[i];
    const td_layer_def *d;
    uint8_t src[TD_MAX_INPUTS];
    int nin = td_layer_inputs(spec, i, src);
    td_shape in = shapes[src[0]];
    uint64_t big = 0;

    *bad = i;
    if ((unsigned)l->type >= TD_LAYER__COUNT) {
      snprintf(msg, cap, "unknown layer type %d", (int)l->type);
      return TD_EJOBSPEC;
    }
    d = td_layer_def_of(l->type);
    if (d->ids && i > 0) {
      snprintf(msg, cap, "%s must be the model's first layer (it reads the token ids of "
               "model.input)", td_layer_names[l->type]);
      return TD_EJOBSPEC;
    }
    if (!in.spatial && d->spatial) {
      if (in.seq)
        snprintf(msg, cap, "%s needs a [C, H, W] input, and gets a sequence [%u, %u]",
                 td_layer_names[l->type], in.c, in.h);
      else if (src[0] == 0)
        snprintf(msg, cap, "%s needs a [C, H, W] input, and model.input is flat (give it as "
                 "[H, W] or [C, H, W])", td_layer_names[l->type]);
      else
        snprintf(msg, cap, "%s needs a [C, H, W] input, and layer %d (%s%s%s) gives %u flat "
                 "features", td_layer_names[l->type], src[0] - 1,
                 td_layer_names[spec->layers[src[0] - 1].type],
                 spec->layers[src[0] - 1].name[0] ? " " : "", spec->layers[src[0] - 1].name,
                 in.c);
      return TD_EJOBSPEC;
    }
    if (d->join != NULL) {
      td_shape ins[TD_MAX_INPUTS];
      char bufs[TD_MAX_INPUTS][TD_LAYER_NAME_MAX];
      const char *names[TD_MAX_INPUTS];

      for (int k = 0; k < nin; k++) {
        ins[k] = shapes[src[k]];
        names[k] = td_jobspec_node_name(spec, src[k], bufs[k]);
      }
      if ((rc = d->join(l, ins, names, nin, &cur, msg, cap)) < 0)
        return rc;
    } else if (d->shape != NULL) {
      if ((rc = d->shape(l, &in, &cur, &big, msg, cap)) < 0)
        return rc;
    } else {
      cur = in; /* without a shape of its own a layer keeps its input's */
    }
    if (td_shape_elems(&cur) > INT_MAX || big > INT_MAX) {
      snprintf(msg, cap, "%s needs a tensor of %llu values per sample, more than %d",
               td_layer_names[l->type],
               (unsigned long long)(big > td_shape_elems(&cur) ? big : td_shape_elems(&cur)),
               INT_MAX);
      return TD_ETOOBIG;
    }
    shapes[i + 1] = cur;
  }
  if ((rc = check_unused(spec, bad, msg, cap)) < 0)
    return rc;
  *bad = -1;
  return 0;
}

int td_jobspec_batch_dependent(const td_jobspec *spec) {
  for (int i = 0; i < spec->nlayers && i < TD_MAX_LAYERS; i++)
    if ((unsigned)spec->layers[i].type < TD_LAYER__COUNT &&
        td_layer_def_of(spec->layers[i].type)->batch_dependent)
      return 1;
  return 0;
}

uint32_t td_jobspec_classes(const td_jobspec *spec) {
  for (int i = spec->nlayers - 1; i >= 0; i--)
    if (spec->layers[i].type == TD_LAYER_DENSE)
      return spec->layers[i].units;
  return 0;
}

/* The logits' width, as the planner lays them out (the last layer's
 * output, all of it: a per-position dense gives T * units); the last dense
 * layer's units when the shapes do not chain (the parser refuses that). */
uint32_t td_jobspec_outputs(const td_jobspec *spec) {
  td_shape shapes[TD_MAX_LAYERS + 1];
  char why[8];
  int bad;

  if (spec->nlayers < 1 || spec->nlayers > TD_MAX_LAYERS ||
      td_jobspec_shapes(spec, shapes, &bad, why, sizeof(why)) < 0)
    return td_jobspec_classes(spec);
  return (uint32_t)td_shape_elems(&shapes[spec->nlayers]);
}

td_target td_jobspec_target(const td_jobspec *spec) {
  if (spec->loss == TD_LOSS_CROSS_ENTROPY && !spec->soft_targets)
    return (td_target){TD_DTYPE_I32, 1};
  return (td_target){TD_DTYPE_F32, td_jobspec_outputs(spec)};
}

int td_jobspec_classifies(const td_jobspec *spec) {
  return spec->loss == TD_LOSS_CROSS_ENTROPY;
}

const char *td_loss_name(td_loss_kind k) {
  return (unsigned)k < TD_LOSS__COUNT ? loss_names[k] : "unknown";
}

int td_jobspec_allows(const td_jobspec *spec, td_remedy r) {
  for (int i = 0; i < spec->nremedies && i < TD_MAX_REMEDIES; i++)
    if (spec->remedies[i] == r)
      return 1;
  return 0;
}

uint32_t td_jobspec_min_micro_batch(const td_jobspec *spec) {
  uint32_t m = spec->min_micro_batch ? spec->min_micro_batch : 1;

  if (!td_jobspec_allows(spec, TD_REMEDY_ACCUMULATE) || m > spec->batch_size)
    return spec->batch_size;
  return m;
}

const char *td_remedy_name(td_remedy r) {
  return (unsigned)r < TD_REMEDY__COUNT ? remedy_names[r] : "unknown";
}

const char *td_precision_name(td_precision p) {
  return (unsigned)p < TD_PREC__COUNT ? precision_names[p] : "unknown";
}

const char *td_layer_type_name(td_layer_type t) {
  return (unsigned)t < TD_LAYER__COUNT ? td_layer_names[t] : "unknown";
}
