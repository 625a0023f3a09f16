// The fused transform's stages (core/transform/: inputs, cluster, ranges, kernels), each
// held alone to its plain, element-by-element meaning on random inputs. The whole
// transform is held to TransformWeightReference in weight_transform_test.cc.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "core/quantizer.h"
#include "core/transform/cluster.h"
#include "core/transform/common.h"
#include "core/transform/cuts.h"
#include "core/transform/index_map.h"
#include "core/transform/inputs.h"
#include "core/transform/kernels.h"
#include "core/transform/ranges.h"
#include "core/weight_transform.h"
#include "gtest/gtest.h"
#include "tests/support/threaded_for.h"

namespace sq {
namespace transform {
namespace {

// One thread: inline (nullptr), as the engine passes it.
ParallelFor Threaded(int threads) { return threads <= 1 ? nullptr : ParallelFor(testing::ThreadedFor(threads)); }

// Heavy-tailed values with no zeros (so min/max need no sign-of-zero care).
std::vector<float> Values(int64_t n, std::mt19937_64& rng) {
  std::student_t_distribution<double> t(3.0);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) {
    do {
      x = static_cast<float>(0.02 * t(rng));
    } while (x == 0.0f);
  }
  return v;
}

struct Case {
  std::vector<int64_t> shape;
  int channel_axis, reduction_axis;
};

int64_t Count(const Case& cs) {
  int64_t n = 1;
  for (int64_t d : cs.shape) n *= d;
  return n;
}

// A view of `data` with the case's shape and axes.
WeightView ViewOf(const Case& cs, const std::vector<float>& data) {
  WeightView w;
  w.shape = cs.shape;
  w.channel_axis = cs.channel_axis;
  w.reduction_axis = cs.reduction_axis;
  w.data = data.data();
  return w;
}

// Shapes of every layout the transform meets: 1-D, MatMul [K, N], Gemm [N, K], Conv.
std::vector<Case> Cases() {
  return {{{1000}, 0, 0},           {{96, 40}, 1, 0},         {{37, 130}, 0, 1},
          {{12, 5, 3, 3}, 0, 1},    {{300, 257}, 1, 0},       {{2, 3, 70000 / 6}, 1, 2}};
}

TEST(TransformStagesTest, FirstNonFiniteIsTheSmallestBadIndexForAnyThreadCount) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 40; ++trial) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 200000);
    std::vector<float> v = Values(n, rng);
    const int bad = static_cast<int>(rng() % 4);
    for (int k = 0; k < bad; ++k) {
      const float special[] = {std::numeric_limits<float>::quiet_NaN(),
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity()};
      v[rng() % n] = special[rng() % 3];
    }
    int64_t expected = -1;
    for (int64_t k = 0; k < n; ++k) {
      if (!std::isfinite(v[k])) {
        expected = k;
        break;
      }
    }
    EXPECT_EQ(AnyNonFinite(v.data(), n), expected >= 0);
    for (int threads : {1, 3}) {
      EXPECT_EQ(FirstNonFinite(v.data(), n, Threaded(threads)), expected) << "n " << n;
    }
  }
}

TEST(TransformStagesTest, SliceRangesAreEachBranchsMinAndMaxPerSlice) {
  std::mt19937_64 rng(2);
  for (const Case& cs : Cases()) {
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
      for (bool per_channel : {false, true}) {
        for (bool split : {false, true}) {
          const std::vector<float> v = Values(Count(cs), rng);
          const WeightView w = ViewOf(cs, v);
          const int64_t n = w.num_elements();
          TransformConfig c;
          c.granularity = g;
          c.block_size = 7;
          c.split = split;
          c.cluster_per_channel = per_channel;
          const IndexMap slices = SliceMap(w, c), units = UnitMap(w, c);
          SplitPlan plan;
          plan.split = split;
          if (split) {
            std::uniform_real_distribution<float> u(-0.03f, 0.03f);
            for (int64_t k = 0; k < units.Count(); ++k) {
              const float a = u(rng), b = u(rng);
              plan.t0.push_back(std::min(a, b));
              plan.t1.push_back(std::max(a, b));
            }
          }
          // The plain meaning.
          const int nb = split ? 3 : 1;
          const int64_t S = slices.Count();
          std::vector<float> mn(nb * S, kInfF), mx(nb * S, -kInfF);
          for (int64_t e = 0; e < n; ++e) {
            const int64_t s = ValueOf(slices, e), u = ValueOf(units, e);
            const int b = split ? ClusterOfF(v[e], plan.t0[u], plan.t1[u]) : 0;
            mn[b * S + s] = std::min(mn[b * S + s], v[e]);
            mx[b * S + s] = std::max(mx[b * S + s], v[e]);
          }
          for (int threads : {1, 3}) {
            SliceRanges r;
            ASSERT_TRUE(ComputeSliceRanges(v.data(), n, slices, units, plan, Threaded(threads), r));
            ASSERT_EQ(r.branches, nb);
            ASSERT_EQ(r.slices, S);
            EXPECT_EQ(r.mn, mn);
            EXPECT_EQ(r.mx, mx);
          }
        }
      }
    }
  }
}

