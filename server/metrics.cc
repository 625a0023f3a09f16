#include "server/metrics.h"

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/file_util.h"

namespace sq::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// Jobs take from well under a second (tiny models) to tens of minutes (LLMs).
Histogram::BucketBoundaries DurationBuckets() {
  return {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600};
}

// RPCs: health checks in a millisecond, a watch or a large download for minutes.
Histogram::BucketBoundaries RpcBuckets() {
  return {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800};
}

}  // namespace

ServerMetrics::ServerMetrics(prometheus::Registry& registry, const std::string& version)
    : submitted_family_(BuildCounter()
                            .Name("sq_jobs_submitted_total")
                            .Help("Quantization jobs accepted into the queue.")
                            .Register(registry)),
      submitted_(submitted_family_.Add({})),
      finished_(BuildCounter()
                    .Name("sq_jobs_finished_total")
                    .Help("Quantization jobs that reached a terminal state, by outcome.")
                    .Register(registry)),
      job_duration_(BuildHistogram()
                        .Name("sq_job_duration_seconds")
                        .Help("Run time of a job from start to terminal state, by outcome.")
                        .Register(registry)),
      queue_wait_(BuildHistogram()
                      .Name("sq_queue_wait_seconds")
                      .Help("Time a job waited in the queue before a worker took it.")
                      .Register(registry)
                      .Add({}, DurationBuckets())),
      queue_depth_(BuildGauge()
                       .Name("sq_queue_depth")
                       .Help("Jobs waiting in the queue.")
                       .Register(registry)
                       .Add({})),
      running_(BuildGauge()
                   .Name("sq_jobs_running")
                   .Help("Jobs running on a worker now.")
                   .Register(registry)
                   .Add({})),
      worker_slots_(BuildGauge()
                        .Name("sq_worker_slots")
                        .Help("Worker threads available for jobs.")
                        .Register(registry)
                        .Add({})),
      resident_(BuildGauge()
                    .Name("sq_process_resident_memory_bytes")
                    .Help("Resident memory of the server process, sampled when a job starts or ends.")
                    .Register(registry)
                    .Add({})),
      peak_resident_(BuildGauge()
                         .Name("sq_process_peak_resident_memory_bytes")
                         .Help("Peak resident memory of the server process since it started.")
                         .Register(registry)
                         .Add({})),
      stage_duration_(BuildHistogram()
                          .Name("sq_stage_duration_seconds")
                          .Help("Time spent per engine stage (load, discover, convert, transform, write, verify).")
                          .Register(registry)),
      uploaded_(BuildCounter()
                    .Name("sq_upload_bytes_total")
                    .Help("Model bytes received by UploadModel.")
                    .Register(registry)
                    .Add({})),
      downloaded_(BuildCounter()
                      .Name("sq_download_bytes_total")
                      .Help("Artifact bytes sent by DownloadArtifact.")
                      .Register(registry)
                      .Add({})),
      compression_(BuildHistogram()
                       .Name("sq_compression_ratio")
                       .Help("Input bytes divided by output bytes of succeeded jobs.")
                       .Register(registry)
                       .Add({}, Histogram::BucketBoundaries{1, 1.5, 2, 3, 4, 5, 6, 7, 8, 10, 16})),
      sqnr_(BuildHistogram()
                .Name("sq_layer_sqnr_decibels")
                .Help("Weight SQNR per quantized layer: method=\"split\" (SplitQuant) vs method=\"plain\" (linear).")
                .Register(registry)),
      uploads_(BuildCounter()
                   .Name("sq_uploads_total")
                   .Help("Finished UploadModel calls, by outcome (stored, deduplicated, rejected).")
                   .Register(registry)),
      verifications_(BuildCounter()
                         .Name("sq_verifications_total")
                         .Help("Artifacts checked in ONNX Runtime before delivery, by result (passed, "
                               "skipped, off, failed: the job failed because its artifact does not run).")
                         .Register(registry)),
      rejected_(BuildCounter()
                    .Name("sq_jobs_rejected_total")
                    .Help("SubmitJob calls refused before a job existed, by reason (queue_full: "
                          "RESOURCE_EXHAUSTED, retry later; draining: the server is stopping).")
                    .Register(registry)),
      removed_(BuildCounter()
                   .Name("sq_removed_total")
                   .Help("Jobs and models removed from the artifact directory, by kind (job, model) "
                         "and reason (retention: the sweeper; request: DeleteJob/DeleteModel).")
                   .Register(registry)),
      removed_bytes_(BuildCounter()
                         .Name("sq_removed_bytes_total")
                         .Help("Bytes freed in the artifact directory, by kind and reason.")
                         .Register(registry)),
      sweeps_(BuildCounter()
                  .Name("sq_retention_sweeps_total")
                  .Help("Retention sweeps run by this server (--retention_age / --retention_bytes).")
                  .Register(registry)
                  .Add({})),
      rpc_handled_(BuildCounter()
                       .Name("grpc_server_handled_total")
                       .Help("RPCs completed on the server, by service, method and status code.")
                       .Register(registry)),
      rpc_seconds_(BuildHistogram()
                       .Name("grpc_server_handling_seconds")
                       .Help("Time from an RPC's start to its status, by service and method.")
                       .Register(registry)) {
  for (const char* reason : {"queue_full", "draining"}) rejected_.Add({{"reason", reason}});
  for (const char* kind : {"job", "model"}) {
    for (const char* reason : {"retention", "request"}) {
      removed_.Add({{"kind", kind}, {"reason", reason}});
      removed_bytes_.Add({{"kind", kind}, {"reason", reason}});
    }
  }
  BuildGauge()
      .Name("sq_build_info")
      .Help("Build information; the value is always 1.")
      .Register(registry)
      .Add({{"version", version}})
      .Set(1);
  // Pre-create the label sets a dashboard expects, so they read 0 instead of missing.
  for (const char* outcome : {"succeeded", "failed", "cancelled"}) {
    finished_.Add({{"outcome", outcome}});
    job_duration_.Add({{"outcome", outcome}}, DurationBuckets());
  }
  for (const char* method : {"split", "plain"}) {
    sqnr_.Add({{"method", method}}, Histogram::BucketBoundaries{0, 5, 10, 15, 20, 25, 30, 35, 40, 50, 60});
  }
  for (const char* outcome : {"stored", "deduplicated", "rejected"}) uploads_.Add({{"outcome", outcome}});
  for (const char* result : {"passed", "skipped", "off", "failed"}) verifications_.Add({{"result", result}});
  for (const char* stage : {"load", "discover", "convert", "transform", "write", "verify"}) {
    stage_duration_.Add({{"stage", stage}}, DurationBuckets());
  }
}

