/* The callbacks' decisions (common/callbacks.c): tables of validation
 * sequences and what Keras' EarlyStopping, ModelCheckpoint(save_best_only)
 * and ReduceLROnPlateau decide on them, epoch by epoch. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "callbacks.h"

#define MAXE 12

/* One case: the values of the monitored metric (the other one is 0), and
 * per epoch: S stop, B best saved, R rate reduced, . nothing. */
typedef struct cb_case {
  const char *name;
  td_callbacks c;
  double base_lr;
  int n;
  double v[MAXE];
  const char *want; /* one letter group per epoch, space-separated */
  double factor;    /* lr_factor after the last epoch */
} cb_case;

#define ES(mon, pat, md) {.early_stop = {1, (mon), (pat), (md)}}
#define KB(mon) {.keep_best = {1, (mon)}}
#define RP(mon, f, pat, md, cd, mn) {.plateau = {1, (mon), (f), (pat), (md), (cd), (mn)}}
#define LOSS TD_MONITOR_VAL_LOSS
#define ACC TD_MONITOR_VAL_ACCURACY

static const cb_case cases[] = {
    /* EarlyStopping(patience=0): stops at the first epoch that is not better */
    {"es patience 0", ES(LOSS, 0, 0), 0.1, 4, {1.0, 0.9, 0.95, 0.8}, ". . S .", 1},
    /* patience 1: one epoch without improvement is forgiven, two are not */
    {"es patience 1", ES(LOSS, 1, 0), 0.1, 5, {1.0, 1.1, 0.9, 0.95, 0.96}, ". S . S S", 1},
    {"es patience 2", ES(LOSS, 2, 0), 0.1, 6, {1.0, 1.1, 0.9, 0.95, 0.96, 0.97},
     ". . . . S S", 1},
    /* equal is not better */
    {"es equal", ES(LOSS, 1, 0), 0.1, 3, {0.5, 0.5, 0.5}, ". S S", 1},
    /* min_delta: 1.0 -> 0.95 is not better by more than 0.1; 0.85 is */
    {"es min_delta", ES(LOSS, 1, 0.1), 0.1, 3, {1.0, 0.95, 0.7}, ". S .", 1},
    {"es min_delta 2", ES(LOSS, 1, 0.1), 0.1, 3, {1.0, 0.85, 0.8}, ". . S", 1},
    /* accuracy is maximised */
    {"es accuracy", ES(ACC, 1, 0), 0.1, 4, {0.5, 0.6, 0.6, 0.59}, ". . S S", 1},
    /* NaN is never an improvement; the first epoch never stops */
    {"es nan", ES(LOSS, 0, 0), 0.1, 3, {NAN, 1.0, NAN}, ". . S", 1},
    /* ModelCheckpoint(save_best_only): strictly better, no min_delta */
    {"kb loss", KB(LOSS), 0.1, 5, {1.0, 0.9, 0.9, 1.2, 0.3}, "B B . . B", 1},
    {"kb accuracy", KB(ACC), 0.1, 4, {0.1, 0.05, 0.2, NAN}, "B . B .", 1},
    /* ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0) */
    {"rp patience 2", RP(LOSS, 0.5f, 2, 0, 0, 0), 0.1, 7, {1, 1, 1, 1, 1, 0.5, 0.5},
     ". . R . R . .", 0.25},
    /* cooldown 2: the epoch after a reduction does not count.  As in Keras
     * the counter goes down before the epoch is judged, so cooldown 1
     * leaves no epoch out. */
    {"rp cooldown", RP(LOSS, 0.5f, 1, 0, 2, 0), 0.1, 6, {1, 1, 1, 1, 1, 1}, ". R . R . R",
     0.125},
    {"rp cooldown 1", RP(LOSS, 0.5f, 1, 0, 1, 0), 0.1, 4, {1, 1, 1, 1}, ". R R R", 0.125},
    /* min_lr: 0.1 -> 0.05 -> 0.04 (min_lr), then nothing more to do */
    {"rp min_lr", RP(LOSS, 0.5f, 1, 0, 0, 0.04f), 0.1, 5, {1, 1, 1, 1, 1}, ". R R . .",
     0.04 / 0.1},
    /* min_delta 1e-4 (Keras' default): a tiny improvement counts as none */
    {"rp min_delta", RP(LOSS, 0.1f, 1, 1e-4f, 0, 0), 0.1, 3, {1.0, 0.99995, 0.5}, ". R .",
     0.1},
    /* accuracy: rising is improving */
    {"rp accuracy", RP(ACC, 0.5f, 1, 0, 0, 0), 0.1, 4, {0.1, 0.2, 0.3, 0.3}, ". . . R", 0.5},
};

