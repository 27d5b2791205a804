/* Becoming a job's user (common/privdrop.c): the identity argument, and,
 * as root, a real drop to a throwaway user made for this run (with an
 * extra throwaway group), checked from the inside: files only root may
 * read stay shut, the groups are the user's, root cannot be regained.
 * Not root: the parser and the no-change rules are tested, then 77. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "privdrop.h"

static char user[33], group[33];
static int made_user, made_group;
static pid_t main_pid; /* Check's test processes inherit atexit and signal handlers */
static char secret_dir[64] = "/tmp/tdtest-priv-XXXXXX";
static char secret[128];

START_TEST(test_identity_parse) {
  static const char *bad[] = {
      "", "alice", "alice:1000", ":1000:1000", "alice::1000", "alice:1000:", "alice:x:1",
      "alice:1000:1000:1", "alice:-1:1000", "alice:+1:1000", "alice:4294967295:1",
      "alice:1:4294967295", "alice:99999999999:1", "-alice:1:1", "al ice:1:1", "al/ice:1:1",
      "a\tb:1:1", "abcdefghijabcdefghijabcdefghijabc:1:1", "alice:1 :1", "alice: 1:1",
  };
  td_identity id = {"unchanged", 7, 7};

  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_msg(td_identity_parse(bad[i], &id) == TD_EINVAL, "'%s' was accepted", bad[i]);
    ck_assert_str_eq(id.name, "unchanged"); /* written only on success */
  }
  ck_assert_int_eq(td_identity_parse(NULL, &id), TD_EINVAL);
  ck_assert_int_eq(td_identity_parse("alice:1000:100", &id), 0);
  ck_assert_str_eq(id.name, "alice");
  ck_assert_uint_eq(id.uid, 1000);
  ck_assert_uint_eq(id.gid, 100);
  ck_assert_int_eq(td_identity_parse("root:0:0", &id), 0);
  ck_assert_uint_eq(id.uid, 0);
  ck_assert_int_eq(td_identity_parse("abcdefghijabcdefghijabcdefghijab:4294967294:00042", &id), 0);
  ck_assert_uint_eq(strlen(id.name), 32);
  ck_assert_uint_eq(id.uid, 4294967294u);
  ck_assert_uint_eq(id.gid, 42);
  ck_assert_int_eq(td_identity_parse("svc.x_y-z$:5:6", &id), 0);
}
END_TEST

/* Run fn in a child; its message (empty: passed) comes back on a pipe. */
typedef void (*child_fn)(char *msg, size_t cap);

static void in_child(child_fn fn) {
  char msg[512] = "";
  int fds[2], status;
  ssize_t n;
  pid_t pid;

  ck_assert_int_eq(pipe(fds), 0);
  pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    fn(msg, sizeof(msg));
    (void)!write(fds[1], msg, strlen(msg));
    _exit(0);
  }
  close(fds[1]);
  n = read(fds[0], msg, sizeof(msg) - 1);
  msg[n > 0 ? n : 0] = '\0';
  close(fds[0]);
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(msg[0] == '\0', "%s", msg);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
}

#define CHILD_CHECK(cond, ...)                                                                  \
  do {                                                                                          \
    if (!(cond)) {                                                                              \
      snprintf(msg, cap, __VA_ARGS__);                                                          \
      return;                                                                                   \
    }                                                                                           \
  } while (0)

/* Without root nothing changes, and only the own uid is accepted (a
 * personal traind runs its jobs as itself). */
