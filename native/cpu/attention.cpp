// Causal self-attention over a packed ragged batch, with grouped-query heads (n_head / n_kv_head query heads share a
// key/value head). Work is split over (sequence, kv head) pairs: every output element has one owner, so results do
// not depend on the thread count and backward needs no atomics.
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "gemm.h"
#include "ops.h"
#include "vecmath.h"

namespace optune::cpu {

int64_t attention_probs_size(const int32_t* offsets, int n_seq, int n_head) {
  int64_t n = 0;
  for (int s = 0; s < n_seq; s++) {
    const int64_t L = offsets[s + 1] - offsets[s];
    n += n_head * L * L;
  }
  return n;
}

static std::vector<int64_t> probs_offsets(const int32_t* offsets, int n_seq, int n_head) {
  std::vector<int64_t> o(n_seq + 1, 0);
  for (int s = 0; s < n_seq; s++) {
    const int64_t L = offsets[s + 1] - offsets[s];
    o[s + 1] = o[s] + n_head * L * L;
  }
  return o;
}

static inline float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

// Row-wise causal softmax of a [L, L] score block in place: row i keeps columns j0..i (j0 = 0, or i - window + 1
// for a sliding window), the rest become 0.
static void causal_softmax_rows(float* p, int L, int window) {
  for (int i = 0; i < L; i++) {
    float* row = p + static_cast<size_t>(i) * L;
    const int j0 = window > 0 ? std::max(0, i - window + 1) : 0;
    const float mx = max_of(row + j0, i + 1 - j0);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = j0; j <= i; j++) {
      row[j] = vexp(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < j0; j++) row[j] = 0.0f;
    for (int j = j0; j <= i; j++) row[j] *= inv;
    for (int j = i + 1; j < L; j++) row[j] = 0.0f;
  }
}

// Per (sequence, head): S = scale * Q K^T, P = causal softmax(S), O = P V, with the two products as GEMMs on
// [L, L] blocks (the upper triangle is computed and then zeroed: twice the minimal flops, but GEMM speed).
// GEMMs called inside the parallel region run single-threaded, so each block's arithmetic is fixed.
void attention_forward(float* out, float* probs, const float* q, int qs, const float* k, int ks, const float* v,
                       int vs, const int32_t* offsets, int n_seq, int n_head, int n_kv_head, int head_dim,
                       int window) {
  const int group = n_head / n_kv_head, od = n_head * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const std::vector<int64_t> po = probs ? probs_offsets(offsets, n_seq, n_head) : std::vector<int64_t>();
  const int n_work = n_seq * n_head;
#pragma omp parallel
  {
    std::vector<float> scratch;  // the [L, L] block when probs are not kept
#pragma omp for schedule(dynamic)
    for (int w = 0; w < n_work; w++) {
      const int s = w / n_head, h = w % n_head, kvh = h / group;
      const int start = offsets[s], L = offsets[s + 1] - start;
      float* p;
      if (probs) {
        p = probs + po[s] + static_cast<int64_t>(h) * L * L;
      } else {
        scratch.resize(static_cast<size_t>(L) * L);
        p = scratch.data();
      }
      const float* qh = q + static_cast<size_t>(start) * qs + h * head_dim;
      const float* kh = k + static_cast<size_t>(start) * ks + kvh * head_dim;
      const float* vh = v + static_cast<size_t>(start) * vs + kvh * head_dim;
      gemm(false, true, L, L, head_dim, scale, qh, qs, kh, ks, 0.0f, p, L);
      causal_softmax_rows(p, L, window);
      gemm(false, false, L, head_dim, L, 1.0f, p, L, vh, vs, 0.0f, out + static_cast<size_t>(start) * od + h * head_dim,
           od);
    }
  }
}

// Per (sequence, kv head), over the query heads that share it (so dk/dv have one owner):
// dV += P^T dO, dP = dO V^T, dS = P * (dP - rowsum(P * dP)) * scale, dQ = dS K, dK += dS^T Q.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q, int qs,
                        const float* k, int ks, const float* v, int vs, const int32_t* offsets, int n_seq, int n_head,
                        int n_kv_head, int head_dim) {
  const int group = n_head / n_kv_head, od = n_head * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const std::vector<int64_t> po = probs_offsets(offsets, n_seq, n_head);
  const int n_work = n_seq * n_kv_head;
#pragma omp parallel
  {
    std::vector<float> ds;
#pragma omp for schedule(dynamic)
    for (int w = 0; w < n_work; w++) {
      const int s = w / n_kv_head, kvh = w % n_kv_head;
      const int start = offsets[s], L = offsets[s + 1] - start;
      ds.resize(static_cast<size_t>(L) * L);
      const float* kh = k + static_cast<size_t>(start) * ks + kvh * head_dim;
      const float* vh = v + static_cast<size_t>(start) * vs + kvh * head_dim;
      float* dkh = dk + static_cast<size_t>(start) * ks + kvh * head_dim;
      float* dvh = dv + static_cast<size_t>(start) * vs + kvh * head_dim;
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const float* p = probs + po[s] + static_cast<int64_t>(h) * L * L;
        const float* doh = dout + static_cast<size_t>(start) * od + h * head_dim;
        const float* qh = q + static_cast<size_t>(start) * qs + h * head_dim;
        const float beta = h == kvh * group ? 0.0f : 1.0f;  // the group's first head overwrites dk/dv
        gemm(true, false, L, head_dim, L, 1.0f, p, L, doh, od, beta, dvh, vs);
        gemm(false, true, L, L, head_dim, 1.0f, doh, od, vh, vs, 0.0f, ds.data(), L);
        for (int i = 0; i < L; i++) {
          const float* pi = p + static_cast<size_t>(i) * L;
          float* di = ds.data() + static_cast<size_t>(i) * L;
          float pdp = 0.0f;
          for (int j = 0; j <= i; j++) pdp += pi[j] * di[j];
          for (int j = 0; j <= i; j++) di[j] = pi[j] * (di[j] - pdp) * scale;
          for (int j = i + 1; j < L; j++) di[j] = 0.0f;
        }
        gemm(false, false, L, head_dim, L, 1.0f, ds.data(), L, kh, ks, 0.0f,
             dq + static_cast<size_t>(start) * qs + h * head_dim, qs);
        gemm(true, false, L, head_dim, L, 1.0f, ds.data(), L, qh, qs, beta, dkh, ks);
      }
    }
  }
}

