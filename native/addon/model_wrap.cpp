#include "model_wrap.h"

#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "convert.h"
#include "core/checkpoint.h"
#include "core/device.h"
#include "core/engine.h"
#include "core/error.h"
#include "core/lora.h"
#include "task.h"

namespace optune_addon {

// Per-environment state (one per Node main thread or worker_thread that loads the addon).
struct AddonData {
  Napi::FunctionReference model_ctor;
};

static AddonData& addon_data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (d == nullptr) {
    d = new AddonData();
    env.SetInstanceData(d);  // freed by Node when the environment exits
  }
  return *d;
}

Napi::Function ModelWrap::define(Napi::Env env) {
  Napi::Function ctor = DefineClass(
      env, "Model",
      {
          InstanceMethod<&ModelWrap::save>("save"),
          InstanceMethod<&ModelWrap::clone>("clone"),
          InstanceMethod<&ModelWrap::save_optimizer_state>("saveOptimizerState"),
          InstanceMethod<&ModelWrap::load_optimizer_state>("loadOptimizerState"),
          InstanceMethod<&ModelWrap::logprobs>("logprobs"),
          InstanceMethod<&ModelWrap::logits>("logits"),
          InstanceMethod<&ModelWrap::scores>("scores"),
          InstanceMethod<&ModelWrap::train_step>("trainStep"),
          InstanceMethod<&ModelWrap::check_training_memory>("checkTrainingMemory"),
          InstanceMethod<&ModelWrap::sample>("sample"),
          InstanceMethod<&ModelWrap::enable_lora>("enableLora"),
          InstanceMethod<&ModelWrap::load_lora_adapter>("loadLoraAdapter"),
          InstanceMethod<&ModelWrap::save_lora_adapter>("saveLoraAdapter"),
          InstanceMethod<&ModelWrap::fingerprint>("fingerprint"),
          InstanceMethod<&ModelWrap::dispose>("dispose"),
          InstanceMethod<&ModelWrap::get_params>("getParams"),
          InstanceMethod<&ModelWrap::set_params>("setParams"),
          InstanceAccessor<&ModelWrap::config>("config"),
          InstanceAccessor<&ModelWrap::num_params>("numParams"),
          InstanceAccessor<&ModelWrap::device>("device"),
          InstanceAccessor<&ModelWrap::precision>("precision"),
          InstanceAccessor<&ModelWrap::disposed>("disposed"),
          InstanceAccessor<&ModelWrap::busy_op>("busyWith"),
      });
  addon_data(env).model_ctor = Napi::Persistent(ctor);
  return ctor;
}

Napi::Object ModelWrap::wrap(Napi::Env env, std::unique_ptr<optune::Model> m) {
  auto h = std::make_shared<ModelHandle>();
  h->model = std::move(m);
  // An External cannot be made from JS, so `new Model(...)` from user code is refused by the constructor.
  return addon_data(env).model_ctor.New({Napi::External<HandlePtr>::New(env, &h)});
}

ModelWrap::ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "Model cannot be constructed directly; use createModel() or loadModel()");
  }
  h_ = *info[0].As<Napi::External<HandlePtr>>().Data();
}

// The optional `base` flag of logprobs and sample: run a LoRA model's base alone (its adapters off).
static bool base_arg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return false;
  if (!info[i].IsBoolean()) throw Napi::TypeError::New(info.Env(), "base must be a boolean, got " + describe(info[i]));
  return info[i].As<Napi::Boolean>().Value();
}

static std::string string_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info.Length() <= i || !info[i].IsString() || info[i].As<Napi::String>().Utf8Value().empty()) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a non-empty string, got " +
                                               (info.Length() <= i ? "undefined" : describe(info[i])));
  }
  return info[i].As<Napi::String>().Utf8Value();
}

// ---- checkpoints and copies -----------------------------------------------------------------------------------
// A model on a GPU keeps its live weights and AdamW moments there (core/device.h): every read of the host copies
// (save, saveOptimizerState, clone, getParams) syncs them down first, every write (loadOptimizerState, setParams)
// uploads them after.

Napi::Value ModelWrap::save(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    std::string dir = string_arg(info, 0, "dir");
    acquire(env, *h_, "save");
    HandlePtr h = h_;
    return PromiseTask::start(
        env, "save",
        [h, dir] {
          optune::sync_to_host(*h->model);
          optune::save_checkpoint(*h->model, dir);
        },
        [](Napi::Env e) { return e.Undefined(); }, [h] { release(*h); });
  });
}

Napi::Value ModelWrap::save_optimizer_state(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    std::string dir = string_arg(info, 0, "dir");
    acquire(env, *h_, "saveOptimizerState");
    HandlePtr h = h_;
    return PromiseTask::start(
        env, "saveOptimizerState",
        [h, dir] {
          optune::sync_to_host(*h->model);
          optune::save_optimizer_state(*h->model, dir);
        },
        [](Napi::Env e) { return e.Undefined(); }, [h] { release(*h); });
  });
}

