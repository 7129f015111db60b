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
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "cuda/check.cuh"
#include "cuda/grid_barrier.cuh"
#include "cuda/lt_gemm.h"
#include "cuda/memory.h"
#include "cuda/persistent_step.h"
#include "cuda/sampler_kernels.cuh"

using bf16 = __nv_bfloat16;
using optune::rng_normal;
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
std::vector<float> normal_bf16(size_t n, uint64_t seed, float std) {  // values a bf16 holds exactly
  std::vector<float> v = normal(n, seed, std);
  for (float& x : v) x = round_bf16(x);
  return v;
}
std::vector<uint16_t> bits(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); i++) b[i] = to_bf16_bits(v[i]);
  return b;
}

// One layer on the host: GEMM weights and the cache hold bf16 values (as floats).
struct HostLayer {
  std::vector<float> ln1_w, ln1_b, w_qkv, b_qkv, w_o, b_o, ln2_w, ln2_b, w_fc, b_fc, w_proj, b_proj, k, v;
};
struct DeviceLayer {
  Buffer<float> ln1_w, ln1_b, b_qkv, b_o, ln2_w, ln2_b, b_fc, b_proj;
  Buffer<uint16_t> w_qkv, w_o, w_fc, w_proj, b_fc16, k, v;  // b_fc16: the bf16 bias of cuBLASLt's GELU epilogue
  gpu::StepLayer view() {
    const auto b = [](Buffer<uint16_t>& w) { return reinterpret_cast<bf16*>(w.data()); };
    return {ln1_w.data(), ln1_b.data(), b_qkv.data(), b_o.data(), ln2_w.data(), ln2_b.data(), b_fc.data(),
            b_proj.data(), b(w_qkv), b(w_o), b(w_fc), b(w_proj), b(k), b(v)};
  }
};

// GPT-2's initialization scale for the weights; norms' weights near 1; cached keys and values of the scale a
// layer's k and v have here.
HostLayer make_layer(int l) {
  const uint64_t seed = 1000 + 100 * l;
  const size_t cache = static_cast<size_t>(kRows) * kCap * kD;
  HostLayer h;
  h.ln1_w = normal(kD, seed, 0.1f, 1.0f), h.ln1_b = normal(kD, seed + 1, 0.1f);
  h.w_qkv = normal_bf16(static_cast<size_t>(kD) * 3 * kD, seed + 2, 0.02f), h.b_qkv = normal(3 * kD, seed + 3, 0.02f);
  h.w_o = normal_bf16(static_cast<size_t>(kD) * kD, seed + 4, 0.02f), h.b_o = normal(kD, seed + 5, 0.02f);
  h.ln2_w = normal(kD, seed + 6, 0.1f, 1.0f), h.ln2_b = normal(kD, seed + 7, 0.1f);
  h.w_fc = normal_bf16(static_cast<size_t>(kD) * kF, seed + 8, 0.02f), h.b_fc = normal(kF, seed + 9, 0.02f);
  h.w_proj = normal_bf16(static_cast<size_t>(kF) * kD, seed + 10, 0.02f), h.b_proj = normal(kD, seed + 11, 0.02f);
  h.k = normal_bf16(cache, seed + 12, 0.5f), h.v = normal_bf16(cache, seed + 13, 0.5f);
  return h;
}

