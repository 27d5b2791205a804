/* libFuzzer target for the check of a shared cache segment's header before
 * it is used (td_shmcache_header_check): a segment in /dev/shm is written
 * by another loader, maybe a dead or hostile one.  Input: the data size the
 * caller expects (8 bytes, little-endian), the key's length (2 bytes) and
 * the key, zero padding (2 bytes: how much), then the segment.  Besides
 * "never crash", it checks that a segment accepted holds the key and the
 * whole data the caller will read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "shmcache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DATA_OFF 4096u /* where shmcache.c puts the data */
#define KEY_OFF 16u    /* magic, version, data_bytes, then the key */

static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;

  for (int i = n - 1; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char key[TD_SHMCACHE_KEY_MAX];
  uint64_t bytes;
  size_t klen, pad, len;
  uint8_t *seg;
  int rc;

  if (size < 12)
    return 0;
  bytes = le(data, 8);
  klen = (size_t)le(data + 8, 2);
  data += 10;
  size -= 10;
  if (klen >= sizeof(key) || klen + 2 > size)
    return 0;
  memcpy(key, data, klen);
  key[klen] = '\0'; /* a NUL inside makes it shorter, as a C string is */
  pad = (size_t)le(data + klen, 2);
  data += klen + 2;
  size -= klen + 2;
  /* A mapping is page-aligned; a copy keeps the header's fields aligned. */
  len = size + pad;
  seg = aligned_alloc(64, len + 64 - len % 64);
  if (seg == NULL)
    return 0;
  memcpy(seg, data, size);
  memset(seg + size, 0, pad);
  rc = td_shmcache_header_check(seg, len, key, bytes);
  if (rc == 0) {
    /* The caller reads bytes of data at DATA_OFF: all inside the segment. */
    if (len < DATA_OFF || len - DATA_OFF < bytes)
      abort();
    if (bytes > 0) {
      volatile uint8_t last = seg[DATA_OFF + bytes - 1]; /* ASan: inside */
      (void)last;
    }
    if (strncmp((const char *)seg + KEY_OFF, key, TD_SHMCACHE_KEY_MAX) != 0)
      abort();
  } else if (rc != TD_EDATA && rc != TD_EAGAIN) {
    abort();
  }
  free(seg);
  return 0;
}
