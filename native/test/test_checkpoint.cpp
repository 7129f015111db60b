// Checkpoint IO: safetensors reading/writing, config.json parsing/writing, Hugging Face model directories.
// Runs from the repository root (ctest sets WORKING_DIRECTORY): the interop fixtures made by
// tools/make_io_fixtures.py live in native/test/fixtures/io/. Also writes /tmp/optune-io-roundtrip/<arch>/ for the
// by-hand transformers check described in that script.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "cpu/ops.h"
#include "core/error.h"
#include "core/json.h"
#include "core/model.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;
namespace fs = std::filesystem;
namespace st = optune::safetensors;

// ---- helpers --------------------------------------------------------------------------------------------------

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/optune-test-ckpt-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    path = p ? p : "/tmp/optune-test-ckpt-fallback";
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

static std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

static std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

static std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A safetensors file from header text and raw data bytes.
static std::string st_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

static ModelConfig gpt2_cfg() {
  ModelConfig c;
  c.arch = Arch::GPT2;
  c.vocab_size = 50;
  c.d_model = 16;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_kv_head = 2;
  c.head_dim = 8;
  c.d_ff = 64;
  c.max_positions = 24;
  c.norm_eps = 1e-5f;
  c.tie_embeddings = true;
  c.bos_token_id = 0;
  c.eos_token_id = 1;
  return c;
}

static ModelConfig llama_cfg() {
  ModelConfig c;
  c.arch = Arch::LLAMA;
  c.vocab_size = 48;
  c.d_model = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;  // grouped-query attention
  c.head_dim = 8;
  c.d_ff = 40;
  c.max_positions = 64;
  c.norm_eps = 1e-6f;
  c.rope_theta = 500000.0f;
  c.tie_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

static ModelConfig qwen2_cfg() {
  ModelConfig c = llama_cfg();
  c.arch = Arch::QWEN2;
  c.qkv_bias = true;
  c.tie_embeddings = true;
  c.rope_theta = 1000000.0f;
  c.pad_token_id = 3;
  return c;
}

// Qwen3: per-head q/k norms, head_dim wider than hidden_size / heads, tied, no biases.
static ModelConfig qwen3_cfg() {
  ModelConfig c = llama_cfg();
  c.arch = Arch::QWEN3;
  c.head_dim = 12;  // q is 48 wide for a 32-wide hidden state
  c.tie_embeddings = true;
  c.rope_theta = 1000000.0f;
  return c;
}

// Gemma 3: Qwen3's shape plus its own fields; layers 0 and 2 sliding, 1 full.
static ModelConfig gemma3_cfg() {
  ModelConfig c = qwen3_cfg();
  c.arch = Arch::GEMMA3;
  c.n_layer = 3;
  c.attn_scalar = 20.0f;
  c.sliding_window = 5;
  c.sliding = {1, 0, 1};
  c.rope_local_theta = 10000.0f;
  return c;
}

// Random values everywhere (init_weights leaves biases 0 and norms 1, which would hide mix-ups).
static std::unique_ptr<Model> random_model(const ModelConfig& cfg, uint64_t seed) {
  auto m = make_model(cfg);
  init_weights(*m, seed);
  for (size_t i = 0; i < m->params.size(); i++)
    m->params[i] += 0.05f * static_cast<float>(rng_normal(seed + 1, 7, i));
  return m;
}

static bool same_config(const ModelConfig& a, const ModelConfig& b) {
  return a.arch == b.arch && a.vocab_size == b.vocab_size && a.d_model == b.d_model && a.n_layer == b.n_layer &&
         a.n_head == b.n_head && a.n_kv_head == b.n_kv_head && a.head_dim == b.head_dim && a.d_ff == b.d_ff &&
         a.max_positions == b.max_positions && a.norm_eps == b.norm_eps &&
         (a.is_gpt2() || a.rope_theta == b.rope_theta) && a.tie_embeddings == b.tie_embeddings &&
         a.qkv_bias == b.qkv_bias && a.o_bias == b.o_bias && a.reward_model == b.reward_model &&
         a.bos_token_id == b.bos_token_id && a.eos_token_id == b.eos_token_id && a.pad_token_id == b.pad_token_id &&
         a.attn_scalar == b.attn_scalar && a.sliding_window == b.sliding_window && a.sliding == b.sliding &&
         a.rope_local_theta == b.rope_local_theta && a.rope_scaling == b.rope_scaling && a.nope == b.nope;
}

static bool same_params(const Model& a, const Model& b) {
  return a.params.size() == b.params.size() &&
         std::memcmp(a.params.data(), b.params.data(), a.params.size() * sizeof(float)) == 0;
}

static void check_round_trip(const ModelConfig& cfg, uint64_t seed, const std::string& keep_as) {
  TempDir tmp;
  auto m = random_model(cfg, seed);
  const std::string dir = tmp / "ckpt";
  save_checkpoint(*m, dir);
  auto back = load_checkpoint(dir);
  CHECK_MSG(same_config(m->cfg, back->cfg), hf_architecture_name(cfg));
  CHECK_MSG(same_params(*m, *back), hf_architecture_name(cfg));
  // Saving again over the same directory replaces the files and leaves no temporaries behind.
  save_checkpoint(*back, dir);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    files++;
    CHECK_MSG(e.path().filename().string()[0] != '.', e.path().string());
  }
  CHECK(files == 2);
  CHECK(same_params(*m, *load_checkpoint(dir)));
  // The tied lm_head is not written, like transformers.
  const st::Header h = st::read_header(dir + "/model.safetensors");
  CHECK((h.find("lm_head.weight") != nullptr) == (!cfg.tie_embeddings && !cfg.reward_model));
  CHECK(h.tensors.size() == m->layout.tensors.size());
  // Kept for the by-hand transformers check (tools/make_io_fixtures.py /tmp/optune-io-roundtrip/*).
  if (!keep_as.empty()) save_checkpoint(*m, "/tmp/optune-io-roundtrip/" + keep_as);
}

// ---- round trips ----------------------------------------------------------------------------------------------

TEST(round_trip_gpt2) { check_round_trip(gpt2_cfg(), 11, "gpt2"); }

TEST(round_trip_llama_gqa_untied) { check_round_trip(llama_cfg(), 12, "llama"); }

TEST(round_trip_qwen2_qkv_bias) { check_round_trip(qwen2_cfg(), 13, "qwen2"); }

TEST(round_trip_qwen3_qk_norm) {
  check_round_trip(qwen3_cfg(), 16, "qwen3");
  const ParamLayout L = build_param_layout(qwen3_cfg());
  const ParamInfo* qn = L.find("model.layers.1.self_attn.q_norm.weight");
  CHECK(qn && qn->shape == std::vector<int64_t>{12} && !qn->decay);
  CHECK(L.find("model.layers.0.self_attn.q_proj.weight")->shape == (std::vector<int64_t>{48, 32}));
  CHECK(L.find("model.layers.0.self_attn.k_norm.weight") != nullptr);
  CHECK(build_param_layout(qwen2_cfg()).find("model.layers.0.self_attn.q_norm.weight") == nullptr);
}

TEST(round_trip_gemma3) {
  check_round_trip(gemma3_cfg(), 18, "gemma3");
  const ParamLayout L = build_param_layout(gemma3_cfg());
  for (const char* norm : {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                           "post_feedforward_layernorm", "self_attn.q_norm", "self_attn.k_norm"})
    CHECK_MSG(L.find("model.layers.2." + std::string(norm) + ".weight") != nullptr, norm);
  CHECK(L.layers[0].norm2_w == L.find("model.layers.0.pre_feedforward_layernorm.weight")->offset);
  ModelConfig rm = gemma3_cfg();
  rm.reward_model = true;
  rm.qkv_bias = rm.o_bias = true;
  rm.pad_token_id = 0;
  check_round_trip(rm, 19, "gemma3_rm");
  CHECK(hf_architecture_name(rm) == "Gemma3TextForSequenceClassification");
  // init_weights gives every norm a scale of 1, as transformers does: weight 1, but 0 for Gemma's 1 + weight
  for (const ModelConfig& c : {qwen3_cfg(), gemma3_cfg()}) {
    auto m = make_model(c);
    init_weights(*m, 1);
    for (const char* norm : {"model.norm.weight", "model.layers.0.input_layernorm.weight",
                             "model.layers.1.self_attn.q_norm.weight"})
      CHECK_MSG(m->params[m->layout.find(norm)->offset] == (c.is_gemma() ? 0.0f : 1.0f), norm);
  }
}

TEST(round_trip_reward_models) {
  ModelConfig g = gpt2_cfg();
  g.reward_model = true;
  g.pad_token_id = 1;
  check_round_trip(g, 14, "gpt2_rm");
  ModelConfig l = llama_cfg();
  l.reward_model = true;
  l.qkv_bias = l.o_bias = true;  // Llama attention_bias
  l.pad_token_id = 0;
  check_round_trip(l, 15, "llama_rm");
  ModelConfig q = qwen3_cfg();
  q.reward_model = true;
  q.qkv_bias = q.o_bias = true;  // Qwen3 attention_bias
  q.pad_token_id = 0;
  check_round_trip(q, 17, "qwen3_rm");
}

