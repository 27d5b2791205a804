/* td_backend_probe for CUDA devices: a worker's bytes outside its plan.
 *
 * cudaMemGetInfo needs a context, so it cannot see the memory from before
 * the caller's own context.  A helper process makes a context first and
 * reads the free memory A; the caller then makes its context (free B) and a
 * backend as td_backend_create does (cuBLAS's workspace included), runs
 * the dense layer's three GEMMs at a real shape, a convolution forward and
 * backward and a pooling through cuDNN, so that the kernels CUDA loads
 * lazily on first use are loaded (free C).  The helper's context is in A
 * and C alike, so the overhead is A - C, plus what cudaMalloc rounds the
 * worker's arenas up to (below); the free memory before either context is
 * A plus one context, A - B. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "input.cuh"

namespace {

/* cudaMalloc reserves device memory in 2 MiB pages: each of the worker's
 * arenas (TD_WORKER_ARENAS, one allocation each) may hold up to a page more
 * than the plan's bytes.  The overhead counts that bound, so a plan never
 * falls short of what the device reserves. */
constexpr size_t kTdAllocGranule = (size_t)2 << 20;

struct helper_msg {
  int rc;
  size_t free, total;
  char why[200];
};

/* Exactly n bytes, or -1. */
ssize_t read_all(int fd, void *buf, size_t n) {
  size_t got = 0;

  while (got < n) {
    ssize_t r = read(fd, static_cast<char *>(buf) + got, n - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    got += (size_t)r;
  }
  return (ssize_t)got;
}

/* Makes the device's primary context current; the free memory then. */
cudaError_t context_free(int ordinal, size_t *free_bytes, size_t *total) {
  cudaError_t e = cudaSetDevice(ordinal);

  if (e == cudaSuccess)
    e = cudaFree(nullptr);
  if (e == cudaSuccess)
    e = cudaMemGetInfo(free_bytes, total);
  return e;
}

/* The helper: a context of its own on the device, its free memory to up,
 * then wait until the caller closes down (or dies). */
[[noreturn]] void helper(const char *device, int ordinal, int up, int down, pid_t parent) {
  helper_msg m = {};
  int count = 0, mode = 0;
  char c;
  cudaError_t e;

  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent)
    _exit(1);
  if ((e = cudaGetDeviceCount(&count)) != cudaSuccess || ordinal >= count) {
    m.rc = TD_EBACKEND;
    snprintf(m.why, sizeof(m.why), "%s: no such CUDA device (%d found%s%s)", device,
             e == cudaSuccess ? count : 0, e == cudaSuccess ? "" : ": ",
             e == cudaSuccess ? "" : cudaGetErrorString(e));
  } else if (cudaDeviceGetAttribute(&mode, cudaDevAttrComputeMode, ordinal) == cudaSuccess &&
             mode != cudaComputeModeDefault) {
    m.rc = TD_EBACKEND;
    snprintf(m.why, sizeof(m.why), "%s: the GPU is in compute mode %d, not the default: the "
             "overhead probe needs two processes on it (nvidia-smi -c DEFAULT)", device, mode);
  } else if ((e = context_free(ordinal, &m.free, &m.total)) != cudaSuccess) {
    m.rc = TD_EBACKEND;
    snprintf(m.why, sizeof(m.why), "%s: cannot make a CUDA context: %s", device,
             cudaGetErrorString(e));
  }
  if (write(up, &m, sizeof(m)) != (ssize_t)sizeof(m))
    _exit(1);
  while (read(down, &c, 1) < 0 && errno == EINTR) {
  }
  _exit(0);
}

/* The ops whose kernels a worker loads in its first step (CUDA loads a
 * kernel when it first runs): the dense layer's GEMMs (forward, weight and
 * input gradients) at a shape that takes cuBLAS's usual kernels, not its
 * tiny-matrix ones, a convolution and pooling through cuDNN, and our own
 * kernels of an MLP's step.  Their buffers are freed before the measure. */
