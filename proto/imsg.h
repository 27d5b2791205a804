/* The messages between traind and the worker of a job: the worker's
 * reports (progress, plan, checkpoint, ...) on its events fd, traind's
 * commands (budget) on the worker's stdin.
 *
 * Internal, but catalogued like the client protocol (proto/INTERNAL.md is
 * the document, td_imsg_defs() the same catalogue as a table) and
 * versioned on their own: each message is one msgpack map {"v":
 * TD_IMSG_VERSION, "op": KIND, fields...}, framed on the pipe by a 4-byte
 * big-endian length.  A frame is at most PIPE_BUF bytes, so one write()
 * sends it whole and two threads' frames never interleave.
 *
 * One encoder (td_imsg_begin ... td_imsg_end) checks every field against
 * the catalogue as it is packed; one decoder (td_imsg_parse) checks every
 * field's type and bounds, refuses unknown kinds and fields, and requires
 * every field a kind declares.  Functions return 0 or a negative TD_E*
 * code, with a reason in err when they take one.
 */
#ifndef TD_IMSG_H
#define TD_IMSG_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

#define TD_IMSG_VERSION 1
#define TD_IMSG_HDR 4                    /* the length prefix */
#define TD_IMSG_MAX (4096 - TD_IMSG_HDR) /* bytes of one message: a frame is PIPE_BUF */

/* Who sends: the worker reports to traind; traind controls the worker. */
typedef enum { TD_IMSG_REPORT = 0, TD_IMSG_CONTROL, TD_IMSG__DIRS } td_imsg_dir;

/* Every kind one side sends, *n of them; td_msgdef's op is the kind. */
const td_msgdef *td_imsg_defs(td_imsg_dir dir, size_t *n);
const td_msgdef *td_imsg_find(td_imsg_dir dir, const char *op, size_t len); /* NULL if unknown */
const char *td_imsg_dir_name(td_imsg_dir dir);

/* Building one message.  A value the catalogue refuses (unknown key, wrong
 * type, out of bounds) fails the message at td_imsg_end with TD_EINTERNAL
 * and the reason in b->p.why; a string longer than its field allows is cut
 * to fit instead (a message is still worth sending).  Writes after a
 * failure are ignored. */
typedef struct td_imsg {
  td_pack p;
  td_map m;
  const td_msgdef *def;
  uint64_t seen; /* bit i: def->fields[i] packed */
} td_imsg;
void td_imsg_begin(td_imsg *b, td_imsg_dir dir, const char *op);
void td_imsg_u64(td_imsg *b, const char *k, uint64_t v);
void td_imsg_f64(td_imsg *b, const char *k, double v);
void td_imsg_str(td_imsg *b, const char *k, const char *v);
void td_imsg_bool(td_imsg *b, const char *k, int v);
/* Finish: *frame (length prefix and message, *len bytes) lives until
 * td_imsg_free. */
int td_imsg_end(td_imsg *b, const void **frame, size_t *len);
void td_imsg_free(td_imsg *b); /* accepts NULL */

/* Decode one message (a frame's body) sent by dir's side: the version,
 * a known kind, every field of its type and within its bounds, none
 * unknown, none missing.  A float field without bounds takes NaN and the
 * infinities too (a diverged loss is news, not a malformed message).  On
 * success *out is the message (free it) and *def its kind. */
int td_imsg_parse(td_imsg_dir dir, const void *buf, size_t len, td_msg **out,
                  const td_msgdef **def, char *err, size_t errlen);

/* Cutting a byte stream into frames.  put takes what fits (at least one
 * whole frame always does once next has returned everything before it)
 * and returns how many bytes it took; next returns 1 with the next frame's
 * body (valid until the next put), 0 when more bytes are needed, or
 * TD_EPROTO for a length prefix of 0 or over TD_IMSG_MAX (the stream
 * cannot be trusted after it). */
typedef struct td_imsg_frames {
  unsigned char buf[2 * (TD_IMSG_HDR + TD_IMSG_MAX)];
  size_t start, len;
} td_imsg_frames;
size_t td_imsg_frames_put(td_imsg_frames *f, const void *data, size_t n);
int td_imsg_frames_next(td_imsg_frames *f, const void **body, size_t *len, char *err,
                        size_t errlen);

#endif
