#include "datafile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"
#include "util.h"

#define DF_INBUF (64u * 1024u)
#define DF_CHUNK ((size_t)1 << 30) /* z_stream counts are 32-bit */
#define DF_SCAN_BUF (256u * 1024u)
#define DF_TRAILING_COUNT_MAX (64u * 1024u)
#define GZ_TRAILER 8

struct point {
  uint64_t out;  /* data offset */
  uint64_t in;   /* file offset of the first byte not fully consumed */
  int bits;      /* bits of the byte before `in` still to decode */
  uint32_t wlen; /* bytes of window */
  uint8_t *window;
};

struct td_dfile {
  char *path;
  int fd;
  int gz;
  struct stat st;
  uint64_t size; /* of the data; UINT64_MAX until known */
  struct point *points;
  uint32_t npoints;
};

struct td_dcur {
  td_dfile *f;
  char *err;
  size_t errlen;
  uint64_t out_off;  /* data offset of the next byte delivered */
  /* gzip only */
  int zinit;
  int raw;           /* started at an access point: no header, trailer unchecked */
  int in_eof;
  int member_end;    /* inflate finished a member; another may follow */
  int trailer_left;  /* raw: trailer bytes still to skip */
  z_stream zs;
  uint64_t file_off; /* file bytes read into the buffer so far */
  uint8_t *in;
};

int td_data_errf(char *err, size_t errlen, const char *path, const char *fmt, ...) {
  va_list ap;
  int n;

  if (err == NULL || errlen == 0)
    return TD_EDATA;
  n = snprintf(err, errlen, "%s: ", path);
  if (n >= 0 && (size_t)n < errlen) {
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    /* Messages quote the file's bytes (a .npy dtype, a CSV field), and a
     * client prints them as one line: only printable ASCII. */
    for (char *p = err + n; *p != '\0'; p++)
      if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
        *p = '?';
  }
  return TD_EDATA;
}

#define CUR_FAIL(c, ...) td_data_errf((c)->err, (c)->errlen, (c)->f->path, __VA_ARGS__)

static int pread_full(int fd, void *buf, size_t n, uint64_t off, size_t *got) {
  size_t done = 0;
  ssize_t k;

  while (done < n) {
    k = pread(fd, (uint8_t *)buf + done, n - done, (off_t)(off + done));
    if (k < 0 && errno == EINTR)
      continue;
    if (k < 0)
      return -1;
    if (k == 0)
      break;
    done += (size_t)k;
  }
  *got = done;
  return 0;
}

static const char *file_kind(mode_t m) {
  return S_ISFIFO(m)  ? "a FIFO"
         : S_ISCHR(m) ? "a character device"
         : S_ISBLK(m) ? "a block device"
         : S_ISDIR(m) ? "a directory"
         : S_ISSOCK(m) ? "a socket"
                       : "a special file";
}

int td_dfile_open(const char *path, td_dfile **out, char *err, size_t errlen) {
  uint8_t magic[2];
  td_dfile *f;
  size_t got;
  int rc;

  f = calloc(1, sizeof(*f));
  if (f == NULL || (f->path = strdup(path)) == NULL) {
    free(f);
    return TD_ENOMEM;
  }
  /* O_NONBLOCK: a FIFO (or a tape, a terminal) named as the dataset must
   * not hang the open before fstat can refuse it. */
  f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (f->fd < 0) {
    rc = errno == ENOENT ? TD_ENOENT : TD_EDATA;
    td_data_errf(err, errlen, path, "cannot open: %s", strerror(errno));
    goto free_f;
  }
  if (fstat(f->fd, &f->st) < 0) {
    rc = td_data_errf(err, errlen, path, "cannot stat: %s", strerror(errno));
    goto close_fd;
  }
  if (!S_ISREG(f->st.st_mode)) {
    rc = td_data_errf(err, errlen, path, "is %s, not a regular file; datasets must be regular "
                      "files", file_kind(f->st.st_mode));
    goto close_fd;
  }
  if (fcntl(f->fd, F_SETFL, fcntl(f->fd, F_GETFL) & ~O_NONBLOCK) < 0) {
    rc = td_data_errf(err, errlen, path, "cannot clear O_NONBLOCK: %s", strerror(errno));
    goto close_fd;
  }
  if (pread_full(f->fd, magic, 2, 0, &got) < 0) {
    rc = td_data_errf(err, errlen, path, "read error at offset 0: expected data, got %s",
                      strerror(errno));
    goto close_fd;
  }
  f->gz = got == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
  f->size = f->gz ? UINT64_MAX : (uint64_t)f->st.st_size;
  *out = f;
  return 0;

close_fd:
  close(f->fd);
free_f:
  free(f->path);
  free(f);
  return rc;
}

