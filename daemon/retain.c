/* Retention: ended jobs older than retention_days, and all but the newest
 * retention_jobs ended jobs, are removed: their rows (job, history and
 * idempotency key) in one transaction, their directory STATE/jobs/ID, and
 * their entry in the job table.  A bounded batch per tick keeps the loop
 * responsive; a backlog continues a moment later.
 *
 * A job's directory belongs to its user, who may have put links and
 * subdirectories in it: it is removed through directory descriptors,
 * never following a symbolic link.  A model the job wrote to an explicit
 * `output:` path lives outside the directory and is never touched. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "error.h"
#include "log.h"
#include "retain.h"
#include "traind.h"
#include "util.h"

#define TD_RETAIN_PERIOD_MS (10 * 60 * 1000)
#define TD_RETAIN_BATCH 500
/* A backlog continues this soon, so requests are served in between. */
#define TD_RETAIN_SOON_MS 200
/* What a user's directory may make traind walk: deeper trees and more
 * entries are left in place, with a warning. */
#define TD_RETAIN_MAX_DEPTH 16
#define TD_RETAIN_MAX_ENTRIES 100000

static int td__newest_first(const void *pa, const void *pb) {
  const td_retain_entry *a = pa, *b = pb;

  if (a->finished_ms != b->finished_ms)
    return a->finished_ms > b->finished_ms ? -1 : 1;
  return a->id > b->id ? -1 : a->id < b->id;
}

static int td__id_order(const void *pa, const void *pb) {
  uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;

  return a < b ? -1 : a > b;
}

size_t td_retain_select(td_retain_entry *e, size_t n, int64_t now_ms, uint32_t days,
                        uint32_t keep, uint64_t *out, size_t cap, size_t *total) {
  int64_t cutoff = now_ms - (int64_t)days * 86400000;
  size_t first = n, count;

  qsort(e, n, sizeof(*e), td__newest_first);
  /* Newest first, both limits remove a suffix: find where it starts. */
  if (keep > 0 && keep < n)
    first = keep;
  if (days > 0)
    for (size_t i = 0; i < first; i++)
      if (e[i].finished_ms < cutoff) {
        first = i;
        break;
      }
  *total = n - first;
  count = *total < cap ? *total : cap;
  for (size_t i = 0; i < count; i++)
    out[i] = e[n - 1 - i].id; /* the oldest first */
  qsort(out, count, sizeof(*out), td__id_order);
  return count;
}

/* Remove the entries of the open directory fd, then report how many
 * entries were left (0: all gone).  *budget counts down every entry. */
/* A directory a job's user made (mode 0700, say) is not traind's to read:
 * without CAP_DAC_OVERRIDE root may only take it back (CAP_CHOWN) before
 * it looks inside.  A link swapped in meanwhile is chowned itself, not
 * followed, and then refused by O_NOFOLLOW. */
