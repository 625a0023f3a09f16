// TransformWeight as a pipeline of stages (each under core/transform/):
//   validate   inputs.h   ValidateInputs, the index maps
//   cluster    cluster.h  ClusterFast + PlanSplit (pass 1), or the histogram route below,
//                         which fuses passes 1 and 2 (ranges.h: ComputeRegionRanges)
//   ranges     ranges.h   ComputeSliceRanges (pass 2)
//   summarise             the per-cluster counts and min/max of the result
//   quantize   quantize.h ChooseKernelParams, QuantizeAndEmit (pass 3; kernels.h)
//   measure               the energy sums
// and TransformWeightReference, the same contract spelled out element by element.
#include "core/weight_transform.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/kmeans.h"
#include "core/status_macros.h"
#include "core/transform/cluster.h"
#include "core/transform/common.h"
#include "core/transform/cuts.h"
#include "core/transform/index_map.h"
#include "core/transform/inputs.h"
#include "core/transform/kernels.h"
#include "core/transform/quantize.h"
#include "core/transform/ranges.h"
#include "core/transform/rounding.h"

namespace sq {
namespace {

using transform::BranchKernels;
using transform::ChooseKernelParams;
using transform::ChooseRoundingOffsets;
using transform::ClusterFast;
using transform::ClusterOfF;
using transform::Clustering;
using transform::ComputeRegionRanges;
using transform::ComputeSliceRanges;
using transform::EncodedBytes;
using transform::FirstNonFinite;
using transform::kInfF;
using transform::NonFiniteError;
using transform::ParamsLayout;
using transform::Partial;
using transform::PlanSplit;
using transform::QuantAwareCuts;
using transform::QuantizeAndEmit;
using transform::RegionPass;
using transform::ShrinksRanges;
using transform::SliceMap;
using transform::SliceRanges;
using transform::SplitPlan;
using transform::UnitMap;
using transform::ValidateInputs;
using transform::WindowValue;

// ---- TransformWeight's stages -------------------------------------------------------------

// What the clustering stage hands on: the split plan and, where it already has them, the
// slice ranges and the signal energy.
struct SplitStage {
  SplitPlan plan;
  std::vector<std::array<float, 6>> shrink;  // quantization-aware ranges (see ShrinksRanges)
  SliceRanges ranges;
  bool ranges_done = false;
  bool have_signal = false;  // signal energy already known (from the histogram)
  double signal_energy = 0;
};

// Per-tensor histogram clustering: fused passes (see RegionPass). Pass 1 = histogram
// (+ finiteness + signal energy), pass 2 = region ranges + window values.
bool UsesHistogramRoute(const TransformConfig& config, const IndexMap& units, int64_t n) {
  return config.split && units.kind == MapKind::kConst &&
         config.cluster_method == ClusterMethod::kFast && n > kKMeansExactMaxElements &&
         !QuantAwareCuts(config);
}

// The histogram route: clusters the tensor and, when the final thresholds lie inside the
// k-means windows, has the slice ranges too (`ranges_done`).
absl::Status HistogramClusterAndRanges(const WeightView& weight, int64_t n,
                                       const TransformConfig& config, const IndexMap& slices,
                                       const ParallelFor& parallel_for, SplitStage& st) {
  SplitPlan& plan = st.plan;
  SliceRanges& ranges = st.ranges;
  bool& ranges_done = st.ranges_done;
  bool& have_signal = st.have_signal;
  double& signal_energy = st.signal_energy;
  const absl::Span<const float> values = absl::MakeConstSpan(weight.data, n);
  kmeans_internal::HistogramKMeansState state;
  if (!state.Build(values, parallel_for)) {
    return NonFiniteError(weight.data, n, parallel_for);
  }
  signal_energy = state.SumOfSquares();
  have_signal = true;
  const std::vector<std::pair<float, float>> windows = state.Windows();
  RegionPass rp;
  bool use_regions = !windows.empty() && windows.size() <= 2;
  if (use_regions) {
    for (int w = 0; w < 2; ++w) {
      const auto& win = windows[std::min<size_t>(w, windows.size() - 1)];
      rp.w_lo[w] = win.first;
      rp.w_hi[w] = win.second;
    }
    rp.d0_max = std::nextafter(rp.w_lo[0], -kInfF);
    rp.d2_min = std::nextafter(rp.w_hi[1], kInfF);
    rp.max_window_values = n / 8;  // beyond: the old two-pass route is cheaper
    ComputeRegionRanges(weight.data, n, slices, parallel_for, rp);
    use_regions = !rp.overflow;
  }
  KMeans1DResult km;
  if (use_regions) {
    std::vector<float> wv(rp.window.size());
    for (size_t k = 0; k < wv.size(); ++k) wv[k] = rp.window[k].value;
    km = state.Finish(values, parallel_for, &wv);
  } else {
    km = state.Finish(values, parallel_for, nullptr);
  }
  Clustering cl;
  cl.unit_size = n;
  cl.units.push_back(km);
  plan = PlanSplit(cl, true, config.keep_three_branches);
  if (use_regions) {
    // The regions are the final clusters only if each threshold lies inside its window.
    const float t0 = plan.split ? plan.t0[0] : 0, t1 = plan.split ? plan.t1[0] : 0;
    const bool two = windows.size() == 2;
    const bool valid = !plan.split || (rp.d0_max <= t0 && rp.d2_min > t0 && rp.d2_min >= t1 &&
                                       (!two || (t0 <= rp.w_hi[0] && t1 >= rp.w_lo[1])));
    if (valid) {
      const int nbr = plan.split ? 3 : 1;
      const int64_t S = rp.regions.slices;
      ranges.Init(nbr, S);
      for (int r = 0; r < 3; ++r) {
        const int b = plan.split ? r : 0;
        for (int64_t s = 0; s < S; ++s) {
          ranges.mn[b * S + s] = std::min(ranges.mn[b * S + s], rp.regions.mn[r * S + s]);
          ranges.mx[b * S + s] = std::max(ranges.mx[b * S + s], rp.regions.mx[r * S + s]);
        }
      }
      for (const WindowValue& w : rp.window) {
        const int b = plan.split ? ClusterOfF(w.value, t0, t1) : 0;
        const int64_t s = ValueOf(slices, w.index);
        ranges.mn[b * S + s] = std::min(ranges.mn[b * S + s], w.value);
        ranges.mx[b * S + s] = std::max(ranges.mx[b * S + s], w.value);
      }
      ranges_done = true;
    }
  }
  return absl::OkStatus();
}

// The units the cut search's sample budget is spread over: this weight's, or the whole
// weight's when this is a band of it.
int64_t SampleUnits(const TransformConfig& config, int64_t units) {
  return config.whole ? config.whole->units : units;
}

// The spec the quantization-aware cut search models each branch's error with: float
// scales (float16 ones are within 2^-10 of them, and their exponent is known only once the
// ranges are).
QuantSpec CutSearchSpec(const TransformConfig& config) {
  QuantSpec s = config.spec;
  s.half_scales = false;
  return s;
}

// Pass 1: the split plan (nothing to do unsplit: pass 2 then checks finiteness).
absl::Status ClusterAndPlan(const WeightView& weight, int64_t n, const TransformConfig& config,
                            const IndexMap& slices, const IndexMap& units,
                            const ParallelFor& parallel_for, SplitStage& st) {
  if (UsesHistogramRoute(config, units, n)) {
    return HistogramClusterAndRanges(weight, n, config, slices, parallel_for, st);
  }
  if (config.split) {
    // Clustering reads the values (sorting NaN is undefined): check them first.
    if (FirstNonFinite(weight.data, n, parallel_for) >= 0) {
      return NonFiniteError(weight.data, n, parallel_for);
    }
    const QuantSpec model_spec = CutSearchSpec(config);
    const Clustering cl = ClusterFast(weight, n, units, SampleUnits(config, units.Count()),
                                      config.cluster_method, parallel_for,
                                      QuantAwareCuts(config) ? &model_spec : nullptr);
    st.plan = PlanSplit(cl, true, config.keep_three_branches);
    if (st.plan.split && ShrinksRanges(config)) st.shrink = cl.shrink;
  }
  return absl::OkStatus();
}

void RecordPlan(const TransformConfig& config, const SplitPlan& plan, TransformResult& result) {
  if (config.split) {
    result.not_split_reason = plan.not_split_reason;
    result.inertia = plan.inertia;
    result.degenerate_units = plan.degenerate_units;
  }
  const int nb = plan.split ? 3 : 1;
  result.split = plan.split;
  result.num_branches = nb;
}

// Cluster summary (an unsplit tensor is reported as cluster 0).
void SummarizeClusters(const SplitPlan& plan, const SliceRanges& ranges, int64_t n,
                       TransformResult& result) {
  const int nb = plan.split ? 3 : 1;
  for (int b = 0; b < nb; ++b) {
    float lo = kInfF, hi = -kInfF;
    for (int64_t s = 0; s < ranges.slices; ++s) {
      lo = std::min(lo, ranges.mn[b * ranges.slices + s]);
      hi = std::max(hi, ranges.mx[b * ranges.slices + s]);
    }
    ClusterSummary& cs = result.clusters[b];
    cs.count = plan.split ? plan.counts[b] : n;
    if (lo <= hi) {
      cs.min = lo + 0.0f;
      cs.max = hi + 0.0f;
    }
  }
}

// Sums the per-chunk partials in chunk order.
void MeasureEnergies(const TransformConfig& config, const SplitPlan& plan, bool quantize,
                     const SplitStage& st, const std::vector<Partial>& partials,
                     TransformResult& result) {
  const bool have_signal = st.have_signal;
  if (have_signal) result.signal_energy = st.signal_energy;
  for (const Partial& p : partials) {
    if (!have_signal) result.signal_energy += p.signal;
    result.split_error_energy += p.split_error;
    result.plain_error_energy += p.plain_error;
  }
  if (!quantize) result.split_error_energy = 0;  // the FP32 branches sum to the input
  if (config.compute_plain_error && quantize && !plan.split) {
    result.plain_error_energy = result.split_error_energy;
  }
  if (!config.compute_plain_error) result.plain_error_energy = 0;
}

// ---- TransformWeightReference's stages ----------------------------------------------------

// Per element: multi-index -> clustering unit and parameter slice, spelled out.
struct ReferenceMaps {
  std::vector<int64_t> unit, slice;
  int64_t num_slices = 1;
  int64_t num_units = 1;
};

ReferenceMaps ReferenceIndexMaps(const WeightView& weight, const TransformConfig& config,
                                 const BranchParams& layout, int64_t n) {
  const int rank = static_cast<int>(weight.shape.size());
  ReferenceMaps m;
  std::vector<int64_t>& unit = m.unit;
  std::vector<int64_t>& slice = m.slice;
  unit.assign(n, 0);
  slice.assign(n, 0);
  int64_t& num_slices = m.num_slices;
  for (int64_t d : layout.shape) num_slices *= d;
  m.num_units =
      (config.split && config.cluster_per_channel) ? weight.shape[weight.channel_axis] : 1;
  const int64_t num_units = m.num_units;
  std::vector<int64_t> idx(rank, 0);
  for (int64_t e = 0; e < n; ++e) {
    int64_t rem = e;
    for (int k = rank - 1; k >= 0; --k) {
      idx[k] = rem % weight.shape[k];
      rem /= weight.shape[k];
    }
    unit[e] = num_units == 1 ? 0 : idx[weight.channel_axis];
    if (config.granularity == Granularity::kTensor) {
      slice[e] = 0;
    } else if (config.granularity == Granularity::kChannel) {
      slice[e] = idx[weight.channel_axis];
    } else {
      int64_t s = 0;
      for (int k = 0; k < rank; ++k) {
        const int64_t c = k == weight.reduction_axis ? idx[k] / config.block_size : idx[k];
        s = s * layout.shape[k] + c;
      }
      slice[e] = s;
    }
  }
  return m;
}

// Each element's branch: every unit's values gathered and clustered on their own.
struct ReferenceSplit {
  std::vector<int> cluster;  // per element, 0 unsplit
  int nb = 1;
  std::vector<std::array<float, 6>> unit_shrink;
  std::vector<bool> unit_degenerate;
};

ReferenceSplit ReferenceCluster(const WeightView& weight, const TransformConfig& config,
                                const ReferenceMaps& maps, int64_t n,
                                TransformResult& result) {
  ReferenceSplit out;
  out.cluster.assign(n, 0);
  const std::vector<int64_t>& unit = maps.unit;
  const int64_t num_units = maps.num_units;
  if (config.split) {
    std::vector<std::vector<float>> unit_values(num_units);
    for (int64_t e = 0; e < n; ++e) unit_values[unit[e]].push_back(weight.data[e]);
    Clustering cl;
    cl.unit_size = num_units ? n / std::max<int64_t>(num_units, 1) : 0;
    for (const auto& v : unit_values) {
      if (QuantAwareCuts(config)) {
        const QuantAwareSplit q =
            ChooseQuantAwareSplit(v, CutSearchSpec(config), UnitSampleSize(SampleUnits(config, num_units)));
        cl.units.push_back(q.clusters);
        cl.shrink.push_back({q.shrink_lo[0], q.shrink_hi[0], q.shrink_lo[1], q.shrink_hi[1],
                             q.shrink_lo[2], q.shrink_hi[2]});
      } else {
        cl.units.push_back(config.cluster_method == ClusterMethod::kReference
                               ? KMeans1DReference(v)
                               : KMeans1D(v));
      }
    }
    const SplitPlan plan = PlanSplit(cl, true, config.keep_three_branches);
    if (plan.split && ShrinksRanges(config)) {
      out.unit_shrink = cl.shrink, out.unit_degenerate = plan.degenerate;
    }
    result.not_split_reason = plan.not_split_reason;
    result.inertia = plan.inertia;
    result.degenerate_units = plan.degenerate_units;
    if (plan.split) {
      out.nb = 3;
      for (int64_t e = 0; e < n; ++e) {
        const KMeans1DResult& r = cl.units[unit[e]];
        out.cluster[e] = plan.degenerate[unit[e]]
                             ? 1
                             : ClusterOf(weight.data[e], r.lower_boundary, r.upper_boundary);
      }
    }
  }
  result.split = out.nb == 3;
  result.num_branches = out.nb;
  return out;
}

// Count, min and max of each branch's values.
void ReferenceSummaries(const WeightView& weight, const ReferenceSplit& split, int64_t n,
                        TransformResult& result) {
  for (int b = 0; b < split.nb; ++b) {
    ClusterSummary& cs = result.clusters[b];
    bool any = false;
    for (int64_t e = 0; e < n; ++e) {
      if (split.cluster[e] != b) continue;
      const float v = weight.data[e];
      cs.min = any ? std::min(cs.min, v) : v;
      cs.max = any ? std::max(cs.max, v) : v;
      any = true;
      ++cs.count;
    }
    cs.min += 0.0f;
    cs.max += 0.0f;
  }
}

// Range of a slice: min / max of the branch's values there, zeros included; then, for
// the quantization-aware split where slices are units, the unit's shrink factors.
// `b` < 0: no shrink (unsplit, or the plain comparison).
BranchParams ReferenceParams(const std::vector<float>& values, int b,
                             const TransformConfig& config, const BranchParams& layout,
                             const ReferenceMaps& maps, const ReferenceSplit& split,
                             int64_t n) {
  const int64_t num_slices = maps.num_slices;
  const std::vector<int64_t>& slice = maps.slice;
  std::vector<float> lo(num_slices, 0.0f), hi(num_slices, 0.0f);
  std::vector<bool> seen(num_slices, false);
  for (int64_t e = 0; e < n; ++e) {
    const int64_t s = slice[e];
    lo[s] = seen[s] ? std::min(lo[s], values[e]) : values[e];
    hi[s] = seen[s] ? std::max(hi[s], values[e]) : values[e];
    seen[s] = true;
  }
  if (b >= 0 && !split.unit_shrink.empty()) {
    for (int64_t s = 0; s < num_slices; ++s) {
      if (split.unit_degenerate[s]) continue;
      lo[s] = std::min(lo[s], 0.0f) * split.unit_shrink[s][2 * b];
      hi[s] = std::max(hi[s], 0.0f) * split.unit_shrink[s][2 * b + 1];
    }
  }
  BranchParams bp = layout;
  for (int64_t s = 0; s < num_slices; ++s) {
    const QuantParams q = ChooseQuantParams(lo[s], hi[s], config.spec);
    bp.scales.push_back(q.scale);
    bp.zero_points.push_back(q.zero_point);
  }
  return bp;
}

QuantParams ParamOf(const BranchParams& bp, int64_t s) {
  QuantParams q;
  q.scale = bp.scales[s];
  q.zero_point = bp.zero_points[s];
  return q;
}

// Balanced rounding's offsets per slice (zeros when off): every slice's elements in
// element order, each with its own branch's parameters, through the shared histogram and
// choice of transform/rounding.h.
std::vector<float> ReferenceOffsets(const WeightView& weight, const TransformConfig& config,
                                    const ReferenceMaps& maps, const ReferenceSplit& split,
                                    const std::vector<BranchParams>& params, int64_t n,
                                    TransformResult& result) {
  std::vector<float> offsets(static_cast<size_t>(maps.num_slices), 0.0f);
  if (!config.balanced_rounding || config.granularity != Granularity::kChannel ||
      config.encoding == WeightEncoding::kFloatSplit) {
    return offsets;
  }
  std::vector<transform::SliceRounding> st(static_cast<size_t>(maps.num_slices));
  const int limit = transform::RoundingBinLimit(n / std::max<int64_t>(maps.num_slices, 1));
  for (int64_t e = 0; e < n; ++e) {
    if (config.balance_middle_only && split.nb == 3 && split.cluster[e] != 1) continue;
    const QuantParams p = ParamOf(params[split.cluster[e]], maps.slice[e]);
    transform::AccumulateRounding(weight.data[e], p.scale, static_cast<float>(p.zero_point),
                                  static_cast<float>(config.spec.qmin()),
                                  static_cast<float>(config.spec.qmax()), limit,
                                  st[maps.slice[e]]);
  }
  for (int64_t s = 0; s < maps.num_slices; ++s) {
    offsets[s] = transform::ChooseOffset(st[s]);
    if (offsets[s] != 0.0f) ++result.offset_slices;
  }
  return offsets;
}

// Quantizes and encodes each materialised branch (result.params too); returns the sum of
// the dequantized branches per element.
std::vector<float> ReferenceEncode(const WeightView& weight, const TransformConfig& config,
                                   const BranchParams& layout,
                                   const ReferenceMaps& maps, const ReferenceSplit& split,
                                   const std::vector<std::vector<float>>& branch, int64_t n,
                                   std::vector<std::vector<uint8_t>>& encoded,
                                   TransformResult& result) {
  const int nb = split.nb;
  const bool quantize = config.encoding != WeightEncoding::kFloatSplit;
  std::vector<float> total(n, 0.0f);
  encoded.assign(nb, {});
  std::vector<BranchParams> params(nb);
  if (quantize) {
    for (int b = 0; b < nb; ++b) {
      params[b] = ReferenceParams(branch[b], nb == 3 ? b : -1, config, layout, maps, split, n);
    }
  }
  const std::vector<float> offsets =
      ReferenceOffsets(weight, config, maps, split, params, n, result);
  for (int b = 0; b < nb; ++b) {
    if (!quantize) {
      encoded[b].resize(n * 4);
      std::memcpy(encoded[b].data(), branch[b].data(), n * 4);
      for (int64_t e = 0; e < n; ++e) total[e] += branch[b][e];
      continue;
    }
    const BranchParams& bp = params[b];
    std::vector<int32_t> q(n);
    std::vector<float> deq(n);
    for (int64_t e = 0; e < n; ++e) {
      q[e] = QuantizeValue(branch[b][e], ParamOf(bp, maps.slice[e]), config.spec,
                           offsets[maps.slice[e]]);
      deq[e] = DequantizeValue(q[e], ParamOf(bp, maps.slice[e]));
      total[e] += deq[e];
    }
    if (config.encoding == WeightEncoding::kCodes) {
      encoded[b].resize(PackedBytes(n, config.storage_bits));
      PackCodes(q, config.storage_bits, encoded[b].data());
    } else {
      encoded[b].resize(n * 4);
      std::memcpy(encoded[b].data(), deq.data(), n * 4);
    }
    result.params[b] = bp;
  }
  if (config.encoding == WeightEncoding::kDequantizedSum) {
    encoded.resize(1);
    std::memcpy(encoded[0].data(), total.data(), n * 4);
  }
  return total;
}

// Signal, split and plain error energies, in element order.
void ReferenceEnergies(const WeightView& weight, const TransformConfig& config,
                       const BranchParams& layout, const ReferenceMaps& maps,
                       const ReferenceSplit& split, const std::vector<float>& total, int64_t n,
                       TransformResult& result) {
  for (int64_t e = 0; e < n; ++e) {
    const double x = weight.data[e];
    result.signal_energy += x * x;
    result.split_error_energy += (x - total[e]) * (x - total[e]);
  }
  if (config.compute_plain_error) {
    std::vector<float> whole(weight.data, weight.data + n);
    const BranchParams bp = ReferenceParams(whole, -1, config, layout, maps, split, n);
    for (int64_t e = 0; e < n; ++e) {
      const QuantParams q = ParamOf(bp, maps.slice[e]);
      const double d = weight.data[e] -
                       static_cast<double>(DequantizeValue(QuantizeValue(whole[e], q, config.spec), q));
      result.plain_error_energy += d * d;
    }
  }
}

// Emit in 4 MiB pieces (element counts a multiple of 4, so packed pieces align).
void EmitPieces(const std::vector<std::vector<uint8_t>>& encoded, const BranchSink& sink) {
  constexpr int64_t kPieceBytes = int64_t{4} << 20;
  for (size_t b = 0; b < encoded.size(); ++b) {
    for (int64_t off = 0; off < static_cast<int64_t>(encoded[b].size()); off += kPieceBytes) {
      const int64_t size = std::min<int64_t>(kPieceBytes, encoded[b].size() - off);
      sink(static_cast<int>(b), off, encoded[b].data() + off, static_cast<size_t>(size));
    }
  }
}

}  // namespace

int64_t WeightView::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<TransformResult> TransformWeight(const WeightView& weight,
                                                const TransformConfig& config,
                                                const BranchSink& sink,
                                                const ParallelFor& parallel_for) {
  SQ_RETURN_IF_ERROR(ValidateInputs(weight, config));
  const int64_t n = weight.num_elements();
  const IndexMap slices = SliceMap(weight, config);
  const IndexMap units = UnitMap(weight, config);

  // Pass 1 (+ pass 2 on the histogram route): clusters -> split plan.
  SplitStage st;
  SQ_RETURN_IF_ERROR(ClusterAndPlan(weight, n, config, slices, units, parallel_for, st));
  TransformResult result;
  RecordPlan(config, st.plan, result);

  // Pass 2 (unless fused above); for an unsplit tensor also the finiteness check.
  if (!st.ranges_done &&
      !ComputeSliceRanges(weight.data, n, slices, units, st.plan, parallel_for, st.ranges)) {
    return NonFiniteError(weight.data, n, parallel_for);
  }
  SummarizeClusters(st.plan, st.ranges, n, result);

  // Pass 3: the branches quantize the shrunk ranges; the plain comparison keeps min/max.
  BranchKernels kernels =
      ChooseKernelParams(weight, config, st.plan, st.ranges, st.shrink, result);
  if (config.balanced_rounding && config.granularity == Granularity::kChannel) {
    kernels.off = ChooseRoundingOffsets(weight, config, slices, units, st.plan, kernels,
                                        parallel_for);
    result.offset_slices = std::count_if(kernels.off.begin(), kernels.off.end(),
                                         [](float o) { return o != 0.0f; });
  }
  result.bytes_per_branch = EncodedBytes(n, config);
  const std::vector<Partial> partials = QuantizeAndEmit(
      weight, n, config, slices, units, st.plan, kernels, !st.have_signal, sink, parallel_for);

  MeasureEnergies(config, st.plan, kernels.quantize, st, partials, result);
  return result;
}

absl::StatusOr<TransformResult> TransformWeightReference(const WeightView& weight,
                                                         const TransformConfig& layer_config,
                                                         const BranchSink& sink) {
  SQ_RETURN_IF_ERROR(ValidateInputs(weight, layer_config));
  const int64_t n = weight.num_elements();
  float max_abs = 0.0f;
  for (int64_t k = 0; k < n; ++k) {
    if (!std::isfinite(weight.data[k])) {
      return absl::InvalidArgumentError(absl::StrCat("weight: non-finite value at element ", k));
    }
    max_abs = std::max(max_abs, std::fabs(weight.data[k]));
  }
  TransformConfig config = layer_config;
  if (config.spec.half_scales) {
    config.spec.half_exponent = config.whole ? config.whole->half_exponent : HalfScaleExponent(max_abs);
  }
  const BranchParams layout = ParamsLayout(weight, config);
  const ReferenceMaps maps = ReferenceIndexMaps(weight, config, layout, n);

  TransformResult result;
  if (config.spec.half_scales) result.scale_exponent = config.spec.half_exponent;
  const ReferenceSplit split = ReferenceCluster(weight, config, maps, n, result);

  // The branches, materialised: each element in its cluster's branch, 0 elsewhere.
  std::vector<std::vector<float>> branch(split.nb, std::vector<float>(n, 0.0f));
  for (int64_t e = 0; e < n; ++e) branch[split.cluster[e]][e] = weight.data[e];
  ReferenceSummaries(weight, split, n, result);

  std::vector<std::vector<uint8_t>> encoded;
  const std::vector<float> total =
      ReferenceEncode(weight, config, layout, maps, split, branch, n, encoded, result);
  ReferenceEnergies(weight, config, layout, maps, split, total, n, result);
  result.bytes_per_branch = EncodedBytes(n, config);

  EmitPieces(encoded, sink);
  return result;
}

std::vector<std::vector<float>> SplitBias(absl::Span<const float> bias) {
  const KMeans1DResult r = KMeans1D(bias);
  if (r.distinct_clusters < 3) return {std::vector<float>(bias.begin(), bias.end())};
  std::vector<std::vector<float>> parts(3, std::vector<float>(bias.size(), 0.0f));
  for (size_t k = 0; k < bias.size(); ++k) {
    parts[ClusterOf(bias[k], r.lower_boundary, r.upper_boundary)][k] = bias[k];
  }
  return parts;
}

}  // namespace sq