// The cache holds fp32, or bf16 bits (uint16_t) for bf16 sampling: half the bytes every decode step reads.
static inline float cache_value(float x) { return x; }
static inline float cache_value(uint16_t x) { return from_bf16(x); }
static inline void cache_put(float& dst, float x) { dst = x; }
static inline void cache_put(uint16_t& dst, float x) { dst = to_bf16(x); }

template <class T>
static void kv_cache_store_impl(T* kcache, T* vcache, int slot, int pos, const float* k, const float* v, int cap,
                                int n_kv_head, int head_dim) {
  const int kvd = n_kv_head * head_dim;
  T* kt = kcache + static_cast<size_t>(slot) * kvd * cap;  // [kvd][cap]: feature-major
  for (int f = 0; f < kvd; f++) cache_put(kt[static_cast<size_t>(f) * cap + pos], k[f]);
  T* vr = vcache + (static_cast<size_t>(slot) * cap + pos) * kvd;
  for (int f = 0; f < kvd; f++) cache_put(vr[f], v[f]);
}

// The decode loops with explicit AVX-512 registers (head_dim a multiple of 16, at most 128): the scores of 64
// positions stay in four accumulators over the whole head_dim, and the output row in head_dim/16 accumulators over
// the positions, where the compiled loops stored and reloaded them at every step. Same multiply-adds in the same
// order as the portable loops below (one FMA per element per step), so the same results. Return false when the
// shape (or the build) does not allow them.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
static inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
static inline __m512 load16(const uint16_t* p, __mmask16 m) {
  // bf16 bits are the high half of the fp32 bits; the maskz forms (all lanes) avoid GCC 12's false
  // "may be used uninitialized" on the unmasked intrinsics
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(__mmask16(0xFFFF), _mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(__mmask16(0xFFFF), wide, 16));
}
static inline __mmask16 lanes(int n) { return n >= 16 ? __mmask16(0xFFFF) : n > 0 ? __mmask16((1u << n) - 1) : 0; }

template <class T>
static bool decode_scores_avx512(float* p, const float* qi, float scale, const T* kt, int n, int cap, int hd) {
  if (hd % 16 != 0 || hd > 128) return false;
  for (int j0 = 0; j0 < n; j0 += 64) {
    const __mmask16 m[4] = {lanes(n - j0), lanes(n - j0 - 16), lanes(n - j0 - 32), lanes(n - j0 - 48)};
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int d = 0; d < hd; d++) {
      const __m512 qd = _mm512_set1_ps(qi[d] * scale);
      const T* kd = kt + static_cast<size_t>(d) * cap + j0;
      for (int b = 0; b < 4; b++)
        if (m[b]) acc[b] = _mm512_fmadd_ps(qd, load16(kd + 16 * b, m[b]), acc[b]);
    }
    for (int b = 0; b < 4; b++) _mm512_mask_storeu_ps(p + j0 + 16 * b, m[b], acc[b]);
  }
  return true;
}

// NC (head_dim / 16) is a template argument so the accumulators are registers: with a runtime count GCC keeps
// them in a stack array, and every FMA waited on a store and a reload of its accumulator.
template <int NC, class T>
static void decode_values_regs(float* o, const float* p, float inv, const T* vbase, int n, int kvd) {
  __m512 acc[NC];
  for (int c = 0; c < NC; c++) acc[c] = _mm512_setzero_ps();
  for (int j = 0; j < n; j++) {
    const __m512 pj = _mm512_set1_ps(p[j] * inv);
    const T* vj = vbase + static_cast<size_t>(j) * kvd;
    for (int c = 0; c < NC; c++) acc[c] = _mm512_fmadd_ps(pj, load16(vj + 16 * c, __mmask16(0xFFFF)), acc[c]);
  }
  for (int c = 0; c < NC; c++) _mm512_storeu_ps(o + 16 * c, acc[c]);
}

