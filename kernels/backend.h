/* Compute backends: the only way the training code allocates device memory
 * and runs maths.
 *
 * A backend is a vtable of ops behind an opaque handle (kernels/backend_impl.h
 * holds the table; kernels/cpu is the reference every other backend is
 * checked against).  Pointers passed to ops are device addresses from
 * td_backend_alloc (host memory on the CPU backend); matrices are row-major
 * fp32.  Ops are asynchronous and return nothing: a backend latches its first
 * failure and td_backend_sync() reports it, so the training step checks once
 * per step instead of after every launch.
 *
 * Memory: every allocation goes through td_backend_alloc, which enforces the
 * byte budget the backend was created with (the device's VRAM budget given to
 * the worker) and tracks current and peak bytes.
 */
#ifndef TD_BACKEND_H
#define TD_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "devprobe.h"
#include "dtype.h"
#include "half.h"
#include "lossrow.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TD_BUDGET_UNLIMITED UINT64_MAX

typedef struct td_backend td_backend;

typedef enum { TD_BACKEND_CPU = 0, TD_BACKEND_CUDA } td_backend_kind;

/* One device allocation.  An empty buffer (bytes 0, ptr NULL) is valid. */
typedef struct td_buf {
  void *ptr;
  uint64_t bytes;
} td_buf;

typedef struct td_mem_stats {
  uint64_t budget;    /* bytes td_backend_alloc may hand out */
  uint64_t used;      /* bytes allocated now */
  uint64_t peak;      /* most bytes allocated at once */
  uint64_t overhead;  /* per-process bytes outside the allocator (0 on the CPU) */
  uint64_t oom_asked; /* the last TD_EOOM: bytes asked for ... */
  uint64_t oom_free;  /* ... and bytes that were free then */
} td_mem_stats;

/* Open a backend for a device name: "cpu0".."cpuN" (simulated devices on the
 * host) or "cudaN".  TD_EINVAL for a name that is neither; TD_EBACKEND if the
 * device cannot be used (no such GPU, or a traind built without the CUDA
 * backend); TD_ENOMEM.  On failure a one-line reason goes to err (may be
 * NULL).  budget: TD_BUDGET_UNLIMITED for no limit. */
int td_backend_create(const char *device, uint64_t budget, td_backend **out,
                      char *err, size_t errlen);
/* Frees the backend; buffers must have been freed before.  Accepts NULL. */
void td_backend_destroy(td_backend *be);

td_backend_kind td_backend_get_kind(const td_backend *be);
const char *td_backend_device(const td_backend *be); /* "cpu0" */

/* Allocate bytes (zeroed).  TD_EOOM when the budget (or the device) has not
 * enough free: td_backend_mem() then says what was asked and what was free.
 * Allocating 0 bytes gives an empty buffer. */
int td_backend_alloc(td_backend *be, uint64_t bytes, td_buf *out);
/* Free and empty a buffer; an empty one is fine. */
void td_backend_free(td_backend *be, td_buf *buf);
void td_backend_mem(const td_backend *be, td_mem_stats *out);
/* Change the budget (the daemon lowers it under pressure).  It may go below
 * what is allocated now: then every allocation fails until enough is freed. */
void td_backend_set_budget(td_backend *be, uint64_t budget);
/* Testing (a job's memory.fail_alloc): the nth memory request from now fails
 * with TD_EOOM as if the device were full, once.  Requests are allocations
 * and ops (on a GPU any op may need transient memory: cuBLAS workspaces);
 * an op that fails does nothing.  0 disarms. */
void td_backend_inject_oom(td_backend *be, uint64_t nth);
/* The failure latched since the last sync, without waiting (0 if none):
 * a step checks it before the optimiser update, so a failed step never
 * touches the weights. */
int td_backend_status(const td_backend *be);

/* Host <-> device copies; download waits for the ops queued before it. */
void td_backend_upload(td_backend *be, void *dst, const void *src, size_t bytes);
void td_backend_download(td_backend *be, void *dst, const void *src, size_t bytes);
/* Wait for queued ops; return the first failure latched since the last sync
 * (TD_EOOM, TD_EBACKEND; TD_ECUDA, a dead context, wins over any earlier
 * one and stays latched for good) or 0. */
