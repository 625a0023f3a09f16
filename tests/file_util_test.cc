// core/file_util: the CPU count the engine's default thread count follows (a container's
// cgroup quota, read under an injected cgroup root), and the atomic file it writes through.
#include "core/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

namespace sq {
namespace {

class CgroupTest : public ::testing::Test {
 protected:
  void SetUp() override { root_ = testing::MakeTempDir("sq-cgroup"); }
  void Put(const std::string& rel, const std::string& text) {
    std::string path = root_ + rel;
    for (size_t at = 1; (at = path.find('/', at + 1)) != std::string::npos;) {
      ::mkdir(path.substr(0, at).c_str(), 0755);
    }
    std::ofstream(path) << text;
  }
  std::string root_;
};

TEST_F(CgroupTest, V2QuotaIsRoundedUpAndTheSmallestLevelWins) {
  Put("/cpu.max", "max 100000\n");
  Put("/kubepods/pod1/cpu.max", "150000 100000\n");  // 1.5 CPUs -> 2 threads
  EXPECT_EQ(CgroupCpuLimit(root_, "0::/kubepods/pod1\n"), 2);
  Put("/kubepods/cpu.max", "100000 100000\n");  // a parent capped at 1
  EXPECT_EQ(CgroupCpuLimit(root_, "0::/kubepods/pod1\n"), 1);
  EXPECT_EQ(CgroupCpuLimit(root_, "0::/\n"), 0);  // the root says max: no quota
}

TEST_F(CgroupTest, V1QuotaAndNoQuota) {
  Put("/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n");
  Put("/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(CgroupCpuLimit(root_, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n"), 3);
  Put("/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");  // unlimited
  EXPECT_EQ(CgroupCpuLimit(root_, "4:cpu,cpuacct:/docker/abc\n"), 0);
  EXPECT_EQ(CgroupCpuLimit(root_, "garbage\n0::\n"), 0);
  EXPECT_EQ(CgroupCpuLimit(root_ + "/nowhere", "0::/a/b\n"), 0);
}

TEST(AvailableCpusTest, NeverMoreThanTheMachineAndAtLeastOne) {
  const int n = AvailableCpus();
  EXPECT_GE(n, 1);
  const unsigned hw = std::thread::hardware_concurrency();
  if (hw > 0) {
    EXPECT_LE(n, static_cast<int>(hw));
  }
}

// Sha256File hashes through a mapping, 64 MiB at a time, else by read(): the empty file,
// known vectors, and a file whose size is not a whole number of pieces must all give the
// digest of their bytes; a missing file is NOT_FOUND.
// ReadAt copies the mapped bytes through pread (the engine reads a large weight's bands
// that way, keeping its pages out of the process), anywhere in the file, empty reads
// included; a read past the end is OutOfRange and names the file.
TEST(MappedFileTest, ReadAtGivesTheMappedBytesAndRefusesReadsPastTheEnd) {
  const std::string dir = testing::MakeTempDir("sq-mapped");
  const std::string path = dir + "/data.bin";
  std::string bytes(70000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7919) >> 3);
  std::ofstream(path, std::ios::binary) << bytes;
  auto f = MappedFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  for (auto [offset, length] : {std::pair<int64_t, int64_t>{0, 70000}, {4093, 9}, {69999, 1}, {70000, 0}, {123, 0}}) {
    std::string got(static_cast<size_t>(length), 'x');
    ASSERT_TRUE((*f)->ReadAt(offset, length, got.data()).ok()) << offset;
    EXPECT_EQ(got, bytes.substr(static_cast<size_t>(offset), static_cast<size_t>(length))) << offset;
    EXPECT_EQ(0, std::memcmp(got.data(), (*f)->data() + offset, static_cast<size_t>(length)));
  }
  char c;
  for (auto [offset, length] : {std::pair<int64_t, int64_t>{69999, 2}, {70001, 0}, {-1, 1}, {0, -1}}) {
    const absl::Status s = (*f)->ReadAt(offset, length, &c);
    EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << offset << " " << length;
    EXPECT_NE(s.message().find("data.bin"), std::string::npos) << s;
  }
}

TEST(Sha256FileTest, MatchesTheDigestOfTheBytesAtAnySize) {
  const std::string dir = testing::MakeTempDir("sq-sha");
  auto put = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
    return dir + "/" + name;
  };
  auto empty = Sha256File(put("empty", ""));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(*empty, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  auto abc = Sha256File(put("abc", "abc"));
  ASSERT_TRUE(abc.ok()) << abc.status();
  EXPECT_EQ(*abc, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string big((size_t{64} << 20) + 12345, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  auto digest = Sha256File(put("big", big));
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Hex(big.data(), big.size()));
  EXPECT_EQ(Sha256File(dir + "/missing").status().code(), absl::StatusCode::kNotFound);
  // A file whose stat size is 0 but which has content (procfs) is not mapped: read() hashes
  // what it holds.
  std::ifstream version("/proc/version", std::ios::binary);
  if (version) {
    const std::string text((std::istreambuf_iterator<char>(version)), std::istreambuf_iterator<char>());
    auto proc = Sha256File("/proc/version");
    ASSERT_TRUE(proc.ok()) << proc.status();
    EXPECT_EQ(*proc, Sha256Hex(text.data(), text.size()));
    EXPECT_NE(*proc, *empty);
  }
}

}  // namespace
}  // namespace sq
