// Tests for core/opset_convert (and a smoke test of tests/support/ort_runner).
#include "core/opset_convert.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"
#include "tests/support/model_builder.h"
#include "tests/support/ort_runner.h"

namespace sq {
namespace {

using ::sq::testing::OrtTensor;

// A file in this process's own folder (removed after the last test: MakeTempDir).
std::string TmpPath(const std::string& name) {
  static const std::string* const dir = new std::string(testing::MakeTempDir("sq-opset-convert"));
  return *dir + "/" + name;
}

void SaveModel(const onnx::ModelProto& m, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  ASSERT_TRUE(m.SerializeToOstream(&out)) << path;
}

void SetTensorVI(onnx::ValueInfoProto* vi, const std::string& name, int elem_type,
                 const std::vector<int64_t>& shape) {
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem_type);
  auto* sh = tt->mutable_shape();
  for (int64_t d : shape) sh->add_dim()->set_dim_value(d);
}

// --- ort_runner smoke test --------------------------------------------------------------

TEST(OrtRunnerSmoke, RunsOneNodeModel) {
  onnx::ModelProto m;
  m.set_ir_version(7);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(13);
  auto* g = m.mutable_graph();
  g->set_name("add");
  auto* n = g->add_node();
  n->set_op_type("Add");
  n->add_input("a");
  n->add_input("b");
  n->add_output("y");
  SetTensorVI(g->add_input(), "a", 1, {2, 3});
  SetTensorVI(g->add_input(), "b", 1, {2, 3});
  SetTensorVI(g->add_output(), "y", 1, {2, 3});
  const std::string path = TmpPath("smoke_add.onnx");
  SaveModel(m, path);

  ASSERT_TRUE(testing::LoadInOrt(path).ok());
  auto inputs = testing::MakeRandomInputs(path, /*seed=*/7);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  ASSERT_EQ(inputs->size(), 2u);
  EXPECT_EQ((*inputs)[0].shape, (std::vector<int64_t>{2, 3}));
  auto out = testing::RunOrt(path, *inputs);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 1u);
  const OrtTensor& y = (*out)[0];
  EXPECT_EQ(y.name, "y");
  ASSERT_EQ(y.f.size(), 6u);
  std::vector<OrtTensor> expect = {y};
  for (size_t k = 0; k < 6; ++k) {
    EXPECT_FLOAT_EQ(y.f[k], (*inputs)[0].f[k] + (*inputs)[1].f[k]);
    expect[0].f[k] = (*inputs)[0].f[k] + (*inputs)[1].f[k];
  }
  EXPECT_EQ(testing::MaxAbsError(*out, expect), 0.0);
  EXPECT_EQ(testing::MaxRelativeError(*out, expect), 0.0);
  // Same seed, same inputs.
  auto again = testing::MakeRandomInputs(path, 7);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)[0].f, (*inputs)[0].f);

  // Errors are Status, not exceptions.
  auto bad = testing::RunOrt(TmpPath("does_not_exist.onnx"), *inputs);
  EXPECT_FALSE(bad.ok());
  EXPECT_FALSE(testing::LoadInOrt(TmpPath("does_not_exist.onnx")).ok());
  auto wrong_shape = *inputs;
  wrong_shape[0].shape = {3, 3};
  EXPECT_FALSE(testing::RunOrt(path, wrong_shape).ok());
}


// --- model building helpers ---------------------------------------------------------------

struct IO {
  IO(std::string n, int t = 1, std::vector<int64_t> s = {}, bool ns = false)
      : name(std::move(n)), elem_type(t), shape(std::move(s)), no_shape(ns) {}
  IO(const char* n) : IO(std::string(n)) {}
  std::string name;
  int elem_type = 1;
  std::vector<int64_t> shape;  // with no_shape: rank unknown
  bool no_shape = false;
};

