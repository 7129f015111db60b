// How much memory the process can still get, so that a request far too large for the machine is refused with its
// size and a fix. Linux overcommits: a vector larger than free memory is handed out, then its zero-filling makes
// the kernel's OOM killer end the whole Node process, which no exception can report.
#pragma once
#include <cstddef>
#include <string>

namespace optune {

// Bytes the process may still allocate: /proc/meminfo's MemAvailable + SwapFree, capped by the cgroup's limit
// less its usage (v2 memory.max / memory.current, or v1), and by OPTUNE_MEMORY_LIMIT (bytes) when set. 0 when none
// of these can be read (no check then).
size_t available_host_bytes();

// Throws optune::Error "<what>: <X> GiB of memory needed, but only <Y> GiB is available; <fix>" when `bytes` exceeds
// what is available. Meant for the allocations that scale with a request or a model (weights, training state,
// activations, KV cache, logits); 0 bytes checks nothing.
void check_host_memory(size_t bytes, const std::string& what, const std::string& fix);

}  // namespace optune
