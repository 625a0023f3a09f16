// Pass 3 of the fused transform as a stage: per-branch quantization parameters from the
// slice ranges, then quantize + encode + measure the whole tensor and hand the encoded
// branches to the sink.
//
//   ChooseKernelParams : each branch's (scale, zero point) per slice from its range (the
//                        quantization-aware shrink applied where it holds), in the
//                        kernels' layout and, unless kFloatSplit, in result.params; the
//                        plain (unsplit) parameters too when the plain error is measured.
//   QuantizeAndEmit    : walks the tensor in kPieceElements pieces, each cut in kSubChunk
//                        chunks run on `parallel_for` (the channel-last row kernel for
//                        codes of a [K, N] layout, else the segment kernels + packing),
//                        and emits each piece per branch in ascending offset order.
//                        Returns the error sums per kSubChunk chunk, in chunk order.
//
// Deterministic: chunk boundaries and the per-chunk sums do not depend on `parallel_for`.
// Thread-safe for different tensors; `sink` is called from the calling thread only.
// Internal to the engine.
#ifndef SQ_CORE_TRANSFORM_QUANTIZE_H_
#define SQ_CORE_TRANSFORM_QUANTIZE_H_

#include <array>
#include <cstdint>
#include <vector>

#include "core/transform/cluster.h"
#include "core/transform/index_map.h"
#include "core/transform/kernels.h"
#include "core/transform/ranges.h"
#include "core/weight_transform.h"

namespace sq {
namespace transform {

// The parameters pass 3 reads.
struct BranchKernels {
  int nb = 1;               // branches: 3 when split
  bool quantize = true;     // encoding != kFloatSplit
  bool plain = false;       // also measure plain quantization (pp is set)
  int64_t slices = 0;       // slices per branch
  std::array<KernelParams, 3> kp;  // [0, nb)
  KernelParams pp;          // plain: the slice's whole range
  // Rounding offset per slice, shared by the branches (transform/rounding.h); zeros =
  // round to nearest. ChooseKernelParams leaves zeros.
  std::vector<float> off;
};

BranchKernels ChooseKernelParams(const WeightView& weight, const TransformConfig& config,
                                 const SplitPlan& plan, const SliceRanges& ranges,
                                 const std::vector<std::array<float, 6>>& shrink,
                                 TransformResult& result);

// `signal`: also sum x^2 (false when the histogram already gave it).
std::vector<Partial> QuantizeAndEmit(const WeightView& weight, int64_t n,
                                     const TransformConfig& config, const IndexMap& slices,
                                     const IndexMap& units, const SplitPlan& plan,
                                     const BranchKernels& kernels, bool signal,
                                     const BranchSink& sink, const ParallelFor& parallel_for);

}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_QUANTIZE_H_
