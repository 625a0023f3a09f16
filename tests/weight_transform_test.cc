#include "core/weight_transform.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/kmeans.h"
#include "gtest/gtest.h"
#include "tests/support/threaded_for.h"

namespace sq {
namespace {

constexpr int64_t kMaxPieceBytes = int64_t{4} << 20;
// Stats of fast vs reference differ only by summation order.
constexpr double kStatsRelTolerance = 1e-9;
// The s/2 bound plus float rounding of x / s and (q - z) * s.
constexpr double kFloatUlpsSlack = 2 * FLT_EPSILON;

struct Collected {
  std::map<int, std::vector<uint8_t>> bytes;
  bool ordered = true;
  bool bounded = true;
  BranchSink Sink() {
    return [this](int b, int64_t off, const uint8_t* d, size_t n) {
      std::vector<uint8_t>& v = bytes[b];
      if (off != static_cast<int64_t>(v.size())) ordered = false;
      if (static_cast<int64_t>(n) > kMaxPieceBytes) bounded = false;
      v.insert(v.end(), d, d + n);
    };
  }
  std::vector<float> Floats(int b) const {
    const std::vector<uint8_t>& v = bytes.at(b);
    std::vector<float> f(v.size() / 4);
    std::memcpy(f.data(), v.data(), v.size());
    return f;
  }
};

ParallelFor Threaded(int threads) { return testing::ThreadedFor(threads); }

std::vector<float> StudentT(size_t n, uint64_t seed, double scale = 0.02) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<double> t(3.0);
  std::vector<float> v(n);
  for (size_t k = 0; k < n; ++k) {
    v[k] = static_cast<float>(scale * t(rng));
    if (k % 1009 == 0) v[k] *= 15;
  }
  return v;
}

struct Case {
  std::vector<int64_t> shape;
  int channel_axis, reduction_axis;
};

std::string Describe(const Case& c, const TransformConfig& cfg) {
  std::string s = "shape";
  for (int64_t d : c.shape) absl::StrAppend(&s, " ", d);
  absl::StrAppend(&s, " ch ", c.channel_axis, " red ", c.reduction_axis, " gran ",
                  static_cast<int>(cfg.granularity), " enc ", static_cast<int>(cfg.encoding),
                  " bits ", cfg.spec.bits, " sym ", cfg.spec.symmetric, " store ",
                  cfg.storage_bits, " perch ", cfg.cluster_per_channel, " split ", cfg.split,
                  " method ", static_cast<int>(cfg.cluster_method));
  return s;
}

void ExpectSameParams(const TransformResult& a, const TransformResult& b) {
  ASSERT_EQ(a.num_branches, b.num_branches);
  EXPECT_EQ(a.split, b.split);
  EXPECT_EQ(a.not_split_reason, b.not_split_reason);
  EXPECT_EQ(a.degenerate_units, b.degenerate_units);
  EXPECT_EQ(a.bytes_per_branch, b.bytes_per_branch);
  for (int k = 0; k < a.num_branches; ++k) {
    EXPECT_EQ(a.params[k].shape, b.params[k].shape);
    EXPECT_EQ(a.params[k].axis, b.params[k].axis);
    EXPECT_EQ(a.params[k].block_size, b.params[k].block_size);
    EXPECT_EQ(a.params[k].scales, b.params[k].scales);
    EXPECT_EQ(a.params[k].zero_points, b.params[k].zero_points);
    EXPECT_EQ(a.clusters[k].count, b.clusters[k].count);
    EXPECT_EQ(a.clusters[k].min, b.clusters[k].min);
    EXPECT_EQ(a.clusters[k].max, b.clusters[k].max);
  }
}

void ExpectNearRel(double a, double b) {
  EXPECT_NEAR(a, b, kStatsRelTolerance * std::max(std::fabs(a), std::fabs(b)) + 1e-30);
}

TEST(WeightTransformTest, FastMatchesReferenceBitForBit) {
  const std::vector<Case> cases = {
      {{16, 40}, 0, 1},        // Gemm-like [N, K]
      {{48, 24}, 1, 0},        // MatMul [K, N]
      {{8, 6, 3, 3}, 0, 1},    // Conv [M, C, kh, kw]
      {{6, 4, 3, 3}, 1, 0},    // ConvTranspose [Cin, Cout, kh, kw]
      {{33}, 0, 0},            // rank 1, odd size
  };
  int idx = 0;
  for (const Case& c : cases) {
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    std::vector<float> data = StudentT(static_cast<size_t>(n), 40 + idx++);
    data[3] = 0.0f;
    data[5] = -0.0f;
    const WeightView view{data.data(), c.shape, c.channel_axis, c.reduction_axis};
    for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
      for (WeightEncoding enc : {WeightEncoding::kCodes, WeightEncoding::kDequantized,
                                 WeightEncoding::kDequantizedSum, WeightEncoding::kFloatSplit}) {
        for (int variant = 0; variant < 6; ++variant) {
          TransformConfig cfg;
          cfg.granularity = g;
          cfg.encoding = enc;
          cfg.block_size = 4;
          cfg.spec.bits = variant % 3 == 0 ? 2 : (variant % 3 == 1 ? 4 : 8);
          cfg.spec.symmetric = variant % 2 == 1;
          cfg.storage_bits = std::max(cfg.spec.bits, variant == 1 ? 8 : 2);
          if (cfg.storage_bits == 3) cfg.storage_bits = 4;
          cfg.cluster_per_channel = variant >= 3;
          cfg.split = variant != 5 || g != Granularity::kTensor;
          const std::string what = Describe(c, cfg);
          Collected fast, ref;
          auto rf = TransformWeight(view, cfg, fast.Sink(), Threaded(3));
          auto rr = TransformWeightReference(view, cfg, ref.Sink());
          ASSERT_TRUE(rf.ok()) << rf.status() << what;
          ASSERT_TRUE(rr.ok()) << rr.status() << what;
          SCOPED_TRACE(what);
          ExpectSameParams(*rf, *rr);
          EXPECT_EQ(fast.bytes, ref.bytes);
          EXPECT_TRUE(fast.ordered);
          ExpectNearRel(rf->signal_energy, rr->signal_energy);
          ExpectNearRel(rf->split_error_energy, rr->split_error_energy);
          ExpectNearRel(rf->plain_error_energy, rr->plain_error_energy);
          ExpectNearRel(rf->inertia, rr->inertia);
        }
      }
    }
  }
}

