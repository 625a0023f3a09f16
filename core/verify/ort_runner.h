// Runs ONNX models in ONNX Runtime (the CPU build from npm that scripts/setup.sh installs):
// the engine's verification stage (core/verify/verify.h) and the tests use it.
//
// All functions are thread-safe. One process-wide Ort::Env is created lazily on first use.
// With a worker set (ort_worker.h: SetOrtWorker), RunOrt, OrtSession and LoadInOrt run in a
// child process instead, so that a crash inside ONNX Runtime cannot take this one down.
// No exception crosses this API: ORT errors come back as absl::Status with ORT's message.
#ifndef SQ_CORE_VERIFY_ORT_RUNNER_H_
#define SQ_CORE_VERIFY_ORT_RUNNER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "onnx/onnx_pb.h"

namespace sq {

// A host tensor. elem_type is the ONNX TensorProto dtype: 1 float, 7 int64, 9 bool (also
// accepted as inputs: 6 int32, 11 double -> `f`/`i` converted). Float data lives in `f`,
// integer and bool (0/1) data in `i`. Outputs of other numeric types are converted: float16 /
// double -> f (elem_type keeps the real dtype), int8/uint8/int16/uint16/int32/uint32/uint64 -> i.
struct OrtTensor {
  std::string name;
  std::vector<int64_t> shape;
  int32_t elem_type = 1;  // onnx TensorProto dtype: 1 float, 7 int64, 9 bool
  std::vector<float> f;
  std::vector<int64_t> i;
};

struct OrtRunOptions {
  int intra_op_threads = 1;
  bool disable_optimizations = false;
};

// A model to run: a file (its external data resolved next to it), or serialized bytes in
// memory with the external data files it names given as buffers (by the `location` the
// model's tensors use). The buffers must stay valid for the call.
struct OrtModelSource {
  std::string path;            // used when `bytes` is empty; also names the model in errors
  absl::string_view bytes;
  struct File {
    std::string location;
    const char* data = nullptr;
    size_t size = 0;
    // Optional: the file whose whole content `data` maps. An ONNX Runtime worker process
    // (ort_worker.h) maps it itself; without it the bytes are copied to the worker.
    std::string path;
  };
  std::vector<File> external_files;
  // The whole file `path`, mapped as `data`/`size`, named `location` by the model's tensors.
  static File WholeFile(std::string location, const void* data, size_t size, std::string path) {
    return {std::move(location), static_cast<const char*>(data), size, std::move(path)};
  }
};

// Loads the model and runs it on `inputs`, returning every graph output. InvalidArgument /
// Internal with ORT's message on failure; the message says whether loading or running failed
// ("loading <name> in ONNX Runtime: ..." / "running <name> ...").
absl::StatusOr<std::vector<OrtTensor>> RunOrt(const OrtModelSource& model,
                                              const std::vector<OrtTensor>& inputs,
                                              const OrtRunOptions& = {});
absl::StatusOr<std::vector<OrtTensor>> RunOrt(const std::string& model_path,
                                              const std::vector<OrtTensor>& inputs,
                                              const OrtRunOptions& = {});

// One loaded model, run many times (calibration runs a model once per sample). Run is not
// safe to call from several threads on the same object.
class OrtSession {
 public:
  static absl::StatusOr<std::unique_ptr<OrtSession>> Open(const OrtModelSource& model,
                                                          const OrtRunOptions& = {});
  ~OrtSession();
  OrtSession(const OrtSession&) = delete;
  OrtSession& operator=(const OrtSession&) = delete;
  // Every graph output, as RunOrt.
  absl::StatusOr<std::vector<OrtTensor>> Run(const std::vector<OrtTensor>& inputs);

 private:
  struct Impl;
  explicit OrtSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "1.xx.y", the ONNX Runtime this process runs.
std::string OrtVersion();

// ONNX Runtime 1.29's Linux build (the one scripts/setup.sh installs) has telemetry on by
// default: every process that creates an Ort::Env writes a device id and an event store
// under $XDG_CACHE_HOME (or ~/.cache)/Microsoft and a log file in $TMPDIR, and may send
// process, session and model events to Microsoft. sq runs ONNX Runtime on its users' models,
// so it turns that off: this sets ORT_DISABLE_TELEMETRY=1, which ONNX Runtime reads once when
// its first Env is created, unless the environment already sets ORT_DISABLE_TELEMETRY (an
// operator who sets it to 0 keeps ONNX Runtime's default). The programs call it first thing
// in main, before any thread starts (setenv is not safe beside other threads' getenv); the
// lazily created Env calls it again for library users, where it changes nothing once set.
void KeepOrtTelemetryOff();

// Just creates a session (proves the model loads in ORT). Returns ORT's error text on failure.
absl::Status LoadInOrt(const std::string& model_path, const OrtRunOptions& = {});

// Deterministic random inputs for every graph input that is not an initializer: floats
// ~U(-1,1) (seeded), int64 in [0, int_high), bool 0/1; dynamic/symbolic dims ->
// dim_overrides[name] (keyed by the dim_param name, or by the input name for all of that
// input's unknown dims) or default_dim.
// An integer input that feeds Gather indices of a constant table gets ids below that table's
// size along the gathered axis (and below int_high).
absl::StatusOr<std::vector<OrtTensor>> MakeRandomInputs(
    const std::string& model_path, uint64_t seed, int64_t default_dim = 1,
    const std::map<std::string, int64_t>& dim_overrides = {}, int64_t int_high = 16);
absl::StatusOr<std::vector<OrtTensor>> MakeRandomInputs(
    const onnx::GraphProto& graph, uint64_t seed, int64_t default_dim = 1,
    const std::map<std::string, int64_t>& dim_overrides = {}, int64_t int_high = 16);

// max |a-b| / max(max|b|, tiny) over all outputs of the same name (in a and b); and plain
// max abs diff. A shape or size mismatch, or an output missing from either side, counts as
// +infinity. NaN in either side where the other is not NaN also counts as +infinity.
double MaxRelativeError(const std::vector<OrtTensor>& a, const std::vector<OrtTensor>& b);
double MaxAbsError(const std::vector<OrtTensor>& a, const std::vector<OrtTensor>& b);

}  // namespace sq

#endif  // SQ_CORE_VERIFY_ORT_RUNNER_H_
