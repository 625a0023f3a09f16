#include "client/lib/client.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "onnx/onnx_pb.h"
#include "proto/resource_names.h"
#include "server/artifact_store.h"

namespace sq::client {

namespace fs = std::filesystem;

namespace {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void CollectTensor(const onnx::TensorProto& t, std::set<std::string>* out) {
  if (t.data_location() != onnx::TensorProto::EXTERNAL) return;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") out->insert(kv.value());
  }
}

void CollectGraph(const onnx::GraphProto& g, std::set<std::string>* out);

void CollectAttribute(const onnx::AttributeProto& a, std::set<std::string>* out) {
  if (a.has_t()) CollectTensor(a.t(), out);
  for (const auto& t : a.tensors()) CollectTensor(t, out);
  if (a.has_g()) CollectGraph(a.g(), out);
  for (const auto& g : a.graphs()) CollectGraph(g, out);
}

void CollectGraph(const onnx::GraphProto& g, std::set<std::string>* out) {
  for (const auto& t : g.initializer()) CollectTensor(t, out);
  for (const auto& n : g.node()) {
    for (const auto& a : n.attribute()) CollectAttribute(a, out);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqClient>> SqClient::Create(const ClientOptions& options) {
  std::unique_ptr<SqClient> c(new SqClient());
  c->options_ = options;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("a client certificate needs both --tls-cert and --tls-key");
  }
  if (options.tls || !options.tls_ca_file.empty() || !options.tls_cert_file.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca_file.empty()) {
      auto pem = server::ReadFileToString(options.tls_ca_file);
      if (!pem.ok()) return absl::InvalidArgumentError("cannot read CA file " + options.tls_ca_file);
      ssl.pem_root_certs = *pem;
    }
    if (!options.tls_cert_file.empty()) {
      auto cert = server::ReadFileToString(options.tls_cert_file);
      if (!cert.ok()) return absl::InvalidArgumentError("cannot read client certificate " + options.tls_cert_file);
      auto key = server::ReadFileToString(options.tls_key_file);
      if (!key.ok()) return absl::InvalidArgumentError("cannot read client key " + options.tls_key_file);
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  c->channel_ = grpc::CreateChannel(options.target, creds);
  c->stub_ = v1::SqService::NewStub(c->channel_);
  return c;
}

void SqClient::Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", "Bearer " + options_.token);
  if (timeout > absl::ZeroDuration()) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  }
}

absl::StatusOr<std::vector<LocalFile>> SqClient::ModelFiles(const std::string& onnx_path) {
  std::ifstream in(onnx_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", onnx_path));
  onnx::ModelProto model;
  {
    google::protobuf::io::IstreamInputStream raw(&in);
    google::protobuf::io::CodedInputStream coded(&raw);
    coded.SetTotalBytesLimit(INT32_MAX);
    if (!model.ParseFromCodedStream(&coded)) {
      return absl::InvalidArgumentError(absl::StrCat(onnx_path, " is not an ONNX model"));
    }
  }
  std::set<std::string> locations;
  CollectGraph(model.graph(), &locations);
  for (const auto& f : model.functions()) {
    for (const auto& n : f.node()) {
      for (const auto& a : n.attribute()) CollectAttribute(a, &locations);
    }
  }
  std::vector<LocalFile> files;
  files.push_back({onnx_path, fs::path(onnx_path).filename().string()});
  if (locations.empty()) return files;
  // The same containment rule as the engine's (core/file_util.h): a location that is
  // absolute, climbs with "..", or whose symlinks lead out of the model's folder is refused
  // before anything is read, so a model cannot make sqctl upload files from elsewhere.
  char resolved_dir[PATH_MAX];
  std::string dir = DirName(onnx_path);
  if (realpath(dir.c_str(), resolved_dir) == nullptr) {
    return absl::NotFoundError(absl::StrCat("cannot resolve the folder of ", onnx_path));
  }
  for (const std::string& loc : locations) {
    auto resolved = ResolveInsideDirectory(resolved_dir, loc);
    if (!resolved.ok()) {
      return absl::Status(resolved.status().code(),
                          absl::StrCat(onnx_path, " references external data ",
                                       resolved.status().message()));
    }
    if (absl::Status st = server::ValidateRelativeName(loc); !st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(onnx_path, " references external data with a name the server refuses: ", loc));
    }
    files.push_back({*resolved, loc});
  }
  return files;
}

absl::StatusOr<v1::UploadModelResponse> SqClient::Upload(const std::vector<LocalFile>& files,
                                                         const ProgressFn& progress,
                                                         bool send_hashes) {
  v1::UploadModelRequest header;
  int64_t total = 0;
  for (const LocalFile& f : files) {
    std::error_code ec;
    int64_t size = static_cast<int64_t>(fs::file_size(f.path, ec));
    if (ec) return absl::NotFoundError(absl::StrCat("cannot read ", f.path));
    v1::FileInfo* info = header.mutable_header()->add_files();
    info->set_name(f.name);
    info->set_size(size);
    if (send_hashes) {
      auto sha = server::Sha256OfFile(f.path);
      if (!sha.ok()) return sha.status();
      info->set_sha256(*sha);
    }
    total += size;
  }
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration());
  v1::UploadModelResponse response;
  auto writer = stub_->UploadModel(&context, &response);
  bool open = writer->Write(header);
  int64_t done = 0;
  v1::UploadModelRequest chunk;
  std::string* buffer = chunk.mutable_chunk();  // read into the message: no copy per chunk
  for (size_t i = 0; open && i < files.size(); ++i) {
    std::ifstream in(files[i].path, std::ios::binary);
    if (!in) {
      context.TryCancel();
      writer->Finish();
      return absl::NotFoundError(absl::StrCat("cannot read ", files[i].path));
    }
    while (open) {
      buffer->resize(static_cast<size_t>(options_.chunk_bytes));
      in.read(buffer->data(), static_cast<std::streamsize>(buffer->size()));
      std::streamsize n = in.gcount();
      if (n <= 0) break;
      buffer->resize(static_cast<size_t>(n));
      open = writer->Write(chunk);  // false: the server has answered (or failed)
      done += n;
      if (progress && open) progress(done, total);
    }
  }
  if (open) writer->WritesDone();
  absl::Status st = FromGrpc(writer->Finish());
  if (!st.ok()) return st;
  if (progress) progress(total, total);
  return response;
}

