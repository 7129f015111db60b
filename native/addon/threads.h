// Where and with how many CPU threads engine calls run.
// Every engine call runs on one dedicated engine thread (task.h hands it over and gets its result back): OpenMP
// keeps a team of worker threads per calling thread, so calls hopping between libuv's workers used several teams
// (bf16 sampling measured 8% slower through Node than with one libuv worker). OpenMP also keeps the thread count per
// thread, so setThreads() stores the count and the engine thread applies it before each call.
#pragma once
#include <exception>
#include <functional>

namespace optune_addon {

void set_threads(int n);      // n >= 1
int current_threads();        // the stored count, or OpenMP's default when none was set
// Queues `call` to run on the engine thread (started on first use) after applying the thread count; then, on the
// engine thread, `then` gets the exception `call` threw (null when none) and must not throw. `call` must stay
// alive until `then` runs. Calls run one after another, in the order they were queued.
void submit_engine_call(const std::function<void()>& call, std::function<void(std::exception_ptr)> then);

}  // namespace optune_addon
