#include "core/unstack.h"

#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "core/opset_convert.h"
#include "core/rewrite.h"
#include "re2/re2.h"

namespace sq {
namespace {

bool IsDefaultDomain(const std::string& d) { return d.empty() || d == "ai.onnx"; }

// How many times each value name is read: node inputs of every graph (subgraphs included)
// and the main graph's outputs.
void CountReads(const onnx::GraphProto& g, std::map<std::string, int>* reads) {
  for (const auto& n : g.node()) {
    for (const auto& in : n.input()) {
      if (!in.empty()) ++(*reads)[in];
    }
    for (const auto& a : n.attribute()) {
      if (a.has_g()) CountReads(a.g(), reads);
      for (const auto& sg : a.graphs()) CountReads(sg, reads);
    }
  }
  for (const auto& o : g.output()) ++(*reads)[o.name()];
}

onnx::TensorProto Int64s(const std::string& name, const std::vector<int64_t>& v) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx::TensorProto::INT64);
  t.add_dims(static_cast<int64_t>(v.size()));
  for (int64_t x : v) t.add_int64_data(x);
  return t;
}

void AddIntsAttr(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

void AddIntAttr(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

}  // namespace

absl::StatusOr<std::vector<UnstackedWeight>> UnstackBatchedMatMuls(LoadedModel* model,
                                                                  const QuantizeOptions& options) {
  onnx::ModelProto& proto = model->proto();
  onnx::GraphProto* g = proto.mutable_graph();
  std::vector<UnstackedWeight> done;

  // Cheap screen first: no constant weight of rank >= 3 read by a MatMul, nothing to do (and
  // no shape inference paid).
  std::map<std::string, int> init_index;
  for (int i = 0; i < g->initializer_size(); ++i) init_index.emplace(g->initializer(i).name(), i);
  auto batched_weight = [&](const onnx::NodeProto& n) -> const onnx::TensorProto* {
    if (n.op_type() != "MatMul" || !IsDefaultDomain(n.domain()) || n.input_size() != 2) return nullptr;
    auto it = init_index.find(n.input(1));
    if (it == init_index.end()) return nullptr;
    const onnx::TensorProto& t = g->initializer(it->second);
    if (t.dims_size() < 3 || t.data_type() != onnx::TensorProto::FLOAT) return nullptr;
    for (int d = 0; d + 3 < t.dims_size(); ++d) {
      if (t.dims(d) != 1) return nullptr;
    }
    const int64_t b = t.dims(t.dims_size() - 3), k = t.dims(t.dims_size() - 2), c = t.dims(t.dims_size() - 1);
    if (b < 1 || k < 1 || c < 1 || b > 4096) return nullptr;
    return &t;
  };
  bool any = false;
  for (const auto& n : g->node()) any = any || batched_weight(n) != nullptr;
  if (!any) return done;

  std::vector<std::unique_ptr<RE2>> patterns;
  for (const auto& p : options.exclude_name_patterns) {
    auto re = std::make_unique<RE2>(p, RE2::Quiet);
    if (!re->ok()) return absl::InvalidArgumentError(absl::StrCat("bad exclude pattern '", p, "': ", re->error()));
    patterns.push_back(std::move(re));
  }
  bool matmul_excluded = false;
  for (const auto& op : options.exclude_op_types) matmul_excluded = matmul_excluded || op == "MatMul";
  if (matmul_excluded) return done;

  std::map<std::string, int> reads;
  CountReads(*g, &reads);
  std::set<std::string> graph_inputs;
  for (const auto& v : g->input()) graph_inputs.insert(v.name());
  const std::unordered_map<std::string, int> ranks = ValueRanks(proto);
  const int opset = DefaultDomainOpset(proto);
  UniqueNames namer(*g);

  google::protobuf::RepeatedPtrField<onnx::NodeProto> out;
  std::set<std::string> remove_inits;
  std::vector<onnx::TensorProto> new_inits;
  for (onnx::NodeProto& n : *g->mutable_node()) {
    const onnx::TensorProto* w = batched_weight(n);
    auto keep = [&] { *out.Add() = std::move(n); };
    if (w == nullptr || reads[w->name()] != 1 || graph_inputs.count(w->name())) {
      keep();
      continue;
    }
    bool excluded = false;
    for (const auto& re : patterns) excluded = excluded || RE2::PartialMatch(n.name(), *re);
    auto rank_it = ranks.find(n.input(0));
    const int rw = w->dims_size();
    const int64_t b_count = w->dims(rw - 3), k = w->dims(rw - 2), c = w->dims(rw - 1);
    if (excluded || rank_it == ranks.end() || rank_it->second < 2 || k * c < options.min_weight_elements) {
      keep();
      continue;
    }
    const int rx = rank_it->second;
    const int out_rank = std::max(rx, rw);
    auto weights = ReadFloatTensor(*model, *w);
    if (!weights.ok()) return weights.status();

    const std::string base = n.name().empty() ? absl::StrCat("MatMul_", n.output(0)) : n.name();
    std::vector<std::string> slices;  // X's slices (rank >= 3) or X itself for every b
    std::vector<onnx::NodeProto> added;
    if (rx >= 3) {
      onnx::NodeProto split;
      split.set_op_type("Split");
      split.set_name(namer.Make(base + "/split"));
      split.add_input(n.input(0));
      AddIntAttr(&split, "axis", rx - 3);
      const std::vector<int64_t> ones(static_cast<size_t>(b_count), 1);
      if (opset >= 13) {
        const std::string sizes = namer.Make(base + "/split_sizes");
        new_inits.push_back(Int64s(sizes, ones));
        split.add_input(sizes);
      } else {
        AddIntsAttr(&split, "split", ones);
      }
      for (int64_t b = 0; b < b_count; ++b) {
        slices.push_back(namer.Make(absl::StrCat(base, "/x", b)));
        split.add_output(slices.back());
      }
      added.push_back(std::move(split));
    } else {
      slices.assign(static_cast<size_t>(b_count), n.input(0));
    }
    // Rank of each product: rx (>= 3) or 2; lifted to out_rank before the Concat.
    const int product_rank = rx >= 3 ? rx : 2;
    std::vector<int64_t> lift;
    for (int a = 0; a < out_rank - product_rank; ++a) lift.push_back(a);
    std::string lift_axes;
    if (!lift.empty() && opset >= 13) {
      lift_axes = namer.Make(base + "/lift_axes");
      new_inits.push_back(Int64s(lift_axes, lift));
    }
    onnx::NodeProto concat;
    concat.set_op_type("Concat");
    concat.set_name(namer.Make(base + "/concat"));
    AddIntAttr(&concat, "axis", out_rank - 3);
    for (int64_t b = 0; b < b_count; ++b) {
      onnx::TensorProto m;
      m.set_name(namer.Make(absl::StrCat(w->name(), "/m", b)));
      m.set_data_type(onnx::TensorProto::FLOAT);
      m.add_dims(k);
      m.add_dims(c);
      m.set_raw_data(std::string(reinterpret_cast<const char*>(weights->data + b * k * c),
                                 static_cast<size_t>(k * c) * sizeof(float)));
      onnx::NodeProto mm;
      mm.set_op_type("MatMul");
      mm.set_name(namer.Make(absl::StrCat(base, "/m", b)));
      mm.add_input(slices[static_cast<size_t>(b)]);
      mm.add_input(m.name());
      std::string product = namer.Make(absl::StrCat(base, "/y", b));
      mm.add_output(product);
      added.push_back(std::move(mm));
      new_inits.push_back(std::move(m));
      if (!lift.empty()) {
        onnx::NodeProto u;
        u.set_op_type("Unsqueeze");
        u.set_name(namer.Make(absl::StrCat(base, "/lift", b)));
        u.add_input(product);
        if (opset >= 13) u.add_input(lift_axes);
        else AddIntsAttr(&u, "axes", lift);
        product = namer.Make(absl::StrCat(base, "/y", b, "_lifted"));
        u.add_output(product);
        added.push_back(std::move(u));
      }
      concat.add_input(product);
    }
    concat.add_output(n.output(0));
    added.push_back(std::move(concat));
    weights->ReleasePages();
    done.push_back({n.name(), w->name(), static_cast<int>(b_count)});
    remove_inits.insert(w->name());
    for (auto& a : added) *out.Add() = std::move(a);
  }
  if (done.empty()) return done;
  g->mutable_node()->Swap(&out);
  // The batched initializers go (nothing else reads them); value_info about them too.
  google::protobuf::RepeatedPtrField<onnx::TensorProto> kept;
  for (auto& t : *g->mutable_initializer()) {
    if (!remove_inits.count(t.name())) *kept.Add() = std::move(t);
  }
  for (auto& t : new_inits) *kept.Add() = std::move(t);
  g->mutable_initializer()->Swap(&kept);
  return done;
}

}  // namespace sq
