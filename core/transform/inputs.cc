#include "core/transform/inputs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "core/transform/common.h"

namespace sq {
namespace transform {

absl::Status ValidateInputs(const WeightView& w, const TransformConfig& c) {
  if (w.shape.empty()) return absl::InvalidArgumentError("weight: rank must be >= 1");
  const int rank = static_cast<int>(w.shape.size());
  int64_t n = 1;
  for (int64_t d : w.shape) {
    if (d < 0) return absl::InvalidArgumentError("weight: negative dimension");
    if (d > 0 && n > (int64_t{1} << 62) / d) {
      return absl::InvalidArgumentError("weight: too many elements");
    }
    n *= d;
  }
  if (w.channel_axis < 0 || w.channel_axis >= rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight: channel_axis ", w.channel_axis, " out of range for rank ", rank));
  }
  if (c.granularity == Granularity::kBlock &&
      (w.reduction_axis < 0 || w.reduction_axis >= rank)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight: reduction_axis ", w.reduction_axis, " out of range for rank ", rank));
  }
  if (n > 0 && w.data == nullptr) return absl::InvalidArgumentError("weight: null data");
  if (c.spec.bits < 2 || c.spec.bits > 8) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be in 2..8, got ", c.spec.bits));
  }
  if (c.granularity == Granularity::kBlock && c.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("block_size must be >= 1, got ", c.block_size));
  }
  if (c.encoding == WeightEncoding::kCodes) {
    if (c.storage_bits != 8 && c.storage_bits != 4 && c.storage_bits != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage_bits must be 8, 4 or 2, got ", c.storage_bits));
    }
    if (c.storage_bits < c.spec.bits) {
      return absl::InvalidArgumentError(absl::StrCat(
          "storage_bits ", c.storage_bits, " < bits ", c.spec.bits));
    }
  }
  return absl::OkStatus();
}

bool AnyNonFinite(const float* x, int64_t len) {
  uint32_t any = 0;
  int64_t k = 0;
#if defined(__SSE2__)
  const __m128i exp_mask = _mm_set1_epi32(0x7F800000);
  __m128i acc = _mm_setzero_si128();
  for (; k + 4 <= len; k += 4) {
    const __m128i v =
        _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + k)), exp_mask);
    acc = _mm_or_si128(acc, _mm_cmpeq_epi32(v, exp_mask));
  }
  any = static_cast<uint32_t>(_mm_movemask_epi8(acc));
#endif
  for (; k < len; ++k) {
    uint32_t bits;
    std::memcpy(&bits, x + k, 4);
    any |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
  }
  return any != 0;
}

int64_t FirstNonFinite(const float* data, int64_t n, const ParallelFor& parallel_for) {
  const int64_t chunks = (n + kSubChunk - 1) / kSubChunk;
  std::vector<int64_t> first(static_cast<size_t>(chunks), -1);
  auto fn = [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      const int64_t b = ch * kSubChunk, e = std::min(n, b + kSubChunk);
      if (!AnyNonFinite(data + b, e - b)) continue;
      for (int64_t k = b; k < e; ++k) {
        if (!std::isfinite(data[k])) {
          first[ch] = k;
          break;
        }
      }
    }
  };
  if (chunks == 0) return -1;
  if (parallel_for) {
    parallel_for(chunks, fn);
  } else {
    fn(0, chunks);
  }
  for (int64_t f : first) {
    if (f >= 0) return f;
  }
  return -1;
}

absl::Status NonFiniteError(const float* data, int64_t n, const ParallelFor& parallel_for) {
  return absl::InvalidArgumentError(absl::StrCat("weight: non-finite value at element ",
                                                 FirstNonFinite(data, n, parallel_for)));
}

IndexMap SliceMap(const WeightView& w, const TransformConfig& c) {
  return ParamIndexMap(w.shape, c.granularity, w.channel_axis, w.reduction_axis, c.block_size);
}

IndexMap UnitMap(const WeightView& w, const TransformConfig& c) {
  IndexMap m;
  if (c.split && c.cluster_per_channel) {
    m.kind = MapKind::kChannel;
    m.ax = SplitAround(w.shape, w.channel_axis);
  }
  return m;
}

BranchParams ParamsLayout(const WeightView& w, const TransformConfig& c) {
  BranchParams p;
  if (c.granularity == Granularity::kChannel) {
    p.shape = {w.shape[w.channel_axis]};
    p.axis = w.channel_axis;
  } else if (c.granularity == Granularity::kBlock) {
    p.shape = w.shape;
    p.shape[w.reduction_axis] = (w.shape[w.reduction_axis] + c.block_size - 1) / c.block_size;
    p.axis = w.reduction_axis;
    p.block_size = c.block_size;
  }
  return p;
}

int64_t EncodedBytes(int64_t n, const TransformConfig& c) {
  return c.encoding == WeightEncoding::kCodes ? PackedBytes(n, c.storage_bits) : n * 4;
}

}  // namespace transform
}  // namespace sq
