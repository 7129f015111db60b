// Runs one engine call off the main thread (a libuv worker hands it to the engine thread, threads.h) and settles a
// Promise with its result. The work function must not
// touch JS values; the resolve function builds the JS result on the main thread. Any C++ exception from the work
// (optune::Error on bad input, std::bad_alloc, ...) rejects the Promise with its message instead of aborting Node.
#pragma once
#include <functional>
#include <new>
#include <string>
#include <utility>

#include <napi.h>

#include "threads.h"

namespace optune_addon {

class PromiseTask : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  using Resolve = std::function<Napi::Value(Napi::Env)>;
  using Done = std::function<void()>;

  // `done` runs on the main thread before the Promise settles, success or failure (releases busy models).
  PromiseTask(Napi::Env env, const char* name, Work work, Resolve resolve, Done done)
      : Napi::AsyncWorker(env, name),
        deferred_(Napi::Promise::Deferred::New(env)),
        name_(name),
        work_(std::move(work)),
        resolve_(std::move(resolve)),
        done_(std::move(done)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  // Queues the task and returns its Promise. The task deletes itself when it completes.
  static Napi::Value start(Napi::Env env, const char* name, Work work, Resolve resolve, Done done) {
    PromiseTask* task = nullptr;
    try {
      task = new PromiseTask(env, name, std::move(work), std::move(resolve), done);
      Napi::Promise p = task->promise();
      task->Queue();
      return p;
    } catch (...) {
      // Not queued: nothing will run `done`, so release the models here.
      delete task;
      if (done) done();
      throw;
    }
  }

 protected:
  void Execute() override {
    try {
      run_engine_call(work_);
    } catch (const std::bad_alloc&) {
      fail("out of memory during " + name_);
    } catch (const std::exception& e) {
      fail(e.what());
    } catch (...) {
      fail("unknown native error during " + name_);
    }
  }

  // Settling runs JS. When the call ends while its environment shuts down (a worker thread terminated, or one
  // calling process.exit, with the call in flight), JS can no longer run and every step here throws: there is no
  // Promise left to settle then, so that is swallowed. An exception escaping to node-addon-api's callback wrapper
  // would be rethrown there and abort the whole process, main thread included.
  void OnOK() override {
    Napi::Env env = Env();
    if (done_) done_();
    try {
      try {
        deferred_.Resolve(resolve_(env));
      } catch (const Napi::Error& e) {
        deferred_.Reject(e.Value());
      } catch (const std::exception& e) {
        deferred_.Reject(Napi::Error::New(env, name_ + ": " + e.what()).Value());
      }
    } catch (...) {
    }
  }

  void OnError(const Napi::Error& e) override {
    if (done_) done_();
    try {
      deferred_.Reject(e.Value());
    } catch (...) {
    }
  }

 private:
  // The engine's message is passed on unchanged. SetError with an empty message would count as success.
  void fail(const std::string& what) { SetError(what.empty() ? "unknown native error during " + name_ : what); }

  Napi::Promise::Deferred deferred_;
  std::string name_;
  Work work_;
  Resolve resolve_;
  Done done_;
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
