// CUDA kernels, forward and backward side by side, with the same conventions as the CPU reference (cpu/ops.h):
// activations are row-major [rows, features]; backward ACCUMULATES (+=) into parameter and input gradients except
// where noted (attention writes dq/dk/dv, as on the CPU). Every pointer is device memory, including the int32 index
// arrays (offsets, positions, src/target rows). Work goes to the default stream; calls return once queued, and an
// error inside a kernel surfaces at the next synchronizing call (copy, synchronize) as an optune::Error.
// Plain C++: callers need no CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace optune::cuda {

// ---- GEMM (cuBLAS) ---------------------------------------------------------------------------------------------
// Row-major C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C, as cpu::gemm. Pure fp32 unless
// tf32_matmuls() (below) and allow_tf32: a reduction written as a GEMM (bias_backward's column sums) passes false,
// as PyTorch sums those in fp32 whatever its matmul setting.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc, bool allow_tf32 = true);
// The same with bf16 inputs (raw bf16 bits as uint16_t) and fp32 accumulation and output (cublasGemmEx).
void gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const uint16_t* A, int lda,
               const uint16_t* B, int ldb, float beta, float* C, int ldc);
// OPTUNE_CUDA_TF32=1: fp32 GEMMs (these and the sampler's) run on TF32 tensor cores, their inputs reduced to 10
// mantissa bits and fp32 accumulation, as PyTorch's torch.backends.cuda.matmul.allow_tf32; unset or 0: strict fp32
// (the CPU's results to ~1e-5). Read at each GEMM and sampling call (tests switch it within a process); throws on
// another value. bf16 GEMMs do not change.
bool tf32_matmuls();
// fp32 -> bf16 (round to nearest even), n elements.
void to_bf16(uint16_t* out, const float* inp, int64_t n);

// ---- normalization ---------------------------------------------------------------------------------------------
// Forward outputs (norms and activations): out16, when given, gets the output rounded to bf16 (the operand of a
// bf16 GEMM, written by the producer instead of a separate to_bf16 pass); out may then be null (no fp32 copy).
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b,
                       int rows, int d, float eps, uint16_t* out16 = nullptr);
void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp, const float* w,
                        const float* mean, const float* rstd, int rows, int d);
// RMSNorm: w_offset (Gemma: 1) is added to every weight, as cpu::rmsnorm_*'s (the weight gradient is unchanged).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* w, int rows, int d, float eps,
                     uint16_t* out16 = nullptr, float w_offset = 0.0f);
void rmsnorm_backward(float* dinp, float* dw, const float* dout, const float* inp, const float* w, const float* rstd,
                      int rows, int d, float w_offset = 0.0f);
// The same split in two for long batches: the input gradient alone (dinp +=), and prod = dout * xhat (written; mean
// null for RMSNorm), whose column sums are dw (bias_backward below does them as a GEMM).
void layernorm_backward_input(float* dinp, const float* dout, const float* inp, const float* w, const float* mean,
                              const float* rstd, int rows, int d);
void rmsnorm_backward_input(float* dinp, const float* dout, const float* inp, const float* w, const float* rstd,
                            int rows, int d, float w_offset = 0.0f);
void norm_xhat_product(float* prod, const float* dout, const float* inp, const float* mean, const float* rstd,
                       int rows, int d);

// ---- activations -----------------------------------------------------------------------------------------------
void gelu_forward(float* out, const float* inp, int64_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n);
// act = gelu(fc + bias) (bias null: none) over rows x cols, fc unchanged: bias_add + gelu_forward in one pass.
void bias_gelu_forward(float* act, const float* fc, const float* bias, int rows, int cols, uint16_t* act16 = nullptr);
// Its backward: dinp (+)= gelu'(fc + bias) * dout, as gelu_backward on the biased pre-activation. accumulate false:
// dinp is written, not added to (no zero fill first); dinp16: dinp's new value in bf16 too.
void bias_gelu_backward(float* dinp, const float* fc, const float* bias, const float* dout, int rows, int cols,
                        bool accumulate = true, uint16_t* dinp16 = nullptr);
void swiglu_forward(float* out, const float* gate, const float* up, int64_t n, uint16_t* out16 = nullptr);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);
// Gemma's GELU gate: out = gelu_tanh(gate) * up; backward as swiglu_backward's (+=).
void geglu_forward(float* out, const float* gate, const float* up, int64_t n, uint16_t* out16 = nullptr);
void geglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n);

