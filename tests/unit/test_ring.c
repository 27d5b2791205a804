#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "jobspec.h"
#include "ring.h"

#define NBATCHES 10000

static char ring_name[64];

static void name_setup(void) {
  snprintf(ring_name, sizeof(ring_name), "/traind-test-ring-%d", (int)getpid());
  td_ring_unlink(ring_name);
}

static int segment_exists(const char *name) {
  char path[128];

  snprintf(path, sizeof(path), "/dev/shm%s", name);
  return access(path, F_OK) == 0;
}

static void name_teardown(void) {
  td_ring_unlink(ring_name);
}

/* Poll the shared counters until pred holds; a guard against a hang, never
 * a timing check. */
typedef int (*stats_pred)(const td_ring_stats *);

static void wait_stats(td_ring *r, stats_pred pred) {
  struct timespec ms = {0, 1000000};
  td_ring_stats st;

  for (int i = 0; i < 30000; i++) {
    td_ring_get_stats(r, &st);
    if (pred(&st))
      return;
    nanosleep(&ms, NULL);
  }
  ck_abort_msg("the ring never reached the expected state");
}

static int producer_blocked(const td_ring_stats *st) { return st->full_waits >= 1; }
static int consumer_blocked(const td_ring_stats *st) { return st->empty_waits >= 1; }

static int child_exit_code(pid_t pid) {
  int status;

  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status), "child did not exit normally (status %d)", status);
  return WEXITSTATUS(status);
}

/* Batch i: its length and byte k of it, so the reader can check both. */
static size_t batch_len(uint32_t i) { return 8 + (i * 37u) % 200u; }
static uint8_t batch_byte(uint32_t i, size_t k) { return (uint8_t)(i * 31u + k * 7u); }

START_TEST(test_create_open_unlink) {
  td_ring *r = NULL;
  size_t bytes = 0;
  void *map;

  ck_assert_int_eq(td_ring_create(ring_name, 8, 1000), 0);
  ck_assert(segment_exists(ring_name));
  ck_assert_int_eq(td_ring_create(ring_name, 8, 1000), TD_EIO);
  ck_assert_int_eq(errno, EEXIST);
  ck_assert_int_eq(td_ring_open(ring_name, &r), 0);
  ck_assert_ptr_nonnull(r);
  ck_assert_uint_eq(td_ring_slot_bytes(r), 1000);
  ck_assert_uint_eq(td_ring_nslots(r), 8);
  /* The whole mapping (what a CUDA worker pins): page-aligned, every slot in it. */
  map = td_ring_mapping(r, &bytes);
  ck_assert_uint_eq(bytes, td_ring_segment_bytes(8, 1000));
  ck_assert_uint_eq((uintptr_t)map % (uintptr_t)sysconf(_SC_PAGESIZE), 0);
  {
    void *slot;
    ck_assert_int_eq(td_ring_write_begin(r, &slot), 0);
    ck_assert((uint8_t *)slot >= (uint8_t *)map &&
              (uint8_t *)slot + 1000 <= (uint8_t *)map + bytes);
  }
  ck_assert_int_eq(td_ring_is_shutdown(r, NULL), 0);
  td_ring_close(r);
  td_ring_close(NULL);
  ck_assert_int_eq(td_ring_unlink(ring_name), 0);
  ck_assert(!segment_exists(ring_name));
  ck_assert_int_eq(td_ring_unlink(ring_name), 0);
  r = NULL;
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_ENOENT);
  ck_assert_ptr_null(r);
}
END_TEST

/* A ring is used only if it is this process's alone: one that another
 * user made, or that others may write, could feed the worker anyone's
 * batches.  traind, as root, makes each job's ring for the job's user and
 * opens it expecting that owner. */
