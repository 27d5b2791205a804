/* The images format (imgfolder.h): listing an image folder, decoding JPEG
 * and PNG files, resizing them, and the format's ops table.
 */
#include "imgfolder.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

#include "dataset_impl.h"
#include "dropout_mask.h"
#include "error.h"
#include "util.h"

#define NAMES_MAX ((uint64_t)1 << 30) /* bytes of file names a split may list */

/* ---- decoding ---- */

struct jpeg_fail {
  struct jpeg_error_mgr pub;
  jmp_buf jb;
  char msg[JMSG_LENGTH_MAX];
};

static void jpeg_fail_exit(j_common_ptr cinfo) {
  struct jpeg_fail *f = (struct jpeg_fail *)cinfo->err;

  f->pub.format_message(cinfo, f->msg);
  longjmp(f->jb, 1);
}

/* A warning is a damaged file ("Premature end of JPEG file", "Corrupt JPEG
 * data: bad Huffman code"), except stray bytes between markers, which many
 * cameras write and every decoder skips. */
static void jpeg_fail_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code != JWRN_EXTRANEOUS_DATA)
    jpeg_fail_exit(cinfo);
}

/* PIL's convert("L"): ITU-R 601-2 luma, in 16-bit fixed point. */
static uint8_t luma(const uint8_t *p) {
  return (uint8_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
}

/* n RGB pixels to n gray ones, in place. */
static void to_gray(uint8_t *px, size_t n) {
  for (size_t i = 0; i < n; i++)
    px[i] = luma(px + 3 * i);
}

static int decode_jpeg(const uint8_t *buf, size_t n, uint32_t channels, uint32_t hint_w,
                       uint32_t hint_h, const char *path, uint8_t **pix, uint32_t *w,
                       uint32_t *h, char *err, size_t errlen) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_fail fail;
  uint8_t *volatile out = NULL;
  uint32_t have;
  int color, rc = TD_EDATA;

  cinfo.err = jpeg_std_error(&fail.pub);
  fail.pub.error_exit = jpeg_fail_exit;
  fail.pub.emit_message = jpeg_fail_message;
  if (setjmp(fail.jb)) {
    rc = td_data_errf(err, errlen, path, "corrupt JPEG: %s", fail.msg);
    goto destroy;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, buf, (unsigned long)n);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    rc = td_data_errf(err, errlen, path, "a CMYK JPEG: expected grayscale or color (YCbCr); "
                      "convert it to RGB");
    goto destroy;
  }
  /* Gray from color as from a color PNG (PIL's luma of the RGB values), not
   * libjpeg's Y channel, which differs by the chroma's rounding. */
  color = cinfo.jpeg_color_space != JCS_GRAYSCALE;
  cinfo.out_color_space = channels == 1 && !color ? JCS_GRAYSCALE : JCS_RGB;
  /* The DCT scales by 1/2, 1/4, 1/8 almost for free: a photo much larger
   * than the model's input need not be decoded whole to be shrunk.  Only
   * while twice the input's size remains, so the resize still filters. */
  for (unsigned d = 8; d >= 2 && hint_w > 0 && hint_h > 0; d /= 2) {
    if (cinfo.image_width / d >= 2 * hint_w && cinfo.image_height / d >= 2 * hint_h) {
      cinfo.scale_num = 1;
      cinfo.scale_denom = d;
      break;
    }
  }
  /* the limit is on what is decoded: a large photo shrunk by the DCT passes */
  jpeg_calc_output_dimensions(&cinfo);
  if ((uint64_t)cinfo.output_width * cinfo.output_height > TD_IMAGE_MAX_PIXELS) {
    rc = td_data_errf(err, errlen, path, "a JPEG of %u x %u pixels: expected at most %llu "
                      "pixels (at most %llu when decoded at 1/8 for a small input)",
                      cinfo.image_width, cinfo.image_height,
                      (unsigned long long)TD_IMAGE_MAX_PIXELS,
                      (unsigned long long)TD_IMAGE_MAX_PIXELS * 64);
    goto destroy;
  }
  jpeg_start_decompress(&cinfo);
  have = (uint32_t)cinfo.output_components;
  if (have != (cinfo.out_color_space == JCS_RGB ? 3u : 1u)) {
    rc = td_data_errf(err, errlen, path, "a JPEG decoded to %u channels: expected %u", have,
                      cinfo.out_color_space == JCS_RGB ? 3u : 1u);
    goto destroy;
  }
  out = malloc((size_t)cinfo.output_width * cinfo.output_height * have + 1);
  if (out == NULL) {
    rc = TD_ENOMEM;
    goto destroy;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out + (size_t)cinfo.output_scanline * cinfo.output_width * have;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  if (have != channels)
    to_gray(out, (size_t)cinfo.output_width * cinfo.output_height);
  *w = cinfo.output_width;
  *h = cinfo.output_height;
  *pix = out;
  out = NULL;
  rc = 0;
destroy:
  jpeg_destroy_decompress(&cinfo);
  free(out);
  return rc;
}

