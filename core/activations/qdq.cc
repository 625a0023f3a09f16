#include "core/activations/qdq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
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

bool IsLayerOpType(const std::string& op) {
  return op == "Conv" || op == "ConvTranspose" || op == "MatMul" || op == "Gemm";
}

// A quantized layer op: its node, the input index of its weight and of its activations.
struct LayerOp {
  const onnx::NodeProto* node = nullptr;
  const onnx::NodeProto* weight_dq = nullptr;
  int weight_input = 1;
  std::vector<int> act_inputs;
};

std::vector<LayerOp> FindLayerOps(const onnx::GraphProto& graph) {
  std::set<std::string> constants;
  for (const auto& t : graph.initializer()) constants.insert(t.name());
  for (const auto& vi : graph.input()) constants.erase(vi.name());
  for (const auto& n : graph.node()) {
    if (n.op_type() == "Constant" && n.output_size() == 1) constants.insert(n.output(0));
  }
  std::map<std::string, const onnx::NodeProto*> dq_of_constant;
  for (const auto& n : graph.node()) {
    if (n.op_type() == "DequantizeLinear" && IsDefaultDomain(n) && n.input_size() >= 2 &&
        n.output_size() == 1 && constants.count(n.input(0))) {
      dq_of_constant[n.output(0)] = &n;
    }
  }
  std::vector<LayerOp> ops;
  for (const auto& n : graph.node()) {
    if (!IsDefaultDomain(n) || !IsLayerOpType(n.op_type()) || n.input_size() < 2 || n.output_size() < 1) {
      continue;
    }
    LayerOp op;
    op.node = &n;
    auto weight = dq_of_constant.find(n.input(1));
    if (weight != dq_of_constant.end()) {
      op.weight_input = 1;
      op.weight_dq = weight->second;
      if (!constants.count(n.input(0))) op.act_inputs.push_back(0);
    } else if (n.op_type() == "MatMul" && dq_of_constant.count(n.input(0))) {
      op.weight_input = 0;
      op.weight_dq = dq_of_constant[n.input(0)];
      if (!constants.count(n.input(1))) op.act_inputs.push_back(1);
    } else {
      continue;
    }
    ops.push_back(op);
  }
  return ops;
}

onnx::TensorProto* AddInitializer(onnx::GraphProto* g, const std::string& name, int32_t type,
                                  const std::vector<int64_t>& dims, const void* data, size_t bytes) {
  onnx::TensorProto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(type);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(data, bytes);
  return t;
}

