#include "core/transform/cluster.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "core/transform/common.h"
#include "core/transform/cuts.h"

namespace sq {
namespace transform {

KMeans1DResult ClusterValues(absl::Span<const float> v, ClusterMethod method,
                             const ParallelFor& parallel_for) {
  if (method == ClusterMethod::kReference) return KMeans1DReference(v);
  return KMeans1DParallel(v, parallel_for);
}

namespace {

// Values of channel `c` (map kind kChannel), in flat order.
void GatherUnit(const float* data, const AxisSplit& a, int64_t c, std::vector<float>& out) {
  out.resize(static_cast<size_t>(a.O * a.I));
  for (int64_t o = 0; o < a.O; ++o) {
    std::memcpy(out.data() + o * a.I, data + (o * a.D + c) * a.I,
                static_cast<size_t>(a.I) * sizeof(float));
  }
}

// Clusters one unit: the quantization-aware split when `spec` is non-null, else k-means.
void ClusterUnit(absl::Span<const float> values, ClusterMethod method,
                 const ParallelFor& parallel_for, const QuantSpec* spec, int64_t sample_size,
                 KMeans1DResult* result, std::array<float, 6>* shrink) {
  if (spec == nullptr) {
    *result = ClusterValues(values, method, parallel_for);
    return;
  }
  const QuantAwareSplit q = ChooseQuantAwareSplit(values, *spec, sample_size);
  *result = q.clusters;
  for (int b = 0; b < 3; ++b) {
    (*shrink)[2 * b] = q.shrink_lo[b];
    (*shrink)[2 * b + 1] = q.shrink_hi[b];
  }
}

// The quantization-aware split of every column of a row-major [rows, cols] matrix, reading
// it by rows: min/max and the final counts in row-range pieces (merged in any order: both
// are order-independent), the sample rows (every SampleStride-th, as ChooseQuantAwareSplit
// samples a unit) gathered per tile of columns, each span of kReleaseColumns handed to
// `release` (when set), with the span before it, in every sample row once its tiles are
// done. Same result as ChooseQuantAwareSplit on each gathered column.
void QuantAwareColumns(const float* data, int64_t rows, int64_t cols, const QuantSpec& spec,
                       int64_t sample_size, const ParallelFor& parallel_for,
                       const ReleaseFn& release, Clustering& out) {
  const int64_t stride = SampleStride(rows, sample_size);
  const bool sampled = stride > 1;
  constexpr int64_t kRowPiece = 64;
  const int64_t pieces = (rows + kRowPiece - 1) / kRowPiece;
  std::mutex mu;
  std::vector<float> mn, mx;
  if (sampled) {
    mn.assign(cols, kInfF);
    mx.assign(cols, -kInfF);
    RunParallel(pieces, parallel_for, [&](int64_t pb, int64_t pe) {
      std::vector<float> lmn(cols, kInfF), lmx(cols, -kInfF);
      for (int64_t o = pb * kRowPiece; o < std::min(rows, pe * kRowPiece); ++o) {
        const float* row = data + o * cols;
        for (int64_t c = 0; c < cols; ++c) {
          lmn[c] = row[c] < lmn[c] ? row[c] : lmn[c];
          lmx[c] = row[c] > lmx[c] ? row[c] : lmx[c];
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      for (int64_t c = 0; c < cols; ++c) {
        mn[c] = std::min(mn[c], lmn[c]);
        mx[c] = std::max(mx[c], lmx[c]);
      }
    });
  }
  constexpr int64_t kTile = 64;
  const int64_t tiles = (cols + kTile - 1) / kTile;
  std::vector<bool> need_kmeans(cols, false);
  // The sample rows are read a tile of columns at a time, so no row is finished until
  // the last tile: without handing back each span of columns once its tiles are done,
  // every sample row of a mapped weight stays resident (on the 1.5 B scale model's lm_head
  // the sampling phase held ~200 MB of input pages).
  constexpr int64_t kReleaseColumns = 2048;
  RunParallel(tiles, parallel_for, [&](int64_t tb, int64_t te) {
    std::vector<float> sample;
    // Each hand-back reaches back over the span before it: a release drops only the whole
    // pages inside its range, so the page a span boundary falls in (rows are not
    // page-aligned) would otherwise be dropped by neither span.
    int64_t span0 = tb * kTile, prev0 = span0;
    for (int64_t t = tb; t < te; ++t) {
      const int64_t c0 = t * kTile, c1 = std::min(cols, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        sample.clear();
        for (int64_t o = 0; o < rows; o += stride) sample.push_back(data[o * cols + c]);
        if (sampled) {
          sample.push_back(mn[c]);
          sample.push_back(mx[c]);
        }
        for (float& v : sample) v += 0.0f;
        SortSample(sample);
        const QuantAwareSplit q = ChooseQuantAwareSplitFromSample(sample, rows, spec);
        out.units[c] = q.clusters;
        for (int b = 0; b < 3; ++b) {
          out.shrink[c][2 * b] = q.shrink_lo[b];
          out.shrink[c][2 * b + 1] = q.shrink_hi[b];
        }
        if (q.clusters.distinct_clusters < 3 && sampled) need_kmeans[c] = true;
      }
      if (release && (c1 - span0 >= kReleaseColumns || t + 1 == te)) {
        for (int64_t o = 0; o < rows; o += stride) release(o * cols + prev0, o * cols + c1);
        prev0 = span0;
        span0 = c1;
      }
    }
  });
  if (!sampled) return;
  // Columns whose sample had no cut: exact k-means on the gathered column (rare).
  std::vector<float> column(rows);
  for (int64_t c = 0; c < cols; ++c) {
    if (!need_kmeans[c]) continue;
    for (int64_t o = 0; o < rows; ++o) column[o] = data[o * cols + c];
    out.units[c] = KMeans1D(column);
  }
  // Exact counts under the chosen cuts.
  std::vector<float> t0(cols), t1(cols);
  for (int64_t c = 0; c < cols; ++c) {
    t0[c] = LowerThreshold(out.units[c].lower_boundary);
    t1[c] = UpperThreshold(out.units[c].upper_boundary);
  }
  std::vector<int64_t> below(cols, 0), above(cols, 0);
  RunParallel(pieces, parallel_for, [&](int64_t pb, int64_t pe) {
    std::vector<int32_t> lb(cols, 0), la(cols, 0);
    for (int64_t o = pb * kRowPiece; o < std::min(rows, pe * kRowPiece); ++o) {
      const float* row = data + o * cols;
      for (int64_t c = 0; c < cols; ++c) {
        lb[c] += row[c] <= t0[c];
        la[c] += row[c] >= t1[c];
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    for (int64_t c = 0; c < cols; ++c) {
      below[c] += lb[c];
      above[c] += la[c];
    }
  });
  for (int64_t c = 0; c < cols; ++c) {
    if (need_kmeans[c]) continue;  // k-means counted its own
    KMeans1DResult& r = out.units[c];
    if (r.distinct_clusters < 3) continue;
    r.counts = {below[c], rows - below[c] - above[c], above[c]};
  }
}

}  // namespace

bool QuantAwareCuts(const TransformConfig& c) {
  return c.quant_aware_boundaries && c.split && c.granularity != Granularity::kBlock;
}
bool ShrinksRanges(const TransformConfig& c) {
  return QuantAwareCuts(c) && !c.balanced_rounding &&
         ((c.cluster_per_channel && c.granularity == Granularity::kChannel) ||
          (!c.cluster_per_channel && c.granularity == Granularity::kTensor));
}

Clustering ClusterFast(const WeightView& w, int64_t n, const IndexMap& units, int64_t sample_units,
                       ClusterMethod method, const ParallelFor& parallel_for,
                       const QuantSpec* quant_spec) {
  Clustering out;
  if (units.kind == MapKind::kConst) {
    out.unit_size = n;
    out.units.resize(1);
    out.shrink.resize(1);
    ClusterUnit(absl::MakeConstSpan(w.data, n), method, parallel_for, quant_spec,
                UnitSampleSize(1), &out.units[0], &out.shrink[0]);
    if (!quant_spec) out.shrink.clear();
    return out;
  }
  const int64_t count = units.Count();
  const int64_t sample_size = UnitSampleSize(sample_units);
  out.unit_size = units.ax.O * units.ax.I;
  out.units.resize(static_cast<size_t>(count));
  if (quant_spec) out.shrink.resize(static_cast<size_t>(count));
  // A channel on the innermost axis (a MatMul's output column) is a strided unit.
  if (quant_spec && units.ax.I == 1 && units.ax.O > 1) {
    QuantAwareColumns(w.data, units.ax.O, count, *quant_spec, sample_size, parallel_for, w.release, out);
    return out;
  }
  // k-means on columns: gather kTile of them at once, reading whole row pieces, instead of
  // one float per row.
  constexpr int64_t kTile = 128;
  const bool tiled = units.ax.I == 1 && units.ax.O > 1;
  const int64_t tasks = tiled ? (count + kTile - 1) / kTile : count;
  RunParallel(tasks, parallel_for, [&](int64_t tb, int64_t te) {
    std::vector<float> buf;
    std::array<float, 6> unused;
    auto run = [&](int64_t u, absl::Span<const float> values) {
      ClusterUnit(values, method, nullptr, quant_spec, sample_size, &out.units[u],
                  quant_spec ? &out.shrink[u] : &unused);
    };
    for (int64_t t = tb; t < te; ++t) {
      if (tiled) {
        const int64_t u0 = t * kTile, width = std::min(kTile, count - u0), rows = units.ax.O;
        buf.resize(static_cast<size_t>(width * rows));
        for (int64_t o = 0; o < rows; ++o) {
          const float* src = w.data + o * units.ax.D + u0;
          for (int64_t c = 0; c < width; ++c) buf[c * rows + o] = src[c];
        }
        for (int64_t c = 0; c < width; ++c) {
          run(u0 + c, absl::MakeConstSpan(buf.data() + c * rows, rows));
        }
      } else if (units.ax.O == 1) {  // contiguous: no copy
        run(t, absl::MakeConstSpan(w.data + t * units.ax.I, units.ax.I));
      } else {
        GatherUnit(w.data, units.ax, t, buf);
        run(t, buf);
      }
    }
  });
  return out;
}

void ApplyShrink(const std::vector<std::array<float, 6>>& shrink, const std::vector<bool>& degenerate,
                 int64_t slices, std::vector<float>& mn, std::vector<float>& mx) {
  for (int64_t s = 0; s < slices && s < static_cast<int64_t>(shrink.size()); ++s) {
    if (!degenerate.empty() && degenerate[s]) continue;
    for (int b = 0; b < 3; ++b) {
      float& lo = mn[b * slices + s];
      float& hi = mx[b * slices + s];
      if (lo > hi) continue;  // empty branch in this slice
      lo = std::min(lo, 0.0f) * shrink[s][2 * b];
      hi = std::max(hi, 0.0f) * shrink[s][2 * b + 1];
    }
  }
}

SplitPlan PlanSplit(const Clustering& cl, bool want_split, bool keep_three) {
  SplitPlan plan;
  if (!want_split) return plan;
  const size_t u = cl.units.size();
  plan.degenerate.assign(u, false);
  for (size_t k = 0; k < u; ++k) {
    const KMeans1DResult& r = cl.units[k];
    plan.inertia += r.inertia;
    if (r.distinct_clusters < 3) {
      plan.degenerate[k] = true;
      ++plan.degenerate_units;
    }
  }
  if (plan.degenerate_units == static_cast<int64_t>(u)) {
    if (!keep_three) {
      plan.not_split_reason = u == 1 ? "fewer than 3 distinct values"
                                     : "every channel has fewer than 3 distinct values";
      return plan;
    }
    // The engine planned three branches (the layer has 3 distinct values somewhere), but
    // clustering found fewer than 3 clusters in every unit: values whose squared distances
    // overflow or vanish in floating point (found by fuzzing: rows spanning 1e-38 to 1e33).
    // The three branches are made, everything in the middle one.
    plan.not_split_reason = "fewer than 3 distinct clusters in every unit: the outer branches are empty";
  }
  plan.split = true;
  plan.t0.resize(u);
  plan.t1.resize(u);
  for (size_t k = 0; k < u; ++k) {
    const KMeans1DResult& r = cl.units[k];
    if (plan.degenerate[k]) {
      // Degenerate channel: everything into the middle branch.
      plan.t0[k] = -kInfF;
      plan.t1[k] = kInfF;
      plan.counts[1] += cl.unit_size;
    } else {
      plan.t0[k] = LowerThreshold(r.lower_boundary);
      plan.t1[k] = UpperThreshold(r.upper_boundary);
      for (int c = 0; c < 3; ++c) plan.counts[c] += r.counts[c];
    }
  }
  return plan;
}

}  // namespace transform
}  // namespace sq
