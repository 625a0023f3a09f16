// The engine's front door: quantize one ONNX model file into another, or inspect one.
// This is the only API the CLI and the gRPC service use.
//
// Threading: QuantizeModelFile may be called concurrently from several threads on
// different outputs. It uses up to `options.threads` worker threads of its own. The
// callbacks in RunHooks are invoked from the calling thread, between layers.
//
// Atomicity: the output (model file and, when used, its external data file) is written
// to temporary names in the output's directory and renamed into place only on success;
// on any error or cancellation nothing is left under the output names.
#ifndef SQ_CORE_ENGINE_H_
#define SQ_CORE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/options.h"
#include "core/report.h"

namespace sq {

// --split auto splits a layer when the split lowers its weight error by at least this much:
// 6.02 dB is what one more bit per weight buys plain linear quantization, so a split that
// gains less is worth less than a bit, while it costs two extra branches.
inline constexpr double kAutoSplitMinGainDb = 6.02;

struct Progress {
  std::string stage;        // "load", "discover", "convert", "transform", "write", "verify", "done"
  int layer_index = 0;      // layers finished so far in stage "transform"
  int layer_count = 0;
  std::string layer_name;   // the layer just finished, if any
};

struct RunHooks {
  std::function<void(const Progress&)> on_progress;  // may be empty
  std::function<bool()> is_cancelled;                // may be empty; polled between layers
};

// Errors:
//   InvalidArgument   - not an ONNX model, truncated, hostile external-data path, bad
//                       options, no quantizable layer, an op the opset conversion cannot
//                       carry (the message names the op and a format that works instead).
//   NotFound          - input file or an external data file missing.
//   Cancelled         - is_cancelled() returned true.
//   ResourceExhausted - out of disk space while writing.
//   FailedPrecondition - verification (options.verify): the FP32 model runs in ONNX Runtime
//                       but the artifact does not, or gives non-finite outputs or other
//                       shapes (core/verify/verify.h); nothing is written.
//   Internal          - a bug; the message says where.
absl::StatusOr<ModelReport> QuantizeModelFile(const std::string& input_path,
                                              const std::string& output_path,
                                              const QuantizeOptions& options,
                                              const RunHooks& hooks = {});

struct LayerInfo {
  std::string name, op_type, weight, graph;
  std::vector<int64_t> shape;
  int shared_by = 1;
};

struct ModelInfo {
  int64_t ir_version = 0;
  int opset = 0;                          // default domain
  std::map<std::string, int64_t> opset_imports;
  std::map<std::string, int64_t> op_histogram;
  std::vector<LayerInfo> layers;          // quantizable layers
  std::vector<std::string> unsupported_ops;  // ops the qdq opset conversion cannot carry
  int64_t weight_bytes = 0;               // FP32 bytes in quantizable weights
  int64_t model_bytes = 0;                // file + external data
  // Estimated output bytes per bits for the default options (ort-cpu, split, channel).
  std::map<int, int64_t> estimated_output_bytes;
  bool uses_external_data = false;
};

absl::StatusOr<ModelInfo> InspectModelFile(const std::string& input_path);

// The library's version string ("0.1.0").
const char* Version();

}  // namespace sq

#endif  // SQ_CORE_ENGINE_H_
