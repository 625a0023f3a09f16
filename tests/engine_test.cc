// End-to-end tests of the engine on models built in code, checked in ONNX Runtime:
// every layer kind and storage form, every format and form, determinism, atomicity,
// cancellation and bad input.
#include "core/engine.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/model_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_runner.h"

namespace sq {
namespace {

using ::sq::testing::GraphBuilder;
using ::sq::testing::OrtTensor;
using ::testing::HasSubstr;

// The split model computes the same function in FP32 up to summation order.
constexpr double kSplitRelTolerance = 1e-5;
// qdq (DequantizeLinear in ORT) vs fake (our dequantized FP32 weights): same weights,
// different kernels.
constexpr double kQdqVsFakeRelTolerance = 1e-4;

bool Exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

std::string ReadAll(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq-engine"); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }

  // Runs `model` and `other` on the same random inputs; returns max relative error.
  double Compare(const std::string& model, const std::string& other, uint64_t seed = 7,
                 bool optimize = true) {
    auto inputs = testing::MakeRandomInputs(model, seed, 2);
    EXPECT_TRUE(inputs.ok()) << inputs.status();
    testing::OrtRunOptions ro;
    ro.disable_optimizations = !optimize;
    auto a = testing::RunOrt(model, *inputs, ro);
    auto b = testing::RunOrt(other, *inputs, ro);
    EXPECT_TRUE(a.ok()) << a.status();
    EXPECT_TRUE(b.ok()) << b.status();
    if (!a.ok() || !b.ok()) return INFINITY;
    return testing::MaxRelativeError(*b, *a);
  }

  absl::StatusOr<ModelReport> Quantize(const std::string& in, const std::string& out,
                                       const QuantizeOptions& o) {
    return QuantizeModelFile(in, out, o);
  }

  std::string dir_;
};

// x[N,32] -> MatMul W1[32,24] -> Relu -> Gemm(transB) W2[16,24] + C -> y
onnx::ModelProto MlpModel(int opset = 17) {
  onnx::ModelProto m = testing::NewModel(opset);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 32});
  g.Initializer("w1", {32, 24}, testing::TestWeights(32 * 24, 1));
  g.Initializer("w2", {16, 24}, testing::TestWeights(16 * 24, 2));
  g.Initializer("c2", {16}, testing::TestWeights(16, 3));
  g.Node("MatMul", {"x", "w1"}, {"h"}, "fc1");
  g.Node("Relu", {"h"}, {"r"}, "relu");
  auto* gemm = g.Node("Gemm", {"r", "w2", "c2"}, {"y"}, "fc2");
  testing::AttrInt(gemm, "transB", 1);
  testing::AttrFloat(gemm, "alpha", 0.75f);
  testing::AttrFloat(gemm, "beta", 1.5f);
  g.Output("y");
  return m;
}

// x[N,4,10,10] -> Conv(8x4x3x3, bias) -> Conv depthwise (8x1x3x3, group 8, bias)
//   -> ConvTranspose (8 -> 6, group 2, bias) -> y
onnx::ModelProto ConvModel(int opset = 17) {
  onnx::ModelProto m = testing::NewModel(opset);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 4, 10, 10});
  g.Initializer("cw", {8, 4, 3, 3}, testing::TestWeights(8 * 4 * 9, 11));
  g.Initializer("cb", {8}, testing::TestWeights(8, 12));
  g.Initializer("dw", {8, 1, 3, 3}, testing::TestWeights(8 * 9, 13));
  g.Initializer("db", {8}, testing::TestWeights(8, 14));
  g.Initializer("tw", {8, 3, 3, 3}, testing::TestWeights(8 * 3 * 9, 15));
  g.Initializer("tb", {6}, testing::TestWeights(6, 16));
  auto* c1 = g.Node("Conv", {"x", "cw", "cb"}, {"a"}, "conv");
  testing::AttrInts(c1, "pads", {1, 1, 1, 1});
  auto* c2 = g.Node("Conv", {"a", "dw", "db"}, {"b"}, "depthwise");
  testing::AttrInt(c2, "group", 8);
  testing::AttrInts(c2, "pads", {1, 1, 1, 1});
  auto* c3 = g.Node("ConvTranspose", {"b", "tw", "tb"}, {"y"}, "deconv");
  testing::AttrInt(c3, "group", 2);
  testing::AttrInts(c3, "strides", {2, 2});
  g.Output("y");
  return m;
}

TEST_F(EngineTest, SplitFormatEqualsOriginalForEveryLayerKindAndForm) {
  for (auto& [name, model] : {std::pair<std::string, onnx::ModelProto>{"mlp", MlpModel()},
                              {"conv", ConvModel()}}) {
    ASSERT_TRUE(testing::SaveModel(model, Path(name + ".onnx")).ok());
    for (SplitForm form : {SplitForm::kBranches, SplitForm::kFolded}) {
      QuantizeOptions o;
      o.format = OutputFormat::kSplit;
      o.form = form;
      o.min_weight_elements = 1;
      std::string out = Path(absl::StrCat(name, "-split-", ToString(form), ".onnx"));
      auto report = Quantize(Path(name + ".onnx"), out, o);
      ASSERT_TRUE(report.ok()) << report.status();
      EXPECT_EQ(report->layers_split, name == "mlp" ? 2 : 3) << name;
      EXPECT_LE(Compare(Path(name + ".onnx"), out), kSplitRelTolerance) << name << " " << ToString(form);
    }
  }
}

TEST_F(EngineTest, BranchesFormHasThreeOpsPerLayerAndSplitsBias) {
  ASSERT_TRUE(testing::SaveModel(MlpModel(), Path("mlp.onnx")).ok());
  QuantizeOptions o;
  o.format = OutputFormat::kSplit;
  o.min_weight_elements = 1;
  auto report = Quantize(Path("mlp.onnx"), Path("out.onnx"), o);
  ASSERT_TRUE(report.ok()) << report.status();
  auto loaded = LoadedModel::FromFile(Path("out.onnx"));
  ASSERT_TRUE(loaded.ok());
  int matmuls = 0, gemms = 0, adds = 0;
  for (const auto& n : (*loaded)->proto().graph().node()) {
    matmuls += n.op_type() == "MatMul";
    gemms += n.op_type() == "Gemm";
    adds += n.op_type() == "Add";
  }
  EXPECT_EQ(matmuls, 3);
  EXPECT_EQ(gemms, 3);
  EXPECT_EQ(adds, 4);
  // Original weights are gone; the Gemm bias was split in three.
  for (const auto& t : (*loaded)->proto().graph().initializer()) {
    EXPECT_NE(t.name(), "w1");
    EXPECT_NE(t.name(), "c2");
  }
  EXPECT_TRUE(report->layers[1].bias_split);
}

// One quantization setting of a sweep; Apply sets it on options (min 1 element, so the
// tests' small weights are all quantized).
struct QuantCase {
  int bits;
  Granularity g;
  int block;
  bool symmetric;
  void Apply(QuantizeOptions* o) const {
    o->bits = bits;
    o->granularity = g;
    if (block) o->block_size = block;
    o->symmetric = symmetric;
    o->min_weight_elements = 1;
  }
};

TEST_F(EngineTest, QdqMatchesOurDequantizedReferenceInOrt) {
  ASSERT_TRUE(testing::SaveModel(MlpModel(), Path("mlp.onnx")).ok());
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  for (const QuantCase& c : {QuantCase{8, Granularity::kTensor, 0, false}, QuantCase{8, Granularity::kChannel, 0, true},
                        QuantCase{4, Granularity::kChannel, 0, false}, QuantCase{4, Granularity::kBlock, 16, false},
                        QuantCase{4, Granularity::kTensor, 0, true}, QuantCase{3, Granularity::kChannel, 0, false},
                        QuantCase{2, Granularity::kChannel, 0, false}}) {
    for (const char* name : {"mlp", "conv"}) {
      for (SplitForm form : {SplitForm::kBranches, SplitForm::kFolded}) {
        QuantizeOptions o;
        c.Apply(&o);
        o.form = form;
        std::string tag = absl::StrCat(name, "-", c.bits, ToString(c.g), c.symmetric, ToString(form));
        o.format = OutputFormat::kQdq;
        o.target = Target::kQdq;
        auto q = Quantize(Path(absl::StrCat(name, ".onnx")), Path(tag + "-qdq.onnx"), o);
        ASSERT_TRUE(q.ok()) << tag << ": " << q.status();
        o.format = OutputFormat::kFake;
        auto f = Quantize(Path(absl::StrCat(name, ".onnx")), Path(tag + "-fake.onnx"), o);
        ASSERT_TRUE(f.ok()) << tag << ": " << f.status();
        EXPECT_LE(Compare(Path(tag + "-fake.onnx"), Path(tag + "-qdq.onnx"), 7, false),
                  kQdqVsFakeRelTolerance) << tag;
        // Same clustering and parameters whatever the format: same error statistics.
        EXPECT_DOUBLE_EQ(q->mean_sqnr_split_db, f->mean_sqnr_split_db) << tag;
      }
    }
  }
}

