// CUDA kernels against the CPU reference kernels (cpu/ops.h, core/adamw.cpp) on random inputs, forward and backward.
// Tolerances (testing_cuda.h expect_close): |gpu - cpu| <= rtol * (|cpu| + max|cpu|), relative to each element and
// to the tensor's scale (sums in another order differ by a few ulp of the largest terms). fp32: rtol 1e-5, attention backward 3e-5 (its
// D = rowsum(dO * O) replaces the CPU's rowsum(P * dP)); bf16 GEMM and bf16 log-prob head: 1e-4 against fp32 on
// the same bf16-rounded inputs (head backward 1e-2: it rounds dLoss/dlogits too). Backward kernels start from
// non-zero gradients to check that they accumulate.
// Without a CUDA device every case prints "SKIPPED: no CUDA device <case>" and the summary "0 cases, 0 failed":
// scripts/test.mjs counts a skip neither as passed nor as failed.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/engine.h"
#include "cpu/gemm.h"
#include "cpu/ops.h"
#include "cuda/memory.h"
#include "cuda/ops.h"
#include "test_helpers.h"
#include "testing.h"
#include "testing_cuda.h"

using namespace optune;
using testing::expect_close;
using testing::Rand;
using Buf = cuda::Buffer<float>;
using IBuf = cuda::Buffer<int32_t>;

namespace {

std::vector<float> randv(size_t n, Rand& r, float std = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = r.normal(std);
  return v;
}

constexpr double kRtol = 1e-5;

// fp32 -> bf16 bits (round to nearest even, as __float2bfloat16_rn) and back: the CPU engine's conversions.
using cpu::from_bf16;
using cpu::to_bf16;
// Every value rounded to bf16 and back: the values a bf16 operand carries.
void round_to_bf16(std::vector<float>& v) {
  for (float& x : v) x = from_bf16(to_bf16(x));
}

}  // namespace

// ---- GEMM ------------------------------------------------------------------------------------------------------

TEST(gemm_fp32_matches_cpu) {
  Rand r(1);
  const int M = 37, N = 53, K = 29;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
      // A is [M][lda] (or [K][lda] transposed), B is [K][ldb] (or [N][ldb] transposed)
      const auto A = randv(static_cast<size_t>(ta ? K : M) * lda, r), B = randv(static_cast<size_t>(tb ? N : K) * ldb, r);
      const auto C0 = randv(static_cast<size_t>(M) * ldc, r);
      std::vector<float> want = C0;
      cpu::gemm_builtin(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.3f, want.data(), ldc);
      Buf dA(A), dB(B), dC(C0);
      cuda::gemm(ta, tb, M, N, K, 0.7f, dA.data(), lda, dB.data(), ldb, 0.3f, dC.data(), ldc);
      expect_close("gemm ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), dC.download(), want, kRtol);
    }
}

// fp32 -> bf16, round to nearest even: the 4-wide path (aligned, n % 4 == 0) and the scalar one, bit for bit.
TEST(to_bf16_rounds_to_nearest_even) {
  Rand r(17);
  auto x = randv(1003, r, 3.0f);
  x[0] = 1.0f + 1.0f / 256;  // exactly halfway between two bf16 values: rounds to the even one (1.0)
  x[1] = -0.0f;
  const Buf gx(x);
  for (const auto& [off, n] : std::vector<std::pair<int, int>>{{0, 1000}, {0, 1003}, {1, 996}}) {
    cuda::Buffer<uint16_t> out(static_cast<size_t>(n));
    cuda::to_bf16(out.data(), gx.data() + off, n);
    const std::vector<uint16_t> got = out.download();
    int bad = 0;
    for (int i = 0; i < n; i++) bad += got[i] != to_bf16(x[off + i]);
    CHECK_MSG(bad == 0, std::to_string(bad) + " of " + std::to_string(n) + " elements differ (offset " +
                            std::to_string(off) + ")");
  }
}

TEST(gemm_bf16_matches_cpu_on_rounded_inputs) {
  Rand r(2);
  const int M = 64, N = 48, K = 96;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      const int lda = ta ? M : K, ldb = tb ? K : N;
      const auto A = randv(static_cast<size_t>(M) * K, r), B = randv(static_cast<size_t>(K) * N, r);
      // device rounding must equal round-to-nearest-even on the host
      Buf dA32(A), dB32(B);
      cuda::Buffer<uint16_t> dA(A.size()), dB(B.size());
      cuda::to_bf16(dA.data(), dA32.data(), static_cast<int64_t>(A.size()));
      cuda::to_bf16(dB.data(), dB32.data(), static_cast<int64_t>(B.size()));
      const auto a16 = dA.download(), b16 = dB.download();
      std::vector<float> Ar(A.size()), Br(B.size());
      int mismatched = 0;
      for (size_t i = 0; i < A.size(); i++) mismatched += a16[i] != to_bf16(A[i]), Ar[i] = from_bf16(to_bf16(A[i]));
      for (size_t i = 0; i < B.size(); i++) mismatched += b16[i] != to_bf16(B[i]), Br[i] = from_bf16(to_bf16(B[i]));
      CHECK_MSG(mismatched == 0, std::to_string(mismatched) + " bf16 conversions differ from round-to-nearest-even");
      std::vector<float> want(static_cast<size_t>(M) * N, 0.5f);
      cpu::gemm_builtin(ta, tb, M, N, K, 1.0f, Ar.data(), lda, Br.data(), ldb, 1.0f, want.data(), N);
      Buf dC(std::vector<float>(static_cast<size_t>(M) * N, 0.5f));
      cuda::gemm_bf16(ta, tb, M, N, K, 1.0f, dA.data(), lda, dB.data(), ldb, 1.0f, dC.data(), N);
      expect_close("gemm_bf16 ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), dC.download(), want, 1e-4);
    }
}

// ---- normalization ---------------------------------------------------------------------------------------------

