// LayerNorm (GPT-2) and RMSNorm (Llama; Gemma's with 1 + weight), forward and backward. Statistics are accumulated
// in double for accuracy (one partial sum per simd lane, combined in a fixed order: the same result for any thread
// count);
// the forward saves mean/rstd so backward need not recompute them.
#include <cmath>

#include "ops.h"
#include "parallel.h"

namespace optune::cpu {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b,
                       int rows, int d, float eps) {
  parallel_for(rows, [&](int64_t r) {
    const float* x = inp + static_cast<size_t>(r) * d;
    double m = 0.0;
#pragma omp simd reduction(+ : m)
    for (int i = 0; i < d; i++) m += x[i];
    m /= d;
    double v = 0.0;
#pragma omp simd reduction(+ : v)
    for (int i = 0; i < d; i++) v += (x[i] - m) * (x[i] - m);
    v /= d;
    const float s = static_cast<float>(1.0 / std::sqrt(v + eps));
    const float mf = static_cast<float>(m);
    float* o = out + static_cast<size_t>(r) * d;
    for (int i = 0; i < d; i++) o[i] = (x[i] - mf) * s * w[i] + b[i];
    if (mean) mean[r] = mf;
    if (rstd) rstd[r] = s;
  });
}

void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp, const float* w,
                        const float* mean, const float* rstd, int rows, int d) {
  // input gradient: rows are independent
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; r++) {
    const float* dy = dout + static_cast<size_t>(r) * d;
    const float* x = inp + static_cast<size_t>(r) * d;
    float* dx = dinp + static_cast<size_t>(r) * d;
    const float m = mean[r], s = rstd[r];
    double dnorm_mean = 0.0, dnorm_norm_mean = 0.0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_norm_mean)
    for (int i = 0; i < d; i++) {
      const float xhat = (x[i] - m) * s;
      const float dn = w[i] * dy[i];
      dnorm_mean += dn;
      dnorm_norm_mean += dn * xhat;
    }
    dnorm_mean /= d;
    dnorm_norm_mean /= d;
    for (int i = 0; i < d; i++) {
      const float xhat = (x[i] - m) * s;
      const float dn = w[i] * dy[i];
      dx[i] += s * (dn - static_cast<float>(dnorm_mean) - xhat * static_cast<float>(dnorm_norm_mean));
    }
  }
  // parameter gradients: rows in order (the same order for any thread count); none for frozen weights
  if (!dw) return;
  parallel_columns(d, [&](int i0, int i1) {
    for (int r = 0; r < rows; r++) {
      const float* dy = dout + static_cast<size_t>(r) * d;
      const float* x = inp + static_cast<size_t>(r) * d;
      const float m = mean[r], s = rstd[r];
#pragma omp simd
      for (int i = i0; i < i1; i++) {
        dw[i] += dy[i] * (x[i] - m) * s;
        db[i] += dy[i];
      }
    }
  });
}

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int rows, int d, float eps,
                     float w_offset) {
  parallel_for(rows, [&](int64_t r) {
    const float* x = inp + static_cast<size_t>(r) * d;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < d; i++) ss += static_cast<double>(x[i]) * x[i];
    const float s = static_cast<float>(1.0 / std::sqrt(ss / d + eps));
    float* o = out + static_cast<size_t>(r) * d;
    for (int i = 0; i < d; i++) o[i] = (w[i] + w_offset) * (x[i] * s);
    if (rstd) rstd[r] = s;
  });
}

void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, const float* rstd,
                      int rows, int d, float w_offset) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; r++) {
    const float* dy = dout + static_cast<size_t>(r) * d;
    const float* x = inp + static_cast<size_t>(r) * d;
    float* dx = dinp + static_cast<size_t>(r) * d;
    const float s = rstd[r];
    double dot = 0.0;  // sum_i (w_i dy_i) xhat_i
#pragma omp simd reduction(+ : dot)
    for (int i = 0; i < d; i++) dot += static_cast<double>((w[i] + w_offset) * dy[i]) * (x[i] * s);
    const float c = static_cast<float>(dot / d);
    for (int i = 0; i < d; i++) dx[i] += s * ((w[i] + w_offset) * dy[i] - x[i] * s * c);
  }
  if (!dw) return;  // frozen weights
  parallel_columns(d, [&](int i0, int i1) {
    for (int r = 0; r < rows; r++) {
      const float* dy = dout + static_cast<size_t>(r) * d;
      const float* x = inp + static_cast<size_t>(r) * d;
      const float s = rstd[r];
#pragma omp simd
      for (int i = i0; i < i1; i++) dw[i] += dy[i] * x[i] * s;
    }
  });
}

}  // namespace optune::cpu
