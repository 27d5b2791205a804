/* daemon/metrics.c: the page it renders from a daemon's tables and its own
 * counters, without a loop or a socket.  Each test runs in its own process
 * (Check's fork mode), so the module's counters start at zero in each.
 * Where promtool is installed, the pages also pass its lint. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "metrics.h"
#include "metrics_page.h"
#include "util.h"

/* main.c's, which this test does not link. */
const char *td_job_state_name(td_job_state s) {
  static const char *const names[] = {"queued", "running", "succeeded", "failed", "cancelled"};
  return (unsigned)s < TD_JOB__NSTATES ? names[s] : "unknown";
}

static td_daemon g_d;
static td_job g_jobs[4];
static td_job *g_ptrs[4];

static void setup(void) {
  memset(&g_d, 0, sizeof(g_d));
  memset(g_jobs, 0, sizeof(g_jobs));
  g_d.ndevices = 2;
  strcpy(g_d.devices[0].name, "cpu0");
  g_d.devices[0].budget = 1000;
  g_d.devices[0].reserved = 600;
  g_d.devices[0].njobs = 2;
  g_d.devices[0].total = 4096;
  strcpy(g_d.devices[1].name, "cpu1");
  g_d.devices[1].budget = 500;
  g_d.devices[1].draining = 1;
  for (int i = 0; i < 4; i++) {
    td_job *j = &g_jobs[i];

    j->id = (uint64_t)i + 1;
    snprintf(j->name, sizeof(j->name), "job%d", i + 1);
    strcpy(j->owner, i < 3 ? "alice" : "bob");
    j->uid = i < 3 ? 1000 : 1001;
    j->state = i < 2 ? TD_JOB_RUNNING : TD_JOB_QUEUED;
    if (j->state == TD_JOB_RUNNING)
      strcpy(j->device, "cpu0");
    j->plan.total = 300;
    j->mem = 250;
    j->epoch = 2;
    j->steps = 100;
    j->step = 7;
    j->loss = 0.25;
    j->samples_per_sec = 1234.5;
    j->data_wait = 0.001;
    j->submitted_ms = td_now_unix_ms();
    g_ptrs[i] = j;
  }
  g_d.jobs = g_ptrs;
  g_d.njobs = 4;
  g_d.start_mono = td_now_mono();
}

static char *render(void) {
  char *page = NULL;
  size_t len = 0;

  ck_assert_int_eq(td_metrics_render(&g_d, &page, &len), 0);
  ck_assert_uint_eq(strlen(page), len);
  return page;
}

#define ASSERT_SAMPLE(page, series, want)                                                    \
  do {                                                                                       \
    if (th_page_sample(page, series) != (want))                                                      \
      fprintf(stderr, "%s\n", page);                                                        \
    ck_assert_msg(th_page_sample(page, series) == (want), "%s: %g, not %g (the page is above)",      \
                  series, th_page_sample(page, series), (double)(want));                             \
  } while (0)

/* promtool's lint, where it is installed. */
static void lint(const char *page) {
  (void)th_page_lint(page);
}

/* Every family has its HELP and TYPE once, in the table's order. */
START_TEST(every_family_once) {
  const char *const *names = td_metrics_names();
  char *page = render(), line[128];
  size_t n = 0;

  for (; names[n] != NULL; n++) {
    const char *at;

    snprintf(line, sizeof(line), "# TYPE %s ", names[n]);
    ck_assert_msg((at = strstr(page, line)) != NULL, "no %s", line);
    ck_assert_ptr_null(strstr(at + 1, line));
    snprintf(line, sizeof(line), "# HELP %s ", names[n]);
    ck_assert_ptr_nonnull(strstr(page, line));
  }
  ck_assert_uint_eq(n, 27);
  lint(page);
  free(page);
}
END_TEST

