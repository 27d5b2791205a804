#include "imgwrite.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

const char *const imgw_fmnist_classes[10] = {
    "0_tshirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
    "5_sandal",     "6_shirt",   "7_sneaker",  "8_bag",   "9_ankle_boot"};

int imgw_png(const char *path, const void *px, uint32_t w, uint32_t h, uint32_t channels,
             int sixteen) {
  static const png_uint_32 formats[] = {0, PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB,
                                        PNG_FORMAT_RGBA};
  png_image im;

  if (channels < 1 || channels > 4)
    return -1;
  memset(&im, 0, sizeof(im));
  im.version = PNG_IMAGE_VERSION;
  im.width = w;
  im.height = h;
  im.format = formats[channels] | (sixteen ? PNG_FORMAT_FLAG_LINEAR : 0);
  if (!png_image_write_to_file(&im, path, 0, px, 0, NULL)) {
    fprintf(stderr, "%s: %s\n", path, im.message);
    return -1;
  }
  return 0;
}

int imgw_png_palette(const char *path, const uint8_t *px, uint32_t w, uint32_t h,
                     const uint8_t *palette, uint32_t n) {
  png_image im;

  memset(&im, 0, sizeof(im));
  im.version = PNG_IMAGE_VERSION;
  im.width = w;
  im.height = h;
  im.format = PNG_FORMAT_RGB_COLORMAP;
  im.colormap_entries = n;
  if (!png_image_write_to_file(&im, path, 0, px, 0, palette)) {
    fprintf(stderr, "%s: %s\n", path, im.message);
    return -1;
  }
  return 0;
}

int imgw_jpeg(const char *path, const uint8_t *px, uint32_t w, uint32_t h, uint32_t channels,
              int quality) {
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr jerr;
  FILE *f = fopen(path, "wb");

  if (f == NULL) {
    fprintf(stderr, "%s: %s\n", path, strerror(errno));
    return -1;
  }
  /* libjpeg's default error handler exits: fine for a test's writer */
  c.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&c);
  jpeg_stdio_dest(&c, f);
  c.image_width = w;
  c.image_height = h;
  c.input_components = (int)channels;
  c.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, quality, TRUE);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * channels);
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  return fclose(f) == 0 ? 0 : -1;
}

static int read_exact(gzFile g, void *buf, size_t n, const char *path) {
  if (gzread(g, buf, (unsigned)n) != (int)n) {
    fprintf(stderr, "%s: truncated\n", path);
    return -1;
  }
  return 0;
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* mkdir -p */
static int make_dirs(const char *dir) {
  char p[4096];
  size_t n = strlen(dir);

  if (n == 0 || n >= sizeof(p))
    return -1;
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0')
      continue;
    p[i] = '\0';
    if (mkdir(p, 0755) < 0 && errno != EEXIST) {
      fprintf(stderr, "cannot make %s: %s\n", p, strerror(errno));
      return -1;
    }
    p[i] = i < n ? '/' : '\0';
  }
  return 0;
}

int imgw_fmnist(const char *images, const char *labels, const char *dir, uint32_t n,
                uint32_t jpeg_every, int rgb) {
  gzFile gi = gzopen(images, "rb"), gl = gzopen(labels, "rb");
  uint8_t hi[16], hl[8], px[28 * 28], rgbpx[28 * 28 * 3], y;
  char path[4096];
  int rc = -1;

  if (gi == NULL || gl == NULL) {
    fprintf(stderr, "cannot open %s or %s\n", images, labels);
    goto done;
  }
  if (read_exact(gi, hi, 16, images) < 0 || read_exact(gl, hl, 8, labels) < 0)
    goto done;
  if (be32(hi) != 0x803 || be32(hi + 8) != 28 || be32(hi + 12) != 28 || be32(hl) != 0x801 ||
      be32(hi + 4) < n || be32(hl + 4) < n) {
    fprintf(stderr, "%s, %s: not Fashion-MNIST IDX files of at least %u images\n", images,
            labels, n);
    goto done;
  }
  for (int c = 0; c < 10; c++) {
    snprintf(path, sizeof(path), "%s/%s", dir, imgw_fmnist_classes[c]);
    if (make_dirs(path) < 0)
      goto done;
  }
  for (uint32_t i = 0; i < n; i++) {
    int jpeg = jpeg_every > 0 && i % jpeg_every == jpeg_every - 1;
    if (read_exact(gi, px, sizeof(px), images) < 0 || read_exact(gl, &y, 1, labels) < 0)
      goto done;
    if (y > 9) {
      fprintf(stderr, "%s: label %u at index %u\n", labels, y, i);
      goto done;
    }
    for (int k = 0; k < 28 * 28; k++)
      rgbpx[3 * k] = rgbpx[3 * k + 1] = rgbpx[3 * k + 2] = px[k];
    snprintf(path, sizeof(path), "%s/%s/%05u.%s", dir, imgw_fmnist_classes[y], i,
             jpeg ? "jpg" : "png");
    if ((jpeg ? imgw_jpeg(path, rgb ? rgbpx : px, 28, 28, rgb ? 3 : 1, 95)
              : imgw_png(path, rgb ? rgbpx : px, 28, 28, rgb ? 3 : 1, 0)) < 0)
      goto done;
  }
  rc = 0;
done:
  if (gi != NULL)
    gzclose(gi);
  if (gl != NULL)
    gzclose(gl);
  return rc;
}
