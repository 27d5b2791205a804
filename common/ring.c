#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "jobspec.h"
#include "util.h"

#define RING_MAGIC 0x474e5254u /* "TRNG" little-endian */
#define RING_VERSION 3u /* 3: batches carry target_bytes */
#define RING_ALIGN 64u
#define RING_WAIT_S 1
#define RING_SHUTDOWN_WAIT_NS 50000000L /* 50 ms */

/* The shared header.  Fixed-width fields so both sides agree on the layout;
 * the lengths array and the slots follow, each RING_ALIGN-aligned. */
struct ring_shm {
  uint32_t magic; /* written last by create, so a half-made ring is refused */
  uint32_t version;
  uint32_t nslots;
  uint32_t hdr_bytes; /* offset of the first slot */
  uint64_t slot_bytes;
  uint64_t stride;
  uint64_t head; /* slots committed: written by the producer only */
  uint64_t tail; /* slots released: written by the consumer only */
  uint64_t full_waits;
  uint64_t empty_waits;
  int32_t shutdown;
  int32_t reason;
  uint32_t wait_full;  /* the producer is (about to be) asleep on not_full */
  uint32_t wait_empty; /* the consumer is (about to be) asleep on not_empty */
  pthread_mutex_t mu;
  pthread_cond_t not_full;
  pthread_cond_t not_empty;
};

struct td_ring {
  struct ring_shm *shm;
  size_t map_bytes;
  uint64_t *lens;
  uint8_t *slots;
  size_t slot_bytes;
  uint64_t stride;
  uint32_t nslots;
  pid_t peer;
};

static uint64_t align_up(uint64_t v, uint64_t a) {
  return (v + a - 1) / a * a;
}

static size_t ring_hdr_bytes(uint32_t nslots) {
  return (size_t)align_up(sizeof(struct ring_shm) + (uint64_t)nslots * sizeof(uint64_t),
                          RING_ALIGN);
}

size_t td_ring_segment_bytes(uint32_t nslots, size_t slot_bytes) {
  uint64_t slots, total;

  if (nslots < TD_RING_MIN_SLOTS || nslots > TD_RING_MAX_SLOTS || slot_bytes < 1 ||
      slot_bytes > TD_RING_MAX_SLOT_BYTES)
    return 0;
  if (td_mul_u64(align_up(slot_bytes, RING_ALIGN), nslots, &slots) < 0 ||
      td_add_u64(slots, ring_hdr_bytes(nslots), &total) < 0 || total > SIZE_MAX ||
      total > (uint64_t)INT64_MAX)
    return 0;
  return (size_t)total;
}

static int ring_name_ok(const char *name) {
  size_t n;

  if (name == NULL || name[0] != '/')
    return 0;
  n = strlen(name);
  return n >= 2 && n < NAME_MAX && strchr(name + 1, '/') == NULL;
}

static int ring_init_sync(struct ring_shm *h) {
  pthread_mutexattr_t ma;
  pthread_condattr_t ca;
  int err = TD_EIO;

  if (pthread_mutexattr_init(&ma) != 0)
    return TD_ENOMEM;
  if (pthread_condattr_init(&ca) != 0)
    goto destroy_ma;
  if (pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED) != 0 ||
      pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST) != 0 ||
      pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED) != 0 ||
      pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0)
    goto destroy_ca;
  if (pthread_mutex_init(&h->mu, &ma) != 0)
    goto destroy_ca;
  if (pthread_cond_init(&h->not_full, &ca) != 0)
    goto destroy_mu;
  if (pthread_cond_init(&h->not_empty, &ca) != 0) {
    pthread_cond_destroy(&h->not_full);
    goto destroy_mu;
  }
  err = 0;
  goto destroy_ca;

destroy_mu:
  pthread_mutex_destroy(&h->mu);
destroy_ca:
  pthread_condattr_destroy(&ca);
