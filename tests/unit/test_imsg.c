/* The messages between traind and a worker (proto/imsg.h): every kind
 * round-trips through the one encoder and the decoder, the decoder refuses
 * what the catalogue does not describe (naming the field), frames are cut
 * right however the bytes arrive, and proto/INTERNAL.md documents the
 * catalogue exactly, both ways. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "imsg.h"
#include "util.h"

static char err[512];

/* A legal value of f, as a message needs it. */
static void put_legal(td_imsg *b, const td_field *f) {
  switch (f->type) {
  case TD_FT_UINT: td_imsg_u64(b, f->name, (uint64_t)f->min); break;
  case TD_FT_FLOAT: td_imsg_f64(b, f->name, f->min > -HUGE_VAL ? f->min : 0.25); break;
  case TD_FT_BOOL: td_imsg_bool(b, f->name, 1); break;
  case TD_FT_STR: td_imsg_str(b, f->name, "fp32"); break;
  default: ck_abort_msg("'%s' has a type the catalogue should not use", f->name);
  }
}

/* A whole message of def; the caller frees b. */
static void build(td_imsg *b, td_imsg_dir dir, const td_msgdef *def, const void **frame,
                  size_t *len) {
  td_imsg_begin(b, dir, def->op);
  for (size_t i = 0; i < def->nfields; i++)
    put_legal(b, &def->fields[i]);
  ck_assert_msg(td_imsg_end(b, frame, len) == 0, "%s: %s", def->op, b->p.why);
}

static int parse(td_imsg_dir dir, const void *frame, size_t len, td_msg **m,
                 const td_msgdef **def) {
  ck_assert_uint_ge(len, TD_IMSG_HDR);
  err[0] = '\0';
  return td_imsg_parse(dir, (const char *)frame + TD_IMSG_HDR, len - TD_IMSG_HDR, m, def, err,
                       sizeof(err));
}

START_TEST(every_kind_round_trips) {
  for (int dir = 0; dir < TD_IMSG__DIRS; dir++) {
    size_t n;
    const td_msgdef *defs = td_imsg_defs((td_imsg_dir)dir, &n);

    ck_assert_uint_gt(n, 0);
    for (size_t i = 0; i < n; i++) {
      const td_msgdef *got;
      const void *frame;
      size_t len;
      td_imsg b;
      td_msg *m;

      build(&b, (td_imsg_dir)dir, &defs[i], &frame, &len);
      ck_assert_uint_le(len, 4096); /* PIPE_BUF: one write, never interleaved */
      ck_assert_msg(parse((td_imsg_dir)dir, frame, len, &m, &got) == 0, "%s: %s", defs[i].op,
                    err);
      ck_assert_ptr_eq(got, &defs[i]);
      for (size_t k = 0; k < defs[i].nfields; k++) {
        const msgpack_object *o;
        ck_assert_int_eq(td_obj_get(td_msg_root(m), defs[i].fields[k].name, &o), 0);
      }
      td_msg_free(m);
      /* the other side does not take it */
      ck_assert_int_eq(parse((td_imsg_dir)(1 - dir), frame, len, &m, &got), TD_EPROTO);
      ck_assert_msg(strstr(err, defs[i].op) != NULL, "%s", err);
      td_imsg_free(&b);
    }
  }
}
END_TEST

START_TEST(every_report_of_the_worker_is_there) {
  static const char *const kinds[] = {"heartbeat", "error",   "plan",          "progress",
                                      "eval",      "val",     "replan",        "oom",
                                      "checkpoint", "resumed", "resume_failed", "warning",
                                      "done"};

  for (size_t i = 0; i < TD_ARRAY_SIZE(kinds); i++)
    ck_assert_msg(td_imsg_find(TD_IMSG_REPORT, kinds[i], strlen(kinds[i])) != NULL, "%s",
                  kinds[i]);
  ck_assert_ptr_nonnull(td_imsg_find(TD_IMSG_CONTROL, "budget", 6));
}
END_TEST