Napi::Value ModelWrap::load_optimizer_state(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    std::string dir = string_arg(info, 0, "dir");
    acquire(env, *h_, "loadOptimizerState");
    HandlePtr h = h_;
    return PromiseTask::start(
        env, "loadOptimizerState",
        [h, dir] {
          optune::sync_to_host(*h->model);  // the weights on the host must be current before the upload below
          optune::load_optimizer_state(*h->model, dir);
          optune::sync_to_device(*h->model);
        },
        [](Napi::Env e) { return e.Undefined(); }, [h] { release(*h); });
  });
}

Napi::Value ModelWrap::clone(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    acquire(env, *h_, "clone");
    HandlePtr h = h_;
    auto out = std::make_shared<std::unique_ptr<optune::Model>>();
    return PromiseTask::start(
        env, "clone",
        [h, out] {
          optune::Model& src = *h->model;
          optune::sync_to_host(src);
          *out = optune::clone_model(src);
          // the copy lives where the original does (a reference model next to its policy)
          if (src.device) optune::set_device(**out, optune::model_device(src), optune::model_precision(src));
        },
        [out](Napi::Env e) -> Napi::Value { return wrap(e, std::move(*out)); }, [h] { release(*h); });
  });
}

// ---- forward passes -------------------------------------------------------------------------------------------

Napi::Value ModelWrap::logprobs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    auto batch = std::make_shared<optune::Batch>(to_batch(info[0], "batch"));
    const bool base = base_arg(info, 1);
    acquire(env, *h_, "logprobs");
    HandlePtr h = h_;
    auto out = std::make_shared<optune::LogprobResult>();
    return PromiseTask::start(
        env, "logprobs",
        [h, batch, out, base] {
          const optune::AdaptersOff off(*h->model, base);
          *out = optune::compute_logprobs(*h->model, *batch);
        },
        [out](Napi::Env e) -> Napi::Value {
          Napi::Object o = Napi::Object::New(e);
          o.Set("tokenLogps", to_js(e, out->token_logps));
          o.Set("seqLogps", to_js(e, out->seq_logps));
          return o;
        },
        [h] { release(*h); });
  });
}

Napi::Value ModelWrap::logits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    auto batch = std::make_shared<optune::Batch>(to_batch(info[0], "batch"));
    acquire(env, *h_, "logits");
    HandlePtr h = h_;
    auto out = std::make_shared<std::vector<float>>();
    return PromiseTask::start(
        env, "logits", [h, batch, out] { *out = optune::compute_logits(*h->model, *batch); },
        [out](Napi::Env e) -> Napi::Value { return to_js(e, *out); }, [h] { release(*h); });
  });
}

Napi::Value ModelWrap::scores(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    auto batch = std::make_shared<optune::Batch>(to_batch(info[0], "batch"));
    acquire(env, *h_, "scores");
    HandlePtr h = h_;
    auto out = std::make_shared<std::vector<float>>();
    return PromiseTask::start(
        env, "scores", [h, batch, out] { *out = optune::compute_scores(*h->model, *batch); },
        [out](Napi::Env e) -> Napi::Value { return to_js(e, *out); }, [h] { release(*h); });
  });
}

// ---- training and sampling ------------------------------------------------------------------------------------

Napi::Value ModelWrap::train_step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    Napi::Object req = expect_object(info[0], "request");

    // Resolve refModel to its native handle before anything is marked busy.
    HandlePtr ref;
    Napi::Value ref_value = req.Get("refModel");
    if (!ref_value.IsUndefined()) {
      Napi::Function ctor = addon_data(env).model_ctor.Value();
      if (!ref_value.IsObject() || !ref_value.As<Napi::Object>().InstanceOf(ctor)) {
        throw Napi::TypeError::New(env, "request.refModel must be a Model, got " + describe(ref_value));
      }
      ref = ModelWrap::Unwrap(ref_value.As<Napi::Object>())->h_;
      if (ref == h_) {
        throw Napi::Error::New(env, "request.refModel must be a different model than the one trained; use clone()");
      }
      check_alive(env, *ref, "refModel");
    }
    auto request = std::make_shared<optune::TrainRequest>(to_train_request(req, ref != nullptr));

    acquire(env, *h_, "trainStep");
    if (ref) {
      try {
        acquire(env, *ref, "trainStep", "refModel");
      } catch (...) {
        release(*h_);
        throw;
      }
    }
    HandlePtr h = h_;
    auto out = std::make_shared<optune::TrainStats>();
    return PromiseTask::start(
        env, "trainStep",
        [h, ref, request, out] {
          request->ref_model = ref ? ref->model.get() : nullptr;
          *out = optune::train_step(*h->model, *request);
        },
        [out](Napi::Env e) -> Napi::Value { return stats_to_js(e, *out); },
        [h, ref] {
          release(*h);
          if (ref) release(*ref);
        });
  });
}

