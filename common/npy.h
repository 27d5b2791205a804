/* NumPy .npy files (format versions 1, 2 and 3): the magic "\x93NUMPY", a
 * version, a header that is a Python dict literal naming 'descr',
 * 'fortran_order' and 'shape', then the array.
 *
 * Only what a dataset needs is accepted: C order, little-endian (or
 * one-byte) uint8, int32, int64, float16, float32 and float64, rank 1..8.
 * Samples of int64 and float64 (numpy's defaults) are read as int32 and
 * float32; labels of any integer type become int32 class ids, float32 and
 * float64 labels float32 targets.
 */
#ifndef TD_NPY_H
#define TD_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "jobspec.h"

#define TD_NPY_MAX_RANK 8
#define TD_NPY_MAX_HEADER 65536u

struct td_dcur;

typedef struct td_npy_hdr {
  td_dtype dtype;
  int rank;
  uint64_t shape[TD_NPY_MAX_RANK];
  uint64_t item_elems; /* product of shape[1..] */
  uint64_t data_off;   /* bytes before the array */
  uint64_t data_bytes; /* the array's bytes */
} td_npy_hdr;

/* Read and check the header from a cursor at the start of the data.
 * TD_EDATA with "<path>: <what> at offset N: expected X, got Y" in err;
 * *out only on success. */
int td_npy_read_header(struct td_dcur *c, const char *path, td_npy_hdr *out, char *err,
                       size_t errlen);

/* "(60000, 28, 28)" */
void td_npy_shape_str(const td_npy_hdr *h, char *buf, size_t cap);

#endif
