#include "convert.h"

#include <cmath>
#include <limits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace optune_addon {

// ---- plain values ---------------------------------------------------------------------------------------------

static const char* typed_array_name(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: return "an Int8Array";
    case napi_uint8_array: return "a Uint8Array";
    case napi_uint8_clamped_array: return "a Uint8ClampedArray";
    case napi_int16_array: return "an Int16Array";
    case napi_uint16_array: return "a Uint16Array";
    case napi_int32_array: return "an Int32Array";
    case napi_uint32_array: return "a Uint32Array";
    case napi_float32_array: return "a Float32Array";
    case napi_float64_array: return "a Float64Array";
    case napi_bigint64_array: return "a BigInt64Array";
    case napi_biguint64_array: return "a BigUint64Array";
    default: return "a typed array";
  }
}

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsBoolean()) return "a boolean";
  if (v.IsNumber()) return "a number";
  if (v.IsBigInt()) return "a bigint";
  if (v.IsString()) return "a string";
  if (v.IsTypedArray()) return typed_array_name(v.As<Napi::TypedArray>().TypedArrayType());
  if (v.IsArrayBuffer()) return "an ArrayBuffer";
  if (v.IsArray()) return "an Array";
  if (v.IsFunction()) return "a function";
  return "an object";
}

Napi::Object expect_object(const Napi::Value& v, const std::string& name) {
  if (!v.IsObject() || v.IsArray() || v.IsTypedArray() || v.IsFunction()) {
    throw Napi::TypeError::New(v.Env(), name + " must be an object, got " + describe(v));
  }
  return v.As<Napi::Object>();
}

static bool is_typed(const Napi::Value& v, napi_typedarray_type t) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == t;
}

std::vector<int32_t> int32_array(const Napi::Value& v, const std::string& name) {
  if (!is_typed(v, napi_int32_array)) {
    throw Napi::TypeError::New(v.Env(), name + " must be an Int32Array, got " + describe(v));
  }
  auto a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

Napi::Float32Array float32_array_ref(const Napi::Value& v, const std::string& name) {
  if (!is_typed(v, napi_float32_array)) {
    throw Napi::TypeError::New(v.Env(), name + " must be a Float32Array, got " + describe(v));
  }
  return v.As<Napi::Float32Array>();
}

std::string first_nonfinite(const float* x, size_t n, const std::string& name) {
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(x[i])) {
      // Spelled as JS prints it, so the message matches the TS wrapper's.
      const char* what = std::isnan(x[i]) ? "NaN" : x[i] > 0 ? "Infinity" : "-Infinity";
      return name + "[" + std::to_string(i) + "] is " + what + "; all values must be finite";
    }
  }
  return "";
}

std::vector<float> float32_array(const Napi::Value& v, const std::string& name, bool finite) {
  auto a = float32_array_ref(v, name);
  std::vector<float> out(a.Data(), a.Data() + a.ElementLength());
  if (finite) {
    const std::string bad = first_nonfinite(out.data(), out.size(), name);
    if (!bad.empty()) throw Napi::RangeError::New(v.Env(), bad);
  }
  return out;
}

uint64_t seed_value(const Napi::Value& v, const std::string& name) {
  if (v.IsUndefined()) return 0;
  if (v.IsBigInt()) {
    bool lossless = false;
    const uint64_t s = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Napi::RangeError::New(v.Env(), name + " must fit in 64 unsigned bits");
    return s;
  }
  if (v.IsNumber()) {
    const double d = v.As<Napi::Number>().DoubleValue();
    if (d >= 0 && d == std::floor(d) && d <= 9007199254740991.0) return static_cast<uint64_t>(d);
  }
  throw Napi::TypeError::New(v.Env(), name + " must be a non-negative safe integer or a bigint, got " +
                                          describe(v));
}

// Optional fields: undefined means "use the default".
static double opt_number(const Napi::Object& o, const char* key, const std::string& where, double dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return dflt;
  const std::string name = where + "." + key;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), name + " must be a number, got " + describe(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw Napi::RangeError::New(o.Env(), name + " must be a finite number");
  return d;
}

