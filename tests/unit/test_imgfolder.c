/* The images format (imgfolder.c): decoding JPEG and PNG of every kind,
 * resizing, folders read through td_split_read, the files and folders it
 * refuses, and the loader's augmentation (augment.c), alone and in the
 * real traind-loader. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "augment.h"
#include "dataset.h"
#include "error.h"
#include "imgfolder.h"
#include "imgwrite.h"
#include "jobdesc.h"
#include "jobspec.h"
#include "ring.h"
#include "shmcache.h"

#define FMNIST "/usr/share/datasets/fashion-mnist"

static char tmpdir[PATH_MAX];
static char errbuf[1024];

static void tmp_setup(void) {
  snprintf(tmpdir, sizeof(tmpdir), "/tmp/traind-test-img-XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void tmp_teardown(void) {
  char cmd[PATH_MAX + 16];

  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", tmpdir);
}

static const char *tmp_path(const char *name) {
  static char bufs[4][PATH_MAX];
  static int next;
  char *b = bufs[next++ % 4];

  snprintf(b, PATH_MAX, "%s/%s", tmpdir, name);
  return b;
}

static void mkdirs(const char *name) {
  char p[PATH_MAX];

  snprintf(p, sizeof(p), "mkdir -p '%s'", tmp_path(name));
  ck_assert_int_eq(system(p), 0);
}

static void write_bytes(const char *name, const void *b, size_t n) {
  FILE *f = fopen(tmp_path(name), "wb");

  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(b, 1, n, f), n);
  ck_assert_int_eq(fclose(f), 0);
}

static uint8_t *read_bytes(const char *name, size_t *n) {
  FILE *f = fopen(tmp_path(name), "rb");
  uint8_t *b = malloc(1 << 20);

  ck_assert_ptr_nonnull(f);
  ck_assert_ptr_nonnull(b);
  *n = fread(b, 1, 1 << 20, f);
  fclose(f);
  return b;
}

/* Decode a file of tmpdir as channels, expecting success. */
static uint8_t *decode(const char *name, uint32_t channels, uint32_t *w, uint32_t *h) {
  size_t n;
  uint8_t *b = read_bytes(name, &n), *pix = NULL;
  int rc = td_image_decode(b, n, channels, 0, 0, name, &pix, w, h, errbuf, sizeof(errbuf));

  ck_assert_msg(rc == 0, "%s: %s", name, errbuf);
  free(b);
  return pix;
}

static int decode_fails(const char *name, const char *frag) {
  size_t n;
  uint8_t *b = read_bytes(name, &n), *pix = NULL;
  uint32_t w, h;
  int rc = td_image_decode(b, n, 3, 0, 0, tmp_path(name), &pix, &w, &h, errbuf,
                           sizeof(errbuf));

  free(b);
  ck_assert_msg(rc == TD_EDATA, "%s decoded (rc %d)", name, rc);
  ck_assert_msg(strstr(errbuf, tmp_path(name)) == errbuf, "no path first: %s", errbuf);
  ck_assert_msg(strstr(errbuf, frag) != NULL, "no '%s' in: %s", frag, errbuf);
  return rc;
}

START_TEST(test_resize) {
  const uint8_t row[2] = {0, 255}, row4[4] = {0, 100, 200, 255};
  uint8_t out[16], rgb[2 * 2 * 3], planes[12];
  uint8_t flat[9 * 7];

  /* enlarging: bilinear with half-pixel centres, edges repeated */
  ck_assert_int_eq(td_image_resize(row, 2, 1, 1, out, 4, 1), 0);
  ck_assert_uint_eq(out[0], 0);
  ck_assert_uint_eq(out[1], 64);  /* 0.75 * 0 + 0.25 * 255 = 63.75 */
  ck_assert_uint_eq(out[2], 191); /* 191.25 */
  ck_assert_uint_eq(out[3], 255);
  /* shrinking by 2: a triangle of radius 2 (input pixels), every pixel
   * counts: (0.75 * 0 + 0.75 * 100 + 0.25 * 200) / 1.75 = 71.4 */
  ck_assert_int_eq(td_image_resize(row4, 4, 1, 1, out, 2, 1), 0);
  ck_assert_uint_eq(out[0], 71);
  ck_assert_uint_eq(out[1], 209); /* (0.25 * 100 + 0.75 * 200 + 0.75 * 255) / 1.75 */
  /* a flat image stays flat at any size */
  memset(flat, 77, sizeof(flat));
  ck_assert_int_eq(td_image_resize(flat, 9, 7, 1, out, 4, 3), 0);
  for (int i = 0; i < 12; i++)
    ck_assert_uint_eq(out[i], 77);
  ck_assert_int_eq(td_image_resize(flat, 3, 1, 1, out, 16, 1), 0);
  for (int i = 0; i < 16; i++)
    ck_assert_uint_eq(out[i], 77);
  /* the same size: interleaved to planes, unchanged */
  for (int i = 0; i < 12; i++)
    rgb[i] = (uint8_t)i;
  ck_assert_int_eq(td_image_resize(rgb, 2, 2, 3, planes, 2, 2), 0);
  for (int c = 0; c < 3; c++)
    for (int p = 0; p < 4; p++)
      ck_assert_uint_eq(planes[c * 4 + p], p * 3 + c);
}
END_TEST

