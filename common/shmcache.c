#include "shmcache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "log.h"
#include "util.h"

#define CACHE_MAGIC 0x48435254u /* "TRCH" */
#define CACHE_VERSION 1u
#define CACHE_DATA_OFF 4096u
#define SHM_DIR "/dev/shm"

struct cache_hdr {
  uint32_t magic; /* written last, by publish */
  uint32_t version;
  uint64_t data_bytes;
  char key[TD_SHMCACHE_KEY_MAX];
};

struct td_shmcache {
  char name[64];
  char lock[64];
  char name_path[80], lock_path[80]; /* under /dev/shm, for the signal path */
  int fd;
  int lock_fd; /* held from open until publish (a new entry) */
  uint8_t *map;
  size_t map_bytes;
};

static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;

  for (; *s; s++)
    h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
  return h;
}

/* Whether fd is still the object at name (it may have been unlinked, and
 * the name reused, since it was opened). */
static int still_named(int fd, const char *name) {
  char path[128];
  struct stat a, b;

  snprintf(path, sizeof(path), SHM_DIR "%s", name);
  return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
         a.st_dev == b.st_dev;
}

/* Whether the object at fd is this user's alone.  Anyone may create any
 * free name in /dev/shm: an object someone else made (or may write) must be
 * neither read nor waited on.  *st is what fstat said. */
static int ours(int fd, struct stat *st) {
  return fstat(fd, st) == 0 && S_ISREG(st->st_mode) && st->st_uid == geteuid() &&
         (st->st_mode & 077) == 0;
}

/* Someone else's object at a name that should be ours: say whose it is.
 * The caller cannot tell (it has only a code), and whoever planted it
 * should be found. */
static void warn_foreign(const char *name, const struct stat *st) {
  td_warn("shared cache: %s belongs to uid %u (mode %04o), not to this user (uid %u) alone: "
          "ignoring it and decoding a private copy", name, (unsigned)st->st_uid,
          (unsigned)(st->st_mode & 07777), (unsigned)geteuid());
}

/* The key's lock object, locked (how: LOCK_EX, maybe | LOCK_NB).  mine:
 * create it if missing, and refuse (EPERM, *st its owner) one that is not
 * ours before waiting on it; else open only what exists, whoever's it is
 * (the sweep).  -1 on failure (EWOULDBLOCK: busy). */
static int lock_key(const char *lock, int how, int mine, struct stat *st) {
  for (;;) {
    int fd = shm_open(lock, mine ? O_RDWR | O_CREAT | O_CLOEXEC : O_RDONLY | O_CLOEXEC, 0600);

    if (fd < 0) {
      if (mine && errno == EACCES) {
        char path[128];
        snprintf(path, sizeof(path), SHM_DIR "%s", lock);
        if (stat(path, st) == 0)
          errno = EPERM;
        else
          errno = EACCES;
      }
      return -1;
    }
    if (mine && !ours(fd, st)) {
      close(fd);
      errno = EPERM;
      return -1;
    }
    while (flock(fd, how) < 0) {
      if (errno != EINTR) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
      }
    }
    if (still_named(fd, lock))
      return fd;
    close(fd); /* removed while we waited: take the new one */
  }
}

/* The user is in the name: sharing is between one user's jobs, and another
 * user's object can then never stand where ours should be (it is refused,
 * not used, if someone plants one). */
static void names(const char *key, char *name, char *lock) {
  uint64_t h = fnv1a(key);
  unsigned uid = (unsigned)geteuid();

  snprintf(name, 64, "/" TD_SHMCACHE_PREFIX "%u-%016llx", uid, (unsigned long long)h);
  snprintf(lock, 64, "/" TD_SHMCACHE_PREFIX "%u-%016llx.lock", uid, (unsigned long long)h);
}

int td_shmcache_entry_name(const char *key, char *name, size_t cap) {
  char n[64], lock[64];

  names(key, n, lock);
  return td_strlcpy(name, n, cap);
}

int td_shmcache_header_check(const void *buf, size_t len, const char *key, uint64_t bytes) {
  const struct cache_hdr *h = buf;

  if (len < CACHE_DATA_OFF)
    return TD_EDATA;
  if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != CACHE_MAGIC ||
      h->version != CACHE_VERSION)
    return TD_EDATA;
  /* len - CACHE_DATA_OFF: CACHE_DATA_OFF + bytes wraps for a huge bytes. */
  if (strncmp(h->key, key, sizeof(h->key)) != 0 || h->data_bytes != bytes ||
      len - CACHE_DATA_OFF < bytes)
    return TD_EAGAIN; /* another key with this hash */
  return 0;
}

/* Map an existing entry: 1 ready (and share-locked), 0 not usable and
 * removed (a builder died), or a negative code. */