TEST(WeightTransformTest, QuantAwareBoundariesMatchReferenceAndNeverRaiseTheError) {
  const std::vector<Case> cases = {
      {{16, 8, 3, 3}, 0, 1},   // Conv: per-channel clustering + channel scales
      {{64, 48}, 1, 0},        // MatMul: per-tensor clustering + tensor scale
      {{300, 250}, 1, 0},      // > 65536 values: the unfused route is taken when refining
  };
  int idx = 0;
  for (const Case& c : cases) {
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    std::vector<float> data = StudentT(static_cast<size_t>(n), 90 + idx++);
    const WeightView view{data.data(), c.shape, c.channel_axis, c.reduction_axis};
    for (int bits : {2, 4, 8}) {
      TransformConfig cfg;
      cfg.spec.bits = bits;
      cfg.storage_bits = 8;
      cfg.cluster_per_channel = c.shape.size() == 4;
      cfg.granularity = cfg.cluster_per_channel ? Granularity::kChannel : Granularity::kTensor;
      Collected off_bytes, fast, ref;
      auto off = TransformWeight(view, cfg, off_bytes.Sink());
      cfg.quant_aware_boundaries = true;
      auto rf = TransformWeight(view, cfg, fast.Sink(), Threaded(3));
      auto rr = TransformWeightReference(view, cfg, ref.Sink());
      ASSERT_TRUE(off.ok() && rf.ok() && rr.ok());
      SCOPED_TRACE(Describe(c, cfg));
      ExpectSameParams(*rf, *rr);
      EXPECT_EQ(fast.bytes, ref.bytes);
      ExpectNearRel(rf->split_error_energy, rr->split_error_energy);
      EXPECT_LE(rf->split_error_energy, off->split_error_energy * (1 + 1e-12));
      // Blocked granularity keeps k-means cuts: the option changes nothing there.
      cfg.granularity = Granularity::kBlock;
      cfg.block_size = 4;
      Collected a, b;
      auto on_block = TransformWeight(view, cfg, a.Sink(), Threaded(2));
      cfg.quant_aware_boundaries = false;
      auto off_block = TransformWeight(view, cfg, b.Sink());
      ASSERT_TRUE(on_block.ok() && off_block.ok());
      EXPECT_EQ(a.bytes, b.bytes);
    }
  }
}

