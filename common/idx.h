/* IDX files (the MNIST family's format), plain or gzip-compressed.
 *
 * Header: 0x00 0x00 dtype rank, then rank big-endian uint32 dims, then the
 * items, dims[0] of them, row-major.  Everything is checked before use; the
 * data must be exactly as long as the header says.
 */
#ifndef TD_IDX_H
#define TD_IDX_H

#include <stddef.h>
#include <stdint.h>

#define TD_IDX_UINT8 0x08
#define TD_IDX_MAX_RANK 4
#define TD_IDX_DEFAULT_MAX_BYTES ((uint64_t)4 << 30)

typedef struct td_idx {
  uint8_t dtype;
  int rank;
  uint32_t dims[TD_IDX_MAX_RANK]; /* dims[0] is the file's item count */
  uint64_t count;                 /* items kept: dims[0], or the limit */
  uint64_t item_bytes;            /* product of dims[1..] * element size */
  uint8_t *data;                  /* count * item_bytes bytes, malloc'd */
  size_t bytes;
} td_idx;

struct td_dcur;

/* An IDX header, checked: dtype 0x08, rank 1..4, each dim >= 1, the data
 * size overflow-checked and at most the caller's bound. */
typedef struct td_idx_hdr {
  uint8_t dtype;
  int rank;
  uint32_t dims[TD_IDX_MAX_RANK];
  uint64_t item_bytes; /* product of dims[1..] (one byte per element) */
  uint64_t data_bytes; /* dims[0] * item_bytes */
  uint64_t data_off;   /* 4 + 4 * rank */
} td_idx_hdr;

/* Read the header from a cursor at the start of the data (datafile.h).
 * max_bytes 0 = TD_IDX_DEFAULT_MAX_BYTES.  TD_EDATA with "<path>: ..." in
 * err; *out only on success. */
int td_idx_read_header(struct td_dcur *c, const char *path, uint64_t max_bytes,
                       td_idx_hdr *out, char *err, size_t errlen);

/* Read an IDX file (gzip if it starts with 1f 8b, else plain), fully
 * validated: magic, dtype 0x08 (uint8), rank 1..4, each dim >= 1, the data
 * size overflow-checked and at most max_bytes (0 = TD_IDX_DEFAULT_MAX_BYTES),
 * and exactly as long as the header says.  limit > 0 keeps only the first
 * `limit` items (the rest is still read, to check the file).
 * TD_ENOENT (missing file), TD_EDATA (bad or unreadable file: the message
 * reads "<path>: <what> at offset N: expected X, got Y"), TD_ENOMEM.
 * *out is written only on success. */
int td_idx_load(const char *path, uint64_t limit, uint64_t max_bytes, td_idx *out,
                char *err, size_t errlen);

/* Free the data and zero the struct; accepts NULL or a zeroed struct. */
void td_idx_free(td_idx *x);

#endif
