// SplitQuant's activation split (core/activations/act_split.h): every supported activation
// (alone or as its decomposed pattern) between two layers runs on three channel groups; the
// FP32 function is unchanged in ONNX Runtime whatever makes the groups (the layer before cut
// by output channels, a depthwise layer per group, Gathers) and whatever reads them (a Conv,
// a depthwise Conv, a Gemm, a MatMul, an Add, a graph output), positional and range grouping
// alike (range from calibration samples or from a BatchNormalization's statistics); the
// groups are the ones GroupChannels gives, and with full-integer output each group has
// scales of its own.
#include "core/activations/act_split.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/activations/calibration.h"
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
using ::testing::HasSubstr;
using ::sq::testing::NpyF32;

using Groups = std::vector<std::vector<int64_t>>;

// The activations under test, as `a` -> ... -> `y`. Returns the op type that appears once
// per copy of the activation.
std::string AddActivation(GraphBuilder& g, const std::string& kind, const std::string& a, const std::string& y) {
  if (kind == "Clip") {
    g.Initializer("clip_lo", {}, {-0.5f});
    g.Initializer("clip_hi", {}, {1.0f});
    g.Node("Clip", {a, "clip_lo", "clip_hi"}, {y}, "act");
    return "Clip";
  }
  if (kind == "LeakyRelu") {
    AttrFloat(g.Node("LeakyRelu", {a}, {y}, "act"), "alpha", 0.1f);
    return "LeakyRelu";
  }
  if (kind == "HardSigmoid") {
    auto* n = g.Node("HardSigmoid", {a}, {y}, "act");
    AttrFloat(n, "alpha", 0.25f);
    AttrFloat(n, "beta", 0.4f);
    return "HardSigmoid";
  }
  if (kind == "SiLU") {  // x * sigmoid(x)
    g.Node("Sigmoid", {a}, {"silu_s"}, "act");
    g.Node("Mul", {a, "silu_s"}, {y}, "silu_mul");
    return "Sigmoid";
  }
  if (kind == "GELU") {  // 0.5 x (1 + erf(x / sqrt 2))
    g.Initializer("gelu_sqrt2", {}, {1.4142135f});
    g.Initializer("gelu_one", {}, {1.0f});
    g.Initializer("gelu_half", {}, {0.5f});
    g.Node("Div", {a, "gelu_sqrt2"}, {"gelu_d"}, "gelu_div");
    g.Node("Erf", {"gelu_d"}, {"gelu_e"}, "act");
    g.Node("Add", {"gelu_e", "gelu_one"}, {"gelu_p"}, "gelu_add");
    g.Node("Mul", {a, "gelu_p"}, {"gelu_m"}, "gelu_mul");
    g.Node("Mul", {"gelu_m", "gelu_half"}, {y}, "gelu_half_mul");
    return "Erf";
  }
  if (kind == "HardSwishPattern") {  // x * relu6(x + 3) / 6, with Constant nodes
    g.Constant("hs_three", {}, {3.0f});
    g.Constant("hs_zero", {}, {0.0f});
    g.Constant("hs_six", {}, {6.0f});
    g.Node("Add", {a, "hs_three"}, {"hs_t"}, "hs_add");
    g.Node("Clip", {"hs_t", "hs_zero", "hs_six"}, {"hs_c"}, "act");
    g.Node("Mul", {a, "hs_c"}, {"hs_m"}, "hs_mul");
    g.Node("Div", {"hs_m", "hs_six"}, {y}, "hs_div");
    return "Clip";
  }
  g.Node(kind, {a}, {y}, "act");  // Relu, Sigmoid, Tanh, HardSwish
  return kind;
}

// The node of each activation copy that reads the group of `a` (op type, and the constant
// it also reads, if any: decomposed patterns have other readers of `a` too).
std::pair<std::string, std::string> EntryOp(const std::string& kind) {
  if (kind == "SiLU") return {"Sigmoid", ""};
  if (kind == "GELU") return {"Div", "gelu_sqrt2"};
  if (kind == "HardSwishPattern") return {"Add", "hs_three"};
  return {kind, ""};
}

// Output channel c of conv1 scaled by this: channels 1 and 3 wide, 2 and 5 narrow.
const std::vector<float> kChannelScale = {1.0f, 6.0f, 0.3f, 6.0f, 1.0f, 0.3f};

std::vector<float> ScaledRows(std::vector<float> w, const std::vector<float>& scale) {
  const size_t per = w.size() / scale.size();
  for (size_t i = 0; i < w.size(); ++i) w[i] *= scale[i / per];
  return w;
}

