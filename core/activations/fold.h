// Folding per-channel affine ops into the layer before them, for full-integer output (the
// pre-processing every static quantizer does): a BatchNormalization (inference form), or a
// Mul / Add by a constant that is a scalar or one value per output channel, whose input is
// the output of a Conv / ConvTranspose (group 1) / Gemm with constant weights read by nothing
// else, becomes part of that layer's weight and bias:
//
//   BatchNormalization  W'[c] = W[c] * g[c],  b'[c] = (b[c] - mean[c]) * g[c] + beta[c],
//                       g[c] = scale[c] / sqrt(var[c] + epsilon)
//   Mul by s            W'[c] = W[c] * s[c], b'[c] = b[c] * s[c]
//   Add t               b'[c] = b[c] + t[c]
//
// repeated while a fold applies. The function is unchanged up to float rounding; the graph
// loses the ops, and with them tensors that would each need an activation range and a
// Q/DQ pair in front of an integer kernel.
#ifndef SQ_CORE_ACTIVATIONS_FOLD_H_
#define SQ_CORE_ACTIVATIONS_FOLD_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "onnx/onnx_pb.h"

namespace sq {

struct FoldResult {
  int batch_norms = 0;
  int muls = 0;
  int adds = 0;
  // What a folded BatchNormalization said about its output, carried through later folds
  // (y = s*x + t): per channel mean and standard deviation of the layer's (new) output,
  // by tensor name. The data-free estimate uses it for the layer that absorbed the norm.
  struct Stats {
    std::vector<float> mean, sd;
  };
  std::map<std::string, Stats> output_stats;
};

// `read` returns the FP32 values and dims of a constant (initializer or Constant node) or
// an error when it is not one.
absl::StatusOr<FoldResult> FoldAffineIntoLayers(
    onnx::GraphProto* graph,
    const std::function<absl::StatusOr<std::vector<float>>(const std::string& name,
                                                           std::vector<int64_t>* dims)>& read);

// HardSwish written out as x * Clip(x + 3, 0, 6) / 6 (what many exporters emit for opsets
// before 14) becomes HardSwish(x) at `opset` >= 14, else x * HardSigmoid(x) (alpha 1/6,
// beta 0.5; opset 6): the same function in one or two ops instead of four, which matters
// where each op between integer kernels runs in float. Returns how many were rewritten.
// `read` as above (for the scalar constants).
absl::StatusOr<int> FuseHardSwish(
    onnx::GraphProto* graph, int opset,
    const std::function<absl::StatusOr<std::vector<float>>(const std::string& name,
                                                           std::vector<int64_t>* dims)>& read);

}  // namespace sq

#endif  // SQ_CORE_ACTIVATIONS_FOLD_H_
