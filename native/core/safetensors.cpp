#include "safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "error.h"
#include "json.h"

namespace optune {
namespace safetensors {

// ---- dtypes ---------------------------------------------------------------------------------------------------

namespace {
struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};
const DTypeEntry kDTypes[] = {
    {DType::BOOL, "BOOL", 1}, {DType::U8, "U8", 1},   {DType::I8, "I8", 1},     {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::I16, "I16", 2}, {DType::U16, "U16", 2}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I32, "I32", 4}, {DType::U32, "U32", 4}, {DType::F32, "F32", 4},
    {DType::I64, "I64", 8},   {DType::U64, "U64", 8}, {DType::F64, "F64", 8},
};
const DTypeEntry& entry(DType d) {
  for (const auto& e : kDTypes)
    if (e.dtype == d) return e;
  return kDTypes[0];  // unreachable: every enumerator is in the table
}
}  // namespace

const char* dtype_name(DType d) { return entry(d).name; }
size_t dtype_size(DType d) { return entry(d).size; }

bool dtype_from_name(const std::string& s, DType& out) {
  for (const auto& e : kDTypes)
    if (s == e.name) {
      out = e.dtype;
      return true;
    }
  return false;
}

bool dtype_converts_to_f32(DType d) {
  return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / nan (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {
    // Subnormal half: shift the mantissa up until its leading 1 becomes the implicit bit.
    int e = 113;
    while (!(mant & 0x400)) {
      mant <<= 1;
      e--;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_f32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ---- header ---------------------------------------------------------------------------------------------------

const TensorInfo* Header::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

static uint64_t as_u64(const json::Value& v, const std::string& what) {
  OPTUNE_CHECK(v.is_number() && v.is_int && v.integer >= 0,
               what + " must be a non-negative integer, got " +
                   (v.is_number() ? json::dump(v) : std::string(json::type_name(v.type))));
  return static_cast<uint64_t>(v.integer);
}

Header parse_header(const std::string& text, uint64_t data_size, const std::string& where) {
  const std::string fix = " (the file is corrupt or was not written by a safetensors writer)";
  // The reference reader insists on '{' first; a header of zeros or garbage fails here with a clear message.
  OPTUNE_CHECK(!text.empty() && text[0] == '{',
               where + ": safetensors header must start with '{'" + fix);
  const json::Value root = json::parse(text, where + " (safetensors header)");
  Header h;
  h.data_size = data_size;
  for (const auto& kv : root.object) {
    const std::string& name = kv.first;
    const json::Value& v = kv.second;
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      OPTUNE_CHECK(v.is_object(), where + ": safetensors \"__metadata__\" must be an object of strings, got " +
                                      json::type_name(v.type) + fix);
      for (const auto& m : v.object) {
        OPTUNE_CHECK(m.second.is_string(), where + ": safetensors \"__metadata__\"." + m.first +
                                               " must be a string, got " + json::type_name(m.second.type) + fix);
        h.metadata.emplace_back(m.first, m.second.str);
      }
      continue;
    }
    const std::string tw = where + ": safetensors tensor " + json::quote(name);
    OPTUNE_CHECK(v.is_object(), tw + " must be an object {dtype, shape, data_offsets}, got " +
                                    json::type_name(v.type) + fix);
    const json::Value* dt = v.get("dtype");
    const json::Value* sh = v.get("shape");
    const json::Value* off = v.get("data_offsets");
    OPTUNE_CHECK(dt && sh && off, tw + " lacks " + (!dt ? "\"dtype\"" : !sh ? "\"shape\"" : "\"data_offsets\"") + fix);
    TensorInfo t;
    t.name = name;
    OPTUNE_CHECK(dt->is_string(), tw + ": \"dtype\" must be a string" + fix);
    OPTUNE_CHECK(dtype_from_name(dt->str, t.dtype),
                 tw + ": unknown dtype " + json::quote(dt->str) +
                     " (known: BOOL U8 I8 F8_E5M2 F8_E4M3 I16 U16 F16 BF16 I32 U32 F32 I64 U64 F64)");
    OPTUNE_CHECK(sh->is_array(), tw + ": \"shape\" must be an array of integers" + fix);
    // numel * dtype size must not overflow 64 bits: cap at 2^62 bytes, far beyond any real file.
    const uint64_t kCap = uint64_t(1) << 62;
    t.numel = 1;
    for (const auto& d : sh->array) {
      const uint64_t dim = as_u64(d, tw + ": every \"shape\" dimension");
      t.shape.push_back(static_cast<int64_t>(dim));
      if (dim == 0) t.numel = 0;
      else if (t.numel != 0) {
        OPTUNE_CHECK(t.numel <= kCap / dim, tw + ": shape " + shape_str(t.shape) + "... is too large" + fix);
        t.numel *= dim;
      }
    }
    const uint64_t esize = dtype_size(t.dtype);
    OPTUNE_CHECK(t.numel <= kCap / esize, tw + ": shape " + shape_str(t.shape) + " is too large" + fix);
    OPTUNE_CHECK(off->is_array() && off->array.size() == 2,
                 tw + ": \"data_offsets\" must be an array [begin, end]" + fix);
    t.begin = as_u64(off->array[0], tw + ": data_offsets begin");
    t.end = as_u64(off->array[1], tw + ": data_offsets end");
    const std::string range = "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    OPTUNE_CHECK(t.begin <= t.end, tw + ": data_offsets " + range + " has begin > end" + fix);
    OPTUNE_CHECK(t.end <= data_size, tw + ": data_offsets " + range + " run past the end of the data buffer (" +
                                         std::to_string(data_size) + " bytes); the file may be truncated");
    OPTUNE_CHECK(t.numel * esize == t.end - t.begin,
                 tw + ": shape " + shape_str(t.shape) + " with dtype " + dtype_name(t.dtype) + " needs " +
                     std::to_string(t.numel * esize) + " bytes but data_offsets " + range + " span " +
                     std::to_string(t.end - t.begin) + fix);
    h.tensors.push_back(std::move(t));
  }
  // The tensors must tile the buffer exactly, like the reference reader requires: sorted by offset, each begins
  // where the previous ended, and the last ends at the end of the file.
  std::vector<const TensorInfo*> order;
  for (const auto& t : h.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin < pos)
      throw Error(where + ": safetensors tensors " + json::quote(prev->name) + " and " + json::quote(t->name) +
                  " have overlapping data_offsets (" + std::to_string(t->begin) + " < " + std::to_string(pos) + ")" +
                  fix);
    if (t->begin > pos)
      throw Error(where + ": safetensors data has a gap of " + std::to_string(t->begin - pos) + " bytes before " +
                  json::quote(t->name) + " (at byte " + std::to_string(pos) + " of the data buffer)" + fix);
    pos = t->end;
    prev = t;
  }
  OPTUNE_CHECK(pos == data_size, where + ": safetensors data buffer has " + std::to_string(data_size - pos) +
                                     " bytes after the last tensor" + fix);
  return h;
}

// ---- POSIX helpers --------------------------------------------------------------------------------------------

static std::string errno_str() { return std::strerror(errno); }

// Reads exactly n bytes at offset, or throws (a short read means the file changed or is truncated).
static void pread_all(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    OPTUNE_CHECK(r >= 0, path + ": read failed at byte " + std::to_string(offset) + ": " + errno_str());
    OPTUNE_CHECK(r > 0, path + ": unexpected end of file at byte " + std::to_string(offset) +
                            " (was the file truncated or modified while reading?)");
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

static void write_all(int fd, const void* buf, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    OPTUNE_CHECK(w > 0, path + ": write failed: " + errno_str() + " (is the disk full or read-only?)");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

static bool host_little_endian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

// ---- Reader ---------------------------------------------------------------------------------------------------

Reader::Reader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  OPTUNE_CHECK(fd_ >= 0, path + ": cannot open safetensors file: " + errno_str());
  try {
    struct stat st;
    OPTUNE_CHECK(::fstat(fd_, &st) == 0, path + ": cannot stat: " + errno_str());
    OPTUNE_CHECK(S_ISREG(st.st_mode), path + ": not a regular file");
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    OPTUNE_CHECK(size >= 8, path + ": file is " + std::to_string(size) +
                                " bytes, too short for a safetensors file (needs an 8-byte header length)");
    unsigned char len_bytes[8];
    pread_all(fd_, len_bytes, 8, 0, path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | len_bytes[i];
    OPTUNE_CHECK(n <= kMaxHeaderBytes, path + ": safetensors header length " + std::to_string(n) +
                                           " exceeds the 100 MB limit (the file is corrupt or not safetensors)");
    OPTUNE_CHECK(n <= size - 8, path + ": safetensors header length " + std::to_string(n) +
                                    " runs past the end of the file (" + std::to_string(size) +
                                    " bytes); the file is truncated or not safetensors");
    std::string text(static_cast<size_t>(n), '\0');
    if (n) pread_all(fd_, &text[0], static_cast<size_t>(n), 8, path);
    header_ = parse_header(text, size - 8 - n, path);
    header_.data_start = 8 + n;
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

Reader::~Reader() {
  if (fd_ >= 0) ::close(fd_);
}

void Reader::read_f32(const TensorInfo& t, float* out) const {
  OPTUNE_CHECK(dtype_converts_to_f32(t.dtype),
               path_ + ": tensor " + json::quote(t.name) + " has dtype " + dtype_name(t.dtype) +
                   "; weights must be F32, F16, BF16 or F64");
  const size_t esize = dtype_size(t.dtype);
  // Chunked so a multi-GB tensor needs only its fp32 destination plus 1 MiB of staging.
  constexpr size_t kChunk = 1 << 20;
  std::vector<unsigned char> buf(std::min<uint64_t>(kChunk, t.end - t.begin));
  const bool le = host_little_endian();
  uint64_t done = 0;  // elements converted
  while (done < t.numel) {
    const size_t count = static_cast<size_t>(std::min<uint64_t>(t.numel - done, kChunk / esize));
    pread_all(fd_, buf.data(), count * esize, header_.data_start + t.begin + done * esize, path_);
    float* o = out + done;
    const unsigned char* b = buf.data();
    switch (t.dtype) {
      case DType::F32:
        if (le) {
          std::memcpy(o, b, count * 4);
        } else {
          for (size_t i = 0; i < count; i++) {
            const uint32_t u = uint32_t(b[4 * i]) | uint32_t(b[4 * i + 1]) << 8 | uint32_t(b[4 * i + 2]) << 16 |
                               uint32_t(b[4 * i + 3]) << 24;
            std::memcpy(o + i, &u, 4);
          }
        }
        break;
      case DType::F16:
        for (size_t i = 0; i < count; i++) o[i] = f16_to_f32(uint16_t(b[2 * i] | b[2 * i + 1] << 8));
        break;
      case DType::BF16:
        for (size_t i = 0; i < count; i++) o[i] = bf16_to_f32(uint16_t(b[2 * i] | b[2 * i + 1] << 8));
        break;
      case DType::F64:
        for (size_t i = 0; i < count; i++) {
          uint64_t u = 0;
          for (int k = 7; k >= 0; k--) u = (u << 8) | b[8 * i + k];
          double d;
          std::memcpy(&d, &u, 8);
          o[i] = static_cast<float>(d);
        }
        break;
      default:
        break;  // rejected above
    }
    done += count;
  }
}

std::vector<float> Reader::read_f32(const std::string& name) const {
  const TensorInfo* t = header_.find(name);
  OPTUNE_CHECK(t, path_ + ": no tensor named " + json::quote(name) + " in the file");
  std::vector<float> out(static_cast<size_t>(t->numel));
  read_f32(*t, out.data());
  return out;
}

Header read_header(const std::string& path) { return Reader(path).header(); }

std::map<std::string, Tensor> load(const std::string& path) {
  Reader r(path);
  std::map<std::string, Tensor> out;
  for (const auto& t : r.header().tensors) {
    Tensor& dst = out[t.name];
    dst.shape = t.shape;
    dst.data.resize(static_cast<size_t>(t.numel));
    r.read_f32(t, dst.data.data());
  }
  return out;
}

std::map<std::string, Tensor> load(const std::string& path, const std::vector<std::string>& names) {
  Reader r(path);
  std::map<std::string, Tensor> out;
  for (const auto& name : names) {
    const TensorInfo* t = r.header().find(name);
    OPTUNE_CHECK(t, path + ": no tensor named " + json::quote(name) + " in the file");
    Tensor& dst = out[name];
    dst.shape = t->shape;
    dst.data.resize(static_cast<size_t>(t->numel));
    r.read_f32(*t, dst.data.data());
  }
  return out;
}

// ---- writer ---------------------------------------------------------------------------------------------------

void save(const std::string& path, const std::vector<TensorRef>& tensors, const Metadata& metadata) {
  json::Value root = json::Value::new_object();
  if (!metadata.empty()) {
    json::Value m = json::Value::new_object();
    for (const auto& kv : metadata) {
      OPTUNE_CHECK(!m.get(kv.first), path + ": duplicate safetensors metadata key " + json::quote(kv.first));
      m.set(kv.first, json::Value::of_string(kv.second));
    }
    root.set("__metadata__", std::move(m));
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    OPTUNE_CHECK(t.name != "__metadata__", path + ": a tensor cannot be named \"__metadata__\"");
    OPTUNE_CHECK(!root.get(t.name), path + ": duplicate tensor name " + json::quote(t.name));
    uint64_t numel = 1;
    json::Value shape = json::Value::new_array();
    for (int64_t d : t.shape) {
      OPTUNE_CHECK(d >= 0, path + ": tensor " + json::quote(t.name) + " has a negative dimension in shape " +
                               shape_str(t.shape));
      OPTUNE_CHECK(d == 0 || numel <= (uint64_t(1) << 60) / static_cast<uint64_t>(d),
                   path + ": tensor " + json::quote(t.name) + " shape " + shape_str(t.shape) + " is too large");
      numel *= static_cast<uint64_t>(d);
      shape.push(json::Value::of_int(d));
    }
    OPTUNE_CHECK(numel == 0 || t.data || t.fill, path + ": tensor " + json::quote(t.name) + " has no data");
    json::Value info = json::Value::new_object();
    info.set("dtype", json::Value::of_string("F32"));
    info.set("shape", std::move(shape));
    json::Value offs = json::Value::new_array();
    offs.push(json::Value::of_int(static_cast<int64_t>(offset)));
    offs.push(json::Value::of_int(static_cast<int64_t>(offset + numel * 4)));
    info.set("data_offsets", std::move(offs));
    root.object.emplace_back(t.name, std::move(info));  // uniqueness checked above
    offset += numel * 4;
  }
  std::string header = json::dump(root);
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the reference writer pads
  OPTUNE_CHECK(header.size() <= kMaxHeaderBytes, path + ": safetensors header would exceed 100 MB (too many tensors)");

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  OPTUNE_CHECK(fd >= 0, path + ": cannot create file: " + errno_str());
  try {
    unsigned char len_bytes[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; i++) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
    write_all(fd, len_bytes, 8, path);
    write_all(fd, header.data(), header.size(), path);
    const bool le = host_little_endian();
    std::vector<unsigned char> buf;
    std::vector<float> filled;  // the values of a tensor given by `fill`
    for (const auto& t : tensors) {
      uint64_t numel = 1;
      for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
      const float* data = t.data;
      if (t.fill && numel) {
        filled.resize(static_cast<size_t>(numel));
        t.fill(filled.data());
        data = filled.data();
      }
      if (le) {
        if (numel) write_all(fd, data, static_cast<size_t>(numel) * 4, path);
        continue;
      }
      constexpr size_t kChunk = 1 << 18;  // floats per staging chunk
      buf.resize(kChunk * 4);
      for (uint64_t i0 = 0; i0 < numel; i0 += kChunk) {
        const size_t count = static_cast<size_t>(std::min<uint64_t>(kChunk, numel - i0));
        for (size_t i = 0; i < count; i++) {
          uint32_t u;
          std::memcpy(&u, data + i0 + i, 4);
          for (int k = 0; k < 4; k++) buf[4 * i + k] = static_cast<unsigned char>(u >> (8 * k));
        }
        write_all(fd, buf.data(), count * 4, path);
      }
    }
    OPTUNE_CHECK(::fsync(fd) == 0, path + ": fsync failed: " + errno_str());
  } catch (...) {
    ::close(fd);
    throw;
  }
  OPTUNE_CHECK(::close(fd) == 0, path + ": close failed: " + errno_str());
}

}  // namespace safetensors
}  // namespace optune
