/* Logging to stderr, one line per call: "traind[pid] LEVEL message". Under
 * systemd (JOURNAL_STREAM set) the level becomes a <N> syslog prefix. */
#ifndef TD_LOG_H
#define TD_LOG_H

enum td_log_level { TD_LOG_ERROR = 3, TD_LOG_WARN = 4, TD_LOG_INFO = 6, TD_LOG_DEBUG = 7 };

void td_log_init(const char *ident, int level);
void td_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define td_error(...) td_log(TD_LOG_ERROR, __VA_ARGS__)
#define td_warn(...)  td_log(TD_LOG_WARN, __VA_ARGS__)
#define td_info(...)  td_log(TD_LOG_INFO, __VA_ARGS__)
#define td_debug(...) td_log(TD_LOG_DEBUG, __VA_ARGS__)

#endif