// x[1,4,5,5] -> Conv 6x4x3x3 + b (conv1) -> a [-> BatchNormalization -> a] -> activation
// -> y -> reader:
//   "conv"       Conv 5x6x3x3 + b -> out
//   "depthwise"  Conv 6x1x3x3 + b, group 6 -> out
//   "conv+add"   Conv 5x6x3x3 + b -> out, and Add(y, a) -> out2 (a reader that is no layer)
//   "conv+output" Conv 5x6x3x3 + b -> out, and y a graph output too
onnx::ModelProto ConvModel(const std::string& act, const std::string& reader, bool batch_norm = false,
                           std::string* act_op = nullptr) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 4, 5, 5});
  g.Initializer("w1", {6, 4, 3, 3}, ScaledRows(testing::TestWeights(6 * 36, 41, 0.3f),
                                                batch_norm ? std::vector<float>(6, 1.0f) : kChannelScale));
  g.Initializer("b1", {6}, {0.1f, -0.2f, 0.05f, 0.3f, -0.1f, 0.0f});
  AttrInts(g.Node("Conv", {"x", "w1", "b1"}, {batch_norm ? "c" : "a"}, "conv1"), "pads", {1, 1, 1, 1});
  if (batch_norm) {
    g.Initializer("gamma", {6}, kChannelScale);
    g.Initializer("beta", {6}, std::vector<float>(6, 0.0f));
    g.Initializer("mean", {6}, {0.0f, 0.1f, -0.1f, 0.2f, 0.0f, 0.05f});
    g.Initializer("var", {6}, {1.0f, 0.5f, 2.0f, 1.5f, 0.8f, 1.2f});
    g.Node("BatchNormalization", {"c", "gamma", "beta", "mean", "var"}, {"a"}, "bn");
  }
  const std::string op = AddActivation(g, act, "a", "y");
  if (act_op) *act_op = op;
  if (reader == "depthwise") {
    g.Initializer("w2", {6, 1, 3, 3}, testing::TestWeights(6 * 9, 42, 0.3f));
    g.Initializer("b2", {6}, {0.5f, -0.5f, 0.25f, 0.0f, 1.0f, -1.0f});
    auto* n = g.Node("Conv", {"y", "w2", "b2"}, {"out"}, "conv2");
    AttrInts(n, "pads", {1, 1, 1, 1});
    AttrInt(n, "group", 6);
  } else {
    g.Initializer("w2", {5, 6, 3, 3}, testing::TestWeights(5 * 54, 43, 0.3f));
    g.Initializer("b2", {5}, {0.5f, -0.5f, 0.25f, 0.0f, 1.0f});
    AttrInts(g.Node("Conv", {"y", "w2", "b2"}, {"out"}, "conv2"), "pads", {1, 1, 1, 1});
  }
  g.Output("out");
  if (reader == "conv+add") {
    g.Node("Add", {"y", "a"}, {"out2"}, "residual");
    g.Output("out2");
  }
  if (reader == "conv+output") g.Output("y");
  return m;
}

// x[N,16] -> Gemm 16x12 (fc1) -> h -> activation -> y -> reader:
//   "gemm"    Gemm transB 5x12 + C -> out
//   "matmul"  MatMul 12x5 -> out (y's shape [N,12] declared in value_info when `shaped`)
onnx::ModelProto DenseModel(const std::string& act, const std::string& reader, bool shaped = true) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 16});
  std::vector<float> w1 = testing::TestWeights(16 * 12, 51, 0.3f);
  for (size_t i = 0; i < w1.size(); ++i) w1[i] *= (i % 12) % 4 == 0 ? 5.0f : 1.0f;  // wide columns
  g.Initializer("w1", {16, 12}, w1);
  g.Node("Gemm", {"x", "w1"}, {"h"}, "fc1");
  AddActivation(g, act, "h", "y");
  if (reader == "gemm") {
    g.Initializer("w2", {5, 12}, testing::TestWeights(60, 52, 0.3f));
    g.Initializer("c2", {5}, {0.1f, 0.2f, -0.3f, 0.0f, 1.0f});
    AttrInt(g.Node("Gemm", {"y", "w2", "c2"}, {"out"}, "fc2"), "transB", 1);
  } else {
    g.Initializer("w2", {12, 5}, testing::TestWeights(60, 52, 0.3f));
    g.Node("MatMul", {"y", "w2"}, {"out"}, "fc2");
  }
  g.Output("out");
  if (shaped) {
    auto* vi = m.mutable_graph()->add_value_info();
    vi->set_name("y");
    auto* t = vi->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    t->mutable_shape()->add_dim()->set_dim_param("N");
    t->mutable_shape()->add_dim()->set_dim_value(12);
  }
  return m;
}

int Count(const onnx::GraphProto& g, const std::string& op) {
  int n = 0;
  for (const auto& node : g.node()) n += node.op_type() == op;
  return n;
}

void AddOutput(onnx::ModelProto* m, const std::string& name) {
  auto* vi = m->mutable_graph()->add_output();
  vi->set_name(name);
  vi->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
}

