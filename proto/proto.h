/* traind's wire protocol: the one msgpack codec that daemon and client share.
 *
 * proto/PROTOCOL.md is the catalogue of messages; td_proto_defs() is the same
 * catalogue as a table the code walks.  Every function returns 0 or a
 * negative TD_E* code and writes its outputs only on success.  Functions that
 * take (err, errlen) write a short reason a person can act on there when they
 * fail (err may be NULL).
 */
#ifndef TD_PROTO_H
#define TD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#define TD_PROTO_VERSION 1
#define TD_PROTO_MAX_MSG   (2u << 20)   /* bytes in one message */
#define TD_PROTO_MAX_DEPTH 8            /* nesting of maps/arrays */
#define TD_PROTO_MAX_ITEMS 100000       /* elements in one container (map: pairs) */
#define TD_PROTO_MAX_TOPIC 64           /* bytes in a status topic, NUL excluded */
#define TD_PROTO_MAX_CRED  1024         /* bytes in a request's MUNGE credential */

/* Walk the raw bytes and check the structure without allocating: every
 * declared str/bin/ext length and array/map count is checked against the
 * bytes that remain (each pending element needs at least one byte) and the
 * limits above; nesting is bounded; exactly one object, no trailing bytes.
 * Returns 0, TD_ETOOBIG (a limit) or TD_EPROTO (malformed). */
int td_proto_check(const void *buf, size_t len, char *err, size_t errlen);

/* A decoded message.  It owns a copy of the bytes and the unpacked objects:
 * every pointer reached from td_msg_root() lives until td_msg_free(). */
typedef struct td_msg td_msg;

/* td_proto_check, then unpack; every map must have unique string keys, the
 * root must be a map and its "v" an integer equal to TD_PROTO_VERSION
 * (TD_EVERSION otherwise; a missing or non-integer "v" is TD_EPROTO).
 * Decoding n bytes allocates O(n) memory, never more. */
int td_msg_decode(const void *buf, size_t len, td_msg **out, char *err, size_t errlen);
/* The same for a message of another catalogue (proto/imsg.h, proto/jobdesc.h):
 * its "v" must equal version; version 0 leaves "v" to the caller. */
int td_msg_decode_as(const void *buf, size_t len, uint64_t version, td_msg **out, char *err,
                     size_t errlen);
void td_msg_free(td_msg *m);               /* accepts NULL */
const msgpack_object *td_msg_root(const td_msg *m);

/* Typed field access on any map object.  Return 0, TD_ENOENT (key absent)
 * or TD_EPROTO (not a map, wrong type, out of range for the C type).
 * Strings from td_obj_str are not NUL-terminated; an empty one is "", never NULL
 * (td_msg_decode points every empty str and bin at ""). */
int td_obj_get(const msgpack_object *map, const char *key, const msgpack_object **out);
int td_obj_str(const msgpack_object *map, const char *key, const char **s, size_t *len);
/* Copy + NUL; TD_ETOOBIG if it does not fit cap; TD_EPROTO on an embedded NUL. */
int td_obj_cstr(const msgpack_object *map, const char *key, char *dst, size_t cap);
int td_obj_i64(const msgpack_object *map, const char *key, int64_t *v);
int td_obj_u64(const msgpack_object *map, const char *key, uint64_t *v);
int td_obj_f64(const msgpack_object *map, const char *key, double *v);   /* ints too */
int td_obj_bool(const msgpack_object *map, const char *key, int *v);
int td_obj_map(const msgpack_object *map, const char *key, const msgpack_object **v);
int td_obj_array(const msgpack_object *map, const char *key, const msgpack_object **v);

/* The request catalogue.  Bounds: min/max value for INT/UINT/FLOAT (integral
 * for the integer types); min/max length in bytes for STR; min/max element
 * count for MAP/ARRAY; ignored for BOOL. */
typedef enum { TD_FT_STR, TD_FT_INT, TD_FT_UINT, TD_FT_FLOAT, TD_FT_BOOL, TD_FT_MAP, TD_FT_ARRAY } td_ftype;
typedef struct td_field { const char *name; td_ftype type; int required; double min, max; } td_field;
typedef struct td_msgdef { const char *op; const td_field *fields; size_t nfields; const char *summary; } td_msgdef;

const td_msgdef *td_proto_find(const char *op, size_t oplen);   /* NULL if unknown */
/* Every request definition, *n of them. */
const td_msgdef *td_proto_defs(size_t *n);
/* "str", "uint", ... for messages and documentation. */
const char *td_ftype_name(td_ftype t);

/* One value against its field: type, bounds, no NUL in a string.  TD_ETOOBIG
 * for an over-long string or container, TD_EPROTO otherwise, with err
 * naming f->name and d->op.  For other catalogues built of td_field. */