static void free_points(td_dfile *f) {
  for (uint32_t i = 0; i < f->npoints; i++)
    free(f->points[i].window);
  free(f->points);
  f->points = NULL;
  f->npoints = 0;
}

void td_dfile_close(td_dfile *f) {
  if (f == NULL)
    return;
  free_points(f);
  close(f->fd);
  free(f->path);
  free(f);
}

const char *td_dfile_path(const td_dfile *f) { return f->path; }
int td_dfile_is_gzip(const td_dfile *f) { return f->gz; }
const struct stat *td_dfile_stat(const td_dfile *f) { return &f->st; }
uint64_t td_dfile_size(const td_dfile *f) { return f->size; }

uint64_t td_dfile_index_bytes(const td_dfile *f) {
  uint64_t n = (uint64_t)f->npoints * sizeof(struct point);

  for (uint32_t i = 0; i < f->npoints; i++)
    n += f->points[i].wlen;
  return n;
}

uint64_t td_dfile_max_gap(const td_dfile *f) {
  uint64_t gap = 0, prev = 0;

  if (!f->gz)
    return 0;
  if (f->size == UINT64_MAX && f->npoints == 0)
    return UINT64_MAX;
  for (uint32_t i = 0; i < f->npoints; i++) {
    if (f->points[i].out - prev > gap)
      gap = f->points[i].out - prev;
    prev = f->points[i].out;
  }
  /* A scan that stopped early: reads stay within what it saw. */
  if (f->size == UINT64_MAX)
    return gap;
  return f->size - prev > gap ? f->size - prev : gap;
}

static uint64_t cur_in_off(const td_dcur *c) {
  return c->file_off - c->zs.avail_in;
}

/* Move the unread input to the front and read more after it. */
static int cur_fill(td_dcur *c) {
  size_t got;

  if (c->in_eof)
    return 0;
  if (c->zs.avail_in > 0 && c->zs.next_in != c->in)
    memmove(c->in, c->zs.next_in, c->zs.avail_in);
  c->zs.next_in = c->in;
  if (pread_full(c->f->fd, c->in + c->zs.avail_in, DF_INBUF - c->zs.avail_in, c->file_off,
                 &got) < 0)
    return CUR_FAIL(c, "read error at offset %llu: expected data, got %s",
                    (unsigned long long)c->file_off, strerror(errno));
  if (got < DF_INBUF - c->zs.avail_in)
    c->in_eof = 1;
  c->zs.avail_in += (uInt)got;
  c->file_off += got;
  return 0;
}

/* After a member: a raw cursor skips the trailer it cannot check; then a
 * new member must start right there, or the file must end. */
static int cur_next_member(td_dcur *c, int *end) {
  int err;

  while (c->trailer_left > 0) {
    if (c->zs.avail_in == 0 && (err = cur_fill(c)) < 0)
      return err;
    if (c->zs.avail_in == 0)
      return CUR_FAIL(c, "truncated gzip stream at compressed offset %llu: expected the "
                         "8-byte gzip trailer, got the end of the file",
                      (unsigned long long)cur_in_off(c));
    c->zs.next_in++;
    c->zs.avail_in--;
    c->trailer_left--;
  }
  while (c->zs.avail_in < 2 && !c->in_eof)
    if ((err = cur_fill(c)) < 0)
      return err;
  if (c->zs.avail_in == 0) {
    *end = 1;
    return 0;
  }
  if (c->zs.avail_in < 2 || c->zs.next_in[0] != 0x1f || c->zs.next_in[1] != 0x8b)
    return CUR_FAIL(c, "trailing garbage after the gzip stream at compressed offset %llu: "
                       "expected a gzip header (1f 8b) or the end of the file, got %02x",
                    (unsigned long long)cur_in_off(c), c->zs.next_in[0]);
  if (inflateReset2(&c->zs, 16 + MAX_WBITS) != Z_OK)
    return CUR_FAIL(c, "cannot restart the gzip decoder at compressed offset %llu",
                    (unsigned long long)cur_in_off(c));
  c->raw = 0;
  c->member_end = 0;
  *end = 0;
  return 0;
}

/* One inflate call into buf[0..n) with flush; *got bytes out, *end at the
 * end of the data. */
