// The CUDA emulator itself (native/cuda_emu; built with OPTUNE_CUDA=EMU only): barriers, warp intrinsics, shared
// memory per block, the tensor-core instructions' fragment layouts (mma.cuh's comment), graphs, and the launches
// and allocations a GPU refuses.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "cuda/mma.cuh"
#include "cuda/reduce.cuh"
#include "testing.h"

namespace {

using optune::cuda::block_sum;
using optune::cuda::warp_sum;

template <class... P, class... A>
cudaError_t launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, A... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <class T>
T* device(size_t n) {
  T* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) testing::fail(__FILE__, __LINE__, "cudaMalloc");
  return p;
}

__global__ void block_sums(const float* x, float* out) {
  __shared__ float scratch[32];
  const float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  const float total = block_sum(v, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = total;
  out[gridDim.x + blockIdx.x * blockDim.x + threadIdx.x] = total;  // every thread gets it
}

TEST(block_sums_over_barriers_and_shuffles) {
  const int blocks = 3, threads = 1024;
  std::vector<float> x(blocks * threads);
  for (size_t i = 0; i < x.size(); i++) x[i] = static_cast<float>(i % 97) - 40.0f;
  float* dx = device<float>(x.size());
  float* dout = device<float>(blocks + x.size());
  cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
  CHECK(launch(block_sums, blocks, threads, 0, nullptr, dx, dout) == cudaSuccess);
  std::vector<float> out(blocks + x.size());
  cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost);
  for (int b = 0; b < blocks; b++) {
    double want = 0;
    for (int i = 0; i < threads; i++) want += x[b * threads + i];
    CHECK_CLOSE(out[b], want, 0, 0);
    for (int i = 0; i < threads; i++) CHECK(out[blocks + b * threads + i] == out[b]);
  }
  cudaFree(dx);
  cudaFree(dout);
}

// Per lane: shfl by index within 8-lane groups, shfl_up / shfl_down by 3, a ballot of odd lanes, syncthreads_or.
__global__ void warp_ops(int* out) {
  const int lane = threadIdx.x & 31;
  int* o = out + threadIdx.x * 6;
  o[0] = __shfl_sync(0xffffffffu, 100 + lane, 5, 8);
  o[1] = __shfl_up_sync(0xffffffffu, 100 + lane, 3);
  o[2] = __shfl_down_sync(0xffffffffu, 100 + lane, 3);
  o[3] = static_cast<int>(__ballot_sync(0xffffffffu, lane & 1));
  o[4] = __syncthreads_or(threadIdx.x == 37);
  o[5] = __syncthreads_or(0);
}

TEST(warp_intrinsics_follow_cuda) {
  const int threads = 64;
  int* d = device<int>(threads * 6);
  CHECK(launch(warp_ops, 1, threads, 0, nullptr, d) == cudaSuccess);
  std::vector<int> o(threads * 6);
  cudaMemcpy(o.data(), d, o.size() * 4, cudaMemcpyDeviceToHost);
  for (int t = 0; t < threads; t++) {
    const int lane = t & 31;
    CHECK(o[t * 6 + 0] == 100 + (lane & ~7) + 5);
    CHECK(o[t * 6 + 1] == 100 + (lane >= 3 ? lane - 3 : lane));
    CHECK(o[t * 6 + 2] == 100 + (lane + 3 < 32 ? lane + 3 : lane));
    CHECK(static_cast<unsigned>(o[t * 6 + 3]) == 0xaaaaaaaau);
    CHECK(o[t * 6 + 4] == 1);
    CHECK(o[t * 6 + 5] == 0);
  }
  cudaFree(d);
}

// Static shared memory belongs to the block: each block's thread 0 writes it, all its threads read it back.
__global__ void shared_per_block(int* out) {
  __shared__ int mine;
  if (threadIdx.x == 0) mine = 1000 + static_cast<int>(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = mine;
}

TEST(shared_memory_is_per_block) {
  int* d = device<int>(5 * 96);
  CHECK(launch(shared_per_block, 5, 96, 0, nullptr, d) == cudaSuccess);
  std::vector<int> o(5 * 96);
  cudaMemcpy(o.data(), d, o.size() * 4, cudaMemcpyDeviceToHost);
  for (int i = 0; i < 5 * 96; i++) CHECK(o[i] == 1000 + i / 96);
  cudaFree(d);
}

uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);  // the test's values are exact in bf16
}
uint32_t pair(float lo, float hi) { return bf16_bits(lo) | static_cast<uint32_t>(bf16_bits(hi)) << 16; }

