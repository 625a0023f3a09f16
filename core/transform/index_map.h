// Index maps: a flat (row-major) element index of a weight -> the index of the slice that
// owns it (its (scale, zero point) in BranchParams order) or of its clustering unit, and a
// cursor that walks them in runs without a division per element. Shared by the fused
// transform (weight_transform.cc) and the re-encoders (encode.cc). Internal to the engine.
#ifndef SQ_CORE_TRANSFORM_INDEX_MAP_H_
#define SQ_CORE_TRANSFORM_INDEX_MAP_H_

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/options.h"

namespace sq {

// The flat index seen as [O, D, I] around one axis.
struct AxisSplit {
  int64_t O = 1, D = 1, I = 1;
};
inline AxisSplit SplitAround(const std::vector<int64_t>& shape, int axis) {
  AxisSplit s;
  for (int k = 0; k < static_cast<int>(shape.size()); ++k) {
    if (k < axis) s.O *= shape[k];
    if (k == axis) s.D = shape[k];
    if (k > axis) s.I *= shape[k];
  }
  return s;
}

enum class MapKind { kConst, kChannel, kBlock };
struct IndexMap {
  MapKind kind = MapKind::kConst;
  AxisSplit ax;
  int64_t block = 1, nb = 1;  // kBlock: block size, blocks along the axis
  int64_t Count() const {
    switch (kind) {
      case MapKind::kConst: return 1;
      case MapKind::kChannel: return ax.D;
      case MapKind::kBlock: return ax.O * nb * ax.I;
    }
    return 1;
  }
  // Conservative [lo, hi) of the values over the elements [e0, e1), e0 < e1.
  std::pair<int64_t, int64_t> Range(int64_t e0, int64_t e1) const {
    if (kind == MapKind::kConst) return {0, 1};
    const int64_t DI = ax.D * ax.I;
    const int64_t o0 = e0 / DI, d0 = (e0 / ax.I) % ax.D;
    const int64_t o1 = (e1 - 1) / DI, d1 = ((e1 - 1) / ax.I) % ax.D;
    if (kind == MapKind::kChannel) {
      if (o0 == o1) return {d0, d1 + 1};
      return {0, ax.D};
    }
    return {(o0 * nb + d0 / block) * ax.I, (o1 * nb + d1 / block) * ax.I + ax.I};
  }
};

// Map value of one element (slow path: divisions).
inline int64_t ValueOf(const IndexMap& m, int64_t e) {
  if (m.kind == MapKind::kConst) return 0;
  const int64_t i = e % m.ax.I, d = (e / m.ax.I) % m.ax.D, o = e / (m.ax.D * m.ax.I);
  if (m.kind == MapKind::kChannel) return d;
  return (o * m.nb + d / m.block) * m.ax.I + i;
}

// A run of consecutive elements whose map value is constant (stride 0) or increases by
// one per element (stride 1).
struct Run {
  int64_t value;
  int64_t length;
  bool stride;
};

// Walks an IndexMap incrementally (no divisions per run).
class Cursor {
 public:
  Cursor(const IndexMap& m, int64_t e) : m_(m) {
    if (m.kind == MapKind::kConst) return;
    o_ = e / (m.ax.D * m.ax.I);
    d_ = (e / m.ax.I) % m.ax.D;
    i_ = e % m.ax.I;
  }
  Run Current() const {
    const AxisSplit& a = m_.ax;
    switch (m_.kind) {
      case MapKind::kConst:
        return {0, std::numeric_limits<int64_t>::max(), false};
      case MapKind::kChannel:
        if (a.I > 1) return {d_, a.I - i_, false};
        return {d_, a.D - d_, true};
      case MapKind::kBlock:
        if (a.I > 1) return {(o_ * m_.nb + d_ / m_.block) * a.I + i_, a.I - i_, true};
        return {o_ * m_.nb + d_ / m_.block,
                std::min(a.D - d_, m_.block - d_ % m_.block), false};
    }
    return {0, 0, false};
  }
  void Advance(int64_t len) {
    if (m_.kind == MapKind::kConst) return;
    if (m_.ax.I > 1) {
      i_ += len;
      if (i_ < m_.ax.I) return;
      i_ = 0;
      len = 1;
    }
    d_ += len;
    if (d_ == m_.ax.D) {
      d_ = 0;
      ++o_;
    }
  }

 private:
  const IndexMap& m_;
  int64_t o_ = 0, d_ = 0, i_ = 0;
};

// Calls fn(e, len, slice_run, unit_run) over [e0, e1) in maximal runs of both maps.
template <typename Fn>
void ForEachSegment(const IndexMap& slices, const IndexMap& units, int64_t e0, int64_t e1,
                    Fn&& fn) {
  Cursor cs(slices, e0), cu(units, e0);
  for (int64_t e = e0; e < e1;) {
    const Run rs = cs.Current(), ru = cu.Current();
    const int64_t len = std::min({rs.length, ru.length, e1 - e});
    fn(e, len, Run{rs.value, len, rs.stride}, Run{ru.value, len, ru.stride});
    cs.Advance(len);
    cu.Advance(len);
    e += len;
  }
}

// The slice map of a weight quantized with `granularity`: 0 everywhere (tensor), the
// channel coordinate (channel), or the row-major index into the weight's shape with the
// reduction dim cut into blocks (block) -- DequantizeLinear's parameter order.
inline IndexMap ParamIndexMap(const std::vector<int64_t>& shape, Granularity granularity,
                              int channel_axis, int reduction_axis, int block_size) {
  IndexMap m;
  if (granularity == Granularity::kChannel) {
    m.kind = MapKind::kChannel;
    m.ax = SplitAround(shape, channel_axis);
  } else if (granularity == Granularity::kBlock) {
    m.kind = MapKind::kBlock;
    m.ax = SplitAround(shape, reduction_axis);
    m.block = block_size;
    m.nb = (m.ax.D + block_size - 1) / block_size;
  }
  return m;
}

}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_INDEX_MAP_H_
