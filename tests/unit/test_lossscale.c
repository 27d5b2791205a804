/* The dynamic loss scaler (common/lossscale.h) against sequences worked
 * out from torch.cuda.amp.GradScaler's update rule (_amp_update_scale_):
 * an inf/NaN step is skipped, the scale backs off and the growth tracker
 * restarts; growth_interval good steps in a row grow the scale, unless the
 * grown scale would be inf. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "error.h"
#include "lossscale.h"

/* One step of a sequence: what the gradients held, and what must follow. */
typedef struct step {
  char event;     /* 'G' finite gradients, 'I' inf or NaN */
  bool applied;
  float scale;    /* after the update */
  uint32_t good;  /* the growth tracker after it */
} step;

static void run(td_lossscale *s, const step *seq, size_t n) {
  for (size_t i = 0; i < n; i++) {
    bool applied = td_lossscale_update(s, seq[i].event == 'I');
    ck_assert_msg(applied == seq[i].applied, "step %zu (%c): applied %d", i, seq[i].event,
                  applied);
    ck_assert_msg(s->scale == seq[i].scale, "step %zu (%c): scale %g, want %g", i,
                  seq[i].event, (double)s->scale, (double)seq[i].scale);
    ck_assert_msg(s->good_steps == seq[i].good, "step %zu (%c): tracker %u, want %u", i,
                  seq[i].event, s->good_steps, seq[i].good);
  }
}

START_TEST(test_defaults) {
  td_lossscale_cfg cfg = td_lossscale_defaults();
  td_lossscale s;

  ck_assert(cfg.enabled);
  ck_assert_float_eq(cfg.init_scale, 65536.0f);
  ck_assert_float_eq(cfg.growth_factor, 2.0f);
  ck_assert_float_eq(cfg.backoff_factor, 0.5f);
  ck_assert_uint_eq(cfg.growth_interval, 2000);
  ck_assert_int_eq(td_lossscale_check(&cfg, NULL, 0), 0);
  td_lossscale_init(&s, &cfg);
  ck_assert_float_eq(td_lossscale_scale(&s), 65536.0f);
  ck_assert_float_eq(td_lossscale_inv(&s), 1.0f / 65536.0f);

  /* an overflow first: skipped, halved */
  ck_assert(!td_lossscale_update(&s, true));
  ck_assert_float_eq(s.scale, 32768.0f);
  /* 1999 good steps keep it; the 2000th doubles it */
  for (int i = 0; i < 1999; i++)
    ck_assert(td_lossscale_update(&s, false));
  ck_assert_float_eq(s.scale, 32768.0f);
  ck_assert_uint_eq(s.good_steps, 1999);
  ck_assert(td_lossscale_update(&s, false));
  ck_assert_float_eq(s.scale, 65536.0f);
  ck_assert_uint_eq(s.good_steps, 0);
  /* an overflow at 1999 restarts the count */
  for (int i = 0; i < 1999; i++)
    td_lossscale_update(&s, false);
  ck_assert(!td_lossscale_update(&s, true));
  ck_assert_float_eq(s.scale, 32768.0f);
  ck_assert_uint_eq(s.good_steps, 0);
  ck_assert_uint_eq(s.skipped, 2);
}
END_TEST

START_TEST(test_sequence) {
  /* init 1024, growth 2 every 3 good steps, backoff 0.25 */
  const td_lossscale_cfg cfg = {.enabled = true, .init_scale = 1024.0f, .growth_factor = 2.0f,
                                .backoff_factor = 0.25f, .growth_interval = 3};
  static const step seq[] = {
      {'G', true, 1024, 1},  {'G', true, 1024, 2},  {'G', true, 2048, 0},
      {'G', true, 2048, 1},  {'I', false, 512, 0},  {'I', false, 128, 0},
      {'G', true, 128, 1},   {'G', true, 128, 2},   {'I', false, 32, 0},
      {'G', true, 32, 1},    {'G', true, 32, 2},    {'G', true, 64, 0},
      {'G', true, 64, 1},    {'G', true, 64, 2},    {'G', true, 128, 0},
  };
  td_lossscale s;

  td_lossscale_init(&s, &cfg);
  run(&s, seq, sizeof(seq) / sizeof(seq[0]));
  ck_assert_uint_eq(s.skipped, 3);
}
END_TEST

