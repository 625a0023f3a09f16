#include "core/transform/ranges.h"

#include <algorithm>
#include <atomic>
#include <mutex>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/transform/inputs.h"

namespace sq {
namespace transform {
namespace {

// Reduces x[0, len) into mn/mx (arrays of `branches` rows with row stride `stride`); slice
// index advances with the element when kVecS. Thresholds per element when kVecT.
// Returns whether a NaN was read (min/max drop NaNs); an infinity shows as -inf in a min
// or +inf in a max, which finite data and the +inf / -inf starting values never give.
template <bool kSplit, bool kVecT, bool kVecS>
bool ReduceSegment(const float* x, int64_t len, const float* t0, const float* t1, float* mn,
                   float* mx, int64_t stride) {
  int64_t k = 0;
  bool nan = false;
#if defined(__SSE2__)
  __m128 unordered = _mm_setzero_ps();
  if (!kVecS) {
    __m128 vmn[3], vmx[3];
    for (int b = 0; b < 3; ++b) {
      vmn[b] = _mm_set1_ps(kInfF);
      vmx[b] = _mm_set1_ps(-kInfF);
    }
    const __m128 inf = _mm_set1_ps(kInfF), ninf = _mm_set1_ps(-kInfF);
    for (; k + 4 <= len; k += 4) {
      const __m128 v = _mm_loadu_ps(x + k);
      unordered = _mm_or_ps(unordered, _mm_cmpunord_ps(v, v));
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
      unordered = _mm_or_ps(unordered, _mm_cmpunord_ps(v, v));
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
  nan = _mm_movemask_ps(unordered) != 0;
#endif
  for (; k < len; ++k) {
    const float v = x[k];
    nan |= v != v;
    const int64_t s = kVecS ? k : 0;
    const int b = kSplit ? ClusterOfF(v, t0[kVecT ? k : 0], t1[kVecT ? k : 0]) : 0;
    float& lo = mn[b * stride + s];
    float& hi = mx[b * stride + s];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  return nan;
}

template <bool kSplit>
bool ReduceDispatch(const float* x, int64_t len, const float* t0, const float* t1,
                    bool vec_t, bool vec_s, float* mn, float* mx, int64_t stride) {
  if (vec_t) {
    if (vec_s) return ReduceSegment<kSplit, true, true>(x, len, t0, t1, mn, mx, stride);
    return ReduceSegment<kSplit, true, false>(x, len, t0, t1, mn, mx, stride);
  }
  if (vec_s) return ReduceSegment<kSplit, false, true>(x, len, t0, t1, mn, mx, stride);
  return ReduceSegment<kSplit, false, false>(x, len, t0, t1, mn, mx, stride);
}

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

}  // namespace

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
      const float* t0 = plan.split ? plan.t0.data() + ru.value : &neg_inf;
      const float* t1 = plan.split ? plan.t1.data() + ru.value : &pos_inf;
      float* pmn = mn.data() + (rs.value - lo);
      float* pmx = mx.data() + (rs.value - lo);
      const bool nan =
          plan.split
              ? ReduceDispatch<true>(data + e, len, t0, t1, ru.stride, rs.stride, pmn, pmx, width)
              : ReduceDispatch<false>(data + e, len, t0, t1, false, rs.stride, pmn, pmx, width);
      if (nan) local_finite = false;
    });
    // Infinities: a min of -inf or a max of +inf (see ReduceSegment).
    for (size_t i = 0; i < mn.size() && local_finite; ++i) {
      if (mn[i] == -kInfF || mx[i] == kInfF) local_finite = false;
    }
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

}  // namespace transform
}  // namespace sq