START_TEST(test_decode_kinds) {
  uint8_t gray[4 * 3], rgb[4 * 3 * 3], rgba[4 * 3 * 4], ga[4 * 3 * 2], idx[4 * 3];
  uint16_t g16[4 * 3];
  const uint8_t palette[3 * 3] = {255, 0, 0, 0, 255, 0, 10, 20, 30};
  uint8_t *p;
  uint32_t w, h;

  for (int i = 0; i < 12; i++) {
    gray[i] = (uint8_t)(i * 20);
    rgb[3 * i] = (uint8_t)(i * 20);
    rgb[3 * i + 1] = (uint8_t)(255 - i * 20);
    rgb[3 * i + 2] = (uint8_t)(i * 7);
    memcpy(rgba + 4 * i, rgb + 3 * i, 3);
    rgba[4 * i + 3] = (uint8_t)(i * 21); /* some fully transparent */
    ga[2 * i] = gray[i];
    ga[2 * i + 1] = 0;
    idx[i] = (uint8_t)(i % 3);
    g16[i] = (uint16_t)(i == 0 ? 0 : i == 11 ? 65535 : i * 5000);
  }
  ck_assert_int_eq(imgw_png(tmp_path("g.png"), gray, 4, 3, 1, 0), 0);
  ck_assert_int_eq(imgw_png(tmp_path("rgb.png"), rgb, 4, 3, 3, 0), 0);
  ck_assert_int_eq(imgw_png(tmp_path("rgba.png"), rgba, 4, 3, 4, 0), 0);
  ck_assert_int_eq(imgw_png(tmp_path("ga.png"), ga, 4, 3, 2, 0), 0);
  ck_assert_int_eq(imgw_png(tmp_path("g16.png"), g16, 4, 3, 1, 1), 0);
  ck_assert_int_eq(imgw_png_palette(tmp_path("pal.png"), idx, 4, 3, palette, 3), 0);

  /* gray as gray, and as RGB: the value three times */
  p = decode("g.png", 1, &w, &h);
  ck_assert(w == 4 && h == 3);
  ck_assert_mem_eq(p, gray, 12);
  free(p);
  p = decode("g.png", 3, &w, &h);
  for (int i = 0; i < 12; i++)
    ck_assert(p[3 * i] == gray[i] && p[3 * i + 1] == gray[i] && p[3 * i + 2] == gray[i]);
  free(p);
  /* RGB exactly; as gray, PIL's convert("L") luma */
  p = decode("rgb.png", 3, &w, &h);
  ck_assert_mem_eq(p, rgb, 36);
  free(p);
  p = decode("rgb.png", 1, &w, &h);
  for (int i = 0; i < 12; i++) {
    const uint8_t *q = rgb + 3 * i;
    ck_assert_uint_eq(p[i], (q[0] * 19595u + q[1] * 38470u + q[2] * 7471u + 0x8000u) >> 16);
  }
  free(p);
  /* alpha dropped, not composited: transparent pixels keep their color */
  p = decode("rgba.png", 3, &w, &h);
  ck_assert_mem_eq(p, rgb, 36);
  free(p);
  p = decode("ga.png", 1, &w, &h);
  ck_assert_mem_eq(p, gray, 12);
  free(p);
  /* a palette expanded */
  p = decode("pal.png", 3, &w, &h);
  for (int i = 0; i < 12; i++)
    ck_assert_mem_eq(p + 3 * i, palette + 3 * (i % 3), 3);
  free(p);
  /* 16 bits to 8: the ends exact, the rest in order */
  p = decode("g16.png", 1, &w, &h);
  ck_assert_uint_eq(p[0], 0);
  ck_assert_uint_eq(p[11], 255);
  for (int i = 1; i < 12; i++)
    ck_assert_uint_ge(p[i], p[i - 1]);
  free(p);

  /* JPEG: lossy, so near; gray and color both ways */
  {
    uint8_t flat[16 * 16 * 3];
    for (int i = 0; i < 16 * 16; i++) {
      flat[3 * i] = 200;
      flat[3 * i + 1] = 40;
      flat[3 * i + 2] = 90;
    }
    ck_assert_int_eq(imgw_jpeg(tmp_path("c.jpg"), flat, 16, 16, 3, 100), 0);
    memset(flat, 123, 16 * 16);
    ck_assert_int_eq(imgw_jpeg(tmp_path("g.jpg"), flat, 16, 16, 1, 100), 0);
  }
  p = decode("c.jpg", 3, &w, &h);
  ck_assert(w == 16 && h == 16);
  ck_assert(abs(p[0] - 200) <= 3 && abs(p[1] - 40) <= 3 && abs(p[2] - 90) <= 3);
  free(p);
  p = decode("c.jpg", 1, &w, &h);
  ck_assert_msg(abs(p[0] - 97) <= 3, "luma %u", p[0]); /* .299*200 + .587*40 + .114*90 */
  free(p);
  p = decode("g.jpg", 3, &w, &h);
  ck_assert(abs(p[0] - 123) <= 1 && p[0] == p[1] && p[1] == p[2]);
  free(p);

  /* a JPEG far larger than the input decodes smaller, keeping twice the
   * input's size: 640 x 480 for 64 x 48 at 1/4 (160 x 120), for 100 x 100
   * at 1/2 (320 x 240 >= 200 x 200); for 400 x 300 whole */
  {
    static uint8_t big[640 * 480];
    static const uint32_t want[3][4] = {{64, 48, 160, 120}, {100, 100, 320, 240},
                                        {400, 300, 640, 480}};
    size_t n;
    uint8_t *b;
    memset(big, 90, sizeof(big));
    ck_assert_int_eq(imgw_jpeg(tmp_path("big.jpg"), big, 640, 480, 1, 90), 0);
    b = read_bytes("big.jpg", &n);
    for (int i = 0; i < 3; i++) {
      ck_assert_int_eq(td_image_decode(b, n, 1, want[i][0], want[i][1], "big.jpg", &p, &w, &h,
                                       errbuf, sizeof(errbuf)), 0);
      ck_assert_msg(w == want[i][2] && h == want[i][3], "for %ux%u: decoded %ux%u",
                    want[i][0], want[i][1], w, h);
      free(p);
    }
    free(b);
  }
}
END_TEST