static int decode_png(const uint8_t *buf, size_t n, uint32_t channels, const char *path,
                      uint8_t **pix, uint32_t *w, uint32_t *h, char *err, size_t errlen) {
  png_image im;
  uint8_t *raw = NULL, *out = NULL;
  uint32_t have;
  size_t npix;
  int color, alpha, rc = TD_EDATA;

  memset(&im, 0, sizeof(im));
  im.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&im, buf, n))
    return td_data_errf(err, errlen, path, "corrupt PNG: %s", im.message);
  if ((uint64_t)im.width * im.height > TD_IMAGE_MAX_PIXELS) {
    rc = td_data_errf(err, errlen, path, "a PNG of %u x %u pixels: expected at most %llu "
                      "pixels", im.width, im.height, (unsigned long long)TD_IMAGE_MAX_PIXELS);
    goto free_image;
  }
  color = (im.format & PNG_FORMAT_FLAG_COLOR) != 0;
  alpha = (im.format & PNG_FORMAT_FLAG_ALPHA) != 0;
  /* libpng converts to gray in linear light; PIL (which ImageFolder users
   * compare with) takes the luma of the stored values, so gray from color
   * is made below, and alpha is read and dropped rather than composited. */
  im.format = (color ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY) | (alpha ? PNG_FORMAT_FLAG_ALPHA : 0);
  /* 16-bit samples are sRGB-encoded like 8-bit ones unless the file says */
  im.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
  have = PNG_IMAGE_PIXEL_CHANNELS(im.format);
  npix = (size_t)im.width * im.height;
  raw = malloc(PNG_IMAGE_SIZE(im) + 1);
  if (raw == NULL) {
    rc = TD_ENOMEM;
    goto free_image;
  }
  if (!png_image_finish_read(&im, NULL, raw, 0, NULL)) {
    rc = td_data_errf(err, errlen, path, "corrupt PNG: %s", im.message);
    goto free_raw;
  }
  if (have == channels) {
    out = raw;
    raw = NULL;
  } else {
    if ((out = malloc(npix * channels + 1)) == NULL) {
      rc = TD_ENOMEM;
      goto free_raw;
    }
    for (size_t i = 0; i < npix; i++) {
      const uint8_t *p = raw + i * have;
      if (channels == 1)
        out[i] = color ? luma(p) : p[0];
      else
        for (uint32_t c = 0; c < 3; c++)
          out[i * 3 + c] = color ? p[c] : p[0];
    }
  }
  *w = im.width;
  *h = im.height;
  *pix = out;
  rc = 0;
free_raw:
  free(raw);
free_image:
  png_image_free(&im);
  return rc;
}

int td_image_decode(const uint8_t *buf, size_t n, uint32_t channels, uint32_t hint_w,
                    uint32_t hint_h, const char *path, uint8_t **pix, uint32_t *w, uint32_t *h,
                    char *err, size_t errlen) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

  if (channels != 1 && channels != 3) {
    snprintf(err, errlen, "%s: images decode to 1 or 3 channels, not %u", path, channels);
    return TD_EINVAL;
  }
  if (n >= 8 && memcmp(buf, png_sig, 8) == 0)
    return decode_png(buf, n, channels, path, pix, w, h, err, errlen);
  if (n >= 3 && buf[0] == 0xff && buf[1] == 0xd8 && buf[2] == 0xff)
    return decode_jpeg(buf, n, channels, hint_w, hint_h, path, pix, w, h, err, errlen);
  return td_data_errf(err, errlen, path, "not an image at offset 0: expected a JPEG (ff d8 ff) "
                      "or PNG (89 50 4e 47) signature, got %02x %02x %02x %02x",
                      n > 0 ? buf[0] : 0, n > 1 ? buf[1] : 0, n > 2 ? buf[2] : 0,
                      n > 3 ? buf[3] : 0);
}

