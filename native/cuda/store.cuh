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

}  // namespace optune::cuda
