// Batched constant MatMul weights, unstacked into 2-D layers (#15).
//
// MatMul(X, W) with a constant W of shape [1, ..., 1, B, K, N] computes B matrix products,
// one per slice of X along its axis -3 (or all with the same 2-D X). sq's layers are 2-D,
// so each such node becomes B MatMuls on W's matrices, which then get their own clusters
// and ranges like any 2-D layer:
//
//   X (rank >= 3) ─ Split(axis -3, B × 1) ─┬─ MatMul(·, W_0) ─┐
//                                          ├─ ...             ├─ Concat(axis -3) ─ Y
//                                          └─ MatMul(·, W_B-1)┘
//   X (rank 2)    ─ MatMul(X, W_b) ─ Unsqueeze ─ Concat(axis -3) ─ Y
//
// (plus an Unsqueeze when W has more leading 1s than X has dimensions). The function is
// unchanged in FP32: each product is the same arithmetic on the same values. Nodes and
// values are added in the model's (already converted) opset's form.
//
// A node is left as it is (discovery then reports the weight's rank as the reason) when W
// is not a FLOAT initializer of the main graph used by this node alone, is a graph input,
// has leading dimensions other than 1, when X's rank is unknown or below 2, when the node is
// excluded by the options, or when a matrix has fewer than min_weight_elements elements.
#ifndef SQ_CORE_UNSTACK_H_
#define SQ_CORE_UNSTACK_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_io.h"
#include "core/options.h"

namespace sq {

struct UnstackedWeight {
  std::string node;    // the MatMul's name
  std::string weight;  // the batched initializer, now gone
  int matrices = 0;    // B: the 2-D layers it became ("<weight>/m<b>", nodes "<node>/m<b>")
};

// Rewrites `model`'s main graph in place. Errors only from reading a weight
// (ReadFloatTensor) and an invalid exclusion regex.
absl::StatusOr<std::vector<UnstackedWeight>> UnstackBatchedMatMuls(LoadedModel* model,
                                                                  const QuantizeOptions& options);

}  // namespace sq

#endif  // SQ_CORE_UNSTACK_H_
