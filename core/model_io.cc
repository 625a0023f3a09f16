#include "core/model_io.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstring>
#include <limits>
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace sq {
namespace {

constexpr int kParseRecursionLimit = 1000;

// Visits every TensorProto that can hold data: initializers, Constant/attribute tensors,
// sparse initializers' values, in all graphs.
void ForEachTensor(onnx::GraphProto* g, const std::function<void(onnx::TensorProto*)>& fn) {
  for (auto& t : *g->mutable_initializer()) fn(&t);
  for (auto& st : *g->mutable_sparse_initializer()) {
    fn(st.mutable_values());
    fn(st.mutable_indices());
  }
  for (auto& n : *g->mutable_node()) {
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_t()) fn(a.mutable_t());
      for (auto& t : *a.mutable_tensors()) fn(&t);
      if (a.has_g()) ForEachTensor(a.mutable_g(), fn);
      for (auto& sg : *a.mutable_graphs()) ForEachTensor(&sg, fn);
    }
  }
}

std::string ExternalField(const onnx::TensorProto& t, const char* key) {
  for (const auto& kv : t.external_data()) {
    if (kv.key() == key) return kv.value();
  }
  return "";
}

}  // namespace

absl::Status ParseModelProto(const std::string& bytes, onnx::ModelProto* model) {
  google::protobuf::io::ArrayInputStream raw(bytes.data(), static_cast<int>(bytes.size()));
  google::protobuf::io::CodedInputStream coded(&raw);
  coded.SetTotalBytesLimit(INT_MAX);
  // Each If/Loop/Scan level nests three messages (node, attribute, graph): protobuf's
  // default limit of 100 would turn a model nested ~33 deep into a parse failure that
  // reads like corruption. This limit lets ValidateModelStructure refuse deep nesting by
  // name (kMaxSubgraphDepth) while still bounding the parser's recursion.
  coded.SetRecursionLimit(kParseRecursionLimit);
  if (!model->ParseFromCodedStream(&coded) || !coded.ConsumedEntireMessage()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "not a valid ONNX model: the bytes do not parse as an onnx.ModelProto (corrupt, "
        "truncated, or messages nested more than ", kParseRecursionLimit, " deep?)"));
  }
  if (!model->has_graph()) {
    return absl::InvalidArgumentError("not a valid ONNX model: it has no graph");
  }
  if (model->ir_version() <= 0) {
    return absl::InvalidArgumentError("not a valid ONNX model: ir_version is missing");
  }
  if (model->opset_import_size() == 0 && model->ir_version() >= 3) {
    return absl::InvalidArgumentError("not a valid ONNX model: it imports no opset");
  }
  return absl::OkStatus();
}

bool IsExternal(const onnx::TensorProto& t) {
  return t.data_location() == onnx::TensorProto::EXTERNAL;
}