/* A progress with loss at v, the rest legal. */
static int progress_with(double loss, double acc, uint64_t epoch, td_msg **m) {
  const td_msgdef *def;
  const void *frame;
  size_t len;
  td_imsg b;
  int rc;

  td_imsg_begin(&b, TD_IMSG_REPORT, "progress");
  td_imsg_u64(&b, "epoch", epoch);
  td_imsg_u64(&b, "epochs", 3);
  td_imsg_u64(&b, "step", 1);
  td_imsg_u64(&b, "steps", 10);
  td_imsg_f64(&b, "loss", loss);
  td_imsg_f64(&b, "train_accuracy", acc);
  td_imsg_f64(&b, "samples_per_sec", 100);
  td_imsg_u64(&b, "mem", 1 << 20);
  td_imsg_f64(&b, "data_wait", 0.01);
  rc = td_imsg_end(&b, &frame, &len);
  if (rc == 0)
    rc = parse(TD_IMSG_REPORT, frame, len, m, &def);
  else
    snprintf(err, sizeof(err), "%s", b.p.why);
  td_imsg_free(&b);
  return rc;
}

START_TEST(a_diverged_loss_is_news_not_a_bad_message) {
  td_msg *m;
  double v;

  ck_assert_int_eq(progress_with(NAN, 0.5, 1, &m), 0);
  ck_assert_int_eq(td_obj_f64(td_msg_root(m), "loss", &v), 0);
  ck_assert(isnan(v));
  td_msg_free(m);
  ck_assert_int_eq(progress_with(INFINITY, 0.5, 1, &m), 0);
  td_msg_free(m);
}
END_TEST

START_TEST(the_encoder_refuses_what_the_catalogue_does_not_say) {
  const void *frame;
  size_t len;
  td_imsg b;
  td_msg *m;

  /* out of bounds: never sent */
  ck_assert_int_eq(progress_with(0.5, 1.5, 1, &m), TD_EINTERNAL);
  ck_assert_msg(strstr(err, "train_accuracy") != NULL, "%s", err);
  ck_assert_int_eq(progress_with(0.5, 0.5, 0, &m), TD_EINTERNAL);
  ck_assert_msg(strstr(err, "epoch") != NULL, "%s", err);
  /* an unknown kind, an unknown field, a missing one, a field twice */
  td_imsg_begin(&b, TD_IMSG_REPORT, "gossip");
  ck_assert_int_eq(td_imsg_end(&b, &frame, &len), TD_EINTERNAL);
  ck_assert_msg(strstr(b.p.why, "gossip") != NULL, "%s", b.p.why);
  td_imsg_free(&b);
  td_imsg_begin(&b, TD_IMSG_REPORT, "warning");
  td_imsg_str(&b, "msg", "x");
  td_imsg_u64(&b, "extra", 1);
  ck_assert_int_eq(td_imsg_end(&b, &frame, &len), TD_EINTERNAL);
  ck_assert_msg(strstr(b.p.why, "extra") != NULL, "%s", b.p.why);
  td_imsg_free(&b);
  td_imsg_begin(&b, TD_IMSG_REPORT, "eval");
  td_imsg_u64(&b, "epoch", 1);
  ck_assert_int_eq(td_imsg_end(&b, &frame, &len), TD_EINTERNAL);
  ck_assert_msg(strstr(b.p.why, "accuracy") != NULL, "%s", b.p.why);
  td_imsg_free(&b);
  td_imsg_begin(&b, TD_IMSG_REPORT, "warning");
  td_imsg_str(&b, "msg", "x");
  td_imsg_str(&b, "msg", "y");
  ck_assert_int_eq(td_imsg_end(&b, &frame, &len), TD_EINTERNAL);
  td_imsg_free(&b);
  /* a str of the wrong type of field */
  td_imsg_begin(&b, TD_IMSG_REPORT, "eval");
  td_imsg_str(&b, "epoch", "1");
  ck_assert_int_eq(td_imsg_end(&b, &frame, &len), TD_EINTERNAL);
  td_imsg_free(&b);
}
END_TEST

