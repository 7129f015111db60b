// main() of the CUDA tests: without a CUDA device every case is reported SKIPPED (neither passed nor failed, as
// the runner counts them), otherwise the device is named and the cases run.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "cuda/memory.h"
#include "testing.h"

#define CUDA_TEST_MAIN()                                                                                  \
  int main() {                                                                                            \
    if (optune::cuda::device_count() == 0) {                                                              \
      for (auto& c : testing::registry()) std::printf("SKIPPED: no CUDA device %s\n", c.name);            \
      std::printf("SKIPPED: %zu cases (no CUDA device)\n", testing::registry().size());                   \
      std::printf("0 cases, 0 failed\n");                                                                 \
      return 0;                                                                                           \
    }                                                                                                     \
    std::printf("device: %s\n", optune::cuda::device_description(0).c_str());                             \
    return testing::run_all();                                                                            \
  }

namespace testing {

// Environment variables as (name, value) pairs: the CUDA knobs, which the engine reads at each call.
using Env = std::vector<std::pair<const char*, const char*>>;

// Sets `vars` for its lifetime and puts back what was there at its end (the old value, or unset), also when a call
// in between throws (a knob left set would leak into the cases after it).
class ScopedEnv {
 public:
  explicit ScopedEnv(const Env& vars) {
    for (const auto& [name, value] : vars) {
      const char* old = std::getenv(name);
      saved_.push_back({name, old != nullptr, old ? old : ""});
      setenv(name, value, 1);
    }
  }
  ScopedEnv(const char* name, const char* value) : ScopedEnv(Env{{name, value}}) {}
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {  // last first: a name given twice ends as before
      if (it->was_set)
        setenv(it->name.c_str(), it->value.c_str(), 1);
      else
        unsetenv(it->name.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  struct Saved {
    std::string name;
    bool was_set;
    std::string value;
  };
  std::vector<Saved> saved_;
};

// GPU values against the CPU's: |gpu - cpu| <= rtol * (|cpu| + max|cpu|) for every element (relative to the element
// and to the tensor's scale); fails once per tensor, naming the worst element. !(<=) also catches NaN.
inline void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want,
                         double rtol) {
  if (got.size() != want.size()) {
    fail(__FILE__, __LINE__, what + ": size " + std::to_string(got.size()) + " vs " + std::to_string(want.size()));
    return;
  }
  double scale = 0.0;
  for (float w : want) scale = std::max(scale, std::fabs(static_cast<double>(w)));
  size_t worst = 0;
  double worst_excess = 0.0;
  bool bad = false;
  for (size_t i = 0; i < got.size(); i++) {
    const double err = std::fabs(static_cast<double>(got[i]) - want[i]);
    const double tol = rtol * (std::fabs(static_cast<double>(want[i])) + scale);
    if (!(err <= tol) && (!bad || err - tol > worst_excess)) bad = true, worst = i, worst_excess = err - tol;
  }
  if (bad)
    fail(__FILE__, __LINE__, what + "[" + std::to_string(worst) + "]: gpu " + std::to_string(got[worst]) + " vs cpu " +
                                 std::to_string(want[worst]) + " (rtol " + std::to_string(rtol) + ", scale " +
                                 std::to_string(scale) + ")");
}

}  // namespace testing
