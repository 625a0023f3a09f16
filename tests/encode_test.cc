// The compact, MatMulNBits and GatherBlockQuantized encodings dequantize bit-identically to the branches they
// re-encode, for every bits, granularity and symmetry.
#include "core/transform/encode.h"

#include <cstring>
#include <initializer_list>
#include <random>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sq {
namespace {

std::vector<float> Weights(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0, 0.1f);
  std::vector<float> w(n);
  for (auto& x : w) x = d(rng);
  for (int64_t i = 0; i < n; i += 37) w[i] *= 12;  // outliers, for three real clusters
  if (n > 5) w[5] = 0;                             // an exact zero
  return w;
}

struct Branches {
  TransformResult result;
  std::array<std::vector<uint8_t>, 3> codes;       // 8-bit codes per branch
  std::array<std::vector<float>, 3> dequantized;   // per branch
  std::vector<float> sum;                          // dequantized branches, summed
};

Branches TransformAll(const std::vector<float>& w, const std::vector<int64_t>& shape, int channel_axis,
             int reduction_axis, TransformConfig c) {
  WeightView v{w.data(), shape, channel_axis, reduction_axis};
  Branches out;
  const size_t n = w.size();
  c.encoding = WeightEncoding::kCodes;
  c.storage_bits = 8;
  auto r = TransformWeight(v, c, [&](int b, int64_t off, const uint8_t* d, size_t len) {
    if (out.codes[b].empty()) out.codes[b].resize(n);
    std::memcpy(out.codes[b].data() + off, d, len);
  });
  EXPECT_TRUE(r.ok()) << r.status();
  out.result = *r;
  c.encoding = WeightEncoding::kDequantized;
  auto r2 = TransformWeight(v, c, [&](int b, int64_t off, const uint8_t* d, size_t len) {
    if (out.dequantized[b].empty()) out.dequantized[b].resize(n);
    std::memcpy(reinterpret_cast<uint8_t*>(out.dequantized[b].data()) + off, d, len);
  });
  EXPECT_TRUE(r2.ok());
  out.sum.assign(n, 0.0f);
  for (int b = 0; b < r->num_branches; ++b) {
    for (size_t i = 0; i < n; ++i) out.sum[i] += out.dequantized[b][i];
  }
  return out;
}

// The engine's default split settings for one layer.
TransformConfig SplitConfig(int bits, bool sym, Granularity gran, int block_size, bool split = true) {
  TransformConfig c;
  c.spec = {bits, sym};
  c.granularity = gran;
  c.block_size = block_size;
  c.split = split;
  c.quant_aware_boundaries = true;
  c.cluster_per_channel = gran != Granularity::kTensor;
  return c;
}

void ExpectBitIdentical(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) bad += a[i] == b[i] ? 0 : 1;  // +0 == -0: same value
  EXPECT_EQ(bad, 0) << what << ": first values " << a[0] << " vs " << b[0];
}