int td_backend_sync(td_backend *be);
/* The message of the last latched failure ("" if none). */
const char *td_backend_error(const td_backend *be);

/* Determinism.  Every op gives the same bits for the same inputs whatever
 * the number of threads (the CPU backend cuts its work into tiles of a fixed
 * size, never into one piece per thread), and an op over the rows of a
 * batch gives each row, and each sum over rows, the same bits however the
 * batch is cut into calls, as long as every call starts on a multiple of
 * TD_BLOCK_ROWS rows from the batch's first: products run a block of
 * TD_BLOCK_ROWS rows at a time (the batch's last block may be shorter), and
 * a sum over rows is either a chain over the rows in order (bias and norm
 * gradients, the loss: beta 0 starts it, beta 1 goes on with it) or, for
 * the weight gradients of products, each block's sum added to the total in
 * block order.  So gradient accumulation over
 * micro-batches that are whole numbers of blocks gives the whole batch's
 * gradient to the bit (BatchNorm aside: its statistics are the call's).
 * The plan chooser keeps micro-batches whole blocks where the budget lets
 * it (td_plan.bit_identical; common/plan.h's TD_PLAN_BLOCK_ROWS is this
 * number, which tests/unit/test_splits.c checks). */
#define TD_BLOCK_ROWS 16

/* C[m,n] = alpha * op(A)[m,k] op(B)[k,n] + beta * C; lda/ldb/ldc are the row
 * strides of A, B, C as stored.  beta 0 ignores C's old contents.  Each
 * element's bits depend on m, n and k (not on the thread count): callers
 * that need a row's result not to depend on the call use the dense ops. */
void td_backend_sgemm(td_backend *be, bool trans_a, bool trans_b, int m, int n, int k,
                      float alpha, const float *a, int lda, const float *b, int ldb,
                      float beta, float *c, int ldc);

void td_backend_fill(td_backend *be, float *x, size_t n, float value);
/* y[r, c] += bias[c] */
void td_backend_bias_add(td_backend *be, float *y, const float *bias, size_t rows,
                         size_t cols);
/* db[c] = beta * db[c] + sum_r dy[r, c]  (beta 0 ignores db's old contents),
 * the rows added one after another in order (see above) */
void td_backend_bias_grad(td_backend *be, const float *dy, size_t rows, size_t cols,
                          float beta, float *db);
/* y = max(x, 0); x == y is fine. */
void td_backend_relu_fwd(td_backend *be, const float *x, float *y, size_t n);
/* dx = y > 0 ? dy : 0, with y the ReLU's output; dy == dx is fine. */
void td_backend_relu_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                         size_t n);
/* y = (x / 255 - mean) / std */
void td_backend_normalize_u8(td_backend *be, const uint8_t *x, float *y, size_t n,
                             float mean, float std);
/* Softmax cross-entropy over rows of logits[rows, classes] with int32 labels
 * (each in 0..classes-1; the caller checks).  Adds each row's loss in turn to
 * stats[0] (an fp32 chain, so a split does not change it) and the number of rows
 * whose first arg-max is the label to stats[1].  If
 * dlogits is not NULL it gets (softmax - onehot) * grad_scale. */
void td_backend_softmax_xent(td_backend *be, const float *logits, const int32_t *labels,
                             size_t rows, size_t classes, float grad_scale,
                             float *dlogits, float *stats);

/* The loss cfg->kind over rows of logits[rows, width] against targets (int32
 * class ids, or float [rows, width]: lossrow.h), row after row: each row's
 * loss is added in turn to stats[0] and its correct flag to stats[1] (fp32
 * chains, so a split does not change them); extra (NULL: not wanted) gets
 * the top-k hits at [0] and the rows' mean absolute errors at [1], chained
 * the same way.  dlogits (NULL: forward only) gets the gradient times
 * cfg->grad_scale. */
void td_backend_loss(td_backend *be, const td_loss_cfg *cfg, const float *logits,
                     const void *targets, size_t rows, size_t width, float *dlogits,
                     float *stats, float *extra);

/* PyTorch's Adam (weight decay added to the gradient, not AdamW); step is the
 * 1-based update count, for the bias corrections. */
