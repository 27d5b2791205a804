/* image_probe: decode one image file as the images format does (gray or
 * RGB), resize it, and write the planar uint8 result, for pil_check.py to
 * compare with Pillow's.
 *
 *   image_probe FILE CHANNELS WIDTH HEIGHT OUT.raw
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>

#include "imgfolder.h"

int main(int argc, char **argv) {
  uint32_t ch, w, h;
  uint8_t *out;
  char err[512];
  FILE *f;

  if (argc != 6) {
    fprintf(stderr, "usage: image_probe FILE CHANNELS WIDTH HEIGHT OUT.raw\n");
    return 2;
  }
  ch = (uint32_t)strtoul(argv[2], NULL, 10);
  w = (uint32_t)strtoul(argv[3], NULL, 10);
  h = (uint32_t)strtoul(argv[4], NULL, 10);
  if ((ch != 1 && ch != 3) || w < 1 || h < 1 || w > 4096 || h > 4096 ||
      (out = malloc((size_t)ch * w * h)) == NULL) {
    fprintf(stderr, "image_probe: bad size\n");
    return 2;
  }
  if (td_image_load(AT_FDCWD, argv[1], argv[1], ch, w, h, out, err, sizeof(err)) < 0) {
    fprintf(stderr, "image_probe: %s\n", err);
    return 1;
  }
  if ((f = fopen(argv[5], "wb")) == NULL || fwrite(out, 1, (size_t)ch * w * h, f) != (size_t)ch * w * h ||
      fclose(f) != 0) {
    fprintf(stderr, "image_probe: cannot write %s\n", argv[5]);
    return 1;
  }
  free(out);
  return 0;
}