TEST(EncodeTest, CompactDecodesToTheBranchesExactly) {
  struct Shape {
    std::vector<int64_t> dims;
    int channel_axis, reduction_axis;
  };
  const std::vector<Shape> shapes = {{{24, 40}, 1, 0},          // MatMul [K, N]
                                     {{12, 5, 3, 3}, 0, 1},     // Conv
                                     {{6, 4, 3, 3}, 1, 0}};     // ConvTranspose
  int split_cases = 0;
  for (const Shape& s : shapes) {
    int64_t n = 1;
    for (int64_t d : s.dims) n *= d;
    const std::vector<float> w = Weights(n, 3);
    for (int bits = 2; bits <= 8; ++bits) {
      for (Granularity gran : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
        for (bool sym : {false, true}) {
          for (bool split : {true, false}) {
            // Scales rounded to float16 (the default) or not: stored in 2 or 4 bytes.
            const bool half = split == sym;
            TransformConfig c = SplitConfig(bits, sym, gran, 4, split);
            c.spec.half_scales = half;
            Branches br = TransformAll(w, s.dims, s.channel_axis, s.reduction_axis, c);
            ParamLayout l{s.dims, gran, s.channel_axis, s.reduction_axis, 4};
            std::vector<const uint8_t*> codes;
            for (int b = 0; b < br.result.num_branches; ++b) codes.push_back(br.codes[b].data());
            auto e = EncodeCompact(codes, br.result, l, c.spec, CompactContainerBits(bits));
            ASSERT_TRUE(e.ok()) << e.status();
            EXPECT_EQ(e->codes.size(), static_cast<size_t>(CompactCodeBytes(n, CompactContainerBits(bits))));
            EXPECT_EQ(e->ids.size(), br.result.num_branches == 3 ? static_cast<size_t>(IdBytes(n)) : 0u);
            const int64_t params = static_cast<int64_t>(br.result.params[0].scales.size());
            EXPECT_EQ(static_cast<int64_t>(e->scales.size() + e->zero_points.size()) + (half ? 4 : 0),
                      CompactParamBytes(params, br.result.num_branches, CompactContainerBits(bits), half));
            split_cases += br.result.num_branches == 3 ? 1 : 0;
            if (bits <= 4) {
              // The engine hands over codes packed in their container: same encoding.
              const int cb = ContainerBits(bits);
              std::vector<std::vector<uint8_t>> packed(br.result.num_branches);
              std::vector<const uint8_t*> packed_ptrs;
              for (int b = 0; b < br.result.num_branches; ++b) {
                std::vector<int32_t> v(n);
                for (int64_t i = 0; i < n; ++i) {
                  v[i] = sym ? static_cast<int8_t>(br.codes[b][i]) : br.codes[b][i];
                }
                packed[b].resize(PackedBytes(n, cb));
                PackCodes(v, cb, packed[b].data());
                packed_ptrs.push_back(packed[b].data());
              }
              auto ep = EncodeCompact(packed_ptrs, br.result, l, c.spec, CompactContainerBits(bits), cb);
              ASSERT_TRUE(ep.ok());
              EXPECT_EQ(ep->codes, e->codes);
              EXPECT_EQ(ep->ids, e->ids);
              EXPECT_EQ(ep->scales, e->scales);
              EXPECT_EQ(ep->zero_points, e->zero_points);
              if (s.dims.size() == 2 && gran != Granularity::kBlock) {
                ParamLayout nl{s.dims, gran, 1, 0, 32};
                if (NBitsCanCarry(nl, bits)) {
                  auto a = EncodeMatMulNBits(br.codes[0].data(), br.result.params[0], nl, c.spec);
                  auto b2 = EncodeMatMulNBits(packed[0].data(), br.result.params[0], nl, c.spec, cb);
                  ASSERT_TRUE(a.ok() && b2.ok());
                  EXPECT_EQ(a->b, b2->b);
                }
              }
            }
            ExpectBitIdentical(
                DecodeCompact(*e, l, br.result.num_branches, CompactContainerBits(bits), half), br.sum,
                absl::StrCat("bits ", bits, " ", ToString(gran), sym ? " sym" : " asym",
                             split ? " split" : " plain", half ? " half" : " float", " rank ", s.dims.size()));
          }
        }
      }
    }
  }
  EXPECT_GT(split_cases, 100);  // the split path was really exercised
}

TEST(EncodeTest, MatMulNBitsDecodesToEachBranchExactly) {
  for (int64_t k : {20, 64, 200}) {
    const int64_t n = 12;
    const std::vector<float> w = Weights(k * n, 5);
    for (int bits : {4, 8}) {
      for (Granularity gran : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
        for (bool sym : {false, true}) {
          const TransformConfig c = SplitConfig(bits, sym, gran, 32);
          Branches br = TransformAll(w, {k, n}, 1, 0, c);
          ParamLayout l{{k, n}, gran, 1, 0, 32};
          ASSERT_TRUE(NBitsCanCarry(l, bits));
          for (int b = 0; b < br.result.num_branches; ++b) {
            auto e = EncodeMatMulNBits(br.codes[b].data(), br.result.params[b], l, c.spec);
            ASSERT_TRUE(e.ok()) << e.status();
            EXPECT_EQ(e->block_size, gran == Granularity::kBlock ? 32 : (k >= 128 ? 128 : k <= 16 ? 16 : k <= 32 ? 32 : 64));
            EXPECT_EQ(e->b.size(), static_cast<size_t>(n * e->blocks * e->block_size * bits / 8));
            ExpectBitIdentical(DecodeMatMulNBits(*e), br.dequantized[b],
                               absl::StrCat("K ", k, " bits ", bits, " ", ToString(gran),
                                            sym ? " sym" : " asym", " branch ", b));
          }
        }
      }
    }
  }
}

