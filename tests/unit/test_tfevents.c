/* TensorBoard event files (common/tfevents.h): what the writer puts in a
 * file is read back record by record, CRCs checked, and decoded with
 * protobuf-c; a damaged record is found; a full disk leaves whole records
 * behind.  TensorBoard's own reader reads these files in
 * tests/tensorboard/. */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "error.h"
#include "tfevent.pb-c.h"
#include "tfevents.h"
#include "util.h"

static char dir[64];

static void setup(void) {
  strcpy(dir, "/tmp/td_tfevents_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[512];

  while (d != NULL && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;
    snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
    unlink(p);
  }
  if (d != NULL)
    closedir(d);
  rmdir(dir);
}

/* The one event file in dir, read whole. */
static char *read_events(size_t *len) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char p[512] = "", *text = NULL;
  int files = 0;

  ck_assert_ptr_nonnull(d);
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, TD_TFEVENTS_PREFIX, strlen(TD_TFEVENTS_PREFIX)) == 0) {
      snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
      files++;
    }
  }
  closedir(d);
  ck_assert_int_eq(files, 1);
  ck_assert_int_eq(td_read_file(p, 1 << 24, &text, len), 0);
  return text;
}

START_TEST(test_roundtrip) {
  td_tfevents *w;
  char err[256];
  const td_tfscalar v[] = {{"train/loss", 2.5}, {"train/accuracy", 0.0}, {"memory/bytes", 1e9}};
  size_t len, off = 0, n;
  const void *rec;
  char *text;
  int records = 0;

  ck_assert_int_eq(td_tfevents_open(dir, 1700000000.25, &w, err, sizeof(err)), 0);
  ck_assert_ptr_nonnull(strstr(td_tfevents_path(w), "/" TD_TFEVENTS_PREFIX "1700000000."));
  for (int s = 1; s <= 100; s++)
    ck_assert_int_eq(td_tfevents_scalars(w, s, 1700000000.0 + s, v, TD_ARRAY_SIZE(v)), 0);
  ck_assert_int_eq(td_tfevents_close(w), 0);

  text = read_events(&len);
  while (td_tfevents_next_record(text, len, &off, &rec, &n) == 0) {
    Traind__Tb__Event *ev = traind__tb__event__unpack(NULL, n, rec);

    ck_assert_ptr_nonnull(ev);
    if (records == 0) {
      /* the version record first, as TensorBoard expects */
      ck_assert_int_eq(ev->what_case, TRAIND__TB__EVENT__WHAT_FILE_VERSION);
      ck_assert_str_eq(ev->file_version, "brain.Event:2");
      ck_assert(ev->wall_time == 1700000000.25);
    } else {
      ck_assert_int_eq(ev->what_case, TRAIND__TB__EVENT__WHAT_SUMMARY);
      ck_assert_int_eq(ev->step, records);
      ck_assert(ev->wall_time == 1700000000.0 + records);
      ck_assert_uint_eq(ev->summary->n_value, 3);
      for (size_t i = 0; i < 3; i++) {
        /* a zero is still there: the oneof marks it as set */
        ck_assert_int_eq(ev->summary->value[i]->value_case,
                         TRAIND__TB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE);
        ck_assert_str_eq(ev->summary->value[i]->tag, v[i].tag);
        ck_assert(ev->summary->value[i]->simple_value == (float)v[i].value);
      }
    }
    traind__tb__event__free_unpacked(ev, NULL);
    records++;
  }
  ck_assert_int_eq(records, 101);
  ck_assert_uint_eq(off, len);
  ck_assert_int_eq(td_tfevents_next_record(text, len, &off, &rec, &n), TD_ENOENT);
  free(text);
}
END_TEST

/* Every flipped byte and every cut is noticed (a CRC, or a length that
 * runs past the end), never read as a record. */
START_TEST(test_damage) {
  td_tfevents *w;
  char err[256];
  const td_tfscalar v[] = {{"x", 1.0}};
  size_t len, off, n;
  const void *rec;
  char *text;

  ck_assert_int_eq(td_tfevents_open(dir, 1.0, &w, err, sizeof(err)), 0);
  ck_assert_int_eq(td_tfevents_scalars(w, 7, 2.0, v, 1), 0);
  ck_assert_int_eq(td_tfevents_close(w), 0);
  text = read_events(&len);
  for (size_t i = 0; i < len; i++) {
    int rc;

    text[i] ^= 0x5a;
    off = 0;
    while ((rc = td_tfevents_next_record(text, len, &off, &rec, &n)) == 0) {
    }
    ck_assert_int_eq(rc, TD_EPROTO);
    text[i] ^= 0x5a;
  }
  for (size_t cut = 1; cut < len; cut++) {
    int rc, whole = 0;

    off = 0;
    while ((rc = td_tfevents_next_record(text, cut, &off, &rec, &n)) == 0)
      whole++;
    ck_assert_int_eq(rc, off == cut ? TD_ENOENT : TD_EPROTO);
    ck_assert_int_le(whole, 1);
  }
  free(text);
}
END_TEST