onnx::AttributeProto* Attr(onnx::NodeProto* n, const std::string& name) {
  auto* a = n->add_attribute();
  a->set_name(name);
  return a;
}
void AttrI(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = Attr(n, name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
void AttrF(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = Attr(n, name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}
void AttrS(onnx::NodeProto* n, const std::string& name, const std::string& v) {
  auto* a = Attr(n, name);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(v);
}
void AttrInts(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = Attr(n, name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}
void AttrFloats(onnx::NodeProto* n, const std::string& name, const std::vector<float>& v) {
  auto* a = Attr(n, name);
  a->set_type(onnx::AttributeProto::FLOATS);
  for (float x : v) a->add_floats(x);
}

onnx::NodeProto Node(const std::string& op, const std::vector<std::string>& in,
                     const std::vector<std::string>& out, const std::string& name = "") {
  onnx::NodeProto n;
  n.set_op_type(op);
  n.set_name(name.empty() ? op + "_0" : name);
  for (const auto& i : in) n.add_input(i);
  for (const auto& o : out) n.add_output(o);
  return n;
}

void AddIO(onnx::ValueInfoProto* vi, const IO& io) {
  vi->set_name(io.name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(io.elem_type);
  if (io.no_shape) return;
  auto* sh = tt->mutable_shape();
  for (int64_t d : io.shape) sh->add_dim()->set_dim_value(d);
}

// Outputs are declared with their element type only (shape left to ORT).
onnx::ModelProto Model(int opset, const std::vector<onnx::NodeProto>& nodes,
                       const std::vector<IO>& inputs, const std::vector<IO>& outputs,
                       const std::vector<onnx::TensorProto>& inits = {}, int ir = 0) {
  onnx::ModelProto m;
  m.set_ir_version(ir ? ir : (opset >= 13 ? 7 : opset >= 11 ? 6 : opset >= 10 ? 5 : 4));
  m.set_producer_name("opset_convert_test");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  auto* g = m.mutable_graph();
  g->set_name("g");
  for (const auto& n : nodes) *g->add_node() = n;
  for (const auto& i : inputs) AddIO(g->add_input(), i);
  for (auto o : outputs) {
    o.no_shape = true;
    AddIO(g->add_output(), o);
  }
  for (const auto& t : inits) *g->add_initializer() = t;
  return m;
}

onnx::TensorProto FloatInit(const std::string& name, const std::vector<int64_t>& dims,
                            const std::vector<float>& v) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(1);
  for (auto d : dims) t.add_dims(d);
  for (float x : v) t.add_float_data(x);
  return t;
}
onnx::TensorProto Int64Init(const std::string& name, const std::vector<int64_t>& dims,
                            const std::vector<int64_t>& v) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(7);
  for (auto d : dims) t.add_dims(d);
  for (int64_t x : v) t.add_int64_data(x);
  return t;
}

int counter_ = 0;

absl::StatusOr<std::vector<OrtTensor>> RunModel(const onnx::ModelProto& m,
                                                const std::vector<OrtTensor>& inputs,
                                                const std::string& tag,
                                                bool disable_opt = false) {
  const std::string path = TmpPath(tag + "_" + std::to_string(counter_++) + ".onnx");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!m.SerializeToOstream(&out)) return absl::InternalError("write failed");
  out.close();
  testing::OrtRunOptions o;
  o.disable_optimizations = disable_opt;
  auto r = testing::RunOrt(path, inputs, o);
  std::remove(path.c_str());
  return r;
}

std::vector<OrtTensor> RandomInputs(const onnx::ModelProto& m, uint64_t seed,
                                    int64_t int_high = 3) {
  const std::string path = TmpPath("inputs_" + std::to_string(counter_++) + ".onnx");
  SaveModel(m, path);
  auto r = testing::MakeRandomInputs(path, seed, 1, {}, int_high);
  std::remove(path.c_str());
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::vector<OrtTensor>{};
}

bool HasDefaultNodeAttr(const onnx::GraphProto& g, const std::string& op,
                        const std::string& attr) {
  for (const auto& n : g.node()) {
    if (n.op_type() != op) continue;
    for (const auto& a : n.attribute()) {
      if (a.name() == attr) return true;
    }
  }
  return false;
}

// Converts `m` to every target in `targets` and checks, in ONNX Runtime, that the outputs
// equal the original model's (rel <= tol). Returns the last converted model.
onnx::ModelProto ExpectSameAfterConvert(const onnx::ModelProto& m, const std::vector<int>& targets,
                                        const std::vector<OrtTensor>& given_inputs = {},
                                        double tol = 1e-6) {
  std::vector<OrtTensor> inputs = given_inputs.empty() ? RandomInputs(m, 42) : given_inputs;
  auto ref = RunModel(m, inputs, "orig");
  EXPECT_TRUE(ref.ok()) << "original model does not run: " << ref.status();
  onnx::ModelProto last;
  if (!ref.ok()) return last;
  for (int target : targets) {
    SCOPED_TRACE("target opset " + std::to_string(target));
    onnx::ModelProto c = m;
    EXPECT_TRUE(UnconvertibleOps(c, target).empty());
    absl::Status s = ConvertOpset(&c, target);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) continue;
    EXPECT_EQ(DefaultDomainOpset(c), target);
    auto got = RunModel(c, inputs, "conv");
    EXPECT_TRUE(got.ok()) << got.status() << "\n" << c.graph().DebugString();
    if (!got.ok()) continue;
    EXPECT_LE(testing::MaxRelativeError(*got, *ref), tol);
    last = c;
  }
  return last;
}

// --- per-op tests ---------------------------------------------------------------------------

// The shape inference AnalyzeModel runs must never see a convolution whose kernel rank
// (from W) disagrees with X's: libonnx 1.12 reads out of bounds there. Callers validate
// first (core/validate.h); this is the second line of defence, exercised without it.
TEST(OpsetConvert, MismatchedConvRanksDoNotReachShapeInference) {
  for (const char* op : {"Conv", "ConvTranspose"}) {
    for (int x_rank : {3, 30, 200}) {
      onnx::ModelProto m;
      m.set_ir_version(7);
      m.add_opset_import()->set_version(9);
      auto* g = m.mutable_graph();
      auto* x = g->add_input();
      x->set_name("x");
      x->mutable_type()->mutable_tensor_type()->set_elem_type(1);
      for (int i = 0; i < x_rank; ++i) {
        x->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(2);
      }
      auto* w = g->add_initializer();
      w->set_name("w");
      w->set_data_type(1);
      for (int i = 0; i < 4; ++i) w->add_dims(2);
      for (int i = 0; i < 16; ++i) w->add_float_data(0.5f);
      auto* n = g->add_node();
      n->set_op_type(op);
      n->add_input("x");
      n->add_input("w");
      n->add_output("y");
      g->add_output()->set_name("y");
      (void)UnconvertibleOps(m, 13);
      (void)ConvertOpset(&m, 13);  // may fail; must not crash
    }
  }
}

TEST(OpsetConvert, Slice10) {
  auto n = Node("Slice", {"x"}, {"y"});
  AttrInts(&n, "starts", {1, 0});
  AttrInts(&n, "ends", {3, 100});
  AttrInts(&n, "axes", {0, 2});
  auto m = Model(9, {n}, {{"x", 1, {4, 3, 5}}}, {{"y"}});
  auto c = ExpectSameAfterConvert(m, {10, 13, 21, 25});
  EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "Slice", "starts"));
  EXPECT_EQ(c.graph().node(0).input_size(), 4);
  // No axes attribute.
  auto n2 = Node("Slice", {"x"}, {"y"});
  AttrInts(&n2, "starts", {1, 1});
  AttrInts(&n2, "ends", {-1, 3});
  ExpectSameAfterConvert(Model(7, {n2}, {{"x", 1, {4, 3, 5}}}, {{"y"}}), {10, 13, 25});
}

