/* Who is asking: identities from MUNGE credentials, as Slurm takes them.
 *
 * A client puts a credential that munged made for its uid in every request
 * ("cred").  Decoding one asks munged (about 140 us, and munged refuses a
 * credential it has seen before), so traind decodes each credential once,
 * on a libuv worker thread, and keeps what it learnt until the credential
 * expires: a client that sends the same credential again is the same
 * process that munged vouched for, and costs a hash lookup.  A credential
 * that fell out of the cache (traind restarted, or the cache was full)
 * comes back from munged as replayed: the client then makes a new one.
 *
 * A traind for one person (multi_user off) takes every request as its own
 * user's: its sockets are private to that user (mode 0600 in a 0700
 * directory), so nobody else can ask.
 */
#include <errno.h>
#include <grp.h>
#include <munge.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "error.h"
#include "log.h"
#include "traind.h"
#include "util.h"

#define TD_AUTH_SETS 1024
#define TD_AUTH_WAYS 4
#define TD_AUTH_GROUPS_MAX 256

typedef struct td_auth_entry {
  uint64_t hash;
  char *cred;              /* NULL: free */
  size_t len;
  time_t expires;          /* wall clock: the credential's encode time + TTL */
  td_ident id;
} td_auth_entry;

struct td_auth {
  munge_ctx_t ctx;         /* used by one decode at a time (td_server serialises them) */
  int multi_user;
  gid_t admin_gid;
  int have_admin_group;
  td_ident self;           /* traind's own user: everyone, for one person */
  td_auth_entry cache[TD_AUTH_SETS][TD_AUTH_WAYS];
};

static uint64_t td__hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */

  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

/* Name, primary group and whether uid administers traind.  Runs on a
 * worker thread (NSS may ask the network), or once at start. */
static int td__describe(const td_auth *a, uint32_t uid, uint32_t gid, td_ident *out,
                        char *err, size_t errlen) {
  struct passwd pw, *res = NULL;
  gid_t groups[TD_AUTH_GROUPS_MAX];
  int ngroups = TD_AUTH_GROUPS_MAX;
  char buf[4096];

  memset(out, 0, sizeof(*out));
  out->uid = uid;
  out->gid = gid;
  if (getpwuid_r((uid_t)uid, &pw, buf, sizeof(buf), &res) != 0 || res == NULL) {
    snprintf(err, errlen, "uid %u has no entry in the user database; traind runs jobs only "
             "for users it can name", uid);
    return TD_EAUTH;
  }
  if (td_strlcpy(out->name, pw.pw_name, sizeof(out->name)) < 0) {
    snprintf(err, errlen, "the user name of uid %u is longer than %zu bytes", uid,
             sizeof(out->name) - 1);
    return TD_EAUTH;
  }
  out->admin = uid == 0 || uid == a->self.uid;
  if (!out->admin && a->have_admin_group &&
      getgrouplist(pw.pw_name, (gid_t)gid, groups, &ngroups) >= 0)
    for (int i = 0; i < ngroups; i++)
      out->admin |= groups[i] == a->admin_gid;
  return 0;
}

int td_auth_open(const td_config *cfg, td_auth **out, char *err, size_t errlen) {
  td_auth *a = calloc(1, sizeof(*a));
  int rc;

  if (a == NULL)
    return TD_ENOMEM;
  a->multi_user = td_config_multi_user(cfg);
  a->self.uid = (uint32_t)getuid();
  if (cfg->admin_group[0] != '\0') {
    struct group gr, *res = NULL;
    char buf[4096];

    if (getgrnam_r(cfg->admin_group, &gr, buf, sizeof(buf), &res) != 0 || res == NULL) {
      snprintf(err, errlen, "admin_group '%s' is not a group on this system; create it "
               "(groupadd %s) or change the configuration", cfg->admin_group, cfg->admin_group);
      rc = TD_ECONFIG;
      goto fail;
    }
    a->admin_gid = gr.gr_gid;
    a->have_admin_group = 1;
  }
  if ((rc = td__describe(a, (uint32_t)getuid(), (uint32_t)getgid(), &a->self, err, errlen)) < 0)
    goto fail;
  if (!a->multi_user && getuid() == 0) {
    snprintf(err, errlen, "traind runs as root, so it serves several users and must know "
             "who asks: set multi_user to auto or true and run munged");
    rc = TD_ECONFIG;
    goto fail;
  }
  if (a->multi_user) {
    if ((a->ctx = munge_ctx_create()) == NULL) {
      rc = TD_ENOMEM;
      goto fail;
    }
    if (cfg->munge_socket[0] != '\0' &&
        munge_ctx_set(a->ctx, MUNGE_OPT_SOCKET, cfg->munge_socket) != EMUNGE_SUCCESS) {
      snprintf(err, errlen, "cannot use munge_socket %s: %s", cfg->munge_socket,
               munge_ctx_strerror(a->ctx));
      rc = TD_ECONFIG;
      goto fail;
    }
  }
  *out = a;
  return 0;

fail:
  td_auth_close(a);
  return rc;
}

