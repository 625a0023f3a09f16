#include "core/weight_transform.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <atomic>
#include <mutex>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "core/kmeans.h"
#include "core/transform/cuts.h"
#include "core/transform/index_map.h"
#include "core/transform/round.h"
#include "core/status_macros.h"

namespace sq {
namespace {

constexpr float kInfF = std::numeric_limits<float>::infinity();
// Fixed work unit of every pass (elements). A multiple of 4 so packed pieces start on
// byte boundaries; independent of the thread count, which makes results reproducible.
constexpr int64_t kSubChunk = 1 << 15;
// Elements per emitted piece: 4 MiB of FP32 per branch at most.
constexpr int64_t kPieceElements = 1 << 20;

// ---- validation ------------------------------------------------------------------------

absl::Status ValidateInputs(const WeightView& w, const TransformConfig& c) {
  if (w.shape.empty()) return absl::InvalidArgumentError("weight: rank must be >= 1");
  const int rank = static_cast<int>(w.shape.size());
  int64_t n = 1;
  for (int64_t d : w.shape) {
    if (d < 0) return absl::InvalidArgumentError("weight: negative dimension");
    if (d > 0 && n > (int64_t{1} << 62) / d) {
      return absl::InvalidArgumentError("weight: too many elements");
    }
    n *= d;
  }
  if (w.channel_axis < 0 || w.channel_axis >= rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight: channel_axis ", w.channel_axis, " out of range for rank ", rank));
  }
  if (c.granularity == Granularity::kBlock &&
      (w.reduction_axis < 0 || w.reduction_axis >= rank)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight: reduction_axis ", w.reduction_axis, " out of range for rank ", rank));
  }
  if (n > 0 && w.data == nullptr) return absl::InvalidArgumentError("weight: null data");
  if (c.spec.bits < 2 || c.spec.bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be in 2..8, got ", c.spec.bits));
  }
  if (c.granularity == Granularity::kBlock && c.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be >= 1, got ", c.block_size));
  }
  if (c.encoding == WeightEncoding::kCodes) {
    if (c.storage_bits != 8 && c.storage_bits != 4 && c.storage_bits != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage_bits must be 8, 4 or 2, got ", c.storage_bits));
    }
    if (c.storage_bits < c.spec.bits) {
      return absl::InvalidArgumentError(absl::StrCat(
          "storage_bits ", c.storage_bits, " < bits ", c.spec.bits));
    }
  }
  return absl::OkStatus();
}

// True when x[0, len) holds a NaN or Inf. Run on a segment just before another loop reads
// it, so the data is in L1 and the check adds no pass over memory.
bool AnyNonFinite(const float* x, int64_t len) {
  uint32_t any = 0;
  int64_t k = 0;
#if defined(__SSE2__)
  const __m128i exp_mask = _mm_set1_epi32(0x7F800000);
  __m128i acc = _mm_setzero_si128();
  for (; k + 4 <= len; k += 4) {
    const __m128i v =
        _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + k)), exp_mask);
    acc = _mm_or_si128(acc, _mm_cmpeq_epi32(v, exp_mask));
  }
  any = static_cast<uint32_t>(_mm_movemask_epi8(acc));
#endif
  for (; k < len; ++k) {
    uint32_t bits;
    std::memcpy(&bits, x + k, 4);
    any |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
  }
  return any != 0;
}

// First non-finite element, or -1. Chunked so the scan can run in parallel; the answer is
// the minimum index, independent of scheduling.
int64_t FirstNonFinite(const float* data, int64_t n, const ParallelFor& parallel_for) {
  const int64_t chunks = (n + kSubChunk - 1) / kSubChunk;
  std::vector<int64_t> first(static_cast<size_t>(chunks), -1);
  auto fn = [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      const int64_t b = ch * kSubChunk, e = std::min(n, b + kSubChunk);
      if (!AnyNonFinite(data + b, e - b)) continue;
      for (int64_t k = b; k < e; ++k) {
        if (!std::isfinite(data[k])) {
          first[ch] = k;
          break;
        }
      }
    }
  };
  if (chunks == 0) return -1;
  if (parallel_for) {
    parallel_for(chunks, fn);
  } else {
    fn(0, chunks);
  }
  for (int64_t f : first) {
    if (f >= 0) return f;
  }
  return -1;
}


void RunParallel(int64_t n, const ParallelFor& parallel_for,
                 const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (parallel_for) {
    parallel_for(n, fn);
  } else {
    fn(0, n);
  }
}

IndexMap SliceMap(const WeightView& w, const TransformConfig& c) {
  return ParamIndexMap(w.shape, c.granularity, w.channel_axis, w.reduction_axis, c.block_size);
}

IndexMap UnitMap(const WeightView& w, const TransformConfig& c) {
  IndexMap m;
  if (c.split && c.cluster_per_channel) {
    m.kind = MapKind::kChannel;
    m.ax = SplitAround(w.shape, w.channel_axis);
  }
  return m;
}

BranchParams ParamsLayout(const WeightView& w, const TransformConfig& c) {
  BranchParams p;
  if (c.granularity == Granularity::kChannel) {
    p.shape = {w.shape[w.channel_axis]};
    p.axis = w.channel_axis;
  } else if (c.granularity == Granularity::kBlock) {
    p.shape = w.shape;
    p.shape[w.reduction_axis] = (w.shape[w.reduction_axis] + c.block_size - 1) / c.block_size;
    p.axis = w.reduction_axis;
    p.block_size = c.block_size;
  }
  return p;
}

int64_t EncodedBytes(int64_t n, const TransformConfig& c) {
  return c.encoding == WeightEncoding::kCodes ? PackedBytes(n, c.storage_bits) : n * 4;
}

// ---- clustering ------------------------------------------------------------------------

struct Clustering {
  std::vector<KMeans1DResult> units;
  int64_t unit_size = 0;
  // Quantization-aware split only: per unit, the branches' range shrink factors
  // {lo0, hi0, lo1, hi1, lo2, hi2} (applied where slices are the units).
  std::vector<std::array<float, 6>> shrink;
};

KMeans1DResult ClusterValues(absl::Span<const float> v, ClusterMethod method,
                             const ParallelFor& parallel_for) {
  if (method == ClusterMethod::kReference) return KMeans1DReference(v);
  return KMeans1DParallel(v, parallel_for);
}

// Values of channel `c` (map kind kChannel), in flat order.
void GatherUnit(const float* data, const AxisSplit& a, int64_t c, std::vector<float>& out) {
  out.resize(static_cast<size_t>(a.O * a.I));
  for (int64_t o = 0; o < a.O; ++o) {
    std::memcpy(out.data() + o * a.I, data + (o * a.D + c) * a.I,
                static_cast<size_t>(a.I) * sizeof(float));
  }
}

