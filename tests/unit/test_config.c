#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "log.h"

#define GIB ((uint64_t)1 << 30)
#define MIB ((uint64_t)1 << 20)

static void expect_ok(const char *text, td_config *c) {
  char err[512] = "";
  int rc = td_config_parse(text, strlen(text), c, err, sizeof(err));

  ck_assert_msg(rc == 0, "rc %s, err '%s'", td_err_name(rc), err);
}

/* Fails with TD_ECONFIG and exactly msg (or containing it, when partial);
 * out is left alone. */
static void expect_err2(const char *text, const char *msg, int partial) {
  td_config c, copy;
  char err[512] = "";
  int rc;

  memset(&c, 0x5A, sizeof(c));
  memcpy(&copy, &c, sizeof(c));
  rc = td_config_parse(text, strlen(text), &c, err, sizeof(err));
  ck_assert_msg(rc == TD_ECONFIG, "rc %s, err '%s'", td_err_name(rc), err);
  if (partial)
    ck_assert_msg(strstr(err, msg) != NULL, "'%s' not in '%s'", msg, err);
  else
    ck_assert_str_eq(err, msg);
  ck_assert_msg(memcmp(&c, &copy, sizeof(c)) == 0, "out written on failure");
}

static void expect_err(const char *text, const char *msg) {
  expect_err2(text, msg, 0);
}

static void expect_err_part(const char *text, const char *msg) {
  expect_err2(text, msg, 1);
}

static void assert_same(const td_config *a, const td_config *b) {
  ck_assert_str_eq(a->socket, b->socket);
  ck_assert_str_eq(a->status_socket, b->status_socket);
  ck_assert_str_eq(a->state_dir, b->state_dir);
  ck_assert_str_eq(a->libexec_dir, b->libexec_dir);
  ck_assert_int_eq(a->log_level, b->log_level);
  ck_assert_uint_eq(a->ring_slots, b->ring_slots);
  ck_assert_uint_eq(a->max_jobs, b->max_jobs);
  ck_assert_uint_eq(a->cancel_grace_ms, b->cancel_grace_ms);
  ck_assert_uint_eq(a->heartbeat_timeout_ms, b->heartbeat_timeout_ms);
  ck_assert_int_eq(a->ndevices, b->ndevices);
  for (int i = 0; i < a->ndevices; i++) {
    ck_assert_str_eq(a->devices[i].name, b->devices[i].name);
    ck_assert_uint_eq(a->devices[i].budget, b->devices[i].budget);
  }
}

static void assert_fixed_defaults(const td_config *c) {
  ck_assert_str_eq(c->libexec_dir, "");
  ck_assert_int_eq(c->log_level, TD_LOG_INFO);
  ck_assert_uint_eq(c->ring_slots, 4);
  ck_assert_uint_eq(c->max_jobs, 10000);
  ck_assert_uint_eq(c->cancel_grace_ms, 5000);
  ck_assert_uint_eq(c->heartbeat_timeout_ms, 60000);
  ck_assert_int_eq(c->ndevices, 1);
  ck_assert_str_eq(c->devices[0].name, "cpu0");
  ck_assert_uint_eq(c->devices[0].budget, 2 * GIB);
}

START_TEST(defaults_user) {
  td_config c;

  if (geteuid() == 0)
    return; /* defaults_root covers it */
  setenv("XDG_RUNTIME_DIR", "/tmp/xdg-run", 1);
  setenv("XDG_STATE_HOME", "/tmp/xdg-state", 1);
  td_config_defaults(&c);
  assert_fixed_defaults(&c);
  ck_assert_str_eq(c.socket, "ipc:///tmp/xdg-run/traind/traind.sock");
  ck_assert_str_eq(c.status_socket, "ipc:///tmp/xdg-run/traind/status.sock");
  ck_assert_str_eq(c.state_dir, "/tmp/xdg-state/traind");
  ck_assert_str_eq(c.metrics_listen, ""); /* one person's traind serves no TCP port */

  unsetenv("XDG_RUNTIME_DIR");
  unsetenv("XDG_STATE_HOME");
  setenv("HOME", "/home/someone", 1);
  td_config_defaults(&c);
  ck_assert_str_eq(c.socket, "ipc:///run/traind/traind.sock");
  ck_assert_str_eq(c.status_socket, "ipc:///run/traind/status.sock");
  ck_assert_str_eq(c.state_dir, "/home/someone/.local/state/traind");

  setenv("XDG_RUNTIME_DIR", "relative/dir", 1); /* not absolute: ignored */
  td_config_defaults(&c);
  ck_assert_str_eq(c.socket, "ipc:///run/traind/traind.sock");
}
END_TEST

