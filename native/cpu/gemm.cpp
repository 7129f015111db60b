#include "gemm.h"
#include "parallel.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

#ifdef OPTUNE_HAVE_CBLAS
#include <cblas.h>
#endif

namespace optune::cpu {

const char* blas_name() { return OPTUNE_BLAS_NAME; }

// ---- built-in fp32 GEMM (no BLAS) ---------------------------------------------------------------------------------
// BLIS-style: op(B) is packed per KC x NC block into panels of NR columns ([k][NR] each), op(A) per MC x KC block
// into panels of MR rows ([k][MR] each), and an MR x NR micro-kernel keeps its tile of C in registers through the
// whole K block. (The AXPY loop it replaced re-read and rewrote a row of C for every k: a load and a store per
// multiply-add, ~3.4x slower than OpenBLAS on a SmolLM2-135M forward.) Every element of C adds its K blocks in
// order and each block's terms in order, so results do not depend on the thread count: tasks split C, never K.
namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16, kMR = 8;  // 16 accumulators of 32 zmm registers
#elif defined(__AVX__)
constexpr int kLanes = 8, kMR = 6;  // 12 of 16 ymm
#else
constexpr int kLanes = 4, kMR = 6;  // 12 of 16 xmm (SSE2) or 32 (NEON)
#endif
constexpr int kNR = 2 * kLanes;
constexpr int kKC = 384, kMC = 16 * kMR, kNC = 128 * kNR;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// C tile (mr x nr valid of MR x NR) = alpha * A panel . B panel over kc terms, plus beta * C when `first` (the
// first K block; beta 0 ignores C) or plus C (later blocks). Full tiles are stored straight from the registers.
void micro_kernel(int kc, const float* __restrict ap, const float* __restrict bp, float* c, int ldc, int mr, int nr,
                  float alpha, float beta, bool first) {
  Vec acc[kMR][2] = {};
  for (int k = 0; k < kc; k++) {
    const Vec b0 = load(bp + k * kNR), b1 = load(bp + k * kNR + kLanes);
    const float* a = ap + k * kMR;
#pragma GCC unroll 16
    for (int r = 0; r < kMR; r++) {
      acc[r][0] += a[r] * b0;
      acc[r][1] += a[r] * b1;
    }
  }
  const float keep = first ? beta : 1.0f;
  if (mr == kMR && nr == kNR) {
#pragma GCC unroll 16
    for (int r = 0; r < kMR; r++)
      for (int h = 0; h < 2; h++) {
        float* cr = c + static_cast<size_t>(r) * ldc + h * kLanes;
        store(cr, keep == 0.0f ? alpha * acc[r][h] : alpha * acc[r][h] + keep * load(cr));
      }
    return;
  }
  float tile[kMR][kNR];
  for (int r = 0; r < kMR; r++) store(tile[r], acc[r][0]), store(tile[r] + kLanes, acc[r][1]);
  for (int r = 0; r < mr; r++)
    for (int j = 0; j < nr; j++) {
      float& cij = c[static_cast<size_t>(r) * ldc + j];
      cij = keep == 0.0f ? alpha * tile[r][j] : alpha * tile[r][j] + keep * cij;
    }
}

// op(A)[i0 : i0 + mc, k0 : k0 + kc] into MR-row panels, rows past mc zero.
void pack_a_block(float* ap, const float* A, int lda, bool trans_a, int i0, int mc, int k0, int kc) {
  for (int p = 0; p * kMR < mc; p++) {
    float* dst = ap + static_cast<size_t>(p) * kc * kMR;
    const int rows = std::min(kMR, mc - p * kMR), i = i0 + p * kMR;
    if (trans_a) {  // op(A)'s rows are A's columns: read along them, k by k
      for (int k = 0; k < kc; k++) {
        const float* src = A + static_cast<size_t>(k0 + k) * lda + i;
        for (int r = 0; r < kMR; r++) dst[k * kMR + r] = r < rows ? src[r] : 0.0f;
      }
    } else {
      for (int r = 0; r < kMR; r++) {
        const float* src = A + static_cast<size_t>(i + r) * lda + k0;
        for (int k = 0; k < kc; k++) dst[k * kMR + r] = r < rows ? src[k] : 0.0f;
      }
    }
  }
}

// op(B)[k0 : k0 + kc, j0 : j0 + nc] into NR-column panels, columns past nc zero; panels split over the threads.
void pack_b_block(float* bp, const float* B, int ldb, bool trans_b, int k0, int kc, int j0, int nc) {
  parallel_for((nc + kNR - 1) / kNR, [&](int64_t q) {
    float* dst = bp + static_cast<size_t>(q) * kc * kNR;
    const int jq = j0 + static_cast<int>(q) * kNR, cols = std::min(kNR, j0 + nc - jq);
    for (int k = 0; k < kc; k++) {
      float* d = dst + k * kNR;
      if (!trans_b) {
        const float* src = B + static_cast<size_t>(k0 + k) * ldb + jq;
        for (int j = 0; j < cols; j++) d[j] = src[j];
      } else {
        for (int j = 0; j < cols; j++) d[j] = B[static_cast<size_t>(jq + j) * ldb + k0 + k];
      }
      for (int j = cols; j < kNR; j++) d[j] = 0.0f;
    }
  });
}

}  // namespace