static int cur_inflate(td_dcur *c, uint8_t *buf, size_t n, int flush, size_t *got, int *end) {
  int err, rc;

  *got = 0;
  *end = 0;
  if (c->member_end) {
    if ((err = cur_next_member(c, end)) < 0)
      return err;
    if (*end)
      return 0;
  }
  if (c->zs.avail_in == 0 && (err = cur_fill(c)) < 0)
    return err;
  /* Even without input: zlib may hold output from the last call. */
  c->zs.next_out = buf;
  c->zs.avail_out = (uInt)n;
  rc = inflate(&c->zs, flush);
  *got = n - c->zs.avail_out;
  if (rc == Z_STREAM_END) {
    c->member_end = 1;
    c->trailer_left = c->raw ? GZ_TRAILER : 0;
  } else if (rc == Z_MEM_ERROR) {
    return TD_ENOMEM;
  } else if (*got == 0 && c->zs.avail_in == 0 && c->in_eof &&
             (rc == Z_OK || rc == Z_BUF_ERROR)) {
    return CUR_FAIL(c, "truncated gzip stream at compressed offset %llu: expected more "
                       "compressed data, got the end of the file",
                    (unsigned long long)cur_in_off(c));
  } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
    return CUR_FAIL(c, "corrupt gzip stream at compressed offset %llu: expected valid "
                       "deflate data, got %s",
                    (unsigned long long)cur_in_off(c),
                    c->zs.msg != NULL ? c->zs.msg : "an error from zlib");
  }
  return 0;
}

static int cur_read_gz(td_dcur *c, uint8_t *buf, size_t n, size_t *got) {
  size_t done = 0, k;
  int err, end = 0;

  while (done < n && !end) {
    if ((err = cur_inflate(c, buf + done, n - done, Z_NO_FLUSH, &k, &end)) < 0)
      return err;
    done += k;
  }
  *got = done;
  return 0;
}

int td_dcur_read(td_dcur *c, void *buf, size_t n, size_t *got) {
  size_t done = 0, k, part = 0;
  int err;

  while (done < n) {
    k = n - done < DF_CHUNK ? n - done : DF_CHUNK;
    if (c->f->gz) {
      if ((err = cur_read_gz(c, (uint8_t *)buf + done, k, &part)) < 0)
        return err;
    } else if (pread_full(c->f->fd, (uint8_t *)buf + done, k, c->out_off, &part) < 0) {
      return CUR_FAIL(c, "read error at offset %llu: expected data, got %s",
                      (unsigned long long)c->out_off, strerror(errno));
    }
    done += part;
    c->out_off += part;
    if (part < k)
      break;
  }
  *got = done;
  return 0;
}

int td_dcur_read_full(td_dcur *c, void *buf, size_t n, const char *what) {
  uint64_t at = c->out_off;
  size_t got;
  int err;

  if ((err = td_dcur_read(c, buf, n, &got)) < 0)
    return err;
  if (got < n)
    return CUR_FAIL(c, "truncated at offset %llu: expected %s (%zu bytes), got %zu bytes",
                    (unsigned long long)at, what, n, got);
  return 0;
}

uint64_t td_dcur_offset(const td_dcur *c) { return c->out_off; }

int td_dcur_expect_end(td_dcur *c) {
  uint8_t buf[4096];
  uint64_t end = c->out_off, extra = 0;
  size_t got;
  int err;

  do {
    if ((err = td_dcur_read(c, buf, sizeof(buf), &got)) < 0)
      return err;
    extra += got;
  } while (got == sizeof(buf) && extra < DF_TRAILING_COUNT_MAX);
  if (extra == 0)
    return 0;
  return CUR_FAIL(c, "trailing data at offset %llu: expected the end of the file, "
                     "got %s%llu more bytes", (unsigned long long)end,
                  got == sizeof(buf) ? "at least " : "", (unsigned long long)extra);
}

/* Start decoding at point p (NULL: the file's start). */
static int cur_start_gz(td_dcur *c, const struct point *p) {
  int rc, err;

  rc = inflateInit2(&c->zs, p == NULL ? 16 + MAX_WBITS : -MAX_WBITS);
  if (rc != Z_OK)
    return rc == Z_MEM_ERROR ? TD_ENOMEM : CUR_FAIL(c, "cannot start the gzip decoder");
  c->zinit = 1;
  c->zs.next_in = c->in;
  c->zs.avail_in = 0;
  if (p == NULL)
    return 0;
  c->raw = 1;
  c->file_off = p->in - (p->bits ? 1 : 0);
  c->out_off = p->out;
  if ((err = cur_fill(c)) < 0)
    return err;
  if (p->bits) {
    if (c->zs.avail_in == 0)
      return CUR_FAIL(c, "the file changed: offset %llu is past its end",
                      (unsigned long long)c->file_off);
    rc = inflatePrime(&c->zs, p->bits, c->zs.next_in[0] >> (8 - p->bits));
    c->zs.next_in++;
    c->zs.avail_in--;
    if (rc != Z_OK)
      return CUR_FAIL(c, "cannot resume the gzip decoder at compressed offset %llu",
                      (unsigned long long)p->in);
  }
  if (inflateSetDictionary(&c->zs, p->window, p->wlen) != Z_OK)
    return CUR_FAIL(c, "cannot resume the gzip decoder at compressed offset %llu",
                    (unsigned long long)p->in);
  return 0;
}

