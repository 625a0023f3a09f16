// Folding per-channel affine ops into the layer before them and fusing a written-out
// HardSwish (core/activations/fold.h), on models built in code: every fold and fusion keeps
// the FP32 function in ONNX Runtime (max relative error < 1e-5), removes the ops it
// absorbed and counts them; what must not be folded or fused is left alone; a folded
// BatchNormalization's output statistics follow the folds after it.
#include "core/activations/fold.h"

#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
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

using Reader = std::function<absl::StatusOr<std::vector<float>>(const std::string&, std::vector<int64_t>*)>;

// The FP32 values of a constant of `g` as it is when called: an initializer (raw or
// float_data) or a Constant node's `value`.
Reader ReadOf(const onnx::GraphProto* g) {
  return [g](const std::string& name, std::vector<int64_t>* dims) -> absl::StatusOr<std::vector<float>> {
    const onnx::TensorProto* t = nullptr;
    for (const auto& init : g->initializer()) {
      if (init.name() == name) t = &init;
    }
    for (const auto& n : g->node()) {
      if (t || n.op_type() != "Constant" || n.output_size() != 1 || n.output(0) != name) continue;
      for (const auto& a : n.attribute()) {
        if (a.name() == "value" && a.has_t()) t = &a.t();
      }
    }
    if (!t || t->data_type() != onnx::TensorProto::FLOAT) {
      return absl::NotFoundError(absl::StrCat("no FP32 constant '", name, "'"));
    }
    dims->assign(t->dims().begin(), t->dims().end());
    std::vector<float> v;
    if (!t->raw_data().empty()) {
      v.resize(t->raw_data().size() / 4);
      std::memcpy(v.data(), t->raw_data().data(), v.size() * 4);
    } else {
      v.assign(t->float_data().begin(), t->float_data().end());
    }
    return v;
  };
}

int Count(const onnx::GraphProto& g, const std::string& op) {
  int n = 0;
  for (const auto& node : g.node()) n += node.op_type() == op;
  return n;
}

const onnx::NodeProto* FindOp(const onnx::GraphProto& g, const std::string& op) {
  for (const auto& n : g.node()) {
    if (n.op_type() == op) return &n;
  }
  return nullptr;
}

float AttrF(const onnx::NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return a.f();
  }
  return NAN;
}

// Per-channel test parameters (C channels).
std::vector<float> Ramp(int64_t c, float start, float step) {
  std::vector<float> v(c);
  for (int64_t i = 0; i < c; ++i) v[i] = start + step * static_cast<float>(i);
  return v;
}

// The BatchNormalization of C channels `in` -> `out` (epsilon 1e-3), named `prefix`.
void AddBatchNorm(GraphBuilder& g, int64_t c, const std::string& in, const std::string& out,
                  const std::string& prefix = "bn") {
  g.Initializer(prefix + "_gamma", {c}, Ramp(c, -0.75f, 0.4f));
  g.Initializer(prefix + "_beta", {c}, Ramp(c, 0.3f, -0.2f));
  g.Initializer(prefix + "_mean", {c}, Ramp(c, -0.1f, 0.05f));
  g.Initializer(prefix + "_var", {c}, Ramp(c, 0.2f, 0.3f));
  AttrFloat(g.Node("BatchNormalization",
                   {in, prefix + "_gamma", prefix + "_beta", prefix + "_mean", prefix + "_var"}, {out}, prefix),
            "epsilon", 1e-3f);
}

class FoldTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq-fold"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }

  // Runs both models on one input (U(-scale, scale)) and returns the max relative error of
  // `got` against `want`.
  double Error(const onnx::ModelProto& want, const onnx::ModelProto& got, float scale = 1.0f) {
    const std::string a = Path("want.onnx"), b = Path("got.onnx");
    EXPECT_TRUE(testing::SaveModel(want, a).ok());
    EXPECT_TRUE(testing::SaveModel(got, b).ok());
    auto in = testing::MakeRandomInputs(a, 5, 2);
    EXPECT_TRUE(in.ok()) << in.status();
    if (!in.ok()) return 1e9;
    for (auto& t : *in) {
      for (float& v : t.f) v *= scale;
    }
    auto ra = testing::RunOrt(a, *in);
    auto rb = testing::RunOrt(b, *in);
    EXPECT_TRUE(ra.ok()) << ra.status();
    EXPECT_TRUE(rb.ok()) << rb.status();
    if (!ra.ok() || !rb.ok()) return 1e9;
    return testing::MaxRelativeError(*rb, *ra);
  }

  // Folds `m`'s graph; the folded model computes what `m` does.
  FoldResult FoldAndCompare(const onnx::ModelProto& m, onnx::ModelProto* out) {
    *out = m;
    auto r = FoldAffineIntoLayers(out->mutable_graph(), ReadOf(&out->graph()));
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_LT(Error(m, *out), 1e-5);
    return r.ok() ? *r : FoldResult{};
  }

  std::string dir_;
};

// x[N,3,7,7] -> Conv 6x3x3x3 (+ b when `bias`) -> c, pads 1.
onnx::ModelProto ConvInput(bool bias = true) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 3, 7, 7});
  g.Initializer("w", {6, 3, 3, 3}, testing::TestWeights(6 * 27, 61, 0.3f));
  std::vector<std::string> in = {"x", "w"};
  if (bias) in.push_back(g.Initializer("b", {6}, Ramp(6, -0.2f, 0.1f)));
  AttrInts(g.Node("Conv", in, {"c"}, "conv"), "pads", {1, 1, 1, 1});
  return m;
}

TEST_F(FoldTest, ConvBatchNormFoldsIntoTheConv) {
  onnx::ModelProto m = ConvInput();
  GraphBuilder g(m.mutable_graph());
  AddBatchNorm(g, 6, "c", "y");
  g.Output("y");
  onnx::ModelProto out;
  const FoldResult r = FoldAndCompare(m, &out);
  EXPECT_EQ(r.batch_norms, 1);
  EXPECT_EQ(r.muls, 0);
  EXPECT_EQ(r.adds, 0);
  EXPECT_EQ(Count(out.graph(), "BatchNormalization"), 0);
  ASSERT_EQ(out.graph().node_size(), 1);
  EXPECT_EQ(out.graph().node(0).op_type(), "Conv");
  EXPECT_EQ(out.graph().node(0).output(0), "y");
  // The BatchNormalization's parameters and the old weight and bias are gone.
  for (const auto& t : out.graph().initializer()) {
    EXPECT_THAT(t.name(), ::testing::Not(::testing::AnyOf("bn_gamma", "bn_beta", "bn_mean", "bn_var", "w", "b")));
  }
  // The output stats: the norm's beta and |gamma|.
  ASSERT_EQ(r.output_stats.count("y"), 1u);
  const std::vector<float> gamma = Ramp(6, -0.75f, 0.4f), beta = Ramp(6, 0.3f, -0.2f);
  for (int c = 0; c < 6; ++c) {
    EXPECT_FLOAT_EQ(r.output_stats.at("y").mean[c], beta[c]);
    EXPECT_FLOAT_EQ(r.output_stats.at("y").sd[c], std::abs(gamma[c]));
  }
}

