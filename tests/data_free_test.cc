// Data-free activation ranges (core/activations/data_free.h): the rules one by one
// (BatchNormalization's statistics, the Gaussian layer estimate inside its exact bound,
// elementwise functions, interval arithmetic, shape ops), what stays unknown, the messages
// that say what to give, and end to end a full-integer model without calibration data.
#include "core/activations/data_free.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/activations/qdq.h"
#include "core/engine.h"
#include "core/model_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_runner.h"

// ONNX Runtime keeps a small one-time allocation until exit.
extern "C" const char* __lsan_default_suppressions() { return "leak:libonnxruntime.so\n"; }

namespace sq {
namespace {

namespace fs = std::filesystem;
using ::sq::testing::AttrFloat;
using ::sq::testing::AttrInt;
using ::sq::testing::AttrInts;
using ::sq::testing::GraphBuilder;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr double kK = 3.0;  // the tail multiplier in the unit tests

std::map<std::string, TensorRange> Estimate(const onnx::GraphProto& g,
                                            const std::vector<QuantizeOptions::InputRange>& inputs,
                                            double k = kK) {
  ConstantTable constants(g, {});
  return EstimateRanges(g, inputs, k, &constants);
}

QuantizeOptions::InputRange In(const std::string& name, float lo, float hi) {
  QuantizeOptions::InputRange r;
  r.name = name;
  r.lo = lo;
  r.hi = hi;
  return r;
}

// BatchNormalization parameters of the models below (4 channels).
const std::vector<float> kGamma = {1.0f, -0.5f, 2.0f, 0.25f};
const std::vector<float> kBeta = {0.5f, -1.0f, 0.0f, 3.0f};
const std::vector<float> kMean = {0.1f, -0.2f, 0.3f, 0.0f};
const std::vector<float> kVar = {0.04f, 1.0f, 0.25f, 4.0f};
constexpr float kEps = 1e-3f;

// x[1,3,6,6] -> Conv 4x3x3x3 + b (conv1) -> c -> BatchNormalization -> n -> Relu -> r
//   -> Conv 5x4x3x3 + b (conv2) -> y
onnx::ModelProto ConvBnReluConv() {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 3, 6, 6});
  g.Initializer("w1", {4, 3, 3, 3}, testing::TestWeights(4 * 27, 31, 0.3f));
  g.Initializer("b1", {4}, {0.1f, -0.1f, 0.2f, 0.0f});
  g.Initializer("gamma", {4}, kGamma);
  g.Initializer("beta", {4}, kBeta);
  g.Initializer("mean", {4}, kMean);
  g.Initializer("var", {4}, kVar);
  g.Initializer("w2", {5, 4, 3, 3}, testing::TestWeights(5 * 36, 32, 0.3f));
  g.Initializer("b2", {5}, testing::TestWeights(5, 33, 0.1f));
  auto* c1 = g.Node("Conv", {"x", "w1", "b1"}, {"c"}, "conv1");
  AttrInts(c1, "pads", {1, 1, 1, 1});
  auto* bn = g.Node("BatchNormalization", {"c", "gamma", "beta", "mean", "var"}, {"n"}, "bn");
  AttrFloat(bn, "epsilon", kEps);
  g.Node("Relu", {"n"}, {"r"}, "relu");
  auto* c2 = g.Node("Conv", {"r", "w2", "b2"}, {"y"}, "conv2");
  AttrInts(c2, "pads", {1, 1, 1, 1});
  g.Output("y");
  return m;
}

TEST(DataFreeNormalQuantileTest, KnownQuantilesAndTheFallback) {
  EXPECT_NEAR(NormalQuantile(97.5), 1.959964, 1e-5);
  EXPECT_NEAR(NormalQuantile(99.9), 3.090232, 1e-5);
  EXPECT_NEAR(NormalQuantile(99.99), 3.719016, 1e-5);
  EXPECT_NEAR(NormalQuantile(84.1344746), 1.0, 1e-6);
  EXPECT_EQ(NormalQuantile(100), 4.5);
  EXPECT_EQ(NormalQuantile(100, 6.0), 6.0);
  EXPECT_EQ(NormalQuantile(50), 4.5);
  EXPECT_EQ(NormalQuantile(std::nan("")), 4.5);
}

