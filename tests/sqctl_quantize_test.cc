// `sqctl quantize`: flag parsing (library) and the real binary's exit codes and output.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/quantize_command.h"
#include "core/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/hostile_corpus.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_telemetry.h"
#include "tests/support/sanitizers.h"

namespace sq::cli {
namespace {

using ::testing::HasSubstr;

TEST(ParseQuantizeArgsTest, ParsesEveryFlag) {
  auto a = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--bits", "2", "--granularity=block",
                              "--block-size", "16", "--symmetric", "--split", "off", "--form",
                              "folded", "--format", "fake", "--exclude", "a,b", "--exclude", "^c",
                              "--exclude-op", "Conv", "--threads", "3", "--report", "r.json",
                              "--cluster-scope", "channel", "--external-data", "--target-opset", "21", "--kmeans", "reference", "--boundaries", "kmeans"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->input, "m.onnx");
  EXPECT_EQ(a->output, "o.onnx");
  EXPECT_EQ(a->options.bits, 2);
  EXPECT_EQ(a->options.granularity, Granularity::kBlock);
  EXPECT_EQ(a->options.block_size, 16);
  EXPECT_TRUE(a->options.symmetric);
  EXPECT_EQ(a->options.split, SplitMode::kOff);
  EXPECT_EQ(a->options.form, SplitForm::kFolded);
  EXPECT_EQ(a->options.format, OutputFormat::kFake);
  EXPECT_EQ(a->options.exclude_name_patterns, (std::vector<std::string>{"a,b", "^c"}));
  EXPECT_EQ(a->options.exclude_op_types, (std::vector<std::string>{"Conv"}));
  EXPECT_EQ(a->options.threads, 3);
  EXPECT_EQ(a->options.cluster_scope, ClusterScope::kChannel);
  EXPECT_TRUE(a->options.external_data);
  EXPECT_EQ(a->options.target_opset, 21);
  EXPECT_EQ(a->report_path, "r.json");
  EXPECT_TRUE(a->options.reference_kmeans);
  EXPECT_EQ(a->options.quant_aware_boundaries, std::optional<bool>(false));
}

TEST(ParseQuantizeArgsTest, ParsesLayerOverridesSplitAutoAndInitializerInputs) {
  auto a = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--split", "auto", "--layer",
                              "head=bits:8,split:off", "--layer", "conv=granularity:tensor",
                              "--initializer-inputs", "inputs", "--quantize-gather", "off",
                              "--bpw-budget", "3.5"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->options.quantize_gather);
  EXPECT_DOUBLE_EQ(a->options.bpw_budget, 3.5);
  EXPECT_EQ(a->options.split, SplitMode::kAuto);
  ASSERT_EQ(a->options.layer_overrides.size(), 2u);
  EXPECT_EQ(ToString(a->options.layer_overrides[0]), "head=bits:8,split:off");
  EXPECT_EQ(a->options.layer_overrides[1].granularity, Granularity::kTensor);
  EXPECT_FALSE(a->options.initializer_inputs_are_weights);
}

