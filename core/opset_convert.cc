// Opset conversion directly on the ModelProto (see opset_convert.h).
//
// Each node of the default domain is carried through every opset boundary v with
// from < v <= target, in increasing order; at each boundary the rules for that version
// rewrite the node (attribute -> input, renamed op, new/removed attributes, extra nodes).
// Everything the rules do not touch stays byte-identical: names, value_info, metadata,
// initializers (incl. external-data fields), other domains.
//
// Before anything is modified, every node is checked (CheckNode); if any node cannot be
// carried, ConvertOpset returns Unimplemented and leaves the model untouched.
#include "core/opset_convert.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "onnx/onnx_pb.h"
#include "onnx/shape_inference/implementation.h"

namespace sq {
namespace {

using onnx::AttributeProto;
using onnx::GraphProto;
using onnx::ModelProto;
using onnx::NodeProto;
using onnx::TensorProto;

bool IsDefaultDomain(const std::string& d) { return d.empty() || d == "ai.onnx"; }

// IR version of the ONNX release that introduced each opset (ONNX's versioning table).
int MinIrVersionForOpset(int opset) {
  if (opset <= 8) return 3;
  if (opset == 9) return 4;
  if (opset == 10) return 5;
  if (opset == 11) return 6;
  if (opset <= 14) return 7;
  if (opset <= 18) return 8;
  if (opset <= 20) return 9;
  if (opset <= 22) return 10;
  if (opset == 23) return 11;
  if (opset == 24) return 12;
  return 13;
}

// --- attribute helpers --------------------------------------------------------------------

const AttributeProto* FindAttr(const NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

void RemoveAttr(NodeProto* n, const std::string& name) {
  auto* attrs = n->mutable_attribute();
  for (int k = 0; k < attrs->size(); ++k) {
    if (attrs->Get(k).name() == name) {
      attrs->DeleteSubrange(k, 1);
      return;
    }
  }
}

AttributeProto* SetAttr(NodeProto* n, const std::string& name, AttributeProto::AttributeType t) {
  RemoveAttr(n, name);
  AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(t);
  return a;
}

void SetAttrInt(NodeProto* n, const std::string& name, int64_t v) {
  SetAttr(n, name, AttributeProto::INT)->set_i(v);
}
void SetAttrString(NodeProto* n, const std::string& name, const std::string& v) {
  SetAttr(n, name, AttributeProto::STRING)->set_s(v);
}

int64_t AttrInt(const NodeProto& n, const std::string& name, int64_t dflt) {
  const AttributeProto* a = FindAttr(n, name);
  return a ? a->i() : dflt;
}
std::string AttrString(const NodeProto& n, const std::string& name, const std::string& dflt) {
  const AttributeProto* a = FindAttr(n, name);
  return a ? a->s() : dflt;
}

// An attribute of a function body node that refers to the function's own attribute: its
// value is not known here.
bool IsRefAttr(const NodeProto& n, const std::string& name) {
  const AttributeProto* a = FindAttr(n, name);
  return a != nullptr && !a->ref_attr_name().empty();
}

std::string NodeLabel(const NodeProto& n) {
  return absl::StrCat(n.op_type(), " (", n.name().empty() ? "<unnamed>" : n.name(), ")");
}

// Sets input `idx` of n, padding with "" (absent optional inputs) as needed.
void SetInput(NodeProto* n, int idx, const std::string& name) {
  while (n->input_size() <= idx) n->add_input("");
  n->set_input(idx, name);
}

// --- tensors --------------------------------------------------------------------------------

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff);
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into exponent: ok
  return static_cast<uint16_t>(sign | h);
}

TensorProto Int64Tensor(const std::vector<int64_t>& v) {
  TensorProto t;
  t.set_data_type(TensorProto::INT64);
  t.add_dims(static_cast<int64_t>(v.size()));
  for (int64_t x : v) t.add_int64_data(x);
  return t;
}

// A scalar (rank 0) or 1-D tensor of floating type `dtype` (FLOAT, FLOAT16 or DOUBLE).
TensorProto FloatTensorOfType(int dtype, const std::vector<float>& v, bool scalar) {
  TensorProto t;
  t.set_data_type(dtype);
  if (!scalar) t.add_dims(static_cast<int64_t>(v.size()));
  switch (dtype) {
    case TensorProto::DOUBLE:
      for (float x : v) t.add_double_data(x);
      break;
    case TensorProto::FLOAT16:
      for (float x : v) t.add_int32_data(FloatToHalf(x));
      break;
    default:
      t.set_data_type(TensorProto::FLOAT);
      for (float x : v) t.add_float_data(x);
      break;
  }
  return t;
}

std::vector<int64_t> AttrInts(const AttributeProto& a) {
  return std::vector<int64_t>(a.ints().begin(), a.ints().end());
}

// --- analysis: ranks, element types, consumers, names -------------------------------------

struct ModelInfo {
  std::unordered_map<std::string, int> rank;
  std::unordered_map<std::string, int> elem_type;
  std::unordered_set<std::string> consumed;  // names read by any node or any graph output
  std::unordered_set<std::string> names;     // every value and node name (for uniqueness)
};

void RecordValueInfo(const onnx::ValueInfoProto& vi, ModelInfo* info) {
  if (!vi.type().has_tensor_type()) return;
  const auto& tt = vi.type().tensor_type();
  if (tt.elem_type() != 0) info->elem_type.emplace(vi.name(), tt.elem_type());
  if (tt.has_shape()) info->rank.emplace(vi.name(), tt.shape().dim_size());
}

void RecordTensor(const TensorProto& t, ModelInfo* info) {
  info->elem_type.emplace(t.name(), t.data_type());
  info->rank.emplace(t.name(), t.dims_size());
}

void CollectGraph(const GraphProto& g, ModelInfo* info);

void CollectNodes(const google::protobuf::RepeatedPtrField<NodeProto>& nodes, ModelInfo* info) {
  for (const NodeProto& n : nodes) {
    if (!n.name().empty()) info->names.insert(n.name());
    for (const auto& i : n.input()) {
      if (!i.empty()) info->consumed.insert(i);
    }
    for (const auto& o : n.output()) info->names.insert(o);
    if (n.op_type() == "Constant" && IsDefaultDomain(n.domain()) && n.output_size() == 1) {
      const AttributeProto* v = FindAttr(n, "value");
      if (v && v->has_t()) {
        info->elem_type.emplace(n.output(0), v->t().data_type());
        info->rank.emplace(n.output(0), v->t().dims_size());
      }
    }
    for (const auto& a : n.attribute()) {
      if (a.has_g()) CollectGraph(a.g(), info);
      for (const auto& sg : a.graphs()) CollectGraph(sg, info);
    }
  }
}

void CollectGraph(const GraphProto& g, ModelInfo* info) {
  for (const auto& vi : g.input()) {
    info->names.insert(vi.name());
    RecordValueInfo(vi, info);
  }
  for (const auto& vi : g.output()) {
    info->consumed.insert(vi.name());
    RecordValueInfo(vi, info);
  }
  for (const auto& vi : g.value_info()) RecordValueInfo(vi, info);
  for (const auto& t : g.initializer()) {
    info->names.insert(t.name());
    RecordTensor(t, info);
  }
  for (const auto& st : g.sparse_initializer()) info->names.insert(st.values().name());
  CollectNodes(g.node(), info);
}

// Replaces large floating payloads by nothing (dims and type kept) so that shape inference
// on the copy neither copies nor reads weights.
void StripPayloads(GraphProto* g);
void StripTensor(TensorProto* t) {
  int64_t n = 1;
  for (int64_t d : t->dims()) {
    if (d < 0 || (d != 0 && n > (int64_t{1} << 40) / d)) {  // hostile dims: saturate
      n = int64_t{1} << 40;
      break;
    }
    n *= d;
  }
  const int dt = t->data_type();
  const bool is_int = dt == TensorProto::INT64 || dt == TensorProto::INT32;
  if (is_int || n <= 64) return;
  t->clear_raw_data();
  t->clear_float_data();
  t->clear_double_data();
  t->clear_int32_data();
  t->clear_int64_data();
  t->clear_uint64_data();
}
void StripNodes(google::protobuf::RepeatedPtrField<NodeProto>* nodes) {
  for (NodeProto& n : *nodes) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_t()) StripTensor(a.mutable_t());
      if (a.has_g()) StripPayloads(a.mutable_g());
      for (auto& sg : *a.mutable_graphs()) StripPayloads(&sg);
    }
  }
}
void StripPayloads(GraphProto* g) {
  for (auto& t : *g->mutable_initializer()) StripTensor(&t);
  StripNodes(g->mutable_node());
}