int64_t NumElements(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

int64_t NumElements(const onnx::TensorProto& t) {
  int64_t n = 1;
  for (int64_t d : t.dims()) {
    if (d < 0) return -1;
    if (d != 0 && n > (int64_t{1} << 62) / d) return -1;
    n *= d;
  }
  return n;
}

int64_t CheckedBytes(int64_t elements, int64_t element_bytes) {
  if (elements < 0 || element_bytes <= 0) return -1;
  if (elements > std::numeric_limits<int64_t>::max() / element_bytes) return -1;
  return elements * element_bytes;
}

bool RangeInside(int64_t offset, int64_t length, int64_t size) {
  // Written so that no sum can overflow: offset + length <= size.
  return offset >= 0 && length >= 0 && size >= 0 && length <= size && offset <= size - length;
}

int ElementBytes(int32_t data_type) {
  switch (data_type) {
    case onnx::TensorProto::FLOAT:
    case onnx::TensorProto::INT32:
    case onnx::TensorProto::UINT32:
      return 4;
    case onnx::TensorProto::DOUBLE:
    case onnx::TensorProto::INT64:
    case onnx::TensorProto::UINT64:
    case onnx::TensorProto::COMPLEX64:
      return 8;
    case onnx::TensorProto::COMPLEX128:
      return 16;
    case onnx::TensorProto::FLOAT16:
    case onnx::TensorProto::BFLOAT16:
    case onnx::TensorProto::INT16:
    case onnx::TensorProto::UINT16:
      return 2;
    case onnx::TensorProto::INT8:
    case onnx::TensorProto::UINT8:
    case onnx::TensorProto::BOOL:
    case 17: case 18: case 19: case 20:  // float8 variants
      return 1;
    default:
      return 0;
  }
}

int64_t TensorDataBytes(const onnx::TensorProto& t) {
  if (IsExternal(t)) {
    std::string len = ExternalField(t, "length");
    int64_t v = 0;
    if (!len.empty() && absl::SimpleAtoi(len, &v)) return v;
    int64_t bytes = CheckedBytes(NumElements(t), ElementBytes(t.data_type()));
    return bytes >= 0 ? bytes : 0;
  }
  if (t.has_raw_data()) return static_cast<int64_t>(t.raw_data().size());
  return static_cast<int64_t>(t.float_data_size()) * 4 + t.int32_data_size() * 4 +
         t.int64_data_size() * 8 + t.double_data_size() * 8 + t.uint64_data_size() * 8;
}

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadedModel::FromFile(const std::string& path) {
  SQ_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  if (bytes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("not a valid ONNX model: '", path, "' is empty"));
  }
  char resolved[PATH_MAX];
  std::string dir = DirName(path);
  if (realpath(dir.c_str(), resolved) == nullptr) return ErrnoStatus(errno, "cannot resolve", dir);
  auto status_or = FromBytes(bytes, resolved);
  if (!status_or.ok()) {
    return absl::Status(status_or.status().code(),
                        absl::StrCat(status_or.status().message(), " [", path, "]"));
  }
  (*status_or)->model_file_bytes_ = static_cast<int64_t>(bytes.size());
  return status_or;
}

absl::StatusOr<std::unique_ptr<LoadedModel>> LoadedModel::FromBytes(const std::string& bytes,
                                                                    const std::string& base_dir) {
  std::unique_ptr<LoadedModel> m(new LoadedModel());
  SQ_RETURN_IF_ERROR(ParseModelProto(bytes, &m->model_));
  m->base_dir_ = base_dir;
  m->model_file_bytes_ = static_cast<int64_t>(bytes.size());
  SQ_RETURN_IF_ERROR(m->ValidateExternalData());
  ForEachTensor(m->model_.mutable_graph(), [&](onnx::TensorProto* t) {
    const int dt = t->data_type();
    if (dt == onnx::TensorProto::FLOAT || dt == onnx::TensorProto::FLOAT16 ||
        dt == onnx::TensorProto::BFLOAT16 || dt == onnx::TensorProto::DOUBLE) {
      const int64_t n = NumElements(*t);
      if (n > 0) m->float_weight_elements_ += n;
    }
  });
  return m;
}

absl::Status LoadedModel::ValidateExternalData() {
  absl::Status status;
  ForEachTensor(model_.mutable_graph(), [&](onnx::TensorProto* t) {
    if (!status.ok() || !IsExternal(*t)) return;
    auto loc = ExternalLocationOf(*t);
    if (!loc.ok()) {
      status = loc.status();
      return;
    }
    auto it = external_files_.find(loc->path);
    int64_t size = 0;
    if (it == external_files_.end()) {
      auto s = FileSize(loc->path);
      if (!s.ok()) {
        status = absl::Status(s.status().code(),
                              absl::StrCat("external data of tensor '", t->name(), "': ",
                                           s.status().message()));
        return;
      }
      size = *s;
      external_files_[loc->path] = size;
      external_bytes_ += size;
    } else {
      size = it->second;
    }
    if (!RangeInside(loc->offset, loc->length, size)) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "external data of tensor '", t->name(), "' (offset ", loc->offset, ", length ",
          loc->length, ") does not lie inside its file, which has ", size,
          " bytes (truncated?)"));
    }
  });
  return status;
}

