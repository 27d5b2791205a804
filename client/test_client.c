/* The client's output layer: JSON that stays strict whatever the wire holds,
 * terminal text that cannot carry escape sequences, numbers and tables; and
 * its argument layer: values checked against the protocol's bounds. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "error.h"

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

/* Text cells: an embedded NUL ends one, control bytes become '?', and a
 * table far larger than the first buffers grows without losing a cell. */
START_TEST(table_text_cells_and_growth) {
  static const char *const head[] = {"N", "TEXT"};
  cli_table t;
  char *buf = NULL, want[64];
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  const char *line, *top = "   N  TEXT\n   0  ab\n   1  ?[2J\xc3\xa9\n   2  \xe2\x82\xac\n";
  int rows = 3000;

  ck_assert_ptr_nonnull(f);
  cli_table_init(&t, head, 2, "rl");
  cli_table_cell(&t, "%d", 0);
  cli_table_text(&t, "ab\0cd", 5);
  cli_table_cell(&t, "%d", 1);
  cli_table_text(&t, "\x1b[2J\xc3\xa9", 6);
  for (int i = 2; i < rows; i++) {
    cli_table_cell(&t, "%d", i);
    cli_table_text(&t, "\xe2\x82\xac\xe2\x82\xac", i == rows - 1 ? 6 : 3); /* one or two euros */
  }
  ck_assert_int_eq(cli_table_print(&t, f), 0);
  fclose(f);
  cli_table_free(&t);
  ck_assert_msg(strncmp(buf, top, strlen(top)) == 0, "%.80s", buf);
  snprintf(want, sizeof(want), "\n%4d  \xe2\x82\xac\xe2\x82\xac\n", rows - 1);
  line = strstr(buf, want);
  ck_assert_msg(line != NULL && line[strlen(want)] == '\0', "last row missing: %s",
                buf + len - 40);
  free(buf);
}
END_TEST

/* Prints a table to a string (caller frees). */
static char *table_text(cli_table *t) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(cli_table_print(t, f), 0);
  fclose(f);
  cli_table_free(t);
  return buf;
}

START_TEST(sanitize_log_keeps_lines_and_split_utf8) {
  /* ESC and CR go, newline and tab stay; é passes */
  char a[] = "a\x1b[1m\tb\r\n\xc3\xa9";
  /* an emoji cut after two of its four bytes waits for the next piece */
  char b[] = "ok \xf0\x9f";
  /* a lone continuation byte or a bad lead byte at the end is not waited for */
  char c[] = "x\x80";
  char d[] = "x\xf8";

  ck_assert_uint_eq(cli_sanitize_log(a, sizeof(a) - 1, 0), sizeof(a) - 1);
  ck_assert_str_eq(a, "a?[1m\tb?\n\xc3\xa9");
  ck_assert_uint_eq(cli_sanitize_log(b, sizeof(b) - 1, 0), 3);
  ck_assert_str_eq(b, "ok \xf0\x9f");
  /* at the end of the log it is what it is: invalid */
  ck_assert_uint_eq(cli_sanitize_log(b, sizeof(b) - 1, 1), sizeof(b) - 1);
  ck_assert_str_eq(b, "ok ??");
  ck_assert_uint_eq(cli_sanitize_log(c, 2, 0), 2);
  ck_assert_str_eq(c, "x?");
  ck_assert_uint_eq(cli_sanitize_log(d, 2, 0), 2);
  ck_assert_str_eq(d, "x?");
}
END_TEST

START_TEST(fit_width_counts_code_points) {
  const char *s = "ab\xc3\xa9" "cd"; /* 5 columns, 6 bytes */

  ck_assert_uint_eq(cli_fit_width(s, 6, 80), 6);
  ck_assert_uint_eq(cli_fit_width(s, 6, 5), 6);
  ck_assert_uint_eq(cli_fit_width(s, 6, 3), 4); /* é is kept whole */
  ck_assert_uint_eq(cli_fit_width(s, 6, 2), 2);
  ck_assert_uint_eq(cli_fit_width(s, 6, 0), 0);
}
END_TEST

