// Translation between sq.v1 wire messages and the engine's structs. The only place where
// both meet (style.md: the server translates, nothing else does).
#ifndef SQ_SERVER_CONVERT_H_
#define SQ_SERVER_CONVERT_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/engine.h"
#include "core/options.h"
#include "grpcpp/support/status.h"
#include "proto/job_state.h"
#include "sq/v1/sq.pb.h"

namespace sq::server {

// Unset fields take the engine's defaults; threads == 0 takes `default_threads`.
// InvalidArgument (naming the option) for values the engine rejects.
absl::StatusOr<QuantizeOptions> ToEngineOptions(const v1::QuantizeOptions& wire, int default_threads);
// The engine's options as a fully populated wire message (echoed in Job.options).
v1::QuantizeOptions ToWireOptions(const QuantizeOptions& options);
v1::InspectModelResponse ToWire(const ModelInfo& info);

grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

using ::sq::v1::IsTerminal;
using ::sq::v1::StateName;

}  // namespace sq::server

#endif  // SQ_SERVER_CONVERT_H_