START_TEST(decision_tables) {
  const cb_case *k = &cases[_i];
  td_cb_state st;
  char got[64] = "", want[64];
  bool last_stop = false;

  td_callbacks_init(&k->c, &st);
  for (int e = 0; e < k->n; e++) {
    td_cb_decision d;
    double loss = k->v[e], acc = k->v[e];

    td_callbacks_epoch_end(&k->c, &st, (uint32_t)e + 1, loss, acc, k->base_lr, &d);
    if (e > 0)
      strcat(got, " ");
    if (!d.stop && !d.save_best && !d.lr_reduced)
      strcat(got, ".");
    last_stop = d.stop;
    if (d.stop)
      strcat(got, "S");
    if (d.save_best)
      strcat(got, "B");
    if (d.lr_reduced)
      strcat(got, "R");
  }
  /* the last epoch seen again (a resume at its end): its stop stands */
  {
    td_cb_state again = st;
    td_cb_decision d;

    td_callbacks_epoch_end(&k->c, &again, (uint32_t)k->n, k->v[k->n - 1], k->v[k->n - 1],
                           k->base_lr, &d);
    ck_assert_msg(d.stop == last_stop, "%s: replayed, stop %d, first %d", k->name, d.stop,
                  last_stop);
    ck_assert(!d.save_best && !d.lr_reduced);
    ck_assert(memcmp(&again, &st, sizeof(st)) == 0);
  }
  strcpy(want, k->want);
  ck_assert_msg(strcmp(got, want) == 0, "%s: got '%s', want '%s'", k->name, got, want);
  ck_assert_msg(fabs(st.lr_factor - k->factor) < 1e-6 * k->factor, /* float factors */ "%s: factor %g, want %g", k->name,
                st.lr_factor, k->factor);
}
END_TEST

/* The state is all there is: a run cut after any epoch and carried on from
 * a copy of the state decides exactly as the run that went straight on. */
START_TEST(state_resumes) {
  const td_callbacks c = {.early_stop = {1, LOSS, 2, 0.01f},
                          .keep_best = {1, ACC},
                          .plateau = {1, LOSS, 0.5f, 1, 0, 1, 0.001f}};
  const double loss[] = {2.0, 1.5, 1.49, 1.6, 1.2, 1.3, 1.3, 1.25, 1.4, 1.5};
  const double acc[] = {0.1, 0.3, 0.3, 0.2, 0.5, 0.4, 0.6, 0.6, 0.5, 0.7};
  td_cb_decision all[10];
  td_cb_state st;

  td_callbacks_init(&c, &st);
  for (int e = 0; e < 10; e++)
    td_callbacks_epoch_end(&c, &st, (uint32_t)e + 1, loss[e], acc[e], 0.1, &all[e]);
  for (int cut = 1; cut < 10; cut++) {
    td_cb_state a, b;

    td_callbacks_init(&c, &a);
    for (int e = 0; e < 10; e++) {
      td_cb_decision d;

      if (e == cut) {
        memcpy(&b, &a, sizeof(a)); /* what a checkpoint carries */
        memset(&a, 0x5A, sizeof(a));
        a = b;
      }
      td_callbacks_epoch_end(&c, &a, (uint32_t)e + 1, loss[e], acc[e], 0.1, &d);
      ck_assert_msg(memcmp(&d, &all[e], sizeof(d)) == 0, "cut %d, epoch %d", cut, e + 1);
    }
    ck_assert(memcmp(&a, &st, sizeof(st)) == 0);
  }
}
END_TEST

/* A resumed job sees the validation of the epoch its checkpoint ended
 * again: judged once, it changes nothing the second time, but a stop
 * there stands. */
