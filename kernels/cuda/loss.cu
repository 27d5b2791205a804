/* The losses on the CUDA backend: the gradient with a thread per row, the
 * sums in one thread, row after row, as the CPU backend adds them (no
 * atomics, so no split changes a bit; rows x width is small next to the
 * model).  Both call lossrow.h's row, so they compute what the CPU does. */
#include "loss.cuh"

namespace {

__global__ void loss_grad_kernel(td_loss_cfg cfg, const float *logits, const void *targets,
                                 size_t rows, size_t width, float *dlogits) {
  TD_GRID_STRIDE(r, rows) {
    td__loss_row(&cfg, logits + r * width, width, targets, r, dlogits + r * width);
  }
}

__global__ void loss_stats_kernel(td_loss_cfg cfg, const float *logits, const void *targets,
                                  size_t rows, size_t width, float *stats, float *extra) {
  float loss = stats[0], correct = stats[1];
  float topk = extra != nullptr ? extra[0] : 0.0f, abserr = extra != nullptr ? extra[1] : 0.0f;

  for (size_t r = 0; r < rows; r++) {
    td_loss_row row = td__loss_row(&cfg, logits + r * width, width, targets, r, nullptr);

    loss += row.loss;
    correct += row.correct;
    topk += row.topk;
    abserr += row.abserr;
  }
  stats[0] = loss;
  stats[1] = correct;
  if (extra != nullptr) {
    extra[0] = topk;
    extra[1] = abserr;
  }
}

} // namespace

void td__cuda_loss(td_backend *be, const td_loss_cfg *cfg, const float *logits,
                   const void *targets, size_t rows, size_t width, float *dlogits,
                   float *stats, float *extra) {
  if (dlogits != nullptr) {
    loss_grad_kernel<<<td_cuda_blocks(rows), kTdThreads, 0, td_cuda(be)->stream>>>(
        *cfg, logits, targets, rows, width, dlogits);
    TD_CU_CHECK_LAUNCH(be);
  }
  loss_stats_kernel<<<1, 1, 0, td_cuda(be)->stream>>>(*cfg, logits, targets, rows, width, stats,
                                                      extra);
  TD_CU_CHECK_LAUNCH(be);
}
