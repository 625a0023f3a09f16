#include "server/service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/utf8.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "proto/resource_names.h"
#include "server/convert.h"
#include "server/published.h"

namespace sq::server {
namespace {

using grpc::Status;
using grpc::StatusCode;

// Under per-tenant access a job of another tenant is answered exactly as a job that does not
// exist (JobManager's "no job <id>"), so ids reveal nothing.
Status CheckOwner(const v1::Job& job, const std::string& tenant) {
  if (job.owner() == tenant) return Status::OK;
  return Status(StatusCode::NOT_FOUND, absl::StrCat("no job ", job.job_id()));
}

// The job `id`, when the caller's tenant may see it.
Status GetVisibleJob(JobManager* jobs, const std::string& id, const std::string& tenant, v1::Job* out) {
  auto job = jobs->Get(id);
  if (!job.ok()) return ToGrpc(job.status());
  if (Status st = CheckOwner(*job, tenant); !st.ok()) return st;
  *out = std::move(*job);
  return Status::OK;
}

// The id in a request's resource name (proto/resource_names.h): INVALID_ARGUMENT naming the
// field and the expected form otherwise. Only the form is checked here; the id then meets
// exactly the checks a bare id always met (well-formed, existing, the tenant's).
Status JobIdOf(const std::string& name, absl::string_view field, std::string* id) {
  auto parsed = v1::ParseJobName(name, field);
  if (!parsed.ok()) return ToGrpc(parsed.status());
  *id = std::move(*parsed);
  return Status::OK;
}

Status ModelIdOf(const std::string& name, absl::string_view field, std::string* id) {
  auto parsed = v1::ParseModelName(name, field);
  if (!parsed.ok()) return ToGrpc(parsed.status());
  *id = std::move(*parsed);
  return Status::OK;
}

// ListJobs / ListModels: 0 (unset) = 100 per page, at most 1000.
int PageSize(int32_t requested) { return requested <= 0 ? 100 : std::min<int32_t>(requested, 1000); }

// The same for models: a tenant uses only what it uploaded itself.
Status CheckModelOwner(const ArtifactStore& store, const std::string& model_id, const std::string& tenant) {
  if (tenant.empty() || store.HasModelOwner(model_id, tenant)) return Status::OK;
  return Status(StatusCode::NOT_FOUND, absl::StrCat("no model ", model_id));
}

// ---- UploadModel --------------------------------------------------------------------------

// The reactor only receives: each chunk is moved into a queue that a writer thread of the
// upload drains into the UploadSession (disk write and SHA-256), so receiving the next chunk
// overlaps storing this one. The queue holds at most ServiceOptions::upload_buffer_bytes;
// when full, the next read waits until the writer has stored half of it (the client is
// then held by gRPC's flow control). After the header every session call, and the Finish
// that ends a stored, rejected or failed upload, happens on the writer thread; the reactor
// finishes only before the header, or when the writer failed while a read was outstanding
// (so Finish never races an outstanding read).
class UploadReactor final : public grpc::ServerReadReactor<v1::UploadModelRequest> {
 public:
  UploadReactor(SqService* service, grpc::CallbackServerContext* context,
                v1::UploadModelResponse* response)
      : service_(service), context_(context), response_(response) {
    Published::OnExit publish(&published_);
    if (Status st = service_->auth().Authenticate(*context, &tenant_); !st.ok()) {
      Reject(st);
      return;
    }
    if (service_->jobs()->draining()) {
      Reject(Status(StatusCode::UNAVAILABLE, "server is shutting down; not accepting uploads"));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    published_.Acquire();
    if (!session_) {
      if (!ok) {
        Reject(Status(StatusCode::INVALID_ARGUMENT, "upload ended before its header"));
      } else {
        Header();
      }
      return;
    }
    Item item;
    if (!ok) {  // the client half-closed (or went away)
      item.kind = Item::kEnd;
    } else if (request_.kind_case() != v1::UploadModelRequest::kChunk) {
      item.kind = Item::kReject;
      item.status = Status(StatusCode::INVALID_ARGUMENT, "upload header sent twice");
    } else {
      item.data.swap(*request_.mutable_chunk());
    }
    std::unique_lock<std::mutex> lock(mu_);
    reading_ = false;
    if (failed_) {  // the writer stopped while this read was outstanding: finishing is ours
      lock.unlock();
      Finish(failure_);
      return;
    }
    const bool more = item.kind == Item::kChunk;
    queued_ += static_cast<int64_t>(item.data.size());
    items_.push_back(std::move(item));
    ready_.notify_one();
    if (!more) return;
    if (queued_ < BufferLimit()) {
      reading_ = true;
      lock.unlock();
      published_.Release();
      StartRead(&request_);
    } else {
      paused_ = true;
    }
  }

  void OnDone() override {
    published_.Acquire();
    if (writer_.joinable()) {
      if (writer_.get_id() == std::this_thread::get_id()) {
        writer_.detach();  // Finish ran OnDone inline on the writer, which touches nothing after
      } else {
        writer_.join();
      }
    }
    session_.reset();  // an unfinished upload's temporary files are removed here
    delete this;
  }

 private:
  struct Item {
    enum Kind { kChunk, kEnd, kReject } kind = kChunk;
    std::string data;
    Status status;
  };

  void Header() {
    if (request_.kind_case() != v1::UploadModelRequest::kHeader) {
      Reject(Status(StatusCode::INVALID_ARGUMENT, "the first upload message must be the header"));
      return;
    }
    std::vector<StoredFile> files;
    int64_t total = 0;
    bool all_hashed = true;
    for (const v1::FileInfo& f : request_.header().files()) {
      StoredFile s{f.name(), f.size(), absl::AsciiStrToLower(f.sha256())};
      all_hashed = all_hashed && !s.sha256.empty();
      if (s.size > 0) total += s.size;
      files.push_back(std::move(s));
    }
    if (files.empty()) {
      Reject(Status(StatusCode::INVALID_ARGUMENT, "upload header names no files"));
      return;
    }
    int64_t limit = service_->options().max_upload_bytes;
    if (total > limit) {
      Reject(Status(StatusCode::RESOURCE_EXHAUSTED,
                    absl::StrCat("upload of ", total, " bytes exceeds this server's limit of ",
                                 limit, " bytes (sq-server --max_upload_bytes)")));
      return;
    }
    if (all_hashed) {
      std::string id = Sha256Hex(ManifestText(files));
      if (service_->store()->HasModel(id) &&
          (tenant_.empty() || service_->store()->HasModelOwner(id, tenant_))) {
        // Already stored: answer now, without reading the data again.
        service_->store()->TouchModel(id);
        response_->set_model_id(id);
        response_->set_name(v1::ModelName(id));
        for (const StoredFile& f : files) {
          v1::FileInfo* w = response_->add_files();
          w->set_name(f.name);
          w->set_size(f.size);
          w->set_sha256(f.sha256);
        }
        response_->set_deduplicated(true);
        if (service_->metrics()) service_->metrics()->Upload("deduplicated");
        Finish(Status::OK);
        return;
      }
    }
    auto session = service_->store()->BeginUpload(std::move(files));
    if (!session.ok()) {
      Reject(ToGrpc(session.status()));
      return;
    }
    session_ = std::move(*session);
    reading_ = true;
    writer_ = std::thread([this] { Store(); });
    published_.Release();
    StartRead(&request_);
  }

  int64_t BufferLimit() const { return std::max<int64_t>(1, service_->options().upload_buffer_bytes); }

  // The writer thread: stores chunks in order until the end of the stream, a rejected
  // message or a failed write, and finishes the call (or leaves that to the reactor, see
  // above). Returns right after Finish: OnDone may already have run.
  void Store() {
    for (;;) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mu_);
        ready_.wait(lock, [&] { return !items_.empty(); });
        item = std::move(items_.front());
        items_.pop_front();
      }
      if (item.kind == Item::kEnd) {
        EndOfStream();
        return;
      }
      if (item.kind == Item::kReject) {
        Reject(item.status);
        return;
      }
      absl::Status st = session_->Append(item.data);
      if (service_->metrics()) service_->metrics()->BytesUploaded(static_cast<int64_t>(item.data.size()));
      std::unique_lock<std::mutex> lock(mu_);
      queued_ -= static_cast<int64_t>(item.data.size());
      if (!st.ok()) {
        failed_ = true;
        failure_ = ToGrpc(st);
        Abandon(failure_);
        if (reading_) return;  // OnReadDone finishes
        lock.unlock();
        Finish(failure_);
        return;
      }
      if (paused_ && queued_ <= BufferLimit() / 2) {
        paused_ = false;
        reading_ = true;
        lock.unlock();
        published_.Release();
        StartRead(&request_);
      }
    }
  }

