/* Device probes: what each configured device offers a job, measured once
 * when traind starts (issue #4).  A CUDA probe makes a CUDA context, which
 * traind must never hold, so it runs in a `traind-worker --probe DEVICE`
 * child that sends one catalogued report (proto/INTERNAL.md: "probe" or
 * "probe_failed") on its stdout; a CPU device is measured in-process (its
 * probe touches no GPU).  The result caps the device's budget by the memory
 * free then, and gives the per-process overhead every plan on the device
 * counts.  A probe that fails leaves the device unusable, with the reason:
 * traind goes on with the others. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devprobe.h"
#include "error.h"
#include "hostmem.h"
#include "imsg.h"
#include "ledger.h"
#include "log.h"
#include "probe.h"
#include "spawn.h"
#include "td_sched.h"
#include "traind.h"
#include "util.h"

/* A CUDA context and the libraries' handles take seconds at most; a probe
 * that hangs (a wedged driver) must not hold traind's start forever. */
#define TD_PROBE_TIMEOUT_MS 60000

typedef struct td_probe {
  td_daemon *d;
  int dev;                 /* index into d->devices */
  uv_process_t proc;
  uv_pipe_t out;
  uv_timer_t timer;
  int nhandles;
  int64_t status;
  int term_signal, exited, timed_out;
  int reported;            /* the device has its answer already */
  unsigned char out_buf[TD_IMSG_HDR + TD_IMSG_MAX]; /* the report's frame */
  size_t len;
} td_probe;

/* The probe's answer: apply it, or mark the device unusable with why. */
static void td__probe_done(td_device *dev, int rc, const td_device_probe *p,
                           const char *why) {
  dev->probing = 0;
  if (rc < 0) {
    snprintf(dev->unusable, sizeof(dev->unusable), "the device probe failed: %s", why);
    td_error("device %s is unusable: %s", dev->name, dev->unusable);
  } else {
    char total[32], fr[32], over[32];

    dev->unusable[0] = '\0';
    dev->total = p->total;
    dev->free = p->free;
    dev->overhead = p->overhead;
    td_format_size(p->total, total, sizeof(total));
    td_format_size(p->free, fr, sizeof(fr));
    td_format_size(p->overhead, over, sizeof(over));
    td_info("device %s: %s, %s free, %s per-process overhead", dev->name, total, fr, over);
  }
  td_device_set_limit(dev, dev->limit);
}

/* The worker's one report: "probe" with the figures, or "probe_failed"
 * with why.  Anything else (nothing, a malformed frame) is a failure too. */
static int td__probe_parse(const unsigned char *buf, size_t len, td_device_probe *out,
                           char *why, size_t cap) {
  static td_imsg_frames frames; /* 8 KiB: not on the loop's stack */
  const td_msgdef *def;
  const msgpack_object *root;
  const void *body;
  size_t blen;
  td_msg *m;
  int rc;

  frames = (td_imsg_frames){0};
  td_imsg_frames_put(&frames, buf, len);
  if ((rc = td_imsg_frames_next(&frames, &body, &blen, why, cap)) <= 0) {
    if (rc == 0)
      snprintf(why, cap, len == 0 ? "traind-worker --probe gave no answer"
                                  : "traind-worker --probe's answer was cut short");
    return TD_EBACKEND;
  }
  if (td_imsg_parse(TD_IMSG_REPORT, body, blen, &m, &def, why, cap) < 0)
    return TD_EBACKEND;
  root = td_msg_root(m);
  rc = TD_EBACKEND;
  if (strcmp(def->op, "probe") == 0) {
    td_obj_u64(root, "total", &out->total);
    td_obj_u64(root, "free", &out->free);
    td_obj_u64(root, "overhead", &out->overhead);
    rc = 0;
  } else if (strcmp(def->op, "probe_failed") == 0) {
    td_obj_cstr(root, "msg", why, cap);
  } else {
    snprintf(why, cap, "traind-worker --probe sent '%s', not its probe report", def->op);
  }
  td_msg_free(m);
  return rc;
}

static void td__probe_closed(uv_handle_t *h) {
  td_probe *pr = h->data;
  td_device *dev = &pr->d->devices[pr->dev];
  td_device_probe p;
  char why[256] = "";
  int rc;

  if (--pr->nhandles > 0)
    return;
  if (pr->reported) {
    free(pr);
    return;
  }
  p = (td_device_probe){0};
  rc = td__probe_parse(pr->out_buf, pr->len, &p, why, sizeof(why));
  if (pr->timed_out) {
    snprintf(why, sizeof(why), "traind-worker --probe did not answer in %d s (killed)",
             TD_PROBE_TIMEOUT_MS / 1000);
    rc = TD_ETIMEDOUT;
  } else if (rc == 0 && (pr->status != 0 || pr->term_signal != 0)) {
    snprintf(why, sizeof(why), "traind-worker --probe exited with status %" PRId64
             ", signal %d", pr->status, pr->term_signal);
    rc = TD_EBACKEND;
  }
  td__probe_done(dev, rc, &p, why);
  /* a device added by SIGHUP: queued jobs may fit on it now (at start
   * the jobs are not loaded yet) */
  if (pr->d->njobs > 0 && !pr->d->stopping)
    td_sched_run(pr->d);
  free(pr);
}

