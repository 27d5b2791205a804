/* A job's log for the `logs` request: at most max bytes from offset (a
 * negative or past-the-end offset: the tail), the offset to ask from
 * next, and whether the job has ended.  The log is opened without
 * following a link the job's user put in its place. */
#ifndef TD_LOGS_H
#define TD_LOGS_H

#include "proto.h"
#include "traind.h"

/* The reply to `logs` for j, whom the caller has authorised; 0 or
 * TD_ENOMEM. */
int td_logs_reply(const td_daemon *d, const td_job *j, const msgpack_object *req, td_pack *rep);

#endif
