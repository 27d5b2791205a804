/* Who is asking (auth.c): a MUNGE credential, verified. */
#ifndef TD_AUTH_H
#define TD_AUTH_H

#include <stddef.h>
#include <time.h>

#include "config.h"
#include "traind.h"

/* td_auth_lookup runs on the loop: 0 with *out (a credential
 * decoded before and not expired, or anyone at all for a traind of one
 * person), TD_ENOENT when cred must be decoded first (td_auth_decode, which
 * blocks on munged: call it on a worker thread, one at a time, then
 * td_auth_remember on the loop), TD_EAUTH with the reason in err. */
int td_auth_open(const td_config *cfg, td_auth **out, char *err, size_t errlen);
void td_auth_close(td_auth *a);
int td_auth_multi_user(const td_auth *a);
int td_auth_lookup(td_auth *a, const char *cred, size_t len, td_ident *out, char *err,
                   size_t errlen);
int td_auth_decode(td_auth *a, const char *cred, td_ident *out, time_t *expires, char *err,
                   size_t errlen);
void td_auth_remember(td_auth *a, const char *cred, size_t len, const td_ident *id,
                      time_t expires);
/* Whether who may see the details of, cancel and re-prioritise j. */
static inline int td_ident_owns(const td_ident *who, const td_job *j) {
  return who->admin || who->uid == j->uid;
}

#endif
