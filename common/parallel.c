#include "parallel.h"

#include <pthread.h>
#include <stdio.h>

#include "util.h"

#define ERRLEN 512

struct par {
  td_task_fn fn;
  void *ctx;
  uint64_t ntasks;
  uint64_t next;
  int failed;
  int rc;
  char *err;
  size_t errlen;
  pthread_mutex_t mu;
};

static void *par_worker(void *arg) {
  struct par *p = arg;
  char err[ERRLEN];

  for (;;) {
    uint64_t t = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
    int rc;

    if (t >= p->ntasks || __atomic_load_n(&p->failed, __ATOMIC_RELAXED))
      break;
    err[0] = '\0';
    rc = p->fn(p->ctx, t, err, sizeof(err));
    if (rc < 0) {
      pthread_mutex_lock(&p->mu);
      if (!p->failed) {
        p->failed = 1;
        p->rc = rc;
        snprintf(p->err, p->errlen, "%s", err);
      }
      pthread_mutex_unlock(&p->mu);
      break;
    }
  }
  return NULL;
}

int td_parallel(int nthreads, uint64_t ntasks, td_task_fn fn, void *ctx, char *err,
                size_t errlen) {
  struct par p = {.fn = fn, .ctx = ctx, .ntasks = ntasks, .err = err, .errlen = errlen};
  pthread_t tids[64];
  int started = 0;

  if (nthreads < 1)
    nthreads = 1;
  if ((uint64_t)nthreads > ntasks)
    nthreads = ntasks > 0 ? (int)ntasks : 1;
  if (nthreads > (int)TD_ARRAY_SIZE(tids) + 1)
    nthreads = (int)TD_ARRAY_SIZE(tids) + 1;
  pthread_mutex_init(&p.mu, NULL);
  for (int i = 0; i < nthreads - 1; i++)
    if (pthread_create(&tids[started], NULL, par_worker, &p) == 0)
      started++;
  par_worker(&p); /* fewer threads than asked only makes it slower */
  for (int i = 0; i < started; i++)
    pthread_join(tids[i], NULL);
  pthread_mutex_destroy(&p.mu);
  return p.rc;
}