/* ---- resizing ---- */

/* The taps of one axis: output i reads count[i] input pixels from first[i]
 * with weights wt[i * taps ..]. */
struct axis {
  uint32_t taps;
  uint32_t *first, *count;
  float *wt;
};

static int axis_make(struct axis *a, uint32_t in, uint32_t out) {
  double scale = (double)in / out, r = scale > 1 ? scale : 1;

  a->taps = (uint32_t)ceil(r) * 2 + 1;
  a->first = malloc((size_t)out * sizeof(*a->first));
  a->count = malloc((size_t)out * sizeof(*a->count));
  a->wt = calloc((size_t)out * a->taps, sizeof(*a->wt));
  if (a->first == NULL || a->count == NULL || a->wt == NULL)
    return TD_ENOMEM;
  for (uint32_t i = 0; i < out; i++) {
    double centre = (i + 0.5) * scale, sum = 0;
    int64_t lo = (int64_t)ceil(centre - r - 0.5), hi = (int64_t)floor(centre + r - 0.5);
    float *w = a->wt + (size_t)i * a->taps;

    if (lo < 0)
      lo = 0;
    if (hi > (int64_t)in - 1)
      hi = (int64_t)in - 1;
    if (hi - lo + 1 > (int64_t)a->taps)
      hi = lo + a->taps - 1;
    a->first[i] = (uint32_t)lo;
    a->count[i] = hi >= lo ? (uint32_t)(hi - lo + 1) : 0;
    for (int64_t j = lo; j <= hi; j++) {
      double d = fabs(j + 0.5 - centre) / r;
      w[j - lo] = d < 1 ? (float)(1 - d) : 0;
      sum += w[j - lo];
    }
    /* a centre on the edge with no pixel inside r: the nearest one */
    if (sum <= 0) {
      a->first[i] = centre < in / 2.0 ? 0 : in - 1;
      a->count[i] = 1;
      w[0] = 1;
      sum = 1;
    }
    for (uint32_t k = 0; k < a->count[i]; k++)
      w[k] = (float)(w[k] / sum);
  }
  return 0;
}

static void axis_free(struct axis *a) {
  free(a->first);
  free(a->count);
  free(a->wt);
}

static inline __attribute__((always_inline)) void
resize_row(const uint8_t *row, float *out, const struct axis *ax, uint32_t dw, uint32_t ch) {
  for (uint32_t x = 0; x < dw; x++) {
    const float *w = ax->wt + (size_t)x * ax->taps;
    const uint8_t *p = row + (size_t)ax->first[x] * ch;
    float s[4] = {0, 0, 0, 0};
    for (uint32_t k = 0; k < ax->count[x]; k++, p += ch)
      for (uint32_t c = 0; c < ch; c++)
        s[c] += w[k] * p[c];
    for (uint32_t c = 0; c < ch; c++)
      out[(size_t)x * ch + c] = s[c];
  }
}

