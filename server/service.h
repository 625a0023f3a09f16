// SqService: the sq.v1.SqService gRPC service on the callback API. Reactions only validate,
// translate and hand work over: jobs go to the JobManager's queue and InspectModel to a
// small control pool, so no engine work ever runs on a gRPC thread. Streaming calls are
// reactor objects that delete themselves in OnDone.
#ifndef SQ_SERVER_SERVICE_H_
#define SQ_SERVER_SERVICE_H_

#include <cstdint>
#include <memory>

#include "server/artifact_store.h"
#include "server/auth.h"
#include "server/engine_port.h"
#include "server/job_manager.h"
#include "server/job_queue.h"
#include "server/metrics.h"
#include "sq/v1/sq.grpc.pb.h"

namespace sq::server {

struct ServiceOptions {
  int64_t max_upload_bytes = int64_t{8} << 30;
  int64_t chunk_bytes = 1 << 20;  // download chunk size
  // Upload bytes received but not yet stored, per upload (the writer thread's queue).
  int64_t upload_buffer_bytes = int64_t{32} << 20;
  std::string auth_token;         // shared token; empty = none
  std::vector<Tenant> tenants;    // per-tenant tokens: each sees only its own jobs and models
};

class SqService final : public v1::SqService::CallbackService {
 public:
  // All pointers must outlive the service; `metrics` may be null.
  SqService(ArtifactStore* store, JobManager* jobs, std::shared_ptr<EnginePort> engine,
            ServerMetrics* metrics, JobQueue* control_pool, ServiceOptions options);

  grpc::ServerReadReactor<v1::UploadModelRequest>* UploadModel(
      grpc::CallbackServerContext* context, v1::UploadModelResponse* response) override;
  grpc::ServerUnaryReactor* InspectModel(grpc::CallbackServerContext* context,
                                         const v1::InspectModelRequest* request,
                                         v1::InspectModelResponse* response) override;
  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context,
                                      const v1::SubmitJobRequest* request,
                                      v1::SubmitJobResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request, v1::GetJobResponse* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerWriteReactor<v1::WatchJobResponse>* WatchJob(grpc::CallbackServerContext* context,
                                              const v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request,
                                      v1::CancelJobResponse* response) override;
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteModel(grpc::CallbackServerContext* context,
                                        const v1::DeleteModelRequest* request,
                                        v1::DeleteModelResponse* response) override;
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* context,
                                      const v1::DeleteJobRequest* request,
                                      v1::DeleteJobResponse* response) override;
  grpc::ServerWriteReactor<v1::DownloadArtifactResponse>* DownloadArtifact(
      grpc::CallbackServerContext* context, const v1::DownloadArtifactRequest* request) override;
  grpc::ServerUnaryReactor* GetReport(grpc::CallbackServerContext* context,
                                      const v1::GetReportRequest* request,
                                      v1::GetReportResponse* response) override;

  ArtifactStore* store() const { return store_; }
  JobManager* jobs() const { return jobs_; }
  // Under per-tenant access: NOT_FOUND when `job_id` is another tenant's (exactly as for an
  // unknown id, which gets GetJob's answer). Without it: OK (the RPC answers unknown ids).
  grpc::Status CheckJobVisible(const std::string& job_id, const std::string& tenant) const;
  ServerMetrics* metrics() const { return metrics_; }
  const ServiceOptions& options() const { return options_; }
  const BearerAuth& auth() const { return auth_; }

 private:
  ArtifactStore* const store_;
  JobManager* const jobs_;
  const std::shared_ptr<EnginePort> engine_;
  ServerMetrics* const metrics_;
  JobQueue* const control_pool_;
  const ServiceOptions options_;
  const BearerAuth auth_;
};

}  // namespace sq::server

#endif  // SQ_SERVER_SERVICE_H_
