// A bf16 decode step's layers as one persistent kernel (persistent_step.h says why and what).
//
// Coherence: a block reads what other blocks wrote in an earlier phase of the same launch. L1 is not coherent
// between SMs, so those reads go through L2: cp.async.cg (the GEMM tiles' A), __ldcg (the slices the norms and the
// GELU phase add, x), or addresses this launch never read before. The attention reads q, k and v by the sampler's own
// loads, plain and read-only ones (Partials::sum), which could hit a line kept from an earlier layer's read of the
// same address: so every layer writes its qkv slices to a region of its own, written once and read once a launch.
// The barrier's fences (as cooperative_groups' grid sync) order each block's writes before every block's reads.
#include <algorithm>
#include <string>

#include "check.cuh"
#include "core/error.h"
#include "decode_attention.cuh"
#include "decode_gemm_tile.cuh"
#include "grid_barrier.cuh"
#include "persistent_step.h"
#include "reduce.cuh"

namespace optune::cuda {

namespace {

using namespace decode_tile;
using sampler::Partials;

constexpr int kNormPer = 8;  // elements of a row per thread in the norm phases: rows up to kThreads * 8 wide
constexpr int kMaxWidth = kThreads * kNormPer;
constexpr int kMaxHeadDim = 64;  // attend_head<bf16, 1>: one pair of dims per lane
constexpr int kMaxSlicesSummed = 8, kMaxSlicesResidual = 16;
// The staged attention: a (row, head)'s cached keys and values, head_dim 64, in the GEMM stages' shared memory at
// a row pitch of 72 elements (144 bytes: the 16-byte loads of 8 consecutive rows hit distinct banks).
constexpr int kStagedHeadDim = 64, kStagedPitch = 72;
constexpr int kMaxStagedKeys = static_cast<int>(kSmemBytes / (2 * kStagedPitch * sizeof(bf16)));  // 256
static_assert(kMaxStagedKeys % kThreads == 0, "each thread scores the same number of key slots");
static_assert(sampler::kAttnWarps * 32 == kThreads, "attend_head takes the whole block");

struct Args {
  const StepLayer* layers;
  int n_layer, rows, d, n_head, head_dim, d_ff, cap;
  float eps;
  float* x;
  bf16 *a, *att, *h;
  float *qkv_part, *o_part, *fc_part, *proj_part;
  const int32_t *pos, *slot;
  StepSplit split;
  unsigned* barrier;  // [0] arrivals, [1] barriers passed; zeroed before each launch
  unsigned long long* stamps;
};

// A phase of GEMM tiles: C[rows, N] = A[rows, K] B[K, N] in `slices` K-slices; tile t = (columns (t % tiles_n) * 64,
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
  if (static_cast<int>(blockIdx.x) >= g.tiles()) return;
  int n0, slice, kb, ke;
  g.tile(blockIdx.x, n0, slice, kb, ke);
  start_tile<false>(smem, g.B, g.N, g.K, n0, kb, ke, true);
}

// This block's tiles of `g` over `rows` rows; store(slice, row, col, v0, v1) takes each pair of results.
template <class Store>
__device__ void run_phase(const GemmPhase& g, int rows, bf16* smem, bool first_started, const Store& store) {
  for (int t = blockIdx.x; t < g.tiles(); t += gridDim.x) {
    int n0, slice, kb, ke;
    g.tile(t, n0, slice, kb, ke);
    const bool started = first_started && t == static_cast<int>(blockIdx.x);  // start_first_tile's
    if (!started) start_tile<false>(smem, g.B, g.N, g.K, n0, kb, ke, false);
    float acc[4][2][4];
    run_tile<false>(acc, smem, g.A, g.B, rows, g.N, g.K, n0, kb, ke);
    for_each_pair(acc, n0, rows, g.N, [&](int row, int col, float v0, float v1) { store(slice, row, col, v0, v1); });
    __syncthreads();  // every warp is done with the stages before the next tile refills them
  }
}

// The same, slice s's product into out + s * rows * N (row stride N).
__device__ void run_phase(const GemmPhase& g, int rows, bf16* smem, bool first_started, float* out) {
  run_phase(g, rows, smem, first_started, [&](int slice, int row, int col, float v0, float v1) {
    __stcg(reinterpret_cast<float2*>(out + (static_cast<int64_t>(slice) * rows + row) * g.N + col),
           make_float2(v0, v1));
  });
}

__device__ inline float gelu_tanh(float v) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi), as decode_kernels.cu's bias_gelu
  return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
}

