/* A pool of threads for one batch of tasks: the loader's decoding and the
 * dataset's whole-split loads.
 */
#ifndef TD_PARALLEL_H
#define TD_PARALLEL_H

#include <stddef.h>
#include <stdint.h>

/* Run fn(ctx, task) for every task in 0..ntasks-1 on up to nthreads
 * threads (the caller's included); stop at the first failure and return
 * it, its message in err. */
typedef int (*td_task_fn)(void *ctx, uint64_t task, char *err, size_t errlen);
int td_parallel(int nthreads, uint64_t ntasks, td_task_fn fn, void *ctx, char *err,
                size_t errlen);

#endif
