#include "core/engine.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/file_util.h"
#include "core/layers.h"
#include "core/model_io.h"
#include "core/opset_convert.h"
#include "core/quantizer.h"
#include "core/rewrite.h"
#include "core/status_macros.h"
#include "core/transform/budget.h"
#include "core/transform/index_map.h"
#include "core/validate.h"
#include "core/weight_transform.h"

namespace sq {
namespace {

// Above this many bytes of tensor data the output uses an external data file: protobuf
// cannot serialise a message of 2 GB or more, and the rest of the proto needs room.
constexpr int64_t kInlineLimitBytes = (int64_t{2} << 30) - (int64_t{128} << 20);
// An input with external data keeps an external output above this size.
constexpr int64_t kKeepExternalBytes = int64_t{64} << 20;
// Mapped weights larger than this are handed back to the kernel piece by piece while a
// pass runs (bounding memory); smaller ones when their transform is done.
constexpr int64_t kReleasePiecesAboveBytes = int64_t{256} << 20;
// Re-encoded layers buffering more codes than this run one at a time (see the workers).
constexpr int64_t kSerialReencodeAboveBytes = int64_t{128} << 20;
// In external mode, tensors at least this large go to the data file.
constexpr int64_t kExternalMinBytes = 1024;

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

int64_t NumElementsOf(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// Where a tensor's bytes go in the output.
struct TensorSlot {
  onnx::TensorProto* tensor = nullptr;
  int64_t offset = -1;  // in the external data file; -1 = inline raw_data
  int64_t size = 0;
};

struct CopyJob {  // an existing tensor's bytes that move to the output's data file
  ExternalLocation from;  // when the tensor was external
  std::string inline_bytes;
  int64_t offset = 0, size = 0;
};

void SetExternal(onnx::TensorProto* t, const std::string& location, int64_t offset, int64_t size) {
  t->clear_raw_data();
  t->clear_float_data();
  t->clear_int32_data();
  t->clear_int64_data();
  t->clear_double_data();
  t->clear_uint64_data();
  t->clear_external_data();
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto add = [&](const char* k, const std::string& v) {
    auto* e = t->add_external_data();
    e->set_key(k);
    e->set_value(v);
  };
  add("location", location);
  add("offset", std::to_string(offset));
  add("length", std::to_string(size));
}

// Raw little-endian bytes of an inline tensor, whichever field holds them.
std::string InlineBytes(const onnx::TensorProto& t) {
  if (t.has_raw_data()) return t.raw_data();
  auto dump = [](const auto& field, size_t elem, auto convert) {
    std::string out(field.size() * elem, '\0');
    for (int i = 0; i < field.size(); ++i) {
      auto v = convert(field.Get(i));
      std::memcpy(&out[i * elem], &v, elem);
    }
    return out;
  };
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT:
      return dump(t.float_data(), 4, [](float v) { return v; });
    case onnx::TensorProto::DOUBLE:
      return dump(t.double_data(), 8, [](double v) { return v; });
    case onnx::TensorProto::INT64:
      return dump(t.int64_data(), 8, [](int64_t v) { return v; });
    case onnx::TensorProto::UINT64:
    case onnx::TensorProto::UINT32:
      return dump(t.uint64_data(), t.data_type() == onnx::TensorProto::UINT64 ? 8 : 4,
                  [](uint64_t v) { return v; });
    case onnx::TensorProto::INT32:
      return dump(t.int32_data(), 4, [](int32_t v) { return v; });
    case onnx::TensorProto::INT16:
    case onnx::TensorProto::UINT16:
    case onnx::TensorProto::FLOAT16:
    case onnx::TensorProto::BFLOAT16:
      return dump(t.int32_data(), 2, [](int32_t v) { return static_cast<uint16_t>(v); });
    case onnx::TensorProto::INT8:
    case onnx::TensorProto::UINT8:
    case onnx::TensorProto::BOOL:
      return dump(t.int32_data(), 1, [](int32_t v) { return static_cast<uint8_t>(v); });
    default:
      return "";
  }
}

void CollectInitializers(onnx::GraphProto* g, std::vector<onnx::TensorProto*>* out) {
  for (auto& t : *g->mutable_initializer()) out->push_back(&t);
  for (auto& n : *g->mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) CollectInitializers(a.mutable_g(), out);
      for (auto& sg : *a.mutable_graphs()) CollectInitializers(&sg, out);
    }
  }
}

