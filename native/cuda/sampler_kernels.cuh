// Kernels of the CUDA sampler (sampler_cuda.cu): the inference-only transformer pieces that prefill and the decode
// step share (decode_kernels.cu), and the token picking, sorting and active-set bookkeeping (sample_kernels.cu).
// Every launcher takes where it runs (launch.h): the sampler's stream, on which a decode step is captured into a CUDA
// graph, and for the decode step's kernels whether they may start before the kernel before them ends (PDL).
// Activations that feed a GEMM are written as `Act` (float, or __nv_bfloat16 under bf16); everything else is fp32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "launch.h"
#include "sort_rows.h"

namespace optune::cuda::sampler {

using bf16 = __nv_bfloat16;

// The rows of one forward: row r is token tok[r] at position pos[r] of cache slot slot[r]. Its keys and values go
// to slots slot[r] .. slot[r] + copies - 1 (prefill: one prompt row feeds its K samples; decode: copies = 1).
struct Rows {
  const int32_t* tok = nullptr;
  const int32_t* pos = nullptr;
  const int32_t* slot = nullptr;
  int n = 0;
  int copies = 1;
};

// One layer's KV cache: [slots][cap][kv_dim] for keys and for values, in the activations' dtype (fp32, or bf16
// under bf16: half the bytes a decode step reads).
template <class Act>
struct LayerCache {
  Act* k = nullptr;
  Act* v = nullptr;
  int cap = 0;
};

// The K-slices of a GEMM split along its inner dimension: a decode step's GEMMs have a few dozen rows, so unsplit
// they run as a handful of output tiles on a few SMs, each streaming its share of the weights alone (the o and MLP
// projections, N = d, ~6-8 us on an H100 for ~1-5 MB of weights). Slice s of the product lies at p + s * stride, in
// the layout of the tensor it stands for; the kernel that consumes that tensor adds the slices itself, in slice order
// (no atomics: the sum does not depend on timing). n = 0: no slices, the tensor itself holds the product.
struct Partials {
  const float* p = nullptr;
  int n = 0;
  int64_t stride = 0;
  // The same slices seen from `off` elements into the tensor (a sub-tensor, a row).
  __host__ __device__ Partials at(int64_t off) const { return {n ? p + off : nullptr, n, stride}; }
  // Read-only loads, unrolled by 8 (measured on an H200, the GELU after a 3-slice GEMM: 4.4 us a call; a version
  // that predicated 8 loads per round for every n took 56 registers instead of 30, fewer blocks per SM, 5.3 us).
  __device__ float sum(int64_t i) const {
    float v = 0.0f;
#pragma unroll 8
    for (int s = 0; s < n; s++) v += __ldg(p + s * stride + i);
    return v;
  }
  // Element i of the tensor: the slices' sum when split, else the tensor's own value.
  __device__ float value(const float* self, int64_t i) const { return n ? sum(i) : self[i]; }
};

// Requests the 128-byte line holding p into L2 (a hint: the thread does not wait, nothing faults).
#ifdef OPTUNE_CUDA_EMU
inline void prefetch_l2(const void*) {}
#else
__device__ inline void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }
#endif

