/* Integration: traind's Prometheus endpoint (metrics_listen).
 *
 * Without arguments: the endpoint itself, against a real traind on a free
 * loopback port: GET /metrics and nothing else (404, 405), the numbers
 * follow requests, admissions and jobs, label values are escaped (a job
 * name a client chose with quotes, backslashes, a newline and a non-ASCII
 * letter), private_data leaves names and owners out, a failed allocation
 * is counted as an OOM, a re-plan and a recovery time, and idle or
 * half-sent HTTP connections leave the job socket answering.
 *
 * With --prometheus: the page passes `promtool check metrics`, and a real
 * Prometheus (Debian's `prometheus`, on its own port and data directory)
 * scrapes traind every second while a job trains and its device's budget
 * is cut; its HTTP API then answers for the job's samples/s and the
 * re-plan counter; every expression of the Grafana dashboard runs on it.
 * Exits 77 (skipped) where the package is missing. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "harness.h"
#include "metrics_page.h"
#include "proto.h"
#include "util.h"

#define PROMETHEUS "/usr/bin/prometheus"

static th_daemon g_d;
static int g_sock = -1;
static int g_port;
static pid_t g_prom = -1;

/* A port nobody listens on now (the kernel's choice; free again once
 * closed, and nothing else in these tests takes ports). */
static int free_port(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  close(fd);
  return ntohs(a.sin_port);
}

static int connect_port(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 10};
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  if (fd < 0)
    return -1;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* One HTTP/1.0 request; returns the status code (-1: no answer) and the
 * body, malloc'd, in *body (may be NULL). */
static int http(int port, const char *method, const char *path, char **body) {
  char req[1024], *buf = NULL, *p;
  size_t len = 0, cap = 0;
  int fd = connect_port(port), status = -1;
  ssize_t n;

  if (body != NULL)
    *body = NULL;
  if (fd < 0)
    return -1;
  snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", method, path);
  if (write(fd, req, strlen(req)) != (ssize_t)strlen(req))
    goto close_fd;
  for (;;) {
    if (cap - len < 65536) {
      cap = cap ? cap * 2 : 131072;
      ck_assert_ptr_nonnull(buf = realloc(buf, cap));
    }
    if ((n = read(fd, buf + len, cap - len - 1)) <= 0)
      break;
    len += (size_t)n;
  }
  if (buf == NULL || len == 0)
    goto close_fd;
  buf[len] = '\0';
  if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
    status = -1;
  if (body != NULL && (p = strstr(buf, "\r\n\r\n")) != NULL) {
    *body = strdup(p + 4);
    ck_assert_ptr_nonnull(*body);
  }
close_fd:
  free(buf);
  close(fd);
  return status;
}

static char *scrape(void) {
  char *page = NULL;
  int status = http(g_port, "GET", "/metrics", &page);

  ck_assert_msg(status == 200, "GET /metrics answered %d", status);
  ck_assert_ptr_nonnull(page);
  return page;
}

/* Wait until a scrape's sample reaches at least want (the page is
 * rendered once a second). */
static double wait_sample(const char *series, double want, int timeout_ms) {
  double end = td_now_mono() + timeout_ms / 1000.0, v;

  do {
    char *page = scrape();

    v = th_page_sample(page, series);
    free(page);
    if (v >= want)
      return v;
    th_msleep(100);
  } while (td_now_mono() < end);
  ck_abort_msg("%s stayed at %g, below %g", series, v, want);
  return v;
}

