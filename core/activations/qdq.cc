#include "core/activations/qdq.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/rewrite.h"

namespace sq {
namespace {

bool IsDefaultDomain(const onnx::NodeProto& n) { return n.domain().empty() || n.domain() == "ai.onnx"; }

bool IsLayerOpType(const std::string& op) {
  return op == "Conv" || op == "ConvTranspose" || op == "MatMul" || op == "Gemm";
}

int64_t IntAttr(const onnx::NodeProto& n, const std::string& name, int64_t fallback) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return a.i();
  }
  return fallback;
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

  // Biases: int32 codes through a DequantizeLinear placed first.
  std::vector<onnx::NodeProto> front;
  std::map<const onnx::NodeProto*, std::string> new_bias;
  std::set<std::string> replaced;  // the FP32 biases rewritten
  for (const LayerOp& op : ops) {
    const onnx::NodeProto& n = *op.node;
    const bool has_bias = (n.op_type() == "Conv" || n.op_type() == "ConvTranspose" || n.op_type() == "Gemm") &&
                          n.input_size() >= 3 && !n.input(2).empty() && op.weight_input == 1 &&
                          !op.act_inputs.empty();
    if (!has_bias) continue;
    const ConstantValue* bias = constants->Get(n.input(2));
    const ConstantValue* wscale = op.weight_dq->input_size() > 1 ? constants->Get(op.weight_dq->input(1)) : nullptr;
    if (!bias || !wscale || bias->dims.size() != 1 || IntAttr(*op.weight_dq, "block_size", 0) > 0) {
      ++result.float_biases;
      continue;
    }
    const int64_t channels = bias->dims[0];
    int64_t out_axis = 0;
    if (n.op_type() == "ConvTranspose") out_axis = IntAttr(n, "group", 1) == 1 ? 1 : -1;
    if (n.op_type() == "Gemm") out_axis = IntAttr(n, "transB", 0) ? 0 : 1;
    const bool per_tensor = wscale->values.size() == 1;
    const int64_t dq_axis = IntAttr(*op.weight_dq, "axis", 1);
    if (!per_tensor && (out_axis < 0 || dq_axis != out_axis ||
                        static_cast<int64_t>(wscale->values.size()) != channels)) {
      ++result.float_biases;
      continue;
    }
    const float sx = params[n.input(op.act_inputs[0])].scale;
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
