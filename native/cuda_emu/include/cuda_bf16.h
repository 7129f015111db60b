// The CUDA emulator's cuda_bf16.h: bfloat16 as native/cuda uses it. A value is its 16 raw bits (the top half of an
// fp32), converted as the GPU does: fp32 -> bf16 rounds to nearest even, NaN becomes the canonical NaN 0x7fff (what
// cvt.rn.bf16.f32 writes); bf16 -> fp32 is exact. As in CUDA's host code, __nv_bfloat16 converts implicitly from
// and to float (no arithmetic operators: an expression on two values computes in float).
#pragma once
#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

namespace optune_emu {
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace optune_emu

struct __nv_bfloat16_raw {
  unsigned short x;
};
struct __nv_bfloat162_raw {
  unsigned short x, y;
};

struct alignas(2) __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;  // trivial: uninitialized, as CUDA's (arrays of it in __shared__ memory)
  // implicit, as in CUDA
  __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}                 // NOLINT
  __nv_bfloat16(float f) : __x(optune_emu::float_to_bf16_bits(f)) {}      // NOLINT
  operator __nv_bfloat16_raw() const { return {__x}; }                    // NOLINT
  operator float() const { return optune_emu::bf16_bits_to_float(__x); }  // NOLINT
};

struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
  __nv_bfloat162() = default;
  __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) : x(a), y(b) {}
  __nv_bfloat162(const __nv_bfloat162_raw& r) : x(__nv_bfloat16_raw{r.x}), y(__nv_bfloat16_raw{r.y}) {}  // NOLINT
  operator __nv_bfloat162_raw() const { return {x.__x, y.__x}; }                                          // NOLINT
};

static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "bf16: 2 bytes, as on the GPU");
static_assert(sizeof(__nv_bfloat162) == 4 && alignof(__nv_bfloat162) == 4, "bf16 pair: 4 bytes, as on the GPU");

using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return {__nv_bfloat16(a), __nv_bfloat16(a)}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return make_float2(v.x, v.y); }
inline float __low2float(__nv_bfloat162 v) { return v.x; }
inline float __high2float(__nv_bfloat162 v) { return v.y; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16_raw{bits}; }
