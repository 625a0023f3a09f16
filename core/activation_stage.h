// The engine's activation stages (core/activations/ holds the pieces):
//
//   "calibration" (after load)  the calibration samples read and checked against the graph,
//                               so a bad file fails the run before any work
//   "fold" (full-integer output, before discovery)  BatchNormalization and per-channel
//                               affine ops folded into the layer before them
//   "split-activations" (before discovery)  the activation split on the FP32 graph; the
//                               layer ops it creates are discovered and quantized like the
//                               model's own
//   "activations" (after transform)  ranges for the activations of every quantized layer
//                               op, from calibration runs of the model with its quantized
//                               weights in ONNX Runtime, or the data-free estimate; then the
//                               Q/DQ pairs and int32 biases
#ifndef SQ_CORE_ACTIVATION_STAGE_H_
#define SQ_CORE_ACTIVATION_STAGE_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/activations/calibration.h"
#include "core/model_io.h"
#include "core/options.h"
#include "core/report.h"
#include "core/verify/ort_runner.h"
#include "onnx/onnx_pb.h"

namespace sq {

// Empty when no stage reads samples or none are given.
absl::StatusOr<std::vector<CalibrationSample>> PrepareCalibration(const onnx::GraphProto& graph,
                                                                  const QuantizeOptions& options);

// Stage "fold" (full-integer output, before the activation split): BatchNormalization and
// per-channel Mul/Add after a layer folded into its weight and bias (activations/fold.h).
// `seeds` receives data-free ranges of the folded layers' outputs (from the norms' statistics).
absl::Status FoldStage(LoadedModel& model, const QuantizeOptions& options,
                       std::map<std::string, TensorRange>* seeds, ActivationReport* report);

absl::Status SplitActivationsStage(LoadedModel& model, const QuantizeOptions& options,
                                   const std::vector<CalibrationSample>& samples,
                                   const std::map<std::string, TensorRange>& seeds, int threads,
                                   ActivationReport* report);

// `data_path`: the artifact's external data file as written so far (mapped for the runs),
// named `data_location` by the model's tensors; both empty when the weights are inline.
// `seeds`: FoldStage's ranges, for the data-free estimate.
absl::Status QuantizeActivationsStage(onnx::ModelProto* proto, const std::string& data_path,
                                      const std::string& data_location,
                                      const QuantizeOptions& options,
                                      const std::vector<CalibrationSample>& samples,
                                      const std::map<std::string, TensorRange>& seeds, int threads,
                                      ActivationReport* report);

// The external data files of a loaded model as in-memory buffers (mapped), by location.
absl::StatusOr<std::vector<OrtModelSource::File>> ExternalFilesOf(const LoadedModel& model);

}  // namespace sq

#endif  // SQ_CORE_ACTIVATION_STAGE_H_