absl::StatusOr<v1::UploadModelResponse> SqClient::UploadModel(const std::string& onnx_path,
                                                              const ProgressFn& progress) {
  auto files = ModelFiles(onnx_path);
  if (!files.ok()) return files.status();
  return Upload(*files, progress);
}

absl::StatusOr<v1::InspectModelResponse> SqClient::Inspect(const std::string& model) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::InspectModelRequest request;
  request.set_name(v1::ModelNameFromUser(model));
  v1::InspectModelResponse response;
  absl::Status st = FromGrpc(stub_->InspectModel(&context, request, &response));
  if (!st.ok()) return st;
  return response;
}

absl::StatusOr<v1::Job> SqClient::Submit(v1::SubmitJobRequest request) {
  request.set_model(v1::ModelNameFromUser(request.model()));
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::SubmitJobResponse response;
  absl::Status st = FromGrpc(stub_->SubmitJob(&context, request, &response));
  if (!st.ok()) return st;
  return std::move(*response.mutable_job());
}

absl::StatusOr<v1::Job> SqClient::Get(const std::string& job) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::GetJobRequest request;
  request.set_name(v1::JobNameFromUser(job));
  v1::GetJobResponse response;
  absl::Status st = FromGrpc(stub_->GetJob(&context, request, &response));
  if (!st.ok()) return st;
  return std::move(*response.mutable_job());
}

absl::StatusOr<std::vector<v1::Job>> SqClient::List(const std::vector<v1::JobState>& states,
                                                     int limit, int page_size) {
  std::vector<v1::Job> jobs;
  v1::ListJobsRequest request;
  for (v1::JobState s : states) request.add_states(s);
  request.set_page_size(page_size);
  do {
    grpc::ClientContext context;
    Prepare(&context, options_.unary_timeout);
    v1::ListJobsResponse response;
    absl::Status st = FromGrpc(stub_->ListJobs(&context, request, &response));
    if (!st.ok()) return st;
    for (v1::Job& j : *response.mutable_jobs()) {
      if (limit > 0 && static_cast<int>(jobs.size()) >= limit) return jobs;
      jobs.push_back(std::move(j));
    }
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty() && (limit <= 0 || static_cast<int>(jobs.size()) < limit));
  return jobs;
}

absl::StatusOr<v1::Job> SqClient::Cancel(const std::string& job) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::CancelJobRequest request;
  request.set_name(v1::JobNameFromUser(job));
  v1::CancelJobResponse response;
  absl::Status st = FromGrpc(stub_->CancelJob(&context, request, &response));
  if (!st.ok()) return st;
  return std::move(*response.mutable_job());
}

absl::StatusOr<std::vector<v1::Model>> SqClient::ListModels(int limit, int page_size) {
  std::vector<v1::Model> models;
  v1::ListModelsRequest request;
  request.set_page_size(page_size);
  do {
    grpc::ClientContext context;
    Prepare(&context, options_.unary_timeout);
    v1::ListModelsResponse response;
    absl::Status st = FromGrpc(stub_->ListModels(&context, request, &response));
    if (!st.ok()) return st;
    for (v1::Model& m : *response.mutable_models()) {
      if (limit > 0 && static_cast<int>(models.size()) >= limit) return models;
      models.push_back(std::move(m));
    }
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty() && (limit <= 0 || static_cast<int>(models.size()) < limit));
  return models;
}

absl::Status SqClient::DeleteModel(const std::string& model) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::DeleteModelRequest request;
  request.set_name(v1::ModelNameFromUser(model));
  v1::DeleteModelResponse response;
  return FromGrpc(stub_->DeleteModel(&context, request, &response));
}

