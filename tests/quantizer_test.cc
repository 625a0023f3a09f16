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
