#include "core/transform/encode.h"

#include <emmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "core/transform/index_map.h"
#include "core/transform/round.h"

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

int64_t CompactParamBytes(int64_t params, int branches, int container_bits, bool half_scales) {
  const int64_t count = params * branches;
  return count * (half_scales ? 2 : 4) + CompactCodeBytes(count, container_bits) + (half_scales ? 4 : 0);
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
  const int64_t params = static_cast<int64_t>(result.params[0].scales.size());
  for (int b = 1; b < nb; ++b) {
    if (static_cast<int64_t>(result.params[b].scales.size()) != params) {
      return absl::InternalError("compact encoding: branches with different parameter counts");
    }
  }
  const bool half_scales = spec.half_scales;
  const int scale_bytes = half_scales ? 2 : 4;
  e.scale_exponent = half_scales ? result.scale_exponent : 0;
  e.scales.resize(static_cast<size_t>(params * nb * scale_bytes));
  e.zero_points.assign(static_cast<size_t>(CompactCodeBytes(params * nb, container_bits)), 0);
  for (int64_t p = 0; p < params; ++p) {
    for (int b = 0; b < nb; ++b) {
      const int64_t at = p * nb + b;
      const float s = result.params[b].scales[p];
      if (half_scales) {
        uint16_t h;
        if (!FloatToHalf(std::ldexp(s, -e.scale_exponent), &h)) {
          return absl::InternalError(absl::StrCat("scale ", s, " is not a float16 value"));
        }
        std::memcpy(&e.scales[static_cast<size_t>(at * 2)], &h, 2);
      } else {
        std::memcpy(&e.scales[static_cast<size_t>(at * 4)], &s, 4);
      }
      PutBits(e.zero_points.data(), at, container_bits,
              static_cast<uint32_t>(result.params[b].zero_points[p] + offset));
    }
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

std::vector<float> DecodeCompact(const CompactEncoding& e, const ParamLayout& layout, int branches,
                                 int container_bits, bool half_scales) {
  std::vector<float> out;
  const bool split = !e.ids.empty();
  ForEachParamIndex(layout, [&](int64_t i, int64_t p) {
    const int b = split ? IdAt(e.ids.data(), i) : 0;
    const int64_t at = p * branches + b;
    const float q = static_cast<float>(GetBits(e.codes.data(), i, container_bits));
    const float z = static_cast<float>(GetBits(e.zero_points.data(), at, container_bits));
    float s;
    if (half_scales) {
      uint16_t h;
      std::memcpy(&h, &e.scales[static_cast<size_t>(at * 2)], 2);
      s = std::ldexp(HalfToFloat(h), e.scale_exponent);
    } else {
      std::memcpy(&s, &e.scales[static_cast<size_t>(at * 4)], 4);
    }
    out.push_back((q - z) * s);
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

namespace {

// MatMulNBits tensors for a layout it carries, with scales, zero points and the padding
// rows of each column's last block filled; the codes of rows [0, K) are left to the caller.
NBitsEncoding NBitsWithParams(const BranchParams& params, const ParamLayout& layout,
                              const QuantSpec& spec) {
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
  return e;
}

// Codes of rows [k_begin, K) into `e`, element by element (any container).
void FillNBitsCodes(const uint8_t* codes, int code_bits, bool is_signed, int64_t k_begin,
                    NBitsEncoding& e) {
  const int32_t offset = is_signed ? (1 << (e.bits - 1)) : 0;
  const int64_t col_bytes = e.blocks * e.block_size * e.bits / 8;
  constexpr int64_t kTile = 64;  // columns: rows are read contiguously, blobs written in order
  for (int64_t n0 = 0; n0 < e.n; n0 += kTile) {
    const int64_t n1 = std::min(e.n, n0 + kTile);
    int64_t k = k_begin;
    if (e.bits == 4) {
      // Two rows make one byte per column: a store instead of two read-modify-writes.
      for (; k + 1 < e.k; k += 2) {
        for (int64_t n = n0; n < n1; ++n) {
          const uint32_t lo = static_cast<uint32_t>(CodeAt(codes, k * e.n + n, code_bits, is_signed) + offset);
          const uint32_t hi = static_cast<uint32_t>(CodeAt(codes, (k + 1) * e.n + n, code_bits, is_signed) + offset);
          e.b[n * col_bytes + k / 2] = static_cast<uint8_t>(lo | (hi << 4));
        }
      }
    } else if (e.bits == 8) {
      for (; k < e.k; ++k) {
        for (int64_t n = n0; n < n1; ++n) {
          e.b[n * col_bytes + k] =
              static_cast<uint8_t>(CodeAt(codes, k * e.n + n, code_bits, is_signed) + offset);
        }
      }
    }
    for (; k < e.k; ++k) {
      for (int64_t n = n0; n < n1; ++n) {
        PutBits(e.b.data() + n * col_bytes, k, e.bits,
                static_cast<uint32_t>(CodeAt(codes, k * e.n + n, code_bits, is_signed) + offset));
      }
    }
  }
}

// A 16 x 16 block of bytes transposed (each XORed with `flip`): row i of `in` (at
// i * in_stride) becomes column i of `out` (row j of out, at j * out_stride, is column j
// of in). SSE2 unpacks: bytes, words, dwords, qwords.
void TransposeBytes16(const uint8_t* in, int64_t in_stride, uint8_t* out, int64_t out_stride,
                      uint8_t flip) {
  const __m128i f = _mm_set1_epi8(static_cast<char>(flip));
  __m128i r[16], s[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) {
    r[i] = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i * in_stride)), f);
  }
  // s[8g + i]: rows 2i, 2i+1 interleaved, columns 8g..8g+7 (one word per column).
  for (int i = 0; i < 8; ++i) {
    s[i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
    s[8 + i] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
  }
  // t[8g + 4h + i]: rows 4i..4i+3, columns 8g+4h..+3 (one dword per column).
  for (int g = 0; g < 2; ++g) {
    for (int i = 0; i < 4; ++i) {
      t[8 * g + i] = _mm_unpacklo_epi16(s[8 * g + 2 * i], s[8 * g + 2 * i + 1]);
      t[8 * g + 4 + i] = _mm_unpackhi_epi16(s[8 * g + 2 * i], s[8 * g + 2 * i + 1]);
    }
  }
  // u[b + 2m + i], b = 8g + 4h: rows 8i..8i+7, columns b+2m, b+2m+1 (one qword each).
  for (int b = 0; b < 16; b += 4) {
    for (int i = 0; i < 2; ++i) {
      u[b + i] = _mm_unpacklo_epi32(t[b + 2 * i], t[b + 2 * i + 1]);
      u[b + 2 + i] = _mm_unpackhi_epi32(t[b + 2 * i], t[b + 2 * i + 1]);
    }
  }
  for (int c = 0; c < 16; c += 2) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c * out_stride), _mm_unpacklo_epi64(u[c], u[c + 1]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + (c + 1) * out_stride), _mm_unpackhi_epi64(u[c], u[c + 1]));
  }
}

}  // namespace

