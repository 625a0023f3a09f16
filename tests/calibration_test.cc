// Calibration (core/activations/calibration.h): the samples are read and checked against
// the graph (every refusal names the file and the problem), the ranges ONNX Runtime
// reports are the exact min/max of what the model computes, the percentile method clips
// inside them, and end to end the scales and zero points in the artifact are
// ChooseActivationParams of the ranges worked out by hand.
#include "core/activations/calibration.h"

#include <zip.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/activations/qdq.h"
#include "core/engine.h"
#include "core/model_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_runner.h"

// ONNX Runtime keeps a small one-time allocation until exit.
extern "C" const char* __lsan_default_suppressions() { return "leak:libonnxruntime.so\n"; }

namespace sq {
namespace {

namespace fs = std::filesystem;
using ::sq::testing::GraphBuilder;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::sq::testing::NpyF32;
using ::sq::testing::NpyImage;

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A .npz (a zip of stored .npy entries).
void WriteNpz(const std::string& path, const std::vector<std::pair<std::string, std::string>>& entries) {
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
    zip_set_file_compression(z, idx, ZIP_CM_STORE, 0);
  }
  ASSERT_EQ(zip_close(z), 0);
}

// One ONNX TensorProto file (the ONNX test-data layout); `name` may be empty.
void WritePb(const std::string& path, const std::string& name, const std::vector<int64_t>& dims,
             const std::vector<float>& v) {
  onnx::TensorProto t;
  if (!name.empty()) t.set_name(name);
  t.set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t.add_dims(d);
  t.set_raw_data(v.data(), v.size() * sizeof(float));
  std::string bytes;
  ASSERT_TRUE(t.SerializeToString(&bytes));
  WriteFile(path, bytes);
}

// k / 128: weights and inputs on a dyadic grid, so every product and sum below is exact in
// float whatever order ONNX Runtime adds in, and symmetric 8-bit weight codes with
// max |w| = 127/128 per channel have scale exactly 1/128: the quantized weights are the
// FP32 ones.
std::vector<float> Over128(const std::vector<int>& k) {
  std::vector<float> v;
  for (int x : k) v.push_back(static_cast<float>(x) / 128.0f);
  return v;
}

// Row-major [4,4] and [4,3]; every column (the output channel of a MatMul weight) holds
// +-127.
const std::vector<int> kW1 = {127, -64, 32, -127,  //
                              -32, 127, -127, 16,  //
                              64, 8, 100, 50,      //
                              -8, -100, 4, 127};
const std::vector<int> kW2 = {127, -50, 20,    //
                              -90, 127, -127,  //
                              30, 60, 64,      //
                              10, -20, 100};

// x[N,4] -> MatMul W1 (fc1) -> h -> Relu -> r -> MatMul W2 (fc2) -> y[N,3]
onnx::ModelProto Mlp() {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 4});
  g.Initializer("w1", {4, 4}, Over128(kW1));
  g.Initializer("w2", {4, 3}, Over128(kW2));
  g.Node("MatMul", {"x", "w1"}, {"h"}, "fc1");
  g.Node("Relu", {"h"}, {"r"}, "relu");
  g.Node("MatMul", {"r", "w2"}, {"y"}, "fc2");
  g.Output("y");
  return m;
}

// The same function as 1x1 Convs: x[N,4,1,1] -> Conv W1^T (conv1) -> h -> Relu -> r ->
// Conv W2^T (conv2) -> y[N,3,1,1]. (Convs, because ONNX Runtime runs a MatMul whose weight
// is a DequantizeLinear of int8 codes in MatMulNBits at accuracy level 4, which quantizes
// its input on the fly: the calibration ranges of a MatMul layer are then close to, not
// exactly, the FP32 ones.)
std::vector<float> Transposed(const std::vector<float>& w, int rows, int cols) {
  std::vector<float> t(w.size());
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) t[j * rows + i] = w[i * cols + j];
  }
  return t;
}
onnx::ModelProto ConvMlp() {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 4, 1, 1});
  g.Initializer("w1", {4, 4, 1, 1}, Transposed(Over128(kW1), 4, 4));
  g.Initializer("w2", {3, 4, 1, 1}, Transposed(Over128(kW2), 4, 3));
  g.Node("Conv", {"x", "w1"}, {"h"}, "conv1");
  g.Node("Relu", {"h"}, {"r"}, "relu");
  g.Node("Conv", {"r", "w2"}, {"y"}, "conv2");
  g.Output("y");
  return m;
}