TEST(DataFreeEstimateRangesTest, BatchNormalizationGivesItsOutputAndItsInputPerChannel) {
  const onnx::ModelProto m = ConvBnReluConv();
  // No input range: the BatchNormalization alone gives ranges.
  const auto r = Estimate(m.graph(), {});
  EXPECT_FALSE(r.count("x"));
  ASSERT_TRUE(r.count("c"));
  ASSERT_TRUE(r.count("n"));
  ASSERT_TRUE(r.count("r"));
  ASSERT_EQ(r.at("n").channel_lo.size(), 4u);
  ASSERT_EQ(r.at("c").channel_lo.size(), 4u);
  ASSERT_EQ(r.at("r").channel_lo.size(), 4u);
  float n_lo = INFINITY, n_hi = -INFINITY, r_hi = -INFINITY;
  for (int c = 0; c < 4; ++c) {
    SCOPED_TRACE(c);
    // Output: N(beta, gamma^2).
    const double lo = kBeta[c] - kK * std::abs(kGamma[c]), hi = kBeta[c] + kK * std::abs(kGamma[c]);
    EXPECT_FLOAT_EQ(r.at("n").channel_lo[c], static_cast<float>(lo));
    EXPECT_FLOAT_EQ(r.at("n").channel_hi[c], static_cast<float>(hi));
    // Input: N(mean, var + eps), whatever the Conv before it would estimate.
    const double sd = std::sqrt(kVar[c] + kEps);
    EXPECT_FLOAT_EQ(r.at("c").channel_lo[c], static_cast<float>(kMean[c] - kK * sd));
    EXPECT_FLOAT_EQ(r.at("c").channel_hi[c], static_cast<float>(kMean[c] + kK * sd));
    // Relu per channel.
    EXPECT_FLOAT_EQ(r.at("r").channel_lo[c], static_cast<float>(std::max(lo, 0.0)));
    EXPECT_FLOAT_EQ(r.at("r").channel_hi[c], static_cast<float>(std::max(hi, 0.0)));
    n_lo = std::min(n_lo, static_cast<float>(lo));
    n_hi = std::max(n_hi, static_cast<float>(hi));
    r_hi = std::max(r_hi, static_cast<float>(std::max(hi, 0.0)));
  }
  EXPECT_FLOAT_EQ(r.at("n").lo, n_lo);
  EXPECT_FLOAT_EQ(r.at("n").hi, n_hi);
  EXPECT_FLOAT_EQ(r.at("r").lo, 0.0f);
  EXPECT_FLOAT_EQ(r.at("r").hi, r_hi);
  // The Conv after the Relu is estimated from r's range.
  EXPECT_TRUE(r.count("y"));
}