// Targets ort-cpu and portable: MatMul weights as MatMulNBits (ort-cpu, 4/8 bits), every
// other weight decoded at load by standard ops. The artifact runs in ONNX Runtime and
// computes what the fake-quant model computes (weights bit-identical; MatMulNBits at
// accuracy_level 0 only sums in another order), with no DequantizeLinear left.
TEST_F(EngineTest, RuntimeTargetsMatchTheFakeQuantModelInOrt) {
  ASSERT_TRUE(testing::SaveModel(MlpModel(), Path("mlp.onnx")).ok());
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  int nbits_layers = 0, compact_split_layers = 0;
  for (const QuantCase& c : {QuantCase{4, Granularity::kChannel, 0, false}, QuantCase{4, Granularity::kBlock, 16, false},
                        QuantCase{8, Granularity::kTensor, 0, true}, QuantCase{8, Granularity::kChannel, 0, false},
                        QuantCase{2, Granularity::kChannel, 0, false}, QuantCase{3, Granularity::kBlock, 16, true},
                        QuantCase{4, Granularity::kTensor, 0, false}, QuantCase{3, Granularity::kChannel, 0, false},
                        QuantCase{3, Granularity::kTensor, 0, true}}) {
    for (const char* name : {"mlp", "conv"}) {
      for (Target target : {Target::kOrtCpu, Target::kPortable}) {
        for (SplitMode split : {SplitMode::kOn, SplitMode::kOff}) {
          QuantizeOptions o;
          c.Apply(&o);
          o.split = split;
          o.ort_accuracy_level = 0;
          o.nbits_min_elements = 0;  // these MatMuls are tiny
          // Branches: the re-encoding of the same values (outer8, ort-cpu's default for a
          // split 4-bit MatMul, changes them; tested on its own below).
          if (target == Target::kOrtCpu) o.form = SplitForm::kBranches;
          const std::string tag = absl::StrCat(name, "-", c.bits, ToString(c.g), c.symmetric,
                                               ToString(target), ToString(split));
          o.format = OutputFormat::kQdq;
          o.target = target;
          auto q = Quantize(Path(absl::StrCat(name, ".onnx")), Path(tag + "-q.onnx"), o);
          ASSERT_TRUE(q.ok()) << tag << ": " << q.status();
          o.format = OutputFormat::kFake;
          o.form = SplitForm::kFolded;
          auto f = Quantize(Path(absl::StrCat(name, ".onnx")), Path(tag + "-fake.onnx"), o);
          ASSERT_TRUE(f.ok()) << tag << ": " << f.status();
          EXPECT_LE(Compare(Path(tag + "-fake.onnx"), Path(tag + "-q.onnx")), 1e-5) << tag;
          EXPECT_LE(Compare(Path(tag + "-fake.onnx"), Path(tag + "-q.onnx"), 7, false), 1e-5) << tag;
          auto loaded = LoadedModel::FromFile(Path(tag + "-q.onnx"));
          ASSERT_TRUE(loaded.ok());
          for (const auto& n : (*loaded)->proto().graph().node()) {
            EXPECT_NE(n.op_type(), "DequantizeLinear") << tag;
            if (target == Target::kPortable) {
              EXPECT_EQ(n.domain(), "") << tag << ": " << n.op_type();
            }
          }
          for (const LayerReport& l : q->layers) {
            if (!l.quantized) continue;
            const bool nbits = target == Target::kOrtCpu && l.op_type == "MatMul" &&
                               (c.bits == 4 || c.bits == 8);
            EXPECT_EQ(l.form, nbits ? "matmulnbits" : "compact") << tag << " " << l.name;
            nbits_layers += nbits;
            if (!nbits && l.split) {
              ++compact_split_layers;
              // One code in its container plus a cluster id (1.6 bits: five to a byte),
              // plus parameters.
              const int container = c.bits <= 3 ? c.bits : c.bits <= 4 ? 4 : 8;
              EXPECT_GE(l.stored_bits_per_weight, container + 1.6) << tag << " " << l.name;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(nbits_layers, 10);  // fc1 in the 5 cases at 4 or 8 bits, split on and off
  EXPECT_GT(compact_split_layers, 20);
}

// The compact form stores one code and a cluster id per weight (five ids to a byte): a
// split artifact under half the size of the branches, with the same values.
// The default's per-channel scales at <= 4 bits are float16 values times one power of two
// per layer: the compact form stores them in 16 bits (plus the layer's multiplier) and
// decodes them exactly, here on a layer whose weights span 2^50 (a channel of tiny weights,
// a channel reaching 3e6) and every ONNX Runtime input agrees with the branches form.
TEST_F(EngineTest, CompactStoresFloat16ScalesThatDecodeLikeTheBranches) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 64});
  std::vector<float> w = testing::TestWeights(64 * 32, 3);
  for (int k = 0; k < 64; ++k) {
    w[k * 32 + 5] *= 1e-9f;    // column 5: tiny weights
    w[k * 32 + 9] *= 3e7f;     // column 9: weights up to ~3e6
  }
  g.Initializer("w", {64, 32}, w);
  g.Node("MatMul", {"x", "w"}, {"y"}, "fc");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("wide.onnx")).ok());
  auto scale_type_of = [&](const std::string& path) {
    auto loaded = LoadedModel::FromFile(path);
    EXPECT_TRUE(loaded.ok());
    std::map<std::string, int> types;
    for (const auto& t : (*loaded)->proto().graph().initializer()) {
      if (absl::EndsWith(t.name(), ".sq.scales") || absl::EndsWith(t.name(), ".sq.scale_multiplier")) {
        types[t.name().substr(t.name().rfind('.') + 1)] = t.data_type();
      }
    }
    return types;
  };
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.target = Target::kPortable;
  auto half = Quantize(Path("wide.onnx"), Path("half.onnx"), o);
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(half->layers[0].form, "compact");
  EXPECT_EQ(scale_type_of(Path("half.onnx")),
            (std::map<std::string, int>{{"scales", onnx::TensorProto::FLOAT16},
                                        {"scale_multiplier", onnx::TensorProto::FLOAT}}));
  o.target = Target::kQdq;  // the same values, float scales in DequantizeLinear
  ASSERT_TRUE(Quantize(Path("wide.onnx"), Path("half-branches.onnx"), o).ok());
  EXPECT_LE(Compare(Path("half-branches.onnx"), Path("half.onnx"), 7, false), kQdqVsFakeRelTolerance);

  o.target = Target::kPortable;
  o.scale_type = ScaleType::kFloat32;
  auto full = Quantize(Path("wide.onnx"), Path("float.onnx"), o);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(scale_type_of(Path("float.onnx")),
            (std::map<std::string, int>{{"scales", onnx::TensorProto::FLOAT}}));
  // 32 channels x 3 branches: 2 bytes a scale saved, 4 spent on the multiplier.
  EXPECT_EQ(full->layers[0].bytes_after - half->layers[0].bytes_after, 32 * 3 * 2 - 4);
  EXPECT_NEAR(half->layers[0].sqnr_split_db, full->layers[0].sqnr_split_db, 0.05);
  // 8 bits and per-tensor scales stay float32 under the default.
  o.scale_type = ScaleType::kAuto;
  o.bits = 8;
  ASSERT_TRUE(Quantize(Path("wide.onnx"), Path("eight.onnx"), o).ok());
  EXPECT_EQ(scale_type_of(Path("eight.onnx")),
            (std::map<std::string, int>{{"scales", onnx::TensorProto::FLOAT}}));
  // float16 asked for everywhere: 8 bits too, and the forms still agree.
  o.scale_type = ScaleType::kFloat16;
  ASSERT_TRUE(Quantize(Path("wide.onnx"), Path("eight-half.onnx"), o).ok());
  EXPECT_EQ(scale_type_of(Path("eight-half.onnx")).at("scales"), onnx::TensorProto::FLOAT16);
  o.target = Target::kQdq;
  ASSERT_TRUE(Quantize(Path("wide.onnx"), Path("eight-half-branches.onnx"), o).ok());
  EXPECT_LE(Compare(Path("eight-half-branches.onnx"), Path("eight-half.onnx"), 7, false),
            kQdqVsFakeRelTolerance);
}

TEST_F(EngineTest, CompactSplitIsAboutBitsPlusOnePointSix) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 256});
  g.Initializer("w", {256, 256}, testing::TestWeights(256 * 256, 5));
  g.Initializer("w2", {256, 256}, testing::TestWeights(256 * 256, 6));
  g.Node("MatMul", {"x", "w"}, {"h"}, "fc");
  auto* gemm = g.Node("Gemm", {"h", "w2"}, {"y"}, "fc2");
  testing::AttrInt(gemm, "transB", 1);
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("big.onnx")).ok());
  QuantizeOptions o;
  o.target = Target::kPortable;
  auto r = Quantize(Path("big.onnx"), Path("compact.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->layers_split, 2);
  EXPECT_GT(r->quantized_bits_per_weight, 5.6);
  EXPECT_LT(r->quantized_bits_per_weight, 6.2);  // 4 + 1.6 + parameters (0.47 here)
  o.target = Target::kQdq;
  auto b = Quantize(Path("big.onnx"), Path("branches.onnx"), o);
  ASSERT_TRUE(b.ok());
  EXPECT_GT(b->quantized_bits_per_weight, 12.0);
  EXPECT_LE(Compare(Path("branches.onnx"), Path("compact.onnx"), 7, false), kQdqVsFakeRelTolerance);
  // ort-cpu, form branches: the MatMul as three MatMulNBits branches, the Gemm compact.
  o.target = Target::kOrtCpu;
  o.form = SplitForm::kBranches;
  o.ort_accuracy_level = 0;
  o.nbits_min_elements = 256 * 256;  // the 256x256 MatMul runs in MatMulNBits
  auto c = Quantize(Path("big.onnx"), Path("ort.onnx"), o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->layers[0].form, "matmulnbits");
  EXPECT_EQ(c->layers[1].form, "compact");
  EXPECT_LE(Compare(Path("compact.onnx"), Path("ort.onnx")), 1e-5);
  auto loaded = LoadedModel::FromFile(Path("ort.onnx"));
  ASSERT_TRUE(loaded.ok());
  int nbits = 0;
  for (const auto& n : (*loaded)->proto().graph().node()) nbits += n.op_type() == "MatMulNBits";
  EXPECT_EQ(nbits, 3);
  // ort-cpu's default for a split 4-bit MatMul: outer8, two kernels (middle at 4 bits,
  // outer clusters at 8) whose weight error is lower than the three branches'.
  o.form = SplitForm::kAuto;
  auto d = Quantize(Path("big.onnx"), Path("ort-outer8.onnx"), o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->layers[0].form, "matmulnbits-outer8");
  EXPECT_GT(d->layers[0].sqnr_split_db, c->layers[0].sqnr_split_db);
  EXPECT_EQ(d->layers[1].sqnr_split_db, c->layers[1].sqnr_split_db);  // the Gemm: compact
  auto outer8 = LoadedModel::FromFile(Path("ort-outer8.onnx"));
  ASSERT_TRUE(outer8.ok());
  std::vector<int64_t> kernel_bits;
  for (const auto& n : (*outer8)->proto().graph().node()) {
    if (n.op_type() != "MatMulNBits") continue;
    for (const auto& a : n.attribute()) {
      if (a.name() == "bits") kernel_bits.push_back(a.i());
    }
  }
  EXPECT_EQ(kernel_bits, (std::vector<int64_t>{4, 8}));
  // In ORT (float compute), closer to the FP32 model than the three branches.
  const double err_outer8 = Compare(Path("big.onnx"), Path("ort-outer8.onnx"));
  const double err_branches = Compare(Path("big.onnx"), Path("ort.onnx"));
  EXPECT_LT(err_outer8, err_branches * 1.05);
  EXPECT_LT(err_outer8, 0.05);
  // By default a MatMul weight under 2^20 elements (4 MiB of FP32, cache-resident) is
  // decoded at load: ORT's FP32 GEMM outruns the low-bit kernels there.
  QuantizeOptions dflt;
  auto e = Quantize(Path("big.onnx"), Path("ort-small.onnx"), dflt);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->layers[0].form, "compact");
  // --form compact decodes the MatMul at load too.
  o.form = SplitForm::kCompact;
  auto cc = Quantize(Path("big.onnx"), Path("ort-compact.onnx"), o);
  ASSERT_TRUE(cc.ok()) << cc.status();
  EXPECT_EQ(cc->layers[0].form, "compact");
  // Same input and options, same bytes.
  auto again = Quantize(Path("big.onnx"), Path("ort-compact2.onnx"), o);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->output_sha256, cc->output_sha256);
}

