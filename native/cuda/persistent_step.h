// A bf16 decode step's transformer layers as one persistent kernel, for GPT-2-family models (LayerNorm, biases,
// GELU MLP, multi-head attention with head_dim <= 64, no RoPE). Opt-in in the sampler (OPTUNE_CUDA_DECODE_STEP=
// persistent, sampler_cuda.cu); native/bench/bench_cuda_persistent.cu measures it against the sampler's kernels.
//
// Why: on an H200 a GPT-2 124M decode layer at 64 rows is eight kernels of 3-11 us, 43.6 us in all, with no idle
// time between them in the replayed graph (11th session); its 14 MB of bf16 weights would take ~3 us at the
// memory's bandwidth. Each kernel pays its ramp-up and drain, and each runs its GEMM on a few dozen SMs. Here one
// cooperative launch keeps its blocks resident over all layers and runs each layer as phases over every SM:
//   norm1 | qkv | attention | o-proj | norm2 | fc (+ bias + GELU) | [GELU] | proj
// with a grid-wide barrier after each. The GEMMs are decode_gemm_tile.cuh's tiles (64 rows x 64 columns over a
// K-slice); a GEMM split along K leaves its slices to the next phase, which adds them in slice order (no atomics:
// the same bits every run). Before a barrier each block loads its first weight tile of the next GEMM phase (weights
// are constants). The attention is staged through shared memory where it can be (persistent_step.cu), else the
// sampler's own (decode_attention.cuh, attend_head), one (row, head) per block in turn. Not yet run on a GPU (12th
// session): bench_cuda_persistent decides whether it becomes the default.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "memory.h"

namespace optune::cuda {

// One layer's device pointers. GEMM weights bf16 [in, out] row-major (GPT-2's Conv1D), 16-byte aligned; the rest
// fp32. The KV cache is [slots][cap][d] for keys and for values, bf16.
struct StepLayer {
  const float *ln1_w, *ln1_b, *b_qkv, *b_o, *ln2_w, *ln2_b, *b_fc, *b_proj;
  const __nv_bfloat16 *w_qkv, *w_o, *w_fc, *w_proj;
  __nv_bfloat16 *k_cache, *v_cache;
};

struct StepShape {
  int d = 0, n_head = 0, head_dim = 0, d_ff = 0;
  int cap = 0;  // cache rows per slot
  float eps = 1e-5f;
};

// How the work is cut. 0 (the default): blocks per SM as many as fit, at most 2; each GEMM in as many K-slices as
// keep its tiles within one per block (at most 8 for qkv and fc, whose slices the attention and the GELU phase add,
// 16 for the two projections into the residual stream).
struct StepSplit {
  int blocks_per_sm = 0;
  int s_qkv = 0, s_o = 0, s_fc = 0, s_proj = 0;
  bool early = true;  // each block loads its first weight tile of the next GEMM phase before the barrier
  // The attention staged through shared memory (a pair's cached keys and values loaded in one go) where it applies
  // (head_dim 64, cache rows per slot <= 256); false: the sampler's attend_head, a (row, head) per block in turn.
  bool staged_attention = true;
};

// Why the kernel cannot take this model ("" when it can): rows wider than 1024, head_dim above 64, widths that are
// not multiples of 8, a missing bias or norm weight, weights not 16-byte aligned, no cooperative launch.
std::string persistent_step_unsupported(const StepShape& shape, const std::vector<StepLayer>& layers);

// The layers' table and scratch on the device, for batches of up to max_rows (<= 64) rows.
class PersistentStep {
 public:
  PersistentStep(const StepShape& shape, const std::vector<StepLayer>& layers, int max_rows,
                 const StepSplit& split = {});
  // x[rows, d] (fp32, the embeddings' sum) += every layer's attention and MLP outputs, in place; row r is at
  // position pos[r] of cache slot slot[r] (device arrays), its key and value go into the cache there. Capturable
  // into a CUDA graph. stamps (optional, device, 1 + layers x phases_per_layer()): block 0's clock (ns) after each
  // barrier, for phase times.
  void run(float* x, const int32_t* pos, const int32_t* slot, int rows, cudaStream_t st,
           unsigned long long* stamps = nullptr);
  const StepSplit& split() const { return split_; }  // as resolved
  int grid() const { return grid_; }
  std::vector<std::string> phase_names() const;  // a layer's phases, each ending at a barrier
  size_t device_bytes() const { return bytes_; }
  // The last run's last attention output, bf16 [rows, d] on the device (checks).
  const uint16_t* attention_output() const { return att_.data(); }

 private:
  StepShape shape_;
  int n_layer_, max_rows_, grid_ = 0;
  StepSplit split_;
  size_t bytes_ = 0;
  Buffer<StepLayer> layers_;
  Buffer<uint16_t> a_, att_, h_;                      // bf16 GEMM inputs: norm output, attention output, GELU output
  Buffer<float> qkv_part_, o_part_, fc_part_, proj_part_;  // GEMM slices (qkv: per layer, see the .cu)
  Buffer<unsigned> barrier_;                          // arrivals, barriers passed
};

}  // namespace optune::cuda
