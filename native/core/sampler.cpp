// Batched sampling with a KV cache. Prompts are prefilled once as one ragged batch (their keys and values copied
// into the cache slots of all K samples), then every step decodes one token for each unfinished response. Finished
// responses leave the active set, so they cost nothing. Randomness is counter-based: the draw for step t of sample
// k of a prompt depends only on (seed, the prompt's stream id, k, t).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "cpu/gemm.h"
#include "cpu/ops.h"
#include "cpu/parallel.h"
#include "device.h"
#include "engine.h"
#include "error.h"
#include "heads.h"
#include "host_memory.h"
#include "lora.h"
#include "pick.h"
#include "rng.h"
#include "transformer.h"

namespace optune {

namespace {

// Every weight matrix of the model packed for few-row products (decode steps), plus the LM head as [D, V]; in bf16
// pairs when the request asks for bf16 decoding. Packed into w's kept storage: fresh buffers on every call cost
// their first-touch page faults. Active LoRA adapters are merged into the packed copies (block_forward then skips
// their low-rank path), so a LoRA policy decodes at its base's speed.
void pack_for_decoding(const Model& m, bool bf16, PackedWeights& w) {
  const bool in_out = m.cfg.is_gpt2();  // Conv1D [in, out]; nn.Linear [out, in]
  const Lora* lora = active_lora(m);
  std::vector<float> merged;
  for (const LayerOffsets& o : m.layout.layers)
    for (size_t off : {o.qkv_w, o.q_w, o.k_w, o.v_w, o.o_w, o.fc_w, o.up_w, o.proj_w}) {
      if (off == kAbsent) continue;
      const ParamInfo* t = nullptr;
      for (const ParamInfo& p : m.layout.tensors)
        if (p.offset == off) t = &p;
      const int rows = static_cast<int>(t->shape[0]), cols = static_cast<int>(t->shape[1]);
      const LoraTarget* target = lora ? lora->find(off) : nullptr;
      if (target) merge_weight_into(m, *target, merged);
      const float* weight = target ? merged.data() : m.params.data() + off;
      if (in_out)
        cpu::pack_b_into(w[off], weight, cols, rows, cols, false, bf16);
      else
        cpu::pack_b_into(w[off], weight, cols, cols, rows, true, bf16);
    }
  cpu::pack_b_into(w[m.layout.lm_head], lm_head_weight(m), m.cfg.d_model, m.cfg.d_model, m.cfg.vocab_size, true,
                   bf16);
}

// Every layer's KV cache (cpu/ops.h layout), in fp32 or, for bf16 sampling, in bf16: each decode step reads the
// whole cache of its sequences, so half the bytes is most of attention's cost saved.
struct KvCache {
  bool bf16 = false;
  size_t layer_size = 0;  // elements per layer: responses x cap x kv_dim
  int cap = 0, n_kv_head = 0, head_dim = 0;
  std::vector<float> k32, v32;
  std::vector<uint16_t> k16, v16;

