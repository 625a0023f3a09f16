#include "core/plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/engine.h"
#include "core/quantizer.h"
#include "core/file_util.h"
#include "core/status_macros.h"
#include "core/transform/budget.h"
#include "core/transform/index_map.h"

namespace sq {

int EffectiveThreads(const QuantizeOptions& options) {
  // Not the node's core count: a container limited to 2 CPUs runs 2 threads.
  return std::max(1, options.threads > 0 ? options.threads : AvailableCpus());
}

namespace {

// Runs fn over [0, n) on `threads` threads (contiguous ranges; results must not depend on
// the cut, which TransformWeight guarantees).
ParallelFor ThreadsFor(int threads) {
  if (threads <= 1) return nullptr;
  return [threads](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    const int used = static_cast<int>(std::min<int64_t>(threads, n));
    std::vector<std::thread> helpers;
    for (int t = 1; t < used; ++t) helpers.emplace_back([&, t] { fn(n * t / used, n * (t + 1) / used); });
    if (used > 0) fn(0, n / used);
    for (auto& h : helpers) h.join();
  };
}

// True when the values along some clustering unit have at least 3 distinct values.
bool AnyUnitHasThreeDistinct(const float* data, const std::vector<int64_t>& shape, int channel_axis,
                             bool per_channel) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  auto three = [](auto&& at, int64_t count) {
    if (count < 3) return false;
    float a = at(0);
    int64_t i = 1;
    while (i < count && at(i) == a) ++i;
    if (i == count) return false;
    float b = at(i);
    for (; i < count; ++i) {
      float v = at(i);
      if (v != a && v != b) return true;
    }
    return false;
  };
  if (!per_channel) return three([&](int64_t i) { return data[i]; }, n);
  int64_t channels = shape[channel_axis], inner = 1, outer = 1;
  for (size_t a = channel_axis + 1; a < shape.size(); ++a) inner *= shape[a];
  for (int a = 0; a < channel_axis; ++a) outer *= shape[a];
  for (int64_t c = 0; c < channels; ++c) {
    auto at = [&](int64_t i) {
      int64_t o = i / inner, r = i % inner;
      return data[(o * channels + c) * inner + r];
    };
    if (three(at, outer * inner)) return true;
  }
  return false;
}


std::string Plural(size_t n, const char* word) { return absl::StrCat(n, " ", word, n == 1 ? "" : "s"); }

struct SplitGain {
  double plain_db = 0, split_db = 0;
};

// --split auto: the layer's weight SQNR plain and split under its options, by a dry run of
// the transform that writes nothing.
absl::StatusOr<SplitGain> MeasureSplitGain(const FloatTensor& w, const WeightGroup& g,
                                           const QuantizeOptions& options, int threads) {
  TransformConfig c = LayerTransformConfig(g, options, /*split=*/true, nullptr);
  c.encoding = WeightEncoding::kDequantizedSum;
  c.compute_plain_error = true;
  WeightView view;
  view.data = w.data;
  view.shape = g.shape;
  view.channel_axis = g.channel_axis;
  view.reduction_axis = g.reduction_axis;
  auto r = TransformWeight(view, c, [](int, int64_t, const uint8_t*, size_t) {}, ThreadsFor(threads));
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat("layer weight '", g.weight_name, "': ",
                                                        r.status().message()));
  }
  return SplitGain{SqnrDb(r->signal_energy, r->plain_error_energy),
                   SqnrDb(r->signal_energy, r->split_error_energy)};
}

