#include "server/job_manager.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "core/report.h"
#include "core/utf8.h"
#include "core/verify/verify.h"
#include "proto/resource_names.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "server/convert.h"
#include "server/log.h"

namespace sq::server {
namespace fs = std::filesystem;
using google::protobuf::util::TimeUtil;

namespace {

// Idempotency keys are the tenant's own: stored under tenant and key (ArtifactStore keys/).
std::string IdempotencyMapKey(const std::string& owner, const std::string& key) {
  return key.empty() ? "" : absl::StrCat(owner, "\n", key);
}


constexpr char kInterrupted[] = "interrupted: the server stopped before the job finished";

// Full precision (protobuf's GetCurrentTime gave whole seconds here): ListJobs orders and
// pages by creation time, and jobs submitted within one second must keep their order.
google::protobuf::Timestamp Now() {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(absl::Now()));
}

std::string ToJson(const v1::Job& job) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(job, &out, opts);
  return out;
}

absl::StatusOr<v1::Job> FromJson(const std::string& text) {
  v1::Job job;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;  // records written by a newer server
  auto st = google::protobuf::util::JsonStringToMessage(text, &job, opts);
  if (!st.ok()) return absl::InternalError(absl::StrCat("corrupt job record: ", st.ToString()));
  // Records written before sq.v1 had resource names carry only the ids.
  if (job.name().empty()) job.set_name(v1::JobName(job.job_id()));
  if (job.model().empty()) job.set_model(v1::ModelName(job.model_id()));
  return job;
}

void LogError(const absl::Status& st, absl::string_view what) {
  LogEvent("error", "error", {{"what", std::string(what)}, {"status", st.ToString()}});
}

const char* Outcome(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "failed";
  }
}

}  // namespace

struct JobManager::Entry {
  absl::Mutex mu;
  v1::Job job ABSL_GUARDED_BY(mu);
  std::unique_ptr<JobLock> lock ABSL_GUARDED_BY(mu);
  std::vector<JobWatcher*> watchers ABSL_GUARDED_BY(mu);
  std::atomic<bool> cancel{false};
  // Fixed at submission.
  std::string id;
  QuantizeOptions options;
  std::string input_path;
  std::string output_name;
  absl::Time enqueued;
  absl::Time started;
};

JobManager::JobManager(ArtifactStore* store, std::shared_ptr<EnginePort> engine,
                       ServerMetrics* metrics, JobManagerOptions options)
    : store_(store), engine_(std::move(engine)), metrics_(metrics), options_(options) {
  JobQueue::Options q;
  q.workers = std::max(1, options_.workers);
  q.capacity = std::max(0, options_.queue_capacity);
  q.name = "job";
  queue_ = std::make_unique<JobQueue>(q);
  if (metrics_) metrics_->SetWorkerSlots(q.workers);
  poller_ = std::thread([this] { PollRemote(); });
}

JobManager::~JobManager() {
  Drain(absl::ZeroDuration());
  {
    absl::MutexLock lock(&remote_mu_);
    stop_poller_ = true;
  }
  poller_.join();
}

void JobManager::Recover() {
  for (const std::string& id : store_->ListJobIds()) {
    auto job = ReadFromDisk(id);  // marks unowned unfinished jobs FAILED "interrupted"
    if (!job.ok()) {
      LogError(job.status(), "recovering job " + id);
      continue;
    }
  }
}

std::shared_ptr<JobManager::Entry> JobManager::Find(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : it->second;
}

absl::StatusOr<v1::Job> JobManager::ReadFromDisk(const std::string& job_id) {
  if (!IsValidJobId(job_id)) {
    return absl::InvalidArgumentError(absl::StrCat("malformed job id \"", job_id, "\""));
  }
  auto text = store_->ReadJobRecord(job_id);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  auto job = FromJson(*text);
  if (!job.ok() || IsTerminal(job->state())) return job;
  // Unfinished: owned by a live server (its lock is held), or its server died.
  auto lock = store_->TryLockJob(job_id);
  if (!lock.ok()) return job;  // a live owner
  // We hold the lock now; the owner may have finished just before releasing it.
  text = store_->ReadJobRecord(job_id);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  job = FromJson(*text);
  if (!job.ok() || IsTerminal(job->state())) return job;
  job->set_state(v1::JOB_STATE_FAILED);
  job->mutable_error()->set_code(static_cast<int>(absl::StatusCode::kAborted));
  job->mutable_error()->set_message(kInterrupted);
  *job->mutable_end_time() = Now();
  if (absl::Status st = store_->WriteJobRecord(job_id, ToJson(*job)); !st.ok()) {
    LogError(st, "recording interrupted job " + job_id);
  }
  return job;
}

