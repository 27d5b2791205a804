/* traind: the control plane.  One libuv loop owns the sockets, the job
 * table and the child processes; no training code and no GPU context live
 * here, so a crashing job cannot take the daemon down. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <nanomsg/nn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "auth.h"
#include "dataset.h"
#include "db.h"
#include "error.h"
#include "fairshare.h"
#include "jobdesc.h"
#include "ledger.h"
#include "log.h"
#include "metrics.h"
#include "probe.h"
#include "retain.h"
#include "server.h"
#include "shmcache.h"
#include "spawn.h"
#include "supervise.h"
#include "td_config.h"
#include "td_sched.h"
#include "traind.h"
#include "util.h"

static const char *td__state_names[TD_JOB__NSTATES] = {
    [TD_JOB_QUEUED] = "queued",       [TD_JOB_RUNNING] = "running",
    [TD_JOB_SUCCEEDED] = "succeeded", [TD_JOB_FAILED] = "failed",
    [TD_JOB_CANCELLED] = "cancelled",
};

const char *td_job_state_name(td_job_state s) {
  return (unsigned)s < TD_JOB__NSTATES ? td__state_names[s] : "unknown";
}

int td_job_state_parse(const char *s, td_job_state *out) {
  for (int i = 0; i < TD_JOB__NSTATES; i++) {
    if (strcmp(s, td__state_names[i]) == 0) {
      *out = (td_job_state)i;
      return 0;
    }
  }
  return TD_EINVAL;
}

static int td__terminal(td_job_state s) {
  return s == TD_JOB_SUCCEEDED || s == TD_JOB_FAILED || s == TD_JOB_CANCELLED;
}

void td_job_set(char **field, const char *s) {
  char *copy = s != NULL && s[0] != '\0' ? strdup(s) : NULL;

  /* Out of memory loses a message, never the job. */
  free(*field);
  *field = copy;
}

void td_job_free(td_job *j) {
  if (j == NULL)
    return;
  free(j->model);
  free(j->error);
  free(j->warning);
  free(j->yaml);
  free(j->desc);
  free(j->base_dir);
  free(j->spec);
  td_losscurve_clear(&j->loss_curve);
  free(j);
}

int td_job_learn_dtype(td_jobspec *spec, char *err, size_t errlen) {
  td_dataset_info info;
  int rc = td_dataset_probe(spec, &info, err, errlen);

  if (rc == 0)
    spec->sample_dtype = info.dtype;
  return rc;
}

