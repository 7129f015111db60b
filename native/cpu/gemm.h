// Row-major single-precision GEMM: C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C.
// op(X) is X or X^T. Goes to CBLAS (OpenBLAS) when the build found it, else to a built-in blocked, vectorized,
// OpenMP-parallel kernel. Both compute every element of C in a fixed order, so results do not depend on the thread
// count (the built-in kernel by construction; OpenBLAS splits the output, not the reduction).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace optune::cpu {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc);


// The built-in kernel, always compiled, so tests can compare it with BLAS.
void gemm_builtin(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc);

const char* blas_name();  // "openblas" | "builtin"

// An allocator that leaves new elements of resize() uninitialized, for packing buffers whose every element is
// written before it is read. With std::allocator a pooled buffer that grows again after a smaller use zeroes its
// new tail first: a memset on one thread per GEMM call, ~3% of a bf16 DPO step.
template <class T>
struct NoInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = NoInitAllocator<U>;
  };
  NoInitAllocator() = default;
  template <class U>
  NoInitAllocator(const NoInitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialization: no zeroing
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <class T>
using PackBuffer = std::vector<T, NoInitAllocator<T>>;

// op(B) [K, N] repacked once into zero-padded panels of 16 columns for many products with a few rows of A
// (token-by-token decoding), where a general GEMM would repack the weights on every call.
//   fp32: data [N/16][K][16].
//   bf16: pairs [N/16][K/2][16] — each a 32-bit pair of bf16 (k, k+1) per column, the operand layout of AVX512-BF16's
//         dot-product instruction (vdpbf16ps); half the bytes to stream per decode step, twice the FMAs per
//         instruction. Rounded to nearest even from fp32.
struct PackedB {
  static constexpr int kPanel = 16;
  int K = 0, N = 0;
  bool bf16 = false;
  PackBuffer<float> data;
  PackBuffer<uint32_t> pairs;
};
PackedB pack_b(const float* B, int ldb, int K, int N, bool trans_b, bool bf16 = false);
// The same into p's storage (capacity kept: no fresh pages when the same shapes are packed again).
void pack_b_into(PackedB& p, const float* B, int ldb, int K, int N, bool trans_b, bool bf16 = false);

// The product with op(A) and op(B) rounded to bf16 and fp32 accumulation (mixed-precision training on CPUs with
// AVX512-BF16: about 1.5-1.8x the fp32 GEMM rate per core). op(B) is packed on every call...
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
               int ldb, float beta, float* C, int ldc);
// ...or once, for many products with the same B (the LM head's chunks): op(B) [K, N] in bf16 panels, K in slices.
struct Bf16B {
  int K = 0, N = 0, slice = 0;
  std::vector<PackedB> slices;
};
inline size_t scratch_bytes(const Bf16B& b) {
  size_t n = 0;
  for (const PackedB& s : b.slices) n += s.pairs.capacity() * sizeof(uint32_t) + s.data.capacity() * sizeof(float);
  return n;
}
void pack_b_bf16(Bf16B& out, const float* B, int ldb, int K, int N, bool trans_b);  // reuses out's storage
void gemm_bf16(bool trans_a, int M, const float* A, int lda, const Bf16B& B, float alpha, float beta, float* C,
               int ldc);

// Scratch objects (pack storage) reused from call to call whatever thread makes the call, one per concurrent
// caller: reusing storage avoids the first-touch zeroing of fresh pages (~6% of a GPT-2 124M bf16 step), and a
// pool instead of thread_local keeps it to one copy however many worker threads the binding uses. An object
// holding more than kScratchKeepBytes is freed instead of kept, so a large model's packs do not stay resident
// between calls (its products are long enough for the page faults not to matter).
constexpr size_t kScratchKeepBytes = size_t(256) << 20;
template <class T>
class ScratchPool {
 public:
  class Lease {
   public:
    Lease(ScratchPool* pool, std::unique_ptr<T> item) : pool_(pool), item_(std::move(item)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (item_) pool_->put(std::move(item_));
    }
    T& operator*() { return *item_; }
    const T& operator*() const { return *item_; }
    T* operator->() { return item_.get(); }

   private:
    ScratchPool* pool_;
    std::unique_ptr<T> item_;
  };
  Lease get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return Lease(this, std::make_unique<T>());
    std::unique_ptr<T> item = std::move(free_.back());
    free_.pop_back();
    return Lease(this, std::move(item));
  }

 private:
  void put(std::unique_ptr<T> item) {
    if (scratch_bytes(*item) > kScratchKeepBytes) return;  // freed here
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(item));
  }
  std::mutex mu_;
  std::vector<std::unique_ptr<T>> free_;
};
ScratchPool<Bf16B>& bf16b_pool();

// gemm or gemm_bf16 (same arguments), for code that runs in either precision.
using GemmFn = void (*)(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int);
inline GemmFn gemm_for(bool bf16) { return bf16 ? static_cast<GemmFn>(gemm_bf16) : static_cast<GemmFn>(gemm); }

// C[M, N] = A[M, K] @ op(B). Every element is the same sequence of fused multiply-adds over K whatever M or the
// thread count, so a row's result does not depend on which other rows share the call. With a bf16-packed B the
// rows of A are rounded to bf16 too, and products accumulate in fp32.
void gemm_packed(int M, const float* A, int lda, const PackedB& B, float* C, int ldc);

// fp32 -> bf16 bits, round to nearest even (NaN stays NaN); bf16 bits -> fp32 (exact). Inline so loops vectorize.
inline uint16_t to_bf16(float x) {
  uint32_t u = __builtin_bit_cast(uint32_t, x);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);  // NaN stays a (quiet) NaN
}
inline float from_bf16(uint16_t h) { return __builtin_bit_cast(float, static_cast<uint32_t>(h) << 16); }
// Two values as one 32-bit bf16 pair: lo in the low half (the element of the even k).
inline uint32_t bf16_pair(float lo, float hi) {
  return static_cast<uint32_t>(to_bf16(lo)) | (static_cast<uint32_t>(to_bf16(hi)) << 16);
}

// Whether gemm_packed's bf16 path runs on AVX512-BF16 instructions in this build (else a portable loop that gives
// the same kind of result, slower than fp32).
bool bf16_native();

}  // namespace optune::cpu
