/* fp16 and bf16 conversions (common/half.h): every 16-bit pattern both
 * ways, a large random sample of floats against a rounding computed in
 * double precision another way, NaN handling, and numpy's (fp16) and
 * PyTorch's (bf16) roundings of a committed table (tests/reference/optim.bin). */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "half.h"
#include "refbin.h"

typedef struct format {
  td_half_kind kind;
  int mant_bits;     /* stored fraction bits */
  int exp_bits;
  int emin;          /* the smallest normal exponent */
} format;

static const format formats[] = {
    {TD_HALF_F16, 10, 5, -14},
    {TD_HALF_BF16, 7, 8, -126},
};

static double max_finite(const format *f) {
  int emax = (1 << (f->exp_bits - 1)) - 1;

  return ldexp(2.0 - ldexp(1.0, -f->mant_bits), emax);
}

/* A 16-bit pattern's value, decoded field by field. */
static double decode_ref(const format *f, uint16_t h, int *is_nan) {
  int e = (h >> f->mant_bits) & ((1 << f->exp_bits) - 1), bias = -f->emin + 1;
  uint32_t man = h & ((1u << f->mant_bits) - 1);
  double sign = (h & 0x8000) ? -1.0 : 1.0;

  *is_nan = 0;
  if (e == (1 << f->exp_bits) - 1) {
    *is_nan = man != 0;
    return sign * INFINITY;
  }
  if (e == 0)
    return sign * ldexp((double)man, f->emin - f->mant_bits);
  return sign * ldexp((double)((1u << f->mant_bits) + man), e - bias - f->mant_bits);
}

/* Round x to the format in double: the quantum at x's exponent (never below
 * the subnormal one), nearbyint's ties-to-even, then overflow. */
static double round_ref(const format *f, float xf) {
  double x = fabs((double)xf), q;
  int e;

  if (x == 0.0)
    return copysign(0.0, xf);
  if (isinf(x))
    return copysign(INFINITY, xf);
  frexp(x, &e);
  e -= 1; /* x = m 2^e, 1 <= m < 2 */
  if (e < f->emin)
    e = f->emin;
  q = ldexp(1.0, e - f->mant_bits);
  x = nearbyint(x / q) * q;
  return copysign(x > max_finite(f) ? INFINITY : x, xf);
}

/* For the hot loops: Check's asserts record the place of every passing
 * call (a write to a pipe), which would dominate millions of checks. */
#define EXPECT(cond, ...)        \
  do {                           \
    if (!(cond))                 \
      ck_abort_msg(__VA_ARGS__); \
  } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rand32(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 16);
}

START_TEST(test_every_pattern) {
  const format *f = &formats[_i];

  for (uint32_t h = 0; h < 65536; h++) {
    int is_nan;
    double want = decode_ref(f, (uint16_t)h, &is_nan);
    float got = td_half_to_f32(f->kind, (uint16_t)h);

    if (is_nan) {
      EXPECT(isnan(got), "%s %04x: not NaN", td_half_name(f->kind), h);
      EXPECT(td_f32_to_half(f->kind, got) == TD_HALF_NAN, "%s %04x: NaN round trip",
             td_half_name(f->kind), h);
      continue;
    }
    EXPECT((double)got == want && !signbit(got) == !signbit(want),
                  "%s %04x: %a, want %a", td_half_name(f->kind), h, (double)got, want);
    EXPECT(td_f32_to_half(f->kind, got) == h, "%s %04x: round trip gives %04x",
                  td_half_name(f->kind), h, td_f32_to_half(f->kind, got));
  }
}
END_TEST

/* One float against the double-precision rounding. */
static void check_one(const format *f, uint32_t bits) {
  float x;
  uint16_t h;
  double want, got;

  memcpy(&x, &bits, sizeof(x));
  h = td_f32_to_half(f->kind, x);
  if (isnan(x)) {
    EXPECT(h == TD_HALF_NAN, "%s of NaN %08x: %04x", td_half_name(f->kind), bits, h);
    return;
  }
  want = round_ref(f, x);
  got = td_half_to_f32(f->kind, h);
  EXPECT(got == want && !signbit(got) == !signbit(want),
                "%s(%a = %08x): %a (%04x), want %a", td_half_name(f->kind), (double)x, bits,
                got, h, want);
}

START_TEST(test_random_floats) {
  const format *f = &formats[_i];

  for (int i = 0; i < (1 << 22); i++)
    check_one(f, rand32());
  /* every float around the edges: subnormals, overflow, ties near 1 */
  for (uint32_t b = 0x33000000u - 4096; b < 0x38800000u + 4096; b += 97)
    check_one(f, b);
  for (uint32_t b = 0x477fe000u - 65536; b < 0x47800000u + 65536; b++)
    check_one(f, b | (b & 1u) << 31);
  for (uint32_t b = 0x7f7f0000u; b <= 0x7f800000u; b++)
    check_one(f, b);
  for (uint32_t b = 0x3f800000u; b < 0x3f800000u + 65536; b++)
    check_one(f, b);
  for (uint32_t b = 0; b < 65536; b++) /* float subnormals */
    check_one(f, b * 0x7fu);
}
END_TEST