// Plain row-major product [n,k] x [k,c] in double.
std::vector<double> Product(const std::vector<float>& a, const std::vector<float>& b, int n, int k, int c) {
  std::vector<double> out(n * c, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < c; ++j) {
      for (int t = 0; t < k; ++t) out[i * c + j] += static_cast<double>(a[i * k + t]) * b[t * c + j];
    }
  }
  return out;
}

struct Span {
  double lo = 0, hi = 0;
  void Add(const std::vector<double>& v) {
    for (double x : v) {
      lo = std::min(lo, x);  // starting at 0: a range always holds 0
      hi = std::max(hi, x);
    }
  }
};

const onnx::TensorProto* FindInit(const onnx::GraphProto& g, const std::string& name) {
  for (const auto& t : g.initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

// The (scale, zero point) of the QuantizeLinear that reads `tensor`.
struct QParams {
  bool found = false;
  float scale = 0;
  int32_t zero_point = 0;
  int32_t zp_type = 0;
};
QParams QuantizerOf(const onnx::GraphProto& g, const std::string& tensor) {
  QParams p;
  for (const auto& n : g.node()) {
    if (n.op_type() != "QuantizeLinear" || n.input(0) != tensor || n.input_size() < 3) continue;
    const onnx::TensorProto* s = FindInit(g, n.input(1));
    const onnx::TensorProto* z = FindInit(g, n.input(2));
    if (!s || !z || s->raw_data().size() != 4 || z->raw_data().size() != 1) return p;
    std::memcpy(&p.scale, s->raw_data().data(), 4);
    p.zp_type = z->data_type();
    p.zero_point = z->data_type() == onnx::TensorProto::INT8 ? static_cast<int8_t>(z->raw_data()[0])
                                                               : static_cast<uint8_t>(z->raw_data()[0]);
    p.found = true;
  }
  return p;
}

class CalibrationTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("sq-calibration"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) { return dir_ + "/" + name; }

  QuantizeOptions IntegerOptions() {
    QuantizeOptions o;
    o.bits = 8;
    o.symmetric = true;
    o.split = SplitMode::kOff;
    o.target = Target::kQdq;
    o.activations = ActivationType::kInt8;
    o.min_weight_elements = 1;
    o.threads = 1;
    return o;
  }

  onnx::GraphProto MlpGraph() { return Mlp().graph(); }

  std::string dir_;
};

// --- HistogramQuantile ----------------------------------------------------------------

TEST(CalibrationHistogramQuantileTest, UniformMassGivesTheBinEdgeRoundedOutwards) {
  const std::vector<int64_t> counts(10, 10);  // [0,10), one unit per bin, 100 values
  // Upper: the smallest edge with at least the fraction below it.
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.90, true), 9.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.95, true), 10.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.91, true), 10.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.50, true), 5.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 1.0, true), 10.0f);
  // Lower: the largest edge with at most the fraction below it.
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.10, false), 1.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.05, false), 0.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.0, false), 0.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 10, 0.25, false), 2.0f);
  // Negative spans.
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, -5, 5, 0.90, true), 4.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, -5, 5, 0.10, false), -4.0f);
}

TEST(CalibrationHistogramQuantileTest, AnOutlierIsClippedAndEmptyOrDegenerateHistogramsKeepTheSpan) {
  std::vector<int64_t> counts(100, 0);
  counts[0] = 5000;
  counts[1] = 4999;
  counts[99] = 1;  // one value at the far end
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 100, 0.9999, true), 2.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 100, 0.99995, true), 100.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(counts, 0, 100, 0.0001, false), 0.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(std::vector<int64_t>(8, 0), -1, 3, 0.99, true), 3.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile(std::vector<int64_t>(8, 0), -1, 3, 0.01, false), -1.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile({}, -1, 3, 0.5, true), 3.0f);
  EXPECT_FLOAT_EQ(HistogramQuantile({4, 4}, 2, 2, 0.5, false), 2.0f);
}

