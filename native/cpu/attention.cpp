// Causal self-attention over a packed ragged batch, with grouped-query heads (n_head / n_kv_head query heads share a
// key/value head). Work is split over (sequence, kv head) pairs: every output element has one owner, so results do
// not depend on the thread count and backward needs no atomics.
#include <algorithm>
#include <cmath>
#include <vector>

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

void attention_forward(float* out, float* probs, const float* q, int qs, const float* k, int ks, const float* v,
                       int vs, const int32_t* offsets, int n_seq, int n_head, int n_kv_head, int head_dim) {
  const int group = n_head / n_kv_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const std::vector<int64_t> po = probs ? probs_offsets(offsets, n_seq, n_head) : std::vector<int64_t>();
  const int n_work = n_seq * n_kv_head;
#pragma omp parallel
  {
    std::vector<float> row;  // scratch softmax row when probs are not kept
#pragma omp for schedule(dynamic)
    for (int w = 0; w < n_work; w++) {
      const int s = w / n_kv_head, kvh = w % n_kv_head;
      const int start = offsets[s], L = offsets[s + 1] - start;
      if (!probs) row.resize(L);
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int i = 0; i < L; i++) {
          const float* qi = q + static_cast<size_t>(start + i) * qs + h * head_dim;
          float* p = probs ? probs + po[s] + (static_cast<int64_t>(h) * L + i) * L : row.data();
          float mx = -INFINITY;
          for (int j = 0; j <= i; j++) {
            const float* kj = k + static_cast<size_t>(start + j) * ks + kvh * head_dim;
            p[j] = dot(qi, kj, head_dim) * scale;
            mx = std::max(mx, p[j]);
          }
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int j = 0; j <= i; j++) {
            p[j] = vexp(p[j] - mx);
            sum += p[j];
          }
          const float inv = 1.0f / sum;
          for (int j = 0; j <= i; j++) p[j] *= inv;
          if (probs)
            for (int j = i + 1; j < L; j++) p[j] = 0.0f;
          float* o = out + static_cast<size_t>(start + i) * (n_head * head_dim) + h * head_dim;
          std::fill(o, o + head_dim, 0.0f);
          for (int j = 0; j <= i; j++) {
            const float* vj = v + static_cast<size_t>(start + j) * vs + kvh * head_dim;
            const float pj = p[j];
#pragma omp simd
            for (int d = 0; d < head_dim; d++) o[d] += pj * vj[d];
          }
        }
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* probs, const float* q, int qs,
                        const float* k, int ks, const float* v, int vs, const int32_t* offsets, int n_seq, int n_head,
                        int n_kv_head, int head_dim) {
  const int group = n_head / n_kv_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const std::vector<int64_t> po = probs_offsets(offsets, n_seq, n_head);
  const int n_work = n_seq * n_kv_head;
#pragma omp parallel
  {
    std::vector<float> dp;
#pragma omp for schedule(dynamic)
    for (int w = 0; w < n_work; w++) {
      const int s = w / n_kv_head, kvh = w % n_kv_head;
      const int start = offsets[s], L = offsets[s + 1] - start;
      dp.resize(L);
      for (int j = 0; j < L; j++) {
        std::fill_n(dk + static_cast<size_t>(start + j) * ks + kvh * head_dim, head_dim, 0.0f);
        std::fill_n(dv + static_cast<size_t>(start + j) * vs + kvh * head_dim, head_dim, 0.0f);
      }
      for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int i = 0; i < L; i++) {
          const float* p = probs + po[s] + (static_cast<int64_t>(h) * L + i) * L;
          const float* doi = dout + static_cast<size_t>(start + i) * (n_head * head_dim) + h * head_dim;
          const float* qi = q + static_cast<size_t>(start + i) * qs + h * head_dim;
          float* dqi = dq + static_cast<size_t>(start + i) * qs + h * head_dim;
          // dP_ij = dO_i . V_j ; dv_j += P_ij dO_i
          float pdp = 0.0f;
          for (int j = 0; j <= i; j++) {
            const float* vj = v + static_cast<size_t>(start + j) * vs + kvh * head_dim;
            float* dvj = dv + static_cast<size_t>(start + j) * vs + kvh * head_dim;
            dp[j] = dot(doi, vj, head_dim);
            pdp += p[j] * dp[j];
            const float pj = p[j];
#pragma omp simd
            for (int d = 0; d < head_dim; d++) dvj[d] += pj * doi[d];
          }
          // softmax backward, then the scaled dot product
          std::fill(dqi, dqi + head_dim, 0.0f);
          for (int j = 0; j <= i; j++) {
            const float ds = p[j] * (dp[j] - pdp) * scale;
            const float* kj = k + static_cast<size_t>(start + j) * ks + kvh * head_dim;
            float* dkj = dk + static_cast<size_t>(start + j) * ks + kvh * head_dim;
#pragma omp simd
            for (int d = 0; d < head_dim; d++) {
              dqi[d] += ds * kj[d];
              dkj[d] += ds * qi[d];
            }
          }
        }
      }
    }
  }
}

void attention_decode(float* out, const float* q, int qs, const float* kcache, const float* vcache,
                      const int32_t* slot, const int32_t* n_keys, int rows, int cap, int n_head, int n_kv_head,
                      int head_dim) {
  const int group = n_head / n_kv_head;
  const int kvd = n_kv_head * head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int n_work = rows * n_head;
#pragma omp parallel
  {
    std::vector<float> p;
#pragma omp for schedule(dynamic)
    for (int w = 0; w < n_work; w++) {
      const int r = w / n_head, h = w % n_head, kvh = h / group, n = n_keys[r];
      const float* kbase = kcache + static_cast<size_t>(slot[r]) * cap * kvd + kvh * head_dim;
      const float* vbase = vcache + static_cast<size_t>(slot[r]) * cap * kvd + kvh * head_dim;
      const float* qi = q + static_cast<size_t>(r) * qs + h * head_dim;
      p.resize(n);
      float mx = -INFINITY;
      for (int j = 0; j < n; j++) {
        p[j] = dot(qi, kbase + static_cast<size_t>(j) * kvd, head_dim) * scale;
        mx = std::max(mx, p[j]);
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < n; j++) {
        p[j] = vexp(p[j] - mx);
        sum += p[j];
      }
      const float inv = 1.0f / sum;
      float* o = out + static_cast<size_t>(r) * (n_head * head_dim) + h * head_dim;
      std::fill(o, o + head_dim, 0.0f);
      for (int j = 0; j < n; j++) {
        const float pj = p[j] * inv;
        const float* vj = vbase + static_cast<size_t>(j) * kvd;
#pragma omp simd
        for (int d = 0; d < head_dim; d++) o[d] += pj * vj[d];
      }
    }
  }
}

}  // namespace optune::cpu