static void start(const char *budget, const char *extra, int stub) {
  char cfg[512];

  g_port = free_port();
  snprintf(cfg, sizeof(cfg), "metrics_listen: 127.0.0.1:%d\n%s", g_port, extra ? extra : "");
  ck_assert_int_eq(th_daemon_init(&g_d, budget, cfg, stub), 0);
  ck_assert_msg(th_daemon_start(&g_d, 20000) == 0, "traind did not start: %s",
                th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_ge(g_sock, 0);
}

static void stop(void) {
  ck_assert_msg(th_daemon_stop(&g_d) == 0, "traind did not stop cleanly: %s",
                th_log_tail(&g_d));
  th_daemon_remove(&g_d);
}

static int wait_running(uint64_t id) {
  char last[16] = "";
  int rc = th_wait_state(g_sock, id, "running", 10000, last, sizeof(last));

  ck_assert_msg(rc == 0, "job %llu is %s, not running", (unsigned long long)id, last);
  return rc;
}

/* The owner traind records for this process's jobs. */
static const char *me(void) {
  struct passwd *pw = getpwuid(geteuid());

  return pw != NULL ? pw->pw_name : "";
}

static uint64_t submit_named(const char *yaml, const char *key, const char *name) {
  td_pack p;
  td_msg *m = NULL;
  char err[512];
  int code = -1;
  uint64_t id = 0;

  td_pack_init(&p);
  th_pack_submit(&p, yaml, "/tmp", key, name);
  ck_assert_int_eq(th_rpc_pack(g_sock, &p, &m, &code, err, sizeof(err)), 0);
  ck_assert_msg(code == 0, "submit refused: %s", err);
  ck_assert_int_eq(td_obj_u64(td_msg_root(m), "id", &id), 0);
  td_msg_free(m);
  td_pack_free(&p);
  return id;
}

/* Only GET (and HEAD) of /metrics; the page is the text format's. */
START_TEST(test_only_get_metrics) {
  char *page, *body;

  start("1GiB", NULL, 1);
  page = scrape();
  CHECK_PAGE(strstr(page, "# TYPE traind_build_info gauge\n") != NULL, page);
  ck_assert_double_eq(th_page_sample(page, "traind_device_budget_bytes{device=\"cpu0\"}"),
                      (double)(1u << 30));
  ck_assert_double_eq(th_page_sample(page, "traind_device_draining{device=\"cpu0\"}"), 0);
  free(page);
  ck_assert_int_eq(http(g_port, "GET", "/", &body), 404);
  ck_assert_ptr_nonnull(strstr(body, "/metrics"));
  free(body);
  ck_assert_int_eq(http(g_port, "GET", "/metrics/../etc/passwd", NULL), 404);
  ck_assert_int_eq(http(g_port, "POST", "/metrics", NULL), 405);
  ck_assert_int_eq(http(g_port, "DELETE", "/metrics", NULL), 405);
  ck_assert_int_eq(http(g_port, "HEAD", "/metrics", NULL), 200);
  stop();
}
END_TEST

/* A port another program holds is logged, and traind serves jobs without
 * metrics: monitoring never stops training. */
START_TEST(test_port_taken) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof(a);
  char cfg[128], want[160], *log = NULL;
  size_t len;
  int fd = socket(AF_INET, SOCK_STREAM, 0), code = -1;

  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
  ck_assert_int_eq(listen(fd, 1), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
  snprintf(cfg, sizeof(cfg), "metrics_listen: 127.0.0.1:%d\n", ntohs(a.sin_port));
  ck_assert_int_eq(th_daemon_init(&g_d, "1GiB", cfg, 1), 0);
  ck_assert_msg(th_daemon_start(&g_d, 20000) == 0, "traind did not start: %s",
                th_log_tail(&g_d));
  g_sock = th_connect(g_d.sock, 10000);
  ck_assert_int_eq(th_rpc_simple(g_sock, "info", NULL, 0, NULL, &code, NULL, 0), 0);
  ck_assert_int_eq(code, 0);
  ck_assert_int_eq(td_read_file(g_d.log, 1 << 22, &log, &len), 0);
  snprintf(want, sizeof(want), "warning: metrics: not served: cannot listen on 127.0.0.1:%d: "
           "Address already in use", ntohs(a.sin_port));
  CHECK_PAGE(strstr(log, want) != NULL, log);
  free(log);
  close(fd);
  stop();
}
END_TEST

/* Requests, admissions and jobs show on the page; a name a client chose
 * is escaped as the format says. */
START_TEST(test_counts_and_escaping) {
  static const char name[] = "q\"uo\\te\nnl\xc3\xa9";
  char yaml[4096], *page, series[256];
  uint64_t id, id2;

  start("1GiB", NULL, 1);
  th_job_yaml(yaml, sizeof(yaml), "esc", 64, 1, 1000, 32);
  id = submit_named(yaml, "k1", name);
  ck_assert_int_eq(wait_running(id), 0);
  id2 = submit_named(yaml, "k2", NULL);
  ck_assert_int_eq(wait_running(id2), 0);
  wait_sample("traind_admissions_total{device=\"cpu0\"}", 2, 5000);
  page = scrape();
  snprintf(series, sizeof(series),
           "traind_job_planned_bytes{id=\"%llu\",name=\"q\\\"uo\\\\te\\nnl\xc3\xa9\","
           "owner=\"%s\",device=\"cpu0\"}",
           (unsigned long long)id, me());
  CHECK_PAGE(th_page_sample(page, series) > 0, page);
  ck_assert_double_eq(th_page_sample(page, "traind_admission_remedies_total{remedy=\"whole_batch\"}"), 2);
  ck_assert_double_eq(th_page_sample(page, "traind_device_running_jobs{device=\"cpu0\"}"), 2);
  CHECK_PAGE(th_page_sample(page, "traind_requests_total{op=\"submit\",code=\"OK\"}") >= 2, page);
  CHECK_PAGE(th_page_sample(page, "traind_queue_wait_seconds_count") >= 2, page);
  CHECK_PAGE(th_page_sample(page, "traind_db_commit_duration_seconds_count") >= 2, page);
  free(page);

  /* A refusal is counted by its code; a cancel ends a job for its owner. */
  {
    int code = 0;
    ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", 999999, NULL, &code, NULL, 0), 0);
    ck_assert_int_eq(code, TD_ENOENT);
    ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", id2, NULL, &code, NULL, 0), 0);
    ck_assert_int_eq(code, 0);
  }
  wait_sample("traind_requests_total{op=\"show\",code=\"ENOENT\"}", 1, 5000);
  snprintf(series, sizeof(series), "traind_jobs_ended_total{outcome=\"cancelled\",owner=\"%s\"}",
           me());
  wait_sample(series, 1, 10000);
  stop();
}
END_TEST

/* Under private_data the page names no job and no owner. */
START_TEST(test_private_data) {
  char yaml[4096], *page, series[128];
  uint64_t id;

  start("1GiB", "private_data: true\n", 1);
  th_job_yaml(yaml, sizeof(yaml), "secret-name", 64, 1, 1000, 32);
  id = submit_named(yaml, "k1", NULL);
  ck_assert_int_eq(wait_running(id), 0);
  snprintf(series, sizeof(series),
           "traind_job_planned_bytes{id=\"%llu\",name=\"\",owner=\"\",device=\"cpu0\"}",
           (unsigned long long)id);
  wait_sample(series, 1, 5000);
  page = scrape();
  CHECK_PAGE(strstr(page, "secret-name") == NULL, page);
  snprintf(series, sizeof(series), "owner=\"%s\"", me());
  CHECK_PAGE(strstr(page, series) == NULL, page);
  ck_assert_double_eq(th_page_sample(page, "traind_jobs{state=\"running\",owner=\"\"}"), 1);
  free(page);
  stop();
}
END_TEST

/* A worker's failed allocation (memory.fail_alloc) is an OOM event, a
 * re-plan and, once it trains again, a time to recovery; the job's end is
 * counted for its owner. */
START_TEST(test_oom_counted) {
  char yaml[4096], series[160], *page;
  uint64_t id;

  start("1GiB", NULL, 0);
  th_job_yaml(yaml, sizeof(yaml), "faulty", 128, 1, 2000, 32);
  strcat(yaml, "memory:\n  fail_alloc: 100\n");
  id = submit_named(yaml, "fault", NULL);
  ck_assert_int_eq(th_wait_state(g_sock, id, "succeeded", 120000, series, sizeof(series)), 0);
  snprintf(series, sizeof(series), "traind_jobs_ended_total{outcome=\"succeeded\",owner=\"%s\"}",
           me());
  wait_sample(series, 1, 5000);
  page = scrape();
  CHECK_PAGE(th_page_sample(page, "traind_oom_events_total{device=\"cpu0\"}") == 1, page);
  CHECK_PAGE(th_page_sample(page, "traind_replans_total{device=\"cpu0\"}") == 1, page);
  CHECK_PAGE(th_page_sample(page, "traind_oom_recovery_seconds_count") == 1, page);
  CHECK_PAGE(th_page_sample(page, "traind_oom_recovery_seconds_sum") > 0, page);
  printf("OOM to the next step: %g s\n", th_page_sample(page, "traind_oom_recovery_seconds_sum"));
  free(page);
  stop();
}
END_TEST

/* Connections that never finish their request, and more of them than the
 * endpoint takes, hold the HTTP thread's slots only: the job socket
 * answers at once, and the endpoint serves again once they go. */
START_TEST(test_hostile_clients_do_not_stall) {
  int fds[48], nfd = 0, code = -1;
  double t0;
  char *page;

  start("1GiB", NULL, 1);
  for (int i = 0; i < 48; i++) {
    int fd = connect_port(g_port);

    if (fd < 0)
      continue;
    if (i % 2 == 0) /* half a request line, never finished */
      ck_assert_int_eq(write(fd, "GET /metr", 9), 9);
    fds[nfd++] = fd;
  }
  t0 = td_now_mono();
  ck_assert_int_eq(th_rpc_simple(g_sock, "info", NULL, 0, NULL, &code, NULL, 0), 0);
  ck_assert_int_eq(code, 0);
  printf("info answered in %.4f s with %d HTTP connections held open\n", td_now_mono() - t0,
         nfd);
  for (int i = 0; i < nfd; i++)
    close(fds[i]);
  /* The server notices the closed connections and takes new ones. */
  {
    double end = td_now_mono() + 20;
    int status;

    while ((status = http(g_port, "GET", "/metrics", &page)) != 200 && td_now_mono() < end) {
      free(page);
      th_msleep(100);
    }
    ck_assert_int_eq(status, 200);
    printf("the endpoint served again %.2f s after the connections closed\n",
           td_now_mono() - (end - 20));
    free(page);
  }
  stop();
}
END_TEST

/* promtool's linter has nothing to say about a page with every family in
 * use: jobs running (one with a hostile name), a request refused, a job
 * ended. */
START_TEST(test_promtool_check) {
  char yaml[4096], *page;
  uint64_t id;
  int code = -1;

  start("1GiB", NULL, 1);
  th_job_yaml(yaml, sizeof(yaml), "linted", 64, 1, 1000, 32);
  id = submit_named(yaml, "k1", "a \"quoted\" \\ name\n\xc3\xa9");
  ck_assert_int_eq(wait_running(id), 0);
  submit_named(yaml, "k2", NULL);
  ck_assert_int_eq(th_rpc_simple(g_sock, "show", "id", 424242, NULL, &code, NULL, 0), 0);
  ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", id, NULL, &code, NULL, 0), 0);
  wait_sample("traind_requests_total{op=\"cancel\",code=\"OK\"}", 1, 5000);
  page = scrape();
  ck_assert_int_eq(th_page_lint(page), 0);
  printf("promtool check metrics: a page of %zu bytes, nothing to say\n", strlen(page));
  free(page);
  stop();
}
END_TEST

static void prom_kill(void) {
  if (g_prom > 0) {
    kill(g_prom, SIGKILL);
    waitpid(g_prom, NULL, 0);
    g_prom = -1;
  }
}

/* Prometheus on 127.0.0.1:port with its config and data under dir,
 * scraping traind's endpoint every second.  It dies with this process
 * (PR_SET_PDEATHSIG) if a failed check ends it first. */
static void prom_start(const char *dir, int port) {
  char cfg[256], data[256], listen[64], cfgarg[300], dataarg[300], logpath[256];
  FILE *f;
  int logfd;

  snprintf(cfg, sizeof(cfg), "%s/prometheus.yml", dir);
  snprintf(data, sizeof(data), "%s/prometheus-data", dir);
  snprintf(logpath, sizeof(logpath), "%s/prometheus.log", dir);
  ck_assert_ptr_nonnull(f = fopen(cfg, "w"));
  fprintf(f,
          "global:\n"
          "  scrape_interval: 1s\n"
          "  scrape_timeout: 1s\n"
          "  evaluation_interval: 1s\n"
          "scrape_configs:\n"
          "  - job_name: traind\n"
          "    static_configs:\n"
          "      - targets: ['127.0.0.1:%d']\n",
          g_port);
  fclose(f);
  snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%d", port);
  snprintf(cfgarg, sizeof(cfgarg), "--config.file=%s", cfg);
  snprintf(dataarg, sizeof(dataarg), "--storage.tsdb.path=%s", data);
  ck_assert_int_ge(logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644), 0);
  g_prom = fork();
  ck_assert_int_ge(g_prom, 0);
  if (g_prom == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(logfd, 1);
    dup2(logfd, 2);
    execl(PROMETHEUS, PROMETHEUS, cfgarg, dataarg, listen, "--storage.tsdb.retention.time=1h",
          (char *)NULL);
    _exit(127);
  }
  close(logfd);
}