int td_proto_check_field(const td_msgdef *d, const td_field *f, const msgpack_object *o,
                         char *err, size_t errlen);

/* Decode, find the op, validate every field against its definition: type,
 * bounds, required present, unknown refused.  Strings must not contain NUL.
 * Over-long strings and containers are TD_ETOOBIG, everything else that is
 * wrong TD_EPROTO.  On success *out is the message, *def its definition. */
int td_proto_parse_request(const void *buf, size_t len, td_msg **out, const td_msgdef **def,
                           char *err, size_t errlen);

/* The reply and event catalogue: every map traind sends, one table each.
 * A field of type MAP has sub, the definition of that map; an ARRAY field
 * with sub is an array of such maps.  A definition with base has base's
 * fields first, then its own (show's job is a list row and more).  doc is
 * where PROTOCOL.md has the map's table: the section's heading line, then
 * the line just above the table (tests/unit/test_proto.c checks the two
 * agree, both ways).  "v" of a reply or event and "ok" of a reply are
 * implied, as "v" and "op" are in a request. */
typedef struct td_replydef td_replydef;
typedef struct td_replyfield {
  const char *name;
  td_ftype type;
  int required;
  const td_replydef *sub;
} td_replyfield;
struct td_replydef {
  const char *name; /* the op, "error", the topic, or what a nested map is */
  const td_replyfield *fields;
  size_t nfields;
  const td_replydef *base;
  const char *section, *table;
};
#define TD_REPLY_MAX_FIELDS 64 /* base's and own together */

/* Every success reply, one per op, and "error" (an error reply); *n of them. */
const td_replydef *td_proto_replies(size_t *n);
/* Every status event, by topic. */
const td_replydef *td_proto_events(size_t *n);
const td_replydef *td_proto_reply_find(const char *name);   /* NULL if unknown */
const td_replydef *td_proto_event_find(const char *topic);  /* NULL if unknown */
/* The field name of def or its base; NULL if it has none. */
const td_replyfield *td_replydef_field(const td_replydef *def, const char *name, size_t len);

/* Check a decoded map against def, recursively: every key known, every
 * value of its type (FLOAT is a float, as traind sends), every required
 * field present.  top: 0 for a nested map, 1 for an event's root ("v"
 * allowed besides the fields), 2 for a reply's ("v" and "ok").  TD_EPROTO
 * with the path of the first bad field in err. */
int td_proto_check_map(const td_replydef *def, const msgpack_object *map, int top, char *err,
                       size_t errlen);
/* A whole decoded reply to op: the op's definition if "ok" is true, the
 * error reply's otherwise. */
int td_proto_check_reply(const char *op, const msgpack_object *root, char *err, size_t errlen);
int td_proto_check_event(const char *topic, const msgpack_object *root, char *err,
                         size_t errlen);

/* Building messages: a thin layer over msgpack_sbuffer/msgpack_packer.
 * A td_pack must not be copied or moved after td_pack_init (the packer points
 * at the buffer).  Writes after a failure are ignored; td_pack_error tells;
 * why says what went wrong when the catalogue refused a field. */
typedef struct td_pack { msgpack_sbuffer sb; msgpack_packer pk; int err; char why[160]; } td_pack;
void td_pack_init(td_pack *p);
void td_pack_free(td_pack *p);                 /* accepts NULL */
void td_pack_map(td_pack *p, uint32_t n);
void td_pack_array(td_pack *p, uint32_t n);
void td_pack_str(td_pack *p, const char *s);   /* NULL packs "" */
void td_pack_strn(td_pack *p, const char *s, size_t n);
void td_pack_i64(td_pack *p, int64_t v);
void td_pack_u64(td_pack *p, uint64_t v);
void td_pack_f64(td_pack *p, double v);
void td_pack_bool(td_pack *p, int v);
void td_pack_nil(td_pack *p);
void td_pack_kv_str(td_pack *p, const char *k, const char *v);
void td_pack_kv_i64(td_pack *p, const char *k, int64_t v);
void td_pack_kv_u64(td_pack *p, const char *k, uint64_t v);
void td_pack_kv_f64(td_pack *p, const char *k, double v);
void td_pack_kv_bool(td_pack *p, const char *k, int v);
/* A request map: header for 2 + nfields entries, then "v" and "op". */
void td_pack_request(td_pack *p, const char *op, uint32_t nfields);
/* The request req (len bytes, one map) with one more string field key:
 * val appended, into out (initialised here).  TD_EPROTO if req is not a
 * map; the caller frees out either way.  The client adds its credential
 * this way to whatever request a command built. */
int td_pack_request_add(td_pack *out, const void *req, size_t len, const char *key,
                        const char *val);
