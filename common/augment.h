/* Augmentation on the loader (data.augment): random crop with padding,
 * horizontal flip and per-channel normalisation of one decoded sample, as
 * the loader copies it into a batch.
 *
 * What a sample becomes is a pure function of (job seed, epoch, sample
 * number in its split): a resumed run, a re-planned one or another thread
 * count sees the same bytes, and each epoch draws anew.  The random ops
 * touch train samples only; normalize applies to every split (a model
 * trained on normalised samples must be evaluated on them) and makes the
 * samples float32: (x * scale - mean[c]) / std[c], scale 1/255 for uint8
 * as on the device (data.normalize) and 1 for the other types.  The
 * padding is zeros, before normalisation, as torchvision's
 * RandomCrop(padding=p) then Normalize.
 */
#ifndef TD_AUGMENT_H
#define TD_AUGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "jobspec.h"

typedef struct td_aug {
  td_augment cfg;
  uint64_t seed;
  uint32_t c, h, w;       /* the sample as [c, h, w] ([h, w]: c = 1; flat: h = 1) */
  td_dtype in, out;       /* element types before and after */
  uint32_t in_bytes, out_bytes;
  int active;             /* 0: a sample travels as it was decoded */
} td_aug;

/* The type samples of stored type `in` travel in: float32 with normalize. */
td_dtype td_aug_out_dtype(const td_jobspec *spec, td_dtype in);

/* Set a up for spec's samples of type in.  TD_EINVAL (message in err) for
 * a type normalize cannot read or a spec the parser would refuse. */
int td_aug_init(td_aug *a, const td_jobspec *spec, td_dtype in, char *err, size_t errlen);

/* Write sample `index` of `epoch` (in_bytes at src) as out_bytes at dst;
 * train: whether the random ops apply.  src and dst must not overlap. */
void td_aug_apply(const td_aug *a, const void *src, void *dst, uint32_t epoch, uint64_t index,
                  int train);

#endif
