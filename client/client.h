/* traind-client internals shared by its files (cli_ names stay inside the
 * client program).
 *
 * Command functions return the process exit code and print their own
 * messages: the client is the place where errors meet the user.
 */
#ifndef TD_CLIENT_H
#define TD_CLIENT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <msgpack.h>

#include "proto.h"

/* Exit codes, documented in --help. */
enum {
  CLI_EXIT_OK = 0,
  CLI_EXIT_JOB = 1,         /* the job failed or was cancelled; local errors */
  CLI_EXIT_USAGE = 2,
  CLI_EXIT_REFUSED = 3,     /* the daemon refused the request */
  CLI_EXIT_UNREACHABLE = 4, /* cannot reach the daemon */
  CLI_EXIT_INTERRUPTED = 130,
};

typedef struct cli {
  const char *addr;  /* job socket */
  double timeout_s;  /* 0: wait forever */
  int json;
  int req;           /* REQ socket, -1 until the first request */
  /* Every request carries a MUNGE credential for our uid, made once and
   * sent again until it is half-way to expiry (conn.c). */
  const char *munge_socket; /* $TRAIND_MUNGE_SOCKET, else libmunge's default */
  char *cred;
  double cred_made;         /* td_now_mono() when made */
  char munge_err[256];      /* why there is none, for traind's EAUTH */
} cli;

#define CLI_WATCH_TOPICS 16

typedef struct cli_args {
  const char *pos[2];
  int npos;
  int wait;
  const char *name;
  const char *state;
  uint64_t limit;
  int has_limit;
  const char *owner;  /* ls --owner */
  int mine;           /* ls --mine */
  const char *device; /* ls --device */
  int follow;         /* logs -f */
  uint64_t tail;      /* logs --tail, in bytes */
  uint64_t budget;    /* device --budget; 0: unchanged */
  int drain;          /* device: 1 --drain, 0 --resume, -1 neither */
  int once;           /* top --once */
  const char *topics[CLI_WATCH_TOPICS]; /* watch --topic */
  int ntopics;
  uint64_t count;     /* watch --count; 0: until Ctrl-C */
  uint64_t cont;      /* submit --continue ID; 0: none */
  uint64_t epochs;    /* submit --epochs (with --continue); 0: none */
} cli_args;

#define CLI_LOGS_TAIL_DEFAULT (64u << 10)

extern volatile sig_atomic_t cli_interrupted;

/* "traind-client: message" on stderr. */
void cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* conn.c: nanomsg sockets.  cli_call: 0 with *reply set, or an exit code
 * with the message printed; a refusal's own reply goes to *err_reply when
 * that is not NULL (some carry more, e.g. the plan of ENOFIT). */
int cli_call(cli *c, const td_pack *req, td_msg **reply, td_msg **err_reply);
int cli_subscribe(const cli *c, const char *addr, int *sock);
void cli_close(cli *c);
void cli_timeout_fail(const char *addr, double timeout_s);

/* args.c: values on the command line.  0, TD_EINVAL (not a value of its kind) or
 * TD_ETOOBIG (outside [min, max]); nothing is printed. */
/* A request field's bounds in the protocol catalogue (td_proto_find), so
 * the client refuses what traind would: 0 or TD_ENOENT. */
int cli_field_bounds(const char *op, const char *field, double *min, double *max);
/* A string for a request field: TD_EINVAL if empty or shorter than its
 * minimum, TD_ETOOBIG if longer than *max bytes (set either way). */
int cli_check_str(const char *op, const char *field, const char *s, size_t *max);
/* Decimal integers; a sign only where min < 0. */
int cli_parse_uint(const char *s, double min, double max, uint64_t *out);
int cli_parse_int(const char *s, double min, double max, int64_t *out);
/* A size such as 2GiB, 512MiB, 1.5G or 1048576 (td_parse_size), in bytes. */
int cli_parse_size(const char *s, double min, double max, uint64_t *out);
/* Seconds, 0 or more, fractions allowed, at most INT_MAX milliseconds. */
int cli_parse_seconds(const char *s, double *out);

