// Structural checks of a loaded model, run before anything else looks inside it.
//
// libonnx's shape inference and checker trust what they are given: a Conv whose weight
// rank disagrees with its attributes or with its input reads past the end of a vector
// inside onnx::convPoolShapeInference (a SIGSEGV, not an exception). Everything that
// later calls into libonnx (opset conversion, inspection) therefore runs only on models
// that passed ValidateModelStructure.
//
// Thread-safe: pure function of the proto.
#ifndef SQ_CORE_VALIDATE_H_
#define SQ_CORE_VALIDATE_H_

#include "absl/status/status.h"
#include "onnx/onnx_pb.h"

namespace sq {

// Deepest nesting of subgraphs (If/Loop/Scan bodies) accepted.
inline constexpr int kMaxSubgraphDepth = 64;
// Highest rank accepted for a Conv/ConvTranspose weight (3 = 1-D conv; 5 = 3-D conv).
inline constexpr int kMaxConvRank = 8;
// Newest IR version accepted (ONNX 1.18's).
inline constexpr int64_t kMaxIrVersion = 11;

// OK, or InvalidArgument naming the node (or tensor, or graph) and what is wrong with it:
//  - ir_version above kMaxIrVersion;
//  - names: a node input that nothing defines, or that a later node produces (a cycle or
//    nodes out of topological order; a self-loop); a name defined twice in one graph
//    (node outputs, inputs, initializers); a graph output nothing produces; a node whose
//    domain is not among the opset imports; nameless inputs or initializers;
//  - tensors (initializers, Constant values): unknown data type, negative dims, more than
//    2^50 elements, raw and typed data both set, raw_data not the size its dims need;
//  - subgraphs nested deeper than kMaxSubgraphDepth;
//  - Conv / ConvTranspose: a constant weight (initializer or Constant node, in the node's
//    graph or an outer one) of rank outside [3, kMaxConvRank]; `kernel_shape`,
//    `strides`, `dilations`, `output_padding`, `output_shape` whose length is not
//    rank - 2, `pads` whose length is not 2 * (rank - 2), negative pads, strides or
//    dilations < 1, a `kernel_shape` different from the weight's spatial dims, `group`
//    < 1 or not dividing the weight's first dim; a graph input feeding X whose declared
//    rank differs from the weight's;
//  - a constant Conv weight that is not given at all.
absl::Status ValidateModelStructure(const onnx::ModelProto& model);

}  // namespace sq

#endif  // SQ_CORE_VALIDATE_H_
