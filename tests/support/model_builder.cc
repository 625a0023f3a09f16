#include "tests/support/model_builder.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"

namespace sq::testing {

void GraphBuilder::Input(const std::string& name, const std::vector<int64_t>& dims, int elem_type) {
  auto* v = g_->add_input();
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(elem_type);
  auto* shape = t->mutable_shape();
  for (int64_t d : dims) {
    auto* dim = shape->add_dim();
    if (d < 0) {
      dim->set_dim_param("N");
    } else {
      dim->set_dim_value(d);
    }
  }
}

void GraphBuilder::Output(const std::string& name, int elem_type) {
  auto* v = g_->add_output();
  v->set_name(name);
  v->mutable_type()->mutable_tensor_type()->set_elem_type(elem_type);
}

std::string GraphBuilder::Initializer(const std::string& name, const std::vector<int64_t>& dims,
                                      const std::vector<float>& values) {
  auto* t = g_->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4));
  return name;
}

std::string GraphBuilder::Int64Initializer(const std::string& name, const std::vector<int64_t>& dims,
                                           const std::vector<int64_t>& values) {
  auto* t = g_->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::INT64);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(std::string(reinterpret_cast<const char*>(values.data()), values.size() * 8));
  return name;
}

std::string GraphBuilder::Constant(const std::string& name, const std::vector<int64_t>& dims,
                                   const std::vector<float>& values) {
  onnx::NodeProto* n = Node("Constant", {}, {name}, name + "_const");
  auto* a = n->add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  auto* t = a->mutable_t();
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t->add_dims(d);
  for (float v : values) t->add_float_data(v);
  return name;
}

onnx::NodeProto* GraphBuilder::Node(const std::string& op, const std::vector<std::string>& inputs,
                                    const std::vector<std::string>& outputs, const std::string& name) {
  auto* n = g_->add_node();
  n->set_op_type(op);
  if (!name.empty()) n->set_name(name);
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  return n;
}

void AttrInt(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void AttrFloat(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

void AttrInts(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

onnx::GraphProto* AttrGraph(onnx::NodeProto* n, const std::string& name) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::GRAPH);
  a->mutable_g()->set_name(name);
  return a->mutable_g();
}

onnx::ModelProto NewModel(int opset, int64_t ir_version) {
  onnx::ModelProto m;
  m.set_ir_version(ir_version);
  m.set_producer_name("sq-tests");
  auto* o = m.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  m.mutable_graph()->set_name("test");
  return m;
}

std::vector<float> TestWeights(int64_t n, uint64_t seed, float scale) {
  std::vector<float> out(static_cast<size_t>(n));
  uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
  auto next = [&]() {
    s += 0x9E3779B97F4A7C15ULL;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  };
  auto uniform = [&]() { return (static_cast<double>(next() >> 11) + 0.5) / 9007199254740992.0; };
  for (auto& v : out) {
    double g = std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform());
    if (uniform() < 0.01) g *= 8.0 + 12.0 * uniform();
    v = static_cast<float>(g * scale);
  }
  return out;
}

absl::Status SaveModel(const onnx::ModelProto& model, const std::string& path) {
  std::string bytes;
  if (!model.SerializeToString(&bytes)) return absl::InternalError("serialise failed");
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return f.good() ? absl::OkStatus() : absl::InternalError("write failed: " + path);
}

absl::Status SaveModelWithExternalData(onnx::ModelProto model, const std::string& path,
                                       const std::string& location, int64_t min_bytes) {
  std::string dir = path.substr(0, path.find_last_of('/'));
  std::ofstream data(dir + "/" + location, std::ios::binary);
  int64_t offset = 0;
  for (auto& t : *model.mutable_graph()->mutable_initializer()) {
    if (!t.has_raw_data() || static_cast<int64_t>(t.raw_data().size()) < min_bytes) continue;
    int64_t pad = (64 - offset % 64) % 64;
    data.write(std::string(pad, '\0').data(), pad);
    offset += pad;
    data.write(t.raw_data().data(), static_cast<std::streamsize>(t.raw_data().size()));
    int64_t len = static_cast<int64_t>(t.raw_data().size());
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
    auto add = [&](const char* k, const std::string& v) {
      auto* e = t.add_external_data();
      e->set_key(k);
      e->set_value(v);
    };
    add("location", location);
    add("offset", std::to_string(offset));
    add("length", std::to_string(len));
    offset += len;
  }
  if (!data.good()) return absl::InternalError("external data write failed");
  data.close();
  return SaveModel(model, path);
}

absl::Status WriteMatMulChain(const std::string& path, int layers, int dim, uint32_t seed) {
  onnx::ModelProto m = NewModel(13);
  m.set_producer_name("sq_tests");
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, dim});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::string prev = "x";
  for (int l = 0; l < layers; ++l) {
    std::vector<float> w(static_cast<size_t>(dim) * dim);
    for (size_t i = 0; i < w.size(); ++i) w[i] = i % 97 == 0 ? 1.5f : normal(rng);
    const std::string name = g.Initializer("w" + std::to_string(l), {dim, dim}, w);
    const std::string out = l + 1 == layers ? "y" : "h" + std::to_string(l);
    g.Node("MatMul", {prev, name}, {out}, "mm" + std::to_string(l));
    prev = out;
  }
  g.Output("y");
  return SaveModel(m, path);
}

std::string NpyImage(const std::string& descr, const std::vector<int64_t>& shape, const void* data,
                     size_t bytes) {
  std::string dims;
  for (int64_t d : shape) absl::StrAppend(&dims, d, ",");
  if (shape.size() > 1) dims.pop_back();
  std::string header = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (",
                                    dims, "), }");
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  out.append(static_cast<const char*>(data), bytes);
  return out;
}

std::string NpyF32(const std::vector<int64_t>& shape, const std::vector<float>& values) {
  return NpyImage("<f4", shape, values.data(), values.size() * sizeof(float));
}

}  // namespace sq::testing