absl::StatusOr<NBitsEncoding> EncodeMatMulNBitsReference(const uint8_t* codes,
                                                         const BranchParams& params,
                                                         const ParamLayout& layout,
                                                         const QuantSpec& spec, int code_bits) {
  if (!NBitsCanCarry(layout, spec.bits)) {
    return absl::InternalError("MatMulNBits cannot carry this weight layout");
  }
  NBitsEncoding e = NBitsWithParams(params, layout, spec);
  FillNBitsCodes(codes, code_bits, spec.symmetric, 0, e);
  return e;
}

absl::StatusOr<NBitsEncoding> EncodeMatMulNBits(const uint8_t* codes, const BranchParams& params,
                                                const ParamLayout& layout, const QuantSpec& spec,
                                                int code_bits) {
  if (!NBitsCanCarry(layout, spec.bits)) {
    return absl::InternalError("MatMulNBits cannot carry this weight layout");
  }
  NBitsEncoding e = NBitsWithParams(params, layout, spec);
  const int64_t col_bytes = e.blocks * e.block_size * e.bits / 8;
  // Kernel code = stored code + 2^(bits-1) when signed: in two's complement, flipping the
  // top bit of each field.
  // Transposed in tiles: the input read along rows, each column's output bytes written in
  // order, a tile's output lines few enough to stay in L1.
  int64_t k = 0;
  if (code_bits == 4 && e.bits == 4 && e.n % 2 == 0) {
    const uint8_t flip = spec.symmetric ? 0x88 : 0x00;
    const int64_t row_bytes = e.n / 2, pairs = e.k / 2;
    // Row pairs [p0, p1) of column pairs [j0, j1), byte by byte.
    auto scalar = [&](int64_t p0, int64_t p1, int64_t j0, int64_t j1) {
      for (int64_t kp = p0; kp < p1; ++kp) {
        const uint8_t* r0 = codes + (2 * kp) * row_bytes;
        const uint8_t* r1 = r0 + row_bytes;
        uint8_t* out = e.b.data() + kp;
        for (int64_t j = j0; j < j1; ++j) {
          const uint8_t a = r0[j] ^ flip, b = r1[j] ^ flip;
          out[(2 * j) * col_bytes] = static_cast<uint8_t>((a & 0x0F) | (b << 4));
          out[(2 * j + 1) * col_bytes] = static_cast<uint8_t>((a >> 4) | (b & 0xF0));
        }
      }
    };
    // Tiles of 32 rows x 16 columns: each row's 8 bytes unpacked to one code per byte, the
    // two 16 x 16 byte blocks transposed, and each column's 32 codes packed back into 16
    // bytes (two rows per byte) and stored whole.
    const int64_t p32 = pairs / 16 * 16, j16 = row_bytes / 8 * 8;
    alignas(16) uint8_t rows[32][16], cols[16][32];
    const __m128i lo_nib = _mm_set1_epi8(0x0F), f = _mm_set1_epi8(static_cast<char>(flip));
    // Blocks of 128 rows (their input stays in L2 across the column tiles; each column
    // gets a whole 64-byte line of output per block).
    const __m128i low_byte = _mm_set1_epi16(0x00FF), high_nib = _mm_set1_epi16(0x00F0);
    for (int64_t block = 0; block < p32; block += 64) {
      const int64_t block_end = std::min(p32, block + 64);
      for (int64_t j0 = 0; j0 < j16; j0 += 8) {
        for (int64_t p0 = block; p0 < block_end; p0 += 16) {
          for (int r = 0; r < 32; ++r) {
            const __m128i v = _mm_xor_si128(
                _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + (2 * p0 + r) * row_bytes + j0)), f);
            const __m128i lo = _mm_and_si128(v, lo_nib), hi = _mm_and_si128(_mm_srli_epi16(v, 4), lo_nib);
            _mm_store_si128(reinterpret_cast<__m128i*>(rows[r]), _mm_unpacklo_epi8(lo, hi));
          }
          TransposeBytes16(rows[0], 16, cols[0], 32, 0);
          TransposeBytes16(rows[16], 16, cols[0] + 16, 32, 0);
          for (int c = 0; c < 16; ++c) {
            const __m128i a = _mm_load_si128(reinterpret_cast<const __m128i*>(cols[c]));
            const __m128i b = _mm_load_si128(reinterpret_cast<const __m128i*>(cols[c] + 16));
            // Each 16-bit lane holds rows 2i (low byte) and 2i+1: their nibbles into one byte.
            const __m128i qa = _mm_or_si128(_mm_and_si128(a, low_byte), _mm_and_si128(_mm_srli_epi16(a, 4), high_nib));
            const __m128i qb = _mm_or_si128(_mm_and_si128(b, low_byte), _mm_and_si128(_mm_srli_epi16(b, 4), high_nib));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(e.b.data() + (2 * j0 + c) * col_bytes + p0),
                             _mm_packus_epi16(qa, qb));
          }
        }
      }
    }
    scalar(p32, pairs, 0, j16);         // the rows below the last whole tile
    scalar(0, pairs, j16, row_bytes);   // the columns right of it
    k = 2 * pairs;
  } else if (code_bits == 8 && e.bits == 8) {
    // 16 x 16 blocks transposed in registers, a band of 16 columns at a time down all rows
    // (each column's bytes written in order); the ragged edges byte by byte.
    const uint8_t flip = spec.symmetric ? 0x80 : 0x00;
    const int64_t k16 = e.k / 16 * 16, n16 = e.n / 16 * 16;
    for (int64_t n0 = 0; n0 < n16; n0 += 16) {
      for (int64_t k0 = 0; k0 < k16; k0 += 16) {
        TransposeBytes16(codes + k0 * e.n + n0, e.n, e.b.data() + n0 * col_bytes + k0, col_bytes, flip);
      }
      for (int64_t kk = k16; kk < e.k; ++kk) {
        for (int64_t n = n0; n < n0 + 16; ++n) e.b[n * col_bytes + kk] = codes[kk * e.n + n] ^ flip;
      }
    }
    for (int64_t n = n16; n < e.n; ++n) {
      for (int64_t kk = 0; kk < e.k; ++kk) e.b[n * col_bytes + kk] = codes[kk * e.n + n] ^ flip;
    }
    k = e.k;
  }
  FillNBitsCodes(codes, code_bits, spec.symmetric, k, e);  // what is left (an odd last row)
  return e;
}