TEST_F(EngineTest, PackedInt4IsSmallerThanTheFloatModel) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 256});
  g.Initializer("w", {256, 256}, testing::TestWeights(256 * 256, 5));
  g.Node("MatMul", {"x", "w"}, {"y"}, "fc");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("big.onnx")).ok());
  QuantizeOptions o;  // 4-bit split, channel
  o.target = Target::kQdq;
  auto r = Quantize(Path("big.onnx"), Path("q.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->output_opset, 21);
  // Three packed 4-bit branches: 3 * 0.5 byte per weight vs 4 bytes.
  EXPECT_GT(r->compression_ratio, 2.4);
  EXPECT_TRUE(testing::LoadInOrt(Path("q.onnx")).ok());
  QuantizeOptions plain = o;
  plain.split = SplitMode::kOff;
  auto p = Quantize(Path("big.onnx"), Path("p.onnx"), plain);
  ASSERT_TRUE(p.ok());
  EXPECT_GT(p->compression_ratio, 7.0);
  // Stored bits per weight: three packed 4-bit branches plus per-channel scales and zero
  // points, against one; the artifact figure counts every byte over every weight.
  EXPECT_GT(r->quantized_bits_per_weight, 12.0);
  EXPECT_LT(r->quantized_bits_per_weight, 13.0);
  EXPECT_GT(p->quantized_bits_per_weight, 4.0);
  EXPECT_LT(p->quantized_bits_per_weight, 4.4);
  ASSERT_GT(p->model_weight_elements, 0);
  EXPECT_DOUBLE_EQ(p->artifact_bits_per_weight,
                   static_cast<double>(p->output_bytes) * 8 / p->model_weight_elements);
  for (const LayerReport& l : p->layers) {
    if (l.quantized) {
      EXPECT_NEAR(l.stored_bits_per_weight, p->quantized_bits_per_weight, 0.5);
    }
  }
  // SplitQuant beats plain linear on heavy-tailed weights.
  EXPECT_GT(r->mean_sqnr_split_db, p->mean_sqnr_plain_db + 3.0);
  // A plain layer rounds to nearest (balanced rounding is for split layers), as the split
  // run's plain comparison does: the same error.
  EXPECT_DOUBLE_EQ(p->mean_sqnr_plain_db, r->mean_sqnr_plain_db);
}

// --layer overrides and --split auto: the artifact loads and runs in ONNX Runtime, each
// layer's report carries the settings it got, and auto's choice follows its measurement.
TEST_F(EngineTest, LayerOverridesAndSplitAutoAreAppliedAndReported) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  for (OutputFormat format : {OutputFormat::kQdq, OutputFormat::kFake}) {
    QuantizeOptions o;
    o.min_weight_elements = 1;
    o.format = format;
    o.split = SplitMode::kAuto;
    o.layer_overrides = {*ParseLayerOverride("^conv$=bits:8,split:off"),
                         *ParseLayerOverride("depth=granularity:tensor,split:on")};
    auto r = Quantize(Path("conv.onnx"), Path("out.onnx"), o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->layers.size(), 3u);
    std::map<std::string, const LayerReport*> by_name;
    for (const LayerReport& l : r->layers) by_name[l.name] = &l;
    const LayerReport& first = *by_name.at("conv");
    EXPECT_EQ(first.bits, 8);
    EXPECT_FALSE(first.split);
    EXPECT_EQ(first.split_mode, "off");
    EXPECT_EQ(first.override_rule, "^conv$=bits:8,split:off");
    const LayerReport& dw = *by_name.at("depthwise");
    EXPECT_EQ(dw.bits, 4);
    EXPECT_EQ(dw.granularity, "tensor");
    EXPECT_EQ(dw.split_mode, "on");
    EXPECT_EQ(dw.override_rule, "depth=granularity:tensor,split:on");
    const LayerReport& up = *by_name.at("deconv");
    EXPECT_EQ(up.split_mode, "auto");
    EXPECT_TRUE(up.override_rule.empty());
    ASSERT_FALSE(up.split_decision.empty());
    // The choice follows the measurement: split iff the gain reaches the threshold.
    EXPECT_EQ(up.split, up.sqnr_split_db - up.sqnr_plain_db >= kAutoSplitMinGainDb)
        << up.split_decision;
    // The 8-bit layer costs more bits per weight than the 4-bit ones.
    EXPECT_GT(first.stored_bits_per_weight, 8.0);
    ASSERT_TRUE(testing::LoadInOrt(Path("out.onnx")).ok()) << testing::LoadInOrt(Path("out.onnx"));
    auto inputs = testing::MakeRandomInputs(Path("conv.onnx"), 3);
    ASSERT_TRUE(inputs.ok());
    auto want = testing::RunOrt(Path("conv.onnx"), *inputs);
    auto got = testing::RunOrt(Path("out.onnx"), *inputs);
    ASSERT_TRUE(want.ok() && got.ok());
    EXPECT_LT(testing::MaxRelativeError(*got, *want), 0.5);
    // The JSON report says the same.
    const std::string json = ReportToJson(*r);
    EXPECT_NE(json.find("\"override\": \"^conv$=bits:8,split:off\""), std::string::npos);
    EXPECT_NE(json.find("\"split_mode\": \"auto\""), std::string::npos);
  }
  // A bad override is refused before anything is written.
  QuantizeOptions bad;
  LayerOverride lo;
  lo.pattern = "(";
  bad.layer_overrides = {lo};
  auto r = Quantize(Path("conv.onnx"), Path("bad.onnx"), bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(Path("bad.onnx")));
}

// IR 3 models list every initializer among the graph inputs. They are weights by default:
// quantized, dropped from the inputs (IR raised to 4), named in the report; the flag keeps
// the old refusal for users who feed weights at run time.
TEST_F(EngineTest, InitializersListedAsGraphInputsAreWeights) {
  onnx::ModelProto m = MlpModel(9);
  m.set_ir_version(3);
  auto* g = m.mutable_graph();
  for (const char* name : {"w1", "w2", "c2"}) {
    auto* in = g->add_input();
    in->set_name(name);
    in->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  }
  ASSERT_TRUE(testing::SaveModel(m, Path("ir3.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  for (OutputFormat format : {OutputFormat::kQdq, OutputFormat::kSplit}) {
    o.format = format;
    auto r = Quantize(Path("ir3.onnx"), Path("ir3.q.onnx"), o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->layers_quantized + (format == OutputFormat::kSplit ? 2 : 0), 2);
    EXPECT_EQ(r->initializer_inputs_promoted, (std::vector<std::string>{"w1", "w2", "c2"}));
    auto out = LoadedModel::FromFile(Path("ir3.q.onnx"));
    ASSERT_TRUE(out.ok());
    EXPECT_GE((*out)->proto().ir_version(), 4);
    ASSERT_EQ((*out)->proto().graph().input_size(), 1);
    EXPECT_EQ((*out)->proto().graph().input(0).name(), "x");
    ASSERT_TRUE(testing::LoadInOrt(Path("ir3.q.onnx")).ok());
    auto inputs = testing::MakeRandomInputs(Path("ir3.q.onnx"), 5);
    ASSERT_TRUE(inputs.ok());
    ASSERT_TRUE(testing::SaveModel(MlpModel(9), Path("ref.onnx")).ok());
    auto want = testing::RunOrt(Path("ref.onnx"), *inputs);
    auto got = testing::RunOrt(Path("ir3.q.onnx"), *inputs);
    ASSERT_TRUE(want.ok() && got.ok());
    EXPECT_LT(testing::MaxRelativeError(*got, *want), format == OutputFormat::kSplit ? 1e-5 : 0.5);
  }
  o.initializer_inputs_are_weights = false;
  auto refused = Quantize(Path("ir3.onnx"), Path("ir3.k.onnx"), o);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("no quantizable layer"), std::string::npos);
}

TEST_F(EngineTest, PackedInt2OnlyOnRequestOfOpset25) {
  ASSERT_TRUE(testing::SaveModel(MlpModel(), Path("mlp.onnx")).ok());
  QuantizeOptions o;
  o.target = Target::kQdq;
  o.bits = 2;
  o.min_weight_elements = 1;
  auto container = Quantize(Path("mlp.onnx"), Path("c.onnx"), o);
  o.target_opset = 25;
  auto packed = Quantize(Path("mlp.onnx"), Path("p.onnx"), o);
  o.format = OutputFormat::kFake;
  o.target_opset = 0;
  auto fake = Quantize(Path("mlp.onnx"), Path("f.onnx"), o);
  ASSERT_TRUE(container.ok() && packed.ok() && fake.ok()) << packed.status();
  EXPECT_EQ(container->output_opset, 17);  // the model's own; containers need only 13
  EXPECT_EQ(packed->output_opset, 25);
  EXPECT_LT(packed->output_bytes, container->output_bytes);
  auto loaded = LoadedModel::FromFile(Path("p.onnx"));
  ASSERT_TRUE(loaded.ok());
  int uint2 = 0;
  for (const auto& t : (*loaded)->proto().graph().initializer()) uint2 += t.data_type() == 25;
  EXPECT_EQ(uint2, 12);  // codes + zero points, 3 branches x 2 layers
  // Same values as our dequantized reference (ORT's fused path is avoided: see README).
  EXPECT_LE(Compare(Path("f.onnx"), Path("p.onnx"), 7, false), kQdqVsFakeRelTolerance);
  EXPECT_LE(Compare(Path("f.onnx"), Path("c.onnx"), 7, false), kQdqVsFakeRelTolerance);
}

TEST_F(EngineTest, ZeroIsExactInEveryBranch) {
  ASSERT_TRUE(testing::SaveModel(MlpModel(), Path("mlp.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  for (int bits : {2, 4, 8}) {
    for (bool symmetric : {false, true}) {
      // The quantization-aware cuts depend on the bits and the spec: the FP32 split made
      // for the same options is the reference.
      o.bits = bits;
      o.symmetric = symmetric;
      o.format = OutputFormat::kSplit;
      ASSERT_TRUE(Quantize(Path("mlp.onnx"), Path("split.onnx"), o).ok());
      o.format = OutputFormat::kFake;
      ASSERT_TRUE(Quantize(Path("mlp.onnx"), Path("fake.onnx"), o).ok());
      auto split = LoadedModel::FromFile(Path("split.onnx"));
      auto fake = LoadedModel::FromFile(Path("fake.onnx"));
      ASSERT_TRUE(split.ok() && fake.ok());
      int checked = 0;
      for (const auto& st : (*split)->proto().graph().initializer()) {
        if (st.name().find(".split") == std::string::npos) continue;
        std::string fake_name = st.name();
        fake_name.replace(fake_name.find(".split"), 6, ".fake");
        for (const auto& ft : (*fake)->proto().graph().initializer()) {
          if (ft.name() != fake_name) continue;
          auto a = ReadFloatTensor(**split, st);
          auto b = ReadFloatTensor(**fake, ft);
          ASSERT_TRUE(a.ok() && b.ok());
          for (int64_t i = 0; i < a->size; ++i) {
            if (a->data[i] == 0.0f) {
              ASSERT_EQ(b->data[i], 0.0f) << ft.name() << "[" << i << "] bits " << bits;
            }
          }
          ++checked;
        }
      }
      EXPECT_EQ(checked, 6);  // 3 branches x 2 layers
    }
  }
}

// Inputs of the If model below: x[2, 16] and the branch condition.
std::vector<OrtTensor> SubgraphInputs(bool cond) {
  std::vector<OrtTensor> in(2);
  in[0].name = "x";
  in[0].shape = {2, 16};
  in[0].f = testing::TestWeights(32, 99, 1.0f);
  in[1].name = "cond";
  in[1].elem_type = onnx::TensorProto::BOOL;
  in[1].i = {cond ? 1 : 0};
  return in;
}

TEST_F(EngineTest, ConstantNodesSubgraphsAndSharedWeights) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 16});
  g.Input("cond", {}, onnx::TensorProto::BOOL);
  g.Constant("wc", {16, 16}, testing::TestWeights(256, 21));       // Constant node weight
  g.Initializer("shared", {16, 16}, testing::TestWeights(256, 22));  // used 3 times
  g.Initializer("outer", {16, 8}, testing::TestWeights(128, 23));   // used inside If
  g.Node("MatMul", {"x", "wc"}, {"a"}, "const_mm");
  g.Node("MatMul", {"a", "shared"}, {"b"}, "shared_mm1");
  g.Node("MatMul", {"b", "shared"}, {"c"}, "shared_mm2");
  onnx::NodeProto* iff = g.Node("If", {"cond"}, {"y"}, "branch");
  GraphBuilder then_g(testing::AttrGraph(iff, "then_branch"));
  then_g.Node("MatMul", {"c", "outer"}, {"t"}, "then_mm");
  then_g.Output("t");
  GraphBuilder else_g(testing::AttrGraph(iff, "else_branch"));
  else_g.Node("MatMul", {"c", "shared"}, {"e0"}, "else_mm");
  else_g.Node("MatMul", {"e0", "outer"}, {"e"}, "else_mm2");
  else_g.Output("e");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("sub.onnx")).ok());

  for (OutputFormat f : {OutputFormat::kSplit, OutputFormat::kQdq}) {
    for (SplitForm form : {SplitForm::kBranches, SplitForm::kFolded}) {
      QuantizeOptions o;
      o.format = f;
      o.form = form;
      o.target = Target::kQdq;  // the forms of the DequantizeLinear family
      o.bits = 8;
      o.min_weight_elements = 1;
      std::string out = Path(absl::StrCat("sub-", ToString(f), ToString(form), ".onnx"));
      auto r = Quantize(Path("sub.onnx"), out, o);
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->layers.size(), 3u);  // wc, shared, outer: each handled once
      EXPECT_EQ(r->layers[1].shared_by, 3);
      EXPECT_EQ(r->layers[2].graph, "main/branch.then_branch");
      for (bool cond : {true, false}) {
        const std::vector<OrtTensor> in = SubgraphInputs(cond);
        auto a = testing::RunOrt(Path("sub.onnx"), in);
        auto b = testing::RunOrt(out, in);
        ASSERT_TRUE(a.ok()) << a.status();
        ASSERT_TRUE(b.ok()) << b.status();
        double tol = f == OutputFormat::kSplit ? kSplitRelTolerance : 0.1;
        EXPECT_LE(testing::MaxRelativeError(*b, *a), tol) << ToString(f) << " " << ToString(form);
      }
      // A shared weight is stored once: one set of branch tensors for "shared".
      auto loaded = LoadedModel::FromFile(out);
      ASSERT_TRUE(loaded.ok());
      int shared_tensors = 0;
      for (const auto& t : (*loaded)->proto().graph().initializer()) {
        shared_tensors += t.name().rfind("shared.sq", 0) == 0;
      }
      EXPECT_EQ(shared_tensors, f == OutputFormat::kSplit ? 3 : 9);
    }
  }
  // Runtime targets: decode chains in the graph that owns the weight, MatMulNBits inside
  // the If branches, a shared weight stored once; same values as the fake-quant model.
  QuantizeOptions fo;
  fo.format = OutputFormat::kFake;
  fo.form = SplitForm::kFolded;
  fo.min_weight_elements = 1;
  ASSERT_TRUE(Quantize(Path("sub.onnx"), Path("sub-fake4.onnx"), fo).ok());
  for (SplitForm form : {SplitForm::kBranches, SplitForm::kCompact}) {
    QuantizeOptions o;
    o.target = Target::kOrtCpu;
    o.form = form;
    o.ort_accuracy_level = 0;
    o.min_weight_elements = 1;
    o.nbits_min_elements = 0;
    const std::string out = Path(absl::StrCat("sub-ort-", ToString(form), ".onnx"));
    auto r = Quantize(Path("sub.onnx"), out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->layers.size(), 3u);
    for (const LayerReport& l : r->layers) {
      EXPECT_EQ(l.form, form == SplitForm::kCompact ? "compact" : "matmulnbits") << l.name;
    }
    for (bool cond : {true, false}) {
      const std::vector<OrtTensor> in = SubgraphInputs(cond);
      auto a = testing::RunOrt(Path("sub-fake4.onnx"), in);
      auto b = testing::RunOrt(out, in);
      ASSERT_TRUE(a.ok()) << a.status();
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_LE(testing::MaxRelativeError(*b, *a), 1e-5) << ToString(form) << " cond " << cond;
    }
  }
}

