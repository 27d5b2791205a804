/* The client's nanomsg sockets: one REQ socket to the job socket, one SUB
 * socket to the status socket for submit --wait. */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <munge.h>
#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>
#include <nanomsg/reqrep.h>

#include "client.h"
#include "error.h"
#include "util.h"

#define REPLY_ERR_MAX 1024

static const char start_hint[] =
  "is traind running? start it with `traind` or `systemctl start traind`";

void cli_timeout_fail(const char *addr, double timeout_s) {
  cli_fail("traind at %s did not answer within %g s", addr, timeout_s);
}

static int timeout_ms(double s) {
  if (s <= 0)
    return -1; /* nanomsg: forever */
  if (s * 1000.0 >= (double)INT_MAX)
    return INT_MAX;
  return (int)(s * 1000.0 + 0.5);
}

/* nanomsg connects in the background, so a missing or dead ipc socket
 * would otherwise look like a timeout: probe the path first. */
static int check_ipc(const char *what, const char *addr, double timeout_s) {
  const char *path;
  struct sockaddr_un sa;
  struct timeval tv;
  struct stat st;
  size_t len;
  int fd, rc, err, is_job_socket = strcmp(what, "traind") == 0;

  if (strncmp(addr, "ipc://", 6) != 0)
    return 0;
  path = addr + 6;
  if (stat(path, &st) != 0) {
    if (errno == EACCES)
      cli_fail("cannot reach %s at %s: permission denied (the socket's owner and group "
               "decide who may use traind; ask its administrator for access)", what, addr);
    else if (errno == ENOENT && is_job_socket)
      cli_fail("cannot reach %s at %s: no such socket (%s)", what, addr, start_hint);
    else if (errno == ENOENT)
      cli_fail("cannot reach %s at %s: no such socket", what, addr);
    else
      cli_fail("cannot reach %s at %s: %s", what, addr, strerror(errno));
    return CLI_EXIT_UNREACHABLE;
  }
  if (!S_ISSOCK(st.st_mode)) {
    cli_fail("cannot reach %s at %s: %s is not a socket", what, addr, path);
    return CLI_EXIT_UNREACHABLE;
  }
  len = strlen(path);
  if (len >= sizeof(sa.sun_path))
    return 0; /* nanomsg reports it */
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  /* a full backlog makes connect() block; bound it by --timeout */
  if (timeout_s > 0) {
    tv.tv_sec = (time_t)timeout_s;
    tv.tv_usec = (suseconds_t)((timeout_s - (double)tv.tv_sec) * 1e6);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, len);
  rc = connect(fd, (const struct sockaddr *)&sa, sizeof(sa));
  err = errno;
  close(fd);
  if (rc == 0)
    return 0;
  if (err == ECONNREFUSED) {
    cli_fail("cannot reach %s at %s: connection refused%s%s%s", what, addr,
             is_job_socket ? " (" : "", is_job_socket ? start_hint : "", is_job_socket ? ")" : "");
    return CLI_EXIT_UNREACHABLE;
  }
  if (err == EACCES || err == EPERM) {
    cli_fail("cannot reach %s at %s: permission denied (the socket's owner and group "
             "decide who may use traind; ask its administrator for access)", what, addr);
    return CLI_EXIT_UNREACHABLE;
  }
  return 0; /* anything else: let nanomsg try and time out if it must */
}

static int open_socket(const char *what, const char *addr, int proto, double timeout_s,
                       int *out) {
  int s, ms = timeout_ms(timeout_s), rc;

  rc = check_ipc(what, addr, timeout_s);
  if (rc != 0)
    return rc;
  s = nn_socket(AF_SP, proto);
  if (s < 0) {
    cli_fail("cannot create a socket: %s", nn_strerror(nn_errno()));
    return CLI_EXIT_UNREACHABLE;
  }
  if (proto == NN_SUB) {
    ms = 1000; /* wake up to poll "show" when events stop */
    if (nn_setsockopt(s, NN_SUB, NN_SUB_SUBSCRIBE, "job.", 4) < 0)
      goto fail_opt;
  } else if (nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDTIMEO, &ms, sizeof(ms)) < 0) {
    goto fail_opt;
  }
  if (nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &ms, sizeof(ms)) < 0)
    goto fail_opt;
  {
    /* nanomsg drops, silently, replies over its 1 MiB default; ours may be
     * as large as the protocol allows (a long list). */
    int max = (int)TD_PROTO_MAX_MSG + 4096;
    if (nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, &max, sizeof(max)) < 0)
      goto fail_opt;
  }
  if (nn_connect(s, addr) < 0) {
    int err = nn_errno();

    nn_close(s);
    if (err == EINVAL || err == EPROTONOSUPPORT) {
      cli_fail("invalid %s address '%s' (expected ipc:///path or tcp://host:port)",
               what, addr);
      return CLI_EXIT_USAGE;
    }
    cli_fail("cannot reach %s at %s: %s", what, addr, nn_strerror(err));
    return CLI_EXIT_UNREACHABLE;
  }
  *out = s;
  return 0;

fail_opt:
  cli_fail("cannot set up a socket: %s", nn_strerror(nn_errno()));
  nn_close(s);
  return CLI_EXIT_UNREACHABLE;
}

static int io_fail(const cli *c, int err) {
  if (err == ETIMEDOUT || err == EAGAIN) {
    cli_timeout_fail(c->addr, c->timeout_s);
    return CLI_EXIT_UNREACHABLE;
  }
  if (err == EINTR)
    return CLI_EXIT_INTERRUPTED;
  cli_fail("cannot reach traind at %s: %s", c->addr, nn_strerror(err));
  return CLI_EXIT_UNREACHABLE;
}

