#include "tests/support/hostile_corpus.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "onnx/onnx_pb.h"
#include "tests/support/model_builder.h"

namespace sq::testing {
namespace {

namespace fs = std::filesystem;
using absl::StatusCode;

constexpr int64_t kN = 64;  // the base model's weight is kN x kN

// x[1, kN] -> MatMul(W) -> y: quantizable as it stands.
onnx::ModelProto Base() {
  onnx::ModelProto m = NewModel(13);
  GraphBuilder b(m.mutable_graph());
  b.Input("x", {1, kN});
  b.Initializer("W", {kN, kN}, TestWeights(kN * kN, 5));
  b.Node("MatMul", {"x", "W"}, {"y"}, "mm");
  b.Output("y");
  return m;
}

// x[1, 4, 8, 8] -> Conv(w[8, 4, 3, 3]) -> y, named "conv".
onnx::ModelProto ConvBase() {
  onnx::ModelProto m = NewModel(13);
  GraphBuilder b(m.mutable_graph());
  b.Input("x", {1, 4, 8, 8});
  b.Initializer("w", {8, 4, 3, 3}, TestWeights(8 * 4 * 9, 6));
  b.Node("Conv", {"x", "w"}, {"y"}, "conv");
  b.Output("y");
  return m;
}

onnx::TensorProto* Weight(onnx::ModelProto& m) { return m.mutable_graph()->mutable_initializer(0); }

void SetExternal(onnx::TensorProto* t, const std::string& location, const std::string& offset,
                 const std::string& length) {
  t->clear_raw_data();
  t->clear_float_data();
  t->clear_external_data();
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  for (auto [k, v] : {std::pair<std::string, std::string>{"location", location}, {"offset", offset},
                      {"length", length}}) {
    if (v.empty() && k != "location") continue;
    auto* e = t->add_external_data();
    e->set_key(k);
    e->set_value(v);
  }
}

class Corpus {
 public:
  explicit Corpus(std::string dir) : dir_(std::move(dir)) { fs::create_directories(dir_); }

  // A case whose model file holds `bytes`; `extra` files (name, bytes) sit beside it.
  void Bytes(const std::string& name, const std::string& bytes, StatusCode expect,
             const std::string& fragment,
             const std::vector<std::pair<std::string, std::string>>& extra = {}) {
    const std::string folder = absl::StrCat(dir_, "/", cases_.size(), "-", Slug(name));
    fs::create_directories(folder);
    HostileCase c{name, folder + "/model.onnx", {}, expect, fragment};
    std::ofstream(c.model, std::ios::binary) << bytes;
    c.files.push_back(c.model);
    for (const auto& [file, data] : extra) {
      std::ofstream(folder + "/" + file, std::ios::binary) << data;
      c.files.push_back(folder + "/" + file);
    }
    cases_.push_back(std::move(c));
  }
  void Model(const std::string& name, const onnx::ModelProto& m, StatusCode expect,
             const std::string& fragment,
             const std::vector<std::pair<std::string, std::string>>& extra = {}) {
    Bytes(name, m.SerializeAsString(), expect, fragment, extra);
  }
  const std::string& dir() const { return dir_; }
  std::vector<HostileCase>& cases() { return cases_; }

