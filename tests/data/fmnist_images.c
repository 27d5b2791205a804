/* fmnist_images: write the first COUNT images of Fashion-MNIST as an image
 * folder (one folder per class, PNG files, every JPEG_EVERY-th a JPEG),
 * for the tests and examples/fashion-mnist-images.yaml:
 *
 *   fmnist_images [--rgb] IMAGES.gz LABELS.gz OUTDIR COUNT [JPEG_EVERY]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgwrite.h"

int main(int argc, char **argv) {
  int rgb = argc > 1 && strcmp(argv[1], "--rgb") == 0;
  char **a = argv + rgb;
  int n = argc - rgb;

  if (n < 5 || n > 6) {
    fprintf(stderr, "usage: fmnist_images [--rgb] IMAGES.gz LABELS.gz OUTDIR COUNT "
                    "[JPEG_EVERY]\n");
    return 2;
  }
  return imgw_fmnist(a[1], a[2], a[3], (uint32_t)strtoul(a[4], NULL, 10),
                     n == 6 ? (uint32_t)strtoul(a[5], NULL, 10) : 0, rgb) == 0 ? 0 : 1;
}
