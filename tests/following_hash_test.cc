// core/following_hash: the SHA-256 that follows out-of-order writes. Its digest must be
// the file's whatever the order of the writes, the ranges never reported and a range
// written twice; and it must actually hash while the file is written.
#include "core/following_hash.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/file_util.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

namespace sq {
namespace {

std::string Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

class FollowingHashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::MakeTempDir("sq-follow") + "/data";
    fd_ = open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override { close(fd_); }
  void Write(int64_t offset, const std::string& bytes) {
    ASSERT_EQ(pwrite(fd_, bytes.data(), bytes.size(), offset), static_cast<ssize_t>(bytes.size()));
  }
  std::string FileSha() {
    auto s = Sha256File(path_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : "";
  }
  // 64 chunks of uneven sizes with unreported gaps between them (padding: zeros from the
  // truncate), written by 4 threads in a shuffled order, the hasher reading as `read` says.
  void OutOfOrderWrites(FollowingSha256::Read read) {
    constexpr int kChunks = 64;
    std::mt19937 rng(7);
    std::vector<int64_t> offset(kChunks), size(kChunks);
    int64_t at = 0;
    for (int i = 0; i < kChunks; ++i) {
      at += rng() % 3 == 0 ? rng() % 5000 : 0;  // some gaps
      offset[i] = at;
      size[i] = 1 + rng() % 300000;
      at += size[i];
    }
    const int64_t total = at + 123;  // a tail nobody writes
    ASSERT_EQ(ftruncate(fd_, total), 0);
    auto h = FollowingSha256::Start(path_, total, read);
    ASSERT_TRUE(h.ok()) << h.status();
    std::vector<int> order(kChunks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<std::thread> writers;
    for (int w = 0; w < 4; ++w) {
      writers.emplace_back([&, w] {
        for (int k = w; k < kChunks; k += 4) {
          const int i = order[k];
          std::string bytes = Random(static_cast<size_t>(size[i]), static_cast<uint32_t>(i));
          ASSERT_EQ(pwrite(fd_, bytes.data(), bytes.size(), offset[i]), static_cast<ssize_t>(bytes.size()));
          // Reported in two halves, the second first.
          (*h)->MarkWritten(offset[i] + size[i] / 2, size[i] - size[i] / 2);
          (*h)->MarkWritten(offset[i], size[i] / 2);
        }
      });
    }
    for (auto& t : writers) t.join();
    auto digest = (*h)->Finish();
    ASSERT_TRUE(digest.ok()) << digest.status();
    EXPECT_EQ(*digest, FileSha());
    EXPECT_FALSE((*h)->rehashed());
  }
  // Waits (up to 20 s) until the hasher has followed `bytes`.
  static bool WaitFollowed(const FollowingSha256& h, int64_t bytes) {
    for (int i = 0; i < 2000 && h.followed_bytes() < bytes; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return h.followed_bytes() >= bytes;
  }
  std::string path_;
  int fd_ = -1;
};

TEST_F(FollowingHashTest, OutOfOrderWritesFromManyThreadsGiveTheFilesDigest) {
  OutOfOrderWrites(FollowingSha256::Read::kMapped);
}

// The pread() fallback (where mapping fails) follows the same writes to the same digest.
TEST_F(FollowingHashTest, ThePreadFallbackGivesTheSameDigest) {
  OutOfOrderWrites(FollowingSha256::Read::kPread);
}

TEST_F(FollowingHashTest, HashesWhileTheFileIsWritten) {
  const std::string a = Random(3 << 20, 1), b = Random(2 << 20, 2);
  ASSERT_EQ(ftruncate(fd_, a.size() + b.size()), 0);
  auto h = FollowingSha256::Start(path_, static_cast<int64_t>(a.size() + b.size()));
  ASSERT_TRUE(h.ok()) << h.status();
  // The second range alone is not a prefix: nothing to follow yet.
  Write(static_cast<int64_t>(a.size()), b);
  (*h)->MarkWritten(static_cast<int64_t>(a.size()), static_cast<int64_t>(b.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ((*h)->followed_bytes(), 0);
  Write(0, a);
  (*h)->MarkWritten(0, static_cast<int64_t>(a.size()));
  EXPECT_TRUE(WaitFollowed(**h, static_cast<int64_t>(a.size() + b.size())));
  auto digest = (*h)->Finish();
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, FileSha());
  EXPECT_EQ(*digest, Sha256Hex((a + b).data(), a.size() + b.size()));
}

TEST_F(FollowingHashTest, ARangeWrittenAgainAfterItWasHashedIsHashedAgain) {
  const std::string a = Random(1 << 20, 3);
  ASSERT_EQ(ftruncate(fd_, a.size()), 0);
  auto h = FollowingSha256::Start(path_, static_cast<int64_t>(a.size()));
  ASSERT_TRUE(h.ok()) << h.status();
  Write(0, a);
  (*h)->MarkWritten(0, static_cast<int64_t>(a.size()));
  ASSERT_TRUE(WaitFollowed(**h, static_cast<int64_t>(a.size())));
  Write(1000, "changed");
  (*h)->MarkWritten(1000, 7);
  auto digest = (*h)->Finish();
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_TRUE((*h)->rehashed());
  EXPECT_EQ(*digest, FileSha());
  std::string final_bytes = a;
  final_bytes.replace(1000, 7, "changed");
  EXPECT_EQ(*digest, Sha256Hex(final_bytes.data(), final_bytes.size()));
}

TEST_F(FollowingHashTest, NothingReportedStillGivesTheDigest) {
  Write(0, "abc");
  auto h = FollowingSha256::Start(path_, 3);
  ASSERT_TRUE(h.ok());
  auto digest = (*h)->Finish();
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ((*h)->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(FollowingHashTest, EmptyFile) {
  auto h = FollowingSha256::Start(path_, 0);
  ASSERT_TRUE(h.ok());
  auto digest = (*h)->Finish();
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_F(FollowingHashTest, AFileOfTheWrongSizeIsAnInternalError) {
  Write(0, std::string(100, 'x'));
  auto h = FollowingSha256::Start(path_, 200);
  ASSERT_TRUE(h.ok());
  (*h)->MarkWritten(0, 100);
  auto digest = (*h)->Finish();
  EXPECT_EQ(digest.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(digest.status().message().find("expected 200"), std::string::npos) << digest.status();
}

TEST_F(FollowingHashTest, AMissingFileIsNotFound) {
  auto h = FollowingSha256::Start(path_ + ".missing", 10);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FollowingHashTest, DroppedUnfinishedStopsCleanly) {
  ASSERT_EQ(ftruncate(fd_, 1 << 20), 0);
  auto h = FollowingSha256::Start(path_, 1 << 20);
  ASSERT_TRUE(h.ok());
  (*h)->MarkWritten(0, 1 << 19);
  h->reset();  // the destructor joins the thread (TSan / ASan would see a leak or race)
}

}  // namespace
}  // namespace sq