#define CLI_MUNGE_SOCKET "/run/munge/munge.socket.2" /* libmunge's default */
#define CLI_CRED_REUSE_S 120.0 /* munged's default TTL is 300 s */

/* A credential from munged for our uid, or none (c->munge_err says why):
 * a traind of one person needs none, and one that serves several says
 * EAUTH, with our reason added. */
static void make_cred(cli *c) {
  const char *sock = c->munge_socket != NULL ? c->munge_socket : CLI_MUNGE_SOCKET;
  munge_ctx_t ctx;
  munge_err_t e;
  struct stat st;
  char *cred = NULL;

  free(c->cred);
  c->cred = NULL;
  /* libmunge retries a missing socket for seconds: look first. */
  if (stat(sock, &st) != 0) {
    snprintf(c->munge_err, sizeof(c->munge_err), "munged's socket %s: %s", sock,
             strerror(errno));
    return;
  }
  ctx = munge_ctx_create();
  if (ctx == NULL) {
    snprintf(c->munge_err, sizeof(c->munge_err), "out of memory");
    return;
  }
  if (c->munge_socket != NULL)
    munge_ctx_set(ctx, MUNGE_OPT_SOCKET, c->munge_socket);
  e = munge_encode(&cred, ctx, NULL, 0);
  if (e != EMUNGE_SUCCESS) {
    snprintf(c->munge_err, sizeof(c->munge_err), "munged at %s: %s", sock,
             munge_ctx_strerror(ctx));
  } else {
    c->cred = cred;
    c->cred_made = td_now_mono();
    c->munge_err[0] = '\0';
  }
  munge_ctx_destroy(ctx);
}

/* One round trip; 0 with *out and *code (0 or traind's error code, the
 * message in err), or an exit code with the message printed. */
static int roundtrip(cli *c, const td_pack *req, td_msg **out, int *code, char *err,
                     size_t errlen) {
  td_pack signed_req;
  const td_pack *send = req;
  void *buf = NULL;
  int n, rc;

  if (c->cred != NULL) {
    rc = td_pack_request_add(&signed_req, td_pack_data(req), td_pack_len(req), "cred", c->cred);
    if (rc != 0) {
      td_pack_free(&signed_req);
      cli_fail("cannot build the request: %s", td_strerror(rc));
      return CLI_EXIT_JOB;
    }
    send = &signed_req;
  }
  rc = 0;
  while (nn_send(c->req, td_pack_data(send), td_pack_len(send), 0) < 0) {
    if (nn_errno() != EINTR || cli_interrupted) {
      rc = io_fail(c, nn_errno());
      break;
    }
  }
  if (send == &signed_req)
    td_pack_free(&signed_req);
  if (rc != 0)
    return rc;
  while ((n = nn_recv(c->req, &buf, NN_MSG, 0)) < 0) {
    if (nn_errno() != EINTR || cli_interrupted)
      return io_fail(c, nn_errno());
  }
  err[0] = '\0';
  *code = 0;
  rc = td_proto_decode_reply(buf, (size_t)n, out, code, err, errlen);
  nn_freemsg(buf);
  if (rc < 0) {
    cli_sanitize(err);
    cli_fail("bad reply from traind at %s: %s", c->addr, err[0] != '\0' ? err : td_strerror(rc));
    return CLI_EXIT_REFUSED;
  }
  return 0;
}

int cli_call(cli *c, const td_pack *req, td_msg **reply, td_msg **err_reply) {
  char err[REPLY_ERR_MAX];
  td_msg *m = NULL;
  int rc, code = 0;

  rc = td_pack_error(req);
  if (rc != 0) {
    cli_fail("cannot build the request: %s", td_strerror(rc));
    return CLI_EXIT_JOB;
  }
  if (c->req < 0) {
    rc = open_socket("traind", c->addr, NN_REQ, c->timeout_s, &c->req);
    if (rc != 0)
      return rc;
  }
  if (c->cred == NULL || td_now_mono() - c->cred_made > CLI_CRED_REUSE_S)
    make_cred(c);
  rc = roundtrip(c, req, &m, &code, err, sizeof(err));
  if (rc == 0 && code == TD_EAUTH && c->cred != NULL) {
    /* traind restarted, or forgot it: one more try with a new one. */
    td_msg_free(m);
    m = NULL;
    make_cred(c);
    rc = roundtrip(c, req, &m, &code, err, sizeof(err));
  }
  if (rc != 0)
    return rc;
  if (code == TD_EAUTH && c->cred == NULL && c->munge_err[0] != '\0') {
    size_t n = strlen(err);
    snprintf(err + n, sizeof(err) - n, " (here: %s)", c->munge_err);
  }
  if (code < 0) {
    cli_sanitize(err);
    cli_fail("%s", err[0] != '\0' ? err : td_strerror(code));
    if (err_reply != NULL)
      *err_reply = m;
    else
      td_msg_free(m);
    return CLI_EXIT_REFUSED;
  }
  *reply = m;
  return 0;
}

int cli_subscribe(const cli *c, const char *addr, int *sock) {
  return open_socket("traind's status socket", addr, NN_SUB, c->timeout_s, sock);
}

void cli_close(cli *c) {
  if (c->req >= 0)
    nn_close(c->req);
  c->req = -1;
  free(c->cred);
  c->cred = NULL;
}
