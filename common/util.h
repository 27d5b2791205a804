/* Small helpers every process uses. */
#ifndef TD_UTIL_H
#define TD_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define TD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* splitmix64: a small, well-mixed generator that its state fully
 * determines (shuffles, weight initialisation). */
static inline uint64_t td_splitmix64(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);

  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Read a whole file of at most max bytes into a NUL-terminated malloc'd
 * buffer.  TD_ENOENT, TD_EIO, TD_ETOOBIG, TD_ENOMEM. */
int td_read_file(const char *path, size_t max, char **out, size_t *len);

/* mkdir -p with the given mode for each created component. */
int td_mkdir_p(const char *path, unsigned mode);

/* Write data to path atomically: path.tmp, fsync, rename, fsync dir. */
int td_write_file_atomic(const char *path, const void *data, size_t len);

/* Monotonic and wall-clock time. */
double td_now_mono(void);
int64_t td_now_unix_ms(void);

/* "2GiB", "512MiB", "1.5G", "1048576" -> bytes.  TD_EINVAL/TD_ETOOBIG. */
int td_parse_size(const char *s, uint64_t *out);
/* 1536 -> "1.50 KiB" */
void td_format_size(uint64_t bytes, char *buf, size_t cap);

/* Checked arithmetic: 0 on success, TD_ETOOBIG on overflow. */
int td_mul_u64(uint64_t a, uint64_t b, uint64_t *out);
int td_add_u64(uint64_t a, uint64_t b, uint64_t *out);

/* strlcpy-style copy; returns TD_ETOOBIG if truncated. */
int td_strlcpy(char *dst, const char *src, size_t cap);

#endif
