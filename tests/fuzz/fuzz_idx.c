/* libFuzzer target for IDX datasets, plain and gzip-compressed: the
 * submit check, the probe and the loader's decode (datafuzz.h), and
 * td_idx_load on the samples' file. */
#include "datafuzz.h"
#include "idx.h"

static void no_keys(char *buf, size_t cap, unsigned choice, const uint8_t *cfg, uint32_t elems) {
  (void)choice;
  (void)cfg;
  (void)elems;
  snprintf(buf, cap, "%s", "");
}

static void idx_load(const char *images, const char *labels, uint64_t limit) {
  const char *paths[] = {images, labels};
  char err[512] = "";

  for (size_t i = 0; i < 2; i++) {
    td_idx x;
    int rc = td_idx_load(paths[i], limit, (uint64_t)1 << 20, &x, err, sizeof(err));
    if (rc < 0) {
      fd_check_refusal("td_idx_load", rc, err);
      continue;
    }
    if (x.bytes != x.count * x.item_bytes || x.count > x.dims[0] ||
        (limit > 0 && x.count > limit))
      fd_fail("td_idx_load's sizes", 0, "");
    if (x.bytes > 0 && (x.data[0] ^ x.data[x.bytes - 1]) == 0x100)
      abort(); /* never: a read of both ends, for ASan */
    td_idx_free(&x);
  }
}

static const fd_format idx_format = {.name = "idx", .has_labels = 1, .keys = no_keys,
                                     .extra = idx_load};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fd_run(&idx_format, data, size);
}