// The channels of the original model's `a` that each copy of the activation in `split`
// reads, sorted: found by value (both models run in ONNX Runtime on one input, each group
// tensor's channels matched to a's), so whatever makes the groups (Gathers, the layer
// before in groups) is fine.
Groups ChannelGroups(const onnx::ModelProto& original, const onnx::ModelProto& split, const std::string& kind,
                     const std::string& dir, int64_t batch = 1) {
  const auto [entry, constant] = EntryOp(kind);
  onnx::ModelProto a = original, b = split;
  AddOutput(&a, "a");
  std::vector<std::string> parts;
  for (const auto& n : split.graph().node()) {
    if (n.op_type() != entry) continue;
    if (!constant.empty() && (n.input_size() < 2 || n.input(1) != constant)) continue;
    parts.push_back(n.input(0));
    AddOutput(&b, n.input(0));
  }
  const std::string pa = dir + "/probe_a.onnx", pb = dir + "/probe_b.onnx";
  EXPECT_TRUE(testing::SaveModel(a, pa).ok());
  EXPECT_TRUE(testing::SaveModel(b, pb).ok());
  auto in = testing::MakeRandomInputs(pa, 17, batch);
  EXPECT_TRUE(in.ok()) << in.status();
  if (!in.ok()) return {};
  auto ra = testing::RunOrt(pa, *in);
  auto rb = testing::RunOrt(pb, *in);
  EXPECT_TRUE(ra.ok()) << ra.status();
  EXPECT_TRUE(rb.ok()) << rb.status();
  if (!ra.ok() || !rb.ok()) return {};
  auto find = [](const std::vector<OrtTensor>& ts, const std::string& name) -> const OrtTensor* {
    for (const auto& t : ts) {
      if (t.name == name) return &t;
    }
    return nullptr;
  };
  const OrtTensor* full = find(*ra, "a");
  EXPECT_NE(full, nullptr);
  if (!full) return {};
  // Channel slices of a [N, C, ...] tensor.
  auto channel = [](const OrtTensor& t, int64_t c) {
    int64_t inner = 1;
    for (size_t d = 2; d < t.shape.size(); ++d) inner *= t.shape[d];
    std::vector<float> v;
    for (int64_t o = 0; o < t.shape[0]; ++o) {
      const float* p = t.f.data() + (o * t.shape[1] + c) * inner;
      v.insert(v.end(), p, p + inner);
    }
    return v;
  };
  Groups groups;
  for (const std::string& part : parts) {
    const OrtTensor* t = find(*rb, part);
    EXPECT_NE(t, nullptr) << part;
    if (!t) continue;
    std::vector<int64_t> grp;
    for (int64_t j = 0; j < t->shape[1]; ++j) {
      const std::vector<float> v = channel(*t, j);
      int64_t match = -1;
      for (int64_t c = 0; c < full->shape[1] && match < 0; ++c) {
        const std::vector<float> w = channel(*full, c);
        bool same = v.size() == w.size();
        for (size_t i = 0; same && i < v.size(); ++i) same = std::abs(v[i] - w[i]) <= 1e-5f * (1 + std::abs(w[i]));
        if (same) match = c;
      }
      grp.push_back(match);
    }
    std::sort(grp.begin(), grp.end());
    groups.push_back(grp);
  }
  std::sort(groups.begin(), groups.end());
  return groups;
}

class ActSplitTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq-act-split"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }

  QuantizeOptions SplitOptions(ActivationSplit mode) {
    QuantizeOptions o;
    o.format = OutputFormat::kSplit;
    o.split_activations = mode;
    o.min_weight_elements = 1;
    o.threads = 1;
    return o;
  }

  // Writes 3 calibration samples for `m` (batch `batch` for a symbolic first dim).
  std::string WriteSamples(const onnx::ModelProto& m, int64_t batch = 1) {
    const std::string dir = Path("calib");
    fs::create_directories(dir);
    for (int s = 0; s < 3; ++s) {
      auto in = testing::MakeRandomInputs(m.graph(), 200 + s, batch);
      EXPECT_TRUE(in.ok()) << in.status();
      if (!in.ok()) break;
      std::ofstream(absl::StrCat(dir, "/", s, ".npy"), std::ios::binary) << NpyF32((*in)[0].shape, (*in)[0].f);
    }
    return dir;
  }

  // Quantizes `m` with `o`, checks the output computes what `m` does in ONNX Runtime (max
  // relative error < 1e-5 on every output), and returns the report and output graph.
  absl::StatusOr<ModelReport> SplitAndCompare(const onnx::ModelProto& m, const QuantizeOptions& o,
                                              onnx::ModelProto* out_model, int64_t batch = 1) {
    const std::string in = Path("in.onnx"), out = Path("out.onnx");
    EXPECT_TRUE(testing::SaveModel(m, in).ok());
    absl::StatusOr<ModelReport> report = QuantizeModelFile(in, out, o);
    if (!report.ok()) return report;
    auto loaded = LoadedModel::FromFile(out);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return loaded.status();
    *out_model = (*loaded)->proto();
    auto inputs = testing::MakeRandomInputs(in, 9, batch);
    EXPECT_TRUE(inputs.ok()) << inputs.status();
    auto want = testing::RunOrt(in, *inputs);
    auto got = testing::RunOrt(out, *inputs);
    EXPECT_TRUE(want.ok()) << want.status();
    EXPECT_TRUE(got.ok()) << got.status();
    if (want.ok() && got.ok()) {
      EXPECT_EQ(got->size(), want->size());
      EXPECT_LT(testing::MaxRelativeError(*got, *want), 1e-5);
    }
    return report;
  }

  std::string dir_;
};