typedef struct td_adam_hparams {
  float lr, beta1, beta2, eps, weight_decay;
  uint64_t step;
} td_adam_hparams;
void td_backend_adam(td_backend *be, float *param, const float *grad, float *m, float *v,
                     size_t n, const td_adam_hparams *h);

/* PyTorch's SGD without dampening or Nesterov.  buf (the momentum buffer)
 * starts zeroed and is unused (may be NULL) when momentum is 0. */
typedef struct td_sgd_hparams {
  float lr, momentum, weight_decay;
} td_sgd_hparams;
void td_backend_sgd(td_backend *be, float *param, const float *grad, float *buf, size_t n,
                    const td_sgd_hparams *h);

/* Layers.  Activations are NCHW fp32, batch-major: sample i of a micro-batch
 * starts at i * c*h*w, so a [n, c, h, w] tensor already is the [n, c*h*w]
 * matrix a dense layer reads: Flatten is a no-op view and has no op.
 * ReLU is td_backend_relu_fwd/bwd above.  Backward ops that produce
 * parameter gradients take beta: 0 overwrites them, 1 adds to them (the
 * micro-batches of one step accumulate). */

/* Dense (nn.Linear's layout): y[n, out] = x[n, in] w[out, in]^T + b[out]; b
 * may be NULL.  The CPU backend fixes each element's order of additions
 * itself (kernels/cpu/dense.c: a row's y and dx do not depend on the call
 * at all, on any CPU); on the others they are sgemm calls of TD_BLOCK_ROWS
 * rows at a time, whose shapes, and so bits, do not depend on n. */
void td_backend_dense_fwd(td_backend *be, const float *x, const float *w, const float *b,
                          float *y, int n, int in, int out);
/* dw = beta dw + dy^T x, each block's product added in turn; db = beta db +
 * colsum(dy) (skipped when db is NULL); dx = dy w, skipped when dx is NULL
 * (nothing before the layer needs it). */
void td_backend_dense_bwd(td_backend *be, const float *x, const float *w, const float *dy,
                          float *dx, float *dw, float *db, int n, int in, int out, float beta);

/* The geometry of a 2-D convolution or pooling window over an NCHW input
 * (PyTorch's Conv2d / MaxPool2d / AvgPool2d, dilation 1, floor mode). */
typedef struct td_conv2d_desc {
  int n, c, h, w; /* input: batch, channels, height, width */
  int k;          /* output channels (conv2d; pooling keeps c and ignores k) */
  int kh, kw;     /* window */
  int sh, sw;     /* stride */
  int ph, pw;     /* zero padding on each side */
} td_conv2d_desc;

/* The output height and width of d as a convolution (pool false) or a
 * pooling window (pool true, which also needs padding <= half the window, as
 * PyTorch does).  TD_EINVAL with a reason in err (may be NULL) for sizes
 * that are not positive, a window larger than the padded input, or tensors
 * of more than INT_MAX elements; nothing is written then. */
int td_conv2d_out(const td_conv2d_desc *d, bool pool, int *oh, int *ow, char *err,
                  size_t errlen);

/* Workspace bytes td_backend_conv2d_fwd and _bwd need for d on this backend,
 * with its fixed algorithms (CPU: one sample's im2col matrix and two
 * partial weight gradients; CUDA: cuDNN's
 * implicit-precomputed GEMM forward and its deterministic backward
 * algorithms, the largest of the three).  TD_EINVAL for a bad geometry; a
 * backend error (the CUDA backend asks cuDNN) otherwise. */
int td_backend_conv2d_workspace(td_backend *be, const td_conv2d_desc *d, uint64_t *bytes);
/* The CPU backend's figure without a backend, for the planner; 0 for a bad
 * geometry. */
uint64_t td_conv2d_workspace_cpu(const td_conv2d_desc *d);

/* y[n, k, oh, ow] = b[k] + sum over c, i, j of
 *   w[k, c, i, j] x[n, c, oh*sh - ph + i, ow*sw - pw + j]   (x 0 outside)
 * b may be NULL.  work: at least td_backend_conv2d_workspace bytes; a bad
 * geometry or a short workspace latches TD_EINVAL and runs nothing. */