static void not_root_rules(char *msg, size_t cap) {
  td_identity self = {"self", (uint32_t)getuid(), (uint32_t)getgid()};
  td_identity other = {"other", (uint32_t)getuid() + 1, (uint32_t)getgid()};
  td_identity root = {"root", 0, 0};
  char err[256] = "";
  int rc;

  if (geteuid() == 0) {
    /* As root: drop to the throwaway user first (a fork of a root test). */
    td_identity u;
    struct passwd *pw = getpwnam(user);
    CHILD_CHECK(pw != NULL, "no user %s", user);
    u = (td_identity){"", (uint32_t)pw->pw_uid, (uint32_t)pw->pw_gid};
    snprintf(u.name, sizeof(u.name), "%s", user);
    rc = td_privdrop_become(&u, err, sizeof(err));
    CHILD_CHECK(rc == 0, "becoming %s: %s", user, err);
    self = u;
    other.uid = u.uid + 1;
  }
  rc = td_privdrop_become(&self, err, sizeof(err));
  CHILD_CHECK(rc == 0, "becoming oneself: %s", err);
  CHILD_CHECK(getuid() == self.uid && geteuid() == self.uid, "the uid changed");
  rc = td_privdrop_become(&other, err, sizeof(err));
  CHILD_CHECK(rc == TD_EINVAL, "becoming uid %u as uid %u: %s", other.uid, self.uid,
              td_err_name(rc));
  CHILD_CHECK(strstr(err, "cannot run as other (uid") != NULL, "message: %s", err);
  rc = td_privdrop_become(&root, err, sizeof(err));
  CHILD_CHECK(rc == TD_EINVAL, "becoming root as uid %u: %s", self.uid, td_err_name(rc));
}

START_TEST(test_not_root) { in_child(not_root_rules); }
END_TEST

static int has_group(const gid_t *g, int n, gid_t want) {
  for (int i = 0; i < n; i++)
    if (g[i] == want)
      return 1;
  return 0;
}

static void drop_and_check(char *msg, size_t cap) {
  struct passwd *pw = getpwnam(user);
  struct group *extra = getgrnam(group);
  gid_t have[256], want[256];
  int nhave, nwant = 256, fd, rc;
  uid_t r, e, s;
  char err[256] = "";
  td_identity id;

  CHILD_CHECK(pw != NULL && extra != NULL, "no user %s or group %s", user, group);
  id = (td_identity){"", (uint32_t)pw->pw_uid, (uint32_t)pw->pw_gid};
  snprintf(id.name, sizeof(id.name), "%s", user);
  CHILD_CHECK(getgrouplist(user, pw->pw_gid, want, &nwant) >= 0, "getgrouplist");
  rc = td_privdrop_become(&id, err, sizeof(err));
  CHILD_CHECK(rc == 0, "td_privdrop_become: %s: %s", td_err_name(rc), err);

  CHILD_CHECK(getresuid(&r, &e, &s) == 0 && r == pw->pw_uid && e == pw->pw_uid &&
                  s == pw->pw_uid, "uids %u/%u/%u", (unsigned)r, (unsigned)e, (unsigned)s);
  fd = open(secret, O_RDONLY);
  CHILD_CHECK(fd < 0 && errno == EACCES, "root's 0600 file: fd %d, %s", fd, strerror(errno));
  nhave = getgroups(256, have);
  CHILD_CHECK(nhave >= 0, "getgroups: %s", strerror(errno));
  CHILD_CHECK(has_group(have, nhave, extra->gr_gid), "the extra group %s is not in getgroups()",
              group);
  CHILD_CHECK(!has_group(have, nhave, 0), "root's group 0 is still there");
  CHILD_CHECK(nhave == nwant, "%d groups, the user has %d", nhave, nwant);
  for (int i = 0; i < nwant; i++)
    CHILD_CHECK(has_group(have, nhave, want[i]), "group %u missing", (unsigned)want[i]);
  CHILD_CHECK(setuid(0) < 0 && seteuid(0) < 0, "root came back");
  CHILD_CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs is not set");
}

START_TEST(test_become_user) { in_child(drop_and_check); }
END_TEST

