/* The job socket (nanomsg REP) and the status socket (nanomsg PUB), driven
 * by the libuv loop through the REP socket's NN_RCVFD.  Every request is
 * answered at once: nothing here waits on a worker or the network, so a
 * cooked REP socket never holds up the next client.  This file dispatches
 * requests and decides who may make them; the fields of jobs, devices and
 * plans are written by serialize.c, the `plan` report by planreport.c and
 * the `logs` reply by logs.c. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <nanomsg/nn.h>
#include <nanomsg/pubsub.h>
#include <nanomsg/reqrep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "dataset.h"
#include "db.h"
#include "error.h"
#include "fairshare.h"
#include "jobdesc.h"
#include "ledger.h"
#include "log.h"
#include "logs.h"
#include "metrics.h"
#include "planreport.h"
#include "proto.h"
#include "serialize.h"
#include "server.h"
#include "supervise.h"
#include "td_config.h"
#include "td_sched.h"
#include "traind.h"
#include "util.h"

typedef int (*td_op_fn)(td_daemon *d, const td_ident *who, const msgpack_object *req,
                        td_pack *rep, char *err, size_t errlen);

/* The job a request names, if who may act on it.  Under private_data
 * another user's job does not exist as far as who can tell. */
static int td__job_arg(td_daemon *d, const td_ident *who, const msgpack_object *req,
                       td_job **out, char *err, size_t errlen) {
  uint64_t id = 0;
  td_job *j;

  td_obj_u64(req, "id", &id);
  j = td_daemon_find(d, id);
  if (j == NULL || (!td_ident_owns(who, j) && d->cfg.private_data)) {
    snprintf(err, errlen, "no job with id %llu; `traind-client ls` lists the jobs",
             (unsigned long long)id);
    return TD_ENOENT;
  }
  if (!td_ident_owns(who, j)) {
    snprintf(err, errlen, "job %llu belongs to %s; only its owner and traind's admins may see "
             "its details and logs, cancel it or change its priority",
             (unsigned long long)id, j->owner);
    return TD_EPERM;
  }
  *out = j;
  return 0;
}

/* Why a change could not be made durable, with what to do about it. */
static void td__db_fail(const td_daemon *d, int rc, const char *what, char *err, size_t errlen) {
  if (rc == TD_ENOSPC)
    snprintf(err, errlen, "cannot record %s: no room left on the disk of traind's state "
             "directory %s (it is full, over quota, or over traind's file size limit); free "
             "space there and try again; running jobs go on", what, d->cfg.state_dir);
  else
    snprintf(err, errlen, "cannot record %s in %s/jobs.db; see traind's log", what,
             d->cfg.state_dir);
}

static void td__reply_submitted(td_pack *rep, const td_job *j, int duplicate, const char *op) {
  td_map m;

  td_map_reply_ok(&m, rep, op);
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_str(&m, "name", j->name);
  td_map_kv_str(&m, "state", td_job_state_name(j->state));
  td_map_kv_bool(&m, "duplicate", duplicate);
  td_ser_plan(&m, &j->plan);
  if (j->device[0])
    td_map_kv_str(&m, "device", j->device);
  td_map_end(&m);
}

/* The train split's stored type sizes the staging arena in every plan.
 * traind never opens a path from a job file: the client reads the
 * dataset's headers with its user's rights and says what it found.  Only a
 * traind of one person, which runs as that person, may look itself when a
 * client did not say. */
static int td__sample_dtype(td_daemon *d, const msgpack_object *req, td_jobspec *spec,
                            char *err, size_t errlen) {
  char name[16];
  td_dataset_info info;
  int rc;

  if (td_obj_cstr(req, "sample_dtype", name, sizeof(name)) == 0) {
    for (int t = 0; t < TD_DTYPE_I64; t++) {
      if (strcmp(name, td_dtype_name((td_dtype)t)) == 0) {
        spec->sample_dtype = (td_dtype)t;
        return 0;
      }
    }
    snprintf(err, errlen, "sample_dtype '%s' is not a sample type; use uint8, int32, float16 "
             "or float32", name);
    return TD_EINVAL;
  }
  if (td_auth_multi_user(d->auth)) {
    snprintf(err, errlen, "the request has no sample_dtype: this traind serves several users "
             "and never reads a job's files itself, so the client checks the dataset with its "
             "user's rights and sends what it found; use traind-client");
    return TD_EPROTO;
  }
  /* Headers only (well under a millisecond for Fashion-MNIST): a dataset
   * that does not match the model is refused now, not after admission. */
  rc = td_dataset_check(spec, err, errlen);
  if (rc == 0)
    rc = td_dataset_probe(spec, &info, err, errlen);
  if (rc == 0)
    spec->sample_dtype = info.dtype;
  return rc;
}

/* A submit whose key was seen: REQ resent it, or the client retried.  The
 * same user with the same job file gets the job made the first time; a
 * key reused for something else is refused, never answered with another
 * job (as payment APIs do). */
static int td__resubmitted(td_daemon *d, const td_ident *who, td_job *j, const char *key,
                           const char *yaml, size_t ylen, const char *op, td_pack *rep,
                           char *err, size_t errlen) {
  char *was = NULL;
  int same;

  if (j->uid != who->uid) {
    snprintf(err, errlen, "the idempotency key '%s' was used by another user; make a new key "
             "for each submission", key);
    return TD_EINVAL;
  }
  if (td_db_job_yaml(d->db, j->id, &was) < 0) {
    snprintf(err, errlen, "cannot read job %llu back from the database to compare it",
             (unsigned long long)j->id);
    return TD_EDB;
  }
  same = strlen(was) == ylen && memcmp(was, yaml, ylen) == 0;
  free(was);
  if (!same) {
    snprintf(err, errlen, "the idempotency key '%s' was already used for job %llu, with a "
             "different job file; make a new key for each submission", key,
             (unsigned long long)j->id);
    return TD_EINVAL;
  }
  td__reply_submitted(rep, j, 1, op);
  return 0;
}