void gemm_builtin(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // no products: C = beta * C
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        float& c = C[static_cast<size_t>(i) * ldc + j];
        c = beta == 0.0f ? 0.0f : beta * c;
      }
    return;
  }
  static thread_local PackBuffer<float> b_pack;
  b_pack.resize(static_cast<size_t>(std::min(K, kKC)) * ((std::min(N, kNC) + kNR - 1) / kNR * kNR));
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  for (int j0 = 0; j0 < N; j0 += kNC) {
    const int nc = std::min(kNC, N - j0), b_panels = (nc + kNR - 1) / kNR;
    for (int k0 = 0; k0 < K; k0 += kKC) {
      const int kc = std::min(kKC, K - k0);
      pack_b_block(b_pack.data(), B, ldb, trans_b, k0, kc, j0, nc);
      // tasks: MC-row blocks of C, each split into column ranges so that there are >= 4 tasks per thread (5 blocks
      // on 2 threads, unsplit, left one thread idle a sixth of the time)
      const int m_blocks = (M + kMC - 1) / kMC;
      const int n_parts = threads == 1 ? 1 : std::min(b_panels, (4 * threads + m_blocks - 1) / m_blocks);
      const float* bp = b_pack.data();
      parallel_for(static_cast<int64_t>(m_blocks) * n_parts, [&](int64_t t) {
        static thread_local PackBuffer<float> a_pack;
        const int i0 = static_cast<int>(t / n_parts) * kMC, mc = std::min(kMC, M - i0);
        const int part = static_cast<int>(t % n_parts);
        const int q0 = part * b_panels / n_parts, q1 = (part + 1) * b_panels / n_parts;
        a_pack.resize(static_cast<size_t>(kMC) * kc);
        pack_a_block(a_pack.data(), A, lda, trans_a, i0, mc, k0, kc);
        for (int q = q0; q < q1; q++) {
          const int jq = q * kNR, nr = std::min(kNR, nc - jq);
          for (int p = 0; p * kMR < mc; p++)
            micro_kernel(kc, a_pack.data() + static_cast<size_t>(p) * kc * kMR, bp + static_cast<size_t>(q) * kc * kNR,
                         C + static_cast<size_t>(i0 + p * kMR) * ldc + j0 + jq, ldc, std::min(kMR, mc - p * kMR), nr,
                         alpha, beta, k0 == 0);
        }
      });
    }
  }
}

bool bf16_native() {
#ifdef __AVX512BF16__
  return true;
#else
  return false;
#endif
}

