// The values of a graph's constants as FP32, for the activation stage: FP32 initializers
// (inline or in external data given as buffers), Constant nodes, and DequantizeLinear of
// constant codes (int8/uint8/int4/uint4/int2/uint2; per-tensor, per-axis or blocked), which
// is how a weight-only QDQ artifact holds its weights.
#ifndef SQ_CORE_ACTIVATIONS_CONSTANTS_H_
#define SQ_CORE_ACTIVATIONS_CONSTANTS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/verify/ort_runner.h"
#include "onnx/onnx_pb.h"

namespace sq {

struct ConstantValue {
  std::vector<int64_t> dims;
  std::vector<float> values;
};

class ConstantTable {
 public:
  // `graph` and the buffers must outlive the table.
  ConstantTable(const onnx::GraphProto& graph, std::vector<OrtModelSource::File> external_files);

  // nullptr when `name` is not such a constant (or its data cannot be read).
  const ConstantValue* Get(const std::string& name);
  bool IsConstant(const std::string& name);
  // Drops the cached value of `name` (its tensor was rewritten) and decodes it again.
  const ConstantValue* Reload(const std::string& name);

 private:
  const ConstantValue* Decode(const std::string& name);

  const onnx::GraphProto& graph_;
  std::vector<OrtModelSource::File> external_;
  std::map<std::string, const onnx::TensorProto*> tensors_;  // initializers, Constant values
  std::map<std::string, const onnx::NodeProto*> dq_;         // DequantizeLinear outputs
  std::map<std::string, std::unique_ptr<ConstantValue>> cache_;
};

// Raw bytes of a tensor's data (raw_data, or external data found in `external` by
// location); empty with ok=false when neither.
bool TensorRawBytes(const onnx::TensorProto& t, const std::vector<OrtModelSource::File>& external,
                    std::string* out);

}  // namespace sq

#endif  // SQ_CORE_ACTIVATIONS_CONSTANTS_H_
