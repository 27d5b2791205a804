/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI, ext4
 * and TensorFlow's record files use it.  Table-driven, slicing by 8; the
 * tables are built once, thread-safely, on first use. */
#ifndef TD_CRC32C_H
#define TD_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC of len bytes continuing from crc (0 to start): the value of
 * td_crc32c(td_crc32c(0, a, n), b, m) is that of a and b in one buffer. */
uint32_t td_crc32c(uint32_t crc, const void *buf, size_t len);

/* TensorFlow's masked form, stored in its record files so that a CRC of
 * bytes that hold CRCs stays well distributed: rotate right 15, add a
 * constant. */
static inline uint32_t td_crc32c_mask(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static inline uint32_t td_crc32c_unmask(uint32_t masked) {
  uint32_t rot = masked - 0xa282ead8u;

  return (rot >> 17) | (rot << 15);
}

#endif
