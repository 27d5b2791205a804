#include "order.h"

#include "util.h"

/* Uniform in [0, bound): rejects the 2^64 mod bound lowest draws. */
static uint64_t rand_below(uint64_t *state, uint64_t bound) {
  uint64_t threshold = (0 - bound) % bound, r;

  do
    r = td_splitmix64(state);
  while (r < threshold);
  return r % bound;
}

void td_shuffle(uint32_t *perm, uint32_t n, uint64_t seed, uint32_t epoch, uint64_t stream) {
  uint64_t state = seed ^ ((uint64_t)epoch * 0x9E3779B97F4A7C15ull);

  if (stream != 0) {
    uint64_t t = stream * 0xD1B54A32D192ED03ull;
    state ^= td_splitmix64(&t);
  }
  for (uint32_t i = 0; i < n; i++)
    perm[i] = i;
  for (uint32_t i = n; i > 1; i--) {
    uint32_t j = (uint32_t)rand_below(&state, i), t = perm[i - 1];
    perm[i - 1] = perm[j];
    perm[j] = t;
  }
}

uint64_t td_order_chunks(const td_order *o) {
  return (o->n + o->chunk - 1) / o->chunk;
}

uint64_t td_order_window_span(const td_order *o) {
  uint64_t k = td_order_chunks(o);

  return o->wchunks == 0 || o->wchunks > k ? k : o->wchunks;
}

uint64_t td_order_windows(const td_order *o) {
  uint64_t k = td_order_chunks(o), span = td_order_window_span(o);

  return span == 0 ? 0 : (k + span - 1) / span;
}

uint32_t td_order_chunk_size(const td_order *o, uint64_t k) {
  uint64_t first = k * o->chunk;

  return (uint32_t)(o->n - first < o->chunk ? o->n - first : o->chunk);
}

void td_order_chunk_perm(const td_order *o, uint32_t *perm) {
  uint64_t k = td_order_chunks(o);

  if (o->shuffle && o->wchunks > 0)
    td_shuffle(perm, (uint32_t)k, o->seed, o->epoch, 1);
  else
    for (uint64_t i = 0; i < k; i++)
      perm[i] = (uint32_t)i;
}

void td_order_window_perm(const td_order *o, uint64_t w, uint32_t *perm, uint32_t count) {
  if (!o->shuffle) {
    for (uint32_t i = 0; i < count; i++)
      perm[i] = i;
    return;
  }
  /* Stream 0 for the full shuffle keeps the order of earlier versions. */
  td_shuffle(perm, count, o->seed, o->epoch, o->wchunks == 0 ? 0 : 2 + w);
}