// ---- rotary position embedding (in place; rotate_half layout, as cpu::rope_*) -----------------------------------
// inv_freq: the head_dim / 2 frequencies (device memory, doubles), cpu::rope_inv_freq's (rope_sets.h).
void rope_forward(float* x, int rows, int stride, int n_heads, int head_dim, const int32_t* pos,
                  const double* inv_freq);
void rope_backward(float* dx, int rows, int stride, int n_heads, int head_dim, const int32_t* pos,
                   const double* inv_freq);

// ---- causal self-attention over a packed ragged batch ----------------------------------------------------------
// Layout as cpu::attention_forward (offsets[n_seq + 1], q [T, H*hd] stride qs, k/v [T, KV*hd] strides ks/vs,
// out [T, H*hd]). Instead of the [L, L] probabilities the forward saves lse[T * n_head] (log-sum-exp of each query
// row's scaled scores, index row * n_head + h), from which backward recomputes them tile by tile.
// max_len: the longest sequence (sizes the grid). head_dim <= kAttentionMaxHeadDim (the tensor-core kernels: <= 128;
// the fp32 ones beyond, where the GPU's shared memory allows: attention_smem_problem).
// bf16 (bf16 mixed precision): the products run on tensor cores with bf16 operands and fp32 accumulation
// (attention_mma.cu) when attention_mma_supported(head_dim); otherwise, and without bf16, plain fp32 kernels.
// window > 0: sliding-window attention, query i sees keys i - window + 1 .. i (as cpu::attention_forward's).
constexpr int kAttentionMaxHeadDim = 256;
// Up to this head_dim the fp32 kernels take at most 73 KB of shared memory a block (every GPU from sm_80 on allows
// it) and their narrower accumulator class.
constexpr int kAttentionNarrowHeadDim = 128;
// Why this GPU cannot run the attention at head_dim (its fp32 kernels' shared memory), "" when it can.
std::string attention_smem_problem(int head_dim);
// Biases added to q, k and v as the kernels read them ([n_head * head_dim], [n_kv_head * head_dim] twice; each may be
// null): when nothing rotates q and k after their bias (GPT-2), q|k|v need no bias pass of their own. Only the
// tensor-core kernels take them (bf16 and attention_mma_supported); passing one elsewhere is an error.
struct QkvBias {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  bool any() const { return q || k || v; }
};
void attention_forward(float* out, float* lse, const float* q, int qs, const float* k, int ks, const float* v, int vs,
                       const int32_t* offsets, int n_seq, int max_len, int n_head, int n_kv_head, int head_dim,
                       bool bf16 = false, const QkvBias& bias = {}, int window = 0);
// dq, dk, dv are written (not accumulated) with the strides of q, k, v. `out` is the forward's output.
// T: total rows (offsets[n_seq]); a scratch of T * n_head floats is allocated for rowsum(dO * O).
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, int qs, const float* k, int ks, const float* v, int vs,
                        const int32_t* offsets, int n_seq, int max_len, int T, int n_head, int n_kv_head,
                        int head_dim, bool bf16 = false, const QkvBias& bias = {}, int window = 0);
// The tensor-core kernels themselves (head_dim 16, 32, 64 or 128, where their shared memory fits the current GPU's
// per-block limit: head_dim 128 needs more than the 99 KB of sm_86 / sm_89 / sm_120); D: rowsum(dO * O), T * n_head
// floats.
bool attention_mma_supported(int head_dim);
void attention_forward_mma(float* out, float* lse, const float* q, int qs, const float* k, int ks, const float* v,
                           int vs, const int32_t* offsets, int n_seq, int max_len, int n_head, int n_kv_head,
                           int head_dim, const QkvBias& bias = {}, int window = 0);
void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const float* lse, const float* D,
                            const float* q, int qs, const float* k, int ks, const float* v, int vs,
                            const int32_t* offsets, int n_seq, int max_len, int n_head, int n_kv_head, int head_dim,
                            const QkvBias& bias = {}, int window = 0);

