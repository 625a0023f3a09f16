// One-dimensional k-means with k = 3, the clustering step of SplitQuant.
//
// Contract shared by every implementation here:
//   * Input: finite floats (callers reject NaN/Inf before). Any length, including 0.
//   * Output centres are sorted ascending; boundaries are the midpoints
//     b0 = (c0 + c1) / 2, b1 = (c1 + c2) / 2, and the assignment rule is
//         lower = {w <= b0}, middle = {b0 < w < b1}, upper = {w >= b1}.
//     `counts` and `inertia` (sum of squared distances to the assigned cluster's mean) are
//     those of exactly this assignment rule applied to the input.
//   * Degenerate inputs are explicit: `distinct_clusters` < 3 when the input has fewer than
//     3 distinct values (or is empty). Then the non-empty clusters are put in the middle
//     first (1 value: middle only; 2 values: lower + upper), the boundaries still follow
//     the rule above, and no cluster is reported non-empty that is empty.
//   * Deterministic: the same input gives the same result, bit for bit, on any machine
//     thread count, and call order.
//
// Implementations:
//   KMeans1DReference - the paper's method: greedy k-means++ seeding (2 + floor(ln k)
//     candidates per step, fixed-seed PRNG) then Lloyd, up to 300 iterations, tolerance
//     1e-4 on centre movement relative to the data range. Plain and slow; the yardstick.
//   KMeans1DExact     - globally optimal 3-partition of the sorted values (contiguous
//     intervals), by dynamic programming over prefix sums. O(n log n).
//   KMeans1DHistogram - for large tensors: one pass builds a histogram keyed by the
//     order-preserving bits of each float, the optimal partition over bin edges is found
//     exactly, then refined. Inertia within a hair of the exact optimum; never worse
//     than the reference on the test corpus.
//   KMeans1D          - picks Exact for small inputs (n <= kKMeansExactMaxElements) and
//     Histogram for large ones.
//
// Histogram details: the key is the monotone uint32 image of the float bits; a bin is its
// top 16 bits (sign, exponent, 7 mantissa bits). Per bin the count and the exact integer
// sums of the low 16 bits and of their squares are kept, so the histogram does not depend
// on summation order (parallel passes give the same bits). The optimal partition over
// bins is found by DP; the bins around both cut points are then expanded by a second pass
// into their exact distinct values and the DP is rerun; if a resulting boundary falls
// inside a bin that is still aggregated, that bin is expanded too (at most a few rounds).
#ifndef SQ_CORE_KMEANS_H_
#define SQ_CORE_KMEANS_H_

#include <array>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/types/span.h"

namespace sq {

struct KMeans1DResult {
  std::array<double, 3> centers{};   // ascending; mean of each cluster (empty: see contract)
  double lower_boundary = 0;         // b0
  double upper_boundary = 0;         // b1
  std::array<int64_t, 3> counts{};   // lower, middle, upper
  double inertia = 0;
  int distinct_clusters = 0;         // 0..3
};

inline constexpr uint64_t kDefaultKMeansSeed = 0x5eed5eedULL;
inline constexpr int64_t kKMeansExactMaxElements = 65536;

KMeans1DResult KMeans1DReference(absl::Span<const float> values,
                                 uint64_t seed = kDefaultKMeansSeed);
KMeans1DResult KMeans1DExact(absl::Span<const float> values);
KMeans1DResult KMeans1DHistogram(absl::Span<const float> values);
KMeans1DResult KMeans1D(absl::Span<const float> values);

// KMeans1D with the passes over `values` spread over `parallel_for`, which runs
// fn(begin, end) over [0, n) in pieces, possibly in parallel (nullptr = inline; same type
// as ParallelFor in weight_transform.h). The result is bit-identical to KMeans1D(values).
using KMeansParallelFor =
    std::function<void(int64_t, const std::function<void(int64_t, int64_t)>&)>;
KMeans1DResult KMeans1DParallel(absl::Span<const float> values,
                                const KMeansParallelFor& parallel_for);

// ---- internal: the histogram method in steps, so TransformWeight can fuse its own work
// into the passes over the tensor (not a stable API). ----
namespace kmeans_internal {

// Build() + Finish(values, pf, nullptr) == KMeans1DHistogram / KMeans1DParallel for
// large inputs, bit for bit.
class HistogramKMeansState {
 public:
  HistogramKMeansState();
  ~HistogramKMeansState();
  HistogramKMeansState(const HistogramKMeansState&) = delete;
  HistogramKMeansState& operator=(const HistogramKMeansState&) = delete;

  // Pass 1: the histogram. Returns false when a value is NaN or +-Inf (those keys have
  // all exponent bits set, so the check is free); the state is then unusable.
  bool Build(absl::Span<const float> values, const KMeansParallelFor& parallel_for);
  // Sum of x^2 over the input, from the exact integer bin sums (independent of order).
  double SumOfSquares() const;
  // Closed float ranges [lo, hi] (ascending, disjoint, 1 or 2) that contain every value
  // of every bin the first refinement round expands.
  std::vector<std::pair<float, float>> Windows() const;
  // Solves. `window_values`: every input value lying in Windows() (any order), which
  // spares the second pass; nullptr = read `values` again.
  KMeans1DResult Finish(absl::Span<const float> values, const KMeansParallelFor& parallel_for,
                        const std::vector<float>* window_values);

 private:
  struct Impl;
  Impl* impl_;
};

}  // namespace kmeans_internal

// Float thresholds equivalent to the double boundaries for float inputs w:
//   w <= b0  <=>  w <= LowerThreshold(b0),   w >= b1  <=>  w >= UpperThreshold(b1).
// (+-inf when no finite float qualifies.) Lets hot loops compare in float.
float LowerThreshold(double lower_boundary);
float UpperThreshold(double upper_boundary);

// Inertia of the midpoint assignment for the given boundaries (shared test helper).
double AssignmentInertia(absl::Span<const float> values, double lower_boundary,
                         double upper_boundary);

// Which cluster (0 lower, 1 middle, 2 upper) a value belongs to under the rule above.
inline int ClusterOf(float w, double lower_boundary, double upper_boundary) {
  if (w <= lower_boundary) return 0;
  if (w >= upper_boundary) return 2;
  return 1;
}

}  // namespace sq

#endif  // SQ_CORE_KMEANS_H_