int td_image_resize(const uint8_t *src, uint32_t sw, uint32_t sh, uint32_t ch, uint8_t *dst,
                    uint32_t dw, uint32_t dh) {
  struct axis ax = {0}, ay = {0};
  size_t rowf = (size_t)dw * ch;
  float *tmp = NULL, *acc;
  int rc = TD_ENOMEM;

  if (ch < 1 || ch > 4)
    return TD_EINVAL;
  if (sw == dw && sh == dh) {
    for (uint32_t c = 0; c < ch; c++)
      for (size_t i = 0; i < (size_t)sw * sh; i++)
        dst[c * (size_t)sw * sh + i] = src[i * ch + c];
    return 0;
  }
  if (axis_make(&ax, sw, dw) < 0 || axis_make(&ay, sh, dh) < 0)
    goto free_axes;
  /* along x: sh rows of dw interleaved pixels, then one row to sum into */
  tmp = malloc(((size_t)sh + 1) * rowf * sizeof(*tmp));
  if (tmp == NULL)
    goto free_axes;
  acc = tmp + (size_t)sh * rowf;
  for (uint32_t y = 0; y < sh; y++) {
    const uint8_t *row = src + (size_t)y * sw * ch;
    float *out = tmp + (size_t)y * rowf;
    /* the channel count a constant in the common cases, so the loops unroll */
    if (ch == 1)
      resize_row(row, out, &ax, dw, 1);
    else if (ch == 3)
      resize_row(row, out, &ax, dw, 3);
    else
      resize_row(row, out, &ax, dw, ch);
  }
  /* along y, whole rows at a time, then into planes */
  for (uint32_t y = 0; y < dh; y++) {
    const float *w = ay.wt + (size_t)y * ay.taps;
    memset(acc, 0, rowf * sizeof(*acc));
    for (uint32_t k = 0; k < ay.count[y]; k++) {
      const float *in = tmp + (size_t)(ay.first[y] + k) * rowf;
      for (size_t i = 0; i < rowf; i++)
        acc[i] += w[k] * in[i];
    }
    for (uint32_t x = 0; x < dw; x++) {
      for (uint32_t c = 0; c < ch; c++) {
        float v = floorf(acc[(size_t)x * ch + c] + 0.5f);
        dst[((size_t)c * dh + y) * dw + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
    }
  }
  rc = 0;
  free(tmp);
free_axes:
  axis_free(&ax);
  axis_free(&ay);
  return rc;
}

/* ---- one file ---- */

static int read_image_file(int dirfd, const char *rel, const char *path, uint8_t **buf,
                           size_t *n, char *err, size_t errlen) {
  struct stat st;
  uint8_t *b = NULL;
  size_t done = 0;
  int fd, rc;

  fd = openat(dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return td_data_errf(err, errlen, path, "cannot open: %s", strerror(errno));
  if (fstat(fd, &st) < 0) {
    rc = td_data_errf(err, errlen, path, "cannot stat: %s", strerror(errno));
    goto close_fd;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = td_data_errf(err, errlen, path, "is not a regular file; images must be regular files");
    goto close_fd;
  }
  if ((uint64_t)st.st_size > TD_IMAGE_MAX_FILE) {
    rc = td_data_errf(err, errlen, path, "an image file of %lld bytes: expected at most %llu",
                      (long long)st.st_size, (unsigned long long)TD_IMAGE_MAX_FILE);
    goto close_fd;
  }
  if ((b = malloc((size_t)st.st_size + 1)) == NULL) {
    rc = TD_ENOMEM;
    goto close_fd;
  }
  while (done < (size_t)st.st_size) {
    ssize_t k = pread(fd, b + done, (size_t)st.st_size - done, (off_t)done);
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0) {
      rc = td_data_errf(err, errlen, path, "read error at offset %zu: %s", done,
                        strerror(errno));
      goto free_b;
    }
    if (k == 0)
      break; /* shrank since fstat: decode what there is, which will say */
    done += (size_t)k;
  }
  *buf = b;
  *n = done;
  close(fd);
  return 0;
free_b:
  free(b);
close_fd:
  close(fd);
  return rc;
}

int td_image_load(int dirfd, const char *rel, const char *path, uint32_t channels, uint32_t w,
                  uint32_t h, uint8_t *dst, char *err, size_t errlen) {
  uint8_t *buf = NULL, *pix = NULL;
  uint32_t iw, ih;
  size_t n = 0;
  int rc;

  if ((rc = read_image_file(dirfd, rel, path, &buf, &n, err, errlen)) < 0)
    return rc;
  rc = td_image_decode(buf, n, channels, w, h, path, &pix, &iw, &ih, err, errlen);
  free(buf);
  if (rc < 0)
    return rc;
  if ((rc = td_image_resize(pix, iw, ih, channels, dst, w, h)) < 0)
    snprintf(err, errlen, "%s: out of memory resizing %u x %u to %u x %u", path, iw, ih, w, h);
  free(pix);
  return rc;
}

/* ---- the folder ---- */

struct sample {
  uint64_t name; /* offset of "class/file" in names */
  uint32_t cls;
  uint32_t rank; /* position within its class */
  uint32_t of;   /* files in its class */
};

struct imgfolder {
  char *dir;
  int dirfd;
  uint32_t channels, w, h;
  uint32_t nclasses;
  uint64_t *class_name; /* offsets in names */
  char *names;
  uint64_t names_len, names_cap;
  struct sample *samples;
  uint64_t nsamples, samples_cap;
};

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has_image_ext(const char *name) {
  const char *dot = strrchr(name, '.');

  return dot != NULL && dot != name &&
         (strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0 ||
          strcasecmp(dot, ".png") == 0);
}

/* The names in base/rel ("" for base itself) that are folders (want_dir)
 * or image files, sorted; *out is malloc'd pointers into one block. */
static int list_dir(int base, const char *rel, const char *path, int want_dir, char ***out,
                    size_t *count, char *err, size_t errlen) {
  uint64_t *offs = NULL; /* of each name in block, which moves as it grows */
  char *block = NULL;
  size_t n = 0, cap = 0, used = 0, bcap = 0;
  struct dirent *de;
  DIR *d;
  int fd, rc = TD_ENOMEM;

  fd = rel[0] ? openat(base, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
               : fcntl(base, F_DUPFD_CLOEXEC, 0);
  if (fd < 0)
    return td_data_errf(err, errlen, path, "cannot open the folder: %s", strerror(errno));
  if ((d = fdopendir(fd)) == NULL) {
    close(fd);
    return td_data_errf(err, errlen, path, "cannot read the folder: %s", strerror(errno));
  }
  while ((errno = 0, de = readdir(d)) != NULL) {
    struct stat st;
    size_t len = strlen(de->d_name);

    if (de->d_name[0] == '.')
      continue;
    if (!want_dir && !has_image_ext(de->d_name))
      continue;
    /* follows links, as torchvision does; an image that is a broken link
     * is an error now rather than a sample missing from the set */
    if (fstatat(dirfd(d), de->d_name, &st, 0) < 0) {
      if (want_dir)
        continue;
      rc = td_data_errf(err, errlen, path, "cannot stat image '%s': %s", de->d_name,
                        strerror(errno));
      goto fail;
    }
    if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode))
      continue;
    if (used + len + 1 > bcap) {
      size_t nc = bcap ? bcap * 2 : 4096;
      char *nb;
      while (nc < used + len + 1)
        nc *= 2;
      if (nc > NAMES_MAX) {
        rc = td_data_errf(err, errlen, path, "too many files: their names exceed %llu bytes",
                          (unsigned long long)NAMES_MAX);
        goto fail;
      }
      if ((nb = realloc(block, nc)) == NULL)
        goto fail;
      block = nb;
      bcap = nc;
    }
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 64;
      uint64_t *nv;
      if (nc > TD_DATASET_MAX_SAMPLES) {
        rc = td_data_errf(err, errlen, path, "too many files: expected at most %u",
                          TD_DATASET_MAX_SAMPLES);
        goto fail;
      }
      if ((nv = realloc(offs, nc * sizeof(*nv))) == NULL)
        goto fail;
      offs = nv;
      cap = nc;
    }
    memcpy(block + used, de->d_name, len + 1);
    offs[n++] = used;
    used += len + 1;
  }
  if (errno != 0) {
    rc = td_data_errf(err, errlen, path, "cannot read the folder: %s", strerror(errno));
    goto fail;
  }
  closedir(d);
  d = NULL;
  /* one allocation: the pointers, then the names */
  {
    char **all = malloc(n * sizeof(*all) + used + 1);
    if (all == NULL)
      goto fail;
    if (used > 0)
      memcpy((char *)(all + n), block, used);
    for (size_t i = 0; i < n; i++)
      all[i] = (char *)(all + n) + offs[i];
    free(offs);
    free(block);
    qsort(all, n, sizeof(*all), name_cmp);
    *out = all;
    *count = n;
  }
  return 0;
fail:
  if (d != NULL)
    closedir(d);
  free(offs);
  free(block);
  return rc;
}