absl::Status EncodeMatMulNBitsInBands(
    const uint8_t* codes, const BranchParams& params, const ParamLayout& layout,
    const QuantSpec& spec, int code_bits, int64_t band_bytes,
    const std::function<absl::Status(int64_t n0, const NBitsEncoding& band)>& sink) {
  if (!NBitsCanCarry(layout, spec.bits)) {
    return absl::InternalError("MatMulNBits cannot carry this weight layout");
  }
  const int64_t k = layout.shape[0], n = layout.shape[1];
  // Columns per band: a multiple of 8, so that every band starts on a byte of each row.
  const int64_t per_column = std::max<int64_t>(1, k * code_bits / 8);
  const int64_t band = std::max<int64_t>(8, band_bytes / per_column / 8 * 8);
  if ((n * code_bits) % 8 != 0 || band >= n) {
    SQ_ASSIGN_OR_RETURN(NBitsEncoding e, EncodeMatMulNBits(codes, params, layout, spec, code_bits));
    return sink(0, e);
  }
  const int64_t row_bytes = n * code_bits / 8;
  std::vector<uint8_t> band_codes;
  for (int64_t n0 = 0; n0 < n; n0 += band) {
    const int64_t n1 = std::min(n, n0 + band), width = n1 - n0;
    // The band's codes, row by row, and its parameters.
    const int64_t band_row = width * code_bits / 8;  // whole bytes: n * code_bits % 8 == 0
    band_codes.assign(static_cast<size_t>(k * band_row), 0);
    for (int64_t r = 0; r < k; ++r) {
      std::memcpy(band_codes.data() + r * band_row, codes + r * row_bytes + n0 * code_bits / 8,
                  static_cast<size_t>(band_row));
    }
    BranchParams bp;
    bp.axis = params.axis;
    bp.block_size = params.block_size;
    switch (layout.granularity) {
      case Granularity::kTensor:
        bp = params;
        break;
      case Granularity::kChannel:
        bp.shape = {width};
        bp.scales.assign(params.scales.begin() + n0, params.scales.begin() + n1);
        bp.zero_points.assign(params.zero_points.begin() + n0, params.zero_points.begin() + n1);
        break;
      case Granularity::kBlock: {
        const int64_t blocks = static_cast<int64_t>(params.scales.size()) / n;
        bp.shape = {blocks, width};
        for (int64_t kb = 0; kb < blocks; ++kb) {
          bp.scales.insert(bp.scales.end(), params.scales.begin() + kb * n + n0, params.scales.begin() + kb * n + n1);
          bp.zero_points.insert(bp.zero_points.end(), params.zero_points.begin() + kb * n + n0,
                                params.zero_points.begin() + kb * n + n1);
        }
        break;
      }
    }
    ParamLayout bl = layout;
    bl.shape = {k, width};
    SQ_ASSIGN_OR_RETURN(NBitsEncoding e, EncodeMatMulNBits(band_codes.data(), bp, bl, spec, code_bits));
    SQ_RETURN_IF_ERROR(sink(n0, e));
  }
  return absl::OkStatus();
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

absl::StatusOr<GatherEncoding> EncodeGatherBlockQuantizedInBands(
    const uint8_t* codes, const BranchParams& params, const ParamLayout& layout, const QuantSpec& spec,
    int code_bits, int64_t band_bytes,
    const std::function<absl::Status(int64_t offset, const std::vector<uint8_t>& bytes)>& sink) {
  SQ_ASSIGN_OR_RETURN(GatherEncoding e, GatherParams(params, layout, spec));
  const int32_t offset = -spec.qmin();
  const int64_t row_bytes = e.cols * e.bits / 8;  // whole bytes (GatherCanCarry)
  const int64_t rows_per_band = std::max<int64_t>(1, band_bytes / std::max<int64_t>(row_bytes, 1));
  // Codes already in the table's container, using all of its bits: the data is the codes
  // with each signed field moved up by 2^(bits-1), i.e. its top bit flipped; a whole-byte
  // XOR. (3-bit codes in a 4-bit container move by 4: field by field.)
  const bool same_container = code_bits == e.bits && (spec.bits == e.bits || !spec.symmetric);
  uint8_t flip = 0;
  if (spec.symmetric) flip = e.bits == 8 ? 0x80 : e.bits == 4 ? 0x88 : 0xAA;
  std::vector<uint8_t> band;
  for (int64_t r0 = 0; r0 < e.rows; r0 += rows_per_band) {
    const int64_t r1 = std::min(e.rows, r0 + rows_per_band);
    band.assign(static_cast<size_t>((r1 - r0) * row_bytes), 0);
    if (same_container) {
      const uint8_t* in = codes + r0 * row_bytes;
      for (size_t i = 0; i < band.size(); ++i) band[i] = in[i] ^ flip;
    } else {
      const int64_t first = r0 * e.cols, count = (r1 - r0) * e.cols;
      for (int64_t i = 0; i < count; ++i) {
        PutBits(band.data(), i, e.bits,
                static_cast<uint32_t>(CodeAt(codes, first + i, code_bits, spec.symmetric) + offset));
      }
    }
    SQ_RETURN_IF_ERROR(sink(r0 * row_bytes, band));
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

namespace {

// outer8's preconditions: a split layer, and a MatMul weight [K, N] (reduction axis 0,
// channel axis 1) or a Gather table [R, C] (reduction axis 1, the row is the channel).
absl::Status CheckOuter8(absl::Span<const uint8_t* const> branch_codes, const TransformResult& result,
                         const ParamLayout& layout) {
  if (branch_codes.size() != 3 || result.num_branches != 3) {
    return absl::InternalError("the outer8 form needs a split layer");
  }
  const bool rows_are_channels = layout.reduction_axis == 1;
  if (layout.shape.size() != 2 || layout.reduction_axis > 1 ||
      (layout.granularity == Granularity::kChannel &&
       layout.channel_axis != (rows_are_channels ? 0 : 1))) {
    return absl::InternalError("the outer8 form needs a 2-D [K, N] or [R, C] weight");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OuterBranch> QuantizeOuterAt8Reference(const float* values,
                                                      absl::Span<const uint8_t* const> branch_codes,
                                                      const TransformResult& result,
                                                      const ParamLayout& layout, bool symmetric,
                                                      int code_bits, const ReleaseFn& release) {
  SQ_RETURN_IF_ERROR(CheckOuter8(branch_codes, result, layout));
  const bool rows_are_channels = layout.reduction_axis == 1;
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

namespace {

// ---- outer8 row kernels (SSE2) ----------------------------------------------------------
// Parameters of a row segment are either one per column (a [K, N] weight per channel or
// blocked: pointers already at the segment's first column) or one for the whole segment
// (per tensor, or a table's row). Results equal the scalar loops in QuantizeOuterAt8 (and
// so the reference): the same IEEE operations per weight; min/max over a constant
// parameter are order-free here (no NaN; a -0 never wins against the initial +0).

// 4 outer flags (bit k = lane k) into `bits` at weight index i.
inline void OrBits(uint8_t* bits, int64_t i, unsigned mask4) {
  const unsigned shifted = mask4 << (i & 7);
  bits[i >> 3] |= static_cast<uint8_t>(shifted);
  if (shifted >> 8) bits[(i >> 3) + 1] |= static_cast<uint8_t>(shifted >> 8);
}
inline unsigned GetBits4(const uint8_t* bits, int64_t i) {
  unsigned w = bits[i >> 3];
  if ((i & 7) > 4) w |= static_cast<unsigned>(bits[(i >> 3) + 1]) << 8;
  return (w >> (i & 7)) & 15u;
}

template <bool kPerColumn>
int64_t OuterRangesRow(const float* v, const int32_t* c0, const int32_t* c2, const int32_t* z0,
                       const int32_t* z2, float* lo, float* hi, int64_t width, int64_t i0,
                       uint8_t* bits) {
  __m128 vlo = _mm_set1_ps(lo[0]), vhi = _mm_set1_ps(hi[0]);
  const __m128i cz0 = _mm_set1_epi32(z0[0]), cz2 = _mm_set1_epi32(z2[0]);
  int64_t c = 0;
  for (; c + 4 <= width; c += 4) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c0 + c));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c2 + c));
    const __m128i za = kPerColumn ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(z0 + c)) : cz0;
    const __m128i zb = kPerColumn ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(z2 + c)) : cz2;
    const __m128i inner = _mm_and_si128(_mm_cmpeq_epi32(a, za), _mm_cmpeq_epi32(b, zb));
    const __m128 x = _mm_andnot_ps(_mm_castsi128_ps(inner), _mm_loadu_ps(v + c));
    OrBits(bits, i0 + c, static_cast<unsigned>(~_mm_movemask_ps(_mm_castsi128_ps(inner))) & 15u);
    if (kPerColumn) {
      _mm_storeu_ps(lo + c, _mm_min_ps(x, _mm_loadu_ps(lo + c)));
      _mm_storeu_ps(hi + c, _mm_max_ps(x, _mm_loadu_ps(hi + c)));
    } else {
      vlo = _mm_min_ps(x, vlo);
      vhi = _mm_max_ps(x, vhi);
    }
  }
  if (!kPerColumn) {
    alignas(16) float l[4], h[4];
    _mm_store_ps(l, vlo);
    _mm_store_ps(h, vhi);
    for (int k = 0; k < 4; ++k) {
      lo[0] = std::min(lo[0], l[k]);
      hi[0] = std::max(hi[0], h[k]);
    }
  }
  return c;  // the caller finishes [c, width) with the scalar loop
}

template <bool kPerColumn>
int64_t OuterCodesRow(const float* v, const int32_t* c1, const uint8_t* bits, int64_t i0,
                      const float* s8, const int32_t* z8, const float* ms, const int32_t* mz,
                      float qmin, float qmax, int64_t width, uint8_t* codes, double* energy) {
  const __m128 vqmin = _mm_set1_ps(qmin), vqmax = _mm_set1_ps(qmax);
  const __m128i byte = _mm_set1_epi32(0xFF);
  const __m128i lane_bit = _mm_set_epi32(8, 4, 2, 1);
  __m128d acc01 = _mm_setzero_pd(), acc23 = _mm_setzero_pd();
  int64_t c = 0;
  for (; c + 4 <= width; c += 4) {
    const __m128 x = _mm_loadu_ps(v + c);
    const __m128 s = kPerColumn ? _mm_loadu_ps(s8 + c) : _mm_set1_ps(s8[0]);
    const __m128i z = kPerColumn ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(z8 + c)) : _mm_set1_epi32(z8[0]);
    const __m128 m_s = kPerColumn ? _mm_loadu_ps(ms + c) : _mm_set1_ps(ms[0]);
    const __m128i m_z = kPerColumn ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(mz + c)) : _mm_set1_epi32(mz[0]);
    const __m128i outer = _mm_cmpeq_epi32(
        _mm_and_si128(_mm_set1_epi32(static_cast<int>(GetBits4(bits, i0 + c))), lane_bit), lane_bit);
    // saturate(round_half_even(x / s) + z), as QuantizeValue.
    const __m128 t = RoundHalfEven4(_mm_div_ps(x, s));
    const __m128 q = _mm_min_ps(_mm_max_ps(_mm_add_ps(t, _mm_cvtepi32_ps(z)), vqmin), vqmax);
    const __m128i qi = _mm_cvttps_epi32(q);
    const __m128 a_outer = _mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(qi, z)), s);
    const __m128i code1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c1 + c));
    const __m128 a_mid = _mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(code1, m_z)), m_s);
    const __m128 of = _mm_castsi128_ps(outer);
    const __m128 approx = _mm_or_ps(_mm_and_ps(of, a_outer), _mm_andnot_ps(of, a_mid));
    const __m128i code = _mm_or_si128(_mm_and_si128(outer, qi), _mm_andnot_si128(outer, z));
    const __m128i packed = _mm_packus_epi16(_mm_packs_epi32(_mm_and_si128(code, byte), _mm_setzero_si128()),
                                            _mm_setzero_si128());
    const int32_t four = _mm_cvtsi128_si32(packed);
    std::memcpy(codes + c, &four, 4);
    const __m128d e01 = _mm_sub_pd(_mm_cvtps_pd(x), _mm_cvtps_pd(approx));
    const __m128d e23 = _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(x, x)), _mm_cvtps_pd(_mm_movehl_ps(approx, approx)));
    acc01 = _mm_add_pd(acc01, _mm_mul_pd(e01, e01));
    acc23 = _mm_add_pd(acc23, _mm_mul_pd(e23, e23));
  }
  alignas(16) double a[2], b[2];
  _mm_store_pd(a, acc01);
  _mm_store_pd(b, acc23);
  *energy += (a[0] + a[1]) + (b[0] + b[1]);
  return c;
}

}  // namespace

