#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "error.h"
#include "proto.h"
#include "util.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static char err[512];

/* A fixed-seed generator so every run sees the same "random" inputs. */
static uint64_t rng_state;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* A root map described as a list, so tests can build any request, broken
 * ones included ("v" and "op" are ordinary entries here). */
struct kv {
  const char *k;
  char t; /* s str, u uint, i int, f float, b bool, n nil, m {}, a [] */
  const char *s;
  int64_t i;
  double f;
  size_t slen; /* for s: 0 means strlen */
};

static void pack_kvs(td_pack *p, const struct kv *kvs, size_t n) {
  td_pack_map(p, (uint32_t)n);
  for (size_t j = 0; j < n; j++) {
    const struct kv *e = &kvs[j];
    td_pack_str(p, e->k);
    switch (e->t) {
    case 's': td_pack_strn(p, e->s, e->slen ? e->slen : strlen(e->s)); break;
    case 'u': td_pack_u64(p, (uint64_t)e->i); break;
    case 'i': td_pack_i64(p, e->i); break;
    case 'f': td_pack_f64(p, e->f); break;
    case 'b': td_pack_bool(p, (int)e->i); break;
    case 'n': td_pack_nil(p); break;
    case 'm': td_pack_map(p, 0); break;
    case 'a': td_pack_array(p, 0); break;
    default: ck_abort_msg("bad kv type %c", e->t);
    }
  }
}

#define S(k_, v_) {.k = k_, .t = 's', .s = v_}
#define SN(k_, v_, n_) {.k = k_, .t = 's', .s = v_, .slen = n_}
#define U(k_, v_) {.k = k_, .t = 'u', .i = v_}
#define I(k_, v_) {.k = k_, .t = 'i', .i = v_}
#define B(k_, v_) {.k = k_, .t = 'b', .i = v_}
#define F(k_, v_) {.k = k_, .t = 'f', .f = v_}
#define N(k_) {.k = k_, .t = 'n'}
#define M(k_) {.k = k_, .t = 'm'}
#define A(k_) {.k = k_, .t = 'a'}
#define KVS(...) ((const struct kv[]){__VA_ARGS__}), sizeof((const struct kv[]){__VA_ARGS__}) / sizeof(struct kv)

static int parse_kvs(const struct kv *kvs, size_t n) {
  td_pack p;
  td_msg *m = NULL;
  const td_msgdef *d = NULL;
  td_pack_init(&p);
  pack_kvs(&p, kvs, n);
  ck_assert_int_eq(td_pack_error(&p), 0);
  err[0] = '\0';
  int rc = td_proto_parse_request(td_pack_data(&p), td_pack_len(&p), &m, &d, err, sizeof err);
  if (rc == 0) {
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(d);
  }
  td_msg_free(m);
  td_pack_free(&p);
  return rc;
}

static void sample_submit(td_pack *p) {
  td_pack_request(p, "submit", 4);
  td_pack_kv_str(p, "job", "name: mnist\nmodel: mlp\n");
  td_pack_kv_str(p, "base_dir", "/home/ann/jobs");
  td_pack_kv_str(p, "key", "0123456789abcdef0123456789abcdef");
  td_pack_kv_str(p, "name", "mnist-1");
}

static const char *const plan_keys[] = {"micro_batch", "params",    "grads",
                                        "optim",       "activations", "workspace",
                                        "staging",     "overhead",  "total"};

static void pack_plan(td_pack *p) {
  td_pack_map(p, TD_ARRAY_SIZE(plan_keys));
  for (size_t i = 0; i < TD_ARRAY_SIZE(plan_keys); i++)
    td_pack_kv_u64(p, plan_keys[i], (i + 1) * 1000003ull);
}

static void check_plan(const msgpack_object *plan) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(plan_keys); i++) {
    uint64_t v = 0;
    ck_assert_int_eq(td_obj_u64(plan, plan_keys[i], &v), 0);
    ck_assert_uint_eq(v, (i + 1) * 1000003ull);
  }
}

static void sample_list_reply(td_pack *p) {
  td_pack_reply_ok(p, 1);
  td_pack_str(p, "jobs");
  td_pack_array(p, 2);
  for (int j = 0; j < 2; j++) {
    td_pack_map(p, 11);
    td_pack_kv_u64(p, "id", 7 + (uint64_t)j);
    td_pack_kv_str(p, "name", j ? "b" : "a");
    td_pack_kv_str(p, "state", j ? "queued" : "running");
    td_pack_kv_str(p, "device", j ? "" : "cpu0");
    td_pack_kv_i64(p, "submitted_ms", 1700000000000 + j);
    td_pack_kv_u64(p, "epoch", 1);
    td_pack_kv_u64(p, "epochs", 10);
    td_pack_kv_u64(p, "step", 50);
    td_pack_kv_u64(p, "steps", 469);
    td_pack_kv_f64(p, "loss", 0.5);
    td_pack_kv_f64(p, "accuracy", -1);
  }
}

/* ---- round trips ---- */

START_TEST(test_request_submit) {
  td_pack p;
  td_msg *m;
  const td_msgdef *d;
  const msgpack_object *root;
  char buf[64];
  const char *s;
  size_t n;
  td_pack_init(&p);
  sample_submit(&p);
  ck_assert_int_eq(td_proto_parse_request(td_pack_data(&p), td_pack_len(&p), &m, &d, err,
                                          sizeof err), 0);
  ck_assert_str_eq(d->op, "submit");
  ck_assert_ptr_eq(d, td_proto_find("submit", 6));
  root = td_msg_root(m);
  ck_assert_int_eq(td_obj_cstr(root, "key", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "0123456789abcdef0123456789abcdef");
  ck_assert_int_eq(td_obj_cstr(root, "base_dir", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "/home/ann/jobs");
  ck_assert_int_eq(td_obj_cstr(root, "name", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "mnist-1");
  ck_assert_int_eq(td_obj_str(root, "job", &s, &n), 0);
  ck_assert_uint_eq(n, strlen("name: mnist\nmodel: mlp\n"));
  ck_assert_mem_eq(s, "name: mnist\nmodel: mlp\n", n);
  td_msg_free(m);
  td_pack_free(&p);
}
END_TEST

/* Each op, all of its fields at legal values, round-trips through the table. */
START_TEST(test_request_every_op) {
  size_t ndefs;
  const td_msgdef *defs = td_proto_defs(&ndefs);
  ck_assert_uint_eq(ndefs, 11);
  for (size_t i = 0; i < ndefs; i++) {
    const td_msgdef *d = &defs[i];
    td_pack p;
    td_msg *m;
    const td_msgdef *got;
    td_pack_init(&p);
    td_pack_request(&p, d->op, (uint32_t)d->nfields);
    for (size_t j = 0; j < d->nfields; j++) {
      const td_field *f = &d->fields[j];
      td_pack_str(&p, f->name);
      switch (f->type) {
      case TD_FT_STR: td_pack_str(&p, "x"); break;
      case TD_FT_INT: td_pack_i64(&p, (int64_t)f->min); break;
      case TD_FT_UINT: td_pack_u64(&p, (uint64_t)f->min); break;
      case TD_FT_FLOAT: td_pack_f64(&p, f->min); break;
      case TD_FT_BOOL: td_pack_bool(&p, 1); break;
      case TD_FT_MAP: td_pack_map(&p, 0); break;
      case TD_FT_ARRAY: td_pack_array(&p, 0); break;
      }
    }
    ck_assert_msg(td_proto_parse_request(td_pack_data(&p), td_pack_len(&p), &m, &got, err,
                                         sizeof err) == 0, "%s: %s", d->op, err);
    ck_assert_ptr_eq(got, d);
    for (size_t j = 0; j < d->nfields; j++) {
      const msgpack_object *o;
      ck_assert_int_eq(td_obj_get(td_msg_root(m), d->fields[j].name, &o), 0);
    }
    td_msg_free(m);
    td_pack_free(&p);
  }
}
END_TEST

START_TEST(test_reply_submit) {
  td_pack p;
  td_msg *m;
  const msgpack_object *root, *plan;
  uint64_t id;
  int dup;
  char state[16], dev[16];
  td_pack_init(&p);
  td_pack_reply_ok(&p, 5);
  td_pack_kv_u64(&p, "id", 42);
  td_pack_kv_str(&p, "state", "queued");
  td_pack_kv_bool(&p, "duplicate", 1);
  td_pack_str(&p, "plan");
  pack_plan(&p);
  td_pack_kv_str(&p, "device", "cpu0");
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err), 0);
  root = td_msg_root(m);
  ck_assert_int_eq(td_obj_u64(root, "id", &id), 0);
  ck_assert_uint_eq(id, 42);
  ck_assert_int_eq(td_obj_cstr(root, "state", state, sizeof state), 0);
  ck_assert_str_eq(state, "queued");
  ck_assert_int_eq(td_obj_bool(root, "duplicate", &dup), 0);
  ck_assert_int_eq(dup, 1);
  ck_assert_int_eq(td_obj_cstr(root, "device", dev, sizeof dev), 0);
  ck_assert_str_eq(dev, "cpu0");
  ck_assert_int_eq(td_obj_map(root, "plan", &plan), 0);
  check_plan(plan);
  td_msg_free(m);
  td_pack_free(&p);
}
END_TEST

START_TEST(test_reply_list) {
  td_pack p;
  td_msg *m;
  const msgpack_object *jobs;
  td_pack_init(&p);
  sample_list_reply(&p);
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err), 0);
  ck_assert_int_eq(td_obj_array(td_msg_root(m), "jobs", &jobs), 0);
  ck_assert_uint_eq(jobs->via.array.size, 2);
  for (uint32_t j = 0; j < 2; j++) {
    const msgpack_object *job = &jobs->via.array.ptr[j];
    uint64_t id;
    int64_t ms;
    double loss, acc;
    char name[8];
    ck_assert_int_eq(td_obj_u64(job, "id", &id), 0);
    ck_assert_uint_eq(id, 7 + j);
    ck_assert_int_eq(td_obj_cstr(job, "name", name, sizeof name), 0);
    ck_assert_str_eq(name, j ? "b" : "a");
    ck_assert_int_eq(td_obj_i64(job, "submitted_ms", &ms), 0);
    ck_assert_int_eq(ms, 1700000000000 + j);
    ck_assert_int_eq(td_obj_f64(job, "loss", &loss), 0);
    ck_assert_double_eq(loss, 0.5);
    ck_assert_int_eq(td_obj_f64(job, "accuracy", &acc), 0);
    ck_assert_double_eq(acc, -1);
  }
  td_msg_free(m);
  td_pack_free(&p);
}
END_TEST

