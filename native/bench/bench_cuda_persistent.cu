// Probe for a persistent decode step (issue 5: bf16 sampling at >= 20x PyTorch eager, measured at ~12x).
//
// Why: on an H200 a GPT-2 124M decode layer at 64 rows is eight kernels of 3-11 us, 43.6 us in all, with no idle
// time between them in the replayed graph (Nsight, 11th session); its 14 MB of bf16 weights would take ~3 us at the
// memory's bandwidth. Each kernel pays its ramp-up and drain, and each runs its GEMM on a few dozen SMs. One kernel
// whose blocks stay resident could run the same work as phases over every SM, separated by grid-wide barriers, and
// load the next phase's weights before the barrier. Whether that pays depends on two numbers nobody has measured
// here: what a grid barrier costs, and how fast a phase of GEMM tiles spread over all SMs runs. This probe measures
// both before the sampler is rewritten around them.
//
// What it runs, on random GPT-2 124M-shaped weights (d 768, d_ff 3072, 12 layers: 113 MB of bf16 GEMM weights, more
// than L2 holds, so they stream from memory as in a decode step), 64 rows:
//   - the MLP half of 12 decode layers (x += proj(gelu(fc(layernorm(x))))) as one cooperative kernel: phases norm |
//     fc (+ bias + GELU) | proj in K-slices, the slices added by the next norm; several work splits;
//   - the same math as the sampler's default kernels (add_norm, cuBLASLt's GELU GEMM, cuBLASLt's GEMM), replayed
//     from a CUDA graph, with early launches where the GPU has them: the peer in the same process;
//   - a kernel of grid barriers only: the cost of one barrier.
// It prints microseconds per layer (the MLP half: 4 of a layer's 8 kernels, 18.6 us of 43.6 on the H200) and the
// largest error of each path's result against a CPU reference of the same bf16 operands. Exit status 1 when a path
// is wrong. Needs a CUDA device of compute capability 8.0 or higher.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "cuda/check.cuh"
#include "cuda/decode_gemm_tile.cuh"
#include "cuda/lt_gemm.h"
#include "cuda/memory.h"
#include "cuda/reduce.cuh"
#include "cuda/sampler_kernels.cuh"

using namespace optune;
using namespace optune::cuda::decode_tile;
using cuda::Buffer;

