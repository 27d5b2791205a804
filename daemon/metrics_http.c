/* The Prometheus endpoint: libmicrohttpd on its own thread, serving the
 * page the loop last rendered (td_metrics_snapshot) at GET /metrics.
 *
 * This thread touches nothing of the daemon: it copies the page out under
 * a lock held for a memcpy.  Clients are bounded (connections, memory per
 * connection, an idle timeout), so a slow or hostile one holds a slot of
 * its own and nothing else. */
#include "metrics.h"

#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "error.h"
#include "log.h"

#define TD__HTTP_CONNECTIONS 16   /* Prometheus needs one per server scraping */
#define TD__HTTP_TIMEOUT_S 10     /* an idle connection is closed after this */
#define TD__HTTP_CONN_MEMORY 16384 /* a request's headers must fit in it */

/* The format's content type; Prometheus reads the version from it. */
#define TD__CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

static struct MHD_Daemon *td__mhd;

static enum MHD_Result td__reply(struct MHD_Connection *c, unsigned status, const char *body,
                                 size_t len, const char *type, int must_free) {
  struct MHD_Response *r;
  enum MHD_Result ret;

  r = MHD_create_response_from_buffer(len, (void *)body,
                                      must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
  if (r == NULL) {
    if (must_free)
      free((void *)body);
    return MHD_NO; /* MHD closes the connection */
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
    MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static enum MHD_Result td__on_request(void *cls, struct MHD_Connection *c, const char *url,
                                      const char *method, const char *version,
                                      const char *upload, size_t *upload_len, void **state) {
  static const char not_found[] = "not found: traind serves its metrics at /metrics\n";
  static const char not_allowed[] = "method not allowed: /metrics takes GET\n";
  static const char unavailable[] = "traind has no metrics page yet (out of memory?)\n";
  int get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
  char *page;
  size_t len = 0;

  (void)cls;
  (void)version;
  (void)upload;
  (void)upload_len;
  (void)state;
  /* Answered on the first call, before any body: whatever a client
   * uploads is never read into memory. */
  if (strcmp(url, "/metrics") != 0)
    return td__reply(c, MHD_HTTP_NOT_FOUND, not_found, sizeof(not_found) - 1, "text/plain",
                     0);
  if (!get)
    return td__reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed, sizeof(not_allowed) - 1,
                     "text/plain", 0);
  if ((page = td_metrics_snapshot(&len)) == NULL)
    return td__reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, unavailable, sizeof(unavailable) - 1,
                     "text/plain", 0);
  return td__reply(c, MHD_HTTP_OK, page, len, TD__CONTENT_TYPE, 1);
}

static void td__mhd_log(void *cls, const char *fmt, va_list ap) {
  char msg[512];
  size_t n;

  (void)cls;
  vsnprintf(msg, sizeof(msg), fmt, ap);
  n = strlen(msg);
  while (n > 0 && msg[n - 1] == '\n')
    msg[--n] = '\0';
  td_debug("metrics: %s", msg);
}

/* Bound here rather than by MHD, so that the error names the address and
 * the reason (a port taken, a sandbox without the address family). */
static int td__listen(const char *listen_addr, int *fdp, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  unsigned len;
  int fd, one = 1, rc;

  if ((rc = td_config_listen_addr(listen_addr, &ss, &len, err, errlen)) < 0)
    return rc;
  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    int sandbox = errno == EAFNOSUPPORT || errno == EPERM;

    snprintf(err, errlen, "cannot open a %s socket for %s: %s%s",
             ss.ss_family == AF_INET6 ? "IPv6" : "IPv4", listen_addr, strerror(errno),
             sandbox ? " (under systemd, README's Monitoring section says how to give traind's "
                       "unit the network it needs; metrics_listen: \"\" turns them off)"
                     : "");
    return sandbox ? TD_EPERM : TD_EIO;
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (ss.ss_family == AF_INET6)
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 64) < 0) {
    snprintf(err, errlen, "cannot listen on %s: %s%s", listen_addr, strerror(errno),
             errno == EADDRINUSE ? " (another program has that port: set metrics_listen to "
                                   "another, or \"\" for no metrics)"
                                 : "");
    close(fd);
    return TD_EIO;
  }
  *fdp = fd;
  return 0;
}

int td_metrics_http_start(const char *listen_addr, char *err, size_t errlen) {
  int fd, rc;

  if ((rc = td__listen(listen_addr, &fd, err, errlen)) < 0)
    return rc;
  td__mhd = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG, 0, NULL, NULL,
      td__on_request, NULL, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
      MHD_OPTION_CONNECTION_LIMIT, (unsigned)TD__HTTP_CONNECTIONS,
      MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)TD__HTTP_TIMEOUT_S,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)TD__HTTP_CONN_MEMORY,
      MHD_OPTION_EXTERNAL_LOGGER, td__mhd_log, NULL, MHD_OPTION_END);
  if (td__mhd == NULL) {
    close(fd);
    snprintf(err, errlen, "cannot start the HTTP server (libmicrohttpd) on %s", listen_addr);
    return TD_EIO;
  }
  return 0;
}

void td_metrics_http_stop(void) {
  if (td__mhd == NULL)
    return;
  /* Joins its thread and closes the listening socket. */
  MHD_stop_daemon(td__mhd);
  td__mhd = NULL;
}
