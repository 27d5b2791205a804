/* The host-memory probe (common/hostmem.h) that traind's CPU device probe
 * and the CPU backend share: plausible figures from the real /proc/meminfo,
 * the file's fields read as written, and the sysconf fallback. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "hostmem.h"

#define KIB 1024ull

/* A meminfo file with text; its path in path. */
static void write_meminfo(char *path, size_t cap, const char *text) {
  int fd;

  snprintf(path, cap, "/tmp/td-meminfo-XXXXXX");
  fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

static uint64_t phys_bytes(void) {
  return (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
}

START_TEST(test_real) {
  uint64_t total = 0, avail = 0;

  ck_assert_int_eq(td_host_mem(&total, &avail), 0);
  ck_assert(avail > 0);
  ck_assert(total >= avail);
  /* more than 16 MiB and less than 1 PiB: a real machine's RAM */
  ck_assert(total > (16ull << 20));
  ck_assert(total < (1ull << 50));
  /* MemTotal is the kernel's totalram, as sysconf's physical pages */
  ck_assert_uint_eq(total, phys_bytes());
}
END_TEST

/* The CPU backend's devices report the same figure traind's probe reads. */
START_TEST(test_backend_agrees) {
  uint64_t total = 0, avail = 0;
  td_device_probe p;
  char err[256];

  ck_assert_int_eq(td_host_mem(&total, &avail), 0);
  ck_assert_msg(td_backend_probe("cpu0", &p, err, sizeof(err)) == 0, "%s", err);
  ck_assert_uint_eq(p.total, total);
  ck_assert(p.free > 0 && p.free <= p.total);
}
END_TEST

START_TEST(test_file) {
  char path[64];
  uint64_t total = 0, avail = 0;

  write_meminfo(path, sizeof(path),
                "MemTotal:        1000 kB\n"
                "MemFree:          100 kB\n"
                "MemAvailable:     400 kB\n"
                "Buffers:           20 kB\n");
  ck_assert_int_eq(td_host_mem_from(path, &total, &avail), 0);
  ck_assert_uint_eq(total, 1000 * KIB);
  ck_assert_uint_eq(avail, 400 * KIB);
  unlink(path);

  /* in either order; available past total is total */
  write_meminfo(path, sizeof(path), "MemAvailable: 3000 kB\nMemTotal: 2000 kB\n");
  ck_assert_int_eq(td_host_mem_from(path, &total, &avail), 0);
  ck_assert_uint_eq(total, 2000 * KIB);
  ck_assert_uint_eq(avail, 2000 * KIB);
  unlink(path);
}
END_TEST

/* A kernel before 3.14 (no MemAvailable), or no /proc at all: sysconf. */
START_TEST(test_fallback) {
  char path[64];
  uint64_t total = 0, avail = 0;

  write_meminfo(path, sizeof(path), "MemTotal:    1000 kB\nMemFree:    900 kB\n");
  ck_assert_int_eq(td_host_mem_from(path, &total, &avail), 0);
  ck_assert_uint_eq(total, 1000 * KIB);
  ck_assert(avail <= total); /* the host's free pages, capped by MemTotal */
  unlink(path);

  total = avail = 0;
  ck_assert_int_eq(td_host_mem_from("/nonexistent/meminfo", &total, &avail), 0);
  ck_assert_uint_eq(total, phys_bytes());
  ck_assert(avail > 0 && avail <= total);

  /* a file of anything else is a file without the fields */
  write_meminfo(path, sizeof(path), "MemTotal: lots\nnonsense\n");
  total = avail = 0;
  ck_assert_int_eq(td_host_mem_from(path, &total, &avail), 0);
  ck_assert_uint_eq(total, phys_bytes());
  ck_assert(avail > 0 && avail <= total);
  unlink(path);
}
END_TEST

int main(void) {
  Suite *s = suite_create("hostmem");
  TCase *tc = tcase_create("hostmem");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_real);
  tcase_add_test(tc, test_backend_agrees);
  tcase_add_test(tc, test_file);
  tcase_add_test(tc, test_fallback);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
