#include "core/transform/cuts.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace sq {
namespace {

constexpr int kShrinkSteps = 10;     // factors 1 - kShrinkStep * k, k = 0..kShrinkSteps
constexpr float kShrinkStep = 0.05f;
constexpr int kQuantileGrid = 32;

float ShrinkFactor(int k) { return 1.0f - kShrinkStep * static_cast<float>(k); }

// The values the search looks at, sorted: all of them for small units, else every k-th
// value in index order plus the unit's min and max.
std::vector<float> SortedSample(absl::Span<const float> values, int64_t sample_size) {
  const int64_t n = static_cast<int64_t>(values.size());
  std::vector<float> s;
  if (n <= sample_size) {
    s.assign(values.begin(), values.end());
  } else {
    const int64_t stride = (n + sample_size - 1) / sample_size;
    s.reserve(static_cast<size_t>(n / stride + 3));
    float mn = values[0], mx = values[0];
    for (int64_t k = 0; k < n; ++k) {  // branch-free: vectorises
      mn = values[k] < mn ? values[k] : mn;
      mx = values[k] > mx ? values[k] : mx;
    }
    for (int64_t k = 0; k < n; k += stride) s.push_back(values[k]);
    s.push_back(mn);
    s.push_back(mx);
  }
  for (float& v : s) v += 0.0f;  // -0 -> +0: the order never depends on the sign of zero
  SortSample(s);
  return s;
}

// Cut search on sorted values s: a cut at k puts s[0, k) below it.
class CutSearch {
 public:
  // reference_grid: scan the grid pair by pair (what the vectorised grid must equal).
  CutSearch(const std::vector<float>& s, const QuantSpec& spec, bool reference_grid = false)
      : s_(s), n_(static_cast<int64_t>(s.size())), spec_(spec), reference_grid_(reference_grid),
        inv_levels_(1.0 / static_cast<double>(spec.qmax() - spec.qmin())),
        inv_qmax_(1.0 / static_cast<double>(spec.qmax())),
        lower_memo_(static_cast<size_t>(n_ + 1), -1.0),
        upper_memo_(static_cast<size_t>(n_ + 1), -1.0) {}

  bool Valid(int64_t k) const { return k > 0 && k < n_ && s_[k - 1] < s_[k]; }
  // The first valid cut at or after k (n_ if none).
  int64_t SnapUp(int64_t k) const {
    k = std::max<int64_t>(k, 1);
    while (k < n_ && !Valid(k)) ++k;
    return k;
  }

  // Greedy moves of one cut at a time by `step` (to the next valid position), halving
  // the step down to 1.
  template <typename ErrorFn>
  void LocalSearch(int64_t* i, int64_t* j, int64_t first_step, ErrorFn&& error) const {
    double best = error(*i, *j);
    for (int64_t step = std::max<int64_t>(first_step, 1);; step = step / 2) {
      step = std::max<int64_t>(step, 1);
      for (bool improved = true; improved;) {
        improved = false;
        for (int which = 0; which < 2; ++which) {
          for (int dir : {-1, 1}) {
            int64_t ci = *i, cj = *j;
            int64_t& c = which == 0 ? ci : cj;
            c += dir * step;
            if (dir > 0) {
              c = SnapUp(c);
            } else {
              while (c > 0 && !Valid(c)) --c;
            }
            if (!Valid(ci) || !Valid(cj) || ci >= cj) continue;
            const double e = error(ci, cj);
            if (e < best) {
              best = e;
              *i = ci;
              *j = cj;
              improved = true;
            }
          }
        }
      }
      if (step == 1) break;
    }
  }

  // Estimated squared error of the three branches for cuts (i, j), 0 < i < j < n.
  double Error(int64_t i, int64_t j) const {
    return Branch(0, i, true) + Branch(i, j, false) + Branch(j, n_, true);
  }

