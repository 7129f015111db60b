// Token picking on the device, with the CPU sampler's definitions (core/pick.cpp): greedy = argmax
// (lowest index on ties); otherwise a draw u = rng_uniform(seed, stream, step) inverts the cumulative distribution of
// exp((z - max) / T), over the vocabulary in index order when nothing is filtered, else over the candidates ordered
// by (logit desc, index asc), cut to top-k and then to the smallest prefix whose mass reaches top-p. The log-prob
// returned is under the unfiltered temperature-1 distribution over the whole vocabulary, also when draws stop at a
// vocabulary limit (Params::vocab below Params::full_vocab).
//
// One block of 1024 threads per row; the row's passes read it 16 bytes per load, several loads in flight per thread
// (the kernel measured 56 us of a 0.84 ms decode step on an H100 when each pass waited on one 4-byte load at a time).
// An unfiltered draw reads its row twice: the maximum, then the draw's segment sums and the log-prob's normalizer in
// one pass (three passes, the draw's with 4-byte loads, took 23.9 us on an H100 under Nsight; two took 19.0).
// A cumulative search runs in three levels:
// each warp sums a contiguous segment (sums in double, as the CPU), then in the warp whose segment holds the crossing
// each lane sums whole groups of 32 elements and one scan over the group sums finds the group, and one scan over that
// group's elements the element (walking the segment 32 elements at a time took a dependent scan per step, ~50 steps
// at V = 50257). Same order of elements as the CPU, different order of additions: a draw within rounding distance of
// a boundary can pick the neighbouring token. The order of a filtered draw comes from one cub radix sort of (row,
// logit) keys per step (stable, so equal logits keep index order). (Selecting a top-k's candidates, and drawing a
// top-p by mass in radix descents without an order, one block per row, ran 1.6-2.3x slower on an H200: RESULTS.md.)
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>

#include "check.cuh"
#include "core/error.h"
#include "core/rng.h"
#include "reduce.cuh"
#include "sampler_kernels.cuh"