TEST_F(EngineTest, ExternalDataInAndOut) {
  ASSERT_TRUE(testing::SaveModelWithExternalData(MlpModel(), Path("ext.onnx"), "ext.bin").ok());
  QuantizeOptions o;
  o.format = OutputFormat::kSplit;
  o.min_weight_elements = 1;
  o.external_data = true;
  auto r = Quantize(Path("ext.onnx"), Path("out.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->external_data_path, "out.onnx.data");
  EXPECT_TRUE(Exists(Path("out.onnx.data")));
  EXPECT_LE(Compare(Path("ext.onnx"), Path("out.onnx")), kSplitRelTolerance);
  // External input, inline output.
  o.external_data = false;
  o.format = OutputFormat::kQdq;
  auto r2 = Quantize(Path("ext.onnx"), Path("inline.onnx"), o);
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_TRUE(r2->external_data_path.empty());
  EXPECT_TRUE(testing::LoadInOrt(Path("inline.onnx")).ok());
}

TEST_F(EngineTest, SameInputAndOptionsGiveByteIdenticalOutputWhateverTheThreads) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.threads = 1;
  auto a = Quantize(Path("conv.onnx"), Path("a.onnx"), o);
  o.threads = 4;
  auto b = Quantize(Path("conv.onnx"), Path("b.onnx"), o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->output_sha256, b->output_sha256);
  auto fa = ReadFileToString(Path("a.onnx"));
  auto fb = ReadFileToString(Path("b.onnx"));
  ASSERT_TRUE(fa.ok() && fb.ok());
  EXPECT_TRUE(*fa == *fb);
  EXPECT_EQ(Sha256Hex(fa->data(), fa->size()), a->output_sha256);
}

TEST_F(EngineTest, PreservesWhatItDoesNotTouch) {
  onnx::ModelProto m = MlpModel();
  m.set_doc_string("a model doc");
  m.set_producer_name("producer-x");
  auto* meta = m.add_metadata_props();
  meta->set_key("author");
  meta->set_value("someone");
  m.mutable_graph()->mutable_node(1)->set_doc_string("relu doc");
  auto* vi = m.mutable_graph()->add_value_info();
  vi->set_name("r");
  vi->mutable_type()->mutable_tensor_type()->set_elem_type(1);
  auto* custom = m.add_opset_import();
  custom->set_domain("com.example");
  custom->set_version(3);
  ASSERT_TRUE(testing::SaveModel(m, Path("m.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.format = OutputFormat::kFake;
  ASSERT_TRUE(Quantize(Path("m.onnx"), Path("o.onnx"), o).ok());
  auto out = LoadedModel::FromFile(Path("o.onnx"));
  ASSERT_TRUE(out.ok());
  const auto& p = (*out)->proto();
  EXPECT_EQ(p.doc_string(), "a model doc");
  EXPECT_EQ(p.producer_name(), "producer-x");
  ASSERT_EQ(p.metadata_props_size(), 1);
  EXPECT_EQ(p.metadata_props(0).value(), "someone");
  EXPECT_EQ(p.graph().value_info_size(), 1);
  bool found_doc = false, found_domain = false;
  for (const auto& n : p.graph().node()) found_doc |= n.doc_string() == "relu doc";
  for (const auto& o2 : p.opset_import()) found_domain |= o2.domain() == "com.example";
  EXPECT_TRUE(found_doc);
  EXPECT_TRUE(found_domain);
}

TEST_F(EngineTest, ExclusionsAndMinimumSize) {
  ASSERT_TRUE(testing::SaveModel(MlpModel(), Path("mlp.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.exclude_name_patterns = {"^fc2$"};
  auto r = Quantize(Path("mlp.onnx"), Path("o.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->layers_quantized, 1);
  EXPECT_THAT(r->layers[1].skip_reason, HasSubstr("excluded"));
  o.exclude_name_patterns.clear();
  o.exclude_op_types = {"MatMul"};
  r = Quantize(Path("mlp.onnx"), Path("o.onnx"), o);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->layers[0].quantized);
  o.exclude_op_types.clear();
  o.min_weight_elements = 500;  // w1 has 768 elements, w2 384
  r = Quantize(Path("mlp.onnx"), Path("o.onnx"), o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->layers[0].quantized);
  EXPECT_FALSE(r->layers[1].quantized);
}

TEST_F(EngineTest, DegenerateWeightsAreQuantizedButNotSplit) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 8});
  g.Initializer("const_w", {8, 8}, std::vector<float>(64, 0.5f));
  std::vector<float> two(64);
  for (int i = 0; i < 64; ++i) two[i] = i % 2 ? 1.0f : -1.0f;
  g.Initializer("two_w", {8, 8}, two);
  g.Node("MatMul", {"x", "const_w"}, {"a"}, "const_mm");
  g.Node("MatMul", {"a", "two_w"}, {"y"}, "two_mm");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("d.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  auto r = Quantize(Path("d.onnx"), Path("o.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->layers[0].split);
  EXPECT_THAT(r->layers[0].not_split_reason, HasSubstr("distinct"));
  EXPECT_FALSE(r->layers[1].split);
  // Two-valued and constant weights are exact at any bit width with float32 scales; a
  // float16 scale (the default's per-channel one) is the float one rounded up by at most
  // 2^-10, which moves the range's end by at most that much.
  o.format = OutputFormat::kFake;
  o.scale_type = ScaleType::kFloat32;
  ASSERT_TRUE(Quantize(Path("d.onnx"), Path("f.onnx"), o).ok());
  EXPECT_LE(Compare(Path("d.onnx"), Path("f.onnx")), 1e-6);
  o.scale_type = ScaleType::kAuto;
  ASSERT_TRUE(Quantize(Path("d.onnx"), Path("f.onnx"), o).ok());
  const double half_error = Compare(Path("d.onnx"), Path("f.onnx"));
  EXPECT_GT(half_error, 0.0);
  EXPECT_LE(half_error, 2.0 / 1024);
}

TEST_F(EngineTest, BadInputGivesInvalidArgumentNamingTheProblem) {
  QuantizeOptions o;
  {
    std::ofstream(Path("junk.onnx")) << "this is not a model";
    auto r = Quantize(Path("junk.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("not a valid ONNX model"));
  }
  {
    ASSERT_TRUE(testing::SaveModel(MlpModel(), Path("mlp.onnx")).ok());
    auto bytes = ReadFileToString(Path("mlp.onnx"));
    std::ofstream(Path("trunc.onnx"), std::ios::binary) << bytes->substr(0, bytes->size() / 2);
    auto r = Quantize(Path("trunc.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  }
  {
    onnx::ModelProto m = MlpModel();
    ASSERT_TRUE(testing::SaveModelWithExternalData(m, Path("ext.onnx"), "ext.bin").ok());
    auto loaded = LoadedModel::FromFile(Path("ext.onnx"));
    ASSERT_TRUE(loaded.ok());
    onnx::ModelProto evil = (*loaded)->proto();
    for (auto& t : *evil.mutable_graph()->mutable_initializer()) {
      for (auto& e : *t.mutable_external_data()) {
        if (e.key() == "location") e.set_value("../../etc/passwd");
      }
    }
    ASSERT_TRUE(testing::SaveModel(evil, Path("evil.onnx")).ok());
    auto r = Quantize(Path("evil.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("escapes the model's directory"));
    for (auto& t : *evil.mutable_graph()->mutable_initializer()) {
      for (auto& e : *t.mutable_external_data()) {
        if (e.key() == "location") e.set_value("/etc/passwd");
      }
    }
    ASSERT_TRUE(testing::SaveModel(evil, Path("evil2.onnx")).ok());
    r = Quantize(Path("evil2.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    ASSERT_EQ(symlink("/etc", Path("link").c_str()), 0);
    for (auto& t : *evil.mutable_graph()->mutable_initializer()) {
      for (auto& e : *t.mutable_external_data()) {
        if (e.key() == "location") e.set_value("link/passwd");
      }
    }
    ASSERT_TRUE(testing::SaveModel(evil, Path("evil3.onnx")).ok());
    r = Quantize(Path("evil3.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("outside the model's directory"));
  }
  {
    QuantizeOptions bad;
    bad.bits = 9;
    auto r = Quantize(Path("mlp.onnx"), Path("o.onnx"), bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("bits"));
  }
  {
    onnx::ModelProto m = testing::NewModel(17);
    GraphBuilder g(m.mutable_graph());
    g.Input("x", {-1, 8});
    g.Node("Relu", {"x"}, {"y"});
    g.Output("y");
    ASSERT_TRUE(testing::SaveModel(m, Path("relu.onnx")).ok());
    auto r = Quantize(Path("relu.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("no quantizable layer"));
  }
  {
    auto r = Quantize(Path("missing.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  }
  {
    // The input under another spelling is still the input: refused, left as it was.
    const std::string before = ReadAll(Path("mlp.onnx"));
    auto r = Quantize(Path("mlp.onnx"), dir_ + "/./mlp.onnx", o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("refusing to overwrite the input"));
    EXPECT_EQ(ReadAll(Path("mlp.onnx")), before);
  }
  {
    // A FIFO is refused at once (opening it must not wait for a writer).
    ASSERT_EQ(mkfifo(Path("fifo.onnx").c_str(), 0600), 0);
    auto r = Quantize(Path("fifo.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("not a regular file"));
  }
  EXPECT_FALSE(Exists(Path("o.onnx")));
}

TEST_F(EngineTest, FullDiskIsResourceExhaustedAndLeavesNothing) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 256});
  g.Initializer("w", {256, 256}, testing::TestWeights(256 * 256, 5));
  g.Node("MatMul", {"x", "w"}, {"y"}, "fc");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("big.onnx")).ok());
  // A file-size limit makes writes past 16 KiB fail (EFBIG), as a full disk would.
  struct rlimit old_limit;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit small = old_limit;
  small.rlim_cur = 16 << 10;
  auto old_handler = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  for (bool external : {false, true}) {
    QuantizeOptions o;
    o.format = OutputFormat::kFake;
    o.external_data = external;
    auto r = Quantize(Path("big.onnx"), Path("o.onnx"), o);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
    EXPECT_FALSE(Exists(Path("o.onnx")));
    EXPECT_FALSE(Exists(Path("o.onnx.data")));
  }
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
  signal(SIGXFSZ, old_handler);
  int leftovers = std::system(absl::StrCat("test -z \"$(ls -A ", dir_, " | grep tmp)\"").c_str());
  EXPECT_EQ(leftovers, 0);
}

TEST_F(EngineTest, TruncatedExternalDataIsInvalidArgument) {
  ASSERT_TRUE(testing::SaveModelWithExternalData(MlpModel(), Path("ext.onnx"), "ext.bin").ok());
  ASSERT_EQ(truncate(Path("ext.bin").c_str(), 100), 0);
  auto r = Quantize(Path("ext.onnx"), Path("o.onnx"), QuantizeOptions());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("truncated"));
  ASSERT_EQ(unlink(Path("ext.bin").c_str()), 0);
  r = Quantize(Path("ext.onnx"), Path("o.onnx"), QuantizeOptions());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(EngineTest, CancellationLeavesNothingBehind) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.external_data = true;
  RunHooks hooks;
  int calls = 0;
  hooks.is_cancelled = [&] { return ++calls > 2; };
  auto r = QuantizeModelFile(Path("conv.onnx"), Path("o.onnx"), o, hooks);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(Exists(Path("o.onnx")));
  EXPECT_FALSE(Exists(Path("o.onnx.data")));
  // No temporary files either.
  auto listing = std::system(absl::StrCat("test -z \"$(ls -A ", dir_, " | grep tmp)\"").c_str());
  EXPECT_EQ(listing, 0);
}

TEST_F(EngineTest, ProgressReportsEveryLayer) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  RunHooks hooks;
  std::vector<std::string> stages;
  int last_layer = 0, count = 0;
  hooks.on_progress = [&](const Progress& p) {
    if (stages.empty() || stages.back() != p.stage) stages.push_back(p.stage);
    if (p.stage == "transform") {
      EXPECT_GE(p.layer_index, last_layer);
      last_layer = p.layer_index;
      count = p.layer_count;
    }
  };
  ASSERT_TRUE(QuantizeModelFile(Path("conv.onnx"), Path("o.onnx"), o, hooks).ok());
  EXPECT_EQ(count, 3);
  EXPECT_EQ(last_layer, 3);
  EXPECT_EQ(stages.front(), "load");
  EXPECT_EQ(stages.back(), "done");
}

TEST_F(EngineTest, ReferenceKMeansReproducesThePaperAndNeverBeatsTheExactOne) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  auto exact = Quantize(Path("conv.onnx"), Path("exact.onnx"), o);
  o.reference_kmeans = true;
  auto ref = Quantize(Path("conv.onnx"), Path("ref.onnx"), o);
  auto again = Quantize(Path("conv.onnx"), Path("ref2.onnx"), o);
  ASSERT_TRUE(exact.ok() && ref.ok() && again.ok());
  EXPECT_EQ(ref->output_sha256, again->output_sha256);  // fixed seed: reproducible
  EXPECT_TRUE(testing::LoadInOrt(Path("ref.onnx")).ok());
  EXPECT_EQ(ref->layers_split, 3);
}

TEST_F(EngineTest, BlockedConvWithShortReductionAxisFallsBackToPerChannel) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.granularity = Granularity::kBlock;
  o.block_size = 16;  // conv: C/g = 4, depthwise: 1, deconv: 8 -- all below 16
  auto r = Quantize(Path("conv.onnx"), Path("b.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const LayerReport& l : r->layers) {
    EXPECT_THAT(l.note, HasSubstr("per-channel scales")) << l.name;
    EXPECT_LT(l.bytes_after, l.bytes_before) << l.name;
  }
  o.format = OutputFormat::kFake;
  ASSERT_TRUE(Quantize(Path("conv.onnx"), Path("f.onnx"), o).ok());
  EXPECT_LE(Compare(Path("f.onnx"), Path("b.onnx"), 7, false), kQdqVsFakeRelTolerance);
}

// Balanced rounding is the default on channel-granularity MatMul/Gemm/Conv layers: the
// report says so per layer with the channels it moved, the artifact runs in ORT like its
// fake-quant twin; --rounding nearest and tensor granularity round to nearest.
TEST_F(EngineTest, BalancedRoundingIsTheDefaultAndReported) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.target = Target::kQdq;
  auto b = Quantize(Path("conv.onnx"), Path("b.onnx"), o);
  ASSERT_TRUE(b.ok()) << b.status();
  int64_t moved = 0;
  for (const LayerReport& l : b->layers) {
    if (!l.quantized) continue;
    EXPECT_EQ(l.rounding, "balanced") << l.name;
    moved += l.offset_channels;
  }
  EXPECT_GT(moved, 0);
  EXPECT_NE(ReportToJson(*b).find("\"rounding\": \"balanced\""), std::string::npos);
  o.format = OutputFormat::kFake;
  ASSERT_TRUE(Quantize(Path("conv.onnx"), Path("bf.onnx"), o).ok());
  EXPECT_LE(Compare(Path("bf.onnx"), Path("b.onnx"), 7, false), kQdqVsFakeRelTolerance);
  o.format = OutputFormat::kQdq;
  o.rounding = Rounding::kNearest;
  auto n = Quantize(Path("conv.onnx"), Path("n.onnx"), o);
  ASSERT_TRUE(n.ok());
  EXPECT_NE(n->output_sha256, b->output_sha256);
  for (const LayerReport& l : n->layers) {
    if (l.quantized) {
      EXPECT_EQ(l.rounding, "nearest") << l.name;
    }
    EXPECT_EQ(l.offset_channels, 0);
  }
  // Its scope: split convolutions at <= 4 bits under channel granularity.
  o.rounding = Rounding::kBalanced;
  for (int variant = 0; variant < 3; ++variant) {
    QuantizeOptions v = o;
    if (variant == 0) v.granularity = Granularity::kTensor;
    if (variant == 1) v.split = SplitMode::kOff;
    if (variant == 2) v.bits = 8;
    auto t = Quantize(Path("conv.onnx"), Path(absl::StrCat("t", variant, ".onnx")), v);
    ASSERT_TRUE(t.ok());
    for (const LayerReport& l : t->layers) {
      if (l.quantized) {
        EXPECT_EQ(l.rounding, "nearest") << l.name << " variant " << variant;
      }
    }
  }
}

TEST_F(EngineTest, QuantAwareBoundariesRaiseConvSqnrAndStillRunInOrt) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.rounding = Rounding::kNearest;  // the cut criteria alone
  o.quant_aware_boundaries = false;
  auto kmeans = Quantize(Path("conv.onnx"), Path("k.onnx"), o);
  o.quant_aware_boundaries = true;
  auto quant = Quantize(Path("conv.onnx"), Path("q.onnx"), o);
  o.format = OutputFormat::kFake;
  auto fake = Quantize(Path("conv.onnx"), Path("f.onnx"), o);
  ASSERT_TRUE(kmeans.ok() && quant.ok() && fake.ok());
  for (size_t i = 0; i < quant->layers.size(); ++i) {
    EXPECT_GE(quant->layers[i].sqnr_split_db, kmeans->layers[i].sqnr_split_db - 1e-9)
        << quant->layers[i].name;
  }
  EXPECT_LE(Compare(Path("f.onnx"), Path("q.onnx"), 7, false), kQdqVsFakeRelTolerance);
}

// inspect's size estimate follows the default target's per-layer choice: a MatMul of
// 2^20 weights in MatMulNBits (outer8), a small one compact.
// ids[N] (int64) -> Gather(emb[40, 32]) -> MatMul w[32, 24] -> y; tied: the logits are
// MatMul(h, Transpose(emb)) -> [N, 40] (the lm_head reads the embedding table).
onnx::ModelProto EmbeddingModel(bool tied) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("ids", {-1}, onnx::TensorProto::INT64);
  g.Initializer("emb", {40, 32}, testing::TestWeights(40 * 32, 41));
  g.Node("Gather", {"emb", "ids"}, {"h"}, "embed");
  if (tied) {
    auto* t = g.Node("Transpose", {"emb"}, {"emb_t"}, "lm_head_t");
    testing::AttrInts(t, "perm", {1, 0});
    g.Node("MatMul", {"h", "emb_t"}, {"y"}, "lm_head");
  } else {
    g.Initializer("w", {32, 24}, testing::TestWeights(32 * 24, 42));
    g.Node("MatMul", {"h", "w"}, {"y"}, "fc");
  }
  g.Output("y");
  return m;
}

bool HasInitializer(const std::string& path, const std::string& name) {
  auto loaded = LoadedModel::FromFile(path);
  EXPECT_TRUE(loaded.ok());
  for (const auto& t : (*loaded)->proto().graph().initializer()) {
    if (t.name() == name) return true;
  }
  return false;
}

// An embedding table is a layer: quantized per row and split in every target, and under
// ort-cpu run by com.microsoft.GatherBlockQuantized (2/4/8 bits native, 3 and 5-7 in the
// next container), computing what the fake-quant model computes; the FP32 table is gone.
TEST_F(EngineTest, EmbeddingTablesAreQuantizedInEveryTarget) {
  ASSERT_TRUE(testing::SaveModel(EmbeddingModel(false), Path("emb.onnx")).ok());
  int gbq_layers = 0;
  for (const QuantCase& c : {QuantCase{4, Granularity::kChannel, 0, false}, QuantCase{4, Granularity::kBlock, 16, true},
                        QuantCase{8, Granularity::kTensor, 0, true}, QuantCase{2, Granularity::kChannel, 0, false},
                        QuantCase{3, Granularity::kChannel, 0, true}, QuantCase{6, Granularity::kBlock, 16, false}}) {
    for (Target target : {Target::kOrtCpu, Target::kPortable, Target::kQdq}) {
      for (SplitMode split : {SplitMode::kOn, SplitMode::kOff}) {
        QuantizeOptions o;
        c.Apply(&o);
        o.split = split;
        o.ort_accuracy_level = 0;
        o.nbits_min_elements = 0;
        if (target == Target::kOrtCpu) o.form = SplitForm::kBranches;
        const std::string tag = absl::StrCat("emb-", c.bits, ToString(c.g), c.symmetric, ToString(target),
                                             ToString(split));
        o.target = target;
        auto q = Quantize(Path("emb.onnx"), Path(tag + "-q.onnx"), o);
        ASSERT_TRUE(q.ok()) << tag << ": " << q.status();
        o.format = OutputFormat::kFake;
        o.form = SplitForm::kFolded;
        auto f = Quantize(Path("emb.onnx"), Path(tag + "-fake.onnx"), o);
        ASSERT_TRUE(f.ok()) << tag << ": " << f.status();
        // qdq with ORT's optimizations: its DequantizeLinear+MatMul fusion computes the
        // MatMul in int8 (the Gather's values are unchanged); checked without them.
        EXPECT_LE(Compare(Path(tag + "-fake.onnx"), Path(tag + "-q.onnx")), target == Target::kQdq ? 2e-2 : 1e-5)
            << tag;
        EXPECT_LE(Compare(Path(tag + "-fake.onnx"), Path(tag + "-q.onnx"), 7, false), 1e-5) << tag;
        EXPECT_FALSE(HasInitializer(Path(tag + "-q.onnx"), "emb")) << tag;
        ASSERT_EQ(q->layers.size(), 2u);
        const LayerReport& l = q->layers[0];
        EXPECT_EQ(l.op_type, "Gather");
        EXPECT_TRUE(l.quantized) << tag;
        EXPECT_EQ(l.split, split == SplitMode::kOn) << tag;
        const std::string want = target == Target::kOrtCpu ? "gatherblockquantized"
                                 : target == Target::kQdq   ? "dq"
                                                            : "compact";
        EXPECT_EQ(l.form, want) << tag;
        gbq_layers += l.form == "gatherblockquantized";
      }
    }
  }
  EXPECT_EQ(gbq_layers, 12);
}

// outer8 (ort-cpu's default for a split table at <= 4 bits): two kernels, lower weight
// error than the branches; the table stays low-bit (about bits + 8 per weight).
TEST_F(EngineTest, EmbeddingTableOuter8IsTheDefaultAndLowersTheError) {
  ASSERT_TRUE(testing::SaveModel(EmbeddingModel(false), Path("emb.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  auto q = Quantize(Path("emb.onnx"), Path("emb-default.onnx"), o);
  ASSERT_TRUE(q.ok()) << q.status();
  o.form = SplitForm::kBranches;
  auto b = Quantize(Path("emb.onnx"), Path("emb-branches.onnx"), o);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(q->layers[0].form, "gatherblockquantized-outer8");
  EXPECT_LT(q->layers[0].mse_split, b->layers[0].mse_split);
  EXPECT_LE(q->layers[0].stored_bits_per_weight, 4 + 8 + 3.0);
  auto loaded = LoadedModel::FromFile(Path("emb-default.onnx"));
  ASSERT_TRUE(loaded.ok());
  int gbq = 0;
  for (const auto& n : (*loaded)->proto().graph().node()) gbq += n.op_type() == "GatherBlockQuantized";
  EXPECT_EQ(gbq, 2);
  // Runs in ORT, close to the FP32 model.
  EXPECT_LE(Compare(Path("emb.onnx"), Path("emb-default.onnx")), 0.05);
}

// A large MatMul or Gather layer under ort-cpu goes through the transform a band of
// channels at a time (columns of the MatMul weight, rows of the table; a 1 GB lm_head
// would otherwise buffer ~400 MB of codes): the artifact is byte for byte the whole
// layer's, in every kernel form, granularity and bit width that bands, with a last band
// narrower than the others, whatever the threads, and the report's figures are the whole
// layer's. 1024 values per channel: the whole layer's cut search samples them (300
// channels share the sample budget), a band of 40 alone would not.
TEST_F(EngineTest, LargeLayersInBandsGiveTheWholeLayersBytes) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("ids", {-1}, onnx::TensorProto::INT64);
  // Channels after the first band 64 times smaller, one of them 2^30 times: float16
  // scales share one exponent per layer, the whole layer's, under which that channel's
  // scales are float16 subnormals (under its band's own exponent they would not be).
  std::vector<float> emb = testing::TestWeights(300 * 1024, 51), w = testing::TestWeights(1024 * 300, 52);
  for (int c = 40; c < 300; ++c) {
    const float f = std::ldexp(1.0f, c == 100 ? -30 : -6);
    for (int i = 0; i < 1024; ++i) {
      emb[c * 1024 + i] *= f;
      w[i * 300 + c] *= f;
    }
  }
  g.Initializer("emb", {300, 1024}, emb);
  g.Initializer("w", {1024, 300}, w);
  g.Node("Gather", {"emb", "ids"}, {"h"}, "embed");
  g.Node("MatMul", {"h", "w"}, {"y"}, "lm_head");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("big.onnx")).ok());
  struct EnvGuard {
    ~EnvGuard() {
      unsetenv("SQ_BANDS_ABOVE_BYTES");
      unsetenv("SQ_BAND_BYTES");
    }
  } guard;
  // 1024 values per channel, 160 KiB a band: 40 channels, and 20 in the last.
  setenv("SQ_BAND_BYTES", "163840", 1);
  int cases = 0, banded = 0;
  for (const QuantCase& c : {QuantCase{4, Granularity::kChannel, 0, false}, QuantCase{4, Granularity::kBlock, 16, true},
                             QuantCase{2, Granularity::kChannel, 0, false}, QuantCase{8, Granularity::kChannel, 0, true},
                             QuantCase{3, Granularity::kChannel, 0, false}}) {
    for (SplitForm form : {SplitForm::kOuter8, SplitForm::kBranches}) {
      for (SplitMode split : {SplitMode::kOn, SplitMode::kOff}) {
        if (form == SplitForm::kOuter8 && (split == SplitMode::kOff || c.bits > 4)) continue;
        QuantizeOptions o;
        c.Apply(&o);
        o.target = Target::kOrtCpu;
        o.form = form;
        o.split = split;
        o.nbits_min_elements = 0;
        const std::string tag = absl::StrCat(c.bits, ToString(c.g), c.symmetric, ToString(form), ToString(split));
        // Whole on one thread; in bands on two (the last layer's bands then run side by side).
        setenv("SQ_BANDS_ABOVE_BYTES", "off", 1);
        o.threads = 1;
        auto whole = Quantize(Path("big.onnx"), Path(tag + "-whole.onnx"), o);
        ASSERT_TRUE(whole.ok()) << tag << ": " << whole.status();
        setenv("SQ_BANDS_ABOVE_BYTES", "0", 1);
        o.threads = 2;
        auto bands = Quantize(Path("big.onnx"), Path(tag + "-bands.onnx"), o);
        ASSERT_TRUE(bands.ok()) << tag << ": " << bands.status();
        const std::string a = ReadAll(Path(tag + "-whole.onnx")), b = ReadAll(Path(tag + "-bands.onnx"));
        ASSERT_FALSE(a.empty()) << tag;
        EXPECT_TRUE(a == b) << tag << ": the banded artifact differs";
        ASSERT_EQ(whole->layers.size(), 2u);
        ASSERT_EQ(bands->layers.size(), 2u);
        for (size_t i = 0; i < 2; ++i) {
          const LayerReport& x = whole->layers[i];
          const LayerReport& y = bands->layers[i];
          EXPECT_EQ(x.form, y.form) << tag;
          EXPECT_EQ(x.bands, 0) << tag;
          // In bands: the kernel forms (MatMulNBits: 2, 4 and 8 bits), unless a split
          // clusters the whole tensor at once (blocked granularity: k-means cuts).
          const bool kernel = absl::StartsWith(y.form, "matmulnbits") || absl::StartsWith(y.form, "gatherblockquantized");
          const bool tensor_cuts = c.g == Granularity::kBlock && split == SplitMode::kOn;
          EXPECT_EQ(y.bands, kernel && !tensor_cuts ? 8 : 0) << tag << " " << y.name;  // 7 of 40 channels, 1 of 20
          banded += y.bands > 0;
          EXPECT_EQ(x.split, y.split) << tag;
          EXPECT_EQ(x.scale_min, y.scale_min) << tag;
          EXPECT_EQ(x.scale_max, y.scale_max) << tag;
          for (int k = 0; k < 3; ++k) {
            EXPECT_EQ(x.clusters[k].count, y.clusters[k].count) << tag;
            EXPECT_EQ(x.clusters[k].min, y.clusters[k].min) << tag;
            EXPECT_EQ(x.clusters[k].max, y.clusters[k].max) << tag;
          }
          EXPECT_EQ(x.degenerate_channels, y.degenerate_channels) << tag;
          // Energies are summed in another order: equal to rounding.
          EXPECT_NEAR(x.mse_split, y.mse_split, 1e-9 * x.mse_split + 1e-30) << tag;
          EXPECT_NEAR(x.mse_plain, y.mse_plain, 1e-9 * x.mse_plain + 1e-30) << tag;
        }
        ++cases;
      }
    }
  }
  EXPECT_EQ(cases, 14);
  EXPECT_EQ(banded, 18);

  // A non-finite value in a later band: the whole layer's error, naming the element.
  w[250 * 300 + 123] = std::numeric_limits<float>::infinity();
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    if (t.name() == "w") t.set_raw_data(std::string(reinterpret_cast<const char*>(w.data()), w.size() * 4));
  }
  ASSERT_TRUE(testing::SaveModel(m, Path("inf.onnx")).ok());
  QuantizeOptions o;
  o.target = Target::kOrtCpu;
  o.min_weight_elements = 1;
  setenv("SQ_BANDS_ABOVE_BYTES", "off", 1);
  auto whole = Quantize(Path("inf.onnx"), Path("inf-whole.onnx"), o);
  setenv("SQ_BANDS_ABOVE_BYTES", "0", 1);
  auto bands = Quantize(Path("inf.onnx"), Path("inf-bands.onnx"), o);
  ASSERT_FALSE(bands.ok());
  EXPECT_EQ(bands.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bands.status().message(), HasSubstr("non-finite value at element 75123"));
  EXPECT_EQ(bands.status(), whole.status());
  EXPECT_FALSE(Exists(Path("inf-bands.onnx")));
}

// Tied embeddings: the table read by the Gather and (transposed) by the lm_head is one
// layer, quantized once and stored once; no FP32 copy is kept for the lm_head.
TEST_F(EngineTest, TiedEmbeddingIsQuantizedOnce) {
  ASSERT_TRUE(testing::SaveModel(EmbeddingModel(true), Path("tied.onnx")).ok());
  for (Target target : {Target::kOrtCpu, Target::kQdq, Target::kPortable}) {
    QuantizeOptions o;
    o.min_weight_elements = 1;
    o.target = target;
    const std::string tag = absl::StrCat("tied-", ToString(target));
    auto q = Quantize(Path("tied.onnx"), Path(tag + "-q.onnx"), o);
    ASSERT_TRUE(q.ok()) << tag << ": " << q.status();
    o.format = OutputFormat::kFake;
    o.form = SplitForm::kFolded;
    auto f = Quantize(Path("tied.onnx"), Path(tag + "-fake.onnx"), o);
    ASSERT_TRUE(f.ok()) << tag << ": " << f.status();
    ASSERT_EQ(q->layers.size(), 1u) << tag;
    EXPECT_EQ(q->layers[0].shared_by, 2) << tag;
    EXPECT_TRUE(q->layers[0].quantized && q->layers[0].split) << tag;
    EXPECT_EQ(q->layers[0].form, target == Target::kQdq ? "dq" : "compact") << tag;
    for (const std::string& w : q->warnings) EXPECT_THAT(w, ::testing::Not(HasSubstr("FP32 copy"))) << tag;
    EXPECT_FALSE(HasInitializer(Path(tag + "-q.onnx"), "emb")) << tag;
    EXPECT_LE(Compare(Path(tag + "-fake.onnx"), Path(tag + "-q.onnx"), 7, false), 1e-5) << tag;
    EXPECT_LT(q->layers[0].bytes_after * 2, q->layers[0].bytes_before) << tag;
  }
}

// --quantize-gather off keeps tables FP32; a table gathered along columns, or one a MatMul
// reads with another layout, is not a table layer and costs no other layer its quantization.
TEST_F(EngineTest, GatherTablesOffOrUnsupportedStayFloat) {
  ASSERT_TRUE(testing::SaveModel(EmbeddingModel(false), Path("emb.onnx")).ok());
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.quantize_gather = false;
  auto off = Quantize(Path("emb.onnx"), Path("emb-off.onnx"), o);
  ASSERT_TRUE(off.ok()) << off.status();
  ASSERT_EQ(off->layers.size(), 1u);
  EXPECT_EQ(off->layers[0].op_type, "MatMul");
  EXPECT_TRUE(HasInitializer(Path("emb-off.onnx"), "emb"));

  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("ids", {-1}, onnx::TensorProto::INT64);
  g.Input("x", {-1, 40});
  g.Initializer("cols", {40, 32}, testing::TestWeights(40 * 32, 43));
  auto* gather = g.Node("Gather", {"cols", "ids"}, {"h"}, "by_column");
  testing::AttrInt(gather, "axis", 1);
  g.Initializer("shared", {40, 32}, testing::TestWeights(40 * 32, 44));
  g.Node("Gather", {"shared", "ids"}, {"s"}, "shared_rows");
  g.Node("MatMul", {"x", "shared"}, {"y"}, "mm");  // [K=40, N=32]: channel axis 1
  g.Output("h");
  g.Output("s");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("odd.onnx")).ok());
  QuantizeOptions d;
  d.min_weight_elements = 1;
  auto r = Quantize(Path("odd.onnx"), Path("odd-q.onnx"), d);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->layers.size(), 2u);
  EXPECT_EQ(r->layers[0].name, "by_column");
  EXPECT_FALSE(r->layers[0].quantized);
  EXPECT_THAT(r->layers[0].skip_reason, HasSubstr("Gather along axis 1"));
  EXPECT_EQ(r->layers[1].name, "mm");
  EXPECT_TRUE(r->layers[1].quantized);
  bool kept_copy = false;
  for (const std::string& w : r->warnings) kept_copy |= w.find("'shared' is also read by Gather shared_rows") != std::string::npos;
  EXPECT_TRUE(kept_copy);
  auto inputs = testing::MakeRandomInputs(Path("odd.onnx"), 3, 2);
  ASSERT_TRUE(inputs.ok());
  auto a = testing::RunOrt(Path("odd.onnx"), *inputs);
  auto b = testing::RunOrt(Path("odd-q.onnx"), *inputs);
  ASSERT_TRUE(a.ok() && b.ok());
}

// --bpw-budget: per-layer bits and split chosen so that the quantized layers' stored bits
// per weight, in the target's own form, stay within the budget (the engine holds the
// allocator's size model to every layer's plan); the artifact runs in ORT; a larger budget
// never gives a larger weight error; a budget below the cheapest choice is refused.
TEST_F(EngineTest, BitsPerWeightBudgetIsHeldInEveryTarget) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("ids", {-1}, onnx::TensorProto::INT64);
  g.Initializer("emb", {64, 48}, testing::TestWeights(64 * 48, 51));
  g.Initializer("w1", {48, 96}, testing::TestWeights(48 * 96, 52));
  g.Initializer("w2", {96, 32}, testing::TestWeights(96 * 32, 53));
  g.Initializer("w3", {32, 8}, testing::TestWeights(32 * 8, 54));
  g.Node("Gather", {"emb", "ids"}, {"h0"}, "embed");
  g.Node("MatMul", {"h0", "w1"}, {"h1"}, "fc1");
  g.Node("Relu", {"h1"}, {"r1"}, "relu");
  g.Node("MatMul", {"r1", "w2"}, {"h2"}, "fc2");
  g.Node("MatMul", {"h2", "w3"}, {"y"}, "head");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("mix.onnx")).ok());
  for (Target target : {Target::kOrtCpu, Target::kPortable, Target::kQdq}) {
    double previous_error = 1e300;
    for (double budget : {3.0, 4.5, 6.5, 9.0, 14.0}) {
      QuantizeOptions o;
      o.min_weight_elements = 1;
      o.nbits_min_elements = 0;  // MatMulNBits and outer8 forms on these small MatMuls too
      o.target = target;
      o.bpw_budget = budget;
      const std::string tag = absl::StrCat("mix-", ToString(target), "-", budget);
      auto r = Quantize(Path("mix.onnx"), Path(tag + ".onnx"), o);
      if (target == Target::kQdq && budget < 5) {
        // qdq stores 2- and 3-bit codes in bytes and INT4 packed: 4 bits + parameters is
        // its floor (4.65 here).
        EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << tag;
        continue;
      }
      ASSERT_TRUE(r.ok()) << tag << ": " << r.status();
      EXPECT_LE(r->quantized_bits_per_weight, budget) << tag;
      ASSERT_EQ(r->sensitivity.size(), 4u) << tag;
      const std::string json = ReportToJson(*r);
      EXPECT_THAT(json, HasSubstr("\"bpw_budget\"")) << tag;
      EXPECT_THAT(json, HasSubstr("\"relative_error_at_bits\"")) << tag;
      EXPECT_THAT(ReportSummary(*r), HasSubstr("most sensitive")) << tag;
      std::map<std::string, const SensitivityEntry*> chosen;
      for (const auto& e : r->sensitivity) chosen[e.layer] = &e;
      double error = 0;
      for (const LayerReport& l : r->layers) {
        ASSERT_TRUE(chosen.count(l.name)) << tag << " " << l.name;
        EXPECT_EQ(l.bits, chosen[l.name]->chosen_bits) << tag << " " << l.name;
        EXPECT_EQ(l.split, chosen[l.name]->chosen_split) << tag << " " << l.name;
        EXPECT_THAT(l.split_decision, HasSubstr("budget:")) << tag;
        int64_t elements = 1;
        for (int64_t d : l.shape) elements *= d;
        error += l.mse_split * elements;
      }
      // Outer8 forms (ort-cpu) only lower the error below what the allocator counted.
      EXPECT_LE(error, previous_error * 1.0001) << tag;
      previous_error = error;
      auto inputs = testing::MakeRandomInputs(Path("mix.onnx"), 5, 3);
      ASSERT_TRUE(inputs.ok());
      EXPECT_TRUE(testing::RunOrt(Path(tag + ".onnx"), *inputs).ok()) << tag;
    }
  }
  QuantizeOptions o;
  o.min_weight_elements = 1;
  o.bpw_budget = 1.0;
  auto low = Quantize(Path("mix.onnx"), Path("mix-low.onnx"), o);
  EXPECT_EQ(low.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(low.status().message()), HasSubstr("--bpw-budget 1 cannot be met"));
  EXPECT_FALSE(Exists(Path("mix-low.onnx")));
  // A --layer override is kept and counted.
  o.bpw_budget = 5.0;
  o.layer_overrides.push_back(*ParseLayerOverride("head=bits:8,split:off"));
  auto fixed = Quantize(Path("mix.onnx"), Path("mix-fixed.onnx"), o);
  ASSERT_TRUE(fixed.ok()) << fixed.status();
  EXPECT_LE(fixed->quantized_bits_per_weight, 5.0);
  for (const LayerReport& l : fixed->layers) {
    if (l.name == "head") {
      EXPECT_EQ(l.bits, 8);
      EXPECT_FALSE(l.split);
    }
  }
}

TEST_F(EngineTest, InspectEstimatesTheDefaultArtifactSize) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 1024});
  g.Initializer("big", {1024, 1024}, testing::TestWeights(1024 * 1024, 31));
  g.Initializer("small", {1024, 64}, testing::TestWeights(1024 * 64, 32));
  g.Node("MatMul", {"x", "big"}, {"h"}, "big_mm");
  g.Node("MatMul", {"h", "small"}, {"y"}, "small_mm");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("two.onnx")).ok());
  auto info = InspectModelFile(Path("two.onnx"));
  ASSERT_TRUE(info.ok()) << info.status();
  auto r = Quantize(Path("two.onnx"), Path("two-q.onnx"), QuantizeOptions());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->layers[0].form, "matmulnbits-outer8");
  EXPECT_EQ(r->layers[1].form, "compact");
  const double estimate = static_cast<double>(info->estimated_output_bytes.at(4));
  EXPECT_NEAR(estimate / r->output_bytes, 1.0, 0.05) << estimate << " vs " << r->output_bytes;
}