/* Whether who may queue one more job now: the limits every submission
 * meets.  *user is who's entry. */
static int td__may_queue(td_daemon *d, const td_ident *who, td_user **user, char *err,
                         size_t errlen) {
  if (td_auth_multi_user(d->auth) && getuid() != 0 && who->uid != (uint32_t)getuid()) {
    snprintf(err, errlen, "this traind runs as uid %u without root, so it can run jobs only as "
             "that user, not as %s; ask its administrator to run it as root",
             (unsigned)getuid(), who->name);
    return TD_EPERM;
  }
  if (d->nactive >= d->cfg.max_jobs) {
    snprintf(err, errlen, "the queue is full (%u jobs queued or running, the configured "
             "max_jobs); wait for some to finish or cancel some", d->cfg.max_jobs);
    return TD_EAGAIN;
  }
  *user = td_user_get(d, who->uid, who->name);
  if (*user == NULL)
    return TD_ENOMEM;
  if ((*user)->active >= d->cfg.max_jobs_per_user) {
    snprintf(err, errlen, "%s already has %u jobs queued or running, the limit max_jobs_per_user; "
             "wait for some to finish or cancel some (other users can still submit)", who->name,
             (*user)->active);
    return TD_EAGAIN;
  }
  return 0;
}

/* A new job, its results unknown yet. */
static td_job *td__job_new(void) {
  td_job *j = calloc(1, sizeof(*j));

  if (j == NULL)
    return NULL;
  j->accuracy = -1;
  j->val_accuracy = j->val_loss = j->train_accuracy = -1;
  j->top_k_accuracy = j->val_top_k_accuracy = j->mae = j->val_mae = j->train_mae = -1;
  if ((j->spec = malloc(sizeof(*j->spec))) == NULL) {
    free(j);
    return NULL;
  }
  return j;
}

/* The end of every submission: j (its spec, yaml and base_dir set) becomes
 * who's job: described, planned, recorded with key, queued and answered
 * as op.  Frees j on failure. */
static int td__enqueue(td_daemon *d, const td_ident *who, td_user *user, td_job *j,
                       const char *key, const char *name, const char *op, td_pack *rep,
                       char *err, size_t errlen) {
  int rc;

  j->sample_dtype = (int)j->spec->sample_dtype;
  j->top_k = j->spec->top_k;
  /* From here on the job is its description: stored with it, restored
   * from it, handed to its worker and loader (proto/jobdesc.h). */
  if ((rc = td_jobdesc_encode_alloc(j->spec, &j->desc, &j->desc_len)) < 0)
    goto free_job;
  j->uid = who->uid;
  j->gid = who->gid;
  td_strlcpy(j->owner, who->name, sizeof(j->owner));
  td_strlcpy(j->name, name[0] ? name : j->spec->name, sizeof(j->name));
  td_strlcpy(j->pin, j->spec->device, sizeof(j->pin));
  j->priority = j->spec->priority;
  j->epochs = j->spec->epochs;
  j->state = TD_JOB_QUEUED;
  j->submitted_ms = td_now_unix_ms();
  /* Plans the job too: the largest micro-batch its best device takes. */
  rc = td_sched_check_fit(d, j, err, errlen);
  if (rc == TD_ENOFIT) {
    /* The plan is the answer to "why does my job not fit". */
    td_map m;

    td_map_reply_err(&m, rep, rc, err);
    td_ser_plan(&m, &j->plan);
    td_map_end(&m);
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
    td__db_fail(d, rc, "the job", err, errlen);
    goto free_job;
  }
  d->jobs[d->njobs++] = j;
  d->nactive++;
  user->active++;
  free(j->yaml); /* recorded, for `show` */
  free(j->desc); /* recorded; j->spec is the same */
  j->yaml = NULL;
  j->desc = NULL;
  if (j->spec->continues != 0)
    td_info("job %llu (%s) submitted: continues job %llu to %u epochs; plan %llu bytes at "
            "micro-batch %u", (unsigned long long)j->id, j->name,
            (unsigned long long)j->spec->continues, j->spec->epochs,
            (unsigned long long)j->plan.total, j->plan.micro_batch);
  else
    td_info("job %llu (%s) submitted: plan %llu bytes at micro-batch %u",
            (unsigned long long)j->id, j->name, (unsigned long long)j->plan.total,
            j->plan.micro_batch);
  td_publish_state(d, j);
  td_sched_submitted(d, j);
  td__reply_submitted(rep, j, 0, op);
  return 0;

free_job:
  td_job_free(j);
  return rc;
}

