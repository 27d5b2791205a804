/* traind error codes.
 *
 * One list gives the enum, the name sent on the wire and the message a
 * person reads.  Functions return 0 on success or a negative TD_E* code;
 * the caller decides what to log.
 */
#ifndef TD_ERROR_H
#define TD_ERROR_H

#define TD_ERRNO_MAP(X)                                                       \
  X(ENOMEM,   "out of host memory")                                           \
  X(EINVAL,   "invalid argument")                                             \
  X(EPROTO,   "malformed request")                                            \
  X(EVERSION, "unsupported protocol version")                                 \
  X(ETOOBIG,  "message or value exceeds its limit")                           \
  X(ENOENT,   "no such job or object")                                        \
  X(EJOBSPEC, "invalid job file")                                             \
  X(ECONFIG,  "invalid configuration")                                        \
  X(EDATA,    "invalid or unreadable dataset")                                \
  X(ENOFIT,   "job can never fit the device memory budget")                   \
  X(EOOM,     "device memory budget exhausted")                               \
  X(ESTATE,   "operation not valid in the job's current state")               \
  X(EIO,      "input/output error")                                           \
  X(EDB,      "job database error")                                           \
  X(ENOSPC,   "no space left on the state directory's disk")                  \
  X(ECONN,    "cannot reach traind")                                          \
  X(ETIMEDOUT,"timed out")                                                    \
  X(EAGAIN,   "resource temporarily unavailable, try again")                  \
  X(ECLOSED,  "stream closed")                                                \
  X(EBACKEND, "compute backend error")                                        \
  X(ECUDA,    "sticky CUDA error")                                            \
  X(EAUTH,    "the request's identity could not be verified")                 \
  X(EPERM,    "not allowed for this user")                                    \
  X(EINTERNAL,"internal error in traind (please report it)")

enum {
  TD_OK = 0,
  TD__ERR_BASE = -1000, /* keep clear of -errno values */
#define TD__ENUM(name, msg) TD_##name,
  TD_ERRNO_MAP(TD__ENUM)
#undef TD__ENUM
  TD__ERR_END
};

/* "ENOFIT"; "EUNKNOWN" for a code not in the list. */
const char *td_err_name(int err);
/* The human message for a code. */
const char *td_strerror(int err);
/* The code for a wire name, or TD_EINTERNAL if unknown. */
int td_err_from_name(const char *name);

#endif