TEST(TransformStagesTest, SliceRangesReportANonFiniteValue) {
  std::mt19937_64 rng(3);
  std::vector<float> v = Values(100000, rng);
  v[77777] = std::numeric_limits<float>::quiet_NaN();
  SliceRanges r;
  EXPECT_FALSE(ComputeSliceRanges(v.data(), static_cast<int64_t>(v.size()), IndexMap{},
                                  IndexMap{}, SplitPlan{}, Threaded(3), r));
}

// The check rides in the min/max pass (a NaN test per vector; infinities read off the
// minima and maxima), so every kernel variant must see each kind of bad value wherever it
// sits: vector body or scalar tail, one slice per segment or one per element, split or not,
// thresholds per segment or per element (clustering per channel on a channel-last weight).
TEST(TransformStagesTest, SliceRangesReportEveryNonFiniteKindInEveryKernel) {
  std::mt19937_64 rng(5);
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  for (const Case& cs : Cases()) {
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
      for (int variant = 0; variant < 3; ++variant) {
        const bool split = variant > 0, per_channel = variant == 2;
        std::vector<float> v = Values(Count(cs), rng);
        const WeightView w = ViewOf(cs, v);
        const int64_t n = w.num_elements();
        TransformConfig c;
        c.granularity = g;
        c.split = split;
        c.cluster_per_channel = per_channel;
        const IndexMap slices = SliceMap(w, c), units = UnitMap(w, c);
        SplitPlan plan;
        plan.split = split;
        for (int64_t k = 0; split && k < units.Count(); ++k) {
          plan.t0.push_back(-0.01f);
          plan.t1.push_back(0.01f);
        }
        SliceRanges clean;
        ASSERT_TRUE(ComputeSliceRanges(v.data(), n, slices, units, plan, Threaded(2), clean));
        for (int64_t pos : {int64_t{0}, n / 2, n - 1}) {
          for (float bad : bad_values) {
            const float keep = v[pos];
            v[pos] = bad;
            SliceRanges r;
            EXPECT_FALSE(ComputeSliceRanges(v.data(), n, slices, units, plan, Threaded(2), r))
                << "element " << pos << " of " << n << " = " << bad << ", split " << split
                << ", per-channel clusters " << per_channel << ", granularity "
                << static_cast<int>(g);
            v[pos] = keep;
          }
        }
      }
    }
  }
}

TEST(TransformStagesTest, RegionRangesSplitEveryValueIntoARegionOrAWindow) {
  std::mt19937_64 rng(4);
  for (const Case& cs : Cases()) {
    WeightView w;
    w.shape = cs.shape;
    w.channel_axis = cs.channel_axis;
    const int64_t n = w.num_elements();
    const std::vector<float> v = Values(n, rng);
    TransformConfig c;
    c.granularity = Granularity::kChannel;
    const IndexMap slices = SliceMap(w, c);
    for (int windows : {1, 2}) {
      RegionPass rp;
      rp.w_lo[0] = -0.021f;
      rp.w_hi[0] = -0.019f;
      rp.w_lo[1] = windows == 2 ? 0.019f : rp.w_lo[0];
      rp.w_hi[1] = windows == 2 ? 0.021f : rp.w_hi[0];
      rp.d0_max = std::nextafter(rp.w_lo[0], -kInfF);
      rp.d2_min = std::nextafter(rp.w_hi[1], kInfF);
      rp.max_window_values = n;
      ComputeRegionRanges(v.data(), n, slices, Threaded(3), rp);
      ASSERT_FALSE(rp.overflow);
      const int64_t S = slices.Count();
      std::vector<float> mn(3 * S, kInfF), mx(3 * S, -kInfF);
      std::vector<int64_t> in_window;
      for (int64_t e = 0; e < n; ++e) {
        const float x = v[e];
        if ((x >= rp.w_lo[0] && x <= rp.w_hi[0]) || (x >= rp.w_lo[1] && x <= rp.w_hi[1])) {
          in_window.push_back(e);
          continue;
        }
        const int r = ClusterOfF(x, rp.d0_max, rp.d2_min);
        const int64_t s = ValueOf(slices, e);
        mn[r * S + s] = std::min(mn[r * S + s], x);
        mx[r * S + s] = std::max(mx[r * S + s], x);
      }
      EXPECT_EQ(rp.regions.mn, mn);
      EXPECT_EQ(rp.regions.mx, mx);
      std::vector<int64_t> got;
      for (const WindowValue& wv : rp.window) {
        EXPECT_EQ(wv.value, v[wv.index]);
        got.push_back(wv.index);
      }
      std::sort(got.begin(), got.end());
      EXPECT_EQ(got, in_window);
    }
  }
}

