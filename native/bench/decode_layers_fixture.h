// Random GPT-2-shaped decode layers for the persistent decode step's benchmark (bench_cuda_persistent.cu) and test
// (test_cuda_persistent_step.cpp): their weights and KV cache on the host and the device, and a CPU reference of
// what a decode step's layers do to x, in sums of double over the same bf16 operands.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "cuda/memory.h"
#include "cuda/persistent_step.h"

namespace decode_fixture {

// Rows of the step, the layers' shape, and the cache: `slots` slots of `cap` rows.
struct RefShape {
  int rows, d, n_head, head_dim, d_ff, slots, cap;
  float eps;
};

inline uint16_t to_bf16_bits(float f) {  // round to nearest even (the weights are finite)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float from_bf16_bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float round_bf16(float f) { return from_bf16_bits(to_bf16_bits(f)); }

inline std::vector<float> normal(size_t n, uint64_t seed, float std, float mean = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i++) v[i] = mean + std * static_cast<float>(optune::rng_normal(seed, 0, i));
  return v;
}
inline std::vector<float> normal_bf16(size_t n, uint64_t seed, float std) {  // values a bf16 holds exactly
  std::vector<float> v = normal(n, seed, std);
  for (float& x : v) x = round_bf16(x);
  return v;
}
inline std::vector<uint16_t> bits(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); i++) b[i] = to_bf16_bits(v[i]);
  return b;
}

// One layer on the host: GEMM weights and the cache hold bf16 values (as floats).
struct HostLayer {
  std::vector<float> ln1_w, ln1_b, w_qkv, b_qkv, w_o, b_o, ln2_w, ln2_b, w_fc, b_fc, w_proj, b_proj, k, v;
};
// The same on the device; b_fc16: the bf16 bias cuBLASLt's GELU epilogue takes.
struct DeviceLayer {
  optune::cuda::Buffer<float> ln1_w, ln1_b, b_qkv, b_o, ln2_w, ln2_b, b_fc, b_proj;
  optune::cuda::Buffer<uint16_t> w_qkv, w_o, w_fc, w_proj, b_fc16, k, v;
  explicit DeviceLayer(const HostLayer& h)
      : ln1_w(h.ln1_w), ln1_b(h.ln1_b), b_qkv(h.b_qkv), b_o(h.b_o), ln2_w(h.ln2_w), ln2_b(h.ln2_b), b_fc(h.b_fc),
        b_proj(h.b_proj), w_qkv(bits(h.w_qkv)), w_o(bits(h.w_o)), w_fc(bits(h.w_fc)), w_proj(bits(h.w_proj)),
        b_fc16(bits(h.b_fc)), k(bits(h.k)), v(bits(h.v)) {}
  optune::cuda::StepLayer view() {
    const auto b = [](optune::cuda::Buffer<uint16_t>& w) { return reinterpret_cast<__nv_bfloat16*>(w.data()); };
    return {ln1_w.data(), ln1_b.data(), b_qkv.data(), b_o.data(), ln2_w.data(), ln2_b.data(), b_fc.data(),
            b_proj.data(), b(w_qkv), b(w_o), b(w_fc), b(w_proj), b(k), b(v)};
  }
};

// GPT-2's initialization scale for the weights; norms' weights near 1; cached keys and values of the scale a
// layer's k and v have here.
inline HostLayer make_host_layer(const RefShape& shape, int l) {
  const int d = shape.d, ff = shape.d_ff;
  const uint64_t seed = 1000 + 100 * l;
  const size_t cache = static_cast<size_t>(shape.slots) * shape.cap * d;
  HostLayer h;
  h.ln1_w = normal(d, seed, 0.1f, 1.0f), h.ln1_b = normal(d, seed + 1, 0.1f);
  h.w_qkv = normal_bf16(static_cast<size_t>(d) * 3 * d, seed + 2, 0.02f), h.b_qkv = normal(3 * d, seed + 3, 0.02f);
  h.w_o = normal_bf16(static_cast<size_t>(d) * d, seed + 4, 0.02f), h.b_o = normal(d, seed + 5, 0.02f);
  h.ln2_w = normal(d, seed + 6, 0.1f, 1.0f), h.ln2_b = normal(d, seed + 7, 0.1f);
  h.w_fc = normal_bf16(static_cast<size_t>(d) * ff, seed + 8, 0.02f), h.b_fc = normal(ff, seed + 9, 0.02f);
  h.w_proj = normal_bf16(static_cast<size_t>(ff) * d, seed + 10, 0.02f), h.b_proj = normal(d, seed + 11, 0.02f);
  h.k = normal_bf16(cache, seed + 12, 0.5f), h.v = normal_bf16(cache, seed + 13, 0.5f);
  return h;
}

