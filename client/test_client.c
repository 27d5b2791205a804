/* The client's output layer: JSON that stays strict whatever the wire holds,
 * terminal text that cannot carry escape sequences, numbers and tables. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

/* Unpacks what a test packed; the zone owns the objects. */
typedef struct packed {
  msgpack_sbuffer sb;
  msgpack_packer pk;
  msgpack_zone zone;
  msgpack_object obj;
} packed;

static void packed_init(packed *p) {
  msgpack_sbuffer_init(&p->sb);
  msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
  msgpack_zone_init(&p->zone, 1024);
}

static const msgpack_object *packed_obj(packed *p) {
  ck_assert_int_eq(msgpack_unpack(p->sb.data, p->sb.size, NULL, &p->zone, &p->obj),
                   MSGPACK_UNPACK_SUCCESS);
  return &p->obj;
}

static void packed_free(packed *p) {
  msgpack_zone_destroy(&p->zone);
  msgpack_sbuffer_destroy(&p->sb);
}

static void key(packed *p, const char *k) {
  msgpack_pack_str_with_body(&p->pk, k, strlen(k));
}

/* cli_json_print or cli_json_print_reply into a string (caller frees). */
static char *json_of(const msgpack_object *o, int reply) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  ck_assert_ptr_nonnull(f);
  if (reply)
    cli_json_print_reply(f, o);
  else
    cli_json_print(f, o);
  fclose(f);
  return buf;
}

static const struct {
  const char *raw;
  size_t len;
  const char *json;
} json_strings[] = {
#define RAW(s) s, sizeof(s) - 1
  /* escapes; multi-byte UTF-8 passes through */
  {RAW("q\"b\\n\n\t\x01\x7f" "\xc3\xa9" "\xf0\x9f\x98\x80"),
   "\"q\\\"b\\\\n\\n\\t\\u0001\\u007f\xc3\xa9\xf0\x9f\x98\x80\""},
  /* a lone byte, a truncated sequence, an overlong '/', a surrogate, NUL */
  {RAW("a\xff" "b\xc3" "c\xc0\xaf" "d\xed\xa0\x80" "e\0f"),
   "\"a\\ufffdb\\ufffdc\\ufffd\\ufffdd\\ufffd\\ufffd\\ufffde\\u0000f\""},
  /* code points past U+10FFFF */
  {RAW("\xf4\x90\x80\x80"), "\"\\ufffd\\ufffd\\ufffd\\ufffd\""},
#undef RAW
};

START_TEST(json_strings_stay_strict) {
  packed p;
  char *s;

  packed_init(&p);
  msgpack_pack_str_with_body(&p.pk, json_strings[_i].raw, json_strings[_i].len);
  s = json_of(packed_obj(&p), 0);
  ck_assert_str_eq(s, json_strings[_i].json);
  free(s);
  packed_free(&p);
}
END_TEST

START_TEST(json_numbers_round_trip) {
  packed p;
  char *s;

  packed_init(&p);
  msgpack_pack_array(&p.pk, 9);
  msgpack_pack_double(&p.pk, 0.1);
  msgpack_pack_float(&p.pk, 0.1f);
  msgpack_pack_double(&p.pk, 3.0);
  msgpack_pack_double(&p.pk, 1.0 / 3.0);
  msgpack_pack_double(&p.pk, NAN);
  msgpack_pack_double(&p.pk, -INFINITY);
  msgpack_pack_int64(&p.pk, -42);
  msgpack_pack_uint64(&p.pk, UINT64_MAX);
  msgpack_pack_double(&p.pk, 1e300);
  s = json_of(packed_obj(&p), 0);
  ck_assert_str_eq(s, "[0.1,0.1,3.0,0.3333333333333333,null,null,-42,18446744073709551615,"
                      "1e+300]");
  free(s);
  packed_free(&p);
}
END_TEST

START_TEST(json_reply_drops_envelope) {
  packed p;
  char *s;

  packed_init(&p);
  msgpack_pack_map(&p.pk, 5);
  key(&p, "v");
  msgpack_pack_int(&p.pk, 1);
  key(&p, "ok");
  msgpack_pack_true(&p.pk);
  key(&p, "jobs");
  msgpack_pack_array(&p.pk, 2);
  msgpack_pack_map(&p.pk, 0);
  msgpack_pack_nil(&p.pk);
  msgpack_pack_int(&p.pk, 7); /* a non-string key */
  msgpack_pack_false(&p.pk);
  key(&p, "v2");
  msgpack_pack_str_with_body(&p.pk, "", 0);
  s = json_of(packed_obj(&p), 1);
  ck_assert_str_eq(s, "{\"jobs\":[{},null],\"7\":false,\"v2\":\"\"}\n");
  free(s);
  packed_free(&p);
}
END_TEST

