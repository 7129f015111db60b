// Drawing one token from a row of logits: greedy, temperature, top-k, top-p (the CPU sampler's definitions, which
// the CUDA sampler's kernels follow: cuda/sample_kernels.cu).
#pragma once
#include <cstdint>
#include <vector>

#include "engine.h"

namespace optune {

struct Pick {
  int32_t token;
  float logp;  // under the unmodified model distribution (temperature 1, no filtering)
};

// pick_token's buffers, kept by each decode thread across steps.
struct PickScratch {
  std::vector<float> e;           // exp terms of the logits
  std::vector<float> block_sums;  // their sums per 64-weight block
  std::vector<int32_t> idx;       // candidates in filter order (top-k / top-p)
  std::vector<double> prob;       // their weights
  std::vector<uint16_t> bucket;   // top-p: each token's distance-below-the-maximum bucket
  std::vector<double> bucket_mass;
};

// The ids a draw may pick from a vocabulary of `vocab`: [0, drawable_vocab) (SampleRequest::vocab_limit).
inline int drawable_vocab(const SampleRequest& r, int vocab) {
  return r.vocab_limit > 0 && r.vocab_limit < vocab ? r.vocab_limit : vocab;
}

// Draws one token from logits z[0, vocab) with the uniform u in [0, 1), among the first V = drawable_vocab ids.
// Greedy (temperature 0) is the first maximum. Otherwise the weights exp((z - max) / temperature) are cut to the
// top_k largest logits, then to the smallest prefix (by logit descending, index ascending) whose mass reaches top_p
// of theirs, and u inverts the cumulative distribution in that order (in index order when nothing is filtered). The
// log-prob is over all `vocab` logits. A pure function of (z, settings, u). Returns token -1 when a logit is not
// finite.
Pick pick_token(const float* z, int vocab, const SampleRequest& r, double u, PickScratch& ps);

}  // namespace optune