TEST_F(FoldTest, ConvWithoutBiasGetsOneFromTheBatchNorm) {
  onnx::ModelProto m = ConvInput(/*bias=*/false);
  GraphBuilder g(m.mutable_graph());
  AddBatchNorm(g, 6, "c", "y");
  g.Output("y");
  onnx::ModelProto out;
  const FoldResult r = FoldAndCompare(m, &out);
  EXPECT_EQ(r.batch_norms, 1);
  EXPECT_EQ(Count(out.graph(), "BatchNormalization"), 0);
  const onnx::NodeProto* conv = FindOp(out.graph(), "Conv");
  ASSERT_NE(conv, nullptr);
  ASSERT_EQ(conv->input_size(), 3);
  std::vector<int64_t> dims;
  auto bias = ReadOf(&out.graph())(conv->input(2), &dims);
  ASSERT_TRUE(bias.ok()) << bias.status();
  EXPECT_EQ(dims, (std::vector<int64_t>{6}));
  // b' = (0 - mean) * gamma / sqrt(var + eps) + beta
  const std::vector<float> gamma = Ramp(6, -0.75f, 0.4f), beta = Ramp(6, 0.3f, -0.2f), mean = Ramp(6, -0.1f, 0.05f),
                           var = Ramp(6, 0.2f, 0.3f);
  for (int c = 0; c < 6; ++c) {
    EXPECT_NEAR((*bias)[c], -mean[c] * gamma[c] / std::sqrt(var[c] + 1e-3f) + beta[c], 1e-6) << c;
  }
}

TEST_F(FoldTest, ConvMulPerChannelThenAddScalarFold) {
  onnx::ModelProto m = ConvInput();
  GraphBuilder g(m.mutable_graph());
  g.Initializer("s", {6, 1, 1}, {2.0f, -0.5f, 0.25f, 1.5f, -3.0f, 0.75f});
  g.Constant("t", {}, {0.375f});  // a Constant node, not an initializer
  g.Node("Mul", {"c", "s"}, {"m"}, "mul");
  g.Node("Add", {"t", "m"}, {"y"}, "add");  // the constant first
  g.Output("y");
  onnx::ModelProto out;
  const FoldResult r = FoldAndCompare(m, &out);
  EXPECT_EQ(r.batch_norms, 0);
  EXPECT_EQ(r.muls, 1);
  EXPECT_EQ(r.adds, 1);
  EXPECT_EQ(Count(out.graph(), "Mul"), 0);
  EXPECT_EQ(Count(out.graph(), "Add"), 0);
  EXPECT_EQ(Count(out.graph(), "Constant"), 0);  // nothing reads t any more
  EXPECT_EQ(Count(out.graph(), "Conv"), 1);
  EXPECT_TRUE(r.output_stats.empty());  // no norm: nothing known about the output
}

TEST_F(FoldTest, GemmMulAndAddPerColumnFold) {
  for (int trans_b : {0, 1}) {
    SCOPED_TRACE(absl::StrCat("transB ", trans_b));
    onnx::ModelProto m = testing::NewModel(17);
    GraphBuilder g(m.mutable_graph());
    g.Input("x", {-1, 10});
    g.Initializer("w", trans_b ? std::vector<int64_t>{7, 10} : std::vector<int64_t>{10, 7},
                  testing::TestWeights(70, 62, 0.3f));
    g.Initializer("b", {7}, Ramp(7, 0.5f, -0.15f));
    AttrInt(g.Node("Gemm", {"x", "w", "b"}, {"h"}, "fc"), "transB", trans_b);
    g.Initializer("s", {7}, {1.0f, -2.0f, 0.5f, 3.0f, -0.25f, 1.25f, 0.1f});
    g.Initializer("t", {7}, Ramp(7, -1.0f, 0.3f));
    g.Node("Mul", {"h", "s"}, {"m"}, "mul");
    g.Node("Add", {"m", "t"}, {"y"}, "add");
    g.Output("y");
    onnx::ModelProto out;
    const FoldResult r = FoldAndCompare(m, &out);
    EXPECT_EQ(r.muls, 1);
    EXPECT_EQ(r.adds, 1);
    ASSERT_EQ(out.graph().node_size(), 1);
    EXPECT_EQ(out.graph().node(0).op_type(), "Gemm");
    EXPECT_EQ(out.graph().node(0).output(0), "y");
  }
}

