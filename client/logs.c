/* logs: a job's log, its tail or followed to the end.  traind reads the log
 * file in bounded pieces and has no push for logs, so following it is asking
 * again from the offset the last reply gave. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"

#define FOLLOW_NAP_S 0.25 /* between replies that brought nothing */

typedef struct piece {
  td_msg *reply;
  const char *data;
  size_t len;
  uint64_t offset, size;
  int done;
} piece;

typedef struct log_out {
  int tty, json;
  char carry[4]; /* a UTF-8 sequence cut by the end of the last piece */
  size_t ncarry;
} log_out;

static int fetch(cli *c, uint64_t id, int64_t offset, uint64_t max, piece *out) {
  const msgpack_object *root;
  td_msg *reply = NULL;
  td_pack p;
  int rc;

  td_pack_init(&p);
  td_pack_request(&p, "logs", 3);
  td_pack_kv_u64(&p, "id", id);
  td_pack_kv_i64(&p, "offset", offset);
  td_pack_kv_u64(&p, "max", max);
  rc = cli_call(c, &p, &reply, NULL);
  td_pack_free(&p);
  if (rc != 0)
    return rc;
  root = td_msg_root(reply);
  out->done = 0;
  if (td_obj_str(root, "data", &out->data, &out->len) != 0)
    rc = cli_malformed("logs", "data");
  else if (td_obj_u64(root, "offset", &out->offset) != 0 || out->offset > INT64_MAX)
    rc = cli_malformed("logs", "offset");
  else if (td_obj_u64(root, "size", &out->size) != 0)
    rc = cli_malformed("logs", "size");
  else if (td_obj_bool(root, "done", &out->done) != 0)
    rc = cli_malformed("logs", "done");
  if (rc != 0) {
    td_msg_free(reply);
    return rc;
  }
  out->reply = reply;
  return 0;
}

/* The bytes as they are, except on a terminal, where they are made safe. */
static int put(log_out *o, const piece *pc, int final) {
  size_t n = o->ncarry + pc->len, ready;
  char *buf;

  if (o->json) {
    cli_json_print_reply(stdout, td_msg_root(pc->reply));
    return 0;
  }
  if (!o->tty) {
    fwrite(pc->data, 1, pc->len, stdout);
    return 0;
  }
  buf = malloc(n > 0 ? n : 1);
  if (buf == NULL) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  memcpy(buf, o->carry, o->ncarry);
  memcpy(buf + o->ncarry, pc->data, pc->len);
  ready = cli_sanitize_log(buf, n, final);
  fwrite(buf, 1, ready, stdout);
  o->ncarry = n - ready; /* at most 3: cli_sanitize_log keeps no more */
  memcpy(o->carry, buf + ready, o->ncarry);
  free(buf);
  return 0;
}

static void flush_carry(log_out *o) {
  piece none = {.data = "", .len = 0};

  if (o->ncarry > 0 && !o->json && o->tty)
    put(o, &none, 1);
}

int cli_cmd_logs(cli *c, const cli_args *a) {
  log_out o = {.json = c->json, .tty = !c->json && isatty(STDOUT_FILENO)};
  struct sigaction old_int;
  double lo = 1, hi = 1 << 20;
  uint64_t id, max, end, want;
  piece pc = {0};
  int64_t off;
  int rc, more, probe;

  rc = cli_arg_id(a->pos[0], &id);
  if (rc != 0)
    return rc;
  cli_field_bounds("logs", "max", &lo, &hi);
  max = (uint64_t)hi;
  if (a->follow)
    cli_catch_sigint(&old_int);

  /* The tail in one piece when it fits one; otherwise learn the size
   * first (one byte from the end) and read up to it. */
  probe = a->tail == 0 || a->tail > max;
  rc = fetch(c, id, -1, probe ? 1 : a->tail, &pc);
  if (rc != 0)
    goto restore;
  if (!c->json && pc.size == 0 && !a->follow)
    cli_fail(pc.done ? "job %" PRIu64 " has no log: it ended without writing to it"
                     : "job %" PRIu64 " has no log yet: a job starts its log when it starts "
                       "running (`traind-client logs -f %" PRIu64 "` waits for it)", id, id);
  if (probe) {
    off = a->tail == 0 ? (int64_t)pc.offset
                       : (int64_t)(pc.size > a->tail ? pc.size - a->tail : 0);
    end = pc.offset;
    more = 1;
  } else {
    rc = put(&o, &pc, 0);
    off = (int64_t)pc.offset;
    end = pc.offset;
    more = pc.len > 0;
  }
  td_msg_free(pc.reply);
  pc.reply = NULL;

  /* Following ends when a reply says the job is done and brings nothing. */
  while (rc == 0 && (a->follow ? more || !pc.done : (uint64_t)off < end && more)) {
    if (a->follow) {
      fflush(stdout);
      if (!more)
        cli_nap(FOLLOW_NAP_S);
      if (cli_interrupted) {
        rc = CLI_EXIT_INTERRUPTED;
        break;
      }
    }
    want = a->follow || end - (uint64_t)off > max ? max : end - (uint64_t)off;
    rc = fetch(c, id, off, want, &pc);
    if (rc != 0)
      break;
    if (pc.len > 0 || (pc.done && a->follow))
      rc = put(&o, &pc, 0);
    off = (int64_t)pc.offset;
    more = pc.len > 0;
    td_msg_free(pc.reply);
    pc.reply = NULL;
  }
  flush_carry(&o);

restore:
  if (a->follow)
    sigaction(SIGINT, &old_int, NULL);
  return rc;
}
