/* traind-client: the command line of traind.  Options and commands are
 * tables; parsing accepts global options before or after the command. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "config.h"
#include "error.h"
#include "td_config.h"
#include "util.h"

enum {
  OPT_SOCKET, OPT_JSON, OPT_TIMEOUT, OPT_HELP, OPT_VERSION,
  OPT_WAIT, OPT_NAME, OPT_STATE, OPT_LIMIT, OPT_OWNER, OPT_MINE, OPT_DEVICE, OPT_FOLLOW,
  OPT_TAIL, OPT_BUDGET, OPT_DRAIN, OPT_RESUME, OPT_ONCE, OPT_TOPIC, OPT_COUNT,
  OPT_CONTINUE, OPT_EPOCHS,
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
  {"owner",   0,   1, OPT_OWNER,   1},
  {"mine",    0,   0, OPT_MINE,    1},
  {"device",  0,   1, OPT_DEVICE,  1},
  {"follow",  'f', 0, OPT_FOLLOW,  1},
  {"tail",    0,   1, OPT_TAIL,    1},
  {"budget",  0,   1, OPT_BUDGET,  1},
  {"drain",   0,   0, OPT_DRAIN,   1},
  {"resume",  0,   0, OPT_RESUME,  1},
  {"once",    0,   0, OPT_ONCE,    1},
  {"topic",   0,   1, OPT_TOPIC,   1},
  {"count",   0,   1, OPT_COUNT,   1},
  {"continue", 0,  1, OPT_CONTINUE, 1},
  {"epochs",  0,   1, OPT_EPOCHS,  1},
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
  {"submit", NULL, "FILE | --continue ID --epochs N [--wait] [--name NAME]", 0, 1,
   CMD_OPT(OPT_WAIT) | CMD_OPT(OPT_NAME) | CMD_OPT(OPT_CONTINUE) | CMD_OPT(OPT_EPOCHS),
   cli_cmd_submit, "submit a job file, or continue a finished job",
   "Send the job file (YAML, at most 1 MiB) to traind.  Relative paths in it are\n"
   "resolved against the file's directory.  traind checks the job, plans its\n"
   "memory and queues it, or refuses it with the reason (exit status 3).\n"
   "\n"
   "  -w, --wait     follow the job until it ends: a progress bar on a terminal,\n"
   "                 a line every 2 seconds otherwise; exit status 1 if the job\n"
   "                 fails or is cancelled.  Ctrl-C stops waiting, not the job.\n"
   "                 With --json, prints the job's final state as JSON.\n"
   "  --name NAME    the job's name, instead of the one in the file\n"
   "  --continue ID  no job file: a new job that starts from the final state of\n"
   "                 your job ID, which succeeded (its weights, optimiser state\n"
   "                 and step, so the schedule goes on), and trains\n"
   "  --epochs N     N more epochs, numbered on from its last, with its job file\n"
   "                 as traind keeps it (its output is replaced by the new model)\n"},
  {"wait", NULL, "ID", 1, 1, 0, cli_cmd_wait, "follow a submitted job until it ends",
   "Follow job ID until it ends, as `submit --wait` does: a progress bar on a\n"
   "terminal, a line every 2 seconds otherwise, then the outcome.  A job that\n"
   "has already ended only prints its outcome.  Ctrl-C stops waiting, not the\n"
   "job.  With --json, prints the job's final state as JSON.\n"
   "\n"
   "The progress shows the training loss (and accuracy when traind reports it),\n"
   "the speed, the micro-batch when the job accumulates (micro-batch 48x3), and\n"
   "the ETA once the job has run 10 s and done 5% of its steps.  A re-plan and\n"
   "each epoch's end (train, validation and test results) get a line of their\n"
   "own; a queued job shows why it waits.\n"
   "\n"
   "Exit status 0 if the job succeeded, 1 if it failed or was cancelled, 130\n"
   "after Ctrl-C.\n"},
  {"ls", "list", "[--state STATE] [--owner NAME|--mine] [--device NAME] [--limit N]", 0, 0,
   CMD_OPT(OPT_STATE) | CMD_OPT(OPT_LIMIT) | CMD_OPT(OPT_OWNER) | CMD_OPT(OPT_MINE) |
     CMD_OPT(OPT_DEVICE),
   cli_cmd_ls, "list jobs",
   "List jobs: id, name, owner, state, device, progress (epoch and step),\n"
   "training loss, test accuracy, submission time and, for a queued job, why\n"
   "it waits.\n"
   "\n"
   "  --state STATE  only jobs in STATE: queued, running, succeeded, failed,\n"
   "                 cancelled\n"
   "  --owner NAME   only jobs submitted by user NAME\n"
   "  --mine         only your own jobs\n"
   "  --device NAME  only jobs on device NAME, or that asked for it\n"
   "  --limit N      at most N jobs\n"
   "\n"
   "The owner is the user who submitted the job, as MUNGE vouched for them.  With\n"
   "traind's private_data setting you see only your own jobs.\n"},
  {"show", NULL, "ID", 1, 1, 0, cli_cmd_show, "show one job in detail",
   "Show everything traind knows about job ID: its owner, state, progress,\n"
   "times, memory in use and planned, model file and error, if any.\n"},
  {"logs", NULL, "ID [-f|--follow] [--tail BYTES]", 1, 1,
   CMD_OPT(OPT_FOLLOW) | CMD_OPT(OPT_TAIL), cli_cmd_logs, "print a job's log",
   "Print the log of job ID: what its worker and loader wrote.  Bytes are\n"
   "written as they are, except on a terminal, where control characters other\n"
   "than newline and tab are shown as '?'.  A queued job has no log yet.\n"
   "\n"
   "  -f, --follow   keep printing what the job writes until it ends;\n"
   "                 Ctrl-C stops following (exit status 130)\n"
   "  --tail BYTES   start this many bytes before the end (default 64KiB;\n"
   "                 sizes like 4096, 512KiB or 2MiB; 0 prints only new output)\n"
   "\n"
   "With --json, one object per piece read: data, offset, size and done.\n"},
  {"cancel", NULL, "ID", 1, 1, 0, cli_cmd_cancel, "cancel a job",
   "Cancel job ID.  A queued job leaves the queue; a running one is stopped.\n"},
  {"set-priority", NULL, "ID PRIORITY", 2, 2, 0, cli_cmd_set_priority,
   "change a job's place in the queue",
   "Set the priority of job ID, queued or running, to PRIORITY, an integer from\n"
   "-1000 to 1000 (default 0).  Queued jobs start in priority order, higher\n"
   "first, then in submission order.\n"},
  {"top", NULL, "[--once]", 0, 0, CMD_OPT(OPT_ONCE), cli_cmd_top,
   "a live view of devices and jobs",
   "Show the devices and the running and queued jobs (up to 50 of each),\n"
   "refreshed every second until Ctrl-C (exit status 0).  Running jobs: progress,\n"
   "loss, test accuracy, micro-batch (MICRO: 48x3 is a micro-batch of 48\n"
   "accumulated 3 times, after a re-plan or to fit; - is the whole batch), memory\n"
   "in use of the planned memory and speed.  Queued jobs: why each waits\n"
   "(REASON).  The view fits the terminal's width ($COLUMNS, else 80, when the\n"
   "output is not a terminal): the least needed columns go first, then long\n"
   "lines are cut with \"...\".\n"
   "\n"
   "  --once         print the view once and exit; also what happens when the\n"
   "                 output is not a terminal\n"
   "\n"
   "With --json, one object per refresh: devices, running (as `show` gives\n"
   "them) and queued (as `ls` gives them).\n"},
  {"watch", NULL, "[--topic PREFIX ...] [--count N] [--json]", 0, 0,
   CMD_OPT(OPT_TOPIC) | CMD_OPT(OPT_COUNT), cli_cmd_watch, "print traind's events as they happen",
   "Print each event of traind's status socket as it comes, one line each:\n"
   "the time, the topic, the job and the fields that matter, e.g.\n"
   "\n"
   "  14:02:11.532 job.state    job 7: state=running device=cpu0\n"
   "  14:02:12.018 job.replan   job 7: device=cpu0 micro-batch=16x4 reserves=\"9.50 MiB\"\n"
   "\n"
   "until Ctrl-C (exit status 130).  Topics: job.state, job.progress, job.eval,\n"
   "job.replan, job.oom, device.  Every subscriber sees every job's events (the\n"
   "status socket has no credentials); an event missed while the output was\n"
   "slow is not sent again.\n"
   "\n"
   "  --topic PREFIX  only topics that start with PREFIX (job.state, job.);\n"
   "                  may be given up to 16 times.  Default: all\n"
   "  --count N       exit after N events\n"
   "\n"
   "With --json, one object per event: its fields and \"topic\".\n"},
  {"info", NULL, "", 0, 0, 0, cli_cmd_info, "show the daemon's version, uptime and sockets",
   "Show traind's version and protocol, its uptime, its sockets and its jobs.\n"},
  {"devices", NULL, "", 0, 0, 0, cli_cmd_devices, "show each device's memory budget",
   "Show each device with its memory budget, the memory reserved by running\n"
   "jobs, what is free, its jobs, and whether it is draining (admits no new\n"
   "job) or active.\n"},
  {"device", NULL, "NAME [--budget SIZE] [--drain|--resume]", 1, 1,
   CMD_OPT(OPT_BUDGET) | CMD_OPT(OPT_DRAIN) | CMD_OPT(OPT_RESUME), cli_cmd_device,
   "show or change one device",
   "Show device NAME as `devices` does, after changing it as asked.\n"
   "\n"
   "  --budget SIZE  the memory jobs may reserve on it, e.g. 2GiB, 512MiB or\n"
   "                 1.5G (at least 1MiB).  Below what running jobs reserve,\n"
   "                 it holds back new jobs; the running ones keep their memory\n"
   "  --drain        admit no new job to it; running jobs go on\n"
   "  --resume       admit jobs to it again\n"},
  {"plan", NULL, "FILE [--device D]", 1, 1, CMD_OPT(OPT_DEVICE), cli_cmd_plan,
   "show a job file's memory plan without submitting it",
   "Show where FILE's memory goes: per part, per layer, its largest tensors,\n"
   "the micro-batch and accumulation traind would choose on each device, and\n"
   "what each remedy would save.  Nothing is submitted.\n"
   "\n"
   "  --device D  only device D\n"},
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

    if (n >= 40) { /* a long usage gets its own line */
      fputc('\n', f);
      n = 0;
    }
    fprintf(f, "%*s%s\n", 40 - n, "", commands[i].summary);
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
          "\nEvery request carries a MUNGE credential for your uid when munged runs here\n"
          "($TRAIND_MUNGE_SOCKET names another munged socket); a traind that serves\n"
          "several users refuses requests without one.\n"
          "\nExit status:\n"
          "  0    success\n"
          "  1    the job failed or was cancelled (submit --wait, wait), or a local\n"
          "       error\n"
          "  2    usage error: a bad option or argument, an unreadable job file\n"
          "  3    traind refused the request (the message says why)\n"
          "  4    cannot reach traind: not running, no access, or no answer in time\n"
          "  130  interrupted by Ctrl-C (submit --wait, wait, logs --follow, watch)\n",
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