TEST_F(FoldTest, ConvTransposeGroupOneFoldsNormMulAndAdd) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 3, 5, 5});
  g.Initializer("w", {3, 5, 3, 3}, testing::TestWeights(3 * 45, 63, 0.3f));  // [Cin, Cout, k, k]
  g.Initializer("b", {5}, Ramp(5, 0.1f, -0.05f));
  AttrInts(g.Node("ConvTranspose", {"x", "w", "b"}, {"c"}, "deconv"), "strides", {2, 2});
  AddBatchNorm(g, 5, "c", "n");
  g.Initializer("s", {5, 1, 1}, {0.5f, -1.0f, 2.0f, 1.0f, -0.25f});
  g.Initializer("t", {5, 1, 1}, Ramp(5, 0.2f, 0.1f));
  g.Node("Mul", {"n", "s"}, {"m"}, "mul");
  g.Node("Add", {"m", "t"}, {"y"}, "add");
  g.Output("y");
  onnx::ModelProto out;
  const FoldResult r = FoldAndCompare(m, &out);
  EXPECT_EQ(r.batch_norms, 1);
  EXPECT_EQ(r.muls, 1);
  EXPECT_EQ(r.adds, 1);
  ASSERT_EQ(out.graph().node_size(), 1);
  EXPECT_EQ(out.graph().node(0).op_type(), "ConvTranspose");
}

TEST_F(FoldTest, OutputStatsFollowTheMulAndAddAfterTheNorm) {
  onnx::ModelProto m = ConvInput();
  GraphBuilder g(m.mutable_graph());
  AddBatchNorm(g, 6, "c", "n");
  const std::vector<float> s = {2.0f, -0.5f, 0.25f, 1.5f, -3.0f, 0.75f}, t = Ramp(6, -0.4f, 0.3f);
  g.Initializer("s", {6, 1, 1}, s);
  g.Initializer("t", {1, 6, 1, 1}, t);
  g.Node("Mul", {"n", "s"}, {"m"}, "mul");
  g.Node("Add", {"m", "t"}, {"y"}, "add");
  g.Node("Relu", {"y"}, {"r"}, "relu");
  g.Output("r");
  onnx::ModelProto out;
  const FoldResult r = FoldAndCompare(m, &out);
  EXPECT_EQ(r.batch_norms, 1);
  EXPECT_EQ(r.muls, 1);
  EXPECT_EQ(r.adds, 1);
  EXPECT_EQ(Count(out.graph(), "Conv"), 1);
  EXPECT_EQ(Count(out.graph(), "Relu"), 1);
  EXPECT_EQ(out.graph().node_size(), 2);
  // Keyed by the final output only.
  ASSERT_EQ(r.output_stats.size(), 1u);
  ASSERT_EQ(r.output_stats.count("y"), 1u);
  const FoldResult::Stats& st = r.output_stats.at("y");
  const std::vector<float> gamma = Ramp(6, -0.75f, 0.4f), beta = Ramp(6, 0.3f, -0.2f);
  ASSERT_EQ(st.mean.size(), 6u);
  ASSERT_EQ(st.sd.size(), 6u);
  for (int c = 0; c < 6; ++c) {
    EXPECT_FLOAT_EQ(st.mean[c], s[c] * beta[c] + t[c]) << c;
    EXPECT_FLOAT_EQ(st.sd[c], std::abs(s[c]) * std::abs(gamma[c])) << c;
  }
}

TEST_F(FoldTest, LayerWhoseOutputIsReadElsewhereIsNotFolded) {
  // (a) the Conv's output is also read by another node; (b) it is also a graph output.
  for (const char* variant : {"other reader", "graph output"}) {
    SCOPED_TRACE(variant);
    onnx::ModelProto m = ConvInput();
    GraphBuilder g(m.mutable_graph());
    AddBatchNorm(g, 6, "c", "y");
    g.Output("y");
    if (std::string(variant) == "other reader") {
      g.Node("Relu", {"c"}, {"r"}, "relu");
      g.Output("r");
    } else {
      g.Output("c");
    }
    onnx::ModelProto out;
    const FoldResult r = FoldAndCompare(m, &out);
    EXPECT_EQ(r.batch_norms, 0);
    EXPECT_EQ(Count(out.graph(), "BatchNormalization"), 1);
    EXPECT_EQ(out.graph().node_size(), m.graph().node_size());
    EXPECT_TRUE(r.output_stats.empty());
  }
  // Nor a Mul whose Conv output is read by another node.
  onnx::ModelProto m = ConvInput();
  GraphBuilder g(m.mutable_graph());
  g.Initializer("s", {6, 1, 1}, Ramp(6, 0.5f, 0.25f));
  g.Node("Mul", {"c", "s"}, {"y"}, "mul");
  g.Node("Add", {"c", "y"}, {"z"}, "residual");
  g.Output("z");
  onnx::ModelProto out;
  const FoldResult r = FoldAndCompare(m, &out);
  EXPECT_EQ(r.muls, 0);
  EXPECT_EQ(r.adds, 0);
  EXPECT_EQ(Count(out.graph(), "Mul"), 1);
}