inline double gelu_ref(double v) {
  return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
}

// out[j] = bias[j] + sum_i in[i] w[i][j] in double (w [n_in, n_out] row-major: contiguous reads).
inline void matvec(std::vector<double>& out, const std::vector<float>& in, const std::vector<float>& w,
            const std::vector<float>& bias) {
  const size_t n_out = bias.size();
  out.assign(bias.begin(), bias.end());
  for (size_t i = 0; i < in.size(); i++)
    for (size_t j = 0; j < n_out; j++) out[j] += static_cast<double>(in[i]) * w[i * n_out + j];
}

inline void layernorm_bf16(std::vector<float>& a, const float* x, const std::vector<float>& w,
                           const std::vector<float>& b, float eps) {
  const int d = static_cast<int>(a.size());
  double m = 0, var = 0;
  for (int i = 0; i < d; i++) m += x[i];
  m /= d;
  for (int i = 0; i < d; i++) var += (x[i] - m) * (x[i] - m);
  const double rs = 1.0 / std::sqrt(var / d + eps);
  for (int i = 0; i < d; i++) a[i] = round_bf16(static_cast<float>((x[i] - m) * rs * w[i] + b[i]));
}

// The layers on the CPU, row by row (a row attends only to its own cache slot): sums in double of the bf16
// operands; a, h, the attention output and the new cache entries rounded to bf16 as the GPU paths store them.
// Also kv0, the first layer's new cache entries ([rows][k then v]), and att_last, the last layer's attention output
// ([rows][d]): the final x alone hardly shows an error in the attention (its output is an average of ~130 random
// values, small next to x) or in q, k and v, while bf16 roundings that differ between paths move x by ~2e-3.
inline std::vector<float> reference(const RefShape& shape, std::vector<float> x, const std::vector<HostLayer>& layers,
                                    const std::vector<int>& pos, const std::vector<int>& slot, std::vector<float>& kv0,
                                    std::vector<float>& att_last) {
  const int n_rows = shape.rows, d = shape.d, ff = shape.d_ff, heads = shape.n_head, hd = shape.head_dim;
  kv0.assign(static_cast<size_t>(n_rows) * 2 * d, 0.0f);
  att_last.assign(static_cast<size_t>(n_rows) * d, 0.0f);
  const auto run_rows = [&](int r0, int r1) {
    std::vector<double> qkv, o, fc, proj;
    std::vector<float> a(d), att(d), h(ff);
    for (int r = r0; r < r1; r++) {
      float* xr = x.data() + static_cast<size_t>(r) * d;
      for (const HostLayer& L : layers) {
        layernorm_bf16(a, xr, L.ln1_w, L.ln1_b, shape.eps);
        matvec(qkv, a, L.w_qkv, L.b_qkv);
        if (&L == &layers[0])
          for (int c = 0; c < 2 * d; c++) kv0[static_cast<size_t>(r) * 2 * d + c] = round_bf16(qkv[d + c]);
        const size_t base = static_cast<size_t>(slot[r]) * shape.cap * d;
        const auto key = [&](int j, int c) {
          return j == pos[r] ? static_cast<double>(round_bf16(static_cast<float>(qkv[d + c])))
                             : L.k[base + j * d + c];
        };
        const auto value = [&](int j, int c) {
          return j == pos[r] ? static_cast<double>(round_bf16(static_cast<float>(qkv[2 * d + c])))
                             : L.v[base + j * d + c];
        };
        for (int head = 0; head < heads; head++) {
          std::vector<double> sc(pos[r] + 1);
          double mx = -INFINITY, sum = 0;
          for (int j = 0; j <= pos[r]; j++) {
            double dot = 0;
            for (int c = head * hd; c < (head + 1) * hd; c++) dot += static_cast<float>(qkv[c]) * key(j, c);
            sc[j] = dot / std::sqrt(static_cast<double>(hd));
            mx = std::max(mx, sc[j]);
          }
          for (double& s : sc) sum += (s = std::exp(s - mx));
          for (int c = head * hd; c < (head + 1) * hd; c++) {
            double acc = 0;
            for (int j = 0; j <= pos[r]; j++) acc += sc[j] * value(j, c);
            att[c] = round_bf16(static_cast<float>(acc / sum));
          }
        }
        if (&L == &layers.back()) std::copy(att.begin(), att.end(), att_last.begin() + static_cast<size_t>(r) * d);
        matvec(o, att, L.w_o, L.b_o);
        for (int j = 0; j < d; j++) xr[j] += static_cast<float>(o[j]);
        layernorm_bf16(a, xr, L.ln2_w, L.ln2_b, shape.eps);
        matvec(fc, a, L.w_fc, L.b_fc);
        for (int j = 0; j < ff; j++) h[j] = round_bf16(static_cast<float>(gelu_ref(fc[j])));
        matvec(proj, h, L.w_proj, L.b_proj);
        for (int j = 0; j < d; j++) xr[j] += static_cast<float>(proj[j]);
      }
    }
  };
  const int n_threads = std::max(1, std::min<int>(n_rows, static_cast<int>(std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  for (int t = 0; t < n_threads; t++)
    pool.emplace_back(run_rows, n_rows * t / n_threads, n_rows * (t + 1) / n_threads);
  for (auto& th : pool) th.join();
  return x;
}

// Largest |got - want| over the largest |want|.
inline double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); i++) {
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return std::isfinite(err) ? err / scale : INFINITY;
}


// Of the largest value. Differences in the sums' order round some bf16 values the other way. In this reference at
// bench_cuda_persistent's shape (12 GPT-2 124M layers, 64 rows), biases scaled by 1 + 1e-6 moved x by 2.1e-3, the
// last attention output by 6.9e-3 and the first layer's k and v by 2e-4; a K-slice of 8 missing from the last
// layer's MLP output moved x by 8.4e-2, and one missing from the first qkv moved its k and v by 0.35.
inline constexpr double kTolerance = 2e-2;
inline constexpr double kAttentionTolerance = 5e-2;

// Layers made in parallel (the random numbers take a while) and uploaded; rows at the given positions and slots;
// x0 random; and what the reference makes of them.
struct Fixture {
  RefShape shape;
  std::vector<HostLayer> host;
  std::vector<DeviceLayer> dev;
  std::vector<optune::cuda::StepLayer> views;
  std::vector<int> pos, slot;
  optune::cuda::Buffer<int32_t> pos_dev, slot_dev;
  std::vector<float> x0, want, want_kv0, want_att;

  Fixture(const RefShape& s, int n_layer, std::vector<int> positions, std::vector<int> slots)
      : shape(s), host(n_layer), pos(std::move(positions)), slot(std::move(slots)) {
    std::vector<std::thread> pool;
    for (int l = 0; l < n_layer; l++) pool.emplace_back([this, l] { host[l] = make_host_layer(shape, l); });
    for (auto& th : pool) th.join();
    dev.reserve(n_layer);
    for (const HostLayer& h : host) dev.emplace_back(h), views.push_back(dev.back().view());
    pos_dev = optune::cuda::Buffer<int32_t>(std::vector<int32_t>(pos.begin(), pos.end()));
    slot_dev = optune::cuda::Buffer<int32_t>(std::vector<int32_t>(slot.begin(), slot.end()));
    x0 = normal(static_cast<size_t>(shape.rows) * shape.d, 7, 1.0f);
    want = reference(shape, x0, host, pos, slot, want_kv0, want_att);
  }

  // A path's errors against the reference, each over the largest value: x (device, [rows, d]) after the layers, the
  // first layer's new cache entries, and the last attention output (att: device, bf16 [rows, d]).
  struct Errors {
    double x, kv, att;
    bool ok() const { return x <= kTolerance && kv <= kTolerance && att <= kAttentionTolerance; }
  };
  Errors errors(const float* x_dev, const uint16_t* att_dev) const {
    const int d = shape.d, rows = shape.rows;
    std::vector<float> x(static_cast<size_t>(rows) * d), kv0(want_kv0.size()), att(static_cast<size_t>(rows) * d);
    optune::cuda::copy_to_host(x.data(), x_dev, x.size() * sizeof(float));
    const std::vector<uint16_t> k = dev[0].k.download(), v = dev[0].v.download();
    for (int r = 0; r < rows; r++)
      for (int c = 0; c < d; c++) {
        const size_t at = (static_cast<size_t>(slot[r]) * shape.cap + pos[r]) * d + c;
        kv0[static_cast<size_t>(r) * 2 * d + c] = from_bf16_bits(k[at]);
        kv0[static_cast<size_t>(r) * 2 * d + d + c] = from_bf16_bits(v[at]);
      }
    std::vector<uint16_t> att_bits(att.size());
    optune::cuda::copy_to_host(att_bits.data(), att_dev, att_bits.size() * sizeof(uint16_t));
    for (size_t i = 0; i < att.size(); i++) att[i] = from_bf16_bits(att_bits[i]);
    return {relative_error(x, want), relative_error(kv0, want_kv0), relative_error(att, want_att)};
  }
};

}  // namespace decode_fixture
