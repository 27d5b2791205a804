/* What the integration tests and bench_load share: a real traind on a
 * temporary directory (config, sockets, state, log), and raw protocol
 * requests over its job socket.  No Check here, so a benchmark can use it:
 * functions return 0 or a negative TD_E* code (or -1 with errno). */
#ifndef TD_TEST_HARNESS_H
#define TD_TEST_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <check.h>

#include "proto.h"

#define TH_FMNIST "/usr/share/datasets/fashion-mnist"

typedef struct th_daemon {
  char dir[128];       /* the temporary directory everything lives in */
  char cfg[192];       /* dir/traind.yaml */
  char log[192];       /* dir/traind.log: traind's stderr, appended across starts */
  char state[192];     /* dir/state */
  char db[208];        /* dir/state/jobs.db */
  char sockpath[192];  /* dir/traind.sock; "" when sock is a tcp:// address */
  char sock[200];      /* ipc://dir/traind.sock */
  char munge_sock[192];/* dir/munge/sock: a private munged's, when root runs the tests */
  pid_t munged;        /* that munged, a child of the test; 0: none */
  pid_t pid;           /* > 0 while started */
} th_daemon;

/* Make the temporary directory (under $TMPDIR or /tmp) and write the
 * config: one device cpu0 with this budget, then extra (more YAML keys,
 * may be NULL).  As root, traind serves several users and wants MUNGE
 * credentials: a private munged is started (own key and socket under the
 * directory), named in the config and in $TRAIND_MUNGE_SOCKET for the
 * client, and th_rpc signs every request with a credential from it.  If
 * stub_workers, traind runs th_stub_libexec's stand-ins instead of the
 * real worker and loader, so jobs hold their reservation and the rest
 * stay queued, without training anything. */
int th_daemon_init(th_daemon *d, const char *budget, const char *extra, int stub_workers);
/* Rewrite the config (same directory). */
int th_daemon_config(th_daemon *d, const char *budget, const char *extra, int stub_workers);
/* Start traind and wait until its job socket answers `info`.  TD_EIO if it
 * exits first (the reason is in d->log), TD_ETIMEDOUT after timeout_ms. */
int th_daemon_start(th_daemon *d, int timeout_ms);
/* Only fork and exec it (a stale socket file is removed first). */
int th_daemon_spawn(th_daemon *d);
/* Wait until a spawned traind answers `info`. */
int th_daemon_wait_ready(th_daemon *d, int timeout_ms);
/* Start traind and wait for it to exit; *status is its wait status.
 * For configurations it must refuse.  TD_ETIMEDOUT (and it is killed) if
 * it is still running after timeout_ms. */
int th_daemon_run_to_exit(th_daemon *d, int timeout_ms, int *status);
/* Send sig and reap it; returns the wait status (-1 if not started). */
int th_daemon_signal_wait(th_daemon *d, int sig);
/* SIGTERM, reap, and 0 only if it exited with status 0. */
int th_daemon_stop(th_daemon *d);
/* rm -rf the directory (after stopping traind). */
void th_daemon_remove(th_daemon *d);
/* The last 2 KiB of traind's log, for failure messages (a static buffer). */
const char *th_log_tail(const th_daemon *d);

/* 0 when Debian's dataset-fashion-mnist is installed; else says why the
 * caller skips and returns 77 (meson's "skipped"). */
int th_need_fmnist(void);
/* A test program's main: run suite s (line-buffered output, so a killed
 * run still shows its progress) and return 0, 1 if a test failed, or 77
 * (meson: skipped) when need_fmnist and the dataset is not installed. */
int th_run(Suite *s, int need_fmnist);

/* Write traind-worker and traind-loader stand-ins into dir: shell scripts
 * that live until their parent (traind) is gone. */
int th_stub_libexec(const char *dir);

/* Start a munged with its own key under dir (made 0755, as munged wants);
 * its socket path goes to sock.  0 or TD_EIO (the reason on stderr). */
int th_munged_start(const char *dir, char *sock, size_t cap, pid_t *pid);
/* Stop (and reap) that munged; pid <= 0: none. */
void th_munged_stop(pid_t pid);
/* Where th_rpc gets credentials ("" or NULL: it sends none).  Set by
 * th_daemon_init. */
void th_set_munge_socket(const char *sock);
/* A new credential from that munged (malloc'd): for this process's uid, or
 * for th_as_user's user. */
