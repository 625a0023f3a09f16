// Stage "verify" (core/verify/): the input-file reader, the choice of inputs, the comparison,
// and the whole stage through the engine: a passing artifact is reported per output, an
// artifact that does not run fails the run and leaves nothing, an input model ONNX Runtime
// cannot run makes verification "skipped", not failed.
#include "core/verify/verify.h"

#include <unistd.h>
#include <zip.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/engine.h"
#include "core/file_util.h"
#include "core/verify/tensor_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

namespace sq {
namespace {

using ::sq::testing::GraphBuilder;
using ::testing::HasSubstr;
using ::sq::testing::NpyImage;

bool Exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Writes a .npz (a zip of .npy entries), compressed or stored.
void WriteNpz(const std::string& path, const std::vector<std::pair<std::string, std::string>>& entries,
              bool compress) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(z, nullptr);
  std::vector<std::string> keep;
  keep.reserve(entries.size());
  for (const auto& [name, bytes] : entries) {
    keep.push_back(bytes);
    zip_source_t* src = zip_source_buffer(z, keep.back().data(), keep.back().size(), 0);
    zip_int64_t idx = zip_file_add(z, (name + ".npy").c_str(), src, ZIP_FL_OVERWRITE);
    ASSERT_GE(idx, 0);
    zip_set_file_compression(z, idx, compress ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
  }
  ASSERT_EQ(zip_close(z), 0);
}

class VerifyTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq-verify"); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }
  std::string dir_;
};

// x[N,32] -> MatMul W[32,24] -> y
onnx::ModelProto MatMulModel() {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 32});
  g.Initializer("w", {32, 24}, testing::TestWeights(32 * 24, 1));
  g.Node("MatMul", {"x", "w"}, {"y"}, "fc");
  g.Output("y");
  return m;
}

// ids[N,S] (int64) -> Gather(table[10,16]) -> MatMul W[16,8] -> y
onnx::ModelProto EmbeddingModel() {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("ids", {-1, -1}, 7);
  g.Initializer("table", {10, 16}, testing::TestWeights(10 * 16, 2));
  g.Initializer("w", {16, 8}, testing::TestWeights(16 * 8, 3));
  g.Node("Gather", {"table", "ids"}, {"e"}, "embed");
  g.Node("MatMul", {"e", "w"}, {"y"}, "fc");
  g.Output("y");
  return m;
}

TEST_F(VerifyTest, NpyOfEveryElementTypeIsRead) {
  const float f[6] = {1, 2, 3, 4, 5, 6};
  auto t = ParseNpy(NpyImage("<f4", {2, 3}, f, sizeof(f)), "x");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->elem_type, 1);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t->f, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  const int64_t i[2] = {-7, 9};
  t = ParseNpy(NpyImage("<i8", {2}, i, sizeof(i)), "ids");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->elem_type, 7);
  EXPECT_EQ(t->i, (std::vector<int64_t>{-7, 9}));
  const double d[1] = {0.5};
  t = ParseNpy(NpyImage("<f8", {}, d, sizeof(d)), "s");  // a scalar
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->shape.empty());
  EXPECT_EQ(t->f, (std::vector<float>{0.5f}));
  const uint8_t b[3] = {1, 0, 1};
  t = ParseNpy(NpyImage("|b1", {3}, b, sizeof(b)), "mask");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->elem_type, 9);
  EXPECT_EQ(t->i, (std::vector<int64_t>{1, 0, 1}));
}

TEST_F(VerifyTest, MalformedNpyIsInvalidArgumentNamingTheTensor) {
  const float f[6] = {};
  const std::string good = NpyImage("<f4", {2, 3}, f, sizeof(f));
  struct Case {
    std::string bytes, why;
  } cases[] = {
      {good.substr(0, good.size() - 1), "holds 23 data bytes"},
      {good.substr(0, 20), "truncated"},
      {"not numpy at all", "not a .npy"},
      {NpyImage(">f4", {2, 3}, f, sizeof(f)), "dtype '>f4'"},
      {NpyImage("<f4", {-2, 3}, f, sizeof(f)), "bad shape entry"},
      {NpyImage("<f4", {int64_t{1} << 40, 1 << 20}, f, sizeof(f)), "more than 1 GiB"},
      {NpyImage("<U8", {2}, f, 8), "is not read"},
  };
  for (const Case& c : cases) {
    auto t = ParseNpy(c.bytes, "x");
    ASSERT_FALSE(t.ok()) << c.why;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << c.why;
    EXPECT_THAT(t.status().message(), HasSubstr("input tensor x")) << c.why;
    EXPECT_THAT(t.status().message(), HasSubstr(c.why));
  }
}

