// SplitQuant on one weight tensor: cluster, split into three disjoint-support branches and
// quantize each branch, fused in a few streaming passes with no FP32 copy of the branches.
//
// The tensor is dense FP32, row-major. The caller says which axis is the output channel
// (per-channel scales and per-channel clustering run along it) and which axis blocks run
// along (the reduction axis). Output goes to a sink in ascending offset order per branch,
// in fixed-size pieces, so a 1 GB tensor never needs a second 1 GB buffer.
//
// Encodings (`WeightEncoding`):
//   kCodes       : integer codes per branch, packed at `storage_bits` (8, 4 or 2; see
//                  quantizer.h), element order = the weight's row-major order.
//   kDequantized : FP32 dequantized values per branch (format `fake`, branches form).
//   kDequantizedSum : one FP32 tensor = sum of the dequantized branches (format `fake`,
//                  folded form; for an unsplit layer the dequantized weight).
//   kFloatSplit  : FP32 branch values, no quantization (format `split`).
// For an unsplit layer (`split == false`, or degenerate) there is one branch.
// kDequantizedSum emits one tensor (sink branch 0) even when split; `params` still holds
// the three branches' parameters.
//
// Emission: per branch, pieces in ascending offset order, each at most 4 MiB, each starting
// at an element index that is a multiple of 2^20 (so packed pieces start on byte bounds).
//
// Fast path passes: (0) finiteness check, (1) clustering (tensor > 65536 elements:
// histogram + a light second pass over the cut bins; else exact sort-based), (2) per-slice
// per-branch min/max, (3) quantize + encode + error sums. Within a tensor the passes run
// over fixed 32768-element chunks on `parallel_for`. Each pass is a stage under
// core/transform/ (inputs.h, cluster.h, ranges.h, quantize.h with kernels.h);
// weight_transform.cc strings them together.
//
// Determinism: results depend only on the input values and the config, never on
// `parallel_for` or thread count: work is cut in fixed chunks and reduced in chunk order.
//
// Thread-safety: TransformWeight is re-entrant; call it from several threads at once on
// different tensors. `sink` is called from the calling thread only.
#ifndef SQ_CORE_WEIGHT_TRANSFORM_H_
#define SQ_CORE_WEIGHT_TRANSFORM_H_

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/options.h"
#include "core/quantizer.h"

