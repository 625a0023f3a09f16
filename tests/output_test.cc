// The engine's layout and write stages (core/output.h) alone: where tensors go, bounds on
// writes, copies of untouched external tensors, and that nothing is visible before Commit.
#include "core/output.h"

#include <unistd.h>

#include <cstring>
#include <deque>
#include <filesystem>

#include "core/file_util.h"
#include "core/model_io.h"
#include "core/transform_stage.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

namespace sq {
namespace {

using ::sq::testing::GraphBuilder;
using ::testing::HasSubstr;

bool Exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

// A tensor's offset in the external data file (-1 when it has none).
long long ExternalOffset(const onnx::TensorProto* t) {
  for (const auto& e : t->external_data()) {
    if (e.key() == "offset") return std::stoll(e.value());
  }
  return -1LL;
}

class OutputTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq-output"); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }
  // Entries of the test folder whose name contains `part` (outputs and their temporaries).
  int EntriesNamed(const std::string& part) {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      n += e.path().filename().string().find(part) != std::string::npos;
    }
    return n;
  }

  // y = x @ W with a 32x32 weight (4 KiB) and a 4-element bias-like tensor, saved with
  // the weight in external data when `external`.
  std::unique_ptr<LoadedModel> Model(bool external) {
    onnx::ModelProto m = testing::NewModel();
    GraphBuilder b(m.mutable_graph());
    b.Input("x", {1, 32});
    b.Initializer("W", {32, 32}, testing::TestWeights(32 * 32, 3));
    b.Initializer("c", {4}, {1, 2, 3, 4});
    b.Node("MatMul", {"x", "W"}, {"y"});
    b.Output("y");
    const std::string path = Path("in.onnx");
    EXPECT_TRUE((external ? testing::SaveModelWithExternalData(m, path, "in.data", 1024)
                          : testing::SaveModel(m, path))
                    .ok());
    auto model = LoadedModel::FromFile(path);
    EXPECT_TRUE(model.ok()) << model.status();
    return *std::move(model);
  }

  // A planned tensor of `bytes` bytes added to the model's graph, as the planner would.
  onnx::TensorProto* Planned(LoadedModel& model, const std::string& name, int64_t bytes,
                             std::vector<GroupPlan>* plans) {
    onnx::TensorProto* t = model.proto().mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::UINT8);
    t->add_dims(bytes);
    GroupPlan p;
    groups_.emplace_back();
    groups_.back().weight_name = name;
    groups_.back().shape = {bytes};  // the schedule's cost: as a weight of `bytes` floats
    p.group = &groups_.back();
    p.tensor_bytes.push_back({t, bytes});
    plans->push_back(p);
    return t;
  }

  std::string dir_;
  std::deque<WeightGroup> groups_;
};

TEST_F(OutputTest, SmallModelStaysInlineAndPlannedBytesLandInRawData) {
  auto model = Model(/*external=*/false);
  std::vector<GroupPlan> plans;
  onnx::TensorProto* t = Planned(*model, "codes", 8, &plans);
  auto out = OutputFiles::LayOut(*model, plans, QuantizeOptions(), Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)->num_copies(), 0);
  const uint8_t bytes[3] = {7, 8, 9};
  ASSERT_TRUE((*out)->WriteTensorBytes(t, 5, bytes, 3).ok());
  EXPECT_EQ(t->raw_data(), std::string("\0\0\0\0\0\x07\x08\x09", 8));

  ModelReport report;
  ASSERT_TRUE((*out)->Commit(model->proto(), &report).ok());
  EXPECT_FALSE(Exists(Path("out.onnx.data")));
  EXPECT_TRUE(report.external_data_path.empty());
  auto size = FileSize(Path("out.onnx"));
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(report.output_bytes, *size);
  EXPECT_EQ(report.output_sha256.size(), 64u);
}