namespace {
void layernorm_case(int rows, int d) {
  Rand r(3 + d);
  const auto x = randv(static_cast<size_t>(rows) * d, r, 2.0f), w = randv(d, r), b = randv(d, r);
  const auto dy = randv(x.size(), r), dx0 = randv(x.size(), r), dw0 = randv(d, r), db0 = randv(d, r);
  std::vector<float> out(x.size()), mean(rows), rstd(rows), dx = dx0, dw = dw0, db = db0;
  cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, d, 1e-5f);
  cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                          rows, d);
  Buf gx(x), gw(w), gb(b), gdy(dy), gdx(dx0), gdw(dw0), gdb(db0), gout(x.size()), gmean(rows), grstd(rows);
  cuda::layernorm_forward(gout.data(), gmean.data(), grstd.data(), gx.data(), gw.data(), gb.data(), rows, d, 1e-5f);
  cuda::layernorm_backward(gdx.data(), gdw.data(), gdb.data(), gdy.data(), gx.data(), gw.data(), gmean.data(),
                           grstd.data(), rows, d);
  const std::string w_ = " (d " + std::to_string(d) + ")";
  expect_close("layernorm out" + w_, gout.download(), out, kRtol);
  expect_close("layernorm mean" + w_, gmean.download(), mean, kRtol);
  expect_close("layernorm rstd" + w_, grstd.download(), rstd, kRtol);
  expect_close("layernorm dinp" + w_, gdx.download(), dx, kRtol);
  expect_close("layernorm dw" + w_, gdw.download(), dw, kRtol);
  expect_close("layernorm db" + w_, gdb.download(), db, kRtol);
}
}  // namespace

// d = 200 and 768: the register kernels (d % 4 == 0, d <= 1024); 201 and 1030: the strided ones.
TEST(layernorm_forward_backward_match_cpu) {
  for (const int d : {200, 768, 201, 1030}) layernorm_case(67, d);
}

namespace {
// w_offset 1: Gemma's norms, scaling by 1 + weight.
void rmsnorm_case(int rows, int d, float w_offset = 0.0f) {
  Rand r(4 + d);
  const auto x = randv(static_cast<size_t>(rows) * d, r, 2.0f), w = randv(d, r);
  const auto dy = randv(x.size(), r), dx0 = randv(x.size(), r), dw0 = randv(d, r);
  std::vector<float> out(x.size()), rstd(rows), dx = dx0, dw = dw0;
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, d, 1e-6f, w_offset);
  cpu::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), rows, d, w_offset);
  Buf gx(x), gw(w), gdy(dy), gdx(dx0), gdw(dw0), gout(x.size()), grstd(rows);
  cuda::rmsnorm_forward(gout.data(), grstd.data(), gx.data(), gw.data(), rows, d, 1e-6f, nullptr, w_offset);
  cuda::rmsnorm_backward(gdx.data(), gdw.data(), gdy.data(), gx.data(), gw.data(), grstd.data(), rows, d, w_offset);
  const std::string w_ = " (d " + std::to_string(d) + ", w_offset " + std::to_string(w_offset) + ")";
  expect_close("rmsnorm out" + w_, gout.download(), out, kRtol);
  expect_close("rmsnorm rstd" + w_, grstd.download(), rstd, kRtol);
  expect_close("rmsnorm dinp" + w_, gdx.download(), dx, kRtol);
  expect_close("rmsnorm dw" + w_, gdw.download(), dw, kRtol);
}
}  // namespace

// d = 333: the strided kernels; 896 (Qwen2-0.5B's width): the register ones.
TEST(rmsnorm_forward_backward_match_cpu) {
  for (const int d : {333, 896}) rmsnorm_case(45, d), rmsnorm_case(45, d, 1.0f);
}

// Forward outputs written straight in bf16 (the next GEMM's operand): bit for bit the fp32 output rounded to nearest
// even, with or without the fp32 copy beside it.
namespace {
void bf16_outputs_case(int rows, int d) {
  Rand r(18 + d);
  const int64_t n = static_cast<int64_t>(rows) * d;
  const Buf x(randv(n, r, 2.0f)), up(randv(n, r)), w(randv(d, r)), b(randv(d, r)), bias(randv(d, r));
  Buf mean(rows), rstd(rows);
  auto check = [&](const std::string& what, const std::function<void(float*, uint16_t*)>& run) {
    Buf out(n);
    cuda::Buffer<uint16_t> both16(n), only16(n);
    run(out.data(), both16.data());
    run(nullptr, only16.data());
    const std::vector<float> f = out.download();
    const std::vector<uint16_t> got = both16.download(), alone = only16.download();
    int bad = 0;
    for (int64_t i = 0; i < n; i++) bad += got[i] != to_bf16(f[i]) || alone[i] != got[i];
    CHECK_MSG(bad == 0, what + ": " + std::to_string(bad) + " of " + std::to_string(n) + " bf16 outputs differ");
  };
  check("layernorm", [&](float* o, uint16_t* o16) {
    cuda::layernorm_forward(o, mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, d, 1e-5f, o16);
  });
  check("rmsnorm", [&](float* o, uint16_t* o16) {
    cuda::rmsnorm_forward(o, rstd.data(), x.data(), w.data(), rows, d, 1e-6f, o16);
  });
  check("bias_gelu", [&](float* o, uint16_t* o16) { cuda::bias_gelu_forward(o, x.data(), bias.data(), rows, d, o16); });
  check("swiglu", [&](float* o, uint16_t* o16) { cuda::swiglu_forward(o, x.data(), up.data(), n, o16); });
}
}  // namespace

// d = 96: the register LayerNorm kernel; 98: the strided one.
TEST(norm_and_activation_bf16_outputs_are_the_rounded_fp32_outputs) {
  for (const int d : {96, 98}) bf16_outputs_case(37, d);
}

