#include "idx.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "error.h"
#include "util.h"

#define IDX_INBUF (64u * 1024u)
#define IDX_CHUNK ((size_t)1 << 30) /* z_stream counts are 32-bit */
#define IDX_TRAILING_COUNT_MAX (64u * 1024u)
#define IDX_FIRST_ALLOC ((size_t)1 << 20)

/* A byte stream over a plain or gzip file.  The input buffer is zlib's
 * next_in/avail_in in both cases, so the offsets are kept in one place. */
struct idx_src {
  const char *path;
  int fd;
  int gz;
  int zinit;
  int in_eof;
  int member_end; /* inflate finished a gzip member; another may follow */
  z_stream zs;
  uint64_t file_off; /* file bytes read into the buffer so far */
  uint64_t out_off;  /* (decompressed) bytes delivered so far */
  char *err;
  size_t errlen;
  uint8_t in[IDX_INBUF];
};

static const struct {
  uint8_t code;
  const char *name;
} idx_dtypes[] = {
    {0x08, "uint8"}, {0x09, "int8"}, {0x0B, "int16"},
    {0x0C, "int32"}, {0x0D, "float32"}, {0x0E, "float64"},
};

__attribute__((format(printf, 2, 3)))
static int idx_fail(struct idx_src *s, const char *fmt, ...) {
  va_list ap;
  int n;

  if (s->errlen == 0)
    return TD_EDATA;
  n = snprintf(s->err, s->errlen, "%s: ", s->path);
  if (n >= 0 && (size_t)n < s->errlen) {
    va_start(ap, fmt);
    vsnprintf(s->err + n, s->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return TD_EDATA;
}

static uint64_t src_in_off(const struct idx_src *s) {
  return s->file_off - s->zs.avail_in;
}

/* Move the unread input to the front and read more after it. */
static int src_fill(struct idx_src *s) {
  ssize_t n;

  if (s->in_eof)
    return 0;
  if (s->zs.avail_in > 0 && s->zs.next_in != s->in)
    memmove(s->in, s->zs.next_in, s->zs.avail_in);
  s->zs.next_in = s->in;
  do
    n = read(s->fd, s->in + s->zs.avail_in, IDX_INBUF - s->zs.avail_in);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return idx_fail(s, "read error at offset %llu: expected data, got %s",
                    (unsigned long long)s->file_off, strerror(errno));
  if (n == 0)
    s->in_eof = 1;
  s->zs.avail_in += (uInt)n;
  s->file_off += (uint64_t)n;
  return 0;
}

static int src_read_plain(struct idx_src *s, uint8_t *buf, size_t n, size_t *got) {
  size_t done = 0, k;
  int err;

  while (done < n) {
    if (s->zs.avail_in == 0) {
      if ((err = src_fill(s)) < 0)
        return err;
      if (s->zs.avail_in == 0)
        break;
    }
    k = n - done < s->zs.avail_in ? n - done : s->zs.avail_in;
    memcpy(buf + done, s->zs.next_in, k);
    s->zs.next_in += k;
    s->zs.avail_in -= (uInt)k;
    done += k;
  }
  *got = done;
  return 0;
}

/* A new member must start right after the last one ended (gzip files may
 * be concatenated); anything else after a member is garbage. */
static int src_next_member(struct idx_src *s, int *end) {
  int err;

  while (s->zs.avail_in < 2 && !s->in_eof)
    if ((err = src_fill(s)) < 0)
      return err;
  if (s->zs.avail_in == 0) {
    *end = 1;
    return 0;
  }
  if (s->zs.avail_in < 2 || s->zs.next_in[0] != 0x1f || s->zs.next_in[1] != 0x8b)
    return idx_fail(s, "trailing garbage after the gzip stream at compressed offset %llu: "
                       "expected a gzip header (1f 8b) or the end of the file, got %02x",
                    (unsigned long long)src_in_off(s), s->zs.next_in[0]);
  if (inflateReset(&s->zs) != Z_OK)
    return idx_fail(s, "cannot restart gzip decoder at compressed offset %llu",
                    (unsigned long long)src_in_off(s));
  s->member_end = 0;
  *end = 0;
  return 0;
}

static int src_read_gz(struct idx_src *s, uint8_t *buf, size_t n, size_t *got) {
  int err, rc, end = 0;

  s->zs.next_out = buf;
  s->zs.avail_out = (uInt)n;
  while (s->zs.avail_out > 0) {
    if (s->member_end) {
      if ((err = src_next_member(s, &end)) < 0)
        return err;
      if (end)
        break;
    }
    if (s->zs.avail_in == 0 && (err = src_fill(s)) < 0)
      return err;
    if (s->zs.avail_in == 0)
      return idx_fail(s, "truncated gzip stream at compressed offset %llu: expected more "
                         "compressed data, got the end of the file",
                      (unsigned long long)src_in_off(s));
    rc = inflate(&s->zs, Z_NO_FLUSH);
    if (rc == Z_STREAM_END)
      s->member_end = 1;
    else if (rc == Z_MEM_ERROR)
      return TD_ENOMEM;
    else if (rc != Z_OK && !(rc == Z_BUF_ERROR && s->zs.avail_in == 0))
      return idx_fail(s, "corrupt gzip stream at compressed offset %llu: expected valid "
                         "deflate data, got %s",
                      (unsigned long long)src_in_off(s),
                      s->zs.msg != NULL ? s->zs.msg : "an error from zlib");
  }
  *got = n - s->zs.avail_out;
  return 0;
}

/* Read up to n bytes; fewer only at the end of the data. */
static int src_read(struct idx_src *s, uint8_t *buf, size_t n, size_t *got) {
  size_t done = 0, k, part = 0;
  int err;

  while (done < n) {
    k = n - done < IDX_CHUNK ? n - done : IDX_CHUNK;
    err = s->gz ? src_read_gz(s, buf + done, k, &part) : src_read_plain(s, buf + done, k, &part);
    if (err < 0)
      return err;
    done += part;
    s->out_off += part;
    if (part < k)
      break;
  }
  *got = done;
  return 0;
}

static int src_open(struct idx_src *s, const char *path, char *err, size_t errlen) {
  struct stat st;
  int rc;

  memset(s, 0, sizeof(*s));
  s->path = path;
  s->err = err;
  s->errlen = errlen;
  s->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (s->fd < 0) {
    rc = errno == ENOENT ? TD_ENOENT : TD_EDATA;
    idx_fail(s, "cannot open: %s", strerror(errno));
    return rc;
  }
  if (fstat(s->fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    rc = idx_fail(s, "is a directory, not an IDX file");
    goto close_fd;
  }
  s->zs.next_in = s->in;
  while (s->zs.avail_in < 2 && !s->in_eof)
    if ((rc = src_fill(s)) < 0)
      goto close_fd;
  if (s->zs.avail_in >= 2 && s->in[0] == 0x1f && s->in[1] == 0x8b) {
    s->gz = 1;
    /* 16 + MAX_WBITS: gzip only.  The trailer's size is never used. */
    rc = inflateInit2(&s->zs, 16 + MAX_WBITS);
    if (rc != Z_OK) {
      rc = rc == Z_MEM_ERROR ? TD_ENOMEM : idx_fail(s, "cannot start the gzip decoder");
      goto close_fd;
    }
    s->zinit = 1;
  }
  return 0;

close_fd:
  close(s->fd);
  return rc;
}

static void src_close(struct idx_src *s) {
  if (s->zinit)
    inflateEnd(&s->zs);
  close(s->fd);
}

static const char *dtype_name(uint8_t code) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(idx_dtypes); i++)
    if (idx_dtypes[i].code == code)
      return idx_dtypes[i].name;
  return "not an IDX type";
}

static void format_dims(const uint32_t *dims, int rank, char *buf, size_t cap) {
  size_t n = 0;

  buf[0] = '\0';
  for (int i = 0; i < rank && n < cap; i++) {
    int k = snprintf(buf + n, cap - n, "%s%u", i ? " x " : "", dims[i]);
    if (k < 0)
      break;
    n += (size_t)k;
  }
}

/* Checks the header and fills dims, rank and the item and total sizes. */
static int idx_read_header(struct idx_src *s, uint64_t max_bytes, td_idx *x, uint64_t *total) {
  uint8_t hdr[4 + 4 * TD_IDX_MAX_RANK];
  char dims[128];
  uint64_t item = 1, all;
  size_t got, need;
  int err;

  if ((err = src_read(s, hdr, 4, &got)) < 0)
    return err;
  if (got == 0)
    return idx_fail(s, "empty file at offset 0: expected an IDX header (4 bytes), got 0 bytes");
  if (got < 4)
    return idx_fail(s, "truncated header at offset %zu: expected 4 bytes, got %zu", got, got);
  if (hdr[0] != 0 || hdr[1] != 0)
    return idx_fail(s, "bad magic at offset 0: expected 00 00, got %02x %02x "
                       "(not an IDX file)", hdr[0], hdr[1]);
  if (hdr[2] != TD_IDX_UINT8)
    return idx_fail(s, "unsupported data type at offset 2: expected 0x08 (uint8), "
                       "got 0x%02x (%s)", hdr[2], dtype_name(hdr[2]));
  if (hdr[3] < 1 || hdr[3] > TD_IDX_MAX_RANK)
    return idx_fail(s, "bad rank at offset 3: expected 1..%d, got %u", TD_IDX_MAX_RANK, hdr[3]);
  x->dtype = hdr[2];
  x->rank = hdr[3];
  need = 4 * (size_t)x->rank;
  if ((err = src_read(s, hdr + 4, need, &got)) < 0)
    return err;
  if (got < need)
    return idx_fail(s, "truncated header at offset %zu: expected %zu bytes, got %zu",
                    4 + got, 4 + need, 4 + got);
  for (int i = 0; i < x->rank; i++) {
    const uint8_t *p = hdr + 4 + 4 * i;
    x->dims[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if (x->dims[i] == 0)
      return idx_fail(s, "bad dimension %d at offset %d: expected >= 1, got 0", i, 4 + 4 * i);
  }
  format_dims(x->dims, x->rank, dims, sizeof(dims));
  for (int i = 1; i < x->rank; i++)
    if (td_mul_u64(item, x->dims[i], &item) < 0)
      return idx_fail(s, "data size overflows at offset 4: expected at most %llu bytes, "
                         "got %s", (unsigned long long)max_bytes, dims);
  if (td_mul_u64(item, x->dims[0], &all) < 0)
    return idx_fail(s, "data size overflows at offset 4: expected at most %llu bytes, got %s",
                    (unsigned long long)max_bytes, dims);
  if (all > max_bytes || all > SIZE_MAX)
    return idx_fail(s, "data too large at offset 4: expected at most %llu bytes, "
                       "got %llu (%s)", (unsigned long long)max_bytes,
                    (unsigned long long)all, dims);
  x->item_bytes = item;
  *total = all;
  return 0;
}

static int idx_truncated(struct idx_src *s, uint64_t file_bytes) {
  return idx_fail(s, "truncated at offset %llu: expected %llu bytes, got %llu",
                  (unsigned long long)s->out_off, (unsigned long long)file_bytes,
                  (unsigned long long)s->out_off);
}

/* Read the n bytes kept into a buffer that grows as data arrives, so a
 * small file whose header claims gigabytes costs no more than it holds. */
static int idx_read_data(struct idx_src *s, size_t n, uint64_t file_bytes, uint8_t **out) {
  size_t cap = n < IDX_FIRST_ALLOC ? n : IDX_FIRST_ALLOC, have = 0, got;
  uint8_t *buf = malloc(cap), *grown;
  int err;

  if (buf == NULL)
    return TD_ENOMEM;
  for (;;) {
    if ((err = src_read(s, buf + have, cap - have, &got)) < 0)
      goto free_buf;
    have += got;
    if (have < cap) {
      err = idx_truncated(s, file_bytes);
      goto free_buf;
    }
    if (have == n)
      break;
    cap = n - cap < cap ? n : 2 * cap;
    grown = realloc(buf, cap);
    if (grown == NULL) {
      err = TD_ENOMEM;
      goto free_buf;
    }
    buf = grown;
  }
  *out = buf;
  return 0;

free_buf:
  free(buf);
  return err;
}

/* Read (and drop) n bytes that must be there. */
static int idx_skip(struct idx_src *s, uint64_t n, uint64_t file_bytes) {
  uint8_t buf[16384];
  size_t got, k;
  int err;

  while (n > 0) {
    k = n < sizeof(buf) ? (size_t)n : sizeof(buf);
    if ((err = src_read(s, buf, k, &got)) < 0)
      return err;
    if (got < k)
      return idx_truncated(s, file_bytes);
    n -= k;
  }
  return 0;
}

static int idx_expect_end(struct idx_src *s) {
  uint8_t buf[4096];
  uint64_t end = s->out_off, extra = 0;
  size_t got;
  int err;

  do {
    if ((err = src_read(s, buf, sizeof(buf), &got)) < 0)
      return err;
    extra += got;
  } while (got == sizeof(buf) && extra < IDX_TRAILING_COUNT_MAX);
  if (extra == 0)
    return 0;
  return idx_fail(s, "trailing data at offset %llu: expected the end of the file, "
                     "got %s%llu more bytes", (unsigned long long)end,
                  got == sizeof(buf) ? "at least " : "", (unsigned long long)extra);
}

int td_idx_load(const char *path, uint64_t limit, uint64_t max_bytes, td_idx *out,
                char *err, size_t errlen) {
  struct idx_src *s;
  td_idx x;
  uint64_t total = 0, hdr_bytes, keep;
  int rc;

  if (errlen > 0)
    err[0] = '\0';
  if (max_bytes == 0)
    max_bytes = TD_IDX_DEFAULT_MAX_BYTES;
  s = malloc(sizeof(*s));
  if (s == NULL)
    return TD_ENOMEM;
  memset(&x, 0, sizeof(x));
  if ((rc = src_open(s, path, err, errlen)) < 0)
    goto free_src;
  if ((rc = idx_read_header(s, max_bytes, &x, &total)) < 0)
    goto close_src;
  hdr_bytes = 4 + 4 * (uint64_t)x.rank;
  x.count = limit > 0 && limit < x.dims[0] ? limit : x.dims[0];
  keep = x.count * x.item_bytes; /* <= total: no overflow */
  x.bytes = (size_t)keep;
  if ((rc = idx_read_data(s, x.bytes, hdr_bytes + total, &x.data)) < 0)
    goto close_src;
  if ((rc = idx_skip(s, total - keep, hdr_bytes + total)) < 0 || (rc = idx_expect_end(s)) < 0)
    goto free_data;
  src_close(s);
  free(s);
  *out = x;
  return 0;

free_data:
  free(x.data);
close_src:
  src_close(s);
free_src:
  free(s);
  return rc;
}

void td_idx_free(td_idx *x) {
  if (x == NULL)
    return;
  free(x->data);
  memset(x, 0, sizeof(*x));
}
