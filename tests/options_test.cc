#include "core/options.h"

#include <cmath>
#include <optional>
#include <string>

#include "gmock/gmock.h"
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

TEST(OptionsTest, BitsPerWeightBudgetRangeAndFormat) {
  QuantizeOptions o;
  for (double v : {-1.0, 33.0, std::nan("")}) {
    o.bpw_budget = v;
    ExpectInvalid(o, "bpw_budget");
  }
  o.bpw_budget = 2.5;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.format = OutputFormat::kFake;
  ExpectInvalid(o, "writes FP32 weights");
}

TEST(OptionsTest, SplitFormatNeedsSplit) {
  QuantizeOptions o;
  o.format = OutputFormat::kSplit;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.split = SplitMode::kOff;
  ExpectInvalid(o, "format split needs split on");
}

TEST(OptionsTest, LayerOverridesParseValidateAndMatchFirst) {
  auto a = ParseLayerOverride("attn.*proj=bits:8,split:off");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->pattern, "attn.*proj");
  EXPECT_EQ(a->bits, 8);
  EXPECT_EQ(a->split, SplitMode::kOff);
  EXPECT_FALSE(a->granularity.has_value());
  EXPECT_EQ(ToString(*a), "attn.*proj=bits:8,split:off");
  auto b = ParseLayerOverride("conv=granularity:block,block_size:16,symmetric:on,split:auto");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->granularity, Granularity::kBlock);
  EXPECT_EQ(b->block_size, 16);
  EXPECT_EQ(b->symmetric, true);
  EXPECT_EQ(ParseLayerOverride(ToString(*b))->block_size, 16);  // round trip

  // Each bad part is named.
  struct Bad {
    const char* spec;
    const char* message;
  };
  for (const Bad& bad : {Bad{"no-equals", "REGEX=key:value"}, Bad{"(=bits:4", "bad regex"},
                         Bad{"x=bits:9", "bits wants 2..8"}, Bad{"x=colour:red", "unknown key 'colour'"},
                         Bad{"x=bits", "is not key:value"}, Bad{"=bits:4", "empty regex"},
                         Bad{"x=split:maybe", "split mode"}, Bad{"x=", "no settings"}}) {
    auto r = ParseLayerOverride(bad.spec);
    ASSERT_FALSE(r.ok()) << bad.spec;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(bad.message), std::string::npos) << r.status();
  }

  QuantizeOptions o;
  o.layer_overrides = {*a, *b};
  LayerSettings s = SettingsForLayer(o, "block0/attn.q_proj");
  EXPECT_EQ(s.bits, 8);
  EXPECT_EQ(s.split, SplitMode::kOff);
  EXPECT_EQ(s.override_index, 0);
  s = SettingsForLayer(o, "conv_attn.proj");  // both match: the first wins
  EXPECT_EQ(s.override_index, 0);
  s = SettingsForLayer(o, "conv3");
  EXPECT_EQ(s.override_index, 1);
  EXPECT_EQ(s.bits, 4);
  EXPECT_EQ(s.granularity, Granularity::kBlock);
  s = SettingsForLayer(o, "mlp.up");
  EXPECT_EQ(s.override_index, -1);
  EXPECT_EQ(s.split, SplitMode::kOn);

  // An override the wire could carry without the parser is still validated.
  LayerOverride hand;
  hand.pattern = "(";
  o.layer_overrides = {hand};
  ExpectInvalid(o, "bad regex");
  o.layer_overrides[0].pattern = "x";
  o.layer_overrides[0].bits = 1;
  ExpectInvalid(o, "bits must be in 2..8");
}

