#include "server/convert.h"

#include <optional>

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

#include "core/file_util.h"
#include "core/utf8.h"

namespace sq::server {
namespace {

// The shortest decimal text that reads back (absl::SimpleAtof) as exactly `v`.
std::string FloatText(float v) {
  for (int digits = 6; digits < 9; ++digits) {
    std::string text = absl::StrFormat("%.*g", digits, v);
    float back = 0;
    if (absl::SimpleAtof(text, &back) && back == v) return text;
  }
  return absl::StrFormat("%.9g", v);
}

}  // namespace

absl::StatusOr<QuantizeOptions> ToEngineOptions(const v1::QuantizeOptions& w, int default_threads) {
  QuantizeOptions o;
  if (w.has_bits()) o.bits = w.bits();
  switch (w.granularity()) {
    case v1::GRANULARITY_UNSPECIFIED: break;
    case v1::GRANULARITY_TENSOR: o.granularity = Granularity::kTensor; break;
    case v1::GRANULARITY_CHANNEL: o.granularity = Granularity::kChannel; break;
    case v1::GRANULARITY_BLOCK: o.granularity = Granularity::kBlock; break;
    default: return absl::InvalidArgumentError("options.granularity: unknown value");
  }
  if (w.has_block_size()) o.block_size = w.block_size();
  if (w.has_symmetric()) o.symmetric = w.symmetric();
  switch (w.split_mode()) {
    case v1::SPLIT_MODE_UNSPECIFIED: break;
    case v1::SPLIT_MODE_ON: o.split = SplitMode::kOn; break;
    case v1::SPLIT_MODE_OFF: o.split = SplitMode::kOff; break;
    case v1::SPLIT_MODE_AUTO: o.split = SplitMode::kAuto; break;
    default: return absl::InvalidArgumentError("options.split_mode: unknown value");
  }
  if (w.has_initializer_inputs_are_weights()) {
    o.initializer_inputs_are_weights = w.initializer_inputs_are_weights();
  }
  if (w.has_quantize_gather()) o.quantize_gather = w.quantize_gather();
  o.bpw_budget = w.bpw_budget();
  for (int i = 0; i < w.layer_overrides_size(); ++i) {
    auto lo = ParseLayerOverride(w.layer_overrides(i));
    if (!lo.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("options.layer_overrides[", i, "]: ", lo.status().message()));
    }
    o.layer_overrides.push_back(*std::move(lo));
  }
  switch (w.form()) {
    case v1::SPLIT_FORM_UNSPECIFIED: break;
    case v1::SPLIT_FORM_BRANCHES: o.form = SplitForm::kBranches; break;
    case v1::SPLIT_FORM_FOLDED: o.form = SplitForm::kFolded; break;
    case v1::SPLIT_FORM_COMPACT: o.form = SplitForm::kCompact; break;
    case v1::SPLIT_FORM_OUTER8: o.form = SplitForm::kOuter8; break;
    default: return absl::InvalidArgumentError("options.form: unknown value");
  }
  // Format and target follow sqctl's flags: QDQ alone means target qdq.
  std::optional<std::string> format, target;
  switch (w.format()) {
    case v1::OUTPUT_FORMAT_UNSPECIFIED: break;
    case v1::OUTPUT_FORMAT_QDQ: format = "qdq"; break;
    case v1::OUTPUT_FORMAT_FAKE: format = "fake"; break;
    case v1::OUTPUT_FORMAT_SPLIT: format = "split"; break;
    default: return absl::InvalidArgumentError("options.format: unknown value");
  }
  switch (w.target()) {
    case v1::TARGET_UNSPECIFIED: break;
    case v1::TARGET_ORT_CPU: target = "ort-cpu"; break;
    case v1::TARGET_QDQ: target = "qdq"; break;
    case v1::TARGET_PORTABLE: target = "portable"; break;
    default: return absl::InvalidArgumentError("options.target: unknown value");
  }
  switch (w.activations()) {
    case v1::ACTIVATION_TYPE_UNSPECIFIED: break;
    case v1::ACTIVATION_TYPE_INT8: o.activations = ActivationType::kInt8; break;
    case v1::ACTIVATION_TYPE_UINT8: o.activations = ActivationType::kUint8; break;
    default: return absl::InvalidArgumentError("options.activations: unknown value");
  }
  // As sqctl's --activations: a full-integer model is a QDQ model, so activations without
  // a target or format mean target QDQ (another target is refused by ValidateOptions).
  if (o.activations != ActivationType::kOff && !format && !target) target = "qdq";
  if (absl::Status s = ResolveTargetFlags(target, format, &o); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options.target / options.format: ",
        absl::StrReplaceAll(s.message(), {{"--target", "target"}, {"--format", "format"}})));
  }
  if (w.has_ort_accuracy_level()) o.ort_accuracy_level = w.ort_accuracy_level();
  if (w.has_nbits_min_elements()) o.nbits_min_elements = w.nbits_min_elements();
  switch (w.cluster_scope()) {
    case v1::CLUSTER_SCOPE_UNSPECIFIED: break;
    case v1::CLUSTER_SCOPE_AUTO: o.cluster_scope = ClusterScope::kAuto; break;
    case v1::CLUSTER_SCOPE_TENSOR: o.cluster_scope = ClusterScope::kTensor; break;
    case v1::CLUSTER_SCOPE_CHANNEL: o.cluster_scope = ClusterScope::kChannel; break;
    default: return absl::InvalidArgumentError("options.cluster_scope: unknown value");
  }
  o.exclude_name_patterns.assign(w.exclude_name_patterns().begin(), w.exclude_name_patterns().end());
  o.exclude_op_types.assign(w.exclude_op_types().begin(), w.exclude_op_types().end());
  if (w.has_min_weight_elements()) o.min_weight_elements = w.min_weight_elements();
  if (w.has_target_opset()) o.target_opset = w.target_opset();
  o.threads = w.has_threads() && w.threads() > 0 ? w.threads() : default_threads;
  if (w.threads() < 0) return absl::InvalidArgumentError("options.threads must be >= 0");
  if (w.has_external_data()) o.external_data = w.external_data();
  if (w.has_reference_kmeans()) o.reference_kmeans = w.reference_kmeans();
  if (w.has_quant_aware_boundaries()) o.quant_aware_boundaries = w.quant_aware_boundaries();
  if (w.has_verify()) o.verify = w.verify();
  // A file name among the model's uploaded files; JobManager::Submit resolves it.
  o.verify_input = w.verify_input();
  if (!o.verify && !o.verify_input.empty()) {
    return absl::InvalidArgumentError("options.verify_input is set but options.verify is false");
  }
  // File names among the model's uploaded files, as verify_input; JobManager::Submit
  // resolves them.
  o.calibration_inputs.assign(w.calibration_inputs().begin(), w.calibration_inputs().end());
  switch (w.calibration_method()) {
    case v1::CALIBRATION_METHOD_UNSPECIFIED: break;
    case v1::CALIBRATION_METHOD_MINMAX: o.calibration_method = CalibrationMethod::kMinMax; break;
    case v1::CALIBRATION_METHOD_PERCENTILE: o.calibration_method = CalibrationMethod::kPercentile; break;
    default: return absl::InvalidArgumentError("options.calibration_method: unknown value");
  }
  if (w.has_calibration_percentile()) o.calibration_percentile = w.calibration_percentile();
  switch (w.rounding()) {
    case v1::ROUNDING_UNSPECIFIED: break;
    case v1::ROUNDING_BALANCED: o.rounding = Rounding::kBalanced; break;
    case v1::ROUNDING_NEAREST: o.rounding = Rounding::kNearest; break;
    default: return absl::InvalidArgumentError("options.rounding: unknown value");
  }
  switch (w.scale_type()) {
    case v1::SCALE_TYPE_UNSPECIFIED: break;
    case v1::SCALE_TYPE_AUTO: o.scale_type = ScaleType::kAuto; break;
    case v1::SCALE_TYPE_FLOAT16: o.scale_type = ScaleType::kFloat16; break;
    case v1::SCALE_TYPE_FLOAT32: o.scale_type = ScaleType::kFloat32; break;
    default: return absl::InvalidArgumentError("options.scale_type: unknown value");
  }
  for (int i = 0; i < w.input_ranges_size(); ++i) {
    auto r = ParseInputRange(w.input_ranges(i));
    if (!r.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("options.input_ranges[", i, "]: ", r.status().message()));
    }
    o.input_ranges.push_back(*std::move(r));
  }
  switch (w.split_activations()) {
    case v1::ACTIVATION_SPLIT_UNSPECIFIED: break;
    case v1::ACTIVATION_SPLIT_RANGE: o.split_activations = ActivationSplit::kRange; break;
    case v1::ACTIVATION_SPLIT_POSITIONAL: o.split_activations = ActivationSplit::kPositional; break;
    default: return absl::InvalidArgumentError("options.split_activations: unknown value");
  }
  absl::Status st = ValidateOptions(o);
  if (!st.ok()) return absl::InvalidArgumentError(std::string(st.message()));
  return o;
}

