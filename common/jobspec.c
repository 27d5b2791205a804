#include "jobspec.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "util.h"
#include "yamlread.h"

#define INPUT_ELEMS_MAX (1u << 24)

static const char *const layer_names[TD_LAYER__COUNT + 1] = {
    [TD_LAYER_DENSE] = "dense",
    [TD_LAYER_RELU] = "relu",
};
static const char *const precision_names[TD_PREC__COUNT + 1] = {[TD_PREC_FP32] = "fp32"};
static const char *const format_names[] = {[TD_DATA_IDX] = "idx", NULL};
static const char *const opt_names[] = {[TD_OPT_SGD] = "sgd", [TD_OPT_ADAM] = "adam", NULL};

/* Keys that mean something to one optimiser only; the other accepts them
 * at their neutral value, so one file can list them all. */
static const struct {
  const char *key;
  td_opt_kind kind;
  size_t offset;
  float neutral;
} opt_only[] = {
    {"beta1", TD_OPT_ADAM, offsetof(td_optimizer, beta1), 0.9f},
    {"beta2", TD_OPT_ADAM, offsetof(td_optimizer, beta2), 0.999f},
    {"eps", TD_OPT_ADAM, offsetof(td_optimizer, eps), 1e-8f},
    {"momentum", TD_OPT_SGD, offsetof(td_optimizer, momentum), 0.0f},
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

/* user is the base directory (or NULL): relative paths become absolute. */
static int resolve_path(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                        size_t cap) {
  const char *base = user;
  char *s = p, joined[TD_PATH_MAX];
  int len;

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

static int check_layer(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                       size_t cap) {
  td_layer *l = p;

  l->line = n->line;
  if (l->type == TD_LAYER_DENSE && l->units == 0) {
    snprintf(msg, cap, "a dense layer needs 'units'");
    return 1;
  }
  if (l->type != TD_LAYER_DENSE && l->units != 0) {
    snprintf(msg, cap, "a %s layer has no 'units'", layer_names[l->type]);
    return 1;
  }
  return 0;
}

static int check_optimizer(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                           size_t cap) {
  const td_optimizer *o = p;

  for (size_t i = 0; i < TD_ARRAY_SIZE(opt_only); i++) {
    float v;

    memcpy(&v, (const char *)o + opt_only[i].offset, sizeof(v));
    if (opt_only[i].kind != o->kind && v != opt_only[i].neutral) {
      snprintf(msg, cap, "'%s' applies only to %s, and the type is %s (remove it or set it to %g)",
               opt_only[i].key, opt_names[opt_only[i].kind], opt_names[o->kind],
               (double)opt_only[i].neutral);
      return 1;
    }
  }
  return 0;
}

static const td_yfield layer_fields[] = {
    TD_YF_ENUM("type", td_layer, type, layer_names, NULL, TD_YF_REQUIRED),
    TD_YF_INT("units", td_layer, units, 1, 65536, 0),
    {0},
};
static const td_yfield layer_item = {
    .type = TD_YT_MAP, .sub = layer_fields, .size = sizeof(td_layer), .check = check_layer,
};
static const td_yfield dim_item = {
    .type = TD_YT_INT, .size = sizeof(uint32_t), .min = 1, .max = INPUT_ELEMS_MAX,
};

static const td_yfield model_fields[] = {
    TD_YF_SEQ("input", td_jobspec, input_dims, input_rank, 1, TD_MAX_RANK, &dim_item,
              TD_YF_REQUIRED, NULL),
    TD_YF_SEQ("layers", td_jobspec, layers, nlayers, 1, TD_MAX_LAYERS, &layer_item,
              TD_YF_REQUIRED, NULL),
    {0},
};

static const td_yfield split_fields[] = {
    TD_YF_STR("images", td_data_split, images, TD_YF_REQUIRED | TD_YF_NONEMPTY, resolve_path),
    TD_YF_STR("labels", td_data_split, labels, TD_YF_REQUIRED | TD_YF_NONEMPTY, resolve_path),
    TD_YF_INT("limit", td_data_split, limit, 0, UINT32_MAX, 0),
    {0},
};

static const td_yfield normalize_fields[] = {
    TD_YF_FLOAT("mean", td_jobspec, norm_mean, -1e6, 1e6, 0),
    TD_YF_FLOAT("std", td_jobspec, norm_std, 0, 1e6, TD_YF_LO_OPEN),
    {0},
};

static const td_yfield data_fields[] = {
    TD_YF_ENUM("format", td_jobspec, format, format_names, NULL, 0),
    TD_YF_MAP("train", td_jobspec, train, split_fields, TD_YF_REQUIRED, NULL),
    TD_YF_MAP("test", td_jobspec, test, split_fields, TD_YF_REQUIRED, NULL),
    TD_YF_SECTION("normalize", normalize_fields, 0),
    {0},
};

static const td_yfield optimizer_fields[] = {
    TD_YF_ENUM("type", td_optimizer, kind, opt_names, NULL, TD_YF_REQUIRED),
    TD_YF_FLOAT("lr", td_optimizer, lr, 0, 10, TD_YF_REQUIRED | TD_YF_LO_OPEN),
    TD_YF_FLOAT("beta1", td_optimizer, beta1, 0, 1, TD_YF_HI_OPEN),
    TD_YF_FLOAT("beta2", td_optimizer, beta2, 0, 1, TD_YF_HI_OPEN),
    TD_YF_FLOAT("eps", td_optimizer, eps, 0, 1, TD_YF_LO_OPEN),
    TD_YF_FLOAT("momentum", td_optimizer, momentum, 0, 1, TD_YF_HI_OPEN),
    TD_YF_FLOAT("weight_decay", td_optimizer, weight_decay, 0, 1, 0),
    {0},
};

static const td_yfield train_fields[] = {
    TD_YF_INT("batch_size", td_jobspec, batch_size, 1, 65536, TD_YF_REQUIRED),
    TD_YF_INT("epochs", td_jobspec, epochs, 1, 10000, TD_YF_REQUIRED),
    TD_YF_U64("seed", td_jobspec, seed, 0),
    TD_YF_MAP("optimizer", td_jobspec, opt, optimizer_fields, TD_YF_REQUIRED, check_optimizer),
    {0},
};

static const td_yfield memory_fields[] = {
    TD_YF_ENUM("precision", td_jobspec, precision, precision_names, NULL, 0),
    TD_YF_INT("min_micro_batch", td_jobspec, min_micro_batch, 1, 65536, 0),
    {0},
};

static const td_yfield job_fields[] = {
    TD_YF_STR("name", td_jobspec, name, TD_YF_NONEMPTY, check_name),
    TD_YF_SECTION("model", model_fields, TD_YF_REQUIRED),
    TD_YF_SECTION("data", data_fields, TD_YF_REQUIRED),
    TD_YF_SECTION("train", train_fields, TD_YF_REQUIRED),
    TD_YF_SECTION("memory", memory_fields, 0),
    TD_YF_INT("priority", td_jobspec, priority, -1000, 1000, 0),
    TD_YF_INT("max_retries", td_jobspec, max_retries, 0, 100, 0),
    TD_YF_STR("device", td_jobspec, device, 0, check_device),
    TD_YF_STR("output", td_jobspec, output, 0, resolve_path),
    {0},
};

static void jobspec_defaults(td_jobspec *s) {
  memset(s, 0, sizeof(*s));
  strcpy(s->name, "job");
  s->format = TD_DATA_IDX;
  s->norm_mean = 0.0f;
  s->norm_std = 1.0f;
  for (size_t i = 0; i < TD_ARRAY_SIZE(opt_only); i++)
    memcpy((char *)&s->opt + opt_only[i].offset, &opt_only[i].neutral, sizeof(float));
  s->precision = TD_PREC_FP32;
  s->min_micro_batch = 1;
}

static int node_line(const td_ynode *root, const char *section, const char *key) {
  const td_ynode *n = td_yaml_get(td_yaml_get(root, section), key);

  return n != NULL ? n->key_line : 0;
}

/* What one key's table cannot say: rules across keys. */
static int check_job(const td_jobspec *s, const td_ynode *root, char *err, size_t errlen) {
  const td_layer *first = &s->layers[0], *last = &s->layers[s->nlayers - 1];
  uint64_t elems = td_jobspec_input_elems(s);

  if (elems > INPUT_ELEMS_MAX) {
    td_yaml_errf(err, errlen, node_line(root, "model", "input"),
                 "key 'model.input': a sample of %llu elements is more than the limit of %u",
                 (unsigned long long)elems, INPUT_ELEMS_MAX);
    return TD_EJOBSPEC;
  }
  if (first->type == TD_LAYER_RELU) {
    td_yaml_errf(err, errlen, first->line,
                 "key 'model.layers[0]': the first layer must not be relu (start with dense)");
    return TD_EJOBSPEC;
  }
  if (last->type != TD_LAYER_DENSE) {
    td_yaml_errf(err, errlen, last->line,
                 "key 'model.layers[%d]': the last layer must be dense (it gives the class "
                 "scores), got %s", s->nlayers - 1, layer_names[last->type]);
    return TD_EJOBSPEC;
  }
  if (s->min_micro_batch > s->batch_size) {
    td_yaml_errf(err, errlen, node_line(root, "memory", "min_micro_batch"),
                 "key 'memory.min_micro_batch': must not exceed train.batch_size (%u), got %u",
                 s->batch_size, s->min_micro_batch);
    return TD_EJOBSPEC;
  }
  return 0;
}

int td_jobspec_parse(const char *text, size_t len, const char *base_dir, td_jobspec *out,
                     char *err, size_t errlen) {
  td_ynode *root = NULL;
  td_jobspec *spec;
  int rc;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  rc = td_yaml_parse(text, len, TD_JOBFILE_MAX, &root, err, errlen);
  if (rc < 0)
    return rc == TD_EINVAL ? TD_EJOBSPEC : rc;
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
  rc = td_yaml_bind(root, job_fields, spec, (void *)base_dir, "job file", err, errlen);
  if (rc < 0) {
    rc = TD_EJOBSPEC;
    goto free_spec;
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

uint32_t td_jobspec_classes(const td_jobspec *spec) {
  for (int i = spec->nlayers - 1; i >= 0; i--)
    if (spec->layers[i].type == TD_LAYER_DENSE)
      return spec->layers[i].units;
  return 0;
}

const char *td_precision_name(td_precision p) {
  return (unsigned)p < TD_PREC__COUNT ? precision_names[p] : "unknown";
}

const char *td_layer_type_name(td_layer_type t) {
  return (unsigned)t < TD_LAYER__COUNT ? layer_names[t] : "unknown";
}
