/* Writes the seed corpus for fuzz_proto: one file per message kind, packed
 * with the codec itself, plus a few hostile ones.
 *   gen_proto_corpus tests/fuzz/corpus/proto */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "proto.h"

static int write_seed(const char *dir, const char *name, const void *data, size_t len) {
  char path[1024];
  FILE *f;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    fprintf(stderr, "gen_proto_corpus: cannot write %s\n", path);
    return 1;
  }
  return 0;
}

static void pack_plan(td_pack *p) {
  static const char *const keys[] = {"micro_batch", "params",    "grads",    "optim", "activations",
                                     "workspace",   "staging",   "overhead", "total"};
  td_pack_str(p, "plan");
  td_pack_map(p, 9);
  for (size_t i = 0; i < 9; i++)
    td_pack_kv_u64(p, keys[i], 1000 * (i + 1));
}

static void req_submit(td_pack *p) {
  td_pack_request(p, "submit", 4);
  td_pack_kv_str(p, "job", "name: mnist\nmodel:\n  - dense: 128\n");
  td_pack_kv_str(p, "base_dir", "/home/ann/jobs");
  td_pack_kv_str(p, "key", "0123456789abcdef0123456789abcdef");
  td_pack_kv_str(p, "name", "mnist-1");
}
static void req_list(td_pack *p) {
  td_pack_request(p, "list", 2);
  td_pack_kv_str(p, "state", "running");
  td_pack_kv_u64(p, "limit", 100);
}
static void req_show(td_pack *p) { td_pack_request(p, "show", 1), td_pack_kv_u64(p, "id", 7); }
static void req_cancel(td_pack *p) { td_pack_request(p, "cancel", 1), td_pack_kv_u64(p, "id", 7); }
static void req_info(td_pack *p) { td_pack_request(p, "info", 0); }
static void req_continue(td_pack *p) {
  td_pack_request(p, "continue", 3);
  td_pack_kv_u64(p, "id", 7);
  td_pack_kv_u64(p, "epochs", 5);
  td_pack_kv_str(p, "key", "0123456789abcdef0123456789abcdef");
}
static void req_devices(td_pack *p) { td_pack_request(p, "devices", 0); }

static void rep_submit(td_pack *p) {
  td_pack_reply_ok(p, 5);
  td_pack_kv_u64(p, "id", 7);
  td_pack_kv_str(p, "state", "queued");
  td_pack_kv_bool(p, "duplicate", 0);
  pack_plan(p);
  td_pack_kv_str(p, "device", "cpu0");
}
static void rep_list(td_pack *p) {
  td_pack_reply_ok(p, 1);
  td_pack_str(p, "jobs");
  td_pack_array(p, 1);
  td_pack_map(p, 4);
  td_pack_kv_u64(p, "id", 7);
  td_pack_kv_str(p, "state", "running");
  td_pack_kv_i64(p, "submitted_ms", 1700000000000);
  td_pack_kv_f64(p, "loss", 0.25);
}
static void rep_enofit(td_pack *p) {
  td_pack_reply_err_begin(p, TD_ENOFIT, "needs 9 GiB at micro-batch 1; cpu0 has 8 GiB", 1);
  pack_plan(p);
}
static void rep_eproto(td_pack *p) { td_pack_reply_err(p, TD_EPROTO, "unknown op 'x'"); }
static void ev_progress(td_pack *p) {
  td_pack_event_begin(p, TD_TOPIC_JOB_PROGRESS, 3);
  td_pack_kv_u64(p, "id", 7);
  td_pack_kv_f64(p, "loss", 0.5);
  td_pack_kv_f64(p, "eta_s", -1);
}
static void wrong_version(td_pack *p) {
  td_pack_map(p, 2);
  td_pack_kv_u64(p, "v", 2);
  td_pack_kv_str(p, "op", "info");
}

static const struct {
  const char *name;
  void (*fn)(td_pack *p);
} seeds[] = {
    {"req_submit", req_submit}, {"req_list", req_list},       {"req_show", req_show},
    {"req_cancel", req_cancel}, {"req_info", req_info},       {"req_devices", req_devices},
    {"rep_submit", rep_submit}, {"rep_list", rep_list},       {"rep_enofit", rep_enofit},
    {"rep_eproto", rep_eproto}, {"ev_progress", ev_progress}, {"wrong_version", wrong_version},
    {"req_continue", req_continue},
};

static const struct {
  const char *name;
  const char *bytes;
  size_t len;
} raw[] = {
    {"hostile_array32", "\xdd\xff\xff\xff\xff", 5},
    {"hostile_str32", "\x81\xa1v\xdb\xff\xff\xff\xff", 8},
    {"hostile_deep", "\x91\x91\x91\x91\x91\x91\x91\x91\x91\xc0", 10},
    {"hostile_dup_keys", "\x82\xa1v\x01\xa1v\x01", 7},
};

int main(int argc, char **argv) {
  int bad = 0;
  if (argc != 2) {
    fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
    td_pack p;
    td_pack_init(&p);
    seeds[i].fn(&p);
    if (td_pack_error(&p) != 0) {
      fprintf(stderr, "gen_proto_corpus: %s: %s\n", seeds[i].name, td_strerror(td_pack_error(&p)));
      bad = 1;
    } else {
      bad |= write_seed(argv[1], seeds[i].name, td_pack_data(&p), td_pack_len(&p));
    }
    td_pack_free(&p);
  }
  for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++)
    bad |= write_seed(argv[1], raw[i].name, raw[i].bytes, raw[i].len);
  return bad;
}