TEST(ParseQuantizeArgsTest, TargetFormAndAccuracyLevel) {
  auto d = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx"});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->options.target, Target::kOrtCpu);
  EXPECT_EQ(d->options.form, SplitForm::kAuto);
  auto a = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--target", "portable", "--form", "compact"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->options.target, Target::kPortable);
  EXPECT_EQ(a->options.form, SplitForm::kCompact);
  auto b = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--format", "qdq", "--form", "folded"});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->options.target, Target::kQdq);
  auto c = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--form", "outer8", "--ort-accuracy-level", "0",
                              "--nbits-min-elements", "4096"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->options.form, SplitForm::kOuter8);
  EXPECT_EQ(c->options.ort_accuracy_level, 0);
  EXPECT_EQ(c->options.nbits_min_elements, 4096);
  struct Bad {
    std::vector<std::string> args;
    const char* message;
  };
  for (const Bad& bad : {Bad{{"--target", "ort-cpu", "--format", "fake"}, "--format fake"},
                         Bad{{"--target", "gpu"}, "unknown target 'gpu'"},
                         Bad{{"--target", "qdq", "--form", "compact"}, "compact needs target"},
                         Bad{{"--target", "portable", "--form", "branches"}, "target portable"},
                         Bad{{"--form", "outer8", "--target", "qdq"}, "outer8"},
                         Bad{{"--ort-accuracy-level", "2"}, "ort_accuracy_level"},
                         Bad{{"--ort-accuracy-level", "x"}, "--ort-accuracy-level"},
                         Bad{{"--nbits-min-elements", "many"}, "--nbits-min-elements"},
                         Bad{{"--nbits-min-elements", "-1"}, "nbits_min_elements"}}) {
    std::vector<std::string> args = {"m.onnx", "-o", "o.onnx"};
    args.insert(args.end(), bad.args.begin(), bad.args.end());
    auto r = ParseQuantizeArgs(args);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad.message;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(bad.message));
  }
}

TEST(ParseQuantizeArgsTest, RejectsBadCommandLines) {
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  for (const Case& c : {Case{{"m.onnx", "-o", "o", "--bits", "9"}, "--bits"},
                        Case{{"m.onnx", "-o", "o", "--bits", "four"}, "--bits"},
                        Case{{"m.onnx", "-o", "o", "--granularity", "row"}, "granularity"},
                        Case{{"m.onnx", "-o", "o", "--format", "gguf"}, "format"},
                        Case{{"m.onnx", "-o", "o", "--split", "maybe"}, "--split"},
                        Case{{"m.onnx", "-o", "o", "--frobnicate"}, "unknown flag"},
                        Case{{"m.onnx"}, "no output"},
                        Case{{"-o", "o.onnx"}, "no input"},
                        Case{{"a.onnx", "b.onnx", "-o", "o"}, "more than one"},
                        Case{{"m.onnx", "-o"}, "needs a value"},
                        Case{{"m.onnx", "-o", "o", "--kmeans", "fast"}, "--kmeans"},
                        Case{{"m.onnx", "-o", "o", "--boundaries", "best"}, "--boundaries"},
                        Case{{"m.onnx", "-o", "o", "--layer", "(=bits:4"}, "bad regex"},
                        Case{{"m.onnx", "-o", "o", "--layer", "fc=colour:red"}, "unknown key 'colour'"},
                        Case{{"m.onnx", "-o", "o", "--initializer-inputs", "maybe"}, "--initializer-inputs"},
                        Case{{"m.onnx", "-o", "o", "--quantize-gather", "yes"}, "--quantize-gather"},
                        Case{{"m.onnx", "-o", "o", "--bpw-budget", "small"}, "--bpw-budget"},
                        Case{{"m.onnx", "-o", "o", "--verify", "maybe"}, "--verify wants on or off"},
                        Case{{"m.onnx", "-o", "o", "--verify", "off", "--verify-input", "x.npz"},
                             "verify_input: is given but verify is off"},
                        Case{{"m.onnx", "-o", "o", "--format", "split", "--split", "off"}, "split"}}) {
    auto a = ParseQuantizeArgs(c.args);
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(std::string(a.status().message()), HasSubstr(c.message));
  }
}