destroy_ma:
  pthread_mutexattr_destroy(&ma);
  return err;
}

int td_ring_create(const char *name, uint32_t nslots, size_t slot_bytes) {
  return td_ring_create_owned(name, nslots, slot_bytes, (uid_t)-1, (gid_t)-1, NULL);
}

static int ring_map_fd(int fd, const char *name, uid_t owner, td_ring **out, char *errbuf,
                       size_t errlen);

int td_ring_create_owned(const char *name, uint32_t nslots, size_t slot_bytes, uid_t owner,
                         gid_t group, td_ring **out) {
  size_t bytes = td_ring_segment_bytes(nslots, slot_bytes);
  struct ring_shm *h;
  int fd, err, saved;

  if (bytes == 0 || !ring_name_ok(name))
    return TD_EINVAL;
  fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return TD_EIO;
  /* On the descriptor: the name may already be someone else's object. */
  if ((owner != (uid_t)-1 || group != (gid_t)-1) && fchown(fd, owner, group) < 0) {
    err = TD_EIO;
    goto unlink_shm;
  }
  if (ftruncate(fd, (off_t)bytes) < 0) {
    err = TD_EIO;
    goto unlink_shm;
  }
  h = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (h == MAP_FAILED) {
    err = TD_EIO;
    goto unlink_shm;
  }
  /* ftruncate zero-filled the segment: counters, flags and lengths are 0. */
  h->version = RING_VERSION;
  h->nslots = nslots;
  h->hdr_bytes = (uint32_t)ring_hdr_bytes(nslots);
  h->slot_bytes = slot_bytes;
  h->stride = align_up(slot_bytes, RING_ALIGN);
  err = ring_init_sync(h);
  if (err < 0) {
    munmap(h, bytes);
    goto unlink_shm;
  }
  __atomic_store_n(&h->magic, RING_MAGIC, __ATOMIC_RELEASE);
  munmap(h, bytes);
  /* Mapped again through the descriptor opened before the segment was
   * given away: a root without CAP_DAC_OVERRIDE could not open it now. */
  if (out != NULL) {
    err = ring_map_fd(fd, name, owner != (uid_t)-1 ? owner : geteuid(), out, NULL, 0);
    if (err < 0)
      shm_unlink(name);
    return err;
  }
  close(fd);
  return 0;

unlink_shm:
  saved = errno;
  shm_unlink(name);
  close(fd);
  errno = saved;
  return err;
}

int td_ring_open(const char *name, td_ring **out) {
  return td_ring_open_owned(name, geteuid(), out, NULL, 0);
}

int td_ring_open_owned(const char *name, uid_t owner, td_ring **out, char *errbuf,
                       size_t errlen) {
  int fd;

  if (!ring_name_ok(name))
    return TD_EINVAL;
  fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
  if (fd < 0)
    return errno == ENOENT ? TD_ENOENT : TD_EIO;
  return ring_map_fd(fd, name, owner, out, errbuf, errlen);
}

