// Writes the fuzzers' seed inputs (scripts/fuzz.sh runs it once per build): the hostile
// corpus and a few valid models for `model`, and small well-formed inputs for the others.
//
//   sq_fuzz_seeds DIR   -> DIR/<target>/<n>
#include <sys/stat.h>
#include <zip.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "onnx/onnx_pb.h"
#include "tests/support/hostile_corpus.h"
#include "tests/support/model_builder.h"

namespace {

using sq::testing::GraphBuilder;

void Put(const std::string& dir, int* n, const std::string& bytes) {
  std::ofstream(absl::StrCat(dir, "/seed-", (*n)++), std::ios::binary) << bytes;
}

std::string FileBytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string Npy(const std::string& descr, const std::string& shape, const std::string& data) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header + data;
}

onnx::ModelProto Mlp() {
  onnx::ModelProto m = sq::testing::NewModel(17);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {-1, 8});
  g.Initializer("w1", {8, 6}, sq::testing::TestWeights(48, 1));
  g.Initializer("w2", {4, 6}, sq::testing::TestWeights(24, 2));
  g.Node("MatMul", {"x", "w1"}, {"h"}, "fc1");
  sq::testing::AttrInt(g.Node("Gemm", {"h", "w2"}, {"y"}, "fc2"), "transB", 1);
  g.Output("y");
  return m;
}

onnx::ModelProto Conv() {
  onnx::ModelProto m = sq::testing::NewModel(13);
  GraphBuilder g(m.mutable_graph());
  g.Input("x", {1, 2, 5, 5});
  g.Initializer("cw", {4, 2, 3, 3}, sq::testing::TestWeights(72, 3));
  g.Initializer("table", {6, 4}, sq::testing::TestWeights(24, 4));
  g.Node("Conv", {"x", "cw"}, {"y"}, "conv");
  g.Output("y");
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: sq_fuzz_seeds DIR\n");
    return 2;
  }
  const std::string root = argv[1];
  for (const char* t : {"", "/model", "/external_data", "/options", "/tensor_file", "/upload"}) {
    ::mkdir((root + t).c_str(), 0755);
  }
  int n = 0;
  const std::string model = root + "/model";
  Put(model, &n, Mlp().SerializeAsString());
  Put(model, &n, Conv().SerializeAsString());
  for (const sq::testing::HostileCase& c : sq::testing::WriteHostileCorpus(root + "/hostile")) {
    const std::string bytes = FileBytes(c.model);
    if (bytes.size() <= (1 << 16)) Put(model, &n, bytes);
  }

  n = 0;
  for (const char* s : {"data.bin\n0\n64", "data.bin\n4032\n64", "../secret.bin\n0\n64", "out.bin\n\n",
                        "sub/x.bin\n0\n64", "sub/../data.bin\n\n", "/etc/passwd\n\n", "etc/passwd\n0\n16",
                        "data.bin\n9223372036854775798\n1728", "data.bin\n-1\n64", "\n\n"}) {
    Put(root + "/external_data", &n, s);
  }

  n = 0;
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{"m.onnx", "-o", "o.onnx", "--bits", "2"},
                                             {"m.onnx", "-o", "o.onnx", "--layer", "fc.*=bits:8,split:off"},
                                             {"m.onnx", "-o", "o.onnx", "--granularity=block", "--block-size", "16"},
                                             {"m.onnx", "-o", "o.onnx", "--target", "qdq", "--form", "folded"},
                                             {"m.onnx", "-o", "o.onnx", "--bpw-budget", "2.5", "--verify", "off"},
                                             {"m.onnx", "-o", "o.onnx", "--verify-input", "x.npz", "--split", "auto"}}) {
    std::string joined;
    for (size_t k = 0; k < args.size(); ++k) joined += (k ? std::string(1, '\0') : "") + args[k];
    Put(root + "/options", &n, joined);
  }

  n = 0;
  const std::string tf = root + "/tensor_file";
  Put(tf, &n, Npy("<f4", "2, 2", std::string(16, '\0')));
  Put(tf, &n, Npy("<i8", "3,", std::string(24, '\1')));
  Put(tf, &n, Npy("|b1", "", std::string(1, '\1')));
  onnx::TensorProto p;
  p.set_name("x");
  p.set_data_type(1);
  p.add_dims(2);
  p.set_raw_data(std::string(8, '\0'));
  Put(tf, &n, p.SerializeAsString());
  const std::string npz = root + "/seed.npz";
  int err = 0;
  if (zip_t* z = zip_open(npz.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err)) {
    static const std::string a = Npy("<f4", "1, 2", std::string(8, '\0'));
    zip_int64_t i = zip_file_add(z, "x.npy", zip_source_buffer(z, a.data(), a.size(), 0), 0);
    zip_set_file_compression(z, i, ZIP_CM_DEFLATE, 0);
    zip_close(z);
    Put(tf, &n, FileBytes(npz));
  }

  n = 0;
  // One file "m.onnx" of 16 bytes sent in two chunks; two files; a vanishing client.
  auto upload = [](std::vector<std::pair<std::string, int>> files, std::string tail) {
    std::string s(1, static_cast<char>(files.size() - 1));
    for (auto& [name, size] : files) {
      s += static_cast<char>(name.size());
      s += name;
      s += static_cast<char>((size + 16) >> 8);
      s += static_cast<char>((size + 16) & 0xff);
    }
    return s + tail;
  };
  Put(root + "/upload", &n, upload({{"m.onnx", 16}}, std::string("\x08", 1) + std::string(8, 'a') +
                                                       std::string("\x08", 1) + std::string(8, 'b')));
  Put(root + "/upload", &n, upload({{"m.onnx", 4}, {"m.onnx.data", 4}}, std::string("\x08", 1) + "abcdefgh"));
  Put(root + "/upload", &n, upload({{"m.onnx", 64}}, std::string("\x04", 1) + "abcd\xff"));
  std::printf("seeds written under %s\n", root.c_str());
  return 0;
}
