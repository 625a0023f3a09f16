#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

// MakeTempDir (declared in model_builder.h), kept apart from the model builders so that tools
// built from those (tests/fuzz's seed writer) need no GoogleTest.

namespace sq::testing {

namespace {

// The folders MakeTempDir made in this process, removed after its last test. A gtest
// environment's TearDown runs once, in the process that ran the tests (not in a death test's
// child), after every test and fixture TearDown; the pid check keeps a forked child that
// somehow reaches it from removing its parent's folders.
class TempDirCleanup : public ::testing::Environment {
 public:
  static TempDirCleanup* Get() {
    static TempDirCleanup* const env = [] {
      auto* e = new TempDirCleanup();
      ::testing::AddGlobalTestEnvironment(e);  // gtest owns it
      return e;
    }();
    return env;
  }
  void Add(std::string dir) {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.push_back(std::move(dir));
  }
  void TearDown() override {
    const char* keep = getenv("SQ_KEEP_TEST_DIRS");
    std::lock_guard<std::mutex> lock(mu_);
    if (getpid() != pid_ || (keep != nullptr && std::string(keep) == "1")) return;
    for (const std::string& d : dirs_) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);  // best effort: a test may have removed it already
    }
    dirs_.clear();
  }

 private:
  const pid_t pid_ = getpid();
  std::mutex mu_;
  std::vector<std::string> dirs_;
};

// Registers the environment before main runs: gtest sets environments up when RUN_ALL_TESTS
// starts, before the first MakeTempDir call a test makes.
[[maybe_unused]] TempDirCleanup* const kRegistered = TempDirCleanup::Get();

}  // namespace

std::string MakeTempDir(const std::string& prefix) {
  const char* base = getenv("TEST_TMPDIR");
  std::string tmpl = absl::StrCat(base ? base : "/tmp", "/", prefix, "-XXXXXX");
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  char* dir = mkdtemp(buf.data());
  if (dir == nullptr) return std::string();
  TempDirCleanup::Get()->Add(dir);
  return std::string(dir);
}

}  // namespace sq::testing
