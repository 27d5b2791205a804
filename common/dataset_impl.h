/* Inside the dataset front (dataset.c): the split every format fills, and
 * the ops table a format is.  A format is one td__format entry, in the
 * file of its parser (idx.c, npy.c, csvdata.c, rawdata.c, imgfolder.c); the formats of
 * fixed-size records (idx, npy, raw) share records.c's reading.
 */
#ifndef TD_DATASET_IMPL_H
#define TD_DATASET_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "csvdata.h"
#include "datafile.h"
#include "dataset.h"

#define TD__SCAN_SPACING ((uint64_t)1 << 20) /* bytes between gzip access points */

/* One fixed-size field (the sample, or the label) of fixed-size records. */
typedef struct td__field {
  td_dfile *f;
  uint64_t off;   /* the first record's offset in the data */
  uint64_t rec;   /* bytes per record */
  uint64_t at;    /* the field's offset in a record */
  uint64_t bytes; /* the field's size */
} td__field;

typedef struct td__format td__format;

struct td_split {
  const td__format *fmt;
  td_split_which which;
  td_data_format format;
  uint64_t limit;   /* 0 = all */
  uint32_t elems;
  td_dtype dtype;    /* of the samples as they are read (sample_bytes) */
  td_dtype stored;   /* of the samples in the file: dtype, or int64 or float64 (npy)
                        converted to dtype as records are read */
  uint32_t sample_bytes;
  uint64_t records; /* in the file; UINT64_MAX until known */
  uint64_t count;
  td_dfile *sf, *lf; /* samples; a separate labels file (idx, npy) */
  td__field samp, lab;
  td_dtype label_dtype; /* as stored: u8, i32, i64 (class ids), f32, f64 (float targets) */
  td_target target;     /* as read: the job's */
  td_loss_kind loss;    /* for messages */
  td_csv_fmt csv;
  int header;
  uint64_t *line_off; /* data offset of every 1024th record (csvdata.c) */
  uint64_t nline_off;
  int scanned;        /* gzip access points made, sizes checked */
  char params[128];   /* the format's keys, for the cache key */
  void *priv;         /* a format's own state (imgfolder.c), freed by its close */
};

/* A data format: what td_split_* asks of it.  Each returns 0 or a negative
 * code with the message in err. */
struct td__format {
  /* read the headers (a CSV file's first line) and check them against the
   * model: set dtype, the fields, and records when the headers say it */
  int (*open)(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
              size_t errlen);
  /* whether read needs scan first (records known) */
  int (*needs_scan)(const td_split *s, int random_access);
  /* read the files once, front to back, up to max_points gzip access points */
  int (*scan)(td_split *s, uint32_t max_points, char *err, size_t errlen);
  /* bytes a read may decode in vain at worst (from a gzip access point or
   * a noted line to its first sample), and bytes per sample */
  void (*read_cost)(const td_split *s, uint64_t *gap, uint64_t *per);
  /* samples [first, first + n), in range, n > 0; targets as s->target */
  int (*read)(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, void *targets,
              uint32_t classes, char *err, size_t errlen);
  /* the submit-time check of what labels are cheap to read */
  int (*check_labels)(td_split *s, uint32_t classes, char *err, size_t errlen);
  /* decode file k (0 samples, 1 labels) whole, front to back, when a gzip
   * file has no access points to start elsewhere; NULL: reads of ranges
   * always */
  int (*load_file)(td_split *s, int k, uint8_t *samples, void *targets, uint32_t classes,
                   char *err, size_t errlen);
  uint32_t load_align; /* a whole-split load's ranges start at multiples of it */
  int load_to_end;     /* load_file reads the file to its end, checking it (a gzip
                          CRC); not raw, whose size alone gives its records */
  /* Formats of many files (images) rather than sf and lf; NULL otherwise:
   * free priv; the split's name for messages; what the files are, for
   * td_split_cache_key (appended to its text) */
  uint32_t load_task_max; /* samples a whole-split load task decodes at most (0: no
                             limit): images, slow to decode, spread over the threads */
  void (*close)(td_split *s);
  const char *(*path)(const td_split *s);
  int (*cache_ident)(const td_split *s, char *buf, size_t cap);
};

extern const td__format td__format_idx, td__format_npy, td__format_csv, td__format_raw,
    td__format_images;

/* dataset.c */
void td__split_set_records(td_split *s, uint64_t records);
int td__label_fail(const char *path, uint64_t index, long long v, uint32_t classes, char *err,
                   size_t errlen);
/* The file's labels are class integers (is_float 0) or floats, and the
 * job's loss wants the other kind: TD_EDATA naming both. */
int td__target_kind_fail(const td_split *s, const char *path, int is_float, char *err,
                         size_t errlen);

/* records.c: fixed-size records */
int td__records_open_file(const char *path, td_dfile **f, td_dcur **c, char *err,
                          size_t errlen);
/* A plain file must be exactly as long as its header says. */
int td__records_check_plain_size(const td__field *fd, uint64_t records, const char *what,
                                 char *err, size_t errlen);
int td__records_needs_scan(const td_split *s, int random_access);
/* gzip files: access points, and each size against the header's */
int td__records_scan(td_split *s, uint32_t max_points, char *err, size_t errlen);
void td__records_read_cost(const td_split *s, uint64_t *gap, uint64_t *per);
int td__records_read(td_split *s, uint64_t first, uint64_t n, uint8_t *samples,
                     void *targets, uint32_t classes, char *err, size_t errlen);
int td__records_check_labels(td_split *s, uint32_t classes, char *err, size_t errlen);
int td__records_load_file(td_split *s, int k, uint8_t *samples, void *targets,
                          uint32_t classes, char *err, size_t errlen);

#endif