  void EndOfStream() {
    if (context_->IsCancelled()) {
      session_->Abort();
      Reject(Status(StatusCode::CANCELLED, "upload cancelled by the client"));
      return;
    }
    int64_t received = session_->bytes_received();
    auto result = session_->Commit();
    if (!result.ok()) {
      Reject(ToGrpc(result.status()));
      return;
    }
    bool deduplicated = result->deduplicated;
    if (deduplicated) service_->store()->TouchModel(result->model_id);
    if (!tenant_.empty()) {
      // The tenant proved it holds these files by sending them: it may use the model now.
      // "deduplicated" only when it had uploaded them before, never because another did.
      deduplicated = deduplicated && service_->store()->HasModelOwner(result->model_id, tenant_);
      if (absl::Status st = service_->store()->AddModelOwner(result->model_id, tenant_); !st.ok()) {
        Reject(ToGrpc(st));
        return;
      }
    }
    response_->set_model_id(result->model_id);
    response_->set_name(v1::ModelName(result->model_id));
    for (const StoredFile& f : result->files) {
      v1::FileInfo* w = response_->add_files();
      w->set_name(f.name);
      w->set_size(f.size);
      w->set_sha256(f.sha256);
    }
    response_->set_deduplicated(deduplicated);
    response_->set_bytes_received(received);
    if (service_->metrics()) {
      service_->metrics()->Upload(deduplicated ? "deduplicated" : "stored");
    }
    Finish(Status::OK);
  }

