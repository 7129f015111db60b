#include "rope_sets.h"

#include "cpu/ops.h"

namespace optune::cuda {

RopeSets rope_sets(const ModelConfig& c) {
  RopeSets s;
  s.half = c.head_dim / 2;
  s.layer_set.assign(c.n_layer, -1);
  std::vector<int> first_layer;  // the first layer of each set: its (theta, scaling) is the set's key
  for (int l = 0; l < c.n_layer; l++) {
    if (!c.layer_rotates(l)) continue;
    for (size_t k = 0; k < first_layer.size() && s.layer_set[l] < 0; k++)
      if (c.layer_rope_theta(first_layer[k]) == c.layer_rope_theta(l) &&
          c.layer_rope_scaling(first_layer[k]) == c.layer_rope_scaling(l))
        s.layer_set[l] = static_cast<int>(k);
    if (s.layer_set[l] >= 0) continue;
    s.layer_set[l] = static_cast<int>(first_layer.size());
    first_layer.push_back(l);
    const std::vector<double> f = cpu::rope_inv_freq(c.head_dim, c.layer_rope_theta(l), c.layer_rope_scaling(l));
    s.freqs.insert(s.freqs.end(), f.begin(), f.end());
  }
  return s;
}

}  // namespace optune::cuda
