#include "core/activations/act_split.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/rewrite.h"

namespace sq {
namespace {

bool IsDefaultDomain(const onnx::NodeProto& n) { return n.domain().empty() || n.domain() == "ai.onnx"; }

// Activation functions proper: a site holds at least one.
const std::set<std::string>& CoreOps() {
  static const auto* s = new std::set<std::string>{"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid",
                                                   "HardSwish", "Gelu", "Erf", "Elu", "Softplus"};
  return *s;
}
// Elementwise ops a site may also hold (with scalar constants or the site's own values).
const std::set<std::string>& GlueOps() {
  static const auto* s = new std::set<std::string>{"Mul", "Add", "Sub", "Div", "Pow", "Max", "Min"};
  return *s;
}

int64_t IntAttr(const onnx::NodeProto& n, const std::string& name, int64_t fallback) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return a.i();
  }
  return fallback;
}

void CollectSubgraphReads(const onnx::GraphProto& g, std::set<std::string>* out) {
  for (const auto& n : g.node()) {
    for (const auto& a : n.attribute()) {
      if (a.has_g()) {
        for (const auto& sn : a.g().node()) {
          for (const auto& in : sn.input()) out->insert(in);
        }
        CollectSubgraphReads(a.g(), out);
      }
      for (const auto& sg : a.graphs()) {
        for (const auto& sn : sg.node()) {
          for (const auto& in : sn.input()) out->insert(in);
        }
        CollectSubgraphReads(sg, out);
      }
    }
  }
}

struct GraphFacts {
  std::set<std::string> subgraph_reads;  // names read inside subgraphs (outer-scope values)
  std::set<std::string> scalar_constants;
  std::map<std::string, std::vector<int>> readers;
  std::set<std::string> graph_outputs;
  std::map<std::string, int> producer;
};

GraphFacts Facts(const onnx::GraphProto& g) {
  GraphFacts f;
  std::set<std::string> inputs;
  for (const auto& vi : g.input()) inputs.insert(vi.name());
  auto scalar = [](const onnx::TensorProto& t) {
    for (int64_t d : t.dims()) {
      if (d != 1) return false;
    }
    return true;
  };
  for (const auto& t : g.initializer()) {
    if (!inputs.count(t.name()) && scalar(t)) f.scalar_constants.insert(t.name());
  }
  for (int k = 0; k < g.node_size(); ++k) {
    const auto& n = g.node(k);
    if (n.op_type() == "Constant" && n.output_size() == 1) {
      for (const auto& a : n.attribute()) {
        if (a.name() == "value" && a.has_t() && scalar(a.t())) f.scalar_constants.insert(n.output(0));
        if (a.name() == "value_float") f.scalar_constants.insert(n.output(0));
      }
    }
    for (const auto& in : n.input()) {
      if (!in.empty()) f.readers[in].push_back(k);
    }
    for (const auto& o : n.output()) f.producer[o] = k;
  }
  for (const auto& vi : g.output()) f.graph_outputs.insert(vi.name());
  CollectSubgraphReads(g, &f.subgraph_reads);
  return f;
}

}  // namespace

