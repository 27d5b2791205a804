#include "harness.h"

#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <errno.h>
#include <fcntl.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <munge.h>

#include "dataset.h"
#include "error.h"
#include "jobspec.h"
#include "util.h"

static char th__munge_sock[192];
static char *th__cred_cache;
static char th__user[33]; /* "": this process's own */
/* bench_load's clients are threads */
static pthread_mutex_t th__cred_lock = PTHREAD_MUTEX_INITIALIZER;

void th_msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
    ;
}

static const char *th__build_root(void) {
  const char *b = getenv("TD_BUILD_ROOT");
  return b ? b : "build";
}

static int th__write_text(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  size_t n = strlen(text);
  int rc = 0;

  if (fd < 0)
    return TD_EIO;
  if (write(fd, text, n) != (ssize_t)n)
    rc = TD_EIO;
  close(fd);
  return rc;
}

int th_stub_libexec(const char *dir) {
  static const char script[] =
      "#!/bin/sh\n"
      "# Stands in for traind-worker/traind-loader in tests: it holds its job's\n"
      "# reservation until traind, its parent, is gone or stops it.\n"
      "while kill -0 \"$PPID\" 2>/dev/null; do sleep 0.2; done\n";
  static const char *const names[] = {"traind-worker", "traind-loader"};
  char path[512];

  if (mkdir(dir, 0755) < 0 && errno != EEXIST)
    return TD_EIO;
  for (size_t i = 0; i < TD_ARRAY_SIZE(names); i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
    if (th__write_text(path, script, 0755) < 0)
      return TD_EIO;
  }
  return 0;
}

int th_daemon_config(th_daemon *d, const char *budget, const char *extra, int stub_workers) {
  char text[4096], stub[256] = "";

  if (stub_workers) {
    char dir[160];
    snprintf(dir, sizeof(dir), "%s/stub", d->dir);
    if (th_stub_libexec(dir) < 0)
      return TD_EIO;
    snprintf(stub, sizeof(stub), "libexec_dir: %s\n", dir);
  }
  if (d->munge_sock[0] != '\0')
    snprintf(stub + strlen(stub), sizeof(stub) - strlen(stub), "munge_socket: %s\n",
             d->munge_sock);
  /* As root traind serves metrics on 127.0.0.1:9464 by default: tests that
   * run side by side must not race for the port, so only those that name
   * one get one. */
  if (extra == NULL || strstr(extra, "metrics_listen:") == NULL)
    snprintf(stub + strlen(stub), sizeof(stub) - strlen(stub), "metrics_listen: \"\"\n");
  snprintf(text, sizeof(text),
           "socket: %s\n"
           "status_socket: ipc://%s/status.sock\n"
           "state_dir: %s\n"
           "cancel_grace_ms: 2000\n"
           "%s"
           "devices:\n"
           "  - {name: cpu0, budget: %s}\n"
           "%s",
           d->sock, d->dir, d->state, stub, budget, extra ? extra : "");
  return th__write_text(d->cfg, text, 0644);
}

int th_daemon_init(th_daemon *d, const char *budget, const char *extra, int stub_workers) {
  const char *tmp = getenv("TMPDIR");

  memset(d, 0, sizeof(*d));
  d->pid = -1;
  /* A unix socket path holds 107 bytes: keep the directory short. */
  if (tmp == NULL || tmp[0] != '/' || strlen(tmp) > 60)
    tmp = "/tmp";
  snprintf(d->dir, sizeof(d->dir), "%s/traind-test.XXXXXX", tmp);
  if (mkdtemp(d->dir) == NULL)
    return TD_EIO;
  snprintf(d->cfg, sizeof(d->cfg), "%s/traind.yaml", d->dir);
  snprintf(d->log, sizeof(d->log), "%s/traind.log", d->dir);
  snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
  snprintf(d->db, sizeof(d->db), "%s/jobs.db", d->state);
  snprintf(d->sockpath, sizeof(d->sockpath), "%s/traind.sock", d->dir);
  snprintf(d->sock, sizeof(d->sock), "ipc://%s", d->sockpath);
  if (geteuid() == 0) {
    char dir[160];

    snprintf(dir, sizeof(dir), "%s/munge", d->dir);
    /* munged wants every directory above its socket searchable by all */
    chmod(d->dir, 0755);
    if (th_munged_start(dir, d->munge_sock, sizeof(d->munge_sock), &d->munged) < 0)
      return TD_EIO;
    th_set_munge_socket(d->munge_sock);
    setenv("TRAIND_MUNGE_SOCKET", d->munge_sock, 1);
  }
  return th_daemon_config(d, budget, extra, stub_workers);
}

