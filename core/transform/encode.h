// Storage encodings of a quantized (possibly split) weight beyond DequantizeLinear's: what
// `--form compact` and ONNX Runtime's MatMulNBits store. Both are re-encodings of the
// codes TransformWeight emits (per branch, packed at 8, 4 or 2 bits) and dequantize to exactly
// the same values as the branches form: value = (code - zero_point) * scale of the branch
// a weight belongs to, in float, as DequantizeLinear computes it.
//
// Compact (standard ONNX ops decode it; see rewrite.cc for the graph):
//   codes : one unsigned code per weight, packed at `container_bits` (2, 3, 4 or 8; low
//           bits first, as quantizer.h's PackCodes; a 3-bit code may straddle two bytes),
//           in the weight's row-major order, CompactCodeBytes long. Signed
//           (symmetric) codes are stored offset by 2^(bits-1), their zero points too.
//   ids   : split layers only: the branch (cluster) of each weight, 0, 1 or 2, five to a
//           byte in base 3 (byte = sum of id_j * 3^j, j = 0..4: 1.6 bits per weight),
//           IdBytes long. A weight whose code is its branch's zero point in every branch is
//           0 whatever its id; it gets id 0.
//   zero points and scales: the TransformResult's, in one tensor each, parameter-major with
//           the branch fastest (index p * branches + b): zero points unsigned (offset as
//           the codes) and packed at `container_bits` like the codes; scales float16
//           times 2^scale_exponent when the spec rounded them (QuantSpec::half_scales;
//           the layer stores 2^scale_exponent as one float), else float32.
// Stored bits per weight: container_bits + 1.6 (split) or container_bits (plain), plus the
// parameters (CompactParamBytes).
//
// MatMulNBits (com.microsoft, ONNX Runtime): for a 2-D MatMul weight W[K, N] and one
// branch: B uint8 [N, ceil(K / block), block * bits / 8] (column n's codes along K, low
// bits first, the last block padded with the zero point), scales float [N * blocks],
// zero_points uint8 [N * ceil(blocks * bits / 8)] (packed the same way, per column).
// Per-channel and per-tensor parameters repeat in every block of their column.
//
// GatherBlockQuantized (com.microsoft, ONNX Runtime): for a 2-D Gather table W[R, C]
// gathered along rows, and one branch: data uint8 [R, C * bits / 8] (each row's codes,
// low bits first, no padding), scales float [R, blocks] with blocks = ceil(C / block),
// zero_points uint8 [R, ceil(blocks * bits / 8)] (packed the same way). `bits` is the
// code container (2, 4 or 8): 3-bit and 5-7-bit codes ride in the next container up with
// their zero points, exactly. Per-row (channel) and per-tensor parameters use one block
// spanning the row.
//
// Pure functions, thread-safe.
#ifndef SQ_CORE_TRANSFORM_ENCODE_H_
#define SQ_CORE_TRANSFORM_ENCODE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/options.h"
#include "core/weight_transform.h"

