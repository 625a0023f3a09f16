#include "core/activations/fold.h"

#include <cmath>
#include <map>
#include <set>

#include "core/activations/node_util.h"
#include "absl/strings/str_cat.h"
#include "core/rewrite.h"

namespace sq {
namespace {

using activations::Attr;
using activations::FloatAttr;
using activations::IntAttr;
using activations::IsDefaultDomain;

// A constant broadcast along the output channels of a layer whose output has rank
// `rank` (the weight's rank for Conv / ConvTranspose, channel axis 1; 2 for Gemm, channel
// axis 1 = the last): a scalar, or a shape whose only non-1 dim is the channel's when
// aligned right against the output. A constant of higher rank than the output would
// broadcast the output up and is none.
bool PerChannel(const std::vector<float>& v, const std::vector<int64_t>& dims, int64_t channels,
                bool gemm, size_t rank, std::vector<float>* out) {
  if (dims.size() > rank) return false;
  if (v.size() == 1) {
    out->assign(channels, v[0]);
    return true;
  }
  if (static_cast<int64_t>(v.size()) != channels) return false;
  // Where the channel dim sits, counted from the right.
  int from_right = -1;
  for (int i = static_cast<int>(dims.size()) - 1, k = 0; i >= 0; --i, ++k) {
    if (dims[i] == channels) {
      if (from_right >= 0) return false;
      from_right = k;
    } else if (dims[i] != 1) {
      return false;
    }
  }
  // Gemm output [N, C]: the channel is the last dim. Conv output [N, C, spatial...]: the
  // constant is [C, 1, ..., 1] with as many trailing 1s as spatial dims (rank - 2); with
  // another count it would scale along a spatial axis (or the batch) instead.
  if (from_right != (gemm ? 0 : static_cast<int>(rank) - 2)) return false;
  *out = v;
  return true;
}

}  // namespace

absl::StatusOr<FoldResult> FoldAffineIntoLayers(
    onnx::GraphProto* g,
    const std::function<absl::StatusOr<std::vector<float>>(const std::string& name,
                                                           std::vector<int64_t>* dims)>& read) {
  FoldResult result;
  UniqueNames names(*g);
  std::set<std::string> graph_outputs;
  for (const auto& vi : g->output()) graph_outputs.insert(vi.name());
  for (bool changed = true; changed;) {
    changed = false;
    std::map<std::string, std::vector<int>> readers;
    std::map<std::string, int> producer;
    std::set<std::string> subgraph_values;
    for (int k = 0; k < g->node_size(); ++k) {
      const auto& n = g->node(k);
      for (const auto& in : n.input()) readers[in].push_back(k);
      for (const auto& o : n.output()) producer[o] = k;
      for (const auto& a : n.attribute()) {
        if (a.has_g() || a.graphs_size() > 0) subgraph_values.insert("*");
      }
    }
    std::set<int> drop, touched;  // this pass: affine nodes folded away, layers rewritten
    for (int k = 0; k < g->node_size(); ++k) {
      if (drop.count(k) || touched.count(k)) continue;
      const onnx::NodeProto& layer = g->node(k);
      if (!IsDefaultDomain(layer) || layer.output_size() != 1 || layer.input_size() < 2) continue;
      const std::string& op = layer.op_type();
      const bool gemm = op == "Gemm";
      if (!(op == "Conv" || gemm || (op == "ConvTranspose" && IntAttr(layer, "group", 1) == 1))) continue;
      if (gemm && (IntAttr(layer, "transA", 0) != 0)) continue;
      const std::string& y = layer.output(0);
      auto rd = readers.find(y);
      if (rd == readers.end() || rd->second.size() != 1 || graph_outputs.count(y) || !subgraph_values.empty()) continue;
      if (drop.count(rd->second[0]) || touched.count(rd->second[0])) continue;
      const onnx::NodeProto& next = g->node(rd->second[0]);
      if (!IsDefaultDomain(next) || next.output_size() < 1) continue;
      std::vector<int64_t> wd;
      absl::StatusOr<std::vector<float>> w = read(layer.input(1), &wd);
      if (!w.ok() || wd.size() < 2) continue;
      // Output channels and how to scale one channel's weights.
      const bool trans_b = gemm && IntAttr(layer, "transB", 0) != 0;
      const int64_t channels = op == "Conv" ? wd[0] : op == "ConvTranspose" ? wd[1] : (trans_b ? wd[0] : wd[1]);
      auto scale_weights = [&](const std::vector<float>& s) {
        std::vector<float> out = *w;
        const int64_t total = static_cast<int64_t>(out.size());
        if (op == "Conv" || trans_b) {
          const int64_t per = total / channels;
          for (int64_t i = 0; i < total; ++i) out[i] *= s[i / per];
        } else if (op == "ConvTranspose") {
          int64_t inner = 1;
          for (size_t d = 2; d < wd.size(); ++d) inner *= wd[d];
          for (int64_t i = 0; i < total; ++i) out[i] *= s[(i / inner) % channels];
        } else {  // Gemm [K, N]
          for (int64_t i = 0; i < total; ++i) out[i] *= s[i % channels];
        }
        return out;
      };
      std::vector<float> bias(channels, 0.0f);
      const bool has_bias = layer.input_size() > 2 && !layer.input(2).empty();
      if (has_bias) {
        std::vector<int64_t> bd;
        absl::StatusOr<std::vector<float>> b = read(layer.input(2), &bd);
        if (!b.ok() || b->size() != static_cast<size_t>(channels)) continue;
        // Gemm's C is bidirectionally broadcast: [N] or [1, N] is per column; [N, 1] (M = N)
        // would be per row.
        if (gemm && !bd.empty() && bd.back() != channels) continue;
        bias = *b;
      }
      if (gemm && (FloatAttr(layer, "alpha", 1.0f) != 1.0f || FloatAttr(layer, "beta", 1.0f) != 1.0f)) continue;
      std::vector<float> new_w = *w, new_b = bias;
      const std::string& nop = next.op_type();
      if (nop == "BatchNormalization" && next.input_size() >= 5 && next.input(0) == y &&
          next.output_size() == 1 && !gemm) {
        std::vector<int64_t> d;
        absl::StatusOr<std::vector<float>> gamma = read(next.input(1), &d), beta = read(next.input(2), &d),
                                           mean = read(next.input(3), &d), var = read(next.input(4), &d);
        if (!gamma.ok() || !beta.ok() || !mean.ok() || !var.ok()) continue;
        if (gamma->size() != static_cast<size_t>(channels) || beta->size() != gamma->size() ||
            mean->size() != gamma->size() || var->size() != gamma->size()) continue;
        const float eps = FloatAttr(next, "epsilon", 1e-5f);
        std::vector<float> s(channels);
        for (int64_t c = 0; c < channels; ++c) {
          s[c] = static_cast<float>((*gamma)[c] / std::sqrt(static_cast<double>((*var)[c]) + eps));
          new_b[c] = static_cast<float>((static_cast<double>(bias[c]) - (*mean)[c]) * s[c] + (*beta)[c]);
        }
        new_w = scale_weights(s);
        ++result.batch_norms;
        FoldResult::Stats st;
        st.mean = *beta;
        st.sd.resize(channels);
        for (int64_t c = 0; c < channels; ++c) st.sd[c] = std::abs((*gamma)[c]);
        result.output_stats.erase(y);
        result.output_stats[next.output(0)] = std::move(st);
      } else if ((nop == "Mul" || nop == "Add") && next.input_size() == 2 && next.output_size() == 1) {
        const std::string& other = next.input(0) == y ? next.input(1) : next.input(0);
        if (other == y) continue;
        std::vector<int64_t> d;
        absl::StatusOr<std::vector<float>> c = read(other, &d);
        if (!c.ok()) continue;
        std::vector<float> per;
        if (!PerChannel(*c, d, channels, gemm, gemm ? 2 : wd.size(), &per)) continue;
        auto st = result.output_stats.find(y);
        if (nop == "Mul") {
          for (int64_t i = 0; i < channels; ++i) new_b[i] = bias[i] * per[i];
          new_w = scale_weights(per);
          ++result.muls;
          if (st != result.output_stats.end()) {
            for (int64_t i = 0; i < channels; ++i) {
              st->second.mean[i] *= per[i];
              st->second.sd[i] *= std::abs(per[i]);
            }
          }
        } else {
          for (int64_t i = 0; i < channels; ++i) new_b[i] = bias[i] + per[i];
          ++result.adds;
          if (st != result.output_stats.end()) {
            for (int64_t i = 0; i < channels; ++i) st->second.mean[i] += per[i];
          }
        }
        if (st != result.output_stats.end()) {
          FoldResult::Stats moved = std::move(st->second);
          result.output_stats.erase(st);
          result.output_stats[next.output(0)] = std::move(moved);
        }
      } else {
        continue;
      }
      bool finite = true;
      for (float v : new_w) finite = finite && std::isfinite(v);
      for (float v : new_b) finite = finite && std::isfinite(v);
      if (!finite) continue;
      // The layer takes the new weight and bias and the affine op's output name.
      onnx::NodeProto folded = layer;
      auto add_init = [&](const std::string& base, const std::vector<int64_t>& dims, const std::vector<float>& v) {
        onnx::TensorProto* t = g->add_initializer();
        t->set_name(names.Make(base));
        t->set_data_type(onnx::TensorProto::FLOAT);
        for (int64_t x : dims) t->add_dims(x);
        t->set_raw_data(v.data(), v.size() * sizeof(float));
        return t->name();
      };
      folded.set_input(1, add_init(layer.input(1) + "_folded", wd, new_w));
      const std::string b_name = add_init((has_bias ? layer.input(2) : layer.output(0) + "_bias") + "_folded",
                                          {channels}, new_b);
      if (folded.input_size() > 2) {
        folded.set_input(2, b_name);
      } else {
        folded.add_input(b_name);
      }
      folded.set_output(0, next.output(0));
      drop.insert(rd->second[0]);
      touched.insert(k);
      *g->mutable_node(k) = std::move(folded);
      changed = true;
    }
    for (auto it = drop.rbegin(); it != drop.rend(); ++it) g->mutable_node()->DeleteSubrange(*it, 1);
  }
  // Constants nothing reads any more.
  std::set<std::string> read_names;
  for (const auto& n : g->node()) {
    for (const auto& in : n.input()) read_names.insert(in);
    for (const auto& a : n.attribute()) {
      if (a.has_g() || a.graphs_size() > 0) return result;  // subgraphs may read them
    }
  }
  for (const auto& vi : g->output()) read_names.insert(vi.name());
  std::set<std::string> inputs;
  for (const auto& vi : g->input()) inputs.insert(vi.name());
  auto* inits = g->mutable_initializer();
  for (int i = inits->size() - 1; i >= 0; --i) {
    if (!read_names.count(inits->Get(i).name()) && !inputs.count(inits->Get(i).name())) inits->DeleteSubrange(i, 1);
  }
  auto* all = g->mutable_node();
  for (int i = all->size() - 1; i >= 0; --i) {
    const onnx::NodeProto& n = all->Get(i);
    if (n.op_type() == "Constant" && n.output_size() == 1 && !read_names.count(n.output(0))) all->DeleteSubrange(i, 1);
  }
  return result;
}

absl::StatusOr<int> FuseHardSwish(
    onnx::GraphProto* g, int opset,
    const std::function<absl::StatusOr<std::vector<float>>(const std::string& name,
                                                           std::vector<int64_t>* dims)>& read) {
  std::map<std::string, std::vector<int>> readers;
  std::map<std::string, int> producer;
  std::set<std::string> outputs;
  for (const auto& vi : g->output()) outputs.insert(vi.name());
  for (int k = 0; k < g->node_size(); ++k) {
    const auto& n = g->node(k);
    for (const auto& in : n.input()) readers[in].push_back(k);
    for (const auto& o : n.output()) producer[o] = k;
    for (const auto& a : n.attribute()) {
      if (a.has_g() || a.graphs_size() > 0) return 0;  // subgraphs may read the inner values
    }
  }
  auto scalar = [&](const std::string& name, float want) {
    std::vector<int64_t> d;
    absl::StatusOr<std::vector<float>> v = read(name, &d);
    return v.ok() && v->size() == 1 && (*v)[0] == want;
  };
  // The one node reading `t`, when nothing else (graph outputs included) does.
  auto only_reader = [&](const std::string& t) -> int {
    auto r = readers.find(t);
    if (r == readers.end() || r->second.size() != 1 || outputs.count(t)) return -1;
    return r->second[0];
  };
  UniqueNames names(*g);
  std::set<int> drop;
  std::map<int, std::vector<onnx::NodeProto>> replace;
  for (int k = 0; k < g->node_size(); ++k) {
    const onnx::NodeProto& add = g->node(k);
    if (add.op_type() != "Add" || !IsDefaultDomain(add) || add.input_size() != 2 || drop.count(k)) continue;
    const int xi = scalar(add.input(1), 3.0f) ? 0 : scalar(add.input(0), 3.0f) ? 1 : -1;
    if (xi < 0) continue;
    const std::string x = add.input(xi);
    const int ci = only_reader(add.output(0));
    if (ci < 0) continue;
    const onnx::NodeProto& clip = g->node(ci);
    if (clip.op_type() != "Clip" || !IsDefaultDomain(clip)) continue;
    float lo = -1, hi = -1;
    for (const auto& a : clip.attribute()) {
      if (a.name() == "min") lo = a.f();
      if (a.name() == "max") hi = a.f();
    }
    if (clip.input_size() > 1 && scalar(clip.input(1), 0.0f)) lo = 0;
    if (clip.input_size() > 2 && scalar(clip.input(2), 6.0f)) hi = 6;
    if (lo != 0.0f || hi != 6.0f) continue;
    const int mi = only_reader(clip.output(0));
    if (mi < 0) continue;
    const onnx::NodeProto& mul = g->node(mi);
    if (mul.op_type() != "Mul" || !IsDefaultDomain(mul) || mul.input_size() != 2) continue;
    if (!((mul.input(0) == x && mul.input(1) == clip.output(0)) || (mul.input(1) == x && mul.input(0) == clip.output(0)))) continue;
    const int di = only_reader(mul.output(0));
    if (di < 0) continue;
    const onnx::NodeProto& div = g->node(di);
    const bool by_div = div.op_type() == "Div" && div.input_size() == 2 && div.input(0) == mul.output(0) && scalar(div.input(1), 6.0f);
    const bool by_mul = div.op_type() == "Mul" && div.input_size() == 2 &&
                        ((div.input(0) == mul.output(0) && scalar(div.input(1), 1.0f / 6)) ||
                         (div.input(1) == mul.output(0) && scalar(div.input(0), 1.0f / 6)));
    if (!IsDefaultDomain(div) || !(by_div || by_mul) || div.output_size() != 1) continue;
    if (drop.count(ci) || drop.count(mi) || drop.count(di)) continue;
    onnx::NodeProto hs;
    hs.set_op_type("HardSigmoid");
    hs.set_name(names.Make(add.name().empty() ? "HardSwish_gate" : add.name() + "_hardswish_gate"));
    hs.add_input(x);
    const std::string gate = names.Make(x + "_hardswish_gate");
    hs.add_output(gate);
    auto* alpha = hs.add_attribute();
    alpha->set_name("alpha");
    alpha->set_type(onnx::AttributeProto::FLOAT);
    alpha->set_f(1.0f / 6);
    auto* beta = hs.add_attribute();
    beta->set_name("beta");
    beta->set_type(onnx::AttributeProto::FLOAT);
    beta->set_f(0.5f);
    onnx::NodeProto out;
    out.set_op_type("Mul");
    out.set_name(names.Make(div.name().empty() ? "HardSwish" : div.name() + "_hardswish"));
    out.add_input(x);
    out.add_input(gate);
    out.add_output(div.output(0));
    // The pair goes where the last node was (x and nothing else is read).
    if (opset >= 14) {
      onnx::NodeProto one;
      one.set_op_type("HardSwish");
      one.set_name(out.name());
      one.add_input(x);
      one.add_output(div.output(0));
      replace[di] = {one};
    } else {
      replace[di] = {hs, out};
    }
    drop.insert(k);
    drop.insert(ci);
    drop.insert(mi);
  }
  if (replace.empty()) return 0;
  std::vector<onnx::NodeProto> nodes;
  for (int k = 0; k < g->node_size(); ++k) {
    if (drop.count(k)) continue;
    auto r = replace.find(k);
    if (r == replace.end()) {
      nodes.push_back(g->node(k));
    } else {
      for (auto& n : r->second) nodes.push_back(std::move(n));
    }
  }
  g->clear_node();
  for (auto& n : nodes) *g->add_node() = std::move(n);
  return static_cast<int>(replace.size());
}

}  // namespace sq