// The device model's split norm backward: input gradient alone, then dy * xhat summed by a ones-row GEMM (and db as
// plain column sums), against the CPU's fused backward. Many rows, so the GEMM reduces over a long K.
TEST(norm_backward_split_matches_cpu) {
  Rand r(6);
  const int rows = 1100, d = 96;
  const auto x = randv(static_cast<size_t>(rows) * d, r, 2.0f), w = randv(d, r), b = randv(d, r);
  const auto dy = randv(x.size(), r), dx0 = randv(x.size(), r), dw0 = randv(d, r), db0 = randv(d, r);
  Buf gx(x), gw(w), gb(b), gdy(dy), gones(std::vector<float>(rows, 1.0f)), gprod(x.size()), gmean(rows), grstd(rows);
  for (bool layer : {true, false}) {
    const std::string tag = layer ? "layernorm" : "rmsnorm";
    std::vector<float> out(x.size()), mean(rows), rstd(rows), dx = dx0, dw = dw0, db = db0;
    Buf gout(x.size()), gdx(dx0), gdw(dw0), gdb(db0);
    if (layer) {
      cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows, d, 1e-5f);
      cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), mean.data(),
                              rstd.data(), rows, d);
      cuda::layernorm_forward(gout.data(), gmean.data(), grstd.data(), gx.data(), gw.data(), gb.data(), rows, d,
                              1e-5f);
      cuda::layernorm_backward_input(gdx.data(), gdy.data(), gx.data(), gw.data(), gmean.data(), grstd.data(), rows,
                                     d);
      cuda::bias_backward(gdb.data(), gdy.data(), gones.data(), rows, d);
      expect_close(tag + " split db", gdb.download(), db, kRtol);
    } else {
      cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, d, 1e-6f);
      cpu::rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), rows, d);
      cuda::rmsnorm_forward(gout.data(), grstd.data(), gx.data(), gw.data(), rows, d, 1e-6f);
      cuda::rmsnorm_backward_input(gdx.data(), gdy.data(), gx.data(), gw.data(), grstd.data(), rows, d);
    }
    cuda::norm_xhat_product(gprod.data(), gdy.data(), gx.data(), layer ? gmean.data() : nullptr, grstd.data(), rows,
                            d);
    cuda::bias_backward(gdw.data(), gprod.data(), gones.data(), rows, d);
    expect_close(tag + " split dinp", gdx.download(), dx, kRtol);
    expect_close(tag + " split dw", gdw.download(), dw, kRtol);
  }
}

// ---- activations -----------------------------------------------------------------------------------------------

TEST(gelu_swiglu_geglu_match_cpu) {
  Rand r(5);
  const int64_t n = 10007;
  const auto x = randv(n, r, 2.5f), up = randv(n, r), dy = randv(n, r), d0 = randv(n, r), d1 = randv(n, r);
  std::vector<float> out(n), dx = d0, dup = d1;
  Buf gx(x), gup(up), gdy(dy), gout(n), gdx(d0), gdup(d1);

  cpu::gelu_forward(out.data(), x.data(), n);
  cpu::gelu_backward(dx.data(), x.data(), dy.data(), n);
  cuda::gelu_forward(gout.data(), gx.data(), n);
  cuda::gelu_backward(gdx.data(), gx.data(), gdy.data(), n);
  expect_close("gelu out", gout.download(), out, kRtol);
  expect_close("gelu dinp", gdx.download(), dx, kRtol);

  dx = d0;
  gdx.upload(d0);
  cpu::swiglu_forward(out.data(), x.data(), up.data(), n);
  cpu::swiglu_backward(dx.data(), dup.data(), dy.data(), x.data(), up.data(), n);
  cuda::swiglu_forward(gout.data(), gx.data(), gup.data(), n);
  cuda::swiglu_backward(gdx.data(), gdup.data(), gdy.data(), gx.data(), gup.data(), n);
  expect_close("swiglu out", gout.download(), out, kRtol);
  expect_close("swiglu dgate", gdx.download(), dx, kRtol);
  expect_close("swiglu dup", gdup.download(), dup, kRtol);

  dx = d0, dup = d1;
  gdx.upload(d0), gdup.upload(d1);
  cpu::geglu_forward(out.data(), x.data(), up.data(), n);
  cpu::geglu_backward(dx.data(), dup.data(), dy.data(), x.data(), up.data(), n);
  cuda::geglu_forward(gout.data(), gx.data(), gup.data(), n);
  cuda::geglu_backward(gdx.data(), gdup.data(), gdy.data(), gx.data(), gup.data(), n);
  expect_close("geglu out", gout.download(), out, kRtol);
  expect_close("geglu dgate", gdx.download(), dx, kRtol);
  expect_close("geglu dup", gdup.download(), dup, kRtol);
}

// The fused forward glue: gelu(fc + bias) (fc left as it is) and its backward, and out += bias + residual.
TEST(bias_gelu_and_bias_residual_match_cpu) {
  // cols 300: 4 elements per access (quad_rows); 301: one at a time
  for (const int cols : {300, 301}) {
    Rand r(16);
    const int rows = 37;
    const size_t n = static_cast<size_t>(rows) * cols;
    const auto fc = randv(n, r, 2.0f), bias = randv(cols, r), y = randv(n, r), x = randv(n, r);
    const auto dout = randv(n, r), d0 = randv(n, r);
    std::vector<float> biased(n), want_act(n), want_y(n), want_dfc = d0;
    for (size_t i = 0; i < n; i++) biased[i] = fc[i] + bias[i % cols], want_y[i] = y[i] + (bias[i % cols] + x[i]);
    cpu::gelu_forward(want_act.data(), biased.data(), static_cast<int64_t>(n));
    cpu::gelu_backward(want_dfc.data(), biased.data(), dout.data(), static_cast<int64_t>(n));
    Buf gfc(fc), gbias(bias), gact(n), gy(y), gx(x), gdout(dout), gdfc(d0);
    cuda::bias_gelu_forward(gact.data(), gfc.data(), gbias.data(), rows, cols);
    cuda::bias_gelu_backward(gdfc.data(), gfc.data(), gbias.data(), gdout.data(), rows, cols);
    cuda::bias_residual(gy.data(), gbias.data(), gx.data(), rows, cols);
    CHECK_MSG(gfc.download() == fc, "bias_gelu_forward changed fc");
    const std::string tag = " (cols " + std::to_string(cols) + ")";
    expect_close("bias_gelu act" + tag, gact.download(), want_act, kRtol);
    expect_close("bias_gelu dfc (accumulated)" + tag, gdfc.download(), want_dfc, kRtol);
    expect_close("bias_residual" + tag, gy.download(), want_y, kRtol);
    // written instead of added to, with the bf16 copy the next GEMM reads
    std::vector<float> want_written(n, 0.0f);
    cpu::gelu_backward(want_written.data(), biased.data(), dout.data(), static_cast<int64_t>(n));
    cuda::Buffer<uint16_t> gdfc16(n);
    cuda::bias_gelu_backward(gdfc.data(), gfc.data(), gbias.data(), gdout.data(), rows, cols, false, gdfc16.data());
    const std::vector<float> written = gdfc.download();
    expect_close("bias_gelu dfc (written)" + tag, written, want_written, kRtol);
    const std::vector<uint16_t> written16 = gdfc16.download();
    int bad16 = 0;
    for (size_t i = 0; i < n; i++) bad16 += written16[i] != to_bf16(written[i]);
    CHECK_MSG(bad16 == 0, std::to_string(bad16) + " bf16 copies of dfc differ from its rounded fp32 value");
    // without a bias
    Buf gfc2(fc), gy2(y);
    cuda::bias_gelu_forward(gact.data(), gfc2.data(), nullptr, rows, cols);
    cuda::bias_residual(gy2.data(), nullptr, gx.data(), rows, cols);
    cpu::gelu_forward(want_act.data(), fc.data(), static_cast<int64_t>(n));
    for (size_t i = 0; i < n; i++) want_y[i] = y[i] + x[i];
    expect_close("gelu (no bias) act" + tag, gact.download(), want_act, kRtol);
    expect_close("residual (no bias)" + tag, gy2.download(), want_y, kRtol);
  }
}