// Whether the quantization-aware split (core/transform/cuts.h) places the cuts: under
// tensor and channel granularity. Its error model knows one range per branch and unit;
// under blocked granularity every block has its own, and the model's cuts measured worse
// than k-means's there (INT2), so blocks keep k-means cuts.
bool QuantAwareCuts(const TransformConfig& c) {
  return c.quant_aware_boundaries && c.split && c.granularity != Granularity::kBlock;
}
// Whether its range shrink factors apply: only where each clustering unit is exactly one
// quantization slice (per-channel units under channel granularity, or the whole tensor
// under tensor granularity). Blocked slices keep their min/max.
bool ShrinksRanges(const TransformConfig& c) {
  return QuantAwareCuts(c) &&
         ((c.cluster_per_channel && c.granularity == Granularity::kChannel) ||
          (!c.cluster_per_channel && c.granularity == Granularity::kTensor));
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
// samples a unit) gathered per tile of columns. Same result as ChooseQuantAwareSplit on
// each gathered column.
void QuantAwareColumns(const float* data, int64_t rows, int64_t cols, const QuantSpec& spec,
                       int64_t sample_size, const ParallelFor& parallel_for, Clustering& out) {
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
  RunParallel(tiles, parallel_for, [&](int64_t tb, int64_t te) {
    std::vector<float> sample;
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
        std::sort(sample.begin(), sample.end());
        const QuantAwareSplit q = ChooseQuantAwareSplitFromSample(sample, rows, spec);
        out.units[c] = q.clusters;
        for (int b = 0; b < 3; ++b) {
          out.shrink[c][2 * b] = q.shrink_lo[b];
          out.shrink[c][2 * b + 1] = q.shrink_hi[b];
        }
        if (q.clusters.distinct_clusters < 3 && sampled) need_kmeans[c] = true;
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

// `quant_spec` non-null: the quantization-aware split under that spec instead of k-means.
Clustering ClusterFast(const WeightView& w, int64_t n, const IndexMap& units,
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
  const int64_t sample_size = UnitSampleSize(count);
  out.unit_size = units.ax.O * units.ax.I;
  out.units.resize(static_cast<size_t>(count));
  if (quant_spec) out.shrink.resize(static_cast<size_t>(count));
  // A channel on the innermost axis (a MatMul's output column) is a strided unit.
  if (quant_spec && units.ax.I == 1 && units.ax.O > 1) {
    QuantAwareColumns(w.data, units.ax.O, count, *quant_spec, sample_size, parallel_for, out);
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

// Applies per-unit shrink factors to per-slice branch ranges (slice s = unit s).
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

// Outcome of the clustering step shared by both implementations.
struct SplitPlan {
  bool split = false;
  std::string not_split_reason;
  std::vector<float> t0, t1;  // per unit float thresholds (split only)
  std::vector<bool> degenerate;
  int64_t degenerate_units = 0;
  double inertia = 0;
  std::array<int64_t, 3> counts{};
};

// `keep_three`: the caller's graph already holds three branches (TransformConfig::
// keep_three_branches), so they are made even when every unit is degenerate.
SplitPlan PlanSplit(const Clustering& cl, int64_t n, bool want_split, bool keep_three) {
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
  (void)n;
  return plan;
}

// ---- pass 2: per-slice, per-branch min / max -------------------------------------------

// Per branch min and max of the cluster's values (+inf / -inf when none), per slice.
struct SliceRanges {
  int branches = 1;
  int64_t slices = 0;
  std::vector<float> mn, mx;  // [branch * slices + slice]
  void Init(int b, int64_t s) {
    branches = b;
    slices = s;
    mn.assign(static_cast<size_t>(b * s), kInfF);
    mx.assign(static_cast<size_t>(b * s), -kInfF);
  }
};

inline int ClusterOfF(float x, float t0, float t1) {
  return x <= t0 ? 0 : (x >= t1 ? 2 : 1);
}

// Reduces x[0, len) into mn/mx (arrays of `branches` rows with row stride `stride`); slice
// index advances with the element when kVecS. Thresholds per element when kVecT.
template <bool kSplit, bool kVecT, bool kVecS>
void ReduceSegment(const float* x, int64_t len, const float* t0, const float* t1, float* mn,
                   float* mx, int64_t stride) {
  int64_t k = 0;
#if defined(__SSE2__)
  if (!kVecS) {
    __m128 vmn[3], vmx[3];
    for (int b = 0; b < 3; ++b) {
      vmn[b] = _mm_set1_ps(kInfF);
      vmx[b] = _mm_set1_ps(-kInfF);
    }
    const __m128 inf = _mm_set1_ps(kInfF), ninf = _mm_set1_ps(-kInfF);
    for (; k + 4 <= len; k += 4) {
      const __m128 v = _mm_loadu_ps(x + k);
      if (!kSplit) {
        vmn[0] = _mm_min_ps(vmn[0], v);
        vmx[0] = _mm_max_ps(vmx[0], v);
        continue;
      }
      const __m128 a = kVecT ? _mm_loadu_ps(t0 + k) : _mm_set1_ps(t0[0]);
      const __m128 c = kVecT ? _mm_loadu_ps(t1 + k) : _mm_set1_ps(t1[0]);
      const __m128 m0 = _mm_cmple_ps(v, a), m2 = _mm_cmpge_ps(v, c);
      const __m128 m1 = _mm_andnot_ps(_mm_or_ps(m0, m2), _mm_castsi128_ps(_mm_set1_epi32(-1)));
      const __m128 m[3] = {m0, m1, m2};
      for (int b = 0; b < 3; ++b) {
        vmn[b] = _mm_min_ps(vmn[b], _mm_or_ps(_mm_and_ps(m[b], v), _mm_andnot_ps(m[b], inf)));
        vmx[b] = _mm_max_ps(vmx[b], _mm_or_ps(_mm_and_ps(m[b], v), _mm_andnot_ps(m[b], ninf)));
      }
    }
    const int nb = kSplit ? 3 : 1;
    for (int b = 0; b < nb; ++b) {
      alignas(16) float a[4], c[4];
      _mm_store_ps(a, vmn[b]);
      _mm_store_ps(c, vmx[b]);
      for (int l = 0; l < 4; ++l) {
        mn[b * stride] = std::min(mn[b * stride], a[l]);
        mx[b * stride] = std::max(mx[b * stride], c[l]);
      }
    }
  }
  if (kVecS) {
    // One slice per element: update the accumulator arrays lane-wise.
    const __m128 inf = _mm_set1_ps(kInfF), ninf = _mm_set1_ps(-kInfF);
    for (; k + 4 <= len; k += 4) {
      const __m128 v = _mm_loadu_ps(x + k);
      if (!kSplit) {
        _mm_storeu_ps(mn + k, _mm_min_ps(_mm_loadu_ps(mn + k), v));
        _mm_storeu_ps(mx + k, _mm_max_ps(_mm_loadu_ps(mx + k), v));
        continue;
      }
      const __m128 a = kVecT ? _mm_loadu_ps(t0 + k) : _mm_set1_ps(t0[0]);
      const __m128 c = kVecT ? _mm_loadu_ps(t1 + k) : _mm_set1_ps(t1[0]);
      const __m128 m0 = _mm_cmple_ps(v, a), m2 = _mm_cmpge_ps(v, c);
      const __m128 m1 = _mm_andnot_ps(_mm_or_ps(m0, m2), _mm_castsi128_ps(_mm_set1_epi32(-1)));
      const __m128 m[3] = {m0, m1, m2};
      for (int b = 0; b < 3; ++b) {
        float* pmn = mn + b * stride + k;
        float* pmx = mx + b * stride + k;
        _mm_storeu_ps(pmn, _mm_min_ps(_mm_loadu_ps(pmn),
                                      _mm_or_ps(_mm_and_ps(m[b], v), _mm_andnot_ps(m[b], inf))));
        _mm_storeu_ps(pmx, _mm_max_ps(_mm_loadu_ps(pmx),
                                      _mm_or_ps(_mm_and_ps(m[b], v), _mm_andnot_ps(m[b], ninf))));
      }
    }
  }
#endif
  for (; k < len; ++k) {
    const float v = x[k];
    const int64_t s = kVecS ? k : 0;
    const int b = kSplit ? ClusterOfF(v, t0[kVecT ? k : 0], t1[kVecT ? k : 0]) : 0;
    float& lo = mn[b * stride + s];
    float& hi = mx[b * stride + s];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
}

template <bool kSplit>
void ReduceDispatch(const float* x, int64_t len, const float* t0, const float* t1,
                    bool vec_t, bool vec_s, float* mn, float* mx, int64_t stride) {
  if (vec_t) {
    if (vec_s) return ReduceSegment<kSplit, true, true>(x, len, t0, t1, mn, mx, stride);
    return ReduceSegment<kSplit, true, false>(x, len, t0, t1, mn, mx, stride);
  }
  if (vec_s) return ReduceSegment<kSplit, false, true>(x, len, t0, t1, mn, mx, stride);
  return ReduceSegment<kSplit, false, false>(x, len, t0, t1, mn, mx, stride);
}

// Per-slice, per-branch min/max under `plan`. Also checks finiteness on the way (the
// data is in L1 then); returns false when a NaN / Inf was seen (`out` is then garbage).
bool ComputeSliceRanges(const float* data, int64_t n, const IndexMap& slices,
                        const IndexMap& units, const SplitPlan& plan,
                        const ParallelFor& parallel_for, SliceRanges& out) {
  std::atomic<bool> finite{true};
  const int nb = plan.split ? 3 : 1;
  out.Init(nb, slices.Count());
  const int64_t chunks = (n + kSubChunk - 1) / kSubChunk;
  std::mutex mu;
  const float neg_inf = -kInfF, pos_inf = kInfF;
  RunParallel(chunks, parallel_for, [&](int64_t cb, int64_t ce) {
    const int64_t e0 = cb * kSubChunk, e1 = std::min(n, ce * kSubChunk);
    const auto range = slices.Range(e0, e1);  // (no structured binding: lambdas capture it)
    const int64_t lo = range.first, width = range.second - range.first;
    std::vector<float> mn(static_cast<size_t>(nb * width), kInfF);
    std::vector<float> mx(static_cast<size_t>(nb * width), -kInfF);
    bool local_finite = true;
    ForEachSegment(slices, units, e0, e1, [&](int64_t e, int64_t len, Run rs, Run ru) {
      if (AnyNonFinite(data + e, len)) local_finite = false;
      const float* t0 = plan.split ? plan.t0.data() + ru.value : &neg_inf;
      const float* t1 = plan.split ? plan.t1.data() + ru.value : &pos_inf;
      float* pmn = mn.data() + (rs.value - lo);
      float* pmx = mx.data() + (rs.value - lo);
      if (plan.split) {
        ReduceDispatch<true>(data + e, len, t0, t1, ru.stride, rs.stride, pmn, pmx, width);
      } else {
        ReduceDispatch<false>(data + e, len, t0, t1, false, rs.stride, pmn, pmx, width);
      }
    });
    if (!local_finite) finite = false;
    // min/max merge is order independent (up to the sign of zero, which the consumers
    // normalise), so a plain lock keeps the result deterministic.
    std::lock_guard<std::mutex> lock(mu);
    for (int b = 0; b < nb; ++b) {
      float* gmn = out.mn.data() + b * out.slices + lo;
      float* gmx = out.mx.data() + b * out.slices + lo;
      for (int64_t s = 0; s < width; ++s) {
        gmn[s] = std::min(gmn[s], mn[b * width + s]);
        gmx[s] = std::max(gmx[s], mx[b * width + s]);
      }
    }
  });
  return finite;
}

// ---- fused pass 2 (per-tensor split): slice ranges without knowing the thresholds -------
//
// The histogram k-means only refines inside a few bins around each cut ("windows"). Every
// value outside the windows already has a known cluster: below the first window -> lower,
// between the windows -> middle, above the last -> upper (once the final thresholds are
// checked to lie inside the windows). So one pass keeps per-slice min/max of those three
// regions, and collects the (rare, ~1%) window values with their element index: they feed
// the k-means refinement (no second k-means pass) and are folded into the slice ranges once
// the thresholds are known.
struct WindowValue {
  int64_t index;
  float value;
};

struct RegionPass {
  float w_lo[2], w_hi[2];   // windows (a single window is given twice)
  float d0_max, d2_min;     // x <= d0_max: below the first window; x >= d2_min: above the last
  int64_t max_window_values = 0;  // give up collecting beyond this (fallback path)
  // Outputs.
  SliceRanges regions;      // "branch" b = region b
  std::vector<WindowValue> window;
  bool overflow = false;
};

template <bool kVecS>
void RegionSegment(const RegionPass& rp, const float* x, int64_t e, int64_t len, float* mn,
                   float* mx, int64_t stride, std::vector<WindowValue>& win) {
  auto scalar = [&](int64_t k) {
    const float v = x[k];
    if ((v >= rp.w_lo[0] && v <= rp.w_hi[0]) || (v >= rp.w_lo[1] && v <= rp.w_hi[1])) {
      win.push_back({e + k, v});
      return;
    }
    const int r = ClusterOfF(v, rp.d0_max, rp.d2_min);
    const int64_t s = kVecS ? k : 0;
    mn[r * stride + s] = std::min(mn[r * stride + s], v);
    mx[r * stride + s] = std::max(mx[r * stride + s], v);
  };
  int64_t k = 0;
#if defined(__SSE2__)
  const __m128 wl0 = _mm_set1_ps(rp.w_lo[0]), wh0 = _mm_set1_ps(rp.w_hi[0]);
  const __m128 wl1 = _mm_set1_ps(rp.w_lo[1]), wh1 = _mm_set1_ps(rp.w_hi[1]);
  const __m128 a = _mm_set1_ps(rp.d0_max), c = _mm_set1_ps(rp.d2_min);
  const __m128 inf = _mm_set1_ps(kInfF), ninf = _mm_set1_ps(-kInfF);
  const __m128 ones = _mm_castsi128_ps(_mm_set1_epi32(-1));
  __m128 vmn[3], vmx[3];
  for (int b = 0; b < 3; ++b) {
    vmn[b] = inf;
    vmx[b] = ninf;
  }
  for (; k + 4 <= len; k += 4) {
    const __m128 v = _mm_loadu_ps(x + k);
    const __m128 in_w =
        _mm_or_ps(_mm_and_ps(_mm_cmpge_ps(v, wl0), _mm_cmple_ps(v, wh0)),
                  _mm_and_ps(_mm_cmpge_ps(v, wl1), _mm_cmple_ps(v, wh1)));
    if (_mm_movemask_ps(in_w)) {  // rare: element by element
      for (int l = 0; l < 4; ++l) scalar(k + l);
      continue;
    }
    const __m128 m0 = _mm_cmple_ps(v, a), m2 = _mm_cmpge_ps(v, c);
    const __m128 m1 = _mm_andnot_ps(_mm_or_ps(m0, m2), ones);
    const __m128 m[3] = {m0, m1, m2};
    for (int b = 0; b < 3; ++b) {
      const __m128 lo = _mm_or_ps(_mm_and_ps(m[b], v), _mm_andnot_ps(m[b], inf));
      const __m128 hi = _mm_or_ps(_mm_and_ps(m[b], v), _mm_andnot_ps(m[b], ninf));
      if (kVecS) {
        float* pmn = mn + b * stride + k;
        float* pmx = mx + b * stride + k;
        _mm_storeu_ps(pmn, _mm_min_ps(_mm_loadu_ps(pmn), lo));
        _mm_storeu_ps(pmx, _mm_max_ps(_mm_loadu_ps(pmx), hi));
      } else {
        vmn[b] = _mm_min_ps(vmn[b], lo);
        vmx[b] = _mm_max_ps(vmx[b], hi);
      }
    }
  }
  if (!kVecS) {
    for (int b = 0; b < 3; ++b) {
      alignas(16) float lo[4], hi[4];
      _mm_store_ps(lo, vmn[b]);
      _mm_store_ps(hi, vmx[b]);
      for (int l = 0; l < 4; ++l) {
        mn[b * stride] = std::min(mn[b * stride], lo[l]);
        mx[b * stride] = std::max(mx[b * stride], hi[l]);
      }
    }
  }
#endif
  for (; k < len; ++k) scalar(k);
}

void ComputeRegionRanges(const float* data, int64_t n, const IndexMap& slices,
                         const ParallelFor& parallel_for, RegionPass& rp) {
  rp.regions.Init(3, slices.Count());
  const IndexMap tensor;  // one clustering unit
  const int64_t chunks = (n + kSubChunk - 1) / kSubChunk;
  std::mutex mu;
  RunParallel(chunks, parallel_for, [&](int64_t cb, int64_t ce) {
    const int64_t e0 = cb * kSubChunk, e1 = std::min(n, ce * kSubChunk);
    const auto range = slices.Range(e0, e1);  // (no structured binding: lambdas capture it)
    const int64_t lo = range.first, width = range.second - range.first;
    std::vector<float> mn(static_cast<size_t>(3 * width), kInfF);
    std::vector<float> mx(static_cast<size_t>(3 * width), -kInfF);
    std::vector<WindowValue> win;
    bool overflow = false;
    ForEachSegment(slices, tensor, e0, e1, [&](int64_t e, int64_t len, Run rs, Run) {
      if (overflow) return;
      float* pmn = mn.data() + (rs.value - lo);
      float* pmx = mx.data() + (rs.value - lo);
      if (rs.stride) {
        RegionSegment<true>(rp, data + e, e, len, pmn, pmx, width, win);
      } else {
        RegionSegment<false>(rp, data + e, e, len, pmn, pmx, width, win);
      }
      if (static_cast<int64_t>(win.size()) > rp.max_window_values) overflow = true;
    });
    std::lock_guard<std::mutex> lock(mu);
    if (overflow || rp.overflow ||
        static_cast<int64_t>(rp.window.size() + win.size()) > rp.max_window_values) {
      rp.overflow = true;
      std::vector<WindowValue>().swap(rp.window);
      return;
    }
    rp.window.insert(rp.window.end(), win.begin(), win.end());
    for (int b = 0; b < 3; ++b) {
      float* gmn = rp.regions.mn.data() + b * rp.regions.slices + lo;
      float* gmx = rp.regions.mx.data() + b * rp.regions.slices + lo;
      for (int64_t s = 0; s < width; ++s) {
        gmn[s] = std::min(gmn[s], mn[b * width + s]);
        gmx[s] = std::max(gmx[s], mx[b * width + s]);
      }
    }
  });
}

// ---- pass 3: quantize, encode, measure --------------------------------------------------

// Per-slice parameters of one branch in the layout the kernels read.
struct KernelParams {
  std::vector<float> scale, zf;  // zero point as float
  std::vector<int32_t> zi;
};

struct Partial {
  double signal = 0, split_error = 0, plain_error = 0;
};

struct SegmentArgs {
  const float* x;
  int64_t len;
  const float* t0;
  const float* t1;
  const float* scale[3];
  const float* zf[3];
  const int32_t* zi[3];
  const float* pscale;  // plain
  const float* pzf;
  float qmin, qmax;
  bool is_signed;
  uint8_t* codes[3];    // kCodes: one byte per element (staging)
  float* floats[3];     // FP32 encodings
};

// Scalar element step, shared by the tails of the SIMD loop and the non-SSE2 build.
template <bool kSplit, bool kVecT, bool kVecS, WeightEncoding kEnc, bool kPlain, bool kSignal>
inline void QuantizeOne(const SegmentArgs& a, int64_t k, Partial& acc) {
  const float x = a.x[k];
  const int64_t s = kVecS ? k : 0;
  if (kSignal) acc.signal += static_cast<double>(x) * x;
  const int c = kSplit ? ClusterOfF(x, a.t0[kVecT ? k : 0], a.t1[kVecT ? k : 0]) : 0;
  if (kEnc == WeightEncoding::kFloatSplit) {
    for (int b = 0; b < (kSplit ? 3 : 1); ++b) a.floats[b][k] = (b == c) ? x : 0.0f;
  } else {
    const float sc = a.scale[c][s], zf = a.zf[c][s];
    const float q = std::min(std::max(RoundHalfEven(x / sc) + zf, a.qmin), a.qmax);
    const float dq = (q - zf) * sc;
    const float e = x - dq;
    acc.split_error += static_cast<double>(e) * e;
    if (kEnc == WeightEncoding::kCodes) {
      for (int b = 0; b < (kSplit ? 3 : 1); ++b) {
        const int32_t code = (b == c) ? static_cast<int32_t>(q) : a.zi[b][s];
        a.codes[b][k] = static_cast<uint8_t>(code & 0xFF);
      }
    } else if (kEnc == WeightEncoding::kDequantized) {
      for (int b = 0; b < (kSplit ? 3 : 1); ++b) a.floats[b][k] = (b == c) ? dq : 0.0f;
    } else {
      a.floats[0][k] = dq;
    }
  }
  if (kPlain) {
    const float sc = a.pscale[s], zf = a.pzf[s];
    const float q = std::min(std::max(RoundHalfEven(x / sc) + zf, a.qmin), a.qmax);
    const float e = x - (q - zf) * sc;
    acc.plain_error += static_cast<double>(e) * e;
  }
}

#if defined(__SSE2__)
inline __m128 Select(__m128 m, __m128 a, __m128 b) {
  return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b));
}
// The row kernel rounds with RoundHalfEven4Bounded (transform/round.h): the clamp is a
// no-op there, as x always lies in the range its scale s was chosen from (its branch's, or
// for plain the slice's, widened to include 0), so |x / s| <= qmax - qmin <= 255.
inline __m128d Square2(__m128 e) { return _mm_mul_pd(_mm_cvtps_pd(e), _mm_cvtps_pd(e)); }
inline __m128d SquareHi2(__m128 e) {
  const __m128d h = _mm_cvtps_pd(_mm_movehl_ps(e, e));
  return _mm_mul_pd(h, h);
}
template <bool kVec>
inline __m128 Load4(const float* p, int64_t k) {
  return kVec ? _mm_loadu_ps(p + k) : _mm_set1_ps(p[0]);
}
template <bool kVec>
inline __m128i Load4i(const int32_t* p, int64_t k) {
  return kVec ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + k)) : _mm_set1_epi32(p[0]);
}
#endif

// kSignal: also sum x^2 (not needed when the histogram already gave it).
template <bool kSplit, bool kVecT, bool kVecS, WeightEncoding kEnc, bool kPlain, bool kSignal>
void QuantizeSegment(const SegmentArgs& a, Partial& acc) {
  int64_t k = 0;
#if defined(__SSE2__)
  constexpr int kB = kSplit ? 3 : 1;
  __m128d sig = _mm_setzero_pd(), err = _mm_setzero_pd(), perr = _mm_setzero_pd();
  const __m128 qmin = _mm_set1_ps(a.qmin), qmax = _mm_set1_ps(a.qmax);
  const __m128 ones = _mm_castsi128_ps(_mm_set1_epi32(-1));
  for (; k + 4 <= a.len; k += 4) {
    const __m128 x = _mm_loadu_ps(a.x + k);
    if (kSignal) sig = _mm_add_pd(sig, _mm_add_pd(Square2(x), SquareHi2(x)));
    __m128 m[3];
    if (kSplit) {
      m[0] = _mm_cmple_ps(x, Load4<kVecT>(a.t0, k));
      m[2] = _mm_cmpge_ps(x, Load4<kVecT>(a.t1, k));
      m[1] = _mm_andnot_ps(_mm_or_ps(m[0], m[2]), ones);
    } else {
      m[0] = ones;
    }
    if (kEnc == WeightEncoding::kFloatSplit) {
      for (int b = 0; b < kB; ++b) _mm_storeu_ps(a.floats[b] + k, _mm_and_ps(m[b], x));
    } else {
      __m128 sc, zf;
      if (kSplit) {
        sc = _mm_or_ps(_mm_or_ps(_mm_and_ps(m[0], Load4<kVecS>(a.scale[0], k)),
                                 _mm_and_ps(m[1], Load4<kVecS>(a.scale[1], k))),
                       _mm_and_ps(m[2], Load4<kVecS>(a.scale[2], k)));
        zf = _mm_or_ps(_mm_or_ps(_mm_and_ps(m[0], Load4<kVecS>(a.zf[0], k)),
                                 _mm_and_ps(m[1], Load4<kVecS>(a.zf[1], k))),
                       _mm_and_ps(m[2], Load4<kVecS>(a.zf[2], k)));
      } else {
        sc = Load4<kVecS>(a.scale[0], k);
        zf = Load4<kVecS>(a.zf[0], k);
      }
      const __m128 q = _mm_min_ps(
          _mm_max_ps(_mm_add_ps(RoundHalfEven4(_mm_div_ps(x, sc)), zf), qmin), qmax);
      const __m128 dq = _mm_mul_ps(_mm_sub_ps(q, zf), sc);
      const __m128 e = _mm_sub_ps(x, dq);
      err = _mm_add_pd(err, _mm_add_pd(Square2(e), SquareHi2(e)));
      if (kEnc == WeightEncoding::kCodes) {
        const __m128i qi = _mm_cvttps_epi32(q);
        for (int b = 0; b < kB; ++b) {
          __m128i code = qi;
          if (kSplit) {
            const __m128i mb = _mm_castps_si128(m[b]);
            code = _mm_or_si128(_mm_and_si128(mb, qi),
                                _mm_andnot_si128(mb, Load4i<kVecS>(a.zi[b], k)));
          }
          const __m128i w16 = _mm_packs_epi32(code, code);
          const __m128i w8 = a.is_signed ? _mm_packs_epi16(w16, w16) : _mm_packus_epi16(w16, w16);
          const int32_t word = _mm_cvtsi128_si32(w8);
          std::memcpy(a.codes[b] + k, &word, 4);
        }
      } else if (kEnc == WeightEncoding::kDequantized) {
        for (int b = 0; b < kB; ++b) _mm_storeu_ps(a.floats[b] + k, _mm_and_ps(m[b], dq));
      } else {
        _mm_storeu_ps(a.floats[0] + k, dq);
      }
    }
    if (kPlain) {
      const __m128 sc = Load4<kVecS>(a.pscale, k), zf = Load4<kVecS>(a.pzf, k);
      const __m128 q = _mm_min_ps(
          _mm_max_ps(_mm_add_ps(RoundHalfEven4(_mm_div_ps(x, sc)), zf), qmin), qmax);
      const __m128 e = _mm_sub_ps(x, _mm_mul_ps(_mm_sub_ps(q, zf), sc));
      perr = _mm_add_pd(perr, _mm_add_pd(Square2(e), SquareHi2(e)));
    }
  }
  alignas(16) double t[2];
  _mm_store_pd(t, sig);
  acc.signal += t[0] + t[1];
  _mm_store_pd(t, err);
  acc.split_error += t[0] + t[1];
  _mm_store_pd(t, perr);
  acc.plain_error += t[0] + t[1];
#endif
  for (; k < a.len; ++k) QuantizeOne<kSplit, kVecT, kVecS, kEnc, kPlain, kSignal>(a, k, acc);
}

using SegmentFn = void (*)(const SegmentArgs&, Partial&);

template <bool kSplit, WeightEncoding kEnc, bool kPlain, bool kSignal>
SegmentFn PickKernel4(bool vt, bool vs) {
  if (vt) {
    return vs ? &QuantizeSegment<kSplit, true, true, kEnc, kPlain, kSignal>
              : &QuantizeSegment<kSplit, true, false, kEnc, kPlain, kSignal>;
  }
  return vs ? &QuantizeSegment<kSplit, false, true, kEnc, kPlain, kSignal>
            : &QuantizeSegment<kSplit, false, false, kEnc, kPlain, kSignal>;
}
template <bool kSplit, WeightEncoding kEnc, bool kPlain>
SegmentFn PickKernel3(bool signal, bool vt, bool vs) {
  return signal ? PickKernel4<kSplit, kEnc, kPlain, true>(vt, vs)
                : PickKernel4<kSplit, kEnc, kPlain, false>(vt, vs);
}
template <bool kSplit, WeightEncoding kEnc>
SegmentFn PickKernel2(bool plain, bool signal, bool vt, bool vs) {
  return plain ? PickKernel3<kSplit, kEnc, true>(signal, vt, vs)
               : PickKernel3<kSplit, kEnc, false>(signal, vt, vs);
}
template <bool kSplit>
SegmentFn PickKernel1(WeightEncoding enc, bool plain, bool signal, bool vt, bool vs) {
  switch (enc) {
    case WeightEncoding::kCodes:
      return PickKernel2<kSplit, WeightEncoding::kCodes>(plain, signal, vt, vs);
    case WeightEncoding::kDequantized:
      return PickKernel2<kSplit, WeightEncoding::kDequantized>(plain, signal, vt, vs);
    case WeightEncoding::kDequantizedSum:
      return PickKernel2<kSplit, WeightEncoding::kDequantizedSum>(plain, signal, vt, vs);
    case WeightEncoding::kFloatSplit:
      return PickKernel2<kSplit, WeightEncoding::kFloatSplit>(plain, signal, vt, vs);
  }
  return nullptr;
}
SegmentFn PickKernel(bool split, WeightEncoding enc, bool plain, bool signal, bool vt,
                     bool vs) {
  return split ? PickKernel1<true>(enc, plain, signal, vt, vs)
               : PickKernel1<false>(enc, plain, signal, vt, vs);
}

// Packs one byte per code into `storage_bits` codes per byte (count a multiple of the
// per-byte count, or the tensor's tail).
void PackStaging(const uint8_t* in, int64_t count, int storage_bits, uint8_t* out) {
  int64_t k = 0;
#if defined(__SSE2__)
  // 16 codes per step: nibbles / crumbs are merged inside 16- or 32-bit lanes, then the
  // lanes are narrowed to bytes.
  if (storage_bits == 4) {
    const __m128i lo = _mm_set1_epi16(0x000F), hi = _mm_set1_epi16(0x00F0);
    for (; k + 16 <= count; k += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + k));
      const __m128i t = _mm_or_si128(_mm_and_si128(v, lo), _mm_and_si128(_mm_srli_epi16(v, 4), hi));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + k / 2), _mm_packus_epi16(t, t));
    }
  } else {
    for (; k + 16 <= count; k += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + k));
      __m128i t = _mm_and_si128(v, _mm_set1_epi32(0x3));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 6), _mm_set1_epi32(0xC)));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 12), _mm_set1_epi32(0x30)));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 18), _mm_set1_epi32(0xC0)));
      const __m128i w16 = _mm_packs_epi32(t, t);
      const int32_t word = _mm_cvtsi128_si32(_mm_packus_epi16(w16, w16));
      std::memcpy(out + k / 4, &word, 4);
    }
  }
