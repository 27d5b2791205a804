/* libFuzzer target for raw fixed-size records, plain and gzip-compressed:
 * the submit check, the probe and the loader's decode (datafuzz.h).  Mode
 * bits 5-6: the samples' dtype (uint8, int32, float16, float32); bit 7:
 * int32 labels (else uint8).  Its configuration, each little-endian: the
 * label's offset (2 bytes), the sample's (2 bytes; 0xffff: the default),
 * the record's size (2 bytes; 0: the default), the header's size (1). */
#include "datafuzz.h"

static void raw_keys(char *buf, size_t cap, unsigned choice, const uint8_t *cfg,
                     uint32_t elems) {
  static const char *const dtypes[] = {"uint8", "int32", "float16", "float32"};
  unsigned label_off = cfg[0] | (unsigned)cfg[1] << 8, sample_off = cfg[2] | (unsigned)cfg[3] << 8;
  unsigned rec = cfg[4] | (unsigned)cfg[5] << 8, header = cfg[6];
  char opt[96] = "";
  size_t n = 0;

  if (sample_off != 0xffff)
    n += (size_t)snprintf(opt + n, sizeof(opt) - n, ", sample_offset: %u", sample_off);
  if (rec != 0)
    snprintf(opt + n, sizeof(opt) - n, ", record_bytes: %u", rec);
  snprintf(buf, cap, "  raw: {record_shape: [%u], dtype: %s, label_dtype: %s, label_offset: %u, "
           "header_bytes: %u%s}\n", elems, dtypes[choice & 3], choice & 4 ? "int32" : "uint8",
           label_off, header, opt);
}

static const fd_format raw_format = {.name = "raw", .ncfg = 7, .keys = raw_keys};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fd_run(&raw_format, data, size);
}