int th_munged_start(const char *dir, char *sock, size_t cap, pid_t *out) {
  char cmd[512], key[200], pidf[200], logf[200], seedf[200];
  struct stat st;
  pid_t pid;

  if (mkdir(dir, 0755) < 0 && errno != EEXIST)
    return TD_EIO;
  chmod(dir, 0755);
  snprintf(key, sizeof(key), "%s/key", dir);
  snprintf(sock, cap, "%s/sock", dir);
  snprintf(cmd, sizeof(cmd), "mungekey -c -f -k '%s' -b 1024", key);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot make a munge key in %s (apt-get install munge)\n", dir);
    return TD_EIO;
  }
  snprintf(pidf, sizeof(pidf), "%s/pid", dir);
  snprintf(logf, sizeof(logf), "%s/log", dir);
  snprintf(seedf, sizeof(seedf), "%s/seed", dir);
  /* In the foreground, as this process's child: it ends with the test
   * that started it, passed, failed or killed. */
  pid = fork();
  if (pid < 0)
    return TD_EIO;
  if (pid == 0) {
    char a_key[220], a_sock[220], a_pid[220], a_log[220], a_seed[220];

    prctl(PR_SET_PDEATHSIG, SIGTERM);
    snprintf(a_key, sizeof(a_key), "--key-file=%s", key);
    snprintf(a_sock, sizeof(a_sock), "--socket=%s", sock);
    snprintf(a_pid, sizeof(a_pid), "--pid-file=%s", pidf);
    snprintf(a_log, sizeof(a_log), "--log-file=%s", logf);
    snprintf(a_seed, sizeof(a_seed), "--seed-file=%s", seedf);
    execlp("munged", "munged", "--foreground", a_key, a_sock, a_pid, a_log, a_seed,
           "--num-threads=2", (char *)NULL);
    fprintf(stderr, "cannot run munged: %s (apt-get install munge)\n", strerror(errno));
    _exit(127);
  }
  *out = pid;
  for (int i = 0; i < 250 && stat(sock, &st) != 0; i++) {
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      *out = 0;
      return TD_EIO; /* its log says why */
    }
    th_msleep(20);
  }
  return stat(sock, &st) == 0 ? 0 : TD_EIO;
}

void th_munged_stop(pid_t pid) {
  if (pid <= 0)
    return;
  kill(pid, SIGTERM);
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
    ;
}

void th_set_munge_socket(const char *sock) {
  pthread_mutex_lock(&th__cred_lock);
  td_strlcpy(th__munge_sock, sock != NULL ? sock : "", sizeof(th__munge_sock));
  free(th__cred_cache);
  th__cred_cache = NULL;
  pthread_mutex_unlock(&th__cred_lock);
}

void th_as_user(const char *name) {
  pthread_mutex_lock(&th__cred_lock);
  td_strlcpy(th__user, name != NULL ? name : "", sizeof(th__user));
  free(th__cred_cache);
  th__cred_cache = NULL;
  pthread_mutex_unlock(&th__cred_lock);
}

