// EnginePort: the narrow seam between the service and the quantization engine. The server
// calls the engine only through this interface, so tests can inject an engine that blocks,
// fails or counts (the way leveldb injects an Env). DefaultEngine() forwards to
// sq::QuantizeModelFile / sq::InspectModelFile.
#ifndef SQ_SERVER_ENGINE_PORT_H_
#define SQ_SERVER_ENGINE_PORT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/engine.h"

namespace sq::server {

class EnginePort {
 public:
  virtual ~EnginePort() = default;
  virtual absl::StatusOr<ModelReport> Quantize(const std::string& input_path,
                                               const std::string& output_path,
                                               const QuantizeOptions& options,
                                               const RunHooks& hooks) = 0;
  virtual absl::StatusOr<ModelInfo> Inspect(const std::string& input_path) = 0;
  virtual std::string Version() = 0;
};

std::shared_ptr<EnginePort> DefaultEngine();

}  // namespace sq::server

#endif  // SQ_SERVER_ENGINE_PORT_H_
