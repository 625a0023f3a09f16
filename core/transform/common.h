// Shared internals of the fused weight transform (core/weight_transform.cc and the stages
// under core/transform/): the fixed work unit every pass is cut into, the emitted piece
// size, the inline `parallel_for` runner and the element -> branch rule.
//
// Determinism: kSubChunk is independent of the thread count; every pass cuts its work in
// these chunks and reduces them in chunk order (or order-independently), which is what
// makes TransformWeight's output the same for any `parallel_for`.
// Internal to the engine.
#ifndef SQ_CORE_TRANSFORM_COMMON_H_
#define SQ_CORE_TRANSFORM_COMMON_H_

#include <cstdint>
#include <functional>
#include <limits>

#include "core/weight_transform.h"

namespace sq {
namespace transform {

inline constexpr float kInfF = std::numeric_limits<float>::infinity();
// Fixed work unit of every pass (elements). A multiple of 4 so packed pieces start on
// byte boundaries; independent of the thread count, which makes results reproducible.
inline constexpr int64_t kSubChunk = 1 << 15;
// Elements per emitted piece: 4 MiB of FP32 per branch at most.
inline constexpr int64_t kPieceElements = 1 << 20;

// Runs fn over [0, n) with `parallel_for` (inline when null); nothing when n <= 0.
inline void RunParallel(int64_t n, const ParallelFor& parallel_for,
                        const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (parallel_for) {
    parallel_for(n, fn);
  } else {
    fn(0, n);
  }
}

// Branch of x under float thresholds: lower (0) if x <= t0, upper (2) if x >= t1, else
// middle (1).
inline int ClusterOfF(float x, float t0, float t1) {
  return x <= t0 ? 0 : (x >= t1 ? 2 : 1);
}

}  // namespace transform
}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_COMMON_H_