// Element i of the sum of n slices of [rows, width], in slice order (through L2). Unrolled so that several loads
// are in flight at once (as Partials::sum): a loop that waited on each load in turn would pay the L2 latency n times.
__device__ inline float slices_sum(const float* p, int n, int64_t slice_stride, int64_t i) {
  float v = 0.0f;
#pragma unroll 4
  for (int s = 0; s < n; s++) v += __ldcg(p + s * slice_stride + i);
  return v;
}

// Rows of x: x += bias + the n slices of `parts` (bias null: nothing to add), then a = layernorm(x) with (w, b)
// (w null: none). A block per row; two-pass statistics in fp32, as the sampler's add_norm.
__device__ void norm_phase(const Args& s, const float* bias, const float* parts, int n, const float* w,
                           const float* b, float* scratch) {
  const int d = s.d;
  for (int r = blockIdx.x; r < s.rows; r += gridDim.x) {
    float* x = s.x + static_cast<int64_t>(r) * d;
    float v[kNormPer];
#pragma unroll
    for (int j = 0; j < kNormPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      v[j] = i < d ? __ldcg(x + i) : 0.0f;
    }
    if (bias) {  // x += bias + the slices in slice order, four slices' loads in flight at once
      float add[kNormPer];
#pragma unroll
      for (int j = 0; j < kNormPer; j++) {
        const int i = threadIdx.x + j * kThreads;
        add[j] = i < d ? bias[i] : 0.0f;
      }
      add_row_slices<kThreads, kNormPer, 4>(add, parts + static_cast<int64_t>(r) * d, n,
                                            static_cast<int64_t>(s.rows) * d, d,
                                            [](const float* a) { return __ldcg(a); });
#pragma unroll
      for (int j = 0; j < kNormPer; j++) {
        const int i = threadIdx.x + j * kThreads;
        if (i < d) v[j] += add[j], __stcg(x + i, v[j]);
      }
    }
    if (!w) continue;
    float m, rs;
    row_norm_stats<kThreads, kNormPer>(v, d, s.eps, true, scratch, m, rs);
#pragma unroll
    for (int j = 0; j < kNormPer; j++) {
      const int i = threadIdx.x + j * kThreads;
      if (i < d) s.a[static_cast<int64_t>(r) * d + i] = __float2bfloat16_rn((v[j] - m) * rs * w[i] + b[i]);
    }
  }
}

// The layer's q, k and v as the attention reads them: the qkv GEMM's slices (q | k | v side by side in a row of
// 3d, slice after slice) plus b_qkv.
__device__ sampler::QkvRows qkv_rows(const Args& s, const StepLayer& layer, const float* qkv_slices) {
  const int d = s.d;
  sampler::QkvRows in;
  in.q = qkv_slices, in.k = qkv_slices + d, in.v = qkv_slices + 2 * d;
  in.qs = in.ks = in.vs = 3 * d;
  in.pq = Partials{qkv_slices, s.split.s_qkv, static_cast<int64_t>(s.rows) * 3 * d};
  in.pk = in.pq.at(d), in.pv = in.pq.at(2 * d);
  in.bq = layer.b_qkv, in.bk = layer.b_qkv + d, in.bv = layer.b_qkv + 2 * d;
  return in;
}

// Every (row, head): sampler::attend_head reads q, k and v as the qkv slices (Partials) plus b_qkv, writes the row's
// k and v into the cache, and attends over it.
__device__ void attention_phase(const Args& s, const StepLayer& layer, const float* qkv_slices) {
  const sampler::QkvRows in = qkv_rows(s, layer, qkv_slices);
  sampler::Rows rows;
  rows.pos = s.pos, rows.slot = s.slot, rows.n = s.rows;
  const sampler::LayerCache<bf16> cache{layer.k_cache, layer.v_cache, s.cap};
  for (int item = blockIdx.x; item < s.rows * s.n_head; item += gridDim.x) {
    sampler::attend_head<bf16, 1>(s.att, in, cache, rows, item / s.n_head, item % s.n_head, s.n_head, s.n_head,
                                  s.head_dim, nullptr);
    __syncthreads();  // attend_head's shared arrays are reused by the next pair
  }
}