// Balanced rounding's offsets per slice: half zero (round to nearest), half anywhere in
// [-0.4375, 0.4375] (transform/rounding.h).
std::vector<float> RandomOffsets(int64_t slices, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-0.4375f, 0.4375f);
  std::vector<float> off(static_cast<size_t>(slices), 0.0f);
  for (auto& o : off) {
    if (rng() % 2) o = u(rng);
  }
  return off;
}

// One branch set of per-slice parameters for the kernels, from random ranges.
KernelParams RandomParams(int64_t slices, const QuantSpec& spec, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(0.005f, 0.1f);
  KernelParams k;
  for (int64_t s = 0; s < slices; ++s) {
    const QuantParams q = ChooseQuantParams(-u(rng), u(rng), spec);
    k.scale.push_back(q.scale);
    k.zf.push_back(static_cast<float>(q.zero_point));
    k.zi.push_back(q.zero_point);
  }
  return k;
}

TEST(TransformStagesTest, SegmentKernelCodesAreTheQuantizersCodes) {
  std::mt19937_64 rng(5);
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      for (bool split : {false, true}) {
        QuantSpec spec;
        spec.bits = bits;
        spec.symmetric = symmetric;
        const int64_t len = 1 + static_cast<int64_t>(rng() % 999);  // one slice per element
        const std::vector<float> x = Values(len, rng);
        std::array<KernelParams, 3> kp;
        for (auto& k : kp) k = RandomParams(len, spec, rng);
        const float t0 = -0.01f, t1 = 0.012f;
        const std::vector<float> off = RandomOffsets(len, rng);
        std::array<std::vector<uint8_t>, 3> codes;
        SegmentArgs a;
        a.x = x.data();
        a.len = len;
        a.off = off.data();
        a.t0 = &t0;
        a.t1 = &t1;
        for (int b = 0; b < 3; ++b) {
          codes[b].assign(len, 0xAA);
          a.scale[b] = kp[b].scale.data();
          a.zf[b] = kp[b].zf.data();
          a.zi[b] = kp[b].zi.data();
          a.codes[b] = codes[b].data();
          a.floats[b] = nullptr;
        }
        a.pscale = nullptr;
        a.pzf = nullptr;
        a.qmin = static_cast<float>(spec.qmin());
        a.qmax = static_cast<float>(spec.qmax());
        a.is_signed = symmetric;
        Partial acc;
        PickKernel(split, WeightEncoding::kCodes, /*plain=*/false, /*signal=*/true,
                   /*vt=*/false, /*vs=*/true)(a, acc);
        double signal = 0, error = 0;
        for (int64_t k = 0; k < len; ++k) {
          const int c = split ? ClusterOfF(x[k], t0, t1) : 0;
          QuantParams p;
          p.scale = kp[c].scale[k];
          p.zero_point = kp[c].zi[k];
          const int32_t q = QuantizeValue(x[k], p, spec, off[k]);
          for (int b = 0; b < (split ? 3 : 1); ++b) {
            const int32_t want = b == c ? q : kp[b].zi[k];
            ASSERT_EQ(codes[b][k], static_cast<uint8_t>(want & 0xFF)) << "element " << k;
          }
          const float e = x[k] - DequantizeValue(q, p);  // in float, as the kernels
          signal += static_cast<double>(x[k]) * x[k];
          error += static_cast<double>(e) * e;
        }
        // Same terms, summed in another order.
        EXPECT_NEAR(acc.signal, signal, 1e-12 * signal);
        EXPECT_NEAR(acc.split_error, error, 1e-9 * error + 1e-30);
      }
    }
  }
}