const std::vector<std::string> kActivations = {"Relu",      "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid",
                                               "HardSwish", "SiLU", "GELU",    "HardSwishPattern"};

TEST_F(ActSplitTest, EveryActivationBetweenTwoConvsSplitsPositionallyAndKeepsTheFunction) {
  for (const std::string& act : kActivations) {
    SCOPED_TRACE(act);
    std::string op;
    const onnx::ModelProto m = ConvModel(act, "conv", false, &op);
    onnx::ModelProto out;
    auto report = SplitAndCompare(m, SplitOptions(ActivationSplit::kPositional), &out);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->activations.split, "positional");
    EXPECT_EQ(report->activations.activations_split, 1);
    ASSERT_EQ(report->activations.split_notes.size(), 1u);
    EXPECT_THAT(report->activations.split_notes[0], HasSubstr("groups 2/2/2 (positional"));
    EXPECT_EQ(Count(out.graph(), op), 3 * Count(m.graph(), op));
    EXPECT_EQ(ChannelGroups(m, out, act, dir_), (Groups{{0, 1}, {2, 3}, {4, 5}}));
  }
}

TEST_F(ActSplitTest, RangeGroupingFromCalibrationKeepsTheFunctionAndSeparatesWideChannels) {
  for (const std::string& act : kActivations) {
    SCOPED_TRACE(act);
    std::string op;
    const onnx::ModelProto m = ConvModel(act, "conv", false, &op);
    QuantizeOptions o = SplitOptions(ActivationSplit::kRange);
    o.calibration_inputs = {WriteSamples(m)};
    onnx::ModelProto out;
    auto report = SplitAndCompare(m, o, &out);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->activations.split, "range");
    EXPECT_EQ(report->activations.activations_split, 1);
    ASSERT_EQ(report->activations.split_notes.size(), 1u);
    EXPECT_THAT(report->activations.split_notes[0], HasSubstr("(range"));
    EXPECT_EQ(Count(out.graph(), op), 3 * Count(m.graph(), op));
    // The groups are GroupChannels of the calibration's per-channel ranges (of the
    // activation's output, or of its input).
    auto samples = ReadCalibrationSet(o.calibration_inputs, m.graph());
    ASSERT_TRUE(samples.ok()) << samples.status();
    CalibrationRequest req;
    req.channel_tensors = {"a", "y"};
    req.method = CalibrationMethod::kMinMax;
    auto ranges = CollectRanges(m, {}, *samples, req);
    ASSERT_TRUE(ranges.ok()) << ranges.status();
    auto grouping = [&](const std::string& t) {
      Groups g = GroupChannels(6, ActivationSplit::kRange, ranges->at(t).channel_lo, ranges->at(t).channel_hi);
      std::sort(g.begin(), g.end());
      return g;
    };
    const Groups groups = ChannelGroups(m, out, act, dir_);
    EXPECT_TRUE(groups == grouping("y") || groups == grouping("a"));
    // conv1's channels 1 and 3 are 6x wider than 0 and 4, 2 and 5 are 0.3x: a wide channel
    // never shares a group with a narrow one.
    for (const auto& grp : groups) {
      const bool wide = std::count(grp.begin(), grp.end(), 1) + std::count(grp.begin(), grp.end(), 3) > 0;
      const bool narrow = std::count(grp.begin(), grp.end(), 2) + std::count(grp.begin(), grp.end(), 5) > 0;
      EXPECT_FALSE(wide && narrow);
    }
    fs::remove_all(Path("calib"));
  }
}

