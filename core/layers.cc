#include "core/layers.h"

#include <map>
#include <set>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/model_io.h"
#include "re2/re2.h"

namespace sq {

bool ClusterPerChannel(const QuantizeOptions& options, Granularity granularity,
                       const std::string& op_type) {
  if (options.cluster_scope != ClusterScope::kAuto) {
    return options.cluster_scope == ClusterScope::kChannel;
  }
  // auto: with quantization-aware boundaries (tensor and channel granularity) the
  // clustering unit is the quantization slice (a channel, or the whole tensor), so each
  // slice's cuts and ranges are chosen for that slice; otherwise (k-means boundaries, or
  // blocks) the paper's choice: whole tensor for MatMul/Gemm, channel for convolutions.
  if (QuantAwareBoundaries(options, granularity)) {
    return granularity == Granularity::kChannel;
  }
  return op_type == "Conv" || op_type == "ConvTranspose";
}
namespace {

// One lexical scope: what names a graph defines, and its parent.
struct Scope {
  const Scope* parent = nullptr;
  std::unordered_map<std::string, ConstantRef> constants;
  std::unordered_map<std::string, bool> non_constants;  // graph inputs / node outputs
};

const ConstantRef* Resolve(const Scope* s, const std::string& name) {
  for (; s != nullptr; s = s->parent) {
    if (s->non_constants.count(name)) return nullptr;
    auto it = s->constants.find(name);
    if (it != s->constants.end()) return &it->second;
  }
  return nullptr;
}

int64_t GetIntAttr(const onnx::NodeProto& n, const char* name, int64_t def) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return a.i();
  }
  return def;
}

struct Candidate {
  LayerUse use;
  const ConstantRef* weight;
  std::string op_type;
  int channel_axis, reduction_axis;
  std::string problem;  // non-empty: unsupported layout
};

class Walker {
 public:
  explicit Walker(const QuantizeOptions& options) : options_(options) {}

  void Walk(onnx::GraphProto* g, const Scope* parent, const std::string& path) {
    auto scope = std::make_unique<Scope>();
    scope->parent = parent;
    for (const auto& in : g->input()) scope->non_constants[in.name()] = true;
    for (auto& t : *g->mutable_initializer()) {
      // An initializer with the same name as an input is a default value: not constant.
      if (scope->non_constants.count(t.name())) continue;
      scope->constants[t.name()] = ConstantRef{&t, g, nullptr, path};
    }
    for (auto& n : *g->mutable_node()) {
      if (n.op_type() == "Constant" && (n.domain().empty() || n.domain() == "ai.onnx") &&
          n.output_size() == 1) {
        for (auto& a : *n.mutable_attribute()) {
          if (a.name() == "value" && a.has_t()) {
            scope->constants[n.output(0)] = ConstantRef{a.mutable_t(), g, &n, path};
          }
        }
        continue;
      }
      for (const auto& out : n.output()) {
        if (!out.empty()) scope->non_constants[out] = true;
      }
    }
    const Scope* s = scope.get();
    scopes_.push_back(std::move(scope));
    int index = 0;
    for (auto& n : *g->mutable_node()) {
      Visit(&n, g, s, path, index++);
      for (auto& a : *n.mutable_attribute()) {
        std::string sub = absl::StrCat(path, "/", n.name().empty() ? n.op_type() : n.name(), ".", a.name());
        if (a.has_g()) Walk(a.mutable_g(), s, sub);
        for (int i = 0; i < a.graphs_size(); ++i) Walk(a.mutable_graphs(i), s, absl::StrCat(sub, "[", i, "]"));
      }
    }
  }