START_TEST(test_owner_checked) {
  char path[128], err[256] = "";
  struct stat st;
  td_ring *r = NULL;
  int fd;

  snprintf(path, sizeof(path), "/dev/shm%s", ring_name);
  ck_assert_int_eq(td_ring_create(ring_name, 4, 64), 0);
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_mode & 0777, 0600);
  ck_assert_uint_eq(st.st_uid, geteuid());
  /* Group or others may write it: refused, on the descriptor. */
  fd = shm_open(ring_name, O_RDWR, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(fchmod(fd, 0660), 0);
  close(fd);
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EIO);
  ck_assert_ptr_null(r);
  ck_assert_int_eq(td_ring_open_owned(ring_name, geteuid(), &r, err, sizeof(err)), TD_EIO);
  ck_assert_msg(strstr(err, "mode 0660") != NULL, "%s", err);
  ck_assert_int_eq(td_ring_unlink(ring_name), 0);

  if (geteuid() != 0)
    return; /* giving a ring to another user needs root */
  ck_assert_int_eq(td_ring_create_owned(ring_name, 4, 64, 65534, 65534, NULL), 0);
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_uint_eq(st.st_uid, 65534);
  ck_assert_uint_eq(st.st_gid, 65534);
  ck_assert_uint_eq(st.st_mode & 0777, 0600);
  /* Another uid's ring (root counts as another uid here) is refused... */
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EIO);
  ck_assert_ptr_null(r);
  err[0] = '\0';
  ck_assert_int_eq(td_ring_open_owned(ring_name, 0, &r, err, sizeof(err)), TD_EIO);
  ck_assert_msg(strstr(err, "belongs to uid 65534") != NULL, "%s", err);
  /* ...unless that owner is the one expected. */
  ck_assert_int_eq(td_ring_open_owned(ring_name, 65534, &r, NULL, 0), 0);
  td_ring_close(r);
  /* And its owner's process opens it. */
  {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
      gid_t g = 65534;
      td_ring *q;
      if (setgroups(1, &g) < 0 || setresgid(65534, 65534, 65534) < 0 ||
          setresuid(65534, 65534, 65534) < 0)
        _exit(2);
      _exit(td_ring_open(ring_name, &q) == 0 ? 0 : 1);
    }
    ck_assert_int_eq(child_exit_code(pid), 0);
  }
}
END_TEST

START_TEST(test_bad_sizes_and_names) {
  static const struct {
    uint32_t nslots;
    size_t slot_bytes;
  } bad[] = {
      {0, 64}, {1, 64}, {1025, 64}, {UINT32_MAX, 64},
      {4, 0}, {4, TD_RING_MAX_SLOT_BYTES + 1}, {4, SIZE_MAX},
  };
  static const char *bad_names[] = {"", "/", "noslash", "/a/b", NULL};

  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_uint_eq(td_ring_segment_bytes(bad[i].nslots, bad[i].slot_bytes), 0);
    ck_assert_int_eq(td_ring_create(ring_name, bad[i].nslots, bad[i].slot_bytes), TD_EINVAL);
    ck_assert(!segment_exists(ring_name));
  }
  for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
    td_ring *r = NULL;
    ck_assert_int_eq(td_ring_create(bad_names[i], 4, 64), TD_EINVAL);
    ck_assert_int_eq(td_ring_open(bad_names[i], &r), TD_EINVAL);
    ck_assert_ptr_null(r);
  }
  /* The bounds themselves are fine. */
  ck_assert_uint_gt(td_ring_segment_bytes(2, 1), 0);
  ck_assert_uint_gt(td_ring_segment_bytes(1024, TD_RING_MAX_SLOT_BYTES), (size_t)1 << 40);
}
END_TEST

static void make_segment(const char *name, const void *data, size_t len, size_t size) {
  int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
  if (len > 0)
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
  close(fd);
}

START_TEST(test_open_garbage) {
  uint8_t junk[8192];
  td_ring *r = NULL;
  uint32_t word;
  int fd;

  for (size_t i = 0; i < sizeof(junk); i++)
    junk[i] = (uint8_t)(i * 131u + 7u);

  make_segment(ring_name, NULL, 0, 0); /* empty */
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EINVAL);
  td_ring_unlink(ring_name);
  make_segment(ring_name, junk, 10, 10); /* shorter than a header */
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EINVAL);
  td_ring_unlink(ring_name);
  make_segment(ring_name, junk, sizeof(junk), sizeof(junk)); /* garbage */
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EINVAL);
  td_ring_unlink(ring_name);

  /* A real ring whose segment was resized behind its back. */
  ck_assert_int_eq(td_ring_create(ring_name, 4, 512), 0);
  fd = shm_open(ring_name, O_RDWR, 0);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(ftruncate(fd, (off_t)td_ring_segment_bytes(4, 512) + 4096), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EINVAL);
  ck_assert_int_eq(ftruncate(fd, (off_t)td_ring_segment_bytes(4, 512) - 64), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EINVAL);
  ck_assert_int_eq(ftruncate(fd, (off_t)td_ring_segment_bytes(4, 512)), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), 0);
  td_ring_close(r);
  r = NULL;

  /* The header's slot count disagreeing with the size; then a newer version. */
  ck_assert_int_eq(pread(fd, &word, 4, 8), 4);
  ck_assert_uint_eq(word, 4);
  word = 1000;
  ck_assert_int_eq(pwrite(fd, &word, 4, 8), 4);
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EINVAL);
  word = 4;
  ck_assert_int_eq(pwrite(fd, &word, 4, 8), 4);
  word = 99;
  ck_assert_int_eq(pwrite(fd, &word, 4, 4), 4);
  ck_assert_int_eq(td_ring_open(ring_name, &r), TD_EVERSION);
  ck_assert_ptr_null(r);
  close(fd);
  ck_assert_int_eq(td_ring_unlink(ring_name), 0);
  ck_assert(!segment_exists(ring_name));
}
END_TEST