START_TEST(defaults_root) {
  td_config c;

  if (geteuid() != 0)
    return;
  setenv("XDG_RUNTIME_DIR", "/tmp/xdg-run", 1);
  setenv("XDG_STATE_HOME", "/tmp/xdg-state", 1);
  td_config_defaults(&c);
  assert_fixed_defaults(&c);
  ck_assert_str_eq(c.socket, "ipc:///run/traind/traind.sock");
  ck_assert_str_eq(c.status_socket, "ipc:///run/traind/status.sock");
  ck_assert_str_eq(c.state_dir, "/var/lib/traind");
  ck_assert_str_eq(c.metrics_listen, "127.0.0.1:9464"); /* a service, on loopback */
}
END_TEST

START_TEST(empty_text_gives_defaults) {
  td_config c, d;

  td_config_defaults(&d);
  expect_ok("", &c);
  assert_same(&c, &d);
  expect_ok("# nothing but a comment\n", &c);
  assert_same(&c, &d);
  expect_ok("log_level: debug\n", &c);
  ck_assert_int_eq(c.log_level, TD_LOG_DEBUG);
  ck_assert_str_eq(c.socket, d.socket); /* others keep their defaults */
  ck_assert_int_eq(c.ndevices, 1);
}
END_TEST

START_TEST(full_config) {
  td_config c;

  expect_ok("socket: ipc:///srv/t/job.sock\n"
            "status_socket: \"ipc:///srv/t/status.sock\"\n"
            "state_dir: /srv/state\n"
            "libexec_dir: /opt/traind/libexec\n"
            "log_level: warning\n"
            "ring_slots: 64\n"
            "max_jobs: 12\n"
            "cancel_grace_ms: 0\n"
            "devices:\n"
            "  - {name: cuda0, budget: 70GiB}\n"
            "  - name: cuda1\n"
            "    budget: 1536MiB\n"
            "  - {name: cpu12, budget: 1048576}\n",
            &c);
  ck_assert_str_eq(c.socket, "ipc:///srv/t/job.sock");
  ck_assert_str_eq(c.status_socket, "ipc:///srv/t/status.sock");
  ck_assert_str_eq(c.state_dir, "/srv/state");
  ck_assert_str_eq(c.libexec_dir, "/opt/traind/libexec");
  ck_assert_int_eq(c.log_level, TD_LOG_WARN);
  ck_assert_uint_eq(c.ring_slots, 64);
  ck_assert_uint_eq(c.max_jobs, 12);
  ck_assert_uint_eq(c.cancel_grace_ms, 0);
  ck_assert_int_eq(c.ndevices, 3);
  ck_assert_str_eq(c.devices[0].name, "cuda0");
  ck_assert_uint_eq(c.devices[0].budget, 70 * GIB);
  ck_assert_str_eq(c.devices[1].name, "cuda1");
  ck_assert_uint_eq(c.devices[1].budget, 1536 * MIB);
  ck_assert_str_eq(c.devices[2].name, "cpu12");
  ck_assert_uint_eq(c.devices[2].budget, MIB);
}
END_TEST

START_TEST(deploy_file) {
  const char *root = getenv("TD_SOURCE_ROOT");
  char path[4096], err[512] = "";
  td_config c;
  int rc;

  snprintf(path, sizeof(path), "%s/deploy/traind.yaml", root ? root : ".");
  rc = td_config_load(path, &c, err, sizeof(err));
  ck_assert_msg(rc == 0, "%s: %s", td_err_name(rc), err);
  ck_assert_str_eq(c.socket, "ipc:///run/traind/traind.sock");
  ck_assert_str_eq(c.status_socket, "ipc:///run/traind/status.sock");
  ck_assert_str_eq(c.state_dir, "/var/lib/traind");
  assert_fixed_defaults(&c);
}
END_TEST

