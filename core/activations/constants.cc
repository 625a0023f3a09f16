#include "core/activations/constants.h"

#include <cstring>

#include "absl/strings/numbers.h"
#include "core/model_io.h"
#include "core/quantizer.h"

namespace sq {
namespace {

int64_t Product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> Dims(const onnx::TensorProto& t) { return {t.dims().begin(), t.dims().end()}; }

// Codes of an integer tensor as int32 (false for other types).
bool ReadCodes(const onnx::TensorProto& t, const std::vector<OrtModelSource::File>& ext,
               std::vector<int32_t>* codes) {
  const int64_t n = Product(Dims(t));
  if (n < 0 || n > (int64_t{1} << 32)) return false;
  int bits = 0;
  bool is_signed = false;
  switch (t.data_type()) {
    case onnx::TensorProto::INT8: bits = 8; is_signed = true; break;
    case onnx::TensorProto::UINT8: bits = 8; break;
    case onnx::TensorProto::INT32: {
      std::string raw;
      if (TensorRawBytes(t, ext, &raw)) {
        if (static_cast<int64_t>(raw.size()) != 4 * n) return false;
        codes->resize(n);
        std::memcpy(codes->data(), raw.data(), raw.size());
      } else {
        if (t.int32_data_size() != n) return false;
        codes->assign(t.int32_data().begin(), t.int32_data().end());
      }
      return true;
    }
    default:
      // INT4 / UINT4 (22 / 21) and INT2 / UINT2 (26 / 25) by number: libonnx 1.12 has no
      // names for them.
      if (t.data_type() == 22) { bits = 4; is_signed = true; break; }
      if (t.data_type() == 21) { bits = 4; break; }
      if (t.data_type() == 26) { bits = 2; is_signed = true; break; }
      if (t.data_type() == 25) { bits = 2; break; }
      return false;
  }
  std::string raw;
  if (TensorRawBytes(t, ext, &raw)) {
    if (static_cast<int64_t>(raw.size()) < PackedBytes(n, bits)) return false;
    *codes = UnpackCodes(reinterpret_cast<const uint8_t*>(raw.data()), n, bits, is_signed);
    return true;
  }
  // int32_data carries 8-bit codes one per entry, and packed 4-bit pairs one byte per entry.
  if (bits == 8 && t.int32_data_size() == n) {
    codes->assign(t.int32_data().begin(), t.int32_data().end());
    return true;
  }
  return false;
}

bool ReadFloats(const onnx::TensorProto& t, const std::vector<OrtModelSource::File>& ext,
                std::vector<float>* v) {
  if (t.data_type() != onnx::TensorProto::FLOAT) return false;
  const int64_t n = Product(Dims(t));
  if (n < 0) return false;
  std::string raw;
  if (TensorRawBytes(t, ext, &raw)) {
    if (static_cast<int64_t>(raw.size()) != 4 * n) return false;
    v->resize(n);
    std::memcpy(v->data(), raw.data(), raw.size());
    return true;
  }
  if (t.float_data_size() != n) return false;
  v->assign(t.float_data().begin(), t.float_data().end());
  return true;
}

}  // namespace

bool TensorRawBytes(const onnx::TensorProto& t, const std::vector<OrtModelSource::File>& external,
                    std::string* out) {
  if (t.has_raw_data()) {
    *out = t.raw_data();
    return true;
  }
  if (t.data_location() != onnx::TensorProto::EXTERNAL) return false;
  std::string location;
  int64_t offset = 0, length = -1;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") location = kv.value();
    if (kv.key() == "offset" && !absl::SimpleAtoi(kv.value(), &offset)) return false;
    if (kv.key() == "length" && !absl::SimpleAtoi(kv.value(), &length)) return false;
  }
  for (const OrtModelSource::File& f : external) {
    if (f.location != location) continue;
    const int64_t size = static_cast<int64_t>(f.size);
    if (length < 0) length = size - offset;
    if (offset < 0 || length < 0 || offset > size || length > size - offset) return false;
    out->assign(f.data + offset, static_cast<size_t>(length));
    return true;
  }
  return false;
}

