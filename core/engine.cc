#include "core/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/activation_stage.h"
#include "core/file_util.h"
#include "core/layers.h"
#include "core/model_io.h"
#include "core/opset_convert.h"
#include "core/rewrite.h"
#include "core/status_macros.h"
#include "core/output.h"
#include "core/plan.h"
#include "core/transform_stage.h"
#include "core/verify/verify.h"
#include "core/unstack.h"
#include "core/validate.h"
#include "core/weight_transform.h"

namespace sq {
namespace {

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

class StageClock {
 public:
  explicit StageClock(ModelReport* report) : report_(report), start_(std::chrono::steady_clock::now()) {}
  void Mark(const std::string& stage) {
    auto now = std::chrono::steady_clock::now();
    report_->stages.push_back({stage, std::chrono::duration<double>(now - start_).count()});
    start_ = now;
  }

 private:
  ModelReport* report_;
  std::chrono::steady_clock::time_point start_;
};

// Stage "report": per-layer entries (settings, split decision, clusters, errors, sizes) and
// the model's totals, from the plans and the transform results.
void FillReport(const std::vector<WeightGroup>& groups, const std::vector<GroupPlan>& plans,
                const std::vector<TransformResult>& results, const QuantizeOptions& options,
                ModelReport* report) {
  std::map<const WeightGroup*, int> plan_of;
  for (size_t i = 0; i < plans.size(); ++i) plan_of[plans[i].group] = static_cast<int>(i);
  double sum_plain = 0, sum_split = 0;
  int64_t quantized_bytes = 0, quantized_elements = 0;
  for (const WeightGroup& g : groups) {
    LayerReport l;
    l.name = g.uses[0].display_name;
    l.op_type = g.op_type;
    l.weight = g.weight_name;
    l.shape = g.shape;
    l.shared_by = static_cast<int>(g.uses.size());
    l.graph = g.uses[0].graph_path;
    l.bytes_before = NumElements(g.shape) * 4;
    l.bytes_after = l.bytes_before;
    auto it = plan_of.find(&g);
    if (it == plan_of.end()) {
      l.skip_reason = g.skip_reason;
      report->layers.push_back(std::move(l));
      continue;
    }
    const GroupPlan& p = plans[it->second];
    const TransformResult& r = results[it->second];
    l.quantized = options.format != OutputFormat::kSplit;
    l.split = r.split;
    l.not_split_reason = r.split ? "" : (p.not_split_reason.empty() ? r.not_split_reason : p.not_split_reason);
    l.bits = p.settings.bits;
    l.granularity = ToString(p.config.granularity);
    l.block_size = p.config.granularity == Granularity::kBlock ? p.settings.block_size : 0;
    l.symmetric = p.settings.symmetric;
    l.split_mode = ToString(p.settings.split);
    if (p.settings.override_index >= 0) {
      l.override_rule = ToString(options.layer_overrides[p.settings.override_index]);
    }
    l.split_decision = p.split_decision;
    l.rounding = !l.quantized ? "" : p.config.balanced_rounding ? "balanced" : "nearest";
    l.offset_channels = r.offset_slices;
    l.bands = r.bands;
    for (int c = 0; c < 3; ++c) l.clusters[c] = {r.clusters[c].count, r.clusters[c].min, r.clusters[c].max};
    l.degenerate_channels = r.degenerate_units;
    float smin = std::numeric_limits<float>::infinity(), smax = 0;
    for (int b = 0; b < r.num_branches; ++b) {
      for (float s : r.params[b].scales) {
        smin = std::min(smin, s);
        smax = std::max(smax, s);
      }
    }
    l.scale_min = smax > 0 ? smin : 0;
    l.scale_max = smax;
    const double n = static_cast<double>(NumElements(g.shape));
    l.mse_plain = r.plain_error_energy / n;
    l.mse_split = r.split_error_energy / n;
    l.sqnr_plain_db = SqnrDb(r.signal_energy, r.plain_error_energy);
    l.sqnr_split_db = SqnrDb(r.signal_energy, r.split_error_energy);
    l.form = ToString(p.form);
    l.bytes_after = 0;
    for (const auto& tb : p.tensor_bytes) l.bytes_after += tb.second;
    l.stored_bits_per_weight = n > 0 ? static_cast<double>(l.bytes_after) * 8 / n : 0;
    if (l.quantized) {
      quantized_bytes += l.bytes_after;
      quantized_elements += NumElements(g.shape);
    }
    l.bias_split = p.bias_split;
    l.seconds = r.seconds;
    l.note = p.granularity_note;
    if (!g.other_consumers.empty()) {
      report->warnings.push_back(absl::StrCat("weight '", g.weight_name, "' is also read by ",
                                             absl::StrJoin(g.other_consumers, ", "),
                                             "; its FP32 copy is kept for them"));
    }
    report->layers_quantized += l.quantized ? 1 : 0;
    report->layers_split += l.split ? 1 : 0;
    sum_plain += std::min(l.sqnr_plain_db, 300.0);
    sum_split += std::min(l.sqnr_split_db, 300.0);
    report->layers.push_back(std::move(l));
  }
  if (!plans.empty()) {
    report->mean_sqnr_plain_db = sum_plain / plans.size();
    report->mean_sqnr_split_db = sum_split / plans.size();
  }
  if (options.format == OutputFormat::kSplit) {
    // Nothing was quantized: the split weights are exact.
    report->mean_sqnr_split_db = std::numeric_limits<double>::infinity();
  }
  report->quantized_bits_per_weight =
      quantized_elements > 0 ? static_cast<double>(quantized_bytes) * 8 / quantized_elements : 0;
  report->artifact_bits_per_weight =
      report->model_weight_elements > 0
          ? static_cast<double>(report->output_bytes) * 8 / report->model_weight_elements
          : 0;
  report->compression_ratio = report->output_bytes > 0
                                 ? static_cast<double>(report->input_bytes) / report->output_bytes
                                 : 0;
}

// Stage "validate", paths: an output is given and is not the input under any spelling.
absl::Status CheckPaths(const std::string& input_path, const std::string& output_path) {
  if (output_path.empty()) return absl::InvalidArgumentError("no output path given");
  // The same file under another spelling (./m.onnx, a link) counts as the same path.
  std::error_code ec;
  if (output_path == input_path || std::filesystem::equivalent(input_path, output_path, ec)) {
    return absl::InvalidArgumentError("the output path is the input path; refusing to overwrite the input");
  }
  return absl::OkStatus();
}

// Stage "convert" (format qdq only): the code storage for the options, and the model
// brought to the opset and IR version it needs (`before_converting` is called first when
// it must be converted). Other formats keep the model's opset.
absl::StatusOr<StoragePlan> ConvertForStorage(const QuantizeOptions& options, int input_opset,
                                              const std::function<void()>& before_converting,
                                              onnx::ModelProto* proto) {
  StoragePlan storage;
  if (options.format != OutputFormat::kQdq) return storage;
  // Under a size budget any layer may get 4 bits: the opset that packs INT4.
  QuantizeOptions storage_options = options;
  if (options.bpw_budget > 0) storage_options.bits = 4;
  SQ_ASSIGN_OR_RETURN(storage, ChooseModelStorage(storage_options, input_opset));
  // Full-integer output: at least opset 14, where a written-out HardSwish becomes the one
  // HardSwish op (activations/fold.h: each op between integer kernels runs in float).
  if (options.activations != ActivationType::kOff && options.target_opset == 0 && storage.opset < 14) {
    storage.opset = 14;
  }
  if (storage.opset > input_opset) {
    before_converting();
    absl::Status s = ConvertOpset(proto, storage.opset);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot bring the model from opset ", input_opset, " to opset ", storage.opset,
          " needed by target ", ToString(options.target), ": ", s.message(),
          ". Use --format fake or --format split, which keep the model's opset"));
    }
  }
  if (proto->ir_version() < storage.ir_version) proto->set_ir_version(storage.ir_version);
  return storage;
}

