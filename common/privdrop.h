/* Becoming the user a job belongs to.
 *
 * traind-worker and traind-loader take --as-user NAME:UID:GID and, before
 * they open any file, become that user for good: supplementary groups from
 * the user database (initgroups, as slurmd does), then real, effective and
 * saved gid and uid, checked afterwards, with the ambient capabilities
 * cleared and no_new_privs set.  A traind that is not root runs every job
 * as itself: there the identity must be its own.
 */
#ifndef TD_PRIVDROP_H
#define TD_PRIVDROP_H

#include <stddef.h>
#include <stdint.h>

#define TD_IDENTITY_NAME_MAX 32 /* bytes of a user name, as td_job's owner */

typedef struct td_identity {
  char name[TD_IDENTITY_NAME_MAX + 1];
  uint32_t uid, gid;
} td_identity;

/* "NAME:UID:GID" (decimal ids below 2^32 - 1, which means "none" to the
 * kernel; a name of 1..32 bytes without ':', '/', spaces or control
 * characters, not starting with '-').  *out is written only on success;
 * TD_EINVAL otherwise. */
int td_identity_parse(const char *s, td_identity *out);

/* Become id for good.  As root (effective uid 0) with a target other than
 * root: the name must be the user database's name for id->uid; then
 * initgroups(name, gid), setresgid, setresuid, and the checks that every
 * uid and gid is the target and that setuid(0) and seteuid(0) now fail.
 * Otherwise nothing changes and the target must be the process's real uid.
 * TD_EINVAL (a wrong identity) or TD_EIO (a failed call), with a message in
 * err naming the user and what failed.  The process may be half changed
 * after a failure: it must exit. */
int td_privdrop_become(const td_identity *id, char *err, size_t errlen);

#endif