TEST(OptionsTest, UnknownEnumValueRejected) {
  QuantizeOptions o;
  o.granularity = static_cast<Granularity>(17);
  ExpectInvalid(o, "granularity");
  QuantizeOptions s;
  s.scale_type = static_cast<ScaleType>(9);
  ExpectInvalid(s, "scale_type");
  QuantizeOptions r;
  r.rounding = static_cast<Rounding>(9);
  ExpectInvalid(r, "rounding");
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
  for (Target t : {Target::kOrtCpu, Target::kQdq, Target::kPortable}) {
    auto p = ParseTarget(ToString(t));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, t);
  }
  for (SplitForm f : {SplitForm::kAuto, SplitForm::kBranches, SplitForm::kFolded, SplitForm::kCompact}) {
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

// One choice of output family: --format qdq is --target qdq, and contradictions name
// both flags; each target takes only the forms it can write.
TEST(OptionsTest, TargetFormatAndFormCombinations) {
  auto resolve = [](std::optional<std::string> t, std::optional<std::string> f) {
    QuantizeOptions o;
    absl::Status s = ResolveTargetFlags(t, f, &o);
    return std::make_pair(s, o);
  };
  auto [s1, o1] = resolve("portable", std::nullopt);
  ASSERT_TRUE(s1.ok());
  EXPECT_EQ(o1.format, OutputFormat::kQdq);
  EXPECT_EQ(o1.target, Target::kPortable);
  auto [s2, o2] = resolve(std::nullopt, "qdq");
  ASSERT_TRUE(s2.ok());
  EXPECT_EQ(o2.target, Target::kQdq);
  auto [s3, o3] = resolve("qdq", "qdq");
  EXPECT_TRUE(s3.ok());
  for (auto [t, f] : {std::pair<const char*, const char*>{"ort-cpu", "fake"}, {"qdq", "split"},
                      {"portable", "qdq"}}) {
    auto [s, o] = resolve(t, f);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << t << " " << f;
    EXPECT_THAT(std::string(s.message()), ::testing::AllOf(::testing::HasSubstr("--target"),
                                                           ::testing::HasSubstr("--format")));
  }
  EXPECT_EQ(resolve("gpu", std::nullopt).first.code(), absl::StatusCode::kInvalidArgument);

  QuantizeOptions o;
  o.target = Target::kQdq;
  o.form = SplitForm::kCompact;
  EXPECT_THAT(std::string(ValidateOptions(o).message()), ::testing::HasSubstr("compact needs target"));
  o.format = OutputFormat::kFake;
  EXPECT_FALSE(ValidateOptions(o).ok());
  o.format = OutputFormat::kQdq;
  o.target = Target::kPortable;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.form = SplitForm::kBranches;
  EXPECT_THAT(std::string(ValidateOptions(o).message()), ::testing::HasSubstr("portable"));
  o.target = Target::kOrtCpu;
  EXPECT_TRUE(ValidateOptions(o).ok());
  o.form = SplitForm::kFolded;
  EXPECT_FALSE(ValidateOptions(o).ok());
  o.form = SplitForm::kAuto;
  EXPECT_EQ(EffectiveForm(o), SplitForm::kAuto);
  o.target = Target::kPortable;
  EXPECT_EQ(EffectiveForm(o), SplitForm::kCompact);
  o.target = Target::kQdq;
  EXPECT_EQ(EffectiveForm(o), SplitForm::kBranches);
  o.ort_accuracy_level = 2;
  EXPECT_THAT(std::string(ValidateOptions(o).message()), ::testing::HasSubstr("ort_accuracy_level"));
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
  auto st = ParseScaleType("bfloat16");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.status().message()).find("auto, float16, float32"), std::string::npos);
  for (ScaleType t : {ScaleType::kAuto, ScaleType::kFloat16, ScaleType::kFloat32}) {
    auto p = ParseScaleType(ToString(t));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, t);
  }
  auto c = ParseClusterScope("layer");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(c.status().message()).find("auto, tensor, channel"), std::string::npos);
}

TEST(OptionsTest, ActivationOptionsParse) {
  EXPECT_EQ(*ParseActivationType("off"), ActivationType::kOff);
  EXPECT_EQ(*ParseActivationType("int8"), ActivationType::kInt8);
  EXPECT_EQ(*ParseActivationType("uint8"), ActivationType::kUint8);
  EXPECT_THAT(std::string(ParseActivationType("int4").status().message()), ::testing::HasSubstr("off, int8, uint8"));
  EXPECT_EQ(*ParseCalibrationMethod("minmax"), CalibrationMethod::kMinMax);
  EXPECT_EQ(*ParseCalibrationMethod("percentile"), CalibrationMethod::kPercentile);
  EXPECT_FALSE(ParseCalibrationMethod("entropy").ok());
  EXPECT_EQ(*ParseActivationSplit("off"), ActivationSplit::kOff);
  EXPECT_EQ(*ParseActivationSplit("range"), ActivationSplit::kRange);
  EXPECT_EQ(*ParseActivationSplit("positional"), ActivationSplit::kPositional);
  EXPECT_FALSE(ParseActivationSplit("thirds").ok());
  for (auto a : {ActivationType::kOff, ActivationType::kInt8, ActivationType::kUint8}) {
    EXPECT_EQ(*ParseActivationType(ToString(a)), a);
  }
  for (auto m : {CalibrationMethod::kMinMax, CalibrationMethod::kPercentile}) {
    EXPECT_EQ(*ParseCalibrationMethod(ToString(m)), m);
  }
  for (auto a : {ActivationSplit::kOff, ActivationSplit::kRange, ActivationSplit::kPositional}) {
    EXPECT_EQ(*ParseActivationSplit(ToString(a)), a);
  }
}

TEST(OptionsTest, InputRangeParse) {
  auto r = ParseInputRange("pixel_values=-1:1.5");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->name, "pixel_values");
  EXPECT_EQ(r->lo, -1.0f);
  EXPECT_EQ(r->hi, 1.5f);
  auto eq = ParseInputRange("a=b=0:255");  // the last '=' separates the range
  ASSERT_TRUE(eq.ok()) << eq.status();
  EXPECT_EQ(eq->name, "a=b");
  for (const char* bad : {"x=1", "x", "=0:1", "x=0:1:2", "x=a:1", "x=1:0", "x=1:1", "x=0:inf", "x=nan:1"}) {
    EXPECT_EQ(ParseInputRange(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(OptionsTest, ActivationCombinationsRefused) {
  QuantizeOptions o;
  o.activations = ActivationType::kInt8;
  ExpectInvalid(o, "target");  // the default target, ort-cpu
  o.target = Target::kQdq;
  EXPECT_TRUE(ValidateOptions(o).ok()) << ValidateOptions(o);
  o.form = SplitForm::kFolded;
  ExpectInvalid(o, "activations");
  o.form = SplitForm::kAuto;
  o.calibration_percentile = 50;
  ExpectInvalid(o, "calibration_percentile");
  o.calibration_percentile = 99.9;
  o.input_ranges = {{"x", 0, 1}, {"x", -1, 1}};
  ExpectInvalid(o, "input_ranges");

  QuantizeOptions off;
  off.calibration_inputs = {"sample.npz"};
  ExpectInvalid(off, "calibration_inputs");
  off.split_activations = ActivationSplit::kRange;  // the range split reads them too
  EXPECT_TRUE(ValidateOptions(off).ok()) << ValidateOptions(off);
}

}  // namespace
}  // namespace sq