/* Check and map an open segment; closes fd. */
static int ring_map_fd(int fd, const char *name, uid_t owner, td_ring **out, char *errbuf,
                       size_t errlen) {
  struct ring_shm *h;
  struct stat st;
  td_ring *r;
  size_t bytes;
  int err;

  if (fstat(fd, &st) < 0) {
    err = TD_EIO;
    goto close_fd;
  }
  if (!S_ISREG(st.st_mode) || st.st_uid != owner || (st.st_mode & 077) != 0) {
    if (errbuf != NULL && errlen > 0)
      snprintf(errbuf, errlen, "the ring %s belongs to uid %u (mode %04o), not to uid %u alone: "
               "refusing it", name, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
               (unsigned)owner);
    err = TD_EIO;
    goto close_fd;
  }
  if ((uint64_t)st.st_size < sizeof(struct ring_shm) || (uint64_t)st.st_size > SIZE_MAX) {
    err = TD_EINVAL;
    goto close_fd;
  }
  bytes = (size_t)st.st_size;
  h = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (h == MAP_FAILED) {
    err = TD_EIO;
    goto close_fd;
  }
  if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != RING_MAGIC) {
    err = TD_EINVAL;
    goto unmap;
  }
  if (h->version != RING_VERSION) {
    err = TD_EVERSION;
    goto unmap;
  }
  /* Every size is re-derived from nslots and slot_bytes and must match, so
   * no offset used later can point outside the mapping. */
  if (h->slot_bytes > SIZE_MAX || td_ring_segment_bytes(h->nslots, (size_t)h->slot_bytes) != bytes ||
      h->hdr_bytes != ring_hdr_bytes(h->nslots) || h->stride != align_up(h->slot_bytes, RING_ALIGN)) {
    err = TD_EINVAL;
    goto unmap;
  }
  r = calloc(1, sizeof(*r));
  if (r == NULL) {
    err = TD_ENOMEM;
    goto unmap;
  }
  r->shm = h;
  r->map_bytes = bytes;
  r->nslots = h->nslots;
  r->slot_bytes = (size_t)h->slot_bytes;
  r->stride = h->stride;
  r->lens = (uint64_t *)(h + 1);
  r->slots = (uint8_t *)h + h->hdr_bytes;
  close(fd);
  *out = r;
  return 0;

unmap:
  munmap(h, bytes);
close_fd:
  close(fd);
  return err;
}

void td_ring_close(td_ring *r) {
  if (r == NULL)
    return;
  munmap(r->shm, r->map_bytes);
  free(r);
}

int td_ring_unlink(const char *name) {
  if (!ring_name_ok(name))
    return TD_EINVAL;
  if (shm_unlink(name) < 0 && errno != ENOENT)
    return TD_EIO;
  return 0;
}

void *td_ring_mapping(const td_ring *r, size_t *bytes) {
  *bytes = r->map_bytes;
  return r->shm;
}

size_t td_ring_slot_bytes(const td_ring *r) {
  return r->slot_bytes;
}

uint32_t td_ring_nslots(const td_ring *r) {
  return r->nslots;
}

/* The counters and flags are shared without the mutex on the fast paths:
 * each side stores its own counter and loads the other's, and a side that
 * finds the ring full (empty) sets its wait flag, under the mutex, before it
 * looks again and sleeps.  Sequentially consistent stores and loads make
 * sure that either the sleeper sees the new counter or the other side sees
 * the flag and signals (under the mutex, so not before the sleeper waits). */
static uint64_t load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static int32_t load32(const int32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }

/* A process that died holding the mutex may have left the ring half
 * updated: the ring is unusable, so shut it down rather than guess. */
static void ring_owner_died(struct ring_shm *h) {
  pthread_mutex_consistent(&h->mu);
  if (!load32(&h->shutdown)) {
    h->reason = TD_ECLOSED;
    __atomic_store_n(&h->shutdown, 1, __ATOMIC_SEQ_CST);
  }
  pthread_cond_broadcast(&h->not_full);
  pthread_cond_broadcast(&h->not_empty);
}

static int ring_lock(td_ring *r) {
  int rc = pthread_mutex_lock(&r->shm->mu);

  if (rc == EOWNERDEAD)
    ring_owner_died(r->shm);
  else if (rc != 0)
    return TD_ECLOSED; /* ENOTRECOVERABLE */
  return 0;
}

static void ring_unlock(td_ring *r) {
  pthread_mutex_unlock(&r->shm->mu);
}

/* Alive and not a zombie: a killed child stays visible to kill(pid, 0)
 * until its parent reaps it, and the parent may be the one waiting here. */