START_TEST(test_reply_show_cancel_info_devices) {
  td_pack p;
  td_msg *m;
  const msgpack_object *job, *plan, *devs;
  char buf[64];
  double up;
  uint64_t u;
  int64_t es;

  td_pack_init(&p);
  td_pack_reply_ok(&p, 1);
  td_pack_str(&p, "job");
  td_pack_map(&p, 6);
  td_pack_kv_u64(&p, "id", 3);
  td_pack_kv_str(&p, "model", "/var/lib/traind/models/3.safetensors");
  td_pack_kv_str(&p, "error", "");
  td_pack_kv_i64(&p, "exit_status", -9);
  td_pack_kv_f64(&p, "samples_per_sec", 12345.5);
  td_pack_str(&p, "plan");
  pack_plan(&p);
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err), 0);
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "job", &job), 0);
  ck_assert_int_eq(td_obj_cstr(job, "model", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "/var/lib/traind/models/3.safetensors");
  ck_assert_int_eq(td_obj_cstr(job, "error", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "");
  ck_assert_int_eq(td_obj_i64(job, "exit_status", &es), 0);
  ck_assert_int_eq(es, -9);
  ck_assert_int_eq(td_obj_map(job, "plan", &plan), 0);
  check_plan(plan);
  td_msg_free(m);
  td_pack_free(&p);

  td_pack_init(&p);
  td_pack_reply_ok(&p, 2);
  td_pack_kv_u64(&p, "id", 3);
  td_pack_kv_str(&p, "state", "cancelled");
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err), 0);
  ck_assert_int_eq(td_obj_cstr(td_msg_root(m), "state", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "cancelled");
  td_msg_free(m);
  td_pack_free(&p);

  td_pack_init(&p);
  td_pack_reply_ok(&p, 5);
  td_pack_kv_str(&p, "version", "0.1.0");
  td_pack_kv_u64(&p, "protocol", TD_PROTO_VERSION);
  td_pack_kv_f64(&p, "uptime_s", 12.25);
  td_pack_kv_str(&p, "status_socket", "ipc:///run/traind/status.sock");
  td_pack_kv_u64(&p, "jobs", 9);
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err), 0);
  ck_assert_int_eq(td_obj_f64(td_msg_root(m), "uptime_s", &up), 0);
  ck_assert_double_eq(up, 12.25);
  ck_assert_int_eq(td_obj_u64(td_msg_root(m), "protocol", &u), 0);
  ck_assert_uint_eq(u, TD_PROTO_VERSION);
  td_msg_free(m);
  td_pack_free(&p);

  td_pack_init(&p);
  td_pack_reply_ok(&p, 1);
  td_pack_str(&p, "devices");
  td_pack_array(&p, 1);
  td_pack_map(&p, 4);
  td_pack_kv_str(&p, "name", "cuda0");
  td_pack_kv_u64(&p, "budget", 80ull << 30);
  td_pack_kv_u64(&p, "reserved", 3ull << 30);
  td_pack_kv_u64(&p, "jobs", 2);
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err), 0);
  ck_assert_int_eq(td_obj_array(td_msg_root(m), "devices", &devs), 0);
  ck_assert_uint_eq(devs->via.array.size, 1);
  ck_assert_int_eq(td_obj_u64(&devs->via.array.ptr[0], "budget", &u), 0);
  ck_assert_uint_eq(u, 80ull << 30);
  td_msg_free(m);
  td_pack_free(&p);
}
END_TEST

/* Every code in error.h survives the wire by name. */
START_TEST(test_reply_error_every_code) {
  for (int code = TD__ERR_BASE + 1; code < TD__ERR_END; code++) {
    td_pack p;
    td_msg *m = (td_msg *)&rng_state; /* sentinel: must stay untouched */
    td_pack_init(&p);
    td_pack_reply_err(&p, code, "what to do about it");
    ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err),
                     code);
    ck_assert_str_eq(err, "what to do about it");
    ck_assert_ptr_eq(m, (td_msg *)&rng_state);
    td_pack_free(&p);
  }
}
END_TEST

START_TEST(test_reply_error_details) {
  td_pack p;
  td_msg *m;
  int code;
  const msgpack_object *plan;
  td_pack_init(&p);
  td_pack_reply_err_begin(&p, TD_ENOFIT, "needs 9 GiB at micro-batch 1, cpu0 has 8 GiB", 1);
  td_pack_str(&p, "plan");
  pack_plan(&p);
  ck_assert_int_eq(td_proto_decode_reply(td_pack_data(&p), td_pack_len(&p), &m, &code, err,
                                         sizeof err), 0);
  ck_assert_int_eq(code, TD_ENOFIT);
  ck_assert_str_eq(err, "needs 9 GiB at micro-batch 1, cpu0 has 8 GiB");
  ck_assert_int_eq(td_obj_map(td_msg_root(m), "plan", &plan), 0);
  check_plan(plan);
  td_msg_free(m);
  td_pack_free(&p);

  /* No message: the code's own text stands in. */
  td_pack_init(&p);
  td_pack_reply_err(&p, TD_ESTATE, NULL);
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err),
                   TD_ESTATE);
  ck_assert_str_eq(err, td_strerror(TD_ESTATE));
  td_pack_free(&p);
}
END_TEST

START_TEST(test_reply_malformed) {
  td_msg *m;
  /* A code from a newer daemon, control characters in the message. */
  td_pack p;
  td_pack_init(&p);
  pack_kvs(&p, KVS(U("v", 1), B("ok", 0), S("error", "EFUTURE"),
                   S("message", "bad\x1b[2Jthing\nnext")));
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err),
                   TD_EINTERNAL);
  ck_assert_ptr_nonnull(strstr(err, "bad?[2Jthing\nnext"));
  ck_assert_ptr_nonnull(strstr(err, "'EFUTURE' is unknown"));
  td_pack_free(&p);

  static const struct {
    struct kv kvs[4];
    size_t n;
    const char *why;
  } bad[] = {
      {{U("v", 1)}, 1, "no boolean 'ok'"},
      {{U("v", 1), U("ok", 1)}, 2, "no boolean 'ok'"},
      {{U("v", 1), B("ok", 0)}, 2, "no string 'error'"},
      {{U("v", 1), B("ok", 0), U("error", 3)}, 3, "no string 'error'"},
      {{U("v", 1), B("ok", 0), S("error", "ENOENT"), U("message", 0)}, 4,
       "'message' is not a string"},
      {{U("v", 2), B("ok", 1)}, 2, "version 2"},
  };
  for (size_t i = 0; i < TD_ARRAY_SIZE(bad); i++) {
    td_pack_init(&p);
    pack_kvs(&p, bad[i].kvs, bad[i].n);
    int rc = td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err);
    ck_assert_msg(rc == (i == 5 ? TD_EVERSION : TD_EPROTO), "case %zu: rc %d", i, rc);
    ck_assert_msg(strstr(err, bad[i].why), "case %zu: '%s'", i, err);
    td_pack_free(&p);
  }
}
END_TEST

START_TEST(test_decode_owns_bytes) {
  td_pack p;
  td_msg *m;
  const td_msgdef *d;
  char buf[64];
  td_pack_init(&p);
  sample_submit(&p);
  size_t n = td_pack_len(&p);
  char *copy = malloc(n);
  memcpy(copy, td_pack_data(&p), n);
  ck_assert_int_eq(td_proto_parse_request(copy, n, &m, &d, err, sizeof err), 0);
  memset(copy, 0xc1, n);
  free(copy);
  ck_assert_int_eq(td_obj_cstr(td_msg_root(m), "name", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "mnist-1");
  td_msg_free(m);
  td_msg_free(NULL);
  td_pack_free(&p);
  td_pack_free(&p); /* twice is harmless */
  td_pack_free(NULL);
}
END_TEST

/* ---- hostile bytes ---- */

struct hostile {
  const char *name;
  const uint8_t *b;
  size_t len;
  int rc;
  const char *why;
};

#define H(nm, rc, why, ...)                                                                   \
  {nm, (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}), rc, why}

