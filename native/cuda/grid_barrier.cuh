// A grid-wide barrier for kernels whose blocks are all resident at once (a cooperative launch guarantees it, or
// fails): persistent_step.cu's phases, and bench_cuda_persistent.cu's timing of the barrier itself.
#pragma once
#include <cuda_runtime.h>

namespace optune::cuda {

// Every block waits here until all have arrived; each block's writes before it are visible to every block after it
// (the fences around the arrival, as cooperative_groups' grid sync has them). barrier: two words in device memory,
// zeroed before the launch ([0] arrivals at the current barrier, [1] barriers completed). passed: thread 0's count
// of the barriers this block has passed (start at 0).
__device__ inline void grid_sync(unsigned* barrier, unsigned& passed) {
  __syncthreads();
  if (threadIdx.x == 0) {
    passed++;
    __threadfence();                                // this block's writes before its arrival
    if (atomicAdd(barrier, 1u) == gridDim.x - 1) {  // the last to arrive opens the barrier
      atomicExch(barrier, 0u);
      __threadfence();
      atomicExch(barrier + 1, passed);
    } else {
      while (*reinterpret_cast<volatile unsigned*>(barrier + 1) != passed) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

}  // namespace optune::cuda
