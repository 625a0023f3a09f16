// core/transform/kernels: every build of the row kernel (scalar reference, SSE2, AVX2
// where the CPU has it) gives the same codes bit for bit, and the two SIMD builds the same
// error sums bit for bit, over random rows of every variant (split or not, per-column or
// broadcast thresholds, with and without the plain comparison and the signal sum, 8 / 4 /
// 2-bit storage, signed and unsigned codes, any start position and tail length).
#include "core/transform/kernels.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace sq {
namespace transform {
namespace {

// One random row and the parameters a transform would give it.
struct Row {
  std::vector<float> x, t0, t1, off, pscale, pzf;
  std::array<std::vector<float>, 3> scale, zf;
  std::array<std::vector<float>, 2> scale_x, zf_x;
  std::array<std::vector<uint8_t>, 3> zb;
  float qmin = 0, qmax = 0;
  bool is_signed = false;

  Row(int64_t len, int bits, bool is_signed_codes, std::mt19937_64& rng) {
    is_signed = is_signed_codes;
    qmin = is_signed ? -static_cast<float>(1 << (bits - 1)) : 0.0f;
    qmax = is_signed ? static_cast<float>((1 << (bits - 1)) - 1) : static_cast<float>((1 << bits) - 1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f), f(1.0f, 1.3f), o(-0.4375f, 0.4375f);
    const float lo[3] = {-1.0f, -0.3f, 0.0f}, hi[3] = {0.0f, 0.3f, 1.0f};
    for (int64_t s = 0; s < len; ++s) {
      x.push_back(rng() % 17 == 0 ? 0.0f : u(rng));
      t0.push_back(-0.3f + 0.05f * u(rng));
      t1.push_back(0.3f + 0.05f * u(rng));
      off.push_back(o(rng));
      for (int b = 0; b < 3; ++b) {
        const float sc = (hi[b] - lo[b]) / (qmax - qmin) * f(rng);
        scale[b].push_back(sc);
        zf[b].push_back(std::min(std::max(std::nearbyint(qmin - lo[b] / sc), qmin), qmax));
        zb[b].push_back(static_cast<uint8_t>(static_cast<int32_t>(zf[b].back()) & 0xFF));
      }
      const float psc = 2.0f / (qmax - qmin) * f(rng);
      pscale.push_back(psc);
      pzf.push_back(std::min(std::max(std::nearbyint(qmin + 1.0f / psc), qmin), qmax));
      for (int j = 0; j < 2; ++j) {
        const int b = j == 0 ? 0 : 2;
        scale_x[j].push_back(XorFloatBits(scale[b][s], scale[1][s]));
        zf_x[j].push_back(XorFloatBits(zf[b][s], zf[1][s]));
      }
    }
  }
};

struct Result {
  std::array<std::vector<uint8_t>, 3> out;
  Partial sums;
};

Result RunRow(const Row& row, int64_t pos, bool split, bool vec_t, bool plain, bool signal, int bits,
           KernelIsa isa) {
  const int64_t len = static_cast<int64_t>(row.x.size());
  Result r;
  RowArgs a;
  a.x = row.x.data();
  a.len = len;
  a.pos = pos;
  a.t0 = row.t0.data();
  a.t1 = row.t1.data();
  for (int b = 0; b < 3; ++b) {
    a.scale[b] = row.scale[b].data();
    a.zf[b] = row.zf[b].data();
    a.zb[b] = row.zb[b].data();
    r.out[b].assign(static_cast<size_t>((pos + len) * bits / 8 + 2), 0);
    a.out[b] = (split || b == 0) ? r.out[b].data() : nullptr;
  }
  for (int j = 0; j < 2; ++j) {
    a.scale_x[j] = row.scale_x[j].data();
    a.zf_x[j] = row.zf_x[j].data();
  }
  a.off = row.off.data();
  a.pscale = row.pscale.data();
  a.pzf = row.pzf.data();
  a.qmin = row.qmin;
  a.qmax = row.qmax;
  a.is_signed = row.is_signed;
  PickRow(split, vec_t, plain, signal, bits, isa)(a, r.sums);
  return r;
}

TEST(KernelsTest, EveryRowKernelBuildGivesTheSameCodesAndTheSimdBuildsTheSameSums) {
  const bool have_avx2 = BestKernelIsa() == KernelIsa::kAvx2;
  if (!have_avx2) std::printf("AVX2 build not run here (%s)\n", KernelIsaName(BestKernelIsa()));
  std::mt19937_64 rng(11);
  int cases = 0;
  for (int bits : {8, 4, 2}) {
    for (bool is_signed : {false, true}) {
      for (int64_t len : {1, 7, 16, 31, 64, 77, 200}) {
        const Row row(len, bits, is_signed, rng);
        for (int64_t pos : {0, 1, 2, 3, 4}) {
          if (pos % (8 / bits) != 0 && bits == 8) continue;
          for (bool split : {false, true}) {
            for (bool vec_t : {false, true}) {
              if (vec_t && !split) continue;
              for (bool plain : {false, true}) {
                for (bool signal : {false, true}) {
                  SCOPED_TRACE(::testing::Message() << "bits " << bits << " signed " << is_signed << " len "
                                                    << len << " pos " << pos << " split " << split << " vec_t "
                                                    << vec_t << " plain " << plain << " signal " << signal);
                  const Result ref = RunRow(row, pos, split, vec_t, plain, signal, bits, KernelIsa::kScalar);
                  const Result sse = RunRow(row, pos, split, vec_t, plain, signal, bits, KernelIsa::kSse2);
                  EXPECT_EQ(sse.out, ref.out);
                  const double tol = 1e-12;
                  EXPECT_NEAR(sse.sums.split_error, ref.sums.split_error, tol * (1 + ref.sums.split_error));
                  EXPECT_NEAR(sse.sums.plain_error, ref.sums.plain_error, tol * (1 + ref.sums.plain_error));
                  EXPECT_NEAR(sse.sums.signal, ref.sums.signal, tol * (1 + ref.sums.signal));
                  EXPECT_GT(ref.sums.split_error, 0.0);
                  if (signal) {
                    EXPECT_GT(ref.sums.signal, 0.0);
                  }
                  if (!have_avx2) continue;
                  const Result avx = RunRow(row, pos, split, vec_t, plain, signal, bits, KernelIsa::kAvx2);
                  EXPECT_EQ(avx.out, ref.out);
                  // Bit-identical sums: the AVX2 build pairs and orders its lanes as SSE2's.
                  EXPECT_EQ(avx.sums.split_error, sse.sums.split_error);
                  EXPECT_EQ(avx.sums.plain_error, sse.sums.plain_error);
                  EXPECT_EQ(avx.sums.signal, sse.sums.signal);
                  ++cases;
                }
              }
            }
          }
        }
      }
    }
  }
  if (have_avx2) {
    EXPECT_GT(cases, 1000);
  }
}

TEST(KernelsTest, TheIsaCanBeAskedForAndNamed) {
  EXPECT_STREQ(KernelIsaName(KernelIsa::kScalar), "scalar");
  EXPECT_STREQ(KernelIsaName(KernelIsa::kSse2), "sse2");
  EXPECT_STREQ(KernelIsaName(KernelIsa::kAvx2), "avx2");
  // A build this binary lacks falls back rather than returning nothing.
  EXPECT_NE(PickRow(true, true, true, true, 4, KernelIsa::kAvx2), nullptr);
}

}  // namespace
}  // namespace transform
}  // namespace sq
