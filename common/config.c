#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "util.h"
#include "yamlread.h"

#define IPC_PATH_MAX 107 /* sun_path holds 108 bytes with the NUL */

static const char *const multi_user_names[] = {"auto", "false", "true", NULL};
static const int multi_user_values[] = {TD_MULTI_USER_AUTO, 0, 1};
static const char *const bool_names[] = {"false", "true", NULL};
static const char *const log_names[] = {"error", "warning", "info", "debug", NULL};
static const int log_values[] = {TD_LOG_ERROR, TD_LOG_WARN, TD_LOG_INFO, TD_LOG_DEBUG};

int td_device_name_valid(const char *name) {
  static const char *const kinds[] = {"cpu", "cuda"};

  for (size_t i = 0; i < TD_ARRAY_SIZE(kinds); i++) {
    size_t k = strlen(kinds[i]), d = 0;

    if (strncmp(name, kinds[i], k) != 0)
      continue;
    while (name[k + d] >= '0' && name[k + d] <= '9')
      d++;
    return (d == 1 || d == 2) && name[k + d] == '\0';
  }
  return 0;
}

const char *td_config_log_level_name(int level) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(log_values); i++)
    if (log_values[i] == level)
      return log_names[i];
  return NULL;
}

static int check_socket(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                        size_t cap) {
  const char *s = p;
  char ex[64];

  if (strncmp(s, "tcp://", 6) == 0)
    return 0; /* allowed with multi_user only: td_config_parse checks */
  if (strncmp(s, "ipc://", 6) != 0) {
    td_yaml_excerpt(ex, sizeof(ex), s);
    snprintf(msg, cap, "must be an ipc:// address such as ipc:///run/traind/traind.sock, got '%s'",
             ex);
    return 1;
  }
  if (s[6] != '/') {
    snprintf(msg, cap, "the ipc path must be absolute, as in ipc:///run/traind/traind.sock");
    return 1;
  }
  if (strlen(s + 6) > IPC_PATH_MAX) {
    snprintf(msg, cap, "the ipc path is %zu bytes long; a unix socket path holds at most %d",
             strlen(s + 6), IPC_PATH_MAX);
    return 1;
  }
  return 0;
}

int td_config_listen_addr(const char *s, struct sockaddr_storage *out, unsigned *len, char *err,
                          size_t errlen) {
  struct sockaddr_storage ss;
  char host[64], ex[64];
  const char *colon, *port, *text = s;
  int v6 = s[0] == '[';
  unsigned long v;
  char *end;
  size_t hl;

  memset(&ss, 0, sizeof(ss));
  if (v6) {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':')
      goto bad;
    hl = (size_t)(close - s - 1);
    port = close + 2;
    s++;
  } else {
    if ((colon = strrchr(s, ':')) == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
      goto bad;
    hl = (size_t)(colon - s);
    port = colon + 1;
  }
  if (hl == 0 || hl >= sizeof(host) || *port < '0' || *port > '9')
    goto bad;
  memcpy(host, s, hl);
  host[hl] = '\0';
  v = strtoul(port, &end, 10);
  if (*end != '\0' || v < 1 || v > 65535)
    goto bad;
  if (v6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
      goto bad;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)v);
    *len = sizeof(*a);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
      goto bad;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)v);
    *len = sizeof(*a);
  }
  *out = ss;
  return 0;
bad:
  td_yaml_excerpt(ex, sizeof(ex), text);
  snprintf(err, errlen, "must be an IP address and a port, such as 127.0.0.1:9464 or "
           "[::1]:9464 (\"\" turns metrics off), got '%s'", ex);
  return TD_EINVAL;
}

static int check_listen(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                        size_t cap) {
  struct sockaddr_storage ss;
  unsigned len;

  return *(const char *)p != '\0' && td_config_listen_addr(p, &ss, &len, msg, cap) < 0;
}

static int check_abs_dir(const td_yfield *f, void *p, const td_ynode *n, void *user, char *msg,
                         size_t cap) {
  const char *s = p;

  if (s[0] != '\0' && s[0] != '/') {
    snprintf(msg, cap, "must be an absolute path");
    return 1;
  }
  return 0;
}