std::string Plural(size_t n, const char* word) { return absl::StrCat(n, " ", word, n == 1 ? "" : "s"); }

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

int EffectiveThreads(const QuantizeOptions& options) {
  return std::max(1, options.threads > 0 ? options.threads
                                         : static_cast<int>(std::thread::hardware_concurrency()));
}

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
    bl.elements = NumElementsOf(g.shape);
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

// Whether a layer's codes are re-encoded after the transform (compact and kernel forms)
// rather than written as the transform emits them.
bool IsReencoded(LayerForm f) {
  return f == LayerForm::kCompact || f == LayerForm::kNBits || f == LayerForm::kNBitsOuter8 ||
         f == LayerForm::kGather || f == LayerForm::kGatherOuter8;
}

// Stage "transform", compact and MatMulNBits layers: the branches' codes (packed in their
// container) re-encoded (core/transform/encode.h) and written with their parameters.
// outer8 layers are re-quantized (QuantizeOuterAt8) from the FP32 `values`, and their
// error energy in `r` updated to what the artifact holds.
// Buffers are freed as soon as they are encoded; `release` hands back pages of `values`.
template <typename WriteBytes>
absl::Status WriteReencoded(const GroupPlan& p, const float* values, TransformResult& r,
                            std::array<std::vector<uint8_t>, 3>& codes, const ReleaseFn& release,
                            const WriteBytes& write_bytes) {
  const QuantSpec& spec = p.config.spec;
  const int cb = p.config.storage_bits;
  auto free_buffer = [](std::vector<uint8_t>& v) { std::vector<uint8_t>().swap(v); };
  const std::string& name = p.group->weight_name;
  // One low-bit kernel's tensors (MatMulNBits or GatherBlockQuantized) into plan slot `slot`.
  const bool gather = p.form == LayerForm::kGather || p.form == LayerForm::kGatherOuter8;
  auto write_kernel = [&](int slot, const std::vector<uint8_t>& data, const std::vector<float>& scales,
                          const std::vector<uint8_t>& zero_points) -> absl::Status {
    SQ_RETURN_IF_ERROR(write_bytes(p.data[slot], 0, data.data(), data.size()));
    SQ_RETURN_IF_ERROR(write_bytes(p.scale[slot], 0, scales.data(), scales.size() * 4));
    return write_bytes(p.zero_point[slot], 0, zero_points.data(), zero_points.size());
  };
  auto failed = [&](const absl::Status& s) {
    return absl::InternalError(absl::StrCat("weight '", name, "': ", s.message()));
  };
  auto encode_kernel = [&](int slot, const uint8_t* c, const BranchParams& params,
                           const QuantSpec& s, int code_bits) -> absl::Status {
    if (gather) {
      auto e = EncodeGatherBlockQuantized(c, params, p.layout, s, code_bits);
      if (!e.ok()) return failed(e.status());
      return write_kernel(slot, e->data, e->scales, e->zero_points);
    }
    auto e = EncodeMatMulNBits(c, params, p.layout, s, code_bits);
    if (!e.ok()) return failed(e.status());
    return write_kernel(slot, e->b, e->scales, e->zero_points);
  };
  if (p.form == LayerForm::kNBitsOuter8 || p.form == LayerForm::kGatherOuter8) {
    std::vector<const uint8_t*> branch_codes = {codes[0].data(), codes[1].data(), codes[2].data()};
    auto outer = QuantizeOuterAt8(values, branch_codes, r, p.layout, spec.symmetric, cb, release);
    if (!outer.ok()) return failed(outer.status());
    free_buffer(codes[0]);
    free_buffer(codes[2]);
    SQ_RETURN_IF_ERROR(encode_kernel(0, codes[1].data(), r.params[1], spec, cb));
    free_buffer(codes[1]);
    if (gather) {
      auto e = EncodeGatherBlockQuantized8(std::move(outer->codes), outer->params, p.layout, spec.symmetric);
      if (!e.ok()) return failed(e.status());
      SQ_RETURN_IF_ERROR(write_kernel(1, e->data, e->scales, e->zero_points));
    } else {
      SQ_RETURN_IF_ERROR(encode_kernel(1, outer->codes.data(), outer->params, QuantSpec{8, spec.symmetric}, 8));
    }
    free_buffer(outer->codes);
    r.split_error_energy = outer->error_energy;
    return absl::OkStatus();
  }
  if (p.form == LayerForm::kNBits || p.form == LayerForm::kGather) {
    for (int b = 0; b < p.num_branches; ++b) {
      SQ_RETURN_IF_ERROR(encode_kernel(b, codes[b].data(), r.params[b], spec, cb));
      free_buffer(codes[b]);
    }
    return absl::OkStatus();
  }
  std::vector<const uint8_t*> branch_codes;
  for (int b = 0; b < p.num_branches; ++b) branch_codes.push_back(codes[b].data());
  auto e = EncodeCompact(branch_codes, r, p.layout, spec, CompactContainerBits(spec.bits), cb);
  for (auto& c : codes) free_buffer(c);
  if (!e.ok()) return absl::InternalError(absl::StrCat("weight '", name, "': ", e.status().message()));
  SQ_RETURN_IF_ERROR(write_bytes(p.data[0], 0, e->codes.data(), e->codes.size()));
  if (p.ids) SQ_RETURN_IF_ERROR(write_bytes(p.ids, 0, e->ids.data(), e->ids.size()));
  for (int b = 0; b < p.num_branches; ++b) {
    SQ_RETURN_IF_ERROR(write_bytes(p.scale[b], 0, r.params[b].scales.data(), r.params[b].scales.size() * 4));
    SQ_RETURN_IF_ERROR(write_bytes(p.zero_point[b], 0, e->zero_points[b].data(), e->zero_points[b].size()));
  }
  return absl::OkStatus();
}

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
    l.bytes_before = NumElementsOf(g.shape) * 4;
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
    const double n = static_cast<double>(NumElementsOf(g.shape));
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
      quantized_elements += NumElementsOf(g.shape);
    }
    l.bias_split = p.bias_split;
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

}  // namespace