/* json.c: strict JSON from msgpack, whatever bytes came on the wire. */
size_t cli_utf8_next(const unsigned char *s, size_t n, uint32_t *cp);
void cli_json_print(FILE *f, const msgpack_object *o);
/* A reply map without its "v" and "ok" keys, newline-terminated. */
void cli_json_print_reply(FILE *f, const msgpack_object *map);

/* fmt.c: human output. */
/* Replaces bytes that are not printable UTF-8 (controls, invalid) by '?'. */
void cli_sanitize(char *s);
/* Sanitized malloc'd copy of a string field, or NULL if missing/not a string. */
char *cli_field_dup(const msgpack_object *map, const char *key);
void cli_put_field(FILE *f, const msgpack_object *map, const char *key, const char *dflt);
void cli_fmt_count(uint64_t n, char *buf, size_t cap);
void cli_fmt_clock(double seconds, char *buf, size_t cap);
void cli_fmt_uptime(double seconds, char *buf, size_t cap);
void cli_fmt_time(int64_t unix_ms, int relative, char *buf, size_t cap);
int cli_state_is_final(const char *state);
/* A job's "loss" or "accuracy" as "0.1234", or "-" (none yet, or a loss
 * before the first step). */
void cli_fmt_metric(const msgpack_object *job, const char *key, char *buf, size_t cap);
/* "2/5 173/469" while running ("epoch 2/5, step 173/469" with_word),
 * "5/5" otherwise, "-" before the first step. */
void cli_fmt_progress(const msgpack_object *job, int with_word, char *buf, size_t cap);
/* Terminal-safe text of a piece of a job's log, in place: as cli_sanitize,
 * but newlines and tabs pass.  Unless final, an incomplete UTF-8 sequence
 * at the end is left for the next piece; returns the bytes ready. */
size_t cli_sanitize_log(char *s, size_t n, int final);
/* Bytes of the longest prefix of s[0..len) at most cols code points wide. */
size_t cli_fit_width(const char *s, size_t len, size_t cols);
/* "2.85 MiB params, ..., total 12.3 MiB at micro-batch 128" */
void cli_print_plan_line(FILE *f, const msgpack_object *plan);
/* One "<indent>label  size" line per part. */
void cli_print_plan_table(FILE *f, const msgpack_object *plan, const char *indent);

/* The terminal's width: the window's (ws_col, 0 if unknown), else $COLUMNS
 * (env, may be NULL), else 80.  cli_term_columns asks fd's terminal. */
size_t cli_columns_from(unsigned ws_col, const char *env);
size_t cli_term_columns(int fd);
/* One line of s[0..len) at most cols wide, "..." at its end if cut, then a
 * newline. */
void cli_put_fitted(FILE *f, const char *s, size_t len, size_t cols);
/* "48x3" for a micro-batch of 48 accumulated 3 times; "-" for the whole
 * batch at once. */
void cli_fmt_micro(uint64_t micro_batch, uint64_t accumulation, char *buf, size_t cap);

/* An ETA means something once the job has run CLI_ETA_AFTER_S seconds and
 * done CLI_ETA_AFTER_PCT percent of its steps, whichever comes later:
 * before that, its rate is start-up (loading, warm-up), not training. */
#define CLI_ETA_AFTER_S 10.0
#define CLI_ETA_AFTER_PCT 5u
int cli_eta_due(double ran_s, uint64_t done, uint64_t total);

/* What the progress line of wait shows; a value below 0 (NAN for loss and
 * accuracy) is not known and not shown, nor an accumulation of 1. */