TEST(ParseQuantizeArgsTest, ActivationFlags) {
  auto a = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--activations", "uint8", "--calibration", "s1.npz",
                              "--calibration=dir", "--calibration-method", "minmax", "--calibration-percentile",
                              "99.5", "--input-range", "x=0:255", "--input-range", "y=-1:1",
                              "--split-activations", "positional"});
  ASSERT_TRUE(a.ok()) << a.status();
  const QuantizeOptions& o = a->options;
  EXPECT_EQ(o.activations, ActivationType::kUint8);
  EXPECT_EQ(o.format, OutputFormat::kQdq);
  EXPECT_EQ(o.target, Target::kQdq);  // implied by --activations
  EXPECT_EQ(o.calibration_inputs, (std::vector<std::string>{"s1.npz", "dir"}));
  EXPECT_EQ(o.calibration_method, CalibrationMethod::kMinMax);
  EXPECT_DOUBLE_EQ(o.calibration_percentile, 99.5);
  ASSERT_EQ(o.input_ranges.size(), 2u);
  EXPECT_EQ(o.input_ranges[1].name, "y");
  EXPECT_EQ(o.input_ranges[1].lo, -1.0f);
  EXPECT_EQ(o.split_activations, ActivationSplit::kPositional);
  // Off implies nothing; an explicit other target is refused by the options' check.
  auto off = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--activations", "off"});
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->options.target, Target::kOrtCpu);
  auto scales = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--scale-type", "float32"});
  ASSERT_TRUE(scales.ok()) << scales.status();
  EXPECT_EQ(scales->options.scale_type, ScaleType::kFloat32);
  auto rounding = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx", "--rounding", "nearest",
                                     "--boundaries", "quant", "--boundaries", "auto"});
  ASSERT_TRUE(rounding.ok()) << rounding.status();
  EXPECT_EQ(rounding->options.rounding, Rounding::kNearest);
  EXPECT_FALSE(rounding->options.quant_aware_boundaries.has_value());
  auto dflt = ParseQuantizeArgs({"m.onnx", "-o", "o.onnx"});
  ASSERT_TRUE(dflt.ok());
  EXPECT_EQ(dflt->options.rounding, Rounding::kBalanced);
  for (const auto& bad : std::vector<std::pair<std::vector<std::string>, const char*>>{
           {{"--activations", "int8", "--target", "ort-cpu"}, "--target ort-cpu"},
           {{"--activations", "int8", "--format", "fake"}, "--format fake"},
           {{"--activations", "int4"}, "unknown activation type 'int4'"},
           {{"--input-range", "x=1"}, "--input-range: input range 'x=1'"},
           {{"--calibration-method", "kl"}, "unknown calibration method"},
           {{"--calibration-percentile", "high"}, "--calibration-percentile"},
           {{"--activations", "int8", "--calibration-percentile", "40"}, "calibration_percentile"},
           {{"--split-activations", "yes"}, "unknown activation split"},
           {{"--scale-type", "bfloat16"}, "unknown scale type 'bfloat16'"},
           {{"--rounding", "stochastic"}, "unknown rounding 'stochastic'"},
           {{"--boundaries", "median"}, "--boundaries wants auto, kmeans or quant"},
           {{"--calibration", "s.npz"}, "calibration_inputs"}}) {
    std::vector<std::string> args = {"m.onnx", "-o", "o.onnx"};
    args.insert(args.end(), bad.first.begin(), bad.first.end());
    auto r = ParseQuantizeArgs(args);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad.second;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(bad.second));
  }
}

// Runs the built sqctl binary; returns the exit code and captures stdout+stderr.
int RunCommand(const std::string& cmd, std::string* output) {
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) output->append(buf, n);
  int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int RunSqctl(const std::string& args, std::string* output) {
  return RunCommand(absl::StrCat(SQ_BINARY_DIR, "/client/sqctl ", args, " 2>&1"), output);
}

// As RunSqctl, under GNU time writing the peak RSS (KB) to `rss_file`.
int RunSqctlUnderTime(const std::string& args, const std::string& rss_file, std::string* output) {
  return RunCommand(absl::StrCat("/usr/bin/time -f %M -o '", rss_file, "' ", SQ_BINARY_DIR,
                                 "/client/sqctl ", args, " 2>&1"),
                    output);
}

