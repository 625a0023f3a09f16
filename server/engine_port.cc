#include "server/engine_port.h"

namespace sq::server {
namespace {

class CoreEngine final : public EnginePort {
 public:
  absl::StatusOr<ModelReport> Quantize(const std::string& input_path,
                                       const std::string& output_path,
                                       const QuantizeOptions& options,
                                       const RunHooks& hooks) override {
    return QuantizeModelFile(input_path, output_path, options, hooks);
  }
  absl::StatusOr<ModelInfo> Inspect(const std::string& input_path) override {
    return InspectModelFile(input_path);
  }
  std::string Version() override { return sq::Version(); }
};

}  // namespace

std::shared_ptr<EnginePort> DefaultEngine() { return std::make_shared<CoreEngine>(); }

}  // namespace sq::server
