/* Hostile inputs as regression tests: every file in
 * tests/fuzz/corpus/hostile/proto/ goes through td_proto_parse_request and
 * every file in tests/fuzz/corpus/hostile/jobspec/ through
 * td_jobspec_parse.  A file is named WHAT.CODE.EXT, CODE being the error it
 * must be refused with (EPROTO, ETOOBIG, ...); the message must be a
 * non-empty line of UTF-8 a person can read.  Each file runs in its own
 * process, with an address-space limit where no sanitizer needs the room, so
 * a decoder that reserves gigabytes for a few bytes fails here. */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../fuzz/hostile.h"
#include "error.h"
#include "jobspec.h"
#include "proto.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define TH_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TH_SANITIZED 1
#endif
#endif

#define MAX_FILES 512
#define FILE_MAX (4u << 20)

typedef struct corpus {
  const char *sub;                 /* under tests/fuzz/corpus/hostile */
  char *names[MAX_FILES];
  int n;
} corpus;

static corpus g_proto = {.sub = "proto"}, g_jobspec = {.sub = "jobspec"};

static const char *source_root(void) {
  const char *r = getenv("TD_SOURCE_ROOT");
  return r ? r : ".";
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int load_names(corpus *c) {
  char dir[1024];
  DIR *d;
  struct dirent *e;

  snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/hostile/%s", source_root(), c->sub);
  if ((d = opendir(dir)) == NULL) {
    fprintf(stderr, "cannot open %s (set TD_SOURCE_ROOT to the source tree)\n", dir);
    return -1;
  }
  while ((e = readdir(d)) != NULL && c->n < MAX_FILES)
    if (e->d_name[0] != '.' && strcmp(e->d_name, "README.md") != 0)
      c->names[c->n++] = strdup(e->d_name);
  closedir(d);
  qsort(c->names, (size_t)c->n, sizeof(c->names[0]), cmp_name);
  return 0;
}

static int expected_code(const char *name) {
  int code = th_hostile_code(name);

  ck_assert_msg(code != 0, "%s: not named WHAT.CODE.EXT with CODE an error code name", name);
  return code;
}

static void read_fixture(const corpus *c, const char *name, char **data, size_t *len) {
  char path[1024];
  int rc;

  snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/hostile/%s/%s", source_root(), c->sub,
           name);
  rc = td_read_file(path, FILE_MAX, data, len);
  ck_assert_msg(rc == 0, "cannot read %s: %s", path, td_strerror(rc));
}

static void check_message(const char *name, int rc, int want, const char *err) {
  ck_assert_msg(rc == want, "%s: %s (%s), expected %s", name, td_err_name(rc), err,
                td_err_name(want));
  ck_assert_msg(err[0] != '\0', "%s: refused with %s but no message", name, td_err_name(rc));
  ck_assert_msg(th_printable_line(err), "%s: the message is not one printable UTF-8 line: %s", name,
                err);
}

static void limit_memory(void) {
#ifndef TH_SANITIZED
  struct rlimit rl = {1u << 30, 1u << 30};
  setrlimit(RLIMIT_AS, &rl);
#endif
}

START_TEST(proto_file_is_refused) {
  const char *name = g_proto.names[_i];
  const td_msgdef *def = NULL;
  td_msg *m = NULL;
  char *data, err[1024] = "";
  size_t len;
  int rc;

  limit_memory();
  read_fixture(&g_proto, name, &data, &len);
  printf("proto: %s\n", name);
  rc = td_proto_parse_request(data, len, &m, &def, err, sizeof(err));
  if (rc == 0)
    td_msg_free(m);
  check_message(name, rc, expected_code(name), err);
  /* Written only on success. */
  ck_assert_ptr_null(m);
  free(data);
}
END_TEST

START_TEST(jobspec_file_is_refused) {
  const char *name = g_jobspec.names[_i];
  td_jobspec *spec = malloc(sizeof(*spec));
  char *data, err[1024] = "";
  size_t len;
  int rc;

  ck_assert_ptr_nonnull(spec);
  limit_memory();
  read_fixture(&g_jobspec, name, &data, &len);
  printf("jobspec: %s\n", name);
  rc = td_jobspec_parse(data, len, "/tmp", spec, err, sizeof(err));
  check_message(name, rc, expected_code(name), err);
  free(data);
  free(spec);
}
END_TEST

