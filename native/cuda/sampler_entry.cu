// cuda::sample (device_model.h): sampling for a model placed on CUDA, reading the weights of its DeviceState. Kept
// apart from sampler_cuda.cu so that tests and benchmarks with their own device weights link without DeviceState.
//
// A LoRA model with its adapters on samples from its weights with every target's adapter merged in (W + scale B A,
// core/lora.h merge_weight_into), so the decode path's fused GEMMs run at the base model's speed. Under bf16 the
// sampler reads only the bf16 copy of the weights, which is derived from the fp32 ones: the adapters are merged into
// it for the call and the targets rounded again from the fp32 weights when it ends (the same bits as before), at
// no memory cost. Under fp32 the sampler reads a merged copy of the weights made for the call and freed after it.
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

// Under fp32: a copy of the weights with the adapters merged.
Buffer<float> merged_fp32_copy(const Model& m, const DeviceState& d) {
  Buffer<float> out(d.n_params, "LoRA-merged weights for sampling");
  copy_device(out.data(), d.params.data(), d.n_params * sizeof(float));
  for (const LoraTarget& t : m.lora->targets) add_adapter(m, d, t, out.data() + t.weight);
  return out;
}

// Under bf16: the adapters merged into the bf16 weight copy for its lifetime (each target merged in fp32, then
// rounded once), the targets restored from the fp32 weights at its end.
class MergedBf16 {
 public:
  MergedBf16(const Model& m, DeviceState& d) : m_(m), d_(d) {
    size_t largest = 0;
    for (const LoraTarget& t : m.lora->targets) largest = std::max(largest, static_cast<size_t>(t.in) * t.out);
    Buffer<float> merged(largest, "LoRA merge scratch");
    merging_ = true;  // from the first write on, the destructor restores
    for (const LoraTarget& t : m.lora->targets) {
      const size_t n = static_cast<size_t>(t.in) * t.out;
      copy_device(merged.data(), d.params.data() + t.weight, n * sizeof(float));
      add_adapter(m, d, t, merged.data());
      to_bf16(d.params_bf16.data() + t.weight, merged.data(), static_cast<int64_t>(n));
    }
  }
  ~MergedBf16() {
    if (!merging_) return;
    try {
      for (const LoraTarget& t : m_.lora->targets)
        to_bf16(d_.params_bf16.data() + t.weight, d_.params.data() + t.weight, static_cast<int64_t>(t.in) * t.out);
    } catch (...) {  // a device that fails here has failed the call already; its error is the one reported
    }
  }
  MergedBf16(const MergedBf16&) = delete;
  MergedBf16& operator=(const MergedBf16&) = delete;

 private:
  const Model& m_;
  DeviceState& d_;
  bool merging_ = false;
};

}  // namespace

SampleResult sample(const Model& m, const SampleRequest& r) {
  DeviceState* d = device_state(m);
  OPTUNE_CHECK(d, "sample: the model is not on a CUDA device (move it there first: cuda::to_device)");
  d->check_adapters(m);
  SamplerWeights w;
  w.f32 = d->params.data();
  w.bf16 = d->prec == Precision::BF16 ? d->params_bf16.data() : nullptr;
  if (!active_lora(m)) return sample_with_weights(m, w, r);
  if (w.bf16) {
    const MergedBf16 merged(m, *d);
    return sample_with_weights(m, w, r);
  }
  const Buffer<float> merged = merged_fp32_copy(m, *d);
  w.f32 = merged.data();
  return sample_with_weights(m, w, r);
}

}  // namespace optune::cuda
