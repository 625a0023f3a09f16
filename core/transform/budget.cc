#include "core/transform/budget.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace sq {

absl::StatusOr<BudgetChoice> AllocateUnderBudget(const std::vector<BudgetLayer>& layers,
                                                 double bits_per_weight_budget) {
  BudgetChoice out;
  int64_t elements = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& cands = layers[l].candidates;
    if (cands.empty()) return absl::InternalError("a budget layer without candidates");
    // Cheapest first; of equal cost, the more accurate.
    int best = 0;
    for (int c = 1; c < static_cast<int>(cands.size()); ++c) {
      if (cands[c].bytes < cands[best].bytes ||
          (cands[c].bytes == cands[best].bytes && cands[c].rel_error < cands[best].rel_error)) {
        best = c;
      }
    }
    out.candidate.push_back(best);
    out.bytes += cands[best].bytes;
    elements += layers[l].elements;
  }
  if (elements <= 0) return absl::InvalidArgumentError("no weights to fit into a budget");
  const double capacity_bits = bits_per_weight_budget * static_cast<double>(elements);
  if (static_cast<double>(out.bytes) * 8 > capacity_bits) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--bpw-budget %.3g cannot be met: the smallest these layers can be stored in is "
        "%.3f bits per weight with this target",
        bits_per_weight_budget, static_cast<double>(out.bytes) * 8 / elements));
  }
  const int64_t capacity = static_cast<int64_t>(capacity_bits / 8);
  // 1. The smallest bound on the worst layer's error that fits, by bisection over the
  // candidates' errors: under a bound, each layer takes its cheapest candidate within it
  // (its most accurate one when none is).
  auto within = [&](double bound, std::vector<int>* pick) {
    int64_t bytes = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& cands = layers[l].candidates;
      int best = -1, most_accurate = 0;
      for (int c = 0; c < static_cast<int>(cands.size()); ++c) {
        if (cands[c].rel_error < cands[most_accurate].rel_error) most_accurate = c;
        if (cands[c].rel_error <= bound &&
            (best < 0 || cands[c].bytes < cands[best].bytes ||
             (cands[c].bytes == cands[best].bytes && cands[c].rel_error < cands[best].rel_error))) {
          best = c;
        }
      }
      (*pick)[l] = best >= 0 ? best : most_accurate;
      bytes += cands[(*pick)[l]].bytes;
    }
    return bytes;
  };
  std::vector<double> bounds;
  for (const auto& l : layers) {
    for (const auto& c : l.candidates) bounds.push_back(c.rel_error);
  }
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  size_t lo = 0, hi = bounds.size();  // the answer is in [lo, hi); hi = none fits
  std::vector<int> pick(layers.size());
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (within(bounds[mid], &pick) <= capacity) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  if (lo < bounds.size()) {
    out.bytes = within(bounds[lo], &pick);
    out.candidate = pick;
  }
  // 2. Greedy ascent on the sum.
  for (;;) {
    int best_l = -1, best_c = -1;
    double best_rate = 0;
    bool best_free = false;
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& cands = layers[l].candidates;
      const BudgetCandidate& cur = cands[out.candidate[l]];
      for (int c = 0; c < static_cast<int>(cands.size()); ++c) {
        const double gain = cur.rel_error - cands[c].rel_error;
        const int64_t extra = cands[c].bytes - cur.bytes;
        if (gain <= 0 || out.bytes + extra > capacity) continue;
        if (extra <= 0) {
          // Better and no larger: take the largest such gain before any paid change.
          if (!best_free || gain > best_rate) {
            best_free = true;
            best_rate = gain;
            best_l = static_cast<int>(l);
            best_c = c;
          }
          continue;
        }
        const double rate = gain / static_cast<double>(extra);
        if (!best_free && rate > best_rate) {
          best_rate = rate;
          best_l = static_cast<int>(l);
          best_c = c;
        }
      }
    }
    if (best_l < 0) break;
    const auto& cands = layers[best_l].candidates;
    out.bytes += cands[best_c].bytes - cands[out.candidate[best_l]].bytes;
    out.candidate[best_l] = best_c;
  }
  for (size_t l = 0; l < layers.size(); ++l) out.rel_error += layers[l].candidates[out.candidate[l]].rel_error;
  out.bits_per_weight = static_cast<double>(out.bytes) * 8 / static_cast<double>(elements);
  return out;
}

}  // namespace sq
