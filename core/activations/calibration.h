// Calibration for static activation quantization: read the user's sample inputs and run a
// model on them in ONNX Runtime, recording the range of every tensor asked for.
//
// Samples. Each path in QuantizeOptions::calibration_inputs is a file holding one set of
// graph inputs (.npy for a single-input model, .npz, or one .pb TensorProto; the reader of
// core/verify/tensor_file.h, which verification uses too), or a directory whose entries are
// samples in name order: files as above, or subdirectories of .pb files (one tensor each:
// the ONNX test-data layout, test_data_set_N/input_K.pb). Every sample must give every graph
// input that is not an initializer, with that input's element type, rank and fixed dims,
// and only finite values; anything else is InvalidArgument naming the file and the problem.
//
// Ranges. The model is run once per sample (twice for the percentile method: min/max first,
// then a histogram over that span). A range always contains 0, so that zero is exactly
// representable by the quantized tensor (and a zero-padded Conv input stays exact).
#ifndef SQ_CORE_ACTIVATIONS_CALIBRATION_H_
#define SQ_CORE_ACTIVATIONS_CALIBRATION_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/options.h"
#include "core/verify/ort_runner.h"
#include "onnx/onnx_pb.h"

namespace sq {

// At most this many samples are read (a guard against a directory of thousands of files:
// ranges settle after a few dozen).
inline constexpr int kMaxCalibrationSamples = 1024;

struct CalibrationSample {
  std::string source;  // the file (or directory) it came from, for messages
  std::vector<OrtTensor> tensors;
};

// Reads and checks the samples against `graph` (the model's main graph). InvalidArgument
// for no sample, too many, or a sample that does not fit (see above); NotFound for a
// missing path.
absl::StatusOr<std::vector<CalibrationSample>> ReadCalibrationSet(
    const std::vector<std::string>& paths, const onnx::GraphProto& graph);

// The span of one tensor: [lo, hi] over all its values (lo <= 0 <= hi), and, when asked
// and the tensor has rank >= 2, per channel (axis 1) min/max.
struct TensorRange {
  float lo = 0;
  float hi = 0;
  std::vector<float> channel_lo;
  std::vector<float> channel_hi;
};

struct CalibrationRequest {
  std::vector<std::string> tensors;  // per-tensor ranges wanted
  std::vector<std::string> channel_tensors;  // also per-channel min/max (a subset or not)
  CalibrationMethod method = CalibrationMethod::kPercentile;
  double percentile = 99.99;
  int threads = 1;  // ONNX Runtime intra-op threads
};

// Runs `model` (its external data given as buffers by location, see OrtModelSource) on
// every sample, the requested tensors exposed as extra graph outputs of a copy, and returns
// a range for each. A tensor the model does not compute, or that is not a float tensor, is
// InvalidArgument naming it; a tensor that never holds a finite value gets [0, 0]. ORT
// errors come back with ORT's message and the sample's file.
absl::StatusOr<std::map<std::string, TensorRange>> CollectRanges(
    const onnx::ModelProto& model, const std::vector<OrtModelSource::File>& external_files,
    const std::vector<CalibrationSample>& samples, const CalibrationRequest& request);

// Percentile of a histogram (exposed for tests): `counts` over `bins` equal bins spanning
// [lo, hi]; returns the value below which `fraction` of the mass lies (bin edge, rounded
// outwards).
float HistogramQuantile(const std::vector<int64_t>& counts, float lo, float hi, double fraction,
                        bool upper);

}  // namespace sq

#endif  // SQ_CORE_ACTIVATIONS_CALIBRATION_H_
