#include "core/transform/kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/transform/common.h"
#include "core/transform/round.h"
#include "core/transform/row_scalar.h"

namespace sq {
namespace transform {
namespace {

// Scalar element step, shared by the tails of the SIMD loop and the non-SSE2 build.
template <bool kSplit, bool kVecT, bool kVecS, WeightEncoding kEnc, bool kPlain, bool kSignal>
inline void QuantizeOne(const SegmentArgs& a, int64_t k, Partial& acc) {
  const float x = a.x[k];
  const int64_t s = kVecS ? k : 0;
  if (kSignal) acc.signal += static_cast<double>(x) * x;
  const int c = kSplit ? ClusterOfF(x, a.t0[kVecT ? k : 0], a.t1[kVecT ? k : 0]) : 0;
  if (kEnc == WeightEncoding::kFloatSplit) {
    for (int b = 0; b < (kSplit ? 3 : 1); ++b) a.floats[b][k] = (b == c) ? x : 0.0f;
  } else {
    const float sc = a.scale[c][s], zf = a.zf[c][s];
    const float q = std::min(std::max(RoundHalfEven(x / sc + a.off[s]) + zf, a.qmin), a.qmax);
    const float dq = (q - zf) * sc;
    const float e = x - dq;
    acc.split_error += static_cast<double>(e) * e;
    if (kEnc == WeightEncoding::kCodes) {
      for (int b = 0; b < (kSplit ? 3 : 1); ++b) {
        const int32_t code = (b == c) ? static_cast<int32_t>(q) : a.zi[b][s];
        a.codes[b][k] = static_cast<uint8_t>(code & 0xFF);
      }
    } else if (kEnc == WeightEncoding::kDequantized) {
      for (int b = 0; b < (kSplit ? 3 : 1); ++b) a.floats[b][k] = (b == c) ? dq : 0.0f;
    } else {
      a.floats[0][k] = dq;
    }
  }
  if (kPlain) {
    const float sc = a.pscale[s], zf = a.pzf[s];
    const float q = std::min(std::max(RoundHalfEven(x / sc) + zf, a.qmin), a.qmax);
    const float e = x - (q - zf) * sc;
    acc.plain_error += static_cast<double>(e) * e;
  }
}

#if defined(__SSE2__)
// The row kernel rounds with RoundHalfEven4Bounded (transform/round.h): the clamp is a
// no-op there, as x always lies in the range its scale s was chosen from (its branch's, or
// for plain the slice's, widened to include 0), so |x / s + offset| <= qmax - qmin + 0.5.
inline __m128d Square2(__m128 e) { return _mm_mul_pd(_mm_cvtps_pd(e), _mm_cvtps_pd(e)); }
inline __m128d SquareHi2(__m128 e) {
  const __m128d h = _mm_cvtps_pd(_mm_movehl_ps(e, e));
  return _mm_mul_pd(h, h);
}
template <bool kVec>
inline __m128 Load4(const float* p, int64_t k) {
  return kVec ? _mm_loadu_ps(p + k) : _mm_set1_ps(p[0]);
}
template <bool kVec>
inline __m128i Load4i(const int32_t* p, int64_t k) {
  return kVec ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + k)) : _mm_set1_epi32(p[0]);
}
#endif

// kSignal: also sum x^2 (not needed when the histogram already gave it).
template <bool kSplit, bool kVecT, bool kVecS, WeightEncoding kEnc, bool kPlain, bool kSignal>
void QuantizeSegment(const SegmentArgs& args, Partial& acc) {
  int64_t k = 0;
#if defined(__SSE2__)
  // A copy whose address never escapes: the code stores (uint8_t*) may alias `args`, which
  // would make the compiler reload every pointer and broadcast value after each store.
  const SegmentArgs a = args;
  constexpr int kB = kSplit ? 3 : 1;
  __m128d sig = _mm_setzero_pd(), err = _mm_setzero_pd(), perr = _mm_setzero_pd();
  const __m128 qmin = _mm_set1_ps(a.qmin), qmax = _mm_set1_ps(a.qmax);
  const __m128 ones = _mm_castsi128_ps(_mm_set1_epi32(-1));
  for (; k + 4 <= a.len; k += 4) {
    const __m128 x = _mm_loadu_ps(a.x + k);
    if (kSignal) sig = _mm_add_pd(sig, _mm_add_pd(Square2(x), SquareHi2(x)));
    __m128 m[3];
    if (kSplit) {
      m[0] = _mm_cmple_ps(x, Load4<kVecT>(a.t0, k));
      m[2] = _mm_cmpge_ps(x, Load4<kVecT>(a.t1, k));
      m[1] = _mm_andnot_ps(_mm_or_ps(m[0], m[2]), ones);
    } else {
      m[0] = ones;
    }
    if (kEnc == WeightEncoding::kFloatSplit) {
      for (int b = 0; b < kB; ++b) _mm_storeu_ps(a.floats[b] + k, _mm_and_ps(m[b], x));
    } else {
      __m128 sc, zf;
      if (kSplit) {
        sc = _mm_or_ps(_mm_or_ps(_mm_and_ps(m[0], Load4<kVecS>(a.scale[0], k)),
                                 _mm_and_ps(m[1], Load4<kVecS>(a.scale[1], k))),
                       _mm_and_ps(m[2], Load4<kVecS>(a.scale[2], k)));
        zf = _mm_or_ps(_mm_or_ps(_mm_and_ps(m[0], Load4<kVecS>(a.zf[0], k)),
                                 _mm_and_ps(m[1], Load4<kVecS>(a.zf[1], k))),
                       _mm_and_ps(m[2], Load4<kVecS>(a.zf[2], k)));
      } else {
        sc = Load4<kVecS>(a.scale[0], k);
        zf = Load4<kVecS>(a.zf[0], k);
      }
      const __m128 v = _mm_add_ps(_mm_div_ps(x, sc), Load4<kVecS>(a.off, k));
      const __m128 q = _mm_min_ps(_mm_max_ps(_mm_add_ps(RoundHalfEven4(v), zf), qmin), qmax);
      const __m128 dq = _mm_mul_ps(_mm_sub_ps(q, zf), sc);
      const __m128 e = _mm_sub_ps(x, dq);
      err = _mm_add_pd(err, _mm_add_pd(Square2(e), SquareHi2(e)));
      if (kEnc == WeightEncoding::kCodes) {
        const __m128i qi = _mm_cvttps_epi32(q);
        for (int b = 0; b < kB; ++b) {
          __m128i code = qi;
          if (kSplit) {
            const __m128i mb = _mm_castps_si128(m[b]);
            code = _mm_or_si128(_mm_and_si128(mb, qi),
                                _mm_andnot_si128(mb, Load4i<kVecS>(a.zi[b], k)));
          }
          const __m128i w16 = _mm_packs_epi32(code, code);
          const __m128i w8 = a.is_signed ? _mm_packs_epi16(w16, w16) : _mm_packus_epi16(w16, w16);
          const int32_t word = _mm_cvtsi128_si32(w8);
          std::memcpy(a.codes[b] + k, &word, 4);
        }
      } else if (kEnc == WeightEncoding::kDequantized) {
        for (int b = 0; b < kB; ++b) _mm_storeu_ps(a.floats[b] + k, _mm_and_ps(m[b], dq));
      } else {
        _mm_storeu_ps(a.floats[0] + k, dq);
      }
    }
    if (kPlain) {
      const __m128 sc = Load4<kVecS>(a.pscale, k), zf = Load4<kVecS>(a.pzf, k);
      const __m128 q = _mm_min_ps(
          _mm_max_ps(_mm_add_ps(RoundHalfEven4(_mm_div_ps(x, sc)), zf), qmin), qmax);
      const __m128 e = _mm_sub_ps(x, _mm_mul_ps(_mm_sub_ps(q, zf), sc));
      perr = _mm_add_pd(perr, _mm_add_pd(Square2(e), SquareHi2(e)));
    }
  }
  alignas(16) double t[2];
  _mm_store_pd(t, sig);
  acc.signal += t[0] + t[1];
  _mm_store_pd(t, err);
  acc.split_error += t[0] + t[1];
  _mm_store_pd(t, perr);
  acc.plain_error += t[0] + t[1];
#endif
  for (; k < args.len; ++k) QuantizeOne<kSplit, kVecT, kVecS, kEnc, kPlain, kSignal>(args, k, acc);
}


template <bool kSplit, WeightEncoding kEnc, bool kPlain, bool kSignal>
SegmentFn PickKernel4(bool vt, bool vs) {
  if (vt) {
    return vs ? &QuantizeSegment<kSplit, true, true, kEnc, kPlain, kSignal>
              : &QuantizeSegment<kSplit, true, false, kEnc, kPlain, kSignal>;
  }
  return vs ? &QuantizeSegment<kSplit, false, true, kEnc, kPlain, kSignal>
            : &QuantizeSegment<kSplit, false, false, kEnc, kPlain, kSignal>;
}
template <bool kSplit, WeightEncoding kEnc, bool kPlain>
SegmentFn PickKernel3(bool signal, bool vt, bool vs) {
  return signal ? PickKernel4<kSplit, kEnc, kPlain, true>(vt, vs)
                : PickKernel4<kSplit, kEnc, kPlain, false>(vt, vs);
}
template <bool kSplit, WeightEncoding kEnc>
SegmentFn PickKernel2(bool plain, bool signal, bool vt, bool vs) {
  return plain ? PickKernel3<kSplit, kEnc, true>(signal, vt, vs)
               : PickKernel3<kSplit, kEnc, false>(signal, vt, vs);
}
template <bool kSplit>
SegmentFn PickKernel1(WeightEncoding enc, bool plain, bool signal, bool vt, bool vs) {
  switch (enc) {
    case WeightEncoding::kCodes:
      return PickKernel2<kSplit, WeightEncoding::kCodes>(plain, signal, vt, vs);
    case WeightEncoding::kDequantized:
      return PickKernel2<kSplit, WeightEncoding::kDequantized>(plain, signal, vt, vs);
    case WeightEncoding::kDequantizedSum:
      return PickKernel2<kSplit, WeightEncoding::kDequantizedSum>(plain, signal, vt, vs);
    case WeightEncoding::kFloatSplit:
      return PickKernel2<kSplit, WeightEncoding::kFloatSplit>(plain, signal, vt, vs);
  }
  return nullptr;
}
}  // namespace