// A number the engine keeps as a float: one that would become Infinity is refused here, saying so, rather than
// later by a range check that would talk about the rounded value (a temperature of 1e40 "must be >= 0").
static float opt_float(const Napi::Object& o, const char* key, const std::string& where, float dflt) {
  const double d = opt_number(o, key, where, dflt);
  if (std::fabs(d) > std::numeric_limits<float>::max()) {
    char value[32];
    std::snprintf(value, sizeof value, "%g", d);
    throw Napi::RangeError::New(o.Env(), where + "." + key + " = " + value + " is beyond float range (|x| <= 3.4e38)");
  }
  return static_cast<float>(d);
}

static int opt_int(const Napi::Object& o, const char* key, const std::string& where, int dflt, int lo, int hi) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return dflt;
  const std::string name = where + "." + key;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), name + " must be an integer, got " + describe(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d == std::floor(d)) || d < lo || d > hi) {
    throw Napi::RangeError::New(o.Env(), name + " must be an integer in [" + std::to_string(lo) + ", " +
                                             std::to_string(hi) + "], got " + v.ToString().Utf8Value());
  }
  return static_cast<int>(d);
}

static int req_int(const Napi::Object& o, const char* key, const std::string& where, int lo, int hi) {
  if (o.Get(key).IsUndefined()) {
    throw Napi::TypeError::New(o.Env(), where + "." + key + " is required");
  }
  return opt_int(o, key, where, 0, lo, hi);
}

static bool opt_bool(const Napi::Object& o, const char* key, const std::string& where, bool dflt) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return dflt;
  if (!v.IsBoolean()) {
    throw Napi::TypeError::New(o.Env(), where + "." + key + " must be a boolean, got " + describe(v));
  }
  return v.As<Napi::Boolean>().Value();
}

static std::vector<int32_t> opt_int32_array(const Napi::Object& o, const char* key, const std::string& where) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return {};
  return int32_array(v, where + "." + key);
}

static std::vector<float> opt_float32_array(const Napi::Object& o, const char* key, const std::string& where) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return {};
  return float32_array(v, where + "." + key, true);
}

// ---- JS results -----------------------------------------------------------------------------------------------

Napi::Float32Array to_js(Napi::Env env, const std::vector<float>& v) {
  auto a = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(float));
  return a;
}

Napi::Float32Array to_js_owned(Napi::Env env, std::vector<float>&& v) {
  if (v.empty()) return Napi::Float32Array::New(env, 0);
  auto* owned = new std::vector<float>(std::move(v));
  const size_t n = owned->size();
  Napi::ArrayBuffer buffer;
  try {
    buffer = Napi::ArrayBuffer::New(env, owned->data(), n * sizeof(float),
                                    [](Napi::Env, void*, std::vector<float>* data) { delete data; }, owned);
  } catch (const Napi::Error&) {
    // A runtime that refuses external memory (a V8 sandbox): copy instead.
    Napi::Float32Array a = to_js(env, *owned);
    delete owned;
    return a;
  }
  return Napi::Float32Array::New(env, n, buffer, 0);  // the buffer's finalizer frees the vector
}

Napi::Int32Array to_js(Napi::Env env, const std::vector<int32_t>& v) {
  auto a = Napi::Int32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(int32_t));
  return a;
}

Napi::Uint8Array to_js(Napi::Env env, const std::vector<uint8_t>& v) {
  auto a = Napi::Uint8Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size());
  return a;
}

// ---- model config ---------------------------------------------------------------------------------------------

