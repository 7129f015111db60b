// Counter-based random numbers: every draw is a pure function of (seed, stream, counter), so results do not depend
// on thread count, batch composition or call order. The mixer is SplitMix64's finalizer applied to a combination
// of the three keys (each mixed separately so nearby keys give unrelated outputs).
#pragma once
#include <cmath>
#include <cstdint>

// The integer mixers are also compiled for the GPU (cuda/sample_kernels.cu draws the same uniforms as the CPU
// sampler); in plain C++ builds OPTUNE_HD is empty and nothing changes.
#if defined(__CUDACC__)
#define OPTUNE_HD __host__ __device__
#else
#define OPTUNE_HD
#endif

namespace optune {

OPTUNE_HD inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

OPTUNE_HD inline uint64_t rng_u64(uint64_t seed, uint64_t stream, uint64_t counter) {
  return mix64(mix64(mix64(seed) ^ stream) ^ counter);
}

// Uniform in [0, 1) with 53 random bits.
OPTUNE_HD inline double rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
  return static_cast<double>(rng_u64(seed, stream, counter) >> 11) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box-Muller from two counter draws.
inline double rng_normal(uint64_t seed, uint64_t stream, uint64_t counter) {
  double u1 = rng_uniform(seed, stream, 2 * counter);
  const double u2 = rng_uniform(seed, stream, 2 * counter + 1);
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace optune
