#include "core/activation_stage.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/activations/act_split.h"
#include "core/activations/constants.h"
#include "core/activations/data_free.h"
#include "core/activations/fold.h"
#include "core/activations/qdq.h"
#include "core/file_util.h"
#include "core/opset_convert.h"
#include "core/status_macros.h"

namespace sq {
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double TailMultiplier(const QuantizeOptions& o) {
  return NormalQuantile(o.calibration_method == CalibrationMethod::kPercentile ? o.calibration_percentile : 100.0,
                        4.5);
}

// FP32 values of a constant of the main graph (initializer or Constant node).
std::function<absl::StatusOr<std::vector<float>>(const std::string&, std::vector<int64_t>*)> WeightReader(
    const LoadedModel& model) {
  const onnx::GraphProto* graph = &model.proto().graph();
  return [graph, &model](const std::string& name, std::vector<int64_t>* dims) -> absl::StatusOr<std::vector<float>> {
    const onnx::TensorProto* found = nullptr;
    for (const auto& t : graph->initializer()) {
      if (t.name() == name) found = &t;
    }
    for (const auto& n : graph->node()) {
      if (found || n.op_type() != "Constant" || n.output_size() != 1 || n.output(0) != name) continue;
      for (const auto& a : n.attribute()) {
        if (a.name() == "value" && a.has_t()) found = &a.t();
      }
    }
    if (found && found->data_type() == onnx::TensorProto::FLOAT) {
      SQ_ASSIGN_OR_RETURN(FloatTensor f, ReadFloatTensor(model, *found));
      *dims = f.shape;
      return std::vector<float>(f.data, f.data + f.size);
    }
    return absl::NotFoundError(absl::StrCat("no FP32 initializer '", name, "'"));
  };
}

}  // namespace

absl::StatusOr<std::vector<OrtModelSource::File>> ExternalFilesOf(const LoadedModel& model) {
  std::vector<OrtModelSource::File> files;
  std::set<std::string> seen;
  for (const auto& t : model.proto().graph().initializer()) {
    if (t.data_location() != onnx::TensorProto::EXTERNAL) continue;
    std::string location;
    for (const auto& kv : t.external_data()) {
      if (kv.key() == "location") location = kv.value();
    }
    if (!seen.insert(location).second) continue;
    SQ_ASSIGN_OR_RETURN(ExternalLocation where, model.ExternalLocationOf(t));
    SQ_ASSIGN_OR_RETURN(const MappedFile* map, model.Map(where.path));
    files.push_back(OrtModelSource::WholeFile(location, map->data(), static_cast<size_t>(map->size()), where.path));
  }
  return files;
}

absl::StatusOr<std::vector<CalibrationSample>> PrepareCalibration(const onnx::GraphProto& graph,
                                                                  const QuantizeOptions& options) {
  if (options.calibration_inputs.empty()) return std::vector<CalibrationSample>{};
  return ReadCalibrationSet(options.calibration_inputs, graph);
}

absl::Status SplitActivationsStage(LoadedModel& model, const QuantizeOptions& options,
                                   const std::vector<CalibrationSample>& samples,
                                   const std::map<std::string, TensorRange>& seeds, int threads,
                                   ActivationReport* report) {
  const auto start = std::chrono::steady_clock::now();
  report->split = ToString(options.split_activations);
  onnx::GraphProto* graph = model.proto().mutable_graph();
  std::map<std::string, TensorRange> ranges;
  if (options.split_activations == ActivationSplit::kRange) {
    const std::vector<ActivationSite> sites = FindActivationSites(*graph);
    if (sites.empty()) return absl::OkStatus();
    SQ_ASSIGN_OR_RETURN(std::vector<OrtModelSource::File> external, ExternalFilesOf(model));
    if (!samples.empty()) {
      CalibrationRequest request;
      for (const ActivationSite& s : sites) {
        request.channel_tensors.push_back(s.input);
        request.channel_tensors.push_back(s.output);
      }
      request.method = CalibrationMethod::kMinMax;
      request.threads = threads;
      SQ_ASSIGN_OR_RETURN(ranges, CollectRanges(model.proto(), external, samples, request));
    } else {
      ConstantTable constants(*graph, external);
      ranges = EstimateRanges(*graph, options.input_ranges, TailMultiplier(options), &constants, seeds);
    }
  }
  auto read_weight = WeightReader(model);
  SQ_ASSIGN_OR_RETURN(ActSplitResult r, SplitActivations(&model.proto(), options.split_activations, ranges, read_weight));
  report->activations_split = r.activations_split;
  report->consumers_split = r.consumers_split;
  report->split_notes = std::move(r.notes);
  report->seconds += Since(start);
  return absl::OkStatus();
}