v1::QuantizeOptions ToWireOptions(const QuantizeOptions& o) {
  v1::QuantizeOptions w;
  w.set_bits(o.bits);
  switch (o.granularity) {
    case Granularity::kTensor: w.set_granularity(v1::GRANULARITY_TENSOR); break;
    case Granularity::kChannel: w.set_granularity(v1::GRANULARITY_CHANNEL); break;
    case Granularity::kBlock: w.set_granularity(v1::GRANULARITY_BLOCK); break;
  }
  w.set_block_size(o.block_size);
  w.set_symmetric(o.symmetric);
  w.set_split_mode(o.split == SplitMode::kOff    ? v1::SPLIT_MODE_OFF
                   : o.split == SplitMode::kAuto ? v1::SPLIT_MODE_AUTO
                                                 : v1::SPLIT_MODE_ON);
  for (const LayerOverride& lo : o.layer_overrides) w.add_layer_overrides(ToString(lo));
  w.set_initializer_inputs_are_weights(o.initializer_inputs_are_weights);
  w.set_quantize_gather(o.quantize_gather);
  w.set_bpw_budget(o.bpw_budget);
  switch (o.form) {
    case SplitForm::kAuto: w.set_form(v1::SPLIT_FORM_UNSPECIFIED); break;
    case SplitForm::kBranches: w.set_form(v1::SPLIT_FORM_BRANCHES); break;
    case SplitForm::kFolded: w.set_form(v1::SPLIT_FORM_FOLDED); break;
    case SplitForm::kCompact: w.set_form(v1::SPLIT_FORM_COMPACT); break;
    case SplitForm::kOuter8: w.set_form(v1::SPLIT_FORM_OUTER8); break;
  }
  if (o.format == OutputFormat::kQdq) {
    switch (o.target) {
      case Target::kOrtCpu: w.set_target(v1::TARGET_ORT_CPU); break;
      case Target::kQdq: w.set_target(v1::TARGET_QDQ); break;
      case Target::kPortable: w.set_target(v1::TARGET_PORTABLE); break;
    }
  }
  w.set_ort_accuracy_level(o.ort_accuracy_level);
  w.set_nbits_min_elements(o.nbits_min_elements);
  w.set_verify(o.verify);
  w.set_verify_input(o.verify_input.empty() ? "" : BaseName(o.verify_input));
  switch (o.format) {
    case OutputFormat::kQdq: w.set_format(v1::OUTPUT_FORMAT_QDQ); break;
    case OutputFormat::kFake: w.set_format(v1::OUTPUT_FORMAT_FAKE); break;
    case OutputFormat::kSplit: w.set_format(v1::OUTPUT_FORMAT_SPLIT); break;
  }
  switch (o.cluster_scope) {
    case ClusterScope::kAuto: w.set_cluster_scope(v1::CLUSTER_SCOPE_AUTO); break;
    case ClusterScope::kTensor: w.set_cluster_scope(v1::CLUSTER_SCOPE_TENSOR); break;
    case ClusterScope::kChannel: w.set_cluster_scope(v1::CLUSTER_SCOPE_CHANNEL); break;
  }
  for (const auto& p : o.exclude_name_patterns) w.add_exclude_name_patterns(p);
  for (const auto& p : o.exclude_op_types) w.add_exclude_op_types(p);
  w.set_min_weight_elements(o.min_weight_elements);
  w.set_target_opset(o.target_opset);
  w.set_threads(o.threads);
  w.set_external_data(o.external_data);
  w.set_reference_kmeans(o.reference_kmeans);
  if (o.quant_aware_boundaries) w.set_quant_aware_boundaries(*o.quant_aware_boundaries);
  w.set_rounding(o.rounding == Rounding::kBalanced ? v1::ROUNDING_BALANCED : v1::ROUNDING_NEAREST);
  switch (o.activations) {
    case ActivationType::kOff: w.set_activations(v1::ACTIVATION_TYPE_UNSPECIFIED); break;
    case ActivationType::kInt8: w.set_activations(v1::ACTIVATION_TYPE_INT8); break;
    case ActivationType::kUint8: w.set_activations(v1::ACTIVATION_TYPE_UINT8); break;
  }
  // Names of uploaded files, as the request gave them (Submit converts the options before
  // it resolves the names to stored paths).
  for (const std::string& c : o.calibration_inputs) w.add_calibration_inputs(c);
  switch (o.calibration_method) {
    case CalibrationMethod::kMinMax: w.set_calibration_method(v1::CALIBRATION_METHOD_MINMAX); break;
    case CalibrationMethod::kPercentile: w.set_calibration_method(v1::CALIBRATION_METHOD_PERCENTILE); break;
  }
  w.set_calibration_percentile(o.calibration_percentile);
  switch (o.scale_type) {
    case ScaleType::kAuto: w.set_scale_type(v1::SCALE_TYPE_AUTO); break;
    case ScaleType::kFloat16: w.set_scale_type(v1::SCALE_TYPE_FLOAT16); break;
    case ScaleType::kFloat32: w.set_scale_type(v1::SCALE_TYPE_FLOAT32); break;
  }
  for (const QuantizeOptions::InputRange& r : o.input_ranges) {
    w.add_input_ranges(absl::StrCat(r.name, "=", FloatText(r.lo), ":", FloatText(r.hi)));
  }
  switch (o.split_activations) {
    case ActivationSplit::kOff: w.set_split_activations(v1::ACTIVATION_SPLIT_UNSPECIFIED); break;
    case ActivationSplit::kRange: w.set_split_activations(v1::ACTIVATION_SPLIT_RANGE); break;
    case ActivationSplit::kPositional: w.set_split_activations(v1::ACTIVATION_SPLIT_POSITIONAL); break;
  }
  return w;
}

