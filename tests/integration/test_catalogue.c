/* Every reply and status event a real traind sends, checked against the
 * catalogue (proto/proto.c, PROTOCOL.md): each field known and of its
 * type, each required field there.  The test drives every op, an error
 * reply with details (ENOFIT's plan), and a job that trains to the end,
 * and fails if any reply or event of the catalogue went unseen where it
 * must have been sent. */
#include <check.h>
#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

static th_daemon g_d = {.pid = -1};
static int g_sub = -1;
static char g_seen[64][32]; /* replies ("op" or "error") and topics checked */
static size_t g_nseen;

static void seen(const char *name) {
  for (size_t i = 0; i < g_nseen; i++)
    if (strcmp(g_seen[i], name) == 0)
      return;
  ck_assert_uint_lt(g_nseen, TD_ARRAY_SIZE(g_seen));
  snprintf(g_seen[g_nseen++], sizeof g_seen[0], "%s", name);
}

static int was_seen(const char *name) {
  for (size_t i = 0; i < g_nseen; i++)
    if (strcmp(g_seen[i], name) == 0)
      return 1;
  return 0;
}

/* Every event that has arrived, each checked; waits up to ms for the first. */
static void drain_events(int ms) {
  int timeout = ms;
  ck_assert(nn_setsockopt(g_sub, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout, sizeof timeout) == 0);
  for (;;) {
    void *buf = NULL;
    const char *topic;
    const void *body;
    size_t blen;
    td_msg *m;
    char err[512];
    int n = nn_recv(g_sub, &buf, NN_MSG, 0);
    if (n < 0)
      break;
    ck_assert_int_eq(td_event_split(buf, (size_t)n, &topic, &body, &blen), 0);
    ck_assert_msg(td_msg_decode(body, blen, &m, err, sizeof err) == 0, "event %s: %s", topic,
                  err);
    ck_assert_msg(td_proto_check_event(topic, td_msg_root(m), err, sizeof err) == 0,
                  "event %s: %s", topic, err);
    seen(topic);
    td_msg_free(m);
    nn_freemsg(buf);
    timeout = 0;
    ck_assert(nn_setsockopt(g_sub, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout, sizeof timeout) == 0);
  }
}

/* Send req as op, check the reply against the catalogue; *code is its
 * error code (0: ok).  The reply is returned (free it). */
static td_msg *call(const char *op, td_pack *req, int *code) {
  char err[1024] = "";
  td_msg *m = NULL;
  int s = th_connect(g_d.sock, 30000), rc;

  ck_assert(s >= 0);
  ck_assert_int_eq(td_pack_error(req), 0);
  rc = th_rpc_pack(s, req, &m, code, err, sizeof err);
  nn_close(s);
  td_pack_free(req);
  ck_assert_msg(rc == 0 && m != NULL, "%s: no reply: %s", op, td_strerror(rc));
  ck_assert_msg(td_proto_check_reply(op, td_msg_root(m), err, sizeof err) == 0,
                "%s's reply: %s", op, err);
  seen(*code == 0 ? op : "error");
  drain_events(0);
  return m;
}

static td_msg *call_ok(const char *op, td_pack *req) {
  int code = -1;
  td_msg *m = call(op, req, &code);
  ck_assert_msg(code == 0, "%s failed: %s", op, td_strerror(code));
  return m;
}

static td_msg *simple(const char *op, uint64_t id) {
  td_pack p;
  td_pack_init(&p);
  td_pack_request(&p, op, id ? 1 : 0);
  if (id)
    td_pack_kv_u64(&p, "id", id);
  return call_ok(op, &p);
}

static uint64_t submit(const char *yaml, const char *key, int *code) {
  td_pack p;
  td_msg *m;
  uint64_t id = 0;
  td_pack_init(&p);
  th_pack_submit(&p, yaml, "/tmp", key, NULL);
  m = call("submit", &p, code);
  if (*code == 0)
    ck_assert(td_obj_u64(td_msg_root(m), "id", &id) == 0);
  td_msg_free(m);
  return id;
}

static void job_state(uint64_t id, char *state, size_t cap) {
  td_msg *m = simple("show", id);
  const msgpack_object *job;
  ck_assert(td_obj_map(td_msg_root(m), "job", &job) == 0);
  ck_assert(td_obj_cstr(job, "state", state, cap) == 0);
  td_msg_free(m);
}