TEST_F(VerifyTest, NpzStoredAndCompressedAndTensorProtoFilesAreRead) {
  const float f[4] = {1, 2, 3, 4};
  const int64_t i[2] = {3, 4};
  for (bool compress : {false, true}) {
    const std::string path = Path(compress ? "c.npz" : "s.npz");
    WriteNpz(path, {{"x", NpyImage("<f4", {1, 4}, f, sizeof(f))}, {"ids", NpyImage("<i8", {2}, i, sizeof(i))}},
             compress);
    auto t = ReadTensorFile(path);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_EQ(t->size(), 2u);
    EXPECT_EQ((*t)[0].name, "x");
    EXPECT_EQ((*t)[0].f, (std::vector<float>{1, 2, 3, 4}));
    EXPECT_EQ((*t)[1].name, "ids");
    EXPECT_EQ((*t)[1].i, (std::vector<int64_t>{3, 4}));
  }
  onnx::TensorProto p;
  p.set_name("x");
  p.set_data_type(1);
  p.add_dims(2);
  p.add_float_data(1.5f);
  p.add_float_data(-2.5f);
  WriteFile(Path("x.pb"), p.SerializeAsString());
  auto t = ReadTensorFile(Path("x.pb"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)[0].f, (std::vector<float>{1.5f, -2.5f}));

  WriteFile(Path("garbage.npz"), "PK not really a zip");
  EXPECT_EQ(ReadTensorFile(Path("garbage.npz")).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadTensorFile(Path("missing.npy")).status().code(), absl::StatusCode::kNotFound);
  WriteFile(Path("x.csv"), "1,2");
  auto bad = ReadTensorFile(Path("x.csv"));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr(".npy, .npz or .pb"));
}

TEST_F(VerifyTest, SeededInputsFillOpenDimsAndKeepIdsInsideTheirTable) {
  QuantizeOptions o;
  auto in = PrepareVerifyInputs(EmbeddingModel().graph(), o);
  ASSERT_TRUE(in.ok()) << in.status();
  ASSERT_EQ(in->sets.size(), 2u);
  const OrtTensor& ids = in->sets[0].tensors.at(0);
  EXPECT_EQ(ids.shape, (std::vector<int64_t>{1, 32}));  // batch 1, other open dims 32
  for (int64_t id : ids.i) EXPECT_LT(id, 10);            // the table has 10 rows
  EXPECT_EQ(in->sets[1].tensors.at(0).shape, (std::vector<int64_t>{1, 1}));

  o.verify = false;
  in = PrepareVerifyInputs(EmbeddingModel().graph(), o);
  ASSERT_TRUE(in.ok());
  EXPECT_TRUE(in->sets.empty());
}