START_TEST(a_long_string_is_cut_to_fit) {
  char big[5000];
  const td_msgdef *def;
  const void *frame;
  const char *s;
  size_t len, n;
  td_imsg b;
  td_msg *m;

  memset(big, 'x', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  td_imsg_begin(&b, TD_IMSG_REPORT, "error");
  td_imsg_str(&b, "code", "EDATA");
  td_imsg_str(&b, "msg", big);
  ck_assert_int_eq(td_imsg_end(&b, &frame, &len), 0);
  ck_assert_uint_le(len, 4096);
  ck_assert_int_eq(parse(TD_IMSG_REPORT, frame, len, &m, &def), 0);
  ck_assert_int_eq(td_obj_str(td_msg_root(m), "msg", &s, &n), 0);
  ck_assert_uint_eq(n, 2047);
  td_msg_free(m);
  td_imsg_free(&b);
}
END_TEST

/* A message packed by hand: {"v": v, "op": op, then the pairs}. */
static size_t hand(unsigned char *out, size_t cap, uint64_t v, const char *op, int npairs,
                   void (*pairs)(td_pack *)) {
  td_pack p;
  size_t len;

  td_pack_init(&p);
  td_pack_map(&p, 2 + (uint32_t)npairs);
  td_pack_kv_u64(&p, "v", v);
  td_pack_kv_str(&p, "op", op);
  if (pairs != NULL)
    pairs(&p);
  len = td_pack_len(&p);
  ck_assert_uint_le(len, cap);
  memcpy(out, td_pack_data(&p), len);
  td_pack_free(&p);
  return len;
}

static void msg_nul(td_pack *p) { td_pack_str(p, "msg"), td_pack_strn(p, "a\0b", 3); }
static void msg_int(td_pack *p) { td_pack_kv_u64(p, "msg", 7); }
static void msg_and_extra(td_pack *p) {
  td_pack_kv_str(p, "msg", "x");
  td_pack_kv_str(p, "why", "y");
}
static void budget_zero(td_pack *p) {
  td_pack_kv_u64(p, "bytes", 0);
  td_pack_kv_u64(p, "device", 0);
}

START_TEST(the_decoder_refuses_and_names_the_field) {
  static const struct {
    uint64_t v;
    const char *op;
    int dir, npairs;
    void (*pairs)(td_pack *);
    int code;
    const char *names;
  } cases[] = {
      {2, "heartbeat", TD_IMSG_REPORT, 0, NULL, TD_EVERSION, "version 2"},
      {1, "gossip", TD_IMSG_REPORT, 0, NULL, TD_EPROTO, "gossip"},
      {1, "warning", TD_IMSG_REPORT, 0, NULL, TD_EPROTO, "msg"},
      {1, "warning", TD_IMSG_REPORT, 1, msg_nul, TD_EPROTO, "msg"},
      {1, "warning", TD_IMSG_REPORT, 1, msg_int, TD_EPROTO, "msg"},
      {1, "warning", TD_IMSG_REPORT, 2, msg_and_extra, TD_EPROTO, "why"},
      {1, "budget", TD_IMSG_CONTROL, 2, budget_zero, TD_EPROTO, "bytes"},
  };
  unsigned char buf[8192];

  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    size_t len = hand(buf, sizeof(buf), cases[i].v, cases[i].op, cases[i].npairs,
                      cases[i].pairs);
    const td_msgdef *def;
    td_msg *m;
    int rc;

    err[0] = '\0';
    rc = td_imsg_parse((td_imsg_dir)cases[i].dir, buf, len, &m, &def, err, sizeof(err));
    ck_assert_msg(rc == cases[i].code, "case %zu: %s, not %s (%s)", i, td_err_name(rc),
                  td_err_name(cases[i].code), err);
    ck_assert_msg(strstr(err, cases[i].names) != NULL, "case %zu: '%s' lacks '%s'", i, err,
                  cases[i].names);
  }
  /* not msgpack, or not a map */
  ck_assert_int_ne(td_imsg_parse(TD_IMSG_REPORT, "\xc1", 1, NULL, NULL, err, sizeof(err)), 0);
  ck_assert_int_ne(td_imsg_parse(TD_IMSG_REPORT, "\x93\x01\x02\x03", 4, NULL, NULL, err,
                                 sizeof(err)), 0);
}
END_TEST