TEST(config_json_round_trip) {
  ModelConfig g = gpt2_cfg();
  g.tie_embeddings = false;
  g.bos_token_id = -1;
  ModelConfig rm = qwen2_cfg();
  rm.reward_model = true;
  ModelConfig smol = llama_cfg();
  smol.arch = Arch::SMOLLM3;
  smol.nope = {0, 1};
  for (const ModelConfig& c : {gpt2_cfg(), g, llama_cfg(), qwen2_cfg(), rm, qwen3_cfg(), gemma3_cfg(), smol}) {
    const std::string text = config_to_hf_json(c);
    CHECK_MSG(same_config(config_from_hf_json(text, "config.json"), c), text);
    CHECK(text.find("\"architectures\": [\n    \"" + hf_architecture_name(c) + "\"") != std::string::npos);
    CHECK(text.find("\"dtype\": \"float32\"") != std::string::npos);
  }
  const std::string gt = config_to_hf_json(gpt2_cfg());
  CHECK(gt.find("\"n_ctx\": 24") != std::string::npos);
  CHECK(gt.find("\"activation_function\": \"gelu_new\"") != std::string::npos);
  CHECK(gt.find("\"layer_norm_epsilon\": 1e-05") != std::string::npos);
  CHECK(gt.find("\"pad_token_id\": null") != std::string::npos);
  const std::string rt = config_to_hf_json(rm);
  CHECK(rt.find("\"id2label\": {\n    \"0\": \"LABEL_0\"\n  }") != std::string::npos);
  CHECK(rt.find("\"pad_token_id\": 3") != std::string::npos);
  ModelConfig bad = llama_cfg();
  bad.qkv_bias = true;  // o_bias false: not expressible with Llama's single attention_bias
  CHECK_THROWS(config_to_hf_json(bad), "attention_bias");
  bad = qwen2_cfg();
  bad.qkv_bias = false;
  CHECK_THROWS(config_to_hf_json(bad), "Qwen2");
  bad = qwen3_cfg();
  bad.o_bias = true;
  CHECK_THROWS(config_to_hf_json(bad), "transformers' Qwen3 has one attention_bias flag");
}

// ---- safetensors ----------------------------------------------------------------------------------------------

TEST(safetensors_writer_layout) {
  TempDir tmp;
  const std::vector<float> a = {1.5f, -2.0f, 3.25f}, b = {0.5f};
  const std::string path = tmp / "x.safetensors";
  st::save(path, {{"a", {3}, a.data()}, {"b.scalar", {}, b.data()}, {"empty", {0, 4}, nullptr}}, {{"format", "pt"}});
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  CHECK((8 + n) % 8 == 0);
  CHECK(bytes[8] == '{');
  CHECK(bytes.size() == 8 + n + 16);
  const std::string header = bytes.substr(8, n);
  CHECK_MSG(header.find("{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[3],"
                        "\"data_offsets\":[0,12]}") == 0, header);
  st::Reader r(path);
  CHECK(r.header().metadata.size() == 1 && r.header().metadata[0].second == "pt");
  CHECK(r.header().tensors.size() == 3);
  CHECK(r.read_f32("a") == a);
  CHECK(r.read_f32("b.scalar") == b);
  CHECK(r.header().find("b.scalar")->shape.empty());
  CHECK(r.read_f32("empty").empty());
  auto all = st::load(path);
  CHECK(all.size() == 3 && all["a"].data == a && all["a"].shape == std::vector<int64_t>{3});
  auto some = st::load(path, {"b.scalar"});
  CHECK(some.size() == 1 && some["b.scalar"].data == b);
  CHECK_THROWS(st::load(path, {"nope"}), "no tensor named \"nope\"");
  CHECK_THROWS(st::save(path, {{"a", {1}, a.data()}, {"a", {1}, a.data()}}), "duplicate tensor name");
  CHECK_THROWS(st::save(path, {{"a", {-1}, a.data()}}), "negative dimension");
  CHECK_THROWS(st::save(path, {{"a", {2}, nullptr}}), "has no data");
  CHECK_THROWS(st::save(path, {{"__metadata__", {1}, a.data()}}), "__metadata__");
  CHECK_THROWS(st::save(tmp / "no/such/dir/x.safetensors", {}), "cannot create file");
}

TEST(half_conversions) {
  CHECK(st::f16_to_f32(0x3C00) == 1.0f);
  CHECK(st::f16_to_f32(0xC000) == -2.0f);
  CHECK(st::f16_to_f32(0x7BFF) == 65504.0f);
  CHECK(st::f16_to_f32(0x3555) == 0.333251953125f);
  CHECK(st::f16_to_f32(0x0001) == std::ldexp(1.0f, -24));          // smallest subnormal
  CHECK(st::f16_to_f32(0x03FF) == std::ldexp(1023.0f, -24));       // largest subnormal
  CHECK(st::f16_to_f32(0x0400) == std::ldexp(1.0f, -14));          // smallest normal
  CHECK(st::f16_to_f32(0x8000) == 0.0f && std::signbit(st::f16_to_f32(0x8000)));
  CHECK(std::isinf(st::f16_to_f32(0x7C00)) && st::f16_to_f32(0xFC00) < 0);
  CHECK(std::isnan(st::f16_to_f32(0x7E00)));
  CHECK(st::bf16_to_f32(0x3F80) == 1.0f);
  CHECK(st::bf16_to_f32(0x4049) == 3.140625f);
  CHECK(st::bf16_to_f32(0xC2F7) == -123.5f);
  CHECK(std::isnan(st::bf16_to_f32(0x7FC0)));
  // Every finite fp16 converts to a float that converts back to the same bits' value (checked via doubling).
  for (uint32_t h = 0; h < 0x7C00; h++) {
    const float f = st::f16_to_f32(static_cast<uint16_t>(h));
    const int e = (h >> 10) & 0x1F;
    const float want = e == 0 ? std::ldexp(static_cast<float>(h & 0x3FF), -24)
                              : std::ldexp(1.0f + static_cast<float>(h & 0x3FF) / 1024.0f, e - 15);
    if (f != want) {
      CHECK_MSG(false, "f16 " + std::to_string(h));
      break;
    }
  }
}

TEST(reads_f16_bf16_f64_files) {
  TempDir tmp;
  std::string data;
  const uint16_t h[] = {0x3C00, 0xC000, 0x3800};  // 1, -2, 0.5
  const uint16_t b[] = {0x3F80, 0x4049};          // 1, 3.140625
  const double d[] = {0.1, -1e-3};
  data.append(reinterpret_cast<const char*>(h), sizeof h);
  data.append(reinterpret_cast<const char*>(b), sizeof b);
  data.append(reinterpret_cast<const char*>(d), sizeof d);
  data.append(std::string(8, '\x01'));
  const std::string header =
      "{\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[6,10]},"
      "\"d\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[10,26]},"
      "\"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[26,34]}}";
  const std::string path = tmp / "mixed.safetensors";
  write_bytes(path, st_bytes(header, data));
  st::Reader r(path);
  CHECK((r.read_f32("h") == std::vector<float>{1.0f, -2.0f, 0.5f}));
  CHECK((r.read_f32("b") == std::vector<float>{1.0f, 3.140625f}));
  CHECK((r.read_f32("d") == std::vector<float>{0.1f, -1e-3f}));
  CHECK(r.header().find("i")->dtype == st::DType::I64);
  CHECK_THROWS(r.read_f32("i"), "has dtype I64; weights must be F32, F16, BF16 or F64");
  CHECK_THROWS(st::load(path), "I64");
}

// One small valid file and the data it needs, to corrupt in the malformed-input tests.
static const std::string kTwo = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}";

static void check_bad_file(const std::string& bytes, const char* needle) {
  TempDir tmp;
  const std::string path = tmp / "bad.safetensors";
  write_bytes(path, bytes);
  CHECK_THROWS(st::Reader r(path), needle);
}