static int check_device_name(const td_yfield *f, void *p, const td_ynode *n, void *user,
                             char *msg, size_t cap) {
  char ex[64];

  if (td_device_name_valid(p))
    return 0;
  td_yaml_excerpt(ex, sizeof(ex), p);
  snprintf(msg, cap, "must be cpu or cuda followed by one or two digits (cpu0, cuda1), got '%s'",
           ex);
  return 1;
}

/* Runs as each device is bound, so the earlier ones are already there. */
static int check_device_unique(const td_yfield *f, void *p, const td_ynode *n, void *user,
                               char *msg, size_t cap) {
  const td_config *c = user;
  const td_device_conf *d = p;

  for (const td_device_conf *e = c->devices; e < d; e++) {
    if (strcmp(e->name, d->name) == 0) {
      snprintf(msg, cap, "device '%s' is listed twice", d->name);
      return 1;
    }
  }
  return 0;
}

/* "0660": octal permission bits, at most rwx for owner, group and others. */
static int check_socket_mode(const td_yfield *f, void *p, const td_ynode *n, void *user,
                             char *msg, size_t cap) {
  td_config *c = user;
  const char *s = p;
  char *end, ex[64];
  long v = strtol(s, &end, 8);

  if (*s == '\0' || *end != '\0' || v < 0 || v > 0777 || (v & 0600) != 0600) {
    td_yaml_excerpt(ex, sizeof(ex), s);
    snprintf(msg, cap, "must be octal permission bits that let traind's user read and write, "
             "such as \"0660\" (owner and group) or \"0600\" (traind's user alone), got '%s'", ex);
    return 1;
  }
  c->socket_mode = (uint32_t)v;
  return 0;
}

static const td_yfield device_fields[] = {
    TD_YF_STR("name", td_device_conf, name, TD_YF_REQUIRED, check_device_name),
    TD_YF_SIZE("budget", td_device_conf, budget, 1 << 20, TD_YF_REQUIRED),
    {0},
};

static const td_yfield device_item = {
    .type = TD_YT_MAP, .sub = device_fields, .size = sizeof(td_device_conf),
    .check = check_device_unique,
};

static const td_yfield config_fields[] = {
    TD_YF_STR("socket", td_config, socket, TD_YF_NONEMPTY, check_socket),
    TD_YF_STR("status_socket", td_config, status_socket, TD_YF_NONEMPTY, check_socket),
    TD_YF_STR("metrics_listen", td_config, metrics_listen, 0, check_listen),
    TD_YF_STR("state_dir", td_config, state_dir, TD_YF_NONEMPTY, check_abs_dir),
    TD_YF_STR("libexec_dir", td_config, libexec_dir, 0, check_abs_dir),
    TD_YF_ENUM("log_level", td_config, log_level, log_names, log_values, 0),
    TD_YF_INT("ring_slots", td_config, ring_slots, 2, 64, 0),
    TD_YF_INT("max_jobs", td_config, max_jobs, 1, 1000000, 0),
    TD_YF_INT("cancel_grace_ms", td_config, cancel_grace_ms, 0, 600000, 0),
    TD_YF_INT("heartbeat_timeout_ms", td_config, heartbeat_timeout_ms, 500, 3600000, 0),
    TD_YF_SEQ("devices", td_config, devices, ndevices, 1, TD_MAX_DEVICES, &device_item, 0, NULL),
    TD_YF_ENUM("multi_user", td_config, multi_user, multi_user_names, multi_user_values, 0),
    TD_YF_STR("munge_socket", td_config, munge_socket, 0, check_abs_dir),
    TD_YF_STR("admin_group", td_config, admin_group, 0, NULL),
    TD_YF_ENUM("private_data", td_config, private_data, bool_names, NULL, 0),
    TD_YF_STR("socket_mode", td_config, socket_mode_text, 0, check_socket_mode),
    TD_YF_STR("socket_group", td_config, socket_group, 0, NULL),
    TD_YF_INT("max_jobs_per_user", td_config, max_jobs_per_user, 1, 1000000, 0),
    TD_YF_INT("max_running_per_user", td_config, max_running_per_user, 0, 1000000, 0),
    TD_YF_INT("retention_days", td_config, retention_days, 0, 36500, 0),
    TD_YF_INT("retention_jobs", td_config, retention_jobs, 0, 10000000, 0),
    TD_YF_INT("fairshare_halflife_s", td_config, fairshare_halflife_s, 60, 31536000, 0),
    {0},
};