TEST(TransformStagesTest, RowKernelPacksTheSegmentKernelsCodes) {
  std::mt19937_64 rng(6);
  for (int storage : {8, 4, 2}) {
    for (bool split : {false, true}) {
      QuantSpec spec;
      spec.bits = storage == 8 ? 5 : storage;
      const int64_t cols = 16 * (1 + static_cast<int64_t>(rng() % 20)) + (rng() % 16) * 4;
      const std::vector<float> x = Values(cols, rng);
      std::array<KernelParams, 3> kp;
      for (auto& k : kp) k = RandomParams(cols, spec, rng);
      const float t0 = -0.01f, t1 = 0.012f;
      const float qmin = static_cast<float>(spec.qmin()), qmax = static_cast<float>(spec.qmax());
      const std::vector<float> off = RandomOffsets(cols, rng);
      // Segment kernel, one byte per code, then PackStaging.
      std::array<std::vector<uint8_t>, 3> staging, want;
      SegmentArgs a;
      a.x = x.data();
      a.len = cols;
      a.off = off.data();
      a.t0 = &t0;
      a.t1 = &t1;
      for (int b = 0; b < 3; ++b) {
        staging[b].assign(cols, 0);
        a.scale[b] = kp[b].scale.data();
        a.zf[b] = kp[b].zf.data();
        a.zi[b] = kp[b].zi.data();
        a.codes[b] = staging[b].data();
        a.floats[b] = nullptr;
      }
      a.pscale = a.pzf = nullptr;
      a.qmin = qmin;
      a.qmax = qmax;
      a.is_signed = false;
      Partial seg;
      PickKernel(split, WeightEncoding::kCodes, false, true, false, true)(a, seg);
      const int nb = split ? 3 : 1;
      for (int b = 0; b < nb; ++b) {
        want[b].assign(PackedBytes(cols, storage), 0);
        if (storage == 8) {
          want[b] = staging[b];
        } else {
          PackStaging(staging[b].data(), cols, storage, want[b].data());
        }
      }
      // Row kernel, codes packed directly.
      std::array<std::vector<float>, 2> scale_x, zf_x;
      for (int j = 0; j < 2; ++j) {
        const int b = j == 0 ? 0 : 2;
        for (int64_t s = 0; s < cols; ++s) {
          scale_x[j].push_back(XorFloatBits(kp[b].scale[s], kp[1].scale[s]));
          zf_x[j].push_back(XorFloatBits(kp[b].zf[s], kp[1].zf[s]));
        }
      }
      std::array<std::vector<uint8_t>, 3> zb, got;
      RowArgs r;
      r.x = x.data();
      r.len = cols;
      r.off = off.data();
      r.pos = 0;
      r.t0 = &t0;
      r.t1 = &t1;
      for (int b = 0; b < 3; ++b) {
        for (int64_t s = 0; s < cols; ++s) zb[b].push_back(static_cast<uint8_t>(kp[b].zi[s] & 0xFF));
        got[b].assign(PackedBytes(cols, storage), 0);
        r.scale[b] = kp[b].scale.data();
        r.zf[b] = kp[b].zf.data();
        r.zb[b] = zb[b].data();
        r.out[b] = b < nb ? got[b].data() : nullptr;
      }
      for (int j = 0; j < 2; ++j) {
        r.scale_x[j] = scale_x[j].data();
        r.zf_x[j] = zf_x[j].data();
      }
      r.pscale = r.pzf = nullptr;
      r.qmin = qmin;
      r.qmax = qmax;
      r.is_signed = false;
      Partial row;
      PickRow(split, false, false, true, storage)(r, row);
      for (int b = 0; b < nb; ++b) EXPECT_EQ(got[b], want[b]) << "branch " << b;
      EXPECT_NEAR(row.split_error, seg.split_error, 1e-9 * seg.split_error + 1e-30);
    }
  }
}

TEST(TransformStagesTest, PackStagingIsPackCodes) {
  std::mt19937_64 rng(7);
  for (int storage : {4, 2}) {
    for (int trial = 0; trial < 50; ++trial) {
      const int64_t count = static_cast<int64_t>(rng() % 300);
      std::vector<uint8_t> staging(count);
      std::vector<int32_t> codes(count);
      for (int64_t k = 0; k < count; ++k) {
        codes[k] = static_cast<int32_t>(rng() % (1u << storage));
        staging[k] = static_cast<uint8_t>(codes[k]);
      }
      std::vector<uint8_t> got(PackedBytes(count, storage) + 1, 0x5A),
          want(PackedBytes(count, storage) + 1, 0x5A);
      PackStaging(staging.data(), count, storage, got.data());
      PackCodes(codes, storage, want.data());
      EXPECT_EQ(got, want) << "count " << count;
    }
  }
}