// --- ReadCalibrationSet -----------------------------------------------------------------

TEST_F(CalibrationTest, ADirectoryIsOneSamplePerFileInNameOrderAndAnNpyTakesTheSingleInput) {
  const onnx::GraphProto g = MlpGraph();
  fs::create_directory(Path("set"));
  WriteFile(Path("set/b.npy"), NpyF32({2, 4}, std::vector<float>(8, 2.0f)));
  WriteFile(Path("set/a.npy"), NpyF32({1, 4}, std::vector<float>(4, 1.0f)));
  WriteFile(Path("set/notes.txt"), "not a sample");
  auto set = ReadCalibrationSet({Path("set")}, g);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->size(), 2u);
  EXPECT_EQ((*set)[0].source, Path("set/a.npy"));
  EXPECT_EQ((*set)[1].source, Path("set/b.npy"));
  ASSERT_EQ((*set)[1].tensors.size(), 1u);
  EXPECT_EQ((*set)[1].tensors[0].name, "x");  // the file's stem was "b"
  EXPECT_EQ((*set)[1].tensors[0].shape, (std::vector<int64_t>{2, 4}));
  // Files and directories may be mixed in one list.
  set = ReadCalibrationSet({Path("set/a.npy"), Path("set")}, g);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->size(), 3u);
}

TEST_F(CalibrationTest, OnnxTestDataLayoutGivesInputsInGraphOrder) {
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder b(m.mutable_graph());
  b.Input("x", {1, 2});
  b.Input("z", {1, 3});
  b.Node("Identity", {"x"}, {"y"});
  b.Output("y");
  fs::create_directories(Path("data/test_data_set_0"));
  fs::create_directories(Path("data/test_data_set_1"));
  for (int s = 0; s < 2; ++s) {
    const std::string d = Path(absl::StrCat("data/test_data_set_", s));
    WritePb(d + "/input_0.pb", "", {1, 2}, {1.0f * s, 2});
    WritePb(d + "/input_1.pb", "", {1, 3}, {3, 4, 5});
  }
  auto set = ReadCalibrationSet({Path("data")}, m.graph());
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->size(), 2u);
  ASSERT_EQ((*set)[1].tensors.size(), 2u);
  EXPECT_EQ((*set)[1].tensors[0].name, "x");
  EXPECT_EQ((*set)[1].tensors[1].name, "z");
  EXPECT_EQ((*set)[1].tensors[0].f, (std::vector<float>{1, 2}));
  EXPECT_EQ((*set)[1].tensors[1].shape, (std::vector<int64_t>{1, 3}));
}