namespace optune::cuda::sampler {

static constexpr int kPickThreads = 1024;
static constexpr int kPickWarps = kPickThreads / 32;
static constexpr unsigned kFull = 0xffffffffu;

// ---- decode rows and the active set ---------------------------------------------------------------------------------

__device__ inline bool slot_done(const State& s, int slot) {
  const int n = s.n_out[slot];
  return s.finished[slot] || n >= s.max_new || n == 0;  // n == 0: its first draw failed (non-finite logits)
}

// Row a of a decode step, one block each: thread 0 takes its slot, last token and position (moving the slot's length
// on), then the block writes the row's embedding. (As two kernels, the rows then their embeddings, the first cost a
// launch and ~3.5 us of a ~0.57 ms step on an H200.)
__global__ void decode_rows_kernel(float* x, const float* wte, const float* wpe, int32_t* tok, int32_t* pos,
                                   int32_t* slot, State s, int d, float embed_scale) {
  __shared__ int row_tok, row_pos;
  wait_for_previous_kernel();  // (a normal launch: returns at once)
  allow_next_kernel();
  const int a = blockIdx.x;
  if (threadIdx.x == 0) {
    int sl = s.R, t = 0, p = 0;  // rows past the active count: the padding slot
    if (a < s.ctl[0]) {
      sl = s.active[a];
      const int n = s.n_out[sl];
      t = n > 0 ? s.out_tok[static_cast<int64_t>(sl) * s.max_new + n - 1] : 0;
      p = s.len[sl];
      if (!slot_done(s, sl)) s.len[sl] += 1;  // the fed token joins the cache; a done slot rewrites a dead position
    }
    slot[a] = sl, tok[a] = t, pos[a] = p;
    row_tok = t, row_pos = p;
  }
  __syncthreads();
  embed_row(x + static_cast<int64_t>(a) * d, wte, wpe, row_tok, row_pos, d, embed_scale);
}

void decode_rows(float* x, const float* wte, const float* wpe, int32_t* tok, int32_t* pos, int32_t* slot,
                 const State& s, int n_rows, int d, float embed_scale, cudaStream_t st) {
  if (n_rows <= 0) return;
  decode_rows_kernel<<<n_rows, 256, 0, st>>>(x, wte, wpe, tok, pos, slot, s, d, embed_scale);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// One block: a stable compaction of the live slots, chunk by chunk (ballot + per-warp counts).
__global__ void compact_kernel(State s) {
  __shared__ int warp_count[kPickWarps];
  __shared__ int base;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) base = 0;
  __syncthreads();
  for (int c0 = 0; c0 < s.R; c0 += kPickThreads) {
    const int slot = c0 + threadIdx.x;
    const bool live = slot < s.R && !slot_done(s, slot);
    const unsigned ballot = __ballot_sync(kFull, live);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int off = base;
    for (int w = 0; w < warp; w++) off += warp_count[w];
    if (live) s.active[off + __popc(ballot & ((1u << lane) - 1u))] = slot;
    __syncthreads();
    if (threadIdx.x == 0)
      for (int w = 0; w < kPickWarps; w++) base += warp_count[w];
    __syncthreads();
  }
  if (threadIdx.x == 0) s.ctl[0] = base;
}

void compact_active(const State& s, cudaStream_t st) {
  compact_kernel<<<1, kPickThreads, 0, st>>>(s);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- cumulative searches --------------------------------------------------------------------------------------------

__device__ inline double warp_inclusive_scan(double v) {
  const int lane = threadIdx.x % 32;
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += y;
  }
  return v;
}

// Warp w's segment of [0, n): [w * seg, min(n, (w + 1) * seg)), seg a multiple of 32 (coalesced walks).
__device__ inline int segment_len(int n) { return ((n + kPickWarps - 1) / kPickWarps + 31) / 32 * 32; }

// Warp w's part of a block_segments-style sum: seg_sum[w] = s summed over its lanes; returns the sum over all warps.
__device__ inline double publish_segments(double s, double* seg_sum) {
  s = warp_sum(s);
  __syncthreads();  // earlier readers of seg_sum are done
  if (threadIdx.x % 32 == 0) seg_sum[threadIdx.x / 32] = s;
  __syncthreads();
  double total = 0.0;
  for (int k = 0; k < kPickWarps; k++) total += seg_sum[k];
  return total;
}

// Sum of w(i) over i < n; seg_sum[] gets each warp's segment sum.
template <class W>
__device__ double block_segments(int n, const W& w, double* seg_sum) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, seg = segment_len(n);
  const int lo = warp * seg, hi = min(n, lo + seg);
  double s = 0.0;
#pragma unroll 4
  for (int i = lo + lane; i < hi; i += 32) s += w(i);
  return publish_segments(s, seg_sum);
}

// The same over a 16-byte aligned row when the weight depends on the logit only (an unfiltered draw): w(z[i]), read
// 16 bytes a load, several in flight (segments start at multiples of 32 elements). The walk above, a 4-byte load per
// element, waited on L2 once per 4 elements.
template <class W>
__device__ double row_segments(const float* z, int n, const W& w, double* seg_sum) {
  const int seg = segment_len(n), lo = min(n, threadIdx.x / 32 * seg), hi = min(n, lo + seg);
  double s = 0.0;
  for_each_strided(z, lo, hi, threadIdx.x % 32, 32, [&](int, float x) { s += w(x); });
  return publish_segments(s, seg_sum);
}

