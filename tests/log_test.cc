// server/log: every event is one line of JSON with ts/level/event and valid UTF-8.
#include "server/log.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sq::server {
namespace {

TEST(LogTest, EventsAreOneJsonLineEachWithValidUtf8) {
  char path[] = "/tmp/sq-log-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  std::fflush(stderr);
  const int saved = ::dup(STDERR_FILENO);
  ::dup2(fd, STDERR_FILENO);
  LogEvent("info", "job_finished", {{"job", "abc"}, {"seconds", 1.5}});
  LogEvent("warning", "rpc", {{"error", std::string("bad \xff name\nsecond line")}});
  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  ::close(fd);
  std::ifstream in(path);
  std::string line;
  std::vector<nlohmann::json> lines;
  while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));  // throws if not JSON
  ::unlink(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["event"], "job_finished");
  EXPECT_EQ(lines[0]["level"], "info");
  EXPECT_EQ(lines[0]["job"], "abc");
  EXPECT_DOUBLE_EQ(lines[0]["seconds"].get<double>(), 1.5);
  EXPECT_EQ(lines[0]["ts"].get<std::string>().size(), 24u);  // 2026-12-03T21:50:01.123Z
  EXPECT_EQ(lines[1]["error"], "bad \\xFF name\nsecond line");  // escaped byte; newline inside JSON
}

}  // namespace
}  // namespace sq::server
