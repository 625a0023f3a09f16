// Pass 1 of the fused transform: cluster each clustering unit (the whole tensor, or one
// output channel) into three, and turn the clusters into a split plan.
//
//   ClusterFast   : k-means (fast histogram / exact, or the paper's reference) or, with a
//                   QuantSpec, the quantization-aware split (core/transform/cuts.h) of every
//                   unit; units run on `parallel_for`, the strided columns of a MatMul weight
//                   in tiles read by rows. Same clusters as clustering each gathered unit.
//   PlanSplit     : per-unit float thresholds, degenerate units (< 3 clusters: everything
//                   in the middle branch), counts, inertia, or why the tensor stays unsplit.
//   ApplyShrink   : the quantization-aware split's range shrink factors on slice ranges.
//
// Deterministic: results do not depend on `parallel_for` or the thread count. Thread-safe
// (no shared state); `parallel_for` is called from the calling thread. Internal to the
// engine.
#ifndef SQ_CORE_TRANSFORM_CLUSTER_H_
#define SQ_CORE_TRANSFORM_CLUSTER_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "core/kmeans.h"
#include "core/transform/index_map.h"
#include "core/weight_transform.h"

namespace sq {
namespace transform {

// The clusters of every unit, in unit order.
struct Clustering {
  std::vector<KMeans1DResult> units;
  int64_t unit_size = 0;
  // Quantization-aware split only: per unit, the branches' range shrink factors
  // {lo0, hi0, lo1, hi1, lo2, hi2} (applied where slices are the units).
  std::vector<std::array<float, 6>> shrink;
};

// k-means of one unit: the paper's reference, or the exact / histogram one (in parallel).
KMeans1DResult ClusterValues(absl::Span<const float> v, ClusterMethod method,
                             const ParallelFor& parallel_for);

// Whether the quantization-aware split (core/transform/cuts.h) places the cuts: under
// tensor and channel granularity. Its error model knows one range per branch and unit;
// under blocked granularity every block has its own, and the model's cuts measured worse
// than k-means's there (INT2), so blocks keep k-means cuts.
bool QuantAwareCuts(const TransformConfig& c);
// Whether its range shrink factors apply: only where each clustering unit is exactly one
// quantization slice (per-channel units under channel granularity, or the whole tensor
// under tensor granularity), and not under balanced rounding (a saturated extreme is a
// one-sided error no rounding offset can balance). Blocked slices keep their min/max.
bool ShrinksRanges(const TransformConfig& c);

// `quant_spec` non-null: the quantization-aware split under that spec instead of k-means,
// each unit's sample sized as if the sample budget were spread over `sample_units` units
// (UnitSampleSize: the units of the whole weight when `w` is a band of it).
Clustering ClusterFast(const WeightView& w, int64_t n, const IndexMap& units, int64_t sample_units,
                       ClusterMethod method, const ParallelFor& parallel_for,
                       const QuantSpec* quant_spec);

// Applies per-unit shrink factors to per-slice branch ranges (slice s = unit s).
void ApplyShrink(const std::vector<std::array<float, 6>>& shrink, const std::vector<bool>& degenerate,
                 int64_t slices, std::vector<float>& mn, std::vector<float>& mx);

// Outcome of the clustering step shared by both implementations.
struct SplitPlan {
  bool split = false;
  std::string not_split_reason;
  std::vector<float> t0, t1;  // per unit float thresholds (split only)
  std::vector<bool> degenerate;
  int64_t degenerate_units = 0;
  double inertia = 0;
  std::array<int64_t, 3> counts{};
};

// `keep_three`: the caller's graph already holds three branches (TransformConfig::
// keep_three_branches), so they are made even when every unit is degenerate.
SplitPlan PlanSplit(const Clustering& cl, bool want_split, bool keep_three);

}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_CLUSTER_H_