START_TEST(bounds_come_from_the_catalogue) {
  double min = 0, max = 0;
  size_t len = 0;

  ck_assert_int_eq(cli_field_bounds("set-priority", "priority", &min, &max), 0);
  ck_assert(min == -1000 && max == 1000);
  ck_assert_int_eq(cli_field_bounds("device", "budget", &min, &max), 0);
  ck_assert(min == 1048576);
  ck_assert_int_eq(cli_field_bounds("list", "limit", &min, &max), 0);
  ck_assert(min == 1 && max == 5000);
  ck_assert_int_eq(cli_field_bounds("device", "nope", &min, &max), TD_ENOENT);
  ck_assert_int_eq(cli_field_bounds("nope", "name", &min, &max), TD_ENOENT);

  ck_assert_int_eq(cli_check_str("device", "name", "cpu0", &len), 0);
  ck_assert_uint_eq(len, 31);
  ck_assert_int_eq(cli_check_str("device", "name", "", &len), TD_EINVAL);
  ck_assert_int_eq(cli_check_str("list", "owner", "a23456789012345678901234567890123", &len),
                   TD_ETOOBIG);
  ck_assert_uint_eq(len, 32);
}
END_TEST

START_TEST(parses_integers_in_bounds) {
  uint64_t u = 99;
  int64_t i = 99;

  ck_assert_int_eq(cli_parse_uint("7", 1, 100, &u), 0);
  ck_assert_uint_eq(u, 7);
  ck_assert_int_eq(cli_parse_uint("18446744073709551615", 1, (double)UINT64_MAX, &u), 0);
  ck_assert_uint_eq(u, UINT64_MAX);
  u = 99;
  ck_assert_int_eq(cli_parse_uint("18446744073709551616", 1, (double)UINT64_MAX, &u),
                   TD_ETOOBIG);
  ck_assert_int_eq(cli_parse_uint("0", 1, 100, &u), TD_ETOOBIG);
  ck_assert_int_eq(cli_parse_uint("101", 1, 100, &u), TD_ETOOBIG);
  ck_assert_int_eq(cli_parse_uint("-1", 1, 100, &u), TD_EINVAL);
  ck_assert_int_eq(cli_parse_uint(" 1", 1, 100, &u), TD_EINVAL);
  ck_assert_int_eq(cli_parse_uint("1x", 1, 100, &u), TD_EINVAL);
  ck_assert_int_eq(cli_parse_uint("", 1, 100, &u), TD_EINVAL);
  ck_assert_uint_eq(u, 99); /* untouched on failure */

  ck_assert_int_eq(cli_parse_int("-1000", -1000, 1000, &i), 0);
  ck_assert_int_eq(i, -1000);
  ck_assert_int_eq(cli_parse_int("+5", -1000, 1000, &i), 0);
  ck_assert_int_eq(i, 5);
  i = 99;
  ck_assert_int_eq(cli_parse_int("1001", -1000, 1000, &i), TD_ETOOBIG);
  ck_assert_int_eq(cli_parse_int("-1001", -1000, 1000, &i), TD_ETOOBIG);
  ck_assert_int_eq(cli_parse_int("99999999999999999999", -1000, 1000, &i), TD_ETOOBIG);
  ck_assert_int_eq(cli_parse_int("--1", -1000, 1000, &i), TD_EINVAL);
  ck_assert_int_eq(cli_parse_int("-", -1000, 1000, &i), TD_EINVAL);
  ck_assert_int_eq(cli_parse_int("1.5", -1000, 1000, &i), TD_EINVAL);
  ck_assert_int_eq(cli_parse_int("-1", 0, 1000, &i), TD_EINVAL); /* no sign where min >= 0 */
  ck_assert_int_eq(i, 99);
}
END_TEST