absl::StatusOr<v1::Job> JobManager::Submit(const std::string& model_id,
                                           const v1::SubmitJobRequest& request,
                                           const std::string& owner) {
  if (draining_) {
    if (metrics_) metrics_->JobRejected("draining");
    return absl::UnavailableError("server is shutting down; not accepting jobs");
  }
  if (!owner.empty() && !store_->HasModelOwner(model_id, owner)) {
    // The same answer as for a model that does not exist: an id alone grants nothing.
    return absl::NotFoundError(absl::StrCat("no model ", model_id));
  }
  auto files = store_->GetModelFiles(model_id);
  if (!files.ok()) return files.status();
  auto options = ToEngineOptions(request.options(), options_.default_job_threads);
  if (!options.ok()) return options.status();
  // Before the job exists: retention counts the model's age from here, and a sweep that
  // listed the model earlier sees the touch and keeps it (retention.h).
  store_->TouchModel(model_id);

  const std::string key = IdempotencyMapKey(owner, request.idempotency_key());
  // The job a key already made, on any server sharing the directory.
  auto job_of_key = [&](const std::string& existing) -> absl::StatusOr<v1::Job> {
    auto job = Get(existing);
    if (!job.ok()) return job.status();
    if (job->model_id() != model_id) {
      return absl::InvalidArgumentError(absl::StrCat(
          "idempotency key \"", request.idempotency_key(), "\" was already used for job ", existing,
          " on another model"));
    }
    return job;
  };
  if (!key.empty()) {
    if (auto existing = store_->LookupIdempotencyKey(key); existing.ok()) {
      auto job = job_of_key(*existing);
      if (!absl::IsNotFound(job.status())) return job;
      store_->ReleaseIdempotencyKey(key, *existing);  // its job was deleted: the key is free
    }
  }

  auto entry = std::make_shared<Entry>();
  entry->options = *options;
  if (!options->verify_input.empty()) {
    // A file uploaded with the model, named as uploaded: never a path of the server's.
    const StoredFile* found = nullptr;
    for (size_t k = 1; k < files->size(); ++k) {
      if ((*files)[k].name == options->verify_input) found = &(*files)[k];
    }
    if (found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "options.verify_input \"", ToValidUtf8(options->verify_input),
          "\" names no file uploaded with model ", model_id,
          " (upload it with the model: sqctl submit --verify-input FILE)"));
    }
    entry->options.verify_input = store_->ModelPath(model_id, *found);
  }
  // Calibration samples the same way: each name a file uploaded with the model.
  for (size_t i = 0; i < options->calibration_inputs.size(); ++i) {
    const std::string& name = options->calibration_inputs[i];
    const StoredFile* found = nullptr;
    for (size_t k = 1; k < files->size(); ++k) {
      if ((*files)[k].name == name) found = &(*files)[k];
    }
    if (found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "options.calibration_inputs[", i, "] \"", ToValidUtf8(name), "\" names no file uploaded with model ",
          model_id, " (upload it with the model: sqctl submit --calibration FILE)"));
    }
    entry->options.calibration_inputs[i] = store_->ModelPath(model_id, *found);
  }
  entry->input_path = store_->ModelPath(model_id, (*files)[0]);
  std::string base = fs::path((*files)[0].name).filename().string();
  entry->output_name = base.empty() ? "model.onnx" : base;
  v1::Job snapshot;
  for (int attempt = 0;; ++attempt) {
    entry->id = NewJobId();
    auto lock = store_->CreateJob(entry->id);
    if (lock.ok()) {
      absl::MutexLock l(&entry->mu);
      entry->lock = std::move(*lock);
      break;
    }
    if (!absl::IsAlreadyExists(lock.status()) || attempt > 3) return lock.status();
  }
  {
    absl::MutexLock l(&entry->mu);
    v1::Job& job = entry->job;
    job.set_job_id(entry->id);
    job.set_model_id(model_id);
    job.set_name(v1::JobName(entry->id));
    job.set_model(v1::ModelName(model_id));
    job.set_state(v1::JOB_STATE_QUEUED);
    *job.mutable_options() = ToWireOptions(*options);
    job.mutable_progress()->set_stage("queued");
    *job.mutable_create_time() = Now();
    job.set_idempotency_key(request.idempotency_key());
    job.set_owner(owner);
    absl::Status st = store_->WriteJobRecord(entry->id, ToJson(job));
    if (!st.ok()) {
      entry->lock.reset();
      (void)store_->DeleteJob(entry->id);
      return st;
    }
    snapshot = job;
  }
  entry->enqueued = absl::Now();
  if (!key.empty()) {
    // A concurrent Submit with the same key (here or on another server) may have won.
    absl::Status claim = store_->ClaimIdempotencyKey(key, entry->id);
    if (!claim.ok()) {
      {
        absl::MutexLock l(&entry->mu);
        entry->lock.reset();
      }
      (void)store_->DeleteJob(entry->id);
      if (absl::IsAlreadyExists(claim)) return job_of_key(std::string(claim.message()));
      return claim;
    }
  }
  {
    absl::MutexLock lock(&mu_);
    jobs_[entry->id] = entry;
  }
  JobQueue::Task task;
  task.run = [this, entry] {
    // No exception may leave a worker: it would reach std::terminate and take every
    // running job with it. The engine reports errors as Status; this is the last guard.
    try {
      Run(entry);
    } catch (const std::exception& ex) {
      Finish(entry, v1::JOB_STATE_FAILED, static_cast<int>(absl::StatusCode::kInternal),
             absl::StrCat("internal error: ", ex.what()));
    } catch (...) {
      Finish(entry, v1::JOB_STATE_FAILED, static_cast<int>(absl::StatusCode::kInternal),
             "internal error: unknown exception");
    }
  };
  task.abandon = [this, entry] {
    Finish(entry, v1::JOB_STATE_FAILED, static_cast<int>(absl::StatusCode::kUnavailable),
           "server shut down before the job started; submit it again");
  };
  LogEvent("info", "job_submitted",
           {{"job", entry->id}, {"model", model_id}, {"owner", owner},
            {"bits", entry->options.bits}, {"target", ToString(entry->options.target)}});
  absl::Status st = queue_->Submit(std::move(task));
  if (!st.ok()) {
    {
      absl::MutexLock lock(&mu_);
      jobs_.erase(entry->id);
    }
    if (!key.empty()) store_->ReleaseIdempotencyKey(key, entry->id);
    {
      absl::MutexLock l(&entry->mu);
      entry->lock.reset();
    }
    (void)store_->DeleteJob(entry->id);
    if (metrics_) metrics_->JobRejected(absl::IsResourceExhausted(st) ? "queue_full" : "draining");
    LogEvent("warning", "job_rejected", {{"job", entry->id}, {"status", st.ToString()}});
    return st;
  }
  if (metrics_) metrics_->JobSubmitted();
  UpdateGauges();
  return snapshot;
}

