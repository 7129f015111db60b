// A model resident on a CUDA device: device copies of the flat parameter buffer (the same ParamLayout offsets as
// Model::params, core/params.h), gradients and AdamW moments in that layout, a bf16 copy of the weights under bf16
// mixed precision. Owned by Model::device (core/device.h); the engine's entry points forward here. Activations live
// in one grow-only arena shared by every model in the process (policy, reference, reward model): their calls never
// overlap (a process-wide lock serializes device calls, the GPU runs them one after another anyway), so the arena
// peaks at the largest single call instead of the sum. Plain C++: callers need no CUDA headers.
//
// Precision: FP32 runs every GEMM in fp32 (no TF32). BF16 keeps fp32 master weights, gradients, moments, norms,
// softmax and losses; only the GEMM operands are bf16 (weights from `params_bf16`, refreshed after every AdamW
// step; activations converted right before each GEMM), with fp32 accumulation and output; the LM head's GEMMs
// too (log-probs, training; compute_logits stays fp32).
//
// Host sync: `params`, `adam_m`, `adam_v` here are the live copies; Model::params etc. are updated by sync_to_host
// (core/device.h) and re-uploaded by sync_to_device. `host_stale` records whether the host copy is behind.
//
// LoRA (core/lora.h): a model with adapters keeps them in `lora` (Lora::params' layout, fp32, with a bf16 copy
// under bf16); its weights stay frozen, so gradients and AdamW moments cover the adapters only (`n_trainable`
// floats, Lora::layout offsets), as on the CPU. The adapters run beside the frozen GEMMs in training and log-probs
// (transformer_cuda.cpp); sampling reads a merged copy of the weights made for the call (sampler_entry.cu).
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "core/device.h"
#include "core/engine.h"
#include "core/model.h"
#include "memory.h"
#include "rope_sets.h"

namespace optune::cuda {

// One device allocation, carved per call into the buffers a forward/backward needs. It only grows (a larger batch
// reallocates it; a smaller one reuses it); release() frees it (when the last device model goes). `Carver` lays the buffers out twice with the
// same code: first with no base to measure, then for real, so a call never allocates mid-way.
class Arena {
 public:
  // Makes the arena at least `bytes` large (contents are not kept) and returns its base.
  char* reserve(size_t bytes, const char* what);
  size_t capacity() const { return buf_.size(); }
  size_t peak() const { return peak_; }
  void release() { buf_ = Buffer<char>(); }

 private:
  Buffer<char> buf_;
  size_t peak_ = 0;
};

// The process-wide activation arena, and the lock every device call holds while it uses it (recursive: a train
// step computes its reference log-probs inside its own call, before carving its buffers).
Arena& shared_arena();
std::unique_lock<std::recursive_mutex> lock_device();

class Carver {
 public:
  explicit Carver(char* base = nullptr) : base_(base) {}
  template <class T>
  T* take(size_t n) {
    char* p = base_ ? base_ + used_ : nullptr;
    used_ += (n * sizeof(T) + 255) / 256 * 256;  // 256-byte alignment: coalesced, and fine for cuBLAS
    return reinterpret_cast<T*>(p);
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

struct DeviceState final : DeviceEngine {
  Precision prec = Precision::FP32;
  size_t n_params = 0;
  Buffer<float> params;           // fp32 master weights, ParamLayout offsets
  Buffer<uint16_t> params_bf16;   // bf16 copy of `params` (same offsets); empty under FP32
  Buffer<float> lora;             // LoRA adapters (Lora::params' layout); empty without them
  Buffer<uint16_t> lora_bf16;     // their bf16 copy (bf16 only)
  size_t n_trainable = 0;         // what training updates: the adapters' count with LoRA, else n_params
  Buffer<float> grads;            // allocated on the first train step (n_trainable)
  Buffer<float> adam_m, adam_v;   // allocated on the first optimizer step (n_trainable)
  bool host_stale = false;        // device weights/moments changed since the last download
  RopeSets rope;                  // each layer's RoPE frequencies (host copy) ...
  Buffer<double> rope_freqs;      // ... and rope.freqs on the device

  DeviceState();
  ~DeviceState() override;        // the last device model to go frees the shared arena
  // Bytes held by this model on the device (weights, gradients, moments, bf16 copy; not the shared arena).
  size_t device_bytes() const;
  const uint16_t* bf16(size_t offset) const { return params_bf16.data() ? params_bf16.data() + offset : nullptr; }
  void refresh_bf16();           // params -> params_bf16 and lora -> lora_bf16 (bf16 only)
  void refresh_trained_bf16();   // the bf16 copy of what a step changed: the adapters with LoRA, else the weights
  // What training updates (n_trainable floats): the adapters with LoRA, else the weights.
  float* trainable() { return lora.data() ? lora.data() : params.data(); }
  // Throws unless the device holds m's adapters as the host has them laid out (enable_lora or load_lora_adapter on
  // a device model must be followed by sync_to_device).
  void check_adapters(const Model& m) const;
  // Layer l's RoPE frequencies on the device (rope.cu's inv_freq); null when the layer does not rotate.
  const double* layer_inv_freq(int l) const {
    return rope.layer_set[l] < 0 ? nullptr : rope_freqs.data() + static_cast<size_t>(rope.layer_set[l]) * rope.half;
  }

  Device device() const override { return Device::CUDA; }
  Precision precision() const override { return prec; }
  LogprobResult logprobs(const Model& m, const Batch& b) override;
  std::vector<float> logits(const Model& m, const Batch& b) override;
  std::vector<float> scores(const Model& m, const Batch& b) override;
  TrainStats train_step(Model& m, const TrainRequest& r) override;
  double adamw_update(Model& m, const AdamWConfig& opt) override;
  SampleResult sample(const Model& m, const SampleRequest& r) override;
  void download(Model& m) override;
  void upload(const Model& m) override;
};

// The model's device state; null when it is not on CUDA.
DeviceState* device_state(const Model& m);
// Copies the model to the current CUDA device (device 0 unless the process chose another) and attaches the state.
// Throws optune::Error without a GPU, or on out-of-memory with the sizes.
void to_device(Model& m, Precision p);

// The engine entry points on CUDA (what DeviceState's overrides call; transformer_cuda.cpp, loss_cuda.cpp).
LogprobResult compute_logprobs(const Model& m, const Batch& b);
std::vector<float> compute_logits(const Model& m, const Batch& b);
std::vector<float> compute_scores(const Model& m, const Batch& b);
TrainStats train_step(Model& m, const TrainRequest& r);
double adamw_update(Model& m, const AdamWConfig& opt);

// Batched sampling on the device (cuda/sampler_cuda.*), reading the weights from device_state(m).
SampleResult sample(const Model& m, const SampleRequest& r);

}  // namespace optune::cuda