optune::ModelConfig to_config(const Napi::Value& v) {
  const std::string where = "config";
  Napi::Object o = expect_object(v, where);
  Napi::Env env = o.Env();
  optune::ModelConfig c;

  Napi::Value arch = o.Get("arch");
  const std::string a = arch.IsString() ? arch.As<Napi::String>().Utf8Value() : "";
  if (a == "gpt2") {
    c.arch = optune::Arch::GPT2;
  } else if (a == "llama") {
    c.arch = optune::Arch::LLAMA;
  } else if (a == "qwen2") {
    c.arch = optune::Arch::QWEN2;
  } else if (a == "qwen3") {
    c.arch = optune::Arch::QWEN3;
  } else if (a == "gemma3_text") {
    c.arch = optune::Arch::GEMMA3;
  } else if (a == "smollm3") {
    c.arch = optune::Arch::SMOLLM3;
  } else if (a == "olmo2") {
    c.arch = optune::Arch::OLMO2;
  } else if (a == "mistral") {
    c.arch = optune::Arch::MISTRAL;
  } else {
    throw Napi::TypeError::New(env, "config.arch must be 'gpt2', 'llama', 'qwen2', 'qwen3', 'gemma3_text', "
                                    "'smollm3', 'olmo2' or 'mistral', got " +
                                        (arch.IsString() ? "'" + a + "'" : describe(arch)));
  }
  const int big = 1 << 30;
  c.vocab_size = req_int(o, "vocabSize", where, 1, big);
  c.d_model = req_int(o, "dModel", where, 1, big);
  c.n_layer = req_int(o, "nLayer", where, 1, big);
  c.n_head = req_int(o, "nHead", where, 1, big);
  c.n_kv_head = opt_int(o, "nKvHead", where, c.n_head, 1, big);
  if (o.Get("headDim").IsUndefined() && c.d_model % c.n_head != 0) {
    throw Napi::RangeError::New(env, "config.headDim is required when dModel (" + std::to_string(c.d_model) +
                                         ") is not a multiple of nHead (" + std::to_string(c.n_head) + ")");
  }
  c.head_dim = opt_int(o, "headDim", where, c.d_model / c.n_head, 1, big);
  c.d_ff = req_int(o, "dFf", where, 1, big);
  c.max_positions = req_int(o, "maxPositions", where, 1, big);
  Napi::Value scaling = o.Get("ropeScaling");
  // ropeScaling: {type: "linear" | "llama3", factor, lowFreqFactor, highFreqFactor, originalMaxPositions}
  if (!scaling.IsUndefined()) {
    const std::string sw = where + ".ropeScaling";
    Napi::Object s = expect_object(scaling, sw);
    Napi::Value t = s.Get("type");
    const std::string type = t.IsString() ? t.As<Napi::String>().Utf8Value() : "";
    if (type == "linear") c.rope_scaling.type = optune::cpu::RopeScaling::LINEAR;
    else if (type == "llama3") c.rope_scaling.type = optune::cpu::RopeScaling::LLAMA3;
    else throw Napi::TypeError::New(env, sw + ".type must be 'linear' or 'llama3', got " + describe(t));
    if (s.Get("factor").IsUndefined()) throw Napi::TypeError::New(env, sw + ".factor is required");
    c.rope_scaling.factor = opt_float(s, "factor", sw, 1.0f);
    c.rope_scaling.low_freq_factor = opt_float(s, "lowFreqFactor", sw, 1.0f);
    c.rope_scaling.high_freq_factor = opt_float(s, "highFreqFactor", sw, 4.0f);
    c.rope_scaling.original_max_positions = opt_int(s, "originalMaxPositions", sw, 0, 0, big);
  }
  const bool gemma = c.is_gemma(), smollm3 = c.arch == optune::Arch::SMOLLM3, mistral = c.arch == optune::Arch::MISTRAL;
  // transformers' defaults
  c.norm_eps = opt_float(o, "normEps", where, gemma || smollm3 || mistral ? 1e-6f : c.norm_eps);
  c.rope_theta = opt_float(o, "ropeTheta", where, gemma ? 1e6f : smollm3 ? 2e6f : c.rope_theta);
  c.tie_embeddings = opt_bool(o, "tieEmbeddings", where, c.arch != optune::Arch::OLMO2 && c.tie_embeddings);
  for (const char* key : {"queryPreAttnScalar", "ropeLocalTheta"})
    if (!gemma && !o.Get(key).IsUndefined())
      throw Napi::TypeError::New(env, where + "." + key + " is Gemma 3's; arch '" + a + "' has no such setting");
  for (const char* key : {"slidingWindow", "layerTypes"})
    if (!gemma && !smollm3 && !mistral && !o.Get(key).IsUndefined())
      throw Napi::TypeError::New(env, where + "." + key + " is Gemma 3's, SmolLM3's and Mistral's; arch '" + a +
                                          "' has no such setting");
  if (!smollm3 && !o.Get("noRopeLayers").IsUndefined())
    throw Napi::TypeError::New(env, where + ".noRopeLayers is SmolLM3's; arch '" + a + "' has no such setting");
  // a per-layer list of strings or 0/1 numbers, one entry per layer, into flags (1 where `is_one(entry)`)
  auto per_layer = [&](const char* key, const char* expect, auto&& flag_of) {
    const std::string name = where + "." + key;
    Napi::Value v = o.Get(key);
    if (!v.IsArray() || v.As<Napi::Array>().Length() != static_cast<uint32_t>(c.n_layer))
      throw Napi::TypeError::New(env, name + " must be an array with one entry per layer (" +
                                          std::to_string(c.n_layer) + "), got " + describe(v));
    Napi::Array list = v.As<Napi::Array>();
    std::vector<uint8_t> flags(c.n_layer);
    for (int l = 0; l < c.n_layer; l++) {
      Napi::Value e = list.Get(static_cast<uint32_t>(l));
      const int flag = flag_of(e);
      if (flag < 0)
        throw Napi::TypeError::New(env,
                                   name + "[" + std::to_string(l) + "] must be " + expect + ", got " + describe(e));
      flags[l] = static_cast<uint8_t>(flag);
    }
    return flags;
  };
  auto sliding_of = [](const Napi::Value& e) {
    const std::string kind = e.IsString() ? e.As<Napi::String>().Utf8Value() : "";
    return kind == "sliding_attention" ? 1 : kind == "full_attention" ? 0 : -1;
  };
  if (gemma) {  // Gemma 3's own fields, with transformers' Gemma3TextConfig defaults
    c.attn_scalar = opt_float(o, "queryPreAttnScalar", where, 256.0f);
    c.sliding_window = opt_int(o, "slidingWindow", where, 4096, 1, big);
    c.rope_local_theta = opt_float(o, "ropeLocalTheta", where, 10000.0f);
    c.sliding.assign(c.n_layer, 0);
    if (o.Get("layerTypes").IsUndefined()) {
      for (int l = 0; l < c.n_layer; l++) c.sliding[l] = (l + 1) % 6 != 0;  // five sliding layers, then a full one
    } else {
      c.sliding = per_layer("layerTypes", "'sliding_attention' or 'full_attention'", sliding_of);
    }
  }
  if (smollm3) {  // SmolLM3's: noRopeLayers as transformers' no_rope_layers (1 = the layer uses RoPE)
    c.nope.assign(c.n_layer, 0);
    if (o.Get("noRopeLayers").IsUndefined()) {
      for (int l = 0; l < c.n_layer; l++) c.nope[l] = (l + 1) % 4 == 0;  // every 4th layer without RoPE
    } else {
      c.nope = per_layer("noRopeLayers", "1 (RoPE) or 0 (none)", [](const Napi::Value& e) {
        const double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1;
        return d == 1 ? 0 : d == 0 ? 1 : -1;
      });
    }
    if (!o.Get("layerTypes").IsUndefined()) {  // sliding-window layers need both
      c.sliding = per_layer("layerTypes", "'sliding_attention' or 'full_attention'", sliding_of);
      c.sliding_window = req_int(o, "slidingWindow", where, 1, big);
    } else if (!o.Get("slidingWindow").IsUndefined()) {
      throw Napi::TypeError::New(env, where + ".slidingWindow needs layerTypes (which layers slide)");
    }
  }
  if (mistral && !o.Get("slidingWindow").IsUndefined()) {  // every layer slides (no window: none does)
    c.sliding_window = req_int(o, "slidingWindow", where, 1, big);
    c.sliding.assign(c.n_layer, 1);
    if (!o.Get("layerTypes").IsUndefined() &&
        per_layer("layerTypes", "'sliding_attention' or 'full_attention'", sliding_of) != c.sliding)
      throw Napi::TypeError::New(env, where + ".layerTypes: Mistral's window applies to every layer "
                                              "(all 'sliding_attention'), or leave slidingWindow out for none");
  } else if (mistral && !o.Get("layerTypes").IsUndefined()) {
    throw Napi::TypeError::New(env, where + ".layerTypes needs slidingWindow (Mistral's window, for every layer)");
  }
  c.qkv_bias = opt_bool(o, "qkvBias", where, c.arch == optune::Arch::QWEN2);
  c.o_bias = opt_bool(o, "oBias", where, false);
  c.reward_model = opt_bool(o, "rewardModel", where, false);
  c.bos_token_id = opt_int(o, "bosTokenId", where, -1, -1, big);
  c.eos_token_id = opt_int(o, "eosTokenId", where, -1, -1, big);
  c.pad_token_id = opt_int(o, "padTokenId", where, -1, -1, big);
  return c;
}