absl::Status FoldStage(LoadedModel& model, const QuantizeOptions& options,
                       std::map<std::string, TensorRange>* seeds, ActivationReport* report) {
  const auto start = std::chrono::steady_clock::now();
  SQ_ASSIGN_OR_RETURN(FoldResult r, FoldAffineIntoLayers(model.proto().mutable_graph(), WeightReader(model)));
  SQ_ASSIGN_OR_RETURN(report->fused_hardswish, FuseHardSwish(model.proto().mutable_graph(),
                                                                  DefaultDomainOpset(model.proto()), WeightReader(model)));
  const double k = TailMultiplier(options);
  for (const auto& [name, st] : r.output_stats) {
    std::vector<float> lo(st.mean.size()), hi(st.mean.size());
    for (size_t c = 0; c < lo.size(); ++c) {
      lo[c] = static_cast<float>(st.mean[c] - k * st.sd[c]);
      hi[c] = static_cast<float>(st.mean[c] + k * st.sd[c]);
    }
    TensorRange t;
    t.lo = *std::min_element(lo.begin(), lo.end());
    t.hi = *std::max_element(hi.begin(), hi.end());
    t.channel_lo = std::move(lo);
    t.channel_hi = std::move(hi);
    (*seeds)[name] = std::move(t);
  }
  report->folded_batch_norms = r.batch_norms;
  report->folded_affine = r.muls + r.adds;
  report->seconds += Since(start);
  return absl::OkStatus();
}

absl::Status QuantizeActivationsStage(onnx::ModelProto* proto, const std::string& data_path,
                                      const std::string& data_location,
                                      const QuantizeOptions& options,
                                      const std::vector<CalibrationSample>& samples,
                                      const std::map<std::string, TensorRange>& seeds, int threads,
                                      ActivationReport* report) {
  const auto start = std::chrono::steady_clock::now();
  report->type = ToString(options.activations);
  std::unique_ptr<MappedFile> data_map;
  std::vector<OrtModelSource::File> external;
  if (!data_path.empty()) {
    SQ_ASSIGN_OR_RETURN(data_map, MappedFile::Open(data_path));
    external.push_back(
        OrtModelSource::WholeFile(data_location, data_map->data(), static_cast<size_t>(data_map->size()), data_path));
  }
  onnx::GraphProto* graph = proto->mutable_graph();
  const std::vector<std::string> tensors = ActivationTensors(*graph);
  ConstantTable constants(*graph, external);
  std::map<std::string, TensorRange> ranges;
  if (!samples.empty()) {
    CalibrationRequest request;
    request.tensors = tensors;
    request.method = options.calibration_method;
    request.percentile = options.calibration_percentile;
    request.threads = threads;
    SQ_ASSIGN_OR_RETURN(ranges, CollectRanges(*proto, external, samples, request));
    report->ranges_from = absl::StrCat(
        "calibration: ", samples.size(), " sample", samples.size() == 1 ? "" : "s", ", ",
        options.calibration_method == CalibrationMethod::kPercentile
            ? absl::StrFormat("percentile %g", options.calibration_percentile)
            : std::string("minmax"));
  } else {
    const double k = TailMultiplier(options);
    ranges = EstimateRanges(*graph, options.input_ranges, k, &constants, seeds);
    SQ_RETURN_IF_ERROR(RequireRanges(*graph, tensors, ranges));
    report->ranges_from = absl::StrFormat("data-free estimate (k %.2f)", k);
  }
  SQ_ASSIGN_OR_RETURN(ActivationQdqResult r, InsertActivationQdq(graph, ranges, options.activations, &constants));
  report->quantized_ops = r.quantized_ops;
  report->tensors = r.tensors;
  report->int32_biases = r.int32_biases;
  report->float_biases = r.float_biases;
  report->seconds += Since(start);
  return absl::OkStatus();
}

}  // namespace sq
