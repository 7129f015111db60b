// The CUDA emulator's cuda_runtime.h: the part of CUDA's runtime API and device language that native/cuda uses, for
// a host C++ compiler. CMake's OPTUNE_CUDA=EMU build puts this folder first on the include path and rewrites each
// `kernel<<<grid, block, smem, stream>>>(args)` of a .cu file (native/cuda_emu/rewrite_launches.cpp). Semantics:
// ../emu.h.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

#include "../emu.h"

// ---- the device language -----------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define __constant__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT
};

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) int2 {
  int x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// The running thread's indices: the scheduler sets them each time it switches to a thread (scheduler.cpp).
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

inline void __syncthreads() { optune_emu::syncthreads(); }
inline int __syncthreads_or(int pred) { return optune_emu::syncthreads_or(pred != 0) ? 1 : 0; }
inline void __syncwarp(unsigned mask = 0xffffffffu) { optune_emu::syncwarp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __nanosleep(unsigned) {}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  static_assert(sizeof(T) <= 32, "emulated shuffles move at most 32 bytes");
  const auto& all = optune_emu::warp_exchange(mask, &v, sizeof(T));
  const int lane = optune_emu::self().lane();
  const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
  T out;
  std::memcpy(&out, all.v[src], sizeof(T));
  return out;
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = optune_emu::self().lane();
  return __shfl_sync(mask, v, (lane ^ lane_mask) & (width - 1), width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const auto& all = optune_emu::warp_exchange(mask, &v, sizeof(T));
  const int lane = optune_emu::self().lane();
  const int in_group = lane & (width - 1);
  const int src = in_group >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  T out;
  std::memcpy(&out, all.v[src], sizeof(T));
  return out;
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const auto& all = optune_emu::warp_exchange(mask, &v, sizeof(T));
  const int lane = optune_emu::self().lane();
  const int in_group = lane & (width - 1);
  const int src = in_group + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  T out;
  std::memcpy(&out, all.v[src], sizeof(T));
  return out;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  const uint32_t mine = pred != 0;
  const auto& all = optune_emu::warp_exchange(mask, &mine, sizeof(mine));
  unsigned bits = 0;
  for (int l = 0; l < 32; l++)
    if ((mask >> l) & 1u && static_cast<uint32_t>(all.v[l][0]) != 0) bits |= 1u << l;
  return bits;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == __ballot_sync(mask, 1); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<size_t>(p); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0 ? 0.0f : (x > 1 ? 1.0f : x); }
using std::max;
using std::min;
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
// CUDA's mixed int / unsigned overloads compare as unsigned
inline unsigned min(int a, unsigned b) { return std::min(static_cast<unsigned>(a), b); }
inline unsigned min(unsigned a, int b) { return std::min(a, static_cast<unsigned>(b)); }
inline unsigned max(int a, unsigned b) { return std::max(static_cast<unsigned>(a), b); }
inline unsigned max(unsigned a, int b) { return std::max(a, static_cast<unsigned>(b)); }
using std::isfinite;
using std::isinf;
using std::isnan;

// Atomics: one CUDA thread runs at a time, so plain reads and writes are atomic.
template <class T>
inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
template <class T>
inline T atomicMin(T* p, T v) { const T old = *p; *p = v < old ? v : old; return old; }
template <class T>
inline T atomicMax(T* p, T v) { const T old = *p; *p = v > old ? v : old; return old; }
template <class T>
inline T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }
template <class T>
inline T atomicCAS(T* p, T compare, T v) { const T old = *p; if (old == compare) *p = v; return old; }

// ---- the runtime API -----------------------------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorAssert = 710,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorUnknown = 999,
};
using cudaStream_t = CUstream_st*;
struct CUgraph_st;
struct CUgraphExec_st;
struct CUevent_st;
using cudaGraph_t = CUgraph_st*;
using cudaGraphExec_t = CUgraphExec_st*;
using cudaEvent_t = CUevent_st*;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0, constSizeBytes = 0, localSizeBytes = 0;
  int maxThreadsPerBlock = 1024, numRegs = 32, ptxVersion = 90, binaryVersion = 90, cacheModeCA = 0;
  int maxDynamicSharedSizeBytes = 48 * 1024;
};
struct cudaDeviceProp {
  char name[256] = {};
  size_t totalGlobalMem = 0;
  size_t sharedMemPerBlock = 0;
  size_t sharedMemPerBlockOptin = 0;
  int regsPerBlock = 65536, warpSize = 32, maxThreadsPerBlock = 1024;
  int major = 0, minor = 0, multiProcessorCount = 0, clockRate = 0, memoryClockRate = 0, memoryBusWidth = 0;
  int l2CacheSize = 0;
  size_t totalConstMem = 65536;
};

enum cudaLaunchAttributeID {
  cudaLaunchAttributeProgrammaticStreamSerialization = 5,
};
union cudaLaunchAttributeValue {
  int programmaticStreamSerializationAllowed;
  char pad[64];
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes = 0;
  cudaStream_t stream = nullptr;
  cudaLaunchAttribute* attrs = nullptr;
  unsigned numAttrs = 0;
};

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* dev);
cudaError_t cudaSetDevice(int dev);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);

cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* s);
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

// Kernel attributes: the emulator records the dynamic shared memory each kernel is allowed (CUDA's 48 KB default
// otherwise) and refuses launches above it, as a GPU does.
namespace optune_emu {
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
int max_dynamic_shared(const void* kernel);
// name: the kernel as the launch spells it (for messages).
bool launch_kernel(const void* kernel, const char* name, Dim grid, Dim block, size_t shared_bytes,
                   CUstream_st* stream, std::function<void()> thread_body);
inline Dim dim(dim3 d) { return {d.x, d.y, d.z}; }
}  // namespace optune_emu

template <class... P>
inline cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize)
    return optune_emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}
template <class... P>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, void (*kernel)(P...)) {
  *a = cudaFuncAttributes{};
  a->maxDynamicSharedSizeBytes = optune_emu::max_dynamic_shared(reinterpret_cast<const void*>(kernel));
  return cudaSuccess;
}

// cudaLaunchKernelEx: the arguments converted to the kernel's parameter types at the launch, as CUDA does.
template <class... P, class... A>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*kernel)(P...), A&&... args) {
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  const bool ok = optune_emu::launch_kernel(reinterpret_cast<const void*>(kernel), "(a cudaLaunchKernelEx launch)",
                                            optune_emu::dim(cfg->gridDim), optune_emu::dim(cfg->blockDim),
                                            cfg->dynamicSmemBytes, cfg->stream,
                                            [kernel, params] { std::apply(kernel, params); });
  return ok ? cudaSuccess : cudaPeekAtLastError();
}

// rewrite_launches.cpp turns `kernel<<<grid, block, smem, stream>>>(args)` into
//   optune_emu::launch_kernel(nullptr, "kernel", optune_emu::dim(dim3(grid)), optune_emu::dim(dim3(block)), smem,
//                             stream, optune_emu::bind_args([=](const auto&... a) { kernel(a...); }, args));
// The arguments are evaluated once, at the launch, and their values kept (as CUDA copies them into the launch, and a
// captured graph replays them). No kernel pointer there (a template kernel may deduce its arguments), so only the
// device's shared memory bound applies to such launches.
namespace optune_emu {
template <class F, class... A>
std::function<void()> bind_args(F call, A&&... args) {
  return [call, values = std::make_tuple(std::decay_t<A>(std::forward<A>(args))...)] { std::apply(call, values); };
}
}  // namespace optune_emu