// Every bad sample is InvalidArgument naming the file and the problem.
TEST_F(CalibrationTest, BadSamplesAreRefusedNamingTheFileAndTheProblem) {
  // Two inputs, so that a sample can lack one or hold one too many.
  onnx::ModelProto m = testing::NewModel(17);
  GraphBuilder b(m.mutable_graph());
  b.Input("x", {-1, 4});
  b.Input("z", {1, 2});
  b.Node("Identity", {"x"}, {"y"});
  b.Output("y");
  const std::vector<float> x4(4, 0.5f), z2(2, 0.25f);
  struct Case {
    std::string file;
    std::vector<std::pair<std::string, std::string>> entries;  // npz
    std::vector<std::string> expect;
  };
  std::vector<float> nan_x = x4;
  nan_x[2] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> inf_z = z2;
  inf_z[1] = -std::numeric_limits<float>::infinity();
  const std::vector<double> x4d(4, 0.5);
  const std::vector<Case> cases = {
      {"shape.npz", {{"x", NpyF32({1, 5}, std::vector<float>(5))}, {"z", NpyF32({1, 2}, z2)}},
       {"input 'x' has shape [1,5] but the model takes [?,4]"}},
      {"rank.npz", {{"x", NpyF32({4}, x4)}, {"z", NpyF32({1, 2}, z2)}},
       {"input 'x' has shape [4] but the model takes [?,4]"}},
      {"fixed.npz", {{"x", NpyF32({1, 4}, x4)}, {"z", NpyF32({2, 2}, std::vector<float>(4))}},
       {"input 'z' has shape [2,2] but the model takes [1,2]"}},
      {"dtype.npz", {{"x", NpyImage("<f8", {1, 4}, x4d.data(), 32)}, {"z", NpyF32({1, 2}, z2)}},
       {"input 'x' is float64 but the model takes float32", "astype"}},
      {"missing.npz", {{"x", NpyF32({1, 4}, x4)}}, {"lacks the model's input 'z'"}},
      {"extra.npz", {{"x", NpyF32({1, 4}, x4)}, {"z", NpyF32({1, 2}, z2)}, {"w", NpyF32({1, 2}, z2)}},
       {"holds tensor 'w', which is not an input of the model (inputs: x, z)"}},
      {"nan.npz", {{"x", NpyF32({1, 4}, nan_x)}, {"z", NpyF32({1, 2}, z2)}},
       {"input 'x' holds NaN at flat index 2"}},
      {"inf.npz", {{"x", NpyF32({1, 4}, x4)}, {"z", NpyF32({1, 2}, inf_z)}},
       {"input 'z' holds an infinity at flat index 1"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    WriteNpz(Path(c.file), c.entries);
    auto set = ReadCalibrationSet({Path(c.file)}, m.graph());
    ASSERT_FALSE(set.ok());
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << set.status();
    EXPECT_THAT(set.status().message(), HasSubstr(absl::StrCat("calibration sample ", Path(c.file))));
    for (const std::string& e : c.expect) EXPECT_THAT(set.status().message(), HasSubstr(e));
  }
  // A good sample is accepted (the cases fail for their own reason only).
  WriteNpz(Path("good.npz"), {{"z", NpyF32({1, 2}, z2)}, {"x", NpyF32({3, 4}, std::vector<float>(12))}});
  EXPECT_TRUE(ReadCalibrationSet({Path("good.npz")}, m.graph()).ok());
  // A bad file in a directory is named, not the directory.
  fs::create_directory(Path("set"));
  fs::copy_file(Path("good.npz"), Path("set/0.npz"));
  fs::copy_file(Path("nan.npz"), Path("set/1.npz"));
  auto set = ReadCalibrationSet({Path("set")}, m.graph());
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), AllOf(HasSubstr(Path("set/1.npz")), HasSubstr("NaN")));
}

TEST_F(CalibrationTest, EmptyMissingAndOversizedSetsAreRefused) {
  const onnx::GraphProto g = MlpGraph();
  fs::create_directory(Path("empty"));
  WriteFile(Path("empty/readme.txt"), "no samples here");
  auto set = ReadCalibrationSet({Path("empty")}, g);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), AllOf(HasSubstr(Path("empty")), HasSubstr("holds no .npy, .npz or .pb file")));

  set = ReadCalibrationSet({Path("nowhere")}, g);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(set.status().message(), HasSubstr(Path("nowhere")));

  set = ReadCalibrationSet({}, g);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);

  // A file of another kind given by name.
  WriteFile(Path("sample.csv"), "1,2,3,4\n");
  set = ReadCalibrationSet({Path("sample.csv")}, g);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr("sample.csv"));

  // One more than kMaxCalibrationSamples (tiny files): refused before any is read; at the
  // limit exactly, accepted.
  fs::create_directory(Path("many"));
  const std::string one = NpyF32({1, 4}, {0, 1, 2, 3});
  for (int i = 0; i < kMaxCalibrationSamples; ++i) WriteFile(Path(absl::StrCat("many/", 10000 + i, ".npy")), one);
  set = ReadCalibrationSet({Path("many")}, g);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->size(), static_cast<size_t>(kMaxCalibrationSamples));
  WriteFile(Path("many/99999.npy"), one);
  set = ReadCalibrationSet({Path("many")}, g);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr(absl::StrCat("more than ", kMaxCalibrationSamples)));
  // Also when the samples come from several paths.
  fs::remove(Path("many/99999.npy"));
  WriteFile(Path("extra.npy"), one);
  set = ReadCalibrationSet({Path("many"), Path("extra.npy")}, g);
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr(absl::StrCat("more than ", kMaxCalibrationSamples)));
}

