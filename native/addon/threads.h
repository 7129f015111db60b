// Where and with how many CPU threads engine calls run.
// Every engine call runs on one dedicated engine thread (the libuv worker that took the call waits for it): OpenMP
// keeps a team of worker threads per calling thread, so calls hopping between libuv's workers used several teams
// (bf16 sampling measured 8% slower through Node than with one libuv worker). OpenMP also keeps the thread count per
// thread, so setThreads() stores the count and the engine thread applies it before each call.
#pragma once
#include <functional>

namespace optune_addon {

void set_threads(int n);      // n >= 1
int current_threads();        // the stored count, or OpenMP's default when none was set
// Runs `call` on the engine thread (started on first use) after applying the thread count, and waits for it; an
// exception from `call` is rethrown here. Calls from several libuv workers run one after another.
void run_engine_call(const std::function<void()>& call);

}  // namespace optune_addon
