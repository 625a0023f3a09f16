#include "core/transform/rounding.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/transform/common.h"
#include "core/transform/round.h"

namespace sq {
namespace transform {
namespace {

// 2^-12: bin 0 ends there; bins 1.. are four per octave from it.
constexpr uint32_t kFirstExponent = 127 - 12;

// Slices per task of the histogram pass: a [K, N] weight is read 256 columns (1 KiB)
// of a row at a time.
constexpr int64_t kTileSlices = 256;

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
  const double d = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(slice_elements, 1)));
  if (d >= kMaxRoundingOffset) return kRoundingBins - 1;
  return RoundingBin(static_cast<float>(d));
}

namespace {

// The histogram part of AccumulateRounding for an element whose code can move: f is
// v - round(v), u the unsaturated code.
inline void AddCandidate(float f, float u, float scale, float qmin, float qmax, int bin_limit,
                         SliceRounding& st) {
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

}  // namespace

void AccumulateRounding(float x, float scale, float zero, float qmin, float qmax, int bin_limit,
                        SliceRounding& st) {
  const float v = x / scale;
  const float rq = RoundHalfEven(v);
  const float u = rq + zero;
  const float q = std::min(std::max(u, qmin), qmax);
  st.r += static_cast<double>(q - zero) * scale - x;
  AddCandidate(v - rq, u, scale, qmin, qmax, bin_limit, st);
}

namespace {

#if defined(__SSE2__)
// AccumulateRounding for four elements, lane j into *st[j] (lanes may share a slice: they
// are added in lane order), with the same float and double operations; `keep` lanes
// (all-ones) count, others add nothing. Only elements near a rounding midpoint (d below
// the limit's edge, within about 1 / sqrt(n) of it) leave the vector path.
inline void Accumulate4(__m128 x, __m128 sc, __m128 zf, __m128 keep, __m128 qmin, __m128 qmax,
                        __m128 dlim, int bin_limit, SliceRounding* const st[4]) {
  const __m128 v = _mm_div_ps(x, sc);
  const __m128 rq = RoundHalfEven4(v);
  const __m128 u = _mm_add_ps(rq, zf);
  const __m128 q = _mm_min_ps(_mm_max_ps(u, qmin), qmax);
  const __m128 dq = _mm_sub_ps(q, zf);
  const __m128d lo = _mm_sub_pd(_mm_mul_pd(_mm_cvtps_pd(dq), _mm_cvtps_pd(sc)), _mm_cvtps_pd(x));
  const __m128d hi = _mm_sub_pd(_mm_mul_pd(_mm_cvtps_pd(_mm_movehl_ps(dq, dq)),
                                           _mm_cvtps_pd(_mm_movehl_ps(sc, sc))),
                                _mm_cvtps_pd(_mm_movehl_ps(x, x)));
  const int kept = _mm_movemask_ps(keep);
  alignas(16) double t[4];
  _mm_store_pd(t, lo);
  _mm_store_pd(t + 2, hi);
  for (int j = 0; j < 4; ++j) {
    if (kept >> j & 1) st[j]->r += t[j];
  }
  // Candidates: 0.5 - |f| < dlim (a bin within the limit), f != 0.
  const __m128 f = _mm_sub_ps(v, rq);
  const __m128 abs_f = _mm_andnot_ps(_mm_set1_ps(-0.0f), f);
  const __m128 near = _mm_and_ps(_mm_cmplt_ps(_mm_sub_ps(_mm_set1_ps(0.5f), abs_f), dlim),
                                 _mm_cmpgt_ps(abs_f, _mm_setzero_ps()));
  const int cand = _mm_movemask_ps(_mm_and_ps(near, keep));
  if (cand == 0) return;
  alignas(16) float fa[4], ua[4], sa[4];
  _mm_store_ps(fa, f);
  _mm_store_ps(ua, u);
  _mm_store_ps(sa, sc);
  float qn, qx;
  _mm_store_ss(&qn, qmin);
  _mm_store_ss(&qx, qmax);
  for (int j = 0; j < 4; ++j) {
    if (cand >> j & 1) AddCandidate(fa[j], ua[j], sa[j], qn, qx, bin_limit, *st[j]);
  }
}
#endif

}  // namespace

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
  const auto& kp = kernels.kp;
  const int nb = plan.split ? 3 : 1;
  // One element, scalar (the reference's step): its branch, then AccumulateRounding.
  auto one = [&](float x, int64_t d, SliceRounding& s) {
    int b = 0;
    if (plan.split) {
      const int64_t u = unit_is_slice ? d : 0;
      b = ClusterOfF(x, plan.t0[u], plan.t1[u]);
      if (middle_only && b != 1) return;
    }
    AccumulateRounding(x, kp[b].scale[d], kp[b].zf[d], qmin, qmax, limit, s);
  };
  RunParallel(tiles, parallel_for, [&](int64_t tb, int64_t te) {
    std::vector<SliceRounding> st(static_cast<size_t>(kTileSlices));
#if defined(__SSE2__)
    const __m128 vqmin = _mm_set1_ps(qmin), vqmax = _mm_set1_ps(qmax);
    const __m128 dlim = _mm_set1_ps(RoundingBinEdge(limit));
    const __m128 ones = _mm_castsi128_ps(_mm_set1_epi32(-1));
    // Branch masks of x (ClusterOfF) and the branch's scale and zero point per lane.
    auto select = [&](__m128 x, __m128 t0, __m128 t1, const __m128 s[3], const __m128 z[3],
                      __m128& sc, __m128& zf, __m128& keep) {
      if (nb == 1) {
        sc = s[0];
        zf = z[0];
        keep = ones;
        return;
      }
      const __m128 m0 = _mm_cmple_ps(x, t0);
      const __m128 m2 = _mm_andnot_ps(m0, _mm_cmpge_ps(x, t1));
      const __m128 m1 = _mm_andnot_ps(_mm_or_ps(m0, m2), ones);
      sc = _mm_or_ps(_mm_or_ps(_mm_and_ps(m0, s[0]), _mm_and_ps(m1, s[1])), _mm_and_ps(m2, s[2]));
      zf = _mm_or_ps(_mm_or_ps(_mm_and_ps(m0, z[0]), _mm_and_ps(m1, z[1])), _mm_and_ps(m2, z[2]));
      keep = middle_only ? m1 : ones;
      // Lanes of an excluded branch still divide: give them the middle's scale (never 0).
      if (middle_only) sc = _mm_or_ps(_mm_and_ps(m1, sc), _mm_andnot_ps(m1, s[1]));
    };
#endif
    for (int64_t t = tb; t < te; ++t) {
      const int64_t d0 = t * kTileSlices, d1 = std::min(ax.D, d0 + kTileSlices);
      std::fill(st.begin(), st.end(), SliceRounding{});
      for (int64_t o = 0; o < ax.O; ++o) {
        if (ax.I == 1) {
          // Channel last ([K, N]): a row's run of slices, four slices per step.
          const float* x = weight.data + o * ax.D;
          int64_t d = d0;
#if defined(__SSE2__)
          for (; d + 4 <= d1; d += 4) {
            __m128 s[3], z[3];
            for (int b = 0; b < nb; ++b) {
              s[b] = _mm_loadu_ps(kp[b].scale.data() + d);
              z[b] = _mm_loadu_ps(kp[b].zf.data() + d);
            }
            const __m128 xv = _mm_loadu_ps(x + d);
            __m128 t0 = xv, t1 = xv, sc, zf, keep;
            if (plan.split) {
              t0 = unit_is_slice ? _mm_loadu_ps(plan.t0.data() + d) : _mm_set1_ps(plan.t0[0]);
              t1 = unit_is_slice ? _mm_loadu_ps(plan.t1.data() + d) : _mm_set1_ps(plan.t1[0]);
            }
            select(xv, t0, t1, s, z, sc, zf, keep);
            SliceRounding* const lanes[4] = {&st[d - d0], &st[d - d0 + 1], &st[d - d0 + 2],
                                             &st[d - d0 + 3]};
            Accumulate4(xv, sc, zf, keep, vqmin, vqmax, dlim, limit, lanes);
          }
#endif
          for (; d < d1; ++d) one(x[d], d, st[static_cast<size_t>(d - d0)]);
          continue;
        }
        for (int64_t d = d0; d < d1; ++d) {
          // A slice's run of I elements (channel first, or the middle of the shape).
          const float* x = weight.data + (o * ax.D + d) * ax.I;
          SliceRounding& sr = st[static_cast<size_t>(d - d0)];
          int64_t i = 0;
#if defined(__SSE2__)
          __m128 s[3], z[3];
          for (int b = 0; b < nb; ++b) {
            s[b] = _mm_set1_ps(kp[b].scale[d]);
            z[b] = _mm_set1_ps(kp[b].zf[d]);
          }
          const int64_t u = unit_is_slice ? d : 0;
          const __m128 t0 = _mm_set1_ps(plan.split ? plan.t0[u] : 0.0f);
          const __m128 t1 = _mm_set1_ps(plan.split ? plan.t1[u] : 0.0f);
          SliceRounding* const lanes[4] = {&sr, &sr, &sr, &sr};
          for (; i + 4 <= ax.I; i += 4) {
            const __m128 xv = _mm_loadu_ps(x + i);
            __m128 sc, zf, keep;
            select(xv, t0, t1, s, z, sc, zf, keep);
            Accumulate4(xv, sc, zf, keep, vqmin, vqmax, dlim, limit, lanes);
          }
#endif
          for (; i < ax.I; ++i) one(x[i], d, sr);
        }
      }
      for (int64_t d = d0; d < d1; ++d) offsets[d] = ChooseOffset(st[static_cast<size_t>(d - d0)]);
    }
  });
  return offsets;
}

}  // namespace transform
}  // namespace sq