template <class T>
static bool decode_values_avx512(float* o, const float* p, float inv, const T* vbase, int n, int kvd, int hd) {
  switch (hd % 16 == 0 ? hd / 16 : 0) {
    case 1: decode_values_regs<1>(o, p, inv, vbase, n, kvd); return true;
    case 2: decode_values_regs<2>(o, p, inv, vbase, n, kvd); return true;
    case 3: decode_values_regs<3>(o, p, inv, vbase, n, kvd); return true;
    case 4: decode_values_regs<4>(o, p, inv, vbase, n, kvd); return true;
    case 5: decode_values_regs<5>(o, p, inv, vbase, n, kvd); return true;
    case 6: decode_values_regs<6>(o, p, inv, vbase, n, kvd); return true;
    case 7: decode_values_regs<7>(o, p, inv, vbase, n, kvd); return true;
    case 8: decode_values_regs<8>(o, p, inv, vbase, n, kvd); return true;
    default: return false;
  }
}
#else
template <class T>
static bool decode_scores_avx512(float*, const float*, float, const T*, int, int, int) { return false; }
template <class T>
static bool decode_values_avx512(float*, const float*, float, const T*, int, int, int) { return false; }
#endif

template <class T>
static void attention_decode_impl(float* out, const float* q, int qs, const T* kcache, const T* vcache,
                                  const int32_t* slot, const int32_t* n_keys, int rows, int cap, int n_head,
                                  int n_kv_head, int head_dim, int window) {
  const int group = n_head / n_kv_head;
  const int kvd = n_kv_head * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<float> p(cap);
  for (int r = 0; r < rows; r++)
    for (int h = 0; h < n_head; h++) {
      // a window starts the keys at j0: the same loops over positions j0 .. n_keys - 1
      const int kvh = h / group, j0 = window > 0 ? std::max(0, n_keys[r] - window) : 0, n = n_keys[r] - j0;
      const T* kt =
          kcache + static_cast<size_t>(slot[r]) * kvd * cap + static_cast<size_t>(kvh) * head_dim * cap + j0;
      const T* vbase = vcache + (static_cast<size_t>(slot[r]) * cap + j0) * kvd + kvh * head_dim;
      const float* qi = q + static_cast<size_t>(r) * qs + h * head_dim;
      // scores of all n keys at once: with the keys stored feature-major this is head_dim unit-stride AXPYs over
      // the positions (one horizontal sum per key would cost more than the key's whole dot product)
      if (!decode_scores_avx512(p.data(), qi, scale, kt, n, cap, head_dim)) {
        std::fill(p.begin(), p.begin() + n, 0.0f);
        for (int d = 0; d < head_dim; d++) {
          const float qd = qi[d] * scale;
          const T* kd = kt + static_cast<size_t>(d) * cap;
#pragma omp simd
          for (int j = 0; j < n; j++) p[j] += qd * cache_value(kd[j]);
        }
      }
      const float mx = max_of(p.data(), n);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < n; j++) {
        p[j] = vexp(p[j] - mx);
        sum += p[j];
      }
      const float inv = 1.0f / sum;
      float* o = out + static_cast<size_t>(r) * (n_head * head_dim) + h * head_dim;
      if (!decode_values_avx512(o, p.data(), inv, vbase, n, kvd, head_dim)) {
        std::fill(o, o + head_dim, 0.0f);
        for (int j = 0; j < n; j++) {
          const float pj = p[j] * inv;
          const T* vj = vbase + static_cast<size_t>(j) * kvd;
#pragma omp simd
          for (int d = 0; d < head_dim; d++) o[d] += pj * cache_value(vj[d]);
        }
      }
    }
}

void kv_cache_store(float* kcache, float* vcache, int slot, int pos, const float* k, const float* v, int cap,
                    int n_kv_head, int head_dim) {
  kv_cache_store_impl(kcache, vcache, slot, pos, k, v, cap, n_kv_head, head_dim);
}
void kv_cache_store(uint16_t* kcache, uint16_t* vcache, int slot, int pos, const float* k, const float* v, int cap,
                    int n_kv_head, int head_dim) {
  kv_cache_store_impl(kcache, vcache, slot, pos, k, v, cap, n_kv_head, head_dim);
}

void attention_decode(float* out, const float* q, int qs, const float* kcache, const float* vcache,
                      const int32_t* slot, const int32_t* n_keys, int rows, int cap, int n_head, int n_kv_head,
                      int head_dim, int window) {
  attention_decode_impl(out, q, qs, kcache, vcache, slot, n_keys, rows, cap, n_head, n_kv_head, head_dim, window);
}
void attention_decode(float* out, const float* q, int qs, const uint16_t* kcache, const uint16_t* vcache,
                      const int32_t* slot, const int32_t* n_keys, int rows, int cap, int n_head, int n_kv_head,
                      int head_dim, int window) {
  attention_decode_impl(out, q, qs, kcache, vcache, slot, n_keys, rows, cap, n_head, n_kv_head, head_dim, window);
}

}  // namespace optune::cpu
