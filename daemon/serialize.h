/* Jobs, devices and plans as msgpack maps, for the replies and events
 * (server.c, planreport.c).  Each writes into a map already begun. */
#ifndef TD_SERIALIZE_H
#define TD_SERIALIZE_H

#include "plan.h"
#include "proto.h"
#include "traind.h"

/* The fields of a plan, into m. */
void td_ser_plan_fields(td_map *m, const td_plan *pl);
/* "plan": the memory plan, into the map m. */
void td_ser_plan(td_map *m, const td_plan *pl);
/* The fields of a `list` row; `show` sends these and more. */
void td_ser_job_fields(td_map *m, const td_job *j);
/* One item of the array "jobs" just begun in list. */
void td_ser_job_row(td_map *list, const td_job *j);
/* "job": everything about j, into the map m. */
void td_ser_job(td_map *m, const td_job *j);
/* A device's entry, into the map e just begun; it ends it. */
void td_ser_device(td_map *e, const td_device *dev);

#endif