static int td__op_submit(td_daemon *d, const td_ident *who, const msgpack_object *req,
                         td_pack *rep, char *err, size_t errlen) {
  const char *yaml;
  size_t ylen;
  char key[80], name[TD_NAME_MAX] = "", base[TD_PATH_MAX];
  uint64_t existing;
  td_user *user;
  td_job *j;
  int rc;

  if (td_obj_str(req, "job", &yaml, &ylen) < 0 || td_obj_cstr(req, "key", key, sizeof(key)) < 0)
    return TD_EPROTO;
  if (td_db_find_key(d->db, key, &existing) == 0 && (j = td_daemon_find(d, existing)) != NULL)
    return td__resubmitted(d, who, j, key, yaml, ylen, "submit", rep, err, errlen);
  if (memchr(yaml, '\0', ylen) != NULL) {
    snprintf(err, errlen, "the job file contains a NUL byte; job files are UTF-8 YAML text");
    return TD_EJOBSPEC;
  }
  if ((rc = td__may_queue(d, who, &user, err, errlen)) < 0)
    return rc;

  j = td__job_new();
  if (j == NULL)
    return TD_ENOMEM;
  j->yaml = strndup(yaml, ylen);
  if (j->yaml == NULL) {
    rc = TD_ENOMEM;
    goto free_job;
  }
  if (td_obj_cstr(req, "base_dir", base, sizeof(base)) < 0 || base[0] != '/') {
    snprintf(err, errlen, "base_dir must be an absolute directory (the job file's)");
    rc = TD_EINVAL;
    goto free_job;
  }
  /* On the heap: 10,000 queued jobs with a PATH_MAX array each is 10 MB. */
  if ((j->base_dir = strdup(base)) == NULL) {
    rc = TD_ENOMEM;
    goto free_job;
  }
  rc = td_jobspec_parse(j->yaml, ylen, j->base_dir, j->spec, err, errlen);
  if (rc < 0)
    goto free_job;
  if ((rc = td__sample_dtype(d, req, j->spec, err, errlen)) < 0)
    goto free_job;
  td_obj_cstr(req, "name", name, sizeof(name));
  return td__enqueue(d, who, user, j, key, name, "submit", rep, err, errlen);

free_job:
  td_job_free(j);
  return rc;
}

/* `submit --continue`: a new job from a succeeded job's description and
 * final state, for more epochs, only for its owner (the new job runs as
 * its owner; an admin may see the job, not train as its owner). */
static int td__op_continue(td_daemon *d, const td_ident *who, const msgpack_object *req,
                           td_pack *rep, char *err, size_t errlen) {
  char key[80], name[TD_NAME_MAX] = "", path[TD_PATH_MAX + 64], *yaml = NULL;
  unsigned char *desc = NULL;
  uint64_t id = 0, more = 0, existing, done;
  size_t len = 0;
  struct stat st;
  td_job *orig, *j = NULL;
  td_user *user;
  int rc;

  if (td_obj_u64(req, "id", &id) < 0 || td_obj_u64(req, "epochs", &more) < 0 ||
      td_obj_cstr(req, "key", key, sizeof(key)) < 0)
    return TD_EPROTO;
  orig = td_daemon_find(d, id);
  if (orig == NULL || (orig->uid != who->uid && d->cfg.private_data && !td_ident_owns(who, orig))) {
    snprintf(err, errlen, "no job with id %llu; `traind-client ls` lists the jobs",
             (unsigned long long)id);
    return TD_ENOENT;
  }
  if (orig->uid != who->uid) {
    snprintf(err, errlen, "job %llu is not yours (it belongs to %s); only its owner may "
             "continue it", (unsigned long long)id, orig->owner);
    return TD_EPERM;
  }
  if ((rc = td_db_job_yaml(d->db, id, &yaml)) < 0) {
    snprintf(err, errlen, "cannot read job %llu back from the database", (unsigned long long)id);
    return TD_EDB;
  }
  /* the same key again: the job made the first time, if it continued the
   * same job file */
  if (td_db_find_key(d->db, key, &existing) == 0 && (j = td_daemon_find(d, existing)) != NULL) {
    rc = td__resubmitted(d, who, j, key, yaml, strlen(yaml), "continue", rep, err, errlen);
    goto free_yaml;
  }
  j = NULL;
  if (orig->state != TD_JOB_SUCCEEDED) {
    snprintf(err, errlen, "job %llu is %s; --continue needs a finished job (one that "
             "succeeded)", (unsigned long long)id, td_job_state_name(orig->state));
    rc = TD_ESTATE;
    goto free_yaml;
  }
  /* traind only looks whether it is there: the worker reads it, as the user */
  snprintf(path, sizeof(path), "%s/jobs/%llu/" TD_FINAL_STATE_FILE, d->cfg.state_dir,
           (unsigned long long)id);
  if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode) ||
      (rc = td_db_job_desc(d->db, id, &desc, &len)) < 0) {
    snprintf(err, errlen, "job %llu kept no final state to continue from (it succeeded "
             "before traind kept final states, or retention removed its directory); submit "
             "its job file again", (unsigned long long)id);
    rc = TD_ESTATE;
    goto free_yaml;
  }
  /* the epochs it trained: fewer than its job file's when it stopped early */
  done = orig->epoch > 0 ? orig->epoch : orig->epochs;
  if (done + more > 10000) {
    snprintf(err, errlen, "job %llu trained %llu epochs; %llu more make more than the 10000 a "
             "job may have", (unsigned long long)id, (unsigned long long)done,
             (unsigned long long)more);
    rc = TD_EINVAL;
    goto free_desc;
  }
  if ((rc = td__may_queue(d, who, &user, err, errlen)) < 0)
    goto free_desc;
  if ((j = td__job_new()) == NULL) {
    rc = TD_ENOMEM;
    goto free_desc;
  }
  if ((rc = td_jobdesc_decode(desc, len, j->spec, err, errlen)) < 0) {
    size_t n = strlen(err);

    snprintf(err + n, errlen - n, " (job %llu's recorded description)",
             (unsigned long long)id);
    goto free_job;
  }
  j->spec->epochs = (uint32_t)(done + more);
  j->spec->continues = id;
  j->yaml = yaml; /* the original's, for `show` and the key's check */
  yaml = NULL;
  if ((j->base_dir = strdup(orig->base_dir != NULL ? orig->base_dir : "/")) == NULL) {
    rc = TD_ENOMEM;
    goto free_job;
  }
  td_obj_cstr(req, "name", name, sizeof(name));
  rc = td__enqueue(d, who, user, j, key, name, "continue", rep, err, errlen);
  j = NULL;
