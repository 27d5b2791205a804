/* traind on a server that people share, tried as an attacker with a local
 * account would: traind runs as root with a private munged; alice, bob and
 * carol are throwaway users made here (CI runs as root) and removed again.
 * Each attack of the review that found them now fails to do harm. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <nanomsg/nn.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <nanomsg/pubsub.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "proto.h"
#include "util.h"

#define WAIT_MS 120000

#define ALICE "tdsec-alice"
#define BOB "tdsec-bob"
#define CAROL "tdsec-carol"
static const char *const g_users[] = {ALICE, BOB, CAROL};
#define GROUP "tdsec-users"
#define ADMINS "tdsec-admins"

static th_daemon g_d;
static char g_home[3][192]; /* a private directory per user, under g_d.dir */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
  char cmd[1024];
  va_list ap;
  int rc;

  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  rc = system(cmd);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void drop_users(void) {
  for (size_t i = 0; i < TD_ARRAY_SIZE(g_users); i++)
    sh("userdel %s >/dev/null 2>&1", g_users[i]);
  sh("groupdel %s >/dev/null 2>&1", GROUP);
  sh("groupdel %s >/dev/null 2>&1", ADMINS);
}

static void make_users(void) {
  drop_users(); /* left by a run that was killed */
  ck_assert(sh("groupadd %s && groupadd %s", GROUP, ADMINS) == 0);
  for (size_t i = 0; i < TD_ARRAY_SIZE(g_users); i++)
    ck_assert_msg(sh("useradd --no-create-home --shell /usr/sbin/nologin %s%s %s",
                     i < 2 ? "-G " : "", i < 2 ? GROUP : "", g_users[i]) == 0,
                  "useradd %s failed", g_users[i]);
}

/* traind as root (it then serves several users), with extra config; on
 * a tcp:// loopback address instead of its ipc socket if tcp_port. */
static void start_on(const char *extra, int tcp_port) {
  char cfg[1024];
  int rc;

  make_users();
  snprintf(cfg, sizeof(cfg), "socket_group: %s\nadmin_group: %s\n%s", GROUP, ADMINS,
           extra ? extra : "");
  ck_assert(th_daemon_init(&g_d, "1GiB", cfg, 0) == 0);
  if (tcp_port > 0) {
    snprintf(g_d.sock, sizeof(g_d.sock), "tcp://127.0.0.1:%d", tcp_port);
    g_d.sockpath[0] = '\0';
    ck_assert(th_daemon_config(&g_d, "1GiB", cfg, 0) == 0);
  }
  ck_assert_msg(g_d.munge_sock[0] != '\0', "the tests run as root, so traind wants MUNGE");
  for (size_t i = 0; i < TD_ARRAY_SIZE(g_users); i++) {
    snprintf(g_home[i], sizeof(g_home[i]), "%s/home-%zu", g_d.dir, i);
    ck_assert(mkdir(g_home[i], 0700) == 0);
    ck_assert(sh("chown %s: %s", g_users[i], g_home[i]) == 0);
  }
  rc = th_daemon_start(&g_d, 30000);
  ck_assert_msg(rc == 0, "traind did not start: %s\n%s", td_strerror(rc), th_log_tail(&g_d));
}

static void start(const char *extra) {
  start_on(extra, 0);
}

static void teardown(void) {
  th_as_user(NULL);
  if (g_d.pid > 0)
    th_daemon_stop(&g_d);
  th_daemon_remove(&g_d);
  drop_users();
}

/* traind-client as user (NULL: root); its exit code. */
static int client_as(const char *user, char *out, size_t outcap, char *err, size_t errcap, ...) {
  va_list ap;
  int rc;

  th_as_user(user);
  va_start(ap, errcap);
  rc = th_client_v(g_d.sock, out, outcap, err, errcap, ap);
  va_end(ap);
  th_as_user(NULL);
  ck_assert_msg(rc >= 0, "cannot run traind-client: %s", td_strerror(rc));
  return rc;
}