TEST(OpsetConvert, TopK10) {
  auto n = Node("TopK", {"x"}, {"v", "i"});
  AttrI(&n, "k", 2);
  AttrI(&n, "axis", 1);
  auto c = ExpectSameAfterConvert(Model(9, {n}, {{"x", 1, {3, 6}}}, {{"v"}, {"i", 7}}),
                                  {10, 11, 13, 21, 25});
  EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "TopK", "k"));
}

TEST(OpsetConvert, Upsample7ToResize) {
  for (const char* mode : {"nearest", "linear"}) {
    SCOPED_TRACE(mode);
    auto n = Node("Upsample", {"x"}, {"y"});
    AttrS(&n, "mode", mode);
    AttrFloats(&n, "scales", {1, 1, 2, 3});
    auto c = ExpectSameAfterConvert(Model(7, {n}, {{"x", 1, {1, 2, 3, 4}}}, {{"y"}}, {}, 3),
                                    {8, 9, 10, 11, 13, 18, 19, 21, 25});
    EXPECT_EQ(c.graph().node(0).op_type(), "Resize");
  }
}

TEST(OpsetConvert, Upsample9ToResize) {
  for (const char* mode : {"nearest", "linear"}) {
    SCOPED_TRACE(mode);
    auto n = Node("Upsample", {"x", "scales"}, {"y"});
    AttrS(&n, "mode", mode);
    auto m = Model(9, {n}, {{"x", 1, {1, 2, 3, 4}}}, {{"y"}},
                   {FloatInit("scales", {4}, {1, 1, 2, 2})});
    ExpectSameAfterConvert(m, {10, 11, 13, 21, 25});
  }
}

