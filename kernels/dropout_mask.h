/* The dropout mask as a pure function of its key, shared by every backend so
 * that a CPU and a CUDA run drop the same elements.
 *
 * splitmix64's finaliser over counters: the call's key (seed, layer, step)
 * and the sample index give a row key, the element index steps along it.
 * Nothing depends on call order or on where a micro-batch starts. */
#ifndef TD_DROPOUT_MASK_H
#define TD_DROPOUT_MASK_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#define TD_HOSTDEV __host__ __device__
#else
#define TD_HOSTDEV
#endif

#define TD__GOLDEN 0x9E3779B97F4A7C15ull

static inline TD_HOSTDEV uint64_t td__mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* The key of one dropout call: everything but the sample and element. */
static inline TD_HOSTDEV uint64_t td__dropout_key(uint64_t seed, uint32_t layer,
                                                  uint64_t step) {
  return td__mix64(td__mix64(td__mix64(seed + TD__GOLDEN) + layer) + step);
}

static inline TD_HOSTDEV uint64_t td__dropout_row(uint64_t key, uint64_t sample) {
  return td__mix64(key + (sample + 1) * TD__GOLDEN);
}

/* Keep the element when 24 uniform bits reach threshold = ceil(p * 2^24). */
static inline TD_HOSTDEV bool td__dropout_keep(uint64_t row, uint64_t elem,
                                               uint32_t threshold) {
  return (uint32_t)(td__mix64(row + (elem + 1) * TD__GOLDEN) >> 40) >= threshold;
}

#endif