char *th_cred_current(const char *stale) {
  char *copy = NULL;

  pthread_mutex_lock(&th__cred_lock);
  if (stale != NULL && th__cred_cache != NULL && strcmp(stale, th__cred_cache) == 0) {
    free(th__cred_cache);
    th__cred_cache = NULL;
  }
  if (th__cred_cache == NULL)
    th__cred_cache = th_cred();
  if (th__cred_cache != NULL)
    copy = strdup(th__cred_cache);
  pthread_mutex_unlock(&th__cred_lock);
  return copy;
}

int th_become_user(void) {
  struct passwd *pw;

  if (th__user[0] == '\0')
    return 0;
  if ((pw = getpwnam(th__user)) == NULL) {
    errno = ENOENT;
    return -1;
  }
  if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
      setuid(pw->pw_uid) < 0)
    return -1;
  return 0;
}

/* munge_encode in a child that is th__user. */
static char *th__cred_as_user(void) {
  char buf[1100];
  int fd[2], status;
  ssize_t n = 0, got;
  pid_t pid;

  if (pipe(fd) != 0)
    return NULL;
  pid = fork();
  if (pid == 0) {
    char *cred;

    close(fd[0]);
    if (th_become_user() < 0)
      _exit(1);
    th__user[0] = '\0';
    cred = th_cred();
    if (cred == NULL || write(fd[1], cred, strlen(cred)) < 0)
      _exit(1);
    _exit(0);
  }
  close(fd[1]);
  while (pid > 0 && (got = read(fd[0], buf + n, sizeof(buf) - 1 - (size_t)n)) > 0)
    n += got;
  close(fd[0]);
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
      WEXITSTATUS(status) != 0 || n <= 0)
    return NULL;
  buf[n] = '\0';
  return strdup(buf);
}

char *th_cred(void) {
  munge_ctx_t ctx;
  char *cred = NULL;

  if (th__user[0] != '\0')
    return th__cred_as_user();
  if (th__munge_sock[0] == '\0' || (ctx = munge_ctx_create()) == NULL)
    return NULL;
  munge_ctx_set(ctx, MUNGE_OPT_SOCKET, th__munge_sock);
  if (munge_encode(&cred, ctx, NULL, 0) != EMUNGE_SUCCESS) {
    fprintf(stderr, "munge_encode: %s\n", munge_ctx_strerror(ctx));
    cred = NULL;
  }
  munge_ctx_destroy(ctx);
  return cred;
}

int th_daemon_spawn(th_daemon *d) {
  char exe[512];
  pid_t pid;

  snprintf(exe, sizeof(exe), "%s/daemon/traind", th__build_root());
  /* A killed traind leaves its socket file behind. */
  unlink(d->sockpath);
  pid = fork();
  if (pid < 0)
    return TD_EIO;
  if (pid == 0) {
    int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    /* A test killed by its timeout takes its daemon with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execl(exe, exe, "--config", d->cfg, (char *)NULL);
    fprintf(stderr, "cannot run %s: %s (set TD_BUILD_ROOT to the build directory)\n", exe,
            strerror(errno));
    _exit(127);
  }
  d->pid = pid;
  return 0;
}

int th_daemon_wait_ready(th_daemon *d, int timeout_ms) {
  double end = td_now_mono() + timeout_ms / 1000.0;
  int status, rc = TD_ETIMEDOUT;

  while (td_now_mono() < end) {
    struct stat st;

    if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
      d->pid = -1;
      return TD_EIO;
    }
    /* a tcp:// socket has no file to wait for */
    if (d->sockpath[0] == '\0' || stat(d->sockpath, &st) == 0) {
      int s = th_connect(d->sock, 200), code = -1;
      rc = s < 0 ? TD_ECONN : th_rpc_simple(s, "info", NULL, 0, NULL, &code, NULL, 0);
      if (s >= 0)
        nn_close(s);
      if (rc == 0 && code == 0)
        return 0;
    }
    th_msleep(20);
  }
  return TD_ETIMEDOUT;
}