TEST_F(EngineTest, InspectListsLayersAndOps) {
  ASSERT_TRUE(testing::SaveModel(ConvModel(), Path("conv.onnx")).ok());
  auto info = InspectModelFile(Path("conv.onnx"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->opset, 17);
  EXPECT_EQ(info->layers.size(), 3u);
  EXPECT_EQ(info->op_histogram.at("Conv"), 2);
  EXPECT_EQ(info->op_histogram.at("ConvTranspose"), 1);
  EXPECT_TRUE(info->unsupported_ops.empty());
}

// --- full-integer output (activations on): what the engine asks of the weights ----------

// The DequantizeLinear that gives each layer op of `g` its weight (input 1; a MatMul's input
// 0 when that is the one), by op name.
std::map<std::string, const onnx::NodeProto*> WeightDequantizers(const onnx::GraphProto& g) {
  std::map<std::string, const onnx::NodeProto*> producer, out;
  for (const auto& n : g.node()) {
    for (const auto& o : n.output()) producer[o] = &n;
  }
  std::set<std::string> inits;
  for (const auto& t : g.initializer()) inits.insert(t.name());
  for (const auto& n : g.node()) {
    if (n.op_type() != "Conv" && n.op_type() != "ConvTranspose" && n.op_type() != "MatMul" && n.op_type() != "Gemm") {
      continue;
    }
    for (int i : {1, 0}) {
      auto p = producer.find(n.input(i));
      if (p != producer.end() && p->second->op_type() == "DequantizeLinear" && inits.count(p->second->input(0))) {
        out[n.name()] = p->second;
        break;
      }
    }
  }
  return out;
}

// Whether the weight DequantizeLinear's zero point is 0 everywhere (or absent).
bool ZeroPointIsZero(const onnx::GraphProto& g, const onnx::NodeProto& dq) {
  if (dq.input_size() < 3 || dq.input(2).empty()) return true;
  for (const auto& t : g.initializer()) {
    if (t.name() != dq.input(2)) continue;
    for (char c : t.raw_data()) {
      if (c != 0) return false;
    }
    for (int32_t v : t.int32_data()) {
      if (v != 0) return false;
    }
    return true;
  }
  ADD_FAILURE() << "zero point " << dq.input(2) << " is no initializer";
  return false;
}

QuantizeOptions FullIntegerOptions(int bits) {
  QuantizeOptions o;
  o.bits = bits;
  o.target = Target::kQdq;
  o.activations = ActivationType::kInt8;
  o.input_ranges = {{"x", -1.0f, 1.0f}};
  o.threads = 1;
  return o;
}

// x[N,4,10,10] -> Conv(8x4x3x3, bias) -> Relu -> Conv depthwise (8x1x3x3, group 8, bias)
//   -> ConvTranspose (8 -> 6, group 1, bias) -> y: ConvModel with a ConvTranspose the
// data-free estimate covers (it has no rule for grouped ConvTranspose).
onnx::ModelProto ConvStack() {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 4, 10, 10});
  g.Initializer("cw", {8, 4, 3, 3}, testing::TestWeights(8 * 4 * 9, 11));
  g.Initializer("cb", {8}, testing::TestWeights(8, 12));
  g.Initializer("dw", {8, 1, 3, 3}, testing::TestWeights(8 * 9, 13));
  g.Initializer("db", {8}, testing::TestWeights(8, 14));
  g.Initializer("tw", {8, 6, 3, 3}, testing::TestWeights(8 * 6 * 9, 15));
  g.Initializer("tb", {6}, testing::TestWeights(6, 16));
  testing::AttrInts(g.Node("Conv", {"x", "cw", "cb"}, {"a"}, "conv"), "pads", {1, 1, 1, 1});
  g.Node("Relu", {"a"}, {"r"}, "relu");
  auto* c2 = g.Node("Conv", {"r", "dw", "db"}, {"b"}, "depthwise");
  testing::AttrInt(c2, "group", 8);
  testing::AttrInts(c2, "pads", {1, 1, 1, 1});
  testing::AttrInts(g.Node("ConvTranspose", {"b", "tw", "tb"}, {"y"}, "deconv"), "strides", {2, 2});
  g.Output("y");
  return m;
}

