/* The job socket (nanomsg REP) and the status socket (nanomsg PUB), driven
 * by the libuv loop through the REP socket's NN_RCVFD.  Every request is
 * answered at once: nothing here waits on a worker or the network, so a
 * cooked REP socket never holds up the next client. */
#include <errno.h>
#include <fcntl.h>
#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>
#include <nanomsg/reqrep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "proto.h"
#include "td_config.h"
#include "traind.h"
#include "util.h"

typedef int (*td_op_fn)(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                        size_t errlen);

static void td__pack_plan(td_pack *p, const td_plan *pl) {
  td_pack_str(p, "plan");
  td_pack_map(p, 9);
  td_pack_kv_u64(p, "micro_batch", pl->micro_batch);
  td_pack_kv_u64(p, "params", pl->params);
  td_pack_kv_u64(p, "grads", pl->grads);
  td_pack_kv_u64(p, "optim", pl->optim);
  td_pack_kv_u64(p, "activations", pl->activations);
  td_pack_kv_u64(p, "workspace", pl->workspace);
  td_pack_kv_u64(p, "staging", pl->staging);
  td_pack_kv_u64(p, "overhead", pl->overhead);
  td_pack_kv_u64(p, "total", pl->total);
}

/* The short form `list` shows. */
static void td__pack_job_row(td_pack *p, const td_job *j) {
  td_pack_map(p, 12);
  td_pack_kv_u64(p, "id", j->id);
  td_pack_kv_str(p, "name", j->name);
  td_pack_kv_str(p, "owner", j->owner);
  td_pack_kv_str(p, "state", td_job_state_name(j->state));
  td_pack_kv_str(p, "device", j->device);
  td_pack_kv_i64(p, "submitted_ms", j->submitted_ms);
  td_pack_kv_u64(p, "epoch", j->epoch);
  td_pack_kv_u64(p, "epochs", j->epochs);
  td_pack_kv_u64(p, "step", j->step);
  td_pack_kv_u64(p, "steps", j->steps);
  td_pack_kv_f64(p, "loss", j->loss);
  td_pack_kv_f64(p, "accuracy", j->accuracy);
}

static void td__pack_job_full(td_pack *p, const td_job *j) {
  td_pack_map(p, 22);
  td_pack_kv_u64(p, "id", j->id);
  td_pack_kv_str(p, "name", j->name);
  td_pack_kv_str(p, "owner", j->owner);
  td_pack_kv_u64(p, "retries", j->retries);
  td_pack_kv_u64(p, "mem", j->mem);
  td_pack_kv_str(p, "state", td_job_state_name(j->state));
  td_pack_kv_str(p, "device", j->device);
  td_pack_kv_i64(p, "priority", j->priority);
  td_pack_kv_i64(p, "submitted_ms", j->submitted_ms);
  td_pack_kv_i64(p, "started_ms", j->started_ms);
  td_pack_kv_i64(p, "finished_ms", j->finished_ms);
  td_pack_kv_u64(p, "epoch", j->epoch);
  td_pack_kv_u64(p, "epochs", j->epochs);
  td_pack_kv_u64(p, "step", j->step);
  td_pack_kv_u64(p, "steps", j->steps);
  td_pack_kv_f64(p, "loss", j->loss);
  td_pack_kv_f64(p, "accuracy", j->accuracy);
  td_pack_kv_f64(p, "samples_per_sec", j->samples_per_sec);
  td_pack_kv_str(p, "model", j->model);
  td_pack_kv_str(p, "error", j->error);
  td__pack_plan(p, &j->plan);
  td_pack_kv_i64(p, "exit_status", j->exit_status);
}

static int td__job_arg(td_daemon *d, const msgpack_object *req, td_job **out, char *err,
                       size_t errlen) {
  uint64_t id = 0;
  td_job *j;

  td_obj_u64(req, "id", &id);
  j = td_daemon_find(d, id);
  if (j == NULL) {
    snprintf(err, errlen, "no job with id %llu; `traind-client ls` lists the jobs",
             (unsigned long long)id);
    return TD_ENOENT;
  }
  *out = j;
  return 0;
}

