/* A single-producer single-consumer ring of fixed-size slots in a POSIX
 * shared-memory segment: the loader fills it with batches, the worker
 * drains it.
 *
 * The segment holds a header (magic, version, nslots, slot_bytes, head and
 * tail counters, a shutdown flag and reason, two wait flags), a
 * process-shared robust mutex with two CLOCK_MONOTONIC condvars (not-full,
 * not-empty), each slot's committed length, then the slots.  While there
 * is room (or a batch) a side takes no lock: it stores its own counter and
 * loads the other's.  A side that must wait sleeps on a condvar, never
 * spins; the other side signals it only when its wait flag is set.  Waits
 * are timed (1 s) only so that they notice a vanished peer.  A process that
 * dies holding the mutex leaves the ring shut down (robust mutex), never
 * locked.
 *
 * One td_ring handle per process and side; the handle is not thread-safe.
 */
#ifndef TD_RING_H
#define TD_RING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#define TD_RING_MIN_SLOTS 2u
#define TD_RING_MAX_SLOTS 1024u
#define TD_RING_MAX_SLOT_BYTES ((size_t)1 << 30)

typedef struct td_ring td_ring;

/* Bytes of the segment for these sizes; 0 if they are out of bounds or the
 * total overflows. */
size_t td_ring_segment_bytes(uint32_t nslots, size_t slot_bytes);

/* Create, size and initialise the segment `name` ("/traind-...", shm_open
 * naming) with O_EXCL and mode 0600; unmapped on return.  TD_EINVAL on a bad
 * name or sizes (nslots 2..1024, slot_bytes 1..1 GiB), TD_EIO with errno
 * kept (EEXIST if it already exists). */
int td_ring_create(const char *name, uint32_t nslots, size_t slot_bytes);

/* td_ring_create for the processes of another user (traind as root, for a
 * job's loader and worker): the new segment is given to owner:group through
 * its descriptor, before it is initialised.  (uid_t)-1 and (gid_t)-1 leave
 * that id as it is.  With out, the creator's own mapping of it comes back
 * there (through the descriptor it created: once given away, the segment
 * cannot be opened again by a root that does not override permissions). */
int td_ring_create_owned(const char *name, uint32_t nslots, size_t slot_bytes, uid_t owner,
                         gid_t group, td_ring **out);

/* Map an existing segment, checking magic, version and sizes against the
 * segment's size, and that the segment is this process's own (its owner is
 * the effective uid, and it grants nothing to group or others): anyone can
 * make a segment of any free name, and a planted ring would feed the
 * worker someone else's batches.  TD_ENOENT, TD_EVERSION, TD_EINVAL (not a
 * ring, or garbage), TD_EIO (also: someone else's), TD_ENOMEM. */
int td_ring_open(const char *name, td_ring **out);

/* td_ring_open for a segment that owner must own (traind as root opens the
 * ring it made for a job's user).  A failure's reason goes into err when
 * err is not NULL (the owner and mode of a segment that is refused). */
int td_ring_open_owned(const char *name, uid_t owner, td_ring **out, char *err, size_t errlen);

/* Unmap; accepts NULL.  Does not shut the ring down. */
void td_ring_close(td_ring *r);

/* shm_unlink; 0 also if already gone. */
int td_ring_unlink(const char *name);

size_t td_ring_slot_bytes(const td_ring *r);
uint32_t td_ring_nslots(const td_ring *r);

/* Producer: wait for a free slot and return a pointer to its
 * td_ring_slot_bytes() bytes; then commit len bytes (clipped to the slot).
 * TD_ECLOSED after a shutdown or when the peer is gone. */
int td_ring_write_begin(td_ring *r, void **slot);
void td_ring_write_end(td_ring *r, size_t len);

/* Consumer: wait for a filled slot; then release it.  Slots committed
 * before a shutdown are still delivered; TD_ECLOSED once a shut-down ring
 * is empty, or when the ring is empty and the peer is gone. */
int td_ring_read_begin(td_ring *r, const void **slot, size_t *len);
void td_ring_read_end(td_ring *r);

/* Wake both sides; later waits return TD_ECLOSED.  reason is stored
 * (0 = normal end); the first shutdown's reason wins.  Never blocks for
 * long: a peer that keeps the mutex (the ring belongs to the job's user,
 * who can map it and hold it) only delays the wakeup to the sides' next
 * timed wait. */
void td_ring_shutdown(td_ring *r, int reason);

