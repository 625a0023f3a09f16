// ValidateModelStructure, and the engine refusing what it refuses (before libonnx's
// shape inference can read out of bounds on it).
#include "core/validate.h"

#include "core/engine.h"

#include <filesystem>
#include <functional>
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

namespace sq {
namespace {

using testing::AttrInt;
using testing::AttrInts;
using testing::GraphBuilder;

// x[1,4,8,8] -> op(W) -> y, W with the given dims.
onnx::ModelProto ConvModel(const std::string& op, const std::vector<int64_t>& w_dims,
                           int x_rank = 4) {
  onnx::ModelProto m = testing::NewModel(13);
  GraphBuilder b(m.mutable_graph());
  std::vector<int64_t> x_dims(static_cast<size_t>(x_rank), 4);
  b.Input("x", x_dims);
  int64_t n = 1;
  for (int64_t d : w_dims) n *= d;
  b.Initializer("w", w_dims, testing::TestWeights(n, 1));
  b.Node(op, {"x", "w"}, {"y"}, "the_conv");
  b.Output("y");
  return m;
}

absl::Status Validate(const onnx::ModelProto& m) { return ValidateModelStructure(m); }

TEST(ValidateTest, OrdinaryConvsPass) {
  EXPECT_TRUE(Validate(ConvModel("Conv", {8, 4, 3, 3})).ok());
  EXPECT_TRUE(Validate(ConvModel("ConvTranspose", {4, 8, 3, 3})).ok());
  auto m = ConvModel("Conv", {8, 2, 3, 3});
  AttrInt(m.mutable_graph()->mutable_node(0), "group", 2);
  AttrInts(m.mutable_graph()->mutable_node(0), "pads", {1, 1, 1, 1});
  AttrInts(m.mutable_graph()->mutable_node(0), "kernel_shape", {3, 3});
  EXPECT_TRUE(Validate(m).ok()) << Validate(m);
}

TEST(ValidateTest, WeightOfRank200IsRefusedForConvAndConvTranspose) {
  for (const char* op : {"Conv", "ConvTranspose"}) {
    std::vector<int64_t> dims(200, 1);
    absl::Status st = Validate(ConvModel(op, dims));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << op;
    EXPECT_NE(st.message().find("the_conv"), std::string::npos) << st;
    EXPECT_NE(st.message().find("rank 200"), std::string::npos) << st;
  }
}

TEST(ValidateTest, InputRankDifferentFromWeightRankIsRefused) {
  // libonnx indexes the kernel shape (from W) by X's rank.
  absl::Status st = Validate(ConvModel("Conv", {8, 4, 3}, /*x_rank=*/5));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rank 5"), std::string::npos) << st;
}

TEST(ValidateTest, BadAttributesAreRefusedWithTheirName) {
  struct Case {
    const char* attr;
    std::vector<int64_t> ints;
    int64_t i;
    const char* expect;
  };
  const Case cases[] = {
      {"group", {}, 0, "group 0"},       {"group", {}, -3, "group -3"},
      {"group", {}, 7, "does not divide"}, {"kernel_shape", {3, 3, 3}, 0, "kernel_shape"},
      {"kernel_shape", {5, 5}, 0, "differs"}, {"pads", {1, 1}, 0, "pads"},
      {"strides", {0, 1}, 0, "strides"},   {"dilations", {1, 1, 1}, 0, "dilations"},
  };
  for (const Case& c : cases) {
    for (const char* op : {"Conv", "ConvTranspose"}) {
      auto m = ConvModel(op, {8, 4, 3, 3});
      auto* n = m.mutable_graph()->mutable_node(0);
      if (c.ints.empty()) {
        AttrInt(n, c.attr, c.i);
      } else {
        AttrInts(n, c.attr, c.ints);
      }
      absl::Status st = Validate(m);
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << op << " " << c.attr;
      EXPECT_NE(st.message().find(c.expect), std::string::npos) << st;
    }
  }
}

TEST(ValidateTest, DeepSubgraphNestingIsRefusedClearly) {
  onnx::ModelProto m = testing::NewModel(13);
  onnx::GraphProto* g = m.mutable_graph();
  for (int depth = 0; depth < 200; ++depth) {
    GraphBuilder b(g);
    auto* n = b.Node("If", {"cond"}, {"out"}, "if" + std::to_string(depth));
    g = testing::AttrGraph(n, "then_branch");
  }
  absl::Status st = Validate(m);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("nested more than"), std::string::npos) << st;
  // From a file, through the parser (whose default recursion limit would have called the
  // model corrupt): the same clear refusal.
  std::string dir = testing::MakeTempDir("validate");
  ASSERT_TRUE(testing::SaveModel(m, dir + "/deep.onnx").ok());
  auto r = QuantizeModelFile(dir + "/deep.onnx", dir + "/out.onnx", QuantizeOptions(), {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("nested more than"), std::string::npos) << r.status();
}

TEST(ValidateTest, EngineRefusesRank200ConvInsteadOfCrashing) {
  std::string dir = testing::MakeTempDir("validate");
  for (const char* op : {"Conv", "ConvTranspose"}) {
    for (OutputFormat format : {OutputFormat::kQdq, OutputFormat::kFake}) {
      std::vector<int64_t> dims(200, 1);
      dims[0] = 4;
      auto m = ConvModel(op, dims);
      ASSERT_TRUE(testing::SaveModel(m, dir + "/m.onnx").ok());
      QuantizeOptions o;
      o.format = format;
      o.min_weight_elements = 1;
      auto r = QuantizeModelFile(dir + "/m.onnx", dir + "/out.onnx", o, {});
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << op;
      auto info = InspectModelFile(dir + "/m.onnx");
      EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument) << op;
    }
  }
}

}  // namespace
}  // namespace sq

