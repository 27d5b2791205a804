#include "dataset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "augment.h"
#include "dataset_impl.h"
#include "error.h"
#include "half.h"
#include "parallel.h"
#include "util.h"

#define LOAD_TASK_BYTES ((uint64_t)4 << 20)

/* Each format, by td_data_format: its file says what it is. */
static const td__format *const formats[] = {
    [TD_DATA_IDX] = &td__format_idx,
    [TD_DATA_NPY] = &td__format_npy,
    [TD_DATA_CSV] = &td__format_csv,
    [TD_DATA_RAW] = &td__format_raw,
    [TD_DATA_IMAGES] = &td__format_images,
};

static const char *const split_names[] = {"train", "test"};

const char *td_split_name(const td_split *s) { return split_names[s->which]; }
const char *td_split_path(const td_split *s) {
  return s->fmt->path != NULL ? s->fmt->path(s) : td_dfile_path(s->sf);
}
td_dtype td_split_dtype(const td_split *s) { return s->dtype; }
td_target td_split_target(const td_split *s) { return s->target; }
uint32_t td_split_sample_bytes(const td_split *s) { return s->sample_bytes; }
uint64_t td_split_count(const td_split *s) { return s->count; }

void td__split_set_records(td_split *s, uint64_t records) {
  s->records = records;
  s->count = s->limit > 0 && s->limit < records ? s->limit : records;
}


int td_split_open(const td_jobspec *spec, td_split_which which, td_split **out, char *err,
                  size_t errlen) {
  const td_data_split *ds = which == TD_SPLIT_TRAIN ? &spec->train : &spec->test;
  uint64_t elems = td_jobspec_input_elems(spec);
  td_split *s;
  int rc;

  if (elems < 1 || elems > UINT32_MAX / 8) {
    snprintf(err, errlen, "the model's input of %llu elements is out of range",
             (unsigned long long)elems);
    return TD_EINVAL;
  }
  s = calloc(1, sizeof(*s));
  if (s == NULL)
    return TD_ENOMEM;
  s->which = which;
  s->format = spec->format;
  s->limit = ds->limit;
  s->elems = (uint32_t)elems;
  s->records = s->count = UINT64_MAX;
  s->target = td_jobspec_target(spec);
  s->loss = spec->loss;
  if ((unsigned)spec->format >= TD_ARRAY_SIZE(formats) || formats[spec->format] == NULL) {
    snprintf(err, errlen, "data format %d is unknown", (int)spec->format);
    td_split_close(s);
    return TD_EINVAL;
  }
  s->fmt = formats[spec->format];
  s->stored = TD_DTYPE__COUNT;
  rc = s->fmt->open(s, spec, ds, err, errlen);
  if (rc < 0) {
    td_split_close(s);
    return rc;
  }
  if (s->stored == TD_DTYPE__COUNT)
    s->stored = s->dtype;
  s->sample_bytes = (uint32_t)(s->elems * td_dtype_size(s->dtype));
  if (s->count == 0) {
    td_split_close(s);
    return td_data_errf(err, errlen, ds->images, "no samples at offset 0: expected at least "
                        "one, got none");
  }
  *out = s;
  return 0;
}

void td_split_close(td_split *s) {
  if (s == NULL)
    return;
  if (s->fmt != NULL && s->fmt->close != NULL)
    s->fmt->close(s);
  td_dfile_close(s->sf);
  td_dfile_close(s->lf);
  free(s->line_off);
  free(s);
}

int td_split_needs_scan(const td_split *s, int random_access) {
  if (s->count == UINT64_MAX)
    return 1;
  return s->fmt->needs_scan(s, random_access);
}

int td_split_scan(td_split *s, uint64_t index_bytes, char *err, size_t errlen) {
  uint32_t max_points = (uint32_t)(index_bytes / (TD_DFILE_WINDOW + 64));
  int rc = s->fmt->scan(s, max_points, err, errlen);

  s->scanned = rc == 0 && index_bytes > 0;
  return rc;
}

uint64_t td_split_min_read(const td_split *s) {
  uint64_t gap, per;

  s->fmt->read_cost(s, &gap, &per);
  /* Half a gap wasted on average: n * per >= 4 * gap / 2. */
  return gap == 0 ? 1 : (2 * gap + per - 1) / per;
}

int td__label_fail(const char *path, uint64_t index, long long v, uint32_t classes, char *err,
                   size_t errlen) {
  return td_data_errf(err, errlen, path, "label at index %llu is %lld, but the model has %u "
                      "classes (labels 0..%u)", (unsigned long long)index, v, classes,
                      classes - 1);
}

