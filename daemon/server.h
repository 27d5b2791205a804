/* The sockets (server.c): requests on the job socket, events on the
 * status socket. */
#ifndef TD_SERVER_H
#define TD_SERVER_H

#include <stdint.h>

#include "traind.h"

int td_server_start(td_daemon *d, char *err, size_t errlen);
void td_server_stop(td_daemon *d);
void td_publish_state(td_daemon *d, const td_job *j);
void td_publish_progress(td_daemon *d, const td_job *j, double eta_s);
void td_publish_device(td_daemon *d, const td_device *dev);
void td_publish_oom(td_daemon *d, const td_job *j, const char *phase, uint64_t requested,
                    uint64_t free_bytes, uint32_t micro_batch);
void td_publish_replan(td_daemon *d, const td_job *j);
void td_publish_eval(td_daemon *d, const td_job *j, uint32_t epoch, double acc, double loss);

#endif
