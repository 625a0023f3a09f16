#include "core/rewrite.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/model_io.h"
#include "core/opset_convert.h"
#include "core/quantizer.h"
#include "core/status_macros.h"

namespace sq {
namespace {

// Packed 2-bit codes (INT2/UINT2) need opset 25. ONNX Runtime 1.29 runs them exactly with
// graph optimizations off, but its default DequantizeLinear+MatMul fusion (MatMulNBits)
// miscomputes 2-bit weights whose output dimension is not a multiple of 4. So by default
// 2-bit codes go in INT8/UINT8 containers, and are packed only when --target-opset >= 25
// is asked for explicitly.
constexpr bool kPackInt2 = true;

int64_t MinIrVersionForOpset(int opset) {
  if (opset >= 25) return 13;
  if (opset >= 24) return 12;
  if (opset >= 23) return 11;
  if (opset >= 21) return 10;
  if (opset >= 19) return 9;
  if (opset >= 15) return 8;
  if (opset >= 13) return 7;
  return 4;
}

void SetIntAttr(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void AppendFloats(onnx::TensorProto* t, const std::vector<float>& v) {
  t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
}

void ForEachGraph(onnx::GraphProto* g, std::vector<onnx::GraphProto*>* out) {
  out->push_back(g);
  for (auto& n : *g->mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) ForEachGraph(a.mutable_g(), out);
      for (auto& sg : *a.mutable_graphs()) ForEachGraph(&sg, out);
    }
  }
}

onnx::NodeProto MakeNode(const std::string& op, const std::string& name,
                         std::vector<std::string> inputs, const std::string& output) {
  onnx::NodeProto n;
  n.set_op_type(op);
  n.set_name(name);
  for (auto& i : inputs) n.add_input(i);
  n.add_output(output);
  return n;
}

void EnsureOpsetImport(onnx::ModelProto* m, const std::string& domain, int64_t version) {
  for (auto& o : *m->mutable_opset_import()) {
    if (o.domain() == domain) {
      if (o.version() < version) o.set_version(version);
      return;
    }
  }
  auto* o = m->add_opset_import();
  o->set_domain(domain);
  o->set_version(version);
}

}  // namespace

const char* ToString(LayerForm f) {
  switch (f) {
    case LayerForm::kDq: return "dq";
    case LayerForm::kFloat: return "fp32";
    case LayerForm::kCompact: return "compact";
    case LayerForm::kNBits: return "matmulnbits";
    case LayerForm::kNBitsOuter8: return "matmulnbits-outer8";
    case LayerForm::kGather: return "gatherblockquantized";
    case LayerForm::kGatherOuter8: return "gatherblockquantized-outer8";
  }
  return "?";
}

bool RunsInMatMulNBits(const WeightGroup& g, const QuantizeOptions& options,
                       const ParamLayout& layout) {
  if (g.uses.empty() || NumElements(*g.weight.tensor) < options.nbits_min_elements) return false;
  for (const LayerUse& u : g.uses) {
    if (u.node->op_type() != "MatMul" || u.weight_input != 1 || !u.node->domain().empty()) return false;
  }
  return NBitsCanCarry(layout, options.bits);
}

bool RunsInGatherBlockQuantized(const WeightGroup& g, const QuantizeOptions& options,
                                const ParamLayout& layout) {
  if (g.uses.empty()) return false;
  for (const LayerUse& u : g.uses) {
    if (u.node->op_type() != "Gather" || u.weight_input != 0 || !u.node->domain().empty() ||
        u.node->input_size() != 2) {
      return false;
    }
  }
  return GatherCanCarry(layout, options.bits);
}

namespace {

// Under ort-cpu, the low-bit kernel that carries a layer (neither: compact), and whether a
// split layer takes the outer8 form. One rule for planning and for LayerStoredBytes.
struct KernelForm {
  bool nbits = false, gather = false, outer8 = false;
  bool Any() const { return nbits || gather; }
};
KernelForm ChooseKernelForm(const WeightGroup& g, const QuantizeOptions& options,
                            const ParamLayout& layout, bool split) {
  KernelForm k;
  const SplitForm form = EffectiveForm(options);
  if (options.target != Target::kOrtCpu || (split && form == SplitForm::kCompact)) return k;
  k.nbits = RunsInMatMulNBits(g, options, layout);
  k.gather = !k.nbits && RunsInGatherBlockQuantized(g, options, layout);
  k.outer8 = k.Any() && split &&
             (form == SplitForm::kOuter8 || (form == SplitForm::kAuto && options.bits <= 4));
  return k;
}

// The tensors of one kernel (MatMulNBits for W[K, N], GatherBlockQuantized for a table
// [R, C]; encode.h) whose codes are `bits` wide.
struct KernelDims {
  std::vector<int64_t> data, scales, zero_points;
};
KernelDims KernelTensorDims(const ParamLayout& l, bool gather, int64_t bits) {
  KernelDims d;
  const int64_t k = l.shape[0], n = l.shape[1];
  const int64_t bs = gather ? GatherBlockSize(l) : NBitsBlockSize(l);
  const int64_t blocks = ((gather ? n : k) + bs - 1) / bs;
  if (gather) {
    d.data = {k, n * bits / 8};
    d.scales = {k, blocks};
    d.zero_points = {k, (blocks * bits + 7) / 8};
  } else {
    d.data = {n, blocks, bs * bits / 8};
    d.scales = {n * blocks};
    d.zero_points = {n * ((blocks * bits + 7) / 8)};
  }
  return d;
}

// Kernel b's code width: outer8's second kernel holds the outer clusters at 8 bits;
// GatherBlockQuantized takes codes in their 2/4/8-bit container.
int64_t KernelBits(bool gather, bool outer8, int b, int bits) {
  return outer8 && b == 1 ? 8 : gather ? ContainerBits(bits) : bits;
}

int64_t Product(const std::vector<int64_t>& dims) {
  int64_t p = 1;
  for (int64_t d : dims) p *= d;
  return p;
}

}  // namespace