namespace sq {
namespace {

// x[N,8] -> MatMul w[8,4] -> Relu -> y: valid; each case below breaks one rule.
onnx::ModelProto SmallModel() {
  onnx::ModelProto m = testing::NewModel(13);
  GraphBuilder b(m.mutable_graph());
  b.Input("x", {-1, 8});
  b.Initializer("w", {8, 4}, testing::TestWeights(32, 1));
  b.Node("MatMul", {"x", "w"}, {"h"}, "mm");
  b.Node("Relu", {"h"}, {"y"}, "relu");
  b.Output("y");
  return m;
}

struct BrokenCase {
  std::string name;
  std::function<void(onnx::ModelProto*)> breakit;
  std::string message;
};

TEST(ValidateTest, InvalidGraphsAndTensorsAreRefusedNamingTheProblem) {
  ASSERT_TRUE(Validate(SmallModel()).ok()) << Validate(SmallModel());
  const std::vector<BrokenCase> cases = {
      {"dangling input", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_node(1)->set_input(0, "nowhere"); },
       "Relu node 'relu': input 'nowhere' is not produced"},
      {"cycle", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_node(0)->set_input(0, "y"); },
       "MatMul node 'mm': input 'y' is read before the node that produces it"},
      {"self-loop", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_node(1)->set_input(0, "y"); },
       "is read before the node that produces it"},
      {"duplicate output", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_node(1)->set_output(0, "h"); },
       "Relu node 'relu': output 'h' is already defined"},
      {"duplicate initializer", [](onnx::ModelProto* m) { *m->mutable_graph()->add_initializer() = m->graph().initializer(0); },
       "two initializers named 'w'"},
      {"missing graph output", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_output(0)->set_name("z"); },
       "output 'z' is not produced"},
      {"unknown domain", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_node(1)->set_domain("com.example"); },
       "domain 'com.example' is not among the model's opset imports"},
      {"ir_version 999", [](onnx::ModelProto* m) { m->set_ir_version(999); }, "ir_version 999"},
      {"negative dim", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_initializer(0)->set_dims(0, -8); },
       "tensor 'w': negative dimension -8"},
      {"huge dims", [](onnx::ModelProto* m) {
         auto* t = m->mutable_graph()->mutable_initializer(0);
         t->set_dims(0, int64_t{1} << 40);
         t->set_dims(1, int64_t{1} << 40);
       }, "more than 2^50 elements"},
      {"raw and typed data", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_initializer(0)->add_float_data(1.0f); },
       "both raw_data and typed data"},
      {"raw data short", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_initializer(0)->mutable_raw_data()->resize(12); },
       "raw_data holds 12 bytes, its dims need 128"},
      {"unknown data type", [](onnx::ModelProto* m) { m->mutable_graph()->mutable_initializer(0)->set_data_type(99); },
       "unknown data type 99"},
  };
  std::string dir = testing::MakeTempDir("validate");
  for (const BrokenCase& c : cases) {
    onnx::ModelProto m = SmallModel();
    c.breakit(&m);
    absl::Status st = Validate(m);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(st.message().find(c.message), std::string::npos) << c.name << ": " << st;
    // The engine refuses it the same way and writes nothing.
    ASSERT_TRUE(testing::SaveModel(m, dir + "/bad.onnx").ok()) << c.name;
    QuantizeOptions o;
    o.min_weight_elements = 1;
    auto r = QuantizeModelFile(dir + "/bad.onnx", dir + "/out.onnx", o, {});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << r.status();
    EXPECT_FALSE(std::filesystem::exists(dir + "/out.onnx")) << c.name;
  }
}

}  // namespace
}  // namespace sq