START_TEST(invalid_keys_and_types) {
  expect_err("ring_slots: 4\nring_slot: 4\n",
             "line 2: unknown key 'ring_slot' (did you mean 'ring_slots'?)");
  expect_err("ring_slots: many\n", "line 1: key 'ring_slots': expected an integer, got 'many'");
  expect_err("ring_slots: 1\n", "line 1: key 'ring_slots': must be between 2 and 64, got 1");
  expect_err("ring_slots: 65\n", "line 1: key 'ring_slots': must be between 2 and 64, got 65");
  expect_err("max_jobs: 0\n", "line 1: key 'max_jobs': must be between 1 and 1000000, got 0");
  expect_err("cancel_grace_ms: -1\n",
             "line 1: key 'cancel_grace_ms': must be between 0 and 600000, got -1");
  expect_err("\n\nlog_level: loud\n",
             "line 3: key 'log_level': must be one of error, warning, info, debug; got 'loud'");
  expect_err("state_dir: var/lib\n", "line 1: key 'state_dir': must be an absolute path");
  expect_err("state_dir: \"\"\n", "line 1: key 'state_dir': must not be empty");
  expect_err("libexec_dir: bin\n", "line 1: key 'libexec_dir': must be an absolute path");
  expect_err("- socket\n", "line 1: the config file must be a map of keys, got a sequence");
  expect_err("socket: {a: 1}\n", "line 1: key 'socket': expected a string, got a map");
  expect_err("ring_slots: 4\nring_slots: 5\n", "line 2: duplicate key 'ring_slots' (first at line 1)");
  expect_err("ring_slots: &r 4\n", "line 1: YAML aliases/anchors are not allowed");
}
END_TEST

START_TEST(invalid_sockets) {
  expect_err("multi_user: false\nsocket: tcp://0.0.0.0:5555\n",
             "line 2: a tcp:// socket needs multi_user: true (every request then carries a "
             "MUNGE credential); a traind for one person listens on ipc:// only");
  expect_err("multi_user: false\nstatus_socket: tcp://127.0.0.1:1\n",
             "line 2: a tcp:// socket needs multi_user: true (every request then carries a "
             "MUNGE credential); a traind for one person listens on ipc:// only");
  expect_err("socket_mode: 0044\n",
             "line 1: key 'socket_mode': must be octal permission bits that let traind's user "
             "read and write, such as \"0660\" (owner and group) or \"0600\" (traind's user "
             "alone), got '0044'");
  expect_err("multi_user: maybe\n",
             "line 1: key 'multi_user': must be one of auto, false, true; got 'maybe'");
  expect_err("socket: /run/traind/traind.sock\n",
             "line 1: key 'socket': must be an ipc:// address such as "
             "ipc:///run/traind/traind.sock, got '/run/traind/traind.sock'");
  expect_err("socket: ipc://traind.sock\n",
             "line 1: key 'socket': the ipc path must be absolute, as in "
             "ipc:///run/traind/traind.sock");
  expect_err_part("socket: ipc:///aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\n",
                  "line 1: key 'socket': the ipc path is 125 bytes long");
  expect_err("socket: ipc:///a/b.sock\nstatus_socket: ipc:///a/b.sock\n",
             "line 2: key 'status_socket': must differ from 'socket' (ipc:///a/b.sock)");
}
END_TEST

/* metrics_listen: an IP literal and a port, or "" for off. */
START_TEST(metrics_listen) {
  static const char *const bad[] = {"localhost:9464", "127.0.0.1", "127.0.0.1:", ":9464",
                                    "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:94x",
                                    "::1:9464", "[::1]9464", "[::1", "[]:1", "[127.0.0.1]:1",
                                    "http://127.0.0.1:9464", "1.2.3.4:+9"};
  struct sockaddr_storage ss;
  char text[128], msg[256];
  unsigned len;
  td_config c;

  expect_ok("metrics_listen: 127.0.0.1:9464\n", &c);
  ck_assert_str_eq(c.metrics_listen, "127.0.0.1:9464");
  expect_ok("metrics_listen: \"[::1]:9100\"\n", &c);
  ck_assert_int_eq(td_config_listen_addr(c.metrics_listen, &ss, &len, msg, sizeof(msg)), 0);
  ck_assert_int_eq(ss.ss_family, AF_INET6);
  ck_assert_uint_eq(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 9100);
  expect_ok("metrics_listen: 0.0.0.0:1\n", &c);
  expect_ok("metrics_listen: \"\"\n", &c);
  ck_assert_str_eq(c.metrics_listen, "");
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char want[256];

    snprintf(text, sizeof(text), "metrics_listen: \"%s\"\n", bad[i]);
    snprintf(want, sizeof(want), "line 1: key 'metrics_listen': must be an IP address and a "
             "port, such as 127.0.0.1:9464 or [::1]:9464 (\"\" turns metrics off), got '%s'",
             bad[i]);
    expect_err(text, want);
  }
}
END_TEST

