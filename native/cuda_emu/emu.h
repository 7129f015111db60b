// The CUDA emulator's own interface: how emulated kernels run on the CPU.
//
// Why it exists: GPU time is scarce for this project (some sessions get 15 minutes, most none), so the CUDA backend
// (native/cuda) is also built as plain C++ against this emulator, and its tests (test_cuda_*) run on any CPU. That
// checks the host code around the kernels (buffer sizes, offsets, launch shapes, graphs, the order of operations)
// and the kernels' arithmetic and indexing, at tiny model sizes. It cannot check timing or the code nvcc generates,
// and sees a race only where running the threads in another order changes a result (OPTUNE_EMU_ORDER below): every
// block runs alone, one thread at a time. See README "CUDA emulator".
//
// The model:
// - Device memory is host memory; a stream runs each operation at once, in the calling thread, in issue order.
//   While a stream captures (cudaStreamBeginCapture), its operations are recorded instead and a graph launch runs
//   them in order.
// - A kernel runs its blocks one after another, in blockIdx order; a block's threads are fibers (cooperative,
//   one at a time). A thread runs until it reaches a barrier (__syncthreads, a warp-synchronous intrinsic) or ends;
//   a barrier releases when every thread it waits on that has not ended has reached it. OPTUNE_EMU_ORDER=reverse
//   runs blocks and threads in the reverse order, and =both runs every launch both ways and stops at the first bit
//   that differs (runtime.cpp): how races show here.
// - __shared__ variables are function statics (one block runs at a time, so each block sees its own), dynamic shared
//   memory is one buffer handed to each block in turn.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

struct CUstream_st;  // cudaStream_t = CUstream_st* (cuda_runtime.h)

namespace optune_emu {

struct Dim {
  unsigned x = 1, y = 1, z = 1;
};

// The calling fiber's CUDA thread (valid inside a kernel).
struct ThreadState {
  Dim thread_idx, block_idx, block_dim, grid_dim;
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  int lane() const { return linear & 31; }
  int warp() const { return linear >> 5; }
};
ThreadState& self();

// Runs fn now on `stream`, or records it when the stream captures. Every emulated device operation goes through it.
void enqueue(CUstream_st* stream, std::function<void()> fn);

// Kernel launches: optune_emu::launch_kernel (cuda_runtime.h), which checks the launch and enqueues the blocks.

// The block's dynamic shared memory (extern __shared__).
void* dynamic_shared();

// Waits until every live thread of the block has arrived; syncthreads_or also returns whether any passed pred != 0.
void syncthreads();
bool syncthreads_or(bool pred);
// Waits until every live lane in `mask` of the calling warp has arrived.
void syncwarp(unsigned mask);

// A warp exchange: every lane in `mask` calls it with its own value (up to 32 bytes); afterwards each reads the values
// of the lanes in the mask (others' slots hold stale values), until its next exchange. Shuffles, ballots and the
// mma / ldmatrix emulation build on it.
struct WarpValues {
  uint64_t v[32][4];
};
const WarpValues& warp_exchange(unsigned mask, const void* mine, size_t bytes);

// Reports a misuse or a defect the emulator found (a deadlock, a race OPTUNE_EMU_ORDER=both showed, ...) on stderr
// and aborts, as a GPU fault ends the process.
[[noreturn]] void fail(const std::string& what);

// Memory the emulated device has handed out (cudaMalloc), bounded by OPTUNE_EMU_MEMORY_GIB (default 16).
size_t memory_used();
size_t memory_total();

}  // namespace optune_emu