static const struct hostile hostile[] = {
    H("array32 of 4G", TD_EPROTO, "array at offset 0 claims 4294967295 elements but 0 bytes remain",
      0xdd, 0xff, 0xff, 0xff, 0xff),
    H("map32 of 4G", TD_EPROTO, "map at offset 0 claims 4294967295 pairs", 0xdf, 0xff, 0xff, 0xff,
      0xff),
    H("str32 of 4GiB", TD_EPROTO, "str at offset 0 claims 4294967295 bytes", 0xdb, 0xff, 0xff,
      0xff, 0xff, 'a'),
    H("bin32 of 4GiB", TD_EPROTO, "bin at offset 0 claims 4294967295 bytes", 0xc6, 0xff, 0xff,
      0xff, 0xff),
    H("ext32 of 4GiB", TD_EPROTO, "ext at offset 0 claims 4294967295 bytes", 0xc9, 0xff, 0xff,
      0xff, 0xff, 0x01),
    H("array16 short", TD_EPROTO, "claims 65535 elements but 2 bytes remain", 0xdc, 0xff, 0xff,
      0xc0, 0xc0),
    H("map16 short", TD_EPROTO, "claims 3 pairs but 4 bytes remain", 0xde, 0x00, 0x03, 0xc0, 0xc0,
      0xc0, 0xc0),
    H("map in map claims more than its siblings leave", TD_EPROTO,
      "map at offset 3 claims 2 pairs but 3 bytes remain", 0x82, 0xa1, 'a', 0xdf, 0x00, 0x00,
      0x00, 0x02, 0xc0, 0xc0, 0xa1, 'b', 0xc0),
    H("str eats its sibling's byte", TD_EPROTO, "str at offset 1 claims 2 bytes but 1 remain",
      0x92, 0xd9, 0x02, 'a', 'b'),
    H("nested arrays claim 4G each", TD_EPROTO, "claims 4294967295 elements", 0x91, 0x91, 0xdd,
      0xff, 0xff, 0xff, 0xff),
    H("ext8 with no type byte", TD_EPROTO, "ext at offset 0 needs", 0xc7, 0x05),
    H("fixext16 cut short", TD_EPROTO, "ext at offset 0 needs 17 more bytes", 0xd8, 0x01, 0x02),
    H("uint64 cut short", TD_EPROTO, "int at offset 0 needs 8 more bytes but 3 remain", 0xcf,
      0x01, 0x02, 0x03),
    H("float64 in an array, cut short", TD_EPROTO, "float at offset 1 needs 8", 0x91, 0xcb, 0x00),
    H("reserved 0xc1", TD_EPROTO, "reserved type byte 0xc1 at offset 2", 0x81, 0xa0, 0xc1),
    H("trailing bytes", TD_EPROTO, "2 trailing bytes", 0x80, 0x00, 0x00),
    H("two objects", TD_EPROTO, "trailing bytes", 0x81, 0xa1, 'v', 0x01, 0x80),
    H("nine levels", TD_ETOOBIG, "nested deeper than 8", 0x91, 0x91, 0x91, 0x91, 0x91, 0x91,
      0x91, 0x91, 0x90),
};

START_TEST(test_check_hostile) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(hostile); i++) {
    const struct hostile *h = &hostile[i];
    char err2[512];
    td_msg *m = NULL;
    const td_msgdef *d = NULL;
    err[0] = '\0';
    int rc = td_proto_check(h->b, h->len, err, sizeof err);
    ck_assert_msg(rc == h->rc, "%s: rc %d, %s", h->name, rc, err);
    ck_assert_msg(strstr(err, h->why), "%s: '%s' lacks '%s'", h->name, err, h->why);
    /* The decoders fail with the check's own words: it ran, and ran first. */
    ck_assert_int_eq(td_msg_decode(h->b, h->len, &m, err2, sizeof err2), h->rc);
    ck_assert_str_eq(err2, err);
    ck_assert_int_eq(td_proto_parse_request(h->b, h->len, &m, &d, err2, sizeof err2), h->rc);
    ck_assert_str_eq(err2, err);
    ck_assert_int_eq(td_proto_parse_reply(h->b, h->len, &m, err2, sizeof err2), h->rc);
    ck_assert_ptr_null(m);
    ck_assert_ptr_null(d);
  }
}
END_TEST

START_TEST(test_check_deep_and_big) {
  size_t n = 1000;
  uint8_t *b = malloc(TD_PROTO_MAX_MSG + 1);
  memset(b, 0x91, n);
  b[n] = 0xc0;
  ck_assert_int_eq(td_proto_check(b, n + 1, err, sizeof err), TD_ETOOBIG);
  ck_assert_ptr_nonnull(strstr(err, "at offset 8 is nested deeper than 8"));

  /* Eight levels are allowed. */
  ck_assert_int_eq(td_proto_check(b + n - 8, 9, err, sizeof err), 0);

  /* 100001 nils really present: still one element over the limit. */
  b[0] = 0xdd;
  b[1] = 0x00, b[2] = 0x01, b[3] = 0x86, b[4] = 0xa1;
  memset(b + 5, 0xc0, 100001);
  ck_assert_int_eq(td_proto_check(b, 5 + 100001, err, sizeof err), TD_ETOOBIG);
  ck_assert_ptr_nonnull(strstr(err, "has 100001 elements, the limit is 100000"));
  b[4] = 0xa0;
  ck_assert_int_eq(td_proto_check(b, 5 + 100000, err, sizeof err), 0);

  memset(b, 0, TD_PROTO_MAX_MSG + 1);
  ck_assert_int_eq(td_proto_check(b, TD_PROTO_MAX_MSG + 1, err, sizeof err), TD_ETOOBIG);
  ck_assert_ptr_nonnull(strstr(err, "limit is 2097152"));
  ck_assert_int_eq(td_proto_check(b, 0, err, sizeof err), TD_EPROTO);
  ck_assert_int_eq(td_proto_check(NULL, 5, err, sizeof err), TD_EPROTO);
  ck_assert_int_eq(td_proto_check(b, 1, NULL, 0), 0); /* err is optional */
  free(b);
}
END_TEST

/* Under an address-space limit a few MiB above what the process uses, any
 * allocation sized by a hostile count would fail; the decoders still answer
 * EPROTO with the check's words, so none was attempted.  (ASan reserves
 * terabytes of shadow memory, so this runs only in plain builds, and only
 * in Check's fork mode.) */
START_TEST(test_no_alloc_before_check) {
#ifdef UNDER_ASAN
  return;
#else
  const char *fork_mode = getenv("CK_FORK");
  if (fork_mode && strcmp(fork_mode, "no") == 0)
    return; /* the limit would outlive this test */
  unsigned long pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(fscanf(f, "%lu", &pages), 1);
  fclose(f);
  struct rlimit rl = {.rlim_cur = pages * 4096ul + (16ul << 20),
                      .rlim_max = pages * 4096ul + (16ul << 20)};
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &rl), 0);

  /* The hazard is real: msgpack-c alone reserves the claimed count. */
  msgpack_unpacked up;
  size_t off = 0;
  msgpack_unpacked_init(&up);
  ck_assert_int_eq(msgpack_unpack_next(&up, (const char *)hostile[0].b, hostile[0].len, &off),
                   MSGPACK_UNPACK_NOMEM_ERROR);
  msgpack_unpacked_destroy(&up);

  for (size_t i = 0; i < TD_ARRAY_SIZE(hostile); i++) {
    td_msg *m = NULL;
    ck_assert_int_eq(td_msg_decode(hostile[i].b, hostile[i].len, &m, err, sizeof err),
                     hostile[i].rc);
    ck_assert_ptr_nonnull(strstr(err, hostile[i].why));
  }
#endif
}
END_TEST

static void expect_all_rejected(const uint8_t *b, size_t len) {
  td_msg *m = NULL;
  const td_msgdef *d = NULL;
  int code;
  ck_assert_int_ne(td_proto_check(b, len, err, sizeof err), 0);
  ck_assert_int_ne(td_msg_decode(b, len, &m, err, sizeof err), 0);
  ck_assert_int_ne(td_proto_parse_request(b, len, &m, &d, err, sizeof err), 0);
  ck_assert_int_ne(td_proto_parse_reply(b, len, &m, err, sizeof err), 0);
  ck_assert_int_ne(td_proto_decode_reply(b, len, &m, &code, err, sizeof err), 0);
  ck_assert_ptr_null(m);
}

/* Every prefix of a valid message, and the message plus one byte, fail. */
START_TEST(test_truncated_every_offset) {
  td_pack msgs[2];
  td_pack_init(&msgs[0]);
  sample_submit(&msgs[0]);
  td_pack_init(&msgs[1]);
  sample_list_reply(&msgs[1]);
  for (int k = 0; k < 2; k++) {
    size_t len = td_pack_len(&msgs[k]);
    uint8_t *b = malloc(len + 1); /* exact size, so ASan sees any overread */
    memcpy(b, td_pack_data(&msgs[k]), len);
    for (size_t cut = 0; cut < len; cut++) {
      uint8_t *pre = malloc(cut ? cut : 1);
      memcpy(pre, b, cut);
      expect_all_rejected(pre, cut);
      free(pre);
    }
    b[len] = 0xc0;
    expect_all_rejected(b, len + 1);
    ck_assert_int_eq(td_proto_check(b, len, err, sizeof err), 0);
    free(b);
    td_pack_free(&msgs[k]);
  }
}
END_TEST

/* Whatever td_proto_check accepts, msgpack-c decodes to the last byte. */
static void fuzz_one(const uint8_t *b, size_t len) {
  td_msg *m = NULL;
  const td_msgdef *d;
  const char *topic;
  const void *body;
  size_t blen;
  int code;
  if (td_proto_check(b, len, err, sizeof err) == 0) {
    msgpack_unpacked up;
    size_t off = 0;
    msgpack_unpacked_init(&up);
    ck_assert_int_eq(msgpack_unpack_next(&up, (const char *)b, len, &off), MSGPACK_UNPACK_SUCCESS);
    ck_assert_uint_eq(off, len);
    msgpack_unpacked_destroy(&up);
  }
  if (td_msg_decode(b, len, &m, err, sizeof err) == 0) {
    char s[8];
    int64_t i;
    const msgpack_object *o;
    td_obj_cstr(td_msg_root(m), "op", s, sizeof s);
    td_obj_i64(td_msg_root(m), "v", &i);
    td_obj_get(td_msg_root(m), "", &o);
    td_msg_free(m);
  }
  if (td_proto_parse_request(b, len, &m, &d, err, sizeof err) == 0)
    td_msg_free(m);
  if (td_proto_decode_reply(b, len, &m, &code, err, sizeof err) == 0)
    td_msg_free(m);
  td_event_split(b, len, &topic, &body, &blen);
}

START_TEST(test_random_bytes) {
  uint8_t b[48];
  rng_state = 0x9e3779b97f4a7c15ull;
  for (int n = 0; n < 100000; n++) {
    size_t len = rng() % sizeof b;
    for (size_t i = 0; i < len; i++) {
      uint64_t r = rng();
      /* Half the bytes from the containers and headers, to get past the first byte. */
      b[i] = (r & 1) ? (uint8_t)(0x80 + (r >> 8) % 0x60) : (uint8_t)(r >> 8);
    }
    uint8_t *exact = malloc(len ? len : 1);
    memcpy(exact, b, len);
    fuzz_one(exact, len);
    free(exact);
  }
}
END_TEST