// libonnx's convolution shape inference takes the kernel shape from W when the node has
// no kernel_shape attribute, then indexes it by X's rank: if the two disagree it reads
// out of bounds (SIGSEGV). On the copy handed to inference, every convolution either gets
// an explicit kernel_shape from a constant W of sane rank (then libonnx checks it against
// X and fails cleanly), or is renamed into a private domain that inference skips.
void GuardConvInference(GraphProto* g, std::map<std::string, std::vector<int64_t>> consts) {
  for (const auto& t : g->initializer()) consts[t.name()].assign(t.dims().begin(), t.dims().end());
  for (const auto& in : g->input()) {
    bool is_init = false;
    for (const auto& t : g->initializer()) is_init |= t.name() == in.name();
    if (!is_init) consts.erase(in.name());  // shadows an outer constant
  }
  for (const auto& n : g->node()) {
    if (n.op_type() != "Constant" || n.output_size() != 1) continue;
    for (const auto& a : n.attribute()) {
      if (a.name() == "value" && a.has_t()) {
        consts[n.output(0)].assign(a.t().dims().begin(), a.t().dims().end());
      }
    }
  }
  for (NodeProto& n : *g->mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) GuardConvInference(a.mutable_g(), consts);
      for (auto& sg : *a.mutable_graphs()) GuardConvInference(&sg, consts);
    }
    if (!(n.domain().empty() || n.domain() == "ai.onnx")) continue;
    int w_index = -1;
    if (n.op_type() == "Conv" || n.op_type() == "ConvTranspose" || n.op_type() == "ConvInteger") {
      w_index = 1;
    } else if (n.op_type() == "QLinearConv") {
      w_index = 3;
    }
    if (w_index < 0) continue;
    auto it = n.input_size() > w_index ? consts.find(n.input(w_index)) : consts.end();
    const bool sane = it != consts.end() && it->second.size() >= 3 && it->second.size() <= 8;
    if (!sane) {
      n.set_domain("sq.uninferred");
      continue;
    }
    bool has_kernel_shape = false;
    for (const auto& a : n.attribute()) has_kernel_shape |= a.name() == "kernel_shape";
    if (!has_kernel_shape) {
      AttributeProto* a = n.add_attribute();
      a->set_name("kernel_shape");
      a->set_type(AttributeProto::INTS);
      for (size_t i = 2; i < it->second.size(); ++i) a->add_ints(it->second[i]);
    }
  }
}