int64_t LayerStoredBytes(const WeightGroup& g, const QuantizeOptions& options, bool split,
                         const StoragePlan& layer_storage) {
  const int64_t n = NumElements(*g.weight.tensor);
  const int nb = split ? 3 : 1;
  const TransformConfig c = LayerTransformConfig(g, options, split, nullptr);
  int64_t params = 1;
  if (c.granularity == Granularity::kChannel) {
    params = g.shape[g.channel_axis];
  } else if (c.granularity == Granularity::kBlock) {
    const int64_t d = g.shape[g.reduction_axis];
    params = n / d * ((d + options.block_size - 1) / options.block_size);
  }
  if (options.format != OutputFormat::kQdq) {
    const bool one = options.format == OutputFormat::kFake &&
                     (options.form == SplitForm::kFolded || !split);
    return (one ? 1 : nb) * n * 4;
  }
  if (options.target == Target::kQdq) {
    const int sb = layer_storage.storage_bits >= options.bits ? layer_storage.storage_bits : 8;
    return nb * (PackedBytes(n, sb) + params * 4 + PackedBytes(params, sb));
  }
  const ParamLayout layout{g.shape, c.granularity, g.channel_axis, g.reduction_axis, options.block_size};
  const KernelForm kernel = ChooseKernelForm(g, options, layout, split);
  if (kernel.Any()) {
    int64_t bytes = 0;
    for (int b = 0; b < (kernel.outer8 ? 2 : nb); ++b) {
      const KernelDims d =
          KernelTensorDims(layout, kernel.gather, KernelBits(kernel.gather, kernel.outer8, b, options.bits));
      bytes += Product(d.data) + Product(d.scales) * 4 + Product(d.zero_points);
    }
    return bytes;
  }
  const int cb = CompactContainerBits(options.bits);
  return CompactCodeBytes(n, cb) + (split ? IdBytes(n) : 0) +
         CompactParamBytes(params, nb, cb, c.spec.half_scales);
}

int32_t CodeDataType(int storage_bits, bool is_signed) {
  switch (storage_bits) {
    case 4:
      return is_signed ? 22 : 21;  // INT4 / UINT4
    case 2:
      return is_signed ? 26 : 25;  // INT2 / UINT2
    default:
      return is_signed ? onnx::TensorProto::INT8 : onnx::TensorProto::UINT8;
  }
}

absl::StatusOr<StoragePlan> ChooseStorage(const QuantizeOptions& options, int model_opset) {
  StoragePlan plan;
  if (options.target != Target::kQdq) {
    // Decoded at load (standard ops of opset 13: Slice and Reshape take inputs) or
    // MatMulNBits; the codes' container is chosen per layer (PlanGroup), not here.
    if (model_opset > kMaxSupportedOpset) {
      return absl::InvalidArgumentError(absl::StrCat("the model uses opset ", model_opset,
                                                     "; sq supports up to ", kMaxSupportedOpset));
    }
    plan.opset = options.target_opset != 0 ? options.target_opset : std::max(model_opset, 13);
    if (plan.opset < model_opset) {
      return absl::InvalidArgumentError(absl::StrCat("--target-opset ", plan.opset,
                                                     " is below the model's opset ", model_opset,
                                                     "; sq only raises opsets"));
    }
    plan.storage_bits = 8;
    plan.ir_version = MinIrVersionForOpset(plan.opset);
    return plan;
  }
  const bool block = options.granularity == Granularity::kBlock;
  // DequantizeLinear: per-tensor since 10, per-axis since 13, blocked and 4-bit since 21.
  int needed = block ? 21 : 13;
  if (model_opset > kMaxSupportedOpset) {
    return absl::InvalidArgumentError(absl::StrCat("the model uses opset ", model_opset,
                                                   "; sq supports up to ", kMaxSupportedOpset));
  }
  int opset;
  if (options.target_opset != 0) {
    opset = options.target_opset;
    if (opset < model_opset) {
      return absl::InvalidArgumentError(absl::StrCat("--target-opset ", opset,
                                                     " is below the model's opset ", model_opset,
                                                     "; sq only raises opsets"));
    }
    if (opset < needed) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--target-opset ", opset, " cannot express ", block ? "blocked" : "per-channel",
          " DequantizeLinear; it needs opset ", needed, " or higher"));
    }
  } else {
    int want = needed;
    if (options.bits == 4) want = std::max(want, 21);
    opset = std::max(model_opset, want);
  }
  plan.opset = opset;
  if (options.bits == 4 && opset >= 21) {
    plan.storage_bits = 4;
  } else if (options.bits == 2 && kPackInt2 && opset >= 25) {
    plan.storage_bits = 2;
  } else {
    plan.storage_bits = 8;
    if (options.bits < 8) {
      plan.note = absl::StrCat(options.bits, "-bit codes are stored one per byte in ",
                               options.symmetric ? "INT8" : "UINT8",
                               options.bits == 4 ? " (packed INT4 needs opset 21)"
                                                 : " (ONNX Runtime has no packed type for it)");
    }
  }
  plan.ir_version = MinIrVersionForOpset(opset);
  return plan;
}

TransformConfig LayerTransformConfig(const WeightGroup& g, const QuantizeOptions& options,
                                     bool split, std::string* granularity_note) {
  TransformConfig c;
  c.spec.bits = options.bits;
  c.spec.symmetric = options.symmetric;
  // Blocks along a reduction axis shorter than one block would give every (channel,
  // kernel position) its own scale: on a depthwise conv (C/g = 1) that is one scale per
  // weight, a model larger than FP32. Such convolutions get per-channel scales instead.
  c.granularity = options.granularity;
  if (c.granularity == Granularity::kBlock && g.shape.size() > 2 &&
      g.shape[g.reduction_axis] < options.block_size) {
    c.granularity = Granularity::kChannel;
    if (granularity_note) {
      *granularity_note = absl::StrCat("per-channel scales: reduction axis has ",
                                       g.shape[g.reduction_axis], " < block size ",
                                       options.block_size);
    }
  }
  c.spec.half_scales = options.scale_type == ScaleType::kFloat16 ||
                       (options.scale_type == ScaleType::kAuto && c.granularity != Granularity::kTensor &&
                        options.bits <= 4 && options.bpw_budget <= 0);
  c.block_size = options.block_size;
  c.split = split;
  c.cluster_per_channel = g.cluster_per_channel;
  c.cluster_method = options.reference_kmeans ? ClusterMethod::kReference : ClusterMethod::kFast;
  c.quant_aware_boundaries = QuantAwareBoundaries(options, c.granularity);
  c.balanced_rounding = BalancedRounding(options, c.granularity, g.op_type, split);
  return c;
}

