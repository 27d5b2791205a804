/* The hostile corpus sent to the real traind over its job socket: each
 * protocol file as a raw message, each job file as a submit's job text.
 * traind must answer each with the error in the file's name
 * (WHAT.CODE.EXT), with a message, keep serving, accept no job, and still
 * stop cleanly.  Also a message over the protocol limit and one over the
 * socket's receive limit. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <nanomsg/nn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../fuzz/hostile.h"
#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define FILE_MAX (4u << 20)

static th_daemon g_d;

static const char *source_root(void) {
  const char *r = getenv("TD_SOURCE_ROOT");
  return r ? r : ".";
}

static void start(void) {
  int rc;

  ck_assert(th_daemon_init(&g_d, "2GiB", NULL, 1) == 0);
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s; see %s", td_strerror(rc), g_d.log);
}

static void teardown(void) {
  if (g_d.pid > 0)
    ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly; see %s", g_d.log);
  th_daemon_remove(&g_d);
}

static void still_serving(const char *after) {
  int s = th_connect(g_d.sock, 10000), code = -1, rc;
  th_row *rows = NULL;
  size_t n = 99;

  ck_assert(s >= 0);
  rc = th_rpc_simple(s, "info", NULL, 0, NULL, &code, NULL, 0);
  ck_assert_msg(rc == 0 && code == 0, "info after %s: %s %s", after, td_strerror(rc),
                td_err_name(code));
  ck_assert(th_list(s, &rows, &n, NULL, 0) == 0);
  ck_assert_msg(n == 0, "after %s traind holds %zu job(s); the first is '%s'", after, n,
                n ? rows[0].name : "");
  free(rows);
  nn_close(s);
}

static int expected_code(const char *name) {
  int code = th_hostile_code(name);

  ck_assert_msg(code != 0, "%s: not named WHAT.CODE.EXT with CODE an error code name", name);
  return code;
}

/* Call fn for every file of corpus/hostile/SUB, sorted by name. */
static int for_each_file(const char *sub, void (*fn)(const char *name, const char *data,
                                                     size_t len)) {
  char dir[1024], path[1300];
  struct dirent **list = NULL;
  int n, count = 0;

  snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/hostile/%s", source_root(), sub);
  n = scandir(dir, &list, NULL, alphasort);
  ck_assert_msg(n > 0, "cannot read %s: %s", dir, strerror(errno));
  for (int i = 0; i < n; i++) {
    char *data;
    size_t len;

    if (list[i]->d_name[0] != '.' && strcmp(list[i]->d_name, "README.md") != 0) {
      snprintf(path, sizeof(path), "%s/%s", dir, list[i]->d_name);
      ck_assert_msg(td_read_file(path, FILE_MAX, &data, &len) == 0, "cannot read %s", path);
      fn(list[i]->d_name, data, len);
      free(data);
      count++;
    }
    free(list[i]);
  }
  free(list);
  return count;
}

/* Every wrong answer of a run, so one test reports them all. */
static char g_wrong[8192];
static int g_nwrong;

