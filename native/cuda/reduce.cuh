// Warp and block reductions shared by the kernels. Each sums in a fixed tree order, so a kernel's result does not
// change from run to run.
#pragma once
#include <cuda_runtime.h>

namespace optune::cuda {

template <class T>
__device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 values; the trailing __syncthreads lets the caller reuse it right away.
template <class T>
__device__ inline T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = lane < n_warps ? scratch[lane] : T(0);
  total = warp_sum(total);
  __syncthreads();
  return total;
}

// Calls f(j, z[j]) for every j in [lo, hi) of a 16-byte aligned row (lo a multiple of 4), this thread taking 4
// consecutive elements per load at float4 `first`, `first + step`, ... from lo's, several loads in flight: a pass
// that waited on one 4-byte load at a time ran at a fraction of the memory bandwidth (logits rows of 50k-150k).
template <class F>
__device__ inline void for_each_strided(const float* z, int lo, int hi, int first, int step, const F& f) {
  constexpr int kLoads = 4;  // loads issued before the first use
  const float4* z4 = reinterpret_cast<const float4*>(z);
  const int q1 = hi / 4;  // float4s [lo / 4, q1), then the elements [4 * q1, hi) one by one
  const auto use = [&](int q, const float4& x) {
    f(4 * q, x.x), f(4 * q + 1, x.y), f(4 * q + 2, x.z), f(4 * q + 3, x.w);
  };
  int q = lo / 4 + first;
  for (; q + (kLoads - 1) * step < q1; q += kLoads * step) {
    float4 x[kLoads];
#pragma unroll
    for (int b = 0; b < kLoads; b++) x[b] = z4[q + b * step];
#pragma unroll
    for (int b = 0; b < kLoads; b++) use(q + b * step, x[b]);
  }
  for (; q < q1; q += step) use(q, z4[q]);
  for (int j = max(lo, 4 * q1) + first; j < hi; j += step) f(j, z[j]);
}

// The whole row j < n, spread over the block's threads (one block per logits row).
template <class F>
__device__ inline void for_each_in_row(const float* z, int n, const F& f) {
  for_each_strided(z, 0, n, threadIdx.x, blockDim.x, f);
}

__device__ inline float block_max(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  v = warp_max(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = lane < n_warps ? scratch[lane] : -INFINITY;
  m = warp_max(m);
  __syncthreads();
  return m;
}

}  // namespace optune::cuda
