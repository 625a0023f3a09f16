#include "core/quantizer.h"

#include <cfloat>
#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace sq {
namespace {

// The s/2 bound holds in exact arithmetic; x / s and (q - z) * s each round once in float,
// which adds at most a couple of ulps of |x| on top.
constexpr double kFloatUlpsSlack = 2 * FLT_EPSILON;

TEST(QuantizerTest, ZeroIsExactAndScalesValid) {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(-5, 5);
  for (int bits = 2; bits <= 8; ++bits) {
    for (bool sym : {false, true}) {
      const QuantSpec spec{bits, sym};
      for (int t = 0; t < 2000; ++t) {
        float a = u(rng), b = u(rng);
        if (t % 5 == 0) a = 0;
        if (t % 7 == 0) b = std::ldexp(b, -100);
        const QuantParams p = ChooseQuantParams(std::min(a, b), std::max(a, b), spec);
        ASSERT_TRUE(std::isfinite(p.scale) && p.scale > 0);
        ASSERT_GE(p.zero_point, spec.qmin());
        ASSERT_LE(p.zero_point, spec.qmax());
        ASSERT_EQ(QuantizeValue(0.0f, p, spec), p.zero_point);
        ASSERT_EQ(DequantizeValue(p.zero_point, p), 0.0f);
        if (sym) {
          ASSERT_EQ(p.zero_point, 0);
        }
      }
    }
  }
}

TEST(QuantizerTest, ErrorWithinHalfStepOverRange) {
  std::mt19937_64 rng(2);
  std::uniform_real_distribution<float> u(-3, 3);
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {false, true}) {
      const QuantSpec spec{bits, sym};
      for (int t = 0; t < 200; ++t) {
        float lo = std::min(u(rng), 0.0f), hi = std::max(u(rng), 0.0f);
        if (t % 3 == 0) lo = 0;
        if (t % 4 == 0) hi = 0;
        const QuantParams p = ChooseQuantParams(lo, hi, spec);
        for (int k = 0; k <= 100; ++k) {
          const float x = lo + (hi - lo) * k / 100.0f;
          const float xq = DequantizeValue(QuantizeValue(x, p, spec), p);
          ASSERT_LE(std::fabs(static_cast<double>(x) - xq),
                    p.scale / 2.0 + kFloatUlpsSlack * (std::fabs(x) + p.scale))
              << "bits " << bits << " sym " << sym << " x " << x << " [" << lo << "," << hi << "]";
        }
      }
    }
  }
}

TEST(QuantizerTest, AllZeroSliceGetsUnitScale) {
  for (bool sym : {false, true}) {
    const QuantParams p = ChooseQuantParams(0.0f, 0.0f, QuantSpec{4, sym});
    EXPECT_EQ(p.scale, 1.0f);
    EXPECT_EQ(p.zero_point, 0);
    const QuantParams q = ChooseQuantParams(-0.0f, 0.0f, QuantSpec{4, sym});
    EXPECT_EQ(q.scale, 1.0f);
  }
}

TEST(QuantizerTest, OneSidedRangesPinZeroPoint) {
  const QuantSpec spec{4, false};
  EXPECT_EQ(ChooseQuantParams(0.0f, 3.0f, spec).zero_point, 0);   // upper branch
  EXPECT_EQ(ChooseQuantParams(-3.0f, 0.0f, spec).zero_point, 15); // lower branch
  const QuantParams p = ChooseQuantParams(1.0f, 3.0f, spec);       // widened to 0
  EXPECT_EQ(p.zero_point, 0);
  EXPECT_FLOAT_EQ(p.scale, 3.0f / 15);
}

TEST(QuantizerTest, ExtremeRangesStayFinite) {
  for (bool sym : {false, true}) {
    const QuantSpec spec{8, sym};
    QuantParams p = ChooseQuantParams(-FLT_MAX, FLT_MAX, spec);
    EXPECT_TRUE(std::isfinite(p.scale) && p.scale > 0);
    EXPECT_EQ(DequantizeValue(QuantizeValue(0.0f, p, spec), p), 0.0f);
    p = ChooseQuantParams(-1e-45f, 1e-45f, spec);
    EXPECT_TRUE(std::isfinite(p.scale) && p.scale >= FLT_MIN);
    EXPECT_EQ(DequantizeValue(QuantizeValue(0.0f, p, spec), p), 0.0f);
  }
}

