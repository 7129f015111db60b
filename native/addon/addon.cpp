// Module entry: info(), setThreads(), the async factories createModel() / loadModel(), and the Model class.
#include <memory>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

#include <napi.h>

#include "convert.h"
#include "core/checkpoint.h"
#include "core/device.h"
#include "core/model.h"
#include "cpu/gemm.h"
#include "model_wrap.h"
#include "task.h"
#include "threads.h"

#ifndef OPTUNE_VERSION
#error "OPTUNE_VERSION must be defined by the build (the package.json version)"
#endif

namespace optune_addon {

static Napi::Value info_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", OPTUNE_VERSION);
  Napi::Array backends = Napi::Array::New(env);
  backends.Set(uint32_t{0}, "cpu");
  if (optune::cuda_built()) backends.Set(uint32_t{1}, "cuda");
  o.Set("backends", backends);
  // the CUDA architectures the backend holds code for ("80,90"; null without it)
  o.Set("cudaArchs", optune::cuda_built() ? Napi::Value(Napi::String::New(env, optune::cuda_archs())) : env.Null());
  o.Set("blas", OPTUNE_BLAS_NAME);
  // CPU precision 'bf16' runs on AVX512-BF16 instructions (true) or a portable loop, slower than fp32 (false)
  o.Set("bf16Native", optune::cpu::bf16_native());
  o.Set("threads", current_threads());
  // The GPUs this process sees (empty without the backend, a driver or a GPU); `unusable` says why one cannot run
  // the kernels (null when nothing was found: other devices than the current one get the compute capability check
  // only); freeMemory is known for the current device only (null for the others)
  const std::vector<optune::GpuInfo> gpus = optune::list_gpus();
  Napi::Array devices = Napi::Array::New(env, gpus.size());
  for (size_t i = 0; i < gpus.size(); i++) {
    Napi::Object g = Napi::Object::New(env);
    g.Set("index", gpus[i].index);
    g.Set("name", gpus[i].name);
    g.Set("computeCapability", std::to_string(gpus[i].major) + "." + std::to_string(gpus[i].minor));
    g.Set("totalMemory", static_cast<double>(gpus[i].total_bytes));
    const double free_bytes = static_cast<double>(gpus[i].free_bytes);
    g.Set("freeMemory", gpus[i].free_known ? Napi::Value(Napi::Number::New(env, free_bytes)) : env.Null());
    g.Set("unusable", gpus[i].unusable.empty() ? env.Null() : Napi::Value(Napi::String::New(env, gpus[i].unusable)));
    devices.Set(static_cast<uint32_t>(i), g);
  }
  o.Set("devices", devices);
  return o;
}

static void set_threads_js(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double n = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  if (!(n >= 1 && n <= 4096 && n == static_cast<int>(n))) {
    throw Napi::RangeError::New(env, "setThreads(n): n must be an integer in [1, 4096], got " +
                                         (info.Length() > 0 ? info[0].ToString().Utf8Value() : "nothing"));
  }
  set_threads(static_cast<int>(n));
}

// createModel(config, seed, options?): a model with transformers-style random init, on options.device.
static Napi::Value create_model(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    const optune::ModelConfig cfg = to_config(info[0]);
    const uint64_t seed = seed_value(info.Length() > 1 ? info[1] : env.Undefined(), "seed");
    const DeviceOptions dev = to_device_options(info.Length() > 2 ? info[2] : env.Undefined(), "options");
    auto out = std::make_shared<std::unique_ptr<optune::Model>>();
    return PromiseTask::start(
        env, "createModel",
        [cfg, seed, dev, out] {
          *out = optune::make_model(cfg);
          optune::init_weights(**out, seed);
          optune::set_device(**out, dev.device, dev.precision);
        },
        [out](Napi::Env e) -> Napi::Value { return ModelWrap::wrap(e, std::move(*out)); }, nullptr);
  });
}