START_TEST(invalid_devices) {
  expect_err("devices: []\n", "line 1: key 'devices': must have between 1 and 16 entries, got 0");
  expect_err("devices:\n", "line 1: key 'devices': must have between 1 and 16 entries, got 0");
  expect_err("devices: cpu0\n", "line 1: key 'devices': expected a sequence, got 'cpu0'");
  expect_err("devices:\n  - {name: cpu0, budget: 2GiB}\n  - {name: gpu1, budget: 2GiB}\n",
             "line 3: key 'devices[1].name': must be cpu or cuda followed by one or two digits "
             "(cpu0, cuda1), got 'gpu1'");
  expect_err("devices:\n  - {name: cuda100, budget: 2GiB}\n",
             "line 2: key 'devices[0].name': must be cpu or cuda followed by one or two digits "
             "(cpu0, cuda1), got 'cuda100'");
  expect_err("devices:\n  - {name: cpu0, budget: 2GiB}\n  - {name: cpu0, budget: 1GiB}\n",
             "line 3: key 'devices[1]': device 'cpu0' is listed twice");
  expect_err("devices:\n  - {name: cpu0, budget: 2GiB}\n  - {name: cpu1, budget: 1KiB}\n",
             "line 3: key 'devices[1].budget': must be at least 1.00 MiB, got 1.00 KiB");
  expect_err("devices:\n  - {name: cpu0, budget: lots}\n",
             "line 2: key 'devices[0].budget': expected a size such as 512MiB or 2GiB, got 'lots'");
  expect_err("devices:\n  - {name: cpu0, budget: -1GiB}\n",
             "line 2: key 'devices[0].budget': expected a size such as 512MiB or 2GiB, got '-1GiB'");
  expect_err("devices:\n  - {name: cpu0, budget: 99999999999TiB}\n",
             "line 2: key 'devices[0].budget': size 99999999999TiB is too large");
  expect_err("devices:\n  - {name: cpu0}\n", "line 2: key 'devices[0].budget' is required");
  expect_err("devices:\n  - {name: cpu0, budget: 1GiB, speed: 9}\n",
             "line 2: unknown key 'devices[0].speed'");
  expect_err("devices:\n  - cpu0\n", "line 2: key 'devices[0]': expected a map, got 'cpu0'");
}
END_TEST

START_TEST(too_many_devices) {
  char text[4096];
  size_t n = (size_t)snprintf(text, sizeof(text), "devices:\n");

  for (int i = 0; i < 17; i++)
    n += (size_t)snprintf(text + n, sizeof(text) - n, "  - {name: cpu%d, budget: 1GiB}\n", i);
  expect_err(text, "line 1: key 'devices': must have between 1 and 16 entries, got 17");
}
END_TEST

static void round_trip(const td_config *in) {
  char *text = NULL, err[512] = "";
  size_t len = 0;
  td_config out;
  FILE *f = open_memstream(&text, &len);
  int rc;

  ck_assert_ptr_nonnull(f);
  td_config_print(in, f);
  fclose(f);
  rc = td_config_parse(text, len, &out, err, sizeof(err));
  ck_assert_msg(rc == 0, "%s: %s\n%s", td_err_name(rc), err, text);
  assert_same(in, &out);
  free(text);
}