/* One raw request as user, signed with that user's credential. */
static int rpc_as(const char *user, td_pack *req, td_msg **out, char *err, size_t errlen) {
  int s = th_connect(g_d.sock, 10000), code = -1, rc;

  ck_assert(s >= 0);
  th_as_user(user);
  rc = th_rpc_pack(s, req, out, &code, err, errlen);
  th_as_user(NULL);
  nn_close(s);
  ck_assert_msg(rc == 0, "no answer: %s", td_strerror(rc));
  return code;
}

static int simple_as(const char *user, const char *op, uint64_t id, char *err, size_t errlen) {
  td_pack p;
  int code;

  td_pack_init(&p);
  td_pack_request(&p, op, id ? 1 : 0);
  if (id)
    td_pack_kv_u64(&p, "id", id);
  code = rpc_as(user, &p, NULL, err, errlen);
  td_pack_free(&p);
  return code;
}

/* access(2) as user: 0 or -1. */
static int access_as(const char *user, const char *path, int mode) {
  int status;
  pid_t pid;

  th_as_user(user);
  pid = fork();
  if (pid == 0)
    _exit(th_become_user() == 0 && access(path, mode) == 0 ? 0 : 1);
  th_as_user(NULL);
  ck_assert(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status));
  return WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* A job file in user i's directory; images may replace the training images. */
static void job_file(int i, const char *name, const char *images, const char *output,
                     char *path, size_t cap) {
  char yaml[4096], img[512];
  FILE *f;

  snprintf(img, sizeof(img), "%s", images ? images : TH_FMNIST "/train-images-idx3-ubyte.gz");
  snprintf(yaml, sizeof(yaml),
           "name: %s\n"
           "model:\n"
           "  input: [28, 28]\n"
           "  layers:\n"
           "    - {type: dense, units: 16}\n"
           "    - {type: relu}\n"
           "    - {type: dense, units: 10}\n"
           "data:\n"
           "  format: idx\n"
           "  train:\n"
           "    images: %s\n"
           "    labels: " TH_FMNIST "/train-labels-idx1-ubyte.gz\n"
           "    limit: 256\n"
           "  test:\n"
           "    images: " TH_FMNIST "/t10k-images-idx3-ubyte.gz\n"
           "    labels: " TH_FMNIST "/t10k-labels-idx1-ubyte.gz\n"
           "    limit: 128\n"
           "train:\n"
           "  batch_size: 32\n"
           "  epochs: 1\n"
           "  optimizer: {type: sgd, lr: 0.01}\n"
           "%s%s%s",
           name, img, output ? "output: " : "", output ? output : "", output ? "\n" : "");
  snprintf(path, cap, "%s/%s.yaml", g_home[i], name);
  f = fopen(path, "w");
  ck_assert(f != NULL);
  fputs(yaml, f);
  fclose(f);
  ck_assert(sh("chown %s: %s", g_users[i], path) == 0);
}

/* A raw submit as user, past the client's own checks, as a hostile client
 * would send it. */
static int raw_submit_as(const char *user, const char *yaml_path, const char *key, uint64_t *id,
                         char *err, size_t errlen) {
  char *text = NULL;
  size_t len;
  td_msg *m = NULL;
  td_pack p;
  int code;

  ck_assert(td_read_file(yaml_path, 1 << 20, &text, &len) == 0);
  td_pack_init(&p);
  td_pack_request(&p, "submit", 4);
  td_pack_kv_str(&p, "job", text);
  td_pack_kv_str(&p, "base_dir", "/");
  td_pack_kv_str(&p, "key", key);
  td_pack_kv_str(&p, "sample_dtype", "uint8");
  code = rpc_as(user, &p, &m, err, errlen);
  td_pack_free(&p);
  if (code == 0)
    ck_assert(td_obj_u64(td_msg_root(m), "id", id) == 0);
  td_msg_free(m);
  free(text);
  return code;
}

static void wait_final(uint64_t id, char *state, size_t cap) {
  int s = th_connect(g_d.sock, 10000);
  double end = td_now_mono() + WAIT_MS / 1000.0;

  ck_assert(s >= 0);
  do {
    ck_assert(th_show_str(s, id, "state", state, cap) == 0);
    if (strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 ||
        strcmp(state, "cancelled") == 0)
      break;
    th_msleep(50);
  } while (td_now_mono() < end);
  nn_close(s);
}

