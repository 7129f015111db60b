#include "batch.h"

#include "error.h"

namespace optune {

int Batch::n_response_tokens() const {
  int n = 0;
  for (int i = 0; i < n_seq(); i++) n += response_len(i);
  return n;
}

void validate_batch(const Batch& b, const ModelConfig& cfg) {
  const int n = b.n_seq();
  OPTUNE_CHECK(n > 0, "batch: no sequences (prompt_lens is empty)");
  OPTUNE_CHECK(static_cast<int>(b.offsets.size()) == n + 1,
               "batch: offsets must have n_seq + 1 = " + std::to_string(n + 1) + " entries, got " +
                   std::to_string(b.offsets.size()));
  OPTUNE_CHECK(b.offsets[0] == 0, "batch: offsets[0] must be 0, got " + std::to_string(b.offsets[0]));
  OPTUNE_CHECK(b.offsets[n] == b.n_tokens(), "batch: offsets[n_seq] (" + std::to_string(b.offsets[n]) +
                                                 ") must equal the number of tokens (" +
                                                 std::to_string(b.n_tokens()) + ")");
  for (int i = 0; i < n; i++) {
    const int len = b.offsets[i + 1] - b.offsets[i];
    OPTUNE_CHECK(len >= 1, "batch: sequence " + std::to_string(i) + " is empty or offsets decrease there");
    OPTUNE_CHECK(len <= cfg.max_positions, "batch: sequence " + std::to_string(i) + " has " + std::to_string(len) +
                                               " tokens, more than the model's max_positions " +
                                               std::to_string(cfg.max_positions));
    OPTUNE_CHECK(b.prompt_lens[i] >= 1 && b.prompt_lens[i] <= len,
                 "batch: prompt_lens[" + std::to_string(i) + "] = " + std::to_string(b.prompt_lens[i]) +
                     " must be in [1, " + std::to_string(len) + "] (a prompt needs at least one token)");
  }
  for (int t = 0; t < b.n_tokens(); t++) {
    const int id = b.tokens[t];
    OPTUNE_CHECK(id >= 0 && id < cfg.vocab_size, "batch: token id " + std::to_string(id) + " at position " +
                                                     std::to_string(t) + " is outside the vocabulary [0, " +
                                                     std::to_string(cfg.vocab_size) + ")");
  }
}

}  // namespace optune
