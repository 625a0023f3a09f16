// ONNX Runtime in a worker process (core/verify/ort_worker.h): the same results as in this
// process, the same errors, and a worker that dies is a status, not a dead caller.
#include "core/verify/ort_worker.h"

#include <stdlib.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "core/file_util.h"
#include "core/verify/ort_runner.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"

namespace sq {
namespace {

using testing::GraphBuilder;

class OrtWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("ort_worker_test");
    ASSERT_TRUE(testing::WriteMatMulChain(dir_ + "/chain.onnx", 3, 32, 5).ok());
    // The same chain with its weights in an external data file.
    onnx::ModelProto m;
    std::ifstream in(dir_ + "/chain.onnx", std::ios::binary);
    ASSERT_TRUE(m.ParseFromIstream(&in));
    ASSERT_TRUE(testing::SaveModelWithExternalData(m, dir_ + "/ext.onnx", "ext.data").ok());
    auto inputs = MakeRandomInputs(dir_ + "/chain.onnx", 7);
    ASSERT_TRUE(inputs.ok());
    inputs_ = *inputs;
  }
  void TearDown() override {
    SetOrtWorker("");
    SetOrtWorkerTimeout(0);
    unsetenv("SQ_ORT_WORKER_FAULT");
  }
  static std::string Slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  static void ExpectSameBits(const std::vector<OrtTensor>& a, const std::vector<OrtTensor>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) {
      EXPECT_EQ(a[k].name, b[k].name);
      EXPECT_EQ(a[k].shape, b[k].shape);
      EXPECT_EQ(a[k].elem_type, b[k].elem_type);
      ASSERT_EQ(a[k].f.size(), b[k].f.size());
      if (!a[k].f.empty()) {
        EXPECT_EQ(0, std::memcmp(a[k].f.data(), b[k].f.data(), a[k].f.size() * sizeof(float)));
      }
      EXPECT_EQ(a[k].i, b[k].i);
    }
  }
  // No child of this process is left unreaped.
  static void ExpectNoChildren() {
    int st = 0;
    EXPECT_EQ(waitpid(-1, &st, WNOHANG), -1);
    EXPECT_EQ(errno, ECHILD);
  }

  std::string dir_;
  std::vector<OrtTensor> inputs_;
};

TEST_F(OrtWorkerTest, RunsGiveTheSameBitsAsInThisProcess) {
  const std::string bytes = Slurp(dir_ + "/ext.onnx");
  auto data = MappedFile::Open(dir_ + "/ext.data");
  ASSERT_TRUE(data.ok());
  OrtModelSource by_path;
  by_path.path = dir_ + "/ext.onnx";
  OrtModelSource from_memory;  // external data as a buffer: inline to the worker, then by path
  from_memory.path = "ext.onnx";
  from_memory.bytes = bytes;
  from_memory.external_files.push_back(
      {"ext.data", reinterpret_cast<const char*>((*data)->data()), static_cast<size_t>((*data)->size()),
       /*path=*/""});
  OrtModelSource from_memory_file = from_memory;
  from_memory_file.external_files[0].path = dir_ + "/ext.data";

  auto want = RunOrt(by_path, inputs_);
  ASSERT_TRUE(want.ok()) << want.status();
  SetOrtWorker(SQ_ORT_WORKER_PATH);
  for (const OrtModelSource* source : {&by_path, &from_memory, &from_memory_file}) {
    auto got = RunOrt(*source, inputs_);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameBits(*got, *want);
  }
  // One session, many runs (what calibration does).
  auto session = OrtSession::Open(by_path);
  ASSERT_TRUE(session.ok()) << session.status();
  for (int k = 0; k < 3; ++k) {
    auto got = (*session)->Run(inputs_);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSameBits(*got, *want);
  }
  session->reset();
  EXPECT_TRUE(LoadInOrt(dir_ + "/chain.onnx").ok());
  ExpectNoChildren();
}

