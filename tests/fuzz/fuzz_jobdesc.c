/* libFuzzer target for the job description (proto/jobdesc.h), the file a
 * worker and a loader read.  Besides "never crash", it checks that a
 * description the decoder accepts holds to what the job file's parser
 * guarantees (counts, NUL-terminated strings, a model whose shapes chain)
 * and that it re-encodes to a description that decodes to the same spec. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "jobdesc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static td_jobspec a, b;
  td_shape shapes[TD_MAX_LAYERS + 1];
  char err[512], why[200];
  td_pack p;
  int bad, rc;

  err[0] = '\0';
  rc = td_jobdesc_decode(data, size, &a, err, sizeof(err));
  if (rc != 0) {
    if (err[0] == '\0')
      abort(); /* a refusal says why */
    return 0;
  }
  if (a.nlayers < 1 || a.nlayers > TD_MAX_LAYERS || a.input_rank < 1 ||
      a.input_rank > TD_MAX_RANK || a.nremedies < 0 || a.nremedies > TD_MAX_REMEDIES ||
      a.raw.rank < 0 || a.raw.rank > TD_MAX_RANK)
    abort();
  if (memchr(a.name, '\0', sizeof(a.name)) == NULL ||
      memchr(a.train.images, '\0', sizeof(a.train.images)) == NULL ||
      memchr(a.output, '\0', sizeof(a.output)) == NULL ||
      memchr(a.device, '\0', sizeof(a.device)) == NULL)
    abort();
  if (td_jobspec_shapes(&a, shapes, &bad, why, sizeof(why)) != 0)
    abort();
  td_pack_init(&p);
  if (td_jobdesc_encode(&a, &p) != 0 ||
      td_jobdesc_decode(td_pack_data(&p), td_pack_len(&p), &b, err, sizeof(err)) != 0)
    abort();
  td_pack_free(&p);
  /* the same fields: compare through a second encoding */
  {
    td_pack q, r;

    td_pack_init(&q);
    td_pack_init(&r);
    td_jobdesc_encode(&a, &q);
    td_jobdesc_encode(&b, &r);
    if (td_pack_len(&q) != td_pack_len(&r) ||
        memcmp(td_pack_data(&q), td_pack_data(&r), td_pack_len(&q)) != 0)
      abort();
    td_pack_free(&q);
    td_pack_free(&r);
  }
  return 0;
}