// Length of 1-D tensors whose length is known (for Reshape's output rank).
void CollectLengths(const GraphProto& g, std::unordered_map<std::string, int64_t>* len) {
  auto from_vi = [&](const onnx::ValueInfoProto& vi) {
    const auto& tt = vi.type().tensor_type();
    if (tt.has_shape() && tt.shape().dim_size() == 1 && tt.shape().dim(0).has_dim_value()) {
      len->emplace(vi.name(), tt.shape().dim(0).dim_value());
    }
  };
  for (const auto& vi : g.input()) from_vi(vi);
  for (const auto& vi : g.value_info()) from_vi(vi);
  for (const auto& vi : g.output()) from_vi(vi);
  for (const auto& t : g.initializer()) {
    if (t.dims_size() == 1) len->emplace(t.name(), t.dims(0));
  }
  for (const auto& n : g.node()) {
    if (n.op_type() == "Constant" && n.output_size() == 1) {
      const AttributeProto* v = FindAttr(n, "value");
      if (v && v->has_t() && v->t().dims_size() == 1) len->emplace(n.output(0), v->t().dims(0));
    }
  }
}

// Fills in ranks that shape inference left unknown (e.g. Reshape with a computed shape),
// for the ops that lead to Softmax-like nodes in real models. Nodes are in topological order.
void PropagateRanks(const GraphProto& g, ModelInfo* info) {
  std::unordered_map<std::string, int64_t> len;
  CollectLengths(g, &len);
  auto rank_of = [&](const std::string& name) -> int {
    auto it = info->rank.find(name);
    return it == info->rank.end() ? -1 : it->second;
  };
  static const std::unordered_set<std::string> kSameAsInput0 = {
      "Relu", "Sigmoid", "Tanh", "Clip", "Cast", "HardSigmoid", "HardSwish", "Sqrt", "Exp",
      "Log", "Neg", "Abs", "Softmax", "LogSoftmax", "Hardmax", "Dropout", "Identity",
      "BatchNormalization", "LeakyRelu", "Elu", "Selu", "PRelu", "Erf", "Softplus", "Floor",
      "Ceil", "Round", "Reciprocal", "Transpose", "Conv", "ConvTranspose", "MaxPool",
      "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN", "InstanceNormalization",
      "LayerNormalization", "Slice", "Pad", "Resize", "Upsample", "Tile", "Concat", "Not",
      "Sin", "Cos", "CumSum", "Expand", "Gelu", "Mish"};
  static const std::unordered_set<std::string> kBroadcast = {
      "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less",
      "Greater", "And", "Or", "Xor", "Where", "Mod", "LessOrEqual", "GreaterOrEqual"};
  for (const NodeProto& n : g.node()) {
    if (!IsDefaultDomain(n.domain()) || n.output_size() == 0 || n.input_size() == 0) continue;
    const std::string& op = n.op_type();
    int r = -1;
    if (info->rank.count(n.output(0))) {
      // Known already.
    } else if (kSameAsInput0.count(op)) {
      r = rank_of(n.input(0));
    } else if (kBroadcast.count(op)) {
      r = 0;
      for (const auto& i : n.input()) {
        const int ri = rank_of(i);
        if (ri < 0) {
          r = -1;
          break;
        }
        r = std::max(r, ri);
      }
    } else if (op == "MatMul" && n.input_size() == 2) {
      const int a = rank_of(n.input(0)), b = rank_of(n.input(1));
      if (a >= 1 && b >= 1) r = a == 1 && b == 1 ? 0 : a == 1 ? b - 1 : b == 1 ? a - 1 : std::max(a, b);
    } else if (op == "Reshape" && n.input_size() == 2) {
      auto it = len.find(n.input(1));
      if (it != len.end()) r = static_cast<int>(it->second);
    } else if (op == "Flatten" || op == "Gemm") {
      r = 2;
    } else if (op == "Shape") {
      r = 1;
    } else if ((op == "Squeeze" || op == "Unsqueeze") && FindAttr(n, "axes") != nullptr) {
      const int ri = rank_of(n.input(0));
      const int k = FindAttr(n, "axes")->ints_size();
      if (ri >= 0) r = op == "Squeeze" ? ri - k : ri + k;
    } else if (op.rfind("Reduce", 0) == 0 || op == "ArgMax" || op == "ArgMin") {
      const int ri = rank_of(n.input(0));
      const bool keep = AttrInt(n, "keepdims", 1) != 0;
      const AttributeProto* axes = FindAttr(n, "axes");
      if (ri >= 0) {
        if (keep) {
          r = ri;
        } else if (op == "ArgMax" || op == "ArgMin") {
          r = ri - 1;
        } else if (axes != nullptr) {
          r = ri - axes->ints_size();
        } else if (n.input_size() == 1) {
          r = 0;
        }
      }
    }
    if (r >= 0) info->rank.emplace(n.output(0), r);

    // Lengths of 1-D shape tensors (Shape -> Cast -> Slice -> Concat -> Reshape chains).
    if (len.count(n.output(0))) continue;
    int64_t l = -1;
    auto len_of = [&](const std::string& name) -> int64_t {
      auto it = len.find(name);
      return it == len.end() ? -1 : it->second;
    };
    if (op == "Shape" && FindAttr(n, "start") == nullptr && FindAttr(n, "end") == nullptr) {
      l = rank_of(n.input(0));
    } else if (op == "Cast" || op == "Identity" || op == "Neg" || op == "Abs") {
      l = len_of(n.input(0));
    } else if (op == "Concat" && rank_of(n.output(0)) == 1) {
      l = 0;
      for (const auto& i : n.input()) {
        const int64_t li = len_of(i);
        if (li < 0) {
          l = -1;
          break;
        }
        l += li;
      }
    } else if (op == "Unsqueeze" && rank_of(n.input(0)) == 0) {
      l = 1;
    } else if (op == "Slice" && n.input_size() == 1 && FindAttr(n, "starts") &&
               FindAttr(n, "ends")) {
      const int64_t li = len_of(n.input(0));
      const auto& st = FindAttr(n, "starts")->ints();
      const auto& en = FindAttr(n, "ends")->ints();
      if (li >= 0 && st.size() == 1 && en.size() == 1) {
        auto clamp = [&](int64_t v) {
          if (v < 0) v += li;
          return std::max<int64_t>(0, std::min<int64_t>(v, li));
        };
        l = std::max<int64_t>(0, clamp(en.Get(0)) - clamp(st.Get(0)));
      }
    }
    if (l >= 0) {
      len.emplace(n.output(0), l);
      info->rank.emplace(n.output(0), 1);
    }
  }
}

