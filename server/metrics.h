// ServerMetrics: the service's Prometheus metrics, registered in a registry the caller
// owns and exposes (main() serves it with prometheus-cpp's Exposer on its own port; tests
// inject their own registry). Names follow Prometheus conventions: `sq_` prefix, base
// units, `_total` on counters, and never a job or model id as a label.
//
// Thread-safety: every method may be called from any thread.
#ifndef SQ_SERVER_METRICS_H_
#define SQ_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "grpcpp/support/server_interceptor.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace sq::server {

class ServerMetrics {
 public:
  // Registers all families in `registry`, which must outlive this object.
  ServerMetrics(prometheus::Registry& registry, const std::string& version);

  void JobSubmitted();
  // A SubmitJob refused before it became a job: "queue_full" (RESOURCE_EXHAUSTED) or
  // "draining" (UNAVAILABLE).
  void JobRejected(const std::string& reason);
  // outcome: "succeeded", "failed", "cancelled".
  void JobFinished(const std::string& outcome, double seconds);
  void QueueWait(double seconds);
  void SetQueueDepth(int n);
  // Also samples the process's memory (sq_process_resident_memory_bytes, and the peak):
  // it moves whenever a job starts or ends, which is when memory does.
  void SetRunningJobs(int n);
  void SetWorkerSlots(int n);
  void StageDuration(const std::string& stage, double seconds);
  void BytesUploaded(int64_t n);
  void BytesDownloaded(int64_t n);
  void CompressionRatio(double ratio);
  // One quantized layer: SQNR with plain linear quantization and with SplitQuant.
  void LayerSqnr(double plain_db, double split_db);
  void Upload(const std::string& outcome);  // "stored", "deduplicated", "rejected"
  // One job's verification in ONNX Runtime: "passed", "skipped", "off" or "failed" (its
  // time is sq_stage_duration_seconds{stage="verify"}).
  void Verification(const std::string& result);
  // Something removed from the artifact directory: kind "job" or "model", reason
  // "retention" (the sweeper) or "request" (DeleteJob / DeleteModel); bytes it held.
  void Removed(const std::string& kind, const std::string& reason, int64_t bytes);
  // One retention sweep finished.
  void RetentionSweep();
  // One RPC finished: its full method name ("/sq.v1.SqService/GetJob"), status code and
  // wall time (streams: from start to status). grpc_server_handled_total and
  // grpc_server_handling_seconds, named as in the go-grpc-prometheus convention; methods
  // of services this server does not serve count as grpc_service="unknown".
  void RpcHandled(const std::string& full_method, int code, double seconds);

 private:
  prometheus::Family<prometheus::Counter>& submitted_family_;
  prometheus::Counter& submitted_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Histogram>& job_duration_;
  prometheus::Histogram& queue_wait_;
  prometheus::Gauge& queue_depth_;
  prometheus::Gauge& running_;
  prometheus::Gauge& worker_slots_;
  prometheus::Gauge& resident_;
  prometheus::Gauge& peak_resident_;
  prometheus::Family<prometheus::Histogram>& stage_duration_;
  prometheus::Counter& uploaded_;
  prometheus::Counter& downloaded_;
  prometheus::Histogram& compression_;
  prometheus::Family<prometheus::Histogram>& sqnr_;
  prometheus::Family<prometheus::Counter>& uploads_;
  prometheus::Family<prometheus::Counter>& verifications_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Counter>& removed_;
  prometheus::Family<prometheus::Counter>& removed_bytes_;
  prometheus::Counter& sweeps_;
  prometheus::Family<prometheus::Counter>& rpc_handled_;
  prometheus::Family<prometheus::Histogram>& rpc_seconds_;
};

// A gRPC server interceptor recording every call in `metrics` (RpcHandled), which must
// outlive the server.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> RpcMetricsInterceptorFactory(
    ServerMetrics* metrics);

}  // namespace sq::server

#endif  // SQ_SERVER_METRICS_H_
