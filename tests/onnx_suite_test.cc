// ONNX's own backend test suite (Debian's libonnx-testdata, installed by scripts/setup.sh)
// through the engine, as a user would feed it (#15 item 3). For every model in node/,
// pytorch-converted/, pytorch-operator/ and simple/: sq either transforms it, and then the
// `--format split` output computes what the original computes in ONNX Runtime on the
// suite's own inputs (within 1e-5 relative) and the `--target qdq` INT8 output loads and
// runs; or it refuses with a one-line reason (InvalidArgument / NotFound), never a crash
// or an Internal error. The counts are held to what was recorded: a change that makes sq
// transform fewer models fails here.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/engine.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_runner.h"

namespace sq {
namespace {

namespace fs = std::filesystem;
using testing::OrtTensor;

constexpr char kSuiteDir[] = "/usr/share/libonnx-testdata/data";
// What the suite gave on 2026-12-04 (libonnx-testdata 1.12.0, ONNX Runtime 1.29).
constexpr int kRecordedTransformed = 63;   // 30 node (weights made constant; matmul_3d/4d
                                           // unstacked since 12-04) + 33 pytorch
constexpr int kRecordedMatched = 62;       // one original does not run in ORT: not compared
constexpr int kRecordedQuantizedRan = 62;
constexpr int kRecordedQdqRan = 62;        // opset-6 models too, converted 6 -> 7 -> 13+

// A TensorProto input file as an ORT input; false for what the runner does not take
// (sequences, strings, other dtypes).
bool ReadInput(const fs::path& pb, const std::string& name, OrtTensor* out) {
  std::ifstream in(pb, std::ios::binary);
  onnx::TensorProto t;
  if (!t.ParseFromIstream(&in) || t.data_location() == onnx::TensorProto::EXTERNAL) return false;
  out->name = name;
  out->shape.assign(t.dims().begin(), t.dims().end());
  int64_t n = 1;
  for (int64_t d : out->shape) n *= d;
  const std::string& raw = t.raw_data();
  auto from_raw = [&](auto zero, auto& dst) {
    using T = decltype(zero);
    if (raw.size() != static_cast<size_t>(n) * sizeof(T)) return false;
    for (int64_t k = 0; k < n; ++k) {
      T v;
      std::memcpy(&v, raw.data() + k * sizeof(T), sizeof(T));
      dst.push_back(static_cast<std::remove_reference_t<decltype(dst[0])>>(v));
    }
    return true;
  };
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT:
      out->elem_type = 1;
      if (!raw.empty()) return from_raw(0.0f, out->f);
      out->f.assign(t.float_data().begin(), t.float_data().end());
      return static_cast<int64_t>(out->f.size()) == n;
    case onnx::TensorProto::INT64:
      out->elem_type = 7;
      if (!raw.empty()) return from_raw(int64_t{0}, out->i);
      out->i.assign(t.int64_data().begin(), t.int64_data().end());
      return static_cast<int64_t>(out->i.size()) == n;
    case onnx::TensorProto::BOOL:
      out->elem_type = 9;
      if (!raw.empty()) return from_raw(uint8_t{0}, out->i);
      out->i.assign(t.int32_data().begin(), t.int32_data().end());
      return static_cast<int64_t>(out->i.size()) == n;
    default:
      return false;
  }
}

struct Tally {
  int models = 0, transformed = 0, matched = 0, not_compared = 0, quantized_ran = 0, qdq_ran = 0, refused = 0;
};

TEST(OnnxSuiteTest, EveryModelTransformsAndMatchesOrIsRefusedWithAReason) {
  if (!fs::exists(kSuiteDir)) GTEST_SKIP() << "libonnx-testdata not installed (scripts/setup.sh installs it)";
  const std::string tmp = testing::MakeTempDir("onnx-suite");
  Tally t;
  for (const char* set : {"node", "pytorch-converted", "pytorch-operator", "simple"}) {
    std::vector<fs::path> dirs;
    for (const auto& e : fs::directory_iterator(fs::path(kSuiteDir) / set)) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end());
    for (const fs::path& dir : dirs) {
      const fs::path original = dir / "model.onnx";
      if (!fs::exists(original)) continue;
      ++t.models;
      const std::string what = absl::StrCat(set, "/", dir.filename().string());
      onnx::ModelProto proto;
      {
        std::ifstream in(original, std::ios::binary);
        ASSERT_TRUE(proto.ParseFromIstream(&in)) << what;
      }
      // Each graph input that is not an initializer, with its test data file (by position).
      std::set<std::string> inits;
      for (const auto& i : proto.graph().initializer()) inits.insert(i.name());
      std::vector<std::pair<std::string, fs::path>> feeds;
      for (int k = 0; k < proto.graph().input_size(); ++k) {
        const std::string& name = proto.graph().input(k).name();
        if (!inits.count(name)) {
          feeds.push_back({name, dir / "test_data_set_0" / absl::StrCat("input_", feeds.size(), ".pb")});
        }
      }
      // The node tests feed a layer's weight at run time; as the user did, make
      // such a weight (a float input in a MatMul/Gemm/Conv/ConvTranspose weight slot) an
      // initializer holding the test's data.
      fs::path model = original;
      if (std::string(set) == "node") {
        std::set<std::string> weight_slots;
        for (const auto& n : proto.graph().node()) {
          if ((n.op_type() == "MatMul" || n.op_type() == "Gemm" || n.op_type() == "Conv" ||
               n.op_type() == "ConvTranspose") && n.input_size() > 1) {
            weight_slots.insert(n.input(1));
          }
        }
        bool changed = false;
        for (auto it = feeds.begin(); it != feeds.end();) {
          onnx::TensorProto w;
          std::ifstream in(it->second, std::ios::binary);
          if (weight_slots.count(it->first) && w.ParseFromIstream(&in) && w.data_type() == onnx::TensorProto::FLOAT) {
            w.set_name(it->first);
            *proto.mutable_graph()->add_initializer() = w;
            auto* inputs = proto.mutable_graph()->mutable_input();
            for (int k = 0; k < inputs->size(); ++k) {
              if (inputs->Get(k).name() == it->first) {
                inputs->DeleteSubrange(k, 1);
                break;
              }
            }
            it = feeds.erase(it);
            changed = true;
          } else {
            ++it;
          }
        }
        if (changed) {
          model = tmp + "/weights_constant.onnx";
          std::ofstream out(model, std::ios::binary);
          ASSERT_TRUE(proto.SerializeToOstream(&out)) << what;
        }
      }
      QuantizeOptions split;
      split.format = OutputFormat::kSplit;
      split.min_weight_elements = 1;
      const std::string out = tmp + "/split.onnx";
      auto r = QuantizeModelFile(model.string(), out, split, {});
      if (!r.ok()) {
        ++t.refused;
        EXPECT_TRUE(r.status().code() == absl::StatusCode::kInvalidArgument ||
                    r.status().code() == absl::StatusCode::kNotFound)
            << what << ": " << r.status();
        EXPECT_EQ(r.status().message().find('\n'), std::string::npos) << what;
        continue;
      }
      ++t.transformed;
      std::vector<OrtTensor> inputs(feeds.size());
      bool readable = true;
      for (size_t k = 0; k < feeds.size() && readable; ++k) {
        readable = ReadInput(feeds[k].second, feeds[k].first, &inputs[k]);
      }
      auto expected = readable ? testing::RunOrt(model.string(), inputs) : absl::UnknownError("inputs");
      if (!expected.ok()) {
        ++t.not_compared;  // ORT cannot run the original (or its inputs): nothing to compare
      } else {
        auto got = testing::RunOrt(out, inputs);
        ASSERT_TRUE(got.ok()) << what << ": the split model does not run: " << got.status();
        const double rel = testing::MaxRelativeError(*got, *expected);
        EXPECT_LE(rel, 1e-5) << what;
        t.matched += rel <= 1e-5 ? 1 : 0;
      }
      // Quantized, INT8: target qdq where the model's opset can be brought to 13 (the
      // converter starts at opset 7); otherwise format fake, which keeps the opset. Either
      // must load and run on the suite's inputs.
      QuantizeOptions qdq;
      qdq.target = Target::kQdq;
      qdq.format = OutputFormat::kQdq;
      qdq.bits = 8;
      qdq.min_weight_elements = 1;
      auto q = QuantizeModelFile(model.string(), tmp + "/q.onnx", qdq, {});
      if (!q.ok()) {
        EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument) << what << ": " << q.status();
        QuantizeOptions fake = qdq;
        fake.format = OutputFormat::kFake;
        q = QuantizeModelFile(model.string(), tmp + "/q.onnx", fake, {});
        EXPECT_TRUE(q.ok()) << what << ": " << q.status();
      }
      if (q.ok() && expected.ok()) {
        auto ran = testing::RunOrt(tmp + "/q.onnx", inputs);
        EXPECT_TRUE(ran.ok()) << what << ": the quantized model does not run: " << ran.status();
        t.quantized_ran += ran.ok() ? 1 : 0;
        t.qdq_ran += ran.ok() && q->options.format == OutputFormat::kQdq ? 1 : 0;
      }
    }
  }
  std::printf("onnx suite: %d models, %d transformed (%d matched in ORT, %d not comparable), "
              "%d quantized ran (%d as qdq), %d refused\n",
              t.models, t.transformed, t.matched, t.not_compared, t.quantized_ran, t.qdq_ran, t.refused);
  // Fewer than recorded is a regression.
  EXPECT_EQ(t.models, 1072);
  EXPECT_GE(t.transformed, kRecordedTransformed);
  EXPECT_GE(t.matched, kRecordedMatched);
  EXPECT_GE(t.quantized_ran, kRecordedQuantizedRan);
  EXPECT_GE(t.qdq_ran, kRecordedQdqRan);
}

}  // namespace
}  // namespace sq