START_TEST(test_no_growth_to_inf) {
  /* GradScaler keeps the scale when growing it would overflow float */
  const td_lossscale_cfg cfg = {.enabled = true, .init_scale = FLT_MAX / 2.0f,
                                .growth_factor = 8.0f, .backoff_factor = 0.5f,
                                .growth_interval = 1};
  static const step seq[] = {
      {'G', true, FLT_MAX / 2.0f, 0},
      {'I', false, FLT_MAX / 4.0f, 0},
      {'G', true, FLT_MAX / 4.0f, 0},
  };
  td_lossscale s;

  td_lossscale_init(&s, &cfg);
  run(&s, seq, sizeof(seq) / sizeof(seq[0]));
}
END_TEST

START_TEST(test_disabled) {
  td_lossscale_cfg cfg = td_lossscale_defaults();
  td_lossscale s;

  cfg.enabled = false;
  cfg.init_scale = 0.0f; /* not read when disabled */
  ck_assert_int_eq(td_lossscale_check(&cfg, NULL, 0), 0);
  td_lossscale_init(&s, &cfg);
  ck_assert_float_eq(td_lossscale_scale(&s), 1.0f);
  ck_assert_float_eq(td_lossscale_inv(&s), 1.0f);
  ck_assert(td_lossscale_update(&s, true)); /* every step is taken */
  ck_assert(td_lossscale_update(&s, false));
  ck_assert_float_eq(td_lossscale_scale(&s), 1.0f);
  ck_assert_uint_eq(s.skipped, 0);
}
END_TEST

START_TEST(test_check_refuses) {
  static const struct {
    td_lossscale_cfg cfg;
    const char *says;
  } bad[] = {
      {{true, 0.0f, 2.0f, 0.5f, 2000}, "init_scale"},
      {{true, INFINITY, 2.0f, 0.5f, 2000}, "init_scale"},
      {{true, NAN, 2.0f, 0.5f, 2000}, "init_scale"},
      {{true, 65536.0f, 1.0f, 0.5f, 2000}, "growth_factor"},
      {{true, 65536.0f, NAN, 0.5f, 2000}, "growth_factor"},
      {{true, 65536.0f, 2.0f, 1.0f, 2000}, "backoff_factor"},
      {{true, 65536.0f, 2.0f, 0.0f, 2000}, "backoff_factor"},
      {{true, 65536.0f, 2.0f, 0.5f, 0}, "growth_interval"},
  };
  char err[128];

  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    ck_assert_int_eq(td_lossscale_check(&bad[i].cfg, err, sizeof(err)), TD_EINVAL);
    ck_assert_msg(strstr(err, bad[i].says) != NULL, "case %zu: '%s'", i, err);
  }
}
END_TEST

START_TEST(test_restore) {
  td_lossscale_cfg cfg = td_lossscale_defaults();
  td_lossscale s, before;

  cfg.growth_interval = 3;
  td_lossscale_init(&s, &cfg);
  ck_assert_int_eq(td_lossscale_restore(&s, 512.0f, 2), 0);
  ck_assert_float_eq(s.scale, 512.0f);
  /* the next good step completes the interval the checkpoint was in */
  ck_assert(td_lossscale_update(&s, false));
  ck_assert_float_eq(s.scale, 1024.0f);
  ck_assert_uint_eq(s.good_steps, 0);

  before = s;
  ck_assert_int_eq(td_lossscale_restore(&s, 0.0f, 0), TD_EINVAL);
  ck_assert_int_eq(td_lossscale_restore(&s, NAN, 0), TD_EINVAL);
  ck_assert_int_eq(td_lossscale_restore(&s, INFINITY, 0), TD_EINVAL);
  ck_assert_int_eq(td_lossscale_restore(&s, 8.0f, 3), TD_EINVAL);
  ck_assert_mem_eq(&s, &before, sizeof(s));
}
END_TEST

int main(void) {
  Suite *s = suite_create("lossscale");
  TCase *tc = tcase_create("lossscale");
  SRunner *sr;
  int failed;

  tcase_add_test(tc, test_defaults);
  tcase_add_test(tc, test_sequence);
  tcase_add_test(tc, test_no_growth_to_inf);
  tcase_add_test(tc, test_disabled);
  tcase_add_test(tc, test_check_refuses);
  tcase_add_test(tc, test_restore);
  suite_add_tcase(s, tc);
  sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