static void td__take_back(int parent_fd, const char *name) {
  struct stat st;

  if (geteuid() == 0 && fstatat(parent_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      S_ISDIR(st.st_mode) && st.st_uid != 0)
    fchownat(parent_fd, name, 0, 0, AT_SYMLINK_NOFOLLOW);
}

static int td__empty_dir(int fd, int depth, long *budget) {
  DIR *dir;
  struct dirent *de;
  int left = 0;

  if ((dir = fdopendir(fd)) == NULL) {
    close(fd);
    return 1;
  }
  while ((de = readdir(dir)) != NULL) {
    const char *name = de->d_name;

    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
      continue;
    if (--*budget < 0) {
      left++;
      break;
    }
    if (de->d_type != DT_DIR && unlinkat(dirfd(dir), name, 0) == 0)
      continue;
    if (de->d_type != DT_DIR && errno != EISDIR && errno != EPERM) {
      left++;
      continue;
    }
    /* A directory, or what looked like one: O_NOFOLLOW refuses a link
     * that was swapped in meanwhile (ELOOP, or ENOTDIR), which unlinkat
     * then removes as the link it is. */
    if (depth >= TD_RETAIN_MAX_DEPTH) {
      left++;
      continue;
    }
    {
      int sub;

      td__take_back(dirfd(dir), name);
      sub = openat(dirfd(dir), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

      if (sub < 0) {
        if ((errno == ELOOP || errno == ENOTDIR) && unlinkat(dirfd(dir), name, 0) == 0)
          continue;
        left++;
        continue;
      }
      if (td__empty_dir(sub, depth + 1, budget) != 0 ||
          unlinkat(dirfd(dir), name, AT_REMOVEDIR) < 0)
        left++;
    }
  }
  closedir(dir); /* closes fd */
  return left;
}

int td_retain_remove_dir(int parent_fd, const char *name) {
  long budget = TD_RETAIN_MAX_ENTRIES;
  int fd;

  td__take_back(parent_fd, name);
  fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

  if (fd < 0) {
    if (errno == ENOENT)
      return 0; /* a job that never ran has no directory */
    if ((errno == ELOOP || errno == ENOTDIR) && unlinkat(parent_fd, name, 0) == 0)
      return 0;
    return TD_EIO;
  }
  if (td__empty_dir(fd, 1, &budget) != 0)
    return TD_ETOOBIG;
  return unlinkat(parent_fd, name, AT_REMOVEDIR) == 0 ? 0 : TD_EIO;
}

/* Take the removed jobs out of the table (sorted by id, so that
 * td_daemon_find's binary search still holds): one pass, order kept. */
static void td__compact(td_daemon *d, const uint64_t *ids, size_t n) {
  size_t w = 0, k = 0;

  for (size_t i = 0; i < d->njobs; i++) {
    td_job *j = d->jobs[i];

    while (k < n && ids[k] < j->id)
      k++;
    if (k < n && ids[k] == j->id) {
      td_job_free(j);
      continue;
    }
    d->jobs[w++] = j;
  }
  d->njobs = w;
}

static void td__remove_dirs(td_daemon *d, const uint64_t *ids, size_t n) {
  char path[TD_PATH_MAX + 8], name[24];
  int jobs_fd, rc;

  snprintf(path, sizeof(path), "%s/jobs", d->cfg.state_dir);
  jobs_fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (jobs_fd < 0) {
    if (errno != ENOENT)
      td_warn("retention: cannot open %s: %s; the removed jobs' directories stay",
              path, strerror(errno));
    return;
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(name, sizeof(name), "%llu", (unsigned long long)ids[i]);
    if ((rc = td_retain_remove_dir(jobs_fd, name)) < 0)
      td_warn("retention: job %s's directory %s/%s is not (wholly) removed: %s", name, path,
              name, rc == TD_ETOOBIG ? "it is deeper or larger than traind walks"
                                     : strerror(errno));
  }
  close(jobs_fd);
}

int td_retain_run(td_daemon *d) {
  td_retain_entry *e;
  uint64_t ids[TD_RETAIN_BATCH];
  size_t n = 0, count, total;
  int rc;

  if (d->cfg.retention_days == 0 && d->cfg.retention_jobs == 0)
    return 0;
  if ((e = malloc((d->njobs ? d->njobs : 1) * sizeof(*e))) == NULL)
    return TD_ENOMEM;
  for (size_t i = 0; i < d->njobs; i++) {
    const td_job *j = d->jobs[i];

    if ((j->state == TD_JOB_SUCCEEDED || j->state == TD_JOB_FAILED ||
         j->state == TD_JOB_CANCELLED) && j->run == NULL)
      e[n++] = (td_retain_entry){.id = j->id, .finished_ms = j->finished_ms};
  }
  count = td_retain_select(e, n, td_now_unix_ms(), d->cfg.retention_days,
                           d->cfg.retention_jobs, ids, TD_ARRAY_SIZE(ids), &total);
  free(e);
  if (count == 0)
    return 0;
  /* The rows first: a job whose rows stay is kept whole. */
  if ((rc = td_db_delete_jobs(d->db, ids, count)) < 0) {
    td_warn("retention: cannot remove %zu ended jobs from the database: %s; trying again "
            "later", count, td_strerror(rc));
    return rc;
  }
  td__remove_dirs(d, ids, count);
  td__compact(d, ids, count);
  td_info("retention: removed %zu ended jobs (ids %llu..%llu)%s", count,
          (unsigned long long)ids[0], (unsigned long long)ids[count - 1],
          total > count ? "; more follow" : "");
  return (int)count;
}

static void td__on_retain(uv_timer_t *t) {
  td_daemon *d = t->data;
  int rc = td_retain_run(d);

  if (d->stopping)
    return;
  uv_timer_start(t, td__on_retain, rc == TD_RETAIN_BATCH ? TD_RETAIN_SOON_MS
                                                          : TD_RETAIN_PERIOD_MS, 0);
}

void td_retain_start(td_daemon *d) {
  uv_timer_init(d->loop, &d->retain_timer);
  d->retain_timer.data = d;
  td__on_retain(&d->retain_timer);
}