// A bad sample fails the whole run before any work, with the same message, and leaves no
// output.
TEST_F(CalibrationTest, TheEngineRefusesABadSampleAndWritesNothing) {
  ASSERT_TRUE(testing::SaveModel(Mlp(), Path("mlp.onnx")).ok());
  const std::vector<double> x4d(4, 0.5);
  WriteFile(Path("double.npy"), NpyImage("<f8", {1, 4}, x4d.data(), 32));
  QuantizeOptions o = IntegerOptions();
  o.calibration_inputs = {Path("double.npy")};
  auto r = QuantizeModelFile(Path("mlp.onnx"), Path("out.onnx"), o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), AllOf(HasSubstr(Path("double.npy")), HasSubstr("float64")));
  EXPECT_FALSE(fs::exists(Path("out.onnx")));
  o.calibration_inputs = {Path("absent")};
  r = QuantizeModelFile(Path("mlp.onnx"), Path("out.onnx"), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(Path("out.onnx")));
}

// --- CollectRanges ------------------------------------------------------------------------

// Three samples of x[2,4]: multiples of 1/4 in [-2, 2].
std::vector<std::vector<float>> MlpSamples() {
  return {
      {0.25f, -1.5f, 2.0f, 0.5f, -0.75f, 1.0f, -2.0f, 1.25f},
      {1.75f, 0.0f, -0.5f, -1.0f, 0.5f, 0.25f, 1.5f, -0.25f},
      {-1.25f, 2.0f, 0.75f, 1.5f, 1.0f, -1.75f, 0.25f, 2.0f},
  };
}

struct MlpTruth {
  Span x, h, r, y;
  std::vector<double> h_ch_lo, h_ch_hi;
};
MlpTruth MlpRanges() {
  MlpTruth t;
  t.h_ch_lo.assign(4, std::numeric_limits<double>::infinity());
  t.h_ch_hi.assign(4, -std::numeric_limits<double>::infinity());
  const std::vector<float> w1 = Over128(kW1), w2 = Over128(kW2);
  for (const auto& x : MlpSamples()) {
    std::vector<double> xd(x.begin(), x.end());
    t.x.Add(xd);
    std::vector<double> h = Product(x, w1, 2, 4, 4);
    t.h.Add(h);
    for (size_t i = 0; i < h.size(); ++i) {
      t.h_ch_lo[i % 4] = std::min(t.h_ch_lo[i % 4], h[i]);
      t.h_ch_hi[i % 4] = std::max(t.h_ch_hi[i % 4], h[i]);
    }
    std::vector<float> r(h.size());
    for (size_t i = 0; i < h.size(); ++i) r[i] = static_cast<float>(std::max(h[i], 0.0));
    t.r.Add(std::vector<double>(r.begin(), r.end()));
    t.y.Add(Product(r, w2, 2, 4, 3));
  }
  return t;
}

std::vector<CalibrationSample> ToSamples(const std::vector<std::vector<float>>& xs, std::vector<int64_t> shape) {
  std::vector<CalibrationSample> out;
  for (size_t i = 0; i < xs.size(); ++i) {
    CalibrationSample s;
    s.source = absl::StrCat("sample ", i);
    OrtTensor t;
    t.name = "x";
    t.shape = shape;
    t.f = xs[i];
    s.tensors.push_back(t);
    out.push_back(s);
  }
  return out;
}