// A constant that broadcasts against the output along another axis than the channels' is no
// per-channel scale, and one of higher rank than the output broadcasts the output up: after
// a 2-D Conv (output [1, 6, 6, 6]: height and width equal C, so every model is valid) a
// [C, 1] constant scales rows, a [C] constant columns, a [1, 1, 1, 1, 1] scalar makes the
// output 5-D; after a 1-D Conv a [C, 1, 1] constant broadcasts the batch against C.
TEST_F(FoldTest, ConstantAlongAnotherAxisIsNotFolded) {
  struct Case {
    int spatial;
    std::vector<int64_t> dims;
  };
  for (const Case& c : std::vector<Case>{{2, {6, 1}}, {2, {6}}, {2, {1, 1, 1, 1, 1}}, {1, {6, 1, 1}}}) {
    SCOPED_TRACE(absl::StrCat(c.spatial, "-D conv, constant rank ", c.dims.size()));
    onnx::ModelProto m = testing::NewModel(17);
    GraphBuilder g(m.mutable_graph());
    std::vector<int64_t> x = {1, 3}, w = {6, 3};
    for (int d = 0; d < c.spatial; ++d) {
      x.push_back(6);
      w.push_back(3);
    }
    g.Input("x", x);
    g.Initializer("w", w, testing::TestWeights(c.spatial == 2 ? 6 * 27 : 6 * 9, 64, 0.3f));
    g.Initializer("b", {6}, Ramp(6, -0.2f, 0.1f));
    AttrInts(g.Node("Conv", {"x", "w", "b"}, {"c"}, "conv"), "pads", std::vector<int64_t>(2 * c.spatial, 1));
    int64_t n = 1;
    for (int64_t d : c.dims) n *= d;
    g.Initializer("s", c.dims, n == 1 ? std::vector<float>{2.5f} : std::vector<float>{2.0f, -0.5f, 0.25f, 1.5f, -3.0f, 0.75f});
    g.Node("Mul", {"c", "s"}, {"y"}, "mul");
    g.Output("y");
    onnx::ModelProto out;
    const FoldResult r = FoldAndCompare(m, &out);
    EXPECT_EQ(r.muls, 0);
    EXPECT_EQ(Count(out.graph(), "Mul"), 1);
  }
  // The 1-D Conv takes a [C, 1] constant, the 2-D one a [1, C, 1, 1] constant.
  for (int spatial : {1, 2}) {
    SCOPED_TRACE(absl::StrCat(spatial, "-D conv, per channel"));
    onnx::ModelProto m = testing::NewModel(17);
    GraphBuilder g(m.mutable_graph());
    std::vector<int64_t> x = {1, 3}, w = {6, 3};
    for (int d = 0; d < spatial; ++d) {
      x.push_back(6);
      w.push_back(3);
    }
    g.Input("x", x);
    g.Initializer("w", w, testing::TestWeights(spatial == 2 ? 6 * 27 : 6 * 9, 64, 0.3f));
    AttrInts(g.Node("Conv", {"x", "w"}, {"c"}, "conv"), "pads", std::vector<int64_t>(2 * spatial, 1));
    g.Initializer("s", spatial == 1 ? std::vector<int64_t>{6, 1} : std::vector<int64_t>{1, 6, 1, 1},
                  {2.0f, -0.5f, 0.25f, 1.5f, -3.0f, 0.75f});
    g.Node("Mul", {"c", "s"}, {"y"}, "mul");
    g.Output("y");
    onnx::ModelProto out;
    const FoldResult r = FoldAndCompare(m, &out);
    EXPECT_EQ(r.muls, 1);
    EXPECT_EQ(Count(out.graph(), "Mul"), 0);
  }
}

