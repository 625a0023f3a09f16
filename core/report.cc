#include "core/report.h"

#include <cmath>
#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/file_util.h"
#include "core/utf8.h"
#include "nlohmann/json.hpp"

namespace sq {
namespace {

// JSON has no infinity: an error-free layer's SQNR is written as null.
nlohmann::json Db(double v) {
  if (!std::isfinite(v)) return nullptr;
  return std::round(v * 1000.0) / 1000.0;
}

nlohmann::json OptionsJson(const QuantizeOptions& o) {
  return {{"bits", o.bits},
          {"granularity", ToString(o.granularity)},
          {"block_size", o.block_size},
          {"symmetric", o.symmetric},
          {"split", ToString(o.split)},
          {"layer_overrides", [&] {
             std::vector<std::string> v;
             for (const auto& lo : o.layer_overrides) v.push_back(ToString(lo));
             return v;
           }()},
          {"form", ToString(EffectiveForm(o))},
          {"format", ToString(o.format)},
          {"target", o.format == OutputFormat::kQdq ? ToString(o.target) : "none"},
          {"ort_accuracy_level", o.ort_accuracy_level},
          {"nbits_min_elements", o.nbits_min_elements},
          {"cluster_scope", ToString(o.cluster_scope)},
          {"kmeans", o.reference_kmeans ? "reference" : "exact"},
          {"boundaries", !o.quant_aware_boundaries ? "auto"
                         : *o.quant_aware_boundaries ? "quant"
                                                     : "kmeans"},
          {"rounding", ToString(o.rounding)},
          {"scale_type", ToString(o.scale_type)},
          {"exclude", o.exclude_name_patterns},
          {"exclude_op_types", o.exclude_op_types},
          {"min_weight_elements", o.min_weight_elements},
          {"target_opset", o.target_opset},
          {"threads", o.threads},
          {"external_data", o.external_data},
          {"initializer_inputs", o.initializer_inputs_are_weights ? "weights" : "inputs"},
          {"quantize_gather", o.quantize_gather},
          {"bpw_budget", o.bpw_budget},
          {"verify", o.verify},
          {"verify_input", o.verify_input.empty() ? "" : BaseName(o.verify_input)},
          {"activations", ToString(o.activations)},
          {"calibration_inputs", [&] {
             std::vector<std::string> v;
             for (const auto& c : o.calibration_inputs) v.push_back(BaseName(c));
             return v;
           }()},
          {"calibration_method", ToString(o.calibration_method)},
          {"calibration_percentile", o.calibration_percentile},
          {"input_ranges", [&] {
             std::vector<std::string> v;
             for (const auto& r : o.input_ranges) v.push_back(absl::StrCat(r.name, "=", r.lo, ":", r.hi));
             return v;
           }()},
          {"split_activations", ToString(o.split_activations)}};
}

std::string HumanBytes(int64_t b) {
  if (b >= (int64_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / double(int64_t{1} << 30));
  if (b >= (1 << 20)) return absl::StrFormat("%.2f MiB", b / double(1 << 20));
  if (b >= (1 << 10)) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrCat(b, " B");
}

// Layer, tensor and graph names come from the model and may hold any bytes; JSON (and
// the proto strings the report travels in) must be UTF-8.
void MakeStringsValidUtf8(nlohmann::json& j) {
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    if (!IsValidUtf8(s)) j = ToValidUtf8(s);
  } else if (j.is_structured()) {
    for (auto& child : j) MakeStringsValidUtf8(child);
  }
}

std::string DbText(double v) { return std::isfinite(v) ? absl::StrFormat("%.1f", v) : "inf"; }

}  // namespace

std::string ReportToJson(const ModelReport& r, int indent) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerReport& l : r.layers) {
    nlohmann::json clusters = nlohmann::json::array();
    for (const auto& c : l.clusters) clusters.push_back({{"count", c.count}, {"min", c.min}, {"max", c.max}});
    layers.push_back({{"name", l.name},
                      {"op_type", l.op_type},
                      {"weight", l.weight},
                      {"shape", l.shape},
                      {"graph", l.graph},
                      {"shared_by", l.shared_by},
                      {"quantized", l.quantized},
                      {"skip_reason", l.skip_reason},
                      {"split", l.split},
                      {"not_split_reason", l.not_split_reason},
                      {"clusters", clusters},
                      {"degenerate_channels", l.degenerate_channels},
                      {"bias_split", l.bias_split},
                      {"scale_min", l.scale_min},
                      {"scale_max", l.scale_max},
                      {"mse_plain", l.mse_plain},
                      {"mse_split", l.mse_split},
                      {"sqnr_plain_db", Db(l.sqnr_plain_db)},
                      {"sqnr_split_db", Db(l.sqnr_split_db)},
                      {"bytes_before", l.bytes_before},
                      {"bytes_after", l.bytes_after},
                      {"stored_bits_per_weight", std::round(l.stored_bits_per_weight * 1000) / 1000},
                      {"seconds", std::round(l.seconds * 1000) / 1000},
                      {"note", l.note},
                      {"form", l.form},
                      {"bits", l.bits},
                      {"granularity", l.granularity},
                      {"block_size", l.block_size},
                      {"symmetric", l.symmetric},
                      {"split_mode", l.split_mode},
                      {"override", l.override_rule},
                      {"split_decision", l.split_decision},
                      {"rounding", l.rounding},
                      {"offset_channels", l.offset_channels},
                      {"bands", l.bands}});
  }
  nlohmann::json stages = nlohmann::json::array();
  for (const auto& s : r.stages) stages.push_back({{"stage", s.stage}, {"seconds", s.seconds}});
  nlohmann::json sensitivity = nlohmann::json::array();
  for (const SensitivityEntry& e : r.sensitivity) {
    nlohmann::json at = nlohmann::json::object();
    for (const auto& [bits, rel] : e.rel_error_at_bits) at[std::to_string(bits)] = rel;
    sensitivity.push_back({{"layer", e.layer},
                           {"elements", e.elements},
                           {"relative_error_at_bits", at},
                           {"chosen_bits", e.chosen_bits},
                           {"chosen_split", e.chosen_split}});
  }
  nlohmann::json outputs = nlohmann::json::array();
  for (const OutputAgreement& o : r.verification.outputs) {
    outputs.push_back({{"name", o.name},
                       {"shape", o.shape},
                       {"rel_l2", o.rel_l2},
                       {"max_abs", o.max_abs},
                       {"agreement", o.agreement},
                       {"agreement_kind", o.agreement_kind}});
  }
  nlohmann::json verification = {{"status", r.verification.status},
                                 {"runtime", r.verification.runtime},
                                 {"inputs", r.verification.inputs},
                                 {"reference_ran", r.verification.reference_ran},
                                 {"note", r.verification.note},
                                 {"seconds", std::round(r.verification.seconds * 1000) / 1000},
                                 {"outputs", outputs}};
  nlohmann::json j = {{"tool", "sq"},
                      {"tool_version", r.tool_version},
                      {"input_path", r.input_path},
                      {"output_path", r.output_path},
                      {"options", OptionsJson(r.options)},
                      {"input_opset", r.input_opset},
                      {"output_opset", r.output_opset},
                      {"input_bytes", r.input_bytes},
                      {"output_bytes", r.output_bytes},
                      {"compression_ratio", r.compression_ratio},
                      {"stages", stages},
                      {"total_seconds", r.total_seconds},
                      {"peak_rss_bytes", r.peak_rss_bytes},
                      {"output_sha256", r.output_sha256},
                      {"external_data_path", r.external_data_path},
                      {"external_data_sha256", r.external_data_sha256},
                      {"layers_found", r.layers_found},
                      {"layers_quantized", r.layers_quantized},
                      {"layers_split", r.layers_split},
                      {"mean_sqnr_plain_db", Db(r.mean_sqnr_plain_db)},
                      {"mean_sqnr_split_db", Db(r.mean_sqnr_split_db)},
                      {"quantized_bits_per_weight", std::round(r.quantized_bits_per_weight * 1000) / 1000},
                      {"artifact_bits_per_weight", std::round(r.artifact_bits_per_weight * 1000) / 1000},
                      {"model_weight_elements", r.model_weight_elements},
                      {"warnings", r.warnings},
                      {"initializer_inputs_promoted", r.initializer_inputs_promoted},
                      {"batched_weights_unstacked", r.batched_weights_unstacked},
                      {"verification", verification},
                      {"activations", {{"type", r.activations.type},
                                       {"ranges_from", r.activations.ranges_from},
                                       {"quantized_ops", r.activations.quantized_ops},
                                       {"tensors", r.activations.tensors},
                                       {"int32_biases", r.activations.int32_biases},
                                       {"float_biases", r.activations.float_biases},
                                       {"folded_batch_norms", r.activations.folded_batch_norms},
                                       {"folded_affine", r.activations.folded_affine},
                                       {"fused_hardswish", r.activations.fused_hardswish},
                                       {"split", r.activations.split},
                                       {"activations_split", r.activations.activations_split},
                                       {"consumers_split", r.activations.consumers_split},
                                       {"split_notes", r.activations.split_notes},
                                       {"seconds", std::round(r.activations.seconds * 1000) / 1000}}},
                      {"layers", layers}};
  if (r.options.bpw_budget > 0) {
    j["bpw_budget"] = {{"budget", r.options.bpw_budget},
                       {"achieved", std::round(r.quantized_bits_per_weight * 1000) / 1000}};
    j["sensitivity"] = sensitivity;
  }
  MakeStringsValidUtf8(j);
  return j.dump(indent) + "\n";
}