// A MatMul weight [K, N] split per output column (the default under channel and block
// granularity): the fast path reads the columns by rows and samples them once they are
// long enough; it must equal the reference, which gathers each column.
TEST(WeightTransformTest, QuantAwareColumnsOfAMatMulWeightMatchReference) {
  struct Shape {
    int64_t k, n;
  };
  // [300, 40]: every column searched whole; [2100, 300]: columns sampled (2^18 / 300 < 2100).
  for (Shape sh : {Shape{300, 40}, Shape{2100, 300}}) {
    std::vector<float> data = StudentT(static_cast<size_t>(sh.k * sh.n), 7 + sh.k);
    const WeightView view{data.data(), {sh.k, sh.n}, 1, 0};
    for (Granularity g : {Granularity::kChannel, Granularity::kTensor}) {
      for (int bits : {2, 4}) {
        TransformConfig cfg;
        cfg.spec.bits = bits;
        cfg.granularity = g;
        cfg.block_size = 64;
        // What --cluster-scope auto picks: the unit is the quantization slice.
        cfg.cluster_per_channel = g == Granularity::kChannel;
        cfg.quant_aware_boundaries = true;
        Collected fast, one, ref;
        auto rf = TransformWeight(view, cfg, fast.Sink(), Threaded(3));
        auto r1 = TransformWeight(view, cfg, one.Sink());
        auto rr = TransformWeightReference(view, cfg, ref.Sink());
        ASSERT_TRUE(rf.ok() && r1.ok() && rr.ok());
        SCOPED_TRACE(absl::StrCat(sh.k, "x", sh.n, " gran ", static_cast<int>(g), " bits ", bits));
        ExpectSameParams(*rf, *rr);
        EXPECT_EQ(fast.bytes, ref.bytes);
        EXPECT_EQ(one.bytes, fast.bytes);
        EXPECT_EQ(rf->clusters[0].count + rf->clusters[1].count + rf->clusters[2].count,
                  sh.k * sh.n);
        EXPECT_EQ(rf->clusters[0].count, rr->clusters[0].count);
        EXPECT_EQ(rf->clusters[2].count, rr->clusters[2].count);
        // Placed for quantization, the split beats the paper's k-means cuts per column.
        cfg.quant_aware_boundaries = false;
        Collected km;
        auto rk = TransformWeight(view, cfg, km.Sink());
        ASSERT_TRUE(rk.ok());
        EXPECT_LT(rf->split_error_energy, rk->split_error_energy);
      }
    }
  }
}

TEST(WeightTransformTest, ReferenceClusterMethodAgreesToo) {
  const std::vector<float> data = StudentT(64 * 50, 9);
  const WeightView view{data.data(), {64, 50}, 0, 1};
  for (bool per_channel : {false, true}) {
    TransformConfig cfg;
    cfg.cluster_method = ClusterMethod::kReference;
    cfg.cluster_per_channel = per_channel;
    Collected fast, ref;
    auto rf = TransformWeight(view, cfg, fast.Sink());
    auto rr = TransformWeightReference(view, cfg, ref.Sink());
    ASSERT_TRUE(rf.ok() && rr.ok());
    ExpectSameParams(*rf, *rr);
    EXPECT_EQ(fast.bytes, ref.bytes);
  }
}

