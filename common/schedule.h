/* Learning-rate schedules as pure functions of the optimiser step, matching
 * torch.optim.lr_scheduler (1.13) stepped once per optimiser step:
 *
 *   constant   lr
 *   step       StepLR(step_size, gamma): lr * gamma^(t / step_size)
 *   cosine     CosineAnnealingLR(T_max, eta_min):
 *              eta_min + (lr - eta_min) (1 + cos(pi t / T_max)) / 2
 *              (periodic past T_max, as PyTorch's is)
 *
 * A linear warm-up composes with any of them as PyTorch's
 * SequentialLR([LinearLR(start_factor, 1.0, W), schedule], milestones=[W])
 * does: for t < W the rate is lr * (start + (1 - start) t / W), and from W
 * on it is the schedule's, counted from W (t - W).
 *
 * t is the number of optimiser updates done before this one: the first
 * update uses lr(0).  No state, so a resumed job needs only its step count.
 */
#ifndef TD_SCHEDULE_H
#define TD_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  TD_SCHED_CONSTANT = 0,
  TD_SCHED_STEP,
  TD_SCHED_COSINE,
  TD_SCHED__COUNT
} td_sched_kind;

typedef struct td_schedule {
  td_sched_kind kind;
  double lr;             /* the base rate (the optimiser's lr) */
  uint64_t step_size;    /* step: > 0 */
  double gamma;          /* step: > 0 */
  uint64_t t_max;        /* cosine: > 0 */
  double eta_min;        /* cosine: the floor, >= 0 */
  uint64_t warmup_steps; /* 0: no warm-up */
  double warmup_start;   /* the factor of lr at step 0 of the warm-up: (0, 1] */
} td_schedule;

/* TD_EINVAL with a message naming the field for parameters PyTorch would
 * refuse (or that make no rate: NaN, negative); 0 if s can be used. */
int td_schedule_check(const td_schedule *s, char *err, size_t errlen);

/* The rate for the update after t updates.  s must have passed the check. */
double td_schedule_lr(const td_schedule *s, uint64_t t);

/* "constant", "step", "cosine"; "?" outside the enum. */
const char *td_sched_kind_name(td_sched_kind k);
/* The inverse; TD_EINVAL for an unknown name. */
int td_sched_kind_parse(const char *name, td_sched_kind *out);

#endif