TEST(OpsetConvert, Resize10To11) {
  for (const char* mode : {"nearest", "linear"}) {
    SCOPED_TRACE(mode);
    auto n = Node("Resize", {"x", "scales"}, {"y"});
    AttrS(&n, "mode", mode);
    auto m = Model(10, {n}, {{"x", 1, {1, 2, 3, 4}}}, {{"y"}},
                   {FloatInit("scales", {4}, {1, 1, 2.5f, 1.5f})});
    ExpectSameAfterConvert(m, {11, 13, 21, 25});
  }
}

TEST(OpsetConvert, Clip11) {
  auto n = Node("Clip", {"x"}, {"y"});
  AttrF(&n, "min", -0.25f);
  AttrF(&n, "max", 0.5f);
  auto c = ExpectSameAfterConvert(Model(9, {n}, {{"x", 1, {3, 4}}}, {{"y"}}), {11, 13, 21, 25});
  EXPECT_EQ(c.graph().node(0).input_size(), 3);
  auto only_max = Node("Clip", {"x"}, {"y"});
  AttrF(&only_max, "max", 0.1f);
  ExpectSameAfterConvert(Model(9, {only_max}, {{"x", 1, {3, 4}}}, {{"y"}}), {11, 13});
  auto only_min = Node("Clip", {"x"}, {"y"});
  AttrF(&only_min, "min", 0.1f);
  ExpectSameAfterConvert(Model(7, {only_min}, {{"x", 1, {3, 4}}}, {{"y"}}), {11, 21});
}

TEST(OpsetConvert, Pad11) {
  auto n = Node("Pad", {"x"}, {"y"});
  AttrInts(&n, "pads", {0, 1, 2, 0, 2, 1});
  AttrF(&n, "value", 1.5f);
  ExpectSameAfterConvert(Model(9, {n}, {{"x", 1, {2, 3, 4}}}, {{"y"}}), {11, 13, 18, 21, 25});
  auto r = Node("Pad", {"x"}, {"y"});
  AttrInts(&r, "pads", {0, 1, 2, 0, 1, 2});
  AttrS(&r, "mode", "reflect");
  ExpectSameAfterConvert(Model(9, {r}, {{"x", 1, {2, 3, 4}}}, {{"y"}}), {11, 13, 21});
  auto e = Node("Pad", {"x"}, {"y"});
  AttrInts(&e, "pads", {1, 0, 0, 1});
  AttrS(&e, "mode", "edge");
  ExpectSameAfterConvert(Model(7, {e}, {{"x", 1, {2, 3}}}, {{"y"}}), {11, 25});
}

TEST(OpsetConvert, Dropout12) {
  auto n = Node("Dropout", {"x"}, {"d", "mask"});
  AttrF(&n, "ratio", 0.3f);
  auto relu = Node("Relu", {"d"}, {"y"});
  auto c = ExpectSameAfterConvert(Model(9, {n, relu}, {{"x", 1, {3, 4}}}, {{"y"}}),
                                  {10, 12, 13, 21, 25});
  EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "Dropout", "ratio"));
  // A used mask cannot be carried past opset 10 (its type changes).
  auto m2 = Model(9, {n}, {{"x", 1, {3, 4}}}, {{"d"}, {"mask"}});
  EXPECT_FALSE(UnconvertibleOps(m2, 13).empty());
  EXPECT_EQ(ConvertOpset(&m2, 13).code(), absl::StatusCode::kUnimplemented);
}

TEST(OpsetConvert, SqueezeUnsqueeze13) {
  auto u = Node("Unsqueeze", {"x"}, {"u"});
  AttrInts(&u, "axes", {0, 3});
  auto s = Node("Squeeze", {"u"}, {"y"});
  AttrInts(&s, "axes", {0});
  auto s_all = Node("Squeeze", {"x"}, {"z"}, "squeeze_all");
  auto c = ExpectSameAfterConvert(
      Model(9, {u, s, s_all}, {{"x", 1, {2, 1, 3}}}, {{"y"}, {"z"}}), {11, 13, 21, 25});
  EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "Unsqueeze", "axes"));
  EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "Squeeze", "axes"));
}

TEST(OpsetConvert, Split13And18) {
  auto n = Node("Split", {"x"}, {"a", "b"});
  AttrI(&n, "axis", 1);
  AttrInts(&n, "split", {1, 3});
  auto c = ExpectSameAfterConvert(Model(9, {n}, {{"x", 1, {2, 4}}}, {{"a"}, {"b"}}),
                                  {11, 13, 18, 21, 25});
  EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "Split", "num_outputs"));
  auto eq = Node("Split", {"x"}, {"a", "b", "c"});
  AttrI(&eq, "axis", 1);
  auto c2 = ExpectSameAfterConvert(Model(9, {eq}, {{"x", 1, {2, 6}}}, {{"a"}, {"b"}, {"c"}}),
                                   {13, 18, 21, 25});
  EXPECT_TRUE(HasDefaultNodeAttr(c2.graph(), "Split", "num_outputs"));
  onnx::ModelProto c3 = Model(9, {eq}, {{"x", 1, {2, 6}}}, {{"a"}, {"b"}, {"c"}});
  ASSERT_TRUE(ConvertOpset(&c3, 17).ok());
  EXPECT_FALSE(HasDefaultNodeAttr(c3.graph(), "Split", "num_outputs"));
}

