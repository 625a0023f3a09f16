#include "core/validate.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/utf8.h"

namespace sq {
namespace {

// What the checks know about names visible in a graph: dims of constants and declared
// ranks of graph inputs. A child scope sees its parents'.
struct Scope {
  const Scope* parent = nullptr;
  std::map<std::string, std::vector<int64_t>> constant_dims;
  std::map<std::string, int> input_rank;

  const std::vector<int64_t>* FindConstant(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->constant_dims.find(name);
      if (it != s->constant_dims.end()) return &it->second;
      // A graph input of the same name shadows outer constants.
      if (s->input_rank.count(name)) return nullptr;
    }
    return nullptr;
  }
  int FindInputRank(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->input_rank.find(name);
      if (it != s->input_rank.end()) return it->second;
      if (s->constant_dims.count(name)) return -1;
    }
    return -1;
  }
};

std::string NodeLabel(const onnx::NodeProto& n) {
  return ToValidUtf8(absl::StrCat(n.op_type(), " node '", n.name().empty() ? "(unnamed)" : n.name(),
                                  "'"));
}

const onnx::AttributeProto* FindAttribute(const onnx::NodeProto& n, const char* name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

absl::Status CheckConv(const onnx::NodeProto& n, const Scope& scope) {
  const bool transpose = n.op_type() == "ConvTranspose";
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(NodeLabel(n), ": ", why));
  };
  if (n.input_size() < 2 || n.input(1).empty()) return bad("has no weight input");
  const onnx::AttributeProto* group_attr = FindAttribute(n, "group");
  const int64_t group = group_attr ? group_attr->i() : 1;
  if (group < 1) return bad(absl::StrCat("group ", group, " is not >= 1"));

  const std::vector<int64_t>* w = scope.FindConstant(n.input(1));
  int rank = -1;
  if (w) {
    rank = static_cast<int>(w->size());
  } else {
    rank = scope.FindInputRank(n.input(1));
  }
  if (rank >= 0 && (rank < 3 || rank > kMaxConvRank)) {
    return bad(absl::StrCat("weight '", ToValidUtf8(n.input(1)), "' has rank ", rank,
                            "; a convolution weight has rank 3 to ", kMaxConvRank));
  }
  // Attribute lengths are checked against the weight's rank where it is known, and
  // against each other (and against kMaxConvRank) where it is not.
  int spatial = rank >= 0 ? rank - 2 : -1;
  auto check_len = [&](const char* name, int per_axis) -> absl::Status {
    const onnx::AttributeProto* a = FindAttribute(n, name);
    if (!a) return absl::OkStatus();
    const int len = a->ints_size();
    if (len % per_axis != 0 || len / per_axis < 1 || len / per_axis > kMaxConvRank - 2) {
      return bad(absl::StrCat("attribute ", name, " has ", len, " values"));
    }
    if (spatial < 0) spatial = len / per_axis;
    if (len != per_axis * spatial) {
      return bad(absl::StrCat("attribute ", name, " has ", len, " values but the convolution has ",
                              spatial, " spatial axes (needs ", per_axis * spatial, ")"));
    }
    return absl::OkStatus();
  };
  for (const char* name : {"kernel_shape", "strides", "dilations"}) {
    if (absl::Status st = check_len(name, 1); !st.ok()) return st;
  }
  if (absl::Status st = check_len("pads", 2); !st.ok()) return st;
  if (transpose) {
    for (const char* name : {"output_padding", "output_shape"}) {
      if (absl::Status st = check_len(name, 1); !st.ok()) return st;
    }
  }
  for (const char* name : {"strides", "dilations"}) {
    if (const onnx::AttributeProto* a = FindAttribute(n, name)) {
      for (int64_t v : a->ints()) {
        if (v < 1) return bad(absl::StrCat("attribute ", name, " holds ", v, "; must be >= 1"));
      }
    }
  }
  if (const onnx::AttributeProto* a = FindAttribute(n, "pads")) {
    for (int64_t v : a->ints()) {
      if (v < 0) return bad(absl::StrCat("attribute pads holds ", v, "; must be >= 0"));
    }
  }
  if (w) {
    for (int64_t d : *w) {
      if (d < 1) return bad(absl::StrCat("weight dims [", absl::StrJoin(*w, ","), "] hold ", d));
    }
    if ((*w)[0] % group != 0) {
      return bad(absl::StrCat("group ", group, " does not divide the weight's first dim ", (*w)[0]));
    }
    if (const onnx::AttributeProto* a = FindAttribute(n, "kernel_shape")) {
      for (int i = 0; i < a->ints_size(); ++i) {
        if (a->ints(i) != (*w)[i + 2]) {
          return bad(absl::StrCat("kernel_shape [", absl::StrJoin(a->ints(), ","),
                                  "] differs from the weight's spatial dims [",
                                  absl::StrJoin(w->begin() + 2, w->end(), ","), "]"));
        }
      }
    }
  }
  // X's rank must match W's where both are declared (libonnx indexes one by the other).
  if (n.input_size() >= 1 && spatial >= 0) {
    const int x_rank = scope.FindInputRank(n.input(0));
    if (x_rank >= 0 && x_rank != spatial + 2) {
      return bad(absl::StrCat("input '", ToValidUtf8(n.input(0)), "' has rank ", x_rank,
                              " but the weight needs rank ", spatial + 2));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckGraph(const onnx::GraphProto& g, const Scope* parent, int depth) {
  if (depth > kMaxSubgraphDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "subgraphs are nested more than ", kMaxSubgraphDepth, " deep (graph '",
        ToValidUtf8(g.name()), "')"));
  }
  Scope scope;
  scope.parent = parent;
  for (const auto& in : g.input()) {
    const auto& tt = in.type().tensor_type();
    scope.input_rank[in.name()] = tt.has_shape() ? tt.shape().dim_size() : -1;
  }
  for (const auto& t : g.initializer()) {
    scope.input_rank.erase(t.name());  // an initializer that is also an input: a constant default
    scope.constant_dims[t.name()].assign(t.dims().begin(), t.dims().end());
  }
  for (const auto& n : g.node()) {
    if (n.op_type() == "Constant" && n.domain().empty() && n.output_size() == 1) {
      if (const onnx::AttributeProto* v = FindAttribute(n, "value"); v && v->has_t()) {
        scope.constant_dims[n.output(0)].assign(v->t().dims().begin(), v->t().dims().end());
      }
    }
  }
  for (const auto& n : g.node()) {
    const bool default_domain = n.domain().empty() || n.domain() == "ai.onnx";
    if (default_domain && (n.op_type() == "Conv" || n.op_type() == "ConvTranspose")) {
      if (absl::Status st = CheckConv(n, scope); !st.ok()) return st;
    }
    for (const auto& a : n.attribute()) {
      if (a.has_g()) {
        if (absl::Status st = CheckGraph(a.g(), &scope, depth + 1); !st.ok()) return st;
      }
      for (const auto& sub : a.graphs()) {
        if (absl::Status st = CheckGraph(sub, &scope, depth + 1); !st.ok()) return st;
      }
    }
  }
  return absl::OkStatus();
}

