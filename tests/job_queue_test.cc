// JobQueue: bounded, never blocks the submitter, runs tasks on its own threads, abandons
// waiting tasks on Close.
#include "server/job_queue.h"

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace sq::server {
namespace {

TEST(JobQueueTest, RunsTasksOnWorkerThreads) {
  JobQueue queue({2, 8, "test"});
  std::atomic<int> ran{0};
  std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> on_caller{false};
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(queue.Submit([&] {
      if (std::this_thread::get_id() == caller) on_caller = true;
      ++ran;
    }).ok());
  }
  EXPECT_TRUE(queue.WaitIdle(absl::Now() + absl::Seconds(10)));
  EXPECT_EQ(ran.load(), 8);
  EXPECT_FALSE(on_caller.load());
}

TEST(JobQueueTest, FullQueueIsResourceExhaustedAtOnce) {
  JobQueue queue({1, 2, "test"});
  absl::Notification release, started;
  ASSERT_TRUE(queue.Submit([&] {
    started.Notify();
    release.WaitForNotification();
  }).ok());
  started.WaitForNotification();  // the worker is busy; now fill the two waiting slots
  ASSERT_TRUE(queue.Submit([] {}).ok());
  ASSERT_TRUE(queue.Submit([] {}).ok());
  EXPECT_EQ(queue.waiting(), 2);
  EXPECT_EQ(queue.running(), 1);
  absl::Time t0 = absl::Now();
  absl::Status st = queue.Submit([] {});
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  release.Notify();
  EXPECT_TRUE(queue.WaitIdle(absl::Now() + absl::Seconds(10)));
  EXPECT_TRUE(queue.Submit([] {}).ok());  // room again
}

TEST(JobQueueTest, CloseAbandonsWaitingTasksAndRefusesNewOnes) {
  JobQueue queue({1, 4, "test"});
  absl::Notification release, started;
  std::atomic<int> ran{0}, abandoned{0};
  ASSERT_TRUE(queue.Submit(JobQueue::Task{[&] {
    started.Notify();
    release.WaitForNotification();
    ++ran;
  }, [&] { ++abandoned; }}).ok());
  started.WaitForNotification();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(queue.Submit(JobQueue::Task{[&] { ++ran; }, [&] { ++abandoned; }}).ok());
  }
  queue.Close();
  EXPECT_EQ(abandoned.load(), 3);
  EXPECT_EQ(queue.Submit([] {}).code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(queue.WaitIdle(absl::Now() + absl::Milliseconds(50)));  // still running
  release.Notify();
  queue.Join();
  EXPECT_EQ(ran.load(), 1);  // the running task finished; the waiting ones never ran
}

TEST(JobQueueTest, ZeroCapacityStillRunsOnIdleWorkerNever) {
  // capacity counts waiting tasks; with 0 every Submit is refused (documented edge).
  JobQueue queue({1, 0, "test"});
  EXPECT_EQ(queue.Submit([] {}).code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace sq::server