int td__target_kind_fail(const td_split *s, const char *path, int is_float, char *err,
                         size_t errlen) {
  if (is_float)
    return td_data_errf(err, errlen, path, "labels at offset 0: loss %s takes class integers, "
                        "and this file holds float targets (for probabilities per class set "
                        "train.loss.targets: soft)", td_loss_name(s->loss));
  return td_data_errf(err, errlen, path, "labels at offset 0: loss %s%s needs float targets "
                      "(%u per sample, one per model output), and this file holds class "
                      "integers", td_loss_name(s->loss),
                      s->loss == TD_LOSS_CROSS_ENTROPY ? " over soft targets" : "",
                      s->target.width);
}

int td_labels_check(const int32_t *labels, uint64_t n, uint64_t first, uint32_t classes,
                    const char *path, char *err, size_t errlen) {
  for (uint64_t i = 0; i < n; i++)
    if (labels[i] < 0 || (uint32_t)labels[i] >= classes)
      return td__label_fail(path, first + i, labels[i], classes, err, errlen);
  return 0;
}

uint64_t td_ids_find(const void *values, td_dtype dtype, uint64_t count, uint32_t vocab,
                     double *id) {
  for (uint64_t i = 0; i < count; i++) {
    switch (dtype) {
    case TD_DTYPE_U8: *id = ((const uint8_t *)values)[i]; break;
    case TD_DTYPE_I32: *id = ((const int32_t *)values)[i]; break;
    case TD_DTYPE_F16: *id = td_f16_to_f32(((const uint16_t *)values)[i]); break;
    case TD_DTYPE_F32: *id = ((const float *)values)[i]; break;
    default: return count;
    }
    if (!(*id >= 0.0 && *id < vocab) || *id != floor(*id))
      return i;
  }
  return count;
}

int td_ids_check(const uint8_t *samples, td_dtype dtype, uint64_t n, uint32_t elems,
                 uint64_t first, uint32_t vocab, const char *path, char *err, size_t errlen) {
  double id;
  uint64_t i = td_ids_find(samples, dtype, n * elems, vocab, &id);

  if (i == n * elems)
    return 0;
  return td_data_errf(err, errlen, path, "sample at index %llu, position %llu: token id %g is "
                      "not an id of the embedding's vocabulary (0 to %u)",
                      (unsigned long long)(first + i / elems), (unsigned long long)(i % elems),
                      id, vocab - 1);
}

int td_split_read(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, void *targets,
                  uint32_t classes, char *err, size_t errlen) {
  if (s->count == UINT64_MAX || first > s->count || n > s->count - first) {
    snprintf(err, errlen, "%s: samples %llu..+%llu are outside the %s set", td_split_path(s),
             (unsigned long long)first, (unsigned long long)n, td_split_name(s));
    return TD_EINVAL;
  }
  if (n == 0)
    return 0;
  if (classes > TD_DATASET_MAX_CLASSES)
    classes = TD_DATASET_MAX_CLASSES;
  return s->fmt->read(s, first, n, samples, targets, classes, err, errlen);
}

struct load {
  td_split *s;
  uint8_t *samples, *targets;
  uint32_t classes;
  uint64_t per; /* samples per task; 0: a task per file */
};

static int load_task(void *ctx, uint64_t t, char *err, size_t errlen) {
  struct load *ld = ctx;
  td_split *s = ld->s;
  uint64_t first, n;

  if (ld->per == 0)
    return s->fmt->load_file(s, (int)t, ld->samples, ld->targets, ld->classes, err, errlen);
  first = t * ld->per;
  n = s->count - first < ld->per ? s->count - first : ld->per;
  return td_split_read(s, first, n, ld->samples + first * s->sample_bytes,
                       ld->targets + first * td_target_bytes(s->target), ld->classes, err,
                       errlen);
}

