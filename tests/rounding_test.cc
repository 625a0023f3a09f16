// Balanced rounding (core/transform/rounding.h): the bins, the offset choice, and the
// transform with it on — fast path against the reference, threads, zeros, and what it buys.
#include "core/transform/rounding.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/quantizer.h"
#include "core/weight_transform.h"
#include "gtest/gtest.h"
#include "tests/support/threaded_for.h"

namespace sq {
namespace transform {
namespace {

struct Collected {
  std::map<int, std::vector<uint8_t>> bytes;
  BranchSink Sink() {
    return [this](int b, int64_t, const uint8_t* d, size_t n) {
      bytes[b].insert(bytes[b].end(), d, d + n);
    };
  }
};

// Heavy-tailed weights with a few exact zeros.
std::vector<float> Weights(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<double> t(4.0);
  std::vector<float> v(n);
  for (size_t k = 0; k < n; ++k) v[k] = k % 97 == 5 ? 0.0f : static_cast<float>(0.02 * t(rng));
  return v;
}

TEST(RoundingTest, BinsAreGeometricAndTheirEdgesBoundThem) {
  EXPECT_EQ(RoundingBin(0.0f), 0);
  EXPECT_EQ(RoundingBin(std::ldexp(1.0f, -13)), 0);
  EXPECT_EQ(RoundingBin(std::ldexp(1.0f, -12)), 1);
  EXPECT_EQ(RoundingBin(kMaxRoundingOffset), -1);
  EXPECT_EQ(RoundingBin(0.49f), -1);
  EXPECT_EQ(RoundingBinEdge(kRoundingBins - 1), kMaxRoundingOffset);
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(-14.0f, std::log2(kMaxRoundingOffset));
  for (int i = 0; i < 10000; ++i) {
    const float d = std::exp2(u(rng));
    const int k = RoundingBin(d);
    ASSERT_GE(k, 0);
    ASSERT_LT(k, kRoundingBins);
    EXPECT_LT(d, RoundingBinEdge(k)) << d;
    if (k > 0) {
      EXPECT_GE(d, RoundingBinEdge(k - 1)) << d;
    }
  }
  // Wide slices look only near the midpoint; small ones everywhere.
  EXPECT_EQ(RoundingBinLimit(5), kRoundingBins - 1);
  EXPECT_LT(RoundingBinLimit(4096), RoundingBinLimit(256));
  EXPECT_GE(RoundingBinEdge(RoundingBinLimit(4096)), 1.0f / 64);
}

TEST(RoundingTest, OffsetFlipsTheCheapestElementsTowardsAZeroSum) {
  // Nothing to balance: round to nearest.
  EXPECT_EQ(ChooseOffset(SliceRounding{}), 0.0f);
  // Sum -1 (in weight units); bin 3 holds elements whose flips add exactly +1 at no cost:
  // the offset flips up to bin 3, and never the other way.
  SliceRounding st;
  st.r = -1.0;
  st.up_r[3] = 1.0;
  st.up_cost[3] = 0.0;
  st.down_r[0] = -5.0;
  EXPECT_EQ(ChooseOffset(st), RoundingBinEdge(3));
  // A flip that costs more squared error than it removes from the sum's square: none.
  st.up_cost[3] = 2.0;
  EXPECT_EQ(ChooseOffset(st), 0.0f);
  // Positive sum: flipped down, a negative offset.
  SliceRounding dn;
  dn.r = 0.5;
  dn.down_r[10] = -0.5;
  dn.down_cost[10] = 0.01;
  EXPECT_EQ(ChooseOffset(dn), -RoundingBinEdge(10));
}

// The fast path equals the reference byte for byte with balanced rounding on, for every
// layout the slices take (channel first, channel last, channel in the middle), split or
// not, clustered per channel or per tensor, balancing all branches or the middle alone,
// and for any thread count.
TEST(RoundingTest, FastPathMatchesReferenceAndThreads) {
  struct Case {
    std::vector<int64_t> shape;
    int channel_axis;
  };
  const Case cases[] = {{{24, 16, 3, 3}, 0}, {{300, 70}, 1}, {{6, 40, 3, 3}, 1}, {{40, 1, 5, 5}, 0}};
  int seed = 0;
  for (const Case& c : cases) {
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    const std::vector<float> data = Weights(static_cast<size_t>(n), 11 + seed++);
    const WeightView view{data.data(), c.shape, c.channel_axis, 0};
    for (int bits : {2, 4, 8}) {
      for (int variant = 0; variant < 4; ++variant) {
        TransformConfig cfg;
        cfg.spec.bits = bits;
        cfg.storage_bits = 8;
        cfg.granularity = Granularity::kChannel;
        cfg.balanced_rounding = true;
        cfg.split = variant != 0;
        cfg.cluster_per_channel = variant != 2;
        cfg.quant_aware_boundaries = variant == 3;
        cfg.balance_middle_only = variant == 2;
        Collected fast, one, ref;
        auto rf = TransformWeight(view, cfg, fast.Sink(), testing::ThreadedFor(3));
        auto r1 = TransformWeight(view, cfg, one.Sink());
        auto rr = TransformWeightReference(view, cfg, ref.Sink());
        ASSERT_TRUE(rf.ok() && r1.ok() && rr.ok());
        SCOPED_TRACE(absl::StrCat("shape case ", seed, " bits ", bits, " variant ", variant));
        EXPECT_EQ(fast.bytes, ref.bytes);
        EXPECT_EQ(one.bytes, fast.bytes);
        EXPECT_EQ(rf->offset_slices, rr->offset_slices);
        EXPECT_GT(rf->offset_slices, 0);
        EXPECT_NEAR(rf->split_error_energy, rr->split_error_energy,
                    1e-9 * rr->split_error_energy);
      }
    }
  }
}

// What it buys: per output channel the dequantized weights' sum stays near the original's
// (|sum of errors| far below round-to-nearest's), for a small rise of the squared error;
// zeros stay exact; and round to nearest is what it was without the option.
TEST(RoundingTest, ChannelSumsBalanceForLittleSquaredError) {
  const int64_t k = 512, cols = 64;
  const std::vector<float> data = Weights(static_cast<size_t>(k * cols), 3);
  const WeightView view{data.data(), {k, cols}, 1, 0};
  for (bool split : {false, true}) {
    TransformConfig cfg;
    cfg.spec.bits = 4;
    cfg.granularity = Granularity::kChannel;
    cfg.encoding = WeightEncoding::kDequantizedSum;
    cfg.split = split;
    cfg.cluster_per_channel = true;
    cfg.quant_aware_boundaries = false;  // min/max ranges either way: only the rounding differs
    Collected nearest, balanced;
    auto rn = TransformWeight(view, cfg, nearest.Sink());
    cfg.balanced_rounding = true;
    auto rb = TransformWeight(view, cfg, balanced.Sink());
    ASSERT_TRUE(rn.ok() && rb.ok());
    EXPECT_EQ(rn->offset_slices, 0);
    auto floats = [](const Collected& c) {
      std::vector<float> f(c.bytes.at(0).size() / 4);
      std::memcpy(f.data(), c.bytes.at(0).data(), f.size() * 4);
      return f;
    };
    const std::vector<float> qn = floats(nearest), qb = floats(balanced);
    double sum_n = 0, sum_b = 0;
    for (int64_t c = 0; c < cols; ++c) {
      double en = 0, eb = 0;
      for (int64_t r = 0; r < k; ++r) {
        const int64_t e = r * cols + c;
        en += static_cast<double>(qn[e]) - data[e];
        eb += static_cast<double>(qb[e]) - data[e];
        if (data[e] == 0.0f) {
          EXPECT_EQ(qb[e], 0.0f);
        }
      }
      sum_n += std::fabs(en);
      sum_b += std::fabs(eb);
    }
    SCOPED_TRACE(split ? "split" : "plain");
    EXPECT_LT(sum_b, 0.2 * sum_n);
    EXPECT_GT(rb->split_error_energy, rn->split_error_energy);
    EXPECT_LT(rb->split_error_energy, 1.05 * rn->split_error_energy);
  }
}

// Tensor and block granularity: the option changes nothing.
// Quantization-aware cuts keep min/max ranges under balanced rounding: a shrunk range's
// saturated extremes are an error no offset can balance.
TEST(RoundingTest, BalancedRoundingKeepsMinMaxRanges) {
  const std::vector<float> data = Weights(32 * 400, 8);
  const WeightView view{data.data(), {32, 400}, 0, 1};
  TransformConfig cfg;
  cfg.spec.bits = 4;
  cfg.granularity = Granularity::kChannel;
  cfg.cluster_per_channel = true;
  cfg.quant_aware_boundaries = true;
  cfg.balanced_rounding = true;
  Collected c;
  auto r = TransformWeight(view, cfg, c.Sink());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->split);
  // Every value lies within its branch's grid: no code saturates below the range.
  for (int64_t ch = 0; ch < 32; ++ch) {
    for (int b = 0; b < 3; ++b) {
      const float s = r->params[b].scales[ch];
      const int32_t z = r->params[b].zero_points[ch];
      const float lo = (0 - z) * s, hi = (15 - z) * s;
      for (int64_t k = 0; k < 400; ++k) {
        const int64_t e = ch * 400 + k;
        if (c.bytes.at(b)[e] == static_cast<uint8_t>(z)) continue;  // not in this branch
        EXPECT_GE(data[e], lo - 0.5f * s) << ch;
        EXPECT_LE(data[e], hi + 0.5f * s) << ch;
      }
    }
  }
}

TEST(RoundingTest, OnlyChannelGranularityIsBalanced) {
  const std::vector<float> data = Weights(64 * 48, 5);
  const WeightView view{data.data(), {64, 48}, 1, 0};
  for (Granularity g : {Granularity::kTensor, Granularity::kBlock}) {
    TransformConfig cfg;
    cfg.spec.bits = 4;
    cfg.granularity = g;
    cfg.block_size = 16;
    Collected a, b;
    auto ra = TransformWeight(view, cfg, a.Sink());
    cfg.balanced_rounding = true;
    auto rb = TransformWeight(view, cfg, b.Sink());
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_EQ(a.bytes, b.bytes);
    EXPECT_EQ(rb->offset_slices, 0);
  }
}

}  // namespace
}  // namespace transform
}  // namespace sq
