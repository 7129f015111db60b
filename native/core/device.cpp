// Device selection and host/device sync (device.h). The one place in the engine core that knows whether the CUDA
// backend was built: OPTUNE_HAVE_CUDA is defined for optune_core only when CMake links it with optune_cuda, never in
// the node-gyp build.
#include "device.h"

#include "error.h"

#ifdef OPTUNE_HAVE_CUDA
#include "cuda/device_model.h"
#include "cuda/memory.h"
#include "cuda/ops.h"
#endif

namespace optune {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::CPU;
  if (s == "cuda") return Device::CUDA;
  if (s == "auto") return Device::AUTO;
  throw Error("unknown device '" + s + "': use 'cpu', 'cuda' or 'auto'");
}

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::FP32;
  if (s == "bf16") return Precision::BF16;
  throw Error("unknown precision '" + s + "': use 'fp32' or 'bf16'");
}

const char* device_name(Device d) {
  switch (d) {
    case Device::CPU: return "cpu";
    case Device::CUDA: return "cuda";
    case Device::AUTO: return "auto";
  }
  return "?";
}

const char* precision_name(Precision p) { return p == Precision::BF16 ? "bf16" : "fp32"; }

bool cuda_built() {
#ifdef OPTUNE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_archs() {
#ifdef OPTUNE_HAVE_CUDA
  return cuda::build_archs();
#else
  return "";
#endif
}

std::vector<GpuInfo> list_gpus() {
  std::vector<GpuInfo> out;
#ifdef OPTUNE_HAVE_CUDA
  const int n = cuda::device_count();
  for (int i = 0; i < n; i++) {
    const cuda::DeviceProps p = cuda::device_props(i);
    GpuInfo g;
    g.index = i;
    g.name = p.name;
    g.major = p.major, g.minor = p.minor;
    g.total_bytes = p.total_bytes, g.free_bytes = p.free_bytes, g.free_known = p.free_known;
    g.unusable = p.unusable;
    out.push_back(g);
  }
#endif
  return out;
}

Device resolve_device(Device d) {
  if (d != Device::AUTO) return d;
#ifdef OPTUNE_HAVE_CUDA
  // a GPU the kernels cannot run on, or one that cannot even be asked (held by another process in exclusive mode):
  // the CPU, as 'auto' promises
  try {
    if (cuda::device_count() > 0 && cuda::device_props(cuda::current_device()).unusable.empty()) return Device::CUDA;
  } catch (const Error&) {
  }
#endif
  return Device::CPU;
}

#ifdef OPTUNE_HAVE_CUDA
// Why the CUDA kernels cannot run this model ("" when they can): every architecture has them, but the attention
// stops at head_dim 256 (asked of no GPU).
static std::string cuda_model_problem(const ModelConfig& c) {
  if (c.head_dim <= cuda::kAttentionMaxHeadDim) return "";
  return std::string("the CUDA backend's attention takes head_dim up to ") +
         std::to_string(cuda::kAttentionMaxHeadDim) + ", and this " + hf_class_prefix(c.arch) + " model's is " +
         std::to_string(c.head_dim);
}

// Why the current (usable) GPU cannot run this model's attention: above head_dim 128 (Gemma 3 up to 12B: 256) its
// fp32 kernels need more shared memory per block than some GPUs allow (137 KB at 256: not the 99 KB of sm_86 /
// sm_89 / sm_120). "" when it can.
static std::string cuda_gpu_problem(const ModelConfig& c) {
  if (c.head_dim <= cuda::kAttentionNarrowHeadDim) return "";  // (every GPU from sm_80 on has the memory)
  const std::string smem = cuda::attention_smem_problem(c.head_dim);
  return smem.empty() ? "" : std::string("this ") + hf_class_prefix(c.arch) + " model cannot run on this GPU: " + smem;
}
#endif

void set_device(Model& m, Device requested, Precision p) {
  Device d = resolve_device(requested);
#ifdef OPTUNE_HAVE_CUDA
  // 'auto' stays on the CPU for a model the CUDA kernels cannot run, as for a GPU they cannot run on (resolve_device
  // picked CUDA only for a usable GPU; a GPU that cannot be asked counts as one that cannot run it)
  const std::string model_problem = cuda_model_problem(m.cfg);
  if (requested == Device::AUTO && d == Device::CUDA) {
    bool fits = model_problem.empty();
    try {
      fits = fits && cuda_gpu_problem(m.cfg).empty();
    } catch (const Error&) {
      fits = false;
    }
    if (!fits) d = Device::CPU;
  }
#endif
  if (d == Device::CPU) {
    if (m.device) {
      sync_to_host(m);
      m.device.reset();
    }
    m.cpu_bf16 = p == Precision::BF16;
    return;
  }
#ifdef OPTUNE_HAVE_CUDA
  OPTUNE_CHECK(model_problem.empty(), "device 'cuda': " + model_problem + "; use device 'cpu'");
  OPTUNE_CHECK(cuda::device_count() > 0,
               "device 'cuda' was requested but no CUDA GPU is visible to this process (no device, or no NVIDIA "
               "driver); use device 'cpu'");
  const cuda::DeviceProps gpu = cuda::device_props(cuda::current_device());
  OPTUNE_CHECK(gpu.unusable.empty(), "device 'cuda': the GPU " + gpu.name + " cannot run optune's CUDA kernels: " +
                                         gpu.unusable + "; or use device 'cpu'");
  const std::string gpu_problem = cuda_gpu_problem(m.cfg);
  OPTUNE_CHECK(gpu_problem.empty(), "device 'cuda': " + gpu_problem + "; use device 'cpu'");
  if (m.device && m.device->device() == Device::CUDA && m.device->precision() == p) return;
  if (m.device) {
    sync_to_host(m);
    m.device.reset();
  }
  cuda::to_device(m, p);
#else
  throw Error(
      "device 'cuda' was requested but this build of optune has no CUDA backend; rebuild it with CUDA "
      "(OPTUNE_CMAKE_ARGS=-DOPTUNE_CUDA=ON npm rebuild optune, or cmake -DOPTUNE_CUDA=ON, with nvcc and cuBLAS "
      "installed) or use device 'cpu'");
#endif
}

Device model_device(const Model& m) { return m.device ? m.device->device() : Device::CPU; }
Precision model_precision(const Model& m) {
  if (m.device) return m.device->precision();
  return m.cpu_bf16 ? Precision::BF16 : Precision::FP32;
}

void sync_to_host(Model& m) {
  if (m.device) m.device->download(m);
}

void sync_to_device(const Model& m) {
  if (m.device) m.device->upload(m);
}

}  // namespace optune