// ---- the attention, staged through shared memory ---------------------------------------------------------------
// attend_head runs with the few warps a persistent block has (4 of them, 1-2 blocks per SM) and waits on its cache
// loads chunk by chunk. Here a (row, head)'s cached keys and values [0, pos) go to shared memory by cp.async in one
// go, the first pair's before the barrier that opens the phase (earlier steps wrote them: they do not depend on the
// phase before), and the next pair's keys while this pair's values are read: a block waits on memory about once a
// pair. Exact softmax over at most kMaxStagedKeys keys; bf16 cache, head_dim 64, no RoPE (GPT-2).

struct StagedItem {
  int r, h, pos;
  const bf16 *k_rows, *v_rows;  // the cache's row 0 of this (slot, head); rows kv_dim apart
};

__device__ StagedItem staged_item(const Args& s, const StepLayer& layer, int item) {
  StagedItem it;
  it.r = item / s.n_head, it.h = item % s.n_head, it.pos = s.pos[it.r];
  const int64_t base = static_cast<int64_t>(s.slot[it.r]) * s.cap * s.d + it.h * kStagedHeadDim;
  it.k_rows = layer.k_cache + base, it.v_rows = layer.v_cache + base;
  return it;
}

// Rows [0, n) of one head (64 bf16 each, rows `stride` apart) into dst at kStagedPitch; one commit group.
__device__ void stage_rows(bf16* dst, const bf16* src, int64_t stride, int n) {
  for (int c = threadIdx.x; c < n * 8; c += kThreads) {
    const int j = c >> 3, part = (c & 7) * 8;
    cp_async16(dst + j * kStagedPitch + part, src + j * stride + part);
  }
  cp_async_commit();
}

__device__ void attention_phase_staged(const Args& s, const StepLayer& layer, const float* qkv_slices, bf16* smem,
                                       bool first_started) {
  const int d = s.d, items = s.rows * s.n_head;
  bf16* ks = smem;                                   // keys [kMaxStagedKeys][kStagedPitch]
  bf16* vs = smem + kMaxStagedKeys * kStagedPitch;   // values
  __shared__ float s_q[kStagedHeadDim], s_p[kMaxStagedKeys], s_acc[4][kStagedHeadDim], s_red[32];
  const sampler::QkvRows in = qkv_rows(s, layer, qkv_slices);
  const float scale = 1.0f / sqrtf(static_cast<float>(kStagedHeadDim));  // (as attend_head: 0.125 exactly)
  const int t = threadIdx.x;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const StagedItem it = staged_item(s, layer, item);
    if (item == static_cast<int>(blockIdx.x) && !first_started) {  // (later pairs': staged during the pair before)
      stage_rows(ks, it.k_rows, d, it.pos);
      stage_rows(vs, it.v_rows, d, it.pos);
    }
    // This row's q (fp32, shared) and its new key and value: into shared memory at row pos, then the cache.
    sampler::finish_head<bf16>(s_q, in, it.r, it.h, it.h, kStagedHeadDim, nullptr, it.pos, ks + it.pos * kStagedPitch,
                               vs + it.pos * kStagedPitch);
    cp_async_wait<1>();  // this pair's keys (the groups complete in order: keys, then values)
    __syncthreads();
    if (t < 2 * kStagedHeadDim) {
      const int64_t at = static_cast<int64_t>(it.pos) * d + (t % kStagedHeadDim);
      bf16* cache_row = const_cast<bf16*>(t < kStagedHeadDim ? it.k_rows : it.v_rows);
      cache_row[at] = (t < kStagedHeadDim ? ks : vs)[it.pos * kStagedPitch + t % kStagedHeadDim];
    }
    const int n_keys = it.pos + 1;
    float local_max = -INFINITY;
#pragma unroll
    for (int k = 0; k < kMaxStagedKeys / kThreads; k++) {
      const int j = t + k * kThreads;
      if (j >= n_keys) break;
      const uint4* row = reinterpret_cast<const uint4*>(ks + j * kStagedPitch);
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < 8; c++) {
        const uint4 raw = row[c];
        const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int i = 0; i < 4; i++)  // bf16 -> fp32: the bits to the top half (low half: lower index)
          dot += s_q[8 * c + 2 * i] * __uint_as_float(w[i] << 16) +
                 s_q[8 * c + 2 * i + 1] * __uint_as_float(w[i] & 0xffff0000u);
      }
      s_p[j] = dot * scale;
      local_max = fmaxf(local_max, dot * scale);
    }
    const float m = block_max(local_max, s_red);  // (its barriers also end every thread's reads of ks)
    const int next = item + gridDim.x;
    if (next < items) stage_rows(ks, staged_item(s, layer, next).k_rows, d, s.pos[next / s.n_head]);
    else cp_async_commit();  // (an empty group keeps the wait counts above and below uniform)
    float local_sum = 0.0f;
    for (int j = t; j < n_keys; j += kThreads) {
      const float e = expf(s_p[j] - m);
      s_p[j] = e, local_sum += e;
    }
    const float l = block_sum(local_sum, s_red);
    cp_async_wait<1>();  // this pair's values (the next pair's keys may still be on their way)
    __syncthreads();     // everyone's values, and s_p
    {
      const int pair = t % 32, group = t / 32;  // dims 2 pair, 2 pair + 1; keys group, group + 4, ...
      float a0 = 0.0f, a1 = 0.0f;
      for (int j = group; j < n_keys; j += 4) {
        const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vs + j * kStagedPitch + 2 * pair));
        a0 += s_p[j] * v.x, a1 += s_p[j] * v.y;
      }
      s_acc[group][2 * pair] = a0, s_acc[group][2 * pair + 1] = a1;
    }
    __syncthreads();  // s_acc; and every thread is done with vs
    if (t < kStagedHeadDim) {
      const float o = (s_acc[0][t] + s_acc[1][t] + s_acc[2][t] + s_acc[3][t]) / l;
      s.att[static_cast<int64_t>(it.r) * d + it.h * kStagedHeadDim + t] = __float2bfloat16_rn(o);
    }
    if (next < items) stage_rows(vs, staged_item(s, layer, next).v_rows, d, s.pos[next / s.n_head]);
    else cp_async_commit();
  }
  cp_async_wait<0>();
  __syncthreads();  // shared memory is free for the next phase
}

