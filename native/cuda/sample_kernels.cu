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
// a boundary can pick the neighbouring token. The order of a filtered draw comes from one cub radix sort of (row,
// logit) keys per step (stable, so equal logits keep index order). Under OPTUNE_CUDA_FILTER=select
// (Params::select_filters) a top-k draw's order comes instead from one block per row that selects the k candidates
// (a radix select of the k-th largest logit) and sorts only them, for k up to kTopKSelectMax, and a top-p draw
// without a top-k needs no order: two radix descents by mass find the nucleus's end and the drawn token.
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

// ---- top-p without an order: the nucleus by mass -------------------------------------------------------------------
// A top-p draw (no top-k) reads the (logit desc, index asc) order only up to the token it lands on, so it needs no
// sort of the vocabulary (cub: 64 x 50257 keys and values through 5 passes each step, before the draw's gathers).
// Two radix descents over the logits' order keys find, by mass, first the token where the nucleus ends (its
// running mass reaches top_p of the total) and then the drawn token (the running mass passes u times the
// nucleus's). Each level of a descent sums the mass of the keys under its prefix per 8-bit digit and keeps the
// digit where the running mass, from the largest keys down, reaches what is left of the target.
// Masses are integers: each token's exp((z - max) / T) in float, times 2^bits, rounded, with bits such that a row's
// total stays at most 2^52 (exact in double, and the same whatever the order of the atomic additions), so a row gives
// the same token on every run. A token below 2^-(bits + 1) of the largest weight (bits = 36 at V = 50257) rounds to
// mass 0 and is never drawn: the sorted path draws each such token with probability under 2^-(bits + 1) (7e-12),
// all of them together under V 2^-(bits + 1) (4e-7). Against that path's sums in double in sorted order, a draw
// within rounding distance of a token boundary can pick the neighbouring token.

// Unsigned, ascending with the logit: an order-preserving map of floats onto unsigned ints, and back.
// -0 maps as +0: the CPU compares logits as floats, so equal ones (+0 and -0 too) go in index order.
__device__ inline uint32_t logit_order(float x) {
  const uint32_t u = x == 0.0f ? 0u : __float_as_uint(x);
  return u ^ ((u & 0x80000000u) ? 0xffffffffu : 0x80000000u);
}
__device__ inline float logit_of_order(uint32_t u) {
  return __uint_as_float(u ^ ((u & 0x80000000u) ? 0x80000000u : 0xffffffffu));
}

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

// Calls f(j, z[j], valid) over a 16-byte aligned row in rounds in which every thread of the block takes part
// (warp collectives inside f are allowed; valid is false past n): each round a thread issues kLoads 16-byte loads
// before using any, as for_each_in_row.
template <class F>
__device__ inline void for_each_in_row_together(const float* z, int n, const F& f) {
  constexpr int kLoads = 4;
  const float4* z4 = reinterpret_cast<const float4*>(z);
  const int n4 = n / 4, step = blockDim.x;
  for (int c0 = 0; c0 < n4; c0 += kLoads * step) {
    float4 x[kLoads];
#pragma unroll
    for (int b = 0; b < kLoads; b++) {
      const int i = c0 + b * step + threadIdx.x;
      x[b] = i < n4 ? z4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int b = 0; b < kLoads; b++) {
      const int i = c0 + b * step + threadIdx.x;
      f(4 * i, x[b].x, i < n4), f(4 * i + 1, x[b].y, i < n4), f(4 * i + 2, x[b].z, i < n4);
      f(4 * i + 3, x[b].w, i < n4);
    }
  }
  const int j = 4 * n4 + threadIdx.x;  // the last n % 4 elements
  if (4 * n4 < n) f(j, j < n ? z[j] : 0.0f, j < n);
}

struct MassScratch {
  unsigned long long hist[256];          // mass per digit at the current level
  unsigned long long target;
  uint32_t digit;
  unsigned long long above;              // mass of the digits above it at this level
  int found;
};

