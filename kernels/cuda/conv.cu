/* Convolution and pooling through cuDNN's legacy API.  Each geometry gets
 * fixed algorithms, the first of a short preference list (deterministic
 * ones first) that cuDNN accepts for it, so the workspace
 * td_backend_conv2d_workspace reports is the one the ops use. */
#include <string.h>

#include "conv.cuh"

namespace {

/* fp32 for now: a bf16 / fp16 variant sets its own type, and tensor-op math. */
constexpr cudnnDataType_t kType = CUDNN_DATA_FLOAT;
/* FMA math: no TF32 on Ampere and later, so fp32 matches the CPU backend. */
constexpr cudnnMathType_t kMath = CUDNN_FMA_MATH;

const cudnnConvolutionFwdAlgo_t kFwdAlgos[] = {
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
    CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
};
const cudnnConvolutionBwdDataAlgo_t kBwdDataAlgos[] = {
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
    CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, /* atomics: not bitwise deterministic */
};
const cudnnConvolutionBwdFilterAlgo_t kBwdFilterAlgos[] = {
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
    CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, /* atomics: not bitwise deterministic */
};

const float kOne = 1.0f, kZero = 0.0f;

int set_tensor(td_backend *be, cudnnTensorDescriptor_t t, int n, int c, int h, int w) {
  return TD_CU_CHECK(be, cudnnSetTensor4dDescriptor(t, CUDNN_TENSOR_NCHW, kType, n, c, h, w));
}

int set_conv(td_backend *be, const td_conv2d_desc *d, int oh, int ow) {
  td_cuda_impl *c = td_cuda(be);
  int rc;

  if ((rc = set_tensor(be, c->xdesc, d->n, d->c, d->h, d->w)) < 0 ||
      (rc = set_tensor(be, c->ydesc, d->n, d->k, oh, ow)) < 0 ||
      (rc = set_tensor(be, c->bdesc, 1, d->k, 1, 1)) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnSetFilter4dDescriptor(c->wdesc, kType, CUDNN_TENSOR_NCHW, d->k,
                                                       d->c, d->kh, d->kw))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnSetConvolution2dDescriptor(c->conv, d->ph, d->pw, d->sh,
                                                            d->sw, 1, 1,
                                                            CUDNN_CROSS_CORRELATION,
                                                            kType))) < 0)
    return rc;
  return TD_CU_CHECK(be, cudnnSetConvolutionMathType(c->conv, kMath));
}

/* The first algorithm of prefs whose workspace query succeeds; cuDNN
 * answers NOT_SUPPORTED (or BAD_PARAM) for one that cannot run the
 * geometry, and anything else is a real failure. */
template <typename Algo, size_t N, typename Query>
int first_algo(td_backend *be, const Algo (&prefs)[N], Query query, const char *what,
               Algo *algo, size_t *ws) {
  cudnnStatus_t st = CUDNN_STATUS_NOT_SUPPORTED;
  int rc;

  for (size_t i = 0; i < N; i++) {
    st = query(prefs[i], ws);
    if (st == CUDNN_STATUS_SUCCESS) {
      *algo = prefs[i];
      return 0;
    }
    int cat = CUDNN_STATUS_CATEGORY(st);
    if (cat != CUDNN_STATUS_NOT_SUPPORTED && cat != CUDNN_STATUS_BAD_PARAM)
      break;
  }
  rc = td_cu_code(st);
  td__backend_fail(be, rc, "%s: cuDNN has no %s convolution algorithm for this geometry (%s)",
                   be->device, what, cudnnGetErrorString(st));
  return rc;
}

/* Sets the descriptors for d and finds (or recalls) its algorithms. */
int conv_algos(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
               const td_cuda_conv_algos **out) {
  td_cuda_impl *c = td_cuda(be);
  td_cuda_conv_algos a;
  int rc;

  if ((rc = set_conv(be, d, oh, ow)) < 0)
    return rc;
  for (unsigned i = 0; i < c->nalgos && i < TD_CUDA_ALGO_CACHE; i++) {
    if (memcmp(&c->algos[i].d, d, sizeof(*d)) == 0) {
      *out = &c->algos[i];
      return 0;
    }
  }
  memset(&a, 0, sizeof(a));
  a.d = *d;
  auto fwd = [c](cudnnConvolutionFwdAlgo_t al, size_t *ws) {
    return cudnnGetConvolutionForwardWorkspaceSize(c->dnn, c->xdesc, c->wdesc, c->conv,
                                                   c->ydesc, al, ws);
  };
  auto bwd_data = [c](cudnnConvolutionBwdDataAlgo_t al, size_t *ws) {
    return cudnnGetConvolutionBackwardDataWorkspaceSize(c->dnn, c->wdesc, c->ydesc, c->conv,
                                                        c->xdesc, al, ws);
  };
  auto bwd_filter = [c](cudnnConvolutionBwdFilterAlgo_t al, size_t *ws) {
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(c->dnn, c->xdesc, c->ydesc, c->conv,
                                                          c->wdesc, al, ws);
  };
  if ((rc = first_algo(be, kFwdAlgos, fwd, "forward", &a.fwd, &a.ws_fwd)) < 0 ||
      (rc = first_algo(be, kBwdDataAlgos, bwd_data, "backward-data", &a.bwd_data,
                       &a.ws_bwd_data)) < 0 ||
      (rc = first_algo(be, kBwdFilterAlgos, bwd_filter, "backward-filter", &a.bwd_filter,
                       &a.ws_bwd_filter)) < 0)
    return rc;
  td_cuda_conv_algos *slot = &c->algos[c->nalgos++ % TD_CUDA_ALGO_CACHE];
  *slot = a;
  *out = slot;
  return 0;
}

