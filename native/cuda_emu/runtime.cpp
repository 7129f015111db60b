// The emulated CUDA runtime: one device whose memory is host memory, streams that run each operation at once (or
// record it while capturing), graphs that replay what was recorded, and the launch checks a GPU makes (emu.h).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"

struct CUstream_st {
  bool capturing = false;
  std::vector<std::function<void()>> recorded;
};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point at;
};

namespace optune_emu {

// scheduler.cpp; reverse: the blocks, and a block's threads between barriers, in reverse order
void run_kernel(Dim grid, Dim block, size_t shared_bytes, const std::function<void()>& body, bool reverse);

namespace {

constexpr int kMaxSharedOptin = 232448;  // an H100's (227 KB)
constexpr int kDefaultDynamicShared = 48 * 1024;

thread_local int last_error = 0;
std::mutex memory_mutex;
std::map<void*, size_t> allocations;
size_t allocated = 0;
std::map<const void*, int> kernel_shared;  // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
CUstream_st default_stream;

size_t configured_total() {
  const char* s = std::getenv("OPTUNE_EMU_MEMORY_GIB");
  const double gib = s && *s ? std::atof(s) : 16.0;
  return static_cast<size_t>(gib * 1024 * 1024 * 1024);
}

CUstream_st* stream_of(cudaStream_t s) { return s ? s : &default_stream; }

cudaError_t fail_with(cudaError_t e) {
  last_error = e;
  return e;
}

}  // namespace

size_t memory_used() {
  std::lock_guard<std::mutex> lock(memory_mutex);
  return allocated;
}
size_t memory_total() {
  static const size_t total = configured_total();
  return total;
}

void enqueue(CUstream_st* stream, std::function<void()> fn) {
  CUstream_st* s = stream_of(stream);
  if (s->capturing)
    s->recorded.push_back(std::move(fn));
  else
    fn();
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kMaxSharedOptin) return fail_with(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(memory_mutex);
  kernel_shared[kernel] = bytes;
  return cudaSuccess;
}
int max_dynamic_shared(const void* kernel) {
  std::lock_guard<std::mutex> lock(memory_mutex);
  const auto it = kernel_shared.find(kernel);
  return it == kernel_shared.end() ? kDefaultDynamicShared : it->second;
}

namespace {

// OPTUNE_EMU_ORDER (read at each launch): "forward" (default), "reverse" (a kernel's blocks and, between two
// barriers, a block's threads and a warp's lanes in the reverse of the default order), or "both": each launch runs
// forward, then again from the same device memory in reverse, and every allocation must come out the same, bit for
// bit; the first difference stops the process, naming the kernel. A kernel's result must not depend on the order:
// one thread reading what another writes between the same two barriers, or a block reading another block's output,
// is a race on a GPU (which "both" shows whenever the orders give different bits, tolerances or not).
enum class Order { kForward, kReverse, kBoth };
Order launch_order() {
  const char* s = std::getenv("OPTUNE_EMU_ORDER");
  if (s == nullptr || *s == '\0' || std::strcmp(s, "forward") == 0) return Order::kForward;
  if (std::strcmp(s, "reverse") == 0) return Order::kReverse;
  if (std::strcmp(s, "both") == 0) return Order::kBoth;
  fail(std::string("OPTUNE_EMU_ORDER must be 'forward', 'reverse' or 'both', got '") + s + "'");
}

using Snapshot = std::vector<std::pair<unsigned char*, std::vector<unsigned char>>>;
Snapshot device_memory() {
  std::lock_guard<std::mutex> lock(memory_mutex);
  Snapshot s;
  for (const auto& [p, bytes] : allocations) {
    auto* b = static_cast<unsigned char*>(p);
    s.emplace_back(b, std::vector<unsigned char>(b, b + bytes));
  }
  return s;
}

void run_in_both_orders(const char* name, Dim grid, Dim block, size_t shared_bytes,
                        const std::function<void()>& body) {
  const Snapshot before = device_memory();
  run_kernel(grid, block, shared_bytes, body, false);
  const Snapshot forward = device_memory();
  for (const auto& [p, bytes] : before) std::memcpy(p, bytes.data(), bytes.size());
  run_kernel(grid, block, shared_bytes, body, true);
  for (const auto& [p, bytes] : forward) {
    const size_t n = bytes.size();
    for (size_t i = 0; i < n; i++)
      if (p[i] != bytes[i]) {
        size_t size = n;
        fail(std::string("kernel ") + name + " (grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
             std::to_string(grid.z) + ", block " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" +
             std::to_string(block.z) + ") wrote other bits when its blocks and threads ran in reverse order " +
             "(OPTUNE_EMU_ORDER=both): byte " + std::to_string(i) + " of a " + std::to_string(size) +
             "-byte allocation; a race (a read of another thread's write between the same barriers, or of another " +
             "block's output)");
      }
  }
}

}  // namespace

bool launch_kernel(const void* kernel, const char* name, Dim grid, Dim block, size_t shared_bytes,
                   CUstream_st* stream, std::function<void()> thread_body) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  const bool shape_ok = threads >= 1 && threads <= 1024 && block.z <= 64 && grid.x >= 1 && grid.y >= 1 &&
                        grid.z >= 1 && grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535;
  if (!shape_ok) {
    last_error = cudaErrorInvalidConfiguration;
    return false;
  }
  const size_t limit = kernel ? max_dynamic_shared(kernel) : kMaxSharedOptin;
  if (shared_bytes > limit) {
    last_error = cudaErrorInvalidValue;
    return false;
  }
  enqueue(stream, [name, grid, block, shared_bytes, body = std::move(thread_body)] {
    const Order order = launch_order();
    if (order == Order::kBoth)
      run_in_both_orders(name, grid, block, shared_bytes, body);
    else
      run_kernel(grid, block, shared_bytes, body, order == Order::kReverse);
  });
  return true;
}

}  // namespace optune_emu

