// The quantization-aware split of one unit (core/transform/cuts.h).
#include "core/transform/cuts.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sq {
namespace {

std::vector<float> HeavyTailed(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<double> t(3.0);
  std::vector<float> v(n);
  for (size_t k = 0; k < n; ++k) v[k] = static_cast<float>(0.02 * t(rng));
  return v;
}

// Actual squared error of the three branches under cuts (b0, b1) and per-branch shrink.
double SplitError(const std::vector<float>& v, double b0, double b1, const QuantSpec& spec,
                  const std::array<float, 3>& shrink_lo, const std::array<float, 3>& shrink_hi) {
  std::vector<float> members[3];
  for (float x : v) members[ClusterOf(x, b0, b1)].push_back(x);
  double total = 0;
  for (int c = 0; c < 3; ++c) {
    float lo = 0, hi = 0;
    for (float x : members[c]) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    total += BranchSquaredError(members[c], lo * shrink_lo[c], hi * shrink_hi[c], spec);
  }
  return total;
}

TEST(CutsTest, BeatsKMeansCutsOnTheBranchesQuantizationError) {
  for (int bits : {2, 3, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (size_t n : {size_t{200}, size_t{3000}, size_t{20000}}) {
        QuantSpec spec{bits, symmetric};
        const std::vector<float> v = HeavyTailed(n, bits * 100 + n);
        const QuantAwareSplit q = ChooseQuantAwareSplit(v, spec);
        ASSERT_EQ(q.clusters.distinct_clusters, 3);
        const KMeans1DResult km = KMeans1D(v);
        const double ours = SplitError(v, q.clusters.lower_boundary, q.clusters.upper_boundary,
                                       spec, q.shrink_lo, q.shrink_hi);
        const double paper = SplitError(v, km.lower_boundary, km.upper_boundary, spec, {1, 1, 1},
                                        {1, 1, 1});
        EXPECT_LT(ours, paper) << "bits " << bits << " sym " << symmetric << " n " << n;
        // Counts are over all values and add up.
        int64_t below = 0, above = 0;
        for (float x : v) {
          below += x <= q.clusters.lower_boundary;
          above += x >= q.clusters.upper_boundary;
        }
        EXPECT_EQ(q.clusters.counts[0], below);
        EXPECT_EQ(q.clusters.counts[2], above);
        EXPECT_EQ(q.clusters.counts[0] + q.clusters.counts[1] + q.clusters.counts[2],
                  static_cast<int64_t>(n));
      }
    }
  }
}

TEST(CutsTest, TheVectorisedGridScanEqualsThePairByPairReference) {
  std::mt19937_64 rng(21);
  int compared = 0;
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      const QuantSpec spec{bits, symmetric};
      for (size_t n : {3, 4, 9, 40, 128, 129, 300, 2000}) {
        for (int shape = 0; shape < 4; ++shape) {
          std::vector<float> s = HeavyTailed(n, rng());
          if (shape == 1) {
            for (float& v : s) v = std::fabs(v);  // one-sided: the range is widened to 0
          } else if (shape == 2) {
            for (float& v : s) v = std::round(v * 200.0f) / 200.0f;  // many ties
          } else if (shape == 3) {
            for (size_t k = 0; k < n; k += 3) s[k] = 0.0f;  // many zeros
          }
          for (float& v : s) v += 0.0f;
          std::sort(s.begin(), s.end());
          const int64_t unit = static_cast<int64_t>(n) * (shape + 1);
          const QuantAwareSplit fast = ChooseQuantAwareSplitFromSample(s, unit, spec);
          const QuantAwareSplit ref = ChooseQuantAwareSplitFromSampleReference(s, unit, spec);
          SCOPED_TRACE(::testing::Message() << "bits " << bits << " symmetric " << symmetric << " n " << n
                                            << " shape " << shape);
          ASSERT_EQ(fast.clusters.distinct_clusters, ref.clusters.distinct_clusters);
          EXPECT_EQ(fast.clusters.lower_boundary, ref.clusters.lower_boundary);
          EXPECT_EQ(fast.clusters.upper_boundary, ref.clusters.upper_boundary);
          EXPECT_EQ(fast.clusters.centers, ref.clusters.centers);
          EXPECT_EQ(fast.clusters.counts, ref.clusters.counts);
          EXPECT_EQ(fast.clusters.inertia, ref.clusters.inertia);
          EXPECT_EQ(fast.shrink_lo, ref.shrink_lo);
          EXPECT_EQ(fast.shrink_hi, ref.shrink_hi);
          compared += ref.clusters.distinct_clusters == 3;
        }
      }
    }
  }
  EXPECT_GT(compared, 150);
}

