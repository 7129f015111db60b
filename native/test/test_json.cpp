// The strict JSON reader/writer used for config.json, safetensors headers and shard indexes.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/json.h"
#include "testing.h"

using optune::json::parse;
using optune::json::Type;
using optune::json::Value;

static Value P(const std::string& s) { return parse(s, "test.json"); }

TEST(parses_scalars) {
  CHECK(P("null").is_null());
  CHECK(P(" true ").boolean == true);
  CHECK(P("false").is_bool() && !P("false").boolean);
  CHECK(P("0").is_int && P("0").integer == 0);
  CHECK(P("-17").integer == -17);
  CHECK(P("9223372036854775807").is_int && P("9223372036854775807").integer == INT64_MAX);
  CHECK(P("-9223372036854775808").is_int && P("-9223372036854775808").integer == INT64_MIN);
  const Value big = P("9223372036854775808");  // past int64: a double
  CHECK(big.is_number() && !big.is_int && big.number == 9223372036854775808.0);
  CHECK(P("1.5").number == 1.5 && !P("1.5").is_int);
  CHECK(P("-2.5e-3").number == -2.5e-3);
  CHECK(P("1E2").number == 100.0 && !P("1E2").is_int);
  CHECK(P("1e-05").number == 1e-05);
  CHECK(P("0.1").number == 0.1);
}