namespace {

constexpr int kRows = 64, kD = 768, kF = 3072, kLayers = 12;
constexpr float kEps = 1e-5f;
constexpr int kNormPer = 8;  // elements of a row per thread in the norm phase: rows up to kThreads * 8 wide
static_assert(kD <= kThreads * kNormPer, "a norm row fits the block's registers");

// ---- grid barrier -----------------------------------------------------------------------------------------------

// Two counters in device memory, zeroed before each launch.
struct Barrier {
  unsigned* count;       // blocks arrived at the current barrier
  unsigned* generation;  // barriers completed
};

// Every block waits here until all have arrived; each block's writes before it are visible to every block after
// it (the fences around the arrival, as cooperative_groups' grid sync does). The blocks must all be resident: a
// cooperative launch guarantees it or fails. `passed`: the barriers this block has passed (kept by thread 0).
__device__ void grid_sync(const Barrier& b, unsigned& passed) {
  __syncthreads();
  if (threadIdx.x == 0) {
    passed++;
    __threadfence();
    if (atomicAdd(b.count, 1u) == gridDim.x - 1) {  // the last to arrive opens the barrier
      atomicExch(b.count, 0u);
      __threadfence();
      atomicExch(b.generation, passed);
    } else {
      while (*reinterpret_cast<volatile unsigned*>(b.generation) != passed) {
      }
    }
    __threadfence();
  }
  __syncthreads();
}

__global__ void barriers_kernel(Barrier b, int n) {
  unsigned passed = 0;
  for (int i = 0; i < n; i++) grid_sync(b, passed);
}

// ---- the MLP half of the decode layers as one kernel ------------------------------------------------------------

struct MlpLayer {
  const float *ln_w, *ln_b, *b_fc, *b_proj;
  const bf16 *w_fc, *w_proj;  // [d, d_ff] and [d_ff, d], row-major (GPT-2's Conv1D)
};

struct MlpStack {
  const MlpLayer* layers;
  float* x;          // [rows, d] residual stream
  bf16* a;           // [rows, d] layernorm(x)
  float* fc_part;    // [s_fc][rows, d_ff] the fc product's K-slices (s_fc > 1)
  bf16* h;           // [rows, d_ff] gelu(fc + b_fc)
  float* proj_part;  // [s_proj][rows, d] the proj product's K-slices
  int s_fc, s_proj;
  bool early;  // a block loads its first tile's weights of the next GEMM phase before the barrier
  Barrier barrier;
};

// A phase of GEMM tiles: C[rows, N] = A[rows, K] B[K, N] in `slices` K-slices, tile t = (columns (t % tiles_n) * 64,
// slice t / tiles_n); block b takes tiles b, b + grid, ...
struct GemmPhase {
  const bf16* A;
  const bf16* B;
  int N, K, slices;
  __device__ int tiles_n() const { return (N + kTileN - 1) / kTileN; }
  __device__ int tiles() const { return tiles_n() * slices; }
  __device__ void tile(int t, int& n0, int& slice, int& k_begin, int& k_end) const {
    n0 = (t % tiles_n()) * kTileN, slice = t / tiles_n();
    k_begin = slice * (K / slices), k_end = k_begin + K / slices;
  }
};

// The weights of this block's first tile of `g`, before the barrier that opens the phase.
__device__ void start_first_tile(const GemmPhase& g, bf16* smem) {
  if (blockIdx.x >= g.tiles()) return;
  int n0, slice, kb, ke;
  g.tile(blockIdx.x, n0, slice, kb, ke);
  start_tile<false>(smem, g.B, g.N, g.K, n0, kb, ke, true);
}

// Runs this block's tiles of `g`; store(slice, row, col, v0, v1) takes each pair of results.
template <class Store>
__device__ void run_phase(const GemmPhase& g, bf16* smem, bool first_started, const Store& store) {
  for (int t = blockIdx.x; t < g.tiles(); t += gridDim.x) {
    int n0, slice, kb, ke;
    g.tile(t, n0, slice, kb, ke);
    const bool started = first_started && t == static_cast<int>(blockIdx.x);  // start_first_tile's
    if (!started) start_tile<false>(smem, g.B, g.N, g.K, n0, kb, ke, false);
    float acc[4][2][4];
    run_tile<false>(acc, smem, g.A, g.B, kRows, g.N, g.K, n0, kb, ke);
    for_each_pair(acc, n0, kRows, g.N, [&](int row, int col, float v0, float v1) { store(slice, row, col, v0, v1); });
    __syncthreads();  // every warp is done with the stages before the next tile refills them
  }
}

__device__ inline float gelu_tanh(float v) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
}

// Rows of x: x += prev's b_proj + its proj slices (prev null: nothing to add), then a = layernorm(x) with cur's
// weights (cur null: none). A block per row. Data other blocks wrote goes through L2 (__ldcg: L1 is not coherent).
__device__ void norm_phase(const MlpStack& s, const MlpLayer* prev, const MlpLayer* cur, float* scratch) {
  for (int r = blockIdx.x; r < kRows; r += gridDim.x) {
    float* x = s.x + r * kD;
    float v[kNormPer];
#pragma unroll
    for (int j = 0; j < kNormPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      v[j] = i < kD ? __ldcg(x + i) : 0.0f;
    }
    if (prev) {
#pragma unroll
      for (int j = 0; j < kNormPer; j++) {
        const int i = threadIdx.x + j * kThreads;
        if (i >= kD) continue;
        float add = prev->b_proj[i];
        for (int p = 0; p < s.s_proj; p++) add += __ldcg(s.proj_part + (static_cast<int64_t>(p) * kRows + r) * kD + i);
        v[j] += add;
        __stcg(x + i, v[j]);
      }
    }
    if (!cur) continue;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kNormPer; j++) sum += v[j];
    const float m = optune::cuda::block_sum(sum, scratch) / kD;
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kNormPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      const float c = i < kD ? v[j] - m : 0.0f;
      ss += c * c;
    }
    const float rs = rsqrtf(optune::cuda::block_sum(ss, scratch) / kD + kEps);