// hist[digit] += m over the lanes of the warp with `on` set (0 < m <= 2^52): one atomic per distinct digit, from the
// lowest lane holding it, with its peers' sum (redux.sync per 16-bit piece: each piece's sum stays below 2^21, and
// integers add up the same in any order).
__device__ inline void warp_add_mass(MassScratch& sm, bool on, uint32_t digit, unsigned long long m) {
  if (__ballot_sync(kFull, on) == 0) return;  // warp-uniform
  const int lane = threadIdx.x % 32;
  const unsigned peers = __match_any_sync(kFull, on ? digit : 256u + lane);  // off lanes: a group of their own
  unsigned long long sum = 0;
#pragma unroll
  for (int piece = 0; piece < 4; piece++) {
    const unsigned part = static_cast<unsigned>((m >> (16 * piece)) & 0xffffu);
    sum += static_cast<unsigned long long>(__reduce_add_sync(peers, part)) << (16 * piece);
  }
  if (on && lane == __ffs(peers) - 1) atomicAdd(&sm.hist[digit], sum);
}

// Where the running mass, over the keys in (logit desc, index asc) order, first reaches target_of(total), total
// being the mass of the keys >= lowest (the first level's digits sum to it, so no pass of its own; 1 <= target <=
// total): the key there, the mass of all larger keys, and how many keys equal to it up to and including that
// position (>= 1). mass(x): the integer mass of logit x; keys below `lowest` are left out (the running mass reaches
// the target before them: a draw inside a known nucleus adds none of the rest of the row to its histograms, though
// each level still reads the whole row).
struct Reach {
  uint32_t key;
  unsigned long long above;
  long long ties;
};

template <class Mass, class Target>
__device__ Reach reach_mass(const float* z, int n, const Mass& mass, const Target& target_of, uint32_t lowest,
                            MassScratch& sm) {
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0, mask = 0;
  unsigned long long above = 0, target = 0;  // target: warp 0's copy (sm.target: everyone's, after the levels)
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sm.hist[i] = 0;
    __syncthreads();
    for_each_in_row_together(z, n, [&](int, float x, bool valid) {
      const uint32_t u = logit_order(x);
      const bool under = valid && (u & mask) == prefix && u >= lowest;
      const unsigned long long m = under ? mass(x) : 0ull;
      warp_add_mass(sm, m > 0, (u >> shift) & 255u, m);
    });
    __syncthreads();
    if (threadIdx.x < 32) {  // warp 0, from the top digit down: lane l holds digits 255 - 8l .. 248 - 8l
      unsigned long long own = 0;
      for (int k = 0; k < 8; k++) own += sm.hist[255 - 8 * lane - k];
      unsigned long long incl = own;  // inclusive scan over the lanes
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long y = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += y;
      }
      if (shift == 24) {  // the first level saw every key >= lowest: its digits' sum is their total
        target = target_of(__shfl_sync(kFull, incl, 31));
        if (lane == 0) sm.target = target;
      }
      const unsigned long long left = target - above;
      // the first lane whose digits reach what is left; none only through a target past the total (the last lane)
      const unsigned hit = __ballot_sync(kFull, incl >= left);
      const int l = hit ? __ffs(hit) - 1 : 31;
      if (lane == l) {
        unsigned long long run = incl - own;
        int k = 0;
        while (k < 7 && run + sm.hist[255 - 8 * lane - k] < left) run += sm.hist[255 - 8 * lane - k++];
        sm.digit = 255u - 8u * lane - k;
        sm.above = run;
      }
    }
    __syncthreads();
    prefix |= sm.digit << shift;
    mask |= 255u << shift;
    above += sm.above;
  }
  // every key under the full prefix is that key: equal masses
  const unsigned long long each = mass(logit_of_order(prefix)), left = sm.target - above;
  return {prefix, above, each ? static_cast<long long>((left + each - 1) / each) : 1};
}