QuantizeOptions OptionsForLayer(const QuantizeOptions& options, const LayerSettings& settings) {
  QuantizeOptions o = options;
  o.bits = settings.bits;
  o.granularity = settings.granularity;
  o.block_size = settings.block_size;
  o.symmetric = settings.symmetric;
  o.split = settings.split;
  return o;
}

absl::StatusOr<StoragePlan> ChooseModelStorage(const QuantizeOptions& options, int model_opset) {
  SQ_ASSIGN_OR_RETURN(StoragePlan plan, ChooseStorage(options, model_opset));
  for (const LayerOverride& o : options.layer_overrides) {
    QuantizeOptions lo = options;
    if (o.bits) lo.bits = *o.bits;
    if (o.granularity) lo.granularity = *o.granularity;
    if (o.block_size) lo.block_size = *o.block_size;
    if (o.symmetric) lo.symmetric = *o.symmetric;
    auto p = ChooseStorage(lo, model_opset);
    if (!p.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("layer override '", ToString(o), "': ",
                                                     p.status().message()));
    }
    if (p->opset > plan.opset) plan = *p;
  }
  return plan;
}

GraphEditor::GraphEditor(onnx::ModelProto* model) : model_(model), names_(model->graph()) {}

void UniqueNames::Collect(const onnx::GraphProto& g) {
  for (const auto& v : g.input()) names_.insert(v.name());
  for (const auto& v : g.output()) names_.insert(v.name());
  for (const auto& v : g.value_info()) names_.insert(v.name());
  for (const auto& t : g.initializer()) names_.insert(t.name());
  for (const auto& n : g.node()) {
    if (!n.name().empty()) names_.insert(n.name());
    for (const auto& o : n.output()) names_.insert(o);
    for (const auto& i : n.input()) names_.insert(i);
    for (const auto& a : n.attribute()) {
      if (a.has_g()) Collect(a.g());
      for (const auto& sg : a.graphs()) Collect(sg);
    }
  }
}

std::string UniqueNames::Make(const std::string& base) {
  std::string name = base;
  for (int i = 1; names_.count(name); ++i) name = absl::StrCat(base, "_", i);
  names_.insert(name);
  return name;
}

std::string GraphEditor::UniqueName(const std::string& base) { return names_.Make(base); }

onnx::TensorProto* GraphEditor::NewInitializer(onnx::GraphProto* g, const std::string& name,
                                               int32_t data_type,
                                               const std::vector<int64_t>& dims) {
  onnx::TensorProto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(data_type);
  for (int64_t d : dims) t->add_dims(d);
  return t;
}

void GraphEditor::AppendSumOfThree(const std::vector<std::string>& terms, const std::string& out,
                                   const std::string& name_base,
                                   std::vector<onnx::NodeProto>* nodes) {
  if (DefaultDomainOpset(*model_) < 7) {
    // Add before opset 7 broadcasts only with an attribute and ONNX Runtime has no kernel
    // for it; Sum (opset 6) adds same-shaped tensors, which the three terms are.
    onnx::NodeProto sum;
    sum.set_op_type("Sum");
    sum.set_name(UniqueName(name_base + "012.sum"));
    for (const std::string& t : terms) sum.add_input(t);
    sum.add_output(out);
    nodes->push_back(std::move(sum));
    return;
  }
  std::string partial = UniqueName(name_base + "01");
  onnx::NodeProto add1, add2;
  add1.set_op_type("Add");
  add1.set_name(UniqueName(name_base + "01.add"));
  add1.add_input(terms[0]);
  add1.add_input(terms[1]);
  add1.add_output(partial);
  add2.set_op_type("Add");
  add2.set_name(UniqueName(name_base + "012.add"));
  add2.add_input(partial);
  add2.add_input(terms[2]);
  add2.add_output(out);
  nodes->push_back(std::move(add1));
  nodes->push_back(std::move(add2));
}