  void allocate(bool half, size_t layer, int n_layer) {
    bf16 = half;
    layer_size = layer;
    if (half) {
      k16.resize(layer * n_layer);
      v16.resize(layer * n_layer);
    } else {
      k32.resize(layer * n_layer);
      v32.resize(layer * n_layer);
    }
  }
  void store(int l, int slot, int pos, const float* k, const float* v) {
    const size_t o = l * layer_size;
    if (bf16)
      cpu::kv_cache_store(k16.data() + o, v16.data() + o, slot, pos, k, v, cap, n_kv_head, head_dim);
    else
      cpu::kv_cache_store(k32.data() + o, v32.data() + o, slot, pos, k, v, cap, n_kv_head, head_dim);
  }
  void attend(int l, float* out, const float* q, int qs, const int32_t* slot, const int32_t* n_keys, int rows,
              int n_head, int window) const {
    const size_t o = l * layer_size;
    if (bf16)
      cpu::attention_decode(out, q, qs, k16.data() + o, v16.data() + o, slot, n_keys, rows, cap, n_head, n_kv_head,
                            head_dim, window);
    else
      cpu::attention_decode(out, q, qs, k32.data() + o, v32.data() + o, slot, n_keys, rows, cap, n_head, n_kv_head,
                            head_dim, window);
  }
};

}  // namespace

void validate_sample_request(const Model& m, const SampleRequest& r) {
  lm_head_weight(m);  // a reward model has no LM head to sample from: a clear error
  const int n_prompts = static_cast<int>(r.prompt_offsets.size()) - 1;
  OPTUNE_CHECK(n_prompts >= 1, "sample: no prompts (promptOffsets needs n_prompts + 1 entries)");
  OPTUNE_CHECK(r.prompt_offsets[0] == 0 && r.prompt_offsets.back() == static_cast<int>(r.prompt_tokens.size()),
               "sample: promptOffsets must start at 0 and end at the number of prompt tokens (" +
                   std::to_string(r.prompt_tokens.size()) + ")");
  for (int i = 0; i < n_prompts; i++) {
    const int len = r.prompt_offsets[i + 1] - r.prompt_offsets[i];
    OPTUNE_CHECK(len >= 1, "sample: prompt " + std::to_string(i) + " is empty (every prompt needs >= 1 token)");
    OPTUNE_CHECK(len + r.max_new_tokens <= m.cfg.max_positions,
                 "sample: prompt " + std::to_string(i) + " has " + std::to_string(len) + " tokens; with maxNewTokens " +
                     std::to_string(r.max_new_tokens) + " it exceeds the model's max_positions " +
                     std::to_string(m.cfg.max_positions) + " (shorten the prompt or lower maxNewTokens)");
  }
  for (size_t t = 0; t < r.prompt_tokens.size(); t++)
    OPTUNE_CHECK(r.prompt_tokens[t] >= 0 && r.prompt_tokens[t] < m.cfg.vocab_size,
                 "sample: prompt token id " + std::to_string(r.prompt_tokens[t]) + " at position " +
                     std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(m.cfg.vocab_size) + ")");
  for (int32_t s : r.stop_tokens)
    OPTUNE_CHECK(s >= 0 && s < m.cfg.vocab_size, "sample: stop token " + std::to_string(s) + " is outside the vocabulary");
  OPTUNE_CHECK(r.n_samples >= 1 && r.n_samples <= (1 << 20), "sample: nSamples must be in [1, 2^20]");
  OPTUNE_CHECK(r.max_new_tokens >= 1 && r.max_new_tokens <= m.cfg.max_positions,
               "sample: maxNewTokens must be in [1, max_positions = " + std::to_string(m.cfg.max_positions) + "]");
  OPTUNE_CHECK(static_cast<int64_t>(n_prompts) * r.n_samples <= (1 << 24),
               "sample: nPrompts * nSamples = " + std::to_string(static_cast<int64_t>(n_prompts) * r.n_samples) +
                   " responses in one call is too many; split the prompts into several calls");
  OPTUNE_CHECK(std::isfinite(r.temperature) && r.temperature >= 0, "sample: temperature must be >= 0 (0 = greedy)");
  if (r.temperature != 0 && !std::isfinite(1.0f / r.temperature)) {
    char t[32];
    std::snprintf(t, sizeof t, "%g", r.temperature);
    throw Error("sample: temperature " + std::string(t) +
                " is too small (1 / temperature overflows float); use 0 for greedy decoding");
  }
  OPTUNE_CHECK(r.vocab_limit >= 0 && r.vocab_limit <= m.cfg.vocab_size,
               "sample: vocabLimit " + std::to_string(r.vocab_limit) + " must be in [0, vocab_size = " +
                   std::to_string(m.cfg.vocab_size) + "] (0 = the whole vocabulary)");
  OPTUNE_CHECK(r.top_k >= 0, "sample: topK must be >= 0 (0 = off)");
  OPTUNE_CHECK(r.top_p > 0 && r.top_p <= 1, "sample: topP must be in (0, 1]");
  OPTUNE_CHECK(r.stream_ids.empty() || static_cast<int>(r.stream_ids.size()) == n_prompts,
               "sample: streamIds needs one entry per prompt (" + std::to_string(n_prompts) + ") or none");
}

SampleResult sample(const Model& m, const SampleRequest& r) {
  validate_sample_request(m, r);
  if (m.device) return m.device->sample(m, r);
  const ModelConfig& c = m.cfg;
  const bool bf16 = r.bf16 || m.cpu_bf16;
  PackedWeights& packed = workspace_of(m).decode_weights;
  pack_for_decoding(m, bf16, packed);
  const cpu::PackedB& head_packed = packed.at(m.layout.lm_head);
  const int n_prompts = static_cast<int>(r.prompt_offsets.size()) - 1, K = r.n_samples, R = n_prompts * K;
  const int D = c.d_model, V = c.vocab_size, KVD = c.kv_dim();
  int max_prompt = 0;
  for (int i = 0; i < n_prompts; i++) max_prompt = std::max(max_prompt, r.prompt_offsets[i + 1] - r.prompt_offsets[i]);
  const int cap = max_prompt + r.max_new_tokens;
  const size_t layer_cache = static_cast<size_t>(R) * cap * KVD;
  const double cache_gib = 2.0 * layer_cache * c.n_layer * (bf16 ? 2 : 4) / (1024.0 * 1024 * 1024);
  check_host_memory(static_cast<size_t>(2.0 * layer_cache * c.n_layer * (bf16 ? 2 : 4)) +
                        static_cast<size_t>(R) * V * sizeof(float),
                    "sample: the KV cache and logits of " + std::to_string(R) + " responses of up to " +
                        std::to_string(cap) + " tokens",
                    "sample fewer prompts (or samples) per call, or lower maxNewTokens");
  KvCache cache;
  cache.cap = cap;
  cache.n_kv_head = c.n_kv_head;
  cache.head_dim = c.head_dim;
  try {
    cache.allocate(bf16, layer_cache, c.n_layer);
  } catch (const std::bad_alloc&) {
    throw Error("sample: out of memory allocating the KV cache (" + std::to_string(cache_gib) + " GiB for " +
                std::to_string(R) + " responses of up to " + std::to_string(cap) +
                " tokens); sample fewer prompts per call or lower maxNewTokens");
  }

  // prefill: one ragged forward over the prompts; keys/values go to every sample's slot
  Batch pb;
  pb.tokens = r.prompt_tokens;
  pb.offsets = r.prompt_offsets;
  for (int i = 0; i < n_prompts; i++) pb.prompt_lens.push_back(r.prompt_offsets[i + 1] - r.prompt_offsets[i]);
  const KvHook hook = [&](int l, const QKV& v) {
    cpu::parallel_for(n_prompts, [&](int64_t i) {  // each prompt's samples own their cache slots
      for (int t = pb.offsets[i]; t < pb.offsets[i + 1]; t++)
        for (int k = 0; k < K; k++)
          cache.store(l, static_cast<int>(i) * K + k, t - pb.offsets[i], v.k + static_cast<size_t>(t) * v.ks,
                      v.v + static_cast<size_t>(t) * v.vs);
    });
  };
  Acts& acts = workspace_of(m).infer;
  transformer_forward(m, pb, acts, false, &hook, bf16, bf16 ? &packed : nullptr);
  std::vector<float> hidden(static_cast<size_t>(n_prompts) * D);
  for (int i = 0; i < n_prompts; i++)
    std::copy_n(acts.normf.data() + static_cast<size_t>(pb.offsets[i + 1] - 1) * D, D, hidden.data() + i * D);
  std::vector<float> logits(static_cast<size_t>(n_prompts) * V);
  cpu::gemm_packed(n_prompts, hidden.data(), D, head_packed, logits.data(), V);

  std::vector<uint64_t> stream(R);
  for (int s = 0; s < R; s++) {
    const uint64_t id = r.stream_ids.empty() ? static_cast<uint64_t>(s / K) : r.stream_ids[s / K];
    stream[s] = mix64(id) ^ mix64(0x5851F42D4C957F2Dull + static_cast<uint64_t>(s % K));
  }
  std::vector<std::vector<int32_t>> out_tokens(R);
  std::vector<std::vector<float>> out_logps(R);
  std::vector<uint8_t> finished(R, 0);

  // Decoding: the responses are dealt out to one group per thread, and each group runs its own token-by-token
  // loop with single-threaded kernels (nested parallel regions run on one thread). A decode step is many small
  // products; giving each thread whole rows avoids a barrier per kernel call. Every row's arithmetic is the same
  // whatever the grouping, so the tokens do not depend on the thread count.
  const int groups = std::max(1, std::min(omp_get_max_threads(), R));
  std::vector<std::string> errors(groups);
#pragma omp parallel num_threads(groups)
  {
    const int team = omp_get_num_threads(), g = omp_get_thread_num();
    try {
      std::vector<int32_t> active, logit_row, len(R);
      for (int s = g; s < R; s += team) {
        active.push_back(s);
        logit_row.push_back(s / K);  // step 0: every sample reads its prompt's prefill logits
        len[s] = pb.prompt_lens[s / K];
      }
      const float* step_logits = logits.data();
      std::vector<float> own_logits;
      LayerActs la;
      Acts dec;
      std::vector<float> x;
      std::vector<int32_t> tok, pos, nkeys;
      PickScratch pick;
      for (int step = 0; step < r.max_new_tokens && !active.empty(); step++) {
        const int B = static_cast<int>(active.size());
        for (int a = 0; a < B; a++) {
          const int s = active[a];
          const float* z = step_logits + static_cast<size_t>(logit_row[a]) * V;
          const Pick p = pick_token(z, V, r, rng_uniform(r.seed, stream[s], static_cast<uint64_t>(step)), pick);
          // NaN/Inf logits mean the weights have diverged; sampling from them would return garbage quietly
          OPTUNE_CHECK(p.token >= 0, "sample: the model produced non-finite logits (NaN or Inf) at step " +
                                         std::to_string(step) + "; its weights have diverged: reload the last good "
                                         "checkpoint and lower the learning rate");
          out_tokens[s].push_back(p.token);
          out_logps[s].push_back(p.logp);
          if (std::find(r.stop_tokens.begin(), r.stop_tokens.end(), p.token) != r.stop_tokens.end()) finished[s] = 1;
        }
        std::vector<int32_t> next;
        for (int s : active)
          if (!finished[s] && step + 1 < r.max_new_tokens) next.push_back(s);
        active.swap(next);
        if (active.empty()) break;

        // decode one token for every still-active response of this group
        const int Bn = static_cast<int>(active.size());
        tok.resize(Bn);
        pos.resize(Bn);
        nkeys.resize(Bn);
        for (int a = 0; a < Bn; a++) {
          const int s = active[a];
          tok[a] = out_tokens[s].back();
          pos[a] = len[s];
          nkeys[a] = len[s] + 1;
          len[s]++;
        }
        size_layer_acts(la, c, Bn, 0);
        x.resize(static_cast<size_t>(Bn) * D);
        embed_forward(m, tok.data(), pos.data(), Bn, x.data());
        for (int l = 0; l < c.n_layer; l++) {
          block_forward(m, l, la, x.data(), Bn, pos.data(), [&](int, const QKV& v, float* atty) {
            for (int a = 0; a < Bn; a++)
              cache.store(l, active[a], pos[a], v.k + static_cast<size_t>(a) * v.ks, v.v + static_cast<size_t>(a) * v.vs);
            cache.attend(l, atty, v.q, v.qs, active.data(), nkeys.data(), Bn, c.n_head, c.layer_window(l));
          }, &packed);
          std::swap(x, la.res_mlp);
        }
        final_norm_forward(m, dec, x.data(), Bn);
        own_logits.resize(static_cast<size_t>(Bn) * V);
        cpu::gemm_packed(Bn, dec.normf.data(), D, head_packed, own_logits.data(), V);
        step_logits = own_logits.data();
        logit_row.resize(Bn);
        for (int a = 0; a < Bn; a++) logit_row[a] = a;
      }
    } catch (const std::exception& e) {
      errors[g] = e.what();
    }
  }
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(e);

  // the packs stay for the next call only while small: a large model's copy of its weights is not kept resident
  size_t packed_bytes = 0;
  for (const auto& [off, pw] : packed) packed_bytes += pw.data.capacity() * sizeof(float) + pw.pairs.capacity() * 4;
  if (packed_bytes > (size_t(64) << 20)) PackedWeights().swap(packed);

  SampleResult res;
  res.offsets.push_back(0);
  for (int s = 0; s < R; s++) {
    res.tokens.insert(res.tokens.end(), out_tokens[s].begin(), out_tokens[s].end());
    res.token_logps.insert(res.token_logps.end(), out_logps[s].begin(), out_logps[s].end());
    res.offsets.push_back(static_cast<int32_t>(res.tokens.size()));
  }
  res.finished = finished;
  return res;
}

}  // namespace optune
