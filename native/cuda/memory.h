// Device memory for the CUDA backend, usable from plain C++ (no CUDA headers): device discovery, allocation with
// out-of-memory errors that state the sizes, host <-> device copies, and a move-only typed buffer. Every failure
// throws optune::Error; none aborts.
#pragma once
#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

namespace optune::cuda {

// Number of usable CUDA devices; 0 when there is none or no driver (never throws).
int device_count();
// The CUDA architectures this build holds code for, as CMake was given them ("80,90").
const char* build_archs();
// The device this process's CUDA calls go to (0 unless changed; CUDA_VISIBLE_DEVICES picks which GPU that is).
int current_device();
// Bytes of shared memory one block may opt into on the current device (99 KB on sm_86 / sm_89 / sm_120, 163-227 KB
// on data-center GPUs); asked once per device.
size_t block_smem_limit();
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"; throws when the device does not exist.
std::string device_description(int device);
// Name, compute capability and memory of a device (free memory for the current device only: asking another one
// would create a context there); throws when it does not exist.
struct DeviceProps {
  std::string name;
  int major = 0, minor = 0;
  size_t total_bytes = 0, free_bytes = 0;
  bool free_known = false;
  std::string unusable;  // why optune's kernels cannot run there (an old GPU, a build without its code); "" if they can
};
DeviceProps device_props(int device);
// Free and total bytes of the current device (cudaMemGetInfo).
void memory_info(size_t* free_bytes, size_t* total_bytes);
// Waits for all queued GPU work; reports an error raised by an earlier kernel.
void synchronize();

// `what` names the allocation in the out-of-memory message ("attention lse", "logprob logits chunk").
void* device_alloc(size_t bytes, const char* what);
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_device(void* dst, const void* src, size_t bytes);
void fill_zero(void* p, size_t bytes);

// n elements of T on the device, freed with the object.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n, const char* what = "buffer")
      : ptr_(static_cast<T*>(device_alloc(n * sizeof(T), what))), n_(n) {}
  explicit Buffer(const std::vector<T>& host, const char* what = "buffer") : Buffer(host.size(), what) {
    upload(host);
  }
  ~Buffer() { device_free(ptr_); }
  Buffer(Buffer&& o) noexcept : ptr_(o.ptr_), n_(o.n_) { o.ptr_ = nullptr, o.n_ = 0; }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      device_free(ptr_);
      ptr_ = o.ptr_, n_ = o.n_;
      o.ptr_ = nullptr, o.n_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host) { copy_to_device(ptr_, host.data(), std::min(host.size(), n_) * sizeof(T)); }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    copy_to_host(host.data(), ptr_, n_ * sizeof(T));
    return host;
  }
  void zero() { fill_zero(ptr_, n_ * sizeof(T)); }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

}  // namespace optune::cuda