START_TEST(parses_sizes_and_seconds) {
  uint64_t v = 0;
  double s = -1;

  ck_assert_int_eq(cli_parse_size("2GiB", 1048576, 0x1p64, &v), 0);
  ck_assert_uint_eq(v, 2ull << 30);
  ck_assert_int_eq(cli_parse_size("1.5G", 1048576, 0x1p64, &v), 0);
  ck_assert_uint_eq(v, 3ull << 29);
  ck_assert_int_eq(cli_parse_size("1MiB", 1048576, 0x1p64, &v), 0);
  ck_assert_uint_eq(v, 1048576);
  v = 7;
  ck_assert_int_eq(cli_parse_size("512KiB", 1048576, 0x1p64, &v), TD_ETOOBIG);
  ck_assert_int_eq(cli_parse_size("lots", 1048576, 0x1p64, &v), TD_EINVAL);
  ck_assert_int_eq(cli_parse_size("-1G", 0, 0x1p64, &v), TD_EINVAL);
  ck_assert_uint_eq(v, 7);
  ck_assert_int_eq(cli_parse_size("0", 0, 0x1p64, &v), 0);
  ck_assert_uint_eq(v, 0);

  ck_assert_int_eq(cli_parse_seconds("2.5", &s), 0);
  ck_assert(s == 2.5);
  ck_assert_int_eq(cli_parse_seconds("0", &s), 0);
  ck_assert(s == 0);
  ck_assert_int_eq(cli_parse_seconds("-1", &s), TD_EINVAL);
  ck_assert_int_eq(cli_parse_seconds("inf", &s), TD_EINVAL);
  ck_assert_int_eq(cli_parse_seconds("1e12", &s), TD_ETOOBIG);
}
END_TEST

/* A job map as `show` gives it, mem and plan optional. */
static void pack_job(packed *p, const char *state, uint64_t mem, uint64_t plan_total,
                     double sps) {
  msgpack_pack_map(&p->pk, 11 + (plan_total > 0) + (sps > 0));
  key(p, "id");
  msgpack_pack_uint64(&p->pk, 12);
  key(p, "name");
  msgpack_pack_str_with_body(&p->pk, "mlp", 3);
  key(p, "owner");
  msgpack_pack_str_with_body(&p->pk, "ann", 3);
  key(p, "state");
  msgpack_pack_str_with_body(&p->pk, state, strlen(state));
  key(p, "device");
  msgpack_pack_str_with_body(&p->pk, "", 0);
  key(p, "epoch");
  msgpack_pack_uint64(&p->pk, 2);
  key(p, "epochs");
  msgpack_pack_uint64(&p->pk, 5);
  key(p, "step");
  msgpack_pack_uint64(&p->pk, 17);
  key(p, "steps");
  msgpack_pack_uint64(&p->pk, 469);
  key(p, "loss");
  msgpack_pack_double(&p->pk, 0.25);
  key(p, "mem");
  msgpack_pack_uint64(&p->pk, mem);
  if (plan_total > 0) {
    key(p, "plan");
    msgpack_pack_map(&p->pk, 1);
    key(p, "total");
    msgpack_pack_uint64(&p->pk, plan_total);
  }
  if (sps > 0) {
    key(p, "samples_per_sec");
    msgpack_pack_double(&p->pk, sps);
  }
}

