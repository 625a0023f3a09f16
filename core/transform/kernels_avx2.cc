// The AVX2 build of the channel-last row kernel (kernels.h, PickRow): eight elements per
// step instead of four, the same float operations per element as the SSE2 build and
// RowOne, and the same double sums — the lanes are paired and added in exactly the SSE2
// build's order (its two accumulators hold elements k..k+3 and k+4..k+7 of every 8;
// here they are the two halves of one 256-bit accumulator), so codes and error sums are
// bit-identical between the builds. Compiled with -mavx2 only (see core/CMakeLists.txt).
#include "core/transform/kernels.h"

#if defined(__AVX2__)

#include <immintrin.h>

#include <cstring>

#include "core/transform/row_scalar.h"

namespace sq {
namespace transform {
namespace {

// acc (two SSE2 accumulators side by side) += the squares of e's 8 lanes, paired as the
// SSE2 build pairs them: (e0²+e2², e1²+e3²) into the low half, (e4²+e6², e5²+e7²) high.
inline __m256d AddSquares(__m256d acc, __m256 e) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1));
  const __m256d lo2 = _mm256_mul_pd(lo, lo), hi2 = _mm256_mul_pd(hi, hi);
  const __m256d a = _mm256_permute2f128_pd(lo2, hi2, 0x20);  // e0² e1² e4² e5²
  const __m256d b = _mm256_permute2f128_pd(lo2, hi2, 0x31);  // e2² e3² e6² e7²
  return _mm256_add_pd(acc, _mm256_add_pd(a, b));
}
// The SSE2 build's final reduction: (acc0 + acc1), then its two lanes.
inline double Reduce(__m256d acc) {
  const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(acc), _mm256_extractf128_pd(acc, 1));
  alignas(16) double d[2];
  _mm_store_pd(d, t);
  return d[0] + d[1];
}
inline __m256 Round8(__m256 v) {  // RoundHalfEven4Bounded, eight lanes
  const __m256 magic = _mm256_set1_ps(kRoundMagic);
  return _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
}