TEST(WeightTransformTest, LargeTensorMatchesReferenceAndIsThreadIndependent) {
  // > 65536 elements: histogram clustering, several pieces, several chunks.
  const std::vector<float> data = StudentT(600 * 2000, 11);
  const WeightView view{data.data(), {600, 2000}, 1, 0};
  TransformConfig cfg;
  cfg.granularity = Granularity::kBlock;
  cfg.storage_bits = 4;
  Collected one, four, ref;
  auto r1 = TransformWeight(view, cfg, one.Sink(), Threaded(1));
  auto r4 = TransformWeight(view, cfg, four.Sink(), Threaded(4));
  auto rn = TransformWeight(view, cfg, ref.Sink(), nullptr);
  ASSERT_TRUE(r1.ok() && r4.ok() && rn.ok());
  EXPECT_EQ(one.bytes, four.bytes);
  EXPECT_EQ(one.bytes, ref.bytes);
  EXPECT_TRUE(one.ordered && four.ordered && one.bounded);
  ExpectSameParams(*r1, *r4);
  EXPECT_EQ(r1->signal_energy, r4->signal_energy);
  EXPECT_EQ(r1->split_error_energy, r4->split_error_energy);
  EXPECT_EQ(r1->plain_error_energy, r4->plain_error_energy);
  EXPECT_EQ(r1->inertia, r4->inertia);
  Collected slow;
  auto rr = TransformWeightReference(view, cfg, slow.Sink());
  ASSERT_TRUE(rr.ok());
  ExpectSameParams(*r1, *rr);
  EXPECT_EQ(one.bytes, slow.bytes);
}

TEST(WeightTransformTest, FloatPiecesAreBounded) {
  const std::vector<float> data = StudentT(1 << 21, 12);
  const WeightView view{data.data(), {1024, 2048}, 0, 1};
  TransformConfig cfg;
  cfg.encoding = WeightEncoding::kFloatSplit;
  Collected out;
  auto r = TransformWeight(view, cfg, out.Sink(), Threaded(2));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(out.ordered && out.bounded);
  // The branches sum exactly to the input.
  std::vector<float> b0 = out.Floats(0), b1 = out.Floats(1), b2 = out.Floats(2);
  for (size_t k = 0; k < data.size(); ++k) {
    ASSERT_EQ((b0[k] + b1[k]) + b2[k], data[k]) << k;
    ASSERT_EQ((b0[k] != 0) + (b1[k] != 0) + (b2[k] != 0), data[k] != 0 ? 1 : 0) << k;
  }
  EXPECT_EQ(r->split_error_energy, 0);
  EXPECT_GT(r->plain_error_energy, 0);
}

// Cluster of each element recovered from the FP32 split.
std::vector<int> ClustersOf(const std::vector<float>& data, const WeightView& view,
                            TransformConfig cfg) {
  cfg.encoding = WeightEncoding::kFloatSplit;
  Collected out;
  auto r = TransformWeight(view, cfg, out.Sink());
  std::vector<int> c(data.size(), 1);
  if (!r.ok() || r->num_branches != 3) return c;
  for (int b = 0; b < 3; ++b) {
    const std::vector<float> f = out.Floats(b);
    for (size_t k = 0; k < data.size(); ++k) {
      if (f[k] != 0) c[k] = b;
    }
  }
  return c;
}