static uint64_t submit_ok(int user, const char *name) {
  char path[512], out[4096], err[4096];
  uint64_t id = 0;
  int rc;

  job_file(user, name, NULL, NULL, path, sizeof(path));
  rc = client_as(g_users[user], out, sizeof(out), err, sizeof(err), "--json", "submit", path,
                 NULL);
  ck_assert_msg(rc == 0, "submit as %s failed (%d): %s", g_users[user], rc, err);
  ck_assert_msg(strstr(out, "\"id\":") != NULL, "%s", out);
  ck_assert(sscanf(strstr(out, "\"id\":") + 5, "%llu", (unsigned long long *)&id) == 1);
  return id;
}

START_TEST(forged_identities_are_refused) {
  char err[1024];
  td_msg *m = NULL;
  td_pack p;
  int s, code = -1;
  char *cred;

  start(NULL);
  /* no credential at all */
  s = th_connect(g_d.sock, 10000);
  ck_assert(s >= 0);
  td_pack_init(&p);
  td_pack_request(&p, "list", 0);
  th_set_munge_socket(NULL); /* th_rpc sends what it is given */
  ck_assert(th_rpc_pack(s, &p, &m, &code, err, sizeof(err)) == 0);
  ck_assert_int_eq(code, TD_EAUTH);
  ck_assert_msg(strstr(err, "MUNGE credential") && strstr(err, "is munged running"), "%s", err);
  td_msg_free(m);
  m = NULL;
  /* garbage, and a credential someone else decoded first (replayed) */
  td_pack_free(&p);
  td_pack_init(&p);
  td_pack_request(&p, "list", 1);
  td_pack_kv_str(&p, "cred", "MUNGE:forged:");
  ck_assert(th_rpc_pack(s, &p, NULL, &code, err, sizeof(err)) == 0);
  ck_assert_int_eq(code, TD_EAUTH);
  td_pack_free(&p);
  th_set_munge_socket(g_d.munge_sock);
  cred = th_cred();
  ck_assert(cred != NULL);
  {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "echo '%s' | unmunge -S '%s' >/dev/null", cred, g_d.munge_sock);
    ck_assert(system(cmd) == 0);
  }
  th_set_munge_socket(NULL);
  td_pack_init(&p);
  td_pack_request(&p, "list", 1);
  td_pack_kv_str(&p, "cred", cred);
  ck_assert(th_rpc_pack(s, &p, NULL, &code, err, sizeof(err)) == 0);
  ck_assert_int_eq(code, TD_EAUTH);
  ck_assert_msg(strstr(err, "replayed"), "%s", err);
  td_pack_free(&p);
  free(cred);
  th_set_munge_socket(g_d.munge_sock);
  /* the client may not name an owner */
  td_pack_init(&p);
  td_pack_request(&p, "submit", 4);
  td_pack_kv_str(&p, "job", "x");
  td_pack_kv_str(&p, "base_dir", "/");
  td_pack_kv_str(&p, "key", "k");
  td_pack_kv_str(&p, "owner", "root");
  ck_assert(th_rpc_pack(s, &p, NULL, &code, err, sizeof(err)) == 0);
  ck_assert_int_eq(code, TD_EPROTO);
  td_pack_free(&p);
  nn_close(s);
  teardown();
}
END_TEST