absl::StatusOr<v1::Job> JobManager::Get(const std::string& job_id) {
  if (auto entry = Find(job_id)) {
    absl::MutexLock l(&entry->mu);
    return entry->job;
  }
  return ReadFromDisk(job_id);
}

std::vector<v1::Job> JobManager::List(const std::vector<v1::JobState>& states) {
  std::set<std::string> ids;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, e] : jobs_) ids.insert(id);
  }
  for (std::string& id : store_->ListJobIds()) ids.insert(std::move(id));
  std::vector<v1::Job> out;
  for (const std::string& id : ids) {
    auto job = Get(id);
    if (!job.ok()) continue;  // deleted meanwhile
    if (!states.empty() && std::find(states.begin(), states.end(), job->state()) == states.end()) {
      continue;
    }
    out.push_back(std::move(*job));
  }
  std::sort(out.begin(), out.end(), [](const v1::Job& a, const v1::Job& b) {
    if (a.create_time().seconds() != b.create_time().seconds()) {
      return a.create_time().seconds() > b.create_time().seconds();
    }
    if (a.create_time().nanos() != b.create_time().nanos()) {
      return a.create_time().nanos() > b.create_time().nanos();
    }
    return a.job_id() < b.job_id();
  });
  return out;
}

absl::StatusOr<v1::Job> JobManager::Cancel(const std::string& job_id) {
  if (auto entry = Find(job_id)) {
    bool queued = false;
    {
      absl::MutexLock l(&entry->mu);
      if (IsTerminal(entry->job.state())) return entry->job;
      queued = entry->job.state() == v1::JOB_STATE_QUEUED;
      entry->cancel = true;
    }
    if (queued) {
      // Cancelled at once; the queue slot is released when a worker pops and skips it.
      Finish(entry, v1::JOB_STATE_CANCELLED, static_cast<int>(absl::StatusCode::kCancelled),
             "cancelled before it started");
    }
    absl::MutexLock l(&entry->mu);
    return entry->job;
  }
  auto job = ReadFromDisk(job_id);
  if (!job.ok() || IsTerminal(job->state())) return job;
  // Owned by another live server: it polls this marker between layers.
  if (absl::Status st = store_->RequestCancel(job_id); !st.ok()) return st;
  return job;
}