TEST(WeightTransformTest, EveryBranchIsExactlyZeroOutsideItsCluster) {
  const std::vector<float> data = StudentT(32 * 96, 13);
  const WeightView view{data.data(), {32, 96}, 0, 1};
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
    for (bool sym : {false, true}) {
      TransformConfig cfg;
      cfg.granularity = g;
      cfg.spec = {4, sym};
      cfg.encoding = WeightEncoding::kDequantized;
      const std::vector<int> cluster = ClustersOf(data, view, cfg);
      Collected out;
      auto r = TransformWeight(view, cfg, out.Sink());
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->num_branches, 3);
      for (int b = 0; b < 3; ++b) {
        const std::vector<float> f = out.Floats(b);
        for (size_t k = 0; k < data.size(); ++k) {
          if (cluster[k] != b) {
            ASSERT_EQ(f[k], 0.0f) << "branch " << b << " at " << k;
          }
        }
      }
      // Codes: outside the cluster every code is the zero point.
      cfg.encoding = WeightEncoding::kCodes;
      cfg.storage_bits = 4;
      Collected codes;
      r = TransformWeight(view, cfg, codes.Sink());
      ASSERT_TRUE(r.ok());
      for (int b = 0; b < 3; ++b) {
        const std::vector<int32_t> q =
            UnpackCodes(codes.bytes[b].data(), data.size(), 4, sym);
        const BranchParams& p = r->params[b];
        for (size_t k = 0; k < data.size(); ++k) {
          const int64_t s = g == Granularity::kTensor ? 0
                            : g == Granularity::kChannel ? k / 96
                                                         : (k / 96) * 3 + (k % 96) / 32;
          if (cluster[k] != b) {
            ASSERT_EQ(q[k], p.zero_points[s]);
            ASSERT_EQ(DequantizeValue(q[k], {p.scales[s], p.zero_points[s]}), 0.0f);
          } else {
            const double err = std::fabs(data[k] - DequantizeValue(q[k], {p.scales[s], p.zero_points[s]}));
            ASSERT_LE(err, p.scales[s] / 2.0 + kFloatUlpsSlack * (std::fabs(data[k]) + p.scales[s]));
          }
        }
      }
    }
  }
}

TEST(WeightTransformTest, BlockedLayoutShapes) {
  const std::vector<float> conv = StudentT(4 * 10 * 3 * 3, 14);
  TransformConfig cfg;
  cfg.granularity = Granularity::kBlock;
  cfg.block_size = 4;
  Collected out;
  auto r = TransformWeight({conv.data(), {4, 10, 3, 3}, 0, 1}, cfg, out.Sink());
  ASSERT_TRUE(r.ok());
  for (int b = 0; b < r->num_branches; ++b) {
    EXPECT_EQ(r->params[b].shape, (std::vector<int64_t>{4, 3, 3, 3}));
    EXPECT_EQ(r->params[b].axis, 1);
    EXPECT_EQ(r->params[b].block_size, 4);
    EXPECT_EQ(r->params[b].scales.size(), 108u);
  }
  const std::vector<float> mm = StudentT(10 * 6, 15);
  r = TransformWeight({mm.data(), {10, 6}, 1, 0}, cfg, out.Sink());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->params[0].shape, (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(r->params[0].axis, 0);
  EXPECT_EQ(r->params[0].zero_points.size(), 18u);
  cfg.granularity = Granularity::kChannel;
  r = TransformWeight({mm.data(), {10, 6}, 1, 0}, cfg, out.Sink());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->params[0].shape, (std::vector<int64_t>{6}));
  EXPECT_EQ(r->params[0].axis, 1);
  EXPECT_EQ(r->params[0].block_size, 0);
  cfg.granularity = Granularity::kTensor;
  r = TransformWeight({mm.data(), {10, 6}, 1, 0}, cfg, out.Sink());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->params[0].shape.empty());
  EXPECT_EQ(r->params[0].scales.size(), 1u);
}