// A [rows, cols] weight whose units are its columns (a MatMul's output channels), for the
// quantization-aware column search, and the 4-bit spec it runs under.
struct ColumnWeight {
  ColumnWeight(int64_t rows, int64_t cols, std::mt19937_64& rng) : values(Values(rows * cols, rng)) {
    view.shape = {rows, cols};
    view.channel_axis = 1;
    view.data = values.data();
    TransformConfig c;
    c.cluster_per_channel = true;
    units = UnitMap(view, c);
    spec.bits = 4;
  }
  Clustering Cluster(const WeightView& w, int threads) const {
    return ClusterFast(w, w.num_elements(), units, units.Count(), ClusterMethod::kFast, Threaded(threads), &spec);
  }
  std::vector<float> values;
  WeightView view;
  IndexMap units;
  QuantSpec spec;
};

TEST(TransformStagesTest, QuantAwareColumnsAreEachGatheredColumnsSplit) {
  std::mt19937_64 rng(8);
  for (int64_t rows : {40, 9000}) {  // 9000 > UnitSampleSize(70): sampled columns
    const ColumnWeight cw(rows, 70, rng);
    const std::vector<float>& v = cw.values;
    const QuantSpec& spec = cw.spec;
    for (int threads : {1, 3}) {
      const Clustering cl = cw.Cluster(cw.view, threads);
      ASSERT_EQ(cl.units.size(), 70u);
      for (int64_t col = 0; col < 70; ++col) {
        std::vector<float> column;
        for (int64_t r = 0; r < rows; ++r) column.push_back(v[r * 70 + col]);
        const QuantAwareSplit q = ChooseQuantAwareSplit(column, spec, UnitSampleSize(70));
        EXPECT_EQ(cl.units[col].lower_boundary, q.clusters.lower_boundary) << col;
        EXPECT_EQ(cl.units[col].upper_boundary, q.clusters.upper_boundary) << col;
        EXPECT_EQ(cl.units[col].counts, q.clusters.counts) << col;
        for (int b = 0; b < 3; ++b) {
          EXPECT_EQ(cl.shrink[col][2 * b], q.shrink_lo[b]);
          EXPECT_EQ(cl.shrink[col][2 * b + 1], q.shrink_hi[b]);
        }
      }
    }
  }
}

// A mapped weight's sample rows are handed back (WeightView::release) a span of columns at
// a time as the cut search finishes them, each with the span before it (so no page at a
// span boundary is missed): every column of every sample row at least once and at most
// twice, nothing outside them, and the same cuts as without the hook. Columns wider than
// one span, sampled and unsampled rows, 1 and 3 threads.
TEST(TransformStagesTest, QuantAwareColumnsHandBackEverySampleRowAndChangeNothing) {
  std::mt19937_64 rng(9);
  for (int64_t rows : {100, 600}) {  // 600 > UnitSampleSize(4500): every 5th row sampled
    const int64_t cols = 4500;
    const ColumnWeight cw(rows, cols, rng);
    const int64_t stride = SampleStride(rows, UnitSampleSize(cols));
    for (int threads : {1, 3}) {
      const Clustering plain = cw.Cluster(cw.view, threads);
      std::mutex mu;
      std::vector<std::pair<int64_t, int64_t>> handed;
      WeightView released = cw.view;
      released.release = [&](int64_t begin, int64_t end) {
        std::lock_guard<std::mutex> lock(mu);
        handed.emplace_back(begin, end);
      };
      const Clustering cl = cw.Cluster(released, threads);
      for (int64_t col = 0; col < cols; ++col) {
        ASSERT_EQ(cl.units[col].lower_boundary, plain.units[col].lower_boundary) << col;
        ASSERT_EQ(cl.units[col].upper_boundary, plain.units[col].upper_boundary) << col;
        ASSERT_EQ(cl.units[col].counts, plain.units[col].counts) << col;
      }
      std::vector<int64_t> covered(static_cast<size_t>(rows * cols), 0);
      for (const auto& [begin, end] : handed) {
        ASSERT_LT(begin, end);
        ASSERT_EQ(begin / cols, (end - 1) / cols) << "a range crosses rows";
        ASSERT_EQ(begin / cols % stride, 0) << "row " << begin / cols << " is not a sample row";
        for (int64_t e = begin; e < end; ++e) ++covered[e];
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t col = 0; col < cols; ++col) {
          const int64_t times = covered[r * cols + col];
          if (r % stride == 0) {
            ASSERT_TRUE(times == 1 || times == 2) << "row " << r << " column " << col << ": " << times;
          } else {
            ASSERT_EQ(times, 0) << "row " << r << " column " << col;
          }
        }
      }
      EXPECT_GT(handed.size(), static_cast<size_t>(2 * rows / stride)) << "one span per row: not in spans";
    }
  }
}

}  // namespace
}  // namespace transform
}  // namespace sq