using optune_emu::fail_with;

cudaError_t cudaGetDeviceCount(int* n) {
  const char* hide = std::getenv("OPTUNE_EMU_NO_DEVICE");  // to test the paths for a machine without a GPU
  *n = hide && *hide && std::strcmp(hide, "0") != 0 ? 0 : 1;
  return *n ? cudaSuccess : fail_with(cudaErrorNoDevice);
}
cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int dev) { return dev == 0 ? cudaSuccess : fail_with(cudaErrorInvalidDevice); }

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int dev) {
  if (dev != 0) return fail_with(cudaErrorInvalidDevice);
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof(p->name), "%s", "optune CUDA emulator (CPU)");
  p->totalGlobalMem = optune_emu::memory_total();
  p->sharedMemPerBlock = optune_emu::kDefaultDynamicShared;
  p->sharedMemPerBlockOptin = optune_emu::kMaxSharedOptin;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 132;
  p->l2CacheSize = 50 * 1024 * 1024;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  if (dev != 0) return fail_with(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = optune_emu::kDefaultDynamicShared; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = optune_emu::kMaxSharedOptin; break;
    default: return fail_with(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() {
  const int e = optune_emu::last_error;
  optune_emu::last_error = 0;
  return static_cast<cudaError_t>(e);
}
cudaError_t cudaPeekAtLastError() { return static_cast<cudaError_t>(optune_emu::last_error); }
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 13000;
  return cudaSuccess;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorAssert: return "cudaErrorAssert";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return cudaGetErrorName(e);
  }
}

// ---- memory ------------------------------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  {
    std::lock_guard<std::mutex> lock(optune_emu::memory_mutex);
    if (optune_emu::allocated + bytes > optune_emu::memory_total()) return fail_with(cudaErrorMemoryAllocation);
  }
  // 256-byte aligned as CUDA's, and exactly `bytes` long, so that AddressSanitizer reports an access past the end
  void* q = nullptr;
  if (posix_memalign(&q, 256, bytes > 0 ? bytes : 1) != 0) return fail_with(cudaErrorMemoryAllocation);
  // fresh device memory is garbage: all bits set (NaN as floats), so that a read before a write shows
  std::memset(q, 0xff, bytes);
  std::lock_guard<std::mutex> lock(optune_emu::memory_mutex);
  optune_emu::allocations[q] = bytes;
  optune_emu::allocated += bytes;
  *p = q;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  std::lock_guard<std::mutex> lock(optune_emu::memory_mutex);
  const auto it = optune_emu::allocations.find(p);
  if (it == optune_emu::allocations.end()) return fail_with(cudaErrorInvalidValue);
  optune_emu::allocated -= it->second;
  optune_emu::allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *total_bytes = optune_emu::memory_total();
  *free_bytes = *total_bytes - optune_emu::memory_used();
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  if (bytes == 0) return cudaSuccess;
  optune_emu::enqueue(s, [dst, src, bytes] { std::memmove(dst, src, bytes); });
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t s) {
  if (width > dpitch || width > spitch) return fail_with(cudaErrorInvalidValue);
  optune_emu::enqueue(s, [=] {
    for (size_t r = 0; r < height; r++)
      std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
  });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) { return cudaMemsetAsync(p, value, bytes, nullptr); }
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  optune_emu::enqueue(s, [p, value, bytes] { std::memset(p, value, bytes); });
  return cudaSuccess;
}

// ---- streams, graphs, events ---------------------------------------------------------------------------------------
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (s && s->capturing) return fail_with(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (s == nullptr || s->capturing) return fail_with(cudaErrorStreamCaptureUnsupported);
  s->capturing = true;
  s->recorded.clear();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  if (s == nullptr || !s->capturing) return fail_with(cudaErrorInvalidValue);
  s->capturing = false;
  *g = new CUgraph_st{std::move(s->recorded)};
  s->recorded.clear();
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  *exec = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  for (const auto& op : exec->ops) optune_emu::enqueue(s, op);
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  optune_emu::enqueue(s, [e] { e->at = std::chrono::steady_clock::now(); });
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}