absl::Status GraphEditor::PlanGroup(
    GroupPlan* plan, const QuantizeOptions& options, const StoragePlan& storage,
    const std::function<absl::StatusOr<std::vector<float>>(const onnx::TensorProto&)>&
        bias_reader) {
  WeightGroup& g = *plan->group;
  const int64_t numel = NumElements(*g.weight.tensor);
  const bool qdq = options.format == OutputFormat::kQdq;
  const bool folded = options.form == SplitForm::kFolded;
  plan->num_branches = plan->split ? 3 : 1;

  TransformConfig& c = plan->config;
  c = LayerTransformConfig(g, options, plan->split, &plan->granularity_note);
  c.keep_three_branches = plan->split;  // the graph gets three branches: the transform must make them
  const Granularity gran = c.granularity;
  c.storage_bits = storage.storage_bits >= options.bits ? storage.storage_bits : 8;
  switch (options.format) {
    case OutputFormat::kQdq:
      c.encoding = WeightEncoding::kCodes;
      break;
    case OutputFormat::kFake:
      c.encoding = (folded || !plan->split) ? WeightEncoding::kDequantizedSum
                                            : WeightEncoding::kDequantized;
      break;
    case OutputFormat::kSplit:
      c.encoding = WeightEncoding::kFloatSplit;
      break;
  }

  // Parameter tensor shape, as DequantizeLinear expects it.
  plan->param_shape.clear();
  if (gran == Granularity::kChannel) {
    plan->param_shape = {g.shape[g.channel_axis]};
  } else if (gran == Granularity::kBlock) {
    plan->param_shape = g.shape;
    int64_t d = g.shape[g.reduction_axis];
    plan->param_shape[g.reduction_axis] = (d + options.block_size - 1) / options.block_size;
  }

  if (qdq && options.target != Target::kQdq) {
    // Decoded at load, or MatMulNBits: the transform emits codes packed in their container
    // (2, 4 or 8 bits), which the encoder re-packs.
    c.encoding = WeightEncoding::kCodes;
    c.storage_bits = ContainerBits(options.bits);
    plan->layout = ParamLayout{g.shape, gran, g.channel_axis, g.reduction_axis, options.block_size};
    maybe_unused_.insert(g.weight.tensor);
    const KernelForm kernel = ChooseKernelForm(g, options, plan->layout, plan->split);
    plan->outer8 = kernel.outer8;
    c.balance_middle_only = kernel.outer8;
    if (kernel.Any()) {
      PlanKernels(plan, options, kernel.gather);
    } else {
      const std::string decoded = PlanCompact(plan, options);
      for (LayerUse& use : g.uses) use.node->set_input(use.weight_input, decoded);
    }
    return absl::OkStatus();
  }
  plan->form = qdq ? LayerForm::kDq : LayerForm::kFloat;

  onnx::GraphProto* owner = g.weight.graph;
  const std::string& w = g.weight_name;
  const int tensors = c.encoding == WeightEncoding::kDequantizedSum ? 1 : plan->num_branches;
  std::vector<std::string> branch_values;
  for (int b = 0; b < tensors; ++b) {
    std::string suffix = tensors == 1 ? "" : absl::StrCat(".b", b);
    if (qdq) {
      bool is_signed = options.symmetric;
      int32_t code_type = CodeDataType(c.storage_bits, is_signed);
      plan->data[b] = NewInitializer(owner, UniqueName(absl::StrCat(w, ".sq", suffix, ".q")),
                                     code_type, g.shape);
      plan->scale[b] = NewInitializer(owner, UniqueName(absl::StrCat(w, ".sq", suffix, ".scale")),
                                      onnx::TensorProto::FLOAT, plan->param_shape);
      plan->zero_point[b] = NewInitializer(
          owner, UniqueName(absl::StrCat(w, ".sq", suffix, ".zero_point")), code_type,
          plan->param_shape);
      onnx::NodeProto dq;
      dq.set_op_type("DequantizeLinear");
      dq.set_name(UniqueName(absl::StrCat(w, ".sq", suffix, ".dequantize")));
      dq.add_input(plan->data[b]->name());
      dq.add_input(plan->scale[b]->name());
      dq.add_input(plan->zero_point[b]->name());
      std::string out = UniqueName(absl::StrCat(w, ".sq", suffix));
      dq.add_output(out);
      if (gran == Granularity::kChannel) SetIntAttr(&dq, "axis", g.channel_axis);
      if (gran == Granularity::kBlock) {
        SetIntAttr(&dq, "axis", g.reduction_axis);
        SetIntAttr(&dq, "block_size", options.block_size);
      }
      front_nodes_[owner].push_back(std::move(dq));
      branch_values.push_back(out);
      const int64_t params = NumElements(*plan->scale[b]);
      plan->tensor_bytes.push_back({plan->data[b], PackedBytes(numel, c.storage_bits)});
      plan->tensor_bytes.push_back({plan->scale[b], params * 4});
      plan->tensor_bytes.push_back({plan->zero_point[b], PackedBytes(params, c.storage_bits)});
    } else {
      const char* kind = options.format == OutputFormat::kFake ? ".fake" : ".split";
      plan->data[b] = NewInitializer(owner, UniqueName(absl::StrCat(w, ".sq", suffix, kind)),
                                     onnx::TensorProto::FLOAT, g.shape);
      branch_values.push_back(plan->data[b]->name());
      plan->tensor_bytes.push_back({plan->data[b], numel * 4});
    }
  }

  maybe_unused_.insert(g.weight.tensor);
  const bool branches = branch_values.size() == 3 && !folded;
  std::string consumer_value = branch_values[0];
  if (branch_values.size() == 3 && folded) {
    consumer_value = UniqueName(absl::StrCat(w, ".sq.folded"));
    AppendSumOfThree(branch_values, consumer_value, absl::StrCat(w, ".sq.fold"), &front_nodes_[owner]);
  }

  const int opset = qdq ? storage.opset : DefaultDomainOpset(*model_);
  for (LayerUse& use : g.uses) {
    onnx::NodeProto* node = use.node;
    if (!branches) {
      node->set_input(use.weight_input, consumer_value);
      continue;
    }
    // Bias parts: one per branch when the bias has >= 3 distinct values, else the whole
    // bias rides on the middle branch.
    std::vector<std::string> bias_for_branch(3);
    if (use.bias_input >= 0 && use.bias.tensor == nullptr) {
      bias_for_branch[1] = node->input(use.bias_input);
    } else if (use.bias_input >= 0) {
      const onnx::TensorProto* bt = use.bias.tensor;
      auto it = bias_parts_.find(bt);
      if (it == bias_parts_.end()) {
        SQ_ASSIGN_OR_RETURN(std::vector<float> bias, bias_reader(*bt));
        std::vector<std::vector<float>> parts = SplitBias(bias);
        std::vector<std::string> names;
        if (parts.size() == 3) {
          for (int b = 0; b < 3; ++b) {
            std::vector<int64_t> dims(bt->dims().begin(), bt->dims().end());
            onnx::TensorProto* t =
                NewInitializer(use.bias.graph, UniqueName(absl::StrCat(node->input(use.bias_input), ".sq.b", b)),
                               onnx::TensorProto::FLOAT, dims);
            AppendFloats(t, parts[b]);
            names.push_back(t->name());
          }
        }
        it = bias_parts_.emplace(bt, names).first;
      }
      if (it->second.size() == 3) {
        bias_for_branch = it->second;
        plan->bias_split = true;
        maybe_unused_.insert(bt);
      } else {
        bias_for_branch[1] = node->input(use.bias_input);
      }
    }
    const std::string out = node->output(0);
    std::vector<onnx::NodeProto> repl;
    std::vector<std::string> outs;
    for (int b = 0; b < 3; ++b) {
      onnx::NodeProto clone = *node;
      if (!node->name().empty()) clone.set_name(UniqueName(absl::StrCat(node->name(), ".sq.b", b)));
      clone.set_input(use.weight_input, branch_values[b]);
      if (use.bias_input >= 0) {
        std::string bias = bias_for_branch[b];
        if (bias.empty() && node->op_type() == "Gemm" && opset < 11) {
          // Gemm's C is mandatory before opset 11: give bias-less branches a zero.
          if (zero_bias_name_.empty()) {
            zero_bias_name_ = UniqueName("sq.zero_bias");
            onnx::TensorProto* z = NewInitializer(model_->mutable_graph(), zero_bias_name_,
                                                  onnx::TensorProto::FLOAT, {1});
            AppendFloats(z, {0.0f});
          }
          bias = zero_bias_name_;
        }
        clone.set_input(use.bias_input, bias);
        while (clone.input_size() > 0 && clone.input(clone.input_size() - 1).empty()) {
          clone.mutable_input()->RemoveLast();
        }
      }
      std::string y = UniqueName(absl::StrCat(out, ".sq.b", b));
      clone.set_output(0, y);
      outs.push_back(y);
      repl.push_back(std::move(clone));
    }
    AppendSumOfThree(outs, out, absl::StrCat(out, ".sq.sum"), &repl);
    replacements_[node] = std::move(repl);
  }
  return absl::OkStatus();
}