/* The answer of Prometheus' instant query API for expr (URL-encoded by
 * the caller), malloc'd JSON. */
static char *prom_query(int port, const char *expr) {
  char path[512], *body = NULL;
  int status;

  snprintf(path, sizeof(path), "/api/v1/query?query=%s", expr);
  status = http(port, "GET", path, &body);
  ck_assert_msg(status == 200, "Prometheus answered %d to %s: %s", status, path,
                body ? body : "");
  return body;
}

/* The first result's value in a vector answer, NAN if there is none:
 * {"status":"success","data":{"resultType":"vector","result":[{"metric":
 * {...},"value":[1733590000.123,"42.5"]}]}} */
static double prom_value(const char *json) {
  const char *v = strstr(json, "\"value\":[");

  if (v == NULL || (v = strchr(v, ',')) == NULL || v[1] != '"')
    return NAN;
  return strtod(v + 2, NULL);
}

/* Poll the query until its value is at least want; returns the last answer. */
static char *prom_wait(int port, const char *expr, double want, int timeout_ms) {
  double end = td_now_mono() + timeout_ms / 1000.0;
  char *json = NULL;

  do {
    free(json);
    json = prom_query(port, expr);
    if (prom_value(json) >= want)
      return json;
    th_msleep(250);
  } while (td_now_mono() < end);
  ck_abort_msg("Prometheus never answered %s with %g or more; last answer: %s", expr, want,
               json);
  return json;
}

