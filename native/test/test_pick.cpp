// pick_token against a reference that sorts the whole vocabulary: for peaked, flat, tied, one-hot and all-but-equal
// logits, small and GPT-2-sized vocabularies, several temperatures, top-p values and top-k, the picked token for a
// grid of uniforms equals the reference's (the two sum the same weights in different orders, so a draw within
// rounding distance of a boundary could differ: none did when this was written, and at most 0.1% may), and every
// pick lies in the reference's nucleus.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/pick.h"
#include "core/rng.h"
#include "cpu/vecmath.h"
#include "testing.h"

using namespace optune;

namespace {

// The definition, by brute force: every candidate sorted by (logit desc, index asc), weights exp((z - max) / T) as
// the picker computes them, the top-k cut, the smallest prefix reaching top_p of its mass (the nucleus: the tokens
// that may be picked), the inverse CDF in that order.
struct Reference {
  std::vector<int32_t> nucleus;
  std::vector<double> w;
  double total = 0;

  Reference(const std::vector<float>& z, const SampleRequest& r) {
    const int V = static_cast<int>(z.size());
    const float mx = *std::max_element(z.begin(), z.end());
    std::vector<int32_t> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
    const float inv_t = static_cast<float>(1.0 / r.temperature);
    int n = r.top_k > 0 && r.top_k < V ? r.top_k : V;
    w.resize(n);
    for (int i = 0; i < n; i++)
      total += (w[i] = r.temperature == 1.0f ? cpu::vexp(z[idx[i]] - mx) : cpu::vexp((z[idx[i]] - mx) * inv_t));
    if (r.top_p < 1.0f) {
      double acc = 0;
      for (int i = 0; i < n; i++) {
        acc += w[i];
        if (acc >= r.top_p * total) {
          n = i + 1;
          break;
        }
      }
      total = acc;
    }
    nucleus.assign(idx.begin(), idx.begin() + n);
    std::sort(nucleus.begin(), nucleus.end(), [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
  }

  int32_t pick(double u) const {
    double acc = 0;
    for (size_t i = 0; i < nucleus.size(); i++) {
      acc += w[i];
      if (acc > u * total) return nucleus[i];
    }
    return nucleus.back();
  }
  bool contains(int32_t t, const std::vector<float>& z) const {
    return z[t] > z[nucleus.back()] || (z[t] == z[nucleus.back()] && t <= nucleus.back());
  }
};

std::vector<float> logits(const std::string& kind, int V, uint64_t seed) {
  std::vector<float> z(V);
  for (int j = 0; j < V; j++) {
    const float g = static_cast<float>(rng_normal(seed, 1, j));
    if (kind == "peaked") z[j] = 3.0f * g;
    if (kind == "flat") z[j] = 0.01f * g;
    if (kind == "tied") z[j] = std::round(2.0f * g) / 2.0f;  // a handful of distinct values, ties everywhere
    if (kind == "one-hot") z[j] = j == 7 ? 20.0f : g;
    if (kind == "denormal") z[j] = j == 7 ? 1e-40f : 0.0f;  // a range too small to bucket
  }
  return z;
}

}  // namespace

TEST(pick_token_equals_the_sorted_reference) {
  struct Filter {
    int top_k;
    float top_p;
  };
  const Filter filters[] = {{0, 0.37f}, {0, 0.9013f}, {0, 0.9999f}, {5, 1.0f}, {50, 0.8f}};
  const int n_u = 499;
  long cases = 0, differ = 0;
  PickScratch ps;
  for (const std::string kind : {"peaked", "flat", "tied", "one-hot", "denormal"})
    for (int V : {1000, 50257}) {
      if (kind == "denormal" && V > 1000) continue;  // one bucket: every draw sorts the vocabulary (slow, not wrong)
      const std::vector<float> z = logits(kind, V, 11 + V);
      for (float temp : {1.0f, 0.7f, 1.6f})
        for (const Filter f : filters) {
          SampleRequest r;
          r.temperature = temp;
          r.top_k = f.top_k;
          r.top_p = f.top_p;
          const Reference ref(z, r);
          for (int i = 0; i <= n_u; i++) {
            const double u = i == n_u ? 0.0 : (i + 0.5) / n_u;
            const Pick p = pick_token(z.data(), V, r, u, ps);
            cases++;
            differ += p.token != ref.pick(u);
            const std::string what = kind + " V=" + std::to_string(V) + " T=" + std::to_string(temp) +
                                     " top_k=" + std::to_string(f.top_k) + " top_p=" + std::to_string(f.top_p);
            CHECK_MSG(ref.contains(p.token, z), what + ": token " + std::to_string(p.token) + " is outside the nucleus");
          }
        }
    }
  std::printf("  %ld of %ld picks differ from the sorted reference\n", differ, cases);
  CHECK_MSG(differ * 1000 <= cases, std::to_string(differ) + " of " + std::to_string(cases) + " picks differ");
}

TEST(top_p_nucleus_ends_inside_a_tie_in_index_order) {
  // 10 tokens of equal logit 0 and the rest far below: top_p 0.35 keeps the first 4 of the tie by index (4 of 10
  // weights reach 0.35 of the mass), and u spreads evenly over them
  const int V = 300;
  std::vector<float> z(V, -40.0f);
  const int tied[10] = {3, 17, 40, 41, 99, 150, 151, 200, 250, 299};
  for (int j : tied) z[j] = 0.0f;
  SampleRequest r;
  r.top_p = 0.35f;
  PickScratch ps;
  std::vector<int> count(V, 0);
  for (int i = 0; i < 400; i++) count[pick_token(z.data(), V, r, (i + 0.5) / 400, ps).token]++;
  for (int k = 0; k < 10; k++)
    CHECK_MSG(count[tied[k]] == (k < 4 ? 100 : 0),
              "token " + std::to_string(tied[k]) + " picked " + std::to_string(count[tied[k]]) + " times of 400");
}

TEST(non_finite_logits_give_no_token) {
  PickScratch ps;
  SampleRequest r;
  r.top_p = 0.9f;
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> z(100, 0.5f);
    z[42] = bad;
    CHECK(pick_token(z.data(), 100, r, 0.5, ps).token == -1);
  }
}

TEST_MAIN()
