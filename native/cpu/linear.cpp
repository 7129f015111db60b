// Linear layers on top of GEMM. Forward: out = inp @ W^T + b (OutIn) or inp @ W + b (InOut).
#include <cstring>

#include "gemm.h"
#include "ops.h"
#include "parallel.h"

namespace optune::cpu {

void linear_forward(float* out, const float* inp, const float* w, const float* bias, int rows, int in, int outf,
                    WeightLayout layout, bool bf16) {
  const bool out_in = layout == WeightLayout::OutIn;
  gemm_for(bf16)(false, out_in, rows, outf, in, 1.0f, inp, in, w, out_in ? in : outf, 0.0f, out, outf);
  if (bias) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
      float* o = out + static_cast<size_t>(r) * outf;
      for (int j = 0; j < outf; j++) o[j] += bias[j];
    }
  }
}

void linear_forward_packed(float* out, const float* inp, const PackedB& w, const float* bias, int rows) {
  gemm_packed(rows, inp, w.K, w, out, w.N);
  if (bias) {
    parallel_for(rows, [&](int64_t r) {
      float* o = out + static_cast<size_t>(r) * w.N;
#pragma omp simd
      for (int j = 0; j < w.N; j++) o[j] += bias[j];
    });
  }
}

void linear_backward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp, const float* w,
                     int rows, int in, int outf, WeightLayout layout, bool bf16, bool add_dinp) {
  if (rows <= 0) return;
  const GemmFn gemm = gemm_for(bf16);
  const float beta = add_dinp ? 1.0f : 0.0f;
  if (layout == WeightLayout::OutIn) {
    if (dinp) gemm(false, false, rows, in, outf, 1.0f, dout, outf, w, in, beta, dinp, in);       // dX (+)= dY W
    if (dw) gemm(true, false, outf, in, rows, 1.0f, dout, outf, inp, in, 1.0f, dw, in);          // dW += dY^T X
  } else {
    if (dinp) gemm(false, true, rows, in, outf, 1.0f, dout, outf, w, outf, beta, dinp, in);      // dX (+)= dY W^T
    if (dw) gemm(true, false, in, outf, rows, 1.0f, inp, in, dout, outf, 1.0f, dw, outf);        // dW += X^T dY
  }
  if (dbias) {
    parallel_columns(outf, [&](int j0, int j1) {
      for (int r = 0; r < rows; r++) {
        const float* d = dout + static_cast<size_t>(r) * outf;
#pragma omp simd
        for (int j = j0; j < j1; j++) dbias[j] += d[j];
      }
    });
  }
}

void lora_forward(float* out, float* h, const float* inp, const float* a, const float* b, float scale, int rows, int in,
                  int outf, int r) {
  if (rows <= 0) return;
  gemm(false, true, rows, r, in, scale, inp, in, a, in, 0.0f, h, r);  // h = scale x A^T
  gemm(false, true, rows, outf, r, 1.0f, h, r, b, r, 1.0f, out, outf);  // out += h B^T
}

void lora_backward(float* dinp, float* da, float* db, float* dh, const float* dout, const float* inp, const float* h,
                   const float* a, const float* b, float scale, int rows, int in, int outf, int r) {
  if (rows <= 0) return;
  gemm(true, false, outf, r, rows, 1.0f, dout, outf, h, r, 1.0f, db, r);          // dB += dY^T h
  gemm(false, false, rows, r, outf, 1.0f, dout, outf, b, r, 0.0f, dh, r);         // dh = dY B
  gemm(true, false, r, in, rows, scale, dh, r, inp, in, 1.0f, da, in);            // dA += scale dh^T X
  if (dinp) gemm(false, false, rows, in, r, scale, dh, r, a, in, 1.0f, dinp, in);  // dX += scale dh A
}

}  // namespace optune::cpu
