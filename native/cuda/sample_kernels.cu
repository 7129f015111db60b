// Token picking on the device, with the CPU sampler's definitions (core/pick.cpp): greedy = argmax
// (lowest index on ties); otherwise a draw u = rng_uniform(seed, stream, step) inverts the cumulative distribution of
// exp((z - max) / T), over the vocabulary in index order when nothing is filtered, else over the candidates ordered
// by (logit desc, index asc), cut to top-k and then to the smallest prefix whose mass reaches top-p. The log-prob
// returned is under the unfiltered temperature-1 distribution.
//
// One block of 1024 threads per row; the row's passes read it 16 bytes per load, several loads in flight per thread
// (the kernel measured 56 us of a 0.84 ms decode step on an H100 when each pass waited on one 4-byte load at a time;
// ~17 us per pass is an estimate from the load count, not a measurement). A cumulative search runs in three levels:
// each warp sums a contiguous segment (sums in double, as the CPU), then in the warp whose segment holds the crossing
// each lane sums whole groups of 32 elements and one scan over the group sums finds the group, and one scan over that
// group's elements the element (walking the segment 32 elements at a time took a dependent scan per step, ~50 steps
// at V = 50257). Same order of elements as the CPU, different order of additions: a draw within rounding distance of
// a boundary can pick the neighbouring token. The filtered order comes from one cub radix sort of (row, logit) keys
// per step (stable, so equal logits keep index order); for a top-k of at most kTopKSelectMax, one block per row
// selects the k candidates instead (a radix select of the k-th largest logit) and sorts only them.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <string>

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

__global__ void prepare_rows_kernel(int32_t* tok, int32_t* pos, int32_t* slot, State s, int n_rows) {
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= n_rows) return;
  if (a < s.ctl[0]) {
    const int sl = s.active[a], n = s.n_out[sl];
    slot[a] = sl;
    tok[a] = n > 0 ? s.out_tok[static_cast<int64_t>(sl) * s.max_new + n - 1] : 0;
    pos[a] = s.len[sl];
    if (!slot_done(s, sl)) s.len[sl] += 1;  // the fed token joins the cache; a done slot rewrites a dead position
  } else {
    slot[a] = s.R, tok[a] = 0, pos[a] = 0;
  }
}

void prepare_decode_rows(int32_t* tok, int32_t* pos, int32_t* slot, const State& s, int n_rows, cudaStream_t st) {
  prepare_rows_kernel<<<(n_rows + 127) / 128, 128, 0, st>>>(tok, pos, slot, s, n_rows);
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

// Sum of w(i) over i < n; seg_sum[] gets each warp's segment sum.
template <class W>
__device__ double block_segments(int n, const W& w, double* seg_sum) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, seg = segment_len(n);
  const int lo = warp * seg, hi = min(n, lo + seg);
  double s = 0.0;
#pragma unroll 4
  for (int i = lo + lane; i < hi; i += 32) s += w(i);
  s = warp_sum(s);
  __syncthreads();  // earlier readers of seg_sum are done
  if (lane == 0) seg_sum[warp] = s;
  __syncthreads();
  double total = 0.0;
  for (int k = 0; k < kPickWarps; k++) total += seg_sum[k];
  return total;
}