// The layer rule: output channel c ~ N(m sum W_c + b_c, v sum W_c^2), m and v of the
// uniform input, mean +- k sd kept inside the exact interval bound.
TEST(DataFreeEstimateRangesTest, LayersUseTheGaussianEstimateInsideTheExactBound) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 16, 2, 2});
  std::vector<float> w(3 * 16);
  for (int i = 0; i < 16; ++i) {
    w[i] = 0.25f;                        // channel 0: sum 4, sum^2 1
    w[16 + i] = i % 2 ? 0.5f : -0.5f;    // channel 1: sum 0, sum^2 4
    w[32 + i] = i == 0 ? 2.0f : 0.0f;    // channel 2: one weight (the exact bound wins)
  }
  g.Initializer("w", {3, 16, 1, 1}, w);
  g.Initializer("b", {3}, {1.0f, -1.0f, 0.0f});
  g.Node("Conv", {"x", "w", "b"}, {"y"}, "conv");
  // MatMul: channels are the last axis, so no per-channel ranges on axis 1.
  g.Input("t", {2, 4});
  g.Initializer("mw", {4, 2}, {1, -1, 1, -1, 1, -1, 1, -1});
  g.Node("MatMul", {"t", "mw"}, {"u"}, "mm");
  // Gemm transB with alpha, beta.
  g.Initializer("gw", {2, 4}, {1, 1, 1, 1, -2, 0, 0, 0});
  g.Initializer("gc", {2}, {1.0f, 2.0f});
  auto* gemm = g.Node("Gemm", {"t", "gw", "gc"}, {"v"}, "gemm");
  AttrInt(gemm, "transB", 1);
  AttrFloat(gemm, "alpha", 0.5f);
  AttrFloat(gemm, "beta", 2.0f);
  g.Output("y");
  g.Output("u");
  g.Output("v");
  const auto r = Estimate(m.graph(), {In("x", 0, 1), In("t", -1, 1)});
  ASSERT_TRUE(r.count("y"));
  const double v = 1.0 / 12, sd0 = std::sqrt(v * 1), sd1 = std::sqrt(v * 4);
  ASSERT_EQ(r.at("y").channel_lo.size(), 3u);
  EXPECT_FLOAT_EQ(r.at("y").channel_lo[0], static_cast<float>(0.5 * 4 + 1 - kK * sd0));
  EXPECT_FLOAT_EQ(r.at("y").channel_hi[0], static_cast<float>(0.5 * 4 + 1 + kK * sd0));
  EXPECT_FLOAT_EQ(r.at("y").channel_lo[1], static_cast<float>(-1 - kK * sd1));
  EXPECT_FLOAT_EQ(r.at("y").channel_hi[1], static_cast<float>(-1 + kK * sd1));
  // Channel 2 is 2 * x0 in [0, 2]: the Gaussian 1 +- 3 * 0.577 is cut to the exact bound.
  EXPECT_FLOAT_EQ(r.at("y").channel_lo[2], 0.0f);
  EXPECT_FLOAT_EQ(r.at("y").channel_hi[2], 2.0f);
  EXPECT_FLOAT_EQ(r.at("y").lo, static_cast<float>(-1 - kK * sd1));  // the union of the channels
  EXPECT_FLOAT_EQ(r.at("y").hi, static_cast<float>(3 + kK * sd0));
  // MatMul on [-1, 1]: m = 0, v = 1/3; both columns sum^2 4: +- k sqrt(4/3) (exact bound 4).
  ASSERT_TRUE(r.count("u"));
  EXPECT_TRUE(r.at("u").channel_lo.empty());
  EXPECT_FLOAT_EQ(r.at("u").hi, static_cast<float>(kK * std::sqrt(4.0 / 3)));
  EXPECT_FLOAT_EQ(r.at("u").lo, static_cast<float>(-kK * std::sqrt(4.0 / 3)));
  // Gemm: alpha scales the weights, beta the bias. Row 0: 0.5*(sum of 4) -> sd sqrt(1/3 * 1),
  // bias 2; row 1: -1 * t0 -> exact bound [-1, 1] + 4.
  ASSERT_TRUE(r.count("v"));
  ASSERT_EQ(r.at("v").channel_lo.size(), 2u);
  EXPECT_FLOAT_EQ(r.at("v").channel_lo[0], static_cast<float>(2 - kK * std::sqrt(1.0 / 3)));
  EXPECT_FLOAT_EQ(r.at("v").channel_hi[0], static_cast<float>(2 + kK * std::sqrt(1.0 / 3)));
  EXPECT_FLOAT_EQ(r.at("v").channel_lo[1], 3.0f);
  EXPECT_FLOAT_EQ(r.at("v").channel_hi[1], 5.0f);
}