TEST_F(OrtWorkerTest, ErrorsComeBackAsInThisProcess) {
  OrtModelSource garbage;
  garbage.path = "garbage.onnx";
  const std::string bytes = "this is no model";
  garbage.bytes = bytes;
  auto local = RunOrt(garbage, inputs_);
  ASSERT_FALSE(local.ok());
  const absl::Status local_missing = LoadInOrt(dir_ + "/missing.onnx");
  ASSERT_FALSE(local_missing.ok());
  SetOrtWorker(SQ_ORT_WORKER_PATH);
  auto remote = RunOrt(garbage, inputs_);
  ASSERT_FALSE(remote.ok());
  EXPECT_EQ(remote.status().code(), local.status().code());
  EXPECT_EQ(remote.status().message(), local.status().message());
  // A wrong input name fails the run, not the worker.
  std::vector<OrtTensor> wrong = inputs_;
  wrong[0].name = "no_such_input";
  OrtModelSource chain;
  chain.path = dir_ + "/chain.onnx";
  auto session = OrtSession::Open(chain);
  ASSERT_TRUE(session.ok());
  auto bad = (*session)->Run(wrong);
  EXPECT_FALSE(bad.ok());
  EXPECT_FALSE(absl::StrContains(bad.status().message(), "ONNX Runtime worker")) << bad.status();
  EXPECT_TRUE((*session)->Run(inputs_).ok());
  const absl::Status remote_missing = LoadInOrt(dir_ + "/missing.onnx");
  EXPECT_EQ(remote_missing.code(), local_missing.code());
  EXPECT_EQ(remote_missing.message(), local_missing.message());
}

// A crash inside ONNX Runtime (stood in for by the worker killing itself) is a status naming
// how the worker died and what it was doing; the caller lives on, and the next session works.
TEST_F(OrtWorkerTest, AWorkerThatDiesIsAnInternalErrorAndTheCallerLivesOn) {
  SetOrtWorker(SQ_ORT_WORKER_PATH);
  for (const char* step : {"open", "run"}) {
    SCOPED_TRACE(step);
    setenv("SQ_ORT_WORKER_FAULT", step, 1);
    auto r = RunOrt(dir_ + "/chain.onnx", inputs_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
    EXPECT_TRUE(absl::StrContains(r.status().message(), "ONNX Runtime worker killed by signal 9")) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(),
                                  std::string(step) == "open" ? "while loading" : "while running"))
        << r.status();
    unsetenv("SQ_ORT_WORKER_FAULT");
    EXPECT_TRUE(RunOrt(dir_ + "/chain.onnx", inputs_).ok());
  }
  ExpectNoChildren();
}

// A live worker whose reply breaks the protocol is killed, never waited on or talked to
// again: the call is INTERNAL saying what it sent, and the next session works.
TEST_F(OrtWorkerTest, AWorkerWhoseReplyBreaksTheProtocolIsKilled) {
  SetOrtWorker(SQ_ORT_WORKER_PATH);
  SetOrtWorkerTimeout(30);  // a wait on a live child would show up as a 30 s deadline
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"reply-oversized", "sent a corrupt reply while running"},
      {"reply-unknown", "sent an unknown reply while running"},
      {"reply-malformed", "sent malformed outputs while running"},
      {"reply-bad-error", "sent a malformed error while running"},
  };
  for (const auto& [fault, says] : cases) {
    SCOPED_TRACE(fault);
    setenv("SQ_ORT_WORKER_FAULT", fault, 1);
    const auto start = std::chrono::steady_clock::now();
    auto r = RunOrt(dir_ + "/chain.onnx", inputs_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
    EXPECT_TRUE(absl::StrContains(r.status().message(), says)) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), "(killed)")) << r.status();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
    unsetenv("SQ_ORT_WORKER_FAULT");
    EXPECT_TRUE(RunOrt(dir_ + "/chain.onnx", inputs_).ok());
  }
  SetOrtWorkerTimeout(0);
  ExpectNoChildren();
}

// A run that never ends is cut off at the time limit: the worker is killed and reaped.
TEST_F(OrtWorkerTest, AWorkerThatHangsIsKilledAtTheTimeLimit) {
  SetOrtWorker(SQ_ORT_WORKER_PATH);
  SetOrtWorkerTimeout(0.5);
  setenv("SQ_ORT_WORKER_FAULT", "hang", 1);
  auto r = RunOrt(dir_ + "/chain.onnx", inputs_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "gave no answer within 0.5 s while running")) << r.status();
  unsetenv("SQ_ORT_WORKER_FAULT");
  // A limit does not cut normal runs (one long enough for a loaded machine under TSan: a
  // normal run's own time is not what this test measures).
  SetOrtWorkerTimeout(60);
  EXPECT_TRUE(RunOrt(dir_ + "/chain.onnx", inputs_).ok());
  ExpectNoChildren();
}

TEST_F(OrtWorkerTest, AMissingWorkerIsAClearError) {
  SetOrtWorker(dir_ + "/no-such-worker");
  auto r = RunOrt(dir_ + "/chain.onnx", inputs_);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "ONNX Runtime worker")) << r.status();
  ExpectNoChildren();
}

}  // namespace
}  // namespace sq