std::string GraphEditor::ConstInt32(onnx::GraphProto* g, const std::string& base, int32_t v) {
  auto key = std::make_pair(g, absl::StrCat("i32:", v));
  auto it = consts_.find(key);
  if (it != consts_.end()) return it->second;
  onnx::TensorProto* t = NewInitializer(g, UniqueName(absl::StrCat(base, ".", v)),
                                        onnx::TensorProto::INT32, {});
  t->add_int32_data(v);
  return consts_[key] = t->name();
}

std::string GraphEditor::ConstInt32s(onnx::GraphProto* g, const std::string& base,
                                     const std::vector<int32_t>& v,
                                     const std::vector<int64_t>& dims) {
  auto key = std::make_pair(g, absl::StrCat("i32s:", absl::StrJoin(dims, "x"), ":",
                                            absl::StrJoin(v, ",")));
  auto it = consts_.find(key);
  if (it != consts_.end()) return it->second;
  onnx::TensorProto* t = NewInitializer(
      g, UniqueName(base), onnx::TensorProto::INT32,
      dims.empty() ? std::vector<int64_t>{static_cast<int64_t>(v.size())} : dims);
  t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t)));
  return consts_[key] = t->name();
}

std::string GraphEditor::ConstInt64s(onnx::GraphProto* g, const std::string& base,
                                     const std::vector<int64_t>& v) {
  auto key = std::make_pair(g, absl::StrCat("i64s:", absl::StrJoin(v, ",")));
  auto it = consts_.find(key);
  if (it != consts_.end()) return it->second;
  onnx::TensorProto* t = NewInitializer(g, UniqueName(base), onnx::TensorProto::INT64,
                                        {static_cast<int64_t>(v.size())});
  for (int64_t x : v) t->add_int64_data(x);
  return consts_[key] = t->name();
}

std::string GraphEditor::AppendDecodeNode(std::vector<onnx::NodeProto>* nodes, const std::string& op,
                                          std::vector<std::string> inputs) {
  // Decode nodes are unnamed and their values short-named: a layer has a dozen of them,
  // and long names would cost more bytes than a small layer's codes.
  std::string out = UniqueName(absl::StrCat("sq", ++decode_values_));
  nodes->push_back(MakeNode(op, "", std::move(inputs), out));
  return out;
}

std::string GraphEditor::AppendUnpack(onnx::GraphProto* g, const std::string& packed, int bits,
                                      int32_t multiplier, const std::vector<int64_t>& shape,
                                      std::vector<onnx::NodeProto>* nodes) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  auto node = [&](const std::string& op, std::vector<std::string> in) {
    return AppendDecodeNode(nodes, op, std::move(in));
  };
  std::string x = node("Cast", {packed});
  SetIntAttr(&nodes->back(), "to", onnx::TensorProto::INT32);
  if (bits == 3) {
    // Eight 3-bit fields per 3 bytes: each triple as one 24-bit integer (a weighted sum),
    // then field j = (v / 8^j) mod 8: [groups, 3] -> [groups, 1] -> [groups, 8].
    const int64_t groups = (n + 7) / 8;
    std::string t = node("Reshape", {x, ConstInt64s(g, "sq.const.triples", {groups, 3})});
    t = node("Mul", {t, ConstInt32s(g, "sq.const.byte_weights", {1, 256, 65536}, {1, 3})});
    t = node("ReduceSum", {t, ConstInt64s(g, "sq.const.one", {1})});
    std::vector<int32_t> powers;
    for (int j = 0; j < 8; ++j) powers.push_back(1 << (3 * j));
    t = node("Div", {t, ConstInt32s(g, "sq.const.powers8", powers, {1, 8})});
    t = node("Mod", {t, ConstInt32(g, "sq.const.i32", 8)});
    if (multiplier != 1) t = node("Mul", {t, ConstInt32(g, "sq.const.i32", multiplier)});
    return AppendFlatten(g, t, groups * 8, shape, nodes);
  }
  // One Gather through a 256-entry table turns every byte into its 8/bits fields (low bits
  // first; cluster ids: five base-3 digits, lowest first; times `multiplier`): [bytes] ->
  // [bytes, fields], whose row-major order is the values' order. Cheaper for ONNX Runtime
  // to fold than shifts and masks.
  const bool ternary = bits == kTernaryIds;
  const int per = ternary ? 5 : 8 / bits;
  std::vector<int32_t> table;
  for (int byte = 0; byte < 256; ++byte) {
    int rest = byte;
    for (int j = 0; j < per; ++j) {
      int field;
      if (ternary) {
        field = rest % 3;
        rest /= 3;
      } else {
        field = (byte >> (bits * j)) & ((1 << bits) - 1);
      }
      table.push_back(field * multiplier);
    }
  }
  std::string fields = x;
  if (per > 1 || multiplier != 1) {
    fields = node("Gather", {ConstInt32s(g, "sq.const.unpack", table, {256, per}), x});
  }
  return AppendFlatten(g, fields, (ternary ? IdBytes(n) : PackedBytes(n, bits)) * per, shape, nodes);
}