/* A name that is not the uid's would bring someone else's groups. */
static void wrong_name(char *msg, size_t cap) {
  struct passwd *pw = getpwnam(user);
  td_identity id = {"root", 0, 0};
  char err[256] = "";
  int rc;

  CHILD_CHECK(pw != NULL, "no user %s", user);
  id.uid = (uint32_t)pw->pw_uid + 1;
  id.gid = (uint32_t)pw->pw_gid;
  snprintf(id.name, sizeof(id.name), "%s", user);
  rc = td_privdrop_become(&id, err, sizeof(err));
  CHILD_CHECK(rc == TD_EINVAL, "a mismatched name: %s", td_err_name(rc));
  CHILD_CHECK(strstr(err, user) != NULL && strstr(err, "is uid") != NULL, "message: %s", err);
  CHILD_CHECK(geteuid() == 0 && getuid() == 0, "a refused drop changed the uid");
  snprintf(id.name, sizeof(id.name), "tdtest-no-such-user");
  rc = td_privdrop_become(&id, err, sizeof(err));
  CHILD_CHECK(rc == TD_EINVAL && strstr(err, "no such user") != NULL, "unknown user: %s", err);
}

START_TEST(test_wrong_name) { in_child(wrong_name); }
END_TEST

/* A few tries: another process (another test run) may hold the lock on
 * /etc/passwd for a moment, and the shadow tools then give up at once. */
static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...) {
  char cmd[256];
  va_list ap;
  int rc = -1;

  va_start(ap, fmt);
  vsnprintf(cmd, sizeof(cmd), fmt, ap);
  va_end(ap);
  for (int i = 0; i < 5 && rc != 0; i++) {
    if (i > 0)
      sleep(1);
    rc = system(cmd);
  }
  return rc;
}

/* Whatever happens, the throwaway user, group and file go. */
static void cleanup(void) {
  if (getpid() != main_pid)
    return;
  if (made_user)
    run("userdel %s 2>/dev/null", user);
  if (made_group)
    run("groupdel %s 2>/dev/null", group);
  made_user = made_group = 0;
  if (secret[0]) {
    unlink(secret);
    rmdir(secret_dir);
  }
}

static void on_signal(int sig) {
  cleanup();
  signal(sig, SIG_DFL);
  raise(sig);
}

static int setup_root(void) {
  int fd;

  main_pid = getpid();
  snprintf(user, sizeof(user), "tdtest-priv-%d", (int)getpid());
  snprintf(group, sizeof(group), "tdtest-privg-%d", (int)getpid());
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  atexit(cleanup);
  if (run("useradd --system --no-create-home --shell /usr/sbin/nologin %s", user) != 0)
    return -1;
  made_user = 1;
  if (run("groupadd --system %s", group) != 0)
    return -1;
  made_group = 1;
  if (run("usermod -aG %s %s", group, user) != 0)
    return -1;
  /* Reachable by anyone, readable by root only: EACCES must come from the
   * file's own mode. */
  if (mkdtemp(secret_dir) == NULL || chmod(secret_dir, 0755) < 0)
    return -1;
  snprintf(secret, sizeof(secret), "%s/secret", secret_dir);
  fd = open(secret, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0)
    return -1;
  close(fd);
  return 0;
}

int main(void) {
  int root = geteuid() == 0, failed;
  Suite *s = suite_create("privdrop");
  TCase *tc = tcase_create("identity");
  SRunner *sr;

  tcase_add_test(tc, test_identity_parse);
  tcase_add_test(tc, test_not_root);
  suite_add_tcase(s, tc);
  if (root) {
    if (setup_root() < 0) {
      fprintf(stderr, "test_privdrop: cannot make the throwaway user %s: %s\n", user,
              strerror(errno));
      cleanup();
      return EXIT_FAILURE;
    }
    tc = tcase_create("drop");
    tcase_add_test(tc, test_become_user);
    tcase_add_test(tc, test_wrong_name);
    suite_add_tcase(s, tc);
  }
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  cleanup();
  if (failed != 0)
    return EXIT_FAILURE;
  /* Not root: the drop itself was not tested. */
  return root ? EXIT_SUCCESS : 77;
}
