// Fuzzes the external-data resolver: a model whose one weight lives in a file named by the
// input (location, offset, length, one per line) next to a folder with a data file, a
// sub-folder, a symlink out and a file outside. Whatever the strings, loading either fails
// with a status or reads bytes that lie inside the model's folder, within the file.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "core/file_util.h"
#include "core/model_io.h"
#include "onnx/onnx_pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string& ModelDir() {
  static const std::string* dir = [] {
    const std::string root = sq::fuzz::ScratchDir();
    auto* d = new std::string(root + "/model");
    ::mkdir(d->c_str(), 0755);
    ::mkdir((*d + "/sub").c_str(), 0755);
    std::string bytes(4096, '\x3f');
    sq::fuzz::WriteBytes(*d + "/data.bin", reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    sq::fuzz::WriteBytes(*d + "/sub/x.bin", reinterpret_cast<const uint8_t*>(bytes.data()), 64);
    sq::fuzz::WriteBytes(root + "/secret.bin", reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    (void)::symlink("../secret.bin", (*d + "/out.bin").c_str());
    (void)::symlink("/etc", (*d + "/etc").c_str());
    return d;
  }();
  return *dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = ModelDir();
  std::vector<std::string> fields =
      absl::StrSplit(std::string(reinterpret_cast<const char*>(data), size), '\n');
  fields.resize(3);
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  onnx::GraphProto* g = m.mutable_graph();
  g->set_name("g");
  onnx::TensorProto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(4);
  w->add_dims(4);
  w->set_data_location(onnx::TensorProto::EXTERNAL);
  const char* keys[] = {"location", "offset", "length"};
  for (int k = 0; k < 3; ++k) {
    if (k > 0 && fields[k].empty()) continue;
    auto* e = w->add_external_data();
    e->set_key(keys[k]);
    e->set_value(fields[k]);
  }
  onnx::ValueInfoProto* x = g->add_input();
  x->set_name("x");
  x->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  onnx::NodeProto* n = g->add_node();
  n->set_op_type("MatMul");
  n->add_input("x");
  n->add_input("w");
  n->add_output("y");
  g->add_output()->set_name("y");
  const std::string bytes = m.SerializeAsString();
  const std::string path = dir + "/m.onnx";
  sq::fuzz::WriteBytes(path, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());

  absl::StatusOr<std::string> resolved = sq::ResolveInsideDirectory(dir, fields[0]);
  if (resolved.ok()) {
    char real_dir[PATH_MAX], real_file[PATH_MAX];
    SQ_FUZZ_CHECK(::realpath(dir.c_str(), real_dir) != nullptr, "model folder resolves");
    if (::realpath(resolved->c_str(), real_file) != nullptr) {
      const std::string d(real_dir), f(real_file);
      SQ_FUZZ_CHECK(f.compare(0, d.size() + 1, d + "/") == 0, "a resolved location stays in the folder");
    }
  }
  absl::StatusOr<std::unique_ptr<sq::LoadedModel>> loaded = sq::LoadedModel::FromFile(path);
  if (loaded.ok()) {
    SQ_FUZZ_CHECK(resolved.ok(), "a model that loads has a resolvable location");
  }
  return 0;
}