// Full-integer output at 7 and 8 bits: weight codes symmetric (zero point 0). ONNX
// Runtime's QLinearConv and NPU integer kernels take one zero weight zero point; with
// per-channel asymmetric zero points ORT falls back to a path 30x slower on the OCR
// recognizer (docs/accuracy.md, full-integer). 7 bits is the "reduced range" that keeps
// x86 u8 x s8 kernels without VNNI from saturating. Lower bits are not fused by ORT and stay
// asymmetric. With activations or the activation split on, every layer is quantized
// whatever its size: the split cuts layers into parts that may fall under
// min_weight_elements, and a full-integer model has no float layers.
QuantizeOptions ForIntegerKernels(const QuantizeOptions& requested) {
  QuantizeOptions o = requested;
  if (o.activations != ActivationType::kOff && o.bits >= 7) o.symmetric = true;
  if (o.activations != ActivationType::kOff || o.split_activations != ActivationSplit::kOff) {
    o.min_weight_elements = 0;
  }
  return o;
}

}  // namespace

const char* Version() { return SQ_VERSION; }

absl::StatusOr<ModelReport> QuantizeModelFile(const std::string& input_path,
                                              const std::string& output_path,
                                              const QuantizeOptions& requested,
                                              const RunHooks& hooks) {
  const QuantizeOptions options = ForIntegerKernels(requested);
  const auto run_start = std::chrono::steady_clock::now();
  ModelReport report;
  report.tool_version = Version();
  report.input_path = input_path;
  report.output_path = output_path;
  report.options = options;
  SQ_RETURN_IF_ERROR(ValidateOptions(options));
  SQ_RETURN_IF_ERROR(CheckPaths(input_path, output_path));
  auto progress = [&](const std::string& stage, int i = 0, int n = 0, const std::string& name = "") {
    if (hooks.on_progress) hooks.on_progress(Progress{stage, i, n, name});
  };
  auto cancelled = [&] { return hooks.is_cancelled && hooks.is_cancelled(); };
  const absl::Status kCancelled = absl::CancelledError("cancelled by request");
  StageClock clock(&report);

  // --- load ---------------------------------------------------------------------------
  progress("load");
  SQ_ASSIGN_OR_RETURN(std::unique_ptr<LoadedModel> model, LoadedModel::FromFile(input_path));
  onnx::ModelProto& proto = model->proto();
  SQ_RETURN_IF_ERROR(ValidateModelStructure(proto));
  if (options.initializer_inputs_are_weights) {
    report.initializer_inputs_promoted = PromoteInitializerInputs(&proto);
  }
  report.input_bytes = model->model_file_bytes() + model->external_bytes();
  report.model_weight_elements = model->float_weight_elements();
  report.input_opset = DefaultDomainOpset(proto);
  // The inputs stage "verify" will run with, chosen now so that a bad file fails at once.
  SQ_ASSIGN_OR_RETURN(VerifyInputs verify_inputs, PrepareVerifyInputs(proto.graph(), options));
  // Likewise the calibration samples (full-integer output, range-grouped activation split).
  SQ_ASSIGN_OR_RETURN(std::vector<CalibrationSample> calibration, PrepareCalibration(proto.graph(), options));
  clock.Mark("load");
  if (cancelled()) return kCancelled;

  // --- opset conversion (qdq only) ------------------------------------------------------
  SQ_ASSIGN_OR_RETURN(StoragePlan storage, ConvertForStorage(options, report.input_opset,
                                                             [&] { progress("convert"); }, &proto));
  if (options.format == OutputFormat::kQdq) clock.Mark("convert");
  report.output_opset = DefaultDomainOpset(proto);

  // --- fold, activation split (FP32, before the layers they touch are discovered) -------
  std::map<std::string, TensorRange> folded_ranges;  // data-free ranges the norms gave
  if (options.activations != ActivationType::kOff) {
    progress("fold");
    SQ_RETURN_IF_ERROR(FoldStage(*model, options, &folded_ranges, &report.activations));
    clock.Mark("fold");
  }
  if (options.split_activations != ActivationSplit::kOff) {
    progress("split-activations");
    SQ_RETURN_IF_ERROR(SplitActivationsStage(*model, options, calibration, folded_ranges, EffectiveThreads(options),
                                             &report.activations));
    clock.Mark("split-activations");
  }

  // --- discovery ----------------------------------------------------------------------
  progress("discover");
  SQ_ASSIGN_OR_RETURN(std::vector<UnstackedWeight> unstacked, UnstackBatchedMatMuls(model.get(), options));
  for (const UnstackedWeight& u : unstacked) {
    report.batched_weights_unstacked.push_back(
        absl::StrCat(u.weight, " (", u.node, "): ", u.matrices, " matrices"));
  }
  SQ_ASSIGN_OR_RETURN(std::vector<WeightGroup> groups, DiscoverLayers(&proto, options));
  report.layers_found = static_cast<int>(groups.size());
  GraphEditor editor(&proto);
  SQ_ASSIGN_OR_RETURN(std::vector<GroupPlan> plans,
                      PlanLayers(*model, groups, options, storage, editor, &report));
  clock.Mark("discover");
  if (cancelled()) return kCancelled;

  // --- layout -------------------------------------------------------------------------
  SQ_ASSIGN_OR_RETURN(std::unique_ptr<OutputFiles> out,
                      OutputFiles::LayOut(*model, plans, options, output_path));
  clock.Mark("layout");

  // --- transform, in parallel -----------------------------------------------------------
  progress("transform", 0, static_cast<int>(plans.size()));
  TransformStageHooks transform_hooks;
  transform_hooks.on_layer = [&](int done, int total, const std::string& name) {
    progress("transform", done, total, name);
  };
  transform_hooks.is_cancelled = hooks.is_cancelled;
  SQ_ASSIGN_OR_RETURN(std::vector<TransformResult> results,
                      RunTransformStage(*model, plans, *out, EffectiveThreads(options), transform_hooks));
  clock.Mark("transform");

  // --- activations (full-integer output) ---------------------------------------------------
  if (options.activations != ActivationType::kOff) {
    progress("activations");
    SQ_RETURN_IF_ERROR(QuantizeActivationsStage(&proto, out->data_temp_path(), out->data_location(), options,
                                                calibration, folded_ranges,
                                                EffectiveThreads(options), &report.activations));
    clock.Mark("activations");
    if (cancelled()) return kCancelled;
  }

  // --- write, verify, publish -----------------------------------------------------------
  progress("write");
  auto verify = [&](const ArtifactImage& artifact) -> absl::Status {
    clock.Mark("write");
    progress("verify");
    absl::Status s = VerifyArtifact(input_path, report.input_bytes, artifact, verify_inputs,
                                    EffectiveThreads(options), &report.verification);
    clock.Mark("verify");
    return s;
  };
  if (options.verify) {
    SQ_RETURN_IF_ERROR(out->Commit(proto, &report, verify));
  } else {
    SQ_RETURN_IF_ERROR(out->Commit(proto, &report));
    clock.Mark("write");
  }

  // --- report -------------------------------------------------------------------------
  FillReport(groups, plans, results, options, &report);
  report.peak_rss_bytes = PeakRssBytes();
  report.total_seconds = Seconds(run_start);
  progress("done", static_cast<int>(plans.size()), static_cast<int>(plans.size()));
  return report;
}

