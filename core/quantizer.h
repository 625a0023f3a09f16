// Linear (affine) quantization of FP32 weights to 2..8-bit integers.
//
// Math contract (the ONNX QuantizeLinear / DequantizeLinear convention):
//   q  = saturate(round_half_to_even(x / s) + z)      in [qmin, qmax]
//   x^ = (q - z) * s
// with, for b bits:
//   symmetric : signed codes, qmin = -2^(b-1), qmax = 2^(b-1) - 1, z = 0,
//               s = max|x| / (2^(b-1) - 1)  (the grid is symmetric; -2^(b-1) is unused).
//   asymmetric: unsigned codes, qmin = 0, qmax = 2^b - 1. The range is first widened to
//               include 0 (rmin = min(min x, 0), rmax = max(max x, 0)); s = (rmax - rmin)
//               / qmax; z is an integer in [0, qmax] next to -rmin / s (of the two
//               neighbours and round_half_to_even, the one needing the smaller final s; z = 0
//               when rmin = 0, z = qmax when rmax = 0); s is then enlarged just enough that
//               rmin and rmax map to codes inside [qmin, qmax] without clipping.
// Scales are rounded up to float and kept >= FLT_MIN (normal). With `half_scales` a scale
// is then rounded up to the next value of float16 * 2^half_exponent (by at most 2^-10 of
// it), which keeps every guarantee below and lets a compact artifact store it in 16 bits
// and one exponent per layer. HalfScaleExponent(max |w| of the layer) puts the layer's
// largest possible scale near float16's top, so scales down to 2^-30 of it keep full
// precision (smaller ones: steps of 2^-40 of it); an all-zero slice gets 2^half_exponent.
// Either way x = 0 maps to q = z exactly and dequantizes to exactly 0: a branch that is
// mostly zeros loses nothing at its zeros. A slice that is all zeros gets s = 1, z = 0
// (or the asymmetric equivalent) so scales are always finite and positive.
// Error bound: |x - x^| <= s / 2 for every x in the slice's range.
#ifndef SQ_CORE_QUANTIZER_H_
#define SQ_CORE_QUANTIZER_H_

#include <cmath>
#include <cstdint>
#include <vector>

#include "absl/types/span.h"

namespace sq {

struct QuantSpec {
  int bits = 4;            // 2..8
  bool symmetric = false;
  bool half_scales = false;  // scales rounded up to float16 * 2^half_exponent (see above)
  int half_exponent = 0;     // HalfScaleExponent of the layer
  int qmin() const { return symmetric ? -(1 << (bits - 1)) : 0; }
  int qmax() const { return symmetric ? (1 << (bits - 1)) - 1 : (1 << bits) - 1; }
};

struct QuantParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// Parameters for a slice whose values span [min_value, max_value] (min <= max, finite).
QuantParams ChooseQuantParams(float min_value, float max_value, const QuantSpec& spec);

// Float16 (IEEE binary16) helpers. RoundUpToHalf: the smallest float16 value >= s (at
// least 2^-24) for s <= 65504 (s itself above). FloatToHalf: the bits of f when f is a float16
// value exactly (false otherwise). HalfToFloat: exact.
float RoundUpToHalf(float s);
// The exponent for a layer whose weights reach `max_abs` (0 for 0 or non-finite), in
// [-100, 113]: every scale of that layer times 2^-exponent is below 2^15.
int HalfScaleExponent(float max_abs);
bool FloatToHalf(float f, uint16_t* half);
float HalfToFloat(uint16_t half);

// Round half to even, as std::nearbyint under the default rounding mode. `offset` (|offset|
// < 0.5) moves the rounding midpoints of the slice (balanced rounding,
// core/transform/rounding.h); 0 = round to nearest, and 0 still quantizes to the zero point.
inline int32_t QuantizeValue(float x, const QuantParams& p, const QuantSpec& spec,
                             float offset = 0.0f) {
  float r = std::nearbyint(x / p.scale + offset);
  float q = r + static_cast<float>(p.zero_point);
  if (q < spec.qmin()) q = static_cast<float>(spec.qmin());
  if (q > spec.qmax()) q = static_cast<float>(spec.qmax());
  return static_cast<int32_t>(q);
}
inline float DequantizeValue(int32_t q, const QuantParams& p) {
  return static_cast<float>(q - p.zero_point) * p.scale;
}

// Storage of codes in an ONNX tensor. 8: one byte per code (int8 / uint8); 4: two codes
// per byte, first element in the low nibble (INT4 / UINT4); 2: four per byte,
// x0 | x1 << 2 | x2 << 4 | x3 << 6 (INT2 / UINT2). Last byte zero-padded.
int64_t PackedBytes(int64_t num_codes, int storage_bits);
void PackCodes(absl::Span<const int32_t> codes, int storage_bits, uint8_t* out);
std::vector<int32_t> UnpackCodes(const uint8_t* data, int64_t num_codes, int storage_bits,
                                 bool is_signed);
// Codes [first, first + count) of such a stream into `out` (16 at a time for 4-bit codes
// from an even `first`).
void UnpackCodesAt(const uint8_t* data, int64_t first, int64_t count, int storage_bits,
                   bool is_signed, int32_t* out);

// Weight SQNR in dB: 10 log10(sum x^2 / sum (x - x^)^2); +inf for zero error.
double SqnrDb(double signal_energy, double error_energy);

}  // namespace sq

#endif  // SQ_CORE_QUANTIZER_H_