// A Gemm whose C is [N, 1] (valid where M = N) adds one value per row, not per column: a
// per-column Mul after it is not folded into it.
TEST_F(FoldTest, GemmWithPerRowBiasIsNotFolded) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {7, 10});
  g.Initializer("w", {10, 7}, testing::TestWeights(70, 65, 0.3f));
  g.Initializer("b", {7, 1}, Ramp(7, 0.5f, -0.15f));
  g.Node("Gemm", {"x", "w", "b"}, {"h"}, "fc");
  g.Initializer("s", {7}, {1.0f, -2.0f, 0.5f, 3.0f, -0.25f, 1.25f, 0.1f});
  g.Node("Mul", {"h", "s"}, {"y"}, "mul");
  g.Output("y");
  onnx::ModelProto out;
  const FoldResult r = FoldAndCompare(m, &out);
  EXPECT_EQ(r.muls, 0);
  EXPECT_EQ(Count(out.graph(), "Mul"), 1);
}

// --- HardSwish ------------------------------------------------------------------------

struct HardSwishCase {
  std::string name;
  int opset;
  bool by_mul;      // the last step Mul by 1/6 instead of Div by 6
  bool clip_attrs;  // Clip bounds as attributes (Clip-6) instead of inputs (Clip-11+)
  bool swapped;     // Add(3, x) and Mul(Clip, x)
};

// x[2,8] -> [Add 3 -> Clip 0..6 -> Mul x -> Div 6 (or Mul 1/6)] -> y -> Relu -> out.
onnx::ModelProto HardSwishModel(const HardSwishCase& c) {
  onnx::ModelProto m = testing::NewModel(c.opset);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {2, 8});
  g.Initializer("three", {}, {3.0f});
  g.Node("Add", c.swapped ? std::vector<std::string>{"three", "x"} : std::vector<std::string>{"x", "three"},
         {"t"}, "hs_add");
  if (c.clip_attrs) {
    auto* clip = g.Node("Clip", {"t"}, {"r"}, "hs_clip");
    AttrFloat(clip, "min", 0.0f);
    AttrFloat(clip, "max", 6.0f);
  } else {
    g.Constant("zero", {}, {0.0f});
    g.Initializer("six_hi", {}, {6.0f});
    g.Node("Clip", {"t", "zero", "six_hi"}, {"r"}, "hs_clip");
  }
  g.Node("Mul", c.swapped ? std::vector<std::string>{"r", "x"} : std::vector<std::string>{"x", "r"}, {"p"},
         "hs_mul");
  if (c.by_mul) {
    g.Initializer("sixth", {1}, {1.0f / 6});
    g.Node("Mul", {"p", "sixth"}, {"y"}, "hs_scale");
  } else {
    g.Initializer("six", {}, {6.0f});
    g.Node("Div", {"p", "six"}, {"y"}, "hs_scale");
  }
  g.Node("Relu", {"y"}, {"out"}, "relu");
  g.Output("out");
  return m;
}