namespace sq {

// Where a weight's (scale, zero point) live: maps a row-major element index to its index
// in BranchParams::scales.
struct ParamLayout {
  std::vector<int64_t> shape;
  Granularity granularity = Granularity::kChannel;
  int channel_axis = 0;
  int reduction_axis = 0;
  int block_size = 32;
};
// The parameter index of every element, in row-major order (for tests and small tensors).
std::vector<int64_t> ParamIndexOfElements(const ParamLayout& layout);

// Smallest ONNX-friendly container for `bits`: 2, 4 or 8 (the kernels' and the
// transform's code streams).
int ContainerBits(int bits);
// The compact form's container: 2, 3, 4 or 8. 3-bit codes are packed eight to three bytes
// (the decode graph unpacks them with integer arithmetic), so a split INT3 layer stores 5
// bits per weight, not 6.
int CompactContainerBits(int bits);
// Bytes of n codes in the compact form's container: packed, and for 3 bits rounded up to
// whole groups of 8 codes (3 bytes).
int64_t CompactCodeBytes(int64_t n, int container_bits);
// Bytes of n cluster ids in the compact form (five per byte, base 3).
inline int64_t IdBytes(int64_t n) { return (n + 4) / 5; }

// Bytes of a compact layer's parameters: `params` (scale, zero point) pairs per branch, and
// the scale multiplier of float16 scales.
int64_t CompactParamBytes(int64_t params, int branches, int container_bits, bool half_scales);

struct CompactEncoding {
  std::vector<uint8_t> codes;                 // CompactCodeBytes(n, container_bits)
  std::vector<uint8_t> ids;                   // IdBytes(n); empty when unsplit
  std::vector<uint8_t> scales;                // params * branches, float16 or float32 bytes
  std::vector<uint8_t> zero_points;           // CompactCodeBytes(params * branches, container_bits)
  int scale_exponent = 0;                     // float16 scales: stored = scale * 2^-this
};

// `branch_codes[b]` holds the n codes of branch b packed at `code_bits` (8, 4 or 2, as
// quantizer.h's PackCodes; two's complement when signed).
// Internal when a weight is outside its zero point in more than one branch (the branches
// were not disjoint) or when spec.half_scales and a scale is not a float16 value times
// the result's 2^scale_exponent.
absl::StatusOr<CompactEncoding> EncodeCompact(absl::Span<const uint8_t* const> branch_codes,
                                              const TransformResult& result,
                                              const ParamLayout& layout, const QuantSpec& spec,
                                              int container_bits, int code_bits = 8);

// Reference decoder (what the compact graph computes) from the stored tensors alone, for
// tests.
std::vector<float> DecodeCompact(const CompactEncoding& e, const ParamLayout& layout, int branches,
                                 int container_bits, bool half_scales);

struct NBitsEncoding {
  int64_t k = 0, n = 0, blocks = 0;
  int bits = 4, block_size = 128;
  std::vector<uint8_t> b;            // N * blocks * block_size * bits / 8
  std::vector<float> scales;         // N * blocks
  std::vector<uint8_t> zero_points;  // N * ceil(blocks * bits / 8)
};

// Whether MatMulNBits can carry this layout exactly: 2-D [K, N], reduction axis 0, bits
// 2, 4 or 8, and (blocked granularity) a block size that is a power of two in 16..256.
bool NBitsCanCarry(const ParamLayout& layout, int bits);
// The block size MatMulNBits uses for a layout it can carry: the layout's own for blocked
// granularity, else 128 (or the smallest power of two >= K, at least 16, for K < 128).
int NBitsBlockSize(const ParamLayout& layout);

// One branch's codes (K*N, row-major [K, N], packed at `code_bits`) as MatMulNBits tensors.
// Transposes whole bytes where the codes' container is the kernel's (4 or 8 bits, N even
// for 4); EncodeMatMulNBitsReference, element by element, is what it must equal byte for
// byte (encode_test).
absl::StatusOr<NBitsEncoding> EncodeMatMulNBits(const uint8_t* codes, const BranchParams& params,
                                                const ParamLayout& layout, const QuantSpec& spec,
                                                int code_bits = 8);
absl::StatusOr<NBitsEncoding> EncodeMatMulNBitsReference(const uint8_t* codes,
                                                         const BranchParams& params,
                                                         const ParamLayout& layout,
                                                         const QuantSpec& spec, int code_bits = 8);
// EncodeMatMulNBits a band of columns at a time, so that the transposed B of a large
// weight is never held whole: `sink(n0, band)` receives columns [n0, n0 + band.n) encoded,
// whose b, scales and zero_points are exactly EncodeMatMulNBits' bytes from column n0 on
// (at n0 * band.blocks * block_size * bits / 8, n0 * band.blocks, n0 * ceil(band.blocks *
// bits / 8)). Bands hold about `band_bytes` of codes (a multiple of 8 columns); a weight
// whose code rows do not start on bytes is encoded as one band. Errors: EncodeMatMulNBits'
// and the sink's (the first stops the encoding).
absl::Status EncodeMatMulNBitsInBands(
    const uint8_t* codes, const BranchParams& params, const ParamLayout& layout,
    const QuantSpec& spec, int code_bits, int64_t band_bytes,
    const std::function<absl::Status(int64_t n0, const NBitsEncoding& band)>& sink);
// Reference decoder: W[K, N] row-major, as MatMulNBits dequantizes it.
std::vector<float> DecodeMatMulNBits(const NBitsEncoding& e);

// Whether GatherBlockQuantized can carry this layout exactly: 2-D [R, C], reduction axis 1
// (the row is the channel), each row a whole number of bytes at ContainerBits(bits), and
// (blocked granularity) a block size that is a power of two >= 16.
bool GatherCanCarry(const ParamLayout& layout, int bits);
// The block size for a layout it can carry: the layout's own (blocked), else the smallest
// power of two >= C (at least 16), one block per row.
int64_t GatherBlockSize(const ParamLayout& layout);

struct GatherEncoding {
  int64_t rows = 0, cols = 0, blocks = 0, block_size = 16;
  int bits = 4;                      // the container: GatherBlockQuantized's `bits`
  std::vector<uint8_t> data;         // rows * cols * bits / 8
  std::vector<float> scales;         // rows * blocks
  std::vector<uint8_t> zero_points;  // rows * ceil(blocks * bits / 8)
};
// One branch's codes (R*C, row-major, packed at `code_bits`) as GatherBlockQuantized tensors.
absl::StatusOr<GatherEncoding> EncodeGatherBlockQuantized(const uint8_t* codes,
                                                          const BranchParams& params,
                                                          const ParamLayout& layout,
                                                          const QuantSpec& spec, int code_bits = 8);
// EncodeGatherBlockQuantized with the data streamed a band of rows at a time (about
// `band_bytes` each), so that a large table is never held twice: `sink(offset, bytes)`
// receives the data's bytes from `offset` on, in order; the returned encoding holds the
// scales and zero points and an empty `data`. Same bytes as the whole encoding.
absl::StatusOr<GatherEncoding> EncodeGatherBlockQuantizedInBands(
    const uint8_t* codes, const BranchParams& params, const ParamLayout& layout, const QuantSpec& spec,
    int code_bits, int64_t band_bytes,
    const std::function<absl::Status(int64_t offset, const std::vector<uint8_t>& bytes)>& sink);
// The same for 8-bit codes (one byte each, row-major), re-encoded in place: the data is
// `codes` itself, so a large table's codes are never held twice.
absl::StatusOr<GatherEncoding> EncodeGatherBlockQuantized8(std::vector<uint8_t> codes,
                                                           const BranchParams& params,
                                                           const ParamLayout& layout, bool symmetric);
// Reference decoder: W[R, C] row-major, as GatherBlockQuantized dequantizes it.
std::vector<float> DecodeGatherBlockQuantized(const GatherEncoding& e);

// The `outer8` form of a split layer (an accuracy variant, not a re-encoding): the middle
// branch as it is, and both outer clusters together in one 8-bit branch whose per-slice
// range (widened to 0) covers the slice's outer values. Where a b-bit outer branch has a
// step of about |range of its cluster| / (2^b - 1), the joint 8-bit branch's is about
// |range of both| / 255: finer for b <= 6, so at 4 bits the weight error only falls, and
// two kernels run instead of three. `values` are the layer's FP32 weights; returns the
// outer branch's 8-bit codes (its zero point outside the outer clusters) and parameters,
// and the layer's squared weight error with this form.
// `release` (ReleaseFn, weight_transform.h) is called with element ranges [begin, end)
// of `values` that will not be read again.
struct OuterBranch {
  std::vector<uint8_t> codes;
  BranchParams params;
  double error_energy = 0;
};
// Decodes each row's codes once into integers and indexes parameters through a per-column
// table; QuantizeOuterAt8Reference, element by element, is what it must equal (codes,
// parameters and error energy; encode_test).
// `outer_codes_read`, when set, is called once the lower and upper branches' codes have
// been read for the last time (before the 8-bit codes are allocated): the caller may free
// them there, so that both never sit in memory together.
absl::StatusOr<OuterBranch> QuantizeOuterAt8(const float* values,
                                             absl::Span<const uint8_t* const> branch_codes,
                                             const TransformResult& result,
                                             const ParamLayout& layout, bool symmetric,
                                             int code_bits = 8, const ReleaseFn& release = nullptr,
                                             const std::function<void()>& outer_codes_read = nullptr);
absl::StatusOr<OuterBranch> QuantizeOuterAt8Reference(const float* values,
                                                      absl::Span<const uint8_t* const> branch_codes,
                                                      const TransformResult& result,
                                                      const ParamLayout& layout, bool symmetric,
                                                      int code_bits = 8,
                                                      const ReleaseFn& release = nullptr);

}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_ENCODE_H_
