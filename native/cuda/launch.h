// Where a kernel goes, and programmatic dependent launch (PDL; compute capability 9.0 and up).
//
// Why: a bf16 decode step of GPT-2 124M ran ~0.69 ms on an H100 for ~90 small kernels back to back (~8 us each on
// average). A kernel's first loads wait on memory only once the kernel before has drained; that wait is expected,
// not profiled, to be a good part of each. Under PDL a kernel may start while the kernel before it on the stream is
// still finishing: its blocks first do what needs nothing from earlier kernels (request their weights, constant
// during sampling), then wait_for_previous_kernel(), then allow_next_kernel().
//
// The rule that keeps it correct: before wait_for_previous_kernel() a kernel reads only data no kernel of the step
// writes, and writes no global memory (only shared memory of its own). Each kernel allows the next one only after
// its own wait has returned, so when a kernel starts, every kernel before its predecessor has completed: it overlaps
// that one predecessor's tail, nothing more.
// Without the launch attribute (Launch::early false, a normal launch) and below sm_90 the wait returns at once and
// the allowing does nothing, so the same kernels serve both ways.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace optune::cuda {

// A launch's stream, and whether the kernel may start before the previous kernel on it ends (PDL). Converts from a
// bare stream: a normal launch.
struct Launch {
  cudaStream_t stream = nullptr;
  bool early = false;
  Launch(cudaStream_t s = nullptr, bool e = false) : stream(s), early(e) {}  // NOLINT: implicit from a stream
};

// Whether this build's kernels, as they run on the current device, hold the wait: they were compiled from sm_90 or
// later code (a build for sm_80 alone, JIT-compiled on an H100, has neither the wait nor the allowing, so a kernel
// launched early would race the one before it). False below sm_90. (launch.cu)
bool kernels_wait_when_early();

// Test entry (launch.cu): on `stream`, a kernel that lets the next kernel start at once (launched early, it may),
// then after at least delay_us microseconds copies each of the n (dst, src, bytes) spans. A kernel launched early
// behind it that read a dst before its wait would read the old bytes.
struct CopySpan {
  void* dst;
  const void* src;
  size_t bytes;
};
void copy_after_a_delay(const CopySpan* spans, int n, unsigned delay_us, cudaStream_t stream);

#ifdef __CUDACC__
// Blocks until the kernel before this one (PDL) has completed and its writes are visible; returns at once otherwise.
__device__ inline void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Lets the next kernel on the stream (when launched early) start its blocks once every block here has said so or
// ended. Call only after wait_for_previous_kernel() (see above).
__device__ inline void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, on.stream>>>(args...), with the PDL attribute when on.early. Returns CUDA's status
// (the launch checks of check.cuh apply).
template <class... Params, class... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Launch on, Args&&... args) {
  cudaLaunchAttribute early[1];
  early[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  early[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = on.stream;
  cfg.attrs = on.early ? early : nullptr;
  cfg.numAttrs = on.early ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}
#endif

}  // namespace optune::cuda