// op(B) into bf16 pair panels, in p's storage (its capacity is kept: repacking the same shapes every step then
// touches no fresh pages, whose first-touch zeroing cost ~6% of a GPT-2 124M bf16 step).
static void pack_pairs_into(PackedB& p, const float* B, int ldb, int K, int N, bool trans_b) {
  constexpr int W = PackedB::kPanel;
  const int panels = (N + W - 1) / W, KP = (K + 1) / 2;  // k pairs; an odd K gets a zero partner
  p.K = K;
  p.N = N;
  p.bf16 = true;
  p.data.clear();
  p.pairs.resize(static_cast<size_t>(panels) * KP * W);
#pragma omp parallel for schedule(static)
  for (int pi = 0; pi < panels; pi++) {
    uint32_t* dst = p.pairs.data() + static_cast<size_t>(pi) * KP * W;
    const int n0 = pi * W, nj = std::min(W, N - n0);
    if (!trans_b) {  // B is [K, N]: two rows of B give a row of pairs
      for (int kk = 0; kk < KP; kk++) {
        const float* lo = B + static_cast<size_t>(2 * kk) * ldb + n0;
        const float* hi = 2 * kk + 1 < K ? lo + ldb : nullptr;
        uint32_t* d = dst + static_cast<size_t>(kk) * W;
        if (hi) {
#pragma omp simd
          for (int j = 0; j < nj; j++) d[j] = bf16_pair(lo[j], hi[j]);
        } else {
          for (int j = 0; j < nj; j++) d[j] = bf16_pair(lo[j], 0.0f);
        }
      }
    } else {  // B is [N, K]: each column's consecutive k already form its pairs
      for (int j = 0; j < nj; j++) {
        const float* row = B + static_cast<size_t>(n0 + j) * ldb;
        for (int kk = 0; kk < K / 2; kk++) dst[static_cast<size_t>(kk) * W + j] = bf16_pair(row[2 * kk], row[2 * kk + 1]);
        if (K % 2) dst[static_cast<size_t>(KP - 1) * W + j] = bf16_pair(row[K - 1], 0.0f);
      }
    }
    for (int kk = 0; kk < KP && nj < W; kk++)  // the last panel's columns past N are zero
      std::fill(dst + static_cast<size_t>(kk) * W + nj, dst + static_cast<size_t>(kk + 1) * W, 0u);
  }
}

void pack_b_into(PackedB& p, const float* B, int ldb, int K, int N, bool trans_b, bool bf16) {
  constexpr int W = PackedB::kPanel;
  if (bf16) {
    pack_pairs_into(p, B, ldb, K, N, trans_b);
    return;
  }
  p.K = K;
  p.N = N;
  p.bf16 = false;
  p.pairs.clear();
  const int panels = (N + W - 1) / W;
  auto at = [&](int k, int n) { return trans_b ? B[static_cast<size_t>(n) * ldb + k] : B[static_cast<size_t>(k) * ldb + n]; };
  p.data.resize(static_cast<size_t>(panels) * K * W);
#pragma omp parallel for schedule(static)
  for (int pi = 0; pi < panels; pi++) {
    float* dst = p.data.data() + static_cast<size_t>(pi) * K * W;
    const int nj = std::min(W, N - pi * W);
    for (int k = 0; k < K; k++) {
      for (int j = 0; j < nj; j++) dst[static_cast<size_t>(k) * W + j] = at(k, pi * W + j);
      for (int j = nj; j < W; j++) dst[static_cast<size_t>(k) * W + j] = 0.0f;  // the last panel's padding
    }
  }
}

PackedB pack_b(const float* B, int ldb, int K, int N, bool trans_b, bool bf16) {
  PackedB p;
  pack_b_into(p, B, ldb, K, N, trans_b, bf16);
  return p;
}

// op(A) rounded to bf16 as one 32-bit pair (op(A)[i][2kk], op(A)[i][2kk+1]) per row i and k pair kk, at
// pairs[i * row_stride + kk * pair_stride]. Built in one vectorizable pass: a row-major A gives [M][KP] (each row's
// consecutive k already form the pairs), a transposed A gives [KP][M] (two rows of A interleaved), so neither
// case gathers strided elements per k.
struct PairsA {
  PackBuffer<uint32_t> data;
  size_t row_stride = 0, pair_stride = 0;
};

static size_t scratch_bytes(const PairsA& a) { return a.data.capacity() * sizeof(uint32_t); }

static ScratchPool<PairsA>& pairs_pool() {
  static ScratchPool<PairsA> pool;
  return pool;
}

ScratchPool<Bf16B>& bf16b_pool() {
  static ScratchPool<Bf16B> pool;
  return pool;
}