static int peer_alive(pid_t pid) {
  char path[64], buf[256], *p;
  ssize_t n;
  int fd;

  if (kill(pid, 0) < 0 && errno == ESRCH)
    return 0;
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno != ENOENT;
  n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0)
    return 1;
  buf[n] = '\0';
  /* "pid (comm) S ...": comm may hold spaces and parentheses. */
  p = strrchr(buf, ')');
  return p == NULL || p[1] != ' ' || (p[2] != 'Z' && p[2] != 'X');
}

/* One timed wait on cv with the mutex held; TD_ECLOSED if the peer is gone
 * or the mutex owner died.  Spurious wakeups are the caller's loop's. */
static int ring_wait(td_ring *r, pthread_cond_t *cv) {
  struct timespec ts;
  int rc;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += RING_WAIT_S;
  rc = pthread_cond_timedwait(cv, &r->shm->mu, &ts);
  if (rc == EOWNERDEAD) {
    ring_owner_died(r->shm);
    return TD_ECLOSED;
  }
  if (rc == ETIMEDOUT && r->peer > 0 && !peer_alive(r->peer))
    return TD_ECLOSED;
  return 0;
}

/* Wake the other side if it sleeps (or is about to) on cv. */
static void ring_wake(td_ring *r, const uint32_t *flag, pthread_cond_t *cv) {
  if (__atomic_load_n(flag, __ATOMIC_SEQ_CST) && ring_lock(r) == 0) {
    pthread_cond_signal(cv);
    ring_unlock(r);
  }
}

int td_ring_write_begin(td_ring *r, void **slot) {
  struct ring_shm *h = r->shm;
  uint64_t head = h->head; /* ours */
  int err;

  if (!load32(&h->shutdown) && head - load64(&h->tail) < r->nslots) {
    *slot = r->slots + (head % r->nslots) * r->stride;
    return 0;
  }
  if ((err = ring_lock(r)) < 0)
    return err;
  if (!load32(&h->shutdown) && head - load64(&h->tail) >= r->nslots)
    h->full_waits++;
  __atomic_store_n(&h->wait_full, 1, __ATOMIC_SEQ_CST);
  while (!load32(&h->shutdown) && head - load64(&h->tail) >= r->nslots)
    if ((err = ring_wait(r, &h->not_full)) < 0)
      break;
  __atomic_store_n(&h->wait_full, 0, __ATOMIC_SEQ_CST);
  if (err == 0 && load32(&h->shutdown))
    err = TD_ECLOSED;
  if (err == 0)
    *slot = r->slots + (head % r->nslots) * r->stride;
  ring_unlock(r);
  return err;
}

void td_ring_write_end(td_ring *r, size_t len) {
  struct ring_shm *h = r->shm;
  uint64_t head = h->head;

  if (head - load64(&h->tail) >= r->nslots)
    return; /* no slot was begun */
  r->lens[head % r->nslots] = len < r->slot_bytes ? len : r->slot_bytes;
  __atomic_store_n(&h->head, head + 1, __ATOMIC_SEQ_CST);
  ring_wake(r, &h->wait_empty, &h->not_empty);
}

/* The slot at tail, if one is committed; TD_ECLOSED for counters that
 * make no sense (nothing in such a ring can be trusted). */
static int ring_take(td_ring *r, uint64_t tail, const void **slot, size_t *len) {
  uint64_t head = load64(&r->shm->head), n;

  if (head == tail)
    return 0;
  if (head - tail > r->nslots)
    return TD_ECLOSED;
  n = r->lens[tail % r->nslots];
  *slot = r->slots + (tail % r->nslots) * r->stride;
  *len = n < r->slot_bytes ? (size_t)n : r->slot_bytes;
  return 1;
}