#endif
  if (storage_bits == 4) {
    for (; k + 2 <= count; k += 2) out[k / 2] = (in[k] & 0xF) | (in[k + 1] << 4);
    if (k < count) out[k / 2] = in[k] & 0xF;
  } else {
    for (; k + 4 <= count; k += 4) {
      out[k / 4] = (in[k] & 3) | ((in[k + 1] & 3) << 2) | ((in[k + 2] & 3) << 4) |
                   ((in[k + 3] & 3) << 6);
    }
    if (k < count) {
      uint8_t v = 0;
      for (int64_t j = k; j < count; ++j) v |= (in[j] & 3) << ((j - k) * 2);
      out[k / 4] = v;
    }
  }
}

// ---- pass 3, channel-last codes: row by row, codes packed directly ---------------------
//
// The LLM layout: per-channel parameters along the last axis (slice = column), clustering
// per tensor or per column, integer codes. Each row of the chunk is walked with the
// per-column arrays; the codes of all three branches are built 16 at a time in bytes and
// packed straight into the output (no staging buffer). The math per element is
// QuantizeOne's (same float operations, x / s kept as a true division: x * (1 / s) rounds
// differently), so codes and error terms are bit-identical; the error sums are accumulated
// in double in a fixed order per chunk, independent of how parallel_for splits the chunks.
// Branch parameters are picked with masks: the middle branch's value XOR-patched with
// precomputed (lower ^ middle) and (upper ^ middle) bit differences.
struct RowArgs {
  const float* x;       // row segment start
  int64_t len;
  int64_t pos;          // element offset of x[0] within the chunk (chunk starts on a byte)
  const float* t0;      // thresholds at this column (kVecT) or the tensor's (broadcast)
  const float* t1;
  const float* scale[3];
  const float* zf[3];
  const float* scale_x[2];  // split: bits of scale[0] ^ scale[1], scale[2] ^ scale[1]
  const float* zf_x[2];     // split: the same for zf
  const uint8_t* zb[3];  // zero point as a code byte (zi & 0xFF), per column
  const float* pscale;  // plain
  const float* pzf;
  float qmin, qmax;
  bool is_signed;
  uint8_t* out[3];      // packed codes of the chunk, per branch
};