START_TEST(test_decode_bad) {
  uint8_t rgb[8 * 8 * 3], *b;
  size_t n;

  for (int i = 0; i < (int)sizeof(rgb); i++)
    rgb[i] = (uint8_t)(i * 13);
  ck_assert_int_eq(imgw_png(tmp_path("ok.png"), rgb, 8, 8, 3, 0), 0);
  ck_assert_int_eq(imgw_jpeg(tmp_path("ok.jpg"), rgb, 8, 8, 3, 90), 0);
  b = read_bytes("ok.png", &n);
  write_bytes("cut.png", b, n / 2);
  b[40] ^= 0xff; /* in the IDAT: its CRC fails */
  write_bytes("flip.png", b, n);
  free(b);
  b = read_bytes("ok.jpg", &n);
  write_bytes("cut.jpg", b, n * 2 / 3);
  write_bytes("head.jpg", b, 40);
  free(b);
  write_bytes("text.png", "hello, world", 12);
  write_bytes("empty.jpg", "", 0);

  decode_fails("cut.png", "corrupt PNG");
  decode_fails("flip.png", "corrupt PNG");
  decode_fails("cut.jpg", "corrupt JPEG");
  decode_fails("head.jpg", "corrupt JPEG");
  decode_fails("text.png", "not an image");
  decode_fails("empty.jpg", "not an image");
}
END_TEST

/* A job reading image folders train/ and test/ of tmpdir. */
static void images_job(td_jobspec *spec, const char *input, uint32_t classes, const char *extra) {
  char text[2048];
  int rc;

  snprintf(text, sizeof(text),
           "model:\n"
           "  input: %s\n"
           "  layers:\n"
           "    - {type: flatten}\n"
           "    - {type: dense, units: %u}\n"
           "data:\n"
           "  format: images\n"
           "  train: {images: train}\n"
           "  test: {images: test}\n%s"
           "train:\n"
           "  batch_size: 8\n"
           "  epochs: 2\n"
           "  seed: 7\n"
           "  optimizer: {type: sgd, lr: 0.1}\n",
           input, classes, extra ? extra : "");
  rc = td_jobspec_parse(text, strlen(text), tmpdir, spec, errbuf, sizeof(errbuf));
  ck_assert_msg(rc == 0, "job: %s", errbuf);
}

/* split/cls/name.png: a 4 x 4 gray image of value v. */
static void flat_png(const char *split, const char *cls, const char *name, uint8_t v) {
  uint8_t px[16];
  char dir[256], file[512];

  snprintf(dir, sizeof(dir), "%s/%s", split, cls);
  mkdirs(dir);
  memset(px, v, sizeof(px));
  snprintf(file, sizeof(file), "%s/%s", dir, name);
  ck_assert_int_eq(imgw_png(tmp_path(file), px, 4, 4, 1, 0), 0);
}

static void check_fails(const td_jobspec *spec, const char *f1, const char *f2) {
  int rc = td_dataset_check(spec, errbuf, sizeof(errbuf));

  ck_assert_msg(rc == TD_EDATA, "rc %s (%s)", td_err_name(rc), errbuf);
  ck_assert_msg(strstr(errbuf, f1) != NULL, "no '%s' in: %s", f1, errbuf);
  ck_assert_msg(f2 == NULL || strstr(errbuf, f2) != NULL, "no '%s' in: %s", f2, errbuf);
}

START_TEST(test_folder_order) {
  static const char *const classes[] = {"a", "b", "c"};
  static const int sizes[] = {2, 4, 1};
  td_jobspec spec;
  td_dataset_info info;
  td_split *s;
  uint8_t x[7 * 16];
  int32_t y[7];
  char key1[512], key2[512];

  /* class c's file i has value 10 * c + i; names out of order on disk */
  for (int c = 0; c < 3; c++)
    for (int i = sizes[c] - 1; i >= 0; i--) {
      char name[32];
      snprintf(name, sizeof(name), "img%d.%s", i, i == 1 ? "PNG" : "png");
      flat_png("train", classes[c], name, (uint8_t)(10 * c + i));
      flat_png("test", classes[c], name, (uint8_t)(10 * c + i));
    }
  /* ignored: another extension, a hidden file, a hidden folder, a nested folder */
  write_bytes("train/a/notes.txt", "x", 1);
  write_bytes("train/a/.hidden.png", "x", 1);
  mkdirs("train/.cache");
  mkdirs("train/b/deeper");
  images_job(&spec, "[4, 4]", 3, NULL);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  ck_assert_int_eq(td_dataset_probe(&spec, &info, errbuf, sizeof(errbuf)), 0);
  ck_assert_int_eq(info.dtype, TD_DTYPE_U8);
  ck_assert_uint_eq(info.sample_bytes, 16);

  ck_assert_int_eq(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)), 0);
  ck_assert_uint_eq(td_split_count(s), 7);
  ck_assert_str_eq(td_split_path(s), tmp_path("train"));
  ck_assert_int_eq(td_split_read(s, 0, 7, x, y, 3, errbuf, sizeof(errbuf)), 0);
  /* interleaved by (i + 0.5) / n: b0 (1/8), a0 (1/4), b1 (3/8), c0 (1/2),
   * b2 (5/8), a1 (3/4), b3 (7/8) */
  {
    static const uint8_t want[7] = {10, 0, 11, 20, 12, 1, 13};
    for (int k = 0; k < 7; k++) {
      ck_assert_msg(x[k * 16] == want[k] && x[k * 16 + 15] == want[k], "sample %d is %u", k,
                    x[k * 16]);
      ck_assert_int_eq(y[k], want[k] / 10);
    }
  }
  /* any range, labels alone */
  ck_assert_int_eq(td_split_read(s, 5, 2, NULL, y, 3, errbuf, sizeof(errbuf)), 0);
  ck_assert(y[0] == 0 && y[1] == 1);
  ck_assert_int_eq(td_split_cache_key(s, key1, sizeof(key1)), 0);
  td_split_close(s);
  /* a changed file changes the key: the shared copy is not reused */
  usleep(50000); /* past the file system's timestamp granularity */
  flat_png("train", "c", "img0.png", 99);
  ck_assert_int_eq(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)), 0);
  ck_assert_int_eq(td_split_cache_key(s, key2, sizeof(key2)), 0);
  ck_assert_str_ne(key1, key2);
  td_split_close(s);

  /* normalize: the samples travel as float32 */
  images_job(&spec, "[1, 4, 4]", 3, "  augment: {normalize: {mean: [0.5], std: [0.25]}}\n");
  ck_assert_int_eq(td_dataset_probe(&spec, &info, errbuf, sizeof(errbuf)), 0);
  ck_assert_int_eq(info.dtype, TD_DTYPE_F32);
  ck_assert_uint_eq(info.sample_bytes, 64);

  /* the model's class count: fewer folders may, more may not */
  images_job(&spec, "[4, 4]", 5, NULL);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  images_job(&spec, "[4, 4]", 2, NULL);
  check_fails(&spec, "3 class folders, but the model has 2 classes", tmp_path("train"));
}
END_TEST

