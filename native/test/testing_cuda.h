// main() of the CUDA tests: without a CUDA device every case is reported SKIPPED (neither passed nor failed, as
// the runner counts them), otherwise the device is named and the cases run.
#pragma once
#include <cstdio>

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
