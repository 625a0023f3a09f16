// Quantization-aware split: where to cut one clustering unit into SplitQuant's three
// branches, and what range each branch then quantizes. This is the default
// (`--boundaries quant`); the paper's k-means cuts with min/max ranges stay available
// (`--boundaries kmeans`).
//
// Why not k-means: k-means minimises inertia, but what the split pays for is each branch's
// quantization error. A branch's range always reaches 0 (its other positions hold zeros,
// which must stay exact), so an outer cluster holding a quarter of the values gets a
// coarse step; and one far outlier stretches its branch's step for every other member.
// Both are weight-space errors that can be measured without data:
//
//   1. Cuts. For cut positions (i, j) in the sorted values, the error of branch b is
//      estimated by the uniform-noise model n_b * step_b^2 / 12, with step_b = (range of
//      the branch widened to 0) / (levels - 1) -- O(1) per candidate from the sorted
//      values. Outer branches of at most kExactBranchValues members are measured exactly
//      instead (the model is poor for a handful of values sitting on grid points). The
//      candidate sizes of each outer cluster are 1..kTailPositions (at most an eighth of
//      the values) plus a 1/32 quantile grid (outlier clusters are often tiny, sometimes a
//      third of the values); every pair of them is scored, then a local search (steps
//      from n/64 down to 1) refines the best. (Denser candidates and a final search on
//      the measured error lowered the weight error slightly but did not raise task
//      accuracy on bench/ocr's 1000-line set: docs/accuracy.md.)
//   2. Ranges. With the cuts fixed, each branch's range is shrunk towards 0 on each side
//      (factors 1, 0.95, ..., 0.5) where that lowers the branch's actual squared error
//      (members clipped at the new end included): a 1-D search for the outer branches
//      (one end is 0), a coordinate search for the middle one. Zero stays exact.
//
// A unit larger than its sample size is searched on a deterministic sample (every k-th
// value in index order, plus the unit's min and max), so the cost per unit is bounded;
// the counts are those of all values, centres and inertia are the sample's (scaled to the
// unit's size). The sample size is
// UnitSampleSize(): all of a small tensor's values, and a fixed budget of values per
// tensor spread over the units of a large one (at least kMinUnitSample each).
//
// Deterministic: depends only on the values and the spec. Thread-safe.
#ifndef SQ_CORE_TRANSFORM_CUTS_H_
#define SQ_CORE_TRANSFORM_CUTS_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "core/kmeans.h"
#include "core/quantizer.h"

namespace sq {

inline constexpr int64_t kMinUnitSample = 128;
inline constexpr int64_t kMaxUnitSample = int64_t{1} << 18;
inline constexpr int64_t kTensorSampleBudget = int64_t{1} << 18;
inline constexpr int64_t kExactBranchValues = 64;
inline constexpr int kTailPositions = 48;

// Values searched per unit for a tensor cut into `units` units:
// clamp(kTensorSampleBudget / units, kMinUnitSample, kMaxUnitSample).
int64_t UnitSampleSize(int64_t units);

struct QuantAwareSplit {
  // Cuts as a 3-cluster result (boundaries midway between the values either side of each
  // cut; counts over all of the unit's values, centres and inertia estimated from the
  // sample). distinct_clusters
  // < 3 means the unit cannot be split (fewer than 3 distinct values).
  KMeans1DResult clusters;
  // Per branch (lower, middle, upper): factors in [0.5, 1] applied to the branch's
  // min (shrink_lo) and max (shrink_hi) in each quantization slice before its scale and
  // zero point are chosen; values beyond the shrunk range saturate. 1 = min/max.
  std::array<float, 3> shrink_lo{1, 1, 1}, shrink_hi{1, 1, 1};
};

QuantAwareSplit ChooseQuantAwareSplit(absl::Span<const float> values, const QuantSpec& spec,
                                      int64_t sample_size = kMaxUnitSample);

// The same in two steps, for callers that hold a unit's values strided in memory (a
// MatMul's output column): they read the sample rows and min/max themselves, then count.
// Sample of a unit of n values for `sample_size`: every SampleStride(n, sample_size)-th
// value in index order (all values when n <= sample_size), plus min and max when strided.
int64_t SampleStride(int64_t n, int64_t sample_size);
// Sorts a sample ascending, as std::sort would (the same array: sorted floats are unique),
// by an LSD radix sort on the float bits for samples of 64 values or more (the units'
// samples are ~128 values: several times faster than a comparison sort), std::sort below.
// No NaNs; -0 sorts before +0 (callers turn -0 into +0 first).
void SortSample(std::vector<float>& v);
// `sorted_sample`: that sample, sorted ascending, -0 turned into +0. `unit_size`: n.
// The result's counts are left zero when `sorted_sample` is a strict sample (the caller
// counts with CountClusters); distinct_clusters is 3, or 0 when no cut exists (then the
// caller must decide degeneracy on all values, e.g. with KMeans1D).
QuantAwareSplit ChooseQuantAwareSplitFromSample(const std::vector<float>& sorted_sample,
                                                int64_t unit_size, const QuantSpec& spec);
// The same with the grid of candidate cut pairs scanned pair by pair, the reference the
// vectorised grid scan must equal (cuts_test).
QuantAwareSplit ChooseQuantAwareSplitFromSampleReference(const std::vector<float>& sorted_sample,
                                                         int64_t unit_size, const QuantSpec& spec);

// The range search of step 2 on one branch's members (any order): the shrink factors
// {lo, hi} (each in [0.5, 1]) for the branch's min and max with the lowest squared
// quantization error; {1, 1} when nothing is better.
std::array<float, 2> SearchBranchShrink(absl::Span<const float> members, const QuantSpec& spec);

// Squared error of quantizing `members` with one (scale, zero point) chosen for the range
// [lo, hi] (widened to 0) under `spec`. Shared by the search and its tests.
double BranchSquaredError(absl::Span<const float> members, float lo, float hi,
                          const QuantSpec& spec);

}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_CUTS_H_
