/* The durable state (db.c): the job table (WAL, synchronous=FULL), the
 * users' fair-share usage, retention's removals and admins' device
 * overrides, in one SQLite database under the state directory. */
#ifndef TD_DB_H
#define TD_DB_H

#include <stddef.h>
#include <stdint.h>

#include "traind.h"

int td_db_open(const char *path, td_db **out, char *err, size_t errlen);
void td_db_close(td_db *db);
/* Insert a new job and its idempotency key in one durable transaction;
 * assigns j->id.  TD_ENOSPC when the disk is full. */
int td_db_insert(td_db *db, td_job *j, const char *key);
/* The job id recorded for an idempotency key: 0 or TD_ENOENT. */
int td_db_find_key(td_db *db, const char *key, uint64_t *id);
/* The job file text recorded at submit, malloc'd into *out (the daemon
 * does not keep it in memory: 10,000 queued jobs would hold 10,000 copies).
 * TD_ENOENT for an unknown id. */
int td_db_job_yaml(td_db *db, uint64_t id, char **out);
/* The job's description as recorded at submit (proto/jobdesc.h), malloc'd
 * into *out, *len bytes: `submit --continue` makes a job from it.
 * TD_ENOENT for an unknown id or a job recorded before descriptions. */
int td_db_job_desc(td_db *db, uint64_t id, unsigned char **out, size_t *len);
/* Record, in one transaction, the descriptions made for jobs from before
 * descriptions (those of jobs[] whose desc is set: made from their YAML as
 * they were loaded), then free them. */
int td_db_job_desc_record(td_db *db, td_job **jobs, size_t n);
/* Persist the job's state, device, times and results, with a history row. */
int td_db_update(td_db *db, const td_job *j, const char *detail);
/* Call fn for every job in id order; fn takes ownership of the job.  A
 * queued or running job comes with its description (desc), or with its
 * YAML (yaml) if it has none yet. */
int td_db_load(td_db *db, int (*fn)(void *arg, td_job *j), void *arg);

/* Fair share and retention. */
/* Call fn for every user's recorded usage (decayed to at_ms). */
int td_db_usage_load(td_db *db,
                     int (*fn)(void *arg, uint32_t uid, const char *name, double usage,
                               int64_t at_ms),
                     void *arg);
/* Write the users marked dirty, as of at_ms, in one transaction; they are
 * marked clean only if it commits. */
int td_db_usage_save(td_db *db, td_user *users, size_t n, int64_t at_ms);
/* Remove the jobs, their history and their idempotency keys in one
 * transaction. */
int td_db_delete_jobs(td_db *db, const uint64_t *ids, size_t n);

/* Admins' device overrides, durable before the `device` reply says
 * ok.  budget 0 and drain 0 remove the device's row. */
int td_db_override_save(td_db *db, const char *name, uint64_t budget, int drain);
/* Call fn for every recorded override. */
int td_db_override_load(td_db *db,
                        int (*fn)(void *arg, const char *name, uint64_t budget, int drain),
                        void *arg);

#endif
