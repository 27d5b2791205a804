/* CRC-32C by slicing: table k holds the CRC of a byte followed by k zero
 * bytes, so eight input bytes fold into the CRC with eight lookups and no
 * dependency between them. */
#include <pthread.h>
#include <string.h>

#include "crc32c.h"

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;

    for (int b = 0; b < 8; b++)
      c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
    table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int k = 1; k < 8; k++)
      table[k][i] = (table[k - 1][i] >> 8) ^ table[0][table[k - 1][i] & 0xff];
}

uint32_t td_crc32c(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;

  pthread_once(&table_once, table_init);
  crc = ~crc;
  for (; len >= 8; p += 8, len -= 8) {
    /* little-endian loads, whatever the host's order */
    uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                         (uint32_t)p[3] << 24);

    crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
          table[4][lo >> 24] ^ table[3][p[4]] ^ table[2][p[5]] ^ table[1][p[6]] ^
          table[0][p[7]];
  }
  while (len-- > 0)
    crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
  return ~crc;
}
