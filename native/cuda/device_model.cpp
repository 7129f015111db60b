// DeviceState: the model's weights, gradients and AdamW moments on the GPU, their sync with the host copies, and the
// activation arena. The operations themselves are in inference_cuda.cpp and train_cuda.cpp.
#include "device_model.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "ops.h"

namespace optune::cuda {

char* Arena::reserve(size_t bytes, const char* what) {
  if (bytes > buf_.size()) {
    buf_ = Buffer<char>();  // free first: the old and the new arena never coexist
    buf_ = Buffer<char>(bytes, what);
    peak_ = std::max(peak_, bytes);
  }
  return buf_.data();
}

// Never destroyed: a model freed late in process exit (a JS finalizer) must still find them alive.
static std::recursive_mutex& device_mutex() {
  static auto* mu = new std::recursive_mutex;
  return *mu;
}
static int g_live_states = 0;  // guarded by device_mutex()

Arena& shared_arena() {
  static auto* arena = new Arena;
  return *arena;
}
std::unique_lock<std::recursive_mutex> lock_device() { return std::unique_lock<std::recursive_mutex>(device_mutex()); }

DeviceState::DeviceState() {
  auto lock = lock_device();
  g_live_states++;
}

DeviceState::~DeviceState() {
  auto lock = lock_device();
  if (--g_live_states == 0) shared_arena().release();
}

size_t DeviceState::device_bytes() const {
  return (params.size() + grads.size() + adam_m.size() + adam_v.size()) * sizeof(float) +
         params_bf16.size() * sizeof(uint16_t);
}

void DeviceState::refresh_bf16() {
  if (prec == Precision::BF16) to_bf16(params_bf16.data(), params.data(), static_cast<int64_t>(n_params));
}

DeviceState* device_state(const Model& m) {
  return m.device && m.device->device() == Device::CUDA ? static_cast<DeviceState*>(m.device.get()) : nullptr;
}

void to_device(Model& m, Precision p) {
  OPTUNE_CHECK(device_count() > 0, "device 'cuda' was requested but no CUDA GPU is visible to this process");
  auto ds = std::make_shared<DeviceState>();
  ds->prec = p;
  ds->n_params = m.params.size();
  ds->params = Buffer<float>(ds->n_params, "model weights");
  if (p == Precision::BF16) ds->params_bf16 = Buffer<uint16_t>(ds->n_params, "bf16 weight copy");
  ds->rope = rope_sets(m.cfg);
  if (!ds->rope.freqs.empty()) ds->rope_freqs = Buffer<double>(ds->rope.freqs, "RoPE frequencies");
  ds->upload(m);
  m.device = std::move(ds);
}

void DeviceState::upload(const Model& m) {
  auto lock = lock_device();
  OPTUNE_CHECK(m.params.size() == n_params, "cuda: the model's weights changed size (" +
                                                std::to_string(m.params.size()) + " vs " + std::to_string(n_params) +
                                                ")");
  params.upload(m.params);
  refresh_bf16();
  // AdamW moments: the host's when it has them (a loaded optimizer state), none otherwise (the next step starts
  // them at zero, as the CPU optimizer does when m.adam_m is empty).
  if (m.adam_m.size() == n_params && m.adam_v.size() == n_params) {
    if (adam_m.size() != n_params) {
      adam_m = Buffer<float>(n_params, "AdamW first moments");
      adam_v = Buffer<float>(n_params, "AdamW second moments");
    }
    adam_m.upload(m.adam_m);
    adam_v.upload(m.adam_v);
  } else {
    adam_m = Buffer<float>();
    adam_v = Buffer<float>();
  }
  host_stale = false;
}

void DeviceState::download(Model& m) {
  auto lock = lock_device();
  if (!host_stale) return;
  m.params = params.download();
  if (adam_m.size() == n_params) {
    m.adam_m = adam_m.download();
    m.adam_v = adam_v.download();
  }
  host_stale = false;
}

// Every operation holds the device lock for its whole duration (see shared_arena()).
LogprobResult DeviceState::logprobs(const Model& m, const Batch& b) {
  auto lock = lock_device();
  return cuda::compute_logprobs(m, b);
}
std::vector<float> DeviceState::logits(const Model& m, const Batch& b) {
  auto lock = lock_device();
  return cuda::compute_logits(m, b);
}
std::vector<float> DeviceState::scores(const Model& m, const Batch& b) {
  auto lock = lock_device();
  return cuda::compute_scores(m, b);
}
TrainStats DeviceState::train_step(Model& m, const TrainRequest& r) {
  auto lock = lock_device();
  return cuda::train_step(m, r);
}
double DeviceState::adamw_update(Model& m, const AdamWConfig& opt) {
  auto lock = lock_device();
  return cuda::adamw_update(m, opt);
}
SampleResult DeviceState::sample(const Model& m, const SampleRequest& r) {
  auto lock = lock_device();
  return cuda::sample(m, r);
}

}  // namespace optune::cuda