Napi::Value ModelWrap::check_training_memory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    acquire(env, *h_, "checkTrainingMemory");
    HandlePtr h = h_;
    return PromiseTask::start(
        env, "checkTrainingMemory", [h] { optune::check_training_memory(*h->model, true); },
        [](Napi::Env e) { return e.Undefined(); }, [h] { release(*h); });
  });
}

Napi::Value ModelWrap::sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    auto request = std::make_shared<optune::SampleRequest>(to_sample_request(info[0]));
    const bool base = base_arg(info, 1);
    acquire(env, *h_, "sample");
    HandlePtr h = h_;
    auto out = std::make_shared<optune::SampleResult>();
    return PromiseTask::start(
        env, "sample",
        [h, request, out, base] {
          const optune::AdaptersOff off(*h->model, base);
          *out = optune::sample(*h->model, *request);
        },
        [out](Napi::Env e) -> Napi::Value { return sample_to_js(e, *out); }, [h] { release(*h); });
  });
}

// ---- LoRA adapters (core/lora.h) ------------------------------------------------------------------------------

// options: { rank, alpha, targets: string[], seed }
Napi::Value ModelWrap::enable_lora(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    const Napi::Object o = expect_object(info[0], "LoRA options");
    optune::LoraConfig cfg;
    const Napi::Value rank = o.Get("rank"), alpha = o.Get("alpha"), targets = o.Get("targets");
    if (!rank.IsNumber() || !alpha.IsNumber() || !targets.IsArray())
      throw Napi::TypeError::New(env, "LoRA options need rank (number), alpha (number) and targets (string[])");
    const double r = rank.As<Napi::Number>().DoubleValue();
    if (!(std::isfinite(r) && r == std::floor(r) && r >= 1 && r <= 4096))  // before the cast to int
      throw Napi::TypeError::New(env, "LoRA rank must be an integer in [1, 4096], got " + rank.ToString().Utf8Value());
    cfg.rank = static_cast<int>(r);
    cfg.alpha = alpha.As<Napi::Number>().FloatValue();
    cfg.targets.clear();
    const Napi::Array list = targets.As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); i++) {
      const Napi::Value t = list.Get(i);
      if (!t.IsString()) throw Napi::TypeError::New(env, "LoRA targets must be strings, got " + describe(t));
      cfg.targets.push_back(t.As<Napi::String>().Utf8Value());
    }
    const uint64_t seed = seed_value(o.Get("seed"), "LoRA seed");
    acquire(env, *h_, "enableLora");
    HandlePtr h = h_;
    // Resolves with what was made: { rank, alpha, modules (the targeted module names), trainableParams }.
    auto made = std::make_shared<std::shared_ptr<const optune::Lora>>();
    return PromiseTask::start(
        env, "enableLora",
        [h, cfg, seed, made] {
          optune::sync_to_host(*h->model);  // a GPU model's optimizer state decides whether adapters may be added
          optune::enable_lora(*h->model, cfg, seed);
          optune::sync_to_device(*h->model);  // and its device copy gets them
          *made = h->model->lora;
        },
        [made](Napi::Env e) -> Napi::Value {
          const optune::Lora& L = **made;
          Napi::Object o = Napi::Object::New(e);
          o.Set("rank", L.cfg.rank);
          o.Set("alpha", L.cfg.alpha);
          Napi::Array modules = Napi::Array::New(e, L.targets.size());
          for (size_t i = 0; i < L.targets.size(); i++) modules.Set(static_cast<uint32_t>(i), L.targets[i].module);
          o.Set("modules", modules);
          o.Set("trainableParams", static_cast<double>(L.params.size()));
          return o;
        },
        [h] { release(*h); });
  });
}

Napi::Value ModelWrap::load_lora_adapter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    std::string dir = string_arg(info, 0, "dir");
    acquire(env, *h_, "loadLoraAdapter");
    HandlePtr h = h_;
    return PromiseTask::start(
        env, "loadLoraAdapter",
        [h, dir] {
          optune::sync_to_host(*h->model);
          optune::load_lora_adapter(*h->model, dir);
          optune::sync_to_device(*h->model);
        },
        [](Napi::Env e) { return e.Undefined(); }, [h] { release(*h); });
  });
}

