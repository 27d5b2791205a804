#include "privdrop.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "error.h"

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#endif
#ifndef PR_CAP_AMBIENT_CLEAR_ALL
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

static int parse_id(const char *s, size_t n, uint32_t *out) {
  uint64_t v = 0;

  if (n == 0 || n > 10)
    return TD_EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return TD_EINVAL;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  /* (uid_t)-1 tells setresuid "leave it": never a user. */
  if (v >= UINT32_MAX)
    return TD_EINVAL;
  *out = (uint32_t)v;
  return 0;
}

int td_identity_parse(const char *s, td_identity *out) {
  const char *c1, *c2;
  td_identity id;
  size_t n;

  if (s == NULL || (c1 = strchr(s, ':')) == NULL || (c2 = strchr(c1 + 1, ':')) == NULL)
    return TD_EINVAL;
  n = (size_t)(c1 - s);
  if (n == 0 || n > TD_IDENTITY_NAME_MAX || s[0] == '-')
    return TD_EINVAL;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] <= ' ' || s[i] == '/' || s[i] == 0x7f)
      return TD_EINVAL;
  memcpy(id.name, s, n);
  id.name[n] = '\0';
  if (parse_id(c1 + 1, (size_t)(c2 - c1 - 1), &id.uid) < 0 ||
      parse_id(c2 + 1, strlen(c2 + 1), &id.gid) < 0)
    return TD_EINVAL;
  *out = id;
  return 0;
}

static int fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
  va_list ap;

  if (err != NULL && errlen > 0) {
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

/* The user database must agree that name is uid: the groups initgroups
 * grants come from the name, so a name that is someone else's would hand
 * the job that person's groups. */
static int check_name(const td_identity *id, char *err, size_t errlen) {
  struct passwd pw, *res = NULL;
  long max = sysconf(_SC_GETPW_R_SIZE_MAX);
  size_t cap = max > 0 ? (size_t)max : 16384;
  char *buf = malloc(cap);
  int rc;

  if (buf == NULL)
    return TD_ENOMEM;
  rc = getpwnam_r(id->name, &pw, buf, cap, &res);
  if (res == NULL) {
    rc = fail(err, errlen, TD_EINVAL, "cannot run as %s (uid %u): %s", id->name, id->uid,
              rc != 0 ? strerror(rc) : "no such user");
  } else if (pw.pw_uid != id->uid) {
    rc = fail(err, errlen, TD_EINVAL, "cannot run as %s (uid %u): the user %s is uid %u",
              id->name, id->uid, id->name, (unsigned)pw.pw_uid);
  } else {
    rc = 0;
  }
  free(buf);
  return rc;
}

int td_privdrop_become(const td_identity *id, char *err, size_t errlen) {
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  int rc;

  if (geteuid() != 0 || id->uid == 0) {
    /* Nothing to drop: a personal traind runs its jobs as itself. */
    if (id->uid != (uint32_t)getuid())
      return fail(err, errlen, TD_EINVAL,
                  "cannot run as %s (uid %u): this process runs as uid %u without root's "
                  "rights to change users", id->name, id->uid, (unsigned)getuid());
    return 0;
  }
  if ((rc = check_name(id, err, errlen)) < 0)
    return rc;
  if (initgroups(id->name, (gid_t)id->gid) < 0)
    return fail(err, errlen, TD_EIO, "cannot run as %s: initgroups(%s, %u): %s", id->name,
                id->name, id->gid, strerror(errno));
  /* Groups first: once the uid is gone, so is the right to change them. */
  if (setresgid((gid_t)id->gid, (gid_t)id->gid, (gid_t)id->gid) < 0)
    return fail(err, errlen, TD_EIO, "cannot run as %s: setresgid(%u): %s", id->name, id->gid,
                strerror(errno));
  if (setresuid((uid_t)id->uid, (uid_t)id->uid, (uid_t)id->uid) < 0)
    return fail(err, errlen, TD_EIO, "cannot run as %s: setresuid(%u): %s", id->name, id->uid,
                strerror(errno));
  if (getresuid(&ru, &eu, &su) < 0 || getresgid(&rg, &eg, &sg) < 0)
    return fail(err, errlen, TD_EIO, "cannot run as %s: getresuid/getresgid: %s", id->name,
                strerror(errno));
  if (ru != id->uid || eu != id->uid || su != id->uid || rg != id->gid || eg != id->gid ||
      sg != id->gid)
    return fail(err, errlen, TD_EIO,
                "cannot run as %s: after the change uids are %u/%u/%u and gids %u/%u/%u, not "
                "%u and %u", id->name, (unsigned)ru, (unsigned)eu, (unsigned)su, (unsigned)rg,
                (unsigned)eg, (unsigned)sg, id->uid, id->gid);
  if (setuid(0) == 0 || seteuid(0) == 0)
    return fail(err, errlen, TD_EIO, "cannot run as %s: root could be regained after the change",
                id->name);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
    return fail(err, errlen, TD_EIO, "cannot run as %s: clearing the ambient capabilities: %s",
                id->name, strerror(errno));
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    return fail(err, errlen, TD_EIO, "cannot run as %s: prctl(PR_SET_NO_NEW_PRIVS): %s",
                id->name, strerror(errno));
  return 0;
}