static void wrong(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void wrong(const char *fmt, ...) {
  size_t n = strlen(g_wrong);
  va_list ap;

  va_start(ap, fmt);
  if (n + 2 < sizeof(g_wrong)) {
    vsnprintf(g_wrong + n, sizeof(g_wrong) - n - 1, fmt, ap);
    strcat(g_wrong, "\n");
  }
  va_end(ap);
  g_nwrong++;
}

static void expect_refusal(const char *name, const void *msg, size_t len, int want) {
  char err[1024];
  int s = th_connect(g_d.sock, 10000), code = 0, rc;

  ck_assert(s >= 0);
  rc = th_rpc(s, msg, len, NULL, &code, err, sizeof(err));
  if (rc != 0)
    wrong("%s: no well-formed reply: %s", name, td_strerror(rc));
  else if (code != want)
    wrong("%s: answered %s (%s), expected %s", name, code ? td_err_name(code) : "ok", err,
          td_err_name(want));
  else if (err[0] == '\0' || !th_printable_line(err))
    wrong("%s: %s without a message on one printable line: '%s'", name, td_err_name(code), err);
  nn_close(s);
}

static void send_proto_file(const char *name, const char *data, size_t len) {
  expect_refusal(name, data, len, expected_code(name));
}

START_TEST(hostile_messages_are_refused) {
  start();
  ck_assert_int_gt(for_each_file("proto", send_proto_file), 10);
  ck_assert_msg(g_nwrong == 0, "%d wrong answers:\n%s", g_nwrong, g_wrong);
  still_serving("the hostile messages");
}
END_TEST

static void submit_job_file(const char *name, const char *data, size_t len) {
  static int seq;
  char key[32];
  td_pack p;

  snprintf(key, sizeof(key), "hostile-%d", seq++);
  td_pack_init(&p);
  td_pack_request(&p, "submit", 3);
  td_pack_str(&p, "job");
  /* strn: the text may hold NUL bytes, which the daemon must refuse. */
  td_pack_strn(&p, data, len);
  td_pack_kv_str(&p, "base_dir", "/tmp");
  td_pack_kv_str(&p, "key", key);
  ck_assert(td_pack_error(&p) == 0);
  /* The protocol refuses an empty job string (at least 1 byte) and a
   * string with a NUL before the job file parser sees it. */
  expect_refusal(name, td_pack_data(&p), td_pack_len(&p),
                 len == 0 || memchr(data, '\0', len) ? TD_EPROTO : expected_code(name));
  td_pack_free(&p);
}

START_TEST(hostile_job_files_are_refused) {
  start();
  ck_assert_int_gt(for_each_file("jobspec", submit_job_file), 10);
  ck_assert_msg(g_nwrong == 0, "%d wrong answers:\n%s", g_nwrong, g_wrong);
  still_serving("the hostile job files");
}
END_TEST

/* The protocol's limit, and past the socket's receive limit, where
 * nanomsg drops the message (and the connection) before traind sees it. */
START_TEST(oversized_messages) {
  size_t sizes[] = {TD_PROTO_MAX_MSG + 1, TD_PROTO_MAX_MSG + 64 * 1024};
  char *big = malloc(TD_PROTO_MAX_MSG + 64 * 1024);

  ck_assert_ptr_nonnull(big);
  start();
  for (size_t i = 0; i < TD_ARRAY_SIZE(sizes); i++) {
    /* A str32 as the whole message: declared and present. */
    size_t body = sizes[i] - 5;
    int s = th_connect(g_d.sock, 3000), code = 0, rc;
    char err[512];

    big[0] = (char)0xdb;
    big[1] = (char)(body >> 24);
    big[2] = (char)(body >> 16);
    big[3] = (char)(body >> 8);
    big[4] = (char)body;
    memset(big + 5, 'x', body);
    rc = th_rpc(s, big, sizes[i], NULL, &code, err, sizeof(err));
    if (i == 0) {
      ck_assert_msg(rc == 0 && code == TD_ETOOBIG, "a %zu-byte message: %s %s (%s)", sizes[i],
                    td_strerror(rc), td_err_name(code), err);
      ck_assert(err[0] != '\0');
    } else {
      /* No answer is possible; what matters is that traind goes on. */
      ck_assert_msg(rc == TD_ETIMEDOUT || (rc == 0 && code == TD_ETOOBIG),
                    "a %zu-byte message: %s %s", sizes[i], td_strerror(rc), td_err_name(code));
    }
    nn_close(s);
    still_serving("an oversized message");
  }
  free(big);
}
END_TEST

static Suite *hostile_suite(void) {
  Suite *s = suite_create("hostile_daemon");
  TCase *tc = tcase_create("socket");

  tcase_add_checked_fixture(tc, NULL, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, hostile_messages_are_refused);
  tcase_add_test(tc, hostile_job_files_are_refused);
  tcase_add_test(tc, oversized_messages);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return th_run(hostile_suite(), 0); }
