#include "log.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static const char *td__ident = "traind";
static int td__level = TD_LOG_INFO;
static int td__journal = 0;

void td_log_init(const char *ident, int level) {
  td__ident = ident;
  td__level = level;
  td__journal = getenv("JOURNAL_STREAM") != NULL;
}

static const char *td__level_name(int level) {
  switch (level) {
  case TD_LOG_ERROR: return "error";
  case TD_LOG_WARN:  return "warning";
  case TD_LOG_INFO:  return "info";
  default:           return "debug";
  }
}

static char *td__digits(char *p, unsigned v, int width) {
  for (int i = width - 1; i >= 0; i--, v /= 10)
    p[i] = (char)('0' + v % 10);
  return p + width;
}

/* Arithmetic only (days to a civil date, as in Howard Hinnant's
 * civil_from_days): no gmtime_r, whose locks a signal handler must not
 * take. */
size_t td_log_stamp(char *buf, size_t cap) {
  struct timespec ts;
  int64_t days, secs, z, era, yoe, y, doy, mp;
  unsigned doe, d, m;
  char *p = buf;

  if (cap < TD_LOG_STAMP_MAX || clock_gettime(CLOCK_REALTIME, &ts) != 0) {
    if (cap > 0)
      buf[0] = '\0';
    return 0;
  }
  days = (int64_t)ts.tv_sec / 86400;
  secs = (int64_t)ts.tv_sec % 86400;
  if (secs < 0)
    secs += 86400, days--;
  z = days + 719468;
  era = (z >= 0 ? z : z - 146096) / 146097;
  doe = (unsigned)(z - era * 146097);
  yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = yoe + era * 400;
  doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  mp = (5 * doy + 2) / 153;
  d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
  m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
  y += m <= 2;
  p = td__digits(p, (unsigned)(y < 0 ? 0 : y > 9999 ? 9999 : y), 4);
  *p++ = '-';
  p = td__digits(p, m, 2);
  *p++ = '-';
  p = td__digits(p, d, 2);
  *p++ = 'T';
  p = td__digits(p, (unsigned)(secs / 3600), 2);
  *p++ = ':';
  p = td__digits(p, (unsigned)(secs / 60 % 60), 2);
  *p++ = ':';
  p = td__digits(p, (unsigned)(secs % 60), 2);
  *p++ = '.';
  p = td__digits(p, (unsigned)(ts.tv_nsec / 1000000), 3);
  *p++ = 'Z';
  *p = '\0';
  return (size_t)(p - buf);
}

void td_log(int level, const char *fmt, ...) {
  char line[2048], stamp[TD_LOG_STAMP_MAX];
  va_list ap;
  int n;

  if (level > td__level)
    return;
  if (td__journal) {
    n = snprintf(line, sizeof(line), "<%d>", level);
  } else {
    td_log_stamp(stamp, sizeof(stamp));
    n = snprintf(line, sizeof(line), "%s %s[%d] %s: ", stamp, td__ident, (int)getpid(),
                 td__level_name(level));
  }
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  /* One write per line, so lines from several processes never interleave. */
  fprintf(stderr, "%s\n", line);
}