size_t td_daemon_first_after(const td_daemon *d, uint64_t id) {
  size_t lo = 0, hi = d->njobs;

  /* Ids are assigned in increasing order, so the table is sorted. */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (d->jobs[mid]->id <= id)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

td_job *td_daemon_find(td_daemon *d, uint64_t id) {
  size_t i = id > 0 ? td_daemon_first_after(d, id - 1) : d->njobs;

  return i < d->njobs && d->jobs[i]->id == id ? d->jobs[i] : NULL;
}

void td_job_transition(td_daemon *d, td_job *j, td_job_state s, const char *detail) {
  int rc;

  td_metrics_job_state(j, s);
  if (td__terminal(s) && !td__terminal(j->state)) {
    td_user *u = td_user_get(d, j->uid, j->owner);

    d->nactive--;
    if (u != NULL && u->active > 0)
      u->active--;
  }
  j->state = s;
  if (s != TD_JOB_QUEUED)
    j->wait_reason[0] = '\0';
  rc = td_db_update(d->db, j, detail);
  if (rc < 0)
    td_error("job %llu: cannot record state %s: %s", (unsigned long long)j->id,
             td_job_state_name(s), td_strerror(rc));
  td_info("job %llu %s: %s", (unsigned long long)j->id, td_job_state_name(s),
          detail ? detail : "");
  td_publish_state(d, j);
  if (td__terminal(s)) {
    /* An ended job keeps its record, not its spec. */
    free(j->yaml);
    free(j->spec);
    j->yaml = NULL;
    j->spec = NULL;
  }
}

/* A job written by a traind from before descriptions: its YAML is parsed
 * this once and its dataset's type filled in, as submit does now; its
 * description is left in j->desc, to be recorded with the others' in one
 * transaction once all are loaded (td_db_job_desc_record). */
static int td__restore_yaml(td_daemon *d, td_job *j, char *err, size_t errlen) {
  int rc;

  rc = td_jobspec_parse(j->yaml, strlen(j->yaml), j->base_dir, j->spec, err, errlen);
  free(j->yaml); /* the database keeps it */
  j->yaml = NULL;
  if (rc == 0 && j->sample_dtype >= 0) {
    j->spec->sample_dtype = (td_dtype)j->sample_dtype;
  } else if (rc == 0 && td_auth_multi_user(d->auth)) {
    /* From before identities: traind cannot tell whose rights it has. */
    snprintf(err, errlen, "this job was submitted before traind knew who submits jobs; "
             "submit it again");
    rc = TD_EAUTH;
  } else if (rc == 0) {
    rc = td_job_learn_dtype(j->spec, err, errlen); /* its one user's own files */
  }
  if (rc < 0)
    return rc;
  if ((rc = td_jobdesc_encode_alloc(j->spec, &j->desc, &j->desc_len)) < 0)
    snprintf(err, errlen, "cannot make the job's description: %s", td_strerror(rc));
  return rc;
}

/* Bring back a job from the database: one that was queued or running when
 * traind stopped runs again, from its checkpoint if it has one. */
static int td__restore(void *arg, td_job *j) {
  td_daemon *d = arg;
  char err[512];
  int rc;

  if (d->njobs == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 64;
    td_job **jobs = realloc(d->jobs, cap * sizeof(*jobs));
    if (jobs == NULL) {
      td_job_free(j);
      return TD_ENOMEM;
    }
    d->jobs = jobs;
    d->cap = cap;
  }
  d->jobs[d->njobs++] = j;
  if (td__terminal(j->state))
    return 0;
  d->nactive++;
  {
    td_user *u = td_user_get(d, j->uid, j->owner);
    if (u == NULL)
      return TD_ENOMEM;
    u->active++;
  }
  j->spec = malloc(sizeof(*j->spec));
  if (j->spec == NULL)
    return TD_ENOMEM;
  if (j->desc != NULL) {
    rc = td_jobdesc_decode(j->desc, j->desc_len, j->spec, err, sizeof(err));
    free(j->desc); /* the database keeps it */
    j->desc = NULL;
  } else {
    rc = td__restore_yaml(d, j, err, sizeof(err));
  }
  if (rc == 0)
    rc = td_plan_compute(j->spec, j->spec->batch_size, j->spec->precision, 0, &j->plan);
  if (rc == 0)
    rc = td_sched_check_fit(d, j, err, sizeof(err));
  if (rc < 0) {
    /* The config may have changed under it (a smaller budget, a device
     * gone): fail it with the reason rather than keep it forever. */
    td_job_set(&j->error, err);
    j->finished_ms = td_now_unix_ms();
    free(j->desc); /* an ended job needs none */
    j->desc = NULL;
    td_job_transition(d, j, TD_JOB_FAILED, err);
    return 0;
  }
  td_strlcpy(j->pin, j->spec->device, sizeof(j->pin));
  j->epochs = j->spec->epochs;
  if (j->state == TD_JOB_RUNNING) {
    j->device[0] = '\0';
    td_job_transition(d, j, TD_JOB_QUEUED, "traind restarted; the job runs again from its "
                      "last checkpoint, if any");
  }
  return 0;
}

uint64_t td_device_limit(const td_device *dev) {
  return dev->override_budget != 0 && dev->override_budget < dev->cfg_limit
             ? dev->override_budget
             : dev->cfg_limit;
}

static int td__override_one(void *arg, const char *name, uint64_t budget, int drain) {
  td_daemon *d = arg;
  td_device *dev = td_ledger_device(d, name);

  if (dev == NULL) {
    td_info("device %s: an admin's change is recorded for it, but it is not configured; the "
            "change applies if it comes back", name);
    return 0;
  }
  dev->override_budget = budget;
  dev->override_drain = drain;
  return 0;
}

/* The admins' device changes (`device`), recorded in the database, over
 * the config's budgets: at start and after SIGHUP, said in the log. */
static void td__overrides_apply(td_daemon *d, const char *when) {
  int rc;

  for (int i = 0; i < d->ndevices; i++) {
    d->devices[i].override_budget = 0;
    d->devices[i].override_drain = 0;
  }
  if ((rc = td_db_override_load(d->db, td__override_one, d)) < 0)
    td_error("cannot read the admins' device changes from the database (%s): the devices "
             "run as the config says", td_strerror(rc));
  for (int i = 0; i < d->ndevices; i++) {
    td_device *dev = &d->devices[i];
    char ob[32], cb[32];

    if (td_device_limit(dev) != dev->limit)
      td_device_set_limit(dev, td_device_limit(dev));
    if (dev->override_drain)
      td_ledger_drain(dev, 1);
    if (dev->override_budget == 0 && !dev->override_drain)
      continue;
    td_format_size(dev->override_budget, ob, sizeof(ob));
    td_format_size(dev->cfg_limit, cb, sizeof(cb));
    if (dev->override_budget != 0 && dev->override_budget < dev->cfg_limit)
      td_warn("device %s: %s, an admin's budget of %s is in force (the config says %s); "
              "`traind-client device %s --budget %llu` goes back to the config's", dev->name,
              when, ob, cb, dev->name, (unsigned long long)dev->cfg_limit);
    else if (dev->override_budget != 0)
      td_info("device %s: %s, an admin's budget of %s is recorded, but the config's %s is "
              "lower and applies", dev->name, when, ob, cb);
    if (dev->override_drain)
      td_warn("device %s: %s, it is drained by an admin and takes no new job; "
              "`traind-client device %s --resume` ends it", dev->name, when, dev->name);
  }
}

static void td__close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void td__on_signal(uv_signal_t *s, int signum) {
  td_daemon *d = s->data;

  if (d->stopping) {
    td_warn("second signal: stopping now");
    uv_stop(d->loop);
    return;
  }
  td_info("signal %d: stopping; running jobs checkpoint, stop, and resume when traind "
          "starts again", signum);
  sd_notify(0, "STOPPING=1");
  d->stopping = 1;
  td_server_stop(d);
  for (size_t i = 0; i < d->njobs; i++)
    if (d->jobs[i]->run != NULL)
      td_run_checkpoint_stop(d, d->jobs[i]);
  /* The loop ends once the last run's handles are closed. */
  uv_close((uv_handle_t *)&d->sig_term, NULL);
  uv_close((uv_handle_t *)&d->sig_int, NULL);
  uv_close((uv_handle_t *)&d->sig_hup, NULL);
  uv_close((uv_handle_t *)&d->heartbeat, NULL);
  uv_timer_stop(&d->retain_timer);
  uv_close((uv_handle_t *)&d->retain_timer, NULL);
}

/* SIGHUP: read the config file again and apply what can change while
 * jobs run.  A bad file changes nothing. */
static void td__reload(td_daemon *d) {
  td_config next;
  char err[1024];

  if (d->config_path == NULL) {
    td_info("SIGHUP: no config file (the embedded default is in use); nothing to reload");
    return;
  }
  td_config_defaults(&next);
  if (td_config_load(d->config_path, &next, err, sizeof(err)) < 0) {
    td_error("SIGHUP: %s; keeping the running configuration", err);
    return;
  }
  if (strcmp(next.socket, d->cfg.socket) != 0 ||
      strcmp(next.status_socket, d->cfg.status_socket) != 0 ||
      strcmp(next.state_dir, d->cfg.state_dir) != 0 ||
      strcmp(next.metrics_listen, d->cfg.metrics_listen) != 0)
    td_warn("SIGHUP: socket, status_socket, metrics_listen and state_dir take effect only "
            "after a restart");
  d->cfg.log_level = next.log_level;
  d->cfg.ring_slots = next.ring_slots;
  d->cfg.max_jobs = next.max_jobs;
  d->cfg.cancel_grace_ms = next.cancel_grace_ms;
  d->cfg.heartbeat_timeout_ms = next.heartbeat_timeout_ms;
  d->cfg.private_data = next.private_data;
  d->cfg.max_jobs_per_user = next.max_jobs_per_user;
  d->cfg.max_running_per_user = next.max_running_per_user;
  d->cfg.retention_days = next.retention_days;
  d->cfg.retention_jobs = next.retention_jobs;
  td_fairshare_decay_all(d, td_now_unix_ms()); /* the old half-life up to now */
  d->cfg.fairshare_halflife_s = next.fairshare_halflife_s;
  if (next.multi_user != d->cfg.multi_user || strcmp(next.munge_socket, d->cfg.munge_socket) ||
      strcmp(next.admin_group, d->cfg.admin_group) || next.socket_mode != d->cfg.socket_mode ||
      strcmp(next.socket_group, d->cfg.socket_group))
    td_warn("SIGHUP: multi_user, munge_socket, admin_group, socket_mode and socket_group take "
            "effect only after a restart");
  td_strlcpy(d->cfg.libexec_dir, next.libexec_dir, sizeof(d->cfg.libexec_dir));
  td_log_init("traind", d->cfg.log_level);
  for (int i = 0; i < d->ndevices; i++)
    td_ledger_drain(&d->devices[i], 1);
  for (int i = 0; i < next.ndevices; i++) {
    td_device *dev = td_ledger_device(d, next.devices[i].name);
    if (dev == NULL && d->ndevices < TD_MAX_DEVICES) {
      dev = &d->devices[d->ndevices++];
      memset(dev, 0, sizeof(*dev));
      td_strlcpy(dev->name, next.devices[i].name, sizeof(dev->name));
      dev->cfg_limit = dev->limit = next.devices[i].budget;
      td_probe_start(d, dev); /* admits nothing until it answers */
    }
    if (dev != NULL && dev->unusable[0] != '\0') {
      dev->cfg_limit = dev->limit = next.devices[i].budget;
      td_probe_start(d, dev); /* its probe failed: SIGHUP tries again */
    }
    if (dev != NULL) {
      dev->cfg_limit = next.devices[i].budget;
      td_device_set_limit(dev, td_device_limit(dev));
      td_ledger_drain(dev, 0);
    }
  }
  /* A device gone from the file keeps running its jobs but takes no more. */
  for (int i = 0; i < d->ndevices; i++)
    if (d->devices[i].draining)
      td_warn("SIGHUP: device %s is no longer configured: draining it", d->devices[i].name);
  td__overrides_apply(d, "after SIGHUP");
  td_info("SIGHUP: configuration reloaded from %s", d->config_path);
  td_sched_run(d);
}

static void td__on_hup(uv_signal_t *s, int signum) {
  (void)signum;
  td__reload(s->data);
}

static void td__on_heartbeat(uv_timer_t *t) {
  td_run_check_heartbeats(t->data);
  td_fairshare_tick(t->data);
}

static void td__usage(FILE *f) {
  fprintf(f,
          "Usage: traind [--config FILE]\n"
          "       traind --check-config FILE\n"
          "       traind --version\n"
          "\n"
          "Runs the traind daemon in the foreground.  Without --config it uses the\n"
          "embedded default: one simulated CPU device cpu0 with a 2 GiB budget, the\n"
          "socket under $XDG_RUNTIME_DIR/traind (or /run/traind as root), and the\n"
          "state under $XDG_STATE_HOME/traind (or /var/lib/traind as root).\n");
}

/* A state directory that a traind before identities left (its own user,
 * group traind, umask 022) held the database and every job's directory
 * open to the group, while the state directory is now passable by the
 * jobs' users: close what only traind may read.  The job directories of
 * today (sticky, shared with one user by an ACL) are left as they are. */
static void td__state_private(const char *state_dir) {
  static const char *const db_files[] = {"jobs.db", "jobs.db-wal", "jobs.db-shm"};
  struct stat st;
  char path[TD_PATH_MAX + 16];
  struct dirent *e;
  DIR *jobs;
  int fd;

  for (size_t i = 0; i < TD_ARRAY_SIZE(db_files); i++) {
    snprintf(path, sizeof(path), "%s/%s", state_dir, db_files[i]);
    if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 077) != 0) {
      td_warn("%s was mode %04o: made 0600, as only traind may read it", path,
              (unsigned)(st.st_mode & 07777));
      chmod(path, 0600);
    }
  }
  snprintf(path, sizeof(path), "%s/jobs", state_dir);
  fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 || (jobs = fdopendir(fd)) == NULL) {
    if (fd >= 0)
      close(fd);
    return;
  }
  if (fstat(fd, &st) == 0 && (st.st_mode & 0777) != 0711)
    fchmod(fd, 0711); /* passable to the jobs' users, listable by nobody */
  while ((e = readdir(jobs)) != NULL) {
    if (e->d_name[0] == '.' ||
        fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(st.st_mode) ||
        (st.st_mode & S_ISVTX) != 0 || (st.st_mode & 077) == 0)
      continue;
    td_info("job directory %s/%s was mode %04o: made 0700", path, e->d_name,
            (unsigned)(st.st_mode & 07777));
    fchmodat(fd, e->d_name, st.st_mode & 0700, 0);
  }
  closedir(jobs); /* closes fd */
}

