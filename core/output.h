// Stages "layout" and "write" of the engine: where every byte of the output goes, decided
// before any is written, and the commit that makes the output visible.
//
// LayOut gives each planned tensor (GroupPlan::tensor_bytes) and each other initializer a
// place: inline raw_data in the model proto, or an aligned offset in the external data
// file (used when asked, when the output would not fit a 2 GB proto, or when a model that
// came with external data stays large). The transform then fills planned tensors through
// WriteTensorBytes and moves the untouched ones with RunCopy, in any order and from any
// thread: every byte has a precomputed place, so the output does not depend on the
// schedule. The data file's SHA-256 is computed while it is written (FollowingSha256:
// it is laid out in the order of schedule(), so the written prefix grows steadily).
// Commit serialises the proto, finishes both hashes and renames the files into place;
// until then nothing is visible under the output names (AtomicFile).
#ifndef SQ_CORE_OUTPUT_H_
#define SQ_CORE_OUTPUT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/file_util.h"
#include "core/following_hash.h"
#include "core/model_io.h"
#include "core/options.h"
#include "core/report.h"
#include "core/rewrite.h"
#include "core/verify/verify.h"
#include "onnx/onnx_pb.h"

namespace sq {

class OutputFiles {
 public:
  // Stage "layout", after planning (the proto holds the planned tensors, empty). Creates
  // the external data file's temporary when one is used and sets every tensor's location.
  // Errors: ResourceExhausted (disk), and those of reading external inputs.
  static absl::StatusOr<std::unique_ptr<OutputFiles>> LayOut(LoadedModel& model,
                                                              const std::vector<GroupPlan>& plans,
                                                              const QuantizeOptions& options,
                                                              const std::string& output_path);

  // Writes `size` bytes at `offset` of planned tensor `t`'s data. Thread-safe for distinct
  // ranges. Internal when `t` is not planned or the range is outside it.
  absl::Status WriteTensorBytes(onnx::TensorProto* t, int64_t offset, const void* data,
                                size_t size);

  // The transform's work list: every plan and every copy, largest first. The external
  // data file is laid out in this order, so that run in this order it fills front to back
  // and its hash follows the writes instead of re-reading the file after the last one.
  struct Task {
    int plan = -1, copy = -1;  // one of the two is set
    int64_t cost = 0;          // the plan's FP32 weight bytes, or the copy's bytes / 8
  };
  const std::vector<Task>& schedule() const { return schedule_; }

  // Untouched tensors that move to the external data file, each a job for RunCopy.
  int num_copies() const { return static_cast<int>(copies_.size()); }
  int64_t copy_bytes(int i) const { return copies_[i].size; }
  // Copies tensor `i`'s bytes into the data file, handing the input's pages back as it
  // goes. Thread-safe for distinct i.
  absl::Status RunCopy(int i);

  // The external data file as the transform left it (not yet visible): its temporary path
  // and the location the model's tensors name; both empty when the weights are inline.
  std::string data_temp_path() const { return data_file_ ? data_file_->temp_path() : std::string(); }
  const std::string& data_location() const { return data_name_; }

  // Stage "write": serialises `proto`, writes and hashes both files and renames them into
  // place. Sets the report's output_bytes, output_sha256 and external-data fields.
  // `check` (stage "verify"), when given, sees the complete artifact before the renames; an
  // error from it is returned and nothing becomes visible.
  absl::Status Commit(const onnx::ModelProto& proto, ModelReport* report,
                      const std::function<absl::Status(const ArtifactImage&)>& check = {});

  // After Commit: how many bytes of the data file were hashed while it was being written
  // (0 when it had to be hashed again after the last write, or has no data file).
  int64_t hash_followed_bytes() const { return hash_followed_bytes_; }

 private:
  // Where a planned tensor's bytes go.
  struct Slot {
    int64_t offset = -1;  // in the external data file; -1 = inline raw_data
    int64_t size = 0;
  };
  // An existing tensor's bytes that move to the data file.
  struct Copy {
    ExternalLocation from;  // when the tensor was external
    std::string inline_bytes;
    int64_t offset = 0, size = 0;
  };

  OutputFiles(LoadedModel& model, std::string output_path)
      : model_(model), output_path_(std::move(output_path)) {}

  LoadedModel& model_;
  std::string output_path_;
  std::string data_name_;  // the data file's name, relative to the model's directory
  std::unique_ptr<AtomicFile> data_file_;
  std::map<const onnx::TensorProto*, Slot> slots_;
  std::vector<Copy> copies_;
  std::vector<Task> schedule_;
  std::unique_ptr<FollowingSha256> hasher_;  // the data file's, while it is written
  int64_t hash_followed_bytes_ = 0;
};

}  // namespace sq

#endif  // SQ_CORE_OUTPUT_H_