  // Drops what was received and counts the refusal; the caller finishes the call.
  void Abandon(const Status& status) {
    if (session_) session_->Abort();
    if (service_->metrics() && status.error_code() != StatusCode::UNAUTHENTICATED) {
      service_->metrics()->Upload("rejected");
    }
  }

  void Reject(const Status& status) {
    Abandon(status);
    Finish(status);
  }

  Published published_;
  SqService* const service_;
  grpc::CallbackServerContext* const context_;
  v1::UploadModelResponse* const response_;
  v1::UploadModelRequest request_;
  std::unique_ptr<UploadSession> session_;
  std::string tenant_;
  std::thread writer_;
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<Item> items_;   // guarded by mu_, like the four below
  int64_t queued_ = 0;       // chunk bytes in items_
  bool reading_ = false;     // a StartRead is outstanding
  bool paused_ = false;      // the queue was full: the writer starts the next read
  bool failed_ = false;      // the writer stopped on failure_
  Status failure_;
};

// ---- WatchJob -----------------------------------------------------------------------------

class WatchReactor final : public grpc::ServerWriteReactor<v1::WatchJobResponse>, public JobWatcher {
 public:
  WatchReactor(SqService* service, grpc::CallbackServerContext* context, const std::string& name)
      : service_(service) {
    Published::OnExit publish(&published_);
    std::string tenant;
    if (Status st = service_->auth().Authenticate(*context, &tenant); !st.ok()) {
      FinishOnce(st);
      return;
    }
    if (Status st = JobIdOf(name, "name", &job_id_); !st.ok()) {
      FinishOnce(st);
      return;
    }
    if (Status st = service_->CheckJobVisible(job_id_, tenant); !st.ok()) {
      FinishOnce(st);
      return;
    }
    registered_ = true;
    absl::Status st = service_->jobs()->AddWatcher(job_id_, this);  // delivers the state now
    if (!st.ok()) {
      registered_ = false;
      FinishOnce(ToGrpc(st));
    }
  }

