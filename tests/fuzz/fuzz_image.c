/* libFuzzer target for the images format's decoders (imgfolder.h): bytes
 * as a JPEG or PNG file, decoded to gray and to RGB (a large JPEG at a
 * reduced scale when the first byte asks), then resized. */
#include <stdint.h>
#include <stdlib.h>

#include "imgfolder.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint32_t hint = size > 0 ? data[size - 1] % 64 : 0;
  char err[512];

  for (uint32_t ch = 1; ch <= 3; ch += 2) {
    uint8_t *pix = NULL, out[3 * 17 * 9];
    uint32_t w, h;

    if (td_image_decode(data, size, ch, hint, hint, "fuzz", &pix, &w, &h, err,
                        sizeof(err)) < 0)
      continue;
    /* shrinking and enlarging both */
    td_image_resize(pix, w, h, ch, out, 17, 9);
    if ((uint64_t)w * h <= 4096)
      td_image_resize(pix, w, h, ch, out, 3, 2);
    free(pix);
  }
  return 0;
}
