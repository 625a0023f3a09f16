#include "core/options.h"

#include <string>

#include "gtest/gtest.h"

namespace sq {
namespace {

void ExpectInvalid(const QuantizeOptions& o, const std::string& needle) {
  const absl::Status s = ValidateOptions(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
}

TEST(OptionsTest, DefaultsAreValid) { EXPECT_TRUE(ValidateOptions(QuantizeOptions()).ok()); }

TEST(OptionsTest, BitsRange) {
  QuantizeOptions o;
  for (int b : {2, 3, 4, 8}) {
    o.bits = b;
    EXPECT_TRUE(ValidateOptions(o).ok()) << b;
  }
  for (int b : {0, 1, 9, -4}) {
    o.bits = b;
    ExpectInvalid(o, "bits");
  }
}

TEST(OptionsTest, BlockSizeOnlyCheckedForBlockGranularity) {
  QuantizeOptions o;
  o.block_size = 0;
  EXPECT_TRUE(ValidateOptions(o).ok());  // per-channel ignores it
  o.granularity = Granularity::kBlock;
  ExpectInvalid(o, "block_size");
  o.block_size = 1;
  ExpectInvalid(o, "block_size");
  o.block_size = 65537;
  ExpectInvalid(o, "block_size");
  o.block_size = 2;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.block_size = 65536;
  EXPECT_TRUE(ValidateOptions(o).ok());
}

TEST(OptionsTest, ThreadsMinElementsOpset) {
  QuantizeOptions o;
  o.threads = -1;
  ExpectInvalid(o, "threads");
  o.threads = 1025;
  ExpectInvalid(o, "threads");
  o.threads = 1024;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o = QuantizeOptions();
  o.min_weight_elements = -1;
  ExpectInvalid(o, "min_weight_elements");
  o = QuantizeOptions();
  for (int v : {12, 26, -1, 1}) {
    o.target_opset = v;
    ExpectInvalid(o, "target_opset");
  }
  for (int v : {0, 13, 21, 25}) {
    o.target_opset = v;
    EXPECT_TRUE(ValidateOptions(o).ok()) << v;
  }
}

TEST(OptionsTest, SplitFormatNeedsSplit) {
  QuantizeOptions o;
  o.format = OutputFormat::kSplit;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.split = false;
  ExpectInvalid(o, "format split needs split on");
}

TEST(OptionsTest, UnknownEnumValueRejected) {
  QuantizeOptions o;
  o.granularity = static_cast<Granularity>(17);
  ExpectInvalid(o, "granularity");
}

TEST(OptionsTest, ParseAndPrintRoundTrip) {
  for (Granularity g : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
    auto p = ParseGranularity(ToString(g));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, g);
  }
  for (OutputFormat f : {OutputFormat::kQdq, OutputFormat::kFake, OutputFormat::kSplit}) {
    auto p = ParseOutputFormat(ToString(f));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, f);
  }
  for (SplitForm f : {SplitForm::kBranches, SplitForm::kFolded}) {
    auto p = ParseSplitForm(ToString(f));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, f);
  }
  for (ClusterScope c : {ClusterScope::kAuto, ClusterScope::kTensor, ClusterScope::kChannel}) {
    auto p = ParseClusterScope(ToString(c));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, c);
  }
  EXPECT_STREQ(ToString(Granularity::kBlock), "block");
  EXPECT_STREQ(ToString(OutputFormat::kQdq), "qdq");
  EXPECT_STREQ(ToString(SplitForm::kFolded), "folded");
  EXPECT_STREQ(ToString(ClusterScope::kAuto), "auto");
}

TEST(OptionsTest, ParseErrorsListAcceptedValues) {
  auto g = ParseGranularity("Channel");
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(g.status().message()).find("tensor, channel, block"), std::string::npos);
  auto f = ParseOutputFormat("onnx");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(f.status().message()).find("qdq, fake, split"), std::string::npos);
  auto s = ParseSplitForm("");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.status().message()).find("branches, folded"), std::string::npos);
  auto c = ParseClusterScope("layer");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(c.status().message()).find("auto, tensor, channel"), std::string::npos);
}

}  // namespace
}  // namespace sq
