// Runs one engine call off the main thread, on the engine thread (threads.h), and settles a Promise with its result.
// The work function must not touch JS values; the resolve function builds the JS result on the main thread. Any C++
// exception from the work (optune::Error on bad input, std::bad_alloc, ...) rejects the Promise with its message
// instead of aborting Node. The result comes back to the main thread through a thread-safe function, so no libuv
// worker waits for the engine meanwhile: with calls on several models in flight, they would fill libuv's pool (4
// threads) and stall file reads, DNS lookups (an HTTP reward's) and the like until the engine got to them.
#pragma once
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#include <napi.h>

#include "threads.h"

namespace optune_addon {

class PromiseTask {
 public:
  using Work = std::function<void()>;
  using Resolve = std::function<Napi::Value(Napi::Env)>;
  using Done = std::function<void()>;

  // Queues the call on the engine thread and returns its Promise. `done` runs on the main thread before the
  // Promise settles, success or failure (releases busy models). The task deletes itself once settled.
  static Napi::Value start(Napi::Env env, const char* name, Work work, Resolve resolve, Done done) {
    std::unique_ptr<PromiseTask> task;
    const Done release_models = done;  // for a failure before the task holds `done`
    try {
      task.reset(new PromiseTask(env, name, std::move(work), std::move(resolve), std::move(done)));
      // Keeps the event loop alive until the result has come back, as a pending libuv request would.
      task->back_ = Back::New(env, name, 0, 1);
      // Added after the thread-safe function, so that it runs before the function's own cleanup (cleanup hooks
      // run newest first) and the engine thread never calls a function that teardown has freed.
      // The hook holds the gate too: it may run after the task is gone. Freed by the hook, or by settle's removal.
      task->hook_arg_ = new std::shared_ptr<Gate>(task->gate_);
      napi_add_env_cleanup_hook(env, &PromiseTask::close_gate, task->hook_arg_);
    } catch (...) {
      // Not queued: nothing will run `done`, so release the models here; a thread-safe function already made
      // would keep the event loop alive for good.
      if (task && static_cast<napi_threadsafe_function>(task->back_) != nullptr) task->back_.Release();
      if (release_models) release_models();
      throw;
    }
    Napi::Promise promise = task->deferred_.Promise();
    PromiseTask* t = task.release();
    submit_engine_call(t->work_, [t](std::exception_ptr error) {
      t->error_ = message_of(error, t->name_);
      t->failed_ = error != nullptr;
      const std::shared_ptr<Gate> gate = t->gate_;  // t may be settled and deleted once queued
      std::lock_guard<std::mutex> lock(gate->mu);
      Back back = t->back_;
      // Closed, or napi_closing: the environment is shutting down (a worker thread ending); settle will not run.
      const bool queued = gate->open && back.BlockingCall(t) == napi_ok;
      if (gate->open) back.Release();
      if (!queued) delete t;
    });
    return promise;
  }

 private:
  PromiseTask(Napi::Env env, const char* name, Work work, Resolve resolve, Done done)
      : deferred_(Napi::Promise::Deferred::New(env)),
        name_(name),
        work_(std::move(work)),
        resolve_(std::move(resolve)),
        done_(std::move(done)) {}

  // On the main thread, with the call's result. Settling runs JS: when the environment shuts down meanwhile (env
  // null, or JS that can no longer run and throws), there is no Promise left to settle and that is swallowed. An
  // exception escaping here would abort the whole process, main thread included.
  static void settle(Napi::Env env, Napi::Function, std::nullptr_t*, PromiseTask* task) {
    std::unique_ptr<PromiseTask> owner(task);
    if (static_cast<napi_env>(env) == nullptr) return;  // the function torn down with the environment
    napi_remove_env_cleanup_hook(env, &PromiseTask::close_gate, task->hook_arg_);
    delete task->hook_arg_;
    if (task->done_) task->done_();
    try {
      try {
        if (task->failed_) {
          task->deferred_.Reject(Napi::Error::New(env, task->error_).Value());
        } else {
          task->deferred_.Resolve(task->resolve_(env));
        }
      } catch (const Napi::Error& e) {
        task->deferred_.Reject(e.Value());
      } catch (const std::exception& e) {
        task->deferred_.Reject(Napi::Error::New(env, task->name_ + ": " + e.what()).Value());
      }
    } catch (...) {
    }
  }

  // The engine's message is passed on unchanged (an empty one is named instead).
  static std::string message_of(std::exception_ptr error, const std::string& name) {
    if (!error) return "";
    try {
      std::rethrow_exception(error);
    } catch (const std::bad_alloc&) {
      return "out of memory during " + name;
    } catch (const std::exception& e) {
      return e.what()[0] != '\0' ? e.what() : "unknown native error during " + name;
    } catch (...) {
      return "unknown native error during " + name;
    }
  }

  using Back = Napi::TypedThreadSafeFunction<std::nullptr_t, PromiseTask, &PromiseTask::settle>;

  // Whether the thread-safe function may still be called: closed by the environment's teardown.
  struct Gate {
    std::mutex mu;
    bool open = true;
  };
  static void close_gate(void* arg) {
    std::unique_ptr<std::shared_ptr<Gate>> gate(static_cast<std::shared_ptr<Gate>*>(arg));
    std::lock_guard<std::mutex> lock((*gate)->mu);
    (*gate)->open = false;
  }

  Napi::Promise::Deferred deferred_;
  std::string name_;
  Work work_;
  Resolve resolve_;
  Done done_;
  Back back_;
  std::shared_ptr<Gate> gate_ = std::make_shared<Gate>();
  std::shared_ptr<Gate>* hook_arg_ = nullptr;  // the cleanup hook's argument (see start)
  std::string error_;  // set on the engine thread, read on the main thread after the hand-over
  bool failed_ = false;
};

// Runs the main-thread part of a Promise-returning method. An error thrown there (bad arguments, a busy or disposed
// model) becomes a rejected Promise too, so JS callers see every failure the same way.
template <typename Body>
Napi::Value promise_call(Napi::Env env, Body&& body) {
  Napi::Value error;
  try {
    return body();
  } catch (const Napi::Error& e) {
    error = e.Value();
  } catch (const std::exception& e) {
    error = Napi::Error::New(env, e.what()).Value();
  }
  auto deferred = Napi::Promise::Deferred::New(env);
  deferred.Reject(error);
  return deferred.Promise();
}

}  // namespace optune_addon