absl::Status JobManager::Delete(const std::string& job_id, absl::string_view reason) {
  auto job = Get(job_id);
  if (!job.ok()) return job.status();
  if (!IsTerminal(job->state())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " is ", StateName(job->state()), "; cancel it before deleting"));
  }
  {
    absl::MutexLock lock(&mu_);
    jobs_.erase(job_id);
  }
  if (!job->idempotency_key().empty()) {
    store_->ReleaseIdempotencyKey(IdempotencyMapKey(job->owner(), job->idempotency_key()), job_id);
  }
  const int64_t bytes = store_->JobBytes(job_id);
  if (absl::Status st = store_->DeleteJob(job_id); !st.ok()) return st;
  if (metrics_) metrics_->Removed("job", std::string(reason), bytes);
  LogEvent("info", "job_deleted", {{"job", job_id}, {"reason", std::string(reason)}, {"bytes", bytes}});
  return absl::OkStatus();
}

std::vector<v1::Job> JobManager::ActiveJobsOfModel(const std::string& model_id) {
  std::vector<v1::Job> active;
  for (v1::Job& job : List({v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING})) {
    if (job.model_id() == model_id) active.push_back(std::move(job));
  }
  return active;
}

absl::Status JobManager::DeleteModel(const std::string& model_id, const std::string& tenant,
                                     absl::string_view reason) {
  if (!store_->HasModel(model_id) || (!tenant.empty() && !store_->HasModelOwner(model_id, tenant))) {
    return absl::NotFoundError(absl::StrCat("no model ", model_id));
  }
  std::vector<v1::Job> active = ActiveJobsOfModel(model_id);
  for (const v1::Job& job : active) {
    if (job.owner() != tenant) continue;  // another tenant's job: keeps the files, not our refusal
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", model_id, " is used by job ", job.job_id(), " (", StateName(job.state()),
        "); cancel it or wait for it before deleting the model"));
  }
  if (!tenant.empty()) {
    if (absl::Status st = store_->RemoveModelOwner(model_id, tenant); !st.ok()) return st;
    // Another tenant still holds it, or a job uses it: the files stay until neither does
    // (retention removes them then).
    if (store_->HasAnyModelOwner(model_id) || !active.empty()) return absl::OkStatus();
  }
  absl::Status st = RemoveModelFiles(model_id, reason);
  return absl::IsNotFound(st) ? absl::OkStatus() : st;  // NotFound: another server removed it
}

