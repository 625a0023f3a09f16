#include "core/quantizer.h"

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

}  // namespace

QuantParams ChooseQuantParams(float min_value, float max_value, const QuantSpec& spec) {
  // "+ 0.0f" turns -0 into +0 so the result never depends on which zero a min/max saw.
  const double rmin = std::min(min_value + 0.0f, 0.0f);
  const double rmax = std::max(max_value + 0.0f, 0.0f);
  QuantParams p;
  if (rmin == 0.0 && rmax == 0.0) {
    p.scale = 1.0f;
    p.zero_point = 0;
    return p;
  }
  const int qmax = spec.qmax();
  if (spec.symmetric) {
    const double m = std::max(-rmin, rmax);
    p.scale = ClampScale(m / qmax);
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
  p.scale = ClampScale(required_scale(z));
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
  const int per_byte = 8 / storage_bits;
  const uint32_t mask = (1u << storage_bits) - 1;
  const int32_t sign_bit = 1 << (storage_bits - 1);
  for (int64_t i = 0; i < num_codes; ++i) {
    const int32_t v = static_cast<int32_t>(
        (data[i / per_byte] >> ((i % per_byte) * storage_bits)) & mask);
    codes[i] = (is_signed && (v & sign_bit)) ? v - (1 << storage_bits) : v;
  }
  return codes;
}

double SqnrDb(double signal_energy, double error_energy) {
  if (error_energy <= 0) return std::numeric_limits<double>::infinity();
  if (signal_energy <= 0) return -std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal_energy / error_energy);
}

}  // namespace sq
