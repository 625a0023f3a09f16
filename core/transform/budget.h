// Mixed precision under a size budget (`--bpw-budget B`): which settings each layer gets
// so that the quantized layers' stored bits per weight stay within B while the model
// loses as little as possible.
//
// Data-free sensitivity proxy: a layer's relative weight error, error energy / signal
// energy (1 / weight SQNR). For y = W x with inputs uncorrelated with the error, it is
// the layer output's relative error, whatever the layer's size. Two criteria, in order:
//  1. the worst layer: the smallest bound on every layer's relative error that the budget
//     allows (a network is only as good as its weakest layer: one layer at 2 bits can
//     ruin a model whose other layers are near lossless, which a sum hides);
//  2. then the sum: to first order the relative errors of the layers a signal passes
//     through add up, so what budget is left goes where it lowers the sum most per byte.
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
  bool per_tensor = false;  // tensor granularity instead of the layer's own
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

// The choice with bytes * 8 <= budget * elements: the smallest worst-layer bound that
// fits (each layer's cheapest candidate within it), then a greedy ascent that takes, at
// each step, the change with the largest error reduction per extra byte that still fits
// (changes that cost nothing first). InvalidArgument, naming the smallest achievable bits
// per weight, when even the cheapest candidates exceed the budget.
absl::StatusOr<BudgetChoice> AllocateUnderBudget(const std::vector<BudgetLayer>& layers,
                                                 double bits_per_weight_budget);

}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_BUDGET_H_