int th_daemon_start(th_daemon *d, int timeout_ms) {
  int rc = th_daemon_spawn(d);
  return rc < 0 ? rc : th_daemon_wait_ready(d, timeout_ms);
}

int th_daemon_run_to_exit(th_daemon *d, int timeout_ms, int *status) {
  double end = td_now_mono() + timeout_ms / 1000.0;
  int rc = th_daemon_spawn(d);

  if (rc < 0)
    return rc;
  while (td_now_mono() < end) {
    if (waitpid(d->pid, status, WNOHANG) == d->pid) {
      d->pid = -1;
      return 0;
    }
    th_msleep(20);
  }
  th_daemon_signal_wait(d, SIGKILL);
  return TD_ETIMEDOUT;
}

int th_daemon_signal_wait(th_daemon *d, int sig) {
  int status = -1;

  if (d->pid <= 0)
    return -1;
  kill(d->pid, sig);
  while (waitpid(d->pid, &status, 0) < 0 && errno == EINTR)
    ;
  d->pid = -1;
  return status;
}

int th_daemon_stop(th_daemon *d) {
  int status = th_daemon_signal_wait(d, SIGTERM);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : TD_EIO;
}

void th_daemon_remove(th_daemon *d) {
  char cmd[300];

  if (d->dir[0] == '\0')
    return;
  th_munged_stop(d->munged);
  d->munged = 0;
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
  if (system(cmd) != 0)
    fprintf(stderr, "could not remove %s\n", d->dir);
}

const char *th_log_tail(const th_daemon *d) {
  static char buf[2048];
  int fd = open(d->log, O_RDONLY | O_CLOEXEC);
  off_t size;
  ssize_t n = 0;

  buf[0] = '\0';
  if (fd < 0)
    return buf;
  size = lseek(fd, 0, SEEK_END);
  if (size > 0)
    n = pread(fd, buf, sizeof(buf) - 1,
              size > (off_t)sizeof(buf) - 1 ? size - (off_t)sizeof(buf) + 1 : 0);
  close(fd);
  buf[n > 0 ? n : 0] = '\0';
  return buf;
}

int th_need_fmnist(void) {
  struct stat st;

  if (stat(TH_FMNIST "/train-images-idx3-ubyte.gz", &st) == 0)
    return 0;
  fprintf(stderr, "skipped: Fashion-MNIST is not installed "
                  "(apt-get install dataset-fashion-mnist)\n");
  return 77;
}

int th_run(Suite *s, int need_fmnist) {
  SRunner *sr;
  int failed;

  if (need_fmnist && th_need_fmnist() != 0)
    return 77; /* the process ends: s need not be freed */
  setvbuf(stdout, NULL, _IOLBF, 0);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}

int th_connect(const char *addr, int timeout_ms) {
  /* nanomsg's default limit is 1 MiB; replies may be up to the protocol's. */
  int s = nn_socket(AF_SP, NN_REQ), maxsize = (int)TD_PROTO_MAX_MSG + 4096;

  if (s < 0)
    return -1;
  nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVMAXSIZE, &maxsize, sizeof(maxsize));
  nn_setsockopt(s, NN_SOL_SOCKET, NN_RCVTIMEO, &timeout_ms, sizeof(timeout_ms));
  nn_setsockopt(s, NN_SOL_SOCKET, NN_SNDTIMEO, &timeout_ms, sizeof(timeout_ms));
  if (nn_connect(s, addr) < 0) {
    nn_close(s);
    return -1;
  }
  return s;
}

static int th__rpc_once(int sock, const void *req, size_t len, td_msg **out, int *code,
                        char *err, size_t errlen) {
  void *buf = NULL;
  td_msg *m = NULL;
  int n, rc;

  err[0] = '\0';
  if (nn_send(sock, req, len, 0) < 0)
    return errno == ETIMEDOUT ? TD_ETIMEDOUT : TD_ECONN;
  n = nn_recv(sock, &buf, NN_MSG, 0);
  if (n < 0)
    return errno == ETIMEDOUT ? TD_ETIMEDOUT : TD_ECONN;
  rc = td_proto_decode_reply(buf, (size_t)n, &m, code, err, errlen);
  nn_freemsg(buf);
  if (rc < 0)
    return TD_EPROTO;
  if (out != NULL)
    *out = m;
  else
    td_msg_free(m);
  return 0;
}

