/* libFuzzer target for the checkpoint reader (td_checkpoint_parse), as the
 * worker's --resume calls it: once expecting what the worker expects (one
 * F32 tensor "state"), and once expecting exactly the tensors the file
 * holds, so an input that passes the checksum reaches the copy.  Besides
 * "never crash", it checks the header's promise that a refusal writes
 * nothing (neither the state nor any tensor) and has a code and a
 * message, and that an accepted state is in range. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "error.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TENSORS 16
#define MAX_TENSOR_BYTES ((uint64_t)1 << 20)

static int parse(const uint8_t *data, size_t size, td_ckpt_tensor *t, size_t n) {
  td_ckpt_state st, untouched;
  char err[512];
  uint8_t *copy[MAX_TENSORS];
  int rc;

  memset(&st, 0xA5, sizeof(st));
  untouched = st;
  err[0] = '\0';
  for (size_t i = 0; i < n; i++) {
    memset(t[i].data, 0xA5, (size_t)t[i].bytes);
    copy[i] = malloc(t[i].bytes > 0 ? (size_t)t[i].bytes : 1);
    if (copy[i] == NULL)
      abort();
    memcpy(copy[i], t[i].data, (size_t)t[i].bytes);
  }
  rc = td_checkpoint_parse(data, size, &st, t, n, err, sizeof(err));
  if (rc < 0) {
    if ((rc != TD_EDATA && rc != TD_EVERSION && rc != TD_ENOMEM) || err[0] == '\0' ||
        memchr(err, '\0', sizeof(err)) == NULL)
      abort();
    if (memcmp(&st, &untouched, sizeof(st)) != 0)
      abort();
    for (size_t i = 0; i < n; i++)
      if (memcmp(copy[i], t[i].data, (size_t)t[i].bytes) != 0)
        abort();
  } else {
    if (rc != 0 || memchr(st.job, '\0', sizeof(st.job)) == NULL ||
        !(st.loss_scale > 0.0f) || !isfinite(st.loss_scale))
      abort();
  }
  for (size_t i = 0; i < n; i++)
    free(copy[i]);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static float state[64];
  td_ckpt_tensor t[MAX_TENSORS];
  td_st_file *f;
  char err[256];
  size_t n;

  /* What the worker expects of a small model. */
  t[0] = (td_ckpt_tensor){.name = "state", .dtype = "F32", .rank = 1, .shape = {64},
                          .data = state, .bytes = sizeof(state)};
  parse(data, size, t, 1);

  /* Exactly what the file holds, in reverse order. */
  if (td_safetensors_parse(data, size, &f, err, sizeof(err)) != 0)
    return 0;
  n = td_safetensors_count(f);
  if (n <= MAX_TENSORS) {
    size_t k = 0;
    for (size_t i = n; i-- > 0;) {
      td_st_tensor s;
      td_safetensors_get(f, i, &s);
      if (s.bytes > MAX_TENSOR_BYTES)
        break;
      t[k] = (td_ckpt_tensor){.name = s.name, .dtype = s.dtype, .rank = s.rank,
                              .data = malloc(s.bytes > 0 ? (size_t)s.bytes : 1),
                              .bytes = s.bytes};
      if (t[k].data == NULL)
        abort();
      memcpy(t[k].shape, s.shape, sizeof(t[k].shape));
      k++;
    }
    if (k == n && parse(data, size, t, n) == 0)
      for (size_t i = 0; i < n; i++) {
        td_st_tensor s;
        if (td_safetensors_find(f, t[i].name, &s) != 0 ||
            (s.bytes > 0 && memcmp(s.data, t[i].data, (size_t)s.bytes) != 0))
          abort(); /* what was copied is the file's */
      }
    for (size_t i = 0; i < k; i++)
      free(t[i].data);
  }
  td_safetensors_free(f);
  return 0;
}