void td_backend_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, const float *x,
                           const float *w, const float *b, float *y, void *work,
                           uint64_t work_bytes);
/* From dy[n, k, oh, ow]: dw = beta dw + dL/dw; db = beta db + dL/db (skipped
 * when db is NULL); dx = dL/dx (skipped when dx is NULL).  dw and db are
 * sums over blocks of TD_BLOCK_ROWS samples folded in order. */
void td_backend_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, const float *x,
                           const float *w, const float *dy, float *dx, float *dw, float *db,
                           float beta, void *work, uint64_t work_bytes);

typedef enum {
  TD_POOL_MAX = 0,
  TD_POOL_AVG,          /* padding counts toward the divisor (PyTorch's default) */
  TD_POOL_AVG_EXCL_PAD, /* count_include_pad=False */
} td_pool_mode;

/* y[n, c, oh, ow]: the max or mean of each window of x; padding never wins a
 * max.  A bad geometry (td_conv2d_out with pool true) latches TD_EINVAL. */
void td_backend_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d,
                           const float *x, float *y);
/* dx from dy, given the forward's x and y.  Max pooling routes each window's
 * gradient to its arg-max, found again from x and y (no index tensor to
 * keep); on a tie which element gets it is the backend's choice. */
void td_backend_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d,
                           const float *x, const float *y, const float *dy, float *dx);

/* GELU: exact x * Phi(x) with erf (PyTorch's default), or the tanh
 * approximation (approximate='tanh'). */
typedef enum { TD_GELU_ERF = 0, TD_GELU_TANH } td_gelu_kind;
void td_backend_gelu_fwd(td_backend *be, td_gelu_kind kind, const float *x, float *y,
                         size_t n);
/* dx = dy * gelu'(x), x the forward's input; dy == dx is fine. */
void td_backend_gelu_bwd(td_backend *be, td_gelu_kind kind, const float *x, const float *dy,
                         float *dx, size_t n);

/* What a dropout mask is keyed by.  Element e of batch sample s is dropped
 * by a hash of (seed, layer, step, s, e) alone, never by call order, so a
 * sample gets the same mask however the batch is cut into micro-batches. */
typedef struct td_dropout_key {
  uint64_t seed;   /* the job's seed */
  uint32_t layer;  /* the layer's index: each dropout layer draws its own mask */
  uint64_t step;   /* the optimiser step */
  uint64_t sample; /* index in the step's batch of the call's first row */
} td_dropout_key;
/* Training-mode dropout over x[rows, cols]: y = x * keep / (1 - p), each
 * element dropped with probability p (0 <= p <= 1; 1 drops all).  The op is
 * its own backward: called on dy with the same key it gives dx.  x == y is
 * fine.  In evaluation dropout is the identity: do not call it. */
void td_backend_dropout(td_backend *be, const float *x, float *y, size_t rows, size_t cols,
                        float p, const td_dropout_key *key);

/* BatchNorm2d over x[n, c, hw] with gamma, beta [c].  Training: normalises
 * with the batch's statistics (biased variance), keeps them for the backward
 * pass in save_mean, save_invstd [c] (1 / sqrt(var + eps)), and moves
 * running_mean, running_var [c] toward them by momentum, the variance
 * unbiased (PyTorch's rule: r = (1 - momentum) r + momentum b).  Evaluation
 * (training false): normalises with the running statistics, save_* unused. */
typedef struct td_batchnorm_desc {
  int n, c, hw;
  float eps, momentum; /* PyTorch: 1e-5, 0.1 */
} td_batchnorm_desc;
void td_backend_batchnorm2d_fwd(td_backend *be, const td_batchnorm_desc *d, bool training,
                                const float *x, float *y, const float *gamma,
                                const float *beta, float *running_mean, float *running_var,
                                float *save_mean, float *save_invstd);
/* The backward of a training forward: dx (skipped when NULL), and dgamma =
 * beta dgamma + sum(dy xhat), dbeta = beta dbeta + sum(dy) per channel.  The
 * statistics are the call's: a batch cut into micro-batches normalises each
 * with its own, as PyTorch does under gradient accumulation. */
