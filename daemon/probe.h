/* Device probes (probe.c): each device's memory and per-process
 * overhead, measured once, not guessed. */
#ifndef TD_PROBE_H
#define TD_PROBE_H

#include "traind.h"

/* Measure every configured device once, before traind serves: CPU devices
 * in-process, CUDA devices each in a `traind-worker --probe` child (traind
 * holds no CUDA context).  Runs the loop until the probes end (each has a
 * time limit).  A device whose probe fails is unusable, with the reason. */
void td_probe_devices(td_daemon *d);
/* Probe one device (added by SIGHUP) in the background: it admits nothing
 * until the answer comes. */
void td_probe_start(td_daemon *d, td_device *dev);

#endif