TEST(safetensors_rejects_malformed) {
  const std::string data(32, '\0');
  {
    TempDir tmp;
    write_bytes(tmp / "ok.safetensors", st_bytes(kTwo, data));
    CHECK(st::Reader(tmp / "ok.safetensors").header().tensors.size() == 2);
    CHECK_THROWS(st::Reader(tmp / "missing.safetensors"), "cannot open safetensors file");
    CHECK_THROWS(st::Reader(tmp.path), "not a regular file");
  }
  check_bad_file("", "too short");
  check_bad_file("\x10\0\0", "too short");
  check_bad_file(le64(1000) + "{}", "runs past the end of the file");
  check_bad_file(le64(UINT64_MAX) + "{}", "exceeds the 100 MB limit");
  check_bad_file(le64(200000000) + "{}", "exceeds the 100 MB limit");
  check_bad_file(st_bytes("{\"a\":", ""), "invalid JSON at byte 5");
  check_bad_file(st_bytes("[]", ""), "must start with '{'");
  check_bad_file(st_bytes("", ""), "must start with '{'");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", std::string(4, 0)),
                 "unknown dtype \"F33\"");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", std::string(20, 0)),
                 "shape [2, 3] with dtype F32 needs 24 bytes but data_offsets [0, 20] span 20");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                          std::string(16, 0)),
                 "have overlapping data_offsets");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", std::string(8, 0)),
                 "gap of 4 bytes");
  check_bad_file(st_bytes(kTwo, data + "xx"), "2 bytes after the last tensor");
  check_bad_file(st_bytes(kTwo, data.substr(0, 30)), "run past the end of the data buffer");  // truncated data
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", ""),
                 "every \"shape\" dimension must be a non-negative integer, got -1");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", ""),
                 "non-negative integer");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", std::string(4, 0)),
                 "begin > end");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", std::string(4, 0)),
                 "must be an array [begin, end]");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", std::string(4, 0)), "lacks \"data_offsets\"");
  check_bad_file(st_bytes("{\"a\":[1]}", ""), "must be an object {dtype, shape, data_offsets}");
  check_bad_file(st_bytes("{\"__metadata__\":{\"format\":1}}", ""), "\"__metadata__\".format must be a string");
  check_bad_file(st_bytes("{\"__metadata__\":[]}", ""), "\"__metadata__\" must be an object");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
                          std::string(8, 0)),
                 "is too large");
  check_bad_file(st_bytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                          std::string(8, 0)),
                 "duplicate object key \"a\"");
  // Valid edge cases: no tensors at all; trailing spaces (the reference writer's padding); null metadata.
  {
    TempDir tmp;
    write_bytes(tmp / "e.safetensors", st_bytes("{}", ""));
    CHECK(st::Reader(tmp / "e.safetensors").header().tensors.empty());
    write_bytes(tmp / "p.safetensors", st_bytes("{\"__metadata__\":null}    ", ""));
    CHECK(st::Reader(tmp / "p.safetensors").header().metadata.empty());
  }
}

// Every truncation and many byte corruptions of a valid file give an optune::Error or a valid read, never a crash
// (run under ASan/UBSan to make this meaningful).
TEST(safetensors_corruption_never_crashes) {
  TempDir tmp;
  const std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {7, 8};
  const std::string good = tmp / "good.safetensors";
  st::save(good, {{"a", {2, 3}, a.data()}, {"b", {2}, b.data()}}, {{"format", "pt"}});
  const std::string bytes = read_bytes(good);
  const std::string path = tmp / "c.safetensors";
  int errors = 0, reads = 0;
  auto attempt = [&](const std::string& content) {
    write_bytes(path, content);
    try {
      st::load(path);
      reads++;
    } catch (const Error&) {
      errors++;
    }
  };
  for (size_t n = 0; n < bytes.size(); n++) attempt(bytes.substr(0, n));
  CHECK(errors == static_cast<int>(bytes.size()));  // every proper prefix is invalid
  for (size_t i = 0; i < bytes.size(); i++) {
    for (unsigned char x : {0x01, 0x20, 0x80, 0xFF}) {
      std::string c = bytes;
      c[i] = static_cast<char>(c[i] ^ x);
      attempt(c);
    }
  }
  CHECK(reads > 0 && errors > static_cast<int>(bytes.size()));
}

// ---- config.json ----------------------------------------------------------------------------------------------

static const char* kLlamaJson = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 16,
  "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "max_position_embeddings": 64, "rms_norm_eps": 1e-06, "hidden_act": "silu", "bos_token_id": 1,
  "eos_token_id": 2, "tie_word_embeddings": false, "rope_theta": 10000.0
})";

// A config's JSON text with one field replaced (or removed when value is empty).
static std::string json_with(const std::string& base, const std::string& field, const std::string& value) {
  json::Value v = json::parse(base, "base");
  if (value.empty()) {
    for (size_t i = 0; i < v.object.size(); i++)
      if (v.object[i].first == field) v.object.erase(v.object.begin() + static_cast<long>(i));
  } else {
    v.set(field, json::parse(value, "value"));
  }
  return json::dump(v);
}

static std::string llama_with(const std::string& field, const std::string& value) {
  return json_with(kLlamaJson, field, value);
}

static ModelConfig parse_cfg(const std::string& text) { return config_from_hf_json(text, "/m/config.json"); }

TEST(config_defaults_and_variants) {
  ModelConfig c = parse_cfg(kLlamaJson);
  CHECK(c.arch == Arch::LLAMA && c.d_model == 16 && c.n_kv_head == 2 && c.head_dim == 4 && c.d_ff == 32);
  CHECK(!c.tie_embeddings && !c.qkv_bias && !c.o_bias && !c.reward_model && c.pad_token_id == -1);
  CHECK(c.rope_theta == 10000.0f && c.norm_eps == 1e-6f);
  c = parse_cfg(llama_with("num_key_value_heads", ""));
  CHECK(c.n_kv_head == 4);
  c = parse_cfg(llama_with("head_dim", "8"));
  CHECK(c.head_dim == 8 && c.q_dim() == 32);
  c = parse_cfg(llama_with("head_dim", "null"));
  CHECK(c.head_dim == 4);
  c = parse_cfg(llama_with("eos_token_id", "[7, 8]"));
  CHECK(c.eos_token_id == 7);
  c = parse_cfg(llama_with("attention_bias", "true"));
  CHECK(c.qkv_bias && c.o_bias);
  c = parse_cfg(llama_with("tie_word_embeddings", ""));
  CHECK(!c.tie_embeddings);
  c = parse_cfg(llama_with("rope_parameters", R"({"rope_type": "default", "rope_theta": 500000.0})"));
  CHECK(c.rope_theta == 500000.0f);
  c = parse_cfg(llama_with("rope_scaling", "null"));
  CHECK(c.rope_theta == 10000.0f);
  c = parse_cfg(llama_with("architectures", "null"));
  CHECK(!c.reward_model);

  // A SmolLM-135M-style config.json (nanotron export fields included).
  c = parse_cfg(R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.02,
    "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 2048, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null, "rope_theta": 10000.0,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
    "vocab_size": 49152})");
  CHECK(c.d_model == 576 && c.n_head == 9 && c.n_kv_head == 3 && c.head_dim == 64 && c.tie_embeddings);
  CHECK(c.n_layer == 30 && c.d_ff == 1536 && c.vocab_size == 49152 && c.norm_eps == 1e-5f && c.eos_token_id == 0);

  // GPT-2 as transformers writes it.
  c = parse_cfg(R"({"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "bos_token_id": 50256,
    "eos_token_id": 50256, "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768,
    "n_head": 12, "n_inner": null, "n_layer": 12, "n_positions": 1024, "vocab_size": 50257,
    "scale_attn_weights": true, "reorder_and_upcast_attn": false})");
  CHECK(c.is_gpt2() && c.d_ff == 3072 && c.head_dim == 64 && c.n_kv_head == 12 && c.tie_embeddings);
  CHECK(c.bos_token_id == 50256 && c.pad_token_id == -1 && c.max_positions == 1024);

  // Qwen2: q/k/v biases, no o bias, full attention layers.
  c = parse_cfg(R"({"architectures": ["Qwen2ForSequenceClassification"], "model_type": "qwen2",
    "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 64, "use_sliding_window": false, "sliding_window": 4096,
    "layer_types": ["full_attention", "full_attention"], "id2label": {"0": "LABEL_0"}, "pad_token_id": 5})");
  CHECK(c.arch == Arch::QWEN2 && c.qkv_bias && !c.o_bias && c.reward_model && c.pad_token_id == 5);
  CHECK(!c.tie_embeddings && c.norm_eps == 1e-6f);
  c = parse_cfg(
      llama_with("architectures", R"(["LlamaForSequenceClassification"])").replace(0, 1, "{\"num_labels\":1,"));
  CHECK(c.reward_model);

  // Qwen3-0.6B's config.json: head_dim 128 with 16 heads of a 1024 hidden size, tied, no biases.
  c = parse_cfg(R"({"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
    "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
    "use_sliding_window": false, "vocab_size": 151936})");
  CHECK(c.arch == Arch::QWEN3 && c.qk_norm() && !c.qkv_bias && !c.o_bias && c.tie_embeddings && !c.reward_model);
  CHECK(c.head_dim == 128 && c.q_dim() == 2048 && c.kv_dim() == 1024 && c.rope_theta == 1000000.0f);
  // A Qwen3 reward model with attention biases (Skywork-Reward-V2-Qwen3 style head).
  c = parse_cfg(R"({"architectures": ["Qwen3ForSequenceClassification"], "model_type": "qwen3", "vocab_size": 64,
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64, "attention_bias": true,
    "num_labels": 1, "pad_token_id": 5})");
  CHECK(c.arch == Arch::QWEN3 && c.qkv_bias && c.o_bias && c.reward_model && c.head_dim == 8);
}