START_TEST(every_reply_and_event_matches_the_catalogue) {
  char yaml[2048], big[2048], addr[256], state[32] = "";
  td_pack p;
  td_msg *m;
  uint64_t id, id2;
  int code = -1, rc;

  ck_assert(th_daemon_init(&g_d, "256MiB", NULL, 0) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start (%s); see %s", td_strerror(rc), g_d.log);
  snprintf(addr, sizeof addr, "ipc://%s/status.sock", g_d.dir);
  g_sub = nn_socket(AF_SP, NN_SUB);
  ck_assert(g_sub >= 0);
  ck_assert(nn_setsockopt(g_sub, NN_SUB, NN_SUB_SUBSCRIBE, "", 0) == 0);
  ck_assert(nn_connect(g_sub, addr) >= 0);
  th_msleep(500); /* nanomsg connects in the background */

  td_msg_free(simple("info", 0));
  td_msg_free(simple("devices", 0));

  th_job_yaml(yaml, sizeof yaml, "catalogued", 64, 2, 3000, 64);
  td_pack_init(&p);
  td_pack_request(&p, "plan", 3);
  td_pack_kv_str(&p, "job", yaml);
  td_pack_kv_str(&p, "base_dir", "/tmp");
  td_pack_kv_str(&p, "sample_dtype", th_sample_dtype(yaml, "/tmp"));
  td_msg_free(call_ok("plan", &p));

  /* an error reply with details: the plan of a job that fits nowhere */
  th_job_yaml(big, sizeof big, "huge", 60000, 1, 100, 128); /* 2 x 188 MB of weights */
  submit(big, "key-huge", &code);
  ck_assert_int_eq(code, TD_ENOFIT);

  id = submit(yaml, "key-1", &code);
  ck_assert_int_eq(code, 0);
  submit(yaml, "key-1", &code); /* duplicate: the same reply, duplicate true */
  ck_assert_int_eq(code, 0);
  id2 = submit(yaml, "key-2", &code);
  ck_assert_int_eq(code, 0);

  td_pack_init(&p);
  td_pack_request(&p, "set-priority", 2);
  td_pack_kv_u64(&p, "id", id2);
  td_pack_kv_i64(&p, "priority", -5);
  td_msg_free(call_ok("set-priority", &p));

  td_pack_init(&p);
  td_pack_request(&p, "list", 0);
  td_msg_free(call_ok("list", &p));
  td_msg_free(simple("show", id));
  td_msg_free(simple("show", id2));
  td_msg_free(simple("logs", id));

  td_pack_init(&p);
  td_pack_request(&p, "device", 2);
  td_pack_kv_str(&p, "name", "cpu0");
  td_pack_kv_bool(&p, "drain", 0);
  td_msg_free(call_ok("device", &p));

  td_msg_free(simple("cancel", id2));

  for (int i = 0; i < 600 && strcmp(state, "succeeded") != 0; i++) {
    job_state(id, state, sizeof state);
    ck_assert_msg(strcmp(state, "failed") != 0 && strcmp(state, "cancelled") != 0,
                  "job %llu %s; see %s", (unsigned long long)id, state, g_d.log);
    drain_events(200);
  }
  ck_assert_msg(strcmp(state, "succeeded") == 0, "job still %s; see %s", state, g_d.log);
  td_msg_free(simple("logs", id));
  td_pack_init(&p);
  td_pack_request(&p, "list", 0);
  td_msg_free(call_ok("list", &p));
  /* the finished job continued, the new job cancelled at once */
  td_pack_init(&p);
  td_pack_request(&p, "continue", 3);
  td_pack_kv_u64(&p, "id", id);
  td_pack_kv_u64(&p, "epochs", 1);
  td_pack_kv_str(&p, "key", "key-continue");
  m = call_ok("continue", &p);
  ck_assert(td_obj_u64(td_msg_root(m), "id", &id2) == 0);
  td_msg_free(m);
  td_msg_free(simple("cancel", id2));

  /* plain error replies */
  td_pack_init(&p);
  td_pack_request(&p, "show", 1);
  td_pack_kv_u64(&p, "id", 9999);
  m = call("show", &p, &code);
  ck_assert_int_eq(code, TD_ENOENT);
  td_msg_free(m);
  td_pack_init(&p);
  td_pack_request(&p, "cancel", 1);
  td_pack_kv_u64(&p, "id", id);
  m = call("cancel", &p, &code);
  ck_assert_int_eq(code, TD_ESTATE);
  td_msg_free(m);
  drain_events(500);

  /* Every reply of the catalogue was seen, and every event a job that
   * trains to the end sends (job.oom and job.replan need a device that
   * runs short: checked when seen). */
  size_t n;
  const td_replydef *r = td_proto_replies(&n);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(was_seen(r[i].name), "no '%s' reply was seen", r[i].name);
  static const char *const must[] = {TD_TOPIC_JOB_STATE, TD_TOPIC_JOB_PROGRESS,
                                     TD_TOPIC_JOB_EVAL, TD_TOPIC_DEVICE};
  for (size_t i = 0; i < TD_ARRAY_SIZE(must); i++)
    ck_assert_msg(was_seen(must[i]), "no '%s' event was seen", must[i]);

  nn_close(g_sub);
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly; see %s", g_d.log);
  th_daemon_remove(&g_d);
}
END_TEST

static Suite *catalogue_suite(void) {
  Suite *s = suite_create("catalogue");
  TCase *tc = tcase_create("catalogue");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, every_reply_and_event_matches_the_catalogue);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(catalogue_suite(), 1); }