static int produce(pid_t consumer, uint32_t n) {
  td_ring *r;
  void *slot;

  if (td_ring_open(ring_name, &r) < 0)
    return 10;
  td_ring_set_peer(r, consumer);
  for (uint32_t i = 0; i < n; i++) {
    size_t len = batch_len(i);
    uint8_t *p;
    if (td_ring_write_begin(r, &slot) < 0)
      return 11;
    p = slot;
    memcpy(p, &i, sizeof(i));
    for (size_t k = sizeof(i); k < len; k++)
      p[k] = batch_byte(i, k);
    td_ring_write_end(r, len);
  }
  td_ring_shutdown(r, 0);
  td_ring_close(r);
  return 0;
}

START_TEST(test_two_processes) {
  td_ring_stats st;
  td_ring *r;
  pid_t pid;
  int reason = -1;

  ck_assert_int_eq(td_ring_create(ring_name, 4, 256), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    _exit(produce(getppid(), NBATCHES));
  td_ring_set_peer(r, pid);

  /* Let the producer run into the full ring before reading anything. */
  wait_stats(r, producer_blocked);
  td_ring_get_stats(r, &st);
  ck_assert_uint_eq(st.filled, 4);
  ck_assert_uint_eq(st.written, 4);

  for (uint32_t i = 0; i < NBATCHES; i++) {
    const uint8_t *p;
    const void *slot;
    uint32_t seq;
    size_t len;

    ck_assert_int_eq(td_ring_read_begin(r, &slot, &len), 0);
    p = slot;
    memcpy(&seq, p, sizeof(seq));
    ck_assert_uint_eq(seq, i);
    ck_assert_uint_eq(len, batch_len(i));
    for (size_t k = sizeof(seq); k < len; k++)
      if (p[k] != batch_byte(i, k))
        ck_abort_msg("batch %u byte %zu: got %u, expected %u", i, k, p[k], batch_byte(i, k));
    td_ring_get_stats(r, &st);
    ck_assert_uint_le(st.filled, 4);
    td_ring_read_end(r);
  }
  /* The producer shut the ring down after its last batch. */
  {
    const void *slot;
    size_t len;
    ck_assert_int_eq(td_ring_read_begin(r, &slot, &len), TD_ECLOSED);
  }
  ck_assert_int_eq(child_exit_code(pid), 0);
  ck_assert_int_eq(td_ring_is_shutdown(r, &reason), 1);
  ck_assert_int_eq(reason, 0);
  td_ring_get_stats(r, &st);
  ck_assert_uint_eq(st.written, NBATCHES);
  ck_assert_uint_eq(st.read, NBATCHES);
  td_ring_close(r);
  ck_assert_int_eq(td_ring_unlink(ring_name), 0);
  ck_assert(!segment_exists(ring_name));
}
END_TEST

START_TEST(test_shutdown_wakes_reader) {
  const void *slot;
  td_ring *r;
  size_t len;
  pid_t pid;
  int reason = 0;

  ck_assert_int_eq(td_ring_create(ring_name, 2, 64), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    td_ring *c;
    int rc;
    if (td_ring_open(ring_name, &c) < 0)
      _exit(10);
    rc = td_ring_read_begin(c, &slot, &len);
    _exit(rc == TD_ECLOSED && td_ring_is_shutdown(c, &reason) && reason == TD_EDATA ? 0 : 1);
  }
  wait_stats(r, consumer_blocked);
  td_ring_shutdown(r, TD_EDATA);
  td_ring_shutdown(r, 5); /* the first reason stays */
  ck_assert_int_eq(child_exit_code(pid), 0);
  ck_assert_int_eq(td_ring_is_shutdown(r, &reason), 1);
  ck_assert_int_eq(reason, TD_EDATA);
  td_ring_close(r);
  td_ring_unlink(ring_name);
  ck_assert(!segment_exists(ring_name));
}
END_TEST

START_TEST(test_shutdown_wakes_writer) {
  const void *rslot;
  void *slot;
  td_ring *r;
  size_t len;
  pid_t pid;

  ck_assert_int_eq(td_ring_create(ring_name, 2, 64), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), 0);
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(td_ring_write_begin(r, &slot), 0);
    memset(slot, 'a' + i, 64);
    td_ring_write_end(r, 1000); /* clipped to the slot */
  }
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    td_ring *c;
    void *s;
    if (td_ring_open(ring_name, &c) < 0)
      _exit(10);
    _exit(td_ring_write_begin(c, &s) == TD_ECLOSED ? 0 : 1);
  }
  wait_stats(r, producer_blocked);
  td_ring_shutdown(r, 0);
  ck_assert_int_eq(child_exit_code(pid), 0);
  /* Committed slots are still delivered after a shutdown, then ECLOSED. */
  for (int i = 0; i < 2; i++) {
    ck_assert_int_eq(td_ring_read_begin(r, &rslot, &len), 0);
    ck_assert_uint_eq(len, 64);
    ck_assert_int_eq(((const char *)rslot)[63], 'a' + i);
    td_ring_read_end(r);
  }
  ck_assert_int_eq(td_ring_read_begin(r, &rslot, &len), TD_ECLOSED);
  ck_assert_int_eq(td_ring_write_begin(r, &slot), TD_ECLOSED);
  td_ring_close(r);
  td_ring_unlink(ring_name);
}
END_TEST

