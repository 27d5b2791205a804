/* watch: a live tail of traind's status socket, one line per event.
 *
 * The status socket has no credentials (see proto/PROTOCOL.md), so this
 * shows what any subscriber sees; `show` is the authenticated view of a
 * job.  PUB drops messages for a subscriber that falls behind, and a slow
 * joiner misses what comes before its subscription: this is a tail, not a
 * record. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>

#include "client.h"
#include "error.h"
#include "util.h"

/* cli_subscribe takes every "job." topic; watch takes what it was asked
 * for, or everything (devices too). */
static int set_topics(int sub, const cli_args *a) {
  int i;

  if (nn_setsockopt(sub, NN_SUB, NN_SUB_UNSUBSCRIBE, "job.", 4) < 0)
    return -1;
  if (a->ntopics == 0)
    return nn_setsockopt(sub, NN_SUB, NN_SUB_SUBSCRIBE, "", 0);
  for (i = 0; i < a->ntopics; i++)
    if (nn_setsockopt(sub, NN_SUB, NN_SUB_SUBSCRIBE, a->topics[i], strlen(a->topics[i])) < 0)
      return -1;
  return 0;
}

/* "14:02:11.532" */
static void now_text(char *buf, size_t cap) {
  struct timeval tv;
  struct tm tm;
  time_t t;

  gettimeofday(&tv, NULL);
  t = tv.tv_sec;
  if (localtime_r(&t, &tm) == NULL || strftime(buf, cap, "%H:%M:%S", &tm) == 0) {
    snprintf(buf, cap, "?");
    return;
  }
  snprintf(buf + strlen(buf), cap - strlen(buf), ".%03ld", (long)(tv.tv_usec / 1000));
}

/* {"topic":"job.state","id":7,...}: the event's map without "v", the topic
 * first. */
static void print_json(const char *topic, const msgpack_object *m) {
  msgpack_object t = {.type = MSGPACK_OBJECT_STR};
  char *body = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&body, &len);

  if (f == NULL)
    return;
  cli_json_print_reply(f, m);
  if (fclose(f) != 0 || len < 3 || body[0] != '{') {
    free(body);
    return;
  }
  t.via.str.ptr = topic;
  t.via.str.size = (uint32_t)strlen(topic);
  fputs("{\"topic\":", stdout);
  cli_json_print(stdout, &t);
  fputs(body[1] == '}' ? "" : ",", stdout);
  fputs(body + 1, stdout);
  free(body);
}

/* 1 if the event was printed, 0 if it was not one (a newer daemon's
 * format, a damaged message). */
static int print_event(const cli *c, const void *buf, size_t len) {
  char err[256], line[1024], when[32];
  const void *body;
  const char *topic;
  size_t body_len;
  td_msg *msg = NULL;

  if (td_event_split(buf, len, &topic, &body, &body_len) != 0 ||
      td_msg_decode(body, body_len, &msg, err, sizeof(err)) != 0)
    return 0;
  if (td_msg_root(msg)->type != MSGPACK_OBJECT_MAP) {
    td_msg_free(msg);
    return 0;
  }
  if (c->json) {
    print_json(topic, td_msg_root(msg));
  } else {
    now_text(when, sizeof(when));
    cli_fmt_event(topic, td_msg_root(msg), line, sizeof(line));
    printf("%s %s\n", when, line);
  }
  fflush(stdout); /* a tail is read as it comes, often through a pipe */
  td_msg_free(msg);
  return 1;
}

int cli_cmd_watch(cli *c, const cli_args *a) {
  struct sigaction old_int;
  char *addr = NULL;
  uint64_t seen = 0;
  int sub = -1, rc;

  rc = cli_status_address(c, &addr);
  if (rc != 0)
    return rc;
  if (addr == NULL || addr[0] == '\0') {
    free(addr);
    cli_fail("traind names no status socket in its `info` reply; nothing to watch");
    return CLI_EXIT_JOB;
  }
  rc = cli_subscribe(c, addr, &sub);
  free(addr);
  if (rc != 0)
    return rc;
  if (set_topics(sub, a) < 0) {
    cli_fail("cannot subscribe to the status socket: %s", nn_strerror(nn_errno()));
    nn_close(sub);
    return CLI_EXIT_UNREACHABLE;
  }
  cli_catch_sigint(&old_int);
  while (a->count == 0 || seen < a->count) {
    void *buf = NULL;
    int n;

    if (cli_interrupted) {
      rc = CLI_EXIT_INTERRUPTED;
      break;
    }
    n = nn_recv(sub, &buf, NN_MSG, 0); /* wakes each second, for Ctrl-C */
    if (n >= 0) {
      seen += (uint64_t)print_event(c, buf, (size_t)n);
      nn_freemsg(buf);
    } else if (nn_errno() != ETIMEDOUT && nn_errno() != EAGAIN && nn_errno() != EINTR) {
      cli_fail("lost the status socket: %s", nn_strerror(nn_errno()));
      rc = CLI_EXIT_UNREACHABLE;
      break;
    }
  }
  sigaction(SIGINT, &old_int, NULL);
  nn_close(sub);
  return rc;
}