int td_split_load(td_split *s, uint8_t *samples, void *targets, uint32_t classes,
                  int nthreads, char *err, size_t errlen) {
  struct load ld = {.s = s, .samples = samples, .targets = targets, .classes = classes};
  int gz = (s->sf != NULL && td_dfile_is_gzip(s->sf)) ||
           (s->lf != NULL && td_dfile_is_gzip(s->lf)), rc;
  uint64_t ntasks, align = s->fmt->load_align;

  if (td_split_needs_scan(s, 0) && (rc = td_split_scan(s, 0, err, errlen)) < 0)
    return rc;
  /* gzip without access points decodes front to back: a task per file */
  if (s->fmt->load_file == NULL || !gz || !td_split_needs_scan(s, 1)) {
    ld.per = LOAD_TASK_BYTES / s->sample_bytes;
    if (align > 1)
      ld.per = (ld.per / align + 1) * align;
    if (s->fmt->load_task_max > 0 && ld.per > s->fmt->load_task_max)
      ld.per = s->fmt->load_task_max;
    if (ld.per < 1)
      ld.per = 1;
    ntasks = (s->count + ld.per - 1) / ld.per;
  } else {
    ntasks = s->lab.f == s->sf ? 1 : 2;
  }
  return td_parallel(nthreads, ntasks, load_task, &ld, err, errlen);
}

int td_split_cache_key(const td_split *s, char *buf, size_t cap) {
  const td_dfile *files[] = {s->sf, s->lf};
  size_t n;
  int k;

  k = snprintf(buf, cap, "v2 fmt=%d elems=%u dtype=%d target=%d/%u limit=%llu %s",
               (int)s->format, s->elems, (int)s->dtype, (int)s->target.dtype, s->target.width,
               (unsigned long long)s->limit, s->params);
  if (k < 0 || (size_t)k >= cap)
    return TD_ETOOBIG;
  n = (size_t)k;
  if (s->fmt->cache_ident != NULL)
    return s->fmt->cache_ident(s, buf + n, cap - n);
  for (size_t i = 0; i < TD_ARRAY_SIZE(files) && files[i] != NULL; i++) {
    const struct stat *st = td_dfile_stat(files[i]);
    k = snprintf(buf + n, cap - n, " file=%llx:%llx:%lld:%lld.%09ld",
                 (unsigned long long)st->st_dev, (unsigned long long)st->st_ino,
                 (long long)st->st_size, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec);
    if (k < 0 || (size_t)k >= cap - n)
      return TD_ETOOBIG;
    n += (size_t)k;
  }
  return 0;
}

uint64_t td_dataset_validation_count(const td_jobspec *spec, uint64_t count) {
  uint64_t v = spec->val_count;

  if (spec->val_fraction > 0) {
    v = (uint64_t)llround((double)spec->val_fraction * (double)count);
    if (v == 0)
      v = 1;
  }
  return v;
}

int td_dataset_check(const td_jobspec *spec, char *err, size_t errlen) {
  uint32_t classes = td_jobspec_classes(spec);
  td_split *s[2] = {NULL, NULL};
  uint64_t v;
  int rc = 0;

  if (errlen > 0)
    err[0] = '\0';
  if (classes < 1 || classes > TD_DATASET_MAX_CLASSES) {
    snprintf(err, errlen, "the model has %u outputs: expected 1..%u", classes,
             TD_DATASET_MAX_CLASSES);
    return TD_EDATA;
  }
  for (int i = 0; i < 2 && rc == 0; i++)
    if ((rc = td_split_open(spec, (td_split_which)i, &s[i], err, errlen)) == 0)
      rc = s[i]->fmt->check_labels(s[i], classes, err, errlen);
  if (rc == 0 && s[1]->dtype != s[0]->dtype)
    rc = td_data_errf(err, errlen, td_split_path(s[1]), "samples at offset 0: expected %s like "
                      "the train set's, got %s", td_dtype_name(s[0]->dtype),
                      td_dtype_name(s[1]->dtype));
  if (rc == 0 && s[0]->count != UINT64_MAX &&
      (v = td_dataset_validation_count(spec, s[0]->count)) >= s[0]->count && v > 0)
    rc = td_data_errf(err, errlen, td_split_path(s[0]), "validation split: expected fewer "
                      "than the %llu samples of the train set, got %llu",
                      (unsigned long long)s[0]->count, (unsigned long long)v);
  td_split_close(s[0]);
  td_split_close(s[1]);
  /* A missing file is bad data here, not a missing job. */
  return rc == TD_ENOENT ? TD_EDATA : rc;
}

int td_dataset_probe(const td_jobspec *spec, td_dataset_info *out, char *err, size_t errlen) {
  td_split *s;
  int rc;

  if ((rc = td_split_open(spec, TD_SPLIT_TRAIN, &s, err, errlen)) < 0)
    return rc;
  /* as the samples travel: data.augment.normalize makes them float32 */
  out->dtype = td_aug_out_dtype(spec, s->dtype);
  out->sample_bytes = (uint32_t)(s->elems * td_dtype_size(out->dtype));
  td_split_close(s);
  return 0;
}