absl::Status JobManager::RemoveModelFiles(const std::string& model_id, absl::string_view reason) {
  const int64_t bytes = store_->ModelBytes(model_id);
  if (absl::Status st = store_->DeleteModel(model_id); !st.ok()) return st;
  if (metrics_) metrics_->Removed("model", std::string(reason), bytes);
  LogEvent("info", "model_deleted", {{"model", model_id}, {"reason", std::string(reason)}, {"bytes", bytes}});
  return absl::OkStatus();
}

absl::Status JobManager::AddWatcher(const std::string& job_id, JobWatcher* watcher) {
  if (auto entry = Find(job_id)) {
    absl::MutexLock l(&entry->mu);
    entry->watchers.push_back(watcher);
    watcher->OnJobUpdate(entry->job);
    return absl::OkStatus();
  }
  absl::MutexLock lock(&remote_mu_);
  auto job = ReadFromDisk(job_id);
  if (!job.ok()) return job.status();
  watcher->OnJobUpdate(*job);
  if (!IsTerminal(job->state())) {
    remote_watchers_.emplace(job_id, watcher);
    remote_last_[job_id] = job->SerializeAsString();
  }
  return absl::OkStatus();
}

void JobManager::RemoveWatcher(const std::string& job_id, JobWatcher* watcher) {
  if (auto entry = Find(job_id)) {
    absl::MutexLock l(&entry->mu);
    auto& w = entry->watchers;
    w.erase(std::remove(w.begin(), w.end(), watcher), w.end());
  }
  absl::MutexLock lock(&remote_mu_);
  auto range = remote_watchers_.equal_range(job_id);
  for (auto it = range.first; it != range.second;) {
    it = it->second == watcher ? remote_watchers_.erase(it) : std::next(it);
  }
}

void JobManager::PollRemote() {
  absl::MutexLock lock(&remote_mu_);
  while (true) {
    auto stop = [this]() { return stop_poller_; };
    remote_mu_.AwaitWithTimeout(absl::Condition(&stop), options_.remote_poll_interval);
    if (stop_poller_) return;
    std::set<std::string> ids;
    for (const auto& [id, w] : remote_watchers_) ids.insert(id);
    for (const std::string& id : ids) {
      auto job = ReadFromDisk(id);
      if (!job.ok()) continue;
      std::string bytes = job->SerializeAsString();
      if (bytes == remote_last_[id]) continue;
      remote_last_[id] = bytes;
      auto range = remote_watchers_.equal_range(id);
      for (auto it = range.first; it != range.second; ++it) it->second->OnJobUpdate(*job);
      if (IsTerminal(job->state())) {
        remote_watchers_.erase(id);
        remote_last_.erase(id);
      }
    }
  }
}

void JobManager::Persist(Entry& entry) {
  entry.mu.AssertHeld();
  if (absl::Status st = store_->WriteJobRecord(entry.id, ToJson(entry.job)); !st.ok()) {
    LogError(st, "writing record of job " + entry.id);
  }
}

void JobManager::Publish(Entry& entry) {
  entry.mu.AssertHeld();
  for (JobWatcher* w : entry.watchers) w->OnJobUpdate(entry.job);
}

void JobManager::Finish(const std::shared_ptr<Entry>& entry, v1::JobState state, int code,
                        const std::string& message) {
  double seconds = 0;
  {
    absl::MutexLock l(&entry->mu);
    if (IsTerminal(entry->job.state())) return;
    bool ran = entry->job.state() == v1::JOB_STATE_RUNNING;
    entry->job.set_state(state);
    if (state != v1::JOB_STATE_SUCCEEDED) {
      entry->job.mutable_error()->set_code(code);
      entry->job.mutable_error()->set_message(ToValidUtf8(message));
    }
    *entry->job.mutable_end_time() = Now();
    // The record is terminal on disk before the lock is released (see ReadFromDisk).
    Persist(*entry);
    entry->lock.reset();
    if (ran) seconds = absl::ToDoubleSeconds(absl::Now() - entry->started);
    // Counted before any watcher sees the terminal state: a client that scrapes /metrics
    // once its job has finished finds it counted.
    if (metrics_) metrics_->JobFinished(Outcome(state), seconds);
    Publish(*entry);
  }
  {
    nlohmann::json f = {{"job", entry->id}, {"state", Outcome(state)}, {"seconds", seconds}};
    if (state != v1::JOB_STATE_SUCCEEDED) {
      f["code"] = code;
      f["error"] = message;
    }
    LogEvent(state == v1::JOB_STATE_FAILED ? "warning" : "info", "job_finished", std::move(f));
  }
  // Finished jobs live on in the directory only, so memory stays bounded however long the
  // server runs; reads fall back to job.json.
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(entry->id);
  if (it != jobs_.end() && it->second == entry) jobs_.erase(it);
}