#if defined(__GNUC__)
#define SQ_ALWAYS_INLINE __attribute__((always_inline))
#else
#define SQ_ALWAYS_INLINE
#endif

template <int kBits>
inline void PutCode(uint8_t* out, int64_t pos, int32_t code) {
  if (kBits == 8) {
    out[pos] = static_cast<uint8_t>(code & 0xFF);
    return;
  }
  constexpr int kPerByte = 8 / kBits;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  const int shift = static_cast<int>(pos % kPerByte) * kBits;
  const uint8_t v = static_cast<uint8_t>((static_cast<uint32_t>(code) & kMask) << shift);
  if (shift == 0) {
    out[pos / kPerByte] = v;
  } else {
    out[pos / kPerByte] |= v;
  }
}

template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
inline void RowOne(const RowArgs& a, int64_t k, Partial& acc) {
  const float x = a.x[k];
  if (kSignal) acc.signal += static_cast<double>(x) * x;
  const int c = kSplit ? ClusterOfF(x, a.t0[kVecT ? k : 0], a.t1[kVecT ? k : 0]) : 0;
  const float sc = a.scale[c][k], zf = a.zf[c][k];
  const float q = std::min(std::max(RoundHalfEven(x / sc) + zf, a.qmin), a.qmax);
  const float e = x - (q - zf) * sc;
  acc.split_error += static_cast<double>(e) * e;
  for (int b = 0; b < (kSplit ? 3 : 1); ++b) {
    const int32_t code = (b == c) ? static_cast<int32_t>(q) : static_cast<int32_t>(a.zb[b][k]);
    PutCode<kBits>(a.out[b], a.pos + k, code);
  }
  if (kPlain) {
    const float psc = a.pscale[k], pzf = a.pzf[k];
    const float pq = std::min(std::max(RoundHalfEven(x / psc) + pzf, a.qmin), a.qmax);
    const float pe = x - (pq - pzf) * psc;
    acc.plain_error += static_cast<double>(pe) * pe;
  }
}

