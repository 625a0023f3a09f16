// A parallel-for over `threads` std::threads (fn(begin, end) on contiguous pieces of [0, n)),
// for tests of kernels that take one (ParallelFor in weight_transform.h, KMeansParallelFor
// in kmeans.h: the same type).
#ifndef SQ_TESTS_SUPPORT_THREADED_FOR_H_
#define SQ_TESTS_SUPPORT_THREADED_FOR_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace sq::testing {

inline std::function<void(int64_t, const std::function<void(int64_t, int64_t)>&)> ThreadedFor(int threads) {
  return [threads](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      const int64_t b = n * t / threads, e = n * (t + 1) / threads;
      if (b < e) pool.emplace_back([&fn, b, e] { fn(b, e); });
    }
    for (auto& th : pool) th.join();
  };
}

}  // namespace sq::testing

#endif  // SQ_TESTS_SUPPORT_THREADED_FOR_H_