// ---- RoPE ------------------------------------------------------------------------------------------------------

// Plain, "linear" and "llama3" frequencies (rope_sets.h hands the kernel the CPU's): the same rotations as the CPU.
TEST(rope_matches_cpu_and_backward_inverts) {
  Rand r(6);
  const int rows = 19, n_heads = 3, hd = 16, stride = n_heads * hd + 8;
  const auto x = randv(static_cast<size_t>(rows) * stride, r);
  std::vector<int32_t> pos(rows);
  for (auto& p : pos) p = r.below(4000);
  cpu::RopeScaling linear, llama3;
  linear.type = cpu::RopeScaling::LINEAR, linear.factor = 4.0f;
  llama3.type = cpu::RopeScaling::LLAMA3, llama3.factor = 8.0f, llama3.original_max_positions = 64;
  for (const cpu::RopeScaling& scaling : {cpu::RopeScaling{}, linear, llama3}) {
    const std::string tag = " (scaling " + std::to_string(static_cast<int>(scaling.type)) + ")";
    std::vector<float> want = x;
    cpu::rope_forward(want.data(), rows, stride, n_heads, hd, pos.data(), 10000.0f, scaling);
    Buf gx(x);
    IBuf gpos(pos);
    const cuda::Buffer<double> inv_freq(cpu::rope_inv_freq(hd, 10000.0f, scaling));
    cuda::rope_forward(gx.data(), rows, stride, n_heads, hd, gpos.data(), inv_freq.data());
    expect_close("rope forward" + tag, gx.download(), want, kRtol);
    cuda::rope_backward(gx.data(), rows, stride, n_heads, hd, gpos.data(), inv_freq.data());
    expect_close("rope backward(forward(x))" + tag, gx.download(), x, kRtol);
  }
}

// ---- attention -------------------------------------------------------------------------------------------------

namespace {

// q, k, v are slices of one fused [T, (H + 2 KV) * hd] buffer, as the engine lays them out.
// bf16: the tensor-core kernels, against the CPU on the same bf16-rounded q, k, v and dout; their own roundings
// (P and dS as operands) give the tolerances: out 1e-2, lse 1e-3, dq/dk/dv 2e-2 (of each tensor's scale).
// shift: the device q|k|v start that many floats into their buffer (2: 8-byte aligned slices, the tensor-core
// kernels' narrow-load path). bias: the GPU gets q|k|v without their biases and adds them itself (QkvBias); the CPU
// gets them added. window > 0: sliding-window attention on both sides.
void attention_case(const std::string& name, const std::vector<int32_t>& lens, int H, int KV, int hd, uint64_t seed,
                    int grid_len = 0, bool bf16 = false, int shift = 0, bool bias = false, int window = 0) {
  Rand r(seed);
  std::vector<int32_t> offsets(1, 0);
  int max_len = 0;
  for (int L : lens) offsets.push_back(offsets.back() + L), max_len = std::max(max_len, L);
  const int T = offsets.back(), n_seq = static_cast<int>(lens.size());
  const int qs = (H + 2 * KV) * hd, od = H * hd;
  auto qkv = randv(static_cast<size_t>(T) * qs, r), dout = randv(static_cast<size_t>(T) * od, r);
  if (bf16) {
    round_to_bf16(qkv);
    round_to_bf16(dout);
  }
  std::vector<float> qkv_bias = bias ? randv(static_cast<size_t>(qs), r) : std::vector<float>(qs, 0.0f);
  if (bf16) round_to_bf16(qkv_bias);
  std::vector<float> raw = qkv;  // what the GPU reads: q|k|v before their biases
  for (size_t i = 0; i < raw.size(); i++) raw[i] -= qkv_bias[i % qs];
  if (bias && bf16)  // the GPU rounds raw + bias to bf16 as it reads: the CPU gets exactly those values
    for (size_t i = 0; i < qkv.size(); i++) qkv[i] = from_bf16(to_bf16(raw[i] + qkv_bias[i % qs]));
  const float *q = qkv.data(), *k = q + H * hd, *v = k + KV * hd;

  std::vector<float> out(static_cast<size_t>(T) * od), probs(cpu::attention_probs_size(offsets.data(), n_seq, H));
  std::vector<float> dqkv(qkv.size(), 0.0f);
  cpu::attention_forward(out.data(), probs.data(), q, qs, k, qs, v, qs, offsets.data(), n_seq, H, KV, hd, window);
  cpu::attention_backward(dqkv.data(), dqkv.data() + H * hd, dqkv.data() + (H + KV) * hd, dout.data(), probs.data(),
                          q, qs, k, qs, v, qs, offsets.data(), n_seq, H, KV, hd);

  std::vector<float> shifted(shift, 0.0f);
  shifted.insert(shifted.end(), (bias ? raw : qkv).begin(), (bias ? raw : qkv).end());
  Buf gqkv(shifted), gdout(dout), gout(out.size()), glse(static_cast<size_t>(T) * H), gdqkv(qkv.size());
  const Buf gbias(qkv_bias);
  cuda::QkvBias qkv_b;
  if (bias) qkv_b = {gbias.data(), gbias.data() + H * hd, gbias.data() + (H + KV) * hd};
  IBuf goff(offsets);
  const float *gq = gqkv.data() + shift, *gk = gq + H * hd, *gv = gk + KV * hd;
  const int launch_len = grid_len > 0 ? grid_len : max_len;
  gout.upload(std::vector<float>(out.size(), NAN));  // poisoned: every element must be written
  gdqkv.upload(std::vector<float>(qkv.size(), NAN));
  cuda::attention_forward(gout.data(), glse.data(), gq, qs, gk, qs, gv, qs, goff.data(), n_seq, launch_len, H, KV, hd,
                          bf16, qkv_b, window);
  cuda::attention_backward(gdqkv.data(), gdqkv.data() + H * hd, gdqkv.data() + (H + KV) * hd, gdout.data(),
                           gout.data(), glse.data(), gq, qs, gk, qs, gv, qs, goff.data(), n_seq, launch_len, T, H, KV,
                           hd, bf16, qkv_b, window);
  expect_close(name + " out", gout.download(), out, bf16 ? 1e-2 : kRtol);
  // lse against the CPU's probabilities: p[i][i] = exp(s_ii - lse_i), so lse_i = s_ii - log(p[i][i]).
  const auto lse = glse.download();
  std::vector<float> lse_got, lse_want;
  int64_t po = 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int s = 0; s < n_seq; s++) {
    const int L = lens[s];
    for (int h = 0; h < H; h++)
      for (int i = 0; i < L; i++) {
        const int row = offsets[s] + i;
        const float* qi = q + static_cast<size_t>(row) * qs + h * hd;
        const float* ki = k + static_cast<size_t>(row) * qs + (h / (H / KV)) * hd;
        double sii = 0.0;
        for (int d = 0; d < hd; d++) sii += static_cast<double>(qi[d]) * ki[d];
        lse_want.push_back(static_cast<float>(sii * scale - std::log(probs[po + static_cast<int64_t>(h) * L * L +
                                                                           static_cast<int64_t>(i) * L + i])));
        lse_got.push_back(lse[static_cast<size_t>(row) * H + h]);
      }
    po += static_cast<int64_t>(H) * L * L;
  }
  expect_close(name + " lse", lse_got, lse_want, bf16 ? 1e-3 : 1e-4);  // the CPU p[i][i] carries its own rounding
  expect_close(name + " dq/dk/dv", gdqkv.download(), dqkv, bf16 ? 2e-2 : 3e-5);
}

}  // namespace

