// Running a kernel on the CPU: blocks one after another, a block's threads as fibers switched at barriers (emu.h).
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "emu.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// AddressSanitizer (OPTUNE_SANITIZE) follows the switches between stacks when told (its fiber interface); then every
// device access out of its allocation (cudaMalloc), dynamic shared memory or a __shared__ array is reported.
#if defined(__SANITIZE_ADDRESS__)
#define OPTUNE_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define OPTUNE_EMU_ASAN 1
#endif
#endif
#ifdef OPTUNE_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace optune_emu {

void fail(const std::string& what) {
  std::fprintf(stderr, "optune CUDA emulator: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;  // kernels keep register arrays of a few KB; pages are touched lazily

enum class State { kReady, kBlockWait, kWarpWait, kDone };

struct Fiber {
  ThreadState st;
  State state = State::kReady;
  unsigned warp_mask = 0;  // the lanes a warp wait is for
  char* stack = nullptr;
  void* fake_stack = nullptr;  // AddressSanitizer's, while switched away
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
};

// A warp's barrier and exchange state. Exchanges alternate between two buffers: a lane reads the values of one
// exchange while faster lanes may already write the next one's (a lane cannot get two exchanges ahead: the next one
// releases only when every lane has arrived, i.e. has finished reading).
struct Warp {
  uint32_t live = 0;     // lanes that have not ended
  uint32_t waiting = 0;  // lanes at a warp barrier
  int current = 0;       // the buffer the next exchange writes
  WarpValues slots[2];
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> ready;  // fibers to run, in order
  size_t next_ready = 0;
  int live = 0, at_barrier = 0;  // threads that have not ended; of them, waiting at __syncthreads
  const std::function<void()>* body = nullptr;
  bool or_pending = false, or_result = false;  // __syncthreads_or
};
thread_local Fiber* current = nullptr;
thread_local Block* block = nullptr;
#if defined(__x86_64__)
thread_local void* scheduler_sp = nullptr;
#else
thread_local ucontext_t scheduler_ctx;
#endif
std::vector<char*> stacks;  // reused from kernel to kernel
std::unique_ptr<unsigned char[]> dynamic_shared_buffer;  // exactly the launch's bytes (overruns show under ASan)
#ifdef OPTUNE_EMU_ASAN
thread_local void* scheduler_fake_stack = nullptr;
thread_local const void* scheduler_stack_bottom = nullptr;
thread_local size_t scheduler_stack_size = 0;
#endif

#if defined(__x86_64__)
// Saves the callee-saved registers and the stack pointer into *save, continues on `load`'s stack (System V x86-64).
extern "C" void optune_emu_switch(void** save, void* load);
asm(R"(
.text
.globl optune_emu_switch
.type optune_emu_switch,@function
optune_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size optune_emu_switch, .-optune_emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

void thread_ended();

void switch_away();

void fiber_main() {
#ifdef OPTUNE_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  (*block->body)();
  thread_ended();
  switch_away();
  fail("a finished thread was resumed");
}

#if defined(__x86_64__)
extern "C" void optune_emu_fiber_entry() { fiber_main(); }
#endif

void start_fiber(Fiber& f) {
#ifdef OPTUNE_EMU_ASAN
  __asan_unpoison_memory_region(f.stack, kStackBytes);  // the last thread on this stack never returned
  f.fake_stack = nullptr;
#endif
#if defined(__x86_64__)
  // The new stack as optune_emu_switch expects it: six registers (zero), then the entry as the return address,
  // placed so that the stack pointer is 8 modulo 16 at the entry (as after a call).
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
  auto* words = reinterpret_cast<void**>(top - 16);
  words[0] = reinterpret_cast<void*>(&optune_emu_fiber_entry);
  words[1] = nullptr;
  void** regs = words - 6;
  for (int i = 0; i < 6; i++) regs[i] = nullptr;
  f.sp = regs;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_main, 0);
#endif
}

// The thread that runs next: `current` and the index variables kernels read.
void make_current(Fiber& f) {
  current = &f;
  const ThreadState& t = f.st;
  threadIdx = {t.thread_idx.x, t.thread_idx.y, t.thread_idx.z};
  blockIdx = {t.block_idx.x, t.block_idx.y, t.block_idx.z};
  blockDim = dim3(t.block_dim.x, t.block_dim.y, t.block_dim.z);
  gridDim = dim3(t.grid_dim.x, t.grid_dim.y, t.grid_dim.z);
}

// On the scheduler: runs f (and, by hand-overs, the threads ready after it) until one finds none ready.
void resume(Fiber& f) {
#ifdef OPTUNE_EMU_ASAN
  if (scheduler_stack_bottom == nullptr) {  // this OS thread's own stack, where the fibers come back to
    pthread_attr_t attr;
    void* bottom = nullptr;
    pthread_getattr_np(pthread_self(), &attr);
    pthread_attr_getstack(&attr, &bottom, &scheduler_stack_size);
    pthread_attr_destroy(&attr);
    scheduler_stack_bottom = bottom;
  }
  __sanitizer_start_switch_fiber(&scheduler_fake_stack, f.stack, kStackBytes);
#endif
  make_current(f);
#if defined(__x86_64__)
  optune_emu_switch(&scheduler_sp, f.sp);
#else
  swapcontext(&scheduler_ctx, &f.ctx);
#endif
#ifdef OPTUNE_EMU_ASAN
  __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
  current = nullptr;
}

char* stack_for(int i) {
  while (static_cast<int>(stacks.size()) <= i) {
    void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("could not map a thread stack");
    stacks.push_back(static_cast<char*>(p));
  }
  return stacks[i];
}

// The next ready thread of the block, if any (the queue's consumed front dropped now and then).
Fiber* pop_ready(Block& b) {
  if (b.next_ready >= b.ready.size()) return nullptr;
  Fiber* f = &b.fibers[b.ready[b.next_ready++]];
  if (b.next_ready > 4096 && 2 * b.next_ready > b.ready.size()) {
    b.ready.erase(b.ready.begin(), b.ready.begin() + static_cast<std::ptrdiff_t>(b.next_ready));
    b.next_ready = 0;
  }
  return f;
}

// On a thread that waits or has ended: hands over to the next ready thread directly (one switch instead of two
// through the scheduler), or goes back to the scheduler when none is ready (the block is done, or deadlocked).
void switch_away() {
  Fiber* f = current;
  Fiber* next = pop_ready(*block);
#ifdef OPTUNE_EMU_ASAN
  __sanitizer_start_switch_fiber(f->state == State::kDone ? nullptr : &f->fake_stack,
                                 next ? next->stack : scheduler_stack_bottom,
                                 next ? kStackBytes : scheduler_stack_size);
#endif
  if (next) make_current(*next);
#if defined(__x86_64__)
  optune_emu_switch(&f->sp, next ? next->sp : scheduler_sp);
#else
  swapcontext(&f->ctx, next ? &next->ctx : &scheduler_ctx);
#endif
#ifdef OPTUNE_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

thread_local bool g_reverse = false;  // this launch's order (runtime.cpp's OPTUNE_EMU_ORDER)

std::string describe(const Block& b) {
  std::string s;
  for (const Fiber& f : b.fibers) {
    if (f.state == State::kDone) continue;
    s += " thread " + std::to_string(f.st.linear) +
         (f.state == State::kBlockWait ? " at __syncthreads;" : " at a warp sync;");
    if (s.size() > 400) return s + " ...";
  }
  return s;
}

void make_ready(Block& b, Fiber& f) {
  f.state = State::kReady;
  b.ready.push_back(f.st.linear);
}

// The warp wait of `mask` completes once every live lane in it waits (with the same mask).
void release_warp_if_complete(Block& b, int w, unsigned mask) {
  Warp& warp = b.warps[w];
  if (mask & warp.live & ~warp.waiting) return;
  for (int l = 0; l < 32; l++)
    if (((mask & warp.waiting) >> l & 1u) && b.fibers[32 * w + l].warp_mask != mask) return;  // another wait
  warp.current ^= 1;
  for (int i = 0; i < 32; i++) {
    const int l = g_reverse ? 31 - i : i;
    if (!((mask & warp.waiting) >> l & 1u)) continue;
    Fiber& f = b.fibers[32 * w + l];
    if (&f != current) make_ready(b, f);
  }
  warp.waiting &= ~mask;
}

void release_block_if_complete(Block& b) {
  if (b.at_barrier == 0 || b.at_barrier < b.live) return;
  b.or_result = b.or_pending;
  b.or_pending = false;
  b.at_barrier = 0;
  const int n = static_cast<int>(b.fibers.size());
  for (int i = 0; i < n; i++) {
    Fiber& f = b.fibers[g_reverse ? n - 1 - i : i];
    if (f.state == State::kBlockWait && &f != current) make_ready(b, f);
  }
}

void thread_ended() {
  Block& b = *block;
  Fiber& f = *current;
  f.state = State::kDone;
  Warp& warp = b.warps[f.st.warp()];
  warp.live &= ~(1u << f.st.lane());
  b.live--;
  // a wait that counted on this thread completes without it
  for (int l = 0; l < 32; l++)
    if (warp.waiting >> l & 1u) {
      release_warp_if_complete(b, f.st.warp(), b.fibers[32 * f.st.warp() + l].warp_mask);
      break;
    }
  release_block_if_complete(b);
}

void run_block(Block& b) {
  while (Fiber* f = pop_ready(b)) resume(*f);
  if (b.live > 0) {
    const ThreadState& any = b.fibers[0].st;
    fail("deadlock in block (" + std::to_string(any.block_idx.x) + ", " + std::to_string(any.block_idx.y) + ", " +
         std::to_string(any.block_idx.z) + "): some threads wait at a barrier the others never reach:" +
         describe(b));
  }
}

std::mutex kernel_mutex;  // one kernel at a time, whichever host thread launches it

}  // namespace

ThreadState& self() {
  if (current == nullptr) fail("a device function ran outside a kernel");
  return current->st;
}

void* dynamic_shared() { return dynamic_shared_buffer.get(); }

void syncthreads() {
  Block& b = *block;
  current->state = State::kBlockWait;
  b.at_barrier++;
  release_block_if_complete(b);
  if (current->state == State::kBlockWait && b.at_barrier > 0) switch_away();
  current->state = State::kReady;
}

bool syncthreads_or(bool pred) {
  block->or_pending = block->or_pending || pred;
  syncthreads();
  return block->or_result;
}

void syncwarp(unsigned mask) {
  const int lane = current->st.lane(), w = current->st.warp();
  if (!((mask >> lane) & 1u)) fail("__syncwarp (or a warp intrinsic) from a lane outside its mask");
  Warp& warp = block->warps[w];
  current->state = State::kWarpWait;
  current->warp_mask = mask;
  warp.waiting |= 1u << lane;
  release_warp_if_complete(*block, w, mask);
  if (warp.waiting >> lane & 1u) switch_away();  // still waiting: the others run first
  current->state = State::kReady;
}

const WarpValues& warp_exchange(unsigned mask, const void* mine, size_t bytes) {
  if (bytes > sizeof(WarpValues::v[0])) fail("a warp exchange of more than 32 bytes");
  Warp& warp = block->warps[current->st.warp()];
  WarpValues& slots = warp.slots[warp.current];
  std::memcpy(slots.v[current->st.lane()], mine, bytes);
  syncwarp(mask);  // every lane's value is in (and the next exchange writes the other buffer)
  return slots;
}

void run_kernel(Dim grid, Dim block_dim, size_t shared_bytes, const std::function<void()>& body, bool reverse) {
  std::lock_guard<std::mutex> lock(kernel_mutex);
  const int n = static_cast<int>(block_dim.x * block_dim.y * block_dim.z);
  dynamic_shared_buffer.reset(new unsigned char[std::max<size_t>(shared_bytes, 1)]);
  Block b;
  b.body = &body;
  b.fibers.resize(n);
  b.warps.resize((n + 31) / 32);
  b.ready.reserve(4 * n);
  for (int i = 0; i < n; i++) b.fibers[i].stack = stack_for(i);
  Block* outer = block;
  block = &b;
  const bool outer_reverse = g_reverse;
  g_reverse = reverse;
  auto order = [](unsigned i, unsigned count) { return g_reverse ? count - 1 - i : i; };
  for (unsigned iz = 0; iz < grid.z; iz++)
    for (unsigned iy = 0; iy < grid.y; iy++)
      for (unsigned ix = 0; ix < grid.x; ix++) {
        const unsigned bx = order(ix, grid.x), by = order(iy, grid.y), bz = order(iz, grid.z);
        // shared memory starts each block as garbage (all bits set: NaN as floats), as uninitialized reads should show
        std::memset(dynamic_shared_buffer.get(), 0xff, shared_bytes);
        b.ready.clear();
        b.next_ready = 0;
        for (int i = 0; i < n; i++) {
          Fiber& f = b.fibers[i];
          f.st.block_idx = {bx, by, bz};
          f.st.block_dim = block_dim;
          f.st.grid_dim = grid;
          f.st.thread_idx = {i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
          f.st.linear = i;
          start_fiber(f);
        }
        for (int i = 0; i < n; i++) make_ready(b, b.fibers[g_reverse ? n - 1 - i : i]);
        for (int w = 0; w < static_cast<int>(b.warps.size()); w++) {
          const int lanes = std::min(32, n - 32 * w);
          b.warps[w].live = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
          b.warps[w].waiting = 0;
        }
        b.live = n;
        b.at_barrier = 0;
        b.or_pending = b.or_result = false;
        run_block(b);
      }
  block = outer;
  g_reverse = outer_reverse;
}

}  // namespace optune_emu

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;
