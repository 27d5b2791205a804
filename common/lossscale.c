#include "lossscale.h"

#include <math.h>
#include <stdio.h>

#include "error.h"

td_lossscale_cfg td_lossscale_defaults(void) {
  return (td_lossscale_cfg){.enabled = true, .init_scale = 65536.0f, .growth_factor = 2.0f,
                            .backoff_factor = 0.5f, .growth_interval = 2000};
}

static int bad(char *err, size_t errlen, const char *what) {
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, "%s", what);
  return TD_EINVAL;
}

static bool scale_ok(float v) { return v > 0.0f && isfinite(v); }

int td_lossscale_check(const td_lossscale_cfg *cfg, char *err, size_t errlen) {
  if (!cfg->enabled)
    return 0;
  if (!scale_ok(cfg->init_scale))
    return bad(err, errlen, "loss scale: init_scale must be a finite number > 0");
  if (!(cfg->growth_factor > 1.0f && isfinite(cfg->growth_factor)))
    return bad(err, errlen, "loss scale: growth_factor must be a finite number > 1");
  if (!(cfg->backoff_factor > 0.0f && cfg->backoff_factor < 1.0f))
    return bad(err, errlen, "loss scale: backoff_factor must be in (0, 1)");
  if (cfg->growth_interval == 0)
    return bad(err, errlen, "loss scale: growth_interval must be > 0");
  return 0;
}

void td_lossscale_init(td_lossscale *s, const td_lossscale_cfg *cfg) {
  *s = (td_lossscale){.cfg = *cfg, .scale = cfg->enabled ? cfg->init_scale : 1.0f};
}

int td_lossscale_restore(td_lossscale *s, float scale, uint32_t good_steps) {
  if (!scale_ok(scale) || (s->cfg.enabled && good_steps >= s->cfg.growth_interval))
    return TD_EINVAL;
  s->scale = s->cfg.enabled ? scale : 1.0f;
  s->good_steps = s->cfg.enabled ? good_steps : 0;
  return 0;
}

float td_lossscale_scale(const td_lossscale *s) { return s->scale; }

float td_lossscale_inv(const td_lossscale *s) {
  /* GradScaler: scale.double().reciprocal().float() */
  return (float)(1.0 / (double)s->scale);
}

bool td_lossscale_update(td_lossscale *s, bool found_inf) {
  if (!s->cfg.enabled)
    return true;
  if (found_inf) {
    s->scale *= s->cfg.backoff_factor;
    s->good_steps = 0;
    s->skipped++;
    return false;
  }
  if (++s->good_steps == s->cfg.growth_interval) {
    float grown = s->scale * s->cfg.growth_factor;
    if (isfinite(grown))
      s->scale = grown;
    s->good_steps = 0;
  }
  return true;
}