TEST(WeightTransformTest, SplitBeatsPlainOnHeavyTails) {
  const std::vector<float> data = StudentT(256 * 256, 16);
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel}) {
    TransformConfig cfg;
    cfg.granularity = g;
    cfg.spec = {4, false};
    Collected out;
    auto r = TransformWeight({data.data(), {256, 256}, 0, 1}, cfg, out.Sink());
    ASSERT_TRUE(r.ok());
    const double split_db = SqnrDb(r->signal_energy, r->split_error_energy);
    const double plain_db = SqnrDb(r->signal_energy, r->plain_error_energy);
    EXPECT_GE(split_db, plain_db) << static_cast<int>(g);
    EXPECT_EQ(r->clusters[0].count + r->clusters[1].count + r->clusters[2].count, 256 * 256);
    EXPECT_LE(r->clusters[0].max, r->clusters[1].min);
    EXPECT_LE(r->clusters[1].max, r->clusters[2].min);
  }
}

TEST(WeightTransformTest, DegenerateInputs) {
  const std::vector<float> constant(50, 0.5f);
  TransformConfig cfg;
  Collected out;
  auto r = TransformWeight({constant.data(), {5, 10}, 0, 1}, cfg, out.Sink());
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->split);
  EXPECT_EQ(r->num_branches, 1);
  EXPECT_FALSE(r->not_split_reason.empty());
  EXPECT_EQ(out.bytes.size(), 1u);

  // Per-channel clustering; channel 1 is constant, channel 3 has two values.
  std::vector<float> data = StudentT(4 * 30, 17);
  for (int k = 0; k < 30; ++k) data[30 + k] = 2.0f;
  for (int k = 0; k < 30; ++k) data[90 + k] = (k % 2) ? 1.0f : -1.0f;
  cfg.cluster_per_channel = true;
  cfg.encoding = WeightEncoding::kFloatSplit;
  Collected split;
  r = TransformWeight({data.data(), {4, 30}, 0, 1}, cfg, split.Sink());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->split);
  EXPECT_EQ(r->degenerate_units, 2);
  const std::vector<float> mid = split.Floats(1);
  for (int k = 30; k < 60; ++k) EXPECT_EQ(mid[k], 2.0f);
  for (int k = 90; k < 120; ++k) EXPECT_EQ(mid[k], data[k]);
  Collected ref;
  auto rr = TransformWeightReference({data.data(), {4, 30}, 0, 1}, cfg, ref.Sink());
  ASSERT_TRUE(rr.ok());
  EXPECT_EQ(split.bytes, ref.bytes);

  // keep_three_branches (the engine's graph has them): the constant tensor gets three, with
  // everything in the middle one; the fast path equals the reference.
  TransformConfig keep;
  keep.keep_three_branches = true;
  Collected kept, kept_ref;
  r = TransformWeight({constant.data(), {5, 10}, 0, 1}, keep, kept.Sink());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->num_branches, 3);
  EXPECT_EQ(r->clusters[0].count + r->clusters[2].count, 0);
  rr = TransformWeightReference({constant.data(), {5, 10}, 0, 1}, keep, kept_ref.Sink());
  ASSERT_TRUE(rr.ok());
  EXPECT_EQ(rr->num_branches, 3);
  EXPECT_EQ(kept.bytes, kept_ref.bytes);

  // Empty tensor.
  Collected empty;
  r = TransformWeight({nullptr, {0, 4}, 1, 0}, TransformConfig(), empty.Sink());
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->split);
  EXPECT_EQ(r->bytes_per_branch, 0);
  EXPECT_EQ(r->params[0].scales.size(), 4u);
}