absl::Status SqClient::Delete(const std::string& job) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::DeleteJobRequest request;
  request.set_name(v1::JobNameFromUser(job));
  v1::DeleteJobResponse response;
  return FromGrpc(stub_->DeleteJob(&context, request, &response));
}

absl::StatusOr<v1::GetReportResponse> SqClient::Report(const std::string& job) {
  grpc::ClientContext context;
  Prepare(&context, options_.unary_timeout);
  v1::GetReportRequest request;
  request.set_name(v1::JobNameFromUser(job));
  v1::GetReportResponse response;
  absl::Status st = FromGrpc(stub_->GetReport(&context, request, &response));
  if (!st.ok()) return st;
  return response;
}

absl::StatusOr<v1::Job> SqClient::Watch(const std::string& job,
                                        const std::function<void(const v1::Job&)>& on_update,
                                        absl::Duration timeout) {
  grpc::ClientContext context;
  Prepare(&context, timeout);
  v1::WatchJobRequest request;
  request.set_name(v1::JobNameFromUser(job));
  auto reader = stub_->WatchJob(&context, request);
  v1::WatchJobResponse message;
  v1::Job last;
  bool any = false;
  while (reader->Read(&message)) {
    any = true;
    if (on_update) on_update(message.job());
    last = std::move(*message.mutable_job());
  }
  absl::Status st = FromGrpc(reader->Finish());
  if (!st.ok()) return st;
  if (!any) return absl::InternalError("watch ended without a state");
  return last;
}

absl::Status SqClient::Download(const std::string& job, const std::string& artifact,
                                const std::string& dest, const ProgressFn& progress) {
  std::string partial = dest + ".partial";
  std::error_code ec;
  int64_t offset = fs::exists(partial, ec) ? static_cast<int64_t>(fs::file_size(partial, ec)) : 0;
  if (ec) offset = 0;
  grpc::ClientContext context;
  Prepare(&context, absl::ZeroDuration());
  v1::DownloadArtifactRequest request;
  request.set_job(v1::JobNameFromUser(job));
  request.set_artifact(artifact);
  request.set_offset(offset);
  auto reader = stub_->DownloadArtifact(&context, request);
  std::ofstream out;
  out.open(partial, std::ios::binary | (offset > 0 ? std::ios::app : std::ios::trunc));
  if (!out) {
    context.TryCancel();
    reader->Finish();
    return absl::PermissionDeniedError("cannot write " + partial);
  }
  v1::DownloadArtifactResponse chunk;
  v1::FileInfo info;
  int64_t position = offset;
  while (reader->Read(&chunk)) {
    if (chunk.has_file()) info = chunk.file();
    if (chunk.offset() != position) {
      context.TryCancel();
      reader->Finish();
      return absl::DataLossError("download stream out of order");
    }
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    position += static_cast<int64_t>(chunk.data().size());
    if (progress) progress(position, info.size());
  }
  out.close();
  absl::Status st = FromGrpc(reader->Finish());
  if (!st.ok()) {
    if (st.code() == absl::StatusCode::kOutOfRange) fs::remove(partial, ec);  // stale partial
    return st;
  }
  if (!out) return absl::ResourceExhaustedError("cannot write " + partial + " (disk full?)");
  if (position != info.size()) {
    return absl::DataLossError(absl::StrCat("download ended at ", position, " of ", info.size(),
                                            " bytes; run again to resume"));
  }
  auto sha = server::Sha256OfFile(partial);
  if (!sha.ok()) return sha.status();
  if (*sha != info.sha256()) {
    fs::remove(partial, ec);
    return absl::DataLossError(absl::StrCat("downloaded ", info.name(), " does not match its sha256 ",
                                            info.sha256(), "; removed, run again"));
  }
  fs::rename(partial, dest, ec);
  if (ec) return absl::InternalError("cannot rename " + partial + ": " + ec.message());
  return absl::OkStatus();
}

absl::Status SqClient::DownloadAll(const v1::Job& job, const std::string& dest,
                                   const ProgressFn& progress) {
  if (job.artifacts_size() == 0) {
    return absl::FailedPreconditionError(absl::StrCat("job ", job.job_id(), " has no artifacts"));
  }
  int64_t total = 0;
  for (const auto& f : job.artifacts()) total += f.size();
  int64_t before = 0;
  fs::path dir = fs::path(dest).parent_path();
  for (int i = 0; i < job.artifacts_size(); ++i) {
    const v1::FileInfo& f = job.artifacts(i);
    std::string path = i == 0 ? dest : (dir / f.name()).string();
    ProgressFn p;
    if (progress) p = [&](int64_t done, int64_t) { progress(before + done, total); };
    if (absl::Status st = Download(job.job_id(), f.name(), path, p); !st.ok()) return st;
    before += f.size();
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> SqClient::Health(const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext context;
  Prepare(&context, absl::Seconds(10));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  absl::Status st = FromGrpc(stub->Check(&context, request, &response));
  if (!st.ok()) return st;
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

}  // namespace sq::client
