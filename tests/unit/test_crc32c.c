/* CRC-32C against published vectors (RFC 3720's iSCSI examples and the
 * usual "123456789" check value), the slicing path against the byte one,
 * and TensorFlow's mask. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"

START_TEST(test_vectors) {
  unsigned char buf[48];

  ck_assert_uint_eq(td_crc32c(0, "", 0), 0);
  ck_assert_uint_eq(td_crc32c(0, "a", 1), 0xC1D04330u);
  ck_assert_uint_eq(td_crc32c(0, "123456789", 9), 0xE3069283u);
  /* RFC 3720, B.4 */
  memset(buf, 0, 32);
  ck_assert_uint_eq(td_crc32c(0, buf, 32), 0x8A9136AAu);
  memset(buf, 0xff, 32);
  ck_assert_uint_eq(td_crc32c(0, buf, 32), 0x62A8AB43u);
  for (int i = 0; i < 32; i++)
    buf[i] = (unsigned char)i;
  ck_assert_uint_eq(td_crc32c(0, buf, 32), 0x46DD794Eu);
  for (int i = 0; i < 32; i++)
    buf[i] = (unsigned char)(31 - i);
  ck_assert_uint_eq(td_crc32c(0, buf, 32), 0x113FDB5Cu);
  /* an iSCSI SCSI Read (10) command PDU */
  static const unsigned char pdu[48] = {
      0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
      0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
  };
  ck_assert_uint_eq(td_crc32c(0, pdu, sizeof(pdu)), 0xD9963A56u);
}
END_TEST

/* Any split of the input, at any alignment, gives the one CRC. */
START_TEST(test_incremental) {
  unsigned char buf[301];
  uint32_t whole;

  for (size_t i = 0; i < sizeof(buf); i++)
    buf[i] = (unsigned char)(i * 37 + 11);
  whole = td_crc32c(0, buf, sizeof(buf));
  for (size_t cut = 0; cut <= sizeof(buf); cut++)
    ck_assert_uint_eq(td_crc32c(td_crc32c(0, buf, cut), buf + cut, sizeof(buf) - cut), whole);
  /* byte by byte, the table-only path */
  {
    uint32_t c = 0;
    for (size_t i = 0; i < sizeof(buf); i++)
      c = td_crc32c(c, buf + i, 1);
    ck_assert_uint_eq(c, whole);
  }
}
END_TEST

START_TEST(test_mask) {
  /* TensorFlow's masked CRC of "123456789" (as TensorBoard's own
   * masked_crc32c gives it) */
  ck_assert_uint_eq(td_crc32c_mask(0xE3069283u), 0xC78AB0E5u);
  ck_assert_uint_eq(td_crc32c_unmask(0xC78AB0E5u), 0xE3069283u);
  for (uint32_t i = 0, c = 1; i < 1000; i++, c = c * 2654435761u + 12345u)
    ck_assert_uint_eq(td_crc32c_unmask(td_crc32c_mask(c)), c);
}
END_TEST

int main(void) {
  Suite *s = suite_create("crc32c");
  TCase *tc = tcase_create("crc32c");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_vectors);
  tcase_add_test(tc, test_incremental);
  tcase_add_test(tc, test_mask);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