/* A success reply map: header for 2 + nfields, then "v" and "ok": true. */
void td_pack_reply_ok(td_pack *p, uint32_t nfields);
/* A whole error reply: {"v", "ok": false, "error": td_err_name(code), "message": msg}. */
void td_pack_reply_err(td_pack *p, int code, const char *msg);
/* The same with room for nextra more entries the caller packs after it
 * (e.g. the "plan" of an ENOFIT refusal). */
void td_pack_reply_err_begin(td_pack *p, int code, const char *msg, uint32_t nextra);
/* 0, TD_ENOMEM (a write failed) or TD_ETOOBIG (over TD_PROTO_MAX_MSG). */
int td_pack_error(const td_pack *p);
/* The bytes packed so far; NULL and 0 after td_pack_error() would fail. */
const void *td_pack_data(const td_pack *p);
size_t td_pack_len(const td_pack *p);

/* A map under construction: no count is written by hand.  td_map_begin
 * reserves a map32 header (0xdf and a 4-byte count) and td_map_end writes
 * the number of entries packed into it, so one buffer holds everything and
 * maps nest.  With a definition, every entry is checked as it is packed:
 * a key the definition lacks, a value of another type than its field's, a
 * key packed twice, or (at td_map_end) a required field missing fails the
 * pack with TD_EINTERNAL and the reason in p->why, so a reply the
 * catalogue does not describe is never sent.  def NULL: counted only.
 * Entries go strictly into the innermost open map: finish a nested one
 * (td_map_end) before packing into its parent again. */
typedef struct td_map {
  td_pack *p;
  const td_replydef *def;
  const td_replyfield *array; /* the last array field: its items' definition */
  size_t at;                  /* offset of the header in p->sb */
  uint32_t n;
  uint64_t seen;              /* bit i: field i (base's first) packed */
  size_t next;                /* field index expected next: fields usually come in order */
} td_map;
void td_map_begin(td_map *m, td_pack *p, const td_replydef *def);
void td_map_end(td_map *m);
void td_map_kv_str(td_map *m, const char *k, const char *v);
void td_map_kv_strn(td_map *m, const char *k, const char *v, size_t n);
void td_map_kv_i64(td_map *m, const char *k, int64_t v);
void td_map_kv_u64(td_map *m, const char *k, uint64_t v);
void td_map_kv_f64(td_map *m, const char *k, double v);
void td_map_kv_bool(td_map *m, const char *k, int v);
/* Key k and a nested map, begun in sub with k's definition; end it. */
void td_map_kv_map(td_map *m, const char *k, td_map *sub);
/* Key k and an array header for n items; each item a map begun with
 * td_map_item (k's item definition) and ended before the next. */
void td_map_kv_array(td_map *m, const char *k, uint32_t n);
void td_map_item(td_map *m, td_map *item);
/* A success reply to op: begun with "v" and "ok": true. */
void td_map_reply_ok(td_map *m, td_pack *p, const char *op);
/* An error reply, begun with "v", "ok": false, "error" and "message"; the
 * catalogue's "error" says what else it may carry. */
void td_map_reply_err(td_map *m, td_pack *p, int code, const char *msg);
/* A status event: the topic, then a map begun with "v".  TD_EINVAL for an
 * empty or over-long topic. */
int td_map_event(td_map *m, td_pack *p, const char *topic);

/* Client side.  Decode a reply; if "ok" is false copy its message into err
 * and return the code named by "error" (TD_EINTERNAL if the name is unknown).
 * *out is set only when the reply says ok. */
int td_proto_parse_reply(const void *buf, size_t len, td_msg **out, char *err, size_t errlen);
/* The same, but an error reply is still returned: 0 whenever the reply
 * itself is well formed, with *out set (free it) and *code 0 or the error
 * code (message in err).  For error replies that carry extra fields. */
int td_proto_decode_reply(const void *buf, size_t len, td_msg **out, int *code,
                          char *err, size_t errlen);

/* Status socket (PUB).  A message is "<topic>\0" followed by one msgpack map,
 * so SUB sockets filter on the topic bytes.  td_pack_event_begin writes the
 * topic, the map header for 1 + nfields entries, then "v"; TD_EINVAL for an
 * empty or over-long topic.  td_event_split points into buf: *topic is the
 * NUL-terminated topic, body the map (decode it with td_msg_decode). */
#define TD_TOPIC_JOB_STATE    "job.state"
#define TD_TOPIC_JOB_PROGRESS "job.progress"
#define TD_TOPIC_JOB_EVAL     "job.eval"
#define TD_TOPIC_DEVICE       "device"
#define TD_TOPIC_JOB_OOM      "job.oom"
#define TD_TOPIC_JOB_REPLAN   "job.replan"
int td_pack_event_begin(td_pack *p, const char *topic, uint32_t nfields);
int td_event_split(const void *buf, size_t len, const char **topic, const void **body,
                   size_t *body_len);

#endif