static void pairs_of_a(PairsA& p, const float* A, int lda, bool trans_a, int M, int K) {
  const int KP = (K + 1) / 2;
  p.data.resize(static_cast<size_t>(M) * KP);
  if (!trans_a) {
    p.row_stride = KP;
    p.pair_stride = 1;
#pragma omp parallel for schedule(static) if (M > 64)
    for (int i = 0; i < M; i++) {
      const float* a = A + static_cast<size_t>(i) * lda;
      uint32_t* d = p.data.data() + static_cast<size_t>(i) * KP;
      for (int kk = 0; kk < K / 2; kk++) d[kk] = bf16_pair(a[2 * kk], a[2 * kk + 1]);
      if (K % 2) d[KP - 1] = bf16_pair(a[K - 1], 0.0f);
    }
  } else {
    p.row_stride = 1;
    p.pair_stride = M;
#pragma omp parallel for schedule(static) if (M > 64)
    for (int kk = 0; kk < KP; kk++) {
      const float* lo = A + static_cast<size_t>(2 * kk) * lda;
      const float* hi = 2 * kk + 1 < K ? A + static_cast<size_t>(2 * kk + 1) * lda : nullptr;
      uint32_t* d = p.data.data() + static_cast<size_t>(kk) * M;
      if (hi)
        for (int i = 0; i < M; i++) d[i] = bf16_pair(lo[i], hi[i]);
      else
        for (int i = 0; i < M; i++) d[i] = bf16_pair(lo[i], 0.0f);
    }
  }
}

// How a bf16 product reads op(A) and writes C: C = alpha * op(A) B + beta * C (beta 0: C is not read).
struct Bf16Product {
  const PairsA* a;
  int kk0;  // B holds k pairs kk0 .. kk0 + B.K/2 of op(B)
  float alpha, beta;
};

// One MR x (NP * 16) tile of C: each vdpbf16ps adds a[k]*b[k] + a[k+1]*b[k+1] for 16 columns into fp32
// accumulators. Two panels side by side give 8 x 2 = 16 independent accumulators, enough to hide the
// instruction's latency; each broadcast of an A pair then feeds two of them.
template <int MR, int NP>
static void bf16_tile(const uint32_t* a0, size_t rs, size_t ps, const uint32_t* panel0, size_t panel_size, int KP,
                      float (*out)[PackedB::kPanel * 2]) {
  constexpr int W = PackedB::kPanel;
#ifdef __AVX512BF16__
  __m512 acc[MR][NP];
  for (int r = 0; r < MR; r++)
    for (int q = 0; q < NP; q++) acc[r][q] = _mm512_setzero_ps();
  for (int kk = 0; kk < KP; kk++) {
    __m512bh b[NP];
    for (int q = 0; q < NP; q++)
      b[q] = (__m512bh)_mm512_loadu_si512(panel0 + q * panel_size + static_cast<size_t>(kk) * W);
    const uint32_t* a = a0 + kk * ps;
    for (int r = 0; r < MR; r++) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * rs]));
      for (int q = 0; q < NP; q++) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], ar, b[q]);
    }
  }
  for (int r = 0; r < MR; r++)
    for (int q = 0; q < NP; q++) _mm512_storeu_ps(out[r] + q * W, acc[r][q]);
#else
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < NP * W; j++) out[r][j] = 0.0f;
  for (int kk = 0; kk < KP; kk++) {
    const uint32_t* a = a0 + kk * ps;
    for (int q = 0; q < NP; q++) {
      const uint32_t* b = panel0 + q * panel_size + static_cast<size_t>(kk) * W;
      for (int r = 0; r < MR; r++) {
        const uint32_t ar = a[r * rs];
        const float alo = from_bf16(static_cast<uint16_t>(ar)), ahi = from_bf16(static_cast<uint16_t>(ar >> 16));
        for (int j = 0; j < W; j++)
          out[r][q * W + j] += alo * from_bf16(static_cast<uint16_t>(b[j])) + ahi * from_bf16(static_cast<uint16_t>(b[j] >> 16));
      }
    }
  }
#endif
}