static void td__reply_submitted(td_pack *rep, const td_job *j, int duplicate) {
  td_pack_reply_ok(rep, j->device[0] ? 6 : 5);
  td_pack_kv_u64(rep, "id", j->id);
  td_pack_kv_str(rep, "name", j->name);
  td_pack_kv_str(rep, "state", td_job_state_name(j->state));
  td_pack_kv_bool(rep, "duplicate", duplicate);
  td__pack_plan(rep, &j->plan);
  if (j->device[0])
    td_pack_kv_str(rep, "device", j->device);
}

static int td__op_submit(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                         size_t errlen) {
  const char *yaml;
  size_t ylen;
  char key[80], name[TD_NAME_MAX] = "";
  uint64_t existing;
  td_job *j;
  int rc;

  if (td_obj_str(req, "job", &yaml, &ylen) < 0 || td_obj_cstr(req, "key", key, sizeof(key)) < 0)
    return TD_EPROTO;
  if (td_db_find_key(d->db, key, &existing) == 0) {
    j = td_daemon_find(d, existing);
    if (j != NULL) {
      td__reply_submitted(rep, j, 1);
      return 0;
    }
  }
  if (memchr(yaml, '\0', ylen) != NULL) {
    snprintf(err, errlen, "the job file contains a NUL byte; job files are UTF-8 YAML text");
    return TD_EJOBSPEC;
  }
  if (d->nactive >= d->cfg.max_jobs) {
    snprintf(err, errlen, "the queue is full (%u jobs queued or running, the configured "
             "max_jobs); wait for some to finish or cancel some", d->cfg.max_jobs);
    return TD_EAGAIN;
  }

  j = calloc(1, sizeof(*j));
  if (j == NULL)
    return TD_ENOMEM;
  j->accuracy = -1;
  j->spec = malloc(sizeof(*j->spec));
  j->yaml = strndup(yaml, ylen);
  if (j->spec == NULL || j->yaml == NULL) {
    rc = TD_ENOMEM;
    goto free_job;
  }
  if (td_obj_cstr(req, "base_dir", j->base_dir, sizeof(j->base_dir)) < 0 ||
      j->base_dir[0] != '/') {
    snprintf(err, errlen, "base_dir must be an absolute directory (the job file's)");
    rc = TD_EINVAL;
    goto free_job;
  }
  rc = td_jobspec_parse(j->yaml, ylen, j->base_dir, j->spec, err, errlen);
  if (rc < 0)
    goto free_job;
  rc = td_plan_compute(j->spec, j->spec->batch_size, j->spec->precision, 0, &j->plan);
  if (rc < 0) {
    snprintf(err, errlen, "the job's memory plan overflows (the model or batch is absurdly "
             "large); reduce layer sizes or train.batch_size");
    goto free_job;
  }
  td_obj_cstr(req, "name", name, sizeof(name));
  td_obj_cstr(req, "owner", j->owner, sizeof(j->owner));
  td_strlcpy(j->name, name[0] ? name : j->spec->name, sizeof(j->name));
  td_strlcpy(j->pin, j->spec->device, sizeof(j->pin));
  j->priority = j->spec->priority;
  j->epochs = j->spec->epochs;
  j->state = TD_JOB_QUEUED;
  j->submitted_ms = td_now_unix_ms();
  rc = td_sched_check_fit(d, j, err, errlen);
  if (rc == TD_ENOFIT) {
    /* The plan is the answer to "why does my job not fit". */
    td_pack_reply_err_begin(rep, rc, err, 1);
    td__pack_plan(rep, &j->plan);
  }
  if (rc < 0)
    goto free_job;
  if (d->njobs == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 64;
    td_job **jobs = realloc(d->jobs, cap * sizeof(*jobs));
    if (jobs == NULL) {
      rc = TD_ENOMEM;
      goto free_job;
    }
    d->jobs = jobs;
    d->cap = cap;
  }
  rc = td_db_insert(d->db, j, key);
  if (rc < 0) {
    if (rc == TD_ENOSPC)
      snprintf(err, errlen, "the disk holding %s is full, so the job cannot be recorded; "
               "free space there (running jobs go on)", d->cfg.state_dir);
    else
      snprintf(err, errlen, "cannot record the job in %s/jobs.db; see traind's log",
               d->cfg.state_dir);
    goto free_job;
  }
  d->jobs[d->njobs++] = j;
  d->nactive++;
  td_info("job %llu (%s) submitted: plan %llu bytes at micro-batch %u",
          (unsigned long long)j->id, j->name, (unsigned long long)j->plan.total,
          j->plan.micro_batch);
  td_publish_state(d, j);
  td__reply_submitted(rep, j, 0);
  return 0;

free_job:
  td_job_free(j);
  return rc;
}

