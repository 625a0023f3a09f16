#include "core/transform/rounding.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/transform/common.h"
#include "core/transform/round.h"

namespace sq {
namespace transform {
namespace {

// 2^-12: bin 0 ends there; bins 1.. are four per octave from it.
constexpr uint32_t kFirstExponent = 127 - 12;

// Slices per task of the histogram pass: a [K, N] weight is read 64 columns (256 bytes)
// of a row at a time.
constexpr int64_t kTileSlices = 64;

}  // namespace

int RoundingBin(float d) {
  if (!(d < kMaxRoundingOffset)) return -1;
  uint32_t bits;
  std::memcpy(&bits, &d, 4);
  const uint32_t exponent = bits >> 23;  // d >= 0
  if (exponent < kFirstExponent) return 0;
  return static_cast<int>((exponent - kFirstExponent) * 4 + ((bits >> 21) & 3) + 1);
}

float RoundingBinEdge(int k) {
  if (k <= 0) return std::ldexp(1.0f, -12);
  const int octave = (k - 1) / 4, quarter = (k - 1) % 4;
  return std::ldexp(1.0f + 0.25f * static_cast<float>(quarter + 1), octave - 12);
}

int RoundingBinLimit(int64_t slice_elements) {
  const double d = 2.0 / std::sqrt(static_cast<double>(std::max<int64_t>(slice_elements, 1)));
  if (d >= kMaxRoundingOffset) return kRoundingBins - 1;
  return RoundingBin(static_cast<float>(d));
}

void AccumulateRounding(float x, float scale, float zero, float qmin, float qmax, int bin_limit,
                        SliceRounding& st) {
  const float v = x / scale;
  const float rq = RoundHalfEven(v);
  const float u = rq + zero;
  const float q = std::min(std::max(u, qmin), qmax);
  st.r += static_cast<double>(q - zero) * scale - x;
  const float f = v - rq;  // in [-0.5, 0.5]
  if (f > 0.0f && u >= qmin && u < qmax) {
    const int k = RoundingBin(0.5f - f);
    if (k >= 0 && k <= bin_limit) {
      st.up_r[k] += scale;
      st.up_cost[k] += static_cast<double>(scale) * scale * (1.0 - 2.0 * f);
    }
  } else if (f < 0.0f && u > qmin && u <= qmax) {
    const int k = RoundingBin(0.5f + f);
    if (k >= 0 && k <= bin_limit) {
      st.down_r[k] -= scale;
      st.down_cost[k] += static_cast<double>(scale) * scale * (1.0 + 2.0 * f);
    }
  }
}

float ChooseOffset(const SliceRounding& st) {
  if (st.r == 0) return 0.0f;
  const bool up = st.r < 0;
  const auto& dr = up ? st.up_r : st.down_r;
  const auto& dc = up ? st.up_cost : st.down_cost;
  double r = st.r, cost = 0;
  double best = kMeanToSpreadSq * r * r;
  int best_k = -1;
  for (int k = 0; k < kRoundingBins; ++k) {
    r += dr[k];
    cost += dc[k];
    const double j = cost + kMeanToSpreadSq * r * r;
    if (j < best) {
      best = j;
      best_k = k;
    }
  }
  if (best_k < 0) return 0.0f;
  return up ? RoundingBinEdge(best_k) : -RoundingBinEdge(best_k);
}

std::vector<float> ChooseRoundingOffsets(const WeightView& weight, const TransformConfig& config,
                                         const IndexMap& slices, const IndexMap& units,
                                         const SplitPlan& plan, const BranchKernels& kernels,
                                         const ParallelFor& parallel_for) {
  const AxisSplit ax = slices.ax;
  std::vector<float> offsets(static_cast<size_t>(ax.D), 0.0f);
  if (slices.kind != MapKind::kChannel || !kernels.quantize) return offsets;
  const float qmin = static_cast<float>(config.spec.qmin());
  const float qmax = static_cast<float>(config.spec.qmax());
  const int limit = RoundingBinLimit(ax.O * ax.I);
  // Per-channel clustering runs along the same axis as the slices; otherwise one unit.
  const bool unit_is_slice = units.kind == MapKind::kChannel;
  const bool middle_only = config.balance_middle_only;
  const int64_t tiles = (ax.D + kTileSlices - 1) / kTileSlices;
  RunParallel(tiles, parallel_for, [&](int64_t tb, int64_t te) {
    std::vector<SliceRounding> st(static_cast<size_t>(kTileSlices));
    for (int64_t t = tb; t < te; ++t) {
      const int64_t d0 = t * kTileSlices, d1 = std::min(ax.D, d0 + kTileSlices);
      std::fill(st.begin(), st.end(), SliceRounding{});
      for (int64_t o = 0; o < ax.O; ++o) {
        for (int64_t d = d0; d < d1; ++d) {
          const float* x = weight.data + (o * ax.D + d) * ax.I;
          SliceRounding& s = st[static_cast<size_t>(d - d0)];
          if (!plan.split) {
            const float sc = kernels.kp[0].scale[d], zf = kernels.kp[0].zf[d];
            for (int64_t i = 0; i < ax.I; ++i) AccumulateRounding(x[i], sc, zf, qmin, qmax, limit, s);
            continue;
          }
          const int64_t u = unit_is_slice ? d : 0;
          const float t0 = plan.t0[u], t1 = plan.t1[u];
          for (int64_t i = 0; i < ax.I; ++i) {
            const int b = ClusterOfF(x[i], t0, t1);
            if (middle_only && b != 1) continue;
            AccumulateRounding(x[i], kernels.kp[b].scale[d], kernels.kp[b].zf[d], qmin, qmax,
                               limit, s);
          }
        }
      }
      for (int64_t d = d0; d < d1; ++d) offsets[d] = ChooseOffset(st[static_cast<size_t>(d - d0)]);
    }
  });
  return offsets;
}

}  // namespace transform
}  // namespace sq