absl::StatusOr<ExternalLocation> LoadedModel::ExternalLocationOf(const onnx::TensorProto& t) const {
  if (!IsExternal(t)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name(), "' is not external"));
  }
  std::string location = ExternalField(t, "location");
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("external data location '", location,
                                                   "' of tensor '", t.name(), "' ", why));
  };
  if (base_dir_.empty()) return bad("cannot be resolved: the model was given as bytes");
  ExternalLocation out;
  auto resolved = ResolveInsideDirectory(base_dir_, location);
  if (!resolved.ok()) {
    return absl::Status(resolved.status().code(),
                        absl::StrCat("external data of tensor '", t.name(), "': ",
                                     resolved.status().message()));
  }
  out.path = *std::move(resolved);
  std::string offset = ExternalField(t, "offset"), length = ExternalField(t, "length");
  if (!offset.empty() && (!absl::SimpleAtoi(offset, &out.offset) || out.offset < 0)) {
    return bad(absl::StrCat("has a bad offset '", offset, "'"));
  }
  // -1 when the dims are invalid, overflow, or the element size is unknown.
  const int64_t need = CheckedBytes(NumElements(t), ElementBytes(t.data_type()));
  if (!length.empty()) {
    if (!absl::SimpleAtoi(length, &out.length) || out.length < 0) {
      return bad(absl::StrCat("has a bad length '", length, "'"));
    }
  } else if (need >= 0) {
    out.length = need;
  } else {
    return bad("has no length and invalid dims or an unknown element size");
  }
  if (need < 0 && ElementBytes(t.data_type()) > 0) {
    return bad("has dims that are negative or whose byte count overflows");
  }
  if (need >= 0 && out.length != need) {
    return bad(absl::StrCat("has length ", out.length, " but dims need ", need, " bytes"));
  }
  return out;
}

absl::StatusOr<const MappedFile*> LoadedModel::Map(const std::string& resolved_path) const {
  absl::MutexLock lock(&mu_);
  auto it = maps_.find(resolved_path);
  if (it != maps_.end()) return it->second.get();
  SQ_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(resolved_path));
  const MappedFile* raw = file.get();
  maps_[resolved_path] = std::move(file);
  return raw;
}

absl::StatusOr<FloatTensor> ReadFloatTensor(const LoadedModel& model, const onnx::TensorProto& t) {
  if (t.data_type() != onnx::TensorProto::FLOAT) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name(), "' has data type ",
                                                   t.data_type(), ", not FLOAT"));
  }
  FloatTensor out;
  out.shape.assign(t.dims().begin(), t.dims().end());
  out.size = NumElements(t);
  if (out.size < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name(), "' has invalid dims"));
  }
  const int64_t need_bytes = CheckedBytes(out.size, 4);
  if (need_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name(), "' has dims too large"));
  }
  auto size_mismatch = [&](int64_t have) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name(), "' stores ", have,
                                                   " bytes but its dims need ", need_bytes));
  };
  if (IsExternal(t)) {
    SQ_ASSIGN_OR_RETURN(ExternalLocation loc, model.ExternalLocationOf(t));
    if (loc.length != need_bytes) return size_mismatch(loc.length);
    SQ_ASSIGN_OR_RETURN(const MappedFile* map, model.Map(loc.path));
    if (!RangeInside(loc.offset, loc.length, map->size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "external data of tensor '", t.name(), "' (offset ", loc.offset, ", length ",
          loc.length, ") does not lie inside its file, which has ", map->size(), " bytes"));
    }
    const uint8_t* p = map->data() + loc.offset;
    if (reinterpret_cast<uintptr_t>(p) % alignof(float) == 0) {
      out.data = reinterpret_cast<const float*>(p);
      out.mapping = map;
      out.mapping_offset = loc.offset;
    } else {
      out.owned.resize(static_cast<size_t>(out.size));
      std::memcpy(out.owned.data(), p, static_cast<size_t>(loc.length));
      map->Release(loc.offset, loc.length);
      out.data = out.owned.data();
    }
    return out;
  }
  if (t.has_raw_data()) {
    if (static_cast<int64_t>(t.raw_data().size()) != need_bytes) {
      return size_mismatch(static_cast<int64_t>(t.raw_data().size()));
    }
    const char* p = t.raw_data().data();
    if (reinterpret_cast<uintptr_t>(p) % alignof(float) == 0) {
      out.data = reinterpret_cast<const float*>(p);
    } else {
      out.owned.resize(static_cast<size_t>(out.size));
      std::memcpy(out.owned.data(), p, t.raw_data().size());
      out.data = out.owned.data();
    }
    return out;
  }
  if (t.float_data_size() != out.size) return size_mismatch(t.float_data_size() * 4LL);
  out.data = t.float_data().data();
  return out;
}

}  // namespace sq
