/* Writing the image folders the tests read: PNG (libpng) and JPEG
 * (libjpeg-turbo) files, and a Fashion-MNIST subset as a folder of class
 * folders (fmnist_images.c is the command around it).  For tests and
 * examples, not traind: errors are -1 with a line on stderr. */
#ifndef TD_TEST_IMGWRITE_H
#define TD_TEST_IMGWRITE_H

#include <stddef.h>
#include <stdint.h>

/* A PNG of w x h pixels, interleaved, of channels 1 (gray), 2 (gray +
 * alpha), 3 (RGB) or 4 (RGBA); sixteen: 16-bit samples (px holds
 * uint16_t, host order).  */
int imgw_png(const char *path, const void *px, uint32_t w, uint32_t h, uint32_t channels,
             int sixteen);
/* A palette PNG: px holds indexes into the palette of n RGB entries. */
int imgw_png_palette(const char *path, const uint8_t *px, uint32_t w, uint32_t h,
                     const uint8_t *palette, uint32_t n);
/* A baseline JPEG of channels 1 or 3, quality 1..100. */
int imgw_jpeg(const char *path, const uint8_t *px, uint32_t w, uint32_t h, uint32_t channels,
              int quality);

/* The Fashion-MNIST class folders' names, 0..9: digits first, so that
 * name order is label order. */
extern const char *const imgw_fmnist_classes[10];

/* The first n images of a Fashion-MNIST IDX pair (gzip or plain) as
 * dir/<class>/<index>.png, every jpeg_every-th (0: none) as .jpg
 * instead; rgb: the gray value in three channels.  dir is made, with its
 * parents. */
int imgw_fmnist(const char *images, const char *labels, const char *dir, uint32_t n,
                uint32_t jpeg_every, int rgb);

#endif
