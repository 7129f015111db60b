// Token log-probs through the LM head without materializing [tokens x vocab] logits: rows are processed in chunks,
// each chunk's logits live in one scratch buffer of at most ~16 MB. Backward recomputes the chunk's logits (cheaper
// than storing them for a 50k-150k vocabulary) and turns them into the softmax gradient in place.
#include <algorithm>
#include <cmath>
#include <vector>

#include "gemm.h"
#include "ops.h"
#include "vecmath.h"

namespace optune::cpu {

int logprob_chunk_rows(int vocab) {
  const int64_t budget = 4 << 20;  // floats per chunk (16 MB)
  return static_cast<int>(std::max<int64_t>(8, std::min<int64_t>(512, budget / std::max(vocab, 1))));
}

// Gathers h[src[r]] for the chunk, computes logits = H W^T and returns each row's log-sum-exp.
static void chunk_logits(std::vector<float>& hbuf, std::vector<float>& logits, std::vector<float>& lse,
                         const float* h, const int32_t* src, int r0, int rows, const float* w, int d, int vocab) {
  hbuf.resize(static_cast<size_t>(rows) * d);
  logits.resize(static_cast<size_t>(rows) * vocab);
  lse.resize(rows);
  for (int r = 0; r < rows; r++)
    std::copy_n(h + static_cast<size_t>(src[r0 + r]) * d, d, hbuf.data() + static_cast<size_t>(r) * d);
  gemm(false, true, rows, vocab, d, 1.0f, hbuf.data(), d, w, d, 0.0f, logits.data(), vocab);
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; r++) {
    const float* z = logits.data() + static_cast<size_t>(r) * vocab;
    float mx = -INFINITY;
    for (int j = 0; j < vocab; j++) mx = std::max(mx, z[j]);
    float sum = 0.0f;  // the simd reduction keeps one partial sum per lane, which bounds the rounding error
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < vocab; j++) sum += vexp(z[j] - mx);
    lse[r] = mx + std::log(sum);
  }
}

void logprob_forward(float* logp, const float* h, const int32_t* src, const int32_t* target, int n, const float* w,
                     int d, int vocab) {
  const int chunk = logprob_chunk_rows(vocab);
  std::vector<float> hbuf, logits, lse;
  for (int r0 = 0; r0 < n; r0 += chunk) {
    const int rows = std::min(chunk, n - r0);
    chunk_logits(hbuf, logits, lse, h, src, r0, rows, w, d, vocab);
    for (int r = 0; r < rows; r++) logp[r0 + r] = logits[static_cast<size_t>(r) * vocab + target[r0 + r]] - lse[r];
  }
}

void logprob_backward(float* dh, float* dw, const float* g, const float* h, const int32_t* src, const int32_t* target,
                      int n, const float* w, int d, int vocab) {
  const int chunk = logprob_chunk_rows(vocab);
  std::vector<float> hbuf, logits, lse, dhbuf;
  for (int r0 = 0; r0 < n; r0 += chunk) {
    const int rows = std::min(chunk, n - r0);
    chunk_logits(hbuf, logits, lse, h, src, r0, rows, w, d, vocab);
    // dlogp/dz = onehot(target) - softmax(z), scaled by the incoming gradient g
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
      float* z = logits.data() + static_cast<size_t>(r) * vocab;
      const float gr = g[r0 + r];
      const float l = lse[r];
#pragma omp simd
      for (int j = 0; j < vocab; j++) z[j] = -gr * vexp(z[j] - l);
      z[target[r0 + r]] += gr;
    }
    dhbuf.assign(static_cast<size_t>(rows) * d, 0.0f);
    gemm(false, false, rows, d, vocab, 1.0f, logits.data(), vocab, w, d, 0.0f, dhbuf.data(), d);  // dH = dZ W
    gemm(true, false, vocab, d, rows, 1.0f, logits.data(), vocab, hbuf.data(), d, 1.0f, dw, d);    // dW += dZ^T H
    for (int r = 0; r < rows; r++) {
      float* dst = dh + static_cast<size_t>(src[r0 + r]) * d;
      const float* s = dhbuf.data() + static_cast<size_t>(r) * d;
      for (int i = 0; i < d; i++) dst[i] += s[i];
    }
  }
}

}  // namespace optune::cpu