/* An absolute directory from the environment, or NULL. */
static const char *env_dir(const char *name) {
  const char *v = getenv(name);

  return v != NULL && v[0] == '/' ? v : NULL;
}

static void default_runtime(td_config *c) {
  const char *xdg = geteuid() != 0 ? env_dir("XDG_RUNTIME_DIR") : NULL;
  char dir[256];

  if (xdg == NULL || (size_t)snprintf(dir, sizeof(dir), "%s/traind", xdg) >= sizeof(dir) ||
      strlen(dir) + strlen("/traind.sock") > IPC_PATH_MAX)
    strcpy(dir, "/run/traind");
  snprintf(c->socket, sizeof(c->socket), "ipc://%s/traind.sock", dir);
  snprintf(c->status_socket, sizeof(c->status_socket), "ipc://%s/status.sock", dir);
}

static void default_state_dir(td_config *c) {
  const char *base, *home;
  struct passwd *pw;
  size_t cap = sizeof(c->state_dir);

  if (geteuid() == 0)
    goto system_dir;
  if ((base = env_dir("XDG_STATE_HOME")) != NULL &&
      (size_t)snprintf(c->state_dir, cap, "%s/traind", base) < cap)
    return;
  home = env_dir("HOME");
  if (home == NULL && (pw = getpwuid(geteuid())) != NULL && pw->pw_dir[0] == '/')
    home = pw->pw_dir;
  if (home != NULL && (size_t)snprintf(c->state_dir, cap, "%s/.local/state/traind", home) < cap)
    return;
system_dir:
  strcpy(c->state_dir, "/var/lib/traind");
}

void td_config_defaults(td_config *c) {
  memset(c, 0, sizeof(*c));
  default_runtime(c);
  default_state_dir(c);
  c->log_level = TD_LOG_INFO;
  strcpy(c->devices[0].name, "cpu0");
  c->devices[0].budget = (uint64_t)2 << 30;
  c->ndevices = 1;
  c->ring_slots = 4;
  c->max_jobs = 10000;
  c->cancel_grace_ms = 5000;
  c->heartbeat_timeout_ms = 60000;
  c->multi_user = TD_MULTI_USER_AUTO;
  c->socket_mode = geteuid() == 0 ? 0660 : 0600;
  /* As root (a service) on loopback; a traind of one person serves no
   * TCP port that every local user could read its job names from. */
  if (geteuid() == 0)
    strcpy(c->metrics_listen, "127.0.0.1:9464");
  c->max_jobs_per_user = 1000;
  c->retention_days = 30;
  c->retention_jobs = 20000;
  c->fairshare_halflife_s = 7 * 24 * 3600;
}

int td_config_multi_user(const td_config *c) {
  return c->multi_user == TD_MULTI_USER_AUTO ? geteuid() == 0 : c->multi_user;
}

int td_config_parse(const char *text, size_t len, td_config *out, char *err, size_t errlen) {
  td_ynode *root = NULL;
  td_config c;
  int rc;

  if (err != NULL && errlen > 0)
    err[0] = '\0';
  rc = td_yaml_parse(text, len, TD_CONFIG_FILE_MAX, &root, err, errlen);
  if (rc < 0)
    return rc == TD_EINVAL ? TD_ECONFIG : rc;
  td_config_defaults(&c);
  rc = td_yaml_bind(root, config_fields, &c, &c, "config file", err, errlen);
  if (rc < 0) {
    rc = TD_ECONFIG;
    goto free_root;
  }
  if (strcmp(c.socket, c.status_socket) == 0) {
    const td_ynode *n = td_yaml_get(root, "status_socket");
    if (n == NULL)
      n = td_yaml_get(root, "socket");
    td_yaml_errf(err, errlen, n ? n->key_line : 0,
                 "key 'status_socket': must differ from 'socket' (%s)", c.socket);
    rc = TD_ECONFIG;
    goto free_root;
  }
  if (!td_config_multi_user(&c) &&
      (strncmp(c.socket, "tcp://", 6) == 0 || strncmp(c.status_socket, "tcp://", 6) == 0)) {
    const td_ynode *n = td_yaml_get(root, strncmp(c.socket, "tcp://", 6) == 0 ? "socket"
                                                                        : "status_socket");
    td_yaml_errf(err, errlen, n ? n->key_line : 0,
                 "a tcp:// socket needs multi_user: true (every request then carries a MUNGE "
                 "credential); a traind for one person listens on ipc:// only");
    rc = TD_ECONFIG;
    goto free_root;
  }
  *out = c;
free_root:
  td_yaml_free(root);
  return rc;
}