// --bpw-budget's sensitivity: the mean over output channels of each channel's relative
// weight error with `options`, split or plain, by a dry run of the transform: the error
// energy over the channel's typical weight energy (size x median |w|^2). Per channel, not
// per tensor: a channel is a feature the next layers see (normalised, often), so a
// small-magnitude channel quantized to noise hurts as much as a large one, which a
// tensor-wide ratio would hide. Channels whose median weight is 0 do not count.
absl::StatusOr<double> MeanChannelRelativeError(const FloatTensor& w, const WeightGroup& g,
                                                const QuantizeOptions& options, int threads,
                                                bool split) {
  TransformConfig c = LayerTransformConfig(g, options, split, nullptr);
  c.encoding = WeightEncoding::kDequantizedSum;
  // Ranked on round-to-nearest's error: balanced rounding (applied in the real transform)
  // raises the weight error while it lowers the outputs', which this proxy cannot see
  // (ranked with it, the 7-bpw budget fell from 75.0 to 53.7 % exact; ranked without and
  // applied after, 85.0 %).
  c.balanced_rounding = false;
  const AxisSplit ax = SplitAround(g.shape, g.channel_axis);
  // Each channel's typical weight energy: its median |w|, squared, times its size. Robust
  // to outliers: a channel whose bulk is rounded away by an outlier-stretched range shows
  // an error comparable to its typical weights, where an energy ratio would call it small.
  std::vector<double> signal(static_cast<size_t>(ax.D), 0.0), error(static_cast<size_t>(ax.D), 0.0);
  {
    std::vector<float> values(static_cast<size_t>(ax.O * ax.I));
    for (int64_t d = 0; d < ax.D; ++d) {
      size_t k = 0;
      for (int64_t o = 0; o < ax.O; ++o) {
        const float* row = w.data + (o * ax.D + d) * ax.I;
        for (int64_t i = 0; i < ax.I; ++i) values[k++] = std::fabs(row[i]);
      }
      std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
      const double median = values[values.size() / 2];
      signal[d] = median * median * static_cast<double>(values.size());
    }
  }
  std::mutex mu;
  auto sink = [&](int, int64_t offset, const uint8_t* data, size_t size) {
    std::vector<double> local(static_cast<size_t>(ax.D), 0.0);
    const int64_t e0 = offset / 4;
    const int64_t count = static_cast<int64_t>(size / 4);
    for (int64_t k = 0; k < count; ++k) {
      float v;
      std::memcpy(&v, data + 4 * k, 4);
      const double d = static_cast<double>(w.data[e0 + k]) - v;
      local[((e0 + k) / ax.I) % ax.D] += d * d;
    }
    std::lock_guard<std::mutex> lock(mu);
    for (size_t ch = 0; ch < local.size(); ++ch) error[ch] += local[ch];
  };
  WeightView view{w.data, g.shape, g.channel_axis, g.reduction_axis};
  auto r = TransformWeight(view, c, sink, ThreadsFor(threads));
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat("layer weight '", g.weight_name, "': ",
                                                        r.status().message()));
  }
  double sum = 0;
  int64_t live = 0;
  for (size_t ch = 0; ch < signal.size(); ++ch) {
    if (signal[ch] <= 0) continue;
    sum += error[ch] / signal[ch];
    ++live;
  }
  return live > 0 ? sum / live : 0.0;
}

