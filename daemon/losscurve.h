/* A job's training loss so far, for `show`'s plot and `top`'s trend: at
 * most TD_LOSSCURVE_POINTS points however long the job runs.
 *
 * Each point is (step, loss): the global train batch (epoch x batches per
 * epoch + batch, as progress events count) and the loss the worker
 * reported there.  When the curve is full, neighbouring points merge in
 * pairs (the later step, the mean loss) and each later point stands for
 * twice as many reports as before, so the points stay evenly spread over
 * the whole run.  A report at a step the curve has already passed (a job
 * that resumed from an earlier checkpoint, or started over) first drops
 * the points from that step on: the curve is that of the run that counts.
 *
 * Kept in traind's memory only (grown as needed, 16 bytes a point): after
 * traind restarts, a job's curve starts again where it resumes.  The
 * whole history is in the job's TensorBoard files. */
#ifndef TD_LOSSCURVE_H
#define TD_LOSSCURVE_H

#include <stddef.h>
#include <stdint.h>

#define TD_LOSSCURVE_POINTS 512

typedef struct td_losspoint {
  uint64_t step;
  double loss;
} td_losspoint;

typedef struct td_losscurve {
  td_losspoint *pts; /* n of cap; NULL before the first report */
  uint32_t n, cap;
  uint32_t per_point;   /* reports each full point stands for: 1, 2, 4, ... */
  uint32_t pend_count;  /* reports in the point being filled (pts[n - 1]) */
} td_losscurve;

/* Add a report.  0, or TD_ENOMEM (the curve is unchanged). */
int td_losscurve_add(td_losscurve *c, uint64_t step, double loss);

/* Points in order of step: the last one may stand for fewer reports. */
static inline size_t td_losscurve_len(const td_losscurve *c) { return c->n; }

/* Frees the points and empties the curve. */
void td_losscurve_clear(td_losscurve *c);

#endif