TEST(OpsetConvert, Reduce13And18) {
  for (const char* op : {"ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd",
                         "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                         "ReduceSumSquare"}) {
    SCOPED_TRACE(op);
    auto abs = Node("Abs", {"x"}, {"ax"});  // ReduceLogSum needs positive input
    auto n = Node(op, {"ax"}, {"y"});
    AttrInts(&n, "axes", {0, -1});
    AttrI(&n, "keepdims", 0);
    auto all = Node(op, {"ax"}, {"z"}, "reduce_all");
    auto c = ExpectSameAfterConvert(Model(9, {abs, n, all}, {{"x", 1, {2, 3, 4}}}, {{"y"}, {"z"}}),
                                    {11, 13, 17, 18, 21, 25});
    EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), op, "axes"));
  }
}

TEST(OpsetConvert, SoftmaxFamily13) {
  for (const char* op : {"Softmax", "LogSoftmax", "Hardmax"}) {
    for (int axis : {-2, 0, 1, 2, 3}) {  // 3: default (attribute absent)
      SCOPED_TRACE(std::string(op) + " axis " + std::to_string(axis));
      auto n = Node(op, {"x"}, {"y"});
      if (axis != 3) AttrI(&n, "axis", axis);
      const int from = axis < 0 ? 11 : 9;
      ExpectSameAfterConvert(Model(from, {n}, {{"x", 1, {2, 3, 4}}}, {{"y"}}), {13, 21, 25});
    }
  }
  // Rank from shape inference (intermediate value), non-last axis.
  auto t = Node("Transpose", {"x"}, {"xt"});
  AttrInts(&t, "perm", {1, 0, 2});
  auto sm = Node("Softmax", {"xt"}, {"y"});
  AttrI(&sm, "axis", 1);
  auto c = ExpectSameAfterConvert(Model(9, {t, sm}, {{"x", 1, {2, 3, 4}}}, {{"y"}}), {13});
  bool has_flatten = false;
  for (const auto& n : c.graph().node()) has_flatten |= n.op_type() == "Flatten";
  EXPECT_TRUE(has_flatten);
}

TEST(OpsetConvert, SoftmaxUnknownRankIsUnimplemented) {
  auto n = Node("Softmax", {"x"}, {"y"}, "sm_unknown");
  AttrI(&n, "axis", 1);
  IO x{"x", 1, {}, /*no_shape=*/true};
  auto m = Model(9, {n}, {x}, {{"y"}});
  const onnx::ModelProto before = m;
  auto problems = UnconvertibleOps(m, 13);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("Softmax (sm_unknown)"), std::string::npos) << problems[0];
  absl::Status s = ConvertOpset(&m, 13);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("sm_unknown"), std::string::npos) << s;
  EXPECT_EQ(m.SerializeAsString(), before.SerializeAsString());  // untouched
  // Converting to 12 does not cross the change: fine.
  EXPECT_TRUE(UnconvertibleOps(m, 12).empty());
  // axis -1 (opset 11+) is the last axis whatever the rank.
  auto n2 = Node("Softmax", {"x"}, {"y"});
  AttrI(&n2, "axis", -1);
  auto m2 = Model(11, {n2}, {x}, {{"y"}});
  EXPECT_TRUE(ConvertOpset(&m2, 13).ok());
}