START_TEST(test_folder_errors) {
  td_jobspec spec;
  td_split *s;
  uint8_t x[16 * 4];
  int32_t y[4];
  char want[PATH_MAX];

  images_job(&spec, "[4, 4]", 3, NULL);
  check_fails(&spec, tmp_path("train"), "cannot open the folder");
  write_bytes("train", "x", 1);
  check_fails(&spec, "is not a folder", NULL);
  unlink(tmp_path("train"));
  mkdirs("train");
  check_fails(&spec, "no class folders", NULL);
  flat_png("train", "cat", "1.png", 1);
  flat_png("train", "dog", "1.png", 2);
  mkdirs("train/emu");
  write_bytes("train/emu/readme.txt", "x", 1);
  check_fails(&spec, tmp_path("train/emu"), "no images in class folder 'emu'");
  flat_png("train", "emu", "1.png", 3);
  /* the test folder: the same classes, else the one that differs is named */
  flat_png("test", "cat", "1.png", 1);
  flat_png("test", "dog", "1.png", 2);
  check_fails(&spec, tmp_path("test"), "no class folder 'emu'");
  flat_png("test", "eel", "1.png", 3);
  check_fails(&spec, "class folder 'eel' is not in the train folder", NULL);
  snprintf(want, sizeof(want), "rm -r '%s'", tmp_path("test/eel"));
  ck_assert_int_eq(system(want), 0);
  flat_png("test", "emu", "1.png", 3);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);

  /* an image that is a broken link, at once */
  ck_assert_int_eq(symlink("/nonexistent/x.png", tmp_path("train/dog/3.png")), 0);
  check_fails(&spec, "cannot stat image '3.png'", tmp_path("train/dog"));
  unlink(tmp_path("train/dog/3.png"));

  /* a bad image shows when it is read, by name */
  write_bytes("train/dog/2.png", "GIF89a....", 10);
  ck_assert_int_eq(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)), 0);
  ck_assert_uint_eq(td_split_count(s), 4);
  ck_assert_int_eq(td_split_read(s, 0, 4, x, y, 3, errbuf, sizeof(errbuf)), TD_EDATA);
  ck_assert_msg(strstr(errbuf, tmp_path("train/dog/2.png")) == errbuf &&
                    strstr(errbuf, "not an image") != NULL,
                "%s", errbuf);
  td_split_close(s);
  /* an unreadable one (as a user without the right: root reads anything) */
  if (geteuid() != 0) {
    chmod(tmp_path("train/dog/2.png"), 0);
    ck_assert_int_eq(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)), 0);
    ck_assert_int_eq(td_split_read(s, 0, 4, x, y, 3, errbuf, sizeof(errbuf)), TD_EDATA);
    ck_assert_msg(strstr(errbuf, "cannot open") != NULL, "%s", errbuf);
    td_split_close(s);
  }

  /* model.input that is no image the format makes */
  {
    const char *text = "model: {input: [2, 4, 4], layers: [{type: flatten}, {type: dense, "
                       "units: 3}]}\ndata: {format: images, train: {images: a}, test: "
                       "{images: b}}\ntrain: {batch_size: 1, epochs: 1, optimizer: sgd}\n";
    ck_assert_int_eq(td_jobspec_parse(text, strlen(text), "/x", &spec, errbuf, sizeof(errbuf)),
                     TD_EJOBSPEC);
    ck_assert_msg(strstr(errbuf, "format images decodes to") != NULL, "%s", errbuf);
  }
}
END_TEST