// Gemma 3 configs as transformers 4.x wrote them (gemma-3-270m's shape: rope_theta + rope_local_base_freq, layer_types)
// and older (sliding_window_pattern instead of layer_types), and as 5.x writes them (rope_parameters per layer kind).
TEST(config_gemma3_variants) {
  const std::string v4 = R"({"architectures": ["Gemma3ForCausalLM"], "_sliding_window_pattern": 6,
    "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2,
    "eos_token_id": 1, "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 640, "intermediate_size": 2048, "layer_types": ["sliding_attention", "sliding_attention",
    "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"], "max_position_embeddings": 32768,
    "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 6, "num_key_value_heads": 1,
    "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
    "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 512, "torch_dtype": "bfloat16",
    "transformers_version": "4.55.0", "use_bidirectional_attention": false, "use_cache": true,
    "vocab_size": 262144})";
  ModelConfig c = parse_cfg(v4);
  CHECK(c.is_gemma() && c.qk_norm() && c.post_norms() && c.tie_embeddings && !c.reward_model);
  CHECK(c.head_dim == 256 && c.n_kv_head == 1 && c.attn_scalar == 256.0f && c.q_scale() == 1.0f);
  CHECK(c.sliding == (std::vector<uint8_t>{1, 1, 1, 1, 1, 0}) && c.sliding_window == 512);
  CHECK(c.layer_rope_theta(0) == 10000.0f && c.layer_rope_theta(5) == 1000000.0f && c.layer_window(5) == 0);
  CHECK(c.embed_scale() == static_cast<float>(std::sqrt(640.0)) && c.norm_offset() == 1.0f);
  // without layer_types: every sliding_window_pattern-th layer is full (default 6); transformers does not read the
  // "_sliding_window_pattern" it writes, and neither does optune
  json::Value old = json::parse(v4, "v4");
  old.set("layer_types", json::Value::null());
  old.set("_sliding_window_pattern", json::Value::of_int(2));
  CHECK(parse_cfg(json::dump(old)).sliding == (std::vector<uint8_t>{1, 1, 1, 1, 1, 0}));
  old.set("sliding_window_pattern", json::Value::of_int(3));
  c = parse_cfg(json::dump(old));
  CHECK(c.sliding == (std::vector<uint8_t>{1, 1, 0, 1, 1, 0}));
  // missing head_dim and num_key_value_heads take Gemma3TextConfig's defaults (256 and 4), not hidden / heads
  old = json::parse(v4, "v4");
  old.set("head_dim", json::Value::null());
  old.set("num_key_value_heads", json::Value::null());
  old.set("num_attention_heads", json::Value::of_int(8));
  c = parse_cfg(json::dump(old));
  CHECK(c.head_dim == 256 && c.n_kv_head == 4);
  // transformers 5: the two bases in rope_parameters win over the top-level fields; query_pre_attn_scalar is
  // written as an integer (its config class refuses 20.0)
  CHECK(config_to_hf_json(gemma3_cfg()).find("\"query_pre_attn_scalar\": 20,") != std::string::npos);
  c = parse_cfg(config_to_hf_json(gemma3_cfg()));
  CHECK(c.rope_theta == 1000000.0f && c.rope_local_theta == 10000.0f);
  json::Value v5 = json::parse(v4, "v4");
  v5.set("rope_parameters", json::parse(R"({"full_attention": {"rope_type": "default", "rope_theta": 5e5},
    "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}})", "rp"));
  c = parse_cfg(json::dump(v5));
  CHECK(c.rope_theta == 500000.0f && c.rope_local_theta == 20000.0f);

  auto with = [&](const char* field, const std::string& value) { return json_with(v4, field, value); };
  CHECK_THROWS(parse_cfg(with("model_type", "\"gemma3\"")), "a multimodal Gemma 3 checkpoint");
  CHECK_THROWS(parse_cfg(with("final_logit_softcapping", "30.0")), "logit soft-capping is not supported");
  CHECK_THROWS(parse_cfg(with("attn_logit_softcapping", "50.0")), "logit soft-capping is not supported");
  CHECK_THROWS(parse_cfg(with("use_bidirectional_attention", "true")), "bidirectional attention");
  CHECK_THROWS(parse_cfg(with("hidden_activation", "\"gelu\"")), "only \"gelu_pytorch_tanh\"");
  CHECK_THROWS(parse_cfg(with("layer_types", "[\"full_attention\"]")), "one entry per layer (6)");
  CHECK_THROWS(parse_cfg(with("layer_types", "[1, 2, 3, 4, 5, 6]")), "\"sliding_attention\" or \"full_attention\"");
  CHECK_THROWS(parse_cfg(with("rope_parameters", R"({"chunked_attention": {"rope_theta": 1.0}})")),
               "unexpected key \"chunked_attention\"");
  CHECK_THROWS(parse_cfg(with("rope_parameters", R"({"sliding_attention": {"rope_type": "linear", "factor": 2}})")),
               "RoPE scaling on Gemma's sliding-window layers is not supported");
  // linear scaling on the full layers (gemma-3-4b and up): 4.x's rope_scaling or 5.x's full_attention entry
  c = parse_cfg(with("rope_scaling", R"({"rope_type": "linear", "factor": 8.0})"));
  CHECK(c.rope_scaling.type == cpu::RopeScaling::LINEAR && c.layer_rope_scaling(5).factor == 8.0f &&
        c.layer_rope_scaling(0).type == cpu::RopeScaling::NONE);
  CHECK(same_config(parse_cfg(config_to_hf_json(c)), c));
  CHECK_THROWS(parse_cfg(with("architectures", R"(["Gemma3ForSequenceClassification"])")),
               "expected \"Gemma3ForCausalLM\" or \"Gemma3TextForSequenceClassification\"");
  CHECK_THROWS(parse_cfg(with("query_pre_attn_scalar", "0")), "query_pre_attn_scalar must be a positive integer");
  CHECK_THROWS(parse_cfg(with("query_pre_attn_scalar", "24.5")), "query_pre_attn_scalar must be a positive integer");
  CHECK_THROWS(parse_cfg(with("rope_local_base_freq", "-5")), "rope_theta (rope_local_base_freq) must be positive");
  CHECK_THROWS(parse_cfg(with("sliding_window", "0")), "\"sliding_window\" = 0");
  // Gemma's fields on another family are refused by validate_config
  ModelConfig q = qwen3_cfg();
  q.sliding_window = 4;
  CHECK_THROWS(validate_config(q), "Gemma 3's");
}

// Llama 3.2-1B's config.json (4.x: rope_scaling "llama3") and transformers 5's form of it (rope_parameters).
TEST(config_llama3_rope_scaling) {
  const std::string v4 = R"({"architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "vocab_size": 128256})";
  ModelConfig c = parse_cfg(v4);
  CHECK(c.rope_theta == 500000.0f && c.rope_scaling.type == cpu::RopeScaling::LLAMA3);
  CHECK(c.rope_scaling.factor == 32.0f && c.rope_scaling.low_freq_factor == 1.0f &&
        c.rope_scaling.high_freq_factor == 4.0f && c.rope_scaling.original_max_positions == 8192);
  CHECK(c.eos_token_id == 128001 && c.tie_embeddings);
  // written in both forms, read back the same
  const std::string text = config_to_hf_json(c);
  CHECK(same_config(parse_cfg(text), c));
  CHECK(text.find("\"rope_scaling\": {\n    \"rope_type\": \"llama3\"") != std::string::npos);
  CHECK(text.find("\"rope_parameters\": {\n    \"rope_type\": \"llama3\",\n    \"rope_theta\": 500000.0") !=
        std::string::npos);
  // the frequencies: short wavelengths kept, long ones / 32, the ones between blended
  const std::vector<double> plain = cpu::rope_inv_freq(64, 500000.0f, {});
  const std::vector<double> scaled = cpu::rope_inv_freq(64, 500000.0f, c.rope_scaling);
  CHECK(scaled[0] == plain[0] && scaled[31] == plain[31] / 32);
  int blended = 0;
  for (int i = 0; i < 32; i++) blended += scaled[i] < plain[i] && scaled[i] > plain[i] / 32;
  CHECK(blended > 0);
  // a 4.x rope_scaling wins over a rope_parameters that disagrees, with the top-level rope_theta (transformers 5)
  c = parse_cfg(json_with(v4, "rope_parameters", R"({"rope_type": "linear", "rope_theta": 1e4, "factor": 6.0})"));
  CHECK(c.rope_scaling.type == cpu::RopeScaling::LLAMA3 && c.rope_scaling.factor == 32.0f && c.rope_theta == 5e5f);
  // linear
  c = parse_cfg(json_with(v4, "rope_scaling", R"({"rope_type": "linear", "factor": 4.0})"));
  CHECK(c.rope_scaling.type == cpu::RopeScaling::LINEAR && c.rope_scaling.factor == 4.0f);
  CHECK(same_config(parse_cfg(config_to_hf_json(c)), c));

  CHECK_THROWS(parse_cfg(json_with(v4, "rope_scaling", R"({"rope_type": "yarn", "factor": 4.0})")),
               "unsupported RoPE variant \"yarn\"; optune implements \"default\", \"linear\" and \"llama3\"");
  CHECK_THROWS(parse_cfg(json_with(v4, "rope_scaling", R"({"rope_type": "llama3", "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0})")), "original_max_position_embeddings, a positive integer");
  CHECK_THROWS(parse_cfg(json_with(v4, "rope_scaling", R"({"rope_type": "llama3", "factor": 8.0,
    "low_freq_factor": 4.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8})")),
               "0 < low_freq_factor < high_freq_factor");
  CHECK_THROWS(parse_cfg(json_with(v4, "rope_scaling", R"({"rope_type": "linear"})")), "needs a factor in [1, 1e6]");
  CHECK_THROWS(parse_cfg(json_with(v4, "rope_scaling", R"({"rope_type": "linear", "factor": 2, "beta": 1})")),
               "unsupported RoPE setting \"beta\"");
  ModelConfig g = gpt2_cfg();
  g.rope_scaling.type = cpu::RopeScaling::LINEAR;
  g.rope_scaling.factor = 2;
  CHECK_THROWS(validate_config(g), "GPT-2 has no RoPE to scale");
}