TEST(QuantizerTest, Float16HelpersAreExact) {
  const float kMinSub = std::ldexp(1.0f, -24);
  EXPECT_EQ(RoundUpToHalf(1.0f), 1.0f);
  EXPECT_EQ(RoundUpToHalf(std::nextafter(1.0f, 2.0f)), 1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(RoundUpToHalf(0.0f), kMinSub);
  EXPECT_EQ(RoundUpToHalf(1e-30f), kMinSub);
  EXPECT_EQ(RoundUpToHalf(3.5f * kMinSub), 4 * kMinSub);     // subnormal: multiples of 2^-24
  EXPECT_EQ(RoundUpToHalf(65504.0f), 65504.0f);
  EXPECT_EQ(RoundUpToHalf(65504.5f), 65504.5f);             // above float16: unchanged
  uint16_t h = 0;
  EXPECT_TRUE(FloatToHalf(1.0f, &h));
  EXPECT_EQ(h, 0x3C00);
  EXPECT_TRUE(FloatToHalf(-2.0f, &h));
  EXPECT_EQ(h, 0xC000);
  EXPECT_TRUE(FloatToHalf(kMinSub, &h));
  EXPECT_EQ(h, 0x0001);
  EXPECT_FALSE(FloatToHalf(1.0f + std::ldexp(1.0f, -11), &h));  // needs 11 mantissa bits
  EXPECT_FALSE(FloatToHalf(70000.0f, &h));
  EXPECT_FALSE(FloatToHalf(std::ldexp(1.0f, -25), &h));
  // Every float16 bit pattern (finite) round-trips.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7C00) == 0x7C00) continue;
    const float f = HalfToFloat(static_cast<uint16_t>(bits));
    uint16_t back;
    ASSERT_TRUE(FloatToHalf(f, &back)) << bits;
    if (f != 0.0f) EXPECT_EQ(back, bits);
    EXPECT_EQ(RoundUpToHalf(std::fabs(f) > 0 ? std::fabs(f) : kMinSub), std::fabs(f) > 0 ? std::fabs(f) : kMinSub);
  }
  EXPECT_EQ(HalfScaleExponent(0.0f), 0);
  EXPECT_EQ(HalfScaleExponent(1.0f), -14);
  EXPECT_EQ(HalfScaleExponent(1e30f), 85);   // ilogb 99
  EXPECT_EQ(HalfScaleExponent(FLT_MAX), 113);
  EXPECT_EQ(HalfScaleExponent(1e-35f), -100);
}

// Float16 scales (QuantSpec::half_scales): each scale is a float16 value times
// 2^half_exponent, at most 2^-10 above the float one, and every guarantee of the float
// quantizer holds (zero exact, no clipping, error within half a step).
TEST(QuantizerTest, HalfScalesKeepEveryGuarantee) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mag(-12.0f, 6.0f);
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {false, true}) {
      for (int trial = 0; trial < 400; ++trial) {
        float lo = -std::pow(2.0f, mag(rng)), hi = std::pow(2.0f, mag(rng));
        if (trial % 3 == 0) lo = 0.0f;
        if (trial % 5 == 0) hi = 0.0f;
        const float max_abs = std::max(-lo, hi) * (trial % 7 == 0 ? 1e6f : 1.0f);
        QuantSpec f{bits, sym};
        QuantSpec h = f;
        h.half_scales = true;
        h.half_exponent = HalfScaleExponent(max_abs);
        const QuantParams pf = ChooseQuantParams(lo, hi, f);
        const QuantParams ph = ChooseQuantParams(lo, hi, h);
        uint16_t half;
        ASSERT_TRUE(FloatToHalf(std::ldexp(ph.scale, -h.half_exponent), &half)) << ph.scale;
        if (lo == 0.0f && hi == 0.0f) {
          EXPECT_EQ(ph.scale, std::ldexp(1.0f, h.half_exponent));
          continue;
        }
        EXPECT_GE(ph.scale, pf.scale);
        // Within float16's normal range (scales down to 2^-30 of the layer's largest):
        // at most 2^-10 above; below it, steps of 2^-24 * 2^half_exponent.
        if (std::ldexp(pf.scale, -h.half_exponent) >= std::ldexp(1.0f, -14)) {
          EXPECT_LE(ph.scale, pf.scale * (1.0f + std::ldexp(1.0f, -10)));
        } else {
          EXPECT_LE(ph.scale, pf.scale + std::ldexp(1.0f, h.half_exponent - 24));
        }
        EXPECT_EQ(ph.zero_point, pf.zero_point);
        EXPECT_EQ(DequantizeValue(QuantizeValue(0.0f, ph, h), ph), 0.0f);
        for (float x : {lo, hi}) {
          const float back = DequantizeValue(QuantizeValue(x, ph, h), ph);
          EXPECT_LE(std::fabs(back - x), ph.scale / 2 * 1.0001f) << bits << " " << x;
        }
      }
    }
  }
}

