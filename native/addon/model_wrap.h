// The JS `Model` class. Instances come only from the async factories (createModel, loadModel, clone); every long
// method queues a PromiseTask and returns a Promise. A model runs one operation at a time: a second call while it is
// busy rejects (the TS wrapper queues calls so users never see that).
#pragma once
#include <memory>

#include <napi.h>

#include "core/model.h"
#include "handle.h"

namespace optune_addon {

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  // Defines the class and remembers its constructor for wrap().
  static Napi::Function define(Napi::Env env);
  // A new JS Model owning `m` (main thread only).
  static Napi::Object wrap(Napi::Env env, std::unique_ptr<optune::Model> m);

  explicit ModelWrap(const Napi::CallbackInfo& info);

 private:
  Napi::Value save(const Napi::CallbackInfo& info);
  Napi::Value clone(const Napi::CallbackInfo& info);
  Napi::Value save_optimizer_state(const Napi::CallbackInfo& info);
  Napi::Value load_optimizer_state(const Napi::CallbackInfo& info);
  Napi::Value logprobs(const Napi::CallbackInfo& info);
  Napi::Value logits(const Napi::CallbackInfo& info);
  Napi::Value scores(const Napi::CallbackInfo& info);
  Napi::Value train_step(const Napi::CallbackInfo& info);
  Napi::Value check_training_memory(const Napi::CallbackInfo& info);
  Napi::Value sample(const Napi::CallbackInfo& info);
  Napi::Value enable_lora(const Napi::CallbackInfo& info);
  Napi::Value load_lora_adapter(const Napi::CallbackInfo& info);
  Napi::Value save_lora_adapter(const Napi::CallbackInfo& info);
  Napi::Value fingerprint(const Napi::CallbackInfo& info);
  void dispose(const Napi::CallbackInfo& info);
  Napi::Value get_params(const Napi::CallbackInfo& info);
  Napi::Value set_params(const Napi::CallbackInfo& info);
  Napi::Value config(const Napi::CallbackInfo& info);
  Napi::Value num_params(const Napi::CallbackInfo& info);
  Napi::Value device(const Napi::CallbackInfo& info);
  Napi::Value precision(const Napi::CallbackInfo& info);
  Napi::Value disposed(const Napi::CallbackInfo& info);
  Napi::Value busy_op(const Napi::CallbackInfo& info);


  HandlePtr h_;
};

}  // namespace optune_addon
