/* libFuzzer target for the messages between traind and a worker
 * (proto/imsg.h): the input is a byte stream as it arrives on the pipe,
 * cut into frames with td_imsg_frames, each frame decoded as a worker's
 * report and as traind's command (the first byte picks which side reads
 * first).  Besides "never crash", it checks what the header promises: a
 * frame is 1..TD_IMSG_MAX bytes, a decoded message has every field its
 * kind declares with the type the catalogue says, and re-encoding it with
 * the one encoder gives a message that decodes again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "imsg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Re-pack m's fields through the encoder: the catalogue must take what the
 * decoder took. */
static void repack(td_imsg_dir dir, const td_msgdef *def, const msgpack_object *root) {
  const void *frame;
  size_t len;
  td_imsg b;
  td_msg *m;
  const td_msgdef *d2;

  td_imsg_begin(&b, dir, def->op);
  for (size_t i = 0; i < def->nfields; i++) {
    const td_field *f = &def->fields[i];
    const msgpack_object *o;
    char s[TD_IMSG_MAX];
    uint64_t u;
    double v;
    int bv;

    if (td_obj_get(root, f->name, &o) != 0) {
      if (f->required)
        abort(); /* every required field is there */
      continue;  /* an optional one left out: the reader takes -1 */
    }
    switch (f->type) {
    case TD_FT_UINT:
      if (td_obj_u64(root, f->name, &u) != 0)
        abort();
      td_imsg_u64(&b, f->name, u);
      break;
    case TD_FT_FLOAT:
      if (td_obj_f64(root, f->name, &v) != 0)
        abort();
      td_imsg_f64(&b, f->name, v);
      break;
    case TD_FT_BOOL:
      if (td_obj_bool(root, f->name, &bv) != 0)
        abort();
      td_imsg_bool(&b, f->name, bv);
      break;
    case TD_FT_STR:
      if (td_obj_cstr(root, f->name, s, sizeof(s)) != 0)
        abort(); /* no NUL, and shorter than a message */
      td_imsg_str(&b, f->name, s);
      break;
    default:
      abort(); /* the catalogue has no other types */
    }
  }
  if (td_imsg_end(&b, &frame, &len) != 0)
    abort();
  if (td_imsg_parse(dir, (const uint8_t *)frame + TD_IMSG_HDR, len - TD_IMSG_HDR, &m, &d2, NULL,
                    0) != 0 ||
      d2 != def)
    abort();
  td_msg_free(m);
  td_imsg_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static td_imsg_frames f;
  td_imsg_dir first;
  size_t used = 0;

  if (size < 1)
    return 0;
  first = data[0] & 1 ? TD_IMSG_CONTROL : TD_IMSG_REPORT;
  data++, size--;
  memset(&f, 0, sizeof(f));
  while (used < size) {
    const void *body;
    size_t len, put = td_imsg_frames_put(&f, data + used, size - used);
    int rc;

    if (put == 0)
      abort(); /* next returned every whole frame: there must be room */
    used += put;
    while ((rc = td_imsg_frames_next(&f, &body, &len, NULL, 0)) == 1) {
      if (len < 1 || len > TD_IMSG_MAX)
        abort();
      for (int k = 0; k < 2; k++) {
        td_imsg_dir dir = k == 0 ? first : (td_imsg_dir)(1 - first);
        const td_msgdef *def;
        td_msg *m;
        char err[256];

        if (td_imsg_parse(dir, body, len, &m, &def, err, sizeof(err)) != 0) {
          if (err[0] == '\0')
            abort(); /* a refusal says why */
          continue;
        }
        repack(dir, def, td_msg_root(m));
        td_msg_free(m);
      }
    }
    if (rc < 0)
      return 0; /* the stream is not to be trusted after a bad prefix */
  }
  return 0;
}
