// Writing a kernel's fp32 result where its consumers want it: fp32, bf16 (round to nearest even, as cpu::to_bf16),
// or both. A producer that writes the bf16 operand of the next GEMM itself saves that GEMM a conversion pass (a read
// of 4 bytes and a write of 2 per element).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace optune::cuda {

// out[i] = y and/or out16[i] = bf16(y); either pointer may be null.
__device__ inline void store_out(float* out, uint16_t* out16, int64_t i, float y) {
  if (out) out[i] = y;
  if (out16) reinterpret_cast<__nv_bfloat16*>(out16)[i] = __float2bfloat16_rn(y);
}

// Two values as bf16 bits in one word, the first in the low half (memory order).
__device__ inline uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo (low half), .y = hi
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Elements i .. i + 3 (i % 4 == 0) in one access: a row kernel whose threads move 16 bytes per load keeps four times
// the bytes in flight of one that moves 4 (with a block per row and one load at a time, ~8 KB per SM: about half of
// what the memory bandwidth needs at its latency).
__device__ inline float4 load4(const float* p, int64_t i) { return *reinterpret_cast<const float4*>(p + i); }
__device__ inline void store_out4(float* out, uint16_t* out16, int64_t i, float4 y) {
  if (out) *reinterpret_cast<float4*>(out + i) = y;
  if (out16) *reinterpret_cast<uint2*>(out16 + i) = make_uint2(pack_bf16x2(y.x, y.y), pack_bf16x2(y.z, y.w));
}
// Whether a row kernel may take the 4-wide path: whole quads per row and every row start 16-byte aligned (8 for bf16).
inline bool quad_rows(int cols, const void* f32a, const void* f32b = nullptr, const void* f32c = nullptr,
                      const void* bf16 = nullptr) {
  const auto aligned = [](const void* p, uintptr_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; };
  return cols % 4 == 0 && aligned(f32a, 16) && aligned(f32b, 16) && aligned(f32c, 16) && aligned(bf16, 8);
}

}  // namespace optune::cuda
