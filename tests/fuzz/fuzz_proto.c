/* libFuzzer target for the protocol codec.  Besides "never crash", it checks
 * that what td_proto_check accepts msgpack-c decodes to the last byte, that a
 * validated request reads back through the typed accessors, and that a
 * decoded message re-packs to the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void read_all_fields(const msgpack_object *map) {
  char key[64], buf[32];
  for (uint32_t i = 0; i < map->via.map.size; i++) {
    const msgpack_object_str *k = &map->via.map.ptr[i].key.via.str;
    const msgpack_object *o;
    const char *s;
    size_t n;
    int64_t i64;
    uint64_t u64;
    double f;
    int b;
    if (k->size >= sizeof key || memchr(k->ptr, '\0', k->size))
      continue;
    memcpy(key, k->ptr, k->size);
    key[k->size] = '\0';
    if (td_obj_get(map, key, &o) != 0)
      abort(); /* every key of a decoded map is found */
    td_obj_str(map, key, &s, &n);
    td_obj_cstr(map, key, buf, sizeof buf);
    td_obj_i64(map, key, &i64);
    td_obj_u64(map, key, &u64);
    td_obj_f64(map, key, &f);
    td_obj_bool(map, key, &b);
    if (td_obj_map(map, key, &o) == 0)
      read_all_fields(o);
    td_obj_array(map, key, &o);
  }
}

static void check_request(const td_msgdef *d, const msgpack_object *root) {
  for (size_t j = 0; j < d->nfields; j++) {
    const td_field *f = &d->fields[j];
    const msgpack_object *o;
    const char *s;
    size_t n;
    int64_t i64;
    uint64_t u64;
    double v;
    int b, rc = 0;
    if (td_obj_get(root, f->name, &o) != 0) {
      if (f->required)
        abort();
      continue;
    }
    switch (f->type) {
    case TD_FT_STR: rc = td_obj_str(root, f->name, &s, &n); break;
    case TD_FT_INT: rc = td_obj_i64(root, f->name, &i64); break;
    case TD_FT_UINT: rc = td_obj_u64(root, f->name, &u64); break;
    case TD_FT_FLOAT: rc = td_obj_f64(root, f->name, &v); break;
    case TD_FT_BOOL: rc = td_obj_bool(root, f->name, &b); break;
    case TD_FT_MAP: rc = td_obj_map(root, f->name, &o); break;
    case TD_FT_ARRAY: rc = td_obj_array(root, f->name, &o); break;
    }
    if (rc != 0)
      abort();
  }
}

/* Bytes, not msgpack_object_equal: NaN != NaN, yet it must round-trip. */
static void repack(const td_msg *m) {
  td_pack p, q;
  td_msg *again;
  char err[256];
  td_pack_init(&p);
  td_pack_init(&q);
  if (msgpack_pack_object(&p.pk, *td_msg_root(m)) != 0)
    abort();
  if (td_pack_error(&p) == 0) {
    if (td_msg_decode(td_pack_data(&p), td_pack_len(&p), &again, err, sizeof err) != 0)
      abort();
    if (msgpack_pack_object(&q.pk, *td_msg_root(again)) != 0 ||
        td_pack_len(&q) != td_pack_len(&p) ||
        memcmp(td_pack_data(&q), td_pack_data(&p), td_pack_len(&p)) != 0)
      abort();
    td_msg_free(again);
  }
  td_pack_free(&q);
  td_pack_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[256];
  td_msg *m;
  const td_msgdef *d;
  const char *topic;
  const void *body;
  size_t blen;
  int code;

  if (td_proto_check(data, size, err, sizeof err) == 0) {
    msgpack_unpacked up;
    size_t off = 0;
    msgpack_unpacked_init(&up);
    if (msgpack_unpack_next(&up, (const char *)data, size, &off) != MSGPACK_UNPACK_SUCCESS ||
        off != size)
      abort();
    msgpack_unpacked_destroy(&up);
  }
  if (td_msg_decode(data, size, &m, err, sizeof err) == 0) {
    read_all_fields(td_msg_root(m));
    repack(m);
    td_msg_free(m);
  }
  if (td_proto_parse_request(data, size, &m, &d, err, sizeof err) == 0) {
    if (td_proto_find(d->op, strlen(d->op)) != d)
      abort();
    check_request(d, td_msg_root(m));
    td_msg_free(m);
  }
  if (td_proto_decode_reply(data, size, &m, &code, err, sizeof err) == 0)
    td_msg_free(m);
  if (td_proto_parse_reply(data, size, &m, err, sizeof err) == 0)
    td_msg_free(m);
  if (td_event_split(data, size, &topic, &body, &blen) == 0 &&
      td_msg_decode(body, blen, &m, err, sizeof err) == 0)
    td_msg_free(m);
  return 0;
}