START_TEST(job_rows_read_list_and_show_maps) {
  static const cli_job_col cols[] = {CLI_COL_ID,   CLI_COL_OWNER, CLI_COL_DEVICE,
                                     CLI_COL_PROGRESS, CLI_COL_LOSS, CLI_COL_MEM,
                                     CLI_COL_SPEED};
  packed run, queued;
  cli_table t;
  char *s;

  packed_init(&run);
  packed_init(&queued);
  pack_job(&run, "running", 3u << 20, 4u << 20, 12345.6);
  pack_job(&queued, "queued", 0, 0, 0);
  cli_job_table_init(&t, cols, sizeof(cols) / sizeof(cols[0]));
  cli_job_row(&t, cols, sizeof(cols) / sizeof(cols[0]), packed_obj(&run));
  cli_job_row(&t, cols, sizeof(cols) / sizeof(cols[0]), packed_obj(&queued));
  ck_assert_uint_eq(cli_table_width(&t), 69);
  s = table_text(&t);
  ck_assert_str_eq(s, "ID  OWNER  DEVICE  PROGRESS      LOSS             MEM/PLAN  SAMPLES/S\n"
                      "12  ann    -       2/5 17/469  0.2500  3.00 MiB / 4.00 MiB     12,346\n"
                      "12  ann    -       2/5         0.2500                    -          -\n");
  free(s);
  packed_free(&run);
  packed_free(&queued);
}
END_TEST

START_TEST(micro_and_reason_columns) {
  static const cli_job_col cols[] = {CLI_COL_ID, CLI_COL_MICRO, CLI_COL_REASON};
  packed run, queued;
  cli_table t;
  char *s;

  packed_init(&run);
  msgpack_pack_map(&run.pk, 3);
  key(&run, "id");
  msgpack_pack_uint64(&run.pk, 4);
  key(&run, "wait_reason");
  msgpack_pack_str_with_body(&run.pk, "", 0);
  key(&run, "plan");
  msgpack_pack_map(&run.pk, 2);
  key(&run, "micro_batch");
  msgpack_pack_uint64(&run.pk, 48);
  key(&run, "accumulation");
  msgpack_pack_uint64(&run.pk, 3);
  packed_init(&queued);
  msgpack_pack_map(&queued.pk, 2);
  key(&queued, "id");
  msgpack_pack_uint64(&queued.pk, 5);
  key(&queued, "wait_reason");
  msgpack_pack_str_with_body(&queued.pk, "behind job 4", 12);
  cli_job_table_init(&t, cols, 3);
  cli_job_row(&t, cols, 3, packed_obj(&run));
  cli_job_row(&t, cols, 3, packed_obj(&queued));
  s = table_text(&t);
  ck_assert_str_eq(s, "ID  MICRO  REASON\n"
                      " 4   48x3  -\n"
                      " 5      -  behind job 4\n");
  free(s);
  packed_free(&run);
  packed_free(&queued);
}
END_TEST

/* The plot's golden output: Braille in UTF-8, ASCII halves otherwise. */
START_TEST(plot_draws_the_curve) {
  static const double x[] = {1, 2, 3, 4, 5, 6, 7, 8}, y[] = {4, 3, 2.5, 2, 1.5, 1.25, 1.125, 1};
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  ck_assert_int_eq(cli_plot(f, x, y, 8, 3, 8, 1, ""), 5);
  ck_assert_int_eq(cli_plot(f, x, y, 8, 3, 8, 0, "> "), 5);
  /* nothing to draw: no finite loss, too small */
  ck_assert_int_eq(cli_plot(f, x, (const double[]){NAN, INFINITY}, 2, 3, 8, 1, ""), 0);
  ck_assert_int_eq(cli_plot(f, x, y, 8, 1, 8, 1, ""), 0);
  fclose(f);
  ck_assert_str_eq(buf, "4 \u2524\u2831\u2840\n"
                        "  \u2502 \u2811\u2824\u2840\n"
                        "1 \u2524   \u2808\u2812\u2824\u2884\u28c0\n"
                        "  \u2514\u2500\u2500\u2500\u2500\u2500\u2500\u2500\u2500\n"
                        "   1 step 8\n"
                        "> 4 +'.\n"
                        ">   | '..\n"
                        "> 1 +    '...\n"
                        ">   +--------\n"
                        ">    1 step 8\n");
  free(buf);
}
END_TEST

/* A diverged point is left out of the plot, and a flat curve sits in the
 * middle. */