static int names_add(struct imgfolder *f, const char *a, const char *b, uint64_t *at) {
  size_t la = strlen(a), lb = b ? strlen(b) + 1 : 0;

  if (f->names_len + la + lb + 1 > f->names_cap) {
    uint64_t nc = f->names_cap ? f->names_cap * 2 : 65536;
    char *nb;
    while (nc < f->names_len + la + lb + 1)
      nc *= 2;
    if (nc > NAMES_MAX || (nb = realloc(f->names, nc)) == NULL)
      return TD_ENOMEM;
    f->names = nb;
    f->names_cap = nc;
  }
  *at = f->names_len;
  memcpy(f->names + f->names_len, a, la);
  if (b) {
    f->names[f->names_len + la] = '/';
    memcpy(f->names + f->names_len + la + 1, b, lb - 1);
  }
  f->names[f->names_len + la + lb] = '\0';
  f->names_len += la + lb + 1;
  return 0;
}

/* (rank + 0.5) / of, compared exactly: (2 rank + 1) * of' against
 * (2 rank' + 1) * of, under 2^65, so in 128 bits; then the class. */
static int sample_cmp(const void *pa, const void *pb) {
  const struct sample *a = pa, *b = pb;
  __extension__ unsigned __int128 x = (unsigned __int128)(2ull * a->rank + 1) * b->of;
  __extension__ unsigned __int128 y = (unsigned __int128)(2ull * b->rank + 1) * a->of;

  if (x != y)
    return x < y ? -1 : 1;
  return a->cls < b->cls ? -1 : a->cls > b->cls;
}