START_TEST(test_nan_inf_zero) {
  static const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u,
                                  0x7fffffffu, 0xffffffffu, 0x7fa5a5a5u};
  const format *f = &formats[_i];
  uint16_t inf = f->kind == TD_HALF_F16 ? 0x7c00 : 0x7f80;

  for (size_t i = 0; i < sizeof(nans) / sizeof(nans[0]); i++) {
    float x;
    memcpy(&x, &nans[i], sizeof(x));
    ck_assert_uint_eq(td_f32_to_half(f->kind, x), TD_HALF_NAN);
  }
  ck_assert_uint_eq(td_f32_to_half(f->kind, INFINITY), inf);
  ck_assert_uint_eq(td_f32_to_half(f->kind, -INFINITY), inf | 0x8000);
  ck_assert_uint_eq(td_f32_to_half(f->kind, 0.0f), 0);
  ck_assert_uint_eq(td_f32_to_half(f->kind, -0.0f), 0x8000);
  ck_assert_uint_eq(td_f32_to_half(f->kind, 1.0f), f->kind == TD_HALF_F16 ? 0x3c00 : 0x3f80);
  ck_assert_uint_eq(td_f32_to_half(f->kind, FLT_MAX), inf);
}
END_TEST

START_TEST(test_hand_values) {
  /* fp16: the largest finite, the overflow tie, subnormals and their ties */
  ck_assert_uint_eq(td_f32_to_f16(65504.0f), 0x7bff);
  ck_assert_uint_eq(td_f32_to_f16(65519.996f), 0x7bff);
  ck_assert_uint_eq(td_f32_to_f16(65520.0f), 0x7c00);
  ck_assert_uint_eq(td_f32_to_f16(0x1p-24f), 0x0001);
  ck_assert_uint_eq(td_f32_to_f16(0x1p-25f), 0x0000);       /* tie to even 0 */
  ck_assert_uint_eq(td_f32_to_f16(0x1.8p-24f), 0x0002);     /* 1.5 ulp: tie to even 2 */
  ck_assert_uint_eq(td_f32_to_f16(0x1.000002p-25f), 0x0001);
  ck_assert_uint_eq(td_f32_to_f16(0x1.ffcp-15f), 0x0400);   /* rounds up into the normals */
  ck_assert_uint_eq(td_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);   /* tie, even stays */
  ck_assert_uint_eq(td_f32_to_f16(1.0f + 0x1.8p-10f), 0x3c02); /* tie, odd rounds up */
  ck_assert_uint_eq(td_f32_to_f16(-2.0f), 0xc000);
  /* bf16 */
  ck_assert_uint_eq(td_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  ck_assert_uint_eq(td_f32_to_bf16(1.0f + 0x1.8p-7f), 0x3f82);
  ck_assert_uint_eq(td_f32_to_bf16(0x1.fep127f), 0x7f7f);
  ck_assert_uint_eq(td_f32_to_bf16(0x1.ffp127f), 0x7f80);
  ck_assert_uint_eq(td_f32_to_bf16(0x1p-133f), 0x0001);
  ck_assert(td_f16_to_f32(0x0001) == 0x1p-24f);
  ck_assert(td_bf16_to_f32(0xc0a0) == -5.0f);
}
END_TEST

START_TEST(test_numpy_torch_table) {
  const ref_tensor *x, *f16, *bf16;
  ref_file f;

  ref_open(&f, "optim.bin");
  x = ref_get(&f, "half/", "x");
  f16 = ref_get(&f, "half/", "f16");
  bf16 = ref_get(&f, "half/", "bf16");
  ck_assert_uint_eq(x->n, f16->n);
  ck_assert_uint_eq(x->n, bf16->n);
  ck_assert_uint_gt(x->n, 4000);
  for (size_t i = 0; i < x->n; i++) {
    EXPECT(td_f32_to_f16(x->data[i]) == (uint16_t)f16->data[i],
                  "fp16(%a): %04x, numpy %04x", (double)x->data[i], td_f32_to_f16(x->data[i]),
                  (unsigned)f16->data[i]);
    EXPECT(td_f32_to_bf16(x->data[i]) == (uint16_t)bf16->data[i],
                  "bf16(%a): %04x, PyTorch %04x", (double)x->data[i],
                  td_f32_to_bf16(x->data[i]), (unsigned)bf16->data[i]);
  }
  ref_close(&f);
}
END_TEST

int main(void) {
  Suite *s = suite_create("half");
  TCase *tc = tcase_create("convert");
  SRunner *sr;
  int failed;

  tcase_add_loop_test(tc, test_every_pattern, 0, 2);
  tcase_add_loop_test(tc, test_random_floats, 0, 2);
  tcase_add_loop_test(tc, test_nan_inf_zero, 0, 2);
  tcase_add_test(tc, test_hand_values);
  tcase_add_test(tc, test_numpy_torch_table);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
