// Round half to even without SSE4.1's roundps: (v + 1.5·2^23) − 1.5·2^23 is exact for
// |v| < 2^22 under the default rounding mode. The clamped forms first limit |v| to 2^22,
// which changes nothing once codes are saturated (they span at most 256 levels), so
// saturate(round(x / s) + z) computed with them equals QuantizeValue's nearbyint form bit
// for bit. Shared by the fused transform and the re-encoders so that both round alike.
#ifndef SQ_CORE_TRANSFORM_ROUND_H_
#define SQ_CORE_TRANSFORM_ROUND_H_

#include <algorithm>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace sq {

inline constexpr float kRoundClamp = 4194304.0f;   // 2^22
inline constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23

inline float RoundHalfEven(float v) {
  v = std::min(std::max(v, -kRoundClamp), kRoundClamp);
  return (v + kRoundMagic) - kRoundMagic;
}

#if defined(__SSE2__)
inline __m128 RoundHalfEven4(__m128 v) {
  v = _mm_min_ps(_mm_max_ps(v, _mm_set1_ps(-kRoundClamp)), _mm_set1_ps(kRoundClamp));
  const __m128 magic = _mm_set1_ps(kRoundMagic);
  return _mm_sub_ps(_mm_add_ps(v, magic), magic);
}
// RoundHalfEven4 without the clamp: the caller guarantees |v| < 2^22.
inline __m128 RoundHalfEven4Bounded(__m128 v) {
  const __m128 magic = _mm_set1_ps(kRoundMagic);
  return _mm_sub_ps(_mm_add_ps(v, magic), magic);
}
#endif

}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_ROUND_H_
