#include "callbacks.h"

#include <math.h>

static const char *const monitor_names[TD_MONITOR__COUNT] = {
    [TD_MONITOR_VAL_LOSS] = "val_loss", [TD_MONITOR_VAL_ACCURACY] = "val_accuracy",
    [TD_MONITOR_VAL_TOP_K] = "val_top_k", [TD_MONITOR_VAL_MAE] = "val_mae"};

const char *td_monitor_name(td_monitor m) {
  return (unsigned)m < TD_MONITOR__COUNT ? monitor_names[m] : "unknown";
}

/* Keras' mode "auto": an accuracy is maximised, a loss minimised. */
static bool maximised(td_monitor m) {
  return m == TD_MONITOR_VAL_ACCURACY || m == TD_MONITOR_VAL_TOP_K;
}

static double worst(td_monitor m) { return maximised(m) ? -INFINITY : INFINITY; }

/* Better than best by more than min_delta.  NaN never is (as numpy's
 * comparisons in Keras). */
static bool improves(td_monitor m, double v, double best, double min_delta) {
  return maximised(m) ? v > best + min_delta : v < best - min_delta;
}

bool td_callbacks_any(const td_callbacks *c) {
  return c->early_stop.enabled || c->keep_best.enabled || c->plateau.enabled;
}

void td_callbacks_init(const td_callbacks *c, td_cb_state *st) {
  *st = (td_cb_state){.es_best = worst(c->early_stop.monitor),
                      .kb_best = worst(c->keep_best.monitor),
                      .rp_best = worst(c->plateau.monitor),
                      .lr_factor = 1.0};
}

void td_callbacks_epoch_end(const td_callbacks *c, td_cb_state *st, uint32_t epoch,
                            double val_loss, double val_accuracy, double base_lr,
                            td_cb_decision *out) {
  const double v[TD_MONITOR__COUNT] = {[TD_MONITOR_VAL_LOSS] = val_loss,
                                       [TD_MONITOR_VAL_ACCURACY] = val_accuracy,
                                       [TD_MONITOR_VAL_TOP_K] = NAN, [TD_MONITOR_VAL_MAE] = NAN};

  td_callbacks_epoch_end_all(c, st, epoch, v, base_lr, out);
}

void td_callbacks_epoch_end_all(const td_callbacks *c, td_cb_state *st, uint32_t epoch,
                                const double v[TD_MONITOR__COUNT], double base_lr,
                                td_cb_decision *out) {
  *out = (td_cb_decision){0};
  if (epoch <= st->epoch) {
    /* Judged already: only whether early stopping ended the job there,
     * which is what its state after that epoch says. */
    out->stop = epoch == st->epoch && c->early_stop.enabled && st->es_wait > 0 &&
                st->es_wait >= c->early_stop.patience && epoch > 1;
    return;
  }
  st->epoch = epoch;
  if (c->keep_best.enabled) {
    const td_cb_keep_best *k = &c->keep_best;

    if (improves(k->monitor, v[k->monitor], st->kb_best, 0.0)) {
      st->kb_best = v[k->monitor];
      st->kb_epoch = epoch;
      out->save_best = true;
    }
  }
  if (c->plateau.enabled) {
    const td_cb_plateau *p = &c->plateau;

    if (st->rp_cooldown > 0) {
      st->rp_cooldown--;
      st->rp_wait = 0;
    }
    if (improves(p->monitor, v[p->monitor], st->rp_best, p->min_delta)) {
      st->rp_best = v[p->monitor];
      st->rp_wait = 0;
    } else if (st->rp_cooldown == 0 && ++st->rp_wait >= p->patience) {
      double lr = base_lr * st->lr_factor;

      /* At min_lr already, Keras leaves wait to grow: nothing more to do. */
      if (lr > (double)p->min_lr) {
        if (lr * p->factor < (double)p->min_lr)
          st->lr_factor = (double)p->min_lr / base_lr;
        else
          st->lr_factor *= p->factor;
        st->rp_cooldown = p->cooldown;
        st->rp_wait = 0;
        out->lr_reduced = true;
      }
    }
  }
  if (c->early_stop.enabled) {
    const td_cb_early_stop *e = &c->early_stop;

    st->es_wait++;
    if (improves(e->monitor, v[e->monitor], st->es_best, e->min_delta)) {
      st->es_best = v[e->monitor];
      st->es_wait = 0;
    } else if (st->es_wait >= e->patience && epoch > 1) {
      out->stop = true;
    }
  }
}