double gelu_ref(double v) { return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// out[j] = bias[j] + sum_i in[i] w[i][j] in double (w [n_in, n_out] row-major: contiguous reads).
void matvec(std::vector<double>& out, const std::vector<float>& in, const std::vector<float>& w,
            const std::vector<float>& bias) {
  const size_t n_out = bias.size();
  out.assign(bias.begin(), bias.end());
  for (size_t i = 0; i < in.size(); i++)
    for (size_t j = 0; j < n_out; j++) out[j] += static_cast<double>(in[i]) * w[i * n_out + j];
}

void layernorm_bf16(std::vector<float>& a, const float* x, const std::vector<float>& w, const std::vector<float>& b) {
  double m = 0, var = 0;
  for (int i = 0; i < kD; i++) m += x[i];
  m /= kD;
  for (int i = 0; i < kD; i++) var += (x[i] - m) * (x[i] - m);
  const double rs = 1.0 / std::sqrt(var / kD + kEps);
  for (int i = 0; i < kD; i++) a[i] = round_bf16(static_cast<float>((x[i] - m) * rs * w[i] + b[i]));
}

// The layers on the CPU, row by row (a row attends only to its own cache slot): sums in double of the bf16
// operands; a, h, the attention output and the new cache entries rounded to bf16 as the GPU paths store them.
// Also kv0, the first layer's new cache entries ([rows][k then v]), and att_last, the last layer's attention output
// ([rows][d]): the final x alone hardly shows an error in the attention (its output is an average of ~130 random
// values, small next to x) or in q, k and v, while bf16 roundings that differ between paths move x by ~2e-3.
std::vector<float> reference(std::vector<float> x, const std::vector<HostLayer>& layers, const std::vector<int>& pos,
                             const std::vector<int>& slot, std::vector<float>& kv0, std::vector<float>& att_last) {
  kv0.assign(static_cast<size_t>(kRows) * 2 * kD, 0.0f);
  att_last.assign(static_cast<size_t>(kRows) * kD, 0.0f);
  const auto rows = [&](int r0, int r1) {
    std::vector<double> qkv, o, fc, proj;
    std::vector<float> a(kD), att(kD), h(kF);
    for (int r = r0; r < r1; r++) {
      float* xr = x.data() + static_cast<size_t>(r) * kD;
      for (const HostLayer& L : layers) {
        layernorm_bf16(a, xr, L.ln1_w, L.ln1_b);
        matvec(qkv, a, L.w_qkv, L.b_qkv);
        if (&L == &layers[0])
          for (int c = 0; c < 2 * kD; c++) kv0[static_cast<size_t>(r) * 2 * kD + c] = round_bf16(qkv[kD + c]);
        const size_t base = static_cast<size_t>(slot[r]) * kCap * kD;
        const auto key = [&](int j, int c) {
          return j == pos[r] ? static_cast<double>(round_bf16(static_cast<float>(qkv[kD + c])))
                             : L.k[base + j * kD + c];
        };
        const auto value = [&](int j, int c) {
          return j == pos[r] ? static_cast<double>(round_bf16(static_cast<float>(qkv[2 * kD + c])))
                             : L.v[base + j * kD + c];
        };
        for (int hd = 0; hd < kHeads; hd++) {
          std::vector<double> sc(pos[r] + 1);
          double mx = -INFINITY, sum = 0;
          for (int j = 0; j <= pos[r]; j++) {
            double d = 0;
            for (int c = hd * kHeadDim; c < (hd + 1) * kHeadDim; c++) d += static_cast<float>(qkv[c]) * key(j, c);
            sc[j] = d / std::sqrt(static_cast<double>(kHeadDim));
            mx = std::max(mx, sc[j]);
          }
          for (double& s : sc) sum += (s = std::exp(s - mx));
          for (int c = hd * kHeadDim; c < (hd + 1) * kHeadDim; c++) {
            double acc = 0;
            for (int j = 0; j <= pos[r]; j++) acc += sc[j] * value(j, c);
            att[c] = round_bf16(static_cast<float>(acc / sum));
          }
        }
        if (&L == &layers.back()) std::copy(att.begin(), att.end(), att_last.begin() + static_cast<size_t>(r) * kD);
        matvec(o, att, L.w_o, L.b_o);
        for (int j = 0; j < kD; j++) xr[j] += static_cast<float>(o[j]);
        layernorm_bf16(a, xr, L.ln2_w, L.ln2_b);
        matvec(fc, a, L.w_fc, L.b_fc);
        for (int j = 0; j < kF; j++) h[j] = round_bf16(static_cast<float>(gelu_ref(fc[j])));
        matvec(proj, h, L.w_proj, L.b_proj);
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

// Of the largest value. Differences in the sums' order round some bf16 values the other way. On the CPU, biases
// scaled by 1 + 1e-6 moved x by 2.1e-3, the last attention output by 6.9e-3 and the first layer's k and v by 2e-4;
// a K-slice of 8 missing from the last layer's MLP output moved x by 8.4e-2, and one missing from the first qkv
// moved its k and v by 0.35.
constexpr double kTolerance = 2e-2, kAttentionTolerance = 5e-2;

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

  // The model: layers made in parallel (the random numbers take a while), positions spread over the cache.
  std::vector<HostLayer> host(kLayers);
  {
    std::vector<std::thread> pool;
    for (int l = 0; l < kLayers; l++) pool.emplace_back([&host, l] { host[l] = make_layer(l); });
    for (auto& th : pool) th.join();
  }
  std::vector<DeviceLayer> dev(kLayers);
  std::vector<gpu::StepLayer> views(kLayers);
  for (int l = 0; l < kLayers; l++) {
    const HostLayer& h = host[l];
    DeviceLayer& d = dev[l];
    d.ln1_w = Buffer<float>(h.ln1_w), d.ln1_b = Buffer<float>(h.ln1_b), d.b_qkv = Buffer<float>(h.b_qkv);
    d.b_o = Buffer<float>(h.b_o), d.ln2_w = Buffer<float>(h.ln2_w), d.ln2_b = Buffer<float>(h.ln2_b);
    d.b_fc = Buffer<float>(h.b_fc), d.b_proj = Buffer<float>(h.b_proj);
    d.w_qkv = Buffer<uint16_t>(bits(h.w_qkv)), d.w_o = Buffer<uint16_t>(bits(h.w_o));
    d.w_fc = Buffer<uint16_t>(bits(h.w_fc)), d.w_proj = Buffer<uint16_t>(bits(h.w_proj));
    d.b_fc16 = Buffer<uint16_t>(bits(h.b_fc)), d.k = Buffer<uint16_t>(bits(h.k)), d.v = Buffer<uint16_t>(bits(h.v));
    views[l] = d.view();
  }
  std::vector<int> pos(kRows), slot(kRows);
  for (int r = 0; r < kRows; r++) pos[r] = kPrompt + (r * 37) % (kCap - kPrompt), slot[r] = (r * 5) % kRows;
  Buffer<int32_t> pos_dev(std::vector<int32_t>(pos.begin(), pos.end()));
  Buffer<int32_t> slot_dev(std::vector<int32_t>(slot.begin(), slot.end()));
  const std::vector<float> x0 = normal(static_cast<size_t>(kRows) * kD, 7, 1.0f);
  std::vector<float> want_kv0, want_att;
  const std::vector<float> want = reference(x0, host, pos, slot, want_kv0, want_att);
  double cache_mb = 0;
  for (const DeviceLayer& d : dev) cache_mb += 2.0 * d.k.size() * 2 / 1e6;
  std::printf("12 layers: %.0f MB of bf16 GEMM weights, %.0f MB of KV cache; rows at positions %d-%d (mean %.0f)\n",
              12.0 * 2 * (4.0 * kD * kD + 2.0 * kD * kF) / 1e6, cache_mb, *std::min_element(pos.begin(), pos.end()),
              *std::max_element(pos.begin(), pos.end()),
              std::accumulate(pos.begin(), pos.end(), 0.0) / kRows);

  Buffer<float> x0_dev(x0), x(x0.size());
  Buffer<uint16_t> a(static_cast<size_t>(kRows) * kD), att(a.size()), h(static_cast<size_t>(kRows) * kF);
  const auto reset_x = [&] {
    OPTUNE_CUDA_CHECK(cudaMemcpyAsync(x.data(), x0_dev.data(), x0.size() * 4, cudaMemcpyDeviceToDevice, st));
  };
  // att_dev: where the path left the last layer's attention output (bf16 [rows, d]).
  const auto check = [&](const std::string& what, const uint16_t* att_dev) {
    OPTUNE_CUDA_CHECK(cudaStreamSynchronize(st));
    const double err = relative_error(x.download(), want);
    const std::vector<uint16_t> k = dev[0].k.download(), v = dev[0].v.download();
    std::vector<float> kv0(want_kv0.size());
    for (int r = 0; r < kRows; r++)
      for (int c = 0; c < kD; c++) {
        const size_t at = (static_cast<size_t>(slot[r]) * kCap + pos[r]) * kD + c;
        kv0[static_cast<size_t>(r) * 2 * kD + c] = from_bf16_bits(k[at]);
        kv0[static_cast<size_t>(r) * 2 * kD + kD + c] = from_bf16_bits(v[at]);
      }
    const double err_kv = relative_error(kv0, want_kv0);
    std::vector<float> att_got;
    std::vector<uint16_t> att_bits(static_cast<size_t>(kRows) * kD);
    gpu::copy_to_host(att_bits.data(), att_dev, att_bits.size() * sizeof(uint16_t));
    for (uint16_t b : att_bits) att_got.push_back(from_bf16_bits(b));
    const double err_att = relative_error(att_got, want_att);
    const bool ok = err <= kTolerance && err_kv <= kTolerance && err_att <= kAttentionTolerance;
    std::printf("  %s: errors of the largest value: x %.2e, first layer's new k and v %.2e, last attention %.2e (%s)\n",
                what.c_str(), err, err_kv, err_att, ok ? "ok" : "WRONG");
    return ok;
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
    rows.pos = pos_dev.data(), rows.slot = slot_dev.data(), rows.n = kRows;
    const auto forward = [&] {
      for (int l = 0; l <= kLayers; l++) {
        const gpu::sampler::Partials proj_parts{l ? proj_out.data() : nullptr, l ? 1 : 0, 0};
        const DeviceLayer& d = dev[std::min(l, kLayers - 1)];  // after the last layer: its add (any norm weights)
        gpu::sampler::add_norm<bf16>(b16(a), x.data(), nullptr, l ? dev[l - 1].b_proj.data() : nullptr, proj_parts,
                                     d.ln1_w.data(), d.ln1_b.data(), kRows, kD, kEps, true, on);
        if (l == kLayers) break;
        DeviceLayer& L = dev[l];
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
  const std::string why = gpu::persistent_step_unsupported(shape, views);
  if (!why.empty()) {
    std::printf("persistent step: SKIPPED (%s)\n", why.c_str());
    return all_ok ? 0 : 1;
  }
  Buffer<unsigned long long> stamps(1 + kLayers * 16, "phase stamps");
  const gpu::StepSplit splits[] = {{0, 0, 0, 0, 0, true}, {1, 0, 0, 0, 0, true},  {1, 1, 4, 1, 4, true},
                                   {1, 2, 8, 2, 8, true}, {1, 2, 8, 2, 8, false}, {1, 3, 8, 1, 8, true},
                                   {2, 0, 0, 0, 0, false}, {2, 6, 16, 4, 16, true}, {2, 3, 12, 3, 12, true}};
  for (const gpu::StepSplit& asked : splits) {
    gpu::PersistentStep step(shape, views, kRows, asked);
    const gpu::StepSplit& sp = step.split();
    if (asked.blocks_per_sm > sp.blocks_per_sm) continue;  // does not fit
    const std::string name = "persistent, " + std::to_string(step.grid()) + " blocks, slices qkv " +
                             std::to_string(sp.s_qkv) + " o " + std::to_string(sp.s_o) + " fc " +
                             std::to_string(sp.s_fc) + " proj " + std::to_string(sp.s_proj) +
                             (sp.early ? ", early weights" : "") + (asked.s_qkv ? "" : " (its own choice)");
    const auto launch = [&] { step.run(x.data(), pos_dev.data(), slot_dev.data(), kRows, st, stamps.data()); };
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