// ONNX Runtime's integer kernels take a weight zero point of 0: at 8 and 7 bits the weights
// of a full-integer model are symmetric whatever options.symmetric says; below, where ORT
// fuses nothing, they stay asymmetric.
TEST_F(EngineTest, FullIntegerWeightsAreSymmetricAtSevenAndEightBitsOnly) {
  for (auto& [name, model] : {std::pair<std::string, onnx::ModelProto>{"mlp", MlpModel()},
                              {"conv", ConvStack()}}) {
    ASSERT_TRUE(testing::SaveModel(model, Path(name + ".onnx")).ok());
    for (int bits : {8, 7, 4}) {
      SCOPED_TRACE(absl::StrCat(name, " at ", bits, " bits"));
      QuantizeOptions o = FullIntegerOptions(bits);
      ASSERT_FALSE(o.symmetric);
      const std::string out_path = Path(absl::StrCat(name, "-w", bits, ".onnx"));
      auto r = Quantize(Path(name + ".onnx"), out_path, o);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->layers_quantized, static_cast<int>(r->layers.size()));
      for (const LayerReport& l : r->layers) EXPECT_EQ(l.symmetric, bits >= 7) << l.name;
      auto out = LoadedModel::FromFile(out_path);
      ASSERT_TRUE(out.ok()) << out.status();
      const onnx::GraphProto& g = (*out)->proto().graph();
      const auto dqs = WeightDequantizers(g);
      EXPECT_GE(dqs.size(), r->layers.size());
      int zero = 0;
      for (const auto& [op, dq] : dqs) zero += ZeroPointIsZero(g, *dq);
      if (bits >= 7) {
        EXPECT_EQ(zero, static_cast<int>(dqs.size()));
      } else {
        EXPECT_LT(zero, static_cast<int>(dqs.size()));
      }
      EXPECT_LT(Compare(Path(name + ".onnx"), out_path, 7, /*optimize=*/false), bits >= 7 ? 0.1 : 0.3);
    }
  }
  // Weight-only output keeps what was asked: asymmetric at 8 bits.
  QuantizeOptions o = FullIntegerOptions(8);
  o.activations = ActivationType::kOff;
  auto r = Quantize(Path("conv.onnx"), Path("conv-weights.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const LayerReport& l : r->layers) EXPECT_FALSE(l.symmetric) << l.name;
  auto out = LoadedModel::FromFile(Path("conv-weights.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  int zero = 0;
  const auto dqs = WeightDequantizers((*out)->proto().graph());
  for (const auto& [op, dq] : dqs) zero += ZeroPointIsZero((*out)->proto().graph(), *dq);
  EXPECT_LT(zero, static_cast<int>(dqs.size()));
}

// A full-integer model has no float layers: a layer under min_weight_elements (here 32
// weights against the default 64) is quantized when activations are on, and skipped as too
// small in weight-only output.
TEST_F(EngineTest, FullIntegerQuantizesLayersUnderTheMinimumSize) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 16});
  g.Initializer("w1", {16, 8}, testing::TestWeights(16 * 8, 41));
  g.Initializer("w2", {8, 4}, testing::TestWeights(8 * 4, 42));
  g.Initializer("c2", {4}, testing::TestWeights(4, 43));
  g.Node("MatMul", {"x", "w1"}, {"h"}, "fc1");
  g.Node("Relu", {"h"}, {"r"}, "relu");
  g.Node("Gemm", {"r", "w2", "c2"}, {"y"}, "fc2");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("small.onnx")).ok());
  for (bool activations : {true, false}) {
    SCOPED_TRACE(activations ? "full integer" : "weights only");
    QuantizeOptions o = FullIntegerOptions(8);
    if (!activations) o.activations = ActivationType::kOff;
    ASSERT_EQ(o.min_weight_elements, 64);
    const std::string out_path = Path(absl::StrCat("small-", activations, ".onnx"));
    auto r = Quantize(Path("small.onnx"), out_path, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->layers.size(), 2u);
    const LayerReport* fc2 = nullptr;
    for (const LayerReport& l : r->layers) {
      if (l.weight == "w2") fc2 = &l;
    }
    ASSERT_NE(fc2, nullptr);
    EXPECT_EQ(fc2->quantized, activations);
    EXPECT_EQ(r->layers_quantized, activations ? 2 : 1);
    if (!activations) {
      EXPECT_FALSE(fc2->skip_reason.empty());
    }
    auto out = LoadedModel::FromFile(out_path);
    ASSERT_TRUE(out.ok()) << out.status();
    // fc2's op (each branch of it: the split is on) reads a dequantized weight, or none does.
    const auto dqs = WeightDequantizers((*out)->proto().graph());
    int fc2_ops = 0;
    for (const auto& [op, dq] : dqs) fc2_ops += absl::StartsWith(op, "fc2");
    EXPECT_EQ(fc2_ops > 0, activations);
    if (activations) {
      EXPECT_EQ(r->activations.quantized_ops, static_cast<int>(dqs.size()));
    }
    EXPECT_LT(Compare(Path("small.onnx"), out_path, 7, /*optimize=*/false), 0.1);
  }
}

