/* 16-bit floating-point storage: IEEE binary16 (fp16) and bfloat16 (bf16).
 *
 * The conversions from float round to nearest, ties to even, and give
 * exactly the bits of CUDA's __float2half_rn and __float2bfloat16_rn:
 * subnormals are kept, values past the largest finite one become inf, and
 * every NaN becomes the canonical 0x7fff (no sign).  The conversions to float
 * are exact; a NaN comes back as a quiet NaN.  So a tensor the CPU backend
 * stores in half precision holds the same bits a GPU would.
 *
 * Header-only: the CPU kernels call these in their loops.
 */
#ifndef TD_HALF_H
#define TD_HALF_H

#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { TD_HALF_F16 = 0, TD_HALF_BF16 } td_half_kind;

#define TD_HALF_NAN 0x7fffu /* what both conversions make of any NaN */

static inline uint32_t td__f32_bits(float f) {
  uint32_t u;

  memcpy(&u, &f, sizeof(u));
  return u;
}

static inline float td__f32_from_bits(uint32_t u) {
  float f;

  memcpy(&f, &u, sizeof(f));
  return f;
}

/* Keep the top bits of v, dropping `shift` low ones, rounded to nearest even. */
static inline uint32_t td__round_shift(uint32_t v, unsigned shift) {
  uint32_t half = 1u << (shift - 1), rest = v & ((1u << shift) - 1), r = v >> shift;

  return r + (rest > half || (rest == half && (r & 1u)));
}

static inline uint16_t td_f32_to_bf16(float f) {
  uint32_t u = td__f32_bits(f);

  if ((u & 0x7fffffffu) > 0x7f800000u)
    return TD_HALF_NAN;
  /* A carry out of the mantissa moves into the exponent: the largest
   * values round up to inf, as they should. */
  return (uint16_t)td__round_shift(u, 16);
}

static inline float td_bf16_to_f32(uint16_t h) {
  return td__f32_from_bits((uint32_t)h << 16);
}

static inline uint16_t td_f32_to_f16(float f) {
  uint32_t u = td__f32_bits(f), a = u & 0x7fffffffu;
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);

  if (a > 0x7f800000u)
    return TD_HALF_NAN;
  if (a >= 0x477ff000u) /* 65520 and up (inf too): past 65504 by half an ulp or more */
    return sign | 0x7c00u;
  if (a >= 0x38800000u) /* 2^-14 and up: normal; rebias the exponent 127 -> 15 */
    return sign | (uint16_t)td__round_shift(a - 0x38000000u, 13);
  if (a <= 0x33000000u) /* 2^-25 and below: half the smallest subnormal ties to 0 */
    return sign;
  /* Subnormal: the 24-bit significand in units of 2^-24, shifted 14..24. */
  return sign | (uint16_t)td__round_shift((a & 0x7fffffu) | 0x800000u, 126u - (a >> 23));
}

static inline float td_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  float sub;

  if (exp == 0x1f)
    return td__f32_from_bits(man != 0 ? 0x7fffffffu : sign | 0x7f800000u);
  if (exp != 0)
    return td__f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
  sub = (float)man * 0x1p-24f; /* exact: at most 10 significant bits */
  return sign ? -sub : sub;
}

static inline uint16_t td_f32_to_half(td_half_kind k, float f) {
  return k == TD_HALF_BF16 ? td_f32_to_bf16(f) : td_f32_to_f16(f);
}

static inline float td_half_to_f32(td_half_kind k, uint16_t h) {
  return k == TD_HALF_BF16 ? td_bf16_to_f32(h) : td_f16_to_f32(h);
}

/* "fp16", "bf16" */
static inline const char *td_half_name(td_half_kind k) {
  return k == TD_HALF_BF16 ? "bf16" : "fp16";
}

#ifdef __cplusplus
}
#endif

#endif
