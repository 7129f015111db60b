// Token log-probs through the LM head without materializing [tokens x vocab] logits: rows are processed in chunks,
// each chunk's logits live in one scratch buffer of at most ~64 MB. Backward recomputes the chunk's logits (cheaper
// than storing them for a 50k-150k vocabulary) and turns them into the softmax gradient in place — unless the
// training forward could keep the softmax of every row it was given (at most 64 MB: a tiny model's whole batch, or
// one group of pairs at a 50k vocabulary, core/train.cpp), which saves the [rows x vocab x d] logits product a
// second time.
#include <algorithm>
#include <climits>
#include <optional>
#include <cmath>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "vecmath.h"

namespace optune::cpu {

int logprob_chunk_rows(int vocab) {
  // floats per chunk (64 MB): ~330 rows at a 50k vocabulary (83 rows, at 16 MB, made the head's GEMMs ~5% slower)
  const int64_t budget = 16 << 20;
  return static_cast<int>(std::max<int64_t>(8, std::min<int64_t>(512, budget / std::max(vocab, 1))));
}

// bf16: W (or W^T) packed once per call for every chunk (the LM head is the largest matrix: packing it per chunk
// would cost as much as the product), in storage from the pool (no fresh pages for a 50k x 768 head each step).
// Nothing when !use: fp32 calls take no lease.
using HeadPack = std::optional<ScratchPool<Bf16B>::Lease>;
static HeadPack pack_head(bool use, const float* w, int d, int vocab, bool transposed) {
  HeadPack p;
  if (!use) return p;
  p.emplace(bf16b_pool().get());
  if (transposed)
    pack_b_bf16(**p, w, d, d, vocab, true);  // W^T [d, V]: logits = H W^T
  else
    pack_b_bf16(**p, w, d, vocab, d, false);  // W [V, d]: dH = dZ W
  return p;
}

struct HeadPacks {
  HeadPacks(const float* w, int d, int vocab)
      : wt(pack_head(true, w, d, vocab, true)), wn(pack_head(true, w, d, vocab, false)) {}
  HeadPack wt, wn;  // W^T [d, V] for the logits, W [V, d] for dH
};

std::shared_ptr<const HeadPacks> pack_head_bf16(const float* w, int d, int vocab) {
  return std::make_shared<const HeadPacks>(w, d, vocab);
}

// Gathers h[src[r]] for the chunk, computes logits = H W^T (in bf16 when wt_bf16 holds W^T packed) and returns
// each row's log-sum-exp.
static void chunk_logits(std::vector<float>& hbuf, std::vector<float>& logits, std::vector<float>& lse,
                         const float* h, const int32_t* src, int r0, int rows, const float* w, int d, int vocab,
                         const Bf16B* wt_bf16) {
  hbuf.resize(static_cast<size_t>(rows) * d);
  logits.resize(static_cast<size_t>(rows) * vocab);
  lse.resize(rows);
  for (int r = 0; r < rows; r++)
    std::copy_n(h + static_cast<size_t>(src[r0 + r]) * d, d, hbuf.data() + static_cast<size_t>(r) * d);
  if (wt_bf16)
    gemm_bf16(false, rows, hbuf.data(), d, *wt_bf16, 1.0f, 0.0f, logits.data(), vocab);
  else
    gemm(false, true, rows, vocab, d, 1.0f, hbuf.data(), d, w, d, 0.0f, logits.data(), vocab);
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; r++) {
    const float* z = logits.data() + static_cast<size_t>(r) * vocab;
    const float mx = max_of(z, vocab);
    float sum = 0.0f;  // the simd reduction keeps one partial sum per lane, which bounds the rounding error
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < vocab; j++) sum += vexp(z[j] - mx);
    lse[r] = mx + std::log(sum);
  }
}

// softmax of a chunk's logits in place (each row's log-sum-exp known)
static void softmax_rows(float* logits, const float* lse, int rows, int vocab) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; r++) {
    float* z = logits + static_cast<size_t>(r) * vocab;
    const float l = lse[r];
#pragma omp simd
    for (int j = 0; j < vocab; j++) z[j] = vexp(z[j] - l);
  }
}

