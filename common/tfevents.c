/* TensorBoard event files (tfevents.h).  protobuf-c packs each Event into
 * the writer's buffer, between the record's header and footer: nothing is
 * allocated after open. */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crc32c.h"
#include "error.h"
#include "tfevent.pb-c.h"
#include "tfevents.h"
#include "util.h"

#define HEADER_BYTES 12 /* length and its CRC */
#define FOOTER_BYTES 4

struct td_tfevents {
  int fd;
  off_t good;          /* the file's size up to its last whole record */
  double last_flush;   /* td_now_mono of the last write */
  size_t len;          /* bytes queued in buf */
  unsigned char *buf;  /* TD_TFEVENTS_BUF_BYTES */
  char path[];
};

static void put_le(unsigned char *p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes) {
  uint64_t v = 0;

  for (int i = bytes - 1; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

/* Queue ev as one record; flush first if it would not fit. */
static int queue(td_tfevents *w, const Traind__Tb__Event *ev) {
  size_t n = traind__tb__event__get_packed_size(ev), need = HEADER_BYTES + n + FOOTER_BYTES;
  unsigned char *p;
  int rc;

  if (need > TD_TFEVENTS_BUF_BYTES)
    return TD_ETOOBIG;
  if (w->len + need > TD_TFEVENTS_BUF_BYTES && (rc = td_tfevents_flush(w)) < 0)
    return rc;
  p = w->buf + w->len;
  put_le(p, n, 8);
  put_le(p + 8, td_crc32c_mask(td_crc32c(0, p, 8)), 4);
  traind__tb__event__pack(ev, p + HEADER_BYTES);
  put_le(p + HEADER_BYTES + n, td_crc32c_mask(td_crc32c(0, p + HEADER_BYTES, n)), 4);
  w->len += need;
  return 0;
}

int td_tfevents_open(const char *dir, double wall, td_tfevents **out, char *err,
                     size_t errlen) {
  Traind__Tb__Event ev = TRAIND__TB__EVENT__INIT;
  char host[256] = "localhost", path[PATH_MAX];
  td_tfevents *w;
  int fd, n;

  if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0')
    strcpy(host, "localhost");
  host[sizeof(host) - 1] = '\0';
  for (char *c = host; *c; c++)
    if (*c == '/')
      *c = '_';
  n = snprintf(path, sizeof(path), "%s/" TD_TFEVENTS_PREFIX "%lld.%s.%d", dir, (long long)wall,
               host, (int)getpid());
  if (n < 0 || (size_t)n >= sizeof(path)) {
    snprintf(err, errlen, "the event file's name in %s is too long", dir);
    return TD_EIO;
  }
  fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) {
    snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
    return TD_EIO;
  }
  w = calloc(1, sizeof(*w) + (size_t)n + 1);
  if (w == NULL || (w->buf = malloc(TD_TFEVENTS_BUF_BYTES)) == NULL) {
    free(w);
    close(fd);
    unlink(path);
    snprintf(err, errlen, "out of host memory for the event file's buffer");
    return TD_ENOMEM;
  }
  w->fd = fd;
  w->last_flush = td_now_mono();
  memcpy(w->path, path, (size_t)n + 1);
  ev.wall_time = wall;
  ev.what_case = TRAIND__TB__EVENT__WHAT_FILE_VERSION;
  ev.file_version = "brain.Event:2";
  queue(w, &ev); /* an empty buffer holds it */
  *out = w;
  return 0;
}

const char *td_tfevents_path(const td_tfevents *w) { return w->path; }

int td_tfevents_scalars(td_tfevents *w, int64_t step, double wall, const td_tfscalar *v,
                        size_t n) {
  Traind__Tb__Summary__Value vals[TD_TFEVENTS_MAX_VALUES], *ptrs[TD_TFEVENTS_MAX_VALUES];
  Traind__Tb__Summary sum = TRAIND__TB__SUMMARY__INIT;
  Traind__Tb__Event ev = TRAIND__TB__EVENT__INIT;
  int rc;

  if (n == 0 || n > TD_TFEVENTS_MAX_VALUES)
    return TD_EINVAL;
  for (size_t i = 0; i < n; i++) {
    size_t len = v[i].tag != NULL ? strlen(v[i].tag) : 0;

    if (len == 0 || len > TD_TFEVENTS_MAX_TAG)
      return TD_EINVAL;
    traind__tb__summary__value__init(&vals[i]);
    vals[i].tag = (char *)v[i].tag;
    vals[i].value_case = TRAIND__TB__SUMMARY__VALUE__VALUE_SIMPLE_VALUE;
    vals[i].simple_value = (float)v[i].value;
    ptrs[i] = &vals[i];
  }
  sum.n_value = n;
  sum.value = ptrs;
  ev.wall_time = wall;
  ev.step = step;
  ev.what_case = TRAIND__TB__EVENT__WHAT_SUMMARY;
  ev.summary = &sum;
  if ((rc = queue(w, &ev)) < 0)
    return rc;
  if (w->len >= TD_TFEVENTS_BUF_BYTES / 2 ||
      td_now_mono() - w->last_flush >= TD_TFEVENTS_FLUSH_SECONDS)
    return td_tfevents_flush(w);
  return 0;
}

int td_tfevents_flush(td_tfevents *w) {
  size_t done = 0;

  w->last_flush = td_now_mono();
  while (done < w->len) {
    ssize_t k = write(w->fd, w->buf + done, w->len - done);

    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0) {
      int e = k < 0 ? errno : ENOSPC;

      /* No half record is left for a reader to stumble on; what did not
       * fit is lost, and the next flush starts from a whole file. */
      if (ftruncate(w->fd, w->good) == 0)
        lseek(w->fd, w->good, SEEK_SET);
      w->len = 0;
      errno = e;
      return e == ENOSPC || e == EDQUOT || e == EFBIG ? TD_ENOSPC : TD_EIO;
    }
    done += (size_t)k;
  }
  w->good += (off_t)w->len;
  w->len = 0;
  return 0;
}

int td_tfevents_close(td_tfevents *w) {
  int rc;

  if (w == NULL)
    return 0;
  rc = td_tfevents_flush(w);
  if (close(w->fd) < 0 && rc == 0)
    rc = TD_EIO;
  free(w->buf);
  free(w);
  return rc;
}

int td_tfevents_next_record(const void *buf, size_t size, size_t *off, const void **data,
                            size_t *len) {
  const unsigned char *p = (const unsigned char *)buf + *off;
  size_t left = size - *off;
  uint64_t n;

  if (left == 0)
    return TD_ENOENT;
  if (left < HEADER_BYTES + FOOTER_BYTES ||
      get_le(p + 8, 4) != td_crc32c_mask(td_crc32c(0, p, 8)))
    return TD_EPROTO;
  n = get_le(p, 8);
  if (n > left - HEADER_BYTES - FOOTER_BYTES ||
      get_le(p + HEADER_BYTES + n, 4) != td_crc32c_mask(td_crc32c(0, p + HEADER_BYTES, n)))
    return TD_EPROTO;
  *data = p + HEADER_BYTES;
  *len = (size_t)n;
  *off += HEADER_BYTES + (size_t)n + FOOTER_BYTES;
  return 0;
}