TEST(attention_ragged_gqa_matches_cpu) { attention_case("gqa hd16", {1, 37, 64, 5, 100}, 4, 2, 16, 7); }
TEST(attention_ragged_mha_hd64_matches_cpu) { attention_case("mha hd64", {33, 7, 70}, 3, 3, 64, 8); }
TEST(attention_mqa_hd128_matches_cpu) { attention_case("mqa hd128", {40, 3, 65}, 2, 1, 128, 9); }
// A grid sized for a shorter max_len must still cover every tile (blocks loop over the remaining tiles).
TEST(attention_short_grid_still_covers_all_tiles) { attention_case("short grid", {100, 70}, 2, 1, 32, 10, 20); }

// Tensor-core kernels (bf16): every head dim they take, ragged lengths across several 64-row tiles, GQA and MQA.
TEST(attention_bf16_mma_hd64_matches_cpu) { attention_case("bf16 hd64", {130, 7, 64, 65, 1}, 4, 2, 64, 11, 0, true); }
TEST(attention_bf16_mma_hd128_mqa_matches_cpu) { attention_case("bf16 hd128", {70, 129}, 3, 1, 128, 12, 0, true); }
// Sliding windows (Gemma 3, SmolLM3, Mistral): narrower than a tile, wider than one with its edge inside the next,
// and wider than every sequence (the same as none); fp32 tiles of 32, tensor-core tiles of 64 (forward skips the
// tiles left of a warp's window, and masks only the tiles that straddle an edge).
TEST(attention_sliding_window_matches_cpu) {
  for (int window : {5, 40, 500}) {
    const std::string w = " window " + std::to_string(window);
    attention_case("fp32 gqa hd16" + w, {1, 37, 100, 70}, 4, 2, 16, 21, 0, false, 0, false, window);
    attention_case("bf16 hd64" + w, {130, 7, 200}, 4, 2, 64, 22, 0, true, 0, false, window);
    attention_case("bf16 hd32 biases" + w, {150, 3}, 2, 1, 32, 23, 0, true, 2, true, window);
  }
  attention_case("bf16 hd128 window 70", {70, 129, 260}, 3, 1, 128, 24, 0, true, 0, false, 70);
  // the tensor-core forward's edges: 65 and 97 put a warp's skip at its equality edge, 80 its no-mask shortcut
  for (int window : {65, 80, 97})
    attention_case("bf16 hd64 window " + std::to_string(window), {130, 7, 200, 260}, 4, 2, 64, 26, 0, true, 0, false,
                   window);
  attention_case("bf16 hd16 window 64", {1, 37, 200}, 4, 4, 16, 25, 0, true, 0, false, 64);
}

// Head dims past 128 (Gemma 3: 256): the fp32 kernels (the tensor-core ones stop at 128), in both precisions' calls,
// with and without a window, where the GPU has the shared memory for them: 144 (81 KB: every sm_80+ GPU), 192
// (105 KB: A100 and up; not a multiple of the accumulators' 128-wide class, so their bounds checks run), 256 (137 KB:
// A100 and up).
TEST(attention_wide_heads_match_cpu) {
  for (const int hd : {144, 192, 256}) {
    const std::string problem = cuda::attention_smem_problem(hd);
    if (!problem.empty()) {
      std::printf("  SKIPPED head_dim %d on this GPU: %s\n", hd, problem.c_str());
      continue;
    }
    const std::string w = "hd" + std::to_string(hd);
    attention_case("fp32 " + w, {1, 37, 70}, 2, 1, hd, 27);
    attention_case("bf16 " + w + " window 20", {70, 3}, 2, 2, hd, 28, 0, true, 0, false, 20);
  }
}