 private:
  static std::string Slug(const std::string& s) {
    std::string out;
    for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
    return out.substr(0, 40);
  }
  std::string dir_;
  std::vector<HostileCase> cases_;
};

}  // namespace

std::vector<HostileCase> WriteHostileCorpus(const std::string& dir) {
  Corpus c(dir);
  const StatusCode kInvalid = StatusCode::kInvalidArgument;
  const std::string good = Base().SerializeAsString();
  const std::string weights(kN * kN * 4, '\x01');

  // ---- bytes that are not a model -----------------------------------------------------
  c.Bytes("empty file", "", kInvalid, "");
  c.Bytes("one byte", "\x08", kInvalid, "");
  for (double at : {0.1, 0.5, 0.9}) {
    c.Bytes(absl::StrCat("truncated at ", at), good.substr(0, static_cast<size_t>(good.size() * at)),
            kInvalid, "");
  }
  c.Bytes("truncated by one byte", good.substr(0, good.size() - 1), kInvalid, "");
  {
    std::mt19937 rng(7);
    std::string garbage(4096, '\0');
    for (char& ch : garbage) ch = static_cast<char>(rng());
    c.Bytes("random garbage", garbage, kInvalid, "");
  }
  c.Bytes("text file", "this is not an ONNX model\n", kInvalid, "");
  c.Bytes("a valid model with trailing garbage", good + std::string(64, '\xff'), kInvalid, "");

  // ---- model headers ------------------------------------------------------------------
  {
    auto m = Base();
    m.set_ir_version(999);
    c.Model("ir_version 999", m, kInvalid, "ir_version");
  }
  {
    auto m = Base();
    m.set_ir_version(0);
    c.Model("no ir_version", m, kInvalid, "ir_version");
  }
  {
    auto m = Base();
    m.clear_graph();
    c.Model("no graph", m, kInvalid, "graph");
  }
  {
    auto m = Base();
    m.mutable_opset_import(0)->set_domain("com.example.unknown");
    c.Model("no default-domain opset", m, kInvalid, "");
  }
  {
    auto m = Base();
    m.mutable_graph()->mutable_node(0)->set_domain("com.example.unknown");
    c.Model("node in an unimported domain", m, kInvalid, "com.example.unknown");
  }

  // ---- tensor headers ------------------------------------------------------------------
  {
    auto m = Base();
    Weight(m)->set_dims(0, int64_t{1} << 40);
    Weight(m)->set_dims(1, int64_t{1} << 40);
    c.Model("dims claiming 2^80 elements", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    Weight(m)->set_dims(0, -64);
    c.Model("negative dim", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    Weight(m)->clear_dims();
    for (int i = 0; i < 3; ++i) Weight(m)->add_dims(int64_t{1} << 32);
    c.Model("element count overflowing int64", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    Weight(m)->mutable_raw_data()->resize(100);
    c.Model("raw_data shorter than dims", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    Weight(m)->mutable_raw_data()->append(400, '\0');
    c.Model("raw_data longer than dims", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    Weight(m)->add_float_data(1.0f);
    c.Model("raw and typed data both set", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    Weight(m)->set_data_type(99);
    c.Model("unknown data type", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    Weight(m)->set_name("");
    m.mutable_graph()->mutable_node(0)->set_input(1, "");
    c.Model("nameless initializer", m, kInvalid, "");
  }
  {
    auto m = Base();
    auto* t = Weight(m);
    t->clear_raw_data();
    c.Model("initializer with dims and no data", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    std::string raw = Weight(m)->raw_data();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(&raw[40], &nan, 4);
    Weight(m)->set_raw_data(raw);
    c.Model("NaN in a weight", m, kInvalid, "");
  }
  {
    auto m = Base();
    std::string raw = Weight(m)->raw_data();
    const float inf = std::numeric_limits<float>::infinity();
    std::memcpy(&raw[8], &inf, 4);
    Weight(m)->set_raw_data(raw);
    c.Model("Inf in a weight", m, kInvalid, "");
  }

  // ---- graphs --------------------------------------------------------------------------
  {
    auto m = Base();
    m.mutable_graph()->mutable_node(0)->set_input(0, "nowhere");
    c.Model("dangling input", m, kInvalid, "nowhere");
  }
  {
    auto m = Base();
    GraphBuilder b(m.mutable_graph());
    b.Node("Relu", {"b"}, {"a"}, "r1");
    b.Node("Relu", {"a"}, {"b"}, "r2");
    c.Model("cycle", m, kInvalid, "");
  }
  {
    auto m = Base();
    GraphBuilder b(m.mutable_graph());
    b.Node("Relu", {"loop"}, {"loop"}, "self");
    c.Model("self-loop", m, kInvalid, "");
  }
  {
    auto m = Base();
    GraphBuilder b(m.mutable_graph());
    b.Node("Relu", {"x"}, {"y"}, "again");
    c.Model("two nodes write one output", m, kInvalid, "'y'");
  }
  {
    auto m = Base();
    *m.mutable_graph()->add_initializer() = *Weight(m);
    c.Model("duplicate initializer", m, kInvalid, "'W'");
  }
  {
    auto m = Base();
    m.mutable_graph()->mutable_output(0)->set_name("never_made");
    c.Model("graph output nobody produces", m, kInvalid, "never_made");
  }
  {
    auto m = Base();
    m.mutable_graph()->mutable_node(0)->set_op_type("");
    c.Model("node without an op type", m, kInvalid, "");
  }
  {
    onnx::ModelProto m = NewModel(13);
    onnx::GraphProto* g = m.mutable_graph();
    for (int depth = 0; depth < 200; ++depth) {
      GraphBuilder b(g);
      auto* n = b.Node("If", {"cond"}, {"out"}, "if" + std::to_string(depth));
      g = AttrGraph(n, "then_branch");
    }
    c.Model("If nested 200 deep", m, kInvalid, "nested more than");
  }
  {
    // 100k nodes: a long Identity chain before the MatMul. Valid: it must quantize.
    auto m = Base();
    onnx::GraphProto* g = m.mutable_graph();
    g->mutable_node(0)->set_input(0, "x99999");
    GraphBuilder b(g);
    std::string prev = "x";
    for (int i = 0; i < 100000; ++i) {
      std::string out = "x" + std::to_string(i);
      b.Node("Identity", {prev}, {out}, "id" + std::to_string(i));
      prev = out;
    }
    // Nodes must come in order: move the MatMul to the end.
    g->mutable_node()->SwapElements(0, g->node_size() - 1);
    for (int i = 0; i + 1 < g->node_size() - 1; ++i) g->mutable_node()->SwapElements(i, i + 1);
    c.Model("100k nodes", m, StatusCode::kOk, "");
  }
  {
    // Found by fuzzing (tests/fuzz model_fuzz): a Gemm weight whose rows span 1e-38 to 1e33
    // (finite, but squared distances overflow). Planning saw 3 distinct values and planned
    // three branches; k-means found fewer than 3 clusters, and the run failed INTERNAL
    // ("planned 3 branches, transform made 1"). Valid: it must quantize.
    onnx::ModelProto m = NewModel(17);
    GraphBuilder b(m.mutable_graph());
    b.Input("x", {1, 6});
    // The fuzzer's 4x6 weight, four times over: 96 weights, above the default minimum size.
    const std::vector<float> rows = {-0.022791951894760132f, 3.971723218730644e-38f, 0.04326296225190163f,
                   7.70648477885033e+31f, 9.65247295925264e-37f, 2.536312665629075e-38f,
                   2.6375182189852625e+33f, 2.4381174052068614e+24f, 4.242974628084705e+21f,
                   140649232.0f, 2.604446534778875e+32f, 7.898272908817663e-33f,
                   1.0168486433132348e-37f, 2.685217162785466e-38f, 1.5477958589267964e+23f,
                   1.9066144929901955e-36f, 4.591899007716259e+27f, 2.5964586691845247e-35f,
                   1.744312313693768e+28f, 2.7965665808382587e-38f, -0.03173983097076416f,
                   0.15518055856227875f, 1.013980689824209e-37f, 2.2805063932729442e-36f};
    std::vector<float> w2;
    for (int k = 0; k < 4; ++k) w2.insert(w2.end(), rows.begin(), rows.end());
    b.Initializer("w2", {16, 6}, w2);
    testing::AttrInt(b.Node("Gemm", {"x", "w2"}, {"y"}, "fc2"), "transB", 1);
    b.Output("y");
    c.Model("weights spanning 1e-38 to 1e33", m, StatusCode::kOk, "");
  }
  {
    auto m = Base();
    m.mutable_graph()->mutable_node(0)->set_name("mm\xff\xfe\xc3(");
    m.mutable_graph()->mutable_initializer(0)->set_name("W\x80");
    m.mutable_graph()->mutable_node(0)->set_input(1, "W\x80");
    c.Model("non-UTF-8 names", m, StatusCode::kOk, "");
  }
  {
    onnx::ModelProto m = NewModel(13);
    GraphBuilder b(m.mutable_graph());
    b.Input("x", {1, kN});
    b.Node("Relu", {"x"}, {"y"}, "relu");
    b.Output("y");
    c.Model("nothing to quantize", m, kInvalid, "no quantizable layer");
  }

  // ---- convolutions -------------------------------------------------------------------
  for (int64_t group : {0, 7, -3}) {
    auto m = ConvBase();
    AttrInt(m.mutable_graph()->mutable_node(0), "group", group);
    c.Model(absl::StrCat("Conv group ", group), m, kInvalid, "conv");
  }
  {
    auto m = ConvBase();
    AttrInts(m.mutable_graph()->mutable_node(0), "kernel_shape", {5, 5});
    c.Model("Conv kernel_shape unlike the weight", m, kInvalid, "conv");
  }
  {
    auto m = ConvBase();
    AttrInts(m.mutable_graph()->mutable_node(0), "strides", {1, 1, 1});
    c.Model("Conv strides of the wrong length", m, kInvalid, "conv");
  }
  {
    auto m = ConvBase();
    AttrInts(m.mutable_graph()->mutable_node(0), "pads", {1, 1});
    c.Model("Conv pads of the wrong length", m, kInvalid, "conv");
  }
  for (const char* op : {"Conv", "ConvTranspose"}) {
    onnx::ModelProto m = NewModel(13);
    GraphBuilder b(m.mutable_graph());
    b.Input("x", {1, 4, 8, 8});
    std::vector<int64_t> dims(200, 1);
    dims[0] = 4;
    b.Initializer("w", dims, TestWeights(4, 1));
    b.Node(op, {"x", "w"}, {"y"}, "conv");
    b.Output("y");
    c.Model(absl::StrCat(op, " weight of rank 200"), m, kInvalid, "rank 200");
  }
  {
    auto m = ConvBase();
    m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(8);
    c.Model("Conv input of rank 5 for a rank-4 weight", m, kInvalid, "conv");
  }
  {
    auto m = ConvBase();
    auto* t = Weight(m);
    t->set_data_type(onnx::TensorProto::STRING);
    t->clear_raw_data();
    for (int i = 0; i < 8 * 4 * 9; ++i) t->add_string_data("w");
    c.Model("string weight on a Conv", m, kInvalid, "");
  }

  // ---- external data ------------------------------------------------------------------
  auto external = [&](const std::string& name, const std::string& location, const std::string& offset,
                      const std::string& length, StatusCode expect, const std::string& fragment,
                      std::vector<std::pair<std::string, std::string>> extra) {
    auto m = Base();
    SetExternal(Weight(m), location, offset, length);
    c.Model(name, m, expect, fragment, extra);
  };
  const std::string len = std::to_string(weights.size());
  external("external data, well formed", "w.bin", "0", len, StatusCode::kOk, "", {{"w.bin", weights}});
  external("external data path with ..", "../w.bin", "0", len, kInvalid, "", {});
  external("external data absolute path", "/etc/passwd", "0", "64", kInvalid, "", {});
  external("external data file missing", "absent.bin", "0", len, StatusCode::kNotFound, "absent.bin", {});
  external("external offset past the end", "w.bin", "1000000", len, kInvalid, "", {{"w.bin", weights}});
  external("external length past the end", "w.bin", "0", "999999999", kInvalid, "", {{"w.bin", weights}});
  external("external offset overflowing int64", "w.bin", "9223372036854775798", "1728", kInvalid, "",
           {{"w.bin", weights}});
  external("external negative offset", "w.bin", "-5", len, kInvalid, "", {{"w.bin", weights}});
  external("external offset not a number", "w.bin", "abc", len, kInvalid, "", {{"w.bin", weights}});
  external("external length unlike dims", "w.bin", "0", "128", kInvalid, "", {{"w.bin", weights}});
  external("external data location empty", "", "0", len, kInvalid, "", {});
  {
    // A symlink inside the model's folder pointing out of it.
    const std::string secret = c.dir() + "/outside-secret.bin";
    std::ofstream(secret, std::ios::binary) << weights;
    auto m = Base();
    SetExternal(Weight(m), "link.bin", "0", len);
    c.Model("external data through a symlink out of the folder", m, kInvalid, "");
    const std::string folder = fs::path(c.cases().back().model).parent_path().string();
    fs::create_symlink(secret, folder + "/link.bin");
  }
  {
    auto m = Base();
    SetExternal(Weight(m), "sub", "0", len);
    c.Model("external data location is a directory", m, kInvalid, "");
    fs::create_directories(fs::path(c.cases().back().model).parent_path() / "sub");
  }
  {
    // A name that escapes through a nested path component.
    external("external data path sub/../../w.bin", "sub/../../w.bin", "0", len, kInvalid, "", {});
  }
  return std::move(c.cases());
}

}  // namespace sq::testing