START_TEST(sanitize_removes_controls) {
  /* ESC, a C1 CSI (U+009B), an invalid byte; é and the emoji survive */
  char s[] = "ok\x1b[31m\xc2\x9b\xff \xc3\xa9\xf0\x9f\x98\x80";

  cli_sanitize(s);
  ck_assert_str_eq(s, "ok?[31m??? \xc3\xa9\xf0\x9f\x98\x80");
}
END_TEST

START_TEST(field_dup_checks_type) {
  packed p;
  const msgpack_object *m;
  char *s;

  packed_init(&p);
  msgpack_pack_map(&p.pk, 2);
  key(&p, "name");
  msgpack_pack_str_with_body(&p.pk, "a\nb", 3);
  key(&p, "id");
  msgpack_pack_int(&p.pk, 3);
  m = packed_obj(&p);
  s = cli_field_dup(m, "name");
  ck_assert_str_eq(s, "a?b");
  free(s);
  ck_assert_ptr_null(cli_field_dup(m, "id"));
  ck_assert_ptr_null(cli_field_dup(m, "missing"));
  packed_free(&p);
}
END_TEST

START_TEST(formats_numbers_and_times) {
  char b[64];

  cli_fmt_count(0, b, sizeof(b));
  ck_assert_str_eq(b, "0");
  cli_fmt_count(999, b, sizeof(b));
  ck_assert_str_eq(b, "999");
  cli_fmt_count(12345, b, sizeof(b));
  ck_assert_str_eq(b, "12,345");
  cli_fmt_count(UINT64_MAX, b, sizeof(b));
  ck_assert_str_eq(b, "18,446,744,073,709,551,615");
  cli_fmt_count(1234567, b, 4); /* truncates, never overflows */
  ck_assert_str_eq(b, "1,2");
  cli_fmt_clock(42, b, sizeof(b));
  ck_assert_str_eq(b, "0:42");
  cli_fmt_clock(3723, b, sizeof(b));
  ck_assert_str_eq(b, "1:02:03");
  cli_fmt_clock(NAN, b, sizeof(b));
  ck_assert_str_eq(b, "?");
  cli_fmt_uptime(7384, b, sizeof(b));
  ck_assert_str_eq(b, "2h 03m 04s");
  cli_fmt_uptime(300000, b, sizeof(b));
  ck_assert_str_eq(b, "3d 11h 20m");
  cli_fmt_time(0, 1, b, sizeof(b));
  ck_assert_str_eq(b, "-");
  ck_assert(cli_state_is_final("failed"));
  ck_assert(!cli_state_is_final("running"));
}
END_TEST

START_TEST(table_aligns_columns) {
  static const char *const head[] = {"ID", "NAME", "LOSS"};
  cli_table t;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  ck_assert_ptr_nonnull(f);
  cli_table_init(&t, head, 3, "rlr");
  cli_table_cell(&t, "%d", 7);
  cli_table_cell(&t, "%s", "j\xc3\xb6" "b"); /* 3 columns wide, 4 bytes */
  cli_table_cell(&t, "%.2f", 0.5);
  cli_table_cell(&t, "%d", 10);
  cli_table_cell(&t, "x\x1b");
  cli_table_cell(&t, "-");
  ck_assert_int_eq(cli_table_print(&t, f), 0);
  fclose(f);
  ck_assert_str_eq(buf, "ID  NAME  LOSS\n"
                        " 7  j\xc3\xb6" "b   0.50\n"
                        "10  x?       -\n");
  free(buf);
  cli_table_free(&t);
}
END_TEST

static Suite *client_suite(void) {
  Suite *s = suite_create("client");
  TCase *tc = tcase_create("output");

  tcase_add_loop_test(tc, json_strings_stay_strict, 0, (int)(sizeof(json_strings) /
                                                             sizeof(json_strings[0])));
  tcase_add_test(tc, json_numbers_round_trip);
  tcase_add_test(tc, json_reply_drops_envelope);
  tcase_add_test(tc, sanitize_removes_controls);
  tcase_add_test(tc, field_dup_checks_type);
  tcase_add_test(tc, formats_numbers_and_times);
  tcase_add_test(tc, table_aligns_columns);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(client_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