// Before the barrier that opens the staged attention: this block's first pair's cached keys and values.
__device__ void start_first_staged(const Args& s, const StepLayer& layer, bf16* smem) {
  if (static_cast<int>(blockIdx.x) >= s.rows * s.n_head) return;
  const StagedItem it = staged_item(s, layer, blockIdx.x);
  stage_rows(smem, it.k_rows, s.d, it.pos);
  stage_rows(smem + kMaxStagedKeys * kStagedPitch, it.v_rows, s.d, it.pos);
}

// (__launch_bounds__ with one block per SM leaves ptxas all 255 registers. The default held it to 168 with a
// 16-byte spill; now it uses 220, and two blocks of 220 still fit an SM's registers (shared memory allows no more).
// Eight slices a round in the norms took it to 255 with a spill, and one block per SM.)
__global__ void __launch_bounds__(kThreads, 1) persistent_step_kernel(Args s) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* smem = reinterpret_cast<bf16*>(smem_raw);
  __shared__ float scratch[32];
  const StepSplit& sp = s.split;
  const int d = s.d, F = s.d_ff, rows = s.rows;
  unsigned passed = 0;
  int stamp = 0;
  const auto barrier = [&] {
    grid_sync(s.barrier, passed);
    if (s.stamps && blockIdx.x == 0 && threadIdx.x == 0) {
      unsigned long long t;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      s.stamps[stamp] = t;
    }
    stamp++;
  };
  if (s.stamps && blockIdx.x == 0 && threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    s.stamps[stamp] = t;
  }
  stamp++;
  for (int l = 0; l < s.n_layer; l++) {
    const StepLayer& layer = s.layers[l];
    float* qkv_part = s.qkv_part + static_cast<int64_t>(l) * sp.s_qkv * rows * 3 * d;
    const GemmPhase qkv{s.a, layer.w_qkv, 3 * d, d, sp.s_qkv}, o{s.att, layer.w_o, d, d, sp.s_o};
    const GemmPhase fc{s.a, layer.w_fc, F, d, sp.s_fc}, proj{s.h, layer.w_proj, d, F, sp.s_proj};
    if (sp.early) start_first_tile(qkv, smem);
    norm_phase(s, l ? s.layers[l - 1].b_proj : nullptr, s.proj_part, sp.s_proj, layer.ln1_w, layer.ln1_b, scratch);
    barrier();
    run_phase(qkv, rows, smem, sp.early, qkv_part);
    if (sp.staged_attention && sp.early) start_first_staged(s, layer, smem);
    barrier();
    if (sp.staged_attention)
      attention_phase_staged(s, layer, qkv_part, smem, sp.early);
    else
      attention_phase(s, layer, qkv_part);
    if (sp.early) start_first_tile(o, smem);
    barrier();
    run_phase(o, rows, smem, sp.early, s.o_part);
    if (sp.early) start_first_tile(fc, smem);
    barrier();
    norm_phase(s, layer.b_o, s.o_part, sp.s_o, layer.ln2_w, layer.ln2_b, scratch);
    barrier();
    if (sp.s_fc == 1) {  // bias and GELU on the tiles' results: no phase of their own
      run_phase(fc, rows, smem, sp.early, [&](int, int row, int col, float v0, float v1) {
        *reinterpret_cast<__nv_bfloat162*>(s.h + static_cast<int64_t>(row) * F + col) =
            __floats2bfloat162_rn(gelu_tanh(v0 + layer.b_fc[col]), gelu_tanh(v1 + layer.b_fc[col + 1]));
      });
    } else {
      run_phase(fc, rows, smem, sp.early, s.fc_part);
      barrier();
      const int64_t n = static_cast<int64_t>(rows) * F;
      for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
           i += static_cast<int64_t>(gridDim.x) * kThreads)
        s.h[i] = __float2bfloat16_rn(gelu_tanh(layer.b_fc[i % F] + slices_sum(s.fc_part, sp.s_fc, n, i)));
    }
    if (sp.early) start_first_tile(proj, smem);
    barrier();
    run_phase(proj, rows, smem, sp.early, s.proj_part);
    barrier();
  }
  // the last layer's MLP output into x
  norm_phase(s, s.layers[s.n_layer - 1].b_proj, s.proj_part, sp.s_proj, nullptr, nullptr, scratch);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The most slices, up to `most`, that divide K into equal multiples of 8 and keep the tiles within `grid`.