template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
void QuantizeRowAvx2(const RowArgs& a, Partial& acc) {
  constexpr int kPerByte = 8 / kBits;
  int64_t k = 0;
  for (; k < a.len && (a.pos + k) % kPerByte != 0; ++k) {
    RowOne<kSplit, kVecT, kPlain, kSignal, kBits>(a, k, acc);
  }
  const float* const xp = a.x;
  const float* const t0 = a.t0;
  const float* const t1 = a.t1;
  const float* const s1 = a.scale[1];
  const float* const z1 = a.zf[1];
  const float* const s0 = kSplit ? a.scale_x[0] : a.scale[0];
  const float* const s2 = a.scale_x[1];
  const float* const z0 = kSplit ? a.zf_x[0] : a.zf[0];
  const float* const z2 = a.zf_x[1];
  const __m256 t0b = _mm256_set1_ps(t0[0]), t1b = _mm256_set1_ps(t1[0]);
  const float* const op = a.off;
  const float* const ps = a.pscale;
  const float* const pz = a.pzf;
  const uint8_t* zb[3] = {a.zb[0], a.zb[1], a.zb[2]};
  uint8_t* out[3] = {a.out[0], a.out[1], a.out[2]};
  const bool is_signed = a.is_signed;
  const int64_t len = a.len, pos = a.pos;
  __m256d sig = _mm256_setzero_pd(), err = sig, perr = sig;
  const __m256 qmin = _mm256_set1_ps(a.qmin), qmax = _mm256_set1_ps(a.qmax);
  const __m128i all = _mm_set1_epi32(-1);
  // Eight elements: accumulates; returns the codes (int32) and the branch masks.
  auto group = [&](int64_t kk, __m256i& qi, __m256i& m0i, __m256i& m2i) SQ_ALWAYS_INLINE {
    const __m256 x = _mm256_loadu_ps(xp + kk);
    if (kSignal) sig = AddSquares(sig, x);
    __m256 sc, zf;
    if (kSplit) {
      const __m256 m0 = _mm256_cmp_ps(x, kVecT ? _mm256_loadu_ps(t0 + kk) : t0b, _CMP_LE_OS);
      const __m256 m2 =
          _mm256_andnot_ps(m0, _mm256_cmp_ps(x, kVecT ? _mm256_loadu_ps(t1 + kk) : t1b, _CMP_GE_OS));
      sc = _mm256_xor_ps(_mm256_xor_ps(_mm256_loadu_ps(s1 + kk), _mm256_and_ps(m0, _mm256_loadu_ps(s0 + kk))),
                         _mm256_and_ps(m2, _mm256_loadu_ps(s2 + kk)));
      zf = _mm256_xor_ps(_mm256_xor_ps(_mm256_loadu_ps(z1 + kk), _mm256_and_ps(m0, _mm256_loadu_ps(z0 + kk))),
                         _mm256_and_ps(m2, _mm256_loadu_ps(z2 + kk)));
      m0i = _mm256_castps_si256(m0);
      m2i = _mm256_castps_si256(m2);
    } else {
      sc = _mm256_loadu_ps(s0 + kk);
      zf = _mm256_loadu_ps(z0 + kk);
    }
    const __m256 v = _mm256_add_ps(_mm256_div_ps(x, sc), _mm256_loadu_ps(op + kk));
    const __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(Round8(v), zf), qmin), qmax);
    const __m256 e = _mm256_sub_ps(x, _mm256_mul_ps(_mm256_sub_ps(q, zf), sc));
    err = AddSquares(err, e);
    qi = _mm256_cvttps_epi32(q);
    if (kPlain) {
      const __m256 psc = _mm256_loadu_ps(ps + kk), pzf = _mm256_loadu_ps(pz + kk);
      const __m256 pq = _mm256_min_ps(
          _mm256_max_ps(_mm256_add_ps(Round8(_mm256_div_ps(x, psc)), pzf), qmin), qmax);
      const __m256 pe = _mm256_sub_ps(x, _mm256_mul_ps(_mm256_sub_ps(pq, pzf), psc));
      perr = AddSquares(perr, pe);
    }
  };
  auto lo = [](__m256i v) { return _mm256_castsi256_si128(v); };
  auto hi = [](__m256i v) { return _mm256_extracti128_si256(v, 1); };
  for (; k + 16 <= len; k += 16) {
    __m256i qa, qb, m0a, m0b, m2a, m2b;
    group(k, qa, m0a, m2a);
    group(k + 8, qb, m0b, m2b);
    // From here on the SSE2 build's byte work, on the same 128-bit values.
    const __m128i w0 = _mm_packs_epi32(lo(qa), hi(qa));
    const __m128i w1 = _mm_packs_epi32(lo(qb), hi(qb));
    const __m128i q8 = is_signed ? _mm_packs_epi16(w0, w1) : _mm_packus_epi16(w0, w1);
    __m128i mb[3];
    if (kSplit) {
      mb[0] = _mm_packs_epi16(_mm_packs_epi32(lo(m0a), hi(m0a)), _mm_packs_epi32(lo(m0b), hi(m0b)));
      mb[2] = _mm_packs_epi16(_mm_packs_epi32(lo(m2a), hi(m2a)), _mm_packs_epi32(lo(m2b), hi(m2b)));
      mb[1] = _mm_andnot_si128(_mm_or_si128(mb[0], mb[2]), all);
    }
    StoreCodes16<kSplit, kBits>(q8, mb, zb, k, out, (pos + k) / kPerByte);
  }
  acc.signal += Reduce(sig);
  acc.split_error += Reduce(err);
  acc.plain_error += Reduce(perr);
  for (; k < a.len; ++k) RowOne<kSplit, kVecT, kPlain, kSignal, kBits>(a, k, acc);
}

struct Avx2RowFamily {
  template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
  static void Fn(const RowArgs& a, Partial& acc) {
    QuantizeRowAvx2<kSplit, kVecT, kPlain, kSignal, kBits>(a, acc);
  }
};

}  // namespace

RowFn PickRowAvx2(bool split, bool vec_t, bool plain, bool signal, int bits) {
  return PickRowOf<Avx2RowFamily>(split, vec_t, plain, signal, bits);
}

}  // namespace transform
}  // namespace sq

#else  // !__AVX2__

namespace sq {
namespace transform {
RowFn PickRowAvx2(bool, bool, bool, bool, int) { return nullptr; }
}  // namespace transform
}  // namespace sq

#endif
