/* traind-client: the command line of traind.  Options and commands are
 * tables; parsing accepts global options before or after the command. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "config.h"
#include "td_config.h"
#include "util.h"

enum {
  OPT_SOCKET, OPT_JSON, OPT_TIMEOUT, OPT_HELP, OPT_VERSION,
  OPT_WAIT, OPT_NAME, OPT_STATE, OPT_LIMIT,
};

/* Bits of the command options a command accepts. */
#define CMD_OPT(id) (1u << (id))

static const struct opt_def {
  const char *name;
  char short_name;
  int has_arg;
  int id;
  int per_command; /* only after a command that lists it */
} opt_defs[] = {
  {"socket",  0,   1, OPT_SOCKET,  0},
  {"json",    0,   0, OPT_JSON,    0},
  {"timeout", 0,   1, OPT_TIMEOUT, 0},
  {"help",    'h', 0, OPT_HELP,    0},
  {"version", 'V', 0, OPT_VERSION, 0},
  {"wait",    'w', 0, OPT_WAIT,    1},
  {"name",    0,   1, OPT_NAME,    1},
  {"state",   0,   1, OPT_STATE,   1},
  {"limit",   0,   1, OPT_LIMIT,   1},
};

typedef int (*cmd_fn)(cli *c, const cli_args *a);

static const struct command {
  const char *name, *alias;
  const char *usage; /* after the name */
  int min_pos, max_pos;
  unsigned opts;
  cmd_fn run;
  const char *summary;
  const char *help;
} commands[] = {
  {"submit", NULL, "FILE [--wait] [--name NAME]", 1, 1, CMD_OPT(OPT_WAIT) | CMD_OPT(OPT_NAME),
   cli_cmd_submit, "submit a job file",
   "Send the job file (YAML, at most 1 MiB) to traind.  Relative paths in it are\n"
   "resolved against the file's directory.  traind checks the job, plans its\n"
   "memory and queues it, or refuses it with the reason (exit status 3).\n"
   "\n"
   "  -w, --wait     follow the job until it ends: a progress bar on a terminal,\n"
   "                 a line every 2 seconds otherwise; exit status 1 if the job\n"
   "                 fails or is cancelled.  Ctrl-C stops waiting, not the job.\n"
   "                 With --json, prints the job's final state as JSON.\n"
   "  --name NAME    the job's name, instead of the one in the file\n"},
  {"ls", "list", "[--state STATE] [--limit N]", 0, 0, CMD_OPT(OPT_STATE) | CMD_OPT(OPT_LIMIT),
   cli_cmd_ls, "list jobs",
   "List jobs: id, name, state, device, progress (epoch and step), training\n"
   "loss, test accuracy and submission time.\n"
   "\n"
   "  --state STATE  only jobs in STATE: queued, running, succeeded, failed,\n"
   "                 cancelled\n"
   "  --limit N      at most N jobs\n"},
  {"show", NULL, "ID", 1, 1, 0, cli_cmd_show, "show one job in detail",
   "Show everything traind knows about job ID: its state, progress, times,\n"
   "memory plan, model file and error, if any.\n"},
  {"cancel", NULL, "ID", 1, 1, 0, cli_cmd_cancel, "cancel a job",
   "Cancel job ID.  A queued job leaves the queue; a running one is stopped.\n"},
  {"info", NULL, "", 0, 0, 0, cli_cmd_info, "show the daemon's version, uptime and sockets",
   "Show traind's version and protocol, its uptime, its sockets and its jobs.\n"},
  {"devices", NULL, "", 0, 0, 0, cli_cmd_devices, "show each device's memory budget",
   "Show each device with its memory budget, the memory reserved by running\n"
   "jobs, what is free, and its jobs.\n"},
  {"help", NULL, "[COMMAND]", 0, 1, 0, NULL, "show help for a command",
   "Show the help for COMMAND, or the overview.\n"},
};

static const char usage_line[] =
  "Usage: traind-client [--socket ADDR] [--json] [--timeout SECONDS] COMMAND [ARGS]\n";