namespace sq {

// Hands back the pages of elements [begin, end) of a weight mapped from a file (they may
// still be read again: only slower).
using ReleaseFn = std::function<void(int64_t begin, int64_t end)>;

struct WeightView {
  const float* data = nullptr;
  std::vector<int64_t> shape;  // rank >= 1
  int channel_axis = 0;        // output-channel axis
  int reduction_axis = 0;      // axis blocks run along (kBlock)
  // Optional, for data mapped from a file: the transform may call it, from any of its
  // threads, with element ranges [begin, end) it has finished reading in a pass that
  // walks the weight out of order (the cut search's sample rows, read a span of columns
  // at a time), so their pages can be handed back. Reading them again later must still
  // work (it may only be slower). Passes that walk the weight in order leave page
  // handling to the ParallelFor the caller passes.
  ReleaseFn release = nullptr;
  int64_t num_elements() const;
};

enum class WeightEncoding { kCodes, kDequantized, kDequantizedSum, kFloatSplit };
enum class ClusterMethod { kFast, kReference };

struct TransformConfig {
  QuantSpec spec;                      // bits + symmetric
  Granularity granularity = Granularity::kChannel;
  int block_size = 32;
  bool split = true;
  // With split: make three branches even when clustering finds fewer than 3 clusters in
  // every unit (the outer ones are then empty). The engine sets it once its graph holds
  // three branches; alone, such a tensor comes back unsplit with one branch.
  bool keep_three_branches = false;
  bool cluster_per_channel = false;    // one k-means per output channel (else per tensor)
  WeightEncoding encoding = WeightEncoding::kCodes;
  int storage_bits = 8;                // kCodes only: 8, 4 or 2 (>= spec.bits)
  ClusterMethod cluster_method = ClusterMethod::kFast;
  // Quantization-aware split (core/transform/cuts.h) instead of k-means under kTensor and
  // kChannel (blocked granularity keeps k-means cuts); the range shrink factors apply only
  // where a clustering unit is also the quantization slice (per-channel clustering with
  // kChannel, per-tensor with kTensor).
  bool quant_aware_boundaries = false;
  bool compute_plain_error = true;     // also measure plain (unsplit) quantization error
  // Balanced rounding (core/transform/rounding.h) under channel granularity: one rounding
  // offset per output channel keeps the channel's rounding errors from adding up (zero
  // stays exact). Ignored under tensor and block granularity and for kFloatSplit; the plain
  // comparison (compute_plain_error) always rounds to nearest.
  bool balanced_rounding = false;
  // With balanced rounding and a split: balance only the middle branch's errors (the
  // outer8 form re-quantizes the outer clusters at 8 bits, so their 4-bit errors never
  // reach the artifact).
  bool balance_middle_only = false;
  // Set when this weight is a band of channels of a larger one (the engine's transform
  // stage goes through a 1 GB lm_head that way): what the whole weight decides for all its
  // channels at once, so that each band's channels come out exactly as in the whole.
  struct Whole {
    int64_t units = 1;       // the whole's clustering units: the cut search's sample budget
                             // is spread over them (cuts.h, UnitSampleSize)
    int half_exponent = 0;   // with spec.half_scales: HalfScaleExponent(max |w| of the whole)
  };
  std::optional<Whole> whole;
};

// DequantizeLinear-shaped parameters of one branch.
struct BranchParams {
  std::vector<int64_t> shape;          // {} per tensor; {C} per channel; blocked: weight
                                       // shape with the reduction dim -> ceil(D / block)
  int axis = 0;                        // ONNX `axis` (per channel: channel axis;
                                       // blocked: reduction axis)
  int block_size = 0;                  // ONNX `block_size`; 0 unless blocked
  std::vector<float> scales;
  std::vector<int32_t> zero_points;
};

struct ClusterSummary {
  int64_t count = 0;                   // values in this cluster over the whole tensor
  float min = 0, max = 0;              // over the whole tensor (0, 0 if empty)
};

struct TransformResult {
  int num_branches = 1;                // 3 when split
  bool split = false;
  std::string not_split_reason;        // set when split was asked for but not done
  std::array<BranchParams, 3> params;  // [0, num_branches); empty for kFloatSplit
  std::array<ClusterSummary, 3> clusters;  // unsplit: [0] describes the whole tensor
  double inertia = 0;                  // k-means inertia summed over clustering units
  int64_t degenerate_units = 0;        // clustering units with < 3 distinct values
  double signal_energy = 0;            // sum x^2
  double split_error_energy = 0;       // sum (x - sum_b x^_b)^2 with the split
  double plain_error_energy = 0;       // same, plain quantization of the whole tensor
                                       // with the same granularity (if requested; also
                                       // for kFloatSplit, where split_error_energy = 0)
  int64_t bytes_per_branch = 0;        // encoded size of one branch
  int64_t offset_slices = 0;           // balanced rounding: slices rounded with an offset
  int scale_exponent = 0;              // with spec.half_scales: every scale is a float16
                                       // value times 2^scale_exponent (quantizer.h)
  double seconds = 0;                  // the engine's transform stage: this layer's wall time
                                       // (read, transform, re-encode, write)
  int64_t bands = 0;                   // the engine's transform stage: bands of channels the
                                       // layer went through in (0: whole)
};

// Receives encoded bytes of `branch` at `offset` within that branch's encoded tensor.
using BranchSink =
    std::function<void(int branch, int64_t offset, const uint8_t* data, size_t size)>;
// Runs fn(begin, end) over [0, n) split in pieces, possibly in parallel, and returns when
// all are done. nullptr = run inline.
using ParallelFor = std::function<void(int64_t n, const std::function<void(int64_t, int64_t)>&)>;

// Errors: InvalidArgument for a bad view/config (axis out of range, bits out of 2..8,
// storage_bits < bits, non-finite values naming the first bad index).
absl::StatusOr<TransformResult> TransformWeight(const WeightView& weight,
                                                const TransformConfig& config,
                                                const BranchSink& sink,
                                                const ParallelFor& parallel_for = nullptr);

// Plain, obviously-correct version of the same contract (materialises everything), kept
// beside the fast one; tests hold TransformWeight to it.
absl::StatusOr<TransformResult> TransformWeightReference(const WeightView& weight,
                                                         const TransformConfig& config,
                                                         const BranchSink& sink);

// A 1-D bias split by its own k-means into three disjoint parts summing to it. Returns one
// part (the bias itself) when it has < 3 distinct values.
std::vector<std::vector<float>> SplitBias(absl::Span<const float> bias);

}  // namespace sq

#endif  // SQ_CORE_WEIGHT_TRANSFORM_H_