START_TEST(plot_skips_nan_and_centres_flat) {
  static const double x[] = {10, 20, 30}, y[] = {2, NAN, 2};
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  ck_assert_int_eq(cli_plot(f, x, y, 3, 2, 4, 0, ""), 4);
  fclose(f);
  ck_assert_str_eq(buf, "2 +....\n"
                        "2 +\n"
                        "  +----\n"
                        "   step 30\n");
  free(buf);
}
END_TEST

START_TEST(sparkline_levels) {
  static const double up[] = {1, 2, 3, 4, 5, 6, 7, 8};
  char buf[64];

  cli_sparkline(up, 8, 1, buf, sizeof(buf));
  ck_assert_str_eq(buf, "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588");
  cli_sparkline(up, 8, 0, buf, sizeof(buf));
  ck_assert_str_eq(buf, "_.-:=+*#");
  cli_sparkline((const double[]){3, NAN, 1}, 3, 0, buf, sizeof(buf));
  ck_assert_str_eq(buf, "#!_");
  cli_sparkline((const double[]){0.5, 0.5}, 2, 1, buf, sizeof(buf));
  ck_assert_str_eq(buf, "\u2584\u2584");
  /* cut to the buffer, never half a character */
  cli_sparkline(up, 8, 1, buf, 8);
  ck_assert_str_eq(buf, "\u2581\u2582");
}
END_TEST

START_TEST(utf8_comes_from_the_locale) {
  ck_assert_int_eq(cli_utf8_from(NULL, NULL, "en_GB.UTF-8"), 1);
  ck_assert_int_eq(cli_utf8_from(NULL, NULL, "de_DE.utf8"), 1);
  ck_assert_int_eq(cli_utf8_from(NULL, NULL, "C"), 0);
  ck_assert_int_eq(cli_utf8_from(NULL, NULL, NULL), 0);
  ck_assert_int_eq(cli_utf8_from("C", "en_US.UTF-8", "en_US.UTF-8"), 0);
  ck_assert_int_eq(cli_utf8_from("", "C.UTF-8", "C"), 1);
  ck_assert_int_eq(cli_utf8_from(NULL, "", "POSIX"), 0);
}
END_TEST

/* top's TREND: the last 12 pairs of show's loss_curve, in ASCII under
 * LANG=C; a malformed pair is skipped, a job with fewer than two points
 * shows "-". */
START_TEST(trend_column_reads_the_loss_curve) {
  static const cli_job_col cols[] = {CLI_COL_ID, CLI_COL_TREND};
  double xs[CLI_LOSS_CURVE_MAX], ys[CLI_LOSS_CURVE_MAX];
  packed run, fresh;
  cli_table t;
  char *s;

  setenv("LANG", "C", 1);
  unsetenv("LC_ALL");
  unsetenv("LC_CTYPE");
  packed_init(&run);
  msgpack_pack_map(&run.pk, 2);
  key(&run, "id");
  msgpack_pack_uint64(&run.pk, 7);
  key(&run, "loss_curve");
  msgpack_pack_array(&run.pk, 21);
  for (int i = 0; i < 20; i++) {
    msgpack_pack_array(&run.pk, 2);
    msgpack_pack_uint64(&run.pk, (uint64_t)(i + 1) * 10);
    msgpack_pack_double(&run.pk, i < 12 ? 9.0 : 8.0 - (i - 12)); /* the last 8: 8 .. 1 */
  }
  msgpack_pack_array(&run.pk, 1); /* malformed */
  msgpack_pack_uint64(&run.pk, 1);
  packed_init(&fresh);
  msgpack_pack_map(&fresh.pk, 2);
  key(&fresh, "id");
  msgpack_pack_uint64(&fresh.pk, 8);
  key(&fresh, "loss_curve");
  msgpack_pack_array(&fresh.pk, 0);

  ck_assert_uint_eq(cli_loss_curve(packed_obj(&run), xs, ys, CLI_LOSS_CURVE_MAX), 20);
  ck_assert(xs[19] == 200 && ys[19] == 1.0);
  cli_job_table_init(&t, cols, 2);
  cli_job_row(&t, cols, 2, packed_obj(&run));
  cli_job_row(&t, cols, 2, packed_obj(&fresh));
  s = table_text(&t);
  /* the last 12 pairs, of which 11 well formed: 9 9 9 8 7 6 5 4 3 2 1 */
  ck_assert_str_eq(s, "ID  TREND\n"
                      " 7  ###*+==:-._\n"
                      " 8  -\n");
  free(s);
  packed_free(&run);
  packed_free(&fresh);
}
END_TEST

