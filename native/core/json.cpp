#include "json.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <locale>
#include <sstream>

#include "error.h"

namespace optune {
namespace json {

const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "a boolean";
    case Type::Number: return "a number";
    case Type::String: return "a string";
    case Type::Array: return "an array";
    case Type::Object: return "an object";
  }
  return "?";
}

// ---- Value ----------------------------------------------------------------------------------------------------

const Value* Value::get(const std::string& key) const {
  if (type != Type::Object) return nullptr;
  for (const auto& kv : object)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

Value Value::of_bool(bool b) {
  Value v;
  v.type = Type::Bool;
  v.boolean = b;
  return v;
}

Value Value::of_int(int64_t i) {
  Value v;
  v.type = Type::Number;
  v.is_int = true;
  v.integer = i;
  v.number = static_cast<double>(i);
  return v;
}

Value Value::of_double(double d) {
  OPTUNE_CHECK(std::isfinite(d), "json: cannot write a non-finite number (" + std::to_string(d) + ")");
  Value v;
  v.type = Type::Number;
  v.number = d;
  return v;
}

// Locale-independent text <-> double: the N-API host may have set a locale whose decimal point is ','.
static bool read_double(const std::string& s, double& out) {
  std::istringstream in(s);
  in.imbue(std::locale::classic());
  double d = 0;
  in >> d;
  if (in.fail() || in.peek() != std::char_traits<char>::eof()) return false;
  out = d;
  return std::isfinite(d);
}

static std::string write_double(double d, int precision) {
  std::ostringstream out;
  out.imbue(std::locale::classic());
  out.precision(precision);
  out << d;
  return out.str();
}

static std::string write_double_as(double d, int decimals, bool scientific) {
  std::ostringstream out;
  out.imbue(std::locale::classic());
  out << (scientific ? std::scientific : std::fixed);
  out.precision(decimals);
  out << d;
  return out.str();
}

Value Value::of_float(float f) {
  OPTUNE_CHECK(std::isfinite(f), "json: cannot write a non-finite number (" + std::to_string(f) + ")");
  for (int p = 1; p <= 9; p++) {
    double d = 0;
    if (read_double(write_double(f, p), d) && static_cast<float>(d) == f) return of_double(d);
  }
  return of_double(f);  // unreachable: 9 significant digits always round-trip a float
}

Value Value::of_string(std::string s) {
  Value v;
  v.type = Type::String;
  v.str = std::move(s);
  return v;
}

Value Value::new_array() {
  Value v;
  v.type = Type::Array;
  return v;
}

Value Value::new_object() {
  Value v;
  v.type = Type::Object;
  return v;
}

Value& Value::push(Value v) {
  OPTUNE_CHECK(type == Type::Array, std::string("json: push() on ") + type_name(type) + ", not an array");
  array.push_back(std::move(v));
  return array.back();
}

Value& Value::set(const std::string& key, Value v) {
  OPTUNE_CHECK(type == Type::Object, std::string("json: set() on ") + type_name(type) + ", not an object");
  for (auto& kv : object)
    if (kv.first == key) return kv.second = std::move(v);
  object.emplace_back(key, std::move(v));
  return object.back().second;
}

std::string format_double(double d) {
  OPTUNE_CHECK(std::isfinite(d), "json: cannot write a non-finite number");
  // Fewest significant digits that read back exactly, then Python's repr layout: plain decimals for exponents in
  // [-4, 16), scientific outside (10000.0 stays "10000", 1e-05 stays "1e-05").
  std::string sci;
  int digits = 17;
  for (int p = 1; p <= 17; p++) {
    sci = write_double_as(d, p - 1, true);
    double back = 0;
    if (read_double(sci, back) && back == d) {
      digits = p;
      break;
    }
  }
  const size_t epos = sci.find('e');
  const int exp10 = epos == std::string::npos ? 0 : std::atoi(sci.c_str() + epos + 1);
  if (exp10 >= -4 && exp10 < 16) return write_double_as(d, std::max(0, digits - 1 - exp10), false);
  return sci;
}

// ---- UTF-8 ----------------------------------------------------------------------------------------------------

// Length of the valid UTF-8 sequence starting at p (at most n bytes available), or 0 when invalid.
// Rejects overlong forms, surrogates (U+D800..DFFF) and code points above U+10FFFF.
static size_t utf8_seq_len(const unsigned char* p, size_t n) {
  const unsigned char c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t i) { return i < n && (p[i] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
    if (c == 0xED && p[1] > 0x9F) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;  // overlong
    if (c == 0xF4 && p[1] > 0x8F) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

static void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ---- parser ---------------------------------------------------------------------------------------------------

namespace {

struct Parser {
  const unsigned char* s;
  size_t n;
  size_t pos = 0;
  const std::string& where;

  [[noreturn]] void fail(const std::string& expected) const {
    std::string found;
    if (pos >= n) {
      found = "end of input";
    } else if (s[pos] >= 0x20 && s[pos] < 0x7F) {
      found = std::string("'") + static_cast<char>(s[pos]) + "'";
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", s[pos]);
      found = std::string("byte ") + hex;
    }
    throw Error(where + ": invalid JSON at byte " + std::to_string(pos) + ": expected " + expected + ", found " +
                found);
  }

  void skip_ws() {
    while (pos < n && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == '\n' || s[pos] == '\r')) pos++;
  }

  bool eat(char c) {
    if (pos < n && s[pos] == static_cast<unsigned char>(c)) {
      pos++;
      return true;
    }
    return false;
  }

  void literal(const char* word, const char* expected) {
    const size_t len = std::strlen(word);
    for (size_t i = 0; i < len; i++) {
      if (pos >= n || s[pos] != static_cast<unsigned char>(word[i])) fail(expected);
      pos++;
    }
  }

  size_t values = 0;

  Value value(int depth) {
    if (++values > kMaxValues)
      throw Error(where + ": invalid JSON at byte " + std::to_string(pos) + ": more than " +
                  std::to_string(kMaxValues) + " values in one document");
    skip_ws();
    if (pos >= n) fail("a value");
    switch (s[pos]) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': return Value::of_string(string());
      case 't': literal("true", "'true'"); return Value::of_bool(true);
      case 'f': literal("false", "'false'"); return Value::of_bool(false);
      case 'n': literal("null", "'null'"); return Value();
      default:
        if (s[pos] == '-' || (s[pos] >= '0' && s[pos] <= '9')) return number();
        fail("a value (object, array, string, number, true, false or null)");
    }
  }

  void check_depth(int depth) {
    if (depth > kMaxDepth)
      throw Error(where + ": invalid JSON at byte " + std::to_string(pos) + ": nesting deeper than " +
                  std::to_string(kMaxDepth) + " levels");
  }

  Value object(int depth) {
    check_depth(depth);
    pos++;  // '{'
    Value v = Value::new_object();
    std::vector<size_t> key_pos_of;  // byte offset of each key, for the duplicate-key error
    skip_ws();
    if (eat('}')) return v;
    for (;;) {
      skip_ws();
      if (pos >= n || s[pos] != '"') fail("a string key");
      const size_t key_pos = pos;
      std::string key = string();
      skip_ws();
      if (!eat(':')) fail("':' after an object key");
      Value member = value(depth);
      v.object.emplace_back(std::move(key), std::move(member));
      key_pos_of.push_back(key_pos);
      skip_ws();
      if (eat(',')) continue;
      if (eat('}')) {
        check_duplicates(v, key_pos_of);
        return v;
      }
      fail("',' or '}' after an object member");
    }
  }

  // Duplicate keys make "which value wins" ambiguous between readers, so they are an error. Small objects are
  // compared pairwise; big ones (a safetensors header has one key per tensor) are sorted so hostile input stays
  // O(n log n).
  void check_duplicates(const Value& v, const std::vector<size_t>& key_pos_of) {
    const size_t m = v.object.size();
    size_t dup = m;  // index of the later of two equal keys
    if (m <= 32) {
      for (size_t j = 1; j < m && dup == m; j++)
        for (size_t i = 0; i < j; i++)
          if (v.object[i].first == v.object[j].first) {
            dup = j;
            break;
          }
    } else {
      std::vector<size_t> idx(m);
      for (size_t i = 0; i < m; i++) idx[i] = i;
      std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
        const int c = v.object[a].first.compare(v.object[b].first);
        return c != 0 ? c < 0 : a < b;
      });
      for (size_t i = 1; i < m; i++)
        if (v.object[idx[i]].first == v.object[idx[i - 1]].first) dup = std::min(dup, idx[i]);
    }
    if (dup < m)
      throw Error(where + ": invalid JSON at byte " + std::to_string(key_pos_of[dup]) + ": duplicate object key " +
                  quote(v.object[dup].first));
  }

  Value array(int depth) {
    check_depth(depth);
    pos++;  // '['
    Value v = Value::new_array();
    skip_ws();
    if (eat(']')) return v;
    for (;;) {
      v.array.push_back(value(depth));
      skip_ws();
      if (eat(',')) continue;
      if (eat(']')) return v;
      fail("',' or ']' after an array element");
    }
  }

  uint32_t hex4() {
    uint32_t cp = 0;
    for (int i = 0; i < 4; i++) {
      if (pos >= n) fail("4 hex digits after \\u");
      const unsigned char c = s[pos];
      uint32_t d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else fail("4 hex digits after \\u");
      cp = cp * 16 + d;
      pos++;
    }
    return cp;
  }

  std::string string() {
    pos++;  // opening quote
    std::string out;
    for (;;) {
      if (pos >= n) fail("'\"' to close the string");
      const unsigned char c = s[pos];
      if (c == '"') {
        pos++;
        return out;
      }
      if (c < 0x20) fail("an escaped control character (\\n, \\t, \\u00XX) inside the string");
      if (c == '\\') {
        pos++;
        if (pos >= n) fail("an escape character after '\\'");
        const unsigned char e = s[pos++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            uint32_t cp = hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
              pos -= 6;
              fail("a high surrogate before a low surrogate (\\uDC00-\\uDFFF cannot come first)");
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (!(pos + 1 < n && s[pos] == '\\' && s[pos + 1] == 'u'))
                fail("a \\uDC00-\\uDFFF low surrogate after a high surrogate");
              pos += 2;
              const uint32_t lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) {
                pos -= 6;
                fail("a \\uDC00-\\uDFFF low surrogate after a high surrogate");
              }
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(out, cp);
            break;
          }
          default:
            pos--;
            fail("one of \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX");
        }
        continue;
      }
      const size_t len = utf8_seq_len(s + pos, n - pos);
      if (len == 0) fail("valid UTF-8 inside the string");
      out.append(reinterpret_cast<const char*>(s + pos), len);
      pos += len;
    }
  }

  bool digit() const { return pos < n && s[pos] >= '0' && s[pos] <= '9'; }

  Value number() {
    const size_t start = pos;
    bool integral = true;
    eat('-');
    if (eat('0')) {
      if (digit()) fail("'.', 'e' or the end of the number after a leading 0 (no leading zeros)");
    } else {
      if (!digit()) fail("a digit");
      while (digit()) pos++;
    }
    if (eat('.')) {
      integral = false;
      if (!digit()) fail("a digit after '.'");
      while (digit()) pos++;
    }
    if (pos < n && (s[pos] == 'e' || s[pos] == 'E')) {
      integral = false;
      pos++;
      if (!eat('+')) eat('-');
      if (!digit()) fail("a digit in the exponent");
      while (digit()) pos++;
    }
    const std::string text(reinterpret_cast<const char*>(s + start), pos - start);
    if (integral) {
      // Exact int64 when it fits: safetensors offsets and shapes must not go through a double.
      const bool neg = text[0] == '-';
      uint64_t mag = 0;
      bool overflow = false;
      for (size_t i = neg ? 1 : 0; i < text.size(); i++) {
        const uint64_t d = static_cast<uint64_t>(text[i] - '0');
        if (mag > (UINT64_MAX - d) / 10) {
          overflow = true;
          break;
        }
        mag = mag * 10 + d;
      }
      const uint64_t limit = neg ? (uint64_t(1) << 63) : (uint64_t(1) << 63) - 1;
      if (!overflow && mag <= limit) {
        // -2^63 cannot be negated in int64; build it from the unsigned magnitude.
        const int64_t i = neg ? static_cast<int64_t>(0 - mag) : static_cast<int64_t>(mag);
        return Value::of_int(i);
      }
    }
    double d = 0;
    if (!read_double(text, d)) {
      pos = start;
      fail("a number within the range of a double");
    }
    return Value::of_double(d);
  }
};

}  // namespace