static void td__probe_close(td_probe *pr, uv_handle_t *h) {
  if (!uv_is_closing(h))
    uv_close(h, td__probe_closed);
}

static void td__probe_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  td_probe *pr = h->data;

  (void)hint;
  *buf = uv_buf_init((char *)pr->out_buf + pr->len, (unsigned)(sizeof(pr->out_buf) - pr->len));
}

static void td__probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  td_probe *pr = s->data;

  (void)buf;
  if (n > 0)
    pr->len += (size_t)n;
  /* a full buffer holds the largest report: the rest is not read */
  if (n < 0 || pr->len == sizeof(pr->out_buf)) {
    uv_read_stop(s);
    td__probe_close(pr, (uv_handle_t *)s);
  }
}

static void td__probe_exit(uv_process_t *p, int64_t status, int term_signal) {
  td_probe *pr = p->data;

  pr->exited = 1;
  pr->status = status;
  pr->term_signal = term_signal;
  td__probe_close(pr, (uv_handle_t *)&pr->timer);
  td__probe_close(pr, (uv_handle_t *)p);
}

static void td__probe_timeout(uv_timer_t *t) {
  td_probe *pr = t->data;

  pr->timed_out = 1;
  if (!pr->exited)
    uv_process_kill(&pr->proc, SIGKILL);
}

void td_probe_start(td_daemon *d, td_device *dev) {
  char worker[TD_PATH_MAX + 32];
  char *args[] = {worker, "--probe", dev->name, NULL};
  uv_process_options_t opt;
  uv_stdio_container_t io[3];
  td_probe *pr;
  int rc;

  dev->probing = 1;
  dev->unusable[0] = '\0';
  if (dev->limit == 0)
    dev->limit = dev->budget;
  /* A CPU device's probe is the CPU backend's (td_host_mem): no child needed. */
  if (strncmp(dev->name, "cpu", 3) == 0) {
    td_device_probe p = {0};

    rc = td_host_mem(&p.total, &p.free);
    td__probe_done(dev, rc, &p, "cannot read the host's memory size (/proc/meminfo, sysconf)");
    return;
  }
  if ((pr = calloc(1, sizeof(*pr))) == NULL) {
    td__probe_done(dev, TD_ENOMEM, NULL, "out of memory");
    return;
  }
  pr->d = d;
  pr->dev = (int)(dev - d->devices);
  snprintf(worker, sizeof(worker), "%s/traind-worker", td_run_libexec(d));
  uv_pipe_init(d->loop, &pr->out, 0);
  pr->out.data = pr;
  memset(&opt, 0, sizeof(opt));
  opt.file = worker;
  opt.args = args;
  opt.exit_cb = td__probe_exit;
  io[0].flags = UV_IGNORE;
  io[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  io[1].data.stream = (uv_stream_t *)&pr->out;
  io[2].flags = UV_INHERIT_FD; /* its messages go to traind's log */
  io[2].data.fd = 2;
  opt.stdio = io;
  opt.stdio_count = 3;
  pr->proc.data = pr;
  if ((rc = uv_spawn(d->loop, &pr->proc, &opt)) < 0) {
    char why[TD_PATH_MAX + 96];

    snprintf(why, sizeof(why), "cannot start %s: %s", worker, uv_strerror(rc));
    td__probe_done(dev, TD_EIO, NULL, why);
    /* a process handle is closed even when its spawn failed; pr goes
     * with the last handle */
    pr->reported = 1;
    pr->nhandles = 2;
    uv_close((uv_handle_t *)&pr->proc, td__probe_closed);
    uv_close((uv_handle_t *)&pr->out, td__probe_closed);
    return;
  }
  pr->nhandles = 3;
  uv_timer_init(d->loop, &pr->timer);
  pr->timer.data = pr;
  uv_timer_start(&pr->timer, td__probe_timeout, TD_PROBE_TIMEOUT_MS, 0);
  uv_read_start((uv_stream_t *)&pr->out, td__probe_alloc, td__probe_read);
}

void td_probe_devices(td_daemon *d) {
  for (int i = 0; i < d->ndevices; i++)
    td_probe_start(d, &d->devices[i]);
  /* Only probes are on the loop yet: it returns once they have ended. */
  uv_run(d->loop, UV_RUN_DEFAULT);
}
