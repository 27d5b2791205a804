#include "schedule.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "util.h"

static const char *const kind_names[TD_SCHED__COUNT] = {
    [TD_SCHED_CONSTANT] = "constant",
    [TD_SCHED_STEP] = "step",
    [TD_SCHED_COSINE] = "cosine",
};

const char *td_sched_kind_name(td_sched_kind k) {
  return (unsigned)k < TD_SCHED__COUNT ? kind_names[k] : "?";
}

int td_sched_kind_parse(const char *name, td_sched_kind *out) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(kind_names); i++) {
    if (strcmp(name, kind_names[i]) == 0) {
      *out = (td_sched_kind)i;
      return 0;
    }
  }
  return TD_EINVAL;
}

static int bad(char *err, size_t errlen, const char *what) {
  if (err != NULL && errlen > 0)
    snprintf(err, errlen, "%s", what);
  return TD_EINVAL;
}

int td_schedule_check(const td_schedule *s, char *err, size_t errlen) {
  /* Written so that NaN fails every test. */
  if (!(s->lr >= 0.0 && isfinite(s->lr)))
    return bad(err, errlen, "lr must be a finite number >= 0");
  switch (s->kind) {
  case TD_SCHED_CONSTANT:
    break;
  case TD_SCHED_STEP:
    if (s->step_size == 0)
      return bad(err, errlen, "schedule step: step_size must be > 0");
    if (!(s->gamma > 0.0 && isfinite(s->gamma)))
      return bad(err, errlen, "schedule step: gamma must be a finite number > 0");
    break;
  case TD_SCHED_COSINE:
    if (s->t_max == 0)
      return bad(err, errlen, "schedule cosine: t_max must be > 0");
    if (!(s->eta_min >= 0.0 && isfinite(s->eta_min)))
      return bad(err, errlen, "schedule cosine: eta_min must be a finite number >= 0");
    break;
  default:
    return bad(err, errlen, "unknown schedule (expected constant, step or cosine)");
  }
  if (s->warmup_steps > 0 && !(s->warmup_start > 0.0 && s->warmup_start <= 1.0))
    return bad(err, errlen, "warmup start factor must be in (0, 1]");
  return 0;
}

double td_schedule_lr(const td_schedule *s, uint64_t t) {
  const double pi = 3.141592653589793;

  if (t < s->warmup_steps)
    return s->lr * (s->warmup_start +
                    (1.0 - s->warmup_start) * (double)t / (double)s->warmup_steps);
  t -= s->warmup_steps;
  switch (s->kind) {
  case TD_SCHED_STEP:
    return s->lr * pow(s->gamma, (double)(t / s->step_size));
  case TD_SCHED_COSINE:
    return s->eta_min +
           (s->lr - s->eta_min) * (1.0 + cos(pi * (double)t / (double)s->t_max)) / 2.0;
  default:
    return s->lr;
  }
}