int slices_for(int tiles_n, int K, int grid, int most) {
  int s = std::max(1, std::min(most, grid / std::max(1, tiles_n)));
  while (s > 1 && (K % s != 0 || (K / s) % 8 != 0)) s--;
  return s;
}

int device_attribute(cudaDeviceAttr attr) {
  int dev = 0, v = 0;
  OPTUNE_CUDA_CHECK(cudaGetDevice(&dev));
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&v, attr, dev));
  return v;
}

}  // namespace

std::string persistent_step_unsupported(const StepShape& c, const std::vector<StepLayer>& layers) {
  if (layers.empty()) return "no layers";
  if (c.d < 8 || c.d > kMaxWidth || c.d % 8) return "d_model " + std::to_string(c.d) + " (8 to 1024, a multiple of 8)";
  if (c.d_ff < 8 || c.d_ff % 8) return "d_ff " + std::to_string(c.d_ff) + " (a multiple of 8)";
  if (c.head_dim > kMaxHeadDim || c.head_dim % 2 || c.n_head * c.head_dim != c.d)
    return "heads of " + std::to_string(c.head_dim) + " (even, at most 64, n_head x head_dim = d_model)";
  for (const StepLayer& l : layers) {
    if (!l.ln1_w || !l.ln1_b || !l.b_qkv || !l.b_o || !l.ln2_w || !l.ln2_b || !l.b_fc || !l.b_proj)
      return "a layer without a bias or a LayerNorm weight";
    if (!aligned16(l.w_qkv) || !aligned16(l.w_o) || !aligned16(l.w_fc) || !aligned16(l.w_proj))
      return "GEMM weights not 16-byte aligned";
  }
  if (!device_attribute(cudaDevAttrCooperativeLaunch)) return "the GPU has no cooperative launches";
  return "";
}