/* Devices and jobs come from the tables as they are. */
START_TEST(devices_and_jobs) {
  char *page = render();

  ASSERT_SAMPLE(page, "traind_device_budget_bytes{device=\"cpu0\"}", 1000);
  ASSERT_SAMPLE(page, "traind_device_free_bytes{device=\"cpu0\"}", 400);
  ASSERT_SAMPLE(page, "traind_device_used_bytes{device=\"cpu0\"}", 500); /* two workers */
  ASSERT_SAMPLE(page, "traind_device_total_bytes{device=\"cpu0\"}", 4096);
  ASSERT_SAMPLE(page, "traind_device_running_jobs{device=\"cpu0\"}", 2);
  ASSERT_SAMPLE(page, "traind_device_draining{device=\"cpu1\"}", 1);
  ASSERT_SAMPLE(page, "traind_device_free_bytes{device=\"cpu1\"}", 500);
  ASSERT_SAMPLE(page, "traind_jobs{state=\"running\",owner=\"alice\"}", 2);
  ASSERT_SAMPLE(page, "traind_jobs{state=\"queued\",owner=\"alice\"}", 1);
  ASSERT_SAMPLE(page, "traind_jobs{state=\"queued\",owner=\"bob\"}", 1);
  ASSERT_SAMPLE(page, "traind_jobs{state=\"failed\",owner=\"bob\"}", 0);
  ASSERT_SAMPLE(page,
                "traind_job_step{id=\"1\",name=\"job1\",owner=\"alice\",device=\"cpu0\"}", 107);
  ASSERT_SAMPLE(page,
                "traind_job_loss{id=\"2\",name=\"job2\",owner=\"alice\",device=\"cpu0\"}", 0.25);
  ASSERT_SAMPLE(page, "traind_job_samples_per_second{id=\"1\",name=\"job1\",owner=\"alice\","
                      "device=\"cpu0\"}", 1234.5);
  ASSERT_SAMPLE(page, "traind_job_data_wait_ratio{id=\"1\",name=\"job1\",owner=\"alice\","
                      "device=\"cpu0\"}", 0.001);
  ck_assert_ptr_null(strstr(page, "id=\"3\"")); /* queued: no per-job series */
  ck_assert_ptr_nonnull(strstr(page, " 0.001\n")); /* the fewest digits that read back */
  lint(page);
  free(page);
}
END_TEST

/* Label values as the format wants them; bytes that are not UTF-8 become
 * U+FFFD and control characters spaces. */
START_TEST(label_escaping) {
  char *page;

  strcpy(g_jobs[0].name, "a\"b\\c\nd\x01" "e\xff\xc3\xa9\xe2\x82");
  page = render();
  CHECK_PAGE(strstr(page, "name=\"a\\\"b\\\\c\\nd e\xef\xbf\xbd\xc3\xa9"
                          "\xef\xbf\xbd\xef\xbf\xbd\"") != NULL,
             page);
  lint(page);
  free(page);
}
END_TEST

/* Under private_data no job name and no owner appear; per-user counts are
 * added up under owner="". */
START_TEST(private_data) {
  char *page;

  g_d.cfg.private_data = 1;
  g_jobs[0].state = TD_JOB_RUNNING;
  td_metrics_job_state(&g_jobs[2], TD_JOB_FAILED);
  td_metrics_job_state(&g_jobs[3], TD_JOB_FAILED);
  page = render();
  CHECK_PAGE(strstr(page, "alice") == NULL && strstr(page, "bob") == NULL &&
                 strstr(page, "job1") == NULL,
             page);
  ASSERT_SAMPLE(page, "traind_jobs{state=\"queued\",owner=\"\"}", 2);
  ASSERT_SAMPLE(page, "traind_jobs_ended_total{outcome=\"failed\",owner=\"\"}", 2);
  ASSERT_SAMPLE(page, "traind_job_planned_bytes{id=\"1\",name=\"\",owner=\"\",device=\"cpu0\"}",
                300);
  lint(page);
  free(page);
}
END_TEST

/* A histogram's buckets are cumulative, with +Inf, _sum and _count. */
START_TEST(histogram_buckets) {
  char *page;

  td_metrics_db_commit(0.0007);
  td_metrics_db_commit(0.003);
  td_metrics_db_commit(2.0);
  td_metrics_db_commit(0.0005); /* on a bound: in its bucket (le) */
  page = render();
  ASSERT_SAMPLE(page, "traind_db_commit_duration_seconds_bucket{le=\"0.0005\"}", 1);
  ASSERT_SAMPLE(page, "traind_db_commit_duration_seconds_bucket{le=\"0.001\"}", 2);
  ASSERT_SAMPLE(page, "traind_db_commit_duration_seconds_bucket{le=\"0.0025\"}", 2);
  ASSERT_SAMPLE(page, "traind_db_commit_duration_seconds_bucket{le=\"0.005\"}", 3);
  ASSERT_SAMPLE(page, "traind_db_commit_duration_seconds_bucket{le=\"1\"}", 3);
  ASSERT_SAMPLE(page, "traind_db_commit_duration_seconds_bucket{le=\"+Inf\"}", 4);
  ASSERT_SAMPLE(page, "traind_db_commit_duration_seconds_count", 4);
  ck_assert_double_eq_tol(th_page_sample(page, "traind_db_commit_duration_seconds_sum"), 2.0042, 1e-12);
  lint(page);
  free(page);
}
END_TEST

/* Requests by op and code, with a latency histogram per op; one that did
 * not decode is op="invalid". */
