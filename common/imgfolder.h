/* Image folders: the `images` data format, and the JPEG and PNG decoding
 * and resizing it does.
 *
 * data.train.images (and data.test.images) is a folder holding one folder
 * per class, as torchvision's ImageFolder and Keras'
 * image_dataset_from_directory read them.  The class folders are sorted by
 * name (byte order, as Python sorts str) and a class's label is its
 * position; names starting with '.' are skipped.  In each class folder the
 * files ending in .jpg, .jpeg or .png (any case) are the samples, sorted by
 * name; other files and folders inside are ignored.  The test folder must
 * hold the same class folders.
 *
 * Sample order: the classes interleaved in proportion to their sizes
 * (file i of a class of n files sits at (i + 0.5) / n of the way), so
 * that data.*.limit, the validation split (the train set's last samples)
 * and the loader's streaming windows each hold every class.
 *
 * A sample is decoded (libjpeg-turbo, libpng) by whichever loader thread
 * reads it, converted to the model's channels (model.input [H, W] or
 * [1, H, W]: gray, [3, H, W]: RGB; alpha dropped as PIL's convert("RGB")
 * drops it; color to gray as PIL's convert("L"): ITU-R 601 luma; 16-bit
 * PNG to 8 bits; palettes expanded), then resized to H x W (td_image_resize)
 * and stored as uint8 [C, H, W]: Pillow's values (tests/data/pil_check.py),
 * within 1 where it resizes in fixed point, except for 16-bit PNG (Pillow
 * clips them at 255) and large JPEG (decoded smaller first, see below).
 *
 * Opening a split lists the folders (no image is read), so the submit-time
 * check stays cheap; a bad image is found when the loader decodes it, and
 * its message names the file.
 */
#ifndef TD_IMGFOLDER_H
#define TD_IMGFOLDER_H

#include <stddef.h>
#include <stdint.h>

#define TD_IMAGE_MAX_FILE   ((uint64_t)64 << 20) /* bytes of one image file */
#define TD_IMAGE_MAX_PIXELS ((uint64_t)1 << 25)  /* width x height of one image as decoded
                                                    (a JPEG: after the DCT's scaling) */

/* Decode a JPEG or PNG image (told apart by its first bytes) of n bytes
 * into *pix (malloc'd, *w x *h pixels of `channels` bytes each, rows top
 * to bottom, channels interleaved), as channels 1 (gray) or 3 (RGB).
 * hint_w/hint_h (0: none) let a large JPEG decode at 1/2, 1/4 or 1/8 of
 * its size when that is still at least twice hint_w x hint_h (so resizing
 * still filters it; the result then differs a little from a whole decode's).  TD_EDATA with
 * "<path>: what is wrong" in err, TD_ENOMEM. */
int td_image_decode(const uint8_t *buf, size_t n, uint32_t channels, uint32_t hint_w,
                    uint32_t hint_h, const char *path, uint8_t **pix, uint32_t *w, uint32_t *h,
                    char *err, size_t errlen);

/* Resize interleaved pixels (sw x sh, ch channels) to planar [ch, dh, dw]
 * at dst: each output pixel is a weighted mean of the input pixels whose
 * centres lie within r of its centre (mapped into the input, half-pixel
 * centres), weights 1 - distance / r, r = 1 when enlarging (bilinear
 * interpolation, edges repeated) and the size ratio when shrinking (so
 * every input pixel counts: no aliasing), separately along x then y, as
 * PIL's BILINEAR does; rounded to nearest.  The same size is a copy.
 * TD_ENOMEM. */
int td_image_resize(const uint8_t *src, uint32_t sw, uint32_t sh, uint32_t ch, uint8_t *dst,
                    uint32_t dw, uint32_t dh);

/* Read the image file at dirfd/rel (path names it in messages), decode,
 * convert and resize it into dst as uint8 [channels, h, w]. */
int td_image_load(int dirfd, const char *rel, const char *path, uint32_t channels, uint32_t w,
                  uint32_t h, uint8_t *dst, char *err, size_t errlen);

#endif