// Bits per element of a tensor data type, 0 for STRING (variable), -1 for unknown.
int BitsPerElement(int32_t t) {
  switch (t) {
    case 1: case 6: case 12: return 32;               // FLOAT, INT32, UINT32
    case 2: case 3: case 9: return 8;                 // UINT8, INT8, BOOL
    case 4: case 5: case 10: case 16: return 16;      // (U)INT16, FLOAT16, BFLOAT16
    case 7: case 11: case 13: case 14: return 64;     // (U)INT64, DOUBLE, COMPLEX64
    case 15: return 128;                              // COMPLEX128
    case 17: case 18: case 19: case 20: case 24: return 8;  // FLOAT8 variants, E8M0
    case 21: case 22: case 23: return 4;              // UINT4, INT4, FLOAT4E2M1
    case 25: case 26: return 2;                       // UINT2, INT2
    case 8: return 0;                                 // STRING
    default: return -1;
  }
}

// A tensor's header is consistent: known type, dims >= 0 whose product stays far below
// overflow, raw or typed data but not both, and raw data of exactly the declared size.
absl::Status CheckTensor(const onnx::TensorProto& t, const std::string& where) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(where, " tensor '", ToValidUtf8(t.name()), "': ", why));
  };
  const int bits = BitsPerElement(t.data_type());
  if (bits < 0) return bad(absl::StrCat("unknown data type ", t.data_type()));
  int64_t n = 1;
  for (int64_t d : t.dims()) {
    if (d < 0) return bad(absl::StrCat("negative dimension ", d));
    if (d > 0 && n > (int64_t{1} << 50) / d) return bad("more than 2^50 elements");
    n *= d;
  }
  const bool typed = t.float_data_size() || t.int32_data_size() || t.int64_data_size() ||
                     t.double_data_size() || t.uint64_data_size() || t.string_data_size();
  if (t.has_raw_data() && typed) return bad("both raw_data and typed data are set");
  if (t.has_raw_data() && bits > 0 && t.data_location() != onnx::TensorProto::EXTERNAL) {
    const int64_t want = (n * bits + 7) / 8;
    if (static_cast<int64_t>(t.raw_data().size()) != want) {
      return bad(absl::StrCat("raw_data holds ", t.raw_data().size(), " bytes, its dims need ", want));
    }
  }
  return absl::OkStatus();
}