  // Best (i, j): grid + tails, then local search. False when no valid pair exists.
  bool Search(int64_t* bi, int64_t* bj) const {
    // Outer clusters range from a single outlier to a third of the values: every size up
    // to kTailPositions (at most an eighth of the values), then a 1/32 quantile grid.
    std::vector<int64_t> lower, upper;
    const int64_t tails = std::min<int64_t>(kTailPositions, std::max<int64_t>(n_ / 8, 1));
    for (int64_t k = 1; k <= std::min<int64_t>(tails, n_ - 1); ++k) {
      lower.push_back(k);
      upper.push_back(n_ - k);
    }
    for (int a = 1; a < kQuantileGrid; ++a) {
      lower.push_back(n_ * a / kQuantileGrid);
      upper.push_back(n_ * a / kQuantileGrid);
    }
    for (auto* v : {&lower, &upper}) {
      for (int64_t& k : *v) k = SnapUp(k);
      std::sort(v->begin(), v->end());
      v->erase(std::unique(v->begin(), v->end()), v->end());
      while (!v->empty() && v->back() >= n_) v->pop_back();
    }
    // The outer branches' errors depend on one cut each: computed once per candidate.
    std::vector<double> lower_err(lower.size()), upper_err(upper.size());
    for (size_t a = 0; a < lower.size(); ++a) lower_err[a] = Branch(0, lower[a], true);
    for (size_t b = 0; b < upper.size(); ++b) upper_err[b] = Branch(upper[b], n_, true);
    // Every (lower, upper) pair with the middle branch estimated: for one lower cut the
    // pairs with an upper cut above it are a suffix of `upper` (sorted), and their errors
    // are computed into `row` by a branch-free loop the compiler vectorises (the same
    // double operations as BranchUncached's estimate), then scanned in order: the first
    // minimum wins, as in the pair-by-pair reference scan above.
    std::vector<double> hi(upper.size()), count_hi(upper.size()), row(upper.size());
    for (size_t b = 0; b < upper.size(); ++b) {
      hi[b] = static_cast<double>(std::max(s_[upper[b] - 1], 0.0f));
      count_hi[b] = static_cast<double>(upper[b]);
    }
    double best = std::numeric_limits<double>::infinity();
    int64_t i = -1, j = -1;
    for (size_t a = 0; a < lower.size() && reference_grid_; ++a) {
      const int64_t ci = lower[a];
      for (size_t b = 0; b < upper.size(); ++b) {
        const int64_t cj = upper[b];
        if (cj <= ci) continue;
        const double e = lower_err[a] + Branch(ci, cj, false) + upper_err[b];
        if (e < best) {
          best = e;
          i = ci;
          j = cj;
        }
      }
    }
    for (size_t a = 0; a < lower.size() && !reference_grid_; ++a) {
      const int64_t ci = lower[a];
      const size_t first = static_cast<size_t>(std::upper_bound(upper.begin(), upper.end(), ci) - upper.begin());
      const double lo = static_cast<double>(std::min(s_[ci], 0.0f)), le = lower_err[a];
      const double cid = static_cast<double>(ci);
      const size_t nb = upper.size();
      if (spec_.symmetric) {
        for (size_t b = first; b < nb; ++b) {
          const double step = std::max(-lo, hi[b]) * inv_qmax_;
          row[b] = le + (count_hi[b] - cid) * step * step / 12.0 + upper_err[b];
        }
      } else {
        for (size_t b = first; b < nb; ++b) {
          const double step = (hi[b] - lo) * inv_levels_;
          row[b] = le + (count_hi[b] - cid) * step * step / 12.0 + upper_err[b];
        }
      }
      for (size_t b = first; b < nb; ++b) {
        if (row[b] < best) {
          best = row[b];
          i = ci;
          j = upper[b];
        }
      }
    }
    if (i < 0) return false;
    LocalSearch(&i, &j, std::max<int64_t>(1, n_ / 64), [&](int64_t a, int64_t b) { return Error(a, b); });
    *bi = i;
    *bj = j;
    return true;
  }

 private:
  // Error of quantizing s[a, b) as one branch (range widened to 0). An outer branch of at
  // most kExactBranchValues members is measured exactly; everything else is estimated.
  double Branch(int64_t a, int64_t b, bool outer) const {
    const int64_t count = b - a;
    if (count <= 0) return 0;
    if (outer && (a == 0 || b == n_)) {
      // An outer branch depends on one cut: the grid and the local search ask for the
      // same ones many times, so each is computed once (the same value every time).
      double& memo = a == 0 ? lower_memo_[b] : upper_memo_[a];
      if (memo < 0) memo = BranchUncached(a, b, outer);
      return memo;
    }
    return BranchUncached(a, b, outer);
  }
  double BranchUncached(int64_t a, int64_t b, bool outer) const {
    const int64_t count = b - a;
    const float lo = std::min(s_[a], 0.0f), hi = std::max(s_[b - 1], 0.0f);
    if (outer && count <= kExactBranchValues) {
      return BranchSquaredError(absl::MakeConstSpan(s_.data() + a, count), lo, hi, spec_);
    }
    // The step ChooseQuantParams gives: symmetric codes span [-m, m] around 0.
    const double step = spec_.symmetric
                            ? std::max(-static_cast<double>(lo), static_cast<double>(hi)) * inv_qmax_
                            : (static_cast<double>(hi) - lo) * inv_levels_;
    return static_cast<double>(count) * step * step / 12.0;
  }