  void OnJobUpdate(const v1::Job& job) override {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      pending_ = job;
      has_pending_ = true;
      if (writing_) return;  // OnWriteDone picks up the newest state
      writing_ = true;
      *current_.mutable_job() = std::move(pending_);
      has_pending_ = false;
    }
    published_.Release();
    StartWrite(&current_);
  }

  void OnWriteDone(bool ok) override {
    published_.Acquire();
    bool finish = false, write = false;
    Status status;
    {
      absl::MutexLock lock(&mu_);
      if (!ok || cancelled_) {
        finished_ = finish = true;
        status = Status(StatusCode::CANCELLED, "watch cancelled");
      } else if (IsTerminal(current_.job().state())) {
        finished_ = finish = true;
      } else if (has_pending_) {
        *current_.mutable_job() = std::move(pending_);
        has_pending_ = false;
        write = true;
      } else {
        writing_ = false;
      }
    }
    if (finish) Finish(status);
    if (write) {
      published_.Release();
      StartWrite(&current_);
    }
  }

  void OnCancel() override {
    published_.Acquire();
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (!finished_ && !writing_) finished_ = finish = true;
    }
    if (finish) Finish(Status(StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    published_.Acquire();
    if (registered_) service_->jobs()->RemoveWatcher(job_id_, this);
    delete this;
  }

 private:
  void FinishOnce(const Status& st) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
    }
    Finish(st);
  }

  Published published_;
  SqService* const service_;
  std::string job_id_;  // set once, in the constructor
  bool registered_ = false;
  absl::Mutex mu_;
  v1::WatchJobResponse current_;  // the message being written
  v1::Job pending_ ABSL_GUARDED_BY(mu_);
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// ---- DownloadArtifact ---------------------------------------------------------------------

class DownloadReactor final : public grpc::ServerWriteReactor<v1::DownloadArtifactResponse> {
 public:
  DownloadReactor(SqService* service, grpc::CallbackServerContext* context,
                  const v1::DownloadArtifactRequest& request)
      : service_(service) {
    Published::OnExit publish(&published_);
    std::string tenant;
    if (Status st = service_->auth().Authenticate(*context, &tenant); !st.ok()) {
      Finish(st);
      return;
    }
    std::string job_id;
    if (Status st = JobIdOf(request.job(), "job", &job_id); !st.ok()) {
      Finish(st);
      return;
    }
    auto job = std::make_unique<v1::Job>();
    if (Status st = GetVisibleJob(service_->jobs(), job_id, tenant, job.get()); !st.ok()) {
      Finish(st);
      return;
    }
    if (job->state() != v1::JOB_STATE_SUCCEEDED) {
      Finish(Status(StatusCode::FAILED_PRECONDITION,
                    absl::StrCat("job ", job->job_id(), " is ", StateName(job->state()),
                                 "; artifacts exist only once it has SUCCEEDED")));
      return;
    }
    const v1::FileInfo* file = nullptr;
    for (const v1::FileInfo& f : job->artifacts()) {
      if (request.artifact().empty() ? &f == &job->artifacts(0) : f.name() == request.artifact()) file = &f;
    }
    if (!file) {
      Finish(Status(StatusCode::NOT_FOUND,
                    absl::StrCat("job ", job->job_id(), " has no artifact \"", request.artifact(), "\"")));
      return;
    }
    info_ = *file;
    // A shared hold on the job for as long as this stream lives: retention on any server
    // sharing the directory skips the job until it is released.
    auto hold = service_->store()->HoldJobShared(job->job_id());
    if (!hold.ok()) {
      Finish(Status(StatusCode::NOT_FOUND, absl::StrCat("job ", job->job_id(), " is being deleted")));
      return;
    }
    hold_ = std::move(*hold);
    std::string path = service_->store()->JobDir(job->job_id()) + "/out/" + info_.name();
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      Finish(Status(StatusCode::NOT_FOUND, "artifact vanished (job deleted?)"));
      return;
    }
    struct stat st;
    if (::fstat(fd_, &st) != 0 || st.st_size != info_.size()) {
      Finish(Status(StatusCode::INTERNAL, "artifact size differs from the job record"));
      return;
    }
    if (request.offset() < 0 || request.offset() > info_.size()) {
      Finish(Status(StatusCode::OUT_OF_RANGE,
                    absl::StrCat("offset ", request.offset(), " outside 0..", info_.size())));
      return;
    }
    position_ = request.offset();
    buffer_.resize(static_cast<size_t>(std::max<int64_t>(4096, service_->options().chunk_bytes)));
    Next();
  }

  void OnWriteDone(bool ok) override {
    published_.Acquire();
    if (!ok) {
      Finish(Status(StatusCode::CANCELLED, "download cancelled"));
      return;
    }
    Next();
  }

  void OnDone() override {
    published_.Acquire();
    if (fd_ >= 0) ::close(fd_);
    delete this;  // releases hold_
  }

 private:
  void Next() {
    ssize_t n;
    do {
      n = ::pread(fd_, buffer_.data(), buffer_.size(), position_);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      Finish(Status(StatusCode::INTERNAL, "read error on artifact"));
      return;
    }
    if (n == 0 && !first_) {
      Finish(Status::OK);
      return;
    }
    response_.Clear();
    if (first_) *response_.mutable_file() = info_;
    first_ = false;
    response_.set_offset(position_);
    response_.set_data(buffer_.data(), static_cast<size_t>(n));
    position_ += n;
    if (service_->metrics()) service_->metrics()->BytesDownloaded(n);
    published_.Release();
    StartWrite(&response_);
  }

  Published published_;
  SqService* const service_;
  v1::FileInfo info_;
  std::unique_ptr<JobLock> hold_;
  int fd_ = -1;
  int64_t position_ = 0;
  bool first_ = true;
  std::string buffer_;
  v1::DownloadArtifactResponse response_;
};

}  // namespace