START_TEST(test_bad_args) {
  td_tfevents *w;
  char err[256], tag[TD_TFEVENTS_MAX_TAG + 2];
  td_tfscalar v[TD_TFEVENTS_MAX_VALUES + 1];

  ck_assert_int_eq(td_tfevents_open("/nonexistent/dir", 1.0, &w, err, sizeof(err)), TD_EIO);
  ck_assert_ptr_nonnull(strstr(err, "/nonexistent/dir"));
  ck_assert_int_eq(td_tfevents_open(dir, 1.0, &w, err, sizeof(err)), 0);
  for (size_t i = 0; i < TD_ARRAY_SIZE(v); i++)
    v[i] = (td_tfscalar){"t", 1.0};
  ck_assert_int_eq(td_tfevents_scalars(w, 1, 1.0, v, 0), TD_EINVAL);
  ck_assert_int_eq(td_tfevents_scalars(w, 1, 1.0, v, TD_ARRAY_SIZE(v)), TD_EINVAL);
  ck_assert_int_eq(td_tfevents_scalars(w, 1, 1.0, v, TD_TFEVENTS_MAX_VALUES), 0);
  memset(tag, 'a', sizeof(tag) - 1);
  tag[sizeof(tag) - 1] = '\0';
  v[0].tag = tag;
  ck_assert_int_eq(td_tfevents_scalars(w, 1, 1.0, v, 1), TD_EINVAL);
  v[0].tag = "";
  ck_assert_int_eq(td_tfevents_scalars(w, 1, 1.0, v, 1), TD_EINVAL);
  ck_assert_int_eq(td_tfevents_close(w), 0);
  ck_assert_int_eq(td_tfevents_close(NULL), 0);
}
END_TEST

/* A disk that fills (here a file-size limit) fails the flush with
 * TD_ENOSPC and leaves only whole records; later events that fit are
 * written after them. */
START_TEST(test_disk_full) {
  struct rlimit lim = {.rlim_cur = 1000, .rlim_max = RLIM_INFINITY};
  const td_tfscalar v[] = {{"train/loss", 1.0}, {"train/accuracy", 0.5}};
  td_tfevents *w;
  char err[256], *text;
  size_t len, off = 0, n;
  const void *rec;
  int rc, records = 0, scalars_rc = 0, flush_rc, late_rc, close_rc;

  signal(SIGXFSZ, SIG_IGN);
  ck_assert_int_eq(td_tfevents_open(dir, 1.0, &w, err, sizeof(err)), 0);
  ck_assert_int_eq(td_tfevents_flush(w), 0);
  /* No ck_assert while the limit holds: Check writes each assertion's
   * place to a file of its own, which the limit would cut. */
  ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
  for (int s = 1; s <= 40; s++)
    scalars_rc |= td_tfevents_scalars(w, s, 1.0, v, 2);
  flush_rc = td_tfevents_flush(w);
  late_rc = td_tfevents_scalars(w, 41, 1.0, v, 1);
  close_rc = td_tfevents_close(w);
  lim.rlim_cur = RLIM_INFINITY;
  ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
  ck_assert_int_eq(scalars_rc, 0);
  ck_assert_int_eq(flush_rc, TD_ENOSPC);
  ck_assert_int_eq(late_rc, 0);
  ck_assert_int_eq(close_rc, 0);

  text = read_events(&len);
  while ((rc = td_tfevents_next_record(text, len, &off, &rec, &n)) == 0) {
    Traind__Tb__Event *ev = traind__tb__event__unpack(NULL, n, rec);

    ck_assert_ptr_nonnull(ev);
    if (records == 1)
      ck_assert_int_eq(ev->step, 41); /* the 40 that failed are gone, whole */
    traind__tb__event__free_unpacked(ev, NULL);
    records++;
  }
  ck_assert_int_eq(rc, TD_ENOENT);
  ck_assert_int_eq(records, 2);
  free(text);
}
END_TEST

int main(void) {
  Suite *s = suite_create("tfevents");
  TCase *tc = tcase_create("tfevents");
  SRunner *sr;
  int failed;

  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_roundtrip);
  tcase_add_test(tc, test_damage);
  tcase_add_test(tc, test_bad_args);
  tcase_add_test(tc, test_disk_full);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