// Rows row0 .. row1 of C at panel pair pp (columns 32 pp .. 32 pp + 32), in row blocks of 8, then 4, 2, 1. The
// pair's panels (K/2 x 128 bytes) stay in cache while every row block passes over them.
template <int MR>
static void bf16_rows(const Bf16Product& s, int& row, int row1, int pp, const PackedB& B, float* C, int ldc) {
  constexpr int W = PackedB::kPanel;
  const int N = B.N, KP = (B.K + 1) / 2, panels = (N + W - 1) / W;
  const int pi = 2 * pp, np = std::min(2, panels - pi);
  const size_t rs = s.a->row_stride, ps = s.a->pair_stride, panel_size = static_cast<size_t>(KP) * W;
  const uint32_t* panel = B.pairs.data() + pi * panel_size;
  for (; row + MR <= row1; row += MR) {
    const uint32_t* a0 = s.a->data.data() + static_cast<size_t>(row) * rs + static_cast<size_t>(s.kk0) * ps;
    float out[MR][2 * W];
    if (np == 2)
      bf16_tile<MR, 2>(a0, rs, ps, panel, panel_size, KP, out);
    else
      bf16_tile<MR, 1>(a0, rs, ps, panel, panel_size, KP, out);
    const int nj = std::min(np * W, N - pi * W);
    for (int r = 0; r < MR; r++) {
      float* c = C + static_cast<size_t>(row + r) * ldc + pi * W;
      if (s.beta == 0.0f)
        for (int j = 0; j < nj; j++) c[j] = s.alpha * out[r][j];
      else
        for (int j = 0; j < nj; j++) c[j] = s.alpha * out[r][j] + s.beta * c[j];
    }
  }
}

static void bf16_block(const Bf16Product& s, int row0, int row1, int pp, const PackedB& B, float* C, int ldc) {
  int row = row0;
  bf16_rows<8>(s, row, row1, pp, B, C, ldc);
  bf16_rows<4>(s, row, row1, pp, B, C, ldc);
  bf16_rows<2>(s, row, row1, pp, B, C, ldc);
  bf16_rows<1>(s, row, row1, pp, B, C, ldc);
}

// The product over one K slice, split over threads by panel pairs when B is wide (the LM head: thousands of pairs,
// each read once) or the rows are few, else by 64-row slabs (each thread streams all of a small B). Either way
// every element of C is one tile's fixed sequence over K: the split does not change the result.
static void bf16_product(const Bf16Product& s, int M, const PackedB& B, float* C, int ldc) {
  constexpr int W = PackedB::kPanel, kSlab = 64;
  const int pairs = ((B.N + W - 1) / W + 1) / 2, slabs = (M + kSlab - 1) / kSlab;
  const bool by_panels = pairs >= 4 * slabs || static_cast<size_t>(B.pairs.size()) * 4 > (512u << 10);
  if (by_panels) {
    parallel_for(pairs, [&](int64_t pp) { bf16_block(s, 0, M, static_cast<int>(pp), B, C, ldc); });
  } else {
    parallel_for(slabs, [&](int64_t sl) {
      for (int pp = 0; pp < pairs; pp++) bf16_block(s, sl * kSlab, std::min<int>(M, (sl + 1) * kSlab), pp, B, C, ldc);
    });
  }
}

void pack_b_bf16(Bf16B& p, const float* B, int ldb, int K, int N, bool trans_b) {
  p.K = K;
  p.N = N;
  // A long K (the weight gradients' K is the token count) goes in slices of 512, so a slab's pass over a slice of
  // B stays in L2; the slices' partial products add up in C. Up to 1024: one slice (more slices would re-read C
  // more often than they save).
  p.slice = K <= 1024 ? std::max(2, K + (K % 2)) : 512;
  const int n = (std::max(K, 1) + p.slice - 1) / p.slice;
  p.slices.resize(n);
  for (int i = 0; i < n; i++) {
    const int k0 = i * p.slice;
    const float* b0 = trans_b ? B + k0 : B + static_cast<size_t>(k0) * ldb;
    pack_pairs_into(p.slices[i], b0, ldb, std::min(p.slice, K - k0), N, trans_b);
  }
}