// ---- token log-probs through the LM head without the full [n x vocab] logits -----------------------------------
// As cpu::logprob_forward/backward: logp[r] = log_softmax(h[src[r]] @ W^T)[target[r]], W [V, D]; rows go in chunks
// of chunk_rows (0: logprob_chunk_rows(vocab)), whose logits are the only [rows x V] buffer (allocated per call).
// w16: a bf16 copy of W (bf16 mixed precision): the GEMMs take bf16 operands with fp32 accumulation; dw stays fp32.
// dw null: the head is frozen (LoRA), only dh is computed.
int logprob_chunk_rows(int vocab);
int logits_stride(int vocab);  // row stride of a logits chunk: vocab rounded up to 8 (16-byte aligned rows)
// The vocabulary's aligned bulk (rounded down to 8): GEMMs over the vocabulary run on it and on the < 8 rows left,
// since cuBLAS picks pre-Hopper kernels (~75 TFLOP/s on an H100) for a vocabulary dimension like 50257.
inline int vocab_bulk(int vocab) { return vocab / 8 * 8; }
void logprob_forward(float* logp, const float* h, const int32_t* src, const int32_t* target, int n, const float* w,
                     int d, int vocab, int chunk_rows = 0, const uint16_t* w16 = nullptr);
// src_distinct: the caller promises no src row repeats (a response's rows never do), so dh's rows are added in
// parallel; otherwise one thread per column walks the rows in order (repeats sum in a fixed order).
void logprob_backward(float* dh, float* dw, const float* g, const float* h, const int32_t* src, const int32_t* target,
                      int n, const float* w, int d, int vocab, int chunk_rows = 0, const uint16_t* w16 = nullptr,
                      bool src_distinct = false);
// A training step's head, group by group (core/losses.h head_row_groups; no group over logprob_chunk_rows): a
// group's logits are computed once, its log-probs come to the host, grad(group, logp, g) gives dLoss/dlogp per row,
// and the same logits become dh (rows distinct) and dw, with no second logits product. src/target: host arrays
// of all response rows, which the groups index.
using HeadGradFn = std::function<void(const std::vector<int32_t>& group, const float* logp, float* g)>;
void logprob_train_groups(float* dh, float* dw, const std::vector<std::vector<int32_t>>& groups,
                          const HeadGradFn& grad, const float* h, const std::vector<int32_t>& src,
                          const std::vector<int32_t>& target, const float* w, int d, int vocab, const uint16_t* w16);

// ---- AdamW -----------------------------------------------------------------------------------------------------
// sum of g[i]^2 in double, reduced in a fixed order (same result on every run); the caller takes the sqrt, checks
// it is finite and derives the clip factor, as core/adamw.cpp does.
double sum_squares(const float* g, size_t n);
// One tensor's update, element for element core/adamw.cpp's loop: gi = g*clip; p *= decay; m, v moments;
// p -= step_size * m / (sqrt(v) / bc2_sqrt + eps). decay = 1 - lr*wd for decayed tensors, else 1.
void adamw_step(float* p, const float* g, float* m, float* v, size_t n, float decay, float beta1, float beta2,
                float eps, float step_size, float bc2_sqrt, float clip);

// ---- model glue (embedding.cu, elementwise.cu, score.cu) -------------------------------------------------------
// out[t] = wte[tokens[t]] + wpe[pos[t]] (wpe null: no learned positions), rows x d.
void embedding_forward(float* out, const float* wte, const float* wpe, const int32_t* tokens, const int32_t* pos,
                       int rows, int d);
// dw[ids[k]] += sum of dx rows rows[starts[k] .. starts[k+1]) in that order, for k < n_ids (a CSR index of the rows
// by token id or position, built on the host; ids distinct).
void embedding_backward(float* dw, const float* dx, const int32_t* ids, const int32_t* starts, const int32_t* rows,
                        int n_ids, int d);
void add_inplace(float* y, const float* x, int64_t n);                 // y += x
void scale_inplace(float* y, float s, int64_t n);                      // y *= s
void bias_add(float* out, const float* bias, int rows, int cols);      // out[r, :] += bias
// out[r, :] += bias + x[r, :] (bias null: none): bias_add + add_inplace in one pass.
void bias_residual(float* out, const float* bias, const float* x, int rows, int cols);
// dbias += column sums of dout; `ones` holds `rows` ones (a GEMM does the sums).
void bias_backward(float* dbias, const float* dout, const float* ones, int rows, int cols);
void fill(float* p, float value, int64_t n);
// Reward head: score[s] = h[rows[s]] . w (double accumulation), s < n.
void score_forward(float* score, const float* h, const int32_t* rows, int n, const float* w, int d);
// dh[rows[s]] += g[s] * w; dw += sum_s g[s] * h[rows[s]] (rows distinct).
void score_backward(float* dh, float* dw, const float* g, const float* h, const int32_t* rows, int n, const float* w,
                    int d);

}  // namespace optune::cuda
