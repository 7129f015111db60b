// The engine's CPU thread count. OpenMP keeps the count per thread, so a value set on the JS main thread would not
// reach the libuv workers that run engine calls: setThreads() stores it and every worker applies it first.
#pragma once

namespace optune_addon {

void set_threads(int n);      // n >= 1
int current_threads();        // the stored count, or OpenMP's default when none was set
void apply_thread_setting();  // on a worker thread, before an engine call

}  // namespace optune_addon