// SmolLM3-3B's config.json shape: every 4th layer NoPE (no_rope_layers), no sliding window; and the variants.
TEST(config_smollm3) {
  const std::string base = R"({"architectures": ["SmolLM3ForCausalLM"], "attention_bias": false, "bos_token_id": null,
    "eos_token_id": 128012, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 11008,
    "max_position_embeddings": 65536, "mlp_bias": false, "model_type": "smollm3", "no_rope_layer_interval": 4,
    "no_rope_layers": [1, 1, 1, 0, 1, 1, 1, 0], "num_attention_heads": 16, "num_hidden_layers": 8,
    "num_key_value_heads": 4, "pad_token_id": 128004, "rms_norm_eps": 1e-06, "rope_scaling": null,
    "rope_theta": 5000000.0, "sliding_window": null, "tie_word_embeddings": true, "use_sliding_window": false,
    "vocab_size": 128256})";
  ModelConfig c = parse_cfg(base);
  CHECK(c.arch == Arch::SMOLLM3 && c.tie_embeddings && c.rope_theta == 5000000.0f && c.sliding.empty());
  CHECK(c.nope == (std::vector<uint8_t>{0, 0, 0, 1, 0, 0, 0, 1}) && c.layer_rotates(0) && !c.layer_rotates(3));
  CHECK(same_config(parse_cfg(config_to_hf_json(c)), c));
  CHECK(hf_architecture_name(c) == "SmolLM3ForCausalLM");
  // no_rope_layers absent: every no_rope_layer_interval-th layer is NoPE
  c = parse_cfg(json_with(json_with(base, "no_rope_layers", ""), "no_rope_layer_interval", "2"));
  CHECK(c.nope == (std::vector<uint8_t>{0, 1, 0, 1, 0, 1, 0, 1}));
  // a sliding window: on the layer_types' sliding layers, or (no layer_types) on the NoPE layers, as transformers
  c = parse_cfg(json_with(json_with(base, "use_sliding_window", "true"), "sliding_window", "128"));
  CHECK(c.sliding == c.nope && c.sliding_window == 128 && c.layer_window(3) == 128 && c.layer_window(0) == 0);
  CHECK(same_config(parse_cfg(config_to_hf_json(c)), c));
  // use_sliding_window without a window: none (transformers ignores it too)
  CHECK(parse_cfg(json_with(base, "use_sliding_window", "true")).sliding.empty());
  // sliding layer_types without use_sliding_window and a window: transformers' kernels disagree, so refused
  const std::string types = R"(["sliding_attention", "full_attention", "full_attention", "full_attention",
    "full_attention", "full_attention", "full_attention", "full_attention"])";
  CHECK_THROWS(parse_cfg(json_with(json_with(base, "layer_types", types), "sliding_window", "8")),
               "sliding_attention layers need use_sliding_window true and a sliding_window");
  c = parse_cfg(json_with(json_with(json_with(base, "layer_types", types), "sliding_window", "8"),
                          "use_sliding_window", "true"));
  CHECK(c.sliding == (std::vector<uint8_t>{1, 0, 0, 0, 0, 0, 0, 0}) && c.sliding_window == 8);
  // a rope_scaling's own rope_theta wins over the top-level one (transformers 5)
  c = parse_cfg(json_with(base, "rope_scaling", R"({"rope_type": "linear", "factor": 2, "rope_theta": 7000})"));
  CHECK(c.rope_theta == 7000.0f && c.rope_scaling.factor == 2.0f);
  CHECK_THROWS(parse_cfg(json_with(base, "no_rope_layers", "[1, 1]")), "one entry per layer (8)");
  CHECK_THROWS(parse_cfg(json_with(base, "no_rope_layers", "[1, 1, 1, 2, 1, 1, 1, 0]")), "entries must be 1");
  CHECK_THROWS(parse_cfg(json_with(json_with(json_with(base, "use_sliding_window", "true"), "sliding_window", "8"),
                                   "layer_types", "[\"full_attention\"]")),
               "one entry per layer (8)");
}

// OLMo-2-0425-1B's config.json shape: no pre-norms, whole-width q/k norms, post-norms (in the layout); untied.
TEST(config_olmo2) {
  const std::string text = R"({"architectures": ["Olmo2ForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "eos_token_id": 100257, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 4096, "model_type": "olmo2",
    "num_attention_heads": 16, "num_hidden_layers": 16, "num_key_value_heads": 16, "pad_token_id": 100277,
    "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 500000, "tie_word_embeddings": false,
    "torch_dtype": "float32", "use_cache": true, "vocab_size": 100352})";
  const ModelConfig c = parse_cfg(text);
  CHECK(c.arch == Arch::OLMO2 && c.qk_norm() && !c.pre_norms() && c.post_norms() && !c.tie_embeddings);
  CHECK(c.q_norm_width() == 2048 && c.k_norm_width() == 2048 && c.rope_theta == 500000.0f);
  CHECK(same_config(parse_cfg(config_to_hf_json(c)), c));
  CHECK(config_to_hf_json(c).find("mlp_bias") == std::string::npos);
  const ParamLayout L = build_param_layout(c);
  CHECK(L.find("model.layers.0.input_layernorm.weight") == nullptr);
  CHECK(L.find("model.layers.0.pre_feedforward_layernorm.weight") == nullptr);
  CHECK(L.find("model.layers.0.post_attention_layernorm.weight") != nullptr);
  CHECK(L.find("model.layers.0.post_feedforward_layernorm.weight") != nullptr);
  CHECK(L.find("model.layers.0.self_attn.q_norm.weight")->shape == std::vector<int64_t>{2048});
  CHECK(hf_architecture_name(c) == "Olmo2ForCausalLM");
}

// Mistral-7B-Instruct-v0.3's config.json shape (sliding_window null: no window), v0.1's (4096 on every layer), and
// transformers' default when the field is missing (MistralConfig: 4096).
TEST(config_mistral) {
  const std::string v03 = R"({"architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
    "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
    "vocab_size": 32768})";
  ModelConfig c = parse_cfg(v03);
  CHECK(c.arch == Arch::MISTRAL && c.is_llama() && !c.tie_embeddings && !c.qkv_bias && !c.o_bias);
  CHECK(c.sliding.empty() && c.layer_window(0) == 0 && c.rope_theta == 1000000.0f && c.n_kv_head == 8);
  CHECK(same_config(parse_cfg(config_to_hf_json(c)), c));
  CHECK(config_to_hf_json(c).find("\"sliding_window\": null") != std::string::npos);
  CHECK(hf_architecture_name(c) == "MistralForCausalLM");
  c = parse_cfg(json_with(v03, "sliding_window", "4096"));
  CHECK(c.sliding == std::vector<uint8_t>(32, 1) && c.layer_window(31) == 4096);
  CHECK(same_config(parse_cfg(config_to_hf_json(c)), c));
  c = parse_cfg(json_with(v03, "sliding_window", ""));
  CHECK(c.sliding_window == 4096 && c.layer_sliding(0));
  c = parse_cfg(
      json_with(v03, "architectures", "[\"MistralForSequenceClassification\"]").replace(0, 1, "{\"num_labels\":1,"));
  CHECK(c.reward_model && hf_architecture_name(c) == "MistralForSequenceClassification");
  CHECK_THROWS(parse_cfg(json_with(v03, "sliding_window", "0")), "field \"sliding_window\" = 0");
  CHECK_THROWS(parse_cfg(json_with(v03, "hidden_act", "\"gelu\"")), "MLP is SwiGLU");
  // the engine's checks: one window for every layer or none, no biases
  c = parse_cfg(v03);
  c.sliding.assign(c.n_layer, 0), c.sliding[0] = 1, c.sliding_window = 8;
  CHECK_THROWS(validate_config(c), "Mistral's sliding window applies to every layer or to none");
  c = parse_cfg(v03);
  c.qkv_bias = true;
  CHECK_THROWS(validate_config(c), "Mistral's attention has no biases");
}

