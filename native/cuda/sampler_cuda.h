// Batched sampling on a CUDA device, with the semantics of the CPU sampler (core/engine.h `sample`, core/sampler.cpp):
// K samples per prompt, ragged prompts, temperature (0 = greedy), top-k, top-p, max_new_tokens, stop tokens (kept;
// the response ends), token log-probs under the unfiltered temperature-1 distribution, prompt-major output, and the
// counter-based draws of core/rng.h keyed by (seed, stream id, k, step).
//
// How: the prompts are prefilled in one ragged forward (chunked by tokens) that writes each prompt's keys and values
// into the cache slots of its K samples; then each decode step feeds one token per active response through the
// blocks with a single-query attention over its cache, and picks the next tokens on the device. A decode step is
// captured once into a CUDA graph per batch bucket (powers of two) and replayed; every few steps the finished
// responses are compacted out and a smaller bucket takes over. Only the generated tokens, their log-probs and the
// finished flags come back to the host, once, at the end.
//
// Reproducibility: the same request on the same GPU gives the same tokens (fixed kernel and cuBLAS configurations,
// no atomics in any sum). The uniforms are the CPU sampler's; the logits differ from the CPU's by float rounding
// (other summation orders, cuBLAS), so a draw that falls within rounding distance of a token boundary, or a greedy
// near-tie, can pick a different token than the CPU, after which that response diverges. A response's tokens may
// also depend on the other prompts in the call (cuBLAS may pick another kernel for another batch size).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/engine.h"
#include "core/model.h"

namespace optune::cuda {

// The weights the sampler reads, already on the device, in the core ParamLayout (core/params.h): the flat fp32
// buffer, and under bf16 a bf16 copy with the same offsets (null: fp32 GEMMs). Under bf16 every GEMM (the LM head's
// too, as in the device model's log-probs) takes bf16 operands with fp32 accumulation and the KV cache holds bf16;
// the residual stream, embeddings, norms, biases, logits and softmax stay fp32.
struct SamplerWeights {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
};

// What one call did (benchmarks).
struct SamplerStats {
  size_t device_bytes = 0;   // device memory the call allocated: KV cache, activations, logits, outputs
  // Host wall time of a call's parts (ms), so that what a call costs beyond its kernels shows in the benchmark:
  double setup_ms = 0;       // the call's device buffers and GEMM handles (before any kernel)
  double prefill_ms = 0;     // prefill and the first token
  double decode_ms = 0;      // every later token, with the three below
  double capture_ms = 0;     //   capturing and instantiating the decode graphs
  double sync_ms = 0;        //   waiting for the device at the active set's rebuilds (sampler_cuda.cu's kCompactEvery)
  int eager_steps = 0;       //   decode steps launched kernel by kernel (the first of each bucket, or all without graphs)
  double collect_ms = 0;     // copying the tokens back and building the result
  double teardown_ms = 0;    // freeing the call's device buffers
  int decode_steps = 0;      // decode steps run (eager or graph)
  int graphs = 0;            // CUDA graphs captured (one per batch bucket used twice or more)
  std::string graph_error;   // why capturing failed (the call then ran eagerly); empty when it did not
  int max_split = 1;         // most K-slices any decode GEMM ran in (1: none split; OPTUNE_CUDA_SPLIT_K)
  int own_gemms = 0;         // decode GEMMs issued to decode_gemm.cu's kernel (eager and captured)
  bool early_launch = false; // decode steps launched their own kernels early (sm_90+, unless OPTUNE_CUDA_PDL=0)
  bool tf32 = false;         // the fp32 GEMMs were allowed TF32 tensor cores (OPTUNE_CUDA_TF32=1; cuBLAS picks)
  int row_sorts = 0;         // calls that sorted logits rows for filtered draws (eager and captured; 0: unfiltered)
  int lt_gemms = 0;          // decode GEMMs issued to cuBLASLt (bf16 default, OPTUNE_CUDA_DECODE_GEMM=lt; eager and
                             // captured)
};

// Samples from a model whose weights are on the device. `m` gives the config and layout (its host params are not
// read). Throws optune::Error on a bad request (the CPU sampler's messages), non-finite logits, or out-of-memory.
// Set OPTUNE_CUDA_GRAPHS=0 to run every decode step eagerly (for debugging; the tokens are the same).
SampleResult sample_with_weights(const Model& m, const SamplerWeights& w, const SampleRequest& r,
                                 SamplerStats* stats = nullptr);

// `SampleResult sample(const Model&, const SampleRequest&)`, declared in device_model.h, reads the weights of a
// model placed on CUDA (DeviceState) and calls sample_with_weights (sampler_entry.cu).

}  // namespace optune::cuda
