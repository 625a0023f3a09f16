#include "core/kmeans.h"

#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/threaded_for.h"

namespace sq {
namespace {

// Fast methods must reach inertia no worse than the reference up to this relative slack.
constexpr double kInertiaRelSlack = 1e-9;
constexpr double kInertiaAbsSlack = 1e-30;
// Reported inertia vs a fresh two-pass recomputation.
constexpr double kReportedInertiaTolerance = 1e-9;

std::vector<float> MakeData(const std::string& kind, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, 0.02);
  std::student_t_distribution<double> t(3.0);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<float> v(n);
  for (size_t k = 0; k < n; ++k) {
    if (kind == "gauss") v[k] = static_cast<float>(g(rng));
    if (kind == "student") {
      v[k] = static_cast<float>(0.02 * t(rng));
      if (k % 997 == 0) v[k] *= 20;  // outliers
    }
    if (kind == "uniform") v[k] = static_cast<float>(u(rng));
    if (kind == "few") v[k] = static_cast<float>(static_cast<int>(rng() % 5) - 2) * 0.5f;
    if (kind == "const") v[k] = 0.75f;
    if (kind == "positive") v[k] = static_cast<float>(std::fabs(g(rng)) + 1.0);
  }
  return v;
}

void CheckContract(const std::vector<float>& v, const KMeans1DResult& r, const std::string& what) {
  SCOPED_TRACE(what);
  EXPECT_LE(r.centers[0], r.centers[1]);
  EXPECT_LE(r.centers[1], r.centers[2]);
  EXPECT_EQ(r.lower_boundary, 0.5 * (r.centers[0] + r.centers[1]));
  EXPECT_EQ(r.upper_boundary, 0.5 * (r.centers[1] + r.centers[2]));
  std::array<int64_t, 3> counts{};
  for (float w : v) ++counts[ClusterOf(w, r.lower_boundary, r.upper_boundary)];
  EXPECT_EQ(counts, r.counts);
  const double fresh = AssignmentInertia(v, r.lower_boundary, r.upper_boundary);
  EXPECT_NEAR(r.inertia, fresh, kReportedInertiaTolerance * fresh + kInertiaAbsSlack);
  EXPECT_EQ(LowerThreshold(r.lower_boundary) >= 0, r.lower_boundary >= 0 ||
                                                        LowerThreshold(r.lower_boundary) >= 0);
}

void ExpectNoWorse(const std::vector<float>& v, const KMeans1DResult& fast,
                   const KMeans1DResult& ref) {
  const double f = AssignmentInertia(v, fast.lower_boundary, fast.upper_boundary);
  const double r = AssignmentInertia(v, ref.lower_boundary, ref.upper_boundary);
  EXPECT_LE(f, r * (1 + kInertiaRelSlack) + kInertiaAbsSlack);
}

TEST(KMeansTest, EmptyInput) {
  for (const KMeans1DResult& r : {KMeans1DReference({}), KMeans1DExact({}),
                                  KMeans1DHistogram({}), KMeans1D({})}) {
    EXPECT_EQ(r.distinct_clusters, 0);
    EXPECT_EQ(r.counts, (std::array<int64_t, 3>{0, 0, 0}));
    EXPECT_EQ(r.inertia, 0);
  }
}

TEST(KMeansTest, OneDistinctValueGoesToMiddle) {
  const std::vector<float> v(10, -3.5f);
  for (const KMeans1DResult& r :
       {KMeans1DReference(v), KMeans1DExact(v), KMeans1DHistogram(v)}) {
    EXPECT_EQ(r.distinct_clusters, 1);
    EXPECT_EQ(r.counts, (std::array<int64_t, 3>{0, 10, 0}));
    EXPECT_EQ(ClusterOf(-3.5f, r.lower_boundary, r.upper_boundary), 1);
    EXPECT_EQ(r.inertia, 0);
  }
}

TEST(KMeansTest, TwoDistinctValuesGoToLowerAndUpper) {
  std::vector<float> v = {1.0f, 2.0f, 1.0f, 2.0f, 2.0f};
  for (const KMeans1DResult& r :
       {KMeans1DReference(v), KMeans1DExact(v), KMeans1DHistogram(v)}) {
    EXPECT_EQ(r.distinct_clusters, 2);
    EXPECT_EQ(r.counts, (std::array<int64_t, 3>{2, 0, 3}));
    EXPECT_EQ(r.inertia, 0);
  }
  // -0 and +0 are one value.
  v = {0.0f, -0.0f, 5.0f};
  EXPECT_EQ(KMeans1DExact(v).distinct_clusters, 2);
  EXPECT_EQ(KMeans1DHistogram(v).distinct_clusters, 2);
}

TEST(KMeansTest, ThreeDistinctValuesAreThreeClusters) {
  const std::vector<float> v = {-1.0f, 0.0f, 7.0f, 7.0f};
  const KMeans1DResult r = KMeans1DExact(v);
  EXPECT_EQ(r.distinct_clusters, 3);
  EXPECT_EQ(r.counts, (std::array<int64_t, 3>{1, 1, 2}));
  EXPECT_EQ(r.inertia, 0);
}

TEST(KMeansTest, ExactNoWorseThanReferenceOnCorpus) {
  uint64_t seed = 10;
  for (const std::string kind : {"gauss", "student", "uniform", "few", "const", "positive"}) {
    for (size_t n : {0, 1, 2, 3, 4, 5, 17, 100, 1000, 20000}) {
      const std::vector<float> v = MakeData(kind, n, ++seed);
      const KMeans1DResult ref = KMeans1DReference(v);
      const KMeans1DResult exact = KMeans1DExact(v);
      const std::string what = kind + " n=" + std::to_string(n);
      CheckContract(v, ref, what + " ref");
      CheckContract(v, exact, what + " exact");
      EXPECT_EQ(ref.distinct_clusters, exact.distinct_clusters) << what;
      ExpectNoWorse(v, exact, ref);
      EXPECT_LE(exact.inertia, ref.inertia * (1 + kInertiaRelSlack) + kInertiaAbsSlack) << what;
    }
  }
}

TEST(KMeansTest, HistogramMatchesExactAndBeatsReference) {
  uint64_t seed = 100;
  for (const std::string kind : {"gauss", "student", "uniform", "few", "const", "positive"}) {
    const std::vector<float> v = MakeData(kind, 200000, ++seed);
    const std::string what = kind;
    const KMeans1DResult hist = KMeans1DHistogram(v);
    const KMeans1DResult exact = KMeans1DExact(v);
    CheckContract(v, hist, what + " hist");
    EXPECT_EQ(hist.distinct_clusters, exact.distinct_clusters) << what;
    ExpectNoWorse(v, hist, exact);
    if (kind == "student" || kind == "few") ExpectNoWorse(v, hist, KMeans1DReference(v));
  }
}

TEST(KMeansTest, MillionElementsNoWorseThanReference) {
  const std::vector<float> v = MakeData("student", 1000000, 7);
  const KMeans1DResult fast = KMeans1D(v);
  CheckContract(v, fast, "1e6");
  ExpectNoWorse(v, fast, KMeans1DReference(v));
}

TEST(KMeansTest, TinyInputsSmallSizes) {
  // All sizes 0..5 with up to 3 distinct values, every method agrees on degeneracy.
  for (size_t n = 0; n <= 5; ++n) {
    for (int mod = 1; mod <= 4; ++mod) {
      std::vector<float> v(n);
      for (size_t k = 0; k < n; ++k) v[k] = static_cast<float>(k % mod);
      const KMeans1DResult a = KMeans1DReference(v), b = KMeans1DExact(v),
                           c = KMeans1DHistogram(v);
      EXPECT_EQ(a.distinct_clusters, b.distinct_clusters);
      EXPECT_EQ(b.distinct_clusters, c.distinct_clusters);
      EXPECT_EQ(b.counts, c.counts);
      CheckContract(v, c, "tiny");
    }
  }
}

using testing::ThreadedFor;

TEST(KMeansTest, DeterministicAcrossThreadCounts) {
  const std::vector<float> v = MakeData("student", 300000, 3);
  const KMeans1DResult a = KMeans1D(v);
  for (int threads : {1, 4}) {
    const KMeans1DResult b = KMeans1DParallel(v, ThreadedFor(threads));
    EXPECT_EQ(a.centers, b.centers);
    EXPECT_EQ(a.lower_boundary, b.lower_boundary);
    EXPECT_EQ(a.upper_boundary, b.upper_boundary);
    EXPECT_EQ(a.counts, b.counts);
    EXPECT_EQ(a.inertia, b.inertia);
  }
  const KMeans1DResult r1 = KMeans1DReference(MakeData("gauss", 5000, 1));
  const KMeans1DResult r2 = KMeans1DReference(MakeData("gauss", 5000, 1));
  EXPECT_EQ(r1.centers, r2.centers);
}

TEST(KMeansTest, ThresholdsMatchDoubleComparison) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(-2, 2);
  for (int t = 0; t < 1000; ++t) {
    const double b = u(rng);
    const float lo = LowerThreshold(b), hi = UpperThreshold(b);
    for (float w : {lo, hi, std::nextafter(lo, -10.0f), std::nextafter(hi, 10.0f)}) {
      EXPECT_EQ(w <= b, w <= lo);
      EXPECT_EQ(w >= b, w >= hi);
    }
  }
  EXPECT_TRUE(std::isinf(LowerThreshold(1e300)));
  EXPECT_TRUE(std::isinf(UpperThreshold(-1e300)));
}

}  // namespace
}  // namespace sq