START_TEST(formats_progress_and_metrics) {
  packed p;
  const msgpack_object *job;
  char b[96];

  packed_init(&p);
  pack_job(&p, "running", 0, 0, 0);
  job = packed_obj(&p);
  cli_fmt_progress(job, 1, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 2/5, step 17/469");
  cli_fmt_progress(job, 0, b, sizeof(b));
  ck_assert_str_eq(b, "2/5 17/469");
  cli_fmt_metric(job, "loss", b, sizeof(b));
  ck_assert_str_eq(b, "0.2500");
  cli_fmt_metric(job, "accuracy", b, sizeof(b));
  ck_assert_str_eq(b, "-");
  packed_free(&p);
}
END_TEST

START_TEST(columns_come_from_the_window_then_env) {
  ck_assert_uint_eq(cli_columns_from(132, "60"), 132);
  ck_assert_uint_eq(cli_columns_from(0, "160"), 160);
  ck_assert_uint_eq(cli_columns_from(0, NULL), 80);
  ck_assert_uint_eq(cli_columns_from(0, ""), 80);
  ck_assert_uint_eq(cli_columns_from(0, "wide"), 80);
  ck_assert_uint_eq(cli_columns_from(0, "0"), 80);
}
END_TEST

static char *fitted(const char *s, size_t cols) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  ck_assert_ptr_nonnull(f);
  cli_put_fitted(f, s, strlen(s), cols);
  fclose(f);
  return buf;
}

START_TEST(fitted_lines_say_they_were_cut) {
  char *s;

  s = fitted("waiting for 12 MiB", 40);
  ck_assert_str_eq(s, "waiting for 12 MiB\n");
  free(s);
  s = fitted("waiting for 12 MiB", 10);
  ck_assert_str_eq(s, "waiting...\n");
  free(s);
  s = fitted("\xc3\xa9t\xc3\xa9 long line", 6); /* widths in code points */
  ck_assert_str_eq(s, "\xc3\xa9t\xc3\xa9...\n");
  free(s);
  s = fitted("abcdef", 2);
  ck_assert_str_eq(s, "ab\n");
  free(s);
}
END_TEST

START_TEST(micro_batch_and_eta_rule) {
  char b[32];

  cli_fmt_micro(48, 3, b, sizeof(b));
  ck_assert_str_eq(b, "48x3");
  cli_fmt_micro(64, 1, b, sizeof(b));
  ck_assert_str_eq(b, "-");
  cli_fmt_micro(0, 4, b, sizeof(b));
  ck_assert_str_eq(b, "-");
  /* 10 s and 5% of the steps, whichever is later */
  ck_assert(!cli_eta_due(3, 900, 1000));
  ck_assert(!cli_eta_due(60, 49, 1000));
  ck_assert(cli_eta_due(10, 50, 1000));
  ck_assert(!cli_eta_due(100, 0, 0));
}
END_TEST

