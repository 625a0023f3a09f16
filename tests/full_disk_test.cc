// A full artifact volume, for real: the test moves into its own mount namespace and puts
// the server's artifact directory on a small tmpfs (#11 item 4). Uploads and jobs that do
// not fit must fail with RESOURCE_EXHAUSTED, leave nothing visible or half-written, and
// the server must go on serving — and succeed again once there is room.
//
// Needs CAP_SYS_ADMIN for unshare(CLONE_NEWNS) + mount (root on a CI machine); skipped with
// a message elsewhere. Each ctest case runs in its own process, so the namespace ends with it.
#include <sched.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <cstring>

#include "client/lib/client.h"
#include "gtest/gtest.h"
#include "tests/support/model_builder.h"
#include "server/server.h"

namespace sq::server {
namespace {
namespace fs = std::filesystem;

// x[1,n] -> MatMul(W[n,n]) -> y: n*n*4 bytes of weights.
std::string WriteModel(const fs::path& path, int n, uint32_t seed) {
  EXPECT_TRUE(::sq::testing::WriteMatMulChain(path.string(), 1, n, seed).ok());
  return path.string();
}

int64_t FreeBytes(const fs::path& dir) {
  struct statvfs st;
  if (::statvfs(dir.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

// Fills `dir`'s file system until about `leave` bytes are free.
void FillUntil(const fs::path& file, int64_t leave) {
  const int64_t free = FreeBytes(file.parent_path());
  std::ofstream f(file, std::ios::binary | std::ios::trunc);
  const std::string block(4096, 'f');
  for (int64_t n = 0; n + leave < free; n += static_cast<int64_t>(block.size())) f.write(block.data(), block.size());
}

// Every visible name under `root`/sub that is not a directory.
std::vector<std::string> Files(const fs::path& root, const char* sub) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root / sub, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_directory()) out.push_back(fs::relative(it->path(), root).string());
  }
  return out;
}

TEST(FullDiskTest, UploadsAndJobsThatDoNotFitFailCleanlyAndTheServerServesOn) {
  const fs::path work = fs::temp_directory_path() / ("sq_full_disk_" + std::to_string(::getpid()));
  fs::remove_all(work);
  fs::create_directories(work / "volume");
  const fs::path volume = work / "volume";
  // Our own mount namespace, private, so the tmpfs is seen by nobody else and goes with us.
  if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
      ::mount("tmpfs", volume.c_str(), "tmpfs", 0, "size=4m") != 0) {
    fs::remove_all(work);
    GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN): " << std::strerror(errno);
  }
  const std::string big = WriteModel(work / "big.onnx", 1024, 1);   // 4 MiB: never fits
  const std::string small = WriteModel(work / "small.onnx", 256, 2);  // 256 KiB

  ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.artifact_dir = (volume / "artifacts").string();
  o.workers = 1;
  o.default_job_threads = 1;
  auto server = SqServer::Start(o, nullptr);
  ASSERT_TRUE(server.ok()) << server.status();
  client::ClientOptions co;
  co.target = (*server)->address();
  co.unary_timeout = absl::Seconds(60);
  auto c = client::SqClient::Create(co);
  ASSERT_TRUE(c.ok());
  const fs::path root = o.artifact_dir;

  // 1. An upload larger than the volume.
  auto up = (*c)->UploadModel(big);
  ASSERT_FALSE(up.ok());
  EXPECT_EQ(up.status().code(), absl::StatusCode::kResourceExhausted) << up.status();
  EXPECT_TRUE(Files(root, "models").empty());
  EXPECT_TRUE(Files(root, "tmp").empty()) << "the partial upload is removed";
  EXPECT_TRUE(*(*c)->Health());

  // 2. A model that fits; then a job whose output does not (FP32 fake-quant output is as
  //    large as the model; a filler leaves ~96 KiB).
  auto stored = (*c)->UploadModel(small);
  ASSERT_TRUE(stored.ok()) << stored.status();
  FillUntil(volume / "filler", 96 << 10);
  v1::SubmitJobRequest req;
  req.set_model(stored->name());
  req.mutable_options()->set_format(v1::OUTPUT_FORMAT_FAKE);
  auto job = (*c)->Submit(req);
  ASSERT_TRUE(job.ok()) << job.status();
  auto done = (*c)->Watch(job->job_id(), nullptr, absl::Seconds(60));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(done->error().code(), static_cast<int>(absl::StatusCode::kResourceExhausted)) << done->error().message();
  EXPECT_EQ(done->artifacts_size(), 0);
  for (const std::string& f : Files(root / "jobs" / job->job_id(), "")) {
    EXPECT_EQ(f.find(".onnx"), std::string::npos) << "a half-written artifact is visible: " << f;
  }
  EXPECT_EQ((*c)->Download(job->job_id(), "", (work / "x.onnx").string()).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(*(*c)->Health());

  // 3. Room again: the same job succeeds and its artifact runs through verification.
  fs::remove(volume / "filler");
  auto again = (*c)->Submit(req);
  ASSERT_TRUE(again.ok()) << again.status();
  auto ok = (*c)->Watch(again->job_id(), nullptr, absl::Seconds(60));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->state(), v1::JOB_STATE_SUCCEEDED) << ok->error().message();
  EXPECT_TRUE((*c)->Download(again->job_id(), "", (work / "ok.onnx").string()).ok());

  (*server)->Drain(absl::ZeroDuration());
  server->reset();
  ::umount(volume.c_str());
  fs::remove_all(work);
}

}  // namespace
}  // namespace sq::server