START_TEST(test_mutated_messages) {
  td_pack p;
  td_pack_init(&p);
  sample_submit(&p);
  size_t len = td_pack_len(&p);
  uint8_t *b = malloc(len);
  rng_state = 12345;
  for (int n = 0; n < 20000; n++) {
    memcpy(b, td_pack_data(&p), len);
    for (int k = 1 + (int)(rng() % 3); k > 0; k--)
      b[rng() % len] = (uint8_t)rng();
    fuzz_one(b, len);
  }
  free(b);
  td_pack_free(&p);
}
END_TEST

/* ---- decoding rules ---- */

START_TEST(test_version) {
  ck_assert_int_eq(parse_kvs(KVS(U("v", 2), S("op", "info"))), TD_EVERSION);
  ck_assert_ptr_nonnull(strstr(err, "version 2"));
  ck_assert_ptr_nonnull(strstr(err, "speaks version 1"));
  ck_assert_int_eq(parse_kvs(KVS(I("v", -1), S("op", "info"))), TD_EVERSION);
  ck_assert_ptr_nonnull(strstr(err, "version -1"));
  ck_assert_int_eq(parse_kvs(KVS(U("v", 0), S("op", "info"))), TD_EVERSION);
  ck_assert_int_eq(parse_kvs(KVS(S("op", "info"))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "no protocol version"));
  ck_assert_int_eq(parse_kvs(KVS(S("v", "1"), S("op", "info"))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "must be an integer, got str"));
  ck_assert_int_eq(parse_kvs(KVS(F("v", 1.0), S("op", "info"))), TD_EPROTO);
  ck_assert_int_eq(parse_kvs(KVS(S("op", "info"), U("v", 1))), 0); /* any order */

  /* 1 written as int8 is still version 1. */
  static const uint8_t int8_v[] = {0x82, 0xa1, 'v', 0xd0, 0x01, 0xa2, 'o', 'p', 0xa4, 'i', 'n', 'f', 'o'};
  td_msg *m;
  const td_msgdef *d;
  ck_assert_int_eq(td_proto_parse_request(int8_v, sizeof int8_v, &m, &d, err, sizeof err), 0);
  td_msg_free(m);
}
END_TEST

START_TEST(test_root_and_keys) {
  const struct {
    const char *name;
    const uint8_t *b;
    size_t len;
    const char *why;
  } cases[] = {
#define C(nm, why, ...) {nm, (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__}), why}
      C("array root", "must be a map, got array", 0x91, 0x01),
      C("int root", "must be a map, got uint", 0x05),
      C("str root", "must be a map, got str", 0xa1, 'v'),
      C("nil root", "must be a map, got nil", 0xc0),
      C("int key", "keys must be strings", 0x82, 0xa1, 'v', 0x01, 0x01, 0x02),
      C("bin key", "a map key is a bin", 0x82, 0xa1, 'v', 0x01, 0xc4, 0x01, 'x', 0x02),
      C("duplicate v", "duplicate key 'v'", 0x82, 0xa1, 'v', 0x01, 0xa1, 'v', 0x01),
      C("duplicate in nested map", "duplicate key 'a'", 0x82, 0xa1, 'v', 0x01, 0xa1, 'x', 0x82,
        0xa1, 'a', 0x01, 0xa1, 'a', 0x02),
      C("int key in nested array of maps", "keys must be strings", 0x82, 0xa1, 'v', 0x01, 0xa1,
        'x', 0x91, 0x81, 0x07, 0x01),
#undef C
  };
  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_msg *m = NULL;
    int rc = td_msg_decode(cases[i].b, cases[i].len, &m, err, sizeof err);
    ck_assert_msg(rc == TD_EPROTO, "%s: rc %d", cases[i].name, rc);
    ck_assert_msg(strstr(err, cases[i].why), "%s: '%s'", cases[i].name, err);
    ck_assert_ptr_null(m);
  }
}
END_TEST

/* fuzz_proto's crash: msgpack-c gives an empty first key a NULL pointer, and
 * memchr/memcmp on NULL is undefined even for 0 bytes. */
