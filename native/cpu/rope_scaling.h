// RoPE scaling of the frequencies theta^(-2i/head_dim), as transformers' rope_type: none ("default"), "linear"
// (every frequency / factor) or "llama3" (Llama 3.1+: frequencies whose wavelength exceeds original_max /
// low_freq_factor are divided by factor, those below original_max / high_freq_factor kept, the ones between
// blended). A plain description: ModelConfig holds one, cpu/rope.cpp applies it.
#pragma once

namespace optune::cpu {

struct RopeScaling {
  enum Type { NONE, LINEAR, LLAMA3 } type = NONE;
  float factor = 1.0f, low_freq_factor = 1.0f, high_freq_factor = 4.0f;
  int original_max_positions = 0;
  bool operator==(const RopeScaling& o) const {
    return type == o.type && factor == o.factor && low_freq_factor == o.low_freq_factor &&
           high_freq_factor == o.high_freq_factor && original_max_positions == o.original_max_positions;
  }
};

}  // namespace optune::cpu
