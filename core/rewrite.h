// Graph surgery for SplitQuant (internal to the engine).
//
// Planning creates, for each selected weight group, the output tensors (codes or FP32
// branches, scales, zero points, bias parts) with their final names, types and dims but
// no data yet, and records the nodes to insert. The engine then fills the data (streaming
// it to memory or to the external data file) and finally calls ApplyGraphEdits, which
// rebuilds the node lists and drops tensors nothing reads any more.
//
// Graph forms, for a split weight W = W0 + W1 + W2 (disjoint supports):
//   branches: the layer node is cloned three times, clone b reads branch b (and bias part
//             b), and Add(Add(y0, y1), y2) produces the original output name.
//   folded:   Add(Add(W0', W1'), W2') produces one weight that the original node reads.
// W_b' is DequantizeLinear(codes_b, scale_b, zero_point_b) for format qdq, an FP32
// initializer for fake (dequantized values) and split (exact branch values). An unsplit
// layer has one branch. Format fake + folded stores the summed dequantized weight.
//
// Targets ort-cpu and portable (format qdq) decode weights at session creation instead:
//   compact:  codes and cluster ids (core/transform/encode.h) are unpacked by a Gather
//             through a 256-entry byte table; `code + 2^container * id` indexes a table of
//             each channel's values (q - z_b) * s_b built from the scales and zero points
//             (GatherElements; Gather per tensor). Blocked scales or a channel axis in the
//             middle dequantize every branch (Sub / Mul, Gather expanding the blocks) and
//             pick with Equal / Where. Every op has constant inputs, so ONNX Runtime folds
//             the chain into one FP32 weight when it creates a session; an unsplit layer
//             is the same chain without the ids.
//   nbits:    (ort-cpu, RunsInMatMulNBits, form auto / branches / outer8) the MatMul
//             becomes com.microsoft.MatMulNBits: one per branch, or for outer8 (auto at
//             <= 4 bits) the middle branch plus one 8-bit kernel for both outer clusters,
//             and the Adds. ONNX Runtime runs it on its block-quantized kernels (the
//             weight stays 4/8-bit in memory). Decoding at load instead costs ORT's
//             constant folding seconds and gigabytes on a large MatMul
//             (docs/benchmarks.md), so ort-cpu decodes only what MatMulNBits cannot carry
//             or what fits the cache (Conv, Gemm, small MatMuls, 2/3/5-7 bits), unless
//             --form compact asks for it.
//   gather:   (ort-cpu, RunsInGatherBlockQuantized) a Gather on an embedding table becomes
//             com.microsoft.GatherBlockQuantized the same way (one per branch, or outer8),
//             so the table stays low-bit in memory and only gathered rows are dequantized.
#ifndef SQ_CORE_REWRITE_H_
#define SQ_CORE_REWRITE_H_

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/layers.h"
#include "core/options.h"
#include "core/transform/encode.h"
#include "core/weight_transform.h"
#include "onnx/onnx_pb.h"

