// Times the CUDA kernels at GPT-2 124M shapes (4 sequences x 1024 tokens, d 768, 12 heads of 64, d_ff 3072,
// vocab 50257, 124M parameters for AdamW). Each kernel runs once to warm up, then `reps` times between two
// synchronizes; prints milliseconds per call and, for the matmul-shaped kernels, TFLOP/s. Needs a CUDA device.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "cuda/decode_gemm.h"
#include "cuda/memory.h"
#include "cuda/ops.h"

using namespace optune;
using Buf = cuda::Buffer<float>;

namespace {

Buf random_buffer(size_t n, uint64_t seed, float std = 1.0f) {
  std::vector<float> h(n);
  for (size_t i = 0; i < n; i++) h[i] = std * static_cast<float>(rng_normal(seed, 0, i));
  return Buf(h, "bench input");
}

void time_it(const char* name, double flops, const std::function<void()>& fn, int reps = 10) {
  fn();
  cuda::synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; i++) fn();
  cuda::synchronize();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
  if (flops > 0)
    std::printf("%-28s %9.3f ms  %7.2f TFLOP/s\n", name, ms, flops / (ms * 1e-3) / 1e12);
  else
    std::printf("%-28s %9.3f ms\n", name, ms);
}

}  // namespace

int main() {
  if (cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 0;
  }
  try {
    std::printf("device: %s\n", cuda::device_description(0).c_str());
    const int B = 4, L = 1024, T = B * L, d = 768, H = 12, hd = 64, ff = 3072, V = 50257;
    const size_t n_params = 124439808;

    Buf x = random_buffer(static_cast<size_t>(T) * d, 1), w = random_buffer(static_cast<size_t>(3 * d) * d, 2, 0.02f);
    Buf y(static_cast<size_t>(T) * 3 * d);
    time_it("gemm fp32 qkv 4096x2304x768", 2.0 * T * 3 * d * d,
            [&] { cuda::gemm(false, true, T, 3 * d, d, 1.0f, x.data(), d, w.data(), d, 0.0f, y.data(), 3 * d); });
    cuda::Buffer<uint16_t> x16(x.size()), w16(w.size());
    cuda::to_bf16(x16.data(), x.data(), static_cast<int64_t>(x.size()));
    cuda::to_bf16(w16.data(), w.data(), static_cast<int64_t>(w.size()));
    time_it("gemm bf16 qkv 4096x2304x768", 2.0 * T * 3 * d * d, [&] {
      cuda::gemm_bf16(false, true, T, 3 * d, d, 1.0f, x16.data(), d, w16.data(), d, 0.0f, y.data(), 3 * d);
    });

    Buf g = random_buffer(d, 3), b = random_buffer(d, 4), out(x.size()), dx(x.size()), dg(d), db(d), mean(T), rstd(T);
    dx.zero(), dg.zero(), db.zero();
    time_it("layernorm fwd", 0, [&] {
      cuda::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), g.data(), b.data(), T, d, 1e-5f);
    });
    time_it("layernorm bwd", 0, [&] {
      cuda::layernorm_backward(dx.data(), dg.data(), db.data(), out.data(), x.data(), g.data(), mean.data(),
                               rstd.data(), T, d);
    });

    Buf h = random_buffer(static_cast<size_t>(T) * ff, 5), hout(h.size()), dh(h.size());
    dh.zero();
    time_it("gelu fwd 4096x3072", 0, [&] { cuda::gelu_forward(hout.data(), h.data(), static_cast<int64_t>(h.size())); });
    time_it("gelu bwd 4096x3072", 0,
            [&] { cuda::gelu_backward(dh.data(), h.data(), hout.data(), static_cast<int64_t>(h.size())); });

    std::vector<int32_t> offsets;
    for (int s = 0; s <= B; s++) offsets.push_back(s * L);
    cuda::Buffer<int32_t> off(offsets);
    Buf qkv = random_buffer(static_cast<size_t>(T) * 3 * d, 6), att(static_cast<size_t>(T) * d),
        lse(static_cast<size_t>(T) * H), datt = random_buffer(static_cast<size_t>(T) * d, 7), dqkv(qkv.size());
    const double att_flops = 4.0 * B * H * (0.5 * L * L) * hd;  // QK^T and PV over the causal half
    const float *q = qkv.data(), *k = q + d, *v = k + d;
    time_it("attention fwd 4x1024 h12", att_flops, [&] {
      cuda::attention_forward(att.data(), lse.data(), q, 3 * d, k, 3 * d, v, 3 * d, off.data(), B, L, H, H, hd);
    });
    time_it("attention bwd 4x1024 h12", 2.5 * att_flops, [&] {
      cuda::attention_backward(dqkv.data(), dqkv.data() + d, dqkv.data() + 2 * d, datt.data(), att.data(), lse.data(),
                               q, 3 * d, k, 3 * d, v, 3 * d, off.data(), B, L, T, H, H, hd);
    }, 3);
    // the default (a pipelined backward at head_dim 64), then all plain ("0"), then all pipelined ("1")
    time_it("attention fwd bf16 (mma)", att_flops, [&] {
      cuda::attention_forward(att.data(), lse.data(), q, 3 * d, k, 3 * d, v, 3 * d, off.data(), B, L, H, H, hd, true);
    });
    time_it("attention bwd bf16 (mma)", 2.5 * att_flops, [&] {
      cuda::attention_backward(dqkv.data(), dqkv.data() + d, dqkv.data() + 2 * d, datt.data(), att.data(), lse.data(),
                               q, 3 * d, k, 3 * d, v, 3 * d, off.data(), B, L, T, H, H, hd, true);
    });
    setenv("OPTUNE_CUDA_ATTN_PREFETCH", "0", 1);
    time_it("attention bwd bf16 (mma, plain)", 2.5 * att_flops, [&] {
      cuda::attention_backward(dqkv.data(), dqkv.data() + d, dqkv.data() + 2 * d, datt.data(), att.data(), lse.data(),
                               q, 3 * d, k, 3 * d, v, 3 * d, off.data(), B, L, T, H, H, hd, true);
    });
    // OPTUNE_CUDA_ATTN_PREFETCH=1: next tiles fetched during this tile's products (forward, dQ, dK/dV)
    setenv("OPTUNE_CUDA_ATTN_PREFETCH", "1", 1);
    time_it("attention fwd bf16 (mma, prefetch)", att_flops, [&] {
      cuda::attention_forward(att.data(), lse.data(), q, 3 * d, k, 3 * d, v, 3 * d, off.data(), B, L, H, H, hd, true);
    });
    time_it("attention bwd bf16 (mma, prefetch)", 2.5 * att_flops, [&] {
      cuda::attention_backward(dqkv.data(), dqkv.data() + d, dqkv.data() + 2 * d, datt.data(), att.data(), lse.data(),
                               q, 3 * d, k, 3 * d, v, 3 * d, off.data(), B, L, T, H, H, hd, true);
    });
    unsetenv("OPTUNE_CUDA_ATTN_PREFETCH");

    // A decode step's GEMMs (64 rows, bf16, GPT-2's [K, N] weights) per call, cycling through 12 layers' weights so
    // that they come from memory as in a step (170 MB > L2): cuBLAS, then decode_gemm.cu's kernel in S K-slices.
    {
      const int M = 64, layers = 12;
      const int shapes[4][2] = {{3 * d, d}, {d, d}, {ff, d}, {d, ff}};  // (N, K): q|k|v, o, fc, proj
      cuda::Buffer<uint16_t> a16(static_cast<size_t>(M) * ff);
      cuda::to_bf16(a16.data(), x.data(), static_cast<int64_t>(a16.size()));
      Buf out(static_cast<size_t>(16) * M * ff);
      cuda::decode_gemm_prepare();
      for (const auto& shape : shapes) {
        const int N = shape[0], K = shape[1];
        const size_t per_layer = static_cast<size_t>(N) * K;
        cuda::Buffer<uint16_t> wl(per_layer * layers);
        Buf wf = random_buffer(per_layer * layers, 12, 0.02f);
        cuda::to_bf16(wl.data(), wf.data(), static_cast<int64_t>(wl.size()));
        char name[64];
        auto run = [&](const char* variant, int S, bool print = true) {
          std::snprintf(name, sizeof name, "decode gemm %dx%dx%d %s", M, N, K, variant);
          const double bytes = 2.0 * per_layer * layers;
          cuda::synchronize();
          const auto t0 = std::chrono::steady_clock::now();
          const int reps = 20;
          for (int r = 0; r < reps; r++)
            for (int l = 0; l < layers; l++) {
              const uint16_t* wp = wl.data() + l * per_layer;
              if (S == 0)
                cuda::gemm_bf16(false, false, M, N, K, 1.0f, a16.data(), K, wp, N, 0.0f, out.data(), N);
              else
                cuda::decode_gemm(M, N, K, a16.data(), wp, false, 0.0f, out.data(), N, S,
                                  static_cast<int64_t>(M) * N, nullptr);
            }
          cuda::synchronize();
          const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          if (print)
            std::printf("%-40s %7.2f us  %6.2f TB/s of weights\n", name, 1e3 * ms / (reps * layers),
                        bytes * reps / (ms * 1e-3) / 1e12);
        };
        run("own", 1, false);  // warm-ups, not printed: module loading, cuBLAS's heuristics for this shape
        run("cublas", 0, false);
        run("cublas", 0);
        for (const int S : {1, 2, 3, 4, 6, 8, 12, 16}) {
          if (!cuda::decode_gemm_fits(M, N, K, S, a16.data(), wl.data(), out.data(), N)) continue;
          char variant[16];
          std::snprintf(variant, sizeof variant, "own S=%d", S);
          run(variant, S);
        }
      }
    }

    Buf wte = random_buffer(static_cast<size_t>(V) * d, 8, 0.02f), logp(T), gl = random_buffer(T, 9), dwte(wte.size());
    dwte.zero();
    std::vector<int32_t> rows(T), targets(T);
    for (int i = 0; i < T; i++) rows[i] = i, targets[i] = static_cast<int32_t>((i * 7919) % V);
    cuda::Buffer<int32_t> src(rows), tgt(targets);
    time_it("logprob fwd 4096 x 50257", 2.0 * T * V * d, [&] {
      cuda::logprob_forward(logp.data(), x.data(), src.data(), tgt.data(), T, wte.data(), d, V);
    }, 3);
    time_it("logprob bwd 4096 x 50257", 6.0 * T * V * d, [&] {
      cuda::logprob_backward(dx.data(), dwte.data(), gl.data(), x.data(), src.data(), tgt.data(), T, wte.data(), d, V);
    }, 3);

    cuda::Buffer<uint16_t> wte16(wte.size());
    cuda::to_bf16(wte16.data(), wte.data(), static_cast<int64_t>(wte.size()));
    time_it("logprob fwd bf16", 2.0 * T * V * d, [&] {
      cuda::logprob_forward(logp.data(), x.data(), src.data(), tgt.data(), T, wte.data(), d, V, 0, wte16.data());
    }, 3);
    time_it("logprob bwd bf16", 6.0 * T * V * d, [&] {
      cuda::logprob_backward(dx.data(), dwte.data(), gl.data(), x.data(), src.data(), tgt.data(), T, wte.data(), d, V,
                             0, wte16.data());
    }, 3);

    Buf p = random_buffer(n_params, 10, 0.02f), pg = random_buffer(n_params, 11, 1e-3f), m(n_params), vv(n_params);
    m.zero(), vv.zero();
    time_it("grad sum of squares 124M", 0, [&] { cuda::sum_squares(pg.data(), n_params); });
    time_it("adamw step 124M", 0, [&] {
      cuda::adamw_step(p.data(), pg.data(), m.data(), vv.data(), n_params, 0.99f, 0.9f, 0.999f, 1e-8f, 1e-4f, 0.03f,
                       1.0f);
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_kernels: %s\n", e.what());
    return 1;
  }
  return 0;
}