// The first i < n whose running sum w(0) + ... + w(i) exceeds target (strict) or reaches it (not strict), after
// block_segments(n, ...) filled seg_sum; n when no segment gets there. Every thread gets the answer.
template <class W>
__device__ int block_crossing(int n, const W& w, double target, bool strict, const double* seg_sum, int* s_result) {
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
      double incl = 0.0;
#pragma unroll 8
      for (int i = first; i < last; i++) incl += w(i);
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

__global__ void __launch_bounds__(kPickThreads) pick_kernel(const float* logits, int logits_div,
                                                            const int32_t* sorted, int n_rows, State s, Params p) {
  __shared__ double seg_sum[kPickWarps];
  __shared__ float red_v[kPickWarps];
  __shared__ int red_i[kPickWarps];
  __shared__ float scratch[32];
  __shared__ int result;
  const int a = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (a >= min(n_rows, s.ctl[0])) return;  // block-uniform exits only: the block synchronizes below
  const int slot = s.active[a], step = s.n_out[slot], V = p.vocab, row = a / logits_div;
  if (s.finished[slot] || step >= s.max_new) return;  // done since the last compaction
  const float* z = logits + static_cast<int64_t>(row) * p.logits_ld;

  // max and argmax (lowest index among equal maxima, as the CPU's first-max scan), and a finiteness check
  float best = -INFINITY;
  int arg = INT_MAX;
  bool bad = false;
  for_each_in_row(z, V, [&](int j, float x) {  // rows are logits_ld floats apart: 16-byte aligned
    bad |= !isfinite(x);
    if (x > best || (x == best && j < arg)) best = x, arg = j;
  });
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(kFull, best, o);
    const int oa = __shfl_xor_sync(kFull, arg, o);
    if (ob > best || (ob == best && oa < arg)) best = ob, arg = oa;
  }
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
  float sum = 0.0f;
  for_each_in_row(z, V, [&](int, float x) { sum += expf(x - mx); });
  sum = block_sum(sum, scratch);
  const double lse = mx + log(static_cast<double>(sum));

  int token = arg;
  if (p.temperature != 0.0f) {
    const double u = rng_uniform(p.seed, s.stream[slot], static_cast<uint64_t>(step));
    const double inv_t = 1.0 / p.temperature;
    if (!p.filtered()) {
      const float inv_tf = static_cast<float>(inv_t);
      const auto w = [&](int j) { return static_cast<double>(expf((z[j] - mx) * inv_tf)); };
      const double total = block_segments(V, w, seg_sum);
      const int t = block_crossing(V, w, u * total, true, seg_sum, &result);
      token = t < V ? t : arg;  // past the end only through rounding, as on the CPU
    } else {
      const int32_t* idx = sorted + static_cast<int64_t>(row) * V;
      const auto w = [&](int i) { return exp(static_cast<double>(z[idx[i]] - mx) * inv_t); };
      int keep = p.top_k > 0 && p.top_k < V ? p.top_k : V;
      double total = block_segments(keep, w, seg_sum);
      if (p.top_p < 1.0f) {  // nucleus: the smallest prefix whose mass reaches top_p (at least one token)
        const int c = block_crossing(keep, w, static_cast<double>(p.top_p) * total, false, seg_sum, &result);
        if (c < keep) {
          keep = c + 1;
          total = block_segments(keep, w, seg_sum);
        }
      }
      const int t = block_crossing(keep, w, u * total, true, seg_sum, &result);
      token = idx[t < keep ? t : keep - 1];
    }
  }
  if (threadIdx.x == 0) {
    const int64_t o = static_cast<int64_t>(slot) * s.max_new + step;
    s.out_tok[o] = token;
    s.out_logp[o] = static_cast<float>(z[token] - lse);
    s.n_out[slot] = step + 1;
    for (int i = 0; i < s.n_stop; i++)
      if (s.stop[i] == token) s.finished[slot] = 1;
  }
}