START_TEST(print_parse_round_trip) {
  td_config c;

  td_config_defaults(&c);
  round_trip(&c);

  expect_ok("socket: ipc:///srv/t/job \"q\" \\ sock\n"
            "status_socket: ipc:///srv/t/st#at.sock\n"
            "state_dir: \"/srv/st: ate\"\n"
            "libexec_dir: /opt/lib'exec\n"
            "log_level: error\n"
            "ring_slots: 2\nmax_jobs: 1000000\ncancel_grace_ms: 600000\n"
            "devices:\n"
            "  - {name: cuda0, budget: 70GiB}\n"
            "  - {name: cuda1, budget: 1536MiB}\n"
            "  - {name: cpu0, budget: 1048577}\n"
            "  - {name: cpu1, budget: 1027KiB}\n",
            &c);
  ck_assert_str_eq(c.socket, "ipc:///srv/t/job \"q\" \\ sock");
  ck_assert_str_eq(c.state_dir, "/srv/st: ate");
  ck_assert_uint_eq(c.devices[3].budget, 1027 * 1024);
  round_trip(&c);
}
END_TEST

START_TEST(print_format) {
  char *text = NULL;
  size_t len = 0;
  td_config c;
  FILE *f = open_memstream(&text, &len);

  td_config_defaults(&c);
  strcpy(c.state_dir, "/var/lib/traind");
  strcpy(c.socket, "ipc:///run/traind/traind.sock");
  strcpy(c.status_socket, "ipc:///run/traind/status.sock");
  c.socket_mode = 0660; /* the default as root */
  strcpy(c.metrics_listen, "127.0.0.1:9464");
  td_config_print(&c, f);
  fclose(f);
  ck_assert_str_eq(text, "socket: \"ipc:///run/traind/traind.sock\"\n"
                         "status_socket: \"ipc:///run/traind/status.sock\"\n"
                         "metrics_listen: \"127.0.0.1:9464\"\n"
                         "state_dir: \"/var/lib/traind\"\n"
                         "libexec_dir: \"\"\n"
                         "log_level: info\n"
                         "ring_slots: 4\n"
                         "max_jobs: 10000\n"
                         "cancel_grace_ms: 5000\n"
                         "heartbeat_timeout_ms: 60000\n"
                         "devices:\n"
                         "  - {name: \"cpu0\", budget: 2GiB}\n"
                         "multi_user: auto\n"
                         "munge_socket: \"\"\n"
                         "admin_group: \"\"\n"
                         "private_data: false\n"
                         "socket_mode: \"0660\"\n"
                         "socket_group: \"\"\n"
                         "max_jobs_per_user: 1000\n"
                         "max_running_per_user: 0\n"
                         "retention_days: 30\n"
                         "retention_jobs: 20000\n"
                         "fairshare_halflife_s: 604800\n");
  free(text);
}
END_TEST

START_TEST(load_errors) {
  char err[512];
  td_config c;

  ck_assert_int_eq(td_config_load("/nonexistent/traind.yaml", &c, err, sizeof(err)), TD_ENOENT);
  ck_assert_str_eq(err, "cannot read config file '/nonexistent/traind.yaml': No such file");
}
END_TEST

START_TEST(device_names) {
  ck_assert(td_device_name_valid("cpu0"));
  ck_assert(td_device_name_valid("cpu99"));
  ck_assert(td_device_name_valid("cuda7"));
  ck_assert(!td_device_name_valid("cpu"));
  ck_assert(!td_device_name_valid("cuda100"));
  ck_assert(!td_device_name_valid("gpu0"));
  ck_assert(!td_device_name_valid("cpu0 "));
  ck_assert(!td_device_name_valid("CPU0"));
  ck_assert(!td_device_name_valid(""));
  ck_assert_str_eq(td_config_log_level_name(TD_LOG_WARN), "warning");
  ck_assert_ptr_null(td_config_log_level_name(42));
}
END_TEST

static Suite *config_suite(void) {
  Suite *s = suite_create("config");
  TCase *tc = tcase_create("core");

  tcase_add_test(tc, defaults_user);
  tcase_add_test(tc, defaults_root);
  tcase_add_test(tc, empty_text_gives_defaults);
  tcase_add_test(tc, full_config);
  tcase_add_test(tc, deploy_file);
  tcase_add_test(tc, invalid_keys_and_types);
  tcase_add_test(tc, invalid_sockets);
  tcase_add_test(tc, metrics_listen);
  tcase_add_test(tc, invalid_devices);
  tcase_add_test(tc, too_many_devices);
  tcase_add_test(tc, print_parse_round_trip);
  tcase_add_test(tc, print_format);
  tcase_add_test(tc, load_errors);
  tcase_add_test(tc, device_names);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(config_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
