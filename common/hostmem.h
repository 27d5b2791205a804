/* The host's memory: what the CPU backend's simulated devices hold and what
 * traind's probe of a CPU device reports.  One probe, so that the two never
 * disagree.
 */
#ifndef TD_HOSTMEM_H
#define TD_HOSTMEM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The host's RAM (MemTotal) and the memory available to new work without
 * swapping (MemAvailable), in bytes, from /proc/meminfo.  A figure missing
 * there (no /proc; MemAvailable before Linux 3.14) comes from sysconf: the
 * physical pages, or the free pages (a lower figure than MemAvailable).
 * *available is at most *total.  0, or TD_EIO with nothing written. */
int td_host_mem(uint64_t *total, uint64_t *available);
/* The same from another meminfo file (tests); a path that cannot be opened
 * is the missing /proc. */
int td_host_mem_from(const char *meminfo, uint64_t *total, uint64_t *available);

#ifdef __cplusplus
}
#endif

#endif