ModelInfo AnalyzeModel(const ModelProto& model) {
  ModelInfo info;
  CollectGraph(model.graph(), &info);
  for (const auto& f : model.functions()) {
    for (const auto& i : f.input()) info.names.insert(i);
    CollectNodes(f.node(), &info);
  }
  // Shape inference on a light copy fills in ranks for intermediate values.
  try {
    ModelProto copy;
    copy.set_ir_version(model.ir_version());
    *copy.mutable_opset_import() = model.opset_import();
    *copy.mutable_functions() = model.functions();
    *copy.mutable_graph() = model.graph();
    StripPayloads(copy.mutable_graph());
    GuardConvInference(copy.mutable_graph(), {});
    for (auto& f : *copy.mutable_functions()) {  // weights there are parameters: never trusted
      for (NodeProto& n : *f.mutable_node()) {
        if (absl::StrContains(n.op_type(), "Conv")) n.set_domain("sq.uninferred");
      }
    }
    onnx::ShapeInferenceOptions opts;
    opts.check_type = false;
    opts.error_mode = 0;
    opts.enable_data_propagation = false;
    onnx::shape_inference::InferShapes(copy, onnx::OpSchemaRegistry::Instance(), opts);
    ModelInfo inferred;
    CollectGraph(copy.graph(), &inferred);
    for (const auto& [k, v] : inferred.rank) info.rank.emplace(k, v);
    for (const auto& [k, v] : inferred.elem_type) info.elem_type.emplace(k, v);
    PropagateRanks(copy.graph(), &info);
    return info;
  } catch (const std::exception&) {
    // Ranks stay what value_info declares.
  }
  PropagateRanks(model.graph(), &info);
  return info;
}

// --- per-node conversion ----------------------------------------------------------------------

const char* const kRemovedExperimentalOps[] = {
    "ATen",  "Affine",    "ConstantFill", "Crop",  "DynamicSlice", "GRUUnit", "GivenTensorFill",
    "ImageScaler", "ParametricSoftplus", "Scale", "ScaledTanh"};

// Ops that took numpy-incompatible `broadcast` / `axis` attributes until opset 6 and
// multidirectional (numpy) broadcasting from opset 7.
const char* const kLegacyBroadcastOps[] = {"Add", "Sub", "Mul", "Div", "Pow", "And",
                                           "Or",  "Xor", "Equal", "Greater", "Less"};

