// JobQueue: a bounded FIFO of tasks feeding a fixed pool of worker threads.
//
// Submit() never blocks: when `capacity` tasks are already waiting it fails at once with
// ResourceExhausted (callers turn that into the RPC's status), and after Close() it fails
// with Unavailable. Tasks run on the pool's own threads, never on the caller's.
//
// Thread-safety: every method may be called from any thread.
#ifndef SQ_SERVER_JOB_QUEUE_H_
#define SQ_SERVER_JOB_QUEUE_H_

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sq::server {

class JobQueue {
 public:
  struct Options {
    int workers = 2;     // >= 1
    int capacity = 16;   // tasks waiting (not counting running ones); >= 0
    std::string name = "jobs";  // for error messages
  };
  struct Task {
    std::function<void()> run;
    // Called instead of `run` for a task that Close() removed before it started. May be empty.
    std::function<void()> abandon;
  };

  explicit JobQueue(Options options);
  ~JobQueue();  // Close() + Join()
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // ResourceExhausted if full, Unavailable if closed.
  absl::Status Submit(Task task);
  absl::Status Submit(std::function<void()> run) { return Submit(Task{std::move(run), {}}); }

  // Stops accepting; tasks not yet started are abandoned (their `abandon` runs on the
  // calling thread). Running tasks continue. Idempotent.
  void Close();
  // Waits until no task is running or the deadline passes; true if idle.
  bool WaitIdle(absl::Time deadline);
  // Close() and wait for all workers to exit.
  void Join();

  int waiting() const;
  int running() const;
  int workers() const { return options_.workers; }
  int capacity() const { return options_.capacity; }

 private:
  void WorkerLoop();

  const Options options_;
  mutable absl::Mutex mu_;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
  bool joined_ = false;
};

}  // namespace sq::server

#endif  // SQ_SERVER_JOB_QUEUE_H_