START_TEST(test_empty_strings) {
  static const uint8_t crash[] = {0x82, 0xa0, 0x01, 0xa1, 'v', 0x01};
  static const uint8_t strs[] = {0x83, 0xa0, 0xa0, 0xa1, 'v', 0x01, 0xa1, 'b', 0xc4, 0x00};
  const msgpack_object *root, *o;
  const td_msgdef *d;
  td_msg *m = NULL;
  const char *s;
  size_t n;
  int64_t i64;
  char buf[4];

  ck_assert_int_eq(td_msg_decode(crash, sizeof crash, &m, err, sizeof err), 0);
  root = td_msg_root(m);
  ck_assert_ptr_nonnull(root->via.map.ptr[0].key.via.str.ptr);
  ck_assert_int_eq(td_obj_get(root, "", &o), 0);
  ck_assert_ptr_eq(o, &root->via.map.ptr[0].val);
  ck_assert_int_eq(td_obj_i64(root, "", &i64), 0);
  ck_assert_int_eq(i64, 1);
  ck_assert_int_eq(td_obj_str(root, "", &s, &n), TD_EPROTO);
  td_msg_free(m);
  m = NULL;
  ck_assert_int_eq(td_proto_parse_request(crash, sizeof crash, &m, &d, err, sizeof err), TD_EPROTO);
  ck_assert_str_eq(err, "request has no 'op'");
  ck_assert_ptr_null(m);

  ck_assert_int_eq(td_msg_decode(strs, sizeof strs, &m, err, sizeof err), 0);
  root = td_msg_root(m);
  ck_assert_int_eq(td_obj_str(root, "", &s, &n), 0);
  ck_assert_ptr_nonnull(s);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(td_obj_cstr(root, "", buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "");
  ck_assert_int_eq(td_obj_get(root, "b", &o), 0);
  ck_assert_int_eq(o->type, MSGPACK_OBJECT_BIN);
  ck_assert_ptr_nonnull(o->via.bin.ptr);
  td_msg_free(m);
}
END_TEST

/* Big maps take the sorting path; a duplicate far apart is still found. */
START_TEST(test_duplicate_keys_big_map) {
  for (int dup = 0; dup < 2; dup++) {
    td_pack p;
    td_msg *m = NULL;
    char k[16];
    td_pack_init(&p);
    td_pack_map(&p, 1001);
    td_pack_kv_u64(&p, "v", 1);
    for (int i = 0; i < 1000; i++) {
      snprintf(k, sizeof k, "k%d", dup && i == 999 ? 3 : i);
      td_pack_kv_u64(&p, k, (uint64_t)i);
    }
    int rc = td_msg_decode(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err);
    if (dup) {
      ck_assert_int_eq(rc, TD_EPROTO);
      ck_assert_ptr_nonnull(strstr(err, "duplicate key 'k3'"));
    } else {
      uint64_t v;
      ck_assert_int_eq(rc, 0);
      ck_assert_int_eq(td_obj_u64(td_msg_root(m), "k777", &v), 0);
      ck_assert_uint_eq(v, 777);
    }
    td_msg_free(m);
    td_pack_free(&p);
  }
}
END_TEST

/* ---- field validation ---- */

START_TEST(test_fields) {
  static char big_job[(1 << 20) + 2];
  static char key65[66];
  memset(big_job, 'x', sizeof big_job - 1);
  memset(key65, 'k', 65);
  const char *K = "0123456789abcdef";
#define SUBMIT_BASE U("v", 1), S("op", "submit"), S("job", "model: mlp"), \
                    S("base_dir", "/tmp")
  ck_assert_int_eq(parse_kvs(KVS(SUBMIT_BASE, S("key", K))), 0);
  ck_assert_int_eq(parse_kvs(KVS(SUBMIT_BASE, S("key", K), S("name", "n"))), 0);

  static const struct {
    const char *what;
    int rc;
    const char *why;
  } expect[] = {
      {"key uint", TD_EPROTO, "field 'key' in 'submit' must be str, got uint"},
      {"key missing", TD_EPROTO, "missing required field 'key' in 'submit'"},
      {"unknown field", TD_EPROTO, "unknown field 'priority' in 'submit'"},
      {"key empty", TD_EPROTO, "field 'key' in 'submit' must not be empty"},
      {"key 65", TD_ETOOBIG, "field 'key' in 'submit' is 65 bytes long; the limit is 64"},
      {"job > 1 MiB", TD_ETOOBIG, "field 'job' in 'submit' is 1048577 bytes long"},
      {"name NUL", TD_EPROTO, "field 'name' in 'submit' contains a NUL byte"},
      {"name nil", TD_EPROTO, "must be str, got nil"},
      {"job bool", TD_EPROTO, "field 'job' in 'submit' must be str, got bool"},
      {"unknown field, odd bytes", TD_EPROTO, "unknown field 'a?b' in 'submit'"},
  };
  int rc[TD_ARRAY_SIZE(expect)];
  char why[TD_ARRAY_SIZE(expect)][256];
  size_t i = 0;
#define RUN(...) (rc[i] = parse_kvs(KVS(__VA_ARGS__)), snprintf(why[i], 256, "%s", err), i++)
  RUN(SUBMIT_BASE, U("key", 5));
  RUN(SUBMIT_BASE);
  RUN(SUBMIT_BASE, S("key", K), U("priority", 1));
  RUN(SUBMIT_BASE, S("key", ""));
  RUN(SUBMIT_BASE, S("key", key65));
  RUN(U("v", 1), S("op", "submit"), S("job", big_job), S("base_dir", "/"),
      S("key", K));
  RUN(SUBMIT_BASE, S("key", K), SN("name", "a\0b", 3));
  RUN(SUBMIT_BASE, S("key", K), N("name"));
  RUN(U("v", 1), S("op", "submit"), B("job", 1), S("base_dir", "/"),
      S("key", K));
  RUN(SUBMIT_BASE, S("key", K), U("a\nb", 1));
#undef RUN
#undef SUBMIT_BASE
  ck_assert_uint_eq(i, TD_ARRAY_SIZE(expect));
  for (i = 0; i < TD_ARRAY_SIZE(expect); i++) {
    ck_assert_msg(rc[i] == expect[i].rc, "%s: rc %d (%s)", expect[i].what, rc[i], why[i]);
    ck_assert_msg(strstr(why[i], expect[i].why), "%s: '%s'", expect[i].what, why[i]);
  }
}
END_TEST

START_TEST(test_fields_numbers) {
#define R(op) U("v", 1), S("op", op)
  ck_assert_int_eq(parse_kvs(KVS(R("show"), U("id", 1))), 0);
  ck_assert_int_eq(parse_kvs(KVS(R("show"), U("id", -1))), 0); /* UINT64_MAX */
  ck_assert_int_eq(parse_kvs(KVS(R("show"), U("id", 0))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "field 'id' in 'show' is 0; it must be at least 1"));
  ck_assert_int_eq(parse_kvs(KVS(R("show"), I("id", -1))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "must be uint, got negative int"));
  ck_assert_int_eq(parse_kvs(KVS(R("show"), F("id", 1.0))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "got float"));
  ck_assert_int_eq(parse_kvs(KVS(R("show"), S("id", "1"))), TD_EPROTO);
  ck_assert_int_eq(parse_kvs(KVS(R("show"))), TD_EPROTO);
  ck_assert_int_eq(parse_kvs(KVS(R("cancel"))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "missing required field 'id' in 'cancel'"));
  ck_assert_int_eq(parse_kvs(KVS(R("cancel"), U("id", 9))), 0);

  ck_assert_int_eq(parse_kvs(KVS(R("list"))), 0);
  ck_assert_int_eq(parse_kvs(KVS(R("list"), U("limit", 5000), S("state", "running"))), 0);
  ck_assert_int_eq(parse_kvs(KVS(R("list"), U("limit", 5001))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "is 5001; it must be between 1 and 5000"));
  ck_assert_int_eq(parse_kvs(KVS(R("list"), U("after", 0), U("limit", 10))), 0);
  /* every request may carry a credential, and only a string */
  ck_assert_int_eq(parse_kvs(KVS(R("info"), S("cred", "MUNGE:AwQ..."))), 0);
  ck_assert_int_eq(parse_kvs(KVS(R("info"), U("cred", 1))), TD_EPROTO);
  ck_assert_int_eq(parse_kvs(KVS(R("submit"), S("job", "x"), S("base_dir", "/"), S("key", "k"),
                                 S("owner", "root"))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "unknown field 'owner' in 'submit'"));
  ck_assert_int_eq(parse_kvs(KVS(R("list"), U("limit", 0))), TD_EPROTO);
  ck_assert_int_eq(parse_kvs(KVS(R("list"), S("state", "abcdefghijklmnopq"))), TD_ETOOBIG);
  ck_assert_int_eq(parse_kvs(KVS(R("list"), A("state"))), TD_EPROTO);

  ck_assert_int_eq(parse_kvs(KVS(R("info"))), 0);
  ck_assert_int_eq(parse_kvs(KVS(R("devices"))), 0);
  ck_assert_int_eq(parse_kvs(KVS(R("info"), U("id", 1))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "unknown field 'id' in 'info'"));
#undef R
}
END_TEST

START_TEST(test_ops) {
  ck_assert_int_eq(parse_kvs(KVS(U("v", 1), S("op", "frobnicate"))), TD_EPROTO);
  ck_assert_str_eq(err, "unknown op 'frobnicate'");
  ck_assert_int_eq(parse_kvs(KVS(U("v", 1), S("op", "sub"))), TD_EPROTO);
  ck_assert_int_eq(parse_kvs(KVS(U("v", 1), S("op", "submitx"))), TD_EPROTO);
  ck_assert_int_eq(parse_kvs(KVS(U("v", 1), U("op", 1))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "'op' must be a string, got uint"));
  ck_assert_int_eq(parse_kvs(KVS(U("v", 1))), TD_EPROTO);
  ck_assert_ptr_nonnull(strstr(err, "request has no 'op'"));
  ck_assert_ptr_null(td_proto_find("sub", 3));
  ck_assert_ptr_null(td_proto_find(NULL, 0));
  ck_assert_ptr_nonnull(td_proto_find("infox", 4));

  /* The table itself is sane. */
  size_t n;
  const td_msgdef *defs = td_proto_defs(&n);
  for (size_t i = 0; i < n; i++) {
    ck_assert_ptr_nonnull(defs[i].summary);
    ck_assert_ptr_eq(td_proto_find(defs[i].op, strlen(defs[i].op)), &defs[i]);
    for (size_t j = 0; j < defs[i].nfields; j++) {
      const td_field *f = &defs[i].fields[j];
      ck_assert_msg(f->min <= f->max, "%s.%s", defs[i].op, f->name);
      ck_assert_str_ne(f->name, "v");
      ck_assert_str_ne(f->name, "op");
      for (size_t k = 0; k < j; k++)
        ck_assert_str_ne(f->name, defs[i].fields[k].name);
    }
  }
}
END_TEST

/* ---- accessors ---- */

START_TEST(test_accessors) {
  td_pack p;
  td_msg *m;
  const msgpack_object *root, *o;
  const char *s = "untouched";
  size_t n = 77;
  char buf[8] = "keep";
  int64_t i64 = 5;
  uint64_t u64 = 5;
  double f = 5;
  int b = 5;

  td_pack_init(&p);
  td_pack_map(&p, 10);
  td_pack_kv_u64(&p, "v", 1);
  td_pack_kv_u64(&p, "big", UINT64_MAX);
  td_pack_kv_i64(&p, "neg", INT64_MIN);
  td_pack_kv_f64(&p, "pi", 3.25);
  td_pack_kv_bool(&p, "t", 1);
  td_pack_kv_str(&p, "seven", "1234567");
  td_pack_str(&p, "nul");
  td_pack_strn(&p, "a\0b", 3);
  td_pack_str(&p, "m");
  td_pack_map(&p, 0);
  td_pack_str(&p, "a");
  td_pack_array(&p, 1);
  td_pack_nil(&p);
  td_pack_str(&p, "n");
  td_pack_nil(&p);
  ck_assert_int_eq(td_msg_decode(td_pack_data(&p), td_pack_len(&p), &m, err, sizeof err), 0);
  root = td_msg_root(m);

  /* Wrong type or range leaves every output as it was. */
  ck_assert_int_eq(td_obj_i64(root, "big", &i64), TD_EPROTO);
  ck_assert_int_eq(td_obj_u64(root, "neg", &u64), TD_EPROTO);
  ck_assert_int_eq(td_obj_u64(root, "pi", &u64), TD_EPROTO);
  ck_assert_int_eq(td_obj_f64(root, "seven", &f), TD_EPROTO);
  ck_assert_int_eq(td_obj_bool(root, "v", &b), TD_EPROTO);
  ck_assert_int_eq(td_obj_str(root, "m", &s, &n), TD_EPROTO);
  ck_assert_int_eq(td_obj_map(root, "a", &o), TD_EPROTO);
  ck_assert_int_eq(td_obj_array(root, "m", &o), TD_EPROTO);
  ck_assert_int_eq(td_obj_cstr(root, "nul", buf, sizeof buf), TD_EPROTO);
  ck_assert_int_eq(td_obj_cstr(root, "n", buf, sizeof buf), TD_EPROTO);
  ck_assert_int_eq(td_obj_i64(root, "absent", &i64), TD_ENOENT);
  ck_assert_int_eq(td_obj_cstr(root, "absent", buf, sizeof buf), TD_ENOENT);
  ck_assert_int_eq(td_obj_u64(root, "vv", &u64), TD_ENOENT);
  ck_assert_int_eq(td_obj_get(&root->via.map.ptr[0].val, "v", &o), TD_EPROTO); /* not a map */
  ck_assert_int_eq(i64, 5);
  ck_assert_uint_eq(u64, 5);
  ck_assert_double_eq(f, 5);
  ck_assert_int_eq(b, 5);
  ck_assert_str_eq(s, "untouched");
  ck_assert_uint_eq(n, 77);
  ck_assert_str_eq(buf, "keep");

  /* cstr: exactly fits with the NUL, or does not fit at all. */
  ck_assert_int_eq(td_obj_cstr(root, "seven", buf, 7), TD_ETOOBIG);
  ck_assert_str_eq(buf, "keep");
  ck_assert_int_eq(td_obj_cstr(root, "seven", buf, 8), 0);
  ck_assert_str_eq(buf, "1234567");

  ck_assert_int_eq(td_obj_u64(root, "big", &u64), 0);
  ck_assert_uint_eq(u64, UINT64_MAX);
  ck_assert_int_eq(td_obj_i64(root, "neg", &i64), 0);
  ck_assert_int_eq(i64, INT64_MIN);
  ck_assert_int_eq(td_obj_i64(root, "v", &i64), 0);
  ck_assert_int_eq(i64, 1);
  ck_assert_int_eq(td_obj_f64(root, "pi", &f), 0);
  ck_assert_double_eq(f, 3.25);
  ck_assert_int_eq(td_obj_f64(root, "neg", &f), 0);
  ck_assert_double_eq(f, (double)INT64_MIN);
  ck_assert_int_eq(td_obj_bool(root, "t", &b), 0);
  ck_assert_int_eq(b, 1);
  ck_assert_int_eq(td_obj_str(root, "nul", &s, &n), 0);
  ck_assert_uint_eq(n, 3);
  ck_assert_mem_eq(s, "a\0b", 3);
  ck_assert_int_eq(td_obj_map(root, "m", &o), 0);
  ck_assert_uint_eq(o->via.map.size, 0);
  ck_assert_int_eq(td_obj_array(root, "a", &o), 0);
  ck_assert_uint_eq(o->via.array.size, 1);
  td_msg_free(m);
  td_pack_free(&p);
}
END_TEST

/* ---- packing limits and events ---- */

START_TEST(test_pack_too_big) {
  td_pack p;
  char *big = malloc(TD_PROTO_MAX_MSG);
  memset(big, 'x', TD_PROTO_MAX_MSG);
  td_pack_init(&p);
  td_pack_reply_ok(&p, 1);
  td_pack_str(&p, "blob");
  td_pack_strn(&p, big, TD_PROTO_MAX_MSG);
  ck_assert_int_eq(td_pack_error(&p), TD_ETOOBIG);
  ck_assert_ptr_null(td_pack_data(&p));
  ck_assert_uint_eq(td_pack_len(&p), 0);
  td_pack_free(&p);
  free(big);
}
END_TEST

START_TEST(test_events) {
  static const char *const topics[] = {TD_TOPIC_JOB_STATE, TD_TOPIC_JOB_PROGRESS,
                                       TD_TOPIC_JOB_EVAL, TD_TOPIC_DEVICE,
                                       TD_TOPIC_JOB_OOM, TD_TOPIC_JOB_REPLAN};
  for (size_t t = 0; t < TD_ARRAY_SIZE(topics); t++) {
    td_pack p;
    td_msg *m;
    const char *topic;
    const void *body;
    size_t blen;
    uint64_t id;
    td_pack_init(&p);
    ck_assert_int_eq(td_pack_event_begin(&p, topics[t], 2), 0);
    td_pack_kv_u64(&p, "id", 11);
    td_pack_kv_str(&p, "state", "running");
    const char *d = td_pack_data(&p);
    ck_assert_mem_eq(d, topics[t], strlen(topics[t]) + 1); /* SUB filters on these bytes */
    ck_assert_int_eq(td_event_split(d, td_pack_len(&p), &topic, &body, &blen), 0);
    ck_assert_str_eq(topic, topics[t]);
    ck_assert_uint_eq(blen, td_pack_len(&p) - strlen(topics[t]) - 1);
    ck_assert_int_eq(td_msg_decode(body, blen, &m, err, sizeof err), 0);
    ck_assert_int_eq(td_obj_u64(td_msg_root(m), "id", &id), 0);
    ck_assert_uint_eq(id, 11);
    td_msg_free(m);
    td_pack_free(&p);
  }

  td_pack p;
  char long_topic[TD_PROTO_MAX_TOPIC + 2];
  memset(long_topic, 't', sizeof long_topic - 1);
  long_topic[sizeof long_topic - 1] = '\0';
  td_pack_init(&p);
  ck_assert_int_eq(td_pack_event_begin(&p, "", 0), TD_EINVAL);
  ck_assert_int_eq(td_pack_event_begin(&p, NULL, 0), TD_EINVAL);
  ck_assert_int_eq(td_pack_event_begin(&p, long_topic, 0), TD_EINVAL);
  ck_assert_uint_eq(td_pack_len(&p), 0);
  td_pack_free(&p);

  const char *topic = "keep";
  const void *body = NULL;
  size_t blen = 99;
  ck_assert_int_eq(td_event_split("abc", 3, &topic, &body, &blen), TD_EPROTO);     /* no NUL */
  ck_assert_int_eq(td_event_split("\0\x80", 2, &topic, &body, &blen), TD_EPROTO);  /* no topic */
  ck_assert_int_eq(td_event_split("abc", 4, &topic, &body, &blen), TD_EPROTO);     /* no body */
  ck_assert_int_eq(td_event_split(NULL, 0, &topic, &body, &blen), TD_EPROTO);
  ck_assert_int_eq(td_event_split(long_topic, sizeof long_topic, &topic, &body, &blen), TD_EPROTO);
  ck_assert_str_eq(topic, "keep");
  ck_assert_uint_eq(blen, 99);
}
END_TEST

/* ---- the catalogue in PROTOCOL.md matches the table ---- */

START_TEST(test_protocol_md) {
  const char *src = getenv("TD_SOURCE_ROOT");
  char path[1024], pat[128], *md = NULL;
  size_t mdlen;
  snprintf(path, sizeof path, "%s/proto/PROTOCOL.md", src ? src : ".");
  ck_assert_msg(td_read_file(path, 1 << 20, &md, &mdlen) == 0,
                "cannot read %s (set TD_SOURCE_ROOT to the source tree)", path);
  size_t n;
  const td_msgdef *defs = td_proto_defs(&n);
  for (size_t i = 0; i < n; i++) {
    snprintf(pat, sizeof pat, "\n### %s\n", defs[i].op);
    char *sec = strstr(md, pat);
    ck_assert_msg(sec, "PROTOCOL.md has no section '### %s'", defs[i].op);
    char *end = strstr(sec + 1, "\n### ");
    size_t seclen = end ? (size_t)(end - sec) : strlen(sec);
    for (size_t j = 0; j < defs[i].nfields; j++) {
      snprintf(pat, sizeof pat, "| `%s` | %s |", defs[i].fields[j].name,
               td_ftype_name(defs[i].fields[j].type));
      char *hit = strstr(sec, pat);
      ck_assert_msg(hit && (size_t)(hit - sec) < seclen, "PROTOCOL.md '%s' lacks row '%s'",
                    defs[i].op, pat);
    }
  }
  for (int code = TD__ERR_BASE + 1; code < TD__ERR_END; code++) {
    snprintf(pat, sizeof pat, "| `%s` |", td_err_name(code));
    ck_assert_msg(strstr(md, pat), "PROTOCOL.md does not list error %s", td_err_name(code));
  }
  static const char *const topics[] = {TD_TOPIC_JOB_STATE, TD_TOPIC_JOB_PROGRESS,
                                       TD_TOPIC_JOB_EVAL, TD_TOPIC_DEVICE,
                                       TD_TOPIC_JOB_OOM, TD_TOPIC_JOB_REPLAN};
  for (size_t t = 0; t < TD_ARRAY_SIZE(topics); t++) {
    snprintf(pat, sizeof pat, "\n### %s\n", topics[t]);
    ck_assert_msg(strstr(md, pat), "PROTOCOL.md has no section for topic %s", topics[t]);
  }
  free(md);
}
END_TEST

/* ---- the reply and event catalogue ---- */

/* Every def reachable from the catalogue, each once. */
struct defset {
  const td_replydef *def[64];
  int events[64]; /* a top-level event: documented after "## Status socket" */
  size_t n;
};

static void defset_add(struct defset *ds, const td_replydef *d, int event) {
  for (size_t i = 0; i < ds->n; i++)
    if (ds->def[i] == d)
      return;
  ck_assert_uint_lt(ds->n, TD_ARRAY_SIZE(ds->def));
  ds->def[ds->n] = d;
  ds->events[ds->n++] = event;
  if (d->base)
    defset_add(ds, d->base, 0);
  for (size_t i = 0; i < d->nfields; i++)
    if (d->fields[i].sub)
      defset_add(ds, d->fields[i].sub, 0);
}

static void defset_all(struct defset *ds) {
  size_t n;
  const td_replydef *r = td_proto_replies(&n);
  ds->n = 0;
  for (size_t i = 0; i < n; i++)
    defset_add(ds, &r[i], 0);
  r = td_proto_events(&n);
  for (size_t i = 0; i < n; i++)
    defset_add(ds, &r[i], 1);
}

START_TEST(test_catalogue_shape) {
  struct defset ds;
  size_t n;
  const td_msgdef *req = td_proto_defs(&n);
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(td_proto_reply_find(req[i].op), "no reply to '%s' in the catalogue", req[i].op);
  ck_assert_ptr_nonnull(td_proto_reply_find("error"));
  static const char *const topics[] = {TD_TOPIC_JOB_STATE, TD_TOPIC_JOB_PROGRESS,
                                       TD_TOPIC_JOB_EVAL, TD_TOPIC_DEVICE,
                                       TD_TOPIC_JOB_OOM, TD_TOPIC_JOB_REPLAN};
  for (size_t t = 0; t < TD_ARRAY_SIZE(topics); t++)
    ck_assert_msg(td_proto_event_find(topics[t]), "no event '%s' in the catalogue", topics[t]);
  ck_assert_ptr_null(td_proto_reply_find("nope"));
  ck_assert_ptr_null(td_proto_event_find("job.nope"));

  defset_all(&ds);
  for (size_t i = 0; i < ds.n; i++) {
    const td_replydef *d = ds.def[i];
    size_t nb = d->base ? d->base->nfields : 0;
    ck_assert_msg(nb + d->nfields <= TD_REPLY_MAX_FIELDS, "'%s' has too many fields", d->name);
    ck_assert_msg(d->section && d->section[0] == '#', "'%s' names no section", d->name);
    for (size_t j = 0; j < d->nfields; j++) {
      const td_replyfield *f = &d->fields[j];
      /* a nested definition only where a map, or an array of maps, is */
      ck_assert_msg(!f->sub || f->type == TD_FT_MAP || f->type == TD_FT_ARRAY,
                    "'%s.%s' has a definition but is %s", d->name, f->name,
                    td_ftype_name(f->type));
      ck_assert_msg(f->type != TD_FT_MAP || f->sub, "map '%s.%s' has no definition", d->name,
                    f->name);
      /* names unique, base's included */
      ck_assert_msg(td_replydef_field(d, f->name, strlen(f->name)) == f,
                    "'%s' has field '%s' twice", d->name, f->name);
    }
  }
}
END_TEST

/* A built map is a well-formed message, counts right, and checks out. */
START_TEST(test_map_builder) {
  td_pack p;
  td_map m, sub, item;
  td_msg *msg;
  const msgpack_object *root, *o;
  uint64_t u;

  /* unchecked: 20 entries, so a fixmap could not have held them */
  td_pack_init(&p);
  td_map_begin(&m, &p, NULL);
  td_pack_kv_u64(&p, "v", TD_PROTO_VERSION); /* raw entries are not counted... */
  m.n++;                                     /* ...unless the caller says */
  for (int i = 0; i < 19; i++) {
    char k[8];
    snprintf(k, sizeof k, "k%d", i);
    td_map_kv_u64(&m, k, (uint64_t)i);
  }
  td_map_end(&m);
  ck_assert_int_eq(td_pack_error(&p), 0);
  ck_assert_uint_eq(((const unsigned char *)td_pack_data(&p))[0], 0xdf);
  ck_assert_int_eq(td_msg_decode(td_pack_data(&p), td_pack_len(&p), &msg, err, sizeof err), 0);
  ck_assert_uint_eq(td_msg_root(msg)->via.map.size, 20);
  ck_assert_int_eq(td_obj_u64(td_msg_root(msg), "k18", &u), 0);
  ck_assert_uint_eq(u, 18);
  td_msg_free(msg);
  td_pack_free(&p);

  /* a checked reply with nested maps and an array of maps */
  td_pack_init(&p);
  td_map_reply_ok(&m, &p, "list");
  td_map_kv_bool(&m, "more", 0);
  td_map_kv_array(&m, "jobs", 2);
  for (int i = 0; i < 2; i++) {
    td_map_item(&m, &item);
    td_map_kv_u64(&item, "id", (uint64_t)i + 1);
    td_map_kv_str(&item, "name", "mnist");
    td_map_kv_str(&item, "owner", "ann");
    td_map_kv_str(&item, "state", "queued");
    td_map_kv_str(&item, "device", "");
    td_map_kv_i64(&item, "priority", -3);
    td_map_kv_i64(&item, "submitted_ms", 1700000000000);
    td_map_kv_u64(&item, "epoch", 0);
    td_map_kv_u64(&item, "epochs", 3);
    td_map_kv_u64(&item, "step", 0);
    td_map_kv_u64(&item, "steps", 0);
    td_map_kv_f64(&item, "loss", 0);
    td_map_kv_f64(&item, "accuracy", -1);
    td_map_kv_str(&item, "wait_reason", "");
    td_map_end(&item);
  }
  td_map_end(&m);
  ck_assert_msg(td_pack_error(&p) == 0, "%s", p.why);
  ck_assert_int_eq(td_proto_parse_reply(td_pack_data(&p), td_pack_len(&p), &msg, err, sizeof err),
                   0);
  root = td_msg_root(msg);
  ck_assert_int_eq(td_proto_check_reply("list", root, err, sizeof err), 0);
  ck_assert_int_eq(td_obj_array(root, "jobs", &o), 0);
  ck_assert_uint_eq(o->via.array.size, 2);
  ck_assert_uint_eq(o->via.array.ptr[1].via.map.size, 14);
  td_msg_free(msg);
  td_pack_free(&p);

  /* an error reply carrying a plan; an event */
  td_pack_init(&p);
  td_map_reply_err(&m, &p, TD_ENOFIT, "too big");
  td_map_kv_map(&m, "plan", &sub);
  td_map_kv_u64(&sub, "accumulation", 1);
  for (size_t i = 0; i < TD_ARRAY_SIZE(plan_keys); i++)
    td_map_kv_u64(&sub, plan_keys[i], 1u << i);
  td_map_kv_str(&sub, "precision", "fp32");
  td_map_kv_bool(&sub, "recompute", 0);
  td_map_kv_u64(&sub, "shrink", 1);
  td_map_kv_bool(&sub, "bit_identical", 1);
  td_map_end(&sub);
  td_map_end(&m);
  ck_assert_msg(td_pack_error(&p) == 0, "%s", p.why);
  int code;
  ck_assert_int_eq(td_proto_decode_reply(td_pack_data(&p), td_pack_len(&p), &msg, &code, err,
                                         sizeof err), 0);
  ck_assert_int_eq(code, TD_ENOFIT);
  ck_assert_str_eq(err, "too big");
  ck_assert_int_eq(td_proto_check_reply("submit", td_msg_root(msg), err, sizeof err), 0);
  td_msg_free(msg);
  td_pack_free(&p);

  td_pack_init(&p);
  ck_assert_int_eq(td_map_event(&m, &p, TD_TOPIC_DEVICE), 0);
  td_map_kv_str(&m, "name", "cpu0");
  td_map_kv_u64(&m, "budget", 1 << 30);
  td_map_kv_u64(&m, "reserved", 0);
  td_map_kv_u64(&m, "jobs", 0);
  td_map_end(&m);
  ck_assert_msg(td_pack_error(&p) == 0, "%s", p.why);
  const char *topic;
  const void *body;
  size_t blen;
  ck_assert_int_eq(td_event_split(td_pack_data(&p), td_pack_len(&p), &topic, &body, &blen), 0);
  ck_assert_int_eq(td_msg_decode(body, blen, &msg, err, sizeof err), 0);
  ck_assert_int_eq(td_proto_check_event(topic, td_msg_root(msg), err, sizeof err), 0);
  td_msg_free(msg);
  td_pack_free(&p);

  td_pack_init(&p);
  ck_assert_int_eq(td_map_event(&m, &p, ""), TD_EINVAL);
  td_map_end(&m);
  ck_assert_uint_eq(td_pack_len(&p), 0);
  td_pack_free(&p);
}
END_TEST

/* What the catalogue refuses as it is packed: the reply is never sent. */
START_TEST(test_map_builder_refuses) {
  static const struct {
    int what;
    const char *why;
  } cases[] = {
      {0, "field 'colour' is not in 'cancel'"},
      {1, "field 'id' of 'cancel' is uint in the catalogue, packed as int"},
      {2, "field 'id' of 'cancel' packed twice"},
      {3, "'cancel' lacks its required field 'state'"},
      {4, "no reply to 'frobnicate'"},
      {5, "no event 'job.nope'"},
      {6, "field 'bogus' is not in 'checkpoint'"},
  };
  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    td_pack p;
    td_map m, job, ck;
    td_pack_init(&p);
    if (cases[i].what == 4)
      td_map_reply_ok(&m, &p, "frobnicate");
    else if (cases[i].what == 5)
      td_map_event(&m, &p, "job.nope");
    else if (cases[i].what == 6)
      td_map_reply_ok(&m, &p, "show");
    else
      td_map_reply_ok(&m, &p, "cancel");
    switch (cases[i].what) {
    case 0: td_map_kv_str(&m, "colour", "red"); break;
    case 1: td_map_kv_i64(&m, "id", 1); break;
    case 2: td_map_kv_u64(&m, "id", 1), td_map_kv_u64(&m, "id", 1); break;
    case 3: td_map_kv_u64(&m, "id", 1); break;
    case 6:
      td_map_kv_map(&m, "job", &job);
      td_map_kv_map(&job, "checkpoint", &ck);
      td_map_kv_u64(&ck, "bogus", 1);
      td_map_end(&ck);
      td_map_end(&job);
      break;
    }
    td_map_end(&m);
    ck_assert_int_eq(td_pack_error(&p), TD_EINTERNAL);
    ck_assert_ptr_null(td_pack_data(&p));
    ck_assert_msg(strstr(p.why, cases[i].why), "case %zu: '%s' lacks '%s'", i, p.why,
                  cases[i].why);
    td_pack_free(&p);
  }
}
END_TEST

