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
} cli;

typedef struct cli_args {
  const char *pos[2];
  int npos;
  int wait;
  const char *name;
  const char *state;
  uint64_t limit;
  int has_limit;
} cli_args;

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
/* "2.85 MiB params, ..., total 12.3 MiB at micro-batch 128" */
void cli_print_plan_line(FILE *f, const msgpack_object *plan);
/* One "<indent>label  size" line per part. */
void cli_print_plan_table(FILE *f, const msgpack_object *plan, const char *indent);

typedef struct cli_table {
  size_t ncols;
  const char *align; /* 'l' or 'r' per column */
  char **cells;
  size_t n, cap;
  int oom;
} cli_table;

/* The first row is the headers. */
void cli_table_init(cli_table *t, const char *const *headers, size_t ncols, const char *align);
void cli_table_cell(cli_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 0, or CLI_EXIT_JOB after saying "out of memory". */
int cli_table_print(const cli_table *t, FILE *f);
void cli_table_free(cli_table *t);

/* cmd.c: one function per command. */
int cli_cmd_submit(cli *c, const cli_args *a);
int cli_cmd_ls(cli *c, const cli_args *a);
int cli_cmd_show(cli *c, const cli_args *a);
int cli_cmd_cancel(cli *c, const cli_args *a);
int cli_cmd_info(cli *c, const cli_args *a);
int cli_cmd_devices(cli *c, const cli_args *a);
/* Requests "show" for a job; 0 or an exit code. */
int cli_show_job(cli *c, uint64_t id, td_msg **reply, const msgpack_object **job);

/* wait.c: submit --wait. */
int cli_wait(cli *c, uint64_t id);

#endif