void ServerMetrics::JobSubmitted() { submitted_.Increment(); }
void ServerMetrics::JobRejected(const std::string& reason) { rejected_.Add({{"reason", reason}}).Increment(); }

void ServerMetrics::JobFinished(const std::string& outcome, double seconds) {
  finished_.Add({{"outcome", outcome}}).Increment();
  job_duration_.Add({{"outcome", outcome}}, DurationBuckets()).Observe(seconds);
}

void ServerMetrics::Removed(const std::string& kind, const std::string& reason, int64_t bytes) {
  removed_.Add({{"kind", kind}, {"reason", reason}}).Increment();
  removed_bytes_.Add({{"kind", kind}, {"reason", reason}}).Increment(static_cast<double>(bytes));
}

void ServerMetrics::RetentionSweep() { sweeps_.Increment(); }

void ServerMetrics::RpcHandled(const std::string& full_method, int code, double seconds) {
  // "/package.Service/Method"; only this server's services become label values, so a
  // client cannot create series by calling made-up methods.
  absl::string_view m = full_method;
  std::string service = "unknown", method = "unknown";
  const size_t slash = m.rfind('/');
  if (absl::StartsWith(m, "/") && slash != absl::string_view::npos && slash > 1) {
    absl::string_view svc = m.substr(1, slash - 1);
    if (svc == "sq.v1.SqService" || svc == "grpc.health.v1.Health" ||
        svc == "grpc.reflection.v1.ServerReflection" || svc == "grpc.reflection.v1alpha.ServerReflection") {
      service = std::string(svc);
      method = std::string(m.substr(slash + 1));
    }
  }
  const std::string code_name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  rpc_handled_.Add({{"grpc_service", service}, {"grpc_method", method}, {"grpc_code", code_name}}).Increment();
  rpc_seconds_.Add({{"grpc_service", service}, {"grpc_method", method}}, RpcBuckets()).Observe(seconds);
}

namespace {

class RpcMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcMetricsInterceptor(grpc::experimental::ServerRpcInfo* info, ServerMetrics* metrics)
      : info_(info), metrics_(metrics), start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->RpcHandled(info_->method() ? info_->method() : "",
                           static_cast<int>(methods->GetSendStatus().error_code()),
                           absl::ToDoubleSeconds(absl::Now() - start_));
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* const info_;
  ServerMetrics* const metrics_;
  const absl::Time start_;
};

class RpcMetricsFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RpcMetricsFactory(ServerMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new RpcMetricsInterceptor(info, metrics_);
  }

 private:
  ServerMetrics* const metrics_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RpcMetricsInterceptorFactory(
    ServerMetrics* metrics) {
  return std::make_unique<RpcMetricsFactory>(metrics);
}

void ServerMetrics::QueueWait(double seconds) { queue_wait_.Observe(seconds); }
void ServerMetrics::SetQueueDepth(int n) { queue_depth_.Set(n); }
void ServerMetrics::SetRunningJobs(int n) {
  running_.Set(n);
  resident_.Set(static_cast<double>(CurrentRssBytes()));
  peak_resident_.Set(static_cast<double>(PeakRssBytes()));
}
void ServerMetrics::SetWorkerSlots(int n) { worker_slots_.Set(n); }

void ServerMetrics::StageDuration(const std::string& stage, double seconds) {
  stage_duration_.Add({{"stage", stage}}, DurationBuckets()).Observe(seconds);
}

void ServerMetrics::BytesUploaded(int64_t n) { uploaded_.Increment(static_cast<double>(n)); }
void ServerMetrics::BytesDownloaded(int64_t n) { downloaded_.Increment(static_cast<double>(n)); }
void ServerMetrics::CompressionRatio(double ratio) { compression_.Observe(ratio); }

void ServerMetrics::LayerSqnr(double plain_db, double split_db) {
  const Histogram::BucketBoundaries b{0, 5, 10, 15, 20, 25, 30, 35, 40, 50, 60};
  sqnr_.Add({{"method", "plain"}}, b).Observe(plain_db);
  sqnr_.Add({{"method", "split"}}, b).Observe(split_db);
}

void ServerMetrics::Verification(const std::string& result) {
  verifications_.Add({{"result", result}}).Increment();
}

void ServerMetrics::Upload(const std::string& outcome) {
  uploads_.Add({{"outcome", outcome}}).Increment();
}

}  // namespace sq::server
