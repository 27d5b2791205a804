/* safetensors files: an 8-byte little-endian header length, a JSON header
 * naming each tensor's dtype, shape and byte range (plus optional
 * "__metadata__" strings), padded with spaces to a multiple of 8, then the
 * raw little-endian data.  PyTorch (safetensors.torch.load_file), JAX and
 * others read them directly.
 */
#ifndef TD_SAFETENSORS_H
#define TD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define TD_ST_MAX_RANK 8
#define TD_ST_MAX_HEADER ((uint64_t)100 << 20) /* bytes of JSON a reader accepts */

typedef struct td_st_tensor {
  const char *name;
  const char *dtype;   /* "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", ... */
  uint32_t rank;
  uint64_t shape[TD_ST_MAX_RANK];
  const void *data;    /* little-endian values; the reader's point into the file */
  uint64_t bytes;      /* product(shape) * dtype size */
} td_st_tensor;

typedef struct td_st_meta {
  const char *key, *value;
} td_st_meta;

/* Write tensors (in this order) and metadata atomically: path.tmp, fsync,
 * rename.  TD_EINVAL for an unknown dtype, a byte count that does not match
 * the shape, an empty or repeated name; TD_EIO, TD_ENOSPC, TD_ENOMEM. */
int td_safetensors_write(const char *path, const td_st_tensor *tensors, size_t n,
                         const td_st_meta *meta, size_t nmeta);

typedef struct td_st_file td_st_file;

/* Parse a whole file held in memory (copied); every offset and size is
 * checked against it.  TD_EDATA with a reason in err for a malformed file,
 * TD_ENOMEM. */
int td_safetensors_parse(const void *buf, size_t len, td_st_file **out, char *err,
                         size_t errlen);
/* Read and parse a file of at most max_bytes.  Also TD_ENOENT, TD_EIO, TD_ETOOBIG. */
int td_safetensors_load(const char *path, size_t max_bytes, td_st_file **out, char *err,
                        size_t errlen);
/* Read and parse only the header of a regular file (a FIFO or a device is
 * TD_EIO, never waited on), each tensor's range checked against the file's
 * size; the tensors' data is NULL.  TD_ENOENT, TD_EIO, TD_EDATA, TD_ENOMEM,
 * with a reason in err (not naming the path). */
int td_safetensors_load_header(const char *path, td_st_file **out, char *err, size_t errlen);
void td_safetensors_free(td_st_file *f);

size_t td_safetensors_count(const td_st_file *f);
/* The i-th tensor in header order (0 <= i < count); data is NULL in a
 * file read with td_safetensors_load_header. */
void td_safetensors_get(const td_st_file *f, size_t i, td_st_tensor *out);
/* The tensor called name; TD_ENOENT if there is none.  out points into f. */
int td_safetensors_find(const td_st_file *f, const char *name, td_st_tensor *out);
/* A "__metadata__" value, or NULL. */
const char *td_safetensors_meta(const td_st_file *f, const char *key);

#endif