void td_backend_batchnorm2d_bwd(td_backend *be, const td_batchnorm_desc *d, const float *x,
                                const float *dy, float *dx, const float *gamma,
                                const float *save_mean, const float *save_invstd, float beta,
                                float *dgamma, float *dbeta);

/* LayerNorm over the last dims, seen as cols: each row of x[rows, cols] is
 * normalised with its own mean and biased variance, then y = xhat * gamma +
 * beta (gamma, beta [cols]).  save_mean, save_invstd [rows] are kept for the
 * backward pass. */
void td_backend_layernorm_fwd(td_backend *be, const float *x, float *y, size_t rows,
                              size_t cols, const float *gamma, const float *beta, float eps,
                              float *save_mean, float *save_invstd);
/* dx (skipped when NULL); dgamma = beta dgamma + sum over rows of dy xhat;
 * dbeta likewise of dy; both a chain over the rows in order. */
void td_backend_layernorm_bwd(td_backend *be, const float *x, const float *dy, float *dx,
                              size_t rows, size_t cols, const float *gamma,
                              const float *save_mean, const float *save_invstd, float beta,
                              float *dgamma, float *dbeta);

/* Sigmoid and tanh, element-wise; the backward op reads the output y:
 * dx = dy y (1 - y), dy (1 - y^2).  x == y and dy == dx are fine. */
typedef enum { TD_ACT_SIGMOID = 0, TD_ACT_TANH } td_act_kind;
void td_backend_act_fwd(td_backend *be, td_act_kind kind, const float *x, float *y, size_t n);
void td_backend_act_bwd(td_backend *be, td_act_kind kind, const float *y, const float *dy,
                        float *dx, size_t n);

/* x seen as [outer, dim, inner]: softmax along dim, for each (outer, inner)
 * (PyTorch's Softmax(dim=1) on [outer, dim, inner]: inner 1 for rows of
 * features, H*W for the channels of each pixel).  The backward op reads y:
 * dx = y (dy - sum over dim of dy y).  x == y and dy == dx are fine. */
void td_backend_softmax_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t dim,
                            size_t inner);
void td_backend_softmax_bwd(td_backend *be, const float *y, const float *dy, float *dx,
                            size_t outer, size_t dim, size_t inner);

/* x seen as [outer, count, inner]: y[outer, inner] = the mean over count (global
 * average pooling: [n*C, H*W, 1] for planes, [n, T, D] for sequences), each
 * a sum in order divided by count; dx = dy / count over the same. */
void td_backend_mean_fwd(td_backend *be, const float *x, float *y, size_t outer, size_t count,
                         size_t inner);
void td_backend_mean_bwd(td_backend *be, const float *dy, float *dx, size_t outer,
                         size_t count, size_t inner);

/* A 1-D convolution over sequences, channels last (the project's [T, D]
 * layout): x [n, l, c] -> y [n, ol, k] with
 *   y[s, o, f] = b[f] + sum over ci, j of w[f, ci, j] x[s, o*stride - pad + j, ci]
 * (x 0 outside), w in nn.Conv1d's layout [k, c, kw].  Compositions of
 * sgemm and the column ops, not ops of their own: a block of TD_BLOCK_ROWS
 * samples is unrolled into the workspace ([rows*ol, c*kw]) and multiplied
 * at a time, so the bits of a row, and of each block's weight gradient,
 * do not depend on how the batch is cut (dense's rule), on any backend. */
typedef struct td_conv1d_desc {
  int n, l, c;   /* input: samples, positions, channels */
  int k;         /* output channels */
  int kw;        /* window */
  int stride, pad;
} td_conv1d_desc;

/* The output length of d; TD_EINVAL with a reason in err (may be NULL) for
 * sizes that are not positive, a window longer than the padded input, or
 * a block's columns of more than INT_MAX elements; nothing written then. */
int td_conv1d_out(const td_conv1d_desc *d, int *ol, char *err, size_t errlen);
/* Workspace bytes the conv1d ops need for d (one block's columns), the
 * same on every backend; 0 for a bad geometry. */