std::string GraphEditor::AppendFlatten(onnx::GraphProto* g, const std::string& fields,
                                       int64_t count, const std::vector<int64_t>& shape,
                                       std::vector<onnx::NodeProto>* nodes) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::string flat = AppendDecodeNode(nodes, "Reshape", {fields, ConstInt64s(g, "sq.const.flat", {-1})});
  if (count != n) {
    flat = AppendDecodeNode(nodes, "Slice", {flat, ConstInt64s(g, "sq.const.zero", {0}),
                                             ConstInt64s(g, "sq.const.len", {n})});
  }
  return AppendDecodeNode(nodes, "Reshape", {flat, ConstInt64s(g, "sq.const.shape", shape)});
}

std::string GraphEditor::PlanCompact(GroupPlan* plan, const QuantizeOptions& options) {
  WeightGroup& g = *plan->group;
  onnx::GraphProto* owner = g.weight.graph;
  const std::string base = absl::StrCat(g.weight_name, ".sq");
  const ParamLayout& l = plan->layout;
  const int64_t n = NumElements(*g.weight.tensor);
  const int rank = static_cast<int>(g.shape.size());
  const int cb = CompactContainerBits(options.bits);
  const int32_t levels = 1 << cb;
  const int nb = plan->num_branches;
  plan->form = LayerForm::kCompact;
  std::vector<onnx::NodeProto>& nodes = front_nodes_[owner];
  auto node = [&](const std::string& op, std::vector<std::string> in) {
    return AppendDecodeNode(&nodes, op, std::move(in));
  };

  plan->data[0] = NewInitializer(owner, UniqueName(base + ".codes"), onnx::TensorProto::UINT8,
                                 {CompactCodeBytes(n, cb)});
  plan->tensor_bytes.push_back({plan->data[0], CompactCodeBytes(n, cb)});
  if (nb == 3) {
    plan->ids = NewInitializer(owner, UniqueName(base + ".cluster_ids"), onnx::TensorProto::UINT8,
                               {IdBytes(n)});
    plan->tensor_bytes.push_back({plan->ids, IdBytes(n)});
  }

  // Two decodings, both exact: (q - z_b) * s_b in float, as DequantizeLinear computes it.
  //  lookup: every weight's symbol (cluster * 2^container + code) indexes a table of the
  //          values its channel (or the tensor) can take, built at load from the scales and
  //          zero points: Gather (per tensor) or GatherElements on a 2-D view whose first or
  //          last axis is the channel axis. A handful of full-size ops.
  //  select: blocked parameters, or a channel axis in the middle: every branch dequantized
  //          in full and Where picks each weight's.
  const bool per_tensor = l.granularity == Granularity::kTensor;
  const bool chan_first = l.granularity == Granularity::kChannel && l.channel_axis == 0;
  const bool chan_last = l.granularity == Granularity::kChannel && l.channel_axis == rank - 1 && rank > 1;
  const std::string decoded_name = UniqueName(base + ".decoded");

  // Parameters: one scale tensor and one zero-point tensor for all branches, [P, nb]
  // (parameter-major, branch fastest; encode.h), decoded to float [P, nb] here: scales
  // float16 * multiplier (or float32), zero points packed at the codes' container.
  int64_t params = 1;  // param_shape is {} per tensor, {C} per channel
  for (int64_t d : plan->param_shape) params *= d;
  const bool half = plan->config.spec.half_scales;
  plan->scale[0] = NewInitializer(owner, UniqueName(base + ".scales"),
                                  half ? onnx::TensorProto::FLOAT16 : onnx::TensorProto::FLOAT,
                                  {params, nb});
  plan->zero_point[0] = NewInitializer(owner, UniqueName(base + ".zero_points"), onnx::TensorProto::UINT8,
                                       {CompactCodeBytes(params * nb, cb)});
  plan->tensor_bytes.push_back({plan->scale[0], params * nb * (half ? 2 : 4)});
  plan->tensor_bytes.push_back({plan->zero_point[0], CompactCodeBytes(params * nb, cb)});
  std::string scales = plan->scale[0]->name();
  if (half) {
    // float16 * 2^exponent: the layer's multiplier, written with the scales.
    plan->scale_multiplier = NewInitializer(owner, UniqueName(base + ".scale_multiplier"),
                                            onnx::TensorProto::FLOAT, {});
    plan->tensor_bytes.push_back({plan->scale_multiplier, 4});
    scales = node("Cast", {scales});
    SetIntAttr(&nodes.back(), "to", onnx::TensorProto::FLOAT);
    scales = node("Mul", {scales, plan->scale_multiplier->name()});
  }
  std::string zeros = AppendUnpack(owner, plan->zero_point[0]->name(), cb, 1, {params, nb}, &nodes);
  zeros = node("Cast", {zeros});
  SetIntAttr(&nodes.back(), "to", onnx::TensorProto::FLOAT);

  if (per_tensor || chan_first || chan_last) {
    const int64_t c = per_tensor ? 1 : g.shape[l.channel_axis];
    std::vector<int64_t> view = per_tensor ? std::vector<int64_t>{n}
                                : chan_first ? std::vector<int64_t>{c, n / c}
                                             : std::vector<int64_t>{n / c, c};
    std::string sym = AppendUnpack(owner, plan->data[0]->name(), cb, 1, view, &nodes);
    if (nb == 3) {
      std::string cluster = AppendUnpack(owner, plan->ids->name(), kTernaryIds, levels, view, &nodes);
      sym = node("Add", {sym, cluster});
    }
    // Table of every value a weight can take, (k - z_b) * s_b for code k of branch b:
    // [C, nb * 2^cb] (channel first), [nb * 2^cb, C] (channel last), [nb * 2^cb] (tensor).
    // Parameters [C, nb] -> [C, nb, 1] against levels [1, 1, L]; channel last: [nb, 1, C]
    // against [1, L, 1]; per tensor: [nb, 1] against [1, L].
    std::vector<float> q(static_cast<size_t>(levels));
    for (int32_t k = 0; k < levels; ++k) q[k] = static_cast<float>(k);
    std::vector<int64_t> qshape = chan_first ? std::vector<int64_t>{1, 1, levels}
                                  : chan_last ? std::vector<int64_t>{1, levels, 1}
                                              : std::vector<int64_t>{1, levels};
    std::vector<int64_t> pview = chan_first ? std::vector<int64_t>{c, nb, 1}
                                 : chan_last ? std::vector<int64_t>{nb, 1, c}
                                             : std::vector<int64_t>{nb, 1};
    onnx::TensorProto* qt = NewInitializer(owner, UniqueName(base + ".levels"), onnx::TensorProto::FLOAT, qshape);
    AppendFloats(qt, q);
    auto shaped = [&](std::string x) {
      if (chan_last) x = node("Transpose", {x});  // [C, nb] -> [nb, C]
      return node("Reshape", {x, ConstInt64s(owner, "sq.const.shape", pview)});
    };
    const std::string centred = node("Sub", {qt->name(), shaped(zeros)});
    std::string table = node("Mul", {centred, shaped(scales)});
    const int64_t entries = static_cast<int64_t>(nb) * levels;
    table = node("Reshape", {table, ConstInt64s(owner, "sq.const.shape",
                                                chan_first  ? std::vector<int64_t>{c, entries}
                                                : chan_last ? std::vector<int64_t>{entries, c}
                                                            : std::vector<int64_t>{entries})});
    std::string values;
    if (per_tensor) {
      values = node("Gather", {table, sym});
    } else {
      values = node("GatherElements", {table, sym});
      SetIntAttr(&nodes.back(), "axis", chan_first ? 1 : 0);
    }
    nodes.push_back(MakeNode("Reshape", "", {values, ConstInt64s(owner, "sq.const.shape", g.shape)},
                             decoded_name));
    return decoded_name;
  }

  // select
  std::vector<int64_t> pshape;
  if (l.granularity == Granularity::kChannel) {
    pshape.assign(g.shape.size(), 1);
    pshape[l.channel_axis] = g.shape[l.channel_axis];
  } else {
    pshape = plan->param_shape;
  }
  std::string block_index;
  if (l.granularity == Granularity::kBlock) {
    std::vector<int64_t> idx(static_cast<size_t>(g.shape[l.reduction_axis]));
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = static_cast<int64_t>(k) / l.block_size;
    block_index = ConstInt64s(owner, base + ".block_index", idx);
  }
  const std::string q = AppendUnpack(owner, plan->data[0]->name(), cb, 1, g.shape, &nodes);
  const std::string qf = node("Cast", {q});
  SetIntAttr(&nodes.back(), "to", onnx::TensorProto::FLOAT);
  std::vector<std::string> values;
  for (int b = 0; b < nb; ++b) {
    // Branch b's column of [P, nb], in the parameters' own shape.
    auto column = [&](const std::string& x) {
      std::string v = x;
      if (nb > 1) {
        v = node("Gather", {x, ConstInt32(owner, "sq.const.i32", b)});
        SetIntAttr(&nodes.back(), "axis", 1);
      }
      return node("Reshape", {v, ConstInt64s(owner, "sq.const.shape", pshape)});
    };
    std::string zf = column(zeros);
    std::string sf = column(scales);
    if (!block_index.empty()) {
      zf = node("Gather", {zf, block_index});
      SetIntAttr(&nodes.back(), "axis", l.reduction_axis);
      sf = node("Gather", {sf, block_index});
      SetIntAttr(&nodes.back(), "axis", l.reduction_axis);
    }
    values.push_back(node("Mul", {node("Sub", {qf, zf}), sf}));
  }
  if (nb == 1) {
    nodes.back().set_output(0, decoded_name);
    return decoded_name;
  }
  const std::string id = AppendUnpack(owner, plan->ids->name(), kTernaryIds, 1, g.shape, &nodes);
  const std::string is0 = node("Equal", {id, ConstInt32(owner, "sq.const.i32", 0)});
  const std::string is1 = node("Equal", {id, ConstInt32(owner, "sq.const.i32", 1)});
  const std::string upper = node("Where", {is1, values[1], values[2]});
  nodes.push_back(MakeNode("Where", "", {is0, values[0], upper}, decoded_name));
  return decoded_name;
}

