#include "lora.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "error.h"
#include "host_memory.h"
#include "rng.h"

namespace optune {

namespace {

struct LinearModule {
  std::string name;  // transformers' module name, e.g. "transformer.h.0.attn.c_attn"
  int layer;
  size_t weight;
  int in, out;
};

// Every linear layer of the blocks, in block order and, within a block, in the order of transformers' modules
// (the order of the ParamLayout), named and sized by its weight tensor.
std::vector<LinearModule> linear_modules(const Model& m) {
  const bool in_out = m.cfg.is_gpt2();  // Conv1D weights are [in, out], nn.Linear's [out, in]
  std::unordered_map<size_t, const ParamInfo*> by_offset;
  for (const ParamInfo& p : m.layout.tensors) by_offset[p.offset] = &p;
  std::vector<LinearModule> out;
  for (int l = 0; l < m.cfg.n_layer; l++) {
    const LayerOffsets& o = m.layout.layers[l];
    for (size_t off : {o.qkv_w, o.q_w, o.k_w, o.v_w, o.o_w, o.fc_w, o.up_w, o.proj_w}) {
      if (off == kAbsent) continue;
      const ParamInfo& p = *by_offset.at(off);
      const int rows = static_cast<int>(p.shape[0]), cols = static_cast<int>(p.shape[1]);
      out.push_back({p.name.substr(0, p.name.size() - std::string(".weight").size()), l, off, in_out ? rows : cols,
                     in_out ? cols : rows});
    }
  }
  return out;
}

// PEFT's rule for a list of target_modules: the whole name, or its tail after a dot.
bool matches(const std::string& module, const std::string& target) {
  if (target == "all-linear" || module == target) return true;
  return module.size() > target.size() && module.compare(module.size() - target.size(), target.size(), target) == 0 &&
         module[module.size() - target.size() - 1] == '.';
}

}  // namespace

std::vector<LoraTarget> resolve_lora_targets(const Model& m, const std::vector<std::string>& targets) {
  OPTUNE_CHECK(!targets.empty(), "LoRA: no target modules given; name some (e.g. [\"q_proj\", \"v_proj\"]) or use "
                                 "[\"all-linear\"]");
  const std::vector<LinearModule> modules = linear_modules(m);
  for (const std::string& t : targets) {
    bool any = false;
    for (const LinearModule& mod : modules) any = any || matches(mod.name, t);
    if (any) continue;
    std::string names;  // block 0's, without the block prefix
    for (size_t i = 0; i < modules.size() && modules[i].layer == 0; i++)
      names += (i ? ", " : "") + modules[i].name.substr(modules[i].name.find(".0.") + 3);
    throw Error("LoRA: target module \"" + t + "\" matches no linear layer of this " + arch_name(m.cfg.arch) +
                " model; its block's layers are " + names + " (or use \"all-linear\")");
  }
  std::vector<LoraTarget> out;
  int slot = 0, layer = -1;
  for (const LinearModule& mod : modules) {
    bool hit = false;
    for (const std::string& t : targets) hit = hit || matches(mod.name, t);
    if (!hit) continue;
    if (mod.layer != layer) slot = 0;
    layer = mod.layer;
    LoraTarget t;
    t.module = mod.name;
    t.layer = mod.layer;
    t.slot = slot++;
    t.weight = mod.weight;
    t.in = mod.in;
    t.out = mod.out;
    out.push_back(t);
  }
  return out;
}

void enable_lora(Model& m, const LoraConfig& cfg, uint64_t seed) {
  OPTUNE_CHECK(!m.cfg.reward_model, "LoRA: adapters are for causal language models (policies), not reward models");
  OPTUNE_CHECK(!m.lora, "LoRA: the model has adapters already");
  OPTUNE_CHECK(m.adam_m.empty(), "LoRA: the model has taken full optimizer steps; enable adapters on a fresh model");
  OPTUNE_CHECK(cfg.rank >= 1 && cfg.rank <= 4096, "LoRA: rank " + std::to_string(cfg.rank) + " must be in [1, 4096]");
  OPTUNE_CHECK(std::isfinite(cfg.alpha) && cfg.alpha > 0, "LoRA: alpha must be a positive number");
  auto lora = std::make_shared<Lora>();
  lora->cfg = cfg;
  lora->scale = cfg.alpha / static_cast<float>(cfg.rank);
  lora->targets = resolve_lora_targets(m, cfg.targets);
  const int64_t r = cfg.rank;
  for (size_t i = 0; i < lora->targets.size(); i++) {
    LoraTarget& t = lora->targets[i];
    const std::string p = "base_model.model." + t.module;
    t.a = add_param(lora->layout, p + ".lora_A.weight", {r, t.in}, true);
    t.b = add_param(lora->layout, p + ".lora_B.weight", {t.out, r}, true);
    lora->by_weight[t.weight] = static_cast<int>(i);
    lora->slots = std::max(lora->slots, t.slot + 1);
  }
  check_host_memory(lora->layout.total * sizeof(float) * 4,
                    "LoRA adapters of rank " + std::to_string(cfg.rank) + " (" + std::to_string(lora->layout.total) +
                        " parameters, with their gradients and AdamW moments)",
                    "use a lower rank or fewer target modules");
  lora->params.assign(lora->layout.total, 0.0f);
  // A: kaiming_uniform_(a=sqrt(5)) as nn.Linear and PEFT draw it, i.e. U(-1/sqrt(in), 1/sqrt(in)); B stays zero.
  for (size_t i = 0; i < lora->targets.size(); i++) {
    const LoraTarget& t = lora->targets[i];
    const double bound = 1.0 / std::sqrt(static_cast<double>(t.in));
    float* a = lora->params.data() + t.a;
    for (size_t j = 0; j < static_cast<size_t>(r) * t.in; j++)
      a[j] = static_cast<float>(bound * (2.0 * rng_uniform(seed, i, j) - 1.0));
  }
  m.lora = std::move(lora);
  m.lora_off = false;
  std::vector<float>().swap(m.grads);  // full-size gradients of earlier steps no longer apply
}

void merge_weight_into(const Model& m, const LoraTarget& t, std::vector<float>& out) {
  out.resize(static_cast<size_t>(t.in) * t.out);
  merge_weight_into(m, t, out.data());
}

void merge_weight_into(const Model& m, const LoraTarget& t, float* out) {
  const Lora& L = *m.lora;
  const int r = L.cfg.rank, in = t.in, outf = t.out;
  const float* w = m.params.data() + t.weight;
  const float* A = L.params.data() + t.a;  // [r, in]
  const float* B = L.params.data() + t.b;  // [out, r]
  // Each row of the result is W's row plus scale-weighted rows of A (nn.Linear) or of B^T (Conv1D), added in k
  // order: the same bits for any thread count. Plain loops rather than a GEMM keep core/ free of the CPU kernels
  // (the fuzz targets link checkpoint.cpp alone).
  if (m.cfg.is_gpt2()) {  // Conv1D: W [in, out] += scale A^T B^T; row i adds A[k, i] x (scale B^T)[k, :]
    std::vector<float> bt(static_cast<size_t>(r) * outf);
    for (int o = 0; o < outf; o++)
      for (int k = 0; k < r; k++) bt[static_cast<size_t>(k) * outf + o] = L.scale * B[static_cast<size_t>(o) * r + k];
#pragma omp parallel for schedule(static)
    for (int i = 0; i < in; i++) {
      float* row = out + static_cast<size_t>(i) * outf;
      std::copy_n(w + static_cast<size_t>(i) * outf, outf, row);
      for (int k = 0; k < r; k++) {
        const float a = A[static_cast<size_t>(k) * in + i];
        const float* b = bt.data() + static_cast<size_t>(k) * outf;
#pragma omp simd
        for (int o = 0; o < outf; o++) row[o] += a * b[o];
      }
    }
  } else {  // nn.Linear: W [out, in] += scale B A; row o adds (scale B[o, k]) x A[k, :]
#pragma omp parallel for schedule(static)
    for (int o = 0; o < outf; o++) {
      float* row = out + static_cast<size_t>(o) * in;
      std::copy_n(w + static_cast<size_t>(o) * in, in, row);
      for (int k = 0; k < r; k++) {
        const float b = L.scale * B[static_cast<size_t>(o) * r + k];
        const float* a = A + static_cast<size_t>(k) * in;
#pragma omp simd
        for (int i = 0; i < in; i++) row[i] += b * a[i];
      }
    }
  }
}

}  // namespace optune
