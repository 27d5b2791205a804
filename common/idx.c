#include "idx.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset_impl.h"
#include "datafile.h"
#include "error.h"
#include "util.h"

#define IDX_FIRST_ALLOC ((size_t)1 << 20)

static const struct {
  uint8_t code;
  const char *name;
} idx_dtypes[] = {
    {0x08, "uint8"}, {0x09, "int8"}, {0x0B, "int16"},
    {0x0C, "int32"}, {0x0D, "float32"}, {0x0E, "float64"},
};

static const char *dtype_name(uint8_t code) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(idx_dtypes); i++)
    if (idx_dtypes[i].code == code)
      return idx_dtypes[i].name;
  return "not an IDX type";
}

int td_idx_read_header(struct td_dcur *c, const char *path, uint64_t max_bytes,
                       td_idx_hdr *out, char *err, size_t errlen) {
  uint8_t hdr[4 + 4 * TD_IDX_MAX_RANK];
  char dims[128];
  td_idx_hdr x;
  uint64_t item = 1, all;
  size_t got, need;
  int rc;

  if (max_bytes == 0)
    max_bytes = TD_IDX_DEFAULT_MAX_BYTES;
  memset(&x, 0, sizeof(x));
  if ((rc = td_dcur_read(c, hdr, 4, &got)) < 0)
    return rc;
  if (got == 0)
    return td_data_errf(err, errlen, path, "empty file at offset 0: expected an IDX header "
                                           "(4 bytes), got 0 bytes");
  if (got < 4)
    return td_data_errf(err, errlen, path, "truncated header at offset %zu: expected 4 bytes, "
                                           "got %zu", got, got);
  if (hdr[0] != 0 || hdr[1] != 0)
    return td_data_errf(err, errlen, path, "bad magic at offset 0: expected 00 00, got %02x "
                                           "%02x (not an IDX file)", hdr[0], hdr[1]);
  if (hdr[2] != TD_IDX_UINT8)
    return td_data_errf(err, errlen, path, "unsupported data type at offset 2: expected 0x08 "
                                           "(uint8), got 0x%02x (%s)", hdr[2], dtype_name(hdr[2]));
  if (hdr[3] < 1 || hdr[3] > TD_IDX_MAX_RANK)
    return td_data_errf(err, errlen, path, "bad rank at offset 3: expected 1..%d, got %u",
                        TD_IDX_MAX_RANK, hdr[3]);
  x.dtype = hdr[2];
  x.rank = hdr[3];
  need = 4 * (size_t)x.rank;
  if ((rc = td_dcur_read(c, hdr + 4, need, &got)) < 0)
    return rc;
  if (got < need)
    return td_data_errf(err, errlen, path, "truncated header at offset %zu: expected %zu "
                                           "bytes, got %zu", 4 + got, 4 + need, 4 + got);
  for (int i = 0; i < x.rank; i++) {
    const uint8_t *p = hdr + 4 + 4 * i;
    x.dims[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (x.dims[i] == 0)
      return td_data_errf(err, errlen, path, "bad dimension %d at offset %d: expected >= 1, "
                                             "got 0", i, 4 + 4 * i);
  }
  td_dims_str(x.dims, x.rank, dims, sizeof(dims));
  for (int i = 1; i < x.rank; i++)
    if (td_mul_u64(item, x.dims[i], &item) < 0)
      return td_data_errf(err, errlen, path, "data size overflows at offset 4: expected at "
                          "most %llu bytes, got %s", (unsigned long long)max_bytes, dims);
  if (td_mul_u64(item, x.dims[0], &all) < 0)
    return td_data_errf(err, errlen, path, "data size overflows at offset 4: expected at most "
                        "%llu bytes, got %s", (unsigned long long)max_bytes, dims);
  if (all > max_bytes || all > SIZE_MAX)
    return td_data_errf(err, errlen, path, "data too large at offset 4: expected at most %llu "
                        "bytes, got %llu (%s)", (unsigned long long)max_bytes,
                        (unsigned long long)all, dims);
  x.item_bytes = item;
  x.data_bytes = all;
  x.data_off = 4 + need;
  *out = x;
  return 0;
}

static int idx_truncated(const char *path, uint64_t at, uint64_t file_bytes, char *err,
                         size_t errlen) {
  return td_data_errf(err, errlen, path, "truncated at offset %llu: expected %llu bytes, got "
                      "%llu", (unsigned long long)at, (unsigned long long)file_bytes,
                      (unsigned long long)at);
}

/* Read the n bytes kept into a buffer that grows as data arrives, so a
 * small file whose header claims gigabytes costs no more than it holds. */
static int idx_read_data(td_dcur *c, const char *path, size_t n, uint64_t file_bytes,
                         uint8_t **out, char *err, size_t errlen) {
  size_t cap = n < IDX_FIRST_ALLOC ? n : IDX_FIRST_ALLOC, have = 0, got;
  uint8_t *buf = malloc(cap > 0 ? cap : 1), *grown;
  int rc;

  if (buf == NULL)
    return TD_ENOMEM;
  for (;;) {
    if ((rc = td_dcur_read(c, buf + have, cap - have, &got)) < 0)
      goto free_buf;
    have += got;
    if (have < cap) {
      rc = idx_truncated(path, td_dcur_offset(c), file_bytes, err, errlen);
      goto free_buf;
    }
    if (have == n)
      break;
    cap = n - cap < cap ? n : 2 * cap;
    grown = realloc(buf, cap);
    if (grown == NULL) {
      rc = TD_ENOMEM;
      goto free_buf;
    }
    buf = grown;
  }
  *out = buf;
  return 0;

free_buf:
  free(buf);
  return rc;
}

/* Read (and drop) n bytes that must be there. */
static int idx_skip(td_dcur *c, const char *path, uint64_t n, uint64_t file_bytes, char *err,
                    size_t errlen) {
  uint64_t got;
  int rc;

  if ((rc = td_dcur_skip(c, n, &got)) < 0)
    return rc;
  return got < n ? idx_truncated(path, td_dcur_offset(c), file_bytes, err, errlen) : 0;
}

int td_idx_load(const char *path, uint64_t limit, uint64_t max_bytes, td_idx *out,
                char *err, size_t errlen) {
  td_dfile *f = NULL;
  td_dcur *c = NULL;
  td_idx_hdr h;
  td_idx x;
  uint64_t keep, file_bytes;
  int rc;

  if (errlen > 0)
    err[0] = '\0';
  memset(&x, 0, sizeof(x));
  if ((rc = td_dfile_open(path, &f, err, errlen)) < 0)
    return rc;
  if ((rc = td_dcur_open(f, 0, &c, err, errlen)) < 0 ||
      (rc = td_idx_read_header(c, path, max_bytes, &h, err, errlen)) < 0)
    goto close_file;
  x.dtype = h.dtype;
  x.rank = h.rank;
  memcpy(x.dims, h.dims, sizeof(x.dims));
  x.item_bytes = h.item_bytes;
  x.count = limit > 0 && limit < h.dims[0] ? limit : h.dims[0];
  keep = x.count * x.item_bytes; /* <= data_bytes: no overflow */
  x.bytes = (size_t)keep;
  file_bytes = h.data_off + h.data_bytes;
  if ((rc = idx_read_data(c, path, x.bytes, file_bytes, &x.data, err, errlen)) < 0)
    goto close_file;
  if ((rc = idx_skip(c, path, h.data_bytes - keep, file_bytes, err, errlen)) < 0 ||
      (rc = td_dcur_expect_end(c)) < 0) {
    free(x.data);
    goto close_file;
  }
  *out = x;

close_file:
  td_dcur_close(c);
  td_dfile_close(f);
  return rc;
}

void td_idx_free(td_idx *x) {
  if (x == NULL)
    return;
  free(x->data);
  memset(x, 0, sizeof(*x));
}

/* The IDX format of a job's data: images and labels in two files. */

static int open_idx(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                    size_t errlen) {
  char want[64], got[64];
  td_dcur *c = NULL;
  td_idx_hdr h, hl;
  int rc;

  if ((rc = td__records_open_file(ds->images, &s->sf, &c, err, errlen)) < 0 ||
      (rc = td_idx_read_header(c, ds->images, 0, &h, err, errlen)) < 0)
    goto close_cur;
  td_dcur_close(c);
  c = NULL;
  if (h.item_bytes != s->elems) {
    td_dims_str(spec->input_dims, spec->input_rank, want, sizeof(want));
    td_dims_str(h.dims + 1, h.rank - 1, got, sizeof(got));
    rc = td_data_errf(err, errlen, ds->images, "each image has %llu bytes at offset 8, but "
                      "the model's input has %u elements: expected %s, got %s",
                      (unsigned long long)h.item_bytes, s->elems, want,
                      h.rank > 1 ? got : "scalars");
    goto close_cur;
  }
  if ((rc = td__records_open_file(ds->labels, &s->lf, &c, err, errlen)) < 0 ||
      (rc = td_idx_read_header(c, ds->labels, 0, &hl, err, errlen)) < 0)
    goto close_cur;
  if (hl.item_bytes != 1) {
    td_dims_str(hl.dims, hl.rank, got, sizeof(got));
    rc = td_data_errf(err, errlen, ds->labels, "label shape at offset 4: expected one label "
                      "byte per sample (rank 1), got %s", got);
    goto close_cur;
  }
  if (hl.dims[0] != h.dims[0]) {
    rc = td_data_errf(err, errlen, ds->labels, "%u labels at offset 4, but %u images: "
                      "expected one label per image of %s", hl.dims[0], h.dims[0], ds->images);
    goto close_cur;
  }
  s->dtype = TD_DTYPE_U8;
  if (s->target.dtype != TD_DTYPE_I32) {
    rc = td__target_kind_fail(s, ds->labels, 0, err, errlen);
    goto close_cur;
  }
  s->label_dtype = TD_DTYPE_U8;
  s->samp = (td__field){s->sf, h.data_off, h.item_bytes, 0, h.item_bytes};
  s->lab = (td__field){s->lf, hl.data_off, 1, 0, 1};
  td__split_set_records(s, h.dims[0]);
  if ((rc = td__records_check_plain_size(&s->samp, s->records, "images", err, errlen)) < 0)
    goto close_cur;
  rc = td__records_check_plain_size(&s->lab, s->records, "labels", err, errlen);

close_cur:
  td_dcur_close(c);
  return rc;
}

const td__format td__format_idx = {
    .open = open_idx,
    .needs_scan = td__records_needs_scan,
    .scan = td__records_scan,
    .read_cost = td__records_read_cost,
    .read = td__records_read,
    .check_labels = td__records_check_labels,
    .load_file = td__records_load_file,
    .load_align = 1,
    .load_to_end = 1,
};