typedef struct cli_progress {
  uint64_t epoch, epochs, step, steps;
  double loss, train_acc, sps, eta;
  uint64_t micro_batch, accumulation;
  int more;         /* 1: train_mae is filled in (below 0: not measured) */
  double train_mae; /* a regression's, in the accuracy's place */
} cli_progress;
/* "[epoch 1/2] [####----] 23%  step ..." (bar, for a terminal) or
 * "epoch 1/2  step 10/40 (25%)  loss ..." (a line of a log).  Wider than
 * cols (0: no limit), the speed, then the bar, then the accuracy give way
 * (the caller cuts what is still too wide). */
void cli_fmt_progress_line(const cli_progress *p, int bar, size_t cols, char *buf, size_t cap);
/* "epoch 1/2 done: train loss 0.41, acc 0.86; val acc 0.85; test loss
 * 0.43, acc 0.84", each known part of it. */
typedef struct cli_epoch_end {
  uint64_t epoch, epochs;
  double train_loss, train_acc, val_loss, val_acc, test_loss, test_acc;
  int more; /* 1: the fields below are filled in (below 0: not measured) */
  uint64_t top_k;
  double train_mae, val_mae, test_mae, val_top_k, test_top_k;
} cli_epoch_end;
void cli_fmt_epoch_end(const cli_epoch_end *e, char *buf, size_t cap);
/* An event of the status socket for a terminal: the topic, "job N:" and
 * the fields that matter as key=value (all plain ones for an unknown
 * topic), sanitized. */
void cli_fmt_event(const char *topic, const msgpack_object *m, char *buf, size_t cap);

#define CLI_TABLE_MAX_COLS 16

/* Cells live in one growing text buffer (NUL-terminated, sanitized), so a
 * table of 10,000 jobs costs a few allocations, not one per cell. */
typedef struct cli_table {
  size_t ncols;
  char align[CLI_TABLE_MAX_COLS + 1]; /* 'l' or 'r' per column */
  size_t width[CLI_TABLE_MAX_COLS];   /* widest cell per column, in code points */
  char *text;                         /* every cell's text */
  size_t len, textcap;
  size_t *off;                        /* cell i starts at text + off[i] */
  uint32_t *cw;                       /* cell i's width */
  size_t n, cap;
  int oom;
} cli_table;