// x[?, 64] -> MatMul(w [64, 64]) -> y: one layer to split and quantize.
absl::Status SaveOneMatMul(const std::string& path) {
  onnx::ModelProto m = testing::NewModel(17);
  testing::GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 64});
  g.Initializer("w", {64, 64}, testing::TestWeights(64 * 64, 3));
  g.Node("MatMul", {"x", "w"}, {"y"}, "fc");
  g.Output("y");
  return testing::SaveModel(m, path);
}

// sqctl runs users' models in ONNX Runtime (verification, in its own process) and must
// leave none of ONNX Runtime's telemetry behind (tests/support/ort_telemetry.h). The second
// run, where the environment opts back in, shows that the check sees ONNX Runtime's files
// when they are written.
TEST(SqctlBinaryTest, VerificationLeavesNoOnnxRuntimeTelemetryBehind) {
  const std::string dir = testing::MakeTempDir("sq-cli-telemetry");
  ASSERT_TRUE(SaveOneMatMul(dir + "/m.onnx").ok());
  for (const std::string opt_in : {"", "0"}) {
    const std::string run = absl::StrCat(dir, "/run", opt_in);
    std::filesystem::create_directories(run + "/cache");
    std::filesystem::create_directories(run + "/tmp");
    std::string env = "env";
    for (const std::string& v : testing::OrtQuietVariables()) absl::StrAppend(&env, " -u ", v);
    env += opt_in.empty() ? " -u ORT_DISABLE_TELEMETRY" : " ORT_DISABLE_TELEMETRY=" + opt_in;
    std::string out;
    int rc = RunCommand(absl::StrCat(env, " XDG_CACHE_HOME=", run, "/cache TMPDIR=", run, "/tmp ",
                                     SQ_BINARY_DIR, "/client/sqctl quantize ", dir, "/m.onnx -o ",
                                     run, "/q.onnx --bits 4 2>&1"),
                        &out);
    ASSERT_EQ(rc, 0) << out;
    ASSERT_THAT(out, HasSubstr("verification: passed in onnxruntime"));
    const testing::OrtTelemetryTraces left = testing::FindOrtTelemetryTraces(run + "/cache", run + "/tmp");
    if (opt_in.empty()) {
      EXPECT_THAT(left.cache, ::testing::IsEmpty());
      EXPECT_THAT(left.logs, ::testing::IsEmpty());
    } else {
      EXPECT_THAT(left.cache, ::testing::Contains(::testing::HasSubstr("Microsoft")))
          << "the environment opted back in, and this ONNX Runtime writes its device id there";
      EXPECT_THAT(left.logs, ::testing::Not(::testing::IsEmpty()));
    }
  }
}