TEST(attention_mma_needs_its_shared_memory_to_fit) {
  // The tensor-core kernels' largest block (the backward's dK/dV: (2 x 128 + 2 x 64) rows of head_dim + 8 bf16, and
  // 64 lse and D floats) must fit the GPU's per-block limit, else the fp32 kernels run (99 KB GeForce GPUs at 128).
  int dev = 0, optin = 0;
  CHECK(cudaGetDevice(&dev) == cudaSuccess);
  CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess);
  for (const int hd : {16, 32, 64, 128}) {
    const int need = 2 * (2 * 128 + 2 * 64) * (hd + 8) + 2 * 64 * 4;
    CHECK_MSG(cuda::attention_mma_supported(hd) == (need <= optin),
              "head_dim " + std::to_string(hd) + ": needs " + std::to_string(need) + " bytes, the GPU allows " +
                  std::to_string(optin));
  }
  CHECK(!cuda::attention_mma_supported(96) && !cuda::attention_mma_supported(256));
  std::printf("  %d bytes of shared memory per block: tensor-core attention up to head_dim %d\n", optin,
              cuda::attention_mma_supported(128) ? 128 : 64);
}

TEST(attention_bf16_mma_hd16_hd32_match_cpu) {
  attention_case("bf16 hd16", {1, 37, 100}, 4, 4, 16, 13, 0, true);
  attention_case("bf16 hd32", {200, 3}, 2, 2, 32, 14, 0, true);
}
// Slices that are not 16-byte aligned: the tile loads fall back to 8-byte loads, one tile at a time.
TEST(attention_bf16_mma_unaligned_slices_match_cpu) {
  attention_case("bf16 hd64 unaligned", {130, 7, 64}, 4, 2, 64, 16, 0, true, 2);
}
// q/k/v biases added by the kernels as they read (GPT-2's, under bf16), on both load paths; elsewhere an error.
TEST(attention_bf16_mma_adds_qkv_biases) {
  attention_case("bf16 hd64 biases", {130, 7, 64}, 4, 4, 64, 17, 0, true, 0, true);
  attention_case("bf16 hd32 biases unaligned", {70, 3}, 2, 1, 32, 18, 0, true, 2, true);
  Buf b(64);
  cuda::QkvBias bias;
  bias.q = b.data();
  CHECK_THROWS(cuda::attention_forward(nullptr, nullptr, nullptr, 0, nullptr, 0, nullptr, 0, nullptr, 1, 8, 2, 1, 64,
                                       false, bias),
               "tensor-core kernels only");
}
// OPTUNE_CUDA_ATTN_PREFETCH=1 (the forward, dQ and dK/dV kernels fetch the next tiles during this tile's products)
// against "0" (all plain); unset (the default: a pipelined backward at head_dim <= 64) against both:
// the same values rounded and multiplied in the same order, so the same results bit for bit; unaligned slices keep
// the plain kernels.
namespace {
void attention_prefetch_case(const std::string& name, const std::vector<int32_t>& lens, int H, int KV, int hd,
                             uint64_t seed, int shift, bool bias, int window = 0) {
  Rand r(seed);
  std::vector<int32_t> offsets(1, 0);
  int max_len = 0;
  for (int L : lens) offsets.push_back(offsets.back() + L), max_len = std::max(max_len, L);
  const int T = offsets.back(), n_seq = static_cast<int>(lens.size()), qs = (H + 2 * KV) * hd, od = H * hd;
  std::vector<float> qkv(static_cast<size_t>(shift), 0.0f);
  const std::vector<float> body = randv(static_cast<size_t>(T) * qs, r);
  qkv.insert(qkv.end(), body.begin(), body.end());
  const Buf gqkv(qkv), gdout(randv(static_cast<size_t>(T) * od, r)), gbias(randv(static_cast<size_t>(qs), r));
  const IBuf goff(offsets);
  cuda::QkvBias qkv_b;
  if (bias) qkv_b = {gbias.data(), gbias.data() + H * hd, gbias.data() + (H + KV) * hd};
  const float *gq = gqkv.data() + shift, *gk = gq + H * hd, *gv = gk + KV * hd;
  std::vector<std::vector<float>> got[3];
  const char* setting[3] = {"0", "1", nullptr};
  for (int run = 0; run < 3; run++) {
    const testing::ScopedEnv knob(setting[run] ? testing::Env{{"OPTUNE_CUDA_ATTN_PREFETCH", setting[run]}}
                                               : testing::Env{});
    Buf out(static_cast<size_t>(T) * od), lse(static_cast<size_t>(T) * H), dqkv(static_cast<size_t>(T) * qs);
    dqkv.zero();
    cuda::attention_forward(out.data(), lse.data(), gq, qs, gk, qs, gv, qs, goff.data(), n_seq, max_len, H, KV, hd,
                            true, qkv_b, window);
    cuda::attention_backward(dqkv.data(), dqkv.data() + H * hd, dqkv.data() + (H + KV) * hd, gdout.data(),
                             out.data(), lse.data(), gq, qs, gk, qs, gv, qs, goff.data(), n_seq, max_len, T, H, KV,
                             hd, true, qkv_b, window);
    got[run] = {out.download(), lse.download(), dqkv.download()};
  }
  const char* what[3] = {"out", "lse", "dq/dk/dv"};
  for (int run = 1; run < 3; run++) {
    for (int i = 0; i < 3; i++) {
      size_t differ = 0;
      for (size_t j = 0; j < got[0][i].size(); j++) differ += got[0][i][j] != got[run][i][j];
      CHECK_MSG(differ == 0, name + " " + what[i] + ": " + std::to_string(differ) + " values differ from the plain " +
                                 "kernels' with OPTUNE_CUDA_ATTN_PREFETCH " + (setting[run] ? setting[run] : "unset"));
    }
  }
}
}  // namespace

