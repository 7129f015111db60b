// The safetensors file format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length N,
// N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
// data buffer, offsets relative to its start. Reading validates the header as strictly as the reference
// implementation (tensors exactly tile the buffer, no overlaps or gaps) and converts F32/F16/BF16/F64 to fp32 one
// tensor at a time, so memory stays bounded by the largest tensor read. Writing produces fp32 files laid out like
// the reference writer's: compact header padded with spaces to a multiple of 8 bytes. POSIX file IO.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace optune {
namespace safetensors {

enum class DType { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };
const char* dtype_name(DType d);                         // "F32", ...
size_t dtype_size(DType d);                              // bytes per element
bool dtype_from_name(const std::string& s, DType& out);  // false for an unknown name
bool dtype_converts_to_f32(DType d);                     // F32, F16, BF16, F64

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the reference implementation's limit

using Metadata = std::vector<std::pair<std::string, std::string>>;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range in the data buffer
  uint64_t numel = 1;           // product of shape (1 for a 0-d tensor)
};

struct Header {
  std::vector<TensorInfo> tensors;  // in file order
  Metadata metadata;                // "__metadata__", empty when absent
  uint64_t data_start = 0;          // 8 + N: file offset of the data buffer
  uint64_t data_size = 0;           // bytes in the data buffer

  const TensorInfo* find(const std::string& name) const;
};

// Validates the JSON header text against a data buffer of data_size bytes. `where` names the file in errors.
Header parse_header(const std::string& json_text, uint64_t data_size, const std::string& where);

// An open safetensors file with a validated header; tensors are read on demand.
class Reader {
 public:
  explicit Reader(const std::string& path);  // throws optune::Error if the file is missing or malformed
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const std::string& path() const { return path_; }
  const Header& header() const { return header_; }

  // Converts one tensor to fp32 into out[0 .. t.numel). `t` must come from header(); its dtype must convert.
  void read_f32(const TensorInfo& t, float* out) const;
  std::vector<float> read_f32(const std::string& name) const;

 private:
  std::string path_;
  int fd_ = -1;
  Header header_;
};

// Only the header: names, dtypes, shapes, metadata, without touching the data.
Header read_header(const std::string& path);

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// Every tensor of a file as fp32 (all of them must have a dtype that converts).
std::map<std::string, Tensor> load(const std::string& path);
// Only the named tensors; a name not in the file is an error.
std::map<std::string, Tensor> load(const std::string& path, const std::vector<std::string>& names);

// An fp32 tensor to write; data points at numel(shape) floats (may be null when that is 0).
struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
  // Instead of data: writes the tensor's values (numel floats) into the buffer it is given, when save() reaches the
  // tensor; one buffer serves every such tensor (a LoRA model's merged weights: one at a time, not all at once).
  std::function<void(float*)> fill = nullptr;
};

// Writes an F32 safetensors file (tensors in the given order), fsyncs it and closes it. Not atomic by itself:
// checkpoint.cpp writes to a temporary name and renames.
void save(const std::string& path, const std::vector<TensorRef>& tensors, const Metadata& metadata = {});

// fp16 / bf16 bit patterns to float, exact.
float f16_to_f32(uint16_t h);
float bf16_to_f32(uint16_t b);

}  // namespace safetensors
}  // namespace optune
