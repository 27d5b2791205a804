/* Starting a job's processes (spawn.h): the command lines of
 * traind-loader and traind-worker, the environment and identity they
 * start with, and the shared-memory ring between them, named
 * /traind-PID-JOB so that a traind that died leaves rings another can
 * recognise and remove. */
#include <dirent.h>
#include <errno.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "privdrop.h"
#include "spawn.h"
#include "td_config.h"
#include "util.h"

#define TD_RING_PREFIX "traind-"

/* The configured directory, else traind's own (a build tree), else the
 * installed libexec directory. */
const char *td_run_libexec(const td_daemon *d) {
  char probe[TD_PATH_MAX + 32];

  if (d->cfg.libexec_dir[0])
    return d->cfg.libexec_dir;
  snprintf(probe, sizeof(probe), "%s/traind-worker", d->exe_dir);
  return access(probe, X_OK) == 0 ? d->exe_dir : TD_LIBEXECDIR;
}

/* The identity the job's processes take, "NAME:UID:GID" (out[0] = '\0'
 * when traind is not root: they run as traind, like every job of a
 * personal traind). */
int td_spawn_identity(const td_job *j, char *out, size_t cap, char *err, size_t errlen) {
  char name[TD_IDENTITY_NAME_MAX + 1] = "";
  td_identity id;

  out[0] = '\0';
  if (geteuid() != 0)
    return 0;
  if (j->uid == (uint32_t)-1 || j->gid == (uint32_t)-1) {
    snprintf(err, errlen, "job %llu was submitted before traind recorded who submits each job, "
             "so it cannot run as its submitter: submit it again",
             (unsigned long long)j->id);
    return TD_ESTATE;
  }
  if (j->owner[0] != '\0') {
    td_strlcpy(name, j->owner, sizeof(name));
  } else {
    struct passwd pw, *res = NULL;
    char buf[4096];

    if (getpwuid_r((uid_t)j->uid, &pw, buf, sizeof(buf), &res) != 0 || res == NULL ||
        td_strlcpy(name, pw.pw_name, sizeof(name)) < 0) {
      snprintf(err, errlen, "the job's submitter, uid %u, has no user name to run its job as",
               j->uid);
      return TD_EINVAL;
    }
  }
  /* Parsed as the processes will parse it: one form, checked once here. */
  if (snprintf(out, cap, "%s:%u:%u", name, j->uid, j->gid) >= (int)cap ||
      td_identity_parse(out, &id) < 0) {
    snprintf(err, errlen, "the job's owner '%s' (uid %u) is not a user name its job can run as",
             name, j->uid);
    out[0] = '\0';
    return TD_EINVAL;
  }
  return 0;
}

/* traind's environment less JOURNAL_STREAM (malloc'd array of borrowed
 * strings; NULL when out of memory).  Under systemd traind's stderr is the
 * journal, but a job's processes write to the job's log file: they must
 * not take it for the journal (td_log's "<N>" lines without a time). */
static char **td__job_env(void) {
  extern char **environ;
  size_t n = 0, k = 0;
  char **env;

  while (environ[n] != NULL)
    n++;
  if ((env = calloc(n + 1, sizeof(*env))) == NULL)
    return NULL;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "JOURNAL_STREAM=", 15) != 0)
      env[k++] = environ[i];
  return env;
}

/* Spawn one of the run's processes; on failure err says why (the caller
 * closes the handle). */
static int td__spawn(uv_loop_t *loop, uv_process_t *p, char **args, uv_stdio_container_t *io,
                     int nio, uv_exit_cb exit_cb, char *err, size_t errlen) {
  uv_process_options_t opt;
  char **env = td__job_env();
  int rc;

  memset(&opt, 0, sizeof(opt));
  opt.file = args[0];
  opt.args = args;
  opt.env = env; /* NULL (out of memory): traind's own, which still works */
  opt.stdio = io;
  opt.stdio_count = nio;
  opt.exit_cb = exit_cb;
  rc = uv_spawn(loop, p, &opt);
  free(env);
  if (rc < 0) {
    snprintf(err, errlen, "cannot start %s: %s", args[0], uv_strerror(rc));
    return TD_EIO;
  }
  return 0;
}

int td_spawn_loader(const td_spawn_ctx *c, uint64_t epoch, uint64_t batch, uv_process_t *p,
                    uv_exit_cb exit_cb, char *err, size_t errlen) {
  char loader[TD_PATH_MAX + 32], parent[16], se[24], sb[24];
  char *args[] = {loader, "--job", (char *)c->job_path, "--base-dir", c->job->base_dir,
                  "--ring", (char *)c->ring_name, "--parent-pid", parent, "--start-epoch", se,
                  "--start-batch", sb, c->as_user[0] ? "--as-user" : NULL, (char *)c->as_user,
                  NULL};
  uv_stdio_container_t io[3];

  snprintf(loader, sizeof(loader), "%s/traind-loader", td_run_libexec(c->d));
  snprintf(parent, sizeof(parent), "%d", (int)getpid());
  snprintf(se, sizeof(se), "%llu", (unsigned long long)epoch);
  snprintf(sb, sizeof(sb), "%llu", (unsigned long long)batch);
  io[0].flags = UV_IGNORE;
  io[1].flags = UV_INHERIT_FD;
  io[1].data.fd = c->log_fd;
  io[2].flags = UV_INHERIT_FD;
  io[2].data.fd = c->log_fd;
  return td__spawn(c->loop, p, args, io, 3, exit_cb, err, errlen);
}