static int map_existing(td_shmcache *c, const char *key, uint64_t bytes) {
  struct stat st;
  int rc;

  if (fstat(c->fd, &st) < 0)
    return TD_EIO;
  if ((uint64_t)st.st_size < CACHE_DATA_OFF)
    goto remove;
  c->map_bytes = (size_t)st.st_size;
  c->map = mmap(NULL, c->map_bytes, PROT_READ, MAP_SHARED, c->fd, 0);
  if (c->map == MAP_FAILED) {
    c->map = NULL;
    return TD_EIO;
  }
  if ((rc = td_shmcache_header_check(c->map, c->map_bytes, key, bytes)) == TD_EDATA)
    goto remove;
  if (rc < 0)
    return rc;
  if (flock(c->fd, LOCK_SH) < 0)
    return TD_EIO;
  return 1;

remove:
  /* Only an abandoned build is unpublished here: we hold the key's lock. */
  if (c->map != NULL)
    munmap(c->map, c->map_bytes);
  c->map = NULL;
  if (flock(c->fd, LOCK_EX | LOCK_NB) == 0)
    shm_unlink(c->name);
  close(c->fd);
  c->fd = -1;
  return 0;
}

static int create_entry(td_shmcache *c, const char *key, uint64_t bytes) {
  struct cache_hdr *h;
  uint64_t total = CACHE_DATA_OFF + bytes;
  int rc, err;

  if (total > SIZE_MAX || total > (uint64_t)INT64_MAX)
    return TD_ENOSPC;
  c->fd = shm_open(c->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (c->fd < 0)
    return TD_EIO;
  if (flock(c->fd, LOCK_SH) < 0) {
    err = TD_EIO;
    goto unlink_seg;
  }
  /* Reserve the pages now: a full /dev/shm must be an error here, not a
   * SIGBUS while decoding into it. */
  if (ftruncate(c->fd, (off_t)total) < 0 ||
      (rc = posix_fallocate(c->fd, 0, (off_t)total)) != 0) {
    err = TD_ENOSPC;
    goto unlink_seg;
  }
  c->map_bytes = (size_t)total;
  c->map = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
  if (c->map == MAP_FAILED) {
    c->map = NULL;
    err = TD_EIO;
    goto unlink_seg;
  }
  h = (struct cache_hdr *)c->map;
  h->version = CACHE_VERSION;
  h->data_bytes = bytes;
  td_strlcpy(h->key, key, sizeof(h->key));
  return 0;

unlink_seg:
  shm_unlink(c->name);
  close(c->fd);
  c->fd = -1;
  return err;
}

int td_shmcache_open(const char *key, uint64_t bytes, td_shmcache **out, int *ready) {
  td_shmcache *c;
  struct stat st;
  int rc;

  if (strlen(key) >= TD_SHMCACHE_KEY_MAX)
    return TD_EINVAL;
  c = calloc(1, sizeof(*c));
  if (c == NULL)
    return TD_ENOMEM;
  c->fd = -1;
  names(key, c->name, c->lock);
  snprintf(c->name_path, sizeof(c->name_path), SHM_DIR "%s", c->name);
  snprintf(c->lock_path, sizeof(c->lock_path), SHM_DIR "%s", c->lock);
  c->lock_fd = lock_key(c->lock, LOCK_EX, 1, &st);
  if (c->lock_fd < 0) {
    rc = TD_EIO;
    if (errno == EPERM) {
      warn_foreign(c->lock, &st);
      rc = TD_EAGAIN;
    }
    free(c);
    return rc;
  }
  c->fd = shm_open(c->name, O_RDWR | O_CLOEXEC, 0);
  if (c->fd < 0 && errno == EACCES && stat(c->name_path, &st) == 0) {
    warn_foreign(c->name, &st);
    rc = TD_EAGAIN;
    goto fail;
  }
  if (c->fd >= 0) {
    /* Checked on the descriptor, so the object checked is the one mapped. */
    if (!ours(c->fd, &st)) {
      warn_foreign(c->name, &st);
      rc = TD_EAGAIN;
      goto fail;
    }
    if ((rc = map_existing(c, key, bytes)) == 1) {
      close(c->lock_fd);
      c->lock_fd = -1;
      *out = c;
      *ready = 1;
      return 0;
    }
    if (rc < 0)
      goto fail;
  } else if (errno != ENOENT) {
    rc = TD_EIO;
    goto fail;
  }
  if ((rc = create_entry(c, key, bytes)) < 0)
    goto fail;
  *out = c; /* the key stays locked until publish */
  *ready = 0;
  return 0;

fail:
  if (c->map != NULL)
    munmap(c->map, c->map_bytes);
  if (c->fd >= 0)
    close(c->fd);
  close(c->lock_fd);
  free(c);
  return rc;
}

void td_shmcache_publish(td_shmcache *c) {
  struct cache_hdr *h = (struct cache_hdr *)c->map;

  __atomic_store_n(&h->magic, CACHE_MAGIC, __ATOMIC_RELEASE);
  close(c->lock_fd);
  c->lock_fd = -1;
}

void td_shmcache_release(td_shmcache *c) {
  struct stat st;
  int lk;

  if (c == NULL)
    return;
  lk = c->lock_fd >= 0 ? c->lock_fd : lock_key(c->lock, LOCK_EX, 1, &st);
  munmap(c->map, c->map_bytes);
  /* Last user: no one else holds the shared lock.  Under the key's lock no
   * one can be between opening the segment and locking it. */
  if (lk >= 0 && flock(c->fd, LOCK_EX | LOCK_NB) == 0 && still_named(c->fd, c->name)) {
    shm_unlink(c->name);
    shm_unlink(c->lock);
  }
  close(c->fd);
  if (lk >= 0)
    close(lk);
  free(c);
}

void td_shmcache_release_on_signal(td_shmcache *c) {
  struct stat a, b;
  int lk;

  if (c == NULL)
    return;
  lk = c->lock_fd >= 0 ? c->lock_fd : open(c->lock_path, O_RDWR | O_CLOEXEC);
  if (lk < 0)
    return;
  if ((lk == c->lock_fd || flock(lk, LOCK_EX | LOCK_NB) == 0) && fstat(lk, &a) == 0 &&
      stat(c->lock_path, &b) == 0 && a.st_ino == b.st_ino &&
      flock(c->fd, LOCK_EX | LOCK_NB) == 0 && fstat(c->fd, &a) == 0 &&
      stat(c->name_path, &b) == 0 && a.st_ino == b.st_ino) {
    unlink(c->name_path);
    unlink(c->lock_path);
  }
  if (lk != c->lock_fd)
    close(lk);
}

uint8_t *td_shmcache_data(const td_shmcache *c) {
  return c->map + CACHE_DATA_OFF;
}

const char *td_shmcache_name(const td_shmcache *c) {
  return c->name;
}

/* "traind-cache-<uid>-<16 hex>" with an optional ".lock": the stem
 * "<uid>-<16 hex>" and the uid.  The names of traind before the uid was in
 * them ("traind-cache-<16 hex>") count too, as the stem "<16 hex>" and no
 * uid (-1), so the sweep still removes what they left. */
static int entry_stem(const char *d_name, char stem[32], long long *uid) {
  size_t plen = strlen(TD_SHMCACHE_PREFIX), ndig;
  const char *p = d_name + plen, *hex = p;

  if (strncmp(d_name, TD_SHMCACHE_PREFIX, plen) != 0)
    return 0;
  *uid = -1;
  ndig = strspn(p, "0123456789");
  if (ndig >= 1 && ndig <= 10 && p[ndig] == '-') {
    *uid = strtoll(p, NULL, 10);
    if (*uid > (long long)UINT32_MAX)
      return 0;
    hex = p + ndig + 1;
  }
  if (strspn(hex, "0123456789abcdef") != 16 || (hex[16] != '\0' && strcmp(hex + 16, ".lock") != 0))
    return 0;
  memcpy(stem, p, (size_t)(hex + 16 - p));
  stem[hex + 16 - p] = '\0';
  return 1;
}

int td_shmcache_sweep(void) {
  DIR *dir = opendir(SHM_DIR);
  struct dirent *e;
  struct stat st;
  int removed = 0;

  if (dir == NULL)
    return 0;
  while ((e = readdir(dir)) != NULL) {
    char stem[32], name[64], lock[64];
    long long uid;
    int lk, fd, gone = 0;

    if (!entry_stem(e->d_name, stem, &uid))
      continue;
    /* A user's loader sweeps its own entries; root (traind) every one. */
    if (geteuid() != 0 && uid != (long long)geteuid())
      continue;
    snprintf(name, sizeof(name), "/" TD_SHMCACHE_PREFIX "%s", stem);
    snprintf(lock, sizeof(lock), "/" TD_SHMCACHE_PREFIX "%s.lock", stem);
    lk = lock_key(lock, LOCK_EX | LOCK_NB, 0, NULL);
    /* A segment without its lock gets one, but only from its own user: a
     * lock that root made would shut the user out of the key. */
    if (lk < 0 && errno == ENOENT && (uid < 0 || uid == (long long)geteuid()))
      lk = lock_key(lock, LOCK_EX | LOCK_NB, 1, &st);
    if (lk < 0)
      continue; /* being built, opened or released right now */
    fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 && still_named(fd, name) &&
        shm_unlink(name) == 0) {
      removed++;
      gone = 1;
    }
    /* A lock whose segment is gone (or was never made) goes too. */
    if (fd < 0 || gone)
      shm_unlink(lock);
    if (fd >= 0)
      close(fd);
    close(lk);
  }
  closedir(dir);
  return removed;
}

void td_shmcache_usage(uint64_t *bytes, uint32_t *segments) {
  DIR *dir = opendir(SHM_DIR);
  struct dirent *e;
  char stem[32], path[300];
  long long uid;
  struct stat st;

  *bytes = 0;
  *segments = 0;
  if (dir == NULL)
    return;
  while ((e = readdir(dir)) != NULL) {
    if (!entry_stem(e->d_name, stem, &uid) || strstr(e->d_name, ".lock") != NULL)
      continue;
    snprintf(path, sizeof(path), SHM_DIR "/%s", e->d_name);
    if (stat(path, &st) == 0) {
      *bytes += (uint64_t)st.st_blocks * 512;
      (*segments)++;
    }
  }
  closedir(dir);
}
