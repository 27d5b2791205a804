/* The order a job's samples are trained in: a pass cut into chunks and
 * windows, shuffled from the seed and the epoch alone (the loader reads
 * chunks in this order; tests/unit/test_dataset.c checks it).
 */
#ifndef TD_ORDER_H
#define TD_ORDER_H

#include <stdint.h>

/* A pass of n samples is cut into chunks of `chunk` samples (the last may
 * be short) and the chunks into windows of `wchunks` chunks.  With
 * shuffling, the chunk order is a permutation drawn from (seed, epoch), and
 * the samples inside each window are permuted again from (seed, epoch,
 * window): a sample moves only within its window.  wchunks == 0 is one
 * window of everything: a full shuffle.  Nothing depends on micro-batches,
 * threads or timing. */
typedef struct td_order {
  uint64_t n;
  uint32_t chunk;   /* >= 1 */
  uint32_t wchunks; /* 0: one window */
  uint64_t seed;
  uint32_t epoch;
  int shuffle;      /* 0: file order */
} td_order;

uint64_t td_order_chunks(const td_order *o);
/* Chunks per window: wchunks, or all of them for wchunks 0. */
uint64_t td_order_window_span(const td_order *o);
uint64_t td_order_windows(const td_order *o);
/* Samples in chunk k. */
uint32_t td_order_chunk_size(const td_order *o, uint64_t k);
/* The epoch's chunk order (td_order_chunks entries): window w is entries
 * [w * span, (w + 1) * span), its samples concatenated in that order. */
void td_order_chunk_perm(const td_order *o, uint32_t *perm);
/* The order of window w's count samples (indexes into its concatenation). */
void td_order_window_perm(const td_order *o, uint64_t w, uint32_t *perm, uint32_t count);

/* perm = a permutation of 0..n-1 drawn from (seed, epoch, stream): a
 * Fisher-Yates shuffle with splitmix64. */
void td_shuffle(uint32_t *perm, uint32_t n, uint64_t seed, uint32_t epoch, uint64_t stream);

#endif