/* Decoded replies the catalogue refuses, with the path of the bad field. */
START_TEST(test_check_reply) {
  static const struct {
    const char *op;
    const char *json_like; /* packed below by hand */
    const char *why;
  } cases[] = {
      {"cancel", "unknown", "cancel has field 'colour', which 'cancel' in the catalogue lacks"},
      {"cancel", "missing", "cancel lacks the required field 'state' of 'cancel'"},
      {"info", "float-as-int", "info.uptime_s must be float, got uint"},
      {"cancel", "negative-uint", "cancel.id must be uint, got negative int"},
      {"devices", "nested", "devices.devices[0] must be a map ('device entry'), got str"},
      {"cancel", "error-reply", "error lacks the required field 'message' of 'error'"},
      {"cancel", "v-not-ok", NULL},
  };
  for (size_t i = 0; i < TD_ARRAY_SIZE(cases); i++) {
    const char *w = cases[i].json_like;
    td_pack p;
    td_msg *msg;
    td_pack_init(&p);
    if (strcmp(w, "unknown") == 0) {
      td_pack_reply_ok(&p, 3);
      td_pack_kv_u64(&p, "id", 1), td_pack_kv_str(&p, "state", "cancelled");
      td_pack_kv_str(&p, "colour", "red");
    } else if (strcmp(w, "missing") == 0) {
      td_pack_reply_ok(&p, 1);
      td_pack_kv_u64(&p, "id", 1);
    } else if (strcmp(w, "float-as-int") == 0) {
      td_pack_reply_ok(&p, 5);
      td_pack_kv_str(&p, "version", "1"), td_pack_kv_u64(&p, "protocol", 1);
      td_pack_kv_u64(&p, "uptime_s", 3), td_pack_kv_str(&p, "status_socket", "x");
      td_pack_kv_u64(&p, "jobs", 0);
    } else if (strcmp(w, "negative-uint") == 0) {
      td_pack_reply_ok(&p, 2);
      td_pack_kv_i64(&p, "id", -1), td_pack_kv_str(&p, "state", "cancelled");
    } else if (strcmp(w, "nested") == 0) {
      td_pack_reply_ok(&p, 1);
      td_pack_str(&p, "devices");
      td_pack_array(&p, 1);
      td_pack_str(&p, "cpu0");
    } else if (strcmp(w, "error-reply") == 0) {
      td_pack_map(&p, 3);
      td_pack_kv_u64(&p, "v", 1), td_pack_kv_bool(&p, "ok", 0);
      td_pack_kv_str(&p, "error", "ENOENT");
    } else {
      td_pack_reply_ok(&p, 2);
      td_pack_kv_u64(&p, "id", 1), td_pack_kv_str(&p, "state", "cancelled");
    }
    ck_assert_int_eq(td_msg_decode(td_pack_data(&p), td_pack_len(&p), &msg, err, sizeof err), 0);
    int rc = td_proto_check_reply(cases[i].op, td_msg_root(msg), err, sizeof err);
    if (cases[i].why) {
      ck_assert_int_eq(rc, TD_EPROTO);
      ck_assert_str_eq(err, cases[i].why);
    } else {
      ck_assert_msg(rc == 0, "%s", err);
    }
    /* an event's root may not carry "ok" */
    if (!cases[i].why)
      ck_assert_int_eq(td_proto_check_event(TD_TOPIC_DEVICE, td_msg_root(msg), err, sizeof err),
                       TD_EPROTO);
    td_msg_free(msg);
    td_pack_free(&p);
  }
}
END_TEST