// The first i < n whose running sum w(0) + ... + w(i) exceeds target (strict) or reaches it (not strict), after
// block_segments(n, ...) filled seg_sum; n when no segment gets there. Every thread gets the answer.
// group_sum(first, last): w(first) + ... + w(last - 1), a group of at most 32 elements starting at a multiple of 32.
template <class W, class G>
__device__ int block_crossing(int n, const W& w, const G& group_sum, double target, bool strict,
                              const double* seg_sum, int* s_result) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, seg = segment_len(n);
  double base = 0.0;
  int owner = -1;
  for (int k = 0; k < kPickWarps && owner < 0; k++) {
    const double next = base + seg_sum[k];
    if (strict ? next > target : next >= target)
      owner = k;
    else
      base = next;
  }
  __syncthreads();  // earlier readers of s_result are done
  if (threadIdx.x == 0) *s_result = n;
  __syncthreads();
  if (warp == owner) {
    const int lo = owner * seg, hi = min(n, lo + seg);
    const auto crosses = [&](double cum) { return strict ? cum > target : cum >= target; };
    // the group of 32 elements where the running sum crosses: lane l sums groups l, l + 32, ... (each by itself,
    // its loads independent), one scan per 32 groups
    const int n_groups = (hi - lo + 31) / 32;
    int group = n_groups - 1;  // the segment's sum got there but the groups' (other rounding) did not: its last one
    double run = base;
    for (int g0 = 0; g0 < n_groups; g0 += 32) {
      const int g = g0 + lane, first = lo + 32 * g, last = min(hi, first + 32);
      double incl = first < last ? group_sum(first, last) : 0.0;
      incl = warp_inclusive_scan(incl);
      const unsigned hit = __ballot_sync(kFull, g < n_groups && crosses(run + incl));
      if (hit) {
        const int k = __ffs(hit) - 1;
        group = g0 + k;
        const double through_previous = __shfl_sync(kFull, incl, max(k - 1, 0));
        if (k > 0) run += through_previous;  // the groups before the crossing one
        break;
      }
      run += __shfl_sync(kFull, incl, 31);
    }
    // the element inside that group: one scan over its 32 elements
    const int i = lo + 32 * group + lane;
    const double cum = run + warp_inclusive_scan(i < hi ? w(i) : 0.0);
    const unsigned hit = __ballot_sync(kFull, i < hi && crosses(cum));
    const int found = hit ? lo + 32 * group + __ffs(hit) - 1 : min(hi, lo + 32 * group + 32) - 1;
    if (lane == 0) *s_result = found;
  }
  __syncthreads();
  return *s_result;
}

// ---- picking --------------------------------------------------------------------------------------------------------
// One block per row (pick_kernel: 31 us a 64-row decode step on an H200 under Nsight). Spreading an unfiltered row
// over 8 blocks in three kernels (the parts' maxima, their sums, then the crossing part) took 39 us and sampled no
// faster, so it went (11th session).

// The warp's (max, argmax) with the lowest index among equal maxima (the CPU's first-max scan), in every lane.
__device__ inline void warp_argmax(float& best, int& arg) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(kFull, best, o);
    const int oa = __shfl_xor_sync(kFull, arg, o);
    if (ob > best || (ob == best && oa < arg)) best = ob, arg = oa;
  }
}

// Whether active row a has nothing to draw this step (past the rows or the active count, or its slot is done since
// the last compaction); else its slot and step. Block-uniform.
__device__ inline bool pick_skips(const State& s, int a, int n_rows, int& slot, int& step) {
  if (a >= min(n_rows, s.ctl[0])) return true;
  slot = s.active[a];
  step = s.n_out[slot];
  return s.finished[slot] || step >= s.max_new;
}

// The drawn token of a slot's step, its log-prob, and whether it ends the response (one thread).
__device__ inline void record_token(const State& s, int slot, int step, int token, float logp) {
  const int64_t o = static_cast<int64_t>(slot) * s.max_new + step;
  s.out_tok[o] = token;
  s.out_logp[o] = logp;
  s.n_out[slot] = step + 1;
  for (int i = 0; i < s.n_stop; i++)
    if (s.stop[i] == token) s.finished[slot] = 1;
}