v1::InspectModelResponse ToWire(const ModelInfo& info) {
  v1::InspectModelResponse r;
  r.set_ir_version(info.ir_version);
  r.set_opset(info.opset);
  // Names come from the model: anything may be in them, and proto strings must be UTF-8.
  for (const auto& [k, v] : info.opset_imports) (*r.mutable_opset_imports())[ToValidUtf8(k)] = v;
  for (const auto& [k, v] : info.op_histogram) (*r.mutable_op_histogram())[ToValidUtf8(k)] = v;
  for (const LayerInfo& l : info.layers) {
    v1::LayerInfo* w = r.add_layers();
    w->set_name(ToValidUtf8(l.name));
    w->set_op_type(ToValidUtf8(l.op_type));
    w->set_weight(ToValidUtf8(l.weight));
    w->set_graph(ToValidUtf8(l.graph));
    for (int64_t d : l.shape) w->add_shape(d);
    w->set_shared_by(l.shared_by);
  }
  for (const auto& op : info.unsupported_ops) r.add_unsupported_ops(ToValidUtf8(op));
  r.set_weight_bytes(info.weight_bytes);
  r.set_model_bytes(info.model_bytes);
  for (const auto& [bits, bytes] : info.estimated_output_bytes) (*r.mutable_estimated_output_bytes())[bits] = bytes;
  r.set_uses_external_data(info.uses_external_data);
  return r;
}

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}


}  // namespace sq::server