TEST(config_rejects_bad_fields) {
  CHECK_THROWS(parse_cfg("{"), "/m/config.json: invalid JSON at byte 1");
  CHECK_THROWS(parse_cfg("[]"), "must be a JSON object");
  CHECK_THROWS(parse_cfg(llama_with("model_type", "\"phi3\"")),
               "/m/config.json: field \"model_type\" = \"phi3\": unsupported model type");
  CHECK_THROWS(parse_cfg(llama_with("model_type", "")), "missing required field \"model_type\"");
  CHECK_THROWS(parse_cfg(llama_with("hidden_size", "")),
               "/m/config.json: missing required field \"hidden_size\" for model_type \"llama\"");
  CHECK_THROWS(parse_cfg(llama_with("vocab_size", "\"64\"")), "field \"vocab_size\" = \"64\": expected an integer");
  CHECK_THROWS(parse_cfg(llama_with("vocab_size", "64.5")), "expected an integer");
  CHECK_THROWS(parse_cfg(llama_with("vocab_size", "1e12")), "int32 range");
  CHECK_THROWS(parse_cfg(llama_with("vocab_size", "0")), "field \"vocab_size\" = 0: expected a positive integer");
  CHECK_THROWS(parse_cfg(llama_with("num_hidden_layers", "2000000000")), "up to 1024");
  CHECK_THROWS(parse_cfg(llama_with("hidden_size", "-16")), "expected a positive integer");
  CHECK_THROWS(parse_cfg(llama_with("num_key_value_heads", "3")), "multiple of num_key_value_heads");
  CHECK_THROWS(parse_cfg(llama_with("num_attention_heads", "5")), "not divisible by num_attention_heads (5)");
  CHECK_THROWS(parse_cfg(llama_with("rope_scaling", R"({"rope_type": "dynamic", "factor": 2.0})")),
               "field \"rope_scaling\" = {\"rope_type\":\"dynamic\",\"factor\":2.0}: unsupported RoPE variant");
  CHECK_THROWS(parse_cfg(llama_with("rope_parameters", R"({"rope_type": "llama3", "rope_theta": 5e5})")),
               "field \"rope_parameters\" = {\"rope_type\":\"llama3\",\"rope_theta\":500000.0}: a scaled RoPE needs a "
               "factor");
  CHECK_THROWS(parse_cfg(llama_with("rope_parameters", R"({"rope_theta": 5e5, "partial_rotary_factor": 0.5})")),
               "unsupported RoPE setting \"partial_rotary_factor\"");
  // Beyond float range these became Inf: the config loaded but the model could never be saved (fuzz_hf_config).
  CHECK_THROWS(parse_cfg(llama_with("rope_theta", "1e300")), "rope_theta 1e+300 is outside the range of a float");
  CHECK_THROWS(parse_cfg(llama_with("rope_parameters", R"({"rope_type": "default", "rope_theta": 4e38})")),
               "outside the range of a float");
  CHECK_THROWS(parse_cfg(llama_with("rms_norm_eps", "1e39")), "field \"rms_norm_eps\" = 1e+39: outside the range");
  CHECK_THROWS(parse_cfg(llama_with("mlp_bias", "true")), "field \"mlp_bias\" = true");
  CHECK_THROWS(parse_cfg(llama_with("hidden_act", "\"gelu\"")), "field \"hidden_act\" = \"gelu\"");
  CHECK_THROWS(parse_cfg(llama_with("tie_word_embeddings", "1")), "expected true or false");
  CHECK_THROWS(parse_cfg(llama_with("architectures", "[\"LlamaForTokenClassification\"]")),
               "unsupported architecture \"LlamaForTokenClassification\"");
  CHECK_THROWS(parse_cfg(llama_with("architectures", "[\"Qwen2ForCausalLM\"]")), "expected \"LlamaForCausalLM\"");
  CHECK_THROWS(parse_cfg(llama_with("architectures", "[]")), "non-empty list");
  CHECK_THROWS(parse_cfg(llama_with("architectures", "[\"LlamaForSequenceClassification\"]")),
               "default of 2 labels");
  CHECK_THROWS(parse_cfg(llama_with("architectures", "[\"LlamaForSequenceClassification\"]")
                             .replace(0, 1, "{\"id2label\":{\"0\":\"a\",\"1\":\"b\"},")),
               "exactly one label");
  CHECK_THROWS(parse_cfg(llama_with("architectures", "[\"LlamaForSequenceClassification\"]")
                             .replace(0, 1, "{\"num_labels\":3,")),
               "num_labels == 1");
  const std::string qwen = R"({"model_type": "qwen2", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64)";
  CHECK(parse_cfg(qwen + "}").n_kv_head == 4);
  CHECK_THROWS(parse_cfg(qwen + ", \"use_sliding_window\": true}"), "field \"use_sliding_window\" = true");
  CHECK_THROWS(parse_cfg(qwen + ", \"layer_types\": [\"sliding_attention\", \"full_attention\"]}"), "layer_types");
  std::string qwen3 = qwen;
  qwen3.replace(qwen3.find("qwen2"), 5, "qwen3");
  CHECK_THROWS(parse_cfg(qwen3 + ", \"use_sliding_window\": true}"), "field \"use_sliding_window\" = true");
  CHECK_THROWS(parse_cfg(qwen3 + ", \"architectures\": [\"Qwen2ForCausalLM\"]}"), "expected \"Qwen3ForCausalLM\"");
  const std::string gpt2 = R"({"model_type": "gpt2", "vocab_size": 64, "n_embd": 16, "n_layer": 2, "n_positions": 8)";
  CHECK_THROWS(parse_cfg(gpt2 + "}"), "missing required field \"n_head\" for model_type \"gpt2\"");
  CHECK_THROWS(parse_cfg(gpt2 + ", \"n_head\": 3}"), "divisible by n_head");
  CHECK_THROWS(parse_cfg(gpt2 + ", \"n_head\": 2, \"activation_function\": \"relu\"}"),
               "field \"activation_function\" = \"relu\"");
  CHECK_THROWS(parse_cfg(gpt2 + ", \"n_head\": 2, \"scale_attn_by_inverse_layer_idx\": true}"), "not supported");
  CHECK(parse_cfg(gpt2 + ", \"n_head\": 2, \"n_inner\": 24, \"activation_function\": \"gelu_pytorch_tanh\"}").d_ff ==
        24);
}

// ---- model directories ----------------------------------------------------------------------------------------

// A multimodal Gemma 3 checkpoint (parity fixture gemma3_mm: Gemma3ForConditionalGeneration with a tiny vision tower,
// saved by transformers 5.18: save_pretrained's "language_model.model.*" names) loads as its language model, under the
// module names "model.language_model.*" too, and saves as the multimodal model again (multimodal_gemma3_saves_...).
TEST(multimodal_gemma3_is_read_as_its_language_model) {
  const std::string src = "native/test/fixtures/parity/gemma3_mm";
  auto m = load_checkpoint(src);
  CHECK(m->cfg.arch == Arch::GEMMA3 && !m->cfg.reward_model && m->cfg.n_layer == 3 && m->cfg.vocab_size == 64);
  CHECK(m->multimodal && m->multimodal->prefix == "language_model.model." && m->multimodal->tensors.size() == 34);
  TempDir tmp;

  // the module names (transformers >= 4.52) for the same tensors
  const std::string renamed = tmp / "renamed";
  std::filesystem::create_directories(renamed);
  std::filesystem::copy_file(src + "/config.json", renamed + "/config.json");
  st::Reader r(src + "/model.safetensors");
  std::vector<std::vector<float>> data;
  std::vector<st::TensorRef> refs;
  for (const auto& t : r.header().tensors) data.push_back(r.read_f32(t.name));
  for (size_t i = 0; i < r.header().tensors.size(); i++) {
    std::string name = r.header().tensors[i].name;
    const std::string lm = "language_model.model.";
    name = name.compare(0, lm.size(), lm) == 0 ? "model.language_model." + name.substr(lm.size()) : "model." + name;
    refs.push_back({name, r.header().tensors[i].shape, data[i].data()});
  }
  st::save(renamed + "/model.safetensors", refs);
  auto from_renamed = load_checkpoint(renamed);
  CHECK(from_renamed->params == m->params && from_renamed->multimodal->prefix == "model.language_model.");

  // a tensor of neither part is still reported
  refs.push_back({"model.language_model.layers.0.extra.weight", {2}, data[0].data()});
  st::save(renamed + "/model.safetensors", refs);
  CHECK_THROWS(load_checkpoint(renamed), "unexpected tensors not used by Gemma3ForCausalLM");

  const std::string cfg = read_file(src + "/config.json");
  CHECK_THROWS(config_from_hf_json(json_with(cfg, "architectures", "[\"Gemma3ForSequenceClassification\"]"), "/m"),
               "a multimodal Gemma 3 checkpoint is read as its language model, from a Gemma3ForConditionalGeneration");
  CHECK_THROWS(config_from_hf_json(json_with(cfg, "text_config", ""), "/m"), "needs its \"text_config\" object");
  // sizes text_config leaves out take Gemma3TextConfig's defaults; errors name the nested object
  json::Value root = json::parse(cfg, "cfg");
  json::Value text = *root.get("text_config");
  text.object.erase(std::remove_if(text.object.begin(), text.object.end(),
                                   [](const auto& kv) { return kv.first == "vocab_size"; }),
                    text.object.end());
  root.set("text_config", text);
  CHECK(config_from_hf_json(json::dump(root), "/m").vocab_size == 262208);
  text.set("hidden_act", json::Value::of_string("relu"));
  text.set("hidden_activation", json::Value::of_string("relu"));
  root.set("text_config", text);
  CHECK_THROWS(config_from_hf_json(json::dump(root), "/m/config.json"), "/m/config.json (text_config)");
}