template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
void QuantizeRow(const RowArgs& a, Partial& acc) {
  constexpr int kPerByte = 8 / kBits;
  int64_t k = 0;
  // Scalar until the packed output is on a byte boundary.
  for (; k < a.len && (a.pos + k) % kPerByte != 0; ++k) {
    RowOne<kSplit, kVecT, kPlain, kSignal, kBits>(a, k, acc);
  }
#if defined(__SSE2__)
  constexpr int kB = kSplit ? 3 : 1;
  // Everything the loop reads, in locals: the code stores may alias `a`, which would make
  // the compiler reload every pointer after each store.
  const float* const xp = a.x;
  const float* const t0 = a.t0;
  const float* const t1 = a.t1;
  const float* const s1 = a.scale[1];
  const float* const z1 = a.zf[1];
  const float* const s0 = kSplit ? a.scale_x[0] : a.scale[0];  // split: XOR differences
  const float* const s2 = a.scale_x[1];
  const float* const z0 = kSplit ? a.zf_x[0] : a.zf[0];
  const float* const z2 = a.zf_x[1];
  const __m128 t0b = _mm_set1_ps(t0[0]), t1b = _mm_set1_ps(t1[0]);  // !kVecT
  const float* const ps = a.pscale;
  const float* const pz = a.pzf;
  const uint8_t* zb[3] = {a.zb[0], a.zb[1], a.zb[2]};
  uint8_t* out[3] = {a.out[0], a.out[1], a.out[2]};
  const bool is_signed = a.is_signed;
  const int64_t len = a.len, pos = a.pos;
  __m128d sig0 = _mm_setzero_pd(), sig1 = sig0, err0 = sig0, err1 = sig0, perr0 = sig0,
          perr1 = sig0;
  const __m128 qmin = _mm_set1_ps(a.qmin), qmax = _mm_set1_ps(a.qmax);
  const __m128i all = _mm_set1_epi32(-1);
  // One group of 4: accumulates, returns the codes (int32) and the branch masks.
  auto group = [&](int64_t kk, __m128d& sig, __m128d& err, __m128d& perr, __m128i& qi,
                   __m128i& m0i, __m128i& m2i) SQ_ALWAYS_INLINE {
    const __m128 x = _mm_loadu_ps(xp + kk);
    if (kSignal) sig = _mm_add_pd(sig, _mm_add_pd(Square2(x), SquareHi2(x)));
    __m128 sc, zf;
    if (kSplit) {
      // Branch masks as ClusterOfF: lower if x <= t0, else upper if x >= t1 (disjoint).
      const __m128 m0 = _mm_cmple_ps(x, kVecT ? _mm_loadu_ps(t0 + kk) : t0b);
      const __m128 m2 = _mm_andnot_ps(m0, _mm_cmpge_ps(x, kVecT ? _mm_loadu_ps(t1 + kk) : t1b));
      // Middle branch's value, XOR-patched where another branch holds the element.
      sc = _mm_xor_ps(_mm_xor_ps(_mm_loadu_ps(s1 + kk), _mm_and_ps(m0, _mm_loadu_ps(s0 + kk))),
                      _mm_and_ps(m2, _mm_loadu_ps(s2 + kk)));
      zf = _mm_xor_ps(_mm_xor_ps(_mm_loadu_ps(z1 + kk), _mm_and_ps(m0, _mm_loadu_ps(z0 + kk))),
                      _mm_and_ps(m2, _mm_loadu_ps(z2 + kk)));
      m0i = _mm_castps_si128(m0);
      m2i = _mm_castps_si128(m2);
    } else {
      sc = _mm_loadu_ps(s0 + kk);
      zf = _mm_loadu_ps(z0 + kk);
    }
    const __m128 q = _mm_min_ps(
        _mm_max_ps(_mm_add_ps(RoundHalfEven4Bounded(_mm_div_ps(x, sc)), zf), qmin), qmax);
    const __m128 e = _mm_sub_ps(x, _mm_mul_ps(_mm_sub_ps(q, zf), sc));
    err = _mm_add_pd(err, _mm_add_pd(Square2(e), SquareHi2(e)));
    qi = _mm_cvttps_epi32(q);
    if (kPlain) {
      const __m128 psc = _mm_loadu_ps(ps + kk), pzf = _mm_loadu_ps(pz + kk);
      const __m128 pq = _mm_min_ps(
          _mm_max_ps(_mm_add_ps(RoundHalfEven4Bounded(_mm_div_ps(x, psc)), pzf), qmin), qmax);
      const __m128 pe = _mm_sub_ps(x, _mm_mul_ps(_mm_sub_ps(pq, pzf), psc));
      perr = _mm_add_pd(perr, _mm_add_pd(Square2(pe), SquareHi2(pe)));
    }
  };
  for (; k + 16 <= len; k += 16) {
    // 16 codes: narrowed to 16 bits per half of 8 (few live registers), then to bytes.
    // Two accumulators per sum break the add dependency chain.
    __m128i qa, qb, m0a, m0b, m2a, m2b;
    group(k, sig0, err0, perr0, qa, m0a, m2a);
    group(k + 4, sig1, err1, perr1, qb, m0b, m2b);
    const __m128i w0 = _mm_packs_epi32(qa, qb);
    const __m128i m0w0 = kSplit ? _mm_packs_epi32(m0a, m0b) : all;
    const __m128i m2w0 = kSplit ? _mm_packs_epi32(m2a, m2b) : all;
    group(k + 8, sig0, err0, perr0, qa, m0a, m2a);
    group(k + 12, sig1, err1, perr1, qb, m0b, m2b);
    const __m128i w1 = _mm_packs_epi32(qa, qb);
    // The low 8 bits of each code (storage keeps the low kBits).
    const __m128i q8 = is_signed ? _mm_packs_epi16(w0, w1) : _mm_packus_epi16(w0, w1);
    __m128i mb[3];
    if (kSplit) {
      mb[0] = _mm_packs_epi16(m0w0, _mm_packs_epi32(m0a, m0b));
      mb[2] = _mm_packs_epi16(m2w0, _mm_packs_epi32(m2a, m2b));
      mb[1] = _mm_andnot_si128(_mm_or_si128(mb[0], mb[2]), all);
    }
    const int64_t byte = (pos + k) / kPerByte;
    for (int b = 0; b < kB; ++b) {
      __m128i v = q8;
      if (kSplit) {
        const __m128i z = _mm_loadu_si128(reinterpret_cast<const __m128i*>(zb[b] + k));
        v = _mm_or_si128(_mm_and_si128(mb[b], q8), _mm_andnot_si128(mb[b], z));
      }
      if (kBits == 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b] + byte), v);
      } else if (kBits == 4) {
        const __m128i t = _mm_or_si128(_mm_and_si128(v, _mm_set1_epi16(0x000F)),
                                       _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi16(0x00F0)));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out[b] + byte), _mm_packus_epi16(t, t));
      } else {
        __m128i t = _mm_and_si128(v, _mm_set1_epi32(0x3));
        t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 6), _mm_set1_epi32(0xC)));
        t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 12), _mm_set1_epi32(0x30)));
        t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 18), _mm_set1_epi32(0xC0)));
        const __m128i w16 = _mm_packs_epi32(t, t);
        const int32_t word = _mm_cvtsi128_si32(_mm_packus_epi16(w16, w16));
        std::memcpy(out[b] + byte, &word, 4);
      }
    }
  }
  alignas(16) double t[2];
  _mm_store_pd(t, _mm_add_pd(sig0, sig1));
  acc.signal += t[0] + t[1];
  _mm_store_pd(t, _mm_add_pd(err0, err1));
  acc.split_error += t[0] + t[1];
  _mm_store_pd(t, _mm_add_pd(perr0, perr1));
  acc.plain_error += t[0] + t[1];
