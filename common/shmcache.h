/* A shared, read-only cache of decoded datasets in POSIX shared memory.
 *
 * Loaders of the same data (equal keys: td_split_cache_key) run by the same
 * user map one copy: the first decodes it into the segment
 * /traind-cache-<uid>-<hash> (mode 0600), the others map it.  Objects at
 * those names that are not the user's alone (anyone may create any name in
 * /dev/shm) are never mapped nor waited on: td_shmcache_open logs a warning
 * naming the object and its owner and returns TD_EAGAIN, and the caller
 * decodes a private copy.  Each user of a copy holds a shared flock on the
 * segment while it maps it; the one that leaves last (its exclusive flock
 * succeeds) unlinks it.  A lock object per key,
 * /traind-cache-<uid>-<hash>.lock, serialises building, opening and that
 * last unlink, so no one maps a half-built copy or one being removed.  flock locks die with their process: the segment of a
 * killed loader has no lock left, and td_shmcache_sweep (every loader runs
 * it when it starts; traind should at its start and after a loader dies)
 * removes it.
 */
#ifndef TD_SHMCACHE_H
#define TD_SHMCACHE_H

#include <stddef.h>
#include <stdint.h>

#define TD_SHMCACHE_PREFIX "traind-cache-" /* names in /dev/shm */
#define TD_SHMCACHE_KEY_MAX 1024

typedef struct td_shmcache td_shmcache;

/* Map the entry for key (at most TD_SHMCACHE_KEY_MAX - 1 bytes) holding
 * bytes of data.  *ready = 1: the data is there, read it.  *ready = 0: the
 * entry is new and the caller must write the data, then call
 * td_shmcache_publish (or td_shmcache_release to give up); until then
 * other loaders of the key wait in td_shmcache_open.  TD_ENOSPC when
 * /dev/shm has no room, TD_EIO (errno kept), TD_ENOMEM, TD_EINVAL for a
 * key too long, TD_EAGAIN for another key with the same hash or for an
 * object that is not the user's: the caller then decodes into its own
 * memory. */
int td_shmcache_open(const char *key, uint64_t bytes, td_shmcache **out, int *ready);
/* Make a new entry's data visible to others. */
void td_shmcache_publish(td_shmcache *c);
/* Unmap; the last user removes the entry (an unpublished one always).
 * Accepts NULL. */
void td_shmcache_release(td_shmcache *c);

/* td_shmcache_release for a signal handler that then calls _exit: only
 * system calls, and never blocks (a busy key leaves the entry to the
 * next sweep).  c is not freed. */
void td_shmcache_release_on_signal(td_shmcache *c);

/* Whether a mapped segment of len bytes (buf aligned as mmap gives it)
 * holds a published entry for key with bytes of data: 0 if it does;
 * TD_EDATA if it holds no published entry of this version (its builder
 * died: the segment can go); TD_EAGAIN if it is another key's entry with
 * the same hash, or of another size.  Reads only the header. */
int td_shmcache_header_check(const void *buf, size_t len, const char *key, uint64_t bytes);

uint8_t *td_shmcache_data(const td_shmcache *c);
const char *td_shmcache_name(const td_shmcache *c); /* "/traind-cache-..." */

/* The segment name ("/traind-cache-<uid>-<hash>") of key's entry for the
 * calling user.  0, or TD_ETOOBIG if cap is too small. */
int td_shmcache_entry_name(const char *key, char *name, size_t cap);

/* Remove entries no live process maps (left by killed loaders); never
 * blocks.  Root removes every user's, anyone else only their own.  Returns
 * how many it removed. */
int td_shmcache_sweep(void);

/* Bytes and number of the cache's segments: what host memory accounting
 * should count, once each, however many jobs map them. */
void td_shmcache_usage(uint64_t *bytes, uint32_t *segments);

#endif
