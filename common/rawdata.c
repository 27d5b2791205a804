/* The raw format of a job's data: one file of fixed-size records, each
 * holding a label and a sample at the offsets data.raw gives.
 */
#include <stdio.h>

#include "dataset_impl.h"
#include "error.h"

/* raw: record count from the size; a partial record is an error. */
static int raw_records(td_split *s, uint64_t size, char *err, size_t errlen) {
  uint64_t hdr = s->samp.off, rec = s->samp.rec, n;

  if (size < hdr)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "truncated at offset %llu: expected "
                        "at least the %llu header bytes (data.raw.header_bytes), got %llu",
                        (unsigned long long)size, (unsigned long long)hdr,
                        (unsigned long long)size);
  n = (size - hdr) / rec;
  if ((size - hdr) % rec != 0)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "truncated record at offset %llu: "
                        "expected whole %llu-byte records (data.raw.record_bytes) after %llu "
                        "header bytes, got %llu records and %llu bytes more",
                        (unsigned long long)(hdr + n * rec), (unsigned long long)rec,
                        (unsigned long long)hdr, (unsigned long long)n,
                        (unsigned long long)((size - hdr) % rec));
  if (n > TD_DATASET_MAX_SAMPLES)
    return td_data_errf(err, errlen, td_dfile_path(s->sf), "too many records at offset %llu: "
                        "expected at most %u, got %llu", (unsigned long long)hdr,
                        TD_DATASET_MAX_SAMPLES, (unsigned long long)n);
  td__split_set_records(s, n);
  return 0;
}

static int open_raw(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                    size_t errlen) {
  const td_data_raw *r = &spec->raw;
  int rc;

  if ((rc = td_dfile_open(ds->images, &s->sf, err, errlen)) < 0)
    return rc;
  if ((r->label_dtype == TD_DTYPE_F32) != (s->target.dtype == TD_DTYPE_F32)) {
    td_dfile_close(s->sf);
    s->sf = NULL;
    return td__target_kind_fail(s, ds->images, r->label_dtype == TD_DTYPE_F32, err, errlen);
  }
  s->dtype = r->dtype;
  s->label_dtype = r->label_dtype;
  s->samp = (td__field){s->sf, r->header_bytes, r->record_bytes, r->sample_offset,
                           (uint64_t)s->elems * td_dtype_size(r->dtype)};
  s->lab = (td__field){s->sf, r->header_bytes, r->record_bytes, r->label_offset,
                          r->label_dtype == TD_DTYPE_F32 ? td_target_bytes(s->target)
                                                         : td_dtype_size(r->label_dtype)};
  snprintf(s->params, sizeof(s->params), "raw=%d,%d,%u,%u,%u,%llu", (int)r->dtype,
           (int)r->label_dtype, r->label_offset, r->sample_offset, r->record_bytes,
           (unsigned long long)r->header_bytes);
  if (td_dfile_is_gzip(s->sf))
    return 0; /* the count comes with td_split_scan */
  return raw_records(s, (uint64_t)td_dfile_stat(s->sf)->st_size, err, errlen);
}

/* A gzip file's record count comes with its scan. */
static int raw_scan(td_split *s, uint32_t max_points, char *err, size_t errlen) {
  int rc;

  if (!td_dfile_is_gzip(s->sf))
    return 0;
  if ((rc = td_dfile_scan(s->sf, max_points > 0 ? TD__SCAN_SPACING : 0, max_points, NULL, NULL,
                          err, errlen)) < 0)
    return rc;
  return raw_records(s, td_dfile_size(s->sf), err, errlen);
}

const td__format td__format_raw = {
    .open = open_raw,
    .needs_scan = td__records_needs_scan,
    .scan = raw_scan,
    .read_cost = td__records_read_cost,
    .read = td__records_read,
    .check_labels = td__records_check_labels,
    .load_file = td__records_load_file,
    .load_align = 1,
    .load_to_end = 0,
};