START_TEST(frames_are_cut_right_however_the_bytes_come) {
  static td_imsg_frames f;
  unsigned char stream[3 * 4096];
  size_t total = 0, len;
  const void *body;
  td_imsg b[3];
  int seen = 0;

  for (int i = 0; i < 3; i++) {
    const void *frame;

    td_imsg_begin(&b[i], TD_IMSG_REPORT, i == 1 ? "warning" : "heartbeat");
    if (i == 1)
      td_imsg_str(&b[i], "msg", "careful");
    ck_assert_int_eq(td_imsg_end(&b[i], &frame, &len), 0);
    memcpy(stream + total, frame, len);
    total += len;
    td_imsg_free(&b[i]);
  }
  /* one byte at a time */
  memset(&f, 0, sizeof(f));
  for (size_t i = 0; i < total; i++) {
    int rc;

    ck_assert_uint_eq(td_imsg_frames_put(&f, stream + i, 1), 1);
    while ((rc = td_imsg_frames_next(&f, &body, &len, err, sizeof(err))) == 1) {
      const td_msgdef *def;
      td_msg *m;

      ck_assert_int_eq(td_imsg_parse(TD_IMSG_REPORT, body, len, &m, &def, err, sizeof(err)), 0);
      ck_assert_str_eq(def->op, seen == 1 ? "warning" : "heartbeat");
      td_msg_free(m);
      seen++;
    }
    ck_assert_int_eq(rc, 0);
  }
  ck_assert_int_eq(seen, 3);
  /* a length of 0, or over the limit, is a broken stream */
  memset(&f, 0, sizeof(f));
  td_imsg_frames_put(&f, "\0\0\0\0", 4);
  ck_assert_int_eq(td_imsg_frames_next(&f, &body, &len, err, sizeof(err)), TD_EPROTO);
  memset(&f, 0, sizeof(f));
  td_imsg_frames_put(&f, "\0\0\x10\0", 4);
  ck_assert_int_eq(td_imsg_frames_next(&f, &body, &len, err, sizeof(err)), TD_EPROTO);
  ck_assert_msg(strstr(err, "4096") != NULL, "%s", err);
  /* a whole frame of the largest size fits after the rest was taken */
  memset(&f, 0, sizeof(f));
  {
    static unsigned char big[TD_IMSG_HDR + TD_IMSG_MAX];

    memset(big, 0, sizeof(big));
    big[2] = (unsigned char)(TD_IMSG_MAX >> 8), big[3] = (unsigned char)TD_IMSG_MAX;
    for (int i = 0; i < 5; i++) {
      size_t used = 0;

      while (used < sizeof(big)) {
        size_t put = td_imsg_frames_put(&f, big + used, sizeof(big) - used);

        ck_assert_uint_gt(put, 0);
        used += put;
        while (td_imsg_frames_next(&f, &body, &len, err, sizeof(err)) == 1)
          ck_assert_uint_eq(len, TD_IMSG_MAX);
      }
    }
  }
}
END_TEST

/* ---- proto/INTERNAL.md against the catalogue ---- */

/* How INTERNAL.md writes a field's bounds. */
static void bounds_text(const td_field *f, char *out, size_t cap) {
  if (f->type == TD_FT_BOOL)
    snprintf(out, cap, "-");
  else if (f->type == TD_FT_FLOAT && f->min == -HUGE_VAL && f->max == HUGE_VAL)
    snprintf(out, cap, "any");
  else if (f->max >= 0x1p64 || f->max == HUGE_VAL)
    snprintf(out, cap, "%.17g..", f->min);
  else
    snprintf(out, cap, "%.17g..%.17g", f->min, f->max);
}

/* The section "### op" under part, and its end (the next heading). */
static const char *md_section(const char *md, const char *part, const char *op, size_t *seclen) {
  const char *p = strstr(md, part), *s, *e;
  char pat[96];

  ck_assert_msg(p != NULL, "INTERNAL.md has no '%s'", part);
  snprintf(pat, sizeof(pat), "\n### %s\n", op);
  s = strstr(p, pat);
  e = strstr(p + 1, "\n## ");
  if (s == NULL || (e != NULL && s > e))
    return NULL;
  s += strlen(pat);
  e = strstr(s, "\n#");
  *seclen = e != NULL ? (size_t)(e - s) : strlen(s);
  return s;
}

