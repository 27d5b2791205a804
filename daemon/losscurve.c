/* A job's loss curve, bounded by merging pairs (losscurve.h). */
#include <stdlib.h>

#include "error.h"
#include "losscurve.h"

#define FIRST_CAP 64

/* Halve the points: each pair becomes one at the later step with the mean
 * loss; an odd last point, still filling, stays as it is. */
static void halve(td_losscurve *c) {
  uint32_t out = 0, i;

  for (i = 0; i + 1 < c->n; i += 2)
    c->pts[out++] = (td_losspoint){c->pts[i + 1].step,
                                   (c->pts[i].loss + c->pts[i + 1].loss) / 2};
  if (i < c->n)
    c->pts[out++] = c->pts[i];
  c->n = out;
  c->per_point *= 2;
}

int td_losscurve_add(td_losscurve *c, uint64_t step, double loss) {
  td_losspoint *last;

  while (c->n > 0 && c->pts[c->n - 1].step >= step) {
    c->n--;
    c->pend_count = 0;
  }
  if (c->per_point == 0)
    c->per_point = 1;
  last = c->n > 0 ? &c->pts[c->n - 1] : NULL;
  if (last != NULL && c->pend_count > 0 && c->pend_count < c->per_point) {
    /* the running mean of the point being filled */
    last->loss += (loss - last->loss) / (double)(c->pend_count + 1);
    last->step = step;
    c->pend_count++;
    return 0;
  }
  if (c->n == TD_LOSSCURVE_POINTS)
    halve(c);
  if (c->n == c->cap) {
    uint32_t cap = c->cap == 0 ? FIRST_CAP : c->cap * 2;
    td_losspoint *p;

    if (cap > TD_LOSSCURVE_POINTS)
      cap = TD_LOSSCURVE_POINTS;
    if ((p = realloc(c->pts, cap * sizeof(*p))) == NULL)
      return TD_ENOMEM;
    c->pts = p;
    c->cap = cap;
  }
  c->pts[c->n++] = (td_losspoint){step, loss};
  c->pend_count = 1;
  return 0;
}

void td_losscurve_clear(td_losscurve *c) {
  free(c->pts);
  *c = (td_losscurve){0};
}
