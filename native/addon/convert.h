// Conversions between JS values and engine structs, with the cheap checks done on the main thread: value kinds,
// typed-array types and lengths, finite numbers, known loss names. Each failure throws a Napi::TypeError or
// Napi::RangeError naming the field. Checks that need the model (token ids, sequence lengths) stay in the core.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <napi.h>

#include "core/config.h"
#include "core/device.h"
#include "core/engine.h"

namespace optune_addon {

// ---- plain values ---------------------------------------------------------------------------------------------
// "undefined", "a number", "an Int32Array", ... for messages.
std::string describe(const Napi::Value& v);

Napi::Object expect_object(const Napi::Value& v, const std::string& name);
std::vector<int32_t> int32_array(const Napi::Value& v, const std::string& name);
std::vector<float> float32_array(const Napi::Value& v, const std::string& name, bool finite);
// The array itself, not a copy (TypeError unless it is a Float32Array).
Napi::Float32Array float32_array_ref(const Napi::Value& v, const std::string& name);
// "name[i] is NaN; all values must be finite" for the first non-finite value, "" when there is none. Touches no JS
// value, so the engine thread may call it.
std::string first_nonfinite(const float* x, size_t n, const std::string& name);
// A seed: undefined (0), a non-negative safe integer, or a bigint that fits in 64 bits.
uint64_t seed_value(const Napi::Value& v, const std::string& name);

// ---- JS results -----------------------------------------------------------------------------------------------
Napi::Float32Array to_js(Napi::Env env, const std::vector<float>& v);
// Hands the vector's memory to JS without a copy (the array's finalizer frees it); copies where a runtime refuses
// external memory.
Napi::Float32Array to_js_owned(Napi::Env env, std::vector<float>&& v);
Napi::Int32Array to_js(Napi::Env env, const std::vector<int32_t>& v);
Napi::Uint8Array to_js(Napi::Env env, const std::vector<uint8_t>& v);

// ---- engine structs -------------------------------------------------------------------------------------------
// {arch, vocabSize, dModel, nLayer, nHead, nKvHead?, headDim?, dFf, maxPositions, normEps?, ropeTheta?,
//  tieEmbeddings?, qkvBias?, oBias?, rewardModel?, bosTokenId?, eosTokenId?, padTokenId?}
optune::ModelConfig to_config(const Napi::Value& v);
Napi::Object config_to_js(Napi::Env env, const optune::ModelConfig& c);

// {tokens: Int32Array, offsets: Int32Array, promptLens: Int32Array}
optune::Batch to_batch(const Napi::Value& v, const std::string& name);

// Everything of a trainStep request except refModel, which the caller resolves to a native model.
optune::TrainRequest to_train_request(const Napi::Object& req, bool has_ref_model);
Napi::Object stats_to_js(Napi::Env env, const optune::TrainStats& s);

optune::SampleRequest to_sample_request(const Napi::Value& v);

// {device?: "cpu" | "cuda" | "auto", precision?: "fp32" | "bf16"} or undefined: where createModel/loadModel put
// the model (default cpu, fp32). Placement itself (and its errors) happens on the worker thread.
struct DeviceOptions {
  optune::Device device = optune::Device::CPU;
  optune::Precision precision = optune::Precision::FP32;
};
DeviceOptions to_device_options(const Napi::Value& v, const std::string& name);
Napi::Object sample_to_js(Napi::Env env, const optune::SampleResult& r);

}  // namespace optune_addon
