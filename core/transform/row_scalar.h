// The row kernel's element step (kernels.h, PickRow), shared by the SSE2 and AVX2 builds
// of the kernel (their heads and tails) and by the scalar reference kernel, and the SIMD
// builds' shared 16-code store.
//
// Everything here has internal linkage on purpose: kernels_avx2.cc is compiled with
// -mavx2, and an inline function with external linkage compiled there could be the copy
// the linker keeps for every caller, including those on CPUs without AVX2.
#ifndef SQ_CORE_TRANSFORM_ROW_SCALAR_H_
#define SQ_CORE_TRANSFORM_ROW_SCALAR_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

#if defined(__SSE2__)
// The SIMD builds' store of 16 codes: `q8` holds the low byte of each code, mb[b] (split)
// the mask of the elements in branch b; elsewhere branch b stores its zero point. Packed to
// kBits and stored at byte `byte` of each branch's output.
template <bool kSplit, int kBits>
inline void StoreCodes16(__m128i q8, const __m128i* mb, const uint8_t* const* zb, int64_t k,
                         uint8_t* const* out, int64_t byte) SQ_ALWAYS_INLINE;
template <bool kSplit, int kBits>
inline void StoreCodes16(__m128i q8, const __m128i* mb, const uint8_t* const* zb, int64_t k,
                         uint8_t* const* out, int64_t byte) {
  for (int b = 0; b < (kSplit ? 3 : 1); ++b) {
    __m128i v = q8;
    if (kSplit) {
      const __m128i z = _mm_loadu_si128(reinterpret_cast<const __m128i*>(zb[b] + k));
      v = _mm_or_si128(_mm_and_si128(mb[b], q8), _mm_andnot_si128(mb[b], z));
    }
    if (kBits == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b] + byte), v);
    } else if (kBits == 4) {
      const __m128i t = _mm_or_si128(_mm_and_si128(v, _mm_set1_epi16(0x000F)),
                                     _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi16(0x00F0)));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out[b] + byte), _mm_packus_epi16(t, t));
    } else {
      __m128i t = _mm_and_si128(v, _mm_set1_epi32(0x3));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 6), _mm_set1_epi32(0xC)));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 12), _mm_set1_epi32(0x30)));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 18), _mm_set1_epi32(0xC0)));
      const __m128i w16 = _mm_packs_epi32(t, t);
      const int32_t word = _mm_cvtsi128_si32(_mm_packus_epi16(w16, w16));
      std::memcpy(out[b] + byte, &word, 4);
    }
  }
}
#endif

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