namespace sq {

// How quantized codes are stored in the output (qdq format).
struct StoragePlan {
  int storage_bits = 8;      // 8, 4 or 2
  int opset = 0;             // default-domain opset of the output
  int64_t ir_version = 0;    // minimum IR version of the output
  std::string note;          // e.g. "3-bit codes stored in INT8 (no 3-bit ONNX type)"
};

// Picks storage and opset for the options and the model's opset (qdq only).
// InvalidArgument when options.target_opset cannot hold what was asked.
absl::StatusOr<StoragePlan> ChooseStorage(const QuantizeOptions& options, int model_opset);

// The transform settings of one layer under `options`: bits, symmetry, granularity (blocks
// fall back to per-channel scales on a reduction axis shorter than a block; the note says
// so), clustering, cut criterion. Encoding and storage are the caller's.
TransformConfig LayerTransformConfig(const WeightGroup& g, const QuantizeOptions& options,
                                     bool split, std::string* granularity_note);

// The options one layer is quantized with: `options` with `settings` applied.
QuantizeOptions OptionsForLayer(const QuantizeOptions& options, const LayerSettings& settings);

// ChooseStorage over the global options and every layer override: the output opset is
// the highest any of them needs (qdq only). Per layer, call ChooseStorage with the layer's
// options and target_opset set to the result's opset for its code container.
absl::StatusOr<StoragePlan> ChooseModelStorage(const QuantizeOptions& options, int model_opset);

// Whether target ort-cpu runs this layer in com.microsoft.MatMulNBits: every use reads
// the weight as MatMul's B, it has at least options.nbits_min_elements elements, and the
// kernel can carry `layout` at options.bits (NBitsCanCarry). The form is not considered.
bool RunsInMatMulNBits(const WeightGroup& g, const QuantizeOptions& options,
                       const ParamLayout& layout);

// Whether target ort-cpu runs this table in com.microsoft.GatherBlockQuantized: every use
// is a Gather of the table by rows, and the kernel can carry `layout` (GatherCanCarry).
// A tied table (also read by a Transpose for the lm_head) is decoded at load instead.
bool RunsInGatherBlockQuantized(const WeightGroup& g, const QuantizeOptions& options,
                                const ParamLayout& layout);

// The bytes PlanGroup will store for this layer (its GroupPlan::tensor_bytes) with
// `options` (a layer's own) and `split` (whether it will be split), under
// `layer_storage` (ChooseStorage for the layer, target qdq). For --bpw-budget.
int64_t LayerStoredBytes(const WeightGroup& g, const QuantizeOptions& options, bool split,
                         const StoragePlan& layer_storage);

// ONNX data type of a code tensor.
int32_t CodeDataType(int storage_bits, bool is_signed);

// How one layer's weight is stored (the report's `form`).
enum class LayerForm {
  kDq,             // DequantizeLinear per branch (target qdq), summed or not (form)
  kFloat,          // FP32 initializers (format fake / split)
  kCompact,        // codes (+ cluster ids when split) decoded at load by standard ops
  kNBits,          // com.microsoft.MatMulNBits, one per branch
  kNBitsOuter8,    // two MatMulNBits: the middle branch, and the outer clusters at 8 bits
  kGather,         // com.microsoft.GatherBlockQuantized (embedding tables), one per branch
  kGatherOuter8,   // two GatherBlockQuantized: the middle branch, the outer clusters at 8
};
const char* ToString(LayerForm f);

struct GroupPlan {
  WeightGroup* group = nullptr;
  LayerForm form = LayerForm::kDq;
  ParamLayout layout;                // where each weight's parameters are (kCompact/kNBits)
  bool outer8 = false;               // kNBits split: middle at `bits` + outer clusters at 8
  onnx::TensorProto* scale_multiplier = nullptr;  // kCompact, float16 scales: 2^exponent
  onnx::TensorProto* ids = nullptr;  // kCompact split: the cluster ids
  // Every tensor the transform fills, with its size in bytes (what the layer stores).
  std::vector<std::pair<onnx::TensorProto*, int64_t>> tensor_bytes;
  TransformConfig config;
  int num_branches = 1;
  bool split = false;
  std::string not_split_reason;
  // Output tensors per branch (only [0] for folded fake / unsplit); nullptr = unused.
  std::array<onnx::TensorProto*, 3> data{};
  std::array<onnx::TensorProto*, 3> scale{};
  std::array<onnx::TensorProto*, 3> zero_point{};
  std::vector<int64_t> param_shape;  // scale / zero point dims (same for all branches)
  bool bias_split = false;
  std::string granularity_note;      // set when the layer's granularity differs from asked
  LayerSettings settings;            // the layer's own settings (overrides applied)
  double auto_gain_db = 0;           // --split auto: split SQNR minus plain SQNR
  std::string split_decision;        // --split auto / --bpw-budget: what was measured and chosen
  int64_t budget_bytes = -1;         // --bpw-budget: the bytes the allocator counted
};

// Names and edits collected while planning; applied at the end.
// Fresh value/node names for a model: every name used anywhere in a graph and its
// subgraphs (inputs, outputs, value_info, initializers, nodes and their values) is taken;
// Make(base) returns `base`, or `base_1`, `base_2`, ... and takes it.
class UniqueNames {
 public:
  explicit UniqueNames(const onnx::GraphProto& graph) { Collect(graph); }
  std::string Make(const std::string& base);