SegmentFn PickKernel(bool split, WeightEncoding enc, bool plain, bool signal, bool vt,
                     bool vs) {
  return split ? PickKernel1<true>(enc, plain, signal, vt, vs)
               : PickKernel1<false>(enc, plain, signal, vt, vs);
}

void PackStaging(const uint8_t* in, int64_t count, int storage_bits, uint8_t* out) {
  int64_t k = 0;
#if defined(__SSE2__)
  // 16 codes per step: nibbles / crumbs are merged inside 16- or 32-bit lanes, then the
  // lanes are narrowed to bytes.
  if (storage_bits == 4) {
    const __m128i lo = _mm_set1_epi16(0x000F), hi = _mm_set1_epi16(0x00F0);
    for (; k + 16 <= count; k += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + k));
      const __m128i t = _mm_or_si128(_mm_and_si128(v, lo), _mm_and_si128(_mm_srli_epi16(v, 4), hi));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + k / 2), _mm_packus_epi16(t, t));
    }
  } else {
    for (; k + 16 <= count; k += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + k));
      __m128i t = _mm_and_si128(v, _mm_set1_epi32(0x3));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 6), _mm_set1_epi32(0xC)));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 12), _mm_set1_epi32(0x30)));
      t = _mm_or_si128(t, _mm_and_si128(_mm_srli_epi32(v, 18), _mm_set1_epi32(0xC0)));
      const __m128i w16 = _mm_packs_epi32(t, t);
      const int32_t word = _mm_cvtsi128_si32(_mm_packus_epi16(w16, w16));
      std::memcpy(out + k / 4, &word, 4);
    }
  }
