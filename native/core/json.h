// A small, strict JSON reader and writer for checkpoint files (config.json, safetensors headers, shard indexes).
// Strict RFC 8259: no comments, no trailing commas, no NaN/Infinity, valid UTF-8 only, no duplicate object keys.
// Inputs come from disk and may be hostile, so nesting depth and input size are bounded and every error names the
// byte offset and what was expected. Numbers keep an exact int64 when the literal is an integer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace optune {
namespace json {

constexpr int kMaxDepth = 128;                     // arrays/objects nested deeper than this are rejected
constexpr size_t kMaxInputBytes = 256u << 20;      // 256 MiB; safetensors caps its header at 100 MB
// Values per document. A Value is ~100 bytes, so "[0,0,0,...]" could otherwise turn 100 MB of text into GBs;
// 2M values is ~300k safetensors tensors, far more than any real header or shard index.
constexpr size_t kMaxValues = size_t(1) << 21;

enum class Type { Null, Bool, Number, String, Array, Object };
const char* type_name(Type t);  // "null", "a boolean", "a number", ...

struct Value {
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;      // every number
  bool is_int = false;      // the literal was an integer (no '.', no exponent) that fits in int64
  int64_t integer = 0;      // exact value when is_int
  std::string str;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // in file order; keys are unique

  bool is_null() const { return type == Type::Null; }
  bool is_bool() const { return type == Type::Bool; }
  bool is_number() const { return type == Type::Number; }
  bool is_string() const { return type == Type::String; }
  bool is_array() const { return type == Type::Array; }
  bool is_object() const { return type == Type::Object; }

  // Object member by key, or nullptr when absent (or when this is not an object).
  const Value* get(const std::string& key) const;

  // Builders for writing.
  static Value null() { return Value(); }
  static Value of_bool(bool b);
  static Value of_int(int64_t i);
  static Value of_double(double d);
  // The double nearest the shortest decimal that reads back as f, so 1e-5f is written as 1e-05, not 9.99999975e-06.
  static Value of_float(float f);
  static Value of_string(std::string s);
  static Value new_array();
  static Value new_object();
  Value& push(Value v);                          // append to an array
  Value& set(const std::string& key, Value v);   // add or replace an object member
};

// Parses a whole document (surrounding whitespace allowed). `where` names the source (a file path) for errors.
// Throws optune::Error like "<where>: invalid JSON at byte 17: expected ',' or '}' after an object member".
Value parse(const std::string& text, const std::string& where);
Value parse(const char* data, size_t size, const std::string& where);

// Serializes a value. indent < 0: compact, one line. indent >= 0: pretty, that many spaces per level.
std::string dump(const Value& v, int indent = -1);

// A JSON string literal with quotes and escapes, e.g. quote("a\"b") == "\"a\\\"b\"".
std::string quote(const std::string& s);

// Shortest decimal text that reads back as exactly d (locale independent). d must be finite.
std::string format_double(double d);

}  // namespace json
}  // namespace optune
