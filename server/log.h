// Structured logs: one JSON object per line on stderr, so a log pipeline (journald, Loki,
// Cloud Logging) can index them without parsing prose:
//   {"ts":"2026-12-03T21:50:01.123Z","level":"info","event":"job_finished","job":"…",…}
// Events: job_submitted, job_started, job_finished (state, seconds, code, error), rpc (one
// per call: method, code, ms, peer; LogRpcs turns it off), error. No token, path of the
// artifact directory or model content is ever logged; names from models go through
// ToValidUtf8.
#ifndef SQ_SERVER_LOG_H_
#define SQ_SERVER_LOG_H_

#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "grpcpp/support/server_interceptor.h"
#include "nlohmann/json.hpp"

namespace sq::server {

// Writes {"ts", "level", "event", ...fields} as one line. Thread-safe.
void LogEvent(absl::string_view level, absl::string_view event, nlohmann::json fields = nlohmann::json::object());

// A gRPC server interceptor factory logging every call ("rpc" events) when it completes.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RpcLogInterceptorFactory();

}  // namespace sq::server

#endif  // SQ_SERVER_LOG_H_