std::vector<ActivationSite> FindActivationSites(const onnx::GraphProto& graph) {
  const GraphFacts f = Facts(graph);
  std::vector<bool> used(graph.node_size(), false);
  std::vector<ActivationSite> sites;
  for (int start = 0; start < graph.node_size(); ++start) {
    const auto& n0 = graph.node(start);
    if (used[start] || !IsDefaultDomain(n0) || !CoreOps().count(n0.op_type()) || n0.input_size() < 1 ||
        f.scalar_constants.count(n0.input(0))) {
      continue;
    }
    const std::string x = n0.input(0);
    // Grow from the first reader of x that belongs: every node after x's producer whose
    // inputs are x, scalars or values of the site.
    std::set<std::string> produced{x};
    std::vector<int> region;
    auto px = f.producer.find(x);
    const int from = px == f.producer.end() ? 0 : px->second + 1;
    bool has_core = false;
    for (int k = from; k < graph.node_size(); ++k) {
      if (used[k]) continue;
      const auto& n = graph.node(k);
      if (!IsDefaultDomain(n) || n.output_size() != 1 ||
          !(CoreOps().count(n.op_type()) || GlueOps().count(n.op_type()))) {
        continue;
      }
      bool inside = true, touches = false;
      for (int i = 0; i < n.input_size(); ++i) {
        const std::string& in = n.input(i);
        if (in.empty()) continue;
        if (produced.count(in)) {
          touches = true;
        } else if (!f.scalar_constants.count(in)) {
          inside = false;
        }
      }
      // Clip's bounds and the like are inputs 1.. and must be scalars; the data is input 0.
      if (!inside || !touches || !produced.count(n.input(0)) ) {
        if (!(inside && touches && GlueOps().count(n.op_type()))) continue;
      }
      region.push_back(k);
      produced.insert(n.output(0));
      has_core = has_core || CoreOps().count(n.op_type());
    }
    if (!has_core || region.empty()) continue;
    // Exactly one value may leave the site.
    std::set<int> in_region(region.begin(), region.end());
    std::vector<std::string> leaving;
    for (int k : region) {
      const std::string& o = graph.node(k).output(0);
      bool leaves = f.graph_outputs.count(o) > 0 || f.subgraph_reads.count(o) > 0;
      auto r = f.readers.find(o);
      if (r != f.readers.end()) {
        for (int reader : r->second) leaves = leaves || !in_region.count(reader);
      }
      if (leaves) leaving.push_back(o);
    }
    if (leaving.size() != 1) continue;
    for (int k : region) used[k] = true;
    ActivationSite s;
    s.input = x;
    s.output = leaving[0];
    s.nodes = region;
    s.name = graph.node(region[0]).name().empty() ? graph.node(region[0]).op_type() : graph.node(region[0]).name();
    sites.push_back(std::move(s));
  }
  return sites;
}