// The shortest decimal that reads back as the same float, so JS sees 1e-5 rather than 9.999999747378752e-6.
static double float_for_js(float f) {
  char buf[32];
  for (int prec = 1; prec <= 9; prec++) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, static_cast<double>(f));
    const double d = std::strtod(buf, nullptr);
    if (static_cast<float>(d) == f) return d;
  }
  return static_cast<double>(f);
}

Napi::Object config_to_js(Napi::Env env, const optune::ModelConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("arch", optune::arch_name(c.arch));
  o.Set("vocabSize", c.vocab_size);
  o.Set("dModel", c.d_model);
  o.Set("nLayer", c.n_layer);
  o.Set("nHead", c.n_head);
  o.Set("nKvHead", c.n_kv_head);
  o.Set("headDim", c.head_dim);
  o.Set("dFf", c.d_ff);
  o.Set("maxPositions", c.max_positions);
  o.Set("normEps", float_for_js(c.norm_eps));
  o.Set("ropeTheta", float_for_js(c.rope_theta));
  o.Set("tieEmbeddings", c.tie_embeddings);
  o.Set("qkvBias", c.qkv_bias);
  o.Set("oBias", c.o_bias);
  o.Set("rewardModel", c.reward_model);
  o.Set("bosTokenId", c.bos_token_id);
  o.Set("eosTokenId", c.eos_token_id);
  o.Set("padTokenId", c.pad_token_id);
  if (c.rope_scaling.type != optune::cpu::RopeScaling::NONE) {
    const optune::cpu::RopeScaling& rs = c.rope_scaling;
    Napi::Object s = Napi::Object::New(env);
    s.Set("type", rs.type == optune::cpu::RopeScaling::LINEAR ? "linear" : "llama3");
    s.Set("factor", float_for_js(rs.factor));
    if (rs.type == optune::cpu::RopeScaling::LLAMA3) {
      s.Set("lowFreqFactor", float_for_js(rs.low_freq_factor));
      s.Set("highFreqFactor", float_for_js(rs.high_freq_factor));
      s.Set("originalMaxPositions", rs.original_max_positions);
    }
    o.Set("ropeScaling", s);
  }
  if (c.is_gemma()) {
    o.Set("queryPreAttnScalar", float_for_js(c.attn_scalar));
    o.Set("ropeLocalTheta", float_for_js(c.rope_local_theta));
  }
  if (!c.sliding.empty()) {
    o.Set("slidingWindow", c.sliding_window);
    Napi::Array types = Napi::Array::New(env, c.n_layer);
    for (int l = 0; l < c.n_layer; l++)
      types.Set(static_cast<uint32_t>(l), c.layer_sliding(l) ? "sliding_attention" : "full_attention");
    o.Set("layerTypes", types);
  }
  if (c.arch == optune::Arch::SMOLLM3) {
    Napi::Array rope = Napi::Array::New(env, c.n_layer);
    for (int l = 0; l < c.n_layer; l++) rope.Set(static_cast<uint32_t>(l), c.layer_rotates(l) ? 1 : 0);
    o.Set("noRopeLayers", rope);
  }
  return o;
}