TEST_F(ActSplitTest, RangeGroupingDataFreeFromBatchNormStatistics) {
  for (const char* act : {"Relu", "SiLU", "GELU", "Tanh"}) {
    SCOPED_TRACE(act);
    const onnx::ModelProto m = ConvModel(act, "conv", /*batch_norm=*/true);
    onnx::ModelProto out;
    auto report = SplitAndCompare(m, SplitOptions(ActivationSplit::kRange), &out);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->activations.activations_split, 1);
    // gamma is the channel scale, beta 0: the wide (1, 3), middle (0, 4) and narrow (2, 5)
    // channels (2 (0.6k)^2 + 2 (2k)^2 + 2 (12k)^2 is the least sum of |g| span^2).
    EXPECT_EQ(ChannelGroups(m, out, act, dir_), (Groups{{0, 4}, {1, 3}, {2, 5}}));
  }
}

TEST_F(ActSplitTest, DepthwiseConvGemmAndMatMulReadersKeepTheFunction) {
  struct Case {
    std::string name, act;
    onnx::ModelProto model;
    int64_t batch;
  };
  const std::vector<Case> cases = {
      {"depthwise", "Relu", ConvModel("Relu", "depthwise"), 1},
      {"depthwise-gelu", "GELU", ConvModel("GELU", "depthwise"), 1},
      {"gemm", "SiLU", DenseModel("SiLU", "gemm"), 3},
      {"gemm-hardswish", "HardSwish", DenseModel("HardSwish", "gemm"), 3},
      {"matmul", "Relu", DenseModel("Relu", "matmul"), 3},
  };
  for (const Case& c : cases) {
    for (ActivationSplit mode : {ActivationSplit::kPositional, ActivationSplit::kRange}) {
      SCOPED_TRACE(absl::StrCat(c.name, " ", ToString(mode)));
      QuantizeOptions o = SplitOptions(mode);
      if (mode == ActivationSplit::kRange) o.calibration_inputs = {WriteSamples(c.model, c.batch)};
      onnx::ModelProto out;
      auto report = SplitAndCompare(c.model, o, &out, c.batch);
      ASSERT_TRUE(report.ok()) << report.status();
      EXPECT_EQ(report->activations.activations_split, 1);
      // A depthwise reader runs per group.
      if (c.name.rfind("depthwise", 0) == 0) {
        EXPECT_EQ(report->activations.consumers_split, 1);
      }
      if (mode == ActivationSplit::kPositional && c.batch == 1) {
        EXPECT_EQ(ChannelGroups(c.model, out, c.act, dir_), (Groups{{0, 1}, {2, 3}, {4, 5}}));
      }
      fs::remove_all(Path("calib"));
    }
  }
}

// MobileNet's block: 1x1 Conv -> Relu -> depthwise Conv -> Relu6 -> 1x1 Conv. The depthwise
// layer runs per group and hands its groups to the second activation, which keeps them; and
// a depthwise layer that makes an activation's input runs per group on its own.
TEST_F(ActSplitTest, GroupsAreKeptThroughADepthwiseLayerAndMadeByOne) {
  onnx::ModelProto m = testing::NewModel(17);
  {
    GraphBuilder g(m.mutable_graph());
    g.Input("x", {1, 4, 5, 5});
    g.Initializer("w1", {6, 4, 1, 1}, ScaledRows(testing::TestWeights(24, 71, 0.3f), kChannelScale));
    g.Initializer("wd", {6, 1, 3, 3}, testing::TestWeights(54, 72, 0.3f));
    g.Initializer("bd", {6}, {0.1f, 0.2f, 0.3f, -0.1f, -0.2f, -0.3f});
    g.Initializer("w3", {5, 6, 1, 1}, testing::TestWeights(30, 73, 0.3f));
    g.Initializer("zero", {}, {0.0f});
    g.Initializer("six", {}, {6.0f});
    g.Node("Conv", {"x", "w1"}, {"a"}, "expand");
    g.Node("Relu", {"a"}, {"y"}, "relu");
    auto* dw = g.Node("Conv", {"y", "wd", "bd"}, {"d"}, "depthwise");
    AttrInt(dw, "group", 6);
    AttrInts(dw, "pads", {1, 1, 1, 1});
    g.Node("Clip", {"d", "zero", "six"}, {"z"}, "relu6");
    g.Node("Conv", {"z", "w3"}, {"out"}, "project");
    g.Output("out");
  }
  for (ActivationSplit mode : {ActivationSplit::kPositional, ActivationSplit::kRange}) {
    SCOPED_TRACE(ToString(mode));
    QuantizeOptions o = SplitOptions(mode);
    if (mode == ActivationSplit::kRange) o.calibration_inputs = {WriteSamples(m)};
    onnx::ModelProto out;
    auto report = SplitAndCompare(m, o, &out);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->activations.activations_split, 2);
    EXPECT_EQ(report->activations.consumers_split, 1);  // the depthwise layer
    ASSERT_EQ(report->activations.split_notes.size(), 2u);
    EXPECT_THAT(report->activations.split_notes[1], HasSubstr("inherited"));
    EXPECT_EQ(Count(out.graph(), "Relu"), 3);
    EXPECT_EQ(Count(out.graph(), "Clip"), 3);
    fs::remove_all(Path("calib"));
  }
  // A depthwise layer making the activation's input.
  onnx::ModelProto d = testing::NewModel(17);
  {
    GraphBuilder g(d.mutable_graph());
    g.Input("x", {1, 6, 5, 5});
    g.Initializer("wd", {6, 1, 3, 3}, ScaledRows(testing::TestWeights(54, 74, 0.3f), kChannelScale));
    g.Initializer("w2", {5, 6, 1, 1}, testing::TestWeights(30, 75, 0.3f));
    auto* dw = g.Node("Conv", {"x", "wd"}, {"a"}, "depthwise");
    AttrInt(dw, "group", 6);
    AttrInts(dw, "pads", {1, 1, 1, 1});
    g.Node("Sigmoid", {"a"}, {"y"}, "act");
    g.Node("Conv", {"y", "w2"}, {"out"}, "project");
    g.Output("out");
  }
  onnx::ModelProto out;
  auto report = SplitAndCompare(d, SplitOptions(ActivationSplit::kPositional), &out);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->activations.activations_split, 1);
  EXPECT_EQ(ChannelGroups(d, out, "Sigmoid", dir_), (Groups{{0, 1}, {2, 3}, {4, 5}}));
}