 private:
  void Collect(const onnx::GraphProto& g);
  std::set<std::string> names_;
};

class GraphEditor {
 public:
  explicit GraphEditor(onnx::ModelProto* model);

  // Creates the plan's tensors and records its node edits. `bias_reader` returns the FP32
  // values of a bias tensor. Errors only on unreadable biases.
  absl::Status PlanGroup(GroupPlan* plan, const QuantizeOptions& options,
                         const StoragePlan& storage,
                         const std::function<absl::StatusOr<std::vector<float>>(
                             const onnx::TensorProto&)>& bias_reader);

  // Rebuilds node lists (weight producers first in their graph, layer replacements in
  // place) and removes original weights that nothing reads any more.
  absl::Status ApplyGraphEdits();

  std::string UniqueName(const std::string& base);

 private:
  onnx::TensorProto* NewInitializer(onnx::GraphProto* g, const std::string& name,
                                    int32_t data_type, const std::vector<int64_t>& dims);
  // Targets ort-cpu / portable: the compact decode chain (returns the decoded weight's
  // name) and the MatMulNBits replacement of every use.
  std::string PlanCompact(GroupPlan* plan, const QuantizeOptions& options);
  // Low-bit kernels of ONNX Runtime: MatMulNBits for MatMuls, GatherBlockQuantized for
  // tables (`gather`), one per branch (or two for outer8) summed by Adds.
  void PlanKernels(GroupPlan* plan, const QuantizeOptions& options, bool gather);
  // Appends op(inputs) to `nodes` as an unnamed decode node; returns its (new) output name.
  std::string AppendDecodeNode(std::vector<onnx::NodeProto>* nodes, const std::string& op,
                               std::vector<std::string> inputs);
  // Appends the nodes unpacking `packed` (uint8, `bits` per value, low first; or
  // kTernaryIds: five base-3 cluster ids per byte) into an INT32 tensor of `shape` holding
  // value * multiplier; returns its name.
  static constexpr int kTernaryIds = -3;
  std::string AppendUnpack(onnx::GraphProto* g, const std::string& packed, int bits,
                           int32_t multiplier, const std::vector<int64_t>& shape,
                           std::vector<onnx::NodeProto>* nodes);
  // Appends Reshape(-1), a Slice to the first n = prod(shape) values when `count` (the
  // unpacked fields, padding included) exceeds it, and Reshape(shape); returns its name.
  std::string AppendFlatten(onnx::GraphProto* g, const std::string& fields, int64_t count,
                            const std::vector<int64_t>& shape, std::vector<onnx::NodeProto>* nodes);
  std::string ConstInt32(onnx::GraphProto* g, const std::string& base, int32_t v);
  std::string ConstInt32s(onnx::GraphProto* g, const std::string& base,
                          const std::vector<int32_t>& v, const std::vector<int64_t>& dims = {});
  std::string ConstInt64s(onnx::GraphProto* g, const std::string& base,
                          const std::vector<int64_t>& v);
  // Appends Add(Add(terms[0], terms[1]), terms[2]) -> out to `nodes`.
  void AppendSumOfThree(const std::vector<std::string>& terms, const std::string& out,
                        const std::string& name_base, std::vector<onnx::NodeProto>* nodes);

  onnx::ModelProto* model_;
  UniqueNames names_;
  std::map<onnx::GraphProto*, std::vector<onnx::NodeProto>> front_nodes_;
  std::map<const onnx::NodeProto*, std::vector<onnx::NodeProto>> replacements_;
  std::set<const onnx::TensorProto*> maybe_unused_;
  std::map<const onnx::TensorProto*, std::vector<std::string>> bias_parts_;  // cache
  std::string zero_bias_name_;
  int64_t decode_values_ = 0;  // counter for short decode value names
  std::map<std::pair<onnx::GraphProto*, std::string>, std::string> consts_;  // by value text
  // Nodes and tensors taken out of the graph, kept alive: the engine reads their data.
  std::vector<std::unique_ptr<onnx::NodeProto>> graveyard_nodes_;
  std::vector<std::unique_ptr<onnx::TensorProto>> graveyard_tensors_;
};

}  // namespace sq

#endif  // SQ_CORE_REWRITE_H_