// ---- batch ----------------------------------------------------------------------------------------------------

optune::Batch to_batch(const Napi::Value& v, const std::string& name) {
  Napi::Object o = expect_object(v, name);
  optune::Batch b;
  b.tokens = int32_array(o.Get("tokens"), name + ".tokens");
  b.offsets = int32_array(o.Get("offsets"), name + ".offsets");
  b.prompt_lens = int32_array(o.Get("promptLens"), name + ".promptLens");
  Napi::Env env = o.Env();
  if (b.offsets.size() != b.prompt_lens.size() + 1) {
    throw Napi::RangeError::New(env, name + ".offsets has " + std::to_string(b.offsets.size()) +
                                         " entries but must have promptLens.length + 1 = " +
                                         std::to_string(b.prompt_lens.size() + 1));
  }
  if (b.offsets.front() != 0 || b.offsets.back() != static_cast<int64_t>(b.tokens.size())) {
    throw Napi::RangeError::New(env, name + ".offsets must start at 0 and end at tokens.length (" +
                                         std::to_string(b.tokens.size()) + "), got " +
                                         std::to_string(b.offsets.front()) + " .. " +
                                         std::to_string(b.offsets.back()));
  }
  return b;
}

// ---- training -------------------------------------------------------------------------------------------------

static optune::LossKind to_loss(const Napi::Value& v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (s == "sft") return optune::LossKind::SFT;
  if (s == "dpo") return optune::LossKind::DPO;
  if (s == "ipo") return optune::LossKind::IPO;
  if (s == "bt") return optune::LossKind::BT;
  if (s == "hinge") return optune::LossKind::HINGE;
  if (s == "simpo") return optune::LossKind::SIMPO;
  throw Napi::TypeError::New(v.Env(), "request.loss must be 'sft', 'dpo', 'ipo', 'hinge', 'simpo' or 'bt', got " +
                                          (v.IsString() ? "'" + s + "'" : describe(v)));
}

