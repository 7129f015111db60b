// cuda::sample (device_model.h): sampling for a model placed on CUDA, reading the weights of its DeviceState. Kept
// apart from sampler_cuda.cu so that tests and benchmarks with their own device weights link without DeviceState.
#include "core/error.h"
#include "device_model.h"
#include "sampler_cuda.h"

namespace optune::cuda {

SampleResult sample(const Model& m, const SampleRequest& r) {
  const DeviceState* d = device_state(m);
  OPTUNE_CHECK(d, "sample: the model is not on a CUDA device (move it there first: cuda::to_device)");
  SamplerWeights w;
  w.f32 = d->params.data();
  w.bf16 = d->prec == Precision::BF16 ? d->params_bf16.data() : nullptr;
  return sample_with_weights(m, w, r);
}

}  // namespace optune::cuda