uint64_t td_conv1d_workspace(const td_conv1d_desc *d);
/* b may be NULL.  A bad geometry or a short workspace latches TD_EINVAL. */
void td_backend_conv1d_fwd(td_backend *be, const td_conv1d_desc *d, const float *x,
                           const float *w, const float *b, float *y, void *work,
                           uint64_t work_bytes);
/* dw = beta dw + each block's dy^T cols added in block order; db = beta db
 * + colsum(dy), a chain over the rows (skipped when db is NULL); dx (skipped
 * when NULL): each input element the sum of its windows' column gradients,
 * in window order. */
void td_backend_conv1d_bwd(td_backend *be, const td_conv1d_desc *d, const float *x,
                           const float *w, const float *dy, float *dx, float *dw, float *db,
                           float beta, void *work, uint64_t work_bytes);
/* Model graphs (add, concat, and a layer's output that feeds several).
 * y = a + b element-wise; y may be a or b.  A sum of more is a chain of
 * these in input order. */
void td_backend_add(td_backend *be, const float *a, const float *b, float *y, size_t n);
/* For r < rows, c < cols: dst[r * dst_ld + c] = src[r * src_ld + c] (beta
 * 0: dst's old contents ignored), or += it (beta 1).  concat's columns in
 * and out, and the gradients a fan-out sums.  The ranges must not overlap. */
void td_backend_copy2d(td_backend *be, const float *src, size_t src_ld, float *dst,
                       size_t dst_ld, size_t rows, size_t cols, float beta);
/* Sequences: a sample is [T, D], T positions of D features (common/jobspec.h);
 * ops that act per position see n * T rows.  The parameter gradients keep
 * the determinism above: a sum over rows is a chain in row order, or the
 * products of dense_bwd, so a micro-batch of whole TD_BLOCK_ROWS-sample
 * blocks gives the whole batch's bits. */

/* nn.Embedding: y[r, :] = w[ids[r], :] for the rows of ids, token ids held
 * exactly as floats, w [vocab, dim].  The caller checks the ids (the model
 * refuses a sample with one that is not an integer in [0, vocab)); such an
 * id gives a row of zeros, never a read outside w. */
void td_backend_embedding_fwd(td_backend *be, const float *ids, const float *w, float *y,
                              size_t rows, size_t vocab, size_t dim);
/* dw = beta dw + the rows of dy added into the rows of their ids: each
 * element of dw a chain over the rows in order (no atomics), so the bits
 * do not depend on how the rows were cut into calls.  Ids outside [0,
 * vocab) add nothing. */
void td_backend_embedding_bwd(td_backend *be, const float *ids, const float *dy, float *dw,
                              size_t rows, size_t vocab, size_t dim, float beta);
/* y[r, c] = x[r, c] + b[c] (a learned positional embedding over [n, T*D]);
 * x == y is fine.  Its backward is td_backend_bias_grad. */
void td_backend_add_rows(td_backend *be, const float *x, const float *b, float *y, size_t rows,
                         size_t cols);

/* Multi-head self-attention over n sequences [t, d] as nn.MultiheadAttention
 * computes it (batch_first, no dropout): qkv = x in_w^T + in_b, [t, 3d]
 * holding Q, K, V; each head h takes features [h dh, (h + 1) dh) of each, dh
 * = d / heads; p_h = softmax(Q_h K_h^T / sqrt(dh)), with causal set a query
 * seeing only the positions up to its own; o_h = p_h V_h, the heads side by
 * side in o [t, d]; y = o out_w^T + out_b.  w is in_w [3d, d] then out_w
 * [d, d], b in_b [3d] then out_b [d]. */
typedef struct td_attention_desc {
  int n, t, d, heads;
  bool causal;
} td_attention_desc;
/* What the forward op keeps for the backward op: qkv [n t, 3d], p [n,
 * heads, t, t] and o [n t, d].  The projections are dense ops (blocks of
 * TD_BLOCK_ROWS rows); the rest runs a (sample, head) at a time. */
void td_backend_attention_fwd(td_backend *be, const td_attention_desc *a, const float *x,
                              const float *w, const float *b, float *qkv, float *p, float *o,
                              float *y);
/* From dy [n t, d] and what the forward op kept: dw = beta dw + the
 * projections' weight gradients, db likewise, dx (skipped when NULL).
 * Scratch: dqkv [n t, 3d], dout [n t, d], dp [n, t, t]. */
