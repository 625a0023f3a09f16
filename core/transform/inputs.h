// The transform's inputs: validation of a weight view and config, the finiteness scans,
// and the index maps / parameter layout that every later stage reads.
//
//   ValidateInputs  : the InvalidArgument errors of TransformWeight's contract (shape,
//                     axes, bits, block size, storage bits); data is not read.
//   AnyNonFinite    : whether a segment holds a NaN / Inf (SSE2 + scalar tail).
//   FirstNonFinite  : the smallest index of a NaN / Inf, scanned in kSubChunk chunks on
//                     `parallel_for`; the answer does not depend on scheduling.
//   SliceMap/UnitMap: element -> quantization slice / clustering unit.
//   ParamsLayout    : a branch's DequantizeLinear parameter shape (scales still empty).
//   EncodedBytes    : bytes of n encoded elements under the config's encoding.
//
// Pure functions, thread-safe. Internal to the engine.
#ifndef SQ_CORE_TRANSFORM_INPUTS_H_
#define SQ_CORE_TRANSFORM_INPUTS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "core/transform/index_map.h"
#include "core/weight_transform.h"

namespace sq {
namespace transform {

absl::Status ValidateInputs(const WeightView& w, const TransformConfig& c);

// True when x[0, len) holds a NaN or Inf: FirstNonFinite's per-chunk test. (The range
// pass checks finiteness inside its own min/max loop instead: ranges.h.)
bool AnyNonFinite(const float* x, int64_t len);

// First non-finite element, or -1. Chunked so the scan can run in parallel; the answer is
// the minimum index, independent of scheduling.
int64_t FirstNonFinite(const float* data, int64_t n, const ParallelFor& parallel_for);

// InvalidArgument "weight: non-finite value at element <FirstNonFinite>".
absl::Status NonFiniteError(const float* data, int64_t n, const ParallelFor& parallel_for);

IndexMap SliceMap(const WeightView& w, const TransformConfig& c);

IndexMap UnitMap(const WeightView& w, const TransformConfig& c);

BranchParams ParamsLayout(const WeightView& w, const TransformConfig& c);

int64_t EncodedBytes(int64_t n, const TransformConfig& c);

}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_INPUTS_H_
