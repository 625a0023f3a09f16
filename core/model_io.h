// Loading ONNX models and reading their tensors, wherever the bytes live: raw_data,
// typed repeated fields, Constant-node attributes or external data files.
//
// External data is never read eagerly: each referenced file is memory-mapped on first
// use, and callers hand pages back (MappedFile::Release) once a tensor is done, so a
// 6 GB model is processed in bounded memory. Every `location` is checked at load time: it
// must be a relative path that stays inside the model's directory (no "..", no absolute
// path, no symlink leading out), and offset + length must lie inside the file.
#ifndef SQ_CORE_MODEL_IO_H_
#define SQ_CORE_MODEL_IO_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/file_util.h"
#include "onnx/onnx_pb.h"

namespace sq {

// Where an external tensor's bytes are, after validation.
struct ExternalLocation {
  std::string path;  // absolute, resolved
  int64_t offset = 0;
  int64_t length = 0;
};

class LoadedModel {
 public:
  // Errors: NotFound (file missing), InvalidArgument (not an ONNX model, truncated, no
  // graph, hostile or out-of-range external data), NotFound (external data file missing).
  static absl::StatusOr<std::unique_ptr<LoadedModel>> FromFile(const std::string& path);
  // `base_dir` resolves external data; empty = external data is an error.
  static absl::StatusOr<std::unique_ptr<LoadedModel>> FromBytes(const std::string& bytes,
                                                                const std::string& base_dir);

  onnx::ModelProto& proto() { return model_; }
  const onnx::ModelProto& proto() const { return model_; }
  const std::string& base_dir() const { return base_dir_; }
  int64_t model_file_bytes() const { return model_file_bytes_; }
  int64_t external_bytes() const { return external_bytes_; }
  bool uses_external_data() const { return !external_files_.empty(); }
  // Elements of every floating-point tensor that holds data (initializers, Constant and
  // attribute tensors, in all graphs): the model's weights, for bits-per-weight figures.
  int64_t float_weight_elements() const { return float_weight_elements_; }

  // The validated location of an external tensor (InvalidArgument if not external).
  absl::StatusOr<ExternalLocation> ExternalLocationOf(const onnx::TensorProto& t) const;
  // The mapping of an external data file (opened on first use; thread-safe).
  absl::StatusOr<const MappedFile*> Map(const std::string& resolved_path) const;

 private:
  LoadedModel() = default;
  absl::Status ValidateExternalData();

  onnx::ModelProto model_;
  std::string base_dir_;
  int64_t model_file_bytes_ = 0;
  int64_t external_bytes_ = 0;
  int64_t float_weight_elements_ = 0;
  std::map<std::string, int64_t> external_files_;  // resolved path -> size
  mutable absl::Mutex mu_;
  mutable std::map<std::string, std::unique_ptr<MappedFile>> maps_ ABSL_GUARDED_BY(mu_);
};

// FP32 view of a float tensor. `data` points into the proto, a mapping, or `owned`.
struct FloatTensor {
  const float* data = nullptr;
  int64_t size = 0;
  std::vector<int64_t> shape;
  std::vector<float> owned;           // used when the bytes had to be copied
  const MappedFile* mapping = nullptr;  // set when data points into a mapping
  int64_t mapping_offset = 0;
  // Hands the tensor's mapped pages back to the kernel (no-op when not mapped).
  void ReleasePages() const {
    if (mapping) mapping->Release(mapping_offset, size * 4);
  }
};

// Errors: InvalidArgument when not FLOAT, or the stored byte count does not match dims.
absl::StatusOr<FloatTensor> ReadFloatTensor(const LoadedModel& model, const onnx::TensorProto& t);

// Element count from dims (1 for a scalar); -1 on negative dims or overflow.
int64_t NumElements(const onnx::TensorProto& t);
// Element count of a shape (1 for a scalar); dims must be valid (>= 0, no overflow).
int64_t NumElements(const std::vector<int64_t>& dims);
// elements * element_bytes, or -1 when either is invalid (< 0, <= 0) or the product
// overflows int64.
int64_t CheckedBytes(int64_t elements, int64_t element_bytes);
// True when [offset, offset + length) lies inside [0, size); overflow-safe.
bool RangeInside(int64_t offset, int64_t length, int64_t size);
// Bytes of one element of an ONNX data type; 0 for strings/unknown; for sub-byte types
// the caller must use PackedBytes.
int ElementBytes(int32_t data_type);
// Stored size of a tensor's data in bytes (raw_data, typed fields or external length).
int64_t TensorDataBytes(const onnx::TensorProto& t);
bool IsExternal(const onnx::TensorProto& t);

// Parses a serialized ModelProto with protobuf's size limit lifted to 2 GB.
absl::Status ParseModelProto(const std::string& bytes, onnx::ModelProto* model);

}  // namespace sq

#endif  // SQ_CORE_MODEL_IO_H_