TEST_F(VerifyTest, AnInputFileMustMatchTheGraphInputs) {
  const float f[64] = {};
  WriteFile(Path("any_name.npy"), NpyImage("<f4", {2, 32}, f, sizeof(f)));
  QuantizeOptions o;
  o.verify_input = Path("any_name.npy");
  auto in = PrepareVerifyInputs(MatMulModel().graph(), o);  // one input: the name is ignored
  ASSERT_TRUE(in.ok()) << in.status();
  ASSERT_EQ(in->sets.size(), 1u);
  EXPECT_EQ(in->sets[0].tensors[0].name, "x");
  EXPECT_EQ(in->sets[0].description, "file any_name.npy");

  WriteNpz(Path("wrong.npz"), {{"tokens", NpyImage("<f4", {2, 32}, f, sizeof(f))}}, false);
  o.verify_input = Path("wrong.npz");
  in = PrepareVerifyInputs(EmbeddingModel().graph(), o);
  ASSERT_FALSE(in.ok());
  EXPECT_EQ(in.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(in.status().message(), HasSubstr("holds tensor 'tokens', which is not an input"));
  WriteNpz(Path("two.npz"), {{"x", NpyImage("<f4", {2, 32}, f, sizeof(f))}}, false);
  o.verify_input = Path("two.npz");
  onnx::ModelProto two = MatMulModel();
  testing::GraphBuilder(two.mutable_graph()).Input("ids", {2}, 7);
  in = PrepareVerifyInputs(two.graph(), o);
  EXPECT_THAT(in.status().message(), HasSubstr("lacks the model's input 'ids'"));

}

TEST_F(VerifyTest, ComparisonReportsAgreementAndRefusesNonFiniteOrReshapedOutputs) {
  OrtTensor ref{"y", {2, 3}, 1, {1, 2, 3, 3, 2, 1}, {}};
  OrtTensor art = ref;
  art.f = {1.1f, 2, 2.9f, 2, 3, 1};  // row 0 argmax agrees, row 1 does not
  auto cmp = CompareOutputs({art}, {ref});
  ASSERT_TRUE(cmp.ok()) << cmp.status();
  ASSERT_EQ(cmp->size(), 1u);
  EXPECT_EQ((*cmp)[0].agreement_kind, "argmax");
  EXPECT_DOUBLE_EQ((*cmp)[0].agreement, 0.5);
  EXPECT_NEAR((*cmp)[0].max_abs, 1.0, 1e-6);
  EXPECT_NEAR((*cmp)[0].rel_l2, std::sqrt((0.01 + 0.01 + 1 + 1) / 28.0), 1e-6);

  art.f[4] = std::numeric_limits<float>::quiet_NaN();
  cmp = CompareOutputs({art}, {ref});
  EXPECT_EQ(cmp.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(cmp.status().message(), HasSubstr("NaN/Inf"));

  art = ref;
  art.shape = {3, 2};
  EXPECT_THAT(CompareOutputs({art}, {ref}).status().message(), HasSubstr("has shape [3,2]"));
  EXPECT_THAT(CompareOutputs({}, {ref}).status().message(), HasSubstr("missing from the artifact"));

  OrtTensor ids_ref{"ids", {4}, 7, {}, {1, 2, 3, 4}};
  OrtTensor ids = ids_ref;
  ids.i[3] = 0;
  cmp = CompareOutputs({ids}, {ids_ref});
  ASSERT_TRUE(cmp.ok());
  EXPECT_EQ((*cmp)[0].agreement_kind, "equal");
  EXPECT_DOUBLE_EQ((*cmp)[0].agreement, 0.75);
}

TEST_F(VerifyTest, AnArtifactThatDoesNotRunIsAVerificationFailure) {
  ASSERT_TRUE(testing::SaveModel(MatMulModel(), Path("in.onnx")).ok());
  QuantizeOptions o;
  auto inputs = PrepareVerifyInputs(MatMulModel().graph(), o);
  ASSERT_TRUE(inputs.ok());
  // The "artifact" multiplies by a weight of the wrong shape: it loads and fails to run.
  onnx::ModelProto broken = MatMulModel();
  broken.mutable_graph()->mutable_initializer(0)->set_dims(0, 31);
  broken.mutable_graph()->mutable_initializer(0)->mutable_raw_data()->resize(31 * 24 * 4);
  const std::string bytes = broken.SerializeAsString();
  ArtifactImage image;
  image.name = "out.onnx";
  image.model_bytes = bytes;
  image.total_bytes = static_cast<int64_t>(bytes.size());
  Verification v;
  absl::Status s = VerifyArtifact(Path("in.onnx"), 4096, image, *inputs, 1, &v);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(IsVerificationFailure(s));
  EXPECT_THAT(s.message(), HasSubstr("the FP32 model runs in ONNX Runtime"));
  EXPECT_THAT(s.message(), HasSubstr("out.onnx"));
  EXPECT_THAT(s.message(), ::testing::Not(HasSubstr(dir_)));

  // Not bytes of a model at all.
  image.model_bytes = "garbage";
  s = VerifyArtifact(Path("in.onnx"), 4096, image, *inputs, 1, &v);
  EXPECT_TRUE(IsVerificationFailure(s)) << s;
  EXPECT_FALSE(IsVerificationFailure(absl::InternalError("disk")));
}

TEST_F(VerifyTest, LargeModelsAreSampledAsDocumented) {
  ASSERT_TRUE(testing::SaveModel(MatMulModel(), Path("in.onnx")).ok());
  auto inputs = PrepareVerifyInputs(MatMulModel().graph(), QuantizeOptions{});
  ASSERT_TRUE(inputs.ok());
  const std::string bytes = MatMulModel().SerializeAsString();
  ArtifactImage image;
  image.name = "out.onnx";
  image.model_bytes = bytes;
  // An input over kVerifyReferenceMaxBytes: no FP32 reference, the artifact still runs.
  image.total_bytes = static_cast<int64_t>(bytes.size());
  Verification v;
  ASSERT_TRUE(VerifyArtifact(Path("in.onnx"), kVerifyReferenceMaxBytes + 1, image, *inputs, 1, &v).ok());
  EXPECT_EQ(v.status, "passed");
  EXPECT_FALSE(v.reference_ran);
  EXPECT_THAT(v.note, HasSubstr("not run; the artifact loads, runs and gives finite outputs"));
  ASSERT_EQ(v.outputs.size(), 1u);
  EXPECT_EQ(v.outputs[0].shape, (std::vector<int64_t>{1, 24}));
  // An artifact over kVerifyArtifactMaxBytes is not loaded at all.
  image.total_bytes = kVerifyArtifactMaxBytes + 1;
  ASSERT_TRUE(VerifyArtifact(Path("in.onnx"), 4096, image, *inputs, 1, &v).ok());
  EXPECT_EQ(v.status, "skipped");
  EXPECT_THAT(v.note, HasSubstr("not loaded"));
}

TEST_F(VerifyTest, EveryQuantizeIsVerifiedAndReportedPerOutput) {
  ASSERT_TRUE(testing::SaveModel(EmbeddingModel(), Path("in.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 16;
  o.format = OutputFormat::kSplit;  // FP32 split: equal to the input up to summation order
  auto r = QuantizeModelFile(Path("in.onnx"), Path("split.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  const Verification& v = r->verification;
  EXPECT_EQ(v.status, "passed");
  EXPECT_TRUE(v.reference_ran);
  EXPECT_THAT(v.runtime, HasSubstr("onnxruntime 1."));
  EXPECT_THAT(v.inputs, HasSubstr("seeded (seed 1; open dims 1/32)"));
  ASSERT_EQ(v.outputs.size(), 1u);
  EXPECT_EQ(v.outputs[0].name, "y");
  EXPECT_EQ(v.outputs[0].shape, (std::vector<int64_t>{1, 32, 8}));
  EXPECT_LT(v.outputs[0].rel_l2, 1e-6);
  EXPECT_DOUBLE_EQ(v.outputs[0].agreement, 1.0);
  bool timed = false;
  for (const StageTiming& t : r->stages) timed |= t.stage == "verify";
  EXPECT_TRUE(timed);
  EXPECT_THAT(ReportToJson(*r), HasSubstr("\"verification\""));
  EXPECT_THAT(ReportSummary(*r), HasSubstr("verification: passed in onnxruntime"));

  // INT2 on the default target, with external data (verified from memory, before the rename).
  o.format = OutputFormat::kQdq;
  o.bits = 2;
  o.external_data = true;
  r = QuantizeModelFile(Path("in.onnx"), Path("int2.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->verification.status, "passed");
  EXPECT_GT(r->verification.outputs.at(0).rel_l2, 1e-4);  // a quantized model differs
  EXPECT_LT(r->verification.outputs.at(0).rel_l2, 1.0);
  // Loaded by path from a private folder of links beside the output, which is gone now.
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    EXPECT_NE(e.path().filename().string().rfind(".sq-verify", 0), 0u) << "left: " << e.path();
  }

  o.verify = false;
  r = QuantizeModelFile(Path("in.onnx"), Path("off.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->verification.status, "off");
  EXPECT_THAT(ReportSummary(*r), HasSubstr("verification: off"));
}

TEST_F(VerifyTest, UserInputsAreUsedAndBadOnesFailBeforeAnyWork) {
  ASSERT_TRUE(testing::SaveModel(MatMulModel(), Path("in.onnx")).ok());
  std::vector<float> x(3 * 32, 0.25f);
  WriteFile(Path("x.npy"), NpyImage("<f4", {3, 32}, x.data(), x.size() * 4));
  QuantizeOptions o;
  o.verify_input = Path("x.npy");
  auto r = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->verification.inputs, "file x.npy");
  EXPECT_EQ(r->verification.outputs.at(0).shape, (std::vector<int64_t>{3, 24}));

  const float wrong[4] = {};
  WriteFile(Path("bad.npy"), NpyImage("<f4", {4}, wrong, sizeof(wrong)).substr(0, 100));
  o.verify_input = Path("bad.npy");
  r = QuantizeModelFile(Path("in.onnx"), Path("bad.onnx"), o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Exists(Path("bad.onnx")));

  o.verify = false;
  o.verify_input = Path("x.npy");
  r = QuantizeModelFile(Path("in.onnx"), Path("bad.onnx"), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("option verify_input: is given but verify is off"));
}

TEST_F(VerifyTest, AnInputModelOrtCannotRunMakesVerificationSkippedNotFailed) {
  // The graph's int64 input is a Reshape target: seeded values make no valid shape, in the
  // FP32 model and in the artifact alike. That is the input's nature, not the artifact's fault.
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 32});
  g.Input("shape", {3}, 7);
  g.Initializer("w", {32, 24}, testing::TestWeights(32 * 24, 1));
  g.Node("MatMul", {"x", "w"}, {"h"}, "fc");
  g.Node("Reshape", {"h", "shape"}, {"y"}, "reshape");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("in.onnx")).ok());
  auto r = QuantizeModelFile(Path("in.onnx"), Path("out.onnx"), QuantizeOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->verification.status, "skipped");
  EXPECT_FALSE(r->verification.reference_ran);
  EXPECT_THAT(r->verification.note, HasSubstr("the FP32 model does not run in ONNX Runtime"));
  EXPECT_THAT(r->verification.note, ::testing::Not(HasSubstr(dir_)));
  EXPECT_TRUE(Exists(Path("out.onnx")));
}

}  // namespace
}  // namespace sq