/* The peer is killed and stays an unreaped zombie of the waiting process:
 * the wait must still end. */
START_TEST(test_killed_consumer_releases_producer) {
  td_ring *r;
  void *slot;
  pid_t pid;
  int status, rc = 0;

  ck_assert_int_eq(td_ring_create(ring_name, 4, 64), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    td_ring *c;
    const void *s;
    size_t len;
    if (td_ring_open(ring_name, &c) < 0 || td_ring_read_begin(c, &s, &len) < 0)
      _exit(10);
    td_ring_read_end(c);
    raise(SIGKILL);
    _exit(11);
  }
  td_ring_set_peer(r, pid);
  for (int i = 0; i < 100 && rc == 0; i++) {
    rc = td_ring_write_begin(r, &slot);
    if (rc == 0)
      td_ring_write_end(r, 8);
  }
  ck_assert_int_eq(rc, TD_ECLOSED);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  td_ring_close(r);
  td_ring_unlink(ring_name);
}
END_TEST

START_TEST(test_killed_producer_releases_consumer) {
  const void *slot;
  td_ring *r;
  size_t len;
  pid_t pid;
  int status;

  ck_assert_int_eq(td_ring_create(ring_name, 4, 64), 0);
  ck_assert_int_eq(td_ring_open(ring_name, &r), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    td_ring *p;
    void *s;
    if (td_ring_open(ring_name, &p) < 0 || td_ring_write_begin(p, &s) < 0)
      _exit(10);
    memcpy(s, "last", 5);
    td_ring_write_end(p, 5);
    raise(SIGKILL);
    _exit(11);
  }
  td_ring_set_peer(r, pid);
  /* What the producer committed before dying is still read. */
  ck_assert_int_eq(td_ring_read_begin(r, &slot, &len), 0);
  ck_assert_uint_eq(len, 5);
  ck_assert_str_eq(slot, "last");
  td_ring_read_end(r);
  ck_assert_int_eq(td_ring_read_begin(r, &slot, &len), TD_ECLOSED);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFSIGNALED(status));
  td_ring_close(r);
  td_ring_unlink(ring_name);
}
END_TEST