START_TEST(progress_line_shows_what_is_known) {
  cli_progress p = {.epoch = 1, .epochs = 2, .step = 10, .steps = 40, .loss = 0.5,
                    .train_acc = NAN, .sps = 1234, .eta = -1, .micro_batch = 64,
                    .accumulation = 1};
  char b[256];

  cli_fmt_progress_line(&p, 0, 0, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 1/2  step 10/40 (25%)  loss 0.5000  1,234 samples/s");
  cli_fmt_progress_line(&p, 1, 0, b, sizeof(b));
  ck_assert_str_eq(b, "[epoch 1/2] [####--------------]  25%  step 10/40  loss 0.5000  "
                      "1,234 samples/s");
  p.train_acc = 0.75;
  p.micro_batch = 16;
  p.accumulation = 4;
  p.eta = 83;
  cli_fmt_progress_line(&p, 0, 0, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 1/2  step 10/40 (25%)  loss 0.5000  acc 0.7500  1,234 samples/s"
                      "  micro-batch 16x4  ETA 1:23");
  /* narrow: the speed, then the bar, then the accuracy give way */
  cli_fmt_progress_line(&p, 1, 80, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 1/2  step 10/40 (25%)  loss 0.5000  acc 0.7500  micro-batch 16x4"
                      "  ETA 1:23");
  cli_fmt_progress_line(&p, 1, 60, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 1/2  step 10/40 (25%)  loss 0.5000  micro-batch 16x4  ETA 1:23");
  cli_fmt_progress_line(&p, 1, 200, b, sizeof(b));
  ck_assert_ptr_nonnull(strstr(b, "[####"));
}
END_TEST

START_TEST(epoch_end_shows_each_split_known) {
  cli_epoch_end e = {.epoch = 2, .epochs = 5, .train_loss = 0.41, .train_acc = -1,
                     .val_loss = -1, .val_acc = 0.85, .test_loss = 0.43, .test_acc = 0.84};
  char b[256];

  cli_fmt_epoch_end(&e, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 2/5 done: train loss 0.4100; val acc 0.8500; test loss 0.4300, "
                      "acc 0.8400");
  e.train_loss = NAN;
  e.val_acc = -1;
  e.val_loss = 0.5;
  e.train_acc = 0.9;
  cli_fmt_epoch_end(&e, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 2/5 done: train acc 0.9000; val loss 0.5000; test loss 0.4300, "
                      "acc 0.8400");
  e = (cli_epoch_end){.epoch = 1, .train_loss = -1, .train_acc = -1, .val_loss = -1,
                      .val_acc = -1, .test_loss = -1, .test_acc = 0.5};
  cli_fmt_epoch_end(&e, b, sizeof(b));
  ck_assert_str_eq(b, "epoch 1 done: test acc 0.5000");
}
END_TEST

START_TEST(events_show_the_fields_that_matter) {
  packed p;
  char b[512];

  packed_init(&p);
  msgpack_pack_map(&p.pk, 6);
  key(&p, "v");
  msgpack_pack_uint64(&p.pk, 1);
  key(&p, "id");
  msgpack_pack_uint64(&p.pk, 7);
  key(&p, "name");
  msgpack_pack_str_with_body(&p.pk, "my\x1b[2Jjob", 9);
  key(&p, "state");
  msgpack_pack_str_with_body(&p.pk, "running", 7);
  key(&p, "device");
  msgpack_pack_str_with_body(&p.pk, "cpu0", 4);
  key(&p, "error");
  msgpack_pack_str_with_body(&p.pk, "", 0);
  cli_fmt_event("job.state", packed_obj(&p), b, sizeof(b));
  ck_assert_str_eq(b, "job.state    job 7: state=running device=cpu0 name=my?[2Jjob");
  packed_free(&p);

  packed_init(&p);
  msgpack_pack_map(&p.pk, 3);
  key(&p, "id");
  msgpack_pack_uint64(&p.pk, 7);
  key(&p, "device");
  msgpack_pack_str_with_body(&p.pk, "cpu0", 4);
  key(&p, "plan");
  msgpack_pack_map(&p.pk, 3);
  key(&p, "micro_batch");
  msgpack_pack_uint64(&p.pk, 16);
  key(&p, "accumulation");
  msgpack_pack_uint64(&p.pk, 4);
  key(&p, "total");
  msgpack_pack_uint64(&p.pk, 10u << 20);
  cli_fmt_event("job.replan", packed_obj(&p), b, sizeof(b));
  ck_assert_str_eq(b, "job.replan   job 7: device=cpu0 micro-batch=16x4 reserves=\"10.00 MiB\"");
  packed_free(&p);

  /* a topic this client does not know: its plain fields */
  packed_init(&p);
  msgpack_pack_map(&p.pk, 4);
  key(&p, "v");
  msgpack_pack_uint64(&p.pk, 1);
  key(&p, "what");
  msgpack_pack_str_with_body(&p.pk, "two words", 9);
  key(&p, "ok");
  msgpack_pack_true(&p.pk);
  key(&p, "x");
  msgpack_pack_double(&p.pk, 0.5);
  cli_fmt_event("new\ttopic", packed_obj(&p), b, sizeof(b));
  ck_assert_str_eq(b, "new?topic    what=\"two words\" ok=true x=0.5");
  packed_free(&p);
}
END_TEST

START_TEST(device_rows_show_state) {
  packed p;
  char *s = NULL;
  size_t len = 0;
  FILE *f;

  packed_init(&p);
  msgpack_pack_array(&p.pk, 2);
  msgpack_pack_map(&p.pk, 5);
  key(&p, "name");
  msgpack_pack_str_with_body(&p.pk, "cuda0", 5);
  key(&p, "budget");
  msgpack_pack_uint64(&p.pk, 2u << 30);
  key(&p, "reserved");
  msgpack_pack_uint64(&p.pk, 512u << 20);
  key(&p, "jobs");
  msgpack_pack_uint64(&p.pk, 3);
  key(&p, "draining");
  msgpack_pack_true(&p.pk);
  msgpack_pack_map(&p.pk, 1); /* an older daemon: no draining, no numbers */
  key(&p, "name");
  msgpack_pack_str_with_body(&p.pk, "cpu0", 4);
  f = open_memstream(&s, &len);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(cli_print_devices(f, packed_obj(&p)), 0);
  cli_print_devices(f, &p.obj.via.array.ptr[1]); /* one device, as `device` gives it */
  fclose(f);
  ck_assert_str_eq(s, "NAME     BUDGET    RESERVED      FREE  JOBS  STATE\n"
                      "cuda0  2.00 GiB  512.00 MiB  1.50 GiB     3  draining\n"
                      "cpu0          ?           ?         ?     ?  ?\n"
                      "NAME  BUDGET  RESERVED  FREE  JOBS  STATE\n"
                      "cpu0       ?         ?     ?     ?  ?\n");
  free(s);
  packed_free(&p);
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
  tcase_add_test(tc, table_text_cells_and_growth);
  tcase_add_test(tc, sanitize_log_keeps_lines_and_split_utf8);
  tcase_add_test(tc, fit_width_counts_code_points);
  tcase_add_test(tc, formats_progress_and_metrics);
  tcase_add_test(tc, job_rows_read_list_and_show_maps);
  tcase_add_test(tc, device_rows_show_state);
  tcase_add_test(tc, columns_come_from_the_window_then_env);
  tcase_add_test(tc, fitted_lines_say_they_were_cut);
  tcase_add_test(tc, micro_batch_and_eta_rule);
  tcase_add_test(tc, progress_line_shows_what_is_known);
  tcase_add_test(tc, epoch_end_shows_each_split_known);
  tcase_add_test(tc, events_show_the_fields_that_matter);
  tcase_add_test(tc, micro_and_reason_columns);
  tcase_add_test(tc, plot_draws_the_curve);
  tcase_add_test(tc, plot_skips_nan_and_centres_flat);
  tcase_add_test(tc, sparkline_levels);
  tcase_add_test(tc, utf8_comes_from_the_locale);
  tcase_add_test(tc, trend_column_reads_the_loss_curve);
  suite_add_tcase(s, tc);
  tc = tcase_create("arguments");
  tcase_add_test(tc, bounds_come_from_the_catalogue);
  tcase_add_test(tc, parses_integers_in_bounds);
  tcase_add_test(tc, parses_sizes_and_seconds);
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
