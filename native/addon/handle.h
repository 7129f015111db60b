// The native side of one JS Model: the engine model plus the busy/disposed state that keeps two operations from
// touching it at once. Only the JS main thread reads or writes busy_op and disposed (acquire before a worker is
// queued, release when it completes), so no locking is needed. Workers hold a shared_ptr, so a model that is
// disposed or garbage-collected mid-operation is freed only after that operation ends.
#pragma once
#include <memory>
#include <string>

#include <napi.h>

#include "core/model.h"

namespace optune_addon {

struct ModelHandle {
  std::unique_ptr<optune::Model> model;
  const char* busy_op = nullptr;  // name of the running operation, nullptr when idle
  bool disposed = false;
};

using HandlePtr = std::shared_ptr<ModelHandle>;

// Throws a JS Error when the model was disposed. `what` names the model in the message ("model", "refModel").
inline void check_alive(Napi::Env env, const ModelHandle& h, const char* what = "model") {
  if (h.disposed || !h.model) {
    throw Napi::Error::New(env, std::string(what) + " has been disposed; create or load a new one");
  }
}

// Marks the model busy with `op`, or throws a JS Error when it is disposed or already busy.
inline void acquire(Napi::Env env, ModelHandle& h, const char* op, const char* what = "model") {
  check_alive(env, h, what);
  if (h.busy_op != nullptr) {
    throw Napi::Error::New(env, std::string(what) + " is busy with " + h.busy_op + "; await the previous call");
  }
  h.busy_op = op;
}

// Ends the running operation; a dispose() that arrived meanwhile frees the weights now.
inline void release(ModelHandle& h) {
  h.busy_op = nullptr;
  if (h.disposed) h.model.reset();
}

}  // namespace optune_addon
