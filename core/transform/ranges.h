// Pass 2 of the fused transform: per quantization slice and per branch, the min and max
// of the branch's values (+inf / -inf where a branch has none in a slice).
//
//   ComputeSliceRanges  : under a split plan (or unsplit: one branch), in kSubChunk chunks
//                         on `parallel_for`, checking finiteness on the way.
//   ComputeRegionRanges : the per-tensor histogram route's pass, run before the thresholds
//                         are known: ranges of the three regions outside the k-means
//                         windows, plus the (few) values inside the windows with their index.
//
// Deterministic: chunk results are merged with min/max, which is order-independent (up to
// the sign of zero, which the consumers normalise); window values arrive in scheduling
// order, and what reads them (the k-means refinement takes them in any order, min/max)
// does not depend on it. Thread-safe; `parallel_for` is called from the calling thread.
// Internal to the engine.
#ifndef SQ_CORE_TRANSFORM_RANGES_H_
#define SQ_CORE_TRANSFORM_RANGES_H_

#include <cstdint>
#include <vector>

#include "core/transform/cluster.h"
#include "core/transform/common.h"
#include "core/transform/index_map.h"
#include "core/weight_transform.h"

namespace sq {
namespace transform {

// Per branch min and max of the cluster's values (+inf / -inf when none), per slice.
struct SliceRanges {
  int branches = 1;
  int64_t slices = 0;
  std::vector<float> mn, mx;  // [branch * slices + slice]
  void Init(int b, int64_t s) {
    branches = b;
    slices = s;
    mn.assign(static_cast<size_t>(b * s), kInfF);
    mx.assign(static_cast<size_t>(b * s), -kInfF);
  }
};

// Per-slice, per-branch min/max under `plan`. Also checks finiteness in the same pass (a
// NaN test beside the min/max, infinities read off them); returns false when a NaN / Inf
// was seen (`out` is then garbage).
bool ComputeSliceRanges(const float* data, int64_t n, const IndexMap& slices,
                        const IndexMap& units, const SplitPlan& plan,
                        const ParallelFor& parallel_for, SliceRanges& out);

// ---- fused pass 2 (per-tensor split): slice ranges without knowing the thresholds -------
//
// The histogram k-means only refines inside a few bins around each cut ("windows"). Every
// value outside the windows already has a known cluster: below the first window -> lower,
// between the windows -> middle, above the last -> upper (once the final thresholds are
// checked to lie inside the windows). So one pass keeps per-slice min/max of those three
// regions, and collects the (rare, ~1%) window values with their element index: they feed
// the k-means refinement (no second k-means pass) and are folded into the slice ranges once
// the thresholds are known.
struct WindowValue {
  int64_t index;
  float value;
};

struct RegionPass {
  float w_lo[2], w_hi[2];   // windows (a single window is given twice)
  float d0_max, d2_min;     // x <= d0_max: below the first window; x >= d2_min: above the last
  int64_t max_window_values = 0;  // give up collecting beyond this (fallback path)
  // Outputs.
  SliceRanges regions;      // "branch" b = region b
  std::vector<WindowValue> window;
  bool overflow = false;
};

// Fills rp.regions and rp.window from the windows in `rp`; rp.overflow when more than
// rp.max_window_values fall in the windows (the caller then takes the two-pass route).
void ComputeRegionRanges(const float* data, int64_t n, const IndexMap& slices,
                         const ParallelFor& parallel_for, RegionPass& rp);

}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_RANGES_H_
