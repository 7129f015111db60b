// The CUDA sampler: request checks, device buffers, prefill, the decode loop with CUDA graphs and compaction, and
// the packing of the results (see sampler_cuda.h for the contract).
//
// Streams: all work runs on one blocking stream of this call, so that a decode step can be captured into a graph.
// Its GEMMs use a cuBLAS handle of this file bound to that stream with an explicit workspace (a captured GEMM must
// not allocate). The prefill also calls the shared attention_forward kernel, which runs on the legacy default
// stream; the legacy stream synchronizes with blocking streams, so the order holds without explicit events.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "check.cuh"
#include "core/error.h"
#include "core/pick.h"
#include "core/rng.h"
#include "decode_gemm.h"
#include "lt_gemm.h"
#include "memory.h"
#include "ops.h"
#include "rope_sets.h"
#include "sampler_cuda.h"
#include "sampler_kernels.cuh"

namespace optune::cuda {

namespace {

using namespace sampler;

constexpr int kCompactEvery = 8;       // decode steps between rebuilds of the active set (each costs a sync)
constexpr int kMinBucket = 8;          // smallest decode batch a graph is captured for
constexpr int kPrefillTokens = 8192;   // prompt tokens per prefill chunk (bounds the activation buffers)
constexpr size_t kBlasWorkspace = size_t(32) << 20;

using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// ---- request checks (the CPU sampler's rules and messages) ----------------------------------------------------------

void check_request(const Model& m, const SampleRequest& r) {
  optune::validate_sample_request(m, r);
  const ModelConfig& c = m.cfg;
  OPTUNE_CHECK(c.head_dim <= kAttentionMaxHeadDim && c.head_dim % 2 == 0 && c.n_head % c.n_kv_head == 0,
               "sample: the CUDA sampler needs an even head_dim <= " + std::to_string(kAttentionMaxHeadDim) + " (got " +
                   std::to_string(c.head_dim) + "); sample on the CPU instead");
  OPTUNE_CHECK(c.d_model <= kMaxNormWidth, "sample: the CUDA sampler takes d_model up to " +
                                               std::to_string(kMaxNormWidth) + " (got " + std::to_string(c.d_model) +
                                               "); sample on the CPU instead");
  // the query scale is applied by the q/k norm kernel (only Gemma has a query scale, and it always has q/k norms)
  OPTUNE_CHECK(c.q_scale() == 1.0f || c.qk_norm(), "sample: the CUDA sampler scales q in its q/k norms, and this "
                                                   "model has a query scale without them");
}

// ---- cuBLAS on the sampler's stream ---------------------------------------------------------------------------------

// One handle per host thread (as gemm.cu), bound to the call's stream and workspace for the call's lifetime.
class Blas {
 public:
  Blas(cudaStream_t st, void* workspace, size_t bytes)
      : h_(handle()), ws_(workspace), ws_bytes_(bytes), tf32_(tf32_matmuls()) {  // (a bad knob throws before binding)
    OPTUNE_CUBLAS_CHECK(cublasSetStream(h_, st));
    OPTUNE_CUBLAS_CHECK(cublasSetWorkspace(h_, workspace, bytes));
    // fp32 stays fp32 unless TF32 is asked for (ops.h; bf16 GEMMs do not change)
    OPTUNE_CUBLAS_CHECK(cublasSetMathMode(h_, tf32_ ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  }
  ~Blas() { cublasSetStream(h_, nullptr); }  // also drops the workspace binding (back to cuBLAS's default)
  bool tf32() const { return tf32_; }         // the fp32 GEMMs may run on TF32 tensor cores (OPTUNE_CUDA_TF32)
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // Row-major C[M, N] = A[M, K] op(B) + beta C, with op(B) = B [K, N] (ldb N) or B^T for B [N, K] (ldb K). cuBLAS
  // is column-major, so it computes C^T = op(B)^T A^T (see gemm.cu).
  // ldc: C's row stride (0: N).
  void mm(int M, int N, int K, const float* A, const float* B, bool trans_b, float beta, float* C, int ldc = 0) const {
    const float one = 1.0f;
    OPTUNE_CUBLAS_CHECK(cublasSgemm(h_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, B,
                                    trans_b ? K : N, A, K, &beta, C, ldc ? ldc : N));
  }
  void mm(int M, int N, int K, const bf16* A, const bf16* B, bool trans_b, float beta, float* C, int ldc = 0) const {
    const float one = 1.0f;
    OPTUNE_CUBLAS_CHECK(cublasGemmEx(h_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, B,
                                     CUDA_R_16BF, trans_b ? K : N, A, CUDA_R_16BF, K, &beta, C, CUDA_R_32F,
                                     ldc ? ldc : N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  // The same product in S slices along K (K % S == 0): slice s = A[:, s Ks : (s+1) Ks] op(B)[s Ks : (s+1) Ks, :],
  // Ks = K / S, written to C + s * M * N (ldc N), as one strided-batched GEMM: S times the thread blocks of the
  // unsplit product. The caller's consumer adds the slices (Partials).
  void mm_sliced(int M, int N, int K, const float* A, const float* B, bool trans_b, int S, float* C) const {
    const float one = 1.0f, zero = 0.0f;
    const int Ks = K / S;
    OPTUNE_CUBLAS_CHECK(cublasSgemmStridedBatched(h_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, N, M, Ks, &one,
                                                  B, trans_b ? K : N, slice_stride_b(N, Ks, trans_b), A, K, Ks,
                                                  &zero, C, N, static_cast<long long>(M) * N, S));
  }
  void mm_sliced(int M, int N, int K, const bf16* A, const bf16* B, bool trans_b, int S, float* C) const {
    const float one = 1.0f, zero = 0.0f;
    const int Ks = K / S;
    OPTUNE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        h_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, N, M, Ks, &one, B, CUDA_R_16BF, trans_b ? K : N,
        slice_stride_b(N, Ks, trans_b), A, CUDA_R_16BF, K, Ks, &zero, C, CUDA_R_32F, N,
        static_cast<long long>(M) * N, S, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  // The same without a workspace, which rules out cuBLAS's split-K algorithms. For the LM head of a decode step
  // (a few dozen rows x 50k-150k vocabulary x d) cuBLAS picked a split-K GEMM whose reduction alone took 145-187 us
  // of a 1-1.4 ms step on an H100 (its whole weight read is ~26 us at bf16).
  template <class T>
  void mm_unsplit(int M, int N, int K, const T* A, const T* B, bool trans_b, float beta, float* C, int ldc) const {
    OPTUNE_CUBLAS_CHECK(cublasSetWorkspace(h_, nullptr, 0));
    try {
      mm(M, N, K, A, B, trans_b, beta, C, ldc);
    } catch (...) {
      cublasSetWorkspace(h_, ws_, ws_bytes_);
      throw;
    }
    OPTUNE_CUBLAS_CHECK(cublasSetWorkspace(h_, ws_, ws_bytes_));
  }

 private:
  // From one K-slice of B to the next: Ks rows of B [K, N], or Ks columns of B [N, K].
  static long long slice_stride_b(int N, int Ks, bool trans_b) {
    return trans_b ? Ks : static_cast<long long>(Ks) * N;
  }
  static cublasHandle_t handle() {
    thread_local cublasHandle_t h = [] {
      cublasHandle_t created = nullptr;
      OPTUNE_CUBLAS_CHECK(cublasCreate(&created));
      return created;
    }();
    return h;
  }
  cublasHandle_t h_;
  void* ws_;
  size_t ws_bytes_;
  bool tf32_;  // OPTUNE_CUDA_TF32 as the call began
};

class Stream {
 public:
  Stream() { OPTUNE_CUDA_CHECK(cudaStreamCreate(&s_)); }  // blocking: ordered with the legacy default stream
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec() {
    if (exec_) cudaGraphExecDestroy(exec_);
  }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  // Captures fn's work on st into the graph; the work itself does not run.
  template <class Fn>
  void capture(cudaStream_t st, const Fn& fn) {
    cudaGraph_t g = nullptr;
    OPTUNE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    try {
      fn();
    } catch (...) {
      cudaStreamEndCapture(st, &g);  // leave the stream usable before reporting
      if (g) cudaGraphDestroy(g);
      throw;
    }
    OPTUNE_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    const cudaError_t err = cudaGraphInstantiate(&exec_, g, 0);
    cudaGraphDestroy(g);
    OPTUNE_CUDA_CHECK(err);
  }
  bool ready() const { return exec_ != nullptr; }
  void launch(cudaStream_t st) const { OPTUNE_CUDA_CHECK(cudaGraphLaunch(exec_, st)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Whether environment variable `name` is set to `value` (the on/off knobs below).
bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, value) == 0;
}

bool graphs_enabled() { return !env_is("OPTUNE_CUDA_GRAPHS", "0"); }

// ---- K-split decode GEMMs ------------------------------------------------------------------------------------------
// A decode step's GEMM [M rows (a few dozen), N, K] runs on a handful of SMs unsplit (see Partials). Split along K in
// S slices, it runs S times the thread blocks and the consumer of its output adds the slices. S is chosen so that
// the blocks about fill the GPU once, each slice stays at least kSliceMinDepth deep, and the slices' traffic (written
// once, read once, fp32) stays within the weights' own bytes.
// Measured on an H200 at GPT-2 124M's shape (bench_cuda_sample, 3 runs): that choice (3 and 12 slices) lost 2-8%
// of bf16 sampling against unsplit GEMMs and tied in fp32 (the slices' extra traffic and the consumers' reads cost
// what the fuller GPU saved), so decode GEMMs are unsplit unless asked.
// With decode_gemm.cu's kernel (OPTUNE_CUDA_DECODE_GEMM=own below), whose blocks are 64 columns wide, GPT-2's N =
// 768 projections would run on 12 SMs unsplit, so there the automatic choice is the default.
// On cuBLASLt (the bf16 default) the library splits a GEMM along K itself and adds the slices in a reduction kernel of
// its own: 2.9 us a layer after GPT-2's MLP output projection (64 x 768 x 3072) on an H200. There the sampler splits
// the projections into the residual stream whose inner dimension is at least twice their output's, K / N slices as
// one strided-batched GEMM (lt_split), and the next norm adds them with the projection's bias; cuBLASLt keeps its
// choice for the others. On an H100 (13th session) that GEMM took 6.4 us against cuBLASLt's 6.5 + 3.4 for its
// reduction, the norms 0.3 us more on average, and bf16 sampling's decode 74.6 ms against 76.7-78.0 (Nsight; A/B).
// OPTUNE_CUDA_SPLIT_K: unset: "auto" with decode_gemm.cu's kernel or cuBLASLt, else "1"; "1": never split (cuBLASLt
// splits as it likes); "auto": the choices above; S > 1: S slices (or the most that divide K into multiples of 8) for
// every cuBLAS and own decode GEMM whatever the shape (tests, and A/B runs of the benchmark), and for cuBLASLt's
// projections that it would split.
constexpr int kSliceMinDepth = 128;
constexpr int kSplitMax = 64;

int split_k_setting(bool auto_by_default) {  // 0: auto
  const char* v = std::getenv("OPTUNE_CUDA_SPLIT_K");
  if (!v || std::string(v).empty()) return auto_by_default ? 0 : 1;
  if (std::string(v) == "auto") return 0;
  const int s = std::atoi(v);
  OPTUNE_CHECK(s >= 1 && s <= kSplitMax, "OPTUNE_CUDA_SPLIT_K must be auto or a slice count from 1 to " +
                                             std::to_string(kSplitMax) + " (got '" + std::string(v) + "')");
  return s;
}

int sm_count() {
  int dev = 0, n = 0;
  OPTUNE_CUDA_CHECK(cudaGetDevice(&dev));
  OPTUNE_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// OPTUNE_CUDA_DECODE_GEMM: unset or "lt": a bf16 decode step's GEMMs on cuBLASLt (lt_gemm.h), GPT-2's MLP input
// projection with its bias and GELU in the GEMM's epilogue (no bias_gelu kernel); "cublas": every decode GEMM on
// cuBLAS; "own": those with at most kDecodeGemmMaxRows rows on decode_gemm.cu's kernel (shapes it does not take stay
// on cuBLAS). fp32 always runs on cuBLAS. Measured on an H200 at GPT-2 124M's shape (bench_cuda_sample, bf16, 64 x
// 128 new tokens, 11th session): lt 103.2k tok/s, cuBLAS 100.2k, own with the automatic K-split 86.9k, own unsplit
// 49.3k. (Timing each shape's algorithm among the heuristic's candidates with the same bits gave 103.5k: within
// run-to-run change, so it went.)
// Also measured there: the own kernel for the two projections into the residual stream only (whose K-slices the next
// norm adds, so no reduction kernel after the MLP projection), cuBLASLt for the others: 99.7k. The own kernels took
// 7.5 us (attention projection, 3 slices) and 10.0 us (MLP projection, 8 slices) against cuBLASLt's 6.1 and 7.5 + 4.7
// for its reduction, but the norms reading the slices 6.3 us instead of 4.0 (Nsight).
enum class DecodeGemm { kLt, kCublas, kOwn };
DecodeGemm decode_gemm_setting() {
  const char* v = std::getenv("OPTUNE_CUDA_DECODE_GEMM");
  if (!v || !*v || std::strcmp(v, "lt") == 0) return DecodeGemm::kLt;
  if (std::strcmp(v, "cublas") == 0) return DecodeGemm::kCublas;
  if (std::strcmp(v, "own") == 0) return DecodeGemm::kOwn;
  throw Error("OPTUNE_CUDA_DECODE_GEMM must be lt, cublas or own (got '" + std::string(v) + "')");
}

// OPTUNE_CUDA_PDL: unset or "1": a decode step's own kernels (embedding, norms, decode attention, MLP activation, and
// the decode GEMMs under OPTUNE_CUDA_DECODE_GEMM=own) launch early (programmatic dependent launch, launch.h): each
// may start while the kernel before it finishes, its constant loads (weights) first; "0": they launch as usual. Only
// on compute capability 9.0 and up, with kernels compiled for sm_90 or later (kernels_wait_when_early); cuBLAS's and
// cuBLASLt's kernels launch as usual. Same results either way. On an H200 (bench_cuda_sample, GPT-2 124M bf16) it
// gained 0.9% to 1.4% in four runs (the last 104.5k tok/s against 103.1k, with cuBLASLt's GEMMs), where one setting
// measured twice differed by 0.1%; so on by default since the 11th session.
bool early_launch_setting() {
  const char* v = std::getenv("OPTUNE_CUDA_PDL");
  const bool on = !v || !*v || std::strcmp(v, "1") == 0;
  OPTUNE_CHECK(on || std::strcmp(v, "0") == 0, "OPTUNE_CUDA_PDL must be 0 or 1 (got '" + std::string(v) + "')");
  return on && kernels_wait_when_early();
}

// s slices of K, or the most below s that divide K into multiples of 8 (equal slices, 16-byte aligned bf16 starts).
int whole_slices(int s, int K) {
  s = std::max(1, std::min(s, K / 8));
  while (s > 1 && (K % s != 0 || (K / s) % 8 != 0)) s--;
  return s;
}

// Slices for a decode GEMM [M, N, K] with weights of `weight_bytes` per element (setting: split_k_setting()), whose
// blocks are tile_n columns wide (cuBLAS's for few rows: 128, an estimate; decode_gemm.cu's: 64).
int split_for(int setting, int sms, int M, int N, int K, int weight_bytes, int tile_n) {
  int s = setting;
  if (s == 0) {
    const int blocks = ((M + 63) / 64) * ((N + tile_n - 1) / tile_n);
    s = std::max(1, sms / blocks);
    s = std::min(s, K / kSliceMinDepth);
    s = std::min(s, K * weight_bytes / (8 * std::max(M, 1)));  // 2 * S * M * N * 4 bytes <= K * N * weight_bytes
  }
  return whole_slices(s, K);
}

// Slices for a cuBLASLt decode GEMM [., N, K] writing to the residual stream (see above): K / N when K >= 2N
// (setting 0), else 1.
int lt_split(int setting, int N, int K) {
  if (setting == 1 || K < 2 * N) return 1;
  return whole_slices(setting == 0 ? K / N : setting, K);
}

// ---- one call -------------------------------------------------------------------------------------------------------

// Everything a call needs on the device, allocated up front. Act: the dtype of GEMM inputs (float or bf16).
template <class Act>
class Sampler {
 public:
  Sampler(const Model& m, const SamplerWeights& w, const SampleRequest& r)
      : c_(m.cfg), L_(m.layout), w_(w), r_(r), blas_ws_(kBlasWorkspace, "cuBLAS workspace (sampler)"),
        blas_(stream_.get(), blas_ws_.data(), kBlasWorkspace) {
    const DecodeGemm gemms = decode_gemm_setting();
    own_gemm_ = !std::is_same_v<Act, float> && gemms == DecodeGemm::kOwn;
    if (own_gemm_) decode_gemm_prepare();
    if (!std::is_same_v<Act, float> && gemms == DecodeGemm::kLt)  // (it shares the workspace: the GEMMs run in turn)
      lt_ = std::make_unique<LtGemms>(stream_.get(), blas_ws_.data(), kBlasWorkspace);
    split_setting_ = split_k_setting(own_gemm_ || lt_);
    early_launch_ = early_launch_setting();
    sms_ = sm_count();
    n_prompts_ = static_cast<int>(r.prompt_offsets.size()) - 1;
    K_ = r.n_samples;
    R_ = n_prompts_ * K_;
    D_ = c_.d_model, V_ = c_.vocab_size, F_ = c_.d_ff, QD_ = c_.q_dim(), KVD_ = c_.kv_dim();
    LV_ = logits_stride(V_);
    int max_prompt = 0;
    for (int i = 0; i < n_prompts_; i++) max_prompt = std::max(max_prompt, prompt_len(i));
    cap_ = max_prompt + r.max_new_tokens;
    max_rows_ = std::max(R_, std::max(max_prompt, std::min(static_cast<int>(r.prompt_tokens.size()), kPrefillTokens)));
    params_.seed = r.seed, params_.temperature = r.temperature, params_.top_k = r.top_k, params_.top_p = r.top_p;
    params_.vocab = drawable_vocab(r, V_);
    params_.full_vocab = V_;
    params_.logits_ld = LV_;
    allocate();
  }

  SampleResult run(SamplerStats* stats) {
    const auto t0 = Clock::now();
    init_state();
    prefill();
    order_rows(n_prompts_);
    pick_tokens(logits_.data(), K_, sorted_.data(), R_, state_, params_, st());
    sync();
    const auto t1 = Clock::now();
    int steps = 0, graphs = 0, bucket = 0, eager = 0;
    double capture_ms = 0, sync_ms = 0;
    std::map<int, GraphExec> execs;
    std::map<int, int> runs;  // eager runs per bucket: the first run is eager, the next ones replay a graph
    bool use_graphs = graphs_enabled();
    std::string graph_error;
    for (int step = 1; step < r_.max_new_tokens; step++) {
      if ((step - 1) % kCompactEvery == 0) {
        compact_active(state_, st());
        const auto ts = Clock::now();
        const int n_active = read_ctl();  // a sync; reports non-finite logits
        sync_ms += ms_between(ts, Clock::now());
        if (n_active == 0) break;
        bucket = bucket_for(n_active);
      }
      GraphExec& g = execs[bucket];
      if (g.ready()) {
        g.launch(st());
      } else if (use_graphs && runs[bucket] > 0) {
        try {
          const auto tc = Clock::now();
          g.capture(st(), [&] { decode_step(bucket); });
          capture_ms += ms_between(tc, Clock::now());
          g.launch(st());
          graphs++;
        } catch (const Error& e) {
          // A capture that fails (nothing ran) leaves the call correct but slower: the rest runs eagerly, and the
          // stats say why (test_cuda_sampler expects graphs, so this cannot pass unnoticed).
          cudaGetLastError();
          use_graphs = false;
          graph_error = e.what();
          decode_step(bucket);
          eager++;
        }
      } else {
        decode_step(bucket);
        runs[bucket]++;
        eager++;
      }
      steps++;
    }
    read_ctl();
    const auto t2 = Clock::now();
    SampleResult res = collect();
    if (stats) {
      stats->device_bytes = bytes_;
      stats->prefill_ms = ms_between(t0, t1);
      stats->decode_ms = ms_between(t1, t2);
      stats->capture_ms = capture_ms;
      stats->sync_ms = sync_ms;
      stats->eager_steps = eager;
      stats->collect_ms = ms_between(t2, Clock::now());
      stats->decode_steps = steps;
      stats->graphs = graphs;
      stats->graph_error = graph_error;
      stats->max_split = max_split_;
      stats->own_gemms = own_gemms_;
      stats->early_launch = early_launch_;
      stats->row_sorts = row_sorts_;
      stats->lt_gemms = lt_gemms_;
      stats->tf32 = std::is_same_v<Act, float> && blas_.tf32();
    }
    return res;
  }

 private:
  int prompt_len(int i) const { return r_.prompt_offsets[i + 1] - r_.prompt_offsets[i]; }
  cudaStream_t st() const { return stream_.get(); }
  // Where a kernel of blocks() and head() goes: early (PDL, launch.h) in a decode step unless OPTUNE_CUDA_PDL=0.
  Launch on() const { return {st(), decoding_ && early_launch_}; }
  void sync() const { OPTUNE_CUDA_CHECK(cudaStreamSynchronize(st())); }
  const float* P(size_t off) const { return off == kAbsent ? nullptr : w_.f32 + off; }
  const Act* W(size_t off) const {
    if constexpr (std::is_same_v<Act, float>)
      return w_.f32 + off;
    else
      return reinterpret_cast<const bf16*>(w_.bf16) + off;
  }

  template <class T>
  Buffer<T> alloc(size_t n, const char* what) {
    bytes_ += n * sizeof(T);
    return Buffer<T>(n, what);
  }

  void allocate() {
    const size_t rows = static_cast<size_t>(max_rows_);
    const size_t cache = static_cast<size_t>(c_.n_layer) * (R_ + 1) * cap_ * KVD_;
    kc_ = alloc<Act>(cache, "KV cache keys (sampler: layers x responses x (prompt + maxNewTokens) x kv_dim)");
    vc_ = alloc<Act>(cache, "KV cache values (sampler)");
    x_ = alloc<float>(rows * D_, "sampler residual stream");
    hn_ = alloc<Act>(rows * D_, "sampler norm output");
    qkv_ = alloc<float>(rows * (QD_ + 2 * KVD_), "sampler q|k|v");
    atty_ = alloc<float>(rows * QD_, "sampler attention output");
    if constexpr (!std::is_same_v<Act, float>) atty_act_ = alloc<Act>(rows * QD_, "sampler attention output (bf16)");
    lse_ = alloc<float>(rows * c_.n_head, "sampler attention lse");
    fc_ = alloc<float>(rows * F_, "sampler MLP pre-activation");
    part_capacity_ = partials_capacity();
    if (part_capacity_ > 0) part_ = alloc<float>(part_capacity_, "sampler K-split GEMM slices");
    if (c_.is_llama()) up_ = alloc<float>(rows * F_, "sampler MLP up projection");
    if (c_.post_norms()) post_ = alloc<float>(rows * D_, "sampler sublayer output (post-norms)");
    act_ = alloc<Act>(rows * F_, "sampler MLP activation");
    hf_ = alloc<Act>(static_cast<size_t>(R_) * D_, "sampler final norm");
    logits_ = alloc<float>(static_cast<size_t>(R_) * LV_, "sampler logits (responses x vocab)");
    const RopeSets rs = rope_sets(c_);  // RoPE's rotations at every position the call reaches, per frequency set
    rope_layer_set_ = rs.layer_set;
    if (rs.n_sets() > 0) {
      rope_freqs_ = alloc<double>(rs.freqs.size(), "sampler RoPE frequencies");
      rope_freqs_.upload(rs.freqs);
      rope_ = alloc<float2>(static_cast<size_t>(rs.n_sets()) * cap_ * rs.half, "sampler RoPE rotations");
      for (int set = 0; set < rs.n_sets(); set++)
        rope_table(rope_.data() + static_cast<size_t>(set) * cap_ * rs.half, cap_, c_.head_dim,
                   rope_freqs_.data() + static_cast<size_t>(set) * rs.half, st());
    }
    if (params_.filtered()) {  // the sorted vocabulary and the sort's scratch
      const int drawable = params_.vocab;  // only the ids a draw may pick are ordered
      sorted_ = alloc<int32_t>(static_cast<size_t>(R_) * drawable, "sampler sorted vocabulary (top-k / top-p)");
      sort_.max_rows = sort_chunk_rows(R_, drawable);
      const size_t n = static_cast<size_t>(sort_.max_rows) * drawable;
      sort_keys_in_ = alloc<uint64_t>(n, "sampler sort keys");
      sort_keys_out_ = alloc<uint64_t>(n, "sampler sort keys");
      sort_vals_in_ = alloc<int32_t>(n, "sampler sort values");
      sort_.temp_bytes = sort_temp_bytes(sort_.max_rows, drawable);
      sort_temp_ = alloc<char>(sort_.temp_bytes, "sampler sort temp storage");
      sort_.keys_in = sort_keys_in_.data(), sort_.keys_out = sort_keys_out_.data();
      sort_.vals_in = sort_vals_in_.data(), sort_.temp = sort_temp_.data();
    }
    prompt_tok_ = alloc<int32_t>(r_.prompt_tokens.size(), "sampler prompt tokens");
    prompt_pos_ = alloc<int32_t>(r_.prompt_tokens.size(), "sampler prompt positions");
    prompt_slot_ = alloc<int32_t>(r_.prompt_tokens.size(), "sampler prompt slots");
    chunk_off_ = alloc<int32_t>(2 * static_cast<size_t>(n_prompts_) + 1, "sampler prefill offsets");
    last_row_ = alloc<int32_t>(n_prompts_, "sampler prompt last rows");
    row_tok_ = alloc<int32_t>(R_, "sampler decode tokens");
    row_pos_ = alloc<int32_t>(R_, "sampler decode positions");
    row_slot_ = alloc<int32_t>(R_, "sampler decode slots");
    len_ = alloc<int32_t>(R_ + 1, "sampler lengths");
    n_out_ = alloc<int32_t>(R_ + 1, "sampler counts");
    finished_ = alloc<uint8_t>(R_ + 1, "sampler finished flags");
    out_tok_ = alloc<int32_t>(static_cast<size_t>(R_) * r_.max_new_tokens, "sampler output tokens");
    out_logp_ = alloc<float>(static_cast<size_t>(R_) * r_.max_new_tokens, "sampler output log-probs");
    stream_keys_ = alloc<uint64_t>(R_, "sampler random streams");
    active_ = alloc<int32_t>(R_, "sampler active set");
    ctl_ = alloc<int32_t>(2, "sampler control");
    stop_ = alloc<int32_t>(r_.stop_tokens.size(), "sampler stop tokens");
  }

  void init_state() {
    std::vector<int32_t> len(R_ + 1, 0), active(R_);
    std::vector<uint8_t> finished(R_ + 1, 0);
    std::vector<uint64_t> keys(R_);
    for (int s = 0; s < R_; s++) {
      len[s] = prompt_len(s / K_);
      active[s] = s;
      // the CPU sampler's stream of sample k of a prompt (core/sampler.cpp)
      const uint64_t id = r_.stream_ids.empty() ? static_cast<uint64_t>(s / K_) : r_.stream_ids[s / K_];
      keys[s] = mix64(id) ^ mix64(0x5851F42D4C957F2Dull + static_cast<uint64_t>(s % K_));
    }
    finished[R_] = 1;  // the padding slot
    len_.upload(len);
    finished_.upload(finished);
    n_out_.zero();
    active_.upload(active);
    stream_keys_.upload(keys);
    ctl_.upload({R_, INT_MAX});
    stop_.upload(r_.stop_tokens);
    state_.len = len_.data(), state_.n_out = n_out_.data(), state_.finished = finished_.data();
    state_.out_tok = out_tok_.data(), state_.out_logp = out_logp_.data(), state_.stream = stream_keys_.data();
    state_.active = active_.data(), state_.ctl = ctl_.data(), state_.stop = stop_.data();
    state_.n_stop = static_cast<int>(r_.stop_tokens.size()), state_.R = R_, state_.max_new = r_.max_new_tokens;
  }

  // Number of active responses; throws the CPU sampler's error when some logits were not finite.
  int read_ctl() {
    int32_t ctl[2];
    OPTUNE_CUDA_CHECK(cudaMemcpyAsync(ctl, ctl_.data(), sizeof ctl, cudaMemcpyDeviceToHost, st()));
    sync();
    OPTUNE_CHECK(ctl[1] == INT_MAX, "sample: the model produced non-finite logits (NaN or Inf) at step " +
                                        std::to_string(ctl[1]) + "; its weights have diverged: reload the last good "
                                        "checkpoint and lower the learning rate");
    return ctl[0];
  }

  int bucket_for(int n_active) const {
    int b = kMinBucket;
    while (b < n_active) b *= 2;
    return std::min(b, R_);
  }

  LayerCache<Act> cache(int l) {
    const size_t layer = static_cast<size_t>(R_ + 1) * cap_ * KVD_;
    return {kc_.data() + l * layer, vc_.data() + l * layer, cap_};
  }

  // The decode GEMMs as (N, K), in groups whose slices are alive at the same time (split along K, a group's slices
  // wait in part_ for the kernel that consumes them): q|k|v, the attention projection, the MLP's input projection(s),
  // its output projection. blocks() runs exactly these.
  std::vector<std::vector<std::pair<int, int>>> decode_gemm_groups() const {
    if (c_.is_gpt2()) return {{{3 * D_, D_}}, {{D_, QD_}}, {{F_, D_}}, {{D_, F_}}};
    return {{{QD_, D_}, {KVD_, D_}, {KVD_, D_}}, {{D_, QD_}}, {{F_, D_}, {F_, D_}}, {{D_, F_}}};
  }
  // Whether a decode GEMM of `rows` rows runs on decode_gemm.cu's kernel (its alignment is checked at the call).
  bool own_gemm(int rows) const { return own_gemm_ && rows <= kDecodeGemmMaxRows; }
  int split(int rows, int n, int k) const { return decoding_ ? slices_for(rows, n, k) : 1; }
  // A decode GEMM's K-slices. On cuBLASLt only a projection into the residual stream (N = d) whose inner dimension
  // is at least twice its output's (GPT-2's MLP output, K = 4N) is split, into K / N slices by default (lt_split);
  // the library splits the others, or not, itself (GQA's k and v projections, K >= 2N too, among them).
  int slices_for(int rows, int n, int k) const {
    if (lt_) return n == D_ ? lt_split(split_setting_, n, k) : 1;
    return split_for(split_setting_, sms_, rows, n, k, sizeof(Act), own_gemm(rows) ? 64 : 128);
  }
  // Floats of part_: the largest group's slices over every batch bucket a decode step can run.
  size_t partials_capacity() const {
    size_t most = 0;
    for (int b = kMinBucket;; b *= 2) {
      const int rows = std::min(b, R_);
      for (const auto& group : decode_gemm_groups()) {
        size_t floats = 0;
        for (const auto& [n, k] : group) {
          const int S = slices_for(rows, n, k);
          if (S > 1) floats += static_cast<size_t>(S) * rows * n;
        }
        most = std::max(most, floats);
      }
      if (b >= R_) break;
    }
    return most;
  }

  // out[rows, out_f] (+)= in[rows, in_f] W: GPT-2's Conv1D weights are [in, out], nn.Linear's [out, in]. In a decode
  // step the product may be split along in_f (split()): its slices, each in out's layout, go to part_ at *cursor
  // (advanced past them; a group starts at 0), out is left alone and the returned Partials name the slices. Unsplit,
  // the returned Partials is empty: out holds the product (beta 0) or has it added (beta 1).
  Partials linear(float* out, const Act* in, size_t w_off, int rows, int in_f, int out_f, float beta,
                  size_t* cursor) {
    const int S = split(rows, out_f, in_f);
    float* slices = nullptr;
    if (S > 1) {
      const size_t floats = static_cast<size_t>(S) * rows * out_f;
      OPTUNE_CHECK(*cursor + floats <= part_capacity_, "internal: a K-split GEMM outside decode_gemm_groups()");
      slices = part_.data() + *cursor;
      *cursor += floats;
    }
    if constexpr (!std::is_same_v<Act, float>) {
      float* dst = S > 1 ? slices : out;
      const auto* a = reinterpret_cast<const uint16_t*>(in);
      const auto* b = reinterpret_cast<const uint16_t*>(W(w_off));
      if (decoding_ && lt_) {
        const auto* a16 = reinterpret_cast<const bf16*>(in);
        const auto* b16 = reinterpret_cast<const bf16*>(W(w_off));
        lt_gemms_++;
        if (S == 1) {
          lt_->mm(rows, out_f, in_f, a16, b16, c_.is_llama(), beta, out, out_f);
          return {};
        }
        lt_->mm_sliced(rows, out_f, in_f, a16, b16, c_.is_llama(), S, slices);
        max_split_ = std::max(max_split_, S);
        return {slices, S, static_cast<int64_t>(rows) * out_f};
      }
      if (decoding_ && own_gemm(rows) && decode_gemm_fits(rows, out_f, in_f, S, a, b, dst, out_f)) {
        decode_gemm(rows, out_f, in_f, a, b, c_.is_llama(), beta, dst, out_f, S, static_cast<int64_t>(rows) * out_f,
                    on());
        own_gemms_++;
        max_split_ = std::max(max_split_, S);
        return S > 1 ? Partials{slices, S, static_cast<int64_t>(rows) * out_f} : Partials{};
      }
    }
    if (S == 1) {
      blas_.mm(rows, out_f, in_f, in, W(w_off), c_.is_llama(), beta, out);
      return {};
    }
    blas_.mm_sliced(rows, out_f, in_f, in, W(w_off), c_.is_llama(), S, slices);
    max_split_ = std::max(max_split_, S);
    return {slices, S, static_cast<int64_t>(rows) * out_f};
  }

  // What the last block's output still lacks: its projection's bias and, when that GEMM was split, its slices.
  struct Pending {
    const float* bias = nullptr;
    Partials parts;
  };

  struct PrefillChunk {
    const int32_t* offsets;  // [n_seq + 1], relative to the chunk
    int n_seq, max_len;
  };

  // The blocks over `rows`, whose embeddings are in x_: attention over the cache (decode) or causal over the
  // chunk's prompts (prefill). The residual stream is left in x_; returns what the last GEMM still has to add to
  // it, for the final norm.
  //
  // Post-norms (OLMo 2, Gemma 3): each sublayer's normalized output is added to x_ by post_norm_add, so nothing is
  // left pending. Without pre-norms (OLMo 2) each GEMM reads the residual stream itself, which hn_ holds in Act
  // (converted for layer 0; after that written by post_norm_add); with them (Gemma) a pre-norm reads x_ next.
  Pending blocks(const Rows& rows, const PrefillChunk* pf) {
    const int n = rows.n, H = c_.n_head, KVH = c_.n_kv_head, hd = c_.head_dim;
    const bool gpt2 = c_.is_gpt2(), pre = c_.pre_norms(), post = c_.post_norms();
    const float off = c_.norm_offset();
    Act* const post_out = pre ? nullptr : hn_.data();  // where post_norm_add writes x_ in Act, if anywhere
    Pending pending;
    if (!pre) convert<Act>(hn_.data(), x_.data(), static_cast<int64_t>(n) * D_, st());
    for (int l = 0; l < c_.n_layer; l++) {
      const LayerOffsets& o = L_.layers[l];
      if (pre)
        add_norm<Act>(hn_.data(), x_.data(), nullptr, pending.bias, pending.parts, P(o.norm1_w), P(o.norm1_b), n,
                      D_, c_.norm_eps, gpt2, off, on());
      float *q = qkv_.data(), *k, *v;
      int qs, ks, vs;
      const float *bq, *bk, *bv;
      Partials pq, pk, pv;
      size_t cursor = 0;
      if (gpt2) {  // fused c_attn [D, 3D]: q | k | v side by side in each row
        pq = linear(q, hn_.data(), o.qkv_w, n, D_, 3 * D_, 0.0f, &cursor);
        pk = pq.at(D_), pv = pq.at(2 * D_);
        k = q + D_, v = q + 2 * D_, qs = ks = vs = 3 * D_;
        bq = P(o.qkv_b), bk = bq ? bq + D_ : nullptr, bv = bq ? bq + 2 * D_ : nullptr;
      } else {  // q [n, QD] | k [n, KVD] | v [n, KVD] as three blocks
        k = q + static_cast<size_t>(n) * QD_, v = k + static_cast<size_t>(n) * KVD_, qs = QD_, ks = vs = KVD_;
        pq = linear(q, hn_.data(), o.q_w, n, D_, QD_, 0.0f, &cursor);
        pk = linear(k, hn_.data(), o.k_w, n, D_, KVD_, 0.0f, &cursor);
        pv = linear(v, hn_.data(), o.v_w, n, D_, KVD_, 0.0f, &cursor);
        bq = P(o.q_b), bk = P(o.k_b), bv = P(o.v_b);
      }
      if (c_.qk_norm()) {  // q and k finished and normalized here (q scaled too); the attention adds nothing to them
        const int qw = c_.q_norm_width(), kw = c_.k_norm_width();
        qk_norm(q, qs, k, ks, pq, pk, bq, bk, P(o.q_norm_w), P(o.k_norm_w), n, QD_ / qw, qw, KVD_ / kw, kw,
                c_.norm_eps, off, c_.q_scale(), st());
        pq = pk = Partials{};
        bq = bk = nullptr;
      }
      Act* att = attention_out();
      if (pf) {
        qkv_finish(q, qs, k, ks, v, vs, pq, pk, pv, bq, bk, bv, rows, H, KVH, hd, layer_rope(l), cache(l), st());
        attention_forward(atty_.data(), lse_.data(), q, qs, k, ks, v, vs, pf->offsets, pf->n_seq, pf->max_len, H, KVH,
                          hd, !std::is_same_v<Act, float>, {}, c_.layer_window(l));
        if constexpr (!std::is_same_v<Act, float>) convert<Act>(att, atty_.data(), static_cast<int64_t>(n) * QD_, st());
      } else {  // the q/k/v finishing happens inside the decode attention
        const QkvRows in{q, k, v, qs, ks, vs, pq, pk, pv, bq, bk, bv};
        attention_decode<Act>(att, in, cache(l), rows, H, KVH, hd, layer_rope(l), c_.layer_window(l), on());
      }
      cursor = 0;  // x += attention projection (its bias, and its slices when split: the next norm adds them)
      if (post) {
        const Partials po = linear(post_.data(), att, o.o_w, n, QD_, D_, 0.0f, &cursor);
        post_norm_add<Act>(x_.data(), post_out, post_.data(), po, P(o.o_b), P(o.post_attn_norm_w), n, D_,
                           c_.norm_eps, off, st());
        if (pre)
          add_norm<Act>(hn_.data(), x_.data(), nullptr, nullptr, Partials{}, P(o.norm2_w), P(o.norm2_b), n, D_,
                        c_.norm_eps, gpt2, off, on());
      } else {
        const Partials po = linear(x_.data(), att, o.o_w, n, QD_, D_, 1.0f, &cursor);
        add_norm<Act>(hn_.data(), x_.data(), nullptr, P(o.o_b), po, P(o.norm2_w), P(o.norm2_b), n, D_, c_.norm_eps,
                      gpt2, off, on());
      }
      cursor = 0;
      if (gpt2 && decoding_ && lt_) {  // bias and GELU inside the GEMM, written as the next GEMM's input
        lt_bias_gelu(act_.data(), hn_.data(), o, n);
      } else if (gpt2) {
        const Partials pfc = linear(fc_.data(), hn_.data(), o.fc_w, n, D_, F_, 0.0f, &cursor);
        bias_gelu<Act>(act_.data(), fc_.data(), pfc, P(o.fc_b), n, F_, on());
      } else {
        const Partials pfc = linear(fc_.data(), hn_.data(), o.fc_w, n, D_, F_, 0.0f, &cursor);
        const Partials pup = linear(up_.data(), hn_.data(), o.up_w, n, D_, F_, 0.0f, &cursor);
        swiglu<Act>(act_.data(), fc_.data(), pfc, up_.data(), pup, static_cast<int64_t>(n) * F_, c_.is_gemma(),
                    on());
      }
      cursor = 0;  // x += MLP output (its bias and slices: the next norm)
      if (post) {
        const Partials pm = linear(post_.data(), act_.data(), o.proj_w, n, F_, D_, 0.0f, &cursor);
        post_norm_add<Act>(x_.data(), post_out, post_.data(), pm, P(o.proj_b), P(o.post_mlp_norm_w), n, D_,
                           c_.norm_eps, off, st());
      } else {
        pending.parts = linear(x_.data(), act_.data(), o.proj_w, n, F_, D_, 1.0f, &cursor);
        pending.bias = P(o.proj_b);
      }
    }
    return pending;
  }

  // act[n, F] = gelu(in W_fc + b_fc) on cuBLASLt (bf16 only: lt_ exists only then).
  void lt_bias_gelu(Act* act, const Act* in, const LayerOffsets& o, int n) {
    if constexpr (!std::is_same_v<Act, float>) {
      lt_->mm_bias_gelu(n, F_, D_, in, W(o.fc_w), c_.is_llama(), W(o.fc_b), act);  // (GPT-2 always has b_fc)
      lt_gemms_++;
    }
  }

  // Layer l's rotations (rope_table's, of its frequency set); null when the layer does not rotate.
  const float2* layer_rope(int l) const {
    const int set = rope_layer_set_[l];
    return set < 0 ? nullptr : rope_.data() + static_cast<size_t>(set) * cap_ * (c_.head_dim / 2);
  }

  Act* attention_out() {
    if constexpr (std::is_same_v<Act, float>)
      return atty_.data();
    else
      return atty_act_.data();
  }

  // logits[n, V] of the residual rows src (null: rows 0 .. n-1), through the final norm and the LM head (its GEMM
  // in the call's precision, as the device model's log-probs: the sampled tokens' log-probs match them).
  void head(float* logits, const int32_t* src, int n, const Pending& pending) {
    const int bulk = vocab_bulk(V_);  // the aligned bulk of the vocabulary by GEMM, the rest by the norm (ops.h)
    HeadTail<Act> tail;
    if (V_ > bulk) tail = {W(L_.lm_head + static_cast<size_t>(bulk) * D_), logits + bulk, V_ - bulk, LV_};
    add_norm<Act>(hf_.data(), x_.data(), src, pending.bias, pending.parts, P(L_.normf_w), P(L_.normf_b), n, D_,
                  c_.norm_eps, c_.is_gpt2(), c_.norm_offset(), on(), tail);
    if (bulk > 0) blas_.mm_unsplit(n, bulk, D_, hf_.data(), W(L_.lm_head), true, 0.0f, logits, LV_);
  }

  // All prompts through the model in chunks of at most kPrefillTokens tokens (a longer prompt is a chunk of its
  // own); each prompt's keys and values land in its K slots, its last row's logits in logits_ row i.
  void prefill() {
    const std::vector<int32_t>& off = r_.prompt_offsets;
    const size_t T = r_.prompt_tokens.size();
    std::vector<int32_t> pos(T), slot(T), last(n_prompts_), chunk_off;
    std::vector<std::pair<int, int>> chunks;
    for (int p0 = 0; p0 < n_prompts_;) {
      int p1 = p0 + 1;
      while (p1 < n_prompts_ && off[p1 + 1] - off[p0] <= kPrefillTokens) p1++;
      chunks.push_back({p0, p1});
      for (int i = p0; i <= p1; i++) chunk_off.push_back(off[i] - off[p0]);
      for (int i = p0; i < p1; i++) {
        last[i] = off[i + 1] - 1 - off[p0];
        for (int t = off[i]; t < off[i + 1]; t++) pos[t] = t - off[i], slot[t] = i * K_;
      }
      p0 = p1;
    }
    prompt_tok_.upload(r_.prompt_tokens);
    prompt_pos_.upload(pos);
    prompt_slot_.upload(slot);
    chunk_off_.upload(chunk_off);
    last_row_.upload(last);
    size_t chunk_base = 0;
    for (const auto& [p0, p1] : chunks) {
      int max_len = 0;
      for (int i = p0; i < p1; i++) max_len = std::max(max_len, prompt_len(i));
      Rows rows;
      rows.tok = prompt_tok_.data() + off[p0];
      rows.pos = prompt_pos_.data() + off[p0];
      rows.slot = prompt_slot_.data() + off[p0];
      rows.n = off[p1] - off[p0];
      rows.copies = K_;
      const PrefillChunk pf{chunk_off_.data() + chunk_base, p1 - p0, max_len};
      embed(x_.data(), P(L_.tok_emb), P(L_.pos_emb), rows, D_, c_.embed_scale(), st());
      const Pending pending = blocks(rows, &pf);
      head(logits_.data() + static_cast<size_t>(p0) * LV_, last_row_.data() + p0, p1 - p0, pending);
      chunk_base += p1 - p0 + 1;
    }
  }

  // Orders the first n_rows logits rows when the draws are filtered (sort_rows); counts the calls (stats).
  void order_rows(int n_rows) {
    if (!params_.filtered()) return;
    sort_rows(sorted_.data(), logits_.data(), LV_, n_rows, params_.vocab, sort_, st());
    row_sorts_++;
  }

  // One decode step for the first `bucket` entries of the active set (rows past the active count are padding).
  void decode_step(int bucket) {
    decode_rows(x_.data(), P(L_.tok_emb), P(L_.pos_emb), row_tok_.data(), row_pos_.data(), row_slot_.data(), state_,
                bucket, D_, c_.embed_scale(), st());
    Rows rows;
    rows.tok = row_tok_.data(), rows.pos = row_pos_.data(), rows.slot = row_slot_.data();
    rows.n = bucket, rows.copies = 1;
    decoding_ = true;
    const Pending pending = blocks(rows, nullptr);
    head(logits_.data(), nullptr, bucket, pending);
    decoding_ = false;
    order_rows(bucket);
    pick_tokens(logits_.data(), 1, sorted_.data(), bucket, state_, params_, st());
  }

  SampleResult collect() {
    const std::vector<int32_t> n_out = n_out_.download(), tok = out_tok_.download();
    const std::vector<float> logp = out_logp_.download();
    const std::vector<uint8_t> fin = finished_.download();
    SampleResult res;
    res.offsets.push_back(0);
    for (int s = 0; s < R_; s++) {
      const size_t o = static_cast<size_t>(s) * r_.max_new_tokens;
      res.tokens.insert(res.tokens.end(), tok.begin() + o, tok.begin() + o + n_out[s]);
      res.token_logps.insert(res.token_logps.end(), logp.begin() + o, logp.begin() + o + n_out[s]);
      res.offsets.push_back(static_cast<int32_t>(res.tokens.size()));
      res.finished.push_back(fin[s]);
    }
    return res;
  }

  const ModelConfig& c_;
  const ParamLayout& L_;
  SamplerWeights w_;
  const SampleRequest& r_;
  int n_prompts_ = 0, K_ = 0, R_ = 0, D_ = 0, V_ = 0, LV_ = 0, F_ = 0, QD_ = 0, KVD_ = 0, cap_ = 0, max_rows_ = 0;
  size_t bytes_ = 0;
  int split_setting_ = 0, sms_ = 0, max_split_ = 1, own_gemms_ = 0, row_sorts_ = 0, lt_gemms_ = 0;
  bool own_gemm_ = false;      // bf16 decode GEMMs on decode_gemm.cu's kernel (OPTUNE_CUDA_DECODE_GEMM)
  bool early_launch_ = false;  // decode steps launch their own kernels early (OPTUNE_CUDA_PDL)
  bool decoding_ = false;      // in a decode step: its GEMMs may be split along K
  size_t part_capacity_ = 0;   // floats of part_
  Params params_;
  State state_;
  SortScratch sort_;
  Stream stream_;
  Buffer<char> blas_ws_;
  Blas blas_;
  std::unique_ptr<LtGemms> lt_;  // bf16 decode GEMMs on cuBLASLt (OPTUNE_CUDA_DECODE_GEMM=lt); null otherwise
  Buffer<float> x_, qkv_, atty_, lse_, fc_, up_, post_, logits_, out_logp_, part_;
  Buffer<Act> kc_, vc_, hn_, atty_act_, act_, hf_;  // the KV cache in the activations' dtype
  Buffer<float2> rope_;                             // RoPE's (cos, sin) per set, position and pair (rope_table)
  Buffer<double> rope_freqs_;                       // the sets' frequencies (rope_sets.h)
  std::vector<int> rope_layer_set_;                 // each layer's set, -1: none
  Buffer<int32_t> sorted_, sort_vals_in_, prompt_tok_, prompt_pos_, prompt_slot_, chunk_off_, last_row_, row_tok_,
      row_pos_, row_slot_, len_, n_out_, out_tok_, active_, ctl_, stop_;
  Buffer<uint64_t> sort_keys_in_, sort_keys_out_, stream_keys_;
  Buffer<uint8_t> finished_;
  Buffer<char> sort_temp_;
};

// One call: the Sampler's construction (its device buffers) and destruction (freeing them) timed around its run.
template <class Act>
SampleResult run_sampler(const Model& m, const SamplerWeights& w, const SampleRequest& r, SamplerStats* stats) {
  const auto t0 = Clock::now();
  Clock::time_point t2;
  SampleResult res;
  {
    Sampler<Act> s(m, w, r);
    const auto t1 = Clock::now();
    res = s.run(stats);
    if (stats) stats->setup_ms = ms_between(t0, t1);
    t2 = Clock::now();
  }
  if (stats) stats->teardown_ms = ms_between(t2, Clock::now());
  return res;
}

}  // namespace

SampleResult sample_with_weights(const Model& m, const SamplerWeights& w, const SampleRequest& r,
                                 SamplerStats* stats) {
  check_request(m, r);
  OPTUNE_CHECK(w.f32, "sample: the model's weights are not on the device");
  return w.bf16 ? run_sampler<bf16>(m, w, r, stats) : run_sampler<float>(m, w, r, stats);
}

}  // namespace optune::cuda