Napi::Value ModelWrap::save_lora_adapter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    std::string dir = string_arg(info, 0, "dir");
    acquire(env, *h_, "saveLoraAdapter");
    HandlePtr h = h_;
    return PromiseTask::start(
        env, "saveLoraAdapter",
        [h, dir] {
          optune::sync_to_host(*h->model);
          optune::save_lora_adapter(*h->model, dir);
        },
        [](Napi::Env e) { return e.Undefined(); }, [h] { release(*h); });
  });
}

// A hash of the weights (core/model.h weights_fingerprint): reads every weight, so on the engine thread.
Napi::Value ModelWrap::fingerprint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    acquire(env, *h_, "fingerprint");
    HandlePtr h = h_;
    auto out = std::make_shared<std::string>();
    return PromiseTask::start(
        env, "fingerprint",
        [h, out] {
          optune::sync_to_host(*h->model);
          *out = optune::weights_fingerprint(*h->model);
        },
        [out](Napi::Env e) -> Napi::Value { return Napi::String::New(e, *out); }, [h] { release(*h); });
  });
}

// ---- lifetime and synchronous accessors -----------------------------------------------------------------------

void ModelWrap::dispose(const Napi::CallbackInfo&) {
  if (h_->disposed) return;
  h_->disposed = true;
  // A running operation keeps using the weights; release() frees them when it ends.
  if (h_->busy_op == nullptr) h_->model.reset();
}

// getParams and setParams move every weight (hundreds of MB for GPT-2 124M, and a device copy on a GPU): on the
// engine thread, so the event loop only hands over the array.
Napi::Value ModelWrap::get_params(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    acquire(env, *h_, "getParams");
    HandlePtr h = h_;
    auto out = std::make_shared<std::vector<float>>();
    return PromiseTask::start(
        env, "getParams",
        [h, out] {
          optune::sync_to_host(*h->model);
          *out = h->model->params;
        },
        [out](Napi::Env e) -> Napi::Value { return to_js_owned(e, std::move(*out)); }, [h] { release(*h); });
  });
}

// params: a Float32Array nobody touches until the Promise settles (the TS wrapper passes its own copy); the engine
// thread reads it in place. Non-finite values are refused there, before anything changes.
Napi::Value ModelWrap::set_params(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_call(env, [&]() -> Napi::Value {
    check_alive(env, *h_);
    auto array = float32_array_ref(info[0], "params");
    const size_t n = array.ElementLength();
    if (n != h_->model->params.size()) {
      throw Napi::RangeError::New(env, "params has " + std::to_string(n) + " values but the model has " +
                                           std::to_string(h_->model->params.size()));
    }
    acquire(env, *h_, "setParams");
    HandlePtr h = h_;
    const float* data = array.Data();
    // Keeps the array alive while the engine reads it; freed in `done` on the main thread (never by a destructor
    // elsewhere: the task may end on the engine thread when its environment has gone).
    auto keep = std::make_shared<Napi::Reference<Napi::Float32Array>>(Napi::Persistent(array));
    keep->SuppressDestruct();
    return PromiseTask::start(
        env, "setParams",
        [h, data, n] {
          const std::string bad = first_nonfinite(data, n, "params");
          if (!bad.empty()) throw optune::Error(bad);
          optune::Model& m = *h->model;
          optune::sync_to_host(m);  // the device's AdamW moments come down first, so the upload below keeps them
          m.params.assign(data, data + n);
          optune::sync_to_device(m);
        },
        [](Napi::Env e) { return e.Undefined(); },
        [h, keep] {
          release(*h);
          keep->Reset();
        });
  });
}

Napi::Value ModelWrap::config(const Napi::CallbackInfo& info) {
  check_alive(info.Env(), *h_);
  return config_to_js(info.Env(), h_->model->cfg);
}

Napi::Value ModelWrap::num_params(const Napi::CallbackInfo& info) {
  check_alive(info.Env(), *h_);
  return Napi::Number::New(info.Env(), static_cast<double>(h_->model->num_params()));
}

// "cpu" | "cuda", and "fp32" | "bf16" (a CPU model computes in fp32).
Napi::Value ModelWrap::device(const Napi::CallbackInfo& info) {
  check_alive(info.Env(), *h_);
  return Napi::String::New(info.Env(), optune::device_name(optune::model_device(*h_->model)));
}

Napi::Value ModelWrap::precision(const Napi::CallbackInfo& info) {
  check_alive(info.Env(), *h_);
  return Napi::String::New(info.Env(), optune::precision_name(optune::model_precision(*h_->model)));
}

Napi::Value ModelWrap::disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), h_->disposed);
}

Napi::Value ModelWrap::busy_op(const Napi::CallbackInfo& info) {
  if (h_->busy_op == nullptr) return info.Env().Null();
  return Napi::String::New(info.Env(), h_->busy_op);
}

}  // namespace optune_addon
