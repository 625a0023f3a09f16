#include "core/activations/act_split.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "core/activations/node_util.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/rewrite.h"
#include "core/status_macros.h"

namespace sq {
namespace {

using activations::Attr;
using activations::FloatAttr;
using activations::IntAttr;
using activations::IsDefaultDomain;

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
    // Grows a site from x: every later node whose inputs are x, scalars or the site's values.
    auto grow = [&](const std::string& x, std::vector<int>* region, std::vector<std::string>* leaving) {
      region->clear();
      leaving->clear();
      std::set<std::string> produced{x};
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
        if (!inside || !touches) continue;
        // A core op's data is its input 0 (Clip's bounds, PRelu's slope are not).
        if (CoreOps().count(n.op_type()) && !produced.count(n.input(0))) continue;
        region->push_back(k);
        produced.insert(n.output(0));
        has_core = has_core || CoreOps().count(n.op_type());
      }
      if (!has_core || region->empty()) return false;
      // The values of `nodes` read outside it.
      auto leaving_of = [&](const std::vector<int>& nodes) {
        std::vector<std::string> out;
        std::set<int> in_region(nodes.begin(), nodes.end());
        for (int k : nodes) {
          const std::string& o = graph.node(k).output(0);
          bool leaves = f.graph_outputs.count(o) > 0 || f.subgraph_reads.count(o) > 0;
          auto r = f.readers.find(o);
          if (r != f.readers.end()) {
            for (int reader : r->second) leaves = leaves || !in_region.count(reader);
          }
          if (leaves) out.push_back(o);
        }
        return out;
      };
      // Exactly one value may leave the site.
      *leaving = leaving_of(*region);
      if (leaving->size() == 1) return true;
      // Glue that only reads x and the site's values may still be no part of it (a residual
      // Add(act(x), x) whose operand is also read elsewhere): the largest sub-site made of
      // one node and what it is computed from inside the region, when one value leaves it.
      const std::set<int> all(region->begin(), region->end());
      std::vector<int> best;
      std::vector<std::string> best_leaving;
      for (auto it = region->rbegin(); it != region->rend(); ++it) {
        std::set<int> sub;
        std::vector<int> stack{*it};
        while (!stack.empty()) {
          const int k = stack.back();
          stack.pop_back();
          if (!sub.insert(k).second) continue;
          for (const auto& in : graph.node(k).input()) {
            auto p = f.producer.find(in);
            if (p != f.producer.end() && all.count(p->second)) stack.push_back(p->second);
          }
        }
        std::vector<int> nodes(sub.begin(), sub.end());
        const bool core = std::any_of(nodes.begin(), nodes.end(),
                                      [&](int k) { return CoreOps().count(graph.node(k).op_type()) > 0; });
        if (!core || nodes.size() <= best.size()) continue;
        std::vector<std::string> out = leaving_of(nodes);
        if (out.size() != 1) continue;
        best = std::move(nodes);
        best_leaving = std::move(out);
      }
      if (best.empty()) return false;
      *region = std::move(best);
      *leaving = std::move(best_leaving);
      return true;
    };
    // The activation's true input may sit behind scalar glue (HardSwish as
    // (x + 3) -> Clip -> * x -> / 6 starts at x, not at x + 3): walk back while that holds.
    std::vector<std::string> roots{n0.input(0)};
    for (std::string x = n0.input(0);;) {
      auto p = f.producer.find(x);
      if (p == f.producer.end() || used[p->second]) break;
      const auto& pn = graph.node(p->second);
      if (!IsDefaultDomain(pn) || !GlueOps().count(pn.op_type()) || pn.output_size() != 1) break;
      std::string data;
      int others = 0;
      for (const auto& in : pn.input()) {
        if (f.scalar_constants.count(in)) continue;
        data = in;
        ++others;
      }
      if (others != 1) break;
      x = data;
      roots.insert(roots.begin(), x);
    }
    std::vector<int> region;
    std::vector<std::string> leaving;
    std::string x;
    for (const std::string& root : roots) {  // the widest site that works
      if (grow(root, &region, &leaving)) {
        x = root;
        break;
      }
    }
    if (x.empty()) continue;
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
    for (const auto& n : g->node()) {
      if (n.op_type() == "Constant" && n.output_size() == 1) weights.insert(n.output(0));
    }
  }
  std::map<std::string, int64_t> value_info_channels;
  for (const auto* list : {&g->value_info(), &g->output(), &g->input()}) {
    for (const auto& vi : *list) {
      if (!vi.type().has_tensor_type() || !vi.type().tensor_type().has_shape()) continue;
      const auto& shape = vi.type().tensor_type().shape();
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

  // Tensors available as three group tensors (a depthwise layer taken apart by an earlier
  // site): a later site on such a tensor takes the parts and their grouping as they are.
  struct Parts {
    std::vector<std::vector<int64_t>> groups;
    std::vector<std::string> names;
  };
  std::map<std::string, Parts> parts_of;
  std::set<std::string> created;  // joins this rewrite made (dropped if nothing reads them)
  auto join = [&](const std::vector<std::string>& parts, const std::string& out, bool in_order,
                  const std::vector<int64_t>& inverse, const std::string& base, std::vector<onnx::NodeProto>* to) {
    const std::string cat = in_order ? out : names.Make(out + "_joined");
    onnx::NodeProto c = make_node("Concat", parts, {cat}, base + "_join");
    int_attr(&c, "axis", 1);
    created.insert(c.name());
    to->push_back(c);
    if (!in_order) {
      const std::string inv = add_int_init(out + "_channel_order", inverse);
      onnx::NodeProto back = make_node("Gather", {cat, inv}, {out}, base + "_reorder");
      int_attr(&back, "axis", 1);
      created.insert(back.name());
      to->push_back(back);
    }
  };
  auto depthwise = [&](const onnx::NodeProto& n, std::vector<int64_t>* dims, std::vector<float>* w) {
    if (!IsDefaultDomain(n) || n.op_type() != "Conv" || n.input_size() < 2 || !weights.count(n.input(1))) return false;
    absl::StatusOr<std::vector<float>> v = read_weight(n.input(1), dims);
    if (!v.ok() || dims->size() < 3 || (*dims)[1] != 1 || IntAttr(n, "group", 1) != (*dims)[0]) return false;
    *w = std::move(*v);
    return true;
  };
  // A depthwise Conv on channels idx: W[idx], B[idx], group |idx|.
  auto depthwise_part = [&](const onnx::NodeProto& n, const std::vector<int64_t>& dims, const std::vector<float>& w,
                            const std::vector<int64_t>& idx, int gi, const std::string& input,
                            const std::string& output) -> absl::StatusOr<onnx::NodeProto> {
    const int64_t ng = static_cast<int64_t>(idx.size());
    int64_t inner = 1;
    for (size_t d = 1; d < dims.size(); ++d) inner *= dims[d];
    std::vector<int64_t> wd = dims;
    wd[0] = ng;
    std::vector<float> wg(ng * inner);
    for (int64_t j = 0; j < ng; ++j) std::copy_n(w.data() + idx[j] * inner, inner, wg.data() + j * inner);
    onnx::NodeProto op = n;
    op.set_name(names.Make(absl::StrCat(n.name().empty() ? n.op_type() : n.name(), "_group", gi)));
    op.set_input(0, input);
    op.set_input(1, add_float_init(absl::StrCat(n.input(1), "_group", gi), wd, wg));
    op.set_output(0, output);
    int_attr(&op, "group", ng);
    if (op.input_size() > 2 && !op.input(2).empty()) {
      std::vector<int64_t> bd;
      absl::StatusOr<std::vector<float>> bias = read_weight(op.input(2), &bd);
      if (!bias.ok()) return bias.status();
      std::vector<float> bg(ng);
      for (int64_t j = 0; j < ng; ++j) bg[j] = (*bias)[idx[j]];
      op.set_input(2, add_float_init(absl::StrCat(n.input(2), "_group", gi), {ng}, bg));
    }
    return op;
  };

  for (const ActivationSite& site : sites) {
    int64_t channels = -1;
    bool conflict = false;
    auto agree = [&](int64_t c) {
      if (c <= 0) return;
      if (channels < 0) channels = c;
      else if (channels != c) conflict = true;
    };
    const Parts* inherited = nullptr;
    if (auto it = parts_of.find(site.input); it != parts_of.end()) {
      inherited = &it->second;
      int64_t c = 0;
      for (const auto& grp : inherited->groups) c += static_cast<int64_t>(grp.size());
      agree(c);
    }
    // The producer of X, when it can make the groups itself: a group-1 Conv or a Gemm
    // (rows of W), or a depthwise Conv (its channels), with constant weights, X read only
    // by the site.
    enum ProducerKind { kNone, kConv, kGemm, kDepthwise };
    ProducerKind pkind = kNone;
    int pnode = -1;
    std::vector<int64_t> pdims;
    std::vector<float> pw;
    if (!inherited) {
      auto pr = f.producer.find(site.input);
      bool only_site = !f.graph_outputs.count(site.input) && !f.subgraph_reads.count(site.input);
      if (auto rr = f.readers.find(site.input); rr != f.readers.end()) {
        const std::set<int> mine(site.nodes.begin(), site.nodes.end());
        for (int k : rr->second) only_site = only_site && mine.count(k);
      }
      if (pr != f.producer.end()) {
        const onnx::NodeProto& n = g->node(pr->second);
        if (depthwise(n, &pdims, &pw)) {
          pkind = kDepthwise;
          agree(pdims[0]);
        } else if (IsDefaultDomain(n) && n.output_size() == 1 && n.input_size() >= 2 && weights.count(n.input(1)) &&
                   (n.op_type() == "Conv" || n.op_type() == "Gemm")) {
          absl::StatusOr<std::vector<float>> v = read_weight(n.input(1), &pdims);
          if (v.ok() && n.op_type() == "Conv" && pdims.size() >= 3 && IntAttr(n, "group", 1) == 1) {
            pkind = kConv;
            agree(pdims[0]);
          } else if (v.ok() && n.op_type() == "Gemm" && pdims.size() == 2 && IntAttr(n, "transA", 0) == 0) {
            pkind = kGemm;
            agree(IntAttr(n, "transB", 0) ? pdims[0] : pdims[1]);
          }
          if (pkind != kNone) pw = std::move(*v);
        }
        if (pkind != kNone) pnode = pr->second;
        // A layer X is not made only for (X read elsewhere too) still tells the channel
        // count, but keeps making X whole.
        if (!only_site || replace.count(pr->second)) {
          pkind = kNone;
          pnode = -1;
          pw.clear();
        }
      }
    }
    // Readers of Y that take the groups: depthwise Convs not yet taken apart.
    struct Reader {
      int node;
      std::vector<int64_t> dims;
      std::vector<float> w;
    };
    std::vector<Reader> split_readers;
    bool need_join = f.graph_outputs.count(site.output) > 0 || f.subgraph_reads.count(site.output) > 0;
    if (auto rd = f.readers.find(site.output); rd != f.readers.end()) {
      std::set<int> seen;
      for (int k : rd->second) {
        if (!seen.insert(k).second) continue;
        const onnx::NodeProto& n = g->node(k);
        int uses = 0;
        for (const auto& in : n.input()) uses += in == site.output;
        Reader r;
        r.node = k;
        if (uses == 1 && n.input(0) == site.output && !replace.count(k) && depthwise(n, &r.dims, &r.w)) {
          agree(r.dims[0]);
          split_readers.push_back(std::move(r));
        } else {
          need_join = true;
        }
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
    if (!inherited && mode == ActivationSplit::kRange && !range) {
      result.notes.push_back(absl::StrCat(site.name, ": left whole (no per-channel ranges for ", site.input, ")"));
      continue;
    }
    // Range grouping: the channels of X and Y are both quantized in groups, so the grouping
    // (of X's ranges or of Y's) with the lower noise energy over both wins, and the site is
    // split only where it pays: the per-tensor quantization noise energy (elements x step^2,
    // step ~ span) of the whole tensors over that of the groups.
    std::vector<const TensorRange*> quantized;
    for (const std::string& t : {site.input, site.output}) {
      auto it = ranges.find(t);
      if (it != ranges.end() && static_cast<int64_t>(it->second.channel_lo.size()) == channels) {
        quantized.push_back(&it->second);
      }
    }
    auto span = [&](const TensorRange& r, const std::vector<int64_t>& idx) {
      float lo = 0, hi = 0;
      for (int64_t c : idx) {
        lo = std::min(lo, r.channel_lo[c]);
        hi = std::max(hi, r.channel_hi[c]);
      }
      return static_cast<double>(hi) - lo;
    };
    auto noise = [&](const std::vector<std::vector<int64_t>>& gs) {
      double e = 0;
      for (const TensorRange* r : quantized) {
        for (const auto& grp : gs) e += static_cast<double>(grp.size()) * span(*r, grp) * span(*r, grp);
      }
      return e;
    };
    std::vector<std::vector<int64_t>> groups;
    if (inherited) {
      groups = inherited->groups;
    } else if (mode == ActivationSplit::kRange && !quantized.empty()) {
      double best = std::numeric_limits<double>::infinity();
      for (const TensorRange* r : quantized) {
        std::vector<std::vector<int64_t>> gs = GroupChannels(channels, mode, r->channel_lo, r->channel_hi);
        const double e = noise(gs);
        if (e < best) {
          best = e;
          groups = std::move(gs);
        }
      }
    } else {
      groups = GroupChannels(channels, mode, range ? range->channel_lo : std::vector<float>{},
                             range ? range->channel_hi : std::vector<float>{});
    }
    std::string gain_text;
    if (!inherited && mode == ActivationSplit::kRange && !quantized.empty()) {
      std::vector<int64_t> all(channels);
      std::iota(all.begin(), all.end(), 0);
      const double whole = noise({all}), parts = noise(groups);
      const double gain_db = parts > 0 ? 10 * std::log10(whole / parts) : 0;
      if (gain_db < kActivationSplitMinGainDb) {
        result.notes.push_back(absl::StrFormat("%s: left whole (range groups would lower its quantization noise by %.1f dB < %.0f dB)",
                                               site.name, gain_db, kActivationSplitMinGainDb));
        continue;
      }
      gain_text = absl::StrFormat(", noise -%.1f dB", gain_db);
    }
    std::vector<int64_t> joined;
    for (const auto& grp : groups) joined.insert(joined.end(), grp.begin(), grp.end());
    bool in_order = true;
    for (size_t i = 0; i < joined.size(); ++i) in_order = in_order && joined[i] == static_cast<int64_t>(i);
    std::vector<int64_t> inverse(joined.size());
    for (size_t i = 0; i < joined.size(); ++i) inverse[joined[i]] = static_cast<int64_t>(i);

    // X's groups: inherited parts, the producer's own, or Gathers.
    std::vector<std::string> x_parts(3);
    std::vector<onnx::NodeProto> producer_nodes;
    std::vector<onnx::NodeProto> site_nodes;
    std::string how;
    for (int gi = 0; gi < 3; ++gi) {
      const std::vector<int64_t>& idx = groups[gi];
      const int64_t ng = static_cast<int64_t>(idx.size());
      if (inherited) {
        x_parts[gi] = inherited->names[gi];
        how = "groups of the layer before";
        continue;
      }
      const std::string xg = names.Make(absl::StrCat(site.input, "_group", gi));
      x_parts[gi] = xg;
      if (pkind == kNone) {
        const std::string ids = add_int_init(absl::StrCat(site.input, "_group", gi, "_channels"), idx);
        onnx::NodeProto gather = make_node("Gather", {site.input, ids}, {xg}, absl::StrCat(site.name, "_group", gi, "_Gather"));
        int_attr(&gather, "axis", 1);
        site_nodes.push_back(gather);
        how = "gathered";
        continue;
      }
      const onnx::NodeProto& pn = g->node(pnode);
      if (pkind == kDepthwise) {
        const std::string ids = add_int_init(absl::StrCat(pn.input(0), "_group", gi, "_channels"), idx);
        const std::string in_g = names.Make(absl::StrCat(pn.input(0), "_group", gi));
        onnx::NodeProto gather = make_node("Gather", {pn.input(0), ids}, {in_g}, absl::StrCat(pn.name(), "_group", gi, "_Gather"));
        int_attr(&gather, "axis", 1);
        producer_nodes.push_back(gather);
        SQ_ASSIGN_OR_RETURN(onnx::NodeProto dw, depthwise_part(pn, pdims, pw, idx, gi, in_g, xg));
        producer_nodes.push_back(dw);
        how = "made by the depthwise layer in groups";
        continue;
      }
      // Conv / Gemm: the output channels idx of W (and of the bias).
      onnx::NodeProto op = pn;
      op.set_name(names.Make(absl::StrCat(pn.name().empty() ? pn.op_type() : pn.name(), "_group", gi)));
      op.set_output(0, xg);
      std::vector<int64_t> wd = pdims;
      std::vector<float> wg;
      const bool cols = pkind == kGemm && IntAttr(pn, "transB", 0) == 0;  // Gemm B [K, N]
      if (!cols) {
        const int64_t per = static_cast<int64_t>(pw.size()) / pdims[0];
        wd[0] = ng;
        wg.resize(ng * per);
        for (int64_t j = 0; j < ng; ++j) std::copy_n(pw.data() + idx[j] * per, per, wg.data() + j * per);
      } else {
        const int64_t rows = pdims[0], n_cols = pdims[1];
        wd = {rows, ng};
        wg.resize(rows * ng);
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = 0; j < ng; ++j) wg[r * ng + j] = pw[r * n_cols + idx[j]];
        }
      }
      op.set_input(1, add_float_init(absl::StrCat(pn.input(1), "_group", gi), wd, wg));
      if (op.input_size() > 2 && !op.input(2).empty()) {
        std::vector<int64_t> bd;
        absl::StatusOr<std::vector<float>> bias = read_weight(op.input(2), &bd);
        if (!bias.ok()) return bias.status();
        if (bias->size() == static_cast<size_t>(channels)) {
          std::vector<float> bg(ng);
          for (int64_t j = 0; j < ng; ++j) bg[j] = (*bias)[idx[j]];
          op.set_input(2, add_float_init(absl::StrCat(pn.input(2), "_group", gi), {ng}, bg));
        } else if (bias->size() != 1) {
          return absl::InternalError(absl::StrCat("activation split: bias of ", pn.name(), " is neither per channel nor scalar"));
        }
      }
      producer_nodes.push_back(op);
      how = "made by the layer before in groups";
    }
    // A copy of the activation per group.
    std::vector<std::string> y_parts;
    for (int gi = 0; gi < 3; ++gi) {
      std::map<std::string, std::string> rename{{site.input, x_parts[gi]}};
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
      y_parts.push_back(rename[site.output]);
    }
    // Depthwise readers run per group; their outputs stay in groups for the next site.
    for (const Reader& r : split_readers) {
      const onnx::NodeProto& n = g->node(r.node);
      std::vector<onnx::NodeProto> out_nodes;
      Parts parts;
      parts.groups = groups;
      for (int gi = 0; gi < 3; ++gi) {
        const std::string part = names.Make(absl::StrCat(n.output(0), "_group", gi));
        SQ_ASSIGN_OR_RETURN(onnx::NodeProto dw, depthwise_part(n, r.dims, r.w, groups[gi], gi, y_parts[gi], part));
        out_nodes.push_back(dw);
        parts.names.push_back(part);
      }
      join(parts.names, n.output(0), in_order, inverse, n.name(), &out_nodes);
      parts_of[n.output(0)] = parts;
      replace[r.node] = std::move(out_nodes);
    }
    if (need_join) join(y_parts, site.output, in_order, inverse, site.name, &site_nodes);
    const int maker = f.producer.at(site.output);
    for (int k : site.nodes) replace[k] = {};
    replace[maker] = std::move(site_nodes);
    if (pkind != kNone) replace[pnode] = std::move(producer_nodes);
    ++result.activations_split;
    result.consumers_split += static_cast<int>(split_readers.size());
    result.notes.push_back(absl::StrCat(site.name, ": groups ", groups[0].size(), "/", groups[1].size(), "/",
                                        groups[2].size(), " (", inherited ? "inherited" : ToString(mode), gain_text, "; input ",
                                        how, "), ", split_readers.size(), " depthwise reader(s) in groups",
                                        need_join ? ", joined for the others" : ""));
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
  // Joins nothing reads (a later site took the groups) go.
  for (bool dropped = true; dropped;) {
    dropped = false;
    std::set<std::string> wanted(f.graph_outputs.begin(), f.graph_outputs.end());
    wanted.insert(f.subgraph_reads.begin(), f.subgraph_reads.end());
    for (const auto& n : nodes) {
      for (const auto& in : n.input()) wanted.insert(in);
    }
    for (size_t i = nodes.size(); i-- > 0;) {
      if (created.count(nodes[i].name()) && !wanted.count(nodes[i].output(0))) {
        nodes.erase(nodes.begin() + static_cast<std::ptrdiff_t>(i));
        dropped = true;
      }
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
  auto* all = g->mutable_node();
  for (int i = all->size() - 1; i >= 0; --i) {
    const onnx::NodeProto& n = all->Get(i);
    if (n.op_type() == "Constant" && n.output_size() == 1 && !read.count(n.output(0)) &&
        !f.subgraph_reads.count(n.output(0))) {
      all->DeleteSubrange(i, 1);
    }
  }
  return result;
}

}  // namespace sq