/* Cases too big to keep as files. */
START_TEST(proto_over_2mib_is_refused) {
  const size_t joblen = TD_PROTO_MAX_MSG;
  const td_msgdef *def = NULL;
  msgpack_sbuffer sb;
  msgpack_packer pk;
  td_msg *m = NULL;
  char *job = malloc(joblen), err[1024] = "";
  int rc;

  ck_assert_ptr_nonnull(job);
  limit_memory();
  memset(job, 'x', joblen);
  /* td_pack refuses to build a message this big: msgpack-c does it. */
  msgpack_sbuffer_init(&sb);
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 5);
  msgpack_pack_str_with_body(&pk, "v", 1);
  msgpack_pack_int(&pk, 1);
  msgpack_pack_str_with_body(&pk, "op", 2);
  msgpack_pack_str_with_body(&pk, "submit", 6);
  msgpack_pack_str_with_body(&pk, "base_dir", 8);
  msgpack_pack_str_with_body(&pk, "/tmp", 4);
  msgpack_pack_str_with_body(&pk, "key", 3);
  msgpack_pack_str_with_body(&pk, "k", 1);
  msgpack_pack_str_with_body(&pk, "job", 3);
  msgpack_pack_str_with_body(&pk, job, joblen);
  ck_assert_uint_gt(sb.size, TD_PROTO_MAX_MSG);
  rc = td_proto_parse_request(sb.data, sb.size, &m, &def, err, sizeof(err));
  check_message("2 MiB submit", rc, TD_ETOOBIG, err);
  ck_assert_ptr_null(m);
  msgpack_sbuffer_destroy(&sb);
  free(job);
}
END_TEST

START_TEST(jobspec_over_1mib_is_refused) {
  td_jobspec *spec = malloc(sizeof(*spec));
  size_t len = TD_JOBFILE_MAX + 1;
  char *text = malloc(len + 1), err[1024] = "";
  int rc;

  ck_assert_ptr_nonnull(spec);
  ck_assert_ptr_nonnull(text);
  limit_memory();
  /* A comment: valid YAML of any length. */
  memset(text, ' ', len);
  text[0] = '#';
  text[len] = '\0';
  rc = td_jobspec_parse(text, len, "/tmp", spec, err, sizeof(err));
  check_message("1 MiB + 1 job file", rc, TD_ETOOBIG, err);
  free(text);
  free(spec);
}
END_TEST

START_TEST(jobspec_too_many_nodes_is_refused) {
  td_jobspec *spec = malloc(sizeof(*spec));
  const size_t items = 100001;
  size_t len = 0;
  char *text = malloc(items * 2 + 64), err[1024] = "";
  int rc;

  ck_assert_ptr_nonnull(spec);
  ck_assert_ptr_nonnull(text);
  limit_memory();
  len += (size_t)sprintf(text, "name: x\nmodel: [");
  for (size_t i = 0; i < items; i++) {
    text[len++] = '1';
    text[len++] = i + 1 < items ? ',' : ']';
  }
  text[len++] = '\n';
  text[len] = '\0';
  rc = td_jobspec_parse(text, len, "/tmp", spec, err, sizeof(err));
  check_message("100001 YAML nodes", rc, TD_EJOBSPEC, err);
  free(text);
  free(spec);
}
END_TEST

static Suite *hostile_suite(void) {
  Suite *s = suite_create("hostile");
  TCase *files = tcase_create("files"), *big = tcase_create("generated");

  tcase_add_loop_test(files, proto_file_is_refused, 0, g_proto.n);
  tcase_add_loop_test(files, jobspec_file_is_refused, 0, g_jobspec.n);
  tcase_add_test(big, proto_over_2mib_is_refused);
  tcase_add_test(big, jobspec_over_1mib_is_refused);
  tcase_add_test(big, jobspec_too_many_nodes_is_refused);
  suite_add_tcase(s, files);
  suite_add_tcase(s, big);
  return s;
}

int main(void) {
  SRunner *sr;
  int failed;

  if (load_names(&g_proto) < 0 || load_names(&g_jobspec) < 0)
    return 1;
  /* An empty corpus would pass without testing anything. */
  if (g_proto.n < 10 || g_jobspec.n < 10) {
    fprintf(stderr, "the hostile corpus is missing: %d proto and %d jobspec files\n", g_proto.n,
            g_jobspec.n);
    return 1;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  sr = srunner_create(hostile_suite());
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  for (int i = 0; i < g_proto.n; i++)
    free(g_proto.names[i]);
  for (int i = 0; i < g_jobspec.n; i++)
    free(g_jobspec.names[i]);
  return failed == 0 ? 0 : 1;
}