#pragma unroll
    for (int j = 0; j < kNormPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      if (i < kD) s.a[r * kD + i] = __float2bfloat16_rn((v[j] - m) * rs * cur->ln_w[i] + cur->ln_b[i]);
    }
  }
}

// h = gelu(b_fc + the fc slices), over the grid (only when fc is split).
__device__ void gelu_phase(const MlpStack& s, const MlpLayer& layer) {
  const int64_t n = static_cast<int64_t>(kRows) * kF;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    float v = layer.b_fc[i % kF];
    for (int p = 0; p < s.s_fc; p++) v += __ldcg(s.fc_part + p * n + i);
    s.h[i] = __float2bfloat16_rn(gelu_tanh(v));
  }
}

__global__ void __launch_bounds__(kThreads) mlp_stack_kernel(MlpStack s) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  __shared__ float scratch[32];
  unsigned passed = 0;
  for (int l = 0; l < kLayers; l++) {
    const MlpLayer& layer = s.layers[l];
    const GemmPhase fc{s.a, layer.w_fc, kF, kD, s.s_fc}, proj{s.h, layer.w_proj, kD, kF, s.s_proj};
    if (s.early) start_first_tile(fc, smem);
    norm_phase(s, l ? &s.layers[l - 1] : nullptr, &layer, scratch);
    grid_sync(s.barrier, passed);
    if (s.s_fc == 1) {
      run_phase(fc, smem, s.early, [&](int, int row, int col, float v0, float v1) {
        const int64_t i = static_cast<int64_t>(row) * kF + col;
        *reinterpret_cast<__nv_bfloat162*>(s.h + i) =
            __floats2bfloat162_rn(gelu_tanh(v0 + layer.b_fc[col]), gelu_tanh(v1 + layer.b_fc[col + 1]));
      });
    } else {
      run_phase(fc, smem, s.early, [&](int slice, int row, int col, float v0, float v1) {
        __stcg(reinterpret_cast<float2*>(s.fc_part + (static_cast<int64_t>(slice) * kRows + row) * kF + col),
               make_float2(v0, v1));
      });
      grid_sync(s.barrier, passed);
      gelu_phase(s, layer);
    }
    if (s.early) start_first_tile(proj, smem);
    grid_sync(s.barrier, passed);
    run_phase(proj, smem, s.early, [&](int slice, int row, int col, float v0, float v1) {
      __stcg(reinterpret_cast<float2*>(s.proj_part + (static_cast<int64_t>(slice) * kRows + row) * kD + col),
             make_float2(v0, v1));
    });
    grid_sync(s.barrier, passed);
  }
  norm_phase(s, &s.layers[kLayers - 1], nullptr, scratch);  // the last layer's output into x
}

// ---- host side ----------------------------------------------------------------------------------------------------

uint16_t to_bf16_bits(float f) {  // round to nearest even (the weights are finite)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16_bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float round_bf16(float f) { return from_bf16_bits(to_bf16_bits(f)); }

std::vector<float> normal(size_t n, uint64_t seed, float std, float mean = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) v[i] = mean + std * static_cast<float>(rng_normal(seed, 0, i));
  return v;
}

// One layer's parameters on the host (GEMM weights already rounded to bf16) and on the device.
struct HostLayer {
  std::vector<float> ln_w, ln_b, w_fc, b_fc, w_proj, b_proj;
};
struct DeviceLayer {
  Buffer<float> ln_w, ln_b, b_fc, b_proj;
  Buffer<uint16_t> w_fc, w_proj, b_fc16;  // b_fc16: the bf16 bias cuBLASLt's GELU epilogue takes
};

std::vector<uint16_t> bits(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); i++) b[i] = to_bf16_bits(v[i]);
  return b;
}