TEST(OpsetConvert, BatchNormalization) {
  auto n = Node("BatchNormalization", {"x", "s", "b", "mean", "var"}, {"y"});
  AttrI(&n, "spatial", 1);
  AttrF(&n, "epsilon", 1e-3f);
  auto m = Model(7, {n}, {{"x", 1, {2, 3, 4, 5}}}, {{"y"}},
                 {FloatInit("s", {3}, {1.5f, 0.5f, 2}), FloatInit("b", {3}, {0.1f, -0.2f, 0.3f}),
                  FloatInit("mean", {3}, {0.05f, -0.1f, 0.2f}),
                  FloatInit("var", {3}, {0.9f, 1.1f, 0.5f})},
                 3);
  auto c = ExpectSameAfterConvert(m, {8, 9, 13, 14, 15, 21, 25});
  EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "BatchNormalization", "spatial"));
  // spatial=0 cannot be carried.
  auto n0 = n;
  n0.mutable_attribute(0)->set_i(0);
  auto m0 = Model(7, {n0}, {{"x", 1, {2, 3, 4, 5}}}, {{"y"}});
  EXPECT_EQ(ConvertOpset(&m0, 9).code(), absl::StatusCode::kUnimplemented);
  // Unused training outputs are dropped at 14.
  auto n5 = Node("BatchNormalization", {"x", "s", "b", "mean", "var"},
                 {"y", "m_out", "v_out", "sm", "sv"});
  auto m5 = Model(9, {n5}, {{"x", 1, {2, 3, 4, 5}}}, {{"y"}}, {FloatInit("s", {3}, {1, 1, 1}),
                  FloatInit("b", {3}, {0, 0, 0}), FloatInit("mean", {3}, {0, 0, 0}),
                  FloatInit("var", {3}, {1, 1, 1})});
  ASSERT_TRUE(ConvertOpset(&m5, 15).ok());
  EXPECT_EQ(m5.graph().node(0).output_size(), 1);
}

TEST(OpsetConvert, Opset6BroadcastAttributesBecomeNumpyBroadcasting) {
  // Add-6 with broadcast=1, axis=1: b[3] aligned to x's dimension 1 ("bias per channel",
  // what early PyTorch exports wrote). At 7+ numpy aligns trailing dimensions, so b must
  // become [3,1,1]. Expected values computed here: ORT has no Add-6 kernel.
  auto add = Node("Add", {"x", "b"}, {"y"});
  AttrI(&add, "broadcast", 1);
  AttrI(&add, "axis", 1);
  auto m = Model(6, {add}, {{"x", 1, {2, 3, 4, 5}}}, {{"y"}}, {FloatInit("b", {3}, {10, 20, 30})});
  OrtTensor x{"x", {2, 3, 4, 5}, 1, {}, {}};
  for (int k = 0; k < 120; ++k) x.f.push_back(0.25f * k);
  for (int target : {7, 12, 13, 21}) {
    SCOPED_TRACE(target);
    onnx::ModelProto c = m;
    EXPECT_TRUE(UnconvertibleOps(c, target).empty()) << ::testing::PrintToString(UnconvertibleOps(c, target));
    ASSERT_TRUE(ConvertOpset(&c, target).ok());
    EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "Add", "broadcast"));
    EXPECT_FALSE(HasDefaultNodeAttr(c.graph(), "Add", "axis"));
    auto got = RunModel(c, {x}, "add6");
    ASSERT_TRUE(got.ok()) << got.status() << "\n" << c.graph().DebugString();
    ASSERT_EQ((*got)[0].f.size(), 120u);
    for (int k = 0; k < 120; ++k) EXPECT_EQ((*got)[0].f[k], 0.25f * k + 10.0f * (1 + (k / 20) % 3)) << k;
  }
  // Already trailing (axis = rank difference) or no axis: the attributes just go.
  auto mul = Node("Mul", {"x", "s"}, {"y"});
  AttrI(&mul, "broadcast", 1);
  auto m2 = Model(6, {mul}, {{"x", 1, {2, 3}}}, {{"y"}}, {FloatInit("s", {3}, {1, 2, 3})});
  ASSERT_TRUE(ConvertOpset(&m2, 13).ok());
  EXPECT_EQ(m2.graph().node_size(), 1);
  EXPECT_FALSE(HasDefaultNodeAttr(m2.graph(), "Mul", "broadcast"));
  // Gemm-6's broadcast and BatchNormalization-6's is_test are dropped.
  auto gemm = Node("Gemm", {"a", "w", "c"}, {"y"});
  AttrI(&gemm, "broadcast", 1);
  auto m3 = Model(6, {gemm}, {{"a", 1, {2, 3}}}, {{"y"}},
                  {FloatInit("w", {3, 2}, {1, 0, 0, 1, 1, 1}), FloatInit("c", {2}, {5, 7})});
  ASSERT_TRUE(ConvertOpset(&m3, 13).ok());
  EXPECT_FALSE(HasDefaultNodeAttr(m3.graph(), "Gemm", "broadcast"));
  OrtTensor a{"a", {2, 3}, 1, {1, 2, 3, 4, 5, 6}, {}};
  auto gy = RunModel(m3, {a}, "gemm6");
  ASSERT_TRUE(gy.ok()) << gy.status();
  EXPECT_EQ((*gy)[0].f, (std::vector<float>{1 + 3 + 5, 2 + 3 + 7, 4 + 6 + 5, 5 + 6 + 7}));
  // An axis broadcast on an input of unknown rank cannot be carried: named, not guessed.
  auto m4 = Model(6, {add}, {{"x", 1, {}, /*no_shape=*/true}}, {{"y"}}, {FloatInit("b", {3}, {1, 2, 3})});
  auto problems = UnconvertibleOps(m4, 13);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("unknown rank"), std::string::npos) << problems[0];
  EXPECT_EQ(ConvertOpset(&m4, 13).code(), absl::StatusCode::kUnimplemented);
}