START_TEST(replayed_epoch_changes_nothing) {
  const td_callbacks c = {.early_stop = {1, LOSS, 1, 0},
                          .keep_best = {1, LOSS},
                          .plateau = {1, LOSS, 0.5f, 1, 0, 0, 0}};
  td_cb_state st, before;
  td_cb_decision d;

  td_callbacks_init(&c, &st);
  td_callbacks_epoch_end(&c, &st, 1, 1.0, 0.5, 0.1, &d);
  ck_assert(d.save_best && !d.stop && !d.lr_reduced);
  td_callbacks_epoch_end(&c, &st, 2, 1.5, 0.5, 0.1, &d);
  ck_assert(d.stop && d.lr_reduced && !d.save_best);
  before = st;
  /* the stop stands, nothing else happens again */
  td_callbacks_epoch_end(&c, &st, 2, 1.5, 0.5, 0.1, &d);
  ck_assert(d.stop && !d.lr_reduced && !d.save_best);
  ck_assert(memcmp(&st, &before, sizeof(st)) == 0);
  td_callbacks_epoch_end(&c, &st, 1, 0.1, 0.5, 0.1, &d);
  ck_assert(!d.stop && !d.lr_reduced && !d.save_best);
  ck_assert(memcmp(&st, &before, sizeof(st)) == 0);
  ck_assert_uint_eq(st.epoch, 2);
  ck_assert(st.lr_factor == 0.5);
}
END_TEST

START_TEST(off_decides_nothing) {
  const td_callbacks c = {0};
  td_cb_state st;
  td_cb_decision d;

  ck_assert(!td_callbacks_any(&c));
  td_callbacks_init(&c, &st);
  for (int e = 1; e <= 5; e++) {
    td_callbacks_epoch_end(&c, &st, (uint32_t)e, 1.0, 0.5, 0.1, &d);
    ck_assert(!d.stop && !d.save_best && !d.lr_reduced);
  }
  ck_assert(st.lr_factor == 1.0);
  ck_assert_str_eq(td_monitor_name(TD_MONITOR_VAL_LOSS), "val_loss");
  ck_assert_str_eq(td_monitor_name(TD_MONITOR_VAL_ACCURACY), "val_accuracy");
  ck_assert_str_eq(td_monitor_name((td_monitor)7), "unknown");
}
END_TEST

/* The metrics beyond accuracy: a MAE falls, a top-k accuracy rises, and a
 * metric the job does not measure (NaN) never improves. */
START_TEST(mae_and_top_k_monitors) {
  td_callbacks c = {.keep_best = {.enabled = 1, .monitor = TD_MONITOR_VAL_MAE},
                    .early_stop = {.enabled = 1, .monitor = TD_MONITOR_VAL_TOP_K,
                                   .patience = 2}};
  static const double mae[] = {0.5, 0.4, 0.45, 0.3}, top[] = {0.6, 0.7, 0.65, 0.68};
  static const bool best[] = {true, true, false, true}, stop[] = {false, false, false, true};
  td_cb_state st;
  td_cb_decision d;

  td_callbacks_init(&c, &st);
  for (int e = 0; e < 4; e++) {
    const double v[TD_MONITOR__COUNT] = {[TD_MONITOR_VAL_LOSS] = 1.0,
                                         [TD_MONITOR_VAL_ACCURACY] = -1.0,
                                         [TD_MONITOR_VAL_TOP_K] = top[e],
                                         [TD_MONITOR_VAL_MAE] = mae[e]};

    td_callbacks_epoch_end_all(&c, &st, (uint32_t)e + 1, v, 0.1, &d);
    ck_assert_msg(d.save_best == best[e], "epoch %d: save_best %d", e + 1, d.save_best);
    ck_assert_msg(d.stop == stop[e], "epoch %d: stop %d", e + 1, d.stop);
  }
  ck_assert_uint_eq(st.kb_epoch, 4);
  ck_assert_str_eq(td_monitor_name(TD_MONITOR_VAL_MAE), "val_mae");
  ck_assert_str_eq(td_monitor_name(TD_MONITOR_VAL_TOP_K), "val_top_k");
  /* the old entry point: val_loss and val_accuracy only, the rest NaN */
  c.keep_best.monitor = TD_MONITOR_VAL_MAE;
  td_callbacks_init(&c, &st);
  td_callbacks_epoch_end(&c, &st, 1, 0.5, 0.5, 0.1, &d);
  ck_assert(!d.save_best);
}
END_TEST

static Suite *callbacks_suite(void) {
  Suite *s = suite_create("callbacks");
  TCase *tc = tcase_create("core");

  tcase_add_loop_test(tc, decision_tables, 0, (int)(sizeof(cases) / sizeof(cases[0])));
  tcase_add_test(tc, state_resumes);
  tcase_add_test(tc, off_decides_nothing);
  tcase_add_test(tc, replayed_epoch_changes_nothing);
  tcase_add_test(tc, mae_and_top_k_monitors);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(callbacks_suite());
  int failed;

  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