SqService::SqService(ArtifactStore* store, JobManager* jobs, std::shared_ptr<EnginePort> engine,
                     ServerMetrics* metrics, JobQueue* control_pool, ServiceOptions options)
    : store_(store),
      jobs_(jobs),
      engine_(std::move(engine)),
      metrics_(metrics),
      control_pool_(control_pool),
      options_(std::move(options)),
      auth_(options_.tenants.empty() ? BearerAuth(options_.auth_token) : BearerAuth(options_.tenants)) {}

grpc::Status SqService::CheckJobVisible(const std::string& job_id, const std::string& tenant) const {
  if (!auth_.per_tenant()) return Status::OK;  // one namespace: every caller sees every job
  v1::Job job;
  return GetVisibleJob(jobs_, job_id, tenant, &job);
}

grpc::ServerReadReactor<v1::UploadModelRequest>* SqService::UploadModel(
    grpc::CallbackServerContext* context, v1::UploadModelResponse* response) {
  return new UploadReactor(this, context, response);
}

grpc::ServerUnaryReactor* SqService::InspectModel(grpc::CallbackServerContext* context,
                                                  const v1::InspectModelRequest* request,
                                                  v1::InspectModelResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::string model_id;
  if (Status st = ModelIdOf(request->name(), "name", &model_id); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  if (Status st = CheckModelOwner(*store_, model_id, tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  auto files = store_->GetModelFiles(model_id);
  if (!files.ok()) {
    reactor->Finish(ToGrpc(files.status()));
    return reactor;
  }
  std::string path = store_->ModelPath(model_id, (*files)[0]);
  // Parsing a model is engine work: it runs on the control pool, never on this thread.
  JobQueue::Task task;
  task.run = [this, reactor, response, path] {
    auto info = engine_->Inspect(path);
    if (info.ok()) *response = ToWire(*info);
    reactor->Finish(ToGrpc(info.status()));
  };
  task.abandon = [reactor] {
    reactor->Finish(Status(StatusCode::UNAVAILABLE, "server is shutting down"));
  };
  if (absl::Status st = control_pool_->Submit(std::move(task)); !st.ok()) {
    reactor->Finish(ToGrpc(st));
  }
  return reactor;
}

grpc::ServerUnaryReactor* SqService::SubmitJob(grpc::CallbackServerContext* context,
                                               const v1::SubmitJobRequest* request,
                                               v1::SubmitJobResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::string model_id;
  if (Status st = ModelIdOf(request->model(), "model", &model_id); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  auto job = jobs_->Submit(model_id, *request, tenant);
  if (job.ok()) *response->mutable_job() = std::move(*job);
  reactor->Finish(ToGrpc(job.status()));
  return reactor;
}

grpc::ServerUnaryReactor* SqService::GetJob(grpc::CallbackServerContext* context,
                                            const v1::GetJobRequest* request, v1::GetJobResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::string job_id;
  if (Status st = JobIdOf(request->name(), "name", &job_id); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  reactor->Finish(GetVisibleJob(jobs_, job_id, tenant, response->mutable_job()));
  return reactor;
}

grpc::ServerUnaryReactor* SqService::ListJobs(grpc::CallbackServerContext* context,
                                              const v1::ListJobsRequest* request,
                                              v1::ListJobsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  // Pages follow JobManager::List's order (newest first, then by id); a token names the
  // last job returned by its creation time and id, so new jobs shift nothing.
  struct Position {
    int64_t seconds = 0;
    int32_t nanos = 0;
    std::string id;
  };
  std::optional<Position> after;
  if (!request->page_token().empty()) {
    std::string raw;
    std::vector<std::string> f;
    if (absl::WebSafeBase64Unescape(request->page_token(), &raw)) f = absl::StrSplit(raw, ':');
    Position p;
    if (f.size() != 4 || f[0] != "v1" || !absl::SimpleAtoi(f[1], &p.seconds) ||
        !absl::SimpleAtoi(f[2], &p.nanos) || !IsValidJobId(f[3])) {
      reactor->Finish(Status(StatusCode::INVALID_ARGUMENT, "page_token is not one this server gave"));
      return reactor;
    }
    p.id = f[3];
    after = p;
  }
  const int page = PageSize(request->page_size());
  auto comes_after = [&](const v1::Job& j) {
    const auto& t = j.create_time();
    if (t.seconds() != after->seconds) return t.seconds() < after->seconds;
    if (t.nanos() != after->nanos) return t.nanos() < after->nanos;
    return j.job_id() > after->id;
  };
  std::vector<v1::JobState> states;
  for (int s : request->states()) states.push_back(static_cast<v1::JobState>(s));
  bool more = false;
  for (v1::Job& job : jobs_->List(states)) {
    if (job.owner() != tenant || (after && !comes_after(job))) continue;
    if (response->jobs_size() == page) {
      more = true;
      break;
    }
    *response->add_jobs() = std::move(job);
  }
  if (more) {
    const v1::Job& last = response->jobs(response->jobs_size() - 1);
    response->set_next_page_token(absl::WebSafeBase64Escape(absl::StrCat(
        "v1:", last.create_time().seconds(), ":", last.create_time().nanos(), ":", last.job_id())));
  }
  reactor->Finish(Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* SqService::WatchJob(grpc::CallbackServerContext* context,
                                                       const v1::WatchJobRequest* request) {
  return new WatchReactor(this, context, request->name());
}

grpc::ServerUnaryReactor* SqService::CancelJob(grpc::CallbackServerContext* context,
                                               const v1::CancelJobRequest* request,
                                               v1::CancelJobResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::string job_id;
  if (Status st = JobIdOf(request->name(), "name", &job_id); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  if (Status st = CheckJobVisible(job_id, tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  auto job = jobs_->Cancel(job_id);
  if (job.ok()) *response->mutable_job() = std::move(*job);
  reactor->Finish(ToGrpc(job.status()));
  return reactor;
}

grpc::ServerUnaryReactor* SqService::DeleteJob(grpc::CallbackServerContext* context,
                                               const v1::DeleteJobRequest* request,
                                               v1::DeleteJobResponse*) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::string job_id;
  if (Status st = JobIdOf(request->name(), "name", &job_id); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  if (Status st = CheckJobVisible(job_id, tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  reactor->Finish(ToGrpc(jobs_->Delete(job_id)));
  return reactor;
}

grpc::ServerUnaryReactor* SqService::ListModels(grpc::CallbackServerContext* context,
                                                const v1::ListModelsRequest* request,
                                                v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  // Ids are immutable and listed in order: a token names the last id returned.
  std::string after;
  if (!request->page_token().empty()) {
    std::string raw;
    if (!absl::WebSafeBase64Unescape(request->page_token(), &raw) || !absl::StartsWith(raw, "m1:") ||
        !IsValidModelId(raw.substr(3))) {
      reactor->Finish(Status(StatusCode::INVALID_ARGUMENT, "page_token is not one this server gave"));
      return reactor;
    }
    after = raw.substr(3);
  }
  const int page = PageSize(request->page_size());
  for (const std::string& id : store_->ListModelIds()) {  // sorted
    if (id <= after || (!tenant.empty() && !store_->HasModelOwner(id, tenant))) continue;
    auto files = store_->GetModelFiles(id);
    auto used = store_->ModelLastUsed(id);
    if (!files.ok() || !used.ok()) continue;  // removed meanwhile
    if (response->models_size() == page) {
      response->set_next_page_token(
          absl::WebSafeBase64Escape(absl::StrCat("m1:", response->models(page - 1).model_id())));
      break;
    }
    v1::Model* m = response->add_models();
    m->set_model_id(id);
    m->set_name(v1::ModelName(id));
    for (const StoredFile& f : *files) {
      v1::FileInfo* w = m->add_files();
      w->set_name(ToValidUtf8(f.name));
      w->set_size(f.size);
      w->set_sha256(f.sha256);
    }
    m->set_size_bytes(store_->ModelBytes(id));
    *m->mutable_last_use_time() = google::protobuf::util::TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(*used));
  }
  reactor->Finish(Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* SqService::DeleteModel(grpc::CallbackServerContext* context,
                                                 const v1::DeleteModelRequest* request,
                                                 v1::DeleteModelResponse*) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::string model_id;
  if (Status st = ModelIdOf(request->name(), "name", &model_id); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  if (!IsValidModelId(model_id)) {
    reactor->Finish(Status(StatusCode::INVALID_ARGUMENT,
                           absl::StrCat("model id \"", ToValidUtf8(model_id),
                                        "\" is not 64 lower-case hex digits")));
    return reactor;
  }
  reactor->Finish(ToGrpc(jobs_->DeleteModel(model_id, tenant)));
  return reactor;
}

grpc::ServerWriteReactor<v1::DownloadArtifactResponse>* SqService::DownloadArtifact(
    grpc::CallbackServerContext* context, const v1::DownloadArtifactRequest* request) {
  return new DownloadReactor(this, context, *request);
}

grpc::ServerUnaryReactor* SqService::GetReport(grpc::CallbackServerContext* context,
                                               const v1::GetReportRequest* request,
                                               v1::GetReportResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::string tenant;
  if (Status st = auth_.Authenticate(*context, &tenant); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  std::string job_id;
  if (Status st = JobIdOf(request->name(), "name", &job_id); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  auto job = std::make_unique<v1::Job>();
  if (Status st = GetVisibleJob(jobs_, job_id, tenant, job.get()); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    reactor->Finish(Status(StatusCode::FAILED_PRECONDITION,
                           absl::StrCat("job ", job->job_id(), " is ", StateName(job->state()),
                                        "; the report exists only once it has SUCCEEDED")));
    return reactor;
  }
  std::string dir = store_->JobDir(job->job_id());
  auto json = ReadFileToString(dir + "/report.json");
  auto text = ReadFileToString(dir + "/report.txt");
  if (!json.ok() || !text.ok()) {
    reactor->Finish(Status(StatusCode::NOT_FOUND, "report vanished (job deleted?)"));
    return reactor;
  }
  // The structured copy of the same report; JSON numbers become doubles.
  if (!google::protobuf::util::JsonStringToMessage(*json, response->mutable_report()).ok()) {
    reactor->Finish(Status(StatusCode::INTERNAL, "the stored report is not valid JSON"));
    return reactor;
  }
  response->set_json(std::move(*json));
  response->set_summary(std::move(*text));
  reactor->Finish(Status::OK);
  return reactor;
}

}  // namespace sq::server