START_TEST(test_augment_keys) {
  static const struct {
    const char *input, *augment, *frag;
  } bad[] = {
      {"[4, 4]", "{random_crop: {padding: 2000}}", "padding"},
      {"[4, 4]", "{random_crop: {size: 3}}", "size"},
      {"[16]", "{horizontal_flip: true}", "needs an image input"},
      {"[3, 4, 4]", "{normalize: {mean: [0.5], std: [0.2]}}", "one mean and one std per channel"},
      {"[3, 4, 4]", "{normalize: {mean: [0.5, 0.5, 0.5], std: [0.2, 0, 0.2]}}", "std"},
      {"[4, 4]", "{normalize: {mean: [0.5]}}", "std"},
      {"[4, 4]", "{horizontal_flip: yes}", "horizontal_flip"},
  };
  td_jobspec spec;
  char text[1024];

  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    snprintf(text, sizeof(text),
             "model: {input: %s, layers: [{type: flatten}, {type: dense, units: 3}]}\n"
             "data: {format: idx, train: {images: a, labels: b}, test: {images: c, labels: d},"
             " augment: %s}\ntrain: {batch_size: 1, epochs: 1, optimizer: sgd}\n",
             bad[i].input, bad[i].augment);
    ck_assert_int_eq(td_jobspec_parse(text, strlen(text), "/x", &spec, errbuf, sizeof(errbuf)),
                     TD_EJOBSPEC);
    ck_assert_msg(strstr(errbuf, bad[i].frag) != NULL, "%s: no '%s' in: %s", bad[i].augment,
                  bad[i].frag, errbuf);
  }
  snprintf(text, sizeof(text),
           "model: {input: [4, 4], layers: [{type: flatten}, {type: dense, units: 3}]}\n"
           "data: {format: idx, train: {images: a, labels: b}, test: {images: c, labels: d},"
           " normalize: {mean: 0.1, std: 0.2}, augment: {normalize: {mean: [0], std: [1]}}}\n"
           "train: {batch_size: 1, epochs: 1, optimizer: sgd}\n");
  ck_assert_int_eq(td_jobspec_parse(text, strlen(text), "/x", &spec, errbuf, sizeof(errbuf)),
                   TD_EJOBSPEC);
  ck_assert_msg(strstr(errbuf, "give one") != NULL, "%s", errbuf);
  snprintf(text, sizeof(text),
           "model: {input: [3, 4, 4], layers: [{type: flatten}, {type: dense, units: 3}]}\n"
           "data: {format: images, train: {images: a}, test: {images: c}, augment: "
           "{random_crop: {padding: 4}, horizontal_flip: true, normalize: {mean: [0.1, 0.2, "
           "0.3], std: [0.4, 0.5, 0.6]}}}\ntrain: {batch_size: 1, epochs: 1, optimizer: sgd}\n");
  ck_assert_msg(td_jobspec_parse(text, strlen(text), "/x", &spec, errbuf, sizeof(errbuf)) == 0,
                "%s", errbuf);
  ck_assert(spec.augment.crop && spec.augment.crop_padding == 4 && spec.augment.hflip);
  ck_assert(spec.augment.nmean == 3 && spec.augment.nstd == 3 && spec.augment.std[2] == 0.6f);
  ck_assert_int_eq(spec.format, TD_DATA_IMAGES);
  /* random_crop: {} is on, padding 0 */
  snprintf(text, sizeof(text),
           "model: {input: [4, 4], layers: [{type: flatten}, {type: dense, units: 3}]}\n"
           "data: {format: images, train: {images: a}, test: {images: c}, augment: "
           "{random_crop: {}}}\ntrain: {batch_size: 1, epochs: 1, optimizer: sgd}\n");
  ck_assert_msg(td_jobspec_parse(text, strlen(text), "/x", &spec, errbuf, sizeof(errbuf)) == 0,
                "%s", errbuf);
  ck_assert(spec.augment.crop && spec.augment.crop_padding == 0 && !spec.augment.hflip);
  /* the description carries it, to the byte */
  {
    td_jobspec back;
    unsigned char *d;
    size_t n;
    spec.augment.nmean = spec.augment.nstd = 1;
    spec.augment.mean[0] = 0.25f;
    spec.augment.std[0] = 0.5f;
    ck_assert_int_eq(td_jobdesc_encode_alloc(&spec, &d, &n), 0);
    ck_assert_int_eq(td_jobdesc_decode(d, n, &back, errbuf, sizeof(errbuf)), 0);
    ck_assert_mem_eq(&back.augment, &spec.augment, sizeof(spec.augment));
    free(d);
  }
}
END_TEST

START_TEST(test_augment_apply) {
  td_jobspec spec;
  td_aug a;
  uint8_t img[2 * 6 * 6], o1[sizeof(img)], o2[sizeof(img)], mirror[sizeof(img)];
  float f[2 * 6 * 6];
  int differ = 0, flipped = 0, plain = 0, shifted = 0;

  memset(&spec, 0, sizeof(spec));
  spec.input_rank = 3;
  spec.input_dims[0] = 2;
  spec.input_dims[1] = spec.input_dims[2] = 6;
  spec.seed = 11;
  for (size_t i = 0; i < sizeof(img); i++)
    img[i] = (uint8_t)(i + 1); /* no zeros: padding shows */
  for (int c = 0; c < 2; c++)
    for (int y = 0; y < 6; y++)
      for (int x = 0; x < 6; x++)
        mirror[(c * 6 + y) * 6 + x] = img[(c * 6 + y) * 6 + 5 - x];

  /* flip alone: each sample as it is or mirrored, about half each, the
   * same for the same (epoch, sample), and other epochs draw anew */
  spec.augment.hflip = 1;
  ck_assert_int_eq(td_aug_init(&a, &spec, TD_DTYPE_U8, errbuf, sizeof(errbuf)), 0);
  ck_assert_int_eq(a.out, TD_DTYPE_U8);
  for (uint64_t s = 0; s < 200; s++) {
    td_aug_apply(&a, img, o1, 3, s, 1);
    td_aug_apply(&a, img, o2, 3, s, 1);
    ck_assert_mem_eq(o1, o2, sizeof(o1));
    flipped += memcmp(o1, mirror, sizeof(o1)) == 0;
    plain += memcmp(o1, img, sizeof(o1)) == 0;
    td_aug_apply(&a, img, o2, 4, s, 1);
    differ += memcmp(o1, o2, sizeof(o1)) != 0;
  }
  ck_assert_int_eq(flipped + plain, 200);
  ck_assert_msg(flipped > 60 && plain > 60, "flipped %d of 200", flipped);
  ck_assert_msg(differ > 60, "epochs 3 and 4 differ on %d of 200", differ);
  /* never on validation or test samples */
  td_aug_apply(&a, img, o1, 3, 0, 0);
  ck_assert_mem_eq(o1, img, sizeof(img));

  /* crop with padding 2: a shift of -2..2 each way, zeros come in */
  spec.augment.hflip = 0;
  spec.augment.crop = 1;
  spec.augment.crop_padding = 2;
  ck_assert_int_eq(td_aug_init(&a, &spec, TD_DTYPE_U8, errbuf, sizeof(errbuf)), 0);
  for (uint64_t s = 0; s < 100; s++) {
    int found = 0;
    td_aug_apply(&a, img, o1, 0, s, 1);
    for (int dy = -2; dy <= 2 && !found; dy++)
      for (int dx = -2; dx <= 2 && !found; dx++) {
        int ok = 1;
        for (int c = 0; c < 2 && ok; c++)
          for (int y = 0; y < 6 && ok; y++)
            for (int x = 0; x < 6 && ok; x++) {
              int sy = y + dy, sx = x + dx;
              uint8_t v = sy >= 0 && sy < 6 && sx >= 0 && sx < 6 ? img[(c * 6 + sy) * 6 + sx] : 0;
              ok = o1[(c * 6 + y) * 6 + x] == v;
            }
        found = ok;
        shifted += ok && (dx != 0 || dy != 0);
      }
    ck_assert_msg(found, "sample %llu is no shift of the image", (unsigned long long)s);
  }
  ck_assert_int_gt(shifted, 60);

  /* normalize: per channel, float32, (x / 255 - mean) / std, on every split */
  spec.augment.crop = 0;
  spec.augment.nmean = spec.augment.nstd = 2;
  spec.augment.mean[0] = 0.5f;
  spec.augment.mean[1] = 0.25f;
  spec.augment.std[0] = 0.5f;
  spec.augment.std[1] = 2.0f;
  ck_assert_int_eq(td_aug_init(&a, &spec, TD_DTYPE_U8, errbuf, sizeof(errbuf)), 0);
  ck_assert_int_eq(a.out, TD_DTYPE_F32);
  ck_assert_uint_eq(a.out_bytes, sizeof(f));
  td_aug_apply(&a, img, f, 0, 0, 0);
  for (int i = 0; i < 72; i++) {
    int c = i / 36;
    float want = (img[i] * (1.0f / 255.0f) - spec.augment.mean[c]) / spec.augment.std[c];
    ck_assert_msg(f[i] == want, "element %d: %g, want %g", i, f[i], want);
  }
  /* float samples are normalised as they are (scale 1) */
  {
    float src[72], out[72];
    for (int i = 0; i < 72; i++)
      src[i] = (float)i;
    ck_assert_int_eq(td_aug_init(&a, &spec, TD_DTYPE_F32, errbuf, sizeof(errbuf)), 0);
    td_aug_apply(&a, src, out, 0, 0, 1);
    ck_assert(out[40] == (40.0f - 0.25f) / 2.0f);
  }
}
END_TEST