  void Visit(onnx::NodeProto* n, onnx::GraphProto* g, const Scope* s, const std::string& path,
             int index) {
    const bool default_domain = n->domain().empty() || n->domain() == "ai.onnx";
    const std::string& op = n->op_type();
    int weight_input = -1, bias_input = -1, channel_axis = 0, reduction_axis = 0;
    std::string problem;
    if (default_domain && op == "MatMul" && n->input_size() == 2) {
      weight_input = 1;
      channel_axis = 1;
      reduction_axis = 0;
    } else if (default_domain && op == "Gemm" && n->input_size() >= 2) {
      weight_input = 1;
      bool trans_b = GetIntAttr(*n, "transB", 0) != 0;
      channel_axis = trans_b ? 0 : 1;
      reduction_axis = trans_b ? 1 : 0;
      if (n->input_size() >= 3 && !n->input(2).empty()) bias_input = 2;
    } else if (default_domain && (op == "Conv" || op == "ConvTranspose") && n->input_size() >= 2) {
      weight_input = 1;
      channel_axis = op == "Conv" ? 0 : 1;
      reduction_axis = op == "Conv" ? 1 : 0;
      if (n->input_size() >= 3 && !n->input(2).empty()) bias_input = 2;
    } else if (default_domain && (op == "Gather" || op == "Transpose") &&
               options_.quantize_gather && n->input_size() >= 1) {
      // An embedding table: Gather's data, gathered along rows. A Transpose of a table
      // (a tied lm_head) is kept only where the same table is gathered (Finish).
      const ConstantRef* t = Resolve(s, n->input(0));
      if (t != nullptr && t->tensor->data_type() == onnx::TensorProto::FLOAT &&
          t->tensor->dims_size() >= 2) {
        weight_input = 0;
        channel_axis = 0;
        reduction_axis = 1;
        if (t->tensor->dims_size() != 2) {
          problem = absl::StrCat("table is ", t->tensor->dims_size(), "-D, only 2-D is supported");
        } else if (op == "Gather" && GetIntAttr(*n, "axis", 0) != 0) {
          problem = absl::StrCat("Gather along axis ", GetIntAttr(*n, "axis", 0),
                                 "; only tables gathered by rows (axis 0) are supported");
        } else if (op == "Transpose") {
          std::vector<int64_t> perm;
          for (const auto& a : n->attribute()) {
            if (a.name() == "perm") perm.assign(a.ints().begin(), a.ints().end());
          }
          if (!perm.empty() && perm != std::vector<int64_t>{1, 0}) weight_input = -1;
        }
      }
    }
    // Every constant this node reads that is not its weight counts as an "other" use.
    for (int i = 0; i < n->input_size(); ++i) {
      if (i == weight_input || n->input(i).empty()) continue;
      const ConstantRef* c = Resolve(s, n->input(i));
      if (c != nullptr) other_uses_[c->tensor].push_back(absl::StrCat(op, " ", n->name()));
    }
    if (weight_input < 0) return;
    const ConstantRef* w = Resolve(s, n->input(weight_input));
    if (w == nullptr) return;  // weight computed at run time: not a layer we can touch
    const onnx::TensorProto& t = *w->tensor;
    int rank = t.dims_size();
    if (op == "MatMul" || op == "Gemm") {
      if (rank != 2) problem = absl::StrCat("weight is ", rank, "-D, only 2-D is supported");
    } else if ((op == "Conv" || op == "ConvTranspose") && rank < 3) {
      problem = absl::StrCat("weight is ", rank, "-D, expected at least 3-D");
    }
    if (t.data_type() != onnx::TensorProto::FLOAT && problem.empty()) {
      problem = absl::StrCat("weight data type ", t.data_type(), " is not FLOAT");
    }
    Candidate c;
    c.use.node = n;
    c.use.graph = g;
    c.use.graph_path = path;
    c.use.display_name = n->name().empty() ? absl::StrCat(op, "#", index) : n->name();
    c.use.weight_input = weight_input;
    if (bias_input >= 0) {
      // Any constant FP32 bias can be split element-wise: the parts are disjoint pieces of
      // the same values, whatever its shape. A computed bias goes whole to one branch.
      c.use.bias_input = bias_input;
      const ConstantRef* b = Resolve(s, n->input(bias_input));
      if (b != nullptr && b->tensor->data_type() == onnx::TensorProto::FLOAT) c.use.bias = *b;
    }
    c.weight = w;
    c.op_type = op;
    c.channel_axis = channel_axis;
    c.reduction_axis = reduction_axis;
    c.problem = problem;
    candidates_.push_back(c);
  }