#endif
  if (storage_bits == 4) {
    for (; k + 2 <= count; k += 2) out[k / 2] = (in[k] & 0xF) | (in[k + 1] << 4);
    if (k < count) out[k / 2] = in[k] & 0xF;
  } else {
    for (; k + 4 <= count; k += 4) {
      out[k / 4] = (in[k] & 3) | ((in[k + 1] & 3) << 2) | ((in[k + 2] & 3) << 4) |
                   ((in[k + 3] & 3) << 6);
    }
    if (k < count) {
      uint8_t v = 0;
      for (int64_t j = k; j < count; ++j) v |= (in[j] & 3) << ((j - k) * 2);
      out[k / 4] = v;
    }
  }
}

namespace {

template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
void QuantizeRow(const RowArgs& a, Partial& acc) {
  constexpr int kPerByte = 8 / kBits;
  int64_t k = 0;
  // Scalar until the packed output is on a byte boundary.
  for (; k < a.len && (a.pos + k) % kPerByte != 0; ++k) {
    RowOne<kSplit, kVecT, kPlain, kSignal, kBits>(a, k, acc);
  }
#if defined(__SSE2__)
  // Everything the loop reads, in locals: the code stores may alias `a`, which would make
  // the compiler reload every pointer after each store.
  const float* const xp = a.x;
  const float* const t0 = a.t0;
  const float* const t1 = a.t1;
  const float* const s1 = a.scale[1];
  const float* const z1 = a.zf[1];
  const float* const s0 = kSplit ? a.scale_x[0] : a.scale[0];  // split: XOR differences
  const float* const s2 = a.scale_x[1];
  const float* const z0 = kSplit ? a.zf_x[0] : a.zf[0];
  const float* const z2 = a.zf_x[1];
  const __m128 t0b = _mm_set1_ps(t0[0]), t1b = _mm_set1_ps(t1[0]);  // !kVecT
  const float* const op = a.off;
  const float* const ps = a.pscale;
  const float* const pz = a.pzf;
  const uint8_t* zb[3] = {a.zb[0], a.zb[1], a.zb[2]};
  uint8_t* out[3] = {a.out[0], a.out[1], a.out[2]};
  const bool is_signed = a.is_signed;
  const int64_t len = a.len, pos = a.pos;
  __m128d sig0 = _mm_setzero_pd(), sig1 = sig0, err0 = sig0, err1 = sig0, perr0 = sig0,
          perr1 = sig0;
  const __m128 qmin = _mm_set1_ps(a.qmin), qmax = _mm_set1_ps(a.qmax);
  const __m128i all = _mm_set1_epi32(-1);
  // One group of 4: accumulates, returns the codes (int32) and the branch masks.
  auto group = [&](int64_t kk, __m128d& sig, __m128d& err, __m128d& perr, __m128i& qi,
                   __m128i& m0i, __m128i& m2i) SQ_ALWAYS_INLINE {
    const __m128 x = _mm_loadu_ps(xp + kk);
    if (kSignal) sig = _mm_add_pd(sig, _mm_add_pd(Square2(x), SquareHi2(x)));
    __m128 sc, zf;
    if (kSplit) {
      // Branch masks as ClusterOfF: lower if x <= t0, else upper if x >= t1 (disjoint).
      const __m128 m0 = _mm_cmple_ps(x, kVecT ? _mm_loadu_ps(t0 + kk) : t0b);
      const __m128 m2 = _mm_andnot_ps(m0, _mm_cmpge_ps(x, kVecT ? _mm_loadu_ps(t1 + kk) : t1b));
      // Middle branch's value, XOR-patched where another branch holds the element.
      sc = _mm_xor_ps(_mm_xor_ps(_mm_loadu_ps(s1 + kk), _mm_and_ps(m0, _mm_loadu_ps(s0 + kk))),
                      _mm_and_ps(m2, _mm_loadu_ps(s2 + kk)));
      zf = _mm_xor_ps(_mm_xor_ps(_mm_loadu_ps(z1 + kk), _mm_and_ps(m0, _mm_loadu_ps(z0 + kk))),
                      _mm_and_ps(m2, _mm_loadu_ps(z2 + kk)));
      m0i = _mm_castps_si128(m0);
      m2i = _mm_castps_si128(m2);
    } else {
      sc = _mm_loadu_ps(s0 + kk);
      zf = _mm_loadu_ps(z0 + kk);
    }
    const __m128 v = _mm_add_ps(_mm_div_ps(x, sc), _mm_loadu_ps(op + kk));
    const __m128 q =
        _mm_min_ps(_mm_max_ps(_mm_add_ps(RoundHalfEven4Bounded(v), zf), qmin), qmax);
    const __m128 e = _mm_sub_ps(x, _mm_mul_ps(_mm_sub_ps(q, zf), sc));
    err = _mm_add_pd(err, _mm_add_pd(Square2(e), SquareHi2(e)));
    qi = _mm_cvttps_epi32(q);
    if (kPlain) {
      const __m128 psc = _mm_loadu_ps(ps + kk), pzf = _mm_loadu_ps(pz + kk);
      const __m128 pq = _mm_min_ps(
          _mm_max_ps(_mm_add_ps(RoundHalfEven4Bounded(_mm_div_ps(x, psc)), pzf), qmin), qmax);
      const __m128 pe = _mm_sub_ps(x, _mm_mul_ps(_mm_sub_ps(pq, pzf), psc));
      perr = _mm_add_pd(perr, _mm_add_pd(Square2(pe), SquareHi2(pe)));
    }
  };
  for (; k + 16 <= len; k += 16) {
    // 16 codes: narrowed to 16 bits per half of 8 (few live registers), then to bytes.
    // Two accumulators per sum break the add dependency chain.
    __m128i qa, qb, m0a, m0b, m2a, m2b;
    group(k, sig0, err0, perr0, qa, m0a, m2a);
    group(k + 4, sig1, err1, perr1, qb, m0b, m2b);
    const __m128i w0 = _mm_packs_epi32(qa, qb);
    const __m128i m0w0 = kSplit ? _mm_packs_epi32(m0a, m0b) : all;
    const __m128i m2w0 = kSplit ? _mm_packs_epi32(m2a, m2b) : all;
    group(k + 8, sig0, err0, perr0, qa, m0a, m2a);
    group(k + 12, sig1, err1, perr1, qb, m0b, m2b);
    const __m128i w1 = _mm_packs_epi32(qa, qb);
    // The low 8 bits of each code (storage keeps the low kBits).
    const __m128i q8 = is_signed ? _mm_packs_epi16(w0, w1) : _mm_packus_epi16(w0, w1);
    __m128i mb[3];
    if (kSplit) {
      mb[0] = _mm_packs_epi16(m0w0, _mm_packs_epi32(m0a, m0b));
      mb[2] = _mm_packs_epi16(m2w0, _mm_packs_epi32(m2a, m2b));
      mb[1] = _mm_andnot_si128(_mm_or_si128(mb[0], mb[2]), all);
    }
    StoreCodes16<kSplit, kBits>(q8, mb, zb, k, out, (pos + k) / kPerByte);
  }
  alignas(16) double t[2];
  _mm_store_pd(t, _mm_add_pd(sig0, sig1));
  acc.signal += t[0] + t[1];
  _mm_store_pd(t, _mm_add_pd(err0, err1));
  acc.split_error += t[0] + t[1];
  _mm_store_pd(t, _mm_add_pd(perr0, perr1));
  acc.plain_error += t[0] + t[1];
#endif
  for (; k < a.len; ++k) RowOne<kSplit, kVecT, kPlain, kSignal, kBits>(a, k, acc);
}


struct Sse2RowFamily {
  template <bool kSplit, bool kVecT, bool kPlain, bool kSignal, int kBits>
  static void Fn(const RowArgs& a, Partial& acc) {
    QuantizeRow<kSplit, kVecT, kPlain, kSignal, kBits>(a, acc);
  }
};

}  // namespace