void td_backend_attention_bwd(td_backend *be, const td_attention_desc *a, const float *x,
                              const float *w, const float *qkv, const float *p,
                              const float *o, const float *dy, float *dx, float *dw, float *db,
                              float beta, float *dqkv, float *dout, float *dp);

/* td_backend_softmax_xent with label smoothing s in [0, 1) (PyTorch's
 * CrossEntropyLoss(label_smoothing=s)): the target is (1 - s) onehot + s /
 * classes, the loss added to stats[0] is -sum target * log softmax and the
 * gradient (softmax - target) * grad_scale.  s 0 is td_backend_softmax_xent. */
void td_backend_softmax_xent_smooth(td_backend *be, const float *logits,
                                    const int32_t *labels, size_t rows, size_t classes,
                                    float smoothing, float grad_scale, float *dlogits,
                                    float *stats);

/* Optimisers, gradient clipping and the loss scaler's ops.  Each matches
 * torch.optim (1.13) step for step; lr comes per call, so a schedule
 * (common/schedule.h) just passes lr(step). */

/* PyTorch's SGD in full (torch.optim.SGD): d = g + weight_decay p; with
 * momentum, buf = d on step 1 and momentum buf + (1 - dampening) d after;
 * then d = nesterov ? d + momentum buf : buf; p -= lr d.  buf is unused (may
 * be NULL) when momentum is 0.  Nesterov needs momentum > 0 and dampening 0
 * (PyTorch refuses it otherwise; here it latches TD_EINVAL). */
typedef struct td_sgdm_hparams {
  float lr, momentum, dampening, weight_decay;
  bool nesterov;
  uint64_t step; /* 1-based update count: step 1 starts the momentum buffer */
} td_sgdm_hparams;
void td_backend_sgd_momentum(td_backend *be, float *param, const float *grad, float *buf,
                             size_t n, const td_sgdm_hparams *h);

/* PyTorch's AdamW: decoupled weight decay, p *= 1 - lr weight_decay, then
 * Adam's update without weight decay in the gradient. */
void td_backend_adamw(td_backend *be, float *param, const float *grad, float *m, float *v,
                      size_t n, const td_adam_hparams *h);

/* acc[0] += the sum of x[i]^2 (a device float: the result stays there). */
void td_backend_sumsq(td_backend *be, const float *x, size_t n, float *acc);
/* From norm[0], a sum of squares: norm[1] = min(1, max_norm / (sqrt(norm[0])
 * + 1e-6)), the factor clip_grad_norm_ multiplies the gradients by. */
void td_backend_clip_coef(td_backend *be, float *norm, float max_norm);
/* x[i] *= alpha * coef[0]; coef NULL is 1 (then alpha alone: unscaling). */
void td_backend_scale(td_backend *be, float *x, size_t n, float alpha, const float *coef);
/* flag[0] = 1 if any x[i] is inf or NaN; left as it was otherwise. */
void td_backend_check_finite(td_backend *be, const float *x, size_t n, float *flag);

/* torch.nn.utils.clip_grad_norm_(grads, max_norm) over count device tensors
 * (xs[i] of ns[i] floats; the lists are host memory).  norm is 2 device
 * floats: [0] the sum of squares of all of them (the total norm's square),
 * [1] the factor they were multiplied by.  Composed of the ops above. */
void td_backend_clip_grad_norm(td_backend *be, float *const *xs, const size_t *ns,
                               size_t count, float max_norm, float *norm);

/* Half-precision storage (common/half.h): y = x rounded to fp16 or bf16 with
 * the GPU's conversion, bit for bit; and back, exactly. */
void td_backend_to_half(td_backend *be, td_half_kind kind, const float *x, uint16_t *y,
                        size_t n);
void td_backend_from_half(td_backend *be, td_half_kind kind, const uint16_t *x, float *y,
                          size_t n);
/* x = x rounded to fp16 or bf16 and back, in place: an fp32 tensor that holds
 * exactly what a half-precision one would (values past the format's range
 * become inf, as on a GPU), for running the mixed-precision logic on fp32
 * buffers. */