TEST_F(ActSplitTest, OtherReadersAndGraphOutputsGetTheTensorBackJoined) {
  for (const char* reader : {"conv+add", "conv+output"}) {
    for (ActivationSplit mode : {ActivationSplit::kPositional, ActivationSplit::kRange}) {
      SCOPED_TRACE(absl::StrCat(reader, " ", ToString(mode)));
      const onnx::ModelProto m = ConvModel("Tanh", reader);
      QuantizeOptions o = SplitOptions(mode);
      if (mode == ActivationSplit::kRange) o.calibration_inputs = {WriteSamples(m)};
      onnx::ModelProto out;
      auto report = SplitAndCompare(m, o, &out);
      ASSERT_TRUE(report.ok()) << report.status();
      EXPECT_EQ(report->activations.activations_split, 1);
      ASSERT_EQ(report->activations.split_notes.size(), 1u);
      EXPECT_THAT(report->activations.split_notes[0], HasSubstr("joined for the others"));
      EXPECT_GE(Count(out.graph(), "Concat"), 1);
      // Range groups are not runs here: the join restores the channel order.
      if (mode == ActivationSplit::kRange) {
        EXPECT_GE(Count(out.graph(), "Gather"), 1);
      }
      // The graph's outputs keep their names.
      std::vector<std::string> want, got;
      for (const auto& vi : m.graph().output()) want.push_back(vi.name());
      for (const auto& vi : out.graph().output()) got.push_back(vi.name());
      EXPECT_EQ(got, want);
      fs::remove_all(Path("calib"));
    }
  }
}

TEST_F(ActSplitTest, WhatCannotBeSplitIsLeftWholeWithANote) {
  // Range mode without calibration and without a BatchNormalization: no channel ranges.
  onnx::ModelProto out;
  auto report = SplitAndCompare(ConvModel("Relu", "conv"), SplitOptions(ActivationSplit::kRange), &out);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->activations.activations_split, 0);
  ASSERT_EQ(report->activations.split_notes.size(), 1u);
  EXPECT_THAT(report->activations.split_notes[0], HasSubstr("left whole"));
  EXPECT_THAT(report->activations.split_notes[0], HasSubstr("no per-channel ranges"));
  EXPECT_EQ(Count(out.graph(), "Relu"), 1);
  // Two channels: too few to split.
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 4, 3, 3});
  g.Initializer("w1", {2, 4, 1, 1}, testing::TestWeights(8, 61, 0.3f));
  g.Initializer("w2", {3, 2, 1, 1}, testing::TestWeights(6, 62, 0.3f));
  g.Node("Conv", {"x", "w1"}, {"a"}, "conv1");
  g.Node("Relu", {"a"}, {"y"}, "act");
  g.Node("Conv", {"y", "w2"}, {"out"}, "conv2");
  g.Output("out");
  report = SplitAndCompare(m, SplitOptions(ActivationSplit::kPositional), &out);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->activations.activations_split, 0);
  ASSERT_EQ(report->activations.split_notes.size(), 1u);
  EXPECT_THAT(report->activations.split_notes[0], HasSubstr("left whole"));
}