/* The rows of one reply/event table in PROTOCOL.md. */
struct md_row {
  char names[8][40];
  int nnames;
  char type[16];
  int optional;
};

static char *md_line_end(char *s) {
  char *e = strchr(s, '\n');
  return e ? e : s + strlen(s);
}

static void md_cell(const char *a, const char *b, char *out, size_t cap) {
  while (a < b && *a == ' ')
    a++;
  while (b > a && b[-1] == ' ')
    b--;
  snprintf(out, cap, "%.*s", (int)(b - a), a);
}

/* Finds def's table (after "## Status socket" for an event) and parses
 * it into rows; returns the table's header line. */
static char *md_table(char *md, const td_replydef *def, int event, struct md_row *rows,
                      size_t cap, size_t *nrows) {
  char pat[160];
  char *from = md, *sec, *end, *pos;
  if (event) {
    from = strstr(md, "\n## Status socket\n");
    ck_assert_ptr_nonnull(from);
  }
  snprintf(pat, sizeof pat, "\n%s\n", def->section);
  sec = strstr(from, pat);
  ck_assert_msg(sec, "PROTOCOL.md has no section '%s' for '%s'", def->section, def->name);
  end = strstr(sec + strlen(pat) - 1, "\n#");
  if (!end)
    end = sec + strlen(sec);
  pos = sec + strlen(pat);
  if (def->table) {
    snprintf(pat, sizeof pat, "\n%s\n", def->table);
    pos = strstr(sec, pat);
    ck_assert_msg(pos && pos < end, "PROTOCOL.md '%s' has no line '%s' (for '%s')",
                  def->section, def->table, def->name);
    pos += strlen(pat);
    while (*pos == '\n')
      pos++;
    ck_assert_msg(*pos == '|', "PROTOCOL.md: no table right after '%s' in '%s'", def->table,
                  def->section);
  } else {
    while (pos < end && *pos != '|')
      pos = md_line_end(pos) + 1;
    ck_assert_msg(pos < end, "PROTOCOL.md '%s' has no table", def->section);
  }
  char *header = pos;
  ck_assert_msg(strncmp(header, "| field | type | meaning |\n", 27) == 0,
                "PROTOCOL.md: the table of '%s' must have the columns field, type, meaning",
                def->name);
  pos = md_line_end(md_line_end(pos) + 1) + 1; /* past the header and the --- line */
  *nrows = 0;
  while (*pos == '|') {
    char *le = md_line_end(pos), *c1 = strchr(pos + 1, '|'), *c2, *c3;
    struct md_row *r = &rows[*nrows];
    ck_assert_uint_lt(*nrows, cap);
    ck_assert_msg(c1 && c1 < le && (c2 = strchr(c1 + 1, '|')) && c2 < le,
                  "PROTOCOL.md: a row of '%s' has too few cells", def->name);
    c3 = strchr(c2 + 1, '|');
    ck_assert_msg(c3 && c3 <= le, "PROTOCOL.md: a row of '%s' has too few cells", def->name);
    memset(r, 0, sizeof *r);
    for (char *b = pos + 1; b < c1;) {
      char *q = memchr(b, '`', (size_t)(c1 - b)), *qe;
      if (!q)
        break;
      qe = memchr(q + 1, '`', (size_t)(c1 - q - 1));
      ck_assert_msg(qe, "PROTOCOL.md: an unclosed ` in a row of '%s'", def->name);
      ck_assert_int_lt(r->nnames, 8);
      md_cell(q + 1, qe, r->names[r->nnames++], sizeof r->names[0]);
      b = qe + 1;
    }
    ck_assert_msg(r->nnames > 0, "PROTOCOL.md: a row of '%s' names no field", def->name);
    md_cell(c1 + 1, c2, r->type, sizeof r->type);
    char meaning[16];
    md_cell(c2 + 1, c3, meaning, sizeof meaning);
    r->optional = strncmp(meaning, "optional", 8) == 0;
    (*nrows)++;
    pos = *le ? le + 1 : le;
  }
  return header;
}

