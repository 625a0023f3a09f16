// MB/s of FP32 input through TransformWeight on a K x N student-t tensor (a Llama MatMul
// weight [K, N], channel axis 1, reduction axis 0), 1 vs 2 threads, for the common
// configurations. Reports the median over repetitions of wall time and of process CPU
// time (CPU time is the robust figure on a shared, loaded machine).
//
// Usage: numerics_bench [K N [reps [filter]]]
//   default 2048 8192 5; the scale benchmark's largest weight is 2048 128256.
//   filter: substring of the configuration name ("split", "plain", "block", ...).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/weight_transform.h"

namespace {

// Like the engine's pool: fixed sub-ranges of [0, n) handed to `threads` workers.
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

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t K = argc > 2 ? std::atoll(argv[1]) : 2048;
  const int64_t N = argc > 2 ? std::atoll(argv[2]) : 8192;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 5;
  const std::string filter = argc > 4 ? argv[4] : "";
  std::vector<float> w(static_cast<size_t>(K * N));
  {
    std::mt19937_64 rng(1);
    std::student_t_distribution<float> t(3.0f);
    for (float& v : w) v = 0.02f * t(rng);
  }
  struct Config {
    const char* name;
    sq::TransformConfig cfg;
  };
  std::vector<Config> configs;
  sq::TransformConfig c;  // the scale benchmark: INT4 asymmetric, per channel, UINT4 codes
  c.spec.bits = 4;
  c.spec.symmetric = false;
  c.granularity = sq::Granularity::kChannel;
  c.storage_bits = 4;
  c.encoding = sq::WeightEncoding::kCodes;
  c.compute_plain_error = true;
  configs.push_back({"int4 channel codes split", c});
  c.split = false;
  configs.push_back({"int4 channel codes plain", c});
  c.split = true;
  c.granularity = sq::Granularity::kBlock;
  configs.push_back({"int4 block32 codes split", c});
  c.granularity = sq::Granularity::kChannel;
  c.encoding = sq::WeightEncoding::kDequantizedSum;
  configs.push_back({"int4 channel fake-folded split", c});
  std::printf("tensor %lld x %lld (%.0f MB FP32), median of %d\n", static_cast<long long>(K),
              static_cast<long long>(N), K * N * 4 / 1e6, reps);
  for (const Config& cf : configs) {
    if (!filter.empty() && std::strstr(cf.name, filter.c_str()) == nullptr) continue;
    for (int threads : {1, 2}) {
      size_t bytes = 0;
      auto sink = [&](int, int64_t, const uint8_t*, size_t n) { bytes += n; };
      std::vector<double> walls, cpus;
      for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::clock_t c0 = std::clock();
        auto r = sq::TransformWeight({w.data(), {K, N}, 1, 0}, cf.cfg, sink, Threaded(threads));
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!r.ok()) {
          std::printf("error: %s\n", r.status().ToString().c_str());
          return 1;
        }
        walls.push_back(s);
        cpus.push_back(static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
      }
      const double mb = K * N * 4 / 1e6;
      std::printf("%-32s threads=%d  %8.1f MB/s wall  %8.1f MB/s per CPU-second\n", cf.name,
                  threads, mb / Median(walls), mb / Median(cpus));
      std::fflush(stdout);
    }
  }
  return 0;
}