TEST(parses_strings_and_escapes) {
  CHECK(P("\"abc\"").str == "abc");
  CHECK(P("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"").str == "a\"b\\c/d\b\f\n\r\t");
  CHECK(P("\"\\u0041\\u00e9\\u20AC\"").str == "A\xC3\xA9\xE2\x82\xAC");
  CHECK(P("\"\\ud83d\\ude00\"").str == "\xF0\x9F\x98\x80");  // surrogate pair -> U+1F600
  CHECK(P("\"\xC3\xA9\xF0\x9F\x98\x80\"").str == "\xC3\xA9\xF0\x9F\x98\x80");  // raw UTF-8 passes through
  CHECK(P("\"\\u0000\"").str == std::string(1, '\0'));
}

TEST(parses_containers) {
  const Value v = P(" { \"a\" : [1, 2, {\"b\": null}], \"c\": {}, \"d\": [] } ");
  CHECK(v.is_object() && v.object.size() == 3);
  CHECK(v.object[0].first == "a" && v.object[2].first == "d");  // file order kept
  const Value* a = v.get("a");
  CHECK(a && a->is_array() && a->array.size() == 3);
  CHECK(a->array[2].get("b") && a->array[2].get("b")->is_null());
  CHECK(v.get("c")->is_object() && v.get("c")->object.empty());
  CHECK(v.get("missing") == nullptr);
}

TEST(rejects_malformed_with_offsets) {
  CHECK_THROWS(P(""), "byte 0: expected a value");
  CHECK_THROWS(P("   "), "found end of input");
  CHECK_THROWS(P("{\"a\":1,}"), "byte 7: expected a string key");
  CHECK_THROWS(P("[1,2,]"), "byte 5: expected a value");
  CHECK_THROWS(P("[1 2]"), "expected ',' or ']'");
  CHECK_THROWS(P("{\"a\" 1}"), "expected ':'");
  CHECK_THROWS(P("{\"a\":1 \"b\":2}"), "expected ',' or '}'");
  CHECK_THROWS(P("{1:2}"), "expected a string key");
  CHECK_THROWS(P("tru"), "expected 'true'");
  CHECK_THROWS(P("nul"), "expected 'null'");
  CHECK_THROWS(P("01"), "no leading zeros");
  CHECK_THROWS(P("-"), "expected a digit");
  CHECK_THROWS(P("1."), "a digit after '.'");
  CHECK_THROWS(P("1e"), "a digit in the exponent");
  CHECK_THROWS(P("+1"), "expected a value");
  CHECK_THROWS(P(".5"), "expected a value");
  CHECK_THROWS(P("NaN"), "expected a value");
  CHECK_THROWS(P("Infinity"), "expected a value");
  CHECK_THROWS(P("1e400"), "within the range of a double");
  CHECK_THROWS(P("1 2"), "byte 2: expected the end of input");
  CHECK_THROWS(P("{} x"), "expected the end of input");
  CHECK_THROWS(P("// c\n{}"), "expected a value");
  CHECK_THROWS(P("'a'"), "expected a value");
  CHECK_THROWS(P("\xEF\xBB\xBF{}"), "byte order mark");
}

TEST(rejects_bad_strings) {
  CHECK_THROWS(P("\"abc"), "'\"' to close the string");
  CHECK_THROWS(P("\"a\nb\""), "escaped control character");
  CHECK_THROWS(P("\"\\x\""), "one of");
  CHECK_THROWS(P("\"\\u12\""), "4 hex digits");
  CHECK_THROWS(P("\"\\u12G4\""), "4 hex digits");
  CHECK_THROWS(P("\"\\ud83d\""), "low surrogate");
  CHECK_THROWS(P("\"\\ud83d\\u0041\""), "low surrogate");
  CHECK_THROWS(P("\"\\ude00\""), "high surrogate");
  CHECK_THROWS(P("\"\xC3\""), "valid UTF-8");            // truncated sequence
  CHECK_THROWS(P("\"\xC0\xAF\""), "valid UTF-8");        // overlong '/'
  CHECK_THROWS(P("\"\xED\xA0\x80\""), "valid UTF-8");    // encoded surrogate
  CHECK_THROWS(P("\"\xF4\x90\x80\x80\""), "valid UTF-8");  // above U+10FFFF
  CHECK_THROWS(P("\"\xFF\""), "valid UTF-8");
}

TEST(rejects_duplicate_keys) {
  CHECK_THROWS(P("{\"a\":1,\"a\":2}"), "byte 7: duplicate object key \"a\"");
  // The sorted path for big objects.
  std::string s = "{";
  for (int i = 0; i < 100; i++) s += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
  CHECK(P(s + "\"z\":0}").object.size() == 101);
  CHECK_THROWS(P(s + "\"k42\":0}"), "duplicate object key \"k42\"");
  // Same key in different objects is fine.
  CHECK(P("{\"a\":{\"a\":1},\"b\":{\"a\":2}}").object.size() == 2);
}

TEST(limits_depth) {
  const int ok_depth = optune::json::kMaxDepth;
  CHECK(P(std::string(ok_depth, '[') + std::string(ok_depth, ']')).is_array());
  CHECK_THROWS(P(std::string(ok_depth + 1, '[') + std::string(ok_depth + 1, ']')), "nesting deeper than");
  // Unbalanced deep input fails on depth first, without deep recursion.
  CHECK_THROWS(P(std::string(100000, '[')), "nesting deeper than");
  std::string objs;
  for (int i = 0; i < 1000; i++) objs += "{\"a\":";
  CHECK_THROWS(P(objs), "nesting deeper than");
}

TEST(limits_value_count) {
  // The array itself counts as one value.
  std::string many = "[0";
  for (size_t i = 2; i < optune::json::kMaxValues; i++) many += ",0";
  CHECK(P(many + "]").array.size() == optune::json::kMaxValues - 1);
  CHECK_THROWS(P(many + ",0]"), "more than 2097152 values");
}

TEST(error_names_source) {
  CHECK_THROWS(parse("{", "/x/config.json"), "/x/config.json: invalid JSON at byte 1");
  CHECK_THROWS(parse("\x01", "f"), "found byte 0x01");
}

TEST(truncations_never_crash) {
  // Every prefix of a valid document is either valid or a clean error.
  const std::string doc =
      "{\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\"], \"b\": {\"c\": {}}, \"d\": \"\xC3\xA9\"}";
  CHECK(P(doc).object.size() == 3);
  int errors = 0;
  for (size_t n = 0; n < doc.size(); n++) {
    try {
      P(doc.substr(0, n));
    } catch (const optune::Error&) {
      errors++;
    }
  }
  CHECK(errors == static_cast<int>(doc.size()));  // no proper prefix of this object is a whole document
}

TEST(writer_round_trips) {
  Value o = Value::new_object();
  o.set("s", Value::of_string("q\"\\\n\t\x01 \xC3\xA9"));
  o.set("i", Value::of_int(-42));
  o.set("big", Value::of_int(INT64_MAX));
  o.set("d", Value::of_double(0.1));
  o.set("f", Value::of_float(1e-5f));
  o.set("theta", Value::of_float(10000.0f));
  o.set("n", Value::null());
  o.set("b", Value::of_bool(true));
  Value a = Value::new_array();
  a.push(Value::of_int(1));
  a.push(Value::new_object());
  o.set("a", std::move(a));
  o.set("i", Value::of_int(7));  // replaces
  for (int indent : {-1, 0, 2}) {
    const std::string text = optune::json::dump(o, indent);
    const Value back = P(text);
    CHECK(back.object.size() == 9);
    CHECK(back.get("s")->str == o.get("s")->str);
    CHECK(back.get("i")->integer == 7);
    CHECK(back.get("big")->integer == INT64_MAX);
    CHECK(back.get("d")->number == 0.1);
    CHECK(static_cast<float>(back.get("f")->number) == 1e-5f);
    CHECK(back.get("theta")->number == 10000.0 && !back.get("theta")->is_int);
    CHECK(back.get("n")->is_null() && back.get("b")->boolean);
    CHECK(back.get("a")->array.size() == 2);
  }
  const std::string compact = optune::json::dump(o);
  CHECK_MSG(compact.find("\"f\":1e-05") != std::string::npos, compact);  // shortest float text
  CHECK_MSG(compact.find("\"theta\":10000.0") != std::string::npos, compact);
  CHECK_MSG(compact.find("\\u0001") != std::string::npos, compact);
  CHECK(optune::json::dump(P("{\"a\":[1,2]}"), 2) == "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
  CHECK_THROWS(optune::json::quote("\xFF"), "not valid UTF-8");
  CHECK_THROWS(Value::of_double(1.0 / 0.0), "non-finite");
  CHECK(optune::json::format_double(0.02) == "0.02");
  CHECK(optune::json::format_double(1e-06) == "1e-06");
}

TEST(format_double_round_trips) {
  const double vals[] = {0.0, -0.0, 1.0, -1.5, 0.1, 1.0 / 3.0, 1e-300, 5e-324, 1.7976931348623157e308, 2.5e-5,
                         123456789012345678.0, 1e15, 1e16, 0.0001, 0.00001, 6.02214076e23, -273.15};
  for (double v : vals) {
    const std::string s = optune::json::format_double(v);
    const Value back = P(s);
    CHECK_MSG(back.number == v, s);
  }
  CHECK(optune::json::format_double(1e16) == "1e+16");
  CHECK(optune::json::format_double(0.0001) == "0.0001");
}

TEST_MAIN()