void GraphEditor::PlanKernels(GroupPlan* plan, const QuantizeOptions& options, bool gather) {
  WeightGroup& g = *plan->group;
  onnx::GraphProto* owner = g.weight.graph;
  const std::string base = absl::StrCat(g.weight_name, ".sq");
  const ParamLayout& l = plan->layout;
  plan->form = gather ? (plan->outer8 ? LayerForm::kGatherOuter8 : LayerForm::kGather)
                      : (plan->outer8 ? LayerForm::kNBitsOuter8 : LayerForm::kNBits);
  EnsureOpsetImport(model_, "com.microsoft", 1);
  // MatMulNBits: W[K, N]; GatherBlockQuantized: a table [R, C] (encode.h for both layouts).
  const int64_t k = l.shape[0], n = l.shape[1];
  const int64_t bs = gather ? GatherBlockSize(l) : NBitsBlockSize(l);
  // outer8: kernel 0 runs the middle branch at `bits`, kernel 1 the outer clusters at 8.
  const int kernels = plan->outer8 ? 2 : plan->num_branches;
  auto bits_of = [&](int b) { return KernelBits(gather, plan->outer8, b, options.bits); };
  for (int b = 0; b < kernels; ++b) {
    const std::string suffix =
        kernels == 1 ? "" : plan->outer8 ? (b == 0 ? ".middle" : ".outer") : absl::StrCat(".b", b);
    const KernelDims d = KernelTensorDims(l, gather, bits_of(b));
    const char* kind = gather ? ".gbq" : ".nbits";
    plan->data[b] = NewInitializer(owner, UniqueName(base + suffix + kind),
                                   onnx::TensorProto::UINT8, d.data);
    plan->scale[b] = NewInitializer(owner, UniqueName(base + suffix + kind + "_scales"),
                                    onnx::TensorProto::FLOAT, d.scales);
    plan->zero_point[b] = NewInitializer(owner, UniqueName(base + suffix + kind + "_zero_points"),
                                         onnx::TensorProto::UINT8, d.zero_points);
    plan->tensor_bytes.push_back({plan->data[b], NumElements(*plan->data[b])});
    plan->tensor_bytes.push_back({plan->scale[b], NumElements(*plan->scale[b]) * 4});
    plan->tensor_bytes.push_back({plan->zero_point[b], NumElements(*plan->zero_point[b])});
  }
  for (LayerUse& use : g.uses) {
    onnx::NodeProto* node = use.node;
    const std::string out = node->output(0);
    std::vector<onnx::NodeProto> repl;
    std::vector<std::string> outs;
    for (int b = 0; b < kernels; ++b) {
      const std::string y = kernels == 1 ? out : UniqueName(absl::StrCat(out, ".sq.b", b));
      const std::string name =
          kernels == 1 && !node->name().empty()
              ? node->name()
              : UniqueName(absl::StrCat(node->name().empty() ? out : node->name(),
                                        gather ? ".sq.gbq" : ".sq.nbits", b));
      onnx::NodeProto m;
      if (gather) {
        m = MakeNode("GatherBlockQuantized", name,
                     {plan->data[b]->name(), node->input(1), plan->scale[b]->name(),
                      plan->zero_point[b]->name()},
                     y);
        SetIntAttr(&m, "gather_axis", 0);
        SetIntAttr(&m, "quantize_axis", 1);
      } else {
        m = MakeNode("MatMulNBits", name,
                     {node->input(0), plan->data[b]->name(), plan->scale[b]->name(),
                      plan->zero_point[b]->name()},
                     y);
        SetIntAttr(&m, "K", k);
        SetIntAttr(&m, "N", n);
        SetIntAttr(&m, "accuracy_level", options.ort_accuracy_level);
      }
      m.set_domain("com.microsoft");
      SetIntAttr(&m, "bits", bits_of(b));
      SetIntAttr(&m, "block_size", bs);
      repl.push_back(std::move(m));
      outs.push_back(y);
    }
    if (kernels == 3) {
      AppendSumOfThree(outs, out, absl::StrCat(out, ".sq.sum"), &repl);
    } else if (kernels == 2) {
      repl.push_back(MakeNode("Add", UniqueName(absl::StrCat(out, ".sq.sum.add")), outs, out));
    }
    replacements_[node] = std::move(repl);
  }
}