void td_auth_close(td_auth *a) {
  if (a == NULL)
    return;
  for (size_t s = 0; s < TD_AUTH_SETS; s++)
    for (size_t w = 0; w < TD_AUTH_WAYS; w++)
      free(a->cache[s][w].cred);
  if (a->ctx != NULL)
    munge_ctx_destroy(a->ctx);
  free(a);
}

int td_auth_multi_user(const td_auth *a) {
  return a->multi_user;
}

int td_auth_lookup(td_auth *a, const char *cred, size_t len, td_ident *out, char *err,
                   size_t errlen) {
  td_auth_entry *set;
  uint64_t h;
  time_t now;

  if (!a->multi_user) {
    *out = a->self;
    return 0;
  }
  if (cred == NULL || len == 0) {
    snprintf(err, errlen, "this traind serves several users, so every request must carry a "
             "MUNGE credential; traind-client adds one when munged is running (is munged "
             "running? `systemctl start munge`)");
    return TD_EAUTH;
  }
  h = td__hash(cred, len);
  set = a->cache[h % TD_AUTH_SETS];
  now = time(NULL);
  for (size_t w = 0; w < TD_AUTH_WAYS; w++) {
    td_auth_entry *e = &set[w];

    if (e->cred != NULL && e->hash == h && e->len == len && memcmp(e->cred, cred, len) == 0) {
      if (e->expires < now) {
        snprintf(err, errlen, "the MUNGE credential expired; make a new one (traind-client "
                 "does this by itself)");
        return TD_EAUTH;
      }
      *out = e->id;
      return 0;
    }
  }
  return TD_ENOENT;
}

int td_auth_decode(td_auth *a, const char *cred, td_ident *out, time_t *expires, char *err,
                   size_t errlen) {
  munge_err_t e;
  uid_t uid;
  gid_t gid;
  time_t encoded = 0;
  int ttl = 0;

  e = munge_decode(cred, a->ctx, NULL, NULL, &uid, &gid);
  switch (e) {
  case EMUNGE_SUCCESS:
    break;
  case EMUNGE_CRED_REPLAYED:
    snprintf(err, errlen, "the MUNGE credential was used before (replayed); make a new one "
             "(traind-client does this by itself)");
    return TD_EAUTH;
  case EMUNGE_CRED_EXPIRED:
  case EMUNGE_CRED_REWOUND:
    snprintf(err, errlen, "the MUNGE credential %s; check that the clocks of this machine "
             "and the client's agree, and make a new one",
             e == EMUNGE_CRED_EXPIRED ? "has expired" : "is from the future");
    return TD_EAUTH;
  case EMUNGE_SOCKET:
  case EMUNGE_TIMEOUT:
    snprintf(err, errlen, "traind cannot reach munged to check the credential (%s); is munged "
             "running on traind's machine? `systemctl start munge`",
             munge_ctx_strerror(a->ctx));
    return TD_EAUTH;
  default:
    snprintf(err, errlen, "the MUNGE credential is not valid here (%s); are the client and "
             "traind using the same munge key?", munge_ctx_strerror(a->ctx));
    return TD_EAUTH;
  }
  munge_ctx_get(a->ctx, MUNGE_OPT_ENCODE_TIME, &encoded);
  munge_ctx_get(a->ctx, MUNGE_OPT_TTL, &ttl);
  *expires = encoded + ttl;
  return td__describe(a, (uint32_t)uid, (uint32_t)gid, out, err, errlen);
}

void td_auth_remember(td_auth *a, const char *cred, size_t len, const td_ident *id,
                      time_t expires) {
  uint64_t h = td__hash(cred, len);
  td_auth_entry *set = a->cache[h % TD_AUTH_SETS], *victim = &set[0];
  char *copy = malloc(len);

  if (copy == NULL)
    return; /* the client is asked for a new credential next time */
  memcpy(copy, cred, len);
  /* The set's free way, else the one that expires first. */
  for (size_t w = 0; w < TD_AUTH_WAYS; w++) {
    if (set[w].cred == NULL) {
      victim = &set[w];
      break;
    }
    if (set[w].expires < victim->expires)
      victim = &set[w];
  }
  free(victim->cred);
  victim->hash = h;
  victim->cred = copy;
  victim->len = len;
  victim->expires = expires;
  victim->id = *id;
}
