// MB/s of FP32 input through TransformWeight on a 2048 x 8192 student-t tensor (a Llama
// MatMul weight [K, N], channel axis 1), 1 vs 2 threads, for the common configurations.
#include <chrono>
#include <ctime>
#include <cstdio>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "core/weight_transform.h"

namespace {

sq::ParallelFor Threaded(int threads) {
  return [threads](int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (threads <= 1) return fn(0, n);
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) {
      const int64_t b = n * t / threads, e = n * (t + 1) / threads;
      if (b < e) pool.emplace_back([&fn, b, e] { fn(b, e); });
    }
    fn(0, n / threads);
    for (auto& th : pool) th.join();
  };
}

}  // namespace

int main() {
  const int64_t K = 2048, N = 8192;
  std::vector<float> w(K * N);
  std::mt19937_64 rng(1);
  std::student_t_distribution<float> t(3.0f);
  for (float& v : w) v = 0.02f * t(rng);
  struct Config {
    const char* name;
    sq::TransformConfig cfg;
  };
  std::vector<Config> configs;
  sq::TransformConfig c;
  c.granularity = sq::Granularity::kChannel;
  c.storage_bits = 4;
  configs.push_back({"int4 per-channel codes", c});
  c.granularity = sq::Granularity::kBlock;
  configs.push_back({"int4 block32 codes", c});
  c.granularity = sq::Granularity::kChannel;
  c.encoding = sq::WeightEncoding::kDequantizedSum;
  configs.push_back({"int4 per-channel fake folded", c});
  c.encoding = sq::WeightEncoding::kCodes;
  c.split = false;
  configs.push_back({"int4 per-channel plain", c});
  for (const Config& cf : configs) {
    for (int threads : {1, 2}) {
      size_t bytes = 0;
      auto sink = [&](int, int64_t, const uint8_t*, size_t n) { bytes += n; };
      double best = 1e30, best_cpu = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::clock_t c0 = std::clock();
        auto r = sq::TransformWeight({w.data(), {K, N}, 1, 0}, cf.cfg, sink, Threaded(threads));
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!r.ok()) {
          std::printf("error: %s\n", r.status().ToString().c_str());
          return 1;
        }
        best = std::min(best, s);
        // Process CPU time: robust on a shared, loaded machine.
        best_cpu = std::min(best_cpu, static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
      }
      std::printf("%-32s threads=%d  %8.1f MB/s wall  %8.1f MB/s per CPU-second\n",
                  cf.name, threads, K * N * 4 / best / 1e6, K * N * 4 / best_cpu / 1e6);
    }
  }
  return 0;
}
