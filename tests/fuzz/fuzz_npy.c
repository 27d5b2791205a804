/* libFuzzer target for NumPy .npy datasets, plain and gzip-compressed:
 * the submit check, the probe and the loader's decode (datafuzz.h).  Mode
 * bits 5-6: the loss (class integers; float targets for mse, soft
 * cross-entropy and binary cross-entropy). */
#include "datafuzz.h"

static void no_keys(char *buf, size_t cap, unsigned choice, const uint8_t *cfg, uint32_t elems) {
  (void)choice;
  (void)cfg;
  (void)elems;
  snprintf(buf, cap, "%s", "");
}

static const char *losses(unsigned choice) {
  static const char *const kinds[] = {"", ", loss: {kind: mse}", ", loss: {targets: soft}",
                                      ", loss: {kind: binary_cross_entropy}"};
  return kinds[choice & 3];
}

static const fd_format npy_format = {.name = "npy", .has_labels = 1, .keys = no_keys,
                                     .loss = losses};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fd_run(&npy_format, data, size);
}