// Stage "plan", --bpw-budget: every layer's bits and split (core/transform/budget.h), from
// dry runs of the transform at 2, 3, 4 and 8 bits (the mean channel relative weight error,
// plain and split) and the bytes each choice stores in the target's form (LayerStoredBytes). Layers
// with a --layer override keep its settings and count against the budget. Fills the
// report's sensitivity listing.
absl::Status ChooseUnderBudget(LoadedModel& model, std::vector<GroupPlan>& plans,
                               const QuantizeOptions& options, const StoragePlan& storage,
                               int threads, ModelReport* report) {
  std::vector<BudgetLayer> layers;
  for (GroupPlan& p : plans) {
    WeightGroup& g = *p.group;
    const bool fixed = p.settings.override_index >= 0;
    g.cluster_per_channel = ClusterPerChannel(options, p.settings.granularity, g.op_type);
    SQ_ASSIGN_OR_RETURN(FloatTensor w, ReadFloatTensor(model, *g.weight.tensor));
    const bool splittable = g.shape[g.channel_axis] >= 3 &&
                            AnyUnitHasThreeDistinct(w.data, g.shape, g.channel_axis, g.cluster_per_channel);
    const SplitMode mode = fixed ? p.settings.split : options.split;
    std::vector<bool> splits;
    // The budget weighs split against plain unless told split off; a --layer override's
    // split on stays on.
    if (!fixed || mode != SplitMode::kOn || !splittable) splits.push_back(false);
    if (mode != SplitMode::kOff && splittable) splits.push_back(true);
    BudgetLayer bl;
    bl.elements = NumElements(g.shape);
    SensitivityEntry sens;
    sens.layer = g.uses[0].display_name;
    sens.elements = bl.elements;
    // Per-tensor parameters as well as the layer's own where those cost more than a bit
    // per weight (e.g. per-channel on a depthwise conv: 5 bytes per 9 weights).
    std::vector<bool> tensor_choices = {false};
    if (!fixed && p.settings.granularity != Granularity::kTensor &&
        LayerStoredBytes(g, OptionsForLayer(options, p.settings), false, storage) >
            (PackedBytes(bl.elements, 4) + bl.elements / 8)) {
      tensor_choices.push_back(true);
    }
    for (bool per_tensor : tensor_choices)
    for (int bits : fixed ? std::vector<int>{p.settings.bits} : std::vector<int>{2, 3, 4, 8}) {
      LayerSettings s = p.settings;
      s.bits = bits;
      if (per_tensor) s.granularity = Granularity::kTensor;
      const QuantizeOptions lo = OptionsForLayer(options, s);
      g.cluster_per_channel = ClusterPerChannel(options, s.granularity, g.op_type);
      StoragePlan ls = storage;
      if (options.target == Target::kQdq) {
        QuantizeOptions at_opset = lo;
        at_opset.target_opset = storage.opset;
        SQ_ASSIGN_OR_RETURN(ls, ChooseStorage(at_opset, report->input_opset));
      }
      double best = 1e300;
      for (bool split : splits) {
        SQ_ASSIGN_OR_RETURN(const double rel, MeanChannelRelativeError(w, g, lo, threads, split));
        best = std::min(best, rel);
        bl.candidates.push_back({bits, split, LayerStoredBytes(g, lo, split, ls), rel, per_tensor});
      }
      if (!per_tensor) sens.rel_error_at_bits.push_back({bits, best});
    }
    w.ReleasePages();
    layers.push_back(std::move(bl));
    report->sensitivity.push_back(std::move(sens));
  }
  SQ_ASSIGN_OR_RETURN(BudgetChoice choice, AllocateUnderBudget(layers, options.bpw_budget));
  for (size_t i = 0; i < plans.size(); ++i) {
    const BudgetCandidate& c = layers[i].candidates[choice.candidate[i]];
    GroupPlan& p = plans[i];
    p.settings.bits = c.bits;
    p.settings.split = c.split ? SplitMode::kOn : SplitMode::kOff;
    if (c.per_tensor) p.settings.granularity = Granularity::kTensor;
    p.budget_bytes = c.bytes;
    p.split_decision = absl::StrFormat(
        "budget: %d bits%s, split %s (relative weight error %.3g, %.2f stored bits per weight)%s",
        c.bits, c.per_tensor ? " per tensor" : "", c.split ? "on" : "off", c.rel_error,
        static_cast<double>(c.bytes) * 8 / static_cast<double>(layers[i].elements),
        p.settings.override_index >= 0 ? ", fixed by --layer" : "");
    report->sensitivity[i].chosen_bits = c.bits;
    report->sensitivity[i].chosen_split = c.split;
  }
  // Most sensitive first: by the relative error at the fewest bits measured.
  std::stable_sort(report->sensitivity.begin(), report->sensitivity.end(),
                   [](const SensitivityEntry& a, const SensitivityEntry& b) {
                     return a.rel_error_at_bits.front().second > b.rel_error_at_bits.front().second;
                   });
  return absl::OkStatus();
}

// Stage "plan": one GroupPlan per selected layer, with the layer's own settings (global
// options or its --layer override), its code container, the split decision (for --split
// auto, measured by a dry run) and its output tensors and node edits, applied to the graph.
// InvalidArgument when nothing is quantizable. `editor` (on the model's proto) must outlive
// the transform: it keeps the weights it takes out of the graph alive for it.
}  // namespace

