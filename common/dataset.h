/* Datasets: one front over every format the loader reads (IDX, NumPy
 * .npy, CSV and raw fixed-size records, each plain or gzip-compressed;
 * folders of JPEG and PNG images, imgfolder.h).
 *
 * A job's data is two splits, train and test.  A split decodes to `count`
 * samples of sample_bytes bytes each (the elements in their stored type:
 * uint8 pixels stay uint8) and one target per sample, as the job's loss
 * takes it (td_jobspec_target): a class id as int32 (whatever the file
 * stores: uint8, int32 or int64), or one float32 per model output (float32
 * or float64 labels, CSV target columns, raw float32 labels).
 *
 * Opening a split reads only the files' headers (and a CSV file's first
 * line), so td_dataset_check can run at submit on traind's loop.  Every
 * message names the file, the offset and what was expected:
 * "<path>: <what> at offset N: expected X, got Y".
 *
 * Each format is one ops table (dataset_impl.h) in its parser's file:
 * idx.c, npy.c, csvdata.c, rawdata.c, imgfolder.c; dataset.c dispatches
 * through it.
 */
#ifndef TD_DATASET_H
#define TD_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "jobspec.h"
/* what the loader uses beside the splits: the sample order, the threads */
#include "order.h"
#include "parallel.h"

#define TD_DATASET_MAX_CLASSES (1u << 24) /* class ids travel as int32 */
#define TD_DATASET_MAX_SAMPLES UINT32_MAX

/* Check the job's train and test files against its model: the sample
 * shape, the label count, the labels' range where it is cheap (label files
 * up to 1 MiB, the first 64 KiB of a CSV file, raw labels in the first
 * MiB), and the validation split's size.  Reads only headers otherwise:
 * about a millisecond for Fashion-MNIST.  TD_EDATA (a missing file too)
 * with the message in err; TD_ENOMEM. */
int td_dataset_check(const td_jobspec *spec, char *err, size_t errlen);

/* What one sample of this job's data is as it travels in the ring: the
 * slots need td_batch_bytes(batch, sample_bytes) bytes. */
typedef struct td_dataset_info {
  td_dtype dtype;        /* of the sample's elements */
  uint32_t sample_bytes; /* model input elements * td_dtype_size(dtype) */
} td_dataset_info;

/* The info from the train split's header (the test split must match it,
 * which td_dataset_check checks).  Codes as td_dataset_check. */
int td_dataset_probe(const td_jobspec *spec, td_dataset_info *out, char *err, size_t errlen);

/* Samples of a train set of count samples held out for validation:
 * data.validation's count, or its fraction rounded (at least 1). */
uint64_t td_dataset_validation_count(const td_jobspec *spec, uint64_t count);

typedef enum { TD_SPLIT_TRAIN = 0, TD_SPLIT_TEST = 1 } td_split_which;
typedef struct td_split td_split;

/* Open spec's train or test files and check their headers against the
 * model.  The split keeps what it needs of spec. */
int td_split_open(const td_jobspec *spec, td_split_which which, td_split **out, char *err,
                  size_t errlen);
void td_split_close(td_split *s); /* accepts NULL */

const char *td_split_name(const td_split *s); /* "train" or "test" */
const char *td_split_path(const td_split *s); /* the samples' file */
td_dtype td_split_dtype(const td_split *s);
/* What a sample's target is as it is read: the job's (td_jobspec_target). */
td_target td_split_target(const td_split *s);
uint32_t td_split_sample_bytes(const td_split *s);
/* Samples used (the limit applied); UINT64_MAX until td_split_scan for the
 * formats whose headers do not say (CSV, gzip-compressed raw). */
uint64_t td_split_count(const td_split *s);
/* 1 when td_split_read needs td_split_scan first: CSV always (for its line
 * offsets), gzip when it will be read from anywhere but its start. */
int td_split_needs_scan(const td_split *s, int random_access);

/* Read the files once, front to back: count CSV lines and note where every
 * 1024th starts, learn a compressed file's size, check gzip CRCs, and keep
 * gzip access points (index_bytes at most, about 32 KiB each) so reads can
 * start anywhere. */
int td_split_scan(td_split *s, uint64_t index_bytes, char *err, size_t errlen);

/* The fewest samples a read should ask for, after a scan, so that what it
 * decodes in vain (from a gzip access point to its first sample; from a
 * noted CSV line to its first line) is at most a quarter of the rest: 1
 * for plain fixed-size records. */
uint64_t td_split_min_read(const td_split *s);

/* Decode samples [first, first + n): n * sample_bytes bytes into samples
 * and n targets (td_target_bytes each) into targets (either may be NULL),
 * each class id checked to be < classes and each float finite.  Several
 * threads may read one split at once.  TD_EDATA naming the file, offset
 * (CSV: line) and sample. */
int td_split_read(td_split *s, uint64_t first, uint64_t n, uint8_t *samples, void *targets,
                  uint32_t classes, char *err, size_t errlen);

/* Decode all count samples with up to nthreads threads, and check the
 * rest of the files (a gzip stream to its end). */
int td_split_load(td_split *s, uint8_t *samples, void *targets, uint32_t classes,
                  int nthreads, char *err, size_t errlen);

/* What the decoded data depends on: the files (device, inode, size,
 * modification time), the format and its keys, the limit.  Equal keys,
 * equal data.  TD_ETOOBIG when cap is too small. */
int td_split_cache_key(const td_split *s, char *buf, size_t cap);

/* Token ids for a model whose first layer is an embedding of vocab ids:
 * the first of n samples of elems values (sample numbers first..) holding
 * one that is not a whole number below vocab: TD_EDATA "<path>: sample at
 * index I, position P: token id V is not an id of the embedding's
 * vocabulary (0 to vocab - 1)".  dtype as decoded (uint8, int32, float16,
 * float32). */
/* The scan under it, for a caller with its own message: the index of the
 * first of count values that is not a whole number below vocab (its value
 * in *id), or count when every one is (or dtype is none of those). */
uint64_t td_ids_find(const void *values, td_dtype dtype, uint64_t count, uint32_t vocab,
                     double *id);
int td_ids_check(const uint8_t *samples, td_dtype dtype, uint64_t n, uint32_t elems,
                 uint64_t first, uint32_t vocab, const char *path, char *err, size_t errlen);

/* The first of n class ids (sample numbers first..) that is >= classes:
 * TD_EDATA "<path>: label at index I is V, but the model has C classes". */
int td_labels_check(const int32_t *labels, uint64_t n, uint64_t first, uint32_t classes,
                    const char *path, char *err, size_t errlen);

#endif