void gemm_bf16(bool trans_a, int M, const float* A, int lda, const Bf16B& B, float alpha, float beta, float* C,
               int ldc) {
  if (M <= 0 || B.N <= 0) return;
  auto pa = pairs_pool().get();
  pairs_of_a(*pa, A, lda, trans_a, M, B.K);
  for (size_t i = 0; i < B.slices.size(); i++)
    bf16_product({&*pa, static_cast<int>(i) * B.slice / 2, alpha, i == 0 ? beta : 1.0f}, M, B.slices[i], C, ldc);
}

void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
               int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  auto packed = bf16b_pool().get();
  pack_b_bf16(*packed, B, ldb, K, N, trans_b);
  gemm_bf16(trans_a, M, A, lda, *packed, alpha, beta, C, ldc);
}

// One block of MR rows of C against one panel of B (K x 16). MR is a compile-time constant so the accumulators stay
// in registers and no padded (all-zero) rows are computed: a decode group of 8 rows costs 8 rows of FMAs, not 16.
// Each row's sums run over k in order whatever MR is, so a row's result does not depend on its block.
template <int MR>
static void panel_rows(const float* ap, const float* panel, int K, int nj, float* C, int ldc) {
  constexpr int W = PackedB::kPanel;
  float acc[MR][W] = {};
  for (int k = 0; k < K; k++) {
    const float* b = panel + static_cast<size_t>(k) * W;
    const float* ak = ap + static_cast<size_t>(k) * MR;
    for (int r = 0; r < MR; r++) {
#pragma omp simd
      for (int j = 0; j < W; j++) acc[r][j] += ak[r] * b[j];
    }
  }
  for (int r = 0; r < MR; r++) std::copy_n(acc[r], nj, C + static_cast<size_t>(r) * ldc);
}

void gemm_packed(int M, const float* A, int lda, const PackedB& B, float* C, int ldc) {
  if (B.bf16) {
    auto pa = pairs_pool().get();
    pairs_of_a(*pa, A, lda, false, M, B.K);
    bf16_product({&*pa, 0, 1.0f, 0.0f}, M, B, C, ldc);
    return;
  }
  constexpr int W = PackedB::kPanel;
  const int K = B.K, N = B.N, panels = (N + W - 1) / W;
  // Rows in blocks of 16, then the remainder in blocks of 8, 4, 2, 1; each block's rows of A k-major.
  std::vector<std::pair<int, int>> blocks;  // (first row, rows)
  for (int i = 0, mr = 16; i < M;) {
    while (i + mr > M) mr /= 2;
    blocks.emplace_back(i, mr);
    i += mr;
  }
  std::vector<float> ap(static_cast<size_t>(K) * M);
  for (const auto& [i0, mr] : blocks)
    for (int r = 0; r < mr; r++)
      for (int k = 0; k < K; k++)
        ap[static_cast<size_t>(i0) * K + static_cast<size_t>(k) * mr + r] = A[static_cast<size_t>(i0 + r) * lda + k];
  // Panels outside, row blocks inside: a panel is read from memory once for all M rows and stays in cache for the
  // blocks after the first (decode steps stream the weights; their M rows then cost one pass over them, not M / 16).
  // Meant for few rows (decode groups, the prompts' last rows): every panel re-reads all of A, K x M floats.
  parallel_for(panels, [&](int64_t p) {
    const int pi = static_cast<int>(p);
    const float* panel = B.data.data() + static_cast<size_t>(pi) * K * W;
    const int nj = std::min(W, N - pi * W);
    for (const auto& [i0, mr] : blocks) {
      const float* a = ap.data() + static_cast<size_t>(i0) * K;
      float* c = C + static_cast<size_t>(i0) * ldc + pi * W;
      switch (mr) {
        case 16: panel_rows<16>(a, panel, K, nj, c, ldc); break;
        case 8: panel_rows<8>(a, panel, K, nj, c, ldc); break;
        case 4: panel_rows<4>(a, panel, K, nj, c, ldc); break;
        case 2: panel_rows<2>(a, panel, K, nj, c, ldc); break;
        default: panel_rows<1>(a, panel, K, nj, c, ldc); break;
      }
    }
  });
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
#ifdef OPTUNE_HAVE_CBLAS
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha,
              A, lda, B, ldb, beta, C, ldc);
#else
  gemm_builtin(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

}  // namespace optune::cpu