  absl::StatusOr<std::vector<WeightGroup>> Finish() {
    // Table uses (Gather, Transpose) never cost a MatMul/Gemm/Conv layer its quantization:
    // where they cannot share its layout they are ordinary (other) uses, and so is a
    // Transpose of a tensor that no Gather reads.
    std::set<const onnx::TensorProto*> gathered;
    std::map<const onnx::TensorProto*, std::pair<int, int>> layer_layout;
    auto is_table = [](const Candidate& c) { return c.op_type == "Gather" || c.op_type == "Transpose"; };
    for (const auto& c : candidates_) {
      if (c.op_type == "Gather") gathered.insert(c.weight->tensor);
      if (!is_table(c)) layer_layout.emplace(c.weight->tensor, std::make_pair(c.channel_axis, c.reduction_axis));
    }
    std::vector<Candidate> kept;
    for (auto& c : candidates_) {
      auto layer = layer_layout.find(c.weight->tensor);
      const bool demote =
          is_table(c) &&
          ((c.op_type == "Transpose" && !gathered.count(c.weight->tensor)) ||
           (layer != layer_layout.end() &&
            (!c.problem.empty() || layer->second != std::make_pair(c.channel_axis, c.reduction_axis))));
      if (demote) {
        other_uses_[c.weight->tensor].push_back(absl::StrCat(c.op_type, " ", c.use.node->name()));
        continue;
      }
      kept.push_back(std::move(c));
    }
    candidates_ = std::move(kept);

    std::vector<std::unique_ptr<RE2>> patterns;
    for (const auto& p : options_.exclude_name_patterns) {
      auto re = std::make_unique<RE2>(p, RE2::Quiet);
      if (!re->ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid --exclude regex '", p, "': ", re->error()));
      }
      patterns.push_back(std::move(re));
    }
    std::vector<WeightGroup> groups;
    std::map<onnx::TensorProto*, size_t> index;
    for (auto& c : candidates_) {
      auto it = index.find(c.weight->tensor);
      if (it == index.end()) {
        WeightGroup g;
        g.weight_name = c.use.node->input(c.use.weight_input);
        g.weight = *c.weight;
        g.op_type = c.op_type;
        g.shape.assign(c.weight->tensor->dims().begin(), c.weight->tensor->dims().end());
        g.channel_axis = c.channel_axis;
        g.reduction_axis = c.reduction_axis;
        g.cluster_per_channel = ClusterPerChannel(options_, options_.granularity, c.op_type);
        if (!c.problem.empty()) {
          g.selected = false;
          g.skip_reason = c.problem;
        }
        index[c.weight->tensor] = groups.size();
        groups.push_back(std::move(g));
        it = index.find(c.weight->tensor);
      }
      WeightGroup& g = groups[it->second];
      if (g.selected && (c.channel_axis != g.channel_axis || c.reduction_axis != g.reduction_axis ||
                         !c.problem.empty())) {
        g.selected = false;
        g.skip_reason = absl::StrCat("weight is shared by layers with different layouts (",
                                     g.op_type, " and ", c.op_type, ")");
      }
      // A bias must belong to exactly this node to be split per branch; a shared bias tensor
      // is still fine since branches keep disjoint parts of the same values.
      g.uses.push_back(c.use);
    }
    for (auto& g : groups) {
      auto it = other_uses_.find(g.weight.tensor);
      if (it != other_uses_.end()) g.other_consumers = it->second;
      if (!g.selected) continue;
      for (const auto& u : g.uses) {
        for (const auto& re : patterns) {
          if (RE2::PartialMatch(u.display_name, *re)) {
            g.selected = false;
            g.skip_reason = absl::StrCat("excluded by --exclude '", re->pattern(), "' (node ",
                                         u.display_name, ")");
          }
        }
        for (const auto& op : options_.exclude_op_types) {
          if (op == g.op_type) {
            g.selected = false;
            g.skip_reason = absl::StrCat("op type ", op, " excluded");
          }
        }
      }
      if (!g.selected) continue;
      int64_t n = NumElements(*g.weight.tensor);
      if (n < options_.min_weight_elements) {
        g.selected = false;
        g.skip_reason = absl::StrCat("weight has ", n, " elements, fewer than the minimum ",
                                     options_.min_weight_elements);
        continue;
      }
    }
    return groups;
  }

 private:
  const QuantizeOptions& options_;
  std::vector<std::unique_ptr<Scope>> scopes_;
  std::vector<Candidate> candidates_;
  std::map<onnx::TensorProto*, std::vector<std::string>> other_uses_;
};

void CountOps(const onnx::GraphProto& g, std::map<std::string, int64_t>* counts) {
  for (const auto& n : g.node()) {
    std::string key = (n.domain().empty() || n.domain() == "ai.onnx")
                          ? n.op_type()
                          : absl::StrCat(n.domain(), ":", n.op_type());
    (*counts)[key]++;
    for (const auto& a : n.attribute()) {
      if (a.has_g()) CountOps(a.g(), counts);
      for (const auto& sg : a.graphs()) CountOps(sg, counts);
    }
  }
}

}  // namespace

absl::StatusOr<std::vector<WeightGroup>> DiscoverLayers(onnx::ModelProto* model,
                                                        const QuantizeOptions& options) {
  Walker walker(options);
  walker.Walk(model->mutable_graph(), nullptr, "main");
  return walker.Finish();
}

std::vector<std::pair<std::string, int64_t>> OpHistogram(const onnx::ModelProto& model) {
  std::map<std::string, int64_t> counts;
  CountOps(model.graph(), &counts);
  return {counts.begin(), counts.end()};
}

std::vector<std::string> PromoteInitializerInputs(onnx::ModelProto* model) {
  onnx::GraphProto* g = model->mutable_graph();
  std::unordered_set<std::string> initializers;
  for (const auto& t : g->initializer()) initializers.insert(t.name());
  std::vector<std::string> removed;
  for (const auto& in : g->input()) {
    if (initializers.count(in.name())) removed.push_back(in.name());
  }
  if (removed.empty()) return removed;
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> kept;
  for (auto& in : *g->mutable_input()) {
    if (!initializers.count(in.name())) *kept.Add() = std::move(in);
  }
  g->mutable_input()->Swap(&kept);
  if (model->ir_version() < 4) model->set_ir_version(4);
  return removed;
}

}  // namespace sq
