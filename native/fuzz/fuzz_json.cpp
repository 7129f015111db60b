// libFuzzer target: json::parse on arbitrary bytes. Bad input must end in optune::Error, never a crash, hang or
// unbounded allocation. A document that parses must survive a write/read round trip unchanged: dump(parse(dump(v)))
// == dump(v), compact and pretty, so the writer never emits text the reader rejects or reads differently.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/json.h"

using namespace optune;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  json::Value v;
  try {
    v = json::parse(reinterpret_cast<const char*>(data), size, "fuzz.json");
  } catch (const Error&) {
    return 0;  // rejected with a message: the expected outcome for most inputs
  }
  for (int indent : {-1, 2}) {
    const std::string text = json::dump(v, indent);
    const std::string again = json::dump(json::parse(text, "round trip"), indent);
    if (again != text) {
      std::fprintf(stderr, "json round trip changed the document:\n%s\n%s\n", text.c_str(), again.c_str());
      std::abort();
    }
  }
  return 0;
}
