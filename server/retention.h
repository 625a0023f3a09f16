// Retention: keeps the artifact directory from growing without bound.
//
// A sweep removes, oldest first,
//   - finished jobs (SUCCEEDED / FAILED / CANCELLED; age counted from their end), and
//   - stored models no queued or running job uses (age counted from their last upload or
//     submit),
// while anything is older than `max_age`, or while the directory holds more than
// `max_bytes`. It never removes a queued or running job, a model such a job uses, or a job
// whose artifact is being downloaded (downloads hold the job's lock shared; the sweeper
// needs it exclusive — on every server sharing the directory). Several servers may sweep one
// directory at once: a removal is a rename, so each item goes exactly once.
//
// Models in use are known from one listing of the jobs per sweep; a submit after it
// touches its model before creating the job, and the sweep re-reads the model's last use
// right before removing it. What is left is the instant between that re-read and the
// rename: a job submitted exactly then fails when it starts (its model is gone; nothing
// half-written), and the client uploads and submits again.
//
// Thread-safety: SweepOnce may be called from any thread; Start/Stop from one owner.
#ifndef SQ_SERVER_RETENTION_H_
#define SQ_SERVER_RETENTION_H_

#include <cstdint>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/artifact_store.h"
#include "server/job_manager.h"
#include "server/metrics.h"

namespace sq::server {

struct RetentionPolicy {
  absl::Duration max_age = absl::ZeroDuration();  // zero: no age limit
  int64_t max_bytes = 0;                          // zero: no size limit
  absl::Duration interval = absl::Minutes(5);     // between sweeps (Start)
  bool enabled() const { return max_age > absl::ZeroDuration() || max_bytes > 0; }
};

// "0", "512", "100M", "20GiB", "1.5T" -> bytes (K/M/G/T are binary: 1024^n; an optional
// "B"/"iB" suffix). InvalidArgument naming the text otherwise.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

struct SweepResult {
  int jobs_removed = 0;
  int models_removed = 0;
  int64_t bytes_removed = 0;
  int64_t bytes_after = 0;  // what the directory holds (jobs + models) after the sweep
  int in_use_skipped = 0;   // due, but downloading, used by a job or removed meanwhile
};

class RetentionSweeper {
 public:
  // `store`, `jobs` and `metrics` (may be null) must outlive the sweeper.
  RetentionSweeper(ArtifactStore* store, JobManager* jobs, ServerMetrics* metrics,
                   RetentionPolicy policy);
  ~RetentionSweeper();  // Stop()
  RetentionSweeper(const RetentionSweeper&) = delete;
  RetentionSweeper& operator=(const RetentionSweeper&) = delete;

  // Sweeps once now, then every policy.interval on a background thread. No-op unless the
  // policy is enabled.
  void Start();
  // Stops the thread (an ongoing sweep finishes first). Idempotent.
  void Stop();

  // One sweep as of `now`.
  SweepResult SweepOnce(absl::Time now);

 private:
  ArtifactStore* const store_;
  JobManager* const jobs_;
  ServerMetrics* const metrics_;
  const RetentionPolicy policy_;
  absl::Mutex sweep_mu_;  // one sweep at a time in this process
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace sq::server

#endif  // SQ_SERVER_RETENTION_H_