  const std::vector<float>& s_;
  const int64_t n_;
  const QuantSpec spec_;
  const bool reference_grid_;
  const double inv_levels_, inv_qmax_;
  mutable std::vector<double> lower_memo_, upper_memo_;  // -1: not computed yet
};

}  // namespace

namespace {
QuantAwareSplit ChooseQuantAwareSplitFromSample(const std::vector<float>& s, int64_t unit_size,
                                                const QuantSpec& spec, bool reference_grid);
}  // namespace

double BranchSquaredError(absl::Span<const float> members, float lo, float hi,
                          const QuantSpec& spec) {
  const QuantParams p = ChooseQuantParams(std::min(lo, 0.0f), std::max(hi, 0.0f), spec);
  const float inv = 1.0f / p.scale;
  const float zp = static_cast<float>(p.zero_point);
  const float qmin = static_cast<float>(spec.qmin()), qmax = static_cast<float>(spec.qmax());
  // Round half to even by the 1.5 * 2^23 trick (exact below 2^22; larger magnitudes
  // saturate either way), so the loop vectorises without SSE4.1's roundps.
  constexpr float kMagic = 12582912.0f;
  const float scale = p.scale;
  double total = 0;
  // Float partial sums over chunks of 1024 bound the accumulation error; the inner loop
  // is branch-free so it vectorises.
  for (size_t begin = 0; begin < members.size(); begin += 1024) {
    const size_t end = std::min(members.size(), begin + 1024);
    float acc = 0;
    size_t k = begin;
#if defined(__SSE2__)
    {
      const __m128 vinv = _mm_set1_ps(inv), vmagic = _mm_set1_ps(kMagic), vzp = _mm_set1_ps(zp);
      const __m128 vqmin = _mm_set1_ps(qmin), vqmax = _mm_set1_ps(qmax);
      const __m128 vscale = _mm_set1_ps(scale);
      __m128 vacc = _mm_setzero_ps();
      for (; k + 4 <= end; k += 4) {
        const __m128 x = _mm_loadu_ps(members.data() + k);
        __m128 q = _mm_add_ps(_mm_sub_ps(_mm_add_ps(_mm_mul_ps(x, vinv), vmagic), vmagic), vzp);
        q = _mm_min_ps(_mm_max_ps(q, vqmin), vqmax);
        const __m128 d = _mm_sub_ps(x, _mm_mul_ps(_mm_sub_ps(q, vzp), vscale));
        vacc = _mm_add_ps(vacc, _mm_mul_ps(d, d));
      }
      alignas(16) float lanes[4];
      _mm_store_ps(lanes, vacc);
      acc = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    }
#endif
    for (; k < end; ++k) {
      const float x = members[k];
      float q = (x * inv + kMagic) - kMagic + zp;
      q = std::min(std::max(q, qmin), qmax);
      const float d = x - (q - zp) * scale;
      acc += d * d;
    }
    total += acc;
  }
  return total;
}

std::array<float, 2> SearchBranchShrink(absl::Span<const float> members, const QuantSpec& spec) {
  if (members.empty()) return {1.0f, 1.0f};
  float mn = 0.0f, mx = 0.0f;
  for (float v : members) {
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  // Each (a, b) measured once: the second round revisits the first's pairs.
  std::array<double, (kShrinkSteps + 1) * (kShrinkSteps + 1)> memo;
  memo.fill(-1.0);
  auto error = [&](int a, int b) {
    double& m = memo[a * (kShrinkSteps + 1) + b];
    if (m < 0) m = BranchSquaredError(members, mn * ShrinkFactor(a), mx * ShrinkFactor(b), spec);
    return m;
  };
  int a = 0, b = 0;
  double best = error(0, 0);
  // Coordinate search; a side whose end is 0 has nothing to shrink.
  for (int round = 0; round < 2; ++round) {
    bool moved = false;
    for (int side = 0; side < 2; ++side) {
      if ((side == 0 && mn == 0.0f) || (side == 1 && mx == 0.0f)) continue;
      for (int k = 0; k <= kShrinkSteps; ++k) {
        const int ca = side == 0 ? k : a, cb = side == 1 ? k : b;
        if (ca == a && cb == b) continue;
        const double e = error(ca, cb);
        if (e < best) {
          best = e;
          a = ca;
          b = cb;
          moved = true;
        }
      }
    }
    if (!moved) break;
  }
  return {ShrinkFactor(a), ShrinkFactor(b)};
}

void SortSample(std::vector<float>& v) {
  const size_t n = v.size();
  if (n < 64) {
    std::sort(v.begin(), v.end());
    return;
  }
  // Keys ordered as the floats: negatives have every bit flipped, the rest the sign bit.
  std::vector<uint32_t> keys(n), tmp(n);
  for (size_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, &v[i], 4);
    keys[i] = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  }
  // All four byte histograms in one read; a byte every key shares needs no pass.
  uint32_t count[4][256] = {};
  for (uint32_t k : keys) {
    ++count[0][k & 0xFF];
    ++count[1][(k >> 8) & 0xFF];
    ++count[2][(k >> 16) & 0xFF];
    ++count[3][k >> 24];
  }
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 8 * pass;
    if (count[pass][(keys[0] >> shift) & 0xFF] == n) continue;
    uint32_t start[256];
    uint32_t sum = 0;
    for (int d = 0; d < 256; ++d) {
      start[d] = sum;
      sum += count[pass][d];
    }
    for (uint32_t k : keys) tmp[start[(k >> shift) & 0xFF]++] = k;
    keys.swap(tmp);
  }
  for (size_t i = 0; i < n; ++i) {
    const uint32_t k = keys[i];
    const uint32_t b = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
    std::memcpy(&v[i], &b, 4);
  }
}

