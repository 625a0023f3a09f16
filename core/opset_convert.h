// Raising a model's default-domain ("" / "ai.onnx") opset, correctly.
//
// Relabelling the opset import is not enough: between opsets 6 and 25 several operators
// changed signature (at 7 the element-wise ops dropped their `broadcast`/`axis` attributes
// for numpy broadcasting, Gemm its `broadcast`, BatchNormalization/Dropout `is_test`),
// others too (attributes became inputs: Slice 10, Clip/Pad 11, Squeeze/Unsqueeze/
// Split/ReduceSum 13, other Reduce* 18, TopK 10, Dropout 12, ...) or semantics (Softmax,
// LogSoftmax, Hardmax at 13 stopped coercing to 2-D; Upsample was replaced by Resize).
// ConvertOpset rewrites each such node, in the main graph and every subgraph, so the
// model computes the same function at the new opset; everything else (names, value_info,
// metadata, doc strings, other domains) is left as it is.
//
// Errors: InvalidArgument when target < the model's opset or target > kMaxSupportedOpset;
// Unimplemented naming the node and op when a node cannot be carried (e.g. a Softmax on a
// tensor of unknown rank whose axis is not the last); the caller turns this into advice
// ("use --format fake or split, which keep the model's opset").
#ifndef SQ_CORE_OPSET_CONVERT_H_
#define SQ_CORE_OPSET_CONVERT_H_

#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "onnx/onnx_pb.h"

namespace sq {

inline constexpr int kMinSupportedOpset = 6;
inline constexpr int kMaxSupportedOpset = 25;

// Default-domain opset of the model (0 if it imports none).
int DefaultDomainOpset(const onnx::ModelProto& model);

// The rank of every value whose rank the model declares or ONNX shape inference (on a copy
// without weight payloads) finds, in the main graph and its subgraphs.
std::unordered_map<std::string, int> ValueRanks(const onnx::ModelProto& model);

absl::Status ConvertOpset(onnx::ModelProto* model, int target_opset);

// Ops in the model (any graph) that ConvertOpset cannot carry to `target_opset`, as
// "OpType (node name): reason" strings; empty when conversion will succeed.
std::vector<std::string> UnconvertibleOps(const onnx::ModelProto& model, int target_opset);

}  // namespace sq

#endif  // SQ_CORE_OPSET_CONVERT_H_
