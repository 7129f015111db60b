// libFuzzer target: a whole safetensors file. The input is written to a temporary file, opened with
// safetensors::Reader and every tensor is read (converted to fp32, or refused for other dtypes); then the same
// through safetensors::load. Exercises the header-length checks, pread paths and dtype conversions on hostile files.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"

using namespace optune;

namespace {

// One file per process, rewritten for each input (libFuzzer runs inputs one after another in a process).
const std::string& temp_path() {
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir && *dir ? dir : "/tmp") + "/optune-fuzz-" + std::to_string(::getpid()) + ".safetensors";
  }();
  return path;
}

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();  // an environment problem, not a finding; stop loudly rather than fuzz nothing
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = temp_path();
  write_file(path, data, size);
  try {
    safetensors::Reader r(path);
    for (const auto& t : r.header().tensors) {
      // numel is bounded by the file size (the header check ties it to data_offsets), so this cannot be huge.
      std::vector<float> out(static_cast<size_t>(t.numel));
      try {
        r.read_f32(t, out.data());
      } catch (const Error&) {
        if (safetensors::dtype_converts_to_f32(t.dtype)) throw;  // only other dtypes may be refused here
      }
    }
  } catch (const Error&) {
  }
  try {
    safetensors::load(path);
  } catch (const Error&) {
  }
  return 0;
}
