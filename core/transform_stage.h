// Stage "transform" of the engine: every planned layer's weight read, split and quantized
// (TransformWeight), encoded in its planned form and written to its place in the output,
// and the untouched tensors copied, on a pool of worker threads.
//
// Scheduling: OutputFiles::schedule(), one task per layer and one per copied tensor,
// largest first (the data file is laid out in that order, so that its hash can follow the
// writes). A layer bigger than a fair share of the work cuts its passes across extra
// threads.
//
// Memory: a MatMulNBits or GatherBlockQuantized layer whose codes would buffer more than
// 128 MB (a 1 GB lm_head or embedding: ~400 MB at 4 bits, split) goes through in bands of
// ~16 MB of FP32 channels (MatMul columns, table rows), each read with pread (its pages
// never mapped in), transformed, re-encoded and written at its place, when every choice
// the transform makes is a channel's own (per-channel or blocked parameters; a split's cuts
// chosen per channel); the layer-wide inputs to those choices (TransformConfig::whole)
// come from its shape and a first pass for its largest |w|. Other such layers (the compact
// form; a split clustered over the whole tensor) buffer their codes and run one at a
// time. None of this changes a byte of the output: every byte has a planned place
// (OutputFiles), TransformWeight's results do not depend on how its passes are cut, and a
// band's channels come out as in the whole layer (engine_test holds banded artifacts to
// whole ones). The report gives each layer's `bands`.
#ifndef SQ_CORE_TRANSFORM_STAGE_H_
#define SQ_CORE_TRANSFORM_STAGE_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model_io.h"
#include "core/output.h"
#include "core/rewrite.h"
#include "core/weight_transform.h"

namespace sq {

// Whether a layer's codes are re-encoded after the transform (compact and kernel forms)
// rather than written as the transform emits them.
bool IsReencoded(LayerForm f);
// Whether a layer's re-encoding buffers so many codes (> 128 MB: a 1 GB embedding or
// lm_head holds ~400 MB of them at 4 bits, split) that it must not run beside another such
// layer: those that cannot go in bands (above). The schedule (OutputFiles::schedule) puts
// all but the first of them last.
bool RunsAlone(const GroupPlan& p);

struct TransformStageHooks {
  // Called from the calling thread as layers finish: (finished so far, total, layer name).
  std::function<void(int, int, const std::string&)> on_layer;
  std::function<bool()> is_cancelled;  // polled every 100 ms; may be empty
};

// Transforms every plan into `out` with `threads` workers; results[i] belongs to plans[i].
// Errors: the first failing layer's or copy's (the message names the weight), Cancelled
// when hooks.is_cancelled() turned true.
absl::StatusOr<std::vector<TransformResult>> RunTransformStage(LoadedModel& model,
                                                              const std::vector<GroupPlan>& plans,
                                                              OutputFiles& out, int threads,
                                                              const TransformStageHooks& hooks);

}  // namespace sq

#endif  // SQ_CORE_TRANSFORM_STAGE_H_