START_TEST(test_batch_layout) {
  union {
    td_batch_hdr h;
    uint8_t bytes[256];
  } u;
  char msg[16];

  memset(&u, 0, sizeof(u));
  ck_assert_uint_eq(sizeof(td_batch_hdr), 48);
  ck_assert_uint_eq(td_batch_bytes(64, 784, 4), 48 + 64 * 788);
  u.h.kind = TD_BATCH_TRAIN;
  u.h.index = 1;
  u.h.nbatches = 2;
  u.h.count = 3;
  u.h.sample_bytes = 4;
  u.h.target_bytes = 4;
  ck_assert_ptr_eq(td_batch_pixels(&u.h), u.bytes + 48);
  ck_assert_ptr_eq(td_batch_targets(&u.h), u.bytes + 48 + 12);
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 4)), 0);
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 4) + 1), TD_EPROTO);
  ck_assert_int_eq(td_batch_check(&u, 47), TD_EPROTO);
  /* float targets: 4 bytes an output; never a partial float */
  u.h.target_bytes = 12;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 12)), 0);
  u.h.target_bytes = 6;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 6)), TD_EPROTO);
  u.h.target_bytes = 0;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 0)), TD_EPROTO);
  u.h.target_bytes = 4;
  u.h.index = 2;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 4)), TD_EPROTO);
  u.h.index = 0;

  /* Samples in their stored type: the size of the type divides the
   * sample; validation batches are batches too. */
  u.h.kind = TD_BATCH_VAL;
  u.h.dtype = TD_DTYPE_F32;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 4)), 0);
  u.h.dtype = TD_DTYPE_F16;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 4, 4)), 0);
  u.h.sample_bytes = 6;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 6, 4)), 0);
  u.h.dtype = TD_DTYPE_I32;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 6, 4)), TD_EPROTO);
  u.h.dtype = 99;
  ck_assert_int_eq(td_batch_check(&u, td_batch_bytes(3, 6, 4)), TD_EPROTO);
  u.h.dtype = TD_DTYPE_U8;
  u.h.kind = TD_BATCH_TRAIN;
  u.h.count = UINT32_MAX;
  u.h.sample_bytes = UINT32_MAX;
  ck_assert_int_eq(td_batch_check(&u, sizeof(u)), TD_EPROTO);
  u.h.kind = 77;
  ck_assert_int_eq(td_batch_check(&u, sizeof(u)), TD_EPROTO);

  /* An error message without its terminator is cut at the slot's end. */
  u.h.kind = TD_BATCH_ERROR;
  ck_assert_int_eq(td_batch_check(&u, sizeof(u.h)), 0);
  memcpy(u.bytes + 48, "abcdefgh", 8);
  td_batch_error_text(&u.h, 48 + 5, msg, sizeof(msg));
  ck_assert_str_eq(msg, "abcde");
  td_batch_error_text(&u.h, 48 + 8, msg, 4);
  ck_assert_str_eq(msg, "abc");
  td_batch_error_text(&u.h, 40, msg, sizeof(msg));
  ck_assert_str_eq(msg, "");
}
END_TEST

static Suite *ring_suite(void) {
  Suite *s = suite_create("ring");
  TCase *tc = tcase_create("ring");

  tcase_add_checked_fixture(tc, name_setup, name_teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_create_open_unlink);
  tcase_add_test(tc, test_owner_checked);
  tcase_add_test(tc, test_bad_sizes_and_names);
  tcase_add_test(tc, test_open_garbage);
  tcase_add_test(tc, test_two_processes);
  tcase_add_test(tc, test_shutdown_wakes_reader);
  tcase_add_test(tc, test_shutdown_wakes_writer);
  tcase_add_test(tc, test_killed_consumer_releases_producer);
  tcase_add_test(tc, test_killed_producer_releases_consumer);
  tcase_add_test(tc, test_batch_layout);
  suite_add_tcase(s, tc);
  return s;
}

/* A test that failed half-way may have left its segment: remove those of
 * test processes that are gone, and say so. */
static int remove_leftovers(void) {
  struct dirent *de;
  DIR *d = opendir("/dev/shm");
  int found = 0, pid;
  char name[300];

  if (d == NULL)
    return 0;
  while ((de = readdir(d)) != NULL) {
    if (sscanf(de->d_name, "traind-test-ring-%d", &pid) != 1 || kill(pid, 0) == 0)
      continue;
    snprintf(name, sizeof(name), "/%s", de->d_name);
    fprintf(stderr, "test_ring: removing a leftover segment %s\n", name);
    td_ring_unlink(name);
    found++;
  }
  closedir(d);
  return found;
}

int main(void) {
  SRunner *sr = srunner_create(ring_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  if (remove_leftovers() > 0 && failed == 0)
    failed = 1; /* a passing test must clean up after itself */
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