static void imgfolder_free(struct imgfolder *f) {
  if (f == NULL)
    return;
  if (f->dirfd >= 0)
    close(f->dirfd);
  free(f->dir);
  free(f->class_name);
  free(f->names);
  free(f->samples);
  free(f);
}

static int open_dir(const char *path, int *fd, char *err, size_t errlen) {
  *fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (*fd >= 0)
    return 0;
  if (errno == ENOTDIR)
    return td_data_errf(err, errlen, path, "is not a folder: format images reads a folder "
                        "holding one folder of images per class");
  td_data_errf(err, errlen, path, "cannot open the folder: %s", strerror(errno));
  return errno == ENOENT ? TD_ENOENT : TD_EDATA;
}

/* The test folder's classes are the train folder's: the same names. */
static int check_same_classes(const struct imgfolder *f, const char *train_dir, char *err,
                              size_t errlen) {
  char **tc = NULL;
  size_t nt = 0, i = 0, j = 0;
  int tfd, rc;

  if ((rc = open_dir(train_dir, &tfd, err, errlen)) < 0)
    return rc;
  rc = list_dir(tfd, "", train_dir, 1, &tc, &nt, err, errlen);
  close(tfd);
  if (rc < 0)
    return rc;
  while (rc == 0 && (i < f->nclasses || j < nt)) {
    const char *mine = i < f->nclasses ? f->names + f->class_name[i] : NULL;
    int c = mine == NULL ? 1 : j == nt ? -1 : strcmp(mine, tc[j]);
    if (c < 0)
      rc = td_data_errf(err, errlen, f->dir, "class folder '%s' is not in the train folder %s: "
                        "expected the same class folders", mine, train_dir);
    else if (c > 0)
      rc = td_data_errf(err, errlen, f->dir, "no class folder '%s', which the train folder %s "
                        "has: expected the same class folders", tc[j], train_dir);
    i++;
    j++;
  }
  free(tc);
  return rc;
}