absl::StatusOr<ModelInfo> InspectModelFile(const std::string& input_path) {
  SQ_ASSIGN_OR_RETURN(std::unique_ptr<LoadedModel> model, LoadedModel::FromFile(input_path));
  SQ_RETURN_IF_ERROR(ValidateModelStructure(model->proto()));
  PromoteInitializerInputs(&model->proto());  // as the default quantize does
  onnx::ModelProto& proto = model->proto();
  ModelInfo info;
  info.ir_version = proto.ir_version();
  info.opset = DefaultDomainOpset(proto);
  for (const auto& o : proto.opset_import()) info.opset_imports[o.domain().empty() ? "ai.onnx" : o.domain()] = o.version();
  for (const auto& [op, n] : OpHistogram(proto)) info.op_histogram[op] = n;
  info.model_bytes = model->model_file_bytes() + model->external_bytes();
  info.uses_external_data = model->uses_external_data();
  info.unsupported_ops = UnconvertibleOps(proto, std::max(21, info.opset));
  QuantizeOptions defaults;
  SQ_RETURN_IF_ERROR(UnstackBatchedMatMuls(model.get(), defaults).status());  // as quantize does
  SQ_ASSIGN_OR_RETURN(std::vector<WeightGroup> groups, DiscoverLayers(&proto, defaults));
  std::map<int, int64_t> quantized_bytes;
  int64_t weight_bytes = 0;
  for (const WeightGroup& g : groups) {
    LayerInfo l{g.uses[0].display_name, g.op_type, g.weight_name, g.uses[0].graph_path, g.shape,
                static_cast<int>(g.uses.size())};
    info.layers.push_back(l);
    if (!g.selected) continue;
    int64_t n = NumElements(g.shape);
    weight_bytes += n * 4;
    // The default target (ort-cpu), every layer split, in the form the plan would write.
    for (int bits : {2, 4, 8}) {
      QuantizeOptions at_bits = defaults;
      at_bits.bits = bits;
      quantized_bytes[bits] += LayerStoredBytes(g, at_bits, /*split=*/true, StoragePlan());
    }
  }
  info.weight_bytes = weight_bytes;
  for (const auto& [bits, q] : quantized_bytes) {
    info.estimated_output_bytes[bits] = info.model_bytes - weight_bytes + q;
  }
  return info;
}

}  // namespace sq