free_job:
  if (j != NULL)
    td_job_free(j);
free_desc:
  free(desc);
free_yaml:
  free(yaml);
  return rc;
}

#define TD_LIST_PAGE 1000

static int td__listed(const td_daemon *d, const td_ident *who, const td_job *j,
                      td_job_state state, const char *owner, const char *device) {
  return (state == TD_JOB__NSTATES || j->state == state) &&
         (owner[0] == '\0' || strcmp(j->owner, owner) == 0) &&
         (device[0] == '\0' || strcmp(j->device, device) == 0 || strcmp(j->pin, device) == 0) &&
         (!d->cfg.private_data || td_ident_owns(who, j));
}

/* A page of jobs in id order, after a given id: a client pages through any
 * number of jobs with replies far below the message limit. */
static int td__op_list(td_daemon *d, const td_ident *who, const msgpack_object *req,
                       td_pack *rep, char *err, size_t errlen) {
  char state_s[32], owner[33] = "", device[32] = "";
  td_job_state filter = TD_JOB__NSTATES;
  uint64_t limit = TD_LIST_PAGE, after = 0, n = 0;
  size_t first, i;
  td_map m;

  if (td_obj_cstr(req, "state", state_s, sizeof(state_s)) == 0 &&
      td_job_state_parse(state_s, &filter) < 0) {
    snprintf(err, errlen, "unknown state '%s'; use queued, running, succeeded, failed or "
             "cancelled", state_s);
    return TD_EINVAL;
  }
  td_obj_u64(req, "limit", &limit);
  td_obj_u64(req, "after", &after);
  td_obj_cstr(req, "owner", owner, sizeof(owner));
  td_obj_cstr(req, "device", device, sizeof(device));
  first = td_daemon_first_after(d, after);
  for (i = first; i < d->njobs && n < limit; i++)
    if (td__listed(d, who, d->jobs[i], filter, owner, device))
      n++;
  /* i is past the page's last row: is there a row after it? */
  while (i < d->njobs && !td__listed(d, who, d->jobs[i], filter, owner, device))
    i++;
  td_map_reply_ok(&m, rep, "list");
  td_map_kv_bool(&m, "more", i < d->njobs);
  td_map_kv_array(&m, "jobs", (uint32_t)n);
  for (i = first; i < d->njobs && n > 0; i++) {
    if (!td__listed(d, who, d->jobs[i], filter, owner, device))
      continue;
    td_ser_job_row(&m, d->jobs[i]);
    n--;
  }
  td_map_end(&m);
  return 0;
}