/* The table rows of a section: "| `name` | type | bounds | meaning |". */
static int md_rows(const char *sec, size_t seclen, char names[][48], char types[][16],
                   char bounds[][48], int cap) {
  int n = 0;

  for (const char *l = sec; l < sec + seclen; l = strchr(l, '\n') + 1) {
    char name[48], type[16], bnd[48];

    if (sscanf(l, "| `%47[^`]` | %15[^ |] | %47[^ |] |", name, type, bnd) == 3) {
      ck_assert_int_lt(n, cap);
      snprintf(names[n], 48, "%s", name);
      snprintf(types[n], 16, "%s", type);
      snprintf(bounds[n], 48, "%s", bnd);
      n++;
    }
    if (strchr(l, '\n') == NULL)
      break;
  }
  return n;
}

START_TEST(internal_md_matches_the_catalogue_both_ways) {
  static const char *const parts[TD_IMSG__DIRS] = {"\n## Worker reports\n",
                                                    "\n## traind commands\n"};
  const char *src = getenv("TD_SOURCE_ROOT");
  char path[1024], *md;
  size_t mdlen;

  snprintf(path, sizeof(path), "%s/proto/INTERNAL.md", src ? src : ".");
  ck_assert_msg(td_read_file(path, 1 << 20, &md, &mdlen) == 0,
                "cannot read %s (set TD_SOURCE_ROOT to the source tree)", path);
  for (int dir = 0; dir < TD_IMSG__DIRS; dir++) {
    size_t n;
    const td_msgdef *defs = td_imsg_defs((td_imsg_dir)dir, &n);
    const char *p = strstr(md, parts[dir]), *end;

    /* catalogue -> document */
    for (size_t i = 0; i < n; i++) {
      char names[32][48], types[32][16], bounds[32][48], want[48];
      size_t seclen;
      const char *sec = md_section(md, parts[dir], defs[i].op, &seclen);
      int rows;

      ck_assert_msg(sec != NULL, "INTERNAL.md has no '### %s' under '%s'", defs[i].op,
                    parts[dir] + 4);
      rows = md_rows(sec, seclen, names, types, bounds, 32);
      ck_assert_msg((size_t)rows == defs[i].nfields,
                    "INTERNAL.md's '%s' has %d fields; the catalogue %zu", defs[i].op, rows,
                    defs[i].nfields);
      for (size_t k = 0; k < defs[i].nfields; k++) {
        const td_field *f = &defs[i].fields[k];
        int hit = -1;

        for (int r = 0; r < rows; r++)
          if (strcmp(names[r], f->name) == 0)
            hit = r;
        ck_assert_msg(hit >= 0, "INTERNAL.md's '%s' lacks '%s'", defs[i].op, f->name);
        ck_assert_msg(strcmp(types[hit], td_ftype_name(f->type)) == 0,
                      "INTERNAL.md says '%s' of '%s' is %s; the catalogue says %s", f->name,
                      defs[i].op, types[hit], td_ftype_name(f->type));
        bounds_text(f, want, sizeof(want));
        ck_assert_msg(strcmp(bounds[hit], want) == 0,
                      "INTERNAL.md says '%s' of '%s' is within %s; the catalogue says %s",
                      f->name, defs[i].op, bounds[hit], want);
      }
    }
    /* document -> catalogue: every section of the part is a kind */
    ck_assert_ptr_nonnull(p);
    end = strstr(p + 1, "\n## ");
    for (const char *s = strstr(p, "\n### "); s != NULL && (end == NULL || s < end);
         s = strstr(s + 1, "\n### ")) {
      size_t len = strcspn(s + 5, "\n");

      ck_assert_msg(td_imsg_find((td_imsg_dir)dir, s + 5, len) != NULL,
                    "INTERNAL.md describes '%.*s', which the catalogue (proto/imsg.c) lacks",
                    (int)len, s + 5);
    }
  }
  free(md);
}
END_TEST

int main(void) {
  Suite *s = suite_create("imsg");
  TCase *tc = tcase_create("imsg");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, every_kind_round_trips);
  tcase_add_test(tc, every_report_of_the_worker_is_there);
  tcase_add_test(tc, a_diverged_loss_is_news_not_a_bad_message);
  tcase_add_test(tc, the_encoder_refuses_what_the_catalogue_does_not_say);
  tcase_add_test(tc, a_long_string_is_cut_to_fit);
  tcase_add_test(tc, the_decoder_refuses_and_names_the_field);
  tcase_add_test(tc, frames_are_cut_right_however_the_bytes_come);
  tcase_add_test(tc, internal_md_matches_the_catalogue_both_ways);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
