// Module entry: info(), setThreads(), the async factories createModel() / loadModel(), and the Model class.
#include <memory>
#include <string>

#include <napi.h>

#include "convert.h"
#include "core/checkpoint.h"
#include "core/model.h"
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
  Napi::Array backends = Napi::Array::New(env, 1);
  backends.Set(uint32_t{0}, "cpu");
  o.Set("backends", backends);
  o.Set("blas", OPTUNE_BLAS_NAME);
  o.Set("threads", current_threads());
  o.Set("devices", Napi::Array::New(env, 0));  // accelerators: none in the CPU engine
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

// createModel(config, seed): a model with transformers-style random init.
static Napi::Value create_model(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    const optune::ModelConfig cfg = to_config(info[0]);
    const uint64_t seed = seed_value(info.Length() > 1 ? info[1] : env.Undefined(), "seed");
    auto out = std::make_shared<std::unique_ptr<optune::Model>>();
    return PromiseTask::start(
        env, "createModel",
        [cfg, seed, out] {
          *out = optune::make_model(cfg);
          optune::init_weights(**out, seed);
        },
        [out](Napi::Env e) -> Napi::Value { return ModelWrap::wrap(e, std::move(*out)); }, nullptr);
  });
}

// loadModel(dir): a transformers-format checkpoint directory (config.json + safetensors).
static Napi::Value load_model(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsString() || info[0].As<Napi::String>().Utf8Value().empty()) {
      throw Napi::TypeError::New(env, "loadModel(dir): dir must be a non-empty string, got " +
                                          (info.Length() < 1 ? std::string("nothing") : describe(info[0])));
    }
    const std::string dir = info[0].As<Napi::String>().Utf8Value();
    auto out = std::make_shared<std::unique_ptr<optune::Model>>();
    return PromiseTask::start(
        env, "loadModel", [dir, out] { *out = optune::load_checkpoint(dir); },
        [out](Napi::Env e) -> Napi::Value { return ModelWrap::wrap(e, std::move(*out)); }, nullptr);
  });
}

static Napi::Object init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New<info_js>(env, "info"));
  exports.Set("setThreads", Napi::Function::New<set_threads_js>(env, "setThreads"));
  exports.Set("createModel", Napi::Function::New<create_model>(env, "createModel"));
  exports.Set("loadModel", Napi::Function::New<load_model>(env, "loadModel"));
  exports.Set("Model", ModelWrap::define(env));
  return exports;
}

}  // namespace optune_addon

// NODE_API_MODULE pastes the name into an identifier, so it needs an unqualified one.
static Napi::Object init_optune(Napi::Env env, Napi::Object exports) { return optune_addon::init(env, exports); }
NODE_API_MODULE(optune, init_optune)
