// A minimal test harness for the native tests: each test_*.cpp is one ctest executable made of TEST cases.
// A failing CHECK records the failure and continues with the next case; main() prints one line per case and
// returns non-zero when any case failed.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace testing {

struct Case {
  const char* name;
  std::function<void()> fn;
};
inline std::vector<Case>& registry() {
  static std::vector<Case> r;
  return r;
}
inline int& failures() {
  static int f = 0;
  return f;
}
struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline void fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "  %s:%d: %s\n", file, line, what.c_str());
  failures()++;
}

// OPTUNE_TEST_FILTER: comma-separated parts of case names; a case runs when its name contains one of the plain
// parts (or there are none) and none of the parts written with a leading '-'. Cases left out are not counted.
inline bool selected(const std::string& name) {
  const char* filter = std::getenv("OPTUNE_TEST_FILTER");
  if (filter == nullptr) return true;
  bool any_plain = false, matched = false;
  std::string list = filter;
  for (size_t at = 0; at <= list.size();) {
    const size_t end = std::min(list.find(',', at), list.size());
    std::string part = list.substr(at, end - at);
    at = end + 1;
    if (part.empty()) continue;
    const bool exclude = part[0] == '-';
    if (exclude) part.erase(0, 1);
    if (exclude && name.find(part) != std::string::npos) return false;
    if (!exclude) any_plain = true, matched = matched || name.find(part) != std::string::npos;
  }
  return !any_plain || matched;
}

inline int run_all() {
  int failed_cases = 0;
  size_t ran = 0;
  for (auto& c : registry()) {
    if (!selected(c.name)) continue;
    ran++;
    const int before = failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "  unexpected exception: %s\n", e.what());
      failures()++;
    }
    const bool ok = failures() == before;
    if (!ok) failed_cases++;
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", c.name);
  }
  std::printf("%zu cases, %d failed\n", ran, failed_cases);
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace testing

#define TEST_CONCAT2(a, b) a##b
#define TEST_CONCAT(a, b) TEST_CONCAT2(a, b)
#define TEST(name)                                                                           \
  static void name();                                                                        \
  static testing::Register TEST_CONCAT(reg_, name)(#name, name);                             \
  static void name()

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) testing::fail(__FILE__, __LINE__, "CHECK(" #cond ")");      \
  } while (0)

#define CHECK_MSG(cond, msg)                                                                   \
  do {                                                                                         \
    if (!(cond)) testing::fail(__FILE__, __LINE__, std::string("CHECK(" #cond "): ") + (msg)); \
  } while (0)

// |a - b| <= atol + rtol * |b|
#define CHECK_CLOSE(a, b, rtol, atol)                                                                        \
  do {                                                                                                       \
    const double a_ = (a), b_ = (b);                                                                         \
    if (!(std::fabs(a_ - b_) <= (atol) + (rtol)*std::fabs(b_)))                                              \
      testing::fail(__FILE__, __LINE__,                                                                      \
                    std::string(#a " = ") + std::to_string(a_) + " vs " #b " = " + std::to_string(b_));      \
  } while (0)

// Expects the statement to throw optune::Error (or any std::exception) whose message contains `needle`.
#define CHECK_THROWS(stmt, needle)                                                                        \
  do {                                                                                                    \
    bool thrown_ = false;                                                                                 \
    try {                                                                                                 \
      stmt;                                                                                               \
    } catch (const std::exception& e_) {                                                                  \
      thrown_ = true;                                                                                     \
      if (std::string(e_.what()).find(needle) == std::string::npos)                                       \
        testing::fail(__FILE__, __LINE__, std::string("message '") + e_.what() + "' lacks '" + (needle) + "'"); \
    }                                                                                                     \
    if (!thrown_) testing::fail(__FILE__, __LINE__, "expected an exception from: " #stmt);                \
  } while (0)

#define TEST_MAIN() \
  int main() { return testing::run_all(); }
