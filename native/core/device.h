// Where a model runs. A model on the CPU has no device state (Model::device is null) and the engine's functions run
// the CPU reference. A model placed on CUDA carries a DeviceEngine (cuda/device_model.h) that owns device copies of
// its weights, gradients and AdamW moments; the engine's entry points (engine.h) forward to it with one line at
// their top, so callers see one API whatever the device.
//
// Host copies: while a model is on a device, the device copies are the live ones. Model::params (and adam_m/adam_v)
// on the host are brought up to date by sync_to_host(), which the binding calls before every read of them (save,
// saveOptimizerState, getParams, clone); after a write to them (setParams, loadOptimizerState) it calls
// sync_to_device(). Model::grads is filled on the host only by a train step with apply_update = false (the tests'
// and gradient checks' contract in engine.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"

namespace optune {

enum class Device { CPU, CUDA, AUTO };
enum class Precision { FP32, BF16 };

Device parse_device(const std::string& s);        // "cpu" | "cuda" | "auto"; throws optune::Error otherwise
Precision parse_precision(const std::string& s);  // "fp32" | "bf16"
const char* device_name(Device d);
const char* precision_name(Precision p);

// The operations a device backend runs instead of the CPU engine (same contracts as engine.h).
struct DeviceEngine {
  virtual ~DeviceEngine() = default;
  virtual Device device() const = 0;
  virtual Precision precision() const = 0;
  virtual LogprobResult logprobs(const Model& m, const Batch& b) = 0;
  virtual std::vector<float> logits(const Model& m, const Batch& b) = 0;
  virtual std::vector<float> scores(const Model& m, const Batch& b) = 0;
  virtual TrainStats train_step(Model& m, const TrainRequest& r) = 0;
  virtual double adamw_update(Model& m, const AdamWConfig& opt) = 0;
  // The device's own precision decides (SampleRequest::bf16 is the CPU decoder's switch).
  virtual SampleResult sample(const Model& m, const SampleRequest& r) = 0;
  virtual void download(Model& m) = 0;      // device weights and AdamW state -> m.params, m.adam_m, m.adam_v
  virtual void upload(const Model& m) = 0;  // the reverse
};

// Whether this build has the CUDA backend (CMake -DOPTUNE_CUDA=ON or AUTO with a toolkit; never node-gyp).
bool cuda_built();
// The CUDA architectures the backend was built for ("80,90"); "" without it.
std::string cuda_archs();
struct GpuInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  // compute capability
  size_t total_bytes = 0, free_bytes = 0;
  bool free_known = false;   // free_bytes is known for the current device only
  std::string unusable;      // why optune's kernels cannot run there; "" when they can
};
// Why a GPU of this compute capability cannot run optune's CUDA kernels (they need 8.0: cp.async, bf16 tensor
// cores); "" when it can. Inline: cuda/memory.cu uses it without linking the core.
inline std::string compute_capability_problem(int major, int minor) {
  if (major >= 8) return "";
  return "its compute capability " + std::to_string(major) + "." + std::to_string(minor) +
         " is below the 8.0 that optune's CUDA kernels need (A100, RTX 30 series and newer)";
}
// The CUDA devices this process can use; empty without the backend, a driver or a GPU.
std::vector<GpuInfo> list_gpus();

// AUTO -> CUDA when the backend is built and the current GPU can run its kernels, else CPU (never throws). CPU and
// CUDA are returned as given.
Device resolve_device(Device d);
// Moves the model to `d` (AUTO resolved first). CUDA without the backend or without a GPU is an optune::Error, never
// a silent fallback. Moving to CPU downloads the weights and AdamW state first. On the CPU, BF16 makes sampling
// and training multiply in bf16 (Model::cpu_bf16); log-probs and scores stay fp32.
void set_device(Model& m, Device d, Precision p = Precision::FP32);
Device model_device(const Model& m);
Precision model_precision(const Model& m);

void sync_to_host(Model& m);          // no-op for a CPU model
void sync_to_device(const Model& m);  // no-op for a CPU model

}  // namespace optune