void pick_tokens(const float* logits, int logits_div, const int32_t* sorted, int n_rows, const State& s,
                 const Params& p, cudaStream_t st) {
  if (n_rows <= 0) return;
  pick_kernel<<<n_rows, kPickThreads, 0, st>>>(logits, logits_div, sorted, n_rows, s, p);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- sorting rows of logits -----------------------------------------------------------------------------------------

// Unsigned, ascending with the logit: an order-preserving map of floats onto unsigned ints.
__device__ inline uint32_t logit_order(float x) {
  const uint32_t u = __float_as_uint(x);
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

// ---- top-k by selection --------------------------------------------------------------------------------------------
// The full sort moves every row's vocabulary through 5 radix passes each step (64 x 50257 keys and values: an
// estimate of ~0.15-0.2 ms on an H100, against a ~0.7 ms step), when a top-k draw reads only k candidates in order.

static_assert(kTopKSelectMax == kPickThreads, "one candidate per thread in the block sort");

// How many threads before this one have `flag` set, in thread order; *total: how many in the block.
__device__ inline int block_exclusive_count(bool flag, int* warp_counts, int* total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned ballot = __ballot_sync(kFull, flag);
  __syncthreads();  // earlier readers of warp_counts are done
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < kPickWarps; w++) {
    before += w < warp ? warp_counts[w] : 0;
    all += warp_counts[w];
  }
  *total = all;
  return before + __popc(ballot & ((1u << lane) - 1u));
}

// One block of kPickThreads per row; 0 < k <= kTopKSelectMax, k < vocab.
__global__ void __launch_bounds__(kPickThreads) top_k_select_kernel(int32_t* sorted, const float* logits, int ld,
                                                                    int vocab, int k) {
  __shared__ int hist[256];
  __shared__ int s_digit, s_need;
  __shared__ int warp_counts[kPickWarps];
  __shared__ uint64_t cand[kTopKSelectMax];
  const float* z = logits + static_cast<int64_t>(blockIdx.x) * ld;

  // 1. T = the k-th largest order key, 8 bits at a time from the top; `need`: how many keys equal to T the top k
  // hold (the others lie above T). Integer counts: the same T on every run.
  uint32_t prefix = 0, mask = 0;
  int need = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for_each_in_row(z, vocab, [&](int, float x) {  // 16-byte loads, several in flight (rows are ld % 4 == 0 apart)
      const uint32_t u = logit_order(x);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1);
    });
    __syncthreads();
    if (threadIdx.x == 0) {  // the bins under the prefix hold >= need keys, so d stops at 0 at the latest
      int above = 0, d = 255;
      while (d > 0 && above + hist[d] < need) above += hist[d--];
      s_digit = d, s_need = need - above;
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(s_digit) << shift;
    mask |= 255u << shift;
    need = s_need;
  }

  // 2. the candidates, in index order: every key above T, and the first `need` equal to it (index asc, as the
  // full sort's ties)
  const uint32_t T = prefix;
  int taken = 0, equal_seen = 0;
  for (int c0 = 0; c0 < vocab; c0 += blockDim.x) {
    const int j = c0 + threadIdx.x;
    const uint32_t u = j < vocab ? logit_order(z[j]) : 0u;
    const bool equal = j < vocab && u == T;
    int n_equal, n_take;
    const int equal_rank = equal_seen + block_exclusive_count(equal, warp_counts, &n_equal);
    const bool take = j < vocab && (u > T || (equal && equal_rank < need));
    const int at = taken + block_exclusive_count(take, warp_counts, &n_take);
    if (take) cand[at] = (static_cast<uint64_t>(~u) << 32) | static_cast<uint32_t>(j);  // ascending: logit desc
    taken += n_take, equal_seen += n_equal;
  }
  for (int i = taken + threadIdx.x; i < kTopKSelectMax; i += blockDim.x) cand[i] = ~0ull;  // padding sorts last

  // 3. bitonic sort of the candidates (blockDim.x == kTopKSelectMax: one element per thread)
  for (int size = 2; size <= kTopKSelectMax; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      const int i = threadIdx.x, partner = i ^ stride;
      if (partner > i) {
        const uint64_t a = cand[i], b = cand[partner];
        if ((a > b) == ((i & size) == 0)) cand[i] = b, cand[partner] = a;
      }
    }
  }
  __syncthreads();
  int32_t* out = sorted + static_cast<int64_t>(blockIdx.x) * vocab;
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = static_cast<int32_t>(cand[i] & 0xffffffffu);
}

bool top_k_by_selection(int top_k, int vocab) { return top_k > 0 && top_k < vocab && top_k <= kTopKSelectMax; }

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

void sort_rows(int32_t* sorted, const float* logits, int ld, int n_rows, int vocab, int top_k, const SortScratch& sc,
               cudaStream_t st) {
  if (n_rows <= 0) return;
  if (top_k_by_selection(top_k, vocab)) {
    OPTUNE_CHECK(ld % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0,
                 "internal: top-k selection reads logits rows 16-byte aligned (ld " + std::to_string(ld) + ")");
    top_k_select_kernel<<<n_rows, kPickThreads, 0, st>>>(sorted, logits, ld, vocab, top_k);
    OPTUNE_CUDA_CHECK_LAUNCH();
    return;
  }
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
