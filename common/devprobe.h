/* What a device offers a job, measured once per device when traind starts:
 * `traind-worker --probe` (kernels' td_backend_probe) measures it and traind
 * (daemon/probe.c) reads it.  Here, not in kernels/backend.h, so that traind
 * needs nothing from the compute backends.
 */
#ifndef TD_DEVPROBE_H
#define TD_DEVPROBE_H

#include <stdint.h>

typedef struct td_device_probe {
  uint64_t total;    /* device memory (CPU devices: the host's RAM) */
  uint64_t free;     /* free before any traind worker touched it (MemAvailable) */
  uint64_t overhead; /* a worker's bytes outside its plan's arenas: CUDA context,
                      * stream, cuBLAS (with its workspace) and cuDNN handles,
                      * the kernels loaded by a first step, and on a GPU up to
                      * one allocation granule per arena (cudaMalloc rounds
                      * each up); 0 on the CPU */
} td_device_probe;

/* The arenas a worker allocates, one allocation each (common/plan.h:
 * parameters, gradients, optimiser state, activations, workspace, input
 * staging): the GPU probe counts the rounding of each in the overhead. */
#define TD_WORKER_ARENAS 6

#endif