// The quantization scales (names) of the tensors a Relu copy is computed from through
// DequantizeLinear, and through Adds (of a split layer's branches).
std::set<std::string> ScalesFeeding(const std::map<std::string, const onnx::NodeProto*>& producer,
                                    const std::string& tensor) {
  std::set<std::string> scales;
  auto p = producer.find(tensor);
  if (p == producer.end()) return scales;
  if (p->second->op_type() == "DequantizeLinear") scales.insert(p->second->input(1));
  if (p->second->op_type() == "Add") {
    for (const auto& in : p->second->input()) {
      const std::set<std::string> more = ScalesFeeding(producer, in);
      scales.insert(more.begin(), more.end());
    }
  }
  return scales;
}

// With full-integer output each group of the split activation has scales of its own (the
// point of the split): the producing layer is cut by output channels, and what each Relu
// copy reads is quantized per group (per branch of the group when the weights are split).
TEST_F(ActSplitTest, FullIntegerOutputQuantizesEachGroupOnItsOwn) {
  const onnx::ModelProto m = ConvModel("Relu", "conv");
  ASSERT_TRUE(testing::SaveModel(m, Path("in.onnx")).ok());
  const std::string calib = WriteSamples(m);
  for (SplitMode split : {SplitMode::kOff, SplitMode::kOn}) {
    for (ActivationSplit mode : {ActivationSplit::kRange, ActivationSplit::kPositional}) {
      SCOPED_TRACE(absl::StrCat(ToString(split), " ", ToString(mode)));
      QuantizeOptions o;
      o.bits = 8;
      o.split = split;
      o.target = Target::kQdq;
      o.activations = ActivationType::kInt8;
      o.split_activations = mode;
      o.calibration_inputs = {calib};
      o.min_weight_elements = 1;
      o.threads = 1;
      auto report = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), o);
      ASSERT_TRUE(report.ok()) << report.status();
      EXPECT_EQ(report->activations.activations_split, 1);
      auto out = LoadedModel::FromFile(Path("out.onnx"));
      ASSERT_TRUE(out.ok()) << out.status();
      const onnx::GraphProto& g = (*out)->proto().graph();
      std::map<std::string, const onnx::NodeProto*> producer;
      for (const auto& n : g.node()) {
        for (const auto& t : n.output()) producer[t] = &n;
      }
      std::vector<std::set<std::string>> per_copy;
      for (const auto& n : g.node()) {
        if (n.op_type() == "Relu") per_copy.push_back(ScalesFeeding(producer, n.input(0)));
      }
      ASSERT_EQ(per_copy.size(), 3u);
      for (size_t a = 0; a < 3; ++a) {
        EXPECT_FALSE(per_copy[a].empty()) << "Relu copy " << a << " reads an unquantized tensor";
        for (size_t b = a + 1; b < 3; ++b) {
          for (const std::string& sc : per_copy[a]) EXPECT_FALSE(per_copy[b].count(sc)) << sc << " shared";
        }
      }
      auto in = testing::MakeRandomInputs(Path("in.onnx"), 3);
      ASSERT_TRUE(in.ok());
      auto want = testing::RunOrt(Path("in.onnx"), *in);
      auto got = testing::RunOrt(Path("out.onnx"), *in);
      ASSERT_TRUE(want.ok() && got.ok());
      EXPECT_LT(testing::MaxRelativeError(*got, *want), 0.1);
    }
  }
}

// The layers the split cuts out of one layer are layers of the full-integer model like it
// was: quantized (weights through DequantizeLinear) under the default options too, even a
// group of one or two channels of a small layer that falls under min_weight_elements (64)
// (here conv1's group of channel 1 alone: 36 weights).
TEST_F(ActSplitTest, LayersCutByTheSplitAreQuantizedLikeTheLayerTheyCameFrom) {
  const onnx::ModelProto m = ConvModel("Relu", "conv");
  ASSERT_TRUE(testing::SaveModel(m, Path("in.onnx")).ok());
  QuantizeOptions o;
  o.bits = 8;
  o.target = Target::kQdq;
  o.activations = ActivationType::kInt8;
  o.split_activations = ActivationSplit::kRange;
  o.calibration_inputs = {WriteSamples(m)};
  auto report = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), o);
  ASSERT_TRUE(report.ok()) << report.status();
  auto out = LoadedModel::FromFile(Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  const onnx::GraphProto& g = (*out)->proto().graph();
  std::map<std::string, const onnx::NodeProto*> producer;
  for (const auto& n : g.node()) {
    for (const auto& t : n.output()) producer[t] = &n;
  }
  for (const auto& n : g.node()) {
    if (n.op_type() != "Conv") continue;
    auto p = producer.find(n.input(1));
    EXPECT_TRUE(p != producer.end() && p->second->op_type() == "DequantizeLinear") << n.name() << " stays FP32";
  }
}

// --- the pieces -----------------------------------------------------------------------