int td_ring_read_begin(td_ring *r, const void **slot, size_t *len) {
  struct ring_shm *h = r->shm;
  uint64_t tail = h->tail; /* ours */
  int err, got;

  /* Slots committed before a shutdown are still delivered. */
  if ((got = ring_take(r, tail, slot, len)) != 0)
    return got < 0 ? got : 0;
  if ((err = ring_lock(r)) < 0)
    return err;
  if (!load32(&h->shutdown) && load64(&h->head) == tail)
    h->empty_waits++;
  __atomic_store_n(&h->wait_empty, 1, __ATOMIC_SEQ_CST);
  while (!load32(&h->shutdown) && load64(&h->head) == tail)
    if ((err = ring_wait(r, &h->not_empty)) < 0)
      break;
  __atomic_store_n(&h->wait_empty, 0, __ATOMIC_SEQ_CST);
  if (err == 0) {
    got = ring_take(r, tail, slot, len);
    err = got == 1 ? 0 : TD_ECLOSED;
  }
  ring_unlock(r);
  return err;
}

void td_ring_read_end(td_ring *r) {
  struct ring_shm *h = r->shm;
  uint64_t tail = h->tail;

  if (load64(&h->head) == tail)
    return; /* nothing was taken */
  __atomic_store_n(&h->tail, tail + 1, __ATOMIC_SEQ_CST);
  ring_wake(r, &h->wait_full, &h->not_full);
}

void td_ring_shutdown(td_ring *r, int reason) {
  struct ring_shm *h = r->shm;
  struct timespec ts;
  int rc;

  /* traind calls this from its loop, and the job's user can map the ring
   * and keep the mutex: wait for it only briefly. */
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_nsec += RING_SHUTDOWN_WAIT_NS;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  rc = pthread_mutex_clocklock(&h->mu, CLOCK_MONOTONIC, &ts);
  if (rc == EOWNERDEAD)
    ring_owner_died(h);
  if (!load32(&h->shutdown)) {
    h->reason = reason;
    __atomic_store_n(&h->shutdown, 1, __ATOMIC_SEQ_CST);
  }
  if (rc != 0 && rc != EOWNERDEAD)
    return; /* without the wakeup: every wait looks again within RING_WAIT_S */
  pthread_cond_broadcast(&h->not_full);
  pthread_cond_broadcast(&h->not_empty);
  ring_unlock(r);
}

int td_ring_is_shutdown(td_ring *r, int *reason) {
  struct ring_shm *h = r->shm;
  int down;

  if (ring_lock(r) < 0)
    return 1;
  down = load32(&h->shutdown) != 0;
  if (down && reason != NULL)
    *reason = h->reason;
  ring_unlock(r);
  return down;
}

void td_ring_set_peer(td_ring *r, pid_t pid) {
  r->peer = pid;
}

void td_ring_get_stats(td_ring *r, td_ring_stats *out) {
  struct ring_shm *h = r->shm;

  memset(out, 0, sizeof(*out));
  if (ring_lock(r) < 0)
    return;
  out->written = load64(&h->head);
  out->read = load64(&h->tail);
  out->filled = (uint32_t)(out->written - out->read);
  out->full_waits = h->full_waits;
  out->empty_waits = h->empty_waits;
  ring_unlock(r);
}

int td_batch_check(const void *slot, size_t len) {
  const td_batch_hdr *h = slot;
  uint64_t need;

  if (len < sizeof(*h))
    return TD_EPROTO;
  switch (h->kind) {
  case TD_BATCH_TRAIN:
  case TD_BATCH_TEST:
  case TD_BATCH_VAL:
    if (h->count < 1 || h->sample_bytes < 1 || h->index >= h->nbatches ||
        td_dtype_size((td_dtype)h->dtype) == 0 ||
        h->sample_bytes % td_dtype_size((td_dtype)h->dtype) != 0 || h->target_bytes < 4 ||
        h->target_bytes % 4 != 0)
      return TD_EPROTO;
    need = sizeof(*h) + (uint64_t)h->count * ((uint64_t)h->sample_bytes + h->target_bytes);
    return need == len ? 0 : TD_EPROTO;
  case TD_BATCH_END:
  case TD_BATCH_ERROR:
    return 0;
  default:
    return TD_EPROTO;
  }
}