std::string VerificationSummary(const Verification& v) {
  std::string out = absl::StrCat("verification: ", v.status);
  if (v.status == "off") return out;
  absl::StrAppend(&out, " in ", v.runtime, absl::StrFormat(" (%.2fs", v.seconds));
  if (!v.inputs.empty()) absl::StrAppend(&out, "; inputs ", v.inputs);
  absl::StrAppend(&out, ")");
  if (v.reference_ran) {
    double worst_rel = 0, worst_agree = 2;
    for (const OutputAgreement& o : v.outputs) {
      worst_rel = std::max(worst_rel, o.rel_l2);
      if (o.agreement >= 0) worst_agree = std::min(worst_agree, o.agreement);
    }
    absl::StrAppend(&out, absl::StrFormat("; vs FP32: worst rel L2 %.3g", worst_rel));
    if (worst_agree <= 1) absl::StrAppend(&out, absl::StrFormat(", agreement %.1f%%", 100 * worst_agree));
  }
  if (!v.note.empty()) absl::StrAppend(&out, "; ", v.note);
  return out;
}

std::string ReportSummary(const ModelReport& r) {
  std::string out;
  const QuantizeOptions& o = r.options;
  absl::StrAppend(&out, absl::StrFormat(
      "sq %s: %s -> %s\n", r.tool_version, r.input_path, r.output_path));
  absl::StrAppend(&out, absl::StrFormat(
      "  options: %d-bit %s %s, split %s (%s), %s\n", o.bits,
      o.symmetric ? "symmetric" : "asymmetric",
      o.granularity == Granularity::kBlock ? absl::StrCat("block ", o.block_size) : ToString(o.granularity),
      ToString(o.split), ToString(EffectiveForm(o)),
      o.format == OutputFormat::kQdq ? absl::StrCat("target ", ToString(o.target))
                                     : absl::StrCat("format ", ToString(o.format))));
  absl::StrAppend(&out, absl::StrFormat(
      "  layers: %d found, %d quantized, %d split; opset %d -> %d\n", r.layers_found,
      r.layers_quantized, r.layers_split, r.input_opset, r.output_opset));
  if (o.format == OutputFormat::kSplit) {
    absl::StrAppend(&out, absl::StrFormat(
        "  size: %s -> %s (%.2fx); FP32 split (no quantization); plain %d-bit would give %s dB\n",
        HumanBytes(r.input_bytes), HumanBytes(r.output_bytes), r.compression_ratio, o.bits,
        DbText(r.mean_sqnr_plain_db)));
  } else {
    absl::StrAppend(&out, absl::StrFormat(
        "  size: %s -> %s (%.2fx); mean weight SQNR plain %s dB, split %s dB\n",
        HumanBytes(r.input_bytes), HumanBytes(r.output_bytes), r.compression_ratio,
        DbText(r.mean_sqnr_plain_db), DbText(r.mean_sqnr_split_db)));
  }
  absl::StrAppend(&out, absl::StrFormat(
      "  stored bits per weight: %.2f in the quantized layers, %.2f over the whole artifact\n",
      r.quantized_bits_per_weight, r.artifact_bits_per_weight));
  if (o.bpw_budget > 0) {
    std::map<std::string, int> mix;
    for (const SensitivityEntry& e : r.sensitivity) {
      mix[absl::StrCat(e.chosen_bits, e.chosen_split ? "-bit split" : "-bit")]++;
    }
    std::vector<std::string> parts;
    for (const auto& [k, n] : mix) parts.push_back(absl::StrCat(n, " x ", k));
    absl::StrAppend(&out, absl::StrFormat("  budget %.3g bits per weight: %s; most sensitive: %s\n",
                                          o.bpw_budget, absl::StrJoin(parts, ", "),
                                          r.sensitivity.empty() ? "-" : r.sensitivity[0].layer));
  }
  std::vector<std::string> stages;
  for (const auto& s : r.stages) stages.push_back(absl::StrFormat("%s %.2fs", s.stage, s.seconds));
  absl::StrAppend(&out, absl::StrFormat("  time: %.2fs (%s); peak RSS %s\n", r.total_seconds,
                                        absl::StrJoin(stages, ", "), HumanBytes(r.peak_rss_bytes)));
  absl::StrAppend(&out, "  sha256: ", r.output_sha256, "\n");
  absl::StrAppend(&out, "  ", VerificationSummary(r.verification), "\n");
  if (!r.initializer_inputs_promoted.empty()) {
    absl::StrAppend(&out, "  ", r.initializer_inputs_promoted.size(),
                    " initializer(s) listed as graph inputs (IR < 4) became weights and left the "
                    "inputs\n");
  }
  if (!r.batched_weights_unstacked.empty()) {
    absl::StrAppend(&out, "  ", r.batched_weights_unstacked.size(),
                    " batched MatMul weight(s) became one 2-D layer per matrix\n");
  }
  for (const auto& w : r.warnings) absl::StrAppend(&out, "  warning: ", w, "\n");
  absl::StrAppend(&out, absl::StrFormat("  %-40s %-13s %-16s %5s %9s %9s  %s\n", "layer", "op",
                                        "shape", "split", "SQNR pl", "SQNR sp", "form"));
  size_t shown = 0;
  for (const LayerReport& l : r.layers) {
    if (++shown > 40) {
      absl::StrAppend(&out, absl::StrFormat("  ... %d more layers in the JSON report\n",
                                            r.layers.size() - 40));
      break;
    }
    std::string name = l.name.size() > 40 ? "..." + l.name.substr(l.name.size() - 37) : l.name;
    if (!l.quantized && !l.split) {
      absl::StrAppend(&out, absl::StrFormat("  %-40s %-13s %-16s  skip (%s)\n", name, l.op_type,
                                            absl::StrJoin(l.shape, "x"), l.skip_reason));
      continue;
    }
    absl::StrAppend(&out, absl::StrFormat("  %-40s %-13s %-16s %5s %9s %9s  %s\n", name, l.op_type,
                                          absl::StrJoin(l.shape, "x"), l.split ? "yes" : "no",
                                          DbText(l.sqnr_plain_db), DbText(l.sqnr_split_db), l.form));
  }
  return ToValidUtf8(out);
}

}  // namespace sq
