/* libFuzzer target for CSV datasets, plain and gzip-compressed: the
 * submit check, the probe and the loader's decode (datafuzz.h).  Mode
 * bit 5: a header line; bit 6: uint8 values (else float32); bit 7: the
 * column is a float target of loss mse (target_columns) rather than a
 * class label.  Its configuration: the column (2 bytes, little-endian). */
#include "datafuzz.h"

static void csv_keys(char *buf, size_t cap, unsigned choice, const uint8_t *cfg,
                     uint32_t elems) {
  (void)elems;
  snprintf(buf, cap, "  csv: {%s: %s%u%s, header: %s, dtype: %s}\n",
           choice & 4 ? "target_columns" : "label_column", choice & 4 ? "[" : "",
           (unsigned)cfg[0] | (unsigned)cfg[1] << 8, choice & 4 ? "]" : "",
           choice & 1 ? "true" : "false", choice & 2 ? "uint8" : "float32");
}

static const char *csv_loss(unsigned choice) { return choice & 4 ? ", loss: {kind: mse}" : ""; }

static const fd_format csv_format = {.name = "csv", .ncfg = 2, .keys = csv_keys,
                                     .loss = csv_loss};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fd_run(&csv_format, data, size);
}