// ---- transformer pieces (decode_kernels.cu) ----------------------------------------------------------------------
constexpr int kMaxNormWidth = 8192;  // widest row add_norm takes (16 elements in registers per thread of 512)
// x[r] = wte[tok[r]] + wpe[pos[r]] (wpe null: no learned positions; then wte[tok[r]] * scale, Gemma's
// sqrt(d_model), as core/transformer.cpp's embed_forward).
void embed(float* x, const float* wte, const float* wpe, const Rows& rows, int d, float scale, Launch on);
// One row of it by the calling block.
__device__ inline void embed_row(float* o, const float* wte, const float* wpe, int tok, int pos, int d, float scale) {
  const float* e = wte + static_cast<int64_t>(tok) * d;
  const float* p = wpe ? wpe + static_cast<int64_t>(pos) * d : nullptr;
  for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = p ? e[i] + p[i] : e[i] * scale;
}
// The LM head's last vocabulary rows, those past its aligned bulk (vocab_bulk, ops.h): the final norm's blocks take
// them on the row they have just normalized. As a GEMM of their own (under 8 columns: cuBLAS's gemv) they cost a
// launch and ~3.8 us of a ~0.57 ms decode step on an H200.
constexpr int kMaxHeadTail = 7;
template <class Act>
struct HeadTail {
  const Act* w = nullptr;   // [n, d]: the LM head's rows vocab_bulk .. vocab - 1
  float* logits = nullptr;  // output row r's logits for them at logits + r * ld
  int n = 0;                // 0: none; at most kMaxHeadTail
  int64_t ld = 0;
};
// For each output row r (source row src[r], or r when src is null): x[src] += add (a bias deferred from the previous
// GEMM; may be null) + the slices of that GEMM's product when it was split (indexed like x), then
// out[r] = norm(x[src]) with LayerNorm (b may be null) or RMSNorm, and when tail.n > 0 its logits for the tail rows,
// out[r] . tail.w[t] with fp32 sums. d <= kMaxNormWidth (the row lives in registers).
// w_offset: added to RMSNorm's weights (Gemma: 1).
template <class Act>
void add_norm(Act* out, float* x, const int32_t* src, const float* add, const Partials& parts, const float* w,
              const float* b, int rows, int d, float eps, bool layernorm, float w_offset, Launch on,
              const HeadTail<Act>& tail = {});
// The rotations RoPE applies at positions 0 .. cap-1: table[pos * (head_dim / 2) + i] = (cos, sin) of pos *
// inv_freq[i] (device memory: one set of rope_sets.h), each computed in double and rounded once, as cpu/rope.cpp
// does. Filled once per sampling call, so a decode step reads its rotations instead of computing them in double
// (1/64-rate FP64 on GeForce GPUs).
void rope_table(float2* table, int cap, int head_dim, const double* inv_freq, cudaStream_t st);
// q/k/v (row strides qs/ks/vs) in place: their GEMM's product (pq/pk/pv: its slices, indexed like q/k/v, when it
// was split) + bias (each may be null), RoPE on q and k when rope (rope_table's; null: none), then the row's k and
// v are copied into the cache at (slot + c, pos) for c < copies.
template <class Act>
void qkv_finish(float* q, int qs, float* k, int ks, float* v, int vs, const Partials& pq, const Partials& pk,
                const Partials& pv, const float* bq, const float* bk, const float* bv, const Rows& rows, int n_head,
                int n_kv_head, int head_dim, const float2* rope, const LayerCache<Act>& cache, cudaStream_t st);
// The q/k norms over `rows` rows: q's n_q groups of qw columns (each head; OLMo 2: one, the whole width) and k's n_k
// groups of kw, each its
// GEMM product (pq/pk: the slices when split) + bias (may be null), RMSNorm'd with weights wq / wk (one group's
// width), written back into q and k (row strides qs, ks). Later kernels then take q and k with no slices or bias.
// w_offset is added to the weights (Gemma: 1), and q is multiplied by q_scale (Gemma's query_pre_attn_scalar; the
// rotation after it is linear, so where the factor goes does not matter but for rounding).
void qk_norm(float* q, int qs, float* k, int ks, const Partials& pq, const Partials& pk, const float* bq,
             const float* bk, const float* wq, const float* wk, int rows, int n_q, int qw, int n_k, int kw, float eps,
             float w_offset, float q_scale, cudaStream_t st);
// A decode step's q/k/v rows as their GEMM left them (each the tensor, or its slices), with their biases (may be null).
struct QkvRows {
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  int qs = 0, ks = 0, vs = 0;  // row strides
  Partials pq, pk, pv;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
};
// One query row per sequence against its cached keys 0 .. pos[r] (window > 0: the last `window` of them; GQA: query
// head h reads kv head h / group). The
// row's q/k/v are finished first (qkv_finish's work: bias, RoPE from `rope`, k and v into the cache at pos), inside
// the same kernel: one launch less per layer in the decode step.
template <class Act>
void attention_decode(Act* out, const QkvRows& in, const LayerCache<Act>& cache, const Rows& rows, int n_head,
                      int n_kv_head, int head_dim, const float2* rope, int window, Launch on);