Value parse(const char* data, size_t size, const std::string& where) {
  OPTUNE_CHECK(size <= kMaxInputBytes, where + ": JSON input is " + std::to_string(size) + " bytes; the limit is " +
                                           std::to_string(kMaxInputBytes) + " bytes");
  Parser p{reinterpret_cast<const unsigned char*>(data), size, 0, where, 0};
  // A UTF-8 byte order mark is not JSON; say so rather than "expected a value, found byte 0xEF".
  if (size >= 3 && std::memcmp(data, "\xEF\xBB\xBF", 3) == 0) p.fail("a value (remove the UTF-8 byte order mark)");
  Value v = p.value(0);
  p.skip_ws();
  if (p.pos != size) p.fail("the end of input after the top-level value");
  return v;
}

Value parse(const std::string& text, const std::string& where) { return parse(text.data(), text.size(), where); }

// ---- writer ---------------------------------------------------------------------------------------------------

std::string quote(const std::string& s) {
  std::string out = "\"";
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c >= 0x80) {
      const size_t len = utf8_seq_len(p + i, n - i);
      OPTUNE_CHECK(len != 0, "json: cannot write a string that is not valid UTF-8 (byte " + std::to_string(i) +
                                 " of a " + std::to_string(n) + "-byte string)");
      out.append(s, i, len);
      i += len;
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
    i++;
  }
  out += '"';
  return out;
}

