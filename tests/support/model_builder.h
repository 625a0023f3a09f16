// Builds small ONNX models in code for tests: inputs, outputs, initializers (inline or
// external), Constant nodes, nodes with attributes and subgraphs.
#ifndef SQ_TESTS_SUPPORT_MODEL_BUILDER_H_
#define SQ_TESTS_SUPPORT_MODEL_BUILDER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "onnx/onnx_pb.h"

namespace sq::testing {

class GraphBuilder {
 public:
  explicit GraphBuilder(onnx::GraphProto* graph) : g_(graph) {}
  onnx::GraphProto* graph() { return g_; }

  // dims: -1 = symbolic ("N"). elem_type: onnx TensorProto data type.
  void Input(const std::string& name, const std::vector<int64_t>& dims, int elem_type = 1);
  void Output(const std::string& name, int elem_type = 1);
  // FP32 initializer stored in raw_data.
  std::string Initializer(const std::string& name, const std::vector<int64_t>& dims,
                          const std::vector<float>& values);
  std::string Int64Initializer(const std::string& name, const std::vector<int64_t>& dims,
                               const std::vector<int64_t>& values);
  // A Constant node whose `value` is the FP32 tensor; returns its output name.
  std::string Constant(const std::string& name, const std::vector<int64_t>& dims,
                       const std::vector<float>& values);
  onnx::NodeProto* Node(const std::string& op, const std::vector<std::string>& inputs,
                        const std::vector<std::string>& outputs, const std::string& name = "");

 private:
  onnx::GraphProto* g_;
};

void AttrInt(onnx::NodeProto* n, const std::string& name, int64_t v);
void AttrFloat(onnx::NodeProto* n, const std::string& name, float v);
void AttrInts(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v);
onnx::GraphProto* AttrGraph(onnx::NodeProto* n, const std::string& name);

// A model with one graph, default-domain opset `opset`.
onnx::ModelProto NewModel(int opset = 17, int64_t ir_version = 8);

// Deterministic heavy-tailed weights: mostly N(0, scale) with ~1% outliers at 8-20x.
std::vector<float> TestWeights(int64_t n, uint64_t seed, float scale = 0.1f);

absl::Status SaveModel(const onnx::ModelProto& model, const std::string& path);
// The service tests' model: x[1,dim] -> MatMul(w0) -> ... -> MatMul(w<layers-1>) -> y[1,dim]
// (nodes mm0.., opset 13), weights N(0, 0.1) from `seed` with every 97th at 1.5 — the
// outliers SplitQuant is for. Different seeds give different models (different ids).
absl::Status WriteMatMulChain(const std::string& path, int layers = 2, int dim = 64, uint32_t seed = 1);
// Moves every initializer of at least `min_bytes` (main graph) to `location` next to the
// model (offsets aligned to 64), then saves.
absl::Status SaveModelWithExternalData(onnx::ModelProto model, const std::string& path,
                                       const std::string& location, int64_t min_bytes = 64);

// A fresh empty directory under $TEST_TMPDIR (or /tmp); "" when it cannot be made. It is
// removed, with everything in it, after the test program's last test (ctest runs each test in
// a process of its own), so a run leaves nothing behind; SQ_KEEP_TEST_DIRS=1 keeps them to
// look at a failing test's files.
std::string MakeTempDir(const std::string& prefix);

// A NumPy .npy image (format 1.0) of `shape` with dtype `descr` ("<f4", "<f8", "<i8", ...)
// and raw little-endian `data`: what tests hand to verification and calibration.
std::string NpyImage(const std::string& descr, const std::vector<int64_t>& shape, const void* data,
                     size_t bytes);
std::string NpyF32(const std::vector<int64_t>& shape, const std::vector<float>& values);

}  // namespace sq::testing

#endif  // SQ_TESTS_SUPPORT_MODEL_BUILDER_H_