int64_t UnitSampleSize(int64_t units) {
  return std::clamp<int64_t>(kTensorSampleBudget / std::max<int64_t>(units, 1), kMinUnitSample,
                             kMaxUnitSample);
}

int64_t SampleStride(int64_t n, int64_t sample_size) {
  return n <= sample_size ? 1 : (n + sample_size - 1) / sample_size;
}

QuantAwareSplit ChooseQuantAwareSplitFromSample(const std::vector<float>& s, int64_t unit_size,
                                                const QuantSpec& spec) {
  return ChooseQuantAwareSplitFromSample(s, unit_size, spec, /*reference_grid=*/false);
}

QuantAwareSplit ChooseQuantAwareSplitFromSampleReference(const std::vector<float>& s, int64_t unit_size,
                                                         const QuantSpec& spec) {
  return ChooseQuantAwareSplitFromSample(s, unit_size, spec, /*reference_grid=*/true);
}

namespace {
QuantAwareSplit ChooseQuantAwareSplitFromSample(const std::vector<float>& s, int64_t unit_size,
                                                const QuantSpec& spec, bool reference_grid) {
  QuantAwareSplit out;
  CutSearch search(s, spec, reference_grid);
  int64_t i = 0, j = 0;
  if (!search.Search(&i, &j)) return out;  // distinct_clusters 0: caller decides
  KMeans1DResult& r = out.clusters;
  r.lower_boundary = (static_cast<double>(s[i - 1]) + s[i]) / 2;
  r.upper_boundary = (static_cast<double>(s[j - 1]) + s[j]) / 2;
  const int64_t cuts[4] = {0, i, j, static_cast<int64_t>(s.size())};
  const double scale_up = static_cast<double>(unit_size) / static_cast<double>(s.size());
  r.distinct_clusters = 3;
  for (int c = 0; c < 3; ++c) {
    double sum = 0, sum_sq = 0;
    for (int64_t k = cuts[c]; k < cuts[c + 1]; ++k) {
      sum += s[k];
      sum_sq += static_cast<double>(s[k]) * s[k];
    }
    const double count = static_cast<double>(cuts[c + 1] - cuts[c]);
    r.centers[c] = sum / count;
    r.inertia += std::max(0.0, sum_sq - sum * r.centers[c]) * scale_up;
    if (static_cast<int64_t>(s.size()) == unit_size) r.counts[c] = cuts[c + 1] - cuts[c];
  }
  for (int c = 0; c < 3; ++c) {
    const auto shrink = SearchBranchShrink(
        absl::MakeConstSpan(s.data() + cuts[c], cuts[c + 1] - cuts[c]), spec);
    out.shrink_lo[c] = shrink[0];
    out.shrink_hi[c] = shrink[1];
  }
  return out;
}

}  // namespace

QuantAwareSplit ChooseQuantAwareSplit(absl::Span<const float> values, const QuantSpec& spec,
                                      int64_t sample_size) {
  const int64_t n = static_cast<int64_t>(values.size());
  QuantAwareSplit out =
      ChooseQuantAwareSplitFromSample(SortedSample(values, sample_size), n, spec);
  if (out.clusters.distinct_clusters < 3) {
    // No cut in the sample. A small unit is then degenerate; a sampled one may still
    // have 3 distinct values: the exact 1-D k-means decides on all of them.
    if (n > sample_size) out.clusters = KMeans1D(values);
    return out;
  }
  if (n > sample_size) {
    KMeans1DResult& r = out.clusters;
    const float t0 = LowerThreshold(r.lower_boundary), t1 = UpperThreshold(r.upper_boundary);
    int64_t below = 0, above = 0;
    for (float v : values) {
      below += v <= t0;
      above += v >= t1;
    }
    r.counts = {below, n - below - above, above};
  }
  return out;
}

}  // namespace sq
