// MB/s of FP32 input through TransformWeight on a K x N student-t tensor (a Llama MatMul
// weight [K, N], channel axis 1, reduction axis 0), 1 vs 2 threads, for the common
// configurations. Reports the median over repetitions of wall time and of process CPU
// time (CPU time is the robust figure on a shared, loaded machine).
//
// Usage: numerics_bench [K N [reps [filter]]]
//   default 2048 8192 5; the scale benchmark's largest weight is 2048 128256.
//   filter: substring of the configuration name ("split", "plain", "block", ...).
#include <algorithm>
#include <array>
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

#include "core/quantizer.h"
#include "core/transform/encode.h"
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
  {
    // The engine's default (--boundaries quant): quantization-aware cuts per channel.
    sq::TransformConfig q = c;
    q.quant_aware_boundaries = true;
    q.cluster_per_channel = true;
    configs.push_back({"int4 channel codes split quant", q});
    // The same cuts with balanced rounding's offsets pass (the engine applies it to split
    // convolutions; measured here on this shape for its cost).
    q.balanced_rounding = true;
    configs.push_back({"int4 channel codes split quant balanced", q});
  }
  c.split = false;
  configs.push_back({"int4 channel codes plain", c});
  c.balanced_rounding = true;
  configs.push_back({"int4 channel codes plain balanced", c});
  c.balanced_rounding = false;
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
  // The ort-cpu re-encoders on the split codes of the same tensor (1 thread): MatMulNBits
  // per branch and the outer8 re-quantization, fast and reference.
  if (filter.empty() || filter == "encode") {
    sq::TransformConfig q = configs[0].cfg;
    q.quant_aware_boundaries = true;
    q.cluster_per_channel = true;
    std::array<std::vector<uint8_t>, 3> codes;
    for (auto& c : codes) c.assign(static_cast<size_t>(sq::PackedBytes(K * N, 4)), 0);
    auto r = sq::TransformWeight({w.data(), {K, N}, 1, 0}, q,
                                 [&](int b, int64_t off, const uint8_t* d, size_t n) {
                                   std::memcpy(codes[b].data() + off, d, n);
                                 });
    if (!r.ok() || r->num_branches != 3) {
      std::printf("error: %s\n", r.ok() ? "not split" : r.status().ToString().c_str());
      return 1;
    }
    const sq::ParamLayout layout{{K, N}, sq::Granularity::kChannel, 1, 0, 32};
    const std::vector<const uint8_t*> ptrs = {codes[0].data(), codes[1].data(), codes[2].data()};
    auto time_it = [&](const char* name, const std::function<void()>& fn) {
      std::vector<double> walls;
      for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        fn();
        walls.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("%-32s threads=1  %8.1f MB/s of FP32 weight  (%.2f ns per weight)\n", name,
                  K * N * 4 / 1e6 / Median(walls), Median(walls) * 1e9 / (K * N));
      std::fflush(stdout);
    };
    time_it("encode matmulnbits 4-bit", [&] {
      (void)sq::EncodeMatMulNBits(codes[1].data(), r->params[1], layout, q.spec, 4);
    });
    time_it("encode matmulnbits 4-bit ref", [&] {
      (void)sq::EncodeMatMulNBitsReference(codes[1].data(), r->params[1], layout, q.spec, 4);
    });
    auto outer = sq::QuantizeOuterAt8(w.data(), ptrs, *r, layout, false, 4);
    time_it("encode matmulnbits 8-bit", [&] {
      (void)sq::EncodeMatMulNBits(outer->codes.data(), outer->params, layout, {8, false}, 8);
    });
    time_it("encode matmulnbits 8-bit ref", [&] {
      (void)sq::EncodeMatMulNBitsReference(outer->codes.data(), outer->params, layout, {8, false}, 8);
    });
    time_it("encode outer8", [&] {
      (void)sq::QuantizeOuterAt8(w.data(), ptrs, *r, layout, false, 4);
    });
    time_it("encode outer8 ref", [&] {
      (void)sq::QuantizeOuterAt8Reference(w.data(), ptrs, *r, layout, false, 4);
    });
  }
  return 0;
}