TEST_F(CalibrationTest, MinMaxRangesAreTheExactSpansWithZeroAndPerChannelOnAxisOne) {
  const onnx::ModelProto m = Mlp();
  CalibrationRequest req;
  req.tensors = {"x", "h", "r", "y"};
  req.channel_tensors = {"h"};
  req.method = CalibrationMethod::kMinMax;
  auto ranges = CollectRanges(m, {}, ToSamples(MlpSamples(), {2, 4}), req);
  ASSERT_TRUE(ranges.ok()) << ranges.status();
  const MlpTruth t = MlpRanges();
  const std::map<std::string, Span> want = {{"x", t.x}, {"h", t.h}, {"r", t.r}, {"y", t.y}};
  for (const auto& [name, span] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(ranges->count(name));
    EXPECT_EQ(ranges->at(name).lo, static_cast<float>(span.lo));
    EXPECT_EQ(ranges->at(name).hi, static_cast<float>(span.hi));
  }
  // r = Relu(h) >= 0: its range still starts at 0 (not at its smallest value).
  EXPECT_EQ(ranges->at("r").lo, 0.0f);
  ASSERT_EQ(ranges->at("h").channel_lo.size(), 4u);
  for (int c = 0; c < 4; ++c) {
    // Per-channel spans are the channel's own (no 0 forced in).
    EXPECT_EQ(ranges->at("h").channel_lo[c], static_cast<float>(t.h_ch_lo[c]));
    EXPECT_EQ(ranges->at("h").channel_hi[c], static_cast<float>(t.h_ch_hi[c]));
  }
  EXPECT_TRUE(ranges->at("x").channel_lo.empty());

  // A tensor the model does not compute, or that is not float.
  req.tensors = {"nope"};
  req.channel_tensors.clear();
  auto bad = CollectRanges(m, {}, ToSamples(MlpSamples(), {2, 4}), req);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("'nope'"));
  EXPECT_EQ(CollectRanges(m, {}, {}, req).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CalibrationTest, AnOrtErrorNamesTheSample) {
  const onnx::ModelProto m = Mlp();
  CalibrationRequest req;
  req.tensors = {"h"};
  std::vector<CalibrationSample> samples = ToSamples(MlpSamples(), {2, 4});
  samples[1].tensors[0].shape = {1, 8};  // 8 values, but [1,8] does not fit x[N,4]
  auto r = CollectRanges(m, {}, samples, req);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("sample 1"));
}

TEST_F(CalibrationTest, PercentileRangeLiesInsideTheMinMaxRange) {
  const onnx::ModelProto m = Mlp();
  // 8 samples of x[64,4] ~ U(-1,1), one value at 40.
  std::vector<std::vector<float>> xs(8, std::vector<float>(256));
  uint64_t state = 12345;
  for (auto& x : xs) {
    for (float& v : x) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      v = static_cast<float>((state >> 40) % 2001) / 1000.0f - 1.0f;
    }
  }
  xs[3][17] = 40.0f;
  const std::vector<CalibrationSample> samples = ToSamples(xs, {64, 4});
  CalibrationRequest req;
  req.tensors = {"x", "h", "r", "y"};
  req.method = CalibrationMethod::kMinMax;
  auto mm = CollectRanges(m, {}, samples, req);
  ASSERT_TRUE(mm.ok()) << mm.status();
  req.method = CalibrationMethod::kPercentile;
  req.percentile = 99.9;
  auto pc = CollectRanges(m, {}, samples, req);
  ASSERT_TRUE(pc.ok()) << pc.status();
  for (const std::string& t : req.tensors) {
    SCOPED_TRACE(t);
    EXPECT_LE(mm->at(t).lo, pc->at(t).lo);
    EXPECT_GE(mm->at(t).hi, pc->at(t).hi);
    EXPECT_LE(pc->at(t).lo, 0.0f);
    EXPECT_GE(pc->at(t).hi, 0.0f);
  }
  EXPECT_EQ(mm->at("x").hi, 40.0f);
  EXPECT_LT(pc->at("x").hi, 1.1f);  // the outlier is clipped ...
  EXPECT_GT(pc->at("x").hi, 0.9f);  // ... and the bulk kept
  EXPECT_LT(pc->at("x").lo, -0.9f);
  // percentile 100 is min/max.
  req.percentile = 100;
  auto all = CollectRanges(m, {}, samples, req);
  ASSERT_TRUE(all.ok()) << all.status();
  for (const std::string& t : req.tensors) {
    EXPECT_EQ(all->at(t).lo, mm->at(t).lo) << t;
    EXPECT_EQ(all->at(t).hi, mm->at(t).hi) << t;
  }
}