#endif
  for (; k < a.len; ++k) RowOne<kSplit, kVecT, kPlain, kSignal, kBits>(a, k, acc);
}

using RowFn = void (*)(const RowArgs&, Partial&);

template <bool kSplit, bool kVecT, bool kPlain, bool kSignal>
RowFn PickRow4(int bits) {
  switch (bits) {
    case 8: return &QuantizeRow<kSplit, kVecT, kPlain, kSignal, 8>;
    case 4: return &QuantizeRow<kSplit, kVecT, kPlain, kSignal, 4>;
    default: return &QuantizeRow<kSplit, kVecT, kPlain, kSignal, 2>;
  }
}
template <bool kSplit, bool kVecT, bool kPlain>
RowFn PickRow3(bool signal, int bits) {
  return signal ? PickRow4<kSplit, kVecT, kPlain, true>(bits)
                : PickRow4<kSplit, kVecT, kPlain, false>(bits);
}
template <bool kSplit, bool kVecT>
RowFn PickRow2(bool plain, bool signal, int bits) {
  return plain ? PickRow3<kSplit, kVecT, true>(signal, bits)
               : PickRow3<kSplit, kVecT, false>(signal, bits);
}
RowFn PickRow(bool split, bool vec_t, bool plain, bool signal, int bits) {
  if (!split) return PickRow2<false, false>(plain, signal, bits);
  return vec_t ? PickRow2<true, true>(plain, signal, bits)
               : PickRow2<true, false>(plain, signal, bits);
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
  auto non_finite_error = [&]() {
    return absl::InvalidArgumentError(absl::StrCat("weight: non-finite value at element ",
                                                   FirstNonFinite(weight.data, n, parallel_for)));
  };
  const IndexMap slices = SliceMap(weight, config);
  const IndexMap units = UnitMap(weight, config);

  TransformResult result;
  SplitPlan plan;
  std::vector<std::array<float, 6>> shrink;  // quantization-aware ranges (see ShrinksRanges)
  SliceRanges ranges;
  bool ranges_done = false;
  bool have_signal = false;  // signal energy already known (from the histogram)
  double signal_energy = 0;
  // Per-tensor histogram clustering: fused passes (see RegionPass). Pass 1 = histogram
  // (+ finiteness + signal energy), pass 2 = region ranges + window values.
  const bool fused = config.split && units.kind == MapKind::kConst &&
                     config.cluster_method == ClusterMethod::kFast &&
                     n > kKMeansExactMaxElements && !QuantAwareCuts(config);
  if (fused) {
    const absl::Span<const float> values = absl::MakeConstSpan(weight.data, n);
    kmeans_internal::HistogramKMeansState state;
    if (!state.Build(values, parallel_for)) return non_finite_error();
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
    plan = PlanSplit(cl, n, true, config.keep_three_branches);
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
  } else if (config.split) {
    // Clustering reads the values (sorting NaN is undefined): check them first.
    if (FirstNonFinite(weight.data, n, parallel_for) >= 0) return non_finite_error();
    const Clustering cl = ClusterFast(weight, n, units, config.cluster_method, parallel_for,
                                      QuantAwareCuts(config) ? &config.spec : nullptr);
    plan = PlanSplit(cl, n, true, config.keep_three_branches);
    if (plan.split && ShrinksRanges(config)) shrink = cl.shrink;
  }
  if (config.split) {
    result.not_split_reason = plan.not_split_reason;
    result.inertia = plan.inertia;
    result.degenerate_units = plan.degenerate_units;
  }
  const int nb = plan.split ? 3 : 1;
  result.split = plan.split;
  result.num_branches = nb;

  // Pass 2 (unless fused above); for an unsplit tensor also the finiteness check.
  if (!ranges_done &&
      !ComputeSliceRanges(weight.data, n, slices, units, plan, parallel_for, ranges)) {
    return non_finite_error();
  }

  // Cluster summary (an unsplit tensor is reported as cluster 0).
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
  // The branches quantize the shrunk ranges; the plain comparison keeps min/max.
  std::vector<float> branch_mn = ranges.mn, branch_mx = ranges.mx;
  if (!shrink.empty()) ApplyShrink(shrink, plan.degenerate, ranges.slices, branch_mn, branch_mx);

  const bool quantize = config.encoding != WeightEncoding::kFloatSplit;
  const bool plain = config.compute_plain_error && (plan.split || !quantize);
  std::array<KernelParams, 3> kp;
  KernelParams pp;
  const int64_t S = ranges.slices;
  auto fill = [&](KernelParams& k, BranchParams& bp, auto range_of) {
    k.scale.resize(S);
    k.zf.resize(S);
    k.zi.resize(S);
    bp = ParamsLayout(weight, config);
    bp.scales.resize(S);
    bp.zero_points.resize(S);
    for (int64_t s = 0; s < S; ++s) {
      const auto [lo, hi] = range_of(s);
      const QuantParams q = ChooseQuantParams(std::min(lo, 0.0f), std::max(hi, 0.0f), config.spec);
      k.scale[s] = bp.scales[s] = q.scale;
      k.zi[s] = bp.zero_points[s] = q.zero_point;
      k.zf[s] = static_cast<float>(q.zero_point);
    }
  };
  for (int b = 0; b < nb; ++b) {
    BranchParams bp;
    fill(kp[b], bp, [&](int64_t s) {
      return std::make_pair(branch_mn[b * S + s], branch_mx[b * S + s]);
    });
    if (quantize) result.params[b] = std::move(bp);
  }
  if (plain) {
    BranchParams unused;
    fill(pp, unused, [&](int64_t s) {
      float lo = kInfF, hi = -kInfF;
      for (int b = 0; b < nb; ++b) {
        lo = std::min(lo, ranges.mn[b * S + s]);
        hi = std::max(hi, ranges.mx[b * S + s]);
      }
      return std::make_pair(lo, hi);
    });
  }

  // Pass 3, piece by piece: workers fill the piece buffers, then this thread emits them in
  // offset order.
  const bool codes = config.encoding == WeightEncoding::kCodes;
  const int out_branches = config.encoding == WeightEncoding::kDequantizedSum ? 1 : nb;
  result.bytes_per_branch = EncodedBytes(n, config);
  const int64_t total_sub = (n + kSubChunk - 1) / kSubChunk;
  std::vector<Partial> partials(static_cast<size_t>(total_sub));
  const int64_t piece_cap = std::min(n, kPieceElements);
  std::array<std::vector<uint8_t>, 3> piece;
  for (int b = 0; b < out_branches; ++b) {
    piece[b].resize(static_cast<size_t>(EncodedBytes(piece_cap, config)));
  }
  const float neg_inf = -kInfF, pos_inf = kInfF;
  // Channel-last codes (the MatMul [K, N] layout): the row kernel, codes packed directly.
  const bool rows = codes && slices.kind == MapKind::kChannel && slices.ax.I == 1 &&
                    (!plan.split || units.kind == MapKind::kConst ||
                     (units.kind == MapKind::kChannel && units.ax.I == 1));
  std::array<std::vector<uint8_t>, 3> zb;
  std::array<std::vector<float>, 2> scale_x, zf_x;
  RowFn row_fn = nullptr;
  if (rows) {
    for (int b = 0; b < nb; ++b) {
      zb[b].resize(static_cast<size_t>(S));
      for (int64_t s = 0; s < S; ++s) zb[b][s] = static_cast<uint8_t>(kp[b].zi[s] & 0xFF);
    }
    auto xor_bits = [](float a, float b) {
      uint32_t ua, ub;
      std::memcpy(&ua, &a, 4);
      std::memcpy(&ub, &b, 4);
      ua ^= ub;
      float r;
      std::memcpy(&r, &ua, 4);
      return r;
    };
    if (plan.split) {
      for (int j = 0; j < 2; ++j) {
        const int b = j == 0 ? 0 : 2;
        scale_x[j].resize(static_cast<size_t>(S));
        zf_x[j].resize(static_cast<size_t>(S));
        for (int64_t s = 0; s < S; ++s) {
          scale_x[j][s] = xor_bits(kp[b].scale[s], kp[1].scale[s]);
          zf_x[j][s] = xor_bits(kp[b].zf[s], kp[1].zf[s]);
        }
      }
    }
    row_fn = PickRow(plan.split, plan.split && units.kind == MapKind::kChannel, plain,
                     !have_signal, config.storage_bits);
  }
  const int64_t row_len = slices.ax.D;
  auto run_rows = [&](int64_t e0, int64_t e1, int64_t p0, Partial& acc) {
    RowArgs a;
    a.qmin = static_cast<float>(config.spec.qmin());
    a.qmax = static_cast<float>(config.spec.qmax());
    a.is_signed = config.spec.symmetric;
    for (int b = 0; b < 3; ++b) {
      a.out[b] = b < out_branches
                     ? piece[b].data() + PackedBytes(e0 - p0, config.storage_bits)
                     : nullptr;
    }
    const bool vec_t = plan.split && units.kind == MapKind::kChannel;
    int64_t col = e0 % row_len;
    for (int64_t e = e0; e < e1;) {
      const int64_t len = std::min(row_len - col, e1 - e);
      a.x = weight.data + e;
      a.len = len;
      a.pos = e - e0;
      a.t0 = plan.split ? plan.t0.data() + (vec_t ? col : 0) : &neg_inf;
      a.t1 = plan.split ? plan.t1.data() + (vec_t ? col : 0) : &pos_inf;
      for (int b = 0; b < 3; ++b) {
        const int bb = b < nb ? b : 0;
        a.scale[b] = kp[bb].scale.data() + col;
        a.zf[b] = kp[bb].zf.data() + col;
        a.zb[b] = zb[bb].data() + col;
      }
      for (int j = 0; j < 2; ++j) {
        a.scale_x[j] = plan.split ? scale_x[j].data() + col : nullptr;
        a.zf_x[j] = plan.split ? zf_x[j].data() + col : nullptr;
      }
      a.pscale = plain ? pp.scale.data() + col : nullptr;
      a.pzf = plain ? pp.zf.data() + col : nullptr;
      row_fn(a, acc);
      e += len;
      col = 0;
    }
  };
  for (int64_t p0 = 0; p0 < n; p0 += kPieceElements) {
    const int64_t p1 = std::min(n, p0 + kPieceElements);
    const int64_t sub0 = p0 / kSubChunk;
    const int64_t subs = (p1 - p0 + kSubChunk - 1) / kSubChunk;
    if (rows) {
      RunParallel(subs, parallel_for, [&](int64_t cb, int64_t ce) {
        for (int64_t sc = cb; sc < ce; ++sc) {
          const int64_t e0 = p0 + sc * kSubChunk, e1 = std::min(p1, e0 + kSubChunk);
          run_rows(e0, e1, p0, partials[sub0 + sc]);
        }
      });
    } else {
      RunParallel(subs, parallel_for, [&](int64_t cb, int64_t ce) {
        std::array<std::vector<uint8_t>, 3> staging;
        if (codes && config.storage_bits != 8) {
          for (int b = 0; b < out_branches; ++b) staging[b].resize(kSubChunk);
        }
        for (int64_t sc = cb; sc < ce; ++sc) {
          const int64_t e0 = p0 + sc * kSubChunk, e1 = std::min(p1, e0 + kSubChunk);
          Partial& acc = partials[sub0 + sc];
          ForEachSegment(slices, units, e0, e1, [&](int64_t e, int64_t len, Run rs, Run ru) {
            SegmentArgs a;
            a.x = weight.data + e;
            a.len = len;
            a.t0 = plan.split ? plan.t0.data() + ru.value : &neg_inf;
            a.t1 = plan.split ? plan.t1.data() + ru.value : &pos_inf;
            for (int b = 0; b < 3; ++b) {
              const int bb = b < nb ? b : 0;
              a.scale[b] = kp[bb].scale.data() + rs.value;
              a.zf[b] = kp[bb].zf.data() + rs.value;
              a.zi[b] = kp[bb].zi.data() + rs.value;
              a.codes[b] = nullptr;
              a.floats[b] = nullptr;
            }
            a.pscale = plain ? pp.scale.data() + rs.value : nullptr;
            a.pzf = plain ? pp.zf.data() + rs.value : nullptr;
            a.qmin = static_cast<float>(config.spec.qmin());
            a.qmax = static_cast<float>(config.spec.qmax());
            a.is_signed = config.spec.symmetric;
            for (int b = 0; b < out_branches; ++b) {
              if (codes) {
                a.codes[b] = config.storage_bits == 8 ? piece[b].data() + (e - p0)
                                                      : staging[b].data() + (e - e0);
              } else {
                a.floats[b] = reinterpret_cast<float*>(piece[b].data()) + (e - p0);
              }
            }
            PickKernel(plan.split, config.encoding, plain, !have_signal,
                       plan.split && ru.stride, rs.stride)(a, acc);
          });
          if (codes && config.storage_bits != 8) {
            for (int b = 0; b < out_branches; ++b) {
              PackStaging(staging[b].data(), e1 - e0, config.storage_bits,
                          piece[b].data() + PackedBytes(e0 - p0, config.storage_bits));
            }
          }
        }
      });
    }
    const int64_t offset = EncodedBytes(p0, config);
    const int64_t size = EncodedBytes(p1, config) - offset;
    for (int b = 0; b < out_branches; ++b) {
      sink(b, offset, piece[b].data(), static_cast<size_t>(size));
    }
  }
  if (have_signal) result.signal_energy = signal_energy;
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
  return result;
}

