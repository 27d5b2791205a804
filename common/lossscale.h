/* Dynamic loss scaling for fp16 training, as torch.cuda.amp.GradScaler does
 * it: the loss (so every gradient) is multiplied by the scale; a step whose
 * gradients hold an inf or NaN is skipped and the scale multiplied by the
 * backoff factor; after growth_interval good steps in a row the scale is
 * multiplied by the growth factor (unless that would overflow to inf).
 *
 * A small state machine with no device work: the worker checks the
 * gradients on the device (td_backend_check_finite), unscales them
 * (td_backend_scale by 1 / scale), and tells the scaler what it found.
 * scale and good_steps are what a checkpoint keeps.
 */
#ifndef TD_LOSSSCALE_H
#define TD_LOSSSCALE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct td_lossscale_cfg {
  bool enabled;              /* false: scale 1, every step taken (fp32, bf16) */
  float init_scale;          /* 65536 */
  float growth_factor;       /* 2: > 1 */
  float backoff_factor;      /* 0.5: in (0, 1) */
  uint32_t growth_interval;  /* 2000: > 0 */
} td_lossscale_cfg;

typedef struct td_lossscale {
  td_lossscale_cfg cfg;
  float scale;
  uint32_t good_steps;       /* GradScaler's growth tracker */
  uint64_t skipped;          /* steps skipped so far */
} td_lossscale;

/* GradScaler's defaults, enabled. */
td_lossscale_cfg td_lossscale_defaults(void);

/* TD_EINVAL with a message naming the field for a configuration GradScaler
 * would refuse or that cannot work (a scale that is not a finite number > 0). */
int td_lossscale_check(const td_lossscale_cfg *cfg, char *err, size_t errlen);

/* Start at cfg's init_scale (1 when disabled).  cfg must have passed the check. */
void td_lossscale_init(td_lossscale *s, const td_lossscale_cfg *cfg);

/* Resume from a checkpoint's scale and growth tracker: TD_EINVAL for a scale
 * that is not a finite number > 0 or a tracker not below the interval
 * (nothing changes then). */
int td_lossscale_restore(td_lossscale *s, float scale, uint32_t good_steps);

/* The factor to multiply the loss gradient by, and its inverse for
 * unscaling (both 1 when disabled). */
float td_lossscale_scale(const td_lossscale *s);
float td_lossscale_inv(const td_lossscale *s);

/* After a step's backward pass: found_inf says the gradients held an inf or
 * NaN.  Returns whether to apply the optimiser update (false: skip it), and
 * moves the scale for the next step. */
bool td_lossscale_update(td_lossscale *s, bool found_inf);

#endif
