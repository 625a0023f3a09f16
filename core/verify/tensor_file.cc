#include "core/verify/tensor_file.h"

#include <zip.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/file_util.h"
#include "onnx/onnx_pb.h"

namespace sq {
namespace {

constexpr int64_t kMaxTensorBytes = int64_t{1} << 30;

absl::Status Bad(const std::string& name, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("input tensor ", name, ": ", why));
}

// Element count of `shape`, or -1 when a dim is negative or the count passes kMaxTensorBytes.
int64_t CheckedCount(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > kMaxTensorBytes / d) return -1;
    n *= d;
  }
  return n;
}

// Fills t->f or t->i from `n` little-endian elements of ONNX type t->elem_type at `p`.
void FillFromBytes(const char* p, int64_t n, OrtTensor* t) {
  auto load = [&](auto zero) {
    using T = decltype(zero);
    std::vector<T> tmp(static_cast<size_t>(n));
    if (n > 0) std::memcpy(tmp.data(), p, static_cast<size_t>(n) * sizeof(T));
    return tmp;
  };
  switch (t->elem_type) {
    case 1: t->f = load(float{}); break;
    case 11: { auto v = load(double{}); t->f.assign(v.begin(), v.end()); break; }
    case 7: t->i = load(int64_t{}); break;
    case 6: { auto v = load(int32_t{}); t->i.assign(v.begin(), v.end()); break; }
    case 9: { auto v = load(uint8_t{}); t->i.assign(v.begin(), v.end()); break; }
  }
}

int ElementSize(int elem_type) {
  switch (elem_type) {
    case 1: case 6: return 4;
    case 11: case 7: return 8;
    case 9: return 1;
  }
  return 0;
}

// The value of `key` in a .npy header dict ("{'descr': '<f4', 'fortran_order': False, ...}").
absl::string_view HeaderValue(absl::string_view header, absl::string_view key) {
  const std::string quoted = absl::StrCat("'", key, "':");
  size_t at = header.find(quoted);
  if (at == absl::string_view::npos) return {};
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(header.substr(at + quoted.size()));
  if (absl::ConsumePrefix(&rest, "(")) return rest.substr(0, rest.find(')'));
  if (absl::ConsumePrefix(&rest, "'")) return rest.substr(0, rest.find('\''));
  return rest.substr(0, rest.find_first_of(",}"));
}

std::string Stem(const std::string& path) {
  std::string base = BaseName(path);
  size_t dot = base.rfind('.');
  return dot == std::string::npos ? base : base.substr(0, dot);
}

absl::StatusOr<std::vector<OrtTensor>> ReadNpz(const std::string& path) {
  int err = 0;
  std::unique_ptr<zip_t, int (*)(zip_t*)> archive(zip_open(path.c_str(), ZIP_RDONLY, &err),
                                                  zip_close);
  if (!archive) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, err);
    std::string why = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    return absl::InvalidArgumentError(absl::StrCat(BaseName(path), ": not a readable .npz (", why, ")"));
  }
  std::vector<OrtTensor> out;
  const zip_int64_t entries = zip_get_num_entries(archive.get(), 0);
  for (zip_int64_t k = 0; k < entries; ++k) {
    zip_stat_t st;
    if (zip_stat_index(archive.get(), k, 0, &st) != 0 || !(st.valid & ZIP_STAT_NAME) ||
        !(st.valid & ZIP_STAT_SIZE)) {
      return absl::InvalidArgumentError(absl::StrCat(BaseName(path), ": entry ", k, " unreadable"));
    }
    absl::string_view entry = st.name;
    const bool is_npy = absl::ConsumeSuffix(&entry, ".npy");
    const std::string name(entry);
    if (!is_npy) {
      return absl::InvalidArgumentError(
          absl::StrCat(BaseName(path), ": entry ", name, " is not a .npy array"));
    }
    if (st.size > static_cast<zip_uint64_t>(kMaxTensorBytes) + 4096) {
      return Bad(name, "larger than 1 GiB");
    }
    std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> file(zip_fopen_index(archive.get(), k, 0),
                                                           zip_fclose);
    if (!file) {
      return absl::InvalidArgumentError(
          absl::StrCat(BaseName(path), ": entry ", name, ": ", zip_strerror(archive.get())));
    }
    std::string bytes(static_cast<size_t>(st.size), '\0');
    zip_int64_t got = zip_fread(file.get(), bytes.data(), st.size);
    if (got < 0 || static_cast<zip_uint64_t>(got) != st.size) {
      return absl::InvalidArgumentError(
          absl::StrCat(BaseName(path), ": entry ", name, " is truncated or corrupt"));
    }
    absl::StatusOr<OrtTensor> t = ParseNpy(bytes, name);
    if (!t.ok()) return t.status();
    out.push_back(std::move(*t));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(BaseName(path), ": holds no arrays"));
  }
  return out;
}