// outer8: the middle branch unchanged, the outer clusters re-quantized together at 8 bits.
// Its weight error is what it reports, and at 4 bits below the three branches'.
TEST(EncodeTest, Outer8KeepsTheMiddleAndLowersTheError) {
  const int64_t k = 96, n = 20;
  const std::vector<float> w = Weights(k * n, 9);
  for (Granularity gran : {Granularity::kChannel, Granularity::kBlock, Granularity::kTensor}) {
    for (bool sym : {false, true}) {
      const TransformConfig c = SplitConfig(4, sym, gran, 32);
      Branches br = TransformAll(w, {k, n}, 1, 0, c);
      ASSERT_EQ(br.result.num_branches, 3);
      ParamLayout l{{k, n}, gran, 1, 0, 32};
      std::vector<const uint8_t*> codes = {br.codes[0].data(), br.codes[1].data(), br.codes[2].data()};
      auto outer = QuantizeOuterAt8(w.data(), codes, br.result, l, sym);
      ASSERT_TRUE(outer.ok()) << outer.status();
      auto mid = EncodeMatMulNBits(br.codes[1].data(), br.result.params[1], l, c.spec);
      auto high = EncodeMatMulNBits(outer->codes.data(), outer->params, l, QuantSpec{8, sym});
      ASSERT_TRUE(mid.ok() && high.ok());
      const std::vector<float> m = DecodeMatMulNBits(*mid), o = DecodeMatMulNBits(*high);
      double err = 0;
      int64_t outer_values = 0;
      for (int64_t i = 0; i < k * n; ++i) {
        // Disjoint: a weight lives in the middle kernel or the outer one.
        EXPECT_TRUE(m[i] == 0 || o[i] == 0) << i;
        EXPECT_EQ(m[i], br.dequantized[1][i]) << i;  // the middle branch is unchanged
        outer_values += o[i] != 0;
        const double e = static_cast<double>(w[i]) - (m[i] + o[i]);
        err += e * e;
      }
      EXPECT_GT(outer_values, 0);
      EXPECT_NEAR(outer->error_energy, err, 1e-9 * err + 1e-12);
      EXPECT_LT(outer->error_energy, br.result.split_error_energy)
          << ToString(gran) << (sym ? " sym" : " asym");
    }
  }
}

