#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

void td_log(int level, const char *fmt, ...) {
  char line[2048];
  va_list ap;
  int n;

  if (level > td__level)
    return;
  if (td__journal)
    n = snprintf(line, sizeof(line), "<%d>", level);
  else
    n = snprintf(line, sizeof(line), "%s[%d] %s: ", td__ident, (int)getpid(),
                 td__level_name(level));
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  /* One write per line, so lines from several processes never interleave. */
  fprintf(stderr, "%s\n", line);
}