void JobManager::UpdateGauges() {
  if (!metrics_) return;
  metrics_->SetQueueDepth(queue_->waiting());
}

void JobManager::Run(const std::shared_ptr<Entry>& e) {
  {
    absl::MutexLock l(&e->mu);
    if (e->job.state() != v1::JOB_STATE_QUEUED) return;  // cancelled while queued
  }
  UpdateGauges();
  if (store_->CancelRequested(e->id)) {
    Finish(e, v1::JOB_STATE_CANCELLED, static_cast<int>(absl::StatusCode::kCancelled), "cancelled before it started");
    return;
  }
  e->started = absl::Now();
  LogEvent("info", "job_started",
           {{"job", e->id}, {"queue_wait_seconds", absl::ToDoubleSeconds(e->started - e->enqueued)}});
  if (metrics_) {
    metrics_->QueueWait(absl::ToDoubleSeconds(e->started - e->enqueued));
    metrics_->SetRunningJobs(++running_jobs_);
  } else {
    ++running_jobs_;
  }
  {
    absl::MutexLock l(&e->mu);
    e->job.set_state(v1::JOB_STATE_RUNNING);
    *e->job.mutable_start_time() = Now();
    e->job.mutable_progress()->set_stage("load");
    Persist(*e);
    Publish(*e);
  }

  RunHooks hooks;
  hooks.on_progress = [this, &e](const Progress& p) {
    absl::MutexLock l(&e->mu);
    v1::Progress* wp = e->job.mutable_progress();
    bool stage_changed = wp->stage() != p.stage;
    wp->set_stage(p.stage);
    wp->set_layer_index(p.layer_index);
    wp->set_layer_count(p.layer_count);
    wp->set_layer_name(ToValidUtf8(p.layer_name));
    if (stage_changed) Persist(*e);
    Publish(*e);
  };
  hooks.is_cancelled = [this, &e] {
    return e->cancel.load() || hard_cancel_.load() || store_->CancelRequested(e->id);
  };

  std::string job_dir = store_->JobDir(e->id);
  std::string out_dir = job_dir + "/out";
  // Messages and reports go to clients: the server's own directories are not theirs to
  // see. Paths under the job's input and output folders become bare file names; anything
  // else under the artifact directory is named by its place in it.
  const std::string input_dir = fs::path(e->input_path).parent_path().string();
  auto redact = [&](std::string text) {
    return absl::StrReplaceAll(text, {{input_dir + "/", ""},
                                      {out_dir + "/", ""},
                                      {store_->root(), "<artifact-dir>"}});
  };
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  std::string output = out_dir + "/" + e->output_name;
  absl::StatusOr<ModelReport> result =
      ec ? absl::InternalError("cannot create " + out_dir + ": " + ec.message())
         : engine_->Quantize(e->input_path, output, e->options, hooks);

  if (metrics_) metrics_->SetRunningJobs(--running_jobs_); else --running_jobs_;

  if (!result.ok()) {
    const absl::Status& st = result.status();
    if (absl::IsCancelled(st)) {
      if (hard_cancel_ && !e->cancel && !store_->CancelRequested(e->id)) {
        Finish(e, v1::JOB_STATE_FAILED, static_cast<int>(absl::StatusCode::kAborted),
               "interrupted: the server shut down before the job finished");
      } else {
        Finish(e, v1::JOB_STATE_CANCELLED, static_cast<int>(absl::StatusCode::kCancelled), "cancelled");
      }
    } else {
      if (metrics_ && IsVerificationFailure(st)) metrics_->Verification("failed");
      Finish(e, v1::JOB_STATE_FAILED, static_cast<int>(st.code()), redact(std::string(st.message())));
    }
    fs::remove_all(out_dir, ec);
    return;
  }

  // Artifacts and report first, then the SUCCEEDED record: a reader that sees SUCCEEDED
  // finds everything in place.
  ModelReport& report = *result;
  report.input_path = fs::path(e->input_path).filename().string();
  report.output_path = e->output_name;
  absl::Status st = WriteFileAtomic(job_dir + "/report.json", ReportToJson(report));
  if (st.ok()) st = WriteFileAtomic(job_dir + "/report.txt", ReportSummary(report));
  std::vector<v1::FileInfo> artifacts;
  if (st.ok()) {
    std::vector<std::string> names{e->output_name};
    std::vector<std::string> others;
    for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
      std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && name != e->output_name) others.push_back(name);
    }
    std::sort(others.begin(), others.end());
    names.insert(names.end(), others.begin(), others.end());
    for (const std::string& name : names) {
      std::string path = out_dir + "/" + name;
      v1::FileInfo f;
      f.set_name(name);
      std::error_code ec2;
      f.set_size(static_cast<int64_t>(fs::file_size(path, ec2)));
      if (ec2) {
        st = absl::InternalError("engine reported success but " + path + " is missing");
        break;
      }
      if (name == e->output_name && !report.output_sha256.empty()) {
        f.set_sha256(report.output_sha256);
      } else if (name == report.external_data_path && !report.external_data_sha256.empty()) {
        f.set_sha256(report.external_data_sha256);
      } else {
        auto sha = Sha256OfFile(path);
        if (!sha.ok()) {
          st = sha.status();
          break;
        }
        f.set_sha256(*sha);
      }
      artifacts.push_back(std::move(f));
    }
  }
  if (!st.ok()) {
    Finish(e, v1::JOB_STATE_FAILED, static_cast<int>(st.code()), redact(std::string(st.message())));
    return;
  }
  {
    absl::MutexLock l(&e->mu);
    for (auto& f : artifacts) *e->job.add_artifacts() = std::move(f);
    v1::JobSummary* s = e->job.mutable_summary();
    s->set_input_bytes(report.input_bytes);
    s->set_output_bytes(report.output_bytes);
    s->set_compression_ratio(report.compression_ratio);
    s->set_layers_found(report.layers_found);
    s->set_layers_quantized(report.layers_quantized);
    s->set_layers_split(report.layers_split);
    s->set_mean_sqnr_plain_db(report.mean_sqnr_plain_db);
    s->set_mean_sqnr_split_db(report.mean_sqnr_split_db);
    s->set_total_seconds(report.total_seconds);
    s->set_quantized_bits_per_weight(report.quantized_bits_per_weight);
    s->set_artifact_bits_per_weight(report.artifact_bits_per_weight);
    e->job.mutable_progress()->set_stage("done");
  }
  if (metrics_) {
    metrics_->CompressionRatio(report.compression_ratio);
    for (const StageTiming& t : report.stages) metrics_->StageDuration(t.stage, t.seconds);
    metrics_->Verification(report.verification.status);
    for (const LayerReport& l : report.layers) {
      if (l.quantized) metrics_->LayerSqnr(l.sqnr_plain_db, l.sqnr_split_db);
    }
  }
  Finish(e, v1::JOB_STATE_SUCCEEDED, 0, "");
}

void JobManager::StopAccepting() {
  draining_ = true;
  queue_->Close();  // queued jobs: FAILED "server shut down before the job started"
  UpdateGauges();
}

void JobManager::Drain(absl::Duration grace) {
  StopAccepting();
  if (!queue_->WaitIdle(absl::Now() + grace)) {
    hard_cancel_ = true;  // running jobs stop at the next layer boundary
  }
  queue_->Join();
  UpdateGauges();
}

}  // namespace sq::server
