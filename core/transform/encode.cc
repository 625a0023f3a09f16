#include "core/transform/encode.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/transform/index_map.h"

namespace sq {
namespace {

// Calls fn(element, param) for every element of the layout's tensor, in row-major order,
// walking the transform's own slice map (index_map.h) in runs.
template <typename Fn>
void ForEachParamIndex(const ParamLayout& l, Fn&& fn) {
  int64_t n = 1;
  for (int64_t d : l.shape) n *= d;
  const IndexMap m = ParamIndexMap(l.shape, l.granularity, l.channel_axis, l.reduction_axis, l.block_size);
  Cursor cursor(m, 0);
  for (int64_t e = 0; e < n;) {
    const Run r = cursor.Current();
    const int64_t len = std::min(r.length, n - e);
    for (int64_t k = 0; k < len; ++k) fn(e + k, r.stride ? r.value + k : r.value);
    cursor.Advance(len);
    e += len;
  }
}

// Field `pos` of a stream packed at `bits` (1..8), low bits first; a field may straddle
// two bytes (3 bits), and then both exist.
inline void PutBits(uint8_t* out, int64_t pos, int bits, uint32_t v) {
  const int64_t bit = pos * bits;
  const uint32_t x = v << (bit & 7);
  out[bit >> 3] |= static_cast<uint8_t>(x);
  if ((bit & 7) + bits > 8) out[(bit >> 3) + 1] |= static_cast<uint8_t>(x >> 8);
}
inline uint32_t GetBits(const uint8_t* in, int64_t pos, int bits) {
  const int64_t bit = pos * bits;
  uint32_t x = in[bit >> 3];
  if ((bit & 7) + bits > 8) x |= static_cast<uint32_t>(in[(bit >> 3) + 1]) << 8;
  return (x >> (bit & 7)) & ((1u << bits) - 1);
}

// Cluster ids, five to a byte in base 3 (encode.h).
constexpr int kPow3[5] = {1, 3, 9, 27, 81};
inline void PutId(uint8_t* ids, int64_t i, int id) {
  ids[i / 5] = static_cast<uint8_t>(ids[i / 5] + id * kPow3[i % 5]);
}
inline int IdAt(const uint8_t* ids, int64_t i) { return ids[i / 5] / kPow3[i % 5] % 3; }

inline int32_t CodeValue(uint8_t raw, bool is_signed) {
  return is_signed ? static_cast<int32_t>(static_cast<int8_t>(raw)) : static_cast<int32_t>(raw);
}

// Code i of a stream packed at `bits` (8, 4 or 2; two's complement when signed).
inline int32_t CodeAt(const uint8_t* p, int64_t i, int bits, bool is_signed) {
  if (bits == 8) return CodeValue(p[i], is_signed);
  const uint32_t u = GetBits(p, i, bits);
  if (is_signed && (u >> (bits - 1)) != 0) return static_cast<int32_t>(u) - (1 << bits);
  return static_cast<int32_t>(u);
}

}  // namespace

std::vector<int64_t> ParamIndexOfElements(const ParamLayout& layout) {
  std::vector<int64_t> out;
  ForEachParamIndex(layout, [&](int64_t, int64_t p) { out.push_back(p); });
  return out;
}

int ContainerBits(int bits) { return bits <= 2 ? 2 : bits <= 4 ? 4 : 8; }

int CompactContainerBits(int bits) { return bits <= 2 ? 2 : bits == 3 ? 3 : bits <= 4 ? 4 : 8; }

int64_t CompactCodeBytes(int64_t n, int container_bits) {
  if (container_bits == 3) return (n + 7) / 8 * 3;
  return PackedBytes(n, container_bits);
}

absl::StatusOr<CompactEncoding> EncodeCompact(absl::Span<const uint8_t* const> branch_codes,
                                              const TransformResult& result,
                                              const ParamLayout& layout, const QuantSpec& spec,
                                              int container_bits, int code_bits) {
  const int nb = static_cast<int>(branch_codes.size());
  if (nb != result.num_branches || (nb != 1 && nb != 3)) {
    return absl::InternalError(absl::StrCat("compact encoding of ", nb, " branches"));
  }
  if (container_bits < spec.bits) return absl::InternalError("compact container too narrow");
  int64_t n = 1;
  for (int64_t d : layout.shape) n *= d;
  const int32_t offset = -spec.qmin();  // unsigned codes: code - qmin
  CompactEncoding e;
  e.codes.assign(static_cast<size_t>(CompactCodeBytes(n, container_bits)), 0);
  if (nb == 3) e.ids.assign(static_cast<size_t>(IdBytes(n)), 0);
  e.zero_points.resize(nb);
  for (int b = 0; b < nb; ++b) {
    for (int32_t z : result.params[b].zero_points) e.zero_points[b].push_back(static_cast<uint8_t>(z + offset));
  }
  absl::Status status;
  ForEachParamIndex(layout, [&](int64_t i, int64_t p) {
    int id = 0;
    int32_t code = CodeAt(branch_codes[0], i, code_bits, spec.symmetric);
    if (nb == 3) {
      int found = 0;
      for (int b = 0; b < 3; ++b) {
        int32_t c = CodeAt(branch_codes[b], i, code_bits, spec.symmetric);
        if (c != result.params[b].zero_points[p]) {
          id = b;
          code = c;
          ++found;
        }
      }
      if (found > 1 && status.ok()) {
        status = absl::InternalError(absl::StrCat("weight element ", i, " is in ", found, " branches"));
      }
      if (found == 0) code = result.params[0].zero_points[p];
      PutId(e.ids.data(), i, id);
    }
    PutBits(e.codes.data(), i, container_bits, static_cast<uint32_t>(code + offset));
  });
  if (!status.ok()) return status;
  return e;
}

std::vector<float> DecodeCompact(const CompactEncoding& e, const TransformResult& result,
                                 const ParamLayout& layout, int container_bits) {
  std::vector<float> out;
  const bool split = !e.ids.empty();
  ForEachParamIndex(layout, [&](int64_t i, int64_t p) {
    const int b = split ? IdAt(e.ids.data(), i) : 0;
    const float q = static_cast<float>(GetBits(e.codes.data(), i, container_bits));
    const float z = static_cast<float>(e.zero_points[b][p]);
    out.push_back((q - z) * result.params[b].scales[p]);
  });
  return out;
}

bool NBitsCanCarry(const ParamLayout& l, int bits) {
  if (l.shape.size() != 2 || l.reduction_axis != 0 || (bits != 4 && bits != 8)) return false;
  if (l.granularity == Granularity::kChannel && l.channel_axis != 1) return false;
  if (l.granularity == Granularity::kBlock) {
    const int bs = l.block_size;
    if (bs < 16 || bs > 256 || (bs & (bs - 1)) != 0) return false;
  }
  return l.shape[0] > 0 && l.shape[1] > 0;
}

int NBitsBlockSize(const ParamLayout& l) {
  if (l.granularity == Granularity::kBlock) return l.block_size;
  int bs = 16;
  while (bs < 128 && bs < l.shape[0]) bs *= 2;
  return bs;
}

absl::StatusOr<NBitsEncoding> EncodeMatMulNBits(const uint8_t* codes, const BranchParams& params,
                                                const ParamLayout& layout, const QuantSpec& spec,
                                                int code_bits) {
  if (!NBitsCanCarry(layout, spec.bits)) {
    return absl::InternalError("MatMulNBits cannot carry this weight layout");
  }
  NBitsEncoding e;
  e.k = layout.shape[0];
  e.n = layout.shape[1];
  e.bits = spec.bits;
  e.block_size = NBitsBlockSize(layout);
  e.blocks = (e.k + e.block_size - 1) / e.block_size;
  const int64_t blob = e.block_size * e.bits / 8;
  const int64_t zp_col = (e.blocks * e.bits + 7) / 8;
  e.b.assign(static_cast<size_t>(e.n * e.blocks * blob), 0);
  e.scales.resize(static_cast<size_t>(e.n * e.blocks));
  e.zero_points.assign(static_cast<size_t>(e.n * zp_col), 0);
  const int32_t offset = -spec.qmin();
  auto param = [&](int64_t k, int64_t n) -> int64_t {
    switch (layout.granularity) {
      case Granularity::kTensor: return 0;
      case Granularity::kChannel: return n;
      case Granularity::kBlock: return (k / layout.block_size) * e.n + n;
    }
    return 0;
  };
  // Parameters and padding per (column, block); then the codes in tiles of 64 columns so
  // that rows are read contiguously and each column's blob is written in order.
  const int64_t padded = e.blocks * e.block_size;
  for (int64_t n = 0; n < e.n; ++n) {
    uint8_t* col = e.b.data() + n * e.blocks * blob;
    for (int64_t kb = 0; kb < e.blocks; ++kb) {
      const int64_t p = param(kb * e.block_size, n);
      const int32_t zp = params.zero_points[p] + offset;
      e.scales[n * e.blocks + kb] = params.scales[p];
      PutBits(e.zero_points.data() + n * zp_col, kb, e.bits, static_cast<uint32_t>(zp));
      for (int64_t k = e.k; k < padded && k < (kb + 1) * e.block_size; ++k) {
        if (k >= kb * e.block_size) PutBits(col, k, e.bits, static_cast<uint32_t>(zp));
      }
    }
  }
  constexpr int64_t kTile = 64;
  const int64_t col_bytes = e.blocks * blob;
  for (int64_t n0 = 0; n0 < e.n; n0 += kTile) {
    const int64_t n1 = std::min(e.n, n0 + kTile);
    int64_t k = 0;
    if (e.bits == 4) {
      // Two rows make one byte per column: a store instead of two read-modify-writes.
      for (; k + 1 < e.k; k += 2) {
        for (int64_t n = n0; n < n1; ++n) {
          const uint32_t lo = static_cast<uint32_t>(CodeAt(codes, k * e.n + n, code_bits, spec.symmetric) + offset);
          const uint32_t hi = static_cast<uint32_t>(CodeAt(codes, (k + 1) * e.n + n, code_bits, spec.symmetric) + offset);
          e.b[n * col_bytes + k / 2] = static_cast<uint8_t>(lo | (hi << 4));
        }
      }
    } else if (e.bits == 8) {
      for (; k < e.k; ++k) {
        for (int64_t n = n0; n < n1; ++n) {
          e.b[n * col_bytes + k] =
              static_cast<uint8_t>(CodeAt(codes, k * e.n + n, code_bits, spec.symmetric) + offset);
        }
      }
    }
    for (; k < e.k; ++k) {
      for (int64_t n = n0; n < n1; ++n) {
        PutBits(e.b.data() + n * col_bytes, k, e.bits,
                static_cast<uint32_t>(CodeAt(codes, k * e.n + n, code_bits, spec.symmetric) + offset));
      }
    }
  }
  return e;
}

std::vector<float> DecodeMatMulNBits(const NBitsEncoding& e) {
  std::vector<float> w(static_cast<size_t>(e.k * e.n));
  const int64_t blob = e.block_size * e.bits / 8;
  const int64_t zp_col = (e.blocks * e.bits + 7) / 8;
  for (int64_t n = 0; n < e.n; ++n) {
    for (int64_t k = 0; k < e.k; ++k) {
      const int64_t kb = k / e.block_size;
      const float q = static_cast<float>(GetBits(e.b.data() + n * e.blocks * blob, k, e.bits));
      const float z = static_cast<float>(GetBits(e.zero_points.data() + n * zp_col, kb, e.bits));
      w[k * e.n + n] = (q - z) * e.scales[n * e.blocks + kb];
    }
  }
  return w;
}

bool GatherCanCarry(const ParamLayout& l, int bits) {
  if (l.shape.size() != 2 || l.reduction_axis != 1 || bits < 2 || bits > 8) return false;
  if (l.shape[0] <= 0 || l.shape[1] <= 0) return false;
  if (l.granularity == Granularity::kChannel && l.channel_axis != 0) return false;
  if (l.granularity == Granularity::kBlock) {
    const int bs = l.block_size;
    if (bs < 16 || (bs & (bs - 1)) != 0) return false;
  }
  return l.shape[1] * ContainerBits(bits) % 8 == 0;
}

int64_t GatherBlockSize(const ParamLayout& l) {
  if (l.granularity == Granularity::kBlock) return l.block_size;
  int64_t bs = 16;
  while (bs < l.shape[1]) bs *= 2;
  return bs;
}

namespace {
// The encoding's shape, scales and zero points; data left empty.
absl::StatusOr<GatherEncoding> GatherParams(const BranchParams& params, const ParamLayout& layout,
                                            const QuantSpec& spec) {
  if (!GatherCanCarry(layout, spec.bits)) {
    return absl::InternalError("GatherBlockQuantized cannot carry this table layout");
  }
  GatherEncoding e;
  e.rows = layout.shape[0];
  e.cols = layout.shape[1];
  e.bits = ContainerBits(spec.bits);
  e.block_size = GatherBlockSize(layout);
  e.blocks = (e.cols + e.block_size - 1) / e.block_size;
  const int64_t zp_row = (e.blocks * e.bits + 7) / 8;
  e.scales.resize(static_cast<size_t>(e.rows * e.blocks));
  e.zero_points.assign(static_cast<size_t>(e.rows * zp_row), 0);
  const int32_t offset = -spec.qmin();
  const IndexMap m = ParamIndexMap(layout.shape, layout.granularity, layout.channel_axis,
                                   layout.reduction_axis, layout.block_size);
  for (int64_t r = 0; r < e.rows; ++r) {
    for (int64_t kb = 0; kb < e.blocks; ++kb) {
      const int64_t p = ValueOf(m, r * e.cols + kb * e.block_size);
      e.scales[r * e.blocks + kb] = params.scales[p];
      PutBits(e.zero_points.data() + r * zp_row, kb, e.bits,
              static_cast<uint32_t>(params.zero_points[p] + offset));
    }
  }
  return e;
}
}  // namespace

absl::StatusOr<GatherEncoding> EncodeGatherBlockQuantized(const uint8_t* codes,
                                                          const BranchParams& params,
                                                          const ParamLayout& layout,
                                                          const QuantSpec& spec, int code_bits) {
  SQ_ASSIGN_OR_RETURN(GatherEncoding e, GatherParams(params, layout, spec));
  const int32_t offset = -spec.qmin();
  e.data.assign(static_cast<size_t>(e.rows * e.cols * e.bits / 8), 0);
  // Row-major codes are the table's row-major order: one pass, no transposition.
  const int64_t n = e.rows * e.cols;
  for (int64_t i = 0; i < n; ++i) {
    PutBits(e.data.data(), i, e.bits,
            static_cast<uint32_t>(CodeAt(codes, i, code_bits, spec.symmetric) + offset));
  }
  return e;
}

absl::StatusOr<GatherEncoding> EncodeGatherBlockQuantized8(std::vector<uint8_t> codes,
                                                           const BranchParams& params,
                                                           const ParamLayout& layout, bool symmetric) {
  const QuantSpec spec{8, symmetric};
  SQ_ASSIGN_OR_RETURN(GatherEncoding e, GatherParams(params, layout, spec));
  if (static_cast<int64_t>(codes.size()) != e.rows * e.cols) {
    return absl::InternalError("8-bit table codes of the wrong size");
  }
  // Two's complement + 128 is the sign bit flipped.
  if (symmetric) {
    for (uint8_t& c : codes) c ^= 0x80;
  }
  e.data = std::move(codes);
  return e;
}

std::vector<float> DecodeGatherBlockQuantized(const GatherEncoding& e) {
  std::vector<float> w(static_cast<size_t>(e.rows * e.cols));
  const int64_t zp_row = (e.blocks * e.bits + 7) / 8;
  for (int64_t r = 0; r < e.rows; ++r) {
    for (int64_t c = 0; c < e.cols; ++c) {
      const int64_t kb = c / e.block_size;
      const float q = static_cast<float>(GetBits(e.data.data(), r * e.cols + c, e.bits));
      const float z = static_cast<float>(GetBits(e.zero_points.data() + r * zp_row, kb, e.bits));
      w[r * e.cols + c] = (q - z) * e.scales[r * e.blocks + kb];
    }
  }
  return w;
}

absl::StatusOr<OuterBranch> QuantizeOuterAt8(const float* values,
                                             absl::Span<const uint8_t* const> branch_codes,
                                             const TransformResult& result,
                                             const ParamLayout& layout, bool symmetric,
                                             int code_bits, const ReleaseFn& release) {
  if (branch_codes.size() != 3 || result.num_branches != 3) {
    return absl::InternalError("the outer8 form needs a split layer");
  }
  // A MatMul weight [K, N] (reduction axis 0, channel axis 1) or a Gather table [R, C]
  // (reduction axis 1, the row is the channel).
  const bool rows_are_channels = layout.reduction_axis == 1;
  if (layout.shape.size() != 2 || layout.reduction_axis > 1 ||
      (layout.granularity == Granularity::kChannel &&
       layout.channel_axis != (rows_are_channels ? 0 : 1))) {
    return absl::InternalError("the outer8 form needs a 2-D [K, N] or [R, C] weight");
  }
  const int64_t rows = layout.shape[0], cols = layout.shape[1], n = rows * cols;
  const Granularity g = layout.granularity;
  const int64_t bs = layout.block_size, row_blocks = (cols + bs - 1) / bs;
  // The parameter of (row, col): 0 (tensor); [K, N]: col (channel), (row / block) * N + col;
  // [R, C]: row (channel), row * blocks + col / block.
  auto param = [&](int64_t r, int64_t c) -> int64_t {
    if (g == Granularity::kTensor) return 0;
    if (!rows_are_channels) return g == Granularity::kBlock ? (r / bs) * cols + c : c;
    return g == Granularity::kBlock ? r * row_blocks + c / bs : r;
  };
  const int64_t params = static_cast<int64_t>(result.params[1].scales.size());
  const std::vector<int32_t>& z0 = result.params[0].zero_points;
  const std::vector<int32_t>& z2 = result.params[2].zero_points;
  std::vector<float> lo(params, 0.0f), hi(params, 0.0f);  // widened to 0
  // Whether each weight is in an outer cluster, one bit per weight (computed once).
  std::vector<uint8_t> outer((n + 7) / 8, 0);
  // Both passes read `values` in order; pieces behind them are handed back.
  constexpr int64_t kPiece = int64_t{1} << 22;
  int64_t released = 0;
  auto passed = [&](int64_t end) {
    if (release && end - released >= kPiece) {
      release(released, end);
      released = end;
    }
  };
  for (int64_t k = 0; k < rows; ++k) {
    const int64_t i0 = k * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = i0 + c, p = param(k, c);
      if (CodeAt(branch_codes[0], i, code_bits, symmetric) == z0[p] &&
          CodeAt(branch_codes[2], i, code_bits, symmetric) == z2[p]) {
        continue;
      }
      outer[i >> 3] |= static_cast<uint8_t>(1u << (i & 7));
      lo[p] = std::min(lo[p], values[i]);
      hi[p] = std::max(hi[p], values[i]);
    }
    passed(i0 + cols);
  }
  if (release) release(released, n);
  released = 0;
  const QuantSpec spec8{8, symmetric};
  OuterBranch out;
  std::vector<QuantParams> qp(params);
  out.params.scales.resize(params);
  out.params.zero_points.resize(params);
  for (int64_t p = 0; p < params; ++p) {
    qp[p] = ChooseQuantParams(lo[p], hi[p], spec8);
    out.params.scales[p] = qp[p].scale;
    out.params.zero_points[p] = qp[p].zero_point;
  }
  out.codes.resize(static_cast<size_t>(n));
  const BranchParams& mid = result.params[1];
  for (int64_t k = 0; k < rows; ++k) {
    const int64_t i0 = k * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = i0 + c, p = param(k, c);
      float approx;
      if ((outer[i >> 3] >> (i & 7)) & 1) {
        const int32_t q = QuantizeValue(values[i], qp[p], spec8);
        out.codes[i] = static_cast<uint8_t>(q);
        approx = DequantizeValue(q, qp[p]);
      } else {
        out.codes[i] = static_cast<uint8_t>(qp[p].zero_point);
        approx = DequantizeValue(CodeAt(branch_codes[1], i, code_bits, symmetric),
                                 QuantParams{mid.scales[p], mid.zero_points[p]});
      }
      const double e = static_cast<double>(values[i]) - approx;
      out.error_energy += e * e;
    }
    passed(i0 + cols);
  }
  if (release) release(released, n);
  return out;
}

}  // namespace sq