/* As traind-client does: the request signed with a credential that is
 * reused until traind says it does not know it (it restarted), then made
 * anew once.  A request that is not a map (hostile tests) goes as it is. */
int th_rpc(int sock, const void *req, size_t len, td_msg **out, int *code, char *err,
           size_t errlen) {
  char tmp[512];
  td_pack signed_req;
  int rc;

  if (err == NULL || errlen == 0) {
    err = tmp;
    errlen = sizeof(tmp);
  }
  if (th__munge_sock[0] == '\0')
    return th__rpc_once(sock, req, len, out, code, err, errlen);
  for (int attempt = 0;; attempt++) {
    td_msg *m = NULL;
    char *cred = th_cred_current(NULL);

    if (cred == NULL)
      return TD_EIO;
    if (td_pack_request_add(&signed_req, req, len, "cred", cred) != 0) {
      td_pack_free(&signed_req);
      free(cred);
      return th__rpc_once(sock, req, len, out, code, err, errlen);
    }
    rc = th__rpc_once(sock, td_pack_data(&signed_req), td_pack_len(&signed_req), &m, code, err,
                      errlen);
    td_pack_free(&signed_req);
    if (rc == 0 && *code == TD_EAUTH && attempt == 0) {
      td_msg_free(m);
      free(th_cred_current(cred)); /* forget it: the next one is new */
      free(cred);
      continue;
    }
    free(cred);
    if (out != NULL)
      *out = m;
    else
      td_msg_free(m);
    return rc;
  }
}

int th_rpc_pack(int sock, td_pack *req, td_msg **out, int *code, char *err, size_t errlen) {
  if (td_pack_error(req) < 0)
    return td_pack_error(req);
  return th_rpc(sock, td_pack_data(req), td_pack_len(req), out, code, err, errlen);
}

int th_rpc_simple(int sock, const char *op, const char *field, uint64_t value, td_msg **out,
                  int *code, char *err, size_t errlen) {
  td_pack p;
  int rc;

  td_pack_init(&p);
  td_pack_request(&p, op, field ? 1 : 0);
  if (field)
    td_pack_kv_u64(&p, field, value);
  rc = th_rpc_pack(sock, &p, out, code, err, errlen);
  td_pack_free(&p);
  return rc;
}

const char *th_sample_dtype(const char *yaml, const char *base_dir) {
  td_jobspec *spec = malloc(sizeof(*spec));
  td_dataset_info info;
  const char *name = "uint8";
  char err[512];

  /* As traind-client does; a job file that does not parse or a dataset
   * that cannot be read is left for traind (or the job) to refuse. */
  if (spec != NULL && td_jobspec_parse(yaml, strlen(yaml), base_dir, spec, err, sizeof(err)) == 0 &&
      td_dataset_probe(spec, &info, err, sizeof(err)) == 0)
    name = td_dtype_name(info.dtype);
  free(spec);
  return name;
}

void th_pack_submit(td_pack *p, const char *yaml, const char *base_dir, const char *key,
                    const char *name) {
  td_pack_request(p, "submit", name ? 5 : 4);
  td_pack_kv_str(p, "job", yaml);
  td_pack_kv_str(p, "base_dir", base_dir);
  td_pack_kv_str(p, "key", key);
  td_pack_kv_str(p, "sample_dtype", th_sample_dtype(yaml, base_dir));
  if (name)
    td_pack_kv_str(p, "name", name);
}

