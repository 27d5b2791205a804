#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

int td_read_file(const char *path, size_t max, char **out, size_t *len) {
  struct stat st;
  char *buf;
  size_t got = 0;
  int fd, err;

  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? TD_ENOENT : TD_EIO;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    err = TD_EIO;
    goto close_fd;
  }
  if ((uint64_t)st.st_size > max) {
    err = TD_ETOOBIG;
    goto close_fd;
  }
  buf = malloc((size_t)st.st_size + 1);
  if (buf == NULL) {
    err = TD_ENOMEM;
    goto close_fd;
  }
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      err = TD_EIO;
      goto free_buf;
    }
    got += (size_t)n;
  }
  buf[got] = '\0';
  close(fd);
  *out = buf;
  if (len != NULL)
    *len = got;
  return 0;

free_buf:
  free(buf);
close_fd:
  close(fd);
  return err;
}

int td_mkdir_p(const char *path, unsigned mode) {
  char tmp[PATH_MAX];
  size_t n;

  if (td_strlcpy(tmp, path, sizeof(tmp)) < 0)
    return TD_ETOOBIG;
  n = strlen(tmp);
  while (n > 1 && tmp[n - 1] == '/')
    tmp[--n] = '\0';
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
      return TD_EIO;
    *p = '/';
  }
  if (mkdir(tmp, mode) < 0 && errno != EEXIST)
    return TD_EIO;
  return 0;
}

static int td__fsync_dir_of(const char *path) {
  char dir[PATH_MAX];
  char *slash;
  int fd, rc;

  if (td_strlcpy(dir, path, sizeof(dir)) < 0)
    return TD_ETOOBIG;
  slash = strrchr(dir, '/');
  if (slash == NULL)
    strcpy(dir, ".");
  else if (slash == dir)
    dir[1] = '\0';
  else
    *slash = '\0';
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return TD_EIO;
  rc = fsync(fd);
  close(fd);
  return rc < 0 ? TD_EIO : 0;
}

/* A write that failed for want of space (or of quota, or past the file
 * size limit) is TD_ENOSPC, so the caller can say the disk is full. */
static int td__write_errno(int e) {
  return e == ENOSPC || e == EDQUOT || e == EFBIG ? TD_ENOSPC : TD_EIO;
}

int td_write_file_atomic(const char *path, const void *data, size_t len) {
  char tmp[PATH_MAX];
  const char *p = data;
  int fd, err;

  /* A name of its own: two writers of one path (two jobs with the same
   * output) must not write into each other's temporary file. */
  if (snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= (int)sizeof(tmp))
    return TD_ETOOBIG;
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0)
    return td__write_errno(errno);
  if (fchmod(fd, 0644) < 0) {
    err = TD_EIO;
    goto unlink_tmp;
  }
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      err = td__write_errno(errno);
      goto unlink_tmp;
    }
    p += n;
    len -= (size_t)n;
  }
  if (fsync(fd) < 0) {
    err = td__write_errno(errno);
    goto unlink_tmp;
  }
  close(fd);
  if (rename(tmp, path) < 0) {
    unlink(tmp);
    return TD_EIO;
  }
  return td__fsync_dir_of(path);

unlink_tmp:
  close(fd);
  unlink(tmp);
  return err;
}

double td_now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t td_now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int td_parse_size(const char *s, uint64_t *out) {
  static const struct {
    const char *suffix;
    double mult;
  } units[] = {
      {"", 1.0},           {"B", 1.0},
      {"K", 1024.0},       {"KB", 1e3},   {"KiB", 1024.0},
      {"M", 1048576.0},    {"MB", 1e6},   {"MiB", 1048576.0},
      {"G", 1073741824.0}, {"GB", 1e9},   {"GiB", 1073741824.0},
      {"T", 1099511627776.0}, {"TB", 1e12}, {"TiB", 1099511627776.0},
  };
  char *end;
  double v;

  if (s == NULL || *s == '\0' || *s == '-' || *s == '+')
    return TD_EINVAL;
  errno = 0;
  v = strtod(s, &end);
  if (end == s || errno != 0 || !isfinite(v) || v < 0)
    return TD_EINVAL;
  while (*end == ' ')
    end++;
  for (size_t i = 0; i < TD_ARRAY_SIZE(units); i++) {
    if (strcmp(end, units[i].suffix) != 0)
      continue;
    v *= units[i].mult;
    if (v >= 18446744073709551615.0)
      return TD_ETOOBIG;
    *out = (uint64_t)v;
    return 0;
  }
  return TD_EINVAL;
}

void td_format_size(uint64_t bytes, char *buf, size_t cap) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = (double)bytes;
  size_t u = 0;

  while (v >= 1024.0 && u + 1 < TD_ARRAY_SIZE(units)) {
    v /= 1024.0;
    u++;
  }
  if (u == 0)
    snprintf(buf, cap, "%llu B", (unsigned long long)bytes);
  else
    snprintf(buf, cap, "%.2f %s", v, units[u]);
}

int td_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
  if (__builtin_mul_overflow(a, b, out))
    return TD_ETOOBIG;
  return 0;
}

int td_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
  if (__builtin_add_overflow(a, b, out))
    return TD_ETOOBIG;
  return 0;
}

int td_strlcpy(char *dst, const char *src, size_t cap) {
  size_t n = strlen(src);

  if (cap == 0)
    return TD_ETOOBIG;
  if (n >= cap) {
    memcpy(dst, src, cap - 1);
    dst[cap - 1] = '\0';
    return TD_ETOOBIG;
  }
  memcpy(dst, src, n + 1);
  return 0;
}