TEST(WeightTransformTest, Errors) {
  std::vector<float> data = StudentT(40, 18);
  TransformConfig cfg;
  Collected out;
  const WeightView ok{data.data(), {4, 10}, 0, 1};
  cfg.spec.bits = 9;
  EXPECT_EQ(TransformWeight(ok, cfg, out.Sink()).status().code(),
            absl::StatusCode::kInvalidArgument);
  cfg.spec.bits = 4;
  cfg.storage_bits = 2;
  EXPECT_EQ(TransformWeight(ok, cfg, out.Sink()).status().code(),
            absl::StatusCode::kInvalidArgument);
  cfg.storage_bits = 4;
  EXPECT_EQ(TransformWeight({data.data(), {4, 10}, 2, 1}, cfg, out.Sink()).status().code(),
            absl::StatusCode::kInvalidArgument);
  cfg.granularity = Granularity::kBlock;
  EXPECT_EQ(TransformWeight({data.data(), {4, 10}, 0, -1}, cfg, out.Sink()).status().code(),
            absl::StatusCode::kInvalidArgument);
  data[17] = std::nanf("");
  auto r = TransformWeight(ok, cfg, out.Sink());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(r.status().message()).find("17"), std::string::npos);
  EXPECT_EQ(TransformWeightReference(ok, cfg, out.Sink()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(out.bytes.empty());
}

TEST(WeightTransformTest, SplitBias) {
  const std::vector<float> bias = {0.1f, -2.0f, 0.2f, 3.0f, 0.0f, 0.15f};
  const auto parts = SplitBias(bias);
  ASSERT_EQ(parts.size(), 3u);
  for (size_t k = 0; k < bias.size(); ++k) {
    EXPECT_EQ((parts[0][k] + parts[1][k]) + parts[2][k], bias[k]);
  }
  EXPECT_EQ(SplitBias(std::vector<float>(4, 0.0f)).size(), 1u);
}

}  // namespace
}  // namespace sq

namespace sq {
namespace {

// The fused per-tensor route (histogram pass, region pass, quantize pass) on the MatMul
// layout of the scale benchmark: per-channel INT4 codes, split and plain, any threading.
TEST(WeightTransformTest, FusedChannelRouteMatchesReference) {
  const std::vector<float> data = StudentT(300 * 400, 21);
  const WeightView view{data.data(), {300, 400}, 1, 0};
  for (bool split : {true, false}) {
    for (WeightEncoding enc : {WeightEncoding::kCodes, WeightEncoding::kDequantizedSum}) {
      TransformConfig cfg;
      cfg.granularity = Granularity::kChannel;
      cfg.storage_bits = 4;
      cfg.split = split;
      cfg.encoding = enc;
      SCOPED_TRACE(absl::StrCat("split ", split, " enc ", static_cast<int>(enc)));
      Collected one, three, ref;
      auto r1 = TransformWeight(view, cfg, one.Sink(), Threaded(1));
      auto r3 = TransformWeight(view, cfg, three.Sink(), Threaded(3));
      auto rr = TransformWeightReference(view, cfg, ref.Sink());
      ASSERT_TRUE(r1.ok() && r3.ok() && rr.ok());
      EXPECT_EQ(one.bytes, ref.bytes);
      EXPECT_EQ(three.bytes, ref.bytes);
      ExpectSameParams(*r1, *rr);
      ExpectSameParams(*r3, *rr);
      EXPECT_EQ(r1->signal_energy, r3->signal_energy);
      EXPECT_EQ(r1->split_error_energy, r3->split_error_energy);
      EXPECT_EQ(r1->plain_error_energy, r3->plain_error_energy);
      ExpectNearRel(r1->signal_energy, rr->signal_energy);
      ExpectNearRel(r1->split_error_energy, rr->split_error_energy);
      ExpectNearRel(r1->plain_error_energy, rr->plain_error_energy);
      ExpectNearRel(r1->inertia, rr->inertia);
      for (int b = 0; b < r1->num_branches; ++b) {
        EXPECT_EQ(r1->clusters[b].count, rr->clusters[b].count);
        EXPECT_EQ(r1->clusters[b].min, rr->clusters[b].min);
        EXPECT_EQ(r1->clusters[b].max, rr->clusters[b].max);
      }
    }
  }
}

// Non-finite values are found by the histogram (split) or the range pass (plain) and the
// error still names the first bad element.
TEST(WeightTransformTest, NonFiniteInLargeTensorNamesFirstIndex) {
  std::vector<float> data = StudentT(300 * 400, 22);
  data[90001] = std::numeric_limits<float>::quiet_NaN();
  data[70003] = -std::numeric_limits<float>::infinity();
  const WeightView view{data.data(), {300, 400}, 1, 0};
  for (bool split : {true, false}) {
    TransformConfig cfg;
    cfg.split = split;
    Collected out;
    auto r = TransformWeight(view, cfg, out.Sink(), Threaded(2));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("element 70003"), std::string::npos) << r.status();
  }
}

}  // namespace
}  // namespace sq