TEST(SqctlBinaryTest, QuantizesAndWritesTheReport) {
  std::string dir = testing::MakeTempDir("sq-cli");
  ASSERT_TRUE(SaveOneMatMul(dir + "/m.onnx").ok());
  std::string out;
  int rc = RunSqctl(absl::StrCat("quantize ", dir, "/m.onnx -o ", dir, "/q.onnx --bits 4 --report ",
                                 dir, "/r.json"), &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("1 quantized, 1 split"));
  auto report = ReadFileToString(dir + "/r.json");
  ASSERT_TRUE(report.ok());
  auto j = nlohmann::json::parse(*report);
  EXPECT_EQ(j["layers"].size(), 1u);
  EXPECT_EQ(j["layers"][0]["split"], true);
  EXPECT_EQ(j["options"]["bits"], 4);
  EXPECT_EQ(j["output_sha256"].get<std::string>().size(), 64u);
  // Verified in ONNX Runtime by default, and said so in the summary.
  EXPECT_EQ(j["verification"]["status"], "passed");
  EXPECT_EQ(j["options"]["verify"], true);
  EXPECT_EQ(j["options"]["scale_type"], "auto");
  EXPECT_THAT(out, HasSubstr("verification: passed in onnxruntime"));
  rc = RunSqctl(absl::StrCat("quantize ", dir, "/m.onnx -o ", dir, "/q4.onnx --verify off --report ",
                             dir, "/r4.json"), &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("verification: off"));

  rc = RunSqctl(absl::StrCat("quantize ", dir, "/m.onnx -o ", dir, "/q2.onnx --json"), &out);
  EXPECT_EQ(rc, 0);
  EXPECT_NO_THROW(nlohmann::json::parse(out));

  rc = RunSqctl(absl::StrCat("quantize ", dir, "/missing.onnx -o ", dir, "/q3.onnx"), &out);
  EXPECT_EQ(rc, kExitFailed);
  EXPECT_THAT(out, HasSubstr("NOT_FOUND"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << "errors are one line: " << out;

  rc = RunSqctl("quantize --bits 1 x.onnx -o y.onnx", &out);
  EXPECT_EQ(rc, kExitUsage);
  rc = RunSqctl("quantize --activations int4 x.onnx -o y.onnx", &out);
  EXPECT_EQ(rc, kExitUsage) << out;
  EXPECT_THAT(out, HasSubstr("unknown activation type 'int4'"));
  rc = RunSqctl("quantize --activations int8 --input-range x=1 x.onnx -o y.onnx", &out);
  EXPECT_EQ(rc, kExitUsage) << out;
  EXPECT_THAT(out, HasSubstr("--input-range"));
  rc = RunSqctl("quantize --help", &out);
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(out, HasSubstr("--granularity"));
  rc = RunSqctl("nonsense", &out);
  EXPECT_EQ(rc, kExitUsage);
}

// The hostile corpus (tests/support/hostile_corpus.h) through the real binary, as #11
// asks: exit 1 with a one-line reason for every refused case, 0 for the valid ones,
// nothing left at the output, and the process's peak RSS bounded (GNU time's %M).
TEST(SqctlBinaryTest, HostileCorpusExitsOneWithOneLineAndLeavesNothing) {
  const std::string dir = testing::MakeTempDir("sq-cli-hostile");
  const auto cases = testing::WriteHostileCorpus(dir + "/in");
  ASSERT_GE(cases.size(), 60u);
  const bool have_time = access("/usr/bin/time", X_OK) == 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const std::string out_dir = absl::StrCat(dir, "/out", i);
    ASSERT_EQ(mkdir(out_dir.c_str(), 0755), 0);
    const std::string rss_file = out_dir + ".rss";
    std::string output;
    const std::string args = absl::StrCat("quantize '", c.model, "' -o '", out_dir, "/q.onnx' --quiet");
    int rc = have_time ? RunSqctlUnderTime(args, rss_file, &output) : RunSqctl(args, &output);
    if (c.expect == absl::StatusCode::kOk) {
      EXPECT_EQ(rc, 0) << c.name << ": " << output;
    } else {
      EXPECT_EQ(rc, kExitFailed) << c.name << ": " << output;
      EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << c.name << ": " << output;
      EXPECT_TRUE(std::filesystem::is_empty(out_dir)) << c.name;
    }
    if (have_time) {
      auto kb = ReadFileToString(rss_file);
      ASSERT_TRUE(kb.ok()) << c.name;
      // GNU time prefixes "Command exited with non-zero status N" on failures: the
      // figure is the last line.
      std::string last = *kb;
      while (!last.empty() && last.back() == '\n') last.pop_back();
      last = last.substr(last.find_last_of('\n') == std::string::npos ? 0 : last.find_last_of('\n') + 1);
      const long long peak_kb = std::atoll(last.c_str());
      EXPECT_GT(peak_kb, 0) << c.name << ": " << *kb;
      EXPECT_LT(peak_kb, 512 * 1024 * testing::kSanitizerMemoryFactor) << c.name << ": peak RSS " << peak_kb << " KB";
    }
  }
}

}  // namespace
}  // namespace sq::cli
