// Data-free activation ranges: an estimate of each tensor's span from the graph alone, for
// a user with no calibration data. Forward through the main graph in order, each tensor gets
// a per-tensor range and, where the graph says more, per-channel ones (axis 1):
//
//   graph input       the range the user declares (QuantizeOptions::input_ranges); else
//                     unknown
//   BatchNormalization  output channel c ~ N(B[c], scale[c]^2): B[c] +- k |scale[c]|; and
//                     the tensor it normalizes ~ N(mean[c], var[c] + eps): mean +- k sd
//                     (BatchNorm's running statistics describe its input)
//   Conv / ConvTranspose / MatMul / Gemm with constant weight W and known input [lo, hi]:
//                     inputs modelled as independent, uniform on [lo, hi]; output channel c
//                     ~ mean m*sum(W_c) + b_c, sd sqrt(v*sum(W_c^2)), m = (lo+hi)/2,
//                     v = (hi-lo)^2/12; mean +- k sd, kept inside the exact interval bound
//   Relu, LeakyRelu, PRelu, Clip, Sigmoid, Tanh, HardSigmoid, HardSwish, Softplus, Elu,
//   Gelu, Erf, Exp (monotone or with a known minimum): applied to the ends of the range
//   Add, Sub, Mul, Div by a constant or two known ranges: interval arithmetic
//   Identity, Reshape, Flatten, Transpose, (Un)Squeeze, pooling, Resize, Pad, Slice,
//   Split, Gather on data, Concat, Dropout, Cast to float, ReduceMean/Max/Min: the range
//   (the union for Concat; 0 and the pad value included for Pad)
//
// k = the standard normal quantile of the calibration percentile (99.99 -> 3.72; 4.5 for
// minmax): the same tail the percentile method clips. Anything else is unknown, and so is
// every tensor computed from an unknown one.
#ifndef SQ_CORE_ACTIVATIONS_DATA_FREE_H_
#define SQ_CORE_ACTIVATIONS_DATA_FREE_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/activations/calibration.h"
#include "core/activations/constants.h"
#include "core/options.h"
#include "onnx/onnx_pb.h"

namespace sq {

// Every tensor the rules reach. Never fails; see RequireRanges. `seeds` are ranges known
// from elsewhere (a BatchNormalization folded into its layer, activations/fold.h), used
// for those tensors instead of the rules.
std::map<std::string, TensorRange> EstimateRanges(const onnx::GraphProto& graph,
                                                  const std::vector<QuantizeOptions::InputRange>& inputs,
                                                  double k, ConstantTable* constants,
                                                  const std::map<std::string, TensorRange>& seeds = {});

// The Gaussian tail multiplier for a percentile in (50, 100); `fallback` at 100.
double NormalQuantile(double percentile, double fallback = 4.5);

// InvalidArgument naming the first of `needed` that `ranges` lacks, the op that makes it
// and what would give it a range (--input-range for a graph input, --calibration else).
absl::Status RequireRanges(const onnx::GraphProto& graph, const std::vector<std::string>& needed,
                           const std::map<std::string, TensorRange>& ranges);

}  // namespace sq

#endif  // SQ_CORE_ACTIVATIONS_DATA_FREE_H_