TEST(attention_bf16_prefetch_kernels_equal_plain_kernels) {
  attention_prefetch_case("hd64 gqa biases", {130, 7, 64, 65, 1, 300}, 4, 2, 64, 19, 0, true);
  attention_prefetch_case("hd128 mqa", {70, 129, 200}, 3, 1, 128, 20, 0, false);
  attention_prefetch_case("hd16", {1, 37, 100}, 4, 4, 16, 21, 0, false);
  attention_prefetch_case("hd32 biases", {200, 3}, 2, 2, 32, 22, 0, true);
  attention_prefetch_case("hd64 unaligned (plain kernels)", {130, 7}, 2, 1, 64, 23, 2, true);
  // with windows, the loops start and stop at the tiles the window leaves (attention_window.cuh)
  attention_prefetch_case("hd64 gqa window 40", {130, 7, 300}, 4, 2, 64, 24, 0, true, 40);
  attention_prefetch_case("hd16 window 5", {1, 37, 200}, 4, 4, 16, 25, 0, false, 5);
  attention_prefetch_case("hd128 window 97", {70, 260}, 3, 1, 128, 26, 0, false, 97);
}

// A head dim without a tensor-core kernel runs the fp32 kernels under bf16 too.
TEST(attention_bf16_other_head_dims_fall_back) { attention_case("bf16 hd24", {50, 9}, 2, 1, 24, 15, 0, true); }

TEST(attention_rejects_unsupported_shapes) {
  CHECK_THROWS(cuda::attention_forward(nullptr, nullptr, nullptr, 0, nullptr, 0, nullptr, 0, nullptr, 1, 8, 2, 1, 512),
               "head_dim 512");
  CHECK_THROWS(cuda::attention_forward(nullptr, nullptr, nullptr, 0, nullptr, 0, nullptr, 0, nullptr, 1, 8, 3, 2, 64),
               "not a multiple");
}

// ---- log-prob head ---------------------------------------------------------------------------------------------

TEST(logprob_forward_backward_match_cpu) {
  Rand r(11);
  const int T = 40, n = 50, d = 24, vocab = 1003;  // not a multiple of 8: the head GEMMs' bulk + remainder split
  const auto h = randv(static_cast<size_t>(T) * d, r), w = randv(static_cast<size_t>(vocab) * d, r, 0.3f);
  const auto g = randv(n, r), dh0 = randv(h.size(), r), dw0 = randv(w.size(), r);
  std::vector<int32_t> src(n), target(n);
  for (int i = 0; i < n; i++) src[i] = r.below(T), target[i] = r.below(vocab);  // src repeats: scatter-add order
  std::vector<float> logp(n), dh = dh0, dw = dw0;
  cpu::logprob_forward(logp.data(), h.data(), src.data(), target.data(), n, w.data(), d, vocab);
  cpu::logprob_backward(dh.data(), dw.data(), g.data(), h.data(), src.data(), target.data(), n, w.data(), d, vocab);
  Buf gh(h), gw(w), gg(g);
  IBuf gsrc(src), gtarget(target);
  for (int chunk : {0, 16}) {  // one chunk, and several (the last one partial)
    const std::string tag = " (chunk_rows " + std::to_string(chunk) + ")";
    Buf glogp(n), gdh(dh0), gdw(dw0);
    cuda::logprob_forward(glogp.data(), gh.data(), gsrc.data(), gtarget.data(), n, gw.data(), d, vocab, chunk);
    cuda::logprob_backward(gdh.data(), gdw.data(), gg.data(), gh.data(), gsrc.data(), gtarget.data(), n, gw.data(), d,
                           vocab, chunk);
    expect_close("logp" + tag, glogp.download(), logp, kRtol);
    expect_close("logprob dh" + tag, gdh.download(), dh, kRtol);
    expect_close("logprob dw" + tag, gdw.download(), dw, kRtol);
  }
  // distinct src rows (as a response's): dh's rows are added in parallel
  std::vector<int32_t> dsrc(T);
  for (int i = 0; i < T; i++) dsrc[i] = (i * 7) % T;  // a permutation (7 and 40 are coprime)
  std::vector<float> dh2 = dh0, dw2 = dw0;
  cpu::logprob_backward(dh2.data(), dw2.data(), g.data(), h.data(), dsrc.data(), target.data(), T, w.data(), d, vocab);
  IBuf gdsrc(dsrc);
  Buf gdh(dh0), gdw(dw0);
  cuda::logprob_backward(gdh.data(), gdw.data(), gg.data(), gh.data(), gdsrc.data(), gtarget.data(), T, gw.data(), d,
                         vocab, 16, nullptr, true);
  expect_close("logprob dh (distinct src)", gdh.download(), dh2, kRtol);
  expect_close("logprob dw (distinct src)", gdw.download(), dw2, kRtol);
}

// bf16 LM head: the rows and W go to the GEMMs as bf16, so against the CPU on the same bf16-rounded h and W the
// log-probs agree to fp32 accumulation (1e-4); backward also rounds dLoss/dlogits to bf16 (1e-2 on dh, dw).
TEST(logprob_bf16_matches_cpu_on_rounded_inputs) {
  Rand r(13);
  const int T = 30, n = 40, d = 32, vocab = 701;
  auto h = randv(static_cast<size_t>(T) * d, r), w = randv(static_cast<size_t>(vocab) * d, r, 0.3f);
  round_to_bf16(h);
  round_to_bf16(w);
  const auto g = randv(n, r);
  std::vector<int32_t> src(n), target(n);
  for (int i = 0; i < n; i++) src[i] = r.below(T), target[i] = r.below(vocab);
  std::vector<float> logp(n), dh(h.size(), 0.0f), dw(w.size(), 0.0f);
  cpu::logprob_forward(logp.data(), h.data(), src.data(), target.data(), n, w.data(), d, vocab);
  cpu::logprob_backward(dh.data(), dw.data(), g.data(), h.data(), src.data(), target.data(), n, w.data(), d, vocab);
  Buf gh(h), gw(w), gg(g), glogp(n), gdh(h.size()), gdw(w.size());
  gdh.zero(), gdw.zero();
  cuda::Buffer<uint16_t> w16(w.size());
  cuda::to_bf16(w16.data(), gw.data(), static_cast<int64_t>(w.size()));
  IBuf gsrc(src), gtarget(target);
  cuda::logprob_forward(glogp.data(), gh.data(), gsrc.data(), gtarget.data(), n, gw.data(), d, vocab, 16, w16.data());
  cuda::logprob_backward(gdh.data(), gdw.data(), gg.data(), gh.data(), gsrc.data(), gtarget.data(), n, gw.data(), d,
                         vocab, 16, w16.data());
  expect_close("bf16 logp", glogp.download(), logp, 1e-4);
  expect_close("bf16 logprob dh", gdh.download(), dh, 1e-2);
  expect_close("bf16 logprob dw", gdw.download(), dw, 1e-2);
}

