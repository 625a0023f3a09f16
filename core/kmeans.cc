#include "core/kmeans.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <random>
#include <vector>

namespace sq {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A run of equal-cluster-fate values: one distinct value, or one aggregated histogram bin.
// `lo`/`hi` bound the values the item may hold (equal for a distinct value).
struct Item {
  double n = 0;
  double mean = 0;
  double m2 = 0;  // sum of squared deviations from `mean`
  float lo = 0, hi = 0;
};

uint32_t FloatBits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}
float BitsToFloat(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
// Order-preserving map float -> uint32 (negative: flip all bits; positive: flip sign bit).
inline uint32_t MonotoneKey(uint32_t bits) {
  return bits ^ (static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) | 0x80000000u);
}
float KeyToFloat(uint32_t key) {
  return BitsToFloat((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

KMeans1DResult DegenerateResult(const std::vector<Item>& distinct) {
  KMeans1DResult r;
  r.distinct_clusters = static_cast<int>(distinct.size());
  if (distinct.empty()) return r;  // all zero: nothing to assign
  if (distinct.size() == 1) {
    // Middle only: put the outer centres one unit (or |v|) away so both midpoints lie
    // strictly on either side of v.
    const double v = distinct[0].mean;
    const double d = std::max(1.0, std::fabs(v));
    r.centers = {v - d, v, v + d};
    r.counts = {0, static_cast<int64_t>(distinct[0].n), 0};
  } else {
    // Lower + upper; the empty middle centre sits halfway, so b0, b1 fall strictly between.
    const double a = distinct[0].mean, b = distinct[1].mean;
    r.centers = {a, 0.5 * a + 0.5 * b, b};
    r.counts = {static_cast<int64_t>(distinct[0].n), 0, static_cast<int64_t>(distinct[1].n)};
  }
  r.lower_boundary = 0.5 * (r.centers[0] + r.centers[1]);
  r.upper_boundary = 0.5 * (r.centers[1] + r.centers[2]);
  return r;
}

// Globally optimal partition of sorted items into 3 non-empty contiguous groups, by DP
// over prefix sums with divide & conquer on the monotone optimal split (SSE costs satisfy
// the quadrangle inequality). Returns the cut indices (i, j): [0,i), [i,j), [j,m).
std::pair<size_t, size_t> OptimalThreeCuts(const std::vector<Item>& items) {
  const size_t m = items.size();
  // Centre at the global mean: keeps Q - S^2/W from cancelling catastrophically.
  double total_n = 0, weighted = 0;
  for (const Item& it : items) {
    total_n += it.n;
    weighted += it.n * it.mean;
  }
  const double c = weighted / total_n;
  std::vector<double> W(m + 1, 0), S(m + 1, 0), Q(m + 1, 0);
  for (size_t k = 0; k < m; ++k) {
    const double d = items[k].mean - c;
    W[k + 1] = W[k] + items[k].n;
    S[k + 1] = S[k] + items[k].n * d;
    Q[k + 1] = Q[k] + items[k].m2 + items[k].n * d * d;
  }
  auto cost = [&](size_t i, size_t j) {
    const double w = W[j] - W[i], s = S[j] - S[i];
    return std::max(0.0, (Q[j] - Q[i]) - s * s / w);
  };
  std::vector<double> f2(m, kInf);
  std::vector<size_t> arg(m, 1);
  // f2[j] = min_{1 <= i < j} cost(0, i) + cost(i, j), for j in [2, m-1].
  struct Range {
    size_t jl, jr, il, ir;
  };
  std::vector<Range> stack;
  if (m >= 3) stack.push_back({2, m - 1, 1, m - 2});
  while (!stack.empty()) {
    const Range r = stack.back();
    stack.pop_back();
    if (r.jl > r.jr) continue;
    const size_t mid = r.jl + (r.jr - r.jl) / 2;
    double best = kInf;
    size_t best_i = r.il;
    const size_t hi = std::min(r.ir, mid - 1);
    for (size_t i = r.il; i <= hi; ++i) {
      const double v = cost(0, i) + cost(i, mid);
      if (v < best) {
        best = v;
        best_i = i;
      }
    }
    f2[mid] = best;
    arg[mid] = best_i;
    if (mid > r.jl) stack.push_back({r.jl, mid - 1, r.il, best_i});
    stack.push_back({mid + 1, r.jr, best_i, r.ir});
  }
  double best = kInf;
  size_t best_j = 2;
  for (size_t j = 2; j < m; ++j) {
    const double v = f2[j] + cost(j, m);
    if (v < best) {
      best = v;
      best_j = j;
    }
  }
  return {arg[best_j], best_j};
}

double GroupMean(const std::vector<Item>& items, size_t b, size_t e) {
  double n = 0, s = 0;
  for (size_t k = b; k < e; ++k) {
    n += items[k].n;
    s += items[k].n * items[k].mean;
  }
  return s / n;
}

// Cluster of an item under the float thresholds, or -1 when the item's value range
// straddles a threshold (an aggregated bin that must be expanded).
int ItemCluster(const Item& it, float t0, float t1) {
  const int a = (it.lo <= t0) ? 0 : (it.lo >= t1 ? 2 : 1);
  const int b = (it.hi <= t0) ? 0 : (it.hi >= t1 ? 2 : 1);
  return a == b ? a : -1;
}

// Centres from the optimal cuts, boundaries from the centres; counts and inertia from the
// midpoint rule. Items that straddle (only if expansion gave up) go by their mean.
KMeans1DResult FinishFromItems(const std::vector<Item>& items, size_t i, size_t j,
                               int distinct) {
  KMeans1DResult r;
  r.distinct_clusters = distinct;
  r.centers = {GroupMean(items, 0, i), GroupMean(items, i, j), GroupMean(items, j, items.size())};
  r.lower_boundary = 0.5 * (r.centers[0] + r.centers[1]);
  r.upper_boundary = 0.5 * (r.centers[1] + r.centers[2]);
  const float t0 = LowerThreshold(r.lower_boundary), t1 = UpperThreshold(r.upper_boundary);
  std::vector<int> cl(items.size());
  std::array<double, 3> n{}, s{};
  for (size_t k = 0; k < items.size(); ++k) {
    int c = ItemCluster(items[k], t0, t1);
    if (c < 0) c = items[k].mean <= r.lower_boundary ? 0 : (items[k].mean >= r.upper_boundary ? 2 : 1);
    cl[k] = c;
    n[c] += items[k].n;
    s[c] += items[k].n * items[k].mean;
  }
  std::array<double, 3> mean{};
  for (int c = 0; c < 3; ++c) mean[c] = n[c] > 0 ? s[c] / n[c] : 0;
  double inertia = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const double d = items[k].mean - mean[cl[k]];
    inertia += items[k].m2 + items[k].n * d * d;
  }
  for (int c = 0; c < 3; ++c) r.counts[c] = static_cast<int64_t>(n[c]);
  r.inertia = inertia;
  return r;
}

// Distinct sorted values with multiplicities.
std::vector<Item> DistinctItems(absl::Span<const float> values) {
  std::vector<float> sorted(values.begin(), values.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<Item> items;
  for (size_t k = 0; k < sorted.size();) {
    size_t e = k + 1;
    while (e < sorted.size() && sorted[e] == sorted[k]) ++e;
    Item it;
    it.n = static_cast<double>(e - k);
    it.mean = sorted[k] + 0.0f;  // +0.0f: -0 and +0 are one value
    it.lo = it.hi = sorted[k];
    items.push_back(it);
    k = e;
  }
  return items;
}

// ---- Histogram method --------------------------------------------------------------

constexpr int kNumBins = 1 << 16;
constexpr int64_t kHistogramChunk = 1 << 16;  // fixed work unit of the passes

struct BinStat {
  uint64_t n = 0;
  uint64_t s1 = 0;  // sum of the low 16 raw bits
  uint64_t s2 = 0;  // sum of their squares
};

void RunChunks(int64_t num_chunks, const KMeansParallelFor& parallel_for,
               const std::function<void(int64_t, int64_t)>& fn) {
  if (num_chunks <= 0) return;
  if (parallel_for) {
    parallel_for(num_chunks, fn);
  } else {
    fn(0, num_chunks);
  }
}

Item BinItem(uint32_t bin, const BinStat& st) {
  const uint32_t bits = FloatBits(KeyToFloat(bin << 16));
  const bool negative = (bits & 0x80000000u) != 0;
  const int e = static_cast<int>((bits >> 23) & 0xFF);
  const uint64_t base = (e ? 0x800000u : 0u) | (bits & 0x7F0000u);
  const double ulp = std::ldexp(1.0, std::max(e, 1) - 150);
  Item it;
  it.n = static_cast<double>(st.n);
  const double mean_units = static_cast<double>(base) +
                            static_cast<double>(st.s1) / static_cast<double>(st.n);
  it.mean = (negative ? -mean_units : mean_units) * ulp;
  // n * s2 - s1^2 >= 0 exactly in 128-bit integers; no cancellation.
  const unsigned __int128 num = static_cast<unsigned __int128>(st.n) * st.s2 -
                                static_cast<unsigned __int128>(st.s1) * st.s1;
  it.m2 = static_cast<double>(num) / static_cast<double>(st.n) * ulp * ulp;
  it.lo = KeyToFloat(bin << 16);
  it.hi = KeyToFloat((bin << 16) | 0xFFFFu);
  return it;
}

// Appends `it`, merging with the previous item when both hold the same single value
// (-0 and +0 live in different bins).
void PushItem(std::vector<Item>& items, const Item& it) {
  if (!items.empty() && items.back().lo == items.back().hi && it.lo == it.hi &&
      items.back().lo == it.lo) {
    items.back().n += it.n;
    return;
  }
  items.push_back(it);
}

// Bins whose floats have all exponent bits set (NaN, +-Inf): keys 0x0000..0x007F
// (negative) and 0xFF80..0xFFFF (positive).
bool IsNonFiniteBin(uint32_t bin) { return bin < 0x80u || bin >= 0xFF80u; }

}  // namespace

namespace kmeans_internal {

struct HistogramKMeansState::Impl {
  int64_t n = 0;
  std::vector<BinStat> hist;
  std::vector<uint32_t> bins;       // non-empty, ascending key order = ascending value
  std::vector<uint32_t> to_expand;  // first refinement round
};

HistogramKMeansState::HistogramKMeansState() : impl_(new Impl) {}
HistogramKMeansState::~HistogramKMeansState() { delete impl_; }

bool HistogramKMeansState::Build(absl::Span<const float> values,
                                 const KMeansParallelFor& parallel_for) {
  Impl& s = *impl_;
  const int64_t n = static_cast<int64_t>(values.size());
  s.n = n;
  const int64_t num_chunks = (n + kHistogramChunk - 1) / kHistogramChunk;
  const float* data = values.data();

  // Integer histogram; integer sums make the merge order irrelevant.
  s.hist.assign(kNumBins, BinStat{});
  std::mutex mu;
  RunChunks(num_chunks, parallel_for, [&](int64_t cb, int64_t ce) {
    std::vector<BinStat> local(kNumBins);
    const int64_t b = cb * kHistogramChunk, e = std::min(n, ce * kHistogramChunk);
    for (int64_t k = b; k < e; ++k) {
      uint32_t bits;
      std::memcpy(&bits, data + k, sizeof bits);
      BinStat& st = local[MonotoneKey(bits) >> 16];
      const uint64_t low = bits & 0xFFFFu;
      st.n += 1;
      st.s1 += low;
      st.s2 += low * low;
    }
    std::lock_guard<std::mutex> lock(mu);
    for (int k = 0; k < kNumBins; ++k) {
      s.hist[k].n += local[k].n;
      s.hist[k].s1 += local[k].s1;
      s.hist[k].s2 += local[k].s2;
    }
  });
  s.bins.clear();
  bool finite = true;
  for (uint32_t k = 0; k < kNumBins; ++k) {
    if (!s.hist[k].n) continue;
    finite = finite && !IsNonFiniteBin(k);
    s.bins.push_back(k);
  }
  s.to_expand.clear();
  if (s.bins.size() <= 8) {
    s.to_expand = s.bins;  // few bins: go exact (also settles the distinct-value count)
  } else {
    std::vector<Item> items;
    for (uint32_t k : s.bins) items.push_back(BinItem(k, s.hist[k]));
    const auto cuts = OptimalThreeCuts(items);
    for (size_t cut : {cuts.first, cuts.second}) {
      for (size_t k = (cut >= 2 ? cut - 2 : 0); k < std::min(s.bins.size(), cut + 2); ++k) {
        s.to_expand.push_back(s.bins[k]);
      }
    }
  }
  std::sort(s.to_expand.begin(), s.to_expand.end());
  s.to_expand.erase(std::unique(s.to_expand.begin(), s.to_expand.end()), s.to_expand.end());
  return finite;
}

double HistogramKMeansState::SumOfSquares() const {
  // x = +-(base + low) * ulp per value of a bin, so sum x^2 = ulp^2 * (n base^2 +
  // 2 base s1 + s2), exact in 128-bit integers; bins are added in key order.
  double total = 0;
  for (uint32_t bin : impl_->bins) {
    const BinStat& st = impl_->hist[bin];
    const uint32_t bits = FloatBits(KeyToFloat(bin << 16));
    const int e = static_cast<int>((bits >> 23) & 0xFF);
    const unsigned __int128 base = (e ? 0x800000u : 0u) | (bits & 0x7F0000u);
    const unsigned __int128 q = st.n * base * base + 2 * base * st.s1 + st.s2;
    total += std::ldexp(static_cast<double>(q), 2 * (std::max(e, 1) - 150));
  }
  return total;
}

std::vector<std::pair<float, float>> HistogramKMeansState::Windows() const {
  // Runs of expanded bins that are consecutive among the non-empty bins; the float range
  // from the first bin's low edge to the last bin's high edge holds nothing else.
  std::vector<std::pair<float, float>> out;
  const std::vector<uint32_t>& bins = impl_->bins;
  const std::vector<uint32_t>& ex = impl_->to_expand;
  size_t pos = 0;  // index in bins
  for (size_t k = 0; k < ex.size();) {
    while (bins[pos] != ex[k]) ++pos;
    size_t e = k + 1;
    while (e < ex.size() && pos + (e - k) < bins.size() && bins[pos + (e - k)] == ex[e]) ++e;
    out.push_back({KeyToFloat(ex[k] << 16), KeyToFloat((ex[e - 1] << 16) | 0xFFFFu)});
    pos += e - k;
    k = e;
  }
  return out;
}

KMeans1DResult HistogramKMeansState::Finish(absl::Span<const float> values,
                                            const KMeansParallelFor& parallel_for,
                                            const std::vector<float>* window_values) {
  const Impl& s = *impl_;
  const int64_t n = s.n;
  const int64_t num_chunks = (n + kHistogramChunk - 1) / kHistogramChunk;
  const float* data = values.data();
  const std::vector<BinStat>& hist = s.hist;
  const std::vector<uint32_t>& bins = s.bins;
  std::mutex mu;
  // expanded[bin]: per-value counts (indexed by the low 16 key bits) of an expanded bin;
  // empty when the bin is aggregated.
  std::vector<std::vector<uint32_t>> expanded(kNumBins);
  std::vector<uint32_t> to_expand = s.to_expand;

  KMeans1DResult result;
  for (int round = 0;; ++round) {
    // Exact per-value counts inside newly expanded bins: from the caller's window values
    // in round 0 when given (they hold every value of those bins), else a pass.
    std::sort(to_expand.begin(), to_expand.end());
    to_expand.erase(std::unique(to_expand.begin(), to_expand.end()), to_expand.end());
    std::vector<uint8_t> slot(kNumBins, 0);
    std::vector<uint32_t> new_bins;
    for (uint32_t k : to_expand) {
      if (expanded[k].empty() && new_bins.size() < 255) {
        new_bins.push_back(k);
        slot[k] = static_cast<uint8_t>(new_bins.size());
      }
    }
    to_expand.clear();
    if (!new_bins.empty()) {
      std::vector<std::vector<uint32_t>> merged(new_bins.size(),
                                                std::vector<uint32_t>(1 << 16, 0));
      if (round == 0 && window_values != nullptr) {
        for (float v : *window_values) {
          const uint32_t key = MonotoneKey(FloatBits(v));
          const uint32_t sl = slot[key >> 16];
          if (sl) ++merged[sl - 1][key & 0xFFFFu];
        }
      } else {
        RunChunks(num_chunks, parallel_for, [&](int64_t cb, int64_t ce) {
          std::vector<uint32_t> local(new_bins.size() << 16, 0);
          const int64_t b = cb * kHistogramChunk, e = std::min(n, ce * kHistogramChunk);
          for (int64_t k = b; k < e; ++k) {
            uint32_t bits;
            std::memcpy(&bits, data + k, sizeof bits);
            const uint32_t key = MonotoneKey(bits);
            const uint32_t sl = slot[key >> 16];
            if (sl) ++local[((sl - 1) << 16) | (key & 0xFFFFu)];
          }
          std::lock_guard<std::mutex> lock(mu);
          for (size_t x = 0; x < new_bins.size(); ++x) {
            for (uint32_t low = 0; low < (1u << 16); ++low) {
              merged[x][low] += local[(x << 16) | low];
            }
          }
        });
      }
      for (size_t x = 0; x < new_bins.size(); ++x) expanded[new_bins[x]] = std::move(merged[x]);
    }

    std::vector<Item> items;
    std::vector<int> item_bin;  // bin of an aggregated item, -1 for a distinct value
    for (uint32_t k : bins) {
      if (expanded[k].empty()) {
        items.push_back(BinItem(k, hist[k]));
        item_bin.push_back(static_cast<int>(k));
        continue;
      }
      for (uint32_t low = 0; low < (1u << 16); ++low) {
        const uint32_t c = expanded[k][low];
        if (!c) continue;
        Item it;
        it.n = c;
        it.lo = it.hi = KeyToFloat((k << 16) | low);
        it.mean = it.lo + 0.0f;
        const size_t before = items.size();
        PushItem(items, it);
        if (items.size() > before) item_bin.push_back(-1);
      }
    }
    // An aggregated bin exists only when more than 8 bins are non-empty, which means at
    // least 7 distinct values; otherwise every item is one distinct value.
    if (items.size() < 3) return DegenerateResult(items);
    const auto cuts = OptimalThreeCuts(items);
    result = FinishFromItems(items, cuts.first, cuts.second, 3);
    // A boundary inside an aggregated bin: expand it and solve again.
    const float t0 = LowerThreshold(result.lower_boundary);
    const float t1 = UpperThreshold(result.upper_boundary);
    for (size_t k = 0; k < items.size(); ++k) {
      if (item_bin[k] >= 0 && ItemCluster(items[k], t0, t1) < 0) {
        to_expand.push_back(static_cast<uint32_t>(item_bin[k]));
      }
    }
    if (to_expand.empty() || round >= 4) break;
  }
  return result;
}

}  // namespace kmeans_internal

namespace {

KMeans1DResult HistogramKMeans(absl::Span<const float> values,
                               const KMeansParallelFor& parallel_for) {
  kmeans_internal::HistogramKMeansState state;
  state.Build(values, parallel_for);  // callers pass finite values
  return state.Finish(values, parallel_for, nullptr);
}

// Uniform double in [0, 1) from the top 53 bits: std::uniform_real_distribution's output
// is implementation-defined, this is not.
double Uniform01(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace

float LowerThreshold(double b) {
  if (!(b < static_cast<double>(FLT_MAX))) return std::numeric_limits<float>::infinity();
  if (b < -static_cast<double>(FLT_MAX)) return -std::numeric_limits<float>::infinity();
  float f = static_cast<float>(b);
  if (static_cast<double>(f) > b) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

float UpperThreshold(double b) {
  if (!(b > -static_cast<double>(FLT_MAX))) return -std::numeric_limits<float>::infinity();
  if (b > static_cast<double>(FLT_MAX)) return std::numeric_limits<float>::infinity();
  float f = static_cast<float>(b);
  if (static_cast<double>(f) < b) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

double AssignmentInertia(absl::Span<const float> values, double lower_boundary,
                         double upper_boundary) {
  std::array<double, 3> n{}, s{};
  for (float w : values) {
    const int c = ClusterOf(w, lower_boundary, upper_boundary);
    n[c] += 1;
    s[c] += w;
  }
  std::array<double, 3> mean{};
  for (int c = 0; c < 3; ++c) mean[c] = n[c] > 0 ? s[c] / n[c] : 0;
  double inertia = 0;
  for (float w : values) {
    const double d = w - mean[ClusterOf(w, lower_boundary, upper_boundary)];
    inertia += d * d;
  }
  return inertia;
}

KMeans1DResult KMeans1DExact(absl::Span<const float> values) {
  std::vector<Item> items = DistinctItems(values);
  if (items.size() < 3) return DegenerateResult(items);
  const auto cuts = OptimalThreeCuts(items);
  return FinishFromItems(items, cuts.first, cuts.second, 3);
}

KMeans1DResult KMeans1DHistogram(absl::Span<const float> values) {
  return HistogramKMeans(values, nullptr);
}

KMeans1DResult KMeans1D(absl::Span<const float> values) {
  return KMeans1DParallel(values, nullptr);
}

KMeans1DResult KMeans1DParallel(absl::Span<const float> values,
                                const KMeansParallelFor& parallel_for) {
  if (static_cast<int64_t>(values.size()) <= kKMeansExactMaxElements) {
    return KMeans1DExact(values);
  }
  return HistogramKMeans(values, parallel_for);
}

KMeans1DResult KMeans1DReference(absl::Span<const float> values, uint64_t seed) {
  {
    std::vector<Item> distinct = DistinctItems(values);
    if (distinct.size() < 3) return DegenerateResult(distinct);
  }
  const size_t n = values.size();
  std::mt19937_64 rng(seed);
  // Greedy k-means++ seeding: 2 + floor(ln k) candidates per step, keep the one that
  // lowers the potential most.
  constexpr int kClusters = 3;
  const int candidates = 2 + static_cast<int>(std::log(static_cast<double>(kClusters)));
  std::vector<double> centers;
  centers.push_back(values[std::min(n - 1, static_cast<size_t>(Uniform01(rng) * n))]);
  std::vector<double> d2(n);
  for (size_t k = 0; k < n; ++k) d2[k] = (values[k] - centers[0]) * (values[k] - centers[0]);
  while (static_cast<int>(centers.size()) < kClusters) {
    double total = 0;
    for (double v : d2) total += v;
    double best_potential = kInf;
    double best_center = 0;
    for (int c = 0; c < candidates; ++c) {
      const double target = Uniform01(rng) * total;
      double cum = 0;
      size_t pick = n;
      for (size_t k = 0; k < n; ++k) {
        cum += d2[k];
        if (d2[k] > 0 && cum > target) {
          pick = k;
          break;
        }
      }
      if (pick == n) {  // rounding at the top end: take the last point with weight
        for (size_t k = n; k-- > 0;) {
          if (d2[k] > 0) {
            pick = k;
            break;
          }
        }
      }
      const double cand = values[pick];
      double potential = 0;
      for (size_t k = 0; k < n; ++k) {
        potential += std::min(d2[k], (values[k] - cand) * (values[k] - cand));
      }
      if (potential < best_potential) {
        best_potential = potential;
        best_center = cand;
      }
    }
    centers.push_back(best_center);
    for (size_t k = 0; k < n; ++k) {
      d2[k] = std::min(d2[k], (values[k] - best_center) * (values[k] - best_center));
    }
  }
  std::sort(centers.begin(), centers.end());

  // Lloyd with the midpoint assignment rule.
  const auto [mn, mx] = std::minmax_element(values.begin(), values.end());
  const double tolerance = 1e-4 * (static_cast<double>(*mx) - *mn);
  for (int iter = 0; iter < 300; ++iter) {
    const double b0 = 0.5 * (centers[0] + centers[1]), b1 = 0.5 * (centers[1] + centers[2]);
    std::array<double, 3> cnt{}, sum{};
    for (float w : values) {
      const int c = ClusterOf(w, b0, b1);
      cnt[c] += 1;
      sum[c] += w;
    }
    double move = 0;
    for (int c = 0; c < 3; ++c) {
      const double nc = cnt[c] > 0 ? sum[c] / cnt[c] : centers[c];  // empty: keep
      move = std::max(move, std::fabs(nc - centers[c]));
      centers[c] = nc;
    }
    std::sort(centers.begin(), centers.end());
    if (move <= tolerance) break;
  }

  KMeans1DResult r;
  r.distinct_clusters = 3;
  r.centers = {centers[0], centers[1], centers[2]};
  r.lower_boundary = 0.5 * (centers[0] + centers[1]);
  r.upper_boundary = 0.5 * (centers[1] + centers[2]);
  for (float w : values) ++r.counts[ClusterOf(w, r.lower_boundary, r.upper_boundary)];
  r.inertia = AssignmentInertia(values, r.lower_boundary, r.upper_boundary);
  return r;
}


}  // namespace sq
