// Device discovery, allocation and copies. Allocation failures say how much was asked for and how much the device
// has free, so "out of memory" comes with the numbers needed to pick a smaller batch.
#include <atomic>
#include <cstdio>
#include <string>

#include "check.cuh"
#include "core/device.h"
#include "core/error.h"
#include "memory.h"

namespace optune::cuda {

// Does nothing: whether the build holds code this GPU can run (cudaFuncGetAttributes fails when it does not).
__global__ void probe_kernel() {}

static std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

int device_count() {
  int n = 0;
  // No driver, no device, or a driver older than the runtime: all mean "no usable GPU" here, not an error.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

const char* build_archs() { return OPTUNE_CUDA_ARCHS; }

int current_device() {
  int d = 0;
  OPTUNE_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

size_t block_smem_limit() {
  static std::atomic<int> known[64] = {};  // per device; 0: not asked yet
  const int dev = current_device();
  if (dev < 64 && known[dev].load() > 0) return static_cast<size_t>(known[dev].load());
  int optin = 0;
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (dev < 64) known[dev].store(optin);
  return static_cast<size_t>(optin);
}

std::string device_description(int device) {
  cudaDeviceProp p;
  OPTUNE_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  char buf[320];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
                static_cast<double>(p.totalGlobalMem) / (1u << 30));
  return buf;
}

DeviceProps device_props(int device) {
  cudaDeviceProp p;
  OPTUNE_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  DeviceProps d;
  d.name = p.name;
  d.major = p.major, d.minor = p.minor;
  d.total_bytes = p.totalGlobalMem;
  d.unusable = compute_capability_problem(p.major, p.minor);
  if (current_device() == device) {
    size_t free_b = 0, total_b = 0;
    OPTUNE_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    d.free_bytes = free_b, d.free_known = true;
    cudaFuncAttributes a{};
    const cudaError_t probe = d.unusable.empty() ? cudaFuncGetAttributes(&a, probe_kernel) : cudaSuccess;
    if (probe != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it
      const std::string sm = std::to_string(p.major) + std::to_string(p.minor);
      if (probe == cudaErrorNoKernelImageForDevice || probe == cudaErrorInvalidDeviceFunction)
        d.unusable = "this build of optune has no code for sm_" + sm + " (built for CMAKE_CUDA_ARCHITECTURES " +
                     OPTUNE_CUDA_ARCHS + "); rebuild it with OPTUNE_CMAKE_ARGS=\"-DOPTUNE_CUDA=ON " +
                     "-DCMAKE_CUDA_ARCHITECTURES=" + sm + "\" npm rebuild optune";
      else  // e.g. PTX newer than the driver can compile
        d.unusable = std::string("the CUDA driver cannot load optune's kernels (") + cudaGetErrorName(probe) + ": " +
                     cudaGetErrorString(probe) + "); update the NVIDIA driver to one that supports this CUDA toolkit";
    }
  }
  return d;
}

void memory_info(size_t* free_bytes, size_t* total_bytes) {
  OPTUNE_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

void synchronize() { OPTUNE_CUDA_CHECK(cudaDeviceSynchronize()); }

void* device_alloc(size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it so later calls do not report it again
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw Error("CUDA out of memory allocating " + mib(bytes) + " for " + what + " (" + mib(free_b) + " free of " +
                mib(total_b) + "); use fewer or shorter sequences per batch, or, when the model's own state " +
                "(weights, gradients, AdamW moments: ~18 bytes per parameter in bf16 training) does not fit, a " +
                "smaller model");
  }
  if (err != cudaSuccess) throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
  return p;
}

void device_free(void* p) noexcept {
  // cudaFree of a valid pointer only fails when the context is already broken; that was reported where it broke.
  if (p) cudaFree(p);
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) OPTUNE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) OPTUNE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_device(void* dst, const void* src, size_t bytes) {
  if (bytes) OPTUNE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void fill_zero(void* p, size_t bytes) {
  if (bytes) OPTUNE_CUDA_CHECK(cudaMemset(p, 0, bytes));
}

}  // namespace optune::cuda