void th_job_yaml(char *buf, size_t cap, const char *name, int hidden, int epochs, int limit,
                 int batch) {
  snprintf(buf, cap,
           "name: %s\n"
           "model:\n"
           "  input: [28, 28]\n"
           "  layers:\n"
           "    - {type: dense, units: %d}\n"
           "    - {type: relu}\n"
           "    - {type: dense, units: 10}\n"
           "data:\n"
           "  format: idx\n"
           "  train:\n"
           "    images: " TH_FMNIST "/train-images-idx3-ubyte.gz\n"
           "    labels: " TH_FMNIST "/train-labels-idx1-ubyte.gz\n"
           "    limit: %d\n"
           "  test:\n"
           "    images: " TH_FMNIST "/t10k-images-idx3-ubyte.gz\n"
           "    labels: " TH_FMNIST "/t10k-labels-idx1-ubyte.gz\n"
           "    limit: 500\n"
           "train:\n"
           "  batch_size: %d\n"
           "  epochs: %d\n"
           "  seed: 7\n"
           "  optimizer: {type: sgd, lr: 0.01}\n",
           name, hidden, limit, batch, epochs);
}

int th_plan_total(const char *yaml, uint64_t *total) {
  const msgpack_object *plan;
  th_daemon d;
  td_msg *m = NULL;
  td_pack p;
  int s = -1, code = -1, rc;

  if ((rc = th_daemon_init(&d, "2GiB", NULL, 1)) < 0)
    return rc;
  if ((rc = th_daemon_start(&d, 30000)) < 0)
    goto remove;
  if ((s = th_connect(d.sock, 10000)) < 0) {
    rc = TD_ECONN;
    goto stop;
  }
  td_pack_init(&p);
  th_pack_submit(&p, yaml, "/tmp", "plan-probe", NULL);
  rc = th_rpc_pack(s, &p, &m, &code, NULL, 0);
  td_pack_free(&p);
  if (rc == 0 && code != 0)
    rc = code;
  if (rc == 0 && (rc = td_obj_map(td_msg_root(m), "plan", &plan)) == 0)
    rc = td_obj_u64(plan, "total", total);
  td_msg_free(m);
  nn_close(s);
stop:
  th_daemon_stop(&d);
remove:
  th_daemon_remove(&d);
  return rc;
}

int th_list(int sock, th_row **rows, size_t *n, char *err, size_t errlen) {
  th_row *r = NULL;
  size_t cnt = 0;
  uint64_t after = 0;
  int more = 1, rc = 0;

  /* page by page, as traind-client's ls does */
  while (rc == 0 && more) {
    const msgpack_object *jobs;
    td_msg *m = NULL;
    td_pack p;
    int code = 0;

    td_pack_init(&p);
    td_pack_request(&p, "list", 2);
    td_pack_kv_u64(&p, "after", after);
    td_pack_kv_u64(&p, "limit", 5000);
    rc = th_rpc_pack(sock, &p, &m, &code, err, errlen);
    td_pack_free(&p);
    if (rc == 0 && code != 0)
      rc = code;
    if (rc == 0)
      rc = td_obj_array(td_msg_root(m), "jobs", &jobs);
    if (rc == 0 && td_obj_bool(td_msg_root(m), "more", &more) != 0)
      more = 0;
    if (rc == 0) {
      uint32_t k = jobs->via.array.size;
      th_row *grown = realloc(r, (cnt + k + 1) * sizeof(*r));

      rc = grown == NULL ? TD_ENOMEM : 0;
      if (grown != NULL)
        r = grown;
      for (uint32_t i = 0; rc == 0 && i < k; i++, cnt++) {
        const msgpack_object *row = &jobs->via.array.ptr[i];

        memset(&r[cnt], 0, sizeof(r[cnt]));
        if (td_obj_u64(row, "id", &r[cnt].id) < 0 ||
            td_obj_cstr(row, "name", r[cnt].name, sizeof(r[cnt].name)) < 0 ||
            td_obj_cstr(row, "state", r[cnt].state, sizeof(r[cnt].state)) < 0)
          rc = TD_EPROTO;
        after = r[cnt].id;
      }
      if (k == 0)
        more = 0;
    }
    td_msg_free(m);
  }
  if (rc == 0) {
    *rows = r != NULL ? r : calloc(1, sizeof(*r));
    *n = cnt;
    return *rows != NULL ? 0 : TD_ENOMEM;
  }
  free(r);
  return rc;
}

