/* The losses a job trains with (train.loss.kind), a header of its own
 * because the backends (kernels/, C and CUDA) take the kind too.
 */
#ifndef TD_LOSS_H
#define TD_LOSS_H

/* cross_entropy takes class ids (or, with train.loss.targets: soft, a
 * probability per class); the others take float targets, one per output. */
typedef enum {
  TD_LOSS_CROSS_ENTROPY = 0, /* softmax cross-entropy */
  TD_LOSS_BCE,               /* binary cross-entropy with logits, multi-label */
  TD_LOSS_MSE,               /* mean squared error, regression */
  TD_LOSS_MAE,               /* mean absolute error (L1), regression */
  TD_LOSS__COUNT
} td_loss_kind;

#endif