START_TEST(users_act_only_on_their_own_jobs) {
  char out[8192], err[4096];
  uint64_t id;

  start(NULL);
  /* root drains the device, so alice's job stays queued throughout */
  ck_assert_int_eq(client_as(NULL, out, sizeof(out), err, sizeof(err), "device", "cpu0",
                             "--drain", NULL), 0);
  id = submit_ok(0, "alices");
  /* the job is alice's, by her credential */
  {
    char sid[24];
    snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
    ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "show", sid, NULL), 0);
    ck_assert_msg(strstr(out, ALICE), "%s", out);
    /* bob cannot see its details or logs, cancel it or change its priority */
    ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "show", sid, NULL), 3);
    ck_assert_msg(strstr(err, "belongs to " ALICE), "%s", err);
    ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "logs", sid, NULL), 3);
    ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "cancel", sid, NULL), 3);
    ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "set-priority", sid,
                               "100", NULL), 3);
    ck_assert_int_eq(simple_as(BOB, "cancel", id, err, sizeof(err)), TD_EPERM);
    /* nor touch devices */
    ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "device", "cpu0",
                               "--budget", "1MiB", NULL), 3);
    ck_assert_msg(strstr(err, "only traind's admins"), "%s", err);
    ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "device", "cpu0",
                               "--drain", NULL), 3);
    /* bob still sees that the job exists in ls (no private_data) */
    ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "ls", NULL), 0);
    ck_assert_msg(strstr(out, "alices"), "%s", out);
    /* alice may re-prioritise her own job; root may act on any */
    ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "set-priority", sid,
                               "5", NULL), 0);
    ck_assert_int_eq(client_as(NULL, out, sizeof(out), err, sizeof(err), "cancel", sid, NULL),
                     0);
  }
  teardown();
}
END_TEST

START_TEST(admin_group_may_change_devices) {
  char out[4096], err[4096];

  start(NULL);
  ck_assert(sh("usermod -aG %s %s", ADMINS, CAROL) == 0);
  /* carol is not in the socket's group but may use it as an admin? no: the
   * socket's group is the first gate, so she is refused before traind. */
  ck_assert_int_eq(client_as(CAROL, out, sizeof(out), err, sizeof(err), "devices", NULL), 4);
  ck_assert_msg(strstr(err, "permission denied"), "%s", err);
  ck_assert(sh("usermod -aG %s %s", GROUP, CAROL) == 0);
  ck_assert_int_eq(client_as(CAROL, out, sizeof(out), err, sizeof(err), "device", "cpu0",
                             "--budget", "512MiB", NULL), 0);
  teardown();
}
END_TEST

START_TEST(private_data_hides_other_users_jobs) {
  char out[8192], err[4096], sid[24];
  uint64_t id;

  start("private_data: true\n");
  id = submit_ok(0, "secretname");
  snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
  ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "ls", NULL), 0);
  ck_assert_msg(strstr(out, "secretname") == NULL, "%s", out);
  ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "show", sid, NULL), 3);
  ck_assert_msg(strstr(err, "no job with id"), "%s", err);
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "ls", NULL), 0);
  ck_assert_msg(strstr(out, "secretname"), "%s", out);
  teardown();
}
END_TEST

/* A file only root may read: its bytes must appear nowhere. */
#define SECRET "tdsec-secret-bytes-0123456789"

static void make_secret(char *path, size_t cap) {
  FILE *f;

  snprintf(path, cap, "%s/secret", g_d.dir);
  f = fopen(path, "w");
  ck_assert(f != NULL);
  for (int i = 0; i < 2000; i++)
    fputs(SECRET "\n", f);
  fclose(f);
  ck_assert(chmod(path, 0600) == 0);
}

static void assert_secret_nowhere(void) {
  ck_assert_msg(sh("grep -rqs '%s' '%s/state' '%s'", SECRET, g_d.dir, g_d.log) != 0,
                "the secret's bytes turned up under %s", g_d.dir);
}

START_TEST(a_dataset_the_user_may_not_read_stays_unread) {
  char secret[256], path[512], out[4096], err[4096], state[32], sid[24];
  uint64_t id = 0;
  int code;

  start(NULL);
  make_secret(secret, sizeof(secret));
  job_file(0, "steal", secret, NULL, path, sizeof(path));
  /* the client reads the dataset with alice's rights */
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "submit", path, NULL), 3);
  ck_assert_msg(strstr(err, "Permission denied") || strstr(err, "permission denied"), "%s", err);
  /* a client that skips the check: the job's loader is alice, and fails */
  code = raw_submit_as(ALICE, path, "steal-raw", &id, err, sizeof(err));
  ck_assert_msg(code == 0, "%s", err);
  wait_final(id, state, sizeof(state));
  ck_assert_str_eq(state, "failed");
  snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "logs", sid, NULL), 0);
  ck_assert_msg(strstr(out, "ermission denied"), "the log says: %s", out);
  assert_secret_nowhere();
  teardown();
}
END_TEST