static int td__op_show(td_daemon *d, const td_ident *who, const msgpack_object *req,
                       td_pack *rep, char *err, size_t errlen) {
  td_job *j;
  td_map m;
  int rc = td__job_arg(d, who, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  td_map_reply_ok(&m, rep, "show");
  td_ser_job(&m, j);
  td_map_end(&m);
  return 0;
}

static int td__op_cancel(td_daemon *d, const td_ident *who, const msgpack_object *req,
                         td_pack *rep, char *err, size_t errlen) {
  td_job *j;
  td_map m;
  int rc = td__job_arg(d, who, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  switch (j->state) {
  case TD_JOB_QUEUED:
    td_job_set(&j->error, "cancelled");
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
  td_map_reply_ok(&m, rep, "cancel");
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_str(&m, "state", j->state == TD_JOB_RUNNING ? "cancelling"
                                                         : td_job_state_name(j->state));
  td_map_end(&m);
  return 0;
}

static int td__op_info(td_daemon *d, const td_ident *who, const msgpack_object *req,
                       td_pack *rep, char *err, size_t errlen) {
  td_map m;

  (void)req;
  (void)err;
  (void)errlen;
  td_map_reply_ok(&m, rep, "info");
  td_map_kv_str(&m, "version", TD_VERSION);
  td_map_kv_u64(&m, "protocol", TD_PROTO_VERSION);
  td_map_kv_f64(&m, "uptime_s", td_now_mono() - d->start_mono);
  td_map_kv_str(&m, "status_socket", d->cfg.status_socket);
  td_map_kv_u64(&m, "jobs", d->njobs);
  td_map_end(&m);
  return 0;
}

static int td__op_devices(td_daemon *d, const td_ident *who, const msgpack_object *req,
                          td_pack *rep, char *err, size_t errlen) {
  td_map m, e;

  (void)req;
  (void)err;
  (void)errlen;
  td_map_reply_ok(&m, rep, "devices");
  td_map_kv_array(&m, "devices", (uint32_t)d->ndevices);
  for (int i = 0; i < d->ndevices; i++) {
    td_map_item(&m, &e);
    td_ser_device(&e, &d->devices[i]);
  }
  td_map_end(&m);
  return 0;
}

/* An admin's change is recorded before it is made, so a restart or a
 * reload keeps it (td__overrides_apply in main.c); the config's budget is
 * the most a device may have. */
static int td__op_device(td_daemon *d, const td_ident *who, const msgpack_object *req,
                         td_pack *rep, char *err, size_t errlen) {
  char name[32];
  uint64_t budget, ob;
  int drain, od, has_budget, has_drain, rc;
  td_device *dev;
  td_map m, e;

  if (!who->admin) {
    snprintf(err, errlen, "only traind's admins (root%s%s) may change a device; %s is not one",
             d->cfg.admin_group[0] ? " and the group " : "", d->cfg.admin_group, who->name);
    return TD_EPERM;
  }
  td_obj_cstr(req, "name", name, sizeof(name));
  dev = td_ledger_device(d, name);
  if (dev == NULL) {
    snprintf(err, errlen, "no device named '%s'; `traind-client devices` lists them", name);
    return TD_ENOENT;
  }
  has_budget = td_obj_u64(req, "budget", &budget) == 0;
  has_drain = td_obj_bool(req, "drain", &drain) == 0;
  ob = dev->override_budget;
  od = dev->override_drain;
  if (has_budget) {
    if (budget > dev->cfg_limit) {
      char want[32], cfg[32];

      td_format_size(budget, want, sizeof(want));
      td_format_size(dev->cfg_limit, cfg, sizeof(cfg));
      snprintf(err, errlen, "device %s: %s is more than the %s traind's configuration gives it; "
               "`device` may lower a budget, not raise it: raise it in %s and reload traind "
               "(systemctl reload traind)", name, want, cfg,
               d->config_path ? d->config_path : "a config file");
      return TD_EINVAL;
    }
    ob = budget == dev->cfg_limit ? 0 : budget; /* the config's own: no override */
  }
  if (has_drain)
    od = drain;
  if (ob != dev->override_budget || od != dev->override_drain) {
    if ((rc = td_db_override_save(d->db, dev->name, ob, od)) < 0) {
      td__db_fail(d, rc, "the device change", err, errlen);
      return rc;
    }
    dev->override_budget = ob;
    dev->override_drain = od;
  }
  if (has_budget && td_device_limit(dev) != dev->limit) {
    td_info("device %s: budget %llu -> %llu bytes (%llu reserved)%s", dev->name,
            (unsigned long long)dev->limit, (unsigned long long)td_device_limit(dev),
            (unsigned long long)dev->reserved,
            ob != 0 ? "; kept across restarts and reloads until an admin sets it back" : "");
    td_device_set_limit(dev, td_device_limit(dev)); /* still capped by what the probe found free */
    td_sched_squeeze(d, dev);
  }
  if (has_drain && drain != dev->draining) {
    td_ledger_drain(dev, drain);
    td_info("device %s: %s", dev->name, drain ? "draining: no new jobs, until an admin resumes "
            "it (kept across restarts and reloads)" : "resumed");
  }
  td_publish_device(d, dev);
  td_map_reply_ok(&m, rep, "device");
  td_map_kv_map(&m, "device", &e);
  td_ser_device(&e, dev);
  td_map_end(&m);
  return 0;
}

static int td__op_set_priority(td_daemon *d, const td_ident *who, const msgpack_object *req,
                               td_pack *rep, char *err, size_t errlen) {
  td_job *j;
  int64_t prio = 0;
  int32_t was;
  td_map m;
  int rc = td__job_arg(d, who, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  if (j->state != TD_JOB_QUEUED && j->state != TD_JOB_RUNNING) {
    snprintf(err, errlen, "job %llu has already %s; its priority no longer matters",
             (unsigned long long)j->id, td_job_state_name(j->state));
    return TD_ESTATE;
  }
  td_obj_i64(req, "priority", &prio);
  was = j->priority;
  j->priority = (int32_t)prio;
  rc = td_db_update(d->db, j, "priority changed");
  if (rc < 0) {
    j->priority = was; /* refused: memory and the journal stay the same */
    td__db_fail(d, rc, "the new priority", err, errlen);
    return rc;
  }
  td_map_reply_ok(&m, rep, "set-priority");
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_i64(&m, "priority", j->priority);
  td_map_end(&m);
  return 0;
}

/* "Why does my job not fit": the plan of a job file on each device, per
 * layer, its largest tensors and what each remedy would save.  Nothing
 * is submitted or reserved. */
static int td__op_plan(td_daemon *d, const td_ident *who, const msgpack_object *req,
                       td_pack *rep, char *err, size_t errlen) {
  char base[TD_PATH_MAX], only[32] = "";
  const char *yaml;
  size_t ylen;
  td_jobspec *spec;
  char *text;
  int rc;

  if (td_obj_str(req, "job", &yaml, &ylen) < 0 ||
      td_obj_cstr(req, "base_dir", base, sizeof(base)) < 0)
    return TD_EPROTO;
  if (base[0] != '/') {
    snprintf(err, errlen, "base_dir must be an absolute directory (the job file's)");
    return TD_EINVAL;
  }
  td_obj_cstr(req, "device", only, sizeof(only));
  if (only[0] != '\0' && td_ledger_device(d, only) == NULL) {
    snprintf(err, errlen, "no device named '%s'; `traind-client devices` lists them", only);
    return TD_ENOENT;
  }
  if (memchr(yaml, '\0', ylen) != NULL) {
    snprintf(err, errlen, "the job file contains a NUL byte; job files are UTF-8 YAML text");
    return TD_EJOBSPEC;
  }
  spec = malloc(sizeof(*spec));
  text = strndup(yaml, ylen);
  if (spec == NULL || text == NULL) {
    rc = TD_ENOMEM;
    goto free_spec;
  }
  if ((rc = td_jobspec_parse(text, ylen, base, spec, err, errlen)) < 0 ||
      (rc = td__sample_dtype(d, req, spec, err, errlen)) < 0)
    goto free_spec;
  rc = td_planreport(d, spec, only, rep, err, errlen);
free_spec:
  free(text);
  free(spec);
  return rc;
}

/* Logs are read in bounded pieces (logs.c); only the job's owner and
 * admins may. */
static int td__op_logs(td_daemon *d, const td_ident *who, const msgpack_object *req,
                       td_pack *rep, char *err, size_t errlen) {
  td_job *j;
  int rc = td__job_arg(d, who, req, &j, err, errlen);

  if (rc < 0)
    return rc;
  return td_logs_reply(d, j, req, rep);
}

/* changes: the op may let a queued job start (reads are answered without
 * walking the queue, so they stay cheap however long it is). */
static const struct {
  const char *op;
  td_op_fn fn;
  int changes;
} td__ops[] = {
    {"submit", td__op_submit, 0},   {"list", td__op_list, 0},
    {"show", td__op_show, 0},       {"cancel", td__op_cancel, 1},
    {"info", td__op_info, 0},       {"devices", td__op_devices, 0},
    {"device", td__op_device, 1},   {"logs", td__op_logs, 0},
    {"set-priority", td__op_set_priority, 1}, {"plan", td__op_plan, 0},
    {"continue", td__op_continue, 0},
};

/* A request whose credential munged is checking; the job socket is not
 * read meanwhile (a cooked REP socket answers one request at a time, and
 * the loop keeps serving workers, timers and signals). */
typedef struct td__pending {
  uv_work_t work;
  td_daemon *d;
  td_msg *msg;
  const td_msgdef *def;
  char *cred;              /* NUL-terminated copy for libmunge */
  size_t credlen;
  td_ident who;
  time_t expires;
  int rc;
  char err[512];
  double t0;               /* when it arrived (td_now_mono), for its latency */
} td__pending;

/* Runs the op for who; returns whether the scheduler should run. */
static int td__dispatch(td_daemon *d, const td_msgdef *def, const td_msg *msg,
                        const td_ident *who, td_pack *rep, char *err, size_t errlen,
                        int *rcp) {
  int rc = TD_EINTERNAL;

  for (size_t i = 0; i < TD_ARRAY_SIZE(td__ops); i++) {
    if (strcmp(td__ops[i].op, def->op) == 0) {
      rc = td__ops[i].fn(d, who, td_msg_root(msg), rep, err, errlen);
      *rcp = rc;
      return td__ops[i].changes && rc == 0;
    }
  }
  *rcp = rc;
  return 0;
}

static void td__reply_err(td_pack *rep, int rc, const char *msg) {
  td_map m;

  td_map_reply_err(&m, rep, rc, msg);
  td_map_end(&m);
}

/* A handler may have packed an error reply with details of its own. */
static void td__reply_error(td_pack *rep, int rc, char *err, size_t errlen) {
  if (rc < 0 && td_pack_len(rep) == 0) {
    if (err[0] == '\0')
      snprintf(err, errlen, "%s", td_strerror(rc));
    td__reply_err(rep, rc, err);
  }
}

static void td__send_reply(td_daemon *d, td_pack *rep) {
  if (td_pack_error(rep) < 0) {
    int code = td_pack_error(rep);
    char msg[256];

    if (code == TD_ETOOBIG)
      snprintf(msg, sizeof(msg), "the reply would exceed the protocol's 2 MiB limit; ask for "
               "less (list takes a limit and a state)");
    else if (code == TD_EINTERNAL)
      snprintf(msg, sizeof(msg), "traind built a reply its protocol catalogue does not "
               "describe (a bug; please report it): %s", rep->why);
    else
      snprintf(msg, sizeof(msg), "traind ran out of memory building the reply");
    if (code == TD_EINTERNAL)
      td_warn("job socket: %s", msg);
    td_pack_free(rep);
    td_pack_init(rep);
    td__reply_err(rep, code, msg);
  }
  if (nn_send(d->rep_sock, td_pack_data(rep), td_pack_len(rep), NN_DONTWAIT) < 0)
    td_warn("job socket: reply not sent: %s", nn_strerror(errno));
  td_pack_free(rep);
}

static void td__on_request(uv_poll_t *h, int status, int events);

static void td__decode_work(uv_work_t *w) {
  td__pending *p = w->data;

  p->rc = td_auth_decode(p->d->auth, p->cred, &p->who, &p->expires, p->err, sizeof(p->err));
}

static void td__decode_done(uv_work_t *w, int status) {
  td__pending *p = w->data;
  td_daemon *d = p->d;
  td_pack rep;
  int changes = 0, rc = p->rc;

  if (status == UV_ECANCELED || d->stopping || uv_is_closing((uv_handle_t *)&d->rep_poll))
    goto free_pending;
  td_pack_init(&rep);
  if (rc == 0) {
    td_auth_remember(d->auth, p->cred, p->credlen, &p->who, p->expires);
    changes = td__dispatch(d, p->def, p->msg, &p->who, &rep, p->err, sizeof(p->err), &rc);
  } else {
    td_info("job socket: refused a '%s' request: %s", p->def->op, p->err);
  }
  td__reply_error(&rep, rc, p->err, sizeof(p->err));
  td__send_reply(d, &rep);
  td_metrics_request(p->def->op, rc, td_now_mono() - p->t0);
  if (changes)
    td_sched_run(d);
  uv_poll_start(&d->rep_poll, UV_READABLE, td__on_request);
  td__on_request(&d->rep_poll, 0, UV_READABLE); /* what came meanwhile */
free_pending:
  td_msg_free(p->msg);
  free(p->cred);
  free(p);
}

/* Answers one request into rep; returns whether the scheduler should run,
 * or -1 when the request went to a worker thread to have its credential
 * checked (it is answered from there, and the socket waits). */
static int td__handle(td_daemon *d, const void *buf, size_t len, td_pack *rep) {
  double t0 = td_now_mono();
  char err[1024] = "";
  const td_msgdef *def = NULL;
  const char *cred = NULL;
  size_t credlen = 0;
  td_msg *msg = NULL;
  td_ident who;
  int rc, changes = 0;

  rc = td_proto_parse_request(buf, len, &msg, &def, err, sizeof(err));
  if (rc == 0) {
    td_obj_str(td_msg_root(msg), "cred", &cred, &credlen);
    rc = td_auth_lookup(d->auth, cred, credlen, &who, err, sizeof(err));
  }
  if (rc == TD_ENOENT) {
    td__pending *p = calloc(1, sizeof(*p));

    if (p == NULL || (p->cred = strndup(cred, credlen)) == NULL) {
      free(p);
      rc = TD_ENOMEM;
      goto reply;
    }
    p->d = d;
    p->msg = msg;
    p->def = def;
    p->credlen = credlen;
    p->t0 = t0;
    p->work.data = p;
    if (uv_queue_work(d->loop, &p->work, td__decode_work, td__decode_done) < 0) {
      free(p->cred);
      free(p);
      rc = TD_EINTERNAL;
      goto reply;
    }
    uv_poll_stop(&d->rep_poll);
    return -1;
  }
  if (rc == 0)
    changes = td__dispatch(d, def, msg, &who, rep, err, sizeof(err), &rc);
reply:
  td__reply_error(rep, rc, err, sizeof(err));
  td_metrics_request(msg != NULL ? def->op : NULL, rc, td_now_mono() - t0);
  td_msg_free(msg);
  return changes;
}

static void td__on_request(uv_poll_t *h, int status, int events) {
  td_daemon *d = h->data;
  int changes = 0;

  (void)status;
  (void)events;
  for (;;) {
    void *buf = NULL;
    td_pack rep;
    int n = nn_recv(d->rep_sock, &buf, NN_MSG, NN_DONTWAIT), rc;

    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR)
        td_warn("job socket: receive failed: %s", nn_strerror(errno));
      break;
    }
    td_pack_init(&rep);
    rc = td__handle(d, buf, (size_t)n, &rep);
    nn_freemsg(buf);
    if (rc < 0) {
      td_pack_free(&rep);
      break; /* answered when munged has spoken */
    }
    changes |= rc;
    td__send_reply(d, &rep);
  }
  if (changes)
    td_sched_run(d);
}

/* An ipc:// socket's path, or NULL for tcp://. */
static const char *td__ipc_path(const char *addr) {
  return strncmp(addr, "ipc://", 6) == 0 ? addr + 6 : NULL;
}

/* The directory of an ipc:// socket must exist.  Who may connect is the
 * socket's mode and group (socket_mode, socket_group), set after the bind
 * whatever the umask; a directory of traind's own is made searchable by
 * the same people, and never more. */
static int td__prepare_ipc(const td_config *cfg, const char *addr, gid_t gid, char *err,
                           size_t errlen) {
  mode_t mode = 0700 | (cfg->socket_mode & 0060 ? 0050 : 0) | (cfg->socket_mode & 0006 ? 0005 : 0);
  const char *path = td__ipc_path(addr);
  char dir[512];
  struct stat st;
  char *slash;

  if (path == NULL)
    return 0;
  if (td_strlcpy(dir, path, sizeof(dir)) < 0)
    return TD_ETOOBIG;
  slash = strrchr(dir, '/');
  if (slash == NULL || slash == dir)
    return 0;
  *slash = '\0';
  if (td_mkdir_p(dir, 0700) < 0) {
    snprintf(err, errlen, "cannot create the socket directory %s: %s", dir, strerror(errno));
    return TD_EIO;
  }
  /* A directory others may write to (/tmp) is not ours to change. */
  if (lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() &&
      (st.st_mode & 0002) == 0 &&
      ((gid != (gid_t)-1 && lchown(dir, (uid_t)-1, gid) < 0) || chmod(dir, mode) < 0)) {
    snprintf(err, errlen, "cannot set the mode of the socket directory %s: %s", dir,
             strerror(errno));
    return TD_EIO;
  }
  return 0;
}

static int td__bind(const td_config *cfg, int sock, const char *addr, const char *what,
                    char *err, size_t errlen) {
  const char *path = td__ipc_path(addr);
  gid_t gid = (gid_t)-1;
  mode_t old;
  int rc;

  if (cfg->socket_group[0] != '\0') {
    struct group gr, *res = NULL;
    char buf[4096];

    if (getgrnam_r(cfg->socket_group, &gr, buf, sizeof(buf), &res) != 0 || res == NULL) {
      snprintf(err, errlen, "socket_group '%s' is not a group on this system; create it "
               "(groupadd %s) or change the configuration", cfg->socket_group,
               cfg->socket_group);
      return TD_ECONFIG;
    }
    gid = gr.gr_gid;
  }
  if ((rc = td__prepare_ipc(cfg, addr, gid, err, errlen)) < 0)
    return rc;
  old = umask(0077); /* born private; opened to socket_mode below */
  rc = nn_bind(sock, addr);
  umask(old);
  if (rc < 0) {
    snprintf(err, errlen, "cannot bind the %s to %s: %s%s", what, addr, nn_strerror(errno),
             errno == EADDRINUSE ? " (is another traind running?)" : "");
    return TD_EIO;
  }
  if (path != NULL &&
      ((gid != (gid_t)-1 && lchown(path, (uid_t)-1, gid) < 0) ||
       chmod(path, (mode_t)cfg->socket_mode) < 0)) {
    snprintf(err, errlen, "cannot set the mode of the %s %s: %s", what, path, strerror(errno));
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
  if ((rc = td__bind(&d->cfg, d->rep_sock, d->cfg.socket, "job socket", err, errlen)) < 0 ||
      (rc = td__bind(&d->cfg, d->pub_sock, d->cfg.status_socket, "status socket", err,
                     errlen)) < 0)
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

/* Ends the event m packed into p and sends it. */
static void td__publish(td_daemon *d, td_pack *p, td_map *m) {
  td_map_end(m);
  if (td_pack_error(p) < 0)
    td_warn("status socket: an event was not sent: %s",
            td_pack_error(p) == TD_EINTERNAL ? p->why : td_strerror(td_pack_error(p)));
  else /* PUB never blocks; a subscriber too slow to keep up loses messages. */
    nn_send(d->pub_sock, td_pack_data(p), td_pack_len(p), NN_DONTWAIT);
  td_pack_free(p);
}

void td_publish_state(td_daemon *d, const td_job *j) {
  td_pack p;
  td_map m;

  td_pack_init(&p);
  /* Every subscriber gets every event: under private_data, nothing a
   * user wrote (names, paths in errors) goes out. */
  td_map_event(&m, &p, TD_TOPIC_JOB_STATE);
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_str(&m, "name", d->cfg.private_data ? "" : j->name);
  td_map_kv_str(&m, "state", td_job_state_name(j->state));
  td_map_kv_str(&m, "device", j->device);
  td_map_kv_str(&m, "error", d->cfg.private_data ? "" : TD_JOB_STR(j->error));
  td__publish(d, &p, &m);
}

void td_publish_progress(td_daemon *d, const td_job *j, double eta_s) {
  td_pack p;
  td_map m;

  td_pack_init(&p);
  td_map_event(&m, &p, TD_TOPIC_JOB_PROGRESS);
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_u64(&m, "epoch", j->epoch);
  td_map_kv_u64(&m, "epochs", j->epochs);
  td_map_kv_u64(&m, "step", j->step);
  td_map_kv_u64(&m, "steps", j->steps);
  td_map_kv_f64(&m, "loss", j->loss);
  td_map_kv_f64(&m, "samples_per_sec", j->samples_per_sec);
  td_map_kv_f64(&m, "eta_s", eta_s);
  td_map_kv_f64(&m, "accuracy", j->accuracy);
  td_map_kv_f64(&m, "train_accuracy", j->train_accuracy);
  td_map_kv_f64(&m, "train_mae", j->train_mae);
  td_map_kv_f64(&m, "data_wait", j->data_wait);
  td_map_kv_u64(&m, "mem", j->mem);
  td__publish(d, &p, &m);
}

void td_publish_eval(td_daemon *d, const td_job *j, uint32_t epoch, double acc, double loss) {
  td_pack p;
  td_map m;

  td_pack_init(&p);
  /* The worker evaluates the validation split first, so its numbers are
   * this epoch's. */
  td_map_event(&m, &p, TD_TOPIC_JOB_EVAL);
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_u64(&m, "epoch", epoch);
  td_map_kv_f64(&m, "accuracy", acc);
  td_map_kv_f64(&m, "loss", loss);
  td_map_kv_f64(&m, "val_accuracy", j->val_accuracy);
  td_map_kv_f64(&m, "val_loss", j->val_loss);
  td_map_kv_f64(&m, "top_k_accuracy", j->top_k_accuracy);
  td_map_kv_f64(&m, "val_top_k_accuracy", j->val_top_k_accuracy);
  td_map_kv_f64(&m, "mae", j->mae);
  td_map_kv_f64(&m, "val_mae", j->val_mae);
  td__publish(d, &p, &m);
}

void td_publish_device(td_daemon *d, const td_device *dev) {
  td_pack p;
  td_map m;

  td_pack_init(&p);
  td_map_event(&m, &p, TD_TOPIC_DEVICE);
  td_map_kv_str(&m, "name", dev->name);
  td_map_kv_u64(&m, "budget", dev->budget);
  td_map_kv_u64(&m, "reserved", dev->reserved);
  td_map_kv_u64(&m, "jobs", dev->njobs);
  td__publish(d, &p, &m);
}

void td_publish_oom(td_daemon *d, const td_job *j, const char *phase, uint64_t requested,
                    uint64_t free_bytes, uint32_t micro_batch) {
  td_pack p;
  td_map m;

  td_pack_init(&p);
  td_map_event(&m, &p, TD_TOPIC_JOB_OOM);
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_str(&m, "device", j->device);
  td_map_kv_str(&m, "phase", phase);
  td_map_kv_u64(&m, "requested", requested);
  td_map_kv_u64(&m, "free", free_bytes);
  td_map_kv_u64(&m, "micro_batch", micro_batch);
  td__publish(d, &p, &m);
}

void td_publish_replan(td_daemon *d, const td_job *j) {
  td_pack p;
  td_map m;

  td_pack_init(&p);
  td_map_event(&m, &p, TD_TOPIC_JOB_REPLAN);
  td_map_kv_u64(&m, "id", j->id);
  td_map_kv_str(&m, "device", j->device);
  td_ser_plan(&m, &j->plan);
  td__publish(d, &p, &m);
}
