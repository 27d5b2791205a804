/* The memory hog of tests/gpu/run.sh's real out-of-memory step: another
 * process that takes a GPU's memory away from traind's jobs.
 *
 *   gpu_hog [LEAVE_MIB]     (default 256)
 *
 * Allocates GPU 0's free memory with cudaMalloc until at most LEAVE_MIB MiB
 * are free (large pieces first, halving when the driver refuses one), prints
 * "hog holds N MiB of T, F MiB free" and holds it until it is killed.  Exit
 * 1 with a message when there is no device.  The device machine has the
 * CUDA runtime and nothing to hog memory with (no PyTorch for our use). */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MIB ((size_t)1 << 20)

int main(int argc, char **argv) {
  size_t leave = 256 * MIB, piece = (size_t)1 << 30, held = 0, free_b = 0, total = 0;
  cudaError_t e;
  char *end;

  if (argc == 2) {
    unsigned long mib = strtoul(argv[1], &end, 10);

    if (end == argv[1] || *end != '\0') {
      fprintf(stderr, "gpu_hog: '%s' is not a number of MiB\n", argv[1]);
      return 2;
    }
    leave = (size_t)mib * MIB;
  } else if (argc > 2) {
    fprintf(stderr, "usage: gpu_hog [LEAVE_MIB]\n");
    return 2;
  }
  if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaFree(NULL)) != cudaSuccess ||
      (e = cudaMemGetInfo(&free_b, &total)) != cudaSuccess) {
    fprintf(stderr, "gpu_hog: no CUDA device: %s\n", cudaGetErrorString(e));
    return 1;
  }
  /* the driver hands memory out in 2 MiB pages: stop within one of leave */
  while (free_b > leave + 2 * MIB && piece >= 2 * MIB) {
    size_t want = free_b - leave < piece ? free_b - leave : piece;
    void *p;

    if (cudaMalloc(&p, want) == cudaSuccess) {
      held += want; /* kept until the process ends */
    } else {
      (void)cudaGetLastError();
      piece /= 2;
    }
    if (cudaMemGetInfo(&free_b, &total) != cudaSuccess)
      break;
  }
  printf("hog holds %zu MiB of %zu, %zu MiB free\n", held / MIB, total / MIB, free_b / MIB);
  fflush(stdout);
  for (;;)
    pause();
}
