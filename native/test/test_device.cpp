// Device selection in every build (CPU-only ones too): names parse, 'auto' never fails, and asking for CUDA where
// there is none (a build without the backend, or no GPU) is a clear error rather than a silent CPU fallback.
#include <string>

#include "core/device.h"
#include "core/engine.h"
#include "core/error.h"
#include "test_helpers.h"
#include "testing.h"

using namespace optune;

TEST(names_parse) {
  CHECK(parse_device("cpu") == Device::CPU);
  CHECK(parse_device("cuda") == Device::CUDA);
  CHECK(parse_device("auto") == Device::AUTO);
  CHECK(parse_precision("bf16") == Precision::BF16);
  CHECK_THROWS(parse_device("gpu"), "unknown device 'gpu': use 'cpu', 'cuda' or 'auto'");
  CHECK_THROWS(parse_precision("fp16"), "unknown precision 'fp16'");
  CHECK(std::string(device_name(Device::CUDA)) == "cuda");
  CHECK(std::string(precision_name(Precision::BF16)) == "bf16");
}

// Whether the engine's GPU (the current device, 0) can run the kernels.
static bool usable_gpu() {
  const std::vector<GpuInfo> gpus = list_gpus();
  return !gpus.empty() && gpus[0].unusable.empty();
}

TEST(cuda_without_backend_or_gpu_is_an_error) {
  auto m = make_model(testing::tiny_gpt2());
  const bool have_gpu = !list_gpus().empty();
  if (!cuda_built()) {
    CHECK(!have_gpu);
    CHECK_THROWS(set_device(*m, Device::CUDA), "this build of optune has no CUDA backend");
    CHECK(m->device == nullptr);
  } else if (!have_gpu) {
    CHECK_THROWS(set_device(*m, Device::CUDA), "no CUDA GPU is visible");
    CHECK(m->device == nullptr);
  } else if (!usable_gpu()) {  // below sm_80, or no code for it in this build
    CHECK_THROWS(set_device(*m, Device::CUDA), "cannot run optune's CUDA kernels");
    CHECK(m->device == nullptr);
  } else {
    set_device(*m, Device::CUDA, Precision::BF16);
    CHECK(model_device(*m) == Device::CUDA && model_precision(*m) == Precision::BF16);
    set_device(*m, Device::CPU);
    CHECK(m->device == nullptr);
  }
}

// Every family the engine loads has CUDA kernels: asking for the GPU places it there, or, on a machine without a
// usable GPU (or a build without the backend), fails on that with the model left on the CPU, usable.
TEST(every_family_is_accepted_for_cuda) {
  ModelConfig scaled = testing::tiny_llama();
  scaled.rope_scaling.type = cpu::RopeScaling::LLAMA3;
  scaled.rope_scaling.factor = 8, scaled.rope_scaling.original_max_positions = 16;
  std::vector<ModelConfig> configs = testing::tiny_families();
  configs.push_back(scaled);
  for (const ModelConfig& c : configs) {
    auto m = make_model(c);
    try {
      set_device(*m, Device::CUDA);
      CHECK(model_device(*m) == Device::CUDA);
    } catch (const Error& e) {
      const std::string what = e.what();
      CHECK_MSG(what.find("no CUDA GPU is visible") != std::string::npos ||
                    what.find("has no CUDA backend") != std::string::npos ||
                    what.find("cannot run optune's CUDA kernels") != std::string::npos,
                std::string(arch_name(c.arch)) + ": " + what);
      CHECK(m->device == nullptr && model_device(*m) == Device::CPU);
    }
  }
}

// head_dim 512 is past the CUDA attention's 256: asking for the GPU says so (in a build with the backend, before any
// GPU check), 'auto' keeps the model on the CPU. (head_dim 256, Gemma 3's, runs on GPUs with the shared memory for
// it: test_cuda_model.)
TEST(head_dim_512_stays_on_the_cpu) {
  ModelConfig c = testing::tiny_gemma3();
  c.head_dim = 512;
  auto m = make_model(c);
  CHECK_THROWS(set_device(*m, Device::CUDA),
               cuda_built() ? "the CUDA backend's attention takes head_dim up to 256, and this Gemma3 model's is 512"
                            : "has no CUDA backend");
  CHECK(m->device == nullptr);
  set_device(*m, Device::AUTO);
  CHECK(m->device == nullptr && model_device(*m) == Device::CPU);
}

TEST(gpus_below_sm80_are_unusable_with_a_reason) {
  CHECK(compute_capability_problem(8, 0).empty() && compute_capability_problem(8, 9).empty());
  CHECK(compute_capability_problem(9, 0).empty() && compute_capability_problem(12, 0).empty());
  const std::string t4 = compute_capability_problem(7, 5);
  CHECK_MSG(t4.find("7.5") != std::string::npos && t4.find("8.0") != std::string::npos, t4);
  CHECK(cuda_archs().empty() == !cuda_built());  // "80,90" with the backend
  // On a GPU machine: the device the engine uses (0) is usable from sm_80 on (with a build holding its code), and
  // its free memory is known.
  const std::vector<GpuInfo> gpus = list_gpus();
  if (!gpus.empty()) {
    CHECK_MSG(gpus[0].unusable.empty() == (gpus[0].major >= 8), gpus[0].name + ": " + gpus[0].unusable);
    CHECK(gpus[0].free_known && gpus[0].free_bytes > 0);
  }
}

TEST(auto_picks_what_exists) {
  auto m = make_model(testing::tiny_gpt2());
  set_device(*m, Device::AUTO);
  const Device want = cuda_built() && usable_gpu() ? Device::CUDA : Device::CPU;
  CHECK(resolve_device(Device::AUTO) == want);
  CHECK(model_device(*m) == want);
  set_device(*m, Device::CPU);
  CHECK(model_device(*m) == Device::CPU && model_precision(*m) == Precision::FP32);
}

// On the CPU, bf16 is a model property (sampling and training multiply in bf16), not a device.
TEST(bf16_on_the_cpu) {
  auto m = make_model(testing::tiny_gpt2());
  set_device(*m, Device::CPU, Precision::BF16);
  CHECK(m->device == nullptr);
  CHECK(model_device(*m) == Device::CPU && model_precision(*m) == Precision::BF16);
  set_device(*m, Device::CPU);
  CHECK(model_precision(*m) == Precision::FP32);
}

// A CPU model's sync calls are no-ops, and the engine still runs on it.
TEST(cpu_sync_is_a_no_op) {
  auto m = make_model(testing::tiny_gpt2());
  testing::randomize(*m, 3);
  const std::vector<float> p = m->params;
  sync_to_host(*m);
  sync_to_device(*m);
  CHECK(m->params == p);
  const Batch b = testing::random_batch({5, 4}, {2, 1}, 17, 9);
  CHECK(compute_logprobs(*m, b).token_logps.size() == 6u);
}

TEST_MAIN()
