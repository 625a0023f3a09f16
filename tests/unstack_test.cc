// Batched constant MatMul weights become one 2-D layer per matrix (core/unstack.h): the
// rewrite keeps the FP32 function (checked in ONNX Runtime), uses the model opset's forms,
// leaves alone what it cannot carry, and the engine quantizes the matrices like any layer.
#include "core/unstack.h"

#include <filesystem>

#include "core/engine.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_runner.h"

// ONNX Runtime keeps a small one-time allocation until exit.
extern "C" const char* __lsan_default_suppressions() { return "leak:libonnxruntime.so\n"; }

namespace sq {
namespace {
namespace fs = std::filesystem;
using testing::GraphBuilder;

int Count(const onnx::GraphProto& g, const std::string& op) {
  int n = 0;
  for (const auto& node : g.node()) n += node.op_type() == op;
  return n;
}

// x: `x_dims`; w: `w_dims` (batched); y = MatMul(x, w) -> Relu.
onnx::ModelProto Batched(const std::vector<int64_t>& x_dims, const std::vector<int64_t>& w_dims,
                         int opset = 17) {
  onnx::ModelProto m = testing::NewModel(opset);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", x_dims);
  int64_t n = 1;
  for (int64_t d : w_dims) n *= d;
  g.Initializer("w", w_dims, testing::TestWeights(n, 5));
  g.Node("MatMul", {"x", "w"}, {"h"}, "attn_mm");
  g.Node("Relu", {"h"}, {"y"}, "relu");
  g.Output("y");
  return m;
}

class UnstackTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq_unstack"); }
  void TearDown() override { fs::remove_all(dir_); }