static int open_images(td_split *s, const td_jobspec *spec, const td_data_split *ds, char *err,
                       size_t errlen) {
  struct imgfolder *f = calloc(1, sizeof(*f));
  char **classes = NULL;
  size_t nc = 0;
  int rc;

  if (f == NULL)
    return TD_ENOMEM;
  f->dirfd = -1;
  s->priv = f;
  if ((f->dir = strdup(ds->images)) == NULL)
    return TD_ENOMEM;
  s->dtype = TD_DTYPE_U8;
  /* a sample's class is its folder: class integers only */
  if (s->target.dtype != TD_DTYPE_I32)
    return td__target_kind_fail(s, ds->images, 0, err, errlen);
  f->channels = spec->input_rank == 3 ? spec->input_dims[0] : 1;
  f->h = spec->input_dims[spec->input_rank - 2 >= 0 ? spec->input_rank - 2 : 0];
  f->w = spec->input_dims[spec->input_rank - 1];
  if (spec->input_rank < 2 || spec->input_rank > 3 || (f->channels != 1 && f->channels != 3))
    return td_data_errf(err, errlen, f->dir, "format images decodes to [H, W], [1, H, W] or "
                        "[3, H, W]: expected model.input of that shape");
  snprintf(s->params, sizeof(s->params), "images=%u,%u,%u", f->channels, f->h, f->w);
  if ((rc = open_dir(f->dir, &f->dirfd, err, errlen)) < 0)
    return rc;
  if ((rc = list_dir(f->dirfd, "", f->dir, 1, &classes, &nc, err, errlen)) < 0)
    return rc;
  if (nc == 0) {
    rc = td_data_errf(err, errlen, f->dir, "no class folders: expected one folder of images "
                      "per class");
    goto free_classes;
  }
  if (nc > TD_DATASET_MAX_CLASSES) {
    rc = td_data_errf(err, errlen, f->dir, "%zu class folders: expected at most %u (labels "
                      "travel as one byte)", nc, TD_DATASET_MAX_CLASSES);
    goto free_classes;
  }
  f->nclasses = (uint32_t)nc;
  if ((f->class_name = malloc(nc * sizeof(*f->class_name))) == NULL) {
    rc = TD_ENOMEM;
    goto free_classes;
  }
  for (size_t k = 0; k < nc; k++) {
    char **files = NULL, sub[TD_PATH_MAX + 8];
    size_t nf = 0;

    if ((rc = names_add(f, classes[k], NULL, &f->class_name[k])) < 0)
      goto free_classes;
    snprintf(sub, sizeof(sub), "%s/%s", f->dir, classes[k]);
    if ((rc = list_dir(f->dirfd, classes[k], sub, 0, &files, &nf, err, errlen)) < 0)
      goto free_classes;
    if (nf == 0) {
      free(files);
      rc = td_data_errf(err, errlen, sub, "no images in class folder '%s': expected files "
                        "ending in .jpg, .jpeg or .png", classes[k]);
      goto free_classes;
    }
    if (f->nsamples + nf > TD_DATASET_MAX_SAMPLES) {
      free(files);
      rc = td_data_errf(err, errlen, f->dir, "too many images: expected at most %u",
                        TD_DATASET_MAX_SAMPLES);
      goto free_classes;
    }
    if (f->nsamples + nf > f->samples_cap) {
      uint64_t cap = f->samples_cap ? f->samples_cap : 1024;
      struct sample *ns;
      while (cap < f->nsamples + nf)
        cap *= 2;
      if ((ns = realloc(f->samples, cap * sizeof(*ns))) == NULL) {
        free(files);
        rc = TD_ENOMEM;
        goto free_classes;
      }
      f->samples = ns;
      f->samples_cap = cap;
    }
    for (size_t i = 0; i < nf; i++) {
      struct sample *sm = &f->samples[f->nsamples++];
      sm->cls = (uint32_t)k;
      sm->rank = (uint32_t)i;
      sm->of = (uint32_t)nf;
      if ((rc = names_add(f, classes[k], files[i], &sm->name)) < 0)
        break;
    }
    free(files);
    if (rc < 0)
      goto free_classes;
  }
  qsort(f->samples, f->nsamples, sizeof(*f->samples), sample_cmp);
  if (s->which == TD_SPLIT_TEST && (rc = check_same_classes(f, spec->train.images, err,
                                                            errlen)) < 0)
    goto free_classes;
  td__split_set_records(s, f->nsamples);
  rc = 0;
free_classes:
  free(classes);
  return rc;
}

static void close_images(td_split *s) { imgfolder_free(s->priv); }

static const char *images_path(const td_split *s) {
  return ((const struct imgfolder *)s->priv)->dir;
}

static int images_needs_scan(const td_split *s, int random_access) {
  (void)s;
  (void)random_access;
  return 0;
}

