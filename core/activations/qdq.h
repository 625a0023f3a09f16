// Static activation quantization of a weight-only QDQ graph: QuantizeLinear ->
// DequantizeLinear pairs with per-tensor ranges on the activations of the quantized layers,
// and their biases as int32, the layout ONNX Runtime's QDQ optimizer fuses into integer
// kernels (QLinearConv, QLinearMatMul / MatMulIntegerToFloat) and NPU toolchains consume.
//
// A quantized layer op is a Conv, ConvTranspose, MatMul or Gemm of the main graph whose
// weight is a DequantizeLinear of constant codes (every branch of a split layer is one).
// Its activation tensors are its float inputs that are not constant and its output; for a
// split layer (branch ops on the same input whose outputs an Add chain sums), the sum is
// the output: the branches' partial outputs are added before requantization, as integer
// accumulators would be, not requantized one by one (on the OCR recognizer requantizing each
// branch costs 5 points exact at W8A8 and 40 at W4A8, docs/accuracy.md). Each
// such tensor t gets one pair (whatever the number of ops that read it): Q(t) -> DQ -> t',
// and every main-graph reader of t reads t' instead; a graph output keeps its FP32 value.
//
// Parameters. For a range [lo, hi] (lo <= 0 <= hi) and the type's integer span
// [qmin, qmax]: scale = (hi - lo) / (qmax - qmin) (1 for an all-zero tensor), zero point =
// round(qmin - lo / scale) clamped to the span; 0 is then exactly representable. A layer's
// bias becomes int32 codes with scale input_scale * weight_scale[c] (zero point 0) when its
// weight DequantizeLinear is per-tensor or per-output-channel and every code fits in int32;
// otherwise it stays FP32 (the op then runs in float after dequantization).
#ifndef SQ_CORE_ACTIVATIONS_QDQ_H_
#define SQ_CORE_ACTIVATIONS_QDQ_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/activations/calibration.h"
#include "core/activations/constants.h"
#include "core/options.h"
#include "onnx/onnx_pb.h"

namespace sq {

// The activation tensors of the quantized layer ops, in graph order, without repeats.
std::vector<std::string> ActivationTensors(const onnx::GraphProto& graph);

struct ActivationQdqResult {
  int quantized_ops = 0;   // layer ops with every activation quantized
  int tensors = 0;         // Q/DQ pairs inserted
  int int32_biases = 0;    // biases rewritten as int32
  int float_biases = 0;    // biases left FP32 (blocked weight scales, overflow)
};

// Inserts the pairs. `ranges` must hold every tensor of ActivationTensors (InvalidArgument
// naming the first missing one). `constants` reads biases and weight scales. `type` is
// kInt8 or kUint8.
absl::StatusOr<ActivationQdqResult> InsertActivationQdq(
    onnx::GraphProto* graph, const std::map<std::string, TensorRange>& ranges,
    ActivationType type, ConstantTable* constants);

// The (scale, zero point) of a range for the type (exposed for tests).
struct ActivationParams {
  float scale = 1;
  int32_t zero_point = 0;
};
ActivationParams ChooseActivationParams(float lo, float hi, ActivationType type);

}  // namespace sq

#endif  // SQ_CORE_ACTIVATIONS_QDQ_H_
