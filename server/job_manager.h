// JobManager: the life of quantization jobs, independent of any RPC. Submit() records a
// job in the ArtifactStore and queues it on the JobQueue; a worker runs the engine through
// the EnginePort and records every state change (job.json written atomically). Reads
// (Get/List) merge this server's jobs with what the directory holds, so several servers
// sharing one directory all serve each other's finished jobs. A job whose record is not
// terminal and whose lock nobody holds (its server died) reads as FAILED "interrupted".
//
// Watchers (JobWatcher) get the job's state at once and then every change, until a terminal
// state; jobs owned by another server are followed by polling the directory.
//
// Thread-safety: all methods may be called from any thread (gRPC reactors, workers).
// Watcher callbacks run on worker or poller threads and must not block.
#ifndef SQ_SERVER_JOB_MANAGER_H_
#define SQ_SERVER_JOB_MANAGER_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/artifact_store.h"
#include "server/engine_port.h"
#include "server/job_queue.h"
#include "server/metrics.h"
#include "sq/v1/sq.pb.h"

namespace sq::server {

class JobWatcher {
 public:
  virtual ~JobWatcher() = default;
  // Called with the newest state; may coalesce intermediate ones. Must not block.
  virtual void OnJobUpdate(const v1::Job& job) = 0;
};

struct JobManagerOptions {
  int workers = 2;
  int queue_capacity = 16;
  int default_job_threads = 0;  // engine threads for a job that asks for 0
  absl::Duration remote_poll_interval = absl::Milliseconds(500);
};

class JobManager {
 public:
  JobManager(ArtifactStore* store, std::shared_ptr<EnginePort> engine, ServerMetrics* metrics,
             JobManagerOptions options);
  ~JobManager();  // Shutdown(0)
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Marks unowned unfinished jobs in the directory FAILED "interrupted". Call once before
  // serving. (Idempotency keys live in the directory, shared by every server on it.)
  void Recover();

  // NotFound (model), InvalidArgument (options, idempotency key reused for another model),
  // ResourceExhausted (queue full), Unavailable (draining).
  // `owner`: the submitting tenant under per-tenant access ("" otherwise). A tenant may only
  // use models it uploaded (NotFound otherwise); idempotency keys are scoped to the tenant.
  // `model_id`: the id parsed from request.model (the service checks the name's form);
  // the request gives the options and the idempotency key.
  absl::StatusOr<v1::Job> Submit(const std::string& model_id, const v1::SubmitJobRequest& request,
                                 const std::string& owner = "");
  // Every v1::Job this class returns carries its resource names (name, model), also when
  // read from a record written before they existed.
  absl::StatusOr<v1::Job> Get(const std::string& job_id);
  std::vector<v1::Job> List(const std::vector<v1::JobState>& states);
  absl::StatusOr<v1::Job> Cancel(const std::string& job_id);
  // FailedPrecondition unless the job is terminal. `reason` labels the removal in the
  // metrics and the log: "request" (DeleteJob) or "retention".
  absl::Status Delete(const std::string& job_id, absl::string_view reason = "request");
  // Removes a stored model. NotFound when absent (or, under per-tenant access, not the
  // tenant's); FailedPrecondition while a queued or running job of the caller uses it.
  // Under per-tenant access it removes the tenant's access, and the files once no tenant
  // holds the model and no job uses it. Finished jobs keep their artifacts.
  absl::Status DeleteModel(const std::string& model_id, const std::string& tenant = "",
                           absl::string_view reason = "request");
  // Removes a model's files and access marks, counting the bytes in the metrics and the
  // log under `reason`. For callers that know no queued or running job uses it (DeleteModel,
  // retention's sweep). NotFound when it is gone already.
  absl::Status RemoveModelFiles(const std::string& model_id, absl::string_view reason);
  // Queued and running jobs (of any server sharing the directory) of a model.
  std::vector<v1::Job> ActiveJobsOfModel(const std::string& model_id);

  // Registers `watcher` and delivers the current state to it before returning.
  absl::Status AddWatcher(const std::string& job_id, JobWatcher* watcher);
  // After this returns the watcher is never called again.
  void RemoveWatcher(const std::string& job_id, JobWatcher* watcher);

  // Stops accepting jobs (Unavailable), fails the queued ones, waits up to `grace` for the
  // running ones, then cancels what is still running and waits for it to stop.
  void Drain(absl::Duration grace);
  // The first half of Drain: refuse new jobs and fail the queued ones. Idempotent.
  void StopAccepting();
  bool draining() const { return draining_.load(); }

  JobQueue& queue() { return *queue_; }

 private:
  struct Entry;

  std::shared_ptr<Entry> Find(const std::string& job_id);
  absl::StatusOr<v1::Job> ReadFromDisk(const std::string& job_id);
  void Run(const std::shared_ptr<Entry>& entry);
  // Sets a terminal state, persists it, releases the lock, notifies. `mu` of entry held.
  void Persist(Entry& entry);
  void Publish(Entry& entry);
  void Finish(const std::shared_ptr<Entry>& entry, v1::JobState state, int code,
              const std::string& message);
  void UpdateGauges();
  void PollRemote();

  ArtifactStore* const store_;
  const std::shared_ptr<EnginePort> engine_;
  ServerMetrics* const metrics_;  // may be null
  const JobManagerOptions options_;
  std::unique_ptr<JobQueue> queue_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> hard_cancel_{false};
  std::atomic<int> running_jobs_{0};

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> jobs_ ABSL_GUARDED_BY(mu_);

  // Watchers of jobs owned by another server (followed by polling job.json).
  absl::Mutex remote_mu_;
  std::multimap<std::string, JobWatcher*> remote_watchers_ ABSL_GUARDED_BY(remote_mu_);
  std::map<std::string, std::string> remote_last_ ABSL_GUARDED_BY(remote_mu_);
  bool stop_poller_ ABSL_GUARDED_BY(remote_mu_) = false;
  std::thread poller_;
};

}  // namespace sq::server

#endif  // SQ_SERVER_JOB_MANAGER_H_