/* backend.h's contract is one figure for the forward and backward ops, the
 * largest of the three algorithms' needs: a workspace sized for it serves
 * every op, and one short of it is refused by every op alike. */
size_t workspace_most(const td_cuda_conv_algos *a) {
  size_t most = a->ws_fwd;

  if (a->ws_bwd_data > most)
    most = a->ws_bwd_data;
  if (a->ws_bwd_filter > most)
    most = a->ws_bwd_filter;
  return most;
}

bool workspace_ok(td_backend *be, const char *op, uint64_t have, const td_cuda_conv_algos *a) {
  size_t need = workspace_most(a);

  if (have >= need)
    return true;
  td__backend_fail(be, TD_EINVAL, "%s: %s: workspace of %llu bytes, %llu needed", be->device,
                   op, (unsigned long long)have, (unsigned long long)need);
  return false;
}

cudnnPoolingMode_t pool_mode(td_pool_mode m) {
  switch (m) {
  case TD_POOL_AVG:
    return CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING;
  case TD_POOL_AVG_EXCL_PAD:
    return CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
  default:
    return CUDNN_POOLING_MAX_DETERMINISTIC;
  }
}

int set_pool(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh, int ow) {
  td_cuda_impl *c = td_cuda(be);
  int rc;

  if ((rc = set_tensor(be, c->xdesc, d->n, d->c, d->h, d->w)) < 0 ||
      (rc = set_tensor(be, c->ydesc, d->n, d->c, oh, ow)) < 0)
    return rc;
  return TD_CU_CHECK(be, cudnnSetPooling2dDescriptor(c->pool, pool_mode(mode),
                                                     CUDNN_NOT_PROPAGATE_NAN, d->kh, d->kw,
                                                     d->ph, d->pw, d->sh, d->sw));
}

} // namespace

int td__cuda_dnn_init(td_backend *be) {
  td_cuda_impl *c = td_cuda(be);
  int rc;

  if ((rc = TD_CU_CHECK(be, cudnnCreate(&c->dnn))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnSetStream(c->dnn, c->stream))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnCreateTensorDescriptor(&c->xdesc))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnCreateTensorDescriptor(&c->ydesc))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnCreateTensorDescriptor(&c->bdesc))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnCreateFilterDescriptor(&c->wdesc))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnCreateConvolutionDescriptor(&c->conv))) < 0 ||
      (rc = TD_CU_CHECK(be, cudnnCreatePoolingDescriptor(&c->pool))) < 0)
    return rc;
  return 0;
}

void td__cuda_dnn_destroy(td_cuda_impl *c) {
  if (c->pool != nullptr)
    cudnnDestroyPoolingDescriptor(c->pool);
  if (c->conv != nullptr)
    cudnnDestroyConvolutionDescriptor(c->conv);
  if (c->wdesc != nullptr)
    cudnnDestroyFilterDescriptor(c->wdesc);
  if (c->bdesc != nullptr)
    cudnnDestroyTensorDescriptor(c->bdesc);
  if (c->ydesc != nullptr)
    cudnnDestroyTensorDescriptor(c->ydesc);
  if (c->xdesc != nullptr)
    cudnnDestroyTensorDescriptor(c->xdesc);
  if (c->dnn != nullptr)
    cudnnDestroy(c->dnn);
  c->pool = nullptr;
  c->conv = nullptr;
  c->wdesc = nullptr;
  c->bdesc = c->ydesc = c->xdesc = nullptr;
  c->dnn = nullptr;
}

int td__cuda_conv2d_workspace(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                              uint64_t *bytes) {
  const td_cuda_conv_algos *a;
  int rc;

  if ((rc = conv_algos(be, d, oh, ow, &a)) < 0)
    return rc;
  *bytes = workspace_most(a);
  return 0;
}