/* Fashion-MNIST as PNG and JPEG files: the PNG samples are the IDX
 * file's pixels exactly, and a load on several threads is the same. */
START_TEST(test_fmnist_folder) {
  td_jobspec spec, idx;
  td_split *s, *si;
  uint8_t *x1, *x2, *xi;
  int32_t *lab1, *lab2, *li;
  uint64_t n;
  int exact = 0, jpegs = 0;
  char text[1024];

  if (access(FMNIST "/train-images-idx3-ubyte.gz", R_OK) != 0)
    return; /* Debian's dataset-fashion-mnist is not installed */
  ck_assert_int_eq(imgw_fmnist(FMNIST "/train-images-idx3-ubyte.gz",
                               FMNIST "/train-labels-idx1-ubyte.gz", tmp_path("train"), 300, 10,
                               0), 0);
  ck_assert_int_eq(imgw_fmnist(FMNIST "/t10k-images-idx3-ubyte.gz",
                               FMNIST "/t10k-labels-idx1-ubyte.gz", tmp_path("test"), 100, 10,
                               0), 0);
  images_job(&spec, "[1, 28, 28]", 10, NULL);
  ck_assert_msg(td_dataset_check(&spec, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
  ck_assert_int_eq(td_split_open(&spec, TD_SPLIT_TRAIN, &s, errbuf, sizeof(errbuf)), 0);
  n = td_split_count(s);
  ck_assert_uint_eq(n, 300);
  x1 = malloc(n * 784);
  x2 = malloc(n * 784);
  lab1 = malloc(n * sizeof(*lab1));
  lab2 = malloc(n * sizeof(*lab2));
  ck_assert_int_eq(td_split_load(s, x1, lab1, 10, 1, errbuf, sizeof(errbuf)), 0);
  ck_assert_int_eq(td_split_load(s, x2, lab2, 10, 3, errbuf, sizeof(errbuf)), 0);
  ck_assert_mem_eq(x1, x2, n * 784);
  ck_assert_mem_eq(lab1, lab2, n * sizeof(*lab1));
  td_split_close(s);

  snprintf(text, sizeof(text),
           "model: {input: [28, 28], layers: [{type: flatten}, {type: dense, units: 10}]}\n"
           "data: {train: {images: %s/train-images-idx3-ubyte.gz, labels: "
           "%s/train-labels-idx1-ubyte.gz, limit: 300}, test: {images: a, labels: b}}\n"
           "train: {batch_size: 1, epochs: 1, optimizer: sgd}\n", FMNIST, FMNIST);
  ck_assert_int_eq(td_jobspec_parse(text, strlen(text), "/", &idx, errbuf, sizeof(errbuf)), 0);
  ck_assert_int_eq(td_split_open(&idx, TD_SPLIT_TRAIN, &si, errbuf, sizeof(errbuf)), 0);
  xi = malloc(300 * 784);
  li = malloc(300 * sizeof(*li));
  ck_assert_int_eq(td_split_load(si, xi, li, 10, 1, errbuf, sizeof(errbuf)), 0);
  td_split_close(si);
  /* each folder sample is some IDX sample of its class: PNG ones exactly,
   * JPEG ones (every 10th file) near */
  for (uint64_t k = 0; k < n; k++) {
    int found = 0;
    for (int i = 0; i < 300 && !found; i++) {
      if (li[i] != lab1[k])
        continue;
      if (memcmp(xi + (size_t)i * 784, x1 + k * 784, 784) == 0) {
        found = 1;
        exact++;
      } else if (i % 10 == 9) {
        long d = 0;
        for (int e = 0; e < 784; e++)
          d += labs((long)xi[(size_t)i * 784 + e] - x1[k * 784 + e]);
        if (d < 784 * 6) {
          found = 1;
          jpegs++;
        }
      }
    }
    ck_assert_msg(found, "folder sample %llu matches no IDX sample of class %u",
                  (unsigned long long)k, (unsigned)lab1[k]);
  }
  ck_assert_int_eq(exact, 270);
  ck_assert_int_eq(jpegs, 30);
  free(x1);
  free(x2);
  free(lab1);
  free(lab2);
  free(xi);
  free(li);
}
END_TEST

/* ---- the real traind-loader ---- */

static void loader_exe(char *buf, size_t cap) {
  const char *root = getenv("TD_BUILD_ROOT");

  snprintf(buf, cap, "%s/daemon/traind-loader", root != NULL ? root : ".");
}

/* Every batch's bytes, in order, from one loader run. */
struct stream {
  uint8_t *bytes;
  size_t n, cap;
  uint8_t *train0; /* epoch 0's train samples, each followed by its label */
  size_t ntrain0;
  uint32_t dtype, sample_bytes, batches;
  char message[1024];
};

/* cache: through the shared decoded copy (else --no-cache) */
static void run_loader(struct stream *out, size_t slot, const char *e, const char *b,
                       const char *budget, int cache) {
  char exe[PATH_MAX], ring[64];
  td_ring *r;
  pid_t pid;
  int status;

  memset(out, 0, sizeof(*out));
  loader_exe(exe, sizeof(exe));
  ck_assert_msg(access(exe, X_OK) == 0, "%s is not built", exe);
  snprintf(ring, sizeof(ring), "/traind-test-img-%d", (int)getpid());
  td_ring_unlink(ring);
  ck_assert_int_eq(td_ring_create(ring, 4, slot), 0);
  ck_assert_int_eq(td_ring_open(ring, &r), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    const char *argv[16] = {exe, "--job", tmp_path("job.tdj"), "--ring", ring,
                            "--start-epoch", e, "--start-batch", b, "--threads", "2"};
    int n = 11;
    if (!cache)
      argv[n++] = "--no-cache";
    if (budget != NULL) {
      argv[n++] = "--memory-budget";
      argv[n++] = budget;
    }
    argv[n] = NULL;
    execv(exe, (char **)argv);
    _exit(127);
  }
  td_ring_set_peer(r, pid);
  for (;;) {
    const td_batch_hdr *h;
    const void *sl;
    size_t len, k;

    ck_assert_int_eq(td_ring_read_begin(r, &sl, &len), 0);
    h = sl;
    if (h->kind == TD_BATCH_END || h->kind == TD_BATCH_ERROR) {
      if (h->kind == TD_BATCH_ERROR)
        td_batch_error_text(h, len, out->message, sizeof(out->message));
      ck_assert_msg(h->kind == TD_BATCH_END, "loader: %s", out->message);
      td_ring_read_end(r);
      break;
    }
    out->dtype = h->dtype;
    out->sample_bytes = h->sample_bytes;
    out->batches++;
    k = (size_t)h->count * (h->sample_bytes + h->target_bytes) + 8;
    if (out->n + k > out->cap) {
      out->cap = (out->n + k) * 2;
      out->bytes = realloc(out->bytes, out->cap);
      ck_assert_ptr_nonnull(out->bytes);
    }
    /* the kind and index, not the epoch: passes of two epochs compare */
    memcpy(out->bytes + out->n, &h->kind, 4);
    memcpy(out->bytes + out->n + 4, &h->index, 4);
    memcpy(out->bytes + out->n + 8, td_batch_pixels(h), k - 8);
    out->n += k;
    if (h->kind == TD_BATCH_TRAIN && h->epoch == 0) {
      out->train0 = realloc(out->train0, (out->ntrain0 + h->count) * (h->sample_bytes + 1));
      ck_assert_ptr_nonnull(out->train0);
      for (uint32_t j = 0; j < h->count; j++, out->ntrain0++) {
        uint8_t *at = out->train0 + out->ntrain0 * (h->sample_bytes + 1);
        memcpy(at, td_batch_pixels(h) + (size_t)j * h->sample_bytes, h->sample_bytes);
        at[h->sample_bytes] = (uint8_t)((const int32_t *)(const void *)td_batch_targets(h))[j];
      }
    }
    td_ring_read_end(r);
  }
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  td_ring_close(r);
  td_ring_unlink(ring);
}

/* A resumed loader sends the same augmented bytes as the first run did
 * from that point: augmentation is keyed by (seed, epoch, sample), never
 * by how the run got there. */
START_TEST(test_loader_augment) {
  td_jobspec spec;
  struct stream a, b, c;
  size_t slot;

  for (int cls = 0; cls < 3; cls++)
    for (int i = 0; i < 12; i++) {
      uint8_t px[8 * 8 * 3];
      char name[64];
      for (int k = 0; k < (int)sizeof(px); k++)
        px[k] = (uint8_t)(cls * 70 + i * 5 + k);
      snprintf(name, sizeof(name), "train/c%d", cls);
      mkdirs(name);
      snprintf(name, sizeof(name), "train/c%d/%02d.png", cls, i);
      ck_assert_int_eq(imgw_png(tmp_path(name), px, 8, 8, 3, 0), 0);
      snprintf(name, sizeof(name), "test/c%d", cls);
      mkdirs(name);
      snprintf(name, sizeof(name), "test/c%d/%02d.jpg", cls, i);
      ck_assert_int_eq(imgw_jpeg(tmp_path(name), px, 8, 8, 3, 90), 0);
    }
  images_job(&spec, "[3, 6, 6]", 3,
             "  validation: {count: 6}\n"
             "  augment: {random_crop: {padding: 2}, horizontal_flip: true,\n"
             "            normalize: {mean: [0.5, 0.4, 0.3], std: [0.2, 0.2, 0.2]}}\n");
  spec.epochs = 3;
  ck_assert_int_eq(td_jobdesc_save(tmp_path("job.tdj"), &spec, errbuf, sizeof(errbuf)), 0);
  slot = td_batch_bytes(8, 3 * 6 * 6 * 4, sizeof(int32_t));
  run_loader(&a, slot, "0", "0", NULL, 0);
  ck_assert_int_eq(a.dtype, TD_DTYPE_F32);
  ck_assert_uint_eq(a.sample_bytes, 3 * 6 * 6 * 4);
  /* per epoch: 30 train samples (4 batches), 6 validation (1), 36 test (5) */
  ck_assert_uint_eq(a.batches, 3 * (4 + 1 + 5));
  run_loader(&b, slot, "0", "0", NULL, 0);
  ck_assert_uint_eq(a.n, b.n);
  ck_assert_mem_eq(a.bytes, b.bytes, a.n);
  /* decoded into the shared copy (the cache key of a folder) instead of its own memory */
  free(b.bytes);
  free(b.train0);
  run_loader(&b, slot, "0", "0", NULL, 1);
  ck_assert_uint_eq(a.n, b.n);
  ck_assert_mem_eq(a.bytes, b.bytes, a.n);
  /* from epoch 1, batch 2: the first run's tail, to the byte */
  run_loader(&c, slot, "1", "2", NULL, 0);
  {
    size_t per_sample = a.sample_bytes + sizeof(int32_t), epoch_bytes = a.n / 3;
    size_t skip = epoch_bytes + 2 * (8 * per_sample + 8);
    ck_assert_uint_eq(c.n, a.n - skip);
    ck_assert_mem_eq(c.bytes, a.bytes + skip, c.n);
    /* the validation and test passes are alike each epoch; the train
     * passes are not (another order, other crops and flips) */
    size_t train_bytes = 3 * (8 * per_sample + 8) + (6 * per_sample + 8);
    ck_assert(memcmp(a.bytes, a.bytes + epoch_bytes, train_bytes) != 0);
    ck_assert_mem_eq(a.bytes + train_bytes, a.bytes + epoch_bytes + train_bytes,
                     epoch_bytes - train_bytes);
  }
  free(a.bytes);
  free(b.bytes);
  free(c.bytes);
  free(a.train0);
  free(b.train0);
  free(c.train0);
}
END_TEST

static size_t g_rec;
static int rec_cmp(const void *a, const void *b) { return memcmp(a, b, g_rec); }

/* Streaming (a budget smaller than the data) reads image folders in
 * windows on the loader's threads, in another order; each sample is still
 * augmented by its own number, so an epoch's train samples are the same
 * set of bytes as when the folder is decoded whole. */
START_TEST(test_loader_stream_augment) {
  td_jobspec spec;
  struct stream a, b;
  size_t slot;

  for (int cls = 0; cls < 3; cls++)
    for (int i = 0; i < 500; i++) {
      static uint8_t px[32 * 32 * 3];
      char name[64];
      for (int k = 0; k < (int)sizeof(px); k++)
        px[k] = (uint8_t)(cls * 70 + i * 3 + k * 7);
      snprintf(name, sizeof(name), "train/c%d", cls);
      if (i == 0)
        mkdirs(name);
      snprintf(name, sizeof(name), "train/c%d/%03d.png", cls, i);
      ck_assert_int_eq(imgw_png(tmp_path(name), px, 32, 32, 3, 0), 0);
      if (i < 2) {
        snprintf(name, sizeof(name), "test/c%d", cls);
        mkdirs(name);
        snprintf(name, sizeof(name), "test/c%d/%03d.png", cls, i);
        ck_assert_int_eq(imgw_png(tmp_path(name), px, 32, 32, 3, 0), 0);
      }
    }
  images_job(&spec, "[3, 32, 32]", 3,
             "  augment: {random_crop: {padding: 4}, horizontal_flip: true}\n");
  ck_assert_int_eq(td_jobdesc_save(tmp_path("job.tdj"), &spec, errbuf, sizeof(errbuf)), 0);
  slot = td_batch_bytes(8, 3 * 32 * 32, sizeof(int32_t));
  run_loader(&a, slot, "0", "0", NULL, 0);
  /* 1500 samples of 3 KiB do not fit 8.6 MB beside the loader's own 4 MiB
   * and its two threads' buffers: windows of about 30 samples */
  run_loader(&b, slot, "0", "0", "8600000", 0);
  ck_assert_uint_eq(a.ntrain0, 1500);
  ck_assert_uint_eq(b.ntrain0, 1500);
  g_rec = 3 * 32 * 32 + 1;
  ck_assert_msg(memcmp(a.train0, b.train0, 1500 * g_rec) != 0,
                "the streaming order is the in-memory one");
  qsort(a.train0, 1500, g_rec, rec_cmp);
  qsort(b.train0, 1500, g_rec, rec_cmp);
  ck_assert_mem_eq(a.train0, b.train0, 1500 * g_rec);
  free(a.bytes);
  free(b.bytes);
  free(a.train0);
  free(b.train0);
}
END_TEST

static Suite *imgfolder_suite(void) {
  Suite *s = suite_create("imgfolder");
  TCase *t = tcase_create("images");

  tcase_set_timeout(t, 60);
  tcase_add_checked_fixture(t, tmp_setup, tmp_teardown);
  tcase_add_test(t, test_resize);
  tcase_add_test(t, test_decode_kinds);
  tcase_add_test(t, test_decode_bad);
  tcase_add_test(t, test_folder_order);
  tcase_add_test(t, test_folder_errors);
  tcase_add_test(t, test_augment_keys);
  tcase_add_test(t, test_augment_apply);
  tcase_add_test(t, test_fmnist_folder);
  tcase_add_test(t, test_loader_augment);
  tcase_add_test(t, test_loader_stream_augment);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(imgfolder_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