// ... and saves as the multimodal model it was loaded from: its config.json (dtype float32), every tensor under its
// stored name, the vision tower and projector copied from the source (the same values), the language model's from
// the weights (trained: the new values; with LoRA: merged). The source must still be there: without it nothing is
// written. Copies (a refreshed reference) save the same way.
TEST(multimodal_gemma3_saves_the_whole_multimodal_model) {
  const std::string src = "native/test/fixtures/parity/gemma3_mm";
  auto m = load_checkpoint(src);
  for (float& w : m->params) w *= 1.5f;  // "trained"
  TempDir tmp;
  const std::string out = tmp / "mm";
  save_checkpoint(*m, out);
  const json::Value cfg = json::parse(read_file(out + "/config.json"), "saved");
  const json::Value orig = json::parse(read_file(src + "/config.json"), "source");
  CHECK(cfg.get("architectures")->array[0].str == "Gemma3ForConditionalGeneration");
  CHECK(cfg.get("model_type")->str == "gemma3" && cfg.get("dtype")->str == "float32");
  CHECK(json::dump(*cfg.get("text_config")) == json::dump(*orig.get("text_config")));
  CHECK(json::dump(*cfg.get("vision_config")) == json::dump(*orig.get("vision_config")));
  st::Reader saved(out + "/model.safetensors"), source(src + "/model.safetensors");
  CHECK(saved.header().tensors.size() == source.header().tensors.size());
  size_t vision = 0, language = 0;
  for (const auto& t : source.header().tensors) {
    const st::TensorInfo* w = saved.header().find(t.name);
    CHECK_MSG(w && w->shape == t.shape, t.name);
    if (!w) continue;
    const bool lm = t.name.rfind("language_model.", 0) == 0;
    std::vector<float> want = source.read_f32(t.name);
    if (lm)
      for (float& x : want) x *= 1.5f;
    CHECK_MSG(saved.read_f32(t.name) == want, t.name);
    (lm ? language : vision)++;
  }
  CHECK(vision == 34 && language + vision == source.header().tensors.size());
  auto back = load_checkpoint(out);
  CHECK(back->params == m->params && back->multimodal && back->multimodal->tensors.size() == 34);

  // a copy saves the same way; a LoRA model's language model is written merged
  auto copy = clone_model(*m);
  save_checkpoint(*copy, tmp / "copy");
  CHECK(read_file(tmp / "copy/model.safetensors") == read_file(out + "/model.safetensors"));
  testing::enable_random_lora(*m, LoraConfig{2, 4.0f, {"all-linear"}}, 3, 0.1f);
  save_checkpoint(*m, tmp / "lora");
  CHECK(load_checkpoint(tmp / "lora")->params == clone_model(*m)->params);
  CHECK(st::Reader(tmp / "lora/model.safetensors").read_f32("vision_tower.embeddings.patch_embedding.weight") ==
        source.read_f32("vision_tower.embeddings.patch_embedding.weight"));

  // the model saved in `out`, loaded from there, with `out` gone: refused before anything is written
  auto from_out = load_checkpoint(out);
  std::filesystem::remove_all(out);
  const std::string target = tmp / "after";
  CHECK_THROWS(save_checkpoint(*from_out, target), "is needed to save its vision tower and projector");
  CHECK(!std::filesystem::exists(target + "/model.safetensors") && !std::filesystem::exists(target + "/config.json"));
}

// A saved GPT-2 directory whose model.safetensors is then replaced by `tensors` (fp32 from the saved model).
struct Gpt2Dir {
  TempDir tmp;
  std::string dir;
  std::unique_ptr<Model> m;
  Gpt2Dir() : dir(tmp / "ckpt"), m(random_model(gpt2_cfg(), 21)) { save_checkpoint(*m, dir); }
  std::vector<st::TensorRef> refs() const {
    std::vector<st::TensorRef> r;
    for (const auto& p : m->layout.tensors) r.push_back({p.name, p.shape, m->params.data() + p.offset});
    return r;
  }
  void rewrite(const std::vector<st::TensorRef>& r) const { st::save(dir + "/model.safetensors", r); }
};