static int th__show(int sock, uint64_t id, td_msg **m, const msgpack_object **job) {
  int code = 0, rc = th_rpc_simple(sock, "show", "id", id, m, &code, NULL, 0);

  if (rc < 0)
    return rc;
  if (code != 0) {
    td_msg_free(*m);
    return code;
  }
  rc = td_obj_map(td_msg_root(*m), "job", job);
  if (rc < 0)
    td_msg_free(*m);
  return rc;
}

int th_show_str(int sock, uint64_t id, const char *key, char *out, size_t cap) {
  const msgpack_object *job;
  td_msg *m;
  int rc = th__show(sock, id, &m, &job);

  if (rc < 0)
    return rc;
  rc = td_obj_cstr(job, key, out, cap);
  td_msg_free(m);
  return rc;
}

int th_show_u64(int sock, uint64_t id, const char *key, uint64_t *v) {
  const msgpack_object *job;
  td_msg *m;
  int rc = th__show(sock, id, &m, &job);

  if (rc < 0)
    return rc;
  rc = td_obj_u64(job, key, v);
  td_msg_free(m);
  return rc;
}

int th_wait_state(int sock, uint64_t id, const char *want, int timeout_ms, char *last,
                  size_t cap) {
  double end = td_now_mono() + timeout_ms / 1000.0;

  do {
    int rc = th_show_str(sock, id, "state", last, cap);
    if (rc < 0)
      return rc;
    if (strcmp(last, want) == 0)
      return 0;
    th_msleep(20);
  } while (td_now_mono() < end);
  return TD_ETIMEDOUT;
}

int th_submit(int sock, const char *yaml, const char *key, uint64_t *id, char *err,
              size_t errlen) {
  td_msg *m = NULL;
  td_pack p;
  int code = 0, rc;

  td_pack_init(&p);
  th_pack_submit(&p, yaml, "/tmp", key, NULL);
  rc = th_rpc_pack(sock, &p, &m, &code, err, errlen);
  td_pack_free(&p);
  if (rc == 0 && code != 0)
    rc = code;
  if (rc == 0)
    rc = td_obj_u64(td_msg_root(m), "id", id);
  td_msg_free(m);
  return rc;
}

int th_wait_training(int sock, uint64_t id, int timeout_ms) {
  double end = td_now_mono() + timeout_ms / 1000.0;

  do {
    uint64_t step = 0, epoch = 0;
    int rc;

    if ((rc = th_show_u64(sock, id, "step", &step)) < 0 ||
        (rc = th_show_u64(sock, id, "epoch", &epoch)) < 0)
      return rc;
    if (step > 0 || epoch > 1)
      return 0;
    th_msleep(20);
  } while (td_now_mono() < end);
  return TD_ETIMEDOUT;
}

/* The parent pid from /proc/PID/stat; the command name may hold spaces and
 * parentheses, so the fields are read after the last ')'. */
static pid_t th__ppid(const char *pid) {
  char path[64], buf[512];
  FILE *f;
  char *p;
  int ppid = -1;

  snprintf(path, sizeof(path), "/proc/%s/stat", pid);
  f = fopen(path, "r");
  if (f == NULL)
    return -1;
  if (fgets(buf, sizeof(buf), f) != NULL && (p = strrchr(buf, ')')) != NULL)
    sscanf(p + 1, " %*c %d", &ppid);
  fclose(f);
  return ppid;
}

/* The program a process runs: the basename of /proc/PID/exe, which stays
 * right when a program re-executes itself through /proc/self/exe (its comm
 * then reads "exe"). */