// Names: every node input is defined before the node reads it (graph input, initializer,
// an earlier node's output, or an outer scope's name visible at the enclosing node);
// nothing is defined twice in one graph; graph outputs exist; node domains are imported.
struct NameScope {
  const NameScope* parent = nullptr;
  std::set<std::string> defined;
  bool Has(const std::string& name) const {
    for (const NameScope* s = this; s; s = s->parent) {
      if (s->defined.count(name)) return true;
    }
    return false;
  }
};

absl::Status CheckNames(const onnx::GraphProto& g, const NameScope* parent,
                        const std::set<std::string>& domains) {
  NameScope scope;
  scope.parent = parent;
  const std::string graph = ToValidUtf8(g.name().empty() ? "(main)" : g.name());
  for (const auto& in : g.input()) {
    if (in.name().empty()) return absl::InvalidArgumentError(absl::StrCat("graph '", graph, "' has an input without a name"));
    if (!scope.defined.insert(in.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("graph '", graph, "' lists input '", ToValidUtf8(in.name()), "' twice"));
    }
  }
  std::set<std::string> initializers;
  for (const auto& t : g.initializer()) {
    if (t.name().empty()) return absl::InvalidArgumentError(absl::StrCat("graph '", graph, "' has an initializer without a name"));
    if (!initializers.insert(t.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat("graph '", graph, "' has two initializers named '", ToValidUtf8(t.name()), "'"));
    }
    if (absl::Status st = CheckTensor(t, "initializer"); !st.ok()) return st;
    scope.defined.insert(t.name());  // may also be an input (IR < 4)
  }
  std::set<std::string> produced_later;
  for (const auto& n : g.node()) {
    for (const auto& o : n.output()) produced_later.insert(o);
  }
  for (const auto& n : g.node()) {
    if (!n.domain().empty() && n.domain() != "ai.onnx" && !domains.count(n.domain())) {
      return absl::InvalidArgumentError(absl::StrCat(NodeLabel(n), ": its domain '", ToValidUtf8(n.domain()),
                                                     "' is not among the model's opset imports"));
    }
    for (const auto& in : n.input()) {
      if (in.empty() || scope.Has(in)) continue;
      return absl::InvalidArgumentError(absl::StrCat(
          NodeLabel(n), ": input '", ToValidUtf8(in), "' ",
          produced_later.count(in) ? "is read before the node that produces it (a cycle, or nodes out of order)"
                                   : "is not produced by any node, input or initializer"));
    }
    for (const auto& a : n.attribute()) {
      if (a.has_t()) {
        if (absl::Status st = CheckTensor(a.t(), absl::StrCat(NodeLabel(n), " attribute")); !st.ok()) return st;
      }
      if (a.has_g()) {
        if (absl::Status st = CheckNames(a.g(), &scope, domains); !st.ok()) return st;
      }
      for (const auto& sub : a.graphs()) {
        if (absl::Status st = CheckNames(sub, &scope, domains); !st.ok()) return st;
      }
    }
    for (const auto& o : n.output()) {
      if (o.empty()) continue;
      if (!scope.defined.insert(o).second) {
        return absl::InvalidArgumentError(absl::StrCat(NodeLabel(n), ": output '", ToValidUtf8(o),
                                                       "' is already defined in its graph"));
      }
    }
  }
  for (const auto& out : g.output()) {
    if (!scope.Has(out.name())) {
      return absl::InvalidArgumentError(absl::StrCat("graph '", graph, "' output '", ToValidUtf8(out.name()),
                                                     "' is not produced by any node, input or initializer"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelStructure(const onnx::ModelProto& model) {
  if (!model.has_graph()) return absl::InvalidArgumentError("not a valid ONNX model: no graph");
  if (model.ir_version() > kMaxIrVersion) {
    return absl::InvalidArgumentError(absl::StrCat("ir_version ", model.ir_version(),
                                                   " is newer than any this build knows (", kMaxIrVersion, ")"));
  }
  std::set<std::string> domains;
  for (const auto& o : model.opset_import()) domains.insert(o.domain());
  // Depth first: it bounds the recursion of the name checks.
  if (absl::Status st = CheckGraph(model.graph(), nullptr, 0); !st.ok()) return st;
  return CheckNames(model.graph(), nullptr, domains);
}

}  // namespace sq
