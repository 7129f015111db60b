// exp and tanh written as plain arithmetic so `#pragma omp simd` loops vectorize them (libm's expf/tanhf are scalar
// calls). exp: range reduction x = n*ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, and 2^n built in the
// exponent bits. Relative error below 3e-7 over the float range; inputs below -87.3 give 0, above 88.7 give +inf.
#pragma once
#include <algorithm>
#include <cstdint>

namespace optune::cpu {

#pragma omp declare simd
inline float vexp(float x) {
  // NaN must not reach the float -> int conversion below (undefined behaviour; UBSan aborts): compute on 0 and
  // return the NaN itself, so NaN still propagates as before.
  const float in = x;
  const bool nan = x != x;
  x = nan ? 0.0f : x;
  x = x < -87.3f ? -87.3f : x;
  const bool over = x > 88.7f;
  x = over ? 88.7f : x;
  // round to nearest by the 1.5 * 2^23 trick (no floor: it blocks vectorization without -ffast-math)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // r = x - n*ln2 in two steps (Cody-Waite) to keep r exact
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  const float y = p * scale;
  return nan ? in : over ? __builtin_inff() : (x <= -87.3f ? 0.0f : y);
}

// tanh(x) = 1 - 2 / (exp(2x) + 1), evaluated on |x| so it never overflows to a wrong sign.
#pragma omp declare simd
inline float vtanh(float x) {
  const float ax = x < 0 ? -x : x;
  const float t = 1.0f - 2.0f / (vexp(2.0f * ax) + 1.0f);
  return x < 0 ? -t : t;
}

// The maximum (or minimum) of x[0, n) kept in 16 lanes, combined at the end: GCC leaves an `omp simd reduction(max
// : ...)` loop scalar, a chain of dependent max instructions (~4 cycles per element). With `nonfinite`, also sums
// x * 0 there: NaN when some element is infinite or NaN.
template <bool kMax>
inline float extreme_of(const float* x, int n, float* nonfinite) {
  constexpr int kLanes = 16;
  auto pick = [](float a, float b) { return kMax ? std::max(a, b) : std::min(a, b); };
  const float start = kMax ? -__builtin_inff() : __builtin_inff();
  float ex[kLanes], bad[kLanes];
  for (int l = 0; l < kLanes; l++) ex[l] = start, bad[l] = 0.0f;
  int j0 = 0;
  if (nonfinite) {
    for (; j0 + kLanes <= n; j0 += kLanes)
      for (int l = 0; l < kLanes; l++) {
        ex[l] = pick(ex[l], x[j0 + l]);
        bad[l] += x[j0 + l] * 0.0f;
      }
  } else {
    for (; j0 + kLanes <= n; j0 += kLanes)
      for (int l = 0; l < kLanes; l++) ex[l] = pick(ex[l], x[j0 + l]);
  }
  for (int j = j0; j < n; j++) {
    ex[0] = pick(ex[0], x[j]);
    bad[0] += x[j] * 0.0f;
  }
  float m = start, b = 0.0f;
  for (int l = 0; l < kLanes; l++) m = pick(m, ex[l]), b += bad[l];
  if (nonfinite) *nonfinite = b;
  return m;
}
inline float max_of(const float* x, int n, float* nonfinite = nullptr) { return extreme_of<true>(x, n, nonfinite); }
inline float min_of(const float* x, int n) { return extreme_of<false>(x, n, nullptr); }

}  // namespace optune::cpu
