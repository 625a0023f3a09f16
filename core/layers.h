// Layer discovery: which nodes of a model carry a constant weight that SplitQuant splits
// and quantizes, where that weight is stored, and how its axes are laid out.
//
// Recognised (in the main graph and every If/Loop/Scan subgraph, following ONNX's
// lexical scoping, so a subgraph node may use an outer graph's initializer):
//   MatMul         B constant, 2-D [K, N]         channel axis 1, reduction axis 0
//   Gemm           B constant, 2-D; transB=0: [K, N] (channel 1, reduction 0);
//                  transB=1: [N, K] (channel 0, reduction 1); bias C optional
//   Conv           W constant [M, C/g, k...]      channel axis 0, reduction axis 1; bias B
//   ConvTranspose  W constant [C, M/g, k...]      channel axis 1, reduction axis 0; bias B
// A weight is an initializer or the output of a Constant node (attribute `value`). A
// weight shared by several layer nodes forms one group and is processed once; nodes that
// use it in any other way (e.g. a Gather on tied embeddings) are recorded so the rewrite
// keeps the FP32 tensor for them.
#ifndef SQ_CORE_LAYERS_H_
#define SQ_CORE_LAYERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/options.h"
#include "onnx/onnx_pb.h"

namespace sq {

// Where a constant tensor is stored.
struct ConstantRef {
  onnx::TensorProto* tensor = nullptr;
  onnx::GraphProto* graph = nullptr;        // the graph that defines it
  onnx::NodeProto* constant_node = nullptr;  // non-null when it is a Constant node's value
  std::string graph_path;                    // "main", "main/<node>.<attr>", ...
};

struct LayerUse {
  onnx::NodeProto* node = nullptr;
  onnx::GraphProto* graph = nullptr;  // the graph containing `node`
  std::string graph_path;
  std::string display_name;           // node name, or "<op>#<index>" when unnamed
  int weight_input = 1;               // input index of the weight
  int bias_input = -1;                // input index of the bias (Gemm C, Conv B), or -1
  ConstantRef bias;                   // set when the bias is a constant FP32 tensor
};

struct WeightGroup {
  std::string weight_name;            // the name the layers use
  ConstantRef weight;
  std::string op_type;                // of the first layer
  std::vector<int64_t> shape;
  int channel_axis = 0;
  int reduction_axis = 0;
  bool cluster_per_channel = false;   // from options.cluster_scope and op type
  std::vector<LayerUse> uses;
  std::vector<std::string> other_consumers;  // "<op> <name>" of non-layer users
  bool selected = true;               // false: left as it is (see skip_reason)
  std::string skip_reason;
};

// Finds every layer. Groups are in a deterministic order (first use in a depth-first
// walk of the graphs). Never fails on an unsupported layer: it is listed with a
// skip_reason. Errors: InvalidArgument for an invalid exclusion regex.
absl::StatusOr<std::vector<WeightGroup>> DiscoverLayers(onnx::ModelProto* model,
                                                        const QuantizeOptions& options);

// Op histogram over all graphs (op type -> count; other domains as "domain:Op").
std::vector<std::pair<std::string, int64_t>> OpHistogram(const onnx::ModelProto& model);

// Whether a layer of `op_type` quantized with `granularity` is clustered per output
// channel (else per tensor), under options.cluster_scope (see ClusterScope::kAuto).
bool ClusterPerChannel(const QuantizeOptions& options, Granularity granularity,
                       const std::string& op_type);

// Removes from the main graph's inputs every name that is also one of its initializers
// (the IR < 4 convention) and raises the IR version to 4 when it removed any, since IR < 4
// requires initializers to be inputs. Returns the names removed, in input order.
std::vector<std::string> PromoteInitializerInputs(onnx::ModelProto* model);

}  // namespace sq

#endif  // SQ_CORE_LAYERS_H_