absl::StatusOr<OrtTensor> ParseTensorProto(const std::string& bytes, const std::string& path) {
  onnx::TensorProto proto;
  if (!proto.ParseFromString(bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(BaseName(path), ": not an ONNX TensorProto"));
  }
  OrtTensor t;
  t.name = proto.name().empty() ? Stem(path) : proto.name();
  t.elem_type = proto.data_type();
  t.shape.assign(proto.dims().begin(), proto.dims().end());
  const int64_t n = CheckedCount(t.shape);
  if (n < 0) return Bad(t.name, "negative dims or more than 1 GiB of elements");
  const int size = ElementSize(t.elem_type);
  if (size == 0) {
    return Bad(t.name, absl::StrCat("element type ", t.elem_type,
                                    " is not read (float, double, int64, int32, bool are)"));
  }
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    return Bad(t.name, "external data is not read in an input tensor file");
  }
  if (proto.has_raw_data()) {
    if (static_cast<int64_t>(proto.raw_data().size()) != n * size) {
      return Bad(t.name, absl::StrCat("raw_data holds ", proto.raw_data().size(), " bytes, dims need ",
                                      n * size));
    }
    FillFromBytes(proto.raw_data().data(), n, &t);
    return t;
  }
  auto check = [&](int64_t have) -> absl::Status {
    return have == n ? absl::OkStatus()
                     : Bad(t.name, absl::StrCat("holds ", have, " values, dims need ", n));
  };
  switch (t.elem_type) {
    case 1:
      if (absl::Status s = check(proto.float_data_size()); !s.ok()) return s;
      t.f.assign(proto.float_data().begin(), proto.float_data().end());
      break;
    case 11:
      if (absl::Status s = check(proto.double_data_size()); !s.ok()) return s;
      t.f.assign(proto.double_data().begin(), proto.double_data().end());
      break;
    case 7:
      if (absl::Status s = check(proto.int64_data_size()); !s.ok()) return s;
      t.i.assign(proto.int64_data().begin(), proto.int64_data().end());
      break;
    default:  // int32 and bool live in int32_data
      if (absl::Status s = check(proto.int32_data_size()); !s.ok()) return s;
      t.i.assign(proto.int32_data().begin(), proto.int32_data().end());
      break;
  }
  return t;
}

}  // namespace

absl::StatusOr<OrtTensor> ParseNpy(absl::string_view bytes, const std::string& name) {
  if (bytes.size() < 10 || bytes.substr(0, 6) != "\x93NUMPY") return Bad(name, "not a .npy array");
  const uint8_t major = static_cast<uint8_t>(bytes[6]);
  size_t header_len = 0, header_at = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    header_at = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(name, "truncated .npy header");
    header_len = 0;
    for (int k = 3; k >= 0; --k) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[8 + k]);
    header_at = 12;
  } else {
    return Bad(name, absl::StrCat(".npy format version ", major, " is not read"));
  }
  if (header_len > bytes.size() - header_at) return Bad(name, "truncated .npy header");
  const absl::string_view header = bytes.substr(header_at, header_len);
  const absl::string_view data = bytes.substr(header_at + header_len);

  OrtTensor t;
  t.name = name;
  const absl::string_view descr = HeaderValue(header, "descr");
  if (descr == "<f4") t.elem_type = 1;
  else if (descr == "<f8") t.elem_type = 11;
  else if (descr == "<i8") t.elem_type = 7;
  else if (descr == "<i4") t.elem_type = 6;
  else if (descr == "|b1") t.elem_type = 9;
  else {
    return Bad(name, absl::StrCat("dtype '", descr,
                                  "' is not read (little-endian float32, float64, int64, int32 "
                                  "and bool are)"));
  }
  if (HeaderValue(header, "fortran_order") != "False") {
    return Bad(name, "Fortran-order arrays are not read (save a C-order copy)");
  }
  for (absl::string_view d : absl::StrSplit(HeaderValue(header, "shape"), ',', absl::SkipWhitespace())) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(d), &v) || v < 0) {
      return Bad(name, absl::StrCat("bad shape entry '", d, "'"));
    }
    t.shape.push_back(v);
  }
  const int64_t n = CheckedCount(t.shape);
  if (n < 0) return Bad(name, "more than 1 GiB of elements");
  const int64_t need = n * ElementSize(t.elem_type);
  if (static_cast<int64_t>(data.size()) != need) {
    return Bad(name, absl::StrCat("holds ", data.size(), " data bytes, its shape needs ", need));
  }
  FillFromBytes(data.data(), n, &t);
  return t;
}

absl::StatusOr<std::vector<OrtTensor>> ReadTensorFile(const std::string& path) {
  const std::string lower = absl::AsciiStrToLower(path);
  if (absl::EndsWith(lower, ".npz")) {
    if (absl::StatusOr<int64_t> size = FileSize(path); !size.ok()) return size.status();
    return ReadNpz(path);
  }
  const bool npy = absl::EndsWith(lower, ".npy");
  if (!npy && !absl::EndsWith(lower, ".pb")) {
    return absl::InvalidArgumentError(absl::StrCat(
        BaseName(path), ": input tensors are read from .npy, .npz or .pb (ONNX TensorProto) files"));
  }
  absl::StatusOr<int64_t> size = FileSize(path);
  if (!size.ok()) return size.status();
  if (*size > kMaxTensorBytes + 4096) {
    return absl::InvalidArgumentError(absl::StrCat(BaseName(path), ": larger than 1 GiB"));
  }
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<OrtTensor> t = npy ? ParseNpy(*bytes, Stem(path)) : ParseTensorProto(*bytes, path);
  if (!t.ok()) return t.status();
  std::vector<OrtTensor> out;
  out.push_back(std::move(*t));
  return out;
}

}  // namespace sq
