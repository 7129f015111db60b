// Benchmark and check of the persistent decode step (cuda/persistent_step.h) against the sampler's kernels (issue 5:
// bf16 sampling at >= 20x PyTorch eager, measured at ~12x with the kernels).
//
// Whether one persistent kernel beats the sampler's eight kernels a layer depends on numbers nobody has measured
// here: what a grid barrier costs, how fast a phase of GEMM tiles spread over all SMs runs, and how the attention
// fares with the few blocks per SM a persistent kernel keeps. This measures them, on random GPT-2 124M-shaped layers
// (d 768, 12 heads of 64, d_ff 3072, 12 layers: 170 MB of bf16 GEMM weights and 450 MB of bf16 KV cache, so both
// stream from memory as in a decode step), 64 rows at positions 64-191 of a 192-token cache (the sampling
// benchmark's 64-token prompts and 128 new tokens):
//   - kernels of grid barriers only (grid_barrier.cuh's, cooperative_groups'): the cost of one barrier;
//   - the layers on the sampler's default kernels (add_norm, cuBLASLt GEMMs with the GELU in the MLP input GEMM,
//     attention_decode), replayed from a CUDA graph: the peer, in the same process;
//   - the layers as one PersistentStep launch, over several work splits (blocks per SM, K-slices per GEMM, early
//     weight loads), each with the time of every phase (block 0's clock after each barrier).
// It prints microseconds per layer, and the errors of each path against a CPU reference of the same bf16 operands;
// exit status 1 when a path is wrong. The 11th session's H200 ran a layer in 43.6 us (Nsight) and a whole decode step
// in ~573 us. Needs a CUDA device of compute capability 8.0 or higher.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda/check.cuh"
#include "cuda/grid_barrier.cuh"
#include "cuda/lt_gemm.h"
#include "cuda/memory.h"
#include "cuda/persistent_step.h"
#include "cuda/sampler_kernels.cuh"
#include "bench/decode_layers_fixture.h"

using bf16 = __nv_bfloat16;
using optune::cuda::Buffer;
namespace gpu = optune::cuda;  // (cooperative_groups brings a namespace cuda of its own)

namespace {

constexpr int kRows = 64, kD = 768, kF = 3072, kLayers = 12, kHeads = 12, kHeadDim = kD / kHeads;
constexpr int kPrompt = 64, kCap = 192;  // cache rows per slot
constexpr float kEps = 1e-5f;
constexpr int kThreads = 128;  // the barrier kernels' blocks, as the persistent step's

// ---- grid barrier -----------------------------------------------------------------------------------------------

__global__ void barriers_kernel(unsigned* barrier, int n) {
  unsigned passed = 0;
  for (int i = 0; i < n; i++) gpu::grid_sync(barrier, passed);
}

// The same with cooperative_groups' grid sync, for comparison.
__global__ void cg_barriers_kernel(unsigned*, int n) {
  const cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  for (int i = 0; i < n; i++) grid.sync();
}

// ---- host side ----------------------------------------------------------------------------------------------------

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

int run() {
  if (gpu::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  std::printf("device: %s\n", gpu::device_description(0).c_str());
  int sms = 0, coop = 0;
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, 0));
  if (!coop) {
    std::printf("SKIPPED: the device has no cooperative launches\n");
    return 0;
  }
  cudaStream_t st;
  OPTUNE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Buffer<unsigned> barrier(2, "barrier");  // (grid_barrier.cuh)