static int td__listed(const td_job *j, td_job_state state, const char *owner,
                      const char *device) {
  return (state == TD_JOB__NSTATES || j->state == state) &&
         (owner[0] == '\0' || strcmp(j->owner, owner) == 0) &&
         (device[0] == '\0' || strcmp(j->device, device) == 0 || strcmp(j->pin, device) == 0);
}

static int td__op_list(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                       size_t errlen) {
  char state_s[32], owner[33] = "", device[32] = "";
  td_job_state filter = TD_JOB__NSTATES;
  uint64_t limit = UINT64_MAX, n = 0;

  if (td_obj_cstr(req, "state", state_s, sizeof(state_s)) == 0 &&
      td_job_state_parse(state_s, &filter) < 0) {
    snprintf(err, errlen, "unknown state '%s'; use queued, running, succeeded, failed or "
             "cancelled", state_s);
    return TD_EINVAL;
  }
  td_obj_u64(req, "limit", &limit);
  td_obj_cstr(req, "owner", owner, sizeof(owner));
  td_obj_cstr(req, "device", device, sizeof(device));
  for (size_t i = 0; i < d->njobs && n < limit; i++)
    if (td__listed(d->jobs[i], filter, owner, device))
      n++;
  td_pack_reply_ok(rep, 1);
  td_pack_str(rep, "jobs");
  td_pack_array(rep, (uint32_t)n);
  for (size_t i = 0; i < d->njobs && n > 0; i++) {
    if (!td__listed(d->jobs[i], filter, owner, device))
      continue;
    td__pack_job_row(rep, d->jobs[i]);
    n--;
  }
  return 0;
}

