// A ragged batch: sequences packed back to back with no padding. Sequence i occupies tokens[offsets[i] ..
// offsets[i+1]); its first prompt_lens[i] tokens are the prompt, the rest the response. Attention is causal within
// a sequence and never crosses sequences. Losses and log-probs count response tokens only: the log-prob of the
// token at position p is read from the hidden state at p - 1, so a prompt has at least one token.
#pragma once
#include <cstdint>
#include <vector>

#include "config.h"

namespace optune {

struct Batch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> offsets;      // n_seq + 1 entries, offsets[0] == 0, non-decreasing, back() == tokens.size()
  std::vector<int32_t> prompt_lens;  // n_seq entries, 1 <= prompt_lens[i] <= length of sequence i

  int n_seq() const { return static_cast<int>(prompt_lens.size()); }
  int n_tokens() const { return static_cast<int>(tokens.size()); }
  int seq_len(int i) const { return offsets[i + 1] - offsets[i]; }
  int response_len(int i) const { return seq_len(i) - prompt_lens[i]; }
  int n_response_tokens() const;
};

// Throws optune::Error naming the sequence / token that is wrong: bad offsets, a token id outside the vocabulary,
// a sequence longer than max_positions, a prompt length outside [1, length].
void validate_batch(const Batch& b, const ModelConfig& cfg);

}  // namespace optune