double gelu_ref(double v) { return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// The MLP half of the layers on the CPU: sums in double of the bf16 operands; a and h rounded to bf16 as the GPU
// paths store them.
std::vector<float> reference(std::vector<float> x, const std::vector<HostLayer>& layers) {
  const auto rows = [&](int r0, int r1) {
    std::vector<double> fc(kF), proj(kD);
    std::vector<float> a(kD), h(kF);
    for (int r = r0; r < r1; r++) {
      float* xr = x.data() + static_cast<size_t>(r) * kD;
      for (const HostLayer& L : layers) {
        double m = 0, var = 0;
        for (int i = 0; i < kD; i++) m += xr[i];
        m /= kD;
        for (int i = 0; i < kD; i++) var += (xr[i] - m) * (xr[i] - m);
        const double rs = 1.0 / std::sqrt(var / kD + kEps);
        for (int i = 0; i < kD; i++) a[i] = round_bf16(static_cast<float>((xr[i] - m) * rs * L.ln_w[i] + L.ln_b[i]));
        std::copy(L.b_fc.begin(), L.b_fc.end(), fc.begin());
        for (int i = 0; i < kD; i++)  // row by row of the weights: contiguous reads
          for (int j = 0; j < kF; j++) fc[j] += static_cast<double>(a[i]) * L.w_fc[static_cast<size_t>(i) * kF + j];
        for (int j = 0; j < kF; j++) h[j] = round_bf16(static_cast<float>(gelu_ref(fc[j])));
        std::copy(L.b_proj.begin(), L.b_proj.end(), proj.begin());
        for (int i = 0; i < kF; i++)
          for (int j = 0; j < kD; j++) proj[j] += static_cast<double>(h[i]) * L.w_proj[static_cast<size_t>(i) * kD + j];
        for (int j = 0; j < kD; j++) xr[j] += static_cast<float>(proj[j]);
      }
    }
  };
  const int n_threads = std::max(1, std::min<int>(kRows, static_cast<int>(std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  for (int t = 0; t < n_threads; t++) pool.emplace_back(rows, kRows * t / n_threads, kRows * (t + 1) / n_threads);
  for (auto& th : pool) th.join();
  return x;
}

// Largest |got - want| over the largest |want|.
double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); i++) {
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return std::isfinite(err) ? err / scale : INFINITY;
}

// Milliseconds per call of fn over `reps` calls after one warm-up, by events on `st`.
template <class F>
double time_ms(cudaStream_t st, int reps, const F& fn) {
  cudaEvent_t e0, e1;
  OPTUNE_CUDA_CHECK(cudaEventCreate(&e0));
  OPTUNE_CUDA_CHECK(cudaEventCreate(&e1));
  fn();
  OPTUNE_CUDA_CHECK(cudaEventRecord(e0, st));
  for (int i = 0; i < reps; i++) fn();
  OPTUNE_CUDA_CHECK(cudaEventRecord(e1, st));
  OPTUNE_CUDA_CHECK(cudaEventSynchronize(e1));
  float ms = 0;
  OPTUNE_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / reps;
}

constexpr double kTolerance = 2e-2;  // bf16 a and h may round differently when the sums' order differs

struct Split {
  int blocks_per_sm, s_fc, s_proj;
  bool early;
};

int run() {
  if (cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  std::printf("device: %s\n", cuda::device_description(0).c_str());
  int sms = 0, coop = 0;
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, 0));
  if (!coop) {
    std::printf("SKIPPED: the device has no cooperative launches\n");
    return 0;
  }
  cudaStream_t st;
  OPTUNE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Buffer<unsigned> barrier_words(2, "barrier");
  const Barrier barrier{barrier_words.data(), barrier_words.data() + 1};
  const auto reset_barrier = [&] { OPTUNE_CUDA_CHECK(cudaMemsetAsync(barrier_words.data(), 0, 8, st)); };

  // The barrier alone: n barriers against none, per block count.
  for (int per_sm : {1, 2}) {
    const int grid = sms * per_sm;
    const auto barriers = [&](int n) {
      reset_barrier();
      void* args[] = {const_cast<Barrier*>(&barrier), &n};
      OPTUNE_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(barriers_kernel), grid, kThreads, args,
                                                    0, st));
    };
    const int n = 2000;
    const double none = time_ms(st, 5, [&] { barriers(0); }), many = time_ms(st, 5, [&] { barriers(n); });
    std::printf("grid barrier, %4d blocks of %d threads: %6.3f us each (a launch without any: %.2f us)\n", grid,
                kThreads, (many - none) * 1e3 / n, none * 1e3);
  }

  // Weights: GPT-2's initialization scale; the norms' weights near 1.
  std::vector<HostLayer> host(kLayers);
  std::vector<DeviceLayer> dev(kLayers);
  std::vector<MlpLayer> views(kLayers);
  for (int l = 0; l < kLayers; l++) {
    HostLayer& h = host[l];
    const uint64_t seed = 100 + 10 * l;
    h.ln_w = normal(kD, seed, 0.1f, 1.0f), h.ln_b = normal(kD, seed + 1, 0.1f);
    h.w_fc = normal(static_cast<size_t>(kD) * kF, seed + 2, 0.02f), h.b_fc = normal(kF, seed + 3, 0.02f);
    h.w_proj = normal(static_cast<size_t>(kF) * kD, seed + 4, 0.02f), h.b_proj = normal(kD, seed + 5, 0.02f);
    for (float& w : h.w_fc) w = round_bf16(w);
    for (float& w : h.w_proj) w = round_bf16(w);
    DeviceLayer& d = dev[l];
    d.ln_w = Buffer<float>(h.ln_w), d.ln_b = Buffer<float>(h.ln_b), d.b_fc = Buffer<float>(h.b_fc);
    d.b_proj = Buffer<float>(h.b_proj), d.w_fc = Buffer<uint16_t>(bits(h.w_fc));
    d.w_proj = Buffer<uint16_t>(bits(h.w_proj)), d.b_fc16 = Buffer<uint16_t>(bits(h.b_fc));
    views[l] = {d.ln_w.data(), d.ln_b.data(), d.b_fc.data(), d.b_proj.data(),
                reinterpret_cast<const bf16*>(d.w_fc.data()), reinterpret_cast<const bf16*>(d.w_proj.data())};
  }
  Buffer<MlpLayer> layers(views, "layers");
  const std::vector<float> x0 = normal(static_cast<size_t>(kRows) * kD, 7, 1.0f);
  const std::vector<float> want = reference(x0, host);

  constexpr int kMaxSlices = 16;
  Buffer<float> x0_dev(x0), x(x0.size()), fc_part(static_cast<size_t>(kMaxSlices) * kRows * kF);
  Buffer<float> proj_part(static_cast<size_t>(kMaxSlices) * kRows * kD);
  Buffer<uint16_t> a(static_cast<size_t>(kRows) * kD), h(static_cast<size_t>(kRows) * kF);
  const auto reset_x = [&] {
    OPTUNE_CUDA_CHECK(cudaMemcpyAsync(x.data(), x0_dev.data(), x0.size() * 4, cudaMemcpyDeviceToDevice, st));
  };
  const auto check = [&](const char* what) {
    OPTUNE_CUDA_CHECK(cudaStreamSynchronize(st));
    const double err = relative_error(x.download(), want);
    std::printf("  %s: error %.2e of the largest |x| (%s)\n", what, err, err <= kTolerance ? "ok" : "WRONG");
    return err <= kTolerance;
  };
  bool all_ok = true;

  // The peer: the sampler's default kernels for the same math, replayed from a graph.
  {
    Buffer<unsigned char> workspace(size_t(32) << 20, "cuBLASLt workspace");
    cuda::LtGemms lt(st, workspace.data(), workspace.size());
    Buffer<float> proj(static_cast<size_t>(kRows) * kD);
    const bool early = cuda::kernels_wait_when_early();
    const auto a16 = reinterpret_cast<bf16*>(a.data());
    const auto h16 = reinterpret_cast<bf16*>(h.data());
    const auto forward = [&] {
      for (int l = 0; l <= kLayers; l++) {
        const cuda::sampler::Partials parts{l ? proj.data() : nullptr, l ? 1 : 0, 0};
        const int norm_of = std::min(l, kLayers - 1);  // after the last layer: the add, normalized by any weights
        cuda::sampler::add_norm<bf16>(a16, x.data(), nullptr, l ? dev[l - 1].b_proj.data() : nullptr, parts,
                                      dev[norm_of].ln_w.data(), dev[norm_of].ln_b.data(), kRows, kD, kEps, true,
                                      cuda::Launch(st, early));
        if (l == kLayers) break;
        lt.mm_bias_gelu(kRows, kF, kD, a16, reinterpret_cast<const bf16*>(dev[l].w_fc.data()), false,
                        reinterpret_cast<const bf16*>(dev[l].b_fc16.data()), h16);
        lt.mm(kRows, kD, kF, h16, reinterpret_cast<const bf16*>(dev[l].w_proj.data()), false, 0.0f, proj.data(), kD);
      }
    };
    reset_x();
    forward();  // makes cuBLASLt's plans before the capture
    all_ok &= check("kernels, eager");
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    OPTUNE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    forward();
    OPTUNE_CUDA_CHECK(cudaStreamEndCapture(st, &graph));
    OPTUNE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    reset_x();
    OPTUNE_CUDA_CHECK(cudaGraphLaunch(exec, st));
    all_ok &= check("kernels, graph");
    const double ms = time_ms(st, 50, [&] { OPTUNE_CUDA_CHECK(cudaGraphLaunch(exec, st)); });
    std::printf("kernels (add_norm, cuBLASLt GELU GEMM, cuBLASLt GEMM; graph%s): %6.2f us a layer\n",
                early ? ", early launches" : "", ms * 1e3 / kLayers);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }

  // The persistent kernel, over work splits.
  OPTUNE_CUDA_CHECK(cudaFuncSetAttribute(mlp_stack_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kSmemBytes)));
  int fits = 0;
  OPTUNE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fits, mlp_stack_kernel, kThreads, kSmemBytes));
  std::printf("persistent kernel: %d blocks of %d threads fit an SM (%zu bytes of shared memory each)\n", fits,
              kThreads, kSmemBytes);
  // (132 SMs on an H100 or H200: fc has 48 column tiles and proj 12, times their slices)
  const Split splits[] = {{1, 1, 4, true},  {1, 2, 8, true},  {1, 2, 8, false}, {1, 3, 12, true},
                          {2, 1, 12, true}, {2, 2, 16, true}, {2, 3, 12, true}, {2, 4, 16, true}};
  for (const Split& sp : splits) {
    if (sp.blocks_per_sm > fits) continue;
    MlpStack s{layers.data(), x.data(), reinterpret_cast<bf16*>(a.data()), fc_part.data(),
               reinterpret_cast<bf16*>(h.data()), proj_part.data(), sp.s_fc, sp.s_proj, sp.early, barrier};
    const int grid = sms * sp.blocks_per_sm;
    const auto launch = [&] {
      reset_barrier();
      void* args[] = {&s};
      OPTUNE_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(mlp_stack_kernel), grid, kThreads, args,
                                                    kSmemBytes, st));
    };
    const std::string name = "persistent, " + std::to_string(grid) + " blocks, fc in " + std::to_string(sp.s_fc) +
                             " slices, proj in " + std::to_string(sp.s_proj) + (sp.early ? ", early weights" : "");
    reset_x();
    launch();
    all_ok &= check(name.c_str());
    const double ms = time_ms(st, 50, launch);
    const int barriers = kLayers * (sp.s_fc > 1 ? 4 : 3);
    std::printf("%s: %6.2f us a layer (%d barriers a layer)\n", name.c_str(), ms * 1e3 / kLayers,
                barriers / kLayers);
  }
  OPTUNE_CUDA_CHECK(cudaStreamDestroy(st));
  return all_ok ? 0 : 1;
}

}  // namespace

int main() {
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_persistent: %s\n", e.what());
    return 1;
  }
}