static void dump_to(std::string& out, const Value& v, int indent, int level) {
  auto newline = [&](int lvl) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<size_t>(indent) * lvl, ' ');
  };
  switch (v.type) {
    case Type::Null: out += "null"; break;
    case Type::Bool: out += v.boolean ? "true" : "false"; break;
    case Type::Number:
      if (v.is_int) {
        out += std::to_string(v.integer);
      } else {
        std::string t = format_double(v.number);
        // Keep floats floats for Python readers: 10000.0, not 10000.
        if (t.find_first_of(".eE") == std::string::npos) t += ".0";
        out += t;
      }
      break;
    case Type::String: out += quote(v.str); break;
    case Type::Array:
      if (v.array.empty()) {
        out += "[]";
        break;
      }
      out += '[';
      for (size_t i = 0; i < v.array.size(); i++) {
        if (i) out += ',';
        newline(level + 1);
        dump_to(out, v.array[i], indent, level + 1);
      }
      newline(level);
      out += ']';
      break;
    case Type::Object:
      if (v.object.empty()) {
        out += "{}";
        break;
      }
      out += '{';
      for (size_t i = 0; i < v.object.size(); i++) {
        if (i) out += ',';
        newline(level + 1);
        out += quote(v.object[i].first);
        out += indent < 0 ? ":" : ": ";
        dump_to(out, v.object[i].second, indent, level + 1);
      }
      newline(level);
      out += '}';
      break;
  }
}

std::string dump(const Value& v, int indent) {
  std::string out;
  dump_to(out, v, indent, 0);
  return out;
}

}  // namespace json
}  // namespace optune
