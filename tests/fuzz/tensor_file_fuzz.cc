// Fuzzes the verification input reader (core/verify/tensor_file.h) on the three formats it
// reads: the input as a .npy image, as a .npz archive (libzip on untrusted bytes) and as an
// ONNX TensorProto. Whatever parses holds exactly as many values as its shape says.
#include <cstdint>
#include <string>

#include "core/verify/tensor_file.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

void CheckTensor(const sq::OrtTensor& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) {
    SQ_FUZZ_CHECK(d >= 0, "dims are non-negative");
    n *= d;
  }
  const size_t have = t.f.empty() ? t.i.size() : t.f.size();
  SQ_FUZZ_CHECK(static_cast<int64_t>(have) == n, "values match the shape");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<sq::OrtTensor> npy = sq::ParseNpy(bytes, "x");
  if (npy.ok()) CheckTensor(*npy);
  const std::string& dir = sq::fuzz::ScratchDir();
  for (const char* ext : {".npz", ".pb"}) {
    const std::string path = dir + "/t" + ext;
    sq::fuzz::WriteBytes(path, data, size);
    absl::StatusOr<std::vector<sq::OrtTensor>> read = sq::ReadTensorFile(path);
    if (read.ok()) {
      for (const sq::OrtTensor& t : *read) CheckTensor(t);
    }
  }
  return 0;
}
