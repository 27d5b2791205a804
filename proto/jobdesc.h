/* The job description: a td_jobspec as traind stores it and hands it to
 * the job's worker and loader, in binary (msgpack), versioned.
 *
 * A job file is parsed once, at submit (common/jobspec.c, YAML), and the
 * facts traind learns then (the samples' stored type) are filled in; from
 * there on the job travels as this description, which nobody parses as
 * YAML again.  One map {"v": TD_JOBDESC_VERSION, field: value, ...}, the
 * version first; every td_jobspec field is a key (nested structs are maps,
 * arrays are arrays of their used elements), left out when it is zero.
 * proto/INTERNAL.md describes it.
 *
 * The decoder checks what the YAML parser checks: every field's type and
 * bounds, every count, every string's length, and the rules across fields
 * (the layers' shapes chain, the schedule, the loss scale); a description
 * of another version is refused with TD_EVERSION, anything else wrong with
 * TD_EJOBSPEC, and err names the field.
 */
#ifndef TD_JOBDESC_H
#define TD_JOBDESC_H

#include <stddef.h>

#include "jobspec.h"
#include "proto.h"

#define TD_JOBDESC_VERSION 1
#define TD_JOBDESC_MAX (256u << 10) /* bytes a description may be */
#define TD_JOBDESC_FILE "job.tdj"   /* its name in a job's directory */

/* Pack spec into p (td_pack_init'ed by the caller, freed by the caller).
 * 0, or TD_ENOMEM. */
int td_jobdesc_encode(const td_jobspec *spec, td_pack *p);
/* The same into a buffer of its own, malloc'd (*out, *len: written only on
 * success), for keeping.  0 or TD_ENOMEM. */
int td_jobdesc_encode_alloc(const td_jobspec *spec, unsigned char **out, size_t *len);

/* Decode len bytes into *out (written only on success).  TD_EVERSION for
 * another version, TD_EJOBSPEC (TD_ETOOBIG for over TD_JOBDESC_MAX bytes,
 * TD_ENOMEM) for the rest, with a message naming the field in err. */
int td_jobdesc_decode(const void *buf, size_t len, td_jobspec *out, char *err, size_t errlen);

/* Read a description file and decode it; err says which file. */
int td_jobdesc_load(const char *path, td_jobspec *out, char *err, size_t errlen);

/* Write spec's description to path (created or truncated, mode 0644): for
 * tools and tests that start a worker or loader by hand.  traind writes
 * the job's own with more care (daemon/supervise.c). */
int td_jobdesc_save(const char *path, const td_jobspec *spec, char *err, size_t errlen);

#endif