TEST(ActSplitGroupChannelsTest, PositionalRunsDifferInSizeByAtMostOne) {
  EXPECT_EQ(GroupChannels(3, ActivationSplit::kPositional, {}, {}), (Groups{{0}, {1}, {2}}));
  EXPECT_EQ(GroupChannels(7, ActivationSplit::kPositional, {}, {}), (Groups{{0, 1, 2}, {3, 4}, {5, 6}}));
  EXPECT_EQ(GroupChannels(8, ActivationSplit::kPositional, {}, {}), (Groups{{0, 1, 2}, {3, 4, 5}, {6, 7}}));
  for (int64_t c : {3, 4, 5, 64, 100, 1001}) {
    const Groups g = GroupChannels(c, ActivationSplit::kPositional, {}, {});
    ASSERT_EQ(g.size(), 3u);
    int64_t next = 0;
    for (const auto& grp : g) {
      EXPECT_GE(static_cast<int64_t>(grp.size()), c / 3);
      EXPECT_LE(static_cast<int64_t>(grp.size()), c / 3 + 1);
      for (int64_t ch : grp) EXPECT_EQ(ch, next++);
    }
    EXPECT_EQ(next, c);
  }
  EXPECT_TRUE(GroupChannels(2, ActivationSplit::kPositional, {}, {}).empty());
  EXPECT_TRUE(GroupChannels(2, ActivationSplit::kRange, {0, 0}, {1, 1}).empty());
  // Range mode without matching ranges falls back to positional runs.
  EXPECT_EQ(GroupChannels(6, ActivationSplit::kRange, {0, 0}, {1, 1}), (Groups{{0, 1}, {2, 3}, {4, 5}}));
}

TEST(ActSplitGroupChannelsTest, RangeGroupingSeparatesAFewWideChannelsFromManyNarrowOnes) {
  // 42 channels: 30 narrow [-0.5, 0.5], 10 middle [-5, 5], 2 wide [-50, 50], interleaved.
  const int64_t n = 42;
  std::vector<float> lo(n), hi(n);
  std::vector<int64_t> narrow, middle, wide;
  for (int64_t c = 0; c < n; ++c) {
    float span = 0.5f;
    if (c == 5 || c == 33) {
      span = 50;
      wide.push_back(c);
    } else if (c % 4 == 1 || c == 2) {
      span = 5;
      middle.push_back(c);
    } else {
      narrow.push_back(c);
    }
    lo[c] = -span;
    hi[c] = span;
  }
  ASSERT_EQ(wide.size(), 2u);
  ASSERT_EQ(middle.size(), 10u);
  ASSERT_EQ(narrow.size(), 30u);
  const Groups g = GroupChannels(n, ActivationSplit::kRange, lo, hi);
  // The minimum of sum |g| span(g)^2: 30*1 + 10*100 + 2*10000 (ascending indices in each).
  EXPECT_EQ(g, (Groups{narrow, middle, wide}));
  // Two wide channels of one range among narrow ones at two offsets: the wide ones
  // together, the narrow ones by offset (9 + 9 + 2 * 80^2 beats 18 * 2^2 + 80^2 + 80^2).
  std::vector<float> lo2(20), hi2(20);
  std::vector<int64_t> below, above;
  for (int64_t c = 0; c < 20; ++c) {
    if (c == 7 || c == 12) {
      lo2[c] = -40;
      hi2[c] = 40;
    } else if (c < 10) {
      lo2[c] = -1;
      below.push_back(c);
    } else {
      hi2[c] = 1;
      above.push_back(c);
    }
  }
  EXPECT_EQ(GroupChannels(20, ActivationSplit::kRange, lo2, hi2), (Groups{below, above, {7, 12}}));
}

TEST(ActSplitSitesTest, DecomposedPatternsAreOneSiteFromTheirTrueInput) {
  struct Case {
    std::string act;
    size_t nodes;
  };
  for (const Case& c : std::vector<Case>{{"Relu", 1}, {"SiLU", 2}, {"GELU", 5}, {"HardSwishPattern", 4}, {"Clip", 1}}) {
    SCOPED_TRACE(c.act);
    const onnx::ModelProto m = ConvModel(c.act, "conv");
    const std::vector<ActivationSite> sites = FindActivationSites(m.graph());
    ASSERT_EQ(sites.size(), 1u);
    EXPECT_EQ(sites[0].input, "a");
    EXPECT_EQ(sites[0].output, "y");
    EXPECT_EQ(sites[0].nodes.size(), c.nodes);
  }
  // A pattern whose inner value leaves (read outside the site) is no site: SiLU's sigmoid
  // also a graph output.
  onnx::ModelProto m = ConvModel("SiLU", "conv");
  GraphBuilder(m.mutable_graph()).Output("silu_s");
  const std::vector<ActivationSite> sites = FindActivationSites(m.graph());
  for (const ActivationSite& s : sites) EXPECT_NE(s.output, "y");
}

}  // namespace
}  // namespace sq