absl::Status GraphEditor::ApplyGraphEdits() {
  std::vector<onnx::GraphProto*> graphs;
  ForEachGraph(model_->mutable_graph(), &graphs);
  for (onnx::GraphProto* g : graphs) {
    auto front = front_nodes_.find(g);
    bool touched = front != front_nodes_.end();
    for (const auto& n : g->node()) touched = touched || replacements_.count(&n);
    if (!touched) continue;
    std::vector<onnx::NodeProto*> old;
    old.reserve(g->node_size());
    while (g->node_size() > 0) old.push_back(g->mutable_node()->ReleaseLast());
    std::reverse(old.begin(), old.end());
    if (front != front_nodes_.end()) {
      for (auto& n : front->second) g->add_node()->Swap(&n);
    }
    for (onnx::NodeProto* n : old) {
      auto r = replacements_.find(n);
      if (r == replacements_.end()) {
        g->mutable_node()->AddAllocated(n);
        continue;
      }
      for (auto& rn : r->second) g->add_node()->Swap(&rn);
      graveyard_nodes_.emplace_back(n);
    }
  }

  // Drop original weights and biases that nothing reads any more. The objects are kept
  // alive (graveyard) because the engine still reads their data afterwards.
  graphs.clear();
  ForEachGraph(model_->mutable_graph(), &graphs);
  std::set<std::string> used;
  for (onnx::GraphProto* g : graphs) {
    for (const auto& o : g->output()) used.insert(o.name());
    for (const auto& n : g->node()) {
      for (const auto& i : n.input()) used.insert(i);
    }
  }
  for (onnx::GraphProto* g : graphs) {
    auto* inits = g->mutable_initializer();
    for (int i = inits->size() - 1; i >= 0; --i) {
      const onnx::TensorProto* t = &inits->Get(i);
      if (!maybe_unused_.count(t) || used.count(t->name())) continue;
      std::string name = t->name();
      onnx::TensorProto* released = nullptr;
      inits->ExtractSubrange(i, 1, &released);
      graveyard_tensors_.emplace_back(released);
      auto* inputs = g->mutable_input();
      for (int j = 0; j < inputs->size(); ++j) {
        if (inputs->Get(j).name() == name) {
          inputs->DeleteSubrange(j, 1);
          break;
        }
      }
    }
    auto* nodes = g->mutable_node();
    for (int i = nodes->size() - 1; i >= 0; --i) {
      const onnx::NodeProto& n = nodes->Get(i);
      if (n.op_type() != "Constant" || n.output_size() != 1 || used.count(n.output(0))) continue;
      bool ours = false;
      for (const auto& a : n.attribute()) ours = ours || (a.has_t() && maybe_unused_.count(&a.t()));
      if (!ours) continue;
      onnx::NodeProto* released = nullptr;
      nodes->ExtractSubrange(i, 1, &released);
      graveyard_nodes_.emplace_back(released);
    }
  }
  return absl::OkStatus();
}

}  // namespace sq
