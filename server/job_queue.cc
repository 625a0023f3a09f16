#include "server/job_queue.h"

#include "absl/strings/str_cat.h"

namespace sq::server {

JobQueue::JobQueue(Options options) : options_(std::move(options)) {
  int n = options_.workers < 1 ? 1 : options_.workers;
  threads_.reserve(n);
  for (int i = 0; i < n; ++i) threads_.emplace_back([this] { WorkerLoop(); });
}

JobQueue::~JobQueue() { Join(); }

absl::Status JobQueue::Submit(Task task) {
  absl::MutexLock lock(&mu_);
  if (closed_) return absl::UnavailableError(absl::StrCat(options_.name, " queue is shutting down"));
  if (static_cast<int>(tasks_.size()) >= options_.capacity) {
    return absl::ResourceExhaustedError(absl::StrCat(
        options_.name, " queue is full (", options_.capacity, " waiting, ", running_,
        " running); retry later"));
  }
  tasks_.push_back(std::move(task));
  return absl::OkStatus();
}

void JobQueue::Close() {
  std::deque<Task> abandoned;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    abandoned.swap(tasks_);
  }
  for (Task& t : abandoned) {
    if (t.abandon) t.abandon();
  }
}

bool JobQueue::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() { return running_ == 0 && tasks_.empty(); };
  mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
  return idle();
}

void JobQueue::Join() {
  Close();
  if (joined_) return;
  joined_ = true;
  for (std::thread& t : threads_) t.join();
}

int JobQueue::waiting() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(tasks_.size());
}

int JobQueue::running() const {
  absl::MutexLock lock(&mu_);
  return running_;
}

void JobQueue::WorkerLoop() {
  while (true) {
    Task task;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() { return closed_ || !tasks_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (tasks_.empty()) return;  // closed and drained
      task = std::move(tasks_.front());
      tasks_.pop_front();
      ++running_;
    }
    try {
      task.run();
    } catch (...) {
      // Tasks handle their own failures; an escaped exception must not end the worker.
    }
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

}  // namespace sq::server
