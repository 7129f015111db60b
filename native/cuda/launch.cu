// launch.h's host checks, and its test entry: a kernel whose writes land late, so a test can tell a kernel launched
// early behind it that waits (launch.h) from one that does not.
#include "launch.h"

#include <chrono>
#include <string>

#include "check.cuh"
#include "core/error.h"

namespace optune::cuda {
namespace {

constexpr int kMaxSpans = 4;
struct Spans {
  CopySpan span[kMaxSpans];
  int n;
};

__device__ inline unsigned long long global_ns() {
#ifdef OPTUNE_CUDA_EMU
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
#else
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#endif
}

__global__ void copy_after_a_delay_kernel(Spans s, unsigned delay_us) {
  wait_for_previous_kernel();
  allow_next_kernel();  // at once: the kernel after this one may start now
  // at least delay_us by the global timer (__nanosleep alone may sleep anywhere from 0 to twice what it is asked)
  const unsigned long long t0 = global_ns();
  while (global_ns() - t0 < 1000ull * delay_us) __nanosleep(1000);
  for (int k = 0; k < s.n; k++) {
    auto* dst = static_cast<unsigned char*>(s.span[k].dst);
    const auto* src = static_cast<const unsigned char*>(s.span[k].src);
    for (size_t i = threadIdx.x; i < s.span[k].bytes; i += blockDim.x) dst[i] = src[i];
  }
}

}  // namespace

bool kernels_wait_when_early() {
  int dev = 0, major = 0;
  OPTUNE_CUDA_CHECK(cudaGetDevice(&dev));
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 9) return false;
  // Every CUDA source of the library is built for the same architectures (CMake), so one kernel tells for all.
  cudaFuncAttributes a{};
  OPTUNE_CUDA_CHECK(cudaFuncGetAttributes(&a, copy_after_a_delay_kernel));
  return a.ptxVersion >= 90;  // the code it was compiled from (binaryVersion says 90 for compute_80 JIT-compiled)
}

void copy_after_a_delay(const CopySpan* spans, int n, unsigned delay_us, cudaStream_t stream) {
  OPTUNE_CHECK(n >= 0 && n <= kMaxSpans, "internal: copy_after_a_delay takes up to " + std::to_string(kMaxSpans) +
                                             " spans (got " + std::to_string(n) + ")");
  Spans s{};
  for (int k = 0; k < n; k++) s.span[k] = spans[k];
  s.n = n;
  copy_after_a_delay_kernel<<<1, 256, 0, stream>>>(s, delay_us);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

}  // namespace optune::cuda