namespace sq {
namespace {

// Feeding the window values instead of a second pass gives the same result bit for bit,
// and the windows hold no value of an unexpanded bin that would change it.
TEST(KMeansTest, HistogramStateWindowValuesMatchSecondPass) {
  for (const char* kind : {"student", "uniform"}) {
    const std::vector<float> v = MakeData(kind, 200000, 7);
    kmeans_internal::HistogramKMeansState state;
    ASSERT_TRUE(state.Build(v, nullptr));
    std::vector<float> in_windows;
    const auto windows = state.Windows();
    ASSERT_FALSE(windows.empty());
    for (float x : v) {
      for (const auto& w : windows) {
        if (x >= w.first && x <= w.second) {
          in_windows.push_back(x);
          break;
        }
      }
    }
    const KMeans1DResult a = state.Finish(v, nullptr, &in_windows);
    const KMeans1DResult b = KMeans1D(v);
    EXPECT_EQ(a.lower_boundary, b.lower_boundary) << kind;
    EXPECT_EQ(a.upper_boundary, b.upper_boundary) << kind;
    EXPECT_EQ(a.counts, b.counts) << kind;
    EXPECT_EQ(a.inertia, b.inertia) << kind;
    double sum2 = 0;
    for (float x : v) sum2 += static_cast<double>(x) * x;
    EXPECT_NEAR(state.SumOfSquares(), sum2, 1e-9 * sum2) << kind;
  }
  std::vector<float> bad = MakeData("student", 100000, 8);
  bad[5] = std::nanf("");
  kmeans_internal::HistogramKMeansState state;
  EXPECT_FALSE(state.Build(bad, nullptr));
}

}  // namespace
}  // namespace sq