KernelIsa BestKernelIsa() {
  static const KernelIsa best = [] {
    const char* env = std::getenv("SQ_KERNEL_ISA");
    const std::string asked = env != nullptr ? env : "";
    if (asked == "scalar") return KernelIsa::kScalar;
    if (asked == "sse2") return KernelIsa::kSse2;
    if (PickRowAvx2(false, false, false, false, 4) != nullptr) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
      if (__builtin_cpu_supports("avx2")) return KernelIsa::kAvx2;
#endif
    }
    return KernelIsa::kSse2;
  }();
  return best;
}

const char* KernelIsaName(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kScalar: return "scalar";
    case KernelIsa::kSse2: return "sse2";
    case KernelIsa::kAvx2: return "avx2";
  }
  return "?";
}

RowFn PickRow(bool split, bool vec_t, bool plain, bool signal, int bits, KernelIsa isa) {
  if (isa == KernelIsa::kAvx2) {
    if (RowFn fn = PickRowAvx2(split, vec_t, plain, signal, bits)) return fn;
  }
  if (isa == KernelIsa::kScalar) return PickRowOf<ScalarRowFamily>(split, vec_t, plain, signal, bits);
  return PickRowOf<Sse2RowFamily>(split, vec_t, plain, signal, bits);
}

}  // namespace transform
}  // namespace sq