/* Both ways: every field of each catalogue map is a row of its table in
 * PROTOCOL.md with the same type and optionality, every row is a field,
 * and every reply/event table in PROTOCOL.md belongs to a catalogue map. */
START_TEST(test_protocol_md_replies) {
  const char *src = getenv("TD_SOURCE_ROOT");
  char path[1024], *md = NULL, *claimed[64];
  size_t mdlen, nclaimed = 0;
  struct defset ds;
  snprintf(path, sizeof path, "%s/proto/PROTOCOL.md", src ? src : ".");
  ck_assert_msg(td_read_file(path, 1 << 20, &md, &mdlen) == 0,
                "cannot read %s (set TD_SOURCE_ROOT to the source tree)", path);
  defset_all(&ds);
  for (size_t i = 0; i < ds.n; i++) {
    const td_replydef *d = ds.def[i];
    struct md_row rows[40];
    size_t nrows;
    claimed[nclaimed++] = md_table(md, d, ds.events[i], rows, TD_ARRAY_SIZE(rows), &nrows);
    for (size_t j = 0; j < d->nfields; j++) {
      const td_replyfield *f = &d->fields[j];
      int hit = 0;
      for (size_t r = 0; r < nrows && !hit; r++)
        for (int k = 0; k < rows[r].nnames && !hit; k++)
          if (strcmp(rows[r].names[k], f->name) == 0) {
            hit = 1;
            ck_assert_msg(strcmp(rows[r].type, td_ftype_name(f->type)) == 0,
                          "PROTOCOL.md says '%s' of '%s' is %s; the catalogue says %s", f->name,
                          d->name, rows[r].type, td_ftype_name(f->type));
            ck_assert_msg(rows[r].optional == !f->required,
                          "PROTOCOL.md says '%s' of '%s' is %s; the catalogue says otherwise",
                          f->name, d->name, rows[r].optional ? "optional" : "always there");
          }
      ck_assert_msg(hit, "PROTOCOL.md's table of '%s' (%s) lacks '%s'", d->name, d->section,
                    f->name);
    }
    for (size_t r = 0; r < nrows; r++)
      for (int k = 0; k < rows[r].nnames; k++) {
        int hit = 0;
        for (size_t j = 0; j < d->nfields && !hit; j++)
          hit = strcmp(rows[r].names[k], d->fields[j].name) == 0;
        ck_assert_msg(hit, "PROTOCOL.md's table of '%s' (%s) has '%s', which the catalogue "
                      "(proto/proto.c) lacks", d->name, d->section, rows[r].names[k]);
      }
  }
  for (char *h = strstr(md, "\n| field | type | meaning |\n"); h;
       h = strstr(h + 1, "\n| field | type | meaning |\n")) {
    int hit = 0;
    for (size_t i = 0; i < nclaimed && !hit; i++)
      hit = claimed[i] == h + 1;
    ck_assert_msg(hit, "PROTOCOL.md has a reply/event table at byte %zu that no catalogue map "
                  "(proto/proto.c) describes", (size_t)(h + 1 - md));
  }
  free(md);
}
END_TEST

static Suite *proto_suite(void) {
  Suite *s = suite_create("proto");
  TCase *tc = tcase_create("roundtrip");
  tcase_add_test(tc, test_request_submit);
  tcase_add_test(tc, test_request_every_op);
  tcase_add_test(tc, test_reply_submit);
  tcase_add_test(tc, test_reply_list);
  tcase_add_test(tc, test_reply_show_cancel_info_devices);
  tcase_add_test(tc, test_reply_error_every_code);
  tcase_add_test(tc, test_reply_error_details);
  tcase_add_test(tc, test_reply_malformed);
  tcase_add_test(tc, test_decode_owns_bytes);
  tcase_add_test(tc, test_events);
  tcase_add_test(tc, test_pack_too_big);
  suite_add_tcase(s, tc);

  tc = tcase_create("hostile");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_check_hostile);
  tcase_add_test(tc, test_check_deep_and_big);
  tcase_add_test(tc, test_no_alloc_before_check);
  tcase_add_test(tc, test_truncated_every_offset);
  tcase_add_test(tc, test_random_bytes);
  tcase_add_test(tc, test_mutated_messages);
  suite_add_tcase(s, tc);

  tc = tcase_create("rules");
  tcase_add_test(tc, test_version);
  tcase_add_test(tc, test_root_and_keys);
  tcase_add_test(tc, test_empty_strings);
  tcase_add_test(tc, test_duplicate_keys_big_map);
  tcase_add_test(tc, test_fields);
  tcase_add_test(tc, test_fields_numbers);
  tcase_add_test(tc, test_ops);
  tcase_add_test(tc, test_accessors);
  tcase_add_test(tc, test_protocol_md);
  tcase_add_test(tc, test_protocol_md_replies);
  tcase_add_test(tc, test_catalogue_shape);
  tcase_add_test(tc, test_map_builder);
  tcase_add_test(tc, test_map_builder_refuses);
  tcase_add_test(tc, test_check_reply);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(proto_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
