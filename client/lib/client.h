// SqClient: a small synchronous wrapper over the sq.v1 stub, used by sqctl's remote
// commands, the end-to-end tests and the load benchmark. It knows how to upload a model
// together with the external data files it references, follow a job, and download
// artifacts resumably (into "<dest>.partial", verified against the server's SHA-256 before
// being renamed into place).
//
// Jobs and models are named by their sq.v1 resource names, "jobs/{job}" and "models/{model}"
// (proto/resource_names.h). Every `job` / `model` argument below (and SubmitJobRequest.model)
// takes either a name or a bare id: an id (no '/') is sent as "jobs/<id>" / "models/<id>",
// anything else unchanged (a wrong collection comes back INVALID_ARGUMENT from the server).
//
// Errors come back as absl::Status with the gRPC code carried over unchanged
// (UNAUTHENTICATED, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE, ...).
//
// Thread-safety: one SqClient may be used from several threads at once.
#ifndef SQ_CLIENT_LIB_CLIENT_H_
#define SQ_CLIENT_LIB_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "proto/job_state.h"
#include "sq/v1/sq.grpc.pb.h"

namespace sq::client {

using ::sq::v1::IsTerminal;
using ::sq::v1::StateName;

struct ClientOptions {
  std::string target = "127.0.0.1:50051";
  std::string token;        // sent as "authorization: Bearer <token>" when set
  bool tls = false;         // TLS with the system roots, or tls_ca_file when set
  std::string tls_ca_file;  // PEM; implies tls
  // PEM client certificate chain and key for servers that require them (mTLS); imply tls.
  std::string tls_cert_file, tls_key_file;
  absl::Duration unary_timeout = absl::Seconds(60);
  int64_t chunk_bytes = 1 << 20;  // upload chunk size (< gRPC's 4 MB message limit)
};

// (bytes done, bytes total)
using ProgressFn = std::function<void(int64_t, int64_t)>;

struct LocalFile {
  std::string path;  // on this machine
  std::string name;  // as sent: relative to the model's directory
};

class SqClient {
 public:
  static absl::StatusOr<std::unique_ptr<SqClient>> Create(const ClientOptions& options);

  // The model file itself (name = its base name) followed by every external data file its
  // tensors reference. InvalidArgument if it does not parse as ONNX, NotFound if a
  // referenced file is missing.
  static absl::StatusOr<std::vector<LocalFile>> ModelFiles(const std::string& onnx_path);

  // Uploads `files` (files[0] the .onnx). With `send_hashes` the header declares each
  // file's SHA-256, which lets the server skip a model it already has.
  absl::StatusOr<v1::UploadModelResponse> Upload(const std::vector<LocalFile>& files,
                                                 const ProgressFn& progress = nullptr,
                                                 bool send_hashes = true);
  absl::StatusOr<v1::UploadModelResponse> UploadModel(const std::string& onnx_path,
                                                      const ProgressFn& progress = nullptr);

  absl::StatusOr<v1::InspectModelResponse> Inspect(const std::string& model);
  // request.model may be a bare model id as well as "models/{model}".
  absl::StatusOr<v1::Job> Submit(v1::SubmitJobRequest request);
  absl::StatusOr<v1::Job> Get(const std::string& job);
  // Every job this token may see, newest first, following pages; `states` filters, `limit` > 0
  // stops after that many; `page_size` 0 = the server's default.
  absl::StatusOr<std::vector<v1::Job>> List(const std::vector<v1::JobState>& states = {},
                                            int limit = 0, int page_size = 0);
  absl::StatusOr<v1::Job> Cancel(const std::string& job);
  absl::Status Delete(const std::string& job);
  // Stored models the token may use, by id, following pages (limit > 0 stops after that many).
  absl::StatusOr<std::vector<v1::Model>> ListModels(int limit = 0, int page_size = 0);
  // DeleteModel: NOT_FOUND, FAILED_PRECONDITION (a queued or running job uses it).
  absl::Status DeleteModel(const std::string& model);
  absl::StatusOr<v1::GetReportResponse> Report(const std::string& job);

  // Follows the job until a terminal state; `on_update` sees every state received. Returns
  // the last state. `timeout` zero = no limit.
  absl::StatusOr<v1::Job> Watch(const std::string& job,
                                const std::function<void(const v1::Job&)>& on_update = nullptr,
                                absl::Duration timeout = absl::ZeroDuration());

  // One artifact (a file name from Job.artifacts; "" = the .onnx) into `dest`, resuming from
  // "<dest>.partial" when it exists.
  absl::Status Download(const std::string& job, const std::string& artifact,
                        const std::string& dest, const ProgressFn& progress = nullptr);
  // All artifacts of a succeeded job: the .onnx to `dest`, the others (external data)
  // beside it under the names the model references.
  absl::Status DownloadAll(const v1::Job& job, const std::string& dest,
                           const ProgressFn& progress = nullptr);

  // grpc.health.v1 Check of the whole server: true = SERVING.
  // grpc.health.v1 Check of the whole server ("") or of one service ("sq.v1.SqService").
  absl::StatusOr<bool> Health(const std::string& service = "");

  v1::SqService::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  // Adds auth metadata (and `timeout`, unless zero) to a context for a direct stub call.
  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const;

 private:
  SqClient() = default;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SqService::Stub> stub_;
};

}  // namespace sq::client

#endif  // SQ_CLIENT_LIB_CLIENT_H_
