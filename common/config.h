/* The daemon's configuration (/etc/traind/traind.yaml).
 *
 * One table in config.c names every key with its type, bounds and default;
 * a file overrides the keys it holds and keeps the defaults for the rest.
 * Errors read "line N: key 'devices[1].budget': what is wrong".
 */
#ifndef TD_CONFIG_H
#define TD_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#define TD_MAX_DEVICES 16
#define TD_CONFIG_FILE_MAX (1u << 20)

typedef struct td_device_conf {
  char name[32];   /* cpu0..cpu99, cuda0..cuda99 */
  uint64_t budget; /* bytes of device memory traind may hand to jobs */
} td_device_conf;

typedef struct td_config {
  char socket[256];        /* nanomsg address of the job socket, e.g. ipc:///run/traind/traind.sock */
  char status_socket[256]; /* PUB socket address */
  char metrics_listen[64]; /* Prometheus' HTTP endpoint, HOST:PORT (an IP literal);
                              "" = off.  Default 127.0.0.1:9464 as root, else off */
  char state_dir[1024];
  char libexec_dir[1024];  /* where traind-worker and traind-loader live; "" = next to the traind binary */
  int log_level;           /* TD_LOG_* from log.h; YAML: error|warning|info|debug */
  td_device_conf devices[TD_MAX_DEVICES];
  int ndevices;
  uint32_t ring_slots;      /* batches the loader may run ahead, 2..64, default 4 */
  uint32_t max_jobs;        /* queued+running job limit, default 10000 */
  uint32_t cancel_grace_ms; /* SIGTERM -> SIGKILL grace, default 5000 */
  uint32_t heartbeat_timeout_ms; /* a worker silent this long is killed, default 60000 */

  /* Several people: every request carries a MUNGE credential, and each job
   * runs as the user who submitted it.  TD_MULTI_USER_AUTO: when traind
   * runs as root. */
  int multi_user;
  char munge_socket[256];   /* munged's socket; "" = libmunge's default */
  char admin_group[64];     /* its members may act on every job and change devices;
                               "" = root only */
  int private_data;         /* others' job names, paths and errors are hidden */
  uint32_t socket_mode;     /* permission bits of both sockets, whatever the umask */
  char socket_mode_text[8]; /* as the file wrote it ("0660"); socket_mode is its value */
  char socket_group[64];    /* their group; "" = traind's own */
  uint32_t max_jobs_per_user;    /* queued + running jobs of one user, default 1000 */
  uint32_t max_running_per_user; /* running jobs of one user; 0 = no limit */
  uint32_t retention_days;  /* ended jobs older than this are removed; 0 = never */
  uint32_t retention_jobs;  /* at most this many ended jobs are kept; 0 = no limit */
  uint32_t fairshare_halflife_s; /* half-life of a user's recorded usage, default 7 days */
} td_config;

#define TD_MULTI_USER_AUTO (-1)

/* Whether c asks for several users, TD_MULTI_USER_AUTO resolved. */
int td_config_multi_user(const td_config *c);

/* The embedded default: one device cpu0 with a 2 GiB budget.  The runtime
 * dir is $XDG_RUNTIME_DIR/traind when that is set and we are not root,
 * else /run/traind; socket = ipc://<runtime>/traind.sock, status_socket =
 * ipc://<runtime>/status.sock; state_dir = /var/lib/traind as root, else
 * $XDG_STATE_HOME/traind or $HOME/.local/state/traind. */
void td_config_defaults(td_config *c);

/* Start from the defaults and override the keys text holds; a `devices`
 * list replaces the default one.  An empty text gives the defaults.
 * TD_ECONFIG (message in err), TD_ETOOBIG, TD_ENOMEM.  out is written only
 * on success. */
int td_config_parse(const char *text, size_t len, td_config *out, char *err, size_t errlen);

/* Read and parse a file.  TD_ENOENT when it does not exist (the caller may
 * then use td_config_defaults), TD_EIO, or td_config_parse's codes. */
int td_config_load(const char *path, td_config *out, char *err, size_t errlen);

/* The effective config as YAML that td_config_parse accepts back. */
void td_config_print(const td_config *c, FILE *f);

/* metrics_listen's "HOST:PORT", HOST an IPv4 address or an IPv6 one in
 * brackets ([::1]:9464), PORT 1..65535: the socket address to bind.
 * TD_EINVAL (with a message in err) for anything else; nothing is looked
 * up (no DNS at start).  out and len are written only on success. */
struct sockaddr_storage;
int td_config_listen_addr(const char *s, struct sockaddr_storage *out, unsigned *len, char *err,
                          size_t errlen);

/* 1 when name is a device name: (cpu|cuda) and one or two digits. */
int td_device_name_valid(const char *name);

/* "info" for TD_LOG_INFO; NULL for a level with no name. */
const char *td_config_log_level_name(int level);

#endif