std::vector<std::vector<int64_t>> GroupChannels(int64_t channels, ActivationSplit mode,
                                                const std::vector<float>& lo, const std::vector<float>& hi) {
  std::vector<std::vector<int64_t>> groups(3);
  if (channels < 3) return {};
  if (mode == ActivationSplit::kPositional || lo.size() != static_cast<size_t>(channels) ||
      hi.size() != static_cast<size_t>(channels)) {
    int64_t begin = 0;
    for (int g = 0; g < 3; ++g) {
      const int64_t size = channels / 3 + (g < channels % 3 ? 1 : 0);
      for (int64_t c = begin; c < begin + size; ++c) groups[g].push_back(c);
      begin += size;
    }
    return groups;
  }
  std::vector<int64_t> order(channels);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return (hi[a] - lo[a]) < (hi[b] - lo[b]);
  });
  const int64_t n = channels;
  // Prefix and suffix spans of the sorted channels.
  std::vector<double> pre(n), suf(n);
  {
    float mn = std::numeric_limits<float>::infinity(), mx = -mn;
    for (int64_t i = 0; i < n; ++i) {
      mn = std::min(mn, lo[order[i]]);
      mx = std::max(mx, hi[order[i]]);
      pre[i] = static_cast<double>(mx) - mn;
    }
    mn = std::numeric_limits<float>::infinity();
    mx = -mn;
    for (int64_t i = n - 1; i >= 0; --i) {
      mn = std::min(mn, lo[order[i]]);
      mx = std::max(mx, hi[order[i]]);
      suf[i] = static_cast<double>(mx) - mn;
    }
  }
  // Cuts a (first group [0, a)) and b (last group [b, n)); O(n^2), on a grid for wide tensors.
  const int64_t step = std::max<int64_t>(1, n / 2048);
  double best = std::numeric_limits<double>::infinity();
  int64_t best_a = 1, best_b = 2;
  for (int64_t a = 1; a <= n - 2; a += step) {
    float mn = std::numeric_limits<float>::infinity(), mx = -mn;
    for (int64_t b = a + 1; b <= n - 1; ++b) {
      mn = std::min(mn, lo[order[b - 1]]);
      mx = std::max(mx, hi[order[b - 1]]);
      if ((b - a - 1) % step != 0 && b != n - 1) continue;
      const double mid = static_cast<double>(mx) - mn;
      const double cost = a * pre[a - 1] * pre[a - 1] + (b - a) * mid * mid + (n - b) * suf[b] * suf[b];
      if (cost < best) {
        best = cost;
        best_a = a;
        best_b = b;
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) groups[i < best_a ? 0 : i < best_b ? 1 : 2].push_back(order[i]);
  for (auto& g : groups) std::sort(g.begin(), g.end());
  return groups;
}

absl::StatusOr<ActSplitResult> SplitActivations(
    onnx::ModelProto* model, ActivationSplit mode, const std::map<std::string, TensorRange>& ranges,
    const std::function<absl::StatusOr<std::vector<float>>(const std::string& name,
                                                           std::vector<int64_t>* dims)>& read_weight) {
  ActSplitResult result;
  if (mode == ActivationSplit::kOff) return result;
  onnx::GraphProto* g = model->mutable_graph();
  const std::vector<ActivationSite> sites = FindActivationSites(*g);
  const GraphFacts f = Facts(*g);
  UniqueNames names(*g);
  std::set<std::string> weights;  // initializers that are constants (not inputs)
  {
    std::set<std::string> inputs;
    for (const auto& vi : g->input()) inputs.insert(vi.name());
    for (const auto& t : g->initializer()) {
      if (!inputs.count(t.name())) weights.insert(t.name());
    }
  }
  std::map<std::string, int64_t> value_info_channels;
  std::map<std::string, int> value_info_rank;
  for (const auto* list : {&g->value_info(), &g->output(), &g->input()}) {
    for (const auto& vi : *list) {
      if (!vi.type().has_tensor_type() || !vi.type().tensor_type().has_shape()) continue;
      const auto& shape = vi.type().tensor_type().shape();
      value_info_rank[vi.name()] = shape.dim_size();
      if (shape.dim_size() >= 2 && shape.dim(1).has_dim_value()) value_info_channels[vi.name()] = shape.dim(1).dim_value();
    }
  }

  // What replaces each node (by index); an absent entry keeps the node, an empty one drops it.
  std::map<int, std::vector<onnx::NodeProto>> replace;
  std::vector<onnx::TensorProto> new_inits;
  auto make_node = [&](const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
                       const std::string& base) {
    onnx::NodeProto n;
    n.set_op_type(op);
    n.set_name(names.Make(base));
    for (auto& s : in) n.add_input(s);
    for (auto& s : out) n.add_output(s);
    return n;
  };
  auto int_attr = [](onnx::NodeProto* n, const std::string& name, int64_t v) {
    for (auto& a : *n->mutable_attribute()) {
      if (a.name() == name) {
        a.set_i(v);
        return;
      }
    }
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  };
  auto add_float_init = [&](const std::string& base, const std::vector<int64_t>& dims, const std::vector<float>& v) {
    onnx::TensorProto t;
    t.set_name(names.Make(base));
    t.set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t.add_dims(d);
    t.set_raw_data(v.data(), v.size() * sizeof(float));
    new_inits.push_back(t);
    return t.name();
  };
  auto add_int_init = [&](const std::string& base, const std::vector<int64_t>& v) {
    onnx::TensorProto t;
    t.set_name(names.Make(base));
    t.set_data_type(onnx::TensorProto::INT64);
    t.add_dims(static_cast<int64_t>(v.size()));
    t.set_raw_data(v.data(), v.size() * sizeof(int64_t));
    new_inits.push_back(t);
    return t.name();
  };

  for (const ActivationSite& site : sites) {
    // How each reader of Y can take the groups.
    enum Kind { kOther, kConvSum, kConvDepthwise, kGemm, kMatMul };
    struct Reader {
      int node;
      Kind kind = kOther;
      std::vector<float> w;
      std::vector<int64_t> dims;
    };
    std::vector<Reader> readers;
    int64_t channels = -1;
    bool conflict = false;
    auto agree = [&](int64_t c) {
      if (c <= 0) return;
      if (channels < 0) channels = c;
      else if (channels != c) conflict = true;
    };
    auto rd = f.readers.find(site.output);
    if (rd != f.readers.end()) {
      std::set<int> seen;
      for (int k : rd->second) {
        if (!seen.insert(k).second) continue;
        const onnx::NodeProto& n = g->node(k);
        Reader r;
        r.node = k;
        int uses = 0;
        for (const auto& in : n.input()) uses += in == site.output;
        const bool weight_const = n.input_size() >= 2 && weights.count(n.input(1));
        if (uses == 1 && n.input(0) == site.output && weight_const && IsDefaultDomain(n) &&
            (n.op_type() == "Conv" || n.op_type() == "Gemm" || n.op_type() == "MatMul")) {
          absl::StatusOr<std::vector<float>> w = read_weight(n.input(1), &r.dims);
          if (w.ok()) {
            r.w = std::move(*w);
            const int64_t group = IntAttr(n, "group", 1);
            if (n.op_type() == "Conv" && r.dims.size() >= 3 && group == 1) {
              r.kind = kConvSum;
              agree(r.dims[1]);
            } else if (n.op_type() == "Conv" && r.dims.size() >= 3 && r.dims[1] == 1 && group == r.dims[0]) {
              r.kind = kConvDepthwise;
              agree(group);
            } else if (n.op_type() == "Gemm" && r.dims.size() == 2 && IntAttr(n, "transA", 0) == 0) {
              r.kind = kGemm;
              agree(IntAttr(n, "transB", 0) ? r.dims[1] : r.dims[0]);
            } else if (n.op_type() == "MatMul" && r.dims.size() == 2 && value_info_rank.count(site.output) &&
                       value_info_rank[site.output] == 2) {
              r.kind = kMatMul;
              agree(r.dims[0]);
            }
          }
        }
        readers.push_back(std::move(r));
      }
    }
    const TensorRange* range = nullptr;
    for (const std::string& t : {site.output, site.input}) {
      auto it = ranges.find(t);
      if (it != ranges.end() && !it->second.channel_lo.empty()) {
        range = &it->second;
        break;
      }
    }
    if (range) agree(static_cast<int64_t>(range->channel_lo.size()));
    if (channels < 0 && value_info_channels.count(site.output)) agree(value_info_channels[site.output]);
    if (conflict || channels < 3) {
      result.notes.push_back(absl::StrCat(site.name, ": left whole (", conflict ? "channel counts disagree" : "channel count unknown or < 3", ")"));
      continue;
    }
    if (mode == ActivationSplit::kRange && !range) {
      result.notes.push_back(absl::StrCat(site.name, ": left whole (no per-channel ranges for ", site.input, ")"));
      continue;
    }
    std::vector<std::vector<int64_t>> groups =
        GroupChannels(channels, mode, range ? range->channel_lo : std::vector<float>{},
                      range ? range->channel_hi : std::vector<float>{});
    // Positions of channels after joining the groups, to restore the order.
    std::vector<int64_t> joined;
    for (const auto& grp : groups) joined.insert(joined.end(), grp.begin(), grp.end());
    bool in_order = true;
    for (size_t i = 0; i < joined.size(); ++i) in_order = in_order && joined[i] == static_cast<int64_t>(i);
    std::vector<int64_t> inverse(joined.size());
    for (size_t i = 0; i < joined.size(); ++i) inverse[joined[i]] = static_cast<int64_t>(i);

    // The groups: Gather, then a copy of the site per group.
    std::vector<onnx::NodeProto> site_nodes;
    std::vector<std::string> y_groups;
    for (int gi = 0; gi < 3; ++gi) {
      const std::string idx = add_int_init(absl::StrCat(site.input, "_group", gi, "_channels"), groups[gi]);
      const std::string xg = names.Make(absl::StrCat(site.input, "_group", gi));
      onnx::NodeProto gather = make_node("Gather", {site.input, idx}, {xg}, absl::StrCat(site.name, "_group", gi, "_Gather"));
      int_attr(&gather, "axis", 1);
      site_nodes.push_back(gather);
      std::map<std::string, std::string> rename{{site.input, xg}};
      for (int k : site.nodes) {
        onnx::NodeProto copy = g->node(k);
        copy.set_name(names.Make(absl::StrCat(copy.name().empty() ? copy.op_type() : copy.name(), "_group", gi)));
        for (int i = 0; i < copy.input_size(); ++i) {
          auto r = rename.find(copy.input(i));
          if (r != rename.end()) copy.set_input(i, r->second);
        }
        const std::string out = names.Make(absl::StrCat(copy.output(0), "_group", gi));
        rename[copy.output(0)] = out;
        copy.set_output(0, out);
        site_nodes.push_back(copy);
      }
      y_groups.push_back(rename[site.output]);
    }
    // Readers that take the groups apart.
    bool need_join = f.graph_outputs.count(site.output) > 0 || f.subgraph_reads.count(site.output) > 0;
    int split_readers = 0;
    for (const Reader& r : readers) {
      const onnx::NodeProto& n = g->node(r.node);
      if (r.kind == kOther) {
        need_join = true;
        continue;
      }
      std::vector<onnx::NodeProto> out_nodes;
      std::vector<std::string> parts;
      const std::string out = n.output(0);
      for (int gi = 0; gi < 3; ++gi) {
        const std::vector<int64_t>& idx = groups[gi];
        const int64_t ng = static_cast<int64_t>(idx.size());
        onnx::NodeProto op = n;
        op.set_name(names.Make(absl::StrCat(n.name().empty() ? n.op_type() : n.name(), "_group", gi)));
        op.set_input(0, y_groups[gi]);
        const std::string part = names.Make(absl::StrCat(out, "_group", gi));
        op.set_output(0, part);
        std::vector<float> w;
        std::vector<int64_t> wd = r.dims;
        if (r.kind == kConvSum) {  // W[:, idx]
          int64_t inner = 1;
          for (size_t d = 2; d < r.dims.size(); ++d) inner *= r.dims[d];
          const int64_t m = r.dims[0], c = r.dims[1];
          wd[1] = ng;
          w.resize(m * ng * inner);
          for (int64_t o = 0; o < m; ++o) {
            for (int64_t j = 0; j < ng; ++j) {
              std::copy_n(r.w.data() + (o * c + idx[j]) * inner, inner, w.data() + (o * ng + j) * inner);
            }
          }
          if (gi > 0 && op.input_size() > 2) op.mutable_input()->RemoveLast();
        } else if (r.kind == kConvDepthwise) {  // W[idx], B[idx], group |idx|
          int64_t inner = 1;
          for (size_t d = 1; d < r.dims.size(); ++d) inner *= r.dims[d];
          wd[0] = ng;
          w.resize(ng * inner);
          for (int64_t j = 0; j < ng; ++j) std::copy_n(r.w.data() + idx[j] * inner, inner, w.data() + j * inner);
          int_attr(&op, "group", ng);
          if (op.input_size() > 2 && !op.input(2).empty()) {
            std::vector<int64_t> bd;
            absl::StatusOr<std::vector<float>> b = read_weight(op.input(2), &bd);
            if (!b.ok()) return b.status();
            std::vector<float> bg(ng);
            for (int64_t j = 0; j < ng; ++j) bg[j] = (*b)[idx[j]];
            op.set_input(2, add_float_init(absl::StrCat(op.input(2), "_group", gi), {ng}, bg));
          }
        } else {  // Gemm / MatMul: rows idx of [C, K], or columns of transB [K, C]
          const bool trans = r.kind == kGemm && IntAttr(n, "transB", 0) != 0;
          const int64_t rows = r.dims[0], cols = r.dims[1];
          if (!trans) {
            wd = {ng, cols};
            w.resize(ng * cols);
            for (int64_t j = 0; j < ng; ++j) std::copy_n(r.w.data() + idx[j] * cols, cols, w.data() + j * cols);
          } else {
            wd = {rows, ng};
            w.resize(rows * ng);
            for (int64_t o = 0; o < rows; ++o) {
              for (int64_t j = 0; j < ng; ++j) w[o * ng + j] = r.w[o * cols + idx[j]];
            }
          }
          if (gi > 0 && op.input_size() > 2) op.mutable_input()->RemoveLast();
        }
        op.set_input(1, add_float_init(absl::StrCat(n.input(1), "_group", gi), wd, w));
        out_nodes.push_back(op);
        parts.push_back(part);
      }
      if (r.kind == kConvDepthwise) {
        const std::string cat = in_order ? out : names.Make(out + "_joined");
        onnx::NodeProto c = make_node("Concat", parts, {cat}, absl::StrCat(n.name(), "_join"));
        int_attr(&c, "axis", 1);
        out_nodes.push_back(c);
        if (!in_order) {
          const std::string inv = add_int_init(out + "_channel_order", inverse);
          onnx::NodeProto back = make_node("Gather", {cat, inv}, {out}, absl::StrCat(n.name(), "_reorder"));
          int_attr(&back, "axis", 1);
          out_nodes.push_back(back);
        }
      } else {
        const std::string s01 = names.Make(out + "_partial");
        out_nodes.push_back(make_node("Add", {parts[0], parts[1]}, {s01}, absl::StrCat(n.name(), "_sum01")));
        out_nodes.push_back(make_node("Add", {s01, parts[2]}, {out}, absl::StrCat(n.name(), "_sum")));
      }
      replace[r.node] = std::move(out_nodes);
      ++split_readers;
    }
    if (need_join) {
      const std::string cat = in_order ? site.output : names.Make(site.output + "_joined");
      onnx::NodeProto c = make_node("Concat", y_groups, {cat}, site.name + "_join");
      int_attr(&c, "axis", 1);
      site_nodes.push_back(c);
      if (!in_order) {
        const std::string inv = add_int_init(site.output + "_channel_order", inverse);
        onnx::NodeProto back = make_node("Gather", {cat, inv}, {site.output}, site.name + "_reorder");
        int_attr(&back, "axis", 1);
        site_nodes.push_back(back);
      }
    }
    // The site's nodes go where its output was made; the others are dropped.
    const int maker = f.producer.at(site.output);
    for (int k : site.nodes) replace[k] = {};
    replace[maker] = std::move(site_nodes);
    ++result.activations_split;
    result.consumers_split += split_readers;
    result.notes.push_back(absl::StrCat(site.name, ": groups ", groups[0].size(), "/", groups[1].size(), "/",
                                        groups[2].size(), " (", ToString(mode), "), ", split_readers,
                                        " reader(s) split", need_join ? ", joined for the others" : ""));
  }
  if (replace.empty()) return result;
  std::vector<onnx::NodeProto> nodes;
  for (int k = 0; k < g->node_size(); ++k) {
    auto r = replace.find(k);
    if (r == replace.end()) {
      nodes.push_back(g->node(k));
    } else {
      for (auto& n : r->second) nodes.push_back(std::move(n));
    }
  }
  g->clear_node();
  for (auto& n : nodes) *g->add_node() = std::move(n);
  for (auto& t : new_inits) *g->add_initializer() = std::move(t);
  // Weights only the replaced readers read go.
  std::set<std::string> read;
  for (const auto& n : g->node()) {
    for (const auto& in : n.input()) read.insert(in);
  }
  for (const auto& vi : g->output()) read.insert(vi.name());
  auto* inits = g->mutable_initializer();
  for (int i = inits->size() - 1; i >= 0; --i) {
    if (!read.count(inits->Get(i).name()) && weights.count(inits->Get(i).name())) {
      inits->DeleteSubrange(i, 1);
    }
  }
  return result;
}

}  // namespace sq
