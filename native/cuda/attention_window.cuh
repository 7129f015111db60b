// The sliding-window rule of the attention kernels (attention.cu, attention_mma.cu): query i sees key j when j <= i
// and, with a window (> 0), j > i - window. Besides masking inside a tile, the kernels start and stop their loops at
// the tiles these bounds give, so the tiles a window hides from a whole block are neither loaded nor multiplied
// (they added exact zeros before).
#pragma once
#include <cuda_runtime.h>

namespace optune::cuda {

__device__ inline bool visible(int i, int j, int window) { return j <= i && (window <= 0 || j > i - window); }

// The first key query i sees.
__device__ inline int first_visible_key(int i, int window) { return window > 0 ? max(0, i - window + 1) : 0; }

// One past the last query (of a sequence of L) that sees key j.
__device__ inline int visible_query_end(int j, int window, int L) { return window > 0 ? min(L, j + window) : L; }

}  // namespace optune::cuda
