// Ordering a decode step's logits rows for top-k draws, and top-p draws without an order, on the device
// (sample_kernels.cu). Host declarations only, so that the tests can check them directly.
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

// Top-k up to this many candidates is selected instead of sorted (one candidate per thread of a block).
constexpr int kTopKSelectMax = 1024;
// Whether sort_rows selects (0 < top_k <= kTopKSelectMax, top_k < vocab): then it needs no SortScratch.
bool top_k_by_selection(int top_k, int vocab);
// sorted[r * vocab + i] = the i-th token of row r in the order (logits[r] desc, index asc), for r < n_rows (logits
// rows ld apart): for i < top_k when top_k_by_selection(top_k, vocab) (a radix select of the k-th largest logit,
// then a block sort of the k candidates; needs ld % 4 == 0 and 16-byte aligned logits), else for the whole
// vocabulary (cub radix sort with sc; always with top_k 0).
void sort_rows(int32_t* sorted, const float* logits, int ld, int n_rows, int vocab, int top_k, const SortScratch& sc,
               cudaStream_t st);

// The top-p draws the sampler makes without sorting (top-p alone, OPTUNE_CUDA_FILTER=select): draws[r * n_u + i] =
// the token of row r (logits rows ld apart, ld % 4 == 0, 16-byte aligned) that uniform u[i] in [0, 1) draws from the
// nucleus at top_p of the distribution exp((z - max) / temperature), in (logit desc, index asc) order (temperature
// > 0). u and draws on the device.
void nucleus_draws(int32_t* draws, const float* logits, int ld, int n_rows, int vocab, float temperature,
                   float top_p, const double* u, int n_u, cudaStream_t st);

}  // namespace optune::cuda::sampler