int td_spawn_worker(const td_spawn_ctx *c, const char *dir, const char *ckpt, int resume,
                    uv_pipe_t *control, uv_pipe_t *events, uv_process_t *p, uv_exit_cb exit_cb,
                    char *err, size_t errlen) {
  const td_job *j = c->job;
  char worker[TD_PATH_MAX + 32], output[TD_PATH_MAX], budget[32], fallback[TD_PATH_MAX],
      shrink[16], micro[16], events_fd[8], overhead[32];
  uv_stdio_container_t io[4];
  /* Room at the end for the optional pairs and the NULL. */
  char *args[] = {worker, "--job", (char *)c->job_path, "--base-dir", j->base_dir, "--ring",
                  (char *)c->ring_name, "--device", (char *)j->device, "--budget", budget,
                  "--micro-batch", micro, "--output", output, "--events-fd", events_fd,
                  "--checkpoint", (char *)ckpt, "--overhead", overhead, "--tensorboard",
                  (char *)dir, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                  NULL, NULL, NULL};
  size_t n = TD_ARRAY_SIZE(args) - 14;

  /* The job's directory keeps the model when the job names no output, and
   * when its output cannot be written at the end. */
  snprintf(fallback, sizeof(fallback), "%.*s/model.safetensors", (int)(sizeof(fallback) - 20),
           dir);
  if (j->spec->output[0] != '\0')
    td_strlcpy(output, j->spec->output, sizeof(output));
  else
    td_strlcpy(output, fallback, sizeof(output));
  snprintf(worker, sizeof(worker), "%s/traind-worker", td_run_libexec(c->d));
  snprintf(budget, sizeof(budget), "%llu", (unsigned long long)j->plan.total);
  snprintf(micro, sizeof(micro), "%u", j->plan.micro_batch);
  snprintf(overhead, sizeof(overhead), "%llu", (unsigned long long)j->plan.overhead);
  snprintf(events_fd, sizeof(events_fd), "3");
  if (c->as_user[0] != '\0') {
    args[n++] = "--as-user";
    args[n++] = (char *)c->as_user;
  }
  if (resume) {
    args[n++] = "--resume";
    args[n++] = (char *)ckpt;
  } else if (c->continue_from != NULL) {
    args[n++] = "--continue";
    args[n++] = (char *)c->continue_from;
  }
  if (strcmp(output, fallback) != 0) {
    args[n++] = "--fallback-output";
    args[n++] = fallback;
  }
  /* The remedies admission chose (td_plan_choose): the worker starts
   * with them, so it runs the plan reserved for it. */
  if (j->plan.precision != j->spec->precision) {
    args[n++] = "--precision";
    args[n++] = (char *)td_precision_name(j->plan.precision);
  }
  if (j->plan.recompute && !j->spec->recompute)
    args[n++] = "--recompute";
  if (j->plan.shrink > 1) {
    snprintf(shrink, sizeof(shrink), "%u", j->plan.shrink);
    args[n++] = "--shrink";
    args[n++] = shrink;
  }
  io[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
  io[0].data.stream = (uv_stream_t *)control;
  io[1].flags = UV_INHERIT_FD;
  io[1].data.fd = c->log_fd;
  io[2].flags = UV_INHERIT_FD;
  io[2].data.fd = c->log_fd;
  io[3].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  io[3].data.stream = (uv_stream_t *)events;
  return td__spawn(c->loop, p, args, io, 4, exit_cb, err, errlen);
}

int td_spawn_ring(const td_daemon *d, const td_job *j, int as_root, char *name, size_t cap,
                  td_ring **out, char *err, size_t errlen) {
  size_t slot;
  int rc;

  snprintf(name, cap, "/" TD_RING_PREFIX "%d-%llu", (int)getpid(), (unsigned long long)j->id);
  /* samples travel in their stored type (the plan checked the product) */
  slot = td_batch_bytes(j->spec->batch_size,
                        (uint32_t)(td_jobspec_input_elems(j->spec) *
                                   td_dtype_size(j->spec->sample_dtype)),
                        (uint32_t)td_target_bytes(td_jobspec_target(j->spec)));
  td_ring_unlink(name);
  /* As root the ring is the job's user's, whose processes open it. */
  rc = td_ring_create_owned(name, d->cfg.ring_slots, slot, as_root ? (uid_t)j->uid : (uid_t)-1,
                            as_root ? (gid_t)j->gid : (gid_t)-1, out);
  if (rc < 0)
    snprintf(err, errlen, "cannot create the shared-memory ring %s (%zu-byte slots): %s", name,
             slot, td_strerror(rc));
  return rc;
}

/* Segments named /traind-PID-JOB whose traind is gone are left over from a
 * crash: remove them. */
void td_run_cleanup_stale(void) {
  DIR *dir = opendir("/dev/shm");
  struct dirent *e;

  if (dir == NULL)
    return;
  while ((e = readdir(dir)) != NULL) {
    char name[300];
    long pid;
    char *end;

    if (strncmp(e->d_name, TD_RING_PREFIX, strlen(TD_RING_PREFIX)) != 0)
      continue;
    pid = strtol(e->d_name + strlen(TD_RING_PREFIX), &end, 10);
    if (end == e->d_name + strlen(TD_RING_PREFIX) || *end != '-' || pid <= 0)
      continue;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
      continue;
    snprintf(name, sizeof(name), "/%s", e->d_name);
    if (shm_unlink(name) == 0)
      td_info("removed shared-memory segment %s left by a traind that died", name);
  }
  closedir(dir);
}