TEST(DataFreeEstimateRangesTest, ElementwiseIntervalAndShapeRules) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 4});
  g.Input("z", {1, 4});
  g.Initializer("two", {}, {2.0f});
  g.Initializer("neg", {}, {-0.5f});
  g.Initializer("around0", {2}, {-1.0f, 1.0f});
  g.Node("Add", {"x", "two"}, {"add"});
  g.Node("Mul", {"x", "neg"}, {"mul"});
  g.Node("Sub", {"x", "z"}, {"sub"});
  g.Node("Div", {"x", "two"}, {"div"});
  g.Node("Div", {"x", "around0"}, {"div0"});  // divisor spans 0: unknown
  g.Node("Sigmoid", {"x"}, {"sig"});
  g.Node("Tanh", {"x"}, {"tanh"});
  auto* lr = g.Node("LeakyRelu", {"x"}, {"leaky"});
  AttrFloat(lr, "alpha", 0.1f);
  g.Node("HardSwish", {"x"}, {"hswish"});
  g.Node("Exp", {"x"}, {"exp"});
  g.Node("Concat", {"x", "z"}, {"cat"});
  g.Node("Pad", {"z"}, {"pad"});
  g.Node("Transpose", {"x"}, {"tr"});
  g.Node("Softmax", {"x"}, {"soft"});
  g.Node("Relu", {"soft"}, {"after_soft"});
  g.Node("Clip", {"x", "neg", "two"}, {"clip"});
  for (const char* o : {"add", "mul", "sub", "div", "div0", "sig", "tanh", "leaky", "hswish", "exp", "cat", "pad",
                        "tr", "soft", "after_soft", "clip"}) {
    g.Output(o);
  }
  const auto r = Estimate(m.graph(), {In("x", -2, 4), In("z", 1, 3)});
  auto expect = [&](const std::string& t, float lo, float hi) {
    SCOPED_TRACE(t);
    ASSERT_TRUE(r.count(t));
    EXPECT_FLOAT_EQ(r.at(t).lo, lo);
    EXPECT_FLOAT_EQ(r.at(t).hi, hi);
  };
  expect("add", 0, 6);
  expect("mul", -2, 1);
  expect("sub", -5, 3);
  expect("div", -1, 2);
  EXPECT_FALSE(r.count("div0"));
  expect("sig", 1 / (1 + std::exp(2.0f)), 1 / (1 + std::exp(-4.0f)));
  expect("tanh", std::tanh(-2.0f), std::tanh(4.0f));
  expect("leaky", -0.2f, 4);
  expect("hswish", -0.375f, 4);  // the minimum at -1.5, inside [-2, 4]
  expect("exp", std::exp(-2.0f), std::exp(4.0f));
  expect("cat", -2, 4);
  expect("pad", 0, 3);  // the pad value 0 joins [1, 3]
  expect("tr", -2, 4);
  expect("clip", -0.5f, 2);
  // Softmax has no rule: unknown, and so is what is computed from it.
  EXPECT_FALSE(r.count("soft"));
  EXPECT_FALSE(r.count("after_soft"));
}

TEST(DataFreeRequireRangesTest, NamesTheInputOrTheOpAndWhatWouldGiveARange) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 8});
  g.Initializer("w", {8, 8}, testing::TestWeights(64, 3));
  g.Node("Softmax", {"x"}, {"s"}, "attention_softmax");
  g.Node("MatMul", {"s", "w"}, {"y"}, "mm");
  g.Output("y");
  // No range for x.
  auto ranges = Estimate(m.graph(), {});
  absl::Status s = RequireRanges(m.graph(), {"s", "y"}, ranges);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("graph input 'x'"), HasSubstr("--input-range x=LO:HI"),
                                 HasSubstr("--calibration")));
  // x known, the Softmax unknown.
  ranges = Estimate(m.graph(), {In("x", -1, 1)});
  s = RequireRanges(m.graph(), {"x", "s", "y"}, ranges);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'s'"), HasSubstr("Softmax"), HasSubstr("attention_softmax"),
                                 HasSubstr("--calibration")));
  // What is known passes.
  EXPECT_TRUE(RequireRanges(m.graph(), {"x"}, ranges).ok());
}

// --- end to end -------------------------------------------------------------------------

class DataFreeTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq-data-free"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }

  QuantizeOptions Options() {
    QuantizeOptions o;
    o.bits = 8;
    o.target = Target::kQdq;
    o.activations = ActivationType::kInt8;
    o.min_weight_elements = 1;
    o.threads = 1;
    return o;
  }
  std::string dir_;
};

// The scale and zero point of the QuantizeLinear reading `tensor`; found = false if none.
bool QuantizerOf(const onnx::GraphProto& g, const std::string& tensor, float* scale, int* zero_point) {
  for (const auto& n : g.node()) {
    if (n.op_type() != "QuantizeLinear" || n.input(0) != tensor) continue;
    for (const auto& t : g.initializer()) {
      if (t.name() == n.input(1) && t.raw_data().size() == 4) std::memcpy(scale, t.raw_data().data(), 4);
      if (t.name() == n.input(2) && t.raw_data().size() == 1) *zero_point = static_cast<int8_t>(t.raw_data()[0]);
    }
    return true;
  }
  return false;
}