void logprob_forward(float* logp, const float* h, const int32_t* src, const int32_t* target, int n, const float* w,
                     int d, int vocab, std::vector<float>* keep_probs, bool bf16, const HeadPacks* packs) {
  const int chunk = logprob_chunk_rows(vocab);
  const bool keep = keep_probs && logprob_probs_fit(n, vocab);
  if (keep_probs) keep_probs->clear();
  HeadPack wt_pack = pack_head(bf16 && !packs, w, d, vocab, true);
  const Bf16B* wt = packs ? &**packs->wt : wt_pack ? &**wt_pack : nullptr;
  std::vector<float> hbuf, logits, lse;
  for (int r0 = 0; r0 < n; r0 += chunk) {
    const int rows = std::min(chunk, n - r0);
    chunk_logits(hbuf, logits, lse, h, src, r0, rows, w, d, vocab, wt);
    for (int r = 0; r < rows; r++) logp[r0 + r] = logits[static_cast<size_t>(r) * vocab + target[r0 + r]] - lse[r];
    if (keep) {
      softmax_rows(logits.data(), lse.data(), rows, vocab);
      keep_probs->insert(keep_probs->end(), logits.begin(), logits.begin() + static_cast<size_t>(rows) * vocab);
    }
  }
}

static constexpr int64_t kProbsBudget = 16 << 20;  // floats (64 MB): a tiny model's whole batch, a pair at 50k

bool logprob_probs_fit(int n, int vocab) { return static_cast<int64_t>(n) * vocab <= kProbsBudget; }

int logprob_probs_rows(int vocab) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(INT32_MAX, kProbsBudget / std::max(vocab, 1))));
}

void logprob_backward(float* dh, float* dw, const float* g, const float* h, const int32_t* src, const int32_t* target,
                      int n, const float* w, int d, int vocab, std::vector<float>* kept_probs, bool bf16,
                      const HeadPacks* packs) {
  const int chunk = logprob_chunk_rows(vocab);
  const bool kept = kept_probs && kept_probs->size() == static_cast<size_t>(n) * vocab;
  HeadPack wt_pack = pack_head(bf16 && !kept && !packs, w, d, vocab, true);
  HeadPack wn_pack = pack_head(bf16 && !packs, w, d, vocab, false);
  const Bf16B* wt = packs ? &**packs->wt : wt_pack ? &**wt_pack : nullptr;
  const Bf16B* wn = packs ? &**packs->wn : wn_pack ? &**wn_pack : nullptr;
  std::vector<float> hbuf, logits, lse, dhbuf;
  for (int r0 = 0; r0 < n; r0 += chunk) {
    const int rows = std::min(chunk, n - r0);
    float* z0;
    if (kept) {  // the forward's softmax, consumed in place
      z0 = kept_probs->data() + static_cast<size_t>(r0) * vocab;
      hbuf.resize(static_cast<size_t>(rows) * d);
      for (int r = 0; r < rows; r++)
        std::copy_n(h + static_cast<size_t>(src[r0 + r]) * d, d, hbuf.data() + static_cast<size_t>(r) * d);
    } else {
      chunk_logits(hbuf, logits, lse, h, src, r0, rows, w, d, vocab, wt);
      softmax_rows(logits.data(), lse.data(), rows, vocab);
      z0 = logits.data();
    }
    // dlogp/dz = onehot(target) - softmax(z), scaled by the incoming gradient g
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
      float* z = z0 + static_cast<size_t>(r) * vocab;
      const float gr = g[r0 + r];
#pragma omp simd
      for (int j = 0; j < vocab; j++) z[j] *= -gr;
      z[target[r0 + r]] += gr;
    }
    dhbuf.assign(static_cast<size_t>(rows) * d, 0.0f);
    if (bf16) {
      gemm_bf16(false, rows, z0, vocab, *wn, 1.0f, 0.0f, dhbuf.data(), d);                            // dH = dZ W
      if (dw) gemm_bf16(true, false, vocab, d, rows, 1.0f, z0, vocab, hbuf.data(), d, 1.0f, dw, d);  // dW += dZ^T H
    } else {
      gemm(false, false, rows, d, vocab, 1.0f, z0, vocab, w, d, 0.0f, dhbuf.data(), d);
      if (dw) gemm(true, false, vocab, d, rows, 1.0f, z0, vocab, hbuf.data(), d, 1.0f, dw, d);
    }
    for (int r = 0; r < rows; r++) {
      float* dst = dh + static_cast<size_t>(src[r0 + r]) * d;
      const float* s = dhbuf.data() + static_cast<size_t>(r) * d;
      for (int i = 0; i < d; i++) dst[i] += s[i];
    }
  }
}

}  // namespace optune::cpu