START_TEST(an_output_the_user_may_not_write_stays_unwritten) {
  char path[512], out[4096], err[4096], state[32], target[256];
  uint64_t id = 0;
  struct stat st;

  start(NULL);
  /* root's own directory: 0700 */
  snprintf(target, sizeof(target), "%s/rootonly", g_d.dir);
  ck_assert(mkdir(target, 0700) == 0);
  strncat(target, "/model.safetensors", sizeof(target) - strlen(target) - 1);
  job_file(0, "plant", NULL, target, path, sizeof(path));
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "submit", path, NULL), 3);
  ck_assert_msg(strstr(err, "cannot write the model"), "%s", err);
  /* past the client: the worker writes as alice, and cannot */
  ck_assert_int_eq(raw_submit_as(ALICE, path, "plant-raw", &id, err, sizeof(err)), 0);
  wait_final(id, state, sizeof(state));
  ck_assert_msg(stat(target, &st) != 0, "alice's job wrote %s", target);
  /* over traind's own database, through the state directory */
  snprintf(target, sizeof(target), "%s/jobs.db", g_d.state);
  job_file(0, "clobber", NULL, target, path, sizeof(path));
  ck_assert_int_eq(raw_submit_as(ALICE, path, "clobber-raw", &id, err, sizeof(err)), 0);
  wait_final(id, state, sizeof(state));
  ck_assert_int_eq(simple_as(NULL, "info", 0, err, sizeof(err)), 0);
  ck_assert(sh("sqlite3 '%s' 'select count(*) from jobs' >/dev/null", target) == 0);
  teardown();
}
END_TEST

/* ...and only their owner continues them (submit --continue). */
START_TEST(jobs_run_as_their_submitter) {
  char path[512], out[4096], err[4096], state[32], model[512];
  struct passwd *pw;
  struct stat st;
  uint64_t id;

  start(NULL);
  snprintf(model, sizeof(model), "%s/model.safetensors", g_home[0]);
  job_file(0, "mine", NULL, model, path, sizeof(path));
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "--json", "submit", path,
                             "--wait", NULL), 0);
  pw = getpwnam(ALICE);
  ck_assert(pw != NULL);
  ck_assert_msg(stat(model, &st) == 0, "no model at %s", model);
  ck_assert_uint_eq(st.st_uid, pw->pw_uid);
  /* its directory under the state directory is alice's to write in and
   * nobody else's to enter (a fresh traind: the first job); traind's log
   * in it stays traind's */
  id = 1;
  snprintf(path, sizeof(path), "%s/jobs/%llu", g_d.state, (unsigned long long)id);
  ck_assert_int_eq(access_as(ALICE, path, W_OK | X_OK), 0);
  ck_assert_int_eq(access_as(BOB, path, X_OK), -1);
  snprintf(path, sizeof(path), "%s/jobs/%llu/log", g_d.state, (unsigned long long)id);
  ck_assert(stat(path, &st) == 0);
  ck_assert_uint_eq(st.st_uid, 0);
  /* only alice may continue it: not bob, not root (the new job would run
   * as alice); hers reads the final state in the job's directory as her */
  ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "submit", "--continue",
                             "1", "--epochs", "1", NULL), 3);
  ck_assert_msg(strstr(err, "job 1 is not yours (it belongs to " ALICE ")"), "%s", err);
  ck_assert_int_eq(client_as(NULL, out, sizeof(out), err, sizeof(err), "submit", "--continue",
                             "1", "--epochs", "1", NULL), 3);
  ck_assert_msg(strstr(err, "only its owner may continue it"), "%s", err);
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "submit", "--continue",
                             "1", "--epochs", "1", "--wait", NULL), 0);
  wait_final(2, state, sizeof(state));
  ck_assert_str_eq(state, "succeeded");
  teardown();
}
END_TEST