static void print_help(FILE *f) {
  td_config cfg;
  size_t i;

  td_config_defaults(&cfg);
  fputs(usage_line, f);
  fputs("\nTalk to traind, the training daemon that packs jobs onto devices by memory.\n"
        "\nCommands:\n", f);
  for (i = 0; i < TD_ARRAY_SIZE(commands); i++) {
    int n = fprintf(f, "  %s %s", commands[i].name, commands[i].usage);

    fprintf(f, "%*s%s\n", n < 40 ? 40 - n : 1, "", commands[i].summary);
  }
  fprintf(f,
          "\nOptions (before or after the command):\n"
          "  --socket ADDR      traind's job socket (default: $TRAIND_SOCKET, else\n"
          "                     %s)\n"
          "  --json             print replies as JSON, one object per command\n"
          "  --timeout SECONDS  how long to wait for traind to answer (default 30;\n"
          "                     0 waits forever)\n"
          "  -h, --help         show this help; `traind-client help COMMAND` for one\n"
          "  -V, --version      show the version\n"
          "\nExit status:\n"
          "  0  success\n"
          "  1  the job failed or was cancelled (submit --wait), or a local error\n"
          "  2  usage error: a bad option or argument, an unreadable job file\n"
          "  3  traind refused the request (the message says why)\n"
          "  4  cannot reach traind: not running, no access, or no answer in time\n",
          cfg.socket);
}

static void print_command_help(const struct command *cmd) {
  printf("Usage: traind-client %s%s%s\n\n%s", cmd->name, cmd->usage[0] ? " " : "", cmd->usage,
         cmd->help);
  if (cmd->alias != NULL)
    printf("\nAlias: %s\n", cmd->alias);
  printf("\nGlobal options (--socket, --json, --timeout) and exit status: traind-client "
         "--help\n");
}

static const struct command *find_command(const char *name) {
  size_t i;

  for (i = 0; i < TD_ARRAY_SIZE(commands); i++)
    if (strcmp(name, commands[i].name) == 0 ||
        (commands[i].alias != NULL && strcmp(name, commands[i].alias) == 0))
      return &commands[i];
  return NULL;
}

static const struct opt_def *find_opt(const char *arg, size_t *name_len) {
  size_t i, n;

  if (arg[1] != '-') { /* -h */
    for (i = 0; i < TD_ARRAY_SIZE(opt_defs); i++)
      if (opt_defs[i].short_name != 0 && arg[1] == opt_defs[i].short_name && arg[2] == '\0') {
        *name_len = 1;
        return &opt_defs[i];
      }
    return NULL;
  }
  n = strcspn(arg + 2, "=");
  for (i = 0; i < TD_ARRAY_SIZE(opt_defs); i++)
    if (strlen(opt_defs[i].name) == n && strncmp(arg + 2, opt_defs[i].name, n) == 0) {
      *name_len = n;
      return &opt_defs[i];
    }
  return NULL;
}

typedef struct parsed {
  cli c;
  cli_args a;
  const struct command *cmd;
  int help, version;
} parsed;

static int usage_error(const struct command *cmd, const char *fmt, ...)
  __attribute__((format(printf, 2, 3)));
static int usage_error(const struct command *cmd, const char *fmt, ...) {
  va_list ap;

  fputs("traind-client: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (cmd != NULL && cmd->run != NULL)
    fprintf(stderr, "\nUsage: traind-client %s%s%s\nTry 'traind-client help %s'.\n",
            cmd->name, cmd->usage[0] ? " " : "", cmd->usage, cmd->name);
  else
    fputs("\nTry 'traind-client --help'.\n", stderr);
  return CLI_EXIT_USAGE;
}

static int parse_seconds(const char *s, double *out) {
  char *end;
  double v;

  errno = 0;
  v = strtod(s, &end);
  if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < 0 ||
      v * 1000.0 > (double)INT_MAX)
    return -1;
  *out = v;
  return 0;
}

static int parse_count(const char *s, uint64_t *out) {
  char *end;
  unsigned long long v;

  if (*s < '0' || *s > '9')
    return -1;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0' || v == 0)
    return -1;
  *out = v;
  return 0;
}

static int apply_opt(parsed *p, const struct opt_def *o, const char *val) {
  switch (o->id) {
  case OPT_SOCKET:
    if (val[0] == '\0')
      return usage_error(p->cmd, "--socket needs an address, e.g. ipc:///run/traind/traind.sock");
    p->c.addr = val;
    break;
  case OPT_JSON:
    p->c.json = 1;
    break;
  case OPT_TIMEOUT:
    if (parse_seconds(val, &p->c.timeout_s) != 0)
      return usage_error(p->cmd, "invalid --timeout '%s' (seconds, e.g. 30 or 2.5; 0 waits "
                         "forever)", val);
    break;
  case OPT_HELP:
    p->help = 1;
    break;
  case OPT_VERSION:
    p->version = 1;
    break;
  case OPT_WAIT:
    p->a.wait = 1;
    break;
  case OPT_NAME:
    p->a.name = val;
    break;
  case OPT_STATE:
    p->a.state = val;
    break;
  case OPT_LIMIT:
    if (parse_count(val, &p->a.limit) != 0)
      return usage_error(p->cmd, "invalid --limit '%s' (a number of jobs, 1 or more)", val);
    p->a.has_limit = 1;
    break;
  }
  return 0;
}