// A training step's head in groups (logprob_train_groups): per group one logits product serves forward and backward,
// and the group's gradients come from a host callback given its log-probs. Against the CPU's forward, the same
// per-row gradient function, and backward; groups of 7, 1 and 32 distinct rows (the rows of a response), out of
// order; the log-probs the callback saw must be the forward's; fp32 and bf16 (on rounded inputs, as above).
TEST(logprob_train_groups_match_cpu_forward_and_backward) {
  // vocab 5003 too: rows of more than 4 x 256 float4s take the row passes' batched loads (for_each_in_row)
  for (const int vocab : {1003, 5003}) {
    Rand r(17);
    const int T = 48, n = 40, d = 32;
    auto h = randv(static_cast<size_t>(T) * d, r), w = randv(static_cast<size_t>(vocab) * d, r, 0.3f);
    round_to_bf16(h);
    round_to_bf16(w);
    std::vector<int32_t> src(n), target(n);
    for (int i = 0; i < n; i++) src[i] = (i * 5) % T, target[i] = r.below(vocab);  // distinct rows of h
    auto grad_of = [](float logp) { return 0.2f + 0.5f * std::tanh(0.05f * logp); };
    std::vector<float> logp(n), g(n), dh(h.size(), 0.0f), dw(w.size(), 0.0f);
    cpu::logprob_forward(logp.data(), h.data(), src.data(), target.data(), n, w.data(), d, vocab);
    for (int i = 0; i < n; i++) g[i] = grad_of(logp[i]);
    cpu::logprob_backward(dh.data(), dw.data(), g.data(), h.data(), src.data(), target.data(), n, w.data(), d, vocab);
    std::vector<std::vector<int32_t>> groups = {{3, 0, 9, 12, 1, 2, 30}, {39}, {}};
    for (int i = 0; i < n; i++)
      if (std::none_of(groups[0].begin(), groups[0].end(), [&](int32_t k) { return k == i; }) && i != 39)
        groups[2].push_back(i);
    Buf gh(h), gw(w);
    cuda::Buffer<uint16_t> w16(w.size());
    cuda::to_bf16(w16.data(), gw.data(), static_cast<int64_t>(w.size()));
    for (bool bf16 : {false, true}) {
      const std::string tag = std::string(bf16 ? " (bf16" : " (fp32") + ", vocab " + std::to_string(vocab) + ")";
      Buf gdh(h.size()), gdw(w.size());
      gdh.zero(), gdw.zero();
      std::vector<float> seen(n, NAN);
      int calls = 0;
      cuda::logprob_train_groups(
          gdh.data(), gdw.data(), groups,
          [&](const std::vector<int32_t>& group, const float* lp, float* gr) {
            calls++;
            for (size_t k = 0; k < group.size(); k++) seen[group[k]] = lp[k], gr[k] = grad_of(lp[k]);
          },
          gh.data(), src, target, gw.data(), d, vocab, bf16 ? w16.data() : nullptr);
      CHECK_MSG(calls == 3, "the callback ran " + std::to_string(calls) + " times for 3 groups" + tag);
      expect_close("group log-probs" + tag, seen, logp, bf16 ? 1e-4 : kRtol);
      expect_close("group dh" + tag, gdh.download(), dh, bf16 ? 1e-2 : kRtol);
      expect_close("group dw" + tag, gdw.download(), dw, bf16 ? 1e-2 : kRtol);
    }
  }
}

// ---- AdamW -----------------------------------------------------------------------------------------------------

TEST(adamw_matches_cpu_optimizer) {
  // The CPU side is the engine's own optimizer on a tiny model; the GPU side derives the same scalars (as
  // core/adamw.cpp does) and runs one adamw_step per tensor. Two steps with clipping and weight decay.
  auto model = make_model(testing::tiny_gpt2());
  testing::randomize(*model, 12);
  Rand r(13);
  AdamWConfig o;
  o.lr = 1e-2f, o.weight_decay = 0.1f, o.max_grad_norm = 0.5f;
  const size_t n = model->params.size();
  Buf p(model->params), m(n), v(n), g(n);
  m.zero(), v.zero();
  for (int step = 1; step <= 2; step++) {
    model->grads = randv(n, r);
    g.upload(model->grads);
    const double cpu_norm = adamw_update(*model, o);

    const double norm = std::sqrt(cuda::sum_squares(g.data(), n));
    CHECK_CLOSE(norm, cpu_norm, 1e-9, 0.0);
    const float clip = static_cast<float>(std::min(1.0, o.max_grad_norm / (norm + 1e-6)));
    const double bc1 = 1.0 - std::pow(static_cast<double>(o.beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(o.beta2), static_cast<double>(step));
    const float step_size = static_cast<float>(o.lr / bc1), bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    for (const ParamInfo& t : model->layout.tensors) {
      const float decay = t.decay ? 1.0f - o.lr * o.weight_decay : 1.0f;
      cuda::adamw_step(p.data() + t.offset, g.data() + t.offset, m.data() + t.offset, v.data() + t.offset, t.numel,
                       decay, o.beta1, o.beta2, o.eps, step_size, bc2_sqrt, clip);
    }
    expect_close("adamw params step " + std::to_string(step), p.download(), model->params, kRtol);
    expect_close("adamw m step " + std::to_string(step), m.download(), model->adam_m, kRtol);
    expect_close("adamw v step " + std::to_string(step), v.download(), model->adam_v, kRtol);
  }
}

// ---- errors ----------------------------------------------------------------------------------------------------

TEST(out_of_memory_is_an_error_with_sizes) {
  CHECK_THROWS(cuda::device_alloc(size_t(1) << 50, "test tensor"),
               "CUDA out of memory allocating 1073741824.0 MiB for test tensor");
  Buf still_works(std::vector<float>{1.0f, 2.0f});  // the failed allocation left the context usable
  CHECK(still_works.download()[1] == 2.0f);
}

CUDA_TEST_MAIN()
