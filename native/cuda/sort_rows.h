// Ordering a decode step's logits rows for filtered (top-k / top-p) draws on the device (sample_kernels.cu). Host
// declarations only, so that the tests can check them directly.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace optune::cuda::sampler {

// Scratch for sorting `max_rows` logits rows at a time (cub radix sort of (row, logit) keys).
struct SortScratch {
  uint64_t* keys_in = nullptr;
  uint64_t* keys_out = nullptr;
  int32_t* vals_in = nullptr;
  void* temp = nullptr;
  size_t temp_bytes = 0;
  int max_rows = 0;
};
// Rows of logits per sort and the bytes of temp storage cub needs for them.
int sort_chunk_rows(int n_rows, int vocab);
size_t sort_temp_bytes(int chunk_rows, int vocab);

// sorted[r * vocab + i] = the i-th token of row r in the order (logits[r] desc, index asc), for r < n_rows (logits
// rows ld apart; a cub radix sort of (row, logit) keys with sc).
void sort_rows(int32_t* sorted, const float* logits, int ld, int n_rows, int vocab, const SortScratch& sc,
               cudaStream_t st);

}  // namespace optune::cuda::sampler