/* A configuration traind cannot start with: systemd does not restart it
 * (RestartPreventExitStatus=), since the same file fails the same way.
 * EX_CONFIG of sysexits.h. */
#define TD_EXIT_CONFIG 78

static int td__exe_dir(char *out, size_t cap) {
  char path[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  char *slash;

  if (n <= 0)
    return TD_EIO;
  path[n] = '\0';
  slash = strrchr(path, '/');
  if (slash != NULL)
    *slash = '\0';
  return td_strlcpy(out, path, cap);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"check-config", required_argument, NULL, 'k'},
      {"version", no_argument, NULL, 'V'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  static td_daemon daemon;
  td_daemon *d = &daemon;
  const char *config_path = NULL;
  char err[1024], dbpath[TD_PATH_MAX + 16];
  int check_only = 0, c, rc, status = 1;

  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config_path = optarg; break;
    case 'k': config_path = optarg; check_only = 1; break;
    case 'V': printf("traind %s (protocol 1)\n", TD_VERSION); return 0;
    case 'h': td__usage(stdout); return 0;
    default: td__usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "traind: unexpected argument '%s'\n", argv[optind]);
    td__usage(stderr);
    return 2;
  }

  td_config_defaults(&d->cfg);
  d->config_path = config_path;
  if (config_path != NULL && td_config_load(config_path, &d->cfg, err, sizeof(err)) < 0) {
    fprintf(stderr, "traind: %s\n", err);
    return TD_EXIT_CONFIG;
  }
  if (check_only) {
    td_config_print(&d->cfg, stdout);
    return 0;
  }
  td_log_init("traind", d->cfg.log_level);
  {
    /* Every client and subscriber holds a descriptor: take what the hard
     * limit allows (the unit's LimitNOFILE=), not the soft 1024 that about
     * 1,000 status subscribers would exhaust. */
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &rl);
    }
  }
  if ((rc = td_auth_open(&d->cfg, &d->auth, err, sizeof(err))) < 0) {
    td_error("%s", err);
    return rc == TD_ECONFIG ? TD_EXIT_CONFIG : 1;
  }
  if (td_auth_multi_user(d->auth))
    td_info("serving several users: every request must carry a MUNGE credential (munged at "
            "%s); jobs run as their submitters",
            d->cfg.munge_socket[0] ? d->cfg.munge_socket : "its default socket");
  else
    td_info("serving one user, uid %u: requests need no credential, and only that user can "
            "reach the sockets", (unsigned)getuid());
  signal(SIGPIPE, SIG_IGN);
  /* Past a file size limit (LimitFSIZE=) a write fails with EFBIG, which
   * submits report as a full disk, instead of killing traind. */
  signal(SIGXFSZ, SIG_IGN);

  if (td__exe_dir(d->exe_dir, sizeof(d->exe_dir)) < 0) {
    td_error("cannot find traind's own directory through /proc/self/exe");
    return 1;
  }
  /* traind's own files (the database, logs) are born private; what a job
   * must reach is opened up one by one.  As root, a new state directory
   * lets the users' jobs pass through to their job directories (0711:
   * nobody lists it). */
  umask(0);
  rc = td_mkdir_p(d->cfg.state_dir, geteuid() == 0 ? 0711 : 0750);
  umask(0077);
  if (rc < 0) {
    td_error("cannot create the state directory %s: %s", d->cfg.state_dir, strerror(errno));
    return 1;
  }
  {
    struct stat st;

    /* As root, jobs run as their submitters, whose processes must pass
     * through the state directory to their job directories.  Not changed
     * here: what else is in it (the job database) may be readable. */
    if (geteuid() == 0 && stat(d->cfg.state_dir, &st) == 0 && (st.st_mode & (S_IXOTH | S_IXGRP)) == 0)
      td_warn("the state directory %s (mode %04o) cannot be passed through by other users, so "
              "jobs, which run as their submitters, cannot reach their job directories in it: "
              "make it searchable (chmod o+x %s, or StateDirectoryMode=0711) and keep jobs.db "
              "private", d->cfg.state_dir, (unsigned)(st.st_mode & 07777), d->cfg.state_dir);
  }
  if (geteuid() == 0)
    td__state_private(d->cfg.state_dir);
  snprintf(dbpath, sizeof(dbpath), "%s/jobs.db", d->cfg.state_dir);
  if (td_db_open(dbpath, &d->db, err, sizeof(err)) < 0) {
    td_error("%s", err);
    return 1;
  }

  d->loop = uv_default_loop();
  d->start_mono = td_now_mono();
  td_ledger_init(d);
  for (int i = 0; i < d->ndevices; i++)
    d->devices[i].cfg_limit = d->cfg.devices[i].budget;
  td_probe_devices(d);
  td_run_cleanup_stale();
  td_shmcache_sweep();
  if ((rc = td_server_start(d, err, sizeof(err))) < 0) {
    td_error("%s", err);
    status = rc == TD_ECONFIG ? TD_EXIT_CONFIG : 1;
    goto close_db;
  }
  if ((rc = td_fairshare_load(d)) < 0) {
    td_error("cannot load the users' fair-share usage from %s: %s", dbpath, td_strerror(rc));
    goto close_sockets;
  }
  if ((rc = td_db_load(d->db, td__restore, d)) < 0) {
    td_error("cannot load the jobs from %s: %s", dbpath, td_strerror(rc));
    goto close_sockets;
  }
  /* Jobs from before descriptions got theirs now: recorded at once. */
  if ((rc = td_db_job_desc_record(d->db, d->jobs, d->njobs)) < 0) {
    td_error("cannot record the jobs' descriptions in %s: %s", dbpath, td_strerror(rc));
    goto close_sockets;
  }
  /* After the jobs came back: a job that fits the config's budget but not
   * an admin's lower one waits (as it would have before the restart),
   * rather than fail as too big. */
  td__overrides_apply(d, "as before the restart");
  td_retain_start(d); /* before the first pass, so a backlog does not wait */

  uv_signal_init(d->loop, &d->sig_term);
  uv_signal_init(d->loop, &d->sig_int);
  uv_signal_init(d->loop, &d->sig_hup);
  d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
  uv_signal_start(&d->sig_term, td__on_signal, SIGTERM);
  uv_signal_start(&d->sig_int, td__on_signal, SIGINT);
  uv_signal_start(&d->sig_hup, td__on_hup, SIGHUP);
  uv_timer_init(d->loop, &d->heartbeat);
  d->heartbeat.data = d;
  uv_timer_start(&d->heartbeat, td__on_heartbeat, 1000, 1000);
  td_metrics_start(d);

  td_info("traind %s ready: jobs on %s, status on %s, state in %s, %d device(s)", TD_VERSION,
          d->cfg.socket, d->cfg.status_socket, d->cfg.state_dir, d->ndevices);
  sd_notifyf(0, "READY=1\nSTATUS=serving %s", d->cfg.socket);
  td_sched_run(d);

  uv_run(d->loop, UV_RUN_DEFAULT);
  status = 0;
  uv_walk(d->loop, td__close_walk, NULL);
  uv_run(d->loop, UV_RUN_DEFAULT);
  uv_loop_close(d->loop);
  td_metrics_stop();
  td_fairshare_save(d);
  td_info("stopped");

close_sockets:
  nn_close(d->rep_sock);
  nn_close(d->pub_sock);
close_db:
  td_db_close(d->db);
  for (size_t i = 0; i < d->njobs; i++)
    td_job_free(d->jobs[i]);
  free(d->jobs);
  free(d->users);
  td_auth_close(d->auth);
  return status;
}