TEST(OpsetConvert, ScatterToScatterElements) {
  auto n = Node("Scatter", {"x", "idx", "upd"}, {"y"});
  AttrI(&n, "axis", 1);
  auto m = Model(9, {n}, {{"x", 1, {2, 4}}, {"upd", 1, {2, 2}}}, {{"y"}},
                 {Int64Init("idx", {2, 2}, {3, 0, 1, 2})});
  auto c = ExpectSameAfterConvert(m, {11, 13, 16, 18, 21, 25});
  EXPECT_EQ(c.graph().node(0).op_type(), "ScatterElements");
}

TEST(OpsetConvert, SubgraphsGetConstantNodes) {
  // If(cond): then = Clip(x, 0, .5) -> Softmax(axis 1); else = Unsqueeze(ReduceSum(x,[1]),[1])
  onnx::GraphProto then_g;
  then_g.set_name("then");
  auto clip = Node("Clip", {"x"}, {"tc"}, "then_clip");
  AttrF(&clip, "min", 0.0f);
  AttrF(&clip, "max", 0.5f);
  auto sm = Node("Softmax", {"tc"}, {"then_out"}, "then_softmax");
  AttrI(&sm, "axis", 1);
  *then_g.add_node() = clip;
  *then_g.add_node() = sm;
  AddIO(then_g.add_output(), {"then_out", 1, {2, 3, 4}});
  AddIO(then_g.add_value_info(), {"tc", 1, {2, 3, 4}});
  onnx::GraphProto else_g;
  else_g.set_name("else");
  auto rs = Node("ReduceSum", {"x"}, {"er"}, "else_rs");
  AttrInts(&rs, "axes", {1});
  AttrI(&rs, "keepdims", 0);
  auto us = Node("Unsqueeze", {"er"}, {"eu"}, "else_us");
  AttrInts(&us, "axes", {1});
  auto ex = Node("Expand", {"eu", "shape"}, {"else_out"}, "else_expand");
  *else_g.add_node() = rs;
  *else_g.add_node() = us;
  *else_g.add_node() = ex;
  AddIO(else_g.add_output(), {"else_out", 1, {2, 3, 4}});
  auto ifn = Node("If", {"cond"}, {"y"});
  auto* a = Attr(&ifn, "then_branch");
  a->set_type(onnx::AttributeProto::GRAPH);
  *a->mutable_g() = then_g;
  a = Attr(&ifn, "else_branch");
  a->set_type(onnx::AttributeProto::GRAPH);
  *a->mutable_g() = else_g;
  auto m = Model(9, {ifn}, {{"x", 1, {2, 3, 4}}, {"cond", 9, {}}}, {{"y"}},
                 {Int64Init("shape", {3}, {2, 3, 4})});
  for (int64_t cond : {0, 1}) {
    SCOPED_TRACE(cond);
    auto inputs = RandomInputs(m, 5);
    for (auto& t : inputs) {
      if (t.name == "cond") t.i = {cond};
    }
    auto c = ExpectSameAfterConvert(m, {11, 13, 21, 25}, inputs);
    // Constants inside subgraphs are Constant nodes, not main-graph initializers.
    EXPECT_EQ(c.graph().initializer_size(), 1);
    const auto& tb = c.graph().node(0).attribute(0).g();
    int constants = 0;
    for (const auto& n : tb.node()) constants += n.op_type() == "Constant";
    EXPECT_EQ(constants, 2);  // Clip min and max
  }
}