// ---- reference --------------------------------------------------------------------------

absl::StatusOr<TransformResult> TransformWeightReference(const WeightView& weight,
                                                         const TransformConfig& config,
                                                         const BranchSink& sink) {
  SQ_RETURN_IF_ERROR(ValidateInputs(weight, config));
  const int64_t n = weight.num_elements();
  for (int64_t k = 0; k < n; ++k) {
    if (!std::isfinite(weight.data[k])) {
      return absl::InvalidArgumentError(absl::StrCat("weight: non-finite value at element ", k));
    }
  }
  const int rank = static_cast<int>(weight.shape.size());
  const BranchParams layout = ParamsLayout(weight, config);
  // Per element: multi-index -> clustering unit and parameter slice, spelled out.
  std::vector<int64_t> unit(n), slice(n);
  int64_t num_slices = 1;
  for (int64_t d : layout.shape) num_slices *= d;
  const int64_t num_units =
      (config.split && config.cluster_per_channel) ? weight.shape[weight.channel_axis] : 1;
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

  TransformResult result;
  std::vector<int> cluster(n, 0);
  int nb = 1;
  std::vector<std::array<float, 6>> unit_shrink;
  std::vector<bool> unit_degenerate;
  if (config.split) {
    std::vector<std::vector<float>> unit_values(num_units);
    for (int64_t e = 0; e < n; ++e) unit_values[unit[e]].push_back(weight.data[e]);
    Clustering cl;
    cl.unit_size = num_units ? n / std::max<int64_t>(num_units, 1) : 0;
    for (const auto& v : unit_values) {
      if (QuantAwareCuts(config)) {
        const QuantAwareSplit q =
            ChooseQuantAwareSplit(v, config.spec, UnitSampleSize(num_units));
        cl.units.push_back(q.clusters);
        cl.shrink.push_back({q.shrink_lo[0], q.shrink_hi[0], q.shrink_lo[1], q.shrink_hi[1],
                             q.shrink_lo[2], q.shrink_hi[2]});
      } else {
        cl.units.push_back(config.cluster_method == ClusterMethod::kReference
                               ? KMeans1DReference(v)
                               : KMeans1D(v));
      }
    }
    const SplitPlan plan = PlanSplit(cl, n, true, config.keep_three_branches);
    if (plan.split && ShrinksRanges(config)) unit_shrink = cl.shrink, unit_degenerate = plan.degenerate;
    result.not_split_reason = plan.not_split_reason;
    result.inertia = plan.inertia;
    result.degenerate_units = plan.degenerate_units;
    if (plan.split) {
      nb = 3;
      for (int64_t e = 0; e < n; ++e) {
        const KMeans1DResult& r = cl.units[unit[e]];
        cluster[e] = plan.degenerate[unit[e]]
                         ? 1
                         : ClusterOf(weight.data[e], r.lower_boundary, r.upper_boundary);
      }
    }
  }
  result.split = nb == 3;
  result.num_branches = nb;

  std::vector<std::vector<float>> branch(nb, std::vector<float>(n, 0.0f));
  for (int64_t e = 0; e < n; ++e) branch[cluster[e]][e] = weight.data[e];

  for (int b = 0; b < nb; ++b) {
    ClusterSummary& cs = result.clusters[b];
    bool any = false;
    for (int64_t e = 0; e < n; ++e) {
      if (cluster[e] != b) continue;
      const float v = weight.data[e];
      cs.min = any ? std::min(cs.min, v) : v;
      cs.max = any ? std::max(cs.max, v) : v;
      any = true;
      ++cs.count;
    }
    cs.min += 0.0f;
    cs.max += 0.0f;
  }

  // Range of a slice: min / max of the branch's values there, zeros included; then, for
  // the quantization-aware split where slices are units, the unit's shrink factors.
  auto choose = [&](const std::vector<float>& values, int b) {
    std::vector<float> lo(num_slices, 0.0f), hi(num_slices, 0.0f);
    std::vector<bool> seen(num_slices, false);
    for (int64_t e = 0; e < n; ++e) {
      const int64_t s = slice[e];
      lo[s] = seen[s] ? std::min(lo[s], values[e]) : values[e];
      hi[s] = seen[s] ? std::max(hi[s], values[e]) : values[e];
      seen[s] = true;
    }
    if (b >= 0 && !unit_shrink.empty()) {
      for (int64_t s = 0; s < num_slices; ++s) {
        if (unit_degenerate[s]) continue;
        lo[s] = std::min(lo[s], 0.0f) * unit_shrink[s][2 * b];
        hi[s] = std::max(hi[s], 0.0f) * unit_shrink[s][2 * b + 1];
      }
    }
    BranchParams bp = layout;
    for (int64_t s = 0; s < num_slices; ++s) {
      const QuantParams q = ChooseQuantParams(lo[s], hi[s], config.spec);
      bp.scales.push_back(q.scale);
      bp.zero_points.push_back(q.zero_point);
    }
    return bp;
  };
  auto param_of = [](const BranchParams& bp, int64_t s) {
    QuantParams q;
    q.scale = bp.scales[s];
    q.zero_point = bp.zero_points[s];
    return q;
  };

  const bool quantize = config.encoding != WeightEncoding::kFloatSplit;
  std::vector<float> total(n, 0.0f);
  std::vector<std::vector<uint8_t>> encoded(nb);
  for (int b = 0; b < nb; ++b) {
    if (!quantize) {
      encoded[b].resize(n * 4);
      std::memcpy(encoded[b].data(), branch[b].data(), n * 4);
      for (int64_t e = 0; e < n; ++e) total[e] += branch[b][e];
      continue;
    }
    const BranchParams bp = choose(branch[b], nb == 3 ? b : -1);
    std::vector<int32_t> q(n);
    std::vector<float> deq(n);
    for (int64_t e = 0; e < n; ++e) {
      q[e] = QuantizeValue(branch[b][e], param_of(bp, slice[e]), config.spec);
      deq[e] = DequantizeValue(q[e], param_of(bp, slice[e]));
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

  for (int64_t e = 0; e < n; ++e) {
    const double x = weight.data[e];
    result.signal_energy += x * x;
    result.split_error_energy += (x - total[e]) * (x - total[e]);
  }
  if (config.compute_plain_error) {
    std::vector<float> whole(weight.data, weight.data + n);
    const BranchParams bp = choose(whole, -1);
    for (int64_t e = 0; e < n; ++e) {
      const QuantParams q = param_of(bp, slice[e]);
      const double d = weight.data[e] -
                       static_cast<double>(DequantizeValue(QuantizeValue(whole[e], q, config.spec), q));
      result.plain_error_energy += d * d;
    }
  }
  result.bytes_per_branch = EncodedBytes(n, config);

  // Emit in 4 MiB pieces (element counts a multiple of 4, so packed pieces align).
  constexpr int64_t kPieceBytes = int64_t{4} << 20;
  for (size_t b = 0; b < encoded.size(); ++b) {
    for (int64_t off = 0; off < static_cast<int64_t>(encoded[b].size()); off += kPieceBytes) {
      const int64_t size = std::min<int64_t>(kPieceBytes, encoded[b].size() - off);
      sink(static_cast<int>(b), off, encoded[b].data() + off, static_cast<size_t>(size));
    }
  }
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
