// SqServer: the whole service assembled: artifact store, job manager (queue + workers),
// the sq.v1 service, gRPC's health service and server reflection (v1alpha from gRPC, v1
// from reflection_v1.h). main() builds one from
// flags; tests build one in-process on 127.0.0.1 port 0.
//
// Lifecycle: Start() -> serving; Drain(grace) -> health NOT_SERVING, new uploads and jobs
// refused with UNAVAILABLE, queued jobs failed, running jobs given `grace` to finish then
// cancelled, then the gRPC server stops. The destructor drains with zero grace. With a
// retention policy a sweeper removes old jobs and models in the background (retention.h).
#ifndef SQ_SERVER_SERVER_H_
#define SQ_SERVER_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "prometheus/registry.h"
#include "server/artifact_store.h"
#include "server/engine_port.h"
#include "server/job_manager.h"
#include "server/metrics.h"
#include "server/process_metrics.h"
#include "server/reflection_v1.h"
#include "server/retention.h"
#include "server/service.h"

namespace sq::server {

struct ServerOptions {
  std::string listen_address = "127.0.0.1:50051";  // port 0 picks a free one
  std::string artifact_dir;                         // required
  int workers = 2;                                  // jobs running at once
  int queue_capacity = 16;                          // jobs waiting; more -> RESOURCE_EXHAUSTED
  int default_job_threads = 0;                      // engine threads per job (0 = all cores)
  int64_t max_upload_bytes = int64_t{8} << 30;      // per model (all its files)
  int64_t chunk_bytes = 1 << 20;                    // download chunk size
  int64_t upload_buffer_bytes = int64_t{32} << 20;  // per upload, received but not yet stored
  std::string auth_token;                           // shared token; empty = none
  std::vector<Tenant> tenants;                      // per-tenant tokens (instead of auth_token)
  std::string tls_cert_file, tls_key_file;          // both set = TLS
  // With TLS: PEM CA bundle; set = clients must present a certificate it signed (mTLS).
  std::string tls_client_ca_file;
  int control_threads = 2;                          // InspectModel pool
  bool log_rpcs = true;                             // one "rpc" log line per call (server/log.h)
  // The ONNX Runtime worker executable (core/verify/ort_worker.h) that jobs' verification
  // and calibration run in, so a crash inside ONNX Runtime fails the job, not the server;
  // empty: in this process. Process-wide: the last server started sets it.
  std::string ort_worker;
  double ort_worker_timeout_seconds = 600;  // one load or run in the worker; <= 0: no limit
  RetentionPolicy retention;                        // default: keep everything
};

class SqServer {
 public:
  // `registry` (may be null: no metrics) must outlive the server. `engine` defaults to
  // the real engine.
  static absl::StatusOr<std::unique_ptr<SqServer>> Start(
      const ServerOptions& options, std::shared_ptr<prometheus::Registry> registry,
      std::shared_ptr<EnginePort> engine = nullptr);
  ~SqServer();

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  void Drain(absl::Duration grace);
  void Wait();  // blocks until the gRPC server has stopped

  JobManager& jobs() { return *jobs_; }
  RetentionSweeper& retention() { return *retention_; }
  ArtifactStore& store() { return *store_; }
  // process_* and the artifact volume's space, read at scrape time: register it on the
  // metrics Exposer beside the registry.
  std::shared_ptr<ProcessMetrics> process_metrics() const { return process_metrics_; }

 private:
  SqServer() = default;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<ArtifactStore> store_;
  std::shared_ptr<ProcessMetrics> process_metrics_;
  std::unique_ptr<JobQueue> control_pool_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<RetentionSweeper> retention_;
  std::unique_ptr<SqService> service_;
  std::unique_ptr<ReflectionV1Service> reflection_v1_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool drained_ = false;
};

}  // namespace sq::server

#endif  // SQ_SERVER_SERVER_H_
