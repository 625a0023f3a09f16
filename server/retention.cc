#include "server/retention.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/time_util.h"
#include "proto/job_state.h"
#include "server/log.h"

namespace sq::server {

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  std::string t = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  auto bad = [&] {
    return absl::InvalidArgumentError(absl::StrCat(
        "byte size \"", text, "\" is not a number with an optional K, M, G or T suffix (e.g. 20G)"));
  };
  for (absl::string_view suffix : {"IB", "B"}) {
    if (t.size() > suffix.size() && absl::EndsWith(t, suffix)) {
      t.resize(t.size() - suffix.size());
      break;
    }
  }
  double scale = 1;
  if (!t.empty()) {
    switch (t.back()) {
      case 'K': scale = 1024.0; break;
      case 'M': scale = 1024.0 * 1024; break;
      case 'G': scale = 1024.0 * 1024 * 1024; break;
      case 'T': scale = 1024.0 * 1024 * 1024 * 1024; break;
      default: break;
    }
    if (scale != 1) t.pop_back();
  }
  double value;
  if (t.empty() || !absl::SimpleAtod(t, &value) || !std::isfinite(value) || value < 0) return bad();
  const double bytes = value * scale;
  if (bytes > 9.0e18) return bad();
  return static_cast<int64_t>(bytes);
}

RetentionSweeper::RetentionSweeper(ArtifactStore* store, JobManager* jobs, ServerMetrics* metrics,
                                   RetentionPolicy policy)
    : store_(store), jobs_(jobs), metrics_(metrics), policy_(policy) {}

RetentionSweeper::~RetentionSweeper() { Stop(); }

void RetentionSweeper::Start() {
  if (!policy_.enabled() || thread_.joinable()) return;
  thread_ = std::thread([this] {
    do {
      SweepOnce(absl::Now());
    } while (!stop_.WaitForNotificationWithTimeout(policy_.interval));
  });
}

void RetentionSweeper::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

namespace {

struct Item {
  enum Kind { kJob, kModel } kind;
  std::string id;
  absl::Time time;  // a job's end, a model's last use
  int64_t bytes = 0;
};

absl::Time ToTime(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

}  // namespace

SweepResult RetentionSweeper::SweepOnce(absl::Time now) {
  absl::MutexLock lock(&sweep_mu_);
  SweepResult result;
  // What the directory holds. Queued and running jobs count towards the size but are never
  // candidates, and protect their models.
  std::vector<Item> candidates;
  std::set<std::string> protected_models;
  int64_t total = 0;
  for (const v1::Job& job : jobs_->List({})) {
    const int64_t bytes = store_->JobBytes(job.job_id());
    total += bytes;
    if (!v1::IsTerminal(job.state())) {
      protected_models.insert(job.model_id());
      continue;
    }
    absl::Time end = job.has_end_time() ? ToTime(job.end_time()) : ToTime(job.create_time());
    candidates.push_back({Item::kJob, job.job_id(), end, bytes});
  }
  for (const std::string& id : store_->ListModelIds()) {
    const int64_t bytes = store_->ModelBytes(id);
    total += bytes;
    if (protected_models.count(id)) continue;
    auto used = store_->ModelLastUsed(id);
    if (!used.ok()) continue;  // removed meanwhile
    candidates.push_back({Item::kModel, id, *used, bytes});
  }
  // Oldest first; ties broken by kind and id so that every server orders alike.
  std::sort(candidates.begin(), candidates.end(), [](const Item& a, const Item& b) {
    if (a.time != b.time) return a.time < b.time;
    if (a.kind != b.kind) return a.kind < b.kind;
    return a.id < b.id;
  });

  for (const Item& item : candidates) {
    const bool too_old = policy_.max_age > absl::ZeroDuration() && now - item.time > policy_.max_age;
    const bool too_big = policy_.max_bytes > 0 && total > policy_.max_bytes;
    if (!too_old && !too_big) break;  // sorted by age: nothing later is due either
    absl::Status st;
    if (item.kind == Item::kJob) {
      // Exclusive: fails while a download (shared) or anyone else holds the job.
      auto job_lock = store_->TryLockJob(item.id);
      if (!job_lock.ok()) {
        ++result.in_use_skipped;
        continue;
      }
      st = jobs_->Delete(item.id, "retention");
    } else {
      // No job used it at the listing; a submit since then touched it before creating its
      // job (JobManager::Submit): keep it then.
      auto used = store_->ModelLastUsed(item.id);
      if (!used.ok() || *used != item.time) {
        ++result.in_use_skipped;
        continue;
      }
      st = jobs_->RemoveModelFiles(item.id, "retention");
    }
    if (!st.ok()) {
      ++result.in_use_skipped;  // removed by another server, or became busy
      continue;
    }
    total -= item.bytes;
    result.bytes_removed += item.bytes;
    (item.kind == Item::kJob ? result.jobs_removed : result.models_removed)++;
  }
  result.bytes_after = total;
  if (metrics_) metrics_->RetentionSweep();
  if (result.jobs_removed || result.models_removed || result.in_use_skipped) {
    LogEvent("info", "retention_sweep",
             {{"jobs_removed", result.jobs_removed},
              {"models_removed", result.models_removed},
              {"bytes_removed", result.bytes_removed},
              {"bytes_after", result.bytes_after},
              {"in_use_skipped", result.in_use_skipped}});
  }
  return result;
}

}  // namespace sq::server