/* cuDNN may tile by the batch size, so both passes run TD_BLOCK_ROWS samples
 * a call (kernels/backend.h: determinism): a sample's bits, and each block's
 * weight gradient, do not depend on where a micro-batch was cut. */
static td_conv2d_desc block_of(const td_conv2d_desc *d, int n0) {
  td_conv2d_desc b = *d;

  b.n = d->n - n0 < TD_BLOCK_ROWS ? d->n - n0 : TD_BLOCK_ROWS;
  return b;
}

void td__cuda_conv2d_fwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                         const float *x, const float *w, const float *b, float *y, void *work,
                         uint64_t work_bytes) {
  td_cuda_impl *c = td_cuda(be);
  const size_t in_sz = (size_t)d->c * d->h * d->w, out_sz = (size_t)d->k * oh * ow;

  for (int n0 = 0; n0 < d->n; n0 += TD_BLOCK_ROWS) {
    const td_conv2d_desc bd = block_of(d, n0);
    const float *xb = x + n0 * in_sz;
    float *yb = y + n0 * out_sz;
    const td_cuda_conv_algos *a;

    if (conv_algos(be, &bd, oh, ow, &a) < 0 ||
        !workspace_ok(be, "conv2d_fwd", work_bytes, a))
      return;
    if (TD_CU_CHECK(be, cudnnConvolutionForward(c->dnn, &kOne, c->xdesc, xb, c->wdesc, w,
                                                c->conv, a->fwd, work, a->ws_fwd, &kZero,
                                                c->ydesc, yb)) < 0)
      return;
    if (b != nullptr &&
        TD_CU_CHECK(be, cudnnAddTensor(c->dnn, &kOne, c->bdesc, b, &kOne, c->ydesc, yb)) < 0)
      return;
  }
}

void td__cuda_conv2d_bwd(td_backend *be, const td_conv2d_desc *d, int oh, int ow,
                         const float *x, const float *w, const float *dy, float *dx, float *dw,
                         float *db, float beta, void *work, uint64_t work_bytes) {
  td_cuda_impl *c = td_cuda(be);
  const size_t in_sz = (size_t)d->c * d->h * d->w, out_sz = (size_t)d->k * oh * ow;

  /* each block's gradient is added to the sum so far (cuDNN's beta), in
   * block order */
  for (int n0 = 0; n0 < d->n; n0 += TD_BLOCK_ROWS) {
    const td_conv2d_desc bd = block_of(d, n0);
    const float *xb = x + n0 * in_sz, *dyb = dy + n0 * out_sz;
    const float bb = n0 == 0 ? beta : 1.0f;
    const td_cuda_conv_algos *a;

    if (conv_algos(be, &bd, oh, ow, &a) < 0 ||
        !workspace_ok(be, "conv2d_bwd", work_bytes, a))
      return;
    if (TD_CU_CHECK(be, cudnnConvolutionBackwardFilter(c->dnn, &kOne, c->xdesc, xb, c->ydesc,
                                                       dyb, c->conv, a->bwd_filter, work,
                                                       a->ws_bwd_filter, &bb, c->wdesc,
                                                       dw)) < 0)
      return;
    if (db != nullptr &&
        TD_CU_CHECK(be, cudnnConvolutionBackwardBias(c->dnn, &kOne, c->ydesc, dyb, &bb,
                                                     c->bdesc, db)) < 0)
      return;
    if (dx != nullptr &&
        TD_CU_CHECK(be, cudnnConvolutionBackwardData(c->dnn, &kOne, c->wdesc, w, c->ydesc, dyb,
                                                     c->conv, a->bwd_data, work,
                                                     a->ws_bwd_data, &kZero, c->xdesc,
                                                     dx + n0 * in_sz)) < 0)
      return;
  }
}

void td__cuda_pool2d_fwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                         int ow, const float *x, float *y) {
  td_cuda_impl *c = td_cuda(be);

  if (set_pool(be, mode, d, oh, ow) == 0)
    TD_CU_CHECK(be, cudnnPoolingForward(c->dnn, c->pool, &kOne, c->xdesc, x, &kZero, c->ydesc,
                                        y));
}

void td__cuda_pool2d_bwd(td_backend *be, td_pool_mode mode, const td_conv2d_desc *d, int oh,
                         int ow, const float *x, const float *y, const float *dy, float *dx) {
  td_cuda_impl *c = td_cuda(be);

  if (set_pool(be, mode, d, oh, ow) == 0)
    TD_CU_CHECK(be, cudnnPoolingBackward(c->dnn, c->pool, &kOne, c->ydesc, y, c->ydesc, dy,
                                         c->xdesc, x, &kZero, c->xdesc, dx));
}