TEST(OpsetConvert, PreservesEverythingElse) {
  auto n = Node("Unsqueeze", {"x"}, {"y"});
  AttrInts(&n, "axes", {0});
  auto w = Node("Add", {"y", "w"}, {"z"}, "add");
  auto m = Model(9, {n, w}, {{"x", 1, {3}}}, {{"z"}});
  m.set_doc_string("doc");
  auto* md = m.add_metadata_props();
  md->set_key("k");
  md->set_value("v");
  auto* ms = m.add_opset_import();
  ms->set_domain("com.microsoft");
  ms->set_version(1);
  auto* init = m.mutable_graph()->add_initializer();
  init->set_name("w");
  init->set_data_type(1);
  init->add_dims(3);
  init->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* e = init->add_external_data();
  e->set_key("location");
  e->set_value("weights.bin");
  AddIO(m.mutable_graph()->add_value_info(), {"y", 1, {1, 3}});
  onnx::ModelProto c = m;
  ASSERT_TRUE(ConvertOpset(&c, 21).ok());
  EXPECT_EQ(c.doc_string(), "doc");
  EXPECT_EQ(c.metadata_props(0).value(), "v");
  EXPECT_EQ(c.graph().initializer(0).SerializeAsString(), init->SerializeAsString());
  EXPECT_EQ(c.graph().value_info(0).SerializeAsString(),
            m.graph().value_info(0).SerializeAsString());
  EXPECT_EQ(c.opset_import(1).domain(), "com.microsoft");
  EXPECT_EQ(c.opset_import(1).version(), 1);
  EXPECT_EQ(c.graph().node(1).SerializeAsString(), w.SerializeAsString());
  EXPECT_GE(c.ir_version(), 10);
  // The new initializer's name is unique.
  EXPECT_EQ(c.graph().initializer_size(), 2);
  EXPECT_NE(c.graph().initializer(1).name(), "w");
}

TEST(OpsetConvert, Errors) {
  auto n = Node("Relu", {"x"}, {"y"});
  auto m = Model(13, {n}, {{"x", 1, {3}}}, {{"y"}});
  EXPECT_EQ(ConvertOpset(&m, 11).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ConvertOpset(&m, kMaxSupportedOpset + 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(UnconvertibleOps(m, 11).empty());
  EXPECT_TRUE(ConvertOpset(&m, 13).ok());  // same opset: no-op
  EXPECT_EQ(DefaultDomainOpset(m), 13);
  onnx::ModelProto none;
  EXPECT_EQ(DefaultDomainOpset(none), 0);
}

// --- real models ----------------------------------------------------------------------------

bool LoadModel(const std::string& path, onnx::ModelProto* m) {
  std::ifstream in(path, std::ios::binary);
  return in && m->ParseFromIstream(&in);
}

void CheckRealModel(const std::string& file, const std::map<std::string, int64_t>& dims,
                    const std::vector<int64_t>& shape) {
  const std::string path = std::string(SQ_MODELS_DIR) + "/" + file;
  onnx::ModelProto m;
  if (!LoadModel(path, &m)) GTEST_SKIP() << path << " not present";
  auto inputs = testing::MakeRandomInputs(path, 3);
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  ASSERT_EQ(inputs->size(), 1u);
  (*inputs)[0].shape = shape;
  size_t n = 1;
  for (auto d : shape) n *= d;
  (*inputs)[0].f.resize(n);
  for (size_t k = 0; k < n; ++k) (*inputs)[0].f[k] = std::sin(0.37 * k);
  auto ref = testing::RunOrt(path, *inputs);
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto ref_noopt = RunModel(m, *inputs, "real_ref", /*disable_opt=*/true);
  ASSERT_TRUE(ref_noopt.ok()) << ref_noopt.status();
  for (int target : {13, 17, 18, 21, 25}) {
    SCOPED_TRACE(file + " -> opset " + std::to_string(target));
    EXPECT_TRUE(UnconvertibleOps(m, target).empty())
        << ::testing::PrintToString(UnconvertibleOps(m, target));
    onnx::ModelProto c = m;
    ASSERT_TRUE(ConvertOpset(&c, target).ok());
    auto got = RunModel(c, *inputs, "real_conv");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_LE(testing::MaxRelativeError(*got, *ref), 1e-5);
    auto got_noopt = RunModel(c, *inputs, "real_conv", /*disable_opt=*/true);
    ASSERT_TRUE(got_noopt.ok()) << got_noopt.status();
    EXPECT_LE(testing::MaxRelativeError(*got_noopt, *ref_noopt), 1e-6);
  }
}

TEST(OpsetConvertRealModels, PPOCRv4Rec) {
  CheckRealModel("ch_PP-OCRv4_rec_infer.onnx", {}, {1, 3, 48, 320});
}

TEST(OpsetConvertRealModels, PPOCRMobileCls) {
  CheckRealModel("ch_ppocr_mobile_v2.0_cls_infer.onnx", {}, {1, 3, 48, 192});
}

}  // namespace
}  // namespace sq
