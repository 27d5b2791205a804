/* The `logs` request: a job's log, read in bounded pieces (logs.h). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "logs.h"
#include "util.h"

#define TD_LOGS_DEFAULT_MAX (64u << 10)

/* Logs are read in bounded pieces, so a huge log never blocks the loop or
 * makes a huge reply; a client that follows one asks again from offset. */
int td_logs_reply(const td_daemon *d, const td_job *j, const msgpack_object *req, td_pack *rep) {
  char path[TD_PATH_MAX + 64];
  char *buf = NULL;
  uint64_t max = TD_LOGS_DEFAULT_MAX;
  int64_t offset = -1;
  struct stat st;
  ssize_t got = 0;
  td_map m;
  int fd;

  td_obj_i64(req, "offset", &offset);
  td_obj_u64(req, "max", &max);
  snprintf(path, sizeof(path), "%s/jobs/%llu/log", d->cfg.state_dir, (unsigned long long)j->id);
  /* The job's directory belongs to its user, who may have put a link to
   * someone else's file in the log's place. */
  fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
    close(fd);
    fd = -1;
  }
  if (fd < 0) {
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
  td_map_reply_ok(&m, rep, "logs");
  td_map_kv_strn(&m, "data", buf ? buf : "", (size_t)got);
  td_map_kv_u64(&m, "offset", (uint64_t)offset + (uint64_t)got);
  td_map_kv_u64(&m, "size", (uint64_t)st.st_size);
  td_map_kv_bool(&m, "done", j->state != TD_JOB_QUEUED && j->state != TD_JOB_RUNNING);
  td_map_end(&m);
  free(buf);
  return 0;
}
