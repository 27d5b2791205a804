/* The report of the `plan` request, from a parsed job: its plan at the
 * whole batch and at its smallest micro-batch, on each device (only: the
 * one named, "" every one) what admission would choose, now and when the
 * device is empty, per layer, its largest tensors and what each remedy
 * would save. */
#ifndef TD_PLANREPORT_H
#define TD_PLANREPORT_H

#include "jobspec.h"
#include "proto.h"
#include "traind.h"

/* The reply into rep; 0, or a negative code with err set (a plan that
 * overflows). */
int td_planreport(const td_daemon *d, const td_jobspec *spec, const char *only, td_pack *rep,
                  char *err, size_t errlen);

#endif