namespace sq {
namespace {

// Channel-last code layouts through the row kernel: odd row lengths (rows start at odd
// positions inside the packed output), every storage width, per-tensor and per-channel
// clustering, a wide dynamic range with tiny and zero values, small and fused (> 65536
// elements) tensors; bytes equal the reference's and the sums do not depend on threading.
TEST(WeightTransformTest, ChannelLastRowKernelMatchesReference) {
  struct Shape {
    std::vector<int64_t> shape;
    uint64_t seed;
  };
  const std::vector<Shape> shapes = {{{40, 37}, 31}, {{7, 3, 19}, 32}, {{5, 1}, 33},
                                     {{2, 3, 53}, 34}, {{251, 301}, 35}};
  for (const Shape& sh : shapes) {
    int64_t n = 1;
    for (int64_t d : sh.shape) n *= d;
    std::vector<float> data = StudentT(static_cast<size_t>(n), sh.seed);
    for (int64_t k = 0; k < n; k += 13) data[k] = 0.0f;
    for (int64_t k = 5; k < n; k += 97) data[k] *= 1e-30f;
    for (int64_t k = 7; k < n; k += 211) data[k] = k % 2 ? 3e4f : -1e-38f;
    const int axis = static_cast<int>(sh.shape.size()) - 1;
    const WeightView view{data.data(), sh.shape, axis, 0};
    for (int variant = 0; variant < 12; ++variant) {
      TransformConfig cfg;
      cfg.granularity = Granularity::kChannel;
      cfg.encoding = WeightEncoding::kCodes;
      cfg.spec.bits = variant % 3 == 0 ? 2 : (variant % 3 == 1 ? 4 : 8);
      cfg.spec.symmetric = (variant / 3) % 2 == 1;
      // Codes narrower than their storage too (2 in 4, 4 in 8) for the per-channel half.
      cfg.storage_bits = variant >= 6 && cfg.spec.bits < 8 ? cfg.spec.bits * 2 : cfg.spec.bits;
      cfg.cluster_per_channel = variant >= 6;
      cfg.split = variant != 11;
      const std::string what = Describe({sh.shape, axis, 0}, cfg);
      SCOPED_TRACE(what);
      Collected one, three, ref;
      auto r1 = TransformWeight(view, cfg, one.Sink(), Threaded(1));
      auto r3 = TransformWeight(view, cfg, three.Sink(), Threaded(3));
      auto rr = TransformWeightReference(view, cfg, ref.Sink());
      ASSERT_TRUE(r1.ok() && r3.ok() && rr.ok());
      ExpectSameParams(*r1, *rr);
      EXPECT_EQ(one.bytes, ref.bytes);
      EXPECT_EQ(three.bytes, ref.bytes);
      EXPECT_EQ(r1->signal_energy, r3->signal_energy);
      EXPECT_EQ(r1->split_error_energy, r3->split_error_energy);
      EXPECT_EQ(r1->plain_error_energy, r3->plain_error_energy);
      ExpectNearRel(r1->signal_energy, rr->signal_energy);
      ExpectNearRel(r1->split_error_energy, rr->split_error_energy);
      ExpectNearRel(r1->plain_error_energy, rr->plain_error_energy);
    }
  }
}

}  // namespace
}  // namespace sq