static int parse_args(int argc, char **argv, parsed *p) {
  int i, only_pos = 0, rc;

  for (i = 1; i < argc; i++) {
    const char *arg = argv[i], *val = NULL;
    const struct opt_def *o;
    size_t n;

    if (only_pos || arg[0] != '-' || arg[1] == '\0') {
      if (p->cmd == NULL) {
        p->cmd = find_command(arg);
        if (p->cmd == NULL)
          return usage_error(NULL, "unknown command '%s'", arg);
      } else if (p->a.npos >= p->cmd->max_pos) {
        if (!p->help)
          return usage_error(p->cmd, "unexpected argument '%s'", arg);
      } else {
        p->a.pos[p->a.npos++] = arg;
      }
      continue;
    }
    if (strcmp(arg, "--") == 0) {
      only_pos = 1;
      continue;
    }
    o = find_opt(arg, &n);
    if (o == NULL)
      return usage_error(p->cmd, "unknown option '%s'", arg);
    if (o->per_command) {
      if (p->cmd == NULL)
        return usage_error(NULL, "option --%s goes after the command it belongs to", o->name);
      if (!(p->cmd->opts & CMD_OPT(o->id)))
        return usage_error(p->cmd, "'%s' has no option --%s", p->cmd->name, o->name);
    }
    if (arg[1] == '-' && arg[2 + n] == '=')
      val = arg + 3 + n;
    if (o->has_arg && val == NULL) {
      if (i + 1 >= argc)
        return usage_error(p->cmd, "option --%s needs a value", o->name);
      val = argv[++i];
    } else if (!o->has_arg && val != NULL) {
      return usage_error(p->cmd, "option --%s takes no value", o->name);
    }
    rc = apply_opt(p, o, val != NULL ? val : "");
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* --socket, else $TRAIND_SOCKET, else the default; a bare path means ipc. */
static int resolve_socket(parsed *p, char **owned) {
  td_config cfg;
  const char *addr = p->c.addr;
  char *s;

  if (addr == NULL) {
    addr = getenv("TRAIND_SOCKET");
    if (addr == NULL || addr[0] == '\0') {
      td_config_defaults(&cfg);
      addr = cfg.socket;
    }
  }
  if (addr[0] == '/' || strstr(addr, "://") == NULL) {
    size_t n = strlen(addr) + sizeof("ipc://");

    s = malloc(n);
    if (s != NULL)
      snprintf(s, n, "ipc://%s", addr);
  } else {
    s = strdup(addr);
  }
  if (s == NULL) {
    cli_fail("out of memory");
    return CLI_EXIT_JOB;
  }
  *owned = s;
  p->c.addr = s;
  return 0;
}

int main(int argc, char **argv) {
  parsed p = {.c = {.timeout_s = 30.0, .req = -1}};
  char *addr = NULL;
  int rc;

  rc = parse_args(argc, argv, &p);
  if (rc != 0)
    return rc;
  if (p.version) {
    printf("traind-client %s (protocol %d)\n", TD_VERSION, TD_PROTO_VERSION);
    return 0;
  }
  if (p.cmd != NULL && p.cmd->run == NULL) { /* help [COMMAND] */
    const struct command *about = p.a.npos > 0 ? find_command(p.a.pos[0]) : NULL;

    if (p.a.npos > 0 && about == NULL)
      return usage_error(NULL, "no command '%s'", p.a.pos[0]);
    if (about != NULL && about->run != NULL)
      print_command_help(about);
    else
      print_help(stdout);
    return 0;
  }
  if (p.help) {
    if (p.cmd != NULL)
      print_command_help(p.cmd);
    else
      print_help(stdout);
    return 0;
  }
  if (p.cmd == NULL) {
    fputs(usage_line, stderr);
    fputs("Try 'traind-client --help'.\n", stderr);
    return CLI_EXIT_USAGE;
  }
  if (p.a.npos < p.cmd->min_pos)
    return usage_error(p.cmd, "missing %.*s", (int)strcspn(p.cmd->usage, " "),
                       p.cmd->usage);
  rc = resolve_socket(&p, &addr);
  if (rc != 0)
    return rc;

  rc = p.cmd->run(&p.c, &p.a);
  cli_close(&p.c);
  if (fflush(stdout) != 0 || ferror(stdout)) {
    cli_fail("cannot write the output: %s", strerror(errno));
    if (rc == 0)
      rc = CLI_EXIT_JOB;
  }
  free(addr);
  return rc;
}
