#include "core/quantizer.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace sq {
namespace {

// Smallest float >= v (v finite, positive, <= FLT_MAX): scales are rounded up so that the
// range still fits after the double -> float conversion.
float RoundUpToFloat(double v) {
  if (v >= static_cast<double>(FLT_MAX)) return FLT_MAX;
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) {
    // Next float up, by the bits (f is positive and below FLT_MAX here): a libm
    // nextafter call costs more than the rest of this function.
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    ++bits;
    std::memcpy(&f, &bits, sizeof f);
  }
  return f;
}

// Keeps scales normal: a subnormal or zero scale would make x / s overflow or lose the
// exactness of the zero code.
float ClampScale(double s) { return RoundUpToFloat(std::max(s, static_cast<double>(FLT_MIN))); }

constexpr float kHalfMinSubnormal = 5.9604644775390625e-08f;  // 2^-24
constexpr float kHalfMinNormal = 6.103515625e-05f;            // 2^-14
constexpr float kHalfMax = 65504.0f;

}  // namespace

float RoundUpToHalf(float s) {
  if (std::isnan(s) || s > kHalfMax) return s;
  if (s <= kHalfMinSubnormal) return kHalfMinSubnormal;  // also a scale that underflowed to 0
  if (s < kHalfMinNormal) {
    // Subnormal halves are the multiples of 2^-24 (exact floats): ceil of an exact quotient.
    return std::ceil(s / kHalfMinSubnormal) * kHalfMinSubnormal;
  }
  // A normal half keeps a float's top 10 mantissa bits: clear the low 13, rounding up.
  uint32_t bits;
  std::memcpy(&bits, &s, sizeof bits);
  if ((bits & 0x1FFFu) != 0) bits = (bits | 0x1FFFu) + 1;
  float r;
  std::memcpy(&r, &bits, sizeof r);
  return r > kHalfMax ? s : r;
}

int HalfScaleExponent(float max_abs) {
  if (!(max_abs > 0.0f) || !std::isfinite(max_abs)) return 0;
  // A slice's scale is at most its largest |value| (any zero point in 1..qmax-1, or the
  // symmetric max / qmax): max_abs * 2^-e in [2^14, 2^15) leaves float16 room above it.
  return std::clamp(std::ilogb(max_abs) - 14, -100, 113);
}

bool FloatToHalf(float f, uint16_t* half) {
  if (!std::isfinite(f)) return false;
  const float a = std::fabs(f);
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (a > kHalfMax) return false;
  if (a < kHalfMinNormal) {
    const float m = a / kHalfMinSubnormal;  // exact: a power-of-two division, no underflow here
    if (m != std::floor(m)) return false;
    *half = static_cast<uint16_t>(sign | static_cast<uint16_t>(m));
    return true;
  }
  uint32_t bits;
  std::memcpy(&bits, &a, sizeof bits);
  if ((bits & 0x1FFFu) != 0) return false;
  const uint32_t exp = ((bits >> 23) & 0xFFu) - 127 + 15;  // 1..30 here
  *half = static_cast<uint16_t>(sign | (exp << 10) | ((bits >> 13) & 0x3FFu));
  return true;
}

float HalfToFloat(uint16_t h) {
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  float v;
  if (exp == 0) {
    v = static_cast<float>(mant) * kHalfMinSubnormal;
  } else if (exp == 31) {
    v = mant ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    v = std::ldexp(static_cast<float>(1024 + mant), exp - 25);
  }
  return (h & 0x8000) ? -v : v;
}

namespace {

// The scale a spec keeps: s itself, or (half_scales) the next float16 value times
// 2^half_exponent. Larger or equal: the range still maps without clipping.
float KeptScale(float s, const QuantSpec& spec) {
  if (!spec.half_scales) return s;
  return std::ldexp(RoundUpToHalf(std::ldexp(s, -spec.half_exponent)), spec.half_exponent);
}

}  // namespace

