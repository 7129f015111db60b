// parallel_for: a loop split over the OpenMP team (static schedule), or run by the calling thread alone when it is
// already inside a parallel region. The sampler's decode groups call the kernels from their own threads; an
// `omp parallel` there would open a nested team of one, which libgomp allocates and frees every time (~0.5 us,
// some 30 times per decode step).
#pragma once
#include <omp.h>

#include <algorithm>
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

// Columns [0, cols) in blocks of 64 per thread: body(j0, j1). For sums over rows into per-column totals (weight
// gradients of norms, biases, embeddings): each column's rows still add up in order, whatever the thread count.
template <class Body>
inline void parallel_columns(int cols, const Body& body) {
  constexpr int kCols = 64;
  parallel_for((cols + kCols - 1) / kCols, [&](int64_t cb) {
    const int j0 = static_cast<int>(cb) * kCols;
    body(j0, j0 + kCols < cols ? j0 + kCols : cols);
  });
}

// x[0, n) = 0, split like parallel_blocks (a serial fill of the backward's buffers left the other thread idle).
inline void parallel_zero(float* x, int64_t n) {
  parallel_blocks(n, [&](int64_t i0, int64_t i1) { std::fill(x + i0, x + i1, 0.0f); });
}

}  // namespace optune::cpu
