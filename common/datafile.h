/* A dataset file as a stream of bytes: plain, or gzip-compressed (one
 * member or several, as `cat a.gz b.gz` makes), read from any offset.
 *
 * A plain file is read with pread, so cursors in several threads read it at
 * once.  A gzip stream can only be decoded from its start; td_dfile_scan
 * decodes it once and records access points on the way (the decoder's bit
 * position at a deflate block boundary and the 32 KiB of output before it),
 * after which a cursor starts at the nearest point at or below its offset.
 * Cursors are independent: one per thread.
 *
 * Every error message reads "<path>: <what> at offset N: expected X, got Y"
 * (gzip offsets are in the compressed file) and the code is TD_EDATA,
 * except TD_ENOENT for a missing file and TD_ENOMEM.
 */
#ifndef TD_DATAFILE_H
#define TD_DATAFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#define TD_DFILE_WINDOW 32768u /* bytes of history an access point keeps */

typedef struct td_dfile td_dfile;
typedef struct td_dcur td_dcur;

/* Open path (gzip when it starts with 1f 8b).  *out only on success. */
int td_dfile_open(const char *path, td_dfile **out, char *err, size_t errlen);
/* Accepts NULL; cursors must be closed first. */
void td_dfile_close(td_dfile *f);

const char *td_dfile_path(const td_dfile *f);
int td_dfile_is_gzip(const td_dfile *f);
/* The file as opened: device, inode, size and modification time. */
const struct stat *td_dfile_stat(const td_dfile *f);
/* Bytes of data: a plain file's size; for gzip, known after a complete
 * td_dfile_scan, UINT64_MAX before. */
uint64_t td_dfile_size(const td_dfile *f);
/* Bytes the access points hold. */
uint64_t td_dfile_index_bytes(const td_dfile *f);
/* The most a cursor may decode before reaching its offset: 0 for a plain
 * file; for gzip, the largest gap between access points (the whole size
 * without any; UINT64_MAX before a scan; after a scan that stopped early,
 * the gaps it saw). */
uint64_t td_dfile_max_gap(const td_dfile *f);

/* Called with the data in order, in pieces; return 0 to go on, 1 to stop
 * early (the rest is then not checked), or a negative TD_E* code. */
typedef int (*td_dfile_fn)(void *ctx, const uint8_t *data, size_t n);

/* Read the data front to back once, handing it to fn (may be NULL).  For
 * gzip, check every member's CRC and length and record an access point
 * about every `spacing` bytes of output (0: none), keeping at most
 * max_points of them (the spacing grows to stay under that). */
int td_dfile_scan(td_dfile *f, uint64_t spacing, uint32_t max_points, td_dfile_fn fn,
                  void *ctx, char *err, size_t errlen);

/* A reader of f's data from offset off (past the end: it reads nothing).
 * Messages go to err, which must outlive the cursor. */
int td_dcur_open(td_dfile *f, uint64_t off, td_dcur **out, char *err, size_t errlen);
void td_dcur_close(td_dcur *c);
/* Read up to n bytes; fewer only at the end of the data (*got). */
int td_dcur_read(td_dcur *c, void *buf, size_t n, size_t *got);
/* Read exactly n bytes; what = what they are, for the message of a short
 * read ("truncated at offset N: expected <what>..."). */
int td_dcur_read_full(td_dcur *c, void *buf, size_t n, const char *what);
/* Read and drop up to n bytes; *skipped (may be NULL) says how many there
 * were before the end. */
int td_dcur_skip(td_dcur *c, uint64_t n, uint64_t *skipped);
/* Offset of the next byte td_dcur_read returns. */
uint64_t td_dcur_offset(const td_dcur *c);
/* Read the rest; TD_EDATA when there is any ("trailing data at offset N"). */
int td_dcur_expect_end(td_dcur *c);

/* "28 x 28", for messages. */
void td_dims_str(const uint32_t *dims, int rank, char *buf, size_t cap);

/* Write "<path>: <formatted text>" to err, each byte of the text that is
 * not printable ASCII shown as '?'; returns TD_EDATA. */
int td_data_errf(char *err, size_t errlen, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