static int td__op_show(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                       size_t errlen) {
  td_job *j;
  int rc = td__job_arg(d, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  td_pack_reply_ok(rep, 1);
  td_pack_str(rep, "job");
  td__pack_job_full(rep, j);
  return 0;
}

static int td__op_cancel(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                         size_t errlen) {
  td_job *j;
  int rc = td__job_arg(d, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  switch (j->state) {
  case TD_JOB_QUEUED:
    td_strlcpy(j->error, "cancelled", sizeof(j->error));
    j->finished_ms = td_now_unix_ms();
    td_job_transition(d, j, TD_JOB_CANCELLED, "cancelled while queued");
    break;
  case TD_JOB_RUNNING:
    /* The state changes when its processes are gone, so the budget is
     * released only once nothing uses it. */
    j->cancel_requested = 1;
    td_run_stop(d, j);
    break;
  default:
    snprintf(err, errlen, "job %llu has already %s; only queued or running jobs can be "
             "cancelled", (unsigned long long)j->id, td_job_state_name(j->state));
    return TD_ESTATE;
  }
  td_pack_reply_ok(rep, 2);
  td_pack_kv_u64(rep, "id", j->id);
  td_pack_kv_str(rep, "state", j->state == TD_JOB_RUNNING ? "cancelling"
                                                           : td_job_state_name(j->state));
  return 0;
}

static int td__op_info(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                       size_t errlen) {
  (void)req;
  (void)err;
  (void)errlen;
  td_pack_reply_ok(rep, 5);
  td_pack_kv_str(rep, "version", TD_VERSION);
  td_pack_kv_u64(rep, "protocol", TD_PROTO_VERSION);
  td_pack_kv_f64(rep, "uptime_s", td_now_mono() - d->start_mono);
  td_pack_kv_str(rep, "status_socket", d->cfg.status_socket);
  td_pack_kv_u64(rep, "jobs", d->njobs);
  return 0;
}

static void td__pack_device(td_pack *p, const td_device *dev) {
  td_pack_map(p, 5);
  td_pack_kv_str(p, "name", dev->name);
  td_pack_kv_u64(p, "budget", dev->budget);
  td_pack_kv_u64(p, "reserved", dev->reserved);
  td_pack_kv_u64(p, "jobs", dev->njobs);
  td_pack_kv_bool(p, "draining", dev->draining);
}

static int td__op_devices(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                          size_t errlen) {
  (void)req;
  (void)err;
  (void)errlen;
  td_pack_reply_ok(rep, 1);
  td_pack_str(rep, "devices");
  td_pack_array(rep, (uint32_t)d->ndevices);
  for (int i = 0; i < d->ndevices; i++)
    td__pack_device(rep, &d->devices[i]);
  return 0;
}

static int td__op_device(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                         size_t errlen) {
  char name[32];
  uint64_t budget;
  int drain;
  td_device *dev;

  td_obj_cstr(req, "name", name, sizeof(name));
  dev = td_sched_device(d, name);
  if (dev == NULL) {
    snprintf(err, errlen, "no device named '%s'; `traind-client devices` lists them", name);
    return TD_ENOENT;
  }
  if (td_obj_u64(req, "budget", &budget) == 0 && budget != dev->budget) {
    td_info("device %s: budget %llu -> %llu bytes (%llu reserved)", dev->name,
            (unsigned long long)dev->budget, (unsigned long long)budget,
            (unsigned long long)dev->reserved);
    dev->budget = budget;
  }
  if (td_obj_bool(req, "drain", &drain) == 0 && drain != dev->draining) {
    dev->draining = drain;
    td_info("device %s: %s", dev->name, drain ? "draining: no new jobs" : "resumed");
  }
  td_publish_device(d, dev);
  td_pack_reply_ok(rep, 1);
  td_pack_str(rep, "device");
  td__pack_device(rep, dev);
  return 0;
}

static int td__op_set_priority(td_daemon *d, const msgpack_object *req, td_pack *rep,
                               char *err, size_t errlen) {
  td_job *j;
  int64_t prio = 0;
  int rc = td__job_arg(d, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  if (j->state != TD_JOB_QUEUED && j->state != TD_JOB_RUNNING) {
    snprintf(err, errlen, "job %llu has already %s; its priority no longer matters",
             (unsigned long long)j->id, td_job_state_name(j->state));
    return TD_ESTATE;
  }
  td_obj_i64(req, "priority", &prio);
  j->priority = (int32_t)prio;
  rc = td_db_update(d->db, j, "priority changed");
  if (rc < 0) {
    snprintf(err, errlen, "cannot record the new priority in %s/jobs.db", d->cfg.state_dir);
    return rc;
  }
  td_pack_reply_ok(rep, 2);
  td_pack_kv_u64(rep, "id", j->id);
  td_pack_kv_i64(rep, "priority", j->priority);
  return 0;
}

#define TD_LOGS_DEFAULT_MAX (64u << 10)

/* Logs are read in bounded pieces, so a huge log never blocks the loop or
 * makes a huge reply; a client that follows one asks again from offset. */
static int td__op_logs(td_daemon *d, const msgpack_object *req, td_pack *rep, char *err,
                       size_t errlen) {
  char path[TD_PATH_MAX + 64];
  char *buf = NULL;
  uint64_t max = TD_LOGS_DEFAULT_MAX;
  int64_t offset = -1;
  struct stat st;
  ssize_t got = 0;
  td_job *j;
  int fd, rc = td__job_arg(d, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  td_obj_i64(req, "offset", &offset);
  td_obj_u64(req, "max", &max);
  snprintf(path, sizeof(path), "%s/jobs/%llu/log", d->cfg.state_dir, (unsigned long long)j->id);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) < 0) {
    /* A job that never started has no log yet. */
    st.st_size = 0;
  } else {
    if (offset < 0 || offset > st.st_size)
      offset = st.st_size > (off_t)max ? st.st_size - (off_t)max : 0;
    buf = malloc(max);
    if (buf == NULL) {
      close(fd);
      return TD_ENOMEM;
    }
    got = pread(fd, buf, max, offset);
    if (got < 0)
      got = 0;
  }
  if (fd >= 0)
    close(fd);
  if (offset < 0)
    offset = 0;
  td_pack_reply_ok(rep, 4);
  td_pack_str(rep, "data");
  td_pack_strn(rep, buf ? buf : "", (size_t)got);
  td_pack_kv_u64(rep, "offset", (uint64_t)offset + (uint64_t)got);
  td_pack_kv_u64(rep, "size", (uint64_t)st.st_size);
  td_pack_kv_bool(rep, "done", j->state != TD_JOB_QUEUED && j->state != TD_JOB_RUNNING);
  free(buf);
  return 0;
}

static const struct {
  const char *op;
  td_op_fn fn;
} td__ops[] = {
    {"submit", td__op_submit}, {"list", td__op_list}, {"show", td__op_show},
    {"cancel", td__op_cancel}, {"info", td__op_info}, {"devices", td__op_devices},
    {"device", td__op_device}, {"logs", td__op_logs}, {"set-priority", td__op_set_priority},
};

static void td__handle(td_daemon *d, const void *buf, size_t len, td_pack *rep) {
  char err[1024] = "";
  const td_msgdef *def;
  td_msg *msg = NULL;
  int rc;

  rc = td_proto_parse_request(buf, len, &msg, &def, err, sizeof(err));
  if (rc == 0) {
    rc = TD_EINTERNAL;
    for (size_t i = 0; i < TD_ARRAY_SIZE(td__ops); i++) {
      if (strcmp(td__ops[i].op, def->op) == 0) {
        rc = td__ops[i].fn(d, td_msg_root(msg), rep, err, sizeof(err));
        break;
      }
    }
  }
  /* A handler may have packed an error reply with details of its own. */
  if (rc < 0 && td_pack_len(rep) == 0) {
    if (err[0] == '\0')
      snprintf(err, sizeof(err), "%s", td_strerror(rc));
    td_pack_reply_err(rep, rc, err);
  }
  td_msg_free(msg);
}

static void td__on_request(uv_poll_t *h, int status, int events) {
  td_daemon *d = h->data;

  (void)status;
  (void)events;
  for (;;) {
    void *buf = NULL;
    td_pack rep;
    int n = nn_recv(d->rep_sock, &buf, NN_MSG, NN_DONTWAIT);

    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR)
        td_warn("job socket: receive failed: %s", nn_strerror(errno));
      break;
    }
    td_pack_init(&rep);
    td__handle(d, buf, (size_t)n, &rep);
    nn_freemsg(buf);
    if (td_pack_error(&rep) < 0) {
      int code = td_pack_error(&rep);
      td_pack_free(&rep);
      td_pack_init(&rep);
      td_pack_reply_err(&rep, code,
                        code == TD_ETOOBIG ? "the reply would exceed the protocol's 2 MiB limit; "
                                             "ask for less (list takes a limit and a state)"
                                           : "traind ran out of memory building the reply");
    }
    if (nn_send(d->rep_sock, td_pack_data(&rep), td_pack_len(&rep), NN_DONTWAIT) < 0)
      td_warn("job socket: reply not sent: %s", nn_strerror(errno));
    td_pack_free(&rep);
  }
  td_sched_run(d);
}