/* expr with Grafana's variables given values, percent-encoded for a URL. */
static void url_expr(const char *expr, char *out, size_t cap) {
  static const char keep[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~";
  size_t n = 0;

  for (const char *p = expr; *p;) {
    const char *s = p;
    size_t len = 1;

    if (strncmp(p, "$__rate_interval", 16) == 0)
      s = "1m", len = 2, p += 16;
    else if (strncmp(p, "$device", 7) == 0)
      s = ".*", len = 2, p += 7;
    else
      p++;
    for (size_t i = 0; i < len && n + 4 < cap; i++) {
      if (strchr(keep, s[i]) != NULL)
        out[n++] = s[i];
      else
        n += (size_t)snprintf(out + n, cap - n, "%%%02X", (unsigned char)s[i]);
    }
  }
  out[n] = '\0';
}

/* Every expression of deploy/grafana-dashboard.json runs on this
 * Prometheus; returns how many answered with data. */
static int dashboard_queries(int port, int *total) {
  const char *root = getenv("TD_SOURCE_ROOT");
  char cmd[1024], line[2048], url[4096];
  int with_data = 0;
  FILE *p;

  snprintf(cmd, sizeof(cmd),
           "python3 -c 'import json, sys\n"
           "def walk(n):\n"
           "    if isinstance(n, dict):\n"
           "        for k, v in n.items():\n"
           "            yield from ([v] if k == \"expr\" else walk(v))\n"
           "    elif isinstance(n, list):\n"
           "        for v in n: yield from walk(v)\n"
           "for e in walk(json.load(open(sys.argv[1]))): print(e.replace(chr(10), chr(32)))' "
           "%s/deploy/grafana-dashboard.json", root ? root : ".");
  ck_assert_ptr_nonnull(p = popen(cmd, "r"));
  *total = 0;
  while (fgets(line, sizeof(line), p) != NULL) {
    char *json;

    line[strcspn(line, "\n")] = '\0';
    url_expr(line, url, sizeof(url));
    json = prom_query(port, url);
    ck_assert_msg(strstr(json, "\"status\":\"success\"") != NULL, "%s: %s", line, json);
    if (strstr(json, "\"result\":[]") == NULL)
      with_data++;
    else
      printf("dashboard: no data yet for %s\n", line);
    (*total)++;
    free(json);
  }
  ck_assert_int_eq(pclose(p), 0);
  ck_assert_int_gt(*total, 0);
  return with_data;
}

static void prom_teardown(void) {
  prom_kill();
}

/* The plan total of a job file (a throwaway traind). */
static uint64_t plan_total(const char *yaml) {
  uint64_t total = 0;

  ck_assert_int_eq(th_plan_total(yaml, &total), 0);
  return total;
}

/* A job trains; its device's budget is cut below its plan, so the worker
 * re-plans; Prometheus, scraping every second, has both. */
START_TEST(test_prometheus_scrapes) {
  char yaml[8192], small_yaml[8192], expr[256], *json;
  uint64_t id, small;
  int pport, code = -1;
  double t0 = td_now_mono();

  th_job_yaml(yaml, sizeof(yaml), "scraped", 1024, 2, 60000, 64);
  strcat(yaml, "memory:\n  min_micro_batch: 4\n");
  th_job_yaml(small_yaml, sizeof(small_yaml), "probe", 1024, 1, 100, 16);
  small = plan_total(small_yaml); /* the plan at micro-batch 16: what the budget drops to */

  start("1GiB", NULL, 0);
  pport = free_port();
  prom_start(g_d.dir, pport);
  {
    double end = td_now_mono() + 60;
    int status;

    while ((status = http(pport, "GET", "/-/ready", NULL)) != 200 && td_now_mono() < end)
      th_msleep(200);
    ck_assert_msg(status == 200, "Prometheus did not get ready (see %s/prometheus.log)",
                  g_d.dir);
  }
  printf("Prometheus ready after %.1f s\n", td_now_mono() - t0);

  id = submit_named(yaml, "scraped", NULL);
  ck_assert_int_eq(th_wait_training(g_sock, id, 60000), 0);
  snprintf(expr, sizeof(expr), "traind_job_samples_per_second%%7Bid%%3D%%22%llu%%22%%7D",
           (unsigned long long)id);
  json = prom_wait(pport, expr, 1, 60000);
  printf("Prometheus: traind_job_samples_per_second{id=\"%llu\"}: %s\n",
         (unsigned long long)id, json);
  free(json);

  /* Cut the budget to the plan at micro-batch 16: the worker re-plans. */
  {
    td_pack p;
    char err[512];

    td_pack_init(&p);
    td_pack_request(&p, "device", 2);
    td_pack_kv_str(&p, "name", "cpu0");
    td_pack_kv_u64(&p, "budget", small);
    ck_assert_int_eq(th_rpc_pack(g_sock, &p, NULL, &code, err, sizeof(err)), 0);
    ck_assert_msg(code == 0, "device refused: %s", err);
    td_pack_free(&p);
  }
  json = prom_wait(pport, "traind_replans_total%7Bdevice%3D%22cpu0%22%7D", 1, 60000);
  printf("Prometheus: traind_replans_total{device=\"cpu0\"}: %s\n", json);
  free(json);
  snprintf(expr, sizeof(expr), "traind_job_planned_bytes%%7Bid%%3D%%22%llu%%22%%7D",
           (unsigned long long)id);
  json = prom_query(pport, expr);
  printf("Prometheus: traind_job_planned_bytes{id=\"%llu\"}: %s (the cut budget: %llu)\n",
         (unsigned long long)id, json, (unsigned long long)small);
  /* The page that counted the re-plan has the new plan too. */
  ck_assert_msg(prom_value(json) == (double)small, "%s", json);
  free(json);
  /* Still training after the re-plan, at the smaller micro-batch: its
   * step goes on. */
  snprintf(expr, sizeof(expr), "traind_job_step%%7Bid%%3D%%22%llu%%22%%7D",
           (unsigned long long)id);
  json = prom_query(pport, expr);
  {
    double step = prom_value(json);

    ck_assert_msg(step >= 1, "%s", json);
    free(json);
    json = prom_wait(pport, expr, step + 1, 30000);
    printf("Prometheus: traind_job_step{id=\"%llu\"}: %g at the re-plan, then %s\n",
           (unsigned long long)id, step, json);
    free(json);
  }

  {
    int total, with_data = dashboard_queries(pport, &total);

    printf("dashboard: %d of %d expressions answered with data\n", with_data, total);
  }

  ck_assert_int_eq(th_rpc_simple(g_sock, "cancel", "id", id, NULL, &code, NULL, 0), 0);
  prom_kill();
  stop();
}
END_TEST

static Suite *endpoint_suite(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("endpoint");

  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_only_get_metrics);
  tcase_add_test(tc, test_port_taken);
  tcase_add_test(tc, test_counts_and_escaping);
  tcase_add_test(tc, test_private_data);
  tcase_add_test(tc, test_oom_counted);
  tcase_add_test(tc, test_hostile_clients_do_not_stall);
  suite_add_tcase(s, tc);
  return s;
}

static Suite *prometheus_suite(void) {
  Suite *s = suite_create("prometheus");
  TCase *tc = tcase_create("prometheus");

  tcase_set_timeout(tc, 300);
  tcase_add_checked_fixture(tc, NULL, prom_teardown);
  tcase_add_test(tc, test_promtool_check);
  tcase_add_test(tc, test_prometheus_scrapes);
  suite_add_tcase(s, tc);
  return s;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--prometheus") == 0) {
    if (access(PROMETHEUS, X_OK) != 0 || access(TH_PROMTOOL, X_OK) != 0) {
      printf("skipped: Prometheus is not installed (%s, %s: Debian's package prometheus, "
             "which .ci/run installs)\n", PROMETHEUS, TH_PROMTOOL);
      return 77;
    }
    return th_run(prometheus_suite(), 1);
  }
  return th_run(endpoint_suite(), 1);
}