int exercise(td_backend *be) {
  const int g = 256;                                          /* GEMM side */
  const td_conv2d_desc d = {2, 3, 16, 16, 8, 3, 3, 1, 1, 1, 1}; /* 16x16 out */
  const td_conv2d_desc pd = {2, 8, 16, 16, 0, 2, 2, 2, 2, 0, 0};
  const size_t gemm = (size_t)g * g, xs = 2 * 3 * 16 * 16, ws = 8 * 3 * 9, ys = 2 * 8 * 16 * 16;
  uint64_t work = 0;
  td_buf buf = {}, wbuf = {};
  int rc;

  if ((rc = td_backend_conv2d_workspace(be, &d, &work)) < 0 ||
      (rc = td_backend_alloc(be, (3 * gemm + 2 * g + 2 * xs + 2 * ws + 8 + 3 * ys) *
                                     sizeof(float), &buf)) < 0 ||
      (rc = td_backend_alloc(be, work, &wbuf)) < 0)
    goto free_bufs;
  {
    float *a = static_cast<float *>(buf.ptr), *b = a + gemm, *c = b + gemm;
    float *gb = c + gemm, *gdb = gb + g; /* the dense layer's bias and its gradient */
    float *x = gdb + g, *dx = x + xs, *w = dx + xs, *dw = w + ws, *bias = dw + ws;
    float *y = bias + 8, *dy = y + ys, *py = dy + ys;
    const td_adam_hparams adam = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1}; /* lr .. step */
    float *xs_list[1] = {a};
    const size_t ns[1] = {gemm};

    /* zeroed memory: labels 0, nothing to overflow */
    td_backend_normalize(be, TD_DTYPE_U8, a, b, gemm, 1.0f / 255.0f, 0.5f, 0.25f);
    td_backend_dense_fwd(be, a, b, gb, c, g, g, g);
    td_backend_relu_fwd(be, c, c, gemm);
    td_backend_softmax_xent(be, c, reinterpret_cast<const int32_t *>(x), g, 8, 1.0f, y, dw);
    td_backend_relu_bwd(be, c, c, c, gemm);
    td_backend_dense_bwd(be, a, b, c, a, b, gdb, g, g, g, 0.0f);
    td_backend_clip_grad_norm(be, xs_list, ns, 1, 1.0f, dx);
    td_backend_check_finite(be, a, gemm, dx);
    td_backend_adam(be, b, a, c, y, ys, &adam);
    td_backend_round_half(be, TD_HALF_BF16, a, gemm);
    td_backend_conv2d_fwd(be, &d, x, w, bias, y, wbuf.ptr, work);
    td_backend_conv2d_bwd(be, &d, x, w, dy, dx, dw, bias, 0.0f, wbuf.ptr, work);
    td_backend_pool2d_fwd(be, TD_POOL_MAX, &pd, y, py);
    td_backend_pool2d_bwd(be, TD_POOL_MAX, &pd, y, py, py, dy);
  }
  rc = td_backend_sync(be);
free_bufs:
  td_backend_free(be, &wbuf);
  td_backend_free(be, &buf);
  return rc;
}

/* The caller's side, with the helper holding its context: free memory
 * after a context (b) and after a backend that has run its ops (c). */
int measure(const char *device, int ordinal, size_t *b, size_t *c, char *err, size_t errlen) {
  size_t total;
  td_backend *be = nullptr;
  cudaError_t e;
  int rc;

  if ((e = context_free(ordinal, b, &total)) != cudaSuccess) {
    snprintf(err, errlen, "%s: cannot make a CUDA context: %s", device, cudaGetErrorString(e));
    return TD_EBACKEND;
  }
  if ((rc = td_backend_create(device, TD_BUDGET_UNLIMITED, &be, err, errlen)) < 0)
    return rc;
  if ((rc = exercise(be)) < 0) {
    snprintf(err, errlen, "%s: probe: %s", device,
             td_backend_error(be)[0] != '\0' ? td_backend_error(be)
                                               : "cannot run the ops on the device");
  } else if ((e = cudaMemGetInfo(c, &total)) != cudaSuccess) {
    snprintf(err, errlen, "%s: probe: cudaMemGetInfo: %s", device, cudaGetErrorString(e));
    rc = TD_EBACKEND;
  }
  td_backend_destroy(be);
  return rc;
}

} // namespace

extern "C" int td__backend_cuda_probe(const char *device, int ordinal, td_device_probe *out,
                                      char *err, size_t errlen) {
  int up[2] = {-1, -1}, down[2] = {-1, -1}, status, rc;
  helper_msg m = {};
  size_t b = 0, c = 0;
  pid_t self = getpid(), pid;

  if (pipe2(up, O_CLOEXEC) < 0 || pipe2(down, O_CLOEXEC) < 0) {
    snprintf(err, errlen, "%s: probe: pipe: %s", device, strerror(errno));
    rc = TD_EIO;
    goto close_pipes;
  }
  if ((pid = fork()) < 0) {
    snprintf(err, errlen, "%s: probe: fork: %s", device, strerror(errno));
    rc = TD_EIO;
    goto close_pipes;
  }
  if (pid == 0) {
    close(up[0]);
    close(down[1]);
    helper(device, ordinal, up[1], down[0], self);
  }
  close(up[1]);
  close(down[0]);
  up[1] = down[0] = -1;
  if (read_all(up[0], &m, sizeof(m)) < 0) {
    snprintf(err, errlen, "%s: probe: the helper process died before it answered", device);
    rc = TD_EBACKEND;
  } else if (m.rc < 0) {
    snprintf(err, errlen, "%s", m.why);
    rc = m.rc;
  } else {
    rc = measure(device, ordinal, &b, &c, err, errlen);
  }
  close(down[1]); /* the helper's cue to go */
  down[1] = -1;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (rc == 0) {
    size_t ctx = m.free > b ? m.free - b : 0;
    out->total = m.total;
    out->free = m.free + ctx < m.total ? m.free + ctx : m.total;
    out->overhead = (m.free > c ? m.free - c : 0) + TD_WORKER_ARENAS * kTdAllocGranule;
  }
close_pipes:
  for (int fd : {up[0], up[1], down[0], down[1]})
    if (fd >= 0)
      close(fd);
  return rc;
}
