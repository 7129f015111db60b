// DeviceState: the model's weights, gradients and AdamW moments on the GPU, their sync with the host copies, and the
// activation arena. The operations themselves are in inference_cuda.cpp and train_cuda.cpp.
#include "device_model.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/lora.h"
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
  return (params.size() + lora.size() + grads.size() + adam_m.size() + adam_v.size()) * sizeof(float) +
         (params_bf16.size() + lora_bf16.size()) * sizeof(uint16_t);
}

void DeviceState::refresh_bf16() {
  if (prec != Precision::BF16) return;
  to_bf16(params_bf16.data(), params.data(), static_cast<int64_t>(n_params));
  if (lora.size()) to_bf16(lora_bf16.data(), lora.data(), static_cast<int64_t>(lora.size()));
}

void DeviceState::refresh_trained_bf16() {
  if (prec != Precision::BF16) return;
  if (lora.size())
    to_bf16(lora_bf16.data(), lora.data(), static_cast<int64_t>(lora.size()));
  else
    to_bf16(params_bf16.data(), params.data(), static_cast<int64_t>(n_params));
}

void DeviceState::check_adapters(const Model& m) const {
  const size_t want = m.lora ? m.lora->params.size() : 0;
  OPTUNE_CHECK(lora.size() == want, "cuda: the model's LoRA adapters (" + std::to_string(want) +
                                        " parameters) are not on the device (it holds " +
                                        std::to_string(lora.size()) + "); call sync_to_device after changing them");
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
  // LoRA adapters (added, replaced or loaded on the host): gradients of another size no longer apply
  const size_t n_lora = m.lora ? m.lora->params.size() : 0;
  if (lora.size() != n_lora) {
    lora = Buffer<float>();
    lora_bf16 = Buffer<uint16_t>();
    grads = Buffer<float>();
    if (n_lora) lora = Buffer<float>(n_lora, "LoRA adapters");
    if (n_lora && prec == Precision::BF16) lora_bf16 = Buffer<uint16_t>(n_lora, "bf16 LoRA adapter copy");
  }
  if (n_lora) lora.upload(m.lora->params);
  n_trainable = n_lora ? n_lora : n_params;
  refresh_bf16();
  // AdamW moments: the host's when it has them (a loaded optimizer state), none otherwise (the next step starts
  // them at zero, as the CPU optimizer does when m.adam_m is empty).
  if (m.adam_m.size() == n_trainable && m.adam_v.size() == n_trainable) {
    if (adam_m.size() != n_trainable) {
      adam_m = Buffer<float>(n_trainable, "AdamW first moments");
      adam_v = Buffer<float>(n_trainable, "AdamW second moments");
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
  check_adapters(m);
  if (m.lora)  // the weights under them are frozen: the host copy is current
    m.lora->params = lora.download();
  else
    m.params = params.download();
  if (adam_m.size() == n_trainable) {
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