/* A name option within its protocol field's length. */
static int check_name(parsed *p, const char *opt, const char *field, const char *val) {
  size_t max;

  if (cli_check_str("list", field, val, &max) == 0)
    return 0;
  return usage_error(p->cmd, "%s needs a %s name of 1 to %zu bytes", opt,
                     strcmp(field, "owner") == 0 ? "user" : "device", max);
}

static int apply_opt(parsed *p, const struct opt_def *o, const char *val) {
  double min = 0, max = 0;
  int rc;

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
    if (cli_parse_seconds(val, &p->c.timeout_s) != 0)
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
    min = 1, max = 1e12; /* ls pages through any number */
    if (cli_parse_uint(val, min, max, &p->a.limit) != 0)
      return usage_error(p->cmd, "invalid --limit '%s' (a number of jobs from %.0f to %.0f)",
                         val, min, max);
    p->a.has_limit = 1;
    break;
  case OPT_OWNER:
    if (p->a.mine)
      return usage_error(p->cmd, "--owner and --mine cannot go together");
    p->a.owner = val;
    return check_name(p, "--owner", "owner", val);
  case OPT_MINE:
    if (p->a.owner != NULL)
      return usage_error(p->cmd, "--owner and --mine cannot go together");
    p->a.mine = 1;
    break;
  case OPT_DEVICE:
    p->a.device = val;
    return check_name(p, "--device", "device", val);
  case OPT_FOLLOW:
    p->a.follow = 1;
    break;
  case OPT_TAIL:
    rc = cli_parse_size(val, 0, (double)UINT64_MAX, &p->a.tail);
    if (rc != 0)
      return usage_error(p->cmd, "invalid --tail '%s' (%s)", val,
                         rc == TD_ETOOBIG ? "too large" : "bytes, e.g. 4096, 512KiB or 2MiB");
    break;
  case OPT_BUDGET:
    cli_field_bounds("device", "budget", &min, &max);
    rc = cli_parse_size(val, 0, max, &p->a.budget);
    if (rc == TD_ETOOBIG)
      return usage_error(p->cmd, "--budget '%s' is too large", val);
    if (rc != 0)
      return usage_error(p->cmd, "invalid --budget '%s' (a size such as 2GiB, 512MiB or 1.5G)",
                         val);
    if ((double)p->a.budget < min)
      return usage_error(p->cmd, "--budget '%s' is too small: a budget is at least 1MiB "
                         "(%.0f bytes)", val, min);
    break;
  case OPT_DRAIN:
  case OPT_RESUME:
    if (p->a.drain == (o->id == OPT_RESUME))
      return usage_error(p->cmd, "--drain and --resume cannot go together");
    p->a.drain = o->id == OPT_DRAIN;
    break;
  case OPT_ONCE:
    p->a.once = 1;
    break;
  case OPT_TOPIC:
    if (val[0] == '\0' || strlen(val) > TD_PROTO_MAX_TOPIC)
      return usage_error(p->cmd, "--topic needs a topic prefix of 1 to %d bytes, e.g. job.state",
                         TD_PROTO_MAX_TOPIC);
    if (p->a.ntopics == CLI_WATCH_TOPICS)
      return usage_error(p->cmd, "at most %d --topic options", CLI_WATCH_TOPICS);
    p->a.topics[p->a.ntopics++] = val;
    break;
  case OPT_CONTINUE:
    if (cli_parse_uint(val, 1, (double)UINT64_MAX, &p->a.cont) != 0)
      return usage_error(p->cmd, "invalid --continue '%s' (a job id such as 7, see "
                         "`traind-client ls`)", val);
    break;
  case OPT_EPOCHS:
    cli_field_bounds("continue", "epochs", &min, &max);
    if (cli_parse_uint(val, min, max, &p->a.epochs) != 0)
      return usage_error(p->cmd, "invalid --epochs '%s' (a number of epochs from %.0f to %.0f)",
                         val, min, max);
    break;
  case OPT_COUNT:
    if (cli_parse_uint(val, 1, 1e12, &p->a.count) != 0)
      return usage_error(p->cmd, "invalid --count '%s' (a number of events, 1 or more)", val);
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

    /* "-5" is a value (set-priority 7 -5), never an option */
    if (only_pos || arg[0] != '-' || arg[1] == '\0' || (arg[1] >= '0' && arg[1] <= '9')) {
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

/* The n-th word of a usage line (n from 0): what is missing after n
 * arguments. */
static const char *usage_word(const char *usage, int n, int *len) {
  while (n-- > 0 && usage[strcspn(usage, " ")] == ' ')
    usage += strcspn(usage, " ") + 1;
  *len = (int)strcspn(usage, " ");
  return usage;
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
  parsed p = {.c = {.timeout_s = 30.0, .req = -1},
              .a = {.tail = CLI_LOGS_TAIL_DEFAULT, .drain = -1}};
  const char *missing;
  char *addr = NULL;
  int rc, n;

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
  /* submit takes a job file or --continue ID --epochs N */
  if (p.cmd->run == cli_cmd_submit && (p.a.cont != 0) == (p.a.npos > 0))
    return usage_error(p.cmd, p.a.cont ? "--continue ID takes no job file: the job's own is "
                       "used" : "missing FILE");
  if (p.cmd->run == cli_cmd_submit && (p.a.cont != 0) != (p.a.epochs != 0))
    return usage_error(p.cmd, p.a.cont ? "--continue ID needs --epochs N, the epochs to add"
                       : "--epochs goes with --continue ID");
  if (p.a.npos < p.cmd->min_pos) {
    missing = usage_word(p.cmd->usage, p.a.npos, &n);
    return usage_error(p.cmd, "missing %.*s", n, missing);
  }
  rc = resolve_socket(&p, &addr);
  if (rc != 0)
    return rc;
  /* For a private munged (tests, a second munged); otherwise libmunge's. */
  p.c.munge_socket = getenv("TRAIND_MUNGE_SOCKET");
  if (p.c.munge_socket != NULL && p.c.munge_socket[0] == '\0')
    p.c.munge_socket = NULL;

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
