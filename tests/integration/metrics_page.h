/* What the metrics tests share for reading a page of traind's Prometheus
 * metrics: a sample's value, promtool's lint, and a check whose failure
 * shows the page (on stderr: Check's messages must stay under 8 KiB).
 * tests/unit/test_metrics.c (the page metrics.c renders) and
 * tests/integration/test_metrics.c (the page traind serves) include it. */
#ifndef TD_TEST_METRICS_PAGE_H
#define TD_TEST_METRICS_PAGE_H

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TH_PROMTOOL "/usr/bin/promtool"

#define CHECK_PAGE(cond, page)                                                               \
  do {                                                                                       \
    const char *page_ = (page);                                                              \
    if (!(cond))                                                                             \
      fprintf(stderr, "%s\n", page_ != NULL ? page_ : "(no page)");                          \
    ck_assert_msg(cond, "%s (the page is above)", #cond);                                    \
  } while (0)

/* The value of the sample whose line starts with series (name and labels
 * exactly as rendered) and a space; NAN if the page has none. */
static inline double th_page_sample(const char *page, const char *series) {
  size_t n = strlen(series);

  for (const char *p = page; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
    if (strncmp(p, series, n) == 0 && p[n] == ' ')
      return strtod(p + n + 1, NULL);
  return NAN;
}

/* `promtool check metrics` on the page must exit 0 and say nothing (no
 * lint warning).  Returns 0 when it ran, -1 when promtool is not
 * installed. */
static inline int th_page_lint(const char *page) {
  char path[] = "/tmp/traind-metrics-page.XXXXXX", cmd[128], out[4096] = "";
  size_t n = 0;
  FILE *p;
  int fd, status;

  if (access(TH_PROMTOOL, X_OK) != 0)
    return -1;
  ck_assert_int_ge(fd = mkstemp(path), 0);
  ck_assert_int_eq(write(fd, page, strlen(page)), (ssize_t)strlen(page));
  close(fd);
  snprintf(cmd, sizeof(cmd), TH_PROMTOOL " check metrics < %s 2>&1", path);
  ck_assert_ptr_nonnull(p = popen(cmd, "r"));
  while (n + 1 < sizeof(out) && fgets(out + n, (int)(sizeof(out) - n), p) != NULL)
    n += strlen(out + n);
  status = pclose(p);
  unlink(path);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || out[0] != '\0')
    fprintf(stderr, "%s\n", page);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0 && out[0] == '\0',
                "promtool check metrics (the page is above): exit %d:\n%.2000s",
                WIFEXITED(status) ? WEXITSTATUS(status) : -1, out);
  return 0;
}

#endif