/* The first row is the headers; at most CLI_TABLE_MAX_COLS columns. */
void cli_table_init(cli_table *t, const char *const *headers, size_t ncols, const char *align);
void cli_table_cell(cli_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A cell of len bytes of text; an embedded NUL ends it. */
void cli_table_text(cli_table *t, const char *s, size_t len);
/* 0, or CLI_EXIT_JOB after saying "out of memory". */
int cli_table_print(const cli_table *t, FILE *f);
/* The width of the table as printed, in columns. */
size_t cli_table_width(const cli_table *t);
void cli_table_free(cli_table *t);

/* Job tables (ls, top): columns chosen from one list, each read from a
 * `list` row or `show`'s job map. */
typedef enum cli_job_col {
  CLI_COL_ID, CLI_COL_NAME, CLI_COL_OWNER, CLI_COL_STATE, CLI_COL_DEVICE, CLI_COL_PROGRESS,
  CLI_COL_LOSS, CLI_COL_ACC, CLI_COL_SUBMITTED, CLI_COL_MEM, CLI_COL_SPEED,
  CLI_COL_MICRO,  /* "48x3" from the plan when it accumulates, else "-" */
  CLI_COL_REASON, /* a queued job's wait_reason */
  CLI_COL_TREND,  /* a sparkline of show's last loss_curve points */
} cli_job_col;
void cli_job_table_init(cli_table *t, const cli_job_col *cols, size_t ncols);
void cli_job_row(cli_table *t, const cli_job_col *cols, size_t ncols, const msgpack_object *job);
/* A device table (devices, device, top): NAME BUDGET RESERVED FREE JOBS
 * STATE, of one device map or an array of them.  0, or CLI_EXIT_JOB after
 * saying "out of memory". */
int cli_print_devices(FILE *f, const msgpack_object *devs);

/* plot.c: the loss curve as text. */
#define CLI_LOSS_CURVE_MAX 512 /* points in show's loss_curve (PROTOCOL.md) */
/* Whether the locale's character set is UTF-8, from LC_ALL, LC_CTYPE and
 * LANG (the first set wins, as POSIX says); cli_term_utf8 reads them. */
int cli_utf8_from(const char *lc_all, const char *lc_ctype, const char *lang);
int cli_term_utf8(void);
/* show's loss_curve, its last cap points, into x (step) and y (loss); the
 * count.  Malformed pairs are skipped. */
size_t cli_loss_curve(const msgpack_object *job, double *x, double *y, size_t cap);
/* A line plot of the points in rows lines of cols characters, each line
 * starting with indent and the loss axis (its top and bottom values
 * printed), then the step axis and its range: rows + 2 lines, the count
 * returned; nothing (0) when no loss is finite, rows < 2 or cols < 4.
 * Points whose loss is not finite are left out. */
int cli_plot(FILE *f, const double *x, const double *y, size_t n, size_t rows, size_t cols,
             int utf8, const char *indent);
/* One character per value, its height in 8 levels from the smallest to
 * the largest finite one ('!' for one that is not finite), into buf. */
void cli_sparkline(const double *y, size_t n, int utf8, char *buf, size_t cap);

/* cmd.c: one function per command. */
int cli_cmd_submit(cli *c, const cli_args *a);
int cli_cmd_wait(cli *c, const cli_args *a);
int cli_cmd_ls(cli *c, const cli_args *a);
int cli_cmd_show(cli *c, const cli_args *a);
int cli_cmd_cancel(cli *c, const cli_args *a);
int cli_cmd_set_priority(cli *c, const cli_args *a);
int cli_cmd_info(cli *c, const cli_args *a);
int cli_cmd_devices(cli *c, const cli_args *a);
/* plan_cmd.c */
int cli_cmd_plan(cli *c, const cli_args *a);
int cli_cmd_device(cli *c, const cli_args *a);
/* The helpers below return 0 or an exit code, with the message printed. */
/* A job id argument. */
int cli_arg_id(const char *s, uint64_t *id);
/* "unexpected reply from traind to 'op': no valid 'field'" */
int cli_malformed(const char *op, const char *field);
/* A request with no field or only "id". */
int cli_request_id(cli *c, const char *op, const uint64_t *id, td_msg **reply);
/* One page of "list": jobs with ids above after (0: from the first); each
 * filter may be NULL, limit 0 means traind's page size. */
int cli_list(cli *c, const char *state, uint64_t limit, const char *owner, const char *device,
             uint64_t after, td_msg **reply);
/* "show" for a job. */
int cli_show_job(cli *c, uint64_t id, td_msg **reply, const msgpack_object **job);

/* jobcheck.c: parse a job file and check its datasets (and, for submit,
 * its output's directory) with our own rights, as traind no longer does;
 * *dtype is the train split's stored type for the request.  0, or an exit
 * code with the message printed. */
int cli_check_job(const char *text, size_t len, const char *dir, int submit,
                  const char **dtype);

/* logs.c */
int cli_cmd_logs(cli *c, const cli_args *a);

/* top.c */
int cli_cmd_top(cli *c, const cli_args *a);

/* watch.c */
int cli_cmd_watch(cli *c, const cli_args *a);

/* wait.c: submit --wait and wait. */
int cli_wait(cli *c, uint64_t id);
/* The status socket's address from `info` (malloc'd; NULL if traind names
 * none): 0, or an exit code with the message printed. */
int cli_status_address(cli *c, char **addr);
/* Ctrl-C sets cli_interrupted instead of ending the process; *old is the
 * action to put back with sigaction(SIGINT, old, NULL). */
void cli_catch_sigint(struct sigaction *old);
/* Sleeps, or less if a signal comes. */
void cli_nap(double seconds);

#endif
