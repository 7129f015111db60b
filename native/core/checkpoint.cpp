#include "checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>

#include "error.h"
#include "json.h"
#include "safetensors.h"

namespace optune {

// ---- config.json -> ModelConfig -------------------------------------------------------------------------------

namespace {

// Typed access to config.json fields with uniform error messages: every error names the file, the field and the
// value found.
struct Fields {
  const json::Value& root;
  const std::string& where;

  // nullptr when the field is absent or null (transformers treats both as "use the default").
  const json::Value* get(const char* name) const {
    const json::Value* v = root.get(name);
    return v && !v->is_null() ? v : nullptr;
  }

  [[noreturn]] void bad(const char* name, const json::Value& v, const std::string& why) const {
    throw Error(where + ": field \"" + name + "\" = " + json::dump(v) + ": " + why);
  }

  int integer(const char* name, const json::Value& v) const {
    if (!v.is_number()) bad(name, v, "expected an integer");
    const double d = v.number;
    if (!(d == std::floor(d) && d >= INT_MIN && d <= INT_MAX)) bad(name, v, "expected an integer within int32 range");
    return static_cast<int>(d);
  }
  // A size field: an integer in [1, max]. The caps are far above any real model; they keep a hostile config from
  // overflowing sizes or building a huge layout before the weights are even looked at.
  int size(const char* name, const json::Value& v, int max) const {
    const int i = integer(name, v);
    if (i < 1 || i > max) bad(name, v, "expected a positive integer up to " + std::to_string(max));
    return i;
  }
  int req_size(const char* name, const std::string& model_type, int max) const {
    const json::Value* v = get(name);
    if (!v)
      throw Error(where + ": missing required field \"" + name + "\" for model_type \"" + model_type +
                  "\" (is this a complete transformers config.json?)");
    return size(name, *v, max);
  }
  int opt_size(const char* name, int def, int max) const {
    const json::Value* v = get(name);
    return v ? size(name, *v, max) : def;
  }
  double opt_num(const char* name, double def) const {
    const json::Value* v = get(name);
    if (!v) return def;
    if (!v->is_number()) bad(name, *v, "expected a number");
    return v->number;
  }
  // A number stored as fp32 in ModelConfig. Beyond float range it would become Inf: the model would load and train,
  // and only saving would fail (config.json cannot hold Inf). Found by fuzz_hf_config.
  float opt_float(const char* name, double def) const {
    const double d = opt_num(name, def);
    if (std::fabs(d) > std::numeric_limits<float>::max()) bad(name, *get(name), "outside the range of a float");
    return static_cast<float>(d);
  }
  bool opt_bool(const char* name, bool def) const {
    const json::Value* v = get(name);
    if (!v) return def;
    if (!v->is_bool()) bad(name, *v, "expected true or false");
    return v->boolean;
  }
  std::string opt_str(const char* name, const std::string& def) const {
    const json::Value* v = get(name);
    if (!v) return def;
    if (!v->is_string()) bad(name, *v, "expected a string");
    return v->str;
  }
  // bos/eos/pad: an integer, a list of integers (the first is kept) or null; -1 when absent.
  int token_id(const char* name) const {
    const json::Value* v = get(name);
    if (!v) return -1;
    const json::Value* first = v;
    if (v->is_array()) {
      if (v->array.empty()) return -1;
      first = &v->array[0];
    }
    const int id = integer(name, *first);
    return id < 0 ? -1 : id;
  }
};

// Caps for config sizes (see Fields::size).
constexpr int kMaxVocab = 1 << 24, kMaxWidth = 1 << 16, kMaxFF = 1 << 20, kMaxLayers = 1024, kMaxHeads = 1024,
              kMaxPositions = 1 << 24;

// The RoPE settings: transformers 5 writes rope_parameters {"rope_type", "rope_theta", and the scaling's fields};
// older files have a top-level rope_theta and rope_scaling. Implemented: plain ("default") RoPE, "linear" and
// "llama3" scaling (cpu/rope_scaling.h).

// A number field of a RoPE object.
double rope_number(const Fields& f, const char* field, const json::Value& rp, const std::string& key,
                   const json::Value& v) {
  if (!v.is_number() || !std::isfinite(v.number)) f.bad(field, rp, key + " must be a number");
  return v.number;
}

// One RoPE settings object: its theta (if any) goes into `theta`, its scaling into `*scaling` (null: none allowed,
// as for Gemma's sliding-window layers).
void read_rope_object(const Fields& f, const char* field, const json::Value& rp, double& theta,
                      cpu::RopeScaling* scaling) {
  if (!rp.is_object()) f.bad(field, rp, "expected an object");
  cpu::RopeScaling s;
  double factor = 0, low = -1, high = -1, original = -1;
  for (const auto& kv : rp.object) {
    const std::string& k = kv.first;
    if (k == "rope_type" || k == "type") {
      const std::string t = kv.second.is_string() ? kv.second.str : "";
      if (t == "default") s.type = cpu::RopeScaling::NONE;
      else if (t == "linear") s.type = cpu::RopeScaling::LINEAR;
      else if (t == "llama3") s.type = cpu::RopeScaling::LLAMA3;
      else
        f.bad(field, rp, "unsupported RoPE variant " + json::dump(kv.second) +
                             "; optune implements \"default\", \"linear\" and \"llama3\"");
    } else if (k == "rope_theta") {
      theta = rope_number(f, field, rp, k, kv.second);
    } else if (k == "factor") {
      factor = rope_number(f, field, rp, k, kv.second);
    } else if (k == "low_freq_factor") {
      low = rope_number(f, field, rp, k, kv.second);
    } else if (k == "high_freq_factor") {
      high = rope_number(f, field, rp, k, kv.second);
    } else if (k == "original_max_position_embeddings") {
      original = rope_number(f, field, rp, k, kv.second);
    } else {
      f.bad(field, rp, "unsupported RoPE setting \"" + k + "\"");
    }
  }
  if (s.type == cpu::RopeScaling::NONE) return;
  if (!scaling) f.bad(field, rp, "RoPE scaling on Gemma's sliding-window layers is not supported");
  if (!(factor >= 1 && factor <= 1e6)) f.bad(field, rp, "a scaled RoPE needs a factor in [1, 1e6]");
  s.factor = static_cast<float>(factor);
  if (s.type == cpu::RopeScaling::LLAMA3) {
    if (!(low > 0 && high > low && high <= 1e6))
      f.bad(field, rp, "llama3 RoPE needs low_freq_factor and high_freq_factor, with 0 < low_freq_factor < "
                       "high_freq_factor");
    if (!(original >= 1 && original <= kMaxPositions && original == std::floor(original)))
      f.bad(field, rp, "llama3 RoPE needs original_max_position_embeddings, a positive integer");
    s.low_freq_factor = static_cast<float>(low);
    s.high_freq_factor = static_cast<float>(high);
    s.original_max_positions = static_cast<int>(original);
  }
  *scaling = s;
}

// Same reason as Fields::opt_float: Inf would load but never save.
float rope_float(const Fields& f, double theta) {
  if (std::fabs(theta) > std::numeric_limits<float>::max())
    throw Error(f.where + ": rope_theta " + json::format_double(theta) + " is outside the range of a float");
  return static_cast<float>(theta);
}

// The Llama-shaped families' RoPE: theta (transformers' default: 10000, SmolLM3's 2e6) and scaling. As in
// transformers 5, a rope_scaling (4.x) wins over rope_parameters; its own rope_theta, else the top-level one.
void llama_rope_of(const Fields& f, ModelConfig& c) {
  double theta = f.opt_num("rope_theta", c.arch == Arch::SMOLLM3 ? 2000000.0 : 10000.0);
  const json::Value* scaling = f.get("rope_scaling");
  if (const json::Value* rp = f.get("rope_parameters")) {
    double dict_theta = theta;
    cpu::RopeScaling dict_scaling;
    read_rope_object(f, "rope_parameters", *rp, dict_theta, &dict_scaling);  // checked either way
    if (!scaling) theta = dict_theta, c.rope_scaling = dict_scaling;
  }
  if (scaling) read_rope_object(f, "rope_scaling", *scaling, theta, &c.rope_scaling);
  c.rope_theta = rope_float(f, theta);
}

// Gemma 3's two RoPE bases: transformers 5 writes rope_parameters {"full_attention": {...}, "sliding_attention":
// {...}}; 4.x files have rope_theta (full) and rope_local_base_freq (sliding), and rope_scaling (full layers only).
void gemma_rope_of(const Fields& f, ModelConfig& c) {
  const double top = f.opt_num("rope_theta", 1000000.0);
  double full = top, local = f.opt_num("rope_local_base_freq", 10000.0);
  if (const json::Value* rp = f.get("rope_parameters")) {
    if (!rp->is_object()) f.bad("rope_parameters", *rp, "expected an object");
    for (const auto& kv : rp->object) {
      if (kv.first == "full_attention")
        read_rope_object(f, "rope_parameters", kv.second, full, &c.rope_scaling);
      else if (kv.first == "sliding_attention")
        read_rope_object(f, "rope_parameters", kv.second, local, nullptr);
      else
        f.bad("rope_parameters", *rp,
              "unexpected key \"" + kv.first + "\" (Gemma 3 has \"full_attention\" and \"sliding_attention\")");
    }
  }
  // a 4.x rope_scaling (the full layers') wins over rope_parameters' full_attention entry, as in transformers 5
  if (const json::Value* rs = f.get("rope_scaling")) {
    full = top;  // its own rope_theta, else the top-level one
    c.rope_scaling = cpu::RopeScaling{};
    read_rope_object(f, "rope_scaling", *rs, full, &c.rope_scaling);
  }
  c.rope_theta = rope_float(f, full);
  c.rope_local_theta = rope_float(f, local);
}

// layer_types as per-layer flags, 1 for "sliding_attention" (one entry per layer, each of the two kinds).
std::vector<uint8_t> sliding_of_layer_types(const Fields& f, const json::Value& lt, int n_layer) {
  if (!lt.is_array() || lt.array.size() != static_cast<size_t>(n_layer))
    f.bad("layer_types", lt, "expected a list with one entry per layer (" + std::to_string(n_layer) + ")");
  std::vector<uint8_t> sliding;
  for (const json::Value& t : lt.array) {
    if (!(t.is_string() && (t.str == "sliding_attention" || t.str == "full_attention")))
      f.bad("layer_types", lt, "entries must be \"sliding_attention\" or \"full_attention\"");
    sliding.push_back(t.str == "sliding_attention");
  }
  return sliding;
}

// SmolLM3's layer kinds: NoPE layers (no_rope_layers, 1 = RoPE; or every no_rope_layer_interval-th), and sliding
// windows where use_sliding_window says (layer_types; or, as transformers derives them, the NoPE layers).
void smollm3_layers_of(const Fields& f, ModelConfig& c) {
  c.nope.assign(c.n_layer, 0);
  if (const json::Value* nr = f.get("no_rope_layers")) {
    if (!nr->is_array() || nr->array.size() != static_cast<size_t>(c.n_layer))
      f.bad("no_rope_layers", *nr, "expected a list with one entry per layer (" + std::to_string(c.n_layer) + ")");
    for (size_t l = 0; l < nr->array.size(); l++) {
      const json::Value& v = nr->array[l];
      if (!(v.is_number() && (v.number == 0 || v.number == 1)))
        f.bad("no_rope_layers", *nr, "entries must be 1 (the layer uses RoPE) or 0 (it does not)");
      c.nope[l] = v.number == 0;
    }
  } else {
    const int interval = f.opt_size("no_rope_layer_interval", 4, kMaxLayers);
    for (int l = 0; l < c.n_layer; l++) c.nope[l] = (l + 1) % interval == 0;
  }
  c.sliding.clear();
  c.sliding_window = 0;
  const bool use = f.opt_bool("use_sliding_window", false);
  const json::Value* window = f.get("sliding_window");
  std::vector<uint8_t> kinds;
  if (const json::Value* lt = f.get("layer_types")) {
    kinds = sliding_of_layer_types(f, *lt, c.n_layer);
    // transformers' attention kernels disagree on such layers (eager and sdpa slide them, flash attention does not,
    // and without a window transformers fails): refused rather than picking one
    if (std::find(kinds.begin(), kinds.end(), 1) != kinds.end() && !(use && window))
      f.bad("layer_types", *lt,
            "sliding_attention layers need use_sliding_window true and a sliding_window (set both, or make the layers "
            "full_attention)");
  }
  if (!use || !window) return;  // transformers: no window without both
  c.sliding_window = f.size("sliding_window", *window, kMaxPositions);
  c.sliding = kinds.empty() ? c.nope : kinds;  // without layer_types the NoPE layers slide, as transformers derives
}

// Mistral's window: every layer slides when sliding_window is a number; null means none, and a missing field
// transformers' default, 4096 (MistralConfig; Mistral 7B v0.1's value). Its attention has no biases (transformers
// hard-codes none and reads no attention_bias).
void mistral_window_of(const Fields& f, ModelConfig& c) {
  const json::Value* raw = f.root.get("sliding_window");
  if (raw && raw->is_null()) return;
  c.sliding_window = raw ? f.size("sliding_window", *raw, kMaxPositions) : 4096;
  c.sliding.assign(c.n_layer, 1);
}

// The Llama-shaped families' own fields (Llama, Qwen2, Qwen3, SmolLM3, OLMo 2, Mistral).
void llama_config_of(const Fields& f, ModelConfig& c, const std::string& model_type) {
  llama_rope_of(f, c);
  c.tie_embeddings = f.opt_bool("tie_word_embeddings", c.arch == Arch::SMOLLM3);
  const std::string act = f.opt_str("hidden_act", "silu");
  if (act != "silu")
    f.bad("hidden_act", *f.get("hidden_act"), "optune's " + model_type + " MLP is SwiGLU; only \"silu\" is supported");
  if (c.arch == Arch::LLAMA || c.arch == Arch::SMOLLM3 || c.arch == Arch::OLMO2) {
    c.qkv_bias = c.o_bias = f.opt_bool("attention_bias", false);
    if (f.opt_bool("mlp_bias", false))
      f.bad("mlp_bias", *f.get("mlp_bias"), "MLP biases are not supported (set mlp_bias to false)");
    if (c.arch == Arch::SMOLLM3) smollm3_layers_of(f, c);
    return;
  }
  if (c.arch == Arch::MISTRAL) {
    mistral_window_of(f, c);
    return;
  }
  if (c.arch == Arch::QWEN2) {  // Qwen2 hard-codes biases on q/k/v and none on o_proj
    c.qkv_bias = true;
    c.o_bias = false;
  } else {  // Qwen3: one attention_bias flag for q/k/v/o, as Llama
    c.qkv_bias = c.o_bias = f.opt_bool("attention_bias", false);
  }
  if (f.opt_bool("use_sliding_window", false))
    f.bad("use_sliding_window", *f.get("use_sliding_window"), "sliding-window attention is not supported");
  if (const json::Value* lt = f.get("layer_types")) {
    if (!lt->is_array()) f.bad("layer_types", *lt, "expected a list");
    for (const auto& t : lt->array)
      if (!(t.is_string() && t.str == "full_attention"))
        f.bad("layer_types", *lt, "only \"full_attention\" layers are supported");
  }
}

// Gemma 3's layer kinds: layer_types, or (older files) every sliding_window_pattern-th layer full.
void gemma_layers_of(const Fields& f, ModelConfig& c) {
  c.sliding.assign(c.n_layer, 0);
  if (const json::Value* lt = f.get("layer_types")) {
    c.sliding = sliding_of_layer_types(f, *lt, c.n_layer);
  } else {
    // (transformers reads sliding_window_pattern only; the "_sliding_window_pattern" it writes is not read back)
    const int pattern = f.opt_size("sliding_window_pattern", 6, kMaxLayers);
    for (int l = 0; l < c.n_layer; l++) c.sliding[l] = (l + 1) % pattern != 0;
  }
  c.sliding_window = f.opt_size("sliding_window", 4096, kMaxPositions);
}

// Gemma 3's own fields (the Llama-shaped ones are read by the caller).
void gemma_config_of(const Fields& f, ModelConfig& c) {
  gemma_rope_of(f, c);
  gemma_layers_of(f, c);
  c.tie_embeddings = f.opt_bool("tie_word_embeddings", true);
  c.qkv_bias = c.o_bias = f.opt_bool("attention_bias", false);
  c.attn_scalar = f.opt_float("query_pre_attn_scalar", 256);
  const std::string act = f.opt_str("hidden_activation", "gelu_pytorch_tanh");
  if (act != "gelu_pytorch_tanh")
    f.bad("hidden_activation", *f.get("hidden_activation"),
          "optune's Gemma 3 MLP is gated by the tanh GELU; only \"gelu_pytorch_tanh\" is supported");
  for (const char* cap : {"attn_logit_softcapping", "final_logit_softcapping"})
    if (const json::Value* v = f.get(cap))
      f.bad(cap, *v, "logit soft-capping is not supported (Gemma 3's checkpoints set it to null)");
  if (f.opt_bool("use_bidirectional_attention", false))
    f.bad("use_bidirectional_attention", *f.get("use_bidirectional_attention"),
          "bidirectional attention (an encoder such as EmbeddingGemma) is not supported");
}

// The number of labels of a *ForSequenceClassification config: id2label wins, then num_labels, else transformers'
// default of 2.
void check_one_label(const Fields& f) {
  const json::Value* id2label = f.get("id2label");
  const json::Value* num_labels = f.get("num_labels");
  if (id2label) {
    if (!id2label->is_object()) f.bad("id2label", *id2label, "expected an object");
    if (id2label->object.size() != 1)
      f.bad("id2label", *id2label,
            "a reward model needs exactly one label (a scalar score); this config has " +
                std::to_string(id2label->object.size()));
  }
  if (num_labels) {
    const int n = f.integer("num_labels", *num_labels);
    if (n != 1) f.bad("num_labels", *num_labels, "a reward model needs num_labels == 1 (a scalar score)");
  }
  if (!id2label && !num_labels)
    throw Error(f.where + ": a *ForSequenceClassification config without \"id2label\" or \"num_labels\" has " +
                "transformers' default of 2 labels; a reward model needs one (save it with num_labels=1)");
}

}  // namespace

// A multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration: gemma-3-4b and up) is read as its language model:
// text_config as a gemma3_text config (Gemma3TextConfig's defaults for the sizes it leaves out, the top level's
// token ids where it has none). The vision tower and projector are not loaded (load_checkpoint skips their tensors),
// so the model saves as the text model it is (Gemma3ForCausalLM).
static bool is_multimodal_gemma3(const json::Value& root) {
  const json::Value* mt = root.get("model_type");
  return mt && mt->is_string() && mt->str == "gemma3";
}

static ModelConfig config_from_root(const json::Value& root, const std::string& where);

static ModelConfig multimodal_gemma3_config(const Fields& f) {
  if (const json::Value* archs = f.get("architectures"))
    if (!(archs->is_array() && !archs->array.empty() && archs->array[0].is_string() &&
          archs->array[0].str == "Gemma3ForConditionalGeneration"))
      f.bad("architectures", *archs,
            "a multimodal Gemma 3 checkpoint is read as its language model, from a Gemma3ForConditionalGeneration "
            "(other heads are not supported)");
  const json::Value* tc = f.get("text_config");
  if (!tc || !tc->is_object())
    throw Error(f.where + ": a multimodal Gemma 3 config (model_type \"gemma3\") needs its \"text_config\" object");
  json::Value text = *tc;
  text.set("model_type", json::Value::of_string("gemma3_text"));
  text.object.erase(std::remove_if(text.object.begin(), text.object.end(),
                                   [](const auto& kv) { return kv.first == "architectures"; }),
                    text.object.end());
  for (const auto& [name, value] : std::vector<std::pair<const char*, int>>{
           {"vocab_size", 262208}, {"hidden_size", 2304}, {"intermediate_size", 9216}, {"num_hidden_layers", 26},
           {"num_attention_heads", 8}, {"max_position_embeddings", 131072}})
    if (!text.get(name) || text.get(name)->is_null()) text.set(name, json::Value::of_int(value));
  for (const char* id : {"bos_token_id", "eos_token_id", "pad_token_id"})
    if ((!text.get(id) || text.get(id)->is_null()) && f.get(id)) text.set(id, *f.get(id));
  return config_from_root(text, f.where + " (text_config)");
}

ModelConfig config_from_hf_json(const std::string& json_text, const std::string& where) {
  return config_from_root(json::parse(json_text, where), where);
}

// config.json's parsed root as a ModelConfig (config_from_hf_json).
static ModelConfig config_from_root(const json::Value& root, const std::string& where) {
  OPTUNE_CHECK(root.is_object(), where + ": config.json must be a JSON object, got " + json::type_name(root.type));
  const Fields f{root, where};
  if (is_multimodal_gemma3(root)) return multimodal_gemma3_config(f);
  ModelConfig c;

  const json::Value* mt = f.get("model_type");
  OPTUNE_CHECK(mt, where + ": missing required field \"model_type\" (expected \"gpt2\", \"llama\", \"qwen2\", "
                       "\"qwen3\", \"gemma3_text\", \"smollm3\", \"olmo2\" or \"mistral\")");
  if (!mt->is_string()) f.bad("model_type", *mt, "expected a string");
  const std::string model_type = mt->str;
  if (model_type == "gpt2") c.arch = Arch::GPT2;
  else if (model_type == "llama") c.arch = Arch::LLAMA;
  else if (model_type == "qwen2") c.arch = Arch::QWEN2;
  else if (model_type == "qwen3") c.arch = Arch::QWEN3;
  else if (model_type == "gemma3_text") c.arch = Arch::GEMMA3;
  else if (model_type == "smollm3") c.arch = Arch::SMOLLM3;
  else if (model_type == "olmo2") c.arch = Arch::OLMO2;
  else if (model_type == "mistral") c.arch = Arch::MISTRAL;
  else
    f.bad("model_type", *mt,
          "unsupported model type; optune supports \"gpt2\", \"llama\", \"qwen2\", \"qwen3\", \"gemma3_text\", "
          "\"smollm3\", \"olmo2\" and \"mistral\"");

  // architectures[0] picks the head: causal LM or a one-label sequence classifier (reward model).
  ModelConfig head = c;
  head.reward_model = false;
  const std::string lm_name = hf_architecture_name(head);
  head.reward_model = true;
  const std::string rm_name = hf_architecture_name(head);
  if (const json::Value* archs = f.get("architectures")) {
    if (!archs->is_array() || archs->array.empty() || !archs->array[0].is_string())
      f.bad("architectures", *archs, "expected a non-empty list of class names");
    const std::string& a = archs->array[0].str;
    if (a == rm_name) c.reward_model = true;
    else if (a != lm_name)
      f.bad("architectures", *archs,
            "unsupported architecture \"" + a + "\" for model_type \"" + model_type + "\"; expected \"" + lm_name +
                "\" or \"" + rm_name + "\"");
  }
  if (c.reward_model) check_one_label(f);

  if (c.arch == Arch::GPT2) {
    c.vocab_size = f.req_size("vocab_size", model_type, kMaxVocab);
    c.d_model = f.req_size("n_embd", model_type, kMaxWidth);
    c.n_layer = f.req_size("n_layer", model_type, kMaxLayers);
    c.n_head = f.req_size("n_head", model_type, kMaxHeads);
    c.max_positions = f.req_size("n_positions", model_type, kMaxPositions);
    c.n_kv_head = c.n_head;
    c.head_dim = c.d_model / c.n_head;
    c.d_ff = f.opt_size("n_inner", 4 * c.d_model, kMaxFF);
    c.norm_eps = f.opt_float("layer_norm_epsilon", 1e-5);
    c.tie_embeddings = f.opt_bool("tie_word_embeddings", true);
    const std::string act = f.opt_str("activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      f.bad("activation_function", *f.get("activation_function"),
            "optune's GPT-2 uses the tanh GELU; supported: \"gelu_new\", \"gelu_pytorch_tanh\"");
    if (f.opt_bool("scale_attn_by_inverse_layer_idx", false))
      f.bad("scale_attn_by_inverse_layer_idx", *f.get("scale_attn_by_inverse_layer_idx"), "not supported");
    if (!f.opt_bool("scale_attn_weights", true))
      f.bad("scale_attn_weights", *f.get("scale_attn_weights"), "not supported (attention is always scaled)");
    if (f.opt_bool("add_cross_attention", false))
      f.bad("add_cross_attention", *f.get("add_cross_attention"), "cross-attention is not supported");
  } else {
    c.vocab_size = f.req_size("vocab_size", model_type, kMaxVocab);
    c.d_model = f.req_size("hidden_size", model_type, kMaxWidth);
    c.d_ff = f.req_size("intermediate_size", model_type, kMaxFF);
    c.n_layer = f.req_size("num_hidden_layers", model_type, kMaxLayers);
    c.n_head = f.req_size("num_attention_heads", model_type, kMaxHeads);
    c.max_positions = f.req_size("max_position_embeddings", model_type, kMaxPositions);
    // missing fields take transformers' defaults: Gemma3TextConfig's 4 KV heads and head_dim 256, else n_head KV
    // heads and hidden_size / num_attention_heads
    c.n_kv_head = f.opt_size("num_key_value_heads", c.is_gemma() ? 4 : c.n_head, kMaxHeads);
    if (!c.is_gemma() && !f.get("head_dim") && c.d_model % c.n_head != 0)
      throw Error(where + ": hidden_size (" + std::to_string(c.d_model) + ") is not divisible by " +
                  "num_attention_heads (" + std::to_string(c.n_head) + ") and there is no \"head_dim\" field");
    c.head_dim = f.opt_size("head_dim", c.is_gemma() ? 256 : c.d_model / c.n_head, kMaxWidth);
    c.norm_eps = f.opt_float("rms_norm_eps", 1e-6);
    if (c.is_gemma())
      gemma_config_of(f, c);
    else
      llama_config_of(f, c, model_type);
  }
  c.bos_token_id = f.token_id("bos_token_id");
  c.eos_token_id = f.token_id("eos_token_id");
  c.pad_token_id = f.token_id("pad_token_id");
  try {
    validate_config(c);
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  return c;
}

// ---- ModelConfig -> config.json -------------------------------------------------------------------------------

// A RoPE settings object: rope_type, the scaling's fields, and rope_theta unless it is < 0 (4.x's rope_scaling).
static json::Value rope_object(float theta, const cpu::RopeScaling& s) {
  using json::Value;
  Value r = Value::new_object();
  const char* type = s.type == cpu::RopeScaling::LINEAR   ? "linear"
                     : s.type == cpu::RopeScaling::LLAMA3 ? "llama3"
                                                          : "default";
  r.set("rope_type", Value::of_string(type));
  if (theta >= 0) r.set("rope_theta", Value::of_float(theta));
  if (s.type != cpu::RopeScaling::NONE) r.set("factor", Value::of_float(s.factor));
  if (s.type == cpu::RopeScaling::LLAMA3) {
    r.set("low_freq_factor", Value::of_float(s.low_freq_factor));
    r.set("high_freq_factor", Value::of_float(s.high_freq_factor));
    r.set("original_max_position_embeddings", Value::of_int(s.original_max_positions));
  }
  return r;
}

// The Llama-shaped families' own fields (Llama, Qwen2, Qwen3, SmolLM3, OLMo 2, Mistral).
static void llama_config_to(const ModelConfig& c, json::Value& o) {
  using json::Value;
  o.set("hidden_act", Value::of_string("silu"));
  // rope_parameters for transformers 5, rope_theta and rope_scaling for 4.x (5.x reads them too: the two agree).
  o.set("rope_theta", Value::of_float(c.rope_theta));
  if (c.rope_scaling.type != cpu::RopeScaling::NONE) o.set("rope_scaling", rope_object(-1, c.rope_scaling));
  o.set("rope_parameters", rope_object(c.rope_theta, c.rope_scaling));
  if (c.arch == Arch::LLAMA || c.arch == Arch::SMOLLM3 || c.arch == Arch::OLMO2) {
    o.set("attention_bias", Value::of_bool(c.qkv_bias));
    if (c.arch != Arch::OLMO2) o.set("mlp_bias", Value::of_bool(false));  // (OLMo 2's config has none)
    if (c.arch != Arch::SMOLLM3) return;
    Value rope_layers = Value::new_array(), types = Value::new_array();
    for (int l = 0; l < c.n_layer; l++) {
      rope_layers.push(Value::of_int(c.layer_rotates(l) ? 1 : 0));
      types.push(Value::of_string(c.layer_sliding(l) ? "sliding_attention" : "full_attention"));
    }
    o.set("no_rope_layers", std::move(rope_layers));
    o.set("use_sliding_window", Value::of_bool(!c.sliding.empty()));
    o.set("sliding_window", c.sliding.empty() ? Value::null() : Value::of_int(c.sliding_window));
    o.set("layer_types", std::move(types));
  } else if (c.arch == Arch::MISTRAL) {
    o.set("sliding_window", c.sliding.empty() ? Value::null() : Value::of_int(c.sliding_window));
  } else {
    if (c.arch == Arch::QWEN3) o.set("attention_bias", Value::of_bool(c.qkv_bias));
    o.set("use_sliding_window", Value::of_bool(false));
    o.set("sliding_window", Value::null());
  }
}

// Gemma 3's fields, as transformers 5 writes them, with 4.x's rope_theta / rope_local_base_freq beside them.
static void gemma_config_to(const ModelConfig& c, json::Value& o) {
  using json::Value;
  o.set("hidden_activation", Value::of_string("gelu_pytorch_tanh"));
  // an integer (validate_config): transformers 5's config class refuses 256.0
  o.set("query_pre_attn_scalar", Value::of_int(static_cast<int>(c.attn_scalar)));
  o.set("sliding_window", Value::of_int(c.sliding_window));
  Value types = Value::new_array();
  for (int l = 0; l < c.n_layer; l++)
    types.push(Value::of_string(c.layer_sliding(l) ? "sliding_attention" : "full_attention"));
  o.set("layer_types", std::move(types));
  Value params = Value::new_object();
  params.set("full_attention", rope_object(c.rope_theta, c.rope_scaling));
  params.set("sliding_attention", rope_object(c.rope_local_theta, cpu::RopeScaling{}));
  o.set("rope_parameters", std::move(params));
  o.set("rope_theta", Value::of_float(c.rope_theta));
  if (c.rope_scaling.type != cpu::RopeScaling::NONE) o.set("rope_scaling", rope_object(-1, c.rope_scaling));
  o.set("rope_local_base_freq", Value::of_float(c.rope_local_theta));
  o.set("attention_bias", Value::of_bool(c.qkv_bias));
  o.set("attn_logit_softcapping", Value::null());
  o.set("final_logit_softcapping", Value::null());
  o.set("use_bidirectional_attention", Value::of_bool(false));
}

std::string config_to_hf_json(const ModelConfig& c) {
  validate_config(c);
  using json::Value;
  Value o = Value::new_object();
  Value archs = Value::new_array();
  archs.push(Value::of_string(hf_architecture_name(c)));
  o.set("architectures", std::move(archs));
  o.set("model_type", Value::of_string(arch_name(c.arch)));
  o.set("vocab_size", Value::of_int(c.vocab_size));
  if (c.is_gpt2()) {
    o.set("n_positions", Value::of_int(c.max_positions));
    o.set("n_ctx", Value::of_int(c.max_positions));
    o.set("n_embd", Value::of_int(c.d_model));
    o.set("n_layer", Value::of_int(c.n_layer));
    o.set("n_head", Value::of_int(c.n_head));
    o.set("n_inner", Value::of_int(c.d_ff));
    o.set("activation_function", Value::of_string("gelu_new"));
    o.set("layer_norm_epsilon", Value::of_float(c.norm_eps));
  } else {
    if (c.arch != Arch::QWEN2)
      OPTUNE_CHECK(c.qkv_bias == c.o_bias, std::string("config_to_hf_json: transformers' ") + hf_class_prefix(c.arch) +
                                               " has one attention_bias flag for q/k/v/o; qkv_bias and o_bias must "
                                               "be equal");
    if (c.arch == Arch::QWEN2)
      OPTUNE_CHECK(c.qkv_bias && !c.o_bias, "config_to_hf_json: transformers' Qwen2 always has q/k/v biases and no "
                                            "o_proj bias; use arch llama for other bias settings");
    o.set("hidden_size", Value::of_int(c.d_model));
    o.set("intermediate_size", Value::of_int(c.d_ff));
    o.set("num_hidden_layers", Value::of_int(c.n_layer));
    o.set("num_attention_heads", Value::of_int(c.n_head));
    o.set("num_key_value_heads", Value::of_int(c.n_kv_head));
    o.set("head_dim", Value::of_int(c.head_dim));
    o.set("max_position_embeddings", Value::of_int(c.max_positions));
    o.set("rms_norm_eps", Value::of_float(c.norm_eps));
    if (c.is_gemma())
      gemma_config_to(c, o);
    else
      llama_config_to(c, o);
  }
  o.set("tie_word_embeddings", Value::of_bool(c.tie_embeddings));
  auto token = [](int id) { return id >= 0 ? Value::of_int(id) : Value::null(); };
  o.set("bos_token_id", token(c.bos_token_id));
  o.set("eos_token_id", token(c.eos_token_id));
  o.set("pad_token_id", token(c.pad_token_id));
  if (c.reward_model) {
    Value id2label = Value::new_object();
    id2label.set("0", Value::of_string("LABEL_0"));
    Value label2id = Value::new_object();
    label2id.set("LABEL_0", Value::of_int(0));
    o.set("num_labels", Value::of_int(1));
    o.set("id2label", std::move(id2label));
    o.set("label2id", std::move(label2id));
  }
  o.set("dtype", Value::of_string("float32"));        // transformers >= 4.56
  o.set("torch_dtype", Value::of_string("float32"));  // older transformers
  return json::dump(o, 2) + "\n";
}

// ---- files ----------------------------------------------------------------------------------------------------

namespace {

std::string errno_str() { return std::strerror(errno); }

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_text_file(const std::string& path, size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  OPTUNE_CHECK(fd >= 0, path + ": cannot open: " + errno_str());
  std::string text;
  try {
    struct stat st;
    OPTUNE_CHECK(::fstat(fd, &st) == 0, path + ": cannot stat: " + errno_str());
    OPTUNE_CHECK(S_ISREG(st.st_mode), path + ": not a regular file");
    OPTUNE_CHECK(static_cast<uint64_t>(st.st_size) <= max_bytes,
                 path + ": file is " + std::to_string(st.st_size) + " bytes; the limit for this file is " +
                     std::to_string(max_bytes) + " bytes");
    char buf[65536];
    for (;;) {
      const ssize_t r = ::read(fd, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      OPTUNE_CHECK(r >= 0, path + ": read failed: " + errno_str());
      if (r == 0) break;
      text.append(buf, static_cast<size_t>(r));
      OPTUNE_CHECK(text.size() <= max_bytes, path + ": file grew past " + std::to_string(max_bytes) + " bytes");
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
  return text;
}

// Buffers that transformers saves (or used to) next to the weights and that optune recomputes.
bool is_ignored_buffer(const ModelConfig& c, const std::string& name) {
  auto ends_with = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  if (c.is_gpt2()) return ends_with(".attn.bias") || ends_with(".attn.masked_bias");  // causal-mask buffers
  return name == "model.rotary_emb.inv_freq" || ends_with(".rotary_emb.inv_freq");
}

bool starts_with(const std::string& s, const char* prefix) { return s.compare(0, std::strlen(prefix), prefix) == 0; }

// The name in params.h form. Base-model files (and the original GPT-2 hub files) lack the "transformer." /
// "model." prefix.
std::string canonical_name(const ModelConfig& c, const std::string& name) {
  auto starts_with = [&](const char* s) { return optune::starts_with(name, s); };
  if (c.is_gpt2()) {
    if (starts_with("h.") || starts_with("wte.") || starts_with("wpe.") || starts_with("ln_f."))
      return "transformer." + name;
  } else {
    if (starts_with("layers.") || starts_with("embed_tokens.") || name == "norm.weight") return "model." + name;
  }
  return name;
}

// A multimodal Gemma 3 file's tensor under its language model's name: save_pretrained writes
// "language_model.model.X" (and "language_model.lm_head.weight") in every transformers version; the module names
// of transformers >= 4.52 ("model.language_model.X", e.g. a raw state_dict) are read too. "" for the vision tower
// and the projector, which are not loaded.
std::string language_model_name(const std::string& name) {
  auto starts_with = [&](const char* s) { return optune::starts_with(name, s); };
  for (const char* prefix : {"language_model.model.", "model.language_model."})
    if (starts_with(prefix)) return "model." + name.substr(std::strlen(prefix));
  if (name == "language_model.lm_head.weight") return "lm_head.weight";
  for (const char* prefix : {"vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                             "model.multi_modal_projector."})
    if (starts_with(prefix)) return "";
  return name;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

struct Source {
  const safetensors::Reader* file;
  const safetensors::TensorInfo* info;
};

// Opens the shards listed in model.safetensors.index.json and checks that each one holds what the index says.
void open_sharded(const std::string& dir, const std::string& index_path,
                  std::vector<std::unique_ptr<safetensors::Reader>>& files) {
  const json::Value index = json::parse(read_text_file(index_path, 64u << 20), index_path);
  const json::Value* wm = index.get("weight_map");
  OPTUNE_CHECK(wm && wm->is_object(), index_path + ": missing \"weight_map\" object (tensor name -> shard file)");
  std::map<std::string, safetensors::Reader*> shard_of_file;
  for (const auto& kv : wm->object) {
    OPTUNE_CHECK(kv.second.is_string(), index_path + ": weight_map[" + json::quote(kv.first) +
                                            "] must be a file name string, got " + json::type_name(kv.second.type));
    const std::string& file = kv.second.str;
    // A shard is a file in this directory: no paths, so an index cannot point outside the checkpoint.
    OPTUNE_CHECK(!file.empty() && file != "." && file != ".." && file.find('/') == std::string::npos &&
                     file.find('\\') == std::string::npos,
                 index_path + ": weight_map[" + json::quote(kv.first) + "] = " + json::quote(file) +
                     " is not a plain file name in the checkpoint directory");
    auto it = shard_of_file.find(file);
    if (it == shard_of_file.end()) {
      files.push_back(std::make_unique<safetensors::Reader>(dir + "/" + file));
      it = shard_of_file.emplace(file, files.back().get()).first;
    }
    OPTUNE_CHECK(it->second->header().find(kv.first),
                 index_path + ": weight_map says " + json::quote(kv.first) + " is in " + file +
                     ", but that file has no such tensor (the index and the shards do not match)");
  }
  OPTUNE_CHECK(!files.empty(), index_path + ": weight_map is empty");
}

// Replaces `path` by `tmp` so that readers see the old file or the new one, never a partial one.
void commit_file(const std::string& tmp, const std::string& path) {
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = errno_str();
    ::unlink(tmp.c_str());
    throw Error(path + ": cannot rename " + tmp + " into place: " + err);
  }
}

void write_text_file_synced(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  OPTUNE_CHECK(fd >= 0, path + ": cannot create file: " + errno_str());
  const char* p = text.data();
  size_t n = text.size();
  bool ok = true;
  std::string err;
  while (ok && n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      ok = false;
      err = "write failed: " + errno_str();
      break;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  if (ok && ::fsync(fd) != 0) {
    ok = false;
    err = "fsync failed: " + errno_str();
  }
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = "close failed: " + errno_str();
  }
  OPTUNE_CHECK(ok, path + ": " + err + " (is the disk full or read-only?)");
}

// The renames in a directory are durable only once the directory entry is on disk.
void fsync_dir(const std::string& dir) {
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  OPTUNE_CHECK(dfd >= 0, dir + ": cannot open directory to fsync it: " + errno_str());
  // EINVAL: the filesystem cannot sync directories (some network/virtual filesystems); nothing more to do there.
  const bool ok = ::fsync(dfd) == 0 || errno == EINVAL;
  const std::string err = ok ? "" : errno_str();
  ::close(dfd);
  OPTUNE_CHECK(ok, dir + ": fsync of the directory failed: " + err);
}

std::string temp_name(const std::string& dir, const std::string& file) {
  static std::atomic<unsigned> counter{0};
  return dir + "/." + file + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
}

// Writes dir/<weights_file> (fp32 safetensors) and dir/<config_file>. Both are written in full to temporary names
// before either replaces its old copy, so a failed write (a full disk, say) leaves the directory's previous files
// whole instead of new weights beside an old config.
void write_weights_and_config(const std::string& dir, const std::string& weights_file,
                              const std::vector<safetensors::TensorRef>& refs, const std::string& config_file,
                              const std::string& config_text) {
  const std::string weights = dir + "/" + weights_file, config = dir + "/" + config_file;
  const std::string weights_tmp = temp_name(dir, weights_file), config_tmp = temp_name(dir, config_file);
  try {
    safetensors::save(weights_tmp, refs, {{"format", "pt"}});
    write_text_file_synced(config_tmp, config_text);
  } catch (...) {
    ::unlink(weights_tmp.c_str());
    ::unlink(config_tmp.c_str());
    throw;
  }
  commit_file(weights_tmp, weights);
  commit_file(config_tmp, config);
  fsync_dir(dir);
}

}  // namespace

// ---- load / save ----------------------------------------------------------------------------------------------

// dir/config.json's path and text, with the errors that say what a model directory needs.
static std::pair<std::string, std::string> config_file_of(const std::string& dir) {
  struct stat st;
  OPTUNE_CHECK(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode),
               dir + ": not a directory (expected a Hugging Face model directory with config.json and "
                     "model.safetensors)");
  const std::string cfg_path = dir + "/config.json";
  OPTUNE_CHECK(is_file(cfg_path), cfg_path + ": not found (expected a Hugging Face model directory)");
  return {cfg_path, read_text_file(cfg_path, 16u << 20)};
}

ModelConfig read_model_config(const std::string& dir) {
  const auto [cfg_path, cfg_text] = config_file_of(dir);
  return config_from_hf_json(cfg_text, cfg_path);
}

std::unique_ptr<Model> load_checkpoint(const std::string& dir) {
  const auto [cfg_path, cfg_text] = config_file_of(dir);
  const json::Value cfg_root = json::parse(cfg_text, cfg_path);
  const ModelConfig cfg = config_from_root(cfg_root, cfg_path);
  // a multimodal Gemma 3 (config_from_root read its language model): its tensors under their own names
  const bool multimodal = is_multimodal_gemma3(cfg_root);
  // The layout only, for now: weights are allocated once the files are known to hold every tensor, so memory is
  // bounded by what is on disk, not by what config.json claims.
  const ParamLayout layout = build_param_layout(cfg);

  std::vector<std::unique_ptr<safetensors::Reader>> files;
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  std::string what;  // names the weights in errors
  if (is_file(single)) {
    files.push_back(std::make_unique<safetensors::Reader>(single));
    what = single;
  } else if (is_file(index)) {
    open_sharded(dir, index, files);
    what = index;
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json (PyTorch .bin checkpoints are not "
                      "supported: re-save with save_pretrained(..., safe_serialization=True))");
  }

  // Every tensor in the files under its params.h name; a multimodal checkpoint's others are noted for saving.
  std::map<std::string, Source> by_name;
  std::map<std::string, std::string> file_name_of;  // canonical -> name as stored, for messages
  std::shared_ptr<MultimodalParts> parts;
  if (multimodal) parts = std::make_shared<MultimodalParts>(MultimodalParts{cfg_text, cfg_path, "", {}});
  for (const auto& f : files) {
    for (const auto& t : f->header().tensors) {
      const std::string lm_name = multimodal ? language_model_name(t.name) : t.name;
      if (multimodal && lm_name.empty()) {  // the vision tower's or the projector's
        OPTUNE_CHECK(safetensors::dtype_converts_to_f32(t.dtype),
                     f->path() + ": tensor " + json::quote(t.name) + " has dtype " +
                         safetensors::dtype_name(t.dtype) + "; weights must be F32, F16, BF16 or F64");
        parts->tensors.push_back({t.name, f->path(), t.shape});
        continue;
      }
      if (multimodal && parts->prefix.empty())
        for (const char* prefix : {"language_model.model.", "model.language_model."})
          if (starts_with(t.name, prefix)) parts->prefix = prefix;
      const std::string name = canonical_name(cfg, lm_name);
      if (name.empty() || is_ignored_buffer(cfg, name)) continue;
      auto prev = file_name_of.find(name);
      OPTUNE_CHECK(prev == file_name_of.end(), what + ": tensor " + json::quote(name) + " is stored twice (as " +
                                                   json::quote(prev->second) + " and " + json::quote(t.name) + ")");
      by_name[name] = Source{f.get(), &t};
      file_name_of[name] = t.name;
    }
  }

  std::vector<Source> source_of;  // per layout tensor
  for (const ParamInfo& p : layout.tensors) {
    auto it = by_name.find(p.name);
    OPTUNE_CHECK(it != by_name.end(), what + ": missing tensor " + json::quote(p.name) + " (shape " +
                                          shape_str(p.shape) + ") needed by " + hf_architecture_name(cfg));
    const safetensors::TensorInfo& t = *it->second.info;
    OPTUNE_CHECK(t.shape == p.shape, it->second.file->path() + ": tensor " + json::quote(t.name) + " has shape " +
                                         shape_str(t.shape) + ", expected " + shape_str(p.shape) +
                                         " from config.json (does config.json belong to these weights?)");
    OPTUNE_CHECK(safetensors::dtype_converts_to_f32(t.dtype),
                 it->second.file->path() + ": tensor " + json::quote(t.name) + " has dtype " +
                     safetensors::dtype_name(t.dtype) + "; weights must be F32, F16, BF16 or F64");
    source_of.push_back(it->second);
    by_name.erase(it);
  }
  // A tied lm_head saved anyway (as some tools do) is the embedding matrix again: accept and skip it.
  auto lm = by_name.find("lm_head.weight");
  if (lm != by_name.end() && cfg.tie_embeddings && !cfg.reward_model) {
    const std::vector<int64_t> want = {cfg.vocab_size, cfg.d_model};
    OPTUNE_CHECK(lm->second.info->shape == want,
                 lm->second.file->path() + ": tied tensor \"lm_head.weight\" has shape " +
                     shape_str(lm->second.info->shape) + ", expected " + shape_str(want));
    by_name.erase(lm);
  }
  if (!by_name.empty()) {
    std::string list;
    size_t shown = 0;
    for (const auto& kv : by_name) {
      if (shown == 5) break;
      list += (shown++ ? ", " : "") + json::quote(file_name_of[kv.first]);
    }
    if (by_name.size() > shown) list += ", ... (" + std::to_string(by_name.size()) + " in all)";
    throw Error(what + ": unexpected tensors not used by " + hf_architecture_name(cfg) + ": " + list +
                " (does config.json match the weights?)");
  }
  auto m = make_model(cfg);
  if (parts) {
    if (parts->prefix.empty()) parts->prefix = "language_model.model.";  // (a file holding only an lm_head: no)
    m->multimodal = parts;
  }
  for (size_t i = 0; i < layout.tensors.size(); i++) {
    const ParamInfo& p = layout.tensors[i];
    float* w = m->params.data() + p.offset;
    source_of[i].file->read_f32(*source_of[i].info, w);
    // A NaN/Inf weight (or an F64 one beyond float range) would only surface later, as "diverged" logits in the
    // first sampling call; name the tensor here instead.
    for (size_t j = 0; j < p.numel; j++)
      OPTUNE_CHECK(std::isfinite(w[j]), source_of[i].file->path() + ": tensor " + json::quote(source_of[i].info->name) +
                                            " holds a non-finite value (" + std::to_string(w[j]) + " at element " +
                                            std::to_string(j) + " after conversion to F32); the checkpoint is " +
                                            "corrupt or was saved from diverged weights: use another checkpoint");
  }
  return m;
}

// A NaN/Inf weight would be written as-is and poison every later load and resume: refused before anything is
// written, so the checkpoint already in `dir` (the last good one) stays as it was. `what` names the kind of tensor.
static void check_finite_before_save(const std::string& dir, const char* what, const ParamInfo& p, const float* w) {
  for (size_t i = 0; i < p.numel; i++)
    OPTUNE_CHECK(std::isfinite(w[i]), dir + ": checkpoint not saved: " + what + " " + json::quote(p.name) + " holds a " +
                                          "non-finite value (" + std::to_string(w[i]) + " at element " +
                                          std::to_string(i) + "); the weights have diverged. Nothing was written; " +
                                          "resume from the last good checkpoint with a lower learning rate or " +
                                          "gradient clipping");
}

// A LoRA model's adapters, checked before they are merged into the weights (where a NaN would be blamed on a
// frozen tensor).
static void check_adapters_finite(const Lora& L, const std::string& dir) {
  for (const ParamInfo& p : L.layout.tensors)
    check_finite_before_save(dir, "adapter tensor", p, L.params.data() + p.offset);
}

// A multimodal model's language-model tensor under the name its source gave it (load_checkpoint's
// language_model_name, backwards).
static std::string multimodal_name(const MultimodalParts& mm, const std::string& name) {
  if (starts_with(name, "model.")) return mm.prefix + name.substr(std::strlen("model."));
  if (name == "lm_head.weight" && mm.prefix == "language_model.model.") return "language_model.lm_head.weight";
  return name;
}

// The multimodal source's config.json with dtype float32 (the tensors are written as F32).
static std::string multimodal_config_text(const MultimodalParts& mm) {
  json::Value root = json::parse(mm.config_text, mm.config_path);
  root.set("dtype", json::Value::of_string("float32"));
  root.set("torch_dtype", json::Value::of_string("float32"));
  return json::dump(root, 2) + "\n";
}

// The vision tower's and projector's tensors, read again from the files the model was loaded from: every file opened
// and every tensor found with its shape before the caller writes anything (the readers stay open for the write).
static std::vector<safetensors::TensorRef> multimodal_tensor_refs(
    const MultimodalParts& mm, std::map<std::string, std::unique_ptr<safetensors::Reader>>& readers) {
  std::vector<safetensors::TensorRef> refs;
  for (const MultimodalParts::Tensor& t : mm.tensors) {
    auto& reader = readers[t.file];
    const std::string gone = ": the multimodal checkpoint this model was loaded from (" + mm.config_path +
                             ") is needed to save its vision tower and projector, which optune does not keep in "
                             "memory; ";
    try {
      if (!reader) reader = std::make_unique<safetensors::Reader>(t.file);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + gone + "restore it and save again");
    }
    const safetensors::TensorInfo* info = reader->header().find(t.name);
    OPTUNE_CHECK(info && info->shape == t.shape, t.file + ": tensor " + json::quote(t.name) +
                                                     (info ? " changed shape" : " is gone") + gone +
                                                     "restore the checkpoint it was loaded from and save again");
    const safetensors::Reader* r = reader.get();
    refs.push_back({t.name, t.shape, nullptr, [r, info](float* out) { r->read_f32(*info, out); }});
  }
  return refs;
}

void save_checkpoint(const Model& m, const std::string& dir) {
  validate_config(m.cfg);
  OPTUNE_CHECK(m.params.size() == m.layout.total,
               "save_checkpoint: model has " + std::to_string(m.params.size()) + " parameters, layout needs " +
                   std::to_string(m.layout.total));
  OPTUNE_CHECK(!dir.empty(), "save_checkpoint: empty directory path");
  // A LoRA model is written merged: its targets' weights with the adapters added (lora.h), merged one at a time as
  // the file is written (all at once they would hold most of the model a second time); checked before anything is
  // written, merged into one reused buffer.
  if (m.lora) check_adapters_finite(*m.lora, dir);
  std::vector<const LoraTarget*> target_of(m.layout.tensors.size(), nullptr);
  std::vector<float> merged;
  for (size_t i = 0; i < m.layout.tensors.size(); i++) {
    const ParamInfo& p = m.layout.tensors[i];
    target_of[i] = m.lora ? m.lora->find(p.offset) : nullptr;
    if (target_of[i]) merge_weight_into(m, *target_of[i], merged);
    check_finite_before_save(dir, "tensor", p, target_of[i] ? merged.data() : m.params.data() + p.offset);
  }
  std::vector<float>().swap(merged);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  OPTUNE_CHECK(!ec, dir + ": cannot create directory: " + ec.message());
  OPTUNE_CHECK(std::filesystem::is_directory(dir, ec), dir + ": exists and is not a directory");

  // before writing anything: these can throw
  const MultimodalParts* mm = m.multimodal.get();
  const std::string config_text = mm ? multimodal_config_text(*mm) : config_to_hf_json(m.cfg);
  std::map<std::string, std::unique_ptr<safetensors::Reader>> readers;  // (multimodal) the source's files
  std::vector<safetensors::TensorRef> refs;
  if (mm) refs = multimodal_tensor_refs(*mm, readers);

  for (size_t i = 0; i < m.layout.tensors.size(); i++) {
    const ParamInfo& p = m.layout.tensors[i];
    const std::string name = mm ? multimodal_name(*mm, p.name) : p.name;
    if (const LoraTarget* t = target_of[i])
      refs.push_back({name, p.shape, nullptr, [&m, t](float* out) { merge_weight_into(m, *t, out); }});
    else
      refs.push_back({name, p.shape, m.params.data() + p.offset, nullptr});
  }
  write_weights_and_config(dir, "model.safetensors", refs, "config.json", config_text);
  if (m.lora) save_lora_adapter(m, dir + "/adapter");
}

// ---- LoRA adapters (PEFT's files) ------------------------------------------------------------------------------

void save_lora_adapter(const Model& m, const std::string& dir) {
  OPTUNE_CHECK(m.lora != nullptr, "save_lora_adapter: the model has no LoRA adapters");
  const Lora& L = *m.lora;
  check_adapters_finite(L, dir);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  OPTUNE_CHECK(!ec, dir + ": cannot create directory: " + ec.message());

  // "all-linear" is written as the layer names it stands for, as PEFT writes it after resolving it.
  std::vector<std::string> names = L.cfg.targets;
  if (std::find(names.begin(), names.end(), "all-linear") != names.end()) {
    names.clear();
    for (const LoraTarget& t : L.targets) {
      const std::string leaf = t.module.substr(t.module.rfind('.') + 1);
      if (std::find(names.begin(), names.end(), leaf) == names.end()) names.push_back(leaf);
    }
  }
  using json::Value;
  Value c = Value::new_object();
  Value modules = Value::new_array();
  for (const std::string& n : names) modules.push(Value::of_string(n));
  c.set("peft_type", Value::of_string("LORA"));
  c.set("task_type", Value::of_string("CAUSAL_LM"));
  c.set("base_model_name_or_path", Value::null());
  c.set("r", Value::of_int(L.cfg.rank));
  c.set("lora_alpha", Value::of_float(L.cfg.alpha));
  c.set("lora_dropout", Value::of_double(0.0));
  c.set("target_modules", std::move(modules));
  c.set("bias", Value::of_string("none"));
  c.set("fan_in_fan_out", Value::of_bool(m.cfg.is_gpt2()));  // GPT-2's Conv1D stores W as [in, out]
  c.set("use_rslora", Value::of_bool(false));
  c.set("use_dora", Value::of_bool(false));
  c.set("modules_to_save", Value::null());
  c.set("inference_mode", Value::of_bool(true));
  const std::string config_text = json::dump(c, 2) + "\n";

  std::vector<safetensors::TensorRef> refs;
  for (const ParamInfo& p : L.layout.tensors) refs.push_back({p.name, p.shape, L.params.data() + p.offset});
  write_weights_and_config(dir, "adapter_model.safetensors", refs, "adapter_config.json", config_text);
}

LoraConfig read_lora_config(const std::string& dir) {
  const std::string path = dir + "/adapter_config.json";
  OPTUNE_CHECK(is_file(path), path + ": not found (a LoRA adapter directory holds adapter_config.json and "
                                     "adapter_model.safetensors, as PEFT's save_pretrained writes them)");
  const json::Value c = json::parse(read_text_file(path, 16u << 20), path);
  OPTUNE_CHECK(c.is_object(), path + ": expected a JSON object");
  auto field = [&](const char* key) { return c.get(key); };
  auto refuse_if = [&](bool bad, const std::string& what) {
    OPTUNE_CHECK(!bad, path + ": " + what + " is not supported by optune's LoRA (plain LoRA only)");
  };
  const json::Value* type = field("peft_type");
  OPTUNE_CHECK(!type || (type->is_string() && type->str == "LORA"),
               path + ": peft_type must be \"LORA\" (optune loads LoRA adapters only)");
  const json::Value* r = field("r");
  OPTUNE_CHECK(r && r->is_number() && r->is_int && r->integer >= 1 && r->integer <= 4096,
               path + ": \"r\" must be an integer rank in [1, 4096]");
  const json::Value* alpha = field("lora_alpha");
  OPTUNE_CHECK(alpha && alpha->is_number() && alpha->number > 0, path + ": \"lora_alpha\" must be a positive number");
  const json::Value* bias = field("bias");
  refuse_if(bias && !(bias->is_string() && bias->str == "none"), "\"bias\" other than \"none\"");
  // Every other field either does not change what the adapter computes (bookkeeping, how it was initialized or
  // trained), or must be at its default (off): DoRA, rsLoRA, per-layer ranks, adapters on some blocks only,
  // activated LoRA, trained biases, modules_to_save, ... A field this list does not know is refused unless it is
  // off, so a PEFT variant added later is never loaded as plain LoRA.
  static const char* const kHandled[] = {"peft_type", "r", "lora_alpha", "target_modules", "bias"};
  static const char* const kHarmless[] = {
      "base_model_name_or_path", "revision", "task_type", "inference_mode", "peft_version", "auto_mapping",
      "lora_dropout",     // training only (optune applies none)
      "fan_in_fan_out",   // GPT-2's Conv1D layout, known from the architecture
      "init_lora_weights", "loftq_config", "eva_config", "corda_config", "lora_ga_config", "kasa_config",  // init
      "megatron_core", "megatron_config", "qalora_group_size", "ensure_weight_tying"};
  for (const auto& [key, v] : c.object) {
    bool known = false;
    for (const char* k : kHandled) known = known || key == k;
    for (const char* k : kHarmless) known = known || key == k;
    const bool off = v.is_null() || (v.is_bool() && !v.boolean) || (v.is_array() && v.array.empty()) ||
                     (v.is_object() && v.object.empty());
    if (known || off) continue;
    std::string shown = json::dump(v);
    if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
    refuse_if(true, json::quote(key) + ": " + shown);
  }
  const json::Value* targets = field("target_modules");
  OPTUNE_CHECK(targets && (targets->is_array() || targets->is_string()),
               path + ": \"target_modules\" must list the targeted module names");
  LoraConfig out;
  out.rank = static_cast<int>(r->integer);
  out.alpha = static_cast<float>(alpha->number);
  out.targets.clear();
  if (targets->is_string()) {
    refuse_if(targets->str != "all-linear", "a regular expression as \"target_modules\"");
    out.targets.push_back("all-linear");
  } else {
    for (const json::Value& t : targets->array) {
      OPTUNE_CHECK(t.is_string(), path + ": \"target_modules\" must hold strings");
      out.targets.push_back(t.str);
    }
  }
  return out;
}

void load_lora_adapter(Model& m, const std::string& dir) {
  OPTUNE_CHECK(m.lora != nullptr, "load_lora_adapter: enable LoRA on the model first");
  Lora& L = *m.lora;
  const LoraConfig saved = read_lora_config(dir);
  const std::string config = dir + "/adapter_config.json";
  OPTUNE_CHECK(saved.rank == L.cfg.rank && saved.alpha == L.cfg.alpha,
               config + ": rank " + std::to_string(saved.rank) + " and alpha " + json::format_double(saved.alpha) +
                   ", but the model's adapters have rank " + std::to_string(L.cfg.rank) + " and alpha " +
                   json::format_double(L.cfg.alpha) + "; use the same LoRA settings as the run that saved it");
  std::vector<std::string> want, have;
  for (const LoraTarget& t : L.targets) want.push_back(t.module);
  for (const LoraTarget& t : resolve_lora_targets(m, saved.targets)) have.push_back(t.module);
  if (want != have) {
    size_t i = 0;
    while (i < want.size() && i < have.size() && want[i] == have[i]) i++;
    const std::string saved_module = i < have.size() ? have[i] : "(none)";
    const std::string model_module = i < want.size() ? want[i] : "(none)";
    throw Error(config + ": its target_modules select " + std::to_string(have.size()) + " layers, the model's " +
                "adapters " + std::to_string(want.size()) + "; the first difference: " + saved_module + " (saved) vs " +
                model_module + " (model); use the same LoRA targets as the run that saved it");
  }
  const std::string path = dir + "/adapter_model.safetensors";
  safetensors::Reader reader(path);
  std::vector<float> params(L.layout.total);
  for (const ParamInfo& p : L.layout.tensors) {
    const safetensors::TensorInfo* t = reader.header().find(p.name);
    OPTUNE_CHECK(t != nullptr, path + ": tensor " + json::quote(p.name) + " is missing");
    OPTUNE_CHECK(t->shape == p.shape, path + ": tensor " + json::quote(p.name) + " has shape " + shape_str(t->shape) +
                                          ", expected " + shape_str(p.shape));
    OPTUNE_CHECK(safetensors::dtype_converts_to_f32(t->dtype), path + ": tensor " + json::quote(p.name) +
                                                       " has a dtype that does not convert to F32");
    reader.read_f32(*t, params.data() + p.offset);
    for (size_t i = 0; i < p.numel; i++)
      OPTUNE_CHECK(std::isfinite(params[p.offset + i]),
                   path + ": tensor " + json::quote(p.name) + " holds a non-finite value; the file is corrupt");
  }
  OPTUNE_CHECK(reader.header().tensors.size() == L.layout.tensors.size(),
               path + ": holds " + std::to_string(reader.header().tensors.size()) + " tensors, the adapters need " +
                   std::to_string(L.layout.tensors.size()) + " (only lora_A / lora_B of the targeted modules)");
  L.params = std::move(params);
  // AdamW moments of other adapter weights would steer the next steps wrongly; a resume loads its own afterwards
  std::vector<float>().swap(m.adam_m);
  std::vector<float>().swap(m.adam_v);
  m.adam_step = 0;
  std::vector<float>().swap(m.grads);
}

// A fingerprint of the layout of what a model trains (every tensor's name and shape, in order; FNV-1a, 64 bits): AdamW
// moments saved for one layout are meaningless for another with the same parameter count.
static std::string layout_fingerprint(const Model& m) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  };
  for (const ParamInfo& p : trainable_layout(m).tensors) {
    mix(p.name);
    mix(shape_str(p.shape));
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

void save_optimizer_state(const Model& m, const std::string& dir) {
  OPTUNE_CHECK(!dir.empty(), "save_optimizer_state: empty directory path");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  OPTUNE_CHECK(!ec, dir + ": cannot create directory: " + ec.message());
  const size_t n_trained = trainable_params(m).size();  // every weight, or a LoRA model's adapters
  const int64_t n = static_cast<int64_t>(n_trained);
  const std::vector<float> zeros(m.adam_m.empty() ? n_trained : 0, 0.0f);
  const float* mm = m.adam_m.empty() ? zeros.data() : m.adam_m.data();
  const float* vv = m.adam_v.empty() ? zeros.data() : m.adam_v.data();
  const std::string path = dir + "/optimizer.safetensors";
  const std::string tmp = temp_name(dir, "optimizer.safetensors");
  try {
    safetensors::save(tmp, {{"exp_avg", {n}, mm}, {"exp_avg_sq", {n}, vv}},
                      {{"format", "optune-adamw"}, {"step", std::to_string(m.adam_step)},
                       {"num_params", std::to_string(n)}, {"layout", layout_fingerprint(m)}});
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  commit_file(tmp, path);
  fsync_dir(dir);
}

void load_optimizer_state(Model& m, const std::string& dir) {
  const std::string path = dir + "/optimizer.safetensors";
  const size_t n_trained = trainable_params(m).size();
  safetensors::Reader r(path);
  std::string step, num_params, layout;
  for (const auto& [k, v] : r.header().metadata) {
    if (k == "step") step = v;
    if (k == "num_params") num_params = v;
    if (k == "layout") layout = v;  // absent in states saved before it was written: not checked then
  }
  OPTUNE_CHECK(!step.empty() && !num_params.empty(),
               path + ": not an optune optimizer state (metadata needs \"step\" and \"num_params\")");
  OPTUNE_CHECK(num_params == std::to_string(n_trained),
               path + ": saved for a model with " + num_params + " parameters, this model has " +
                   std::to_string(n_trained) + "; resume with the checkpoint the state was saved with");
  OPTUNE_CHECK(layout.empty() || layout == layout_fingerprint(m),
               path + ": saved for a model with another layout of its " + num_params + " parameters (another "
                      "architecture or shape: layout " + layout + ", this model's " + layout_fingerprint(m) +
                      "); resume with the checkpoint the state was saved with");
  std::vector<float> mm(n_trained), vv(n_trained);
  for (auto [name, out] : {std::pair<const char*, float*>{"exp_avg", mm.data()}, {"exp_avg_sq", vv.data()}}) {
    const safetensors::TensorInfo* t = r.header().find(name);
    OPTUNE_CHECK(t != nullptr && t->numel == n_trained,
                 path + ": tensor " + name + " is missing or has the wrong size");
    r.read_f32(*t, out);
    // A NaN moment, or a negative second moment (whose square root AdamW takes), would turn the next step's
    // weights into NaN with no error until the next save.
    const bool second = out == vv.data();
    for (size_t i = 0; i < n_trained; i++)
      OPTUNE_CHECK(std::isfinite(out[i]) && (!second || out[i] >= 0.0f),
                   path + ": tensor " + name + " holds " + std::to_string(out[i]) + " at element " +
                       std::to_string(i) + (second ? " (must be finite and >= 0)" : " (must be finite)") +
                       "; the file is corrupt: resume from another saved state");
  }
  int64_t s = 0;
  size_t used = 0;
  try {
    s = std::stoll(step, &used);
  } catch (...) {
  }
  OPTUNE_CHECK(used == step.size() && used > 0, path + ": metadata step \"" + step + "\" is not an integer");
  OPTUNE_CHECK(s >= 0, path + ": metadata step must be >= 0");
  m.adam_m = std::move(mm);
  m.adam_v = std::move(vv);
  m.adam_step = s;
}

}  // namespace optune