QuantParams ChooseQuantParams(float min_value, float max_value, const QuantSpec& spec) {
  // "+ 0.0f" turns -0 into +0 so the result never depends on which zero a min/max saw.
  const double rmin = std::min(min_value + 0.0f, 0.0f);
  const double rmax = std::max(max_value + 0.0f, 0.0f);
  QuantParams p;
  if (rmin == 0.0 && rmax == 0.0) {
    p.scale = spec.half_scales ? std::ldexp(1.0f, spec.half_exponent) : 1.0f;
    p.zero_point = 0;
    return p;
  }
  const int qmax = spec.qmax();
  if (spec.symmetric) {
    const double m = std::max(-rmin, rmax);
    p.scale = KeptScale(ClampScale(m / qmax), spec);
    p.zero_point = 0;
    return p;
  }
  // Asymmetric: the zero point must be an integer; among the two integers nearest to the
  // ideal (real-valued) zero point pick the one that needs the smaller scale for the whole
  // range to map without clipping, so |x - x^| <= s/2 holds at both ends.
  const double s0 = (rmax - rmin) / qmax;
  auto required_scale = [&](int z) {
    double s = s0;
    if (rmax > 0) {
      if (z >= qmax) return std::numeric_limits<double>::infinity();
      s = std::max(s, rmax / (qmax - z));
    }
    if (rmin < 0) {
      if (z <= 0) return std::numeric_limits<double>::infinity();
      s = std::max(s, -rmin / z);
    }
    return s;
  };
  int z;
  if (rmin == 0.0) {
    z = 0;
  } else if (rmax == 0.0) {
    z = qmax;
  } else {
    const double ideal = -rmin / s0;
    // std::rint == std::nearbyint under the default rounding mode (half to even), without
    // nearbyint's save / restore of the FP environment (hundreds of cycles per call).
    const int zr = std::clamp(static_cast<int>(std::rint(ideal)), 1, qmax - 1);
    const int zf = std::clamp(static_cast<int>(std::floor(ideal)), 1, qmax - 1);
    const int zc = std::clamp(static_cast<int>(std::ceil(ideal)), 1, qmax - 1);
    z = zr;
    double best = required_scale(zr);
    for (int cand : {zf, zc}) {
      const double s = required_scale(cand);
      if (s < best) {
        best = s;
        z = cand;
      }
    }
  }
  p.scale = KeptScale(ClampScale(required_scale(z)), spec);
  p.zero_point = z;
  return p;
}

int64_t PackedBytes(int64_t num_codes, int storage_bits) {
  return (num_codes * storage_bits + 7) / 8;
}

void PackCodes(absl::Span<const int32_t> codes, int storage_bits, uint8_t* out) {
  const int64_t n = static_cast<int64_t>(codes.size());
  if (storage_bits == 8) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(codes[i] & 0xFF);
    return;
  }
  const int per_byte = 8 / storage_bits;
  const uint32_t mask = (1u << storage_bits) - 1;
  const int64_t bytes = PackedBytes(n, storage_bits);
  for (int64_t b = 0; b < bytes; ++b) {
    uint32_t v = 0;
    for (int k = 0; k < per_byte; ++k) {
      const int64_t i = b * per_byte + k;
      if (i < n) v |= (static_cast<uint32_t>(codes[i]) & mask) << (k * storage_bits);
    }
    out[b] = static_cast<uint8_t>(v);
  }
}

std::vector<int32_t> UnpackCodes(const uint8_t* data, int64_t num_codes, int storage_bits,
                                 bool is_signed) {
  std::vector<int32_t> codes(static_cast<size_t>(num_codes));
  UnpackCodesAt(data, 0, num_codes, storage_bits, is_signed, codes.data());
  return codes;
}

void UnpackCodesAt(const uint8_t* data, int64_t first, int64_t count, int storage_bits,
                   bool is_signed, int32_t* out) {
  int64_t i = 0;
  if (storage_bits == 8) {
    const uint8_t* q = data + first;
    for (; i < count; ++i) out[i] = is_signed ? static_cast<int8_t>(q[i]) : q[i];
    return;
  }
#if defined(__SSE2__)
  if (storage_bits == 4 && first % 2 == 0) {
    // 16 codes (8 bytes) at a time: nibbles interleaved in order, sign-extended ((u ^ 8) - 8
    // when signed), widened to 32 bits.
    const uint8_t* q = data + first / 2;
    const __m128i low4 = _mm_set1_epi8(0x0F), s8 = _mm_set1_epi8(is_signed ? 8 : 0);
    for (; i + 16 <= count; i += 16) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i / 2));
      const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
      const __m128i x = _mm_sub_epi8(_mm_xor_si128(_mm_unpacklo_epi8(lo, hi), s8), s8);
      const __m128i ext8 = _mm_cmpgt_epi8(_mm_setzero_si128(), x);  // sign bytes
      const __m128i w0 = _mm_unpacklo_epi8(x, ext8), w1 = _mm_unpackhi_epi8(x, ext8);
      const __m128i ext0 = _mm_srai_epi16(w0, 15), ext1 = _mm_srai_epi16(w1, 15);
      __m128i* o = reinterpret_cast<__m128i*>(out + i);
      _mm_storeu_si128(o + 0, _mm_unpacklo_epi16(w0, ext0));
      _mm_storeu_si128(o + 1, _mm_unpackhi_epi16(w0, ext0));
      _mm_storeu_si128(o + 2, _mm_unpacklo_epi16(w1, ext1));
      _mm_storeu_si128(o + 3, _mm_unpackhi_epi16(w1, ext1));
    }
  }
#endif
  const int per_byte = 8 / storage_bits;
  const uint32_t mask = (1u << storage_bits) - 1;
  const int32_t sign_bit = 1 << (storage_bits - 1);
  for (; i < count; ++i) {
    const int64_t e = first + i;
    const int32_t v = static_cast<int32_t>((data[e / per_byte] >> ((e % per_byte) * storage_bits)) & mask);
    out[i] = (is_signed && (v & sign_bit)) ? v - (1 << storage_bits) : v;
  }
}

double SqnrDb(double signal_energy, double error_energy) {
  if (error_energy <= 0) return std::numeric_limits<double>::infinity();
  if (signal_energy <= 0) return -std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal_energy / error_energy);
}

}  // namespace sq
