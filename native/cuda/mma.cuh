// Building blocks shared by the bf16 kernels (attention_mma.cu, decode_gemm.cu): mma.sync.m16n8k16 with bf16
// operands and fp32 accumulation, ldmatrix loads of its fragments from shared memory, and cp.async copies of 16
// bytes from global into shared memory (sm_80 and up).
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 * g + t:
//   A (16 x 16, row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16 x 8, "col"):      b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C (16 x 8, fp32):       c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
// ldmatrix .x4 loads four 8 x 8 b16 matrices; lanes 8j .. 8j+7 give the addresses of matrix j's eight rows, and
// each lane receives, of matrix j, row g, columns 2t and 2t+1 (transposed with .trans: rows 2t, 2t+1 of column g).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#ifdef OPTUNE_CUDA_EMU
#include "cuda_emu/mma_emu.h"  // the same functions for the CPU emulator (native/cuda_emu)
#else
namespace optune::cuda {

// d += a b over one 16 x 8 x 16 tile
__device__ inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ inline uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

// 16 bytes from src (16-byte aligned) to dst in shared memory, without passing through registers; zeros instead when
// !valid (src is then not read, but must still be a valid address). Completes at cp_async_wait (this thread's copies).
__device__ inline void cp_async16(void* dst, const void* src, bool valid = true) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
// Closes this thread's copies issued since the last commit into one group.
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's groups are still in flight. Other threads' copies are visible only after a
// barrier that follows their own waits (__syncwarp, __syncthreads).
template <int N>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace optune::cuda
#endif  // OPTUNE_CUDA_EMU
