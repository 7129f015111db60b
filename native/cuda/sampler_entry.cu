// cuda::sample (device_model.h): sampling for a model placed on CUDA, reading the weights of its DeviceState. Kept
// apart from sampler_cuda.cu so that tests and benchmarks with their own device weights link without DeviceState.
//
// A LoRA model with its adapters on samples from a copy of its weights with every target's adapter merged in
// (W + scale B A, core/lora.h merge_weight_into), made for the call and freed after it: the decode path's fused
// GEMMs then run at the base model's speed, and the copy costs the weights' size once (bf16: half the fp32 weights)
// only while the call runs.
#include <algorithm>

#include "core/error.h"
#include "core/lora.h"
#include "device_model.h"
#include "memory.h"
#include "ops.h"
#include "sampler_cuda.h"

namespace optune::cuda {

namespace {

// w += scale B A in place, w being t's fp32 weight in the model's layout ([out, in], or GPT-2's Conv1D [in, out]).
void add_adapter(const Model& m, const DeviceState& d, const LoraTarget& t, float* w) {
  const Lora& L = *m.lora;
  const int r = L.cfg.rank;
  const float* A = d.lora.data() + t.a;  // [r, in]
  const float* B = d.lora.data() + t.b;  // [out, r]
  if (m.cfg.is_gpt2())  // W [in, out] += scale A^T B^T
    gemm(true, true, t.in, t.out, r, L.scale, A, t.in, B, r, 1.0f, w, t.out, /*allow_tf32=*/false);
  else  // W [out, in] += scale B A
    gemm(false, false, t.out, t.in, r, L.scale, B, r, A, t.in, 1.0f, w, t.in, /*allow_tf32=*/false);
}

// The weights with the adapters merged: under fp32 a merged copy of the fp32 weights; under bf16 a merged copy of
// the bf16 weights (each target merged in fp32, then rounded once), the fp32 ones read as they are (under bf16 the
// sampler's GEMMs read only the bf16 copy).
struct MergedWeights {
  Buffer<float> f32;
  Buffer<uint16_t> bf16;
};

MergedWeights merge_adapters(const Model& m, const DeviceState& d) {
  const Lora& L = *m.lora;
  MergedWeights out;
  if (d.prec == Precision::FP32) {
    out.f32 = Buffer<float>(d.n_params, "LoRA-merged weights for sampling");
    copy_device(out.f32.data(), d.params.data(), d.n_params * sizeof(float));
    for (const LoraTarget& t : L.targets) add_adapter(m, d, t, out.f32.data() + t.weight);
    return out;
  }
  out.bf16 = Buffer<uint16_t>(d.n_params, "LoRA-merged bf16 weights for sampling");
  copy_device(out.bf16.data(), d.params_bf16.data(), d.n_params * sizeof(uint16_t));
  size_t largest = 0;
  for (const LoraTarget& t : L.targets) largest = std::max(largest, static_cast<size_t>(t.in) * t.out);
  Buffer<float> merged(largest, "LoRA merge scratch");
  for (const LoraTarget& t : L.targets) {
    const size_t n = static_cast<size_t>(t.in) * t.out;
    copy_device(merged.data(), d.params.data() + t.weight, n * sizeof(float));
    add_adapter(m, d, t, merged.data());
    to_bf16(out.bf16.data() + t.weight, merged.data(), static_cast<int64_t>(n));
  }
  return out;
}

}  // namespace

SampleResult sample(const Model& m, const SampleRequest& r) {
  const DeviceState* d = device_state(m);
  OPTUNE_CHECK(d, "sample: the model is not on a CUDA device (move it there first: cuda::to_device)");
  d->check_adapters(m);
  SamplerWeights w;
  w.f32 = d->params.data();
  w.bf16 = d->prec == Precision::BF16 ? d->params_bf16.data() : nullptr;
  if (!active_lora(m)) return sample_with_weights(m, w, r);
  const MergedWeights merged = merge_adapters(m, *d);
  if (merged.f32.data()) w.f32 = merged.f32.data();
  if (merged.bf16.data()) w.bf16 = merged.bf16.data();
  return sample_with_weights(m, w, r);
}

}  // namespace optune::cuda