absl::StatusOr<std::vector<GroupPlan>> PlanLayers(LoadedModel& model,
                                                  std::vector<WeightGroup>& groups,
                                                  const QuantizeOptions& options,
                                                  const StoragePlan& storage,
                                                  GraphEditor& editor, ModelReport* report) {
  std::vector<GroupPlan> plans;
  for (auto& g : groups) {
    if (!g.selected) continue;
    GroupPlan p;
    p.group = &g;
    plans.push_back(p);
  }
  if (plans.empty()) {
    std::string why = groups.empty()
                          ? "the model has no MatMul/Gemm/Conv/ConvTranspose with a constant weight and no constant Gather table"
                          : absl::StrCat(Plural(groups.size(), "candidate layer"),
                                         " found, all skipped (first: ", groups[0].skip_reason, ")");
    return absl::InvalidArgumentError(absl::StrCat("no quantizable layer: ", why));
  }

  // Split feasibility needs a peek at the values (3 distinct values in some unit).
  auto bias_reader = [&](const onnx::TensorProto& t) -> absl::StatusOr<std::vector<float>> {
    SQ_ASSIGN_OR_RETURN(FloatTensor f, ReadFloatTensor(model, t));
    std::vector<float> v(f.data, f.data + f.size);
    f.ReleasePages();
    return v;
  };
  const int threads = EffectiveThreads(options);
  // The layer's own settings (global options, or the first matching --layer override), or
  // what the size budget chose.
  for (GroupPlan& p : plans) p.settings = SettingsForLayer(options, p.group->uses[0].display_name);
  if (options.bpw_budget > 0) {
    SQ_RETURN_IF_ERROR(ChooseUnderBudget(model, plans, options, storage, threads, report));
  }
  std::set<std::string> storage_notes;
  for (GroupPlan& p : plans) {
    WeightGroup& g = *p.group;
    const QuantizeOptions layer_options = OptionsForLayer(options, p.settings);
    g.cluster_per_channel = ClusterPerChannel(options, p.settings.granularity, g.op_type);
    StoragePlan layer_storage = storage;
    if (options.format == OutputFormat::kQdq) {
      QuantizeOptions at_opset = layer_options;
      at_opset.target_opset = storage.opset;
      SQ_ASSIGN_OR_RETURN(layer_storage, ChooseStorage(at_opset, report->input_opset));
      if (!layer_storage.note.empty()) storage_notes.insert(layer_storage.note);
    }
    if (p.settings.split == SplitMode::kOff) {
      p.split = false;
      p.not_split_reason = p.split_decision.empty() ? "split off" : p.split_decision;
    } else if (g.shape[g.channel_axis] < 3) {
      p.not_split_reason = "fewer than 3 output channels";
    } else {
      SQ_ASSIGN_OR_RETURN(FloatTensor w, ReadFloatTensor(model, *g.weight.tensor));
      p.split = AnyUnitHasThreeDistinct(w.data, g.shape, g.channel_axis, g.cluster_per_channel);
      if (!p.split) p.not_split_reason = "fewer than 3 distinct values";
      if (p.split && p.settings.split == SplitMode::kAuto) {
        SQ_ASSIGN_OR_RETURN(SplitGain gain, MeasureSplitGain(w, g, layer_options, threads));
        p.auto_gain_db = gain.split_db - gain.plain_db;
        p.split = p.auto_gain_db >= kAutoSplitMinGainDb;
        p.split_decision = absl::StrFormat(
            "auto: split SQNR %.1f dB vs plain %.1f dB, gain %.1f dB %s %.2f dB", gain.split_db,
            gain.plain_db, p.auto_gain_db, p.split ? ">=" : "<", kAutoSplitMinGainDb);
        if (!p.split) p.not_split_reason = p.split_decision;
      }
      w.ReleasePages();
    }
    SQ_RETURN_IF_ERROR(editor.PlanGroup(&p, layer_options, layer_storage, bias_reader));
    if (p.budget_bytes >= 0) {
      // The budget is only as honest as the allocator's size model: hold it to the plan.
      int64_t planned = 0;
      for (const auto& tb : p.tensor_bytes) planned += tb.second;
      if (planned != p.budget_bytes) {
        return absl::InternalError(absl::StrCat("--bpw-budget: layer '", g.uses[0].display_name, "' was counted at ",
                                                p.budget_bytes, " bytes but stores ", planned));
      }
    }
  }
  for (const std::string& note : storage_notes) report->warnings.push_back(note);
  SQ_RETURN_IF_ERROR(editor.ApplyGraphEdits());
  return plans;
}

}  // namespace sq
