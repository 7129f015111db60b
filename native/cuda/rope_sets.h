// Which rotary frequencies each layer of a model uses on the device. The frequencies themselves are the CPU's
// (cpu::rope_inv_freq: theta, and "linear" / "llama3" scaling, in double), so both backends turn by the same angles;
// the kernels (rope.cu, the sampler's rope_table) only multiply them by the position. One set per distinct
// (theta, scaling) among the layers; a layer that does not rotate (GPT-2's, SmolLM3's NoPE layers) has none.
// Plain C++: callers need no CUDA headers.
#pragma once
#include <vector>

#include "core/config.h"

namespace optune::cuda {

struct RopeSets {
  int half = 0;                 // head_dim / 2: frequencies per set
  std::vector<double> freqs;    // [n_sets() * half]
  std::vector<int> layer_set;   // [n_layer]: the layer's set, -1 when it does not rotate
  int n_sets() const { return half > 0 ? static_cast<int>(freqs.size()) / half : 0; }
};

RopeSets rope_sets(const ModelConfig& c);

}  // namespace optune::cuda