  // The barrier alone: n barriers against none, per block count, grid_barrier.cuh's and cooperative_groups'.
  for (const bool own : {true, false}) {
    for (int per_sm : {1, 2}) {
      const int grid = sms * per_sm;
      const auto barriers = [&](int n) {
        OPTUNE_CUDA_CHECK(cudaMemsetAsync(barrier.data(), 0, 2 * sizeof(unsigned), st));
        unsigned* words = barrier.data();
        void* args[] = {&words, &n};
        void* kernel = own ? reinterpret_cast<void*>(barriers_kernel) : reinterpret_cast<void*>(cg_barriers_kernel);
        OPTUNE_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel, grid, kThreads, args, 0, st));
      };
      const int n = 2000;
      const double none = time_ms(st, 5, [&] { barriers(0); }), many = time_ms(st, 5, [&] { barriers(n); });
      std::printf("grid barrier (%s), %4d blocks of %d threads: %6.3f us each (a launch without any: %.2f us)\n",
                  own ? "grid_barrier.cuh" : "cooperative_groups", grid, kThreads, (many - none) * 1e3 / n, none * 1e3);
    }
  }

  // The model: positions spread over the cache, slots a permutation of the rows.
  std::vector<int> positions(kRows), slots(kRows);
  for (int r = 0; r < kRows; r++) positions[r] = kPrompt + (r * 37) % (kCap - kPrompt), slots[r] = (r * 5) % kRows;
  decode_fixture::Fixture fx({kRows, kD, kHeads, kHeadDim, kF, kRows, kCap, kEps}, kLayers, positions, slots);
  const std::vector<int>& pos = fx.pos;
  std::printf("%d layers: %.0f MB of bf16 GEMM weights, %.0f MB of KV cache; rows at positions %d-%d (mean %.0f)\n",
              kLayers, kLayers * 2 * (4.0 * kD * kD + 2.0 * kD * kF) / 1e6, kLayers * 2 * 2.0 * kRows * kCap * kD / 1e6,
              *std::min_element(pos.begin(), pos.end()), *std::max_element(pos.begin(), pos.end()),
              std::accumulate(pos.begin(), pos.end(), 0.0) / kRows);

  Buffer<float> x0_dev(fx.x0), x(fx.x0.size());
  Buffer<uint16_t> a(static_cast<size_t>(kRows) * kD), att(a.size()), h(static_cast<size_t>(kRows) * kF);
  const auto reset_x = [&] {
    OPTUNE_CUDA_CHECK(cudaMemcpyAsync(x.data(), x0_dev.data(), x.size() * 4, cudaMemcpyDeviceToDevice, st));
  };
  // att_dev: where the path left the last layer's attention output (bf16 [rows, d]).
  const auto check = [&](const std::string& what, const uint16_t* att_dev) {
    OPTUNE_CUDA_CHECK(cudaStreamSynchronize(st));
    const decode_fixture::Fixture::Errors e = fx.errors(x.data(), att_dev);
    std::printf("  %s: errors of the largest value: x %.2e, first layer's new k and v %.2e, last attention %.2e (%s)\n",
                what.c_str(), e.x, e.kv, e.att, e.ok() ? "ok" : "WRONG");
    return e.ok();
  };
  bool all_ok = true;
  const auto b16 = [](Buffer<uint16_t>& b) { return reinterpret_cast<bf16*>(b.data()); };

  // The peer: the sampler's default kernels for a decode step's layers (add_norm, cuBLASLt GEMMs, the GELU in the
  // MLP input GEMM, attention_decode), replayed from a CUDA graph with early launches where the GPU has them.
  {
    Buffer<unsigned char> workspace(size_t(32) << 20, "cuBLASLt workspace");
    gpu::LtGemms lt(st, workspace.data(), workspace.size());
    Buffer<float> qkv_out(static_cast<size_t>(kRows) * 3 * kD), o_out(static_cast<size_t>(kRows) * kD);
    Buffer<float> proj_out(static_cast<size_t>(kRows) * kD);
    const bool early = gpu::kernels_wait_when_early();
    const gpu::Launch on(st, early);
    gpu::sampler::Rows rows;
    rows.pos = fx.pos_dev.data(), rows.slot = fx.slot_dev.data(), rows.n = kRows;
    const auto forward = [&] {
      for (int l = 0; l <= kLayers; l++) {
        const gpu::sampler::Partials proj_parts{l ? proj_out.data() : nullptr, l ? 1 : 0, 0};
        // (after the last layer: its output's add, with any layer's norm weights)
        const decode_fixture::DeviceLayer& d = fx.dev[std::min(l, kLayers - 1)];
        gpu::sampler::add_norm<bf16>(b16(a), x.data(), nullptr, l ? fx.dev[l - 1].b_proj.data() : nullptr, proj_parts,
                                     d.ln1_w.data(), d.ln1_b.data(), kRows, kD, kEps, true, on);
        if (l == kLayers) break;
        decode_fixture::DeviceLayer& L = fx.dev[l];
        lt.mm(kRows, 3 * kD, kD, b16(a), b16(L.w_qkv), false, 0.0f, qkv_out.data(), 3 * kD);
        gpu::sampler::QkvRows in;
        in.q = qkv_out.data(), in.k = qkv_out.data() + kD, in.v = qkv_out.data() + 2 * kD;
        in.qs = in.ks = in.vs = 3 * kD;
        in.bq = L.b_qkv.data(), in.bk = L.b_qkv.data() + kD, in.bv = L.b_qkv.data() + 2 * kD;
        gpu::sampler::attention_decode<bf16>(b16(att), in, {b16(L.k), b16(L.v), kCap}, rows, kHeads, kHeads,
                                             kHeadDim, nullptr, on);
        lt.mm(kRows, kD, kD, b16(att), b16(L.w_o), false, 0.0f, o_out.data(), kD);
        gpu::sampler::add_norm<bf16>(b16(a), x.data(), nullptr, L.b_o.data(), {o_out.data(), 1, 0}, L.ln2_w.data(),
                                     L.ln2_b.data(), kRows, kD, kEps, true, on);
        lt.mm_bias_gelu(kRows, kF, kD, b16(a), b16(L.w_fc), false, b16(L.b_fc16), b16(h));
        lt.mm(kRows, kD, kF, b16(h), b16(L.w_proj), false, 0.0f, proj_out.data(), kD);
      }
    };
    reset_x();
    forward();  // makes cuBLASLt's plans before the capture
    all_ok &= check("kernels, eager", att.data());
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    OPTUNE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    forward();
    OPTUNE_CUDA_CHECK(cudaStreamEndCapture(st, &graph));
    OPTUNE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    reset_x();
    OPTUNE_CUDA_CHECK(cudaGraphLaunch(exec, st));
    all_ok &= check("kernels, graph", att.data());
    const double ms = time_ms(st, 50, [&] { OPTUNE_CUDA_CHECK(cudaGraphLaunch(exec, st)); });
    std::printf("kernels (the sampler's; graph%s): %6.2f us a layer\n", early ? ", early launches" : "",
                ms * 1e3 / kLayers);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }

  // The persistent step, over work splits (0: its own choice). 132 SMs on an H100 or H200; column tiles: qkv 36,
  // o-proj and proj 12, fc 48; times their K-slices.
  gpu::StepShape shape;
  shape.d = kD, shape.n_head = kHeads, shape.head_dim = kHeadDim, shape.d_ff = kF, shape.cap = kCap, shape.eps = kEps;
  const std::string why = gpu::persistent_step_unsupported(shape, fx.views);
  if (!why.empty()) {
    std::printf("persistent step: SKIPPED (%s)\n", why.c_str());
    return all_ok ? 0 : 1;
  }
  Buffer<unsigned long long> stamps(1 + kLayers * 16, "phase stamps");
  // Fields: blocks per SM, K-slices of qkv, o-proj, fc, proj, early weights, staged attention.
  const gpu::StepSplit splits[] = {
      {0, 0, 0, 0, 0, true, true},  {0, 0, 0, 0, 0, true, false}, {1, 0, 0, 0, 0, true, true},
      {1, 0, 0, 0, 0, true, false}, {1, 1, 4, 1, 4, true, true},  {1, 2, 8, 2, 8, true, true},
      {1, 3, 8, 1, 8, true, true},  {2, 0, 0, 0, 0, false, true}, {2, 6, 16, 4, 16, true, true},
      {2, 3, 12, 3, 12, true, true}};
  for (const gpu::StepSplit& asked : splits) {
    gpu::PersistentStep step(shape, fx.views, kRows, asked);
    const gpu::StepSplit& sp = step.split();
    if (asked.blocks_per_sm > sp.blocks_per_sm) continue;  // does not fit
    const std::string name = "persistent, " + std::to_string(step.grid()) + " blocks, slices qkv " +
                             std::to_string(sp.s_qkv) + " o " + std::to_string(sp.s_o) + " fc " +
                             std::to_string(sp.s_fc) + " proj " + std::to_string(sp.s_proj) +
                             (sp.early ? ", early weights" : "") +
                             (sp.staged_attention ? ", staged attention" : ", attend_head") +
                             (asked.s_qkv ? "" : " (its own slices)");
    const auto launch = [&] { step.run(x.data(), fx.pos_dev.data(), fx.slot_dev.data(), kRows, st, stamps.data()); };
    reset_x();
    launch();
    all_ok &= check(name, step.attention_output());
    const double ms = time_ms(st, 50, launch);
    // Phase times of the last launch, averaged over the layers (block 0's clock after each barrier).
    const std::vector<std::string> names = step.phase_names();
    const std::vector<unsigned long long> t = stamps.download();
    std::string phases;
    for (size_t p = 0; p < names.size(); p++) {
      double ns = 0;
      for (int l = 0; l < kLayers; l++) {
        const size_t i = 1 + l * names.size() + p;
        ns += static_cast<double>(t[i] - t[i - 1]);
      }
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s%s %.1f", p ? ", " : "", names[p].c_str(), ns / kLayers / 1e3);
      phases += buf;
    }
    std::printf("%s: %6.2f us a layer (phases, us: %s)\n", name.c_str(), ms * 1e3 / kLayers, phases.c_str());
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
