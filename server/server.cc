#include "server/server.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "core/verify/ort_worker.h"
#include "server/log.h"

namespace sq::server {

absl::StatusOr<std::unique_ptr<SqServer>> SqServer::Start(
    const ServerOptions& options, std::shared_ptr<prometheus::Registry> registry,
    std::shared_ptr<EnginePort> engine) {
  if (!engine) engine = DefaultEngine();
  // Options are checked before anything starts (a half-built server has workers to stop).
  const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (tls && (options.tls_cert_file.empty() || options.tls_key_file.empty())) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
  }
  if (!tls && !options.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs TLS (--tls_cert and --tls_key)");
  }
  if (!options.ort_worker.empty() && ::access(options.ort_worker.c_str(), X_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ONNX Runtime worker ", options.ort_worker, " is not an executable file"));
  }
  SetOrtWorker(options.ort_worker);
  SetOrtWorkerTimeout(options.ort_worker_timeout_seconds);
  std::unique_ptr<SqServer> s(new SqServer());
  s->registry_ = std::move(registry);
  if (s->registry_) s->metrics_ = std::make_unique<ServerMetrics>(*s->registry_, engine->Version());

  auto store = ArtifactStore::Open(options.artifact_dir);
  if (!store.ok()) return store.status();
  s->store_ = std::move(*store);
  s->process_metrics_ = std::make_shared<ProcessMetrics>(s->store_->root());

  JobQueue::Options control;
  control.workers = std::max(1, options.control_threads);
  control.capacity = 64;
  control.name = "inspect";
  s->control_pool_ = std::make_unique<JobQueue>(control);

  JobManagerOptions jm;
  jm.workers = options.workers;
  jm.queue_capacity = options.queue_capacity;
  jm.default_job_threads = options.default_job_threads;
  s->jobs_ = std::make_unique<JobManager>(s->store_.get(), engine, s->metrics_.get(), jm);
  s->jobs_->Recover();
  s->retention_ = std::make_unique<RetentionSweeper>(s->store_.get(), s->jobs_.get(), s->metrics_.get(),
                                                     options.retention);

  ServiceOptions so;
  so.max_upload_bytes = options.max_upload_bytes;
  so.chunk_bytes = options.chunk_bytes;
  so.upload_buffer_bytes = options.upload_buffer_bytes;
  so.auth_token = options.auth_token;
  so.tenants = options.tenants;
  s->service_ = std::make_unique<SqService>(s->store_.get(), s->jobs_.get(), engine,
                                            s->metrics_.get(), s->control_pool_.get(), so);

  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
    }
    auto cert = ReadFileToString(options.tls_cert_file);
    if (!cert.ok()) return absl::InvalidArgumentError("cannot read TLS certificate " + options.tls_cert_file);
    auto key = ReadFileToString(options.tls_key_file);
    if (!key.ok()) return absl::InvalidArgumentError("cannot read TLS key " + options.tls_key_file);
    grpc::SslServerCredentialsOptions ssl(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!options.tls_client_ca_file.empty()) {
      auto ca = ReadFileToString(options.tls_client_ca_file);
      if (!ca.ok()) {
        return absl::InvalidArgumentError("cannot read TLS client CA " + options.tls_client_ca_file);
      }
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  if (s->metrics_) creators.push_back(RpcMetricsInterceptorFactory(s->metrics_.get()));
  if (options.log_rpcs) creators.push_back(RpcLogInterceptorFactory());
  if (!creators.empty()) builder.experimental().SetInterceptorCreators(std::move(creators));
  builder.AddListeningPort(options.listen_address, creds, &s->port_);
  builder.RegisterService(s->service_.get());
  s->reflection_v1_ = std::make_unique<ReflectionV1Service>(std::vector<std::string>{
      "sq.v1.SqService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection"});
  builder.RegisterService(s->reflection_v1_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address));
  }
  // Overall health ("") and by service name, as Kubernetes' gRPC probe and grpc_health_probe
  // -service=sq.v1.SqService ask; Drain flips both.
  s->server_->GetHealthCheckService()->SetServingStatus(v1::SqService::service_full_name(), true);
  s->server_->GetHealthCheckService()->SetServingStatus(true);
  s->retention_->Start();
  return s;
}

void SqServer::Drain(absl::Duration grace) {
  if (drained_) return;
  drained_ = true;
  // Each part may be missing when Start() failed half-way (a port in use, an unreadable
  // certificate): what was started is stopped, nothing else is touched.
  if (retention_) retention_->Stop();
  if (jobs_) jobs_->StopAccepting();  // before health flips: a NOT_SERVING server refuses new work
  if (server_) server_->GetHealthCheckService()->SetServingStatus(false);
  if (jobs_) jobs_->Drain(grace);
  if (control_pool_) control_pool_->Join();  // pending InspectModel calls finish (or are refused)
  // Streams still open (watchers of other servers' jobs, slow downloads) get a moment.
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

void SqServer::Wait() {
  if (server_) server_->Wait();
}

SqServer::~SqServer() {
  Drain(absl::ZeroDuration());
  Wait();
}

}  // namespace sq::server