// --- end to end ---------------------------------------------------------------------------

// The artifact's activation scale and zero point are ChooseActivationParams of the ranges
// worked out here by hand from the samples.
TEST_F(CalibrationTest, MinMaxCalibrationGivesTheHandComputedScalesInTheArtifact) {
  ASSERT_TRUE(testing::SaveModel(ConvMlp(), Path("mlp.onnx")).ok());
  fs::create_directory(Path("calib"));
  const auto xs = MlpSamples();
  for (size_t i = 0; i < xs.size(); ++i) {
    WriteFile(Path(absl::StrCat("calib/", i, ".npy")), NpyF32({2, 4, 1, 1}, xs[i]));
  }
  const MlpTruth t = MlpRanges();
  for (ActivationType type : {ActivationType::kInt8, ActivationType::kUint8}) {
    SCOPED_TRACE(ToString(type));
    QuantizeOptions o = IntegerOptions();
    o.activations = type;
    o.calibration_inputs = {Path("calib")};
    o.calibration_method = CalibrationMethod::kMinMax;
    auto report = QuantizeModelFile(Path("mlp.onnx"), Path("out.onnx"), o);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->activations.type, ToString(type));
    EXPECT_THAT(report->activations.ranges_from, HasSubstr("calibration: 3 samples"));
    EXPECT_THAT(report->activations.ranges_from, HasSubstr("minmax"));
    EXPECT_EQ(report->activations.quantized_ops, 2);
    EXPECT_EQ(report->activations.tensors, 4);  // x, h, r, y
    auto out = LoadedModel::FromFile(Path("out.onnx"));
    ASSERT_TRUE(out.ok()) << out.status();
    const onnx::GraphProto& g = (*out)->proto().graph();
    const std::map<std::string, Span> want = {{"x", t.x}, {"h", t.h}, {"r", t.r}, {"y", t.y}};
    for (const auto& [name, span] : want) {
      SCOPED_TRACE(name);
      const QParams q = QuantizerOf(g, name);
      ASSERT_TRUE(q.found);
      const ActivationParams p = ChooseActivationParams(static_cast<float>(span.lo), static_cast<float>(span.hi), type);
      EXPECT_EQ(q.scale, p.scale);
      EXPECT_EQ(q.zero_point, p.zero_point);
      EXPECT_EQ(q.zp_type, type == ActivationType::kInt8 ? onnx::TensorProto::INT8 : onnx::TensorProto::UINT8);
      // The contract's formula.
      const int qmin = type == ActivationType::kInt8 ? -128 : 0;
      EXPECT_FLOAT_EQ(p.scale, static_cast<float>((span.hi - span.lo) / 255.0));
      EXPECT_EQ(p.zero_point, static_cast<int32_t>(std::nearbyint(qmin - span.lo / p.scale)));
    }
    // The hand-worked spans are what they should be (a guard on the test itself).
    EXPECT_EQ(t.x.lo, -2.0);
    EXPECT_EQ(t.x.hi, 2.0);
    EXPECT_EQ(t.r.lo, 0.0);
    EXPECT_LT(t.h.lo, 0.0);
  }
}