START_TEST(a_fifo_is_refused_and_traind_keeps_answering) {
  char fifo[256], path[512], out[4096], err[4096], state[32];
  uint64_t id = 0;
  double t0;

  start(NULL);
  snprintf(fifo, sizeof(fifo), "%s/fifo", g_home[0]);
  ck_assert(mkfifo(fifo, 0644) == 0);
  ck_assert(sh("chown %s: %s", ALICE, fifo) == 0);
  job_file(0, "fifo", fifo, NULL, path, sizeof(path));
  t0 = td_now_mono();
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "submit", path, NULL), 3);
  ck_assert_msg(strstr(err, "not a regular file"), "%s", err);
  ck_assert(td_now_mono() - t0 < 10);
  ck_assert_int_eq(raw_submit_as(ALICE, path, "fifo-raw", &id, err, sizeof(err)), 0);
  /* the job's own loader meets the FIFO; traind answers meanwhile */
  for (int i = 0; i < 20; i++) {
    ck_assert_int_eq(simple_as(BOB, "info", 0, err, sizeof(err)), 0);
    th_msleep(25);
  }
  wait_final(id, state, sizeof(state));
  ck_assert_str_eq(state, "failed");
  teardown();
}
END_TEST

START_TEST(a_flood_is_limited_per_user) {
  char out[4096], err[4096], path[512];
  int refused = 0;

  start("max_jobs_per_user: 3\n");
  job_file(1, "flood", NULL, NULL, path, sizeof(path));
  for (int i = 0; i < 5; i++) {
    int rc = client_as(BOB, out, sizeof(out), err, sizeof(err), "submit", path, NULL);
    if (rc == 3) {
      ck_assert_msg(strstr(err, "max_jobs_per_user"), "%s", err);
      refused++;
    }
  }
  ck_assert_int_eq(refused, 2);
  /* alice still gets in */
  submit_ok(0, "notflooded");
  teardown();
}
END_TEST

/* A state directory from before identities (group-readable database and
 * job directories) is closed at start: bob reads neither. */
START_TEST(an_old_state_directory_is_made_private) {
  char db[256], old[256], log[300], err[512];
  struct stat st;

  start(NULL);
  ck_assert(th_daemon_stop(&g_d) == 0);
  snprintf(db, sizeof(db), "%s/jobs.db", g_d.state);
  snprintf(old, sizeof(old), "%s/jobs/99", g_d.state);
  snprintf(log, sizeof(log), "%s/log", old);
  ck_assert(chmod(db, 0644) == 0);
  ck_assert(sh("mkdir -p %s && echo secret > %s && chmod 755 %s %s/jobs && chmod 644 %s", old,
               log, old, g_d.state, log) == 0);
  ck_assert_int_eq(access_as(BOB, log, R_OK), 0); /* as an old traind left it */
  ck_assert(th_daemon_start(&g_d, 30000) == 0);
  ck_assert(stat(db, &st) == 0);
  ck_assert_uint_eq(st.st_mode & 077, 0);
  ck_assert_int_eq(access_as(BOB, log, R_OK), -1);
  ck_assert_int_eq(access_as(BOB, db, R_OK), -1);
  ck_assert_int_eq(simple_as(BOB, "info", 0, err, sizeof(err)), 0);
  teardown();
}
END_TEST

/* tcp:// is allowed because every request is authenticated: the same
 * rules over loopback. */