TEST_F(OutputTest, WritesOutsideAPlannedTensorAreInternalErrors) {
  auto model = Model(/*external=*/false);
  std::vector<GroupPlan> plans;
  onnx::TensorProto* t = Planned(*model, "codes", 8, &plans);
  auto out = OutputFiles::LayOut(*model, plans, QuantizeOptions(), Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  const uint8_t bytes[4] = {};
  absl::Status past = (*out)->WriteTensorBytes(t, 6, bytes, 4);
  EXPECT_EQ(past.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(past.message(), HasSubstr("'codes'"));
  EXPECT_EQ((*out)->WriteTensorBytes(t, -1, bytes, 1).code(), absl::StatusCode::kInternal);
  // A tensor the plans never named has no place.
  onnx::TensorProto* w = &(*model->proto().mutable_graph()->mutable_initializer(0));
  EXPECT_EQ((*out)->WriteTensorBytes(w, 0, bytes, 1).code(), absl::StatusCode::kInternal);
}

TEST_F(OutputTest, ExternalInputKeepsLargeTensorsExternalAndCopiesThemExactly) {
  auto model = Model(/*external=*/true);
  ASSERT_TRUE(model->uses_external_data());
  std::vector<GroupPlan> plans;
  onnx::TensorProto* t = Planned(*model, "codes", 5000, &plans);
  QuantizeOptions options;
  options.external_data = true;
  auto out = OutputFiles::LayOut(*model, plans, options, Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  // W (4 KiB, external) moves by a copy job; c (16 bytes) stays inline.
  ASSERT_EQ((*out)->num_copies(), 1);
  EXPECT_EQ((*out)->copy_bytes(0), 32 * 32 * 4);
  ASSERT_TRUE((*out)->RunCopy(0).ok());
  std::string codes(5000, '\x5a');
  ASSERT_TRUE((*out)->WriteTensorBytes(t, 0, codes.data(), codes.size()).ok());
  // Nothing under the output names before the commit.
  EXPECT_FALSE(Exists(Path("out.onnx")));
  EXPECT_FALSE(Exists(Path("out.onnx.data")));

  ModelReport report;
  ASSERT_TRUE((*out)->Commit(model->proto(), &report).ok());
  EXPECT_EQ(report.external_data_path, "out.onnx.data");
  auto sha = Sha256File(Path("out.onnx.data"));
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(report.external_data_sha256, *sha);

  auto written = LoadedModel::FromFile(Path("out.onnx"));
  ASSERT_TRUE(written.ok()) << written.status();
  auto original = LoadedModel::FromFile(Path("in.onnx"));
  ASSERT_TRUE(original.ok());
  auto tensor = [](LoadedModel& m, const std::string& name) -> const onnx::TensorProto* {
    for (const auto& i : m.proto().graph().initializer()) {
      if (i.name() == name) return &i;
    }
    return nullptr;
  };
  const onnx::TensorProto* w_out = tensor(**written, "W");
  ASSERT_NE(w_out, nullptr);
  EXPECT_TRUE(IsExternal(*w_out));
  EXPECT_FALSE(IsExternal(*tensor(**written, "c")));
  auto a = ReadFloatTensor(**written, *w_out);
  auto b = ReadFloatTensor(**original, *tensor(**original, "W"));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size, b->size);
  EXPECT_EQ(std::memcmp(a->data, b->data, a->size * 4), 0);
}

TEST_F(OutputTest, TheDataFileIsLaidOutInScheduleOrderLargestFirst) {
  auto model = Model(/*external=*/true);
  std::vector<GroupPlan> plans;
  onnx::TensorProto* small = Planned(*model, "small", 3000, &plans);
  onnx::TensorProto* big = Planned(*model, "big", 90000, &plans);
  QuantizeOptions options;
  options.external_data = true;
  auto out = OutputFiles::LayOut(*model, plans, options, Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  // Costs: big 360000, small 12000 (FP32 bytes of their weights), the copy of W 512.
  const auto& schedule = (*out)->schedule();
  ASSERT_EQ(schedule.size(), 3u);
  EXPECT_EQ(schedule[0].plan, 1);
  EXPECT_EQ(schedule[1].plan, 0);
  EXPECT_EQ(schedule[2].copy, 0);
  EXPECT_EQ(ExternalOffset(big), 0);
  EXPECT_GT(ExternalOffset(small), ExternalOffset(big));
  const onnx::TensorProto* w = nullptr;
  for (const auto& i : model->proto().graph().initializer()) {
    if (i.name() == "W") w = &i;
  }
  ASSERT_NE(w, nullptr);
  EXPECT_GT(ExternalOffset(w), ExternalOffset(small));
  EXPECT_EQ(ExternalOffset(w) % 64, 0);

  // Written back to front, the digest is still the file's.
  ASSERT_TRUE((*out)->RunCopy(0).ok());
  std::string s(3000, '\x11'), b(90000, '\x22');
  ASSERT_TRUE((*out)->WriteTensorBytes(small, 0, s.data(), s.size()).ok());
  ASSERT_TRUE((*out)->WriteTensorBytes(big, 0, b.data(), b.size()).ok());
  ModelReport report;
  ASSERT_TRUE((*out)->Commit(model->proto(), &report).ok());
  auto sha = Sha256File(Path("out.onnx.data"));
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(report.external_data_sha256, *sha);
}

TEST_F(OutputTest, LayersThatMustRunAloneAfterTheFirstAreScheduledLast) {
  // Two re-encoded layers whose codes would need > 128 MB each (RunsAlone) and a small one:
  // the second big one is scheduled, and laid out, after everything else, where the
  // workers would run it anyway.
  auto model = Model(/*external=*/true);
  std::vector<GroupPlan> plans;
  onnx::TensorProto* a = Planned(*model, "big_a", 100, &plans);
  onnx::TensorProto* b = Planned(*model, "big_b", 100, &plans);
  onnx::TensorProto* c = Planned(*model, "small", 100, &plans);
  groups_[0].shape = {200 << 20};
  groups_[1].shape = {150 << 20};
  groups_[2].shape = {1 << 20};
  for (GroupPlan& p : plans) {
    p.form = LayerForm::kNBits;
    p.num_branches = 3;
    p.config.storage_bits = 4;
  }
  ASSERT_TRUE(RunsAlone(plans[0]) && RunsAlone(plans[1]) && !RunsAlone(plans[2]));
  QuantizeOptions options;
  options.external_data = true;
  auto out = OutputFiles::LayOut(*model, plans, options, Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  const auto& schedule = (*out)->schedule();
  ASSERT_EQ(schedule.size(), 4u);
  EXPECT_EQ(schedule[0].plan, 0);
  EXPECT_EQ(schedule[1].plan, 2);
  EXPECT_EQ(schedule[2].copy, 0);
  EXPECT_EQ(schedule[3].plan, 1);
  EXPECT_LT(ExternalOffset(a), ExternalOffset(c));
  EXPECT_LT(ExternalOffset(c), ExternalOffset(b));
}

TEST_F(OutputTest, DroppedWithoutCommitLeavesNothing) {
  auto model = Model(/*external=*/true);
  std::vector<GroupPlan> plans;
  Planned(*model, "codes", 5000, &plans);
  QuantizeOptions options;
  options.external_data = true;
  {
    auto out = OutputFiles::LayOut(*model, plans, options, Path("out.onnx"));
    ASSERT_TRUE(out.ok()) << out.status();
  }
  EXPECT_FALSE(Exists(Path("out.onnx")));
  EXPECT_FALSE(Exists(Path("out.onnx.data")));
  EXPECT_EQ(EntriesNamed("out.onnx"), 0) << "a temporary was left behind";
}

TEST_F(OutputTest, ACheckThatFailsAtCommitLeavesNothing) {
  auto model = Model(/*external=*/true);
  std::vector<GroupPlan> plans;
  onnx::TensorProto* t = Planned(*model, "codes", 5000, &plans);
  QuantizeOptions options;
  options.external_data = true;
  auto out = OutputFiles::LayOut(*model, plans, options, Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_TRUE((*out)->RunCopy(0).ok());
  std::string codes(5000, '\x5a');
  ASSERT_TRUE((*out)->WriteTensorBytes(t, 0, codes.data(), codes.size()).ok());
  ModelReport report;
  ArtifactImage seen;
  std::string seen_data;
  absl::Status st = (*out)->Commit(model->proto(), &report, [&](const ArtifactImage& a) {
    seen = a;
    auto bytes = ReadFileToString(a.data_path);  // the complete data file, still a temporary
    if (bytes.ok()) seen_data = *bytes;
    return absl::FailedPreconditionError("the check says no");
  });
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(seen.name, "out.onnx");
  EXPECT_EQ(seen.data_location, "out.onnx.data");
  EXPECT_EQ(seen.total_bytes, report.output_bytes);
  EXPECT_EQ(static_cast<int64_t>(seen.model_bytes.size() + seen_data.size()), report.output_bytes);
  out->reset();
  EXPECT_FALSE(Exists(Path("out.onnx")));
  EXPECT_FALSE(Exists(Path("out.onnx.data")));
  EXPECT_EQ(EntriesNamed("out.onnx"), 0) << "a temporary was left behind";
}

}  // namespace
}  // namespace sq
