#include "threads.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace optune_addon {

static std::atomic<int> g_threads{0};  // 0: not set, keep OpenMP's default (OMP_NUM_THREADS or all cores)

void set_threads(int n) { g_threads.store(n); }

int current_threads() {
  const int n = g_threads.load();
  if (n > 0) return n;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

void apply_thread_setting() {
#ifdef _OPENMP
  const int n = g_threads.load();
  if (n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
#endif
}

// A queue of jobs and the one thread that runs them, for the life of the process (never destroyed: a joinable
// std::thread destroyed at exit would terminate the process).
class EngineThread {
 public:
  EngineThread() : thread_([this] { loop(); }) {}

  void submit(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();  // never throws: submit_engine_call's wrapper catches everything
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::thread thread_;  // last: started once the queue exists
};

EngineThread& engine_thread() {
  static EngineThread* t = new EngineThread();
  return *t;
}

}  // namespace

void submit_engine_call(const std::function<void()>& call, std::function<void(std::exception_ptr)> then) {
  engine_thread().submit([&call, then = std::move(then)] {
    std::exception_ptr error;
    try {
      apply_thread_setting();
      call();
    } catch (...) {
      error = std::current_exception();
    }
    then(error);
  });
}

}  // namespace optune_addon