// 8-bit codes (one byte each, two's complement when signed) packed into `bits` containers.
std::vector<uint8_t> Pack(const std::vector<uint8_t>& codes8, int bits, bool sym) {
  std::vector<int32_t> v(codes8.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = sym ? static_cast<int8_t>(codes8[i]) : codes8[i];
  std::vector<uint8_t> out(PackedBytes(static_cast<int64_t>(v.size()), bits));
  PackCodes(v, bits, out.data());
  return out;
}

// Every [K, N] MatMul weight case MatMulNBits can carry, over the given K and N, both code
// widths, every granularity and symmetry: fn(k, n, bits, gran, sym, config, branches, layout).
template <typename Fn>
void ForEachNBitsCase(std::initializer_list<int64_t> ks, std::initializer_list<int64_t> ns, uint64_t seed,
                      Fn&& fn) {
  for (int64_t k : ks) {
    for (int64_t n : ns) {
      const std::vector<float> w = Weights(k * n, seed + k + n);
      for (int bits : {4, 8}) {
        for (Granularity gran : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
          for (bool sym : {false, true}) {
            const TransformConfig c = SplitConfig(bits, sym, gran, 32);
            const Branches br = TransformAll(w, {k, n}, 1, 0, c);
            const ParamLayout l{{k, n}, gran, 1, 0, 32};
            if (NBitsCanCarry(l, bits)) fn(k, n, bits, gran, sym, c, br, l);
          }
        }
      }
    }
  }
}

// The fast MatMulNBits encoder equals the element-by-element reference byte for byte, for
// odd and even K and N, both containers, every granularity and symmetry.
TEST(EncodeTest, MatMulNBitsFastEqualsReference) {
  int cases = 0;
  ForEachNBitsCase({1, 7, 64, 131}, {1, 2, 3, 130, 258}, 17, [&](int64_t k, int64_t n, int bits, Granularity gran,
                                                                bool sym, const TransformConfig& c,
                                                                const Branches& br, const ParamLayout& l) {
    for (int b = 0; b < br.result.num_branches; ++b) {
      for (int cb : {bits, 8}) {
        const std::vector<uint8_t> codes = cb == 8 ? br.codes[b] : Pack(br.codes[b], cb, sym);
        auto fast = EncodeMatMulNBits(codes.data(), br.result.params[b], l, c.spec, cb);
        auto ref = EncodeMatMulNBitsReference(codes.data(), br.result.params[b], l, c.spec, cb);
        ASSERT_TRUE(fast.ok() && ref.ok());
        const std::string what = absl::StrCat("K ", k, " N ", n, " bits ", bits, " container ", cb, " ",
                                              ToString(gran), sym ? " sym" : " asym", " branch ", b);
        EXPECT_EQ(fast->b, ref->b) << what;
        EXPECT_EQ(fast->scales, ref->scales) << what;
        EXPECT_EQ(fast->zero_points, ref->zero_points) << what;
        ++cases;
      }
    }
  });
  EXPECT_GT(cases, 300);
}

// Encoded a band of columns at a time, MatMulNBits' bytes are the whole encoding's: every
// band lands at its column offset and together they cover it exactly (bands of 8 and 16
// columns, a ragged last band, and a width whose rows do not start on bytes: one band).
TEST(EncodeTest, MatMulNBitsInBandsEqualsTheWholeEncoding) {
  int banded = 0;
  ForEachNBitsCase({1, 7, 64, 131}, {3, 8, 40, 130}, 29, [&](int64_t k, int64_t n, int bits, Granularity gran,
                                                            bool sym, const TransformConfig& c, const Branches& br,
                                                            const ParamLayout& l) {
    const int mid = br.result.num_branches > 1 ? 1 : 0;  // an unsplit weight has one
    for (int cb : {bits, 8}) {
      const std::vector<uint8_t> codes = cb == 8 ? br.codes[mid] : Pack(br.codes[mid], cb, sym);
      auto whole = EncodeMatMulNBits(codes.data(), br.result.params[mid], l, c.spec, cb);
      ASSERT_TRUE(whole.ok());
      for (int64_t band_bytes : {int64_t{1}, k * cb, k * cb * 2, int64_t{1} << 20}) {
        const std::string what = absl::StrCat("K ", k, " N ", n, " bits ", bits, " container ", cb, " ",
                                              ToString(gran), sym ? " sym" : " asym", " band bytes ", band_bytes);
        std::vector<uint8_t> b(whole->b.size(), 0xA5), zp(whole->zero_points.size(), 0xA5);
        std::vector<float> scales(whole->scales.size(), -1.0f);
        int bands = 0;
        absl::Status st = EncodeMatMulNBitsInBands(
            codes.data(), br.result.params[mid], l, c.spec, cb, band_bytes, [&](int64_t n0, const NBitsEncoding& e) {
              const int64_t col = e.blocks * e.block_size * e.bits / 8, zp_col = (e.blocks * e.bits + 7) / 8;
              EXPECT_LE(static_cast<int64_t>(n0 * col + e.b.size()), static_cast<int64_t>(b.size())) << what;
              std::memcpy(b.data() + n0 * col, e.b.data(), e.b.size());
              std::memcpy(scales.data() + n0 * e.blocks, e.scales.data(), e.scales.size() * 4);
              std::memcpy(zp.data() + n0 * zp_col, e.zero_points.data(), e.zero_points.size());
              ++bands;
              return absl::OkStatus();
            });
        ASSERT_TRUE(st.ok()) << st;
        EXPECT_EQ(b, whole->b) << what;
        EXPECT_EQ(scales, whole->scales) << what;
        EXPECT_EQ(zp, whole->zero_points) << what;
        banded += bands > 1;
      }
    }
  });
  EXPECT_GT(banded, 100);
  // A sink's error stops the encoding and is returned as it is.
  const std::vector<float> w = Weights(64 * 40, 3);
  const TransformConfig c = SplitConfig(4, false, Granularity::kChannel, 32);
  Branches br = TransformAll(w, {64, 40}, 1, 0, c);
  int calls = 0;
  absl::Status st = EncodeMatMulNBitsInBands(br.codes[1].data(), br.result.params[1],
                                             ParamLayout{{64, 40}, Granularity::kChannel, 1, 0, 32}, c.spec, 8, 64 * 8,
                                             [&](int64_t, const NBitsEncoding&) {
                                               ++calls;
                                               return absl::ResourceExhaustedError("disk full");
                                             });
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(calls, 1);
}

// Streamed in bands of rows, GatherBlockQuantized's data is the whole encoding's, byte for
// byte and in order (the same-container XOR and the field-by-field path alike).
TEST(EncodeTest, GatherBlockQuantizedInBandsEqualsTheWholeEncoding) {
  int banded = 0;
  for (int64_t r : {1, 5, 64}) {
    for (int64_t cols : {16, 32, 48}) {
      const std::vector<float> w = Weights(r * cols, 41 + r + cols);
      for (int bits : {2, 3, 4, 8}) {
        for (Granularity gran : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
          for (bool sym : {false, true}) {
            const TransformConfig c = SplitConfig(bits, sym, gran, 16);
            Branches br = TransformAll(w, {r, cols}, 0, 1, c);
            ParamLayout l{{r, cols}, gran, 0, 1, 16};
            if (!GatherCanCarry(l, bits)) continue;
            const int mid = br.result.num_branches > 1 ? 1 : 0;
            for (int cb : {ContainerBits(bits), 8}) {
              const std::vector<uint8_t> codes = cb == 8 ? br.codes[mid] : Pack(br.codes[mid], cb, sym);
              auto whole = EncodeGatherBlockQuantized(codes.data(), br.result.params[mid], l, c.spec, cb);
              ASSERT_TRUE(whole.ok()) << whole.status();
              for (int64_t band_bytes : {int64_t{1}, cols, int64_t{1} << 20}) {
                const std::string what = absl::StrCat("R ", r, " C ", cols, " bits ", bits, " container ", cb,
                                                      " ", ToString(gran), sym ? " sym" : " asym", " band ",
                                                      band_bytes);
                std::vector<uint8_t> data;
                int bands = 0;
                auto e = EncodeGatherBlockQuantizedInBands(
                    codes.data(), br.result.params[mid], l, c.spec, cb, band_bytes,
                    [&](int64_t offset, const std::vector<uint8_t>& bytes) {
                      EXPECT_EQ(offset, static_cast<int64_t>(data.size())) << what;
                      data.insert(data.end(), bytes.begin(), bytes.end());
                      ++bands;
                      return absl::OkStatus();
                    });
                ASSERT_TRUE(e.ok()) << e.status();
                EXPECT_EQ(data, whole->data) << what;
                EXPECT_EQ(e->scales, whole->scales) << what;
                EXPECT_EQ(e->zero_points, whole->zero_points) << what;
                EXPECT_TRUE(e->data.empty());
                banded += bands > 1;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(banded, 50);
}

// The fast outer8 equals the reference: codes, parameters and error energy, on [K, N]
// weights and [R, C] tables, odd and even widths, 4- and 8-bit containers.
TEST(EncodeTest, Outer8FastEqualsReference) {
  int cases = 0;
  for (bool table : {false, true}) {
    for (int64_t rows : {3, 40}) {
      for (int64_t cols : {5, 16, 66}) {
        const std::vector<float> w = Weights(rows * cols, 29 + rows * cols);
        for (Granularity gran : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
          for (bool sym : {false, true}) {
            const TransformConfig c = SplitConfig(4, sym, gran, 16);
            Branches br = table ? TransformAll(w, {rows, cols}, 0, 1, c) : TransformAll(w, {rows, cols}, 1, 0, c);
            if (br.result.num_branches != 3) continue;
            ParamLayout l = table ? ParamLayout{{rows, cols}, gran, 0, 1, 16} : ParamLayout{{rows, cols}, gran, 1, 0, 16};
            for (int cb : {4, 8}) {
              std::array<std::vector<uint8_t>, 3> packed;
              std::vector<const uint8_t*> codes;
              for (int b = 0; b < 3; ++b) {
                packed[b] = cb == 8 ? br.codes[b] : Pack(br.codes[b], cb, sym);
                codes.push_back(packed[b].data());
              }
              int read_calls = 0;
              auto fast = QuantizeOuterAt8(w.data(), codes, br.result, l, sym, cb, nullptr,
                                           [&] { ++read_calls; });
              EXPECT_EQ(read_calls, 1);
              auto ref = QuantizeOuterAt8Reference(w.data(), codes, br.result, l, sym, cb);
              ASSERT_TRUE(fast.ok() && ref.ok()) << fast.status() << ref.status();
              const std::string what = absl::StrCat(table ? "table " : "matmul ", rows, "x", cols, " container ", cb,
                                                    " ", ToString(gran), sym ? " sym" : " asym");
              EXPECT_EQ(fast->codes, ref->codes) << what;
              EXPECT_EQ(fast->params.scales, ref->params.scales) << what;
              EXPECT_EQ(fast->params.zero_points, ref->params.zero_points) << what;
              // Summed in another order: equal up to rounding.
              EXPECT_NEAR(fast->error_energy, ref->error_energy, 1e-12 * ref->error_energy) << what;
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 100);
}

// GatherBlockQuantized: a table [R, C] gathered by rows (the row is the channel), every
// bits in its 2/4/8-bit container, every granularity and symmetry, split and unsplit.
TEST(EncodeTest, GatherBlockQuantizedDecodesToEachBranchExactly) {
  const int64_t rows = 9;
  for (int64_t cols : {16, 40, 96}) {
    const std::vector<float> w = Weights(rows * cols, 11);
    for (int bits = 2; bits <= 8; ++bits) {
      for (Granularity gran : {Granularity::kTensor, Granularity::kChannel, Granularity::kBlock}) {
        for (bool sym : {false, true}) {
          for (bool split : {true, false}) {
            const TransformConfig c = SplitConfig(bits, sym, gran, 16, split);
            Branches br = TransformAll(w, {rows, cols}, 0, 1, c);
            ParamLayout l{{rows, cols}, gran, 0, 1, 16};
            const std::string what = absl::StrCat("C ", cols, " bits ", bits, " ", ToString(gran),
                                                  sym ? " sym" : " asym", split ? " split" : " plain");
            ASSERT_TRUE(GatherCanCarry(l, bits)) << what;
            for (int b = 0; b < br.result.num_branches; ++b) {
              auto e = EncodeGatherBlockQuantized(br.codes[b].data(), br.result.params[b], l, c.spec);
              ASSERT_TRUE(e.ok()) << e.status();
              EXPECT_EQ(e->bits, ContainerBits(bits));
              EXPECT_EQ(e->block_size, gran == Granularity::kBlock ? 16 : cols <= 16 ? 16 : cols <= 64 ? 64 : 128);
              EXPECT_EQ(e->data.size(), static_cast<size_t>(rows * cols * e->bits / 8));
              EXPECT_EQ(e->scales.size(), static_cast<size_t>(rows * e->blocks));
              ExpectBitIdentical(DecodeGatherBlockQuantized(*e), br.dequantized[b],
                                 absl::StrCat(what, " branch ", b));
            }
          }
        }
      }
    }
  }
}

// outer8 on a table: the middle branch as it is, the outer clusters at 8 bits, lower error.
TEST(EncodeTest, Outer8OnATableKeepsTheMiddleAndLowersTheError) {
  const int64_t rows = 24, cols = 64;
  const std::vector<float> w = Weights(rows * cols, 13);
  for (Granularity gran : {Granularity::kChannel, Granularity::kBlock, Granularity::kTensor}) {
    for (bool sym : {false, true}) {
      const TransformConfig c = SplitConfig(4, sym, gran, 16);
      Branches br = TransformAll(w, {rows, cols}, 0, 1, c);
      ASSERT_EQ(br.result.num_branches, 3);
      ParamLayout l{{rows, cols}, gran, 0, 1, 16};
      std::vector<const uint8_t*> codes = {br.codes[0].data(), br.codes[1].data(), br.codes[2].data()};
      auto outer = QuantizeOuterAt8(w.data(), codes, br.result, l, sym);
      ASSERT_TRUE(outer.ok()) << outer.status();
      auto mid = EncodeGatherBlockQuantized(br.codes[1].data(), br.result.params[1], l, c.spec);
      auto high = EncodeGatherBlockQuantized(outer->codes.data(), outer->params, l, QuantSpec{8, sym});
      ASSERT_TRUE(mid.ok() && high.ok());
      auto high8 = EncodeGatherBlockQuantized8(outer->codes, outer->params, l, sym);  // in place
      ASSERT_TRUE(high8.ok());
      EXPECT_EQ(high8->data, high->data);
      EXPECT_EQ(high8->zero_points, high->zero_points);
      const std::vector<float> m = DecodeGatherBlockQuantized(*mid), o = DecodeGatherBlockQuantized(*high);
      double err = 0;
      for (int64_t i = 0; i < rows * cols; ++i) {
        EXPECT_TRUE(m[i] == 0 || o[i] == 0) << i;
        EXPECT_EQ(m[i], br.dequantized[1][i]) << i;
        const double e = static_cast<double>(w[i]) - (m[i] + o[i]);
        err += e * e;
      }
      EXPECT_NEAR(outer->error_energy, err, 1e-9 * err + 1e-12);
      EXPECT_LT(outer->error_energy, br.result.split_error_energy) << ToString(gran) << (sym ? " sym" : " asym");
    }
  }
}

TEST(EncodeTest, GatherBlockQuantizedCarriesOnlyWhatItCanExpress) {
  ParamLayout l{{10, 6}, Granularity::kChannel, 0, 1, 32};
  EXPECT_TRUE(GatherCanCarry(l, 4));   // 6 codes of 4 bits: 3 bytes a row
  EXPECT_TRUE(GatherCanCarry(l, 8));
  EXPECT_FALSE(GatherCanCarry(l, 2));  // 12 bits a row: rows would share a byte
  l.shape = {10, 7};
  EXPECT_FALSE(GatherCanCarry(l, 4));
  EXPECT_TRUE(GatherCanCarry(l, 7));
  l.shape = {10, 64};
  l.granularity = Granularity::kBlock;
  l.block_size = 24;  // not a power of two
  EXPECT_FALSE(GatherCanCarry(l, 4));
  l.block_size = 8;  // below the kernel's 16
  EXPECT_FALSE(GatherCanCarry(l, 4));
  l.block_size = 512;  // larger than the row: one block
  EXPECT_TRUE(GatherCanCarry(l, 4));
  ParamLayout matmul{{16, 24}, Granularity::kChannel, 1, 0, 32};  // [K, N]
  EXPECT_FALSE(GatherCanCarry(matmul, 4));
}

// Branches must be disjoint: a weight outside its zero point in two branches is refused.
TEST(EncodeTest, CompactRefusesOverlappingBranches) {
  TransformResult r;
  r.num_branches = 3;
  for (int b = 0; b < 3; ++b) r.params[b] = BranchParams{{}, 0, 0, {1.0f}, {0}};
  const std::vector<uint8_t> lower = {1, 0}, middle = {2, 0}, upper = {0, 3};
  std::vector<const uint8_t*> codes = {lower.data(), middle.data(), upper.data()};
  ParamLayout l{{2}, Granularity::kTensor, 0, 0, 32};
  auto e = EncodeCompact(codes, r, l, QuantSpec{4, false}, 4);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(std::string(e.status().message()).find("element 0 is in 2 branches"), std::string::npos)
      << e.status();
}

TEST(EncodeTest, MatMulNBitsCarriesOnlyWhatItCanExpress) {
  ParamLayout l{{64, 8}, Granularity::kChannel, 1, 0, 32};
  EXPECT_TRUE(NBitsCanCarry(l, 4));
  EXPECT_TRUE(NBitsCanCarry(l, 8));
  EXPECT_FALSE(NBitsCanCarry(l, 2));
  EXPECT_FALSE(NBitsCanCarry(l, 3));
  l.granularity = Granularity::kBlock;
  l.block_size = 24;  // not a power of two
  EXPECT_FALSE(NBitsCanCarry(l, 4));
  l.block_size = 8;  // below MatMulNBits' 16
  EXPECT_FALSE(NBitsCanCarry(l, 4));
  ParamLayout conv{{8, 4, 3, 3}, Granularity::kChannel, 0, 1, 32};
  EXPECT_FALSE(NBitsCanCarry(conv, 4));
  ParamLayout gemm_t{{16, 24}, Granularity::kChannel, 0, 1, 32};  // Gemm transB: [N, K]
  EXPECT_FALSE(NBitsCanCarry(gemm_t, 4));
}

TEST(EncodeTest, ParamIndexFollowsTheLayout) {
  ParamLayout l{{4, 3}, Granularity::kChannel, 1, 0, 2};
  EXPECT_EQ(ParamIndexOfElements(l), (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2}));
  l.granularity = Granularity::kBlock;  // blocks of 2 along axis 0: params [2, 3]
  EXPECT_EQ(ParamIndexOfElements(l), (std::vector<int64_t>{0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5}));
  l.granularity = Granularity::kTensor;
  EXPECT_EQ(ParamIndexOfElements(l), std::vector<int64_t>(12, 0));
}

}  // namespace
}  // namespace sq