void td_backend_round_half(td_backend *be, td_half_kind kind, float *x, size_t n);

/* OpenBLAS 0.3.21 does not recognise some newer x86 CPUs (Sapphire Rapids)
 * and falls back to its Prescott kernels, about 3x slower.  This names the
 * OPENBLAS_CORETYPE this CPU should use, or NULL if the detection is fine.
 * The value only takes effect in a process started with it in the
 * environment (OpenBLAS reads it when it loads). */
const char *td_cpu_blas_coretype_hint(void);

/* Input staging from the loader's ring, and the device facts admission
 * needs (issues #3, #4, #6). */

/* y = (x * scale - mean) / std over n samples as stored: dtype uint8, int32,
 * float16 (IEEE half, as .npy stores it) or float32, little-endian; x is a
 * device buffer of n * td_dtype_size(dtype) bytes, aligned to the element
 * size (td_backend_alloc's and the plan's offsets are).  Computed as
 * x * (scale / std) + (-mean / std) in fp32, bit for bit the same on every
 * backend.  Another dtype, or factors that are not finite (std 0), latch
 * TD_EINVAL. */
void td_backend_normalize(td_backend *be, td_dtype dtype, const void *x, float *y, size_t n,
                          float scale, float mean, float std);

/* Pinned staging.  Register a host range (the loader's shared-memory ring)
 * so that uploads from it can be asynchronous: on CUDA the range is
 * page-locked (cudaHostRegister, portable); on the CPU nothing happens.
 * TD_EINVAL for an empty range or one that overlaps a registered one,
 * TD_ETOOBIG past TD_HOST_REGIONS_MAX ranges, a backend error if the driver
 * refuses (td_backend_error() says why; nothing is latched).  Unregister
 * before unmapping the memory; TD_EINVAL for a ptr that does not start a
 * registered range; on CUDA it first waits for the copies queued from it.
 * td_backend_destroy unregisters what is left. */
#define TD_HOST_REGIONS_MAX 16
int td_backend_host_register(td_backend *be, void *ptr, size_t bytes);
int td_backend_host_unregister(td_backend *be, void *ptr);
/* Copy host src to device dst, queued behind the ops before it.  When
 * [src, src + bytes) lies in one registered range the call returns at once
 * and the copy runs later (CUDA: cudaMemcpyAsync on the backend's stream):
 * src must stay unchanged until the next td_backend_sync() (or
 * td_backend_download, which waits too), so a ring slot is released only
 * after that.  Otherwise it is td_backend_upload, and src is free again
 * when the call returns. */
void td_backend_upload_async(td_backend *be, void *dst, const void *src, size_t bytes);

/* The device's memory now: total bytes and free bytes (CUDA: cudaMemGetInfo,
 * every process's use counted; CPU: the host's RAM and MemAvailable).  On
 * failure (TD_EBACKEND, TD_ECUDA, TD_EIO) both are left untouched. */
int td_backend_device_mem(td_backend *be, uint64_t *total, uint64_t *free_bytes);

/* Probe device ("cpuN" or "cudaN") into a td_device_probe (common/devprobe.h).
 * CPU: td_host_mem.  CUDA: measured with cudaMemGetInfo around making a
 * backend the way td_backend_create does, against a helper
 * process that holds a context of its own meanwhile (a context cannot
 * measure memory before it exists).  The calling process must not have
 * used CUDA before, and keeps a CUDA context afterwards: call it in a
 * forked child that writes *out to a pipe and exits, never in traind (which
 * holds no CUDA context).  Fails as td_backend_create does, with a one-line
 * reason in err (may be NULL); TD_EBACKEND also when the GPU is in an
 * exclusive compute mode (the measure needs two processes on it). */
int td_backend_probe(const char *device, td_device_probe *out, char *err, size_t errlen);
/* Set the per-process overhead a probe measured for this backend's device:
 * td_backend_mem reports it (td_mem_stats.overhead), and plans made from
 * those stats (the model's) count it.  The allocator's budget is unchanged:
 * it covers the arenas alone. */
void td_backend_set_overhead(td_backend *be, uint64_t bytes);

#ifdef __cplusplus
}
#endif

#endif