static int images_scan(td_split *s, uint32_t max_points, char *err, size_t errlen) {
  (void)s;
  (void)max_points;
  (void)err;
  (void)errlen;
  return 0;
}

static void images_read_cost(const td_split *s, uint64_t *gap, uint64_t *per) {
  *gap = 0;
  *per = s->sample_bytes;
}

static int check_classes(const struct imgfolder *f, uint32_t classes, char *err, size_t errlen) {
  if (f->nclasses <= classes)
    return 0;
  return td_data_errf(err, errlen, f->dir, "%u class folders, but the model has %u classes: "
                      "expected at most %u (the last layer's units)", f->nclasses, classes,
                      classes);
}

static int images_check_labels(td_split *s, uint32_t classes, char *err, size_t errlen) {
  return check_classes(s->priv, classes, err, errlen);
}

/* A sample's label: its class folder's position. */
static int32_t sample_label(const struct imgfolder *f, uint64_t i) {
  return (int32_t)f->samples[i].cls;
}

static int images_read(td_split *s, uint64_t first, uint64_t n, uint8_t *samples,
                       void *targets, uint32_t classes, char *err, size_t errlen) {
  const struct imgfolder *f = s->priv;
  int rc;

  if ((rc = check_classes(f, classes, err, errlen)) < 0)
    return rc;
  for (uint64_t i = 0; i < n; i++) {
    const struct sample *sm = &f->samples[first + i];
    const char *rel = f->names + sm->name;
    char path[TD_PATH_MAX + 600];

    if (targets != NULL)
      ((int32_t *)targets)[i] = sample_label(f, first + i);
    if (samples == NULL)
      continue;
    snprintf(path, sizeof(path), "%s/%s", f->dir, rel);
    if ((rc = td_image_load(f->dirfd, rel, path, f->channels, f->w, f->h,
                            samples + i * s->sample_bytes, err, errlen)) < 0)
      return rc;
  }
  return 0;
}

/* What the decoded samples depend on: every file's name, class, identity,
 * size and modification time, hashed (a folder of a million images would
 * not fit a key), and the folder's own identity. */
static int images_cache_ident(const td_split *s, char *buf, size_t cap) {
  const struct imgfolder *f = s->priv;
  uint64_t h1 = 0xcbf29ce484222325ull, h2 = TD__GOLDEN;
  struct stat st;
  int k;

  if (fstat(f->dirfd, &st) < 0)
    return TD_EDATA;
  for (uint64_t i = 0; i < f->nsamples; i++) {
    const char *rel = f->names + f->samples[i].name;
    uint64_t v[6];

    if (fstatat(f->dirfd, rel, &st, 0) < 0)
      return TD_EDATA;
    v[0] = f->samples[i].cls;
    v[1] = (uint64_t)st.st_dev;
    v[2] = (uint64_t)st.st_ino;
    v[3] = (uint64_t)st.st_size;
    v[4] = (uint64_t)st.st_mtim.tv_sec;
    v[5] = (uint64_t)st.st_mtim.tv_nsec;
    for (const char *p = rel; *p; p++)
      h1 = (h1 ^ (uint8_t)*p) * 0x100000001b3ull;
    h1 = (h1 ^ 0xff) * 0x100000001b3ull;
    for (size_t j = 0; j < 6; j++) {
      h1 = (h1 ^ v[j]) * 0x100000001b3ull;
      h2 = td__mix64(h2 + v[j] + h1);
    }
  }
  fstat(f->dirfd, &st);
  k = snprintf(buf, cap, " dir=%llx:%llx files=%llu hash=%016llx%016llx",
               (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
               (unsigned long long)f->nsamples, (unsigned long long)h1,
               (unsigned long long)h2);
  return k < 0 || (size_t)k >= cap ? TD_ETOOBIG : 0;
}

const td__format td__format_images = {
    .open = open_images,
    .needs_scan = images_needs_scan,
    .scan = images_scan,
    .read_cost = images_read_cost,
    .read = images_read,
    .check_labels = images_check_labels,
    .load_file = NULL,
    .load_align = 1,
    .load_to_end = 0,
    .load_task_max = 64,
    .close = close_images,
    .path = images_path,
    .cache_ident = images_cache_ident,
};
