// core/file_util: the CPU count the engine's default thread count follows (a container's
// cgroup quota, read under an injected cgroup root), and the atomic file it writes through.
#include "core/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
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
  if (hw > 0) EXPECT_LE(n, static_cast<int>(hw));
}

}  // namespace
}  // namespace sq