__global__ void __launch_bounds__(kPickThreads) pick_kernel(const float* logits, int logits_div,
                                                            const int32_t* sorted, int n_rows, State s, Params p) {
  __shared__ double seg_sum[kPickWarps];
  __shared__ float red_v[kPickWarps];
  __shared__ int red_i[kPickWarps];
  __shared__ float scratch[32];
  __shared__ int result;
  const int a = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int slot, step;
  if (pick_skips(s, a, n_rows, slot, step)) return;  // block-uniform exits only: the block synchronizes below
  const int V = p.vocab, row = a / logits_div;
  const float* z = logits + static_cast<int64_t>(row) * p.logits_ld;

  // max and argmax (lowest index among equal maxima, as the CPU's first-max scan), and a finiteness check
  float best = -INFINITY;
  int arg = INT_MAX;
  bool bad = false;
  for_each_in_row(z, V, [&](int j, float x) {  // rows are logits_ld floats apart: 16-byte aligned
    bad |= !isfinite(x);
    if (x > best || (x == best && j < arg)) best = x, arg = j;
  });
  float tail_mx = -INFINITY;  // the ids past the draw limit (block-uniform: none in most models)
  for (int j = V + threadIdx.x; j < p.full_vocab; j += blockDim.x) {
    bad |= !isfinite(z[j]);
    tail_mx = fmaxf(tail_mx, z[j]);
  }
  warp_argmax(best, arg);
  if (lane == 0) red_v[warp] = best, red_i[warp] = arg;
  if (__syncthreads_or(bad)) {
    // NaN/Inf logits: the weights diverged. Record the step; the host turns it into the CPU sampler's error.
    if (threadIdx.x == 0) atomicMin(&s.ctl[1], step);
    return;
  }
  float mx = red_v[0];
  arg = red_i[0];
  for (int w = 1; w < kPickWarps; w++)
    if (red_v[w] > mx || (red_v[w] == mx && red_i[w] < arg)) mx = red_v[w], arg = red_i[w];
  // the group of a crossing, element by element (any row order)
  const auto group_of = [](const auto& w) {
    return [&w](int first, int last) {
      double g = 0.0;
#pragma unroll 8
      for (int i = first; i < last; i++) g += w(i);
      return g;
    };
  };
  float sum = 0.0f;  // of exp(z - max): the temperature-1 normalizer of the returned log-prob
  int token = arg;
  if (p.temperature != 0.0f && !p.filtered()) {
    // One pass for both sums (the draw's weights in double per warp segment, and the normalizer), read 16 bytes a
    // load; the crossing's groups too (a group: 32 elements from a multiple of 32, so 128-byte aligned).
    const double u = rng_uniform(p.seed, s.stream[slot], static_cast<uint64_t>(step));
    const float inv_t = static_cast<float>(1.0 / p.temperature);
    const auto weight = [&](float x) { return static_cast<double>(expf((x - mx) * inv_t)); };
    const double total = row_segments(z, V, [&](float x) {
      const float e = expf(x - mx);
      sum += e;
      return inv_t == 1.0f ? static_cast<double>(e) : weight(x);  // (x - mx) * 1 is x - mx: the same weight
    }, seg_sum);
    sum = block_sum(sum, scratch);
    const auto w = [&](int j) { return weight(z[j]); };
    const auto group = [&](int first, int last) {
      if (last - first < 32) return group_of(w)(first, last);  // the row's end
      const float4* g4 = reinterpret_cast<const float4*>(z + first);
      float4 x[8];
#pragma unroll
      for (int b = 0; b < 8; b++) x[b] = g4[b];
      double g = 0.0;
#pragma unroll
      for (int b = 0; b < 8; b++) g += weight(x[b].x), g += weight(x[b].y), g += weight(x[b].z), g += weight(x[b].w);
      return g;
    };
    const int t = block_crossing(V, w, group, u * total, true, seg_sum, &result);
    token = t < V ? t : arg;  // past the end only through rounding, as on the CPU
  } else {
    for_each_in_row(z, V, [&](int, float x) { sum += expf(x - mx); });
    sum = block_sum(sum, scratch);
    if (p.temperature != 0.0f) {  // filtered
      // (u drawn in each branch: once above both, ptxas spilled 16 bytes more a thread)
      const double u = rng_uniform(p.seed, s.stream[slot], static_cast<uint64_t>(step));
      const double inv_t = 1.0 / p.temperature;
      const int32_t* idx = sorted + static_cast<int64_t>(row) * V;
      const auto w = [&](int i) { return exp(static_cast<double>(z[idx[i]] - mx) * inv_t); };
      const auto group = group_of(w);
      int keep = p.top_k > 0 && p.top_k < V ? p.top_k : V;
      double total = block_segments(keep, w, seg_sum);
      if (p.top_p < 1.0f) {  // nucleus: the smallest prefix whose mass reaches top_p (at least one token)
        const int c = block_crossing(keep, w, group, static_cast<double>(p.top_p) * total, false, seg_sum, &result);
        if (c < keep) {
          keep = c + 1;
          total = block_segments(keep, w, seg_sum);
        }
      }
      const int t = block_crossing(keep, w, group, u * total, true, seg_sum, &result);
      token = idx[t < keep ? t : keep - 1];
    }
  }
  double lse = mx + log(static_cast<double>(sum));
  if (p.full_vocab > V) {  // the ids past the draw limit are never drawn but belong to the model's distribution
    tail_mx = block_max(tail_mx, scratch);
    float tail_sum = 0.0f;
    for (int j = V + threadIdx.x; j < p.full_vocab; j += blockDim.x) tail_sum += expf(z[j] - tail_mx);
    const double tail_lse = tail_mx + log(static_cast<double>(block_sum(tail_sum, scratch)));
    lse = fmax(lse, tail_lse) + log1p(exp(-fabs(lse - tail_lse)));
  }
  if (threadIdx.x == 0) record_token(s, slot, step, token, static_cast<float>(z[token] - lse));
}