/* The last point at or below off, or NULL. */
static const struct point *find_point(const td_dfile *f, uint64_t off) {
  uint32_t lo = 0, hi = f->npoints;

  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (f->points[mid].out <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo == 0 ? NULL : &f->points[lo - 1];
}

int td_dcur_skip(td_dcur *c, uint64_t n, uint64_t *skipped) {
  uint8_t buf[16384];
  uint64_t done = 0;
  size_t got, k;
  int err;

  while (done < n) {
    k = n - done < sizeof(buf) ? (size_t)(n - done) : sizeof(buf);
    if (!c->f->gz) { /* nothing to decode: only how much is there */
      uint64_t size = (uint64_t)c->f->st.st_size, left = size > c->out_off ? size - c->out_off : 0;
      got = left < k ? (size_t)left : k;
      c->out_off += got;
    } else if ((err = td_dcur_read(c, buf, k, &got)) < 0) {
      return err;
    }
    done += got;
    if (got < k)
      break;
  }
  if (skipped != NULL)
    *skipped = done;
  return 0;
}

void td_dims_str(const uint32_t *dims, int rank, char *buf, size_t cap) {
  size_t n = 0;

  if (cap == 0)
    return;
  buf[0] = '\0';
  for (int i = 0; i < rank && n < cap; i++) {
    int k = snprintf(buf + n, cap - n, "%s%u", i ? " x " : "", dims[i]);
    if (k < 0)
      return;
    n += (size_t)k;
  }
}

int td_dcur_open(td_dfile *f, uint64_t off, td_dcur **out, char *err, size_t errlen) {
  td_dcur *c = calloc(1, sizeof(*c));
  int rc;

  if (c == NULL)
    return TD_ENOMEM;
  c->f = f;
  c->err = err;
  c->errlen = errlen;
  c->out_off = off;
  if (f->gz) {
    c->out_off = 0;
    c->in = malloc(DF_INBUF);
    if (c->in == NULL) {
      rc = TD_ENOMEM;
      goto close_cur;
    }
    if ((rc = cur_start_gz(c, find_point(f, off))) < 0 ||
        (rc = td_dcur_skip(c, off - c->out_off, NULL)) < 0)
      goto close_cur;
  }
  *out = c;
  return 0;

close_cur:
  td_dcur_close(c);
  return rc;
}

void td_dcur_close(td_dcur *c) {
  if (c == NULL)
    return;
  if (c->zinit)
    inflateEnd(&c->zs);
  free(c->in);
  free(c);
}

static int scan_plain(td_dfile *f, td_dfile_fn fn, void *ctx, char *err, size_t errlen) {
  uint8_t *buf = malloc(DF_SCAN_BUF);
  uint64_t off = 0;
  size_t got;
  int rc = 0;

  if (buf == NULL)
    return TD_ENOMEM;
  for (;;) {
    if (pread_full(f->fd, buf, DF_SCAN_BUF, off, &got) < 0) {
      rc = td_data_errf(err, errlen, f->path, "read error at offset %llu: expected data, got %s",
                        (unsigned long long)off, strerror(errno));
      break;
    }
    if (got > 0 && fn != NULL && (rc = fn(ctx, buf, got)) != 0)
      break;
    off += got;
    if (got < DF_SCAN_BUF)
      break;
  }
  free(buf);
  return rc < 0 ? rc : 0;
}

/* The scan's decoder state beside the cursor: the last 32 KiB of output
 * (a ring) and the points so far. */
struct scan {
  td_dfile *f;
  uint8_t *win;
  uint64_t wpos; /* total output; win[wpos % WINDOW] is the oldest byte */
  uint64_t spacing, last;
  uint32_t max_points, cap;
};

static void window_add(struct scan *s, const uint8_t *p, size_t n) {
  size_t at, k;

  if (n > TD_DFILE_WINDOW) {
    p += n - TD_DFILE_WINDOW;
    s->wpos += n - TD_DFILE_WINDOW;
    n = TD_DFILE_WINDOW;
  }
  while (n > 0) {
    at = (size_t)(s->wpos % TD_DFILE_WINDOW);
    k = TD_DFILE_WINDOW - at < n ? TD_DFILE_WINDOW - at : n;
    memcpy(s->win + at, p, k);
    p += k;
    n -= k;
    s->wpos += k;
  }
}

/* Keep every other point and double the spacing, to stay under the cap. */
static void thin_points(struct scan *s) {
  td_dfile *f = s->f;
  uint32_t kept = 0;

  for (uint32_t i = 0; i < f->npoints; i++) {
    if (i % 2 == 0)
      f->points[kept++] = f->points[i];
    else
      free(f->points[i].window);
  }
  f->npoints = kept;
  s->spacing *= 2;
}

static int add_point(struct scan *s, const td_dcur *c) {
  td_dfile *f = s->f;
  struct point *p;
  uint32_t wlen = s->wpos < TD_DFILE_WINDOW ? (uint32_t)s->wpos : TD_DFILE_WINDOW;
  size_t first;

  if (c->out_off - s->last < s->spacing)
    return 0;
  if (f->npoints >= s->max_points)
    thin_points(s);
  if (f->npoints == s->cap) {
    uint32_t cap = s->cap ? 2 * s->cap : 64;
    struct point *grown = realloc(f->points, cap * sizeof(*grown));
    if (grown == NULL)
      return TD_ENOMEM;
    f->points = grown;
    s->cap = cap;
  }
  p = &f->points[f->npoints];
  p->window = malloc(wlen > 0 ? wlen : 1);
  if (p->window == NULL)
    return TD_ENOMEM;
  p->out = c->out_off;
  p->in = cur_in_off(c);
  p->bits = c->zs.data_type & 7;
  p->wlen = wlen;
  /* Oldest first: from the ring's read position to its end, then the rest. */
  first = (size_t)((s->wpos - wlen) % TD_DFILE_WINDOW);
  if (first + wlen <= TD_DFILE_WINDOW) {
    memcpy(p->window, s->win + first, wlen);
  } else {
    memcpy(p->window, s->win + first, TD_DFILE_WINDOW - first);
    memcpy(p->window + (TD_DFILE_WINDOW - first), s->win, wlen - (TD_DFILE_WINDOW - first));
  }
  f->npoints++;
  s->last = c->out_off;
  return 0;
}

static int scan_gz(td_dfile *f, uint64_t spacing, uint32_t max_points, td_dfile_fn fn,
                   void *ctx, char *err, size_t errlen) {
  struct scan s = {.f = f, .spacing = spacing, .max_points = max_points < 2 ? 2 : max_points};
  uint8_t *buf = malloc(DF_SCAN_BUF);
  td_dcur *c = NULL;
  size_t got;
  int rc, end = 0;

  free_points(f);
  s.win = malloc(TD_DFILE_WINDOW);
  if (buf == NULL || s.win == NULL) {
    rc = TD_ENOMEM;
    goto free_bufs;
  }
  if ((rc = td_dcur_open(f, 0, &c, err, errlen)) < 0)
    goto free_bufs;
  while (!end) {
    /* Z_BLOCK stops at each deflate block's end, where a point can go. */
    if ((rc = cur_inflate(c, buf, DF_SCAN_BUF, spacing > 0 ? Z_BLOCK : Z_NO_FLUSH, &got,
                          &end)) < 0)
      goto free_bufs;
    if (got > 0) {
      if (fn != NULL && (rc = fn(ctx, buf, got)) != 0)
        break;
      if (spacing > 0)
        window_add(&s, buf, got);
      c->out_off += got;
    }
    if (spacing > 0 && !c->member_end && (c->zs.data_type & 128) && !(c->zs.data_type & 64) &&
        (rc = add_point(&s, c)) < 0)
      goto free_bufs;
  }
  if (end)
    f->size = c->out_off;
  rc = rc < 0 ? rc : 0;

free_bufs:
  if (rc < 0)
    free_points(f);
  td_dcur_close(c);
  free(s.win);
  free(buf);
  return rc;
}

int td_dfile_scan(td_dfile *f, uint64_t spacing, uint32_t max_points, td_dfile_fn fn,
                  void *ctx, char *err, size_t errlen) {
  return f->gz ? scan_gz(f, spacing, max_points, fn, ctx, err, errlen)
               : scan_plain(f, fn, ctx, err, errlen);
}
