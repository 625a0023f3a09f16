// Stage "verify" of the engine: before an artifact becomes visible, load it in ONNX Runtime
// (the runtime our users deploy on), run it and the FP32 model it came from on the same
// inputs, and record how close they are (report.h: Verification).
//
// Inputs. A file the user gives (--verify-input: .npy/.npz/.pb, tensor_file.h), matched to
// the graph inputs by name (a single tensor feeds a single-input model whatever its name);
// otherwise seeded random inputs (seed kVerifySeed): floats ~U(-1, 1), integer ids in
// [0, 16) and below the size of any constant table they index through Gather, bools 0/1.
// Dims the graph leaves open are 1 for the first (batch) axis and 32 elsewhere; when the FP32
// model does not run with those, every open dim is 1.
//
// Outcome.
//   - The FP32 model runs and the artifact does not load or run, produces NaN/Inf where the
//     FP32 model is finite, or gives outputs of another shape: FailedPrecondition naming the
//     problem and the runtime's message; the engine then writes nothing.
//   - Both run: status "passed" with rel L2 / max abs / agreement per output.
//   - The FP32 model itself does not run in ONNX Runtime (an op or opset it lacks, inputs it
//     needs that cannot be guessed): the artifact is still loaded and run; "passed" with a
//     note when it runs, "skipped" with both messages in the note when it does not either
//     (not the artifact's fault, so not a failure).
//   - Sampling for large models: the FP32 model is not run when its files exceed
//     kVerifyReferenceMaxBytes (the artifact is still loaded and run, and must give finite
//     outputs), and the artifact is not loaded at all when it exceeds
//     kVerifyArtifactMaxBytes ("skipped"): both would cost their size again in memory.
//
// Cost: two session creations and one run each; on small models milliseconds, on the
// 1B-parameter scale model see docs/benchmarks.md.
#ifndef SQ_CORE_VERIFY_VERIFY_H_
#define SQ_CORE_VERIFY_VERIFY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/options.h"
#include "core/report.h"
#include "core/verify/ort_runner.h"
#include "onnx/onnx_pb.h"

namespace sq {

inline constexpr uint64_t kVerifySeed = 1;
inline constexpr int64_t kVerifyReferenceMaxBytes = int64_t{2} << 30;
inline constexpr int64_t kVerifyArtifactMaxBytes = int64_t{4} << 30;

// The input sets to try, in order (one when the user gave a file).
struct VerifyInputs {
  struct Set {
    std::vector<OrtTensor> tensors;
    std::string description;  // "seeded (seed 1; open dims 1/32)", "file x.npz"
  };
  std::vector<Set> sets;
};

// Run after load, before any work, so that a bad --verify-input fails the run at once.
// `graph` is the model's main graph as loaded. Errors: those of ReadTensorFile, and
// InvalidArgument when the file lacks a graph input or holds a tensor the graph does not take.
absl::StatusOr<VerifyInputs> PrepareVerifyInputs(const onnx::GraphProto& graph,
                                                 const QuantizeOptions& options);

// The artifact as written but not yet visible: the serialized model and, when it has one,
// its external data file at a temporary path.
struct ArtifactImage {
  std::string name;              // the output's file name, for messages
  absl::string_view model_bytes;
  std::string data_path;         // the data file's temporary path; empty when none
  std::string data_location;     // the location the model's tensors name
  int64_t total_bytes = 0;
};

// Runs the checks above and fills `out`. `threads` is ONNX Runtime's intra-op thread count.
absl::Status VerifyArtifact(const std::string& input_path, int64_t input_bytes,
                            const ArtifactImage& artifact, const VerifyInputs& inputs,
                            int threads, Verification* out);

// True for the errors VerifyArtifact returns when the artifact fails verification (they
// carry a payload that says so), as opposed to I/O errors on the way.
bool IsVerificationFailure(const absl::Status& status);

// Per-output agreement of `artifact` with `reference` (matched by name). FailedPrecondition
// when an output is missing, differs in shape, or is non-finite where the reference is
// finite.
absl::StatusOr<std::vector<OutputAgreement>> CompareOutputs(const std::vector<OrtTensor>& artifact,
                                                            const std::vector<OrtTensor>& reference);

}  // namespace sq

#endif  // SQ_CORE_VERIFY_VERIFY_H_