ConstantTable::ConstantTable(const onnx::GraphProto& graph,
                             std::vector<OrtModelSource::File> external_files)
    : graph_(graph), external_(std::move(external_files)) {
  for (const auto& t : graph_.initializer()) tensors_[t.name()] = &t;
  for (const auto& n : graph_.node()) {
    if (n.op_type() == "Constant" && n.output_size() == 1) {
      for (const auto& a : n.attribute()) {
        if (a.name() == "value" && a.has_t()) tensors_[n.output(0)] = &a.t();
      }
    }
    if (n.op_type() == "DequantizeLinear" && (n.domain().empty() || n.domain() == "ai.onnx") &&
        n.output_size() == 1) {
      dq_[n.output(0)] = &n;
    }
  }
  // A graph input with an initializer of the same name is overridable, not constant.
  for (const auto& vi : graph_.input()) tensors_.erase(vi.name());
}

bool ConstantTable::IsConstant(const std::string& name) { return Get(name) != nullptr; }

const ConstantValue* ConstantTable::Reload(const std::string& name) {
  cache_.erase(name);
  return Get(name);
}

const ConstantValue* ConstantTable::Get(const std::string& name) {
  auto it = cache_.find(name);
  if (it != cache_.end()) return it->second.get();
  const ConstantValue* v = Decode(name);
  return v;
}

const ConstantValue* ConstantTable::Decode(const std::string& name) {
  std::unique_ptr<ConstantValue> value;
  auto t = tensors_.find(name);
  if (t != tensors_.end()) {
    value = std::make_unique<ConstantValue>();
    value->dims = Dims(*t->second);
    std::vector<int32_t> codes;
    if (!ReadFloats(*t->second, external_, &value->values)) {
      if (!ReadCodes(*t->second, external_, &codes)) {
        value.reset();
      } else {
        value->values.assign(codes.begin(), codes.end());
      }
    }
  } else if (auto d = dq_.find(name); d != dq_.end()) {
    const onnx::NodeProto& n = *d->second;
    auto x = tensors_.find(n.input(0));
    auto s = n.input_size() > 1 ? tensors_.find(n.input(1)) : tensors_.end();
    std::vector<int32_t> codes, zp;
    std::vector<float> scale;
    const bool has_zp = n.input_size() > 2 && !n.input(2).empty();
    auto z = has_zp ? tensors_.find(n.input(2)) : tensors_.end();
    if (x != tensors_.end() && s != tensors_.end() && (!has_zp || z != tensors_.end()) &&
        ReadCodes(*x->second, external_, &codes) && ReadFloats(*s->second, external_, &scale) &&
        (!has_zp || ReadCodes(*z->second, external_, &zp)) && !scale.empty()) {
      const std::vector<int64_t> dims = Dims(*x->second);
      int64_t axis = 1, block = 0;
      for (const auto& a : n.attribute()) {
        if (a.name() == "axis") axis = a.i();
        if (a.name() == "block_size") block = a.i();
      }
      const int64_t rank = static_cast<int64_t>(dims.size());
      if (axis < 0) axis += rank;
      const int64_t count = static_cast<int64_t>(codes.size());
      value = std::make_unique<ConstantValue>();
      value->dims = dims;
      value->values.resize(count);
      if (scale.size() == 1) {
        const int32_t z0 = zp.empty() ? 0 : zp[0];
        for (int64_t i = 0; i < count; ++i) value->values[i] = static_cast<float>(codes[i] - z0) * scale[0];
      } else if (axis >= 0 && axis < rank) {
        const int64_t D = dims[axis];
        int64_t inner = 1;
        for (int64_t k = axis + 1; k < rank; ++k) inner *= dims[k];
        const int64_t nb = block > 0 ? (D + block - 1) / block : D;
        const int64_t expected = block > 0 ? count / D * nb : D;
        if (D <= 0 || static_cast<int64_t>(scale.size()) != expected ||
            (!zp.empty() && zp.size() != scale.size())) {
          value.reset();
        } else {
          for (int64_t i = 0; i < count; ++i) {
            const int64_t a = (i / inner) % D;
            int64_t si = a;
            if (block > 0) {
              const int64_t outer = i / (D * inner);
              si = (outer * nb + a / block) * inner + i % inner;
            }
            const int32_t z0 = zp.empty() ? 0 : zp[si];
            value->values[i] = static_cast<float>(codes[i] - z0) * scale[si];
          }
        }
      } else {
        value.reset();
      }
    }
  }
  ConstantValue* raw = value.get();
  cache_[name] = std::move(value);
  return raw;
}

}  // namespace sq
