/* libFuzzer target for the worker's event lines (common/kvline.h): the
 * input is cut into lines as traind cuts the worker's pipe, and every key
 * traind looks up, plus the line's own first key, is read with each
 * helper.  Besides "never crash", it checks what the header promises: a
 * value found is NUL-terminated within cap, is what follows "key=" in the
 * line, and ends at a space (msg: at the line's end). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "kvline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define LINE_MAX_BYTES 4096 /* td_run's line buffer */

/* Every key daemon/supervise.c reads. */
static const char *const keys[] = {
    "total", "micro_batch", "precision", "recompute", "accumulation", "epoch", "epochs",
    "step", "steps", "loss", "samples_per_sec", "data_wait", "mem", "accuracy", "model",
    "msg", "phase", "requested", "free", "batch", "bytes",
};

static void check_value(const char *line, const char *key, const char *v, size_t cap) {
  size_t klen = strlen(key), n = strnlen(v, cap);
  const char *p;

  if (n == cap)
    abort(); /* not terminated within cap */
  /* Some match of "key=" in the line is followed by the value. */
  for (p = line; (p = strstr(p, key)) != NULL; p++)
    if ((p == line || p[-1] == ' ') && p[klen] == '=' && strncmp(p + klen + 1, v, n) == 0)
      break;
  if (p == NULL)
    abort();
  if (strcmp(key, "msg") != 0 && memchr(v, ' ', n) != NULL)
    abort();
}

static void lookup(const char *line, const char *key) {
  static const size_t caps[] = {1, 2, 16, 512};
  char v[512];

  for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
    int rc;
    memset(v, 0x5a, sizeof(v));
    rc = td_kv_get(line, key, v, caps[i]);
    if (rc == 0)
      check_value(line, key, v, caps[i]);
    else if (rc != TD_ENOENT || v[0] != 0x5a)
      abort(); /* out is written only on success */
  }
  if (td_kv_get(line, key, v, 0) != TD_EINVAL)
    abort();
  (void)td_kv_u64(line, key, 7);
  (void)td_kv_f64(line, key, 0.5);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char line[LINE_MAX_BYTES];
  const uint8_t *p = data, *end = data + size;

  while (p < end) {
    const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
    size_t n = (size_t)((nl != NULL ? nl : end) - p);
    char first[64];
    size_t k;

    /* As td_run keeps it: at most a buffer's worth, NUL-terminated (a NUL
     * inside ends the C string early, as it does in traind). */
    if (n >= sizeof(line))
      n = sizeof(line) - 1;
    memcpy(line, p, n);
    line[n] = '\0';
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
      lookup(line, keys[i]);
    /* The line's own first word before '=', whatever it is. */
    k = strcspn(line, "= ");
    if (k < sizeof(first) && line[k] == '=') {
      memcpy(first, line, k);
      first[k] = '\0';
      lookup(line, first);
    }
    p = nl != NULL ? nl + 1 : end;
  }
  return 0;
}