char *th_cred(void);
/* The credential th_rpc signs with now (a malloc'd copy; NULL without a
 * munged): made once and reused, as traind-client does; a new one when
 * stale is the one in use (traind said EAUTH to it).  Thread-safe. */
char *th_cred_current(const char *stale);
/* From now on th_rpc's credentials and th_client's processes are this
 * user's (a name from the user database; NULL: this process's own). */
void th_as_user(const char *name);
/* Drop to th_as_user's user in a forked child: its groups, gid, uid.
 * 0, or -1 with errno. */
int th_become_user(void);

/* A REQ socket connected to addr, with send and receive timeouts. */
int th_connect(const char *addr, int timeout_ms);
/* Send the bytes, wait for one reply and decode it: *code is 0 (ok) or
 * the reply's error code with its message in err; *out is the reply (the
 * caller frees it; it may be NULL if not wanted).  TD_ETIMEDOUT if no reply
 * came in the socket's timeout, TD_ECONN if sending failed, TD_EPROTO if
 * the reply does not decode. */
int th_rpc(int sock, const void *req, size_t len, td_msg **out, int *code, char *err,
           size_t errlen);
/* th_rpc on a td_pack'd request. */
int th_rpc_pack(int sock, td_pack *req, td_msg **out, int *code, char *err, size_t errlen);
/* One request without fields or with one uint field (NULL name: none). */
int th_rpc_simple(int sock, const char *op, const char *field, uint64_t value, td_msg **out,
                  int *code, char *err, size_t errlen);

/* The train split's stored type, read from the dataset as traind-client
 * does ("uint8" if it cannot be read). */
const char *th_sample_dtype(const char *yaml, const char *base_dir);
/* A submit request; name may be NULL. */
void th_pack_submit(td_pack *p, const char *yaml, const char *base_dir, const char *key,
                    const char *name);
/* A small valid job file on Fashion-MNIST (the data is only read if a real
 * worker runs it).  epochs and limit as in the job file. */
void th_job_yaml(char *buf, size_t cap, const char *name, int hidden, int epochs, int limit,
                 int batch);

/* The memory plan's total for a job file, from a throwaway traind (a 2 GiB
 * device, stand-in workers), to size budgets that hold one job but not two. */
int th_plan_total(const char *yaml, uint64_t *total);

typedef struct th_row {
  uint64_t id;
  char name[64];
  char state[16];
} th_row;
/* All jobs, from `list`, in the daemon's order; *rows is malloc'd. */
int th_list(int sock, th_row **rows, size_t *n, char *err, size_t errlen);
/* One string or unsigned field of `show`'s job map. */
int th_show_str(int sock, uint64_t id, const char *key, char *out, size_t cap);
int th_show_u64(int sock, uint64_t id, const char *key, uint64_t *v);
/* Poll `show` until the job's state is want (0) or timeout_ms passes
 * (TD_ETIMEDOUT; *last holds the last state seen). */
int th_wait_state(int sock, uint64_t id, const char *want, int timeout_ms, char *last,
                  size_t cap);

/* Submit a job file (base dir /tmp) under an idempotency key: *id is the
 * job's id.  A refusal gives its code (err says why); TD_ETIMEDOUT,
 * TD_ECONN, TD_EPROTO as th_rpc. */
int th_submit(int sock, const char *yaml, const char *key, uint64_t *id, char *err,
              size_t errlen);
/* Poll `show` until the job reports a training step (TD_ETIMEDOUT after
 * timeout_ms). */
int th_wait_training(int sock, uint64_t id, int timeout_ms);

/* Children of pid that run the program of this name (the basename of
 * /proc/PID/exe); returns how many were found, at most cap written to pids. */
int th_children(pid_t pid, const char *program, pid_t *pids, int cap);
/* Resident memory of a process, from /proc/PID/status VmRSS, in bytes. */
int th_rss(pid_t pid, uint64_t *bytes);

void th_msleep(int ms);

/* Run traind-client (TD_BUILD_ROOT's) with --socket sock and then the
 * NULL-terminated arguments; its stdout and stderr land in out and err,
 * NUL-terminated and cut to fit (read one after the other: stderr must stay
 * under a pipe's 64 KiB).  Returns its exit status, 128 + the signal that
 * killed it, or TD_EIO if it could not be started. */
int th_client(const char *sock, char *out, size_t outcap, char *err, size_t errcap, ...);
int th_client_v(const char *sock, char *out, size_t outcap, char *err, size_t errcap,
                va_list args);

#endif
