// Reads the input tensors a user hands to verification (and, later, calibration): one
// reader, three formats.
//
//   .npy  one array (NumPy format 1.0-3.0, C order). Its name is the file's stem; a model
//         with a single input takes it whatever the name.
//   .npz  several named arrays (np.savez or np.savez_compressed); names are the entries'
//         names without ".npy".
//   .pb   one ONNX TensorProto; its name is the proto's `name` (or the file's stem).
//
// Element types read: float32, float64, int64, int32 and bool (the ones OrtTensor carries),
// little-endian. Everything is bounds-checked: a truncated or hostile file is an error
// naming the file and the problem, never a crash.
#ifndef SQ_CORE_VERIFY_TENSOR_FILE_H_
#define SQ_CORE_VERIFY_TENSOR_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/verify/ort_runner.h"

namespace sq {

// Errors: NotFound (no such file), InvalidArgument (unknown extension, malformed content,
// an element type not listed above, more than 1 GiB of data).
absl::StatusOr<std::vector<OrtTensor>> ReadTensorFile(const std::string& path);

// Parses one .npy image (the bytes of a file); `name` becomes the tensor's name.
absl::StatusOr<OrtTensor> ParseNpy(absl::string_view bytes, const std::string& name);

}  // namespace sq

#endif  // SQ_CORE_VERIFY_TENSOR_FILE_H_