  // Rewrites `m`; checks in ORT that the rewritten model computes what `m` computes.
  onnx::ModelProto RewriteAndCompare(const onnx::ModelProto& m, int expect_matrices,
                                     const QuantizeOptions& options = {}) {
    const std::string before = dir_ + "/before.onnx", after = dir_ + "/after.onnx";
    EXPECT_TRUE(testing::SaveModel(m, before).ok());
    auto loaded = LoadedModel::FromFile(before);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    auto done = UnstackBatchedMatMuls(loaded->get(), options);
    EXPECT_TRUE(done.ok()) << done.status();
    if (!done.ok()) return m;
    if (expect_matrices == 0) {
      EXPECT_TRUE(done->empty());
      return (*loaded)->proto();
    }
    EXPECT_EQ(done->size(), 1u);
    if (done->size() != 1u) return m;
    EXPECT_EQ((*done)[0].matrices, expect_matrices);
    EXPECT_EQ((*done)[0].weight, "w");
    EXPECT_TRUE(testing::SaveModel((*loaded)->proto(), after).ok());
    auto inputs = testing::MakeRandomInputs(before, 9, 1);
    EXPECT_TRUE(inputs.ok()) << inputs.status();
    auto want = testing::RunOrt(before, *inputs);
    auto got = testing::RunOrt(after, *inputs);
    EXPECT_TRUE(want.ok()) << want.status();
    EXPECT_TRUE(got.ok()) << got.status() << "\n" << (*loaded)->proto().graph().DebugString();
    if (want.ok() && got.ok()) {
      EXPECT_EQ((*got)[0].shape, (*want)[0].shape);
      EXPECT_LE(testing::MaxRelativeError(*got, *want), 1e-6);
    }
    return (*loaded)->proto();
  }
  std::string dir_;
};

TEST_F(UnstackTest, StackedHeadsBecomeOneMatMulPerMatrix) {
  // x [2, 4, 3, 16] @ w [4, 16, 8]: four heads.
  onnx::ModelProto out = RewriteAndCompare(Batched({2, 4, 3, 16}, {4, 16, 8}), 4);
  EXPECT_EQ(Count(out.graph(), "Split"), 1);
  EXPECT_EQ(Count(out.graph(), "MatMul"), 4);
  EXPECT_EQ(Count(out.graph(), "Concat"), 1);
  int two_d = 0;
  for (const auto& t : out.graph().initializer()) {
    EXPECT_NE(t.name(), "w") << "the batched weight is gone";
    two_d += t.dims_size() == 2 && t.dims(0) == 16 && t.dims(1) == 8;
  }
  EXPECT_EQ(two_d, 4);
}

TEST_F(UnstackTest, TwoDimensionalInputAndLeadingOnesAreLifted) {
  // x [3, 16] @ w [1, 4, 16, 8] -> y [1, 4, 3, 8]: every matrix sees the same x.
  onnx::ModelProto out = RewriteAndCompare(Batched({3, 16}, {1, 4, 16, 8}), 4);
  EXPECT_EQ(Count(out.graph(), "Split"), 0);
  EXPECT_EQ(Count(out.graph(), "Unsqueeze"), 4);
  // x [4, 3, 16] @ w [1, 4, 16, 8] -> [1, 4, 3, 8].
  RewriteAndCompare(Batched({4, 3, 16}, {1, 4, 16, 8}), 4);
}

TEST_F(UnstackTest, OlderOpsetsGetAttributeForms) {
  onnx::ModelProto out = RewriteAndCompare(Batched({2, 4, 3, 16}, {4, 16, 8}, /*opset=*/11), 4);
  for (const auto& n : out.graph().node()) {
    if (n.op_type() == "Split") {
      EXPECT_EQ(n.input_size(), 1) << "Split-11 takes its sizes as an attribute";
    }
  }
  out = RewriteAndCompare(Batched({3, 16}, {4, 16, 8}, /*opset=*/11), 4);
  for (const auto& n : out.graph().node()) {
    if (n.op_type() == "Unsqueeze") {
      EXPECT_EQ(n.input_size(), 1);
    }
  }
}

TEST_F(UnstackTest, LeavesAloneWhatItCannotCarry) {
  // Leading dimension that is not 1 (two batch axes).
  RewriteAndCompare(Batched({2, 4, 3, 16}, {2, 4, 16, 8}), 0);
  // Excluded by name, by op, or matrices below min_weight_elements.
  QuantizeOptions by_name;
  by_name.exclude_name_patterns = {"attn"};
  RewriteAndCompare(Batched({2, 4, 3, 16}, {4, 16, 8}), 0, by_name);
  QuantizeOptions by_op;
  by_op.exclude_op_types = {"MatMul"};
  RewriteAndCompare(Batched({2, 4, 3, 16}, {4, 16, 8}), 0, by_op);
  QuantizeOptions small;
  small.min_weight_elements = 1000;
  RewriteAndCompare(Batched({2, 4, 3, 16}, {4, 16, 8}), 0, small);
  // A weight another node reads too.
  onnx::ModelProto shared = Batched({2, 4, 3, 16}, {4, 16, 8});
  GraphBuilder(shared.mutable_graph()).Node("Identity", {"w"}, {"w_copy"}, "keep");
  RewriteAndCompare(shared, 0);
}

TEST_F(UnstackTest, TheEngineQuantizesEachMatrixAndTheArtifactRuns) {
  const std::string in = dir_ + "/heads.onnx";
  ASSERT_TRUE(testing::SaveModel(Batched({-1, 4, 3, 64}, {4, 64, 32}), in).ok());
  for (const char* target : {"ort-cpu", "qdq"}) {
    SCOPED_TRACE(target);
    QuantizeOptions o;
    o.target = *ParseTarget(target);
    const std::string out = dir_ + "/heads." + target + ".onnx";
    auto report = QuantizeModelFile(in, out, o);
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_EQ(report->batched_weights_unstacked.size(), 1u);
    EXPECT_EQ(report->batched_weights_unstacked[0], "w (attn_mm): 4 matrices");
    int quantized = 0;
    for (const auto& l : report->layers) {
      quantized += l.quantized;
      EXPECT_EQ(l.shape, (std::vector<int64_t>{64, 32})) << l.name;
    }
    EXPECT_EQ(quantized, 4);
    EXPECT_EQ(report->verification.status, "passed");
  }
  // --format split keeps the function.
  QuantizeOptions split;
  split.format = OutputFormat::kSplit;
  const std::string out = dir_ + "/heads.split.onnx";
  ASSERT_TRUE(QuantizeModelFile(in, out, split).ok());
  auto inputs = testing::MakeRandomInputs(in, 3, 2);
  ASSERT_TRUE(inputs.ok());
  auto want = testing::RunOrt(in, *inputs);
  auto got = testing::RunOrt(out, *inputs);
  ASSERT_TRUE(want.ok() && got.ok());
  EXPECT_LE(testing::MaxRelativeError(*got, *want), 1e-5);
}

}  // namespace
}  // namespace sq