START_TEST(tcp_over_loopback_is_authenticated) {
  char out[8192], err[4096], sid[24];
  td_msg *m = NULL;
  td_pack p;
  uint64_t id;
  int s, code = -1;

  start_on(NULL, 20000 + (int)(getpid() % 20000));
  id = submit_ok(0, "overtcp");
  snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
  ck_assert_int_eq(client_as(ALICE, out, sizeof(out), err, sizeof(err), "show", sid, NULL), 0);
  ck_assert_int_eq(client_as(BOB, out, sizeof(out), err, sizeof(err), "show", sid, NULL), 3);
  ck_assert_msg(strstr(err, "belongs to " ALICE), "%s", err);
  /* no credential: refused */
  s = th_connect(g_d.sock, 10000);
  ck_assert(s >= 0);
  th_set_munge_socket(NULL);
  td_pack_init(&p);
  td_pack_request(&p, "list", 0);
  ck_assert(th_rpc_pack(s, &p, &m, &code, err, sizeof(err)) == 0);
  ck_assert_int_eq(code, TD_EAUTH);
  td_pack_free(&p);
  td_msg_free(m);
  th_set_munge_socket(g_d.munge_sock);
  nn_close(s);
  teardown();
}
END_TEST

/* A crowd of status subscribers must not take traind's descriptors: 1500
 * of them, from three processes (nanomsg allows 512 sockets in one). */
START_TEST(many_subscribers_leave_traind_answering) {
  enum { PROCS = 3, PER_PROC = 500 };
  pid_t kids[PROCS];
  struct rlimit rl;
  char err[512], addr[256];
  int ready[2];

  /* traind starts with the usual soft limit, as outside systemd */
  ck_assert(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  ck_assert_msg(rl.rlim_max > PROCS * PER_PROC + 200, "the hard limit %llu is too low here",
                (unsigned long long)rl.rlim_max);
  rl.rlim_cur = 1024;
  ck_assert(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  start(NULL);
  rl.rlim_cur = rl.rlim_max;
  ck_assert(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  snprintf(addr, sizeof(addr), "ipc://%s/status.sock", g_d.dir);
  ck_assert(pipe(ready) == 0);
  for (int k = 0; k < PROCS; k++) {
    kids[k] = fork();
    ck_assert(kids[k] >= 0);
    if (kids[k] == 0) {
      int n = 0;

      for (; n < PER_PROC; n++) {
        int sub = nn_socket(AF_SP, NN_SUB);
        if (sub < 0 || nn_setsockopt(sub, NN_SUB, NN_SUB_SUBSCRIBE, "", 0) < 0 ||
            nn_connect(sub, addr) < 0)
          break;
      }
      if (write(ready[1], &n, sizeof(n)) != sizeof(n))
        _exit(1);
      pause();
      _exit(0);
    }
  }
  for (int k = 0; k < PROCS; k++) {
    int n = 0;
    ck_assert(read(ready[0], &n, sizeof(n)) == sizeof(n));
    ck_assert_int_eq(n, PER_PROC);
  }
  th_msleep(2000); /* nanomsg connects in the background */
  for (int i = 0; i < 10; i++)
    ck_assert_int_eq(simple_as(ALICE, "info", 0, err, sizeof(err)), 0);
  for (int k = 0; k < PROCS; k++) {
    kill(kids[k], SIGKILL);
    waitpid(kids[k], NULL, 0);
  }
  close(ready[0]);
  close(ready[1]);
  teardown();
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("security");
  TCase *tc = tcase_create("attacks");

  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, forged_identities_are_refused);
  tcase_add_test(tc, users_act_only_on_their_own_jobs);
  tcase_add_test(tc, admin_group_may_change_devices);
  tcase_add_test(tc, private_data_hides_other_users_jobs);
  tcase_add_test(tc, a_dataset_the_user_may_not_read_stays_unread);
  tcase_add_test(tc, an_output_the_user_may_not_write_stays_unwritten);
  tcase_add_test(tc, jobs_run_as_their_submitter);
  tcase_add_test(tc, a_fifo_is_refused_and_traind_keeps_answering);
  tcase_add_test(tc, a_flood_is_limited_per_user);
  tcase_add_test(tc, many_subscribers_leave_traind_answering);
  tcase_add_test(tc, tcp_over_loopback_is_authenticated);
  tcase_add_test(tc, an_old_state_directory_is_made_private);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  if (geteuid() != 0) {
    fprintf(stderr, "skipped: needs root (it makes throwaway users and runs traind as root)\n");
    return 77;
  }
  return th_run(suite(), 1);
}
