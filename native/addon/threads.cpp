#include "threads.h"

#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace optune_addon {

static std::atomic<int> g_threads{0};  // 0: not set, keep OpenMP's default (OMP_NUM_THREADS or all cores)

void set_threads(int n) {
  g_threads.store(n);
  apply_thread_setting();
}

int current_threads() {
  const int n = g_threads.load();
  if (n > 0) return n;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void apply_thread_setting() {
#ifdef _OPENMP
  const int n = g_threads.load();
  if (n > 0 && omp_get_max_threads() != n) omp_set_num_threads(n);
#endif
}

}  // namespace optune_addon