TEST_F(FoldTest, WrittenOutHardSwishBecomesOneOpFromOpset14AndHardSigmoidMulBelow) {
  const std::vector<HardSwishCase> cases = {
      {"div, clip inputs, opset 14", 14, false, false, false},
      {"mul 1/6, clip inputs, opset 17", 17, true, false, true},
      {"div, clip inputs, opset 13", 13, false, false, false},
      {"mul 1/6, clip inputs, opset 11", 11, true, false, true},
      {"div, clip attributes, opset 10", 10, false, true, false},
      {"mul 1/6, clip attributes, opset 8", 8, true, true, true},
  };
  for (const HardSwishCase& c : cases) {
    SCOPED_TRACE(c.name);
    const onnx::ModelProto m = HardSwishModel(c);
    onnx::ModelProto out = m;
    auto n = FuseHardSwish(out.mutable_graph(), c.opset, ReadOf(&out.graph()));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, 1);
    EXPECT_EQ(Count(out.graph(), "Add"), 0);
    EXPECT_EQ(Count(out.graph(), "Clip"), 0);
    EXPECT_EQ(Count(out.graph(), "Div"), 0);
    EXPECT_EQ(Count(out.graph(), "Relu"), 1);
    if (c.opset >= 14) {
      EXPECT_EQ(Count(out.graph(), "HardSwish"), 1);
      EXPECT_EQ(Count(out.graph(), "HardSigmoid"), 0);
      EXPECT_EQ(Count(out.graph(), "Mul"), 0);
      const onnx::NodeProto* hs = FindOp(out.graph(), "HardSwish");
      ASSERT_NE(hs, nullptr);
      EXPECT_EQ(hs->input(0), "x");
      EXPECT_EQ(hs->output(0), "y");
    } else {
      EXPECT_EQ(Count(out.graph(), "HardSwish"), 0);
      const onnx::NodeProto* hs = FindOp(out.graph(), "HardSigmoid");
      ASSERT_NE(hs, nullptr);
      EXPECT_EQ(hs->input(0), "x");
      EXPECT_FLOAT_EQ(AttrF(*hs, "alpha"), 1.0f / 6);
      EXPECT_FLOAT_EQ(AttrF(*hs, "beta"), 0.5f);
      ASSERT_EQ(Count(out.graph(), "Mul"), 1);
      const onnx::NodeProto* mul = FindOp(out.graph(), "Mul");
      EXPECT_THAT(std::vector<std::string>(mul->input().begin(), mul->input().end()),
                  ::testing::UnorderedElementsAre("x", hs->output(0)));
      EXPECT_EQ(mul->output(0), "y");
    }
    // Inputs U(-6, 6): both ends of the Clip are reached.
    EXPECT_LT(Error(m, out, 6.0f), 1e-5);
  }
}

TEST_F(FoldTest, HardSwishWhoseInnerValueIsReadElsewhereIsNotFused) {
  // The Add's, the Clip's or the first Mul's output read by another node or a graph output.
  for (const char* inner : {"t", "r", "p"}) {
    for (bool as_output : {false, true}) {
      SCOPED_TRACE(absl::StrCat(inner, as_output ? " graph output" : " other reader"));
      onnx::ModelProto m = HardSwishModel({"", 14, false, false, false});
      GraphBuilder g(m.mutable_graph());
      if (as_output) {
        g.Output(inner);
      } else {
        g.Node("Neg", {inner}, {"neg"}, "other");
        g.Output("neg");
      }
      onnx::ModelProto out = m;
      auto n = FuseHardSwish(out.mutable_graph(), 14, ReadOf(&out.graph()));
      ASSERT_TRUE(n.ok()) << n.status();
      EXPECT_EQ(*n, 0);
      EXPECT_EQ(Count(out.graph(), "HardSwish"), 0);
      EXPECT_EQ(Count(out.graph(), "Clip"), 1);
      EXPECT_EQ(out.graph().node_size(), m.graph().node_size());
      EXPECT_LT(Error(m, out, 6.0f), 1e-5);
    }
  }
  // Constants other than 3, 0, 6 (here Clip 0..4): no HardSwish.
  onnx::ModelProto m = HardSwishModel({"", 14, false, false, false});
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    if (t.name() == "six_hi") {
      const float four = 4.0f;
      t.set_raw_data(&four, 4);
    }
  }
  onnx::ModelProto out = m;
  auto n = FuseHardSwish(out.mutable_graph(), 14, ReadOf(&out.graph()));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0);
}

}  // namespace
}  // namespace sq
