// SplitQuant's activation split (QuantizeOptions::split_activations): an elementwise
// activation runs on three groups of its tensor's channels (axis 1), so that a per-tensor
// quantizer gives each group its own scale. The FP32 function is unchanged.
//
// What is an activation. A connected set of elementwise nodes that reads one tensor X (and
// scalar constants) and hands exactly one tensor Y to the rest of the graph: Relu, Clip,
// Sigmoid, Tanh, LeakyRelu, HardSigmoid, HardSwish, Gelu, Elu, Softplus alone, and the
// decomposed patterns built of those with Mul/Add/Sub/Div/Erf/Pow by scalars or by X
// itself (SiLU x*sigmoid(x), GELU 0.5x(1+erf(x/sqrt2)) and its tanh form, x*relu6(x+3)/6).
//
// The rewrite. The groups are made as early and kept as long as the graph allows, so that
// every quantized tensor along the way has its own per-group scale:
//   - X's groups: when X is made only for the activation by a group-1 Conv or a Gemm with
//     constant weights, that layer is cut by output channels (W[idx_g], B[idx_g]) and makes
//     X_g itself; by a depthwise Conv, that layer runs per group on Gather(input, idx_g);
//     when X is already in groups (a depthwise layer taken apart by the site before), those
//     groups and their grouping are kept; otherwise X_g = Gather(X, idx_g, axis 1).
//   - A copy of the activation per group gives Y_g.
//   - A depthwise Conv reading Y runs per group on Y_g (W[idx_g], B[idx_g], group |idx_g|),
//     and its outputs stay in groups for the next site.
//   - Any other reader (a group-1 Conv, a Gemm, an Add, a graph output) gets Y back as
//     Concat(Y_0, Y_1, Y_2) (and a Gather restoring the channel order when the groups are
//     not runs): its input is one tensor again, with one scale.
// New layer ops are discovered and quantized like the model's own.
//
// Grouping. kPositional: three runs of channels in order (sizes differ by at most one),
// the paper's V1 code. kRange: channels sorted by the span of their range and cut into the
// three runs that minimise sum over groups of |g| * span(g)^2 (the quantization noise
// energy of a per-tensor quantizer over the group: its step is span / 255); channel
// ranges come from calibration or the data-free estimate. A site is split under kRange only
// where the groups lower the per-tensor quantization noise energy (sum of elements x
// span^2) by at least kActivationSplitMinGainDb; the report says by how much either way. An activation whose channel count
// or ranges are unknown, or that has fewer than 3 channels, is left as it is (with a note).
#ifndef SQ_CORE_ACTIVATIONS_ACT_SPLIT_H_
#define SQ_CORE_ACTIVATIONS_ACT_SPLIT_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/activations/calibration.h"
#include "core/options.h"
#include "onnx/onnx_pb.h"

namespace sq {

// The least noise reduction worth the extra ops and tensors: half the noise energy.
inline constexpr double kActivationSplitMinGainDb = 3.0;

// An activation found in the graph: its input, output and nodes (indices into the graph).
struct ActivationSite {
  std::string input, output;
  std::vector<int> nodes;
  std::string name;  // the first node's name, for the report
};
std::vector<ActivationSite> FindActivationSites(const onnx::GraphProto& graph);

struct ActSplitResult {
  int activations_split = 0;
  int consumers_split = 0;
  std::vector<std::string> notes;
};

// The three groups of `channels` channels for the mode (ranges used by kRange only; a group
// is ascending channel indices). Exposed for tests.
std::vector<std::vector<int64_t>> GroupChannels(int64_t channels, ActivationSplit mode,
                                                const std::vector<float>& lo, const std::vector<float>& hi);

// Rewrites the main graph of `model`. `ranges` holds per-channel ranges of sites' inputs
// and outputs (kRange). `read_weight` returns the FP32 values of a constant tensor.
absl::StatusOr<ActSplitResult> SplitActivations(
    onnx::ModelProto* model, ActivationSplit mode, const std::map<std::string, TensorRange>& ranges,
    const std::function<absl::StatusOr<std::vector<float>>(const std::string& name,
                                                           std::vector<int64_t>* dims)>& read_weight);

}  // namespace sq

#endif  // SQ_CORE_ACTIVATIONS_ACT_SPLIT_H_