TEST(CutsTest, SortSampleSortsAsStdSort) {
  std::mt19937_64 rng(5);
  for (size_t n : {0, 1, 2, 63, 64, 65, 128, 130, 1000, 5000}) {
    for (int shape = 0; shape < 4; ++shape) {
      std::vector<float> v = HeavyTailed(n, rng());
      if (shape == 1) {
        for (float& x : v) x = std::fabs(x);  // one byte pattern shared at the top
      } else if (shape == 2) {
        for (float& x : v) x = std::round(x * 100.0f) / 100.0f + 0.0f;  // ties and zeros
      } else if (shape == 3) {
        for (size_t k = 0; k < n; ++k) v[k] = k % 2 ? -std::ldexp(1.0f, static_cast<int>(k % 60) - 30) : 1e30f;
      }
      std::vector<float> want = v;
      std::sort(want.begin(), want.end());
      SortSample(v);
      EXPECT_EQ(v, want) << "n " << n << " shape " << shape;
    }
  }
}

TEST(CutsTest, DeterministicAndIndependentOfTheSignOfZero) {
  std::vector<float> v = HeavyTailed(5000, 3);
  v[10] = 0.0f;
  std::vector<float> w = v;
  w[10] = -0.0f;
  const QuantSpec spec{4, false};
  const QuantAwareSplit a = ChooseQuantAwareSplit(v, spec), b = ChooseQuantAwareSplit(w, spec);
  EXPECT_EQ(a.clusters.lower_boundary, b.clusters.lower_boundary);
  EXPECT_EQ(a.clusters.upper_boundary, b.clusters.upper_boundary);
  EXPECT_EQ(a.shrink_lo, b.shrink_lo);
  EXPECT_EQ(a.shrink_hi, b.shrink_hi);
}

TEST(CutsTest, DegenerateUnitsAreNotSplit) {
  const QuantSpec spec{4, false};
  EXPECT_LT(ChooseQuantAwareSplit(std::vector<float>(100, 0.5f), spec).clusters.distinct_clusters, 3);
  std::vector<float> two(100, 0.5f);
  two[3] = -1.0f;
  EXPECT_LT(ChooseQuantAwareSplit(two, spec).clusters.distinct_clusters, 3);
  // A large unit whose sample misses the third value still gets split (decided on all).
  std::vector<float> big(100000, 0.5f);
  big[1] = -1.0f;   // not on the sample stride...
  big[2] = 2.0f;
  big[3] = -1.0f;
  const QuantAwareSplit q = ChooseQuantAwareSplit(big, spec, 1024);
  EXPECT_EQ(q.clusters.distinct_clusters, 3);
}

TEST(CutsTest, ShrinkClipsALoneFarOutlierOnlyWhenThatLowersTheError) {
  const QuantSpec spec{4, false};
  std::vector<float> members = HeavyTailed(2000, 5);
  for (float& x : members) x = std::abs(x);  // an upper branch: [0, max]
  const auto none = SearchBranchShrink(members, spec);
  float top = 0;
  for (float x : members) top = std::max(top, x);
  members.push_back(4 * top);  // one outlier stretches the step for all the others
  const auto some = SearchBranchShrink(members, spec);
  EXPECT_EQ(some[0], 1.0f);  // nothing below 0 to shrink
  EXPECT_LT(some[1], 1.0f);
  float mx = 0;
  for (float x : members) mx = std::max(mx, x);
  EXPECT_LE(BranchSquaredError(members, 0, mx * some[1], spec),
            BranchSquaredError(members, 0, mx, spec));
  (void)none;
  EXPECT_EQ(SearchBranchShrink({}, spec), (std::array<float, 2>{1, 1}));
}

// The SSE2 loop of BranchSquaredError against the plain quantize/dequantize of
// quantizer.h, summed in double: same codes (the 1.5 * 2^23 rounding trick equals
// round-half-even in range), so only the float accumulation may differ.
TEST(CutsTest, BranchSquaredErrorMatchesThePlainQuantizer) {
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (size_t n : {size_t{1}, size_t{3}, size_t{7}, size_t{1023}, size_t{1025}, size_t{5000}}) {
        const QuantSpec spec{bits, symmetric};
        const std::vector<float> v = HeavyTailed(n, n * 31 + bits);
        float lo = 0, hi = 0;
        for (float x : v) {
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
        for (float shrink : {1.0f, 0.7f}) {
          const QuantParams p = ChooseQuantParams(lo * shrink, hi * shrink, spec);
          double want = 0;
          for (float x : v) {
            const double d = x - static_cast<double>(DequantizeValue(QuantizeValue(x, p, spec), p));
            want += d * d;
          }
          const double got = BranchSquaredError(v, lo * shrink, hi * shrink, spec);
          EXPECT_NEAR(got, want, 1e-5 * want + 1e-30)
              << "bits " << bits << " sym " << symmetric << " n " << n << " shrink " << shrink;
        }
      }
    }
  }
}

TEST(CutsTest, UnitSampleSizeSpreadsABudgetPerTensor) {
  EXPECT_EQ(UnitSampleSize(1), kMaxUnitSample);
  EXPECT_EQ(UnitSampleSize(100000), kMinUnitSample);
  EXPECT_EQ(SampleStride(1000, 4096), 1);
  EXPECT_EQ(SampleStride(8192, 4096), 2);
  EXPECT_EQ(SampleStride(8193, 4096), 3);
}

}  // namespace
}  // namespace sq
