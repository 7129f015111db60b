// libFuzzer target: safetensors::parse_header. Input: 8 bytes little-endian data-buffer size, then the header JSON
// text (the seed corpus holds the fixtures' headers with their real sizes). Hostile offsets, shapes and sizes must
// be rejected with optune::Error; an accepted header must describe tensors that exactly tile the data buffer.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/safetensors.h"

using namespace optune;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_size = 0;
  for (int i = 7; i >= 0; i--) data_size = (data_size << 8) | data[i];
  const std::string text(reinterpret_cast<const char*>(data) + 8, size - 8);
  safetensors::Header h;
  try {
    h = safetensors::parse_header(text, data_size, "fuzz.safetensors");
  } catch (const Error&) {
    return 0;
  }
  // The invariants readers rely on: each tensor's bytes match its shape and dtype, and the ranges sum to the buffer.
  uint64_t total = 0;
  for (const auto& t : h.tensors) {
    if (t.begin > t.end || t.end > data_size || t.numel * safetensors::dtype_size(t.dtype) != t.end - t.begin) {
      std::fprintf(stderr, "accepted tensor with an inconsistent range\n");
      std::abort();
    }
    total += t.end - t.begin;
  }
  if (total != data_size) {
    std::fprintf(stderr, "accepted header whose tensors do not tile the data buffer\n");
    std::abort();
  }
  return 0;
}