TEST_F(DataFreeTest, ConvBatchNormReluConvQuantizesFromTheDeclaredInputRangeAlone) {
  const onnx::ModelProto m = ConvBnReluConv();
  ASSERT_TRUE(testing::SaveModel(m, Path("in.onnx")).ok());
  QuantizeOptions o = Options();
  o.input_ranges = {In("x", -1, 1)};
  auto report = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), o);
  ASSERT_TRUE(report.ok()) << report.status();
  const double k = NormalQuantile(o.calibration_percentile);
  EXPECT_THAT(report->activations.ranges_from, HasSubstr(absl::StrFormat("data-free estimate (k %.2f)", k)));
  EXPECT_GE(report->activations.quantized_ops, 2);

  auto out = LoadedModel::FromFile(Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  const onnx::GraphProto& g = (*out)->proto().graph();
  // x: the declared range.
  float scale = 0;
  int zp = 0;
  ASSERT_TRUE(QuantizerOf(g, "x", &scale, &zp));
  EXPECT_EQ(scale, ChooseActivationParams(-1, 1, ActivationType::kInt8).scale);
  EXPECT_EQ(zp, ChooseActivationParams(-1, 1, ActivationType::kInt8).zero_point);
  // r = Relu(BatchNormalization(...)): [0, max_c (beta_c + k |gamma_c|)], the
  // BatchNormalization rule, though the fold stage has folded it into conv1 by then.
  double hi = 0;
  for (int c = 0; c < 4; ++c) hi = std::max(hi, kBeta[c] + k * std::abs(kGamma[c]));
  ASSERT_TRUE(QuantizerOf(g, "r", &scale, &zp));
  const ActivationParams want = ChooseActivationParams(0, static_cast<float>(hi), ActivationType::kInt8);
  EXPECT_FLOAT_EQ(scale, want.scale);
  EXPECT_EQ(zp, want.zero_point);
  EXPECT_EQ(zp, -128);
  EXPECT_EQ(report->activations.folded_batch_norms, 1);

  // It runs in ONNX Runtime, near the FP32 model on inputs inside the declared range.
  auto in = testing::MakeRandomInputs(Path("in.onnx"), 5);
  ASSERT_TRUE(in.ok()) << in.status();
  auto want_out = testing::RunOrt(Path("in.onnx"), *in);
  auto got_out = testing::RunOrt(Path("out.onnx"), *in);
  ASSERT_TRUE(want_out.ok()) << want_out.status();
  ASSERT_TRUE(got_out.ok()) << got_out.status();
  EXPECT_LT(testing::MaxRelativeError(*got_out, *want_out), 0.2);
}

TEST_F(DataFreeTest, WithoutAnInputRangeTheRunFailsNamingTheInputAndTheFlag) {
  ASSERT_TRUE(testing::SaveModel(ConvBnReluConv(), Path("in.onnx")).ok());
  auto report = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), Options());
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), AllOf(HasSubstr("'x'"), HasSubstr("--input-range")));
  EXPECT_FALSE(fs::exists(Path("out.onnx")));
  // A range for another name does not help.
  QuantizeOptions o = Options();
  o.input_ranges = {In("not_x", 0, 1)};
  report = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), o);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DataFreeTest, AnOpWithoutARuleFailsNamingIt) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 16});
  g.Initializer("w", {16, 8}, testing::TestWeights(128, 3));
  g.Node("Softmax", {"x"}, {"s"}, "softmax");
  g.Node("MatMul", {"s", "w"}, {"y"}, "fc");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("in.onnx")).ok());
  QuantizeOptions o = Options();
  o.input_ranges = {In("x", -1, 1)};
  auto report = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), o);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), AllOf(HasSubstr("Softmax"), HasSubstr("'softmax'"), HasSubstr("--calibration")));
  EXPECT_FALSE(fs::exists(Path("out.onnx")));
}

}  // namespace
}  // namespace sq
