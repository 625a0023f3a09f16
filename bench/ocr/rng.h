// Deterministic PRNG for the OCR benchmark: splitmix64, plus the few derived draws the
// renderer needs. No std:: distributions (their output differs between standard libraries).
#ifndef SQ_BENCH_OCR_RNG_H_
#define SQ_BENCH_OCR_RNG_H_

#include <cstdint>

namespace sq_bench {

inline uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // A stream for item `index` of the set with `seed`: independent of the set size, so a
  // 300-line set is a prefix of a 1000-line set with the same seed.
  static Rng ForItem(uint64_t seed, uint64_t stream, uint64_t index) {
    uint64_t s = seed ^ (stream * 0xD1B54A32D192ED03ULL);
    uint64_t mix = SplitMix64(s) ^ (index * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL);
    return Rng(SplitMix64(mix));
  }
  uint64_t Next() { return SplitMix64(state_); }
  // Uniform in [0, 1) with 53 bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * (1.0 / 9007199254740992.0); }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  // Uniform integer in [lo, hi] (inclusive); the modulo bias is negligible for our ranges.
  int Int(int lo, int hi) {
    return lo + static_cast<int>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }
  bool Chance(double p) { return Uniform() < p; }
  // Approximately standard normal: Irwin-Hall sum of 12 uniforms minus 6 (no libm calls,
  // so bit-identical everywhere).
  double Normal() {
    double s = 0;
    for (int i = 0; i < 12; ++i) s += Uniform();
    return s - 6.0;
  }

 private:
  uint64_t state_;
};

}  // namespace sq_bench

#endif  // SQ_BENCH_OCR_RNG_H_