// The index of the k-th (1-based) element of the row whose order key is `key`, in index order (k >= 1; -1 when the
// row has fewer).
__device__ int kth_with_key(const float* z, int n, uint32_t key, long long k, MassScratch& sm, int* warp_counts) {
  if (threadIdx.x == 0) sm.found = INT_MAX;
  __syncthreads();
  if (k == 1) {  // the lowest index: one pass with its loads in flight
    int lowest = INT_MAX;
    for_each_in_row(z, n, [&](int j, float x) {
      if (logit_order(x) == key) lowest = min(lowest, j);
    });
    for (int o = 16; o > 0; o >>= 1) lowest = min(lowest, __shfl_xor_sync(kFull, lowest, o));
    if (threadIdx.x % 32 == 0 && lowest != INT_MAX) atomicMin(&sm.found, lowest);
  } else {  // exact ties: rounds in index order, one load each (rare)
    long long seen = 0;
    for (int c0 = 0; c0 < n && seen < k; c0 += blockDim.x) {  // seen: block-wide, so the loop is uniform
      const int j = c0 + threadIdx.x;
      const bool equal = j < n && logit_order(z[j]) == key;
      int n_equal;
      const int rank = block_exclusive_count(equal, warp_counts, &n_equal);
      if (equal && seen + rank == k - 1) sm.found = j;
      seen += n_equal;
    }
  }
  __syncthreads();
  const int found = sm.found;
  __syncthreads();  // read by all before the next use of sm
  return found == INT_MAX ? -1 : found;
}

// The top-p draw of a row (temperature != 0, top_p < 1, no top-k): the token at which the running mass passes u
// times the nucleus's mass. mx: the row's largest logit; u in [0, 1).
__device__ int nucleus_draw(const float* z, int n, float mx, float inv_t, float top_p, double u, MassScratch& sm,
                            int* warp_counts) {
  int log_n = 0;
  while ((1ll << log_n) < n) log_n++;
  const double scale = ldexp(1.0, 52 - log_n);  // n masses of at most 2^(52 - log_n) each: total <= 2^52
  const auto mass = [&](float x) { return __double2ull_rn(static_cast<double>(expf((x - mx) * inv_t)) * scale); };
  // the nucleus: up to where the running mass first reaches top_p of the total (>= 2^(52 - log_n): the largest
  // logit's mass)
  const auto cut_at = [&](unsigned long long total) {
    const double want = ceil(static_cast<double>(top_p) * static_cast<double>(total));
    return static_cast<unsigned long long>(fmin(fmax(want, 1.0), static_cast<double>(total)));
  };
  const Reach cut = reach_mass(z, n, mass, cut_at, 0u, sm);
  const unsigned long long nucleus = cut.above + cut.ties * mass(logit_of_order(cut.key));
  // the draw: the first position whose running mass exceeds u times the nucleus's, i.e. reaches floor(u M) + 1
  const double below = floor(u * static_cast<double>(nucleus));
  const auto draw_at = [&](unsigned long long) {
    return static_cast<unsigned long long>(fmin(below + 1.0, static_cast<double>(nucleus)));
  };
  const Reach at = reach_mass(z, n, mass, draw_at, cut.key, sm);  // inside the nucleus: keys >= its last
  return kth_with_key(z, n, at.key, at.ties, sm, warp_counts);
}

// Test entry (sort_rows.h): draws[r * n_u + i] = nucleus_draw of row r with uniform u[i]. One block per row.
__global__ void __launch_bounds__(kPickThreads) nucleus_draws_kernel(int32_t* draws, const float* logits, int ld,
                                                                     int vocab, float inv_t, float top_p,
                                                                     const double* u, int n_u) {
  __shared__ MassScratch sm;
  __shared__ float max_scratch[32];
  __shared__ int warp_counts[kPickWarps];
  const float* z = logits + static_cast<int64_t>(blockIdx.x) * ld;
  float mx = -INFINITY;
  for_each_in_row(z, vocab, [&](int, float x) { mx = fmaxf(mx, x); });
  mx = block_max(mx, max_scratch);
  for (int i = 0; i < n_u; i++) {
    const int t = nucleus_draw(z, vocab, mx, inv_t, top_p, u[i], sm, warp_counts);
    if (threadIdx.x == 0) draws[static_cast<int64_t>(blockIdx.x) * n_u + i] = t;
  }
}

