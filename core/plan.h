// Stage "plan" of the engine: for every selected layer, the settings it is quantized with
// (global options, a --layer override, or what --bpw-budget chose), whether it is split
// (for --split auto, measured by a dry run of the transform), and its output tensors and
// graph edits (GraphEditor::PlanGroup), applied to the model's graph.
#ifndef SQ_CORE_PLAN_H_
#define SQ_CORE_PLAN_H_

#include <vector>

#include "absl/status/statusor.h"
#include "core/layers.h"
#include "core/model_io.h"
#include "core/options.h"
#include "core/report.h"
#include "core/rewrite.h"
#include "core/weight_transform.h"

namespace sq {

// Worker threads for `options` (options.threads, or every core when 0).
int EffectiveThreads(const QuantizeOptions& options);

// One GroupPlan per selected group of `groups`, planned and applied to the graph through
// `editor` (on the model's proto), which must outlive the transform: it keeps the weights
// it takes out of the graph alive for it. Under --bpw-budget, fills the report's
// sensitivity listing and each plan's split_decision.
// Errors: InvalidArgument when nothing is quantizable (the message says why) or the budget
// is infeasible; Internal when a plan stores other bytes than the budget counted.
absl::StatusOr<std::vector<GroupPlan>> PlanLayers(LoadedModel& model,
                                                  std::vector<WeightGroup>& groups,
                                                  const QuantizeOptions& options,
                                                  const StoragePlan& storage,
                                                  GraphEditor& editor, ModelReport* report);

}  // namespace sq

#endif  // SQ_CORE_PLAN_H_