/* The directory of an ipc:// socket must exist; its mode decides who may
 * connect. */
static int td__prepare_ipc(const char *addr, char *err, size_t errlen) {
  char dir[512];
  char *slash;

  if (strncmp(addr, "ipc://", 6) != 0)
    return 0;
  if (td_strlcpy(dir, addr + 6, sizeof(dir)) < 0)
    return TD_ETOOBIG;
  slash = strrchr(dir, '/');
  if (slash == NULL || slash == dir)
    return 0;
  *slash = '\0';
  if (td_mkdir_p(dir, 0750) < 0) {
    snprintf(err, errlen, "cannot create the socket directory %s: %s", dir, strerror(errno));
    return TD_EIO;
  }
  return 0;
}

static int td__bind(int sock, const char *addr, const char *what, char *err, size_t errlen) {
  int rc = td__prepare_ipc(addr, err, errlen);

  if (rc < 0)
    return rc;
  if (nn_bind(sock, addr) < 0) {
    snprintf(err, errlen, "cannot bind the %s to %s: %s%s", what, addr, nn_strerror(errno),
             errno == EADDRINUSE ? " (is another traind running?)" : "");
    return TD_EIO;
  }
  return 0;
}

int td_server_start(td_daemon *d, char *err, size_t errlen) {
  int maxsize = (int)TD_PROTO_MAX_MSG + 4096, fd = -1;
  size_t fdsz = sizeof(fd);
  int rc;

  d->rep_sock = nn_socket(AF_SP, NN_REP);
  d->pub_sock = nn_socket(AF_SP, NN_PUB);
  if (d->rep_sock < 0 || d->pub_sock < 0) {
    snprintf(err, errlen, "cannot create nanomsg sockets: %s", nn_strerror(errno));
    return TD_EIO;
  }
  nn_setsockopt(d->rep_sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &maxsize, sizeof(maxsize));
  if ((rc = td__bind(d->rep_sock, d->cfg.socket, "job socket", err, errlen)) < 0 ||
      (rc = td__bind(d->pub_sock, d->cfg.status_socket, "status socket", err, errlen)) < 0)
    return rc;
  if (nn_getsockopt(d->rep_sock, NN_SOL_SOCKET, NN_RCVFD, &fd, &fdsz) < 0) {
    snprintf(err, errlen, "cannot get the job socket's descriptor: %s", nn_strerror(errno));
    return TD_EIO;
  }
  uv_poll_init(d->loop, &d->rep_poll, fd);
  d->rep_poll.data = d;
  uv_poll_start(&d->rep_poll, UV_READABLE, td__on_request);
  return 0;
}