void nucleus_draws(int32_t* draws, const float* logits, int ld, int n_rows, int vocab, float temperature,
                   float top_p, const double* u, int n_u, cudaStream_t st) {
  OPTUNE_CHECK(ld % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 && temperature > 0.0f,
               "internal: nucleus_draws reads 16-byte aligned rows at a positive temperature");
  if (n_rows <= 0 || n_u <= 0) return;
  nucleus_draws_kernel<<<n_rows, kPickThreads, 0, st>>>(draws, logits, ld, vocab,
                                                       static_cast<float>(1.0 / temperature), top_p, u, n_u);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- picking --------------------------------------------------------------------------------------------------------

// BY_MASS: the instantiation for a top-p alone under OPTUNE_CUDA_FILTER=select (filtered and not ordered): it holds
// nucleus_draw and not the sorted walk; the other holds the walk, and is the kernel the GPU tests have run (164 bytes spilled and 644 of
// shared memory for sm_90 by ptxas, against 176 and 2856 with it).
template <bool BY_MASS>
__global__ void __launch_bounds__(kPickThreads) pick_kernel(const float* logits, int logits_div,
                                                            const int32_t* sorted, int n_rows, State s, Params p) {
  __shared__ double seg_sum[kPickWarps];
  __shared__ float red_v[kPickWarps];
  __shared__ int red_i[kPickWarps];
  __shared__ float scratch[32];
  __shared__ int result;
  __shared__ MassScratch mass_sm;  // top-p draws without an order
  __shared__ int warp_counts[kPickWarps];
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
    } else if constexpr (BY_MASS) {  // top-p alone (each instance compiles one of the two filtered draws)
      const int t = nucleus_draw(z, V, mx, static_cast<float>(inv_t), p.top_p, u, mass_sm, warp_counts);
      token = t >= 0 ? t : arg;  // (t >= 0: the drawn key is in the row)
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
  const auto kernel = p.filtered() && !p.ordered() ? pick_kernel<true> : pick_kernel<false>;
  kernel<<<n_rows, kPickThreads, 0, st>>>(logits, logits_div, sorted, n_rows, s, p);
  OPTUNE_CUDA_CHECK_LAUNCH();
}

// ---- sorting rows of logits -----------------------------------------------------------------------------------------

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

// One block of kPickThreads per row; 0 < k <= kTopKSelectMax, k < vocab.
__global__ void __launch_bounds__(kPickThreads) top_k_select_kernel(int32_t* sorted, const float* logits, int ld,
                                                                    int vocab, int k) {
  __shared__ MassScratch sm;
  __shared__ int warp_counts[kPickWarps];
  __shared__ uint64_t cand[kTopKSelectMax];
  const float* z = logits + static_cast<int64_t>(blockIdx.x) * ld;

  // 1. T = the k-th largest order key: where the running count (a mass of 1 per key) reaches k; `need`: how many
  // keys equal to T the top k hold (the others lie above T). Integer counts: the same T on every run.
  const auto count_k = [k](unsigned long long) { return static_cast<unsigned long long>(k); };
  const Reach kth = reach_mass(z, vocab, [](float) { return 1ull; }, count_k, 0u, sm);
  const int need = static_cast<int>(kth.ties);

  // 2. the candidates, in index order: every key above T, and the first `need` equal to it (index asc, as the
  // full sort's ties)
  const uint32_t T = kth.key;
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