// With target_opset 0 a full-integer model comes out at opset 14 at least (a written-out
// HardSwish becomes the one HardSwish op); weight-only output keeps the opset the codes need.
TEST_F(EngineTest, FullIntegerOutputIsAtLeastOpset14) {
  onnx::ModelProto m = testing::NewModel(13);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 16});
  g.Initializer("w1", {16, 12}, testing::TestWeights(16 * 12, 51));
  g.Initializer("w2", {12, 6}, testing::TestWeights(12 * 6, 52));
  g.Initializer("three", {}, {3.0f});
  g.Initializer("zero", {}, {0.0f});
  g.Initializer("six", {}, {6.0f});
  g.Node("MatMul", {"x", "w1"}, {"h"}, "fc1");
  g.Node("Add", {"h", "three"}, {"t"}, "hs_add");
  g.Node("Clip", {"t", "zero", "six"}, {"c"}, "hs_clip");
  g.Node("Mul", {"h", "c"}, {"p"}, "hs_mul");
  g.Node("Div", {"p", "six"}, {"a"}, "hs_div");
  g.Node("MatMul", {"a", "w2"}, {"y"}, "fc2");
  g.Output("y");
  ASSERT_TRUE(testing::SaveModel(m, Path("hs.onnx")).ok());
  for (int bits : {8, 4}) {
    SCOPED_TRACE(absl::StrCat(bits, " bits"));
    QuantizeOptions o = FullIntegerOptions(bits);
    ASSERT_EQ(o.target_opset, 0);
    const std::string out_path = Path(absl::StrCat("hs-", bits, ".onnx"));
    auto r = Quantize(Path("hs.onnx"), out_path, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->input_opset, 13);
    EXPECT_GE(r->output_opset, 14);
    EXPECT_EQ(r->activations.fused_hardswish, 1);
    auto out = LoadedModel::FromFile(out_path);
    ASSERT_TRUE(out.ok()) << out.status();
    int opset = 0, hardswish = 0, clips = 0;
    for (const auto& imp : (*out)->proto().opset_import()) {
      if (imp.domain().empty() || imp.domain() == "ai.onnx") opset = static_cast<int>(imp.version());
    }
    for (const auto& n : (*out)->proto().graph().node()) {
      hardswish += n.op_type() == "HardSwish";
      clips += n.op_type() == "Clip";
    }
    EXPECT_EQ(opset, r->output_opset);
    EXPECT_EQ(hardswish, 1);
    EXPECT_EQ(clips, 0);
    EXPECT_LT(Compare(Path("hs.onnx"), out_path, 7, /*optimize=*/false), bits == 8 ? 0.1 : 0.3);
  }
  QuantizeOptions o = FullIntegerOptions(8);
  o.activations = ActivationType::kOff;
  auto r = Quantize(Path("hs.onnx"), Path("hs-weights.onnx"), o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->output_opset, 13);
}

}  // namespace
}  // namespace sq