START_TEST(requests) {
  char *page;

  td_metrics_request("show", 0, 0.0001);
  td_metrics_request("show", TD_ENOENT, 0.0002);
  td_metrics_request("show", TD_ENOENT, 0.0002);
  td_metrics_request(NULL, TD_EPROTO, 0.00001);
  page = render();
  ASSERT_SAMPLE(page, "traind_requests_total{op=\"show\",code=\"OK\"}", 1);
  ASSERT_SAMPLE(page, "traind_requests_total{op=\"show\",code=\"ENOENT\"}", 2);
  ASSERT_SAMPLE(page, "traind_requests_total{op=\"invalid\",code=\"EPROTO\"}", 1);
  ASSERT_SAMPLE(page, "traind_request_duration_seconds_count{op=\"show\"}", 3);
  ASSERT_SAMPLE(page, "traind_request_duration_seconds_bucket{op=\"show\",le=\"0.0001\"}", 1);
  ASSERT_SAMPLE(page, "traind_request_duration_seconds_bucket{op=\"show\",le=\"0.00025\"}", 3);
  ck_assert(isnan(th_page_sample(page, "traind_requests_total{op=\"show\",code=\"EPERM\"}")));
  lint(page);
  free(page);
}
END_TEST

/* Admissions by device and remedy; outcomes by owner; an OOM, its re-plan
 * and the progress after it; a job sent back to the queue waits from
 * there. */
START_TEST(events) {
  td_job *j = &g_jobs[0];
  char *page;

  td_metrics_admitted(j, &g_d.devices[0], 0);
  td_metrics_admitted(j, &g_d.devices[0],
                      (1u << TD_REMEDY_ACCUMULATE) | (1u << TD_REMEDY_BF16));
  td_metrics_oom(j);
  td_metrics_replan(j);
  td_metrics_progress(&g_jobs[1]); /* another job's progress ends nothing */
  page = render();
  ASSERT_SAMPLE(page, "traind_oom_recovery_seconds_count", 0);
  free(page);
  td_metrics_progress(j);
  td_metrics_progress(j); /* only the first progress after the OOM */
  td_metrics_job_state(j, TD_JOB_SUCCEEDED);
  j->state = TD_JOB_SUCCEEDED;
  td_metrics_job_state(j, TD_JOB_SUCCEEDED); /* no change: not counted twice */
  td_metrics_job_state(&g_jobs[3], TD_JOB_CANCELLED);
  /* Sent back to the queue after it started: its next wait counts from now. */
  g_jobs[1].started_ms = 1;
  td_metrics_job_state(&g_jobs[1], TD_JOB_QUEUED);
  td_metrics_admitted(&g_jobs[1], &g_d.devices[0], 0);
  /* Ran before traind started (started_ms set, never re-queued here): left out. */
  g_jobs[2].started_ms = 1;
  td_metrics_admitted(&g_jobs[2], &g_d.devices[0], 0);
  page = render();
  ASSERT_SAMPLE(page, "traind_admissions_total{device=\"cpu0\"}", 4);
  ASSERT_SAMPLE(page, "traind_admissions_total{device=\"cpu1\"}", 0);
  ASSERT_SAMPLE(page, "traind_admission_remedies_total{remedy=\"whole_batch\"}", 3);
  ASSERT_SAMPLE(page, "traind_admission_remedies_total{remedy=\"accumulate\"}", 1);
  ASSERT_SAMPLE(page, "traind_admission_remedies_total{remedy=\"bf16\"}", 1);
  ASSERT_SAMPLE(page, "traind_admission_remedies_total{remedy=\"shrink\"}", 0);
  ASSERT_SAMPLE(page, "traind_oom_events_total{device=\"cpu0\"}", 1);
  ASSERT_SAMPLE(page, "traind_replans_total{device=\"cpu0\"}", 1);
  ASSERT_SAMPLE(page, "traind_oom_recovery_seconds_count", 1);
  ASSERT_SAMPLE(page, "traind_jobs_ended_total{outcome=\"succeeded\",owner=\"alice\"}", 1);
  ASSERT_SAMPLE(page, "traind_jobs_ended_total{outcome=\"cancelled\",owner=\"bob\"}", 1);
  ASSERT_SAMPLE(page, "traind_jobs_ended_total{outcome=\"failed\",owner=\"alice\"}", 0);
  ASSERT_SAMPLE(page, "traind_queue_wait_seconds_count", 3);
  CHECK_PAGE(th_page_sample(page, "traind_queue_wait_seconds_bucket{le=\"1\"}") >= 1, page);
  lint(page);
  free(page);
}
END_TEST

static Suite *metrics_suite(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("core");

  tcase_add_checked_fixture(tc, setup, NULL);
  tcase_add_test(tc, every_family_once);
  tcase_add_test(tc, devices_and_jobs);
  tcase_add_test(tc, label_escaping);
  tcase_add_test(tc, private_data);
  tcase_add_test(tc, histogram_buckets);
  tcase_add_test(tc, requests);
  tcase_add_test(tc, events);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(metrics_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
