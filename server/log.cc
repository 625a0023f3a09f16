#include "server/log.h"

#include <cstdio>
#include <mutex>

#include "absl/time/clock.h"
#include "grpcpp/server_context.h"
#include "absl/time/time.h"
#include "core/utf8.h"

namespace sq::server {

namespace {

void ValidUtf8(nlohmann::json& j) {
  if (j.is_string()) {
    j = ToValidUtf8(j.get_ref<const std::string&>());
  } else if (j.is_structured()) {
    for (auto& child : j) ValidUtf8(child);
  }
}

}  // namespace

void LogEvent(absl::string_view level, absl::string_view event, nlohmann::json fields) {
  nlohmann::json line = {
      {"ts", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone())},
      {"level", std::string(level)},
      {"event", std::string(event)}};
  for (auto& [k, v] : fields.items()) line[k] = v;
  ValidUtf8(line);
  const std::string text = line.dump() + "\n";
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

namespace {

class RpcLogInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit RpcLogInterceptor(grpc::experimental::ServerRpcInfo* info)
      : info_(info), start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status st = methods->GetSendStatus();
      nlohmann::json f = {{"method", info_->method() ? info_->method() : ""},
                          {"code", static_cast<int>(st.error_code())},
                          {"ms", absl::ToDoubleMilliseconds(absl::Now() - start_)}};
      if (!st.ok()) f["error"] = st.error_message();
      if (info_->server_context() != nullptr) f["peer"] = info_->server_context()->peer();
      LogEvent(st.ok() ? "info" : "warning", "rpc", std::move(f));
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  absl::Time start_;
};

class RpcLogFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcLogInterceptor(info);
  }
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RpcLogInterceptorFactory() {
  return std::make_unique<RpcLogFactory>();
}

}  // namespace sq::server
