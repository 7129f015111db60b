// The persistent decode step (cuda/persistent_step.h) against a CPU reference of the same bf16 operands
// (bench/decode_layers_fixture.h), on small GPT-2-shaped layers (d 128, 2 heads of 64, d_ff 256, 2 layers):
//  - every work split (blocks per SM, K-slices of each GEMM, early weight loads, staged or attend_head attention)
//    gives x, the first layer's new cache entries and the last attention output within bf16 rounding of it;
//  - a step made for more rows runs fewer; the same inputs give the same bits twice;
//  - models it cannot take, batches it was not made for and slices that do not divide are errors with the reason.
// (test_cuda_sampler checks it inside the sampler: OPTUNE_CUDA_DECODE_STEP=persistent.)
// Without a CUDA device every case prints "SKIPPED: no CUDA device <case>".
#include <string>
#include <vector>

#include "bench/decode_layers_fixture.h"
#include "cuda/memory.h"
#include "cuda/persistent_step.h"
#include "testing.h"
#include "testing_cuda.h"

using namespace optune;
using decode_fixture::Fixture;
using decode_fixture::RefShape;

namespace {

constexpr int kLayers = 2, kRows = 24, kCap = 48;

RefShape small_shape(int rows) { return {rows, 128, 2, 64, 256, kRows, kCap, 1e-5f}; }

// Rows at positions 8-47 of their slots (a permutation of the first `rows` slots of kRows).
Fixture make_fixture(int rows) {
  std::vector<int> pos(rows), slot(rows);
  for (int r = 0; r < rows; r++) pos[r] = 8 + (r * 7) % (kCap - 8), slot[r] = (r * 5) % kRows;
  return Fixture(small_shape(rows), kLayers, pos, slot);
}

cuda::StepShape step_shape() {
  cuda::StepShape s;
  s.d = 128, s.n_head = 2, s.head_dim = 64, s.d_ff = 256, s.cap = kCap;
  return s;
}

// Runs `step` over the fixture's rows from its x0; returns x after it.
std::vector<float> run_step(cuda::PersistentStep& step, const Fixture& fx, cuda::Buffer<float>& x) {
  x.upload(fx.x0);
  step.run(x.data(), fx.pos_dev.data(), fx.slot_dev.data(), fx.shape.rows, nullptr);
  cuda::synchronize();
  return x.download();
}

std::string describe(const cuda::StepSplit& s) {
  return std::to_string(s.blocks_per_sm) + " blocks per SM, slices " + std::to_string(s.s_qkv) + "/" +
         std::to_string(s.s_o) + "/" + std::to_string(s.s_fc) + "/" + std::to_string(s.s_proj) +
         (s.early ? ", early" : "") + (s.staged_attention ? ", staged" : ", attend_head");
}

}  // namespace

TEST(every_split_matches_the_cpu_reference) {
  Fixture fx = make_fixture(kRows);
  cuda::Buffer<float> x(fx.x0.size());
  // Fields: blocks per SM, K-slices of qkv, o-proj, fc, proj (0: its choice), early weights, staged attention.
  const cuda::StepSplit splits[] = {{0, 0, 0, 0, 0, true, true},  {0, 0, 0, 0, 0, true, false},
                                    {1, 1, 1, 1, 1, true, true},  {1, 1, 1, 1, 1, false, false},
                                    {2, 4, 16, 4, 16, true, true}, {1, 2, 8, 2, 8, false, true}};
  for (const cuda::StepSplit& asked : splits) {
    cuda::PersistentStep step(step_shape(), fx.views, kRows, asked);
    run_step(step, fx, x);
    const Fixture::Errors e = fx.errors(x.data(), step.attention_output());
    const std::string what = describe(step.split());
    CHECK_MSG(e.ok(), what + ": errors x " + std::to_string(e.x) + ", k and v " + std::to_string(e.kv) +
                          ", attention " + std::to_string(e.att));
    std::printf("  %s: errors x %.2e, k and v %.2e, attention %.2e\n", what.c_str(), e.x, e.kv, e.att);
  }
}

TEST(fewer_rows_and_the_same_bits_twice) {
  Fixture fx = make_fixture(7);  // the reference over 7 rows; the step is made for kRows
  cuda::Buffer<float> x(fx.x0.size());
  cuda::PersistentStep step(step_shape(), fx.views, kRows);
  const std::vector<float> first = run_step(step, fx, x);
  const Fixture::Errors e = fx.errors(x.data(), step.attention_output());
  CHECK_MSG(e.ok(), "7 of 24 rows: errors x " + std::to_string(e.x) + ", k and v " + std::to_string(e.kv) +
                        ", attention " + std::to_string(e.att));
  CHECK_MSG(run_step(step, fx, x) == first, "a second run gave other bits");
}

TEST(rejects_what_it_cannot_take) {
  Fixture fx = make_fixture(4);
  const auto why = [&](cuda::StepShape s, std::vector<cuda::StepLayer> layers) {
    return cuda::persistent_step_unsupported(s, layers);
  };
  CHECK(why(step_shape(), fx.views).empty());
  cuda::StepShape wide = step_shape();
  wide.d = 1032, wide.n_head = 1032 / 8, wide.head_dim = 8;
  CHECK(why(wide, fx.views).find("d_model") != std::string::npos);
  cuda::StepShape big_heads = step_shape();
  big_heads.n_head = 1, big_heads.head_dim = 128;
  CHECK(why(big_heads, fx.views).find("heads") != std::string::npos);
  std::vector<cuda::StepLayer> no_bias = fx.views;
  no_bias[1].b_o = nullptr;
  CHECK(why(step_shape(), no_bias).find("bias") != std::string::npos);
  std::vector<cuda::StepLayer> unaligned = fx.views;
  unaligned[0].w_o += 1;
  CHECK(why(step_shape(), unaligned).find("aligned") != std::string::npos);
  CHECK_THROWS(cuda::PersistentStep(step_shape(), no_bias, 4), "bias");
  CHECK_THROWS(cuda::PersistentStep(step_shape(), fx.views, 65), "1 to 64");
  cuda::StepSplit odd;
  odd.s_o = 3;  // 128 / 3
  CHECK_THROWS(cuda::PersistentStep(step_shape(), fx.views, 4, odd), "slices");
  cuda::PersistentStep step(step_shape(), fx.views, 4);
  cuda::Buffer<float> x(fx.x0.size());
  CHECK_THROWS(step.run(x.data(), fx.pos_dev.data(), fx.slot_dev.data(), 5, nullptr), "made for up to 4");
}

CUDA_TEST_MAIN()