// One warp: fragments of A (16 x 16) and B (16 x 8) built by the layout mma.cuh documents, D = A B; and the four
// ldmatrix registers of lane-ordered rows of a 16 x 16 tile, plain and transposed.
__global__ void mma_and_ldmatrix(const float* A, const float* B, float* D, const __nv_bfloat16* tile, uint32_t* ld) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  const uint32_t a[4] = {pair(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
                         pair(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                         pair(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                         pair(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
  const uint32_t b0 = pair(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
  const uint32_t b1 = pair(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
  float d[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  optune::cuda::mma_bf16_16816(d, a, b0, b1);
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
  // lanes 8j .. 8j+7 point at rows 0..7 of matrix j = the 8 x 8 block (j % 2, j / 2) of the tile
  const int j = lane / 8, r = lane % 8;
  const __nv_bfloat16* row = tile + ((j % 2) * 8 + r) * 16 + (j / 2) * 8;
  uint32_t plain[4], trans[4];
  optune::cuda::ldmatrix_x4(plain, row);
  optune::cuda::ldmatrix_x4_trans(trans, row);
  for (int k = 0; k < 4; k++) ld[lane * 8 + k] = plain[k], ld[lane * 8 + 4 + k] = trans[k];
}

TEST(mma_and_ldmatrix_fragments_follow_the_ptx_layouts) {
  std::vector<float> A(16 * 16), B(16 * 8);
  for (int i = 0; i < 256; i++) A[i] = static_cast<float>((i * 7) % 13) - 6.0f;
  for (int i = 0; i < 128; i++) B[i] = static_cast<float>((i * 5) % 11) * 0.25f - 1.0f;
  std::vector<uint16_t> tile(256);
  for (int i = 0; i < 256; i++) tile[i] = static_cast<uint16_t>(i);
  float* dA = device<float>(256);
  float* dB = device<float>(128);
  float* dD = device<float>(128);
  auto* dtile = device<__nv_bfloat16>(256);
  uint32_t* dld = device<uint32_t>(32 * 8);
  cudaMemcpy(dA, A.data(), 256 * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dB, B.data(), 128 * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dtile, tile.data(), 256 * 2, cudaMemcpyHostToDevice);
  CHECK(launch(mma_and_ldmatrix, 1, 32, 0, nullptr, static_cast<const float*>(dA), static_cast<const float*>(dB), dD,
               static_cast<const __nv_bfloat16*>(dtile), dld) == cudaSuccess);
  std::vector<float> D(128);
  std::vector<uint32_t> ld(32 * 8);
  cudaMemcpy(D.data(), dD, 128 * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(ld.data(), dld, ld.size() * 4, cudaMemcpyDeviceToHost);
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 8; n++) {
      double want = 0.5;
      for (int k = 0; k < 16; k++) want += A[m * 16 + k] * B[k * 8 + n];
      CHECK_CLOSE(D[m * 8 + n], want, 0, 0);
    }
  const auto element = [&](int j, int row, int col) {  // of matrix j
    return static_cast<uint32_t>(tile[((j % 2) * 8 + row) * 16 + (j / 2) * 8 + col]);
  };
  for (int lane = 0; lane < 32; lane++) {
    const int g = lane >> 2, t = lane & 3;
    for (int j = 0; j < 4; j++) {
      CHECK(ld[lane * 8 + j] == (element(j, g, 2 * t) | element(j, g, 2 * t + 1) << 16));
      CHECK(ld[lane * 8 + 4 + j] == (element(j, 2 * t, g) | element(j, 2 * t + 1, g) << 16));
    }
  }
  for (void* p : {static_cast<void*>(dA), static_cast<void*>(dB), static_cast<void*>(dD), static_cast<void*>(dtile),
                  static_cast<void*>(dld)})
    cudaFree(p);
}

__global__ void add_one(float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}

TEST(a_captured_stream_records_and_its_graph_replays) {
  cudaStream_t st = nullptr;
  CHECK(cudaStreamCreate(&st) == cudaSuccess);
  const int n = 100;
  float* d = device<float>(n);
  std::vector<float> h(n, 1.0f);
  cudaMemcpy(d, h.data(), n * 4, cudaMemcpyHostToDevice);
  CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  CHECK(launch(add_one, 2, 64, 0, st, d, n) == cudaSuccess);
  CHECK(cudaMemcpyAsync(h.data(), d, n * 4, cudaMemcpyDeviceToHost, st) == cudaSuccess);
  cudaGraph_t g = nullptr;
  CHECK(cudaStreamEndCapture(st, &g) == cudaSuccess);
  std::vector<float> now(n);
  cudaMemcpy(now.data(), d, n * 4, cudaMemcpyDeviceToHost);
  CHECK(now[0] == 1.0f && now[n - 1] == 1.0f);  // capturing ran nothing
  cudaGraphExec_t exec = nullptr;
  CHECK(cudaGraphInstantiate(&exec, g, 0) == cudaSuccess);
  CHECK(cudaGraphLaunch(exec, st) == cudaSuccess);
  CHECK(cudaGraphLaunch(exec, st) == cudaSuccess);
  CHECK(cudaStreamSynchronize(st) == cudaSuccess);
  for (int i = 0; i < n; i++) CHECK(h[i] == 3.0f);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
  cudaFree(d);
}

TEST(launches_and_allocations_a_gpu_refuses_are_refused) {
  float* d = device<float>(4);
  cudaGetLastError();
  CHECK(launch(add_one, 1, 2048, 0, nullptr, d, 4) == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);
  CHECK(launch(add_one, 0, 32, 0, nullptr, d, 4) == cudaErrorInvalidConfiguration);
  cudaGetLastError();
  // above 48 KB of dynamic shared memory only once the kernel is allowed it, and never above the device's 227 KB
  CHECK(launch(add_one, 1, 32, 64 * 1024, nullptr, d, 4) == cudaErrorInvalidValue);
  cudaGetLastError();
  CHECK(cudaFuncSetAttribute(add_one, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) == cudaSuccess);
  CHECK(launch(add_one, 1, 32, 64 * 1024, nullptr, d, 4) == cudaSuccess);
  CHECK(cudaFuncSetAttribute(add_one, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024) != cudaSuccess);
  cudaGetLastError();
  // fresh memory is garbage (NaN), and an allocation beyond the device's memory fails without throwing
  float* fresh = device<float>(8);
  float host[8];
  cudaMemcpy(host, fresh, sizeof(host), cudaMemcpyDeviceToHost);
  for (float v : host) CHECK(std::isnan(v));
  size_t free_bytes = 0, total = 0;
  CHECK(cudaMemGetInfo(&free_bytes, &total) == cudaSuccess && free_bytes < total);
  void* huge = nullptr;
  CHECK(cudaMalloc(&huge, total + 1) == cudaErrorMemoryAllocation && huge == nullptr);
  cudaGetLastError();
  cudaFree(fresh);
  cudaFree(d);
}

}  // namespace

// Thread i reads what thread i - 1 wrote, with no barrier between (a race on a GPU), and block b what block b - 1
// wrote to global memory: the default order happens to serve both, OPTUNE_EMU_ORDER=reverse does not (the reads see
// the previous launch's values), so the race shows (OPTUNE_EMU_ORDER=both would stop the process there, naming the
// kernel: tried by hand). The block sums (barriers and shuffles, no race) come out the same in every order.
__global__ void racy_neighbours(float* out, float* blocks_out, float base) {
  __shared__ float s[64];
  const int i = threadIdx.x;
  s[i] = base + i;
  out[blockIdx.x * 64 + i] = i > 0 ? s[i - 1] : base - 1;  // no __syncthreads before the read
  if (i == 0) blocks_out[blockIdx.x] = blockIdx.x > 0 ? blocks_out[blockIdx.x - 1] + 1 : base;
}

TEST(reverse_order_exposes_races_and_leaves_synchronized_kernels_alone) {
  float* out = device<float>(2 * 64);
  float* blocks_out = device<float>(2);
  auto run = [&](const char* order, float base, std::vector<float>& host, std::vector<float>& host_blocks) {
    setenv("OPTUNE_EMU_ORDER", order, 1);
    CHECK(launch(racy_neighbours, 2, 64, 0, nullptr, out, blocks_out, base) == cudaSuccess);
    unsetenv("OPTUNE_EMU_ORDER");
    host.resize(2 * 64), host_blocks.resize(2);
    cudaMemcpy(host.data(), out, host.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(host_blocks.data(), blocks_out, 2 * 4, cudaMemcpyDeviceToHost);
  };
  std::vector<float> fwd, fwd_blocks, rev, rev_blocks;
  run("forward", 0.0f, fwd, fwd_blocks);
  run("reverse", 100.0f, rev, rev_blocks);
  int fwd_right = 0, rev_right = 0;
  for (int i = 0; i < 128; i++) {
    fwd_right += fwd[i] == 0.0f + (i % 64) - 1;
    rev_right += rev[i] == 100.0f + (i % 64) - 1;
  }
  CHECK(fwd_right == 128);
  CHECK_MSG(rev_right < 128, "reverse order did not change what the racy reads see");
  CHECK(fwd_blocks[1] == 1.0f && rev_blocks[1] != 101.0f);  // block 1 ran before block 0 wrote

  const int threads = 1024;
  std::vector<float> x(2 * threads), a(2 + x.size()), b(2 + x.size());
  for (size_t i = 0; i < x.size(); i++) x[i] = std::sin(static_cast<float>(i));
  float* dx = device<float>(x.size());
  float* dsum = device<float>(2 + x.size());
  cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
  std::vector<float> c(a.size());  // "both": each launch run both ways and compared (a difference would abort)
  const std::vector<std::pair<const char*, std::vector<float>*>> runs = {
      {"forward", &a}, {"reverse", &b}, {"both", &c}};
  for (const auto& [order, host] : runs) {
    setenv("OPTUNE_EMU_ORDER", order, 1);
    CHECK(launch(block_sums, 2, threads, 0, nullptr, dx, dsum) == cudaSuccess);
    unsetenv("OPTUNE_EMU_ORDER");
    cudaMemcpy(host->data(), dsum, host->size() * 4, cudaMemcpyDeviceToHost);
  }
  CHECK(a == b && a == c);
  cudaFree(out), cudaFree(blocks_out), cudaFree(dx), cudaFree(dsum);
}

TEST_MAIN()
