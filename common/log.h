/* Logging to stderr, one line per call:
 *
 *   2025-03-01T12:00:00.123Z traind[pid] LEVEL: message
 *
 * the time in UTC, to the millisecond: a job's log file is read long after
 * and far from where it was written.  Under systemd (JOURNAL_STREAM set)
 * the journal keeps the time and the process, and the level becomes a <N>
 * syslog prefix: "<N>message". */
#ifndef TD_LOG_H
#define TD_LOG_H

#include <stddef.h>

enum td_log_level { TD_LOG_ERROR = 3, TD_LOG_WARN = 4, TD_LOG_INFO = 6, TD_LOG_DEBUG = 7 };

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" and its NUL. */
#define TD_LOG_STAMP_MAX 25

void td_log_init(const char *ident, int level);
void td_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The time now as a log line starts with it, into buf (at least
 * TD_LOG_STAMP_MAX bytes, else ""); returns its length.  Safe in a signal
 * handler. */
size_t td_log_stamp(char *buf, size_t cap);

#define td_error(...) td_log(TD_LOG_ERROR, __VA_ARGS__)
#define td_warn(...)  td_log(TD_LOG_WARN, __VA_ARGS__)
#define td_info(...)  td_log(TD_LOG_INFO, __VA_ARGS__)
#define td_debug(...) td_log(TD_LOG_DEBUG, __VA_ARGS__)

#endif