// The MatMul form of the same function: ONNX Runtime runs a MatMul with int8 weight codes
// in MatMulNBits at accuracy level 4 (its input quantized per block on the fly), so the
// ranges, measured on the model with its quantized weights, are within a fraction of a
// percent of the hand-worked ones rather than equal.
TEST_F(CalibrationTest, MatMulLayersGetScalesCloseToTheHandComputedOnes) {
  ASSERT_TRUE(testing::SaveModel(Mlp(), Path("mlp.onnx")).ok());
  fs::create_directory(Path("calib"));
  const auto xs = MlpSamples();
  for (size_t i = 0; i < xs.size(); ++i) WriteFile(Path(absl::StrCat("calib/", i, ".npy")), NpyF32({2, 4}, xs[i]));
  const MlpTruth t = MlpRanges();
  QuantizeOptions o = IntegerOptions();
  o.calibration_inputs = {Path("calib")};
  o.calibration_method = CalibrationMethod::kMinMax;
  auto report = QuantizeModelFile(Path("mlp.onnx"), Path("out.onnx"), o);
  ASSERT_TRUE(report.ok()) << report.status();
  auto out = LoadedModel::FromFile(Path("out.onnx"));
  ASSERT_TRUE(out.ok()) << out.status();
  const std::map<std::string, Span> want = {{"x", t.x}, {"h", t.h}, {"r", t.r}, {"y", t.y}};
  for (const auto& [name, span] : want) {
    SCOPED_TRACE(name);
    const QParams q = QuantizerOf((*out)->proto().graph(), name);
    ASSERT_TRUE(q.found);
    const ActivationParams p = ChooseActivationParams(static_cast<float>(span.lo), static_cast<float>(span.hi),
                                                      ActivationType::kInt8);
    EXPECT_NEAR(q.scale, p.scale, 0.01 * p.scale);
    EXPECT_NEAR(q.zero_point, p.zero_point, 1);
  }
  // The graph input's range is the samples' own: exact.
  EXPECT_EQ(QuantizerOf((*out)->proto().graph(), "x").scale,
            ChooseActivationParams(static_cast<float>(t.x.lo), static_cast<float>(t.x.hi), ActivationType::kInt8).scale);
}

TEST_F(CalibrationTest, PercentileCalibrationGivesScalesNoWiderThanMinMax) {
  ASSERT_TRUE(testing::SaveModel(Mlp(), Path("mlp.onnx")).ok());
  fs::create_directory(Path("calib"));
  uint64_t state = 99;
  for (int s = 0; s < 4; ++s) {
    std::vector<float> x(64 * 4);
    for (float& v : x) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      v = static_cast<float>((state >> 40) % 2001) / 1000.0f - 1.0f;
    }
    if (s == 2) x[5] = -30.0f;
    WriteFile(Path(absl::StrCat("calib/", s, ".npy")), NpyF32({64, 4}, x));
  }
  std::map<std::string, QParams> got[2];
  for (int k = 0; k < 2; ++k) {
    QuantizeOptions o = IntegerOptions();
    o.calibration_inputs = {Path("calib")};
    o.calibration_method = k == 0 ? CalibrationMethod::kMinMax : CalibrationMethod::kPercentile;
    o.calibration_percentile = 99.5;
    auto report = QuantizeModelFile(Path("mlp.onnx"), Path(absl::StrCat("out", k, ".onnx")), o);
    ASSERT_TRUE(report.ok()) << report.status();
    if (k == 1) {
      EXPECT_THAT(report->activations.ranges_from, HasSubstr("percentile 99.5"));
    }
    auto out = LoadedModel::FromFile(Path(absl::StrCat("out", k, ".onnx")));
    ASSERT_TRUE(out.ok()) << out.status();
    for (const char* t : {"x", "h", "r", "y"}) got[k][t] = QuantizerOf((*out)->proto().graph(), t);
  }
  for (const char* t : {"x", "h", "r", "y"}) {
    SCOPED_TRACE(t);
    ASSERT_TRUE(got[0][t].found && got[1][t].found);
    EXPECT_LE(got[1][t].scale, got[0][t].scale);
    // [lo, hi] of the percentile pair inside the min/max one (one step of slack for rounding).
    const double lo0 = (-128 - got[0][t].zero_point) * static_cast<double>(got[0][t].scale);
    const double hi0 = (127 - got[0][t].zero_point) * static_cast<double>(got[0][t].scale);
    const double lo1 = (-128 - got[1][t].zero_point) * static_cast<double>(got[1][t].scale);
    const double hi1 = (127 - got[1][t].zero_point) * static_cast<double>(got[1][t].scale);
    EXPECT_GE(lo1, lo0 - got[0][t].scale);
    EXPECT_LE(hi1, hi0 + got[0][t].scale);
  }
  // The outlier at -30 dominates x's min/max range; the percentile range drops it.
  EXPECT_LT(got[1]["x"].scale, got[0]["x"].scale / 5);
}

}  // namespace
}  // namespace sq
