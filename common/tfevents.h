/* TensorBoard event files: scalars a person reads with
 * `tensorboard --logdir DIR`.
 *
 * A file is a sequence of records, each
 *   uint64 length (little-endian), uint32 masked CRC-32C of those 8 bytes,
 *   length bytes of an Event protobuf, uint32 masked CRC-32C of them;
 * the first Event carries file_version "brain.Event:2", every later one a
 * Summary of scalars at a step.  The messages are proto/tfevent.proto,
 * encoded by protobuf-c.
 *
 * A writer buffers records in memory (allocated once, at open: writing a
 * scalar allocates nothing) and writes them out when the buffer is half
 * full, when TD_TFEVENTS_FLUSH_SECONDS have passed since the last write,
 * and at close.  A write that fails (disk full) is undone (the file is
 * cut back to its last whole record, so a reader never meets half of one),
 * its records are dropped and the code returned; the next flush tries
 * again.  Not thread-safe: one writer per thread.
 */
#ifndef TD_TFEVENTS_H
#define TD_TFEVENTS_H

#include <stddef.h>
#include <stdint.h>

#define TD_TFEVENTS_FLUSH_SECONDS 2.0
#define TD_TFEVENTS_BUF_BYTES (64u << 10)
#define TD_TFEVENTS_MAX_VALUES 16 /* scalars in one event */
#define TD_TFEVENTS_MAX_TAG 64    /* bytes in a tag, NUL excluded */
#define TD_TFEVENTS_PREFIX "events.out.tfevents."

typedef struct td_tfevents td_tfevents;

typedef struct td_tfscalar {
  const char *tag;
  double value; /* stored as a float, as TensorBoard's simple_value is */
} td_tfscalar;

/* Create a new file in dir, TD_TFEVENTS_PREFIX "<unix seconds>.<host>.<pid>"
 * (TensorFlow's name, with the pid so that a run started again within the
 * same second gets its own file; TensorBoard reads every file of a
 * directory as one run), with O_EXCL and without following a link, and
 * queue its version record.  wall is the time in seconds since the epoch.
 * TD_EIO (err says why) or TD_ENOMEM. */
int td_tfevents_open(const char *dir, double wall, td_tfevents **out, char *err, size_t errlen);

/* The file's path (for messages). */
const char *td_tfevents_path(const td_tfevents *w);

/* Queue one event of n scalars at step, and flush if one is due (see
 * above).  TD_EINVAL for n outside 1..TD_TFEVENTS_MAX_VALUES or a tag that
 * is empty or longer than TD_TFEVENTS_MAX_TAG; a failed flush's code
 * (TD_ENOSPC, TD_EIO) with errno kept. */
int td_tfevents_scalars(td_tfevents *w, int64_t step, double wall, const td_tfscalar *v,
                        size_t n);

/* Write out what is queued now.  0, TD_ENOSPC or TD_EIO. */
int td_tfevents_flush(td_tfevents *w);

/* Flush, close and free; the flush's code.  Accepts NULL. */
int td_tfevents_close(td_tfevents *w);

/* Walk the records of a file's bytes: each call returns the next record's
 * data in *data / *len and advances *off.  0, TD_ENOENT at the end,
 * TD_EPROTO for a damaged or cut record (a bad CRC, a length past the
 * end).  For tests and tools; the decoder is protobuf-c's. */
int td_tfevents_next_record(const void *buf, size_t size, size_t *off, const void **data,
                            size_t *len);

#endif