PersistentStep::PersistentStep(const StepShape& shape, const std::vector<StepLayer>& layers, int max_rows,
                               const StepSplit& split)
    : shape_(shape), n_layer_(static_cast<int>(layers.size())), max_rows_(max_rows), split_(split) {
  const std::string why = persistent_step_unsupported(shape, layers);
  OPTUNE_CHECK(why.empty(), "persistent decode step: " + why);
  OPTUNE_CHECK(max_rows >= 1 && max_rows <= kDecodeGemmMaxRows,
               "persistent decode step: batches of 1 to 64 rows (got " + std::to_string(max_rows) + ")");
  OPTUNE_CUDA_CHECK(cudaFuncSetAttribute(persistent_step_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kSmemBytes)));
  int fits = 0;
  OPTUNE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fits, persistent_step_kernel, kThreads,
                                                                  kSmemBytes));
  OPTUNE_CHECK(fits >= 1, "persistent decode step: no block fits an SM");
  split_.blocks_per_sm = split.blocks_per_sm > 0 ? std::min(split.blocks_per_sm, fits) : std::min(fits, 2);
  grid_ = device_attribute(cudaDevAttrMultiProcessorCount) * split_.blocks_per_sm;
  const int d = shape.d, F = shape.d_ff, tiles_d = (d + kTileN - 1) / kTileN;
  const auto pick = [&](int given, int tiles_n, int K, int most) {
    if (given > 0) {
      OPTUNE_CHECK(K % given == 0 && (K / given) % 8 == 0,
                   "persistent decode step: " + std::to_string(given) + " slices of " + std::to_string(K) +
                       " (each a multiple of 8)");
      return given;
    }
    return slices_for(tiles_n, K, grid_, most);
  };
  split_.s_qkv = pick(split.s_qkv, (3 * d + kTileN - 1) / kTileN, d, kMaxSlicesSummed);
  split_.s_o = pick(split.s_o, tiles_d, d, kMaxSlicesResidual);
  split_.s_fc = pick(split.s_fc, (F + kTileN - 1) / kTileN, d, kMaxSlicesSummed);
  split_.s_proj = pick(split.s_proj, tiles_d, F, kMaxSlicesResidual);
  split_.staged_attention = split.staged_attention && shape.head_dim == kStagedHeadDim && shape.cap <= kMaxStagedKeys;
  const size_t R = max_rows;
  const auto floats = [&](size_t n, const char* what) {
    bytes_ += n * sizeof(float);
    return Buffer<float>(n, what);
  };
  const auto halves = [&](size_t n, const char* what) {
    bytes_ += n * sizeof(uint16_t);
    return Buffer<uint16_t>(n, what);
  };
  layers_ = Buffer<StepLayer>(layers, "persistent step layers");
  a_ = halves(R * d, "persistent step norm output");
  att_ = halves(R * d, "persistent step attention output");
  h_ = halves(R * F, "persistent step MLP activation");
  qkv_part_ = floats(static_cast<size_t>(n_layer_) * split_.s_qkv * R * 3 * d, "persistent step q|k|v slices");
  o_part_ = floats(split_.s_o * R * d, "persistent step attention projection slices");
  if (split_.s_fc > 1) fc_part_ = floats(split_.s_fc * R * F, "persistent step MLP input slices");
  proj_part_ = floats(split_.s_proj * R * d, "persistent step MLP output slices");
  barrier_ = Buffer<unsigned>(2, "persistent step barrier");
}

std::vector<std::string> PersistentStep::phase_names() const {
  std::vector<std::string> names = {"norm1", "qkv", "attention", "o-proj", "norm2"};
  if (split_.s_fc > 1)
    names.insert(names.end(), {"fc", "gelu"});
  else
    names.push_back("fc+gelu");
  names.push_back("proj");
  return names;
}

void PersistentStep::run(float* x, const int32_t* pos, const int32_t* slot, int rows, cudaStream_t st,
                         unsigned long long* stamps) {
  OPTUNE_CHECK(rows >= 1 && rows <= max_rows_, "persistent decode step: " + std::to_string(rows) +
                                                   " rows (made for up to " + std::to_string(max_rows_) + ")");
  Args s{};
  s.layers = layers_.data(), s.n_layer = n_layer_, s.rows = rows;
  s.d = shape_.d, s.n_head = shape_.n_head, s.head_dim = shape_.head_dim, s.d_ff = shape_.d_ff, s.cap = shape_.cap;
  s.eps = shape_.eps, s.x = x;
  s.a = reinterpret_cast<bf16*>(a_.data()), s.att = reinterpret_cast<bf16*>(att_.data());
  s.h = reinterpret_cast<bf16*>(h_.data());
  s.qkv_part = qkv_part_.data(), s.o_part = o_part_.data(), s.fc_part = fc_part_.data();
  s.proj_part = proj_part_.data(), s.pos = pos, s.slot = slot, s.split = split_;
  s.barrier = barrier_.data(), s.stamps = stamps;
  OPTUNE_CUDA_CHECK(cudaMemsetAsync(barrier_.data(), 0, 2 * sizeof(unsigned), st));
  cudaLaunchAttribute coop[1];
  coop[0].id = cudaLaunchAttributeCooperative;  // every block resident at once (the barriers), or the launch fails
  coop[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid_;
  cfg.blockDim = kThreads;
  cfg.dynamicSmemBytes = kSmemBytes;
  cfg.stream = st;
  cfg.attrs = coop;
  cfg.numAttrs = 1;
  OPTUNE_CUDA_CHECK(cudaLaunchKernelEx(&cfg, persistent_step_kernel, s));
}

}  // namespace optune::cuda