// out = gelu_tanh(fc + b) over [rows, f] (fc: the tensor, or its slices in pfc).
template <class Act>
void bias_gelu(Act* out, const float* fc, const Partials& pfc, const float* b, int rows, int f, Launch on);
// out = silu(gate) * up (gelu_gate: gelu_tanh(gate) * up, Gemma), n elements (each: the tensor, or its slices).
template <class Act>
void swiglu(Act* out, const float* gate, const Partials& pgate, const float* up, const Partials& pup, int64_t n,
            bool gelu_gate, Launch on);
// A post-norm and its residual add (OLMo 2, Gemma), per row of d: x += RMSNorm(y + bias) (y: the projection, or its
// slices in parts when split; bias may be null) with weights w + w_offset, then out = x in Act (the next GEMM's
// operand; out null: none, a pre-norm reads x next).
template <class Act>
void post_norm_add(float* x, Act* out, const float* y, const Partials& parts, const float* bias, const float* w,
                   int rows, int d, float eps, float w_offset, cudaStream_t st);
// fp32 -> Act (a copy when Act is float).
template <class Act>
void convert(Act* out, const float* in, int64_t n, cudaStream_t st);

// ---- sampling (sample_kernels.cu) ----------------------------------------------------------------------------------
// Per-response state, all on the device. Slots 0 .. R-1 are the responses (prompt-major: slot = prompt * K + k);
// slot R is a padding slot that rows beyond the active count point at (its cache rows are scratch).
struct State {
  int32_t* len = nullptr;        // [R + 1] tokens in the slot's KV cache
  int32_t* n_out = nullptr;      // [R + 1] tokens generated
  uint8_t* finished = nullptr;   // [R + 1] ended with a stop token
  int32_t* out_tok = nullptr;    // [R][max_new]
  float* out_logp = nullptr;     // [R][max_new]
  const uint64_t* stream = nullptr;  // [R] random stream key of each response (as the CPU sampler derives it)
  int32_t* active = nullptr;     // [R] slots still generating, ascending
  int32_t* ctl = nullptr;        // [2]: number of active slots; first step with non-finite logits (INT_MAX: none)
  const int32_t* stop = nullptr; // stop tokens
  int n_stop = 0;
  int R = 0, max_new = 0;
};

struct Params {
  uint64_t seed = 0;
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  int vocab = 0;       // the ids a draw may pick: [0, vocab) (SampleRequest::vocab_limit)
  int full_vocab = 0;  // the model's vocabulary (>= vocab): the log-probs' normalizer runs over all of it
  int logits_ld = 0;  // row stride of the logits (the vocabulary rounded up to 8: 16-byte aligned rows for cuBLAS)
  // Filtered draws (a top-k below the vocabulary, a top-p below 1) read their rows in (logit desc, index asc)
  // order (sort_rows).
  __host__ __device__ bool filtered() const {
    return temperature != 0.0f && ((top_k > 0 && top_k < vocab) || top_p < 1.0f);
  }
};

// Rows 0 .. n_rows-1 of a decode step: row a < n_active takes slot active[a], its last token and position len;
// later rows take the padding slot (token 0 at position 0). A slot that is still generating gets len + 1 (the token
// joins its cache). x[a] = the row's embedding, as embed().
void decode_rows(float* x, const float* wte, const float* wpe, int32_t* tok, int32_t* pos, int32_t* slot,
                 const State& s, int n_rows, int d, float embed_scale, cudaStream_t st);
// Draws the next token of each active row a < min(n_rows, n_active) from logits row a / logits_div (the prefill
// logits are one row per prompt, read by its K samples), unless the slot is done. sorted: per logits row, the
// vocabulary ordered by (logit desc, index asc) (sort_rows); needed only when p.filtered().
void pick_tokens(const float* logits, int logits_div, const int32_t* sorted, int n_rows, const State& s,
                 const Params& p, cudaStream_t st);
// Rebuilds active[] (ascending slots that are neither finished nor at max_new) and ctl[0].
void compact_active(const State& s, cudaStream_t st);

// Ordering logits rows for filtered draws: sort_rows.h.

}  // namespace optune::cuda::sampler
