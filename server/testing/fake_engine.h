// FakeEngine: an EnginePort for tests and load benchmarks of the service. It copies the
// input to the output, reports one made-up layer per `layers`, and can be held at a gate
// (blocking between "layers" until Release() or until the job is cancelled), so tests can
// pin jobs in RUNNING deterministically. Header-only; never linked into sq-server.
#ifndef SQ_SERVER_TESTING_FAKE_ENGINE_H_
#define SQ_SERVER_TESTING_FAKE_ENGINE_H_

#include <atomic>
#include <filesystem>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/engine_port.h"

namespace sq::server::testing {

class FakeEngine final : public EnginePort {
 public:
  explicit FakeEngine(bool gated = false, int layers = 3) : gated_(gated), layers_(layers) {}

  // Lets every gated run (current and future) finish.
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
  }
  // Blocks until `n` runs have started (true) or the timeout passes (false).
  bool WaitStarted(int n, absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto cond = [this, n]() { return started_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&cond), timeout);
  }
  int started() {
    absl::MutexLock lock(&mu_);
    return started_;
  }

  absl::StatusOr<ModelReport> Quantize(const std::string& input_path, const std::string& output_path,
                                       const QuantizeOptions& options, const RunHooks& hooks) override {
    {
      absl::MutexLock lock(&mu_);
      ++started_;
    }
    auto progress = [&](const char* stage, int i, const std::string& name) {
      if (hooks.on_progress) hooks.on_progress(Progress{stage, i, layers_, name});
    };
    progress("load", 0, "");
    progress("discover", 0, "");
    for (int i = 0; i < layers_; ++i) {
      while (gated_) {
        if (hooks.is_cancelled && hooks.is_cancelled()) return absl::CancelledError("cancelled");
        absl::MutexLock lock(&mu_);
        if (released_) break;
        mu_.AwaitWithTimeout(absl::Condition(&released_), absl::Milliseconds(5));
      }
      if (hooks.is_cancelled && hooks.is_cancelled()) return absl::CancelledError("cancelled");
      progress("transform", i + 1, "layer" + std::to_string(i));
    }
    std::error_code ec;
    std::filesystem::copy_file(input_path, output_path,
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) return absl::InvalidArgumentError("fake engine cannot copy: " + ec.message());
    progress("write", layers_, "");
    ModelReport r;
    r.tool_version = "fake";
    r.input_path = input_path;
    r.output_path = output_path;
    r.options = options;
    r.input_bytes = r.output_bytes = static_cast<int64_t>(std::filesystem::file_size(output_path, ec));
    r.compression_ratio = 1.0;
    r.stages = {{"load", 0.001}, {"transform", 0.002}, {"write", 0.001}, {"verify", 0.001}};
    r.verification.status = "passed";  // what the real engine reports for a copy
    r.layers_found = r.layers_quantized = r.layers_split = layers_;
    for (int i = 0; i < layers_; ++i) {
      LayerReport l;
      l.name = "layer" + std::to_string(i);
      l.op_type = "MatMul";
      l.quantized = l.split = true;
      l.sqnr_plain_db = 20 + i;
      l.sqnr_split_db = 30 + i;
      r.layers.push_back(l);
    }
    return r;
  }

  absl::StatusOr<ModelInfo> Inspect(const std::string& input_path) override {
    ModelInfo info;
    info.ir_version = 8;
    info.opset = 13;
    info.op_histogram["MatMul"] = layers_;
    return info;
  }

  std::string Version() override { return "0.0.0-fake"; }

 private:
  const bool gated_;
  const int layers_;
  absl::Mutex mu_;
  bool released_ = false;
  int started_ = 0;
};

}  // namespace sq::server::testing

#endif  // SQ_SERVER_TESTING_FAKE_ENGINE_H_
