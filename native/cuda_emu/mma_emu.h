// The CUDA emulator's tensor-core and asynchronous-copy instructions: the functions of native/cuda/mma.cuh with the
// same fragment layouts (see there), computed by exchanging the warp's registers (emu.h). The products of bf16
// values are exact in fp32; the sums run in k order in fp32, where the hardware's order and rounding differ a
// little (within the kernels' stated tolerances).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "emu.h"

namespace optune::cuda {

namespace emu_detail {
inline float bf16_bits_to_float(uint32_t bits16) {
  const uint32_t f = bits16 << 16;
  float v;
  std::memcpy(&v, &f, 4);
  return v;
}
// Element `half` (0: low 16 bits) of a register holding two bf16 values.
inline float half_of(uint64_t reg, int half) { return bf16_bits_to_float((reg >> (16 * half)) & 0xffffu); }
}  // namespace emu_detail

// d += a b over one 16 x 8 x 16 tile
inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  // the 32 lanes' registers, 6 x 32 bits each, in the exchange's 32 bytes per lane
  const auto& all = optune_emu::warp_exchange(0xffffffffu, mine, sizeof(mine));
  const auto reg = [&](int lane, int r) {
    uint32_t v;
    std::memcpy(&v, reinterpret_cast<const unsigned char*>(all.v[lane]) + 4 * r, 4);
    return static_cast<uint64_t>(v);
  };
  // A[row][k]: register (row >= 8) + 2 (k >= 8) of lane 4 (row % 8) + (k % 8) / 2, half k % 2
  const auto A = [&](int row, int k) {
    return emu_detail::half_of(reg(4 * (row % 8) + (k % 8) / 2, (row >= 8) + 2 * (k >= 8)), k % 2);
  };
  // B[k][n]: register 4 + (k >= 8) of lane 4 n + (k % 8) / 2, half k % 2
  const auto B = [&](int k, int n) { return emu_detail::half_of(reg(4 * n + (k % 8) / 2, 4 + (k >= 8)), k % 2); };
  const int lane = optune_emu::self().lane(), g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; i++) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float sum = 0;
    for (int k = 0; k < 16; k++) sum += A(row, k) * B(k, col);
    d[i] += sum;
  }
}

namespace emu_detail {
// ldmatrix of `count` 8 x 8 b16 matrices: lanes 8j .. 8j+7 give the rows of matrix j; each lane receives, of matrix
// j, row g, columns 2t and 2t+1 (trans: rows 2t and 2t+1 of column g).
inline void ldmatrix(uint32_t* r, int count, const __nv_bfloat16* p, bool trans) {
  const auto& all = optune_emu::warp_exchange(0xffffffffu, &p, sizeof(p));
  const int lane = optune_emu::self().lane(), g = lane >> 2, t = lane & 3;
  for (int j = 0; j < count; j++) {
    const auto row_ptr = [&](int row) {
      const __nv_bfloat16* q;
      std::memcpy(&q, all.v[8 * j + row], sizeof(q));
      return q;
    };
    uint16_t lo, hi;
    if (!trans) {
      std::memcpy(&lo, row_ptr(g) + 2 * t, 2);
      std::memcpy(&hi, row_ptr(g) + 2 * t + 1, 2);
    } else {
      std::memcpy(&lo, row_ptr(2 * t) + g, 2);
      std::memcpy(&hi, row_ptr(2 * t + 1) + g, 2);
    }
    r[j] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
  }
}
}  // namespace emu_detail

inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) { emu_detail::ldmatrix(r, 4, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) { emu_detail::ldmatrix(r, 4, p, true); }
inline void ldmatrix_x2_trans(uint32_t& b0, uint32_t& b1, const __nv_bfloat16* p) {
  uint32_t r[2];
  emu_detail::ldmatrix(r, 2, p, true);
  b0 = r[0];
  b1 = r[1];
}

// The copy happens at once: a wait or barrier after it finds it done, as the real one would.
inline void cp_async16(void* dst, const void* src, bool valid = true) {
  if (valid)
    std::memcpy(dst, src, 16);
  else
    std::memset(dst, 0, 16);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

}  // namespace optune::cuda