const char* const kReduce18Ops[] = {"ReduceMax",  "ReduceMin",    "ReduceMean",
                                    "ReduceProd", "ReduceL1",     "ReduceL2",
                                    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"};

bool IsOneOf(const std::string& s, const char* const* begin, const char* const* end) {
  for (auto p = begin; p != end; ++p) {
    if (s == *p) return true;
  }
  return false;
}

// Attributes that become inputs at some boundary, per op (for the ref-attr check in
// function bodies).
std::vector<std::string> AttrsBecomingInputs(const std::string& op, int from, int to) {
  std::vector<std::string> r;
  auto crosses = [&](int v) { return from < v && v <= to; };
  if (crosses(9) && op == "Upsample") r = {"scales"};
  if (crosses(10) && op == "Slice") r = {"starts", "ends", "axes"};
  if (crosses(10) && op == "TopK") r = {"k"};
  if (crosses(11) && op == "Clip") r = {"min", "max"};
  if (crosses(11) && op == "Pad") r = {"pads", "value"};
  if (crosses(12) && op == "Dropout") r = {"ratio"};
  if (crosses(13) && (op == "Squeeze" || op == "Unsqueeze" || op == "ReduceSum")) r = {"axes"};
  if (crosses(13) && op == "Split") r = {"split"};
  if (crosses(13) && (op == "Softmax" || op == "LogSoftmax" || op == "Hardmax")) r = {"axis"};
  if (crosses(18) && IsOneOf(op, std::begin(kReduce18Ops), std::end(kReduce18Ops))) r = {"axes"};
  if (crosses(20) && op == "DFT") r = {"axis"};
  return r;
}

// Returns "" if `n` (a default-domain node at opset `from`) can be carried to `to`, else
// the reason.
std::string CheckNode(const NodeProto& n, int from, int to, const ModelInfo& info,
                      bool in_function) {
  const std::string& op = n.op_type();
  auto crosses = [&](int v) { return from < v && v <= to; };
  for (const auto& a : AttrsBecomingInputs(op, from, to)) {
    if (IsRefAttr(n, a)) {
      return absl::StrCat("attribute '", a, "' refers to a function attribute");
    }
  }
  if (crosses(7) && IsOneOf(op, std::begin(kLegacyBroadcastOps), std::end(kLegacyBroadcastOps)) &&
      AttrInt(n, "broadcast", 0) != 0 && FindAttr(n, "axis") != nullptr) {
    // B is aligned to A at `axis`; at opset 7 numpy aligns trailing dimensions, which
    // needs both ranks to carry (B gets trailing 1s by an Unsqueeze).
    if (in_function || n.input_size() < 2 || !info.rank.count(n.input(0)) || !info.rank.count(n.input(1))) {
      return "opset-6 broadcast along an axis on inputs of unknown rank cannot be carried to "
             "opset 7's numpy broadcasting";
    }
    const int big = info.rank.at(n.input(0)), small = info.rank.at(n.input(1));
    int64_t axis = AttrInt(n, "axis", 0);
    if (axis < 0) axis += big;
    if (axis < 0 || axis + small > big) return "opset-6 broadcast axis out of range";
  }
  if (crosses(7) && op == "PRelu") {
    // PRelu-6 shared a size-1 slope or took one of X's shape; 7 broadcasts numpy-style,
    // which agrees only for a scalar slope or equal ranks.
    const bool known = !in_function && n.input_size() > 1 && info.rank.count(n.input(0)) &&
                       info.rank.count(n.input(1));
    if (!known || (info.rank.at(n.input(1)) != 0 && info.rank.at(n.input(1)) != info.rank.at(n.input(0)))) {
      return "PRelu-6 slope whose broadcast differs at opset 7 (not a scalar, not X's rank)";
    }
  }
  if (crosses(7) && op == "Upsample") {
    return "experimental Upsample-1 (height_scale/width_scale) has no rewrite to Upsample-7";
  }
  if (crosses(10) && IsOneOf(op, std::begin(kRemovedExperimentalOps),
                             std::end(kRemovedExperimentalOps))) {
    return "experimental op removed from the default domain at opset 10";
  }
  if (crosses(9) && op == "Scan") {
    return "Scan-8 (batched, sequence_lens) has no equivalent rewrite to Scan-9";
  }
  if (crosses(9) && op == "BatchNormalization" && AttrInt(n, "spatial", 1) != 1) {
    return "BatchNormalization with spatial=0 has no equivalent at opset 9+";
  }
  if (crosses(14) && op == "BatchNormalization") {
    for (int k = 1; k < n.output_size(); ++k) {
      if (!n.output(k).empty() && info.consumed.count(n.output(k))) {
        return "training-mode outputs (mean/var/saved_*) are used; only inference "
               "BatchNormalization can be carried to opset 14+";
      }
    }
  }
  if (crosses(10) && op == "Dropout" && n.output_size() > 1 && !n.output(1).empty() &&
      info.consumed.count(n.output(1))) {
    return "Dropout mask output is used and changes type (T -> bool) at opset 10";
  }
  if (crosses(13) && (op == "Softmax" || op == "LogSoftmax" || op == "Hardmax")) {
    const int64_t axis = AttrInt(n, "axis", 1);
    const bool rank_known = !in_function && info.rank.count(n.input(0)) > 0;
    if (!rank_known && axis != -1) {
      return absl::StrCat("input rank unknown and axis=", axis,
                          " may not be the last axis: the opset-13 change of semantics "
                          "(no more 2-D coercion) cannot be carried");
    }
  }
  if (crosses(21) && op == "GroupNormalization") {
    return "GroupNormalization-18 scale/bias are per group; opset 21 expects per channel";
  }
  return "";
}

// Where a node's new constants and helper nodes go.
struct GraphSink {
  GraphProto* graph = nullptr;  // the graph being rewritten (null in a function body)
  bool is_main = false;         // constants become initializers (else Constant nodes)
  bool in_function = false;     // value names are function-local: no rank information
  int64_t ir_version = 8;
  int target = 0;               // the opset being converted to (forms of inserted nodes)
  ModelInfo* info = nullptr;
  int* counter = nullptr;
  std::vector<NodeProto> pre;   // nodes to insert before the current node
  std::vector<NodeProto> post;  // nodes to insert after it

  std::string Unique(const std::string& base) {
    std::string name = base;
    while (info->names.count(name)) name = absl::StrCat(base, "_", (*counter)++);
    info->names.insert(name);
    return name;
  }

  // Adds a constant tensor and returns its (unique) name.
  std::string AddConst(const std::string& base, TensorProto t) {
    const std::string name = Unique(base);
    if (is_main) {
      t.set_name(name);
      if (ir_version < 4) {
        auto* vi = graph->add_input();
        vi->set_name(name);
        auto* tt = vi->mutable_type()->mutable_tensor_type();
        tt->set_elem_type(t.data_type());
        auto* sh = tt->mutable_shape();
        for (int64_t d : t.dims()) sh->add_dim()->set_dim_value(d);
      }
      *graph->add_initializer() = std::move(t);
    } else {
      NodeProto c;
      c.set_op_type("Constant");
      c.set_name(Unique(name + "_const"));
      c.add_output(name);
      AttributeProto* a = c.add_attribute();
      a->set_name("value");
      a->set_type(AttributeProto::TENSOR);
      *a->mutable_t() = std::move(t);
      pre.push_back(std::move(c));
    }
    return name;
  }
};

std::string BaseName(const NodeProto& n, const std::string& what) {
  const std::string& stem = n.name().empty() ? (n.output_size() ? n.output(0) : n.op_type())
                                             : n.name();
  return absl::StrCat(stem, "_", what);
}

int FloatTypeOf(const std::string& value, const ModelInfo& info) {
  auto it = info.elem_type.find(value);
  if (it == info.elem_type.end()) return TensorProto::FLOAT;
  return it->second;
}

// Moves an INTS attribute to input `idx` as an int64 1-D constant (if the attribute exists).
void IntsAttrToInput(NodeProto* n, const std::string& attr, int idx, GraphSink* sink) {
  const AttributeProto* a = FindAttr(*n, attr);
  if (a == nullptr) return;
  std::string name = sink->AddConst(BaseName(*n, attr), Int64Tensor(AttrInts(*a)));
  RemoveAttr(n, attr);
  SetInput(n, idx, name);
}

// Applies the rules of boundary `v` (the node is at opset v-1, goes to v).
void ApplyBoundary(NodeProto* n, int v, GraphSink* sink) {
  const std::string op = n->op_type();
  ModelInfo& info = *sink->info;
  switch (v) {
    case 7:
      if (op == "Gemm") {
        RemoveAttr(n, "broadcast");  // C broadcasts unidirectionally at 7; equal shapes still work
      } else if (op == "BatchNormalization" || op == "Dropout") {
        RemoveAttr(n, "is_test");
      } else if (op == "RNN" || op == "GRU" || op == "LSTM") {
        RemoveAttr(n, "output_sequence");  // Y is optional by presence from 7 on
      } else if (IsOneOf(op, std::begin(kLegacyBroadcastOps), std::end(kLegacyBroadcastOps))) {
        const bool broadcast = AttrInt(*n, "broadcast", 0) != 0;
        const bool has_axis = FindAttr(*n, "axis") != nullptr;
        const int64_t axis_attr = AttrInt(*n, "axis", 0);
        RemoveAttr(n, "broadcast");
        RemoveAttr(n, "axis");
        // No axis: B matched A's trailing dimensions, which numpy does too. With an axis,
        // B's dimensions start there: append 1s so numpy aligns them the same way
        // (CheckNode made sure both ranks are known).
        if (broadcast && has_axis && n->input_size() >= 2) {
          const int big = info.rank.at(n->input(0)), small = info.rank.at(n->input(1));
          const int64_t axis = axis_attr < 0 ? axis_attr + big : axis_attr;
          const int64_t ones = big - axis - small;
          if (ones > 0) {
            std::vector<int64_t> axes;
            for (int64_t k = 0; k < ones; ++k) axes.push_back(small + k);
            NodeProto u;
            u.set_op_type("Unsqueeze");
            u.set_name(sink->Unique(BaseName(*n, "align")));
            u.add_input(n->input(1));
            const std::string out = sink->Unique(BaseName(*n, "aligned"));
            u.add_output(out);
            if (sink->target >= 13) {
              u.add_input(sink->AddConst(BaseName(*n, "align_axes"), Int64Tensor(axes)));
            } else {
              AttributeProto* a = u.add_attribute();
              a->set_name("axes");
              a->set_type(AttributeProto::INTS);
              for (int64_t x : axes) a->add_ints(x);
            }
            info.rank[out] = static_cast<int>(small + ones);
            sink->pre.push_back(std::move(u));
            SetInput(n, 1, out);
          }
        }
      }
      break;
    case 9:
      if (op == "BatchNormalization") RemoveAttr(n, "spatial");
      if (op == "Upsample") {
        const AttributeProto* a = FindAttr(*n, "scales");
        if (a != nullptr) {
          std::vector<float> s(a->floats().begin(), a->floats().end());
          std::string name =
              sink->AddConst(BaseName(*n, "scales"), FloatTensorOfType(TensorProto::FLOAT, s,
                                                                       /*scalar=*/false));
          RemoveAttr(n, "scales");
          SetInput(n, 1, name);
        }
      }
      break;
    case 10:
      if (op == "Slice") {
        IntsAttrToInput(n, "starts", 1, sink);
        IntsAttrToInput(n, "ends", 2, sink);
        IntsAttrToInput(n, "axes", 3, sink);
      } else if (op == "TopK") {
        const int64_t k = AttrInt(*n, "k", 0);
        RemoveAttr(n, "k");
        SetInput(n, 1, sink->AddConst(BaseName(*n, "k"), Int64Tensor({k})));
      } else if (op == "Upsample") {
        n->set_op_type("Resize");
        if (FindAttr(*n, "mode") == nullptr) SetAttrString(n, "mode", "nearest");
      } else if (op == "Dropout") {
        if (n->output_size() > 1 && !info.consumed.count(n->output(1))) {
          n->mutable_output()->RemoveLast();
        }
      }
      break;
    case 11:
      if (op == "Scatter") {
        n->set_op_type("ScatterElements");
      } else if (op == "Resize") {
        // Resize-10 (and Upsample) sample with the asymmetric transform and, for nearest,
        // floor; Resize-11 defaults to half_pixel / round_prefer_floor.
        std::vector<std::string> ins(n->input().begin(), n->input().end());
        ins.resize(2);
        std::string roi = sink->AddConst(BaseName(*n, "roi"),
                                         FloatTensorOfType(TensorProto::FLOAT, {}, false));
        n->clear_input();
        n->add_input(ins[0]);
        n->add_input(roi);
        n->add_input(ins[1]);
        SetAttrString(n, "coordinate_transformation_mode", "asymmetric");
        if (AttrString(*n, "mode", "nearest") == "nearest") {
          SetAttrString(n, "nearest_mode", "floor");
        }
      } else if (op == "Clip") {
        const int dt = FloatTypeOf(n->input(0), info);
        const AttributeProto* mn = FindAttr(*n, "min");
        const AttributeProto* mx = FindAttr(*n, "max");
        std::string min_name, max_name;
        if (mn) min_name = sink->AddConst(BaseName(*n, "min"), FloatTensorOfType(dt, {mn->f()}, true));
        if (mx) max_name = sink->AddConst(BaseName(*n, "max"), FloatTensorOfType(dt, {mx->f()}, true));
        RemoveAttr(n, "min");
        RemoveAttr(n, "max");
        if (!min_name.empty()) SetInput(n, 1, min_name);
        if (!max_name.empty()) SetInput(n, 2, max_name);
      } else if (op == "Pad") {
        const AttributeProto* pads = FindAttr(*n, "pads");
        std::vector<int64_t> p = pads ? AttrInts(*pads) : std::vector<int64_t>{};
        SetInput(n, 1, sink->AddConst(BaseName(*n, "pads"), Int64Tensor(p)));
        RemoveAttr(n, "pads");
        const AttributeProto* value = FindAttr(*n, "value");
        if (value != nullptr) {
          if (value->f() != 0.0f && AttrString(*n, "mode", "constant") == "constant") {
            const int dt = FloatTypeOf(n->input(0), info);
            SetInput(n, 2, sink->AddConst(BaseName(*n, "value"),
                                          FloatTensorOfType(dt, {value->f()}, true)));
          }
          RemoveAttr(n, "value");
        }
      }
      break;
    case 12:
      if (op == "Dropout") {
        const AttributeProto* r = FindAttr(*n, "ratio");
        if (r != nullptr) {
          SetInput(n, 1, sink->AddConst(BaseName(*n, "ratio"),
                                        FloatTensorOfType(TensorProto::FLOAT, {r->f()}, true)));
          RemoveAttr(n, "ratio");
        }
      }
      break;
    case 13:
      if (op == "Squeeze" || op == "Unsqueeze" || op == "ReduceSum") {
        IntsAttrToInput(n, "axes", 1, sink);
      } else if (op == "Split") {
        IntsAttrToInput(n, "split", 1, sink);
      } else if (op == "Softmax" || op == "LogSoftmax" || op == "Hardmax") {
        const int64_t axis = AttrInt(*n, "axis", 1);
        auto it = sink->in_function ? info.rank.end() : info.rank.find(n->input(0));
        // CheckNode guarantees: rank known, or axis == -1.
        const int64_t r = it == info.rank.end() ? 0 : it->second;
        const int64_t a = axis < 0 ? axis + r : axis;
        if (it == info.rank.end() || a == r - 1) {
          SetAttrInt(n, "axis", -1);
          break;
        }
        // Old semantics: coerce to 2-D [prod(d<a), prod(d>=a)], normalize the 2nd axis.
        // Shape(x) -> Flatten(x, a) -> Op(axis=-1) -> Reshape(., shape).
        const std::string x = n->input(0);
        NodeProto shape;
        shape.set_op_type("Shape");
        shape.set_name(sink->Unique(BaseName(*n, "shape")));
        shape.add_input(x);
        shape.add_output(sink->Unique(BaseName(*n, "shape_out")));
        NodeProto flat;
        flat.set_op_type("Flatten");
        flat.set_name(sink->Unique(BaseName(*n, "flatten")));
        flat.add_input(x);
        flat.add_output(sink->Unique(BaseName(*n, "flat_out")));
        SetAttrInt(&flat, "axis", a);
        NodeProto reshape;
        reshape.set_op_type("Reshape");
        reshape.set_name(sink->Unique(BaseName(*n, "reshape")));
        const std::string y = n->output(0);
        const std::string y2d = sink->Unique(BaseName(*n, "2d_out"));
        reshape.add_input(y2d);
        reshape.add_input(shape.output(0));
        reshape.add_output(y);
        n->set_input(0, flat.output(0));
        n->set_output(0, y2d);
        SetAttrInt(n, "axis", -1);
        sink->pre.push_back(std::move(shape));
        sink->pre.push_back(std::move(flat));
        sink->post.push_back(std::move(reshape));
      }
      break;
    case 14:
      if (op == "BatchNormalization") {
        while (n->output_size() > 1) n->mutable_output()->RemoveLast();
      }
      break;
    case 16:
      if (op == "RoiAlign" && FindAttr(*n, "coordinate_transformation_mode") == nullptr) {
        SetAttrString(n, "coordinate_transformation_mode", "output_half_pixel");
      }
      break;
    case 18:
      if (IsOneOf(op, std::begin(kReduce18Ops), std::end(kReduce18Ops))) {
        IntsAttrToInput(n, "axes", 1, sink);
      } else if (op == "Split") {
        const bool has_split = n->input_size() > 1 && !n->input(1).empty();
        if (!has_split && FindAttr(*n, "num_outputs") == nullptr) {
          SetAttrInt(n, "num_outputs", n->output_size());
        }
      }
      break;
    case 20:
      if (op == "GridSample") {
        const std::string mode = AttrString(*n, "mode", "bilinear");
        if (mode == "bilinear") SetAttrString(n, "mode", "linear");
        if (mode == "bicubic") SetAttrString(n, "mode", "cubic");
      } else if (op == "DFT") {
        const int64_t axis = AttrInt(*n, "axis", 1);
        RemoveAttr(n, "axis");
        SetInput(n, 2, sink->AddConst(BaseName(*n, "axis"), [&] {
                   TensorProto t;
                   t.set_data_type(TensorProto::INT64);
                   t.add_int64_data(axis);
                   return t;
                 }()));
      }
      break;
    default:
      break;
  }
}

struct Converter {
  int from;
  int to;
  int64_t ir_version;
  ModelInfo* info;
  bool in_function = false;
  int counter = 0;

  void ConvertNodes(google::protobuf::RepeatedPtrField<NodeProto>* nodes, GraphProto* graph,
                    bool is_main) {
    google::protobuf::RepeatedPtrField<NodeProto> out;
    for (NodeProto& n : *nodes) {
      // Subgraphs first (they may use any op).
      for (auto& a : *n.mutable_attribute()) {
        if (a.has_g()) ConvertGraph(a.mutable_g(), /*is_main=*/false);
        for (auto& sg : *a.mutable_graphs()) ConvertGraph(&sg, /*is_main=*/false);
      }
      GraphSink sink;
      sink.graph = graph;
      sink.is_main = is_main;
      sink.ir_version = ir_version;
      sink.target = to;
      sink.info = info;
      sink.counter = &counter;
      sink.in_function = in_function;
      if (IsDefaultDomain(n.domain())) {
        for (int v = from + 1; v <= to; ++v) ApplyBoundary(&n, v, &sink);
      }
      for (auto& p : sink.pre) *out.Add() = std::move(p);
      *out.Add() = std::move(n);
      for (auto& p : sink.post) *out.Add() = std::move(p);
    }
    nodes->Swap(&out);
  }

  void ConvertGraph(GraphProto* g, bool is_main) { ConvertNodes(g->mutable_node(), g, is_main); }
};

void CheckNodes(const google::protobuf::RepeatedPtrField<NodeProto>& nodes, int from, int to,
                const ModelInfo& info, bool in_function, std::vector<std::string>* problems);

void CheckGraph(const GraphProto& g, int from, int to, const ModelInfo& info,
                std::vector<std::string>* problems) {
  CheckNodes(g.node(), from, to, info, false, problems);
}

void CheckNodes(const google::protobuf::RepeatedPtrField<NodeProto>& nodes, int from, int to,
                const ModelInfo& info, bool in_function, std::vector<std::string>* problems) {
  for (const NodeProto& n : nodes) {
    if (IsDefaultDomain(n.domain())) {
      std::string why = CheckNode(n, from, to, info, in_function);
      if (!why.empty()) problems->push_back(absl::StrCat(NodeLabel(n), ": ", why));
    }
    for (const auto& a : n.attribute()) {
      if (a.has_g()) CheckGraph(a.g(), from, to, info, problems);
      for (const auto& sg : a.graphs()) CheckGraph(sg, from, to, info, problems);
    }
  }
}

int FunctionDefaultOpset(const onnx::FunctionProto& f) {
  for (const auto& op : f.opset_import()) {
    if (IsDefaultDomain(op.domain())) return static_cast<int>(op.version());
  }
  return 0;
}

// Model-level problems (bad target, unsupported source opset); empty when fine.
std::string ModelLevelProblem(const ModelProto& model, int target) {
  const int cur = DefaultDomainOpset(model);
  if (target > kMaxSupportedOpset) {
    return absl::StrCat("target opset ", target, " is above the supported maximum ",
                        kMaxSupportedOpset);
  }
  if (cur == 0) return "the model imports no default-domain opset";
  if (target < cur) {
    return absl::StrCat("target opset ", target, " is below the model's opset ", cur,
                        " (only upgrades are supported)");
  }
  return "";
}

std::vector<std::string> NodeProblems(const ModelProto& model, int target,
                                      const ModelInfo& info) {
  std::vector<std::string> problems;
  const int cur = DefaultDomainOpset(model);
  if (cur == target) return problems;
  if (cur < kMinSupportedOpset) {
    problems.push_back(absl::StrCat("model: opset ", cur, " is below the supported minimum ",
                                    kMinSupportedOpset));
    return problems;
  }
  CheckGraph(model.graph(), cur, target, info, &problems);
  for (const auto& f : model.functions()) {
    const int fo = FunctionDefaultOpset(f);
    if (fo == 0 || fo >= target) continue;
    CheckNodes(f.node(), fo, target, info, /*in_function=*/true, &problems);
  }
  return problems;
}

}  // namespace