const char* Version() { return SQ_VERSION; }

absl::StatusOr<ModelReport> QuantizeModelFile(const std::string& input_path,
                                              const std::string& output_path,
                                              const QuantizeOptions& options,
                                              const RunHooks& hooks) {
  const auto run_start = std::chrono::steady_clock::now();
  ModelReport report;
  report.tool_version = Version();
  report.input_path = input_path;
  report.output_path = output_path;
  report.options = options;
  SQ_RETURN_IF_ERROR(ValidateOptions(options));
  if (output_path.empty()) return absl::InvalidArgumentError("no output path given");
  {
    // The same file under another spelling (./m.onnx, a link) counts as the same path.
    std::error_code ec;
    if (output_path == input_path || std::filesystem::equivalent(input_path, output_path, ec)) {
      return absl::InvalidArgumentError("the output path is the input path; refusing to overwrite the input");
    }
  }
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
  clock.Mark("load");
  if (cancelled()) return kCancelled;

  // --- opset conversion (qdq only) ------------------------------------------------------
  StoragePlan storage;
  if (options.format == OutputFormat::kQdq) {
    // Under a size budget any layer may get 4 bits: the opset that packs INT4.
    QuantizeOptions storage_options = options;
    if (options.bpw_budget > 0) storage_options.bits = 4;
    SQ_ASSIGN_OR_RETURN(storage, ChooseModelStorage(storage_options, report.input_opset));
    if (storage.opset > report.input_opset) {
      progress("convert");
      absl::Status s = ConvertOpset(&proto, storage.opset);
      if (!s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cannot bring the model from opset ", report.input_opset, " to opset ", storage.opset,
            " needed by target ", ToString(options.target), ": ", s.message(),
            ". Use --format fake or --format split, which keep the model's opset"));
      }
    }
    if (proto.ir_version() < storage.ir_version) proto.set_ir_version(storage.ir_version);
    clock.Mark("convert");
  }
  report.output_opset = DefaultDomainOpset(proto);

  // --- discovery ----------------------------------------------------------------------
  progress("discover");
  SQ_ASSIGN_OR_RETURN(std::vector<WeightGroup> groups, DiscoverLayers(&proto, options));
  report.layers_found = static_cast<int>(groups.size());
  GraphEditor editor(&proto);
  SQ_ASSIGN_OR_RETURN(std::vector<GroupPlan> plans,
                      PlanLayers(*model, groups, options, storage, editor, &report));
  clock.Mark("discover");
  if (cancelled()) return kCancelled;

  // --- layout -------------------------------------------------------------------------
  std::map<const onnx::TensorProto*, TensorSlot> slots;
  for (GroupPlan& p : plans) {
    for (const auto& [t, bytes] : p.tensor_bytes) slots[t] = {t, -1, bytes};
  }
  std::vector<onnx::TensorProto*> all;
  CollectInitializers(proto.mutable_graph(), &all);
  int64_t total = 0;
  for (onnx::TensorProto* t : all) {
    auto it = slots.find(t);
    total += it != slots.end() ? it->second.size : TensorDataBytes(*t);
  }
  // A model that came with external data keeps it when large: pulling gigabytes into the
  // proto would cost memory and a slow serialisation for nothing.
  const bool external = options.external_data || total > kInlineLimitBytes ||
                        (model->uses_external_data() && total > kKeepExternalBytes);
  const std::string data_name = BaseName(output_path) + ".data";
  const std::string data_path = absl::StrCat(DirName(output_path), "/", data_name);
  std::unique_ptr<AtomicFile> data_file;
  std::vector<CopyJob> copies;
  if (external) {
    SQ_ASSIGN_OR_RETURN(data_file, AtomicFile::Create(data_path));
    int64_t offset = 0;
    for (onnx::TensorProto* t : all) {
      auto it = slots.find(t);
      int64_t size = it != slots.end() ? it->second.size : TensorDataBytes(*t);
      if (size < kExternalMinBytes && it == slots.end()) {
        // Small existing tensors stay inline; pull them in if they were external.
        if (IsExternal(*t)) {
          SQ_ASSIGN_OR_RETURN(ExternalLocation loc, model->ExternalLocationOf(*t));
          SQ_ASSIGN_OR_RETURN(const MappedFile* map, model->Map(loc.path));
          std::string bytes(reinterpret_cast<const char*>(map->data() + loc.offset), loc.length);
          t->clear_external_data();
          t->set_data_location(onnx::TensorProto::DEFAULT);
          t->set_raw_data(std::move(bytes));
        }
        continue;
      }
      const int64_t align = size >= (64 << 10) ? 4096 : 64;
      offset = (offset + align - 1) / align * align;
      if (it != slots.end()) {
        it->second.offset = offset;
      } else {
        CopyJob job;
        job.offset = offset;
        job.size = size;
        if (IsExternal(*t)) {
          SQ_ASSIGN_OR_RETURN(job.from, model->ExternalLocationOf(*t));
        } else {
          job.inline_bytes = InlineBytes(*t);
          job.size = static_cast<int64_t>(job.inline_bytes.size());
        }
        copies.push_back(std::move(job));
      }
      SetExternal(t, data_name, offset, size);
      offset += size;
    }
    SQ_RETURN_IF_ERROR(data_file->Truncate(offset));
  } else {
    for (onnx::TensorProto* t : all) {
      auto it = slots.find(t);
      if (it != slots.end()) {
        t->mutable_raw_data()->assign(static_cast<size_t>(it->second.size), '\0');
      } else if (IsExternal(*t)) {
        SQ_ASSIGN_OR_RETURN(ExternalLocation loc, model->ExternalLocationOf(*t));
        SQ_ASSIGN_OR_RETURN(const MappedFile* map, model->Map(loc.path));
        std::string bytes(reinterpret_cast<const char*>(map->data() + loc.offset), loc.length);
        map->Release(loc.offset, loc.length);
        t->clear_external_data();
        t->set_data_location(onnx::TensorProto::DEFAULT);
        t->set_raw_data(std::move(bytes));
      }
    }
  }
  clock.Mark("layout");

  // --- transform, in parallel -----------------------------------------------------------
  // Tasks: one per weight group (largest first, so the big ones do not trail) plus the
  // copies of untouched tensors. Every byte has a precomputed place, so the output does
  // not depend on which thread runs what.
  struct Task {
    int plan = -1, copy = -1;
    int64_t cost = 0;
  };
  std::vector<Task> tasks;
  for (size_t i = 0; i < plans.size(); ++i) {
    tasks.push_back({static_cast<int>(i), -1, NumElementsOf(plans[i].group->shape) * 4});
  }
  for (size_t i = 0; i < copies.size(); ++i) tasks.push_back({-1, static_cast<int>(i), copies[i].size / 8});
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });

  const int threads = EffectiveThreads(options);
  int64_t total_weight_elements = 0;
  for (const GroupPlan& p : plans) total_weight_elements += NumElementsOf(p.group->shape);
  std::vector<TransformResult> results(plans.size());
  std::vector<absl::Status> plan_status(plans.size());
  std::vector<absl::Status> copy_status(copies.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::mutex big_layer_mu;  // held by a layer buffering > kSerialReencodeAboveBytes of codes
  std::condition_variable cv;
  std::vector<int> finished;  // plan indices, in completion order
  size_t done_tasks = 0;

  auto write_bytes = [&](onnx::TensorProto* t, int64_t offset, const void* data, size_t size) -> absl::Status {
    const TensorSlot& slot = slots.at(t);
    if (offset < 0 || offset + static_cast<int64_t>(size) > slot.size) {
      return absl::InternalError(absl::StrCat("write past the end of tensor '", t->name(), "'"));
    }
    if (slot.offset < 0) {
      std::memcpy(&(*t->mutable_raw_data())[offset], data, size);
      return absl::OkStatus();
    }
    return data_file->WriteAt(slot.offset + offset, data, size);
  };

  auto run_plan = [&](int i) -> absl::Status {
    GroupPlan& p = plans[i];
    SQ_ASSIGN_OR_RETURN(FloatTensor w, ReadFloatTensor(*model, *p.group->weight.tensor));
    WeightView view;
    view.data = w.data;
    view.shape = p.group->shape;
    view.channel_axis = p.group->channel_axis;
    view.reduction_axis = p.group->reduction_axis;
    absl::Status sink_status;
    // Compact and MatMulNBits layers are re-encoded from the branches' codes, which are
    // collected here first (packed in their 2/4/8-bit container, per branch).
    const bool reencode = IsReencoded(p.form);
    std::array<std::vector<uint8_t>, 3> codes;
    if (reencode) {
      for (int b = 0; b < p.num_branches; ++b) {
        codes[b].resize(static_cast<size_t>(PackedBytes(NumElementsOf(p.group->shape), p.config.storage_bits)));
      }
    }
    auto sink = [&](int branch, int64_t offset, const uint8_t* data, size_t size) {
      if (!sink_status.ok()) return;
      if (branch < 0 || branch > 2 || (reencode ? branch >= p.num_branches : p.data[branch] == nullptr)) {
        sink_status = absl::InternalError(absl::StrCat("transform emitted unexpected branch ", branch));
        return;
      }
      if (reencode) {
        if (offset < 0 || offset + static_cast<int64_t>(size) > static_cast<int64_t>(codes[branch].size())) {
          sink_status = absl::InternalError("transform wrote past the end of a branch");
          return;
        }
        std::memcpy(codes[branch].data() + offset, data, size);
        return;
      }
      sink_status = write_bytes(p.data[branch], offset, data, size);
    };
    // A tensor bigger than a fair share of the work would trail behind the others: cut its
    // passes across extra threads (the output does not depend on how they are cut). A
    // memory-mapped tensor is walked in ~32 MB pieces whose pages are handed back after
    // each piece, so even a 1 GB weight never sits in memory whole. Smaller tensors stay
    // mapped until they are done: re-faulting their pages on every pass costs more.
    const int64_t numel = NumElementsOf(p.group->shape);
    const bool release_pieces = w.mapping != nullptr && numel * 4 > kReleasePiecesAboveBytes;
    const int parts =
        threads > 1 && numel * threads > 2 * total_weight_elements ? threads : 1;
    ParallelFor parallel;
    if (parts > 1 || release_pieces) {
      parallel = [parts, numel, release_pieces, &w](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
        if (n <= 0) return;
        const int64_t per_chunk = std::max<int64_t>(1, numel / n);
        const int64_t piece = std::max<int64_t>(1, (int64_t{8} << 20) / per_chunk);
        auto run = [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; b += piece) {
            int64_t e = std::min(end, b + piece);
            fn(b, e);
            if (release_pieces) {
              w.mapping->Release(w.mapping_offset + b * per_chunk * 4, (e - b) * per_chunk * 4);
            }
          }
        };
        int used = static_cast<int>(std::min<int64_t>(parts, n));
        std::vector<std::thread> helpers;
        for (int t = 1; t < used; ++t) {
          helpers.emplace_back([&, t] { run(n * t / used, n * (t + 1) / used); });
        }
        run(0, n / used);
        for (auto& h : helpers) h.join();
      };
    }
    auto result = TransformWeight(view, p.config, sink, parallel);
    absl::Cleanup release = [&w] { w.ReleasePages(); };
    if (!result.ok()) {
      return absl::Status(result.status().code(),
                          absl::StrCat("layer weight '", p.group->weight_name, "': ", result.status().message()));
    }
    SQ_RETURN_IF_ERROR(sink_status);
    int expected = p.config.encoding == WeightEncoding::kDequantizedSum ? 1 : p.num_branches;
    if (result->num_branches != p.num_branches) {
      return absl::InternalError(absl::StrCat("weight '", p.group->weight_name, "': planned ",
                                              p.num_branches, " branches, transform made ",
                                              result->num_branches));
    }
    if (reencode) {
      ReleaseFn release;
      if (w.mapping != nullptr) {
        release = [&w](int64_t begin, int64_t end) {
          w.mapping->Release(w.mapping_offset + begin * 4, (end - begin) * 4);
        };
      }
      SQ_RETURN_IF_ERROR(WriteReencoded(p, w.data, *result, codes, release, write_bytes));
    } else if (p.scale[0] != nullptr) {
      for (int b = 0; b < expected; ++b) {
        const BranchParams& bp = result->params[b];
        int64_t count = NumElementsOf(p.param_shape);
        if (static_cast<int64_t>(bp.scales.size()) != count ||
            static_cast<int64_t>(bp.zero_points.size()) != count) {
          return absl::InternalError(absl::StrCat("weight '", p.group->weight_name,
                                                  "': parameter count mismatch"));
        }
        SQ_RETURN_IF_ERROR(write_bytes(p.scale[b], 0, bp.scales.data(), bp.scales.size() * 4));
        std::string zp(static_cast<size_t>(PackedBytes(count, p.config.storage_bits)), '\0');
        PackCodes(bp.zero_points, p.config.storage_bits, reinterpret_cast<uint8_t*>(&zp[0]));
        SQ_RETURN_IF_ERROR(write_bytes(p.zero_point[b], 0, zp.data(), zp.size()));
      }
    }
    results[i] = *std::move(result);
    return absl::OkStatus();
  };

  auto run_copy = [&](int i) -> absl::Status {
    CopyJob& c = copies[i];
    if (!c.inline_bytes.empty()) return data_file->WriteAt(c.offset, c.inline_bytes.data(), c.inline_bytes.size());
    SQ_ASSIGN_OR_RETURN(const MappedFile* map, model->Map(c.from.path));
    // Stream through the mapping in pieces, handing pages back as we go.
    constexpr int64_t kPiece = 16 << 20;
    for (int64_t done = 0; done < c.size; done += kPiece) {
      int64_t n = std::min(kPiece, c.size - done);
      SQ_RETURN_IF_ERROR(data_file->WriteAt(c.offset + done, map->data() + c.from.offset + done, n));
      map->Release(c.from.offset + done, n);
    }
    return absl::OkStatus();
  };

  // Layers whose re-encoding buffers a lot of codes (a 1 GB embedding or lm_head holds
  // ~400 MB of them at 4 bits, split) run one at a time, so that two never peak together:
  // a worker that finds another one running defers it and goes on with the rest.
  auto buffers_much = [&](const Task& t) {
    if (t.plan < 0) return false;
    const GroupPlan& p = plans[t.plan];
    const bool reencode = IsReencoded(p.form);
    return reencode && p.num_branches * PackedBytes(NumElementsOf(p.group->shape), p.config.storage_bits) >
                           kSerialReencodeAboveBytes;
  };
  std::vector<size_t> deferred;  // task indices, under mu
  const int workers = std::min<int>(threads, static_cast<int>(tasks.size()));
  auto worker = [&] {
    while (!stop.load()) {
      size_t k = next.fetch_add(1);
      std::unique_lock<std::mutex> big_layer;
      if (k < tasks.size()) {
        if (buffers_much(tasks[k])) {
          big_layer = std::unique_lock<std::mutex>(big_layer_mu, std::try_to_lock);
          if (!big_layer.owns_lock()) {
            std::lock_guard<std::mutex> lock(mu);
            deferred.push_back(k);
            continue;
          }
        }
      } else {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (deferred.empty()) break;
          k = deferred.front();
          deferred.erase(deferred.begin());
        }
        big_layer = std::unique_lock<std::mutex>(big_layer_mu);
      }
      const Task& t = tasks[k];
      absl::Status s = t.plan >= 0 ? run_plan(t.plan) : run_copy(t.copy);
      if (big_layer.owns_lock()) big_layer.unlock();
      std::lock_guard<std::mutex> lock(mu);
      if (t.plan >= 0) {
        plan_status[t.plan] = s;
        finished.push_back(t.plan);
      } else {
        copy_status[t.copy] = s;
      }
      if (!s.ok()) stop = true;
      ++done_tasks;
      cv.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
  };
  progress("transform", 0, static_cast<int>(plans.size()));
  std::vector<std::thread> pool;
  for (int i = 0; i < workers; ++i) pool.emplace_back(worker);
  {
    size_t reported = 0;
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      cv.wait_for(lock, std::chrono::milliseconds(100));
      while (reported < finished.size()) {
        int i = finished[reported++];
        std::string name = plans[i].group->uses[0].display_name;
        lock.unlock();
        progress("transform", static_cast<int>(reported), static_cast<int>(plans.size()), name);
        lock.lock();
      }
      if (done_tasks == tasks.size() || stop) break;
      lock.unlock();
      bool c = cancelled();
      lock.lock();
      if (c) {
        stop = true;
        break;
      }
    }
  }
  for (auto& t : pool) t.join();
  if (cancelled()) return kCancelled;
  for (const auto& s : plan_status) SQ_RETURN_IF_ERROR(s);
  for (const auto& s : copy_status) SQ_RETURN_IF_ERROR(s);
  if (stop) return kCancelled;
  clock.Mark("transform");

  // --- write --------------------------------------------------------------------------
  progress("write");
  std::string serialized;
  if (!proto.SerializeToString(&serialized)) {
    return absl::InternalError("the output model does not serialise (over 2 GB inline?)");
  }
  SQ_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFile> model_file, AtomicFile::Create(output_path));
  SQ_RETURN_IF_ERROR(model_file->Append(serialized.data(), serialized.size()));
  report.output_bytes = static_cast<int64_t>(serialized.size());
  report.output_sha256 = Sha256Hex(serialized.data(), serialized.size());
  if (data_file) {
    SQ_ASSIGN_OR_RETURN(int64_t data_bytes, FileSize(data_file->temp_path()));
    report.output_bytes += data_bytes;
    report.external_data_path = data_name;
    SQ_ASSIGN_OR_RETURN(report.external_data_sha256, Sha256File(data_file->temp_path()));
    SQ_RETURN_IF_ERROR(data_file->Commit());
  }
  SQ_RETURN_IF_ERROR(model_file->Commit());
  clock.Mark("write");

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
  SQ_ASSIGN_OR_RETURN(std::vector<WeightGroup> groups, DiscoverLayers(&proto, defaults));
  std::map<int, int64_t> quantized_bytes;
  int64_t weight_bytes = 0;
  for (const WeightGroup& g : groups) {
    LayerInfo l{g.uses[0].display_name, g.op_type, g.weight_name, g.uses[0].graph_path, g.shape,
                static_cast<int>(g.uses.size())};
    info.layers.push_back(l);
    if (!g.selected) continue;
    int64_t n = NumElementsOf(g.shape);
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