void pick_tokens(const float* logits, int logits_div, const int32_t* sorted, int n_rows, const State& s,
                 const Params& p, cudaStream_t st) {
  if (n_rows <= 0) return;
  pick_kernel<<<n_rows, kPickThreads, 0, st>>>(logits, logits_div, sorted, n_rows, s, p);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- sorting rows of logits -----------------------------------------------------------------------------------------

// Unsigned, ascending with the logit: an order-preserving map of floats onto unsigned ints.
// -0 maps as +0: the CPU compares logits as floats, so equal ones (+0 and -0 too) go in index order.
__device__ inline uint32_t logit_order(float x) {
  const uint32_t u = x == 0.0f ? 0u : __float_as_uint(x);
  return u ^ ((u & 0x80000000u) ? 0xffffffffu : 0x80000000u);
}

// A key whose ascending order is (row asc, logit desc); stable radix sort keeps equal logits in index order.
__device__ inline uint64_t row_logit_key(int row, float x) {
  return (static_cast<uint64_t>(row) << 32) | static_cast<uint32_t>(~logit_order(x));
}

// Grid (blocks over the vocabulary, rows): no division of a flat index per element.
__global__ void sort_keys_kernel(uint64_t* keys, int32_t* vals, const float* logits, int ld, int vocab) {
  const int r = blockIdx.y;
  const int64_t out = static_cast<int64_t>(r) * vocab;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < vocab; j += gridDim.x * blockDim.x) {
    keys[out + j] = row_logit_key(r, logits[static_cast<int64_t>(r) * ld + j]);
    vals[out + j] = j;
  }
}

static int row_bits(int rows) {
  int b = 0;
  while ((1 << b) < rows) b++;
  return b;
}

int sort_chunk_rows(int n_rows, int vocab) {
  const int64_t budget = int64_t(1) << 23;  // keys per sort: ~200 MB of keys, values and temp storage
  const int64_t rows = std::min<int64_t>({n_rows, budget / std::max(vocab, 1), 65535});  // 65535: sort_keys' grid.y
  return static_cast<int>(std::max<int64_t>(1, rows));
}

size_t sort_temp_bytes(int chunk_rows, int vocab) {
  size_t bytes = 0;
  OPTUNE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                                    static_cast<uint64_t*>(nullptr),
                                                    static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr), chunk_rows * vocab, 0, 64));
  return bytes;
}

void sort_rows(int32_t* sorted, const float* logits, int ld, int n_rows, int vocab, const SortScratch& sc,
               cudaStream_t st) {
  if (n_rows <= 0) return;
  for (int r0 = 0; r0 < n_rows; r0 += sc.max_rows) {
    const int rows = std::min(sc.max_rows, n_rows - r0);
    const int n = rows * vocab;
    const int64_t off = static_cast<int64_t>(r0) * vocab;
    sort_keys_kernel<<<dim3(std::min((vocab + 255) / 256, 64), rows), 256, 0, st>>>(
        sc.keys_in, sc.vals_in, logits + static_cast<int64_t>(r0) * ld, ld, vocab);
    OPTUNE_CUDA_CHECK_LAUNCH();
    size_t temp_bytes = sc.temp_bytes;
    OPTUNE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sc.temp, temp_bytes, sc.keys_in, sc.keys_out, sc.vals_in,
                                                      sorted + off, n, 0, 32 + row_bits(rows), st));
  }
}

}  // namespace optune::cuda::sampler
