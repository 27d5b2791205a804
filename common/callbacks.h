/* Callbacks at an epoch's end, on the validation split's numbers: early
 * stopping, keeping the best model, and reducing the learning rate on a
 * plateau, with Keras' semantics (EarlyStopping, ModelCheckpoint with
 * save_best_only, ReduceLROnPlateau; mode from the metric: a loss is
 * minimised, an accuracy maximised).
 *
 * Pure: td_callbacks_epoch_end takes the state and one epoch's numbers and
 * returns what to do; the worker does it (stops, writes the best model,
 * scales the rate).  The state is all a checkpoint keeps of them, so a
 * resumed job makes the same decisions; the numbers it sees are bit for
 * bit those of a run that was never re-planned (issue 14), so a re-plan
 * changes no decision either.
 *
 * Where this differs from Keras: no baseline, start_from_epoch or
 * restore_best_weights (keep_best writes the best model to its own file
 * instead); ReduceLROnPlateau's factor multiplies the job's schedule
 * (whatever shape it has) rather than setting a constant rate, and min_lr
 * bounds the schedule's base rate times the factor (optimizer.lr x factor),
 * not the rate of the step at hand.
 */
#ifndef TD_CALLBACKS_H
#define TD_CALLBACKS_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
  TD_MONITOR_VAL_LOSS = 0,
  TD_MONITOR_VAL_ACCURACY,
  TD_MONITOR_VAL_TOP_K,    /* val_top_k: top-k accuracy (train.top_k) */
  TD_MONITOR_VAL_MAE,      /* val_mae: mean absolute error (regression) */
  TD_MONITOR__COUNT
} td_monitor;

typedef struct td_cb_early_stop {
  int enabled;
  td_monitor monitor; /* val_loss */
  uint32_t patience;  /* epochs without improvement before it stops; 0 */
  float min_delta;    /* an improvement is by more than this; 0 */
} td_cb_early_stop;

typedef struct td_cb_keep_best {
  int enabled;
  td_monitor monitor; /* val_loss */
} td_cb_keep_best;

typedef struct td_cb_plateau {
  int enabled;
  td_monitor monitor; /* val_loss */
  float factor;       /* the rate is multiplied by it, in (0, 1); 0.1 */
  uint32_t patience;  /* epochs without improvement before it does; 10 */
  float min_delta;    /* 1e-4 */
  uint32_t cooldown;  /* epochs after a reduction before counting again; 0 */
  float min_lr;       /* the base rate times the factor stays at least this; 0 */
} td_cb_plateau;

typedef struct td_callbacks {
  td_cb_early_stop early_stop;
  td_cb_keep_best keep_best;
  td_cb_plateau plateau;
} td_callbacks;

/* What the callbacks keep between epochs.  A best of +-inf (by the mode)
 * means none seen yet: td_callbacks_init. */
typedef struct td_cb_state {
  uint32_t epoch;        /* the last epoch judged (1-based); 0 none */
  double es_best;        /* early stopping's best value */
  uint32_t es_wait;      /* its epochs without improvement */
  double kb_best;        /* keep_best's best value */
  uint32_t kb_epoch;     /* the epoch (1-based) the best model is from; 0 none */
  double rp_best;        /* reduce-on-plateau's best value */
  uint32_t rp_wait;
  uint32_t rp_cooldown;  /* epochs of cooldown left */
  double lr_factor;      /* on the schedule's rate; 1 until a reduction */
} td_cb_state;

/* One epoch's decisions. */
typedef struct td_cb_decision {
  bool stop;       /* early stopping: end the job now, as succeeded */
  bool save_best;  /* keep_best: this epoch's model is the best so far */
  bool lr_reduced; /* state->lr_factor is lower from now on */
} td_cb_decision;

/* Whether any callback is on (they all need a validation split). */
bool td_callbacks_any(const td_callbacks *c);
/* The state before the first epoch. */
void td_callbacks_init(const td_callbacks *c, td_cb_state *st);
/* After epoch (1-based) with the validation split's loss and accuracy.
 * base_lr is the optimiser's rate (optimizer.lr), for min_lr.  An epoch
 * already judged changes nothing and decides nothing new, but says again
 * whether early stopping ended the job there: a job resumed from a
 * checkpoint at an epoch's end sees that epoch's validation again. */
void td_callbacks_epoch_end(const td_callbacks *c, td_cb_state *st, uint32_t epoch,
                            double val_loss, double val_accuracy, double base_lr,
                            td_cb_decision *out);
/* The same with every monitored value, by td_monitor (one the job does not
 * measure is NaN, which never improves). */
void td_callbacks_epoch_end_all(const td_callbacks *c, td_cb_state *st, uint32_t epoch,
                                const double v[TD_MONITOR__COUNT], double base_lr,
                                td_cb_decision *out);

const char *td_monitor_name(td_monitor m);

#endif