/* 1 if the ring was shut down (its reason in *reason if non-NULL), else 0. */
int td_ring_is_shutdown(td_ring *r, int *reason);

/* The pid of the other side (0 = none): a timed-out wait checks that it
 * still exists (and is not a zombie) and returns TD_ECLOSED if it is gone,
 * so a killed peer never leaves this side blocked forever. */
void td_ring_set_peer(td_ring *r, pid_t pid);

/* Counters for monitoring and tests. */
typedef struct td_ring_stats {
  uint64_t written;    /* slots committed so far */
  uint64_t read;       /* slots released so far */
  uint32_t filled;     /* committed and not yet released */
  uint64_t full_waits; /* times the producer found the ring full */
  uint64_t empty_waits;/* times the consumer found the ring empty */
} td_ring_stats;
void td_ring_get_stats(td_ring *r, td_ring_stats *out);

/* The whole mapping (header and slots), page-aligned: what a CUDA worker
 * registers with cudaHostRegister, so that copies from the slots to the
 * device are asynchronous and overlap compute.  A slot must not be released
 * (td_ring_read_end) before a copy from it has completed, and the mapping
 * must be unregistered before td_ring_close unmaps it. */
void *td_ring_mapping(const td_ring *r, size_t *bytes);

/* A batch in a slot: hdr | count*sample_bytes samples | count*target_bytes
 * targets (int32 class ids, or float32 targets: td_jobspec_target).
 * TD_BATCH_ERROR carries a NUL-terminated message after the header.
 * TD_BATCH_VAL batches (the validation split, after each epoch's training)
 * come only when the job asks for a validation split. */
enum {
  TD_BATCH_TRAIN = 1, TD_BATCH_TEST = 2, TD_BATCH_END = 3, TD_BATCH_ERROR = 4, TD_BATCH_VAL = 5
};

typedef struct td_batch_hdr {
  uint32_t kind;         /* TD_BATCH_* */
  uint32_t epoch;        /* 0-based */
  uint32_t index;        /* batch index within this epoch's train (or test) pass */
  uint32_t nbatches;     /* batches in this pass */
  uint32_t count;        /* samples in this batch (the last may be short) */
  uint32_t sample_bytes; /* bytes of one sample: elements * their size (uint8: 784) */
  uint64_t first_sample; /* global sample number of sample 0 in the epoch order */
  int32_t error;         /* TD_BATCH_ERROR: a TD_E* code; message follows as text */
  uint32_t dtype;        /* the samples' element type as stored (td_dtype: 0 = uint8) */
  uint32_t target_bytes; /* bytes of one sample's target: 4 (a class id) or 4 * outputs */
  uint32_t reserved;     /* 0 */
} td_batch_hdr;

/* Slot bytes a batch of `batch` samples needs; the caller keeps the product
 * in range (td_ring_create refuses a slot over 1 GiB). */
static inline size_t td_batch_bytes(uint32_t batch, uint32_t sample_bytes,
                                    uint32_t target_bytes) {
  return sizeof(td_batch_hdr) + (size_t)batch * ((size_t)sample_bytes + target_bytes);
}

static inline const uint8_t *td_batch_pixels(const td_batch_hdr *h) {
  return (const uint8_t *)(h + 1);
}

static inline const uint8_t *td_batch_targets(const td_batch_hdr *h) {
  return td_batch_pixels(h) + (size_t)h->count * h->sample_bytes;
}

/* Check a slot of len bytes before using it as a batch: a known kind, and
 * for TRAIN/TEST/VAL a count >= 1, a known dtype whose size divides
 * sample_bytes, a target_bytes that is a positive multiple of 4, and exactly
 * td_batch_bytes(count, sample_bytes, target_bytes) bytes.
 * 0 or TD_EPROTO. */
int td_batch_check(const void *slot, size_t len);

/* Copy the message of a TD_BATCH_ERROR slot of len bytes into buf (always
 * terminated, even if the sender's text was not). */
static inline void td_batch_error_text(const td_batch_hdr *h, size_t len,
                                       char *buf, size_t cap) {
  const char *text = (const char *)(h + 1);
  size_t n = 0, max = len > sizeof(*h) ? len - sizeof(*h) : 0;

  if (cap == 0)
    return;
  while (n < max && n + 1 < cap && text[n] != '\0')
    n++;
  memcpy(buf, text, n);
  buf[n] = '\0';
}

#endif
