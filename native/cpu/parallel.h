// parallel_for: a loop split over the OpenMP team (static schedule), or run by the calling thread alone when it is
// already inside a parallel region. The sampler's decode groups call the kernels from their own threads; an
// `omp parallel` there would open a nested team of one, which libgomp allocates and frees every time (~0.5 us,
// some 30 times per decode step).
#pragma once
#include <omp.h>

#include <cstdint>

namespace optune::cpu {

template <class Body>
inline void parallel_for(int64_t n, const Body& body) {
  if (omp_in_parallel()) {
    for (int64_t i = 0; i < n; i++) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) body(i);
}

// Elementwise loops in blocks of 4096 elements (each block a simd loop): body(begin, end).
template <class Body>
inline void parallel_blocks(int64_t n, const Body& body) {
  constexpr int64_t kBlock = 4096;
  parallel_for((n + kBlock - 1) / kBlock, [&](int64_t b) { body(b * kBlock, b * kBlock + kBlock < n ? b * kBlock + kBlock : n); });
}

}  // namespace optune::cpu