// The first argument of `call` (e.g. "loadModel(dir)"): a non-empty directory path.
static std::string dir_argument(const Napi::CallbackInfo& info, const char* call) {
  if (info.Length() < 1 || !info[0].IsString() || info[0].As<Napi::String>().Utf8Value().empty()) {
    throw Napi::TypeError::New(info.Env(), std::string(call) + ": dir must be a non-empty string, got " +
                                               (info.Length() < 1 ? std::string("nothing") : describe(info[0])));
  }
  return info[0].As<Napi::String>().Utf8Value();
}

// loadModel(dir, options?): a transformers-format checkpoint directory (config.json + safetensors), on
// options.device.
static Napi::Value load_model(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    const std::string dir = dir_argument(info, "loadModel(dir)");
    const DeviceOptions dev = to_device_options(info.Length() > 1 ? info[1] : env.Undefined(), "options");
    auto out = std::make_shared<std::unique_ptr<optune::Model>>();
    return PromiseTask::start(
        env, "loadModel",
        [dir, dev, out] {
          *out = optune::load_checkpoint(dir);
          optune::set_device(**out, dev.device, dev.precision);
        },
        [out](Napi::Env e) -> Napi::Value { return ModelWrap::wrap(e, std::move(*out)); }, nullptr);
  });
}

// readModelConfig(dir): the directory's config.json as loadModel reads it (a multimodal Gemma 3: its language
// model), without the weights.
static Napi::Value read_model_config(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    const std::string dir = dir_argument(info, "readModelConfig(dir)");
    auto out = std::make_shared<optune::ModelConfig>();
    return PromiseTask::start(
        env, "readModelConfig", [dir, out] { *out = optune::read_model_config(dir); },
        [out](Napi::Env e) -> Napi::Value { return config_to_js(e, *out); }, nullptr);
  });
}

// readLoraConfig(dir): a PEFT adapter directory's adapter_config.json as loadLoraAdapter accepts it:
// { rank, alpha, targets } (what enableLora needs before the adapters can be loaded).
static Napi::Value read_lora_config(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    const std::string dir = dir_argument(info, "readLoraConfig(dir)");
    auto out = std::make_shared<optune::LoraConfig>();
    return PromiseTask::start(
        env, "readLoraConfig", [dir, out] { *out = optune::read_lora_config(dir); },
        [out](Napi::Env e) -> Napi::Value {
          Napi::Object o = Napi::Object::New(e);
          o.Set("rank", out->rank);
          o.Set("alpha", out->alpha);
          Napi::Array targets = Napi::Array::New(e, out->targets.size());
          for (size_t i = 0; i < out->targets.size(); i++) targets.Set(static_cast<uint32_t>(i), out->targets[i]);
          o.Set("targets", targets);
          return o;
        },
        nullptr);
  });
}

// Keeps this library, and the OpenMP runtime it loaded, mapped until the process ends. Node unloads an addon when
// the last environment that loaded it ends: a worker thread that required optune and exited would unmap the code
// the engine thread and OpenMP's threads (process-wide, never stopped) are waiting in, and the next wake-up would
// crash the whole process.
static void pin_in_memory() {
#if defined(__unix__) || defined(__APPLE__)
  Dl_info self;
  if (dladdr(reinterpret_cast<void*>(&pin_in_memory), &self) != 0 && self.dli_fname != nullptr)
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);  // the handle is kept on purpose
#endif
}

static Napi::Object init(Napi::Env env, Napi::Object exports) {
  pin_in_memory();
  exports.Set("info", Napi::Function::New<info_js>(env, "info"));
  exports.Set("setThreads", Napi::Function::New<set_threads_js>(env, "setThreads"));
  exports.Set("createModel", Napi::Function::New<create_model>(env, "createModel"));
  exports.Set("loadModel", Napi::Function::New<load_model>(env, "loadModel"));
  exports.Set("readModelConfig", Napi::Function::New<read_model_config>(env, "readModelConfig"));
  exports.Set("readLoraConfig", Napi::Function::New<read_lora_config>(env, "readLoraConfig"));
  exports.Set("Model", ModelWrap::define(env));
  return exports;
}

}  // namespace optune_addon

// NODE_API_MODULE pastes the name into an identifier, so it needs an unqualified one.
static Napi::Object init_optune(Napi::Env env, Napi::Object exports) { return optune_addon::init(env, exports); }
NODE_API_MODULE(optune, init_optune)