static int th__is_program(const char *pid, const char *name) {
  char path[300], target[1024];
  const char *base;
  ssize_t n;

  snprintf(path, sizeof(path), "/proc/%s/exe", pid);
  n = readlink(path, target, sizeof(target) - 1);
  if (n <= 0)
    return 0;
  target[n] = '\0';
  /* " (deleted)" when the binary was rebuilt under it. */
  if (n > 10 && strcmp(target + n - 10, " (deleted)") == 0)
    target[n - 10] = '\0';
  base = strrchr(target, '/');
  return strcmp(base ? base + 1 : target, name) == 0;
}

int th_children(pid_t pid, const char *program, pid_t *pids, int cap) {
  DIR *dir = opendir("/proc");
  struct dirent *e;
  int n = 0;

  if (dir == NULL)
    return 0;
  while ((e = readdir(dir)) != NULL) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || th__ppid(e->d_name) != pid ||
        !th__is_program(e->d_name, program))
      continue;
    if (n < cap)
      pids[n] = (pid_t)atoi(e->d_name);
    n++;
  }
  closedir(dir);
  return n;
}

int th_rss(pid_t pid, uint64_t *bytes) {
  char path[64], line[256];
  FILE *f;
  int rc = TD_ENOENT;

  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  if ((f = fopen(path, "r")) == NULL)
    return TD_EIO;
  while (fgets(line, sizeof(line), f) != NULL) {
    unsigned long long kib;
    if (sscanf(line, "VmRSS: %llu kB", &kib) == 1) {
      *bytes = (uint64_t)kib * 1024;
      rc = 0;
      break;
    }
  }
  fclose(f);
  return rc;
}

/* Reads fd to its end into buf (NUL-terminated); what does not fit is
 * drained, so the writer never blocks on a full pipe. */
static void th__read_all(int fd, char *buf, size_t cap) {
  char drain[4096];
  size_t n = 0;
  ssize_t got;

  for (;;) {
    if (n + 1 < cap)
      got = read(fd, buf + n, cap - 1 - n);
    else
      got = read(fd, drain, sizeof(drain));
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      break;
    if (n + 1 < cap)
      n += (size_t)got;
  }
  if (cap > 0)
    buf[n] = '\0';
}

int th_client_v(const char *sock, char *out, size_t outcap, char *err, size_t errcap,
                va_list args) {
  char exe[512];
  const char *argv[32];
  int po[2], pe[2], argc = 0, status;
  pid_t pid;

  snprintf(exe, sizeof(exe), "%s/client/traind-client", th__build_root());
  argv[argc++] = exe;
  argv[argc++] = "--socket";
  argv[argc++] = sock;
  for (const char *a; (a = va_arg(args, const char *)) != NULL && argc < 31;)
    argv[argc++] = a;
  argv[argc] = NULL;

  if (pipe(po) != 0)
    return TD_EIO;
  if (pipe(pe) != 0) {
    close(po[0]);
    close(po[1]);
    return TD_EIO;
  }
  pid = fork();
  if (pid == 0) {
    dup2(po[1], 1);
    dup2(pe[1], 2);
    close(po[0]);
    close(pe[0]);
    if (th_become_user() < 0) {
      fprintf(stderr, "cannot become %s: %s\n", th__user, strerror(errno));
      _exit(126);
    }
    execv(exe, (char *const *)argv);
    _exit(127);
  }
  close(po[1]);
  close(pe[1]);
  if (pid > 0) {
    th__read_all(po[0], out, outcap);
    th__read_all(pe[0], err, errcap);
  }
  close(po[0]);
  close(pe[0]);
  if (pid < 0 || waitpid(pid, &status, 0) != pid)
    return TD_EIO;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int th_client(const char *sock, char *out, size_t outcap, char *err, size_t errcap, ...) {
  va_list args;
  int rc;

  va_start(args, errcap);
  rc = th_client_v(sock, out, outcap, err, errcap, args);
  va_end(args);
  return rc;
}
