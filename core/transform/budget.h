// Mixed precision under a size budget (`--bpw-budget B`): which settings each layer gets
// so that the quantized layers' stored bits per weight stay within B while the model
// loses as little as possible.
//
// Data-free sensitivity proxy: a layer's relative weight error, error energy / signal
// energy (1 / weight SQNR). For y = W x with inputs uncorrelated with the error, it is
// the layer output's relative error, and to first order the relative errors of the
// layers a signal passes through add up. So the allocator minimises the sum over layers
// of the relative weight error, whatever a layer's size: a small layer is as sensitive as
// a large one, and cheaper to keep precise.
//
// Pure function, thread-safe, deterministic (ties go to the earlier layer and candidate).
#ifndef SQ_CORE_TRANSFORM_BUDGET_H_
#define SQ_CORE_TRANSFORM_BUDGET_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace sq {

struct BudgetCandidate {
  int bits = 4;
  bool split = false;
  int64_t bytes = 0;       // what the layer stores with these settings (codes, ids, params)
  double rel_error = 0;    // error energy / signal energy
};

struct BudgetLayer {
  int64_t elements = 0;
  std::vector<BudgetCandidate> candidates;  // at least one; a fixed layer has exactly one
};

struct BudgetChoice {
  std::vector<int> candidate;  // per layer, an index into its candidates
  int64_t bytes = 0;           // total stored bytes of the choice
  double bits_per_weight = 0;  // bytes * 8 / elements
  double rel_error = 0;        // the proxy's total
};

// The choice minimising the total relative error with bytes * 8 <= budget * elements:
// from every layer's cheapest candidate, a greedy ascent that takes, at each step, the
// change with the largest error reduction per extra byte that still fits (changes that
// cost nothing first). InvalidArgument, naming the smallest achievable bits per weight,
// when even the cheapest candidates exceed the budget.
absl::StatusOr<BudgetChoice> AllocateUnderBudget(const std::vector<BudgetLayer>& layers,
                                                 double bits_per_weight_budget);

}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_BUDGET_H_
