// The row kernel's element step (kernels.h, PickRow), shared by the SSE2 and AVX2 builds
// of the kernel (their heads and tails) and by the scalar reference kernel.
//
// Everything here has internal linkage on purpose: kernels_avx2.cc is compiled with
// -mavx2, and an inline function with external linkage compiled there could be the copy
// the linker keeps for every caller, including those on CPUs without AVX2.
#ifndef SQ_CORE_TRANSFORM_ROW_SCALAR_H_
#define SQ_CORE_TRANSFORM_ROW_SCALAR_H_

#include <algorithm>
#include <cstdint>

#include "core/transform/common.h"
#include "core/transform/kernels.h"
#include "core/transform/round.h"

#if defined(__GNUC__)
#define SQ_ALWAYS_INLINE __attribute__((always_inline))
#else
#define SQ_ALWAYS_INLINE
#endif

namespace sq {
namespace transform {
namespace {

// Stores code `code` at element `pos` of a packed kBits-bit stream (low bits first).
template <int kBits>
inline void PutCode(uint8_t* out, int64_t pos, int32_t code) {
  if (kBits == 8) {
    out[pos] = static_cast<uint8_t>(code & 0xFF);
    return;
  }
  constexpr int kPerByte = 8 / kBits;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  const int shift = static_cast<int>(pos % kPerByte) * kBits;
  const uint8_t v = static_cast<uint8_t>((static_cast<uint32_t>(code) & kMask) << shift);
  if (shift == 0) {
    out[pos / kPerByte] = v;
  } else {
    out[pos / kPerByte] |= v;
  }
}

// Element k of a row: QuantizeOne's float operations, the code stored in every branch.
template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
inline void RowOne(const RowArgs& a, int64_t k, Partial& acc) {
  const float x = a.x[k];
  if (kSignal) acc.signal += static_cast<double>(x) * x;
  const int c = kSplit ? ClusterOfF(x, a.t0[kVecT ? k : 0], a.t1[kVecT ? k : 0]) : 0;
  const float sc = a.scale[c][k], zf = a.zf[c][k];
  const float q = std::min(std::max(RoundHalfEven(x / sc + a.off[k]) + zf, a.qmin), a.qmax);
  const float e = x - (q - zf) * sc;
  acc.split_error += static_cast<double>(e) * e;
  for (int b = 0; b < (kSplit ? 3 : 1); ++b) {
    const int32_t code = (b == c) ? static_cast<int32_t>(q) : static_cast<int32_t>(a.zb[b][k]);
    PutCode<kBits>(a.out[b], a.pos + k, code);
  }
  if (kPlain) {
    const float psc = a.pscale[k], pzf = a.pzf[k];
    const float pq = std::min(std::max(RoundHalfEven(x / psc) + pzf, a.qmin), a.qmax);
    const float pe = x - (pq - pzf) * psc;
    acc.plain_error += static_cast<double>(pe) * pe;
  }
}

// The reference row kernel: RowOne over the row, in order.
template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
void QuantizeRowScalar(const RowArgs& a, Partial& acc) {
  for (int64_t k = 0; k < a.len; ++k) RowOne<kSplit, kVecT, kPlain, kSignal, kBits>(a, k, acc);
}

// Picks Family::Fn<kSplit, kVecT, kPlain, kSignal, kBits> for run-time flags.
template <class Family>
RowFn PickRowOf(bool split, bool vec_t, bool plain, bool signal, int bits) {
  auto by_bits = [bits](auto fn8, auto fn4, auto fn2) -> RowFn {
    return bits == 8 ? fn8 : bits == 4 ? fn4 : fn2;
  };
#define SQ_ROW_FN(S, V, P, G) \
  by_bits(&Family::template Fn<S, V, P, G, 8>, &Family::template Fn<S, V, P, G, 4>, \
          &Family::template Fn<S, V, P, G, 2>)
#define SQ_ROW_SIGNAL(S, V, P) (signal ? SQ_ROW_FN(S, V, P, true) : SQ_ROW_FN(S, V, P, false))
#define SQ_ROW_PLAIN(S, V) (plain ? SQ_ROW_SIGNAL(S, V, true) : SQ_ROW_SIGNAL(S, V, false))
  if (!split) return SQ_ROW_PLAIN(false, false);
  return vec_t ? SQ_ROW_PLAIN(true, true) : SQ_ROW_PLAIN(true, false);
#undef SQ_ROW_PLAIN
#undef SQ_ROW_SIGNAL
#undef SQ_ROW_FN
}

struct ScalarRowFamily {
  template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
  static void Fn(const RowArgs& a, Partial& acc) {
    QuantizeRowScalar<kSplit, kVecT, kPlain, kSignal, kBits>(a, acc);
  }
};

}  // namespace
}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_ROW_SCALAR_H_