void td_server_stop(td_daemon *d) {
  if (!uv_is_closing((uv_handle_t *)&d->rep_poll))
    uv_close((uv_handle_t *)&d->rep_poll, NULL);
}

static void td__publish(td_daemon *d, td_pack *p) {
  /* PUB never blocks; a subscriber too slow to keep up loses messages. */
  nn_send(d->pub_sock, td_pack_data(p), td_pack_len(p), NN_DONTWAIT);
  td_pack_free(p);
}

void td_publish_state(td_daemon *d, const td_job *j) {
  td_pack p;

  td_pack_init(&p);
  td_pack_event_begin(&p, "job.state", 5);
  td_pack_kv_u64(&p, "id", j->id);
  td_pack_kv_str(&p, "name", j->name);
  td_pack_kv_str(&p, "state", td_job_state_name(j->state));
  td_pack_kv_str(&p, "device", j->device);
  td_pack_kv_str(&p, "error", j->error);
  td__publish(d, &p);
}

void td_publish_progress(td_daemon *d, const td_job *j, double eta_s) {
  td_pack p;

  td_pack_init(&p);
  td_pack_event_begin(&p, "job.progress", 9);
  td_pack_kv_u64(&p, "id", j->id);
  td_pack_kv_u64(&p, "epoch", j->epoch);
  td_pack_kv_u64(&p, "epochs", j->epochs);
  td_pack_kv_u64(&p, "step", j->step);
  td_pack_kv_u64(&p, "steps", j->steps);
  td_pack_kv_f64(&p, "loss", j->loss);
  td_pack_kv_f64(&p, "samples_per_sec", j->samples_per_sec);
  td_pack_kv_f64(&p, "eta_s", eta_s);
  td_pack_kv_f64(&p, "accuracy", j->accuracy);
  td__publish(d, &p);
}

void td_publish_eval(td_daemon *d, const td_job *j, uint32_t epoch, double acc, double loss) {
  td_pack p;

  td_pack_init(&p);
  td_pack_event_begin(&p, "job.eval", 4);
  td_pack_kv_u64(&p, "id", j->id);
  td_pack_kv_u64(&p, "epoch", epoch);
  td_pack_kv_f64(&p, "accuracy", acc);
  td_pack_kv_f64(&p, "loss", loss);
  td__publish(d, &p);
}

void td_publish_device(td_daemon *d, const td_device *dev) {
  td_pack p;

  td_pack_init(&p);
  td_pack_event_begin(&p, "device", 4);
  td_pack_kv_str(&p, "name", dev->name);
  td_pack_kv_u64(&p, "budget", dev->budget);
  td_pack_kv_u64(&p, "reserved", dev->reserved);
  td_pack_kv_u64(&p, "jobs", dev->njobs);
  td__publish(d, &p);
}