int td_config_load(const char *path, td_config *out, char *err, size_t errlen) {
  char *text;
  size_t len;
  int rc;

  rc = td_yaml_read_file(path, "config file", TD_CONFIG_FILE_MAX, &text, &len, err, errlen);
  if (rc < 0)
    return rc;
  rc = td_config_parse(text, len, out, err, errlen);
  free(text);
  return rc;
}

/* A double-quoted YAML scalar: any string reads back unchanged. */
static void print_quoted(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\')
      fprintf(f, "\\%c", ch);
    else if (ch < 0x20 || ch == 0x7f)
      fprintf(f, "\\x%02x", ch);
    else
      fputc(ch, f);
  }
  fputc('"', f);
}

/* Budgets print in the largest binary unit that divides them exactly. */
static void print_size(FILE *f, uint64_t v) {
  static const struct { const char *suffix; unsigned shift; } units[] = {
      {"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10},
  };

  for (size_t i = 0; i < TD_ARRAY_SIZE(units); i++) {
    if (v != 0 && (v & (((uint64_t)1 << units[i].shift) - 1)) == 0) {
      fprintf(f, "%llu%s", (unsigned long long)(v >> units[i].shift), units[i].suffix);
      return;
    }
  }
  fprintf(f, "%llu", (unsigned long long)v);
}

void td_config_print(const td_config *c, FILE *f) {
  const char *level = td_config_log_level_name(c->log_level);

  fputs("socket: ", f);
  print_quoted(f, c->socket);
  fputs("\nstatus_socket: ", f);
  print_quoted(f, c->status_socket);
  fputs("\nmetrics_listen: ", f);
  print_quoted(f, c->metrics_listen);
  fputs("\nstate_dir: ", f);
  print_quoted(f, c->state_dir);
  fputs("\nlibexec_dir: ", f);
  print_quoted(f, c->libexec_dir);
  fprintf(f, "\nlog_level: %s\n", level != NULL ? level : c->log_level > TD_LOG_INFO ? "debug" : "error");
  fprintf(f, "ring_slots: %u\nmax_jobs: %u\ncancel_grace_ms: %u\nheartbeat_timeout_ms: %u\n"
             "devices:\n", c->ring_slots, c->max_jobs, c->cancel_grace_ms,
          c->heartbeat_timeout_ms);
  for (int i = 0; i < c->ndevices && i < TD_MAX_DEVICES; i++) {
    fputs("  - {name: ", f);
    print_quoted(f, c->devices[i].name);
    fputs(", budget: ", f);
    print_size(f, c->devices[i].budget);
    fputs("}\n", f);
  }
  fprintf(f, "multi_user: %s\nmunge_socket: ", c->multi_user == TD_MULTI_USER_AUTO ? "auto"
                                               : c->multi_user ? "true" : "false");
  print_quoted(f, c->munge_socket);
  fputs("\nadmin_group: ", f);
  print_quoted(f, c->admin_group);
  fprintf(f, "\nprivate_data: %s\nsocket_mode: \"%04o\"\nsocket_group: ",
          c->private_data ? "true" : "false", c->socket_mode);
  print_quoted(f, c->socket_group);
  fprintf(f, "\nmax_jobs_per_user: %u\nmax_running_per_user: %u\nretention_days: %u\n"
             "retention_jobs: %u\nfairshare_halflife_s: %u\n", c->max_jobs_per_user,
          c->max_running_per_user, c->retention_days, c->retention_jobs,
          c->fairshare_halflife_s);
}