optune::TrainRequest to_train_request(const Napi::Object& o, bool has_ref_model) {
  const std::string where = "request";
  Napi::Env env = o.Env();
  optune::TrainRequest r;
  r.loss = to_loss(o.Get("loss"));
  r.batch = to_batch(o.Get("batch"), "request.batch");
  r.chosen = opt_int32_array(o, "chosen", where);
  r.rejected = opt_int32_array(o, "rejected", where);
  r.weights = opt_float32_array(o, "weights", where);
  r.ref_chosen = opt_float32_array(o, "refChosen", where);
  r.ref_rejected = opt_float32_array(o, "refRejected", where);
  r.beta = opt_float(o, "beta", where, r.beta);
  r.label_smoothing = opt_float(o, "labelSmoothing", where, r.label_smoothing);
  r.simpo_gamma = opt_float(o, "simpoGamma", where, r.simpo_gamma);
  r.apply_update = opt_bool(o, "applyUpdate", where, true);

  Napi::Value opt = o.Get("optimizer");
  if (!opt.IsUndefined()) {
    Napi::Object so = expect_object(opt, "request.optimizer");
    const std::string ow = "request.optimizer";
    r.opt.lr = opt_float(so, "lr", ow, r.opt.lr);
    r.opt.beta1 = opt_float(so, "beta1", ow, r.opt.beta1);
    r.opt.beta2 = opt_float(so, "beta2", ow, r.opt.beta2);
    r.opt.eps = opt_float(so, "eps", ow, r.opt.eps);
    r.opt.weight_decay = opt_float(so, "weightDecay", ow, r.opt.weight_decay);
    r.opt.max_grad_norm = opt_float(so, "maxGradNorm", ow, r.opt.max_grad_norm);
    r.opt.warmup_steps = opt_int(so, "warmupSteps", ow, 0, 0, 1 << 30);
    if (r.opt.lr < 0) throw Napi::RangeError::New(env, "request.optimizer.lr must be >= 0");
  }
  if (!(r.beta > 0)) throw Napi::RangeError::New(env, "request.beta must be > 0");

  const bool pairs = r.loss != optune::LossKind::SFT;
  if (pairs) {
    if (r.chosen.size() != r.rejected.size()) {
      throw Napi::RangeError::New(env, "request.chosen and request.rejected must have the same length, got " +
                                           std::to_string(r.chosen.size()) + " and " +
                                           std::to_string(r.rejected.size()));
    }
    if (r.chosen.empty()) {
      throw Napi::RangeError::New(env, "request.chosen/rejected must name at least one pair for a pairwise loss");
    }
  }
  const size_t n_items = pairs ? r.chosen.size() : static_cast<size_t>(r.batch.n_seq());
  if (!r.weights.empty() && r.weights.size() != n_items) {
    throw Napi::RangeError::New(env, std::string("request.weights must have one entry per ") +
                                         (pairs ? "pair" : "sequence") + " (" + std::to_string(n_items) +
                                         "), got " + std::to_string(r.weights.size()));
  }
  const bool needs_ref = optune::uses_reference(r.loss);
  if (needs_ref) {
    const bool has_arrays = !r.ref_chosen.empty() || !r.ref_rejected.empty();
    if (has_arrays && (r.ref_chosen.size() != r.chosen.size() || r.ref_rejected.size() != r.chosen.size())) {
      throw Napi::RangeError::New(env, "request.refChosen and request.refRejected must have one entry per pair (" +
                                           std::to_string(r.chosen.size()) + ")");
    }
    if (!has_arrays && !has_ref_model) {
      throw Napi::TypeError::New(env, "DPO/IPO/hinge need reference log-probs: pass request.refModel or "
                                      "request.refChosen and request.refRejected");
    }
  }
  return r;
}

Napi::Object stats_to_js(Napi::Env env, const optune::TrainStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("loss", s.loss);
  o.Set("chosenReward", s.chosen_reward);
  o.Set("rejectedReward", s.rejected_reward);
  o.Set("margin", s.margin);
  o.Set("accuracy", s.accuracy);
  o.Set("gradNorm", s.grad_norm);
  o.Set("nPairs", s.n_pairs);
  o.Set("nTokens", s.n_tokens);
  return o;
}

