// Balanced rounding: a stage between the quantization parameters and pass 3 that keeps
// the rounding errors of each output channel from adding up.
//
// A layer's output y_o = sum_c w_oc x_c sees its weights' rounding errors e_oc through
// sum_c e_oc x_c. For inputs of mean mu and spread sigma per channel (independent), the
// expected squared output error is
//
//     sigma^2 * sum_c e_oc^2  +  mu^2 * (sum_c e_oc)^2 .
//
// Round-to-nearest minimises only the first term; its errors' sum grows like sqrt(n) and,
// through the input's mean, shifts every output of the channel the same way. Layer inputs
// after ReLU / hard-swish / sigmoid gating / affine blocks have a mean of the order of
// their spread, so sq assumes mu^2 / sigma^2 = 1 (kMeanToSpreadSq) — no data needed — and
// per quantization slice (an output channel under channel granularity) chooses one
// rounding offset o in [-kMaxRoundingOffset, kMaxRoundingOffset]:
//
//     code = saturate(round_half_even(x / s + o) + z)
//
// with o = 0 being round-to-nearest. An offset o > 0 rounds up exactly the elements whose
// distance to the rounding midpoint d = 0.5 - frac(x / s) is below o (the cheapest flips
// first), each adding s to the slice's error sum and s^2 (1 - 2 frac) to its squared
// error; o is the bin edge that minimises  sum e^2 + kMeanToSpreadSq * (sum e)^2  over a
// histogram of d (geometric bins, four per octave, from 2^-12 to kMaxRoundingOffset). The
// offset is shared by the slice's branches (each element uses its own branch's scale).
// Zero stays exact: 0 / s + o rounds to 0 for |o| < 0.5. Saturated elements never move.
// Under TransformConfig::balance_middle_only (the outer8 form) only the middle branch's
// elements are counted: the outer clusters reach the artifact re-quantized at 8 bits.
//
// Deterministic: each slice's sums are accumulated in element order by one task (the
// work is cut by slices, not by elements), independent of `parallel_for`.
// Internal to the engine.
#ifndef SQ_CORE_TRANSFORM_ROUNDING_H_
#define SQ_CORE_TRANSFORM_ROUNDING_H_

#include <array>
#include <cstdint>
#include <vector>

#include "core/transform/cluster.h"
#include "core/transform/index_map.h"
#include "core/transform/quantize.h"
#include "core/weight_transform.h"

namespace sq {
namespace transform {

inline constexpr double kMeanToSpreadSq = 1.0;
inline constexpr float kMaxRoundingOffset = 0.4375f;
// Bins of the midpoint distance d: bin 0 = [0, 2^-12), then four per octave up to
// kMaxRoundingOffset (bin kRoundingBins - 1 ends there).
inline constexpr int kRoundingBins = 44;

// Per slice: the error sum under round-to-nearest and, per bin of d, what flipping the
// bin's elements adds to the error sum (r) and to the squared error (cost), for the
// elements rounded down (up: flipping raises their codes) and rounded up (down).
struct SliceRounding {
  double r = 0;
  std::array<double, kRoundingBins> up_r{}, up_cost{}, down_r{}, down_cost{};
};

// The bin of d in [0, 0.5), or -1 when d >= kMaxRoundingOffset.
int RoundingBin(float d);
// The upper edge of bin k (an exact float); flipping bins 0..k is the offset BinEdge(k).
float RoundingBinEdge(int k);
// The last bin a slice of `slice_elements` elements considers: a slice whose errors are
// spread like rounding noise has an error sum of ~0.29 sqrt(n) steps and n candidates per
// unit of d, so it needs an offset of ~0.29 / sqrt(n); the histogram looks up to
// 1 / sqrt(n) (the bin holding it) and ignores farther elements (the pass's cost).
int RoundingBinLimit(int64_t slice_elements);

// Adds one element (its value, branch scale and zero point as float) to `st`: exactly the
// code pass 3 computes with offset 0. Shared by the fast path and the reference.
void AccumulateRounding(float x, float scale, float zero, float qmin, float qmax,
                        int bin_limit, SliceRounding& st);

// The slice's offset: 0, or +/- RoundingBinEdge(k) for the k minimising
// sum e^2 + kMeanToSpreadSq (sum e)^2 (ties: the smaller offset).
float ChooseOffset(const SliceRounding& st);

// Offsets per slice of a channel-granularity tensor (slices.kind == kChannel), from the
// branch parameters in `kernels` and the split in `plan`. Thread-safe for different
// tensors.
std::vector<float> ChooseRoundingOffsets(const WeightView& weight, const TransformConfig& config,
                                         const IndexMap& slices, const IndexMap& units,
                                         const SplitPlan& plan, const BranchKernels& kernels,
                                         const ParallelFor& parallel_for);

}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_ROUNDING_H_