absl::StatusOr<OuterBranch> QuantizeOuterAt8(const float* values,
                                             absl::Span<const uint8_t* const> branch_codes,
                                             const TransformResult& result,
                                             const ParamLayout& layout, bool symmetric,
                                             int code_bits, const ReleaseFn& release,
                                             const std::function<void()>& outer_codes_read) {
  SQ_RETURN_IF_ERROR(CheckOuter8(branch_codes, result, layout));
  const bool rows_are_channels = layout.reduction_axis == 1;
  const int64_t rows = layout.shape[0], cols = layout.shape[1], n = rows * cols;
  const Granularity g = layout.granularity;
  const int64_t bs = layout.block_size, row_blocks = (cols + bs - 1) / bs;
  // The parameter of (row, col) is row_base(row) + col_param[col] (see the reference).
  std::vector<int64_t> col_param(static_cast<size_t>(cols), 0);
  for (int64_t c = 0; c < cols && g != Granularity::kTensor; ++c) {
    col_param[c] = !rows_are_channels ? c : g == Granularity::kBlock ? c / bs : 0;
  }
  auto row_base = [&](int64_t r) -> int64_t {
    if (g == Granularity::kTensor) return 0;
    if (!rows_are_channels) return g == Granularity::kBlock ? (r / bs) * cols : 0;
    return g == Granularity::kBlock ? r * row_blocks : r;
  };
  // How parameters run along a row: one per column, one per row segment, or (a blocked
  // table) neither, left to the scalar loops.
  enum class Walk { kPerColumn, kConstant, kOther };
  const Walk walk = g == Granularity::kTensor || (rows_are_channels && g == Granularity::kChannel)
                        ? Walk::kConstant
                        : !rows_are_channels ? Walk::kPerColumn : Walk::kOther;
  const int64_t params = static_cast<int64_t>(result.params[1].scales.size());
  const std::vector<int32_t>& z0 = result.params[0].zero_points;
  const std::vector<int32_t>& z2 = result.params[2].zero_points;
  std::vector<float> lo(params, 0.0f), hi(params, 0.0f);  // widened to 0
  std::vector<uint8_t> outer_bits((n + 7) / 8, 0);  // one bit per weight
  // Both passes walk blocks of kRowBlock rows in tiles of kColTile columns, so that a
  // tile's parameters (per column on a wide [K, N] weight: an lm_head's are megabytes)
  // stay in cache across the block's rows; the block's values are handed back after it.
  constexpr int64_t kRowBlock = 32, kColTile = 2048;
  const int64_t tile = std::min(cols, kColTile);
  std::vector<int32_t> c0(static_cast<size_t>(tile)), c2(static_cast<size_t>(tile));
  constexpr int64_t kPiece = int64_t{1} << 22;
  int64_t released = 0;
  auto passed = [&](int64_t end) {
    if (release && end - released >= kPiece) {
      release(released, end);
      released = end;
    }
  };
  // fn(i0, width, base, t0): the segment of `width` weights from index i0 (row r, columns
  // t0..), whose parameters start at base + col_param[t0]; blocks of rows, tiles of columns.
  auto for_each_segment = [&](auto&& fn) {
    for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
      const int64_t r1 = std::min(rows, r0 + kRowBlock);
      for (int64_t t0 = 0; t0 < cols; t0 += tile) {
        const int64_t width = std::min(cols, t0 + tile) - t0;
        for (int64_t r = r0; r < r1; ++r) fn(r * cols + t0, width, row_base(r), t0);
      }
      passed(r1 * cols);
    }
    if (release) release(released, n);
    released = 0;
  };
  for_each_segment([&](int64_t i0, int64_t width, int64_t base, int64_t t0) {
    UnpackCodesAt(branch_codes[0], i0, width, code_bits, symmetric, c0.data());
    UnpackCodesAt(branch_codes[2], i0, width, code_bits, symmetric, c2.data());
    const float* v = values + i0;
    const int64_t* cp = col_param.data() + t0;
    const int64_t first = base + cp[0];
    int64_t c = 0;
    if (walk == Walk::kPerColumn) {
      c = OuterRangesRow<true>(v, c0.data(), c2.data(), z0.data() + first, z2.data() + first,
                               lo.data() + first, hi.data() + first, width, i0, outer_bits.data());
    } else if (walk == Walk::kConstant) {
      c = OuterRangesRow<false>(v, c0.data(), c2.data(), z0.data() + first, z2.data() + first,
                                lo.data() + first, hi.data() + first, width, i0, outer_bits.data());
    }
    for (; c < width; ++c) {
      const int64_t p = base + cp[c], i = i0 + c;
      const uint8_t o = static_cast<uint8_t>(int{c0[c] != z0[p]} | int{c2[c] != z2[p]});
      outer_bits[i >> 3] |= static_cast<uint8_t>(o << (i & 7));
      // Without a branch: a weight outside the outer clusters counts as 0, inside the
      // range already (it is widened to 0).
      const float x = o ? v[c] : 0.0f;
      lo[p] = std::min(lo[p], x);
      hi[p] = std::max(hi[p], x);
    }
  });
  if (outer_codes_read) outer_codes_read();
  const QuantSpec spec8{8, symmetric};
  OuterBranch out;
  std::vector<float> scale8(params), zero8(params), mid_scale(params);
  out.params.scales.resize(params);
  out.params.zero_points.resize(params);
  const BranchParams& mid = result.params[1];
  for (int64_t p = 0; p < params; ++p) {
    const QuantParams q = ChooseQuantParams(lo[p], hi[p], spec8);
    out.params.scales[p] = scale8[p] = q.scale;
    out.params.zero_points[p] = q.zero_point;
    zero8[p] = static_cast<float>(q.zero_point);
    mid_scale[p] = mid.scales[p];
  }
  out.codes.resize(static_cast<size_t>(n));
  const float qmin = static_cast<float>(spec8.qmin()), qmax = static_cast<float>(spec8.qmax());
  std::vector<int32_t> c1(static_cast<size_t>(tile));
  std::vector<float> approx(static_cast<size_t>(tile));
  for_each_segment([&](int64_t i0, int64_t width, int64_t base, int64_t t0) {
    UnpackCodesAt(branch_codes[1], i0, width, code_bits, symmetric, c1.data());
    const float* v = values + i0;
    const int64_t* cp = col_param.data() + t0;
    uint8_t* codes = out.codes.data() + i0;
    const int64_t first = base + cp[0];
    double energy = 0;
    int64_t vec_end = 0;
    if (walk != Walk::kOther) {
      auto row = walk == Walk::kPerColumn ? OuterCodesRow<true> : OuterCodesRow<false>;
      vec_end = row(v, c1.data(), outer_bits.data(), i0, scale8.data() + first,
                    out.params.zero_points.data() + first, mid.scales.data() + first,
                    mid.zero_points.data() + first, qmin, qmax, width, codes, &energy);
    }
    for (int64_t c = vec_end; c < width; ++c) {
      const int64_t p = base + cp[c], i = i0 + c;
      if ((outer_bits[i >> 3] >> (i & 7)) & 1) {
        // QuantizeValue: saturate(round_half_even(x / s) + z), then dequantized.
        const float q = std::min(std::max(RoundHalfEven(v[c] / scale8[p]) + zero8[p], qmin), qmax);
        const int32_t qi = static_cast<int32_t>(q);
        codes[c] = static_cast<uint8_t>(qi);
        approx[c] = static_cast<float>(qi - out.params.zero_points[p]) * scale8[p];
      } else {
        codes[c] = static_cast<uint8_t>(out.params.zero_points[p]);
        approx[c] = static_cast<float>(c1[c] - mid.zero_points[p]) * mid_scale[p];
      }
    }
    // Four partial sums (a fixed order: deterministic, and no 4-cycle chain per weight).
    double lane[4] = {0, 0, 0, 0};
    int64_t c = vec_end;
    for (; c + 3 < width; c += 4) {
      for (int l = 0; l < 4; ++l) {
        const double e = static_cast<double>(v[c + l]) - approx[c + l];
        lane[l] += e * e;
      }
    }
    for (; c < width; ++c) {
      const double e = static_cast<double>(v[c]) - approx[c];
      lane[0] += e * e;
    }
    out.error_energy += energy + ((lane[0] + lane[1]) + (lane[2] + lane[3]));
  });
  return out;
}

}  // namespace sq