std::unordered_map<std::string, int> ValueRanks(const onnx::ModelProto& model) {
  return AnalyzeModel(model).rank;
}

int DefaultDomainOpset(const onnx::ModelProto& model) {
  for (const auto& op : model.opset_import()) {
    if (IsDefaultDomain(op.domain())) return static_cast<int>(op.version());
  }
  return 0;
}

absl::Status ConvertOpset(onnx::ModelProto* model, int target_opset) {
  if (model == nullptr) return absl::InvalidArgumentError("ConvertOpset: null model");
  const std::string model_problem = ModelLevelProblem(*model, target_opset);
  if (!model_problem.empty()) return absl::InvalidArgumentError(model_problem);
  const int cur = DefaultDomainOpset(*model);
  if (cur == target_opset) return absl::OkStatus();

  ModelInfo info = AnalyzeModel(*model);
  std::vector<std::string> problems = NodeProblems(*model, target_opset, info);
  if (!problems.empty()) {
    return absl::UnimplementedError(absl::StrCat("cannot convert the model from opset ", cur,
                                                 " to ", target_opset, ": ",
                                                 absl::StrJoin(problems, "; ")));
  }

  Converter conv{cur, target_opset, model->ir_version(), &info};
  conv.ConvertGraph(model->mutable_graph(), /*is_main=*/true);
  for (auto& f : *model->mutable_functions()) {
    const int fo = FunctionDefaultOpset(f);
    if (fo == 0 || fo >= target_opset) continue;
    Converter fconv{fo, target_opset, model->ir_version(), &info};
    fconv.counter = conv.counter;
    fconv.in_function = true;
    fconv.ConvertNodes(f.mutable_node(), nullptr, /*is_main=*/false);
    conv.counter = fconv.counter;
    for (auto& op : *f.mutable_opset_import()) {
      if (IsDefaultDomain(op.domain())) op.set_version(target_opset);
    }
  }
  for (auto& op : *model->mutable_opset_import()) {
    if (IsDefaultDomain(op.domain())) op.set_version(target_opset);
  }
  const int min_ir = MinIrVersionForOpset(target_opset);
  if (model->ir_version() < min_ir) model->set_ir_version(min_ir);
  return absl::OkStatus();
}

std::vector<std::string> UnconvertibleOps(const onnx::ModelProto& model, int target_opset) {
  const std::string model_problem = ModelLevelProblem(model, target_opset);
  if (!model_problem.empty()) return {absl::StrCat("model: ", model_problem)};
  if (DefaultDomainOpset(model) == target_opset) return {};
  ModelInfo info = AnalyzeModel(model);
  return NodeProblems(model, target_opset, info);
}

}  // namespace sq