onnx::TensorProto* FindInitializer(onnx::GraphProto* g, const std::string& name) {
  for (auto& t : *g->mutable_initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

// A channel whose weights are (nearly) zero (a pruned or dead channel: BatchNorm scale ~0
// folded in) gets a weight step so small that its bias, divided by input step x weight
// step, leaves int32 and the layer could not take an int32 bias. Raise such a channel's
// step to the smallest that fits (with a factor 2 margin) and requantize its codes: they
// change by at most that step, which is ~|bias| / 2^31 of the input's scale. A channel
// whose codes all sit at the zero point (all-zero weights: the quantizer gives them step 1)
// is the same at any step; it takes that smallest step too, or its bias, the channel's whole
// output, would be rounded to the input's step. `need[c]`: the step channel c's biases
// need, 2 |bias| / (input step x 2^31), the largest over the ops reading this weight. Only
// 8-bit codes held inline, per output channel (axis 0), and codes, scale and zero point read
// by this DequantizeLinear alone.
void RaiseDeadChannelSteps(onnx::GraphProto* g, const onnx::NodeProto& dq, const std::vector<double>& need,
                           const std::map<std::string, int>& readers_of) {
  auto only_here = [&](const std::string& t) {
    auto it = readers_of.find(t);
    return it != readers_of.end() && it->second == 1;
  };
  if (dq.input_size() < 2 || !only_here(dq.input(0)) || !only_here(dq.input(1))) return;
  const bool has_zp = dq.input_size() > 2 && !dq.input(2).empty();
  if (has_zp && !only_here(dq.input(2))) return;
  onnx::TensorProto* codes = FindInitializer(g, dq.input(0));
  onnx::TensorProto* scale = FindInitializer(g, dq.input(1));
  onnx::TensorProto* zp = has_zp ? FindInitializer(g, dq.input(2)) : nullptr;
  if (!codes || !scale || (has_zp && !zp) || !codes->has_raw_data() || !scale->has_raw_data() ||
      (zp && !zp->has_raw_data())) {
    return;
  }
  const bool is_signed = codes->data_type() == onnx::TensorProto::INT8;
  if (!is_signed && codes->data_type() != onnx::TensorProto::UINT8) return;
  const int64_t channels = static_cast<int64_t>(need.size());
  if (scale->raw_data().size() != static_cast<size_t>(channels) * 4 ||
      (zp && zp->raw_data().size() != static_cast<size_t>(channels)) || codes->dims_size() < 1 ||
      codes->dims(0) != channels || codes->raw_data().size() % channels != 0) {
    return;
  }
  std::string& raw_codes = *codes->mutable_raw_data();
  std::string& raw_scale = *scale->mutable_raw_data();
  const int64_t per = static_cast<int64_t>(raw_codes.size()) / channels;
  const int qmin = is_signed ? -128 : 0, qmax = is_signed ? 127 : 255;
  for (int64_t c = 0; c < channels; ++c) {
    float sw;
    std::memcpy(&sw, raw_scale.data() + 4 * c, 4);
    const int32_t z = zp ? (is_signed ? static_cast<int8_t>(zp->raw_data()[c]) : static_cast<uint8_t>(zp->raw_data()[c])) : 0;
    bool all_zero = true;
    for (int64_t i = 0; i < per && all_zero; ++i) {
      const char b = raw_codes[c * per + i];
      all_zero = (is_signed ? static_cast<int8_t>(b) : static_cast<uint8_t>(b)) == z;
    }
    const bool finer = all_zero && need[c] > 0 && sw > need[c];  // a zero channel: any step will do
    if (sw >= need[c] && std::isfinite(sw) && sw > 0 && !finer) continue;
    const float raised = static_cast<float>(std::max(need[c], static_cast<double>(std::numeric_limits<float>::min())));
    for (int64_t i = 0; i < per; ++i) {
      char& b = raw_codes[c * per + i];
      const int32_t q = is_signed ? static_cast<int8_t>(b) : static_cast<uint8_t>(b);
      const double v = (static_cast<double>(q) - z) * (std::isfinite(sw) ? sw : 0.0);
      const int32_t nq = static_cast<int32_t>(std::clamp(std::nearbyint(v / raised) + z, static_cast<double>(qmin),
                                                         static_cast<double>(qmax)));
      b = static_cast<char>(is_signed ? static_cast<int8_t>(nq) : static_cast<uint8_t>(nq));
    }
    std::memcpy(raw_scale.data() + 4 * c, &raised, 4);
  }
}

}  // namespace

ActivationParams ChooseActivationParams(float lo, float hi, ActivationType type) {
  const int qmin = type == ActivationType::kUint8 ? 0 : -128;
  const int qmax = type == ActivationType::kUint8 ? 255 : 127;
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  ActivationParams p;
  const double span = static_cast<double>(hi) - static_cast<double>(lo);
  if (!(span > 0) || !std::isfinite(span)) {
    p.scale = 1.0f;
    p.zero_point = type == ActivationType::kUint8 ? 0 : 0;
    return p;
  }
  p.scale = static_cast<float>(span / (qmax - qmin));
  if (!(p.scale > 0)) p.scale = std::numeric_limits<float>::min();
  const double z = std::nearbyint(qmin - static_cast<double>(lo) / p.scale);
  p.zero_point = static_cast<int32_t>(std::clamp(z, static_cast<double>(qmin), static_cast<double>(qmax)));
  return p;
}

std::vector<std::string> ActivationTensors(const onnx::GraphProto& graph) {
  const std::vector<LayerOp> ops = FindLayerOps(graph);
  // The branches of a split layer: layer ops on the same activation whose outputs an Add
  // chain sums. Their outputs are partial sums; the chain's last output is the layer's.
  std::map<std::string, std::string> input_of;  // layer op output -> its activation input
  for (const LayerOp& op : ops) {
    if (!op.act_inputs.empty()) input_of[op.node->output(0)] = op.node->input(op.act_inputs[0]);
  }
  std::map<std::string, std::string> sum_input;  // branch-sum Add output -> activation input
  std::set<std::string> partial;                 // branch outputs and inner sums
  for (const auto& n : graph.node()) {
    if (n.op_type() != "Add" || n.input_size() != 2 || n.output_size() != 1) continue;
    auto source = [&](const std::string& t) -> std::string {
      if (auto it = input_of.find(t); it != input_of.end()) return it->second;
      if (auto it = sum_input.find(t); it != sum_input.end()) return it->second;
      return "";
    };
    const std::string a = source(n.input(0)), b = source(n.input(1));
    if (a.empty() || a != b) continue;
    partial.insert(n.input(0));
    partial.insert(n.input(1));
    sum_input[n.output(0)] = a;
  }
  std::vector<std::string> names;
  std::set<std::string> seen;
  auto add = [&](const std::string& t) {
    if (seen.insert(t).second) names.push_back(t);
  };
  for (const LayerOp& op : ops) {
    for (int i : op.act_inputs) add(op.node->input(i));
    if (!partial.count(op.node->output(0))) add(op.node->output(0));
  }
  for (const auto& n : graph.node()) {
    if (sum_input.count(n.output_size() ? n.output(0) : "") && !partial.count(n.output(0))) add(n.output(0));
  }
  return names;
}

absl::StatusOr<ActivationQdqResult> InsertActivationQdq(
    onnx::GraphProto* graph, const std::map<std::string, TensorRange>& ranges,
    ActivationType type, ConstantTable* constants) {
  if (type == ActivationType::kOff) return absl::InvalidArgumentError("activation type off");
  const std::vector<LayerOp> ops = FindLayerOps(*graph);
  const std::vector<std::string> tensors = ActivationTensors(*graph);
  std::map<std::string, ActivationParams> params;
  for (const std::string& t : tensors) {
    auto r = ranges.find(t);
    if (r == ranges.end()) {
      return absl::InvalidArgumentError(absl::StrCat("no activation range for tensor '", t, "'"));
    }
    params[t] = ChooseActivationParams(r->second.lo, r->second.hi, type);
  }
  UniqueNames names(*graph);
  ActivationQdqResult result;
  result.quantized_ops = static_cast<int>(ops.size());
  result.tensors = static_cast<int>(tensors.size());
  const int32_t qtype = type == ActivationType::kUint8 ? onnx::TensorProto::UINT8 : onnx::TensorProto::INT8;

  std::map<std::string, int> readers_of;
  for (const auto& n : graph->node()) {
    for (const auto& in : n.input()) readers_of[in]++;
  }
  // Biases: int32 codes through a DequantizeLinear placed first.
  std::vector<onnx::NodeProto> front;
  std::map<const onnx::NodeProto*, std::string> new_bias;
  std::set<std::string> replaced;  // the FP32 biases rewritten
  // An op's bias, and the weight scales and input step its int32 codes are made on, when it
  // can be coded (nullopt: it stays FP32).
  struct BiasInputs {
    const ConstantValue* bias = nullptr;
    const ConstantValue* wscale = nullptr;
    int64_t channels = 0;
    bool per_tensor = false;
    int64_t out_axis = 0;
    float sx = 0;
  };
  auto has_bias = [](const LayerOp& op) {
    const onnx::NodeProto& n = *op.node;
    return (n.op_type() == "Conv" || n.op_type() == "ConvTranspose" || n.op_type() == "Gemm") &&
           n.input_size() >= 3 && !n.input(2).empty() && op.weight_input == 1 && !op.act_inputs.empty();
  };
  auto bias_inputs = [&](const LayerOp& op) -> std::optional<BiasInputs> {
    const onnx::NodeProto& n = *op.node;
    BiasInputs b;
    b.bias = constants->Get(n.input(2));
    b.wscale = op.weight_dq->input_size() > 1 ? constants->Get(op.weight_dq->input(1)) : nullptr;
    if (!b.bias || !b.wscale || b.bias->dims.size() != 1 || IntAttr(*op.weight_dq, "block_size", 0) > 0) {
      return std::nullopt;
    }
    b.channels = b.bias->dims[0];
    if (n.op_type() == "ConvTranspose") b.out_axis = IntAttr(n, "group", 1) == 1 ? 1 : -1;
    if (n.op_type() == "Gemm") b.out_axis = IntAttr(n, "transB", 0) ? 0 : 1;
    b.per_tensor = b.wscale->values.size() == 1;
    const int64_t dq_axis = IntAttr(*op.weight_dq, "axis", 1);
    if (!b.per_tensor && (b.out_axis < 0 || dq_axis != b.out_axis ||
                          static_cast<int64_t>(b.wscale->values.size()) != b.channels)) {
      return std::nullopt;
    }
    b.sx = params[n.input(op.act_inputs[0])].scale;
    return b;
  };
  // Dead channels' steps first, once per weight DequantizeLinear for all the ops that read it
  // (a shared weight: the largest step any of their biases needs), so that no bias is coded
  // on a step changed afterwards for another op.
  std::map<const onnx::NodeProto*, std::vector<double>> step_needed;
  for (const LayerOp& op : ops) {
    if (!has_bias(op)) continue;
    const std::optional<BiasInputs> b = bias_inputs(op);
    if (!b || b->per_tensor || b->out_axis != 0 || !(b->sx > 0)) continue;
    std::vector<double>& need = step_needed[op.weight_dq];
    need.resize(b->channels, 0.0);
    for (int64_t c = 0; c < b->channels; ++c) {
      need[c] = std::max(need[c], 2.0 * std::abs(static_cast<double>(b->bias->values[c])) /
                                      (static_cast<double>(b->sx) * 2147483647.0));
    }
  }
  for (const auto& [dq, need] : step_needed) {
    RaiseDeadChannelSteps(graph, *dq, need, readers_of);
    constants->Reload(dq->input(1));
  }
  for (const LayerOp& op : ops) {
    if (!has_bias(op)) continue;
    const onnx::NodeProto& n = *op.node;
    const std::optional<BiasInputs> b = bias_inputs(op);
    if (!b) {
      ++result.float_biases;
      continue;
    }
    const ConstantValue* bias = b->bias;
    const ConstantValue* wscale = b->wscale;
    const int64_t channels = b->channels;
    const bool per_tensor = b->per_tensor;
    const float sx = b->sx;
    std::vector<int32_t> codes(channels);
    std::vector<float> scales(channels);
    bool fits = true;
    for (int64_t c = 0; c < channels && fits; ++c) {
      const float s = sx * wscale->values[per_tensor ? 0 : c];
      const double q = s > 0 && std::isfinite(s) ? std::nearbyint(bias->values[c] / static_cast<double>(s)) : NAN;
      fits = std::isfinite(q) && std::abs(q) <= 2147483647.0;
      if (fits) {
        codes[c] = static_cast<int32_t>(q);
        scales[c] = s;
      }
    }
    if (!fits) {
      ++result.float_biases;
      continue;
    }
    const std::string base = n.input(2);
    const std::string codes_name = names.Make(base + "_int32");
    const std::string scale_name = names.Make(base + "_int32_scale");
    const std::string out_name = names.Make(base + "_int32_dequantized");
    AddInitializer(graph, codes_name, onnx::TensorProto::INT32, {channels}, codes.data(), codes.size() * 4);
    AddInitializer(graph, scale_name, onnx::TensorProto::FLOAT, {channels}, scales.data(), scales.size() * 4);
    onnx::NodeProto dq;
    dq.set_op_type("DequantizeLinear");
    dq.set_name(names.Make(base + "_int32_DequantizeLinear"));
    dq.add_input(codes_name);
    dq.add_input(scale_name);
    dq.add_output(out_name);
    auto* axis = dq.add_attribute();
    axis->set_name("axis");
    axis->set_type(onnx::AttributeProto::INT);
    axis->set_i(0);
    front.push_back(std::move(dq));
    new_bias[op.node] = out_name;
    replaced.insert(n.input(2));
    ++result.int32_biases;
  }

  // One Q -> DQ pair per tensor.
  std::map<std::string, std::string> dequantized;
  std::map<std::string, std::vector<onnx::NodeProto>> pairs;
  for (const std::string& t : tensors) {
    const ActivationParams& p = params[t];
    const std::string scale_name = names.Make(t + "_scale");
    const std::string zp_name = names.Make(t + "_zero_point");
    const std::string q_name = names.Make(t + "_quantized");
    const std::string dq_name = names.Make(t + "_dequantized");
    AddInitializer(graph, scale_name, onnx::TensorProto::FLOAT, {}, &p.scale, 4);
    if (qtype == onnx::TensorProto::UINT8) {
      const uint8_t z = static_cast<uint8_t>(p.zero_point);
      AddInitializer(graph, zp_name, qtype, {}, &z, 1);
    } else {
      const int8_t z = static_cast<int8_t>(p.zero_point);
      AddInitializer(graph, zp_name, qtype, {}, &z, 1);
    }
    onnx::NodeProto q;
    q.set_op_type("QuantizeLinear");
    q.set_name(names.Make(t + "_QuantizeLinear"));
    q.add_input(t);
    q.add_input(scale_name);
    q.add_input(zp_name);
    q.add_output(q_name);
    onnx::NodeProto dq;
    dq.set_op_type("DequantizeLinear");
    dq.set_name(names.Make(t + "_DequantizeLinear"));
    dq.add_input(q_name);
    dq.add_input(scale_name);
    dq.add_input(zp_name);
    dq.add_output(dq_name);
    pairs[t] = {std::move(q), std::move(dq)};
    dequantized[t] = dq_name;
  }

  // Rebuild the node list: bias decoders and graph-input pairs first, each other pair right
  // after the node that makes its tensor; readers switched to the dequantized tensor.
  std::vector<onnx::NodeProto> nodes = std::move(front);
  std::set<std::string> graph_inputs;
  for (const auto& vi : graph->input()) graph_inputs.insert(vi.name());
  for (const auto& t : graph->initializer()) graph_inputs.erase(t.name());
  for (const std::string& t : tensors) {
    if (graph_inputs.count(t)) {
      for (auto& n : pairs[t]) nodes.push_back(std::move(n));
    }
  }
  for (int k = 0; k < graph->node_size(); ++k) {
    onnx::NodeProto n = graph->node(k);
    auto b = new_bias.find(&graph->node(k));
    if (b != new_bias.end()) n.set_input(2, b->second);
    for (int i = 0; i < n.input_size(); ++i) {
      auto d = dequantized.find(n.input(i));
      if (d != dequantized.end()) n.set_input(i, d->second);
    }
    std::vector<std::string> outs(n.output().begin(), n.output().end());
    nodes.push_back(std::move(n));
    for (const std::string& o : outs) {
      auto p = pairs.find(o);
      if (p != pairs.end() && !graph_inputs.count(o)) {
        for (auto& qn : p->second) nodes.push_back(std::move(qn));
      }
    }
  }
  graph->clear_node();
  for (auto& n : nodes) *graph->add_node() = std::move(n);
  // FP32 biases that only the rewritten layers read go (initializers or Constant nodes).
  std::set<std::string> read;
  for (const auto& n : graph->node()) {
    for (const auto& in : n.input()) read.insert(in);
    for (const auto& a : n.attribute()) {
      if (a.has_g() || a.graphs_size() > 0) read.insert(replaced.begin(), replaced.end());  // keep: subgraphs
    }
  }
  for (const auto& vi : graph->output()) read.insert(vi.name());
  auto* inits = graph->mutable_initializer();
  for (int i = inits->size() - 1; i >= 0; --i) {
    if (replaced.count(inits->Get(i).name()) && !read.count(inits->Get(i).name())) inits->DeleteSubrange(i, 1);
  }
  auto* all = graph->mutable_node();
  for (int i = all->size() - 1; i >= 0; --i) {
    const onnx::NodeProto& n = all->Get(i);
    if (n.op_type() == "Constant" && n.output_size() == 1 && replaced.count(n.output(0)) && !read.count(n.output(0))) {
      all->DeleteSubrange(i, 1);
    }
  }
  return result;
}

}  // namespace sq