// ---- sampling -------------------------------------------------------------------------------------------------

optune::SampleRequest to_sample_request(const Napi::Value& v) {
  const std::string where = "request";
  Napi::Object o = expect_object(v, where);
  Napi::Env env = o.Env();
  optune::SampleRequest r;
  r.prompt_tokens = int32_array(o.Get("promptTokens"), "request.promptTokens");
  r.prompt_offsets = int32_array(o.Get("promptOffsets"), "request.promptOffsets");
  if (r.prompt_offsets.size() < 2 || r.prompt_offsets.front() != 0 ||
      r.prompt_offsets.back() != static_cast<int64_t>(r.prompt_tokens.size())) {
    throw Napi::RangeError::New(env, "request.promptOffsets must have n_prompts + 1 >= 2 entries, start at 0 and "
                                     "end at promptTokens.length (" + std::to_string(r.prompt_tokens.size()) + ")");
  }
  const int big = 1 << 30;
  r.n_samples = opt_int(o, "nSamples", where, r.n_samples, 1, big);
  r.max_new_tokens = opt_int(o, "maxNewTokens", where, r.max_new_tokens, 1, big);
  r.temperature = opt_float(o, "temperature", where, r.temperature);
  r.top_k = opt_int(o, "topK", where, r.top_k, 0, big);
  r.top_p = opt_float(o, "topP", where, r.top_p);
  r.vocab_limit = opt_int(o, "vocabLimit", where, r.vocab_limit, 0, big);
  r.stop_tokens = opt_int32_array(o, "stopTokens", where);
  r.seed = seed_value(o.Get("seed"), "request.seed");
  if (r.temperature < 0) throw Napi::RangeError::New(env, "request.temperature must be >= 0 (0 = greedy)");
  if (!(r.top_p > 0 && r.top_p <= 1)) throw Napi::RangeError::New(env, "request.topP must be in (0, 1]");

  Napi::Value ids = o.Get("streamIds");
  if (!ids.IsUndefined()) {
    if (!is_typed(ids, napi_biguint64_array)) {
      throw Napi::TypeError::New(env, "request.streamIds must be a BigUint64Array, got " + describe(ids));
    }
    auto a = ids.As<Napi::TypedArrayOf<uint64_t>>();
    r.stream_ids.assign(a.Data(), a.Data() + a.ElementLength());
    const size_t n_prompts = r.prompt_offsets.size() - 1;
    if (r.stream_ids.size() != n_prompts) {
      throw Napi::RangeError::New(env, "request.streamIds must have one entry per prompt (" +
                                           std::to_string(n_prompts) + "), got " +
                                           std::to_string(r.stream_ids.size()));
    }
  }
  return r;
}

Napi::Object sample_to_js(Napi::Env env, const optune::SampleResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("tokens", to_js(env, r.tokens));
  o.Set("offsets", to_js(env, r.offsets));
  o.Set("tokenLogps", to_js(env, r.token_logps));
  o.Set("finished", to_js(env, r.finished));
  return o;
}

DeviceOptions to_device_options(const Napi::Value& v, const std::string& name) {
  DeviceOptions d;
  if (v.IsUndefined()) return d;
  const Napi::Object o = expect_object(v, name);
  const Napi::Env env = v.Env();
  const Napi::Value device = o.Get("device"), precision = o.Get("precision");
  if (!device.IsUndefined()) {
    const std::string s = device.IsString() ? device.As<Napi::String>().Utf8Value() : "";
    if (s != "cpu" && s != "cuda" && s != "auto")
      throw Napi::TypeError::New(env, name + ".device must be 'cpu', 'cuda' or 'auto', got " +
                                          (device.IsString() ? "'" + s + "'" : describe(device)));
    d.device = optune::parse_device(s);
  }
  if (!precision.IsUndefined()) {
    const std::string s = precision.IsString() ? precision.As<Napi::String>().Utf8Value() : "";
    if (s != "fp32" && s != "bf16")
      throw Napi::TypeError::New(env, name + ".precision must be 'fp32' or 'bf16', got " +
                                          (precision.IsString() ? "'" + s + "'" : describe(precision)));
    d.precision = optune::parse_precision(s);
  }
  return d;
}

}  // namespace optune_addon