TEST(load_rejects_bad_directories) {
  {
    Gpt2Dir d;
    auto r = d.refs();
    r.erase(r.begin() + 5);
    d.rewrite(r);
    CHECK_THROWS(load_checkpoint(d.dir),
                 "model.safetensors: missing tensor \"transformer.h.0.attn.c_attn.bias\" (shape [48])");
  }
  {
    Gpt2Dir d;
    auto r = d.refs();
    r[4].shape = {16, 2, 24};  // c_attn.weight, same element count, wrong shape
    d.rewrite(r);
    CHECK_THROWS(load_checkpoint(d.dir), "tensor \"transformer.h.0.attn.c_attn.weight\" has shape [16, 2, 24], "
                                         "expected [16, 48]");
  }
  {
    Gpt2Dir d;
    auto r = d.refs();
    const float x[2] = {1, 2};
    r.push_back({"transformer.h.9.mlp.c_fc.weight", {2}, x});
    r.push_back({"extra", {1}, x});
    d.rewrite(r);
    CHECK_THROWS(load_checkpoint(d.dir), "unexpected tensors not used by GPT2LMHeadModel: \"extra\", "
                                         "\"transformer.h.9.mlp.c_fc.weight\"");
  }
  {
    Gpt2Dir d;
    auto r = d.refs();
    r.push_back({"wte.weight", r[0].shape, r[0].data});  // the same tensor with and without the prefix
    d.rewrite(r);
    CHECK_THROWS(load_checkpoint(d.dir), "is stored twice");
  }
  {
    Gpt2Dir d;
    auto r = d.refs();
    std::vector<float> wrong(16 * 49);
    r.push_back({"lm_head.weight", {49, 16}, wrong.data()});  // tied head of the wrong shape
    d.rewrite(r);
    CHECK_THROWS(load_checkpoint(d.dir), "tied tensor \"lm_head.weight\" has shape [49, 16], expected [50, 16]");
  }
  {
    Gpt2Dir d;
    write_bytes(d.dir + "/config.json", "{\"model_type\": \"gpt2\"");
    CHECK_THROWS(load_checkpoint(d.dir), "config.json: invalid JSON at byte");
    fs::remove(d.dir + "/config.json");
    CHECK_THROWS(load_checkpoint(d.dir), "config.json: not found");
  }
  {
    Gpt2Dir d;
    fs::remove(d.dir + "/model.safetensors");
    CHECK_THROWS(load_checkpoint(d.dir), "no model.safetensors or model.safetensors.index.json");
    CHECK_THROWS(load_checkpoint(d.dir + "/nope"), "not a directory");
  }
  {
    Gpt2Dir d;  // truncated weights file
    const std::string bytes = read_bytes(d.dir + "/model.safetensors");
    write_bytes(d.dir + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
    CHECK_THROWS(load_checkpoint(d.dir), "run past the end of the data buffer");
  }
  {
    Gpt2Dir d;  // a NaN weight: named at load, not as diverged logits later
    auto r = d.refs();
    std::vector<float> w(r[4].data, r[4].data + 16 * 48);
    w[7] = std::nanf("");
    r[4].data = w.data();
    d.rewrite(r);
    CHECK_THROWS(load_checkpoint(d.dir), "tensor \"transformer.h.0.attn.c_attn.weight\" holds a non-finite value (nan "
                                         "at element 7 after conversion to F32)");
  }
  {
    Gpt2Dir d;  // config.json that does not match the weights
    ModelConfig other = gpt2_cfg();
    other.d_ff = 32;
    write_bytes(d.dir + "/config.json", config_to_hf_json(other));
    CHECK_THROWS(load_checkpoint(d.dir), "expected [16, 32] from config.json");
  }
}

TEST(load_accepts_unprefixed_and_buffers) {
  Gpt2Dir d;
  std::vector<st::TensorRef> r;
  std::vector<float> mask(24 * 24, 1.0f), masked_bias = {-1e4f};
  for (const auto& t : d.refs()) {
    const std::string name = t.name.substr(std::string("transformer.").size());  // hub-style names
    r.push_back({name, t.shape, t.data});
  }
  r.push_back({"h.0.attn.bias", {1, 1, 24, 24}, mask.data()});
  r.push_back({"h.1.attn.masked_bias", {}, masked_bias.data()});
  r.push_back({"lm_head.weight", {50, 16}, d.m->params.data()});  // tied, saved anyway
  d.rewrite(r);
  auto back = load_checkpoint(d.dir);
  CHECK(same_params(*d.m, *back));
}

// A sharded checkpoint written by hand: two shards plus the index.
TEST(load_sharded) {
  Gpt2Dir d;
  auto r = d.refs();
  const size_t half = r.size() / 2;
  const auto mid = r.begin() + static_cast<long>(half);
  std::vector<st::TensorRef> s1(r.begin(), mid), s2(mid, r.end());
  st::save(d.dir + "/model-00001-of-00002.safetensors", s1);
  st::save(d.dir + "/model-00002-of-00002.safetensors", s2);
  fs::remove(d.dir + "/model.safetensors");
  json::Value wm = json::Value::new_object();
  for (size_t i = 0; i < r.size(); i++)
    wm.set(r[i].name, json::Value::of_string(i < half ? "model-00001-of-00002.safetensors"
                                                      : "model-00002-of-00002.safetensors"));
  json::Value index = json::Value::new_object();
  index.set("metadata", json::Value::new_object());
  index.set("weight_map", wm);
  write_bytes(d.dir + "/model.safetensors.index.json", json::dump(index, 2));
  CHECK(same_params(*d.m, *load_checkpoint(d.dir)));

  wm.set(r[0].name, json::Value::of_string("model-00002-of-00002.safetensors"));
  index.set("weight_map", wm);
  write_bytes(d.dir + "/model.safetensors.index.json", json::dump(index));
  CHECK_THROWS(load_checkpoint(d.dir), "but that file has no such tensor");
  wm.set(r[0].name, json::Value::of_string("../model-00001-of-00002.safetensors"));
  index.set("weight_map", wm);
  write_bytes(d.dir + "/model.safetensors.index.json", json::dump(index));
  CHECK_THROWS(load_checkpoint(d.dir), "is not a plain file name");
  wm.set(r[0].name, json::Value::of_string("missing.safetensors"));
  index.set("weight_map", wm);
  write_bytes(d.dir + "/model.safetensors.index.json", json::dump(index));
  CHECK_THROWS(load_checkpoint(d.dir), "missing.safetensors: cannot open safetensors file");
  write_bytes(d.dir + "/model.safetensors.index.json", "{\"weight_map\": []}");
  CHECK_THROWS(load_checkpoint(d.dir), "missing \"weight_map\" object");
}

TEST(save_rejects_bad_targets) {
  TempDir tmp;
  auto m = random_model(gpt2_cfg(), 3);
  write_bytes(tmp / "file", "x");
  CHECK_THROWS(save_checkpoint(*m, tmp / "file"), "file");
  CHECK_THROWS(save_checkpoint(*m, ""), "empty directory path");
  m->params.pop_back();
  CHECK_THROWS(save_checkpoint(*m, tmp / "d"), "layout needs");
}

// ---- interop fixtures (tools/make_io_fixtures.py) -------------------------------------------------------------

static const char* kFixtures = "native/test/fixtures/io/";

// The params.h name for a name in a fixture file, or "" for a tensor the loader ignores.
static std::string layout_name(const Model& m, const std::string& name) {
  if (m.layout.find(name)) return name;
  for (const char* prefix : {"transformer.", "model."})
    if (m.layout.find(prefix + name)) return prefix + name;
  return "";
}

static std::unique_ptr<Model> check_fixture(const std::string& name) {
  const std::string dir = kFixtures + name;
  std::unique_ptr<Model> m;
  try {
    m = load_checkpoint(dir);
  } catch (const std::exception& e) {
    CHECK_MSG(false, name + ": " + e.what());
    return nullptr;
  }
  const json::Value expected = json::parse(read_bytes(dir + "/expected.json"), dir + "/expected.json");
  CHECK_MSG(expected.get("architecture")->str == hf_architecture_name(m->cfg), name);
  std::vector<bool> covered(m->layout.tensors.size(), false);
  for (const auto& kv : expected.get("tensors")->object) {
    const std::string lname = layout_name(*m, kv.first);
    if (lname.empty()) {
      const bool known = kv.first.find(".attn.bias") != std::string::npos ||
                         kv.first.find(".attn.masked_bias") != std::string::npos ||
                         (kv.first == "lm_head.weight" && m->cfg.tie_embeddings);
      CHECK_MSG(known, name + ": file tensor " + kv.first + " maps to nothing");
      continue;
    }
    const ParamInfo* p = m->layout.find(lname);
    covered[static_cast<size_t>(p - m->layout.tensors.data())] = true;
    std::vector<int64_t> shape;
    for (const auto& d : kv.second.get("shape")->array) shape.push_back(d.integer);
    CHECK_MSG(shape == p->shape, name + ": " + kv.first);
    const float* w = m->params.data() + p->offset;
    double sum = 0;
    for (size_t i = 0; i < p->numel; i++) sum += w[i];
    CHECK_MSG(w[0] == static_cast<float>(kv.second.get("first")->number), name + ": first of " + kv.first);
    CHECK_CLOSE(sum, kv.second.get("sum")->number, 1e-9, 1e-9);
  }
  for (size_t i = 0; i < covered.size(); i++) CHECK_MSG(covered[i], name + ": " + m->layout.tensors[i].name);
  // What optune writes loads back the same.
  TempDir tmp;
  save_checkpoint(*m, tmp / "re");
  auto re = load_checkpoint(tmp / "re");
  CHECK_MSG(same_params(*m, *re) && same_config(m->cfg, re->cfg), name);
  return m;
}

TEST(fixture_gpt2) {
  auto m = check_fixture("gpt2");
  if (!m) return;
  CHECK(m->cfg.is_gpt2() && m->cfg.tie_embeddings && m->cfg.d_ff == 64 && m->cfg.bos_token_id == 0);
  CHECK(m->layout.lm_head == m->layout.tok_emb);
}

TEST(fixture_gpt2_hub_style) {
  auto m = check_fixture("gpt2_hub_style");
  if (m) CHECK(m->cfg.eos_token_id == 1);
}

TEST(fixture_gpt2_reward_fp16) {
  auto m = check_fixture("gpt2_rm_fp16");
  if (m) CHECK(m->cfg.reward_model && m->cfg.pad_token_id == 0 && m->layout.score != kAbsent);
}

TEST(fixture_llama_gqa) {
  auto m = check_fixture("llama_gqa");
  if (!m) return;
  CHECK(m->cfg.arch == Arch::LLAMA && m->cfg.n_kv_head == 2 && m->cfg.n_head == 4 && !m->cfg.tie_embeddings);
  CHECK(m->cfg.rope_theta == 500000.0f && m->cfg.eos_token_id == 1 && m->cfg.norm_eps == 1e-6f);
}

TEST(fixture_qwen2) {
  auto m = check_fixture("qwen2");
  if (m) CHECK(m->cfg.arch == Arch::QWEN2 && m->cfg.qkv_bias && !m->cfg.o_bias && m->cfg.tie_embeddings);
}

TEST(fixture_llama_reward) {
  auto m = check_fixture("llama_rm");
  if (m) CHECK(m->cfg.reward_model && m->cfg.qkv_bias && m->cfg.o_bias && m->cfg.pad_token_id == 3);
}

TEST(fixture_llama_bf16) {
  auto m = check_fixture("llama_bf16");
  if (m) CHECK(m->cfg.head_dim == 8 && m->cfg.q_dim() == 32 && m->cfg.d_model == 16 && m->cfg.tie_embeddings);
}

TEST(fixture_llama_sharded) {
  auto m = check_fixture("llama_sharded");
  if (m) CHECK(fs::exists(std::string(kFixtures) + "llama_sharded/model.safetensors.index.json"));
}

TEST_MAIN()
