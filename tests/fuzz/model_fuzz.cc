// Fuzzes the model loader, validation, layer discovery, planning, the transform and the
// writer: whatever bytes arrive as a model, the engine answers with a status, never a crash,
// and an error leaves nothing under the output names. Verification is off (it runs ONNX
// Runtime, which is not ours to fuzz) and one thread keeps executions reproducible.
#include <cstdint>
#include <string>

#include "core/engine.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = sq::fuzz::ScratchDir();
  const std::string in = dir + "/in.onnx", out = dir + "/out.onnx";
  sq::fuzz::WriteBytes(in, data, size);
  (void)sq::InspectModelFile(in);
  sq::QuantizeOptions o;
  o.verify = false;
  o.threads = 1;
  o.min_weight_elements = 4;
  for (int bits : {4, 2}) {
    o.bits = bits;
    absl::StatusOr<sq::ModelReport> r = sq::QuantizeModelFile(in, out, o);
    if (r.ok()) {
      SQ_FUZZ_CHECK(sq::fuzz::Exists(out), "a successful run wrote its output");
      ::unlink(out.c_str());
      if (!r->external_data_path.empty()) ::unlink((dir + "/" + r->external_data_path).c_str());
    } else {
      SQ_FUZZ_CHECK(!sq::fuzz::Exists(out), "a failed run leaves nothing at the output");
      // Internal means a bug of ours (engine.h); bad input has its own codes.
      SQ_FUZZ_CHECK(r.status().code() != absl::StatusCode::kInternal, "no internal error on input");
    }
    o.format = sq::OutputFormat::kQdq;
    o.target = sq::Target::kQdq;
  }
  return 0;
}