TEST(QuantizerTest, RoundHalfToEven) {
  const QuantSpec spec{8, true};
  const QuantParams p{1.0f, 0};
  EXPECT_EQ(QuantizeValue(0.5f, p, spec), 0);
  EXPECT_EQ(QuantizeValue(1.5f, p, spec), 2);
  EXPECT_EQ(QuantizeValue(2.5f, p, spec), 2);
  EXPECT_EQ(QuantizeValue(-2.5f, p, spec), -2);
  EXPECT_EQ(QuantizeValue(-3.5f, p, spec), -4);
  EXPECT_EQ(QuantizeValue(1000.0f, p, spec), 127);  // saturates
  EXPECT_EQ(QuantizeValue(-1000.0f, p, spec), -128);
}

TEST(QuantizerTest, PackingLayout) {
  EXPECT_EQ(PackedBytes(0, 4), 0);
  EXPECT_EQ(PackedBytes(3, 4), 2);
  EXPECT_EQ(PackedBytes(5, 2), 2);
  EXPECT_EQ(PackedBytes(5, 8), 5);
  uint8_t out[4] = {0xAA, 0xAA, 0xAA, 0xAA};
  const std::vector<int32_t> four = {1, 2, 3};
  PackCodes(four, 4, out);
  EXPECT_EQ(out[0], 0x21);  // first element in the low nibble
  EXPECT_EQ(out[1], 0x03);  // padded
  const std::vector<int32_t> two = {1, 2, 3, 0, 1};
  PackCodes(two, 2, out);
  EXPECT_EQ(out[0], 1 | 2 << 2 | 3 << 4 | 0 << 6);
  EXPECT_EQ(out[1], 0x01);
  const std::vector<int32_t> neg = {-1, -8, 7};
  PackCodes(neg, 4, out);
  EXPECT_EQ(out[0], 0x8F);
  EXPECT_EQ(UnpackCodes(out, 3, 4, true), neg);
  const std::vector<int32_t> s8 = {-128, 127, 0};
  PackCodes(s8, 8, out);
  EXPECT_EQ(out[0], 0x80);
  EXPECT_EQ(UnpackCodes(out, 3, 8, true), s8);
  const std::vector<int32_t> s2 = {-2, 1, -1, 0};
  PackCodes(s2, 2, out);
  EXPECT_EQ(UnpackCodes(out, 4, 2, true), s2);
  PackCodes(two, 2, out);
  EXPECT_EQ(UnpackCodes(out, 5, 2, false), two);
}

// UnpackCodesAt (16 codes at a time for 4-bit) equals the round trip of PackCodes, from
// any start, for every container and signedness.
TEST(QuantizerTest, UnpackCodesAtRoundTripsFromAnyStart) {
  for (int bits : {2, 4, 8}) {
    for (bool sym : {false, true}) {
      const int lo = sym ? -(1 << (bits - 1)) : 0, hi = sym ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
      std::vector<int32_t> codes(101);
      for (size_t i = 0; i < codes.size(); ++i) codes[i] = lo + static_cast<int>((i * 7 + 3) % (hi - lo + 1));
      std::vector<uint8_t> packed(static_cast<size_t>(PackedBytes(101, bits)));
      PackCodes(codes, bits, packed.data());
      for (int64_t first : {0, 1, 2, 5, 16}) {
        std::vector<int32_t> out(static_cast<size_t>(101 - first - 3));
        UnpackCodesAt(packed.data(), first, static_cast<int64_t>(out.size()), bits, sym, out.data());
        EXPECT_EQ(out, std::vector<int32_t>(codes.begin() + first, codes.begin() + first + out.size()))
            << bits << " bits " << (sym ? "signed" : "unsigned") << " from " << first;
      }
    }
  }
}

TEST(QuantizerTest, Sqnr) {
  EXPECT_TRUE(std::isinf(SqnrDb(1.0, 0.0)));
  EXPECT_NEAR(SqnrDb(100.0, 1.0), 20.0, 1e-12);
}

}  // namespace
}  // namespace sq
