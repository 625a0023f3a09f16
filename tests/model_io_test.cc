// Model loading: overflow-safe bounds on external data and element counts.
#include "core/model_io.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

namespace sq {
namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

TEST(ModelIoTest, RangeInsideNeverOverflows) {
  EXPECT_TRUE(RangeInside(0, 10, 10));
  EXPECT_TRUE(RangeInside(10, 0, 10));
  EXPECT_FALSE(RangeInside(1, 10, 10));
  EXPECT_FALSE(RangeInside(9223372036854775798, 1728, 4096));  // the sum wraps negative
  EXPECT_FALSE(RangeInside(kMax, kMax, kMax));
  EXPECT_FALSE(RangeInside(-1, 1, 10));
  EXPECT_FALSE(RangeInside(0, -1, 10));
}

TEST(ModelIoTest, CheckedBytesRefusesOverflow) {
  EXPECT_EQ(CheckedBytes(10, 4), 40);
  EXPECT_EQ(CheckedBytes(int64_t{1} << 62, 4), -1);
  EXPECT_EQ(CheckedBytes(-1, 4), -1);
  EXPECT_EQ(CheckedBytes(10, 0), -1);
}

class ExternalDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("model_io");
    std::ofstream(dir_ + "/w.bin", std::ios::binary) << std::string(4096, '\0');
  }
  // A model with one FP32 [32,32] initializer in w.bin at `offset`/`length`.
  std::string Write(const std::string& offset, const std::string& length,
                    std::vector<int64_t> dims = {32, 32}) {
    onnx::ModelProto m = testing::NewModel();
    auto* t = m.mutable_graph()->add_initializer();
    t->set_name("w");
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->add_dims(d);
    t->set_data_location(onnx::TensorProto::EXTERNAL);
    for (auto [k, v] : {std::pair<std::string, std::string>{"location", "w.bin"},
                        {"offset", offset}, {"length", length}}) {
      if (v.empty()) continue;
      auto* e = t->add_external_data();
      e->set_key(k);
      e->set_value(v);
    }
    std::string path = dir_ + "/m.onnx";
    EXPECT_TRUE(testing::SaveModel(m, path).ok());
    return path;
  }
  std::string dir_;
};

TEST_F(ExternalDataTest, InBoundsLoadsAndReads) {
  auto model = LoadedModel::FromFile(Write("0", "4096"));
  ASSERT_TRUE(model.ok()) << model.status();
  auto t = ReadFloatTensor(**model, (*model)->proto().graph().initializer(0));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->size, 1024);
}

TEST_F(ExternalDataTest, OffsetWhoseSumOverflowsIsInvalidArgument) {
  // Found by hand: offset + length wrapped negative and passed the old bounds check.
  auto model = LoadedModel::FromFile(Write("9223372036854775798", "1728", {432}));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("does not lie inside"), std::string::npos)
      << model.status();
}

TEST_F(ExternalDataTest, LengthPastTheEndIsInvalidArgument) {
  auto model = LoadedModel::FromFile(Write("4000", "4096"));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ExternalDataTest, DimsClaimingExabytesAreInvalidArgument) {
  // No length: the byte count comes from the dims, whose product overflows.
  auto model = LoadedModel::FromFile(Write("0", "", {int64_t{1} << 40, int64_t{1} << 30}));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
  auto model2 = LoadedModel::FromFile(Write("0", "4096", {int64_t{1} << 61, 2}));
  EXPECT_EQ(model2.status().code(), absl::StatusCode::kInvalidArgument) << model2.status();
}

TEST_F(ExternalDataTest, FifoIsNotAFile) {
  ASSERT_EQ(::mkfifo((dir_ + "/fifo").c_str(), 0600), 0);
  onnx::ModelProto m = testing::NewModel();
  auto* t = m.mutable_graph()->add_initializer();
  t->set_name("w");
  t->set_data_type(onnx::TensorProto::FLOAT);
  t->add_dims(4);
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* e = t->add_external_data();
  e->set_key("location");
  e->set_value("fifo");
  ASSERT_TRUE(testing::SaveModel(m, dir_ + "/f.onnx").ok());
  auto model = LoadedModel::FromFile(dir_ + "/f.onnx");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
}

}  // namespace
}  // namespace sq
